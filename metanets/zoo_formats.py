"""Weight datasets from public zoo formats: the Small CNN Zoo (`hyper.small_cnn_zoo`) as
a `WeightDataset`, so that StatNN, GBM trees and graph metanets train on it as on our zoos.

Every row of the files is one sample (a run's checkpoint); rows whose weights or label are
not finite, or that our writer marked diverged, are left out (as `load_zoos` leaves out
diverged runs and NFN's loader asserts finite weights). Runs are the ``modeldir`` values
(our own member ids when the files came from a weightspace zoo, so splits by run agree).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyper import small_cnn_zoo as scz
from hyper.errors import WeightspaceError
from hyper.target import Target
from metanets.datasets import TASKS, WeightDataset

__all__ = ["load_small_cnn_zoo"]


def _label(row: dict, task: str) -> float:
    test = row.get("test_accuracy")
    if task == "accuracy":
        return np.nan if test is None else float(test)
    train = row.get("train_accuracy")
    return np.nan if test is None or train is None else float(train) - float(test)


def load_small_cnn_zoo(
    directory: str | os.PathLike,
    *,
    task: str = "accuracy",
    epochs: Sequence[int] | None = None,
    target: Target | None = None,
    input_shape: Sequence[int] | None = None,
) -> WeightDataset:
    """A Small CNN Zoo directory as a `WeightDataset` (one group per target,
    `hyper.small_cnn_zoo.read_groups`).

    Args:
      task: ``"accuracy"`` (``test_accuracy``) or ``"gap"`` (train - test accuracy).
      epochs: the ``step`` values to keep (default: all; the published final step is 86).
      target: read every row as a network of this target (default: from the files).
      input_shape: the published CNN's input shape (default: from ``config.dataset``).
    """
    if task not in TASKS:
        raise WeightspaceError(f"unknown task {task!r}; expected one of {TASKS}")
    groups = scz.read_groups(directory, target=target, input_shape=input_shape)
    runs: dict[str, int] = {}
    for g in groups:
        for r in g.rows:
            runs.setdefault(str(r["modeldir"]), r.get("weightspace.member"))
    if any(v is None for v in runs.values()) or len(set(runs.values())) != len(runs):
        runs = {k: i for i, k in enumerate(runs)}
    keep_epochs = None if epochs is None else {int(e) for e in epochs}
    targets, pops = [], []
    group, member, ys, run, eps = [], [], [], [], []
    for g in groups:
        flat = jax.tree.leaves(jax.tree.map(np.asarray, g.population))
        finite = np.all([np.isfinite(a.reshape(len(g.rows), -1)).all(axis=1) for a in flat], axis=0)
        keep = []
        for i, r in enumerate(g.rows):
            y = _label(r, task)
            if keep_epochs is not None and int(r["step"]) not in keep_epochs:
                continue
            if not finite[i] or not np.isfinite(y) or r.get("weightspace.diverged"):
                continue
            keep.append(i)
            group.append(len(targets))
            member.append(len(keep) - 1)
            ys.append(y)
            run.append(runs[str(r["modeldir"])])
            eps.append(int(r["step"]))
        if keep:
            sel = np.asarray(keep)
            targets.append(g.target)
            pops.append(jax.tree.map(lambda a, s=sel: jnp.asarray(np.asarray(a)[s]), g.population))
    if not targets:
        raise WeightspaceError(f"{os.fspath(directory)}: no finite, labelled rows to use")
    return WeightDataset(
        targets=targets,
        populations=pops,
        group=np.asarray(group, np.int32),
        member=np.asarray(member, np.int32),
        y=np.asarray(ys, np.float32),
        run=np.asarray(run, np.int64),
        epoch=np.asarray(eps, np.int32),
        task=task,
    )
