"""The one setting that changes bits (daskgru.fma): fused multiply-adds in the products, or a
rounded multiply then a rounded add. Either way one fixed order per element: the bits do
not depend on chunking, threads or the tile shape, the setting travels with the graph, and it
is part of the token and of a resumable run's fingerprint."""
from fractions import Fraction

import dask
import dask.array as da
import numpy as np
import pytest

import daskgru as dg
from daskgru.kernels.tiles import product


def _round(q, dtype):
    """The float of ``dtype`` nearest to the rational q (ties to even): an exact oracle."""
    f = np.array(float(q), dtype)  # within an ulp or two of q
    cands = [f, np.nextafter(f, np.inf, dtype=dtype), np.nextafter(f, -np.inf, dtype=dtype)]
    best = min(cands, key=lambda c: (abs(Fraction(float(c)) - q),
                                     int(np.asarray(c).view(np.uint32 if dtype == np.float32
                                                            else np.uint64)) & 1))
    return best.item()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_products_are_exact_fmas_in_index_order(dtype):
    """Each element: s = b, then s = fma(a[k], w[k], s) for k in order, every fma rounded
    once: checked against exact rational arithmetic on every element of a block that
    takes every tile path (full and 4-row and 1-row tiles, vector and scalar columns)."""
    rng = np.random.default_rng(2)
    M, K, N = 17, 9, 3 * (64 // np.dtype(dtype).itemsize) + 3
    a, w = (rng.standard_normal(s).astype(dtype) for s in [(M, K), (K, N)])
    b = rng.standard_normal(N).astype(dtype)
    out = np.empty((M, N), dtype)
    product(a, 0, M, w, b, 0, N, out, 0, True)
    for i in range(M):
        for c in range(N):
            s = float(b[c])
            for k in range(K):
                s = _round(Fraction(float(a[i, k])) * Fraction(float(w[k, c])) + Fraction(s),
                           dtype)
            assert out[i, c] == s, (i, c)
    plain = np.empty((M, N), dtype)
    product(a, 0, M, w, b, 0, N, plain, 0, False)
    assert not np.array_equal(out, plain)  # the two settings are told apart by this block


@pytest.mark.parametrize("fma", [True, False])
def test_either_setting_gives_the_same_bits_for_any_chunking(fma):
    p = dg.GRUParams.random(6, 24, num_layers=2, bidirectional=True, dtype="float32", seed=3)
    x = np.random.default_rng(1).standard_normal((50, 9, 6)).astype("float32")
    with dask.config.set({"daskgru.fma": fma}):
        out, h, info = dg.gru(x, p, return_info=True)
        assert info["fma"] is fma
        for chunks in [(7, 4, -1), (50, 2, -1), (13, 9, -1)]:
            o2, h2, i2 = dg.gru(da.from_array(x, chunks=chunks), p, return_info=True)
            np.testing.assert_array_equal(o2.compute(), out)
            np.testing.assert_array_equal(h2.compute(), h)
            assert i2.compute()["graph"]["fma"] is fma


def test_the_settings_differ_by_rounding_only_and_match_torch():
    torch = pytest.importorskip("torch")
    p = dg.GRUParams.random(5, 32, dtype="float32", seed=0)
    x = np.random.default_rng(0).standard_normal((200, 4, 5)).astype("float32")
    outs = {}
    for fma in (True, False):
        with dask.config.set({"daskgru.fma": fma}):
            outs[fma] = dg.gru(x, p)[0]
    assert not np.array_equal(outs[True], outs[False])
    np.testing.assert_allclose(outs[True], outs[False], rtol=0, atol=2e-6)
    m = torch.nn.GRU(5, 32)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in p.to_torch_state_dict().items()})
    with torch.no_grad():
        want = m(torch.from_numpy(x))[0].numpy()
    for o in outs.values():
        np.testing.assert_allclose(o, want, rtol=0, atol=2e-6)


def test_the_setting_travels_with_the_graph_and_is_in_its_token():
    """Resolved when the graph is built: computing it under another setting (as a worker
    with another config would) changes nothing; graphs of the two settings have other keys."""
    p = dg.GRUParams.random(4, 16, dtype="float32", seed=5)
    x = da.from_array(np.random.default_rng(5).standard_normal((40, 6, 4)).astype("float32"),
                      chunks=(10, 3, -1))
    with dask.config.set({"daskgru.fma": True}):
        fused = dg.gru(x, p)[0]
        eager_fused = dg.gru(x.compute(), p)[0]
    with dask.config.set({"daskgru.fma": False}):
        plain = dg.gru(x, p)[0]
        np.testing.assert_array_equal(fused.compute(), eager_fused)
    assert fused.name != plain.name
    assert not np.array_equal(fused.compute(), plain.compute())


def test_a_model_head_follows_the_setting():
    p = dg.GRUParams.random(3, 8, dtype="float64", seed=1)
    from daskgru.layers import Dense

    m = dg.Model(p, post=[Dense(np.ones((8, 2)) / 3, np.zeros(2), "linear")])
    x = np.random.default_rng(2).standard_normal((30, 2, 3))
    with dask.config.set({"daskgru.fma": False}):
        want = m(x)
        lazy = m(da.from_array(x, chunks=(10, 1, -1)))
    with dask.config.set({"daskgru.fma": True}):
        np.testing.assert_array_equal(np.asarray(lazy.compute()), np.asarray(want))


def test_a_value_that_is_not_a_boolean_is_refused():
    x = np.zeros((3, 1, 2), "float32")
    p = dg.GRUParams.random(2, 4, dtype="float32", seed=0)
    with dask.config.set({"daskgru.fma": "sometimes"}):
        with pytest.raises(ValueError, match="daskgru.fma must be True or False"):
            dg.gru(x, p)
