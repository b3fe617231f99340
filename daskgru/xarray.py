"""Labelled front end: run a recurrent stack over xarray objects, every other dim being batch."""
from __future__ import annotations

import math

import numpy as np

from .api import is_dask, validate_method_options
from .params import GRUParams, LSTMParams, RNNParams
from .stack import DIRECTIONS

__all__ = ["apply_gru", "apply_rnn"]


def _dims_error(what, name, obj):
    return ValueError(f"{what} {name!r} is not a dimension of the input; dims present: {tuple(obj.dims)}")


def _as_dataarray(obj, feature_dim, features, time_dim):
    import xarray as xr

    if isinstance(obj, xr.DataArray):
        if features is not None:
            raise ValueError("features= selects data variables of a Dataset; got a DataArray")
        return obj
    if not isinstance(obj, xr.Dataset):
        raise TypeError(f"obj must be an xarray DataArray or Dataset, got {type(obj).__name__}")
    if features is None:
        features = [k for k, v in obj.data_vars.items() if time_dim in v.dims]
        if not features:
            raise ValueError(f"no data variable of the Dataset has the dim {time_dim!r}; "
                             f"data variables: {list(obj.data_vars)}")
    missing = [f for f in features if f not in obj.data_vars]
    if missing:
        raise ValueError(f"features {missing} are not data variables; present: {list(obj.data_vars)}")
    if feature_dim in obj.dims:
        raise ValueError(f"feature_dim {feature_dim!r} already is a dim of the Dataset")
    da = obj[list(features)].to_dataarray(dim=feature_dim)
    da.attrs = dict(obj.attrs)
    return da


def _over_batch(value, name, lead_dims, lead_shape, batch_dims, batch_shape, tail_dims, tail_shape):
    """A DataArray or array over (*lead, *batch dims, *tail) -> array (*lead, B, *tail)."""
    import xarray as xr

    want_dims = (*lead_dims, *batch_dims, *tail_dims)
    if isinstance(value, xr.DataArray):
        if set(value.dims) != set(want_dims):
            raise ValueError(f"{name} must have dims {want_dims}, got {value.dims}")
        value = value.transpose(*want_dims).data
    want = (*lead_shape, *batch_shape, *tail_shape)
    if tuple(getattr(value, "shape", np.shape(value))) != want:
        raise ValueError(f"{name} must have shape {want} (dims {want_dims}), "
                         f"got {tuple(np.shape(value))}")
    if not is_dask(value):
        value = np.asarray(value)
    return value.reshape((*lead_shape, math.prod(batch_shape), *tail_shape))


def apply_rnn(obj, p, *, time_dim="time", feature_dim="feature", hidden_dim="hidden",
              h0=None, c0=None, lengths=None, skipna=False, method="scan", features=None,
              **method_options):
    """Run a GRU or an LSTM along ``time_dim`` of a labelled array; every other dim is batch.

    Parameters
    ----------
    obj : xr.DataArray or xr.Dataset
        A DataArray with dims ``time_dim`` and ``feature_dim`` plus any batch dims (lat, lon,
        station, ...), NumPy- or dask-backed; or a Dataset whose data variables ``features``
        (default: all with ``time_dim``) are stacked as the features.
    p : GRUParams or LSTMParams
    time_dim, feature_dim, hidden_dim : str
        Names of the time and feature dims of the input and of the hidden dim of the output.
    h0 : DataArray (layer, direction, ...batch dims, hidden_dim) or array, optional
        Start states, e.g. the ``final_state`` of a previous call on the preceding stretch
        of time. A plain array has shape (num_layers * num_directions, *batch shape, H).
    c0 : like h0, optional
        LSTM only: the start cell states (the ``final_cell`` of a previous call).
    lengths : DataArray over the batch dims, or integer array of the batch shape, optional
        Valid steps per sequence (packed-sequence semantics, see :func:`daskgru.gru`).
    skipna : bool
        Treat a step of a batch element as missing when any of its features is NaN: the
        state carries across it unchanged and the output there is NaN (missing in, missing
        out); a batch element that is all NaN keeps its start state. Without it, a NaN
        propagates through every later step of its sequence.
    method : str
        Passed to :func:`daskgru.gru`.
    **method_options
        ``warmup``, ``tol`` and ``return_info``, passed to :func:`daskgru.gru`. With
        ``return_info=True`` the result is ``(ds, info)``: ``info`` is the dict of
        :func:`daskgru.gru` (a ``Delayed`` for dask-backed input); for NumPy-backed input it
        is also put into ``ds.attrs[f"{cell}_info"]`` as a string.
    features : list of str, optional
        With a Dataset: the data variables to use as features, in this order.

    Returns
    -------
    xr.Dataset
        ``output`` with dims (time_dim, ...batch dims, hidden_dim) — (time_dim, ...batch
        dims, direction, hidden_dim) for a bidirectional stack — ``final_state`` with dims
        (layer, direction, ...batch dims, hidden_dim), and for an LSTM ``final_cell`` like
        it. Coords along time and batch dims and the input's attrs are kept; the model is
        described in attrs. Dask-backed input gives a lazy Dataset, NumPy-backed input a
        computed one.

    Examples
    --------
    >>> import numpy as np, xarray as xr, daskgru as dg
    >>> field = xr.DataArray(np.random.default_rng(0).normal(size=(50, 3, 4, 2)),
    ...                      dims=("time", "lat", "lon", "feature"))
    >>> field[10:20, 0, 0, 1] = np.nan  # a gap at one grid cell
    >>> ds = dg.apply_rnn(field, dg.LSTMParams.random(2, 8, seed=0, dtype="float64"),
    ...                   skipna=True)
    >>> sorted(ds.data_vars)
    ['final_cell', 'final_state', 'output']
    >>> bool(ds.output[10:20, 0, 0].isnull().all()), bool(ds.output[20:, 0, 0].notnull().all())
    (True, True)
    """
    import xarray as xr

    if not isinstance(p, RNNParams):
        raise TypeError(f"p must be a GRUParams or LSTMParams, got {type(p).__name__}")
    kind = p.model.lower()
    is_lstm = isinstance(p, LSTMParams)
    if c0 is not None and not is_lstm:
        raise ValueError("c0 is the start cell state of an LSTM; a GRU has none")
    for name, v in (("time_dim", time_dim), ("feature_dim", feature_dim), ("hidden_dim", hidden_dim)):
        if not isinstance(v, str):
            raise TypeError(f"{name} must be a str, got {type(v).__name__}")
    if not isinstance(skipna, (bool, np.bool_)):
        raise TypeError(f"skipna must be a bool, got {type(skipna).__name__}")
    if isinstance(obj, xr.Dataset) and time_dim not in obj.dims:
        raise _dims_error("time_dim", time_dim, obj)
    da_in = _as_dataarray(obj, feature_dim, features, time_dim)
    for what, name in (("time_dim", time_dim), ("feature_dim", feature_dim)):
        if name not in da_in.dims:
            raise _dims_error(what, name, da_in)
    if hidden_dim in da_in.dims and hidden_dim != feature_dim:
        raise ValueError(f"hidden_dim {hidden_dim!r} clashes with a dim of the input {da_in.dims}")
    if da_in.sizes[feature_dim] != p.input_size:
        raise ValueError(f"dim {feature_dim!r} has size {da_in.sizes[feature_dim]}, "
                         f"but p.input_size is {p.input_size}")
    if not np.issubdtype(da_in.dtype, np.floating):
        raise TypeError(f"input data must be floating point, got dtype {da_in.dtype}")

    batch_dims = [d for d in da_in.dims if d not in (time_dim, feature_dim)]
    clash = [d for d in batch_dims if d in ("layer", "direction")]
    if clash:
        raise ValueError(f"batch dims {clash} clash with the dims of the result "
                         "(final_state has dims layer and direction); rename them first")
    unknown = set(method_options) - {"warmup", "tol", "return_info"}
    if unknown:
        raise TypeError(f"apply_{kind if kind == 'gru' else 'rnn'} got unknown options "
                        f"{sorted(unknown)} (method options are warmup, tol, return_info)")
    validate_method_options(method, **method_options)
    batch_shape = tuple(da_in.sizes[d] for d in batch_dims)
    B, T = math.prod(batch_shape), da_in.sizes[time_dim]
    L, D, H = p.num_layers, p.num_directions, p.hidden_size

    x = da_in.transpose(time_dim, *batch_dims, feature_dim).data
    lazy = is_dask(x)
    if lazy:
        import dask.array as dsa

        # Batch dims are flattened into one; merging their chunks keeps the graph exact.
        x = dsa.reshape(x, (T, B, p.input_size), merge_chunks=True)
    else:
        x = np.asarray(x).reshape(T, B, p.input_size)

    def state_arg(a, name):
        if a is None:
            return None
        if isinstance(a, xr.DataArray) and "direction" not in a.dims and D == 1:
            a = a.expand_dims("direction", axis=1)
        if isinstance(a, xr.DataArray):
            a = _over_batch(a, name, ("layer", "direction"), (L, D), batch_dims, batch_shape,
                            (hidden_dim,), (H,))
        else:
            a = _over_batch(a, name, ("layer*direction",), (L * D,), batch_dims, batch_shape,
                            (hidden_dim,), (H,))
        return a.reshape(L * D, B, H)

    h0, c0 = state_arg(h0, "h0"), state_arg(c0, "c0")
    if lengths is not None:
        lengths = _over_batch(lengths, "lengths", (), (), batch_dims, batch_shape, (), ())
    mask = None
    if skipna:
        import dask.array as dsa

        mask = ~(dsa.isnan(x) if lazy else np.isnan(x)).any(axis=-1)
    return_info = method_options.get("return_info", False)
    from .api import gru, lstm

    if is_lstm:
        res = lstm(x, p, None if h0 is None and c0 is None else (h0, c0), lengths=lengths,
                   mask=mask, method=method, **method_options)
        out, (h_n, c_n) = res[0], res[1]
    else:
        res = gru(x, p, h0=h0, lengths=lengths, mask=mask, method=method, **method_options)
        out, h_n, c_n = res[0], res[1], None
    if skipna:  # missing in, missing out
        out = (dsa.where if lazy else np.where)(mask[..., None], out, np.nan).astype(out.dtype)

    # A bidirectional output gets a direction dim: one Dataset cannot hold a hidden dim of
    # size 2H (output) beside one of size H (final_state). [forward, backward] is D-major.
    out_dims = (time_dim, *batch_dims) + (("direction",) if D == 2 else ()) + (hidden_dim,)
    out = out.reshape((T,) + batch_shape + ((D,) if D == 2 else ()) + (H,))
    coords = {k: v for k, v in da_in.coords.items() if feature_dim not in v.dims}
    out_coords = dict(coords, direction=list(DIRECTIONS)) if D == 2 else coords
    name = p.model
    data = {"output": xr.DataArray(out, dims=out_dims, coords=out_coords,
                                   attrs={"long_name": f"{name} output (top layer hidden state)"})}
    state_coords = {k: v for k, v in coords.items() if time_dim not in v.dims}
    state_coords.update(layer=np.arange(L), direction=list(DIRECTIONS[:D]))
    for var, arr, what in (("final_state", h_n, "hidden state"), ("final_cell", c_n, "cell state")):
        if arr is not None:
            data[var] = xr.DataArray(arr.reshape((L, D) + batch_shape + (H,)),
                                     dims=("layer", "direction", *batch_dims, hidden_dim),
                                     coords=state_coords,
                                     attrs={"long_name": f"{name} {what} after the last valid step"})
    attrs = dict(da_in.attrs)
    attrs.update({f"{kind}_{k}": v for k, v in {
        "input_size": p.input_size, "hidden_size": H, "num_layers": L,
        "bidirectional": int(p.bidirectional),
        **{o: int(v) for o, v in p.cell.options().items()},
        "method": method, "time_dim": time_dim, "skipna": int(skipna)}.items()})
    if return_info and isinstance(res[2], dict):
        attrs[f"{kind}_info"] = repr(res[2])
    ds = xr.Dataset(data, attrs=attrs)
    return (ds, res[2]) if return_info else ds


def apply_gru(obj, p, *, time_dim="time", feature_dim="feature", hidden_dim="hidden",
              h0=None, lengths=None, skipna=False, method="scan", features=None,
              **method_options):
    """Run a GRU along ``time_dim`` of a labelled array; every other dim is batch.

    :func:`apply_rnn` for a :class:`~daskgru.GRUParams` (see there for the parameters):
    returns a Dataset with ``output`` (time_dim, ...batch dims, hidden_dim) — with a
    direction dim before hidden_dim when bidirectional — and ``final_state`` (layer,
    direction, ...batch dims, hidden_dim), coords and attrs kept.

    Examples
    --------
    >>> import numpy as np, xarray as xr, daskgru as dg
    >>> field = xr.DataArray(np.random.default_rng(0).normal(size=(50, 3, 4, 2)),
    ...                      dims=("time", "lat", "lon", "feature"),
    ...                      coords={"lat": [10.0, 20.0, 30.0]}, attrs={"units": "K"})
    >>> ds = dg.apply_gru(field, dg.GRUParams.random(2, 8, seed=0, dtype="float64"))
    >>> ds.output.dims, ds.final_state.dims
    (('time', 'lat', 'lon', 'hidden'), ('layer', 'direction', 'lat', 'lon', 'hidden'))
    >>> ds.attrs["units"]
    'K'
    """
    if not isinstance(p, GRUParams):
        raise TypeError(f"p must be a GRUParams, got {type(p).__name__}")
    return apply_rnn(obj, p, time_dim=time_dim, feature_dim=feature_dim, hidden_dim=hidden_dim,
                     h0=h0, lengths=lengths, skipna=skipna, method=method, features=features,
                     **method_options)
