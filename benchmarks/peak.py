"""This core's own floating-point multiply-add peak, measured by a probe of the core.

A loop of independent vector multiply-add chains, written in LLVM IR for the host's widest
vectors and compiled by llvmlite for the host CPU, runs with no memory traffic at all, so
the rate it reaches is what the core's arithmetic pipes can do (not what some BLAS's kernels
make of them, which may be older than the CPU). Two forms are timed:

- ``fma``: fused multiply-adds (``llvm.fma``), one rounding each;
- ``mul+add``: a rounded multiply then a rounded add, the order daskgru's products use.
  Cores with separate add pipes (AMD Zen) run this as fast as FMAs; cores whose adds share
  the FMA ports (Intel) reach about half.

Each result is GF/s of one thread (2 FLOPs per multiply-add); ``--threads N`` runs N
threads at once and reports their sum. ``python benchmarks/peak.py``.
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import threading
import time
from functools import lru_cache

from llvmlite import binding as llvm
from llvmlite import ir

CHAINS = 24  # independent accumulators: enough to cover latency x pipes on known cores
UNROLL = 4


def _host_vector_bytes():
    feats = dict(llvm.get_host_cpu_features())
    if feats.get("avx512f"):
        return 64
    return 32 if feats.get("avx") else 16


def _module(dtype, fused, lanes):
    fty = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    vty = ir.VectorType(fty, lanes)
    mod = ir.Module(name="peak")
    fn = ir.Function(mod, ir.FunctionType(fty, [ir.IntType(64)]), name="probe")
    suffix = f"v{lanes}{'f32' if dtype == 'float32' else 'f64'}"
    fma = ir.Function(mod, ir.FunctionType(vty, [vty, vty, vty]), name=f"llvm.fma.{suffix}")
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    x = ir.Constant(vty, [fty(1.0 + 2.0 ** -20)] * lanes)
    y = ir.Constant(vty, [fty(2.0 ** -30)] * lanes)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(ir.IntType(64))
    accs = [b.phi(vty) for _ in range(CHAINS)]
    cur = list(accs)
    for _ in range(UNROLL):
        for c in range(CHAINS):
            # acc * x + y: every chain depends only on itself, so they pipeline fully
            cur[c] = (b.call(fma, [cur[c], x, y]) if fused
                      else b.fadd(b.fmul(cur[c], x), y))
    i1 = b.add(i, ir.Constant(ir.IntType(64), 1))
    b.cbranch(b.icmp_unsigned("<", i1, fn.args[0]), loop, done)
    i.add_incoming(ir.Constant(ir.IntType(64), 0), entry)
    i.add_incoming(i1, loop)
    for a, c in zip(accs, cur):
        a.add_incoming(ir.Constant(vty, [fty(c_ + 1.0) for c_ in range(lanes)]), entry)
        a.add_incoming(c, loop)
    b.position_at_end(done)
    s = cur[0]
    for c in cur[1:]:
        s = b.fadd(s, c)
    b.ret(b.extract_element(s, ir.Constant(ir.IntType(32), 0)))
    return str(mod)


@lru_cache(maxsize=None)
def _engine():
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                      features=llvm.get_host_cpu_features().flatten(),
                                      opt=2)
    return llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)


@lru_cache(maxsize=None)
def _probe(dtype, fused):
    lanes = _host_vector_bytes() // (4 if dtype == "float32" else 8)
    mod = llvm.parse_assembly(_module(dtype, fused, lanes))
    mod.verify()
    eng = _engine()
    eng.add_module(mod)
    eng.finalize_object()
    ctype = ctypes.c_float if dtype == "float32" else ctypes.c_double
    f = ctypes.CFUNCTYPE(ctype, ctypes.c_int64)(eng.get_function_address("probe"))
    return f, lanes


def peak(dtype="float32", fused=True, threads=1, seconds=0.3):
    """Measured multiply-add rate in GF/s (all threads together), best of 3."""
    f, lanes = _probe(dtype, fused)
    flops_per_iter = 2 * CHAINS * UNROLL * lanes
    n = 1000
    while True:  # size the loop to about `seconds`
        t = time.perf_counter()
        f(n)
        dt = time.perf_counter() - t
        if dt > seconds / 10:
            break
        n *= 4
    n = max(1, int(n * seconds / dt))
    best = 0.0
    for _ in range(3):
        ts = [threading.Thread(target=f, args=(n,)) for _ in range(threads)]
        t = time.perf_counter()
        for th in ts:  # ctypes releases the GIL during the call
            th.start()
        for th in ts:
            th.join()
        dt = time.perf_counter() - t
        best = max(best, threads * n * flops_per_iter / dt / 1e9)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    a = p.parse_args(argv)
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from machine import describe

    print(describe())
    for fused in (True, False):
        name = "fma" if fused else "mul+add"
        print(f"{a.dtype} {name:>8}: {peak(a.dtype, fused, a.threads):7.1f} GF/s "
              f"({a.threads} thread{'s' if a.threads > 1 else ''})")


if __name__ == "__main__":
    main()
