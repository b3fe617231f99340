"""How far parallel-in-time scales: list-scheduling simulation of the real task graphs.

    python benchmarks/simulate_scaling.py [--T 1000000] [--H 32] [--overhead 1e-3]

Builds the actual dask graphs of ``daskgru.gru`` (method="scan", "speculative", "newton")
for one sequence (B = 1, I = 8, float32) as they are built for a cluster, without computing
them, gives each task a duration from per-chunk costs measured here in this process (single
thread, min of 3), and list-schedules the graph on P workers (ready task with the longest
path to the end first; each task also pays ``--overhead`` seconds of scheduler/worker
overhead, a typical figure for dask.distributed; transfers are not modelled). Chunks: K =
max(16, P). Newton's number of sweeps that do work is measured on a shorter sequence with
the same chunk count and GRU; later sweeps' tasks cost only the overhead. Prints a Markdown
table.
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import re
import time

import numpy as np


def measure(H, I, n, warmup, dtype="float32"):
    """Seconds for one chunk of n steps: projection+scan, speculative task, Newton eval, fix."""
    import daskgru as dg
    from daskgru.cells import Steps, project
    from daskgru.graph import parallel_time as pt
    from daskgru.graph.builder import Where

    p = dg.GRUParams.random(I, H, seed=0, dtype=dtype)
    ps = p.prepare()
    cell, w = ps.cells[0], ps.weights[0][0]
    x = np.random.default_rng(0).normal(size=(n, 1, I)).astype(dtype)
    tail = x[-warmup:]
    h = np.zeros((1, H), dtype)
    where = Where(0, 0, 0, n, False)

    def best(f):
        f()
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return min(ts)

    gi = project(w, x)
    steps = Steps.make(1, n)

    def spec_task():
        return pt._spec_task(ps, where, None, tail, where, None, None, None, None, x)

    spec = spec_task()
    # one chunk whose assumed start was right, kept as is
    prev = pt.FixResult(spec.states.start, [], [])
    return dict(
        proj=best(lambda: project(w, x)),
        scan=best(lambda: cell.scan(w, gi, h, steps)),
        spec=best(spec_task),
        eval=best(lambda: pt._newton_eval(ps, where, 1e-8, pt.Guess(h, False), None, None, x)),
        fix=best(lambda: pt._fix_task(ps, 1e-5, prev, [(where, spec.states, None, None, [x])])),
    )


def graph(method, T, K, H, P, I=8):
    import dask
    import dask.array as da
    from dask.core import get_dependencies

    import daskgru as dg

    p = dg.GRUParams.random(I, H, seed=0)
    x = da.zeros((T, 1, I), chunks=(-(-T // K), 1, I), dtype="float32")
    # the graph daskgru builds for a cluster of P single-thread workers (scan: projections
    # inside the scan tasks; speculative and newton: fix tasks verifying 2P chunks, capped)
    with dask.config.set(scheduler="processes", num_workers=P):
        out, h_n = dg.gru(x, p, method=method)[:2]
    from dask.highlevelgraph import HighLevelGraph

    dsk = dict(HighLevelGraph.merge(out.__dask_graph__(), h_n.__dask_graph__()))
    return {k: get_dependencies(dsk, k) for k in dsk}


def kind(key):
    name = key[0] if isinstance(key, tuple) else key
    m = re.match(r"(gru-[a-z-]+?)(-l\d+)?-[0-9a-f]{32}$", str(name))
    return m.group(1) if m else str(name).split("-")[0]


def simulate(deps, dur, P, overhead):
    dependents = {k: [] for k in deps}
    for k, ds in deps.items():
        for d in ds:
            dependents[d].append(k)
    # bottom levels (longest path to a sink) as priorities
    order, indeg = [], {k: len(v) for k, v in deps.items()}
    stack = [k for k, v in indeg.items() if v == 0]
    while stack:
        k = stack.pop()
        order.append(k)
        for c in dependents[k]:
            indeg[c] -= 1
            if indeg[c] == 0:
                stack.append(c)
    cost = {k: dur(k) + overhead for k in deps}
    bl = {}
    for k in reversed(order):
        bl[k] = cost[k] + max((bl[c] for c in dependents[k]), default=0.0)
    critical = max(bl.values())
    remaining = {k: len(v) for k, v in deps.items()}
    tie = itertools.count()  # unique second field: keys themselves never get compared
    ready = [(-bl[k], next(tie), k) for k in order if remaining[k] == 0]
    heapq.heapify(ready)
    free, running, now, n = P, [], 0.0, 0
    while ready or running:
        while free and ready:
            _, _, k = heapq.heappop(ready)
            heapq.heappush(running, (now + cost[k], id(k), k))
            free -= 1
        now, _, k = heapq.heappop(running)
        free += 1
        n += 1
        for c in dependents[k]:
            remaining[c] -= 1
            if remaining[c] == 0:
                heapq.heappush(ready, (-bl[c], next(tie), c))
    return now, critical, sum(cost.values())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=1_000_000)
    ap.add_argument("--H", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=512)
    ap.add_argument("--overhead", type=float, default=1e-3)
    ap.add_argument("--P", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--newton-max-chunks", type=int, default=64)
    a = ap.parse_args()
    import dask
    import dask.array as da

    import daskgru as dg
    from daskgru.graph.options import resolve

    T, H = a.T, a.H
    print(f"T = {T}, H = {H}, B = 1, I = 8, float32, warmup {a.warmup}, task overhead "
          f"{a.overhead * 1e3:g} ms; per-chunk costs measured here, scaled linearly in steps\n")
    print("| P | chunks K | scan s | speculative s | speedup | spec. critical path s "
          "| newton s (sweeps) | speedup | newton critical path s |")
    print("|---|---|---|---|---|---|---|---|---|")
    n_meas = 20000
    c = measure(H, 8, n_meas, a.warmup)
    per = {k: v / n_meas for k, v in c.items() if k not in ("fix",)}
    for P in [int(v) for v in a.P.split(",")]:
        K = max(16, P)
        n = T / K
        w = min(a.warmup, n)
        # sweeps that do work, measured on a shorter sequence with the same K
        Tm = min(T, K * 2000)
        p = dg.GRUParams.random(8, H, seed=0)
        if K > a.newton_max_chunks:
            Tm = min(T, 16 * 2000)
        xm = da.from_array(np.random.default_rng(0).normal(size=(Tm, 1, 8)).astype("float32"),
                           chunks=(-(-Tm // K), 1, 8))
        info = dask.compute(dg.gru(xm, p, method="newton", return_info=True)[2],
                            scheduler="sync")[0]
        sweeps = info["sweeps"]

        with dask.config.set(scheduler="processes", num_workers=P):
            G = resolve().group(K)

        def dur(key, K=K, n=n, w=w, sweeps=sweeps, G=G):
            k = kind(key)
            if k == "gru-inproj":
                return per["proj"] * n
            if k == "gru-scan":  # fused: projection and scan
                return (per["proj"] + per["scan"]) * n
            if k == "gru-spec":
                return (per["proj"] + per["scan"]) * (n + w)
            if k == "gru-fix":  # a group of chunks (the rest of its cost is the overhead)
                return c["fix"] * G
            if k == "gru-newton-eval":
                return per["eval"] * n if key[3] <= sweeps else 0.0
            return 0.0

        def dur_newton(key, **kw):
            if kind(key) == "gru-spec":  # Newton's final pass: no warm-up
                return (per["proj"] + per["scan"]) * n
            return dur(key)

        ts, _, _ = simulate(graph("scan", T, K, H, P), dur, P, a.overhead)
        tp, cp, _ = simulate(graph("speculative", T, K, H, P), dur, P, a.overhead)
        if K <= a.newton_max_chunks:
            tn, cn, _ = simulate(graph("newton", T, K, H, P), dur_newton, P, a.overhead)
            newton = f"{tn:.3f} ({sweeps}) | {ts / tn:.2f} | {cn:.3f}"
        else:  # the graph holds K-1 sweeps of K log K tasks: too big to be worth building
            newton = f"n/a ({sweeps}) | n/a | n/a"
        print(f"| {P} | {K} | {ts:.3f} | {tp:.3f} | {ts / tp:.2f} | {cp:.3f} | {newton} |",
              flush=True)


if __name__ == "__main__":
    main()
