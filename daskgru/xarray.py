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
              target_dim="target", h0=None, c0=None, lengths=None, skipna=False,
              window="model", method="scan", features=None, return_hidden=False,
              **method_options):
    """Run a GRU, an LSTM or a whole model along ``time_dim`` of a labelled array; every
    other dim is batch.

    Parameters
    ----------
    obj : xr.DataArray or xr.Dataset
        A DataArray with dims ``time_dim`` and ``feature_dim`` plus any batch dims (lat, lon,
        station, ...), NumPy- or dask-backed; or a Dataset whose data variables ``features``
        are stacked as the features (default: the model's input names when it has them,
        else every variable with ``time_dim``). Variables without ``time_dim`` (static
        attributes such as elevation or soil type) are broadcast along time when named in
        ``features``, as hydrology and land-surface models take them.
    p : GRUParams, LSTMParams or Model
    time_dim, feature_dim, hidden_dim, target_dim : str
        Names of the time and feature dims of the input, of the hidden dim of ``output``
        and of the target dim of a model's ``prediction``.
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
    window : int, None or "model"
        Windowed inference (:meth:`daskgru.Model.windowed`): at each step the prediction of
        a run from zero states over the ``window`` steps up to it, as NeuralHydrology and
        darts evaluate; NaN before step ``window - 1``. A NaN input reaches only the windows
        that hold it (with ``skipna``, not even those). ``"model"`` (the default): the
        model's own ``window`` (a NeuralHydrology model's ``seq_length``), None for params
        and models that run continuously; None: one continuous run.
    method : str
        Passed to :func:`daskgru.gru`.
    return_hidden : bool
        For a model, also return the top layer's states as ``output``.
    **method_options
        ``warmup``, ``tol`` and ``return_info``, passed to :func:`daskgru.gru`. With
        ``return_info=True`` the result is ``(ds, info)``: ``info`` is the dict of
        :func:`daskgru.gru` (a ``Delayed`` for dask-backed input); for NumPy-backed input it
        is also put into ``ds.attrs[f"{cell}_info"]`` as a string.

    Returns
    -------
    xr.Dataset
        For params: ``output`` with dims (time_dim, ...batch dims, hidden_dim) —
        (time_dim, ...batch dims, direction, hidden_dim) for a bidirectional stack —
        ``final_state`` with dims (layer, direction, ...batch dims, hidden_dim), and for an
        LSTM ``final_cell`` like it. For a model: ``prediction`` with dims (time_dim,
        ...batch dims, target_dim), or (...batch dims, target_dim) for a sequence-to-one
        model, and the final states when its stack is a GRUParams or LSTMParams. Coords
        along time and batch dims and the input's attrs are kept; the model is described
        in attrs. Dask-backed input gives a lazy Dataset, NumPy-backed input a computed
        one.

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

    from .model import Model

    if not isinstance(p, (RNNParams, Model)):
        raise TypeError(f"p must be a GRUParams, LSTMParams or Model, got {type(p).__name__}")
    model = p if isinstance(p, Model) else Model(p)
    if isinstance(window, str):
        if window != "model":
            raise ValueError(f"window must be a number of steps, None or 'model', got {window!r}")
        window = model.window
    rnn = model.rnn
    kind = p.model.lower() if isinstance(p, RNNParams) else "model"
    stateful = isinstance(rnn, RNNParams) and window is None
    is_lstm = isinstance(rnn, LSTMParams)
    if c0 is not None and not is_lstm:
        raise ValueError("c0 is the start cell state of an LSTM; a GRU has none")
    if is_lstm and (h0 is None) != (c0 is None):
        raise ValueError("an LSTM continues from both its final_state (h0=) and its final_cell "
                         "(c0=); give both, or neither for zero states")
    for name, v in (("time_dim", time_dim), ("feature_dim", feature_dim),
                    ("hidden_dim", hidden_dim), ("target_dim", target_dim)):
        if not isinstance(v, str):
            raise TypeError(f"{name} must be a str, got {type(v).__name__}")
    for name, v in (("skipna", skipna), ("return_hidden", return_hidden)):
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    if window is not None and (h0 is not None or c0 is not None or lengths is not None):
        raise ValueError("window= runs every window from zero states over whole steps: it "
                         "takes no h0, c0 or lengths")
    if (h0 is not None or c0 is not None) and not isinstance(rnn, RNNParams):
        raise ValueError("h0/c0 need a GRUParams or LSTMParams stack (this model's layers "
                         "differ in width or cell)")
    if isinstance(obj, xr.Dataset) and time_dim not in obj.dims:
        raise _dims_error("time_dim", time_dim, obj)
    if model.inputs is not None and isinstance(obj, xr.Dataset):
        if features is None:
            features = model.inputs
        elif list(features) != model.inputs:
            if sorted(features) != sorted(model.inputs):
                raise ValueError(f"features {list(features)} are not the model's inputs "
                                 f"{model.inputs}")
            features = model.inputs  # the model's order, whatever order they were named in
    da_in = _as_dataarray(obj, feature_dim, features, time_dim)
    if (model.inputs is not None and feature_dim in da_in.dims
            and feature_dim in da_in.coords and da_in[feature_dim].dtype.kind in "OUS"):
        labels = [str(v) for v in da_in[feature_dim].values]
        if labels != model.inputs:
            if sorted(labels) != sorted(model.inputs):
                raise ValueError(f"the {feature_dim!r} labels {labels} are not the model's inputs "
                                 f"{model.inputs}")
            da_in = da_in.sel({feature_dim: model.inputs})
    for what, name in (("time_dim", time_dim), ("feature_dim", feature_dim)):
        if name not in da_in.dims:
            raise _dims_error(what, name, da_in)
    if hidden_dim in da_in.dims and hidden_dim != feature_dim:
        raise ValueError(f"hidden_dim {hidden_dim!r} clashes with a dim of the input {da_in.dims}")
    if da_in.sizes[feature_dim] != model.input_size:
        what = "p.input_size" if isinstance(p, RNNParams) else "the model's input size"
        if isinstance(obj, xr.Dataset):
            raise ValueError(f"the Dataset's variables {list(da_in[feature_dim].values)} give "
                             f"{da_in.sizes[feature_dim]} features, but {what} is "
                             f"{model.input_size}; name the features with features=")
        raise ValueError(f"dim {feature_dim!r} has size {da_in.sizes[feature_dim]}, "
                         f"but {what} is {model.input_size}")
    if not np.issubdtype(da_in.dtype, np.floating):
        raise TypeError(f"input data must be floating point, got dtype {da_in.dtype}")

    batch_dims = [d for d in da_in.dims if d not in (time_dim, feature_dim)]
    clash = [d for d in batch_dims if d in ("layer", "direction", target_dim)]
    if clash:
        raise ValueError(f"batch dims {clash} clash with the dims of the result "
                         "(final_state has dims layer and direction); rename them first")
    unknown = set(method_options) - {"warmup", "tol", "return_info"}
    if unknown:
        hint = ("; labelled arrays name their layout with time_dim= and feature_dim=, not "
                "batch_first" if "batch_first" in unknown else "")
        raise TypeError(f"unknown options {sorted(unknown)} (the method options are warmup, "
                        f"tol, return_info{hint})")
    validate_method_options(method, **method_options)
    return_info = method_options.pop("return_info", False)
    if window is not None and (method not in ("scan", "auto") or return_info or return_hidden):
        raise ValueError("window= runs independent windows: it takes method='scan' (or "
                         "'auto', which runs scan there) only, "
                         "and no return_info or return_hidden")
    batch_shape = tuple(da_in.sizes[d] for d in batch_dims)
    B, T = math.prod(batch_shape), da_in.sizes[time_dim]

    x = da_in.transpose(time_dim, *batch_dims, feature_dim).data
    lazy = is_dask(x)
    if lazy:
        import dask.array as dsa

        # Batch dims are flattened into one; merging their chunks keeps the graph exact.
        x = dsa.reshape(x, (T, B, model.input_size), merge_chunks=True)
    else:
        x = np.asarray(x).reshape(T, B, model.input_size)
    xp = dsa if lazy else np

    states = None
    if stateful:
        L, D, H = rnn.num_layers, rnn.num_directions, rnn.hidden_size

        def state_arg(a, name):
            if a is None:
                return None
            if isinstance(a, xr.DataArray) and "direction" not in a.dims and D == 1:
                a = a.expand_dims("direction", axis=1)
            if isinstance(a, xr.DataArray):
                a = _over_batch(a, name, ("layer", "direction"), (L, D), batch_dims,
                                batch_shape, (hidden_dim,), (H,))
            else:
                a = _over_batch(a, name, ("layer*direction",), (L * D,), batch_dims,
                                batch_shape, (hidden_dim,), (H,))
            return a.reshape(L * D, B, H)

        h0, c0 = state_arg(h0, "h0"), state_arg(c0, "c0")
        if h0 is not None or c0 is not None:
            from .api import _per_layer_states, validate

            call = validate(x, rnn, input_size=model.input_size)
            states = _per_layer_states(h0, c0, call)
    if lengths is not None:
        lengths = _over_batch(lengths, "lengths", (), (), batch_dims, batch_shape, (), ())
    mask = ~xp.isnan(x).any(axis=-1) if skipna else None
    info = None
    if window is not None:
        y, out, finals = model.windowed(x, window, batch_first=False, mask=mask), None, None
    else:
        y, out, finals, info = model.run(x, batch_first=False, lengths=lengths, mask=mask,
                                         states=states, method=method, **method_options)
    if skipna:  # missing in, missing out
        nan = np.nan
        if window is None and model.return_sequences or window is not None:
            keep = mask[..., None]
        else:  # sequence to one: missing where the sequence had no valid step
            keep = mask.any(axis=0)[:, None]
        y = xp.where(keep, y, nan).astype(y.dtype)
        if out is not None:
            out = xp.where(mask[..., None], out, nan).astype(out.dtype)

    coords = {k: v for k, v in da_in.coords.items() if feature_dim not in v.dims}
    state_coords = {k: v for k, v in coords.items() if time_dim not in v.dims}
    name = type(rnn).__name__ if not isinstance(rnn, RNNParams) else rnn.model
    data = {}
    if isinstance(p, RNNParams) or return_hidden:
        hidden = y if isinstance(p, RNNParams) else out
        data["output"] = _output(xr, hidden, rnn, T, batch_shape, time_dim, batch_dims,
                                 hidden_dim, coords, name)
    if isinstance(p, Model):
        seq = p.return_sequences or window is not None
        dims = ((time_dim,) if seq else ()) + tuple(batch_dims) + (target_dim,)
        pc = dict(coords if seq else state_coords)
        if p.targets is not None:
            pc[target_dim] = p.targets
        data["prediction"] = xr.DataArray(
            y.reshape(((T,) if seq else ()) + batch_shape + (p.output_size,)), dims=dims,
            coords=pc, attrs={"long_name": "model prediction",
                              **({"description": p.description} if p.description else {})})
    if stateful and finals is not None:
        L, D, H = rnn.num_layers, rnn.num_directions, rnn.hidden_size
        hc = (dsa.concatenate if lazy else np.concatenate)(finals, axis=0)
        sc = dict(state_coords, layer=np.arange(L), direction=list(DIRECTIONS[:D]))
        parts = list(zip(("final_state", "final_cell"), rnn.cell.split_state(hc, H),
                         ("hidden state", "cell state")))
        for var, arr, what in parts:
            data[var] = xr.DataArray(arr.reshape((L, D) + batch_shape + (H,)),
                                     dims=("layer", "direction", *batch_dims, hidden_dim),
                                     coords=sc,
                                     attrs={"long_name": f"{name} {what} after the last valid step"})
    attrs = dict(da_in.attrs)
    described = {"input_size": model.input_size, "method": method, "time_dim": time_dim,
                 "skipna": int(skipna)}
    if isinstance(p, RNNParams):
        described.update(hidden_size=p.hidden_size, num_layers=p.num_layers,
                         bidirectional=int(p.bidirectional),
                         **{o: int(v) for o, v in p.cell.options().items()})
    else:
        described.update(output_size=p.output_size, window=-1 if window is None else window)
    attrs.update({f"{kind}_{k}": v for k, v in described.items()})
    if return_info and isinstance(info, dict):
        attrs[f"{kind}_info"] = repr(info)
    ds = xr.Dataset(data, attrs=attrs)
    return (ds, info) if return_info else ds


def _output(xr, out, rnn, T, batch_shape, time_dim, batch_dims, hidden_dim, coords, name):
    """The top layer's states as a DataArray; a bidirectional layer whose directions sit
    side by side gets a direction dim (one Dataset cannot hold a hidden dim of size 2H
    beside the final states' H)."""
    lay = rnn.layers[-1]
    split = lay.num_directions == 2 and lay.merge == "concat"
    dims = (time_dim, *batch_dims) + (("direction",) if split else ()) + (hidden_dim,)
    out = out.reshape((T,) + batch_shape + ((2,) if split else ()) + (lay.hidden_size,))
    return xr.DataArray(out, dims=dims,
                        coords=dict(coords, direction=list(DIRECTIONS)) if split else coords,
                        attrs={"long_name": f"{name} output (top layer hidden state)"})


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
