"""One chain on the threaded scheduler: dask (one batch chunk, 512-step time chunks, 2
threads) against eager, with ``daskgru.split-rows`` 1 (the scan on one thread, projections
ahead on the other) and "auto" (rows split over both threads), alternated in one process.

    python benchmarks/bench_split_rows.py
"""
import os, sys, time, statistics, gc
os.environ["DASKGRU_NUM_THREADS"] = "2"
import numpy as np, dask, dask.array as da
import daskgru as dg
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import describe  # noqa: E402
print("#", describe())
for T, B, I, H in ((4096, 32, 16, 64), (1024, 64, 64, 256), (512, 256, 128, 512), (65536, 8, 8, 32)):
    p = dg.GRUParams.random(I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype("float32")
    xd = da.from_array(x, chunks=(512, B, I))
    def run(split):
        with dask.config.set({"daskgru.split-rows": split}):
            dask.compute(*dg.gru(xd, p), scheduler="threads", num_workers=2)
    fs = {"eager": lambda: dg.gru(x, p), "dask split 1": lambda: run(1), "dask split auto": lambda: run("auto")}
    for f in fs.values(): f()
    ts = {k: [] for k in fs}; keys = list(fs)
    n = 7 if T * B * H < 1e8 else 4
    for r in range(n):
        for j in range(len(keys)):
            k = keys[(r + j) % len(keys)]
            gc.collect(); t = time.perf_counter(); fs[k](); ts[k].append(time.perf_counter() - t)
    m = {k: statistics.median(v) for k, v in ts.items()}
    print(f"T={T} B={B} I={I} H={H}: " + ", ".join(f"{k} {v*1e3:.1f} ms" for k, v in m.items())
          + f"; dask/eager split 1 {m['dask split 1']/m['eager']:.2f}, auto {m['dask split auto']/m['eager']:.2f}", flush=True)
