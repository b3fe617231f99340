"""Forward + backward of one GRU layer: daskgru.gru_backward against torch autograd and
``jax.grad`` through a jitted ``lax.scan`` (when JAX is installed).

All sides get the same thread count (torch.set_num_threads; BLAS threads of NumPy via
threadpoolctl; DASKGRU_NUM_THREADS; JAX's pool follows the process's CPU affinity, which is
pinned to as many CPUs as threads for every contender alike). Each side is warmed up on the
identical shape (oneDNN re-JITs per shape, XLA compiles per shape, Numba once), then they are
run alternately and the median of the repeats is reported; the gradients of the weights are
checked against daskgru's before timing. daskgru's figure includes its forward pass: ``gru_backward`` runs the forward
(keeping block start states) and the backward kernel recomputes each block's gates.
torch's figure is ``out, h = gru(x); (out * d_out).sum().backward()``; JAX's the gradient
of ``sum(out * d_out)`` with respect to the four weight arrays and the input.

GF/s counts the nominal work of forward + backward (3x the forward's 2·T·B·3H·(I+H) flops).

Usage::

    python benchmarks/bench_train.py [--threads 1 2] [--T 256] [--B 32] [--I 16] [--repeats 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# Seconds of rest before each timed call: torch's and JAX's thread pools spin for a while
# after a call and slow whichever contender runs next on the same CPUs (see compare.py).
REST = 0.1


def jax_grad(p, x, d_out):
    """``f()`` giving JAX's gradients (w_ih, w_hh, b_ih, b_hh, x) of sum(gru(x) * d_out)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    cpu = jax.devices("cpu")[0]
    w = p.weights[0][0]
    H = p.hidden_size
    put = lambda a: jax.device_put(np.asarray(a), cpu)  # noqa: E731

    def loss(w_ih, w_hh, b_ih, b_hh, xs, dy):
        gi = xs @ w_ih.T + b_ih

        def step(h, g):
            gh = h @ w_hh.T + b_hh
            r = jax.nn.sigmoid(g[:, :H] + gh[:, :H])
            z = jax.nn.sigmoid(g[:, H:2 * H] + gh[:, H:2 * H])
            n = jnp.tanh(g[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1 - z) * n + z * h
            return h, h

        out = jax.lax.scan(step, jnp.zeros((xs.shape[1], H), xs.dtype), gi)[1]
        return jnp.sum(out * dy)

    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
    args = [put(a) for a in (w.w_ih, w.w_hh, w.b_ih, w.b_hh, x, d_out)]
    return lambda: [np.asarray(a) for a in jax.block_until_ready(g(*args))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--I", type=int, default=16)
    ap.add_argument("--H", type=int, nargs="+", default=[32, 64, 256, 512])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-jax", action="store_true")
    args = ap.parse_args(argv)

    import importlib.util

    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, ".."))
    sys.path.insert(0, here)
    import daskgru as dg
    from machine import describe

    use_jax = not args.no_jax and importlib.util.find_spec("jax") is not None
    if use_jax:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax

        jax.config.update("jax_enable_x64", args.dtype == "float64")
        from engines import start_jax

        start_jax()  # before pinning: its pool gets every CPU, then follows the affinity
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    tdt = getattr(torch, args.dtype)
    rng = np.random.default_rng(0)
    T, B, I = args.T, args.B, args.I
    print(f"# {describe()}; torch {torch.__version__}"
          + (f", jax {jax.__version__}" if use_jax else ""))
    print(f"forward+backward, 1 layer, T={T} B={B} I={I} {args.dtype}, "
          f"median of {args.repeats} alternated repeats")
    print(f"{'thr':>3} {'H':>5} {'daskgru ms':>11} {'GF/s':>6} {'torch ms':>9} {'ratio':>6}"
          + (f" {'jax ms':>9} {'ratio':>6}" if use_jax else ""))
    for threads in args.threads:
        torch.set_num_threads(threads)
        os.environ["DASKGRU_NUM_THREADS"] = str(threads)
        if cpus:
            os.sched_setaffinity(0, cpus[:threads])
        try:
            with threadpool_limits(threads):
                for H in args.H:
                    p = dg.GRUParams.random(I, H, seed=0, dtype=args.dtype)
                    x = rng.normal(size=(T, B, I)).astype(args.dtype)
                    d_out = rng.normal(size=(T, B, H)).astype(args.dtype)
                    m = torch.nn.GRU(I, H, dtype=tdt)
                    m.load_state_dict({k: torch.from_numpy(v)
                                       for k, v in p.to_torch_state_dict().items()})
                    xt, dt_ = torch.from_numpy(x), torch.from_numpy(d_out)

                    def ours():
                        return dg.gru_backward(x, p, d_out)

                    def theirs():
                        m.zero_grad(set_to_none=True)
                        out, _ = m(xt)
                        (out * dt_).sum().backward()

                    fns = {"daskgru": ours, "torch": theirs}
                    if use_jax:
                        fns["jax"] = jax_grad(p, x, d_out)
                        want = ours()[0].weights[0][0].w_hh
                        got = fns["jax"]()[1]
                        err = float(np.max(np.abs(got - want)))
                        if not err <= 1e-3 * max(1.0, float(np.max(np.abs(want)))):
                            raise AssertionError(f"jax's gradient differs: {err:.2e}")
                    for f in list(fns.values()) * 2:  # warm-up on the identical shape
                        f()
                    times = {k: [] for k in fns}
                    for _ in range(args.repeats):
                        for k, f in fns.items():
                            time.sleep(REST)  # other pools' spinning threads park first
                            t0 = time.perf_counter()
                            f()
                            times[k].append(time.perf_counter() - t0)
                    med = {k: statistics.median(v) for k, v in times.items()}
                    flops = 3 * 2 * T * B * 3 * H * (I + H)
                    a = med["daskgru"]
                    line = (f"{threads:>3} {H:>5} {a * 1e3:>11.2f} {flops / a / 1e9:>6.1f} "
                            f"{med['torch'] * 1e3:>9.2f} {a / med['torch']:>6.2f}")
                    if use_jax:
                        line += f" {med['jax'] * 1e3:>9.2f} {a / med['jax']:>6.2f}"
                    print(line, flush=True)
        finally:
            if cpus:
                os.sched_setaffinity(0, cpus)
    print("ratio = daskgru time / the other's time (below 1: daskgru is faster)")


if __name__ == "__main__":
    main()
