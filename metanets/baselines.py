"""Baselines for learning from weights: StatNN statistics and flat weight vectors.

- `statnn_features`: per tensor, mean, variance and the quantiles 0, .25, .5, .75, 1
  (Unterthiner et al. 2020; NFN's ``StatFeaturizer``). Tensors are grouped by kernel
  layer: the kernel, then the node-feature tensors of its output units (bias, norm
  scale, shift, running mean, running var; absent ones contribute their identity
  values). For zoos of several architectures the layers fill fixed slots: the hidden
  layers from the first slot on, the output layer in the last slot, missing slots zero
  with a presence flag of 0.
- `flat_features`: the whole parameter vector (`population.flatten`); one architecture.
- `MLPRegressor`: the MLP head used on either.
- `fit_gbm`: scikit-learn gradient-boosted trees on the statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hyper import population as population_lib
from hyper.compact import check_same_spec
from hyper.target import Params, Target
from metanets.graph import NODE_FEATURES, features, topology

__all__ = [
    "STATS",
    "MLPRegressor",
    "fit_gbm",
    "flat_features",
    "statnn_features",
    "tensor_stats",
]

STATS = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
_PER_LAYER = (1 + len(NODE_FEATURES)) * len(STATS) + 1  # 6 tensors x 7 stats + presence


def tensor_stats(x: Any) -> np.ndarray:
    """The 7 StatNN statistics of each row of `x` `[n, m]` -> `[n, 7]` (NumPy: no program
    to compile per tensor shape)."""
    x = np.asarray(x, np.float64)
    q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0], axis=1).T
    return np.concatenate([x.mean(1, keepdims=True), x.var(1, keepdims=True), q], axis=1)


def _layer_stats(kernel: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """kernel `[n, m]`, node features of the layer's units `[n, units, 5]` -> `[n, 42]`."""
    parts = [tensor_stats(kernel)] + [tensor_stats(nodes[:, :, j]) for j in range(nodes.shape[2])]
    return np.concatenate(parts, axis=1)


def num_layer_slots(targets: Sequence[Target]) -> int:
    """Slots needed for `targets`: the most kernel layers of any of them."""
    return max(len(topology(t).node_sets) - 1 for t in targets)


def statnn_features(target: Target, population: Params, slots: int | None = None) -> np.ndarray:
    """StatNN features `[n, slots * 43]` of a population (see the module docstring).

    Args:
      slots: layer slots (default: this target's kernel layers). Must be at least the
        number of kernel layers.
    """
    topo = topology(target)
    n_layers = len(topo.node_sets) - 1
    slots = n_layers if slots is None else int(slots)
    if slots < n_layers:
        raise ValueError(f"statnn_features: {target.name} has {n_layers} layers > {slots} slots")
    nodes = np.asarray(features(target, population)[0])
    kernels = sorted(target.select(roles=["kernel"]), key=lambda s: (s.layer, s.path))
    flat = population_lib.select(target, population, "*")
    n = nodes.shape[0]
    out = np.zeros((n, slots, _PER_LAYER), np.float32)
    for j, (k, (_, start, size, _)) in enumerate(zip(kernels, topo.node_sets[1:], strict=True)):
        kernel = np.asarray(flat[k.path], np.float32).reshape(n, -1)
        stats = _layer_stats(kernel, nodes[:, start : start + size])
        slot = slots - 1 if j == n_layers - 1 else j
        out[:, slot, :-1] = stats
        out[:, slot, -1] = 1.0
    return out.reshape(n, -1)


def flat_features(targets: Sequence[Target], populations: Sequence[Params]) -> np.ndarray:
    """All parameters as one vector per network `[n, P]`; every target must share one spec.

    Raises:
      ValueError: the targets differ (a flat vector needs one architecture).
    """
    for t in targets[1:]:
        try:
            check_same_spec(targets[0], t)
        except ValueError as e:
            raise ValueError(f"flat features need one architecture (homogeneous zoo): {e}") from e
    return np.concatenate(
        [
            np.asarray(population_lib.flatten(t, p))
            for t, p in zip(targets, populations, strict=True)
        ]
    )


class MLPRegressor(nnx.Module):
    """`in -> hidden x depth -> out` with GELU; inputs standardised by fixed statistics.

    Args:
      in_features: input width.
      mean / std: per-feature standardisation `[in_features]` (from the training set).
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden: int = 256,
        depth: int = 2,
        out_features: int = 1,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        rngs: nnx.Rngs,
    ):
        sizes = [in_features] + [hidden] * depth
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.out = nnx.Linear(sizes[-1], out_features, rngs=rngs)
        mean = np.zeros(in_features, np.float32) if mean is None else np.asarray(mean, np.float32)
        std = np.ones(in_features, np.float32) if std is None else np.asarray(std, np.float32)
        self.mean = nnx.Variable(jnp.asarray(mean))
        self.std = nnx.Variable(jnp.asarray(np.where(std > 1e-8, std, 1.0).astype(np.float32)))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = (x - self.mean[...][None, :]) / self.std[...][None, :]
        for layer in self.layers:
            x = jax.nn.gelu(layer(x))
        return self.out(x)


def fit_gbm(x: np.ndarray, y: np.ndarray, *, seed: int = 0):
    """Gradient-boosted trees (scikit-learn `HistGradientBoostingRegressor`) on features."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(
        max_iter=500, learning_rate=0.05, early_stopping=True, random_state=seed
    )
    return model.fit(np.asarray(x, np.float64), np.asarray(y, np.float64))
