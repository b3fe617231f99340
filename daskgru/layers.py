"""Per-step layers: what a model applies to every step on its own, before the recurrent
stack (input scaling, an embedding network) and after it (the head, output un-scaling).

Each layer is a small record; :func:`apply` runs a sequence of them on an array (..., n).
Every output element is computed by one fixed sequence of operations whatever the number of
rows in a call (products through :func:`daskgru.kernels.product`, activations and layer
norms elementwise or per row in Numba), so a model's outputs stay bit-identical for any
chunking, like the recurrent stack's.

Activations: ``linear``, ``relu``, ``tanh``, ``sigmoid``, ``softplus`` (``log(1 + e^x)``),
``elu``, ``gelu`` (exact, with erf), ``silu``, ``exp``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from numba.extending import overload

from .kernels.jit import build, kernel, sigmoid, tanh, typed, vexp
from .kernels.tiles import call_product
from .layout import writable

__all__ = ["Dense", "Scale", "Activation", "LayerNorm", "apply", "ACTIVATIONS"]

ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "softplus", "elu", "gelu", "silu", "exp")


class Dense(NamedTuple):
    """``activation(x @ w + b)``: w (n_in, n_out), b (n_out,); ``activation`` one name for
    every output, or one per output (a layer that is two networks side by side)."""

    w: np.ndarray
    b: np.ndarray
    activation: str = "linear"


class Scale(NamedTuple):
    """Per feature ``(x - center) / scale`` (a scaler's normalisation, Keras's
    ``Normalization``), or with ``invert`` its inverse ``x * scale + center`` (output
    un-scaling). Written as the sources compute it, so that the bits follow theirs."""

    center: np.ndarray
    scale: np.ndarray
    invert: bool = False

    @classmethod
    def normalize(cls, center, scale):
        """(x - center) / scale."""
        return cls(np.asarray(center, np.float64), np.asarray(scale, np.float64), False)

    @classmethod
    def unscale(cls, center, scale):
        """x * scale + center (the inverse of :meth:`normalize`)."""
        return cls(np.asarray(center, np.float64), np.asarray(scale, np.float64), True)


class Activation(NamedTuple):
    """An activation on its own (Keras's ``Activation`` layer, a torch activation module)."""

    activation: str


class LayerNorm(NamedTuple):
    """``(x - mean) / sqrt(var + eps) * gamma + beta`` over the features of each step."""

    gamma: np.ndarray
    beta: np.ndarray
    eps: float = 1e-5


def check(layers, n_in, where):
    """Check sizes and values of a sequence of layers fed ``n_in`` features."""
    out = []
    for i, lay in enumerate(layers):
        name = f"{where} layer {i} ({type(lay).__name__})"
        if isinstance(lay, Dense):
            w, b = np.asarray(lay.w), np.asarray(lay.b)
            if w.ndim != 2 or w.shape[0] != n_in or b.shape != (w.shape[1],):
                raise ValueError(f"{name}: w must have shape ({n_in}, n_out) and b (n_out,), "
                                 f"got {w.shape} and {b.shape}")
            acts = ((lay.activation,) if isinstance(lay.activation, str)
                    else tuple(lay.activation))
            bad = [a for a in acts if a not in ACTIVATIONS]
            if bad or len(acts) not in (1, w.shape[1]):
                raise ValueError(f"{name}: activation {lay.activation!r} must be one of "
                                 f"{ACTIVATIONS}, or one of them per output ({w.shape[1]})")
            lay = lay._replace(activation=acts[0] if len(acts) == 1 else acts)
            arrays = (w, b)
            n_in = w.shape[1]
        elif isinstance(lay, Scale):
            arrays = tuple(np.broadcast_to(np.asarray(a, np.float64), (n_in,)).copy()
                           for a in lay[:2])
            if not lay.invert and np.any(arrays[1] == 0):
                raise ValueError(f"{name}: a scale of 0 (a constant feature) would divide by 0")
            lay = Scale(*arrays, bool(lay.invert))
        elif isinstance(lay, Activation):
            if lay.activation not in ACTIVATIONS:
                raise ValueError(f"{name}: activation {lay.activation!r} is not one of "
                                 f"{ACTIVATIONS}")
            arrays = ()
        elif isinstance(lay, LayerNorm):
            arrays = (np.asarray(lay.gamma), np.asarray(lay.beta))
            if any(a.shape != (n_in,) for a in arrays) or not lay.eps >= 0:
                raise ValueError(f"{name}: gamma and beta must have shape ({n_in},) and eps "
                                 f"be >= 0, got {[a.shape for a in arrays]}, {lay.eps}")
        else:
            raise TypeError(f"{where} layer {i}: not a per-step layer: {type(lay).__name__}")
        if not all(np.all(np.isfinite(a)) for a in arrays):
            raise ValueError(f"{name} holds NaN or infinite values")
        out.append(lay)
    return out, n_in


def cast(layers, dtype):
    """The layers with their arrays in ``dtype``, contiguous (what the kernels take)."""
    c = np.ascontiguousarray
    out = []
    for lay in layers:
        if isinstance(lay, Dense):
            out.append(Dense(c(lay.w, dtype=dtype), c(lay.b, dtype=dtype), lay.activation))
        elif isinstance(lay, Scale):
            out.append(Scale(c(lay.center, dtype=dtype), c(lay.scale, dtype=dtype), lay.invert))
        elif isinstance(lay, Activation):
            out.append(lay)
        else:
            out.append(LayerNorm(c(lay.gamma, dtype=dtype), c(lay.beta, dtype=dtype),
                                 float(lay.eps)))
    return out


@numba.njit(inline="always")
def _act(v, kind):
    one, zero = typed_one(v), v - v
    if kind == 1:
        return max(v, zero)
    if kind == 2:
        return tanh(v)
    if kind == 3:
        return sigmoid(v)
    if kind == 4:  # log(1 + e^v), stable: v + log(1 + e^-v) for v > 0
        return max(v, zero) + math.log1p(vexp(-abs(v)))
    if kind == 5:
        return v if v > zero else vexp(v) - one
    if kind == 6:
        half = one / (one + one)
        return half * v * (one + math.erf(v * typed_sqrt_half(v)))
    if kind == 7:
        return v * sigmoid(v)
    if kind == 8:
        return vexp(v)
    return v


def typed_one(v):
    return type(v)(1)


@overload(typed_one, inline="always")
def _typed_one(v):
    t = v
    return lambda v: t(1)


def typed_sqrt_half(v):
    return type(v)(math.sqrt(0.5))


@overload(typed_sqrt_half, inline="always")
def _typed_sqrt_half(v):
    t = v
    c = math.sqrt(0.5)
    return lambda v: t(c)


@build
def _k(cache_key):
    i64 = numba.int64

    @kernel(lambda f: numba.void(f[:, ::1], f[:, ::1], f[::1], i64[::1], f[:, ::1],
                                 numba.boolean))
    def dense(x, w, b, kinds, out, fma):
        """out = act_j(b + x @ w) for every row of x (N, n_in); kinds[j] names act_j."""
        cache_key  # noqa: B018
        call_product(x, int(0), x.shape[0], w, b, int(0), w.shape[1], out, int(0), fma)
        if np.any(kinds != 0):
            for i in range(out.shape[0]):
                for j in range(out.shape[1]):
                    out[i, j] = _act(out[i, j], kinds[j])

    @kernel(lambda f: numba.void(f[:, ::1], f[::1], f[::1], f, f[:, ::1]))
    def layer_norm(x, gamma, beta, eps, out):
        """Per row: mean and variance in index order, then the affine map."""
        cache_key  # noqa: B018
        n = x.shape[1]
        inv_n = typed(x, 1) / typed(x, n)
        for i in range(x.shape[0]):
            m = typed(x, 0)
            for j in range(n):
                m += x[i, j]
            m = m * inv_n
            v = typed(x, 0)
            for j in range(n):
                d = x[i, j] - m
                v += d * d
            r = typed(x, 1) / math.sqrt(v * inv_n + eps)
            for j in range(n):
                out[i, j] = (x[i, j] - m) * r * gamma[j] + beta[j]

    @kernel(lambda f: numba.void(f[:, ::1], f[::1], f[::1], numba.boolean, f[:, ::1]))
    def affine(x, center, scale, invert, out):
        """out = (x - center) / scale per feature, or x * scale + center with invert."""
        cache_key  # noqa: B018
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                if invert:
                    out[i, j] = x[i, j] * scale[j] + center[j]
                else:
                    out[i, j] = (x[i, j] - center[j]) / scale[j]

    @kernel(lambda f: numba.void(f[:, ::1], i64, f[:, ::1]))
    def activation(x, kind, out):
        """out = act(x) elementwise."""
        cache_key  # noqa: B018
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                out[i, j] = _act(x[i, j], kind)

    return dense, layer_norm, affine, activation


def apply(layers, x, fma=True):
    """The layers (cast to x's dtype beforehand, :func:`cast`) on x (..., n_in); ``fma``:
    the products' numerics (:mod:`daskgru.numerics`, resolved by the caller)."""
    if not layers:
        return x
    lead = x.shape[:-1]
    a = writable(x).reshape(-1, x.shape[-1])
    dense, layer_norm, affine, activation = _k
    for lay in layers:
        if isinstance(lay, Dense):
            n = lay.w.shape[1]
            acts = [lay.activation] * n if isinstance(lay.activation, str) else lay.activation
            out = np.empty((a.shape[0], n), a.dtype)
            dense(a, lay.w, lay.b, np.array([ACTIVATIONS.index(k) for k in acts], np.int64), out,
                  bool(fma))
        elif isinstance(lay, Scale):
            out = np.empty_like(a)
            affine(a, lay.center, lay.scale, lay.invert, out)
        elif isinstance(lay, Activation):
            out = np.empty_like(a)
            activation(a, ACTIVATIONS.index(lay.activation), out)
        else:
            out = np.empty_like(a)
            layer_norm(a, lay.gamma, lay.beta, a.dtype.type(lay.eps), out)
        a = out
    return a.reshape(*lead, a.shape[-1])
