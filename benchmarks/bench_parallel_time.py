"""Parallel in time on one long sequence: method="speculative" / "newton" against "scan".

    python benchmarks/bench_parallel_time.py [--T 1000000] [--chunks 16] [--repeats 3]
    python benchmarks/bench_parallel_time.py --gather --newton-H ""   # output to the client

B = 1, I = 8, float32, LocalCluster(2 workers x 1 thread, processes=True). The input is
persisted on the cluster first; a timed run is ``persist`` + ``wait`` of (output, h_n), so
neither graph building on the client nor fetching the 128 MB output is timed; with
``--gather`` a timed run computes (output, h_n) into the client instead (the transfer timed).
The script also reports what ``method="auto"`` chose for the H = 32 call and why. Methods are
alternated; medians (and the fastest) of ``--repeats`` runs after one warm-up run each
(JIT, caches). Gathered runs vary most (on a 2-CPU VM either method took about 0.45 s or
0.8-1.1 s, run to run), so the fastest runs are printed beside the medians.
Writes the numbers to --json. Run it on a quiet machine: workers share the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import QUIET  # noqa: E402 (benchmarks/machine.py)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=1_000_000)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--newton-H", default="4,8,32")
    ap.add_argument("--json", default="benchmarks/parallel_time_results.json")
    ap.add_argument("--gather", action="store_true",
                    help="time computing the output into the client, not persisting it")
    a = ap.parse_args()

    import dask
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    import daskgru as dg

    T, K, I = a.T, a.chunks, 8
    results = dict(T=T, chunks=K, B=1, I=I, dtype="float32", workers=a.workers,
                   machine=platform.processor() or platform.machine(), date=time.strftime("%Y-%m-%d"),
                   loadavg_before=open("/proc/loadavg").read().split()[:3], runs={})
    with LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        # drawn on the workers (a client array would travel inside the graph)
        xd = da.random.default_rng(0).standard_normal((T, 1, I), chunks=(-(-T // K), 1, I),
                                                     dtype="float32").persist()
        wait(xd)

        def run(p, method, **kw):
            out, h_n = dg.gru(xd, p, method=method, **kw)[:2]
            time.sleep(QUIET)
            t = time.perf_counter()
            if a.gather:
                client.compute([out, h_n], sync=True)
                return time.perf_counter() - t
            fut = client.persist([out, h_n])
            wait(fut)
            el = time.perf_counter() - t
            del fut
            return el

        def compare(H, methods, repeats):
            p = dg.GRUParams.random(I, H, seed=0, dtype="float32")
            ref = dg.gru(xd, p, method="scan")
            ref = dask.compute(*ref)
            row = {}
            for m, kw in methods:
                out, h_n, info = dg.gru(xd, p, method=m, return_info=True, **kw)
                o, h, inf = dask.compute(out, h_n, info)
                row[m] = dict(dev=float(max(np.abs(o - ref[0]).max(), np.abs(h - ref[1]).max())),
                              info={k: v for k, v in inf.items() if k != "updates"},
                              times=[])
            row["scan"] = dict(dev=0.0, times=[])
            allm = [("scan", {})] + list(methods)
            for m, kw in allm:  # warm-up
                run(p, m, **kw)
            for _ in range(repeats):
                for m, kw in allm:
                    row[m]["times"].append(run(p, m, **kw))
            for m in row:
                row[m]["median_s"] = statistics.median(row[m]["times"])
                row[m]["min_s"] = min(row[m]["times"])
            return row

        results["gather"] = a.gather
        row = compare(32, [("speculative", {})], a.repeats)
        results["runs"]["H32_speculative"] = row
        s, sp = row["scan"]["median_s"], row["speculative"]["median_s"]
        auto = dg.gru(xd, dg.GRUParams.random(I, 32, seed=0), method="auto",
                      return_info=True)[2].compute()["auto"]
        results["auto"] = auto
        s1, sp1 = row["scan"]["min_s"], row["speculative"]["min_s"]
        print(f"H=32 T={T} K={K} ({'gathered' if a.gather else 'persisted'}): scan {s:.3f} s, "
              f"speculative {sp:.3f} s, speedup {s / sp:.2f}x (fastest runs: {s1:.3f} and "
              f"{sp1:.3f} s, {s1 / sp1:.2f}x), "
              f"max abs dev {row['speculative']['dev']:.2e}, info {row['speculative']['info']}")
        print(f"method='auto' chose {auto['chose']}: {auto['reason']}")
        for H in [int(h) for h in a.newton_H.split(",") if h]:
            row = compare(H, [("newton", {})], a.repeats)
            results["runs"][f"H{H}_newton"] = row
            s, nw = row["scan"]["median_s"], row["newton"]["median_s"]
            print(f"H={H}: scan {s:.3f} s, newton {nw:.3f} s ({s / nw:.2f}x), sweeps "
                  f"{row['newton']['info']['sweeps']}, dev {row['newton']['dev']:.2e}, "
                  f"info {row['newton']['info']}")

        results["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    with open(a.json, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print("wrote", a.json)


if __name__ == "__main__":
    main()
