"""The public calls :func:`gru` and :func:`lstm` (torch's semantics), and :func:`run`, the
one path every front end takes: validate before any work, bring the input to the
canonical (T, B, I) layout, and hand it to the eager path (NumPy) or the graph (dask)."""
from __future__ import annotations

import numpy as np

from .layout import (Call, _array_like, as_mask, canonical, check_lengths, compute_dtype,
                     is_dask, uncanonical, zero_flags)
from .params import GRUParams, LSTMParams

__all__ = ["gru", "lstm", "run", "Call", "validate", "METHODS"]

METHODS = ("scan", "speculative", "newton", "auto")
# Options each method takes (besides return_info); see daskgru.graph.parallel_time.
METHOD_OPTIONS = {"scan": (), "speculative": ("warmup", "tol"), "newton": ("tol",),
                  "auto": ("warmup", "tol")}


def validate_method_options(method, *, warmup=None, tol=None, return_info=False):
    """Check the options of a parallel-in-time method (before any work); None means default."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    allowed = METHOD_OPTIONS[method]
    for name, value in (("warmup", warmup), ("tol", tol)):
        if value is not None and name not in allowed:
            takes = ", ".join(allowed) if allowed else "no options"
            raise ValueError(f"{name} is not an option of method={method!r} (it takes {takes})")
    if warmup is not None:
        if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)):
            raise TypeError(f"warmup must be an int (number of steps), got {type(warmup).__name__}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 (number of steps), got {warmup}")
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
            raise TypeError(f"tol must be a real number, got {type(tol).__name__}")
        if not (np.isfinite(tol) and tol > 0):
            raise ValueError(f"tol must be finite and > 0, got {tol}")
    if not isinstance(return_info, (bool, np.bool_)):
        raise TypeError(f"return_info must be a bool, got {type(return_info).__name__}")


def validate(x, stack, *, lengths=None, mask=None, batch_first=False,
             zero_output_for_mask=False, input_size=None) -> Call:
    """Check shapes, dtypes and options before any work; works on NumPy and dask arrays
    alike (only shapes and dtypes are read, never values of dask arrays)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"x must be an array, got {type(x).__name__}")
    if any(s != s for s in shape):  # NaN: a dask array with unknown chunk sizes
        raise ValueError(f"x has unknown size along some axis (shape {tuple(shape)}), e.g. after "
                         "boolean indexing; call x.compute_chunk_sizes() first")
    dtype = compute_dtype(x.dtype)
    if len(shape) == 2:
        unbatched, (T, I), B = True, shape, 1
    elif len(shape) == 3:
        unbatched = False
        B, T, I = shape if batch_first else (shape[1], shape[0], shape[2])
    else:
        raise ValueError(
            f"x must be 3-D ({'B, T, I' if batch_first else 'T, B, I'}) or 2-D (T, I), "
            f"got shape {tuple(shape)}")
    if B == 0:
        raise ValueError(f"x holds no sequences (its batch axis has size 0, shape "
                         f"{tuple(shape)})")
    want = stack.input_size if input_size is None else input_size
    if I != want:
        what = "p.input_size" if input_size is None else "the model's input size"
        raise ValueError(f"x has input size {I} (last axis), but {what} is {want}")
    if lengths is not None:
        lengths = _array_like(lengths, "lengths")
        ls = tuple(lengths.shape)
        if not (ls == (B,) or (unbatched and ls in ((), (1,)))):
            raise ValueError(f"lengths must have shape ({B},) (one per sequence), got {ls}")
        if np.dtype(lengths.dtype).kind not in "iu":
            raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
        if isinstance(lengths, np.ndarray):
            check_lengths(lengths, T)
    if mask is not None:
        mask = _array_like(mask, "mask")
        want = (T,) if unbatched else ((B, T) if batch_first else (T, B))
        if tuple(mask.shape) != want:
            names = "(T,)" if unbatched else ("(B, T)" if batch_first else "(T, B)")
            raise ValueError(f"mask must have shape {want} {names}, like x without its last "
                             f"axis, got {tuple(mask.shape)}")
        if np.dtype(mask.dtype).kind not in "biu":
            raise TypeError(f"mask must be boolean (True where a step is valid), got dtype "
                            f"{mask.dtype}")
        if (np.dtype(mask.dtype).kind in "iu" and isinstance(mask, np.ndarray) and mask.size
                and (mask.min() < 0 or mask.max() > 1)):
            raise ValueError(f"a mask of integers must hold 0 (skip the step) and 1 (valid) "
                             f"only, got values in {mask.min()}..{mask.max()}")
    return Call(stack.astype(dtype), int(T), int(B), int(I), dtype, unbatched,
                bool(batch_first), zero_flags(zero_output_for_mask, stack.num_layers))


def check_state(a, name, call, H, LD=None):
    """A start-state argument of torch's shape (L*D, B, H) ((L*D, H) unbatched); returns it
    as given (checked), or None."""
    if a is None:
        return None
    p = call.stack
    LD = sum(lay.num_directions for lay in p.layers) if LD is None else LD
    hs = getattr(a, "shape", None)
    want = (LD, H) if call.unbatched else (LD, call.B, H)
    if hs is None or tuple(hs) != want:
        got = f"a {type(a).__name__} without a shape" if hs is None else tuple(hs)
        raise ValueError(
            f"{name} must have shape {want} (num_layers * num_directions"
            f"{'' if call.unbatched else ', batch'}, hidden_size), got {got}")
    compute_dtype(a.dtype, name)
    return a


def run(x, call: Call, states=None, lengths=None, mask=None, *, method="scan", warmup=None,
        tol=None, model=None):
    """The validated call on NumPy (eager) or dask (lazy) input.

    ``states``: None, or one array per (layer, direction) of shape (B, S) (or (S,)
    unbatched), NumPy or dask. Returns ``(output, finals, info)``: the output in the
    caller's layout, the final states as one array (D, B, S) per layer ((D, S) unbatched),
    and the info dict (a ``Delayed`` for dask input). A ``model`` brings per-step layers
    applied to x before the stack (x then has the model's input size).
    """
    lazy = any(is_dask(a) for a in (x, lengths, mask, *(states or ())))
    if states is not None and call.unbatched:
        states = [s[None] for s in states]
    auto = None
    if method == "auto":
        method, auto = _auto(x, call, lazy, warmup)
        if method == "scan":
            warmup = tol = None
    if method != "scan" or lazy:
        from .graph import parallel_time, scan

        model = None if model is None else model.astype(call.dtype)
        if method == "scan":
            out, finals, info = scan.build(x, call, states, lengths, mask, model)
        elif lazy:
            out, finals, info = parallel_time.build(x, call, states, lengths, mask, method,
                                                    warmup, tol, model)
        else:
            out, finals, info = parallel_time.run_numpy(x, call, states, lengths, mask, method,
                                                        warmup, tol, model)
    else:
        from .eager import run_stack

        dt, B = call.dtype, call.B
        xc = canonical(np.asarray(x), call)
        states = ([np.zeros((B, s), dt) for s in call.stack.state_sizes] if states is None
                  else [np.asarray(s, dtype=dt).reshape(B, -1) for s in states])
        lengths = (np.full(B, call.T, np.int64) if lengths is None
                   else check_lengths(lengths, call.T))
        if mask is not None:
            mask = as_mask(canonical(np.asarray(mask), call))
        out, finals = run_stack(xc, call.stack, states, lengths, mask, call.zero_masked,
                                None if model is None else model.astype(dt).prepare())
        out = uncanonical(out, call)
        from .numerics import use_fma

        info = dict(method="scan", sweeps=0, chunks=None, chunks_recomputed=0,
                    max_mismatch=0.0, fma=use_fma())
    if call.unbatched:
        finals = [f[:, 0] for f in finals]
    if auto is not None:
        if lazy:
            import dask

            info = dask.delayed(_with_auto, pure=True)(info, auto)
        else:
            info = _with_auto(info, auto)
    return out, finals, info


def _auto(x, call, lazy, warmup):
    """What method="auto" runs (see :func:`daskgru.graph.options.choose_method`)."""
    if not lazy:
        return "scan", dict(chose="scan", reason="NumPy input runs eagerly in one process")
    import dask.array as da

    from .graph import options, parallel_time

    xc = canonical(da.asarray(x), call)
    return options.choose_method(options.resolve(), xc.chunks[0], xc.chunks[1], call.stack,
                                 parallel_time.DEFAULT_WARMUP if warmup is None else warmup)


def _with_auto(info, auto):
    return dict(info, auto=auto)


def _stack_finals(finals):
    """One (L*D, B, S) array from the per-layer final states (NumPy or dask)."""
    if any(is_dask(f) for f in finals):
        import dask.array as da

        return da.concatenate(finals, axis=0)
    return np.concatenate(finals, axis=0)


def _per_layer_states(h, c, call):
    """torch's (L*D, B, H) start states — h, and c for a cell whose state is (h, c) — as one
    (B, S) array per layer and direction."""
    if h is None and c is None:
        return None
    p = call.stack
    LD, B, H = p.num_layers * p.num_directions, call.B, p.hidden_size
    shape = (LD, H) if call.unbatched else (LD, B, H)
    parts = [h if h is not None else np.zeros(shape, call.dtype)]
    if p.cell.state_size(H) == 2 * H:  # the state is [h, c]
        parts.append(c if c is not None else np.zeros(shape, call.dtype))
    if len(parts) == 1:
        return [parts[0][i] for i in range(LD)]
    if any(is_dask(a) for a in parts):
        import dask.array as da

        return [da.concatenate([parts[0][i], parts[1][i]], axis=-1) for i in range(LD)]
    return [np.concatenate([np.asarray(parts[0][i]), np.asarray(parts[1][i])], axis=-1)
            for i in range(LD)]


def split_hx(hx):
    """(h0, c0) of an LSTM's ``hx`` argument (None: both None; as torch, both or none)."""
    if hx is None:
        return None, None
    if isinstance(hx, (tuple, list)) and len(hx) == 2:
        if (hx[0] is None) != (hx[1] is None):
            raise ValueError("hx must give both h0 and c0 (an LSTM's state is the pair), or be "
                             "None for zero states")
        return tuple(hx)
    raise TypeError(f"hx must be a pair (h0, c0) or None, got {type(hx).__name__}")


def gru(x, p, *, h0=None, lengths=None, mask=None, zero_output_for_mask=False,
        batch_first=False, method="scan", warmup=None, tol=None, return_info=False):
    """Run a GRU exactly as ``torch.nn.GRU`` does, eagerly on NumPy or lazily on Dask.

    Parameters
    ----------
    x : array (T, B, I), (B, T, I) with ``batch_first``, or (T, I) unbatched
        NumPy or dask; float32 and float64 are kept, float16 is computed in float32.
    p : GRUParams
    h0 : array (num_layers * num_directions, B, H), optional
        Start states (zeros by default); (num_layers * num_directions, H) when unbatched.
    lengths : int array (B,), optional
        Valid steps per sequence (0..T), with torch's packed-sequence semantics: outputs past
        a sequence's length are 0, ``h_n`` is the state at its last valid step, and the
        reverse direction starts there.
    mask : bool array (T, B), (B, T) with ``batch_first``, or (T,) unbatched, optional
        True where a step is valid, with Keras's masking semantics: a masked step leaves
        the state unchanged and outputs the current state (the last valid step's output, or
        h0 before the first valid step), or 0 with ``zero_output_for_mask``. Every layer sees
        the same mask; the reverse direction walks the valid steps backwards. Together with
        ``lengths``, steps past a length are padding and the mask applies before it.
        Integers 0 and 1 serve as well; a NumPy mask holding other values is refused, a
        dask one is not read before the run (there any nonzero value counts as valid).
    zero_output_for_mask : bool, or one bool per layer
        Output 0 at masked steps (Keras's flag of that name; ``Bidirectional`` sets it).
    batch_first : bool
        Take x as (B, T, I) and return output as (B, T, D*H).
    method : {"scan", "speculative", "newton", "auto"}
        How time is traversed. "scan" is the exact sequential chain of chunks. "auto"
        chooses "scan" or "speculative" from a model of the call's cost (chunks, chains,
        the scheduler's task slots; see :func:`daskgru.graph.options.choose_method`) and
        says which and why in ``return_info``'s ``"auto"`` entry. The two
        parallel-in-time methods (see :mod:`daskgru.graph.parallel_time`) run all time
        chunks at once and agree with "scan" to ``tol``: "speculative" starts each chunk
        from a state warmed up over ``warmup`` steps and recomputes chunks whose start was
        off by more than ``tol``; "newton" solves for the chunk boundary states by multiple
        shooting. With NumPy input they build the same dask graph (time chunks of
        ``parallel_time.NUMPY_CHUNK`` steps) and compute it with the synchronous scheduler;
        give a dask array chunked along time to run chunks in parallel.
    warmup : int >= 0, optional
        method="speculative" only: warm-up steps per chunk (default
        ``parallel_time.DEFAULT_WARMUP``).
    tol : float > 0, optional
        Parallel methods only: largest accepted mismatch of a chunk's start state (default
        1e-5 for float32, 1e-8 for float64).
    return_info : bool
        Also return a dict (lazy for dask input: a ``Delayed``) with keys ``method``,
        ``sweeps``, ``chunks``, ``chunks_recomputed``, ``max_mismatch`` and, for dask
        input, ``graph`` (the graph options the call resolved, see
        :func:`daskgru.graph.options.resolve`, and ``fma``, the products' numerics, see
        :mod:`daskgru.numerics`; eager calls report ``fma`` at the top level).

    Returns
    -------
    output : array (T, B, D*H)
        Top layer's states, the two directions side by side [forward, backward].
    h_n : array (num_layers * num_directions, B, H)
        Final states. NumPy in gives NumPy out (eager); any dask input gives dask out (lazy).

    Examples
    --------
    >>> import numpy as np, daskgru as dg
    >>> p = dg.GRUParams.random(3, 8, num_layers=2, seed=0)
    >>> x = np.random.default_rng(0).normal(size=(100, 4, 3)).astype("float32")
    >>> out, h_n = dg.gru(x, p)
    >>> out.shape, h_n.shape
    ((100, 4, 8), (2, 4, 8))
    >>> import dask.array as da
    >>> lazy_out, lazy_h = dg.gru(da.from_array(x, chunks=(25, 2, 3)), p)
    >>> bool(np.array_equal(lazy_out.compute(), out))
    True
    """
    validate_method_options(method, warmup=warmup, tol=tol, return_info=return_info)
    if not isinstance(p, GRUParams):
        raise TypeError(f"p must be a GRUParams, got {type(p).__name__}")
    call = validate(x, p, lengths=lengths, mask=mask, batch_first=batch_first,
                    zero_output_for_mask=zero_output_for_mask)
    check_state(h0, "h0", call, p.hidden_size)
    out, finals, info = run(x, call, _per_layer_states(h0, None, call), lengths, mask,
                            method=method, warmup=warmup, tol=tol)
    h_n = _stack_finals(finals)
    return (out, h_n, info) if return_info else (out, h_n)


def lstm(x, p, hx=None, *, lengths=None, mask=None, zero_output_for_mask=False,
         batch_first=False, method="scan", warmup=None, tol=None, return_info=False):
    """Run an LSTM exactly as ``torch.nn.LSTM.forward(input, hx)`` does, eagerly on NumPy
    or lazily on Dask.

    Parameters
    ----------
    x : array (T, B, I), (B, T, I) with ``batch_first``, or (T, I) unbatched
    p : LSTMParams
    hx : (h0, c0), optional
        Start states, each (num_layers * num_directions, B, H) ((num_layers *
        num_directions, H) unbatched), both given (as torch takes them); zeros by default.
    lengths, mask, zero_output_for_mask, batch_first, method, warmup, tol, return_info
        As for :func:`daskgru.gru`; at masked steps both h and c are kept.

    Returns
    -------
    output : array (T, B, D*H)
    (h_n, c_n) : arrays (num_layers * num_directions, B, H)

    Examples
    --------
    >>> import numpy as np, daskgru as dg
    >>> q = dg.LSTMParams.random(3, 8, num_layers=2, seed=0)
    >>> x = np.random.default_rng(0).normal(size=(100, 4, 3)).astype("float32")
    >>> out, (h_n, c_n) = dg.lstm(x, q)
    >>> out.shape, h_n.shape, c_n.shape
    ((100, 4, 8), (2, 4, 8), (2, 4, 8))
    """
    validate_method_options(method, warmup=warmup, tol=tol, return_info=return_info)
    if not isinstance(p, LSTMParams):
        raise TypeError(f"p must be an LSTMParams, got {type(p).__name__}")
    call = validate(x, p, lengths=lengths, mask=mask, batch_first=batch_first,
                    zero_output_for_mask=zero_output_for_mask)
    h0, c0 = split_hx(hx)
    check_state(h0, "h0", call, p.hidden_size)
    check_state(c0, "c0", call, p.hidden_size)
    out, finals, info = run(x, call, _per_layer_states(h0, c0, call), lengths, mask,
                            method=method, warmup=warmup, tol=tol)
    res = (out, p.cell.split_state(_stack_finals(finals), p.hidden_size))
    return (*res, info) if return_info else res
