"""Does ``method="auto"`` pick the faster method? Scan against speculative over a range of
sequence lengths, on the threaded scheduler and on a LocalCluster, beside auto's choice.

    python benchmarks/bench_auto_method.py [--T 100000 200000 400000 1000000] [--repeats 5]

One sequence (B = 1, I = 8, H = 32, float32) in ``--chunks`` time chunks, drawn on the
workers and persisted. Three ways of running: the threaded scheduler with 2 threads
(``persist``), a LocalCluster of 2 workers x 1 thread with the output persisted on the
workers, and the same cluster with the output gathered into the client. Each method runs
once to warm up, then ``--repeats`` times alternated; medians. "ratio" is the scan's time
over the speculative's (above 1: speculative faster); auto's modelled times beside it. Each
timed call follows 20 ms of quiet (distributed's client sends its messages in batches every
10 ms; see bench_dask_path.py). Run it on a quiet machine: the workers share the cores.
"""
from __future__ import annotations

import argparse
import statistics
import time


def rows(run, Ts, label, chunks, repeats):
    import dask.array as da
    from machine import QUIET

    import daskgru as dg

    p = dg.GRUParams.random(8, 32, seed=0, dtype="float32")
    for T in Ts:
        xd = da.random.default_rng(0).standard_normal(
            (T, 1, 8), chunks=(-(-T // chunks), 1, 8), dtype="float32").persist()
        auto = dg.gru(xd, p, method="auto", return_info=True)[2].compute()["auto"]
        times = {"scan": [], "speculative": []}
        for r in range(repeats + 1):
            for m, ts in times.items():
                out = dg.gru(xd, p, method=m)[:2]
                time.sleep(QUIET)
                t = time.perf_counter()
                run(out)
                if r:
                    ts.append(time.perf_counter() - t)
        s, sp = (statistics.median(times[m]) for m in ("scan", "speculative"))
        print(f"{label:22s} T={T:>8}: scan {s * 1e3:7.1f} ms, speculative {sp * 1e3:7.1f} ms, "
              f"ratio {s / sp:4.2f}; auto {auto['chose']:11s} (modelled scan "
              f"{auto['scan_s'] * 1e3:.0f} ms, speculative {auto['speculative_s'] * 1e3:.0f} ms)",
              flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, nargs="+", default=[100_000, 200_000, 400_000, 1_000_000])
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    import dask
    from distributed import Client, LocalCluster, wait
    from machine import describe

    print("#", describe())
    with dask.config.set(scheduler="threads", num_workers=2):
        rows(lambda o: dask.persist(*o), a.T, "threads (2), persist", a.chunks, a.repeats)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        rows(lambda o: wait(client.persist(list(o))), a.T, "cluster, persist", a.chunks,
             a.repeats)
        rows(lambda o: client.compute(list(o), sync=True), a.T, "cluster, gathered", a.chunks,
             a.repeats)


if __name__ == "__main__":
    main()
