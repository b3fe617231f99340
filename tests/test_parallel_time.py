"""method="speculative" and method="newton" against method="scan" (issue 5)."""
import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import daskgru as dg
from daskgru.cells import Steps, project
from daskgru.graph import options, parallel_time

TOLS = {"float32": 1e-5, "float64": 1e-8}


def run(x, p, method, chunks, **kw):
    xd = da.from_array(x, chunks=chunks)
    out, h_n, info = dg.gru(xd, p, method=method, return_info=True, **kw)
    assert isinstance(out, da.Array)
    return dask.compute(out, h_n, info, scheduler="sync")


def check_close(got, ref, tol):
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype
        assert np.abs(g - r).max() <= tol


@pytest.mark.parametrize("method", ["speculative", "newton"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("layers,bi", [(1, False), (2, True)])
def test_random_gru_within_tol_of_scan(method, dtype, layers, bi, rng):
    p = dg.GRUParams.random(3, 6, num_layers=layers, bidirectional=bi, seed=3, dtype=dtype,
                            reset_after=layers == 1)
    x = rng.normal(size=(230, 5, 3)).astype(dtype)
    lengths = np.array([230, 117, 0, 1, 200])
    h0 = (0.5 * rng.normal(size=(layers * (1 + bi), 5, 6))).astype(dtype)
    ref = dg.gru(x, p, lengths=lengths, h0=h0)
    kw = dict(warmup=40) if method == "speculative" else {}
    out, h_n, info = run(x, p, method, ((30, 50, 50, 50, 50), (2, 3), 3), lengths=lengths,
                         h0=h0, **kw)
    check_close((out, h_n), ref, TOLS[dtype])
    assert info["method"] == method and info["chunks"] == 5
    assert info["chains"] == layers * (1 + bi) * 2
    assert info["max_mismatch"] <= TOLS[dtype]
    if method == "newton":
        assert 1 <= info["sweeps"] <= 4 and info["converged"]


@pytest.mark.parametrize("method", ["speculative", "newton"])
def test_numpy_input_runs_the_graph_synchronously(method, rng, monkeypatch):
    monkeypatch.setattr(parallel_time, "NUMPY_CHUNK", 40)
    p = dg.GRUParams.random(2, 4, seed=0, dtype="float64")
    x = rng.normal(size=(7, 150, 2))  # batch_first
    ref = dg.gru(x, p, batch_first=True)
    out, h_n, info = dg.gru(x, p, batch_first=True, method=method, return_info=True)
    assert isinstance(out, np.ndarray) and isinstance(info, dict)
    check_close((out, h_n), ref, 1e-8)
    assert info["chunks"] == 4
    # unbatched, and without info
    out1, h1 = dg.gru(x[0], p, method=method)
    check_close((out1, h1), dg.gru(x[0], p), 1e-8)


def slow_gru(dtype):
    w = dg.GRUParams.random(2, 5, seed=1, dtype=dtype).weights[0][0]
    b_ih = w.b_ih.copy()
    b_ih[5:10] += 5.0  # z block: the state is kept, forgotten slowly
    return dg.GRUParams([[w._replace(b_ih=b_ih)]])


def chaotic_gru(dtype):
    w = dg.GRUParams.random(2, 5, seed=1, dtype=dtype).weights[0][0]
    return dg.GRUParams([[w._replace(w_hh=w.w_hh * 8)]])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("make", [slow_gru, chaotic_gru])
def test_hard_grus_speculative_falls_back(make, dtype, rng):
    p = make(dtype)
    x = rng.normal(size=(400, 2, 2)).astype(dtype)
    ref = dg.gru(x, p)
    out, h_n, info = run(x, p, "speculative", (50, 2, 2), warmup=10)
    check_close((out, h_n), ref, TOLS[dtype])
    assert info["chunks_recomputed"] > 0  # the warm-up was too short: it says so


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("make", [slow_gru, chaotic_gru])
def test_hard_grus_newton(make, dtype, rng):
    p = make(dtype)
    x = rng.normal(size=(400, 2, 2)).astype(dtype)
    ref = dg.gru(x, p)
    out, h_n, info = run(x, p, "newton", (50, 2, 2))
    check_close((out, h_n), ref, TOLS[dtype])
    if make is chaotic_gru:
        # Newton cannot get chaotic boundaries to tol cheaply: it either swept to the end,
        # or stopped on divergence and the fix-up chain recomputed chunks.
        assert info["sweeps"] == info["chunks"] - 1 or info["chunks_recomputed"] > 0


def test_speculative_kept_chunks_are_verified_bitwise(rng):
    """A kept chunk (start mismatch <= tol) is re-scanned from its true start until it meets
    the speculative trajectory bit for bit, so the result equals the scan exactly."""
    p = dg.GRUParams.random(3, 8, seed=0, dtype="float64")
    x = rng.normal(size=(600, 1, 3))
    ref = dg.gru(x, p)
    out, h_n, info = run(x, p, "speculative", (100, 1, 3), warmup=60, tol=1e-3)
    assert np.array_equal(out, ref[0]) and np.array_equal(h_n, ref[1])
    assert 0 < info["max_mismatch"] <= 1e-3 and info["steps_verified"] > 0


@pytest.mark.parametrize("method, opts", [("speculative", dict(warmup=30)),
                                          ("speculative", dict(warmup=0, tol=1.0)),
                                          ("newton", dict())])
def test_bit_identical_with_lengths(method, opts, rng):
    """Past a sequence's end both trajectories output 0: only valid steps may count as the
    point where a re-scan meets the speculative run, else h_n keeps a wrong state."""
    p = dg.GRUParams.random(3, 8, seed=0, bidirectional=True, dtype="float64")
    x = rng.normal(size=(400, 64, 3))
    lengths = rng.integers(150, 400, 64)
    ref = dg.gru(x, p, lengths=lengths)
    out, h_n, _ = run(x, p, method, (100, 64, 3), lengths=lengths, **opts)
    assert np.array_equal(out, ref[0]) and np.array_equal(h_n, ref[1])


def fix_tasks(arr):
    return [k for k in dict(arr.__dask_graph__()) if "gru-fix" in str(k)]


@pytest.mark.parametrize("make", [chaotic_gru, slow_gru])
def test_verify_groups_change_nothing_but_the_graph(make, rng):
    """However many chunks one fix task verifies, the results are the same bits and info
    counts the same per chunk; only the number of fix tasks changes."""
    p = make("float64")
    x = rng.normal(size=(470, 3, 2))
    lengths = np.array([470, 260, 90])
    ref = dg.gru(x, p, lengths=lengths)
    xd = da.from_array(x, chunks=(50, 3, 2))  # 10 chunks
    got, names = [], set()
    for group in (1, 2, 3, 10, 99):
        with dask.config.set({"daskgru.verify-group": group}):
            out, h_n, info = dg.gru(xd, p, lengths=lengths, method="speculative", warmup=15,
                                    return_info=True)
        assert len(fix_tasks(out)) == -(-10 // min(group, 10))
        names.add(out.name)  # the group size is part of the names: fix keys differ
        out, h_n, info = dask.compute(out, h_n, info, scheduler="sync")
        assert np.array_equal(out, ref[0]) and np.array_equal(h_n, ref[1])
        assert info.pop("graph")["verify_group"] == min(group, 10)
        got.append(info)
    assert got[0]["chunks_recomputed"] > 0 or got[0]["steps_verified"] > 0
    assert all(g == got[0] for g in got)
    assert len(names) == 4  # 10 and 99 are both one group of 10


def test_verify_group_defaults():
    def verify_group(K):
        return options.resolve().group(K)

    # in one process a fix task runs as soon as it can: one chunk each
    assert verify_group(16) == 1
    # where results travel, twice the task slots (capped, and at most K)
    with dask.config.set(scheduler="processes", num_workers=3):
        assert verify_group(16) == 6
        assert verify_group(4) == 4
    with dask.config.set(scheduler="processes", num_workers=64):
        assert verify_group(1000) == options.MAX_VERIFY_GROUP
    with dask.config.set({"daskgru.verify-group": 0}), pytest.raises(ValueError,
                                                                     match="verify-group"):
        verify_group(16)
    # a scheduler chosen explicitly over a client keeps results in one process
    with dask.config.set(scheduler="threads"):
        assert verify_group(16) == 1


def test_info_for_scan_and_laziness(rng):
    p = dg.GRUParams.random(2, 3, seed=0)
    x = rng.normal(size=(20, 2, 2)).astype("float32")
    out, h_n, info = dg.gru(x, p, return_info=True)
    assert info == dict(method="scan", sweeps=0, chunks=None, chunks_recomputed=0,
                        max_mismatch=0.0, fma=True)
    xd = da.from_array(x, chunks=(5, 2, 2))
    assert dg.gru(xd, p, return_info=True)[2].compute()["sweeps"] == 0

    def boom(*a, **k):
        raise AssertionError("computed while building the graph")

    with dask.config.set(scheduler=boom):
        for m in ("speculative", "newton"):
            o, h, i = dg.gru(xd, p, method=m, return_info=True)
    for m in ("speculative", "newton"):
        o, h, i = dg.gru(xd, p, method=m, return_info=True)
        assert o.name != dg.gru(xd, p, method=m, tol=1e-3)[0].name  # options are in the key


def test_dask_h0_and_lengths(rng):
    p = dg.GRUParams.random(2, 4, seed=0, bidirectional=True, dtype="float64")
    x = rng.normal(size=(60, 3, 2))
    h0 = 0.3 * rng.normal(size=(2, 3, 4))
    lengths = np.array([60, 33, 5])
    ref = dg.gru(x, p, h0=h0, lengths=lengths)
    for m in ("speculative", "newton"):
        out, h_n = dg.gru(da.from_array(x, chunks=(20, 2, 2)), p, method=m,
                          h0=da.from_array(h0, chunks=(1, 2, 4)),
                          lengths=da.from_array(lengths, chunks=2))
        check_close(dask.compute(out, h_n), ref, 1e-8)


def test_apply_gru_passes_method_options(rng):
    p = dg.GRUParams.random(2, 4, seed=0, dtype="float64")
    arr = xr.DataArray(rng.normal(size=(80, 3, 2)), dims=("time", "station", "feature"))
    ref = dg.apply_gru(arr, p)
    ds, info = dg.apply_gru(arr.chunk(time=20), p, method="speculative", warmup=5, tol=1e-9,
                            return_info=True)
    xr.testing.assert_allclose(ds.output.compute(), ref.output, atol=1e-9, rtol=0)
    assert ds.attrs["gru_method"] == "speculative" and info.compute()["chunks"] == 4
    ds2, info2 = dg.apply_gru(arr, p, method="newton", return_info=True)
    assert isinstance(info2, dict) and "gru_info" in ds2.attrs
    with pytest.raises(TypeError, match="unknown options"):
        dg.apply_gru(arr, p, method="newton", sweeps=3)


@pytest.mark.parametrize("kw,err,msg", [
    (dict(method="speculative", warmup=-1), ValueError, "warmup must be >= 0"),
    (dict(method="speculative", warmup=2.5), TypeError, "warmup must be an int"),
    (dict(method="speculative", tol=0), ValueError, "tol must be finite and > 0"),
    (dict(method="newton", tol=-1e-3), ValueError, "tol must be finite and > 0"),
    (dict(method="newton", tol=float("nan")), ValueError, "tol must be finite and > 0"),
    (dict(method="newton", warmup=10), ValueError,
     r"warmup is not an option of method='newton' \(it takes tol\)"),
    (dict(method="scan", tol=1e-3), ValueError,
     r"tol is not an option of method='scan' \(it takes no options\)"),
    (dict(method="speculative", return_info=1), TypeError, "return_info must be a bool"),
    (dict(method="nope"), ValueError, "method must be one of"),
])
def test_bad_method_options(kw, err, msg):
    p = dg.GRUParams.random(2, 3, seed=0)
    x = np.zeros((4, 1, 2), "float32")
    with pytest.raises(err, match=msg):
        dg.gru(x, p, **kw)
    with pytest.raises(err, match=msg):
        dg.gru(da.from_array(x), p, **kw)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_tangent_kernel_against_finite_differences(dtype, reset_after, rng):
    p = dg.GRUParams.random(3, 5, seed=1, dtype="float64", reset_after=reset_after)
    cell, w = p.cell, p.prepare().weights[0][0]
    gi = project(w, rng.normal(size=(9, 2, 3)))
    h0 = 0.5 * rng.normal(size=(2, 5))
    lengths = np.array([9, 4])
    for rev in (False, True):
        steps = Steps.make(2, 9, lengths=lengths, reverse=rev)
        h, M = cell.tangent(w, gi, h0, steps)
        fd = np.empty_like(M)
        for k in range(5):
            e = np.zeros(5)
            e[k] = 1e-6
            hp = cell.scan(w, gi, h0 + e, steps)[1]
            hm = cell.scan(w, gi, h0 - e, steps)[1]
            fd[:, :, k] = (hp - hm) / 2e-6
        np.testing.assert_allclose(M, fd, atol=1e-8)
        if dtype == "float32":  # the float32 kernel agrees with float64 to float32 precision
            w32 = p.astype("float32").prepare().weights[0][0]
            h32, M32 = cell.tangent(w32, gi.astype("float32"), h0.astype("float32"), steps)
            np.testing.assert_allclose(M32, M, atol=1e-5)
            np.testing.assert_allclose(h32, h, atol=1e-5)


def test_fix_tasks_receive_states_not_outputs(rng):
    """The fix-up chain takes each chunk's (assumed start, end, checkpoints), never its
    outputs: those stay where the spec task ran, and the select task patches them there."""
    from dask.core import get_dependencies

    p = dg.GRUParams.random(3, 8, num_layers=2, seed=0)
    xd = da.from_array(rng.normal(size=(400, 2, 3)).astype("float32"), chunks=(50, 2, 3))
    out, _ = dg.gru(xd, p, method="speculative")
    dsk = dict(out.__dask_graph__())
    fixes = fix_tasks(out)
    assert fixes
    for k in fixes:
        stages = {str(d[0] if isinstance(d, tuple) else d).split("-l")[0]
                  for d in get_dependencies(dsk, k)}
        assert "gru-spec" not in stages and "gru-specstate" in stages, stages


def test_the_warm_up_takes_only_the_pieces_it_reads(rng):
    """A merged chunk's speculative task warms up over the last ``warmup`` steps of the
    chunk before it (the first, walking backward): it depends on the user's time chunks that
    hold those steps, not on the whole chunk before; the bits are the scan's."""
    from dask.core import get_dependencies

    p = dg.GRUParams.random(3, 8, bidirectional=True, seed=0, dtype="float64")
    x = rng.normal(size=(400, 2, 3))
    xd = da.from_array(x, chunks=(25, 2, 3))  # 16 pieces, merged into chunks of 100
    with dask.config.set({"daskgru.merge-chunks": 2 * 3 * 8 * (3 + 8) * 2 * 100}):
        out, h_n = dg.gru(xd, p, method="speculative", warmup=30)
    assert out.chunks[0] == (100,) * 4
    dsk = dict(out.__dask_graph__())
    for k in dsk:
        if isinstance(k, tuple) and k[0].startswith("gru-spec-l0-"):
            d, q = k[1], k[3]
            pieces = sorted(dep[1] for dep in get_dependencies(dsk, k)
                            if isinstance(dep, tuple) and dep[0] == xd.name)
            chunk = 3 - q if d else q  # the chunk scanned, in time order
            own = list(range(4 * chunk, 4 * chunk + 4))
            if q == 0:
                assert pieces == own
            else:  # 30 steps: two pieces of 25 from the neighbour it warms up over
                near = [4 * chunk + 4, 4 * chunk + 5] if d else [4 * chunk - 2, 4 * chunk - 1]
                assert pieces == sorted(own + near), (k, pieces)
    ref = dg.gru(x, p)
    got = dask.compute(out, h_n, scheduler="sync")
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
