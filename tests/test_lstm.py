"""The LSTM cell through every layer the GRU has: torch.nn.LSTM's forward and autograd,
Keras's LSTM, dask (bit-identical for any chunking), parallel in time, xarray, files, the
command; and mixed stacks (GRU -> LSTM, other widths)."""
import dask
import dask.array as da
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import daskgru as dg  # noqa: E402
from daskgru.cells import Steps, project  # noqa: E402
from daskgru.stack import Stack  # noqa: E402
from conftest import TOL  # noqa: E402

TD = {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64}
ARCHS = [(1, False, True), (1, True, False), (2, False, True), (2, True, True), (3, True, False)]


def torch_lstm(q, batch_first=False):
    m = torch.nn.LSTM(q.input_size, q.hidden_size, num_layers=q.num_layers,
                      bidirectional=q.bidirectional, bias=q.bias, batch_first=batch_first,
                      dtype=TD[q.dtype])
    m.load_state_dict({k: torch.from_numpy(v) for k, v in q.to_torch_state_dict().items()})
    return m


def run_torch(m, x, hx=None, lengths=None):
    xt = torch.from_numpy(x)
    hxt = None if hx is None else tuple(torch.from_numpy(a) for a in hx)
    with torch.no_grad():
        if lengths is None:
            out, (h, c) = m(xt, hxt)
        else:
            T = x.shape[1] if m.batch_first else x.shape[0]
            packed = pack_padded_sequence(xt, torch.as_tensor(lengths),
                                          batch_first=m.batch_first, enforce_sorted=False)
            out, (h, c) = m(packed, hxt)
            out, _ = pad_packed_sequence(out, batch_first=m.batch_first, total_length=T)
    return out.numpy(), h.numpy(), c.numpy()


def close(a, b, dtype):
    assert a.dtype == np.dtype(dtype) and a.shape == b.shape
    np.testing.assert_allclose(a, b, **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("L,bi,bias", ARCHS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["TBI", "BTI"])
@pytest.mark.parametrize("with_hx,with_lengths", [(False, False), (True, False), (True, True)])
def test_matches_torch_lstm(rng, dtype, L, bi, bias, batch_first, with_hx, with_lengths):
    T, B, I, H = 13, 5, 4, 6
    D = 1 + bi
    q = dg.LSTMParams.random(I, H, num_layers=L, bidirectional=bi, bias=bias, dtype=dtype,
                             seed=L + 10 * bi)
    x = rng.normal(size=(B, T, I) if batch_first else (T, B, I)).astype(dtype)
    hx = tuple(rng.normal(scale=0.5, size=(L * D, B, H)).astype(dtype) for _ in range(2)) \
        if with_hx else None
    lengths = np.array([13, 1, 7, 12, 4]) if with_lengths else None
    want = run_torch(torch_lstm(q, batch_first), x, hx, lengths)
    out, (h_n, c_n) = dg.lstm(x, q, hx, lengths=lengths, batch_first=batch_first)
    for a, b in zip((out, h_n, c_n), want):
        close(a, b, dtype)


@pytest.mark.parametrize("bi", [False, True])
def test_unbatched_and_cell(rng, bi):
    q = dg.LSTMParams.random(3, 4, num_layers=2, bidirectional=bi, dtype="float64", seed=1)
    x = rng.normal(size=(9, 3))
    hx = tuple(rng.normal(size=(2 * (1 + bi), 4)) for _ in range(2))
    out, (h, c) = dg.lstm(x, q, hx)
    want = run_torch(torch_lstm(q), x, hx)
    for a, b in zip((out, h, c), want):
        close(a, b, "float64")
    # an nn.LSTMCell is a one-layer LSTM
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(3, 4, dtype=torch.float64)
    p1 = dg.LSTMParams.from_torch(cell)
    h1, c1 = cell(torch.from_numpy(x[:1]))
    _, (hh, cc) = dg.lstm(x[:1], p1)
    close(hh[0], h1.detach().numpy()[0], "float64")
    close(cc[0], c1.detach().numpy()[0], "float64")


def test_lengths_zero_and_right_padding_mask(rng):
    q = dg.LSTMParams.random(2, 3, bidirectional=True, dtype="float64", seed=3)
    x = rng.normal(size=(6, 3, 2))
    hx = tuple(rng.normal(size=(2, 3, 3)) for _ in range(2))
    lengths = np.array([0, 6, 2])
    out, (h, c) = dg.lstm(x, q, hx, lengths=lengths)
    assert np.all(out[:, 0] == 0) and np.array_equal(h[:, 0], hx[0][:, 0])
    assert np.array_equal(c[:, 0], hx[1][:, 0])
    # a right-padding mask with zero outputs is the same thing, bit for bit
    mask = np.arange(6)[:, None] < lengths[None, :]
    mo, (mh, mc) = dg.lstm(x, q, hx, mask=mask, zero_output_for_mask=True)
    assert np.array_equal(mo, out) and np.array_equal(mh, h) and np.array_equal(mc, c)


@pytest.mark.parametrize("chunks", [((5, 5, 3), (2, 1), 2), ((1,) * 13, (3,), 2),
                                    ((13,), (1, 1, 1), 2), ((4, 9), (2, 1), 2)])
def test_dask_bit_identical_for_any_chunking(rng, chunks):
    q = dg.LSTMParams.random(2, 5, num_layers=2, bidirectional=True, seed=4)
    x = rng.normal(size=(13, 3, 2)).astype("float32")
    hx = tuple(rng.normal(size=(4, 3, 5)).astype("float32") for _ in range(2))
    lengths = np.array([13, 5, 0])
    ref = dg.lstm(x, q, hx, lengths=lengths)
    lazy = dg.lstm(da.from_array(x, chunks=chunks), q,
                   tuple(da.from_array(a, chunks=(2, 1, 5)) for a in hx), lengths=lengths)
    out, (h, c) = dask.compute(*lazy)
    assert np.array_equal(out, ref[0])
    assert np.array_equal(h, ref[1][0]) and np.array_equal(c, ref[1][1])


@pytest.mark.parametrize("method", ["speculative", "newton"])
def test_parallel_in_time(rng, method):
    q = dg.LSTMParams.random(3, 5, num_layers=2, bidirectional=True, seed=5, dtype="float64")
    x = rng.normal(size=(240, 3, 3))
    lengths = np.array([240, 100, 3])
    ref = dg.lstm(x, q, lengths=lengths)
    kw = dict(warmup=30) if method == "speculative" else {}
    out, (h, c), info = dg.lstm(da.from_array(x, chunks=(40, 2, 3)), q, lengths=lengths,
                                method=method, return_info=True, **kw)
    out, h, c, info = dask.compute(out, h, c, info, scheduler="sync")
    for a, b in zip((out, h, c), (ref[0], *ref[1])):
        assert np.abs(a - b).max() <= 1e-8
    assert info["method"] == method and info["chunks"] == 6


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tangent_against_finite_differences(rng, dtype):
    q = dg.LSTMParams.random(3, 4, seed=1, dtype="float64")
    cell, w = q.cell, q.prepare().weights[0][0]
    gi = project(w, rng.normal(size=(7, 2, 3)))
    s0 = 0.5 * rng.normal(size=(2, 8))
    for rev in (False, True):
        steps = Steps.make(2, 7, lengths=np.array([7, 3]), reverse=rev)
        s, M = cell.tangent(w, gi, s0, steps)
        np.testing.assert_array_equal(s, cell.scan(w, gi, s0, steps)[1]) if dtype == "float64" \
            else None
        fd = np.empty_like(M)
        for k in range(8):
            e = np.zeros(8)
            e[k] = 1e-6
            fd[:, :, k] = (cell.scan(w, gi, s0 + e, steps)[1]
                           - cell.scan(w, gi, s0 - e, steps)[1]) / 2e-6
        np.testing.assert_allclose(M, fd, atol=1e-8)


# ----------------------------------------------------------------------------- gradients
def torch_grads(q, x, d_out, hx, d_h, d_c, lengths, batch_first=False):
    m = torch_lstm(q, batch_first)
    xt = torch.tensor(x, requires_grad=True)
    h0t, c0t = (torch.tensor(a, requires_grad=True) for a in hx)
    if lengths is not None:
        inp = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                                   enforce_sorted=False)
        out, (h, c) = m(inp, (h0t, c0t))
        out, _ = pad_packed_sequence(out, batch_first=batch_first,
                                     total_length=x.shape[1 if batch_first else 0])
    else:
        out, (h, c) = m(xt, (h0t, c0t))
    loss = ((out * torch.from_numpy(d_out)).sum() + (h * torch.from_numpy(d_h)).sum()
            + (c * torch.from_numpy(d_c)).sum())
    loss.backward()
    return ({k: v.grad.numpy() for k, v in m.named_parameters()}, xt.grad.numpy(),
            h0t.grad.numpy(), c0t.grad.numpy())


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1e-300)


@pytest.mark.parametrize("L,bi,bias,use_len,batch_first", [
    (1, False, True, False, False), (2, True, True, True, False), (3, False, False, True, True),
    (2, True, False, False, True)])
def test_gradients_match_torch_autograd(rng, L, bi, bias, use_len, batch_first):
    T, B, I, H = 11, 4, 3, 5
    D = 1 + bi
    q = dg.LSTMParams.random(I, H, num_layers=L, bidirectional=bi, bias=bias, dtype="float64",
                             seed=L)
    x = rng.normal(size=(B, T, I) if batch_first else (T, B, I))
    d_out = rng.normal(size=(B, T, D * H) if batch_first else (T, B, D * H))
    hx = tuple(rng.normal(size=(L * D, B, H)) for _ in range(2))
    d_h, d_c = (rng.normal(size=(L * D, B, H)) for _ in range(2))
    lengths = np.array([11, 3, 7, 1]) if use_len else None
    if use_len:  # torch's padded output has no gradient past a length
        tmask = (np.arange(T)[:, None] < lengths[None, :])
        d_out = d_out * (tmask.T[..., None] if batch_first else tmask[..., None])
    g_t, dx_t, dh_t, dc_t = torch_grads(q, x, d_out, hx, d_h, d_c, lengths, batch_first)
    grads, d_x, (d_h0, d_c0) = dg.lstm_backward(x, q, d_out, d_h_n=d_h, d_c_n=d_c, hx=hx,
                                                lengths=lengths, batch_first=batch_first)
    sd = grads.to_torch_state_dict()
    assert sd.keys() == g_t.keys()
    for k in sd:
        assert rel(sd[k], g_t[k]) <= 1e-10, k
    assert rel(d_x, dx_t) <= 1e-10 and rel(d_h0, dh_t) <= 1e-10 and rel(d_c0, dc_t) <= 1e-10
    # the time-chunked dask graph gives the same to rounding
    xd = da.from_array(x, chunks=(2, 4, I) if batch_first else (4, 2, I))
    gl, dxl, (dhl, dcl) = dg.lstm_backward(xd, q, d_out, d_h_n=d_h, d_c_n=d_c, hx=hx,
                                           lengths=lengths, batch_first=batch_first)
    gl, dxl, dhl, dcl = dask.compute(gl, dxl, dhl, dcl, scheduler="sync")
    assert max(rel(a, b) for a, b in zip(gl.to_torch_state_dict().values(), sd.values())) <= 1e-12
    assert rel(dxl, d_x) <= 1e-12 and rel(dhl, d_h0) <= 1e-12 and rel(dcl, d_c0) <= 1e-12


# ----------------------------------------------------------------------------- converters
def test_torch_state_dict_round_trip_and_refusals():
    torch.manual_seed(0)
    m = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    q = dg.LSTMParams.from_torch(m)
    assert (q.num_layers, q.bidirectional, q.hidden_size) == (2, True, 4)
    assert dg.LSTMParams.from_torch(q.to_torch_state_dict()) == q
    assert dg.LSTMParams.from_torch({f"lstm.{k}": v for k, v in m.state_dict().items()}) == q
    with pytest.raises(ValueError, match="proj_size"):
        dg.LSTMParams.from_torch(torch.nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="proj_size"):
        dg.LSTMParams.from_torch(torch.nn.LSTM(3, 4, proj_size=2).state_dict())
    with pytest.raises(ValueError, match="torch LSTM module; use LSTMParams"):
        dg.GRUParams.from_torch(m)
    with pytest.raises(ValueError, match="not .3 \\* hidden_size"):
        dg.GRUParams.from_torch(m.state_dict())


def test_keras_lstm_and_bidirectional(rng):
    keras = pytest.importorskip("keras")
    x = rng.normal(size=(2, 9, 3)).astype("float32")
    inp = keras.Input((None, 3))
    lay = keras.layers.LSTM(5, return_sequences=True)
    bi = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True))
    model = keras.Model(inp, bi(lay(inp)))
    want = np.asarray(model(x))
    p1, p2 = dg.LSTMParams.from_keras(lay), dg.LSTMParams.from_keras(bi)
    got = dg.lstm(dg.lstm(x, p1, batch_first=True)[0], p2, batch_first=True)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # a whole model that is one chain of LSTMs of one width is one LSTMParams
    same = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4, return_sequences=True),
                             keras.layers.LSTM(4, return_sequences=True)])
    q = dg.LSTMParams.from_keras(same)
    np.testing.assert_allclose(dg.lstm(x, q, batch_first=True)[0], np.asarray(same(x)),
                               rtol=1e-5, atol=1e-5)
    # weights back into Keras
    other = keras.layers.LSTM(5, return_sequences=True)
    other.build((None, None, 3))
    other.set_weights(p1.to_keras_weights())
    assert dg.LSTMParams.from_keras(other) == p1
    with pytest.raises(ValueError, match="recurrent_activation"):
        bad = keras.layers.LSTM(4, recurrent_activation="hard_sigmoid")
        bad.build((None, None, 3))
        dg.LSTMParams.from_keras(bad)


@pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3")
@pytest.mark.filterwarnings("ignore:Consolidated metadata")
@pytest.mark.parametrize("ext", ["nc", "zarr"])
def test_save_load(tmp_path, ext):
    pytest.importorskip("h5netcdf")
    pytest.importorskip("zarr")
    q = dg.LSTMParams.random(3, 4, num_layers=2, bidirectional=True, bias=False, seed=1)
    q.save(tmp_path / f"q.{ext}")
    back = dg.load_params(tmp_path / f"q.{ext}")
    assert isinstance(back, dg.LSTMParams) and back == q
    assert list(q.to_dataset().gate.values) == ["i", "f", "g", "o"]


# ----------------------------------------------------------------------------- front ends
def test_apply_rnn_lstm_continues_bit_for_bit(rng):
    xr = pytest.importorskip("xarray")
    q = dg.LSTMParams.random(2, 4, num_layers=2, seed=2, dtype="float64")
    field = xr.DataArray(rng.normal(size=(40, 3, 2, 2)), dims=("time", "lat", "lon", "feature"),
                         coords={"lat": [1.0, 2.0, 3.0]}, attrs={"units": "m"})
    whole = dg.apply_rnn(field.chunk(time=10), q)
    assert set(whole.data_vars) == {"output", "final_state", "final_cell"}
    assert whole.attrs["units"] == "m" and whole.attrs["lstm_hidden_size"] == 4
    first = dg.apply_rnn(field.isel(time=slice(0, 15)), q)
    rest = dg.apply_rnn(field.isel(time=slice(15, None)), q, h0=first.final_state,
                        c0=first.final_cell)
    whole = whole.compute()
    assert np.array_equal(whole.output.values[15:], rest.output.values)
    assert np.array_equal(whole.final_cell.values, rest.final_cell.values)
    x = field.transpose("time", "lat", "lon", "feature").values.reshape(40, 6, 2)
    out, (h, c) = dg.lstm(x, q)
    assert np.array_equal(whole.output.values.reshape(40, 6, 4), out)
    with pytest.raises(ValueError, match="c0 is the start cell state of an LSTM"):
        dg.apply_rnn(field, dg.GRUParams.random(2, 4), c0=first.final_cell)


@pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3")
@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_command_converts_and_runs_an_lstm(tmp_path, capsys, rng):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("zarr")
    pytest.importorskip("h5netcdf")
    from daskgru.cli import main

    torch.manual_seed(0)
    m = torch.nn.LSTM(2, 5, num_layers=2)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    assert main(["convert", str(tmp_path / "w.pt"), "-o", str(tmp_path / "q.nc")]) == 0
    q = dg.load_params(tmp_path / "q.nc")
    assert q == dg.LSTMParams.from_torch(m)
    assert main(["info", str(tmp_path / "q.nc")]) == 0
    assert "model:         LSTM" in capsys.readouterr().out
    field = xr.DataArray(rng.normal(size=(90, 3, 2)).astype("float32"),
                         dims=("time", "site", "feature"), name="x")
    field.to_dataset().to_netcdf(tmp_path / "in.nc")
    assert main(["run", str(tmp_path / "in.nc"), "--params", str(tmp_path / "q.nc"), "-o",
                 str(tmp_path / "out.zarr"), "--chunks", "time=20", "--no-progress"]) == 0
    res = xr.open_zarr(tmp_path / "out.zarr")
    ref = dg.apply_rnn(field, q)
    for v in ("output", "final_state", "final_cell"):
        assert np.array_equal(res[v].values, ref[v].values), v


# ----------------------------------------------------------------------------- mixed stacks
def test_mixed_stack_gru_then_lstm_of_other_width(rng):
    """A Stack of a GRU(16) and an LSTM(8) (the shape of Keras's GRU(16) -> LSTM(8)) runs
    eagerly and lazily, bit-identically, and equals torch's two modules in a row."""
    from daskgru.api import run, validate

    g = dg.GRUParams.random(3, 16, seed=0, dtype="float64")
    q = dg.LSTMParams.random(16, 8, bidirectional=True, seed=1, dtype="float64")
    s = Stack(g.layers + q.layers)
    assert s.state_sizes == [16, 16, 16]
    x = rng.normal(size=(20, 4, 3))
    call = validate(x, s)
    out, finals, _ = run(x, call)
    tg = torch.nn.GRU(3, 16, dtype=torch.float64)
    tg.load_state_dict({k: torch.from_numpy(v) for k, v in g.to_torch_state_dict().items()})
    with torch.no_grad():
        mid, _ = tg(torch.from_numpy(x))
    want = run_torch(torch_lstm(q), mid.numpy())
    close(out, want[0], "float64")
    close(finals[1][:, :, :8], want[1], "float64")
    lazy_out, lazy_finals, _ = run(da.from_array(x, chunks=(7, 2, 3)), call)
    assert np.array_equal(lazy_out.compute(), out)
    assert all(np.array_equal(a.compute(), b) for a, b in zip(lazy_finals, finals))
    with pytest.raises(ValueError, match=r"layer 1 forward: w_ih must have shape \(32, 16\), got \(32, 15\)"):
        Stack(g.layers + dg.LSTMParams.random(15, 8).layers)
