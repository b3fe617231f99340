"""Choices that change a graph's shape (never its results), resolved once per call.

Four options, each a dask config key (``dask.config.set({"daskgru.fuse-projection":
True})``) whose default is ``"auto"``:

``daskgru.fuse-projection`` (True, False or "auto")
    Whether a chunk's input projection (``b_ih + x W_ih^T``, G numbers a step) is computed
    inside its scan task, block by block, or as a task of its own that runs ahead of the
    chain. "auto": separate where a layer has a single chain (one batch chunk and one
    direction... per layer) and results stay in one process (threaded or synchronous
    scheduler), so the projections of later chunks run in parallel with the chain;
    fused otherwise (several chains keep the workers busy anyway, and on a cluster moving
    the projected inputs costs more than computing them where the chain runs).

``daskgru.verify-group`` (an int >= 1 or "auto")
    How many consecutive chunks one fix-up task of ``method="speculative"``/"newton"
    verifies (see :mod:`daskgru.graph.parallel_time`). "auto": 1 where results stay in one
    process; where they travel, ``min(8, 2 * task slots)`` so that the fix-up chain keeps
    pace with the speculative tasks.

``daskgru.split-rows`` (an int >= 1 or "auto")
    Into how many parts (threads) a scan task splits its batch rows. The kernels are
    row-invariant, so the bits do not change. "auto": on the threaded scheduler, the task
    slots over the chains (batch chunks x directions), so that a single chain still uses
    every thread it is given; 1 elsewhere (on a cluster every worker thread is a slot of its
    own), and 1 for a task of less than ``MIN_TASK_SPLIT_WORK`` multiply-adds (handing
    rows to threads and copying their outputs together would cost more than it saves). A
    task never splits below 4 rows a part.

``daskgru.merge-chunks`` ("auto", False, or an int >= 1)
    Whether the scan (and the backward pass) merges runs of consecutive time chunks into
    one task where the user's chunks would make small tasks: each merged chunk does at
    least that many multiply-adds (a batch chunk's rows, the costliest layer), so that the
    scheduler's cost per task (a few hundred microseconds on the threaded scheduler, a few
    milliseconds on a cluster) stays a small part of the task. The output then has the
    merged time chunks (``out.chunks``; ``return_info["graph"]["time_chunks"]``). "auto":
    :data:`MERGE_WORK` for the scheduler in use; False: the user's chunks, always.
    ``method="speculative"`` merges too but keeps about :data:`SPEC_CHUNKS_PER_SLOT`
    chunks a task slot (its chunks are what runs in parallel); ``method="newton"`` never
    merges. The bits do not change.

"auto" looks at the scheduler dask would use now through :func:`scheduler_in_use`, the one
place that does. The resolved values are logged (logger ``daskgru.graph``, debug level),
are part of the graph's token (so two shapes never share keys) and are reported in
``return_info``'s ``"graph"`` entry. A graph built before a ``Client`` exists is built for
the threaded scheduler: build it after creating the client, or set the options. A
client's thread count is the one it last heard from the scheduler (refreshed every few
seconds): a graph built right after workers joined or left is planned for the cluster as
it was.
"""
from __future__ import annotations

import logging
import sys
from typing import NamedTuple

import numpy as np

__all__ = ["GraphOptions", "resolve", "scheduler_in_use", "choose_method", "step_costs"]

log = logging.getLogger("daskgru.graph")
MAX_VERIFY_GROUP = 8
# "auto" of daskgru.merge-chunks: time chunks are merged until a scan task does at least this
# many multiply-adds (about 8 ms of a kernel at 100 GFLOP/s on the local schedulers; on a
# cluster, where each hop of a chain is a round trip to the scheduler of milliseconds, about
# 40 ms at 200 GFLOP/s: 2e9 left a 2-worker LocalCluster at 1.5x eager on T=1024, B=64,
# H=256, 8e9 at 1.27x on the AMD Zen 5). Measured in docs/performance.md ("The dask path's
# cost per task").
MERGE_WORK = {"sync": 400_000_000, "threads": 400_000_000, "processes": 8_000_000_000,
              "distributed": 8_000_000_000}
# ... but a merged chunk's outputs (a task's result) stay below this many bytes.
MERGE_MAX_BYTES = 64 << 20
# A scan task smaller than this (multiply-adds) is not split over threads by "auto": handing
# rows to threads and copying their outputs together would cost more than it saves.
MIN_TASK_SPLIT_WORK = 50_000_000


_KINDS = {"threads": "threads", "threading": "threads", "processes": "processes",
          "multiprocessing": "processes", "sync": "sync", "synchronous": "sync",
          "single-threaded": "sync", "distributed": "distributed",
          "dask.distributed": "distributed"}


def _threads_of(client) -> int:
    """The worker threads of a ``distributed`` client: the total the client keeps from the
    scheduler's identity, else asked of the scheduler (a round trip in every graph's build:
    about half a millisecond on an idle 2-CPU machine, more on a busy one). The kept total
    is refreshed every 2 s at first, then at the client's heartbeat interval (5 s, longer
    with many clients): for that long after workers join or leave a graph is planned for
    the cluster as it was (the plan, not the bits, changes; build after the cluster has
    settled, or set the options). An asynchronous client is not asked (its answer is a
    coroutine): the kept total, else 1."""
    cached = getattr(client, "_scheduler_identity", None)
    total = cached.get("total_threads") if isinstance(cached, dict) else None
    if isinstance(total, int) and total > 0:
        return total
    if getattr(client, "asynchronous", False):
        return 1
    return max(1, sum(client.nthreads().values()))


def scheduler_in_use():
    """``(kind, slots)``: the scheduler dask would use now — the one set with
    ``dask.config.set(scheduler=...)``, else a ``dask.distributed`` default client's, else
    threads — as ``"sync"``, ``"threads"``, ``"processes"`` or ``"distributed"``, and how
    many tasks it runs at once (threads of the client's workers; 1 for the synchronous
    scheduler; else the configured worker count or the CPUs dask counts)."""
    import dask

    def client_slots():
        from distributed import default_client

        try:
            return _threads_of(default_client())
        except Exception:  # noqa: BLE001 - a client that cannot answer (closed)
            return 1

    from dask.system import CPU_COUNT

    chosen = dask.config.get("scheduler", None)
    local = int(dask.config.get("num_workers", None) or CPU_COUNT or 1)
    if chosen is None:
        if "distributed" in sys.modules:
            from distributed import default_client

            try:
                default_client()
            except ValueError:  # no client
                return "threads", local
            return "distributed", client_slots()
        return "threads", local
    if isinstance(chosen, str):
        kind = _KINDS.get(chosen.lower(), "threads")
        if kind == "sync":
            return kind, 1
        return (kind, client_slots()) if kind == "distributed" else (kind, local)
    # a get function: a client's, or one of dask's local schedulers
    owner = getattr(chosen, "__self__", None)
    if "distributed" in sys.modules:
        from distributed import Client

        if isinstance(owner, Client):
            try:
                return "distributed", _threads_of(owner)
            except Exception:  # noqa: BLE001
                return "distributed", 1
    import dask.local
    import dask.multiprocessing

    if chosen is dask.multiprocessing.get:
        return "processes", local
    if chosen is dask.local.get_sync:
        return "sync", 1
    return "threads", local


class GraphOptions(NamedTuple):
    """The resolved options of one call (see the module docstring)."""

    scheduler: str
    slots: int
    fuse_projection: object  # True, False, or "auto" (decided per layer: fuse(chains))
    verify_group: int
    split_rows: object = 1  # an int, or "auto" (decided per graph: split(chains, rows))
    merge_chunks: object = False  # False, or the least multiply-adds of a merged scan task

    def merged(self, tchunks, step_work: float, step_bytes: float = 0,
               min_chunks: int = 1) -> tuple:
        """The scan's time chunks: runs of consecutive chunks of ``tchunks`` merged until
        each does at least ``merge_chunks`` multiply-adds (``step_work`` a step), without
        a merged chunk's outputs (``step_bytes`` a step) passing :data:`MERGE_MAX_BYTES`;
        a short run left at the end joins the chunk before it where that fits; a run
        closes once it holds ``1 / min_chunks`` of the steps (the parallel-in-time
        methods keep about that many chunks to run side by side). ``tchunks`` when not
        merging."""
        tchunks = tuple(int(c) for c in tchunks)
        if not self.merge_chunks or step_work <= 0 or len(tchunks) < 2 or not sum(tchunks):
            return tchunks
        need = min(self.merge_chunks / step_work, sum(tchunks) / max(1, min_chunks))
        most = MERGE_MAX_BYTES / step_bytes if step_bytes > 0 else float("inf")
        out, run = [], 0
        for c in tchunks:
            if run and (run + c) > most:
                out.append(run)
                run = 0
            run += c
            if run >= need:
                out.append(run)
                run = 0
        if run:
            if out and out[-1] + run <= most:
                out[-1] += run
            else:
                out.append(run)
        return tuple(out)

    def split(self, chains: int, rows: int, work: float = float("inf")) -> int:
        """Parts a scan task of ``rows`` batch rows and ``work`` multiply-adds splits its
        rows into (at least 4 rows a part), for a graph of ``chains`` chains."""
        n = self.split_rows
        if n == "auto":
            n = (max(1, self.slots // max(1, chains))
                 if self.scheduler == "threads" and work >= MIN_TASK_SPLIT_WORK else 1)
        return max(1, min(int(n), rows // 4))

    @property
    def results_travel(self) -> bool:
        """Whether a task's result moves to another process to reach its dependents."""
        return self.scheduler in ("processes", "distributed")

    def fuse(self, chains: int, split: int = 1) -> bool:
        """Whether projections go into the scan tasks of a layer with ``chains`` chains
        (whose tasks split their rows into ``split`` parts)."""
        if self.fuse_projection == "auto":
            return chains > 1 or self.results_travel or split > 1
        return bool(self.fuse_projection)

    def group(self, K: int) -> int:
        """Chunks per fix-up task for K chunks in a chain."""
        return max(1, min(self.verify_group, K))


def _config(name, default="auto"):
    import dask

    return dask.config.get(f"daskgru.{name}", default)


def resolve() -> GraphOptions:
    """Read the options, resolve "auto" (probing the scheduler once), log them."""
    fuse, group = _config("fuse-projection"), _config("verify-group")
    split, merge = _config("split-rows"), _config("merge-chunks")
    if merge is not False and merge != "auto" and (
            isinstance(merge, bool) or not isinstance(merge, int) or merge < 1):
        raise ValueError(f"dask config daskgru.merge-chunks must be 'auto', False or an int "
                         f">= 1 (multiply-adds of a task), got {merge!r}")
    if split != "auto" and (isinstance(split, bool) or not isinstance(split, int) or split < 1):
        raise ValueError(f"dask config daskgru.split-rows must be an int >= 1 or 'auto', "
                         f"got {split!r}")
    if fuse not in (True, False, "auto"):
        raise ValueError(f"dask config daskgru.fuse-projection must be True, False or 'auto', "
                         f"got {fuse!r}")
    if group != "auto" and (isinstance(group, bool) or not isinstance(group, int) or group < 1):
        raise ValueError(f"dask config daskgru.verify-group must be an int >= 1 or 'auto', "
                         f"got {group!r}")
    kind, slots = scheduler_in_use()
    if group == "auto":
        group = min(MAX_VERIFY_GROUP, 2 * slots) if kind in ("processes", "distributed") else 1
    if merge == "auto":
        merge = MERGE_WORK.get(kind, MERGE_WORK["threads"])
    opts = GraphOptions(kind, slots, fuse, int(group), split, merge)
    log.debug("daskgru graph options: %s", opts)
    return opts


# The cost model of method="auto" (see choose_method). Rates are a model, not a timing: the
# choice must depend on the call only, so the same call always builds the same graph.
# A step of one sequence (B = 1, H = 32: 7680 FLOPs) took 0.23-0.28 us in the scan on the
# 2-CPU Zen 5 guest (2026-12-03), about 30 GF/s; wider steps run faster, so the model
# overrates their time, which leans towards splitting only where the chain is long.
ASSUMED_FLOPS = 30e9  # multiply-adds x 2 per second one task slot sustains in a scan
# Where results travel between processes a task costs the scheduler's round trip: about
# 5-7 ms a level of the graph on that guest (tasks sleeping 30 ms, 2 workers).
TASK_OVERHEAD = {"sync": 1e-4, "threads": 1e-4, "processes": 5e-3, "distributed": 5e-3}
MIN_SECONDS = 0.02  # below this (modelled) the scan's chain is not worth splitting
MARGIN = 0.8  # the parallel method must be modelled this much faster to be chosen
SPEC_CHUNKS_PER_SLOT = 2  # merged chunks of method="speculative" kept per task slot


def step_costs(stack, rows, held=1):
    """``(multiply-adds, bytes)`` of one step of ``rows`` batch rows in the costliest
    layer of ``stack``: its products, and its outputs times ``held`` (what a task holds
    beside them)."""
    layers = stack.layers
    work = rows * max((lay.cell.gates * lay.hidden_size * (lay.input_size + lay.hidden_size)
                       for lay in layers), default=0)
    out = rows * np.dtype(stack.dtype).itemsize * max(
        (lay.hidden_size * lay.num_directions for lay in layers), default=0)
    return work, held * out


def choose_method(opts: GraphOptions, tchunks, bchunks, stack, warmup: int):
    """``(method, record)``: what ``method="auto"`` runs for a lazy call, and why.

    A model of the call, not a timing (the same call always gets the same graph): a step of
    layer l for ``b`` rows costs ``2 b G (I + H)`` FLOPs at :data:`ASSUMED_FLOPS` per task
    slot, and a task :data:`TASK_OVERHEAD` seconds of the scheduler's time. ``s`` is the
    costliest layer's step, ``K`` chunks of at most ``L`` steps, ``n`` the parts a scan
    task splits its rows into (``daskgru.split-rows``).

    * ``scan``: the chains (batch chunks x directions) run side by side, the layers as a
      wavefront (layer l+1 one chunk behind layer l): ``(T + (layers - 1) L) s / n`` plus
      one task overhead per chunk (its chunks merged as ``daskgru.merge-chunks`` says). It
      keeps ``chains x min(layers, K) x n`` threads busy.
    * ``speculative``: every chunk at once, each also warming up over ``w`` steps of its
      predecessor: ``chains (T + (K-1) w)`` steps of every layer shared by the task slots
      (never less than one chunk's own span), plus the fix-up chain's overhead per chunk.

    The speculative method's chunks are merged too, keeping about 2 per task slot.

    "speculative" is chosen where it is modelled at most :data:`MARGIN` of the scan's time,
    the scan takes at least :data:`MIN_SECONDS`, there is more than one time chunk and the
    scan keeps fewer threads busy than there are task slots. "newton" is never chosen (its
    sweeps depend on the weights). The model assumes the outputs stay where they are
    computed (``persist``, ``to_zarr`` on the workers).
    """
    T, nb = int(sum(tchunks)), len(bchunks)
    b = max(bchunks) if bchunks else 0
    over = TASK_OVERHEAD.get(opts.scheduler, TASK_OVERHEAD["threads"])
    layers = stack.layers
    D = max(lay.num_directions for lay in layers)
    steps = [2.0 * b * lay.cell.gates * lay.hidden_size * (lay.input_size + lay.hidden_size)
             / ASSUMED_FLOPS for lay in layers]
    chains = nb * D
    step_work, step_bytes = step_costs(stack, b)
    scan_chunks = opts.merged(tchunks, step_work, step_bytes)  # (daskgru.merge-chunks)
    Ks, Ls = len(scan_chunks), max(scan_chunks, default=0)
    spec_chunks = opts.merged(tchunks, step_work, step_bytes, SPEC_CHUNKS_PER_SLOT * opts.slots)
    K, L = len(spec_chunks), max(spec_chunks, default=0)
    w = min(int(warmup), L)
    n = opts.split(chains, b, Ls * step_work)
    busy = chains * min(len(layers), Ks) * n
    scan = (T + (len(layers) - 1) * Ls) * max(steps) / n + Ks * over
    work = chains * (T + (K - 1) * w) * sum(steps)
    spec = max(work / opts.slots, (L + w) * max(steps)) + 2 * K * over
    record = dict(chose="scan", scan_s=float(f"{scan:.4g}"), speculative_s=float(f"{spec:.4g}"),
                  chains=chains, slots=opts.slots, time_chunks=len(tchunks), scan_chunks=Ks,
                  speculative_chunks=K)
    ch = f"{chains} chain{'s' if chains != 1 else ''}"
    if K < 2:
        record["reason"] = "one time chunk"
    elif busy >= opts.slots:
        record["reason"] = (f"the scan keeps {busy} threads busy ({ch}, "
                            f"{len(layers)} layer{'s' if len(layers) != 1 else ''}, rows split "
                            f"in {n}) of {opts.slots} task slots")
    elif scan < MIN_SECONDS:
        record["reason"] = (f"modelled scan {scan * 1e3:.1f} ms: too short to split (under "
                            f"{MIN_SECONDS * 1e3:.0f} ms)")
    elif spec > MARGIN * scan:
        record["reason"] = (f"modelled speculative {spec:.3g} s is not below {MARGIN} x "
                            f"scan {scan:.3g} s")
    else:
        record.update(chose="speculative", reason=(
            f"modelled speculative {spec:.3g} s against scan {scan:.3g} s "
            f"({ch}, {opts.slots} task slots, {K} time chunks of the user's {len(tchunks)})"))
    log.debug("daskgru method='auto': %s", record)
    return record["chose"], record
