"""The zoo builder: metadata that agrees with the checkpoints, resumable builds that end
exactly where an uninterrupted build ends, and argument checks before anything is written.

One small zoo (2 groups x 8 members, 3 epochs) is built once per module; the other builds
of the module repeat its programs and hit a persistent compilation cache."""

import csv
import json
import shutil

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from hyper import data, zoo
from hyper.checkpoint import CheckpointError
from hyper.train import evaluate

GRID = {
    "learning_rate": [1e-2, 3e-2],
    "weight_decay": [0.0, 1e-3],
    "init_scale": [1.0],
    "train_fraction": [1.0],
    "activation": ["relu", "tanh"],
}
CONFIG = dict(
    preset="digits-mlp",
    grid=GRID,
    seeds=[0, 5],
    epochs=3,
    checkpoint_epochs=[0, 1],
    batch_size=64,
    arch={"arch": "mlp", "widths": [8], "out_features": 10},
    progress=False,
)
EPOCHS = [0, 1, 3]  # the last epoch is always saved
MEMBERS = 2 * 2 * 2 * 2  # learning rates x weight decays x activations x seeds


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """A persistent compilation cache for this module only: every build after the first
    compiles nothing."""
    old_dir = jax.config.jax_compilation_cache_dir
    old_min = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax-cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()  # the cache is set up once per process otherwise
    yield
    jax.config.update("jax_compilation_cache_dir", old_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The reference zoo, built in one uninterrupted call."""
    return zoo.build(tmp_path_factory.mktemp("zoos") / "ref", **CONFIG)


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _assert_params_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- the built zoo ---------------------------------------------------------------------


def test_groups_and_member_table(ref):
    assert ref.config["complete"] is True
    assert ref.checkpoint_epochs == EPOCHS
    assert [g.id for g in ref.groups] == ["g0", "g1"]
    assert ref.num_members == MEMBERS
    assert [m["member"] for m in ref.members] == list(range(MEMBERS))
    for g in ref.groups:
        assert len(g.members) == MEMBERS // 2
        assert g.epoch == EPOCHS[-1]
        assert g.target.validate(g.params, batched=True) == len(g.members)
        # A group shares the structural hyperparameters; its target was built with them.
        assert {m["activation"] for m in g.members} == {g.target.config["activation"]}
    combos = {
        (m["learning_rate"], m["weight_decay"], m["activation"], m["seed"]) for m in ref.members
    }
    assert len(combos) == MEMBERS  # the full grid x seeds, each once
    assert ref.group("g1") is ref.groups[1]
    with pytest.raises(KeyError, match="g7"):
        ref.group("g7")


def test_metadata_rows_match_the_member_table(ref, digits):
    assert len(ref.metadata) == MEMBERS * len(EPOCHS)
    assert [(r["member"], r["epoch"]) for r in ref.metadata] == [
        (m, e) for m in range(MEMBERS) for e in EPOCHS
    ]
    members = {m["member"]: m for m in ref.members}
    group_of = {m["member"]: g.id for g in ref.groups for m in g.members}
    for r in ref.metadata:
        m = members[r["member"]]
        assert {k: r[k] for k in m} == m  # seed and every hyperparameter
        assert r["group"] == group_of[r["member"]]
        assert r["diverged"] is False
        for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert np.isfinite(r[k])
        correct = r["test_acc"] * len(digits.y_test)  # a count of correct test examples
        assert correct == pytest.approx(round(correct), abs=1e-3)
    assert [r["member"] for r in ref.rows()] == list(range(MEMBERS))
    assert {r["epoch"] for r in ref.rows()} == {3}
    assert {r["epoch"] for r in ref.rows(0)} == {0}
    # Training did something: the mean test accuracy rises from chance.
    assert (
        np.mean([r["test_acc"] for r in ref.rows()])
        > np.mean([r["test_acc"] for r in ref.rows(0)]) + 0.2
    )


def test_metadata_file_holds_the_rows(ref):
    with open(f"{ref.directory}/metadata.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert rows == ref.metadata
    with open(f"{ref.directory}/zoo.json") as f:
        assert json.load(f) == ref.config


def test_metadata_agrees_with_reevaluated_checkpoints(ref):
    ds = data.load("digits")
    eval_fn = jax.jit(evaluate, static_argnums=0)
    previous = None
    for epoch in EPOCHS:
        z = zoo.load(ref.directory, epoch=epoch)
        assert z.metadata == ref.metadata
        params = []
        for g in z.groups:
            assert g.epoch == epoch
            got = eval_fn(g.target, g.params, ds.x_test, ds.y_test)
            rows = {r["member"]: r for r in z.rows(epoch)}
            want = [rows[m["member"]] for m in g.members]
            np.testing.assert_allclose(got["acc"], [r["test_acc"] for r in want], rtol=1e-6)
            np.testing.assert_allclose(got["loss"], [r["test_loss"] for r in want], rtol=1e-5)
            params.append(g.params)
        if previous is not None:  # each epoch restores its own weights
            assert not np.array_equal(
                jax.tree.leaves(previous[0])[0], jax.tree.leaves(params[0])[0]
            )
        previous = params
    _assert_params_equal(zoo.load(ref.directory).groups[1].params, ref.groups[1].params)


def test_load_refuses_unknown_epochs_and_non_zoos(ref, tmp_path):
    with pytest.raises(CheckpointError, match="epoch 2 was not checkpointed"):
        zoo.load(ref.directory, epoch=2)
    with pytest.raises(CheckpointError, match="zoo description"):
        zoo.load(tmp_path)
    (tmp_path / "zoo.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not a weightspace zoo"):
        zoo.load(tmp_path)


def test_summarize_mentions_each_varied_hyperparameter(ref):
    text = zoo.summarize(ref)
    assert f"{MEMBERS} networks, epoch 3" in text
    for k in ("learning_rate", "weight_decay", "activation"):
        assert f"by {k}:" in text
    for k in ("init_scale", "train_fraction", "dropout", "optimizer"):
        assert f"by {k}:" not in text  # one value: nothing to compare
    assert "relu" in text and "tanh" in text
    assert "epoch 0" in zoo.summarize(ref, epoch=0)


# --- refusing to mix zoos ---------------------------------------------------------------


def test_refuses_to_overwrite_or_repeat_without_being_told(ref, tmp_path):
    with pytest.raises(ValueError, match="already holds this zoo; use resume"):
        zoo.build(ref.directory, **CONFIG)
    with pytest.raises(ValueError, match="different zoo .*epochs"):
        zoo.build(ref.directory, **{**CONFIG, "epochs": 4})
    with pytest.raises(ValueError, match="different zoo .*seed"):
        zoo.build(ref.directory, **{**CONFIG, "seed": 1}, resume=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no zoo"):
        zoo.build(other, **CONFIG)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="mutually exclusive"):
        zoo.build(tmp_path / "z", **CONFIG, overwrite=True, resume=True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        zoo.build(tmp_path / "afile", **CONFIG)
    # Tests run as root, where permission bits do not block writes; nobody can create a
    # directory below a regular file.
    with pytest.raises(ValueError, match="cannot create zoo directory"):
        zoo.build(tmp_path / "afile" / "zoo", **CONFIG)


def test_overwrite_replaces_another_zoo_and_writes_csv(ref, tmp_path):
    directory = tmp_path / "zoo"
    shutil.copytree(ref.directory, directory)
    (directory / "zoo.json").write_text("{ truncated")  # even a broken one is replaced
    config = {**CONFIG, "seed": 1, "metadata_format": "csv"}
    with pytest.raises(CheckpointError, match="cannot read zoo description"):
        zoo.build(directory, **config)
    z = zoo.build(directory, **config, overwrite=True)
    assert not (directory / "metadata.jsonl").exists()  # nothing left of the old zoo
    assert z.config["seed"] == 1 and z.config["metadata_format"] == "csv"
    assert len(z.metadata) == MEMBERS * len(EPOCHS)
    # Another root seed: other weights, same member table.
    assert [m for m in z.members] == ref.members
    assert not np.array_equal(
        jax.tree.leaves(z.groups[0].params)[0], jax.tree.leaves(ref.groups[0].params)[0]
    )
    with open(directory / "metadata.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == sorted(z.metadata[0])
        rows = list(reader)
    assert len(rows) == len(z.metadata)
    for got, want in zip(rows, z.metadata, strict=True):
        for k, v in want.items():
            if isinstance(v, bool):
                assert got[k] == str(v)
            elif isinstance(v, int | float):
                assert float(got[k]) == v, k  # repr of floats round-trips exactly
            else:
                assert got[k] == v


# --- interruption -----------------------------------------------------------------------


def test_interrupted_build_resumes_to_the_same_zoo(ref, tmp_path):
    directory = tmp_path / "zoo"
    # Stop inside group 0 after epoch 2: its last checkpoint is epoch 1, so epoch 2 is lost
    # and must be trained again.
    part = zoo.build(directory, **CONFIG, stop_after_epochs=2)
    assert part.config["complete"] is False
    assert [g.epoch for g in part.groups] == [1, None]
    assert {(r["group"], r["epoch"]) for r in part.metadata} == {("g0", 0), ("g0", 1)}
    assert "by activation:" in zoo.summarize(part, epoch=1)  # a partial zoo summarises
    with pytest.raises(CheckpointError, match="incomplete"):
        zoo.load(directory)
    with pytest.raises(ValueError, match="use resume"):
        zoo.build(directory, **CONFIG)
    # Resume, and stop again inside group 1.
    part = zoo.build(directory, **CONFIG, resume=True, stop_after_epochs=3)
    assert [g.epoch for g in part.groups] == [3, 1]
    # Resume to the end.
    z = zoo.build(directory, **CONFIG, resume=True)
    assert _read(directory / "metadata.jsonl") == _read(f"{ref.directory}/metadata.jsonl")
    assert _read(directory / "zoo.json") == _read(f"{ref.directory}/zoo.json")
    assert z.metadata == ref.metadata
    for g, r in zip(z.groups, ref.groups, strict=True):
        _assert_params_equal(g.params, r.params)
    # Resuming a finished zoo changes nothing.
    again = zoo.build(directory, **CONFIG, resume=True)
    assert _read(directory / "metadata.jsonl") == _read(f"{ref.directory}/metadata.jsonl")
    _assert_params_equal(again.groups[0].params, ref.groups[0].params)


# --- argument checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid, key",
    [
        ({"momentum": [0.9]}, "momentum"),
        ({"learning_rate": []}, "learning_rate"),
        ({"learning_rate": [-1e-3]}, "learning_rate"),
        ({"learning_rate": [float("nan")]}, "learning_rate"),
        ({"learning_rate": [1e-2, 1e-2]}, "learning_rate"),
        ({"init_scale": [1, 1.0]}, "init_scale"),
        ({"weight_decay": ["0.1"]}, "weight_decay"),
        ({"weight_decay": [True]}, "weight_decay"),
        ({"init_scale": [0]}, "init_scale"),
        ({"train_fraction": [1.5]}, "train_fraction"),
        ({"dropout": [1.0]}, "dropout"),
        ({"activation": ["swish"]}, "activation"),
        ({"activation": [["relu"]]}, "activation"),
        ({"optimizer": ["adagrad"]}, "optimizer"),
        ({"optimizer": [{"name": "adam"}]}, "optimizer"),
    ],
)
def test_grid_errors_name_the_key(tmp_path, grid, key):
    with pytest.raises(ValueError, match=f"'?{key}'?"):
        zoo.build(tmp_path / "z", **{**CONFIG, "grid": {**GRID, **grid}})
    assert not (tmp_path / "z").exists()


@pytest.mark.parametrize(
    "override, match",
    [
        ({"preset": "imagenet"}, "unknown preset"),
        ({"dataset": "cifar"}, "unknown dataset"),
        ({"seeds": 0}, "seeds"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"seeds": "3"}, "seeds"),
        ({"seeds": True}, "seeds"),
        ({"seeds": [0.5]}, "seeds"),
        ({"epochs": -1}, "epochs"),
        ({"checkpoint_epochs": [0, 7]}, "checkpoint epochs"),
        ({"checkpoint_epochs": [-1]}, "checkpoint epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"metadata_format": "parquet"}, "metadata_format"),
        ({"arch": {"arch": "lstm", "out_features": 10}}, "unknown architecture"),
        ({"arch": {"arch": "transformer", "out_features": 10}}, "missing config 'patch_size'"),
        ({"arch": {"arch": "mlp", "out_features": 10}}, "widths"),
    ],
)
def test_bad_arguments_fail_before_writing(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        zoo.build(tmp_path / "z", **{**CONFIG, **override})
    assert not (tmp_path / "z").exists()
