"""Property prediction from weights: six model kinds, fitting, evaluation, saving.

Models (`fit`): ``"gmn"`` (`GraphMetanet` on `GraphBank` batches, PNA message passing),
``"gmn_t"`` (the same with the NG-T-style graph transformer layers of
`metanets.transformer`), ``"probes"`` (learned probes, `metanets.probegen`), ``"statnn_mlp"`` and
``"statnn_gbm"`` (StatNN statistics with an MLP head / gradient-boosted trees), ``"flat"``
(an MLP on the flat parameter vector; one architecture only). The NNX models keep
the parameters of the epoch with the best Kendall tau on a validation split carved, by
run, out of the training set (`metanets.training.train_epochs`); the trees use
scikit-learn's early stopping. Data: `metanets.datasets`; metrics: `metanets.metrics`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
from flax import nnx

from hyper import sharding
from hyper.checkpoint import (
    PopulationCheckpointer,
    load_model,
    prepare_dir,
    read_model_metadata,
    save_model,
)
from hyper.errors import WeightspaceError
from hyper.init_programs import init_module
from hyper.train import make_optimizer
from metanets.baselines import (
    GBMTrees,
    MLPRegressor,
    fit_gbm,
    flat_features,
    num_layer_slots,
    statnn_features,
)
from metanets.batching import GraphBank
from metanets.datasets import WeightDataset, split_by_run
from metanets.graph_topology import EDGE_WEIGHT, NODE_DEFAULTS
from metanets.metrics import kendall_tau, r2_score
from metanets.models import GraphMetanet
from metanets.probegen import ProbeNet, fit_probe_net, probe_net_predict, response_shape
from metanets.probes import probe_inputs
from metanets.training import train_epochs

__all__ = [
    "DEFAULTS",
    "MODELS",
    "Predictor",
    "build_gmn",
    "build_module",
    "evaluate",
    "fit",
    "gmn_forward",
    "gmn_probes",
    "load_predictor",
    "mlp_forward",
    "mlp_rows",
    "perturb_graphs",
    "save_predictor",
    "vector_features",
]

MODELS = ("gmn", "gmn_t", "probes", "statnn_mlp", "statnn_gbm", "flat")
GRAPH_MODELS = ("gmn", "gmn_t")
"""The models that read `GraphBank` batches (and accept a `mesh`)."""

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
        if self.kind in GRAPH_MODELS:
            bank = _gmn_bank(ds, self.config, tuple(self.config["window"]))
            return _gmn_predict(self.model, bank, samples, self.config, mesh)
        if self.kind == "probes":
            _check_probe_shapes(ds, self.config)
            return probe_net_predict(self.model, ds, samples, self.config)
        x = vector_features(self.kind, ds, self.config)[samples]
        if self.kind == "statnn_gbm":
            return self.model.predict(x).astype(np.float32)
        return _mlp_predict(self.model, x, self.config)


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
    y_mean, y_std = _standardize(ds.y[tr])
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


def _standardize(y: np.ndarray) -> tuple[float, float]:
    return float(y.mean()), float(max(y.std(), 1e-6))


_MLP_ROWS = 4096  # rows per compiled call of a vector-feature regressor


@functools.partial(jax.jit, static_argnums=0)
def mlp_forward(graphdef: Any, state: Any, x: jax.Array) -> jax.Array:
    """A vector-feature regressor's predictions `[rows]` on `x` `[rows, F]` (jitted once
    per graphdef and row count; see `mlp_rows`)."""
    return nnx.merge(graphdef, state)(x)[:, 0]


def mlp_rows(n: int) -> int:
    """Rows a call of `n` samples is padded to: a power of two (at least 64, at most
    4096), so every epoch's validation and any later prediction share a few programs."""
    return min(_MLP_ROWS, max(64, 1 << max(0, n - 1).bit_length()))


def _mlp_predict(model: MLPRegressor, x: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    if len(x) == 0:
        return np.zeros((0,), np.float32)
    graphdef, state = nnx.split(model)
    out = []
    for i in range(0, len(x), _MLP_ROWS):
        part = np.asarray(x[i : i + _MLP_ROWS], np.float32)
        padded = np.zeros((mlp_rows(len(part)), *part.shape[1:]), np.float32)
        padded[: len(part)] = part
        out.append(np.asarray(mlp_forward(graphdef, state, jnp.asarray(padded)))[: len(part)])
    return np.concatenate(out) * config["y_std"] + config["y_mean"]


def _fit_mlp(
    kind: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: dict[str, Any],
    log: Callable[[str], None],
    checkpoint_dir: str | os.PathLike | None = None,
) -> Predictor:
    y_mean, y_std = _standardize(y_train)
    config = {**config, "y_mean": y_mean, "y_std": y_std, "in_features": int(x_train.shape[1])}
    mean, std = x_train.mean(0), x_train.std(0)
    model = build_module("statnn_mlp", config, seed=config["seed"])
    model.set_normalization(mean, std)
    bs = min(config["batch_size"], len(x_train))
    steps_per_epoch = max(1, len(x_train) // bs)
    tx = make_optimizer(
        "adam",
        config["lr"],
        schedule="warmup_cosine",
        steps=steps_per_epoch * config["epochs"],
        weight_decay=config["weight_decay"],
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)
    yt = (y_train - y_mean) / y_std

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss_fn(p):
            pred = nnx.merge(graphdef, p, rest)(xb)[:, 0]
            return jnp.mean((pred - yb) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def run_epoch(params, opt_state, order):
        losses = []
        for i in range(steps_per_epoch):
            b = order[i * bs : (i + 1) * bs]
            params, opt_state, loss = step(params, opt_state, x_train[b], yt[b])
            losses.append(loss)
        return params, opt_state, float(np.mean(losses))

    def val_tau(params):
        return kendall_tau(_mlp_predict(nnx.merge(graphdef, params, rest), x_val, config), y_val)

    best = train_epochs(
        params,
        opt_state,
        run_epoch,
        val_tau,
        lambda rng: rng.permutation(len(x_train)),
        config,
        checkpoint_dir,
    )
    log(f"{kind}: best validation tau {best[0]:.4f}")
    return Predictor(kind, nnx.merge(graphdef, best[1], rest), config, best[2])


def perturb_graphs(graphs: jraph.GraphsTuple, key: jax.Array, sigma: float) -> jraph.GraphsTuple:
    """Training augmentation: every weight times ``1 + sigma * N(0, 1)``, every node
    parameter's offset from its identity value (`NODE_FEATURES` defaults) likewise.

    Multiplicative, so the zero entries of a kernel window (smaller kernels, dense
    weights) stay zero and absent node parameters keep their identity values; residual
    (identity) edges are not parameters and are left as they are. Noise is drawn per
    entry, so it commutes with hidden-unit permutations in distribution. Probe features
    (``nodes["probe"]``) are left as computed from the unperturbed network.
    """
    kw, kx = jax.random.split(key)
    w, x = graphs.edges["w"], graphs.nodes["x"]
    is_weight = (graphs.edges["type"] == EDGE_WEIGHT)[:, None]
    w = w * jnp.where(is_weight, 1.0 + sigma * jax.random.normal(kw, w.shape, w.dtype), 1.0)
    d = jnp.asarray(NODE_DEFAULTS, x.dtype)[None, :]
    x = d + (x - d) * (1.0 + sigma * jax.random.normal(kx, x.shape, x.dtype))
    return graphs._replace(nodes={**graphs.nodes, "x": x}, edges={**graphs.edges, "w": w})


def _gmn_predict(
    model: GraphMetanet,
    bank: GraphBank,
    samples: np.ndarray,
    config: dict[str, Any],
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    graphdef, state = nnx.split(model)
    fn = gmn_forward(graphdef)
    bs = config["batch_size"]
    if mesh is not None:
        state = sharding.put(state, sharding.replicated(mesh))
    out = []
    for i in range(0, len(samples), bs):
        # full: one shape (one compiled forward) whatever the number of samples asked for
        g = bank.batch(samples[i : i + bs], batch_size=bs, mesh=mesh, full=True)
        y, real = sharding.to_host((fn(state, g), g.globals["mask"]))
        out.append(y[real])
    return np.concatenate(out) * config["y_std"] + config["y_mean"]


_FORWARDS: dict[Any, Any] = {}


def gmn_forward(graphdef: Any) -> Callable[[Any, jraph.GraphsTuple], jax.Array]:
    """The jitted forward ``(state, graphs) -> [graphs]`` of a `GraphMetanet` predictor
    (one per graphdef, so every prediction of a model reuses its compiled programs)."""
    if graphdef not in _FORWARDS:
        _FORWARDS[graphdef] = jax.jit(lambda s, g: nnx.merge(graphdef, s)(g)[:, 0])
    return _FORWARDS[graphdef]


def _fit_gmn(
    kind: str,
    bank: GraphBank,
    y: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    config: dict[str, Any],
    log: Callable[[str], None],
    checkpoint_dir: str | os.PathLike | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Predictor:
    y_mean, y_std = _standardize(y[train])
    config = {**config, "y_mean": y_mean, "y_std": y_std, "window": list(bank.window)}
    model = build_module(kind, config, seed=config["seed"])
    bs = min(config["batch_size"], len(train))
    steps_per_epoch = max(1, len(train) // bs)
    tx = make_optimizer(
        "adam",
        config["lr"],
        schedule="warmup_cosine",
        steps=steps_per_epoch * config["epochs"],
        weight_decay=config["weight_decay"],
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if mesh is not None:
        params, rest = sharding.put((params, rest), sharding.replicated(mesh))
    opt_state = tx.init(params)
    yt = ((y - y_mean) / y_std).astype(np.float32)

    traces = [0]
    noise = float(config.get("noise", 0.0))
    noise_key = jax.random.key(config["seed"])

    @jax.jit
    def step(params, opt_state, graphs):
        traces[0] += 1  # runs once per compilation (per shape bucket)
        mask, yb = graphs.globals["mask"], graphs.globals["y"]
        if noise > 0.0:
            # The key follows the optimizer's step count, so a resumed fit draws the
            # same noise as an uninterrupted one.
            count = optax.tree_utils.tree_get_all_with_path(opt_state, "count")[0][1]
            graphs = perturb_graphs(graphs, jax.random.fold_in(noise_key, count), noise)

        def loss_fn(p):
            pred = nnx.merge(graphdef, p, rest)(graphs)[:, 0]
            return jnp.sum(jnp.where(mask, (pred - yb) ** 2, 0.0)) / jnp.sum(mask)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    seen = [0]

    def run_epoch(params, opt_state, order):
        losses = []
        for i in range(steps_per_epoch):
            b = order[i * bs : (i + 1) * bs]
            # One part per device when sharded; labels travel as per-graph globals.
            g = bank.batch(b, batch_size=bs, mesh=mesh, per_graph={"y": yt[b]})
            params, opt_state, loss = step(params, opt_state, g)
            losses.append(loss)
            seen[0] += len(b)
        return params, opt_state, float(np.mean(losses))

    def val_tau(params):
        tau = kendall_tau(
            _gmn_predict(nnx.merge(graphdef, params, rest), bank, val, config, mesh), y[val]
        )
        log(f"{kind}: val tau {tau:.4f} after {time.perf_counter() - t0:.1f} s")
        return tau

    t0 = time.perf_counter()
    best = train_epochs(
        params,
        opt_state,
        run_epoch,
        val_tau,
        lambda rng: rng.permutation(train),
        config,
        checkpoint_dir,
    )
    seconds = time.perf_counter() - t0
    stats = {
        "train_seconds": seconds,
        "train_graphs_seen": seen[0],
        "train_compilations": traces[0],
        "best_val_tau": best[0],
    }
    return Predictor(kind, nnx.merge(graphdef, best[1], rest), config, best[2], stats)


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
    "flat": {
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
# the graph transformer: the PNA model's settings plus its attention heads and global token
DEFAULTS["gmn_t"] = {**DEFAULTS["gmn"], "heads": 4, "global_attention": True}
"""Default hyperparameters per model (override any with `fit(..., **overrides)`)."""


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
      overrides: hyperparameters replacing `DEFAULTS[kind]` (e.g. ``epochs=5``).
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
    if kind in GRAPH_MODELS:
        if config.get("probe_source", "fixed") not in ("fixed", "learned"):
            raise WeightspaceError(
                f"probe_source must be 'fixed' or 'learned', got {config['probe_source']!r}"
            )
        if config.get("probe_source") == "learned" and int(config.get("probes", 0)) > 0:
            config["probe_values"] = _learned_probe_values(ds, tr, val, config, log)
        bank = _gmn_bank(ds, config)
        return _fit_gmn(kind, bank, ds.y, tr, val, config, log, checkpoint_dir, mesh)
    if kind == "probes":
        return _fit_probes(ds, tr, val, config, log, checkpoint_dir)
    if kind == "flat":
        config["homogeneous_spec"] = [s.path for s in ds.targets[0].spec]
    else:
        config["slots"] = num_layer_slots(ds.targets)
    x = vector_features(kind, ds, config)
    if kind == "statnn_gbm":
        model = fit_gbm(x[train], ds.y[train], seed=seed)
        return Predictor(kind, model, config)
    return _fit_mlp(kind, x[tr], ds.y[tr], x[val], ds.y[val], config, log, checkpoint_dir)


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
