"""Parallel in time: one long sequence over many workers, exact to a tolerance.

Two methods, both built as one lazy dask graph per call, layer by layer (layer l+1's chunk k
takes layer l's *corrected* outputs of chunk k). Per layer l, direction d and batch chunk j
the time chunks are visited in traversal order q = 0..K-1 (chunk k = q forward, K-1-q
reversed); "predecessor" means the previous chunk in that order.

``method="speculative"``

* ``{cell}-spec-…`` (q): for q >= 1, warm a state up over the last ``warmup`` steps of the
  predecessor's input (at most the predecessor's length; for layers above the first a small
  ``{cell}-tail-…`` task cuts those steps out where they are, so that a whole chunk of outputs
  does not move), starting from h0 (zeros by default); then scan chunk q from it, in blocks
  of 32, 64, 128, ... steps, keeping the state after each block (checkpoints). Returns
  (outputs, (assumed start, end, checkpoints)). Chunk 0 starts from h0 itself, which is
  exact. All spec tasks run in parallel. ``{cell}-specstate-…`` (q) picks the small second
  part, so that the outputs stay where they were computed.
* ``{cell}-fix-…`` (group): verifies a group of consecutive chunks one after the other (the
  ``daskgru.verify-group`` option of :mod:`~daskgru.graph.options`: by default 1 on the
  threaded scheduler, 2 × the task slots, at most 8, where results travel between
  processes, so that the chain keeps pace with the spec tasks). For each: the *corrected* end state of its predecessor
  is its true start; rows (batch elements) whose max abs mismatch with the assumed start
  exceeds ``tol`` (or is not finite) are recomputed from the true start, rows off by less
  are verified by a short re-scan until their state equals a checkpoint bit for bit, and the
  rest keep the speculative result. It returns the corrected end state of its last chunk
  (and patches of re-scanned outputs, None where nothing changed), and the next fix task
  takes that result directly: one scheduler round trip a hop. A fix that keeps its chunks
  costs O(B·H) each, so the chain is cheap when the guesses were good; when every chunk is
  recomputed it *is* the sequential scan (worst case). A recomputed chunk changes its end
  state, and the next check compares against that, so one pass of the chain leaves every
  chunk consistent.
* the output blocks of the layer (``{cell}-chunkout-…``, ``{cell}-output-…`` on top): the
  chunk's speculative outputs with the fix-up's patches applied; they run where the spec
  task ran.

What ``tol`` decides: a chunk whose start was off by at most ``tol`` is verified by a
re-scan until it meets the speculative trajectory bit for bit, one off by more is recomputed;
either way, once the chain has run, every output is what the sequential scan gives, bit for
bit (the kernels are deterministic and row-invariant). ``info["max_mismatch"]`` reports the
largest start mismatch that was verified rather than recomputed.

``method="newton"`` (multiple shooting; the operator of DEER, Lim et al. 2023)

* Boundary states s_0..s_{K-1} (s_0 = h0, exact; guesses 0 for the rest).
* A sweep: ``{cell}-newton-eval-…`` (q) scans chunk q from s_q and propagates the tangent
  (the cell's ``tangent``) giving f_q(s_q) and J_q = df_q/ds; the affine maps
  s_{q+1} = J_q s_q + (f_q(s_q) - J_q s_q) are composed with a Hillis–Steele prefix scan
  (``{cell}-newton-compose-…``, log2 K levels of compose tasks), which gives the new boundary
  states; ``{cell}-newton-collect-…`` measures the update and decides. In exact arithmetic
  after i sweeps s_0..s_i are exact, so K-1 sweeps make all K start states exact.
* The graph holds ``K - 1`` sweeps (static graphs cannot loop); once the update is below
  ``tol`` the later sweeps' tasks return at once. Damping: states are clipped to
  the box the cell's states cannot leave (:meth:`~daskgru.cells.Cell.clip`: for a GRU
  [-R, R], R = max(1, max|h0|); for an LSTM that box for h, and none for c). Divergence: if the states
  turn non-finite, or the update grows in two sweeps in a row, sweeping stops.
* Final pass: every chunk is scanned from its Newton start state (``{cell}-spec-…``) and the
  same fix-up chain as above checks each start against the corrected end of its
  predecessor. So Newton is never silently wrong either: where it diverged or did not reach
  ``tol``, the fix chain recomputes (the sequential fallback).

NumPy input builds the same graph, with time chunks of ``NUMPY_CHUNK`` steps, and computes
it with the synchronous scheduler (deterministic, no parallelism); pass a dask array chunked
along time to run chunks in parallel.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..layout import check_lengths, output
from ..cells import project
from ..eager import chunk_input, run_direction
from .builder import Graph, chunk_steps, start_state, state_block
from .options import SPEC_CHUNKS_PER_SLOT

__all__ = ["build", "run_numpy", "DEFAULT_WARMUP", "DEFAULT_TOL", "NUMPY_CHUNK"]

DEFAULT_WARMUP = 512
DEFAULT_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-8}
NUMPY_CHUNK = 65536
# A row's tangent is dropped once all its entries are below tol * this (it has forgotten
# its start state); the Jacobian error that leaves is far below what the check accepts.
TANGENT_CUTOFF = 1e-3
# Newton stops (and leaves the rest to the fix-up chain) after the update grew this often
# in a row.
GROWTH_PATIENCE = 2
# Spec tasks record their state every this many steps at most (checkpoints for the fix-up).
MAX_BLOCK = 8192


class SpecStates(NamedTuple):
    """What the fix-up needs of a spec task: the state it assumed at the chunk's start,
    its end state, and the state after every block but the last (checkpoints)."""

    start: np.ndarray
    end: np.ndarray
    checkpoints: list


class SpecResult(NamedTuple):
    out: np.ndarray
    states: SpecStates


class FixResult(NamedTuple):
    """A fix task's result: the corrected end state of its group's last chunk, per chunk
    the patches of its outputs (None where the speculative ones stand) and its
    statistics."""

    end: np.ndarray
    patches: list
    stats: list


class Patch(NamedTuple):
    """Re-scanned outputs of some rows: local steps a..b-1 of ``rows``."""

    a: int
    b: int
    rows: np.ndarray
    out: np.ndarray


class ChunkFix(NamedTuple):
    """What checking one chunk gives: its corrected end state, its patches (None where the
    speculative outputs stand) and its statistics."""

    end: np.ndarray
    patches: list
    stats: "FixStats"


class AffineMap(NamedTuple):
    """s -> J s + c; ``J`` None marks a constant map (onto ``c``)."""

    J: object
    c: np.ndarray


class Guess(NamedTuple):
    """A Newton sweep's start state of a chunk, and whether sweeping is done."""

    state: np.ndarray
    done: bool


class FixStats(NamedTuple):
    accepted: float      # largest start mismatch verified rather than recomputed
    rows: int            # rows recomputed
    steps: int           # steps re-scanned to verify


# ----------------------------------------------------------------------------- helpers
def _row_mismatch(a, b):
    """Per row, max abs difference; equal values (also both NaN or same inf) count as 0,
    any other non-finite difference as inf."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    diff[same] = 0.0
    diff[~np.isfinite(diff)] = np.inf
    return diff.max(axis=1) if diff.shape[1] else np.zeros(diff.shape[0])


def _blocks(n):
    """The blocks (start, length) in traversal order in which a chunk of n steps is scanned
    by spec tasks and re-scanned by the fix-up: 32 steps, then twice as many each time (at
    most ``MAX_BLOCK``). The state after every block but the last is a checkpoint."""
    pos, m = 0, 32
    while pos < n:
        yield pos, min(m, n - pos)
        pos += m
        m = min(2 * m, MAX_BLOCK)


def _span(n, pos, m, reverse):
    """Local steps a..b of block (pos, m) of a chunk of n steps in traversal order."""
    return (n - pos - m, n - pos) if reverse else (pos, pos + m)


# ----------------------------------------------------------------------------- tasks
def _tail_task(ps, l, reverse, w, *parts):
    """The last ``w`` steps of a chunk's input in traversal order (first w when reversed)."""
    x = chunk_input(ps, l, parts)
    return np.ascontiguousarray(x[:w] if reverse else x[x.shape[0] - w:])


def _spec_task(ps, where, start, tail, tail_where, tail_mask, h0, lengths, mask, *parts):
    """Scan a chunk from a guessed start: ``start`` (a (state, done) pair from Newton), or a
    state warmed up over ``tail`` from h0, or h0 itself. The chunk is scanned block by block
    (``_blocks``; same bits as one call), keeping the checkpoints."""
    cell, w = ps.cells[where.l], ps.weights[where.l][where.d]
    x = chunk_input(ps, where.l, parts)
    n, B = x.shape[:2]
    if start is not None:
        h = np.array(start.state, dtype=w.w_hh.dtype)
    else:
        h = start_state(ps, where, h0, B)
        if tail is not None and tail.shape[0]:
            if tail_mask is not None:
                tail_mask = tail_mask[:tail.shape[0]] if where.d else tail_mask[-tail.shape[0]:]
            tsteps = chunk_steps(tail_where, lengths, tail_mask, B, tail.shape[0])
            _, h = run_direction(cell, w, tail, h, tsteps)
    steps = chunk_steps(where, lengths, mask, B, n)
    out = output((n, B, w.hidden_size), w.w_hh.dtype)
    end, checkpoints = h, []
    for pos, m in _blocks(n):
        a, b = _span(n, pos, m, steps.reverse)
        _, end = run_direction(cell, w, x[a:b], end, steps.block(a, b), out=out[a:b])
        if pos + m < n:
            checkpoints.append(end)
    return SpecResult(out, SpecStates(h, end, checkpoints))


def _spec_states(spec):
    """The small part of a spec result."""
    return spec.states


def _scan_rows(ps, where, x, rows, h, steps, a, b):
    """Scan local steps a..b-1 (in traversal order) of a chunk for some rows."""
    return run_direction(ps.cells[where.l], ps.weights[where.l][where.d],
                         np.ascontiguousarray(x[a:b][:, rows]), h,
                         steps.rows(rows).block(a, b))


def _splice(ps, where, x, rows, h, steps, spec):
    """Re-scan ``rows`` from their true start ``h`` block by block (``_blocks``) until each
    row's state equals the speculative state at a block's end (a checkpoint) bit for bit:
    from there on the speculative result is what the sequential scan gives (the kernels are
    deterministic). Past a sequence's end the state stays put, so rows meet only where the
    trajectories met at a valid step. Returns the rows that never met (fully recomputed),
    their end states, the number of steps scanned and the patches (a, b, rows, outputs) of
    the re-scanned steps."""
    n = x.shape[0]
    scanned, patches = 0, []
    pending = np.asarray(rows)
    for i, (pos, m) in enumerate(_blocks(n)):
        if not pending.size:
            break
        a, b = _span(n, pos, m, steps.reverse)
        o, h = _scan_rows(ps, where, x, pending, h, steps, a, b)
        scanned += m
        patches.append(Patch(a, b, pending, o))
        ref = spec.checkpoints[i] if pos + m < n else spec.end
        met = np.all(h == ref[pending], axis=1)
        pending, h = pending[~met], h[~met]
    return pending, h, scanned, patches


def _fix_chunk(ps, where, tol, true_start, spec, lengths, mask, *parts):
    """Check a chunk's assumed start against the true one (the corrected end of its
    predecessor) and repair its speculative result.

    Rows (batch elements) off by more than ``tol`` (or by anything non-finite) are
    recomputed from the true start. Rows off by less are verified: re-scanned from the true
    start until the trajectories meet bit for bit (usually within tens of steps), falling back
    to a full recompute where they never meet (chaotic dynamics). ``true_start`` None: the
    assumed start was exact (chunk 0). Returns a :class:`ChunkFix`.
    """
    if true_start is None:
        return ChunkFix(spec.end, None, FixStats(0.0, 0, 0))
    B = spec.start.shape[0]
    # Rows whose valid steps all lie before this chunk: the state passes through and the
    # outputs are padding (0) already.
    past = (np.zeros(B, bool) if lengths is None
            else check_lengths(lengths, where.T) <= where.t0)
    delta = _row_mismatch(spec.start, true_start)
    exact = (delta == 0) & ~past
    bad = ~(delta <= tol) & ~past
    check = ~bad & ~exact & ~past
    end = np.array(spec.end, copy=True)
    end[past] = true_start[past]
    accepted = float(delta[check | exact].max()) if (check | exact).any() else 0.0
    if not (bad.any() or check.any()):
        return ChunkFix(end, None, FixStats(accepted, 0, 0))
    x = chunk_input(ps, where.l, parts)
    n = x.shape[0]
    steps = chunk_steps(where, lengths, mask, B, n)
    scanned, patches = 0, []
    failed = np.zeros(0, np.int64)
    if check.any():
        rows = np.flatnonzero(check)
        failed, h_failed, scanned, patches = _splice(ps, where, x, rows, true_start[rows],
                                                     steps, spec)
        end[failed] = h_failed  # re-scanned to the chunk's end from the true start
    if bad.any():
        rows = np.flatnonzero(bad)
        o, h = _scan_rows(ps, where, x, rows, true_start[rows], steps, 0, n)
        patches.append(Patch(0, n, rows, o))
        end[rows] = h
    return ChunkFix(end, patches or None, FixStats(accepted, int(bad.sum() + failed.size),
                                                   scanned))


def _fix_task(ps, tol, prev, group):
    """Verify a group of consecutive chunks (traversal order) one after the other: the
    first against the corrected end state in its predecessor's fix result ``prev`` (None:
    the group starts at chunk 0, whose start is exact), each next one against the corrected
    end of the one before. ``group`` holds per chunk (where, spec states, lengths, mask,
    input parts). The result holds only small things unless something was repaired, so
    the next fix task in the chain receives little."""
    true = None if prev is None else prev.end
    patches, stats = [], []
    for where, spec, lengths, mask, parts in group:
        fix = _fix_chunk(ps, where, tol, true, spec, lengths, mask, *parts)
        true = fix.end
        patches.append(fix.patches)
        stats.append(fix.stats)
    return FixResult(true, patches, stats)


def _select(spec, fix, i):
    """A chunk's final outputs (member ``i`` of its fix group): the speculative ones, with
    the fix-up's patches applied where it re-scanned."""
    patches = fix.patches[i]
    if patches is None:
        return spec.out
    out = spec.out.copy()
    for p in patches:
        out[p.a:p.b, p.rows] = p.out
    return out


def _fix_end_block(fix):
    return state_block(fix.end)


# Newton ---------------------------------------------------------------------------------
def _newton_init(ps, where, h0, K, B):
    s0 = start_state(ps, where, h0, B)
    states = [s0] + [np.zeros_like(s0) for _ in range(K - 1)]
    return dict(states=states, done=K <= 1, converged=K <= 1, diverged=False,
                update=math.inf, growth=0, sweeps=0, updates=[])


def _newton_pick(collect, q):
    return Guess(collect["states"][q], collect["done"])


def _newton_const(collect):
    """Element 0 of the prefix scan: the constant map onto s_0."""
    return None if collect["done"] else AffineMap(None, collect["states"][0])


def _newton_eval(ps, where, cutoff, bstate, lengths, mask, *parts):
    """f_q(s_q) and J_q for one chunk, as the affine map s -> J s + (f - J s_q)."""
    if bstate.done:
        return None
    s = bstate.state
    cell, w = ps.cells[where.l], ps.weights[where.l][where.d]
    x = chunk_input(ps, where.l, parts)
    steps = chunk_steps(where, lengths, mask, x.shape[1], x.shape[0])
    f, J = cell.tangent(w, project(w, x), s, steps, cutoff)
    return AffineMap(J, f - np.einsum("bij,bj->bi", J, s))


def _compose(later, earlier):
    """later ∘ earlier for affine maps."""
    if later is None or earlier is None:
        return None
    if later.J is None:
        return later
    c = np.einsum("bij,bj->bi", later.J, earlier.c) + later.c
    return AffineMap(None if earlier.J is None else np.matmul(later.J, earlier.J), c)


def _newton_collect(cell, tol, prev, *prefix):
    """New boundary states from the prefix scan: clip, measure the update, decide."""
    if prev["done"] or any(p is None for p in prefix):
        return prev
    s0 = prev["states"][0]
    states = [s0] + [cell.clip(p.c, s0) for p in prefix[1:]]
    new = dict(prev, sweeps=prev["sweeps"] + 1)
    if not all(np.isfinite(s).all() for s in states):
        new.update(done=True, diverged=True)  # keep the last finite states
        return new
    update = max((float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0)
                 for a, b in zip(states, prev["states"]))
    growth = prev["growth"] + 1 if update > prev["update"] else 0
    new.update(states=states, update=update, growth=growth, updates=prev["updates"] + [update])
    if update <= tol:
        new.update(done=True, converged=True)
    elif growth >= GROWTH_PATIENCE:
        new.update(done=True, diverged=True)
    return new


def _newton_summary(collect):
    return dict(sweeps=collect["sweeps"], converged=collect["converged"],
                diverged=collect["diverged"], updates=collect["updates"])


def _info_task(meta, nchains, K, nfix, *parts):
    """Sum up: parts are the ``nfix`` fix (group) results of all chains, then one Newton
    summary per chain."""
    stats = [st for f in parts[:nfix] for st in f.stats]
    newton = parts[nfix:]
    info = dict(meta)
    info.update(
        chunks=K,
        chains=nchains,
        chunks_recomputed=sum(int(st.rows > 0) for st in stats),
        rows_recomputed=sum(st.rows for st in stats),
        steps_verified=sum(st.steps for st in stats),
        max_mismatch=max([st.accepted for st in stats] + [0.0]),
    )
    if meta["method"] == "speculative":
        info["sweeps"] = 1
    else:
        info["sweeps"] = max([n["sweeps"] for n in newton] + [0])
        info["converged"] = all(n["converged"] for n in newton)
        info["diverged"] = any(n["diverged"] for n in newton)
        info["fallback"] = info["chunks_recomputed"] > 0
        info["updates"] = [n["updates"] for n in newton]
    return info


# ----------------------------------------------------------------------------- graph
def run_numpy(x, call, states, lengths, mask, method, warmup, tol, model=None):
    """NumPy input: the same graph over time chunks of ``NUMPY_CHUNK`` steps, computed
    with the synchronous scheduler."""
    import dask
    import dask.array as da

    x = np.asarray(x)
    taxis = 1 if (call.batch_first and not call.unbatched) else 0
    xd = da.from_array(x, chunks={taxis: NUMPY_CHUNK}, name=False)
    out, finals, info = build(xd, call, states, lengths, mask, method, warmup, tol, model)
    return dask.compute(out, finals, info, scheduler="synchronous")


def _newton_chain(g, tasks, l, d, j, cutoff, tol):
    """The Newton sweeps of one chain; returns the key of its summary and ``start(q)``,
    the key of the chunk start states they give."""
    K, w = g.nt, g.weights.key
    order = g.order(d)
    key = lambda stage, *i: g.key(f"newton-{stage}", l, d, j, *i)  # noqa: E731
    cell = g.stack.layers[l].cell
    tasks[key("collect", 0)] = (_newton_init, g.first_weights(l, 0), g.where(l, d, order[0]),
                                g.state(l, d, j), K, int(g.bchunks[j]))
    for i in range(1, K):
        prevc = key("collect", i - 1)
        for q in range(K):
            tasks[key("state", i - 1, q)] = (_newton_pick, prevc, q)
        elems = [key("const", i)]
        tasks[elems[0]] = (_newton_const, prevc)
        for q in range(K - 1):
            k = order[q]
            ek = key("eval", i, q)
            tasks[ek] = (_newton_eval, w, g.where(l, d, k), cutoff, key("state", i - 1, q),
                         g.lengths(j), g.mask(j, k), *g.parts(l, j, k))
            elems.append(ek)
        off, lev = 1, 0  # Hillis–Steele inclusive prefix scan of compositions
        while off < K:
            nxt = []
            for q in range(K):
                if q >= off:
                    ck = key("compose", i, lev, q)
                    tasks[ck] = (_compose, elems[q], elems[q - off])
                    nxt.append(ck)
                else:
                    nxt.append(elems[q])
            elems, off, lev = nxt, off * 2, lev + 1
        tasks[key("collect", i)] = (_newton_collect, cell, tol, prevc, *elems)
    last = key("collect", K - 1)
    for q in range(K):
        tasks[key("state", K - 1, q)] = (_newton_pick, last, q)
    tasks[key("summary")] = (_newton_summary, last)
    return key("summary"), lambda q: key("state", K - 1, q)


def build(x, call, states, lengths, mask, method, warmup, tol, model=None):
    """The lazy graph of a parallel-in-time call; returns (output, finals, info)."""
    dt = call.dtype
    tol = float(DEFAULT_TOL[dt] if tol is None else tol)
    warmup = int(DEFAULT_WARMUP if warmup is None else warmup)
    if method == "newton":
        for lay in call.stack.layers:
            if not lay.cell.has_tangent:
                raise ValueError(f"method='newton' needs the tangent of the "
                                 f"{lay.cell.name.upper()} cell, which it does not have; "
                                 "use method='speculative'")
    # speculative: small chunks merged, keeping about SPEC_CHUNKS_PER_SLOT a task slot
    spec = method == "speculative"
    g = Graph(x, call, states, lengths, mask, kind=method, extra=(warmup, tol), model=model,
              merge=spec, min_chunks_per_slot=SPEC_CHUNKS_PER_SLOT if spec else 0)
    K = g.nt
    G = g.group  # changes what a fix key holds, so it is in the token
    w = g.weights.key
    cutoff = tol * TANGENT_CUTOFF
    fixes, summaries, chains = [], [], []
    for l in range(call.stack.num_layers):
        tasks, fix_of = {}, {}
        for d, j in g.chains(l):
            order = g.order(d)
            key = lambda stage, *i: g.key(stage, l, d, j, *i)  # noqa: E731
            start = None
            if method == "newton":
                summary, start = _newton_chain(g, tasks, l, d, j, cutoff, tol)
                summaries.append(summary)
            for q, k in enumerate(order):
                tail, tail_where, tail_mask = None, None, None
                if method == "speculative" and q and warmup:
                    pk = order[q - 1]
                    n = min(warmup, int(g.tchunks[pk]))
                    tail = (_tail_task, w, l, d == 1, n, *g.edge_parts(l, j, pk, n, d == 1))
                    if l:  # a whole chunk of outputs is worth a task not to move
                        tasks[key("tail", q)] = tail
                        tail = key("tail", q)
                    t0 = g.t_starts[pk] if d else g.t_starts[pk] + int(g.tchunks[pk]) - n
                    tail_where = g.where(l, d, pk)._replace(t0=t0)
                    tail_mask = g.mask(j, pk)
                # (Newton's spec tasks wait for its states: its first task has the weights)
                wq = g.weights.key if method == "newton" else g.first_weights(l, q)
                tasks[key("spec", q)] = (_spec_task, wq, g.where(l, d, k),
                                         None if start is None else start(q), tail, tail_where,
                                         tail_mask, g.state(l, d, j), g.lengths(j), g.mask(j, k),
                                         *g.parts(l, j, k))
                tasks[key("specstate", q)] = (_spec_states, key("spec", q))
            for g0 in range(0, K, G):
                qs = range(g0, min(g0 + G, K))
                fix = key("fix", g0 // G)
                # lists, not tuples: dask looks for keys in lists
                group = [[g.where(l, d, order[q]), key("specstate", q), g.lengths(j),
                          g.mask(j, order[q]), g.parts(l, j, order[q])] for q in qs]
                tasks[fix] = (_fix_task, w, tol, key("fix", g0 // G - 1) if g0 else None, group)
                fixes.append(fix)
                for i, q in enumerate(qs):
                    fix_of[(d, j, order[q])] = (key("spec", q), fix, i)
        chain = g.chain_layer(l, method, tasks)
        chains.append(chain)
        g.add_outputs(l, chain, lambda d, j, k, f=fix_of: (_select, *f[(d, j, k)]))
        g.add_finals(l, chain, lambda d, j: (_fix_end_block, g.key("fix", l, d, j, (K - 1) // G)))
    meta = dict(method=method, tol=tol, graph=g.info())
    if method == "speculative":
        meta["warmup"] = warmup
    nchains = sum(len(g.chains(l)) for l in range(call.stack.num_layers))
    name = f"{g.root}-info-{g.token}"
    info = g.add(name, {name: (_info_task, meta, nchains, K, len(fixes), *fixes, *summaries)},
                 *chains)
    out, finals = g.result()
    return out, finals, info
