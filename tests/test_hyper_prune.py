"""hyper.prune: progressive structured pruning to a speed-up or an accuracy floor, the
pipeline without an edit (the group-L2 baseline) and compact export. The pipeline with a
MetaPruning edit: tests/test_metanets_metaprune.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper import compact, symmetry
from hyper.architectures import make_target
from hyper.checkpoint import CheckpointError, save_population
from hyper.prune import (
    UnreachableSpeedup,
    accuracy,
    check_reachable,
    export_pruned,
    load_pruned,
    prune_pipeline,
    prune_to_floor,
    prune_to_speedup,
)
from hyper.target import Target
from hyper.train import TrainConfig, Trainer

CHANNELS = [6, 6]
ZOO = 4  # trained networks; the last one is pruned


def _leaves(params) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(params)]


def _member(population, i: int):
    return jax.tree.map(lambda a: a[i], population)


def zero_units(target: Target, params, group: symmetry.Group, units):
    """Sets every parameter a group's units own to zero."""
    index = {p: i for i, p in enumerate(target.paths)}
    leaves = [a.copy() for a in _leaves(params)]
    for path, ax in group.axes:
        sl = [slice(None)] * leaves[index[path]].ndim
        sl[ax] = np.asarray(units)
        leaves[index[path]][tuple(sl)] = 0.0
    return jax.tree.unflatten(target.treedef, leaves)


@pytest.fixture(scope="module")
def target():
    return make_target("cnn2d", input_shape=(8, 8), channels=CHANNELS, out_features=10)


@pytest.fixture(scope="module")
def zoo(target, digits):
    """Four digits CNNs trained 3 epochs at different learning rates."""
    tr = Trainer(target, digits, TrainConfig(batch_size=32))
    lr = np.array([1e-2, 2e-2, 3e-2, 5e-2], np.float32)
    state = tr.init(jax.random.key(0), ZOO, learning_rate=lr, shard=False)
    for e in range(3):
        state, _ = tr.train_epoch(state, e)
    assert not bool(jnp.any(state.diverged))
    return state.params


@pytest.fixture(scope="module")
def net(zoo):
    """The held-out trained network."""
    return _member(zoo, ZOO - 1)


@pytest.fixture(scope="module")
def x_batch(digits):
    return np.asarray(digits.x_test[:64])


# ---------------------------------------------------------------------------------------
# prune_to_speedup / prune_to_floor
# ---------------------------------------------------------------------------------------


def test_prune_to_speedup_meets_the_goal(target, net, x_batch):
    f0 = compact.count_flops(target)
    small, sp = prune_to_speedup(target, net, 3.0)
    assert compact.count_flops(small) <= f0 / 3.0
    widths = [g.size for g in symmetry.structural_groups(small)]
    assert len(widths) == len(CHANNELS) and min(widths) >= 1
    assert sum(widths) < sum(CHANNELS)
    small.validate(sp)
    assert compact.count_params(small) < compact.count_params(target)
    shapes = [a.shape for a in _leaves(sp)]
    assert all(
        all(d <= e for d, e in zip(s, o.shape, strict=True))
        for s, o in zip(shapes, target.spec, strict=True)
    )
    y = np.asarray(small.apply(sp, x_batch))
    assert y.shape == (len(x_batch), 10) and np.all(np.isfinite(y))
    # Removal is exact: the small network computes what the original computes with the
    # removed units zeroed. The kept units are found by their (distinct) trained biases.
    zeroed = net
    for i, g in enumerate(symmetry.structural_groups(target)):
        b0, b1 = np.asarray(net["convs"][str(i)]["bias"]), np.asarray(sp["convs"][str(i)]["bias"])
        assert len(np.unique(b0)) == len(b0)
        kept = [int(np.flatnonzero(b0 == b)[0]) for b in b1]
        zeroed = zero_units(target, zeroed, g, np.setdiff1d(np.arange(g.size), kept))
    np.testing.assert_allclose(y, np.asarray(target.apply(zeroed, x_batch)), rtol=1e-5, atol=1e-5)


def test_prune_to_speedup_refusals(target, net):
    with pytest.raises(UnreachableSpeedup, match=r"cannot be reached.*convs/"):
        prune_to_speedup(target, net, 50.0)
    with pytest.raises(UnreachableSpeedup, match=r"cannot be reached.*convs/"):
        check_reachable(target, 50.0)
    check_reachable(target, 3.0)
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="speedup must be"):
            prune_to_speedup(target, net, bad)
    with pytest.raises(ValueError, match="importance"):
        prune_to_speedup(target, net, 2.0, importance="l3")
    with pytest.raises(ValueError, match="steps"):
        prune_to_speedup(target, net, 2.0, steps=0)


def test_random_importance_is_deterministic_given_a_key(target, net):
    def run(seed):
        _, sp = prune_to_speedup(
            target, net, 2.0, importance="random", steps=1, key=jax.random.key(seed)
        )
        return _leaves(sp)

    a, b = run(3), run(3)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)

    def same(u, v):
        return all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(u, v, strict=True))

    assert not all(same(a, run(s)) for s in (4, 5, 6))


def test_all_zero_units_are_removed_first_and_keep_the_function(target, net, x_batch):
    groups = symmetry.structural_groups(target)
    dead = [np.array([1, 4]), np.array([2])]
    p = net
    for g, d in zip(groups, dead, strict=True):
        p = zero_units(target, p, g, d)
    keep = [np.setdiff1d(np.arange(g.size), d) for g, d in zip(groups, dead, strict=True)]
    reference, _ = compact.remove_units(target, p, keep)
    f0, fz = compact.count_flops(target), compact.count_flops(reference)
    # a speed-up that removing exactly the dead units reaches (FLOPs are integers)
    small, sp = prune_to_speedup(target, p, f0 / (fz + 0.5))
    assert [g.size for g in symmetry.structural_groups(small)] == [len(k) for k in keep]
    k0 = np.asarray(p["convs"]["0"]["kernel"])
    np.testing.assert_array_equal(np.asarray(sp["convs"]["0"]["kernel"]), k0[..., keep[0]])
    k1 = np.asarray(p["convs"]["1"]["kernel"])[:, :, keep[0], :][..., keep[1]]
    np.testing.assert_array_equal(np.asarray(sp["convs"]["1"]["kernel"]), k1)
    np.testing.assert_allclose(
        np.asarray(small.apply(sp, x_batch)),
        np.asarray(target.apply(p, x_batch)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_prune_to_floor_keeps_the_floor(target, net, digits):
    a0 = accuracy(target, net, digits, split="train")
    floor = a0 - 0.03
    small, sp = prune_to_floor(target, net, digits, floor, factor=1.25)
    assert accuracy(small, sp, digits, split="train") >= floor
    assert compact.count_flops(small) < compact.count_flops(target)
    # a floor the first round cannot keep returns the input itself
    same_t, same_p = prune_to_floor(target, net, digits, 1.0)
    assert same_t is target and same_p is net
    with pytest.raises(ValueError, match="floor"):
        prune_to_floor(target, net, digits, 1.5)


def test_prune_to_floor_refuses_bad_arguments(target, net, digits):
    # not mistaken for "nothing left to remove" (which returns the last network)
    with pytest.raises(ValueError, match="importance"):
        prune_to_floor(target, net, digits, 0.0, importance="l3")
    with pytest.raises(ValueError, match="normalizer"):
        prune_to_floor(target, net, digits, 0.0, normalizer="median")
    with pytest.raises(ValueError, match="factor"):
        prune_to_floor(target, net, digits, 0.0, factor=1.0)


def test_pipeline_without_edit_exports_a_standalone_network(tmp_path, target, net, digits, zoo):
    """The group-L2 baseline: no edit, no ``"edited"`` stage; the compact network exports
    and loads without the original."""
    r = prune_pipeline(
        target, net, digits, speedup=2.0, finetune_before=3, finetune_after=3, prune_steps=1
    )
    assert set(r.acc) == {"original", "finetuned", "pruned", "final"}
    assert r.info["metanet"] is False and r.speedup >= 2.0
    assert r.config is not None and r.target.config == r.config
    t, p, record = load_pruned(export_pruned(tmp_path / "pruned", r))
    assert t.config == r.config and record["acc"] == pytest.approx(r.acc)
    for a, b in zip(_leaves(p), _leaves(r.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert accuracy(t, p, digits) == pytest.approx(r.acc["final"])
    # an edit is applied to the trained network before fine-tuning
    seen = []

    def edit(t_, params):
        seen.append(t_)
        return jax.tree.map(lambda a: 0.5 * a, params)

    e = prune_pipeline(
        target, net, digits, speedup=2.0, edit=edit, finetune_before=0, finetune_after=0
    )
    assert seen == [target]
    half = jax.tree.map(lambda a: 0.5 * a, net)
    assert e.acc["edited"] == pytest.approx(accuracy(target, half, digits))
    with pytest.raises(ValueError, match="exactly one"):
        prune_pipeline(target, net, digits)
    save_population(tmp_path / "zoo", zoo, target)
    with pytest.raises(CheckpointError, match="no pruned network"):
        load_pruned(tmp_path / "zoo")
