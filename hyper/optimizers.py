"""The platform's one optimizer vocabulary: every training loop builds its optax chain here.

`make_optimizer` expresses the trainer families of `hyper.train`, the hypernet runs'
``adam``/``sgd``, the metanets' AdamW with a warmup-cosine schedule (optionally clipped) and
the generators' Adam with cosine decay, each equal leaf for leaf and bit for bit to the chain
it replaced (tests/test_hyper_train.py). `hyper.train` re-exports these names.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from hyper.errors import WeightspaceError, WeightspaceTypeError

__all__ = ["OPTIMIZERS", "SCHEDULES", "make_optimizer"]


OPTIMIZERS = ("adam", "momentum", "rmsprop", "sgd")
"""Optimizer families of `make_optimizer`: ``adam`` (with weight decay: AdamW, decoupled),
``sgd``, ``momentum`` (SGD with heavy-ball momentum 0.9) and ``rmsprop`` (decay 0.9); the
last three apply weight decay as L2 (added to the gradient)."""

SCHEDULES = ("cosine", "warmup_cosine")
"""Learning-rate schedules of `make_optimizer` over `steps`: ``cosine`` decays from the
learning rate to 0 (`optax.cosine_decay_schedule`); ``warmup_cosine`` rises linearly from 0
over ``max(1, steps // 20)`` steps, then decays to 0 at ``max(steps, 2)``
(`optax.warmup_cosine_decay_schedule`)."""


def make_optimizer(
    name: str = "adam",
    learning_rate: float | jax.Array | optax.Schedule = 1e-3,
    *,
    schedule: str | None = None,
    steps: int | None = None,
    weight_decay: float | jax.Array | None = None,
    decay_mask: Any = None,
    momentum: float | None = None,
    clip_norm: float | None = None,
    **options: Any,
) -> optax.GradientTransformation:
    """The platform's one optax optimizer builder.

    The chain is ``[L2 decay] -> direction -> [decoupled decay] -> learning rate``, where
    the direction is ``scale_by_adam`` (adam), ``trace`` (momentum, or sgd with
    `momentum`), ``scale_by_rms`` (rmsprop) or nothing (sgd); weight decay comes after the
    direction for adam (AdamW) and before it otherwise (L2). With `clip_norm`, the gradient's
    global norm is clipped first (``chain(clip_by_global_norm, <the chain>)``). The chains
    equal optax's own aliases leaf for leaf: ``make_optimizer("adam", lr)`` is
    ``optax.adam(lr)``, with `weight_decay` it is ``optax.adamw``, and ``make_optimizer("sgd",
    lr, momentum=m)`` is ``optax.sgd(lr, momentum=m)``.

    Args:
      name: a family of `OPTIMIZERS`.
      learning_rate: a number (traced values too, e.g. under `optax.inject_hyperparams`) or
        an optax schedule.
      schedule: None (constant), or a name of `SCHEDULES` applied to `learning_rate` (a
        number) over `steps`.
      steps: the schedule's length in steps (>= 1 for cosine, >= 0 for warmup_cosine).
      weight_decay: the decay coefficient; None: no decay transform at all.
      decay_mask: a pytree of bools (or a function of the params giving one): the leaves
        that decay (`optax.add_decayed_weights`'s mask).
      momentum: sgd's momentum (None: plain sgd); for ``momentum`` the default is 0.9.
      clip_norm: clip the gradient to this global norm first.
      **options: further arguments of the direction transform (e.g. ``b1``, ``eps`` of
        adam, ``nesterov`` of momentum).

    Raises:
      WeightspaceError: an unknown family or schedule, a schedule without `steps`, or a
        non-positive learning rate or clip norm.
      TypeError: `options` the direction transform does not take.
    """
    if name not in OPTIMIZERS:
        raise WeightspaceError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    if isinstance(learning_rate, bool) or (
        isinstance(learning_rate, int | float) and not learning_rate > 0
    ):
        raise WeightspaceError(f"optimizer learning_rate must be > 0, got {learning_rate!r}")
    if schedule is not None:
        if schedule not in SCHEDULES:
            raise WeightspaceError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
        least = 1 if schedule == "cosine" else 0  # warmup_cosine clamps its own lengths
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < least:
            raise WeightspaceError(f"schedule {schedule!r} needs steps >= {least}, got {steps!r}")
        if schedule == "cosine":
            learning_rate = optax.cosine_decay_schedule(learning_rate, steps)
        else:
            learning_rate = optax.warmup_cosine_decay_schedule(
                0.0, learning_rate, max(1, steps // 20), max(steps, 2)
            )
    if clip_norm is not None and not clip_norm > 0:
        raise WeightspaceError(f"clip_norm must be > 0, got {clip_norm!r}")
    if name == "momentum" and momentum is None:
        momentum = 0.9
    if name == "adam":
        direction = [optax.scale_by_adam(**options)]
    elif name == "rmsprop":
        direction = [optax.scale_by_rms(decay=0.9, **options)]
    elif momentum is not None:
        direction = [optax.trace(decay=momentum, **options)]
    elif options:
        raise WeightspaceTypeError(f"plain sgd takes no options, got {sorted(options)}")
    else:
        direction = []
    decay = [] if weight_decay is None else [optax.add_decayed_weights(weight_decay, decay_mask)]
    # AdamW decays after the adaptive scaling (decoupled); the others add L2 to the gradient.
    core = direction + decay if name == "adam" else decay + direction
    opt = optax.chain(*core, optax.scale_by_learning_rate(learning_rate))
    if clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
    return opt
