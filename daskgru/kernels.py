"""Numba kernels on NumPy arrays: the input projection of a chunk and the recurrent scan.

Explicit float32/float64 signatures, writing into ``out`` arguments; no dask, no xarray.
Every output element is computed by one fixed sequence of operations whatever the number of
rows (time steps x sequences) in a call, which is what makes results independent of time
and batch chunking, bit for bit:

* the fused loops (small sizes) add the bias first, then the products in index order, with
  no fastmath (no reassociation, no FMA contraction);
* the BLAS kernels (from ``BLAS_MIN_HIDDEN`` / ``BLAS_MIN_INPUT``) call the BLAS of NumPy's
  Numba binding, whose per-row summation order is probed once per shape and process
  (``blas_min_rows``): calls smaller than the row count from which every row gets the same
  bits are zero-padded, and where no such count exists the fused loops are used instead.

Layouts: ``G = 3H`` gate columns in order r, z, n; weights are passed transposed,
``w_ih_t (I, G)`` and ``w_hh_t (H, G)``, so the innermost loops run over contiguous gates.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

__all__ = ["project", "scan", "gate_kernels", "sigmoid", "tanh", "vexp", "typed"]

# Rows of a block share each weight row while it is in L1 cache.
_BLOCK = 8


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


@numba.njit(_sigs(lambda f: numba.void(f[:, ::1], f[:, ::1], f[::1], f[:, ::1])), **_OPTS)
def project_loops(x, w_t, b, out):
    """out[n, :] = b + sum_k x[n, k] * w_t[k, :] for every row n of x (N, I)."""
    N, K = x.shape
    G = w_t.shape[1]
    for n0 in range(0, N, _BLOCK):
        n1 = min(n0 + _BLOCK, N)
        for n in range(n0, n1):
            for g in range(G):
                out[n, g] = b[g]
        for k in range(K):
            for n in range(n0, n1):
                xk = x[n, k]
                for g in range(G):
                    out[n, g] += xk * w_t[k, g]


@numba.njit(_sigs(lambda f: numba.void(f[:, :, ::1], f[:, ::1], f[::1], numba.int64[::1],
                                       numba.int64, numba.boolean, numba.boolean, f[:, ::1],
                                       f[:, :, ::1])), **_OPTS)
def scan_loops(gi, w_t, b, lengths, t0, reverse, reset_after, h, out):
    """Run the recurrence over one chunk with fused loops (small hidden sizes).

    gi (T, B, 3H): projected inputs (b_ih included) of global steps t0 .. t0+T-1.
    h (B, H): start state on entry, end state on exit.
    Steps with global index >= lengths[b] are skipped: output 0, state unchanged
    (so a reversed scan starts at each sequence's last valid step).
    """
    T, B, G = gi.shape
    H = h.shape[1]
    one, zero = typed(h, 1), typed(h, 0)
    acc = np.empty((B, G), dtype=h.dtype)
    rh = np.empty((B, H), dtype=h.dtype)
    for s in range(T):
        tl = T - 1 - s if reverse else s
        t = t0 + tl
        for b0 in range(0, B, _BLOCK):
            b1 = min(b0 + _BLOCK, B)
            for bb in range(b0, b1):
                for g in range(G):
                    acc[bb, g] = b[g]
            if reset_after:
                for k in range(H):
                    for bb in range(b0, b1):
                        hk = h[bb, k]
                        for g in range(G):
                            acc[bb, g] += hk * w_t[k, g]
            else:
                # r and z see h; the candidate sees r * h, so it needs r first.
                for k in range(H):
                    for bb in range(b0, b1):
                        hk = h[bb, k]
                        for g in range(2 * H):
                            acc[bb, g] += hk * w_t[k, g]
                for bb in range(b0, b1):
                    for j in range(H):
                        rh[bb, j] = sigmoid(gi[tl, bb, j] + acc[bb, j]) * h[bb, j]
                for k in range(H):
                    for bb in range(b0, b1):
                        rk = rh[bb, k]
                        for g in range(2 * H, G):
                            acc[bb, g] += rk * w_t[k, g]
            for bb in range(b0, b1):
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


@numba.njit(_sigs(lambda f: numba.void(f[:, ::1], f[:, ::1], f[::1], f[:, ::1], f[:, ::1])),
            **_OPTS)
def project_blas(x, w_t, b, xpad, out):
    """out = x @ w_t + b through BLAS; calls with fewer rows than xpad has (see
    ``blas_min_rows``) go through the zero-padded xpad instead."""
    N = x.shape[0]
    if N < xpad.shape[0]:
        xpad[:N] = x
        tmp = np.empty((xpad.shape[0], out.shape[1]), out.dtype)
        np.dot(xpad, w_t, tmp)
        out[:, :] = tmp[:N]
    else:
        np.dot(x, w_t, out)
    for n in range(N):
        for g in range(out.shape[1]):
            out[n, g] += b[g]


@numba.njit(_sigs(lambda f: numba.void(f[:, :, ::1], f[:, ::1], f[:, ::1], f[:, ::1], f[::1],
                                       numba.int64[::1], numba.int64, numba.boolean,
                                       numba.boolean, numba.int64, f[:, ::1], f[:, :, ::1])),
            **_OPTS)
def scan_blas(gi, w_t, w_rz, w_n, b, lengths, t0, reverse, reset_after, min_rows, h, out):
    """As ``scan_loops``, with the recurrent product of each step as one BLAS call over the
    batch, padded to ``min_rows`` rows (BLAS routes small products to other kernels)."""
    T, B, G = gi.shape
    H = h.shape[1]
    one, zero = typed(h, 1), typed(h, 0)
    Bp = max(B, min_rows)
    hb = np.zeros((Bp, H), h.dtype)
    hb[:B] = h
    acc = np.empty((Bp, G), h.dtype)
    acc_rz = np.empty((Bp, 2 * H), h.dtype)
    acc_n = np.empty((Bp, H), h.dtype)
    rh = np.zeros((Bp, H), h.dtype)
    for s in range(T):
        tl = T - 1 - s if reverse else s
        t = t0 + tl
        if reset_after:
            np.dot(hb, w_t, acc)
            for bb in range(B):
                if t >= lengths[bb]:
                    out[tl, bb, :] = zero
                    continue
                for j in range(H):
                    r = sigmoid(gi[tl, bb, j] + (acc[bb, j] + b[j]))
                    z = sigmoid(gi[tl, bb, H + j] + (acc[bb, H + j] + b[H + j]))
                    n = tanh(gi[tl, bb, 2 * H + j] + r * (acc[bb, 2 * H + j] + b[2 * H + j]))
                    hn = (one - z) * n + z * hb[bb, j]
                    out[tl, bb, j] = hn
                    hb[bb, j] = hn
        else:
            np.dot(hb, w_rz, acc_rz)
            for bb in range(B):
                for j in range(H):
                    rh[bb, j] = sigmoid(gi[tl, bb, j] + (acc_rz[bb, j] + b[j])) * hb[bb, j]
            np.dot(rh, w_n, acc_n)
            for bb in range(B):
                if t >= lengths[bb]:
                    out[tl, bb, :] = zero
                    continue
                for j in range(H):
                    z = sigmoid(gi[tl, bb, H + j] + (acc_rz[bb, H + j] + b[H + j]))
                    n = tanh(gi[tl, bb, 2 * H + j] + (acc_n[bb, j] + b[2 * H + j]))
                    hn = (one - z) * n + z * hb[bb, j]
                    out[tl, bb, j] = hn
                    hb[bb, j] = hn
    h[:, :] = hb[:B]


_KERNELS = {np.dtype(t): (project_loops, scan_loops, project_blas, scan_blas)
            for t in (np.float32, np.float64)}

# Below these sizes the fused loops beat BLAS calls (measured, see docs/performance.md);
# the choice depends on the model only, never on the chunking.
BLAS_MIN_HIDDEN = 16
BLAS_MIN_INPUT = 4
_MIN_ROWS = {}
_PROBE_ROWS = tuple(range(1, 41)) + (48, 64, 80, 127, 200)


def blas_min_rows(dtype, K, N):
    """The fewest rows from which this process's BLAS gives every row of ``A @ W`` (W of
    shape (K, N)) the same bits whatever the number of rows in the call, or None.

    Results are promised not to depend on batch chunking, but BLAS libraries send small
    products (1 row, or a small M*N*K) to other kernels with another summation order.
    Calls with fewer rows are padded to this many. Probed once per shape and process.
    """
    key = (np.dtype(dtype), int(K), int(N))
    if key not in _MIN_ROWS:
        rng = np.random.default_rng(0)
        M = _PROBE_ROWS[-1]
        a = rng.standard_normal((M, K)).astype(dtype)
        w = rng.standard_normal((K, N)).astype(dtype)
        zero_b, nopad = np.zeros(N, dtype), np.zeros((1, K), dtype)
        blas = _KERNELS[key[0]][2]
        ref = np.empty((M, N), dtype)
        blas(a, w, zero_b, nopad, ref)
        min_rows = None
        for m in reversed(_PROBE_ROWS):
            o = np.empty((m, N), dtype)
            off = (7 * m) % (M - m + 1)
            blas(np.ascontiguousarray(a[off:off + m]), w, zero_b, nopad, o)
            if not np.array_equal(o, ref[off:off + m]):
                break
            min_rows = m
        _MIN_ROWS[key] = min_rows if min_rows is not None and min_rows <= 16 else None
    return _MIN_ROWS[key]


def blas_plan(H, I, dtype):
    """Rows to pad BLAS calls to, for (projection, recurrence); None: fused loops instead."""
    G = 3 * H
    proj = blas_min_rows(dtype, I, G) if I >= BLAS_MIN_INPUT else None
    rec = None
    if H >= BLAS_MIN_HIDDEN:
        rows = [blas_min_rows(dtype, H, n) for n in (G, 2 * H, H)]
        rec = None if None in rows else max(rows)
    return proj, rec


def gate_kernels(dtype):
    """The Numba kernels (project, scan, project_blas, scan_blas) of a float dtype."""
    return _KERNELS[np.dtype(dtype)]


def project(x, w_ih_t, b_ih, out=None):
    """Input projection of a chunk: x (T, B, I) -> (T, B, 3H) = x @ w_ih_t + b_ih.
    ``out``, if given, is a C-contiguous (T, B, 3H) buffer to write into."""
    T, B, I = x.shape
    G = w_ih_t.shape[1]
    dt = w_ih_t.dtype
    out = np.empty((T, B, G), dtype=dt) if out is None else out
    x2 = np.ascontiguousarray(x, dtype=dt).reshape(T * B, I)
    rows = blas_plan(G // 3, I, dt)[0]
    if rows is not None:
        _KERNELS[dt][2](x2, w_ih_t, b_ih, np.zeros((rows, I), dt), out.reshape(T * B, G))
    else:
        _KERNELS[dt][0](x2, w_ih_t, b_ih, out.reshape(T * B, G))
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
    rows = blas_plan(H, 1, dt)[1]
    if rows is not None:
        if reset_after:  # only the reset-before form multiplies the two parts separately
            w_rz = w_n = w_hh_t
        else:
            w_rz = np.ascontiguousarray(w_hh_t[:, :2 * H])
            w_n = np.ascontiguousarray(w_hh_t[:, 2 * H:])
        _KERNELS[dt][3](gi, w_hh_t, w_rz, w_n, b_hh, lengths, int(t0), bool(reverse),
                        bool(reset_after), rows, h, out)
    else:
        _KERNELS[dt][1](gi, w_hh_t, b_hh, lengths, int(t0), bool(reverse), bool(reset_after),
                        h, out)
    return out, h
