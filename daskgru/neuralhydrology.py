"""NeuralHydrology run directories as :class:`daskgru.Model`.

NeuralHydrology (the hydrology community's deep-learning library) writes a run directory
per training run: ``config.yml``, ``model_epochNNN.pt`` (a state_dict) and
``train_data/train_data_scaler.yml`` (older runs: a pickled ``train_data_scaler.p``). Its
``gru``, ``cudalstm`` and ``customlstm`` (``lstm``) models are, per step:

    x = [dynamic inputs (config order), static attributes (sorted by name)]
    x -> (x - center) / scale                    (the scaler; statics: means and stds)
      -> [dynamics FC embedding | statics FC embedding]   (optional, each its own network)
      -> one GRU or LSTM layer -> dropout (identity at inference)
      -> Linear head (+ relu or softplus) -> y * scale + center of the targets

and NeuralHydrology evaluates them in windows of ``seq_length`` steps, each from a zero
state, keeping the last step's prediction (so the first ``seq_length - 1`` steps have none).
A NaN input reaches every prediction whose window holds it, and no other. The model built
here carries that window (``model.window``): ``daskgru.apply_rnn(ds, m, window=m.window)``
reproduces NeuralHydrology's evaluation.

What cannot be honoured exactly is refused by name: other models (EA-LSTM, MTS-LSTM,
MC-LSTM, transformers, ...), probabilistic heads (GMM, CMAL, UMAL), basin-id one-hot
encoding, evolving attributes, autoregressive or lagged inputs, NaN-handling embeddings,
several frequencies, MC dropout.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from . import layers as L
from .cells import Weights
from .params import GRUParams, LSTMParams

__all__ = ["from_neuralhydrology"]

MODELS = {"gru": ("gru", GRUParams), "cudalstm": ("lstm", LSTMParams),
          "customlstm": ("cell", LSTMParams), "lstm": ("cell", LSTMParams)}
# options that change what the model computes, and what daskgru says about them
UNSUPPORTED = {
    "use_basin_id_encoding": "basin-id one-hot encoding",
    "evolving_attributes": "evolving attributes (a window's last value repeated over it)",
    "static_inputs": "evolving attributes (a window's last value repeated over it)",
    "autoregressive_inputs": "autoregressive inputs",
    "lagged_features": "lagged features",
    "duplicate_features": "duplicated features",
    "additional_feature_files": "additional feature files",
    "mass_inputs": "mass inputs",
    "mc_dropout": "MC dropout",
    "nan_handling_method": "NaN-handling embeddings",
    "timestep_counter": "a time-step counter input",
    "forecast_inputs": "forecast inputs",
    "hindcast_inputs": "hindcast inputs",
    "random_holdout_from_dynamic_features": "random holdout of inputs",
}


def _config(run_dir):
    import yaml

    path = run_dir / "config.yml"
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} is not a NeuralHydrology run directory (no "
                         "config.yml)")
    with path.open() as f:
        cfg = yaml.safe_load(f)
    # legacy names
    for old, new in (("camels_attributes", "static_attributes"),
                     ("target_variable", "target_variables")):
        if cfg.get(old) and not cfg.get(new):
            cfg[new] = cfg[old]
    return cfg


def _check(cfg):
    model = str(cfg.get("model", "")).lower()
    if model not in MODELS:
        raise ValueError(f"NeuralHydrology model {model!r} is not supported (daskgru runs "
                         f"{', '.join(sorted(MODELS))}; {model!r} computes other equations)")
    head = str(cfg.get("head", "regression")).lower()
    if head != "regression":
        raise ValueError(f"NeuralHydrology head {head!r} is not supported (a probabilistic head; "
                         "daskgru runs the regression head)")
    for key, what in UNSUPPORTED.items():
        if cfg.get(key):
            raise ValueError(f"NeuralHydrology option {key}={cfg[key]!r} ({what}) is not "
                             "supported")
    freqs = cfg.get("use_frequencies") or []
    if len(freqs) > 1:
        raise ValueError(f"NeuralHydrology option use_frequencies={freqs!r} (a multi-timescale "
                         "model) is not supported")
    act = str(cfg.get("output_activation", "linear")).lower()
    if act not in ("linear", "relu", "softplus"):
        raise ValueError(f"NeuralHydrology output_activation {act!r} is not supported")
    return model, act


def _embedding_spec(cfg, which):
    """The FC spec of the statics/dynamics embedding ({hiddens, activation}) or None."""
    spec = cfg.get(f"{which}_embedding")
    if spec is True:  # the legacy form
        spec = {"type": "fc", "hiddens": cfg.get("embedding_hiddens"),
                "activation": cfg.get("embedding_activation", "tanh")}
    if not spec:
        return None
    if str(spec.get("type", "fc")).lower() != "fc":
        raise ValueError(f"NeuralHydrology {which}_embedding type {spec['type']!r} is not "
                         "supported (only fc)")
    act = str(spec.get("activation", "tanh")).lower()
    if act not in ("tanh", "sigmoid", "relu", "linear"):
        raise ValueError(f"NeuralHydrology {which}_embedding activation {act!r} is not supported")
    return {"hiddens": list(spec["hiddens"]), "activation": act}


def _fc_layers(sd, prefix, spec, n_in, used):
    """An FC embedding network as (weight (out, in), bias, activation) per Linear: the
    activation after every Linear but the last. The keys read go into ``used``."""
    out = []
    hiddens = spec["hiddens"]
    for i, n_out in enumerate(hiddens):
        key = f"{prefix}net.{3 * i}"
        used.update((key + ".weight", key + ".bias"))
        w, b = sd.get(key + ".weight"), sd.get(key + ".bias")
        if w is None or b is None:
            raise ValueError(f"the state_dict lacks {key}.weight/.bias of the {prefix} network")
        if w.shape != (n_out, n_in):
            raise ValueError(f"{key}.weight has shape {w.shape}, the config says {(n_out, n_in)}")
        out.append((w, b, spec["activation"] if i < len(hiddens) - 1 else "linear"))
        n_in = n_out
    return out


def _side_by_side(a, b, na_in, nb_in):
    """Two per-step networks (lists of (w (out, in), b, activation)) on two slices of the
    features (``na_in`` and ``nb_in`` wide) as Dense layers: block-diagonal weights, one
    activation per output; the shorter network's outputs pass the remaining layers
    unchanged (identity weights, linear activation: exact for finite values)."""
    layers = []
    for i in range(max(len(a), len(b))):
        parts = []
        for net, n_in_first in ((a, na_in), (b, nb_in)):
            if i < len(net):
                parts.append(net[i])
            else:
                n = net[-1][0].shape[0] if net else n_in_first
                parts.append((np.eye(n), np.zeros(n), "linear"))
        (wa, ba, acta), (wb, bb, actb) = parts
        w = np.zeros((wa.shape[1] + wb.shape[1], wa.shape[0] + wb.shape[0]))
        w[:wa.shape[1], :wa.shape[0]] = wa.T
        w[wa.shape[1]:, wa.shape[0]:] = wb.T
        acts = (acta,) * wa.shape[0] + (actb,) * wb.shape[0]
        layers.append(L.Dense(w, np.concatenate([ba, bb]),
                              acts[0] if len(set(acts)) == 1 else acts))
    return layers


def _scaler(run_dir):
    """center and scale per feature name: dynamics, targets and statics."""
    yml = run_dir / "train_data" / "train_data_scaler.yml"
    pkl = run_dir / "train_data" / "train_data_scaler.p"
    center, scale = {}, {}
    if yml.is_file():
        import yaml

        with yml.open() as f:
            raw = yaml.safe_load(f)

        def values(d):  # xarray.Dataset.to_dict() of scalars
            return {k: float(v["data"]) for k, v in d.get("data_vars", {}).items()}

        feature_center = values(raw.get("xarray_feature_center", raw.get("xarray_means", {})))
        feature_scale = values(raw.get("xarray_feature_scale", raw.get("xarray_stds", {})))
        means = raw.get("attribute_means", raw.get("camels_attr_means", {})) or {}
        stds = raw.get("attribute_stds", raw.get("camels_attr_stds", {})) or {}
    elif pkl.is_file():  # older runs pickle pandas and xarray objects
        with pkl.open("rb") as f:
            raw = pickle.load(f)  # noqa: S301 - the user's own run directory
        fc = raw.get("xarray_feature_center", raw.get("xarray_means"))
        fs = raw.get("xarray_feature_scale", raw.get("xarray_stds"))
        feature_center = {k: float(fc[k].values) for k in fc.data_vars}
        feature_scale = {k: float(fs[k].values) for k in fs.data_vars}
        means = dict(raw.get("attribute_means", raw.get("camels_attr_means", {})))
        stds = dict(raw.get("attribute_stds", raw.get("camels_attr_stds", {})))
    else:
        raise ValueError(f"{str(run_dir)!r} has no train_data/train_data_scaler.yml (or .p): "
                         "the scaler is part of the model")
    center.update(feature_center)
    scale.update(feature_scale)
    # statics: float64 as NeuralHydrology normalises them
    statics = ({k: float(v) for k, v in means.items()}, {k: float(v) for k, v in stds.items()})
    return center, scale, statics


def from_neuralhydrology(run_dir, epoch=None):
    """A :class:`daskgru.Model` from a NeuralHydrology run directory (see the module
    docstring); ``epoch`` picks ``model_epochNNN.pt`` (default: the last one saved)."""
    from .model import Model

    run_dir = Path(os.fspath(run_dir))
    cfg = _config(run_dir)
    model_name, out_act = _check(cfg)
    if epoch is None:
        files = {int(f.stem[len("model_epoch"):]): f for f in run_dir.glob("model_epoch*.pt")
                 if f.stem[len("model_epoch"):].isdigit()}
        if not files:
            raise ValueError(f"{str(run_dir)!r} holds no model_epochNNN.pt")
        weights = files[max(files)]
    else:
        weights = run_dir / f"model_epoch{int(epoch):03d}.pt"
        if not weights.is_file():
            raise ValueError(f"{str(weights)!r} does not exist")
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {str(weights)!r} needs torch (pip install torch)") from None
    sd = {k: v.detach().float().numpy() for k, v in
          torch.load(weights, map_location="cpu", weights_only=True).items()}

    dyn = cfg.get("dynamic_inputs") or []
    if isinstance(dyn, dict):
        if len(dyn) > 1:
            raise ValueError("NeuralHydrology dynamic_inputs for several frequencies are not "
                             "supported")
        dyn = next(iter(dyn.values()))
    if dyn and not isinstance(dyn[0], str):  # feature groups (NaN-handling embeddings)
        raise ValueError("NeuralHydrology dynamic_inputs given as feature groups are not "
                         "supported")
    statics = sorted((cfg.get("static_attributes") or []) + (cfg.get("hydroatlas_attributes") or []))
    targets = list(cfg.get("target_variables") or [])
    center, scale, (means, stds) = _scaler(run_dir)
    missing = [v for v in dyn + targets if v not in center] + [v for v in statics if v not in means]
    if missing:
        raise ValueError(f"the scaler of {str(run_dir)!r} lacks {missing}")
    pre = [L.Scale.normalize([center[v] for v in dyn] + [means[v] for v in statics],
                             [scale[v] for v in dyn] + [stds[v] for v in statics])]
    dyn_spec, stat_spec = _embedding_spec(cfg, "dynamics"), _embedding_spec(cfg, "statics")
    dnet, used = [], set()
    if dyn_spec:
        key = ("embedding_net.dynamics_embeddings.0."
               if "embedding_net.dynamics_embeddings.0.net.0.weight" in sd
               else "embedding_net.dynamics_embedding.")
        dnet = _fc_layers(sd, key, dyn_spec, len(dyn), used)
    snet = _fc_layers(sd, "embedding_net.statics_embedding.", stat_spec, len(statics), used) \
        if stat_spec and statics else []
    if dnet or snet:
        pre += _side_by_side(dnet, snet, len(dyn), len(statics))

    prefix, P = MODELS[model_name]
    if prefix == "cell":  # NeuralHydrology's own LSTM: the same equations as nn.LSTM
        try:
            w = Weights(sd["cell.w_ih"], sd["cell.w_hh"], sd["cell.b_ih"], sd["cell.b_hh"])
        except KeyError as e:
            raise ValueError(f"the state_dict lacks {e.args[0]} of NeuralHydrology's LSTM") from None
        rnn = P([[w]])
    else:
        rnn = P.from_torch({k: v for k, v in sd.items() if k.startswith(prefix + ".")},
                           prefix=prefix + ".")
    if rnn.num_layers != 1 or rnn.hidden_size != int(cfg["hidden_size"]):
        raise ValueError(f"the state_dict's RNN ({rnn!r}) is not the config's (one layer of "
                         f"{cfg['hidden_size']})")
    hw, hb = sd.get("head.net.0.weight"), sd.get("head.net.0.bias")
    if hw is None:
        raise ValueError("the state_dict lacks head.net.0.weight of the regression head")
    post = [L.Dense(hw.T, hb if hb is not None else np.zeros(hw.shape[0]), out_act),
            L.Scale.unscale([center[v] for v in targets], [scale[v] for v in targets])]
    used |= {k for k in sd if k.startswith(prefix + ".")} | {"head.net.0.weight",
                                                             "head.net.0.bias"}
    extra = sorted(set(sd) - used)
    if extra:
        raise ValueError(f"the state_dict holds {extra}, which this NeuralHydrology model does "
                         "not use")
    seq = cfg.get("seq_length")
    seq = next(iter(seq.values())) if isinstance(seq, dict) else seq
    return Model(rnn, pre=pre, post=post, batch_first=True, inputs=dyn + statics,
                 targets=targets, window=int(seq) if seq else None,
                 description=f"NeuralHydrology {model_name} ({weights.name}, {run_dir.name})")
