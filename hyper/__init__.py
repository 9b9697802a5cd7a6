"""weightspace core: targets, populations, data, training, zoos, checkpoints, hypernetworks."""

from hyper import population
from hyper.architectures import make_target, target_from_config
from hyper.target import ROLES, LeafSpec, Params, Target

__all__ = [
    "ROLES",
    "LeafSpec",
    "Params",
    "Target",
    "make_target",
    "population",
    "target_from_config",
]
