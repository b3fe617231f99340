"""The GRU cell, both forms, with its kernels.

Gate order r, z, n (torch, cuDNN, Keras ``reset_after=True``, Flax)::

    r = σ(gi_r + a_r)        z = σ(gi_z + a_z)        a = b_hh + W_hh h
    n = tanh(gi_n + r * a_n)                  (reset_after=True)
    n = tanh(gi_n + b_hn + W_hn (r * h))      (reset_after=False: Cho et al. v3, the seed)
    h' = (1 - z) * n + z * h

``gi = b_ih + W_ih x`` is the input projection (:func:`daskgru.cells.base.project`). The
state is ``h`` itself (S = H). Every product goes through :func:`daskgru.kernels.product`
(one fixed order of operations per element, so results do not depend on chunking).

Backward, with ``g`` the total adjoint of ``h'`` (output gradient + carried state)::

    dn = g (1 - z) (1 - n²)      dz = g (h - n) z (1 - z)
    reset_after:  dr = dn a_n r (1 - r);  d_gi = [dr, dz, dn];  d_a = [dr, dz, dn r]
                  dh = g z + W_hhᵀ d_a
    Cho form:     d(rh) = W_hnᵀ dn;  dr = d(rh) h r (1 - r);  d_gi = d_a = [dr, dz, dn]
                  dh = g z + d(rh) r + W_hrᵀ dr + W_hzᵀ dz

Step Jacobian (for ``method="newton"``)::

    reset_after:  J = diag(z) + diag(z(1-z)(h-n)) W_hz
                      + diag((1-z)(1-n²) a_n r(1-r)) W_hr + diag((1-z)(1-n²) r) W_hn
    Cho form:     J = diag(z) + diag(z(1-z)(h-n)) W_hz
                      + diag((1-z)(1-n²)) W_hn (diag(r) + diag(h r (1-r)) W_hr)
"""
from __future__ import annotations

from types import SimpleNamespace

import numba
import numpy as np

from ..kernels.jit import (STEP_OPTIONS, build, counts, dense, kernel, project_block,
                           propagate_tangent, sigmoid, skipped_adjoint, skipped, tanh, typed)
from ..kernels.tiles import fma as fma_
from ..kernels.tiles import call_product, run_product
from ..layout import output, writable
from . import base
from .base import Cell, Prepared, Steps, scratch, sigmoid_

__all__ = ["GRUCell"]


def _no_rec(dt):
    """An empty record: the kernels keep no gates."""
    return np.empty((0, 0, 0), dt)


def _check_rec(rec, shape, row=0):
    """``rec`` as the kernels take it: C-contiguous (T, B', 4H) with the chunk's B rows
    from ``row`` on (the kernels do not check their indices)."""
    T, B, W = shape
    if (rec.ndim != 3 or rec.shape[0] != T or rec.shape[2] != W
            or not 0 <= row <= rec.shape[1] - B or not rec.flags.c_contiguous
            or not rec.flags.writeable):
        raise ValueError(f"a record of the gates must be a writable "
                         f"C-contiguous array of shape {tuple(shape)}, got {rec.shape}")
    return rec


@build
def _k(cache_key):
    u8, i64, b1 = numba.uint8, numba.int64, numba.boolean

    @numba.njit(**STEP_OPTIONS)
    def step(gs, k, w_t, b, lengths, mask, t, tl, every, has_mask, zero_masked, reset_after,
             h, out, ro, rec, acc, rh, fma):
        """One step from its projected inputs g = gs[k] (B, G): the recurrent product of all
        rows, then the gates fused with the state update; h (B, H) is updated in place, the
        outputs go to rows ro.. of out; ``rec`` (T, B, 4H), unless empty, keeps the step's
        gates r, z, n and a_n (what the backward reads). Compiled without reference
        counting and called, not inlined (see :mod:`daskgru.kernels.jit`)."""
        g = gs[k]
        B, G = g.shape
        H = h.shape[1]
        one = typed(h, 1)
        if reset_after:
            call_product(h, int(0), B, w_t, b, int(0), G, acc, int(0), fma)
        else:
            # r and z see h; the candidate sees r * h, so it needs r first.
            call_product(h, int(0), B, w_t, b, int(0), 2 * H, acc, int(0), fma)
            for bb in range(B):
                for j in range(H):
                    rh[bb, j] = sigmoid(g[bb, j] + acc[bb, j]) * h[bb, j]
            call_product(rh, int(0), B, w_t, b, 2 * H, G, acc, int(0), fma)
        keep = rec.shape[0] > 0
        for bb in range(B):
            o = ro + bb
            if keep:  # every row's gates r, z, n and a_n, as the backward reads them
                for j in range(H):
                    r = sigmoid(g[bb, j] + acc[bb, j])
                    an = acc[bb, 2 * H + j]
                    rec[tl, o, j] = r
                    rec[tl, o, H + j] = sigmoid(g[bb, H + j] + acc[bb, H + j])
                    if reset_after:
                        rec[tl, o, 2 * H + j] = tanh(g[bb, 2 * H + j] + r * an)
                    else:  # r was applied to h before the product (rh above)
                        rec[tl, o, 2 * H + j] = tanh(g[bb, 2 * H + j] + an)
                    rec[tl, o, 3 * H + j] = an
            if not every and not counts(t, tl, bb, lengths, mask, has_mask):
                skipped(t, tl, bb, lengths, zero_masked, h, out, ro)
                continue
            if keep:  # the update from the gates just kept (the same numbers)
                for j in range(H):
                    z = rec[tl, o, H + j]
                    hn = (one - z) * rec[tl, o, 2 * H + j] + z * h[bb, j]
                    out[tl, o, j] = hn
                    h[bb, j] = hn
                continue
            for j in range(H):
                z = sigmoid(g[bb, H + j] + acc[bb, H + j])
                if reset_after:
                    r = sigmoid(g[bb, j] + acc[bb, j])
                    n = tanh(g[bb, 2 * H + j] + r * acc[bb, 2 * H + j])
                else:  # r was applied to h before the product (rh above)
                    n = tanh(g[bb, 2 * H + j] + acc[bb, 2 * H + j])
                hn = (one - z) * n + z * h[bb, j]
                out[tl, ro + bb, j] = hn
                h[bb, j] = hn

    @kernel(lambda f: numba.void(f[:, :, ::1], f[:, ::1], f[::1], i64[::1], u8[:, ::1], i64, b1,
                                 b1, b1, f[:, ::1], f[:, :, ::1], f[:, :, ::1], b1))
    def scan(gi, w_t, b, lengths, mask, t0, reverse, zero_masked, reset_after, h, out, rec,
             fma):
        """The recurrence over one chunk from its projected inputs gi (T, B, G), step by
        step. h (B, H): start state in, end state out; rec (T, B, 4H) or empty: the
        gates of every step."""
        cache_key  # noqa: B018
        T, B, G = gi.shape
        H = h.shape[1]
        acc = np.empty((B, G), dtype=h.dtype)
        rh = np.empty((B, H), dtype=h.dtype)
        has_mask = mask.shape[0] > 0
        every = dense(lengths, mask, t0, T)
        for s in range(T):
            tl = T - 1 - s if reverse else s
            step(gi, tl, w_t, b, lengths, mask, t0 + tl, tl, every, has_mask, zero_masked,
                 reset_after, h, out, 0, rec, acc, rh, fma)

    @kernel(lambda f: numba.void(f[:, :, ::1], f[:, ::1], f[::1], f[:, ::1], f[::1], i64[::1],
                                 u8[:, ::1], i64, b1, b1, b1, f[:, ::1], f[:, :, ::1], i64,
                                 f[:, :, ::1], f[:, :, ::1], b1))
    def scan_inputs(x, w_ih_t, b_ih, w_t, b, lengths, mask, t0, reverse, zero_masked,
                    reset_after, h, out, ro, rec, gbuf, fma):
        """The recurrence over one chunk from its inputs x (T, B, I): the steps are taken in
        blocks of gbuf's length, each block's input projection computed into gbuf (Tb, B,
        G) just before its steps, so it is read back from cache rather than memory. The
        same products as projecting the whole chunk first (row-invariant), so the same
        bits as ``scan`` after ``project``. The outputs go to rows ro.. of out (several
        threads may share one output, each its rows)."""
        cache_key  # noqa: B018
        T, B, I = x.shape
        G = w_t.shape[1]
        H = h.shape[1]
        Tb = gbuf.shape[0]
        acc = np.empty((B, G), dtype=h.dtype)
        rh = np.empty((B, H), dtype=h.dtype)
        x2 = x.reshape(T * B, I)
        g2 = gbuf.reshape(Tb * B, G)
        has_mask = mask.shape[0] > 0
        every = dense(lengths, mask, t0, T)
        for sb in range((T + Tb - 1) // Tb):
            a, n = project_block(x2, B, T, Tb, sb, reverse, w_ih_t, b_ih, g2, fma)
            for s in range(n):
                k = n - 1 - s if reverse else s
                step(gbuf, k, w_t, b, lengths, mask, t0 + a + k, a + k, every, has_mask,
                     zero_masked, reset_after, h, out, ro, rec, acc, rh, fma)

    @kernel(lambda f: numba.void(f[:, ::1], f[:, ::1], b1, f[:, ::1]))
    def gates(gi, a, reset_after, out):
        """out (N, 4H) = r, z, n and a_n of N rows from their projected inputs gi (N, G)
        and recurrent products a (N, G) (for the Cho form a_n = W_hn (r h) + b_hn): the
        expressions of ``step``, so the forward's gates bit for bit."""
        cache_key  # noqa: B018
        N, G = gi.shape
        H = G // 3
        for i in range(N):
            for j in range(2 * H):
                out[i, j] = sigmoid(gi[i, j] + a[i, j])
            for j in range(H):
                an = a[i, 2 * H + j]
                if reset_after:
                    out[i, 2 * H + j] = tanh(gi[i, 2 * H + j] + out[i, j] * an)
                else:
                    out[i, 2 * H + j] = tanh(gi[i, 2 * H + j] + an)
                out[i, 3 * H + j] = an

    @kernel(lambda f: numba.void(f[:, :, ::1], f[:, ::1], i64[::1], u8[:, ::1], i64, b1,
                                 f[:, :, ::1]))
    def prev_states(out, h_start, lengths, mask, t0, reverse, hk):
        """hk[t] = the state step t starts from, given the forward's outputs (an output at
        a skipped step is not a state: the state is the last valid step's output)."""
        cache_key  # noqa: B018
        T, B, H = out.shape
        for bb in range(B):
            src = -1  # the step whose output is the current state (-1: h_start)
            for s in range(T):
                tl = T - 1 - s if reverse else s
                for j in range(H):
                    hk[tl, bb, j] = out[src, bb, j] if src >= 0 else h_start[bb, j]
                if counts(t0 + tl, tl, bb, lengths, mask, mask.shape[0] > 0):
                    src = tl

    @kernel(lambda f: numba.void(
        f[:, :, ::1],   # gates (T, B, 4H): r, z, n, a_n of the recomputed forward
        f[:, ::1],      # w_hh (G, H), torch layout
        i64[::1], u8[:, ::1], i64, b1, b1, b1,  # lengths, mask, t0, reverse, zero_masked, reset_after
        f[:, :, ::1],   # hk (T, B, H): the state each step starts from
        f[:, :, ::1],   # d_out (T, B, H)
        f[:, ::1],      # dh (B, H): adjoint of the end state in, of the start state out
        f[:, :, ::1],   # d_gi (T, B, G) out
        f[:, :, ::1],   # d_an (T, B, H) out, reset_after only: adjoint of a_n = b_hn + W_hn h
        i64, i64,       # r0, r1: the rows walked
        b1,             # fma: the products' numerics
    ))
    def walk(gates, w_hh, lengths, mask, t0, reverse, zero_masked, reset_after, hk, d_out, dh,
             d_gi, d_an, r0, r1, fma):
        """The walk back through a chunk carrying the adjoint state (module docstring), for
        rows r0 to r1 (threads walk parts of the batch side by side). The adjoint of the
        recurrent products a is d_gi but for a_n with reset_after (dn r, kept in d_an)."""
        cache_key  # noqa: B018
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
        live = np.empty(B, dtype=np.bool_)
        has_mask = mask.shape[0] > 0
        for s in range(T - 1, -1, -1):
            tl = T - 1 - s if reverse else s
            t = t0 + tl
            for bb in range(r0, r1):
                live[bb] = counts(t, tl, bb, lengths, mask, has_mask)
                if not live[bb]:
                    skipped_adjoint(t, tl, bb, lengths, zero_masked, d_out, dh)
                    for g in range(G):
                        d_gi[tl, bb, g] = zero
                    if reset_after:
                        for j in range(H):
                            d_an[tl, bb, j] = zero
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
                    drz[bb, H + j] = dz
                    if reset_after:
                        r = gates[tl, bb, j]
                        dr = dn * gates[tl, bb, 3 * H + j] * r * (one - r)
                        d_gi[tl, bb, j] = dr
                        d_an[tl, bb, j] = dn * r
                        drz[bb, j] = dr
                        dn_[bb, j] = dn * r
                    else:
                        dn_[bb, j] = dn
            # the adjoint through W_hn: of h (reset_after) or of r * h (the Cho form)
            call_product(dn_, r0, r1 - r0, w_n, no_bias, int(0), H, back, r0, fma)
            if not reset_after:
                for bb in range(r0, r1):
                    if not live[bb]:
                        continue
                    for j in range(H):
                        r = gates[tl, bb, j]
                        drh[bb, j] = back[bb, j]
                        dr = back[bb, j] * hk[tl, bb, j] * r * (one - r)
                        d_gi[tl, bb, j] = dr
                        drz[bb, j] = dr
            call_product(drz, r0, r1 - r0, w_rz, no_bias, int(0), H, back_rz, r0, fma)
            for bb in range(r0, r1):
                if not live[bb]:
                    continue  # skipped step: the adjoint passes through
                for j in range(H):
                    v = back[bb, j] if reset_after else drh[bb, j] * gates[tl, bb, j]
                    dh[bb, j] = g_[bb, j] * gates[tl, bb, H + j] + v + back_rz[bb, j]

    @kernel(lambda f: numba.void(f[:, :, ::1], f[:, ::1], f[::1], i64[::1], u8[:, ::1], i64, b1,
                                 b1, f, f[:, ::1], f[:, :, ::1], b1))
    def tangent(gi, w_t, b, lengths, mask, t0, reverse, reset_after, cutoff, h, M, fma):
        """Scan one chunk and propagate the tangent M (B, H, H). The state follows the op
        order of ``scan`` (bias first, products in index order, fused or not as ``fma`` says) in
        plain loops; Newton needs it to tolerance, not bit for bit."""
        cache_key  # noqa: B018
        T, B, G = gi.shape
        H = h.shape[1]
        one, zero = typed(h, 1), typed(h, 0)
        acc = np.empty(G, dtype=h.dtype)
        v = np.empty((8, H), dtype=h.dtype)
        rh, r, z, n, cz, cr, cn, pr = v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
        m3 = np.empty((3, H, H), dtype=h.dtype)
        J, Q, Mn = m3[0], m3[1], m3[2]
        live = np.empty(B, dtype=np.bool_)
        for bb in range(B):
            live[bb] = np.any(M[bb] != zero)
        has_mask = mask.shape[0] > 0
        for s in range(T):
            tl = T - 1 - s if reverse else s
            t = t0 + tl
            for bb in range(B):
                if not counts(t, tl, bb, lengths, mask, has_mask):
                    continue
                for g in range(G):
                    acc[g] = b[g]
                nr = G if reset_after else 2 * H
                for k in range(H):
                    hk = h[bb, k]
                    for g in range(nr):
                        acc[g] = (fma_(hk, w_t[k, g], acc[g]) if fma
                                  else acc[g] + hk * w_t[k, g])
                if not reset_after:
                    for j in range(H):
                        rh[j] = sigmoid(gi[tl, bb, j] + acc[j]) * h[bb, j]
                    for k in range(H):
                        rk = rh[k]
                        for g in range(2 * H, G):
                            acc[g] = (fma_(rk, w_t[k, g], acc[g]) if fma
                                      else acc[g] + rk * w_t[k, g])
                for j in range(H):
                    r[j] = sigmoid(gi[tl, bb, j] + acc[j])
                    z[j] = sigmoid(gi[tl, bb, H + j] + acc[H + j])
                    if reset_after:
                        n[j] = tanh(gi[tl, bb, 2 * H + j] + r[j] * acc[2 * H + j])
                    else:
                        n[j] = tanh(gi[tl, bb, 2 * H + j] + acc[2 * H + j])
                if live[bb]:  # the step Jacobian at the old state h
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
                    else:  # Q = W_hn diag(h r (1-r)) W_hr
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
                    live[bb] = propagate_tangent(J, M, bb, Mn, cutoff)
                for j in range(H):
                    h[bb, j] = (one - z[j]) * n[j] + z[j] * h[bb, j]

    return SimpleNamespace(scan=scan, scan_inputs=scan_inputs, prev_states=prev_states,
                           walk=walk, tangent=tangent, gates=gates, step=step)


class GRUCell(Cell):
    """A GRU; ``reset_after`` chooses the form (see the module docstring).

    Examples
    --------
    >>> from daskgru.cells import GRUCell
    >>> GRUCell(reset_after=False)
    GRUCell(reset_after=False)
    """

    name = "gru"
    gates = 3
    gate_names = ("r", "z", "n")
    keras_gate_order = (1, 0, 2)  # Keras columns z, r, h

    def __init__(self, reset_after=True):
        self.reset_after = bool(reset_after)

    def options(self):
        return {"reset_after": self.reset_after}

    def clip(self, state, start):
        """h' is a convex combination of h and tanh(.): |h| <= max(1, max|h0|) always."""
        R = max(1.0, float(np.abs(start).max())) if start.size else 1.0
        return np.clip(state, -R, R)

    def keras_bias(self, b_ih, b_hh):
        return np.stack([b_ih, b_hh]) if self.reset_after else b_ih + b_hh

    records_gates = True

    def record_width(self, hidden_size) -> int:
        return 4 * hidden_size  # r, z, n and a_n

    def scan(self, w: Prepared, gi, state, steps: Steps, out=None, rec=None):
        T, B, _ = gi.shape
        dt = w.w_hh_t.dtype
        h = np.array(state, dtype=dt, order="C", copy=True).reshape(B, -1)
        out = output((T, B, h.shape[1]), dt) if out is None else out
        base.check_rows(out, T, B, 0, h.shape[1])
        _k.scan(writable(gi), w.w_hh_t, w.b_hh, steps.lengths, steps.mask, steps.t0,
                steps.reverse, steps.zero_masked, self.reset_after, h, out,
                _no_rec(dt) if rec is None else _check_rec(rec, (T, B, 4 * h.shape[1])), w.fma)
        return out, h

    def scan_inputs(self, w: Prepared, x, state, steps: Steps, out=None, row=0, rec=None):
        """The projection computed block by block inside the kernel, just before its steps
        (blocks of at most ``STEP_BLOCK_BYTES`` of projected inputs, so they stay in L2);
        where one step's projection is larger than that, blocks of one step.
        ``rec`` (T, B, 4H): where to keep every step's gates r, z, n and a_n, for
        :meth:`backward` (which then need not compute them again)."""
        T, B, _ = x.shape
        dt = w.w_hh_t.dtype
        G = w.w_hh_t.shape[1]
        tb = base.block_steps(w, T, B)
        if tb < 1:  # an empty chunk
            return super().scan_inputs(w, x, state, steps, out, row, rec)
        h = np.array(state, dtype=dt, order="C", copy=True).reshape(B, -1)
        out = output((T, B, h.shape[1]), dt) if out is None else out
        H = h.shape[1]
        base.check_rows(out, T, B, row, H)
        _k.scan_inputs(writable(x, dt), w.w_ih_t, w.b_ih, w.w_hh_t, w.b_hh, steps.lengths,
                       steps.mask, steps.t0, steps.reverse, steps.zero_masked,
                       self.reset_after, h, out, row,
                       _no_rec(dt) if rec is None else _check_rec(rec, (T, B, 4 * H), row),
                       scratch(tb, B, G, dt), w.fma)
        return out, h

    def backward(self, w: Prepared, gi, state, steps: Steps, d_out, d_state, out=None,
                 rec=None, threads=None):
        """The gates of every step as the forward kept them in ``rec``, else computed at
        once (a kernel with the step's expressions) from products over the whole chunk
        computed again with the tiles (the forward's bits with reset_after; in the Cho form
        W_hn (r h) then sees NumPy's r, within rounding of the kernels'), then the
        sequential walk. Without ``out`` the forward runs here first and keeps its gates.
        ``threads``: over how many threads the walk splits its rows (default:
        the eager path's, :func:`daskgru.eager.get_num_threads`; a dask task passes the
        graph's ``daskgru.split-rows``). ``gi`` may be None where ``out`` and ``rec`` are
        given (nothing is computed from it then)."""
        H = w.hidden_size
        T, B = d_out.shape[:2]
        G = 3 * H
        dt = w.w_hh.dtype
        c = writable
        h0 = c(state, dtype=dt).reshape(B, H)
        if out is None:  # recompute: the one sequential forward pass of the chunk
            rec = output((T, B, 4 * H), dt)
            out, _ = self.scan(w, gi, h0, steps, rec=rec)
        hk = output((T, B, H), dt)
        _k.prev_states(c(out, dtype=dt), h0, steps.lengths, steps.mask, steps.t0,
                       steps.reverse, hk)
        hk2 = hk.reshape(T * B, H)
        if rec is not None:  # the gates as the forward computed them
            gates = _check_rec(rec, (T, B, 4 * H)).reshape(T * B, 4 * H)
        else:
            gi2 = c(gi, dtype=dt).reshape(T * B, G)
            gates = output((T * B, 4 * H), dt)
            a = output((T * B, G), dt)
            run_product(hk2, 0, T * B, w.w_hh_t, w.b_hh, 0, G if self.reset_after else 2 * H,
                    a, 0, w.fma)
            if not self.reset_after:  # the candidate's product sees r * h: r first
                rz = gates[:, :2 * H]
                with np.errstate(over="ignore"):
                    np.add(gi2[:, :2 * H], a[:, :2 * H], out=rz)
                    sigmoid_(rz)
                run_product(rz[:, :H] * hk2, 0, T * B, w.w_hh_t, w.b_hh, 2 * H, G, a, 0, w.fma)
            _k.gates(gi2, a, self.reset_after, gates)  # the kernels' exp: the forward's gates
        rh = None
        if not self.reset_after:  # W_hn's source, r * h: 0 at steps that do not count
            rh = gates[:, :H] * hk2  # (their r saw the input there, which may be NaN)
            if steps.any_skipped(T):
                rh[~steps.valid(T).reshape(T * B)] = 0
        dh = np.array(d_state, dtype=dt, order="C", copy=True).reshape(B, H)
        d_gi = output((T, B, G), dt)
        d_an = output((T, B, H), dt) if self.reset_after else _no_rec(dt)
        from ..eager import batch_parts, in_parts

        gates3, d_out = gates.reshape(T, B, 4 * H), c(d_out, dtype=dt)

        def walk(rows):  # the rows are independent: parts of the batch walk side by side
            _k.walk(gates3, w.w_hh, steps.lengths, steps.mask, steps.t0, steps.reverse,
                    steps.zero_masked, self.reset_after, hk, d_out, dh, d_gi, d_an,
                    rows.start, rows.stop, w.fma)

        in_parts(walk, batch_parts(B, T * G * H, threads))
        dg2 = d_gi.reshape(T * B, G)
        if self.reset_after:  # the adjoint of a: d_gi's for r and z, dn r for a_n
            dn2 = d_an.reshape(T * B, H)
            terms = [(dg2, 0, hk2, 0, 2 * H), (dn2, 0, hk2, 2 * H, G)]
            db_hh = np.concatenate([dg2[:, :2 * H].sum(axis=0), dn2.sum(axis=0)])
        else:  # d_gi's for all three; the candidate's product saw r * h
            terms = [(dg2, 0, hk2, 0, 2 * H), (dg2, 2 * H, rh, 2 * H, G)]
            db_hh = dg2.sum(axis=0)
        dW_hh = base.weight_gradient(terms, w.fma, threads)
        return d_gi, dh, dW_hh, db_hh

    def tangent(self, w: Prepared, gi, state, steps: Steps, cutoff=0.0, M=None):
        T, B, _ = gi.shape
        dt = w.w_hh_t.dtype
        h = np.array(state, dtype=dt, order="C", copy=True).reshape(B, -1)
        H = h.shape[1]
        M = (np.repeat(np.eye(H, dtype=dt)[None], B, axis=0) if M is None
             else np.array(M, dtype=dt, order="C", copy=True))
        _k.tangent(writable(gi), w.w_hh_t, w.b_hh, steps.lengths, steps.mask,
                   steps.t0, steps.reverse, self.reset_after, dt.type(cutoff), h, M, w.fma)
        return h, M
