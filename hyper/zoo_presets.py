"""Named zoo recipes (`PRESETS`): a dataset, a `make_target` architecture, a grid of
hyperparameters and default epochs, for `hyper.zoo.build` and ``weightspace zoo --preset``.

- ``digits-mlp``, ``digits-cnn``: scikit-learn digits, an MLP and a 3-layer CNN;
- ``mnist1d-mlp``, ``mnist1d-cnn``: MNIST-1D, an MLP and a 1-D CNN;
- the CNN presets pad symmetrically (``padding="SYMMETRIC"``: ``k // 2`` on both sides,
  PyTorch's ``padding=k // 2``), so an exported network runs in the natural PyTorch module;
  zoos built before stored no ``padding`` and rebuild with XLA's 'SAME' (asymmetric at
  stride 2 on even sizes; `hyper.architectures.CNN2d`); resuming one with the preset is
  refused as a different zoo (its ``arch`` differs): pass its own ``arch=`` to resume it;
- ``digits-vit``: digits as 16 patches of 2x2, a 2-block pre-LN transformer (width 32,
  2 heads, MLP 64, gelu; `hyper.architectures.Transformer`);
- ``mnist1d-transformer``: MNIST-1D's 40 steps as 40 tokens, the same blocks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PRESETS", "ZooPreset"]


@dataclasses.dataclass(frozen=True)
class ZooPreset:
    """A named zoo recipe.

    Attributes:
      dataset: registry name in `hyper.data`.
      arch: `make_target` config without activation/dropout (those come from the grid).
      grid: hyperparameter -> list of values (keys from `hyper.zoo.HPARAMS`).
      epochs: default number of epochs.
      batch_size: examples per step.
      checkpoint_epochs: default epochs to save (0 = initialisation).
    """

    dataset: str
    arch: Mapping[str, Any]
    grid: Mapping[str, Sequence[Any]]
    epochs: int
    batch_size: int = 128
    checkpoint_epochs: tuple[int, ...] | None = None


PRESETS: dict[str, ZooPreset] = {
    "digits-mlp": ZooPreset(
        dataset="digits",
        arch={"arch": "mlp", "widths": [32], "out_features": 10},
        grid={
            "learning_rate": [3e-3, 1e-2, 3e-2],
            "weight_decay": [0.0, 1e-3],
            "init_scale": [0.5, 1.0],
            "train_fraction": [0.5, 1.0],
            "activation": ["relu", "tanh"],
            "dropout": [0.0],
            "optimizer": ["adam"],
        },
        epochs=20,
    ),
    "digits-cnn": ZooPreset(
        dataset="digits",
        arch={"arch": "cnn2d", "channels": [8, 8, 8], "out_features": 10, "padding": "SYMMETRIC"},
        grid={
            "learning_rate": [3e-3, 1e-2],
            "weight_decay": [0.0, 1e-3],
            "init_scale": [0.5, 1.0],
            "train_fraction": [0.5, 1.0],
            "activation": ["relu", "tanh"],
            "dropout": [0.0, 0.2],
            "optimizer": ["adam"],
        },
        epochs=20,
    ),
    "mnist1d-mlp": ZooPreset(
        dataset="mnist1d",
        arch={"arch": "mlp", "widths": [100, 100], "out_features": 10},
        grid={
            "learning_rate": [1e-3, 3e-3, 1e-2],
            "weight_decay": [0.0, 1e-3],
            "init_scale": [1.0],
            "train_fraction": [0.5, 1.0],
            "activation": ["relu", "tanh"],
            "dropout": [0.0],
            "optimizer": ["adam"],
        },
        epochs=30,
    ),
    "mnist1d-cnn": ZooPreset(
        dataset="mnist1d",
        arch={
            "arch": "cnn1d",
            "channels": [32, 32, 32],
            "kernel_size": 5,
            "out_features": 10,
            "padding": "SYMMETRIC",
        },
        grid={
            "learning_rate": [3e-3, 1e-2],
            "weight_decay": [0.0],
            "init_scale": [1.0],
            "train_fraction": [1.0],
            "activation": ["relu"],
            "dropout": [0.0],
            "optimizer": ["adam"],
        },
        epochs=30,
    ),
    "digits-vit": ZooPreset(
        dataset="digits",
        arch={
            "arch": "transformer",
            "patch_size": [2, 2],
            "width": 32,
            "depth": 2,
            "heads": 2,
            "mlp_dim": 64,
            "out_features": 10,
        },
        grid={
            "learning_rate": [1e-3, 3e-3],
            "weight_decay": [0.0, 1e-3],
            "init_scale": [1.0],
            "train_fraction": [0.5, 1.0],
            "activation": ["gelu"],
            "dropout": [0.0],
            "optimizer": ["adam"],
        },
        epochs=20,
        batch_size=64,
    ),
    "mnist1d-transformer": ZooPreset(
        dataset="mnist1d",
        arch={
            "arch": "transformer",
            "patch_size": [1],
            "width": 32,
            "depth": 2,
            "heads": 2,
            "mlp_dim": 64,
            "out_features": 10,
        },
        grid={
            "learning_rate": [1e-3, 3e-3],
            "weight_decay": [0.0],
            "init_scale": [1.0],
            "train_fraction": [1.0],
            "activation": ["gelu"],
            "dropout": [0.0],
            "optimizer": ["adam"],
        },
        epochs=30,
    ),
}
