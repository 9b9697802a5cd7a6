"""`weightspace metanet train` killed with SIGKILL mid-training and restarted with
``--resume`` ends with the same predictor weights and metrics as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from hyper import zoo
from hyper.cli import main
from metanets import predict

EPOCHS = 12  # one step per epoch on this tiny zoo; a checkpoint every 2 epochs


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("metanet-zoo") / "z"
    zoo.build(
        out,
        "digits-mlp",
        grid={
            "learning_rate": [0.01, 0.05],
            "weight_decay": [0.0],
            "init_scale": [1.0],
            "train_fraction": [1.0],
            "dropout": [0.0],
            "activation": ["relu"],
        },
        seeds=4,
        epochs=2,
        checkpoint_epochs=[1, 2],
        progress=False,
    )
    return out


def _cmd(zoo_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hyper.cli",
        "metanet",
        "train",
        "--zoo",
        str(zoo_dir),
        "--model",
        "gmn",
        "--epochs",
        str(EPOCHS),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def _steps(directory: Path) -> list[int]:
    try:
        return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return []


def _weights(run: Path) -> list[np.ndarray]:
    pred = predict.load_predictor(run / "predictor")
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(pred.model))]


def test_killed_metanet_training_resumes_to_the_same_predictor(small_zoo, tmp_path):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    ref = subprocess.run(
        _cmd(small_zoo, tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=300
    )
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    with open(tmp_path / "run.stderr", "w") as err:
        proc = subprocess.Popen(_cmd(small_zoo, run), env=env, stderr=err)
        deadline = time.monotonic() + 300
        while not [s for s in _steps(run / "checkpoints") if s >= 6]:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"no checkpoint beyond epoch 6 (rc={proc.wait()})")
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = _steps(run / "checkpoints")
    assert proc.returncode == -signal.SIGKILL and killed_at[-1] < EPOCHS - 1, killed_at
    assert not (run / "predictor").exists()
    assert main(_cmd(small_zoo, run)[3:]) == 2  # refuses to clobber without --resume
    resumed = subprocess.run(
        _cmd(small_zoo, run, "--resume"), env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    for a, b in zip(_weights(run), _weights(tmp_path / "ref"), strict=True):
        np.testing.assert_array_equal(a, b)
    assert json.loads((run / "metrics.json").read_text()) == json.loads(
        (tmp_path / "ref" / "metrics.json").read_text()
    )
    assert not [p for p in (run / "checkpoints").iterdir() if "tmp" in p.name]


def test_resume_refuses_checkpoints_of_another_run(small_zoo, tmp_path, capsys):
    def args(epochs: int, *extra: str) -> list[str]:
        return [
            "metanet",
            "train",
            "--zoo",
            str(small_zoo),
            "--model",
            "statnn",
            "--epochs",
            str(epochs),
            "--out",
            str(tmp_path / "run"),
            "--quiet",
            *extra,
        ]

    assert main(args(3)) == 0
    capsys.readouterr()
    assert main(args(4, "--resume")) == 2
    err = capsys.readouterr().err
    assert "another training run" in err and err.count("\n") == 1
