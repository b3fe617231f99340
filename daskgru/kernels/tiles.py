"""Register-tiled matrix products with a fixed order of operations per element.

``product(a, ra, n, w, b, c0, c1, out, ro, fused)`` computes, for ``i < n`` and
``c0 <= c < c1``::

    out[ro + i, c] = b[c] + a[ra + i, 0] * w[0, c] + a[ra + i, 1] * w[1, c] + ...

added left to right: the bias first, then the products in index order, each either a fused
multiply-add (``fused``: ``s = a * w + s`` rounded once; the ``daskgru.fma`` setting, see
:mod:`daskgru.numerics`) or a rounded multiply followed by a rounded add (no fast-math
contraction, no reassociation: exactly what the plain loops compute). Either way every
element gets the same bits whatever the number of rows in a call, how they are tiled, or how
many threads run: results stay independent of time and batch chunking, which BLAS does not
promise (its kernel, blocking and summation order change with the shape of a call and its
thread count). An FMA is exactly rounded by every CPU (in software where there is no FMA
instruction), so neither form depends on the CPU either.

Speed comes from keeping a tile of R rows x V vectors of outputs in registers while k runs:
each step loads V vectors of ``w[k]`` and R scalars of ``a[:, k]`` and does R*V vector
multiply-adds (FMAs, or a multiply and an add: twice the instructions, which even cores with
separate add pipes such as AMD Zen 4 feel, 25-40% here). Numba does not keep array tiles in
registers, so the tile is written in LLVM IR (an ``intrinsic``) over vectors of the host's
widest width (or those of ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` when set); LLVM splits
wider vectors on narrower machines, so the code is portable and only the speed changes.

The tile shape (R, V) is chosen per CPU, because which one is fastest depends on the core:
the first import on a machine times the candidates that fit its registers (:func:`tune`,
about two seconds) and keeps the choice in a small file beside Numba's cache, keyed by the CPU
(:func:`tune_file`); ``DASKGRU_TILES="RxV"`` forces one. The shape never changes the bits.

Numba compiles a function once for every pattern of literal ints its callers pass
(``product(h, 0, B, ...)`` and ``product(x, a, n, ...)`` would be two compiles of all the
tiles), so the kernels pass ``int(0)``, which Numba types as a plain int64.

The Numba kernels call ``product`` through :func:`call_product`: a table of two function
pointers per float type (FMA or not), bound by name in each process, whose entry
:func:`export` fills with the product of that one form, compiled once, the first time a
call needs it; rather than linked into every kernel and compiled again with each. The
kernels are cached on disk; Numba keys its cache on the calling module's source, not on
this one, so they are declared with :func:`daskgru.kernels.jit.kernel`, whose cache key
covers this file and the tile shape.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.compiler_lock import global_compiler_lock
from numba.core.errors import TypingError
from numba.extending import intrinsic

from .cache import njit_cached

__all__ = ["product", "product_t", "call_product", "export", "run_product", "run_product_t",
           "fma", "VECTOR_BYTES", "TILE", "tune"]


def _vector_bytes():
    """Width of the vectors Numba's code may use: the host's, or what NUMBA_CPU_NAME /
    NUMBA_CPU_FEATURES ask for (e.g. a portable cache built for a generic CPU)."""
    name, features = numba.config.CPU_NAME, numba.config.CPU_FEATURES
    if name in (None, "host") and not features:
        feats = dict(llvm_binding.get_host_cpu_features())
    else:  # only what was asked for explicitly; a named CPU alone gets the narrowest
        feats = {f[1:]: f[0] == "+" for f in (features or "").split(",") if f}
    if feats.get("avx512f"):
        return 64
    return 32 if feats.get("avx") else 16


# Bytes of one vector register, and how many vector registers there are.
VECTOR_BYTES = _vector_bytes()
REGISTERS = 32 if VECTOR_BYTES == 64 else 16
# Row panels of ``a`` of about this many bytes stay in L2 while all column blocks pass.
_PANEL_BYTES = 256 << 10
# A sum over more terms than this many bytes of a row of ``a`` is taken in ranges of k of
# _K_BLOCK_BYTES (the weight gradients, summed over every row and step of a chunk). On the
# AMD Zen 5, dW of T*B = 8192 rows at H = 512: ranges of 1 KiB 177 GF/s, 2 KiB 161, 4 KiB
# 138, 8 KiB 87 (one thread, float32).
_LONG_K_BYTES = 16 << 10
_K_BLOCK_BYTES = 1 << 10


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (IEEE fused multiply-add: the same bits on every CPU, from
    its FMA instruction or, on a CPU without one, libm's exact ``fma``); LLVM vectorizes it."""
    if not (a == b == c and isinstance(a, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        fty = context.get_value_type(signature.args[0])
        name = "llvm.fma.f32" if signature.args[0] == types.float32 else "llvm.fma.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(fty, [fty] * 3),
                                            name)
        return builder.call(fn, args)

    return a(a, a, a), codegen


def _check_types(a, w, b, out):
    """The tiles read and write raw memory with a's element type and unit inner strides:
    refuse (at compile time) anything but C-contiguous arrays of one float type."""
    arrays = (a, w, b, out)
    ok = (all(isinstance(t, types.Array) and t.layout == "C" for t in arrays)
          and (a.ndim, w.ndim, b.ndim, out.ndim) == (2, 2, 1, 2)
          and isinstance(a.dtype, types.Float) and len({t.dtype for t in arrays}) == 1)
    if not ok:
        raise TypingError("daskgru.tiles.product needs C-contiguous arrays of one float type: "
                          "a (M, K), w (K, N), b (N,), out (M, N); got "
                          + ", ".join(str(t) for t in arrays))


def _make_tile(R, V, fused=False, transposed=False):
    """An intrinsic ``tile(a, w, b, out, ra, ro, c0, k0, k1)``: the R x (V * lanes) block
    of outputs with rows ra.. of ``a`` (ro.. of ``out``) and columns c0.., as described
    above, over the terms k0 <= k < k1; with ``fused``, each product is added by a fused
    multiply-add (one rounding). For k0 > 0 the sums start from what ``out`` holds instead
    of the bias: a product over all k split into ranges of k, each resuming where the one
    before stopped, adds the same terms in the same order. ``transposed``: ``a`` is given
    as its transpose (K, .), row i's terms read from its column ra + i."""

    @intrinsic
    def tile(typingctx, a, w, b, out, ra, ro, c0, k0, k1):
        _check_types(a, w, b, out)
        i64_ = types.int64
        sig = types.void(a, w, b, out, i64_, i64_, i64_, i64_, i64_)

        def codegen(context, builder, signature, args):
            aa, ww, bb, oo = (context.make_array(t)(context, builder, v)
                              for t, v in zip(signature.args[:4], args[:4]))
            ra_, ro_, c0_, k0_, k1_ = args[4:]
            fty = context.get_value_type(a.dtype)
            L = VECTOR_BYTES // context.get_abi_sizeof(fty)
            vty = ir.VectorType(fty, L)
            i64 = ir.IntType(64)
            zeros = ir.Constant(ir.VectorType(ir.IntType(32), L), [0] * L)
            vfma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vty] * 3),
                f"llvm.fma.v{L}{'f32' if L * 4 == VECTOR_BYTES else 'f64'}")

            def vptr(p):
                return builder.bitcast(p, vty.as_pointer())

            def byte_offset(p, nbytes):  # strides are in bytes
                return builder.inttoptr(builder.add(builder.ptrtoint(p, i64), nbytes), p.type)

            sa = cgutils.unpack_tuple(builder, aa.strides, 2)[0]
            sw = cgutils.unpack_tuple(builder, ww.strides, 2)[0]
            so = cgutils.unpack_tuple(builder, oo.strides, 2)[0]
            ocol = builder.gep(oo.data, [c0_])
            orows = [byte_offset(ocol, builder.mul(builder.add(ro_, i64(i)), so))
                     for i in range(R)]
            # Accumulators live in allocas that LLVM promotes to registers.
            acc = [[cgutils.alloca_once(builder, vty) for _ in range(V)] for _ in range(R)]
            with builder.if_else(builder.icmp_signed(">", k0_, i64(0))) as (resume, start):
                with resume:
                    for j in range(V):
                        for i in range(R):
                            builder.store(builder.load(
                                vptr(builder.gep(orows[i], [i64(j * L)])), align=1), acc[i][j])
                with start:
                    for j in range(V):
                        bias = builder.load(
                            vptr(builder.gep(bb.data, [builder.add(c0_, i64(j * L))])), align=1)
                        for i in range(R):
                            builder.store(bias, acc[i][j])
            rows = [byte_offset(aa.data, builder.mul(builder.add(ra_, i64(i)), sa))
                    for i in range(0 if transposed else R)]
            wcol = builder.gep(ww.data, [c0_])
            with cgutils.for_range(builder, builder.sub(k1_, k0_)) as loop:
                k = builder.add(k0_, loop.index)
                wk = byte_offset(wcol, builder.mul(k, sw))
                wv = [builder.load(vptr(builder.gep(wk, [i64(j * L)])), align=1)
                      for j in range(V)]
                ak = byte_offset(aa.data, builder.mul(k, sa)) if transposed else None
                for i in range(R):
                    x = builder.load(builder.gep(ak, [builder.add(ra_, i64(i))]) if transposed
                                     else builder.gep(rows[i], [k]))
                    xv = builder.insert_element(ir.Constant(vty, ir.Undefined), x, i64(0))
                    xv = builder.shuffle_vector(xv, xv, zeros)
                    for j in range(V):
                        if fused:  # llvm.fma: rounded once, on every CPU
                            s = builder.call(vfma, [xv, wv[j], builder.load(acc[i][j])])
                        else:  # plain fmul then fadd: no fast-math flags, no contraction
                            s = builder.fadd(builder.load(acc[i][j]), builder.fmul(xv, wv[j]))
                        builder.store(s, acc[i][j])
            for i in range(R):
                for j in range(V):
                    builder.store(builder.load(acc[i][j]),
                                  vptr(builder.gep(orows[i], [i64(j * L)])), align=1)
            return context.get_dummy_value()

        return sig, codegen

    return tile



# ------------------------------------------------------------------ tile shapes
# A tile of R rows x V vectors holds R*V accumulators, V vectors of w and a broadcast in
# registers. Which shape is fastest depends on the core (how many loads and broadcasts it
# issues per cycle beside its multiplies and adds), not on the bits: every shape computes
# every element in the same order. The candidates fit the register file; the shape is
# chosen per CPU by timing them once (:func:`tune`), or forced with DASKGRU_TILES="RxV".
# The first is kept unless another is clearly faster: 8 x 3 was the fastest or level in whole
# products on both AMD machines measured (Zen 4 and Zen 5), 12 x 2 close behind.
CANDIDATES = {32: ((8, 3), (12, 2), (5, 4), (6, 4), (4, 6)),
              16: ((6, 2), (4, 3), (5, 2), (3, 3))}


# Vectors of the one-row tile that takes calls of fewer rows than the 4-row tile (one
# sequence, B = 1): each column's sum is a chain of dependent multiply-adds (the order of the
# terms is fixed), so such a call is bound by the latency of those chains, and the more
# columns a tile keeps going at once the better, up to what the registers hold. One thread,
# AMD Zen 5, T = 4096, B = 1: H = 256 46.8-47.5 -> 31.1-35.2 ms, H = 64 2.25-2.54 ->
# 2.25-2.44 ms, against tiles of the main shape's V vectors (H = 32, 96 columns, does not
# use it).
WIDE = 12 if REGISTERS == 32 else 8


def _row_driver(R, V, fused=False, transposed=False):
    """Rows n of one column block of V vectors at cb, terms k0 <= k < k1: tiles of R rows,
    then of 8 and of 4 (those smaller than R), then of 1. The 8-row tile is for what a split
    batch leaves: with 12-row tiles, 20 or 32 rows ran 15-20% faster with it than with two
    4-row tiles (one thread, AMD Zen 5)."""
    R8, R4 = min(8, R), min(4, R)
    big, one = _make_tile(R, V, fused, transposed), _make_tile(1, V, fused, transposed)
    mid8 = _make_tile(R8, V, fused, transposed) if R8 < R else big  # no second copy
    mid4 = _make_tile(R4, V, fused, transposed) if R4 < R8 else mid8

    @numba.njit(nogil=True, boundscheck=False, inline="always")
    def rows(a, w, b, out, ra, ro, n, cb, k0, k1):
        i = 0
        while i + R <= n:
            big(a, w, b, out, ra + i, ro + i, cb, k0, k1)
            i += R
        if R8 < R:
            while i + R8 <= n:
                mid8(a, w, b, out, ra + i, ro + i, cb, k0, k1)
                i += R8
        if R4 < R8:
            while i + R4 <= n:
                mid4(a, w, b, out, ra + i, ro + i, cb, k0, k1)
                i += R4
        while i < n:
            one(a, w, b, out, ra + i, ro + i, cb, k0, k1)
            i += 1

    return rows


def _few_rows(transposed, form=None):
    """``few_rows(a, ra, m, w, b, c0, c1, out, ro, fused, k0, k1)``: the m rows (fewer than
    the 4-row tile) over the columns from c0 that one-row tiles of WIDE vectors cover;
    returns the first column left. A function of its own, called (inlined into ``product``
    or apart, the wide tiles added a second or two to first compiles, within this VM's
    noise); ``product_t``'s calls, the weight gradients, have G rows, so it gets a stub
    (each tile costs compile time)."""
    if transposed:
        return numba.njit(nogil=True, _nrt=False)(lambda a, ra, m, w, b, c0, c1, out, ro,
                                                         fused, k0, k1: c0)
    if form is None:
        wide, widef = _make_tile(1, WIDE, False), _make_tile(1, WIDE, True)
    else:  # one form only: both names are its tile
        wide = widef = _make_tile(1, WIDE, form)

    @numba.njit(nogil=True, boundscheck=False, _nrt=False)
    def few_rows(a, ra, m, w, b, c0, c1, out, ro, fused, k0, k1):
        # each column's sum is a chain of dependent multiply-adds, so a wide tile keeps WIDE
        # such chains going at once where the main shape would keep V
        L = VECTOR_BYTES // a.itemsize
        cb = c0
        while cb + WIDE * L <= c1:
            for i in range(m):
                if fused:
                    widef(a, w, b, out, ra + i, ro + i, cb, k0, k1)
                else:
                    wide(a, w, b, out, ra + i, ro + i, cb, k0, k1)
            cb += WIDE * L
        return cb

    return few_rows


def _form_of(form):
    """An inlined ``fused -> fused``, or the constant ``form`` (so that code for the other
    form is dead from the start and dropped before it costs compile time)."""
    if form is None:
        return numba.njit(inline="always")(lambda fused: fused)
    if form:
        return numba.njit(inline="always")(lambda fused: True)
    return numba.njit(inline="always")(lambda fused: False)


def _make_product(R, V, transposed=False, form=None):
    """``product`` with tiles of R rows x V vectors; columns left over get one-vector tiles
    (as many rows as fit the registers), then plain loops. ``transposed``: ``product_t``,
    which takes ``a`` as its transpose. ``form``: None, both forms of the products, chosen
    per call by ``fused``; True or False, that form only (``fused`` is then ignored): half
    the tiles, half the compile."""
    RS = REGISTERS // 2 - 4  # rows of the one-vector tiles
    if form is None:
        rv, r1 = _row_driver(R, V, False, transposed), _row_driver(RS, 1, False, transposed)
        rvf, r1f = _row_driver(R, V, True, transposed), _row_driver(RS, 1, True, transposed)
    else:  # one form: both names are its drivers, and `fused` below is that constant
        rv = rvf = _row_driver(R, V, form, transposed)
        r1 = r1f = _row_driver(RS, 1, form, transposed)
    RM = math.lcm(R, RS)  # rows of a panel: a multiple of both tiles
    FEW = min(4, R)  # fewer rows than this: one-row tiles as wide as WIDE vectors
    few_rows = _few_rows(transposed, form)
    form_of = _form_of(form)

    @numba.njit(nogil=True, boundscheck=False, inline="always")
    def span(a, ra, m, w, b, c0, c1, out, ro, fused, k0, k1):
        # rows m from ra (ro of out), columns c0..c1, terms k0..k1; for k0 > 0 the sums go
        # on from out (the terms before k0 are in it), else they start from the bias
        L = VECTOR_BYTES // a.itemsize
        cb = c0
        if m < FEW and c1 - c0 >= WIDE * L:
            cb = few_rows(a, ra, m, w, b, c0, c1, out, ro, fused, k0, k1)
        while cb + V * L <= c1:
            if fused:
                rvf(a, w, b, out, ra, ro, m, cb, k0, k1)
            else:
                rv(a, w, b, out, ra, ro, m, cb, k0, k1)
            cb += V * L
        while cb + L <= c1:
            if fused:
                r1f(a, w, b, out, ra, ro, m, cb, k0, k1)
            else:
                r1(a, w, b, out, ra, ro, m, cb, k0, k1)
            cb += L
        for i in range(ra, ra + m):
            o = ro - ra + i
            for c in range(cb, c1):
                s = out[o, c] if k0 > 0 else b[c]
                for k in range(k0, k1):
                    x = a[k, i] if transposed else a[i, k]
                    s = fma(x, w[k, c], s) if fused else s + x * w[k, c]
                out[o, c] = s

    def product(a, ra, n, w, b, c0, c1, out, ro, fused=False):
        """out[ro + i, c] = b[c] + sum_k a[ra + i, k] * w[k, c] for i < n, c0 <= c < c1, in
        the fixed order of the module docstring; ``fused``: each product added by a fused
        multiply-add. a (., K), w (K, .) and out have contiguous rows. A long sum (K above
        :data:`_LONG_K_BYTES`, the weight gradients' sums over every row and step) is taken
        in ranges of k, each resuming from the partial sums the one before stored: the same
        terms in the same order, so the same bits, with a panel of ``a`` that stays in
        cache."""
        K, M = (a.shape[0], a.shape[1]) if transposed else (a.shape[1], a.shape[0])
        fused = form_of(fused)  # a constant where the product has one form
        # The tiles index raw memory: check the block lies inside every array (per call).
        if (w.shape[0] != K or n < 0 or ra < 0 or ro < 0 or ra + n > M
                or ro + n > out.shape[0] or c0 < 0 or c1 > w.shape[1] or c1 > b.shape[0]
                or c1 > out.shape[1]):
            raise ValueError("product: the requested block does not fit the arrays")
        if n == 0 or c1 <= c0:
            return
        if n <= RM or K * a.itemsize <= _LONG_K_BYTES:  # one range of k
            panel = max(RM, (_PANEL_BYTES // max(1, K * a.itemsize)) // RM * RM)
            for p0 in range(0, n, panel):
                span(a, ra + p0, min(panel, n - p0), w, b, c0, c1, out, ro + p0, fused, 0, K)
            return
        kb = _K_BLOCK_BYTES // a.itemsize
        panel = max(RM, (_PANEL_BYTES // _K_BLOCK_BYTES) // RM * RM)
        for k0 in range(0, K, kb):
            for p0 in range(0, n, panel):
                span(a, ra + p0, min(panel, n - p0), w, b, c0, c1, out, ro + p0, fused, k0,
                     min(K, k0 + kb))

    # Numba's disk cache keys a function on its code and closure: R and V are in the closure
    # (the row drivers are rebuilt from them), so each shape has its own cached code.
    product.__qualname__ = product.__name__ = (
        f"product{'_t' if transposed else ''}_{R}x{V}"
        + {None: "", True: "_fma", False: "_plain"}[form])
    if transposed:
        product.__doc__ = """``product`` with ``a`` given as its transpose a_t (K, .):
        out[ro + i, c] = b[c] + sum_k a_t[k, ra + i] * w[k, c], in the same order (the
        weight gradients, sums over the rows of two arrays, without copying either)."""
    return njit_cached(product, nogil=True, boundscheck=False, _nrt=False)


# Part of the tune file's key: a choice made by an older way of timing is made again.
TUNE_VERSION = 2


def _cpu_key():
    feats = llvm_binding.get_host_cpu_features()
    return f"tune{TUNE_VERSION}-" + "{}-{}-{}-llvm{}".format(
        llvm_binding.get_host_cpu_name(), VECTOR_BYTES,
        hashlib.sha256(feats.flatten().encode()).hexdigest()[:12],
        ".".join(map(str, llvm_binding.llvm_version_info)))


def tune_file() -> Path:
    """Where the chosen tile shapes are kept, one per CPU: beside Numba's cache
    (``NUMBA_CACHE_DIR``, else this package's ``__pycache__``, else the user's cache)."""
    if numba.config.CACHE_DIR:
        return Path(numba.config.CACHE_DIR) / "daskgru-tiles.json"
    here = Path(__file__).parent / "__pycache__"
    try:
        here.mkdir(exist_ok=True)
        if os.access(here, os.W_OK):
            return here / "daskgru-tiles.json"
    except OSError:
        pass
    return Path(os.path.expanduser("~/.cache/daskgru")) / "daskgru-tiles.json"


def _tile_loop(R, V):
    """A shape's tiles as ``product`` runs them over the rows, tails included (for
    :func:`tune`; the fused form, the default numerics; columns that the shape divides)."""
    rows = _row_driver(R, V, True)

    @numba.njit(nogil=True, boundscheck=False)
    def run(a, w, b, out, reps):
        L = VECTOR_BYTES // a.itemsize
        K = a.shape[1]
        for _ in range(reps):
            for c in range(0, w.shape[1], V * L):
                rows(a, w, b, out, 0, 0, a.shape[0], c, 0, K)

    return run


def tune(rounds=5, seconds=0.02, shapes=((240, 512, 1536), (32, 512, 1536))):
    """Time every candidate shape on products of ``shapes`` (M rows, K, N columns: by
    default a step of a GRU with H = 512 over 240 rows and over 32, whose weights do not
    fit L2, which is where the shapes differ; in cache they all come close to the peak;
    float32, one thread, columns every candidate divides; the rows as ``product`` takes
    them, so a shape whose tiles leave 32 rows to small tail tiles pays for it) and return
    ``(best shape, {shape: GF/s})``, the rate the geometric mean over the shapes. Rounds
    alternate the candidates and each keeps its best; the first candidate is kept unless
    another is more than 3% faster, so noise does not flip the choice. A few seconds, most
    of it compiling."""
    import numpy as np

    cands = CANDIDATES[REGISTERS]
    rng = np.random.default_rng(0)
    fns = {c: _tile_loop(*c) for c in cands}
    rates = dict.fromkeys(cands, 1.0)
    for M, K, N in shapes:
        a = rng.standard_normal((M, K)).astype(np.float32)
        w = rng.standard_normal((K, N)).astype(np.float32)
        b = np.zeros(N, np.float32)
        out = np.empty((M, N), np.float32)
        reps = {}
        for c, f in fns.items():
            f(a, w, b, out, 1)  # compile (once) and warm
            t = time.perf_counter()
            f(a, w, b, out, 10)
            reps[c] = max(1, int(10 * seconds / max(time.perf_counter() - t, 1e-6)))
        best = dict.fromkeys(cands, float("inf"))
        for _ in range(rounds):
            for c, f in fns.items():
                t = time.perf_counter()
                f(a, w, b, out, reps[c])
                best[c] = min(best[c], (time.perf_counter() - t) / reps[c])
        for c in cands:
            rates[c] *= (2.0 * M * K * N / best[c] / 1e9) ** (1 / len(shapes))
    choice = cands[0]
    fastest = max(cands, key=rates.get)
    if rates[fastest] > 1.03 * rates[choice]:
        choice = fastest
    return choice, rates


def _parse(text):
    try:
        R, V = (int(v) for v in text.lower().split("x"))
    except ValueError:
        R = V = 0
    if R < 1 or V < 1 or R * V + V + 1 > REGISTERS:
        raise ValueError(f"DASKGRU_TILES={text!r}: give rows x vectors (e.g. "
                         f"{'x'.join(map(str, CANDIDATES[REGISTERS][0]))}) whose "
                         f"accumulators, weight vectors and broadcast fit {REGISTERS} registers")
    return R, V


def _choose():
    """The tile shape: DASKGRU_TILES if set, else the one chosen for this CPU before (the
    tune file), else :func:`tune` now (once per CPU and cache; about two seconds, logged)."""
    forced = os.environ.get("DASKGRU_TILES")
    if forced:
        return _parse(forced), "forced by DASKGRU_TILES"
    key, path = _cpu_key(), tune_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and tuple(entry.get("tile", ())) in CANDIDATES[REGISTERS]:
        return tuple(entry["tile"]), f"chosen for this CPU on {entry.get('when', '?')}"
    t = time.perf_counter()
    choice, rates = tune()
    known[key] = {"tile": list(choice), "when": time.strftime("%Y-%m-%d"),
                  "gflops": {f"{r}x{v}": round(g, 1) for (r, v), g in rates.items()}}
    try:  # write atomically: processes tuning side by side each write a whole file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    logging.getLogger("daskgru").info(
        "daskgru: tiles of %dx%d chosen for this CPU in %.1f s (%s GF/s); kept in %s",
        *choice, time.perf_counter() - t,
        ", ".join(f"{r}x{v}: {g:.0f}" for (r, v), g in rates.items()), path)
    return choice, "tuned now"


TILE, TILE_SOURCE = _choose()
product = _make_product(*TILE)
product_t = _make_product(*TILE, transposed=True)


# ------------------------------------------------------------------ product, called by name
# A kernel that called ``product`` as a jitted function had product's code linked into its
# own and compiled again with it (Numba links a callee's library into the caller's module):
# every kernel paid for the tiles a second time (seconds each, cold), and for both forms of
# the products (FMA or not) where a run uses one. Kernels call it through
# :func:`call_product` instead, through a table of two function pointers per float type
# (the symbol ``daskgru_tiles_products_<dtype>``, bound when this module is imported):
# entry ``fused`` is the product of that one form compiled for C-contiguous arrays, filled
# in by :func:`export` the first time a call needs it. A kernel runs only after its
# ``export`` (``jit.Kernel`` does it for the FMA setting of each call); an entry still empty
# raises a RuntimeError in the caller. The same code, so the same bits.
_FORMS = {form: _make_product(*TILE, form=form) for form in (True, False)}
_FORMS_T = {form: _make_product(*TILE, transposed=True, form=form) for form in (True, False)}
_TABLES = {f: (ctypes.c_void_p * 2)() for f in (types.float32, types.float64)}
_READY: set = set()  # (numpy dtype, fused) exported in this process
_KEEP: list = []  # the compiled products whose code the tables point to
for _f, _table in _TABLES.items():
    llvm_binding.add_symbol(f"daskgru_tiles_products_{_f}", ctypes.addressof(_table))


def _canonical(f):
    """``product``'s argument types as kernels call it, for the Numba float type ``f``."""
    A2, A1, i64 = types.Array(f, 2, "C"), types.Array(f, 1, "C"), types.int64
    return (A2, i64, i64, A2, A1, i64, i64, A2, i64, types.boolean)


def export(dtype, fused):
    """Compile (or load from the disk cache) the product of one form (``fused``: FMA or
    not) for C-contiguous ``dtype`` arrays and enter it in the table :func:`call_product`
    calls through; a no-op once done in this process."""
    key = (np.dtype(dtype), bool(fused))
    if key in _READY:
        return
    # Numba's own (reentrant) compiler lock: a lock of our own taken while a compile holds
    # Numba's could deadlock against one taken the other way round
    with global_compiler_lock:
        if key in _READY:
            return
        f = numba.from_dtype(key[0])
        sig = _canonical(f)
        disp = _FORMS[key[1]]
        disp.compile(sig)
        cres = disp.overloads[sig]
        address = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        if not address:
            raise RuntimeError(f"product for {f} compiled but its code cannot be found")
        _KEEP.append(cres)
        _TABLES[f][int(key[1])] = address
        _READY.add(key)


def ready(dtype, fused) -> bool:
    """Whether :func:`export` has readied the product of that type and form here."""
    return (np.dtype(dtype), bool(fused)) in _READY


def run_product(a, ra, n, w, b, c0, c1, out, ro, fused):
    """``product`` from Python, compiled for the one form ``fused`` asks for (for
    C-contiguous arrays, the code :func:`export` enters in the kernels' table)."""
    _FORMS[bool(fused)](a, ra, n, w, b, c0, c1, out, ro, fused)


def run_product_t(a_t, ra, n, w, b, c0, c1, out, ro, fused):
    """``product_t`` from Python, compiled for the one form ``fused`` asks for."""
    _FORMS_T[bool(fused)](a_t, ra, n, w, b, c0, c1, out, ro, fused)


@intrinsic
def call_product(typingctx, a, ra, n, w, b, c0, c1, out, ro, fused):
    """``product(a, ra, n, w, b, c0, c1, out, ro, fused)`` for kernels: a call through the
    table that :func:`export` fills, arrays C-contiguous and of one float type (``out``
    writable), offsets signed integers; errors (a block outside the arrays) are raised as
    from ``product`` itself, and a form not exported in this process raises a RuntimeError.
    """
    arrays = (a, w, b, out)
    if not (all(isinstance(x, types.Array) and x.layout == "C" for x in arrays)
            and a.ndim == w.ndim == out.ndim == 2 and b.ndim == 1 and out.mutable
            and a.dtype in (types.float32, types.float64)
            and all(x.dtype == a.dtype for x in arrays)):
        raise TypingError(f"call_product takes C-contiguous arrays of one float type "
                          f"(a, w, out 2-d and out writable, b 1-d), got {arrays}")
    ints = (ra, n, c0, c1, ro)
    if not (all(isinstance(x, types.Integer) and x.signed for x in ints)
            and isinstance(fused, types.Boolean)):
        raise TypingError(f"call_product: signed integer offsets and a bool, got {ints}, "
                          f"{fused}")
    f = a.dtype
    canon = _canonical(f)
    sig = types.void(a, ra, n, w, b, c0, c1, out, ro, fused)

    def codegen(context, builder, signature, args):
        fnty = context.call_conv.get_function_type(types.none, canon)
        vp = ir.IntType(8).as_pointer()
        name = f"daskgru_tiles_products_{f}"
        table = builder.module.globals.get(name)
        if table is None:
            table = ir.GlobalVariable(builder.module, ir.ArrayType(vp, 2), name)
            table.linkage = "external"
        which = builder.zext(context.cast(builder, args[9], signature.args[9], types.boolean),
                             ir.IntType(64))
        fp = builder.load(builder.gep(table, [ir.Constant(ir.IntType(64), 0), which]))
        with cgutils.if_unlikely(builder, cgutils.is_null(builder, fp)):
            context.call_conv.return_user_exc(
                builder, RuntimeError,
                (f"daskgru: the {f} product of this FMA setting is not ready in this "
                 f"process (daskgru.kernels.tiles.export)",))
        # arrays differ from the canonical types at most in flags that do not change their
        # data model (read-only, alignment): passed as they are
        cargs = [v if isinstance(c, types.Array) else context.cast(builder, v, t, c)
                 for v, t, c in zip(args, signature.args, canon)]
        status, _ = context.call_conv.call_function(
            builder, builder.bitcast(fp, fnty.as_pointer()), types.none, canon, cargs)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return sig, codegen
