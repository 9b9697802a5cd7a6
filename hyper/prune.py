"""Structured pruning of one network: progressive global pruning by group importance to a
FLOPs speed-up or an accuracy floor, with fine-tuning and compact export.

`prune_pipeline`: trained network -> [an optional `edit`] -> short fine-tune -> progressive
pruning by group norm to a FLOPs speed-up (`prune_to_speedup`) or down to an accuracy floor
(`prune_to_floor`) -> fine-tune -> a compact standalone network
(`hyper.compact.remove_units`: smaller arrays, not masks). Without `edit` it is the
group-L2 baseline; ``importance="random"`` is the random baseline. `edit` is where a
network editor plugs in, e.g. a MetaPruning metanet (`metanets.metaprune`). Fewer FLOPs
is not less time: ``round_to`` keeps widths at multiples the hardware runs fast, and
``latency=`` prunes against a latency model instead of FLOPs (`hyper.latency`).

`export_pruned` / `load_pruned`: an Orbax checkpoint whose target description rebuilds
the compact model without the original (built-in architectures get a plain `make_target`
config with the new widths).
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

from hyper import compact, symmetry
from hyper import latency as latency_lib
from hyper.architectures import config_for_params, target_from_config
from hyper.checkpoint import CheckpointError, load_population, save_population
from hyper.data import Dataset
from hyper.errors import WeightspaceError
from hyper.population import of_one, only
from hyper.target import Params, Target
from hyper.train import TrainConfig, Trainer
from hyper.train import evaluate as evaluate_population

__all__ = [
    "Edit",
    "PruneResult",
    "UnreachableSpeedup",
    "accuracy",
    "check_reachable",
    "export_pruned",
    "finetune",
    "hidden_widths",
    "load_pruned",
    "prune_pipeline",
    "prune_to_floor",
    "prune_to_speedup",
]

Edit = Callable[[Target, Params], Params]
"""A network editor applied before pruning: ``edit(target, params) -> params`` (one network,
no `targets` axis; e.g. `metanets.metaprune.MetaPruner.edit_for`)."""


class UnreachableSpeedup(WeightspaceError):
    """A FLOPs speed-up that would remove every unit of some layer."""


_PRUNED = "weightspace-pruned"


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
        raise WeightspaceError(f"accuracy: split must be 'test' or 'train', got {split!r}")
    x, y = (
        (dataset.x_test, dataset.y_test) if split == "test" else (dataset.x_train, dataset.y_train)
    )
    fn = _recent(
        _EVAL, target, lambda: jax.jit(lambda p, x, y: evaluate_population(target, p, x, y))
    )
    return float(fn(of_one(params), jnp.asarray(x), jnp.asarray(y))["acc"][0])


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
        raise WeightspaceError(f"finetune: steps must be an int >= 0, got {steps!r}")
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
    state = tr.init(
        jax.random.key(seed), 1, learning_rate=learning_rate, params=of_one(params), shard=False
    )
    state, _ = tr.train_epoch(state, 0)
    if bool(state.diverged[0]):
        raise FloatingPointError(
            f"finetune: {target.name} diverged (non-finite loss); lower the learning rate"
        )
    return only(state.params)


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


def _widths_along(sizes, order, round_to, *, down=False) -> list[tuple[int, ...]]:
    """The kept widths after removing the first k units of `order`, for k = 0..len(order)
    (rounded up, or `down`; non-increasing in k for every group)."""
    left = list(sizes)
    out = [tuple(sizes)]
    for gi, _ in order:
        left[gi] -= 1
        out.append(
            tuple(
                latency_lib.rounded_width(n, s, round_to, down=down)
                for n, s in zip(left, sizes, strict=True)
            )
        )
    return out


def _masks_for(sizes, order, widths) -> list[np.ndarray]:
    """Keep masks removing the lowest-ranked ``size - width`` units of each group."""
    todo = [s - w for s, w in zip(sizes, widths, strict=True)]
    masks = [np.ones(s, bool) for s in sizes]
    for gi, u in order:
        if todo[gi] > 0:
            masks[gi][u] = False
            todo[gi] -= 1
    return masks


def _prune_step(
    target, params, groups, scores, goal, speedup, round_to=1, latency=None, final=True
):
    """Removes the fewest lowest-ranked units so that the cost <= goal: FLOPs (a binary
    search: FLOPs fall as units go) or ``latency(widths)`` (a scan in ranking order, widths
    rounded down: a measured latency need not fall monotonically, and a table holds only
    rounded widths).

    With `round_to` and FLOPs, two candidates: (a) the ranking's widths at the goal
    rounded down, then `hyper.latency.trim_widths` (while over the goal) and
    `hyper.latency.refill_widths` (while under it), both by score per cost; (b) the ranking
    walked on with widths rounded up until they meet the goal, then refilled. The one whose
    largest cut below the ranking's widths (relative) is smaller wins, (a) on a tie:
    rounding should not cut a layer far below what the ranking chose. (b) alone kept the
    digits CNN's first layer, cheap in FLOPs and dear in time, whole (16/8/24 where the
    ranking chose about 9/18/17); (a) alone cut the MNIST-1D CNN's middle layer to 8 where
    the ranking kept 13. A round before the last (`final` False) keeps the ranking's
    widths at its goal rounded up (an intermediate goal is a schedule): rounding down at
    every round compounded (MNIST-1D at 3x: 24/8/24, 2-3 points lost), and taking (b) at
    every round cut the digits CNN's middle layer to 8 before the last round could choose
    (16/8/24 again). Measured cost (bench/prune_speed.py, one loaded run): MNIST-1D at 3x
    0.6 points below unrounded pruning at 16/16/24 where (b) at every round gave +0.1."""
    order, blocked = _removal_order(scores)
    sizes = [g.size for g in groups]
    along = _widths_along(sizes, order, round_to, down=True)
    rounding = f" with widths rounded to multiples of {round_to}" if round_to > 1 else ""

    def cut(widths):
        masks = _masks_for(sizes, order, widths)
        return compact.remove_units(target, params, masks, groups=groups, check=False)

    cost_at: dict[tuple[int, ...], float] = {}

    def cost(w):
        if w not in cost_at:
            cost_at[w] = float(latency(w)) if latency else compact.count_flops(cut(w)[0])
        return cost_at[w]

    if latency is not None:
        for w in along:
            if cost(w) <= goal:
                if round_to > 1:
                    w = latency_lib.refill_widths(w, sizes, order, scores, round_to, cost, goal)
                return cut(w)
        best = min(cost_at, key=cost_at.get)
        raise UnreachableSpeedup(
            f"latency speed-up {speedup:g}x cannot be reached{rounding}: the fastest "
            f"candidate widths {list(best)} take {cost_at[best]:.4g} s > {goal:.4g} s "
            f"(groups {[g.name for g in groups]})"
        )
    f_all = cost(along[-1])
    if f_all > goal:
        g = groups[blocked]
        raise UnreachableSpeedup(
            f"speed-up {speedup:g}x cannot be reached{rounding}: even the fewest units per "
            f"group leave {int(f_all):,} FLOPs > {int(goal):,}; it would remove every channel "
            f"of layer {_layer_names(g)} (group {g.name!r})"
        )
    ranked = _widths_along(sizes, order, 1)
    lo, hi = 0, len(order)  # cost(ranked[hi]) <= goal
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(ranked[mid]) <= goal:
            hi = mid
        else:
            lo = mid + 1
    if round_to == 1:
        return cut(ranked[lo])
    if not final:
        up = zip(ranked[lo], sizes, strict=True)
        return cut(tuple(latency_lib.rounded_width(v, n, round_to) for v, n in up))
    u = ranked[lo]
    down = tuple(
        latency_lib.rounded_width(v, n, round_to, down=True) for v, n in zip(u, sizes, strict=True)
    )
    a = latency_lib.trim_widths(down, sizes, order, scores, round_to, cost, goal)
    a = latency_lib.refill_widths(a, sizes, order, scores, round_to, cost, goal)
    up = _widths_along(sizes, order, round_to)  # rounded up along the ranking: the first
    k, hi = lo, len(order)  # that fits (cost(up[-1]) = f_all <= goal)
    while k < hi:
        mid = (k + hi) // 2
        if cost(up[mid]) <= goal:
            hi = mid
        else:
            k = mid + 1
    b = latency_lib.refill_widths(up[k], sizes, order, scores, round_to, cost, goal)

    def worst_cut(w):  # the largest cut below the ranking's widths, relative
        return max((v - x) / v for v, x in zip(u, w, strict=True))

    return cut(min((a, b), key=worst_cut))


def _check_prunable(target: Target) -> list[symmetry.Group]:
    groups = symmetry.structural_groups(target)
    if not groups:
        raise WeightspaceError(f"{target.name} has no prunable hidden units (no structural groups)")
    left = symmetry.left_out(target)
    if left:  # pruning would silently cover only the other layers
        lines = "; ".join(
            f"layer {o.layer!r} ({o.path} axis {o.axis}): {o.primitive} {o.reason}" for o in left
        )
        raise WeightspaceError(
            f"{target.name}: cannot prune: layers with weights are left out of the structural "
            f"groups: {lines}. Rewrite those layers without the named primitive, or prune "
            "chosen groups yourself with hyper.compact.remove_units"
        )
    return groups


def _check_prune_args(speedup, steps, importance, normalizer) -> None:
    if speedup is not None and not (
        isinstance(speedup, int | float) and math.isfinite(speedup) and speedup >= 1
    ):
        raise WeightspaceError(f"speedup must be a finite number >= 1, got {speedup!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise WeightspaceError(f"prune steps must be an int >= 1, got {steps!r}")
    if importance not in compact.IMPORTANCE_METHODS:
        raise WeightspaceError(
            f"importance {importance!r}; expected one of {compact.IMPORTANCE_METHODS}"
        )
    if normalizer not in compact.IMPORTANCE_NORMALIZERS:
        raise WeightspaceError(
            f"normalizer {normalizer!r}; expected one of {compact.IMPORTANCE_NORMALIZERS}"
        )


def check_reachable(target: Target, speedup: float, *, round_to: int = 1) -> None:
    """Raises `UnreachableSpeedup` (naming the layer) if keeping one unit in every group
    (`rounded_width` of it with `round_to`) still leaves more than ``FLOPs / speedup``;
    cheap (no weights needed)."""
    _check_prune_args(speedup, 1, "l2", None)
    _check_round_to(round_to)
    groups = _check_prunable(target)
    params = jax.tree.unflatten(target.treedef, [np.zeros(s.shape, s.dtype) for s in target.spec])
    scores = [np.arange(g.size, dtype=np.float32) for g in groups]
    order, blocked = _removal_order(scores)
    sizes = [g.size for g in groups]
    masks = _masks_for(sizes, order, _widths_along(sizes, order, round_to)[-1])
    t, _ = compact.remove_units(target, params, masks, groups=groups, check=False)
    goal = compact.count_flops(target) / speedup
    f_min = compact.count_flops(t)
    if f_min > goal:
        g = groups[blocked]
        raise UnreachableSpeedup(
            f"speed-up {speedup:g}x cannot be reached"
            f"{f' with widths rounded to multiples of {round_to}' if round_to > 1 else ''}: "
            f"even the fewest units per group leave "
            f"{f_min:,} FLOPs > {int(goal):,}; it would remove every channel of layer "
            f"{_layer_names(g)} (group {g.name!r})"
        )


def _check_round_to(round_to) -> None:
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise WeightspaceError(f"round_to must be an int >= 1, got {round_to!r}")


def prune_to_speedup(
    target: Target,
    params: Params,
    speedup: float,
    *,
    importance: str = "l2",
    normalizer: str | None = "mean",
    steps: int = 4,
    key: jax.Array | None = None,
    round_to: int = 1,
    latency: latency_lib.Latency | None = None,
) -> tuple[Target, Params]:
    """Progressive global structured pruning to ``FLOPs <= FLOPs_0 / speedup``.

    In `steps` rounds the FLOPs goal falls geometrically to the final one; each round
    scores every hidden unit of every structural group (`hyper.compact.group_importance`:
    ``"l2"``, ``"l1"`` or ``"random"``, normalised per group by `normalizer` so groups
    compare on one ranking), then physically removes the fewest lowest-ranked units that
    meet the round's goal. Every group keeps at least one unit.

    With `round_to` > 1 every kept width is a multiple of `round_to` (`rounded_width`: a
    group left whole keeps its width; a group smaller than `round_to` is not rounded and
    keeps >= 1 unit); FLOPs are counted on the rounded network. The last round keeps the
    ranking's allocation across layers: of the ranking's widths rounded down (then trimmed
    and refilled a multiple at a time by score per FLOP) and the ranking walked on with
    widths rounded up, the candidate that cuts no layer as far below its ranked width.
    On this project's CPU (XLA, `bench/prune_speed.py`) a conv with 17 output channels
    takes about twice as long as one with 16, so unrounded widths can make a
    network with fewer FLOPs slower.

    With `latency` (`Latency`: a callable ``widths -> seconds`` or a measured table) the
    goal is ``latency(widths) <= latency(widths_0) / speedup`` instead of FLOPs: each
    round keeps the ranking and takes the first candidate (fewest units removed, widths
    rounded down) that meets it, then refills multiples by score per second while it
    holds. A table restricts the candidates to its width vectors (measured ones are
    noisy: a refill the table calls free is taken first).

    Returns:
      ``(compact_target, compact_params)`` (a derived target; `export_pruned` gives it a
      standalone config).

    Raises:
      WeightspaceError: a speed-up below 1, an unknown importance, or a target with no hidden
        units; `UnreachableSpeedup` (a WeightspaceError) naming the layer that would lose every
        channel.
    """
    _check_prune_args(speedup, steps, importance, normalizer)
    _check_round_to(round_to)
    cost = latency_lib.as_latency_model(latency)
    if importance == "random" and key is None:
        key = jax.random.key(0)
    if cost is None:
        f0 = compact.count_flops(target)
    else:
        w0 = tuple(g.size for g in _check_prunable(target))
        f0 = float(cost(w0))
        if not (math.isfinite(f0) and f0 > 0):
            raise WeightspaceError(
                f"latency of the unpruned widths {list(w0)} is {f0!r}: the latency model "
                "must give a finite time > 0 for them (a table must hold them)"
            )
    final = f0 / speedup
    t, p = target, params
    for s in range(1, steps + 1):
        groups = _check_prunable(t)
        ks = None if key is None else jax.random.fold_in(key, s)
        scores = _importance(t, p, groups, importance, normalizer, ks)
        goal = final if s == steps else f0 / speedup ** (s / steps)
        t, p = _prune_step(t, p, groups, scores, goal, speedup, round_to, cost, s == steps)
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
    round_to: int = 1,
    latency: latency_lib.Latency | None = None,
) -> tuple[Target, Params]:
    """Prunes in rounds of `factor`x FLOPs speed-up (latency speed-up with `latency`;
    widths rounded by `round_to`, as `prune_to_speedup`) while the training-split accuracy
    (no fine-tuning between rounds) stays >= `floor`; returns the last network above it
    (the input itself if the first round already falls below)."""
    if not (isinstance(floor, int | float) and 0 <= floor <= 1):
        raise WeightspaceError(f"accuracy floor must lie in [0, 1], got {floor!r}")
    if not (isinstance(factor, int | float) and factor > 1):
        raise WeightspaceError(f"factor must be > 1, got {factor!r}")
    _check_prune_args(factor, 1, importance, normalizer)
    _check_round_to(round_to)
    t, p = target, params
    for i in range(max_rounds):
        ks = None if key is None else jax.random.fold_in(key, i)
        try:
            nt, np_ = prune_to_speedup(
                t,
                p,
                factor,
                importance=importance,
                normalizer=normalizer,
                steps=1,
                key=ks,
                round_to=round_to,
                latency=latency,
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
        edit, before fine-tuning; absent without an edit), ``"finetuned"``
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
    root = target.config.get("derived_from", target.config) if target.config else None
    while isinstance(root, dict) and "derived_from" in root:
        root = root["derived_from"]
    cfg = config_for_params(root, params) if isinstance(root, dict) else None
    if cfg is None:
        return target, None
    return target_from_config(cfg), cfg


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


def prune_pipeline(
    target: Target,
    params: Params,
    dataset: Dataset,
    *,
    speedup: float | None = None,
    accuracy_floor: float | None = None,
    edit: Edit | None = None,
    importance: str = "l2",
    normalizer: str | None = "mean",
    prune_steps: int = 4,
    finetune_before: int = 100,
    finetune_after: int = 300,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    round_to: int = 1,
    latency: latency_lib.Latency | None = None,
) -> PruneResult:
    """Trained network -> [edit] -> fine-tune -> prune -> fine-tune -> compact.

    Exactly one of `speedup` (FLOPs ratio, `prune_to_speedup`) and `accuracy_floor`
    (`prune_to_floor`) is given. `edit` (``edit(target, params) -> params``, e.g. a
    MetaPruning metanet's `metanets.metaprune.MetaPruner.edit_for`) is applied to the
    trained network first. The fine-tune budget (`finetune_before`, `finetune_after` steps
    of Adam at `learning_rate`) is the same with and without `edit`, so the run without it
    is the group-L2 baseline (``importance="random"``: the random one). `round_to` and
    `latency` are those of `prune_to_speedup` (with `latency`, `speedup` is a latency
    ratio).
    """
    if (speedup is None) == (accuracy_floor is None):
        raise WeightspaceError("prune_pipeline: give exactly one of speedup and accuracy_floor")
    if accuracy_floor is not None and not (
        isinstance(accuracy_floor, int | float) and 0 <= accuracy_floor <= 1
    ):
        raise WeightspaceError(f"accuracy floor must lie in [0, 1], got {accuracy_floor!r}")
    _check_prune_args(speedup, prune_steps, importance, normalizer)
    _check_round_to(round_to)
    latency_lib.as_latency_model(latency)  # refuse a wrong type before any fine-tuning
    for name, v in (("finetune_before", finetune_before), ("finetune_after", finetune_after)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise WeightspaceError(f"prune_pipeline: {name} must be an int >= 0, got {v!r}")
    target.validate(params)
    _check_prunable(target)
    if speedup is not None and latency is None:  # before any fine-tuning
        check_reachable(target, speedup, round_to=round_to)
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    acc = {"original": accuracy(target, params, dataset)}
    f0, n0 = compact.count_flops(target), compact.count_params(target)
    if edit is not None:
        params = edit(target, params)
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
            round_to=round_to,
            latency=latency,
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
            round_to=round_to,
            latency=latency,
        )
    t, cfg = _standalone(t, p)
    acc["pruned"] = accuracy(t, p, dataset)
    p = finetune(t, p, dataset, steps=finetune_after, seed=seed + 1, **ft)
    acc["final"] = accuracy(t, p, dataset)
    info = {
        "speedup_goal": speedup,
        "accuracy_floor": accuracy_floor,
        "metanet": edit is not None,  # the record's key since MetaPruning was the one edit
        "importance": importance,
        "normalizer": normalizer,
        "prune_steps": prune_steps,
        "round_to": round_to,
        "cost": "flops" if latency is None else "latency",
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
    pop = of_one(result.params)
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


def load_pruned(
    directory: str | os.PathLike, target: Target | None = None
) -> tuple[Target, Params, dict[str, Any]]:
    """``(target, params, record)`` of a network written by `export_pruned`.

    Args:
      target: needed only when the pruned network's original has no rebuild config (a
        network you built yourself): that original (or the compact target itself); the
        compact target is derived from it at the stored sizes.
    """
    target, pop, meta = load_population(directory, target)
    if meta.get("format") != _PRUNED:
        raise CheckpointError(f"{os.path.abspath(os.fspath(directory))} holds no pruned network")
    return target, only(pop), meta
