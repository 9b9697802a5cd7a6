"""Checkpoints: exact round trips, restore only against a matching abstract tree, atomic
steps, and clear errors for everything else."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hyper import sharding
from hyper.checkpoint import (
    CheckpointError,
    PopulationCheckpointer,
    abstract_like,
    load_model,
    load_population,
    prepare_dir,
    read_model_metadata,
    save_model,
    save_population,
)


def _params():
    return {
        "dense": {
            "kernel": jnp.arange(24.0, dtype=jnp.float32).reshape(2, 3, 4),
            "bias": jnp.full((2, 4), -1.5, jnp.float32),
        },
        "count": jnp.array([3, 7], jnp.int32),
    }


def _opt_state(params):
    opt = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2, weight_decay=1e-3)
    state = opt.init(params)
    # One real update so that the moments are not all zeros.
    grads = jax.tree.map(lambda x: jnp.ones_like(x, jnp.float32) * 0.25, params)
    grads["count"] = jnp.zeros((2,), jnp.int32)
    _, state = opt.update(grads, state, params)
    return state


def _population(target, n: int, seed: int = 0):
    """Random weights of the target's shapes, made with numpy (nothing to compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: rng.standard_normal(s.shape).astype(s.dtype), target.abstract_params(n)
    )


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint directory holding step 3: params, an optax state and JSON meta."""
    params = _params()
    opt_state = _opt_state(params)
    meta = {"epoch": 3, "rows": [{"member": 0, "acc": 0.125, "ok": True}], "name": "run"}
    directory = tmp_path_factory.mktemp("ckpt")
    with PopulationCheckpointer(directory) as ckpt:
        ckpt.save(3, {"params": params, "opt_state": opt_state}, meta=meta)
    return directory, params, opt_state, meta


def test_round_trip_is_exact(saved):
    directory, params, opt_state, meta = saved
    with PopulationCheckpointer(directory, read_only=True) as ckpt:
        assert ckpt.steps() == [3]
        assert ckpt.latest_step() == 3
        abstract = {"params": abstract_like(params), "opt_state": abstract_like(opt_state)}
        arrays, got_meta = ckpt.restore(3, abstract)
        assert got_meta == meta
        assert ckpt.restore_meta(3) == meta
        # The optax state comes back as the same NamedTuples, usable by optax again.
        _assert_trees_equal(arrays["params"], params)
        _assert_trees_equal(arrays["opt_state"], opt_state)
        # Restoring against concrete arrays works too (they are turned abstract), and
        # step=None means the latest.
        arrays, _ = ckpt.restore(None, {"params": params})
        _assert_trees_equal(arrays["params"], params)


def _restore_error(directory, abstract) -> str:
    with PopulationCheckpointer(directory, read_only=True) as ckpt:
        with pytest.raises(CheckpointError) as info:
            ckpt.restore(3, abstract)
    return str(info.value)


def test_restore_wrong_shape_names_the_leaf(saved):
    directory, params, _, _ = saved
    bad = abstract_like(params)
    bad["dense"]["kernel"] = jax.ShapeDtypeStruct((2, 3, 5), jnp.float32)
    msg = _restore_error(directory, {"params": bad})
    assert "params/dense/kernel" in msg and "(2, 3, 4)" in msg and "(2, 3, 5)" in msg


def test_restore_wrong_dtype_is_not_silently_cast(saved):
    directory, params, _, _ = saved
    bad = abstract_like(params)
    bad["count"] = jax.ShapeDtypeStruct((2,), jnp.float32)
    msg = _restore_error(directory, {"params": bad})
    assert "params/count" in msg and "int32" in msg and "float32" in msg


def test_restore_missing_or_extra_leaf_names_it(saved):
    directory, params, _, _ = saved
    more = abstract_like(params)
    more["dense"]["scale"] = jax.ShapeDtypeStruct((2, 4), jnp.float32)
    msg = _restore_error(directory, {"params": more})
    assert "dense/scale" in msg and "'params'" in msg
    fewer = abstract_like(params)
    del fewer["dense"]["bias"]
    msg = _restore_error(directory, {"params": fewer})
    assert "dense/bias" in msg


def test_restore_missing_item_or_step(saved):
    directory, params, _, _ = saved
    msg = _restore_error(directory, {"weights": params})
    assert "'weights'" in msg and "params" in msg
    with PopulationCheckpointer(directory, read_only=True) as ckpt:
        with pytest.raises(CheckpointError, match="no step 4"):
            ckpt.restore(4, {"params": params})
        with pytest.raises(CheckpointError, match="no step 4"):
            ckpt.restore_meta(4)


def test_save_refuses_existing_step_and_bad_input(saved, tmp_path):
    directory, params, _, _ = saved
    with PopulationCheckpointer(directory) as ckpt:
        with pytest.raises(CheckpointError, match="step 3 already exists"):
            ckpt.save(3, {"params": params})
        with pytest.raises(CheckpointError, match="non-negative"):
            ckpt.save(-1, {"params": params})
        with pytest.raises(CheckpointError, match="reserved"):
            ckpt.save(4, {"meta": params})
        with pytest.raises(CheckpointError, match="not JSON"):
            ckpt.save(4, {"params": params}, meta={"x": object()})
        assert ckpt.steps() == [3]  # nothing half-written became a step
    with PopulationCheckpointer(directory, read_only=True) as ckpt:
        with pytest.raises(CheckpointError, match="read-only"):
            ckpt.save(9, {"params": params})


def test_steps_are_numeric_and_ignore_half_written_steps(tmp_path):
    params = _params()
    with PopulationCheckpointer(tmp_path) as ckpt:
        assert ckpt.steps() == [] and ckpt.latest_step() is None
        with pytest.raises(CheckpointError, match="no committed checkpoint"):
            ckpt.restore(None, {"params": params})
        for step in (10, 0, 2):
            ckpt.save(step, {"params": params}, meta={"step": step})
        assert ckpt.steps() == [0, 2, 10]
        assert ckpt.latest_step() == 10
    # What a process killed in the middle of Orbax's save leaves behind (Orbax 0.12 names
    # it "<step>.orbax-checkpoint-tmp"; other versions add a suffix).
    for name in ("7.orbax-checkpoint-tmp-123", "11.orbax-checkpoint-tmp"):
        os.makedirs(tmp_path / name / "params")
        (tmp_path / name / "params" / "junk").write_bytes(b"\x00half-written")
    with PopulationCheckpointer(tmp_path, read_only=True) as ckpt:
        assert ckpt.steps() == [0, 2, 10]
        assert ckpt.latest_step() == 10
        with pytest.raises(CheckpointError, match="no step 7"):
            ckpt.restore_meta(7)
    # A resumed run saves the steps the killed run did not finish.
    with PopulationCheckpointer(tmp_path) as ckpt:
        assert ckpt.steps() == [0, 2, 10]
        ckpt.save(7, {"params": params}, meta={"step": 7})
        ckpt.save(11, {"params": params}, meta={"step": 11})
        assert ckpt.steps() == [0, 2, 7, 10, 11]
        arrays, meta = ckpt.restore(11, {"params": params})
    assert meta == {"step": 11}
    _assert_trees_equal(arrays["params"], params)
    assert not (tmp_path / "11.orbax-checkpoint-tmp").exists()


def test_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _params()
    with PopulationCheckpointer("runs/a") as ckpt:
        assert ckpt.directory == str(tmp_path / "runs" / "a")
        ckpt.save(1, {"params": params})
    monkeypatch.chdir(tmp_path / "runs")  # what was saved does not depend on the cwd
    with PopulationCheckpointer(tmp_path / "runs" / "a", read_only=True) as ckpt:
        arrays, _ = ckpt.restore(1, {"params": params})
    _assert_trees_equal(arrays["params"], params)


def test_unusable_directories_raise_checkpoint_errors(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    # Tests run as root, where permission bits do not block writes: a path below a regular
    # file cannot be created by anyone.
    with pytest.raises(CheckpointError, match="cannot open checkpoint directory"):
        PopulationCheckpointer(afile / "sub")
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        PopulationCheckpointer(tmp_path / "missing", read_only=True)


def test_save_load_population_round_trip(tmp_path, mlp_target, cnn_target):
    pop = _population(mlp_target, jax.device_count())
    meta = {"source": "test", "accs": [0.5, 0.25, 1.0]}
    out = save_population(tmp_path / "pop", pop, mlp_target, metadata=meta)
    assert out == str(tmp_path / "pop")

    # Without the target: rebuilt from the stored config.
    target, got, got_meta = load_population(out)
    assert target.paths == mlp_target.paths
    assert target.config == mlp_target.config
    assert got_meta == meta
    _assert_trees_equal(got, pop)
    # With the target.
    target, got, _ = load_population(out, target=mlp_target)
    assert target is mlp_target
    _assert_trees_equal(got, pop)
    # A target whose leaves differ is refused, naming the leaves.
    with pytest.raises(CheckpointError, match="do not match target"):
        load_population(out, target=cnn_target)

    with pytest.raises(CheckpointError, match="not empty"):
        save_population(out, pop, mlp_target)
    smaller = jax.tree.map(lambda x: x[:2], pop)
    save_population(out, smaller, mlp_target, overwrite=True)
    _, got, got_meta = load_population(out)
    _assert_trees_equal(got, smaller)
    assert got_meta == {}


def test_save_population_validates_before_writing(tmp_path, mlp_target):
    good = _population(mlp_target, jax.device_count())
    bad = {"blocks": good["layers"]}  # a wrong leaf path
    with pytest.raises(ValueError, match="blocks"):
        save_population(tmp_path / "bad", bad, mlp_target)
    assert not (tmp_path / "bad").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        save_population(tmp_path / "afile", good, mlp_target)
    with pytest.raises(CheckpointError):
        save_population(tmp_path / "afile" / "sub", good, mlp_target)


def test_load_population_refuses_other_directories(saved, tmp_path):
    directory = saved[0]
    with pytest.raises(CheckpointError, match="not a weightspace population"):
        load_population(directory)
    with pytest.raises(CheckpointError, match="no population checkpoint"):
        load_population(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        load_population(tmp_path / "missing")


def test_sharded_population_round_trip(tmp_path, mlp_target):
    """Checkpoints do not depend on the device layout they were made on."""
    n = jax.device_count()
    pop = _population(mlp_target, n, seed=1)
    sharded = sharding.shard_targets(pop, sharding.targets_mesh())
    save_population(tmp_path / "pop", sharded, mlp_target)
    _, got, _ = load_population(tmp_path / "pop")
    _assert_trees_equal(got, pop)


def test_prepare_dir_refuses_files_and_content_unless_overwrite(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(CheckpointError, match="exists and is not a directory"):
        prepare_dir(afile)
    with pytest.raises(CheckpointError, match="cannot create"):
        prepare_dir(afile / "sub")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty and holds no zoo; use --overwrite"):
        prepare_dir(full, holds="zoo", hint="use --overwrite")
    assert prepare_dir(full, ignore=("notes.txt",)) == str(full)  # ignored names don't count
    assert prepare_dir(full, overwrite=True, write=False) == str(full)  # checks only
    assert (full / "notes.txt").exists()
    assert prepare_dir(full, overwrite=True) == str(full)
    assert os.listdir(full) == []
    assert os.path.isdir(prepare_dir(tmp_path / "a" / "b"))  # parents created


def test_save_model_and_load_model_round_trip_with_a_format_check(tmp_path):
    def build(meta):
        return nnx.Linear(meta["features"], 3, rngs=nnx.Rngs(0))

    model = nnx.Linear(2, 3, rngs=nnx.Rngs(7))
    out = save_model(tmp_path / "m", model, format="test-linear", metadata={"features": 2})
    assert out == str(tmp_path / "m")
    got, meta = load_model(out, build, format="test-linear")
    assert meta == {"format": "test-linear", "features": 2}
    assert read_model_metadata(out, format="test-linear") == meta
    np.testing.assert_array_equal(got.kernel[...], model.kernel[...])
    np.testing.assert_array_equal(got.bias[...], model.bias[...])
    with pytest.raises(CheckpointError, match="holds no linear layer"):
        load_model(out, build, format="other", what="linear layer")
    with pytest.raises(CheckpointError, match="not empty"):
        save_model(out, model, format="test-linear")
    with pytest.raises(CheckpointError, match="reserved"):
        save_model(tmp_path / "r", model, format="x", metadata={"format": "y"})
    # A module of another shape is refused, naming the leaf.
    with pytest.raises(CheckpointError, match="kernel"):
        load_model(out, lambda meta: nnx.Linear(4, 3, rngs=nnx.Rngs(0)), format="test-linear")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model checkpoint"):
        load_model(tmp_path / "empty", build, format="x", what="model")
