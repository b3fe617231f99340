"""Bad input is refused up front with a ValueError/TypeError naming the argument and sizes."""
import numpy as np
import pytest

import daskgru as dg
from daskgru.cells import GRUCell, LSTMCell, base
from daskgru.params import GRUWeights

T, B, I, H, L = 5, 3, 4, 6, 2
P = dg.GRUParams.random(I, H, num_layers=L, bidirectional=True, seed=0)  # L*D = 4


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Validation must happen before any kernel runs."""
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel ran before the input was validated")

    monkeypatch.setattr(base, "_project_kernel", refuse)
    for cell in (GRUCell, LSTMCell):
        monkeypatch.setattr(cell, "scan", refuse)


class FakeTensor:
    """Shaped like a torch tensor, with a dtype NumPy does not know."""
    shape, dtype = (T, B, I), "fake.float32"


def x_(shape=(T, B, I), dtype="float32"):
    return np.zeros(shape, dtype)


CALL_ERRORS = [
    # (kwargs of dg.gru, exception, pattern naming the argument and expected vs given)
    (dict(x=x_((T, B, I + 1))), ValueError, r"x has input size 5 .*p\.input_size is 4"),
    (dict(x=x_((T, B, I + 1)), batch_first=True), ValueError, r"input size 5 .*input_size is 4"),
    (dict(x=x_((T * B * I,))), ValueError, r"x must be 3-D \(T, B, I\) or 2-D \(T, I\), got shape \(60,\)"),
    (dict(x=x_((1, T, B, I)), batch_first=True), ValueError, r"x must be 3-D \(B, T, I\).*got shape \(1, 5, 3, 4\)"),
    (dict(h0=x_((4, B + 1, H))), ValueError, r"h0 must have shape \(4, 3, 6\).*got \(4, 4, 6\)"),
    (dict(h0=x_((2, B, H))), ValueError, r"h0 must have shape \(4, 3, 6\).*got \(2, 3, 6\)"),
    (dict(h0=x_((4, H))), ValueError, r"h0 must have shape \(4, 3, 6\).*got \(4, 6\)"),
    (dict(x=x_((T, I)), h0=x_((4, 1, H))), ValueError, r"h0 must have shape \(4, 6\).*got \(4, 1, 6\)"),
    (dict(h0=[[0.0]]), ValueError, r"h0 must have shape \(4, 3, 6\).*got a list without a shape"),
    (dict(h0=np.zeros((4, B, H), int)), TypeError, r"h0 must hold real floating-point .*int64"),
    (dict(lengths=np.array([T, -1, 2])), ValueError, r"lengths must lie in 0\.\.5 .*got \[-1\]"),
    (dict(lengths=np.array([T + 1, 1, 7])), ValueError, r"lengths must lie in 0\.\.5 .*got \[6, 7\]"),
    (dict(lengths=np.array([T, T])), ValueError, r"lengths must have shape \(3,\).*got \(2,\)"),
    (dict(lengths=np.full((B, 1), T)), ValueError, r"lengths must have shape \(3,\).*got \(3, 1\)"),
    (dict(lengths=[T, 1, 2, 3]), ValueError, r"lengths must have shape \(3,\).*got \(4,\)"),
    (dict(lengths=np.array([5.0, 1.0, 2.0])), TypeError, r"lengths must be integers, got dtype float64"),
    (dict(lengths=[5.0, 1.0, 2.0]), TypeError, r"lengths must be integers, got dtype float64"),
    (dict(lengths=np.ones(B, bool)), TypeError, r"lengths must be integers, got dtype bool"),
    (dict(x=x_(dtype="int64")), TypeError, r"x must hold real floating-point numbers, got dtype int64"),
    (dict(x=x_(dtype="bool")), TypeError, r"x must hold real floating-point numbers, got dtype bool"),
    (dict(x=x_(dtype="complex128")), TypeError, r"x must hold real floating-point numbers, got dtype complex128"),
    (dict(x=x_(dtype="object")), TypeError, r"x must hold real floating-point numbers, got dtype object"),
    (dict(x=[[[0.0] * I] * B] * T), TypeError, r"x must be an array, got list"),
    (dict(x=FakeTensor()), TypeError, r"x must be a NumPy or dask array .*got dtype 'fake\.float32'"),
    (dict(method="magic"), ValueError, r"method must be one of \('scan', 'speculative', 'newton', 'auto'\), got 'magic'"),
    (dict(p={"weight_ih_l0": 0}), TypeError, r"p must be a GRUParams, got dict"),
]


@pytest.mark.parametrize("kwargs,exc,match", CALL_ERRORS)
def test_gru_refuses(kwargs, exc, match):
    kwargs = dict(dict(x=x_(), p=P), **kwargs)
    with pytest.raises(exc, match=match):
        dg.gru(kwargs.pop("x"), kwargs.pop("p"), **kwargs)


def weights(**change):
    """Weights of a 2-layer bidirectional model with some arrays replaced:
    change={'l1_backward_w_hh': array}."""
    out = [[w._asdict() for w in layer] for layer in P.weights]
    for key, a in change.items():
        l, d, field = key.split("_", 2)
        out[int(l[1])][("forward", "backward").index(d)][field] = a
    return [[GRUWeights(**w) for w in layer] for layer in out]


nan_b = np.zeros(3 * H)
nan_b[4] = np.nan
PARAM_ERRORS = [
    (dict(l0_forward_w_hh=np.zeros((3 * H, H + 1))), r"layer 0 forward: w_hh must have shape \(3 \* hidden_size, hidden_size\).*got \(18, 7\)"),
    (dict(l1_forward_w_hh=np.zeros((3 * H, H + 1))), r"layer 1 forward: w_hh must have shape \(18, 6\), got \(18, 7\)"),
    (dict(l1_backward_b_ih=np.zeros(3 * H - 1)), r"layer 1 backward: b_ih must have shape \(18,\), got \(17,\)"),
    (dict(l1_forward_w_ih=np.zeros((3 * H, H))), r"layer 1 forward: w_ih must have shape \(18, 12\), got \(18, 6\)"),
    (dict(l0_backward_w_ih=np.zeros((3 * H, I + 1))), r"layer 0 backward: w_ih must have shape \(18, 4\), got \(18, 5\)"),
    (dict(l0_forward_w_ih=np.zeros(3 * H)), r"layer 0 forward: w_ih must have shape \(18, input_size\), got \(18,\)"),
    (dict(l1_backward_b_hh=nan_b), r"layer 1 backward: b_hh holds NaN or infinite values"),
    (dict(l0_forward_w_hh=np.full((3 * H, H), np.inf)), r"layer 0 forward: w_hh holds NaN or infinite"),
]


@pytest.mark.parametrize("change,match", PARAM_ERRORS)
def test_params_refuse_inconsistent_or_nan(change, match):
    with pytest.raises(ValueError, match=match):
        dg.GRUParams(weights(**change))


def test_params_refuse_bad_structure():
    with pytest.raises(ValueError, match="at least one layer"):
        dg.GRUParams([])
    with pytest.raises(ValueError, match="1 or 2 directions, got 3"):
        dg.GRUParams([[P.weights[0][0]] * 3])
    with pytest.raises(ValueError, match="layer 1 has 1 directions, layer 0 has 2"):
        dg.GRUParams([P.weights[0], P.weights[1][:1]])
    with pytest.raises(ValueError, match="bias=False but some bias arrays are non-zero"):
        dg.GRUParams(P.weights, bias=False)
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int64"):
        dg.GRUParams(P.weights, dtype="int64")


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_size=0), r"input_size must be a positive integer, got 0"),
    (dict(hidden_size=2.5), r"hidden_size must be a positive integer, got 2\.5"),
    (dict(num_layers=-1), r"num_layers must be a positive integer, got -1"),
    (dict(dtype="float16"), r"dtype must be float32 or float64, got float16"),
])
def test_random_refuses(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dg.GRUParams.random(**dict(dict(input_size=3, hidden_size=4), **kwargs))


def test_from_cho_refuses():
    W, b = np.zeros((H, H + I)), np.zeros(H)
    with pytest.raises(ValueError, match=r"W_r must have shape \(6, 10\), got \(6, 9\)"):
        dg.GRUParams.from_cho(W, W[:, :-1], W, b, b, b)
    with pytest.raises(ValueError, match=r"b must have shape \(6,\), got \(5,\)"):
        dg.GRUParams.from_cho(W, W, W, b, b, b[:-1])
    with pytest.raises(ValueError, match=r"W_z must have shape \(H, H \+ I\) with I >= 1"):
        dg.GRUParams.from_cho(W[:, :H], W, W, b, b, b)


def test_from_keras_weights_refuse():
    k, rk = np.zeros((I, 3 * H)), np.zeros((H, 3 * H))
    with pytest.raises(ValueError, match=r"reset_after=True needs bias \(2, 18\), got \(18,\)"):
        dg.GRUParams.from_keras([k, rk, np.zeros(3 * H)])
    with pytest.raises(ValueError, match=r"reset_after=False needs bias \(18,\), got \(2, 18\)"):
        dg.GRUParams.from_keras([k, rk, np.zeros((2, 3 * H))], reset_after=False)
    with pytest.raises(ValueError, match=r"recurrent_kernel \(H, 3H\) expected, got \(4, 18\) and \(6, 6\)"):
        dg.GRUParams.from_keras([k, rk[:, :H]])


def test_dask_x_of_unknown_size_is_named():
    import dask.array as da

    x = da.ones((10, 3, 2), chunks=5)
    x = x[x[:, 0, 0] > 0]
    with pytest.raises(ValueError, match=r"x has unknown size.*compute_chunk_sizes"):
        dg.gru(x, dg.GRUParams.random(2, 3))
