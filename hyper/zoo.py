"""Model-zoo builder: a hyperparameter grid x seeds, trained as vmapped populations.

A zoo is the dataset of weight-space learning: many networks of one architecture family,
trained with varied hyperparameters, saved at several epochs with their metrics
(Small-CNN-Zoo style). Members that can share one compiled training step (same
activation, dropout and optimizer) form a *group* and train together with `jax.vmap`;
learning rate, weight decay, init scale, train fraction and seed vary freely inside a
group. An optional ``classes`` axis trains members on class subsets (task networks,
`hyper.zoo_tasks`).

Layout of a zoo directory::

  zoo.json                 the configuration, the groups and the member table
  metadata.jsonl|csv       one row per member and checkpointed epoch (metrics)
  groups/<gid>/<epoch>/    Orbax checkpoints: params, optimizer state, JSON rows

Every member's randomness comes from ``fold_in(key(seed), member)``: grouping, order and
interruption do not change any member's result, and `resume=True` continues a killed
run to the same final weights and metadata.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper import data as data_lib
from hyper import sharding, zoo_format, zoo_tasks
from hyper.architectures import ACTIVATIONS, target_from_config
from hyper.checkpoint import (
    CheckpointError,
    PopulationCheckpointer,
    prepare_dir,
    target_from_stored,
)
from hyper.errors import WeightspaceError, WeightspaceTypeError
from hyper.target import Params, Target
from hyper.train import OPTIMIZERS, TrainConfig, Trainer
from hyper.zoo_format import read_config
from hyper.zoo_presets import PRESETS, ZooPreset

__all__ = [
    "HPARAMS",
    "PRESETS",
    "Zoo",
    "ZooGroup",
    "ZooPreset",
    "build",
    "load",
    "read_config",
    "summarize",
]

HPARAMS = (
    "learning_rate",
    "weight_decay",
    "init_scale",
    "train_fraction",
    "activation",
    "dropout",
    "optimizer",
)
"""Grid axes. The last three change the program and split members into groups."""

TASK_AXIS = "classes"
"""An optional grid axis: class subsets, one task per value (`hyper.zoo_tasks`)."""

_STRUCTURAL = ("activation", "dropout", "optimizer")


def _default_checkpoint_epochs(epochs: int) -> list[int]:
    return sorted({e for e in (0, 1, 2, 5, 10) if e <= epochs} | {epochs})


def _validate_grid(grid: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    if not isinstance(grid, Mapping):
        raise WeightspaceTypeError(
            f"grid must be a mapping of hyperparameter -> list, got {type(grid).__name__}"
        )
    out: dict[str, list[Any]] = {}
    for k, values in grid.items():
        if k == TASK_AXIS:
            out[k] = zoo_tasks.validate_classes(values)
            continue
        if k not in HPARAMS:
            raise WeightspaceError(
                f"grid: unknown hyperparameter {k!r}; expected one of {(*HPARAMS, TASK_AXIS)}"
            )
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            values = [values]
        values = list(values)
        if not values:
            raise WeightspaceError(f"grid[{k!r}]: empty list of values")
        for v in values:
            if k == "activation":
                if not isinstance(v, str) or v not in ACTIVATIONS:
                    raise WeightspaceError(
                        f"grid['activation']: unknown {v!r}; expected one of {sorted(ACTIVATIONS)}"
                    )
            elif k == "optimizer":
                if not isinstance(v, str) or v not in OPTIMIZERS:
                    raise WeightspaceError(
                        f"grid['optimizer']: unknown {v!r}; expected one of {sorted(OPTIMIZERS)}"
                    )
            else:
                if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
                    raise WeightspaceError(f"grid[{k!r}]: {v!r} is not a finite number")
                lo_ok = {
                    "learning_rate": v > 0,
                    "weight_decay": v >= 0,
                    "init_scale": v > 0,
                    "train_fraction": 0 < v <= 1,
                    "dropout": 0 <= v < 1,
                }[k]
                if not lo_ok:
                    raise WeightspaceError(f"grid[{k!r}]: value {v!r} out of range")
        # By value: 1 and 1.0 are the same learning rate.
        if len({v if isinstance(v, str) else float(v) for v in values}) != len(values):
            raise WeightspaceError(f"grid[{k!r}]: duplicate values {values}")
        out[k] = values
    return out


def _member_table(grid: Mapping[str, list[Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    keys = list(HPARAMS) + ([TASK_AXIS] if TASK_AXIS in grid else [])
    members = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        for seed in seeds:
            members.append(
                {"member": len(members), "seed": int(seed), **dict(zip(keys, combo, strict=True))}
            )
    return members


@dataclasses.dataclass
class ZooGroup:
    """Members sharing one compiled training step.

    Attributes:
      id: group id, e.g. ``"g0"``.
      target: the group's `Target` (its activation and dropout are fixed).
      members: member rows of the zoo table (member id, seed, hyperparameters).
      params: the population at the loaded epoch, `[len(members), ...]` (None until loaded).
      epoch: the epoch `params` belongs to.
    """

    id: str
    target: Target
    members: list[dict[str, Any]]
    params: Params | None = None
    epoch: int | None = None


@dataclasses.dataclass
class Zoo:
    """A loaded (or freshly built) zoo.

    Attributes:
      directory: absolute path.
      config: the zoo configuration (preset, dataset, grid, seeds, epochs, ...).
      groups: one `ZooGroup` per compiled program.
      metadata: one row per member and checkpointed epoch, sorted by (member, epoch).
    """

    directory: str
    config: dict[str, Any]
    groups: list[ZooGroup]
    metadata: list[dict[str, Any]]

    @property
    def members(self) -> list[dict[str, Any]]:
        return sorted((m for g in self.groups for m in g.members), key=lambda m: m["member"])

    @property
    def num_members(self) -> int:
        return sum(len(g.members) for g in self.groups)

    @property
    def checkpoint_epochs(self) -> list[int]:
        return list(self.config["checkpoint_epochs"])

    def rows(self, epoch: int | None = None) -> list[dict[str, Any]]:
        """Metadata rows of one epoch (default: the last checkpointed epoch)."""
        epoch = self.checkpoint_epochs[-1] if epoch is None else epoch
        return [r for r in self.metadata if r["epoch"] == epoch]

    def group(self, gid: str) -> ZooGroup:
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(f"no group {gid!r}; groups: {[g.id for g in self.groups]}")


# ---------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------


def _resolve_config(
    preset: str,
    grid: Mapping[str, Any] | None,
    seeds: int | Sequence[int],
    epochs: int | None,
    checkpoint_epochs: Sequence[int] | None,
    batch_size: int | None,
    seed: int,
    arch: Mapping[str, Any] | None,
    dataset: str | None,
    metadata_format: str,
) -> dict[str, Any]:
    if preset not in PRESETS:
        raise WeightspaceError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    full_grid = _validate_grid({**p.grid, **dict(grid or {})})
    for k in HPARAMS:
        if k not in full_grid:
            raise WeightspaceError(f"grid: missing hyperparameter {k!r}")
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        if seeds < 1:
            raise WeightspaceError(f"seeds must be >= 1, got {seeds}")
        seeds = list(range(int(seeds)))
    if isinstance(seeds, str | bytes | bool) or not isinstance(seeds, Sequence):
        raise WeightspaceError(f"seeds must be a count or a list of ints, got {seeds!r}")
    if not all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in seeds):
        raise WeightspaceError(f"seeds must be ints, got {list(seeds)}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise WeightspaceError(f"seeds must be a non-empty list of distinct ints, got {seeds}")
    epochs = p.epochs if epochs is None else int(epochs)
    if epochs < 0:
        raise WeightspaceError(f"epochs must be >= 0, got {epochs}")
    if checkpoint_epochs is None:
        checkpoint_epochs = p.checkpoint_epochs or _default_checkpoint_epochs(epochs)
    ce = sorted({int(e) for e in checkpoint_epochs})
    if not ce or ce[0] < 0 or ce[-1] > epochs:
        raise WeightspaceError(
            f"checkpoint epochs must lie in [0, {epochs}], got {list(checkpoint_epochs)}"
        )
    if ce[-1] != epochs:
        ce.append(epochs)  # the final weights are always saved
    batch_size = p.batch_size if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise WeightspaceError(f"batch_size must be >= 1, got {batch_size}")
    ds = dataset or p.dataset
    if ds not in data_lib.available():
        raise WeightspaceError(f"unknown dataset {ds!r}; available: {data_lib.available()}")
    return zoo_format.zoo_config(
        preset=preset,
        dataset=ds,
        arch=arch or p.arch,
        grid=full_grid,
        seeds=seeds,
        epochs=epochs,
        checkpoint_epochs=ce,
        batch_size=batch_size,
        seed=seed,
        metadata_format=metadata_format,
    )


def _group_members(config: Mapping[str, Any], input_shape: Sequence[int]):
    members = _member_table(config["grid"], config["seeds"])
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for m in members:
        groups.setdefault(tuple(repr(m[k]) for k in _STRUCTURAL), []).append(m)
    out = []
    for i, ms in enumerate(groups.values()):
        tcfg = {
            **config["arch"],
            "input_shape": list(input_shape),
            "activation": ms[0]["activation"],
            "dropout": float(ms[0]["dropout"]),
        }
        out.append({"id": f"g{i}", "target": tcfg, "optimizer": ms[0]["optimizer"], "members": ms})
    return members, out


_IDENTITY = (
    "preset",
    "dataset",
    "arch",
    "grid",
    "seeds",
    "epochs",
    "checkpoint_epochs",
    "batch_size",
    "seed",
    "metadata_format",
)
"""Configuration keys that make two zoos the same zoo (a build may resume only its own)."""


def _zoo_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return [
        k
        for k in _IDENTITY
        if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)
    ]


def build(
    out_dir: str | os.PathLike,
    preset: str = "digits-mlp",
    *,
    grid: Mapping[str, Any] | None = None,
    seeds: int | Sequence[int] = 8,
    epochs: int | None = None,
    checkpoint_epochs: Sequence[int] | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    arch: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    metadata_format: str = "jsonl",
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> Zoo:
    """Builds (or resumes) a zoo: the grid x seeds, trained group by group with vmap.

    Args:
      out_dir: the zoo directory.
      preset: a key of `PRESETS`.
      grid: hyperparameter -> list of values, overriding the preset's axes. An optional
        ``"classes"`` entry lists class subsets (e.g. ``[[0, 1, 2], [3, 4]]``): each is one
        more grid axis value; its members train on those classes only, and their rows
        record ``"classes"`` and the accuracy over those classes (`hyper.zoo_tasks`).
      seeds: number of seeds (0..n-1) or an explicit list.
      epochs: training epochs (default: the preset's).
      checkpoint_epochs: epochs to save; the last epoch is always saved.
      batch_size: examples per step (default: the preset's).
      seed: the zoo's root seed.
      arch: overrides the preset's architecture config.
      dataset: overrides the preset's dataset.
      metadata_format: ``"jsonl"`` or ``"csv"``.
      overwrite: replace a directory holding another zoo (or anything else).
      resume: continue an interrupted build of the same zoo from its last checkpoints.
      progress: show a progress bar.
      stop_after_epochs: train at most this many epochs in this call, then return the
        partial zoo (for tests of interruption; the build can be resumed).

    Returns:
      the zoo, loaded at its final epoch.

    Raises:
      ValueError: bad arguments, or `out_dir` holds something else and neither
        `overwrite` nor (for the same zoo) `resume` is given.
    """
    from tqdm.auto import tqdm

    if metadata_format not in ("jsonl", "csv"):
        raise WeightspaceError(f"metadata_format must be 'jsonl' or 'csv', got {metadata_format!r}")
    if overwrite and resume:
        raise WeightspaceError("overwrite and resume are mutually exclusive")
    config = _resolve_config(
        preset,
        grid,
        seeds,
        epochs,
        checkpoint_epochs,
        batch_size,
        seed,
        arch,
        dataset,
        metadata_format,
    )
    # Everything that can be wrong with the arguments fails here, before the directory is
    # touched: a bad architecture must not leave a half-described zoo behind.
    dataset_obj = data_lib.load(config["dataset"])
    tasks = config["grid"].get(TASK_AXIS)
    if tasks is not None:
        zoo_tasks.check_class_range(tasks, dataset_obj.num_classes, config["dataset"])
    members, groups = _group_members(config, dataset_obj.input_shape)
    targets = {g["id"]: target_from_config(g["target"]) for g in groups}

    directory = os.path.abspath(os.fspath(out_dir))
    zoo_json = os.path.join(directory, "zoo.json")
    writer = sharding.is_writer()  # several processes: only process 0 writes files
    if not overwrite and os.path.exists(zoo_json):  # a zoo is there: continue it or refuse
        diff = _zoo_differences(read_config(zoo_json), config)
        if diff:
            raise WeightspaceError(
                f"{directory} already holds a different zoo (differing in {', '.join(diff)}); "
                "use overwrite to replace it"
            )
        if not resume:
            raise WeightspaceError(f"{directory} already holds this zoo; use resume to continue it")
        if writer and not os.access(directory, os.W_OK):
            raise WeightspaceError(f"{directory} is not writable")
    else:  # a build killed while first writing zoo.json leaves only its temporary file
        prepare_dir(
            directory,
            overwrite=overwrite,
            holds="zoo",
            hint="use overwrite",
            ignore=("zoo.json.tmp",),
            write=writer,
        )
    sharding.barrier("zoo-build-checked")  # every process has read what was there

    config["groups"] = [
        zoo_format.group_config(
            g["id"], g["target"], g["optimizer"], [m["member"] for m in g["members"]]
        )
        for g in groups
    ]
    config["members"] = members
    config["complete"] = False
    if writer and not os.path.exists(zoo_json):
        zoo_format.write_config(directory, config)
    sharding.barrier("zoo-build-created")

    root = jax.random.key(config["seed"])
    ce = config["checkpoint_epochs"]
    total = len(groups) * config["epochs"]
    all_rows: list[dict[str, Any]] = []
    budget = stop_after_epochs
    bar = tqdm(total=total, disable=not progress, desc="zoo", unit="epoch")
    try:
        for g in groups:
            target = targets[g["id"]]
            trainer = Trainer(
                target,
                dataset_obj,
                TrainConfig(optimizer=g["optimizer"], batch_size=config["batch_size"]),
            )
            ms = g["members"]
            n = len(ms)
            ids = jnp.asarray([m["member"] for m in ms])
            keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(ids)
            state = trainer.init(
                root,
                n,
                learning_rate=[m["learning_rate"] for m in ms],
                weight_decay=[m["weight_decay"] for m in ms],
                train_fraction=[m["train_fraction"] for m in ms],
                init_scale=[m["init_scale"] for m in ms],
                member_keys=keys,
            )
            evaluate = trainer.evaluate
            if tasks is not None:  # each member trains and is scored on its own classes
                state, evaluate = _restrict_to_classes(trainer, state, ms, dataset_obj)
            with PopulationCheckpointer(zoo_format.group_dir(directory, g["id"])) as ckpt:
                done = ckpt.steps()
                # Rows of every committed epoch come from the checkpoints themselves, so a
                # resumed build ends with exactly the rows of an uninterrupted one.
                for e in done:
                    all_rows.extend(ckpt.restore_meta(e)["rows"])
                start = 0
                if done:
                    last = done[-1]
                    abstract = {
                        "params": jax.eval_shape(lambda s=state: s.params),
                        "opt_state": jax.eval_shape(lambda s=state: s.opt_state),
                        "diverged": jax.eval_shape(lambda s=state: s.diverged),
                        "step": jax.eval_shape(lambda s=state: s.step),
                    }
                    arrays, _ = ckpt.restore(last, abstract)
                    state = trainer.place(state._replace(**arrays))
                    start = last
                    bar.update(last)
                for epoch in range(start, config["epochs"] + 1):
                    if epoch > start or (epoch == 0 and not done):
                        if epoch > 0:
                            if budget is not None and budget <= 0:
                                return load(directory, allow_incomplete=True)
                            state, _ = trainer.train_epoch(state, epoch - 1)
                            bar.update(1)
                            if budget is not None:
                                budget -= 1
                        if epoch in ce:
                            metrics, diverged = sharding.to_host(
                                (evaluate(state.params), state.diverged)
                            )
                            rows = zoo_format.metric_rows(ms, metrics, epoch, g["id"], diverged)
                            ckpt.save(
                                epoch,
                                {
                                    "params": state.params,
                                    "opt_state": state.opt_state,
                                    "diverged": state.diverged,
                                    "step": state.step,
                                },
                                meta={"rows": rows},
                                specs={"params": target.spec_json()},
                            )
                            all_rows.extend(rows)
                            if writer:
                                zoo_format.write_metadata(directory, all_rows, metadata_format)
    finally:
        bar.close()
    if writer:
        zoo_format.finish(directory, config, all_rows)
    sharding.barrier("zoo-build-complete")
    return load(directory)


def _restrict_to_classes(trainer: Trainer, state: Any, members: list[dict], dataset: Any):
    """The state with each member's training subset cut to its classes, and the group's
    evaluation on its prompted classes (`hyper.zoo_tasks`)."""
    masks = zoo_tasks.class_masks([m[TASK_AXIS] for m in members], dataset.num_classes)
    subset = state.subset & jnp.asarray(masks)[:, trainer.y_train]
    empty = np.flatnonzero(np.asarray(subset.sum(axis=1)) == 0)
    if empty.size:
        m = members[int(empty[0])]
        raise WeightspaceError(
            f"zoo member {m['member']}: no training example of classes {m[TASK_AXIS]} in its "
            f"train_fraction {m['train_fraction']} subset; raise train_fraction"
        )
    evaluate_tasks = zoo_tasks.task_evaluator(
        trainer.target, dataset, batch_size=trainer.config.eval_batch_size
    )
    return state._replace(subset=trainer.place(subset)), lambda p: evaluate_tasks(p, masks)


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def load(
    directory: str | os.PathLike, *, epoch: int | None = None, allow_incomplete: bool = False
) -> Zoo:
    """Loads a zoo: every group's population at `epoch` plus the metadata table.

    Arrays are restored against abstract trees built from each group's target.

    Args:
      directory: the zoo directory.
      epoch: a checkpointed epoch (default: the last one).
      allow_incomplete: load a zoo whose build has not finished (each group at its
        latest committed epoch if `epoch` is None).

    Raises:
      CheckpointError: not a zoo, an incomplete zoo, or a missing epoch.
    """
    directory = os.path.abspath(os.fspath(directory))
    config = read_config(os.path.join(directory, "zoo.json"))
    if not config.get("complete") and not allow_incomplete:
        raise CheckpointError(f"zoo {directory} is incomplete; resume its build first")
    if epoch is not None and epoch not in config["checkpoint_epochs"]:
        raise CheckpointError(
            f"epoch {epoch} was not checkpointed; available: {config['checkpoint_epochs']}"
        )
    members = {m["member"]: m for m in config["members"]}
    groups, rows = [], []
    for g in config["groups"]:
        target = target_from_stored(g["target"], f"zoo {directory}, group {g['id']}")
        ms = [members[i] for i in g["members"]]
        zg = ZooGroup(id=g["id"], target=target, members=ms)
        gdir = zoo_format.group_dir(directory, g["id"])
        if not os.path.isdir(gdir):
            if allow_incomplete:
                groups.append(zg)
                continue
            raise CheckpointError(f"zoo {directory}: group {g['id']} has no checkpoints")
        with PopulationCheckpointer(gdir, read_only=True) as ckpt:
            steps = ckpt.steps()
            for e in steps:
                rows.extend(ckpt.restore_meta(e)["rows"])
            want = epoch if epoch is not None else (steps[-1] if steps else None)
            if want is not None:
                arrays, _ = ckpt.restore(want, {"params": target.abstract_params(len(ms))})
                zg.params, zg.epoch = arrays["params"], want
        groups.append(zg)
    rows.sort(key=lambda r: (r["member"], r["epoch"]))
    return Zoo(directory=directory, config=config, groups=groups, metadata=rows)


# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------


def summarize(zoo: Zoo, epoch: int | None = None) -> str:
    """Test-accuracy distribution overall and by each varied hyperparameter (by each scalar
    continuous condition for a generated zoo, `hyper.hypernets.export`)."""
    rows = zoo.rows(epoch)
    if not rows:
        return "zoo has no rows"
    acc = np.array([r["test_acc"] for r in rows])
    ep = rows[0]["epoch"]
    q = np.quantile(acc, [0, 0.25, 0.5, 0.75, 1])
    lines = [
        f"zoo {zoo.config['preset']} on {zoo.config['dataset']}: {len(rows)} networks, "
        f"{'hypernet step' if 'conditions' in zoo.config else 'epoch'} {ep}, "
        f"{sum(r['diverged'] for r in rows)} diverged",
        "test accuracy: min {:.3f}  q25 {:.3f}  median {:.3f}  q75 {:.3f}  max {:.3f}".format(*q),
    ]
    for k in HPARAMS:
        values = zoo.config["grid"].get(k, [])  # a generated zoo has no grid
        if len(values) < 2:
            continue
        lines.append(f"  by {k}:")
        for v in values:
            a = np.array([r["test_acc"] for r in rows if r[k] == v])
            if not a.size:  # a partial zoo (allow_incomplete) may lack whole groups
                lines.append(f"    {v!s:>10}: n=   0")
                continue
            lines.append(
                f"    {v!s:>10}: n={len(a):4d}  mean {a.mean():.3f}  median {np.median(a):.3f}  "
                f"max {a.max():.3f}"
            )
    for c in zoo.config.get("conditions", []):  # generated: four equal ranges of a condition
        if c.get("kind") != "continuous" or c.get("shape"):
            continue
        v = np.array([r[c["name"]] for r in rows], np.float64)
        edges = np.linspace(v.min(), v.max(), 5)
        if edges[0] == edges[-1]:
            continue
        bins = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, 3)
        lines.append(f"  by {c['name']}:")
        for b in range(4):
            a = acc[bins == b]
            label = f"{edges[b]:.3g}..{edges[b + 1]:.3g}"
            lines.append(
                f"    {label:>10}: n={len(a):4d}"
                + (f"  mean {a.mean():.3f}  min {a.min():.3f}  max {a.max():.3f}" if a.size else "")
            )
    return "\n".join(lines)
