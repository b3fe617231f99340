"""The NumPy path: a stack over canonical arrays x (T, B, I), calling the cells' kernels.

The dask graph (:mod:`daskgru.graph`) calls the very same per-chunk functions
(:func:`run_direction`), which is why the two agree bit for bit. Batch rows are
independent, so a call splits its rows over threads (the kernels release the GIL); with
row-invariant kernels that is bit-identical to one thread.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from . import layers
from .cells import Cell, Prepared, Steps
from .layout import output, writable

__all__ = ["run_stack", "run_direction", "run_rows", "layer_input", "chunk_input",
           "get_num_threads", "batch_parts", "in_parts", "in_row_parts"]

# Eager calls walk time in blocks of this many steps so that the projected inputs of a
# whole long sequence never sit in memory at once. Results do not depend on it.
EAGER_BLOCK = 2048
# Projected inputs of one time block take at most this many bytes, so they stay in cache
# and the buffer is reused (fresh pages cost more than the arithmetic on some machines).
BLOCK_BYTES = 16 << 20
# Below this much work (multiply-adds) a call is not worth splitting over threads.
MIN_SPLIT_WORK = 2_000_000



def get_num_threads() -> int:
    """Threads of the eager path: ``DASKGRU_NUM_THREADS``, else the CPUs this process may use."""
    env = os.environ.get("DASKGRU_NUM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"DASKGRU_NUM_THREADS must be a number of threads, got "
                             f"{env!r}") from None
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def batch_parts(B, work, threads=None, min_work=None):
    """Contiguous batch slices, one per thread (``threads``, default
    :func:`get_num_threads`), each of at least 4 rows; one slice when ``work`` (a row's
    multiply-adds) times B is below ``min_work`` (default :data:`MIN_SPLIT_WORK`)."""
    min_work = MIN_SPLIT_WORK if min_work is None else min_work
    n = min(get_num_threads() if threads is None else threads, B // 4)
    if n <= 1 or work * B < min_work:
        return [slice(0, B)]
    edges = np.linspace(0, B, n + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def layer_input(parts, merge="concat"):
    """A layer's output from its directions' outputs: side by side [forward, backward], or
    their sum, product or mean (Keras's ``Bidirectional`` merge modes)."""
    if len(parts) == 1:
        return parts[0]
    if merge == "concat":
        return np.concatenate(parts, axis=-1)
    a, b = parts
    if merge == "sum":
        return a + b
    if merge == "mul":
        return a * b
    return (a + b) / a.dtype.type(2)


def chunk_input(ps, l, parts):
    """Layer l's input from its pieces: the lower layer's directions side by side, or for
    layer 0 the input's time chunks one after the other (a graph's merged chunk), through
    the model's per-step layers before the stack (``ps.pre``)."""
    if l > 0:
        return layer_input(parts)
    x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return layers.apply(ps.pre, x, ps.fma) if ps.pre else x


def run_direction(cell: Cell, w: Prepared, x, state, steps: Steps, out=None, row=0):
    """One layer and direction over x (T, B, I) from ``state`` (B, S): the cell's
    :meth:`~daskgru.cells.Cell.scan_inputs` block by block (``EAGER_BLOCK`` steps, at most
    ``BLOCK_BYTES`` of projected inputs). Returns (outputs (T, B, H), end state), the
    outputs written to ``out`` (T, B', H) rows ``row`` to ``row + B`` when given (then all
    of ``out`` is returned). Blocks are whole steps, so the result is the same for any block
    size."""
    T, B = x.shape[0], x.shape[1]
    H, G = w.hidden_size, w.w_hh_t.shape[1]
    dt = w.w_hh_t.dtype
    out = output((T, B, H), dt) if out is None else out
    if T == 0:
        return out, np.array(state, dtype=dt, copy=True).reshape(B, -1)
    step = max(1, min(EAGER_BLOCK, T, BLOCK_BYTES // max(1, B * G * dt.itemsize)))
    starts = range(0, T, step)
    for a in (reversed(starts) if steps.reverse else starts):
        b = min(a + step, T)
        _, state = cell.scan_inputs(w, x[a:b], state, steps.block(a, b), out=out[a:b],
                                    row=row)
    return out, state


def run_rows(threads, cell: Cell, w: Prepared, x, state, steps: Steps):
    """:func:`run_direction` with the batch rows split over up to ``threads`` threads (at
    least 4 rows a part; whether a task is worth splitting is the graph's decision, see
    :mod:`daskgru.graph.options`); the same bits as one call, since the kernels are
    row-invariant."""
    B = x.shape[1]
    parts = batch_parts(B, 0, threads, min_work=0)
    if len(parts) == 1:
        return run_direction(cell, w, x, state, steps)
    out = output((x.shape[0], B, w.hidden_size), w.w_hh_t.dtype)
    return out, in_row_parts(parts, x, state, steps, lambda xp, sp, stp, row: run_direction(
        cell, w, xp, sp, stp, out, row)[1])


def in_row_parts(parts, x, state, steps: Steps, run):
    """A scan split over the batch rows: ``run(x part, state part, steps part, first row)``
    for every part of ``parts`` (:func:`batch_parts`) side by side (:func:`in_parts`), each
    writing its rows of shared outputs (no copy of the outputs afterwards: on machines where
    first touches of fresh memory are slow that copy cost as much as a thread's share of the
    scan) and returning its end state; returns the end states of all rows."""
    if len(parts) == 1:
        return run(x, state, steps, 0)

    def part(s):
        rows = np.arange(s.start, s.stop)
        return run(np.ascontiguousarray(x[:, s]), np.asarray(state)[s], steps.rows(rows),
                   s.start)

    return np.concatenate(in_parts(part, parts), axis=0)


_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()


def in_parts(part, parts):
    """``[part(s) for s in parts]``, the first on the calling thread and the others on a
    kept pool at the same time."""
    futures = [_pool(len(parts) - 1).submit(part, s) for s in parts[1:]]
    return [part(parts[0])] + [f.result() for f in futures]


def _pool(n):
    """A process-wide pool of ``n`` threads for row parts (kept: starting threads for
    every call or task would cost more than a small one)."""
    from concurrent.futures import ThreadPoolExecutor

    with _POOLS_LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="daskgru-rows")
        return _POOLS[n]


def _stack(x, ps, states, lengths, mask, zero_masked, out=None, row=0):
    """The layers on x (T, B, I); returns (output, [final states (D, B, S) per layer]).
    ``out``: where the top layer (one direction) writes its outputs, rows ``row`` on."""
    T, B, _ = x.shape
    layer_in, finals, i = chunk_input(ps, 0, [x]), [], 0
    top = len(ps.cells) - 1
    for l, cell in enumerate(ps.cells):
        outs, ends = [], []
        for d, w in enumerate(ps.weights[l]):
            steps = Steps.make(B, T, lengths=lengths, mask=mask, reverse=d == 1,
                               zero_masked=zero_masked[l])
            shared = (out, row) if l == top and out is not None else (None, 0)
            o, s = run_direction(cell, w, layer_in, states[i], steps, *shared)
            outs.append(o)
            ends.append(s)
            i += 1
        layer_in = layer_input(outs, ps.merges[l])
        finals.append(np.stack(ends))
    return layer_in, finals


def run_stack(x, stack, states, lengths, mask, zero_masked, ps=None):
    """A stack over canonical NumPy arrays: x (T, B, I); ``states`` one (B, S) array per
    (layer, direction); ``lengths`` (B,) int64; ``mask`` (T, B) or None; ``zero_masked``
    one flag per layer; ``ps`` the prepared weights (default ``stack.prepare()``; a model's
    carry its per-step layers). Returns (output (T, B, D*H), [final states (D, B, S) per
    layer])."""
    T, B, I = x.shape
    dt = stack.dtype
    x = writable(x, dt)
    ps = stack.prepare() if ps is None else ps
    work = T * sum(lay.hidden_size * (lay.hidden_size + lay.input_size) * lay.num_directions
                   for lay in stack.layers)
    parts = batch_parts(B, work)
    if len(parts) == 1:
        return _stack(x, ps, states, lengths, mask, zero_masked)
    top = stack.layers[-1]
    # a top layer of one direction: every part writes its rows of one output (no copy of
    # the outputs afterwards; see run_rows)
    out = output((T, B, top.hidden_size), dt) if len(top.weights) == 1 else None

    def part(s):
        return _stack(x[:, s], ps, [st[s] for st in states], lengths[s],
                      None if mask is None else mask[:, s], zero_masked, out, s.start)

    res = in_parts(part, parts)
    if out is None:
        out = np.concatenate([r[0] for r in res], axis=1)
    finals = [np.concatenate([r[1][l] for r in res], axis=1) for l in range(len(res[0][1]))]
    return out, finals
