"""Property prediction from weights: six model kinds, fitting, evaluation, saving.

Models (`fit`): ``"gmn"`` (`GraphMetanet` on `GraphBank` batches, PNA message passing),
``"gmn_t"`` (the same with the NG-T-style graph transformer layers of
`metanets.transformer`), ``"probes"`` (learned probes, `metanets.probegen`), ``"statnn_mlp"`` and
``"statnn_gbm"`` (StatNN statistics with an MLP head / gradient-boosted trees), ``"flat"``
(an MLP on the flat parameter vector; one architecture only). The NNX models keep
the parameters of the epoch with the best Kendall tau on a validation split carved, by
run, out of the training set (`metanets.training.train_epochs`); the trees use
scikit-learn's early stopping. Data: `metanets.datasets`; metrics: `metanets.metrics`.

This module is the public API (`fit`, `Predictor`, `evaluate`, saving); the model kinds and
their defaults live in `metanets.model_kinds`, the training loops in `metanets.gmn_fit`
(graph models), `metanets.mlp_fit` (vector-feature regressors) and `metanets.probegen`, all
on `metanets.training`'s shared loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from hyper.checkpoint import (
    PopulationCheckpointer,
    load_model,
    prepare_dir,
    read_model_metadata,
    save_model,
)
from hyper.errors import WeightspaceError
from metanets.augment import augment_dataset, canonicalize_dataset
from metanets.baselines import GBMTrees, fit_gbm, flat_features, num_layer_slots, statnn_features
from metanets.batching import GraphBank
from metanets.datasets import WeightDataset, split_by_run
from metanets.gmn_fit import fit_gmn, gmn_forward, gmn_predict, perturb_graphs
from metanets.metrics import kendall_tau, r2_score
from metanets.mlp_fit import fit_mlp, mlp_forward, mlp_predict, mlp_rows
from metanets.model_kinds import (
    COMMON,
    DEFAULTS,
    GRAPH_MODELS,
    MODELS,
    build_module,
    standardize,
)
from metanets.models import GraphMetanet
from metanets.probegen import fit_probe_net, probe_net_predict, response_shape
from metanets.probes import probe_inputs

__all__ = [
    "COMMON",
    "DEFAULTS",
    "GRAPH_MODELS",
    "MODELS",
    "Predictor",
    "build_gmn",
    "build_module",
    "evaluate",
    "fit",
    "gmn_forward",
    "gmn_probes",
    "kendall_tau",
    "load_predictor",
    "mlp_forward",
    "mlp_rows",
    "perturb_graphs",
    "r2_score",
    "save_predictor",
    "split_by_run",
    "vector_features",
]

# ---------------------------------------------------------------------------------------
# Predictors
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Predictor:
    """A fitted model.

    Attributes:
      kind: one of `MODELS`.
      model: the NNX module (`metanets.baselines.GBMTrees` for ``statnn_gbm``).
      config: JSON-able hyperparameters (enough to rebuild the module).
      history: per evaluation, ``{"epoch", "train_loss", "val_tau"}``.
      stats: what the fit measured (``train_samples``: the samples it trained on,
        augmented copies included; graph models: time, graphs seen, step compilations).
    """

    kind: str
    model: Any
    config: dict[str, Any]
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def predict(
        self,
        ds: WeightDataset,
        samples: Sequence[int] | None = None,
        *,
        mesh: jax.sharding.Mesh | None = None,
    ) -> np.ndarray:
        """Predicted labels `[len(samples)]` (default: every sample).

        `mesh`: graph models only: split every batch over this 1-D mesh
        (`metanets.batching.shard_graphs`); the predictions equal the one-device ones.
        """
        samples = np.arange(len(ds)) if samples is None else np.asarray(samples)
        if mesh is not None and self.kind not in GRAPH_MODELS:
            raise WeightspaceError(f"predict: mesh applies to the 'gmn' model, not {self.kind!r}")
        if self.config.get("canonicalize"):
            ds = canonicalize_dataset(ds)
        if self.kind in GRAPH_MODELS:
            bank = _gmn_bank(ds, self.config, tuple(self.config["window"]))
            graphdef, params, rest = nnx.split(self.model, nnx.Param, ...)
            return gmn_predict(graphdef, params, rest, bank, samples, self.config, mesh)
        if self.kind == "probes":
            _check_probe_shapes(ds, self.config)
            return probe_net_predict(self.model, ds, samples, self.config)
        x = vector_features(self.kind, ds, self.config)[samples]
        if self.kind == "statnn_gbm":
            return self.model.predict(x).astype(np.float32)
        return mlp_predict(self.model, x, self.config)


def _gmn_bank(
    ds: WeightDataset, config: dict[str, Any], window: Sequence[int] | None = None
) -> GraphBank:
    """The graphs of every sample of `ds` as the GMN reads them (probe features as
    `config` asks)."""
    return GraphBank(
        list(zip(ds.targets, ds.populations, strict=True)),
        window=window,
        probes=gmn_probes(ds, config),
    )


def build_gmn(
    ds: WeightDataset,
    *,
    window: Sequence[int] | None = None,
    seed: int = 0,
    kind: str = "gmn",
    **overrides: Any,
) -> tuple[GraphMetanet, GraphBank]:
    """The graph metanet (initial weights from `seed`) and the `GraphBank` of `ds` that
    ``fit(kind, ds, ..., **overrides)`` builds (`kind`: ``"gmn"`` or ``"gmn_t"``), e.g. to
    measure a training step or to write another loop. `window`: the common edge window
    (default: the zoo's largest kernel)."""
    unknown = set(overrides) - set(DEFAULTS[kind])
    if unknown:
        raise WeightspaceError(f"model {kind!r}: unknown hyperparameters {sorted(unknown)}")
    config = {**DEFAULTS[kind], **overrides}
    bank = _gmn_bank(ds, config, window)
    config["window"] = list(bank.window)
    return build_module(kind, config, seed=seed), bank


def gmn_probes(ds: WeightDataset, config: dict[str, Any]) -> np.ndarray | None:
    """The GMN's probe inputs: fixed (`probes.probe_inputs`, seed 0) or, with
    ``probe_source="learned"``, the learned ones stored in the config; None without
    probes."""
    k = int(config.get("probes", 0))
    if k <= 0:
        return None
    shapes = {t.input_shape for t in ds.targets}
    if len(shapes) != 1:
        raise WeightspaceError(f"probe features need one input shape across the zoo, got {shapes}")
    (shape,) = shapes
    fitted = config.setdefault("probe_input_shape", list(shape or ()))
    if tuple(fitted) != shape:
        raise WeightspaceError(
            f"this predictor's probes have input shape {tuple(fitted)}; the zoo's networks "
            f"take {shape}"
        )
    if config.get("probe_values") is not None:
        return np.asarray(config["probe_values"], np.float32).reshape(k, *shape)
    return probe_inputs(ds.targets[0], k, seed=0)


def _check_probe_shapes(ds: WeightDataset, config: dict[str, Any]) -> None:
    shape, out = response_shape(ds.targets)
    if list(shape) != list(config["input_shape"]) or out != config["out_features"]:
        raise WeightspaceError(
            f"this 'probes' predictor reads networks of input shape {config['input_shape']} "
            f"and {config['out_features']} outputs; the zoo's have {list(shape)} and {out}"
        )


def _fit_probes(ds, tr, val, config, log, checkpoint_dir) -> Predictor:
    shape, out = response_shape(ds.targets)
    y_mean, y_std = standardize(ds.y[tr])
    config = {**config, "input_shape": list(shape), "out_features": out}
    config.update(y_mean=y_mean, y_std=y_std)
    model = build_module("probes", config, seed=config["seed"])
    model, history, stats = fit_probe_net(model, ds, tr, val, config, log, checkpoint_dir)
    return Predictor("probes", model, config, history, stats)


def _learned_probe_values(ds, tr, val, config, log) -> list[float]:
    """``probe_source="learned"``: fits a ``"probes"`` model on the GMN's own training
    runs (`probe_epochs` epochs, the GMN's seed) and returns its generated probes (flat)."""
    over = {"count": int(config["probes"]), "epochs": int(config["probe_epochs"])}
    pcfg = {**DEFAULTS["probes"], **over, "seed": config["seed"], "task": ds.task}
    pred = _fit_probes(ds, tr, val, pcfg, log, None)
    return np.asarray(pred.model.generator()).ravel().tolist()


def vector_features(kind: str, ds: WeightDataset, config: dict[str, Any]) -> np.ndarray:
    """The input rows `[M, F]` a vector-feature model (``"flat"``, ``"statnn_mlp"``,
    ``"statnn_gbm"``) with this `config` reads, one per sample of `ds`.

    Raises:
      WeightspaceError: ``"flat"`` on several architectures, or more layers than the StatNN
        model was fit on.
    """
    if kind == "flat":
        if not ds.homogeneous:
            raise WeightspaceError("model 'flat' needs a homogeneous zoo (one architecture)")
        return flat_features(ds.targets, ds.populations)[_flat_order(ds)]
    slots = config["slots"]
    need = num_layer_slots(ds.targets)
    if need > slots:
        raise WeightspaceError(
            f"the networks have {need} layers; this StatNN model was fit on {slots}"
        )
    return ds.per_sample(lambda g: statnn_features(ds.targets[g], ds.populations[g], slots))


def _flat_order(ds: WeightDataset) -> np.ndarray:
    starts = np.cumsum([0] + [int(jax.tree.leaves(p)[0].shape[0]) for p in ds.populations])
    return starts[ds.group] + ds.member


def fit(
    kind: str,
    ds: WeightDataset,
    train: Sequence[int],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    mesh: jax.sharding.Mesh | None = None,
    **overrides: Any,
) -> Predictor:
    """Fits one model on the `train` samples of `ds`.

    A `val_fraction` of the training *runs* is held out to pick the best epoch (MLP
    models) or to stop boosting (trees).

    Args:
      kind: one of `MODELS`.
      checkpoint_dir: checkpoint every evaluation there (NNX models); a fit started again
        with the same data, model and hyperparameters continues from the last checkpoint
        and ends with the same weights as an uninterrupted fit.
      mesh: graph models only: a 1-D mesh (`hyper.sharding.targets_mesh`) to split every
        graph batch over (`metanets.batching.shard_graphs`; the model is replicated).
      overrides: hyperparameters replacing `DEFAULTS[kind]` (e.g. ``epochs=5``), among
        them the data options of every model (`COMMON`): ``canonicalize=True`` (fit and
        predict on canonical scale/sign forms, `metanets.augment.canonicalize_dataset`)
        and ``augment=k`` (k random symmetric equivalents of each training sample,
        `metanets.augment.augment_dataset`; validation runs are not augmented).
    """
    if kind not in MODELS:
        raise WeightspaceError(f"unknown model {kind!r}; expected one of {MODELS}")
    unknown = set(overrides) - set(DEFAULTS[kind])
    if unknown:
        raise WeightspaceError(f"model {kind!r}: unknown hyperparameters {sorted(unknown)}")
    log = log or (lambda msg: None)
    config = {**DEFAULTS[kind], **overrides, "seed": int(seed), "task": ds.task}
    train = np.asarray(train)
    tr_rel, val_rel = split_by_run(ds.run[train], val_fraction, seed + 1)
    tr, val = train[tr_rel], train[val_rel]
    if mesh is not None and kind not in GRAPH_MODELS:
        raise WeightspaceError(f"fit: mesh applies to the 'gmn' model, not {kind!r}")
    if int(config["augment"]) < 0:
        raise WeightspaceError(f"augment must be >= 0 copies, got {config['augment']}")
    if config["canonicalize"]:
        ds = canonicalize_dataset(ds)
    if int(config["augment"]) > 0:  # random equivalents of the training runs only
        ds, extra = augment_dataset(
            ds, jax.random.key(int(seed)), copies=int(config["augment"]), samples=tr
        )
        tr = np.concatenate([tr, extra])
        train = np.concatenate([train, extra])
    if kind in GRAPH_MODELS:
        if config.get("probe_source", "fixed") not in ("fixed", "learned"):
            raise WeightspaceError(
                f"probe_source must be 'fixed' or 'learned', got {config['probe_source']!r}"
            )
        if config.get("probe_source") == "learned" and int(config.get("probes", 0)) > 0:
            config["probe_values"] = _learned_probe_values(ds, tr, val, config, log)
        bank = _gmn_bank(ds, config)
        model, config, history, stats = fit_gmn(
            kind, bank, ds.y, tr, val, config, log, checkpoint_dir, mesh
        )
        return Predictor(kind, model, config, history, {**stats, "train_samples": len(tr)})
    if kind == "probes":
        pred = _fit_probes(ds, tr, val, config, log, checkpoint_dir)
        pred.stats["train_samples"] = len(tr)
        return pred
    if kind == "flat":
        config["homogeneous_spec"] = [s.path for s in ds.targets[0].spec]
    else:
        config["slots"] = num_layer_slots(ds.targets)
    x = vector_features(kind, ds, config)
    if kind == "statnn_gbm":
        model = fit_gbm(x[train], ds.y[train], seed=seed)
        return Predictor(kind, model, config, stats={"train_samples": len(train)})
    model, config, history = fit_mlp(
        kind, x[tr], ds.y[tr], x[val], ds.y[val], config, log, checkpoint_dir
    )
    return Predictor(kind, model, config, history, {"train_samples": len(tr)})


def evaluate(pred: Predictor, ds: WeightDataset, samples: Sequence[int] | None = None):
    """``{"tau", "r2", "n"}`` of a predictor on `samples` of `ds` (default: all)."""
    samples = np.arange(len(ds)) if samples is None else np.asarray(samples)
    p = pred.predict(ds, samples)
    y = ds.y[samples]
    return {"tau": kendall_tau(p, y), "r2": r2_score(p, y), "n": int(len(samples))}


# ---------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------

_FORMAT = "weightspace-metanet-predictor"


def save_predictor(pred: Predictor, directory: str | os.PathLike, *, overwrite: bool = False):
    """Saves a predictor (Orbax arrays + JSON config; the trees of ``statnn_gbm`` as
    `GBMTrees` arrays, never pickled); returns the absolute path.

    The layout is `hyper.checkpoint.save_model`'s (one step, item ``state``); a
    ``statnn_gbm`` predictor stores its tree arrays as that item, with their shapes and
    dtypes in the metadata (``tree_arrays``).

    Raises:
      CheckpointError: a non-empty directory without `overwrite`.
    """
    meta = {
        "kind": pred.kind,
        "config": json.loads(json.dumps(pred.config)),
        "history": pred.history,
    }
    if pred.kind != "statnn_gbm":
        return save_model(directory, pred.model, format=_FORMAT, metadata=meta, overwrite=overwrite)
    state = pred.model.to_arrays()
    meta["tree_arrays"] = {k: [list(v.shape), str(v.dtype)] for k, v in state.items()}
    directory = prepare_dir(directory, overwrite=overwrite)
    with PopulationCheckpointer(directory) as ckpt:
        ckpt.save(0, {"state": state}, meta={"format": _FORMAT, **meta})
    return directory


def load_predictor(directory: str | os.PathLike) -> Predictor:
    """Loads what `save_predictor` wrote.

    Raises:
      CheckpointError: no checkpoint, or one that holds no metanet predictor.
    """
    what = "metanet predictor"
    meta = read_model_metadata(directory, format=_FORMAT, what=what)
    if meta["kind"] != "statnn_gbm":
        build = lambda m: build_module(m["kind"], m["config"])  # noqa: E731
        model, meta = load_model(directory, build, format=_FORMAT, what=what)
        return Predictor(meta["kind"], model, meta["config"], meta.get("history", []))
    abstract = {
        k: jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
        for k, (shape, dtype) in meta["tree_arrays"].items()
    }
    with PopulationCheckpointer(directory, read_only=True) as ckpt:
        arrays, _ = ckpt.restore(ckpt.steps()[-1], {"state": abstract})
    model = GBMTrees.from_arrays(arrays["state"])
    return Predictor(meta["kind"], model, meta["config"], meta.get("history", []))
