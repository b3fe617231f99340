"""darts: an RNNModel's torch module through Model.from_torch reproduces
historical_forecasts(forecast_horizon=1, retrain=False) (the example of the models page)."""
import warnings

import numpy as np
import pytest
import xarray as xr

import daskgru as dg

darts = pytest.importorskip("darts")
pytest.importorskip("torch")


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_rnn_model_historical_forecasts(cell):
    from darts import TimeSeries
    from darts.models import RNNModel

    rng = np.random.default_rng(0)
    n = 240
    cov = np.sin(np.arange(n) / 10) + 0.1 * rng.normal(size=n)
    y = np.zeros(n)
    for i in range(1, n):
        y[i] = 0.8 * y[i - 1] + 0.5 * cov[i] + 0.05 * rng.normal()
    target = TimeSeries.from_values(y.astype("float32"))
    covariates = TimeSeries.from_values(cov.astype("float32"))
    L = 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = RNNModel(model=cell, input_chunk_length=L, training_length=24, hidden_dim=6,
                         n_rnn_layers=2, n_epochs=2, random_state=0,
                         pl_trainer_kwargs={"enable_progress_bar": False, "logger": False,
                                            "enable_model_summary": False,
                                            "accelerator": "cpu"})
        model.fit(target, future_covariates=covariates, verbose=False)
        hf = model.historical_forecasts(target, future_covariates=covariates,
                                        forecast_horizon=1, retrain=False, start=100,
                                        verbose=False)
    # darts's rows: step j holds the target at j and the covariate at j + 1, and the output
    # there forecasts the target at j + 1; each forecast is a fresh run over L rows.
    m = dg.Model.from_torch(model.model.rnn, head=model.model.V, window=L)
    x = np.stack([y[:-1], cov[1:]], axis=-1).astype("float32")[None]   # (1, n - 1, 2)
    pred = dg.apply_rnn(xr.DataArray(x[0], dims=("time", "feature")), m).prediction.values[:, 0]
    got = pred[np.asarray(hf.time_index) - 1]
    np.testing.assert_allclose(got, hf.values()[:, 0], rtol=2e-6, atol=2e-6)


@pytest.mark.slow
def test_block_rnn_model_historical_forecasts():
    """BlockRNNModel (darts >= 0.38): the RNN over input_chunk_length steps of the past
    target, then its fully connected head on the last step: a sequence-to-one model."""
    from darts import TimeSeries
    from darts.models import BlockRNNModel

    rng = np.random.default_rng(1)
    y = np.cumsum(rng.normal(size=200)) * 0.1 + np.sin(np.arange(200) / 7)
    target = TimeSeries.from_values(y.astype("float32"))
    L = 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BlockRNNModel(model="LSTM", input_chunk_length=L, output_chunk_length=1,
                              hidden_dim=5, hidden_fc_sizes=[4], n_epochs=2, random_state=0,
                              pl_trainer_kwargs={"enable_progress_bar": False, "logger": False,
                                                 "enable_model_summary": False,
                                                 "accelerator": "cpu"})
        model.fit(target, verbose=False)
        hf = model.historical_forecasts(target, forecast_horizon=1, retrain=False, start=50,
                                        verbose=False)
    m = dg.Model.from_torch(model.model.rnn, head=model.model.fc, return_sequences=False,
                            window=L)
    x = xr.DataArray(y[:-1, None].astype("float32"), dims=("time", "feature"))
    pred = dg.apply_rnn(x, m).prediction.values[:, 0]   # pred[j]: rows j-L+1..j -> y[j+1]
    got = pred[np.asarray(hf.time_index) - 1]
    np.testing.assert_allclose(got, hf.values()[:, 0], rtol=2e-6, atol=2e-6)
