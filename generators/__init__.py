"""Generative module assemblers: compact task- and budget-specific models."""

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
from generators.supernet import (
    Supernet,
    SupernetConfig,
    load_supernet,
    pretrain,
    save_supernet,
    supernet_apply,
)

__all__ = [
    "Assembler",
    "CompactModel",
    "Factory",
    "Scenario",
    "Supernet",
    "SupernetConfig",
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
    "supernet_apply",
    "train_assembler",
    "validate_scenario",
]
