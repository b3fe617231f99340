"""The register-tiled product against NumPy's BLAS (np.dot) on one matrix product.

    python benchmarks/bench_tiles.py [--shape 960 512 1536] [--repeats 7]

Single-threaded BLAS (threadpoolctl), both warmed up, best of the repeats, the two
alternated; prints GF/s (2 FLOPs a multiply-add) and checks that the tiles give the bits of
the plain order (bias, then products in index order).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[960, 512, 1536], metavar=("M", "K", "N"))
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from daskgru.kernels.tiles import TILE, TILE_SOURCE, VECTOR_BYTES, product

    M, K, N = a.shape
    print(f"tiles: {TILE[0]} rows x {TILE[1]} vectors of {VECTOR_BYTES * 8} bits ({TILE_SOURCE}); shape "
          f"({M} x {K}) . ({K} x {N}), 1 thread")
    for dt in (np.float32, np.float64):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((M, K)).astype(dt)
        w = rng.standard_normal((K, N)).astype(dt)
        b = rng.standard_normal(N).astype(dt)
        out, ref = np.empty((M, N), dt), np.empty((M, N), dt)
        times = {"tiles": [], "np.dot": []}
        with threadpool_limits(1, user_api="blas"):
            fns = {"tiles": lambda: product(x, 0, M, w, b, 0, N, out, 0),
                   "np.dot": lambda: np.dot(x, w, ref)}
            for f in fns.values():
                f()
            for _ in range(a.repeats):
                for name, f in fns.items():
                    t = time.perf_counter()
                    f()
                    times[name].append(time.perf_counter() - t)
        # the plain order on a few rows, with NumPy's rounded elementwise ops
        rows = slice(0, 5)
        want = np.broadcast_to(b, (5, N)).copy()
        for k in range(K):
            want = want + x[rows, k:k + 1] * w[k]
        same = np.array_equal(out[rows], want)
        fl = 2.0 * M * K * N
        print(f"{np.dtype(dt).name}: tiles {fl / min(times['tiles']) / 1e9:6.1f} GF/s, "
              f"np.dot {fl / min(times['np.dot']) / 1e9:6.1f} GF/s, "
              f"bits of the plain order: {same}")


if __name__ == "__main__":
    main()
