"""`python -m hyper.hypernets.demo` at its smallest: one seed, one epoch, a few hypernet steps."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from hyper import zoo
from hyper.hypernets import demo


@pytest.mark.slow
def test_demo_builds_zoo_trains_hypernet_and_generates(tmp_path: Path, capsys):
    args = ["--out", str(tmp_path), "--seeds", "1", "--epochs", "1", "--quiet"]
    assert demo.main([*args, "--hyper-steps", "4", "--generate", "5"]) == 0
    assert jax.device_count() == 8  # the demo keeps the device count the caller chose
    printed = capsys.readouterr().out
    assert "zoo digits-mlp on digits: 48 networks, epoch 1" in printed
    assert "by learning_rate:" in printed
    figure = tmp_path / "zoo_summary.png"
    assert f"figure: {figure}" in printed
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((tmp_path / "zoo" / "zoo.json").read_text())
    assert config["complete"] and config["checkpoint_epochs"] == [0, 1]

    assert "hypernet digits-mip: 4 steps x 8 conditions" in printed
    assert "generated 5 networks for gamma = 0..1" in printed
    assert "test accuracy at gamma 0 / 0.5 / 1: " in printed
    assert "(gamma 0.000)" in printed and "(gamma 0.500)" in printed
    assert "slope of log‖θ‖ vs log‖γ‖" in printed
    generated = zoo.load(tmp_path / "generated")
    assert [m["gamma"] for m in generated.members] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert generated.checkpoint_epochs == [4]
    assert (tmp_path / "generated_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "flag, value",
    [("--seeds", "0"), ("--epochs", "0"), ("--hyper-steps", "-1"), ("--generate", "0")],
)
def test_demo_rejects_non_positive_sizes(tmp_path: Path, flag: str, value: str, capsys):
    assert demo.main(["--out", str(tmp_path), flag, value]) == 2
    assert "must be >= " in capsys.readouterr().err
    assert not (tmp_path / "zoo").exists()
