"""The graph metanets' (``"gmn"``, ``"gmn_t"``) training loop and batched prediction.

Compiled programs are cached on what they depend on, never rebuilt per call: the training
step on the module's graphdef, optimizer and noise settings (`gmn_step`), the forward on the
graphdef (`gmn_forward`). Nothing is closed over as a constant (the non-parameter state
travels as an argument), so an epoch, a validation and a later prediction reuse the programs
of the first, and a second fit with the same settings compiles nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
from flax import nnx

from hyper import sharding
from metanets.batching import GraphBank, bucket_size
from metanets.graph_topology import EDGE_WEIGHT, NODE_DEFAULTS
from metanets.metrics import kendall_tau
from metanets.model_kinds import build_module, standardize
from metanets.models import input_stats
from metanets.training import fit_setup, make_fit_optimizer, run_fit

__all__ = [
    "PREDICT_MIN_GRAPHS",
    "fit_gmn",
    "gmn_forward",
    "gmn_predict",
    "gmn_step",
    "perturb_graphs",
    "training_input_stats",
    "step_traces",
]

PREDICT_MIN_GRAPHS = 16
"""Graphs per prediction batch at least: a call of `n` samples runs batches of
``min(batch_size, bucket_size(n, PREDICT_MIN_GRAPHS))`` graphs (a few shapes, little
padding)."""


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


_FORWARDS: dict[Any, Any] = {}
_STEPS: dict[tuple, Any] = {}
_TRACES: dict[tuple, int] = {}


def gmn_forward(graphdef: Any) -> Callable[..., jax.Array]:
    """The jitted forward ``(params, rest, graphs) -> [graphs]`` of a `GraphMetanet`
    split as ``nnx.split(model, nnx.Param, ...)`` (one per graphdef, so every validation
    and prediction of a model reuses its compiled programs)."""
    if graphdef not in _FORWARDS:
        _FORWARDS[graphdef] = jax.jit(lambda p, r, g: nnx.merge(graphdef, p, r)(g)[:, 0])
    return _FORWARDS[graphdef]


def gmn_step(graphdef: Any, opt_key: tuple, noise: float, seed: int) -> Callable[..., Any]:
    """The jitted training step ``(params, rest, opt_state, graphs) -> (params,
    opt_state, loss)`` (masked MSE on ``graphs.globals["y"]``), cached on its arguments:
    `opt_key` (`metanets.training.optimizer_key`), the weight `noise` (`perturb_graphs`,
    keyed by `seed` and the optimizer's step count) and the graphdef."""
    key = (graphdef, opt_key, float(noise), int(seed))
    if key in _STEPS:
        return _STEPS[key]
    tx = make_fit_optimizer(opt_key)
    noise_key = jax.random.key(int(seed)) if noise > 0.0 else None

    def step(params, rest, opt_state, graphs):
        _TRACES[key] = _TRACES.get(key, 0) + 1  # runs once per trace (per shape bucket)
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

    _STEPS[key] = jax.jit(step)
    return _STEPS[key]


def step_traces() -> int:
    """How many times any `gmn_step` program has been traced in this process."""
    return sum(_TRACES.values())


def gmn_predict(
    graphdef: Any,
    params: Any,
    rest: Any,
    bank: GraphBank,
    samples: np.ndarray,
    config: dict[str, Any],
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """Predicted labels of `samples` of `bank` by the model ``(graphdef, params, rest)``
    (``nnx.split(model, nnx.Param, ...)``), in batches of at most ``config["batch_size"]``
    graphs padded as full batches (`GraphBank.batch`'s ``full``): one compiled forward per
    power-of-two batch size (`PREDICT_MIN_GRAPHS`)."""
    samples = np.asarray(samples)
    if samples.size == 0:
        return np.zeros((0,), np.float32)
    fn = gmn_forward(graphdef)
    bs = min(int(config["batch_size"]), bucket_size(len(samples), PREDICT_MIN_GRAPHS))
    if mesh is not None:
        params, rest = sharding.put((params, rest), sharding.replicated(mesh))
    out = []
    for i in range(0, len(samples), bs):
        g = bank.batch(samples[i : i + bs], batch_size=bs, mesh=mesh, full=True)
        y, real = sharding.to_host((fn(params, rest, g), g.globals["mask"]))
        out.append(y[real])
    return np.concatenate(out) * config["y_std"] + config["y_mean"]


INPUT_STATS_SAMPLES = 512
"""Training graphs (at most; evenly spaced) that `input_norm`'s statistics are taken from."""


def training_input_stats(
    module: nnx.Module, bank: GraphBank, train: np.ndarray, bs: int
) -> dict[str, np.ndarray]:
    """`models.input_stats` of up to `INPUT_STATS_SAMPLES` of the `train` graphs."""
    train = np.asarray(train)
    pick = train[np.linspace(0, len(train) - 1, min(len(train), INPUT_STATS_SAMPLES)).astype(int)]
    batches = (bank.batch(pick[i : i + bs], batch_size=bs) for i in range(0, len(pick), bs))
    return input_stats(batches, module.max_layers, module.edge_features, module.input_transform)


def fit_gmn(
    kind: str,
    bank: GraphBank,
    y: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    config: dict[str, Any],
    log: Callable[[str], None],
    checkpoint_dir: str | os.PathLike | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[nnx.Module, dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Trains graph metanet `kind` on the `train` samples of `bank` (labels `y`, all
    samples), keeping the epoch of the best validation tau on `val`; returns ``(model,
    config, history, stats)`` (the config with the label standardisation and window)."""
    y_mean, y_std = standardize(y[train])
    config = {**config, "y_mean": y_mean, "y_std": y_std, "window": list(bank.window)}
    module = build_module(kind, config, seed=config["seed"])
    if config.get("input_norm"):
        module.set_input_stats(training_input_stats(module, bank, train, int(config["batch_size"])))
    setup = fit_setup(module, len(train), config)
    if mesh is not None:
        setup.params, setup.rest = sharding.put(
            (setup.params, setup.rest), sharding.replicated(mesh)
        )
    yt = ((y - y_mean) / y_std).astype(np.float32)
    step_fn = gmn_step(
        setup.graphdef, setup.opt_key, float(config.get("noise", 0.0)), config["seed"]
    )
    traces0, seen = step_traces(), [0]
    bs, rest = setup.batch_size, setup.rest

    def step(params, opt_state, b):
        # One part per device when sharded; labels travel as per-graph globals.
        g = bank.batch(b, batch_size=bs, mesh=mesh, per_graph={"y": yt[b]})
        seen[0] += len(b)
        return step_fn(params, rest, opt_state, g)

    def val_tau(params):
        pred = gmn_predict(setup.graphdef, params, rest, bank, val, config, mesh)
        tau = kendall_tau(pred, y[val])
        log(f"{kind}: val tau {tau:.4f} after {time.perf_counter() - t0:.1f} s")
        return tau

    t0 = time.perf_counter()
    best = run_fit(setup, step, val_tau, train, config, checkpoint_dir)
    stats = {
        "train_seconds": time.perf_counter() - t0,
        "train_graphs_seen": seen[0],
        "train_compilations": step_traces() - traces0,
        "best_val_tau": best[0],
    }
    return setup.merged(best[1]), config, best[2], stats
