"""The register-tiled product: the fixed order of operations per element, every tile path."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskgru.kernels.tiles import VECTOR_BYTES, product


def ordered(a, w, b):
    """b + a[:, 0] w[0] + a[:, 1] w[1] + ... left to right, each multiply and add rounded to
    the dtype (NumPy's elementwise ops do not fuse): the order the tiles promise."""
    s = np.broadcast_to(b, (a.shape[0], b.size)).copy()
    for k in range(a.shape[1]):
        s = s + a[:, k:k + 1] * w[k]
    return s


def check(dtype, N, K, G, ra, n, c0, c1, ro, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((N, K)).astype(dtype)
    w = rng.standard_normal((K, G)).astype(dtype)
    b = rng.standard_normal(G).astype(dtype)
    out = np.full((ro + n + 2, G), np.nan, dtype)
    product(a, ra, n, w, b, c0, c1, out, ro)
    want = ordered(a[ra:ra + n], w[:, c0:c1], b[c0:c1])
    np.testing.assert_array_equal(out[ro:ro + n, c0:c1], want)
    untouched = np.ones(out.shape, bool)
    untouched[ro:ro + n, c0:c1] = False
    assert np.isnan(out[untouched]).all(), "wrote outside the requested block"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
# row counts with every tail of every candidate tile (R in 3..12, then 8-row, 4-row and
# 1-row tiles); fixed, not derived from the tuned shape, which two processes may choose apart
@pytest.mark.parametrize("n", [1, 3, 4, 5, 6, 7, 8, 11, 12, 13, 17, 29, 55])
def test_every_row_tail(dtype, n):
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    # columns: two-vector blocks, one one-vector block and a scalar tail
    check(dtype, n + 2, 19, 3 * lanes + 3, 1, n, 0, 3 * lanes + 3, 2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_panels(dtype):
    """K large enough that the rows come in several panels."""
    check(dtype, 150, 1100, 40, 3, 140, 5, 37, 0)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(["float32", "float64"]), N=st.integers(1, 40),
       K=st.integers(1, 70), G=st.integers(1, 100), data=st.data())
def test_any_block_any_offsets(dtype, N, K, G, data):
    ra = data.draw(st.integers(0, N - 1))
    n = data.draw(st.integers(0, N - ra))
    c0 = data.draw(st.integers(0, G))
    c1 = data.draw(st.integers(c0, G))
    ro = data.draw(st.integers(0, 3))
    check(dtype, N, K, G, ra, n, c0, c1, ro, seed=N * K + G)


def test_row_bits_do_not_depend_on_the_call():
    """A row gets the same bits alone, in a full tile or in a big call."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((97, 64)).astype("float32")
    w = rng.standard_normal((64, 192)).astype("float32")
    b = rng.standard_normal(192).astype("float32")
    big = np.empty((97, 192), "float32")
    product(a, 0, 97, w, b, 0, 192, big, 0)
    for i in (0, 11, 12, 50, 96):
        one = np.empty((1, 192), "float32")
        product(a, i, 1, w, b, 0, 192, one, 0)
        np.testing.assert_array_equal(one[0], big[i])


def test_vector_width_follows_numba_cpu_settings(monkeypatch):
    """A cache built for another CPU (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES) gets tiles of the
    width that CPU has, not the host's."""
    import numba

    from daskgru.kernels import tiles

    monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "")
    assert tiles._vector_bytes() == 16
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+sse4.2,+avx,+avx2,-avx512f")
    assert tiles._vector_bytes() == 32
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,+avx,+avx512f")
    assert tiles._vector_bytes() == 64


@pytest.mark.parametrize("args", [
    dict(ra=3, n=2),        # rows of a beyond its end
    dict(ro=4),             # rows of out beyond its end
    dict(c1=41),            # columns beyond w, b and out
    dict(K=6),              # w has another number of rows than a has columns
])
def test_blocks_outside_the_arrays_are_refused(args):
    a = np.zeros((4, args.get("K", 5)), "float32")
    w, b, out = np.zeros((5, 40), "float32"), np.zeros(40, "float32"), np.zeros((4, 40), "float32")
    with pytest.raises(ValueError, match="does not fit"):
        product(a, args.get("ra", 0), args.get("n", 4), w, b, 0, args.get("c1", 40), out,
                args.get("ro", 0))


@pytest.mark.parametrize("case", ["mixed dtypes", "column view", "strided bias", "F order"])
def test_arrays_the_tiles_cannot_index_are_refused(case):
    """The tiles read raw memory with a's element type and unit inner strides: anything else
    is refused when compiling, never computed."""
    from numba.core.errors import TypingError

    a, w = np.zeros((12, 5), "float32"), np.zeros((5, 64), "float32")
    b, out = np.zeros(64, "float32"), np.zeros((12, 64), "float32")
    if case == "mixed dtypes":
        a = a.astype("float64")
    elif case == "column view":
        out = np.zeros((12, 128), "float32")[:, :64]
    elif case == "strided bias":
        b = np.zeros(128, "float32")[::2]
    else:
        out = np.asfortranarray(out)
    with pytest.raises(TypingError, match="C-contiguous arrays of one float type"):
        product(a, 0, 12, w, b, 0, 64, out, 0)


def test_cached_kernels_are_keyed_on_the_tiles():
    """Numba's disk cache keys a kernel on its own module and its closure variables: every
    kernel closes over jit.CACHE_KEY (a hash of tiles.py and jit.py), so editing those
    recompiles them; a kernel declared without it is refused at import."""
    from daskgru import layers
    from daskgru.cells import base, gru, lstm
    from daskgru.kernels import jit

    kernels = [k for k in (base._project_kernel, *vars(gru._k).values(),
                           *vars(lstm._k).values(), *layers._k) if isinstance(k, jit.Kernel)]
    assert len(kernels) == 15
    for k in kernels:
        cells = [c.cell_contents for c in k.py_func.__closure__ or ()]
        assert jit.CACHE_KEY in cells, k

    def forgetful(x):
        return x

    with pytest.raises(TypeError, match="cache_key"):
        jit.kernel(lambda f: f(f))(forgetful)


_FRESH = r"""
import numpy as np
import daskgru as dg
from daskgru.kernels import jit
assert all(not k.ready for k in jit.KERNELS), [k for k in jit.KERNELS if k.ready]
x = np.ones((5, 2, 3))
dg.gru(x, dg.GRUParams.random(3, 4, dtype="float64", seed=0))
print(sorted(k.__qualname__ for k in jit.KERNELS if k.ready))
print(sorted({str(d) for k in jit.KERNELS for d in k.ready}))
"""


def test_kernels_compile_on_first_use_only():
    """Importing compiles nothing; a float64 GRU call readies its scan from the inputs (which
    projects inside) for float64 and nothing else (cold starts pay for what they use)."""
    r = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True,
                       check=True)
    ready, dtypes = r.stdout.strip().splitlines()
    assert ready == "['_k.<locals>.scan_inputs']"
    assert dtypes == "['float64']"


_WARM = r"""
import numpy as np, daskgru as dg
from daskgru.kernels import jit, tiles
x = np.random.default_rng(0).standard_normal((40, 5, 3)).astype("f4")
g, l = dg.GRUParams.random(3, 8, seed=0), dg.LSTMParams.random(3, 8, seed=0)
dg.gru(x, g), dg.lstm(x, l), dg.gru(x.astype("f8"), g.astype("float64"))
dg.train.gru_backward(x, g, np.ones((40, 5, 8), "f4"))
dg.train.lstm_backward(x, l, np.ones((40, 5, 8), "f4"))
used = [k for k in jit.KERNELS if k.dispatcher is not None] + [tiles._FORMS[True]]
misses = sum(sum((getattr(k, "dispatcher", None) or k).stats.cache_misses.values()) for k in used)
hits = sum(sum((getattr(k, "dispatcher", None) or k).stats.cache_hits.values()) for k in used)
print(len(used), hits, misses)
"""


def test_a_second_process_loads_every_kernel_from_the_cache(tmp_path):
    """Into an empty cache the first process compiles what it uses; a second process (and a
    third) loads all of it and compiles nothing: the cache key is the same in every process
    (closures over jitted functions used to pickle with a per-process id, so every process
    compiled everything again, seconds per kernel)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", _WARM], capture_output=True, text=True,
                           env=env, check=True).stdout.split() for _ in range(3)]
    used, hits, misses = map(int, runs[0])
    assert used >= 5 and misses > 0
    for again in runs[1:]:
        used, hits, misses = map(int, again)
        assert misses == 0 and hits >= used, again  # the product too: loaded


def test_the_cache_key_describes_closures_by_value_and_code():
    """Equal values and code give equal descriptions; another constant, another closure
    value or another body gives another; an object it cannot describe is refused."""
    from daskgru.kernels.cache import describe

    def make(k, body=0):
        if body:
            return lambda x: x * k
        return lambda x: x + k

    assert describe(make(2)) == describe(make(2))
    assert describe(make(2)) != describe(make(3))
    assert describe(make(2)) != describe(make(2, body=1))

    def with_default(n):
        def f(x, k=n):
            return x + k
        return f

    assert describe(with_default(1)) != describe(with_default(2))
    with pytest.raises(TypeError, match="closure variable"):
        describe(object())


_ANNOUNCE = r"""
import numpy as np
from daskgru.kernels import jit
from daskgru.cells import base
jit.ANNOUNCE_AFTER = 0.0
k = base._project_kernel
k(np.ones((2, 3), "f4"), np.ones((3, 4), "f4"), np.ones(4, "f4"), np.empty((2, 4), "f4"), True)
k.compile("float64")
assert k.ready == {np.dtype("float32"), np.dtype("float64")}
"""


def test_a_slow_first_compile_is_announced_once(tmp_path):
    """A compile slower than ANNOUNCE_AFTER (here 0 s, into an empty cache) logs one line
    saying what happens and where the cache is, however many kernels follow."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", _ANNOUNCE], capture_output=True, text=True,
                       env=env, check=True)
    lines = [ln for ln in r.stderr.splitlines() if "compiling" in ln]
    assert len(lines) == 1, r.stderr
    assert "float32" in lines[0] and str(tmp_path) in lines[0]


def test_kernels_refuse_what_they_were_not_declared_for():
    """Only the declared float types and layouts compile: an int array or a non-contiguous
    one is a TypeError naming the types, never a silent new specialisation."""
    from daskgru.cells import base

    k = base._project_kernel
    f = np.ones
    k(f((2, 3)), f((3, 4)), f(4), np.empty((2, 4)), True)
    with pytest.raises(TypeError):
        k(f((2, 3), "i8"), f((3, 4), "i8"), f(4, "i8"), np.empty((2, 4), "i8"), True)
    with pytest.raises(TypeError):
        k(f((3, 2)).T, f((3, 4)), f(4), np.empty((2, 4)), True)
    assert {str(d) for d in k.ready} <= {"float32", "float64"}
    assert len(k.dispatcher.overloads) == len(k.ready)


def test_a_new_float_type_is_readied_while_calls_run():
    """Readying float32 while other threads call the float64 kernel (and call for float32
    themselves) neither fails a call nor compiles anything undeclared; kernels pickle by
    where they are found (dask.distributed may ship them)."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    from daskgru.cells import base
    from daskgru.kernels import jit

    def fresh():
        k = jit.Kernel(base._project_kernel.py_func, base._project_kernel.signature)
        jit.KERNELS.remove(k)
        return k

    k = fresh()
    args = {dt: (np.ones((64, 3), dt), np.ones((3, 8), dt), np.ones(8, dt)) for dt in ("f4", "f8")}

    def call(i):
        dt = "f8" if i % 2 else "f4"
        out = np.empty((64, 8), dt)
        k(*args[dt], out, True)
        return out

    k(*args["f8"], np.empty((64, 8)), True)
    with ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(call, range(32)))
    assert all((o == 4).all() for o in outs)
    assert k.ready == {np.dtype("f4"), np.dtype("f8")}
    assert len(k.dispatcher.overloads) == 2
    assert pickle.loads(pickle.dumps(base._project_kernel)) is base._project_kernel


_SHAPE_BITS = r"""
import hashlib
import numpy as np
import daskgru as dg
from daskgru.kernels import tiles
rng = np.random.default_rng(3)
h = hashlib.sha256()
for M, K, N in [(1, 7, 5), (37, 33, 200), (130, 64, 192), (9, 300, 97)]:
    a = rng.standard_normal((M, K)).astype("float32")
    w = rng.standard_normal((K, N)).astype("float32")
    b = rng.standard_normal(N).astype("float32")
    out = np.empty((M, N), "float32")
    tiles.product(a, 0, M, w, b, 0, N, out, 0)
    h.update(out.tobytes())
p = dg.GRUParams.random(5, 40, dtype="float32", seed=1)
x = rng.standard_normal((30, 13, 5)).astype("float32")
out, last = dg.gru(x, p)
h.update(np.ascontiguousarray(out).tobytes() + np.ascontiguousarray(last).tobytes())
print(tiles.TILE, tiles.TILE_SOURCE, h.hexdigest())
"""


def _bits_under(shape):
    env = dict(os.environ)
    env.pop("DASKGRU_TILES", None)
    if shape:
        env["DASKGRU_TILES"] = "x".join(map(str, shape))
    r = subprocess.run([sys.executable, "-c", _SHAPE_BITS], capture_output=True, text=True,
                       env=env, check=True)
    return r.stdout.split()[-1], r.stdout


def test_every_candidate_tile_fits_the_registers():
    """R x V accumulators, V vectors of w and a broadcast, for every register file; the
    smaller row tiles of the same driver (8 and 4 rows) fit whenever the main one does."""
    from daskgru.kernels import tiles

    for regs, shapes in tiles.CANDIDATES.items():
        for R, V in shapes:
            assert R * V + V + 1 <= regs, (regs, R, V)
            if regs == tiles.REGISTERS:  # DASKGRU_TILES accepts every candidate here
                assert tiles._parse(f"{R}x{V}") == (R, V)


@pytest.mark.slow
def test_every_tile_shape_the_tuner_can_pick_gives_the_same_bits():
    """The tuner only chooses among shapes that change speed, never bits: products with
    every row and column tail, and a GRU, under each candidate forced in a fresh process."""
    from daskgru.kernels import tiles

    digest, _ = _bits_under(None)
    for shape in tiles.CANDIDATES[tiles.REGISTERS]:
        got, out = _bits_under(shape)
        assert "forced by DASKGRU_TILES" in out and got == digest, (shape, out)


def test_the_tile_shape_is_chosen_once_per_cpu_and_kept(tmp_path):
    """Into an empty cache the first import times the candidates and keeps its choice in a
    file beside Numba's cache, keyed by the CPU; the next import reads it."""
    import json

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("DASKGRU_TILES", None)
    code = "from daskgru.kernels import tiles; print(tiles.TILE_SOURCE)"
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=True).stdout
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=True).stdout
    assert first.strip() == "tuned now" and again.startswith("chosen for this CPU")
    (entry,) = json.loads((tmp_path / "daskgru-tiles.json").read_text()).values()
    assert len(entry["gflops"]) >= 4 and "x".join(map(str, entry["tile"])) in entry["gflops"]


@pytest.mark.parametrize("value", ["8", "ax3", "0x3", "40x2"])
def test_a_tile_shape_that_cannot_be_is_refused(value):
    from daskgru.kernels import tiles

    with pytest.raises(ValueError, match="DASKGRU_TILES"):
        tiles._parse(value)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", ["gru", "gru-cho", "lstm"])
@pytest.mark.parametrize("block_bytes", [1, 3000, 256 << 10])
def test_scan_from_inputs_equals_project_then_scan(dtype, cell, block_bytes, monkeypatch):
    """A cell's scan_inputs (projecting block by block inside its kernel) gives the
    bits of projecting the chunk first and scanning (the base class's scan_inputs, what a
    cell without its own does), for any block size (1 byte: blocks of one step; 3000:
    blocks of a few steps), both directions, lengths and a mask."""
    from daskgru.cells import GRUCell, LSTMCell, Prepared, Steps, Weights, base, project

    monkeypatch.setattr(base, "STEP_BLOCK_BYTES", block_bytes)
    c = {"gru": GRUCell(), "gru-cho": GRUCell(reset_after=False), "lstm": LSTMCell()}[cell]
    rng = np.random.default_rng(7)
    T, B, I, H = 23, 5, 3, 7
    G = c.gates * H
    w = Prepared.of(Weights(*(0.3 * rng.standard_normal(s).astype(dtype)
                              for s in [(G, I), (G, H), (G,), (G,)])))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    s0 = rng.standard_normal((B, c.state_size(H))).astype(dtype)
    mask = (rng.random((T, B)) > 0.3).astype(np.uint8)
    for reverse in (False, True):
        steps = Steps.make(B, T, lengths=np.array([23, 20, 5, 0, 12]), mask=mask, t0=0,
                           reverse=reverse)
        want = c.scan(w, project(w, x), s0, steps)
        got = c.scan_inputs(w, x, s0, steps)
        first = base.Cell.scan_inputs(c, w, x, s0, steps)
        for a, b, f in zip(want, got, first):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, f)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_kernels_exp_sigmoid_and_tanh_are_accurate(dtype):
    """The gates' exp (Cody-Waite with fused multiply-adds, Taylor in Estrin's scheme),
    sigmoid and tanh against float64/long-double NumPy, over the whole normal range: exp
    within 2 ulp, sigmoid within 3 ulp, tanh within 4 ulp of the result or a few ulp of 1
    near 0 (it is computed from exp(-2|v|)); NaN stays NaN and nothing overflows."""
    import numba

    from daskgru.kernels.jit import sigmoid, tanh, vexp

    @numba.njit(error_model="numpy")
    def apply(x, e, s, t):
        for i in range(x.size):
            e[i] = vexp(x[i])
            s[i] = sigmoid(x[i])
            t[i] = tanh(x[i])

    lo, hi = (-87.0, 88.0) if dtype == "float32" else (-708.0, 709.0)
    x = np.concatenate([np.linspace(lo, hi, 400_001), np.linspace(-3, 3, 100_001),
                        [np.nan, -np.inf, np.inf, 1e30, -1e30, 0.0]]).astype(dtype)
    e, s, t = (np.empty_like(x) for _ in range(3))
    apply(x, e, s, t)
    ld = np.longdouble
    ok = np.isfinite(x) & (x > lo) & (x < hi)
    xl = x[ok].astype(ld)
    ulp = lambda v: np.spacing(np.abs(v).astype(dtype)).astype(ld)  # noqa: E731
    want_e, want_s, want_t = np.exp(xl), 1 / (1 + np.exp(-xl)), np.tanh(xl)
    assert np.max(np.abs(e[ok] - want_e) / ulp(want_e)) <= 2.5
    assert np.max(np.abs(s[ok] - want_s) / ulp(np.maximum(want_s, np.finfo(dtype).tiny))) <= 4
    err_t = np.abs(t[ok] - want_t) / np.maximum(ulp(want_t), ulp(ld(1)) / 2)
    assert np.max(err_t) <= 2.5
    assert np.isnan(e[-6]) and np.isnan(s[-6]) and np.isnan(t[-6])
    assert np.all(np.isfinite(e[-5:])) and np.all(np.isfinite(s[-5:-1]))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_step_keeps_no_reference_counts(cell):
    """The step the scans call once per time step is compiled without Numba's reference
    counting: counted (an atomic add and subtract per array and view), it took 40% of a step
    at H = 32, B = 1. Its machine code must not touch a reference count, nor may the product
    it calls; and its gates must be vectorized."""
    import importlib
    import re

    from daskgru.kernels import tiles

    mod = importlib.import_module(f"daskgru.cells.{cell}")
    T, B, H, dt = 3, 2, 4, np.float64
    G = (3 if cell == "gru" else 4) * H
    rng = np.random.default_rng(0)
    gs = rng.standard_normal((T, B, G))
    w_t, b = rng.standard_normal((H, G)) * 0.3, rng.standard_normal(G)
    lengths, mask = np.full(B, T, np.int64), np.empty((0, 0), np.uint8)
    h, out, rec = np.zeros((B, H)), np.zeros((T, B, H)), np.empty((0, 0, 0), dt)
    acc, rh, c = np.empty((B, G)), np.empty((B, H)), np.zeros((B, H))
    head = (gs, 1, w_t, b, lengths, mask, 1, 1, True, False, False)
    if cell == "gru":
        mod._k.step(*head, True, h, out, 0, rec, acc, rh, True)
    else:
        mod._k.step(*head, h, c, out, 0, rec, acc, True)
    assert np.isfinite(out[1]).all() and np.abs(out[1]).sum() > 0  # the step ran
    step = mod._k.step
    llvm = step.inspect_llvm(step.signatures[0])
    bodies = re.findall(r"\ndefine [^\n]*\n(.*?)\n}", llvm, flags=re.S)
    assert bodies and not any("NRT_incref" in f or "NRT_decref" in f for f in bodies)
    assert tiles.product.targetoptions.get("_nrt") is False
    # and the gates are vectorized: packed divisions (compiled with Python's error model,
    # a division checked for zero and the loop stayed scalar)
    assert re.search(r"\bv?divp[sd]\b", step.inspect_asm(step.signatures[0]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fused", [False, True])
def test_long_sums_are_taken_in_ranges_with_the_same_bits(dtype, fused):
    """A sum over more terms than tiles._LONG_K_BYTES (the weight gradients, summed over every
    row and step) is taken in ranges of k, each resuming from the partial sums stored by the
    one before: the same terms in the same order, so the bits of one left-to-right sum."""
    import numba

    from daskgru.kernels import tiles

    @numba.njit
    def sequential(a, w, b, fused):
        out = np.empty((a.shape[0], w.shape[1]), a.dtype)
        for i in range(a.shape[0]):
            for c in range(w.shape[1]):
                s = b[c]
                for k in range(a.shape[1]):
                    s = tiles.fma(a[i, k], w[k, c], s) if fused else s + a[i, k] * w[k, c]
                out[i, c] = s
        return out

    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    K = tiles._LONG_K_BYTES // np.dtype(dtype).itemsize + 777  # several ranges and a tail
    rng = np.random.default_rng(1)
    a = rng.standard_normal((40, K)).astype(dtype)
    w = rng.standard_normal((K, 3 * lanes + 3)).astype(dtype)
    b = rng.standard_normal(3 * lanes + 3).astype(dtype)
    out = np.full((41, w.shape[1]), np.nan, dtype)
    product(a, 3, 35, w, b, 1, w.shape[1], out, 1, fused)
    want = sequential(a[3:38], w, b, fused)
    np.testing.assert_array_equal(out[1:36, 1:], want[:, 1:])
    assert np.isnan(out[0]).all() and np.isnan(out[36:]).all() and np.isnan(out[:, 0]).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fused", [False, True])
def test_the_transposed_product_gives_the_products_bits(dtype, fused):
    """product_t reads ``a`` as its transpose (the weight gradients' sources, as they lie):
    the bits of product on the transposed copy, short and long sums, any rows and columns."""
    from daskgru.kernels import tiles

    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(2)
    for K in (7, tiles._LONG_K_BYTES // np.dtype(dtype).itemsize + 300):
        a_t = rng.standard_normal((K, 30)).astype(dtype)
        w = rng.standard_normal((K, 2 * lanes + 5)).astype(dtype)
        b = rng.standard_normal(w.shape[1]).astype(dtype)
        got = np.full((28, w.shape[1]), np.nan, dtype)
        want = got.copy()
        tiles.product_t(a_t, 2, 27, w, b, 1, w.shape[1], got, 1, fused)
        product(np.ascontiguousarray(a_t.T), 2, 27, w, b, 1, w.shape[1], want, 1, fused)
        np.testing.assert_array_equal(got, want)
        assert np.isnan(got[0]).all() and np.isnan(got[:, 0]).all()
    with pytest.raises(ValueError, match="does not fit"):
        tiles.product_t(a_t, 20, 11, w, b, 0, 1, got, 0, fused)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fused", [False, True])
def test_a_few_rows_take_the_wide_tile_with_the_same_bits(dtype, fused):
    """Calls of one to three rows (one sequence) run wide one-row tiles over the columns
    they cover, then the usual tiles: every element as the fixed order gives it (a row the
    same bits as in a call of many rows); the transposed product (its usual tiles) agrees."""
    from daskgru.kernels import tiles

    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    G = (2 * tiles.WIDE + 3) * lanes + 5  # two wide blocks, main-shape blocks, a scalar tail
    rng = np.random.default_rng(3)
    a = rng.standard_normal((9, 70)).astype(dtype)
    w = rng.standard_normal((70, G)).astype(dtype)
    b = rng.standard_normal(G).astype(dtype)
    many = np.empty((9, G), dtype)
    product(a, 0, 9, w, b, 0, G, many, 0, fused)
    for n in (1, 2, 3):
        for c0 in (0, 3):
            got = np.full((n + 1, G), np.nan, dtype)
            product(a, 4, n, w, b, c0, G, got, 1, fused)
            np.testing.assert_array_equal(got[1:, c0:], many[4:4 + n, c0:])
            if not fused:  # and the order itself, written out
                np.testing.assert_array_equal(got[1:, c0:], ordered(a[4:4 + n], w[:, c0:], b[c0:]))
            assert np.isnan(got[0]).all() and np.isnan(got[:, :c0]).all()
            got_t = np.full((n + 1, G), np.nan, dtype)
            tiles.product_t(np.ascontiguousarray(a.T), 4, n, w, b, c0, G, got_t, 1, fused)
            np.testing.assert_array_equal(got_t, got)


@pytest.mark.parametrize("threads", [1, 2])
def test_weight_gradient_terms_side_by_side_and_their_cover(threads):
    """The weight gradient from adjoints lying in two arrays is the one from them side by
    side, bit for bit, at any thread count, and close to the float64 sum; terms that leave
    a row of the result unwritten (np.empty) or write one twice are refused."""
    from daskgru.cells.base import weight_gradient

    rng = np.random.default_rng(5)
    N, K, G1, G2 = 300, 19, 24, 13
    d1 = rng.standard_normal((N, G1 + 3)).astype(np.float32)
    d2 = rng.standard_normal((N, G2)).astype(np.float32)
    src = rng.standard_normal((N, K)).astype(np.float32)
    split = weight_gradient([(d1, 3, src, 0, G1), (d2, 0, src, G1, G1 + G2)], True, threads)
    whole = np.ascontiguousarray(np.concatenate([d1[:, 3:], d2], axis=1))
    one = weight_gradient([(whole, 0, src, 0, G1 + G2)], True, 1)
    np.testing.assert_array_equal(split, one)
    want = whole.astype(np.float64).T @ src.astype(np.float64)
    np.testing.assert_allclose(split, want, rtol=1e-4, atol=1e-4)
    for bad in ([(d1, 3, src, 0, G1), (d2, 0, src, G1 + 1, G1 + G2)],
                [(d1, 0, src, 0, G1), (d2, 0, src, G1 - 1, G1 - 1 + G2)]):
        with pytest.raises(ValueError, match="cover"):
            weight_gradient(bad, True, threads)


def test_every_kernel_that_reaches_the_products_takes_fma():
    """jit.Kernel readies the product of a call's FMA form from the kernel's ``fma``
    argument; a kernel reaching ``call_product`` without one would pass in a process where
    another kernel had readied the form, and fail (RuntimeError) in a fresh worker. The
    functions of the package that call the products, directly or through one another, found
    from their source; then every kernel calling any of them must take ``fma``."""
    import ast
    import importlib
    import inspect
    import pkgutil
    import textwrap

    import daskgru
    from daskgru.kernels import jit

    def calls(node):
        return {c.func.id if isinstance(c.func, ast.Name) else c.func.attr
                for c in ast.walk(node) if isinstance(c, ast.Call)
                and isinstance(c.func, (ast.Name, ast.Attribute))}

    funcs = {}
    for m in pkgutil.walk_packages(daskgru.__path__, "daskgru."):
        tree = ast.parse(inspect.getsource(importlib.import_module(m.name)))
        for f in ast.walk(tree):
            if isinstance(f, ast.FunctionDef):
                funcs.setdefault(f.name, set()).update(calls(f))
    reach = {"call_product"}
    while True:  # the callers of the products, to a fixed point
        more = {name for name, called in funcs.items() if called & reach} - reach
        if not more:
            break
        reach |= more
    users = [k for k in jit.KERNELS
             if calls(ast.parse(textwrap.dedent(inspect.getsource(k.py_func)))) & reach]
    assert len(users) >= 8  # the scans, walks, projections, dense heads of both cells
    assert [k.__qualname__ for k in users if k._fma_at is None] == []


def test_kernels_call_the_one_compiled_product_by_name():
    """A jitted function calls the products through ``call_product`` (a table entry per
    float type and form, filled by ``export`` with the product compiled once, not its code
    linked in again): the same bits as ``product`` from Python, its errors raised from
    inside, read-only weights taken, arrays it cannot index or write refused when the
    caller compiles."""
    import numba
    from numba.core.errors import TypingError

    from daskgru.kernels import tiles

    @numba.njit
    def caller(a, ra, n, w, b, c0, c1, out, ro, fused):
        tiles.call_product(a, ra, n, w, b, c0, c1, out, ro, fused)

    rng = np.random.default_rng(4)
    for dtype in ("float32", "float64"):
        for fused in (False, True):
            tiles.export(dtype, fused)
            assert tiles.ready(dtype, fused)
            a = rng.standard_normal((11, 37)).astype(dtype)
            w = rng.standard_normal((37, 70)).astype(dtype)
            w.flags.writeable = False
            b = rng.standard_normal(70).astype(dtype)
            got = np.full((12, 70), np.nan, dtype)
            want, also = got.copy(), got.copy()
            caller(a, 1, 9, w, b, 2, 69, got, 3, fused)
            product(a, 1, 9, w, b, 2, 69, want, 3, fused)
            tiles.run_product(a, 1, 9, w, b, 2, 69, also, 3, fused)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(also, want)
            assert np.isnan(got[:3]).all() and np.isnan(got[:, 69]).all()
            with pytest.raises(ValueError, match="does not fit"):
                caller(a, 5, 9, w, b, 0, 70, got, 0, fused)
    for bad in (dict(a=a[:, ::2]), dict(a=a.astype("float32")), dict(out=np.zeros_like(got))):
        args = dict(a=a, w=w, out=got) | bad
        if "out" in bad:
            args["out"].flags.writeable = False
        with pytest.raises(TypingError, match="C-contiguous"):
            caller(args["a"], 0, 1, args["w"], b, 0, 1, args["out"], 0, True)


_CACHED_CALLER = """
import numba
from daskgru.kernels import tiles

@numba.njit(cache=True)
def caller(a, w, b, out, fused):
    tiles.call_product(a, 0, a.shape[0], w, b, 0, w.shape[1], out, 0, fused)
"""

_RUN_CACHED = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from cached_caller import caller
from daskgru.kernels import tiles
a, w = np.ones((3, 4), "f4"), np.ones((4, 5), "f4")
b, out = np.zeros(5, "f4"), np.zeros((3, 5), "f4")
try:
    caller(a, w, b, out, True)
    print("ran")
except RuntimeError as e:
    print("refused:", e)
tiles.export("float32", True)
caller(a, w, b, out, True)
print(out.sum())
"""


def test_a_cached_caller_of_the_products_in_a_new_process(tmp_path):
    """A function that calls the products, loaded from Numba's disk cache by a process that
    has not readied them, refuses with an error naming the fix (it does not crash), and runs
    once they are exported."""
    (tmp_path / "cached_caller.py").write_text(_CACHED_CALLER)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    runs = [subprocess.run([sys.executable, "-c", _RUN_CACHED, str(tmp_path)],
                           capture_output=True, text=True, env=env, check=True).stdout
            for _ in range(2)]
    for out in runs:
        first, total = out.strip().splitlines()
        assert first.startswith("refused:") and "tiles.export" in first, out
        assert float(total) == 60.0
