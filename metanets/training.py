"""The epochs of a metanet predictor's training: keep the best validation epoch, resume
from checkpoints bit for bit."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from hyper.checkpoint import CheckpointError, PopulationCheckpointer
from hyper.train import make_optimizer

__all__ = ["FitSetup", "fit_setup", "optimizer_key", "run_fit", "train_epochs"]


@dataclasses.dataclass
class FitSetup:
    """What a predictor's training loop starts from (`fit_setup`).

    Attributes:
      graphdef / params / rest: the module split as ``nnx.split(model, nnx.Param, ...)``.
      tx: the optimizer (Adam, warmup-cosine over every step of the fit).
      opt_key: the hyperparameters `tx` was built from (`optimizer_key`; hashable, so a
        compiled step can be cached on it).
      batch_size / steps_per_epoch: the batches of an epoch.
    """

    graphdef: Any
    params: Any
    rest: Any
    tx: Any
    opt_key: tuple
    batch_size: int
    steps_per_epoch: int

    def merged(self, params: Any) -> nnx.Module:
        """The module with these `params`."""
        return nnx.merge(self.graphdef, params, self.rest)


def optimizer_key(config: dict[str, Any], steps: int) -> tuple:
    """``(lr, steps, weight_decay)``: the optimizer `fit_setup` builds for `steps` steps."""
    return (float(config["lr"]), int(steps), float(config["weight_decay"]))


def make_fit_optimizer(opt_key: tuple) -> Any:
    """Adam with warmup-cosine decay over ``opt_key[1]`` steps (`optimizer_key`)."""
    lr, steps, weight_decay = opt_key
    return make_optimizer(
        "adam", lr, schedule="warmup_cosine", steps=steps, weight_decay=weight_decay
    )


def fit_setup(model: nnx.Module, n_train: int, config: dict[str, Any]) -> FitSetup:
    """The split module, optimizer and batches of a fit of `model` on `n_train` samples
    (``config``: ``batch_size``, ``epochs``, ``lr``, ``weight_decay``)."""
    bs = min(int(config["batch_size"]), int(n_train))
    steps_per_epoch = max(1, int(n_train) // bs)
    key = optimizer_key(config, steps_per_epoch * int(config["epochs"]))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return FitSetup(graphdef, params, rest, make_fit_optimizer(key), key, bs, steps_per_epoch)


def run_fit(
    setup: FitSetup,
    step: Callable[[Any, Any, np.ndarray], tuple[Any, Any, Any]],
    val_tau: Callable[[Any], float],
    train: np.ndarray,
    config: dict[str, Any],
    checkpoint_dir: str | os.PathLike | None,
) -> tuple[float, Any, list[dict[str, Any]]]:
    """`train_epochs` over the `train` indices (shuffled each epoch, cut into
    ``setup.batch_size`` batches): ``step(params, opt_state, batch) -> (params, opt_state,
    loss)`` for each batch, `val_tau(params)` at each evaluation. Returns ``(best_tau,
    best_params, history)``."""
    bs, steps = setup.batch_size, setup.steps_per_epoch

    def run_epoch(params, opt_state, order):
        losses = []
        for i in range(steps):
            params, opt_state, loss = step(params, opt_state, order[i * bs : (i + 1) * bs])
            losses.append(loss)
        return params, opt_state, float(np.mean(losses))

    train = np.asarray(train)
    return train_epochs(
        setup.params,
        setup.tx.init(setup.params),
        run_epoch,
        val_tau,
        lambda rng: rng.permutation(train),
        config,
        checkpoint_dir,
    )


def _leaves(tree: Any) -> dict[str, Any]:
    return {f"{i:05d}": v for i, v in enumerate(jax.tree.leaves(tree))}


def train_epochs(
    params: Any,
    opt_state: Any,
    run_epoch: Callable[[Any, Any, np.ndarray], tuple[Any, Any, float]],
    val_tau: Callable[[Any], float],
    order_of: Callable[[np.random.Generator], np.ndarray],
    config: dict[str, Any],
    checkpoint_dir: str | os.PathLike | None,
) -> tuple[float, Any, list[dict[str, Any]]]:
    """The epochs of an NNX predictor's training, keeping the parameters of the best
    validation tau. With `checkpoint_dir`, every evaluation is a checkpoint (parameters,
    optimizer state, best parameters, the data-order RNG, history), and a fit started again
    on the same directory continues from the last one: a run killed at any point finishes
    with the same weights as an uninterrupted one.

    Returns:
      ``(best_tau, best_params, history)``.
    """
    rng = np.random.default_rng(config["seed"])
    best_tau, best, history, start = -2.0, params, [], 0
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = PopulationCheckpointer(checkpoint_dir)
        last = ckpt.latest_step()
        if last is not None:
            abstract = {
                "params": _leaves(params),
                "opt": _leaves(opt_state),
                "best": _leaves(params),
            }
            arrays, meta = ckpt.restore(last, abstract)
            if meta.get("config") != json.loads(json.dumps(config)):
                ckpt.close()
                raise CheckpointError(
                    f"{os.path.abspath(checkpoint_dir)} holds checkpoints of another training "
                    "run (a different config); start with an empty directory"
                )
            tdef_p, tdef_o = jax.tree.structure(params), jax.tree.structure(opt_state)
            params = jax.tree.unflatten(tdef_p, list(arrays["params"].values()))
            opt_state = jax.tree.unflatten(tdef_o, list(arrays["opt"].values()))
            best = jax.tree.unflatten(tdef_p, list(arrays["best"].values()))
            rng.bit_generator.state = meta["rng"]
            best_tau, history, start = meta["best_tau"], meta["history"], last + 1
    try:
        for epoch in range(start, config["epochs"]):
            params, opt_state, loss = run_epoch(params, opt_state, order_of(rng))
            if epoch % config["eval_every"] == 0 or epoch == config["epochs"] - 1:
                tau = val_tau(params)
                history.append({"epoch": epoch, "train_loss": float(loss), "val_tau": tau})
                if tau > best_tau:
                    best_tau, best = tau, params
                if ckpt is not None:
                    ckpt.save(
                        epoch,
                        {
                            "params": _leaves(params),
                            "opt": _leaves(opt_state),
                            "best": _leaves(best),
                        },
                        meta={
                            "epoch": epoch,
                            "best_tau": best_tau,
                            "history": history,
                            "rng": rng.bit_generator.state,
                            "config": config,
                        },
                    )
    finally:
        if ckpt is not None:
            ckpt.close()
    return best_tau, best, history
