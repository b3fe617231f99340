"""The ``daskgru`` command (also ``python -m daskgru``).

Exit codes: 0 success, 1 failure (one line on stderr; ``DASKGRU_DEBUG=1`` shows the
traceback), 2 usage error (argparse's message), 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "build_parser", "convert_weights", "load_source", "describe"]

TORCH_EXTS = (".pt", ".pth", ".ckpt", ".pt2")
KERAS_EXTS = (".keras", ".h5", ".hdf5")


class CLIError(Exception):
    """A user error: printed as one line, exit status 1."""


# ----------------------------------------------------------------------------- convert
class Source:
    """What a weights file held: the params, where they came from, and what else was in it
    (tensors or layers the params do not use)."""

    def __init__(self, params, description, unused=()):
        self.params, self.description, self.unused = params, description, list(unused)


def _torch_kind(sd, pre):
    """GRUParams or LSTMParams, from the row count of the recurrent weight under ``pre``."""
    from .params import MODELS

    for tail in ("weight_hh_l0", "weight_hh", "weight_hh_l0_v"):
        w = sd.get(pre + tail)
        if w is not None and len(getattr(w, "shape", ())) == 2:
            rows, H = w.shape
            kinds = {P.cell_class.gates * H: P for P in MODELS.values()}
            if rows in kinds:
                return kinds[rows]
            raise CLIError(f"{pre + tail} has shape {tuple(w.shape)}: not the recurrent weight "
                           f"of a {' or '.join(MODELS)} ({' or '.join(f'({g}H, H)' for g in sorted(P.cell_class.gates for P in MODELS.values()))})")
    raise CLIError(f"no recurrent weight (weight_hh_l0) under {pre or 'the top level'!r}")


def _torch_file(path):
    """A state_dict from a torch file (unwrapping checkpoints), or a CLIError that says
    what the file is and what would be needed."""
    import zipfile

    try:
        import torch
    except ImportError:
        raise CLIError(f"reading {path!r} needs torch (pip install torch)") from None
    if zipfile.is_zipfile(path):
        names = zipfile.ZipFile(path).namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise CLIError(f"{path!r} is a TorchScript archive (torch.jit.save), which holds "
                           "compiled code rather than named weights: load it with "
                           "torch.jit.load(path) and save its state_dict, "
                           "torch.save(m.state_dict(), 'weights.pt'), then convert that")
        if any(n.endswith("serialized_exported_program.json") or "/models/" in n
               for n in names) or path.lower().endswith(".pt2"):
            raise CLIError(f"{path!r} is a torch.export archive (.pt2): load it with "
                           "torch.export.load(path) and save module().state_dict() with "
                           "torch.save, then convert that")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickled modules, corrupt files
        first = str(e).splitlines()[0]
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CLIError(
                f"{path!r} pickles Python objects besides tensors (a whole module, or a darts "
                "or Lightning checkpoint), which daskgru does not unpickle: load it in Python "
                "and build the model there — torch: torch.save(module.state_dict(), path); "
                "darts: m = RNNModel.load(path); dg.Model.from_torch(m.model.rnn, "
                "head=m.model.V, window=m.input_chunk_length).save('model.nc')") from None
        raise CLIError(f"cannot load {path!r} as a torch state_dict (save one with "
                       f"torch.save(model.state_dict(), path)): {first}") from None
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    if not hasattr(obj, "keys"):
        raise CLIError(f"{path!r} holds a {type(obj).__name__}, not a state_dict")
    for key in ("state_dict", "model_state_dict", "model"):  # checkpoints, Lightning .ckpt
        if key in obj and hasattr(obj[key], "keys"):
            return dict(obj[key]), f" (the checkpoint's {key!r})"
    return dict(obj), ""


def _torch_params(path, prefix=None):
    from . import convert

    sd, where = _torch_file(path)
    prefixes = convert.find_prefixes(sd)
    if prefix is not None:
        pre = prefix if prefix.endswith(".") or not prefix else prefix + "."
        if pre not in prefixes:
            raise CLIError(f"no RNN under prefix {prefix!r} in {path!r}; RNNs found at: "
                           f"{[p.rstrip('.') or '(top level)' for p in prefixes]}")
    elif len(prefixes) == 1:
        pre = prefixes[0]
    elif not prefixes:
        raise CLIError(f"{path!r} has no GRU or LSTM weights (no key ending in 'weight_ih_l0' "
                       f"or 'weight_ih'); keys: {sorted(sd)[:8]}")
    else:
        raise CLIError(f"{path!r} holds several RNNs {[p.rstrip('.') for p in prefixes]}; "
                       f"choose one with --prefix")
    cls = _torch_kind(sd, pre)
    layers, bias, used = convert.torch_layers(sd, cls.cell_class(), prefix=pre,
                                              what=f"{path!r}{where}")
    p = cls(layers, bias=bias)
    unused = sorted(k for k in sd if k not in used and not _is_bookkeeping(k))
    desc = f"torch state_dict{where}{' under ' + pre.rstrip('.') if pre else ''}"
    return Source(p, desc, unused)


def _is_bookkeeping(key):
    """State that is no weight (BatchNorm's counter)."""
    return str(key).endswith("num_batches_tracked")


def _keras_model(path):
    if path.endswith(".weights.h5"):
        raise CLIError(f"{path!r} holds weights only, without the model; save the whole model "
                       f"with model.save('model.keras') and convert that")
    from .importers import ensure_keras_backend

    ensure_keras_backend()
    try:
        import keras
    except ImportError as e:
        raise CLIError(f"reading {path!r} needs keras with a backend: {e}") from None
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"cannot load {path!r} as a Keras model: {str(e).splitlines()[0]}") from None


def _keras_params(path, model):
    """The recurrent layers of a Keras model as params (--rnn-only), listing the rest."""
    from . import convert
    from .importers import KERAS_INERT
    from .params import GRUParams, LSTMParams

    chain = convert.keras_chain(model)
    rnns = [lay for lay in chain if convert.keras_kind(getattr(lay, "forward_layer", lay))]
    if not rnns:
        raise CLIError(f"the Keras model in {path!r} has no GRU or LSTM layer")
    kinds = {convert.keras_kind(getattr(lay, "forward_layer", lay)) for lay in rnns}
    if len(kinds) > 1:
        raise CLIError(f"the Keras model in {path!r} mixes GRU and LSTM layers "
                       f"{[lay.name for lay in rnns]}: not a GRUParams or LSTMParams stack "
                       "(convert it whole, without --rnn-only)")
    cls = GRUParams if kinds == {"gru"} else LSTMParams
    p = cls.from_keras(model)
    first, last = chain.index(rnns[0]), chain.index(rnns[-1])
    unused = [f"{lay.name} ({type(lay).__name__})" for lay in chain
              if lay not in rnns and type(lay).__name__ not in KERAS_INERT]
    between = [f"{lay.name} ({type(lay).__name__})" for lay in chain[first:last]
               if lay not in rnns and type(lay).__name__ not in KERAS_INERT]
    if between:
        raise CLIError(f"the Keras model in {path!r} has layers between its recurrent layers "
                       f"({', '.join(between)}): the recurrent layers are not one stack")
    desc = f"Keras model, {cls.model} layers " + ", ".join(lay.name for lay in rnns)
    return Source(p, desc, unused)


def _keras_source(path, rnn_only):
    from .model import Model

    model = _keras_model(path)
    if rnn_only:
        return _keras_params(path, model)
    try:
        m = Model.from_keras(model)
    except ValueError as e:
        raise CLIError(f"{path!r}: {e} (--rnn-only converts its recurrent layers alone)") from None
    if m.rnn_only:
        return _keras_params(path, model)
    return Source(m, f"Keras model {model.name!r} ({len(m.rnn.layers)} recurrent layer(s), "
                     f"{len(m.pre)} before, {len(m.post)} after)")


def load_source(path, prefix=None, rnn_only=False):
    """The params or model in a params/model file, a torch state_dict or checkpoint file
    (.pt/.pth/.ckpt), a Keras model file (.keras/.h5) or a NeuralHydrology run directory,
    with what else the file held that the result does not use."""
    from .model import load_model

    path = os.fspath(path)
    if not os.path.exists(path):
        raise CLIError(f"{path!r} does not exist")
    low = path.lower().rstrip("/")
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "config.yml")):
        from .model import Model

        return Source(Model.from_neuralhydrology(path), f"NeuralHydrology run {path}")
    if low.endswith(TORCH_EXTS):
        return _torch_params(path, prefix)
    if low.endswith(KERAS_EXTS):
        return _keras_source(path, rnn_only)
    try:
        m = load_model(path)
    except Exception as e:  # noqa: BLE001
        from .run import unreadable

        raise CLIError(unreadable(path, e) + " (convert torch .pt/.pth/.ckpt or Keras .keras/.h5 "
                       "files, or a NeuralHydrology run directory, with 'daskgru convert')") from None
    if m.rnn_only:
        return Source(m.rnn, "daskgru params file")
    return Source(m, "daskgru model file")


def convert_weights(weights, output, prefix=None, dtype=None, rnn_only=False):
    """Convert a weights file to a params file, or a model file when the source is more than
    its recurrent layers; refuses (naming them) the tensors and layers that would be left
    out, unless ``rnn_only``."""
    src = load_source(weights, prefix, rnn_only)
    if src.unused and not rnn_only:
        shown = ", ".join(src.unused[:12]) + (", ..." if len(src.unused) > 12 else "")
        hint = ("; a torch head's activations are not in a state_dict: build the whole model "
                "with daskgru.Model.from_torch(rnn, head=...) and save it"
                if weights.lower().endswith(TORCH_EXTS) else "")
        raise CLIError(f"{weights} holds more than the recurrent layers: {shown} would be "
                       "left out. Running the params alone gives the RNN's hidden states, "
                       "not the model's output; pass --rnn-only to convert the recurrent "
                       f"layers anyway{hint}")
    p = src.params.astype(dtype) if dtype else src.params
    return p, src.description, p.save(output), src.unused


VARIANT_NOTES = {
    ("reset_after", True): " (torch / cuDNN / Keras default: r multiplies W_hn h + b_hn)",
    ("reset_after", False): " (Cho et al. v3 / Keras reset_after=False: r multiplies h)",
}


def describe_model(m, source=None) -> str:
    from . import layers as L

    def step(lay):
        if isinstance(lay, L.Dense):
            act = lay.activation if isinstance(lay.activation, str) else "per-output"
            return f"Dense {lay.w.shape[0]} -> {lay.w.shape[1]}, {act}"
        if isinstance(lay, L.Scale):
            return "un-scaling x * scale + center" if lay.invert else \
                "scaling (x - center) / scale"
        if isinstance(lay, L.LayerNorm):
            return f"LayerNorm (eps {lay.eps:g})"
        return f"Activation {lay.activation}"

    lines = [] if source is None else [f"source:        {source}"]
    lines += ["model:         daskgru Model",
              f"input_size:    {m.input_size}" + (f" ({', '.join(m.inputs)})" if m.inputs else ""),
              f"output_size:   {m.output_size}" + (f" ({', '.join(m.targets)})" if m.targets else ""),
              f"sequence:      {'to sequence' if m.return_sequences else 'to one (last valid step)'}",
              f"mask_value:    {m.mask_value}",
              f"window:        {m.window if m.window else 'none (continuous)'}",
              f"layout:        {'batch first (B, T, F)' if m.batch_first else '(T, B, F)'}",
              f"dtype:         {m.dtype}"]
    lines += [f"  before: {step(lay)}" for lay in m.pre]
    for l, lay in enumerate(m.rnn.layers):
        opts = "".join(f", {k}={v}" for k, v in lay.cell.options().items())
        bi = f", bidirectional ({lay.merge})" if lay.num_directions == 2 else ""
        lines.append(f"  layer {l}: {lay.cell.name.upper()} {lay.input_size} -> "
                     f"{lay.hidden_size}{bi}{opts}")
    lines += [f"  head:   {step(lay)}" for lay in m.post]
    if m.description:
        lines.append(f"from:          {m.description}")
    return "\n".join(lines)


def describe(p, source=None, unused=()) -> str:
    from .model import Model

    if isinstance(p, Model):
        return describe_model(p, source)
    n = sum(a.size for layer in p.weights for w in layer for a in w)
    if not p.bias:
        n -= sum(w.b_ih.size + w.b_hh.size for layer in p.weights for w in layer)
    lines = [] if source is None else [f"source:        {source}"]
    lines += [
        f"model:         {p.model}" + (" (bidirectional)" if p.bidirectional else ""),
        f"input_size:    {p.input_size}",
        f"hidden_size:   {p.hidden_size}",
        f"num_layers:    {p.num_layers}",
        f"directions:    {p.num_directions}",
        f"output_size:   {p.output_size}",
    ]
    for k, v in p.cell.options().items():
        lines.append(f"{'variant:':15}{k}={v}{VARIANT_NOTES.get((k, v), '')}")
    lines += [
        f"bias:          {p.bias}",
        f"dtype:         {p.dtype}",
        f"parameters:    {n:,}",
    ]
    for l, layer in enumerate(p.weights):
        for d, w in enumerate(layer):
            name = f"layer {l}" + ((" forward" if d == 0 else " backward") if p.bidirectional else "")
            lines.append(f"  {name}: w_ih {w.w_ih.shape}, w_hh {w.w_hh.shape}"
                         + (f", b_ih {w.b_ih.shape}, b_hh {w.b_hh.shape}" if p.bias else ""))
    if unused:
        lines.append(f"not in these params: {', '.join(unused)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands
def _cmd_demo(args):
    from .run import demo

    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    for name in ("time", "grid", "hidden", "time_chunk"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    demo(args.output, scheduler=args.scheduler, workers=args.workers, time_steps=args.time,
         grid=args.grid, hidden=args.hidden, time_chunk=args.time_chunk,
         baseline=not args.no_baseline)


def _window_arg(value):
    if value in (None, "model"):
        return "model"
    if value == "none":
        return None
    try:
        n = int(value)
    except ValueError:
        raise CLIError(f"--window must be a number of steps, 'model' or 'none', got "
                       f"{value!r}") from None
    if n < 1:
        raise CLIError(f"--window must be >= 1, got {n}")
    return n


def _cmd_run(args):
    from .run import run

    client = None
    if args.scheduler:
        from distributed import Client

        try:
            client = Client(args.scheduler, timeout="20s")
        except OSError as e:
            raise CLIError(f"cannot connect to scheduler {args.scheduler!r}: {e}") from None
    try:
        res = run(args.input, args.params, args.output, time_dim=args.time_dim,
                  feature_dim=args.feature_dim, features=args.features,
                  variable=args.variable, chunks=args.chunks, method=args.method,
                  skipna=args.skipna, window=_window_arg(args.window), id_col=args.id_col,
                  time_col=args.time_col, partitioned_by=args.partitioned_by,
                  overwrite=args.overwrite, progress=not args.no_progress)
    finally:
        if client is not None:
            client.close()
    if not res.already_complete:
        unit = "partition(s)" if args.id_col else "time chunk(s)"
        print(f"wrote {res.output} ({res.units} {unit}, resumed at {res.resumed_from}) "
              f"in {res.seconds:.1f} s")


def _cmd_convert(args):
    p, source, path, unused = convert_weights(args.weights, args.output, args.prefix,
                                              args.dtype, args.rnn_only)
    print(f"read {source} from {args.weights}")
    if unused:
        print(f"left out (--rnn-only): {', '.join(unused)}")
    print(f"wrote {path}: {p!r}")


def _cmd_info(args):
    src = load_source(args.params, args.prefix)
    print(describe(src.params, f"{src.description} ({args.params})", src.unused))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="daskgru",
        description="Run GRUs and LSTMs over long, wide time series with Dask (daskgru).",
        epilog="Exit status: 0 success, 1 failure, 2 usage error.",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser("demo", help="run a GRU over a synthetic field on a local Dask cluster",
                       description="Start a LocalCluster (or connect to --scheduler), run a GRU "
                                   "over a synthetic (time, lat, lon, feature) field of about "
                                   "4x10^6 sequence steps, write zarr and a PNG plot, and compare "
                                   "the time with daskgru's eager call and a plain NumPy loop.")
    d.add_argument("--output", default="daskgru-demo", metavar="DIR",
                   help="directory for the outputs (default: ./daskgru-demo)")
    d.add_argument("--scheduler", metavar="ADDRESS",
                   help="use this running dask scheduler instead of starting a LocalCluster")
    d.add_argument("--workers", type=int, metavar="N",
                   help="workers of the LocalCluster (default: CPU count, at most 4)")
    d.add_argument("--time", type=int, default=16000, metavar="T", help="time steps (16000)")
    d.add_argument("--grid", type=int, default=16, metavar="N", help="lat and lon size (16)")
    d.add_argument("--hidden", type=int, default=32, metavar="H", help="hidden size (32)")
    d.add_argument("--time-chunk", type=int, default=1000, metavar="N",
                   help="time chunk size (1000)")
    d.add_argument("--no-baseline", action="store_true",
                   help="skip the plain NumPy loop comparison")
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser("run", help="run a GRU or LSTM over a netCDF/zarr file into zarr, "
                                   "resumably",
                       description="Run the GRU, LSTM or model in PARAMS over INPUT (netCDF or "
                                   "zarr) and write a zarr store: for params 'output' and "
                                   "'final_state' (and 'final_cell' for an LSTM), for a model "
                                   "its 'prediction'. Time chunks are "
                                   "written one by one with their boundary states: if the run is "
                                   "killed, the same command continues from the last completed "
                                   "chunk and gives the same bits. The store's attribute "
                                   "daskgru_complete is 1 only once everything is written. "
                                   "(A bidirectional model is one unit: it restarts from the "
                                   "beginning.) A Parquet INPUT (a file or a dataset directory, "
                                   "Hive partitions too: one row per series id and time) gives "
                                   "a Parquet dataset OUT with the output columns added, one "
                                   "file per input partition, resumable per partition.")
    r.add_argument("input", metavar="INPUT",
                   help="netCDF file, zarr store, or Parquet file or directory")
    r.add_argument("--params", required=True, metavar="P",
                   help="params or model file (from 'daskgru convert', or the save method of "
                        "GRUParams, LSTMParams, Model)")
    r.add_argument("--output", "-o", required=True, metavar="OUT",
                   help="zarr store (or, for Parquet input, Parquet directory) to write")
    r.add_argument("--time-dim", default="time", help="name of the time dim (time)")
    r.add_argument("--feature-dim", default="feature", help="name of the feature dim (feature)")
    r.add_argument("--features", metavar="A,B",
                   help="data variables to stack as features (input without a feature dim); "
                        "for a table, its feature columns (default: the model's input names, "
                        "else every numeric column but id and time)")
    r.add_argument("--id-col", metavar="NAME",
                   help="Parquet input: the column naming each row's series")
    r.add_argument("--time-col", default="time", metavar="NAME",
                   help="Parquet input: the time column (time)")
    r.add_argument("--partitioned-by", choices=("time", "id"),
                   help="Parquet input: partitions are time slices of all series, or whole "
                        "series (default: detected from the id and time columns)")
    r.add_argument("--variable", metavar="NAME",
                   help="the data variable to use (input with a feature dim and several variables)")
    r.add_argument("--chunks", metavar="time=N",
                   help="time chunk size (the unit of resumption), optionally batch chunks: "
                        "time=500,lat=8 (default: the input's time chunks, else 1000)")
    r.add_argument("--method", default="scan",
                   help="time traversal: scan (default), speculative, newton, or auto "
                        "(chosen from a model of the run's cost)")
    r.add_argument("--window", metavar="N|model|none", default="model",
                   help="windowed inference: each step's prediction from a zero-state run over "
                        "the N steps up to it (default 'model': the model's own window, e.g. a "
                        "NeuralHydrology run's seq_length; 'none': one continuous run)")
    r.add_argument("--skipna", action="store_true",
                   help="a step with a NaN feature is missing: the state carries across it "
                        "and the output there is NaN")
    r.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler address to use")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an existing store written by a different run")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("convert", help="torch, Keras or NeuralHydrology model -> daskgru "
                                       "params or model file",
                       description="Convert a torch state_dict or checkpoint file (.pt/.pth/"
                                   ".ckpt, needs torch), a Keras model file (.keras/.h5, needs "
                                   "keras; written whole, as a model, when it has more than "
                                   "recurrent layers) or a NeuralHydrology run directory into a "
                                   "params file (.nc, or .zarr). A file that holds more than the "
                                   "recurrent layers (a head, a normalisation) is refused, "
                                   "naming what would be left out, unless --rnn-only is given.")
    c.add_argument("weights", metavar="WEIGHTS", help=".pt/.pth/.ckpt or .keras/.h5 file")
    c.add_argument("-o", "--output", required=True, metavar="P",
                   help="params file to write (.nc or .zarr)")
    c.add_argument("--prefix", help="state_dict prefix of the RNN when there are several (e.g. gru)")
    c.add_argument("--dtype", choices=("float32", "float64"), help="cast the weights")
    c.add_argument("--rnn-only", action="store_true",
                   help="convert the recurrent layers even though the file holds more")
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("info", help="describe a params or model file (or a torch/Keras/"
                                    "NeuralHydrology model)",
                       description="Print sizes, layers, variant, dtype and parameter count "
                                   "(for a model: its layers, window, inputs and targets).")
    i.add_argument("params", metavar="P", help="params or model file, a .pt/.pth/.keras/.h5 "
                                               "file, or a NeuralHydrology run directory")
    i.add_argument("--prefix", help="state_dict prefix of the RNN in a torch file")
    i.set_defaults(func=_cmd_info)
    return ap


def main(argv=None) -> int:
    from .run import RunError

    parser = build_parser()
    args = parser.parse_args(argv)
    import warnings

    # zarr warns that string coords (the "direction" labels) have no Zarr v3 spec yet.
    warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("daskgru: interrupted", file=sys.stderr)
        return 130
    except (CLIError, RunError, ValueError, TypeError, OSError, ImportError) as e:
        if os.environ.get("DASKGRU_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"daskgru {args.command}: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
