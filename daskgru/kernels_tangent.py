"""Numba kernel: the recurrent scan of one chunk together with its Jacobian.

``tangent_scan`` runs the same recurrence as :func:`daskgru.kernels.scan` and propagates the
tangent ``M = d h_t / d h_start`` (B, H, H) alongside the state: per step it forms the step
Jacobian ``J_t = d h_t / d h_{t-1}`` (H x H, O(H^2) from the gates) and multiplies
``M <- J_t M`` (O(H^3)). It is what ``method="newton"`` needs for multiple shooting.

The state follows the op order of ``kernels.scan`` (bias first, products in index order), but
the Newton method only needs it to tolerance, not bit for bit. Plain loops, explicit
float32/float64 signatures, ``nogil``; no fastmath.

A contracting GRU forgets its start state: once every entry of a row's tangent has fallen
below ``cutoff`` the tangent is set to zero and no longer propagated (the state scan goes on
at the cost of a plain scan). The Jacobian is then exact to ``cutoff`` in absolute terms.

Gate algebra (gate order r, z, n; ``w_t`` is W_hh transposed, (H, 3H)):

    reset_after:  a = W_hn h + b_hn, n = tanh(gi_n + r * a)
        J = diag(z) + diag(z(1-z)(h-n)) W_hz
            + diag((1-z)(1-n^2) a r(1-r)) W_hr + diag((1-z)(1-n^2) r) W_hn
    reset_before: n = tanh(gi_n + W_hn (r*h) + b_hn)
        J = diag(z) + diag(z(1-z)(h-n)) W_hz
            + diag((1-z)(1-n^2)) W_hn (diag(r) + diag(h r (1-r)) W_hr)
"""
from __future__ import annotations


import numba
import numpy as np

from .kernels import _OPTS, _sigs, sigmoid, tanh, typed

__all__ = ["tangent_scan", "tangent_kernel"]


@numba.njit(_sigs(lambda f: numba.void(f[:, :, ::1], f[:, ::1], f[::1], numba.int64[::1],
                                       numba.int64, numba.boolean, numba.boolean, f, f[:, ::1],
                                       f[:, :, ::1])), **_OPTS)
def tangent_scan_kernel(gi, w_t, b, lengths, t0, reverse, reset_after, cutoff, h, M):
    """Scan one chunk and propagate the tangent.

    gi (T, B, 3H): projected inputs of global steps t0 .. t0+T-1; h (B, H): start state
    in, end state out; M (B, H, H): tangent in (identity for d h_end / d h_start), out.
    Steps with global index >= lengths[b] are skipped (state and tangent unchanged).
    """
    T, B, G = gi.shape
    H = h.shape[1]
    one, zero = typed(h, 1), typed(h, 0)
    acc = np.empty(G, dtype=h.dtype)
    rh = np.empty(H, dtype=h.dtype)
    r = np.empty(H, dtype=h.dtype)
    z = np.empty(H, dtype=h.dtype)
    n = np.empty(H, dtype=h.dtype)
    cz = np.empty(H, dtype=h.dtype)
    cr = np.empty(H, dtype=h.dtype)
    cn = np.empty(H, dtype=h.dtype)
    pr = np.empty(H, dtype=h.dtype)
    J = np.empty((H, H), dtype=h.dtype)
    Q = np.empty((H, H), dtype=h.dtype)
    Mn = np.empty((H, H), dtype=h.dtype)
    live = np.empty(B, dtype=np.bool_)
    for bb in range(B):
        live[bb] = False
        for i in range(H):
            for j in range(H):
                if M[bb, i, j] != zero:
                    live[bb] = True
    for s in range(T):
        tl = T - 1 - s if reverse else s
        t = t0 + tl
        for bb in range(B):
            if t >= lengths[bb]:
                continue
            # gates, in the op order of kernels.scan
            for g in range(G):
                acc[g] = b[g]
            if reset_after:
                for k in range(H):
                    hk = h[bb, k]
                    for g in range(G):
                        acc[g] += hk * w_t[k, g]
            else:
                for k in range(H):
                    hk = h[bb, k]
                    for g in range(2 * H):
                        acc[g] += hk * w_t[k, g]
                for j in range(H):
                    rh[j] = sigmoid(gi[tl, bb, j] + acc[j]) * h[bb, j]
                for k in range(H):
                    rk = rh[k]
                    for g in range(2 * H, G):
                        acc[g] += rk * w_t[k, g]
            for j in range(H):
                r[j] = sigmoid(gi[tl, bb, j] + acc[j])
                z[j] = sigmoid(gi[tl, bb, H + j] + acc[H + j])
                if reset_after:
                    n[j] = tanh(gi[tl, bb, 2 * H + j] + r[j] * acc[2 * H + j])
                else:
                    n[j] = tanh(gi[tl, bb, 2 * H + j] + acc[2 * H + j])
            if live[bb]:
                # step Jacobian at the old state h (before the update below)
                for j in range(H):
                    dn = (one - z[j]) * (one - n[j] * n[j])
                    cz[j] = z[j] * (one - z[j]) * (h[bb, j] - n[j])
                    if reset_after:
                        cr[j] = dn * acc[2 * H + j] * r[j] * (one - r[j])
                        cn[j] = dn * r[j]
                    else:
                        cn[j] = dn
                        pr[j] = h[bb, j] * r[j] * (one - r[j])
                if reset_after:
                    for j in range(H):
                        for k in range(H):
                            J[j, k] = (cr[j] * w_t[k, j] + cz[j] * w_t[k, H + j]
                                       + cn[j] * w_t[k, 2 * H + j])
                        J[j, j] += z[j]
                else:
                    # Q = W_hn diag(h r (1-r)) W_hr, then J = ... + diag(cn) (W_hn diag(r) + Q)
                    for j in range(H):
                        for k in range(H):
                            Q[j, k] = zero
                        for m in range(H):
                            c = w_t[m, 2 * H + j] * pr[m]
                            for k in range(H):
                                Q[j, k] += c * w_t[k, m]
                    for j in range(H):
                        for k in range(H):
                            J[j, k] = (cz[j] * w_t[k, H + j]
                                       + cn[j] * (w_t[k, 2 * H + j] * r[k] + Q[j, k]))
                        J[j, j] += z[j]
                # M <- J M, and drop the tangent once the start state is forgotten
                big = zero
                for j in range(H):
                    for m in range(H):
                        Mn[j, m] = zero
                    for k in range(H):
                        c = J[j, k]
                        for m in range(H):
                            Mn[j, m] += c * M[bb, k, m]
                    for m in range(H):
                        a = abs(Mn[j, m])
                        if not (a <= big):  # NaN counts as big
                            big = a
                if big < cutoff:
                    live[bb] = False
                    for j in range(H):
                        for m in range(H):
                            M[bb, j, m] = zero
                else:
                    for j in range(H):
                        for m in range(H):
                            M[bb, j, m] = Mn[j, m]
            for j in range(H):
                h[bb, j] = (one - z[j]) * n[j] + z[j] * h[bb, j]


_KERNELS = {np.dtype(np.float32): tangent_scan_kernel, np.dtype(np.float64): tangent_scan_kernel}


def tangent_kernel(dtype):
    """The jitted ``tangent_scan_kernel`` for a float dtype."""
    return _KERNELS[np.dtype(dtype)]


def tangent_scan(gi, w_hh_t, b_hh, h_start, lengths, t0, reverse, reset_after, cutoff=0.0,
                 M=None):
    """Scan one chunk from ``h_start`` (B, H) and return ``(h_end, M)`` with
    ``M[b] = d h_end[b] / d h_start[b]`` (B, H, H).

    ``cutoff``: stop propagating a row's tangent (set it to 0) once all its entries are below
    this; 0 keeps it exact.
    """
    T, B, _ = gi.shape
    H = w_hh_t.shape[0]
    dt = w_hh_t.dtype
    h = np.array(h_start, dtype=dt, order="C", copy=True).reshape(B, H)
    if M is None:
        M = np.repeat(np.eye(H, dtype=dt)[None], B, axis=0)
    else:
        M = np.array(M, dtype=dt, order="C", copy=True)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    _KERNELS[dt](np.ascontiguousarray(gi), w_hh_t, b_hh, lengths, int(t0), bool(reverse),
                 bool(reset_after), dt.type(cutoff), h, M)
    return h, M
