"""weightspace core: targets, populations, data, training, zoos, checkpoints, hypernetworks,
alignment and merging.

Submodules are imported lazily by name (``hyper.zoo``, ``hyper.hypernet``, ...); the core
types are re-exported here.
"""

from hyper import population
from hyper.architectures import make_target, target_from_config
from hyper.conditions import Categorical, Continuous, Noise, Vector
from hyper.hypernet import HyperNet, generate, generate_and_evaluate
from hyper.target import ROLES, LeafSpec, Params, Target

__all__ = [
    "ROLES",
    "Categorical",
    "Continuous",
    "HyperNet",
    "LeafSpec",
    "Noise",
    "Params",
    "Target",
    "Vector",
    "generate",
    "generate_and_evaluate",
    "make_target",
    "population",
    "target_from_config",
]
