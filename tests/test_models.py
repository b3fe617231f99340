"""Whole models as their users have them (the table of issue 14): Keras and torch models with
masking, normalisation, heads, mixed widths and cells, against the frameworks' own
predictions; refusals by name; dask bit-identity; files."""
import dask.array as da
import numpy as np
import pytest

import daskgru as dg
from daskgru import layers as L

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

F32 = dict(rtol=2e-6, atol=2e-6)


def padded_with_gaps(rng, B=3, T=14, F=3):
    """Batch-first input with zero rows: padding at the end and a gap in the middle (the
    Masking(0) convention)."""
    x = rng.normal(size=(B, T, F)).astype("float32")
    x[0, 10:] = 0.0
    x[1, 4:7] = 0.0
    x[2, :2] = 0.0
    return x


def check_dask(m, x, chunks):
    eager = m(x)
    lazy = m(da.from_array(x, chunks=chunks))
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), eager)
    return eager


@pytest.mark.parametrize("widths", [(16, 8), (16, 16)])
def test_keras_masking_stacked_gru_time_distributed_dense(rng, widths):
    km = keras.Sequential([keras.Input((None, 3)), keras.layers.Masking(0.0),
                           keras.layers.GRU(widths[0], return_sequences=True, seed=1),
                           keras.layers.GRU(widths[1], return_sequences=True, seed=2),
                           keras.layers.TimeDistributed(keras.layers.Dense(1))])
    x = padded_with_gaps(rng)
    m = dg.Model.from_keras(km)
    assert m.mask_value == 0.0 and m.output_size == 1 and m.batch_first
    # use_bias, its biases still zero as Keras initialises them (one width: GRUParams)
    assert widths[0] != widths[1] or m.rnn.bias
    np.testing.assert_allclose(m(x), np.asarray(km(x)), **F32)
    check_dask(m, x, (2, 5, 3))


def test_keras_functional_normalization_bidirectional_dense_relu(rng):
    x = rng.normal(loc=3.0, scale=2.0, size=(4, 12, 3)).astype("float32")
    norm = keras.layers.Normalization()
    norm.adapt(x.reshape(-1, 3))
    inp = keras.Input((None, 3))
    h = keras.layers.Bidirectional(keras.layers.GRU(6, return_sequences=True, seed=3))(norm(inp))
    h = keras.layers.Dense(5, activation="relu")(h)
    out = keras.layers.Dense(2)(h)
    km = keras.Model(inp, out)
    m = dg.Model.from_keras(km)
    assert isinstance(m.pre[0], L.Scale) and [type(p) for p in m.post] == [L.Dense, L.Dense]
    np.testing.assert_allclose(m(x), np.asarray(km(x)), **F32)
    check_dask(m, x, (3, 4, 3))


@pytest.mark.parametrize("merge", ["sum", "mul", "ave"])
def test_keras_bidirectional_merge_modes_sequence_to_one(rng, merge):
    x = padded_with_gaps(rng)
    km = keras.Sequential([
        keras.Input((None, 3)), keras.layers.Masking(0.0),
        keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True, seed=4),
                                   merge_mode=merge),
        keras.layers.GRU(4, seed=5),                      # return_sequences=False
        keras.layers.Dense(3, activation="gelu"), keras.layers.Activation("softplus")])
    m = dg.Model.from_keras(km)
    assert not m.return_sequences
    y = check_dask(m, x, (1, 14, 3))
    assert y.shape == (3, 3)
    np.testing.assert_allclose(y, np.asarray(km(x)), **F32)


def test_keras_layer_norm_elu_silu_and_a_gru_lstm_stack(rng):
    x = rng.normal(size=(2, 9, 4)).astype("float32")
    km = keras.Sequential([keras.Input((None, 4)), keras.layers.Dense(6, activation="elu"),
                           keras.layers.LayerNormalization(),
                           keras.layers.GRU(7, return_sequences=True, reset_after=False, seed=6),
                           keras.layers.Dropout(0.5),
                           keras.layers.LSTM(3, return_sequences=True, seed=7),
                           keras.layers.Dense(2, activation="silu")])
    m = dg.Model.from_keras(km)
    assert [lay.cell.name for lay in m.rnn.layers] == ["gru", "lstm"]
    np.testing.assert_allclose(m(x), np.asarray(km(x)), **F32)


@pytest.mark.parametrize("make,match", [
    (lambda: keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4, go_backwards=True)]),
     "go_backwards"),
    (lambda: keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4, activation="relu")]),
     "activation must be 'tanh', got 'relu'"),
    (lambda: keras.Sequential([keras.Input((None, 3)),
                               keras.layers.LSTM(4, recurrent_activation="hard_sigmoid")]),
     "recurrent_activation must be 'sigmoid'"),
    (lambda: keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4),
                               keras.layers.Dense(2, activation="softmax")]),
     "layer 'dense.*activation 'softmax'"),
    (lambda: keras.Sequential([keras.Input((None, 3)), keras.layers.Conv1D(4, 2),
                               keras.layers.GRU(4)]), r"'conv1d.*\(Conv1D\) is not supported"),
    (lambda: keras.Sequential([keras.Input((None, 3)),
                               keras.layers.Bidirectional(keras.layers.GRU(4), merge_mode=None)]),
     "merge_mode=None"),
])
def test_keras_refusals_name_the_part(make, match):
    with pytest.raises(ValueError, match=match):
        dg.Model.from_keras(make())


def test_keras_branches_are_refused_never_stacked(rng):
    a, b = keras.Input((None, 3)), keras.Input((None, 2))
    ga = keras.layers.GRU(4, return_sequences=True, name="ga")(a)
    gb = keras.layers.GRU(4, return_sequences=True, name="gb")(b)
    km = keras.Model([a, b], keras.layers.Concatenate()([ga, gb]))
    for f in (dg.Model.from_keras, dg.GRUParams.from_keras):
        with pytest.raises(ValueError, match="inputs"):
            f(km)
    inp = keras.Input((None, 3))
    g1 = keras.layers.GRU(4, return_sequences=True, name="g1")(inp)
    g2 = keras.layers.GRU(4, return_sequences=True, name="g2")(inp)
    km = keras.Model(inp, keras.layers.Add()([g1, g2]))
    with pytest.raises(ValueError, match="not a chain.*'g2'"):
        dg.GRUParams.from_keras(km)


def test_gru_params_from_a_whole_keras_model_refuses_layer_options():
    km = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4, return_sequences=True),
                           keras.layers.GRU(4, go_backwards=True)])
    with pytest.raises(ValueError, match="go_backwards"):
        dg.GRUParams.from_keras(km)


# ----------------------------------------------------------------------------- torch
class Net(torch.nn.Module):
    def __init__(self, cell="GRU", bidirectional=False):
        super().__init__()
        torch.manual_seed(0)
        self.pre = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(),
                                       torch.nn.LayerNorm(5))
        self.rnn = getattr(torch.nn, cell)(5, 8, num_layers=2, batch_first=True,
                                           bidirectional=bidirectional)
        self.head = torch.nn.Sequential(torch.nn.Linear(8 * (1 + bidirectional), 4),
                                        torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                        torch.nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.rnn(self.pre(x))[0])


@pytest.mark.parametrize("cell,bi", [("GRU", False), ("LSTM", True)])
def test_torch_net_with_pre_and_head(rng, cell, bi):
    net = Net(cell, bi).eval()
    x = rng.normal(size=(3, 10, 3)).astype("float32")
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    m = dg.Model.from_torch(net.rnn, pre=net.pre, head=net.head)
    assert m.batch_first
    np.testing.assert_allclose(m(x), want, **F32)
    check_dask(m, x, (2, 3, 3))
    # the RNN from the whole net's state_dict (prefix found), heads given as modules
    m2 = dg.Model.from_torch(net.state_dict(), pre=net.pre, head=net.head, prefix="rnn.",
                             batch_first=True)
    np.testing.assert_array_equal(m2(x), m(x))


def test_torch_weight_norm_half_precision_and_missing_keys(rng):
    torch.manual_seed(1)
    g = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True)
    torch.nn.utils.parametrizations.weight_norm(g, "weight_hh_l1")
    x = rng.normal(size=(6, 2, 3)).astype("float32")
    with torch.no_grad():
        want = g(torch.from_numpy(x))[0].numpy()
    p = dg.GRUParams.from_torch(g)
    np.testing.assert_allclose(dg.gru(x, p)[0], want, **F32)
    with pytest.raises(ValueError, match="parametrized weights.*pass the module"):
        dg.GRUParams.from_torch(g.state_dict())
    sd = {k: v for k, v in torch.nn.GRU(3, 4, num_layers=2, bidirectional=True).state_dict().items()}
    for key in ("weight_ih_l1", "weight_ih_l0_reverse", "bias_hh_l1_reverse"):
        broken = {k: v for k, v in sd.items() if k != key}
        with pytest.raises(ValueError, match=f"lacks \\['{key}'\\]"):
            dg.GRUParams.from_torch(broken)
    half = torch.nn.LSTM(3, 4).half()
    q = dg.LSTMParams.from_torch(half)
    assert q.dtype == np.float32
    bf = torch.nn.GRU(3, 4).to(torch.bfloat16)
    assert dg.GRUParams.from_torch(bf).dtype == np.float32


def test_torch_refusals():
    with pytest.raises(ValueError, match="Conv1d is not supported"):
        dg.Model.from_torch(torch.nn.GRU(3, 4), head=torch.nn.Conv1d(4, 2, 1))
    with pytest.raises(ValueError, match="Softplus.beta=2"):
        dg.Model.from_torch(torch.nn.GRU(3, 4), head=torch.nn.Softplus(beta=2))


# ----------------------------------------------------------------------------- files
@pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3")
@pytest.mark.filterwarnings("ignore:Consolidated metadata")
@pytest.mark.parametrize("ext", ["nc", "zarr"])
def test_models_save_and_load(tmp_path, rng, ext):
    pytest.importorskip("h5netcdf")
    pytest.importorskip("zarr")
    km = keras.Sequential([keras.Input((None, 3)), keras.layers.Masking(0.0),
                           keras.layers.Dense(4, activation="tanh"),
                           keras.layers.Bidirectional(keras.layers.GRU(5, seed=8),
                                                      merge_mode="ave"),
                           keras.layers.Dense(2)])
    m = dg.Model.from_keras(km)
    m.save(tmp_path / f"m.{ext}")
    back = dg.load_model(tmp_path / f"m.{ext}")
    assert back == m
    x = padded_with_gaps(rng)
    np.testing.assert_array_equal(back(x), m(x))
    # a params file reads as a model of the recurrent layers alone
    p = dg.GRUParams.random(3, 4, seed=0)
    p.save(tmp_path / f"p.{ext}")
    assert dg.load_model(tmp_path / f"p.{ext}").rnn == p


# ----------------------------------------------------------------------------- front ends
def test_apply_rnn_with_a_model_statics_skipna_and_sequence_to_one(rng):
    import xarray as xr

    T = 40
    ds = xr.Dataset({"rain": (("time", "site"), rng.gamma(1.0, 1.0, size=(T, 4))),
                     "temp": (("time", "site"), rng.normal(size=(T, 4))),
                     "elev": ("site", np.array([100.0, 300.0, 200.0, 50.0]))},
                    coords={"site": ["a", "b", "c", "d"]}, attrs={"source": "test"})
    ds["rain"][5:8, 1] = np.nan
    torch.manual_seed(0)
    gru, head = torch.nn.GRU(3, 6), torch.nn.Linear(6, 2)
    m = dg.Model.from_torch(gru, head=head, inputs=["rain", "temp", "elev"],
                            targets=["q", "et"])
    out = dg.apply_rnn(ds.astype("float32"), m, skipna=True)
    assert out.prediction.dims == ("time", "site", "target")
    assert list(out.prediction.target.values) == ["q", "et"] and out.attrs["source"] == "test"
    assert out.prediction.isel(site=1, time=slice(5, 8)).isnull().all()
    assert out.prediction.isel(site=1, time=slice(8, None)).notnull().all()
    # statics broadcast along time, features in the model's order
    x = np.stack([ds.rain.fillna(0).values, ds.temp.values,
                  np.broadcast_to(ds.elev.values, (T, 4))], axis=-1).astype("float32")
    mask = ~np.isnan(ds.rain.values)
    want = m(x, batch_first=False, mask=mask)
    got = out.prediction.values
    np.testing.assert_array_equal(got[mask], want[mask])
    # sequence to one: (site, target)
    last = dg.apply_rnn(ds.astype("float32").chunk(time=15), m._replace(return_sequences=False),
                        skipna=True)
    assert last.prediction.dims == ("site", "target")
    np.testing.assert_allclose(last.prediction.values, want[-1], rtol=1e-6)
    # continuation of a model whose stack is one GRU: bit for bit
    a = dg.apply_rnn(ds.isel(time=slice(0, 17)).astype("float32"), m, window=None)
    b = dg.apply_rnn(ds.isel(time=slice(17, None)).astype("float32"), m, h0=a.final_state)
    whole = dg.apply_rnn(ds.astype("float32"), m)
    np.testing.assert_array_equal(whole.prediction.values[17:], b.prediction.values)


@pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3")
@pytest.mark.filterwarnings("ignore:Consolidated metadata")
@pytest.mark.parametrize("window", [None, 7])
def test_command_runs_a_model_resumably(tmp_path, rng, window):
    import xarray as xr

    pytest.importorskip("zarr")
    pytest.importorskip("h5netcdf")
    from daskgru.cli import main

    torch.manual_seed(0)
    m = dg.Model.from_torch(torch.nn.LSTM(2, 5), head=torch.nn.Sequential(
        torch.nn.Linear(5, 3), torch.nn.Softplus()), window=window)
    m.save(tmp_path / "m.nc")
    field = xr.DataArray(rng.normal(size=(60, 3, 2)).astype("float32"),
                         dims=("time", "site", "feature"), name="x")
    field.to_dataset().to_netcdf(tmp_path / "in.nc")
    assert main(["run", str(tmp_path / "in.nc"), "--params", str(tmp_path / "m.nc"), "-o",
                 str(tmp_path / "o.zarr"), "--chunks", "time=20", "--no-progress"]) == 0
    got = xr.open_zarr(tmp_path / "o.zarr")
    ref = dg.apply_rnn(field, m)
    np.testing.assert_array_equal(got.prediction.values, ref.prediction.values)
    assert got.attrs["daskgru_units"] == 3
    if window:
        assert np.isnan(got.prediction.values[:window - 1]).all()
    else:
        np.testing.assert_array_equal(got.final_cell.values, ref.final_cell.values)


def test_regressor_model_runs_everywhere(rng, tmp_path):
    X = rng.normal(size=(32, 20, 2))
    y = X[:, :, 0] * 0.5
    reg = dg.GRURegressor(hidden_size=4, max_epochs=2, random_state=0, dtype="float64").fit(X, y)
    m = reg.model_
    assert isinstance(m, dg.Model) and m.batch_first
    np.testing.assert_array_equal(m(X)[..., 0], reg.predict(X))
    m.save(tmp_path / "reg.nc")
    np.testing.assert_array_equal(dg.load_model(tmp_path / "reg.nc")(X), m(X))


def test_torch_net_as_its_users_save_it(tmp_path, rng):
    """A Net with nn.GRU + nn.Linear saved as a state_dict: the GRU comes out of the net or
    its state_dict (the prefix found); the command refuses to drop the head unless asked,
    and TorchScript / torch.export files get what to do instead."""
    from daskgru.cli import main

    class GRUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(3, 16, batch_first=True)
            self.head = torch.nn.Linear(16, 2)

        def forward(self, x):
            return self.head(self.gru(x)[0])

    torch.manual_seed(0)
    net = GRUNet().eval()
    p = dg.GRUParams.from_torch(net)
    assert p == dg.GRUParams.from_torch(net.state_dict()) == dg.GRUParams.from_torch(net.gru)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    assert main(["convert", str(tmp_path / "net.pt"), "-o", str(tmp_path / "p.nc")]) == 1
    x = rng.normal(size=(2, 7, 3)).astype("float32")
    m = dg.Model.from_torch(torch.load(tmp_path / "net.pt"), head=net.head, batch_first=True)
    with torch.no_grad():
        np.testing.assert_allclose(m(x), net(torch.from_numpy(x)).numpy(), **F32)
    torch.jit.save(torch.jit.script(net), tmp_path / "scripted.pt")
    assert main(["convert", str(tmp_path / "scripted.pt"), "-o", str(tmp_path / "q.nc")]) == 1
    ep = torch.export.export(net, (torch.from_numpy(x),))
    torch.export.save(ep, tmp_path / "exported.pt2")
    assert main(["convert", str(tmp_path / "exported.pt2"), "-o", str(tmp_path / "q.nc")]) == 1
    assert not (tmp_path / "q.nc").exists()


# ----------------------------------------------------------------------------- edges found in review
def test_model_dtype_follows_the_input_and_read_only_inputs(rng):
    torch.manual_seed(0)
    m = dg.Model.from_torch(torch.nn.GRU(2, 4), pre=torch.nn.Linear(2, 2),
                            head=torch.nn.Linear(4, 1))
    x = rng.normal(size=(6, 3, 2))                       # float64 data, float32 weights
    y = m(x)
    assert y.dtype == np.float64
    assert m(da.from_array(x, chunks=(2, 3, 2))).compute().dtype == np.float64
    x.setflags(write=False)                              # e.g. np.load(mmap_mode="r")
    np.testing.assert_array_equal(m(x), y)
    np.testing.assert_array_equal(m.windowed(x, 1)[1:], m.windowed(x.copy(), 1)[1:])
    assert np.isfinite(m.windowed(x, 1)).all()           # window 1: every step has its window


def test_model_input_names_order_the_features(rng):
    import xarray as xr

    torch.manual_seed(0)
    m = dg.Model.from_torch(torch.nn.GRU(3, 4), head=torch.nn.Linear(4, 1),
                            inputs=["a", "b", "c"])
    ds = xr.Dataset({k: (("time", "site"), rng.normal(size=(10, 2))) for k in "abcq"})
    want = dg.apply_rnn(ds, m).prediction
    np.testing.assert_array_equal(dg.apply_rnn(ds, m, features=["c", "a", "b"]).prediction,
                                  want)
    with pytest.raises(ValueError, match=r"features \['a', 'b', 'q'\] are not the model's inputs"):
        dg.apply_rnn(ds, m, features=["a", "b", "q"])
    arr = ds[["c", "b", "a"]].to_dataarray("feature").transpose("time", "site", "feature")
    np.testing.assert_array_equal(dg.apply_rnn(arr, m).prediction, want)


def test_torch_state_dicts_never_lose_their_other_parts(rng):
    net = Net("LSTM")
    sd = net.state_dict()
    with pytest.raises(ValueError, match=r"rnn holds \[.*'pre.0.weight'.*'head.0.weight'.*\] "
                                         "besides the RNN"):
        dg.Model.from_torch(sd, prefix="rnn.")
    with pytest.raises(ValueError, match=r"'pre.0.weight'"):
        dg.Model.from_torch(sd, prefix="rnn.", head=net.head)
    m = dg.Model.from_torch(sd, prefix="rnn.", pre=net.pre, head=net.head, batch_first=True)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    with torch.no_grad():
        np.testing.assert_allclose(m(x), net.eval()(torch.from_numpy(x)).numpy(), **F32)
    assert dg.Model.from_torch(sd, prefix="rnn.", rnn_only=True, batch_first=True).post == []


def test_torch_state_dict_needs_batch_first_a_module_gives_it(rng):
    """A state_dict does not record whether the RNN took batch-first inputs: guessing
    torch's default would silently transpose a batch-first model's inputs, so it is asked
    for; a module holding the RNN gives it."""
    net = Net("GRU")
    assert net.rnn.batch_first
    with pytest.raises(ValueError, match="does not record batch_first"):
        dg.Model.from_torch(net.state_dict(), prefix="rnn.", pre=net.pre, head=net.head)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x)).numpy()
    m = dg.Model.from_torch(net, prefix="rnn.", pre=net.pre, head=net.head)
    assert m.batch_first
    np.testing.assert_allclose(m(x), want, **F32)
    m = dg.Model.from_torch(net.state_dict(), prefix="rnn.", pre=net.pre, head=net.head,
                            batch_first=True)
    np.testing.assert_allclose(m(x), want, **F32)
    # a cell has no layout of its own: time-major, as torch's default
    assert not dg.Model.from_torch(torch.nn.GRUCell(3, 4)).batch_first


def test_keras_bias_flag_follows_use_bias_of_either_direction():
    fwd = keras.layers.GRU(4, return_sequences=True, use_bias=True)
    bwd = keras.layers.GRU(4, return_sequences=True, use_bias=False, go_backwards=True)
    km = keras.Sequential([keras.Input((None, 3)),
                           keras.layers.Bidirectional(fwd, backward_layer=bwd)])
    assert dg.Model.from_keras(km).rnn.bias
    km = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4, use_bias=False)])
    assert not dg.Model.from_keras(km).rnn.bias


def test_clear_errors_for_bad_model_input(rng):
    km = keras.Sequential([keras.Input((None, 3)), keras.layers.Masking(0.0),
                           keras.layers.GRU(4, return_sequences=True), keras.layers.Dense(1)])
    m = dg.Model.from_keras(km)
    x = rng.normal(size=(3, 9, 3)).astype("float32")
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 9\) \(B, T\)"):
        m(x, mask=np.ones((3, 5), bool))
    with pytest.raises(TypeError, match="x must be an array, got list"):
        m(x.tolist())
    with pytest.raises(ValueError, match="x holds no sequences"):
        m(x[:0])
    q = dg.LSTMParams.random(3, 4, seed=0)
    with pytest.raises(ValueError, match="hx must give both h0 and c0"):
        dg.lstm(x, q, (np.zeros((1, 3, 4), "float32"), None), batch_first=True)


def test_keras_batch_norm_rescaling_and_a_saved_file(rng, tmp_path):
    x = rng.normal(size=(2, 8, 3)).astype("float32")
    bn = keras.layers.BatchNormalization()
    km = keras.Sequential([keras.Input((None, 3)), keras.layers.Rescaling(0.5, offset=1.0), bn,
                           keras.layers.LSTM(4, return_sequences=True, seed=3),
                           keras.layers.Dense(2)])
    km(x)
    bn.moving_mean.assign(np.array([0.1, -0.2, 0.3], "float32"))
    bn.moving_variance.assign(np.array([2.0, 0.5, 1.5], "float32"))
    km.save(tmp_path / "k.keras")
    m = dg.Model.from_keras(tmp_path / "k.keras")
    np.testing.assert_allclose(m(x), np.asarray(km(x)), **F32)


def test_torch_packed_sequences_through_a_head(rng):
    """Padding as torch users have it: lengths (pack_padded_sequence), the head on the padded
    output (zeros past each length)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(2)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    head = torch.nn.Sequential(torch.nn.Linear(10, 4), torch.nn.GELU(), torch.nn.Linear(4, 1))
    x = rng.normal(size=(9, 4, 3)).astype("float32")
    lengths = np.array([9, 2, 6, 1])
    with torch.no_grad():
        packed = pack_padded_sequence(torch.from_numpy(x), torch.as_tensor(lengths),
                                      enforce_sorted=False)
        out, _ = pad_packed_sequence(lstm(packed)[0], total_length=9)
        want = head(out).numpy()
    m = dg.Model.from_torch(lstm, head=head)
    np.testing.assert_allclose(m(x, lengths=lengths), want, **F32)
    np.testing.assert_array_equal(m(da.from_array(x, chunks=(4, 2, 3)), lengths=lengths)
                                  .compute(), m(x, lengths=lengths))
