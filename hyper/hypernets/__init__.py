"""Hypernetworks: networks that write the weights of a `hyper.Target`.

Modules: `conditions` (what a hypernet is conditioned on and how it is encoded),
`hypernet` (`HyperNet`, MIP by default; per-tensor, chunked and low-rank heads; `generate`),
`trainer` (`HyperTrainer`: the jitted step, losses, optimizer), `train` (presets,
resumable runs; re-exports the trainer's names), `export` (a generated population
written as a zoo directory), `cli` (``weightspace hyper ...``, a plugin of `hyper.cli`) and
`demo` (``make demo``). This package imports the core (`hyper`); the core never imports it.
"""

from hyper.hypernets.conditions import Categorical, Condition, Continuous, Noise, Vector
from hyper.hypernets.export import export_generated
from hyper.hypernets.hypernet import Frozen, HyperNet, generate, generate_and_evaluate, norm_slope
from hyper.hypernets.train import PRESETS, build_hypernet, load_run, train_run
from hyper.hypernets.trainer import HyperTrainer, NonFiniteLossError, l2_conditioned_loss

__all__ = [
    "PRESETS",
    "Categorical",
    "Condition",
    "Continuous",
    "Frozen",
    "HyperNet",
    "HyperTrainer",
    "Noise",
    "NonFiniteLossError",
    "Vector",
    "build_hypernet",
    "export_generated",
    "generate",
    "generate_and_evaluate",
    "l2_conditioned_loss",
    "load_run",
    "norm_slope",
    "train_run",
]
