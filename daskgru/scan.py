"""The Dask graph: chains of scan tasks along time, a wavefront over layers.

For batch chunk j, time chunk k, layer l and direction d the graph holds

* ``gru-inproj-…`` (l, d, j, k): the input projection of chunk k (no dependency along time);
* ``gru-scan-…`` (l, d, j, k): the recurrence over chunk k from the boundary state of chunk
  k-1 (k+1 for the reverse direction), returning ``(outputs, end state)``;
* ``gru-state-…``: the end state of a chain's first chunk alone, which its second scan task
  takes when a layer has several chains (batch chunks, directions), so that the scheduler
  can still spread the chains over workers; every other scan task takes its predecessor's
  scan result directly (one scheduler round trip a hop, and the chain stays where its data
  is);
* ``gru-chunkout-…``: a chunk's outputs, the next layer's input;
* ``gru-output-…`` and ``gru-hn-…``: the blocks of the two returned dask arrays.

Layer l+1's chunk k depends only on layer l's chunk k (in both directions), so layers run
as a wavefront. One key (``gru-weights-…``) holds the weights, transposed once for the
kernels. Every task calls the same per-chunk functions as the eager path, so results equal
it bit for bit for any chunking and any scheduler.
"""
from __future__ import annotations

from operator import getitem

import numpy as np

from . import kernels
from .core import (check_lengths, gru_numpy, is_dask, layer_input, prepare_weights,
                   run_direction, state_block, validate, validate_method_options)

__all__ = ["gru", "gru_dask", "is_dask"]


def gru(x, p, *, h0=None, lengths=None, batch_first=False, method="scan", warmup=None,
        tol=None, return_info=False):
    """Run a GRU exactly as ``torch.nn.GRU`` does, eagerly on NumPy or lazily on Dask.

    Parameters
    ----------
    x : array (T, B, I), (B, T, I) with ``batch_first``, or (T, I) unbatched
        NumPy or dask; float32 and float64 are kept, float16 is computed in float32.
    p : GRUParams
        The weights (cast to the dtype of ``x`` when they differ).
    h0 : array (num_layers * num_directions, B, H), optional
        Start states, index ``layer * num_directions + direction``; zeros by default.
    lengths : int array (B,), optional
        Valid steps per sequence (0..T), with torch's packed-sequence semantics: outputs past
        a sequence's length are 0, ``h_n`` is the state at its last valid step, and the
        reverse direction starts there.
    batch_first : bool
        Take x as (B, T, I) and return output as (B, T, D*H).
    method : {"scan", "speculative", "newton"}
        How time is traversed. "scan" is the exact sequential chain of chunks. The two
        parallel-in-time methods (see :mod:`daskgru.parallel_time`) run all time chunks at
        once and agree with "scan" to ``tol``: "speculative" starts each chunk from a state
        warmed up over ``warmup`` steps and recomputes chunks whose start was off by more
        than ``tol``; "newton" solves for the chunk boundary states by multiple shooting.
        With NumPy input they build the same dask graph (time chunks of
        ``parallel_time.NUMPY_CHUNK`` steps) and compute it with the synchronous scheduler;
        give a dask array chunked along time to run chunks in parallel.
    warmup : int >= 0, optional
        method="speculative" only: warm-up steps per chunk (default
        ``parallel_time.DEFAULT_WARMUP``).
    tol : float > 0, optional
        Parallel methods only: largest accepted mismatch of a chunk's start state (default
        1e-5 for float32, 1e-8 for float64).
    return_info : bool
        Also return a dict (lazy for dask input: a ``Delayed``) with keys ``method``,
        ``sweeps``, ``chunks``, ``chunks_recomputed`` and ``max_mismatch``.

    Returns
    -------
    output : array (T, B, D*H)
        Top layer's states, the two directions side by side [forward, backward].
    h_n : array (num_layers * num_directions, B, H)
        Final states. NumPy in gives NumPy out (eager); any dask input gives dask out (lazy).

    Examples
    --------
    >>> import numpy as np, daskgru as dg
    >>> p = dg.GRUParams.random(3, 8, num_layers=2, seed=0)
    >>> x = np.random.default_rng(0).normal(size=(100, 4, 3)).astype("float32")
    >>> out, h_n = dg.gru(x, p)
    >>> out.shape, h_n.shape
    ((100, 4, 8), (2, 4, 8))
    >>> import dask.array as da
    >>> lazy_out, lazy_h = dg.gru(da.from_array(x, chunks=(25, 2, 3)), p)
    >>> bool(np.array_equal(lazy_out.compute(), out))
    True
    """
    validate_method_options(method, warmup=warmup, tol=tol, return_info=return_info)
    if method != "scan":
        from .parallel_time import gru_parallel

        return gru_parallel(x, p, h0=h0, lengths=lengths, batch_first=batch_first,
                            method=method, warmup=warmup, tol=tol, return_info=return_info)
    lazy = is_dask(x) or is_dask(h0) or is_dask(lengths)
    if lazy:
        res = gru_dask(x, p, h0=h0, lengths=lengths, batch_first=batch_first, method=method)
    else:
        res = gru_numpy(x, p, h0=h0, lengths=lengths, batch_first=batch_first, method=method)
    if not return_info:
        return res
    from .parallel_time import scan_info

    return (*res, scan_info(lazy))


# ----------------------------------------------------------------------------- tasks
def _inproj_task(weights, l, d, after, *parts):
    # ``after`` (a boundary state two chunks back, unused) keeps the projections from
    # running far ahead of the chain and piling up in memory.
    w_ih_t, b_ih, _, _ = weights[l][d]
    return kernels.project(layer_input(parts), w_ih_t, b_ih)


def _start_args(weights, l, d, h_start, lengths, B, T):
    """The start state and lengths of a scan task: ``h_start`` is h0's piece (or None:
    zeros) or the previous scan task's (outputs, end state)."""
    w_hh_t = weights[l][d][2]
    if isinstance(h_start, tuple):
        h_start = h_start[1]
    if h_start is None:
        h_start = np.zeros((B, w_hh_t.shape[0]), w_hh_t.dtype)
    lengths = np.full(B, T, np.int64) if lengths is None else check_lengths(lengths, T)
    return h_start, lengths


def _fused_task(weights, l, d, reset_after, h_start, lengths, t0, T, *parts):
    # Projection and scan in one task, block by block through a reused buffer: the
    # projected inputs (3H numbers a step) are never allocated whole, nor do they travel.
    x = layer_input(parts)
    h_start, lengths = _start_args(weights, l, d, h_start, lengths, x.shape[1], T)
    return run_direction(x, *weights[l][d], h_start, lengths, t0, d == 1, reset_after)


def _scan_task(weights, l, d, reset_after, gi, h_start, lengths, t0, T):
    _, _, w_hh_t, b_hh = weights[l][d]
    h_start, lengths = _start_args(weights, l, d, h_start, lengths, gi.shape[1], T)
    return kernels.scan(gi, w_hh_t, b_hh, h_start, lengths, t0, d == 1, reset_after)


def _end_block(res):
    """A scan task's end state as a block of h_n."""
    return state_block(res[1])


def _outputs_block(*results):
    """The top layer's scan results of one chunk (one per direction) as an output block."""
    return layer_input([r[0] for r in results])


def _client_of(scheduler):
    """The dask.distributed client behind a scheduler function, or None."""
    owner = getattr(scheduler, "__self__", None)
    return owner if type(owner).__name__ == "Client" else None


def results_travel():
    """Whether the scheduler dask would use now (``dask.base.get_scheduler``: configured, or
    a distributed client's) runs tasks in other processes, so that a task's result travels
    to its dependents. Only the graph's speed depends on it, never its results."""
    import dask.multiprocessing
    from dask.base import get_scheduler

    scheduler = get_scheduler()
    return scheduler is dask.multiprocessing.get or _client_of(scheduler) is not None


def task_slots():
    """How many tasks that scheduler runs at once (threads of a distributed client's
    workers, else the configured or CPU count)."""
    import os

    import dask
    from dask.base import get_scheduler

    client = _client_of(get_scheduler())
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # a client that cannot answer (closed): count local CPUs
            pass
    return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)


# ----------------------------------------------------------------------------- graph
class ChunkedInputs:
    """The arguments of a graph builder in task form: ``x`` as a dask array (T, B, I) with
    one feature chunk, its time and batch chunks, and getters that give each task its piece
    of a per-state argument (h0, d_h_n) or of ``lengths``: a key when the argument is a dask
    array, else the NumPy slice itself. ``collections`` lists the dask inputs."""

    def __init__(self, x, call):
        import dask.array as da

        self.call = call
        self.x = self.canon(da.asarray(x)).astype(call.dtype).rechunk({2: -1})
        self.tchunks, self.bchunks = self.x.chunks[0], self.x.chunks[1]
        self.t_starts = np.concatenate([[0], np.cumsum(self.tchunks)[:-1]]).astype(int).tolist()
        self.b_edges = np.cumsum((0,) + self.bchunks)
        self.collections = [self.x]

    def canon(self, a):
        """(T, B, ...) layout of an x-like dask array."""
        if self.call.unbatched:
            return a[:, None]
        return a.transpose(1, 0, 2) if self.call.batch_first else a

    def per_state(self, a, H):
        """Getter ``(layer*direction, batch chunk) -> (B_j, H)`` piece of an (L*D, B, H) arg."""
        import dask.array as da

        if a is None:
            return lambda ld, j: None
        if self.call.unbatched:
            a = a[:, None, :]
        if is_dask(a):
            a = da.asarray(a).astype(self.call.dtype).rechunk(
                ((1,) * a.shape[0], self.bchunks, (H,)))
            self.collections.append(a)
            return lambda ld, j, n=a.name: (getitem, (n, ld, j, 0), 0)
        anp, e = np.asarray(a, dtype=self.call.dtype), self.b_edges
        return lambda ld, j: anp[ld, e[j]:e[j + 1]]

    def per_batch(self, lengths):
        """Getter ``batch chunk -> lengths piece`` (checked: in-task for dask lengths)."""
        import dask.array as da

        if lengths is None:
            return lambda j: None
        if is_dask(lengths):
            lengths = da.asarray(lengths).reshape(-1).rechunk((self.bchunks,))
            self.collections.append(lengths)
            return lambda j, n=lengths.name: (n, j)
        lnp, e = check_lengths(lengths, self.call.T), self.b_edges
        return lambda j: lnp[e[j]:e[j + 1]]

    def graph(self, layers, deps):
        """A HighLevelGraph of the inputs' graphs plus ``layers`` (with their ``deps``)."""
        from dask.highlevelgraph import HighLevelGraph

        graph = HighLevelGraph.merge(*[c.__dask_graph__() for c in self.collections])
        all_layers, all_deps = dict(graph.layers), dict(graph.dependencies)
        all_layers.update(layers)
        all_deps.update(deps)
        return HighLevelGraph(all_layers, all_deps)

    def arrays(self, hlg, x_like, state_like):
        """Dask arrays for an x-like layer (T, B, F) and a state-like layer (L*D, B, H),
        ``(name, F)`` and ``(name, L*D, H)``, back in the caller's layout (unbatched,
        batch_first)."""
        import dask.array as da

        meta = np.empty((0, 0, 0), self.call.dtype)
        (xn, F), (sn, LD, H) = x_like, state_like
        a = da.Array(hlg, xn, (self.tchunks, self.bchunks, (F,)), meta=meta)
        s = da.Array(hlg, sn, ((1,) * LD, self.bchunks, (H,)), meta=meta)
        if self.call.unbatched:
            return a[:, 0], s[:, 0]
        return (a.transpose(1, 0, 2) if self.call.batch_first else a), s

    def token_parts(self, h0=None, lengths=None, *more):
        """What identifies these inputs for ``tokenize``."""
        return ([c.name for c in self.collections],
                *[None if a is None or is_dask(a) else np.asarray(a) for a in (h0, lengths, *more)])


def gru_dask(x, p, *, h0=None, lengths=None, batch_first=False, method="scan"):
    """Lazy GRU over dask arrays (NumPy h0/lengths are accepted too); see :func:`gru`."""
    from dask.base import tokenize

    call = validate(x, p, h0=h0, lengths=lengths, batch_first=batch_first, method=method)
    pp, T = call.params, call.T
    L, D, H = pp.num_layers, pp.num_directions, pp.hidden_size

    inp = ChunkedInputs(x, call)
    x, tchunks, bchunks, t_starts = inp.x, inp.tchunks, inp.bchunks, inp.t_starts
    nt, nb = len(tchunks), len(bchunks)
    h0_key = inp.per_state(h0, H)
    len_key = inp.per_batch(lengths)
    collections = inp.collections

    tok = tokenize(x.name, pp, *inp.token_parts(h0, lengths), method)
    wname = f"gru-weights-{tok}"
    outname, hnname = f"gru-output-{tok}", f"gru-hn-{tok}"

    def names(l):  # key prefixes; each GRU layer is one graph layer (keeps it acyclic)
        return (f"gru-inproj-l{l}-{tok}", f"gru-scan-l{l}-{tok}", f"gru-state-l{l}-{tok}",
                f"gru-chunkout-l{l}-{tok}")

    layers = {wname: {wname: prepare_weights(pp)}}
    deps = {wname: set()}
    base = [c.name for c in collections]
    # With several batch chunks, their chains already keep the workers busy: each chunk's
    # projection goes into its scan task. With one, on threads, the projections are separate
    # tasks that run ahead of the chain in parallel (two chunks ahead at most, to bound
    # memory); on a distributed cluster moving them (3H numbers a step) to the chain's
    # worker costs more than computing them there, so they are fused there too.
    fuse = nb > 1 or results_travel()
    # How a scan task gets its start state: it takes its predecessor's (outputs, end state)
    # result directly, one scheduler round trip a hop, and the chain stays where its data
    # is. With several chains (batch chunks, directions) the first hop goes through a
    # ``gru-state`` task that picks out the small state instead: chains whose first chunks
    # happen to sit on one worker can still be spread over the workers there (a dependency
    # on a whole chunk's outputs would tie every chain to the worker its first task ran on),
    # and from then on each stays where it is.
    spread = nb * D > 1
    for l in range(L):
        inproj, scan_, state, chunkout = names(l)
        below = names(l - 1)[3] if l else x.name
        g_proj, g_scan, g_state, g_cout = {}, {}, {}, {}

        def link(d, j, i, k):  # the start of the chunk after chunk k (position i)
            return (state, d, j, k) if spread and i == 0 else (scan_, d, j, k)

        for j in range(nb):
            if l == 0:
                parts = lambda k: [(x.name, k, j, 0)]  # noqa: E731
            else:
                parts = lambda k: [(below, dd, j, k) for dd in range(D)]  # noqa: E731
            for d in range(D):
                prev = h0_key(l * D + d, j)
                order = list(range(nt - 1, -1, -1) if d else range(nt))
                for i, k in enumerate(order):
                    if fuse:
                        g_scan[(scan_, d, j, k)] = (_fused_task, wname, l, d, pp.reset_after,
                                                    prev, len_key(j), t_starts[k], T, *parts(k))
                    else:
                        after = link(d, j, i - 2, order[i - 2]) if i >= 2 else None
                        g_proj[(inproj, d, j, k)] = (_inproj_task, wname, l, d, after, *parts(k))
                        g_scan[(scan_, d, j, k)] = (
                            _scan_task, wname, l, d, pp.reset_after, (inproj, d, j, k),
                            prev, len_key(j), t_starts[k], T,
                        )
                    if l < L - 1:  # the top layer's outputs are the output blocks below
                        g_cout[(chunkout, d, j, k)] = (getitem, (scan_, d, j, k), 0)
                    if spread and i == 0:
                        g_state[(state, d, j, k)] = (getitem, (scan_, d, j, k), 1)
                    prev = link(d, j, i, k)
        # Projections, scans and states of a GRU layer form one graph layer (the chain runs
        # through them).
        g_scan.update(g_proj)
        g_scan.update(g_state)
        layers.update({scan_: g_scan, chunkout: g_cout})
        deps.update({scan_: {wname, below, *base[1:]}, chunkout: {scan_}})
    top = names(L - 1)[1]
    g_out = {}
    for j in range(nb):
        for k in range(nt):
            parts = [(top, d, j, k) for d in range(D)]
            g_out[(outname, k, j, 0)] = ((_outputs_block, parts[0]) if D == 1
                                         else (_outputs_block, *parts))
    g_hn = {}
    for l in range(L):
        for d in range(D):
            for j in range(nb):
                last = (names(l)[1], d, j, 0 if d else nt - 1)
                g_hn[(hnname, l * D + d, j, 0)] = (_end_block, last)
    layers.update({outname: g_out, hnname: g_hn})
    deps.update({outname: {top}, hnname: {names(l)[1] for l in range(L)}})
    return inp.arrays(inp.graph(layers, deps), (outname, D * H), (hnname, L * D, H))
