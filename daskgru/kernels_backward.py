"""Numba kernels for the backward pass (BPTT) of one time chunk of one layer and direction.

:func:`backward_scan` first gets the chunk's forward states: from the caller when it still
holds the chunk's outputs, else by recomputing the chunk from its stored start state with the
forward kernel (:func:`daskgru.kernels.scan`, same bits). From the states, every step's gate
pre-activations are a few products over the whole chunk (:func:`daskgru.tiles.product`, so
they equal the forward's bit for bit; chunk-sized buffers only). The one sequential part,
the walk back through the chunk carrying the adjoint state, is the Numba kernel
``backward_walk`` (elementwise loops plus two small products per step, again the tiles). The
input gradient goes through the tiles too; the weight gradients are one GEMM per chunk
(NumPy/BLAS). Weight and bias gradients are therefore not bit-identical across chunkings
(their sums run in different orders), only equal to rounding (~1e-15 relative in float64);
forward values, which the recompute reproduces exactly, are.

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


import numba
import numpy as np

from .kernels import _OPTS, _sigs, typed
from .tiles import CACHE_KEY, product

__all__ = ["backward_scan", "chunk_backward", "backward_kernel"]


@numba.njit(_sigs(lambda f: numba.void(f[:, :, ::1], f[:, ::1], numba.int64[::1], numba.int64,
                                       numba.boolean, f[:, :, ::1])), **_OPTS)
def prev_states(out, h_start, lengths, t0, reverse, hk):
    """hk[t] = the state each step starts from, given the forward's outputs out (T, B, H)
    (a masked step keeps the state: its output 0 is not a state)."""
    T, B, H = out.shape
    for bb in range(B):
        src_t = -1  # the step whose output is the current state (-1: h_start)
        for s in range(T):
            tl = T - 1 - s if reverse else s
            if src_t >= 0:
                for j in range(H):
                    hk[tl, bb, j] = out[src_t, bb, j]
            else:
                for j in range(H):
                    hk[tl, bb, j] = h_start[bb, j]
            if t0 + tl < lengths[bb]:
                src_t = tl


def _build(tiles_key):
    """``backward_walk`` as a closure over ``tiles_key`` (see :func:`daskgru.kernels._build`):
    a change to the tiles recompiles it."""

    @numba.njit(_sigs(lambda f: numba.void(
            f[:, :, ::1],      # gates (T, B, 4H): r, z, n, a_n of the recomputed forward
            f[:, ::1],         # w_hh (G, H), torch layout
            numba.int64[::1],  # lengths (B,)
            numba.int64,       # t0
            numba.boolean,     # reverse
            numba.boolean,     # reset_after
            f[:, :, ::1],      # hk (T, B, H): the state each step starts from
            f[:, :, ::1],      # d_out (T, B, H)
            f[:, ::1],         # dh (B, H): adjoint of the end state in, of the start state out
            f[:, :, ::1],      # d_gi (T, B, G) out
            f[:, :, ::1],      # d_a (T, B, G) out: adjoint of b_hh + W_hh h (W_hn (r h) for n)
    )), **_OPTS)
    def backward_walk(gates, w_hh, lengths, t0, reverse, reset_after, hk, d_out, dh, d_gi,
                      d_a):
        tiles_key  # noqa: B018 (a closure variable: part of Numba's cache key)
        T, B, G = d_gi.shape
        H = dh.shape[1]
        one, zero = typed(dh, 1), typed(dh, 0)
        g_ = np.empty((B, H), dtype=dh.dtype)
        dn_ = np.empty((B, H), dtype=dh.dtype)
        drz = np.empty((B, 2 * H), dtype=dh.dtype)
        w_n = np.ascontiguousarray(w_hh[2 * H:])
        w_rz = np.ascontiguousarray(w_hh[:2 * H])
        back = np.empty((B, H), dtype=dh.dtype)
        back_rz = np.empty((B, H), dtype=dh.dtype)
        no_bias = np.zeros(H, dtype=dh.dtype)
        drh = np.empty((B, H), dtype=dh.dtype)
        for s in range(T - 1, -1, -1):
            tl = T - 1 - s if reverse else s
            t = t0 + tl
            for bb in range(B):
                if t >= lengths[bb]:
                    for g in range(G):
                        d_gi[tl, bb, g] = zero
                        d_a[tl, bb, g] = zero
                    for j in range(H):
                        dn_[bb, j] = zero
                    for g in range(2 * H):
                        drz[bb, g] = zero
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
                    drz[bb, H + j] = dz
                    if reset_after:
                        r = gates[tl, bb, j]
                        dr = dn * gates[tl, bb, 3 * H + j] * r * (one - r)
                        d_gi[tl, bb, j] = dr
                        d_a[tl, bb, j] = dr
                        d_a[tl, bb, 2 * H + j] = dn * r
                        drz[bb, j] = dr
                        dn_[bb, j] = dn * r
                    else:
                        d_a[tl, bb, 2 * H + j] = dn
                        dn_[bb, j] = dn
            # the adjoint through W_hn: of h (reset_after) or of r * h (the Cho form)
            product(dn_, 0, B, w_n, no_bias, 0, H, back, 0)
            if not reset_after:
                for bb in range(B):
                    if t >= lengths[bb]:
                        continue
                    for j in range(H):
                        r = gates[tl, bb, j]
                        drh[bb, j] = back[bb, j]
                        dr = back[bb, j] * hk[tl, bb, j] * r * (one - r)
                        d_gi[tl, bb, j] = dr
                        d_a[tl, bb, j] = dr
                        drz[bb, j] = dr
            product(drz, 0, B, w_rz, no_bias, 0, H, back_rz, 0)
            for bb in range(B):
                if t >= lengths[bb]:
                    continue  # masked step: the adjoint passes through unchanged
                for j in range(H):
                    if reset_after:
                        v = back[bb, j]
                    else:
                        v = drh[bb, j] * gates[tl, bb, j]
                    dh[bb, j] = g_[bb, j] * gates[tl, bb, H + j] + v + back_rz[bb, j]

    return backward_walk


backward_walk = _build(CACHE_KEY)


_KERNELS = {np.dtype(t): (prev_states, backward_walk) for t in (np.float32, np.float64)}


def backward_kernel(dtype):
    """The jitted ``(prev_states, backward_walk)`` kernels for a float dtype."""
    return _KERNELS[np.dtype(dtype)]


def _sigmoid_(v):
    """σ in place: 1 / (1 + exp(-v))."""
    np.negative(v, out=v)
    np.exp(v, out=v)
    v += 1
    np.reciprocal(v, out=v)


def backward_scan(gi, w_hh, w_hh_t, b_hh, h_start, lengths, t0, reverse, reset_after, d_out,
                  d_h_end, out=None):
    """Backward of the recurrence over one chunk.

    Parameters
    ----------
    gi : (T, B, 3H) projected inputs (b_ih included) of global steps t0 .. t0+T-1.
    w_hh : (3H, H) torch layout; w_hh_t : (H, 3H) its contiguous transpose; b_hh : (3H,).
    h_start : (B, H) the chunk's forward start state.
    lengths : (B,) int; t0 : global index of the chunk's first step; reverse, reset_after: bool.
    d_out : (T, B, H) gradient of the chunk's outputs; d_h_end : (B, H) adjoint of its end state.
    out : (T, B, H), optional
        The chunk's forward outputs, when the caller still holds them; otherwise the forward
        is recomputed from ``h_start`` with :func:`daskgru.kernels.scan` (same bits).

    Returns
    -------
    d_gi (T, B, 3H), d_h_start (B, H), dW_hh (3H, H), db_hh (3H,)
    """
    from . import kernels

    T, B, G = gi.shape
    H = w_hh.shape[1]
    dt = w_hh.dtype
    c = np.ascontiguousarray
    gi = c(gi, dtype=dt)
    lengths = c(lengths, dtype=np.int64)
    h_start = c(h_start, dtype=dt).reshape(B, H)
    prev_states, walk = _KERNELS[dt]
    if out is None:  # recompute: the one sequential forward pass of the chunk
        out, _ = kernels.scan(gi, w_hh_t, b_hh, h_start, lengths, t0, reverse, reset_after)
    hk = np.empty((T, B, H), dt)
    prev_states(c(out, dtype=dt), h_start, lengths, int(t0), bool(reverse), hk)
    # Gates of every step at once from the states: products over the whole chunk instead of
    # a sequential loop (the tiles, so the pre-activations are the forward's, bit for bit).
    hk2 = hk.reshape(T * B, H)
    gi2 = gi.reshape(T * B, G)
    gates = np.empty((T * B, 4 * H), dt)
    a = np.empty((T * B, G), dt)
    # Vectorised NumPy (exp is SIMD there); exp overflow gives inf and then exactly 0.
    with np.errstate(over="ignore"):
        if reset_after:
            product(hk2, 0, T * B, w_hh_t, b_hh, 0, G, a, 0)
            rz = gates[:, :2 * H]
            np.add(gi2[:, :2 * H], a[:, :2 * H], out=rz)
            _sigmoid_(rz)
            gates[:, 3 * H:] = a[:, 2 * H:]
            pre = gates[:, :H] * a[:, 2 * H:]
        else:
            product(hk2, 0, T * B, w_hh_t, b_hh, 0, 2 * H, a, 0)
            rz = gates[:, :2 * H]
            np.add(gi2[:, :2 * H], a[:, :2 * H], out=rz)
            _sigmoid_(rz)
            rh = gates[:, :H] * hk2
            product(rh, 0, T * B, w_hh_t, b_hh, 2 * H, G, a, 0)
            pre = a[:, 2 * H:]
            gates[:, 3 * H:] = pre
        pre += gi2[:, 2 * H:]
        np.tanh(pre, out=gates[:, 2 * H:3 * H])
    dh = np.array(d_h_end, dtype=dt, order="C", copy=True).reshape(B, H)
    d_gi = np.empty((T, B, G), dt)
    d_a = np.empty((T, B, G), dt)
    walk(gates.reshape(T, B, 4 * H), c(w_hh), lengths, int(t0), bool(reverse),
         bool(reset_after), hk, c(d_out, dtype=dt), dh, d_gi, d_a)
    da2 = d_a.reshape(T * B, G)
    dW_hh = np.empty((G, H), dt)
    if reset_after:
        np.dot(da2.T, hk2, out=dW_hh)
    else:
        dW_hh[: 2 * H] = da2[:, : 2 * H].T @ hk2
        dW_hh[2 * H:] = da2[:, 2 * H:].T @ rh
    db_hh = da2.sum(axis=0)
    return d_gi, dh, dW_hh, db_hh


def chunk_backward(x, w_ih, w_ih_t, b_ih, w_hh, w_hh_t, b_hh, h_start, lengths, t0, reverse,
                   reset_after, d_out, d_h_end, out=None):
    """Backward of one chunk of one layer and direction, from its input x (T, B, I).

    Recomputes the input projection and (unless ``out`` is given) the recurrence, memory
    O(chunk); returns
    ``(d_x (T, B, I), d_h_start (B, H), dW_ih (3H, I), db_ih, dW_hh (3H, H), db_hh)``.
    """
    from . import kernels

    T, B, I = x.shape
    G = w_ih.shape[0]
    dt = w_ih.dtype
    gi = kernels.project(x, w_ih_t, b_ih)
    d_gi, dh, dW_hh, db_hh = backward_scan(gi, w_hh, w_hh_t, b_hh, h_start, lengths, t0,
                                           reverse, reset_after, d_out, d_h_end, out)
    dg2 = d_gi.reshape(T * B, G)
    x2 = np.ascontiguousarray(x, dtype=dt).reshape(T * B, I)
    dW_ih = dg2.T @ x2
    db_ih = dg2.sum(axis=0)
    d_x = np.empty((T, B, I), dt)
    product(dg2, 0, T * B, np.ascontiguousarray(w_ih, dtype=dt), np.zeros(I, dt), 0, I,
            d_x.reshape(T * B, I), 0)
    return d_x, dh, dW_ih, db_ih, dW_hh, db_hh
