"""Gradients by backpropagation through time: :func:`gru_backward`, :func:`lstm_backward`,
and :func:`backward`, the one path for any stack.

Eager on NumPy: the forward keeps each layer's input and the start state of every
``EAGER_BLOCK``-step block (a tape), then the backward walks the blocks in reverse, each
recomputing its gates from its stored start state (memory O(block)) through the cells'
``backward`` (:func:`daskgru.cells.chunk_backward`). On dask arrays the same chunk
functions run in the reverse chain of :mod:`daskgru.graph.backward`.

Weight gradients are sums over blocks and chunks, so they equal the eager ones to rounding
for any chunking (~1e-15 relative in float64), not bit for bit; the forward states they
are built on are bit-identical.
"""
from __future__ import annotations

import numpy as np

from ..api import _per_layer_states, check_state, split_hx, validate
from ..layout import (as_mask, canonical, check_lengths, is_dask, output, uncanonical,
                      writable)
from ..cells import Steps, Weights, chunk_backward
from ..eager import EAGER_BLOCK, batch_parts, in_row_parts, layer_input
from ..params import GRUParams, LSTMParams

__all__ = ["gru_backward", "lstm_backward", "backward"]


def check_grad_args(call, d_output, d_states):
    """Shapes of d_output and of the final-state gradients against a validated call."""
    p = call.stack
    DH = p.output_size
    want = ((call.T, DH) if call.unbatched else
            (call.B, call.T, DH) if call.batch_first else (call.T, call.B, DH))
    shape = getattr(d_output, "shape", None)
    if shape is None or tuple(shape) != want:
        raise ValueError(f"d_output must have the shape of the output {want}, got "
                         f"{None if shape is None else tuple(shape)}")
    if np.dtype(d_output.dtype).kind != "f":
        raise TypeError(f"d_output must hold floating-point numbers, got dtype {d_output.dtype}")
    for name, a in d_states:
        check_state(a, name, call, p.hidden_size)


# ----------------------------------------------------------------------------- eager
class Tape:
    """What the eager forward keeps for the backward: each layer's input and output, the
    start state of every block of every (layer, direction), and where the cell keeps them
    (:attr:`~daskgru.cells.Cell.records_gates`) the gates of every step."""

    __slots__ = ("inputs", "output", "starts", "blocks", "finals", "recs")


def forward_tape(x, stack, states, lengths, mask, zero_masked):
    """Forward over canonical NumPy x (T, B, I), keeping a :class:`Tape`; same kernels and
    results as the eager path."""
    T, B, _ = x.shape
    ps = stack.prepare()
    blocks = [(t0, min(t0 + EAGER_BLOCK, T)) for t0 in range(0, T, EAGER_BLOCK)]
    tape = Tape()
    tape.inputs, tape.starts, tape.blocks, tape.finals = [], [], blocks, []
    tape.recs = []  # per (layer, direction): the gates of every step, where the cell keeps them
    layer_in, i = np.ascontiguousarray(x, dtype=stack.dtype), 0
    for l, cell in enumerate(ps.cells):
        tape.inputs.append(layer_in)
        outs, ends = [], []
        for d, w in enumerate(ps.weights[l]):
            steps = Steps.make(B, T, lengths=lengths, mask=mask, reverse=d == 1,
                               zero_masked=zero_masked[l])
            out = output((T, B, w.hidden_size), stack.dtype)
            rec = (output((T, B, cell.record_width(w.hidden_size)), stack.dtype)
                   if cell.records_gates else None)
            state, starts = states[i], [None] * len(blocks)
            # rows are independent: parts of the batch run side by side, each writing its
            # rows of out and rec (the bits of one call)
            parts = batch_parts(B, T * w.w_hh_t.shape[1] * (w.hidden_size + layer_in.shape[2]))
            for b in (reversed(range(len(blocks))) if d else range(len(blocks))):
                t0, t1 = blocks[b]
                starts[b] = state
                state = in_row_parts(
                    parts, layer_in[t0:t1], state, steps.block(t0, t1),
                    lambda xp, sp, stp, row, o=out[t0:t1], w=w,
                    r=None if rec is None else rec[t0:t1]: cell.scan_inputs(
                        w, xp, sp, stp, out=o, row=row, rec=r)[1])
            tape.recs.append(rec)
            outs.append(out)
            ends.append(state)
            tape.starts.append(starts)
            i += 1
        tape.finals.append(np.stack(ends))
        layer_in = layer_input(outs)
    tape.output = layer_in
    return tape


def backward_tape(tape, stack, lengths, mask, zero_masked, d_output, d_states):
    """Backward through a tape: returns (per (layer, direction) gradient Weights, d_x,
    per (layer, direction) gradient of the start state)."""
    ps = stack.prepare()
    T, B = d_output.shape[:2]
    grads, d_starts = [None] * len(d_states), [None] * len(d_states)
    first = np.cumsum([0] + [lay.num_directions for lay in stack.layers])
    d_layer_out = d_output
    for l in range(stack.num_layers - 1, -1, -1):
        cell, layer_in = ps.cells[l], tape.inputs[l]
        outs = tape.inputs[l + 1] if l + 1 < stack.num_layers else tape.output
        d_in = np.zeros(layer_in.shape, stack.dtype)
        for d, w in enumerate(ps.weights[l]):
            i, H = first[l] + d, w.hidden_size
            steps = Steps.make(B, T, lengths=lengths, mask=mask, reverse=d == 1,
                               zero_masked=zero_masked[l])
            d_out = np.ascontiguousarray(d_layer_out[..., d * H:(d + 1) * H], dtype=stack.dtype)
            ds, sums = d_states[i], None
            for b in (range(len(tape.blocks)) if d else reversed(range(len(tape.blocks)))):
                t0, t1 = tape.blocks[b]
                # this layer's outputs are held anyway (the next layer's input)
                rec = tape.recs[i]
                d_x, ds, g = chunk_backward(cell, w, layer_in[t0:t1], tape.starts[i][b],
                                            steps.block(t0, t1), d_out[t0:t1], ds,
                                            out=outs[t0:t1, :, d * H:(d + 1) * H],
                                            rec=None if rec is None else rec[t0:t1])
                d_in[t0:t1] += d_x
                sums = g if sums is None else Weights(*[a + c for a, c in zip(sums, g)])
            grads[i], d_starts[i] = sums, ds
        d_layer_out = d_in
    return grads, d_layer_out, d_starts


def backward(x, call, d_output, d_states=None, states=None, lengths=None, mask=None):
    """The vector-Jacobian product of :func:`daskgru.api.run` for a validated call.

    ``d_states``/``states``: None or one (B, S) array per (layer, direction). Returns
    ``(grads, d_x, d_starts)``: one gradient :class:`~daskgru.cells.Weights` per (layer,
    direction) (a ``Delayed`` list for dask input), the input gradient in the caller's
    layout, and the start states' gradients as one array (D, B, S) per layer.
    """
    merged = [l for l, lay in enumerate(call.stack.layers)
              if lay.num_directions == 2 and lay.merge != "concat"]
    if merged:
        raise ValueError(f"gradients through layers whose directions are merged other than side "
                         f"by side (layer {merged[0]}: {call.stack.layers[merged[0]].merge}) "
                         "are not implemented")
    if any(is_dask(a) for a in (x, d_output, lengths, mask, *(d_states or ()), *(states or ()))):
        from ..graph.backward import build

        return build(x, call, d_output, d_states, states, lengths, mask)
    p, dt, B, T = call.stack, call.dtype, call.B, call.T
    sizes = p.state_sizes
    xc = writable(canonical(np.asarray(x, dtype=dt), call))
    dout = np.ascontiguousarray(canonical(np.asarray(d_output, dtype=dt), call))

    def per_ld(arrs):
        if arrs is None:
            return [np.zeros((B, s), dt) for s in sizes]
        return [np.asarray(a, dtype=dt).reshape(B, -1) for a in arrs]

    lengths = np.full(B, T, np.int64) if lengths is None else check_lengths(lengths, T)
    if mask is not None:
        mask = as_mask(canonical(np.asarray(mask), call))
    tape = forward_tape(xc, p, per_ld(states), lengths, mask, call.zero_masked)
    grads, d_x, d_starts = backward_tape(tape, p, lengths, mask, call.zero_masked, dout,
                                         per_ld(d_states))
    d_x = uncanonical(d_x, call)
    out, k = [], 0
    for lay in p.layers:
        D = lay.num_directions
        ds = np.stack(d_starts[k:k + D])
        out.append(ds[:, 0] if call.unbatched else ds)
        k += D
    return grads, d_x, out


def grads_params(grads, p):
    """Gradients as params of the same kind as ``p`` (torch's parameter names for
    ``to_torch_state_dict``); no-bias models get zero bias gradients."""
    ws = []
    k = 0
    for lay in p.layers:
        layer = []
        for _ in lay.weights:
            g = grads[k]
            if not p.bias:
                g = g._replace(b_ih=np.zeros_like(g.b_ih), b_hh=np.zeros_like(g.b_hh))
            layer.append(g)
            k += 1
        ws.append(layer)
    return type(p)(ws, bias=p.bias, dtype=p.dtype, **p.cell.options())


def _front(x, p, d_output, d_finals, h, c, lengths, mask, zero_output_for_mask, batch_first):
    """What gru_backward and lstm_backward share: validate, run, wrap."""
    call = validate(x, p, lengths=lengths, mask=mask, batch_first=batch_first,
                    zero_output_for_mask=zero_output_for_mask)
    for name, a in (("h0", h), ("c0", c)):
        check_state(a, name, call, p.hidden_size)
    check_grad_args(call, d_output, d_finals)
    d_h, d_c = (a for _, a in d_finals) if len(d_finals) == 2 else (d_finals[0][1], None)
    d_states = _per_layer_states(d_h, d_c, call)
    states = _per_layer_states(h, c, call)
    if call.unbatched:
        d_states = None if d_states is None else [s[None] for s in d_states]
        states = None if states is None else [s[None] for s in states]
    grads, d_x, d_starts = backward(x, call, d_output, d_states, states, lengths, mask)
    if is_dask(d_x):
        import dask
        import dask.array as da

        grads = dask.delayed(grads_params)(grads, call.stack)
        d_all = da.concatenate(d_starts, axis=0)
    else:
        grads = grads_params(grads, call.stack)
        d_all = np.concatenate(d_starts, axis=0)
    return grads, d_x, d_all


def gru_backward(x, p, d_output, *, d_h_n=None, h0=None, lengths=None, mask=None,
                 zero_output_for_mask=False, batch_first=False):
    """Gradients of a :func:`daskgru.gru` call (the vector-Jacobian product).

    Parameters
    ----------
    x, p, h0, lengths, mask, zero_output_for_mask, batch_first
        As for :func:`daskgru.gru`.
    d_output : array shaped like ``gru``'s output
        Gradient of the loss with respect to the output ((T, B, D*H), (B, T, D*H) with
        ``batch_first``, or (T, D*H) unbatched).
    d_h_n : array shaped like ``h_n``, optional
        Gradient with respect to the final states; zeros by default.

    Returns
    -------
    grads : GRUParams
        Gradients of every weight and bias, in the layout of ``p`` (so
        ``grads.to_torch_state_dict()`` carries torch's parameter names). With dask inputs, a
        ``dask.delayed`` object that computes to the GRUParams.
    d_x : array shaped like x
        Gradient with respect to the input (dask in, dask out with x's chunks); 0 at
        skipped steps (padding and masked steps).
    d_h0 : array (num_layers * num_directions, B, H)
        Gradient with respect to the start states (whether or not h0 was given).

    Notes
    -----
    Results equal the eager ones to rounding for any chunking (the sums over chunks run in
    a different order); the forward states they are built on are bit-identical. Inputs at
    skipped steps never reach a gradient (a NaN there stays out).

    Examples
    --------
    >>> import numpy as np, daskgru as dg
    >>> p = dg.GRUParams.random(3, 8, seed=0, dtype="float64")
    >>> x = np.random.default_rng(0).normal(size=(20, 2, 3))
    >>> out, h_n = dg.gru(x, p)
    >>> grads, d_x, d_h0 = dg.gru_backward(x, p, np.ones_like(out))
    >>> grads.weights[0][0].w_hh.shape, d_x.shape, d_h0.shape
    ((24, 8), (20, 2, 3), (1, 2, 8))
    """
    if not isinstance(p, GRUParams):
        raise TypeError(f"p must be a GRUParams, got {type(p).__name__}")
    return _front(x, p, d_output, [("d_h_n", d_h_n)], h0, None, lengths, mask,
                  zero_output_for_mask, batch_first)


def lstm_backward(x, p, d_output, *, d_h_n=None, d_c_n=None, hx=None, lengths=None, mask=None,
                  zero_output_for_mask=False, batch_first=False):
    """Gradients of a :func:`daskgru.lstm` call (the vector-Jacobian product).

    Parameters
    ----------
    x, p, hx, lengths, mask, zero_output_for_mask, batch_first
        As for :func:`daskgru.lstm`.
    d_output : array shaped like ``lstm``'s output
    d_h_n, d_c_n : arrays shaped like ``h_n`` and ``c_n``, optional
        Gradients with respect to the final states; zeros by default.

    Returns
    -------
    grads : LSTMParams (a ``dask.delayed`` object for dask inputs)
    d_x : array shaped like x
    (d_h0, d_c0) : arrays (num_layers * num_directions, B, H)

    Examples
    --------
    >>> import numpy as np, daskgru as dg
    >>> q = dg.LSTMParams.random(3, 8, seed=0, dtype="float64")
    >>> x = np.random.default_rng(0).normal(size=(20, 2, 3))
    >>> out, _ = dg.lstm(x, q)
    >>> grads, d_x, (d_h0, d_c0) = dg.lstm_backward(x, q, np.ones_like(out))
    >>> grads.weights[0][0].w_hh.shape, d_c0.shape
    ((32, 8), (1, 2, 8))
    """
    if not isinstance(p, LSTMParams):
        raise TypeError(f"p must be an LSTMParams, got {type(p).__name__}")
    h0, c0 = split_hx(hx)
    grads, d_x, d_all = _front(x, p, d_output, [("d_h_n", d_h_n), ("d_c_n", d_c_n)], h0, c0,
                               lengths, mask, zero_output_for_mask, batch_first)
    return grads, d_x, p.cell.split_state(d_all, p.hidden_size)
