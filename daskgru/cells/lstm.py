"""The LSTM cell (torch.nn.LSTM's equations, Keras's LSTM), with its kernels.

Gate order i, f, g, o (torch; Keras calls g "c")::

    p = gi + b_hh + W_hh h                    (gi = b_ih + W_ih x, the input projection)
    i = σ(p_i)   f = σ(p_f)   g = tanh(p_g)   o = σ(p_o)
    c' = f * c + i * g        h' = o * tanh(c')

The state is ``[h, c]`` side by side, ``(B, 2H)``; the output is ``h``. A skipped step keeps
both. Backward, with ``gh`` and ``gc`` the total adjoints of ``h'`` and ``c'``::

    gc = dc + gh o (1 - tanh² c')
    dp = [gc g i(1-i), gc c f(1-f), gc i (1-g²), gh tanh(c') o(1-o)]
    dc_prev = gc f        dh_prev = W_hhᵀ dp        (d_gi = dp)

Step Jacobian for ``method="newton"``, rows and columns ``[h, c]``, with
``A = dc'/dh = diag(c f(1-f)) W_f + diag(g i(1-i)) W_i + diag(i(1-g²)) W_g``::

    dh'/dh = diag(tanh(c') o(1-o)) W_o + diag(o(1-tanh² c')) A     dh'/dc = diag(o(1-tanh² c') f)
    dc'/dh = A                                                     dc'/dc = diag(f)
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

__all__ = ["LSTMCell"]


@build
def _k(cache_key):
    u8, i64, b1 = numba.uint8, numba.int64, numba.boolean

    @numba.njit(**STEP_OPTIONS)
    def step(gs, k, w_t, b, lengths, mask, t, tl, every, has_mask, zero_masked, h, c, out,
             ro, rec, acc, fma):
        """One step from its projected inputs g = gs[k] (B, G); h and c (B, H) updated in
        place, the outputs to rows ro.. of out. Compiled without reference counting and
        called, not inlined (see :mod:`daskgru.kernels.jit`)."""
        g = gs[k]
        B, G = g.shape
        H = G // 4
        call_product(h, int(0), B, w_t, b, int(0), G, acc, int(0), fma)
        for bb in range(B):
            if not every and not counts(t, tl, bb, lengths, mask, has_mask):
                skipped(t, tl, bb, lengths, zero_masked, h, out, ro)
            else:
                for j in range(H):
                    i = sigmoid(g[bb, j] + acc[bb, j])
                    f = sigmoid(g[bb, H + j] + acc[bb, H + j])
                    gg = tanh(g[bb, 2 * H + j] + acc[bb, 2 * H + j])
                    o = sigmoid(g[bb, 3 * H + j] + acc[bb, 3 * H + j])
                    cn = f * c[bb, j] + i * gg
                    hn = o * tanh(cn)
                    c[bb, j] = cn
                    h[bb, j] = hn
                    out[tl, ro + bb, j] = hn
            if rec.shape[0]:
                for j in range(H):
                    rec[tl, bb, j] = h[bb, j]
                    rec[tl, bb, H + j] = c[bb, j]

    @kernel(lambda f: numba.void(f[:, :, ::1], f[:, ::1], f[::1], i64[::1], u8[:, ::1], i64, b1,
                                 b1, f[:, ::1], f[:, :, ::1], f[:, :, ::1], b1))
    def scan(gi, w_t, b, lengths, mask, t0, reverse, zero_masked, state, out, rec, fma):
        """The recurrence over one chunk; state (B, 2H) in and out. ``rec`` (T, B, 2H), or
        empty: the state after every step, for the backward."""
        cache_key  # noqa: B018
        T, B, G = gi.shape
        H = G // 4
        h = np.ascontiguousarray(state[:, :H])
        c = np.ascontiguousarray(state[:, H:])
        acc = np.empty((B, G), dtype=state.dtype)
        has_mask = mask.shape[0] > 0
        every = dense(lengths, mask, t0, T)
        for s in range(T):
            tl = T - 1 - s if reverse else s
            step(gi, tl, w_t, b, lengths, mask, t0 + tl, tl, every, has_mask, zero_masked,
                 h, c, out, 0, rec, acc, fma)
        state[:, :H] = h
        state[:, H:] = c

    @kernel(lambda f: numba.void(f[:, :, ::1], f[:, ::1], f[::1], f[:, ::1], f[::1], i64[::1],
                                 u8[:, ::1], i64, b1, b1, f[:, ::1], f[:, :, ::1], i64,
                                 f[:, :, ::1], b1))
    def scan_inputs(x, w_ih_t, b_ih, w_t, b, lengths, mask, t0, reverse, zero_masked, state,
                    out, ro, gbuf, fma):
        """``scan`` from the inputs x (T, B, I), each block of gbuf's length (Tb, B, G)
        projected just before its steps (as the GRU's: the same bits as ``project`` then
        ``scan``); the outputs go to rows ro.. of out."""
        cache_key  # noqa: B018
        T, B, I = x.shape
        G = w_t.shape[1]
        H = G // 4
        Tb = gbuf.shape[0]
        h = np.ascontiguousarray(state[:, :H])
        c = np.ascontiguousarray(state[:, H:])
        acc = np.empty((B, G), dtype=state.dtype)
        rec = np.empty((0, B, 0), dtype=state.dtype)
        x2 = x.reshape(T * B, I)
        g2 = gbuf.reshape(Tb * B, G)
        has_mask = mask.shape[0] > 0
        every = dense(lengths, mask, t0, T)
        for sb in range((T + Tb - 1) // Tb):
            a, n = project_block(x2, B, T, Tb, sb, reverse, w_ih_t, b_ih, g2, fma)
            for s in range(n):
                k = n - 1 - s if reverse else s
                step(gbuf, k, w_t, b, lengths, mask, t0 + a + k, a + k, every, has_mask,
                     zero_masked, h, c, out, ro, rec, acc, fma)
        state[:, :H] = h
        state[:, H:] = c

    @kernel(lambda f: numba.void(
        f[:, :, ::1],   # gates (T, B, 5H): i, f, g, o, tanh(c') of the recomputed forward
        f[:, ::1],      # w_hh (G, H), torch layout
        i64[::1], u8[:, ::1], i64, b1, b1,  # lengths, mask, t0, reverse, zero_masked
        f[:, :, ::1],   # ck (T, B, H): the cell state each step starts from
        f[:, :, ::1],   # d_out (T, B, H)
        f[:, ::1],      # d_state (B, 2H): adjoint of the end state in, of the start out
        f[:, :, ::1],   # dp (T, B, G) out: adjoint of the pre-activations
        b1,             # fma: the products' numerics
    ))
    def walk(gates, w_hh, lengths, mask, t0, reverse, zero_masked, ck, d_out, d_state, dp,
             fma):
        """The walk back through a chunk carrying the adjoint state (module docstring)."""
        cache_key  # noqa: B018
        T, B, G = dp.shape
        H = G // 4
        one, zero = typed(dp, 1), typed(dp, 0)
        dh = np.ascontiguousarray(d_state[:, :H])
        dc = np.ascontiguousarray(d_state[:, H:])
        back = np.empty((B, H), dtype=dp.dtype)
        no_bias = np.zeros(H, dtype=dp.dtype)
        live = np.empty(B, dtype=np.bool_)
        has_mask = mask.shape[0] > 0
        dp2 = dp.reshape(T * B, G)  # rows of steps, so no view is made per step
        for s in range(T - 1, -1, -1):
            tl = T - 1 - s if reverse else s
            t = t0 + tl
            for bb in range(B):
                live[bb] = counts(t, tl, bb, lengths, mask, has_mask)
                if not live[bb]:
                    skipped_adjoint(t, tl, bb, lengths, zero_masked, d_out, dh)
                    for g in range(G):
                        dp[tl, bb, g] = zero
                    continue
                for j in range(H):
                    gh = dh[bb, j] + d_out[tl, bb, j]
                    i, f = gates[tl, bb, j], gates[tl, bb, H + j]
                    g, o = gates[tl, bb, 2 * H + j], gates[tl, bb, 3 * H + j]
                    tc = gates[tl, bb, 4 * H + j]
                    gc = dc[bb, j] + gh * o * (one - tc * tc)
                    dp[tl, bb, j] = gc * g * i * (one - i)
                    dp[tl, bb, H + j] = gc * ck[tl, bb, j] * f * (one - f)
                    dp[tl, bb, 2 * H + j] = gc * i * (one - g * g)
                    dp[tl, bb, 3 * H + j] = gh * tc * o * (one - o)
                    dc[bb, j] = gc * f
            call_product(dp2, tl * B, B, w_hh, no_bias, int(0), H, back, int(0), fma)
            for bb in range(B):
                if live[bb]:
                    for j in range(H):
                        dh[bb, j] = back[bb, j]
        d_state[:, :H] = dh
        d_state[:, H:] = dc

    @kernel(lambda f: numba.void(f[:, :, ::1], f[:, ::1], f[::1], i64[::1], u8[:, ::1], i64, b1,
                                 f, f[:, ::1], f[:, :, ::1], b1))
    def tangent(gi, w_t, b, lengths, mask, t0, reverse, cutoff, state, M, fma):
        """Scan one chunk (plain loops, to tolerance) and propagate M (B, 2H, 2H)."""
        cache_key  # noqa: B018
        T, B, G = gi.shape
        H = G // 4
        one, zero = typed(state, 1), typed(state, 0)
        acc = np.empty(G, dtype=state.dtype)
        v = np.empty((8, H), dtype=state.dtype)
        ig, fg, gg, og, tc, ca, cb, cc = v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
        J = np.empty((2 * H, 2 * H), dtype=state.dtype)
        Mn = np.empty((2 * H, 2 * H), dtype=state.dtype)
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
                for k in range(H):
                    hk = state[bb, k]
                    for g in range(G):
                        acc[g] = (fma_(hk, w_t[k, g], acc[g]) if fma
                                  else acc[g] + hk * w_t[k, g])
                for j in range(H):
                    ig[j] = sigmoid(gi[tl, bb, j] + acc[j])
                    fg[j] = sigmoid(gi[tl, bb, H + j] + acc[H + j])
                    gg[j] = tanh(gi[tl, bb, 2 * H + j] + acc[2 * H + j])
                    og[j] = sigmoid(gi[tl, bb, 3 * H + j] + acc[3 * H + j])
                    tc[j] = tanh(fg[j] * state[bb, H + j] + ig[j] * gg[j])
                if live[bb]:
                    for j in range(H):
                        ca[j] = state[bb, H + j] * fg[j] * (one - fg[j])
                        cb[j] = gg[j] * ig[j] * (one - ig[j])
                        cc[j] = ig[j] * (one - gg[j] * gg[j])
                        do = tc[j] * og[j] * (one - og[j])
                        dt = og[j] * (one - tc[j] * tc[j])
                        for k in range(H):
                            a = (ca[j] * w_t[k, H + j] + cb[j] * w_t[k, j]
                                 + cc[j] * w_t[k, 2 * H + j])
                            J[H + j, k] = a
                            J[j, k] = do * w_t[k, 3 * H + j] + dt * a
                            J[j, H + k] = zero
                            J[H + j, H + k] = zero
                        J[j, H + j] = dt * fg[j]
                        J[H + j, H + j] = fg[j]
                    live[bb] = propagate_tangent(J, M, bb, Mn, cutoff)
                for j in range(H):
                    state[bb, H + j] = fg[j] * state[bb, H + j] + ig[j] * gg[j]
                    state[bb, j] = og[j] * tanh(state[bb, H + j])

    return SimpleNamespace(scan=scan, scan_inputs=scan_inputs, walk=walk, tangent=tangent,
                           step=step)


def _no_products(rec):
    if rec is not None:
        raise ValueError("the LSTM keeps no record of its gates "
                         "(LSTMCell.records_gates is False)")


class LSTMCell(Cell):
    """An LSTM with torch.nn.LSTM's equations (no peepholes, no projection).

    Examples
    --------
    >>> from daskgru.cells import LSTMCell
    >>> LSTMCell().state_size(8)
    16
    """

    name = "lstm"
    gates = 4
    gate_names = ("i", "f", "g", "o")
    keras_gate_order = (0, 1, 2, 3)  # Keras columns i, f, c, o

    def state_size(self, H):
        return 2 * H

    def split_state(self, state, H):
        return state[..., :H], state[..., H:]

    def clip(self, state, start):
        """h = o tanh(c) stays in [-1, 1] once a step ran, so |h| <= max(1, max|h0|);
        c is unbounded (it may grow by 1 a step)."""
        H = state.shape[-1] // 2
        R = max(1.0, float(np.abs(start[..., :H]).max())) if start.size else 1.0
        out = np.array(state, copy=True)
        np.clip(out[..., :H], -R, R, out=out[..., :H])
        return out

    def _scan(self, w, gi, state, steps, out, rec):
        T, B, _ = gi.shape
        dt = w.w_hh_t.dtype
        st = np.array(state, dtype=dt, order="C", copy=True).reshape(B, -1)
        out = output((T, B, st.shape[1] // 2), dt) if out is None else out
        base.check_rows(out, T, B, 0, st.shape[1] // 2)
        _k.scan(writable(gi), w.w_hh_t, w.b_hh, steps.lengths, steps.mask, steps.t0,
                steps.reverse, steps.zero_masked, st, out, rec, w.fma)
        return out, st

    def scan(self, w: Prepared, gi, state, steps: Steps, out=None, rec=None):
        _no_products(rec)
        B = gi.shape[1]
        return self._scan(w, gi, state, steps, out, np.empty((0, B, 0), w.w_hh_t.dtype))

    def scan_inputs(self, w: Prepared, x, state, steps: Steps, out=None, row=0, rec=None):
        """As the GRU's: each block of steps projected inside the kernel just before it runs
        (blocks of one step where one step's projection exceeds the budget)."""
        _no_products(rec)
        T, B, _ = x.shape
        dt = w.w_hh_t.dtype
        G = w.w_hh_t.shape[1]
        tb = base.block_steps(w, T, B)
        if tb < 1:
            return super().scan_inputs(w, x, state, steps, out, row)
        st = np.array(state, dtype=dt, order="C", copy=True).reshape(B, -1)
        out = output((T, B, st.shape[1] // 2), dt) if out is None else out
        base.check_rows(out, T, B, row, st.shape[1] // 2)
        _k.scan_inputs(writable(x, dt), w.w_ih_t, w.b_ih, w.w_hh_t, w.b_hh, steps.lengths,
                       steps.mask, steps.t0, steps.reverse, steps.zero_masked, st, out, row,
                       scratch(tb, B, G, dt), w.fma)
        return out, st

    def backward(self, w: Prepared, gi, state, steps: Steps, d_out, d_state, out=None,
                 rec=None, threads=None):
        """Recompute the chunk recording its states, the gates of every step at once (tiles
        for the products, NumPy's exp/tanh), then the sequential walk. ``rec`` and
        ``threads`` are not used: the LSTM's forward keeps nothing for it and its walk runs
        on the calling thread."""
        T, B, G = gi.shape
        H = w.hidden_size
        dt = w.w_hh.dtype
        c = writable
        gi = c(gi, dtype=dt)
        s0 = c(state, dtype=dt).reshape(B, 2 * H)
        rec = output((T, B, 2 * H), dt)
        self._scan(w, gi, s0, steps, None, rec)
        # the state each step starts from: the recorded one of the step before it
        prev = np.empty_like(rec)
        if steps.reverse:
            prev[:-1], prev[-1] = rec[1:], s0
        else:
            prev[1:], prev[0] = rec[:-1], s0
        hk = c(prev[..., :H]).reshape(T * B, H)
        pre = output((T * B, G), dt)
        run_product(hk, 0, T * B, w.w_hh_t, w.b_hh, 0, G, pre, 0, w.fma)
        pre += gi.reshape(T * B, G)
        gates = output((T * B, 5 * H), dt)
        with np.errstate(over="ignore"):
            gates[:, :G] = pre
            for a, b in ((0, 2 * H), (3 * H, 4 * H)):
                sigmoid_(gates[:, a:b])
            np.tanh(pre[:, 2 * H:3 * H], out=gates[:, 2 * H:3 * H])
            np.tanh(rec[..., H:].reshape(T * B, H), out=gates[:, 4 * H:])
        d_st = np.array(d_state, dtype=dt, order="C", copy=True).reshape(B, 2 * H)
        dp = output((T, B, G), dt)
        _k.walk(gates.reshape(T, B, 5 * H), w.w_hh, steps.lengths, steps.mask, steps.t0,
                steps.reverse, steps.zero_masked, c(prev[..., H:]), c(d_out, dtype=dt), d_st, dp,
                w.fma)
        dp2 = dp.reshape(T * B, G)
        dW_hh = base.weight_gradient([(dp2, 0, hk, 0, G)], w.fma, threads)
        return dp, d_st, dW_hh, dp2.sum(axis=0)

    def tangent(self, w: Prepared, gi, state, steps: Steps, cutoff=0.0, M=None):
        T, B, _ = gi.shape
        dt = w.w_hh_t.dtype
        st = np.array(state, dtype=dt, order="C", copy=True).reshape(B, -1)
        S = st.shape[1]
        M = (np.repeat(np.eye(S, dtype=dt)[None], B, axis=0) if M is None
             else np.array(M, dtype=dt, order="C", copy=True))
        _k.tangent(writable(gi), w.w_hh_t, w.b_hh, steps.lengths, steps.mask,
                   steps.t0, steps.reverse, dt.type(cutoff), st, M, w.fma)
        return st, M
