"""Forward + backward of one GRU layer: daskgru.gru_backward against torch autograd.

Both sides get the same thread count (torch.set_num_threads; BLAS threads of NumPy via
threadpoolctl). Each side is warmed up on the identical shape (oneDNN re-JITs per shape,
Numba compiles once), then the two are run alternately and the median of the repeats is
reported. daskgru's figure includes its forward pass: ``gru_backward`` runs the forward
(keeping block start states) and the backward kernel recomputes each block's gates.
torch's figure is ``out, h = gru(x); (out * d_out).sum().backward()``.

GF/s counts the nominal work of forward + backward (3x the forward's 2·T·B·3H·(I+H) flops).

Usage::

    python benchmarks/bench_train.py [--threads 1] [--T 256] [--B 32] [--I 16] [--repeats 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--I", type=int, default=16)
    ap.add_argument("--H", type=int, nargs="+", default=[32, 64, 256])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import daskgru as dg

    torch.set_num_threads(args.threads)
    tdt = getattr(torch, args.dtype)
    rng = np.random.default_rng(0)
    T, B, I = args.T, args.B, args.I
    print(f"forward+backward, 1 layer, T={T} B={B} I={I} {args.dtype}, "
          f"threads={args.threads}, median of {args.repeats} alternated repeats")
    print(f"{'H':>5} {'daskgru ms':>11} {'torch ms':>9} {'ratio':>6} "
          f"{'daskgru GF/s':>13} {'torch GF/s':>11}")
    with threadpool_limits(args.threads):
        for H in args.H:
            p = dg.GRUParams.random(I, H, seed=0, dtype=args.dtype)
            x = rng.normal(size=(T, B, I)).astype(args.dtype)
            d_out = rng.normal(size=(T, B, H)).astype(args.dtype)
            m = torch.nn.GRU(I, H, dtype=tdt)
            m.load_state_dict({k: torch.from_numpy(v) for k, v in p.to_torch_state_dict().items()})
            xt, dt_ = torch.from_numpy(x), torch.from_numpy(d_out)

            def ours():
                dg.gru_backward(x, p, d_out)

            def theirs():
                m.zero_grad(set_to_none=True)
                out, _ = m(xt)
                (out * dt_).sum().backward()

            for f in (ours, theirs, ours, theirs):  # warm-up on the identical shape
                f()
            t_ours, t_torch = [], []
            for _ in range(args.repeats):
                for f, acc in ((ours, t_ours), (theirs, t_torch)):
                    t0 = time.perf_counter()
                    f()
                    acc.append(time.perf_counter() - t0)
            a, b = statistics.median(t_ours), statistics.median(t_torch)
            flops = 3 * 2 * T * B * 3 * H * (I + H)
            print(f"{H:>5} {a * 1e3:>11.2f} {b * 1e3:>9.2f} {a / b:>6.2f} "
                  f"{flops / a / 1e9:>13.2f} {flops / b / 1e9:>11.2f}")
    print("ratio = daskgru time / torch time (below 1: daskgru is faster)")


if __name__ == "__main__":
    main()
