"""How a kernel is declared, and the scalar functions every cell's kernels share.

Every Numba kernel of the package is declared with :func:`kernel` inside a builder that
:func:`build` calls with :data:`CACHE_KEY`::

    @build
    def _kernels(cache_key):
        @kernel(lambda f: numba.void(f[:, ::1], f[:, ::1]))
        def double(x, out):
            cache_key  # noqa: B018 (part of Numba's cache key, see below)
            ...
        return SimpleNamespace(double=double)

Kernels are compiled lazily: a kernel is typed and compiled (or loaded from Numba's disk
cache) for a float type the first time it is called with it, for its one explicit signature
per float type, so a call pays only for the kernels it uses; once compiling has taken more
than :data:`ANNOUNCE_AFTER` seconds in a process, it says so (once). :func:`precompile` builds every
kernel ahead of time (a cluster's image, a worker's start).

Why the key: kernels are cached on disk. Numba keys that cache on the kernel's own module source, not on the
modules it calls into (:mod:`daskgru.kernels.tiles` and this one), so an edit there would
serve stale machine code. Numba does include closure variables in the key, so each kernel
closes over ``cache_key`` (a hash of those modules and the tile shape); :func:`kernel`
refuses, at import, a function that does not, so no kernel can forget it.

The scalar functions (``sigmoid``, ``tanh``, ``vexp``, ``fma``, ``typed``) are inlined into the
kernels; ``vexp`` is an exponential that LLVM vectorizes (libm's does not), written with
explicit fused multiply-adds (``fma``: one rounding, the same bits on every CPU), which is
not the contraction that fastmath would allow (that would depend on the compiler's choices).

Functions called once per time step (``counts``, ``skipped``, ``skipped_adjoint``,
``project_block``, ``propagate_tangent``, each cell's ``step`` and ``tiles.product``) are
compiled with ``_nrt=False`` and called rather than inlined, with whole arrays and an index
rather than a slice: Numba otherwise counts references to every array argument of an
inlined function and to every view, an atomic increment and decrement each per step (40%
of a step at H = 32, B = 1). They allocate nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import threading
import time
from pathlib import Path

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from . import tiles
from .cache import njit_cached
from .tiles import fma

__all__ = ["CACHE_KEY", "STEP_OPTIONS", "Kernel", "kernel", "build", "precompile", "typed", "fma", "vexp", "sigmoid", "tanh", "counts", "dense",
           "skipped", "skipped_adjoint", "propagate_tangent", "project_block"]

# What identifies the code the kernels call into, for their on-disk caches.
CACHE_KEY = "{}-{}-{}".format(
    hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (tiles,))
                   + Path(__file__).read_bytes()).hexdigest()[:16],
    tiles.VECTOR_BYTES, "x".join(map(str, tiles.TILE)))

# Options of every kernel (each is cached on disk by cache.njit_cached): no GIL (eager
# threads and dask workers run kernels side by side), NumPy's error model (no
# ZeroDivisionError checks), no bounds checks, and no fastmath: every operation is rounded
# as written, which is what keeps results bit-identical for any chunking.
OPTIONS = dict(nogil=True, error_model="numpy", boundscheck=False)
# Options of the functions a kernel calls once per step (see the module docstring): the
# kernels' options (without NumPy's error model a division checks for zero, and the gates'
# loops stay scalar) and no reference counting.
STEP_OPTIONS = dict(OPTIONS, _nrt=False)


# Compiling that takes longer than this (seconds, all kernels of the process together) is
# announced, once per process.
ANNOUNCE_AFTER = 2.0
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
KERNELS: list[Kernel] = []  # every declared kernel, for precompile()
_log = logging.getLogger("daskgru")
_compiling = threading.RLock()
_announced = False
_spent = 0.0  # seconds this process spent compiling or loading kernels


def cache_dir() -> str:
    """Where Numba keeps the compiled kernels: ``NUMBA_CACHE_DIR`` when set, else the
    ``__pycache__`` folders beside the package's modules (or, where those are not writable,
    Numba's per-user fallback)."""
    return numba.config.CACHE_DIR or (
        "the __pycache__ folders under "
        + os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _announce(dtype):
    global _announced
    if not _announced:
        _announced = True
        _log.warning("daskgru: compiling Numba kernels for %s (first use on this machine; "
                     "cached in %s, later runs load them in well under a second)",
                     dtype, cache_dir())


@contextlib.contextmanager
def _announcing(dtype):
    """Time a compile (or load) of code for ``dtype``: this process's compiles taken
    together, once past :data:`ANNOUNCE_AFTER`, are announced (once per process)."""
    global _spent
    timer = None
    if not _announced:
        timer = threading.Timer(max(0.0, ANNOUNCE_AFTER - _spent), _announce, (dtype.name,))
        timer.daemon = True
        timer.start()
    t = time.perf_counter()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
        _spent += time.perf_counter() - t


def _float_of(args):
    """The float type of a kernel call: that of its first float array argument."""
    return next((a.dtype for a in args if isinstance(a, np.ndarray) and a.dtype in FLOATS),
                None)


class Kernel:
    """A Numba kernel with one explicit signature per float type, compiled (or loaded from
    the disk cache) the first time it is called with that type. Calls go straight to a Numba
    dispatcher built with the explicit signatures of the float types ready so far, which
    never compiles anything else (arguments of another type, layout or writability are
    refused by Numba with a TypeError naming them). Readying a new float type builds a new
    dispatcher with one more signature and swaps it in whole, so a call running meanwhile
    keeps the one it has."""

    def __init__(self, func, signature):
        self.py_func = func
        self.__name__, self.__qualname__ = func.__name__, func.__qualname__
        self.__module__ = func.__module__
        self.__doc__ = func.__doc__
        self.signature = signature
        # a kernel with an ``fma`` argument may call the products: each call first readies
        # the product of its form (tiles.export; compiled on first use, then a set lookup)
        names = func.__code__.co_varnames[:func.__code__.co_argcount]
        self._fma_at = names.index("fma") if "fma" in names else None
        self.dispatcher = None
        self.ready: frozenset = frozenset()
        KERNELS.append(self)

    def __call__(self, *args):
        if self._fma_at is not None:
            dt = _float_of(args)
            if dt is not None and not tiles.ready(dt, args[self._fma_at]):
                with _announcing(dt):
                    tiles.export(dt, args[self._fma_at])
        d = self.dispatcher
        if d is not None:
            try:
                return d(*args)
            except TypeError:
                dtype = _float_of(args)
                if dtype is None or dtype in self.ready:
                    raise
        else:
            dtype = _float_of(args)
            if dtype is None:
                raise TypeError(f"kernel {self.__qualname__} takes float32 or float64 "
                                f"arrays, got {[getattr(a, 'dtype', type(a).__name__) for a in args]}")
        self.compile(dtype)
        return self.dispatcher(*args)

    def compile(self, dtype):
        """Compile (or load) the kernel for a float dtype; a no-op when done."""
        dtype = np.dtype(dtype)
        if dtype not in FLOATS:
            raise TypeError(f"kernel {self.__qualname__} is declared for float32 and float64, "
                            f"not {dtype}")
        with _compiling:
            if dtype in self.ready:
                return
            ready = self.ready | {dtype}
            sigs = [self.signature(numba.from_dtype(d)) for d in FLOATS if d in ready]
            t = time.perf_counter()
            with _announcing(dtype):
                dispatcher = njit_cached(self.py_func, sigs, **OPTIONS)
            self.dispatcher = dispatcher  # before ready: a caller that sees ready finds it
            self.ready = frozenset(ready)
            _log.debug("kernel %s ready for %s in %.2f s", self.__qualname__, dtype,
                       time.perf_counter() - t)

    def __reduce__(self):
        # a kernel pickles as where it is found: (module, builder namespace, name)
        return _find_kernel, (self.__module__, self.__qualname__)

    def __repr__(self):
        return f"<daskgru kernel {self.__qualname__} ready for {sorted(map(str, self.ready))}>"


def _find_kernel(module, qualname):
    import importlib

    importlib.import_module(module)
    for k in KERNELS:
        if k.__module__ == module and k.__qualname__ == qualname:
            return k
    raise LookupError(f"no daskgru kernel {qualname} in {module}")


def precompile(dtypes=("float32", "float64")):
    """Compile (or load from Numba's cache) every kernel of the package for ``dtypes``
    (a dtype or a list of them).

    Calls do this themselves, kernel by kernel, on first use; call it ahead of time to pay
    the cost once where it suits: in a container image's build, or on every worker of a
    cluster before the first task (``client.run(daskgru.precompile)``), which shares a
    ``NUMBA_CACHE_DIR`` on a common file system or builds each worker's own.

    >>> import daskgru as dg
    >>> dg.precompile("float64")
    """
    if isinstance(dtypes, (str, np.dtype, type)):
        dtypes = [dtypes]
    for dtype in dtypes:
        dt = np.dtype(dtype)
        for k in KERNELS:
            k.compile(dt)
        for fused in (True, False):  # the products, both forms (as kernels and Python call them)
            tiles.export(dt, fused)
            z = np.zeros((1, 1), dt)
            tiles.run_product_t(z, 0, 1, z, np.zeros(1, dt), 0, 1, np.zeros((1, 1), dt), 0, fused)


def kernel(signature):
    """Declare a kernel: ``signature(f)`` gives its Numba signature for a float type ``f``;
    it is compiled with :data:`OPTIONS` for float32 or float64 on its first call with that
    type (:class:`Kernel`). The function must close over ``cache_key`` (see the module
    docstring)."""

    def declare(func):
        cells = dict(zip(func.__code__.co_freevars, func.__closure__ or ()))
        if "cache_key" not in cells or cells["cache_key"].cell_contents != CACHE_KEY:
            raise TypeError(
                f"kernel {func.__qualname__} must be defined in a builder decorated with "
                "daskgru.kernels.jit.build and name its cache_key in its body")
        return Kernel(func, signature)

    return declare


def build(builder):
    """Call ``builder(CACHE_KEY)``; it defines the kernels (closures over the key)."""
    return builder(CACHE_KEY)


# ----------------------------------------------------------------------------- scalars
@intrinsic
def _bits_to_float32(typingctx, i):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.int32), codegen


@intrinsic
def _bits_to_float64(typingctx, i):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return types.float64(types.int64), codegen


def typed(arr, value):
    """``value`` as a scalar of ``arr``'s dtype (in kernels: typed constants, so that
    float32 arithmetic is never promoted to float64)."""
    return arr.dtype.type(value)


@overload(typed, inline="always")
def _typed_impl(arr, value):
    t = arr.dtype
    return lambda arr, value: t(value)


def _exp_constants(dtype):
    """Cody-Waite split of ln 2, clamp range and Taylor degree for a float type."""
    if dtype == np.float32:
        return dict(lo=-87.0, hi=88.0, ln2hi=0.693359375, ln2lo=-2.12194440e-4, bias=127,
                    shift=23, deg=7, as_int=np.int32, to_float=_bits_to_float32)
    return dict(lo=-708.0, hi=709.0, ln2hi=6.93147180369123816490e-01,
                ln2lo=1.90821492927058770002e-10, bias=1023, shift=52, deg=13,
                as_int=np.int64, to_float=_bits_to_float64)


def vexp(x):
    """exp that LLVM vectorizes (libm's does not); see the Numba implementation below."""
    return math.exp(x)


@overload(vexp, inline="always")
def _vexp_impl(x):
    """exp(x) = 2**n * e**r with n = round(x / ln 2) and r = x - n ln 2 (Cody-Waite split,
    with fused multiply-adds), e**r by its Taylor series (degree 7 for float32, 13 for
    float64) evaluated in Estrin's scheme with fused multiply-adds (below 2 ulp on |r| <= ln 2
    / 2; Estrin's pairs are independent, so the chain of dependent operations is about half
    of Horner's: the gates of a step are bound by that latency, not by throughput), and 2**n
    built from its bits. Branch-free, so it vectorizes. The argument is clamped to the
    normal range: exp(-1e30) is tiny rather than 0 and exp(1e30) large rather than inf; NaN
    stays NaN."""
    if not isinstance(x, types.Float):
        return None
    dt = np.float32 if x == types.float32 else np.float64
    k = _exp_constants(dt)
    lo, hi = dt(k["lo"]), dt(k["hi"])
    mln2hi, mln2lo = dt(-k["ln2hi"]), dt(-k["ln2lo"])
    log2e, half = dt(1 / math.log(2)), dt(0.5)
    c = [dt(1 / math.factorial(i)) for i in range(14)]
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13 = c
    as_int, to_float = k["as_int"], k["to_float"]
    bias, shift = as_int(k["bias"]), as_int(k["shift"])

    # Estrin written out (a loop here trips Numba's inliner); min(max(x, lo), hi) keeps NaN.
    if dt == np.float32:
        def poly(r):
            r2 = r * r
            p03 = fma(fma(c3, r, c2), r2, fma(c1, r, c0))
            p47 = fma(fma(c7, r, c6), r2, fma(c5, r, c4))
            return fma(p47, r2 * r2, p03)
    else:
        def poly(r):
            r2 = r * r
            r4 = r2 * r2
            p03 = fma(fma(c3, r, c2), r2, fma(c1, r, c0))
            p47 = fma(fma(c7, r, c6), r2, fma(c5, r, c4))
            p811 = fma(fma(c11, r, c10), r2, fma(c9, r, c8))
            p1213 = fma(c13, r, c12)
            return fma(fma(p1213, r4, p811), r4 * r4, fma(p47, r4, p03))
    poly = numba.njit(inline="always")(poly)

    def impl(x):
        x = min(max(x, lo), hi)
        n = np.floor(fma(x, log2e, half))  # np.floor keeps the float type (math.floor: int)
        r = fma(n, mln2lo, fma(n, mln2hi, x))
        return poly(r) * to_float((as_int(n) + bias) << shift)

    return impl


def _one(v):
    return type(v)(1)


@overload(_one, inline="always")
def _one_impl(v):
    t = v
    return lambda v: t(1)


@numba.njit(inline="always")
def sigmoid(v):
    """Stable and branch-free: exp(-v) is huge for v << 0 and the quotient tiny, never NaN."""
    one = _one(v)
    return one / (one + vexp(-v))


@numba.njit(inline="always")
def tanh(v):
    """tanh from vexp, with the sign restored (absolute error of a few ulp)."""
    one = _one(v)
    e = vexp(-(one + one) * abs(v))
    return math.copysign((one - e) / (one + e), v)


@numba.njit(**STEP_OPTIONS)
def counts(t, tl, bb, lengths, mask, has_mask):
    """Whether row ``bb`` computes local step ``tl`` (global ``t``): not padding
    (``t >= lengths[bb]``, torch's packed sequences) and not masked (``mask[tl, bb] == 0``,
    Keras's masking; ``has_mask``: ``mask`` is not empty). A skipped step leaves the state
    unchanged; its output is written by :func:`skipped`."""
    return t < lengths[bb] and not (has_mask and mask[tl, bb] == 0)


@numba.njit(inline="always")
def dense(lengths, mask, t0, T):
    """Whether every row computes every step of a chunk of ``T`` steps from ``t0`` (no mask,
    no length inside it): the scan kernels then skip :func:`counts`, one loop-invariant test
    instead of one per row and step."""
    if mask.shape[0] > 0:
        return False
    for bb in range(lengths.shape[0]):
        if lengths[bb] < t0 + T:
            return False
    return True


@numba.njit(**STEP_OPTIONS)
def project_block(x2, B, T, Tb, sb, reverse, w_ih_t, b_ih, g2, fma):
    """For the scans that project their own inputs: the sb-th block (in walk order: from
    the end when ``reverse``) of ``Tb`` steps of a chunk of ``T`` steps of ``B`` rows,
    projected from x2 (T * B, I) into g2 (Tb * B, G). Returns (its first step, its steps)."""
    nblocks = (T + Tb - 1) // Tb
    a = (nblocks - 1 - sb if reverse else sb) * Tb
    n = min(Tb, T - a)
    tiles.call_product(x2, a * B, n * B, w_ih_t, b_ih, int(0), w_ih_t.shape[1], g2, int(0),
                  fma)
    return a, n


@numba.njit(**STEP_OPTIONS)
def skipped(t, tl, bb, lengths, zero_masked, h, out, ro):
    """The output of row ``bb`` (row ``ro + bb`` of ``out``) at a step it skips: 0 past
    its length (padding) or with ``zero_masked``, else its state ``h[bb]`` (a masked step).
    Not inlined: it is the rare path, kept out of the loop that computes the gates
    (inlined, it cost 3-5% at H = 64)."""
    carry = t < lengths[bb] and not zero_masked
    zero = typed(out, 0)
    for j in range(out.shape[2]):
        out[tl, ro + bb, j] = h[bb, j] if carry else zero


@numba.njit(**STEP_OPTIONS)
def skipped_adjoint(t, tl, bb, lengths, zero_masked, d_out, dh):
    """The backward of :func:`skipped`: the state's adjoint ``dh[bb]`` passes a skipped step
    unchanged, except that at a masked step whose output was the state that output's
    gradient joins it."""
    if t < lengths[bb] and not zero_masked:
        for j in range(dh.shape[1]):
            dh[bb, j] += d_out[tl, bb, j]


@numba.njit(**STEP_OPTIONS)
def propagate_tangent(J, M, bb, Mn, cutoff):
    """``M[bb] <- J @ M[bb]`` (S x S), then zero it if every entry is below ``cutoff`` (the
    start state is forgotten). Returns whether the row's tangent is still live."""
    S = J.shape[0]
    zero = typed(M, 0)
    big = zero
    for j in range(S):
        for m in range(S):
            Mn[j, m] = zero
        for k in range(S):
            c = J[j, k]
            for m in range(S):
                Mn[j, m] += c * M[bb, k, m]
        for m in range(S):
            a = abs(Mn[j, m])
            if not (a <= big):  # NaN counts as big
                big = a
    live = not (big < cutoff)
    for j in range(S):
        for m in range(S):
            M[bb, j, m] = Mn[j, m] if live else zero
    return live
