"""weightspace core: targets, populations, data, training, zoos, checkpoints, structural
symmetries, pruning, alignment and merging, sharding.

This face imports the target types, the presets and `population`; every other module is
imported by name (``hyper.zoo``, ``hyper.train``, ...). Hypernetworks live in
`hyper.hypernets`, which imports the core; the core never imports it.
"""

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
