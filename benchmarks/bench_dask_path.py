"""What the dask path costs over the eager path, on the threaded scheduler and on a
2-worker LocalCluster, with ``daskgru.merge-chunks`` off (the user's time chunks are the
tasks) and "auto" (small chunks merged), alternated in one process.

    python benchmarks/bench_dask_path.py [--rounds 7] [--cluster-only | --threads-only]
                                         [--warm-memory MIB]

float32 GRU, 2 threads. Threaded rows: the input a dask array over a NumPy array in memory
(``da.from_array``, so its chunk tasks are part of the graph), timed ``persist`` (results
kept as dask blocks) and ``compute`` (blocks concatenated into one NumPy array: dask's own
copy of the output). Cluster rows: LocalCluster(2 workers x 1 thread), the input persisted on
the workers first; timed ``persist`` + ``wait``. Eager: ``dg.gru`` on the NumPy array with 2
threads (``DASKGRU_NUM_THREADS``). Each contender runs once untimed (kernels loaded
everywhere), then ``--rounds`` rounds in rotating order, each call after 20 ms of quiet
(``machine.QUIET``); medians and minima, and their ratios to eager.

``--warm-memory MIB``: before each timed call (every contender alike, outside the timing)
the process, and on the cluster each worker, touches and frees MIB MiB, so that the call's
fresh allocations land on pages the machine has just backed. Without it a contender that
needs more fresh memory than the others (``compute``: the blocks and the array they are
copied into) pays, on a virtual machine that takes idle freed memory back from its guests,
the host's first-touch cost as well (``python benchmarks/machine.py`` measures it). The
warm run shows what the package (and dask) add over eager; the difference between a run
without and one with the option is the host's first-touch cost.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

os.environ.setdefault("DASKGRU_NUM_THREADS", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import QUIET, describe, warm_memory  # noqa: E402

# (T, B, I, H, time chunk, batch chunks): the rows of the issue that asked for this
THREADED = [(65536, 8, 8, 32, 512, 1), (4096, 32, 16, 64, 512, 1), (1024, 64, 64, 256, 128, 1),
            (4096, 64, 16, 64, 512, 2), (512, 256, 128, 512, 64, 1)]
CLUSTER = [(4096, 64, 16, 64, 512, 2), (65536, 8, 8, 32, 512, 2), (1024, 64, 64, 256, 128, 2)]


def rotate(fs, rounds, before=lambda: None):
    """Time each callable of ``fs`` once untimed, then ``rounds`` times in rotating order,
    ``before()`` and ``QUIET`` seconds of rest before each timed call."""
    for f in fs.values():
        f()
    ts = {k: [] for k in fs}
    keys = list(fs)
    for r in range(rounds):
        for j in range(len(keys)):
            k = keys[(r + j) % len(keys)]
            gc.collect()
            before()
            time.sleep(QUIET)
            t = time.perf_counter()
            fs[k]()
            ts[k].append(time.perf_counter() - t)
    return ts


def report(row, ts):
    med = {k: statistics.median(v) for k, v in ts.items()}
    low = {k: min(v) for k, v in ts.items()}
    T, B, I, H, c, nb = row
    print(f"T={T} B={B} I={I} H={H}, time chunks {c}, {nb} batch chunk(s)", flush=True)
    for k in ts:
        print(f"  {k:28s} median {med[k] * 1e3:8.1f} ms ({med[k] / med['eager']:.2f}x eager)"
              f"   min {low[k] * 1e3:8.1f} ms ({low[k] / low['eager']:.2f}x)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads-only", action="store_true")
    ap.add_argument("--cluster-only", action="store_true")
    ap.add_argument("--warm-memory", type=int, default=0, metavar="MIB",
                    help="touch and free this many MiB before each timed call (see above)")
    a = ap.parse_args()
    warm = lambda: warm_memory(a.warm_memory)  # noqa: E731

    import dask
    import dask.array as da

    import daskgru as dg

    print("#", describe(), f"; memory warmed before each call: {a.warm_memory} MiB")
    if not a.cluster_only:
        print("## threaded scheduler, 2 threads")
        for row in THREADED:
            T, B, I, H, c, nb = row
            p = dg.GRUParams.random(I, H, seed=0)
            x = np.random.default_rng(0).standard_normal((T, B, I)).astype("float32")
            xd = da.from_array(x, chunks=(c, B // nb, I))

            def lazy(merge, how):
                with dask.config.set({"daskgru.merge-chunks": merge}):
                    out = dg.gru(xd, p)
                    return getattr(dask, how)(*out, scheduler="threads", num_workers=2)

            fs = {"eager": lambda: dg.gru(x, p)}
            for merge in (False, "auto"):
                for how in ("persist", "compute"):
                    fs[f"dask {how}, merge {merge}"] = lambda m=merge, h=how: lazy(m, h)
            report(row, rotate(fs, a.rounds, warm))
    if not a.threads_only:
        import cloudpickle
        from distributed import Client, LocalCluster, wait

        # the workers need not import the benchmarks' folder: machine's functions go by value
        cloudpickle.register_pickle_by_value(sys.modules["machine"])

        print("## LocalCluster, 2 workers x 1 thread, input persisted, output persisted")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            client.run(dg.precompile, "float32")

            def everywhere():
                warm()
                if a.warm_memory:
                    client.run(warm_memory, a.warm_memory)
            for row in CLUSTER:
                T, B, I, H, c, nb = row
                p = dg.GRUParams.random(I, H, seed=0)
                # drawn on the workers (a client array would travel inside the graph)
                xd = da.random.default_rng(0).standard_normal(
                    (T, B, I), chunks=(c, B // nb, I), dtype="float32").persist()
                wait(xd)
                x = xd.compute()

                def on_cluster(merge):
                    with dask.config.set({"daskgru.merge-chunks": merge}):
                        out = client.persist(list(dg.gru(xd, p)))
                        wait(out)
                    del out

                fs = {"eager": lambda: dg.gru(x, p),
                      "cluster, merge False": lambda: on_cluster(False),
                      "cluster, merge auto": lambda: on_cluster("auto")}
                report(row, rotate(fs, a.rounds, everywhere))
                del xd


if __name__ == "__main__":
    main()
