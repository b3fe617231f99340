"""The ``daskgru`` command (also ``python -m daskgru``).

Exit codes: 0 success, 1 failure (one line on stderr; ``DASKGRU_DEBUG=1`` shows the
traceback), 2 usage error (argparse's message), 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "build_parser", "convert_weights", "load_any_params", "describe"]

TORCH_EXTS = (".pt", ".pth")
KERAS_EXTS = (".keras", ".h5", ".hdf5")


class CLIError(Exception):
    """A user error: printed as one line, exit status 1."""


# ----------------------------------------------------------------------------- convert
def _torch_params(path, prefix=None):
    from .params import GRUParams

    try:
        import torch
    except ImportError:
        raise CLIError(f"reading {path!r} needs torch (pip install torch)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickled modules, corrupt files
        raise CLIError(f"cannot load {path!r} as a torch state_dict (save one with "
                       f"torch.save(model.state_dict(), path)): {str(e).splitlines()[0]}") from None
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    if not hasattr(obj, "keys"):
        raise CLIError(f"{path!r} holds a {type(obj).__name__}, not a state_dict")
    for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint wrappers
        if key in obj and hasattr(obj[key], "keys"):
            obj = obj[key]
            break
    # The GRU's keys may sit under a prefix ("gru." in a model's state_dict).
    prefixes = sorted({k[: -len(t)] for k in obj for t in ("weight_ih_l0", "weight_ih")
                       if isinstance(k, str) and k.endswith(t)})
    if prefix is not None:
        pre = prefix if prefix.endswith(".") or not prefix else prefix + "."
        if pre not in prefixes:
            raise CLIError(f"no GRU under prefix {prefix!r} in {path!r}; GRUs found at: "
                           f"{[p.rstrip('.') or '(top level)' for p in prefixes]}")
    elif len(prefixes) == 1:
        pre = prefixes[0]
    elif not prefixes:
        raise CLIError(f"{path!r} has no GRU weights (no key ending in 'weight_ih_l0' or "
                       f"'weight_ih'); keys: {sorted(obj)[:8]}")
    else:
        raise CLIError(f"{path!r} holds several GRUs {[p.rstrip('.') for p in prefixes]}; "
                       f"choose one with --prefix")
    sd = {k[len(pre):]: v for k, v in obj.items() if k.startswith(pre) and "." not in k[len(pre):]}
    return GRUParams.from_torch(sd), f"torch state_dict{' under ' + pre.rstrip('.') if pre else ''}"


def _ensure_keras_backend():
    """Keras 3 defaults to TensorFlow; pick an installed backend if none was chosen."""
    if os.environ.get("KERAS_BACKEND"):
        return
    import importlib.util

    for mod, name in (("tensorflow", "tensorflow"), ("jax", "jax"), ("torch", "torch")):
        if importlib.util.find_spec(mod) is not None:
            os.environ["KERAS_BACKEND"] = name
            return
    os.environ["KERAS_BACKEND"] = "numpy"


def _keras_params(path):
    from .params import GRUParams

    if path.endswith(".weights.h5"):
        raise CLIError(f"{path!r} holds weights only, without the model; save the whole model "
                       f"with model.save('model.keras') and convert that")
    _ensure_keras_backend()
    try:
        import keras
    except ImportError as e:
        raise CLIError(f"reading {path!r} needs keras with a backend: {e}") from None
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"cannot load {path!r} as a Keras model: {str(e).splitlines()[0]}") from None

    def walk(layer):
        if isinstance(layer, keras.layers.GRU):
            yield layer
        elif isinstance(layer, keras.layers.Bidirectional) and isinstance(
                layer.forward_layer, keras.layers.GRU):
            yield layer
        elif hasattr(layer, "layers"):
            for sub in layer.layers:
                yield from walk(sub)

    grus = list(walk(model))
    if not grus:
        raise CLIError(f"the Keras model in {path!r} has no GRU layer")
    for g in grus[:-1]:
        inner = getattr(g, "forward_layer", g)
        if not getattr(inner, "return_sequences", False):
            raise CLIError(f"GRU layer {g.name!r} has return_sequences=False but another GRU "
                           f"follows it: the layers are not a stack daskgru can run")
    p = GRUParams.from_keras(grus if len(grus) > 1 else grus[0])
    return p, "Keras model, GRU layers " + ", ".join(g.name for g in grus)


def load_any_params(path, prefix=None):
    """GRUParams and a description of the source, from a params file, a torch state_dict
    file (.pt/.pth) or a Keras model file (.keras/.h5)."""
    from .params import load_params

    path = os.fspath(path)
    if not os.path.exists(path):
        raise CLIError(f"{path!r} does not exist")
    low = path.lower().rstrip("/")
    if low.endswith(TORCH_EXTS):
        return _torch_params(path, prefix)
    if low.endswith(KERAS_EXTS):
        return _keras_params(path)
    try:
        return load_params(path), "daskgru params file"
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"cannot read {path!r} as a daskgru params file (.nc or .zarr; convert "
                       f"torch .pt/.pth or Keras .keras/.h5 files with 'daskgru convert'): "
                       f"{str(e).splitlines()[0]}") from None


def convert_weights(weights, output, prefix=None, dtype=None):
    p, source = load_any_params(weights, prefix)
    if dtype:
        p = p.astype(dtype)
    return p, source, p.save(output)


def describe(p, source=None) -> str:
    variant = ("reset_after=True (torch / cuDNN / Keras default: r multiplies W_hn h + b_hn)"
               if p.reset_after else
               "reset_after=False (Cho et al. v3 / Keras reset_after=False: r multiplies h)")
    n = sum(a.size for layer in p.weights for w in layer for a in w)
    if not p.bias:
        n -= sum(w.b_ih.size + w.b_hh.size for layer in p.weights for w in layer)
    lines = [] if source is None else [f"source:        {source}"]
    lines += [
        "model:         GRU" + (" (bidirectional)" if p.bidirectional else ""),
        f"input_size:    {p.input_size}",
        f"hidden_size:   {p.hidden_size}",
        f"num_layers:    {p.num_layers}",
        f"directions:    {p.num_directions}",
        f"output_size:   {p.output_size}",
        f"variant:       {variant}",
        f"bias:          {p.bias}",
        f"dtype:         {p.dtype}",
        f"parameters:    {n:,}",
    ]
    for l, layer in enumerate(p.weights):
        for d, w in enumerate(layer):
            name = f"layer {l}" + ((" forward" if d == 0 else " backward") if p.bidirectional else "")
            lines.append(f"  {name}: w_ih {w.w_ih.shape}, w_hh {w.w_hh.shape}"
                         + (f", b_ih {w.b_ih.shape}, b_hh {w.b_hh.shape}" if p.bias else ""))
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
                  overwrite=args.overwrite, progress=not args.no_progress)
    finally:
        if client is not None:
            client.close()
    if not res.already_complete:
        print(f"wrote {res.output} ({res.units} time chunk(s), resumed at {res.resumed_from}) "
              f"in {res.seconds:.1f} s")


def _cmd_convert(args):
    p, source, path = convert_weights(args.weights, args.output, args.prefix, args.dtype)
    print(f"read {source} from {args.weights}")
    print(f"wrote {path}: {p!r}")


def _cmd_info(args):
    p, source = load_any_params(args.params, args.prefix)
    print(describe(p, f"{source} ({args.params})"))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="daskgru",
        description="Run GRUs over long, wide time series with Dask (daskgru).",
        epilog="Exit status: 0 success, 1 failure, 2 usage error.",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser("demo", help="run a GRU over a synthetic field on a local Dask cluster",
                       description="Start a LocalCluster (or connect to --scheduler), run a GRU "
                                   "over a synthetic (time, lat, lon, feature) field of about "
                                   "10^6 sequence steps, write zarr and a PNG plot, and compare "
                                   "the time with a plain NumPy loop.")
    d.add_argument("--output", default="daskgru-demo", metavar="DIR",
                   help="directory for the outputs (default: ./daskgru-demo)")
    d.add_argument("--scheduler", metavar="ADDRESS",
                   help="use this running dask scheduler instead of starting a LocalCluster")
    d.add_argument("--workers", type=int, metavar="N",
                   help="workers of the LocalCluster (default: CPU count, at most 4)")
    d.add_argument("--time", type=int, default=4000, metavar="T", help="time steps (4000)")
    d.add_argument("--grid", type=int, default=16, metavar="N", help="lat and lon size (16)")
    d.add_argument("--hidden", type=int, default=32, metavar="H", help="hidden size (32)")
    d.add_argument("--time-chunk", type=int, default=500, metavar="N",
                   help="time chunk size (500)")
    d.add_argument("--no-baseline", action="store_true",
                   help="skip the plain NumPy loop comparison")
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser("run", help="run a GRU over a netCDF/zarr file into zarr, resumably",
                       description="Run the GRU in PARAMS over INPUT (netCDF or zarr) and write "
                                   "a zarr store with 'output' and 'final_state'. Time chunks are "
                                   "written one by one with their boundary states: if the run is "
                                   "killed, the same command continues from the last completed "
                                   "chunk and gives the same bits. The store's attribute "
                                   "daskgru_complete is 1 only once everything is written. "
                                   "(A bidirectional GRU is one unit: it restarts from the "
                                   "beginning.)")
    r.add_argument("input", metavar="INPUT", help="netCDF file or zarr store")
    r.add_argument("--params", required=True, metavar="P",
                   help="params file (from 'daskgru convert' or GRUParams.save)")
    r.add_argument("--output", "-o", required=True, metavar="OUT", help="zarr store to write")
    r.add_argument("--time-dim", default="time", help="name of the time dim (time)")
    r.add_argument("--feature-dim", default="feature", help="name of the feature dim (feature)")
    r.add_argument("--features", metavar="A,B",
                   help="data variables to stack as features (input without a feature dim)")
    r.add_argument("--variable", metavar="NAME",
                   help="the data variable to use (input with a feature dim and several variables)")
    r.add_argument("--chunks", metavar="time=N",
                   help="time chunk size (the unit of resumption), optionally batch chunks: "
                        "time=500,lat=8 (default: the input's time chunks, else 1000)")
    r.add_argument("--method", default="scan", help="time traversal method (scan)")
    r.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler address to use")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an existing store written by a different run")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("convert", help="torch state_dict or Keras model -> daskgru params file",
                       description="Convert a torch state_dict file (.pt/.pth, needs torch) or a "
                                   "Keras model file (.keras/.h5, needs keras; its GRU layers are "
                                   "taken as a stack) into a params file (.nc, or .zarr).")
    c.add_argument("weights", metavar="WEIGHTS", help=".pt/.pth or .keras/.h5 file")
    c.add_argument("-o", "--output", required=True, metavar="P",
                   help="params file to write (.nc or .zarr)")
    c.add_argument("--prefix", help="state_dict prefix of the GRU when there are several (e.g. gru)")
    c.add_argument("--dtype", choices=("float32", "float64"), help="cast the weights")
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("info", help="describe a params file (or a torch/Keras weights file)",
                       description="Print sizes, layers, variant, dtype and parameter count.")
    i.add_argument("params", metavar="P", help="params file, or .pt/.pth/.keras/.h5 file")
    i.add_argument("--prefix", help="state_dict prefix of the GRU in a torch file")
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
