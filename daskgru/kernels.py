"""Numba kernels on NumPy arrays: the input projection of a chunk and the recurrent scan.

Plain loops with explicit float32/float64 signatures, writing into ``out`` arguments; no
dask, no xarray. Every output element is computed by one fixed sequence of IEEE operations
(bias first, then the products in index order; no fastmath, so no reassociation or FMA
contraction), whatever the number of rows in a call. That is what makes results independent
of time and batch chunking, bit for bit.

Layouts: ``G = 3H`` gate columns in order r, z, n; weights are passed transposed,
``w_ih_t (I, G)`` and ``w_hh_t (H, G)``, so the innermost loops run over contiguous gates.
"""
from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["project", "scan", "gate_kernels"]

# Rows of a block share each weight row while it is in L1 cache.
_BLOCK = 8


def _make(dtype):
    one = dtype(1)
    zero = dtype(0)
    f = numba.from_dtype(np.dtype(dtype))
    opts = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)

    @numba.njit(inline="always")
    def sigmoid(v):
        # Two branches so that exp never overflows: ±1e30 gives exactly 0 or 1.
        if v >= zero:
            return one / (one + math.exp(-v))
        e = math.exp(v)
        return e / (one + e)

    @numba.njit(numba.void(f[:, ::1], f[:, ::1], f[::1], f[:, ::1]), **opts)
    def project(x, w_t, b, out):
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

    @numba.njit(
        numba.void(f[:, :, ::1], f[:, ::1], f[::1], numba.int64[::1], numba.int64,
                   numba.boolean, numba.boolean, f[:, ::1], f[:, :, ::1]),
        **opts,
    )
    def scan(gi, w_t, b, lengths, t0, reverse, reset_after, h, out):
        """Run the recurrence over one chunk.

        gi (T, B, 3H): projected inputs (b_ih included) of global steps t0 .. t0+T-1.
        h (B, H): start state on entry, end state on exit.
        Steps with global index >= lengths[b] are skipped: output 0, state unchanged
        (so a reversed scan starts at each sequence's last valid step).
        """
        T, B, G = gi.shape
        H = h.shape[1]
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
                        r = sigmoid(gi[tl, bb, j] + acc[bb, j])
                        z = sigmoid(gi[tl, bb, H + j] + acc[bb, H + j])
                        if reset_after:
                            n = math.tanh(gi[tl, bb, 2 * H + j] + r * acc[bb, 2 * H + j])
                        else:
                            n = math.tanh(gi[tl, bb, 2 * H + j] + acc[bb, 2 * H + j])
                        hn = (one - z) * n + z * h[bb, j]
                        out[tl, bb, j] = hn
                        h[bb, j] = hn

    return project, scan


_KERNELS = {np.dtype(np.float32): _make(np.float32), np.dtype(np.float64): _make(np.float64)}


def gate_kernels(dtype):
    """The (project, scan) kernel pair for a float dtype."""
    return _KERNELS[np.dtype(dtype)]


def project(x, w_ih_t, b_ih):
    """Input projection of a chunk: x (T, B, I) -> (T, B, 3H), as one pass over the chunk."""
    T, B, I = x.shape
    G = w_ih_t.shape[1]
    out = np.empty((T, B, G), dtype=w_ih_t.dtype)
    x2 = np.ascontiguousarray(x, dtype=w_ih_t.dtype).reshape(T * B, I)
    _KERNELS[w_ih_t.dtype][0](x2, w_ih_t, b_ih, out.reshape(T * B, G))
    return out


def scan(gi, w_hh_t, b_hh, h_start, lengths, t0, reverse, reset_after):
    """Recurrent scan of one chunk from ``h_start`` (B, H); returns (out (T, B, H), h_end)."""
    T, B, _ = gi.shape
    H = w_hh_t.shape[0]
    dt = w_hh_t.dtype
    h = np.array(h_start, dtype=dt, order="C", copy=True).reshape(B, H)
    out = np.empty((T, B, H), dtype=dt)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    _KERNELS[dt][1](np.ascontiguousarray(gi), w_hh_t, b_hh, lengths, int(t0), bool(reverse),
                    bool(reset_after), h, out)
    return out, h
