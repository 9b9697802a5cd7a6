"""`python -m hyper.demo` at its smallest: one seed, one epoch."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from hyper import demo


@pytest.mark.slow
def test_demo_builds_zoo_prints_summary_and_draws_figure(tmp_path: Path, capsys):
    assert demo.main(["--out", str(tmp_path), "--seeds", "1", "--epochs", "1", "--quiet"]) == 0
    assert jax.device_count() == 8  # the demo keeps the device count the caller chose
    printed = capsys.readouterr().out
    assert "zoo digits-mlp on digits: 48 networks, epoch 1" in printed
    assert "by learning_rate:" in printed
    figure = tmp_path / "zoo_summary.png"
    assert f"figure: {figure}" in printed
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((tmp_path / "zoo" / "zoo.json").read_text())
    assert config["complete"] and config["checkpoint_epochs"] == [0, 1]


@pytest.mark.parametrize("flag", ["--seeds", "--epochs"])
def test_demo_rejects_non_positive_sizes(tmp_path: Path, flag: str, capsys):
    assert demo.main(["--out", str(tmp_path), flag, "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "zoo").exists()
