"""A recurrent model as its users have it: per-step layers, a recurrent stack, a head.

:class:`Model` is what importers build from a Keras model, a torch module with its head, a
NeuralHydrology run or a darts model, and what :class:`daskgru.GRURegressor` trains. Its
per-step layers (:mod:`daskgru.layers`) run inside the chunk tasks: layer 0's scan tasks
apply the input layers (``pre``) to their block of x, and the head (``post``) runs on each
block of the top layer's outputs (both directions in one task), so hidden states are never
written out or returned unless asked for.
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import layers as L
from .api import run, validate, validate_method_options
from .layout import Call, canonical, is_dask, uncanonical, zero_flags
from .cells import CELLS, Weights
from .params import RNNParams, save_dataset
from .stack import Layer, PreparedStack, Stack, float_dtype

__all__ = ["Model", "load_model"]

FORMAT_VERSION = 1


def _first_size(pre, default):
    """The input size a sequence of per-step layers takes (``default`` if it has none)."""
    for lay in pre:
        if isinstance(lay, L.Dense):
            return int(np.shape(lay.w)[0])
        if isinstance(lay, L.Activation):
            continue
        shape = np.shape(lay[0])
        if shape:
            return int(shape[0])
    return default


class Model:
    """A recurrent model: per-step layers before a recurrent stack, the stack, a head.

    Parameters
    ----------
    rnn : GRUParams, LSTMParams or Stack
        The recurrent layers (they may differ in cell, width and direction).
    pre : sequence of per-step layers, optional
        Applied to every input step before the stack: :class:`daskgru.layers.Scale`
        (feature scaling), :class:`~daskgru.layers.LayerNorm`, :class:`~daskgru.layers.Dense`
        (an embedding network).
    post : sequence of per-step layers, optional
        The head, applied to the top layer's output: every step with
        ``return_sequences``, else the last valid step's (a Dense layer, an MLP, output
        un-scaling with :meth:`daskgru.layers.Scale.unscale`).
    return_sequences : bool
        Sequence to sequence (the default), or sequence to one: the head sees the state at
        each sequence's last valid step (Keras's ``return_sequences=False``).
    mask_value : float, optional
        Keras's ``Masking``: a step whose features all equal it is masked (Keras's masking
        semantics, see :func:`daskgru.gru`).
    zero_output_for_mask : bool or one bool per recurrent layer
    batch_first : bool
        The source's layout of x: (B, T, F) (Keras, NeuralHydrology) or (T, B, F) (torch's
        default); calls take it unless they say otherwise.
    inputs, targets : sequences of str, optional
        Names of the input features and of the outputs, in order (from the source, when it
        has them; :func:`daskgru.apply_rnn` selects Dataset variables by ``inputs``).
    window : int, optional
        The window its source evaluates it in (NeuralHydrology's ``seq_length``, darts's
        ``input_chunk_length``): pass it to :meth:`windowed` or ``apply_rnn(window=...)`` to
        reproduce that evaluation. None: the model runs continuously.
    description : str, optional
        Where the model came from.

    Examples
    --------
    >>> import numpy as np, daskgru as dg
    >>> from daskgru.layers import Dense, Scale
    >>> rnn = dg.GRUParams.random(3, 8, seed=0)
    >>> head = Dense(np.ones((8, 2), "float32"), np.zeros(2, "float32"), "softplus")
    >>> m = dg.Model(rnn, pre=[Scale.normalize([1, 2, 3], [2, 2, 2])], post=[head],
    ...              batch_first=True)
    >>> x = np.random.default_rng(0).normal(size=(4, 50, 3)).astype("float32")
    >>> m(x).shape
    (4, 50, 2)
    """

    def __init__(self, rnn, *, pre=(), post=(), return_sequences=True, mask_value=None,
                 zero_output_for_mask=False, batch_first=False, inputs=None, targets=None,
                 window=None, description=None):
        if not isinstance(rnn, Stack):
            raise TypeError(f"rnn must be a GRUParams, LSTMParams or Stack, got "
                            f"{type(rnn).__name__}")
        self.rnn = rnn
        n_in = _first_size(pre, rnn.input_size)
        self.pre, n = L.check(list(pre), n_in, "pre")
        if n != rnn.input_size:
            raise ValueError(f"the layers before the recurrent stack give {n} features, but "
                             f"its first layer takes {rnn.input_size}")
        self.post, self.output_size = L.check(list(post), rnn.output_size, "head")
        self.input_size = n_in
        self.return_sequences = bool(return_sequences)
        self.mask_value = None if mask_value is None else float(mask_value)
        self.zero_output_for_mask = zero_flags(zero_output_for_mask, rnn.num_layers)
        self.batch_first = bool(batch_first)
        self.inputs = None if inputs is None else [str(v) for v in inputs]
        self.targets = None if targets is None else [str(v) for v in targets]
        for name, names, size in (("inputs", self.inputs, n_in),
                                  ("targets", self.targets, self.output_size)):
            if names is not None and len(names) != size:
                raise ValueError(f"{name} names {len(names)} features, the model has {size}")
        if window is not None and (isinstance(window, bool) or int(window) != window
                                   or window < 1):
            raise ValueError(f"window must be a positive number of steps, got {window!r}")
        self.window = None if window is None else int(window)
        self.description = description

    # -------------------------------------------------------------- importers
    @classmethod
    def from_keras(cls, model) -> "Model":
        """The whole of a Keras model (or the path of a saved one, ``.keras``/``.h5``): a
        ``Sequential`` or functional chain of ``Input``,
        ``Masking``, ``Normalization``, ``Rescaling``, ``GRU``, ``LSTM``, ``Bidirectional``
        (merge modes concat, sum, mul, ave), ``Dense``, ``TimeDistributed(Dense)``,
        ``Dropout`` (identity at inference), ``Activation``, ``BatchNormalization`` (its moving
        statistics, as at inference) and ``LayerNormalization``. Anything else — an unknown
        layer, a branch, several inputs, ``go_backwards`` outside ``Bidirectional``, a
        stateful layer, an activation daskgru cannot compute — is refused with an error that
        names the layer and the option. Each recurrent layer keeps its own
        ``zero_output_for_mask``; the model is batch-first, as Keras is.

        Examples
        --------
        >>> import keras, numpy as np, daskgru as dg
        >>> km = keras.Sequential([keras.Input((None, 3)), keras.layers.Masking(0.0),
        ...                        keras.layers.GRU(8, return_sequences=True),
        ...                        keras.layers.Dense(1)])
        >>> m = dg.Model.from_keras(km)
        >>> x = np.random.default_rng(0).normal(size=(2, 6, 3)).astype("float32")
        >>> bool(np.allclose(m(x), km(x), atol=1e-6))
        True
        """
        from .importers import from_keras

        return from_keras(model)

    @classmethod
    def from_torch(cls, rnn, *, pre=None, head=None, prefix=None, return_sequences=True,
                   batch_first=None, inputs=None, targets=None, window=None,
                   rnn_only=False) -> "Model":
        """A model from torch modules: ``rnn`` an ``nn.GRU``/``nn.LSTM`` (or a state_dict,
        whose RNN may sit under a prefix); ``pre`` and ``head`` per-step modules
        (``nn.Linear``, ``nn.LayerNorm``, ``nn.ReLU``/``Tanh``/``Sigmoid``/``Softplus``/
        ``ELU``/``GELU``/``SiLU``, ``nn.Dropout`` (identity at inference), ``nn.Sequential``
        of them), or lists of :mod:`daskgru.layers` records — a head's activations have no
        tensors, so a state_dict cannot carry them. ``batch_first`` defaults to the
        module's; ``return_sequences=False`` applies the head to the last valid step only;
        ``window`` records the window the model is evaluated in (darts:
        ``input_chunk_length``, see the models page of the docs). A state_dict (or a
        module) holding tensors that neither the RNN nor the given ``pre``/``head`` modules
        account for is refused, naming them, unless ``rnn_only``.

        Examples
        --------
        >>> import torch, numpy as np, daskgru as dg
        >>> gru, head = torch.nn.GRU(3, 8, batch_first=True), torch.nn.Linear(8, 2)
        >>> m = dg.Model.from_torch(gru, head=head)
        >>> x = np.random.default_rng(0).normal(size=(2, 6, 3)).astype("float32")
        >>> with torch.no_grad():
        ...     want = head(gru(torch.from_numpy(x))[0]).numpy()
        >>> bool(np.allclose(m(x), want, atol=1e-6))
        True
        """
        from .importers import from_torch

        return from_torch(rnn, pre=pre, head=head, prefix=prefix,
                          return_sequences=return_sequences, batch_first=batch_first,
                          inputs=inputs, targets=targets, window=window, rnn_only=rnn_only)

    @classmethod
    def from_neuralhydrology(cls, run_dir, epoch=None) -> "Model":
        """A NeuralHydrology run directory (its ``gru``, ``cudalstm`` and ``customlstm``
        models): scaler, static attributes, embedding networks, regression head and output
        un-scaling, with ``window`` its ``seq_length`` (see
        :mod:`daskgru.neuralhydrology`). ``epoch``: which ``model_epochNNN.pt`` (default:
        the last). Evaluate as NeuralHydrology does with ``dg.apply_rnn(ds, m,
        window=m.window)``."""
        from .neuralhydrology import from_neuralhydrology

        return from_neuralhydrology(run_dir, epoch)

    # -------------------------------------------------------------- identity
    @property
    def dtype(self):
        return self.rnn.dtype

    def _flags(self):
        return (self.return_sequences, self.mask_value, self.zero_output_for_mask,
                self.batch_first, self.inputs, self.targets, self.window)

    def __eq__(self, other):
        if not isinstance(other, Model):
            return NotImplemented

        def same(a, b):
            return len(a) == len(b) and all(
                type(x) is type(y) and all(np.array_equal(u, v) for u, v in zip(x, y))
                for x, y in zip(a, b))

        return (self.rnn == other.rnn and same(self.pre, other.pre)
                and same(self.post, other.post) and self._flags() == other._flags())

    __hash__ = None

    def __dask_tokenize__(self):
        from dask.base import normalize_token

        return ("daskgru.Model", normalize_token(self.rnn),
                normalize_token([(type(x).__name__, list(x)) for x in self.pre]),
                normalize_token([(type(x).__name__, list(x)) for x in self.post]),
                repr(self._flags()))

    def __repr__(self):
        kinds = lambda ls: "[" + ", ".join(  # noqa: E731
            f"{type(x).__name__}" + (f"({x.w.shape[0]}->{x.w.shape[1]}, {x.activation})"
                                     if isinstance(x, L.Dense) else "") for x in ls) + "]"
        return (f"Model(pre={kinds(self.pre)}, rnn={self.rnn!r}, post={kinds(self.post)}, "
                f"return_sequences={self.return_sequences}, mask_value={self.mask_value}, "
                f"batch_first={self.batch_first})")

    def astype(self, dtype):
        """The same model computing in ``dtype``."""
        dtype = float_dtype(dtype)
        if dtype == self.dtype:
            return self
        return self._replace(rnn=self.rnn.astype(dtype))

    def _replace(self, **changes):
        kw = dict(pre=self.pre, post=self.post, return_sequences=self.return_sequences,
                  mask_value=self.mask_value, zero_output_for_mask=self.zero_output_for_mask,
                  batch_first=self.batch_first, inputs=self.inputs, targets=self.targets,
                  window=self.window, description=self.description)
        rnn = changes.pop("rnn", self.rnn)
        kw.update(changes)
        return Model(rnn, **kw)

    @property
    def rnn_only(self) -> bool:
        """Whether the model is its recurrent stack alone (what a params file holds)."""
        from .params import RNNParams

        return (not self.pre and not self.post and self.return_sequences
                and self.mask_value is None and self.window is None
                and isinstance(self.rnn, RNNParams) and not any(self.zero_output_for_mask))

    def prepare(self, fma=None) -> PreparedStack:
        """Kernel-ready weights of the stack, with the input layers in its dtype (the
        chunk tasks of layer 0 apply them; the head runs on the output blocks)."""
        ps = self.rnn.prepare(fma)
        ps.pre = L.cast(self.pre, self.dtype)
        return ps

    # -------------------------------------------------------------- running
    def step_mask(self, x, mask=None):
        """The step mask of x: Keras's ``Masking`` (a step whose features all equal
        ``mask_value`` is masked), combined with ``mask``."""
        if self.mask_value is None:
            return mask
        valid = (x != self.mask_value).any(axis=-1)
        return valid if mask is None else valid & mask

    def __call__(self, x, *, batch_first=None, lengths=None, mask=None, return_hidden=False,
                 method="scan", warmup=None, tol=None):
        """The model's prediction for x.

        Parameters
        ----------
        x : array (T, B, F), (B, T, F) batch first, or (T, F) unbatched; NumPy or dask
        batch_first : bool, optional
            The layout of x; None: the model's own (``self.batch_first``).
        lengths, mask, method, warmup, tol
            As for :func:`daskgru.gru` (the mask is combined with ``mask_value``'s).
        return_hidden : bool
            Also return the top layer's outputs (T, B, D*H) in x's layout.

        Returns
        -------
        array
            (T, B, n_out) — (B, T, n_out) batch first — or (B, n_out) for a
            sequence-to-one model; NumPy for NumPy input, lazy dask for dask input (the same
            bits for any chunking).
        """
        y, out, _, _ = self.run(x, batch_first=batch_first, lengths=lengths, mask=mask,
                                method=method, warmup=warmup, tol=tol)
        return (y, out) if return_hidden else y

    def run(self, x, *, batch_first=None, lengths=None, mask=None, states=None, method="scan",
            warmup=None, tol=None):
        """What :meth:`__call__` computes, with start states and everything it gives:
        ``(prediction, top layer's outputs, final states (D, B, S) per layer, info)``
        (info as ``return_info`` of :func:`daskgru.gru` gives it). ``states``: None or one
        (B, S) array per (layer, direction)."""
        validate_method_options(method, warmup=warmup, tol=tol)
        bf = self.batch_first if batch_first is None else bool(batch_first)
        call = validate(x, self.rnn, lengths=lengths, mask=mask, batch_first=bf,
                        zero_output_for_mask=self.zero_output_for_mask,
                        input_size=self.input_size)
        mask = self.step_mask(x, mask)
        if states is not None:
            states = self._check_states(states, call)
        out, finals, info = run(x, call, states, lengths, mask, method=method, warmup=warmup,
                                tol=tol, model=self)
        y = self.head(out if self.return_sequences else self.last(finals, call))
        return y, out, finals, info

    def _check_states(self, states, call):
        """``states``: one (B, S) array ((S,) unbatched) per layer and direction."""
        sizes = self.rnn.state_sizes
        if len(states) != len(sizes):
            raise ValueError(f"states must hold one array per layer and direction "
                             f"({len(sizes)}), got {len(states)}")
        for i, (st, S) in enumerate(zip(states, sizes)):
            want = (S,) if call.unbatched else (call.B, S)
            if tuple(getattr(st, "shape", ())) != want:
                raise ValueError(f"states[{i}] must have shape {want}, got "
                                 f"{tuple(getattr(st, 'shape', ()))}")
        return list(states)

    def windowed(self, x, window, *, batch_first=None, mask=None):
        """Windowed inference, as NeuralHydrology (``seq_length``) and darts
        (``input_chunk_length``) evaluate: at each step t, the prediction at the last step
        of a run from zero states over steps t-window+1 .. t; NaN before step window-1.

        Returns an array like :meth:`__call__`'s for a sequence-to-sequence model ((T, B,
        n_out) in x's layout). The windows become extra batch rows, so the work stays
        parallel and chunked along time (dask in, dask out: each time chunk of the output
        reads its chunk of x and the window-1 steps before it).

        Examples
        --------
        >>> import numpy as np, daskgru as dg
        >>> m = dg.Model(dg.GRUParams.random(2, 4, seed=0, dtype="float64"))
        >>> x = np.random.default_rng(0).normal(size=(30, 1, 2))
        >>> y = m.windowed(x, 10)
        >>> bool(np.isnan(y[:9]).all()), bool(np.allclose(y[29], m(x[20:])[-1]))
        (True, True)
        """
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window must be a positive number of steps, got {window!r}")
        bf = self.batch_first if batch_first is None else bool(batch_first)
        call = validate(x, self.rnn, mask=mask, batch_first=bf,
                        input_size=self.input_size)  # before any work
        xc = canonical(x, call)
        if mask is not None:
            mask = canonical(mask, call)
        if is_dask(xc) or is_dask(mask):
            y = _windowed_dask(self, xc, int(window), mask)
        else:
            y = _windowed_block(self, np.asarray(xc), int(window), 0, xc.shape[0],
                                None if mask is None else np.asarray(mask))
        return uncanonical(y, call)

    def last(self, finals, call: Call):
        """The top layer's output at each sequence's last valid step, (B, D*H) ((D*H,)
        unbatched): the h part of its final states, directions side by side."""
        top, lay = finals[-1], self.rnn.layers[-1]
        h = lay.cell.split_state(top, lay.hidden_size)[0]
        if lay.merge != "concat" and len(lay.weights) == 2:
            from .eager import layer_input

            return layer_input([h[0], h[1]], lay.merge)
        if call.unbatched:
            return h.reshape(-1)
        h = h.transpose(1, 0, 2)
        return h.reshape(h.shape[0], -1)

    def head(self, out):
        """The head on the top layer's outputs (any layout, features last; NumPy or dask)."""
        if not self.post:
            return out
        from .numerics import use_fma

        post = L.cast(self.post, out.dtype)
        fma = use_fma()  # resolved here, on the client, for every block
        if not is_dask(out):
            return L.apply(post, np.asarray(out), fma)
        import dask.array as da
        from dask.base import tokenize

        out = out.rechunk({out.ndim - 1: -1})  # directions meet in one task
        idx = "abcdefg"[:out.ndim - 1]
        return da.blockwise(L.apply, idx + "o", post, None, out, idx + "h", fma, None,
                            new_axes={"o": self.output_size}, concatenate=True,
                            dtype=out.dtype, name="head-" + tokenize(out.name, self, fma),
                            meta=np.empty((0,) * out.ndim, out.dtype))

    # -------------------------------------------------------------- files
    def to_dataset(self):
        """An ``xr.Dataset`` with every array, the structure in ``attrs["daskgru_model"]``
        (JSON) and a format version."""
        import xarray as xr

        data, spec = {}, {"format": FORMAT_VERSION, "rnn": [], "pre": [], "post": []}

        def put(name, a):
            a = np.asarray(a)
            data[name] = xr.Variable(tuple(f"{name}_dim{i}" for i in range(a.ndim)), a)

        for l, lay in enumerate(self.rnn.layers):
            spec["rnn"].append({"cell": lay.cell.name, "options": lay.cell.options(),
                                "directions": len(lay.weights), "merge": lay.merge})
            for d, w in enumerate(lay.weights):
                for field, a in w._asdict().items():
                    put(f"rnn_l{l}_d{d}_{field}", a)
        for part in ("pre", "post"):
            for i, lay in enumerate(getattr(self, part)):
                entry = {"kind": type(lay).__name__}
                for field, a in lay._asdict().items():
                    if field == "activation":
                        entry[field] = a if isinstance(a, str) else list(a)
                    elif field in ("eps", "invert"):
                        entry[field] = a if isinstance(a, bool) else float(a)
                    else:
                        put(f"{part}{i}_{field}", a)
                spec[part].append(entry)
        spec.update(return_sequences=self.return_sequences, mask_value=self.mask_value,
                    zero_output_for_mask=list(self.zero_output_for_mask),
                    batch_first=self.batch_first, inputs=self.inputs, targets=self.targets,
                    window=self.window, description=self.description, dtype=str(self.dtype),
                    bias=getattr(self.rnn, "bias", True),
                    params=type(self.rnn).__name__)
        return xr.Dataset(data, attrs={"daskgru_model": json.dumps(spec),
                                       "daskgru_model_format": FORMAT_VERSION})

    @classmethod
    def from_dataset(cls, ds):
        """Inverse of :meth:`to_dataset`."""
        if "daskgru_model" not in ds.attrs:
            raise ValueError("dataset was not written by daskgru.Model.to_dataset (no attribute "
                             "daskgru_model)")
        spec = json.loads(ds.attrs["daskgru_model"])
        if spec.get("format", 0) > FORMAT_VERSION:
            raise ValueError(f"model file format {spec['format']} is newer than this daskgru "
                             f"reads ({FORMAT_VERSION}); upgrade daskgru")
        dtype = spec["dtype"]
        rnn_layers = []
        for l, entry in enumerate(spec["rnn"]):
            cell = CELLS[entry["cell"]](**entry["options"])
            ws = [Weights(*[ds[f"rnn_l{l}_d{d}_{f}"].values for f in Weights._fields])
                  for d in range(entry["directions"])]
            rnn_layers.append(Layer(cell, ws, entry.get("merge", "concat")))
        from .params import GRUParams, LSTMParams

        kinds = {"GRUParams": GRUParams, "LSTMParams": LSTMParams}
        if spec["params"] in kinds:
            P = kinds[spec["params"]]
            rnn = P([lay.weights for lay in rnn_layers], bias=spec["bias"], dtype=dtype,
                    **rnn_layers[0].cell.options())
        else:
            rnn = Stack(rnn_layers, dtype=dtype)
        parts = {}
        for part in ("pre", "post"):
            out = []
            for i, entry in enumerate(spec[part]):
                K = {"Dense": L.Dense, "Scale": L.Scale, "LayerNorm": L.LayerNorm,
                     "Activation": L.Activation}[entry["kind"]]
                kw = {f: (entry[f] if f in entry else ds[f"{part}{i}_{f}"].values)
                      for f in K._fields}
                if isinstance(kw.get("activation"), list):
                    kw["activation"] = tuple(kw["activation"])
                out.append(K(**kw))
            parts[part] = out
        return cls(rnn, pre=parts["pre"], post=parts["post"],
                   return_sequences=spec["return_sequences"], mask_value=spec["mask_value"],
                   zero_output_for_mask=spec["zero_output_for_mask"],
                   batch_first=spec["batch_first"], inputs=spec["inputs"],
                   targets=spec["targets"], window=spec.get("window"),
                   description=spec["description"])

    def save(self, path):
        """Write to netCDF, or to zarr when ``path`` ends in ``.zarr`` (under a temporary
        name first, renamed when complete); read back with :func:`daskgru.load_model`."""
        return save_dataset(self.to_dataset(), path)


def _windowed_block(model, x, window, a, b, mask):
    """Windowed predictions for output steps a..b-1 from canonical x (T', B, F) whose first
    step is global step ``max(0, a - window + 1)``; NaN before step window - 1. Windows are
    run in groups (extra batch rows) of bounded size."""
    off = max(0, a - window + 1)
    B, F = x.shape[1], x.shape[2]
    dt = model.dtype
    y = np.full((b - a, B, model.output_size), np.nan, dt)
    first = max(a, window - 1)
    if first >= b:
        return y
    width = max([lay.output_size for lay in model.rnn.layers] + [F, model.output_size])
    group = max(1, (64 << 20) // max(1, window * B * width * dt.itemsize))
    view = np.lib.stride_tricks.sliding_window_view
    for t0 in range(first, b, group):
        t1 = min(t0 + group, b)
        xs = x[t0 - window + 1 - off:t1 - off]
        xw = view(xs, window, axis=0).transpose(3, 0, 1, 2).reshape(window, -1, F)
        mw = None
        if mask is not None:
            ms = mask[t0 - window + 1 - off:t1 - off]
            mw = view(ms, window, axis=0).transpose(2, 0, 1).reshape(window, -1)
        pred, _, _, _ = model.run(np.ascontiguousarray(xw), batch_first=False, mask=mw)
        if model.return_sequences:
            pred = pred[-1]
        y[t0 - a:t1 - a] = pred.reshape(t1 - t0, B, -1)
    return y


def _windowed_dask(model, x, window, mask):
    """The dask version: one task per time and batch chunk of x, reading its chunk and the
    window-1 steps before it (a slice of x, rechunked into one block along time)."""
    import dask.array as da
    from dask.base import tokenize

    x = da.asarray(x)
    if mask is not None:
        mask = da.asarray(mask).rechunk((x.chunks[0], x.chunks[1]))
    starts = np.concatenate([[0], np.cumsum(x.chunks[0])]).astype(int)
    blocks = []
    for a, b in zip(starts[:-1], starts[1:]):
        lo = max(0, a - window + 1)
        piece = x[lo:b].rechunk({0: -1, 2: -1})
        args = [piece, "tbf"]
        if mask is not None:
            args += [mask[lo:b].rechunk({0: -1}), "tb"]
        fn = (lambda xb, mb=None, a=a, b=b: _windowed_block(model, xb, window, a, b, mb))
        name = "windowed-" + tokenize(model, window, a, b, *args[::2])
        blocks.append(da.blockwise(fn, "tbo", *args, new_axes={"o": model.output_size},
                                   adjust_chunks={"t": b - a}, dtype=model.dtype, name=name,
                                   concatenate=True, meta=np.empty((0, 0, 0), model.dtype)))
    return da.concatenate(blocks, axis=0)


def load_model(path):
    """A :class:`Model` from a file written by :meth:`Model.save`; a params file (from
    ``GRUParams.save``/``LSTMParams.save``) gives a model of the recurrent layers alone."""
    import xarray as xr

    from .params import load_params

    path = os.fspath(path)
    opener = xr.open_zarr if path.rstrip("/").endswith(".zarr") else xr.open_dataset
    with opener(path) as ds:
        if "daskgru_model" in ds.attrs:
            return Model.from_dataset(ds.load())
    p = load_params(path)
    assert isinstance(p, RNNParams)
    return Model(p)
