"""The model kinds of `metanets.predict`: their names, default hyperparameters and the NNX
module a config describes (`build_module`), shared by the fitting loops and by loading."""

from __future__ import annotations

from typing import Any

from flax import nnx

from hyper.init_programs import init_module
from metanets.baselines import MLPRegressor
from metanets.models import GraphMetanet
from metanets.probegen import ProbeNet

__all__ = ["COMMON", "DEFAULTS", "GRAPH_MODELS", "MODELS", "build_module", "standardize"]

MODELS = ("gmn", "gmn_t", "probes", "statnn_mlp", "statnn_gbm", "flat")
GRAPH_MODELS = ("gmn", "gmn_t")
"""The models that read `GraphBank` batches (and accept a `mesh`)."""

COMMON: dict[str, Any] = {"canonicalize": False, "augment": 0}
"""Data options of every model: ``canonicalize`` puts every network (training and
prediction) in its canonical scale and sign (`metanets.augment.canonicalize_dataset`);
``augment`` appends that many random equivalents (permutations, positive rescalings, sign
flips: `metanets.augment.augment_dataset`) of each training sample (not of the validation
runs) before fitting."""

DEFAULTS: dict[str, dict[str, Any]] = {
    "gmn": {
        "hidden": 16,
        "num_layers": 3,
        "readout": "layer",
        "input_transform": "asinh",
        "epochs": 30,
        "batch_size": 64,
        "lr": 2e-3,
        "weight_decay": 1e-4,
        "eval_every": 2,
        "noise": 0.0,
        "pool": "meanmax",
        "probes": 0,
        "probe_source": "fixed",
        "probe_epochs": 20,
        "input_norm": False,
    },
    "probes": {
        "count": 32,
        "latent": 32,
        "gen_width": 64,
        "gen_depth": 4,
        "scale": 2.0,
        "hidden": 256,
        "depth": 3,
        "epochs": 40,
        "batch_size": 64,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "eval_every": 2,
    },
    "statnn_mlp": {
        "hidden": 256,
        "depth": 2,
        "epochs": 150,
        "batch_size": 128,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "eval_every": 5,
    },
    "statnn_gbm": {},
}
# the MLP on flattened weights: the same readout and schedule as the one on statistics
DEFAULTS["flat"] = dict(DEFAULTS["statnn_mlp"])
# the graph transformer: the PNA model's settings plus its attention heads and global token
DEFAULTS["gmn_t"] = {**DEFAULTS["gmn"], "heads": 4, "global_attention": True}
DEFAULTS = {kind: {**d, **COMMON} for kind, d in DEFAULTS.items()}
"""Default hyperparameters per model (override any with `fit(..., **overrides)`)."""


def standardize(y: Any) -> tuple[float, float]:
    """``(mean, std)`` of labels `y` (std at least 1e-6), to train on standardised labels."""
    return float(y.mean()), float(max(y.std(), 1e-6))


def build_module(kind: str, config: dict[str, Any], seed: int = 0) -> nnx.Module:
    """The NNX module of model `kind` that `config` (`DEFAULTS[kind]` plus what `fit`
    records) describes, initialised from `seed`."""
    if kind in GRAPH_MODELS:
        w = config["window"]
        extra = {}
        if kind == "gmn_t":
            extra = {
                "layer": "attention",
                "heads": int(config["heads"]),
                "global_attention": bool(config["global_attention"]),
            }
        return init_module(
            GraphMetanet,
            int(w[0]) * int(w[1]),
            hidden=int(config["hidden"]),
            num_layers=int(config["num_layers"]),
            readout=config.get("readout", "global"),
            input_transform=config.get("input_transform", "none"),
            pool=config.get("pool", "meanmax"),
            probe_features=int(config.get("probes", 0)),
            input_norm=bool(config.get("input_norm", False)),
            seed=seed,
            **extra,
        )
    if kind == "probes":
        return init_module(
            ProbeNet,
            tuple(int(d) for d in config["input_shape"]),
            int(config["count"]),
            int(config["out_features"]),
            latent=int(config["latent"]),
            gen_width=int(config["gen_width"]),
            gen_depth=int(config["gen_depth"]),
            scale=float(config["scale"]),
            hidden=int(config["hidden"]),
            depth=int(config["depth"]),
            seed=seed,
        )
    return init_module(
        MLPRegressor,
        int(config["in_features"]),
        hidden=int(config["hidden"]),
        depth=int(config["depth"]),
        seed=seed,
    )
