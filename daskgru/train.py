"""Training: gradients by backpropagation through time over chunks, Adam, GRURegressor.

:func:`gru_backward` is the vector-Jacobian product of :func:`daskgru.gru`. Eager on NumPy;
on dask arrays it builds the reverse chain of the design: per batch chunk, a forward pass over
the time chunks stores only the boundary states (and each layer's chunk outputs, the next
layer's inputs); then per layer (top to bottom), direction and time chunk a backward task
recomputes its chunk's forward from the stored start state (memory O(chunk)), consumes the
adjoint boundary state of chunk k+1 (k-1 for the reverse direction) and hands its own on.
Weight gradients are summed over time and batch chunks with a tree reduction.
"""
from __future__ import annotations

from operator import getitem

import numpy as np

from . import kernels
from .core import EAGER_BLOCK, PreparedWeights, check_lengths, layer_input, validate
from .kernels_backward import chunk_backward
from .params import GRUParams, GRUWeights

__all__ = ["gru_backward", "GRURegressor", "Adam"]


def _is_dask(a) -> bool:
    return hasattr(a, "__dask_graph__") and a.__dask_graph__() is not None


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
            for i in order:
                t0, t1 = tape.blocks[i]
                d_x, dh, *g = chunk_backward(
                    layer_in[t0:t1], w_ih, w_ih_t, b_ih, w_hh, w_hh_t, b_hh,
                    tape.starts[l][d][i], tape.lengths, t0, d == 1, pp.reset_after,
                    d_out[t0:t1], dh)
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
    if any(_is_dask(a) for a in (x, d_output, d_h_n, h0, lengths)):
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


def _bwd_task(weights, l, d, reset_after, parts, h_start, lengths, t0, T, d_srcs, d_h_end):
    """Backward of chunk (l, d, ·, k). ``d_srcs``: arrays whose sum holds this layer's output
    gradient (the d_output block, or the d_x of both directions of the layer above)."""
    w_ih, w_ih_t, b_ih, w_hh, w_hh_t, b_hh = weights[l][d]
    x = layer_input(parts)
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


def _state_block(state):
    return state[None]


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
    from dask.highlevelgraph import HighLevelGraph

    pp, dt, T = call.params, call.dtype, call.T
    L, D, H, LD = pp.num_layers, pp.num_directions, pp.hidden_size, pp.num_layers * pp.num_directions

    def canon(a):
        a = da.asarray(a)
        if call.unbatched:
            return a[:, None, :]
        return a.transpose(1, 0, 2) if call.batch_first else a

    x = canon(x).astype(dt).rechunk({2: -1})
    tchunks, bchunks = x.chunks[0], x.chunks[1]
    nt, nb = len(tchunks), len(bchunks)
    t_starts = np.concatenate([[0], np.cumsum(tchunks)[:-1]]).astype(int).tolist()
    b_edges = np.cumsum((0,) + bchunks)
    dout = canon(d_output).astype(dt).rechunk((tchunks, bchunks, (D * H,)))
    collections = [x, dout]

    def per_state(a, name):
        """A (L*D, B, H) argument as a key/array getter per (ld, j)."""
        if a is None:
            return lambda ld, j: None  # noqa: E731
        if call.unbatched:
            a = a[:, None, :]
        if _is_dask(a):
            a = da.asarray(a).astype(dt).rechunk(((1,) * LD, bchunks, (H,)))
            collections.append(a)
            return lambda ld, j, n=a.name: (getitem, (n, ld, j, 0), 0)  # noqa: E731
        anp = np.asarray(a, dtype=dt)
        return lambda ld, j: anp[ld, b_edges[j]:b_edges[j + 1]]  # noqa: E731

    h0_key = per_state(h0, "h0")
    dhn_key = per_state(d_h_n, "d_h_n")
    len_key = lambda j: None  # noqa: E731
    if lengths is not None:
        if _is_dask(lengths):
            lengths = da.asarray(lengths).reshape(-1).rechunk((bchunks,))
            collections.append(lengths)
            len_key = lambda j, n=lengths.name: (n, j)  # noqa: E731
        else:
            lnp = check_lengths(lengths, T)
            len_key = lambda j: lnp[b_edges[j]:b_edges[j + 1]]  # noqa: E731

    tok = tokenize(
        "gru-backward", pp, [c.name for c in collections],
        *[None if a is None or _is_dask(a) else np.asarray(a) for a in (h0, d_h_n, lengths)],
    )
    wname = f"gru-bwd-weights-{tok}"
    fscan, fstate, fout = f"gru-bwd-fwdscan-{tok}", f"gru-bwd-fwdstate-{tok}", f"gru-bwd-fwdout-{tok}"
    bscan, bdx, bdh, bgw = (f"gru-bwd-scan-{tok}", f"gru-bwd-dx-{tok}", f"gru-bwd-dh-{tok}",
                            f"gru-bwd-wgrad-{tok}")
    tree, dxname, dh0name, gname = (f"gru-bwd-reduce-{tok}", f"gru-bwd-dinput-{tok}",
                                    f"gru-bwd-dh0-{tok}", f"gru-bwd-grads-{tok}")
    body = {wname: _prepare(pp)}
    wleaves = {(l, d): [] for l in range(L) for d in range(D)}
    for j in range(nb):
        # forward: boundary states and each layer's chunk outputs
        for l in range(L):
            for d in range(D):
                prev = h0_key(l * D + d, j)
                for k in (range(nt - 1, -1, -1) if d else range(nt)):
                    parts = ([(x.name, k, j, 0)] if l == 0
                             else [(fout, l - 1, dd, j, k) for dd in range(D)])
                    body[(fscan, l, d, j, k)] = (_fwd_task, wname, l, d, pp.reset_after, parts,
                                                 prev, len_key(j), t_starts[k], T)
                    body[(fstate, l, d, j, k)] = (getitem, (fscan, l, d, j, k), 1)
                    body[(fout, l, d, j, k)] = (getitem, (fscan, l, d, j, k), 0)
                    prev = (fstate, l, d, j, k)
        # backward: top layer down, each direction's chain in reverse
        for l in range(L - 1, -1, -1):
            for d in range(D):
                adj = dhn_key(l * D + d, j)
                for k in (range(nt) if d else range(nt - 1, -1, -1)):
                    parts = ([(x.name, k, j, 0)] if l == 0
                             else [(fout, l - 1, dd, j, k) for dd in range(D)])
                    kprev = (k + 1 if d else k - 1)
                    h_start = ((fstate, l, d, j, kprev) if 0 <= kprev < nt
                               else h0_key(l * D + d, j))
                    d_srcs = ([(dout.name, k, j, 0)] if l == L - 1
                              else [(bdx, l + 1, dd, j, k) for dd in range(D)])
                    body[(bscan, l, d, j, k)] = (_bwd_task, wname, l, d, pp.reset_after, parts,
                                                 h_start, len_key(j), t_starts[k], T, d_srcs,
                                                 adj)
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
                g_dh0[(dh0name, l * D + d, j, 0)] = (_state_block, (bdh, l, d, j, 0 if not d else nt - 1))
    g_grads = {gname: (_make_grads, list(roots), D, pp.reset_after, pp.bias, str(dt))}
    bname = f"gru-bwd-{tok}"
    graph = HighLevelGraph.merge(*[c.__dask_graph__() for c in collections])
    layers, deps = dict(graph.layers), dict(graph.dependencies)
    layers.update({bname: body, dxname: g_dx, dh0name: g_dh0, gname: g_grads})
    deps.update({bname: {c.name for c in collections}, dxname: {bname}, dh0name: {bname},
                 gname: {bname}})
    hlg = HighLevelGraph(layers, deps)
    d_x = da.Array(hlg, dxname, (tchunks, bchunks, (x.shape[2],)), meta=np.empty((0, 0, 0), dt))
    d_h0 = da.Array(hlg, dh0name, ((1,) * LD, bchunks, (H,)), meta=np.empty((0, 0, 0), dt))
    grads = Delayed(gname, hlg, layer=gname)
    if call.unbatched:
        return grads, d_x[:, 0], d_h0[:, 0]
    if call.batch_first:
        d_x = d_x.transpose(1, 0, 2)
    return grads, d_x, d_h0
