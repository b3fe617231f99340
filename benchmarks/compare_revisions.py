"""Two revisions of daskgru side by side: did a change cost speed?

    python benchmarks/compare_revisions.py --base cd2cf33              # base vs this checkout
    python benchmarks/compare_revisions.py --base cd2cf33 --new HEAD   # base vs a commit
    python benchmarks/compare_revisions.py --base cd2cf33 --noise      # plus base vs itself
    python benchmarks/compare_revisions.py --base cd2cf33 --noise --interleave

The base revision (and ``--new``, when given) is checked out into a temporary git worktree.
Every row of compare.py's grid (eager: float32 and float64, 1 and 2 threads; dask: time
chunks of 512 steps on the threaded scheduler) is timed in a fresh process per revision, the
revisions alternating (base, new, base, new, ...) for ``--rounds`` rounds; each process warms
up on the same shape, then reports the median of ``--repeats`` calls. The table gives the
median over rounds of each revision and their ratio (new / base: above 1 is slower).
``--noise`` adds a second copy of the base to every round (base, new, copy, ...): its ratio
copy / base, measured in the same rounds, is the noise band of this machine.

``--interleave`` times the revisions inside one process per row instead: each revision's
package is copied under its own name (``daskgru_base``, ``daskgru_new``, ``daskgru_copy``; the
package imports itself only relatively), all are warmed up, and single calls alternate between
them ``--rounds * --repeats`` times, the order rotating, with a garbage collection before each.
The per-process differences (address layout, page placement, turbo state at start) then
cancel, which on a shared 2-core virtual machine is the larger part of the noise.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import describe  # noqa: E402 (benchmarks/machine.py)

GRID = [(4096, 1, 8, 32), (4096, 32, 16, 64), (1024, 64, 64, 256), (512, 256, 128, 512)]

INTERLEAVED = r"""
import gc, importlib, os, sys, time, statistics
import numpy as np
names, kind, dtype, threads, T, B, I, H, n = sys.argv[1:]
threads, T, B, I, H, n = map(int, (threads, T, B, I, H, n))
os.environ["DASKGRU_NUM_THREADS"] = str(threads)
names = names.split(",")
x = np.random.default_rng(0).standard_normal((T, B, I)).astype(dtype)
calls = []
for name in names:
    dg = importlib.import_module(name)
    p = dg.GRUParams.random(I, H, seed=0, dtype=dtype)
    if kind == "eager":
        f = (lambda dg, p: lambda: dg.gru(x, p))(dg, p)
    else:
        import dask, dask.array as da
        xd = da.from_array(x, chunks=(512, max(1, B // 2), I))
        f = (lambda dg, p: lambda: dask.compute(*dg.gru(xd, p), scheduler="threads",
                                                num_workers=threads))(dg, p)
    f()
    calls.append(f)
ts = [[] for _ in names]
for r in range(n):
    for j in range(len(names)):
        k = (r + j) % len(names)
        gc.collect()
        t = time.perf_counter()
        calls[k]()
        ts[k].append(time.perf_counter() - t)
print(" ".join(str(statistics.median(t)) for t in ts))
"""


def package_copy(src, tmp, name):
    """Copy the ``daskgru`` package of the checkout ``src`` to ``tmp/name``."""
    import shutil

    shutil.copytree(os.path.join(src, "daskgru"), os.path.join(tmp, name),
                    ignore=shutil.ignore_patterns("__pycache__"))


def measure_interleaved(tmp, names, row, n):
    env = dict(os.environ, PYTHONPATH=tmp)
    r = subprocess.run([sys.executable, "-c", INTERLEAVED, ",".join(names), *map(str, row),
                        str(n)], capture_output=True, text=True, env=env, cwd=tmp, check=True)
    return [float(v) for v in r.stdout.strip().splitlines()[-1].split()]


def worktree(rev, where):
    subprocess.run(["git", "worktree", "add", "--detach", where, rev], check=True,
                   capture_output=True)
    return where


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--new", help="git revision to compare (default: this checkout)")
    ap.add_argument("--noise", action="store_true",
                    help="also time a copy of the base in every round (the noise band)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--interleave", action="store_true",
                    help="alternate single calls of the revisions inside one process per row")
    ap.add_argument("--quick", action="store_true", help="T / 8")
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = [("eager", dt, thr, *shape) for thr in (1, 2) for dt in ("float32", "float64")
            for shape in GRID]
    if not args.no_dask:
        rows += [("dask", "float32", 2, *shape) for shape in GRID]
    if args.quick:
        rows = [(k, dt, thr, max(64, T // 8), B, I, H) for k, dt, thr, T, B, I, H in rows]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(here)
        try:
            base = worktree(args.base, os.path.join(tmp, "base"))
            new = worktree(args.new, os.path.join(tmp, "new")) if args.new else here
            copy = worktree(args.base, os.path.join(tmp, "copy")) if args.noise else None
            names = ["daskgru_base", "daskgru_new"] + (["daskgru_copy"] if copy else [])
            pkgs = os.path.join(tmp, "packages")
            for name, src in zip(names, (base, new, copy)):
                package_copy(src, pkgs, name)
            how = (f"one process per row, {args.rounds * args.repeats} alternated single "
                   f"calls each, median" if args.interleave else
                   f"{args.rounds} alternated rounds, median of {args.repeats} calls each")
            print(f"# {describe()}; base {args.base} vs {args.new or 'this checkout'}"
                  f"{' and a copy of the base' if copy else ''}; {how}")
            print(f"{'kind':6} {'dtype':8} {'thr':>3} {'T':>5} {'B':>4} {'I':>4} {'H':>4} | "
                  f"{'base ms':>9} {'new ms':>9} | {'new/base':>8}"
                  + (f" {'copy/base':>9}" if copy else ""))
            ratios, noise = [], []
            for row in rows:
                a, b, c = [], [], []
                for _ in range(0 if args.interleave else args.rounds):
                    for name, times in zip(names, (a, b, c)):  # a process each
                        times += measure_interleaved(pkgs, [name], row, args.repeats)
                if args.interleave:
                    got = measure_interleaved(pkgs, names, row, args.rounds * args.repeats)
                    a, b, c = [got[0]], [got[1]], got[2:]
                ma, mb = statistics.median(a), statistics.median(b)
                ratios.append(mb / ma)
                k, dt, thr, T, B, I, H = row
                line = (f"{k:6} {dt:8} {thr:>3} {T:>5} {B:>4} {I:>4} {H:>4} | {ma * 1e3:>9.2f} "
                        f"{mb * 1e3:>9.2f} | {mb / ma:>8.3f}")
                if copy:
                    noise.append(statistics.median(c) / ma)
                    line += f" {noise[-1]:>9.3f}"
                print(line, flush=True)
            for name, r in (("new/base", ratios), ("copy/base", noise)):
                if r:
                    print(f"{name} over all rows: min {min(r):.3f}, median "
                          f"{statistics.median(r):.3f}, max {max(r):.3f}")
        finally:
            os.chdir(here)
            for name in ("base", "new", "copy"):  # the worktrees this run made
                path = os.path.join(tmp, name)
                if os.path.isdir(path):
                    subprocess.run(["git", "worktree", "remove", "--force", path],
                                   capture_output=True)
            subprocess.run(["git", "worktree", "prune"], capture_output=True)
            os.chdir(cwd)


if __name__ == "__main__":
    main()
