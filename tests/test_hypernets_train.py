"""`weightspace hyper train|generate` end to end on a tiny run: resume after an interruption
gives the same weights, the generated directory is a zoo whose metadata matches a
re-evaluation, and bad ``--conditions`` fail with one line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hyper import sharding, zoo
from hyper.checkpoint import PopulationCheckpointer
from hyper.cli import main
from hyper.hypernets import train as hypertrain
from hyper.hypernets.conditions import Continuous, Noise
from hyper.hypernets.export import export_generated
from hyper.hypernets.hypernet import HyperNet, generate
from hyper.train import evaluate

# A 64-16-10 target, an 8-wide hypernet, 6 steps with a checkpoint every 2.
TINY = {
    "target": {"arch": "mlp", "widths": [16], "out_features": 10},
    "hypernet": {"hidden": [8]},
    "steps": 6,
    "conditions_per_step": 2,
    "batch_size": 32,
    "checkpoint_every": 2,
}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def run_dir(config_file: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["hyper", "train", "--config", str(config_file), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def trained(run_dir: Path) -> HyperNet:
    return hypertrain.load_run(run_dir)[0]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("weightspace: error: ") and err.count("\n") == 1, err
    return err


def _weights(hnet: HyperNet) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(hnet))]


def test_train_writes_checkpoints_and_refuses_to_clobber(run_dir: Path, config_file: Path, capsys):
    with PopulationCheckpointer(run_dir / "checkpoints", read_only=True) as ckpt:
        assert ckpt.steps() == [2, 4, 6]
        assert len(ckpt.restore_meta(6)["losses"]) == 6
    args = ["hyper", "train", "--config", str(config_file), "--out", str(run_dir), "--quiet"]
    assert main(args) == 2
    assert "use resume" in _one_error_line(capsys)


def test_resume_after_interruption_gives_identical_weights(
    run_dir: Path, trained: HyperNet, config_file: Path, tmp_path: Path
):
    out = tmp_path / "run"
    # Interrupted after 3 steps: step 2 is checkpointed, step 3 is lost and redone.
    hypertrain.train_run(str(config_file), out, stop_after_steps=3, progress=False)
    with PopulationCheckpointer(out / "checkpoints", read_only=True) as ckpt:
        assert ckpt.steps() == [2]
    args = ["hyper", "train", "--config", str(config_file), "--out", str(out), "--resume"]
    assert main([*args, "--quiet"]) == 0
    resumed, _ = hypertrain.load_run(out)
    for a, b in zip(_weights(resumed), _weights(trained), strict=True):
        np.testing.assert_array_equal(a, b)
    with (
        PopulationCheckpointer(out / "checkpoints", read_only=True) as a,
        PopulationCheckpointer(run_dir / "checkpoints", read_only=True) as b,
    ):
        assert a.restore_meta(6)["losses"] == b.restore_meta(6)["losses"]


@pytest.mark.xla_fusion_emitters
def test_sharded_run_matches_and_resumes(config_file: Path, tmp_path: Path, capsys):
    """``--shard`` splits each step's targets over the 8 test devices (TINY has 2 per step:
    refused with one line). With ``reduce_groups`` in the config, a run started sharded
    and resumed unsharded, or sharded throughout, ends at the unsharded weights bit for
    bit."""
    args = ["hyper", "train", "--config", str(config_file), "--quiet", "--shard"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    assert "multiple of the 8 devices" in _one_error_line(capsys)
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({**TINY, "conditions_per_step": 8, "reduce_groups": 8}))
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({**TINY, "conditions_per_step": 8, "reduce_groups": 4}))
    assert (
        main(
            [
                "hyper",
                "train",
                "--config",
                str(odd),
                "--quiet",
                "--shard",
                "--out",
                str(tmp_path / "odd"),
            ]
        )
        == 2
    )
    assert "reduce_groups=4 must be a multiple of the 8 devices" in _one_error_line(capsys)
    ref, half = tmp_path / "ref", tmp_path / "half"
    base = ["hyper", "train", "--config", str(wide), "--quiet"]
    assert main([*base, "--out", str(ref)]) == 0
    hypertrain.train_run(
        str(wide), half, stop_after_steps=3, progress=False, mesh=sharding.targets_mesh()
    )
    assert main([*base, "--out", str(half), "--resume"]) == 0  # resumed on one device
    sharded = tmp_path / "sharded"
    assert main([*base, "--out", str(sharded), "--shard"]) == 0
    want = _weights(hypertrain.load_run(ref)[0])
    for run in (half, sharded):
        got = _weights(hypertrain.load_run(run)[0])
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    # and the sharded run resumes sharded from its own checkpoints
    hypertrain.train_run(
        str(wide),
        tmp_path / "again",
        stop_after_steps=3,
        progress=False,
        mesh=sharding.targets_mesh(),
    )
    assert main([*base, "--out", str(tmp_path / "again"), "--resume", "--shard"]) == 0
    got = _weights(hypertrain.load_run(tmp_path / "again")[0])
    for a, b in zip(got, _weights(hypertrain.load_run(sharded)[0]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_generate_writes_a_zoo_whose_metadata_matches_reevaluation(
    run_dir: Path, trained: HyperNet, tmp_path: Path, digits, capsys
):
    out = tmp_path / "generated"
    args = ["hyper", "generate", "--from", str(run_dir), "--conditions", "gamma=0:1:5"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "zoo generated on digits: 5 networks, hypernet step 6" in printed
    assert "by gamma:" in printed

    z = zoo.load(out)
    assert [g.id for g in z.groups] == ["g0"] and z.checkpoint_epochs == [6]
    assert [m["gamma"] for m in z.members] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert z.config["conditions"][0]["name"] == "gamma" and z.config["run"]["steps"] == 6
    group = z.groups[0]
    expected = generate(trained, {"gamma": np.linspace(0, 1, 5, dtype=np.float32)})
    chex.assert_trees_all_equal(group.params, expected)
    again = evaluate(group.target, group.params, jnp.asarray(digits.x_test), digits.y_test)
    rows = z.rows()
    np.testing.assert_allclose([r["test_loss"] for r in rows], again["loss"], rtol=1e-6)
    np.testing.assert_array_equal([r["test_acc"] for r in rows], again["acc"])
    table = (out / "metadata.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in table] == rows

    # A JSON file of conditions; `info` reads the result like any zoo.
    cond_file = tmp_path / "conditions.json"
    gammas = [0.1, 0.2, 0.3, 0.8, 0.9]  # as many as before: the compiled programs are reused
    cond_file.write_text(json.dumps({"gamma": gammas}))
    args = ["hyper", "generate", "--from", str(run_dir), "--conditions", str(cond_file)]
    assert main([*args, "--out", str(out), "--quiet"]) == 2  # not empty
    assert "use overwrite" in _one_error_line(capsys)
    assert main([*args, "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert main(["info", str(out)]) == 0
    assert "5 networks" in capsys.readouterr().out
    assert [m["gamma"] for m in zoo.load(out).members] == gammas


@pytest.mark.parametrize(
    "conditions, message",
    [
        ("gamma=0:2:4", "must lie in [0.0, 1.0]"),
        ("beta=0:1:4", "unknown conditions ['beta']"),
        ("gamma=0:1", "neither a file nor name=lo:hi:n"),
        ("gamma=a:1:3", "expected numbers"),
        ("gamma=0:1:0", "n must be >= 1"),
        ("gamma=0:1:3,beta=0:1:2", "unknown conditions ['beta']"),
    ],
)
def test_bad_conditions_exit_2_with_one_line(
    run_dir: Path, tmp_path: Path, conditions: str, message: str, capsys
):
    out = tmp_path / "generated"
    args = ["hyper", "generate", "--from", str(run_dir), "--conditions", conditions]
    assert main([*args, "--out", str(out)]) == 2
    assert message in _one_error_line(capsys)
    assert not out.exists()


def test_generate_refuses_a_missing_run(tmp_path: Path, capsys):
    args = ["hyper", "generate", "--from", str(tmp_path / "nothing"), "--conditions", "gamma=0:1:2"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert "holds no readable hypernet run" in _one_error_line(capsys)


def test_generate_refuses_an_out_dir_that_would_delete_the_run(run_dir: Path, capsys):
    args = ["hyper", "generate", "--from", str(run_dir), "--conditions", "gamma=0:1:2"]
    assert main([*args, "--out", str(run_dir / "generated"), "--overwrite"]) == 2
    assert "outside the run directory" in _one_error_line(capsys)
    assert main([*args, "--out", str(run_dir.parent), "--overwrite"]) == 2
    _one_error_line(capsys)
    assert (run_dir / "hypernet.json").exists()


def test_train_rejects_a_bad_config(tmp_path: Path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"steps": 3, "learning_rate": 1}')
    assert main(["hyper", "train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "unknown keys ['learning_rate']" in _one_error_line(capsys)


def test_export_stores_sampled_noise_and_refuses_shadowing_names(mlp_target, tmp_path: Path):
    hnet = HyperNet(mlp_target, [Continuous("gamma"), Noise("z", 2)], hidden=(4,), rngs=nnx.Rngs(0))
    gamma = np.array([0.0, 0.5, 1.0], np.float32)
    z = export_generated(tmp_path / "g", hnet, {"gamma": gamma}, dataset="digits")
    noise = np.array([m["z"] for m in z.members], np.float32)
    assert noise.shape == (3, 2)
    again = generate(hnet, {"gamma": gamma, "z": noise})
    chex.assert_trees_all_close(z.groups[0].params, again, rtol=1e-6, atol=1e-6)

    clash = HyperNet(mlp_target, [Continuous("test_acc")], hidden=(4,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="clash with zoo metadata columns"):
        export_generated(tmp_path / "c", clash, {"test_acc": gamma}, dataset="digits")
    with pytest.raises(ValueError, match="give dataset="):
        export_generated(tmp_path / "c", hnet, {"gamma": gamma})
    assert not (tmp_path / "c").exists()
