"""Resumable runs over files (``daskgru run``) and the embedded demo (``daskgru demo``).

A run processes the input one *unit* of time at a time (one time chunk for a
unidirectional stack; the whole series for a bidirectional one, whose reverse direction
needs the end of the series first). After each unit it writes, in this order:

1. the unit's region of ``output`` into the zarr store;
2. the boundary state after the unit (an LSTM's h and c) into one of two state slots
   (``daskgru_state``, slot ``(k + 1) % 2``), so the slot the counter points at is never
   being overwritten;
3. the store attribute ``daskgru_completed_units = k + 1`` (zarr writes metadata files
   atomically).

A killed run therefore leaves a store whose counter names a unit whose output and
start state are complete; rerunning the same command continues from there, and because
``apply_rnn(..., h0=state)`` continues a run bit for bit, the final store equals an
uninterrupted run's. ``daskgru_complete`` is set last, after ``final_state`` is written
and the slots removed; until then the store says ``daskgru_complete = 0`` and unwritten
output is NaN. The store is created under a temporary name and renamed into place, and
it carries a fingerprint of input, params and options: a rerun that differs refuses to
resume.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np

from .files import hold, stale_temporaries
from .numerics import use_fma

__all__ = ["RunError", "RunResult", "run", "run_table", "open_input", "demo"]

STATE = "daskgru_state"
FORMAT_VERSION = 2
DEFAULT_TIME_CHUNK = 1000


class RunError(Exception):
    """A problem with the user's input or options: reported in one line, no traceback."""


def _crash_point(name, unit=None):
    """Fault injection for the tests: ``DASKGRU_TEST_KILL_AT=name`` (or ``name@k``: at unit
    k) kills this process with SIGKILL here, as a power cut or an OOM killer would."""
    want = os.environ.get("DASKGRU_TEST_KILL_AT", "")
    if want == name or (unit is not None and want == f"{name}@{unit}"):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


MODEL_SOURCES = (".pt", ".pth", ".ckpt", ".pt2", ".keras", ".h5", ".hdf5")


def unreadable(path, error):
    """The message for a params/model file that cannot be read."""
    what = (f"cannot read {path!r} as a daskgru params or model file (netCDF or zarr, written "
            "by save or 'daskgru convert')")
    if path.lower().rstrip("/").endswith(MODEL_SOURCES) or os.path.isdir(path) and \
            os.path.exists(os.path.join(path, "config.yml")):
        return f"{what}; convert it first: daskgru convert {path} -o model.nc"
    if isinstance(error, ValueError) and "written by" in str(error):
        return f"{what}: {str(error).splitlines()[0]}"
    return what


@dataclass
class RunResult:
    output: str
    units: int
    resumed_from: int
    already_complete: bool
    seconds: float


# ----------------------------------------------------------------------------- input
def _is_parquet(path) -> bool:
    """A Parquet file, or a directory of them (Hive partitions too) that is not zarr."""
    path = os.fspath(path).rstrip("/" + os.sep)
    if path.lower().endswith((".parquet", ".pq")):
        return True
    if not os.path.isdir(path) or any(os.path.exists(os.path.join(path, f))
                                      for f in (".zgroup", "zarr.json", ".zattrs")):
        return False
    for _, _, files in os.walk(path):
        if any(f.endswith((".parquet", ".pq")) for f in files):
            return True
    return False


def _is_zarr(path) -> bool:
    path = os.fspath(path).rstrip("/" + os.sep)
    return path.endswith(".zarr") or os.path.isdir(path)


def open_input(path):
    """Open a netCDF file or a zarr store lazily (dask-backed, the file's own chunks)."""
    import xarray as xr

    path = os.fspath(path)
    if not os.path.exists(path):
        raise RunError(f"input {path!r} does not exist")
    try:
        if _is_zarr(path):
            return xr.open_zarr(path, consolidated=None)
        return xr.open_dataset(path, chunks={})
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input file
        raise RunError(f"cannot read input {path!r} as netCDF or zarr: {e}") from None


def select_input(ds, *, time_dim, feature_dim, features=None, variable=None):
    """The object and ``features`` to hand to :func:`daskgru.apply_rnn`.

    A Dataset with a ``feature_dim`` gives the one data variable over (time, feature)
    (or ``variable``); a Dataset without it gives its data variables as features.
    """
    if time_dim not in ds.dims:
        raise RunError(f"time dim {time_dim!r} is not a dim of the input; dims: {tuple(ds.dims)}")
    if variable is not None:
        if variable not in ds.data_vars:
            raise RunError(f"variable {variable!r} is not in the input; data variables: "
                           f"{list(ds.data_vars)}")
        if features is not None:
            raise RunError("give either --variable or --features, not both")
        return ds[variable], None
    if feature_dim in ds.dims:
        if features is not None:
            raise RunError(f"--features stacks data variables into a feature dim, but the input "
                           f"already has a dim {feature_dim!r}")
        cands = [k for k, v in ds.data_vars.items() if time_dim in v.dims and feature_dim in v.dims]
        if len(cands) != 1:
            raise RunError(f"{len(cands)} data variables have dims ({time_dim!r}, {feature_dim!r}): "
                           f"{cands}; choose one with --variable")
        return ds[cands[0]], None
    return ds, features


def _parse_chunks(chunks, time_dim):
    """{"time": 100, "lat": 8} from "time=100,lat=8" (or a dict)."""
    if chunks is None:
        return {}
    if isinstance(chunks, dict):
        items = chunks.items()
    else:
        items = []
        for part in str(chunks).split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise RunError(f"--chunks must look like {time_dim}=N[,dim=M], got {chunks!r}")
            k, v = part.split("=", 1)
            items.append((k.strip(), v.strip()))
    out = {}
    for k, v in items:
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise RunError(f"--chunks: size of {k!r} must be an integer, got {v!r}") from None
        if n < 1:
            raise RunError(f"--chunks: size of {k!r} must be >= 1, got {n}")
        out[k] = n
    return out


def _path_stat(path):
    """Size and latest modification time of a file or of every file under a directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        size, mtime, n = 0, 0, 0
        for root, _, files in os.walk(path):
            for f in files:
                st = os.stat(os.path.join(root, f))
                size, mtime, n = size + st.st_size, max(mtime, st.st_mtime_ns), n + 1
        return {"bytes": size, "mtime_ns": mtime, "files": n}
    st = os.stat(path)
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint(input_path, obj, p, options) -> str:
    """A digest of the input (structure, coords, attrs, file sizes and times), the params
    (every weight, bit for bit) and the options. Equal digests are required to resume."""
    from dask.base import tokenize

    coords = {k: v.values for k, v in obj.coords.items()}
    structure = {
        "dims": dict(obj.sizes),
        "vars": ({k: [list(v.dims), str(v.dtype)] for k, v in obj.data_vars.items()}
                 if hasattr(obj, "data_vars") else {obj.name: [list(obj.dims), str(obj.dtype)]}),
        "attrs": repr(sorted(obj.attrs.items())),
    }
    doc = {
        "version": FORMAT_VERSION,
        "input": {"path": os.path.basename(os.path.abspath(input_path)),
                  "stat": _path_stat(input_path), "structure": structure,
                  "coords": tokenize(coords)},
        "params": tokenize(p), "fma": use_fma(),
        "options": options,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- store
def _read_attrs(path):
    import zarr

    try:
        return dict(zarr.open_group(os.fspath(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - anything unreadable is "not a daskgru store"
        return None


def store_status(path):
    """``None`` when ``path`` does not exist; else a dict with ``complete``,
    ``completed_units``, ``units`` and ``fingerprint`` (None entries: not a run store)."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        return None
    attrs = _read_attrs(path) or {}
    return {
        "complete": bool(attrs.get("daskgru_complete", 0)),
        "completed_units": attrs.get("daskgru_completed_units"),
        "units": attrs.get("daskgru_units"),
        "fingerprint": attrs.get("daskgru_fingerprint"),
    }


def _remove(path):
    from .files import remove

    remove(path, missing_ok=False)


def _clean(ds):
    """Drop on-disk encodings of the input (netCDF chunk sizes, fill values) so that the
    zarr store gets its own."""
    ds = ds.copy()
    for v in ds.variables.values():
        v.encoding = {}
    return ds


def _create_store(path, template, state, dtype, attrs):
    """Write metadata and coords under a temporary name, then rename it to ``path``;
    ``state``: (dims, shape, chunks) of the two state slots, or None."""
    import dask.array as da
    import xarray as xr

    from .files import temporary_name

    tmp = temporary_name(path)
    try:
        ds = template.copy()
        if state is not None:
            dims, shape, chunks = state
            ds[STATE] = xr.Variable(("slot",) + dims,
                                    da.zeros((2,) + shape, dtype=dtype, chunks=(1,) + chunks))
        ds.attrs.update(attrs)
        ds.to_zarr(tmp, mode="w", compute=False, consolidated=False, zarr_format=2)
        _crash_point("create")
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            _remove(tmp)
        raise


# ----------------------------------------------------------------------------- run
def _load(params, window):
    """The params or model to run (a path or the object) and the window it runs with."""
    from .model import Model, load_model
    from .params import RNNParams

    if isinstance(params, (RNNParams, Model)):
        p = params
    else:
        if not os.path.exists(os.fspath(params)):
            raise RunError(f"params file {os.fspath(params)!r} does not exist")
        try:
            m = load_model(params)
        except Exception as e:  # noqa: BLE001
            raise RunError(unreadable(os.fspath(params), e)) from None
        p = m.rnn if m.rnn_only else m
    if isinstance(window, str):
        if window != "model":
            raise RunError(f"--window must be a number of steps, 'model' or 'none', got "
                           f"{window!r}")
        window = p.window if isinstance(p, Model) else None
    return p, window


def run(input, params, output, *, time_dim="time", feature_dim="feature", features=None,
        variable=None, chunks=None, method="scan", skipna=False, window="model",
        id_col=None, time_col="time", partitioned_by=None, overwrite=False, progress=True,
        log=print) -> RunResult:
    """Run a GRU or LSTM over a netCDF/zarr file into a zarr store, or over a Parquet
    table into a Parquet dataset, resumably (see the module doc).

    Parameters
    ----------
    input : path
        netCDF file or zarr store with ``time_dim`` and either ``feature_dim`` (one data
        variable over both, or ``variable``) or data variables used as ``features``; or a
        Parquet file or dataset directory (Hive partitions too) of rows (``id_col``,
        ``time_col``, features), written as a Parquet dataset (see :func:`run_table`).
    params : path, GRUParams, LSTMParams or Model
        A params or model file (``daskgru convert``, ``save``), or the object itself. A
        model's store holds ``prediction``; params' ``output`` and the final states.
    output : path
        The zarr store to write. An incomplete store from the same command is resumed;
        one from a different command is refused unless ``overwrite``.
    chunks : str or dict
        ``"time=N"`` time chunk size (the unit of resumption; default: the input's own time
        chunk, else 1000), optionally with batch dims (``"time=N,lat=8"``).
    skipna : bool
        Steps with a NaN feature are missing (see :func:`daskgru.apply_rnn`).
    window : int, None or "model"
        Windowed inference as :func:`daskgru.apply_rnn` takes it (default: the model's own
        window, e.g. a NeuralHydrology model's ``seq_length``). Each time chunk reads the
        window - 1 steps before it; nothing is carried from chunk to chunk.

    id_col, time_col, partitioned_by : str
        Tables only: the series id and time columns, and the layout (see
        :func:`daskgru.apply_frame`).

    Returns
    -------
    RunResult
    """
    import dask
    import zarr

    from .model import Model
    from .xarray import apply_rnn

    t_start = time.perf_counter()
    output = os.fspath(output).rstrip("/" + os.sep)
    if isinstance(features, str):
        features = [f.strip() for f in features.split(",") if f.strip()]
    if _is_parquet(input):
        given = [name for name, v in (("--method", method != "scan"), ("--chunks", chunks),
                                      ("--variable", variable)) if v]
        if given:
            raise RunError(f"{', '.join(given)} are for netCDF and zarr input; a table runs by "
                           "its partitions with the scan")
        return run_table(input, params, output, id_col=id_col, time_col=time_col,
                         features=features, partitioned_by=partitioned_by, skipna=skipna,
                         window=window, overwrite=overwrite, progress=progress, log=log)
    if id_col is not None:
        raise RunError(f"--id-col is for Parquet tables; {os.fspath(input)!r} is read as "
                       "netCDF or zarr")
    p, window = _load(params, window)
    ds_in = open_input(input)
    obj, feats = select_input(ds_in, time_dim=time_dim, feature_dim=feature_dim,
                              features=features, variable=variable)
    chunk_req = _parse_chunks(chunks, time_dim)
    unknown = [d for d in chunk_req if d not in obj.dims]
    if unknown:
        raise RunError(f"--chunks names dims {unknown} that the input lacks; dims: {tuple(obj.dims)}")
    if feature_dim in chunk_req:
        raise RunError(f"--chunks: the feature dim {feature_dim!r} is never chunked")
    T = obj.sizes[time_dim]
    if time_dim not in chunk_req:
        own = obj.chunksizes.get(time_dim) if hasattr(obj, "chunksizes") else None
        own = own[0] if own and own[0] < T else None
        chunk_req[time_dim] = own or min(T, DEFAULT_TIME_CHUNK)
    N = min(chunk_req[time_dim], T)
    obj = obj.chunk({**chunk_req, time_dim: N})

    # Validates dims, sizes and dtypes (ValueError/TypeError name the culprit) and gives
    # the layout of the store: the lazy result of the whole run, never computed.
    try:
        template = apply_rnn(obj, p, time_dim=time_dim, feature_dim=feature_dim,
                             method=method, features=feats, skipna=skipna, window=window)
    except (ValueError, TypeError) as e:
        raise RunError(str(e)) from None
    rnn = p.rnn if isinstance(p, Model) else p
    var = "prediction" if isinstance(p, Model) else "output"
    out_da = template[var]
    finals = [v for v in ("final_state", "final_cell") if v in template]
    batch_dims = [d for d in obj.dims if d not in (time_dim, feature_dim)]
    if feats is not None:  # a Dataset's variables are the features
        batch_dims = [d for d in out_da.dims if d in obj.dims and d != time_dim]
    bchunks = {d: (obj.chunksizes[d][0] if d in obj.chunksizes else obj.sizes[d])
               for d in batch_dims}
    timed = time_dim in out_da.dims
    out_chunks = {**({time_dim: N} if timed else {}), **bchunks}
    template[var] = out_da.chunk(out_chunks)
    for v in finals:
        template[v] = template[v].chunk({"layer": 1, "direction": 1, **bchunks})
    template = _clean(template)
    dtype = out_da.dtype

    # Units of resumption: time chunks, carrying the states (params, and models whose
    # stack is one GRUParams/LSTMParams) or reading the window before them (windowed
    # runs). The whole series at once where neither works: a bidirectional stack (its
    # reverse direction needs the end first), a sequence-to-one model, other stacks.
    edges = list(range(0, T, N)) + [T]
    whole = (not timed or (window is None and not finals)
             or (window is None and any(lay.num_directions == 2 for lay in rnn.layers)))
    if whole:
        edges = [0, T]
    units = len(edges) - 1
    stateful = bool(finals) and window is None
    options = {"time_dim": time_dim, "feature_dim": feature_dim, "features": feats,
               "variable": variable, "chunks": chunk_req, "method": method, "units": edges,
               "skipna": bool(skipna), "window": window}
    fp = fingerprint(input, obj, p, options)

    with hold(output, error=RunError):  # one writer per output
        for tmp in stale_temporaries(output):  # a run killed while creating the store
            _remove(tmp)
        status = store_status(output)
        if status is not None and (overwrite or status["fingerprint"] is None):
            if status["fingerprint"] is None and not overwrite:
                raise RunError(f"output {output!r} exists and is not a daskgru run store; "
                               f"remove it or pass --overwrite")
            if status["fingerprint"] is None and not os.path.isdir(output):
                raise RunError(f"output {output!r} exists and is not a zarr store; refusing to "
                               f"replace it")
            _remove(output)
            status = None
        if status is not None and status["fingerprint"] != fp:
            raise RunError(f"output {output!r} was written by a different run (input, params or "
                           f"options differ); remove it or pass --overwrite")
        if status is not None and status["complete"]:
            if not os.path.exists(os.path.join(output, ".zmetadata")):
                zarr.consolidate_metadata(output)  # killed between the flag and this
            log(f"{output} is already complete ({units} of {units} time chunks); nothing to do")
            return RunResult(output, units, units, True, time.perf_counter() - t_start)
        if status is None:
            state = None
            if stateful:
                L, D, H = rnn.num_layers, rnn.num_directions, rnn.hidden_size
                state = (("part", "layer", "direction", *batch_dims, "hidden"),
                         (len(finals), L, D, *(obj.sizes[d] for d in batch_dims), H),
                         (1, 1, 1, *bchunks.values(), H))
            attrs = {"daskgru_fingerprint": fp, "daskgru_units": units,
                     "daskgru_unit_edges": edges, "daskgru_completed_units": 0,
                     "daskgru_complete": 0, "daskgru_format": FORMAT_VERSION}
            _create_store(output, template, state, dtype, attrs)
            done = 0
            _crash_point("created")
        else:
            done = int(status["completed_units"])
            log(f"resuming {output}: {done} of {units} time chunks already done")

        group = zarr.open_group(output, mode="r+")
        delay = float(os.environ.get("DASKGRU_TEST_CHUNK_DELAY", "0") or 0)
        no_time = [k for k, v in template.coords.items() if time_dim not in v.dims]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=T, initial=edges[done], unit="step", desc="daskgru run",
                       dynamic_ncols=True)
        try:
            for k in range(done, units):
                t0, t1 = edges[k], edges[k + 1]
                start, lo = {}, t0
                if k and stateful:
                    slot = np.asarray(group[STATE][k % 2])
                    start = {("h0", "c0")[i]: slot[i].reshape(rnn.num_layers * rnn.num_directions,
                                                              *slot.shape[3:])
                             for i in range(len(finals))}
                if window is not None:  # the steps before the chunk that its windows read
                    lo = max(0, t0 - window + 1)
                part = apply_rnn(obj.isel({time_dim: slice(lo, t1)}), p, time_dim=time_dim,
                                 feature_dim=feature_dim, method=method, features=feats,
                                 skipna=skipna, window=window, **start)
                if timed:
                    region = part[[var]].drop_vars(no_time, errors="ignore")
                    region = region.isel({time_dim: slice(t0 - lo, None)})
                    region[var] = region[var].chunk(out_chunks)
                    write = _clean(region).to_zarr(output, region={time_dim: slice(t0, t1)},
                                                   mode="r+", compute=False, consolidated=False)
                    _, *ends = dask.compute(write, *[part[v].data for v in finals])
                else:  # a sequence-to-one prediction: one unit, written whole
                    pred, *ends = dask.compute(part[var].data, *[part[v].data for v in finals])
                    group[var][...] = np.asarray(pred, dtype=dtype)
                _crash_point("output", k)
                if stateful:
                    # Slot (k + 1) % 2 is not the one the counter points at: a kill while
                    # writing it leaves the previous boundary state intact.
                    group[STATE][(k + 1) % 2] = np.stack(ends).astype(dtype)
                elif ends:  # one unit: the final states directly
                    for v, e in zip(finals, ends):
                        group[v][...] = np.asarray(e, dtype=dtype)
                _crash_point("state", k)
                group.attrs["daskgru_completed_units"] = k + 1
                if bar is not None:
                    bar.update(t1 - t0)
                if delay:
                    time.sleep(delay)
            # Finish: final state, slots away, and only then the completion flag.
            if STATE in group:
                slot = np.asarray(group[STATE][units % 2])
                for i, v in enumerate(finals):
                    group[v][...] = slot[i]
                del group[STATE]
            _crash_point("finals")
            group.attrs["daskgru_complete"] = 1
            _crash_point("flag")
            zarr.consolidate_metadata(output)  # after the flag, so readers see it too
        finally:
            if bar is not None:
                bar.close()
        return RunResult(output, units, done, False, time.perf_counter() - t_start)


# ----------------------------------------------------------------------------- tables
TABLE_META = "_daskgru.json"


def _table_status(path):
    """Like :func:`store_status`, for a Parquet output directory (its ``_daskgru.json``)."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        return None
    try:
        with open(os.path.join(path, TABLE_META)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = {}
    return {"complete": bool(meta.get("complete", 0)),
            "completed_units": meta.get("completed_units"), "units": meta.get("units"),
            "fingerprint": meta.get("fingerprint"), "meta": meta}


def _write_json(path, doc):
    from .files import temporary_name

    tmp = temporary_name(path)
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def _write_parquet(df, path):
    from .files import temporary_name

    tmp = temporary_name(path)
    try:
        df.to_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def _state_file(output, n):
    return os.path.join(output, f"_daskgru_state-{n}.parquet")


def _save_states(states, path):
    import pandas as pd

    cols = {"id": states.ids, "last": states.last}
    cols.update({f"s{j}": states.states[:, j] for j in range(states.states.shape[1])})
    _write_parquet(pd.DataFrame(cols), path)


def _load_states(path, dtype):
    import pandas as pd

    from .frame import States

    df = pd.read_parquet(path)
    s = [c for c in df.columns if c.startswith("s")]
    return States(df["id"].to_numpy(), df[s].to_numpy(dtype=dtype), df["last"].to_numpy())


def run_table(input, params, output, *, id_col, time_col="time", features=None,
              partitioned_by=None, skipna=False, window="model", overwrite=False,
              progress=True, log=print) -> RunResult:
    """Run params or a model over a Parquet table into a Parquet dataset, resumably.

    The input is read with ``dask.dataframe.read_parquet`` (a file, or a directory as Spark
    and Hive write it). Each partition is a unit: its rows with the output columns of
    :func:`daskgru.apply_frame` are written as ``OUT/part.K.parquet`` (K: the input
    partition). A table partitioned by time is a chain: after each partition the state
    table of every series goes to ``OUT/_daskgru_state-N.parquet``, then the counter in
    ``OUT/_daskgru.json``; a killed run continues from the counter with its state table
    and ends with the same bits. Files starting with ``_`` or ``.`` are not data to
    Parquet readers, so ``dask.dataframe.read_parquet(OUT)`` reads the result.
    """
    import dask.dataframe as dd
    from dask.base import tokenize

    from . import frame
    from .model import Model

    t_start = time.perf_counter()
    if not id_col:
        raise RunError("a table needs --id-col: the column naming each row's series")
    p, window = _load(params, window)
    m = frame._model(p)
    try:
        ddf = dd.read_parquet(os.fspath(input))
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input
        raise RunError(f"cannot read input {os.fspath(input)!r} as Parquet: {e}") from None
    if partitioned_by not in (None, "time", "id"):
        raise RunError(f"--partitioned-by must be 'time' or 'id', got {partitioned_by!r}")
    try:
        c = frame._columns(ddf, m, p, id_col, time_col, features, "h", "prediction_",
                           False)
        if not m.return_sequences:
            raise ValueError("a table run writes one output per row: a sequence-to-one "
                             "model has one per series")
        order = None
        if partitioned_by is None:
            partitioned_by, order = frame.detect_layout(ddf, c)
        elif partitioned_by == "id":  # said: every id in one partition, checked first
            import dask

            frame._ids_in_one_partition(c, *dask.compute(
                *[dask.delayed(frame._span)(part, c)
                  for part in frame._keys(ddf, c).to_delayed()]))
    except (ValueError, TypeError) as e:
        raise RunError(str(e)) from None
    if isinstance(window, int) and partitioned_by == "time":
        raise RunError("windowed inference over a table partitioned by time is not supported "
                       "(a window spans partitions): pass --window none, or partition by id")
    if partitioned_by == "time" and any(lay.num_directions == 2 for lay in m.rnn.layers):
        raise RunError("a bidirectional stack needs each series whole: partition the table "
                       "by id")
    order = list(order or range(ddf.npartitions))
    units = len(order)
    options = {"id_col": id_col, "time_col": time_col, "features": c.features,
               "layout": partitioned_by, "order": order, "skipna": bool(skipna),
               "window": window}
    doc = {"version": FORMAT_VERSION,
           "input": {"path": os.path.basename(os.path.abspath(input)),
                     "stat": _path_stat(input),
                     "columns": {k: str(v) for k, v in ddf.dtypes.items()}},
           "params": tokenize(p), "fma": use_fma(), "options": options}
    fp = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    dtype = np.dtype(frame._dtype(ddf._meta, c))

    with hold(output, error=RunError):  # one writer per output
        for tmp in stale_temporaries(output) + stale_temporaries(output, inside=True):
            _remove(tmp)
        status = _table_status(output)
        if status is not None and (overwrite or status["fingerprint"] is None):
            if not os.path.isdir(output):
                raise RunError(f"output {output!r} exists and is not a directory; refusing to "
                               "replace it")
            if status["fingerprint"] is None and not overwrite:
                raise RunError(f"output {output!r} exists and is not a daskgru run output; "
                               "remove it or pass --overwrite")
            _remove(output)
            status = None
        if status is not None and status["fingerprint"] != fp:
            raise RunError(f"output {output!r} was written by a different run (input, params or "
                           "options differ); remove it or pass --overwrite")
        if status is not None and status["complete"]:
            log(f"{output} is already complete ({units} of {units} partitions); nothing to do")
            return RunResult(output, units, units, True, time.perf_counter() - t_start)
        meta = {"fingerprint": fp, "units": units, "completed_units": 0, "complete": 0,
                "layout": partitioned_by, "order": order, "format": FORMAT_VERSION,
                "kind": "prediction" if isinstance(p, Model) else "output",
                "columns": c.outputs}
        if status is None:
            from .files import temporary_name

            tmp = temporary_name(output)
            os.makedirs(tmp)
            _write_json(os.path.join(tmp, TABLE_META), meta)
            _crash_point("create")
            os.replace(tmp, output)
            done = 0
            _crash_point("created")
        else:
            done = int(status["completed_units"])
            log(f"resuming {output}: {done} of {units} partitions already done")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=units, initial=done, unit="partition", desc="daskgru run",
                       dynamic_ncols=True)
        delay = float(os.environ.get("DASKGRU_TEST_CHUNK_DELAY", "0") or 0)
        chained = partitioned_by == "time"
        try:
            for n in range(done, units):
                k = order[n]
                part = ddf.get_partition(k).compute()
                carried = (_load_states(_state_file(output, n), dtype)
                           if chained and n else None)
                try:
                    res, states = frame._run_table(part, m, c, skipna, False,
                                                   None if chained else window, carried)
                except (ValueError, TypeError) as e:
                    raise RunError(f"partition {k}: {e}") from None
                _write_parquet(res, os.path.join(output, f"part.{k:05d}.parquet"))
                _crash_point("output", n)
                if chained:
                    _save_states(states, _state_file(output, n + 1))
                _crash_point("state", n)
                _write_json(os.path.join(output, TABLE_META), {**meta, "completed_units": n + 1})
                if chained and n:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(_state_file(output, n))
                if bar is not None:
                    bar.update(1)
                if delay:
                    time.sleep(delay)
            for f in os.listdir(output):  # state tables: not part of the result
                if f.startswith("_daskgru_state-"):
                    os.remove(os.path.join(output, f))
            _crash_point("finals")
            _write_json(os.path.join(output, TABLE_META),
                        {**meta, "completed_units": units, "complete": 1})
            _crash_point("flag")
        finally:
            if bar is not None:
                bar.close()
    return RunResult(output, units, done, False, time.perf_counter() - t_start)


# ----------------------------------------------------------------------------- demo
def synthetic_field(time=4000, lat=16, lon=16, feature=3, *, time_chunk=500, seed=0):
    """A lazy (time, lat, lon, feature) float32 field: a seasonal cycle whose phase and
    amplitude vary with latitude and longitude, a trend, and noise (dask-generated)."""
    import dask.array as da
    import xarray as xr

    t = da.arange(time, chunks=time_chunk, dtype="float32")[:, None, None, None]
    la = np.linspace(-60, 60, lat, dtype="float32")
    lo = np.linspace(0, 360, lon, endpoint=False, dtype="float32")
    amp = (1.0 + np.cos(np.deg2rad(la)))[None, :, None, None]
    phase = np.deg2rad(lo)[None, None, :, None]
    k = np.arange(1, feature + 1, dtype="float32")[None, None, None, :]
    lat_chunk = max(1, lat // 2)
    rng = da.random.default_rng(seed)
    noise = rng.standard_normal((time, lat, lon, feature), dtype="float32",
                                chunks=(time_chunk, lat_chunk, lon, feature))
    signal = amp * da.sin(2 * np.pi * t * k / 365.25 + phase) + 1e-4 * t
    field = (signal + 0.3 * noise).astype("float32")
    return xr.DataArray(
        field, dims=("time", "lat", "lon", "feature"),
        coords={"time": np.arange(time), "lat": la, "lon": lo,
                "feature": [f"f{i}" for i in range(feature)]},
        name="field", attrs={"description": "synthetic seasonal field (daskgru demo)"},
    )


def _keys_of(collection):
    from distributed import futures_of

    return [f.key for f in futures_of(collection)]


def _forget(client, keys, timeout=30.0):
    """Wait until the scheduler and this client have forgotten ``keys``, released (their
    last future dropped), so that the same graph submitted again is computed again.
    Released, not cancelled: a cancel's reply to the client could arrive after the next
    graph's futures for the same keys exist, and cancel them."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and (any(k in client.futures for k in keys)
                                      or client.run_on_scheduler(_known, keys)):
        time.sleep(0.02)


def _known(keys, dask_scheduler=None):
    return any(k in dask_scheduler.tasks for k in keys)


def _warm_kernels(p):
    """Load (or compile) the kernels a float GRU of ``p`` uses, in the process this runs in
    (the demo runs it on every worker before timing)."""
    from .api import gru

    gru(np.zeros((2, 1, p.input_size), p.dtype), p)


def demo(output="daskgru-demo", *, scheduler=None, workers=None, time_steps=16000, grid=16,
         hidden=32, time_chunk=1000, baseline=True, log=print):
    """The ``daskgru demo`` command: a GRU over a synthetic field on a dask cluster.

    Returns a dict of paths and timings.
    """
    missing = [m for m in ("zarr", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise RunError(f"the demo needs {' and '.join(missing)}: "
                       f"pip install 'daskgru[complete]' (or pip install -e '.[complete]')")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import xarray as xr
    from distributed import Client, LocalCluster, progress as dask_progress

    from . import reference
    from .params import GRUParams
    from .xarray import apply_gru

    os.makedirs(output, exist_ok=True)
    store = os.path.join(output, "gru_output.zarr")
    png = os.path.join(output, "gru_output.png")
    feature = 3
    p = GRUParams.random(feature, hidden, seed=0, dtype="float32")
    params_path = p.save(os.path.join(output, "demo_params.zarr"))
    field = synthetic_field(time_steps, grid, grid, feature, time_chunk=time_chunk)
    steps = time_steps * grid * grid
    log(f"daskgru demo: GRU(input={feature}, hidden={hidden}) over a synthetic "
        f"(time={time_steps}, lat={grid}, lon={grid}, feature={feature}) field = "
        f"{steps:,} sequence steps, time chunks of {time_chunk}")

    cluster = None
    t0 = time.perf_counter()
    if scheduler:
        client = Client(scheduler, timeout="20s")
        log(f"connected to scheduler {scheduler}")
    else:
        n = workers or max(1, min(os.cpu_count() or 1, 4))
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=False,
                               dashboard_address=":0")
        client = Client(cluster)
        log(f"started a LocalCluster with {n} worker(s)")
    log(f"dashboard: {client.dashboard_link}")
    try:
        from distributed import wait

        # The input in the workers' memory first and the kernels loaded on every worker
        # (not timed), as the eager call and the loop below get the input in the client's
        # memory and warm kernels: then the three time the same GRU.
        field = field.persist()
        wait(field)
        client.run(_warm_kernels, p)
        field_chunks = field.chunks
        ds = _clean(apply_gru(field, p))
        if os.path.exists(store):
            shutil.rmtree(store)
        runs = []
        for attempt in range(2):  # the better of two runs, as for the eager call below
            t_run = time.perf_counter()
            done = ds.persist()
            if attempt == 0 and sys.stdout.isatty():  # a text bar, for a terminal only
                dask_progress(done)
            wait(done)
            runs.append(time.perf_counter() - t_run)
            if attempt == 0:
                if sys.stdout.isatty():
                    print()
                # the second run computes afresh (and memory is freed)
                keys = _keys_of(done)
                del done
                _forget(client, keys)
        t_run = min(runs)
        t_write = time.perf_counter()
        done.to_zarr(store, mode="w", zarr_format=2)
        t_write = time.perf_counter() - t_write
        field = field.compute()  # for the plot and the comparisons, before the client goes
        chunks = field_chunks
    finally:
        # The text progress bar's feed is cancelled at shutdown, which distributed logs
        # as an error with a traceback; it is not one.
        import logging

        logging.getLogger("distributed.scheduler").setLevel(logging.CRITICAL)
        client.close()
        if cluster is not None:
            cluster.close()
    t_total = time.perf_counter() - t0

    res = xr.open_zarr(store)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    res.output.isel(time=-1, hidden=0).plot(ax=axes[0], cmap="RdBu_r")
    axes[0].set_title(f"hidden unit 0 at the last step (t={time_steps - 1})")
    cell = dict(lat=grid // 2, lon=0)
    window = slice(max(0, time_steps - 730), time_steps)
    x_cell = field.isel(**cell, time=window, feature=0).compute()
    axes[1].plot(x_cell.time, x_cell, color="0.6", lw=0.8, label="input feature 0")
    for j in range(3):
        y = res.output.isel(**cell, time=window, hidden=j)
        axes[1].plot(y.time, y, lw=1.2, label=f"hidden unit {j}")
    axes[1].set_xlabel("time step")
    axes[1].set_title(f"one grid cell (lat={float(res.lat[grid // 2]):.0f}, lon=0)")
    axes[1].legend(loc="upper left", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)

    result = {"store": store, "png": png, "params": params_path, "seconds_dask": t_run,
              "seconds_write": t_write, "seconds_total": t_total, "steps": steps}
    log(f"daskgru on dask ({len(chunks[1])} lat bands x {len(chunks[0])} time "
        f"chunks, input in the workers' memory, the better of 2 runs: "
        f"{' and '.join(f'{r:.2f}' for r in runs)} s): {t_run:.2f} s; writing the zarr store: "
        f"{t_write:.2f} s more ({t_total:.2f} s in all, with the cluster's start)")
    if baseline:
        x = field.transpose("time", "lat", "lon", "feature").values.reshape(
            time_steps, grid * grid, feature)
        tb = time.perf_counter()
        ref_out, _ = reference.gru(x, p, dtype=np.float32)
        tb = time.perf_counter() - tb
        ours = res.output.values.reshape(time_steps, grid * grid, hidden)
        diff = float(np.max(np.abs(ours - ref_out)))
        # daskgru on the same in-memory array, as the loop gets it (kernels warmed up first)
        from .api import gru as gru_eager

        gru_eager(x[:2], p)
        te = []
        for _ in range(2):  # the better of two, as for the dask run
            t = time.perf_counter()
            eager_out, _ = gru_eager(x, p)
            te.append(time.perf_counter() - t)
        te = min(te)
        result.update(seconds_numpy=tb, seconds_eager=te, max_abs_diff=diff)
        log(f"plain NumPy loop (daskgru.reference.gru, float32, one step at a time over all "
            f"{grid * grid} cells, in memory): {tb:.2f} s over the same {steps:,} steps; "
            f"max |difference| {diff:.1e}")
        log(f"daskgru eager (daskgru.gru on the same in-memory array in this process, no "
            f"dask, the better of 2 runs): {te:.3f} s; bit-identical to the dask run: "
            f"{bool(np.array_equal(eager_out, ours))}")
        log(f"  -> the same GRU over the same field: the dask run {tb / t_run:.1f}x faster "
            f"than the NumPy loop, at {t_run / te:.2f}x the eager call's time (what dask "
            "adds on one machine; its point is a field bigger than memory, or more machines)")
    log(f"output: {os.path.abspath(store)}")
    log(f"plot:   {os.path.abspath(png)}")
    log(f"params: {os.path.abspath(params_path)}")
    return result
