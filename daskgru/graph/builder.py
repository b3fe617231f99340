"""The one graph builder: a call's inputs in task form, its keys, and its layers.

Every method (the scan, the parallel-in-time methods, the backward pass) builds its graph
on a :class:`Graph`: for each layer ``l`` of the stack, direction ``d`` and batch chunk
``j`` it adds a chain of tasks over the time chunks (in :meth:`Graph.order`: forward, or
reversed for the backward direction), each taking its chunk's input pieces
(:meth:`Graph.parts`: a block of x for layer 0, else the blocks of layer ``l - 1``'s
outputs, both directions) and a boundary state. Layer ``l + 1``'s chunk ``k`` thus needs
only layer ``l``'s chunk ``k``: layers run as a wavefront.

Layers of the graph (attached with ``HighLevelGraph.from_collections``), named after the
layer's cell (``gru``, ``lstm``; the stack-wide ones after its one cell, or ``rnn`` for a
stack that mixes cells):

* ``{stack}-weights-{token}``: one key, the kernel-ready weights of the whole stack (and a
  model's input layers);
* ``{cell}-{stage}-l{l}-{token}``: the tasks of layer ``l``'s chains, one graph layer per
  stack layer (the chain runs through its stages, e.g. scan and state tasks);
* ``{cell}-chunkout-l{l}-{token}`` (``{stack}-output-{token}`` for the top layer): a dask
  array (T, B, D*H) whose block (k, j, d) is direction d's outputs on chunk (k, j), so that
  its feature chunks are the directions, and the next layer's input of a chunk is a row of
  blocks (a layer that merges its directions by sum, product or mean has one block (k, j,
  0), the merge done in its task);
* ``{cell}-final-l{l}-{token}``: a dask array (D, B, S) of the layer's final states.

Keys are deterministic: the token covers the inputs, the stack, every option that changes
the graph (its resolved :mod:`~daskgru.graph.options` included) and the method's own.
Every task calls the same per-chunk functions as the eager path, so results equal it bit
for bit for any chunking and any scheduler.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..layout import as_mask, canonical, check_lengths, is_dask, uncanonical
from ..cells import Steps
from ..eager import layer_input
from .options import resolve, step_costs

__all__ = ["Graph", "Where", "chunk_steps", "start_state"]

# Bytes of weights that a graph may carry inside its chains' first tasks (one copy each):
# on a 2-worker LocalCluster this took a scheduler round trip and a transfer (4-5 ms of a
# 50 ms call) from the start of every chain.
INLINE_WEIGHTS_BYTES = 16 << 20


class Where(NamedTuple):
    """Which chunk of which chain a task works on, and how its steps count."""

    l: int
    d: int
    t0: int              # global index of the chunk's first step
    T: int               # steps of the whole series (checks dask lengths in-task)
    zero_masked: bool


def chunk_steps(where: Where, lengths, mask, B, n) -> Steps:
    """The :class:`~daskgru.cells.Steps` of a chunk of ``n`` steps and ``B`` rows; dask
    lengths are checked here, in the task."""
    if lengths is not None:
        lengths = check_lengths(lengths, where.T)
    return Steps.make(B, n, lengths=lengths, mask=None if mask is None else as_mask(mask),
                      t0=where.t0, reverse=where.d == 1, zero_masked=where.zero_masked)


def start_state(ps, where: Where, state, B):
    """A chunk's start state: the given one, or zeros."""
    if state is not None:
        return state
    lay = ps.cells[where.l], ps.weights[where.l][where.d]
    return np.zeros((B, lay[0].state_size(lay[1].hidden_size)), lay[1].w_hh.dtype)


class Graph:
    """One call's graph under construction (see the module docstring).

    ``kind`` and ``extra`` (hashable options of the method) go into the token. ``states``:
    None or one (B, S) array per (layer, direction), NumPy or dask; ``lengths`` (B,);
    ``mask`` in the caller's layout. The backward adds ``d_output`` (shaped like the
    output) and ``adjoints`` (like ``states``: the gradients of the final states). A
    ``model`` (:class:`daskgru.Model`) brings per-step layers that the chunk tasks apply to
    the input of layer 0 (x then has the model's input size).
    """

    def __init__(self, x, call, states=None, lengths=None, mask=None, *, kind="scan",
                 extra=(), d_output=None, adjoints=None, model=None, merge=False, held=1,
                 min_chunks_per_slot=0):
        import dask.array as da
        from dask.base import tokenize
        from dask.delayed import Delayed
        from dask.highlevelgraph import HighLevelGraph

        self.call, self.stack = call, call.stack
        self.opts = resolve()
        self.x = canonical(da.asarray(x), call).astype(call.dtype).rechunk({2: -1})
        # a step of a batch chunk's rows in the costliest layer; a task holds ``held``
        # times its outputs (the backward's: about 16)
        step_work, step_bytes = step_costs(self.stack, max(self.x.chunks[1], default=0), held)
        self.user_tchunks = self.x.chunks[0]
        # the user's time chunks that make up each of the graph's (one each, unless merged)
        self.pieces = [[k] for k in range(len(self.user_tchunks))]
        self.tchunks = self.user_tchunks
        if merge:  # small time chunks merged into tasks worth their scheduling
            merged = self.opts.merged(self.x.chunks[0], step_work, step_bytes,
                                      min_chunks_per_slot * self.opts.slots)
            if merged != self.x.chunks[0]:
                # a merged chunk's task takes the user's chunks as they are and joins them
                # itself (chunk_input): no rechunk tasks, no scheduler round trip for them
                last = np.searchsorted(np.cumsum(self.user_tchunks), np.cumsum(merged))
                first = np.concatenate([[0], last[:-1] + 1])
                self.pieces = [list(range(a, b + 1)) for a, b in zip(first, last)]
            self.tchunks = tuple(int(c) for c in merged)
        self.bchunks = self.x.chunks[1]
        self.t_starts = np.concatenate([[0], np.cumsum(self.tchunks)[:-1]]).astype(int).tolist()
        self.b_edges = np.cumsum((0,) + self.bchunks)
        self.collections = [self.x]
        literal = []
        self._state = self._per_state(states, literal)
        self._lengths = self._per_batch(lengths, literal)
        self._mask = self._per_block(mask, literal)
        if d_output is not None:  # the backward's output gradient, chunked like the output
            self.d_output = canonical(da.asarray(d_output), call).astype(call.dtype).rechunk(
                (self.tchunks, self.bchunks, -1))
            self.collections.append(self.d_output)
        self._adjoint = self._per_state(adjoints, literal)
        # what the options decide for this graph (not the options themselves: settings
        # that give the same graph give the same keys)
        chains = len(self.bchunks) * max(lay.num_directions for lay in self.stack.layers)
        rows = max(self.bchunks, default=0)
        work = max(self.tchunks, default=0) * step_work
        self.split = self.opts.split(chains, rows, work)
        self.fuse = self.opts.fuse(len(self.bchunks), self.split)
        self.group = self.opts.group(len(self.tchunks))
        from ..numerics import use_fma

        self.fma = use_fma()  # the products' numerics, resolved once, here on the client
        self.token = tokenize(kind, [c.name for c in self.collections], self.tchunks,
                              self.stack, model, call.zero_masked, literal, self.fuse,
                              self.group, self.split, self.fma, *extra)
        names = {lay.cell.name for lay in self.stack.layers}
        self.root = names.pop() if len(names) == 1 else "rnn"
        wkey = f"{self.root}-weights-{self.token}"
        ps = self.stack.prepare(self.fma) if model is None else model.prepare(self.fma)
        self.weights = Delayed(wkey, HighLevelGraph.from_collections(
            wkey, {wkey: ps}, dependencies=()))
        # the weights themselves for the tasks that start layer 0's chains (see first_weights)
        self._inline = ps if ps.nbytes * len(self.chains(0)) <= INLINE_WEIGHTS_BYTES else wkey
        self.outputs, self.finals = [], []

    def info(self) -> dict:
        """What this graph's options resolved to, for ``return_info``."""
        return dict(scheduler=self.opts.scheduler, slots=self.opts.slots,
                    fuse_projection=self.fuse, verify_group=self.group,
                    split_rows=self.split, fma=self.fma,
                    time_chunks=len(self.tchunks), merged_from=len(self.user_tchunks))

    # -------------------------------------------------------------- inputs in task form
    def _per_state(self, states, literal):
        import dask.array as da

        if states is None:
            return lambda ld, j: None
        pieces = []
        for s in states:
            if is_dask(s):
                s = da.asarray(s).astype(self.call.dtype).rechunk((self.bchunks, -1))
                self.collections.append(s)
                pieces.append(lambda j, n=s.name: (n, j, 0))
            else:
                s = np.asarray(s, dtype=self.call.dtype)
                literal.append(s)
                e = self.b_edges
                pieces.append(lambda j, s=s: s[e[j]:e[j + 1]])
        return lambda ld, j: pieces[ld](j)

    def _per_batch(self, lengths, literal):
        import dask.array as da

        if lengths is None:
            return lambda j: None
        if is_dask(lengths):
            lengths = da.asarray(lengths).reshape(-1).rechunk((self.bchunks,))
            self.collections.append(lengths)
            return lambda j, n=lengths.name: (n, j)
        lnp, e = check_lengths(lengths, self.call.T), self.b_edges
        literal.append(lnp)
        return lambda j: lnp[e[j]:e[j + 1]]

    def _per_block(self, mask, literal):
        import dask.array as da

        if mask is None:
            return lambda j, k: None
        if is_dask(mask):
            m = canonical(da.asarray(mask), self.call).rechunk((self.tchunks, self.bchunks))
            self.collections.append(m)
            return lambda j, k, n=m.name: (n, k, j)
        m = as_mask(canonical(np.asarray(mask), self.call))
        literal.append(m)
        t, b = self.t_starts + [self.call.T], self.b_edges
        return lambda j, k: m[t[k]:t[k + 1], b[j]:b[j + 1]]

    def state(self, l, d, j):
        """The start state of layer l, direction d, batch chunk j: a key, an array or None."""
        return self._state(sum(lay.num_directions for lay in self.stack.layers[:l]) + d, j)

    def adjoint(self, l, d, j):
        """The backward's adjoint of the final state of (l, d, j): a key, an array or None."""
        return self._adjoint(sum(lay.num_directions for lay in self.stack.layers[:l]) + d, j)

    def lengths(self, j):
        return self._lengths(j)

    def mask(self, j, k):
        return self._mask(j, k)

    # -------------------------------------------------------------- keys and chains
    @property
    def nt(self) -> int:
        return len(self.tchunks)

    @property
    def nb(self) -> int:
        return len(self.bchunks)

    def name(self, stage, l) -> str:
        return f"{self.stack.layers[l].cell.name}-{stage}-l{l}-{self.token}"

    def key(self, stage, l, *idx) -> tuple:
        return (self.name(stage, l), *idx)

    def order(self, d) -> list:
        """The time chunks of a chain in traversal order."""
        return list(range(self.nt - 1, -1, -1)) if d else list(range(self.nt))

    def where(self, l, d, k) -> Where:
        return Where(l, d, self.t_starts[k], self.call.T, self.call.zero_masked[l])

    def parts(self, l, j, k) -> list:
        """Keys of layer l's input pieces on chunk (k, j): for layer 0 the user's time
        chunks that make it up, one after the other; above, the directions of the layer
        below, side by side (:func:`daskgru.eager.chunk_input` joins either)."""
        if l == 0:
            return [(self.x.name, u, j, 0) for u in self.pieces[k]]
        below = self.outputs[l - 1]
        return [(below.name, k, j, d) for d in range(len(below.chunks[2]))]

    def first_weights(self, l, i):
        """What the task at position ``i`` of a chain of layer ``l`` takes as its weights:
        the weights themselves for the tasks that start layer 0's chains (their other
        inputs are the user's; on a cluster the weights key is a task of its own, so each
        chain would start a scheduler round trip and a transfer later), unless that would
        put more than :data:`INLINE_WEIGHTS_BYTES` into the graph; else their key, which
        the scheduler computes while the first tasks run."""
        return self._inline if l == 0 and i == 0 else self.weights.key

    def edge_parts(self, l, j, k, n, first):
        """The input pieces of chunk (k, j) of layer l that hold its first (``first``) or
        last ``n`` steps: for layer 0 only the user's time chunks that cover them (a merged
        chunk's others are not needed), above all of :meth:`parts`."""
        parts = self.parts(l, j, k)
        if l:
            return parts
        sizes = [self.user_tchunks[u] for u in self.pieces[k]]
        order = range(len(parts)) if first else range(len(parts) - 1, -1, -1)
        keep, covered = [], 0
        for i in order:
            keep.append(i)
            covered += sizes[i]
            if covered >= n:
                break
        return [parts[i] for i in sorted(keep)]

    def chains(self, l):
        """(d, j) of every chain of layer l."""
        return [(d, j) for j in range(self.nb) for d in range(self.stack.layers[l].num_directions)]

    # -------------------------------------------------------------- layers
    def add(self, name, tasks, *dependencies):
        """Attach a layer of tasks depending on ``dependencies`` (collections) and on the
        inputs; returns it as a collection to depend on."""
        from dask.delayed import Delayed
        from dask.highlevelgraph import HighLevelGraph

        deps = [self.weights, *self.collections, *dependencies]
        return Delayed(next(iter(tasks)), HighLevelGraph.from_collections(name, tasks, deps),
                       layer=name)

    def chain_layer(self, l, stage, tasks):
        """Layer l's chain tasks as one graph layer (it depends on layer l-1's outputs)."""
        return self.add(self.name(stage, l), tasks, *self.outputs[l - 1:l])

    def add_outputs(self, l, chain, block):
        """Layer l's outputs: ``block(d, j, k)`` is the task giving direction d's outputs
        of chunk (k, j) (within ``chain``)."""
        import dask.array as da
        from dask.highlevelgraph import HighLevelGraph

        lay = self.stack.layers[l]
        top = l == self.stack.num_layers - 1
        name = f"{self.root}-output-{self.token}" if top else self.name("chunkout", l)
        if lay.merge == "concat" or len(lay.weights) == 1:
            tasks = {(name, k, j, d): block(d, j, k)
                     for d, j in self.chains(l) for k in range(self.nt)}
            widths = (lay.hidden_size,) * len(lay.weights)
        else:  # the directions meet in one task per block
            tasks = {(name, k, j, 0): (_merged, lay.merge, block(0, j, k), block(1, j, k))
                     for j in range(self.nb) for k in range(self.nt)}
            widths = (lay.hidden_size,)
        hlg = HighLevelGraph.from_collections(name, tasks, [chain])
        arr = da.Array(hlg, name, (self.tchunks, self.bchunks, widths),
                       meta=np.empty((0, 0, 0), self.call.dtype))
        self.outputs.append(arr)
        return arr

    def add_finals(self, l, chain, block):
        """Layer l's final states: ``block(d, j)`` gives the (1, B_j, S) block."""
        import dask.array as da
        from dask.highlevelgraph import HighLevelGraph

        lay = self.stack.layers[l]
        name = self.name("final", l)
        tasks = {(name, d, j, 0): block(d, j) for d, j in self.chains(l)}
        hlg = HighLevelGraph.from_collections(name, tasks, [chain])
        arr = da.Array(hlg, name, ((1,) * len(lay.weights), self.bchunks, (lay.state_size,)),
                       meta=np.empty((0, 0, 0), self.call.dtype))
        self.finals.append(arr)
        return arr

    def result(self):
        """The output in the caller's layout and the per-layer final states."""
        return uncanonical(self.outputs[-1], self.call), list(self.finals)


def _merged(merge, a, b):
    return layer_input([a, b], merge)


def state_block(state):
    """A (B, S) state as one (1, B, S) block of a finals array."""
    return state[None]
