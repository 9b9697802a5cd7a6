"""Latency models: how long a network's forward pass takes as a function of its hidden
widths, and the width rounding that makes pruned networks fast.

Fewer FLOPs is not a shorter wall time. On this project's CPU (XLA:CPU, `bench/
prune_speed.py`) a 3x3 conv with 17 output channels takes about twice as long as one with
16, and a digits CNN pruned to 3x fewer FLOPs at widths like 10/15/22 ran slower than the
original. Its first conv (one input channel, the largest activations) costs time out of
proportion to its FLOPs, partly whatever its width. Two remedies, both used by
`hyper.prune.prune_to_speedup`:

- `rounded_width`: kept widths are multiples of `round_to` (Torch-Pruning's ``round_to``),
  the ranking's widths rounded down and refilled, so rounding keeps the ranking's
  allocation across layers;
- a latency model (`Latency`): a callable ``latency(widths) -> seconds`` or a measured
  table ``{widths: seconds}`` (`measure_table` times one on this machine), so pruning can
  aim at a latency rather than a FLOPs count, and tests can inject a deterministic one.

`widths` are always the sizes of a target's structural groups, in
`hyper.symmetry.structural_groups` order.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from hyper import compact, symmetry
from hyper.errors import WeightspaceError
from hyper.target import Target

__all__ = [
    "Latency",
    "as_latency_model",
    "measure_table",
    "refill_widths",
    "rounded_width",
    "trim_widths",
    "width_grid",
]

Latency = Callable[[tuple[int, ...]], float] | Mapping[tuple[int, ...], float]
"""A latency model: ``latency(widths) -> seconds`` or a measured table ``{widths: seconds}``
(`measure_table`), `widths` the sizes of the structural groups in
`hyper.symmetry.structural_groups` order. Width vectors a table lacks are not candidates."""


def rounded_width(kept: int, size: int, round_to: int = 1, *, down: bool = False) -> int:
    """The width a group of `size` units keeps when the ranking leaves `kept` of them and
    widths are rounded to `round_to`.

    `kept` is rounded up (`down`: down) to a multiple of `round_to`, at most `size` and at
    least `round_to` (a group left whole keeps its width, multiple or not). A group smaller
    than `round_to` is not rounded: it keeps ``max(kept, 1)`` units (rounding would forbid
    pruning it at all, and it is too small to be slow). The result is always >= 1; up and
    down give the same set of widths over ``kept = 1..size``.

    Examples:
      >>> [rounded_width(k, 32, 8) for k in (1, 8, 9, 30)], rounded_width(3, 6, 8)
      ([8, 8, 16, 32], 3)
      >>> [rounded_width(k, 32, 8, down=True) for k in (1, 8, 9, 31, 32)]
      [8, 8, 8, 24, 32]
    """
    kept = max(int(kept), 1)
    if round_to <= 1 or size < round_to:
        return min(kept, size)
    if kept >= size:
        return size
    multiple = math.floor(kept / round_to) if down else math.ceil(kept / round_to)
    return min(size, round_to * max(multiple, 1))


def as_latency_model(latency: Latency | None) -> Callable[[tuple[int, ...]], float] | None:
    """A `Latency` as a callable (a table gives ``inf`` for widths it lacks); None stays
    None (prune by FLOPs)."""
    if latency is None or callable(latency):
        return latency
    if isinstance(latency, Mapping):
        table = {tuple(int(w) for w in k): float(v) for k, v in latency.items()}
        return lambda widths: table.get(tuple(int(w) for w in widths), math.inf)
    raise WeightspaceError(
        "latency must be a callable widths -> seconds or a table {widths: seconds}, "
        f"got {type(latency).__name__}"
    )


def width_grid(sizes: Sequence[int], round_to: int) -> list[tuple[int, ...]]:
    """Every width vector pruning with `round_to` can produce from groups of `sizes`
    (each entry a `rounded_width` of its group), largest first."""
    per = [
        sorted({rounded_width(k, s, round_to) for k in range(1, s + 1)}, reverse=True)
        for s in sizes
    ]
    return list(itertools.product(*per))


# `order` below: every unit of every group as ``(group, unit)``, lowest-ranked first (each
# group's units removed in that order; `hyper.prune`'s global ranking); `scores[g][u]`
# the score of unit `u` of group `g`; `cost(widths)`: FLOPs or a `Latency` model.


def refill_widths(widths, sizes, order, scores, round_to, cost, goal) -> tuple[int, ...]:
    """`widths` with removed units restored, a multiple of `round_to` at a time (one unit
    at a time in a group smaller than it), while ``cost(widths) <= goal``: each time in
    the group whose restored units (its best-scored removed ones) add the most score per
    unit of cost added, a knapsack's greedy (a restore that costs nothing comes first)."""
    removed: list[list[int]] = [[] for _ in sizes]
    for gi, u in order:
        removed[gi].append(u)
    w = list(widths)
    while True:
        best, here = None, cost(tuple(w))
        for gi, s in enumerate(sizes):
            if w[gi] >= s:
                continue
            nw = min(s, w[gi] + (round_to if s >= round_to else 1))
            gone = s - w[gi]  # the first `gone` of removed[gi] are removed
            gain = float(sum(scores[gi][u] for u in removed[gi][gone - (nw - w[gi]) : gone]))
            cand = (*w[:gi], nw, *w[gi + 1 :])
            c = cost(cand)
            if c > goal:
                continue
            key = (gain / (c - here) if c > here else math.inf, gain)
            if best is None or key > best[0]:
                best = (key, gi, nw)
        if best is None:
            return tuple(w)
        w[best[1]] = best[2]


def trim_widths(widths, sizes, order, scores, round_to, cost, goal) -> tuple[int, ...]:
    """`widths` with, while ``cost(widths) > goal``, one multiple of `round_to` removed
    at a time (one unit in a group smaller than it) from the group whose lowest-ranked kept
    units lose the least score per unit of cost saved (never below `rounded_width`'s
    minimum; returned over the goal when nothing is left to remove)."""
    removed: list[list[int]] = [[] for _ in sizes]
    for gi, u in order:
        removed[gi].append(u)
    w = list(widths)
    while (here := cost(tuple(w))) > goal:
        best = None
        for gi, s in enumerate(sizes):
            nw = rounded_width(w[gi] - 1, s, round_to, down=True)
            if nw >= w[gi]:
                continue
            gone = s - w[gi]
            lost = float(sum(scores[gi][u] for u in removed[gi][gone : gone + w[gi] - nw]))
            saved = here - cost((*w[:gi], nw, *w[gi + 1 :]))
            key = (lost / saved if saved > 0 else math.inf, lost)
            if best is None or key < best[0]:
                best = (key, gi, nw)
        if best is None:
            return tuple(w)  # nothing left to remove: the caller's check reports it
        w[best[1]] = best[2]
    return tuple(w)


def _narrowed(target: Target, params, groups, widths) -> tuple[Target, object]:
    masks = []
    for g, w in zip(groups, widths, strict=True):
        if not 1 <= int(w) <= g.size:
            raise WeightspaceError(f"width {w} for group {g.name!r} of {g.size} units")
        m = np.zeros(g.size, bool)
        m[: int(w)] = True
        masks.append(m)
    return compact.remove_units(target, params, masks, groups=groups, check=False)


def measure_table(
    target: Target,
    widths: Iterable[Sequence[int]],
    *,
    batch: int = 4096,
    repeats: int = 5,
    seed: int = 0,
) -> dict[tuple[int, ...], float]:
    """Measures ``{widths: seconds}`` on this machine: for every width vector, the network
    narrowed to those widths (its first units kept, initial weights), a jitted forward pass
    on `batch` random inputs; `repeats` interleaved rounds over all width vectors (so a
    change of machine load hits them alike), the median of each.

    Every vector is one compile (about 0.1-0.5 s on a CPU): keep the list short, e.g.
    `width_grid` with a `round_to`.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise WeightspaceError(f"measure_table: repeats must be an int >= 1, got {repeats!r}")
    groups = symmetry.structural_groups(target)
    params = target.init(jax.random.key(seed))
    x = np.random.default_rng(seed).standard_normal((batch, *target.input_shape))
    x = jax.numpy.asarray(x, np.float32)
    runs = {}
    for w in widths:
        w = tuple(int(v) for v in w)
        if len(w) != len(groups):
            raise WeightspaceError(
                f"measure_table: widths {list(w)} for {len(groups)} structural groups "
                f"{[g.name for g in groups]}"
            )
        t, p = _narrowed(target, params, groups, w)
        fn = jax.jit(t.pure_apply)
        jax.block_until_ready(fn(p, x))  # compile outside the timing
        runs[w] = (fn, p)
    times: dict[tuple[int, ...], list[float]] = {w: [] for w in runs}
    for _ in range(repeats):
        for w, (fn, p) in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(p, x))
            times[w].append(time.perf_counter() - t0)
    return {w: statistics.median(v) for w, v in times.items()}
