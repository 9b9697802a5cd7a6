"""Generated populations as zoo directories: what a hypernet writes, the zoo loader reads.

`export_generated` generates one network per condition with a trained `HyperNet`,
evaluates each on the dataset's train and test splits, and writes the same layout as the
zoo builder (`hyper.zoo`), so `hyper.zoo.load`, `hyper.zoo.summarize` and the metadata
table work unchanged::

  zoo.json                 preset "generated", the condition specs, the hypernet config,
                           one group "g0" and one member row per condition
  metadata.jsonl           one row per member: its condition values, train/test loss and
                           accuracy, a diverged flag (non-finite loss)
  groups/g0/<step>/        Orbax checkpoint: params [M, ...] and the rows (JSON)

`<step>` is the hypernet's training step (it plays the zoo's "epoch"). Member rows carry
the condition values by name (``{"member": 3, "gamma": 0.25}``), noise included: the rows
alone regenerate the population.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper import data as data_lib
from hyper import train as train_lib
from hyper import zoo as zoo_lib
from hyper import zoo_format
from hyper.checkpoint import PopulationCheckpointer, prepare_dir
from hyper.errors import WeightspaceError
from hyper.hypernets import conditions as cond_lib
from hyper.hypernets.conditions import Categorical, to_json
from hyper.hypernets.hypernet import HyperNet, generate

__all__ = ["export_generated"]

_ROW_KEYS = (
    "member",
    "group",
    "epoch",
    "seed",
    "diverged",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
)
"""Metadata columns a condition name must not shadow."""


def _json_value(spec: Any, value: np.ndarray) -> Any:
    """One condition value as JSON: ints for ids, the shortest float32 repr for numbers."""
    if isinstance(spec, Categorical):
        return int(value)
    flat = [float(str(np.float32(v))) for v in np.asarray(value, np.float32).reshape(-1)]
    return flat[0] if np.ndim(value) == 0 else np.asarray(flat).reshape(np.shape(value)).tolist()


def _in_chunks(fn: Any, tree: Any, size: int) -> Any:
    """``fn(tree)`` applied `size` members at a time (the last chunk padded with copies of
    its last member, so every call has one shape), gathered to host numpy."""
    m = len(jax.tree.leaves(tree)[0])
    out = []
    for start in range(0, m, size):
        n = min(size, m - start)
        rows = np.minimum(np.arange(start, start + size), m - 1)  # the padding repeats row m-1
        c = jax.tree.map(lambda v, rows=rows: np.asarray(v)[rows], tree)
        out.append(jax.tree.map(lambda v, n=n: np.asarray(v[:n]), fn(c)))
    return jax.tree.map(lambda *vs: np.concatenate(vs), *out)


def export_generated(
    out_dir: str | os.PathLike,
    hnet: HyperNet,
    conditions: Mapping[str, Any],
    *,
    dataset: str | None = None,
    run_config: Mapping[str, Any] | None = None,
    step: int = 0,
    key: jax.Array | None = None,
    overwrite: bool = False,
    batch_size: int = 256,
) -> zoo_lib.Zoo:
    """Generates `M` networks for `conditions` and writes them as a zoo directory.

    Args:
      out_dir: the directory to write (refused if it holds anything, unless `overwrite`).
      hnet: the trained hypernetwork.
      conditions: ``{name: [M, ...]}``, validated against ``hnet.specs`` before anything
        is written; noise conditions left out are sampled from `key`.
      dataset: registry name of the dataset to evaluate on (default:
        ``run_config["dataset"]``).
      run_config: the hypernet run's config (`hyper.hypernets.train.load_run`), stored in
        ``zoo.json``.
      step: the hypernet's training step, used as the checkpoint's step.
      key: samples missing noise conditions (default ``jax.random.key(0)``).
      overwrite: replace what `out_dir` holds.
      batch_size: networks generated and evaluated at once.

    Returns:
      the written zoo, loaded with `hyper.zoo.load`.

    Raises:
      ValueError: bad conditions, an unknown dataset or one that does not fit the
        target, a condition name that shadows a metadata column, or `out_dir` not empty.
    """
    specs = hnet.specs
    m = hnet.validate(conditions)
    clash = sorted({s.name for s in specs} & set(_ROW_KEYS))
    if clash:
        raise WeightspaceError(f"condition names {clash} clash with zoo metadata columns")
    run_config = dict(run_config or {})
    dataset = dataset or run_config.get("dataset")
    if dataset is None:
        raise WeightspaceError("export_generated: give dataset= or a run_config with a dataset")
    if dataset not in data_lib.available():
        raise WeightspaceError(f"unknown dataset {dataset!r}; available: {data_lib.available()}")
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise WeightspaceError(f"step must be a non-negative int, got {step!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise WeightspaceError(f"batch_size must be a positive int, got {batch_size!r}")
    ds = data_lib.load(dataset)
    target = hnet.target
    if "arch" not in target.config or "input_shape" not in target.config:
        # The zoo loader rebuilds the target from its config (`make_target` targets).
        raise WeightspaceError(
            f"target {target.name} has no rebuild config (make it with "
            "hyper.architectures.make_target); a zoo directory could not be loaded"
        )
    if target.input_shape is not None and tuple(ds.input_shape) != tuple(target.input_shape):
        raise WeightspaceError(
            f"dataset {dataset!r} has inputs {ds.input_shape}, target {target.name} takes "
            f"{target.input_shape}"
        )
    # Refused before anything is generated; replaced only once the networks exist.
    directory = prepare_dir(out_dir, overwrite=overwrite, hint="use overwrite", write=False)

    # Sample the noise here so the rows hold what the networks were generated from.
    key = jax.random.key(0) if key is None else key
    conds = cond_lib.fill_noise(specs, {k: np.asarray(v) for k, v in conditions.items()}, key, m)
    conds = {k: np.asarray(v) for k, v in conds.items()}

    # Generated once, in chunks of `bs` conditions (the last padded: one program shape);
    # the stored population is the one evaluated.
    bs = min(int(batch_size), m)
    population = _in_chunks(lambda c: generate(hnet, c), conds, bs)
    evaluate = jax.jit(lambda pop, x, y: train_lib.evaluate(target, pop, x, y))
    splits = {"train": (ds.x_train, ds.y_train), "test": (ds.x_test, ds.y_test)}
    metrics = {}
    for split, (x, y) in splits.items():
        x, y = jnp.asarray(x), jnp.asarray(y)
        res = _in_chunks(lambda pop, x=x, y=y: evaluate(pop, x, y), population, bs)
        metrics[f"{split}_loss"], metrics[f"{split}_acc"] = res["loss"], res["acc"]
    diverged = ~(np.isfinite(metrics["train_loss"]) & np.isfinite(metrics["test_loss"]))

    members = [
        {"member": i, **{s.name: _json_value(s, conds[s.name][i]) for s in specs}} for i in range(m)
    ]
    step = int(step)
    rows = zoo_format.metric_rows(members, metrics, step, "g0", diverged)
    config = zoo_format.zoo_config(
        preset="generated",
        dataset=dataset,
        arch=target.config,
        grid={},
        seeds=[],
        epochs=step,
        checkpoint_epochs=[step],
        batch_size=run_config.get("batch_size"),
        seed=int(run_config.get("seed", 0)),
        metadata_format="jsonl",
        conditions=to_json(specs),
        hypernet=dict(hnet.config),
        run=run_config,
        groups=[zoo_format.group_config("g0", target.config, None, range(m))],
        members=members,
        complete=False,
    )

    prepare_dir(directory, overwrite=overwrite, hint="use overwrite")
    zoo_format.write_config(directory, config)  # incomplete until the checkpoint commits
    with PopulationCheckpointer(zoo_format.group_dir(directory, "g0")) as ckpt:
        ckpt.save(
            step, {"params": population}, meta={"rows": rows}, specs={"params": target.spec_json()}
        )
    zoo_format.finish(directory, config, rows)
    return zoo_lib.load(directory)
