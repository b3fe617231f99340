"""Parallel in time: one long sequence over many workers, exact to a tolerance.

Two methods, both built as one lazy dask graph per call, layer by layer (layer l+1's chunk k
takes layer l's *corrected* outputs of chunk k). Per layer l, direction d and batch chunk j
the time chunks are visited in traversal order q = 0..K-1 (chunk k = q forward, K-1-q
reversed); "predecessor" means the previous chunk in that order.

``method="speculative"``

* ``gru-spec-…`` (q): for q >= 1, warm a state up over the last ``warmup`` steps of the
  predecessor's input (at most the predecessor's length; for layers above the first a small
  ``gru-tail-…`` task cuts those steps out where they are, so that a whole chunk of outputs
  does not move), starting from h0 (zeros by default); then scan chunk q from it, in blocks
  of 32, 64, 128, ... steps, keeping the state after each block (checkpoints). Returns
  (outputs, (assumed start, end, checkpoints)). Chunk 0 starts from h0 itself, which is
  exact. All spec tasks run in parallel. ``gru-specstate-…`` (q) picks the small second
  part, so that the outputs stay where they were computed.
* ``gru-fix-…`` (group): verifies ``verify_group(K)`` consecutive chunks one after the other
  (1 on the threaded scheduler, 2 × the task slots, at most 8, where results travel between
  processes; see ``verify_group``). For each: the *corrected* end state of its predecessor
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
* ``gru-select-…`` (q): the chunk's outputs, speculative with the patches applied; it runs
  where the spec task ran (for the top layer of a unidirectional GRU these are the
  ``gru-output-…`` blocks themselves).

What ``tol`` decides: a chunk whose start was off by at most ``tol`` is verified by a
re-scan until it meets the speculative trajectory bit for bit, one off by more is recomputed;
either way, once the chain has run, every output is what the sequential scan gives, bit for
bit (the kernels are deterministic and row-invariant). ``info["max_mismatch"]`` reports the
largest start mismatch that was verified rather than recomputed.

``method="newton"`` (multiple shooting; the operator of DEER, Lim et al. 2023)

* Boundary states s_0..s_{K-1} (s_0 = h0, exact; guesses 0 for the rest).
* A sweep: ``gru-newton-eval-…`` (q) scans chunk q from s_q and propagates the tangent
  (``kernels_tangent.tangent_scan``) giving f_q(s_q) and J_q = df_q/ds; the affine maps
  s_{q+1} = J_q s_q + (f_q(s_q) - J_q s_q) are composed with a Hillis–Steele prefix scan
  (``gru-newton-compose-…``, log2 K levels of compose tasks), which gives the new boundary
  states; ``gru-newton-collect-…`` measures the update and decides. In exact arithmetic
  after i sweeps s_0..s_i are exact, so K-1 sweeps make all K start states exact.
* The graph holds ``K - 1`` sweeps (static graphs cannot loop); once the update is below
  ``tol`` the later sweeps' tasks return at once. Damping: states are clipped to
  [-R, R], R = max(1, max|h0|) (a GRU state never leaves that box). Divergence: if the states
  turn non-finite, or the update grows in two sweeps in a row, sweeping stops.
* Final pass: every chunk is scanned from its Newton start state (``gru-spec-…``) and the
  same fix-up chain as above checks each start against the corrected end of its
  predecessor. So Newton is never silently wrong either: where it diverged or did not reach
  ``tol``, the fix chain recomputes (the sequential fallback).

NumPy input builds the same graph, with time chunks of ``NUMPY_CHUNK`` steps, and computes
it with the synchronous scheduler (deterministic, no parallelism); pass a dask array chunked
along time to run chunks in parallel.
"""
from __future__ import annotations

import math

import numpy as np

from . import kernels
from .scan import ChunkedInputs, results_travel, task_slots
from .core import (check_lengths, is_dask, layer_input, prepare_weights, run_direction,
                   state_block, validate)

__all__ = ["gru_parallel", "scan_info", "DEFAULT_WARMUP", "DEFAULT_TOL", "NUMPY_CHUNK"]

DEFAULT_WARMUP = 512
DEFAULT_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-8}
NUMPY_CHUNK = 65536
# A row's tangent is dropped once all its entries are below tol * this (it has forgotten
# its start state); the Jacobian error that leaves is far below what the check accepts.
TANGENT_CUTOFF = 1e-3
# Newton stops (and leaves the rest to the fix-up chain) after the update grew this often
# in a row.
GROWTH_PATIENCE = 2
# At most this many chunks per fix task by default (their inputs move to one worker).
MAX_VERIFY_GROUP = 8
# Spec tasks record their state every this many steps at most (checkpoints for the fix-up).
MAX_BLOCK = 8192


def verify_group(K):
    """How many consecutive chunks one ``gru-fix`` task verifies (1..K).

    On a cluster a task that depends on a speculative result can start only once its
    worker is between two tasks, and the next fix task only a scheduler round trip after
    that; so a fix task runs at most once per speculative task on its worker. With P task
    slots finishing P chunks at a time, a chain of single-chunk fix tasks falls behind and
    is left with about K (1 - 1/P) hops (milliseconds each) after the last speculative task.
    A fix task that verifies 2P chunks keeps pace with room to spare; it receives the
    chunks' states and inputs (for re-scans), not their outputs. Where results stay in one
    process (threaded or synchronous scheduler) a dependent runs at once, and groups of 1
    are best. Set ``dask.config.set({"daskgru.verify-group": n})`` to choose.
    """
    import dask

    g = dask.config.get("daskgru.verify-group", None)
    if g is None:
        g = min(MAX_VERIFY_GROUP, 2 * task_slots()) if results_travel() else 1
    return max(1, min(int(g), K))


def scan_info(lazy):
    """The info of method="scan" (nothing speculative happened)."""
    info = dict(method="scan", sweeps=0, chunks=None, chunks_recomputed=0, max_mismatch=0.0)
    if lazy:
        import dask

        return dask.delayed(info, traverse=False)
    return info


# ----------------------------------------------------------------------------- helpers
def _lengths(lengths, T, B):
    return np.full(B, T, np.int64) if lengths is None else check_lengths(lengths, T)


def _start(h0, B, H, dtype):
    return np.zeros((B, H), dtype) if h0 is None else np.array(h0, dtype=dtype).reshape(B, H)


def _row_mismatch(a, b):
    """Per row, max abs difference; equal values (also both NaN or same inf) count as 0,
    any other non-finite difference as inf."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    diff[same] = 0.0
    diff[~np.isfinite(diff)] = np.inf
    return diff.max(axis=1) if diff.shape[1] else np.zeros(diff.shape[0])


# ----------------------------------------------------------------------------- tasks
def _tail_task(reverse, w, *parts):
    """The last ``w`` steps of a chunk's input in traversal order (first w when reversed)."""
    x = layer_input(parts)
    return np.ascontiguousarray(x[:w] if reverse else x[x.shape[0] - w:])


def _blocks(n):
    """The blocks (start, length) in traversal order in which a chunk of n steps is scanned
    by spec tasks and re-scanned by the fix-up: 32 steps, then twice as many each time (at
    most ``MAX_BLOCK``). The state after every block but the last is a checkpoint."""
    pos, m = 0, 32
    while pos < n:
        yield pos, min(m, n - pos)
        pos += m
        m = min(2 * m, MAX_BLOCK)


def _scan_blocks(w, x, h, lengths, t0, reverse, reset_after):
    """Scan chunk x from h block by block (``_blocks``); returns (out, end, checkpoints):
    the state after each block but the last. Same bits as one call (time-chunk invariance)."""
    n = x.shape[0]
    out = np.empty((n, x.shape[1], w[2].shape[0]), w[2].dtype)
    checkpoints = []
    for pos, m in _blocks(n):
        a, b = (n - pos - m, n - pos) if reverse else (pos, pos + m)
        _, h = run_direction(x[a:b], *w, h, lengths, t0 + a, reverse, reset_after, out=out[a:b])
        if pos + m < n:
            checkpoints.append(h)
    return out, h, checkpoints


def _spec_task(weights, l, d, reset_after, start, tail, tail_t0, h0, lengths, t0, T, *parts):
    """Scan a chunk from a guessed start: ``start`` (a (state, done) pair from Newton), or a
    state warmed up over ``tail`` from h0, or h0 itself. Returns (out, (assumed start, end,
    checkpoints)); the second part is all the fix-up needs."""
    w = weights[l][d]
    w_hh_t = w[2]
    x = layer_input(parts)
    B, H = x.shape[1], w_hh_t.shape[0]
    lengths = _lengths(lengths, T, B)
    if start is not None:
        h = np.array(start[0], dtype=w_hh_t.dtype)
    else:
        h = _start(h0, B, H, w_hh_t.dtype)
        if tail is not None and tail.shape[0]:
            _, h = run_direction(tail, *w, h, lengths, tail_t0, d == 1, reset_after)
    out, end, checkpoints = _scan_blocks(w, x, h, lengths, t0, d == 1, reset_after)
    return out, (h, end, checkpoints)


def _spec_states(spec):
    """The small part of a spec result: (assumed start, end, checkpoints)."""
    return spec[1]


def _scan_rows(weights, l, d, reset_after, x, rows, h, lengths, t0, a, b):
    """Scan local steps a..b-1 (in traversal order) of a chunk for some rows."""
    return run_direction(np.ascontiguousarray(x[a:b][:, rows]), *weights[l][d], h,
                         lengths[rows], t0 + a, d == 1, reset_after)


def _splice(weights, l, d, reset_after, x, rows, h, lengths, t0, checkpoints, spec_end):
    """Re-scan ``rows`` from their true start ``h`` block by block (``_blocks``) until each
    row's state equals the speculative state at a block's end (a checkpoint) bit for bit:
    from there on the speculative result is what the sequential scan gives (the kernels are
    deterministic). Past a sequence's end the state stays put, so rows meet only where the
    trajectories met at a valid step. Returns the rows that never met (fully recomputed),
    their end states, the number of steps scanned and the patches (a, b, rows, outputs) of
    the re-scanned steps."""
    n = x.shape[0]
    reverse = d == 1
    steps, patches = 0, []
    pending = np.asarray(rows)
    for i, (pos, m) in enumerate(_blocks(n)):
        if not pending.size:
            break
        a, b = (n - pos - m, n - pos) if reverse else (pos, pos + m)
        o, h = _scan_rows(weights, l, d, reset_after, x, pending, h, lengths, t0, a, b)
        steps += m
        patches.append((a, b, pending, o))
        spec = checkpoints[i] if pos + m < n else spec_end
        met = np.all(h == spec[pending], axis=1)
        pending, h = pending[~met], h[~met]
    return pending, h, steps, patches


def _fix_task(weights, l, d, reset_after, tol, prev, specs, lengths, t0s, T, parts):
    """Verify a group of consecutive chunks (traversal order) one after the other: the
    first against the corrected end state in its predecessor's fix result ``prev`` (None:
    the group starts at chunk 0, whose start is exact), each next one against the corrected
    end of the one before. ``specs`` are the chunks' ``_spec_states`` (states only, not
    outputs). Returns (corrected end state of the group's last chunk, per chunk the patches
    of its outputs or None where the speculative ones stand, per chunk (largest accepted
    mismatch, rows recomputed, steps re-scanned)); the result holds only small things
    unless something was repaired, so the next fix task in the chain receives little."""
    true = None if prev is None else prev[0]
    outs, stats = [], []
    for spec, t0, p in zip(specs, t0s, parts):
        true, out, *st = _fix_chunk(weights, l, d, reset_after, tol, true, spec, lengths, t0,
                                    T, *p)
        outs.append(out)
        stats.append(tuple(st))
    return true, outs, stats


def _fix_chunk(weights, l, d, reset_after, tol, true_start, spec, lengths, t0, T, *parts):
    """Check a chunk's assumed start against the true one (the corrected end of its
    predecessor) and repair its speculative result.

    Rows (batch elements) off by more than ``tol`` (or by anything non-finite) are
    recomputed from the true start. Rows off by less are verified: re-scanned from the true
    start until the trajectories meet bit for bit (usually within tens of steps), falling back
    to a full recompute where they never meet (chaotic dynamics). ``true_start`` None: the
    assumed start was exact (chunk 0). Returns (end state, patches, largest accepted
    mismatch, rows recomputed, steps re-scanned to verify); the patches (a, b, rows, outputs
    of steps a..b-1 of those rows) are None where the speculative outputs stand unchanged.
    """
    assumed, spec_end, checkpoints = spec
    if true_start is None:
        return spec_end, None, 0.0, 0, 0
    B = assumed.shape[0]
    lengths = _lengths(lengths, T, B)
    # Rows whose valid steps all lie before this chunk: state passes through, outputs are 0
    # already (both directions skip steps >= length).
    past = lengths <= t0
    delta = _row_mismatch(assumed, true_start)
    exact = (delta == 0) & ~past
    bad = ~(delta <= tol) & ~past
    check = ~bad & ~exact & ~past
    end = np.array(spec_end, copy=True)
    end[past] = true_start[past]
    accepted = float(delta[check | exact].max()) if (check | exact).any() else 0.0
    if not (bad.any() or check.any()):
        return end, None, accepted, 0, 0
    x = layer_input(parts)
    n = x.shape[0]
    steps, patches = 0, []
    failed = np.zeros(0, np.int64)
    if check.any():
        rows = np.flatnonzero(check)
        failed, h_failed, steps, patches = _splice(weights, l, d, reset_after, x, rows,
                                                   true_start[rows], lengths, t0,
                                                   checkpoints, spec_end)
        end[failed] = h_failed  # re-scanned to the chunk's end from the true start
    if bad.any():
        rows = np.flatnonzero(bad)
        o, h = _scan_rows(weights, l, d, reset_after, x, rows, true_start[rows], lengths, t0,
                          0, n)
        patches.append((0, n, rows, o))
        end[rows] = h
    return end, (patches or None), accepted, int(bad.sum() + failed.size), steps


def _select(spec, fix, i):
    """A chunk's final outputs (member ``i`` of its fix group): the speculative ones, with
    the fix-up's patches applied where it re-scanned."""
    patches = fix[1][i]
    if patches is None:
        return spec[0]
    out = spec[0].copy()
    for a, b, rows, o in patches:
        out[a:b, rows] = o
    return out


def _fix_end_block(fix):
    return state_block(fix[0])


# Newton ---------------------------------------------------------------------------------
def _newton_init(h0, K, B, H, dtype):
    s0 = _start(h0, B, H, dtype)
    bound = max(1.0, float(np.abs(s0).max())) if s0.size else 1.0
    states = [s0] + [np.zeros((B, H), dtype) for _ in range(K - 1)]
    return dict(states=states, done=K <= 1, converged=K <= 1, diverged=False,
                update=math.inf, growth=0, sweeps=0, bound=bound, updates=[])


def _newton_pick(collect, q):
    return collect["states"][q], collect["done"]


def _newton_const(collect):
    """Element 0 of the prefix scan: the constant map onto s_0 (J None marks constant)."""
    return None if collect["done"] else (None, collect["states"][0])


def _newton_eval(weights, l, d, reset_after, cutoff, bstate, lengths, t0, T, *parts):
    """f_q(s_q) and J_q for one chunk, as the affine map s -> J s + (f - J s_q)."""
    s, done = bstate
    if done:
        return None
    from .kernels_tangent import tangent_scan

    w_ih_t, b_ih, w_hh_t, b_hh = weights[l][d]
    x = layer_input(parts)
    lengths = _lengths(lengths, T, x.shape[1])
    gi = kernels.project(x, w_ih_t, b_ih)
    f, J = tangent_scan(gi, w_hh_t, b_hh, s, lengths, t0, d == 1, reset_after, cutoff)
    c = f - np.einsum("bij,bj->bi", J, s)
    return J, c


def _compose(later, earlier):
    """later ∘ earlier for affine maps (J, c): s -> J s + c; J None is a constant map."""
    if later is None or earlier is None:
        return None
    Jl, cl = later
    Je, ce = earlier
    if Jl is None:
        return later
    c = np.einsum("bij,bj->bi", Jl, ce) + cl
    return (None, c) if Je is None else (np.matmul(Jl, Je), c)


def _newton_collect(tol, prev, *prefix):
    """New boundary states from the prefix scan: clip, measure the update, decide."""
    if prev["done"] or any(p is None for p in prefix):
        return prev
    R = prev["bound"]
    states = [prev["states"][0]] + [np.clip(p[1], -R, R) for p in prefix[1:]]
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
    fixes = [(st[1] > 0, st[1], st[0], st[2]) for f in parts[:nfix] for st in f[2]]
    newton = parts[nfix:]
    chunks_recomputed = sum(int(f[0]) for f in fixes)
    info = dict(meta)
    info.update(
        chunks=K,
        chains=nchains,
        chunks_recomputed=chunks_recomputed,
        rows_recomputed=sum(int(f[1]) for f in fixes),
        steps_verified=sum(int(f[3]) for f in fixes),
        max_mismatch=max([float(f[2]) for f in fixes] + [0.0]),
    )
    if meta["method"] == "speculative":
        info["sweeps"] = 1
    else:
        info["sweeps"] = max([n["sweeps"] for n in newton] + [0])
        info["converged"] = all(n["converged"] for n in newton)
        info["diverged"] = any(n["diverged"] for n in newton)
        info["fallback"] = chunks_recomputed > 0
        info["updates"] = [n["updates"] for n in newton]
    return info


# ----------------------------------------------------------------------------- graph
def gru_parallel(x, p, *, h0=None, lengths=None, batch_first=False, method="speculative",
                 warmup=None, tol=None, return_info=False):
    """``daskgru.gru`` with method="speculative" or "newton"; see the module docstring."""
    lazy = is_dask(x) or is_dask(h0) or is_dask(lengths)
    if lazy:
        res = _gru_graph(x, p, h0=h0, lengths=lengths, batch_first=batch_first,
                         method=method, warmup=warmup, tol=tol)
        return res if return_info else res[:2]
    import dask
    import dask.array as da

    call = validate(x, p, h0=h0, lengths=lengths, batch_first=batch_first, method=method)
    x = np.asarray(x)
    taxis = 1 if (batch_first and not call.unbatched) else 0
    xd = da.from_array(x, chunks={taxis: NUMPY_CHUNK}, name=False)
    res = _gru_graph(xd, p, h0=h0, lengths=lengths, batch_first=batch_first, method=method,
                     warmup=warmup, tol=tol)
    res = dask.compute(*res, scheduler="synchronous")
    return res if return_info else res[:2]


def _gru_graph(x, p, *, h0, lengths, batch_first, method, warmup, tol):
    from dask.base import tokenize
    from dask.delayed import Delayed

    call = validate(x, p, h0=h0, lengths=lengths, batch_first=batch_first, method=method)
    pp, dt, T = call.params, call.dtype, call.T
    L, D, H = pp.num_layers, pp.num_directions, pp.hidden_size
    tol = float(DEFAULT_TOL[dt] if tol is None else tol)
    warmup = int(DEFAULT_WARMUP if warmup is None else warmup)
    cutoff = tol * TANGENT_CUTOFF

    inp = ChunkedInputs(x, call)
    x, tchunks, bchunks, t_starts = inp.x, inp.tchunks, inp.bchunks, inp.t_starts
    K, nb = len(tchunks), len(bchunks)
    G = verify_group(K)
    h0_key = inp.per_state(h0, H)
    len_key = inp.per_batch(lengths)
    collections = inp.collections

    # G changes what a fix key holds (which chunks' end state): it is part of the names
    tok = tokenize(x.name, pp, *inp.token_parts(h0, lengths), method, warmup, tol, G)
    wname = f"gru-weights-{tok}"
    outname, hnname, infoname = f"gru-output-{tok}", f"gru-hn-{tok}", f"gru-info-{tok}"
    layers = {wname: {wname: prepare_weights(pp)}}
    deps = {wname: set()}
    base = [c.name for c in collections]
    fixes, newton_summaries = [], []

    def lname(l):
        return f"gru-{method}-l{l}-{tok}"

    def key(stage, l, *idx):
        return (f"gru-{stage}-l{l}-{tok}",) + idx

    g_out = {}
    for l in range(L):
        g = {}
        for j in range(nb):
            if l == 0:
                parts = lambda k: [(x.name, k, j, 0)]  # noqa: E731
            else:
                parts = lambda k: [key("select", l - 1, dd, j, k) for dd in range(D)]  # noqa: E731
            lens = len_key(j)
            for d in range(D):
                order = list(range(K - 1, -1, -1)) if d else list(range(K))
                h0k = h0_key(l * D + d, j)
                B = int(bchunks[j])
                if method == "newton":
                    # sweep 0: the initial guesses
                    g[key("newton-collect", l, d, j, 0)] = (_newton_init, h0k, K, B, H, dt)
                    for i in range(1, K):
                        prevc = key("newton-collect", l, d, j, i - 1)
                        for q in range(K):
                            g[key("newton-state", l, d, j, i - 1, q)] = (_newton_pick, prevc, q)
                        elems = [key("newton-const", l, d, j, i)]
                        g[elems[0]] = (_newton_const, prevc)
                        for q in range(K - 1):
                            k = order[q]
                            ek = key("newton-eval", l, d, j, i, q)
                            g[ek] = (_newton_eval, wname, l, d, pp.reset_after, cutoff,
                                     key("newton-state", l, d, j, i - 1, q), lens,
                                     t_starts[k], T, *parts(k))
                            elems.append(ek)
                        # Hillis–Steele inclusive prefix scan of compositions
                        off, lev = 1, 0
                        while off < K:
                            nxt = []
                            for q in range(K):
                                if q >= off:
                                    ck = key("newton-compose", l, d, j, i, lev, q)
                                    g[ck] = (_compose, elems[q], elems[q - off])
                                    nxt.append(ck)
                                else:
                                    nxt.append(elems[q])
                            elems, off, lev = nxt, off * 2, lev + 1
                        g[key("newton-collect", l, d, j, i)] = (_newton_collect, tol, prevc,
                                                                *elems)
                    last = key("newton-collect", l, d, j, K - 1)
                    for q in range(K):
                        g[key("newton-state", l, d, j, K - 1, q)] = (_newton_pick, last, q)
                    sk = key("newton-summary", l, d, j)
                    g[sk] = (_newton_summary, last)
                    newton_summaries.append(sk)
                for q, k in enumerate(order):
                    tail, tail_t0, start = None, 0, None
                    if method == "newton":
                        start = key("newton-state", l, d, j, K - 1, q)
                    elif q and warmup:
                        pk = order[q - 1]
                        w = min(warmup, int(tchunks[pk]))
                        tail = (_tail_task, d == 1, w, *parts(pk))
                        if l:  # a whole chunk of outputs is worth a task not to move
                            g[key("tail", l, d, j, q)] = tail
                            tail = key("tail", l, d, j, q)
                        tail_t0 = t_starts[pk] if d else t_starts[pk] + int(tchunks[pk]) - w
                    g[key("spec", l, d, j, q)] = (_spec_task, wname, l, d, pp.reset_after,
                                                  start, tail, tail_t0, h0k, lens,
                                                  t_starts[k], T, *parts(k))
                    g[key("specstate", l, d, j, q)] = (_spec_states, key("spec", l, d, j, q))
                for g0 in range(0, K, G):
                    qs = range(g0, min(g0 + G, K))
                    fix = key("fix", l, d, j, g0 // G)
                    g[fix] = (_fix_task, wname, l, d, pp.reset_after, tol,
                              key("fix", l, d, j, g0 // G - 1) if g0 else None,
                              [key("specstate", l, d, j, q) for q in qs], lens,
                              [t_starts[order[q]] for q in qs], T,
                              [parts(order[q]) for q in qs])
                    fixes.append(fix)
                    for i, q in enumerate(qs):
                        sel = (_select, key("spec", l, d, j, q), fix, i)
                        if l < L - 1 or D > 1:
                            g[key("select", l, d, j, order[q])] = sel
                        else:  # the output blocks themselves
                            g_out[(outname, order[q], j, 0)] = sel
        layers[lname(l)] = g
        deps[lname(l)] = {wname, *base} | ({lname(l - 1)} if l else set())

    if D > 1:
        for j in range(nb):
            for k in range(K):
                g_out[(outname, k, j, 0)] = (layer_input,
                                             [key("select", L - 1, d, j, k) for d in range(D)])
    g_hn = {}
    for l in range(L):
        for d in range(D):
            for j in range(nb):
                g_hn[(hnname, l * D + d, j, 0)] = (_fix_end_block,
                                                   key("fix", l, d, j, (K - 1) // G))
    meta = dict(method=method, tol=tol)
    if method == "speculative":
        meta["warmup"] = warmup
    nchains = L * D * nb
    layers.update({outname: g_out, hnname: g_hn,
                   infoname: {infoname: (_info_task, meta, nchains, K, len(fixes), *fixes,
                                         *newton_summaries)}})
    all_l = {lname(l) for l in range(L)}
    deps.update({outname: {lname(L - 1)}, hnname: all_l, infoname: all_l})
    hlg = inp.graph(layers, deps)
    out, h_n = inp.arrays(hlg, (outname, D * H), (hnname, L * D, H))
    info = Delayed(infoname, hlg)
    return out, h_n, info
