"""Register-tiled matrix products with a fixed order of operations per element.

``product(a, ra, n, w, b, c0, c1, out, ro)`` computes, for ``i < n`` and ``c0 <= c < c1``::

    out[ro + i, c] = b[c] + a[ra + i, 0] * w[0, c] + a[ra + i, 1] * w[1, c] + ...

added left to right: the bias first, then the products in index order, each a rounded
multiply followed by a rounded add (no FMA contraction, no reassociation). That is exactly
what the plain loops compute, so every element gets the same bits whatever the number of rows
in a call, how they are tiled, or how many threads run: results stay independent of time and
batch chunking, which BLAS does not promise (its kernel, blocking and summation order change
with the shape of a call and its thread count).

Speed comes from keeping a tile of R rows x V vectors of outputs in registers while k runs:
each step loads V vectors of ``w[k]`` and R scalars of ``a[:, k]`` and does R*V vector
multiply-adds (as separate multiply and add, which machines with separate add pipes, e.g.
AMD Zen, issue at the rate of FMAs). Numba does not keep array tiles in registers, so the tile
is written in LLVM IR (an ``intrinsic``) over vectors of the host's widest width (or those of
``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` when set); LLVM splits
wider vectors on narrower machines, so the code is portable and only the speed changes.

The Numba kernels that call ``product`` are cached on disk; Numba keys its cache on the
calling module's source, not on this one, so they are declared with
:func:`daskgru.kernels.jit.kernel`, whose cache key covers this file and the tile shape.
"""
from __future__ import annotations

import numba
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

__all__ = ["product", "VECTOR_BYTES", "TILE_ROWS"]


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


# Bytes of one vector register; rows of a tile (registers: TILE_ROWS x 2 accumulators,
# 2 weight vectors and a broadcast must fit 32 registers with AVX-512, 16 without).
VECTOR_BYTES = _vector_bytes()
TILE_ROWS = 12 if VECTOR_BYTES == 64 else 6
# Row panels of ``a`` of about this many bytes stay in L2 while all column blocks pass.
_PANEL_BYTES = 256 << 10


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


def _make_tile(R, V):
    """An intrinsic ``tile(a, w, b, out, ra, ro, c0)``: the R x (V * lanes) block of outputs
    with rows ra.. of ``a`` (ro.. of ``out``) and columns c0.., as described above."""

    @intrinsic
    def tile(typingctx, a, w, b, out, ra, ro, c0):
        _check_types(a, w, b, out)
        sig = types.void(a, w, b, out, types.int64, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            aa, ww, bb, oo = (context.make_array(t)(context, builder, v)
                              for t, v in zip(signature.args[:4], args[:4]))
            ra_, ro_, c0_ = args[4:]
            fty = context.get_value_type(a.dtype)
            L = VECTOR_BYTES // context.get_abi_sizeof(fty)
            vty = ir.VectorType(fty, L)
            i64 = ir.IntType(64)
            zeros = ir.Constant(ir.VectorType(ir.IntType(32), L), [0] * L)

            def vptr(p):
                return builder.bitcast(p, vty.as_pointer())

            def byte_offset(p, nbytes):  # strides are in bytes
                return builder.inttoptr(builder.add(builder.ptrtoint(p, i64), nbytes), p.type)

            K = cgutils.unpack_tuple(builder, aa.shape, 2)[1]
            sa = cgutils.unpack_tuple(builder, aa.strides, 2)[0]
            sw = cgutils.unpack_tuple(builder, ww.strides, 2)[0]
            so = cgutils.unpack_tuple(builder, oo.strides, 2)[0]
            # Accumulators live in allocas that LLVM promotes to registers.
            acc = [[cgutils.alloca_once(builder, vty) for _ in range(V)] for _ in range(R)]
            for j in range(V):
                bias = builder.load(vptr(builder.gep(bb.data, [builder.add(c0_, i64(j * L))])),
                                    align=1)
                for i in range(R):
                    builder.store(bias, acc[i][j])
            rows = [byte_offset(aa.data, builder.mul(builder.add(ra_, i64(i)), sa))
                    for i in range(R)]
            wcol = builder.gep(ww.data, [c0_])
            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                wk = byte_offset(wcol, builder.mul(k, sw))
                wv = [builder.load(vptr(builder.gep(wk, [i64(j * L)])), align=1)
                      for j in range(V)]
                for i in range(R):
                    x = builder.load(builder.gep(rows[i], [k]))
                    xv = builder.insert_element(ir.Constant(vty, ir.Undefined), x, i64(0))
                    xv = builder.shuffle_vector(xv, xv, zeros)
                    for j in range(V):
                        # plain fmul then fadd: no fast-math flags, so no contraction
                        s = builder.fadd(builder.load(acc[i][j]), builder.fmul(xv, wv[j]))
                        builder.store(s, acc[i][j])
            ocol = builder.gep(oo.data, [c0_])
            for i in range(R):
                orow = byte_offset(ocol, builder.mul(builder.add(ro_, i64(i)), so))
                for j in range(V):
                    builder.store(builder.load(acc[i][j]),
                                  vptr(builder.gep(orow, [i64(j * L)])), align=1)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_RM, _R4 = TILE_ROWS, 4


def _row_driver(V):
    """Rows n of one column block of V vectors at cb: full tiles, then 4-row, then 1-row."""
    big, mid, one = _make_tile(_RM, V), _make_tile(_R4, V), _make_tile(1, V)

    @numba.njit(nogil=True, boundscheck=False, inline="always")
    def rows(a, w, b, out, ra, ro, n, cb):
        i = 0
        while i + _RM <= n:
            big(a, w, b, out, ra + i, ro + i, cb)
            i += _RM
        while i + _R4 <= n:
            mid(a, w, b, out, ra + i, ro + i, cb)
            i += _R4
        while i < n:
            one(a, w, b, out, ra + i, ro + i, cb)
            i += 1

    return rows


_rows2, _rows1 = _row_driver(2), _row_driver(1)


@numba.njit(nogil=True, boundscheck=False, cache=True)
def product(a, ra, n, w, b, c0, c1, out, ro):
    """out[ro + i, c] = b[c] + sum_k a[ra + i, k] * w[k, c] for i < n, c0 <= c < c1, in the
    fixed order of the module docstring. a (., K) and w (K, .) and out have contiguous rows."""
    K = a.shape[1]
    # The tiles index raw memory: check the block lies inside every array (cheap, per call).
    if (w.shape[0] != K or n < 0 or ra < 0 or ro < 0 or ra + n > a.shape[0]
            or ro + n > out.shape[0] or c0 < 0 or c1 > w.shape[1] or c1 > b.shape[0]
            or c1 > out.shape[1]):
        raise ValueError("product: the requested block does not fit the arrays")
    if n == 0 or c1 <= c0:
        return
    L = VECTOR_BYTES // a.itemsize
    panel = max(_RM, (_PANEL_BYTES // max(1, K * a.itemsize)) // _RM * _RM)
    for p0 in range(0, n, panel):
        m = min(panel, n - p0)
        cb = c0
        while cb + 2 * L <= c1:
            _rows2(a, w, b, out, ra + p0, ro + p0, m, cb)
            cb += 2 * L
        while cb + L <= c1:
            _rows1(a, w, b, out, ra + p0, ro + p0, m, cb)
            cb += L
        for i in range(ra + p0, ra + p0 + m):
            o = ro - ra + i
            for c in range(cb, c1):
                s = b[c]
                for k in range(K):
                    s = s + a[i, k] * w[k, c]
                out[o, c] = s
