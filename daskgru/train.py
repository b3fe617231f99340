"""Training: gradients by backpropagation through time over chunks, Adam, GRURegressor.

:func:`gru_backward` is the vector-Jacobian product of :func:`daskgru.gru`. Eager on NumPy;
on dask arrays it builds the reverse chain of the design: per batch chunk, a forward pass over
the time chunks keeps only the boundary states (a layer's chunk outputs feed only the next
layer's forward task of the same chunk and are released); then per layer (top to bottom),
direction and time chunk a backward task recomputes its chunk's layer input (layers below it
on that chunk, from their stored start states) and its own forward from its stored start
state (memory O(chunk), O(layer * chunk) extra compute), consumes the adjoint boundary state
of chunk k+1 (k-1 for the reverse direction) and hands its own on.
Weight gradients are summed over time and batch chunks with a tree reduction.
"""
from __future__ import annotations

from operator import getitem

import numpy as np

from . import kernels
from .core import (EAGER_BLOCK, PreparedWeights, check_lengths, is_dask, layer_input,
                   state_block, validate)
from .kernels_backward import chunk_backward
from .params import GRUParams, GRUWeights
from .scan import ChunkedInputs

__all__ = ["gru_backward", "GRURegressor", "Adam"]


def _prepare(pp: GRUParams) -> PreparedWeights:
    """Per layer and direction ``(w_ih, w_ih_t, b_ih, w_hh, w_hh_t, b_hh)``, contiguous."""
    c = np.ascontiguousarray
    return PreparedWeights(tuple(
        tuple((c(w.w_ih), c(w.w_ih.T), c(w.b_ih), c(w.w_hh), c(w.w_hh.T), c(w.b_hh))
              for w in layer)
        for layer in pp.weights
    ))


def _check_grad_args(call, d_output, d_h_n):
    """Shapes of d_output and d_h_n against a validated call (before any work)."""
    pp = call.params
    LD, H, DH = pp.num_layers * pp.num_directions, pp.hidden_size, pp.output_size
    if call.unbatched:
        want = (call.T, DH)
    elif call.batch_first:
        want = (call.B, call.T, DH)
    else:
        want = (call.T, call.B, DH)
    shape = getattr(d_output, "shape", None)
    if shape is None or tuple(shape) != want:
        raise ValueError(
            f"d_output must have the shape of the GRU output {want}, got "
            f"{None if shape is None else tuple(shape)}"
        )
    if np.dtype(d_output.dtype).kind != "f":
        raise TypeError(f"d_output must hold floating-point numbers, got dtype {d_output.dtype}")
    if d_h_n is not None:
        hs = getattr(d_h_n, "shape", None)
        want = (LD, H) if call.unbatched else (LD, call.B, H)
        if hs is None or tuple(hs) != want:
            raise ValueError(
                f"d_h_n must have the shape of h_n {want}, got {None if hs is None else tuple(hs)}"
            )
        if np.dtype(d_h_n.dtype).kind != "f":
            raise TypeError(f"d_h_n must hold floating-point numbers, got dtype {d_h_n.dtype}")


def _grads_params(acc, pp: GRUParams) -> GRUParams:
    """A GRUParams from accumulated ``acc[l][d] = [dW_ih, db_ih, dW_hh, db_hh]``."""
    weights = []
    for layer in acc:
        ws = []
        for dWi, dbi, dWh, dbh in layer:
            if not pp.bias:  # no bias parameters: their "gradient" is fixed at zero
                dbi, dbh = np.zeros_like(dbi), np.zeros_like(dbh)
            ws.append(GRUWeights(dWi, dWh, dbi, dbh))
        weights.append(ws)
    return GRUParams(weights, reset_after=pp.reset_after, bias=pp.bias, dtype=pp.dtype)


# ----------------------------------------------------------------------------- eager
class _Tape:
    """What the eager forward keeps for the backward: each layer's input and the start state
    of every EAGER_BLOCK-step block (the gates are recomputed block by block)."""

    __slots__ = ("inputs", "starts", "blocks", "output", "h_n", "lengths")


def _forward_eager(x, pp, h0, lengths, weights):
    """Forward over canonical NumPy x (T, B, I); same kernels and blocks as core.gru_numpy."""
    T, B, _ = x.shape
    L, D, H = pp.num_layers, pp.num_directions, pp.hidden_size
    dt = pp.dtype
    blocks = [(t0, min(t0 + EAGER_BLOCK, T)) for t0 in range(0, T, EAGER_BLOCK)]
    tape = _Tape()
    tape.inputs, tape.starts, tape.blocks, tape.lengths = [], [], blocks, lengths
    h_n = np.empty((L * D, B, H), dt)
    layer_in = np.ascontiguousarray(x, dtype=dt)
    for l in range(L):
        tape.inputs.append(layer_in)
        outs, starts_l = [], []
        for d in range(D):
            _, w_ih_t, b_ih, _, w_hh_t, b_hh = weights[l][d]
            out = np.empty((T, B, H), dt)
            h = h0[l * D + d]
            starts = [None] * len(blocks)
            for i in (reversed(range(len(blocks))) if d else range(len(blocks))):
                t0, t1 = blocks[i]
                starts[i] = h
                gi = kernels.project(layer_in[t0:t1], w_ih_t, b_ih)
                out[t0:t1], h = kernels.scan(gi, w_hh_t, b_hh, h, lengths, t0, d == 1,
                                             pp.reset_after)
            h_n[l * D + d] = h
            outs.append(out)
            starts_l.append(starts)
        tape.starts.append(starts_l)
        layer_in = layer_input(outs)
    tape.output, tape.h_n = layer_in, h_n
    return tape


def _backward_eager(tape, pp, weights, d_output, d_h_n):
    """Backward through a tape; returns (acc grads, d_x (T, B, I), d_h0 (L*D, B, H))."""
    L, D, H = pp.num_layers, pp.num_directions, pp.hidden_size
    dt = pp.dtype
    T, B = d_output.shape[:2]
    d_h0 = np.empty((L * D, B, H), dt)
    acc = [[None] * D for _ in range(L)]
    d_layer_out = d_output
    for l in range(L - 1, -1, -1):
        layer_in = tape.inputs[l]
        d_in = np.zeros(layer_in.shape, dt)
        for d in range(D):
            w_ih, w_ih_t, b_ih, w_hh, w_hh_t, b_hh = weights[l][d]
            d_out = np.ascontiguousarray(d_layer_out[..., d * H:(d + 1) * H], dtype=dt)
            dh = d_h_n[l * D + d]
            sums = None
            order = range(len(tape.blocks)) if d else reversed(range(len(tape.blocks)))
            # this layer's outputs are held anyway (the next layer's input): no recompute
            outs = tape.inputs[l + 1] if l + 1 < L else tape.output
            for i in order:
                t0, t1 = tape.blocks[i]
                d_x, dh, *g = chunk_backward(
                    layer_in[t0:t1], w_ih, w_ih_t, b_ih, w_hh, w_hh_t, b_hh,
                    tape.starts[l][d][i], tape.lengths, t0, d == 1, pp.reset_after,
                    d_out[t0:t1], dh, out=outs[t0:t1, :, d * H:(d + 1) * H])
                d_in[t0:t1] += d_x
                sums = g if sums is None else [a + b for a, b in zip(sums, g)]
            acc[l][d] = sums
            d_h0[l * D + d] = dh
        d_layer_out = d_in
    return acc, d_layer_out, d_h0


def _canonical(a, unbatched, batch_first, dt):
    a = np.asarray(a, dtype=dt)
    if unbatched:
        return a[:, None, :]
    return a.transpose(1, 0, 2) if batch_first else a


def gru_backward(x, p, d_output, *, d_h_n=None, h0=None, lengths=None, batch_first=False):
    """Gradients of a :func:`daskgru.gru` call (the vector-Jacobian product).

    Parameters
    ----------
    x, p, h0, lengths, batch_first
        As for :func:`daskgru.gru`.
    d_output : array shaped like ``gru``'s output
        Gradient of the loss with respect to the output ((T, B, D*H), (B, T, D*H) with
        ``batch_first``, or (T, D*H) unbatched).
    d_h_n : array shaped like ``h_n``, optional
        Gradient with respect to the final states; zeros by default.

    Returns
    -------
    grads : GRUParams
        Gradients of every weight and bias, in the layout of ``p`` (so
        ``grads.to_torch_state_dict()`` carries torch's parameter names). With dask inputs, a
        ``dask.delayed`` object that computes to the GRUParams.
    d_x : array shaped like x
        Gradient with respect to the input (dask in, dask out with x's chunks).
    d_h0 : array (num_layers * num_directions, B, H)
        Gradient with respect to the start states (whether or not h0 was given).

    Notes
    -----
    Results equal the eager ones to rounding for any chunking (the sums over chunks run in
    a different order); the forward states they are built on are bit-identical.

    Examples
    --------
    >>> import numpy as np, daskgru as dg
    >>> p = dg.GRUParams.random(3, 8, seed=0, dtype="float64")
    >>> x = np.random.default_rng(0).normal(size=(20, 2, 3))
    >>> out, h_n = dg.gru(x, p)
    >>> grads, d_x, d_h0 = dg.gru_backward(x, p, np.ones_like(out))
    >>> grads.weights[0][0].w_hh.shape, d_x.shape, d_h0.shape
    ((24, 8), (20, 2, 3), (1, 2, 8))
    """
    call = validate(x, p, h0=h0, lengths=lengths, batch_first=batch_first)
    _check_grad_args(call, d_output, d_h_n)
    if any(is_dask(a) for a in (x, d_output, d_h_n, h0, lengths)):
        return _gru_backward_dask(call, x, d_output, d_h_n, h0, lengths)
    pp, dt, T, B = call.params, call.dtype, call.T, call.B
    L, D, H = pp.num_layers, pp.num_directions, pp.hidden_size
    xc = _canonical(x, call.unbatched, batch_first, dt)
    dout = np.ascontiguousarray(_canonical(d_output, call.unbatched, batch_first, dt))
    if h0 is None:
        h0 = np.zeros((L * D, B, H), dt)
    else:
        h0 = np.asarray(h0, dtype=dt)
        h0 = h0[:, None, :] if call.unbatched else h0
    if d_h_n is None:
        d_h_n = np.zeros((L * D, B, H), dt)
    else:
        d_h_n = np.asarray(d_h_n, dtype=dt)
        d_h_n = d_h_n[:, None, :] if call.unbatched else d_h_n
    lengths = np.full(B, T, np.int64) if lengths is None else check_lengths(lengths, T)
    weights = _prepare(pp)
    tape = _forward_eager(xc, pp, h0, lengths, weights)
    acc, d_x, d_h0 = _backward_eager(tape, pp, weights, dout, d_h_n)
    grads = _grads_params(acc, pp)
    if call.unbatched:
        return grads, d_x[:, 0], d_h0[:, 0]
    if batch_first:
        d_x = d_x.transpose(1, 0, 2)
    return grads, d_x, d_h0


# ----------------------------------------------------------------------------- dask tasks
def _fwd_task(weights, l, d, reset_after, parts, h_start, lengths, t0, T):
    _, w_ih_t, b_ih, _, w_hh_t, b_hh = weights[l][d]
    x = layer_input(parts)
    B = x.shape[1]
    if h_start is None:
        h_start = np.zeros((B, w_hh_t.shape[0]), w_hh_t.dtype)
    lengths = np.full(B, T, np.int64) if lengths is None else check_lengths(lengths, T)
    gi = kernels.project(x, w_ih_t, b_ih)
    return kernels.scan(gi, w_hh_t, b_hh, h_start, lengths, t0, d == 1, reset_after)


def _chunk_input(weights, l, reset_after, x0, starts, lengths, t0, T):
    """Layer l's input on one time chunk, recomputed from the chunk's layer-0 input ``x0`` by
    running layers 0..l-1 from their stored start states ``starts[m][d]`` (checkpointing:
    the same kernels as the forward tasks, so the values are bit-identical to theirs)."""
    parts = [x0]
    for m in range(l):
        parts = [_fwd_task(weights, m, dd, reset_after, parts, starts[m][dd], lengths, t0, T)[0]
                 for dd in range(len(weights[m]))]
    return layer_input(parts)


def _bwd_task(weights, l, d, reset_after, x0, starts, h_start, lengths, t0, T, d_srcs,
              d_h_end):
    """Backward of chunk (l, d, ·, k). ``x0``: the chunk of x; ``starts[m][dd]``: the start
    states of the lower layers on this chunk, from which the layer input is recomputed (no
    lower layer's outputs are kept from the forward pass). ``d_srcs``: arrays whose sum holds
    this layer's output gradient (the d_output block, or the d_x of both directions of the
    layer above)."""
    w_ih, w_ih_t, b_ih, w_hh, w_hh_t, b_hh = weights[l][d]
    x = _chunk_input(weights, l, reset_after, x0, starts, lengths, t0, T)
    Tc, B = x.shape[:2]
    H, dt = w_hh.shape[1], w_hh.dtype
    if h_start is None:
        h_start = np.zeros((B, H), dt)
    if d_h_end is None:
        d_h_end = np.zeros((B, H), dt)
    lengths = np.full(B, T, np.int64) if lengths is None else check_lengths(lengths, T)
    dsrc = d_srcs[0] if len(d_srcs) == 1 else sum(d_srcs[1:], d_srcs[0])
    d_out = np.ascontiguousarray(dsrc[..., d * H:(d + 1) * H], dtype=dt)
    d_x, dh, *g = chunk_backward(x, w_ih, w_ih_t, b_ih, w_hh, w_hh_t, b_hh, h_start, lengths,
                                 t0, d == 1, reset_after, d_out, d_h_end)
    return d_x, dh, tuple(g)


def _sum_grads(*parts):
    out = list(parts[0])
    for p in parts[1:]:
        out = [a + b for a, b in zip(out, p)]
    return tuple(out)


def _sum_arrays(*parts):
    return parts[0] if len(parts) == 1 else sum(parts[1:], parts[0])


def _make_grads(roots, D, reset_after, bias, dtype):
    acc = [list(roots[i:i + D]) for i in range(0, len(roots), D)]
    weights = []
    for layer in acc:
        ws = []
        for dWi, dbi, dWh, dbh in layer:
            if not bias:
                dbi, dbh = np.zeros_like(dbi), np.zeros_like(dbh)
            ws.append(GRUWeights(dWi, dWh, dbi, dbh))
        weights.append(ws)
    return GRUParams(weights, reset_after=reset_after, bias=bias, dtype=dtype)


def _tree(graph, name, leaves, fanin=8):
    """Sum ``leaves`` (keys) with a tree of ``_sum_grads`` tasks; returns the root key."""
    level = 0
    while len(leaves) > 1:
        nxt = []
        for i in range(0, len(leaves), fanin):
            key = (name, level, i // fanin)
            graph[key] = (_sum_grads, *leaves[i:i + fanin])
            nxt.append(key)
        leaves, level = nxt, level + 1
    return leaves[0]


def _gru_backward_dask(call, x, d_output, d_h_n, h0, lengths):
    import dask.array as da
    from dask.base import tokenize
    from dask.delayed import Delayed

    pp, dt, T = call.params, call.dtype, call.T
    L, D, H, LD = pp.num_layers, pp.num_directions, pp.hidden_size, pp.num_layers * pp.num_directions

    inp = ChunkedInputs(x, call)
    x, tchunks, bchunks, t_starts = inp.x, inp.tchunks, inp.bchunks, inp.t_starts
    nt, nb = len(tchunks), len(bchunks)
    dout = inp.canon(da.asarray(d_output)).astype(dt).rechunk((tchunks, bchunks, (D * H,)))
    inp.collections.append(dout)
    collections = inp.collections
    h0_key = inp.per_state(h0, H)
    dhn_key = inp.per_state(d_h_n, H)
    len_key = inp.per_batch(lengths)

    tok = tokenize("gru-backward", pp, *inp.token_parts(h0, lengths, d_h_n))
    wname = f"gru-bwd-weights-{tok}"
    fscan, fstate, fout = f"gru-bwd-fwdscan-{tok}", f"gru-bwd-fwdstate-{tok}", f"gru-bwd-fwdout-{tok}"
    bscan, bdx, bdh, bgw = (f"gru-bwd-scan-{tok}", f"gru-bwd-dx-{tok}", f"gru-bwd-dh-{tok}",
                            f"gru-bwd-wgrad-{tok}")
    tree, dxname, dh0name, gname = (f"gru-bwd-reduce-{tok}", f"gru-bwd-dinput-{tok}",
                                    f"gru-bwd-dh0-{tok}", f"gru-bwd-grads-{tok}")
    body = {wname: _prepare(pp)}
    wleaves = {(l, d): [] for l in range(L) for d in range(D)}

    def start_key(l, d, j, k):
        """The stored state layer l, direction d starts chunk k from (the boundary state of
        chunk k-1, or of chunk k+1 for the reverse direction; h0 at the sequence's end)."""
        kprev = k + 1 if d else k - 1
        return (fstate, l, d, j, kprev) if 0 <= kprev < nt else h0_key(l * D + d, j)

    for j in range(nb):
        # forward: boundary states; a layer's chunk outputs only feed the next layer's
        # forward task of the same chunk (the backward recomputes them), so the scheduler
        # can release them at once
        for l in range(L):
            for d in range(D):
                for k in (range(nt - 1, -1, -1) if d else range(nt)):
                    parts = ([(x.name, k, j, 0)] if l == 0
                             else [(fout, l - 1, dd, j, k) for dd in range(D)])
                    body[(fscan, l, d, j, k)] = (_fwd_task, wname, l, d, pp.reset_after, parts,
                                                 start_key(l, d, j, k), len_key(j),
                                                 t_starts[k], T)
                    body[(fstate, l, d, j, k)] = (getitem, (fscan, l, d, j, k), 1)
                    if l < L - 1:
                        body[(fout, l, d, j, k)] = (getitem, (fscan, l, d, j, k), 0)
        # backward: top layer down, each direction's chain in reverse; each task recomputes
        # its layer input from x and the lower layers' stored start states on its chunk
        for l in range(L - 1, -1, -1):
            for d in range(D):
                adj = dhn_key(l * D + d, j)
                for k in (range(nt) if d else range(nt - 1, -1, -1)):
                    starts = [[start_key(m, dd, j, k) for dd in range(D)] for m in range(l)]
                    d_srcs = ([(dout.name, k, j, 0)] if l == L - 1
                              else [(bdx, l + 1, dd, j, k) for dd in range(D)])
                    body[(bscan, l, d, j, k)] = (_bwd_task, wname, l, d, pp.reset_after,
                                                 (x.name, k, j, 0), starts,
                                                 start_key(l, d, j, k), len_key(j),
                                                 t_starts[k], T, d_srcs, adj)
                    body[(bdx, l, d, j, k)] = (getitem, (bscan, l, d, j, k), 0)
                    body[(bdh, l, d, j, k)] = (getitem, (bscan, l, d, j, k), 1)
                    body[(bgw, l, d, j, k)] = (getitem, (bscan, l, d, j, k), 2)
                    wleaves[(l, d)].append((bgw, l, d, j, k))
                    adj = (bdh, l, d, j, k)
    roots = [_tree(body, tree + f"-l{l}d{d}", wleaves[(l, d)]) for l in range(L) for d in range(D)]
    g_dx = {}
    for j in range(nb):
        for k in range(nt):
            g_dx[(dxname, k, j, 0)] = (_sum_arrays, *[(bdx, 0, dd, j, k) for dd in range(D)])
    g_dh0 = {}
    for l in range(L):
        for d in range(D):
            for j in range(nb):
                g_dh0[(dh0name, l * D + d, j, 0)] = (state_block, (bdh, l, d, j, 0 if not d else nt - 1))
    g_grads = {gname: (_make_grads, list(roots), D, pp.reset_after, pp.bias, str(dt))}
    bname = f"gru-bwd-{tok}"
    hlg = inp.graph({bname: body, dxname: g_dx, dh0name: g_dh0, gname: g_grads},
                    {bname: {c.name for c in collections}, dxname: {bname}, dh0name: {bname},
                     gname: {bname}})
    d_x, d_h0 = inp.arrays(hlg, (dxname, x.shape[2]), (dh0name, LD, H))
    return Delayed(gname, hlg, layer=gname), d_x, d_h0


# ----------------------------------------------------------------------------- optimiser
class Adam:
    """Adam (Kingma & Ba 2015) over a flat list of NumPy arrays, updated in place."""

    def __init__(self, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        self.learning_rate, self.beta1, self.beta2, self.eps = learning_rate, beta1, beta2, eps
        self.t = 0
        self.m = self.v = None

    def step(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (self.learning_rate / c1) * m / (np.sqrt(v / c2) + self.eps)
        return params


# ----------------------------------------------------------------------------- estimator
class NotFittedError(ValueError, AttributeError):
    """The estimator is used before ``fit`` (same bases as scikit-learn's)."""


def _flat_to_params(flat, L, D, reset_after, dtype):
    ws = [[GRUWeights(*flat[4 * (l * D + d): 4 * (l * D + d) + 4]) for d in range(D)]
          for l in range(L)]
    return GRUParams(ws, reset_after=reset_after, bias=True, dtype=dtype)


def _params_to_flat(p):
    return [np.array(a) for layer in p.weights for w in layer for a in w]


class _Bundle:
    """One opaque object for scatter (a list would be scattered element by element)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __getstate__(self):
        return self.value

    def __setstate__(self, state):
        self.value = state


def _window_grad(bundle, X, Y, idx, t0, t1, h0):
    """Loss and gradient sums of the readout-on-GRU model on sequences ``idx``, steps t0:t1.

    ``bundle.value = (flat GRU arrays, coef, intercept, L, D, reset_after)``. Returns
    ``(loss_sum, count, flat grads (GRU arrays..., coef, intercept), h_n)`` -- sums, not
    means, so that results of batch chunks add up.
    """
    if isinstance(bundle, _Bundle):
        bundle = bundle.value
    flat, coef, intercept, L, D, reset_after = bundle
    pp = _flat_to_params(flat, L, D, reset_after, coef.dtype)
    dt = pp.dtype
    x = np.ascontiguousarray(X[idx, t0:t1].transpose(1, 0, 2), dtype=dt)
    y = np.asarray(Y[idx, t0:t1], dtype=dt).transpose(1, 0, 2)
    T, B = x.shape[:2]
    H = pp.hidden_size
    if h0 is None:
        h0 = np.zeros((L * D, B, H), dt)
    weights = _prepare(pp)
    tape = _forward_eager(x, pp, h0, np.full(B, T, np.int64), weights)
    out = tape.output
    res = out @ coef.T + intercept - y
    loss = float(np.sum(res * res))
    d_y = 2 * res
    d_coef = np.tensordot(d_y, out, axes=([0, 1], [0, 1]))
    d_int = d_y.sum(axis=(0, 1))
    d_out = np.ascontiguousarray(d_y @ coef)
    acc, _, _ = _backward_eager(tape, pp, weights, d_out, np.zeros((L * D, B, H), dt))
    grads = [a for layer in acc for g in layer for a in (g[0], g[2], g[1], g[3])]
    return loss, res.size, grads + [d_coef, d_int], tape.h_n


def _active_client():
    try:
        from distributed.client import _get_global_client
    except ImportError:  # distributed is optional
        return None
    try:
        return _get_global_client()
    except Exception:
        return None


def _as_array(a, name):
    """NumPy or dask data of an array, xarray DataArray or array-like (no compute for dask)."""
    if a is None:
        raise ValueError(f"{name} must be given")
    if hasattr(a, "dims") and hasattr(a, "data") and hasattr(a, "coords"):
        a = a.data
    if not hasattr(a, "shape"):
        a = np.asarray(a)
    return a


class GRURegressor:
    """Sequence-to-sequence regression: a stacked GRU with a linear readout, trained with
    MSE loss and Adam. Follows scikit-learn's estimator conventions (without needing it).

    Parameters
    ----------
    hidden_size : int
    num_layers : int
    learning_rate : float
        Adam step size.
    max_epochs : int
    batch_size : int
        Sequences per step.
    tbptt : int or None
        Truncated BPTT: take a step every ``tbptt`` time steps, carrying the (detached)
        hidden state into the next window; None backpropagates through whole sequences.
    validation_fraction : float
        Share of the sequences held out for early stopping (0 or None: stop on the
        training loss instead).
    patience : int
        Epochs without improvement of the monitored loss before stopping; the best epoch's
        weights are kept.
    random_state : int or None
    dtype : {"float32", "float64"}
    verbose : bool
        Show a tqdm progress bar with the loss.

    Attributes
    ----------
    params_ : GRUParams
        The trained GRU (``params_.to_torch_state_dict()`` loads into ``torch.nn.GRU``).
    coef_ : array (n_targets, hidden_size), or (hidden_size,) when y was (n, T)
    intercept_ : array (n_targets,), or a scalar when y was (n, T)
    history_ : dict
        ``"loss"`` (training MSE per epoch) and ``"val_loss"``.
    n_epochs_, best_epoch_, n_features_in_

    Data: X is (n_sequences, T, n_features) and y (n_sequences, T, n_targets) or
    (n_sequences, T), as NumPy, dask or xarray DataArray (dims in that order). ``fit`` loads
    the training data into memory; ``predict``/``transform`` stay lazy on dask input. With an
    active ``dask.distributed`` Client, the gradient of every step is computed on its workers:
    the training data are scattered once, the weights once per step, and each worker
    computes the gradient sums of one batch chunk, which are added up here.

    Examples
    --------
    >>> import numpy as np, daskgru as dg
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(64, 20, 1))
    >>> y = (X[:, :, 0] + np.roll(X[:, :, 0], 1, axis=1)) / 2
    >>> model = dg.GRURegressor(hidden_size=8, max_epochs=3, random_state=0).fit(X, y)
    >>> model.predict(X).shape
    (64, 20)
    """

    def __init__(self, hidden_size=32, num_layers=1, learning_rate=0.01, max_epochs=100,
                 batch_size=32, tbptt=None, validation_fraction=0.1, patience=10,
                 random_state=None, dtype="float32", verbose=False):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.learning_rate = learning_rate
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.tbptt = tbptt
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state
        self.dtype = dtype
        self.verbose = verbose

    _estimator_type = "regressor"

    # -------------------------------------------------------------- sklearn protocol
    @classmethod
    def _get_param_names(cls):
        import inspect

        sig = inspect.signature(cls.__init__)
        return sorted(n for n in sig.parameters if n != "self")

    def get_params(self, deep=True):
        return {n: getattr(self, n) for n in self._get_param_names()}

    def set_params(self, **params):
        valid = self._get_param_names()
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"invalid parameter {k!r} for GRURegressor; valid: {valid}")
            setattr(self, k, v)
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"GRURegressor({args})"

    def _check_hyper(self):
        for name in ("hidden_size", "num_layers", "max_epochs", "batch_size", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.tbptt is not None and (int(self.tbptt) != self.tbptt or self.tbptt < 1):
            raise ValueError(f"tbptt must be a positive integer or None, got {self.tbptt!r}")
        if not (self.learning_rate > 0):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        vf = self.validation_fraction or 0.0
        if not 0.0 <= vf < 1.0:
            raise ValueError(f"validation_fraction must lie in [0, 1), got {vf!r}")
        from .params import _float_dtype

        return _float_dtype(self.dtype)

    def _check_X(self, X, fitted=True):
        X = _as_array(X, "X")
        if X.ndim != 3:
            raise ValueError(f"X must be 3-D (n_sequences, T, n_features), got shape {X.shape}")
        if fitted and X.shape[2] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[2]} features (last axis), the model was fitted with "
                f"{self.n_features_in_}")
        return X

    def _check_fitted(self):
        if not hasattr(self, "params_"):
            raise NotFittedError("this GRURegressor is not fitted yet; call fit first")

    # -------------------------------------------------------------- fit
    def fit(self, X, y):
        """Train on X (n, T, F) and y (n, T, n_targets) or (n, T); returns self."""
        dt = self._check_hyper()
        X = self._check_X(X, fitted=False)
        y = _as_array(y, "y")
        if y.ndim not in (2, 3) or tuple(y.shape[:2]) != tuple(X.shape[:2]):
            raise ValueError(
                f"y must have shape (n_sequences, T) or (n_sequences, T, n_targets) with "
                f"n_sequences, T = {tuple(X.shape[:2])} as in X, got {tuple(y.shape)}")
        X = np.asarray(X, dtype=dt)  # loads dask data into memory
        y = np.asarray(y, dtype=dt)
        self._y_1d = y.ndim == 2
        Y = y[..., None] if self._y_1d else y
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(Y))):
            raise ValueError("X and y must be finite (no NaN or infinity)")
        n, T, F = X.shape
        nt = Y.shape[2]
        rng = np.random.default_rng(self.random_state)
        n_val = int(round((self.validation_fraction or 0.0) * n))
        n_val = n_val if 0 < n_val < n else 0
        order = rng.permutation(n)
        val_idx, tr_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        H, L, D = int(self.hidden_size), int(self.num_layers), 1
        p = GRUParams.random(F, H, num_layers=L, dtype=dt, seed=int(rng.integers(2**31)))
        k = 1.0 / np.sqrt(H)
        coef = rng.uniform(-k, k, size=(nt, H)).astype(dt)
        intercept = Y[tr_idx].mean(axis=(0, 1)).astype(dt)
        flat = _params_to_flat(p) + [coef, intercept]
        opt = Adam(self.learning_rate)
        client = _active_client()
        if client is not None:
            nw = max(1, len(client.scheduler_info().get("workers", {})))
            Xf, Yf = client.scatter([X, Y], broadcast=True)
        else:
            nw, Xf, Yf = 1, X, Y
        win = T if self.tbptt is None else int(self.tbptt)
        windows = [(t0, min(t0 + win, T)) for t0 in range(0, T, win)]
        bs = int(self.batch_size)

        def step_grads(idx, t0, t1, h0s):
            """Summed loss/grads over batch chunks (one per worker) of one window."""
            parts = np.array_split(np.arange(len(idx)), min(nw, len(idx)))
            bundle = (flat[:-2], flat[-2], flat[-1], L, D, True)
            if client is not None:
                bf = client.scatter(_Bundle(bundle), broadcast=True)
                futs = [client.submit(_window_grad, bf, Xf, Yf, idx[c], t0, t1,
                                      None if h0s is None else h0s[:, c], pure=False)
                        for c in parts]
                results = client.gather(futs)
            else:
                results = [_window_grad(bundle, X, Y, idx[c], t0, t1,
                                        None if h0s is None else h0s[:, c]) for c in parts]
            loss = sum(r[0] for r in results)
            count = sum(r[1] for r in results)
            grads = [sum((r[2][i] for r in results[1:]), results[0][2][i].copy())
                     for i in range(len(flat))]
            h_n = np.concatenate([r[3] for r in results], axis=1)
            return loss, count, grads, h_n

        history = {"loss": [], "val_loss": []}
        best, best_flat, best_epoch, waited = np.inf, [a.copy() for a in flat], 0, 0
        bar = None
        if self.verbose:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(self.max_epochs), desc="GRURegressor", unit="epoch")
        try:
            for epoch in range(int(self.max_epochs)):
                perm = tr_idx[rng.permutation(len(tr_idx))]
                tot, cnt = 0.0, 0
                for b0 in range(0, len(perm), bs):
                    idx = np.sort(perm[b0:b0 + bs])
                    h = None
                    for t0, t1 in windows:
                        loss, count, grads, h = step_grads(idx, t0, t1, h)
                        grads = [g / count for g in grads]
                        if not all(np.all(np.isfinite(g)) for g in grads):
                            raise FloatingPointError(
                                f"non-finite gradient in epoch {epoch}; lower learning_rate")
                        opt.step(flat, grads)
                        tot, cnt = tot + loss, cnt + count
                history["loss"].append(tot / cnt)
                if n_val:
                    vl = self._mse(flat, L, D, X[val_idx], Y[val_idx])
                    history["val_loss"].append(vl)
                monitored = history["val_loss"][-1] if n_val else history["loss"][-1]
                if monitored < best:
                    best, best_flat, best_epoch, waited = monitored, [a.copy() for a in flat], epoch, 0
                else:
                    waited += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{history['loss'][-1]:.4g}",
                                    **({"val_loss": f"{history['val_loss'][-1]:.4g}"} if n_val else {}))
                if waited >= int(self.patience):
                    break
        finally:
            if bar is not None:
                bar.close()
        self.params_ = _flat_to_params(best_flat[:-2], L, D, True, dt)
        self._coef, self._intercept = best_flat[-2], best_flat[-1]
        self.coef_ = self._coef[0].copy() if self._y_1d else self._coef.copy()
        self.intercept_ = self._intercept[0].copy() if self._y_1d else self._intercept.copy()
        self.history_ = history
        self.n_epochs_ = len(history["loss"])
        self.best_epoch_ = best_epoch
        self.n_features_in_ = F
        return self

    @staticmethod
    def _mse(flat, L, D, X, Y):
        from .core import gru_numpy

        p = _flat_to_params(flat[:-2], L, D, True, flat[-1].dtype)
        out, _ = gru_numpy(X, p, batch_first=True)
        res = out @ flat[-2].T + flat[-1] - Y
        return float(np.mean(res * res))

    # -------------------------------------------------------------- inference
    def transform(self, X):
        """Top-layer hidden states (n, T, hidden_size); lazy for dask input."""
        from .scan import gru

        self._check_fitted()
        Xa = self._check_X(X)
        out, _ = gru(Xa.astype(self.params_.dtype), self.params_, batch_first=True)
        return self._wrap(X, out, "hidden")

    def predict(self, X):
        """Predictions (n, T, n_targets), or (n, T) when fitted on 2-D y; lazy for dask."""
        from .scan import gru

        self._check_fitted()
        Xa = self._check_X(X)
        out, _ = gru(Xa.astype(self.params_.dtype), self.params_, batch_first=True)
        pred = out @ self._coef.T + self._intercept
        if self._y_1d:
            pred = pred[..., 0]
        return self._wrap(X, pred, None if self._y_1d else "target")

    @staticmethod
    def _wrap(X, a, last_dim):
        if hasattr(X, "dims") and hasattr(X, "coords"):
            import xarray as xr

            dims = tuple(X.dims[:2]) + ((last_dim,) if last_dim else ())
            coords = {d: X.coords[d] for d in X.dims[:2] if d in X.coords}
            return xr.DataArray(a, dims=dims, coords=coords)
        return a

    def score(self, X, y):
        """Coefficient of determination R² of the predictions (averaged over targets,
        every sequence and step counted as one sample)."""
        pred = _as_array(self.predict(X), "prediction")
        pred = np.asarray(pred, dtype=np.float64)
        y = np.asarray(_as_array(y, "y"), dtype=np.float64)
        if y.shape != pred.shape:
            raise ValueError(f"y must have shape {pred.shape}, got {y.shape}")
        nt = 1 if y.ndim == 2 else y.shape[2]
        y2, p2 = y.reshape(-1, nt), pred.reshape(-1, nt)
        ss_res = ((y2 - p2) ** 2).sum(axis=0)
        ss_tot = ((y2 - y2.mean(axis=0)) ** 2).sum(axis=0)
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1),
                      np.where(ss_res == 0, 1.0, 0.0))
        return float(r2.mean())
