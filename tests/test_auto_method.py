"""method="auto": scan or speculative, chosen from a model of the call (never a timing),
recorded in return_info; either way the result is the scan's, bit for bit."""
import dask
import dask.array as da
import numpy as np
import pytest

import daskgru as dg
from daskgru.graph import options


def _x(T, B=1, I=8, seed=0):
    return np.random.default_rng(seed).standard_normal((T, B, I)).astype("float32")


def test_numpy_input_runs_the_eager_scan():
    p = dg.GRUParams.random(8, 16, seed=0)
    x = _x(300, 2)
    out, h, info = dg.gru(x, p, method="auto", return_info=True)
    ref = dg.gru(x, p)
    assert np.array_equal(out, ref[0]) and np.array_equal(h, ref[1])
    assert info["method"] == "scan" and info["auto"]["chose"] == "scan"
    assert "NumPy" in info["auto"]["reason"]


def test_one_long_chain_on_free_slots_goes_speculative_and_stays_exact():
    """B = 1, 200k steps in 10 chunks, 4 task slots: the chain is modelled ~3x slower than
    the speculative chunks, so auto takes them; the output is the scan's bit for bit."""
    p = dg.GRUParams.random(8, 32, seed=1)
    x = _x(200_000)
    xd = da.from_array(x, chunks=(20_000, 1, 8))
    with dask.config.set(scheduler="threads", num_workers=4):
        out, h, info = dg.gru(xd, p, method="auto", return_info=True)
        out, h, info = dask.compute(out, h, info)
    assert info["method"] == "speculative", info["auto"]
    auto = info["auto"]
    assert auto["chose"] == "speculative" and auto["slots"] == 4 and auto["time_chunks"] == 10
    assert auto["scan_chunks"] <= auto["speculative_chunks"] <= 10
    assert auto["speculative_s"] < options.MARGIN * auto["scan_s"]
    ref = dg.gru(x, p)
    assert np.array_equal(out, ref[0]) and np.array_equal(h, ref[1])


@pytest.mark.parametrize("case, reason", [
    (dict(T=100_000, chunks=(100_000, 1, 8)), "one time chunk"),
    (dict(T=100_000, B=4, chunks=(10_000, 1, 8)), "threads busy"),
    (dict(T=100_000, B=16, chunks=(10_000, 16, 8)), "rows split in 4"),
    (dict(T=2_000, chunks=(200, 1, 8)), "too short"),
    (dict(T=200_000, chunks=(20_000, 1, 8), warmup=100_000, workers=2), "not below"),
])
def test_scan_where_time_parallelism_cannot_pay(case, reason):
    p = dg.GRUParams.random(8, 32, seed=2)
    xd = da.from_array(_x(case["T"], case.get("B", 1)), chunks=case["chunks"])
    with dask.config.set(scheduler="threads", num_workers=case.get("workers", 4)):
        out, h, info = dg.gru(xd, p, method="auto", warmup=case.get("warmup"),
                              return_info=True)
        auto = info.compute()["auto"]
    assert auto["chose"] == "scan" and reason in auto["reason"], auto
    assert "-scan-" in " ".join(map(str, out.__dask_graph__().keys()))


def test_the_choice_is_a_function_of_the_call():
    """No timing: building the same call twice gives the same graph (the same keys)."""
    p = dg.GRUParams.random(8, 32, seed=3)
    xd = da.from_array(_x(200_000), chunks=(20_000, 1, 8))
    with dask.config.set(scheduler="threads", num_workers=4):
        a, _, info = dg.gru(xd, p, method="auto", return_info=True)
        b = dg.gru(xd, p, method="auto")[0]
    assert a.name == b.name
    assert info.compute()["auto"]["chose"] == "speculative"


def test_the_synchronous_scheduler_has_one_slot():
    """Nothing runs side by side on the synchronous scheduler: auto never speculates there."""
    p = dg.GRUParams.random(8, 32, seed=1)
    xd = da.from_array(_x(100_000), chunks=(10_000, 1, 8))
    with dask.config.set(scheduler="sync", num_workers=8):
        auto = dg.gru(xd, p, method="auto", return_info=True)[2].compute()["auto"]
    assert auto["chose"] == "scan" and auto["slots"] == 1


def test_lstm_and_xarray_take_auto():
    import xarray as xr

    q = dg.LSTMParams.random(8, 16, seed=4)
    x = _x(400, 2)
    arr = xr.DataArray(da.from_array(x, chunks=(100, 1, 8)), dims=("time", "site", "feature"))
    ds = dg.apply_rnn(arr, q, method="auto")
    ref = dg.apply_rnn(arr, q)
    xr.testing.assert_equal(ds.compute(), ref.compute())
    assert ds.attrs["lstm_method"] == "auto"  # what was asked for
    out, (h, c), info = dg.lstm(x, q, method="auto", return_info=True)
    assert info["auto"]["chose"] == "scan"
