"""The Numba path of daskgru.gru against the plain NumPy oracles in daskgru.reference."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import daskgru as dg
from daskgru import eager, reference
from conftest import TOL

F32, F64 = np.dtype("float32"), np.dtype("float64")


def cho_weights(rng, I, H, scale=0.7):
    """(W_z, W_r, W, b_z, b_r, b) of the seed's equations, weights against [h, x]."""
    return tuple(rng.uniform(-scale, scale, size=s) for s in [(H, H + I)] * 3 + [(H,)] * 3)


@pytest.mark.parametrize("T,I,H", [(1, 1, 1), (7, 3, 4), (12, 5, 2)])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
def test_seed_formula(rng, T, I, H, with_h0):
    """The seed's equations, literally, against from_cho + the kernels (and reference.gru)."""
    cho = cho_weights(rng, I, H)
    x = rng.normal(size=(T, I))
    h0 = rng.normal(size=H) if with_h0 else None
    want = reference.cho_gru(x, *cho, h0=h0)
    p = dg.GRUParams.from_cho(*cho)
    assert (p.reset_after, p.input_size, p.hidden_size, p.dtype) == (False, I, H, F64)
    hh = None if h0 is None else h0[None, None]
    out, h_n = dg.gru(x[:, None], p, h0=hh)
    np.testing.assert_allclose(out[:, 0], want, **TOL[F64])
    np.testing.assert_allclose(h_n[0, 0], want[-1], **TOL[F64])
    np.testing.assert_allclose(reference.gru(x[:, None], p, h0=hh)[0][:, 0], want, **TOL[F64])


def random_case(rng, T, B, I, H, L, D, reset_after, dtype, lengths=None, h0=True):
    p = dg.GRUParams.random(I, H, num_layers=L, bidirectional=D == 2, reset_after=reset_after,
                            dtype=dtype, seed=int(rng.integers(2**31)))
    x = rng.normal(size=(T, B, I)).astype(dtype)
    h0 = rng.normal(scale=0.5, size=(L * D, B, H)).astype(dtype) if h0 else None
    return p, x, h0


def check_against_reference(p, x, h0, lengths):
    dtype = x.dtype
    out, h_n = dg.gru(x, p, h0=h0, lengths=lengths)
    want_out, want_hn = reference.gru(x, p, h0=h0, lengths=lengths)
    assert out.dtype == h_n.dtype == dtype
    np.testing.assert_allclose(out, want_out, **TOL[dtype])
    np.testing.assert_allclose(h_n, want_hn, **TOL[dtype])
    return out, h_n


@given(T=st.integers(1, 7), B=st.integers(1, 4), I=st.integers(1, 4), H=st.integers(1, 5),
       L=st.integers(1, 3), D=st.sampled_from([1, 2]), reset_after=st.booleans(),
       with_h0=st.booleans(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_kernels_match_reference(T, B, I, H, L, D, reset_after, with_h0, seed, data):
    rng = np.random.default_rng(seed)
    p, x, h0 = random_case(rng, T, B, I, H, L, D, reset_after, F64, h0=with_h0)
    lengths = data.draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B))
    lengths = None if lengths is None else np.array(lengths)
    out, h_n = check_against_reference(p, x, h0, lengths)
    # results do not depend on the eager time blocking
    block = data.draw(st.integers(1, T))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eager, "EAGER_BLOCK", block)
        out_b, h_n_b = dg.gru(x, p, h0=h0, lengths=lengths)
    assert np.array_equal(out_b, out) and np.array_equal(h_n_b, h_n)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("L,D", [(1, 1), (2, 2), (3, 1)])
def test_float32_matches_reference(rng, reset_after, L, D):
    p, x, h0 = random_case(rng, 8, 5, 3, 6, L, D, reset_after, F32)
    check_against_reference(p, x, h0, np.array([8, 0, 1, 5, 7]))


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("reset_after", [True, False])
def test_huge_inputs_stay_finite(rng, dtype, reset_after):
    p, x, h0 = random_case(rng, 6, 4, 3, 5, 2, 2, reset_after, dtype)
    x = np.sign(x) * dtype.type(1e30)
    out, h_n = dg.gru(x, p, h0=h0)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(h_n))
    assert np.all(np.abs(out) <= 1 + np.abs(h0).max())
    with np.errstate(over="ignore"):  # reference's sigmoid overflows exp to inf, giving 0
        want_out, want_hn = reference.gru(x, p, h0=h0)
    np.testing.assert_allclose(out, want_out, **TOL[dtype])
    np.testing.assert_allclose(h_n, want_hn, **TOL[dtype])


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("D", [1, 2])
def test_nan_stays_in_its_sequence(rng, dtype, reset_after, D):
    T, B, t_nan, b_nan = 6, 5, 2, 1
    p, x, h0 = random_case(rng, T, B, 3, 4, 2, D, reset_after, dtype)
    clean_out, clean_hn = dg.gru(x, p, h0=h0)
    x[t_nan, b_nan, 0] = np.nan
    out, h_n = dg.gru(x, p, h0=h0)
    others = np.arange(B) != b_nan
    assert np.array_equal(out[:, others], clean_out[:, others])
    assert np.array_equal(h_n[:, others], clean_hn[:, others])
    assert np.all(np.isnan(h_n[:, b_nan]))
    if D == 1:  # NaN from its step on, not before
        assert np.all(np.isnan(out[t_nan:, b_nan])) and np.all(np.isfinite(out[:t_nan, b_nan]))
    else:  # layer 0's two directions put NaN into every step of layer 1's input
        assert np.all(np.isnan(out[:, b_nan]))


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("D", [1, 2])
def test_nan_in_padding_is_never_read(rng, reset_after, D):
    """As with packed sequences, steps past a sequence's length do not affect anything."""
    T, B = 6, 3
    p, x, h0 = random_case(rng, T, B, 3, 4, 2, D, reset_after, F64)
    lengths = np.array([T, 2, 0])
    clean = dg.gru(x, p, h0=h0, lengths=lengths)
    x[2:, 1] = np.nan
    x[:, 2] = np.nan
    for a, b in zip(dg.gru(x, p, h0=h0, lengths=lengths), clean):
        assert np.array_equal(a, b)


def test_float16_computes_in_float32(rng):
    p, x, h0 = random_case(rng, 5, 3, 3, 4, 2, 2, True, F32)
    x16 = x.astype("float16")
    out, h_n = dg.gru(x16, p, h0=h0)
    want_out, want_hn = dg.gru(x16.astype(F32), p, h0=h0)
    assert out.dtype == h_n.dtype == F32
    assert np.array_equal(out, want_out) and np.array_equal(h_n, want_hn)
