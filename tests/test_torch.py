"""daskgru.gru against torch.nn.GRU / torch.nn.GRUCell, and the torch weight converters."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import daskgru as dg  # noqa: E402
from daskgru import reference  # noqa: E402
from conftest import TOL  # noqa: E402

TORCH_DTYPE = {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64}
DTYPES = [np.dtype("float32"), np.dtype("float64")]
# (num_layers, bidirectional, bias): every layer count and both directions, bias off twice.
ARCHS = [(1, False, True), (1, True, False), (2, False, False), (2, True, True),
         (3, True, True), (3, False, True)]


def make_gru(I, H, L=1, bidirectional=False, bias=True, dtype="float32", batch_first=False,
             seed=0):
    torch.manual_seed(seed)
    return torch.nn.GRU(I, H, num_layers=L, bidirectional=bidirectional, bias=bias,
                        batch_first=batch_first, dtype=TORCH_DTYPE[np.dtype(dtype)])


def run_torch(m, x, h0=None, lengths=None):
    """torch's output and h_n as NumPy; lengths go through a packed sequence."""
    xt = torch.from_numpy(x)
    ht = None if h0 is None else torch.from_numpy(h0)
    with torch.no_grad():
        if lengths is None:
            out, h_n = m(xt, ht)
        else:
            T = x.shape[1] if m.batch_first else x.shape[0]
            packed = pack_padded_sequence(xt, torch.as_tensor(lengths), batch_first=m.batch_first,
                                          enforce_sorted=False)
            out, h_n = m(packed, ht)
            out, _ = pad_packed_sequence(out, batch_first=m.batch_first, total_length=T)
    return out.numpy(), h_n.numpy()


def assert_close(actual, desired, dtype):
    assert actual.dtype == np.dtype(dtype)
    assert actual.shape == desired.shape
    np.testing.assert_allclose(actual, desired, **TOL[np.dtype(dtype)])


def inputs(rng, T, B, I, LD, H, dtype, batch_first=False):
    x = rng.normal(size=(B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.normal(scale=0.5, size=(LD, B, H)).astype(dtype)
    return x, h0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("L,bidirectional,bias", ARCHS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["TBI", "BTI"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_gru_matches_torch(rng, dtype, L, bidirectional, bias, batch_first, with_h0,
                           with_lengths):
    T, B, I, H = 6, 4, 3, 5
    m = make_gru(I, H, L, bidirectional, bias, dtype, batch_first)
    p = dg.GRUParams.from_torch(m)
    assert (p.num_layers, p.bidirectional, p.bias, p.dtype) == (L, bidirectional, bias, dtype)
    x, h0 = inputs(rng, T, B, I, L * p.num_directions, H, dtype, batch_first)
    h0 = h0 if with_h0 else None
    lengths = np.array([T, 1, 3, T - 1]) if with_lengths else None
    want_out, want_hn = run_torch(m, x, h0, lengths)
    out, h_n = dg.gru(x, p, h0=h0, lengths=lengths, batch_first=batch_first)
    assert_close(out, want_out, dtype)
    assert_close(h_n, want_hn, dtype)
    if with_lengths:  # lengths may be a tensor, as for pack_padded_sequence
        out_t, h_n_t = dg.gru(x, p, h0=h0, lengths=torch.as_tensor(lengths),
                              batch_first=batch_first)
        assert np.array_equal(out_t, out) and np.array_equal(h_n_t, h_n)
        # padding is exactly zero, as in pad_packed_sequence
        pad = np.arange(T)[:, None] >= lengths[None, :]
        assert np.all((out.transpose(1, 0, 2) if batch_first else out)[pad] == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,B,H", [(1, 3, 4), (5, 1, 4), (5, 3, 1), (1, 1, 1)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_tiny_sizes(rng, dtype, T, B, H, bidirectional):
    m = make_gru(2, H, 2, bidirectional, dtype=dtype)
    x, h0 = inputs(rng, T, B, 2, 2 * (1 + bidirectional), H, dtype)
    want_out, want_hn = run_torch(m, x, h0)
    out, h_n = dg.gru(x, dg.GRUParams.from_torch(m), h0=h0)
    assert_close(out, want_out, dtype)
    assert_close(h_n, want_hn, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
def test_unbatched(rng, dtype, bidirectional, with_h0):
    T, I, H, L = 5, 3, 4, 2
    m = make_gru(I, H, L, bidirectional, dtype=dtype)
    x, h0 = inputs(rng, T, 1, I, L * (1 + bidirectional), H, dtype)
    x, h0 = x[:, 0], (h0[:, 0] if with_h0 else None)
    want_out, want_hn = run_torch(m, x, h0)
    out, h_n = dg.gru(x, dg.GRUParams.from_torch(m), h0=h0)
    assert out.shape == (T, (1 + bidirectional) * H) and h_n.shape == (L * (1 + bidirectional), H)
    assert_close(out, want_out, dtype)
    assert_close(h_n, want_hn, dtype)
    # lengths for one sequence: a scalar or a (1,) array; T gives the full result
    out2, h_n2 = dg.gru(x, dg.GRUParams.from_torch(m), h0=h0, lengths=np.array(T))
    assert np.array_equal(out2, out) and np.array_equal(h_n2, h_n)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_length_zero(rng, dtype, bidirectional):
    """torch cannot pack length 0: compare with reference.gru, and check the semantics."""
    T, B, I, H, L = 4, 3, 3, 5, 2
    p = dg.GRUParams.random(I, H, num_layers=L, bidirectional=bidirectional, dtype=dtype, seed=3)
    x, h0 = inputs(rng, T, B, I, L * p.num_directions, H, dtype)
    lengths = np.array([2, 0, T])
    out, h_n = dg.gru(x, p, h0=h0, lengths=lengths)
    want_out, want_hn = reference.gru(x, p, h0=h0, lengths=lengths)
    assert_close(out, want_out.astype(dtype), dtype)
    assert_close(h_n, want_hn.astype(dtype), dtype)
    assert np.all(out[:, 1] == 0)
    assert np.array_equal(h_n[:, 1], h0[:, 1])
    # the other sequences are what torch gives for them alone
    m = make_gru(I, H, L, bidirectional, dtype=dtype)
    keep = np.array([0, 2])
    want_out, want_hn = run_torch(m, x[:, keep], h0[:, keep], lengths[keep])
    out, h_n = dg.gru(x, dg.GRUParams.from_torch(m), h0=h0, lengths=lengths)
    assert_close(out[:, keep], want_out, dtype)
    assert_close(h_n[:, keep], want_hn, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_gru_cell_step(rng, dtype, bias):
    B, I, H = 3, 4, 5
    torch.manual_seed(1)
    cell = torch.nn.GRUCell(I, H, bias=bias, dtype=TORCH_DTYPE[dtype])
    p = dg.GRUParams.from_torch(cell)
    assert (p.input_size, p.hidden_size, p.num_layers, p.bidirectional, p.bias) == (
        I, H, 1, False, bias)
    x, h = rng.normal(size=(B, I)).astype(dtype), rng.normal(size=(B, H)).astype(dtype)
    with torch.no_grad():
        want = cell(torch.from_numpy(x), torch.from_numpy(h)).numpy()
    out, h_n = dg.gru(x[None], p, h0=h[None])
    assert_close(out[0], want, dtype)
    assert np.array_equal(h_n[0], out[0])


def numpy_state_dict(m):
    return {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("L,bidirectional,bias", ARCHS)
def test_state_dict_round_trip(dtype, L, bidirectional, bias):
    src = make_gru(3, 4, L, bidirectional, bias, dtype, seed=5)
    want = numpy_state_dict(src)
    for obj in (src, want):  # a module, and a plain state_dict of NumPy arrays
        sd = dg.GRUParams.from_torch(obj).to_torch_state_dict()
        assert sorted(sd) == sorted(want)
        assert all(np.array_equal(sd[k], want[k]) and sd[k].dtype == want[k].dtype for k in sd)
        dst = make_gru(3, 4, L, bidirectional, bias, dtype, seed=6)
        dst.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        got = numpy_state_dict(dst)
        assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_prefaulted_outputs_change_no_bits(rng, monkeypatch, cell):
    """Large new arrays have their pages mapped before the kernels fill them
    (daskgru.layout.output); the kernels write every element they return. Whether pages
    are touched first, or every new array starts as NaN, every output, state and gradient
    has the same bits (and no NaN)."""
    from daskgru import layout

    T, B, I, H = 40, 9, 5, 12
    x = rng.standard_normal((T, B, I)).astype("float32")
    lengths = np.array([40, 3, 17, 40, 0, 25, 40, 1, 39])
    p = (dg.GRUParams if cell == "gru" else dg.LSTMParams).random(
        I, H, num_layers=2, bidirectional=True, seed=1, dtype="float32")
    run, back = (dg.gru, dg.gru_backward) if cell == "gru" else (dg.lstm, dg.lstm_backward)
    d_out = rng.standard_normal((T, B, 2 * H)).astype("float32")

    def everything():
        out = run(x, p, lengths=lengths)
        grads, d_x, *_ = back(x, p, d_out, lengths=lengths)
        states = [out[1]] if cell == "gru" else list(out[1])
        flat = [out[0], *states, d_x]
        return flat + [np.asarray(a) for lay in grads.layers for w in lay.weights for a in w]

    class NaNFirst:  # layout's numpy, whose new arrays start as NaN
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def empty(shape, dtype):
            return np.full(shape, np.nan, dtype)

    monkeypatch.setattr(layout, "PREFAULT_BYTES", 1 << 62)
    plain = everything()
    monkeypatch.setattr(layout, "PREFAULT_BYTES", 0)  # every new array touched first
    touched = everything()
    monkeypatch.setattr(layout, "np", NaNFirst())  # every new array NaN before the kernels
    poisoned = everything()
    for a, b, c in zip(plain, touched, poisoned):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        assert not np.isnan(c).any()
    monkeypatch.undo()
    big = layout.output((3, 1 << 20), np.float32)
    assert big.shape == (3, 1 << 20) and big.dtype == np.float32 and big.flags.c_contiguous
    assert not big.reshape(-1)[::1024].any()  # one write a page
