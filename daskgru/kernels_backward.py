"""Numba kernels for the backward pass (BPTT) of one time chunk of one layer and direction.

The recurrent part of the backward pass is sequential and lives in :func:`_make`'s
``backward_scan``: it first recomputes the chunk's forward from the stored start state
(same operation order as :func:`daskgru.kernels.scan`), keeping the gates of every step in
chunk-sized buffers, then walks the chunk in the opposite order, carrying the adjoint state.
Everything that is not sequential -- the weight gradients, the input gradient -- is one GEMM
per chunk afterwards (NumPy/BLAS). Gradients are therefore not bit-identical across
chunkings (the GEMM sums run in different orders), only equal to rounding (~1e-15 relative
in float64); forward values, which the recompute reproduces exactly, are.

Notation for one valid step with previous state ``h`` (gate order r, z, n)::

    a   = b_hh + W_hh h               (reset_after: all three gates)
    r   = σ(gi_r + a_r)   z = σ(gi_z + a_z)
    n   = tanh(gi_n + r * a_n)        (reset_after)
    n   = tanh(gi_n + b_hn + W_hn (r * h))   (reset_after=False, the Cho form)
    h'  = (1 - z) * n + z * h

Backward, with ``g`` the total adjoint of ``h'`` (incoming output gradient + carried state)::

    dn = g (1 - z) (1 - n²)      dz = g (h - n) z (1 - z)
    reset_after:  dr = dn a_n r (1 - r);  d_gi = [dr, dz, dn];  d_a = [dr, dz, dn r]
                  dh = g z + W_hhᵀ d_a
    Cho form:     d(rh) = W_hnᵀ dn;  dr = d(rh) h r (1 - r);  d_gi = d_a = [dr, dz, dn]
                  dh = g z + d(rh) r + W_hrᵀ dr + W_hzᵀ dz

Masked steps (global index >= lengths[b]) leave the state unchanged and output a constant 0
in the forward, so here they pass the adjoint through unchanged and ignore ``d_out``.
"""
from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["backward_scan", "chunk_backward", "backward_kernel"]

_BLOCK = 8


def _make(dtype):
    one = dtype(1)
    zero = dtype(0)
    f = numba.from_dtype(np.dtype(dtype))
    opts = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)

    @numba.njit(inline="always")
    def sigmoid(v):
        if v >= zero:
            return one / (one + math.exp(-v))
        e = math.exp(v)
        return e / (one + e)

    @numba.njit(
        numba.void(
            f[:, :, ::1],      # gi (T, B, G)
            f[:, ::1],         # w_hh (G, H), torch layout
            f[:, ::1],         # w_hh_t (H, G), the forward kernel's layout
            f[::1],            # b_hh (G,)
            numba.int64[::1],  # lengths (B,)
            numba.int64,       # t0
            numba.boolean,     # reverse
            numba.boolean,     # reset_after
            f[:, ::1],         # h (B, H): start state in (unchanged)
            f[:, :, ::1],      # d_out (T, B, H)
            f[:, ::1],         # dh (B, H): adjoint of the end state in, of the start state out
            f[:, :, ::1],      # d_gi (T, B, G) out
            f[:, :, ::1],      # d_a (T, B, G) out: adjoint of a = b_hh + W_hh h (or r*h for n)
            f[:, :, ::1],      # hk (T, B, H) out: the state each step's W_hh multiplies
            f[:, :, ::1],      # rh (T, B, H) out: r * h (Cho form only; the n rows' input)
        ),
        **opts,
    )
    def backward_scan(gi, w_hh, w_hh_t, b, lengths, t0, reverse, reset_after, h_start, d_out,
                      dh, d_gi, d_a, hk, rh):
        T, B, G = gi.shape
        H = h_start.shape[1]
        # Per-step gates of the recomputed forward: r, z, n and a_n (reset_after) -- chunk-sized.
        gates = np.empty((T, B, 4 * H), dtype=h_start.dtype)
        acc = np.empty((B, G), dtype=h_start.dtype)
        h = h_start.copy()
        # ---------------------------------------------------------------- forward recompute
        # Same operation order as kernels.scan, so the states are the forward's bits.
        for s in range(T):
            tl = T - 1 - s if reverse else s
            t = t0 + tl
            for b0 in range(0, B, _BLOCK):
                b1 = min(b0 + _BLOCK, B)
                for bb in range(b0, b1):
                    for j in range(H):
                        hk[tl, bb, j] = h[bb, j]
                    for g in range(G):
                        acc[bb, g] = b[g]
                if reset_after:
                    for k in range(H):
                        for bb in range(b0, b1):
                            hv = h[bb, k]
                            for g in range(G):
                                acc[bb, g] += hv * w_hh_t[k, g]
                else:
                    for k in range(H):
                        for bb in range(b0, b1):
                            hv = h[bb, k]
                            for g in range(2 * H):
                                acc[bb, g] += hv * w_hh_t[k, g]
                    for bb in range(b0, b1):
                        for j in range(H):
                            rh[tl, bb, j] = sigmoid(gi[tl, bb, j] + acc[bb, j]) * h[bb, j]
                    for k in range(H):
                        for bb in range(b0, b1):
                            rk = rh[tl, bb, k]
                            for g in range(2 * H, G):
                                acc[bb, g] += rk * w_hh_t[k, g]
                for bb in range(b0, b1):
                    if t >= lengths[bb]:
                        continue
                    for j in range(H):
                        r = sigmoid(gi[tl, bb, j] + acc[bb, j])
                        z = sigmoid(gi[tl, bb, H + j] + acc[bb, H + j])
                        an = acc[bb, 2 * H + j]
                        if reset_after:
                            n = math.tanh(gi[tl, bb, 2 * H + j] + r * an)
                        else:
                            n = math.tanh(gi[tl, bb, 2 * H + j] + an)
                        gates[tl, bb, j] = r
                        gates[tl, bb, H + j] = z
                        gates[tl, bb, 2 * H + j] = n
                        gates[tl, bb, 3 * H + j] = an
                        h[bb, j] = (one - z) * n + z * h[bb, j]
        # ---------------------------------------------------------------- backward walk
        g_ = np.empty((B, H), dtype=h_start.dtype)
        drh = np.empty((B, H), dtype=h_start.dtype)
        for s in range(T - 1, -1, -1):
            tl = T - 1 - s if reverse else s
            t = t0 + tl
            for b0 in range(0, B, _BLOCK):
                b1 = min(b0 + _BLOCK, B)
                for bb in range(b0, b1):
                    if t >= lengths[bb]:
                        for g in range(G):
                            d_gi[tl, bb, g] = zero
                            d_a[tl, bb, g] = zero
                        continue
                    for j in range(H):
                        gv = dh[bb, j] + d_out[tl, bb, j]
                        g_[bb, j] = gv
                        z = gates[tl, bb, H + j]
                        n = gates[tl, bb, 2 * H + j]
                        dn = gv * (one - z) * (one - n * n)
                        dz = gv * (hk[tl, bb, j] - n) * z * (one - z)
                        d_gi[tl, bb, H + j] = dz
                        d_gi[tl, bb, 2 * H + j] = dn
                        d_a[tl, bb, H + j] = dz
                        if reset_after:
                            r = gates[tl, bb, j]
                            dr = dn * gates[tl, bb, 3 * H + j] * r * (one - r)
                            d_gi[tl, bb, j] = dr
                            d_a[tl, bb, j] = dr
                            d_a[tl, bb, 2 * H + j] = dn * r
                        else:
                            d_a[tl, bb, 2 * H + j] = dn
                if not reset_after:
                    # d(r*h) = W_hnᵀ dn, then the reset gate's adjoint.
                    for bb in range(b0, b1):
                        if t >= lengths[bb]:
                            continue
                        for k in range(H):
                            drh[bb, k] = zero
                        for j in range(H):
                            c = d_a[tl, bb, 2 * H + j]
                            for k in range(H):
                                drh[bb, k] += c * w_hh[2 * H + j, k]
                        for j in range(H):
                            r = gates[tl, bb, j]
                            dr = drh[bb, j] * hk[tl, bb, j] * r * (one - r)
                            d_gi[tl, bb, j] = dr
                            d_a[tl, bb, j] = dr
                # dh = g z (+ d(rh) r) + W_hhᵀ d_a  (over the rows that multiply h itself)
                for bb in range(b0, b1):
                    if t >= lengths[bb]:
                        continue
                    for j in range(H):
                        v = g_[bb, j] * gates[tl, bb, H + j]
                        if not reset_after:
                            v += drh[bb, j] * gates[tl, bb, j]
                        dh[bb, j] = v
                    grows = G if reset_after else 2 * H
                    for g in range(grows):
                        c = d_a[tl, bb, g]
                        for k in range(H):
                            dh[bb, k] += c * w_hh[g, k]

    return backward_scan


_KERNELS = {np.dtype(np.float32): _make(np.float32), np.dtype(np.float64): _make(np.float64)}


def backward_kernel(dtype):
    """The jitted ``backward_scan`` kernel for a float dtype."""
    return _KERNELS[np.dtype(dtype)]


def backward_scan(gi, w_hh, w_hh_t, b_hh, h_start, lengths, t0, reverse, reset_after, d_out,
                  d_h_end):
    """Backward of the recurrence over one chunk.

    Parameters
    ----------
    gi : (T, B, 3H) projected inputs (b_ih included) of global steps t0 .. t0+T-1.
    w_hh : (3H, H) torch layout; w_hh_t : (H, 3H) its contiguous transpose; b_hh : (3H,).
    h_start : (B, H) the chunk's forward start state.
    lengths : (B,) int; t0 : global index of the chunk's first step; reverse, reset_after: bool.
    d_out : (T, B, H) gradient of the chunk's outputs; d_h_end : (B, H) adjoint of its end state.

    Returns
    -------
    d_gi (T, B, 3H), d_h_start (B, H), dW_hh (3H, H), db_hh (3H,)
    """
    T, B, G = gi.shape
    H = w_hh.shape[1]
    dt = w_hh.dtype
    c = np.ascontiguousarray
    dh = np.array(d_h_end, dtype=dt, order="C", copy=True).reshape(B, H)
    d_gi = np.empty((T, B, G), dt)
    d_a = np.empty((T, B, G), dt)
    hk = np.empty((T, B, H), dt)
    rh = np.zeros((T, B, H) if not reset_after else (0, B, H), dt)
    _KERNELS[dt](c(gi, dtype=dt), c(w_hh), c(w_hh_t), c(b_hh), c(lengths, dtype=np.int64),
                 int(t0), bool(reverse), bool(reset_after), c(h_start, dtype=dt).reshape(B, H),
                 c(d_out, dtype=dt), dh, d_gi, d_a, hk, rh)
    da2 = d_a.reshape(T * B, G)
    dW_hh = np.empty((G, H), dt)
    if reset_after:
        np.dot(da2.T, hk.reshape(T * B, H), out=dW_hh)
    else:
        dW_hh[: 2 * H] = da2[:, : 2 * H].T @ hk.reshape(T * B, H)
        dW_hh[2 * H:] = da2[:, 2 * H:].T @ rh.reshape(T * B, H)
    db_hh = da2.sum(axis=0)
    return d_gi, dh, dW_hh, db_hh


def chunk_backward(x, w_ih, w_ih_t, b_ih, w_hh, w_hh_t, b_hh, h_start, lengths, t0, reverse,
                   reset_after, d_out, d_h_end):
    """Backward of one chunk of one layer and direction, from its input x (T, B, I).

    Recomputes the input projection and the recurrence (memory O(chunk)); returns
    ``(d_x (T, B, I), d_h_start (B, H), dW_ih (3H, I), db_ih, dW_hh (3H, H), db_hh)``.
    """
    from . import kernels

    T, B, I = x.shape
    G = w_ih.shape[0]
    dt = w_ih.dtype
    gi = kernels.project(x, w_ih_t, b_ih)
    d_gi, dh, dW_hh, db_hh = backward_scan(gi, w_hh, w_hh_t, b_hh, h_start, lengths, t0,
                                           reverse, reset_after, d_out, d_h_end)
    dg2 = d_gi.reshape(T * B, G)
    x2 = np.ascontiguousarray(x, dtype=dt).reshape(T * B, I)
    dW_ih = dg2.T @ x2
    db_ih = dg2.sum(axis=0)
    d_x = (dg2 @ w_ih).reshape(T, B, I)
    return d_x, dh, dW_ih, db_ih, dW_hh, db_hh
