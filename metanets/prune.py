"""MetaPruning: a graph metanetwork that edits networks so that they prune well; the
structured-pruning pipeline with compact export.

The recipe ("Meta Pruning via Graph Metanetworks"; `../shared/research/metanets.md`, b1):

1. `meta_train`: a `GraphMetanet` maps a trained network to ``θ' = θ + r·Δθ`` (its
   equivariant edge and node decoders, `GraphMetanet.edit`). It is trained over a zoo of
   one architecture with loss = cross-entropy of the edited networks on training batches
   + ``λ`` · group-L2 sparsity of the edited networks (`group_lasso`: the mean over hidden
   units of each unit's group norm, `hyper.compact.group_importance`), differentiable
   through graph -> params -> loss and vmapped over a batch of zoo networks.
2. `prune_pipeline`: trained network -> metanet edit -> short fine-tune -> progressive
   pruning by group norm to a FLOPs speed-up (`prune_to_speedup`) or down to an accuracy
   floor (`prune_to_floor`) -> fine-tune -> a compact standalone network
   (`hyper.compact.remove_units`: smaller arrays, not masks). Without `metanet` it is the
   group-L2 baseline with the same fine-tune budget; ``importance="random"`` is the random
   baseline.
3. `export_pruned` / `load_pruned`: an Orbax checkpoint whose target description rebuilds
   the compact model without the original (built-in architectures get a plain
   `make_target` config with the new widths).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hyper import compact, symmetry
from hyper.architectures import config_for_params
from hyper.data import Dataset
from hyper.init_programs import init_module
from hyper.target import Params, Target
from hyper.train import TrainConfig, Trainer, cross_entropy
from hyper.train import evaluate as evaluate_population
from metanets.graph import graphs_to_population, kernel_window, population_to_graphs
from metanets.models import GraphMetanet

__all__ = [
    "MetaPruneConfig",
    "MetaPruner",
    "PruneResult",
    "UnreachableSpeedup",
    "accuracy",
    "check_reachable",
    "config_differences",
    "export_pruned",
    "finetune",
    "group_lasso",
    "group_norm_ratio",
    "hidden_widths",
    "load_metapruner",
    "load_pruned",
    "meta_train",
    "prune_pipeline",
    "prune_to_floor",
    "prune_to_speedup",
]

_FORMAT = "weightspace-metapruner"


class UnreachableSpeedup(ValueError):
    """A FLOPs speed-up that would remove every unit of some layer."""


_PRUNED = "weightspace-pruned"


# ---------------------------------------------------------------------------------------
# The metanetwork and its training
# ---------------------------------------------------------------------------------------


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
            raise ValueError(
                f"MetaPruneConfig.sparsity_kind {self.sparsity_kind!r}; expected one of "
                f"{SPARSITY_KINDS}"
            )
        for name in ("hidden", "num_layers", "steps", "nets_per_step", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MetaPruneConfig.{name} must be an int >= 1, got {v!r}")
        for name in ("r", "learning_rate"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"MetaPruneConfig.{name} must be a finite number > 0, got {v!r}")
        for name in ("sparsity", "weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"MetaPruneConfig.{name} must be a finite number >= 0, got {v!r}")


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
            raise ValueError("MetaPruner.edit: empty population")
        r = self.config.r if r is None else float(r)
        return self._edit(self._state, population, jnp.float32(r))

    def edit_one(self, params: Params, *, r: float | None = None) -> Params:
        """The edited version of one network."""
        self.target.validate(params)
        pop = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
        return jax.tree.map(lambda a: a[0], self.edit(pop, r=r))

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> str:
        """Saves the metanet (Orbax arrays + JSON config and target); returns the path."""
        from hyper.checkpoint import PopulationCheckpointer

        directory = os.path.abspath(os.fspath(directory))
        if os.path.isdir(directory) and os.listdir(directory):
            if not overwrite:
                raise ValueError(f"{directory} is not empty; pass overwrite=True to replace it")
            import shutil

            shutil.rmtree(directory)
        if not self.target.config:
            raise ValueError(
                f"MetaPruner.save: target {self.target.name} has no rebuild config "
                "(use a make_target architecture)"
            )
        meta = {
            "format": _FORMAT,
            "config": dataclasses.asdict(self.config),
            "target": self.target.config,
            "window": list(self.window),
            "history": self.history,
        }
        meta = json.loads(json.dumps(meta))
        with PopulationCheckpointer(directory) as ckpt:
            ckpt.save(0, {"state": nnx.to_pure_dict(nnx.state(self.model))}, meta=meta)
        return directory


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
    from hyper.architectures import target_from_config
    from hyper.checkpoint import CheckpointError, PopulationCheckpointer

    directory = os.path.abspath(os.fspath(directory))
    with PopulationCheckpointer(directory, read_only=True) as ckpt:
        if not ckpt.steps():
            raise CheckpointError(f"no MetaPruning metanet in {directory}")
        meta = ckpt.restore_meta(0)
        if meta.get("format") != _FORMAT:
            raise CheckpointError(f"{directory} holds no MetaPruning metanet")
        config = MetaPruneConfig(**meta["config"])
        model = nnx.eval_shape(lambda: _build_metanet(config, meta["window"]))
        arrays, _ = ckpt.restore(0, {"state": nnx.to_pure_dict(nnx.state(model))})
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, arrays["state"])
    nnx.update(model, state)
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
        raise ValueError("meta_train: the zoo is empty")
    if target.input_shape is not None and tuple(target.input_shape) != dataset.input_shape:
        raise ValueError(
            f"meta_train: target {target.name} takes inputs {target.input_shape}, dataset "
            f"{dataset.name} has {dataset.input_shape}"
        )
    groups = symmetry.structural_groups(target)
    if not groups:
        raise ValueError(f"meta_train: {target.name} has no prunable hidden units")
    window = kernel_window(target)
    model = _build_metanet(config, window)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, max(1, config.steps // 20), max(config.steps, 2)
    )
    opt = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=config.weight_decay)
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


# ---------------------------------------------------------------------------------------
# Fine-tuning and evaluation of single networks
# ---------------------------------------------------------------------------------------

# A few recent compiled evaluators and fine-tuners (the learning rate is state, not code).
_EVAL: dict[Any, Callable] = {}
_TRAINERS: dict[tuple, Trainer] = {}
_IMPORTANCE: dict[tuple, Callable] = {}


def _recent(cache: dict, key: Any, make: Callable[[], Any], limit: int = 8) -> Any:
    value = cache.pop(key, None)
    cache[key] = value = make() if value is None else value  # most recent last
    while len(cache) > limit:
        cache.pop(next(iter(cache)))
    return value


def accuracy(target: Target, params: Params, dataset: Dataset, *, split: str = "test") -> float:
    """Accuracy of one network on a split (``"test"`` or ``"train"``), evaluation mode."""
    if split not in ("test", "train"):
        raise ValueError(f"accuracy: split must be 'test' or 'train', got {split!r}")
    x, y = (
        (dataset.x_test, dataset.y_test) if split == "test" else (dataset.x_train, dataset.y_train)
    )
    fn = _recent(
        _EVAL, target, lambda: jax.jit(lambda p, x, y: evaluate_population(target, p, x, y))
    )
    pop = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
    return float(fn(pop, jnp.asarray(x), jnp.asarray(y))["acc"][0])


def finetune(
    target: Target,
    params: Params,
    dataset: Dataset,
    *,
    steps: int,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> Params:
    """`steps` Adam steps of one network on the train split (`hyper.train.Trainer`)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"finetune: steps must be an int >= 0, got {steps!r}")
    if steps == 0:
        return params
    tr = _recent(
        _TRAINERS,
        (target, id(dataset), steps, batch_size),
        lambda: Trainer(target, dataset, TrainConfig(batch_size=batch_size, steps_per_epoch=steps)),
    )
    if tr.dataset is not dataset:  # an id reused by a new object: rebuild
        tr = _TRAINERS[(target, id(dataset), steps, batch_size)] = Trainer(
            target, dataset, TrainConfig(batch_size=batch_size, steps_per_epoch=steps)
        )
    pop = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
    state = tr.init(jax.random.key(seed), 1, learning_rate=learning_rate, params=pop, shard=False)
    state, _ = tr.train_epoch(state, 0)
    if bool(state.diverged[0]):
        raise FloatingPointError(
            f"finetune: {target.name} diverged (non-finite loss); lower the learning rate"
        )
    return jax.tree.map(lambda a: a[0], state.params)


# ---------------------------------------------------------------------------------------
# Progressive structured pruning
# ---------------------------------------------------------------------------------------


def _layer_names(g: symmetry.Group) -> str:
    return ", ".join(p.rsplit("/", 1)[0] for p in g.producers) or g.name


def _removal_order(scores: Sequence[np.ndarray]) -> tuple[list[tuple[int, int]], int]:
    """Units in the order a global ranking removes them (lowest score first), keeping the
    best unit of every group; and the index of the group whose last unit ranks lowest."""
    flat = [(float(s), gi, u) for gi, sc in enumerate(scores) for u, s in enumerate(sc)]
    flat.sort()
    left = [len(s) for s in scores]
    order, blocked = [], None
    for _, gi, u in flat:
        if left[gi] > 1:
            left[gi] -= 1
            order.append((gi, u))
        elif blocked is None:
            blocked = gi
    return order, blocked if blocked is not None else 0


def _keep_masks(sizes: Sequence[int], removed: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    masks = [np.ones(s, bool) for s in sizes]
    for gi, u in removed:
        masks[gi][u] = False
    return masks


def _importance(target, params, groups, importance, normalizer, key) -> list[np.ndarray]:
    """`compact.group_importance` as numpy arrays: norms are computed by numpy on host
    copies of the weights (a compiled program would be new for every pruned shape);
    random scores by a jitted draw (compiled again for each pruned shape)."""
    if importance != "random":
        host = jax.tree.map(np.asarray, params)
        return compact.group_importance(
            target, host, method=importance, normalizer=normalizer, groups=groups
        )
    fn = _recent(
        _IMPORTANCE,
        (target, tuple(g.name for g in groups)),
        lambda: jax.jit(
            lambda p, k: compact.group_importance(target, p, method="random", groups=groups, key=k)
        ),
    )
    return [np.asarray(s) for s in fn(params, key)]


def _prune_step(target, params, groups, scores, goal, speedup):
    """Removes the fewest lowest-ranked units so that FLOPs <= goal (binary search)."""
    order, blocked = _removal_order(scores)
    sizes = [g.size for g in groups]

    def flops(k):
        masks = _keep_masks(sizes, order[:k])
        t, p = compact.remove_units(target, params, masks, groups=groups, check=False)
        return compact.count_flops(t), t, p

    f_all = flops(len(order))[0]
    if f_all > goal:
        g = groups[blocked]
        raise UnreachableSpeedup(
            f"speed-up {speedup:g}x cannot be reached: even one unit per group leaves "
            f"{f_all:,} FLOPs > {int(goal):,}; it would remove every channel of layer "
            f"{_layer_names(g)} (group {g.name!r})"
        )
    lo, hi = 0, len(order)  # flops(hi) <= goal
    while lo < hi:
        mid = (lo + hi) // 2
        if flops(mid)[0] <= goal:
            hi = mid
        else:
            lo = mid + 1
    masks = _keep_masks(sizes, order[:lo])
    return compact.remove_units(target, params, masks, groups=groups, check=False)


def _check_prunable(target: Target) -> list[symmetry.Group]:
    groups = symmetry.structural_groups(target)
    if not groups:
        raise ValueError(f"{target.name} has no prunable hidden units (no structural groups)")
    return groups


def _check_prune_args(speedup, steps, importance, normalizer) -> None:
    if speedup is not None and not (
        isinstance(speedup, int | float) and math.isfinite(speedup) and speedup >= 1
    ):
        raise ValueError(f"speedup must be a finite number >= 1, got {speedup!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"prune steps must be an int >= 1, got {steps!r}")
    if importance not in compact.IMPORTANCE_METHODS:
        raise ValueError(f"importance {importance!r}; expected one of {compact.IMPORTANCE_METHODS}")
    if normalizer not in compact.IMPORTANCE_NORMALIZERS:
        raise ValueError(
            f"normalizer {normalizer!r}; expected one of {compact.IMPORTANCE_NORMALIZERS}"
        )


def check_reachable(target: Target, speedup: float) -> None:
    """Raises `UnreachableSpeedup` (naming the layer) if keeping one unit in every group
    still leaves more than ``FLOPs / speedup``; cheap (no weights needed)."""
    _check_prune_args(speedup, 1, "l2", None)
    groups = _check_prunable(target)
    params = jax.tree.unflatten(target.treedef, [np.zeros(s.shape, s.dtype) for s in target.spec])
    scores = [np.arange(g.size, dtype=np.float32) for g in groups]
    order, blocked = _removal_order(scores)
    masks = _keep_masks([g.size for g in groups], order)
    t, _ = compact.remove_units(target, params, masks, groups=groups, check=False)
    goal = compact.count_flops(target) / speedup
    f_min = compact.count_flops(t)
    if f_min > goal:
        g = groups[blocked]
        raise UnreachableSpeedup(
            f"speed-up {speedup:g}x cannot be reached: even one unit per group leaves "
            f"{f_min:,} FLOPs > {int(goal):,}; it would remove every channel of layer "
            f"{_layer_names(g)} (group {g.name!r})"
        )


def prune_to_speedup(
    target: Target,
    params: Params,
    speedup: float,
    *,
    importance: str = "l2",
    normalizer: str | None = "mean",
    steps: int = 4,
    key: jax.Array | None = None,
) -> tuple[Target, Params]:
    """Progressive global structured pruning to ``FLOPs <= FLOPs_0 / speedup``.

    In `steps` rounds the FLOPs goal falls geometrically to the final one; each round
    scores every hidden unit of every structural group (`hyper.compact.group_importance`:
    ``"l2"``, ``"l1"`` or ``"random"``, normalised per group by `normalizer` so groups
    compare on one ranking), then physically removes the fewest lowest-ranked units that
    meet the round's goal. Every group keeps at least one unit.

    Returns:
      ``(compact_target, compact_params)`` (a derived target; `export_pruned` gives it a
      standalone config).

    Raises:
      ValueError: a speed-up below 1, an unknown importance, or a target with no hidden
        units; `UnreachableSpeedup` (a ValueError) naming the layer that would lose every
        channel.
    """
    _check_prune_args(speedup, steps, importance, normalizer)
    if importance == "random" and key is None:
        key = jax.random.key(0)
    f0 = compact.count_flops(target)
    final = f0 / speedup
    t, p = target, params
    for s in range(1, steps + 1):
        groups = _check_prunable(t)
        ks = None if key is None else jax.random.fold_in(key, s)
        scores = _importance(t, p, groups, importance, normalizer, ks)
        goal = final if s == steps else f0 / speedup ** (s / steps)
        t, p = _prune_step(t, p, groups, scores, goal, speedup)
    return t, p


def prune_to_floor(
    target: Target,
    params: Params,
    dataset: Dataset,
    floor: float,
    *,
    importance: str = "l2",
    normalizer: str | None = "mean",
    factor: float = 1.1,
    max_rounds: int = 50,
    key: jax.Array | None = None,
) -> tuple[Target, Params]:
    """Prunes in rounds of `factor`x FLOPs speed-up while the training-split accuracy
    (no fine-tuning between rounds) stays >= `floor`; returns the last network above it
    (the input itself if the first round already falls below)."""
    if not (isinstance(floor, int | float) and 0 <= floor <= 1):
        raise ValueError(f"accuracy floor must lie in [0, 1], got {floor!r}")
    if not (isinstance(factor, int | float) and factor > 1):
        raise ValueError(f"factor must be > 1, got {factor!r}")
    _check_prune_args(factor, 1, importance, normalizer)
    t, p = target, params
    for i in range(max_rounds):
        ks = None if key is None else jax.random.fold_in(key, i)
        try:
            nt, np_ = prune_to_speedup(
                t, p, factor, importance=importance, normalizer=normalizer, steps=1, key=ks
            )
        except UnreachableSpeedup:
            break  # nothing left to remove
        if accuracy(nt, np_, dataset, split="train") < floor:
            break
        t, p = nt, np_
    return t, p


# ---------------------------------------------------------------------------------------
# The pipeline and compact export
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class PruneResult:
    """A pruned, fine-tuned compact network and what it cost and gained.

    Attributes:
      target: the compact network's standalone target.
      params: its weights.
      config: the `make_target` config that rebuilds `target` (None for other targets).
      flops: ``(before, after)`` FLOPs per example.
      num_params: ``(before, after)`` trainable parameters.
      acc: test accuracies along the pipeline: ``"original"``, ``"edited"`` (after the
        metanet edit, before fine-tuning; absent without a metanet), ``"finetuned"``
        (before pruning), ``"pruned"`` (right after pruning) and ``"final"``.
      info: the pipeline's settings and timings.
    """

    target: Target
    params: Params
    config: dict[str, Any] | None
    flops: tuple[int, int]
    num_params: tuple[int, int]
    acc: dict[str, float]
    info: dict[str, Any]

    @property
    def speedup(self) -> float:
        """Achieved FLOPs speed-up."""
        return self.flops[0] / max(self.flops[1], 1)


def _standalone(target: Target, params: Params) -> tuple[Target, dict[str, Any] | None]:
    """A compact target rebuilt from a plain config when its family allows it."""
    from hyper.architectures import target_from_config

    root = target.config.get("derived_from", target.config) if target.config else None
    while isinstance(root, dict) and "derived_from" in root:
        root = root["derived_from"]
    cfg = config_for_params(root, params) if isinstance(root, dict) else None
    if cfg is None:
        return target, None
    return target_from_config(cfg), cfg


def config_differences(a: Target, b: Target) -> list[str]:
    """Config keys in which two targets compute different functions (dropout aside: it does
    not change evaluation); empty when they agree or either has no config."""
    ca = {k: v for k, v in (a.config or {}).items() if k != "dropout"}
    cb = {k: v for k, v in (b.config or {}).items() if k != "dropout"}
    if not ca or not cb:
        return []
    return sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))


def hidden_widths(target: Target) -> list[int]:
    """Hidden widths of a network: its rebuild config's ``widths``/``channels`` when it has
    them (exact even where a 1-unit layer splits a structural group), else the sizes of
    its structural groups."""
    cfg = target.config or {}
    for key in ("widths", "channels"):
        if key in cfg:
            w = cfg[key]
            return list(w) if isinstance(w, list | tuple) else [int(w)]
    return [g.size for g in symmetry.structural_groups(target)]


def _check_metanet(metanet: MetaPruner, target: Target) -> None:
    """The metanet must have been trained on networks of the same function family."""
    mine = [(s.path, s.shape) for s in metanet.target.spec]
    if mine != [(s.path, s.shape) for s in target.spec]:
        raise ValueError(
            f"prune_pipeline: the metanet edits {metanet.target.name}; {target.name} has "
            "other leaves or shapes"
        )
    diff = config_differences(metanet.target, target)
    if diff:
        raise ValueError(
            f"prune_pipeline: the metanet was trained on {metanet.target.name}; "
            f"{target.name} differs in {diff}"
        )


def prune_pipeline(
    target: Target,
    params: Params,
    dataset: Dataset,
    *,
    speedup: float | None = None,
    accuracy_floor: float | None = None,
    metanet: MetaPruner | None = None,
    importance: str = "l2",
    normalizer: str | None = "mean",
    prune_steps: int = 4,
    finetune_before: int = 100,
    finetune_after: int = 300,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> PruneResult:
    """Trained network -> [metanet edit] -> fine-tune -> prune -> fine-tune -> compact.

    Exactly one of `speedup` (FLOPs ratio, `prune_to_speedup`) and `accuracy_floor`
    (`prune_to_floor`) is given. The fine-tune budget (`finetune_before`, `finetune_after`
    steps of Adam at `learning_rate`) is the same with and without `metanet`, so the run
    without it is the group-L2 baseline (``importance="random"``: the random one).
    """
    if (speedup is None) == (accuracy_floor is None):
        raise ValueError("prune_pipeline: give exactly one of speedup and accuracy_floor")
    if accuracy_floor is not None and not (
        isinstance(accuracy_floor, int | float) and 0 <= accuracy_floor <= 1
    ):
        raise ValueError(f"accuracy floor must lie in [0, 1], got {accuracy_floor!r}")
    _check_prune_args(speedup, prune_steps, importance, normalizer)
    for name, v in (("finetune_before", finetune_before), ("finetune_after", finetune_after)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"prune_pipeline: {name} must be an int >= 0, got {v!r}")
    target.validate(params)
    if metanet is not None:
        _check_metanet(metanet, target)
    _check_prunable(target)
    if speedup is not None:  # before any fine-tuning
        check_reachable(target, speedup)
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    acc = {"original": accuracy(target, params, dataset)}
    f0, n0 = compact.count_flops(target), compact.count_params(target)
    if metanet is not None:
        params = metanet.edit_one(params)
        acc["edited"] = accuracy(target, params, dataset)
    ft = dict(learning_rate=learning_rate, batch_size=batch_size)
    params = finetune(target, params, dataset, steps=finetune_before, seed=seed, **ft)
    acc["finetuned"] = accuracy(target, params, dataset)
    kp = jax.random.fold_in(key, 1)
    if speedup is not None:
        t, p = prune_to_speedup(
            target,
            params,
            speedup,
            importance=importance,
            normalizer=normalizer,
            steps=prune_steps,
            key=kp,
        )
    else:
        t, p = prune_to_floor(
            target,
            params,
            dataset,
            accuracy_floor,
            importance=importance,
            normalizer=normalizer,
            key=kp,
        )
    t, cfg = _standalone(t, p)
    acc["pruned"] = accuracy(t, p, dataset)
    p = finetune(t, p, dataset, steps=finetune_after, seed=seed + 1, **ft)
    acc["final"] = accuracy(t, p, dataset)
    info = {
        "speedup_goal": speedup,
        "accuracy_floor": accuracy_floor,
        "metanet": metanet is not None,
        "importance": importance,
        "normalizer": normalizer,
        "prune_steps": prune_steps,
        "finetune_before": finetune_before,
        "finetune_after": finetune_after,
        "learning_rate": learning_rate,
        "widths": hidden_widths(t),
        "dataset": dataset.name,
        "seconds": time.perf_counter() - t0,
    }
    return PruneResult(
        t, p, cfg, (f0, compact.count_flops(t)), (n0, compact.count_params(t)), acc, info
    )


def export_pruned(
    directory: str | os.PathLike, result: PruneResult, *, overwrite: bool = False
) -> str:
    """Saves a compact network (Orbax) with its rebuild config and the pipeline's record;
    `load_pruned` (or `hyper.checkpoint.load_population`) restores it without the original
    network."""
    from hyper.checkpoint import save_population

    pop = jax.tree.map(lambda a: jnp.asarray(a)[None], result.params)
    meta = {
        "format": _PRUNED,
        "flops": list(result.flops),
        "num_params": list(result.num_params),
        "speedup": result.speedup,
        "acc": result.acc,
        "info": result.info,
    }
    meta = json.loads(json.dumps(meta))
    return save_population(directory, pop, result.target, metadata=meta, overwrite=overwrite)


def load_pruned(directory: str | os.PathLike) -> tuple[Target, Params, dict[str, Any]]:
    """``(target, params, record)`` of a network written by `export_pruned`."""
    from hyper.checkpoint import CheckpointError, load_population

    target, pop, meta = load_population(directory)
    if meta.get("format") != _PRUNED:
        raise CheckpointError(f"{os.path.abspath(os.fspath(directory))} holds no pruned network")
    return target, jax.tree.map(lambda a: a[0], pop), meta
