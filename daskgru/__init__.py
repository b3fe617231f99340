"""daskgru: GRUs over long, wide time series with Numba kernels on Dask, returning xarray."""
from .params import GRUParams, GRUWeights, load_params
from .scan import gru

__all__ = ["GRUParams", "GRUWeights", "load_params", "gru"]
from .xarray import apply_gru

__all__ += ["apply_gru"]
from .train import GRURegressor, gru_backward
__all__ += ["gru_backward", "GRURegressor"]
