"""A stack of recurrent layers: what the eager path and the graph run.

Layer ``l`` of a :class:`Stack` holds a cell and one weights record per direction (one, or
two for a bidirectional layer); its input is the input of the stack (layer 0) or the
outputs of layer ``l - 1``'s directions side by side, ``[forward, backward]``. Layers may
differ in cell, width and direction (Keras's ``GRU(16) -> GRU(8)``, ``GRU -> LSTM``);
:class:`daskgru.GRUParams` and :class:`daskgru.LSTMParams` are the uniform, torch-shaped
stacks. Every state travels as a ``(B, S)`` array per layer and direction, its layout
the cell's business.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .cells import Cell, Prepared, Weights

__all__ = ["Layer", "Stack", "PreparedStack", "DIRECTIONS", "float_dtype", "to_numpy"]

FLOATS = (np.dtype("float32"), np.dtype("float64"))
DIRECTIONS = ("forward", "backward")


def to_numpy(a):
    """A NumPy copy of an array-like or a torch tensor (duck-typed, no torch import);
    half and bfloat16 tensors become float32."""
    if hasattr(a, "detach"):
        a = a.detach()
        if str(getattr(a, "dtype", "")) in ("torch.float16", "torch.bfloat16"):
            a = a.float()
    if hasattr(a, "cpu") and not isinstance(a, np.ndarray):
        a = a.cpu()
    if hasattr(a, "numpy") and not isinstance(a, np.ndarray):
        a = a.numpy()
    return np.array(a)


def _frozen(a, dtype):
    """``a`` as a read-only C-contiguous array of ``dtype`` that nothing can write to: one
    over an immutable ``bytes`` copy (no writable view of it can exist, and its write flag
    cannot be turned back on); ``a`` itself where it already is one (a stack's own arrays,
    passed on by :meth:`Stack.astype` and the like)."""
    if type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous and _on_bytes(a):
        return a
    b = np.ascontiguousarray(a, dtype=dtype)
    return np.frombuffer(b.tobytes(), dtype=dtype).reshape(b.shape)


def _on_bytes(a) -> bool:
    """Whether ``a`` is a view, through arrays only, of a ``bytes`` object."""
    while isinstance(a, np.ndarray):
        a = a.base
    return isinstance(a, bytes)


def float_dtype(dtype, name="dtype"):
    dt = np.dtype(dtype)
    if dt not in FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


MERGES = ("concat", "sum", "mul", "ave")


class Layer(NamedTuple):
    """One layer: a cell and its weights, one record per direction; ``merge`` says how the
    two directions' outputs make the layer's output (Keras's ``Bidirectional`` merge modes:
    side by side, their sum, product or mean)."""

    cell: Cell
    weights: tuple
    merge: str = "concat"

    @property
    def input_size(self) -> int:
        return int(self.weights[0].w_ih.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.weights[0].w_hh.shape[1])

    @property
    def num_directions(self) -> int:
        return len(self.weights)

    @property
    def output_size(self) -> int:
        if self.merge != "concat":
            return self.hidden_size
        return self.num_directions * self.hidden_size

    @property
    def state_size(self) -> int:
        return self.cell.state_size(self.hidden_size)


class PreparedStack:
    """Kernel-ready weights of every layer: ``cells[l]`` and ``weights[l][d]`` (a
    :class:`~daskgru.cells.Prepared`), how each layer merges its directions, and a model's
    per-step layers before the stack (``pre``, applied by layer 0's chunk tasks). An opaque
    object, so that a task graph holds it as one value (dask would walk into nested
    tuples)."""

    __slots__ = ("cells", "weights", "pre", "merges", "fma")

    def __init__(self, cells, weights, pre=(), merges=None, fma=True):
        self.cells, self.weights, self.pre = cells, weights, pre
        self.merges = merges or ("concat",) * len(cells)
        self.fma = bool(fma)  # the products' numerics (daskgru.numerics), as resolved

    @property
    def nbytes(self) -> int:
        """Bytes of every array it holds (the weights and the input layers')."""
        def size(obj):
            if isinstance(obj, np.ndarray):
                return obj.nbytes
            if isinstance(obj, (tuple, list)):
                return sum(size(o) for o in obj)
            return 0

        return size(self.weights) + size(self.pre)

    def __getstate__(self):
        return self.cells, self.weights, self.pre, self.merges, self.fma

    def __setstate__(self, state):
        self.cells, self.weights, self.pre, self.merges, self.fma = state


class Stack:
    """A stack of recurrent layers (see the module docstring).

    Parameters
    ----------
    layers : sequence of Layer or (cell, weights) pairs
        ``weights`` holds one :class:`~daskgru.cells.Weights` per direction, in torch's
        layout for the cell (tensors are accepted and copied). A stack keeps read-only
        copies of the arrays (a snapshot: changing the arrays passed in changes nothing, and
        its own arrays refuse writes; make a new stack to change weights), so the kernels'
        transposed weights are built once per stack (:meth:`prepare`).
    dtype : {"float32", "float64"}, optional
        Cast every array to this dtype; default: the dtype of layer 0's arrays.

    Examples
    --------
    >>> import daskgru as dg
    >>> from daskgru.stack import Stack
    >>> g, q = dg.GRUParams.random(3, 16, seed=0), dg.LSTMParams.random(16, 8, seed=1)
    >>> s = Stack(g.layers + q.layers)
    >>> s.input_size, s.output_size, [layer.cell.name for layer in s.layers]
    (3, 8, ['gru', 'lstm'])
    """

    def __init__(self, layers, *, dtype=None):
        self._set_layers(layers, dtype)

    def _set_layers(self, layers, dtype, uniform=False):
        """Check and store the layers; ``uniform``: every layer must have layer 0's width
        and directions (the torch-shaped stacks)."""
        layers = [Layer(*lay) for lay in layers]
        if not layers:
            raise ValueError("weights must hold at least one layer")
        # Tensors (even ones that require grad) become arrays once, before anything reads them.
        for li, lay in enumerate(layers):
            if len(lay.weights) not in (1, 2):
                raise ValueError(f"each layer must hold 1 or 2 directions, got "
                                 f"{len(lay.weights)} (layer {li})")
        layers = [lay._replace(weights=tuple(
            Weights(*[a if isinstance(a, np.ndarray) else to_numpy(a) for a in w])
            for w in lay.weights)) for lay in layers]
        if dtype is None:
            dtype = np.result_type(*[a.dtype for a in layers[0].weights[0]])
            if dtype not in FLOATS:
                dtype = np.dtype("float32") if dtype.itemsize <= 4 else np.dtype("float64")
        dtype = float_dtype(dtype)
        ndir = len(layers[0].weights)
        out, I = [], None
        for li, lay in enumerate(layers):
            if not isinstance(lay.cell, Cell):
                raise TypeError(f"layer {li}: cell must be a daskgru Cell, got "
                                f"{type(lay.cell).__name__}")
            nd = len(lay.weights)
            if nd not in (1, 2):
                raise ValueError(f"each layer must hold 1 or 2 directions, got {nd}")
            if lay.merge not in MERGES:
                raise ValueError(f"layer {li}: merge must be one of {MERGES}, got {lay.merge!r}")
            if uniform and nd != ndir:
                raise ValueError(f"layer {li} has {nd} directions, layer 0 has {ndir}")
            G, w0 = lay.cell.gates, lay.weights[0]
            if li == 0 or not uniform:
                if w0.w_hh.ndim != 2 or w0.w_hh.shape[0] != G * w0.w_hh.shape[1] or not w0.w_hh.size:
                    raise ValueError(
                        f"layer {li} forward: w_hh must have shape ({G} * hidden_size, "
                        f"hidden_size) with hidden_size >= 1, got {w0.w_hh.shape}")
                H = w0.w_hh.shape[1]
            if I is None:
                if w0.w_ih.ndim != 2:
                    raise ValueError(f"layer 0 forward: w_ih must have shape ({G * H}, "
                                     f"input_size), got {w0.w_ih.shape}")
                I = w0.w_ih.shape[1]
            ws = []
            for di, w in enumerate(lay.weights):
                w = Weights(*[_frozen(a, dtype) for a in w])
                where = f"layer {li} {DIRECTIONS[di]}"
                expected = {"w_ih": (G * H, I), "w_hh": (G * H, H), "b_ih": (G * H,),
                            "b_hh": (G * H,)}
                for field, shape in expected.items():
                    a = getattr(w, field)
                    if a.shape != shape:
                        raise ValueError(f"{where}: {field} must have shape {shape}, got {a.shape}")
                    if not np.all(np.isfinite(a)):
                        raise ValueError(f"{where}: {field} holds NaN or infinite values")
                ws.append(w)
            out.append(Layer(lay.cell, tuple(ws), lay.merge))
            I = out[-1].output_size
        self.layers = tuple(out)
        self._prepared = {}  # fma -> the kernel-ready weights (see prepare)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_prepared"] = {}  # rebuilt where needed, not shipped
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        # unpickled arrays are writable, or views of buffers the caller holds: frozen again
        self.layers = tuple(lay._replace(weights=tuple(Weights(*[_frozen(a, a.dtype) for a in w])
                                                       for w in lay.weights))
                            for lay in self.layers)
        self._prepared = {}

    # ------------------------------------------------------------------ properties
    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def dtype(self) -> np.dtype:
        return self.layers[0].weights[0].w_hh.dtype

    @property
    def state_sizes(self) -> list:
        """Columns of the state of every (layer, direction), in that order."""
        return [lay.state_size for lay in self.layers for _ in lay.weights]

    def __repr__(self):
        parts = ", ".join(
            f"{lay.cell.name.upper()}({lay.input_size}->{lay.hidden_size}"
            f"{', bidirectional' if lay.num_directions == 2 else ''}"
            f"{', ' + lay.merge if lay.num_directions == 2 and lay.merge != 'concat' else ''})"
            for lay in self.layers)
        return f"Stack([{parts}], dtype={self.dtype})"

    def __eq__(self, other):
        if not isinstance(other, Stack) or type(self) is not type(other):
            return NotImplemented
        return (self.dtype == other.dtype and len(self.layers) == len(other.layers)
                and self._extra() == other._extra()
                and all(a.cell == b.cell and a.merge == b.merge
                        and len(a.weights) == len(b.weights)
                        and all(np.array_equal(x, y) for wa, wb in zip(a.weights, b.weights)
                                for x, y in zip(wa, wb))
                        for a, b in zip(self.layers, other.layers)))

    __hash__ = None

    def _extra(self):
        """What a subclass adds to identity (besides cells and arrays)."""
        return ()

    def __dask_tokenize__(self):
        from dask.base import normalize_token

        return (type(self).__name__, str(self.dtype), self._extra(),
                [(lay.cell, lay.merge, normalize_token([list(w) for w in lay.weights]))
                 for lay in self.layers])

    # ------------------------------------------------------------------ transforms
    def _rebuild(self, layers, dtype=None):
        return Stack(layers, dtype=dtype)

    def astype(self, dtype):
        """The same model with every array cast to ``dtype`` (self if it already is)."""
        dtype = float_dtype(dtype)
        if dtype == self.dtype:
            return self
        return self._rebuild(self.layers, dtype)

    def map(self, func):
        """Apply ``func`` to every array (used for gradients and optimisers)."""
        return self._rebuild([lay._replace(weights=[Weights(*[func(a) for a in w])
                                                    for w in lay.weights])
                              for lay in self.layers])

    def prepare(self, fma=None) -> PreparedStack:
        """Kernel-ready weights (a new :class:`PreparedStack` each call, over weights built
        once per stack and numerics setting and kept: about twice the weights' bytes; the
        stack's arrays are read-only, so they cannot go stale). ``fma``: the products'
        numerics, by default the ``daskgru.fma`` setting now (:mod:`daskgru.numerics`)."""
        if fma is None:
            from .numerics import use_fma

            fma = use_fma()
        fma = bool(fma)
        weights = self._prepared.get(fma)
        if weights is None:
            weights = tuple(tuple(Prepared.of(w, fma) for w in lay.weights)
                            for lay in self.layers)
            self._prepared[fma] = weights
        return PreparedStack(tuple(lay.cell for lay in self.layers), weights,
                             merges=tuple(lay.merge for lay in self.layers), fma=fma)
