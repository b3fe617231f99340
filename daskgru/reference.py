"""Plain NumPy GRUs and LSTMs, slow and obviously right: the oracles of the test suite.

Nothing here is used by the package itself. Each function is a literal transcription of
its equations, one time step at a time, in float64 unless told otherwise.
"""
from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, reset_after=True):
    """One step for a batch: x (B, I), h (B, H) -> (B, H). Gate order r, z, n."""
    H = h.shape[-1]
    gi = x @ w_ih.T + b_ih
    r = sigmoid(gi[:, :H] + h @ w_hh[:H].T + b_hh[:H])
    z = sigmoid(gi[:, H:2 * H] + h @ w_hh[H:2 * H].T + b_hh[H:2 * H])
    if reset_after:
        n = np.tanh(gi[:, 2 * H:] + r * (h @ w_hh[2 * H:].T + b_hh[2 * H:]))
    else:
        n = np.tanh(gi[:, 2 * H:] + (r * h) @ w_hh[2 * H:].T + b_hh[2 * H:])
    return (1.0 - z) * n + z * h


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One step for a batch: x (B, I), h and c (B, H) -> (h', c'). Gate order i, f, g, o."""
    H = h.shape[-1]
    a = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H])
    g, o = np.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])
    c = f * c + i * g
    return o * np.tanh(c), c


def rnn(x, params, h0=None, c0=None, lengths=None, mask=None, zero_output_for_mask=False,
        dtype=np.float64):
    """A GRUParams or LSTMParams stack on x (T, B, I), step by step, with torch's padding
    (``lengths``: steps at or past a length are skipped, output 0) and Keras's masking
    (``mask`` (T, B), False where a step is masked: skipped, output the current h, or 0 with
    ``zero_output_for_mask``). Returns out (T, B, D*H), h_n (L*D, B, H), c_n (or None)."""
    x = np.asarray(x, dtype=dtype)
    T, B, _ = x.shape
    L, D, H = params.num_layers, params.num_directions, params.hidden_size
    lstm = params.cell.name == "lstm"
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    mask = np.ones((T, B), bool) if mask is None else np.asarray(mask, bool)
    h0 = np.zeros((L * D, B, H), dtype) if h0 is None else np.asarray(h0, dtype=dtype)
    c0 = np.zeros((L * D, B, H), dtype) if c0 is None else np.asarray(c0, dtype=dtype)
    h_n, c_n = np.zeros((L * D, B, H), dtype), np.zeros((L * D, B, H), dtype)
    layer_in = x
    for l in range(L):
        outs = []
        for d in range(D):
            w = [np.asarray(a, dtype=dtype) for a in params.weights[l][d]]
            h, c = h0[l * D + d].copy(), c0[l * D + d].copy()
            out = np.zeros((T, B, H), dtype)
            for t in (range(T - 1, -1, -1) if d else range(T)):
                pad = (t >= lengths)[:, None]
                valid = ~pad & mask[t][:, None]
                if lstm:
                    hn, cn = lstm_cell(layer_in[t], h, c, *w)
                    c = np.where(valid, cn, c)
                else:
                    hn = gru_cell(layer_in[t], h, *w, reset_after=params.reset_after)
                h = np.where(valid, hn, h)
                out[t] = np.where(valid | ~(pad | zero_output_for_mask), h, 0.0)
            outs.append(out)
            h_n[l * D + d], c_n[l * D + d] = h, c
        layer_in = np.concatenate(outs, axis=-1)
    return layer_in, h_n, (c_n if lstm else None)


def gru(x, params, h0=None, lengths=None, dtype=np.float64):
    """torch.nn.GRU semantics on x (T, B, I): returns out (T, B, D*H), h_n (L*D, B, H).

    ``lengths`` gives packed-sequence semantics: steps at or past a sequence's length are
    skipped (outputs zero, state unchanged), so the reverse direction starts at its last step.
    """
    x = np.asarray(x, dtype=dtype)
    T, B, _ = x.shape
    L, D, H = params.num_layers, params.num_directions, params.hidden_size
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h0 = np.zeros((L * D, B, H), dtype) if h0 is None else np.asarray(h0, dtype=dtype)
    h_n = np.zeros((L * D, B, H), dtype)
    layer_in = x
    for l in range(L):
        outs = []
        for d in range(D):
            w = [np.asarray(a, dtype=dtype) for a in params.weights[l][d]]
            h = h0[l * D + d].copy()
            out = np.zeros((T, B, H), dtype)
            steps = range(T - 1, -1, -1) if d else range(T)
            for t in steps:
                valid = (t < lengths)[:, None]
                h_new = gru_cell(layer_in[t], h, *w, reset_after=params.reset_after)
                h = np.where(valid, h_new, h)
                out[t] = np.where(valid, h_new, 0.0)
            outs.append(out)
            h_n[l * D + d] = h
        layer_in = np.concatenate(outs, axis=-1)
    return layer_in, h_n


def cho_gru(x, W_z, W_r, W, b_z, b_r, b, h0=None):
    """The seed document's equations, literally, for x (T, I) and one sequence::

        z_t = σ(W_z [h_{t-1}, x_t] + b_z)
        r_t = σ(W_r [h_{t-1}, x_t] + b_r)
        h~_t = tanh(W [r_t ⊙ h_{t-1}, x_t] + b)
        h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h~_t

    Returns the states h_1 .. h_T, shape (T, H).
    """
    H = W_z.shape[0]
    h = np.zeros(H) if h0 is None else np.asarray(h0, dtype=np.float64)
    hs = []
    for x_t in np.asarray(x, dtype=np.float64):
        z = sigmoid(W_z @ np.concatenate([h, x_t]) + b_z)
        r = sigmoid(W_r @ np.concatenate([h, x_t]) + b_r)
        h_tilde = np.tanh(W @ np.concatenate([r * h, x_t]) + b)
        h = (1 - z) * h + z * h_tilde
        hs.append(h)
    return np.array(hs)
