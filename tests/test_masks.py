"""Missing data: masks with holes (Keras's semantics, Keras as the oracle), masks with
lengths, with dask and parallel in time, their gradients, and ``skipna`` in xarray and the
command."""
import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import daskgru as dg
from daskgru import reference
from conftest import TOL


def holes(rng, T, B, p=0.35):
    """A mask with holes anywhere: runs of masked steps at the start, middle and end."""
    m = rng.random((T, B)) > p
    m[:3, 0] = False   # masked before the first valid step
    m[-2:, 1 % B] = False
    return m


def make(kind, I, H, **kw):
    return (dg.GRUParams if kind == "gru" else dg.LSTMParams).random(I, H, **kw)


def call(kind, x, p, h0=None, c0=None, **kw):
    if kind == "gru":
        return dg.gru(x, p, h0=h0, **kw)
    out, (h, c) = dg.lstm(x, p, None if h0 is None else (h0, c0), **kw)
    return out, h, c


# ----------------------------------------------------------------------------- Keras
keras = pytest.importorskip("keras")


def keras_layer(kind, H, reset_after=True, zero=False, seed=0):
    kw = dict(return_sequences=True, zero_output_for_mask=zero, seed=seed)
    if kind == "gru":
        return keras.layers.GRU(H, reset_after=reset_after, **kw)
    return keras.layers.LSTM(H, **kw)


@pytest.mark.parametrize("kind,reset_after", [("gru", True), ("gru", False), ("lstm", True)])
@pytest.mark.parametrize("zero", [False, True])
def test_mask_with_holes_matches_keras(rng, kind, reset_after, zero):
    B, T, I, H = 4, 12, 3, 5
    x = rng.normal(size=(B, T, I)).astype("float32")
    mask = holes(rng, T, B).T  # Keras: (B, T)
    h0 = rng.normal(scale=0.5, size=(B, H)).astype("float32")
    layer = keras_layer(kind, H, reset_after, zero)
    init = [h0] if kind == "gru" else [h0, 0.5 * h0]
    want = np.asarray(layer(x, mask=mask, initial_state=init))
    Params = dg.GRUParams if kind == "gru" else dg.LSTMParams
    p = Params.from_keras(layer)
    got = call(kind, x, p, h0[None], None if kind == "gru" else 0.5 * h0[None], mask=mask,
               batch_first=True, zero_output_for_mask=zero)[0]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_masking_layer_and_bidirectional_match_keras(rng, kind):
    """Keras's test_masking shape: Masking(0) in front, a Bidirectional layer (which sets
    zero_output_for_mask to return_sequences for both directions) and a second layer."""
    B, T, I, H = 3, 10, 2, 4
    x = rng.normal(size=(B, T, I)).astype("float32")
    x[0, :4] = 0.0
    x[1, 5:7] = 0.0
    x[2, -3:] = 0.0
    bi = keras.layers.Bidirectional(keras_layer(kind, H, seed=1))
    top = keras_layer(kind, H, seed=2)
    model = keras.Sequential([keras.Input((None, I)), keras.layers.Masking(0.0), bi, top])
    want = np.asarray(model(x))
    Params = dg.GRUParams if kind == "gru" else dg.LSTMParams
    mask = np.any(x != 0.0, axis=-1)
    assert bi.forward_layer.zero_output_for_mask and not top.zero_output_for_mask
    mid = call(kind, x, Params.from_keras(bi), mask=mask, batch_first=True,
               zero_output_for_mask=True)[0]
    got = call(kind, mid, Params.from_keras(top), mask=mask, batch_first=True)[0]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    # the same as one stack of the two layers with a flag per layer
    from daskgru.api import run, validate
    from daskgru.stack import Stack

    stack = Stack(Params.from_keras(bi).layers + Params.from_keras(top).layers)
    call_ = validate(x, stack, mask=mask, batch_first=True, zero_output_for_mask=[True, False])
    out, _, _ = run(x, call_, mask=mask)
    np.testing.assert_array_equal(out, got)


# ----------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("bi,L", [(False, 1), (True, 2)])
@pytest.mark.parametrize("zero", [False, True])
def test_mask_and_lengths_against_the_reference(rng, kind, bi, L, zero):
    T, B, I, H = 11, 5, 3, 4
    D = 1 + bi
    p = make(kind, I, H, num_layers=L, bidirectional=bi, dtype="float64", seed=3)
    x = rng.normal(size=(T, B, I))
    h0, c0 = rng.normal(size=(2, L * D, B, H))
    mask, lengths = holes(rng, T, B), np.array([11, 0, 6, 9, 1])
    want = reference.rnn(x, p, h0, c0, lengths=lengths, mask=mask, zero_output_for_mask=zero)
    got = call(kind, x, p, h0, c0, lengths=lengths, mask=mask, zero_output_for_mask=zero)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **TOL[np.dtype("float64")])


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_right_padding_mask_equals_lengths_bit_for_bit(rng, kind):
    T, B = 9, 6
    p = make(kind, 3, 5, num_layers=2, bidirectional=True, seed=4)
    x = rng.normal(size=(T, B, 3)).astype("float32")
    lengths = np.array([9, 0, 4, 1, 8, 9])
    mask = np.arange(T)[:, None] < lengths[None, :]
    a = call(kind, x, p, lengths=lengths)
    b = call(kind, x, p, mask=mask, zero_output_for_mask=True)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("chunks", [((4, 4, 3), (2, 3)), ((1,) * 11, (5,)), ((11,), (1,) * 5)])
def test_dask_mask_bit_identical_for_any_chunking(rng, kind, chunks):
    T, B, I = 11, 5, 2
    p = make(kind, I, 4, bidirectional=True, num_layers=2, seed=5)
    x = rng.normal(size=(T, B, I)).astype("float32")
    mask = holes(rng, T, B)
    ref = call(kind, x, p, mask=mask)
    xd = da.from_array(x, chunks=(*chunks, I))
    for m in (mask, da.from_array(mask, chunks=(3, 2))):
        lazy = call(kind, xd, p, mask=m)
        assert all(isinstance(a, da.Array) for a in lazy)
        assert all(np.array_equal(a, b) for a, b in zip(dask.compute(*lazy), ref))


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("method", ["speculative", "newton"])
def test_masks_in_parallel_time(rng, kind, method):
    T, B = 300, 3
    p = make(kind, 2, 4, bidirectional=True, seed=6, dtype="float64")
    x = rng.normal(size=(T, B, 2))
    mask = holes(rng, T, B, p=0.3)
    mask[100:220, 2] = False  # a long gap across chunk boundaries
    ref = call(kind, x, p, mask=mask)
    kw = dict(warmup=20) if method == "speculative" else {}
    got = call(kind, da.from_array(x, chunks=(50, 2, 2)), p, mask=mask, method=method, **kw)
    for g, r in zip(dask.compute(*got, scheduler="sync"), ref):
        assert np.abs(g - r).max() <= 1e-8


def test_bad_masks_are_refused(rng):
    p = dg.GRUParams.random(2, 3)
    x = np.zeros((5, 4, 2), "float32")
    with pytest.raises(ValueError, match=r"mask must have shape \(5, 4\) \(T, B\).*got \(4, 5\)"):
        dg.gru(x, p, mask=np.ones((4, 5), bool))
    with pytest.raises(ValueError, match=r"mask must have shape \(4, 5\) \(B, T\)"):
        dg.gru(x.transpose(1, 0, 2), p, mask=np.ones((5, 4), bool), batch_first=True)
    with pytest.raises(TypeError, match="mask must be boolean.*float64"):
        dg.gru(x, p, mask=np.ones((5, 4)))
    bad = np.ones((5, 4), int)
    bad[2, 1] = -1
    with pytest.raises(ValueError, match=r"mask of integers must hold 0.*and 1.*-1\.\.1"):
        dg.gru(x, p, mask=bad)
    ones = np.ones((5, 4), "uint8")
    ones[3, 0] = 0  # 0/1 integers are a mask like bools
    np.testing.assert_array_equal(dg.gru(x, p, mask=ones)[0], dg.gru(x, p, mask=ones > 0)[0])
    with pytest.raises(ValueError, match="zero_output_for_mask needs one flag per layer"):
        dg.gru(x, p, mask=np.ones((5, 4), bool), zero_output_for_mask=[True, False])


# ----------------------------------------------------------------------------- gradients
def _loss(kind, x, p, mask, d_out, lengths=None):
    return float(np.sum(call(kind, x, p, mask=mask, lengths=lengths)[0] * d_out))


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("zero", [False, True])
def test_masked_gradients_are_exact(rng, kind, zero):
    T, B, I, H = 9, 3, 2, 3
    p = make(kind, I, H, bidirectional=True, num_layers=2, dtype="float64", seed=7)
    x = rng.normal(size=(T, B, I))
    mask = holes(rng, T, B)
    d_out = rng.normal(size=(T, B, 2 * H))
    fn = dg.gru_backward if kind == "gru" else dg.lstm_backward
    grads, d_x, _ = fn(x, p, d_out, mask=mask, zero_output_for_mask=zero)
    assert np.all(d_x[~mask] == 0)

    def loss(xx, pp):
        out = call(kind, xx, pp, mask=mask, zero_output_for_mask=zero)[0]
        return float(np.sum(out * d_out))

    eps = 1e-6
    for i in [(0, 1, 0), (4, 2, 1), (8, 0, 1)]:
        e = np.zeros_like(x)
        e[i] = eps
        fd = (loss(x + e, p) - loss(x - e, p)) / (2 * eps)
        assert abs(fd - d_x[i]) <= 1e-6 * max(1, abs(fd))
    w = p.weights[1][1].w_hh
    for idx in [(0, 0), (2, 1)]:
        def shifted(s):
            arrs = [[list(ww) for ww in layer] for layer in p.weights]
            a = w.copy()
            a[idx] += s
            arrs[1][1][1] = a
            kw = dict(reset_after=p.reset_after) if kind == "gru" else {}
            return type(p)(arrs, bias=p.bias, dtype="float64", **kw)
        fd = (loss(x, shifted(eps)) - loss(x, shifted(-eps))) / (2 * eps)
        got = grads.weights[1][1].w_hh[idx]
        assert abs(fd - got) <= 1e-6 * max(1, abs(fd))
    # through a time-chunked dask graph: the same to rounding
    gl, dxl, _ = fn(da.from_array(x, chunks=(4, 2, I)), p, d_out, mask=mask,
                    zero_output_for_mask=zero)
    gl, dxl = dask.compute(gl, dxl, scheduler="sync")
    np.testing.assert_allclose(dxl, d_x, rtol=1e-12, atol=1e-14)
    for a, b in zip(gl.weights[0][0], grads.weights[0][0]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reset_after", [True, False])
def test_nan_at_masked_steps_never_reaches_a_result_or_gradient(rng, reset_after):
    p = dg.GRUParams.random(2, 3, num_layers=2, dtype="float64", seed=8,
                            reset_after=reset_after)
    x = rng.normal(size=(7, 2, 2))
    mask = holes(rng, 7, 2)
    x_nan = np.where(mask[..., None], x, np.nan)
    out, h = dg.gru(x_nan, p, mask=mask)
    ref = dg.gru(x, p, mask=mask)
    assert np.array_equal(out, ref[0]) and np.array_equal(h, ref[1])
    g, d_x, d_h0 = dg.gru_backward(x_nan, p, np.ones_like(out), mask=mask)
    g2, _, _ = dg.gru_backward(x, p, np.ones_like(out), mask=mask)
    assert all(np.isfinite(a).all() for layer in g.weights for w in layer for a in w)
    assert np.isfinite(d_x).all() and np.isfinite(d_h0).all()
    assert all(np.array_equal(a, b) for l1, l2 in zip(g.weights, g2.weights)
               for w1, w2 in zip(l1, l2) for a, b in zip(w1, w2))


# ----------------------------------------------------------------------------- skipna
@pytest.fixture
def gappy(rng):
    T = 60
    x = rng.normal(size=(T, 3, 4, 2))
    x[10:14, 0, 0, 1] = np.nan          # a gap in one feature
    x[:, 2, 3, :] = np.nan              # a land cell: missing throughout
    x[30, 1, :, 0] = np.nan             # one missing reading for a row of cells
    return xr.DataArray(x, dims=("time", "lat", "lon", "feature"),
                        coords={"time": np.arange(T), "lat": [1.0, 2.0, 3.0]},
                        attrs={"units": "K"})


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_skipna_is_nan_exactly_where_inputs_are_missing(gappy, kind):
    p = make(kind, 2, 5, num_layers=2, dtype="float64", seed=9)
    missing = np.isnan(gappy).any("feature")
    for obj in (gappy, gappy.chunk(time=17, lat=2)):
        ds = dg.apply_rnn(obj, p, skipna=True).compute()
        assert (ds.output.isnull().any("hidden") == missing).all()
        assert (ds.output.isnull().all("hidden") == missing).all()
        # exact states elsewhere: the masked call on zero-filled data
        x = gappy.fillna(0.0).values.reshape(60, 12, 2)
        ref = call(kind, x, p, mask=~missing.values.reshape(60, 12))
        out = ds.output.values.reshape(60, 12, 5)
        valid = ~missing.values.reshape(60, 12)
        assert np.array_equal(out[valid], ref[0][valid])
        assert np.array_equal(ds.final_state.values.reshape(2, 1, 12, 5)[:, 0], ref[1])
    # the land cell keeps its initial state and outputs NaN
    assert np.all(ds.final_state.values[:, :, 2, 3] == 0)
    # without skipna a NaN propagates to every later step of its cell
    plain = dg.apply_rnn(gappy, p)
    assert plain.output[14:, 0, 0].isnull().all() and plain.output[:10, 0, 0].notnull().all()


@pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3")
@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_command_run_skipna(gappy, tmp_path):
    pytest.importorskip("zarr")
    pytest.importorskip("h5netcdf")
    from daskgru.cli import main

    p = dg.GRUParams.random(2, 4, seed=10)
    p.save(tmp_path / "p.nc")
    gappy.astype("float32").rename("x").to_dataset().to_netcdf(tmp_path / "in.nc")
    assert main(["run", str(tmp_path / "in.nc"), "--params", str(tmp_path / "p.nc"), "-o",
                 str(tmp_path / "o.zarr"), "--chunks", "time=25", "--skipna",
                 "--no-progress"]) == 0
    got = xr.open_zarr(tmp_path / "o.zarr")
    ref = dg.apply_rnn(gappy.astype("float32"), p, skipna=True)
    np.testing.assert_array_equal(got.output.values, ref.output.values)
    np.testing.assert_array_equal(got.final_state.values, ref.final_state.values)


# ----------------------------------------------------------------------------- training
def _moving_average(rng, n, T=40, k=3):
    X = rng.normal(size=(n, T, 1))
    x = X[:, :, 0]
    y = sum(np.concatenate([np.zeros((n, j)), x[:, :T - j]], axis=1) for j in range(k)) / k
    return X, y


def test_regressor_trains_through_missing_targets_and_inputs(rng):
    X, y = _moving_average(rng, 160)
    Xt, yt = _moving_average(rng, 40)
    kw = dict(hidden_size=12, max_epochs=25, batch_size=16, random_state=0,
              learning_rate=0.02, dtype="float64")
    full = dg.GRURegressor(**kw).fit(X, y)
    gappy = np.where(rng.random(y.shape) < 0.3, np.nan, y)
    model = dg.GRURegressor(**kw).fit(X, gappy)
    yt_gappy = np.where(rng.random(yt.shape) < 0.3, np.nan, yt)
    r2_full, r2_gap = full.score(Xt, yt_gappy), model.score(Xt, yt_gappy)
    assert r2_gap > 0.9 and abs(r2_gap - r2_full) < 0.05
    assert np.all(np.isfinite(model.history_["loss"]))
    # missing inputs: refused without skipna, masked with it
    Xg = X.copy()
    Xg[rng.random(X.shape[:2]) < 0.1] = np.nan
    with pytest.raises(ValueError, match="skipna=True"):
        dg.GRURegressor(**kw).fit(Xg, y)
    m2 = dg.GRURegressor(**dict(kw, skipna=True)).fit(Xg, gappy)
    Xtg = Xt.copy()
    Xtg[:, 5:8] = np.nan
    pred = m2.predict(Xtg)
    assert np.isnan(pred[:, 5:8]).all() and np.isfinite(pred[:, 8:]).all()
    assert m2.score(Xtg, yt) > 0.8
    lazy = m2.predict(da.from_array(Xtg, chunks=(20, 10, 1)))
    np.testing.assert_allclose(lazy.compute(), pred, rtol=1e-12, equal_nan=True)
