"""``method="scan"``: the exact sequential chain of chunk tasks along time.

Per layer l, direction d, batch chunk j and time chunk k (in the chain's order):

* ``{cell}-scan-l{l}-…`` (d, j, k): the recurrence over chunk k from the boundary state of
  the chunk before it, returning a :class:`ScanResult` (outputs, end state). With the
  projection fused (see :mod:`~daskgru.graph.options`) it projects its input block by
  block through a reused buffer, so the projected inputs are never allocated whole, nor
  do they travel;
* ``{cell}-inproj-l{l}-…`` (d, j, k), when not fused: the chunk's input projection, a task
  of its own that runs ahead of the chain (at most two chunks ahead, to bound memory);
* ``{cell}-state-l{l}-…`` (d, j, k): with several chains in a layer, the end state of a
  chain's first chunk alone, which its second scan task takes, so that the scheduler can
  still spread chains whose first chunks ran on one worker (a dependency on a whole chunk's
  outputs would tie every chain to that worker); every other scan task takes its
  predecessor's result directly (one scheduler round trip a hop, and the chain stays where
  its data is).

A fused scan task splits its batch rows over threads (``daskgru.split-rows``), so that a
single chain on the threaded scheduler still uses every thread; the bits do not change.
"""
from __future__ import annotations

from typing import NamedTuple

from ..cells import project
from ..eager import chunk_input, run_rows
from .builder import Graph, chunk_steps, start_state, state_block

__all__ = ["build", "ScanResult"]


class ScanResult(NamedTuple):
    """What a scan task returns."""

    out: object    # (T, B, H) outputs of the chunk
    state: object  # (B, S) end state


def state_of(res):
    """A chain link's state: the end state of a scan result, else the link itself (a start
    state or None)."""
    return res.state if isinstance(res, ScanResult) else res


def outputs_of(res):
    return res.out


def final_of(res):
    return state_block(res.state)


def _fused_task(ps, where, split, start, lengths, mask, *parts):
    x = chunk_input(ps, where.l, parts)
    B = x.shape[1]
    steps = chunk_steps(where, lengths, mask, B, x.shape[0])
    state = start_state(ps, where, state_of(start), B)
    return ScanResult(*run_rows(split, ps.cells[where.l], ps.weights[where.l][where.d], x,
                                state, steps))


def _inproj_task(ps, where, after, *parts):
    # ``after`` (a boundary state two chunks back, unused) keeps the projections from
    # running far ahead of the chain and piling up in memory.
    return project(ps.weights[where.l][where.d], chunk_input(ps, where.l, parts))


def _scan_task(ps, where, gi, start, lengths, mask):
    B = gi.shape[1]
    steps = chunk_steps(where, lengths, mask, B, gi.shape[0])
    state = start_state(ps, where, state_of(start), B)
    return ScanResult(*ps.cells[where.l].scan(ps.weights[where.l][where.d], gi, state, steps))


def scan_chains(g: Graph, l, stage="scan"):
    """Layer l's scan chains on ``g``: returns the layer (a collection) and
    ``result_key(d, j, k)`` of the scan tasks."""
    fuse = g.fuse
    spread = len(g.chains(l)) > 1
    tasks = {}

    def result(d, j, k):
        return g.key(stage, l, d, j, k)

    def link(d, j, i, k):  # how the chunk after chunk k (position i) gets its start
        return g.key("state", l, d, j, k) if spread and i == 0 else result(d, j, k)

    for d, j in g.chains(l):
        prev = g.state(l, d, j)
        order = g.order(d)
        for i, k in enumerate(order):
            where, parts, w = g.where(l, d, k), g.parts(l, j, k), g.weights.key
            if fuse:  # (the only form where results travel, so the only one a key costs)
                tasks[result(d, j, k)] = (_fused_task, g.first_weights(l, i), where, g.split,
                                          prev, g.lengths(j), g.mask(j, k), *parts)
            else:
                proj = g.key("inproj", l, d, j, k)
                after = link(d, j, i - 2, order[i - 2]) if i >= 2 else None
                tasks[proj] = (_inproj_task, w, where, after, *parts)
                tasks[result(d, j, k)] = (_scan_task, w, where, proj, prev, g.lengths(j),
                                          g.mask(j, k))
            if spread and i == 0:
                tasks[g.key("state", l, d, j, k)] = (state_of, result(d, j, k))
            prev = link(d, j, i, k)
    return g.chain_layer(l, stage, tasks), result


def build(x, call, states=None, lengths=None, mask=None, model=None):
    """The lazy scan of a validated call; returns (output, finals, info)."""
    import dask

    g = Graph(x, call, states, lengths, mask, kind="scan", model=model,
              merge=True)
    for l in range(call.stack.num_layers):
        chain, result = scan_chains(g, l)
        g.add_outputs(l, chain, lambda d, j, k, r=result: (outputs_of, r(d, j, k)))
        g.add_finals(l, chain, lambda d, j, r=result: (final_of, r(d, j, g.order(d)[-1])))
    out, finals = g.result()
    info = dict(method="scan", sweeps=0, chunks=None, chunks_recomputed=0, max_mismatch=0.0,
                graph=g.info())
    return out, finals, dask.delayed(info, traverse=False)
