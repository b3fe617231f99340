"""NeuralHydrology run directories made by NeuralHydrology itself (a tiny generic dataset,
two epochs of training), against its own windowed evaluation."""
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import daskgru as dg

nh_run = pytest.importorskip("neuralhydrology.nh_run")
pytest.importorskip("torch")

BASINS = ["b1", "b2", "b3"]


def make_data(root):
    data = root / "data"
    (data / "time_series").mkdir(parents=True)
    (data / "attributes").mkdir()
    rng = np.random.default_rng(0)
    dates = pd.date_range("2000-01-01", periods=400, freq="D")
    for i, b in enumerate(BASINS):
        p = rng.gamma(1.0, 2.0, size=400)
        t = 10 + 5 * np.sin(np.arange(400) / 58) + rng.normal(size=400)
        q = np.convolve(p, np.exp(-np.arange(20) / 5))[:400] * 0.2 + 0.1 * i
        ds = xr.Dataset({"prcp": ("date", p), "tmean": ("date", t), "qobs": ("date", q)},
                        coords={"date": dates})
        if b == "b2":
            ds["prcp"][300] = np.nan  # a missing forcing value in the test period
        ds.to_netcdf(data / "time_series" / f"{b}.nc")
    pd.DataFrame({"gauge_id": BASINS, "elev": [100.0, 700.0, 350.0],
                  "area": [10.0, 50.0, 30.0]}).set_index("gauge_id").to_csv(
        data / "attributes" / "attrs.csv")
    (root / "basins.txt").write_text("\n".join(BASINS))
    return data


def config(root, data, model, extra="", runs=None):
    return f"""
experiment_name: tiny
run_dir: {runs or root / 'runs'}
train_basin_file: {root / 'basins.txt'}
validation_basin_file: {root / 'basins.txt'}
test_basin_file: {root / 'basins.txt'}
train_start_date: "01/01/2000"
train_end_date: "31/08/2000"
validation_start_date: "01/09/2000"
validation_end_date: "30/09/2000"
test_start_date: "01/09/2000"
test_end_date: "03/02/2001"
device: cpu
validate_every: 100
metrics: [NSE]
model: {model}
head: regression
hidden_size: 8
initial_forget_bias: 3
output_dropout: 0.1
optimizer: Adam
loss: MSE
learning_rate: 0.01
batch_size: 64
epochs: 2
seq_length: 30
predict_last_n: 1
num_workers: 0
log_interval: 100
log_tensorboard: False
dataset: generic
data_dir: {data}
dynamic_inputs: [tmean, prcp]
target_variables: [qobs]
static_attributes: [elev, area]
{extra}
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nh")
    return root, make_data(root)


RUNS = []  # the run directories trained so far in this module


def train_and_evaluate(root, data, model, extra):
    # NeuralHydrology names a run by the second it started: two runs started within one
    # second would collide, so each run gets a folder of its own.
    (root / "runs").mkdir(exist_ok=True)
    runs = Path(tempfile.mkdtemp(dir=root / "runs"))
    cfg = runs / f"{model}.yml"
    cfg.write_text(config(root, data, model, extra, runs=runs))
    nh_run.start_run(config_file=cfg)
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    nh_run.eval_run(run_dir=run_dir, period="test")
    RUNS.append(run_dir)
    with open(run_dir / "test" / "model_epoch002" / "test_results.p", "rb") as f:
        return run_dir, pickle.load(f)


def basin(data, b):
    ds = xr.open_dataset(data / "time_series" / f"{b}.nc").load()
    attrs = pd.read_csv(data / "attributes" / "attrs.csv", index_col=0)
    for a in attrs.columns:
        ds[a] = attrs.loc[b, a]  # a static attribute: no time dim
    return ds.astype("float32")


@pytest.mark.slow
@pytest.mark.parametrize("model,extra", [
    ("gru", "output_activation: softplus\n"
            "statics_embedding: {type: fc, hiddens: [6, 4], activation: tanh, dropout: 0.1}\n"
            "dynamics_embedding: {type: fc, hiddens: [5], activation: relu, dropout: 0.0}"),
    ("cudalstm", "output_activation: relu"),
    ("customlstm", "statics_embedding: {type: fc, hiddens: [3], activation: sigmoid}"),
])
def test_matches_neuralhydrology_evaluation(data_root, model, extra):
    root, data = data_root
    run_dir, results = train_and_evaluate(root, data, model, extra)
    m = dg.Model.from_neuralhydrology(run_dir)
    assert m.window == 30 and m.inputs == ["tmean", "prcp", "area", "elev"]
    assert m.targets == ["qobs"] and m.batch_first
    for b in BASINS:
        ds = basin(data, b)
        sim = results[b]["1D"]["xr"]["qobs_sim"][:, 0]
        for obj in (ds, ds.chunk(date=50)):
            got = dg.apply_rnn(obj, m, window=m.window, time_dim="date").prediction
            got = got.sel(date=sim.date).isel(target=0).values
            # NeuralHydrology's rule for a missing input: NaN for the windows holding it
            assert np.array_equal(np.isnan(got), np.isnan(sim.values))
            np.testing.assert_allclose(got, sim.values, rtol=2e-6, atol=2e-6)
    assert np.isnan(results["b2"]["1D"]["xr"]["qobs_sim"]).sum() == 30
    # the model file round trip keeps the window
    m.save(root / f"{model}.nc")
    assert dg.load_model(root / f"{model}.nc") == m


@pytest.mark.parametrize("change,match", [
    ({"model": "ealstm"}, "model 'ealstm' is not supported"),
    ({"head": "gmm"}, "head 'gmm' is not supported"),
    ({"use_basin_id_encoding": True}, "use_basin_id_encoding.*one-hot"),
    ({"evolving_attributes": ["x"]}, "evolving_attributes"),
    ({"output_activation": "sigmoid"}, "output_activation 'sigmoid'"),
])
def test_refusals_name_the_option(tmp_path, change, match):
    import yaml

    cfg = {"model": "gru", "head": "regression", "hidden_size": 4, "seq_length": 5,
           "dynamic_inputs": ["a"], "target_variables": ["q"]}
    cfg.update(change)
    (tmp_path / "config.yml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=match):
        dg.Model.from_neuralhydrology(tmp_path)
    shutil.rmtree(tmp_path)
    with pytest.raises(ValueError, match="not a NeuralHydrology run directory"):
        dg.Model.from_neuralhydrology(tmp_path)


@pytest.mark.slow
def test_command_converts_and_runs_a_run_directory(data_root, tmp_path, capsys):
    from daskgru.cli import main

    root, data = data_root
    run_dir, results = train_and_evaluate(root, data, "gru", "output_activation: relu")
    assert main(["convert", str(run_dir), "-o", str(tmp_path / "nh.nc")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "nh.nc")]) == 0
    out = capsys.readouterr().out
    assert "window:        30" in out and "tmean, prcp, area, elev" in out
    ds = basin(data, "b2")
    ds.to_netcdf(tmp_path / "b2.nc")
    assert main(["run", str(tmp_path / "b2.nc"), "--params", str(tmp_path / "nh.nc"),
                 "--time-dim", "date", "--features", "tmean,prcp,area,elev", "-o",
                 str(tmp_path / "o.zarr"), "--chunks", "date=100", "--no-progress"]) == 0
    got = xr.open_zarr(tmp_path / "o.zarr").prediction.isel(target=0)
    sim = results["b2"]["1D"]["xr"]["qobs_sim"][:, 0]
    np.testing.assert_allclose(got.sel(date=sim.date).values, sim.values, rtol=2e-6, atol=2e-6)


def test_older_runs_with_a_pickled_scaler(data_root, tmp_path):
    """Runs before NeuralHydrology 1.0 pickled the scaler (pandas Series, xarray Datasets)."""
    import yaml

    root, data = data_root
    if RUNS:
        run_dir = RUNS[0]
    else:
        run_dir, _ = train_and_evaluate(root, data, "cudalstm", "output_activation: relu")
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    yml = old / "train_data" / "train_data_scaler.yml"
    raw = yaml.safe_load(yml.read_text())
    scaler = {k: (pd.Series(v) if k.startswith("attribute") else xr.Dataset.from_dict(v))
              for k, v in raw.items()}
    yml.unlink()
    with open(old / "train_data" / "train_data_scaler.p", "wb") as f:
        pickle.dump(scaler, f)
    assert dg.Model.from_neuralhydrology(old) == dg.Model.from_neuralhydrology(run_dir)._replace(
        description=dg.Model.from_neuralhydrology(old).description)
