"""The epochs of a metanet predictor's training: keep the best validation epoch, resume
from checkpoints bit for bit."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from hyper.checkpoint import CheckpointError, PopulationCheckpointer

__all__ = ["train_epochs"]


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
