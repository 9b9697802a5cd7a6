"""Anchor families for stitching (`generators.stitch`): one zoo per width, built or read.

- `FAMILIES` / `build_family_zoos`: the benchmark's families (digits MLPs, MNIST-1D CNNs),
  each width trained as its own zoo of one member by `hyper.zoo.build`;
- `anchors_from_zoos`: one anchor per zoo directory (``weightspace stitch --zoo ...``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import jax

from hyper import zoo as zoo_lib
from hyper.errors import WeightspaceError
from hyper.prune import hidden_widths
from hyper.target import Target
from hyper.tree import Params
from hyper.zoo_presets import PRESETS

__all__ = ["FAMILIES", "anchors_from_zoos", "build_family_zoos"]

FAMILIES: dict[str, dict[str, Any]] = {
    "digits-mlp": {
        "preset": "digits-mlp",
        "arch": lambda w: {"arch": "mlp", "widths": [w] * 4, "out_features": 10},
        "widths": (16, 32, 64, 128),
        "learning_rate": 3e-3,
    },
    "mnist1d-cnn": {
        "preset": "mnist1d-cnn",
        "arch": lambda c: {
            "arch": "cnn1d",
            "channels": [c] * 4,
            "kernel_size": 5,
            "out_features": 10,
        },
        "widths": (8, 16, 32),
        "learning_rate": 3e-3,
    },
}
"""Anchor families of `build_family_zoos`: a zoo preset, the architecture at one width, the
default widths and the Adam learning rate (relu, no decay or dropout). Four hidden layers
each (digits: 64-w-w-w-w-10; MNIST-1D: four 5-tap convolutions, strides 1, 2, 2, 2), so
that every pair of anchors has four cuts: more stitched networks of distinct FLOPs."""


def anchors_from_zoos(
    directories: Sequence[str],
) -> tuple[list[tuple[str, Target, Params]], str]:
    """One anchor per zoo directory: the member of lowest final training loss (never chosen
    on the test split).

    Returns:
      ``[(name, target, params)]`` and the zoos' common data set name.

    Raises:
      WeightspaceError / CheckpointError: a directory that is not a complete zoo, or zoos of
      different data sets.
    """
    out, datasets = [], set()
    for d in directories:
        z = zoo_lib.load(d)
        datasets.add(z.config["dataset"])
        last = {r["member"]: r for r in z.rows() if r["epoch"] == max(z.checkpoint_epochs)}
        best_row = min(last.values(), key=lambda r: float(r["train_loss"]))
        for g in z.groups:
            ids = [m["member"] for m in g.members]
            if best_row["member"] in ids and g.params is not None:
                i = ids.index(best_row["member"])
                params = jax.tree.map(lambda a, i=i: a[i], g.params)
                width = "x".join(str(w) for w in hidden_widths(g.target))
                out.append((f"{g.target.config.get('arch', 'net')}-{width}", g.target, params))
                break
        else:
            raise WeightspaceError(f"stitch: zoo {d} has no trained member")
    if len(datasets) != 1:
        raise WeightspaceError(f"stitch: the zoos hold different data sets: {sorted(datasets)}")
    return out, datasets.pop()


def build_family_zoos(
    out_dir: str,
    family: str,
    widths: Sequence[int] | None = None,
    *,
    epochs: int | None = None,
    seed: int = 0,
    dataset: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[tuple[str, float]]:
    """Trains one anchor per width of a `FAMILIES` entry, each its own zoo
    (``out_dir/w<width>``, one member, `hyper.zoo.build`), on the preset's data set or on
    the registered `dataset` (e.g. its training split less a validation split).

    Returns:
      ``[(zoo directory, build seconds)]``, ascending in width.
    """
    if family not in FAMILIES:
        raise WeightspaceError(f"unknown family {family!r}; expected one of {sorted(FAMILIES)}")
    fam = FAMILIES[family]
    epochs = PRESETS[fam["preset"]].epochs if epochs is None else int(epochs)
    grid = {
        "learning_rate": [fam["learning_rate"]],
        "weight_decay": [0.0],
        "init_scale": [1.0],
        "train_fraction": [1.0],
        "activation": ["relu"],
        "dropout": [0.0],
        "optimizer": ["adam"],
    }
    out = []
    for w in sorted(widths or fam["widths"]):
        d = os.path.join(out_dir, f"w{w}")
        t0 = time.perf_counter()
        zoo_lib.build(
            d,
            fam["preset"],
            grid=grid,
            seeds=[seed],
            epochs=epochs,
            checkpoint_epochs=[epochs],
            arch=fam["arch"](w),
            seed=seed,
            dataset=dataset,
            overwrite=overwrite,
            progress=progress,
        )
        out.append((d, time.perf_counter() - t0))
    return out
