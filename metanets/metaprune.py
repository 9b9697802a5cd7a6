"""MetaPruning: a graph metanetwork that edits networks so that they prune well.

The recipe ("Meta Pruning via Graph Metanetworks"; `../shared/research/metanets.md`, b1):

1. `meta_train`: a `GraphMetanet` maps a trained network to ``θ' = θ + r·Δθ`` (its
   equivariant edge and node decoders, `GraphMetanet.edit`). It is trained over a zoo of
   one architecture with loss = cross-entropy of the edited networks on training batches
   + ``λ`` · group-L2 sparsity of the edited networks (`group_lasso`: the mean over hidden
   units of each unit's group norm, `hyper.compact.group_importance`), differentiable
   through graph -> params -> loss and vmapped over a batch of zoo networks.
2. `hyper.prune.prune_pipeline` with ``edit=pruner.edit_for(target)``: trained network ->
   metanet edit -> fine-tune -> progressive structured pruning -> fine-tune -> a compact
   standalone network.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hyper import compact, symmetry
from hyper.architectures import target_from_config
from hyper.checkpoint import load_model, save_model
from hyper.data import Dataset
from hyper.errors import WeightspaceError
from hyper.init_programs import init_module
from hyper.population import of_one, only
from hyper.target import Params, Target
from hyper.train import cross_entropy, make_optimizer
from metanets.graph import graphs_to_population, population_to_graphs
from metanets.graph_topology import kernel_window
from metanets.models import GraphMetanet

__all__ = [
    "SPARSITY_KINDS",
    "MetaPruneConfig",
    "MetaPruner",
    "group_lasso",
    "group_norm_ratio",
    "load_metapruner",
    "meta_train",
]

_FORMAT = "weightspace-metapruner"


@dataclasses.dataclass(frozen=True)
class MetaPruneConfig:
    """Hyperparameters of a MetaPruning metanetwork and its training.

    Attributes:
      hidden: width of the metanet's node and edge states.
      num_layers: message-passing rounds.
      r: edit scale, ``θ' = θ + r·Δθ`` (the paper: 0.01 for ResNet-56, 0.05 for VGG-19).
      sparsity: ``λ``, the weight of the sparsity term.
      sparsity_kind: ``"group_l2"`` (the paper's: `group_lasso`, the mean unit group
        norm; it also rewards shrinking every weight alike) or ``"ratio"``
        (`group_norm_ratio`: per group, mean over root-mean-square of the unit norms, which
        is scale-invariant like the mean-normalised pruning criterion and only rewards
        separating units).
      steps: optimisation steps.
      nets_per_step: zoo networks per step (vmapped through the edit and the loss).
      batch_size: training examples per step (shared by the networks of a step).
      learning_rate: AdamW peak learning rate (warm-up, cosine decay).
      weight_decay: AdamW weight decay.
      seed: metanet initialisation and sampling of networks and examples.
    """

    hidden: int = 32
    num_layers: int = 4
    r: float = 0.05
    sparsity: float = 1.0
    sparsity_kind: str = "group_l2"
    steps: int = 300
    nets_per_step: int = 8
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if self.sparsity_kind not in SPARSITY_KINDS:
            raise WeightspaceError(
                f"MetaPruneConfig.sparsity_kind {self.sparsity_kind!r}; expected one of "
                f"{SPARSITY_KINDS}"
            )
        for name in ("hidden", "num_layers", "steps", "nets_per_step", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WeightspaceError(f"MetaPruneConfig.{name} must be an int >= 1, got {v!r}")
        for name in ("r", "learning_rate"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise WeightspaceError(
                    f"MetaPruneConfig.{name} must be a finite number > 0, got {v!r}"
                )
        for name in ("sparsity", "weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise WeightspaceError(
                    f"MetaPruneConfig.{name} must be a finite number >= 0, got {v!r}"
                )


def group_lasso(
    target: Target, params: Params, *, groups: Sequence[symmetry.Group] | None = None
) -> jax.Array:
    """Group-L2 sparsity of one network: the mean over hidden units of the unit's group
    norm (every trainable weight the unit owns, `hyper.compact.group_importance`).
    Differentiable (finite gradient at all-zero units)."""
    scores = compact.group_importance(target, params, method="l2", groups=groups, eps=1e-12)
    if not scores:
        return jnp.zeros((), jnp.float32)
    return sum(jnp.sum(s) for s in scores) / sum(s.shape[0] for s in scores)


def group_norm_ratio(
    target: Target, params: Params, *, groups: Sequence[symmetry.Group] | None = None
) -> jax.Array:
    """Scale-invariant group sparsity of one network: per structural group, the mean of
    the unit group norms over their root-mean-square (1 when all units are alike, about
    ``sqrt(k / size)`` when only `k` units are non-zero), averaged over groups.
    Multiplying all weights by a constant leaves it unchanged."""
    scores = compact.group_importance(target, params, method="l2", groups=groups, eps=1e-12)
    if not scores:
        return jnp.zeros((), jnp.float32)
    ratios = [jnp.mean(s) / jnp.sqrt(jnp.mean(s * s)) for s in scores]
    return sum(ratios) / len(ratios)


SPARSITY_KINDS = ("group_l2", "ratio")
_SPARSITY = {"group_l2": group_lasso, "ratio": group_norm_ratio}


class MetaPruner:
    """A trained MetaPruning metanetwork for one architecture.

    Attributes:
      target: the architecture it edits.
      model: the `GraphMetanet`.
      config: its `MetaPruneConfig`.
      window: the edge-feature window of its graphs.
      history: per logged step ``{"step", "loss", "ce", "sparsity"}``.
    """

    def __init__(
        self,
        target: Target,
        model: GraphMetanet,
        config: MetaPruneConfig,
        window: tuple[int, int],
        history: list[dict[str, float]] | None = None,
    ):
        self.target = target
        self.model = model
        self.config = config
        self.window = tuple(window)
        self.history = list(history or [])
        graphdef, state = nnx.split(model)
        self._state = state
        self._edit = jax.jit(
            lambda s, pop, r: _edit_population(nnx.merge(graphdef, s), target, pop, r, self.window)
        )

    def edit(self, population: Params, *, r: float | None = None) -> Params:
        """Edited networks ``θ + r·Δθ`` of a population (leading `targets` axis)."""
        n = self.target.validate(population, batched=True)
        if n < 1:
            raise WeightspaceError("MetaPruner.edit: empty population")
        r = self.config.r if r is None else float(r)
        return self._edit(self._state, population, jnp.float32(r))

    def edit_one(self, params: Params, *, r: float | None = None) -> Params:
        """The edited version of one network."""
        self.target.validate(params)
        return only(self.edit(of_one(params), r=r))

    def check_target(self, target: Target) -> None:
        """Raises WeightspaceError unless `target` has this metanet's leaves and shapes and the
        same function family (`Target.config_differences`): the metanet edits only
        networks like those it was trained on."""
        if self.target.spec_differences(target, fields=("shape",)):
            raise WeightspaceError(
                f"prune_pipeline: the metanet edits {self.target.name}; {target.name} has "
                "other leaves or shapes"
            )
        diff = self.target.config_differences(target)
        if diff:
            raise WeightspaceError(
                f"prune_pipeline: the metanet was trained on {self.target.name}; "
                f"{target.name} differs in {diff}"
            )

    def edit_for(self, target: Target) -> Callable[[Target, Params], Params]:
        """The `edit` of `hyper.prune.prune_pipeline` for networks of `target`:
        ``edit(target, params) -> edit_one(params)``. Checks `target` now
        (`check_target`), before any pruning work.
        """
        self.check_target(target)

        def edit(t: Target, params: Params) -> Params:
            self.check_target(t)
            return self.edit_one(params)

        return edit

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> str:
        """Saves the metanet (Orbax arrays + JSON config and target); returns the path."""
        if not self.target.config:
            raise WeightspaceError(
                f"MetaPruner.save: target {self.target.name} has no rebuild config "
                "(use a make_target architecture)"
            )
        meta = {
            "config": dataclasses.asdict(self.config),
            "target": self.target.config,
            "window": list(self.window),
            "history": self.history,
        }
        return save_model(directory, self.model, format=_FORMAT, metadata=meta, overwrite=overwrite)


def _build_metanet(config: MetaPruneConfig, window: Sequence[int]) -> GraphMetanet:
    return init_module(
        GraphMetanet,
        int(window[0]) * int(window[1]),
        hidden=int(config.hidden),
        num_layers=int(config.num_layers),
        seed=config.seed,
    )


def load_metapruner(directory: str | os.PathLike) -> MetaPruner:
    """Loads what `MetaPruner.save` wrote."""

    def build(meta: dict) -> GraphMetanet:
        config = MetaPruneConfig(**meta["config"])
        return nnx.eval_shape(lambda: _build_metanet(config, meta["window"]))

    model, meta = load_model(directory, build, format=_FORMAT, what="MetaPruning metanet")
    config = MetaPruneConfig(**meta["config"])
    target = target_from_config(meta["target"])
    return MetaPruner(target, model, config, tuple(meta["window"]), meta.get("history"))


def _edit_population(
    model: GraphMetanet, target: Target, population: Params, r: jax.Array, window
) -> Params:
    graphs = population_to_graphs(target, population, window=window)
    n = jax.tree.leaves(population)[0].shape[0]
    edited = graphs_to_population(target, model.edit(graphs, r), window=window, count=n)
    # Running statistics are measurements of the data, not parameters: they stay as they
    # are (an edited variance could turn negative); fine-tuning re-estimates them.
    keep = jax.tree.unflatten(target.treedef, [s.trainable for s in target.spec])
    return jax.tree.map(lambda k, e, o: e if k else o, keep, edited, population)


def meta_train(
    target: Target,
    population: Params,
    dataset: Dataset,
    config: MetaPruneConfig | None = None,
    *,
    log: Callable[[str], None] | None = None,
    log_every: int = 50,
) -> MetaPruner:
    """Trains a MetaPruning metanetwork over a zoo of `target` networks.

    Each step samples `config.nets_per_step` networks and `config.batch_size` training
    examples; the loss is the edited networks' mean cross-entropy (evaluation-mode apply)
    plus ``λ`` times their mean `group_lasso`. One jitted program per step.

    Args:
      target: the zoo's architecture.
      population: the zoo, `[n, ...]` (trained networks).
      dataset: its training data (the train split is used).
      config: default `MetaPruneConfig()`.
      log: called with a progress line every `log_every` steps.

    Returns:
      the trained `MetaPruner`.
    """
    config = config or MetaPruneConfig()
    n = target.validate(population, batched=True)
    if n < 1:
        raise WeightspaceError("meta_train: the zoo is empty")
    if target.input_shape is not None and tuple(target.input_shape) != dataset.input_shape:
        raise WeightspaceError(
            f"meta_train: target {target.name} takes inputs {target.input_shape}, dataset "
            f"{dataset.name} has {dataset.input_shape}"
        )
    groups = symmetry.structural_groups(target)
    if not groups:
        raise WeightspaceError(f"meta_train: {target.name} has no prunable hidden units")
    window = kernel_window(target)
    model = _build_metanet(config, window)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt = make_optimizer(
        "adam",
        config.learning_rate,
        schedule="warmup_cosine",
        steps=config.steps,
        weight_decay=config.weight_decay,
        clip_norm=1.0,
    )
    opt_state = opt.init(params)
    x_train = jnp.asarray(dataset.x_train)
    y_train = jnp.asarray(dataset.y_train)
    population = jax.tree.map(jnp.asarray, population)
    apply = jax.vmap(target.pure_apply, in_axes=(0, None))
    r = jnp.float32(config.r)
    k = min(config.nets_per_step, n)

    def loss_fn(p, pop, xb, yb):
        m = nnx.merge(graphdef, p, rest)
        edited = _edit_population(m, target, pop, r, window)
        logits = apply(edited, xb)
        ce = jnp.mean(jax.vmap(lambda lg: cross_entropy(lg, yb))(logits))
        sparsity = _SPARSITY[config.sparsity_kind]
        sp = jnp.mean(jax.vmap(lambda q: sparsity(target, q, groups=groups))(edited))
        return ce + config.sparsity * sp, (ce, sp)

    @jax.jit
    def step(p, opt_state, key):
        kn, kx = jax.random.split(key)
        idx = jax.random.choice(kn, n, (k,), replace=False)
        pop = jax.tree.map(lambda a: a[idx], population)
        ex = jax.random.randint(kx, (config.batch_size,), 0, x_train.shape[0])
        (loss, (ce, sp)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            p, pop, x_train[ex], y_train[ex]
        )
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss, ce, sp

    key = jax.random.key(config.seed + 1)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    acc = jnp.zeros(3)  # summed on the device; read back only when logging
    for i in range(config.steps):
        params, opt_state, loss, ce, sp = step(params, opt_state, jax.random.fold_in(key, i))
        acc = acc + jnp.stack([loss, ce, sp])
        if (i + 1) % log_every == 0 or i + 1 == config.steps:
            cnt = (i % log_every) + 1
            sums = np.asarray(acc, np.float64)
            row = {
                "step": i + 1,
                "loss": sums[0] / cnt,
                "ce": sums[1] / cnt,
                "sparsity": sums[2] / cnt,
            }
            if not np.isfinite(row["loss"]):
                raise FloatingPointError(f"meta_train: non-finite loss at step {i + 1}: {row}")
            history.append(row)
            acc = jnp.zeros(3)
            if log is not None:
                log(
                    f"metaprune step {i + 1}/{config.steps}: loss {row['loss']:.4f} "
                    f"ce {row['ce']:.4f} sparsity {row['sparsity']:.4f} "
                    f"({time.perf_counter() - t0:.1f} s)"
                )
    return MetaPruner(target, nnx.merge(graphdef, params, rest), config, window, history)
