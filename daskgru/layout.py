"""The canonical layout and the checks that need no model: what every path shares.

Every path works on x in the canonical (T, B, I) layout; :func:`canonical` and
:func:`uncanonical` go there and back from the caller's (batch first, unbatched). Nothing here
knows a cell, a stack or the graph.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Call", "is_dask", "compute_dtype", "check_lengths", "as_mask", "writable",
           "canonical", "uncanonical", "zero_flags", "output"]

# Arrays of at least this many bytes that a kernel is about to fill are written once first
# (see :func:`output`).
PREFAULT_BYTES = 4 << 20


class Call(NamedTuple):
    """A validated call: what every path needs besides the arrays."""

    stack: object       # the Stack, cast to the compute dtype
    T: int
    B: int
    I: int
    dtype: np.dtype
    unbatched: bool
    batch_first: bool
    zero_masked: tuple  # one flag per layer


def is_dask(a) -> bool:
    """Whether ``a`` is a dask collection (without importing dask)."""
    return hasattr(a, "__dask_graph__") and a.__dask_graph__() is not None


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


def check_lengths(lengths, T):
    """Values of lengths must lie in 0..T (called in-task for dask lengths)."""
    lengths = np.asarray(lengths)
    if lengths.size and (lengths.min() < 0 or lengths.max() > T):
        bad = lengths[(lengths < 0) | (lengths > T)]
        raise ValueError(f"lengths must lie in 0..{T} (the number of steps), got {bad[:5].tolist()}")
    return writable(lengths, np.int64).reshape(-1)


def as_mask(m):
    """A (T, B) mask as contiguous, writeable uint8 0/1 (any nonzero counts as valid)."""
    m = np.asarray(m)
    return writable(m if m.dtype == np.uint8 and m.max(initial=0) <= 1 else m != 0, np.uint8)


def _array_like(a, name):
    """``a`` itself if it has a shape and a NumPy dtype (NumPy, dask), else as NumPy."""
    if getattr(a, "shape", None) is None or not isinstance(getattr(a, "dtype", None), np.dtype):
        a = np.asarray(a)  # lists, and tensors
    return a


def canonical(a, call):
    """An x-like array (NumPy or dask) in the (T, B, ...) layout."""
    if call.unbatched:
        return a[:, None]
    if call.batch_first:
        return a.transpose(1, 0, *range(2, a.ndim))
    return a


def uncanonical(a, call):
    """Back from (T, B, ...) to the caller's layout."""
    if call.unbatched:
        return a[:, 0]
    if call.batch_first:
        return a.transpose(1, 0, *range(2, a.ndim))
    return a


def writable(a, dtype=None):
    """``a`` as a C-contiguous, writeable NumPy array (the kernels take nothing else: a
    read-only array, e.g. ``np.load(mmap_mode="r")``, is copied)."""
    if (type(a) is np.ndarray and (dtype is None or a.dtype == dtype)
            and a.flags.c_contiguous and a.flags.writeable):
        return a  # the common case, without np.require's cost (a few µs a call)
    return np.require(a, dtype, ["C", "W"])


def output(shape, dtype):
    """A new array that a kernel is about to fill: ``np.empty``, its pages touched first
    when it is large (:data:`PREFAULT_BYTES`).

    Fresh memory from the operating system is mapped page by page on its first write.
    Taken one step at a time from inside a scan, those faults cost far more than the same
    faults taken in a tight loop (measured; that each trip into the kernel, on a virtual
    machine into the hypervisor, costs the scan its caches is our reading): on a 2-CPU KVM
    guest (AMD Zen 5) touching a 268 MB output first took 19 ms and saved 300-400 ms of a
    1.3 s scan (docs/performance.md, the Zen 5 section). One write a page maps it; the
    contents are never read before the kernel writes them, so results do not change. The
    calling thread maps the pages, so on a machine with several memory nodes they land on
    its node even where other threads then fill them (not measured: only single-socket
    machines so far).
    """
    out = np.empty(shape, dtype)
    if out.nbytes >= PREFAULT_BYTES:
        out.reshape(-1)[::max(1, 4096 // out.itemsize)] = 0  # one write a page maps it
    return out


def zero_flags(zero_output_for_mask, num_layers):
    """``zero_output_for_mask`` as one bool per layer (one bool given: all layers)."""
    zm = zero_output_for_mask
    zm = tuple(bool(z) for z in zm) if isinstance(zm, (list, tuple)) else (bool(zm),) * num_layers
    if len(zm) != num_layers:
        raise ValueError(f"zero_output_for_mask needs one flag per layer ({num_layers}), "
                         f"got {len(zm)}")
    return zm
