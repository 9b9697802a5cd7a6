"""weightspace core: targets, populations, data, training, zoos, checkpoints, structural
symmetries, pruning, alignment and merging, sharding.

This face imports the target types, the presets, `population`, and the errors for bad input
(`WeightspaceError`, `WeightspaceTypeError`: every check of user input in the core raises
one of them; they subclass `ValueError` and `TypeError`, and the `weightspace` command
reports them in one line with exit status 2). Every other module is imported by name
(``hyper.zoo``, ``hyper.train``, ...). Hypernetworks live in `hyper.hypernets`, which
imports the core; the core never imports it.
"""

from hyper import population
from hyper.architectures import make_target, target_from_config
from hyper.errors import WeightspaceError, WeightspaceTypeError
from hyper.target import ROLES, LeafSpec, Params, Target

__all__ = [
    "ROLES",
    "LeafSpec",
    "Params",
    "Target",
    "WeightspaceError",
    "WeightspaceTypeError",
    "make_target",
    "population",
    "target_from_config",
]
