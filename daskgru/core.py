"""Eager NumPy GRU: validation, layers, directions, lengths, h0 (calls the kernels).

Everything here works on NumPy arrays in the canonical layout x (T, B, I). The dask graph
in :mod:`daskgru.scan` calls the very same per-chunk functions, which is why the two agree
bit for bit.
"""
from __future__ import annotations

import os
import threading
from typing import NamedTuple

import numpy as np

from . import kernels
from .params import GRUParams

__all__ = ["GRUCall", "validate", "validate_method_options", "prepare_weights", "gru_numpy",
           "layer_input"]

# Eager calls walk time in blocks of this many steps so that the projected inputs of a
# whole long sequence never sit in memory at once. Results do not depend on it.
EAGER_BLOCK = 2048

METHODS = ("scan", "speculative", "newton")

# Options each method takes (besides return_info); see daskgru.parallel_time.
METHOD_OPTIONS = {"scan": (), "speculative": ("warmup", "tol"), "newton": ("tol",)}


def validate_method_options(method, *, warmup=None, tol=None, return_info=False):
    """Check the options of a parallel-in-time method (before any work); None means default."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    allowed = METHOD_OPTIONS[method]
    for name, value in (("warmup", warmup), ("tol", tol)):
        if value is not None and name not in allowed:
            takes = ", ".join(allowed) if allowed else "no options"
            raise ValueError(f"{name} is not an option of method={method!r} (it takes {takes})")
    if warmup is not None:
        if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)):
            raise TypeError(f"warmup must be an int (number of steps), got {type(warmup).__name__}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 (number of steps), got {warmup}")
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
            raise TypeError(f"tol must be a real number, got {type(tol).__name__}")
        if not (np.isfinite(tol) and tol > 0):
            raise ValueError(f"tol must be finite and > 0, got {tol}")
    if not isinstance(return_info, (bool, np.bool_)):
        raise TypeError(f"return_info must be a bool, got {type(return_info).__name__}")


class GRUCall(NamedTuple):
    """A validated call: shapes and options every backend needs."""

    T: int
    B: int
    I: int
    dtype: np.dtype
    unbatched: bool
    batch_first: bool
    params: GRUParams


def compute_dtype(dtype, name="x"):
    """float32 and float64 are kept; float16 computes in float32; anything else is refused."""
    try:
        dt = np.dtype(dtype)
    except TypeError:  # e.g. a torch tensor: refuse by name rather than with NumPy's message
        raise TypeError(
            f"{name} must be a NumPy or dask array of real floating-point numbers, got dtype "
            f"{dtype!r} (convert tensors with .numpy())"
        ) from None
    if dt.kind == "f":
        return np.dtype(np.float32) if dt.itemsize < 4 else (
            dt if dt.itemsize <= 8 else np.dtype(np.float64))
    raise TypeError(f"{name} must hold real floating-point numbers, got dtype {dt}")


def validate(x, p, *, h0=None, lengths=None, batch_first=False, method="scan") -> GRUCall:
    """Check shapes, dtypes and options of a ``gru`` call before any work; works on NumPy
    and dask arrays alike (only shapes and dtypes are read, never values of dask arrays)."""
    if not isinstance(p, GRUParams):
        raise TypeError(f"p must be a GRUParams, got {type(p).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"x must be an array, got {type(x).__name__}")
    if any(s != s for s in shape):  # NaN: a dask array with unknown chunk sizes
        raise ValueError(f"x has unknown size along some axis (shape {tuple(shape)}), e.g. after "
                         "boolean indexing; call x.compute_chunk_sizes() first")
    dtype = compute_dtype(x.dtype)
    if len(shape) == 2:
        unbatched = True
        T, I = shape
        B = 1
    elif len(shape) == 3:
        unbatched = False
        B, T, I = shape if batch_first else (shape[1], shape[0], shape[2])
    else:
        raise ValueError(
            f"x must be 3-D ({'B, T, I' if batch_first else 'T, B, I'}) or 2-D (T, I), "
            f"got shape {tuple(shape)}"
        )
    if I != p.input_size:
        raise ValueError(f"x has input size {I} (last axis), but p.input_size is {p.input_size}")
    LD, H = p.num_layers * p.num_directions, p.hidden_size
    if h0 is not None:
        hs = getattr(h0, "shape", None)
        want = (LD, H) if unbatched else (LD, B, H)
        if hs is None or tuple(hs) != want:
            got = f"a {type(h0).__name__} without a shape" if hs is None else tuple(hs)
            raise ValueError(
                f"h0 must have shape {want} (num_layers * num_directions"
                f"{'' if unbatched else ', batch'}, hidden_size), got {got}"
            )
        compute_dtype(h0.dtype, "h0")
    if lengths is not None:
        ls = getattr(lengths, "shape", None)
        if ls is None or not isinstance(getattr(lengths, "dtype", None), np.dtype):
            lengths = np.asarray(lengths)  # lists, and tensors (torch takes lengths as one)
            ls = lengths.shape
        ok = tuple(ls) in ((B,),) or (unbatched and tuple(ls) in ((), (1,)))
        if not ok:
            raise ValueError(f"lengths must have shape ({B},) (one per sequence), got {tuple(ls)}")
        if np.dtype(lengths.dtype).kind not in "iu":
            raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
        if isinstance(lengths, np.ndarray):
            check_lengths(lengths, T)
    return GRUCall(int(T), int(B), int(I), dtype, unbatched, bool(batch_first), p.astype(dtype))


def check_lengths(lengths, T):
    """Values of lengths must lie in 0..T (called in-task for dask lengths)."""
    lengths = np.asarray(lengths)
    if lengths.size and (lengths.min() < 0 or lengths.max() > T):
        bad = lengths[(lengths < 0) | (lengths > T)]
        raise ValueError(f"lengths must lie in 0..{T} (the number of steps), got {bad[:5].tolist()}")
    return np.ascontiguousarray(lengths, dtype=np.int64).reshape(-1)


class PreparedWeights:
    """``weights[layer][direction] -> (w_ih_t, b_ih, w_hh_t, b_hh)``, transposed and
    contiguous as the kernels want them. An opaque object, so that a task graph holds it
    as one value (dask would otherwise walk into nested tuples)."""

    __slots__ = ("layers",)

    def __init__(self, layers):
        self.layers = layers

    def __getitem__(self, l):
        return self.layers[l]

    def __getstate__(self):
        return self.layers

    def __setstate__(self, state):
        self.layers = state

    @property
    def nbytes(self):
        return sum(a.nbytes for layer in self.layers for w in layer for a in w)


def prepare_weights(p: GRUParams) -> PreparedWeights:
    """Transposed, contiguous weights of every layer and direction; built once per call."""
    return PreparedWeights(tuple(
        tuple(
            (np.ascontiguousarray(w.w_ih.T), w.b_ih, np.ascontiguousarray(w.w_hh.T), w.b_hh)
            for w in layer
        )
        for layer in p.weights
    ))


def is_dask(a) -> bool:
    """Whether ``a`` is a dask collection (without importing dask)."""
    return hasattr(a, "__dask_graph__") and a.__dask_graph__() is not None


def state_block(state):
    """A (B, H) boundary state as one (1, B, H) block of an h_n array."""
    return state[None]


def layer_input(parts):
    """The input of the next layer: the directions' outputs side by side [forward, backward]."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def gru_numpy(x, p, *, h0=None, lengths=None, batch_first=False, method="scan"):
    """Eager GRU on NumPy arrays; see :func:`daskgru.gru` for the semantics."""
    call = validate(x, p, h0=h0, lengths=lengths, batch_first=batch_first, method=method)
    x = np.asarray(x)
    if call.unbatched:
        x = x[:, None, :]
        h0 = None if h0 is None else np.asarray(h0)[:, None, :]
    elif batch_first:
        x = x.transpose(1, 0, 2)
    T, B = call.T, call.B
    dt, pp = call.dtype, call.params
    L, D, H = pp.num_layers, pp.num_directions, pp.hidden_size
    lengths = np.full(B, T, np.int64) if lengths is None else check_lengths(lengths, T)
    h0 = np.zeros((L * D, B, H), dt) if h0 is None else np.asarray(h0, dtype=dt)
    x = np.ascontiguousarray(x, dtype=dt)
    weights = prepare_weights(pp)
    parts = batch_parts(B, T * H * (H + pp.input_size) * L * D)
    if len(parts) == 1:
        out, h_n = _layers(x, weights, pp.reset_after, h0, lengths)
    else:
        # Batch rows are independent: each thread runs the whole stack on its rows (the
        # kernels release the GIL). Row-invariant kernels make this bit-identical to one
        # thread.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(parts)) as ex:
            res = list(ex.map(lambda s: _layers(x[:, s], weights, pp.reset_after, h0[:, s],
                                                lengths[s]), parts))
        out = np.concatenate([r[0] for r in res], axis=1)
        h_n = np.concatenate([r[1] for r in res], axis=1)
    if call.unbatched:
        return out[:, 0], h_n[:, 0]
    if batch_first:
        out = out.transpose(1, 0, 2)
    return out, h_n


def get_num_threads() -> int:
    """Threads of the eager path: ``DASKGRU_NUM_THREADS``, else the CPUs this process may use."""
    env = os.environ.get("DASKGRU_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Below this much work (multiply-adds) a call is not worth splitting over threads.
MIN_SPLIT_WORK = 2_000_000


def batch_parts(B, work):
    """Contiguous batch slices, one per thread, each of at least 4 rows."""
    n = min(get_num_threads(), B // 4)
    if n <= 1 or work * B < MIN_SPLIT_WORK:
        return [slice(0, B)]
    edges = np.linspace(0, B, n + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


# Projected inputs of one time block take at most this many bytes, so they stay in cache
# and the buffer is reused (fresh pages cost more than the arithmetic on some machines).
BLOCK_BYTES = 16 << 20

_BUFFERS = threading.local()


def _gi_buffer(steps, B, G, dtype):
    """This thread's reusable buffer for ``steps`` steps of projected inputs (steps, B, G).

    Every eager call and every dask task used to project a whole chunk into a fresh array;
    under dask.distributed (whose nanny sets MALLOC_TRIM_THRESHOLD_, so every large
    allocation is a fresh mmap) the page faults alone cost ~30% of a task at H = 32.
    """
    cache = getattr(_BUFFERS, "arrays", None)
    if cache is None:
        cache = _BUFFERS.arrays = {}
    n = steps * B * G
    dt = np.dtype(dtype)
    buf = cache.get(dt)
    if buf is None or buf.size < n:
        buf = cache[dt] = np.empty(n, dt)
    return buf[:n].reshape(steps, B, G)


def run_direction(x, w_ih_t, b_ih, w_hh_t, b_hh, h, lengths, t0, reverse, reset_after,
                  out=None):
    """One layer and direction over x (T, B, I) of global steps t0.., from state h (B, H):
    project and scan block by block (``EAGER_BLOCK`` steps, at most ``BLOCK_BYTES`` of
    projected inputs) through a reused per-thread buffer. Returns (out (T, B, H), end state).
    Blocks are whole steps, so the result is the same for any block size."""
    T, B = x.shape[0], x.shape[1]
    H = w_hh_t.shape[0]
    dt = w_hh_t.dtype
    out = np.empty((T, B, H), dt) if out is None else out
    if T == 0:
        return out, np.array(h, dtype=dt, copy=True).reshape(B, H)
    step = max(1, min(EAGER_BLOCK, T, BLOCK_BYTES // max(1, B * 3 * H * dt.itemsize)))
    buf = _gi_buffer(step, B, 3 * H, dt)
    starts = range(0, T, step)
    for a in (reversed(starts) if reverse else starts):
        b = min(a + step, T)
        gi = kernels.project(x[a:b], w_ih_t, b_ih, out=buf[:b - a])
        _, h = kernels.scan(gi, w_hh_t, b_hh, h, lengths, t0 + a, reverse, reset_after,
                            out=out[a:b])
    return out, h


def _layers(x, weights, reset_after, h0, lengths):
    """The layer stack on x (T, B, I) contiguous; returns (output, h_n)."""
    T, B, _ = x.shape
    L, D = len(weights.layers), len(weights[0])
    H = weights[0][0][2].shape[0]
    dt = x.dtype
    h_n = np.empty((L * D, B, H), dt)
    layer_in = x
    for l in range(L):
        out = np.empty((T, B, D * H), dt) if D > 1 else None
        outs = []
        for d in range(D):
            o, h = run_direction(layer_in, *weights[l][d], h0[l * D + d], lengths, 0, d == 1,
                                 reset_after)
            h_n[l * D + d] = h
            outs.append(o)
        layer_in = layer_input(outs) if out is None else np.concatenate(outs, axis=-1, out=out)
    return layer_in, h_n
