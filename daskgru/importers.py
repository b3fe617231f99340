"""Whole models from Keras and torch, or an error that names the part that cannot be
honoured exactly. Nothing is dropped silently: an unknown layer, a branch, a second input, a
layer option or an activation daskgru cannot compute is refused by name.

torch and Keras are never imported: layers and modules are duck-typed.
"""
from __future__ import annotations

import numpy as np

from . import convert
from . import layers as L
from .cells import CELLS
from .params import GRUParams, LSTMParams
from .stack import Layer, Stack, to_numpy

__all__ = ["from_keras", "from_torch", "torch_layers"]

# Keras's activation names -> daskgru's
KERAS_ACTIVATIONS = {"linear": "linear", "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid",
                     "softplus": "softplus", "elu": "elu", "gelu": "gelu", "silu": "silu",
                     "swish": "silu", "exponential": "exp"}
# Keras layers that compute nothing at inference
KERAS_INERT = ("InputLayer", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
               "GaussianDropout", "GaussianNoise", "AlphaDropout", "ActivityRegularization")


def _np(a):
    """A Keras variable or tensor as NumPy."""
    if hasattr(a, "numpy") and not isinstance(a, np.ndarray):
        try:
            return np.asarray(a.numpy())
        except Exception:  # noqa: BLE001 - backends whose .numpy needs another route
            pass
    return np.asarray(a)


def _keras_activation(layer, name):
    cfg = layer.get_config()
    act = cfg.get("activation", "linear")
    if isinstance(act, dict):  # a serialized function: its registered name
        act = act.get("config", act.get("class_name"))
    if act not in KERAS_ACTIVATIONS:
        raise ValueError(f"Keras layer {name!r}: activation {act!r} is not one daskgru computes "
                         f"({', '.join(sorted(KERAS_ACTIVATIONS))})")
    return KERAS_ACTIVATIONS[act]


def _keras_step_layer(layer):
    """A per-step Keras layer as daskgru layers (a list: empty for inert layers)."""
    kind, name = type(layer).__name__, layer.name
    if kind in KERAS_INERT:
        return []
    if kind == "TimeDistributed":
        inner = layer.layer
        if type(inner).__name__ != "Dense":
            raise ValueError(f"Keras layer {name!r}: TimeDistributed({type(inner).__name__}) is "
                             "not supported (only TimeDistributed(Dense))")
        return _keras_step_layer(inner)
    if kind == "Dense":
        w = layer.get_weights()
        b = w[1] if len(w) > 1 else np.zeros(w[0].shape[1], w[0].dtype)
        return [L.Dense(w[0], b, _keras_activation(layer, name))]
    if kind == "Activation":
        return [L.Activation(_keras_activation(layer, name))]
    if kind == "Normalization":
        axis = tuple(layer.axis) if isinstance(layer.axis, (list, tuple)) else (layer.axis,)
        if axis not in ((-1,), (2,)):
            raise ValueError(f"Keras layer {name!r}: Normalization over axis {layer.axis} is not "
                             "supported (only the feature axis, -1)")
        import keras

        mean, var = _np(layer.mean).reshape(-1), _np(layer.variance).reshape(-1)
        scale = np.maximum(np.sqrt(var), keras.config.epsilon())
        return [(L.Scale.unscale if layer.invert else L.Scale.normalize)(mean, scale)]
    if kind == "Rescaling":  # x * scale + offset
        cfg = layer.get_config()
        return [L.Scale.unscale(np.asarray(cfg.get("offset", 0.0), np.float64),
                                np.asarray(cfg.get("scale", 1.0), np.float64))]
    if kind == "BatchNormalization":  # at inference: the moving statistics
        cfg = layer.get_config()
        if cfg.get("axis", -1) not in (-1, 2, [-1], [2]):
            raise ValueError(f"Keras layer {name!r}: BatchNormalization over axis "
                             f"{cfg.get('axis')} is not supported (only the feature axis, -1)")
        w = {v.path.split("/")[-1]: _np(v) for v in layer.weights}
        n = w["moving_mean"].shape[-1]
        gamma, beta = w.get("gamma", np.ones(n)), w.get("beta", np.zeros(n))
        return [L.Scale.normalize(w["moving_mean"], np.sqrt(w["moving_variance"] + cfg["epsilon"])),
                L.Dense(np.diag(gamma), beta)]
    if kind == "LayerNormalization":
        cfg = layer.get_config()
        axis = cfg.get("axis", -1)
        axis = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
        if axis not in ((-1,), (2,)) or cfg.get("rms_scaling", False):
            raise ValueError(f"Keras layer {name!r}: LayerNormalization over axis {axis} or with "
                             "rms_scaling is not supported")
        w = {v.path.split("/")[-1]: _np(v) for v in layer.weights}
        n = next(iter(w.values())).shape[-1] if w else None
        gamma = w.get("gamma", np.ones(n))
        beta = w.get("beta", np.zeros(n))
        return [L.LayerNorm(gamma, beta, float(cfg["epsilon"]))]
    raise ValueError(f"Keras layer {name!r} ({kind}) is not supported by daskgru.Model "
                     "(per-step layers: Dense, TimeDistributed(Dense), Activation, "
                     "Normalization, Rescaling, BatchNormalization, LayerNormalization, "
                     "Dropout, Masking)")


def _keras_rnn_layer(layer):
    """A Keras GRU/LSTM or Bidirectional as a stack Layer, its zero_output_for_mask flag, its
    return_sequences and whether it has biases (use_bias, on either direction)."""
    inner = getattr(layer, "forward_layer", layer)
    kind = convert.keras_kind(inner)
    cls = CELLS[kind]
    if getattr(inner, "return_state", False):
        raise ValueError(f"Keras layer {layer.name!r}: return_state=True is not supported")
    if hasattr(layer, "forward_layer"):
        mode = getattr(layer, "merge_mode", "concat")
        if mode not in ("concat", "sum", "mul", "ave"):
            raise ValueError(f"Keras layer {layer.name!r}: Bidirectional merge_mode={mode!r} is "
                             "not supported (concat, sum, mul, ave)")
        back = layer.backward_layer
        if convert.keras_kind(back) != kind:
            raise ValueError(f"Keras layer {layer.name!r}: the two layers of Bidirectional "
                             "differ in kind")
        ws, cells, biased = [], [], False
        for sub, backward in ((inner, False), (back, True)):
            cell = cls(**convert.keras_cell_options(sub, cls, backward=backward))
            w, b = convert.keras_rnn_weights(sub.get_weights(), cell, f"Keras layer {sub.name!r}")
            ws.append(w)
            cells.append(cell)
            biased = biased or b
        if cells[0] != cells[1]:
            raise ValueError(f"Keras layer {layer.name!r}: the two layers of Bidirectional "
                             "differ in options")
        lay = Layer(cells[0], ws, mode)
        flags = {bool(getattr(s, "zero_output_for_mask", False)) for s in (inner, back)}
        if len(flags) > 1:
            raise ValueError(f"Keras layer {layer.name!r}: its two layers differ in "
                             "zero_output_for_mask")
        return lay, flags.pop(), bool(inner.return_sequences), biased
    cell = cls(**convert.keras_cell_options(layer, cls))
    w, b = convert.keras_rnn_weights(layer.get_weights(), cell, f"Keras layer {layer.name!r}")
    return (Layer(cell, [w]), bool(getattr(layer, "zero_output_for_mask", False)),
            bool(layer.return_sequences), b)


def ensure_keras_backend():
    """Keras 3 defaults to TensorFlow; pick an installed backend if none was chosen."""
    import importlib.util
    import os

    if os.environ.get("KERAS_BACKEND"):
        return
    for mod in ("tensorflow", "jax", "torch"):
        if importlib.util.find_spec(mod) is not None:
            os.environ["KERAS_BACKEND"] = mod
            return
    os.environ["KERAS_BACKEND"] = "numpy"


def from_keras(model):
    """A :class:`daskgru.Model` from a Keras model or a saved one's path (see
    :meth:`daskgru.Model.from_keras`)."""
    import os

    from .model import Model

    if isinstance(model, (str, os.PathLike)):
        ensure_keras_backend()
        import keras

        model = keras.saving.load_model(os.fspath(model), compile=False)
    chain = convert.keras_chain(model)
    pre, post, rnn, flags, biased = [], [], [], [], []
    mask_value, seq = None, True
    for layer in chain:
        kind = type(layer).__name__
        if convert.keras_kind(getattr(layer, "forward_layer", layer)) is not None:
            if post:
                raise ValueError(f"Keras layer {layer.name!r}: per-step layers between recurrent "
                                 f"layers ({', '.join(getattr(p, 'name', '?') for p in post)}) are "
                                 "not supported")
            if rnn and not seq:
                raise ValueError(f"Keras layer {layer.name!r} follows a recurrent layer with "
                                 "return_sequences=False")
            lay, zero, seq, b = _keras_rnn_layer(layer)
            rnn.append(lay)
            flags.append(zero)
            biased.append(b)
            continue
        if kind == "Masking":
            if rnn or pre:
                raise ValueError(f"Keras layer {layer.name!r}: Masking after other layers is not "
                                 "supported (daskgru derives the mask from the model's input)")
            mask_value = float(layer.get_config()["mask_value"])
            continue
        (post if rnn else pre).extend(_keras_step_layer(layer))
    if not rnn:
        raise ValueError("the Keras model has no GRU or LSTM layer")
    kinds = {lay.cell.name for lay in rnn}
    uniform = (len(kinds) == 1 and len({lay.hidden_size for lay in rnn}) == 1
               and len({len(lay.weights) for lay in rnn}) == 1
               and all(lay.merge == "concat" for lay in rnn))
    if uniform and len({lay.cell for lay in rnn}) == 1:
        P = {P.cell_class.name: P for P in (GRUParams, LSTMParams)}[rnn[0].cell.name]
        # a layer without biases is one with zero biases: the stack has biases if any has
        # (use_bias, even where they are still zero, as Keras initialises them)
        bias = any(biased)
        stack = P([lay.weights for lay in rnn], bias=bias, **rnn[0].cell.options())
    else:
        stack = Stack(rnn)
    return Model(stack, pre=pre, post=post, return_sequences=seq, mask_value=mask_value,
                 zero_output_for_mask=flags, batch_first=True,
                 description=f"Keras model {getattr(model, 'name', '')!r}".strip())


# ----------------------------------------------------------------------------- torch
TORCH_ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Softplus": "softplus",
                     "ELU": "elu", "GELU": "gelu", "SiLU": "silu"}
TORCH_INERT = ("Dropout", "Dropout1d", "AlphaDropout", "Identity")


def torch_layers(module, where):
    """Per-step daskgru layers of a torch module: ``nn.Linear``, ``nn.LayerNorm``, the
    activations above, dropout (identity at inference), and ``nn.Sequential`` of them; a
    list of daskgru layers is taken as it is."""
    if module is None:
        return []
    if isinstance(module, (list, tuple)):
        out = []
        for m in module:
            out += [m] if isinstance(m, (L.Dense, L.Scale, L.LayerNorm, L.Activation)) \
                else torch_layers(m, where)
        return out
    kind = type(module).__name__
    if kind == "Sequential" or (kind == "ModuleList"):
        return [lay for child in module for lay in torch_layers(child, where)]
    if kind == "Linear":
        w = to_numpy(module.weight)
        b = to_numpy(module.bias) if module.bias is not None else np.zeros(w.shape[0], w.dtype)
        return [L.Dense(w.T, b)]
    if kind == "LayerNorm":
        shape = tuple(module.normalized_shape)
        if len(shape) != 1:
            raise ValueError(f"{where}: LayerNorm over {shape} is not supported (one feature axis)")
        n = shape[0]
        gamma = to_numpy(module.weight) if module.weight is not None else np.ones(n)
        beta = to_numpy(module.bias) if getattr(module, "bias", None) is not None else np.zeros(n)
        return [L.LayerNorm(gamma, beta, float(module.eps))]
    if kind in TORCH_INERT:
        return []
    if kind in TORCH_ACTIVATIONS:
        if kind == "Softplus" and (module.beta != 1 or module.threshold != 20):
            raise ValueError(f"{where}: Softplus(beta={module.beta}, threshold="
                             f"{module.threshold}) is not supported (beta=1, threshold=20)")
        if kind == "ELU" and module.alpha != 1.0:
            raise ValueError(f"{where}: ELU(alpha={module.alpha}) is not supported (alpha=1)")
        if kind == "GELU" and getattr(module, "approximate", "none") != "none":
            raise ValueError(f"{where}: GELU(approximate={module.approximate!r}) is not "
                             "supported (the exact form)")
        return [L.Activation(TORCH_ACTIVATIONS[kind])]
    raise ValueError(f"{where}: torch module {kind} is not supported (per-step modules: Linear, "
                     "LayerNorm, ReLU, Tanh, Sigmoid, Softplus, ELU, GELU, SiLU, Identity, "
                     "Dropout, and Sequential of them)")


def from_torch(rnn, *, pre=None, head=None, prefix=None, return_sequences=True,
               batch_first=None, inputs=None, targets=None, window=None, rnn_only=False):
    """A :class:`daskgru.Model` from torch modules (see :meth:`daskgru.Model.from_torch`)."""
    from .model import Model

    mode = getattr(rnn, "mode", None)
    if mode is None:  # a state_dict, a module holding one, or a cell
        sd = convert.torch_state_dict(rnn)
        pres = convert.find_prefixes(sd) if prefix is None else [prefix]
        if len(pres) != 1:
            raise ValueError(f"rnn holds {len(pres)} RNNs under {pres}; choose one with prefix=")
        pre_ = pres[0] if not pres[0] or pres[0].endswith(".") else pres[0] + "."
        w = sd.get(pre_ + "weight_hh_l0", sd.get(pre_ + "weight_hh"))
        if w is None:
            raise ValueError(f"rnn has no recurrent weight under {pre_!r}")
        rows, H = np.shape(w)
        P = {P.cell_class.gates * H: P for P in (GRUParams, LSTMParams)}.get(rows)
        if P is None:
            raise ValueError(f"{pre_}weight_hh_l0 has shape {(rows, H)}: neither a GRU nor an LSTM")
        layers, bias, used = convert.torch_layers(sd, P.cell_class(), prefix=pre_)
        params = P(layers, bias=bias)
        # the tensors of pre/head, given as modules, are in the state_dict too
        given = [to_numpy(v) for m in (pre, head) if hasattr(m, "state_dict")
                 for v in m.state_dict().values()]
        left = [k for k in sd if k not in used and not str(k).endswith("num_batches_tracked")
                and not any(np.shape(g) == np.shape(sd[k]) and np.array_equal(g, to_numpy(sd[k]))
                            for g in given)]
        if left and not rnn_only:
            raise ValueError(f"rnn holds {left} besides the RNN: give the modules they belong to "
                             "as pre= and head= (a state_dict has their weights but not their "
                             "activations), or pass rnn_only=True to leave them out")
    else:
        P = {"GRU": GRUParams, "LSTM": LSTMParams}.get(mode)
        if P is None:
            raise ValueError(f"torch module {type(rnn).__name__} (mode {mode!r}) is not a GRU or "
                             "an LSTM")
        params = P.from_torch(rnn)
    if batch_first is not None:
        bf = bool(batch_first)
    elif mode is not None:
        bf = bool(rnn.batch_first)
    elif hasattr(rnn, "named_modules"):  # a module holding the RNN (or a cell: no layout)
        bf = bool(getattr(dict(rnn.named_modules()).get(pre_.rstrip(".")), "batch_first", False))
    else:
        raise ValueError("a state_dict does not record batch_first (whether the RNN took "
                         "(batch, time, feature) inputs): pass batch_first=True or False to "
                         "from_torch")
    return Model(params, pre=torch_layers(pre, "pre"), post=torch_layers(head, "head"),
                 return_sequences=return_sequences, batch_first=bf, inputs=inputs,
                 targets=targets, window=window, description=f"torch {type(rnn).__name__}")
