"""dask.distributed for real: worker processes, pickling, a worker lost mid-run."""
import os
import pickle
import time

import dask.array as da
import numpy as np
import pytest

import daskgru as dg

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, worker_dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


def test_process_cluster_bit_identical(client):
    rng = np.random.default_rng(0)
    p = dg.GRUParams.random(3, 8, num_layers=2, bidirectional=True, seed=0)
    x = rng.normal(size=(120, 6, 3)).astype("float32")
    lengths = rng.integers(0, 121, size=6)
    out, h_n = dg.gru(x, p, lengths=lengths)
    lo, lh = dg.gru(da.from_array(x, chunks=(17, 3, 3)), p, lengths=lengths)
    lo, lh = client.compute([lo, lh], sync=True)
    np.testing.assert_array_equal(lo, out)
    np.testing.assert_array_equal(lh, h_n)
    # apply_gru through the cluster too
    xr = pytest.importorskip("xarray")
    arr = xr.DataArray(x, dims=("time", "site", "feature")).chunk(time=30)
    ds = dg.apply_gru(arr, p).compute()
    np.testing.assert_array_equal(ds.output.values.reshape(120, 6, 16), dg.gru(x, p)[0])


def test_single_chain_on_a_cluster_is_fused_and_direct(client):
    # with a distributed client as default scheduler a single chain's projections run
    # inside its scan tasks (projected inputs never travel), and each scan task takes its
    # predecessor's result directly; same bits as eager
    p = dg.GRUParams.random(3, 8, num_layers=2, seed=1)
    x = np.random.default_rng(1).normal(size=(90, 1, 3)).astype("float32")
    out, h_n = dg.gru(x, p)
    lo, lh = dg.gru(da.from_array(x, chunks=(20, 1, 3)), p)
    names = {str(k[0] if isinstance(k, tuple) else k).rsplit("-", 1)[0] for k in dict(lo.dask)}
    assert "gru-scan-l0" in names and not {"gru-inproj-l0", "gru-state-l0"} & names
    lo, lh = client.compute([lo, lh], sync=True)
    np.testing.assert_array_equal(lo, out)
    np.testing.assert_array_equal(lh, h_n)


def test_speculative_on_a_cluster_groups_the_fix_chain(client):
    # with 2 single-thread workers one fix task verifies 4 chunks; the result is the scan's
    p = dg.GRUParams.random(3, 8, seed=2)
    x = np.random.default_rng(2).normal(size=(400, 1, 3)).astype("float32")
    out, h_n = dg.gru(x, p)
    lo, lh = dg.gru(da.from_array(x, chunks=(25, 1, 3)), p, method="speculative", warmup=20)
    assert sum(1 for k in dict(lo.dask) if "gru-fix" in str(k)) == 16 // 4
    lo, lh = client.compute([lo, lh], sync=True)
    np.testing.assert_array_equal(lo, out)
    np.testing.assert_array_equal(lh, h_n)


def test_slots_of_a_client_from_its_cached_identity_or_asked(client):
    # the task slots "auto" plans for are the workers' threads, read from the client's kept
    # copy of the scheduler's identity (no round trip in each build) or, where that copy
    # has no total, asked of the scheduler: the same number either way
    from daskgru.graph import options

    def asked():
        raise AssertionError("asked the scheduler")

    client.nthreads = asked  # the kept identity answers; no round trip
    try:
        assert options.scheduler_in_use() == ("distributed", 2)
    finally:
        del client.nthreads
    kept = client._scheduler_identity
    try:
        client._scheduler_identity = {}
        assert options.scheduler_in_use() == ("distributed", 2)
    finally:
        client._scheduler_identity = kept


def test_threads_of_a_client_counts_threads_not_workers():
    # the kept identity's thread total is used as is (not the worker count), without a
    # round trip; without it the scheduler is asked once and the threads of every worker
    # are summed; an asynchronous client is never asked
    from daskgru.graph.options import _threads_of

    class Stub:
        asynchronous = False

        def __init__(self, kept, answer=None):
            self._scheduler_identity, self.answer, self.asked = kept, answer, 0

        def nthreads(self):
            self.asked += 1
            if self.answer is None:
                raise AssertionError("asked the scheduler")
            return self.answer

    assert _threads_of(Stub({"total_threads": 3, "n_workers": 2})) == 3
    for kept in ({}, {"total_threads": 0}, None):
        c = Stub(kept, {"tcp://a": 2, "tcp://b": 3})
        assert _threads_of(c) == 5 and c.asked == 1
    c = Stub({}, {"tcp://a": 2})
    c.asynchronous = True
    assert _threads_of(c) == 1 and c.asked == 0


def test_graph_carries_one_copy_of_the_weights():
    p = dg.GRUParams.random(16, 128, num_layers=2, seed=0)  # ~0.6 MB of weights
    nbytes = sum(a.nbytes for layer in p.weights for w in layer for a in w)
    x = da.zeros((4000, 4, 16), chunks=(100, 2, 16), dtype="float32")
    out, h_n = dg.gru(x, p)
    graph = dict(out.__dask_graph__())
    ntasks = len(graph)
    assert sum(1 for k in graph if "gru-scan" in str(k)) == 2 * 2 * 40
    assert ntasks > 400  # many tasks, yet the weights are in the graph once
    size = len(pickle.dumps(graph, protocol=5))
    assert size < 1.5 * nbytes + 2000 * ntasks, (size, nbytes, ntasks)


def _outputs_in_memory(dask_scheduler):
    """Workers holding finished output chunks (runs on the scheduler)."""
    return [next(iter(ts.who_has)).address for ts in dask_scheduler.tasks.values()
            if str(ts.key).startswith("('gru-output") and ts.state == "memory" and ts.who_has]


async def _die():
    os._exit(1)


@pytest.mark.slow
def test_worker_killed_mid_run_gives_identical_bits():
    rng = np.random.default_rng(1)
    p = dg.GRUParams.random(8, 48, seed=1)
    x = rng.normal(size=(24000, 8, 8)).astype("float32")
    expected, exp_h = dg.gru(x, p)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, worker_dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        lo, lh = dg.gru(da.from_array(x, chunks=(500, 4, 8)), p)
        futures = client.compute([lo, lh])
        # wait until some output chunks exist, then kill a worker holding some: they and
        # the chain of boundary states behind them must be recomputed
        victim, deadline = None, time.time() + 120
        while victim is None and time.time() < deadline:
            done = client.run_on_scheduler(_outputs_in_memory)
            if len(done) >= 6:
                victim = done[-1]
            time.sleep(0.02)
        assert victim is not None, "no output chunk finished in time"
        assert not all(f.done() for f in futures), "the run ended before the worker was killed"
        client.run(_die, workers=[victim], wait=False)
        out, h_n = client.gather(futures)
        assert victim not in client.scheduler_info()["workers"]  # it really died
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(h_n, exp_h)
