"""GRURegressor: a recurrent stack with a linear readout, trained with MSE and Adam.

The gradient of a training step is :func:`window_grad` on the step's sequences: the eager
forward keeps a tape, the readout's gradient is formed, and the backward through the tape
gives the stack's (:mod:`daskgru.train.backward`). Where the data are decides where it runs:

- NumPy data (:class:`InMemory`): here, or, with an active ``dask.distributed`` client,
  on the workers (the data scattered once, one batch chunk per worker);
- dask data (:class:`Streamed`): next to the data's chunks, one task per chunk of
  sequences that the step's batch touches; the data are never gathered, only the weights
  (one key per step) and the gradient sums travel.

Either way the sums of the parts are added up here and the optimiser steps here.
"""
from __future__ import annotations

import numpy as np

from ..cells import Weights
from ..layers import Dense
from ..layout import is_dask
from ..model import Model
from ..params import GRUParams
from ..stack import float_dtype
from .backward import backward_tape, forward_tape

__all__ = ["GRURegressor", "Adam", "NotFittedError"]


# ----------------------------------------------------------------------------- optimiser
class Adam:
    """Adam (Kingma & Ba 2015) over a flat list of NumPy arrays, updated in place."""

    def __init__(self, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        self.learning_rate, self.beta1, self.beta2, self.eps = learning_rate, beta1, beta2, eps
        self.t = 0
        self.m = self.v = None

    def step(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (self.learning_rate / c1) * m / (np.sqrt(v / c2) + self.eps)
        return params


# ----------------------------------------------------------------------------- data
def _missing(X, Y, skipna):
    """Zero-filled X, Y with NaN where a target does not count, and the valid input steps
    M (n, T) (None without skipna). Checks for infinity and NaN are the caller's."""
    if not skipna:
        return X, Y, None
    nan = np.isnan(X)
    M = ~nan.any(axis=-1)
    return np.where(nan, X.dtype.type(0), X), np.where(M[..., None], Y, np.nan).astype(Y.dtype), M


def _chunk_grad(bundle, Xc, Yc, idx, skipna, h0):
    """:func:`window_grad` on one chunk of sequences (rows ``idx`` of it, every step of
    it), with the missing-data rules applied to the chunk."""
    dt = bundle[1].dtype
    Xc, Yc, M = _missing(np.asarray(Xc, dtype=dt), np.asarray(Yc, dtype=dt), skipna)
    return window_grad(bundle, Xc, Yc, M, idx, 0, Xc.shape[1], h0)


def _add(results):
    """The sums of the parts' (loss, count, grads, final states); states in part order."""
    loss = sum(r[0] for r in results)
    count = sum(r[1] for r in results)
    grads = [sum((r[2][i] for r in results[1:]), results[0][2][i].copy())
             for i in range(len(results[0][2]))]
    return loss, count, grads, np.concatenate([r[3] for r in results], axis=1)


class InMemory:
    """Training data in memory: gradients here, or on the workers of an active client
    (the data scattered once; one batch chunk per worker)."""

    def __init__(self, X, Y, M):
        self.X, self.Y, self.M = X, Y, M
        self.client = _active_client()
        if self.client is not None:
            self.nw = max(1, len(self.client.scheduler_info().get("workers", {})))
            self.Xf, self.Yf, self.Mf = self.client.scatter([X, Y, M], broadcast=True)

    def target_mean(self, idx):
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(np.nanmean(self.Y[idx], axis=(0, 1)))

    def grads(self, bundle, idx, t0, t1, h0s):
        nw = self.nw if self.client is not None else 1
        parts = np.array_split(np.arange(len(idx)), min(nw, len(idx)))
        if self.client is not None:
            bf = self.client.scatter(_Bundle(bundle), broadcast=True)
            futs = [self.client.submit(window_grad, bf, self.Xf, self.Yf, self.Mf, idx[c],
                                       t0, t1, None if h0s is None else h0s[:, c], pure=False)
                    for c in parts]
            return _add(self.client.gather(futs))
        return _add([window_grad(bundle, self.X, self.Y, self.M, idx[c], t0, t1,
                                 None if h0s is None else h0s[:, c]) for c in parts])

    def mse(self, flat, L, D, idx):
        return GRURegressor._mse(flat, L, D, self.X[idx], self.Y[idx],
                                 None if self.M is None else self.M[idx])


class Streamed:
    """Training data as dask arrays, never gathered: each step's gradient is one task per
    chunk of sequences its batch touches, given the batch's rows of that chunk (selected
    where the chunk is) and computed on the workers with a ``dask.distributed`` client (in
    threads here without one). The data are checked in one pass first (infinity, NaN
    without skipna, observed targets).

    Every step reads each chunk its batch touches: data read from storage (not persisted)
    are best chunked in a few batches' worth of sequences."""

    def __init__(self, X, Y, dtype, skipna):
        import dask
        import dask.array as da

        X = da.asarray(X).astype(dtype)
        Y = da.asarray(Y).astype(dtype).rechunk({0: X.chunks[0], 1: X.chunks[1], 2: -1})
        X = X.rechunk({2: -1})
        self.X, self.Y, self.skipna = X, Y, skipna
        self.edges = np.r_[0, np.cumsum(X.chunks[0])]
        Yeff = da.where(~da.isnan(X).any(axis=-1)[..., None], Y, np.nan) if skipna else Y
        self._Yeff = Yeff
        checks = [da.isinf(Y).any(), da.isinf(X).any(), (~da.isnan(Yeff)).any()]
        if not skipna:
            checks.append(da.isnan(X).any())
        y_inf, x_inf, observed, *x_nan = dask.compute(*checks)
        if y_inf:
            raise ValueError("y must not hold infinity (NaN marks a missing target)")
        if x_inf:
            raise ValueError("X must not hold infinity")
        if x_nan and x_nan[0]:
            raise ValueError("X holds NaN; pass skipna=True to treat steps with a NaN "
                             "feature as missing")
        if not observed:
            raise ValueError("y has no observed (non-NaN) target at a valid input step")

    def target_mean(self, idx):
        import dask.array as da

        Yt = self._Yeff[np.sort(idx)]
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(np.asarray(da.nanmean(Yt, axis=(0, 1)).compute()))

    def grads(self, bundle, idx, t0, t1, h0s):
        import dask

        b = dask.delayed(bundle, pure=False)  # one key: the weights travel once a step
        tasks, at = [], 0
        for a, e in zip(self.edges[:-1], self.edges[1:]):
            sel = idx[(idx >= a) & (idx < e)]  # idx is sorted: a contiguous run of it
            if not len(sel):
                continue
            h0 = None if h0s is None else h0s[:, at:at + len(sel)]
            at += len(sel)
            # the batch's rows of the chunk, selected where the chunk is: only they travel
            rows = sel - a
            tasks.append(dask.delayed(_chunk_grad, pure=True)(
                b, self.X[a:e, t0:t1][rows], self.Y[a:e, t0:t1][rows], np.arange(len(sel)),
                self.skipna, h0))
        return _add(dask.compute(*tasks))

    def mse(self, flat, L, D, idx):
        import dask
        import dask.array as da

        from ..api import gru

        p = _flat_to_params(flat[:-2], L, D, True, flat[-1].dtype)
        idx = np.sort(idx)
        X, Y = self.X[idx], self._Yeff[idx]
        M = None
        if self.skipna:
            M = ~da.isnan(X).any(axis=-1)
            X = da.where(M[..., None], X, 0)
        out, _ = gru(X, p, batch_first=True, mask=M)
        counted = ~da.isnan(Y)
        res = da.where(counted, out @ flat[-2].T + flat[-1] - Y, 0)
        sq, n = dask.compute((res * res).sum(), counted.sum())
        return float(sq / max(1, n))


# ----------------------------------------------------------------------------- estimator
class NotFittedError(ValueError, AttributeError):
    """The estimator is used before ``fit`` (same bases as scikit-learn's)."""


def _flat_to_params(flat, L, D, reset_after, dtype):
    ws = [[Weights(*flat[4 * (l * D + d): 4 * (l * D + d) + 4]) for d in range(D)]
          for l in range(L)]
    return GRUParams(ws, reset_after=reset_after, bias=True, dtype=dtype)


def _params_to_flat(p):
    return [np.array(a) for layer in p.weights for w in layer for a in w]


class _Bundle:
    """One opaque object for scatter (a list would be scattered element by element)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __getstate__(self):
        return self.value

    def __setstate__(self, state):
        self.value = state


def window_grad(bundle, X, Y, M, idx, t0, t1, h0):
    """Loss and gradient sums of the readout-on-GRU model on sequences ``idx``, steps t0:t1.

    ``bundle.value = (flat GRU arrays, coef, intercept, L, D, reset_after)``; ``Y`` holds
    NaN where a target does not count; ``M`` (n, T) bool marks the valid input steps (None:
    all); ``h0`` the start states (L*D, B, H) (None: zeros). Returns ``(loss_sum, count,
    flat grads (GRU arrays..., coef, intercept), final states (L*D, B, H))`` -- sums over the
    counted targets, not means, so that results of batch chunks add up.
    """
    if isinstance(bundle, _Bundle):
        bundle = bundle.value
    flat, coef, intercept, L, D, reset_after = bundle
    pp = _flat_to_params(flat, L, D, reset_after, coef.dtype)
    dt = pp.dtype
    x = np.ascontiguousarray(X[idx, t0:t1].transpose(1, 0, 2), dtype=dt)
    y = np.asarray(Y[idx, t0:t1], dtype=dt).transpose(1, 0, 2)
    T, B = x.shape[:2]
    H = pp.hidden_size
    states = [np.zeros((B, H), dt) for _ in range(L * D)] if h0 is None else list(h0)
    lengths = np.full(B, T, np.int64)
    zm = (False,) * L
    mask = None if M is None else np.ascontiguousarray(M[idx, t0:t1].T, dtype=np.uint8)
    tape = forward_tape(x, pp, states, lengths, mask, zm)
    out = tape.output
    counted = ~np.isnan(y)
    res = np.where(counted, out @ coef.T + intercept - y, dt.type(0))
    loss = float(np.sum(res * res))
    d_y = 2 * res
    d_coef = np.tensordot(d_y, out, axes=([0, 1], [0, 1]))
    d_int = d_y.sum(axis=(0, 1))
    d_out = np.ascontiguousarray(d_y @ coef)
    grads, _, _ = backward_tape(tape, pp, lengths, mask, zm, d_out,
                                [np.zeros((B, H), dt) for _ in range(L * D)])
    return (loss, int(counted.sum()), [a for g in grads for a in g] + [d_coef, d_int],
            np.concatenate(tape.finals, axis=0))


def _active_client():
    """The default dask.distributed client, if there is one."""
    try:
        from distributed import default_client
    except ImportError:  # distributed is optional
        return None
    try:
        return default_client()
    except ValueError:  # no client
        return None


def _as_array(a, name):
    """NumPy or dask data of an array, xarray DataArray or array-like (no compute for dask)."""
    if a is None:
        raise ValueError(f"{name} must be given")
    if hasattr(a, "dims") and hasattr(a, "data") and hasattr(a, "coords"):
        a = a.data
    if not hasattr(a, "shape"):
        a = np.asarray(a)
    return a


class GRURegressor:
    """Sequence-to-sequence regression: a stacked GRU with a linear readout, trained with
    MSE loss and Adam. Follows scikit-learn's estimator conventions (without needing it).

    Parameters
    ----------
    hidden_size : int
    num_layers : int
    learning_rate : float
        Adam step size.
    max_epochs : int
    batch_size : int
        Sequences per step.
    tbptt : int or None
        Truncated BPTT: take a step every ``tbptt`` time steps, carrying the (detached)
        hidden state into the next window; None backpropagates through whole sequences.
    validation_fraction : float
        Share of the sequences held out for early stopping (0 or None: stop on the
        training loss instead).
    patience : int
        Epochs without improvement of the monitored loss before stopping; the best epoch's
        weights are kept.
    random_state : int or None
    dtype : {"float32", "float64"}
    verbose : bool
        Show a tqdm progress bar with the loss.
    skipna : bool
        Treat an input step with a NaN feature as missing (masked: the state carries across
        it, see :func:`daskgru.gru`'s ``mask``); such a step's target does not count, and
        ``predict``/``transform`` give NaN there. Without it, NaN in X is refused.

    Attributes
    ----------
    model_ : daskgru.Model
        The trained model, GRU and linear readout (batch first): it runs through every
        front end (``apply_rnn``, ``daskgru run``) and saves with ``model_.save(path)``.
    params_ : GRUParams
        The trained GRU (``params_.to_torch_state_dict()`` loads into ``torch.nn.GRU``).
    coef_ : array (n_targets, hidden_size), or (hidden_size,) when y was (n, T)
    intercept_ : array (n_targets,), or a scalar when y was (n, T)
    history_ : dict
        ``"loss"`` (training MSE per epoch) and ``"val_loss"``.
    n_epochs_, best_epoch_, n_features_in_

    Data: X is (n_sequences, T, n_features) and y (n_sequences, T, n_targets) or
    (n_sequences, T), as NumPy, dask or xarray DataArray (dims in that order). A NaN target
    is missing: it counts neither in the loss nor in its normalisation (the mean over the
    observed targets), as hydrological models train on gappy observations; ``score`` counts
    the observed targets only.

    Where training runs follows the data. NumPy data are fitted in memory; with an active
    ``dask.distributed`` Client the gradient of every step is computed on its workers (the
    data scattered once, the weights once per step, one batch chunk per worker). Dask data
    (or an xarray object backed by dask, e.g. opened from zarr) are never gathered: after
    one checking pass, each step's gradient is one task per chunk of sequences its batch
    touches, run where the chunk is; only the weights and the gradient sums travel, so the
    client holds O(weights + one chunk). The batches are the same either way (same
    ``random_state``), so the loss curves agree to rounding. ``predict``/``transform`` stay
    lazy on dask input.

    Examples
    --------
    >>> import numpy as np, daskgru as dg
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(64, 20, 1))
    >>> y = (X[:, :, 0] + np.roll(X[:, :, 0], 1, axis=1)) / 2
    >>> model = dg.GRURegressor(hidden_size=8, max_epochs=3, random_state=0).fit(X, y)
    >>> model.predict(X).shape
    (64, 20)
    """

    def __init__(self, hidden_size=32, num_layers=1, learning_rate=0.01, max_epochs=100,
                 batch_size=32, tbptt=None, validation_fraction=0.1, patience=10,
                 random_state=None, dtype="float32", verbose=False, skipna=False):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.learning_rate = learning_rate
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.tbptt = tbptt
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state
        self.dtype = dtype
        self.verbose = verbose
        self.skipna = skipna

    _estimator_type = "regressor"

    # -------------------------------------------------------------- sklearn protocol
    @classmethod
    def _get_param_names(cls):
        import inspect

        sig = inspect.signature(cls.__init__)
        return sorted(n for n in sig.parameters if n != "self")

    def get_params(self, deep=True):
        return {n: getattr(self, n) for n in self._get_param_names()}

    def set_params(self, **params):
        valid = self._get_param_names()
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"invalid parameter {k!r} for GRURegressor; valid: {valid}")
            setattr(self, k, v)
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"GRURegressor({args})"

    def _check_hyper(self):
        for name in ("hidden_size", "num_layers", "max_epochs", "batch_size", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.tbptt is not None and (int(self.tbptt) != self.tbptt or self.tbptt < 1):
            raise ValueError(f"tbptt must be a positive integer or None, got {self.tbptt!r}")
        if not (self.learning_rate > 0):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        vf = self.validation_fraction or 0.0
        if not 0.0 <= vf < 1.0:
            raise ValueError(f"validation_fraction must lie in [0, 1), got {vf!r}")
        return float_dtype(self.dtype)

    def _check_X(self, X, fitted=True):
        X = _as_array(X, "X")
        if X.ndim != 3:
            raise ValueError(f"X must be 3-D (n_sequences, T, n_features), got shape {X.shape}")
        if fitted and X.shape[2] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[2]} features (last axis), the model was fitted with "
                f"{self.n_features_in_}")
        return X

    def _check_fitted(self):
        if not hasattr(self, "params_"):
            raise NotFittedError("this GRURegressor is not fitted yet; call fit first")

    # -------------------------------------------------------------- fit
    def fit(self, X, y):
        """Train on X (n, T, F) and y (n, T, n_targets) or (n, T); returns self."""
        dt = self._check_hyper()
        X = self._check_X(X, fitted=False)
        y = _as_array(y, "y")
        if y.ndim not in (2, 3) or tuple(y.shape[:2]) != tuple(X.shape[:2]):
            raise ValueError(
                f"y must have shape (n_sequences, T) or (n_sequences, T, n_targets) with "
                f"n_sequences, T = {tuple(X.shape[:2])} as in X, got {tuple(y.shape)}")
        self._y_1d = y.ndim == 2
        n, T, F = X.shape
        rng = np.random.default_rng(self.random_state)
        n_val = int(round((self.validation_fraction or 0.0) * n))
        n_val = n_val if 0 < n_val < n else 0
        order = rng.permutation(n)
        val_idx, tr_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        if is_dask(X) or is_dask(y):  # streamed: never gathered here
            data = Streamed(X, y[..., None] if self._y_1d else y, dt, self.skipna)
        else:
            X, Y = np.asarray(X, dtype=dt), np.asarray(y, dtype=dt)
            X, Y, M = self._missing(X, Y[..., None] if self._y_1d else Y)
            if not np.any(~np.isnan(Y)):
                raise ValueError("y has no observed (non-NaN) target at a valid input step")
            data = InMemory(X, Y, M)
        nt = 1 if self._y_1d else y.shape[2]
        H, L, D = int(self.hidden_size), int(self.num_layers), 1
        p = GRUParams.random(F, H, num_layers=L, dtype=dt, seed=int(rng.integers(2**31)))
        k = 1.0 / np.sqrt(H)
        coef = rng.uniform(-k, k, size=(nt, H)).astype(dt)
        intercept = data.target_mean(tr_idx).astype(dt)
        flat = _params_to_flat(p) + [coef, intercept]
        opt = Adam(self.learning_rate)
        win = T if self.tbptt is None else int(self.tbptt)
        windows = [(t0, min(t0 + win, T)) for t0 in range(0, T, win)]
        bs = int(self.batch_size)

        def step_grads(idx, t0, t1, h0s):
            """Summed loss/grads over the parts of one window's batch."""
            return data.grads((flat[:-2], flat[-2], flat[-1], L, D, True), idx, t0, t1, h0s)

        history = {"loss": [], "val_loss": []}
        best, best_flat, best_epoch, waited = np.inf, [a.copy() for a in flat], 0, 0
        bar = None
        if self.verbose:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(self.max_epochs), desc="GRURegressor", unit="epoch")
        try:
            for epoch in range(int(self.max_epochs)):
                perm = tr_idx[rng.permutation(len(tr_idx))]
                tot, cnt = 0.0, 0
                for b0 in range(0, len(perm), bs):
                    idx = np.sort(perm[b0:b0 + bs])
                    h = None
                    for t0, t1 in windows:
                        loss, count, grads, h = step_grads(idx, t0, t1, h)
                        if not count:  # no observed target in this window: no step
                            continue
                        grads = [g / count for g in grads]
                        if not all(np.all(np.isfinite(g)) for g in grads):
                            raise FloatingPointError(
                                f"non-finite gradient in epoch {epoch}; lower learning_rate")
                        opt.step(flat, grads)
                        tot, cnt = tot + loss, cnt + count
                history["loss"].append(tot / cnt if cnt else np.nan)
                if n_val:
                    history["val_loss"].append(data.mse(flat, L, D, val_idx))
                monitored = history["val_loss"][-1] if n_val else history["loss"][-1]
                if monitored < best:
                    best, best_flat, best_epoch, waited = monitored, [a.copy() for a in flat], epoch, 0
                else:
                    waited += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{history['loss'][-1]:.4g}",
                                    **({"val_loss": f"{history['val_loss'][-1]:.4g}"} if n_val else {}))
                if waited >= int(self.patience):
                    break
        finally:
            if bar is not None:
                bar.close()
        self.params_ = _flat_to_params(best_flat[:-2], L, D, True, dt)
        self._coef, self._intercept = best_flat[-2], best_flat[-1]
        self.model_ = Model(self.params_, post=[Dense(self._coef.T, self._intercept)],
                            batch_first=True, description="daskgru.GRURegressor")
        self.coef_ = self._coef[0].copy() if self._y_1d else self._coef.copy()
        self.intercept_ = self._intercept[0].copy() if self._y_1d else self._intercept.copy()
        self.history_ = history
        self.n_epochs_ = len(history["loss"])
        self.best_epoch_ = best_epoch
        self.n_features_in_ = F
        return self

    def _missing(self, X, Y):
        """Zero-filled X, Y with NaN where a target does not count, and the valid input
        steps M (n, T) (None without skipna); refuses what cannot be honoured."""
        if np.isinf(Y).any():
            raise ValueError("y must not hold infinity (NaN marks a missing target)")
        if np.isinf(X).any():
            raise ValueError("X must not hold infinity")
        if not self.skipna and np.isnan(X).any():
            raise ValueError("X holds NaN; pass skipna=True to treat steps with a NaN "
                             "feature as missing")
        return _missing(X, Y, self.skipna)

    @staticmethod
    def _mse(flat, L, D, X, Y, M=None):
        from ..api import gru

        p = _flat_to_params(flat[:-2], L, D, True, flat[-1].dtype)
        out, _ = gru(np.asarray(X), p, batch_first=True, mask=M)
        counted = ~np.isnan(Y)
        res = np.where(counted, out @ flat[-2].T + flat[-1] - Y, 0)
        return float(np.sum(res * res) / max(1, counted.sum()))

    # -------------------------------------------------------------- inference
    def _hidden(self, X):
        """The top layer's states on X (lazy for dask), NaN at missing steps with skipna."""
        from ..api import gru, is_dask

        self._check_fitted()
        Xa = self._check_X(X).astype(self.params_.dtype)
        mask, xp = None, np
        if is_dask(Xa):
            import dask.array as xp
        if getattr(self, "skipna", False):
            mask = ~xp.isnan(Xa).any(axis=-1)
        out, _ = gru(Xa, self.params_, batch_first=True, mask=mask)
        if mask is not None:
            out = xp.where(mask[..., None], out, np.nan).astype(out.dtype)
        return out

    def transform(self, X):
        """Top-layer hidden states (n, T, hidden_size); lazy for dask input."""
        return self._wrap(X, self._hidden(X), "hidden")

    def predict(self, X):
        """Predictions (n, T, n_targets), or (n, T) when fitted on 2-D y; lazy for dask.
        With ``skipna``, NaN at the steps whose input is missing."""
        out = self._hidden(X)
        pred = self.model_.head(out)
        if self._y_1d:
            pred = pred[..., 0]
        return self._wrap(X, pred, None if self._y_1d else "target")

    @staticmethod
    def _wrap(X, a, last_dim):
        if hasattr(X, "dims") and hasattr(X, "coords"):
            import xarray as xr

            dims = tuple(X.dims[:2]) + ((last_dim,) if last_dim else ())
            coords = {d: X.coords[d] for d in X.dims[:2] if d in X.coords}
            return xr.DataArray(a, dims=dims, coords=coords)
        return a

    def score(self, X, y):
        """Coefficient of determination R² of the predictions (averaged over targets,
        every sequence and step counted as one sample; steps whose target is NaN, or whose
        input is missing with ``skipna``, do not count)."""
        pred = _as_array(self.predict(X), "prediction")
        pred = np.asarray(pred, dtype=np.float64)
        y = np.asarray(_as_array(y, "y"), dtype=np.float64)
        if y.shape != pred.shape:
            raise ValueError(f"y must have shape {pred.shape}, got {y.shape}")
        nt = 1 if y.ndim == 2 else y.shape[2]
        y2, p2 = y.reshape(-1, nt), pred.reshape(-1, nt)
        counted = ~(np.isnan(y2) | np.isnan(p2))
        if not counted.any(axis=0).all():
            raise ValueError("some target has no observed value at a valid step to score on")
        y2, p2 = np.where(counted, y2, 0.0), np.where(counted, p2, 0.0)
        mean = y2.sum(axis=0) / counted.sum(axis=0)
        ss_res = ((y2 - p2) ** 2).sum(axis=0)
        ss_tot = (np.where(counted, y2 - mean, 0.0) ** 2).sum(axis=0)
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1),
                      np.where(ss_res == 0, 1.0, 0.0))
        return float(r2.mean())
