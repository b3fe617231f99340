"""Long-format tables: one row per (series id, timestamp), feature columns.

:func:`apply_frame` runs params or a model along time for every series of a pandas or
dask DataFrame. Within one table (a pandas DataFrame, or one partition) the series are
sorted by time and run together as the rows of one batch, padded to the longest with
``lengths`` — the kernels are row-invariant, so each series' outputs are the bits of
``dg.gru`` on that series alone.

A dask DataFrame partitioned **by time** (the Spark/Hive layout: every partition a time slice
of all series) is a scan over partitions, the seed document's scheme: partition k's task
takes the end state of every series from partition k-1 (a small state table: ids, their
states and their last time) and hands its own on. Memory stays O(partition + ids × state).
Partitioned **by id** (every series whole in one partition), each partition is one task and
nothing is carried.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["apply_frame", "Columns"]


class Columns(NamedTuple):
    """What the columns of a table mean for a call."""

    id: str
    time: str
    features: list
    outputs: list       # names of the columns added
    kind: str           # "output" (params: hidden states) or "prediction" (a model)


class States(NamedTuple):
    """The state table carried from partition to partition: per series id, its states (one
    row of all (layer, direction) states side by side) and the time of its last row."""

    ids: np.ndarray
    states: np.ndarray
    last: np.ndarray


def _model(p):
    from .model import Model
    from .params import RNNParams

    if isinstance(p, Model):
        return p
    if isinstance(p, RNNParams):
        return Model(p)
    raise TypeError(f"p must be a GRUParams, LSTMParams or Model, got {type(p).__name__}")


def _columns(df, m, p, id_col, time_col, feature_cols, output_prefix, prediction_prefix,
             return_hidden):
    """Check the table's columns against the call (names, dtypes) before any work."""
    from .model import Model

    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    cols = list(df.columns)
    for name, col in (("id_col", id_col), ("time_col", time_col)):
        if col not in cols and col != df.index.name:
            raise ValueError(f"{name} {col!r} is not a column (or the index) of the table; "
                             f"columns: {cols}")
    if feature_cols is None:
        if m.inputs is not None:
            feature_cols = list(m.inputs)
        else:
            feature_cols = [c for c in cols if c not in (id_col, time_col)
                            and is_numeric_dtype(df[c].dtype)
                            and not is_bool_dtype(df[c].dtype)]
    feature_cols = list(feature_cols)
    missing = [c for c in feature_cols if c not in cols]
    if missing:
        raise ValueError(f"feature columns {missing} are not columns of the table; columns: "
                         f"{cols}")
    bad = [c for c in feature_cols if not is_numeric_dtype(df[c].dtype)
           or is_bool_dtype(df[c].dtype)]
    if bad:
        raise TypeError(f"feature columns {bad} are not numeric (dtypes "
                        f"{[str(df[c].dtype) for c in bad]})")
    if m.inputs is not None and list(feature_cols) != m.inputs:
        if sorted(feature_cols) != sorted(m.inputs):
            raise ValueError(f"feature columns {feature_cols} are not the model's inputs "
                             f"{m.inputs}")
        feature_cols = list(m.inputs)
    if len(feature_cols) != m.input_size:
        raise ValueError(f"{len(feature_cols)} feature columns {feature_cols}, but the "
                         f"{'model' if isinstance(p, Model) else 'params'} take "
                         f"{m.input_size} inputs")
    if isinstance(p, Model):
        names = (m.targets if m.targets is not None
                 else [f"{prediction_prefix}{k}" for k in range(m.output_size)])
        outputs = [f"{prediction_prefix}{n}" if m.targets is not None else n for n in names]
        kind = "prediction"
        if return_hidden:
            outputs += [f"{output_prefix}{k}" for k in range(m.rnn.output_size)]
    else:
        outputs = [f"{output_prefix}{k}" for k in range(m.rnn.output_size)]
        kind = "output"
    clash = [c for c in outputs if c in cols]
    if clash:
        raise ValueError(f"output columns {clash} are already columns of the table; choose "
                         "another output_prefix")
    return Columns(id_col, time_col, feature_cols, outputs, kind)


def _dtype(df, c: Columns):
    """The float type the features compute in: their common float type (float16 in
    float32; integers, and pandas' nullable types, in float64)."""
    dt = np.result_type(*[np.dtype(getattr(df[f].dtype, "numpy_dtype", df[f].dtype))
                          for f in c.features])
    if dt.kind != "f" or dt.itemsize > 8:
        return np.dtype("float64")
    return np.dtype("float32") if dt.itemsize < 4 else dt


def _raw(df, name):
    """A column, or the index when it has that name, as a Series."""
    return df[name] if name in df.columns else df.index.to_series()


def _col(df, name):
    """A column, or the index when it has that name, as a NumPy array (an ordered
    categorical as its codes, so that it sorts in its categories' order)."""
    import pandas as pd

    s = _raw(df, name)
    if isinstance(s.dtype, pd.CategoricalDtype) and s.dtype.ordered:
        return np.where(s.isna(), -1, s.cat.codes.to_numpy())
    return s.to_numpy()


def _check_rows(df, c: Columns):
    """Missing ids or times are refused, naming them (duplicates: after the sort)."""
    ids, t = _raw(df, c.id).reset_index(drop=True), _raw(df, c.time).reset_index(drop=True)
    if ids.isna().any():
        raise ValueError(f"id column {c.id!r} holds missing values ({int(ids.isna().sum())} rows)")
    if t.isna().any():
        bad = ids[t.isna().to_numpy()].unique()[:5].tolist()
        raise ValueError(f"time column {c.time!r} holds missing values (series {bad})")


# Rows per batch of series run together (their padded steps x series x features).
BATCH_BYTES = 64 << 20


def _run_table(df, m, c: Columns, skipna, return_hidden, window=None, carried=None):
    """The outputs of a pandas table (rows in its order) and its end-of-table state table.
    ``carried``: the state table of the partitions before (None: zero states)."""
    import pandas as pd

    _check_rows(df, c)
    dt = _dtype(df, c)
    m = m.astype(dt)
    n_out = len(c.outputs)
    out = np.full((len(df), n_out), np.nan, dt)
    ids_all, times_all = _col(df, c.id), _col(df, c.time)
    try:
        order = np.lexsort((times_all, ids_all))
    except TypeError:
        raise ValueError(f"the values of id column {c.id!r} or time column {c.time!r} do not "
                         "sort (mixed types, e.g. numbers and strings?)") from None
    ids_sorted = ids_all[order]
    times_sorted = times_all[order]
    dup = np.flatnonzero((ids_sorted[1:] == ids_sorted[:-1])
                         & (times_sorted[1:] == times_sorted[:-1]))
    if len(dup):  # sorted: a duplicate (id, time) row sits next to its twin
        rows = [(ids_sorted[k], times_sorted[k]) for k in dup[:3]]
        raise ValueError(f"duplicate ({c.id}, {c.time}) rows, e.g. {rows}: each series may have "
                         "one row per time")
    x_sorted = df[c.features].to_numpy(dtype=dt, na_value=np.nan)[order]
    starts = (np.flatnonzero(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]]) if len(order)
              else np.zeros(0, int))
    ends = np.r_[starts[1:], len(order)] if len(starts) else np.zeros(0, int)
    uniq = ids_sorted[starts]
    sizes = m.rnn.state_sizes
    S = sum(sizes)
    new_states = np.zeros((len(uniq), S), dt)
    start_states = np.zeros((len(uniq), S), dt)
    if carried is not None and len(carried.ids):
        pos = pd.Index(carried.ids).get_indexer(uniq)
        known = pos >= 0
        start_states[known] = carried.states[pos[known]]
        first_t = times_sorted[starts]
        late = known & ~(first_t > carried.last[pos.clip(0)])
        if late.any():
            i = np.flatnonzero(late)[0]
            raise ValueError(f"series {uniq[i]!r} has rows at or before {c.time} "
                             f"{carried.last[pos[i]]!r} in an earlier partition: its rows are "
                             "split over partitions out of time order (partitioned_by=None "
                             "orders time slices by their first time)")
    lens = ends - starts
    width = max([*sizes, m.input_size, n_out])
    per = max(1, BATCH_BYTES // max(1, int(lens.max(initial=1)) * width * dt.itemsize))
    for b0 in range(0, len(uniq), per):
        sel = slice(b0, min(b0 + per, len(uniq)))
        L = lens[sel]
        T, B = int(L.max()), len(L)
        r0, r1 = starts[sel][0], ends[sel][-1]  # the batch's rows, sorted: contiguous
        if (L == T).all():  # equal lengths: a reshape, no scatter
            x = x_sorted[r0:r1].reshape(B, T, -1).transpose(1, 0, 2)
            put = None
        else:
            tt = np.concatenate([np.arange(n) for n in L])
            bb = np.repeat(np.arange(B), L)
            x = np.zeros((T, B, m.input_size), dt)
            x[tt, bb] = x_sorted[r0:r1]
            put = (tt, bb)
        mask = None
        if skipna:
            valid = ~np.isnan(x).any(axis=-1)
            mask = valid
            x = np.where(valid[..., None], x, 0)
        if window is not None:  # each step from its own window: nothing carried
            y = m.windowed(x, window, batch_first=False, mask=mask)
            hid, finals = None, []
        else:
            states = np.split(start_states[sel], np.cumsum(sizes)[:-1], axis=1)
            y, hid, finals, _ = m.run(x, batch_first=False, lengths=L, mask=mask,
                                      states=[s.copy() for s in states])
        res = y if c.kind == "output" else (np.concatenate([y, hid], axis=-1)
                                            if return_hidden else y)
        if skipna:
            res = np.where(mask[..., None], res, np.nan)
        out[order[r0:r1]] = (res.transpose(1, 0, 2).reshape(r1 - r0, -1) if put is None
                             else res[put])
        if finals:
            new_states[sel] = np.concatenate([f[d] for f in finals for d in range(f.shape[0])],
                                             axis=1)
    last = times_sorted[ends - 1]
    if carried is not None and len(carried.ids):  # series not in this table keep theirs
        gone = ~pd.Index(carried.ids).isin(uniq)
        uniq = np.concatenate([carried.ids[gone], uniq])
        new_states = np.concatenate([carried.states[gone], new_states])
        last = np.concatenate([carried.last[gone], last])
    added = pd.DataFrame(out, columns=c.outputs, index=df.index, copy=False)
    return pd.concat([df, added], axis=1), States(uniq, new_states, last)


def _partition(df, m, c, skipna, return_hidden, window, checked=None):
    return _run_table(df, m, c, skipna, return_hidden, window)[0]


def _time_partition(df, carried, m, c, skipna, return_hidden):
    return _run_table(df, m, c, skipna, return_hidden, None, carried)


class Span(NamedTuple):
    """What the layout detection reads of a partition: its time range and its ids."""

    first: object
    last: object
    ids: np.ndarray


def _span(df, c):
    if not len(df):
        return None
    t = _col(df, c.time)
    return Span(t.min(), t.max(), np.unique(_col(df, c.id)))


def _overlapping_ids(spans):
    """An id found in two partitions (None if every id is in one)."""
    import pandas as pd

    ids = [s.ids for s in spans if s is not None]
    if not ids:
        return None
    every = pd.Series(np.concatenate(ids))
    dup = every.duplicated()
    return every[dup].iloc[0] if dup.any() else None


def _ids_in_one_partition(c, *spans):
    """Task run before the partitions of a table said to be partitioned by id."""
    twice = _overlapping_ids(spans)
    if twice is not None:
        raise ValueError(f"series {twice!r} has rows in several partitions, but the table was "
                         f"said to be partitioned by {c.id!r}: pass partitioned_by='time' (time "
                         "slices) or None, or repartition so that each series is whole")
    return True


def _keys(df, c):
    """The columns the layout is read from (only those are loaded from Parquet)."""
    cols = [k for k in (c.id, c.time) if k in df.columns]
    return df[cols] if cols else df.index.to_frame()


def detect_layout(ddf, c: Columns):
    """``("time" | "id", order)``: how a dask DataFrame is partitioned, and the order of
    its partitions in time (for "time"; None: as they are).

    From the divisions when the index is the time or the id column and its divisions are
    known; else from one pass over the id and time columns of every partition: partitions
    whose id sets do not overlap are whole series (a single partition too); partitions
    whose time ranges do not overlap are time slices (chained in the order of their first
    time, whatever order the partitions come in, e.g. files named so that they list out of
    time order). Anything else is refused.
    """
    import dask

    if ddf.known_divisions and ddf.index.name in (c.time, c.id):
        return ("time" if ddf.index.name == c.time else "id"), None
    spans = dask.compute(*[dask.delayed(_span)(part, c) for part in _keys(ddf, c).to_delayed()])
    if _overlapping_ids(spans) is None:  # whole series (a single partition too): no chain
        return "id", None
    live = [k for k, s in enumerate(spans) if s is not None]
    by_time = sorted(live, key=lambda k: spans[k].first)
    if all(spans[a].last < spans[b].first for a, b in zip(by_time, by_time[1:])):
        # time slices: chain them in time order (empty ones anywhere)
        order = by_time + [k for k, s in enumerate(spans) if s is None]
        return "time", (None if order == list(range(len(spans))) else order)
    raise ValueError("the partitions are neither time slices (time ranges that do not "
                     "overlap) nor whole series (each id in one partition); repartition the "
                     "table by time or by id")


def apply_frame(df, p, *, id_col, time_col, feature_cols=None, output_prefix="h",
                prediction_prefix="prediction_", partitioned_by=None, skipna=False,
                return_hidden=False, window="model"):
    """Run params or a model along time for every series of a long-format table.

    Parameters
    ----------
    df : pandas.DataFrame or dask.dataframe.DataFrame
        One row per (series id, time) with feature columns; rows in any order, series of
        any length and start, ids that appear in some partitions only.
    p : GRUParams, LSTMParams or Model
    id_col, time_col : str
        The series id and the time of each row (times sort; any orderable type).
    feature_cols : list of str, optional
        The input columns, in order (default: the model's input names if it has them, else
        every numeric column but id and time).
    output_prefix : str
        Params: the added columns are ``f"{output_prefix}{k}"``, the top layer's states.
        A model with ``return_hidden``: those columns too.
    prediction_prefix : str
        A model: its predictions, ``f"{prediction_prefix}{target}"`` (the model's target
        names) or ``f"{prediction_prefix}{k}"``.
    partitioned_by : {"time", "id"}, optional
        How a dask DataFrame is partitioned: time slices of all series, in time order (a
        chain over partitions carrying each series' state) or whole series (one task each;
        a check that no id is in two partitions runs first). None: detected (see
        :func:`detect_layout`): from known divisions of a time or id index, else from one
        pass over the id and time columns, which also orders time slices listed out of
        time order (e.g. files whose names list out of time order). An id whose rows are split
        over
        partitions out of time order is an error at compute time, never a wrong state.
    skipna : bool
        A row with a NaN feature is missing: the state carries across it, its outputs are
        NaN (see :func:`daskgru.apply_rnn`).
    return_hidden : bool
        A model: also the top layer's states.
    window : int, None or "model"
        Windowed inference as :func:`daskgru.apply_rnn` takes it (default: the model's own
        window); not over time-partitioned dask tables (a window would span partitions).
        The features compute in their common float dtype (integer columns in float64).

    Returns
    -------
    The table with the output columns added, rows in their input order: pandas for pandas
    (computed), dask for dask (lazy, the same partitions and divisions). Each series' outputs
    equal :func:`daskgru.gru` (or the model) on that series sorted by time, bit for bit.

    Examples
    --------
    >>> import numpy as np, pandas as pd, daskgru as dg
    >>> df = pd.DataFrame({"station": ["a"] * 4 + ["b"] * 3,
    ...                    "day": [3, 1, 2, 4, 1, 2, 3],
    ...                    "rain": np.arange(7.0), "temp": np.ones(7)})
    >>> out = dg.apply_frame(df, dg.GRUParams.random(2, 3, seed=0), id_col="station",
    ...                      time_col="day")
    >>> list(out.columns)
    ['station', 'day', 'rain', 'temp', 'h0', 'h1', 'h2']
    """
    m = _model(p)
    if isinstance(window, str):
        if window != "model":
            raise ValueError(f"window must be a number of steps, None or 'model', got {window!r}")
        window = m.window
    if partitioned_by not in (None, "time", "id"):
        raise ValueError(f"partitioned_by must be 'time', 'id' or None, got {partitioned_by!r}")
    c = _columns(df, m, p, id_col, time_col, feature_cols, output_prefix, prediction_prefix,
                 return_hidden)
    if not m.return_sequences:
        raise ValueError("apply_frame gives one output per row: a sequence-to-one model has "
                         "one per series (run it with apply_rnn)")
    if window is not None and return_hidden:
        raise ValueError("return_hidden with windowed inference: each step's prediction comes "
                         "from its own window, there is no one hidden state per row")
    if not hasattr(df, "npartitions"):
        return _run_table(df, m, c, skipna, return_hidden, window)[0]
    import dask
    import dask.dataframe as dd

    meta = df._meta.copy()
    dt = _dtype(meta, c)
    for name in c.outputs:
        meta[name] = np.array([], dt)
    order, said = None, partitioned_by is not None
    if not said:
        partitioned_by, order = detect_layout(df, c)
    if partitioned_by == "id":
        checked = None
        if said and not (df.known_divisions and df.index.name == c.id):
            # said, not detected: every id in one partition is checked before any work
            checked = dask.delayed(_ids_in_one_partition)(
                c, *[dask.delayed(_span)(part, c) for part in _keys(df, c).to_delayed()])
        return df.map_partitions(_partition, m, c, skipna, return_hidden, window, checked,
                                 meta=meta)
    if window is not None:
        raise ValueError("windowed inference over a table partitioned by time is not supported "
                         "(a window spans partitions): repartition by id, or pass window=None")
    if any(lay.num_directions == 2 for lay in m.rnn.layers):
        raise ValueError("a bidirectional stack needs each series whole: partition the table "
                         "by id")
    parts = df.to_delayed()
    model = dask.delayed(m, pure=True)  # one key, not one copy per task
    carried, outs = None, [None] * len(parts)
    for k in order or range(len(parts)):
        outs[k], carried = dask.delayed(_time_partition, nout=2, pure=True)(
            parts[k], carried, model, c, skipna, return_hidden)
    return dd.from_delayed(outs, meta=meta, divisions=df.divisions, verify_meta=False)
