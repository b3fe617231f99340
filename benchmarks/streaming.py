"""Streaming a sequence much longer than memory: peak RSS of a lazily generated input of
T = 2*10^7 steps (B=4, I=4, H=16) run through a chunked GRU and reduced to a mean.

    python benchmarks/streaming.py [--steps 20000000] [--chunk 100000] [--scheduler threads]

The input exists only chunk by chunk; the output (T*B*H float32 = 5 GB) is never held:
the graph releases each chunk once the chain and the reduction have moved past it.
"""
import argparse
import resource
import time

import dask
import dask.array as da

import daskgru as dg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20_000_000)
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--scheduler", default="threads",
                    help="threads, sync, or distributed (an in-process LocalCluster, 1 worker "
                         "x 2 threads, so that this process's peak RSS covers everything)")
    args = ap.parse_args(argv)
    if args.scheduler == "distributed":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                               dashboard_address=None)
        Client(cluster)
        args.scheduler = None
    B, I, H = 4, 4, 16
    p = dg.GRUParams.random(I, H, seed=0)
    x = da.random.default_rng(0).standard_normal((args.steps, B, I), chunks=(args.chunk, B, I),
                                                   dtype="float32")
    t = time.perf_counter()
    out, h_n = dg.gru(x, p)
    t_graph = time.perf_counter() - t
    t = time.perf_counter()
    mean, last = dask.compute(out.mean(), h_n, scheduler=args.scheduler)
    t_run = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"T={args.steps} B={B} I={I} H={H} chunk={args.chunk} tasks={len(dict(out.__dask_graph__()))}: "
          f"graph {t_graph:.2f} s, compute {t_run:.1f} s ({args.steps * B / t_run / 1e6:.1f} M steps/s), "
          f"mean {float(mean):.6f}, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
