"""Weight datasets: the networks of model zoos with one label each, split by training run.

A `WeightDataset` holds networks (grouped by target) with one label each: the test
accuracy (``task="accuracy"``) or the generalisation gap, train minus test accuracy
(``task="gap"``). Every checkpointed epoch of a run is a sample (`load_zoos`);
`split_by_run` keeps all checkpoints of one training run on one side of a split.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper import zoo as zoo_lib
from hyper.architectures import target_from_config
from hyper.errors import WeightspaceError
from hyper.target import Params, Target
from metanets.graph_topology import common_kernel_window

__all__ = [
    "TASKS",
    "WeightDataset",
    "common_window",
    "load_zoos",
    "split_by_run",
    "targets_from_zoo",
]

TASKS = ("accuracy", "gap")


def split_by_run(runs: Any, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices `(train, test)`: a random `test_fraction` of the *runs* goes to test,
    with all of their checkpoints."""
    if not 0 < test_fraction < 1:
        raise WeightspaceError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    runs = np.asarray(runs)
    unique = np.unique(runs)
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(test_fraction * len(unique))))
    test_runs = rng.permutation(unique)[:n_test]
    is_test = np.isin(runs, test_runs)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


@dataclasses.dataclass
class WeightDataset:
    """Networks with labels.

    Attributes:
      targets / populations: one target and its population `[n_g, ...]` per group.
      group / member: `[M]` group of sample `i` and its index in the group's population.
      y: `[M]` labels; run: `[M]` int run ids; epoch: `[M]` checkpoint epochs.
      task: ``"accuracy"`` or ``"gap"``.
    """

    targets: list[Target]
    populations: list[Params]
    group: np.ndarray
    member: np.ndarray
    y: np.ndarray
    run: np.ndarray
    epoch: np.ndarray
    task: str = "accuracy"

    def __len__(self) -> int:
        return len(self.y)

    @property
    def homogeneous(self) -> bool:
        """Whether every group's target has the first's leaves, shapes, dtypes and roles
        (`Target.spec_differences`)."""
        first = self.targets[0]
        return not any(first.spec_differences(t) for t in self.targets[1:])

    def per_sample(self, features_of: Callable[[int], np.ndarray]) -> np.ndarray:
        """Per-sample feature rows `[M, ...]` from per-group feature matrices
        (``features_of(group)`` gives `[n_group, ...]`)."""
        feats = [features_of(g) for g in range(len(self.targets))]
        return np.stack([feats[g][m] for g, m in zip(self.group, self.member, strict=True)])


def _label(row: dict[str, Any], task: str) -> float:
    if task == "accuracy":
        return float(row["test_acc"])
    return float(row["train_acc"]) - float(row["test_acc"])


def load_zoos(
    directories: Sequence[str | os.PathLike],
    *,
    task: str = "accuracy",
    epochs: Sequence[int] | None = None,
) -> WeightDataset:
    """Every checkpoint of every run of the zoos (diverged runs left out) as a dataset.

    Args:
      directories: zoo directories (`hyper.zoo.build`); several zoos may hold different
        architectures (a heterogeneous dataset).
      task: ``"accuracy"`` (test accuracy) or ``"gap"`` (train - test accuracy).
      epochs: checkpoint epochs to use (default: all checkpointed epochs of each zoo).
    """
    if task not in TASKS:
        raise WeightspaceError(f"unknown task {task!r}; expected one of {TASKS}")
    if isinstance(directories, str | os.PathLike):
        directories = [directories]
    targets, pops, group, member, ys, runs, eps = [], [], [], [], [], [], []
    run_offset = 0
    for d in directories:
        first = zoo_lib.load(d)
        zoo_epochs = first.checkpoint_epochs
        use = zoo_epochs if epochs is None else [e for e in epochs if e in zoo_epochs]
        if not use:
            raise WeightspaceError(
                f"zoo {d}: none of the epochs {list(epochs or [])} was checkpointed"
            )
        rows = {(r["member"], r["epoch"]): r for r in first.metadata}
        per_group: dict[str, list[tuple[int, Params]]] = {}
        for e in use:
            z = first if e == first.groups[0].epoch else zoo_lib.load(d, epoch=e)
            for g in z.groups:
                per_group.setdefault(g.id, []).append((e, g.params))
        for g in first.groups:
            stacked, gi, count = [], len(targets), 0
            for e, params in per_group[g.id]:
                keep = []
                for i, m in enumerate(g.members):
                    r = rows[(m["member"], e)]
                    if r.get("diverged"):
                        continue
                    keep.append(i)
                    group.append(gi)
                    member.append(count)
                    count += 1
                    ys.append(_label(r, task))
                    runs.append(run_offset + m["member"])
                    eps.append(e)
                if keep:
                    sel = np.asarray(keep)
                    # on the host: indexing and concatenating device arrays eagerly compiles
                    # a program per leaf shape and selection size
                    stacked.append(jax.tree.map(lambda a, s=sel: np.asarray(a)[s], params))
            if stacked:
                targets.append(g.target)
                pops.append(jax.tree.map(lambda *a: jnp.asarray(np.concatenate(a)), *stacked))
        run_offset += max(m["member"] for m in first.members) + 1
    return WeightDataset(
        targets=targets,
        populations=pops,
        group=np.asarray(group, np.int32),
        member=np.asarray(member, np.int32),
        y=np.asarray(ys, np.float32),
        run=np.asarray(runs, np.int64),
        epoch=np.asarray(eps, np.int32),
        task=task,
    )


def targets_from_zoo(directory: str) -> list[Target]:
    """The targets of a zoo's groups (without loading weights)."""
    cfg = zoo_lib.read_config(os.path.join(os.path.abspath(directory), "zoo.json"))
    return [target_from_config(g["target"]) for g in cfg["groups"]]


def common_window(ds: WeightDataset) -> tuple[int, int]:
    """The edge window the dataset's graphs need."""
    return common_kernel_window(ds.targets)
