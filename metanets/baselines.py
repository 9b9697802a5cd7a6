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
- `fit_gbm`: scikit-learn gradient-boosted trees on the statistics, kept as `GBMTrees`
  (arrays; predicts exactly as scikit-learn and saves without pickling).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hyper import population as population_lib
from hyper.errors import WeightspaceError
from hyper.target import Params, Target, check_same_spec
from metanets.graph import features
from metanets.graph_topology import NODE_FEATURES, topology

__all__ = [
    "STATS",
    "GBMTrees",
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
        raise WeightspaceError(
            f"statnn_features: {target.name} has {n_layers} layers > {slots} slots"
        )
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
      WeightspaceError: the targets differ (a flat vector needs one architecture).
    """
    for t in targets[1:]:
        try:
            check_same_spec(targets[0], t)
        except ValueError as e:
            raise WeightspaceError(
                f"flat features need one architecture (homogeneous zoo): {e}"
            ) from e
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
        self.mean = nnx.Variable(jnp.zeros((in_features,), jnp.float32))
        self.std = nnx.Variable(jnp.ones((in_features,), jnp.float32))
        self.set_normalization(mean, std)

    def set_normalization(self, mean: np.ndarray | None, std: np.ndarray | None) -> None:
        """Sets the per-feature standardisation `[in_features]` (None: 0 and 1; a std
        below 1e-8 counts as 1)."""
        n = self.mean[...].shape[0]
        mean = np.zeros(n, np.float32) if mean is None else np.asarray(mean, np.float32)
        std = np.ones(n, np.float32) if std is None else np.asarray(std, np.float32)
        if mean.shape != (n,) or std.shape != (n,):
            raise WeightspaceError(
                f"MLPRegressor: mean and std must have shape ({n},), got {mean.shape}, {std.shape}"
            )
        self.mean[...] = jnp.asarray(mean)
        self.std[...] = jnp.asarray(np.where(std > 1e-8, std, 1.0).astype(np.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = (x - self.mean[...][None, :]) / self.std[...][None, :]
        for layer in self.layers:
            x = jax.nn.gelu(layer(x))
        return self.out(x)


def fit_gbm(x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> GBMTrees:
    """Gradient-boosted trees (scikit-learn `HistGradientBoostingRegressor`) on features,
    returned as `GBMTrees` (plain arrays, saveable without pickling)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(
        max_iter=500, learning_rate=0.05, early_stopping=True, random_state=seed
    )
    model.fit(np.asarray(x, np.float64), np.asarray(y, np.float64))
    return GBMTrees.from_sklearn(model)


@dataclasses.dataclass(frozen=True)
class GBMTrees:
    """A fitted regression forest as arrays: what a `HistGradientBoostingRegressor`
    predicts, evaluated in NumPy, and stored as plain arrays (`to_arrays` /
    `from_arrays`) so a predictor saves without pickling.

    Every tree is padded to the largest node count; node 0 is each tree's root; a leaf
    points to itself. `predict` walks all trees at once and adds their leaf values to the
    baseline in iteration order, as scikit-learn does, so the two agree exactly.

    Attributes (`[trees, nodes]` unless noted): feature, threshold (float64; a sample goes
    left when ``x[feature] <= threshold``), missing_left (where NaN goes), left, right,
    is_leaf, value (float64, learning rate included); baseline (float); depth (int).
    """

    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    is_leaf: np.ndarray
    value: np.ndarray
    baseline: float
    depth: int

    _FIELDS = ("feature", "threshold", "missing_left", "left", "right", "is_leaf", "value")

    @classmethod
    def from_sklearn(cls, model: Any) -> GBMTrees:
        """Raises WeightspaceError for a model this form does not cover (categorical splits,
        several trees per iteration, a loss with a non-identity link)."""
        from sklearn._loss.link import IdentityLink

        trees = [t for it in model._predictors for t in it]
        if any(len(it) != 1 for it in model._predictors):
            raise WeightspaceError("GBMTrees: one tree per iteration (regression) only")
        if not isinstance(model._loss.link, IdentityLink):
            raise WeightspaceError("GBMTrees: losses with an identity link only")
        if any(np.any(t.nodes["is_categorical"]) for t in trees):
            raise WeightspaceError("GBMTrees: categorical splits are not supported")
        k = max(len(t.nodes) for t in trees)
        idx = np.arange(k)

        def pad(field, dtype, fill):
            out = np.full((len(trees), k), fill, dtype)
            for i, t in enumerate(trees):
                out[i, : len(t.nodes)] = t.nodes[field]
            return out

        is_leaf = pad("is_leaf", bool, True)
        left = np.where(is_leaf, idx, pad("left", np.int32, 0)).astype(np.int32)
        right = np.where(is_leaf, idx, pad("right", np.int32, 0)).astype(np.int32)
        return cls(
            feature=np.where(is_leaf, 0, pad("feature_idx", np.int32, 0)).astype(np.int32),
            threshold=pad("num_threshold", np.float64, 0.0),
            missing_left=pad("missing_go_to_left", bool, False),
            left=left,
            right=right,
            is_leaf=is_leaf,
            value=pad("value", np.float64, 0.0),
            baseline=float(np.asarray(model._baseline_prediction).reshape(-1)[0]),
            depth=int(max(int(t.nodes["depth"].max()) for t in trees)),
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions `[n]` (float64) for features `[n, features]`."""
        x = np.asarray(x, np.float64)
        trees = np.arange(self.value.shape[0])[None, :]
        node = np.zeros((x.shape[0], self.value.shape[0]), np.int32)
        for _ in range(self.depth):
            v = np.take_along_axis(x, self.feature[trees, node], axis=1)
            go_left = np.where(
                np.isnan(v), self.missing_left[trees, node], v <= self.threshold[trees, node]
            )
            node = np.where(go_left, self.left[trees, node], self.right[trees, node])
        leaf = self.value[trees, node]
        out = np.zeros(x.shape[0], np.float64) + self.baseline
        for t in range(leaf.shape[1]):
            out += leaf[:, t]
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays of 32-bit types only (float64 fields as `uint32` pairs), so they pass
        through JAX checkpoints without 64-bit mode; `from_arrays` inverts it exactly."""
        out = {}
        for f in self._FIELDS:
            a = getattr(self, f)
            out[f] = a.view(np.uint32) if a.dtype == np.float64 else a.astype(np.int32)
        out["baseline"] = np.array([self.baseline], np.float64).view(np.uint32)
        out["depth"] = np.array([self.depth], np.int32)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> GBMTrees:
        a = {k: np.asarray(v) for k, v in arrays.items()}
        f64 = lambda v: np.ascontiguousarray(v.astype(np.uint32)).view(np.float64)  # noqa: E731
        return cls(
            feature=a["feature"].astype(np.int32),
            threshold=f64(a["threshold"]),
            missing_left=a["missing_left"].astype(bool),
            left=a["left"].astype(np.int32),
            right=a["right"].astype(np.int32),
            is_leaf=a["is_leaf"].astype(bool),
            value=f64(a["value"]),
            baseline=float(f64(a["baseline"])[0]),
            depth=int(a["depth"][0]),
        )
