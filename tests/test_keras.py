"""daskgru.gru against Keras 3 GRU layers (NumPy backend), and the Keras weight converters."""
import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

import daskgru as dg  # noqa: E402
from conftest import TOL  # noqa: E402

DTYPES = [np.dtype("float32"), np.dtype("float64")]
B, T, I, H = 3, 6, 4, 5


def make_gru(dtype, reset_after=True, use_bias=True, seed=0, input_size=I):
    """A built Keras GRU returning the whole sequence and the final state."""
    init = dict(kernel_initializer=keras.initializers.RandomUniform(-0.6, 0.6, seed=seed),
                recurrent_initializer=keras.initializers.RandomUniform(-0.6, 0.6, seed=seed + 1),
                bias_initializer=keras.initializers.RandomUniform(-0.6, 0.6, seed=seed + 2))
    layer = keras.layers.GRU(H, reset_after=reset_after, use_bias=use_bias, dtype=str(dtype),
                             return_sequences=True, return_state=True, **init)
    return built(layer, dtype, input_size)


def make_bidirectional(dtype, reset_after=True, use_bias=True, seed=0, input_size=I):
    layer = keras.layers.Bidirectional(make_gru(dtype, reset_after, use_bias, seed, input_size),
                                       merge_mode="concat", dtype=str(dtype))
    return built(layer, dtype, input_size)


def built(layer, dtype, input_size):
    layer.build((None, None, input_size))
    # Keras' NumPy backend initialises float64 variables with float32 values: store float64.
    layer.set_weights([w.astype(dtype) for w in layer.get_weights()])
    return layer


def run_keras(layers, x, h0=None):
    """Apply layers in turn; returns the top output and all final states as h_n."""
    states = []
    for k, layer in enumerate(layers):
        init = None if h0 is None else [h0[k]]
        x, *st = layer(x, initial_state=init)
        states += st
    return np.asarray(x), np.stack([np.asarray(s) for s in states])


def assert_close(actual, desired, dtype):
    assert actual.dtype == dtype and actual.shape == desired.shape
    # Keras' NumPy backend computes sigmoid in float32 even for float64 layers
    # (keras.src.backend.numpy.nn.sigmoid returns float32), so Keras is float32-accurate only.
    np.testing.assert_allclose(actual, desired, **TOL[np.dtype("float32")])


def check(layers, p, rng, dtype, with_h0=False):
    x = rng.normal(size=(B, T, I)).astype(dtype)
    h0 = rng.normal(scale=0.5, size=(len(layers), B, H)).astype(dtype) if with_h0 else None
    want_out, want_hn = run_keras(layers, x, h0)
    out, h_n = dg.gru(x, p, h0=h0, batch_first=True)
    assert_close(out, want_out, dtype)
    assert_close(h_n, want_hn, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("use_bias", [True, False])
def test_gru_layer(rng, dtype, reset_after, use_bias):
    layer = make_gru(dtype, reset_after, use_bias)
    for p in (dg.GRUParams.from_keras(layer),
              dg.GRUParams.from_keras(layer.get_weights(), reset_after=reset_after)):
        assert (p.reset_after, p.bias, p.dtype, p.input_size, p.hidden_size) == (
            reset_after, use_bias, dtype, I, H)
        check([layer], p, rng, dtype, with_h0=reset_after)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reset_after", [True, False])
def test_bidirectional(rng, dtype, reset_after):
    layer = make_bidirectional(dtype, reset_after)
    p = dg.GRUParams.from_keras(layer)
    assert (p.bidirectional, p.num_layers, p.reset_after, p.dtype) == (True, 1, reset_after, dtype)
    check([layer], p, rng, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked(rng, dtype, bidirectional):
    make = make_bidirectional if bidirectional else make_gru
    D = 1 + bidirectional
    layers = [make(dtype, seed=0), make(dtype, seed=10, input_size=D * H),
              make(dtype, seed=20, input_size=D * H)]
    p = dg.GRUParams.from_keras(layers)
    assert (p.num_layers, p.bidirectional, p.dtype) == (3, bidirectional, dtype)
    check(layers, p, rng, dtype)


@pytest.mark.parametrize("reset_after", [True, False])
def test_stacked_mixed_bias(rng, reset_after):
    dtype = np.dtype("float32")
    layers = [make_gru(dtype, reset_after, use_bias=True, seed=0),
              make_gru(dtype, reset_after, use_bias=False, seed=10, input_size=H)]
    p = dg.GRUParams.from_keras(layers)
    assert p.bias and not np.any(p.weights[1][0].b_ih) and not np.any(p.weights[1][0].b_hh)
    check(layers, p, rng, dtype)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("use_bias", [True, False])
def test_to_keras_weights_round_trip(rng, reset_after, use_bias):
    dtype = np.dtype("float32")
    src = make_gru(dtype, reset_after, use_bias, seed=0)
    dst = make_gru(dtype, reset_after, use_bias, seed=50)
    weights = dg.GRUParams.from_keras(src).to_keras_weights()
    assert all(np.array_equal(a, b) for a, b in zip(weights, src.get_weights(), strict=True))
    dst.set_weights(weights)
    x = rng.normal(size=(B, T, I)).astype(dtype)
    assert all(np.array_equal(a, b) for a, b in zip(run_keras([src], x), run_keras([dst], x)))


def test_to_keras_weights_of_torch_biases(rng):
    """reset_after=False with biases in both b_ih and b_hh exports their sum (one Keras bias)."""
    dtype = np.dtype("float64")
    p = dg.GRUParams.random(I, H, reset_after=False, dtype=dtype, seed=2)
    layer = make_gru(dtype, reset_after=False, seed=99)
    layer.set_weights(p.to_keras_weights())
    check([layer], p, rng, dtype)


@pytest.mark.parametrize("direction", [0, 1])
def test_to_keras_weights_bidirectional(rng, direction):
    dtype = np.dtype("float64")
    src = make_bidirectional(dtype, seed=0)
    dst = make_bidirectional(dtype, seed=30)
    p = dg.GRUParams.from_keras(src)
    sub = (dst.forward_layer, dst.backward_layer)[direction]
    sub.set_weights(p.to_keras_weights(0, direction))
    other = (dst.forward_layer, dst.backward_layer)[1 - direction]
    other.set_weights(p.to_keras_weights(0, 1 - direction))
    assert dg.GRUParams.from_keras(dst) == p


@pytest.mark.parametrize("make,kwargs,match", [
    (lambda: make_gru(np.dtype("float32"), reset_after=True), dict(reset_after=False),
     "reset_after=False given.*reset_after=True"),
    (lambda: built(keras.layers.GRU(H, go_backwards=True), "float32", I), {}, "go_backwards"),
    (lambda: built(keras.layers.GRU(H, activation="relu"), "float32", I), {}, "activation"),
    (lambda: built(keras.layers.Bidirectional(keras.layers.GRU(H), merge_mode="sum"), "float32",
                   I), {}, "merge_mode"),
])
def test_from_keras_refuses(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dg.GRUParams.from_keras(make(), **kwargs)
