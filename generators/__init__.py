"""Generators: module assemblers (compact task- and budget-specific models), generative
models of weights (`generators.weightgen`, with the novelty metrics of
`generators.novelty`), and stitched families of pretrained networks (SN-Net)."""

from generators.assembler import (
    Assembler,
    Scenario,
    class_subsets,
    group_l2_scores,
    project_to_budget,
    train_assembler,
    validate_scenario,
)
from generators.factory import (
    CompactModel,
    Factory,
    build_compact,
    export_model,
    load_factory,
    load_model,
    make_factory,
    split_for_assembler,
)
from generators.stitch import StitchedFamily, stitch_family
from generators.supernet import (
    Supernet,
    SupernetConfig,
    load_supernet,
    pretrain,
    save_supernet,
    supernet_apply,
)
from generators.weightgen import WeightGen, WeightGenConfig, write_generated_zoo

__all__ = [
    "Assembler",
    "CompactModel",
    "Factory",
    "Scenario",
    "StitchedFamily",
    "Supernet",
    "SupernetConfig",
    "WeightGen",
    "WeightGenConfig",
    "build_compact",
    "class_subsets",
    "export_model",
    "group_l2_scores",
    "load_factory",
    "load_model",
    "load_supernet",
    "make_factory",
    "pretrain",
    "project_to_budget",
    "save_supernet",
    "split_for_assembler",
    "stitch_family",
    "supernet_apply",
    "train_assembler",
    "validate_scenario",
    "write_generated_zoo",
]
