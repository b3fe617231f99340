"""GRUParams and LSTMParams: the torch-shaped stacks (every layer of one cell, one width,
the same directions), their converters and their files.

Internally every (layer, direction) holds torch's layout (:class:`daskgru.cells.Weights`)::

    w_ih (G, I_l)   w_hh (G, H)   b_ih (G,)   b_hh (G,)      G = 3H (GRU) or 4H (LSTM)

``I_l`` is ``input_size`` for layer 0 and ``D * H`` above it. With ``reset_after=False``
(the GRU's Cho et al. form) the candidate is ``tanh(W_in x + b_in + W_hn (r * h) + b_hn)``,
so the two candidate biases simply add. torch and Keras are never imported: tensors are
duck-typed.
"""
from __future__ import annotations

import os

import numpy as np

from . import convert
from .cells import GRUCell, LSTMCell, Weights
from .stack import DIRECTIONS, Stack, float_dtype, to_numpy

__all__ = ["RNNParams", "GRUParams", "LSTMParams", "GRUWeights", "LSTMWeights", "load_params"]

#: Weights of one GRU layer and direction, in torch's layout (gate order r, z, n).
GRUWeights = Weights
#: Weights of one LSTM layer and direction, in torch's layout (gate order i, f, g, o).
LSTMWeights = Weights
FORMAT_VERSION = 1


class RNNParams(Stack):
    """A torch-shaped stack of one cell: what ``torch.nn.GRU``/``torch.nn.LSTM`` hold.
    Subclasses name the cell (:class:`GRUParams`, :class:`LSTMParams`)."""

    cell_class = None
    model = ""

    def __init__(self, weights, *, bias=True, dtype=None, **cell_options):
        cell = self.cell_class(**cell_options)
        self._set_layers([(cell, list(layer)) for layer in weights], dtype, uniform=True)
        self.bias = bool(bias)
        if not self.bias and any(np.any(w.b_ih) or np.any(w.b_hh) for w in self._all()):
            raise ValueError("bias=False but some bias arrays are non-zero")

    def _all(self):
        return [w for lay in self.layers for w in lay.weights]

    # ------------------------------------------------------------------ properties
    @property
    def cell(self):
        return self.layers[0].cell

    @property
    def weights(self):
        """``weights[layer][direction]``: a :class:`~daskgru.cells.Weights` each."""
        return tuple(lay.weights for lay in self.layers)

    @property
    def hidden_size(self) -> int:
        return self.layers[0].hidden_size

    @property
    def num_directions(self) -> int:
        return self.layers[0].num_directions

    @property
    def bidirectional(self) -> bool:
        return self.num_directions == 2

    def _extra(self):
        return (self.bias,)

    def __repr__(self):
        opts = "".join(f", {k}={v}" for k, v in self.cell.options().items())
        return (f"{type(self).__name__}(input_size={self.input_size}, hidden_size="
                f"{self.hidden_size}, num_layers={self.num_layers}, bidirectional="
                f"{self.bidirectional}{opts}, bias={self.bias}, dtype={self.dtype})")

    def _rebuild(self, layers, dtype=None):
        return type(self)([list(lay.weights) for lay in layers], bias=self.bias, dtype=dtype,
                          **self.cell.options())

    # ------------------------------------------------------------------ constructors
    @classmethod
    def _random(cls, input_size, hidden_size, num_layers, bidirectional, bias, dtype, seed,
                **cell_options):
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        float_dtype(dtype)
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(hidden_size)
        H, D = int(hidden_size), 2 if bidirectional else 1
        G = cls.cell_class.gates * H

        def u(*shape):
            return rng.uniform(-k, k, size=shape)

        weights = []
        for layer in range(int(num_layers)):
            I = int(input_size) if layer == 0 else D * H
            ws = []
            for _ in range(D):
                b = (u(G), u(G)) if bias else (np.zeros(G), np.zeros(G))
                ws.append(Weights(u(G, I), u(G, H), *b))
            weights.append(ws)
        return cls(weights, bias=bias, dtype=dtype, **cell_options)

    @classmethod
    def from_torch(cls, module_or_state_dict, *, prefix=None, dtype=None):
        """From a torch module (``nn.GRU``/``nn.GRUCell``, ``nn.LSTM``/``nn.LSTMCell``, or
        any module holding one, e.g. ``model.gru``) or a state_dict of one, whose keys may
        sit under a prefix (``"gru."``, ``"_orig_mod."``: found when unique, else give
        ``prefix``). Layers, directions and bias are read off the parameter names; a key
        the layers need that is missing, or one under the prefix that they do not have,
        is an error naming it. Parametrized weights (``weight_norm``) are evaluated
        through the module, exactly; half and bfloat16 tensors become float32.
        """
        obj = module_or_state_dict
        kind = cls.model
        mode = getattr(obj, "mode", None)
        if isinstance(mode, str) and mode != kind:
            raise ValueError(f"{cls.__name__}.from_torch got a torch {mode} module; use "
                             f"{'GRU' if mode == 'GRU' else 'LSTM'}Params for it")
        if getattr(obj, "proj_size", 0):
            raise ValueError("LSTM with proj_size is not supported")
        try:
            sd = convert.torch_state_dict(obj)
        except TypeError:
            raise TypeError(f"from_torch expects a torch module or a state_dict, got "
                            f"{type(obj).__name__}") from None
        layers, bias, _ = convert.torch_layers(sd, cls.cell_class(), prefix=prefix)
        return cls(layers, bias=bias, dtype=dtype)

    def to_torch_state_dict(self) -> dict:
        """``{torch parameter name: np.ndarray}`` for ``load_state_dict`` of the torch
        module (wrap each value with ``torch.from_numpy``)."""
        sd = {}
        for l, lay in enumerate(self.layers):
            for d, w in enumerate(lay.weights):
                sfx = f"_l{l}" + ("_reverse" if d else "")
                sd["weight_ih" + sfx] = w.w_ih.copy()
                sd["weight_hh" + sfx] = w.w_hh.copy()
                if self.bias:
                    sd["bias_ih" + sfx] = w.b_ih.copy()
                    sd["bias_hh" + sfx] = w.b_hh.copy()
        return sd

    @classmethod
    def from_keras(cls, layer_or_weights, *, dtype=None, **cell_options):
        """From a Keras layer, a ``Bidirectional`` of one (concat merge), a list of such
        layers (stacked), a whole Keras model that is one chain (its layers of this cell,
        in order; other layers are left to :class:`daskgru.Model`), or a ``get_weights()``
        list. Layer options daskgru cannot honour (another activation, ``go_backwards``
        outside ``Bidirectional``, ``stateful``) are refused by name.
        """
        obj = layer_or_weights
        if hasattr(obj, "layers") and not hasattr(obj, "forward_layer"):  # a whole model
            rnns = [lay for lay in convert.keras_chain(obj)
                    if convert.keras_kind(getattr(lay, "forward_layer", lay)) is not None]
            other = [lay.name for lay in rnns
                     if convert.keras_kind(getattr(lay, "forward_layer", lay)) != cls.cell_class.name]
            if other:
                raise ValueError(f"the Keras model also has other recurrent layers {other}; "
                                 "a model that mixes cells is a daskgru.Stack or Model")
            if not rnns:
                raise ValueError(f"the Keras model has no {cls.model} layer")
            for lay in rnns[:-1]:
                if not getattr(getattr(lay, "forward_layer", lay), "return_sequences", False):
                    raise ValueError(f"Keras layer {lay.name!r} has return_sequences=False but "
                                     "another recurrent layer follows it")
            obj = rnns if len(rnns) > 1 else rnns[0]
        if isinstance(obj, (list, tuple)) and obj and all(hasattr(o, "get_weights") for o in obj):
            parts = [cls.from_keras(o, dtype=dtype, **cell_options) for o in obj]
            opts = {tuple(sorted(p.cell.options().items())) for p in parts}
            if len(opts) > 1:
                raise ValueError("stacked Keras layers mix reset_after True and False"
                                 if cls is GRUParams else "stacked Keras layers differ in options")
            # A layer without biases is exactly one with zero biases, so a stack that
            # mixes use_bias True and False has biases.
            return cls([w for p in parts for w in p.weights], bias=any(p.bias for p in parts),
                       dtype=dtype, **parts[0].cell.options())
        if hasattr(obj, "forward_layer") and hasattr(obj, "backward_layer"):
            mode = getattr(obj, "merge_mode", "concat")
            if mode != "concat":
                raise ValueError(f"Bidirectional merge_mode must be 'concat', got {mode!r} "
                                 "(other merge modes run as a daskgru.Model)")
            if not getattr(obj.backward_layer, "go_backwards", True):
                raise ValueError("the backward layer of Bidirectional must have go_backwards=True")
            # The backward layer runs with go_backwards=True; Bidirectional flips its output
            # sequence back, which is exactly the reverse direction of a torch RNN.
            f = cls._from_keras_layer(obj.forward_layer, dtype, cell_options)
            b = cls._from_keras_layer(obj.backward_layer, dtype, cell_options, backward=True)
            if (f.cell, f.bias) != (b.cell, b.bias):
                raise ValueError("the two layers of Bidirectional differ in reset_after or "
                                 "use_bias")
            return cls([[f.weights[0][0], b.weights[0][0]]], bias=f.bias, dtype=dtype,
                       **f.cell.options())
        return cls._from_keras_layer(obj, dtype, cell_options)

    @classmethod
    def _from_keras_layer(cls, obj, dtype, cell_options, backward=False):
        """One Keras layer or its ``get_weights()`` list (one layer, one direction)."""
        if hasattr(obj, "get_weights"):
            kind = convert.keras_kind(obj)
            if kind is not None and kind != cls.cell_class.name:
                raise ValueError(f"Keras layer {obj.name!r} is a {kind.upper()}, not a {cls.model}")
            opts = convert.keras_cell_options(obj, cls.cell_class, backward=backward)
            for k, v in cell_options.items():
                if v is not None and bool(v) != opts[k]:
                    raise ValueError(f"{k}={v!r} given, but the Keras layer has {k}={opts[k]}")
            weights = obj.get_weights()
        else:
            weights = list(obj)
            opts = {k: (True if v is None else v) for k, v in cell_options.items()}
        cell = cls.cell_class(**opts)
        what = ", ".join(f"{k}={v}" for k, v in opts.items()) or cls.model
        w, has_bias = convert.keras_rnn_weights(weights, cell, what)
        return cls([[w]], bias=has_bias, dtype=dtype, **opts)

    def to_keras_weights(self, layer=0, direction=0) -> list:
        """``[kernel, recurrent_kernel, bias]`` of one layer and direction, for the Keras
        layer's ``set_weights``. Where Keras has one bias, ``b_ih + b_hh`` is exported."""
        return convert.keras_export(self.weights[layer][direction], self.cell, self.bias)

    # ------------------------------------------------------------------ xarray I/O
    def to_dataset(self):
        """An ``xr.Dataset``: per layer ``w_ih_l{k}``, ``w_hh_l{k}``, ``b_ih_l{k}``,
        ``b_hh_l{k}`` over dims (direction, gate, hidden, ...), configuration in attrs."""
        import xarray as xr

        H, G = self.hidden_size, self.cell.gates
        dirs = list(DIRECTIONS[: self.num_directions])
        data = {}
        for l, layer in enumerate(self.weights):
            st = [np.stack(a).reshape(len(dirs), G, H, -1) for a in zip(*layer)]
            dims = ("direction", "gate", "hidden")
            data[f"w_ih_l{l}"] = (dims + (f"input_l{l}",), st[0])
            data[f"w_hh_l{l}"] = (dims + ("hidden_in",), st[1])
            data[f"b_ih_l{l}"] = (dims, st[2][..., 0])
            data[f"b_hh_l{l}"] = (dims, st[3][..., 0])
        attrs = {
            "model": self.model,
            "input_size": self.input_size,
            "hidden_size": H,
            "num_layers": self.num_layers,
            "bidirectional": int(self.bidirectional),
            **{k: int(v) for k, v in self.cell.options().items()},
            "bias": int(self.bias),
            "gate_order": " ".join(self.cell.gate_names),
            "layout": f"torch.nn.{self.model} (weight_ih rows {', '.join(self.cell.gate_names)})",
            "daskgru_params_format": FORMAT_VERSION,
        }
        coords = {"direction": dirs, "gate": list(self.cell.gate_names)}
        return xr.Dataset(data, coords=coords, attrs=attrs)

    @classmethod
    def from_dataset(cls, ds):
        """Inverse of :meth:`to_dataset`."""
        if ds.attrs.get("model") != cls.model or "num_layers" not in ds.attrs:
            raise ValueError(f"dataset was not written by {cls.__name__}.to_dataset (attrs "
                             f"model={ds.attrs.get('model')!r}, num_layers)")
        weights = []
        G = cls.cell_class.gates
        for l in range(int(ds.attrs["num_layers"])):
            arrs = []
            for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
                v = ds[f"{name}_l{l}"].transpose("direction", "gate", "hidden", ...).values
                arrs.append(v.reshape(v.shape[0], G * v.shape[2], *v.shape[3:]))
            weights.append([Weights(*[a[d] for a in arrs]) for d in range(arrs[0].shape[0])])
        opts = {k: bool(ds.attrs[k]) for k in cls.cell_class().options()}
        return cls(weights, bias=bool(ds.attrs["bias"]), **opts)

    def save(self, path):
        """Write to netCDF, or to zarr when ``path`` ends in ``.zarr``. The file appears
        under its name only once complete (written to a temporary name, then renamed); a
        failed write leaves no temporary behind and an existing file under ``path`` intact."""
        return save_dataset(self.to_dataset(), path)


class GRUParams(RNNParams):
    """Weights of a (stacked, optionally bidirectional) GRU.

    Parameters
    ----------
    weights : sequence of sequence of GRUWeights
        ``weights[layer][direction]``; one direction, or two when bidirectional.
    reset_after : bool
        True for the torch/cuDNN/Keras-default form, where the reset gate multiplies
        ``W_hn h + b_hn``; False for the Cho et al. form, where it multiplies ``h`` first.
    bias : bool
        Whether the model has biases (False: all bias arrays are zero and exporters omit them).
    dtype : {"float32", "float64"}, optional
        Cast every array to this dtype; default: the dtype of the given arrays.

    The params hold read-only copies of the arrays (see :class:`daskgru.stack.Stack`): to
    change a weight, build new params, e.g. ``GRUParams([[w._replace(b_ih=b)]])``.

    Examples
    --------
    >>> import daskgru as dg
    >>> p = dg.GRUParams.random(3, 8, num_layers=2, bidirectional=True, seed=0)
    >>> p.input_size, p.hidden_size, p.num_layers, p.num_directions
    (3, 8, 2, 2)
    >>> sorted(p.to_torch_state_dict())[:2]
    ['bias_hh_l0', 'bias_hh_l0_reverse']
    """

    cell_class = GRUCell
    model = "GRU"

    def __init__(self, weights, *, reset_after=True, bias=True, dtype=None):
        super().__init__(weights, bias=bias, dtype=dtype, reset_after=reset_after)

    @property
    def reset_after(self) -> bool:
        return self.cell.reset_after

    def to_torch_state_dict(self) -> dict:
        """``{torch parameter name: np.ndarray}`` for ``torch.nn.GRU.load_state_dict``
        (wrap each value with ``torch.from_numpy``). Only ``reset_after=True`` exists in torch.
        """
        if not self.reset_after:
            raise ValueError("torch.nn.GRU has no reset_after=False form; these params use it")
        return super().to_torch_state_dict()

    @classmethod
    def random(cls, input_size, hidden_size, *, num_layers=1, bidirectional=False,
               reset_after=True, bias=True, dtype="float32", seed=None) -> "GRUParams":
        """Weights drawn like torch's default, uniform on ``±1/sqrt(hidden_size)``.

        Examples
        --------
        >>> GRUParams.random(4, 16, seed=1).dtype
        dtype('float32')
        """
        return cls._random(input_size, hidden_size, num_layers, bidirectional, bias, dtype,
                           seed, reset_after=reset_after)

    @classmethod
    def from_keras(cls, layer_or_weights, reset_after=None, *, dtype=None) -> "GRUParams":
        """From a Keras ``GRU`` layer, a ``Bidirectional(GRU)`` (concat merge), a list of
        such layers (stacked), a Keras model that is one chain of layers (its GRU layers),
        or a ``get_weights()`` list plus ``reset_after``.

        Keras stores ``kernel (I, 3H)``, ``recurrent_kernel (H, 3H)`` and ``bias`` (``(2, 3H)``
        when ``reset_after`` else ``(3H,)``) with columns in gate order z, r, h.
        """
        return super().from_keras(layer_or_weights, dtype=dtype, reset_after=reset_after)

    @classmethod
    def from_cho(cls, W_z, W_r, W, b_z, b_r, b, *, dtype=None) -> "GRUParams":
        """From the seed document's equations (weights against ``[h_{t-1}, x_t]``, h first)::

            z_t = σ(W_z [h_{t-1}, x_t] + b_z)      r_t = σ(W_r [h_{t-1}, x_t] + b_r)
            h~_t = tanh(W [r_t ⊙ h_{t-1}, x_t] + b)
            h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h~_t

        Here ``z`` weights the candidate; internally ``z`` keeps the old state, so the
        update-gate pre-activation is negated (``1 - σ(a) = σ(-a)``). Gives ``reset_after=False``.
        """
        W_z, W_r, W = (to_numpy(a) for a in (W_z, W_r, W))
        b_z, b_r, b = (to_numpy(a) for a in (b_z, b_r, b))
        if W_z.ndim != 2:
            raise ValueError(f"W_z must be 2-D (H, H + I), got shape {W_z.shape}")
        H = W_z.shape[0]
        if W_z.shape[1] <= H:
            raise ValueError(f"W_z must have shape (H, H + I) with I >= 1, got {W_z.shape}")
        for name, a, shape in (("W_r", W_r, W_z.shape), ("W", W, W_z.shape),
                               ("b_z", b_z, (H,)), ("b_r", b_r, (H,)), ("b", b, (H,))):
            if a.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
        w_ih = np.concatenate([W_r[:, H:], -W_z[:, H:], W[:, H:]])
        w_hh = np.concatenate([W_r[:, :H], -W_z[:, :H], W[:, :H]])
        b_ih = np.concatenate([b_r, -b_z, b])
        w = Weights(w_ih, w_hh, b_ih, np.zeros_like(b_ih))
        return cls([[w]], reset_after=False, bias=True, dtype=dtype)


class LSTMParams(RNNParams):
    """Weights of a (stacked, optionally bidirectional) LSTM, as ``torch.nn.LSTM`` holds
    them (gate order i, f, g, o; no ``proj_size``).

    Parameters
    ----------
    weights : sequence of sequence of LSTMWeights
        ``weights[layer][direction]``: ``w_ih (4H, I_l)``, ``w_hh (4H, H)``, ``b_ih``,
        ``b_hh`` (4H,).
    bias : bool
    dtype : {"float32", "float64"}, optional

    Examples
    --------
    >>> import daskgru as dg
    >>> q = dg.LSTMParams.random(3, 8, num_layers=2, seed=0)
    >>> q.hidden_size, q.weights[0][0].w_hh.shape
    (8, (32, 8))
    """

    cell_class = LSTMCell
    model = "LSTM"

    def __init__(self, weights, *, bias=True, dtype=None):
        super().__init__(weights, bias=bias, dtype=dtype)

    @classmethod
    def random(cls, input_size, hidden_size, *, num_layers=1, bidirectional=False, bias=True,
               dtype="float32", seed=None) -> "LSTMParams":
        """Weights drawn like torch's default, uniform on ``±1/sqrt(hidden_size)``."""
        return cls._random(input_size, hidden_size, num_layers, bidirectional, bias, dtype,
                           seed)

    @classmethod
    def from_keras(cls, layer_or_weights, *, dtype=None) -> "LSTMParams":
        """From a Keras ``LSTM`` layer, a ``Bidirectional(LSTM)`` (concat merge), a list of
        such layers, a Keras model that is one chain (its LSTM layers), or a
        ``get_weights()`` list: ``kernel (I, 4H)``, ``recurrent_kernel (H, 4H)``, ``bias
        (4H,)``, columns i, f, c, o (torch's order)."""
        return super().from_keras(layer_or_weights, dtype=dtype)


def save_dataset(ds, path):
    """Write a Dataset to netCDF, or zarr for ``*.zarr``, under a temporary name first."""
    from .files import remove, temporary_name

    path = os.fspath(path)
    is_zarr = path.rstrip("/" + os.sep).endswith(".zarr")
    if is_zarr:  # "p.zarr/" names the directory p.zarr
        path = path.rstrip("/" + os.sep)
    tmp = temporary_name(path)
    try:
        if is_zarr:
            ds.to_zarr(tmp, mode="w")
            if os.path.isdir(path):
                # A directory cannot be replaced in one step: move the old one aside
                # first, so that a failure before the rename keeps it under its name.
                old = tmp + "-old"
                os.replace(path, old)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old, path)
                    raise
                remove(old)
            else:
                os.replace(tmp, path)
        else:
            ds.to_netcdf(tmp)
            os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise
    return path


MODELS = {c.model: c for c in (GRUParams, LSTMParams)}


def load_params(path):
    """Read params written by :meth:`GRUParams.save` or :meth:`LSTMParams.save` (netCDF or
    zarr); the file says which."""
    import xarray as xr

    path = os.fspath(path)
    if path.rstrip("/").endswith(".zarr"):
        ds = xr.open_zarr(path)
    else:
        ds = xr.open_dataset(path)
    with ds:
        model = ds.attrs.get("model")
        if model not in MODELS:
            raise ValueError(f"{path!r} was not written by GRUParams/LSTMParams.save (attrs "
                             f"model={model!r})")
        return MODELS[model].from_dataset(ds.load())
