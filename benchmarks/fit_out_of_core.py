"""GRURegressor.fit on data ten times larger than the client may hold.

    python benchmarks/fit_out_of_core.py [--sequences 2048] [--steps 2048] [--features 128]
                                         [--limit-mb 200] [--workers 2]

The training data (float32, sequences x steps x features: 2 GiB by default) are generated
on the workers of a LocalCluster (one process each) and persisted there; the target is the
first feature two steps earlier. The client then fits on the dask arrays. A watchdog thread
samples the client's resident memory every 5 ms; the limit is ``--limit-mb`` above what the
client held before fitting (the cluster started, the data persisted), and a fit that passes
it is reported as a failure. Reported: data size, the client's peak growth, their ratio, the
time per optimiser step, the loss of each epoch.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_name  # noqa: E402 (benchmarks/machine.py)


class Watchdog(threading.Thread):
    def __init__(self, limit):
        import psutil

        super().__init__(daemon=True)
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.limit = limit
        self.peak = self.base
        self.running = True

    def run(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    @property
    def growth(self):
        return self.peak - self.base


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=2048)
    ap.add_argument("--features", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=128, help="sequences per chunk")
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--limit-mb", type=float, default=200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    import dask.array as da
    import numpy as np
    from distributed import Client, LocalCluster, wait

    import daskgru as dg

    n, T, F = args.sequences, args.steps, args.features
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit=0) as cluster, \
            Client(cluster) as client:
        rng = da.random.default_rng(0)
        X = rng.standard_normal((n, T, F), chunks=(args.chunk, T, F), dtype="float32")
        lag = da.concatenate([da.zeros((n, 2), chunks=(args.chunk, 2), dtype="float32"),
                              X[:, :-2, 0]], axis=1)
        X, y = client.persist([X, lag.rechunk((args.chunk, T))])
        wait([X, y])
        gib = (X.nbytes + y.nbytes) / 2**30
        dog = Watchdog(args.limit_mb * 2**20)
        dog.start()
        model = dg.GRURegressor(hidden_size=args.hidden, max_epochs=args.epochs,
                                batch_size=args.batch, learning_rate=0.01, random_state=0,
                                validation_fraction=0)
        t = time.perf_counter()
        model.fit(X, y)
        seconds = time.perf_counter() - t
        dog.running = False
        dog.join()
        steps = args.epochs * -(-n // args.batch)
        ok = dog.growth <= dog.limit
        print(f"# {cpu_name()}, {os.cpu_count()} CPUs; {args.workers} worker processes x 1 "
              "thread")
        print(f"data on the workers:        {gib:.2f} GiB ({n} x {T} x {F} float32 and the "
              "target)")
        print(f"client peak growth:         {dog.growth / 2**20:.0f} MiB (limit "
              f"{args.limit_mb:.0f} MiB: {'kept' if ok else 'EXCEEDED'}); data / limit = "
              f"{gib * 1024 / args.limit_mb:.1f}")
        print(f"fit:                        {seconds:.1f} s, {steps} steps, "
              f"{seconds / steps:.2f} s per step")
        print(f"loss per epoch:             {np.round(model.history_['loss'], 4).tolist()}")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
