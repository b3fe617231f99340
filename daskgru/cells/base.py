"""The cell seam: what a recurrent cell provides, and the records that travel with it.

A cell (:class:`Cell`) owns everything that depends on its equations: the number and
order of its gates, the size of its state (a GRU carries ``h``; an LSTM ``(h, c)``, stored
side by side as one ``(B, 2H)`` array), its chunk scan, its chunk backward and the tangent
that ``method="newton"`` propagates, and how its weights map to Keras's layout. Everything
above the cells (the eager path, the dask graph, parallel-in-time methods, training, the
xarray front end, the command line) handles states as opaque ``(B, S)`` arrays and calls
these methods; none of it names a gate.

The input projection is the same for every cell (``b_ih + x @ W_ih^T``, :func:`project`),
as is the part of the backward that follows from it (:func:`chunk_backward`).

To add a cell: subclass :class:`Cell` in a module of its own under ``daskgru/cells/``,
write its kernels there with :func:`daskgru.kernels.jit.kernel`, and register it in
``daskgru/cells/__init__.py``; docs/architecture.md walks through it with the LSTM.
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import numba
import numpy as np

from ..kernels.jit import build, kernel
from ..kernels.tiles import call_product, run_product, run_product_t
from ..layout import output, writable

__all__ = ["Weights", "Prepared", "Steps", "Cell", "project", "chunk_backward", "scratch"]

# A block of projected inputs that a scan computes just before its steps takes at most this
# many bytes (and at least one step), so that it is read back from L2 (or, where one step
# is larger, from L3) rather than memory. Results do not depend on it. One step a block
# where a step's projection exceeds the budget ran 6% faster than projecting the whole
# chunk first (which it did before), in-process alternation, 8 rounds, one thread, AMD
# Zen 5, (512, 256, 128, 512): a 1.5 MiB step against an 805 MB projected chunk.
STEP_BLOCK_BYTES = 256 << 10

_SCRATCH = threading.local()


def block_steps(w: "Prepared", T, B) -> int:
    """Steps of a chunk of T steps and B rows whose projected inputs fit
    :data:`STEP_BLOCK_BYTES`, at least one (0 for an empty chunk)."""
    G = w.w_ih_t.shape[1]
    return min(T, max(1, STEP_BLOCK_BYTES // max(1, B * G * w.w_ih_t.dtype.itemsize)))


def scratch(steps, B, G, dtype):
    """This thread's reusable buffer of ``steps`` steps of projected inputs (steps, B, G).

    Projecting into a fresh array every time costs page faults; under dask.distributed (whose
    nanny sets MALLOC_TRIM_THRESHOLD_, so every large allocation is a fresh mmap) those alone
    cost ~30% of a task at H = 32.
    """
    cache = getattr(_SCRATCH, "arrays", None)
    if cache is None:
        cache = _SCRATCH.arrays = {}
    n = steps * B * G
    dt = np.dtype(dtype)
    buf = cache.get(dt)
    if buf is None or buf.size < n:
        buf = cache[dt] = np.empty(n, dt)
    return buf[:n].reshape(steps, B, G)



class Weights(NamedTuple):
    """Weights of one layer and direction in torch's layout: ``w_ih (G, I)``,
    ``w_hh (G, H)``, ``b_ih (G,)``, ``b_hh (G,)`` with ``G = gates * H`` rows in the
    cell's gate order (GRU: r, z, n; LSTM: i, f, g, o)."""

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray


class Prepared(NamedTuple):
    """Weights as the kernels take them: the transposes (gates along contiguous columns)
    for the products, and the torch-layout arrays for the backward; ``fma``: whether the
    products use fused multiply-adds (:mod:`daskgru.numerics`, resolved when the weights
    are prepared, so the setting travels with them)."""

    w_ih_t: np.ndarray
    b_ih: np.ndarray
    w_hh_t: np.ndarray
    b_hh: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    fma: bool = True

    @classmethod
    def of(cls, w: Weights, fma: bool = True) -> "Prepared":
        """From a stack's (read-only) weights: C-contiguous writable copies, as the kernels'
        signatures take them (nothing writes to them)."""
        def c(a):
            return np.array(a, order="C", copy=True)

        return cls(c(w.w_ih.T), c(w.b_ih), c(w.w_hh.T), c(w.b_hh), c(w.w_ih), c(w.w_hh),
                   bool(fma))

    @property
    def hidden_size(self) -> int:
        return self.w_hh.shape[1]


class Steps(NamedTuple):
    """Which steps of a chunk count, and which way the chunk is walked.

    ``lengths`` (B,) int64: steps with global index ``>= lengths[b]`` are padding (torch's
    packed sequences: output 0). ``mask`` (T, B) uint8, or (0, B) when there is none: a step
    with 0 is masked (Keras's masking: output the current state, or 0 with
    ``zero_masked``). Skipped steps leave the state unchanged. ``t0`` is the global index
    of the chunk's first step.
    """

    lengths: np.ndarray
    mask: np.ndarray
    t0: int
    reverse: bool
    zero_masked: bool

    @classmethod
    def make(cls, B, T, *, lengths=None, mask=None, t0=0, reverse=False, zero_masked=False):
        """``lengths`` None: every step counts up to ``t0 + T``; ``mask`` None: no mask."""
        lengths = (np.full(B, t0 + T, np.int64) if lengths is None
                   else writable(lengths, np.int64).reshape(B))
        mask = (np.zeros((0, B), np.uint8) if mask is None
                else writable(mask, np.uint8).reshape(-1, B))
        return cls(lengths, mask, int(t0), bool(reverse), bool(zero_masked))

    def block(self, a, b) -> "Steps":
        """Local steps a..b-1 of the chunk."""
        mask = self.mask[a:b] if self.mask.shape[0] else self.mask
        return self._replace(mask=mask, t0=self.t0 + a)

    def rows(self, rows) -> "Steps":
        """The steps of some rows (an index array)."""
        mask = np.ascontiguousarray(self.mask[:, rows])
        return self._replace(lengths=np.ascontiguousarray(self.lengths[rows]), mask=mask)

    def valid(self, T) -> np.ndarray:
        """(T, B) bool: the steps that count."""
        v = (self.t0 + np.arange(T))[:, None] < self.lengths[None, :]
        return v & (self.mask != 0) if self.mask.shape[0] else v

    def any_skipped(self, T) -> bool:
        return bool(self.lengths.min(initial=self.t0 + T) < self.t0 + T
                    or (self.mask.shape[0] and not self.mask.all()))


class Cell:
    """A recurrent cell; subclasses implement the equations (see the module docstring).

    Class attributes: ``name`` (the short name used in keys, files and messages),
    ``gates`` (gate blocks of H rows in ``w_ih``/``w_hh``), ``gate_names`` (their order),
    ``keras_gate_order`` (where each of those blocks sits in Keras's column order).
    A cell instance holds its variant options (:meth:`options`) and no weights.
    """

    name = "cell"
    gates = 1
    gate_names: tuple = ()
    keras_gate_order: tuple = ()

    def options(self) -> dict:
        """The variant options (constructor keywords); part of identity and of files."""
        return {}

    # -------------------------------------------------------------- identity
    def __eq__(self, other):
        return type(self) is type(other) and self.options() == other.options()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.options().items()))))

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def __dask_tokenize__(self):
        return (type(self).__name__, sorted(self.options().items()))

    def __reduce__(self):
        return type(self), (), self.options()

    def __setstate__(self, options):
        self.__init__(**options)

    # -------------------------------------------------------------- state
    def state_size(self, H: int) -> int:
        """Columns of the state array of a layer of width H (the output is the first H)."""
        return H

    def split_state(self, state, H):
        """The parts of a state array (``(h,)`` or ``(h, c)``) along its last axis."""
        return (state,)

    # -------------------------------------------------------------- numerics
    def scan(self, w: Prepared, gi, state, steps: Steps, out=None, rec=None):
        """Run the recurrence over one chunk from ``state`` (B, S), given its projected
        inputs ``gi`` (T, B, G); returns (outputs (T, B, H), end state (B, S)). ``rec``
        (T, B, :meth:`record_width`): where a cell that :attr:`records_gates` keeps each
        step's gates for its backward (others refuse one)."""
        raise NotImplementedError

    def scan_inputs(self, w: Prepared, x, state, steps: Steps, out=None, row=0, rec=None):
        """:meth:`scan` from the chunk's inputs x (T, B, I) rather than its projection: the
        same results bit for bit. This default projects the whole chunk first; a cell may
        project block by block inside its kernel instead, so that the projected inputs are
        read back from cache. ``out`` (T, B', H), if given, takes the outputs in its rows
        ``row`` to ``row + B`` (threads that split a batch share one output array); the
        outputs returned are then all of ``out``. ``rec``: where a cell that
        :attr:`records_gates` keeps each step's gates for its backward."""
        T, B, _ = x.shape
        gi = project(w, x, out=scratch(T, B, w.w_ih_t.shape[1], w.w_ih_t.dtype))
        if out is not None:
            check_rows(out, T, B, row, w.hidden_size)
        whole = out is None or (row == 0 and out.shape[1] == B)
        if whole and (rec is None or rec.shape[1] == B):
            return self.scan(w, gi, state, steps, out, rec)
        part = None if rec is None else output((T, B) + rec.shape[2:], rec.dtype)
        o, end = self.scan(w, gi, state, steps, rec=part)
        if part is not None:
            check_rows(rec, T, B, row)
            rec[:, row:row + B] = part
        if out is None:
            return o, end
        out[:, row:row + B] = o
        return out, end

    # whether scan, scan_inputs and backward take ``rec``: the gates of every step, kept by
    # the forward so that the backward need not compute them again
    records_gates = False

    def record_width(self, hidden_size) -> int:
        """Numbers a row-step of the record ``rec`` (a cell that :attr:`records_gates`)."""
        raise NotImplementedError

    def backward(self, w: Prepared, gi, state, steps: Steps, d_out, d_state, out=None,
                 rec=None, threads=None):
        """Backward of :meth:`scan` over one chunk: from its start state, the gradient of
        its outputs and of its end state. ``out``, if given, holds the chunk's forward
        outputs (a cell may use them instead of recomputing); ``rec`` what the forward kept
        for it (a cell that :attr:`records_gates`; else None); ``threads``: over how many
        threads a cell may split its rows (None: the eager path's count). Returns ``(d_gi (T, B, G),
        d_state (B, S) of the start state, dW_hh (G, H), db_hh (G,))``."""
        raise NotImplementedError

    def tangent(self, w: Prepared, gi, state, steps: Steps, cutoff=0.0, M=None):
        """Scan one chunk and propagate ``M = d state_end / d state_start`` (B, S, S);
        returns (end state, M). Rows whose every entry falls below ``cutoff`` stop being
        propagated (set to 0). Cells without it cannot run ``method="newton"``."""
        raise NotImplementedError(f"the {self.name.upper()} cell has no tangent kernel")

    def clip(self, state, start):
        """``state`` clipped to a box the cell's states cannot leave when they start from
        ``start`` (the damping of ``method="newton"``); no clipping by default."""
        return state

    @property
    def has_tangent(self) -> bool:
        return type(self).tangent is not Cell.tangent

    # -------------------------------------------------------------- Keras layout
    def keras_bias(self, b_ih, b_hh):
        """Keras's bias of this variant: one vector (b_ih + b_hh) unless a subclass keeps
        the two apart."""
        return b_ih + b_hh


def check_rows(out, T, B, row, width=None):
    """That ``out`` can take B rows of outputs (``width`` numbers each, when given) from
    row ``row`` on (the kernels do not check their indices)."""
    if (out.ndim != 3 or out.shape[0] != T or not 0 <= row <= out.shape[1] - B
            or (width is not None and out.shape[2] != width)
            or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"an output (or record) of shape {out.shape} cannot take rows "
                         f"{row}..{row + B} of {T} steps")


def sigmoid_(v):
    """σ in place on a NumPy array (the backwards' gates; exp overflow gives inf, then 0)."""
    np.negative(v, out=v)
    np.exp(v, out=v)
    v += 1
    np.reciprocal(v, out=v)


@build
def _project_kernel(cache_key):
    @kernel(lambda f: numba.void(f[:, ::1], f[:, ::1], f[::1], f[:, ::1], numba.boolean))
    def project_kernel(x, w_t, b, out, fma):
        """out[n, :] = b + sum_k x[n, k] * w_t[k, :] for every row n of x (N, I)."""
        cache_key  # noqa: B018
        call_product(x, int(0), x.shape[0], w_t, b, int(0), w_t.shape[1], out, int(0), fma)

    return project_kernel


def project(w: Prepared, x, out=None):
    """The input projection of a chunk, the same for every cell: x (T, B, I) ->
    (T, B, G) = b_ih + x @ w_ih^T. ``out``, if given, is a C-contiguous buffer to fill."""
    T, B, I = x.shape
    G = w.w_ih_t.shape[1]
    dt = w.w_ih_t.dtype
    out = output((T, B, G), dt) if out is None else out
    _project_kernel(writable(x, dt).reshape(T * B, I), w.w_ih_t, w.b_ih,
                    out.reshape(T * B, G), w.fma)
    return out


def weight_gradient(terms, fma, threads=None):
    """The gradient (G, K) of weights whose products were ``src @ W[c0:c1].T``: for each
    ``(d, dc, src, c0, c1)`` of ``terms`` (d (N, .), src (N, K)), rows c0..c1 of it are
    ``sum_n d[n, dc + c - c0] * src[n, k]`` over the N rows (every row and step of a
    chunk), so that the adjoints of the rows may lie in different arrays. Taken with the
    tiles (``tiles.product_t``, which reads ``d`` as the transpose it needs, as it lies),
    each element summed over n in order, a fused multiply-add a term when ``fma``: the same
    bits for any number of ``threads`` (they split the G rows of the result). BLAS, which
    this replaced, was slower where its kernels predate the CPU (OpenBLAS on the AMD Zen 5
    with ``OPENBLAS_CORETYPE=Haswell``: 110 GF/s against the tiles' 160-210 on dW at
    H = 512), and its bits depended on its thread count."""
    from ..eager import batch_parts, in_parts

    d0, _, src0, _, _ = terms[0]
    N, K = src0.shape
    G = max(c1 for *_, c1 in terms)
    # every row of the result is written by exactly one term (np.empty is not zeroed)
    cover = np.zeros(G, np.int64)
    for *_, c0, c1 in terms:
        cover[c0:c1] += 1
    if not (cover == 1).all():
        raise ValueError(f"weight_gradient: the terms' rows must cover 0..{G} once each, "
                         f"got {[(c0, c1) for *_, c0, c1 in terms]}")
    out = np.empty((G, K), d0.dtype)
    zeros = np.zeros(K, d0.dtype)
    terms = [(writable(d), dc, writable(src, d0.dtype), c0, c1) for d, dc, src, c0, c1 in terms]

    def part(rows):
        for d, dc, src, c0, c1 in terms:
            lo, hi = max(c0, rows.start), min(c1, rows.stop)
            if hi > lo:
                run_product_t(d, dc + lo - c0, hi - lo, src, zeros, 0, K, out, lo, fma)

    in_parts(part, batch_parts(G, N * K, threads))
    return out


def chunk_backward(cell: Cell, w: Prepared, x, state, steps: Steps, d_out, d_state, out=None,
                   rec=None, threads=None):
    """Backward of one chunk of one layer and direction from its input x (T, B, I):
    recomputes the projection (memory O(chunk)) unless the cell kept its gates, runs the
    cell's backward (with the forward's outputs ``out`` and gates ``rec`` where kept) and
    adds what follows from the projection; ``threads`` for a cell whose backward splits
    its rows.
    Returns ``(d_x, d_state, Weights of gradients)``.

    Inputs at skipped steps are zero-filled for the weight gradient: their ``d_gi`` is 0,
    and 0 * NaN would still be NaN.
    """
    T, B, I = x.shape
    G = w.w_ih.shape[0]
    dt = w.w_ih.dtype
    x = writable(x, dt)
    # a cell that kept its gates needs no projected inputs (only a forward run again does)
    gi = None if out is not None and rec is not None and cell.records_gates else project(w, x)
    d_gi, d_state, dW_hh, db_hh = cell.backward(w, gi, state, steps, d_out, d_state, out,
                                                rec, threads)
    dg2 = d_gi.reshape(T * B, G)
    if steps.any_skipped(T):
        x = np.where(steps.valid(T)[..., None], x, dt.type(0))
    dW_ih = weight_gradient([(dg2, 0, x.reshape(T * B, I), 0, G)], w.fma, threads)
    d_x = output((T, B, I), dt)
    run_product(dg2, 0, T * B, w.w_ih, np.zeros(I, dt), 0, I, d_x.reshape(T * B, I), 0, w.fma)
    return d_x, d_state, Weights(dW_ih, dW_hh, dg2.sum(axis=0), db_hh)
