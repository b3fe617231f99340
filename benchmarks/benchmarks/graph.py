"""Building the lazy graph (no compute): time per task must stay at dask's own overhead."""
import dask.array as da

import daskgru as dg

from .common import size


class GraphBuild:
    params = ([100, 1_000, 10_000], [1, 2])
    param_names = ["time_chunks", "num_layers"]

    def setup(self, time_chunks, num_layers):
        n = size(time_chunks, 3)
        self.x = da.zeros((10 * n, 8, 4), chunks=(10, 4, 4), dtype="float32")
        self.p = dg.GRUParams.random(4, 16, num_layers=num_layers, bidirectional=True, seed=0)

    def time_graph_gru(self, time_chunks, num_layers):
        out, h_n = dg.gru(self.x, self.p)
        out.__dask_graph__()

    def time_graph_apply_gru(self, time_chunks, num_layers):
        import xarray as xr

        arr = xr.DataArray(self.x, dims=("time", "site", "feature"))
        dg.apply_gru(arr, self.p)
