"""daskgru against torch.nn.GRU and torch.nn.LSTM (and a plain NumPy loop) on the same CPU,
side by side.

    python benchmarks/compare.py                      # the grid, float32 and float64, 1 and 2 threads
    python benchmarks/compare.py --cells lstm         # the LSTM rows only
    python benchmarks/compare.py --quick              # smaller T, fewer repeats
    python benchmarks/compare.py --dask --cluster     # also dask chunks and LocalCluster scaling
    python benchmarks/compare.py --mask --no-eager    # what a mask with holes costs
    python benchmarks/compare.py --engines --cells gru --dtypes float32
                                                      # also ONNX Runtime, OpenVINO, JAX
    python benchmarks/compare.py --engines --isolate  # the same, each contender alone in a
                                                      # process of its own (float32 GRU rows)

Every contender is warmed up on the identical shape first (oneDNN compiles per shape, Numba
per dtype), then the contenders are run alternately (A, B, A, B, ...) and the medians of the
repeats are reported, so that drifts of a shared machine hit both alike. The thread count is
set the same for both: torch.set_num_threads, BLAS via threadpoolctl, DASKGRU_NUM_THREADS.
With ``--engines`` the float32 GRU rows also run ONNX Runtime, OpenVINO and JAX (see
engines.py; outputs cross-checked against daskgru's), and the process is pinned to as many
CPUs as threads for every contender alike. With ``--isolate`` every contender runs alone in
a fresh process per row and round (pinned to as many CPUs as threads, the contenders
alternated, ``--rounds`` rounds, the repeats back to back): no engine's leftover threads
share the CPUs with the next contender; each contender's time is the best of its rounds'
medians.
GF/s counts 2 FLOPs per multiply-add of the input and recurrent products: 2*G*(I+H) a step,
G = 3H for a GRU and 4H for an LSTM; %peak is of the core's own multiply-add peak at that
thread count, measured by benchmarks/peak.py (a probe of the arithmetic pipes, no memory).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import describe  # noqa: E402 (benchmarks/machine.py)

GRID = [(4096, 1, 8, 32), (4096, 32, 16, 64), (1024, 64, 64, 256), (512, 256, 128, 512)]


def flops(T, B, I, H, gates=3):
    return 2.0 * T * B * gates * H * (I + H)


def core_peak(threads, dtype="float32"):
    """This CPU's own multiply-add peak at the given thread count (GF/s), measured by the
    probe of the core in peak.py (mul+add form, the one daskgru's products use; on cores
    where it is slower than FMAs, the FMA rate is the peak), not by a BLAS."""
    from peak import peak

    return max(peak(dtype, fused=True, threads=threads), peak(dtype, fused=False, threads=threads))


def numpy_loop(x, w_ih, w_hh, b_ih, b_hh):
    """The plain sequential NumPy GRU a user would write (one matmul pair per step)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    h = np.zeros((B, H), x.dtype)
    out = np.empty((T, B, H), x.dtype)
    gi_all = x @ w_ih.T + b_ih
    for t in range(T):
        gh = h @ w_hh.T + b_hh
        gi = gi_all[t]
        r = 1 / (1 + np.exp(-(gi[:, :H] + gh[:, :H])))
        z = 1 / (1 + np.exp(-(gi[:, H:2 * H] + gh[:, H:2 * H])))
        n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * n + z * h
        out[t] = h
    return out


# Seconds of rest before each timed call: the engines' thread pools spin for a while after
# a call (JAX's, ONNX Runtime's, OpenMP's), and on as many CPUs as threads that spinning
# slows whichever contender runs next (2 threads, (1024, 64, 64, 256), Zen 5: daskgru right
# after JAX 134 ms, after a 0.1 s rest 105 ms; OpenVINO right after ONNX Runtime 126 ms,
# rested 110 ms).
REST = 0.1


def alternate(fns, repeats):
    """Run each function once to warm up, then alternately, each after :data:`REST`
    seconds of rest; return median seconds each. A function that returns a number has
    timed itself (seconds)."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            time.sleep(REST)
            t = time.perf_counter()
            own = f()
            times[k].append(own if isinstance(own, float) else time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def torch_runner(Torch, p, x):
    """A call of torch's ``Torch`` module (GRU or LSTM) with ``p``'s weights on ``x``, no
    autograd; returns the output as NumPy."""
    import torch

    m = Torch(p.input_size, p.hidden_size).to(getattr(torch, str(x.dtype)))
    m.load_state_dict({k: torch.from_numpy(v) for k, v in p.to_torch_state_dict().items()})
    xt = torch.from_numpy(x)

    def run():
        with torch.no_grad():
            return m(xt)[0].numpy()

    return run


def make_row(cell, dtype, threads, shape, med, peak, engines=()):
    """The printed and returned row from the contenders' seconds ``med``; prints it."""
    T, B, I, H = shape
    fl = flops(T, B, I, H, 3 if cell == "gru" else 4)
    row = dict(cell=cell, dtype=dtype, threads=threads, T=T, B=B, I=I, H=H,
               ms=med["daskgru"] * 1e3, torch_ms=med["torch"] * 1e3,
               gflops=fl / med["daskgru"] / 1e9, torch_gflops=fl / med["torch"] / 1e9,
               ratio=med["torch"] / med["daskgru"], peak=peak,
               pct_peak=100 * fl / med["daskgru"] / 1e9 / peak,
               numpy_ms=med.get("numpy", float("nan")) * 1e3)
    row.update({f"{e}_ms": med[e] * 1e3 for e in engines if e in med})
    print(fmt(row), flush=True)
    if any(e in med for e in engines):
        print("     " + ", ".join(
            f"{e} {med[e] * 1e3:.2f} ms ({med[e] / med['daskgru']:.2f}x daskgru's)"
            for e in engines if e in med), flush=True)
    return row


def eager_rows(threads, dtypes, repeats, quick, with_numpy, cells=("gru",), engines=()):
    import torch
    from threadpoolctl import threadpool_limits

    import daskgru as dg

    rows = []
    torch.set_num_threads(threads)
    os.environ["DASKGRU_NUM_THREADS"] = str(threads)
    for cell in cells:
        Params = dg.GRUParams if cell == "gru" else dg.LSTMParams
        run = dg.gru if cell == "gru" else dg.lstm
        Torch = torch.nn.GRU if cell == "gru" else torch.nn.LSTM
        for dtype in dtypes:
            peak = core_peak(threads, dtype)
            for T, B, I, H in GRID:
                T = max(64, T // 8) if quick else T
                p = Params.random(I, H, seed=0, dtype=dtype)
                x = np.random.default_rng(0).standard_normal((T, B, I)).astype(dtype)
                fns = {"daskgru": lambda: run(x, p), "torch": torch_runner(Torch, p, x)}
                w = p.weights[0][0]
                if with_numpy and cell == "gru" and T * B * H <= 4096 * 64 * 64:
                    fns["numpy"] = lambda: numpy_loop(x, w.w_ih, w.w_hh, w.b_ih, w.b_hh)
                if engines and cell == "gru" and dtype == "float32":
                    import engines as eng

                    want = run(x, p)[0]
                    for e in engines:
                        f = eng.RUNNERS[e](p, x, threads)
                        eng.check(e, f(), want)
                        fns[e] = f
                with threadpool_limits(threads, user_api="blas"):
                    med = alternate(fns, repeats)
                rows.append(make_row(cell, dtype, threads, (T, B, I, H), med, peak, engines))
    return rows


def time_one(contender, threads, shape, repeats):
    """Median seconds of one contender's call on the float32 GRU of ``shape`` (T, B, I, H),
    alone in this process, pinned to ``threads`` CPUs (``--one``, run by :func:`isolated_rows`).
    An engine's output is checked against daskgru's first."""
    from threadpoolctl import threadpool_limits

    T, B, I, H = shape
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    os.environ["DASKGRU_NUM_THREADS"] = str(threads)
    import daskgru as dg

    p = dg.GRUParams.random(I, H, seed=0, dtype="float32")
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype("float32")
    if contender == "daskgru":
        f = lambda: dg.gru(x, p)  # noqa: E731
    elif contender == "torch":
        import torch

        import engines as eng

        torch.set_num_threads(threads)
        f = torch_runner(torch.nn.GRU, p, x)
        eng.check(contender, f(), dg.gru(x, p)[0])
    else:
        import engines as eng

        f = eng.RUNNERS[contender](p, x, threads)
        eng.check(contender, f(), dg.gru(x, p)[0])
    # no rest between the calls (alternate's rest is for other engines' threads, and there
    # are none here): after 0.1 s of anything else a call's Python path runs cold, ~0.5 ms
    # more for daskgru and torch, ~0.26 ms for ONNX Runtime on the Zen 5 guest (see
    # docs/performance.md, ninth session), which would swamp the 1 ms single-sequence row
    with threadpool_limits(threads, user_api="blas"):
        f()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def isolated_rows(threads_list, repeats, rounds, engines, quick=False):
    """The float32 GRU rows with every contender alone in a fresh process (:func:`time_one`),
    contenders alternated, ``rounds`` rounds; each contender's best median."""
    import subprocess

    rows = []
    for threads in threads_list:
        peak = core_peak(threads, "float32")
        for shape in GRID:
            if quick:
                shape = (max(64, shape[0] // 8),) + tuple(shape[1:])
            names = ["daskgru", "torch", *engines]
            best = dict.fromkeys(names, float("inf"))
            for _ in range(rounds):
                for n in names:
                    res = subprocess.run(
                        [sys.executable, os.path.abspath(__file__), "--one", n, str(threads),
                         ",".join(map(str, shape)), "--repeats", str(repeats)],
                        capture_output=True, text=True)
                    if res.returncode:
                        raise SystemExit(f"{n} on {shape} failed:\n{res.stderr[-2000:]}")
                    best[n] = min(best[n], float(res.stdout.split()[-1]))
            rows.append(make_row("gru", "float32", threads, shape, best, peak, engines))
    return rows


HEADER = (f"{'cell':4} {'dtype':8} {'thr':>3} {'T':>5} {'B':>4} {'I':>4} {'H':>4} | {'daskgru ms':>10} "
          f"{'GF/s':>6} {'%peak':>6} | {'torch ms':>9} {'GF/s':>6} | {'speedup':>7} | {'numpy ms':>9}")


def fmt(r):
    return (f"{r['cell']:4} {r['dtype']:8} {r['threads']:>3} {r['T']:>5} {r['B']:>4} {r['I']:>4} {r['H']:>4} | "
            f"{r['ms']:>10.1f} {r['gflops']:>6.1f} {r['pct_peak']:>5.1f}% | {r['torch_ms']:>9.1f} "
            f"{r['torch_gflops']:>6.1f} | {r['ratio']:>6.2f}x | {r['numpy_ms']:>9.1f}")


def dask_rows(repeats, quick):
    """dask (chunks of 512 steps, threads scheduler) against eager on the same input."""
    import dask
    import dask.array as da
    from threadpoolctl import threadpool_limits

    import daskgru as dg

    print("\ndask, time chunks of 512 steps, threads scheduler with 2 threads, against eager "
          "(2 threads):")
    os.environ["DASKGRU_NUM_THREADS"] = "2"
    for T, B, I, H in GRID:
        T = max(1024, T // 4) if quick else T
        p = dg.GRUParams.random(I, H, seed=0)
        x = np.random.default_rng(0).standard_normal((T, B, I)).astype("float32")
        bch = max(1, B // 2)
        xd = da.from_array(x, chunks=(512, bch, I))
        def run_dask():
            with threadpool_limits(1, user_api="blas"):
                dask.compute(*dg.gru(xd, p), scheduler="threads", num_workers=2)

        med = alternate({"eager": lambda: dg.gru(x, p), "dask": run_dask}, repeats)
        print(f"  T={T:5} B={B:4} I={I:4} H={H:4} batch chunks of {bch}: eager {med['eager']*1e3:8.1f} ms"
              f"  dask {med['dask']*1e3:8.1f} ms  dask/eager {med['dask']/med['eager']:.2f}")


def mask_rows(threads, repeats, quick):
    """What a mask costs: the same call with and without a mask with holes (30% of the
    steps masked, at random), alternated, for both cells."""
    import daskgru as dg

    os.environ["DASKGRU_NUM_THREADS"] = str(threads)
    print(f"\nmask with holes (30% masked) against no mask, float32, {threads} thread(s):")
    for cell in ("gru", "lstm"):
        Params, run = (dg.GRUParams, dg.gru) if cell == "gru" else (dg.LSTMParams, dg.lstm)
        for T, B, I, H in GRID:
            if B < 32:
                continue
            T = max(64, T // 8) if quick else T
            p = Params.random(I, H, seed=0)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((T, B, I)).astype("float32")
            mask = rng.random((T, B)) > 0.3
            med = alternate({"plain": lambda: run(x, p), "mask": lambda: run(x, p, mask=mask)},
                            repeats)
            print(f"  {cell:4} T={T:5} B={B:4} I={I:4} H={H:4}: no mask {med['plain']*1e3:8.1f} ms"
                  f"  mask {med['mask']*1e3:8.1f} ms  mask/no mask {med['mask']/med['plain']:.3f}",
                  flush=True)


def cluster_rows(repeats, quick):
    """LocalCluster, 2 batch chunks: 2 workers x 1 thread against 1 worker x 1 thread.

    Two inputs: persisted on the cluster first (the GRU alone), and generated lazily in the
    same graph (random numbers too). A run persists (output, h_n) on the cluster and waits,
    as a cluster user would; fetching them is not timed. Both graphs (each chunk size) are
    alternated on the same cluster."""
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    import daskgru as dg
    from daskgru.run import _forget, _keys_of

    print("\nLocalCluster (processes), 2 batch chunks: 1 worker vs 2 workers, 1 thread each "
          "(persist output and h_n):")
    T, B, I, H = (2048, 64, 16, 64) if quick else (8192, 64, 16, 64)
    p = dg.GRUParams.random(I, H, seed=0)
    res = {}
    for n in (1, 2):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            fns = {}
            for tch in (512, 2048):
                x = da.random.default_rng(0).standard_normal((T, B, I), chunks=(tch, B // 2, I))
                x = x.astype("float32")
                xp = x.persist()
                wait(xp)
                xg = da.random.default_rng(1).standard_normal((T, B, I), chunks=(tch, B // 2, I))
                for kind, xx in (("persisted", xp), ("generated", xg.astype("float32"))):
                    res_ = dg.gru(xx, p)

                    def run(res_=res_):
                        t = time.perf_counter()
                        futs = client.persist(list(res_))
                        wait(futs)
                        el = time.perf_counter() - t
                        # released and forgotten, so that the next run of these keys
                        # computes (not cancelled: see daskgru.run._forget)
                        keys = _keys_of(futs)
                        del futs
                        _forget(client, keys)
                        return el

                    fns[(tch, kind)] = run
            med = alternate(fns, repeats)
            for k, v in med.items():
                res[(n,) + k] = v
    for tch in (512, 2048):
        for kind in ("persisted", "generated"):
            a, b = res[(1, tch, kind)], res[(2, tch, kind)]
            print(f"  T={T} B={B} I={I} H={H}, time chunks of {tch}, input {kind}: "
                  f"1 worker {a*1e3:.0f} ms, 2 workers {b*1e3:.0f} ms, speedup {a/b:.2f}x")


def _versions(engines):
    from importlib.metadata import version

    return [f"{e} {version(e)}" for e in engines]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--cells", nargs="+", default=["gru", "lstm"], choices=["gru", "lstm"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="T/8 and fewer repeats")
    ap.add_argument("--numpy", action="store_true", help="also time the plain NumPy loop")
    ap.add_argument("--dask", action="store_true", help="also dask chunks against eager")
    ap.add_argument("--cluster", action="store_true", help="also LocalCluster 1 vs 2 workers")
    ap.add_argument("--mask", action="store_true", help="also a mask with holes vs no mask")
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--engines", action="store_true",
                    help="also ONNX Runtime, OpenVINO and JAX (float32 GRU rows)")
    ap.add_argument("--isolate", action="store_true",
                    help="each contender alone in a fresh process (the float32 GRU rows only: "
                         "--cells and --dtypes do not apply)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of --isolate")
    ap.add_argument("--one", nargs=3, metavar=("CONTENDER", "THREADS", "T,B,I,H"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        import engines as eng

        name, threads, shape = args.one
        if name not in ("daskgru", "torch", *eng.RUNNERS):
            ap.error(f"--one: unknown contender {name!r} (daskgru, torch, "
                     f"{', '.join(eng.RUNNERS)})")
        print(time_one(name, int(threads), tuple(map(int, shape.split(","))), args.repeats))
        return
    if args.quick:
        args.repeats = min(args.repeats, 3)
    import numba
    import torch

    print(f"# {describe()}, "
          f"python {sys.version.split()[0]}, numpy {np.__version__}, numba {numba.__version__}, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    if args.isolate:
        import engines as eng

        engines = eng.available() if args.engines else []
        print(f"# each contender alone in a process, best of {args.rounds} rounds; engines: "
              f"{', '.join(_versions(engines)) or 'none'}")
        print(HEADER)
        isolated_rows(args.threads, args.repeats, args.rounds, engines, args.quick)
    elif not args.no_eager:
        print(HEADER)
        engines = ()
        if args.engines:
            import engines as eng

            engines = eng.available()
            if "jax" in engines:
                eng.start_jax()  # before pinning: its pool gets every CPU
            print(f"# engines: {', '.join(engines) or 'none installed'} "
                  f"({', '.join(_versions(engines))})")
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        for threads in args.threads:
            if engines and cpus:
                os.sched_setaffinity(0, cpus[:threads])
            try:
                eager_rows(threads, args.dtypes, args.repeats, args.quick, args.numpy,
                           args.cells, engines)
            finally:
                if engines and cpus:
                    os.sched_setaffinity(0, cpus)
    if args.mask:
        for threads in args.threads:
            mask_rows(threads, args.repeats, args.quick)
    if args.dask:
        dask_rows(args.repeats, args.quick)
    if args.cluster:
        cluster_rows(args.repeats, args.quick)


if __name__ == "__main__":
    main()
