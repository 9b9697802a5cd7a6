"""The suite's own compile settings (tests/conftest.py)."""

import os

import pytest


@pytest.mark.xla_fusion_emitters
def test_marked_tests_run_with_the_default_fusion_emitters():
    """A test marked ``xla_fusion_emitters`` runs without the suite's legacy-emitter flag,
    and keeps the rest of the suite's flags."""
    flags = os.environ["XLA_FLAGS"].split()
    assert "--xla_cpu_use_fusion_emitters=false" not in flags
    assert "--xla_backend_optimization_level=0" in flags


def test_the_suite_compiles_with_the_legacy_fusion_emitters():
    assert "--xla_cpu_use_fusion_emitters=false" in os.environ["XLA_FLAGS"].split()
