"""Rows per second through the table front ends, beside the array path on the same data.

    python benchmarks/tables.py [--series 256] [--steps 2000] [--features 8] [--hidden 32]
                                [--no-spark] [--repeats 3]

One long table: ``--series`` series of ``--steps`` rows each (id, time, features), rows
shuffled. Timed, each after a warm-up on the same data (median of ``--repeats``):

- ``array``: ``dg.gru`` on the (steps, series, features) array (no table work at all);
- ``apply_frame pandas``: the table in memory;
- ``apply_frame dask threads``: the table as a dask DataFrame partitioned by id (4
  partitions) and, separately, by time (8 time slices: the chain over partitions);
- ``apply_frame 2-worker LocalCluster``: the same two, on 2 worker processes;
- ``Spark RNNTransformer local[2]``: the table as a Spark DataFrame, whole series per task
  and in waves of ``steps / 4`` steps (``maxStepsPerTask``).

Every figure is rows (series x steps) per second, and the ratio to the array path.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import alternate  # noqa: E402 (benchmarks/compare.py)
from machine import cpu_name  # noqa: E402 (benchmarks/machine.py)


def timed(f, repeats):
    """Median seconds of ``repeats`` calls after one warm-up."""
    return alternate({"f": f}, repeats)["f"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-spark", action="store_true")
    ap.add_argument("--no-cluster", action="store_true")
    args = ap.parse_args(argv)

    import dask
    import dask.dataframe as dd
    import numpy as np
    import pandas as pd

    import daskgru as dg

    S, T, F = args.series, args.steps, args.features
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, S, F)).astype("float32")
    cols = [f"f{k}" for k in range(F)]
    df = pd.DataFrame(x.transpose(1, 0, 2).reshape(S * T, F), columns=cols)
    df.insert(0, "id", np.repeat(np.arange(S), T))
    df.insert(1, "t", np.tile(np.arange(T), S))
    df = df.sample(frac=1, random_state=0).reset_index(drop=True)
    p = dg.GRUParams.random(F, args.hidden, seed=0)
    rows = S * T
    results = []

    def report(name, seconds):
        results.append((name, seconds))
        base = results[0][1]
        print(f"{name:44} {rows / seconds / 1e6:8.2f} M rows/s   {seconds:8.3f} s   "
              f"{base / seconds:6.2f} x array", flush=True)

    print(f"# {cpu_name()}, {os.cpu_count()} CPUs; {S} series x {T} steps = {rows:,} rows, "
          f"{F} features, GRU hidden {args.hidden}, float32")
    report("array: dg.gru (steps, series, features)", timed(lambda: dg.gru(x, p), args.repeats))
    report("apply_frame pandas",
           timed(lambda: dg.apply_frame(df, p, id_col="id", time_col="t"), args.repeats))
    by_id = dd.from_pandas(df.sort_values("id"), npartitions=4, sort=False)
    by_time = dd.from_pandas(df.sort_values("t").reset_index(drop=True), npartitions=8,
                             sort=False)

    def frame(ddf, layout):
        return lambda: dg.apply_frame(ddf, p, id_col="id", time_col="t",
                                      partitioned_by=layout).compute()

    with dask.config.set(scheduler="threads"):
        report("apply_frame dask threads, by id (4 parts)",
               timed(frame(by_id, "id"), args.repeats))
        report("apply_frame dask threads, by time (8 slices)",
               timed(frame(by_time, "time"), args.repeats))
    if not args.no_cluster:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster):
            by_id_p, by_time_p = by_id.persist(), by_time.persist()
            report("apply_frame LocalCluster 2 workers, by id",
                   timed(frame(by_id_p, "id"), args.repeats))
            report("apply_frame LocalCluster 2 workers, by time",
                   timed(frame(by_time_p, "time"), args.repeats))
    if not args.no_spark:
        from pyspark.sql import SparkSession

        from daskgru.spark import RNNTransformer

        spark = (SparkSession.builder.master("local[2]").appName("daskgru-bench")
                 .config("spark.ui.enabled", "false")
                 .config("spark.sql.shuffle.partitions", "4")
                 .config("spark.driver.memory", "4g").getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        try:
            sdf = spark.createDataFrame(df).cache()
            sdf.count()
            for waves in (0, T // 4):
                t = RNNTransformer(model=p, idCol="id", timeCol="t", inputCols=cols,
                                   outputCol="h", maxStepsPerTask=waves)
                name = ("Spark RNNTransformer local[2]" if not waves else
                        f"Spark RNNTransformer local[2], waves of {waves}")
                report(name, timed(lambda: t.transform(sdf).write.format("noop")
                                   .mode("overwrite").save(), args.repeats))
        finally:
            spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
