"""The generative module assembler: (task, budget) -> module choices and channel masks.

An `Assembler` (Flax NNX) maps a scenario, a task as a multi-hot vector over the
supernet's classes and a budget as a fraction of the supernet's parameters (or FLOPs), to
one score per hidden channel of every module of the supernet: a per-channel logit plus a
per-module logit (the module choice). `project_to_budget` turns scores into a hard choice
that meets the budget *by construction*: channels are taken in decreasing score order while
the exact cost of the compact network (stem, head for the task's classes, every module
activated so far, every channel taken) still fits; a module with no channel is not
assembled.

Training (`train_assembler`) samples random scenarios (class subsets of a training pool,
budgets in a range), runs the frozen supernet with the assembler's choice and minimises the
task's cross-entropy (over the task's classes only) plus a budget penalty. The choice is
relaxed with a straight-through estimator: the forward pass uses the projected hard mask
of Gumbel-perturbed scores, exactly the network inference will build, so the budget holds
in training too; gradients flow through ``sigmoid(score / temperature)``. The penalty
``relu(soft cost / total - budget)`` keeps the soft mask, whose gradient the estimator
uses, near the budget.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from generators.supernet import Supernet
from hyper import compact, symmetry
from hyper.data import Dataset
from hyper.errors import WeightspaceError, WeightspaceTypeError
from hyper.target import Params
from hyper.train import make_optimizer

__all__ = [
    "Assembler",
    "Scenario",
    "allowed_cost",
    "class_index_table",
    "class_subsets",
    "group_l2_scores",
    "masked_task_loss",
    "project_to_budget",
    "sample_task_batch",
    "task_vector",
    "train_assembler",
    "validate_scenario",
]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """An edge scenario: the classes the model must tell apart and its resource budget.

    Attributes:
      classes: class indices of the supernet's label space (sorted, unique).
      budget: the largest allowed cost, as a fraction of the supernet's (0, 1].
    """

    classes: tuple[int, ...]
    budget: float

    def __post_init__(self):
        try:
            classes = tuple(sorted({int(c) for c in self.classes}))
        except (TypeError, ValueError):
            raise WeightspaceTypeError(
                f"scenario classes must be integers, got {self.classes!r}"
            ) from None
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "budget", float(self.budget))


def task_vector(classes: Sequence[int], num_classes: int) -> np.ndarray:
    """The multi-hot task vector `[num_classes]` (float32) of a class subset."""
    v = np.zeros(num_classes, np.float32)
    v[list(classes)] = 1.0
    return v


def allowed_cost(supernet: Supernet, budget: Any, n_classes: Any, kind: str = "params") -> Any:
    """Cost left for modules and channels: ``floor(budget * total) - stem - head(n)``."""
    c = supernet.costs(kind)
    return jnp.floor(budget * c["total"]) - c["stem"] - c["head_per_class"] * n_classes


def validate_scenario(supernet: Supernet, scenario: Scenario, kind: str = "params") -> None:
    """Raises WeightspaceError for classes outside the label space or a budget too small.

    The smallest assemblable model for a task is the stem and the head restricted to its
    classes (every stage the identity).
    """
    n = supernet.config.num_classes
    if not scenario.classes:
        raise WeightspaceError("scenario: no classes given")
    bad = [c for c in scenario.classes if not 0 <= c < n]
    if bad:
        raise WeightspaceError(
            f"scenario: classes {bad} are outside the supernet's label space 0..{n - 1}"
        )
    if not 0.0 < scenario.budget <= 1.0:
        raise WeightspaceError(f"scenario: budget must be in (0, 1], got {scenario.budget}")
    c = supernet.costs(kind)
    smallest = c["stem"] + c["head_per_class"] * len(scenario.classes)
    if np.floor(scenario.budget * c["total"]) < smallest:
        raise WeightspaceError(
            f"scenario: budget {scenario.budget:g} is below the smallest assemblable model for "
            f"{len(scenario.classes)} classes (stem + head = {smallest} {kind}, "
            f"{smallest / c['total']:.4f} of the supernet's {c['total']})"
        )


def project_to_budget(
    scores: jax.Array,
    allowed: jax.Array,
    module_of_channel: np.ndarray,
    num_modules: int,
    channel_cost: int,
    module_cost: int,
) -> jax.Array:
    """The hard channel choice `[channels]` (bool) that fits `allowed`, by decreasing score.

    Takes the longest prefix of channels sorted by score whose cost, ``channel_cost`` per
    channel plus ``module_cost`` the first time a module gets a channel, is at most
    `allowed`. The cost of a prefix grows with its length, so the result never exceeds the
    budget. Traceable; vmap it over scenarios.
    """
    order = jnp.argsort(-scores)
    mods = jnp.asarray(module_of_channel)[order]
    onehot = jax.nn.one_hot(mods, num_modules, dtype=jnp.int32)
    first = jnp.sum(onehot * (jnp.cumsum(onehot, axis=0) == 1), axis=1)
    cost = jnp.cumsum(channel_cost + module_cost * first)
    take = cost <= allowed
    return jnp.zeros(scores.shape, bool).at[order].set(take)


def _cutoff(scores: jax.Array, hard: jax.Array) -> jax.Array:
    """Midway between the lowest kept and the highest dropped score (no gradient)."""
    lo = jnp.min(jnp.where(hard > 0, scores, jnp.inf))
    hi = jnp.max(jnp.where(hard > 0, -jnp.inf, scores))
    lo = jnp.where(jnp.isfinite(lo), lo, hi)
    hi = jnp.where(jnp.isfinite(hi), hi, lo)
    return jax.lax.stop_gradient(0.5 * (lo + hi))


class Assembler(nnx.Module):
    """Scenario -> channel scores `[..., channels]` over the supernet's flat channel vector.

    Args:
      num_classes: size of the task vector.
      module_widths: hidden width of every module of the supernet, in slot order.
      hidden: width of the two hidden layers.
      prior: optional `[channels]` initial channel scores (e.g. `group_l2_scores`), so the
        untrained assembler ranks channels like group-L2 pruning.
      rngs: NNX random streams.
    """

    def __init__(
        self,
        num_classes: int,
        module_widths: Sequence[int],
        *,
        hidden: int = 128,
        prior: np.ndarray | None = None,
        rngs: nnx.Rngs,
    ):
        self.num_classes = int(num_classes)
        self.module_widths = tuple(int(w) for w in module_widths)
        channels = sum(self.module_widths)
        self.body1 = nnx.Linear(num_classes + 1, hidden, rngs=rngs)
        self.body2 = nnx.Linear(hidden, hidden, rngs=rngs)
        zeros = nnx.initializers.zeros
        self.channel_logits = nnx.Linear(hidden, channels, kernel_init=zeros, rngs=rngs)
        self.module_logits = nnx.Linear(
            hidden, len(self.module_widths), kernel_init=zeros, rngs=rngs
        )
        self.channel_prior = nnx.Param(
            jnp.zeros((channels,)) if prior is None else jnp.asarray(prior, jnp.float32)
        )

    def __call__(self, task: jax.Array, budget: jax.Array) -> jax.Array:
        """Scores `[batch, channels]` for tasks `[batch, classes]` and budgets `[batch]`."""
        z = jnp.concatenate([task, budget[:, None]], axis=1)
        h = jax.nn.relu(self.body2(jax.nn.relu(self.body1(z))))
        per_module = jnp.repeat(
            self.module_logits(h),
            np.asarray(self.module_widths),
            axis=1,
            total_repeat_length=sum(self.module_widths),
        )
        return self.channel_logits(h) + per_module + self.channel_prior[...][None, :]


def group_l2_scores(supernet: Supernet, params: Params) -> np.ndarray:
    """Group-L2 importance `[channels]` of every module channel (mean-normalised per module).

    The scores of `hyper.compact.group_importance` for each module's hidden-channel group,
    in the flat channel layout; the pruning baseline ranks channels by them.
    """
    groups = symmetry.structural_groups(supernet.target)
    by_producer = {g.producers: g for g in groups}
    chosen = [by_producer[(f"{s.path}/up/kernel",)] for s in supernet.slots]
    scores = compact.group_importance(supernet.target, params, normalizer="mean", groups=chosen)
    return np.concatenate([np.asarray(s) for s in scores])


def class_subsets(
    num_classes: int, sizes: Sequence[int], holdout: float, key: jax.Array
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """All class subsets of the given sizes, split at random into (train, held-out) pools.

    Held-out subsets are never seen while training the assembler.
    """
    subsets = [c for n in sizes for c in itertools.combinations(range(num_classes), n)]
    perm = np.asarray(jax.random.permutation(key, len(subsets)))
    if not 0.0 <= holdout < 1.0:
        raise WeightspaceError(f"class_subsets: holdout must be in [0, 1), got {holdout}")
    n_out = max(1, round(holdout * len(subsets))) if holdout > 0 else 0
    held = sorted(subsets[i] for i in perm[:n_out])
    train = sorted(subsets[i] for i in perm[n_out:])
    return train, held


def class_index_table(y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """`[classes, max_count]` example indices per class (zero-padded) and `[classes]` counts
    of the labels `y` `[examples]`: the table `sample_task_batch` draws from."""
    counts = np.bincount(y, minlength=num_classes)
    table = np.zeros((num_classes, max(int(counts.max()), 1)), np.int32)
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        table[c, : len(idx)] = idx
    return table, counts.astype(np.int32)


def sample_task_batch(
    key: jax.Array, task: jax.Array, table: jax.Array, counts: jax.Array, n: int
) -> jax.Array:
    """`n` example indices drawn uniformly from the task's classes (class first)."""
    kc, ki = jax.random.split(key)
    cls = jax.random.categorical(kc, jnp.where(task > 0, 0.0, -jnp.inf), shape=(n,))
    pos = jnp.floor(jax.random.uniform(ki, (n,)) * counts[cls]).astype(jnp.int32)
    return table[cls, pos]


def masked_task_loss(logits: jax.Array, y: jax.Array, task: jax.Array) -> jax.Array:
    """Cross-entropy over the task's classes only (the head restricted to them)."""
    logits = jnp.where(task[None, :] > 0, logits, -1e9)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def train_assembler(
    assembler: Assembler,
    supernet: Supernet,
    params: Params,
    dataset: Dataset,
    subsets: Sequence[Sequence[int]],
    key: jax.Array,
    *,
    budget_range: tuple[float, float] = (0.1, 0.5),
    steps: int = 1500,
    scenarios_per_step: int = 32,
    examples: int = 64,
    learning_rate: float = 3e-3,
    temperature: float = 1.0,
    gumbel_scale: float = 0.5,
    budget_weight: float = 0.1,
    kind: str = "params",
) -> dict[str, float]:
    """Trains `assembler` in place over random scenarios; the supernet stays frozen.

    Each step samples `scenarios_per_step` scenarios (a subset of `subsets`, a budget
    uniform in `budget_range`) and `examples` training examples of each task's classes.

    Returns:
      the mean task loss and budget penalty over the last 50 steps.
    """
    if not subsets:
        raise WeightspaceError("train_assembler: no class subsets to train on")
    lo, hi = budget_range
    c = supernet.costs(kind)
    n_cls = supernet.config.num_classes
    tasks = jnp.asarray(np.stack([task_vector(s, n_cls) for s in subsets]))
    table, counts = (jnp.asarray(a) for a in class_index_table(dataset.y_train, n_cls))
    x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    graphdef, state = nnx.split(assembler)
    opt = make_optimizer("adam", learning_rate, schedule="cosine", steps=steps)
    frozen = jax.lax.stop_gradient(params)

    def scenario_loss(scores, task, budget, k):
        kg, kb = jax.random.split(k)
        noisy = scores + gumbel_scale * jax.random.gumbel(kg, scores.shape)
        allowed = allowed_cost(supernet, budget, jnp.sum(task), kind)
        hard = project_to_budget(
            noisy,
            allowed,
            supernet.module_of_channel,
            supernet.num_modules,
            c["channel"],
            c["module"],
        ).astype(jnp.float32)
        # Centred on the budget's cut-off score: the gradient concentrates on the channels
        # near the boundary, whose choice the budget leaves open.
        cut = _cutoff(noisy, hard)
        soft = jax.nn.sigmoid((noisy - cut) / temperature)
        mask = hard + soft - jax.lax.stop_gradient(soft)
        gates = supernet.gates_from_mask(hard)
        idx = sample_task_batch(kb, task, table, counts, examples)
        logits = supernet.gated_apply(frozen, x_train[idx], mask, gates)
        task_loss = masked_task_loss(logits, y_train[idx], task)
        soft_cost = (
            c["stem"]
            + c["head_per_class"] * jnp.sum(task)
            + c["channel"] * jnp.sum(soft)
            + c["module"] * jnp.sum(gates)
        )
        penalty = jax.nn.relu(soft_cost / c["total"] - budget)
        return task_loss, penalty

    def loss_fn(st, k):
        model = nnx.merge(graphdef, st)
        ks, kb, kl = jax.random.split(k, 3)
        pick = jax.random.randint(ks, (scenarios_per_step,), 0, tasks.shape[0])
        task = tasks[pick]
        budget = jax.random.uniform(kb, (scenarios_per_step,), minval=lo, maxval=hi)
        scores = model(task, budget)
        tl, pen = jax.vmap(scenario_loss)(
            scores, task, budget, jax.random.split(kl, scenarios_per_step)
        )
        return jnp.mean(tl) + budget_weight * jnp.mean(pen), (jnp.mean(tl), jnp.mean(pen))

    def step(carry, k):
        st, o = carry
        (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(st, k)
        upd, o = opt.update(g, o, st)
        return (optax.apply_updates(st, upd), o), aux

    @jax.jit
    def run(st, k):
        (st, _), (tl, pen) = jax.lax.scan(step, (st, opt.init(st)), jax.random.split(k, steps))
        return st, jnp.mean(tl[-50:]), jnp.mean(pen[-50:])

    state, tl, pen = run(state, key)
    nnx.update(assembler, state)
    return {"task_loss": float(tl), "budget_penalty": float(pen)}
