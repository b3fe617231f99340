"""Computing through dask: time-chunk sizes (threads scheduler) and process workers."""
import dask
import dask.array as da

import daskgru as dg

from .common import TINY, problem, size


class DaskChunks:
    params = ([64, 512, 4096], ["threads", "sync"])
    param_names = ["time_chunk", "scheduler"]
    timeout = 300

    def setup(self, time_chunk, scheduler):
        T = size(16384, 16)
        self.p, x = problem(T, 32, 16, 64)
        self.x = da.from_array(x, chunks=(size(time_chunk, 4), 16, 16))
        dg.gru(x[:2], self.p)

    def time_compute_gru(self, time_chunk, scheduler):
        dask.compute(*dg.gru(self.x, self.p), scheduler=scheduler)

    def peakmem_compute_gru(self, time_chunk, scheduler):
        dask.compute(dg.gru(self.x, self.p)[0].mean(), scheduler=scheduler)


class DistributedWorkers:
    params = [1, 2]
    param_names = ["workers"]
    timeout = 300

    def setup(self, workers):
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=not TINY,
                                    dashboard_address=None)
        self.client = Client(self.cluster)
        T = size(8192, 16)
        p = dg.GRUParams.random(16, 64, seed=0)
        x = da.random.default_rng(0).standard_normal((T, 64, 16), chunks=(size(512, 4), 32, 16))
        self.h = dg.gru(x.astype("float32"), p)[1].sum()
        self.client.compute(self.h, sync=True)  # warm: JIT in every worker

    def teardown(self, workers):
        self.client.close()
        self.cluster.close()

    def time_compute_cluster(self, workers):
        self.client.compute(self.h, sync=True)


class Streaming:
    timeout = 600

    def setup(self):
        self.T = size(2_000_000, 64)
        dg.gru(problem(2, 4, 4, 16)[1], dg.GRUParams.random(4, 16, seed=0))

    def peakmem_streaming_mean(self):
        x = da.random.default_rng(0).standard_normal((self.T, 4, 4), chunks=(size(100_000, 16), 4, 4),
                                                     dtype="float32")
        out, _ = dg.gru(x, dg.GRUParams.random(4, 16, seed=0))
        out.mean().compute(scheduler="threads")
