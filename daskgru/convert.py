"""Reading weights in torch's and Keras's layouts, strictly: what a converter cannot honour
exactly (a missing key, a parametrization it cannot evaluate, a layer option, an activation)
is an error that names it, never a smaller or different model.

torch and Keras are never imported: tensors, modules and layers are duck-typed.
"""
from __future__ import annotations

import re

import numpy as np

from .cells import Weights
from .stack import to_numpy

__all__ = ["torch_state_dict", "torch_layers", "keras_rnn_weights", "keras_cell_options",
           "keras_layers_of"]

_KEY = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")


def torch_state_dict(obj):
    """``{name: array}`` of a torch module or a state_dict (mapping). A parametrized
    module's weights (``torch.nn.utils.parametrizations.weight_norm`` and any other
    parametrization) are evaluated through the module, so they are exact."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        sd = {}
        for key, value in obj.state_dict().items():
            m = re.match(r"^(.*?)parametrizations\.([^.]+)\.original\d*$", key)
            if m:  # the parametrized tensor itself, as the module computes it
                owner = obj
                for part in filter(None, m.group(1).split(".")):
                    owner = getattr(owner, part)
                sd[m.group(1) + m.group(2)] = getattr(owner, m.group(2))
            else:
                sd[key] = value
        return {k: to_numpy(v) for k, v in sd.items()}
    if hasattr(obj, "keys"):
        return {k: v for k, v in obj.items()}
    raise TypeError(f"expected a torch module or a state_dict, got {type(obj).__name__}")


def _weight_norm(g, v):
    """torch.nn.utils.weight_norm: w = g * v / ||v||, the norm over every axis but the one
    along which g is not 1."""
    g, v = to_numpy(g), to_numpy(v)
    axes = tuple(i for i in range(v.ndim) if g.ndim != v.ndim or g.shape[i] == 1)
    return g * v / np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=axes, keepdims=True))


def find_prefixes(sd):
    """Prefixes under which a torch RNN's keys sit ("" at top level, "gru.", ...)."""
    out = set()
    for k in sd:
        if isinstance(k, str):
            for tail in ("weight_ih_l0", "weight_ih", "weight_ih_l0_g", "weight_ih_l0_v"):
                if k.endswith(tail) and (k == tail or k[-len(tail) - 1] == "."):
                    out.add(k[:-len(tail)])
    return sorted(out)


def torch_layers(sd, cell, *, prefix=None, what="state_dict"):
    """Weights of a torch RNN (``nn.GRU``/``nn.LSTM`` or their ``Cell`` modules) in the
    mapping ``sd``: ``(layers [[Weights per direction] per layer], bias, used keys)``.

    ``prefix`` ("gru.", "_orig_mod."...) is found when it is unique. Every key under the
    prefix must be one the RNN has; every key the layers need must be there; old-style
    weight norm (``weight_hh_l0_g``/``_v``) is evaluated exactly; anything else is an
    error naming the key.
    """
    prefixes = find_prefixes(sd)
    if prefix is None:
        if not prefixes:
            raise ValueError(f"{what} has no 'weight_ih_l0' or 'weight_ih' entry; keys: "
                             + ", ".join(sorted(map(str, sd))[:12]))
        if len(prefixes) > 1:
            raise ValueError(f"{what} holds several RNNs, under "
                             f"{[p.rstrip('.') or '(top level)' for p in prefixes]}; choose one "
                             "with prefix=")
        prefix = prefixes[0]
    elif prefix and not prefix.endswith("."):
        prefix += "."
    own = {k[len(prefix):]: v for k, v in sd.items()
           if isinstance(k, str) and k.startswith(prefix) and "." not in k[len(prefix):]}
    if not own:
        raise ValueError(f"no RNN weights under prefix {prefix!r} in {what}; RNNs found at "
                         f"{[p.rstrip('.') or '(top level)' for p in prefixes]}")
    para = [k for k in sd if isinstance(k, str) and k.startswith(prefix + "parametrizations.")]
    if para:
        raise ValueError(f"{what} holds parametrized weights ({para[0]}, ...): pass the "
                         "module itself (its parametrizations are evaluated exactly), or "
                         "remove them first with torch.nn.utils.parametrize."
                         "remove_parametrizations")
    # old-style weight norm: name_g and name_v make name
    for k in [k for k in own if k.endswith("_g") and k[:-2] + "_v" in own]:
        own[k[:-2]] = _weight_norm(own.pop(k), own.pop(k[:-2] + "_v"))
    keys = set(own)
    if "weight_ih" in own:  # a GRUCell / LSTMCell
        names = {(0, 0): ""}
    else:
        bad = [k for k in own if not _KEY.match(k)]
        if bad:
            raise ValueError(f"{what}: {sorted(prefix + k for k in bad)} are not weights of a "
                             f"torch {cell.name.upper()}")
        parsed = [_KEY.match(k).groups() for k in own]
        if any(g[1] == "hr" for g in parsed):
            raise ValueError(f"{what}: {prefix}weight_hr_l0 belongs to an LSTM with proj_size, "
                             "which daskgru does not support")
        L = 1 + max(int(g[2]) for g in parsed)
        D = 2 if any(g[3] for g in parsed) else 1
        names = {(l, d): f"_l{l}" + ("_reverse" if d else "") for l in range(L) for d in range(D)}
    has_bias = any(k.startswith("bias") for k in own)
    needed = [f"{kind}{sfx}" for sfx in names.values()
              for kind in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if has_bias else ())]
    missing = [prefix + k for k in needed if k not in own]
    if missing:
        raise ValueError(f"{what} lacks {missing} (a torch {cell.name.upper()} of "
                         f"{1 + max(l for l, _ in names)} layer(s) and "
                         f"{1 + max(d for _, d in names)} direction(s) needs them)")
    extra = sorted(keys - set(needed))
    if extra:
        raise ValueError(f"{what}: {[prefix + k for k in extra]} are not weights of a torch "
                         f"{cell.name.upper()}")
    L = 1 + max(l for l, _ in names)
    D = 1 + max(d for _, d in names)
    layers = []
    for l in range(L):
        ws = []
        for d in range(D):
            sfx = names[(l, d)]
            w_ih, w_hh = to_numpy(own[f"weight_ih{sfx}"]), to_numpy(own[f"weight_hh{sfx}"])
            if w_hh.ndim != 2 or w_hh.shape[0] != cell.gates * w_hh.shape[1]:
                raise ValueError(f"{what}: {prefix}weight_hh{sfx} has shape {w_hh.shape}, not "
                                 f"({cell.gates} * hidden_size, hidden_size) as a "
                                 f"{cell.name.upper()}'s")
            if has_bias:
                b_ih, b_hh = to_numpy(own[f"bias_ih{sfx}"]), to_numpy(own[f"bias_hh{sfx}"])
            else:
                b_ih = b_hh = np.zeros(w_hh.shape[0], dtype=w_hh.dtype)
            ws.append(Weights(w_ih, w_hh, b_ih, b_hh))
        layers.append(ws)
    return layers, has_bias, {prefix + k for k in needed}


# ----------------------------------------------------------------------------- Keras
_KERAS = {"GRU": "gru", "LSTM": "lstm"}


def keras_kind(layer):
    """"gru"/"lstm" for a Keras GRU/LSTM layer (by its class, duck-typed), else None."""
    return _KERAS.get(type(layer).__name__)


def keras_cell_options(layer, cell_cls, *, backward=False):
    """The cell options of a Keras GRU/LSTM layer, refusing what daskgru cannot honour:
    other activations, ``go_backwards`` outside a ``Bidirectional``, a ``stateful`` layer."""
    cfg = layer.get_config() if hasattr(layer, "get_config") else {}
    kind = cell_cls.name.upper()
    where = f"Keras {kind} {cfg.get('name', getattr(layer, 'name', ''))!r}".replace(" ''", "")
    for key, want in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        got = cfg.get(key, want)
        if got != want:
            raise ValueError(f"{where}: {key} must be {want!r}, got {got!r}")
    if bool(cfg.get("go_backwards", False)) != backward:
        raise ValueError(f"{where}: a lone Keras {kind} with go_backwards=True is not "
                         "supported (wrap it in Bidirectional, or reverse the input)")
    if cfg.get("stateful", False):
        raise ValueError(f"{where}: stateful=True is not supported (pass the state as h0)")
    if cell_cls.name == "gru":
        return {"reset_after": bool(getattr(layer, "reset_after", cfg.get("reset_after", True)))}
    return {}


def keras_rnn_weights(weights, cell, what):
    """:class:`Weights` from Keras's ``[kernel (I, G), recurrent_kernel (H, G)[, bias]]``
    (columns in Keras's gate order, bias ``(2, G)`` for a GRU with reset_after, else
    ``(G,)``)."""
    weights = [to_numpy(w) for w in weights]
    kind = cell.name.upper()
    if len(weights) not in (2, 3):
        raise ValueError(f"Keras {kind} weights must be 2 or 3 arrays, got {len(weights)}")
    kernel, rec = weights[0], weights[1]
    G = cell.gates
    if kernel.ndim != 2 or rec.ndim != 2 or rec.shape[1] != G * rec.shape[0]:
        raise ValueError(f"Keras kernel (I, {G}H) and recurrent_kernel (H, {G}H) expected, "
                         f"got {kernel.shape} and {rec.shape}")
    H = rec.shape[0]
    order = cell.keras_gate_order

    def reorder(m):  # Keras column blocks -> the cell's gate order
        return np.concatenate([m[..., q * H:(q + 1) * H] for q in order], axis=-1)

    zeros = np.zeros(G * H, kernel.dtype)
    if len(weights) == 3:
        bias = weights[2]
        want = np.shape(cell.keras_bias(zeros, zeros))
        if bias.shape != want:
            raise ValueError(f"{what} needs bias {want}, got {bias.shape}")
        b_ih, b_hh = (reorder(bias[0]), reorder(bias[1])) if bias.ndim == 2 else (
            reorder(bias), zeros)
    else:
        b_ih = b_hh = zeros
    return Weights(reorder(kernel).T, reorder(rec).T, b_ih, b_hh), len(weights) == 3


def keras_export(w, cell, bias):
    """``[kernel, recurrent_kernel(, bias)]`` in Keras's layout (inverse of the above)."""
    H = w.w_hh.shape[1]
    inv = np.argsort(cell.keras_gate_order)

    def reorder(m):  # the cell's gate order -> Keras column blocks
        return np.concatenate([m[..., q * H:(q + 1) * H] for q in inv], axis=-1)

    out = [np.ascontiguousarray(reorder(w.w_ih.T)), np.ascontiguousarray(reorder(w.w_hh.T))]
    if bias:
        b = cell.keras_bias(w.b_ih, w.b_hh)
        out.append(reorder(b))
    return out


def keras_layers_of(model):
    """Every layer of a Keras model, depth first (nested models walked)."""
    for layer in getattr(model, "layers", ()):
        if hasattr(layer, "layers") and not hasattr(layer, "forward_layer"):
            yield from keras_layers_of(layer)
        else:
            yield layer


def _keras_sources(obj):
    """Names of the layers whose outputs a serialized Keras call reads (``keras_history``)."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [obj["config"]["keras_history"][0]]
        return [n for v in obj.values() for n in _keras_sources(v)]
    if isinstance(obj, (list, tuple)):
        return [n for v in obj for n in _keras_sources(v)]
    return []


def keras_chain(model):
    """The layers of a Keras model that is one chain — a single input, every layer fed by
    the layer before it alone — in order, inputs left out. A model that branches or merges
    is refused with the name of the layer where it does: stacking parallel branches would
    make a model that does not exist. Read from the model's config (the serialized graph)."""
    if not hasattr(model, "layers"):
        raise TypeError(f"expected a Keras model, got {type(model).__name__}")
    layers = list(keras_layers_of(model))
    by_name = {lay.name: lay for lay in layers}
    if type(model).__name__ == "Sequential" and not any(
            hasattr(lay, "layers") and not hasattr(lay, "forward_layer") for lay in model.layers):
        return [lay for lay in layers if type(lay).__name__ != "InputLayer"]
    cfg = model.get_config()
    inputs, outputs = cfg.get("input_layers", []), cfg.get("output_layers", [])
    n_in = len(inputs) if inputs and isinstance(inputs[0], list) else (1 if inputs else 0)
    n_out = len(outputs) if outputs and isinstance(outputs[0], list) else (1 if outputs else 0)
    if n_in > 1 or n_out > 1:
        raise ValueError(f"the Keras model has {n_in} inputs and {n_out} outputs; daskgru "
                         "runs models with one of each")
    chain = []
    for entry in cfg.get("layers", []):
        name, kind = entry.get("name"), entry.get("class_name")
        nodes = entry.get("inbound_nodes", [])
        sources = [n for node in nodes for n in _keras_sources(node)]
        if kind == "InputLayer":
            if chain:
                raise ValueError("the Keras model has several inputs; daskgru runs models "
                                 "with one")
        elif chain and (len(nodes) != 1 or sources != [chain[-1]]):
            raise ValueError(
                f"the Keras model is not a chain of layers: layer {name!r} takes its input "
                f"from {sources} rather than from {chain[-1]!r} alone (branches and merges "
                "are not supported)")
        chain.append(name)
    return [by_name[n] for n in chain if type(by_name.get(n)).__name__ != "InputLayer"
            and n in by_name]
