"""The lazy Dask path: bit-identical to the eager path for any chunking and scheduler."""
import dask
import dask.array as da
from dask.core import get_dependencies
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import daskgru as dg


def split(n, draw_sizes):
    """Chunk sizes summing to n from a list of positive draws."""
    sizes, left = [], n
    for s in draw_sizes:
        if left == 0:
            break
        s = min(s, left)
        sizes.append(s)
        left -= s
    if left:
        sizes.append(left)
    return tuple(sizes)


def make(T=23, B=5, I=3, H=4, L=2, bidirectional=True, reset_after=True, dtype="float32", seed=0):
    p = dg.GRUParams.random(I, H, num_layers=L, bidirectional=bidirectional,
                            reset_after=reset_after, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, B, I)).astype(dtype)
    h0 = rng.normal(size=(L * p.num_directions, B, H)).astype(dtype)
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0] = T
    return p, x, h0, lengths


@given(
    T=st.integers(1, 30),
    B=st.integers(1, 6),
    tsizes=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    bsizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    L=st.integers(1, 3),
    bidirectional=st.booleans(),
    reset_after=st.booleans(),
    dtype=st.sampled_from(["float32", "float64"]),
    use_lengths=st.booleans(),
    use_h0=st.booleans(),
)
def test_any_chunking_is_bit_identical(T, B, tsizes, bsizes, L, bidirectional, reset_after,
                                       dtype, use_lengths, use_h0):
    p, x, h0, lengths = make(T, B, L=L, bidirectional=bidirectional, reset_after=reset_after,
                             dtype=dtype)
    kw = dict(h0=h0 if use_h0 else None, lengths=lengths if use_lengths else None)
    out, h_n = dg.gru(x, p, **kw)
    xd = da.from_array(x, chunks=(split(T, tsizes), split(B, bsizes), 1))
    lo, lh = dg.gru(xd, p, **kw)
    assert lo.chunks[0] == xd.chunks[0] and lo.chunks[1] == xd.chunks[1]
    lo, lh = dask.compute(lo, lh, scheduler="sync")
    assert lo.dtype == out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(lo, out)
    np.testing.assert_array_equal(lh, h_n)


@given(
    T=st.integers(1, 40),
    tsizes=st.lists(st.integers(1, 9), min_size=1, max_size=8),
    merge=st.sampled_from([1, 300, 2000, 10 ** 9]),
    cell=st.sampled_from(["gru", "lstm"]),
    use_lengths=st.booleans(),
)
def test_merged_time_chunks_are_bit_identical(T, tsizes, merge, cell, use_lengths):
    """daskgru.merge-chunks joins consecutive time chunks until a task does ``merge``
    multiply-adds: the output has the merged chunks, the bits are the eager path's (two
    bidirectional layers, lengths), and the gradients of the backward agree."""
    from daskgru.graph.options import resolve

    p, x, h0, lengths = make(T, 4)
    if cell == "lstm":
        p = dg.LSTMParams.random(3, 4, num_layers=2, bidirectional=True, seed=0)
    kw = dict(lengths=lengths if use_lengths else None)
    f = dg.gru if cell == "gru" else dg.lstm
    out, fin = f(x, p, **kw)
    xd = da.from_array(x, chunks=(split(T, tsizes), (2, 2), 3))
    with dask.config.set({"daskgru.merge-chunks": merge}):
        lo, lf, info = f(xd, p, return_info=True, **kw)
        gates = 3 if cell == "gru" else 4  # rows 2, layer 1's input 2 H = 8, H = 4
        want = resolve().merged(xd.chunks[0], 2 * gates * 4 * (8 + 4), 2 * 4 * 8)
    assert lo.chunks[0] == want and sum(want) == T
    assert len(want) <= len(xd.chunks[0]) and (merge > 1 or want == xd.chunks[0])
    # a merged task takes the user's chunks and joins them itself: no rechunk tasks
    assert not any("rechunk" in k for k in key_prefixes(lo))
    lo, lf, info = dask.compute(lo, lf, info, scheduler="sync")
    assert info["graph"]["time_chunks"] == len(want)
    assert info["graph"]["merged_from"] == len(xd.chunks[0])
    np.testing.assert_array_equal(lo, out)
    for a, b in zip(lf if cell == "lstm" else [lf], fin if cell == "lstm" else [fin]):
        np.testing.assert_array_equal(a, b)


def test_merging_time_chunks():
    """Runs of chunks merge until they do the work asked (a short run at the end joins the
    chunk before it), never past MERGE_MAX_BYTES of outputs, and for the speculative method
    never below 2 chunks a task slot; off, or for newton, the user's chunks stay; "auto"
    follows the scheduler."""
    from daskgru.graph import options as o

    opts = o.GraphOptions("threads", 2, "auto", 1, 1, 100)
    assert opts.merged((10,) * 10, 5) == (20,) * 5
    assert opts.merged((10,) * 10, 4) == (30, 30, 40)
    assert opts.merged((10, 50, 10, 10), 2) == (80,)
    assert opts.merged((10, 50, 10, 50), 2) == (60, 60)
    assert opts.merged((10,) * 3, 1) == (30,)  # never enough work: one chunk
    assert opts.merged((0, 0), 1) == (0, 0) and opts.merged((0, 10, 0), 1) == (10,)
    assert opts.merged((10,) * 10, 2, min_chunks=4) == (30, 30, 40)  # ~1/4 of the steps each
    assert opts.merged((10,) * 4, 1, o.MERGE_MAX_BYTES / 20) == (20, 20)
    assert opts._replace(merge_chunks=False).merged((10,) * 4, 1) == (10,) * 4
    with dask.config.set({"daskgru.merge-chunks": "auto", "scheduler": "sync"}):
        assert o.resolve().merge_chunks == o.MERGE_WORK["sync"]
    p, x, _, _ = make(T=64, B=2)
    xd = da.from_array(x, chunks=(4, 2, 3))
    with dask.config.set({"daskgru.merge-chunks": 10 ** 6}):
        assert dg.gru(xd, p)[0].chunks[0] == (64,)
        with dask.config.set(scheduler="threads", num_workers=2):
            sp, _, info = dg.gru(xd, p, method="speculative", warmup=2, return_info=True)
            nw, _, ninfo = dg.gru(xd, p, method="newton", return_info=True)
        # the speculative method keeps 2 chunks a task slot; newton keeps the user's
        assert sp.chunks[0] == (16,) * 4 and info.compute()["chunks"] == 4
        assert nw.chunks[0] == xd.chunks[0] and ninfo.compute()["chunks"] == 16
        np.testing.assert_array_equal(sp.compute(), dg.gru(x, p)[0])
    for bad in (0, -3, "yes", 2.5, True):
        with dask.config.set({"daskgru.merge-chunks": bad}):
            with pytest.raises(ValueError, match="daskgru.merge-chunks"):
                dg.gru(xd, p)


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_schedulers_bit_identical(scheduler):
    p, x, h0, lengths = make(T=40, B=6, reset_after=False)
    out, h_n = dg.gru(x, p, h0=h0, lengths=lengths)
    xd = da.from_array(x, chunks=(7, 2, 3))
    lo, lh = dg.gru(xd, p, h0=da.from_array(h0, chunks=(1, 3, 2)),
                    lengths=da.from_array(lengths, chunks=4))
    lo, lh = dask.compute(lo, lh, scheduler=scheduler)
    np.testing.assert_array_equal(lo, out)
    np.testing.assert_array_equal(lh, h_n)


@pytest.mark.parametrize("chunks", [(1, 1, 3), (5, 5, 3), ((3, 17, 3), (4, 1), 3)])
def test_batch_first_and_unbatched(chunks):
    p, x, h0, lengths = make()
    out, h_n = dg.gru(x.transpose(1, 0, 2), p, h0=h0, lengths=lengths, batch_first=True)
    xd = da.from_array(x, chunks=chunks).transpose(1, 0, 2)
    lo, lh = dg.gru(xd, p, h0=h0, lengths=lengths, batch_first=True)
    np.testing.assert_array_equal(lo.compute(), out)
    np.testing.assert_array_equal(lh.compute(), h_n)
    out1, h1 = dg.gru(x[:, 0], p, h0=h0[:, 0])
    lo1, lh1 = dg.gru(da.from_array(x[:, 0], chunks=(chunks[0], 3)), p, h0=h0[:, 0])
    assert lo1.shape == out1.shape and lh1.shape == h1.shape
    np.testing.assert_array_equal(lo1.compute(), out1)
    np.testing.assert_array_equal(lh1.compute(), h1)


def raising_scheduler(dsk, keys, **kwargs):
    raise AssertionError("something was computed while building the graph")


def test_building_the_graph_computes_nothing():
    p, x, h0, lengths = make(T=50, B=4)
    xd = da.from_array(x, chunks=(10, 2, 3))
    with dask.config.set(scheduler=raising_scheduler):
        out, h_n = dg.gru(xd, p, h0=da.from_array(h0), lengths=da.from_array(lengths, chunks=2))
        (out.sum() + h_n.sum())  # still lazy
        with pytest.raises(AssertionError, match="computed"):
            out.compute()


def key_prefixes(arr):
    return {(k[0] if isinstance(k, tuple) else k).rsplit("-", 1)[0] for k in dict(arr.dask)}


def test_graph_layout_names_and_one_weights_key():
    p, x, _, _ = make(T=30, B=4, L=2, bidirectional=False)
    xd = da.from_array(x, chunks=(10, 4, 3))
    out, _ = dg.gru(xd, p)
    g = out.__dask_graph__()
    names = {name.rsplit("-", 1)[0] for name in g.layers}
    assert {"gru-weights", "gru-scan-l0", "gru-scan-l1", "gru-output"} <= names
    flat = dict(g)
    # one batch chunk: projections are tasks of their own, running ahead of the chain
    assert {"gru-inproj-l0", "gru-scan-l0", "gru-inproj-l1", "gru-scan-l1"} <= key_prefixes(out)
    assert "gru-state-l0" in key_prefixes(dg.gru(xd.rechunk((10, 2, 3)), p)[0])
    # several batch chunks: each projection is done inside its scan task
    fused = key_prefixes(dg.gru(xd.rechunk((10, 2, 3)), p)[0])
    assert "gru-scan-l0" in fused and "gru-inproj-l0" not in fused
    wkeys = [k for k in flat if isinstance(k, str) and k.startswith("gru-weights-")]
    assert len(wkeys) == 1
    # deterministic keys: the same call gives the same names, other weights other names
    assert dg.gru(xd, p)[0].name == out.name
    assert dg.gru(xd, dg.GRUParams.random(3, 4, num_layers=2, seed=9))[0].name != out.name


def test_chains_start_with_the_weights_in_their_first_tasks(monkeypatch):
    """The tasks that start layer 0's chains carry the weights themselves (on a cluster
    the weights key would cost every chain a scheduler round trip and a transfer before
    it starts); every other task takes the key; past the graph's budget for such copies,
    the first tasks take the key too. The bits do not change either way."""
    import daskgru.graph.builder as builder
    from daskgru.stack import PreparedStack

    p, x, _, _ = make(T=30, B=4, L=2, bidirectional=True)
    xd = da.from_array(x, chunks=(10, 2, 3))  # 2 batch chunks x 2 directions: 4 chains
    want = dg.gru(x, p)[0]

    def takes_weights(out):
        flat = dict(out.__dask_graph__())
        wkey = next(k for k in flat if isinstance(k, str) and k.startswith("gru-weights-"))
        scans = {k: get_dependencies(flat, k) for k in flat
                 if isinstance(k, tuple) and k[0].startswith("gru-scan-")}
        inline = {k for k in scans if any(isinstance(a, PreparedStack) for a in flat[k])}
        return scans, {k for k, d in scans.items() if wkey in d}, inline

    out = dg.gru(xd, p)[0]
    scans, keyed, inline = takes_weights(out)
    first = {k for k in scans if k[0].startswith("gru-scan-l0-")
             and k[3] == (0 if k[1] == 0 else 2)}  # (d, j, k): forward starts at 0
    assert len(first) == 4 and inline == first and keyed == set(scans) - first
    np.testing.assert_array_equal(out.compute(scheduler="sync"), want)
    monkeypatch.setattr(builder, "INLINE_WEIGHTS_BYTES", 0)
    out = dg.gru(xd, p)[0]
    scans, keyed, inline = takes_weights(out)
    assert not inline and keyed == set(scans)
    np.testing.assert_array_equal(out.compute(scheduler="sync"), want)


def test_wavefront_and_chain_dependencies():
    p, x, _, _ = make(T=30, B=2, L=2, bidirectional=False)
    out, _ = dg.gru(da.from_array(x, chunks=(10, 2, 3)), p)
    flat = dict(out.__dask_graph__())
    deps = {k: get_dependencies(flat, k) for k in flat}
    scan = lambda l, k: next(key for key in flat if isinstance(key, tuple)  # noqa: E731
                             and key[0].startswith(f"gru-scan-l{l}-") and key[1:] == (0, 0, k))

    def ancestors(key, seen=None):
        seen = set() if seen is None else seen
        for d in deps[key]:
            if d not in seen:
                seen.add(d)
                ancestors(d, seen)
        return seen

    # layer 1's first chunk needs layer 0's first chunk only, not its later ones
    anc = ancestors(scan(1, 0))
    assert scan(0, 0) in anc and scan(0, 1) not in anc and scan(0, 2) not in anc
    # time chunk 2 of layer 0 takes chunk 1's result directly (a single chain: one
    # scheduler round trip a hop, no task in between to pick out the boundary state)
    assert scan(0, 1) in deps[scan(0, 2)]
    # several chains pass their first chunk's end state through a small task of its own
    # (the scheduler may still move a chain to another worker there), later ones go direct
    out2, _ = dg.gru(da.from_array(x, chunks=(10, 1, 3)), p)
    flat2 = dict(out2.__dask_graph__())

    def chain_deps(k):
        key2 = next(key for key in flat2 if isinstance(key, tuple)
                    and key[0].startswith("gru-scan-l0-") and key[1:] == (0, 0, k))
        return [d[0].split("-l")[0] for d in get_dependencies(flat2, key2)
                if isinstance(d, tuple) and d[0].startswith("gru-")]

    assert chain_deps(1) == ["gru-state"] and chain_deps(2) == ["gru-scan"]
    assert sum(1 for k in flat2 if "gru-state-l0" in str(k)) == 2  # one per batch chunk


def test_dask_lengths_are_checked_at_compute():
    p, x, _, _ = make(T=10, B=3)
    out, _ = dg.gru(da.from_array(x, chunks=(5, 3, 3)), p,
                    lengths=da.from_array(np.array([3, 11, 2])))
    with pytest.raises(ValueError, match="lengths must lie in 0..10"):
        out.compute()


def test_dtype_kept_and_inputs_cast():
    p, x, _, _ = make(dtype="float64")
    out, h_n = dg.gru(da.from_array(x.astype("float32"), chunks=(5, 5, 3)), p)
    assert out.dtype == h_n.dtype == np.float32
    assert out.compute().dtype == np.float32
    eager, _ = dg.gru(x.astype("float32"), p)
    np.testing.assert_array_equal(out.compute(), eager)


@pytest.mark.parametrize("H, I", [(64, 16), (512, 32)])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_sizes_bit_identical_for_any_batch_chunking(H, I, reset_after, dtype, monkeypatch):
    """Sizes where the register tiles take most rows and columns: 1-row and small batch
    chunks (tail tiles) give every row the same bits as one big call (full tiles), with or
    without eager threads."""
    p = dg.GRUParams.random(I, H, bidirectional=True, reset_after=reset_after, dtype=dtype, seed=3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 13, I)).astype(dtype)
    lengths = rng.integers(0, 7, size=13)
    monkeypatch.setenv("DASKGRU_NUM_THREADS", "1")
    out, h_n = dg.gru(x, p, lengths=lengths)
    monkeypatch.setenv("DASKGRU_NUM_THREADS", "3")
    monkeypatch.setattr("daskgru.eager.MIN_SPLIT_WORK", 0)
    np.testing.assert_array_equal(dg.gru(x, p, lengths=lengths)[0], out)
    for bchunks in [(1,) * 13, (2, 3, 1, 7), (13,)]:
        lo, lh = dg.gru(da.from_array(x, chunks=((1, 5), bchunks, I)), p, lengths=lengths)
        lo, lh = dask.compute(lo, lh, scheduler="threads")
        np.testing.assert_array_equal(lo, out)
        np.testing.assert_array_equal(lh, h_n)


@pytest.mark.parametrize("block_bytes", [None, 1])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_eager_threads_share_one_output_bit_for_bit(cell, block_bytes, monkeypatch):
    """Eager threads split the batch rows and write their rows of one output array (top
    layer of one direction; a lower bidirectional layer): the bits of one thread, with
    lengths and a mask with holes, also in blocks of one step (a step's projection over
    the block budget)."""
    from daskgru.cells import base

    rng = np.random.default_rng(7)
    T, B, I, H = 50, 11, 3, 16
    Params, run = (dg.GRUParams, dg.gru) if cell == "gru" else (dg.LSTMParams, dg.lstm)
    lower = Params.random(I, H, num_layers=1, bidirectional=True, seed=7)
    top = Params.random(2 * H, H, seed=8)
    x = rng.standard_normal((T, B, I)).astype("float32")
    lengths, mask = rng.integers(0, T + 1, B), rng.random((T, B)) > 0.2
    if block_bytes:
        monkeypatch.setattr(base, "STEP_BLOCK_BYTES", block_bytes)
    monkeypatch.setenv("DASKGRU_NUM_THREADS", "1")
    y1 = run(x, lower, lengths=lengths, mask=mask)[0]
    want = run(y1, top, lengths=lengths, mask=mask)
    monkeypatch.setenv("DASKGRU_NUM_THREADS", "3")
    monkeypatch.setattr("daskgru.eager.MIN_SPLIT_WORK", 0)
    from daskgru import eager

    used = []
    monkeypatch.setattr(eager, "in_parts", lambda part, parts: used.append(len(parts))
                        or [part(s) for s in parts])
    y3 = run(x, lower, lengths=lengths, mask=mask)[0]
    got = run(y3, top, lengths=lengths, mask=mask)
    assert used == [2, 2]  # 11 rows: two parts of at least 4, in both calls
    np.testing.assert_array_equal(y3, y1)
    flat = lambda r: [r[0], r[1]] if cell == "gru" else [r[0], *r[1]]  # noqa: E731
    for a, b in zip(flat(got), flat(want)):
        np.testing.assert_array_equal(a, b)


def test_an_output_too_small_for_the_rows_is_refused():
    from daskgru.cells import Steps
    from daskgru.api import validate

    p = dg.GRUParams.random(3, 4, seed=0)
    x = np.ones((5, 2, 3), "float32")
    ps = validate(x, p).stack.prepare()
    for out, row in (((5, 3, 4), 2), ((5, 2, 5), 0), ((4, 2, 4), 0)):
        with pytest.raises(ValueError, match="cannot take rows"):
            ps.cells[0].scan_inputs(ps.weights[0][0], x, np.zeros((2, 4), "float32"),
                                    Steps.make(2, 5), out=np.empty(out, "float32"), row=row)


@pytest.mark.parametrize("split", [1, 2, 3])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_scan_tasks_split_rows_over_threads_bit_for_bit(split, cell, monkeypatch):
    """One chain (one batch chunk) on the threaded scheduler: its scan tasks split their
    rows over threads (daskgru.split-rows) and still give eager's bits, with lengths, a mask
    with holes and both directions; the split is recorded in return_info."""
    rng = np.random.default_rng(5)
    T, B, I, H = 60, 13, 3, 24
    Params, run = (dg.GRUParams, dg.gru) if cell == "gru" else (dg.LSTMParams, dg.lstm)
    p = Params.random(I, H, num_layers=2, bidirectional=True, seed=5)
    x = rng.standard_normal((T, B, I)).astype("float32")
    lengths = rng.integers(0, T + 1, B)
    mask = rng.random((T, B)) > 0.2
    want = run(x, p, lengths=lengths, mask=mask)
    xd = da.from_array(x, chunks=(16, B, I))
    from daskgru import eager

    splits = []
    in_parts = eager.in_parts

    def counted(part, parts):
        splits.append(len(parts))
        return in_parts(part, parts)

    monkeypatch.setattr(eager, "in_parts", counted)
    with dask.config.set({"daskgru.split-rows": split}, scheduler="threads", num_workers=4):
        got = run(xd, p, lengths=lengths, mask=mask, return_info=True)
        info = got[2].compute()
        got = dask.compute(got[0], got[1])
    assert info["graph"]["split_rows"] == split
    assert set(splits) == ({split} if split > 1 else set())  # the rows really were split
    np.testing.assert_array_equal(got[0], want[0])
    for a, b in zip(np.asarray(got[1]).reshape(-1), np.asarray(want[1]).reshape(-1)):
        assert a == b or (np.isnan(a) and np.isnan(b))


def test_split_rows_auto_and_refusals():
    """"auto": the threaded scheduler's slots over the chains, never below 4 rows a part, 1
    on other schedulers and for tasks too small to be worth it (the projections then run
    ahead as tasks of their own); a bad setting is refused by name."""
    p = dg.GRUParams.random(64, 256, seed=0)
    x = da.zeros((2048, 16, 64), chunks=(1024, 16, 64), dtype="float32")

    def split(**cfg):
        with dask.config.set(cfg):
            return dg.gru(x, p, return_info=True)[2].compute()["graph"]["split_rows"]

    assert split(scheduler="threads", num_workers=4) == 4
    assert split(scheduler="threads", num_workers=8) == 4  # 16 rows: at least 4 a part
    assert split(scheduler="sync") == 1
    with dask.config.set(scheduler="threads", num_workers=4):
        two = dg.gru(x.rechunk((1024, 8, 64)), p, return_info=True)[2].compute()["graph"]
    assert two["split_rows"] == 2
    with dask.config.set(scheduler="threads", num_workers=4):  # a small task: not worth it
        small = dg.gru(x[:40, :, :3].rechunk((10, 16, 3)), dg.GRUParams.random(3, 8, seed=0),
                       return_info=True)[2].compute()["graph"]
    assert small["split_rows"] == 1 and small["fuse_projection"] is False
    with dask.config.set({"daskgru.split-rows": 0}), pytest.raises(ValueError,
                                                                    match="split-rows"):
        dg.gru(x, p)
