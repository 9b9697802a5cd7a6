"""The vector-feature regressors' (``"statnn_mlp"``, ``"flat"``) training loop and padded
prediction. The training step is cached on the module's graphdef and optimizer
(`mlp_step`), the forward on the graphdef (`mlp_forward`): a second fit with the same
settings compiles nothing."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from metanets.baselines import MLPRegressor
from metanets.metrics import kendall_tau
from metanets.model_kinds import build_module, standardize
from metanets.training import fit_setup, make_fit_optimizer, run_fit

__all__ = ["fit_mlp", "mlp_forward", "mlp_predict", "mlp_rows", "mlp_step"]

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


def mlp_predict(model: MLPRegressor, x: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Predicted labels of the rows `x` (de-standardised with ``config["y_mean"]``,
    ``["y_std"]``), in padded chunks (`mlp_rows`)."""
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


_STEPS: dict[tuple, Any] = {}


def mlp_step(graphdef: Any, opt_key: tuple) -> Callable[..., Any]:
    """The jitted step ``(params, rest, opt_state, x, y) -> (params, opt_state, loss)``
    (MSE) of a regressor, cached on its graphdef and `opt_key`
    (`metanets.training.optimizer_key`)."""
    key = (graphdef, opt_key)
    if key not in _STEPS:
        tx = make_fit_optimizer(opt_key)

        def step(params, rest, opt_state, xb, yb):
            def loss_fn(p):
                pred = nnx.merge(graphdef, p, rest)(xb)[:, 0]
                return jnp.mean((pred - yb) ** 2)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        _STEPS[key] = jax.jit(step)
    return _STEPS[key]


def fit_mlp(
    kind: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: dict[str, Any],
    log: Callable[[str], None],
    checkpoint_dir: str | os.PathLike | None = None,
) -> tuple[MLPRegressor, dict[str, Any], list[dict[str, Any]]]:
    """Trains an `MLPRegressor` on standardised labels, keeping the epoch of the best
    validation tau; returns ``(model, config, history)`` (the config with the label
    standardisation and input width)."""
    y_mean, y_std = standardize(y_train)
    config = {**config, "y_mean": y_mean, "y_std": y_std, "in_features": int(x_train.shape[1])}
    model = build_module("statnn_mlp", config, seed=config["seed"])
    model.set_normalization(x_train.mean(0), x_train.std(0))
    setup = fit_setup(model, len(x_train), config)
    step_fn = mlp_step(setup.graphdef, setup.opt_key)
    yt = (y_train - y_mean) / y_std

    def step(params, opt_state, b):
        return step_fn(params, setup.rest, opt_state, x_train[b], yt[b])

    def val_tau(params):
        return kendall_tau(mlp_predict(setup.merged(params), x_val, config), y_val)

    best = run_fit(setup, step, val_tau, np.arange(len(x_train)), config, checkpoint_dir)
    log(f"{kind}: best validation tau {best[0]:.4f}")
    return setup.merged(best[1]), config, best[2]
