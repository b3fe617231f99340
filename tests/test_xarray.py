"""apply_gru: labelled in, labelled out; lazy stays lazy; errors name what is wrong."""
import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import daskgru as dg


@pytest.fixture
def field():
    rng = np.random.default_rng(0)
    T, Y, X, F = 30, 3, 4, 2
    return xr.DataArray(
        rng.normal(size=(Y, T, X, F)),  # time not first: apply_gru must reorder
        dims=("lat", "time", "lon", "feature"),
        coords={"lat": [-10.0, 0.0, 10.0], "lon": [0, 90, 180, 270],
                "time": pd.date_range("2000-01-01", periods=T, freq="D"),
                "feature": ["t2m", "precip"], "elevation": (("lat", "lon"), rng.normal(size=(Y, X)))},
        attrs={"units": "K", "source": "synthetic"},
        name="obs",
    )


@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_gru_on_stacked_batch(field, bidirectional):
    p = dg.GRUParams.random(2, 5, num_layers=2, bidirectional=bidirectional, dtype="float64", seed=1)
    ds = dg.apply_gru(field, p)
    x = field.transpose("time", "lat", "lon", "feature").values.reshape(30, 12, 2)
    out, h_n = dg.gru(x, p)
    D = p.num_directions
    exp_dims = ("time", "lat", "lon") + (("direction",) if D == 2 else ()) + ("hidden",)
    assert ds.output.dims == exp_dims
    assert ds.final_state.dims == ("layer", "direction", "lat", "lon", "hidden")
    np.testing.assert_array_equal(ds.output.values.reshape(30, 12, D * 5), out)
    np.testing.assert_array_equal(
        ds.final_state.values.reshape(2 * D, 12, 5),
        h_n.reshape(2, D, 12, 5).reshape(2 * D, 12, 5))
    # coords and attrs kept, model in attrs, feature coords dropped
    assert (ds.time == field.time).all() and (ds.lat == field.lat).all()
    assert "elevation" in ds.coords and "feature" not in ds.coords
    assert ds.attrs["units"] == "K" and ds.attrs["gru_hidden_size"] == 5
    assert list(ds.final_state.direction.values) == ["forward", "backward"][:D]
    assert isinstance(ds.output.data, np.ndarray)


def raising_scheduler(dsk, keys, **kwargs):
    raise AssertionError("computed while building")


def test_lazy_in_lazy_out_bit_identical(field):
    p = dg.GRUParams.random(2, 6, num_layers=2, bidirectional=True, seed=2, dtype="float64")
    eager = dg.apply_gru(field, p)
    lazy_in = field.chunk(time=7, lat=1, lon=2)
    with dask.config.set(scheduler=raising_scheduler):
        lazy = dg.apply_gru(lazy_in, p)
    assert dask.is_dask_collection(lazy.output.data) and dask.is_dask_collection(lazy.final_state.data)
    computed = lazy.compute(scheduler="threads")
    xr.testing.assert_identical(computed, eager)


def test_dataset_features_and_state_chaining(field):
    ds_in = field.to_dataset(dim="feature")
    p = dg.GRUParams.random(2, 4, seed=3, dtype="float64")
    full = dg.apply_gru(ds_in, p, features=["t2m", "precip"])
    np.testing.assert_array_equal(full.output.values, dg.apply_gru(field, p).output.values)
    first = dg.apply_gru(ds_in.isel(time=slice(0, 12)), p, features=["t2m", "precip"])
    rest = dg.apply_gru(ds_in.isel(time=slice(12, None)).chunk(time=5), p,
                        features=["t2m", "precip"], h0=first.final_state)
    np.testing.assert_array_equal(rest.output.values, full.output.isel(time=slice(12, None)).values)
    # feature order matters: swapped features give another result
    swapped = dg.apply_gru(ds_in, p, features=["precip", "t2m"])
    assert not np.array_equal(swapped.output.values, full.output.values)


def test_lengths_over_batch_dims(field):
    p = dg.GRUParams.random(2, 3, seed=4, dtype="float64")
    lengths = xr.DataArray(np.arange(12).reshape(3, 4) * 2, dims=("lat", "lon"))
    ds = dg.apply_gru(field, p, lengths=lengths)
    x = field.transpose("time", "lat", "lon", "feature").values.reshape(30, 12, 2)
    out, _ = dg.gru(x, p, lengths=lengths.values.reshape(12))
    np.testing.assert_array_equal(ds.output.values.reshape(30, 12, 3), out)
    assert (ds.output.isel(lat=0, lon=0) == 0).all()  # length 0: zeros
    lazy = dg.apply_gru(field.chunk(time=4), p, lengths=lengths.transpose("lon", "lat"))
    np.testing.assert_array_equal(lazy.output.values, ds.output.values)


def test_univariate_series_without_batch_dims():
    series = xr.DataArray(np.sin(np.arange(40.0))[:, None], dims=("time", "feature"))
    ds = dg.apply_gru(series, dg.GRUParams.random(1, 3, seed=0, dtype="float64"))
    assert ds.output.dims == ("time", "hidden") and ds.final_state.dims == ("layer", "direction", "hidden")


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(time_dim="tiem"), ValueError, r"time_dim 'tiem' is not a dimension.*\('lat', 'time', 'lon', 'feature'\)"),
    (dict(feature_dim="var"), ValueError, r"feature_dim 'var' is not a dimension.*dims present"),
    (dict(hidden_dim="lat"), ValueError, "hidden_dim 'lat' clashes"),
    (dict(h0=np.zeros((1, 3, 5, 4))), ValueError, r"h0 must have shape \(1, 3, 4, 4\)"),
    (dict(h0=xr.DataArray(np.zeros((1, 3, 4)), dims=("layer", "lat", "hidden"))), ValueError, "h0 must have dims"),
    (dict(lengths=np.zeros(12, int)), ValueError, r"lengths must have shape \(3, 4\)"),
    (dict(lengths=xr.DataArray(np.zeros(3, int), dims="lat")), ValueError, "lengths must have dims"),
    (dict(lengths=np.full((3, 4), 31)), ValueError, r"lengths must lie in 0..30"),
    (dict(method="magic"), ValueError, "method must be one of"),
    (dict(batch_first=True), TypeError, r"unknown options \['batch_first'\].*time_dim="),
])
def test_bad_input_is_refused_before_work(field, kwargs, exc, match):
    p = dg.GRUParams.random(2, 4, seed=0)
    with dask.config.set(scheduler=raising_scheduler), pytest.raises(exc, match=match):
        dg.apply_gru(field.chunk(time=10), p, **kwargs)


def test_batch_dims_clashing_with_result_dims_are_refused(field):
    p = dg.GRUParams.random(2, 4, bidirectional=True)
    with dask.config.set(scheduler=raising_scheduler), \
            pytest.raises(ValueError, match=r"batch dims \['direction'\] clash"):
        dg.apply_gru(field.rename(lat="direction"), p)


def test_wrong_feature_size_and_dtype(field):
    with pytest.raises(ValueError, match=r"dim 'feature' has size 2, but p.input_size is 3"):
        dg.apply_gru(field, dg.GRUParams.random(3, 4))
    with pytest.raises(TypeError, match="floating point, got dtype int64"):
        dg.apply_gru(field.astype(int), dg.GRUParams.random(2, 4))
    with pytest.raises(ValueError, match=r"features \['snow'\] are not data variables"):
        dg.apply_gru(field.to_dataset(dim="feature"), dg.GRUParams.random(2, 4), features=["snow"])
    with pytest.raises(TypeError, match="DataArray or Dataset"):
        dg.apply_gru(field.values, dg.GRUParams.random(2, 4))
