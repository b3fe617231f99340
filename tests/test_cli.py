"""The ``daskgru`` command: help, exit codes, demo, resumable run (killed for real),
convert and info."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

import daskgru as dg
from daskgru.cli import main
from daskgru.run import store_status, synthetic_field

pytest.importorskip("zarr")
pytest.importorskip("h5netcdf")

COMMANDS = ["demo", "run", "convert", "info"]


def cli(*args, env=None, timeout=120):
    """``python -m daskgru ARGS`` in a subprocess."""
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "daskgru", *map(str, args)], capture_output=True,
                          text=True, env=e, timeout=timeout)


@pytest.fixture
def files(tmp_path):
    """A small netCDF field (time 230, lat 3, lon 4, feature 2) and two params files."""
    rng = np.random.default_rng(0)
    x = xr.DataArray(rng.normal(size=(230, 3, 4, 2)).astype("float32"),
                     dims=("time", "lat", "lon", "feature"),
                     coords={"time": np.arange(230), "lat": [10.0, 20.0, 30.0]},
                     name="x", attrs={"units": "K"})
    x.to_dataset().to_netcdf(tmp_path / "in.nc")
    p = dg.GRUParams.random(2, 5, num_layers=2, seed=1)
    p.save(tmp_path / "p.nc")
    dg.GRUParams.random(2, 5, num_layers=2, seed=2).save(tmp_path / "p2.nc")
    return tmp_path, x, p


def reference_run(d):
    """The run command's arguments on the ``files`` fixture (time chunks of 50, no progress
    bar), an output path for the run under test, and an uninterrupted run's output."""
    args = ["run", str(d / "in.nc"), "--params", str(d / "p.nc"), "--chunks", "time=50",
            "--no-progress"]
    assert main([*args, "-o", str(d / "ref.zarr")]) == 0
    return args, d / "o.zarr", d / "ref.zarr"


def assert_same_store(a, b):
    da, db = xr.open_zarr(a), xr.open_zarr(b)
    assert set(da.variables) == set(db.variables)
    for k in da.variables:
        assert da[k].dtype == db[k].dtype, k
        assert np.array_equal(da[k].values, db[k].values), k
    assert da.attrs == db.attrs


# ----------------------------------------------------------------------------- help, codes
def test_main_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for c in COMMANDS:
        assert c in out


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: daskgru {command}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["nope"], ["run", "in.nc"], ["run", "--params", "p.nc"],
                                  ["convert", "w.pt"], ["demo", "--workers", "two"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_python_m_daskgru_user_error_is_one_line(tmp_path):
    """``python -m daskgru`` works; a user error is one line on stderr, exit 1, no traceback."""
    r = cli("info", tmp_path / "missing.nc")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.nc" in lines[0] and "does not exist" in lines[0]
    assert r.stdout == ""


@pytest.mark.parametrize("extra, message", [
    (["--time-dim", "t"], "time dim 't'"),
    (["--chunks", "time=0"], "must be >= 1"),
    (["--chunks", "time=abc"], "must be an integer"),
    (["--chunks", "depth=3"], "depth"),
    (["--chunks", "feature=1"], "never chunked"),
    (["--features", "a,b"], "feature dim"),
    (["--variable", "nope"], "'nope'"),
    (["--method", "bogus"], "method"),
])
def test_run_bad_options(files, extra, message, capsys):
    d, _, _ = files
    code = main(["run", str(d / "in.nc"), "--params", str(d / "p.nc"), "-o", str(d / "o.zarr"),
                 "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(d / "o.zarr")


def test_run_bad_files(files, capsys):
    d, _, _ = files
    base = ["--no-progress", "-o", str(d / "o.zarr")]
    assert main(["run", str(d / "missing.nc"), "--params", str(d / "p.nc"), *base]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", str(d / "in.nc"), "--params", str(d / "in.nc"), *base]) == 1
    assert "as a daskgru params or model file" in capsys.readouterr().err
    (d / "junk.nc").write_text("not netcdf")
    assert main(["run", str(d / "junk.nc"), "--params", str(d / "p.nc"), *base]) == 1
    assert "cannot read input" in capsys.readouterr().err
    dg.GRUParams.random(3, 5, seed=0).save(d / "p3.nc")  # wrong input size
    assert main(["run", str(d / "in.nc"), "--params", str(d / "p3.nc"), *base]) == 1
    assert "input_size is 3" in capsys.readouterr().err
    assert not os.path.exists(d / "o.zarr")


# ----------------------------------------------------------------------------- run
@pytest.mark.parametrize("chunks", ["time=50", "time=1000", "time=37,lat=2"])
def test_run_equals_apply_gru(files, chunks):
    d, x, p = files
    out = d / "o.zarr"
    assert main(["run", str(d / "in.nc"), "--params", str(d / "p.nc"), "-o", str(out),
                 "--chunks", chunks, "--no-progress"]) == 0
    ref = dg.apply_gru(x, p)
    res = xr.open_zarr(out)
    assert res.attrs["daskgru_complete"] == 1
    assert "daskgru_state" not in res
    for k in ("output", "final_state"):
        assert res[k].dims == ref[k].dims and res[k].dtype == ref[k].dtype
        assert np.array_equal(res[k].values, ref[k].values), k
    assert res.attrs["units"] == "K"
    np.testing.assert_array_equal(res.lat, x.lat)


def test_run_features_and_zarr_input(files):
    d, x, p = files
    ds = x.to_dataset("feature").rename({0: "a", 1: "b"})
    ds.to_zarr(d / "in.zarr", zarr_format=2)
    out = d / "o.zarr"
    assert main(["run", str(d / "in.zarr"), "--params", str(d / "p.nc"), "-o", str(out),
                 "--features", "a,b", "--chunks", "time=64", "--no-progress"]) == 0
    ref = dg.apply_gru(x, p)
    assert np.array_equal(xr.open_zarr(out).output.values, ref.output.values)


def test_run_bidirectional_is_one_unit(files):
    d, x, _ = files
    pb = dg.GRUParams.random(2, 4, bidirectional=True, seed=3)
    pb.save(d / "pb.nc")
    out = d / "o.zarr"
    assert main(["run", str(d / "in.nc"), "--params", str(d / "pb.nc"), "-o", str(out),
                 "--chunks", "time=50", "--no-progress"]) == 0
    ref = dg.apply_gru(x, pb)
    res = xr.open_zarr(out)
    assert res.attrs["daskgru_units"] == 1
    assert np.array_equal(res.output.values, ref.output.values)
    assert np.array_equal(res.final_state.values, ref.final_state.values)


def test_rerun_complete_and_refusals(files, capsys):
    d, _, _ = files
    out = d / "o.zarr"
    args = ["run", str(d / "in.nc"), "-o", str(out), "--chunks", "time=50", "--no-progress"]
    assert main([*args, "--params", str(d / "p.nc")]) == 0
    capsys.readouterr()
    assert main([*args, "--params", str(d / "p.nc")]) == 0
    assert "already complete" in capsys.readouterr().out
    # Other params, other chunking, changed input: refused, store untouched.
    before = xr.open_zarr(out).output.values
    assert main([*args, "--params", str(d / "p2.nc")]) == 1
    assert "different run" in capsys.readouterr().err
    assert main([*args[:-2], "time=60", "--no-progress", "--params", str(d / "p.nc")]) == 1
    assert "different run" in capsys.readouterr().err
    import dask

    with dask.config.set({"daskgru.fma": not dask.config.get("daskgru.fma", True)}):
        # the other products' numerics would give other bits: not the same run either
        assert main([*args, "--params", str(d / "p.nc")]) == 1
    assert "different run" in capsys.readouterr().err
    assert np.array_equal(xr.open_zarr(out).output.values, before)
    # --overwrite replaces it.
    assert main([*args, "--params", str(d / "p2.nc"), "--overwrite"]) == 0
    assert not np.array_equal(xr.open_zarr(out).output.values, before)
    # A directory that is not a run store is never replaced.
    (d / "other").mkdir()
    (d / "other" / "keep.txt").write_text("x")
    assert main([*args[:3], str(d / "other"), *args[4:], "--params", str(d / "p.nc")]) == 1
    assert "not a daskgru run store" in capsys.readouterr().err
    assert (d / "other" / "keep.txt").exists()


def test_run_refuses_changed_input(files, capsys):
    d, x, _ = files
    out = d / "o.zarr"
    args = ["run", str(d / "in.nc"), "--params", str(d / "p.nc"), "-o", str(out),
            "--chunks", "time=50", "--no-progress"]
    assert main(args) == 0
    (x + 1).to_dataset().to_netcdf(d / "in.nc")
    assert main(args) == 1
    assert "different run" in capsys.readouterr().err


def _wait_for_units(out, n, proc, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = store_status(out)
        if st and st["completed_units"] and st["completed_units"] >= n:
            return st["completed_units"]
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("run made no progress")


@pytest.mark.slow
def test_run_resumes_after_kill_9(files):
    """Kill a real ``python -m daskgru run`` mid-way with SIGKILL, rerun, compare bits."""
    d, _, _ = files
    out, ref = d / "killed.zarr", d / "ref.zarr"
    args = ["run", str(d / "in.nc"), "--params", str(d / "p.nc"), "--chunks", "time=20",
            "--no-progress"]
    assert main([*args, "-o", str(ref)]) == 0  # uninterrupted, 12 units
    env = dict(os.environ, DASKGRU_TEST_CHUNK_DELAY="0.4")
    proc = subprocess.Popen([sys.executable, "-m", "daskgru", *args, "-o", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_units(out, 3, proc)
        time.sleep(0.15)  # somewhere inside the next unit or its delay
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    st = store_status(out)
    assert not st["complete"] and 3 <= st["completed_units"] < 12
    half = xr.open_zarr(out, consolidated=False)
    assert half.attrs["daskgru_complete"] == 0
    assert np.isnan(half.output.values[-1]).all()  # never mistaken for data
    r = cli(*args, "-o", out)
    assert r.returncode == 0, r.stderr
    assert f"resuming {out}: {st['completed_units']} of 12" in r.stdout
    assert_same_store(out, ref)


def test_resume_from_a_store_killed_between_writes(files):
    """A unit's output written but its counter not advanced: the rerun redoes that unit."""
    import zarr

    d, _, _ = files
    args, out, ref = reference_run(d)
    assert main([*args, "-o", str(out)]) == 0
    # Rewind to "2 units done, unit 2's output and the slot after it written, counter not
    # advanced", and restore the slot the counter points at (as it was then).
    os.remove(out / ".zmetadata")  # as before completion
    g = zarr.open_group(str(out), mode="r+")
    x, p = xr.open_dataset(d / "in.nc").x, dg.load_params(d / "p.nc")
    first = dg.apply_gru(x.isel(time=slice(0, 100)), p)
    g.create_array("daskgru_state", shape=(2, 1, 2, 1, 3, 4, 5), dtype="float32",
                   chunks=(1, 1, 1, 1, 3, 4, 5), fill_value=np.float32(0),
                   attributes={"_ARRAY_DIMENSIONS": ["slot", "part", "layer", "direction",
                                                     "lat", "lon", "hidden"]})
    g["daskgru_state"][0] = first.final_state.values[None]
    g["daskgru_state"][1] = -7.0  # a torn slot: must never be read
    g["output"][150:] = np.nan
    g["final_state"][...] = np.nan
    g.attrs.update(daskgru_completed_units=2, daskgru_complete=0)
    assert main([*args, "-o", str(out)]) == 0
    assert_same_store(out, ref)


# ----------------------------------------------------------------------------- one writer
@pytest.mark.slow
def test_a_second_run_on_a_held_output_is_refused(files):
    """Two real processes on one output: the second is refused in one line naming the
    first; the first finishes untouched."""
    d, _, _ = files
    args, out, ref = reference_run(d)
    env = dict(os.environ, DASKGRU_TEST_CHUNK_DELAY="2")  # 10 s: the others start meanwhile
    first = subprocess.Popen([sys.executable, "-m", "daskgru", *args, "-o", str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_units(out, 1, first)
        second = cli(*args, "-o", out)
        assert second.returncode == 1
        assert f"is being written by another run (pid {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.splitlines()) == 1
        overwrite = cli(*args, "-o", out, "--overwrite")  # not even with --overwrite
        assert overwrite.returncode == 1 and "another run" in overwrite.stderr
        assert first.wait(120) == 0, first.communicate()
    finally:
        if first.poll() is None:
            first.kill()
    assert_same_store(out, ref)
    assert not any(n.endswith(".lock") for n in os.listdir(d))  # released and removed


def test_a_stale_lock_is_taken_over(files):
    """A lock file whose holder is gone (it records a dead pid; nothing holds its flock)."""
    d, _, _ = files
    args, out, ref = reference_run(d)
    (d / ".o.zarr.lock").write_text('{"pid": 999999999, "host": "gone", "started": "then"}')
    assert main([*args, "-o", str(out)]) == 0
    assert_same_store(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["create", "created", "output@2", "state@3", "finals",
                                   "flag"])
def test_killed_anywhere_the_same_command_ends_bit_identical(files, point):
    """SIGKILL at each point of a run's life, store creation included; the same command
    then continues or starts over by itself and ends equal to an uninterrupted run."""
    d, _, _ = files
    args, out, ref = reference_run(d)
    killed = cli(*args, "-o", out, env={"DASKGRU_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = cli(*args, "-o", out)
    assert again.returncode == 0, again.stderr
    if "@" in point:  # killed inside unit k: it continues from there
        assert f": {point.split('@')[1]} of 5 time chunks already done" in again.stdout
    assert_same_store(out, ref)
    assert sorted(os.listdir(d)) == sorted(["in.nc", "p.nc", "p2.nc", "ref.zarr", "o.zarr"])


# ----------------------------------------------------------------------------- demo
def test_demo_small(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--time", "120", "--grid", "4", "--hidden", "6",
                 "--time-chunk", "40", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "plain NumPy loop" in text and str(out) in text and "dashboard:" in text
    assert "bit-identical to the dask run: True" in text
    assert (out / "gru_output.png").stat().st_size > 1000
    res = xr.open_zarr(out / "gru_output.zarr")
    field = synthetic_field(120, 4, 4, 3, time_chunk=40).compute()
    p = dg.load_params(out / "demo_params.zarr")
    ref = dg.apply_gru(field, p)
    assert np.array_equal(res.output.values, ref.output.values)


# ----------------------------------------------------------------------------- convert, info
def test_convert_torch_state_dict(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.GRU(3, 8, num_layers=2, bidirectional=True)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    assert main(["convert", str(tmp_path / "w.pt"), "-o", str(tmp_path / "p.nc")]) == 0
    assert dg.load_params(tmp_path / "p.nc") == dg.GRUParams.from_torch(m)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "p.nc")]) == 0
    text = capsys.readouterr().out
    n = sum(v.numel() for v in m.parameters())
    for s in ("hidden_size:   8", "num_layers:    2", "directions:    2", "float32",
              "reset_after=True", f"parameters:    {n:,}"):
        assert s in text


def test_convert_torch_nested_model(tmp_path, capsys):
    torch = pytest.importorskip("torch")

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(2, 4, batch_first=True)
            self.head = torch.nn.Linear(4, 1)

    m = Model()
    torch.save({"epoch": 3, "model_state_dict": m.state_dict()}, tmp_path / "ckpt.pth")
    # the head would be left out: refused, naming it, unless --rnn-only
    assert main(["convert", str(tmp_path / "ckpt.pth"), "-o", str(tmp_path / "p.zarr")]) == 1
    err = capsys.readouterr().err
    assert "head.bias, head.weight would be left out" in err and "--rnn-only" in err
    assert not (tmp_path / "p.zarr").exists()
    assert main(["convert", str(tmp_path / "ckpt.pth"), "-o", str(tmp_path / "p.zarr"),
                 "--rnn-only"]) == 0
    assert dg.load_params(tmp_path / "p.zarr") == dg.GRUParams.from_torch(m.gru)
    out = capsys.readouterr().out
    assert "under gru" in out and "left out (--rnn-only): head.bias, head.weight" in out
    torch.save(m.head.state_dict(), tmp_path / "lin.pt")
    assert main(["convert", str(tmp_path / "lin.pt"), "-o", str(tmp_path / "q.nc")]) == 1
    assert "no GRU or LSTM weights" in capsys.readouterr().err
    torch.save(m.gru, tmp_path / "module.pt")  # a pickled module, not a state_dict
    assert main(["convert", str(tmp_path / "module.pt"), "-o", str(tmp_path / "q.nc")]) == 1
    assert "state_dict" in capsys.readouterr().err
    assert not (tmp_path / "q.nc").exists()


def test_convert_keras_model(tmp_path, capsys):
    keras = pytest.importorskip("keras")
    g1, g2 = keras.layers.GRU(6, return_sequences=True), keras.layers.GRU(6)
    model = keras.Sequential([keras.Input((None, 3)), g1, g2, keras.layers.Dense(1)])
    model.save(tmp_path / "m.keras")
    # more than a stack of GRUs: written whole, as a model
    assert main(["convert", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.nc")]) == 0
    whole = dg.load_model(tmp_path / "m.nc")
    assert isinstance(whole, dg.Model) and whole.output_size == 1
    xk = np.random.default_rng(1).normal(size=(2, 5, 3)).astype("float32")
    np.testing.assert_allclose(whole(xk), np.asarray(model(xk)), rtol=2e-6, atol=2e-6)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "m.nc")]) == 0
    assert "head:   Dense 6 -> 1, linear" in capsys.readouterr().out
    # the recurrent layers alone, when asked for
    assert main(["convert", str(tmp_path / "m.keras"), "-o", str(tmp_path / "p.nc"),
                 "--rnn-only"]) == 0
    p = dg.load_params(tmp_path / "p.nc")
    assert p == dg.GRUParams.from_keras([g1, g2])
    assert (p.num_layers, p.hidden_size, p.input_size) == (2, 6, 3)
    x = np.random.default_rng(0).normal(size=(1, 7, 3)).astype("float32")
    want = keras.Model(model.inputs, g1.output)(x)
    got, _ = dg.gru(x, dg.GRUParams([p.weights[0]], reset_after=p.reset_after), batch_first=True)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "m.keras")]) == 0  # info reads Keras files directly
    out = capsys.readouterr().out
    assert "Keras model 'sequential" in out and "head:   Dense 6 -> 1" in out


def test_convert_keras_refusals(tmp_path, capsys):
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.Dense(2)])
    model.save(tmp_path / "dense.keras")
    assert main(["convert", str(tmp_path / "dense.keras"), "-o", str(tmp_path / "p.nc")]) == 1
    assert "has no GRU or LSTM layer" in capsys.readouterr().err
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4),
                              keras.layers.RepeatVector(2), keras.layers.GRU(4)])
    model.save(tmp_path / "gap.keras")
    assert main(["convert", str(tmp_path / "gap.keras"), "-o", str(tmp_path / "p.nc")]) == 1
    assert "(RepeatVector) is not supported" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "gap.keras"), "-o", str(tmp_path / "p.nc"),
                 "--rnn-only"]) == 1
    assert "return_sequences=False" in capsys.readouterr().err
    model.save_weights(tmp_path / "m.weights.h5")
    assert main(["convert", str(tmp_path / "m.weights.h5"), "-o", str(tmp_path / "p.nc")]) == 1
    assert "weights only" in capsys.readouterr().err
    assert not (tmp_path / "p.nc").exists()


def test_info_describes_keras_and_bad_files(tmp_path, capsys):
    (tmp_path / "bad.nc").write_text("nope")
    assert main(["info", str(tmp_path / "bad.nc")]) == 1
    err = capsys.readouterr().err
    assert "cannot read" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- tables
@pytest.fixture
def parquet(tmp_path):
    """A long table as Spark writes it: partitioned by day (Hive directories)."""
    pytest.importorskip("pyarrow")
    import pandas as pd

    rng = np.random.default_rng(3)
    rows = []
    for i in range(6):
        start, n = int(rng.integers(0, 10)), int(rng.integers(20, 60))
        for t in range(start, start + n):
            rows.append((f"s{i}", t, *rng.normal(size=2)))
    df = pd.DataFrame(rows, columns=["station", "t", "rain", "temp"])
    df["day"] = df.t // 7
    df.to_parquet(tmp_path / "table", partition_cols=["day"])
    p = dg.LSTMParams.random(2, 3, seed=4, dtype="float64")
    p.save(tmp_path / "p.nc")
    return tmp_path, df, p


def _read_table(path):
    import dask.dataframe as dd

    return dd.read_parquet(path).compute().sort_values(["station", "t"]).reset_index(drop=True)


def test_run_parquet_table_equals_apply_frame(parquet):
    d, df, p = parquet
    out = d / "out.parquet"
    args = ["run", str(d / "table"), "--params", str(d / "p.nc"), "-o", str(out),
            "--id-col", "station", "--time-col", "t", "--features", "rain,temp",
            "--no-progress"]
    assert main(args) == 0
    got = _read_table(out)
    want = dg.apply_frame(df.drop(columns="day"), p, id_col="station", time_col="t")
    want = want.sort_values(["station", "t"]).reset_index(drop=True)
    np.testing.assert_array_equal(got[["h0", "h1", "h2"]].to_numpy(),
                                  want[["h0", "h1", "h2"]].to_numpy())
    assert main(args) == 0  # complete: nothing to do


@pytest.mark.slow
@pytest.mark.parametrize("point", ["create", "created", "output@2", "state@3", "finals",
                                   "flag"])
def test_run_parquet_killed_continues_bit_identical(parquet, point):
    d, _, _ = parquet
    args = ["run", str(d / "table"), "--params", str(d / "p.nc"), "--id-col", "station",
            "--time-col", "t", "--features", "rain,temp", "--no-progress"]
    assert main([*args, "-o", str(d / "ref.parquet")]) == 0
    killed = cli(*args, "-o", d / "o.parquet", env={"DASKGRU_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = cli(*args, "-o", d / "o.parquet")
    assert again.returncode == 0, again.stderr
    if "@" in point:  # killed inside partition k: it continues there, with its state table
        assert f": {point.split('@')[1]} of " in again.stdout
    a, b = _read_table(d / "o.parquet"), _read_table(d / "ref.parquet")
    np.testing.assert_array_equal(a[["h0", "h1", "h2"]].to_numpy(),
                                  b[["h0", "h1", "h2"]].to_numpy())
    assert sorted(os.listdir(d / "o.parquet")) == sorted(os.listdir(d / "ref.parquet"))


def test_run_parquet_refusals(parquet, capsys):
    d, _, _ = parquet
    base = ["run", str(d / "table"), "--params", str(d / "p.nc"), "-o", str(d / "o.parquet"),
            "--no-progress"]
    assert main(base) == 1
    assert "needs --id-col" in capsys.readouterr().err
    assert main([*base, "--id-col", "nope", "--time-col", "t"]) == 1
    assert "id_col 'nope' is not a column" in capsys.readouterr().err
    assert main([*base, "--id-col", "station", "--time-col", "t", "--features", "rain"]) == 1
    assert "1 feature columns" in capsys.readouterr().err
    # time slices said to be whole series: checked before any work
    assert main([*base, "--id-col", "station", "--time-col", "t", "--features", "rain,temp",
                 "--partitioned-by", "id"]) == 1
    assert "has rows in several partitions" in capsys.readouterr().err
    assert main([*base, "--id-col", "station", "--time-col", "t", "--chunks", "time=5"]) == 1
    assert "--chunks are for netCDF and zarr input" in capsys.readouterr().err
    assert not os.path.exists(d / "o.parquet")
