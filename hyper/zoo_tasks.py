"""Class-subset tasks of a zoo: the ``classes`` grid axis and prompted-class evaluation.

A zoo member with ``"classes": [0, 3, 7]`` trains only on the training examples of those
classes (its training subset is intersected with them, after `train_fraction` has drawn
it) and is evaluated as a task network: on the examples of those classes only, the
prediction is the argmax of the logits over those classes only (task-aware evaluation,
as in Tina/Text-to-Model and the merging papers' per-task heads). Its metadata rows
record ``classes`` and the prompted-class ``train_loss/train_acc/test_loss/test_acc``.

`prompted_metrics` is also what `generators.novelty` uses to score generated task
networks, so zoo members and generated networks are measured the same way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper.conv_matmul import for_populations
from hyper.errors import WeightspaceError
from hyper.target import Params, Target

__all__ = [
    "check_class_range",
    "class_masks",
    "prompted_metrics",
    "task_evaluator",
    "validate_classes",
]


def validate_classes(values: Any) -> list[list[int]]:
    """The ``classes`` grid entry, checked and made canonical (each subset sorted).

    Args:
      values: a list of class subsets, each a non-empty list of distinct ints >= 0.

    Returns:
      the subsets as sorted lists of ints.

    Raises:
      WeightspaceError: not a list of lists, an empty subset, a non-int or negative class,
        a class repeated in a subset, or one subset given twice.
    """
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise WeightspaceError(
            f"grid['classes']: expected a non-empty list of class subsets "
            f"(e.g. [[0, 1], [2, 3, 4]]), got {values!r}"
        )
    out: list[list[int]] = []
    for v in values:
        if isinstance(v, str | bytes) or not isinstance(v, Sequence) or not len(v):
            raise WeightspaceError(
                f"grid['classes']: each value must be a non-empty list of class ids, got {v!r}"
            )
        if not all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in v):
            raise WeightspaceError(f"grid['classes']: {list(v)!r} holds a non-integer class id")
        subset = sorted(int(c) for c in v)
        if subset[0] < 0:
            raise WeightspaceError(f"grid['classes']: {list(v)!r} holds a negative class id")
        if len(set(subset)) != len(subset):
            raise WeightspaceError(f"grid['classes']: {list(v)!r} repeats a class id")
        if subset in out:
            raise WeightspaceError(f"grid['classes']: the subset {subset} is given twice")
        out.append(subset)
    return out


def check_class_range(subsets: Sequence[Sequence[int]], num_classes: int, dataset: str) -> None:
    """Raises a `WeightspaceError` naming the subset if a class id is not below
    `num_classes` (the dataset's number of classes)."""
    for s in subsets:
        bad = [c for c in s if c >= num_classes]
        if bad:
            raise WeightspaceError(
                f"grid['classes']: {list(s)} holds class ids {bad}; dataset {dataset!r} has "
                f"{num_classes} classes (0..{num_classes - 1})"
            )


def class_masks(subsets: Sequence[Sequence[int] | None], num_classes: int) -> np.ndarray:
    """`[len(subsets), num_classes]` bool: row `i` is True on subset `i`'s classes (all
    True for None: the whole task)."""
    m = np.zeros((len(subsets), num_classes), bool)
    for i, s in enumerate(subsets):
        if s is None:
            m[i] = True
        else:
            m[i, np.asarray(list(s), int)] = True
    return m


def prompted_metrics(
    target: Target,
    population: Params,
    x: jax.Array,
    y: jax.Array,
    class_mask: jax.Array,
    *,
    batch_size: int = 1024,
) -> dict[str, jax.Array]:
    """Loss and accuracy of every member on the examples of its own classes, the logits
    restricted to those classes; in chunks of examples. Pure and traceable.

    Args:
      target: the target.
      population: `[targets, ...]`.
      x: `[examples, ...]` inputs; y: `[examples]` int labels.
      class_mask: `[targets, classes]` bool, each member's prompted classes.
      batch_size: examples per chunk (bounds the activation memory).

    Returns:
      ``{"loss": [targets], "acc": [targets]}``: the mean cross-entropy of the restricted
      softmax and the accuracy of the restricted argmax, over the examples whose label is
      among the member's classes (NaN for a member with no such example).
    """
    n = x.shape[0]
    chunks = max(1, math.ceil(n / batch_size))
    size = math.ceil(n / chunks)
    pad = chunks * size - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    # padded examples get the label -1: no member's classes hold it, so their weight is 0
    yp = jnp.concatenate([y, jnp.full((pad,), -1, y.dtype)]) if pad else y
    xs = xp.reshape(chunks, size, *x.shape[1:])
    ys = yp.reshape(chunks, size)
    mask = jnp.asarray(class_mask, bool)
    apply = for_populations(target.pure_apply)  # the fast CPU convolutions

    def chunk(carry, inp):
        xc, yc = inp
        logits = jax.vmap(apply, in_axes=(0, None))(population, xc)  # [targets, size, C]
        masked = jnp.where(mask[:, None, :], logits, -jnp.inf)
        yi = jnp.clip(yc, 0, logits.shape[-1] - 1)
        w = (yc >= 0)[None, :] & jnp.take_along_axis(mask, yi[None, :], axis=1)
        picked = jnp.take_along_axis(masked, yi[None, :, None], axis=-1)[..., 0]
        ce = jnp.where(w, jax.nn.logsumexp(masked, axis=-1) - picked, 0.0)
        correct = w & (jnp.argmax(masked, -1) == yi[None, :])
        loss_sum, acc_sum, count = carry
        return (
            loss_sum + ce.sum(-1),
            acc_sum + correct.sum(-1),
            count + w.sum(-1),
        ), None

    t = mask.shape[0]
    zeros = jnp.zeros((t,), jnp.float32)
    (loss_sum, acc_sum, count), _ = jax.lax.scan(chunk, (zeros, zeros, zeros), (xs, ys))
    return {"loss": loss_sum / count, "acc": acc_sum / count}


def task_evaluator(target: Target, dataset: Any, *, batch_size: int = 1024):
    """``evaluate(population, class_mask)`` -> ``{"train_loss", "train_acc", "test_loss",
    "test_acc"}`` (each `[targets]`), `prompted_metrics` on both splits of `dataset`: the
    metrics of a class-subset zoo's rows, in the names `hyper.train.Trainer.evaluate` uses."""
    fn = jax.jit(functools.partial(prompted_metrics, target, batch_size=batch_size))
    splits = {
        "train": (jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)),
        "test": (jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)),
    }

    def evaluate(population: Params, class_mask: Any) -> dict[str, jax.Array]:
        out = {}
        for name, (x, y) in splits.items():
            m = fn(population, x, y, jnp.asarray(class_mask, bool))
            out[f"{name}_loss"], out[f"{name}_acc"] = m["loss"], m["acc"]
        return out

    return evaluate
