"""Numba kernels on NumPy arrays: the input projection of a chunk and the recurrent scan.

Explicit float32/float64 signatures, writing into ``out`` arguments; no dask, no xarray.
Every output element is computed by one fixed sequence of operations whatever the number of
rows (time steps x sequences) in a call, which is what makes results independent of time and
batch chunking, bit for bit. Both matrix products (the input projection, and the recurrent
product of every step) go through :func:`daskgru.tiles.product`, which adds the bias first
and then the products in index order, each a rounded multiply and a rounded add (no
fastmath: no reassociation, no FMA contraction), in register tiles (on this AVX-512 machine
1.6-1.9x the rate of NumPy's OpenBLAS running its Haswell kernels; with AVX2 about sgemm's
rate and half of dgemm's). BLAS is not used: its summation order changes with the row count
of a call and with its thread count.

Layouts: ``G = 3H`` gate columns in order r, z, n; weights are passed transposed,
``w_ih_t (I, G)`` and ``w_hh_t (H, G)``, so the innermost loops run over contiguous gates.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from .tiles import CACHE_KEY, product

__all__ = ["project", "scan", "gate_kernels", "sigmoid", "tanh", "vexp", "typed"]

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
    """exp(x) = 2**n * e**r with n = round(x / ln 2) and r = x - n ln 2 (Cody-Waite split),
    e**r by its Taylor series (below 1 ulp on |r| <= ln 2 / 2), 2**n built from its bits.
    Branch-free, so it vectorizes. The argument is clamped to the normal range: exp(-1e30)
    is tiny rather than 0 and exp(1e30) large rather than inf; NaN stays NaN."""
    if not isinstance(x, types.Float):
        return None
    dt = np.float32 if x == types.float32 else np.float64
    k = _exp_constants(dt)
    lo, hi, ln2hi, ln2lo = dt(k["lo"]), dt(k["hi"]), dt(k["ln2hi"]), dt(k["ln2lo"])
    log2e, half = dt(1 / math.log(2)), dt(0.5)
    c = [dt(1 / math.factorial(i)) for i in range(14)]
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13 = c
    as_int, to_float = k["as_int"], k["to_float"]
    bias, shift = as_int(k["bias"]), as_int(k["shift"])

    # Horner written out (a loop here trips Numba's inliner); min(max(x, lo), hi) keeps NaN.
    if dt == np.float32:
        def poly(r):
            return ((((((c7 * r + c6) * r + c5) * r + c4) * r + c3) * r + c2) * r + c1) * r + c0
    else:
        def poly(r):
            p = ((((((c13 * r + c12) * r + c11) * r + c10) * r + c9) * r + c8) * r + c7)
            return ((((((p * r + c6) * r + c5) * r + c4) * r + c3) * r + c2) * r + c1) * r + c0
    poly = numba.njit(inline="always")(poly)

    def impl(x):
        x = min(max(x, lo), hi)
        n = np.floor(x * log2e + half)  # np.floor keeps the float type (math.floor: int)
        r = (x - n * ln2hi) - n * ln2lo
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


# Numba signatures for both float types; kernels compile once and are cached on disk.
_OPTS = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)


def _sigs(make):
    return [make(numba.float32), make(numba.float64)]


def _build(tiles_key):
    """The kernels, as closures over ``tiles_key`` (``tiles.CACHE_KEY``): Numba's on-disk
    cache keys a function on its own module's source and on its closure variables, so a
    change to the tiles recompiles these."""

    @numba.njit(_sigs(lambda f: numba.void(f[:, ::1], f[:, ::1], f[::1], f[:, ::1])), **_OPTS)
    def project_kernel(x, w_t, b, out):
        """out[n, :] = b + sum_k x[n, k] * w_t[k, :] for every row n of x (N, I)."""
        tiles_key  # noqa: B018 (a closure variable: part of Numba's cache key)
        product(x, 0, x.shape[0], w_t, b, 0, w_t.shape[1], out, 0)

    @numba.njit(_sigs(lambda f: numba.void(f[:, :, ::1], f[:, ::1], f[::1], numba.int64[::1],
                                           numba.int64, numba.boolean, numba.boolean, f[:, ::1],
                                           f[:, :, ::1])), **_OPTS)
    def scan_kernel(gi, w_t, b, lengths, t0, reverse, reset_after, h, out):
        """Run the recurrence over one chunk: per step, the recurrent product of all rows
        (:func:`daskgru.tiles.product`), then the gates, fused with the state update.

        gi (T, B, 3H): projected inputs (b_ih included) of global steps t0 .. t0+T-1.
        h (B, H): start state on entry, end state on exit.
        Steps with global index >= lengths[b] are skipped: output 0, state unchanged
        (so a reversed scan starts at each sequence's last valid step).
        """
        tiles_key  # noqa: B018 (a closure variable: part of Numba's cache key)
        T, B, G = gi.shape
        H = h.shape[1]
        one, zero = typed(h, 1), typed(h, 0)
        acc = np.empty((B, G), dtype=h.dtype)
        rh = np.empty((B, H), dtype=h.dtype)
        for s in range(T):
            tl = T - 1 - s if reverse else s
            t = t0 + tl
            if reset_after:
                product(h, 0, B, w_t, b, 0, G, acc, 0)
            else:
                # r and z see h; the candidate sees r * h, so it needs r first.
                product(h, 0, B, w_t, b, 0, 2 * H, acc, 0)
                for bb in range(B):
                    for j in range(H):
                        rh[bb, j] = sigmoid(gi[tl, bb, j] + acc[bb, j]) * h[bb, j]
                product(rh, 0, B, w_t, b, 2 * H, G, acc, 0)
            for bb in range(B):
                if t >= lengths[bb]:
                    for j in range(H):
                        out[tl, bb, j] = zero
                    continue
                for j in range(H):
                    z = sigmoid(gi[tl, bb, H + j] + acc[bb, H + j])
                    if reset_after:
                        r = sigmoid(gi[tl, bb, j] + acc[bb, j])
                        n = tanh(gi[tl, bb, 2 * H + j] + r * acc[bb, 2 * H + j])
                    else:  # r was applied to h before the product (rh above)
                        n = tanh(gi[tl, bb, 2 * H + j] + acc[bb, 2 * H + j])
                    hn = (one - z) * n + z * h[bb, j]
                    out[tl, bb, j] = hn
                    h[bb, j] = hn

    return project_kernel, scan_kernel


project_kernel, scan_kernel = _build(CACHE_KEY)


def gate_kernels(dtype):
    """The Numba kernels (project, scan) of a float dtype (each compiled for both)."""
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"the kernels take float32 or float64, got {np.dtype(dtype)}")
    return project_kernel, scan_kernel


def project(x, w_ih_t, b_ih, out=None):
    """Input projection of a chunk: x (T, B, I) -> (T, B, 3H) = x @ w_ih_t + b_ih.
    ``out``, if given, is a C-contiguous (T, B, 3H) buffer to write into."""
    T, B, I = x.shape
    G = w_ih_t.shape[1]
    dt = w_ih_t.dtype
    out = np.empty((T, B, G), dtype=dt) if out is None else out
    x2 = np.ascontiguousarray(x, dtype=dt).reshape(T * B, I)
    project_kernel(x2, w_ih_t, b_ih, out.reshape(T * B, G))
    return out


def scan(gi, w_hh_t, b_hh, h_start, lengths, t0, reverse, reset_after, out=None):
    """Recurrent scan of one chunk from ``h_start`` (B, H); returns (out (T, B, H), h_end).
    ``out``, if given, is a C-contiguous (T, B, H) buffer to write into."""
    T, B, _ = gi.shape
    H = w_hh_t.shape[0]
    dt = w_hh_t.dtype
    h = np.array(h_start, dtype=dt, order="C", copy=True).reshape(B, H)
    out = np.empty((T, B, H), dtype=dt) if out is None else out
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    gi = np.ascontiguousarray(gi)
    scan_kernel(gi, w_hh_t, b_hh, lengths, int(t0), bool(reverse), bool(reset_after), h, out)
    return out, h
