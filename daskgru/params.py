"""GRUParams: the one weight container, and its converters.

Internally every (layer, direction) holds torch's layout, gate order r, z, n::

    w_ih (3H, I_l)   w_hh (3H, H)   b_ih (3H,)   b_hh (3H,)

``I_l`` is ``input_size`` for layer 0 and ``D * H`` above it. With ``reset_after=False``
(the Cho et al. form) the candidate is ``tanh(W_in x + b_in + W_hn (r * h) + b_hn)``, so the
two candidate biases simply add. torch and Keras are never imported: tensors are duck-typed.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

__all__ = ["GRUParams", "GRUWeights", "load_params"]

_FLOATS = (np.dtype("float32"), np.dtype("float64"))
GATES = ("r", "z", "n")
DIRECTIONS = ("forward", "backward")


class GRUWeights(NamedTuple):
    """Weights of one layer and direction, in torch's layout (gate order r, z, n)."""

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray


def _to_numpy(a):
    """A NumPy copy of an array-like or a torch tensor (duck-typed, no torch import)."""
    if hasattr(a, "detach"):
        a = a.detach()
    if hasattr(a, "cpu") and not isinstance(a, np.ndarray):
        a = a.cpu()
    if hasattr(a, "numpy") and not isinstance(a, np.ndarray):
        a = a.numpy()
    return np.array(a)


def _float_dtype(dtype, name="dtype"):
    dt = np.dtype(dtype)
    if dt not in _FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


class GRUParams:
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

    Examples
    --------
    >>> import daskgru as dg
    >>> p = dg.GRUParams.random(3, 8, num_layers=2, bidirectional=True, seed=0)
    >>> p.input_size, p.hidden_size, p.num_layers, p.num_directions
    (3, 8, 2, 2)
    >>> sorted(p.to_torch_state_dict())[:2]
    ['bias_hh_l0', 'bias_hh_l0_reverse']
    """

    def __init__(self, weights, *, reset_after=True, bias=True, dtype=None):
        layers = [list(layer) for layer in weights]
        if not layers:
            raise ValueError("weights must hold at least one layer")
        ndir = len(layers[0])
        if ndir not in (1, 2):
            raise ValueError(f"each layer must hold 1 or 2 directions, got {ndir}")
        # Tensors (even ones that require grad) become arrays once, before anything reads them.
        layers = [[GRUWeights(*[_to_numpy(a) for a in w]) for w in layer] for layer in layers]
        if dtype is None:
            dtype = np.result_type(*[a.dtype for a in layers[0][0]])
            if dtype not in _FLOATS:
                dtype = np.dtype("float32") if dtype == np.float16 else np.dtype("float64")
        dtype = _float_dtype(dtype)
        # Sizes come from layer 0 forward and bind every other array, directions included.
        w0 = layers[0][0]
        if w0.w_hh.ndim != 2 or w0.w_hh.shape[0] != 3 * w0.w_hh.shape[1] or not w0.w_hh.size:
            raise ValueError(
                f"layer 0 forward: w_hh must have shape (3 * hidden_size, hidden_size) with "
                f"hidden_size >= 1, got {w0.w_hh.shape}"
            )
        H = w0.w_hh.shape[1]
        if w0.w_ih.ndim != 2:
            raise ValueError(
                f"layer 0 forward: w_ih must have shape ({3 * H}, input_size), got {w0.w_ih.shape}"
            )
        I = w0.w_ih.shape[1]
        out = []
        for li, layer in enumerate(layers):
            if len(layer) != ndir:
                raise ValueError(f"layer {li} has {len(layer)} directions, layer 0 has {ndir}")
            ws = []
            for di, w in enumerate(layer):
                w = GRUWeights(*[np.ascontiguousarray(a, dtype=dtype) for a in w])
                where = f"layer {li} {DIRECTIONS[di]}"
                expected = {
                    "w_ih": (3 * H, I if li == 0 else ndir * H),
                    "w_hh": (3 * H, H),
                    "b_ih": (3 * H,),
                    "b_hh": (3 * H,),
                }
                for field, shape in expected.items():
                    a = getattr(w, field)
                    if a.shape != shape:
                        raise ValueError(
                            f"{where}: {field} must have shape {shape}, got {a.shape}"
                        )
                    if not np.all(np.isfinite(a)):
                        raise ValueError(f"{where}: {field} holds NaN or infinite values")
                ws.append(w)
            out.append(tuple(ws))
        self.weights = tuple(out)
        self.reset_after = bool(reset_after)
        self.bias = bool(bias)
        if not self.bias:
            for layer in self.weights:
                for w in layer:
                    if np.any(w.b_ih) or np.any(w.b_hh):
                        raise ValueError("bias=False but some bias arrays are non-zero")

    # ------------------------------------------------------------------ properties
    @property
    def input_size(self) -> int:
        return int(self.weights[0][0].w_ih.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.weights[0][0].w_hh.shape[1])

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    @property
    def num_directions(self) -> int:
        return len(self.weights[0])

    @property
    def bidirectional(self) -> bool:
        return self.num_directions == 2

    @property
    def dtype(self) -> np.dtype:
        return self.weights[0][0].w_hh.dtype

    @property
    def output_size(self) -> int:
        return self.num_directions * self.hidden_size

    def __repr__(self):
        return (
            f"GRUParams(input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
            f"reset_after={self.reset_after}, bias={self.bias}, dtype={self.dtype})"
        )

    def __eq__(self, other):
        if not isinstance(other, GRUParams):
            return NotImplemented
        return (
            self.reset_after == other.reset_after
            and self.bias == other.bias
            and self.dtype == other.dtype
            and self.num_layers == other.num_layers
            and self.num_directions == other.num_directions
            and all(
                np.array_equal(a, b)
                for la, lb in zip(self.weights, other.weights)
                for wa, wb in zip(la, lb)
                for a, b in zip(wa, wb)
            )
        )

    __hash__ = None

    def __dask_tokenize__(self):
        from dask.base import normalize_token

        return (
            "GRUParams",
            self.reset_after,
            self.bias,
            str(self.dtype),
            normalize_token([list(w) for layer in self.weights for w in layer]),
        )

    def astype(self, dtype) -> "GRUParams":
        """The same model with every array cast to ``dtype`` (self if it already is)."""
        dtype = _float_dtype(dtype)
        if dtype == self.dtype:
            return self
        return GRUParams(self.weights, reset_after=self.reset_after, bias=self.bias, dtype=dtype)

    def map(self, func) -> "GRUParams":
        """Apply ``func`` to every array (used for gradients and optimisers)."""
        return GRUParams(
            [[GRUWeights(*[func(a) for a in w]) for w in layer] for layer in self.weights],
            reset_after=self.reset_after,
            bias=self.bias,
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def random(
        cls,
        input_size,
        hidden_size,
        *,
        num_layers=1,
        bidirectional=False,
        reset_after=True,
        bias=True,
        dtype="float32",
        seed=None,
    ) -> "GRUParams":
        """Weights drawn like torch's default, uniform on ``±1/sqrt(hidden_size)``.

        Examples
        --------
        >>> GRUParams.random(4, 16, seed=1).dtype
        dtype('float32')
        """
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(hidden_size)
        H, D = int(hidden_size), 2 if bidirectional else 1

        def u(*shape):
            return rng.uniform(-k, k, size=shape)

        weights = []
        for layer in range(int(num_layers)):
            I = int(input_size) if layer == 0 else D * H
            ws = []
            for _ in range(D):
                b = (u(3 * H), u(3 * H)) if bias else (np.zeros(3 * H), np.zeros(3 * H))
                ws.append(GRUWeights(u(3 * H, I), u(3 * H, H), *b))
            weights.append(ws)
        return cls(weights, reset_after=reset_after, bias=bias, dtype=dtype)

    @classmethod
    def from_torch(cls, module_or_state_dict, *, dtype=None) -> "GRUParams":
        """From a ``torch.nn.GRU``, a ``torch.nn.GRUCell`` or a state_dict of either.

        Layers, directions and bias are read off the parameter names; tensors or NumPy
        arrays are accepted, and torch need not be installed for arrays.
        """
        obj = module_or_state_dict
        if hasattr(obj, "state_dict") and callable(obj.state_dict):
            if getattr(obj, "batch_first", False) not in (False, None):
                pass  # batch_first is a call option here, not a weight
            if getattr(obj, "proj_size", 0):
                raise ValueError("GRU with proj_size is not supported")
            sd = obj.state_dict()
        elif hasattr(obj, "keys"):
            sd = obj
        else:
            raise TypeError(
                f"from_torch expects a torch.nn.GRU/GRUCell or a state_dict, got {type(obj).__name__}"
            )
        sd = {k: _to_numpy(v) for k, v in sd.items()}
        if "weight_ih" in sd:  # GRUCell
            layers = [[""]]
        else:
            layers, l = [], 0
            while f"weight_ih_l{l}" in sd:
                dirs = [f"_l{l}"] + ([f"_l{l}_reverse"] if f"weight_ih_l{l}_reverse" in sd else [])
                layers.append(dirs)
                l += 1
            if not layers:
                raise ValueError(
                    "state_dict has no 'weight_ih_l0' or 'weight_ih' entry; keys: "
                    + ", ".join(sorted(sd))
                )
        has_bias = any(k.startswith("bias_") for k in sd)
        weights = []
        for dirs in layers:
            ws = []
            for sfx in dirs:
                w_ih, w_hh = sd[f"weight_ih{sfx}"], sd[f"weight_hh{sfx}"]
                if has_bias:
                    b_ih, b_hh = sd[f"bias_ih{sfx}"], sd[f"bias_hh{sfx}"]
                else:
                    b_ih = b_hh = np.zeros(w_hh.shape[0], dtype=w_hh.dtype)
                ws.append(GRUWeights(w_ih, w_hh, b_ih, b_hh))
            weights.append(ws)
        return cls(weights, reset_after=True, bias=has_bias, dtype=dtype)

    def to_torch_state_dict(self) -> dict:
        """``{torch parameter name: np.ndarray}`` for ``torch.nn.GRU.load_state_dict``
        (wrap each value with ``torch.from_numpy``). Only ``reset_after=True`` exists in torch.
        """
        if not self.reset_after:
            raise ValueError("torch.nn.GRU has no reset_after=False form; these params use it")
        sd = {}
        for l, layer in enumerate(self.weights):
            for d, w in enumerate(layer):
                sfx = f"_l{l}" + ("_reverse" if d else "")
                sd["weight_ih" + sfx] = w.w_ih.copy()
                sd["weight_hh" + sfx] = w.w_hh.copy()
                if self.bias:
                    sd["bias_ih" + sfx] = w.b_ih.copy()
                    sd["bias_hh" + sfx] = w.b_hh.copy()
        return sd

    @classmethod
    def from_keras(cls, layer_or_weights, reset_after=None, *, dtype=None) -> "GRUParams":
        """From a Keras ``GRU`` layer, a ``Bidirectional(GRU)`` (concat merge), a list of
        such layers (stacked), or a ``get_weights()`` list plus ``reset_after``.

        Keras stores ``kernel (I, 3H)``, ``recurrent_kernel (H, 3H)`` and ``bias`` (``(2, 3H)``
        when ``reset_after`` else ``(3H,)``) with columns in gate order z, r, h.
        """
        obj = layer_or_weights
        if isinstance(obj, (list, tuple)) and obj and all(hasattr(o, "get_weights") for o in obj):
            parts = [cls.from_keras(o, reset_after, dtype=dtype) for o in obj]
            ra = {p.reset_after for p in parts}
            if len(ra) > 1:
                raise ValueError("stacked Keras layers mix reset_after True and False")
            return cls(
                [layer for p in parts for layer in p.weights],
                reset_after=ra.pop(),
                # A layer without biases is exactly one with zero biases, so a stack that
                # mixes use_bias True and False has biases.
                bias=any(p.bias for p in parts),
                dtype=dtype,
            )
        if hasattr(obj, "forward_layer") and hasattr(obj, "backward_layer"):
            mode = getattr(obj, "merge_mode", "concat")
            if mode != "concat":
                raise ValueError(f"Bidirectional merge_mode must be 'concat', got {mode!r}")
            if not getattr(obj.backward_layer, "go_backwards", True):
                raise ValueError("the backward layer of Bidirectional must have go_backwards=True")
            f = cls._from_keras_gru(obj.forward_layer, reset_after, dtype)
            # The backward layer runs with go_backwards=True; Bidirectional flips its output
            # sequence back, which is exactly the reverse direction of torch.nn.GRU.
            b = cls._from_keras_gru(obj.backward_layer, reset_after, dtype, backward=True)
            if (f.reset_after, f.bias) != (b.reset_after, b.bias):
                raise ValueError("the two layers of Bidirectional differ in reset_after or use_bias")
            return cls(
                [[f.weights[0][0], b.weights[0][0]]],
                reset_after=f.reset_after,
                bias=f.bias,
                dtype=dtype,
            )
        return cls._from_keras_gru(obj, reset_after, dtype)

    @classmethod
    def _from_keras_gru(cls, obj, reset_after, dtype, backward=False) -> "GRUParams":
        """One Keras GRU layer or its ``get_weights()`` list (one layer, one direction)."""
        if hasattr(obj, "get_weights"):
            cfg = obj.get_config() if hasattr(obj, "get_config") else {}
            for key, want in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
                got = cfg.get(key, want)
                if got != want:
                    raise ValueError(f"Keras GRU {key} must be {want!r}, got {got!r}")
            if bool(cfg.get("go_backwards", False)) != backward:
                raise ValueError("a lone Keras GRU with go_backwards=True is not supported")
            layer_ra = bool(getattr(obj, "reset_after", cfg.get("reset_after", True)))
            if reset_after is not None and bool(reset_after) != layer_ra:
                raise ValueError(
                    f"reset_after={reset_after!r} given, but the Keras layer has "
                    f"reset_after={layer_ra}"
                )
            reset_after = layer_ra
            weights = obj.get_weights()
        else:
            weights = list(obj)
            if reset_after is None:
                reset_after = True
        weights = [_to_numpy(w) for w in weights]
        if len(weights) not in (2, 3):
            raise ValueError(f"Keras GRU weights must be 2 or 3 arrays, got {len(weights)}")
        kernel, rec = weights[0], weights[1]
        if kernel.ndim != 2 or rec.ndim != 2 or rec.shape[1] != 3 * rec.shape[0]:
            raise ValueError(
                f"Keras kernel (I, 3H) and recurrent_kernel (H, 3H) expected, got "
                f"{kernel.shape} and {rec.shape}"
            )
        H = rec.shape[0]

        def reorder(m):  # columns z, r, h -> rows r, z, n
            return np.concatenate([m[..., H:2 * H], m[..., :H], m[..., 2 * H:]], axis=-1)

        has_bias = len(weights) == 3
        if has_bias:
            bias = weights[2]
            if reset_after:
                if bias.shape != (2, 3 * H):
                    raise ValueError(f"reset_after=True needs bias (2, {3 * H}), got {bias.shape}")
                b_ih, b_hh = reorder(bias[0]), reorder(bias[1])
            else:
                if bias.shape != (3 * H,):
                    raise ValueError(f"reset_after=False needs bias ({3 * H},), got {bias.shape}")
                b_ih, b_hh = reorder(bias), np.zeros(3 * H, bias.dtype)
        else:
            b_ih = b_hh = np.zeros(3 * H, kernel.dtype)
        w = GRUWeights(reorder(kernel).T, reorder(rec).T, b_ih, b_hh)
        return cls([[w]], reset_after=reset_after, bias=has_bias, dtype=dtype)

    def to_keras_weights(self, layer=0, direction=0) -> list:
        """``[kernel, recurrent_kernel, bias]`` of one layer and direction, for
        ``keras.layers.GRU(H, reset_after=p.reset_after).set_weights``.

        With ``reset_after=False`` Keras has one bias, so ``b_ih + b_hh`` is exported.
        """
        w = self.weights[layer][direction]
        H = self.hidden_size

        def reorder(m):  # rows r, z, n -> columns z, r, h
            return np.concatenate([m[..., H:2 * H], m[..., :H], m[..., 2 * H:]], axis=-1)

        out = [np.ascontiguousarray(reorder(w.w_ih.T)), np.ascontiguousarray(reorder(w.w_hh.T))]
        if self.bias:
            if self.reset_after:
                out.append(np.stack([reorder(w.b_ih), reorder(w.b_hh)]))
            else:
                out.append(reorder(w.b_ih + w.b_hh))
        return out

    @classmethod
    def from_cho(cls, W_z, W_r, W, b_z, b_r, b, *, dtype=None) -> "GRUParams":
        """From the seed document's equations (weights against ``[h_{t-1}, x_t]``, h first)::

            z_t = σ(W_z [h_{t-1}, x_t] + b_z)      r_t = σ(W_r [h_{t-1}, x_t] + b_r)
            h~_t = tanh(W [r_t ⊙ h_{t-1}, x_t] + b)
            h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h~_t

        Here ``z`` weights the candidate; internally ``z`` keeps the old state, so the
        update-gate pre-activation is negated (``1 - σ(a) = σ(-a)``). Gives ``reset_after=False``.
        """
        W_z, W_r, W = (_to_numpy(a) for a in (W_z, W_r, W))
        b_z, b_r, b = (_to_numpy(a) for a in (b_z, b_r, b))
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
        w = GRUWeights(w_ih, w_hh, b_ih, np.zeros_like(b_ih))
        return cls([[w]], reset_after=False, bias=True, dtype=dtype)

    # ------------------------------------------------------------------ xarray I/O
    def to_dataset(self):
        """An ``xr.Dataset``: per layer ``w_ih_l{k}``, ``w_hh_l{k}``, ``b_ih_l{k}``,
        ``b_hh_l{k}`` over dims (direction, gate, hidden, ...), configuration in attrs."""
        import xarray as xr

        H = self.hidden_size
        dirs = list(DIRECTIONS[: self.num_directions])
        data = {}
        for l, layer in enumerate(self.weights):
            st = [np.stack(a).reshape(len(dirs), 3, H, -1) for a in zip(*layer)]
            dims = ("direction", "gate", "hidden")
            data[f"w_ih_l{l}"] = (dims + (f"input_l{l}",), st[0])
            data[f"w_hh_l{l}"] = (dims + ("hidden_in",), st[1])
            data[f"b_ih_l{l}"] = (dims, st[2][..., 0])
            data[f"b_hh_l{l}"] = (dims, st[3][..., 0])
        attrs = {
            "model": "GRU",
            "input_size": self.input_size,
            "hidden_size": H,
            "num_layers": self.num_layers,
            "bidirectional": int(self.bidirectional),
            "reset_after": int(self.reset_after),
            "bias": int(self.bias),
            "gate_order": "r z n",
            "layout": "torch.nn.GRU (weight_ih rows r, z, n)",
        }
        return xr.Dataset(data, coords={"direction": dirs, "gate": list(GATES)}, attrs=attrs)

    @classmethod
    def from_dataset(cls, ds) -> "GRUParams":
        """Inverse of :meth:`to_dataset`."""
        if ds.attrs.get("model") != "GRU" or "num_layers" not in ds.attrs:
            raise ValueError("dataset was not written by GRUParams.to_dataset (attrs model/num_layers)")
        weights = []
        for l in range(int(ds.attrs["num_layers"])):
            arrs = []
            for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
                v = ds[f"{name}_l{l}"].transpose("direction", "gate", "hidden", ...).values
                arrs.append(v.reshape(v.shape[0], 3 * v.shape[2], *v.shape[3:]))
            weights.append([GRUWeights(*[a[d] for a in arrs]) for d in range(arrs[0].shape[0])])
        return cls(weights, reset_after=bool(ds.attrs["reset_after"]), bias=bool(ds.attrs["bias"]))

    def save(self, path):
        """Write to netCDF, or to zarr when ``path`` ends in ``.zarr``. The file appears
        under its name only once complete (written to a temporary name, then renamed); a
        failed write leaves no temporary behind and an existing file under ``path`` intact."""
        import shutil
        import uuid

        path = os.fspath(path)
        is_zarr = path.rstrip("/" + os.sep).endswith(".zarr")
        if is_zarr:  # "p.zarr/" names the directory p.zarr
            path = path.rstrip("/" + os.sep)
        # Unique per call, so that concurrent saves (threads or processes) never collide.
        tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                           f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")

        def remove(p):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.lexists(p):
                os.remove(p)

        ds = self.to_dataset()
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


def load_params(path) -> GRUParams:
    """Read params written by :meth:`GRUParams.save` (netCDF or zarr)."""
    import xarray as xr

    path = os.fspath(path)
    if path.rstrip("/").endswith(".zarr"):
        ds = xr.open_zarr(path)
    else:
        ds = xr.open_dataset(path)
    with ds:
        return GRUParams.from_dataset(ds.load())
