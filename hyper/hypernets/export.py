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
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper import data as data_lib
from hyper import zoo as zoo_lib
from hyper.checkpoint import PopulationCheckpointer
from hyper.hypernets.conditions import Categorical, Noise, to_json
from hyper.hypernets.hypernet import HyperNet, generate, generate_and_evaluate

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
        raise ValueError(f"condition names {clash} clash with zoo metadata columns")
    run_config = dict(run_config or {})
    dataset = dataset or run_config.get("dataset")
    if dataset is None:
        raise ValueError("export_generated: give dataset= or a run_config with a dataset")
    if dataset not in data_lib.available():
        raise ValueError(f"unknown dataset {dataset!r}; available: {data_lib.available()}")
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    ds = data_lib.load(dataset)
    target = hnet.target
    if "arch" not in target.config or "input_shape" not in target.config:
        # The zoo loader rebuilds the target from its config (`make_target` targets).
        raise ValueError(
            f"target {target.name} has no rebuild config (make it with "
            "hyper.architectures.make_target); a zoo directory could not be loaded"
        )
    if target.input_shape is not None and tuple(ds.input_shape) != tuple(target.input_shape):
        raise ValueError(
            f"dataset {dataset!r} has inputs {ds.input_shape}, target {target.name} takes "
            f"{target.input_shape}"
        )
    directory = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"{directory} exists and is not a directory")
    if os.path.isdir(directory) and os.listdir(directory) and not overwrite:
        raise ValueError(f"{directory} is not empty; use overwrite to replace it")

    # Sample the noise here so the rows hold what the networks were generated from.
    key = jax.random.key(0) if key is None else key
    conds = {k: np.asarray(v) for k, v in conditions.items()}
    for i, s in enumerate(specs):
        if isinstance(s, Noise) and s.name not in conds:
            conds[s.name] = np.asarray(jax.random.normal(jax.random.fold_in(key, i), (m, s.dim)))

    # Chunks of `bs` conditions, the last padded like `generate_and_evaluate` pads it: the
    # same program shapes, so the stored weights are the ones the metrics were computed on.
    bs = min(int(batch_size), m)
    chunks = []
    for start in range(0, m, bs):
        c = {k: v[start : start + bs] for k, v in conds.items()}
        n = len(next(iter(c.values())))
        if n < bs:
            c = {k: np.concatenate([v, np.repeat(v[-1:], bs - n, 0)]) for k, v in c.items()}
        chunks.append(jax.tree.map(lambda v, n=n: np.asarray(v[:n]), generate(hnet, c)))
    population = jax.tree.map(lambda *vs: np.concatenate(vs), *chunks)
    x_tr, y_tr = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    x_te, y_te = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    train = generate_and_evaluate(hnet, conds, x_tr, y_tr, batch_size=bs)
    test = generate_and_evaluate(hnet, conds, x_te, y_te, batch_size=bs)
    metrics = {
        "train_loss": np.asarray(train["loss"]),
        "train_acc": np.asarray(train["acc"]),
        "test_loss": np.asarray(test["loss"]),
        "test_acc": np.asarray(test["acc"]),
    }
    diverged = ~(np.isfinite(metrics["train_loss"]) & np.isfinite(metrics["test_loss"]))

    members = [
        {"member": i, **{s.name: _json_value(s, conds[s.name][i]) for s in specs}} for i in range(m)
    ]
    step = int(step)
    rows = [
        {
            **mem,
            "group": "g0",
            "epoch": step,
            **{k: float(v[i]) for k, v in metrics.items()},
            "diverged": bool(diverged[i]),
        }
        for i, mem in enumerate(members)
    ]
    config = {
        "format": zoo_lib._FORMAT,
        "version": 1,
        "preset": "generated",
        "dataset": dataset,
        "arch": dict(target.config),
        "grid": {},
        "seeds": [],
        "epochs": step,
        "checkpoint_epochs": [step],
        "batch_size": run_config.get("batch_size"),
        "seed": int(run_config.get("seed", 0)),
        "metadata_format": "jsonl",
        "conditions": to_json(specs),
        "hypernet": dict(hnet.config),
        "run": run_config,
        "groups": [
            {
                "id": "g0",
                "target": dict(target.config),
                "optimizer": None,
                "members": list(range(m)),
            }
        ],
        "members": members,
        "complete": False,
    }

    if os.path.isdir(directory) and os.listdir(directory):
        shutil.rmtree(directory)  # overwrite, checked above
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create directory {directory}: {e.strerror or e}") from e
    zoo_json = os.path.join(directory, "zoo.json")
    zoo_lib._write_json_atomic(zoo_json, config)  # incomplete until the checkpoint commits
    with PopulationCheckpointer(os.path.join(directory, "groups", "g0")) as ckpt:
        ckpt.save(
            step, {"params": population}, meta={"rows": rows}, specs={"params": target.spec_json()}
        )
    zoo_lib._write_metadata(directory, rows, "jsonl")
    config["complete"] = True
    zoo_lib._write_json_atomic(zoo_json, config)
    return zoo_lib.load(directory)
