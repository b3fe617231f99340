"""The backward pass as a dask graph: the forward chains, then the reverse chains.

On a :class:`~daskgru.graph.builder.Graph`, per batch chunk:

* forward: the scan chains of every layer (:func:`daskgru.graph.scan.scan_chains`, stage
  ``bwd-fwdscan``), keeping only the boundary state after every chunk
  (``{cell}-bwd-fwdstate-l{l}-…`` (d, j, k)); a layer's chunk outputs feed only the next
  layer's forward task of the same chunk and are released;
* backward, top layer down, each direction's chain in reverse (``{cell}-bwd-scan-…``): a
  task recomputes its chunk's layer input (the layers below it on that chunk, from their
  stored start states: checkpointing, O(layer · chunk) extra compute) and its own forward
  from its stored start state (memory O(chunk)), takes the adjoint of its end state from
  the task of the chunk after it (before it, reversed) and hands its own on
  (``…-bwd-dh-…``); its input gradient (``…-bwd-dx-…``) is the next lower layer's output
  gradient;
* the weight gradients (``…-bwd-wgrad-…``) are summed with a tree of ``…-bwd-reduce-…``
  tasks; ``…-bwd-dinput-…`` and ``…-bwd-dstate-…`` are the blocks of d_x and of the
  start states' gradients.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..layout import uncanonical
from ..cells import Weights, chunk_backward
from ..eager import chunk_input, layer_input, run_direction
from .builder import Graph, chunk_steps, start_state, state_block
from .scan import outputs_of, scan_chains, state_of

__all__ = ["build"]

FANIN = 8


class BackwardResult(NamedTuple):
    d_x: np.ndarray      # gradient of the chunk's layer input
    d_state: np.ndarray  # adjoint of the chunk's start state
    grads: Weights       # the chunk's weight-gradient sums


def _chunk_input(ps, where, flags, x0, starts, lengths, mask):
    """Layer l's input on one time chunk, recomputed from the chunk's layer-0 input ``x0``
    (the user's time chunks that make it up) by running layers 0..l-1 from their stored
    start states ``starts[m][dd]`` (the same kernels as the forward tasks, so the values are
    bit-identical to theirs); ``flags``: each layer's ``zero_output_for_mask``."""
    x = chunk_input(ps, 0, x0)
    for m in range(where.l):
        parts = []
        for dd, w in enumerate(ps.weights[m]):
            wm = where._replace(l=m, d=dd, zero_masked=flags[m])
            steps = chunk_steps(wm, lengths, mask, x.shape[1], x.shape[0])
            state = start_state(ps, wm, starts[m][dd], x.shape[1])
            parts.append(run_direction(ps.cells[m], w, x, state, steps)[0])
        x = layer_input(parts)
    return x


def _bwd_task(ps, where, flags, split, x0, starts, start, lengths, mask, d_srcs, d_end):
    """Backward of chunk (l, d, ·, k): ``starts`` the lower layers' start states on this
    chunk, ``start`` its own, ``d_srcs`` arrays whose sum holds this layer's output
    gradient (the d_output block, or the d_x of both directions of the layer above);
    ``flags``: each layer's ``zero_output_for_mask``."""
    l, d = where.l, where.d
    here = where
    x = _chunk_input(ps, where, flags, x0, starts, lengths, mask)
    n, B = x.shape[:2]
    cell, w = ps.cells[l], ps.weights[l][d]
    H = w.hidden_size
    steps = chunk_steps(here, lengths, mask, B, n)
    state = start_state(ps, here, state_of(start), B)
    if d_end is None:
        d_end = np.zeros_like(state)
    dsrc = d_srcs[0] if len(d_srcs) == 1 else sum(d_srcs[1:], d_srcs[0])
    d_out = np.ascontiguousarray(dsrc[..., d * H:(d + 1) * H], dtype=w.w_hh.dtype)
    return BackwardResult(*chunk_backward(cell, w, x, state, steps, d_out, d_end,
                                          threads=split))


def _d_x(res):
    return res.d_x


def _d_state(res):
    return res.d_state


def _grads(res):
    return res.grads


def _sum(*parts):
    """Sum of arrays, or of Weights records field by field."""
    if isinstance(parts[0], Weights):
        return Weights(*[_sum(*f) for f in zip(*parts)])
    return parts[0] if len(parts) == 1 else sum(parts[1:], parts[0])


def _tree(tasks, name, leaves):
    """Sum ``leaves`` (keys) with a tree of ``_sum`` tasks; returns the root key."""
    level = 0
    while len(leaves) > 1:
        nxt = []
        for i in range(0, len(leaves), FANIN):
            key = (name, level, i // FANIN)
            tasks[key] = (_sum, *leaves[i:i + FANIN])
            nxt.append(key)
        leaves, level = nxt, level + 1
    return leaves[0]


def build(x, call, d_output, d_states, states, lengths, mask):
    """The lazy backward of a validated call: ``(grads (Delayed list of Weights per
    (layer, direction)), d_x, [start-state gradients (D, B, S) per layer])``."""
    import dask.array as da
    from dask.delayed import Delayed

    p = call.stack
    L = p.num_layers
    # a backward task holds about 16 times its outputs (states, gates, adjoints): merged
    # chunks are capped accordingly
    g = Graph(x, call, states, lengths, mask, kind="backward", d_output=d_output,
              adjoints=d_states, merge=True, held=16)
    dout = g.d_output
    w = g.weights.key
    forward = []
    for l in range(L):
        chain, result = scan_chains(g, l, stage="bwd-fwdscan")
        st = {g.key("bwd-fwdstate", l, d, j, k): (state_of, result(d, j, k))
              for d, j in g.chains(l) for k in range(g.nt)}
        states_l = g.add(g.name("bwd-fwdstate", l), st, chain)
        forward += [chain, states_l]
        g.add_outputs(l, chain, lambda d, j, k, r=result: (outputs_of, r(d, j, k)))

    def start_key(l, d, j, k):
        """The forward state chunk k of (l, d, j) starts from: the boundary state of the
        chunk before it in the chain's order, or the start state at the chain's start."""
        kp = k + 1 if d else k - 1
        return g.key("bwd-fwdstate", l, d, j, kp) if 0 <= kp < g.nt else g.state(l, d, j)

    layers, wroots = [], {}
    for l in range(L - 1, -1, -1):
        tasks = {}
        for d, j in g.chains(l):
            adj = g.adjoint(l, d, j)
            leaves = []
            for k in reversed(g.order(d)):
                where = g.where(l, d, k)
                starts = [[start_key(m, dd, j, k) for dd in range(p.layers[m].num_directions)]
                          for m in range(l)]
                d_srcs = ([(dout.name, k, j, 0)] if l == L - 1 else
                          [g.key("bwd-dx", l + 1, dd, j, k)
                           for dd in range(p.layers[l + 1].num_directions)])
                bk = g.key("bwd-scan", l, d, j, k)
                tasks[bk] = (_bwd_task, w, where, call.zero_masked, g.split,
                             g.parts(0, j, k), starts,
                             start_key(l, d, j, k), g.lengths(j), g.mask(j, k), d_srcs, adj)
                tasks[g.key("bwd-dx", l, d, j, k)] = (_d_x, bk)
                tasks[g.key("bwd-dh", l, d, j, k)] = (_d_state, bk)
                tasks[g.key("bwd-wgrad", l, d, j, k)] = (_grads, bk)
                leaves.append(g.key("bwd-wgrad", l, d, j, k))
                adj = g.key("bwd-dh", l, d, j, k)
            wroots.setdefault((l, d), []).extend(leaves)
        for d in range(p.layers[l].num_directions):
            wroots[(l, d)] = _tree(tasks, g.name(f"bwd-reduce-d{d}", l), wroots[(l, d)])
        layers.append(g.add(g.name("bwd-scan", l), tasks, *forward, *layers))
    bwd = layers
    # the outputs: d_x (layer 0's input gradient), start-state gradients, weight gradients
    dxname = f"{g.root}-bwd-dinput-{g.token}"
    g_dx = {(dxname, k, j, 0): (_sum, *[g.key("bwd-dx", 0, dd, j, k)
                                       for dd in range(p.layers[0].num_directions)])
            for j in range(g.nb) for k in range(g.nt)}
    hdx = g.add(dxname, g_dx, *bwd).__dask_graph__()
    d_x = da.Array(hdx, dxname, (g.tchunks, g.bchunks, (call.I,)),
                   meta=np.empty((0, 0, 0), call.dtype))
    d_starts = []
    for l in range(L):
        lay = p.layers[l]
        name = g.name("bwd-dstate", l)
        tasks = {(name, d, j, 0): (state_block, g.key("bwd-dh", l, d, j, g.order(d)[0]))
                 for d, j in g.chains(l)}
        hlg = g.add(name, tasks, *bwd).__dask_graph__()
        d_starts.append(da.Array(hlg, name, ((1,) * lay.num_directions, g.bchunks,
                                             (lay.state_size,)),
                                 meta=np.empty((0, 0, 0), call.dtype)))
    gname = f"{g.root}-bwd-grads-{g.token}"
    roots = [wroots[(l, d)] for l in range(L) for d in range(p.layers[l].num_directions)]
    grads = g.add(gname, {gname: (list, roots)}, *bwd)
    if call.unbatched:
        d_starts = [s[:, 0] for s in d_starts]
    return Delayed(gname, grads.__dask_graph__(), layer=gname), uncanonical(d_x, call), d_starts
