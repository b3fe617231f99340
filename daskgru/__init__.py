"""daskgru: recurrent networks over long, wide time series with Numba kernels on Dask,
returning xarray."""
from .api import gru, lstm
from .params import GRUParams, GRUWeights, LSTMParams, LSTMWeights, load_params
from .stack import Stack
from .model import Model, load_model
from .xarray import apply_gru, apply_rnn
from .frame import apply_frame
from .train import GRURegressor, gru_backward, lstm_backward
from .kernels.jit import precompile

__all__ = ["GRUParams", "GRUWeights", "LSTMParams", "LSTMWeights", "Stack", "load_params",
           "Model", "load_model", "gru", "lstm", "apply_gru", "apply_rnn", "apply_frame",
           "gru_backward", "lstm_backward", "GRURegressor", "precompile"]
