"""hyper.prune: progressive structured pruning to a speed-up or an accuracy floor, the
pipeline without an edit (the group-L2 baseline) and compact export. The pipeline with a
MetaPruning edit: tests/test_metanets_metaprune.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper import compact, latency, symmetry
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
        target, net, digits, speedup=1.5, edit=edit, finetune_before=0, finetune_after=0, round_to=4
    )
    assert seen == [target]
    # round_to reaches the pipeline: widths 4 or 6, FLOPs counted after rounding
    assert e.info["round_to"] == 4 and set(e.info["widths"]) <= {4, 6} and e.speedup >= 1.5
    half = jax.tree.map(lambda a: 0.5 * a, net)
    assert e.acc["edited"] == pytest.approx(accuracy(target, half, digits))
    with pytest.raises(ValueError, match="exactly one"):
        prune_pipeline(target, net, digits)
    save_population(tmp_path / "zoo", zoo, target)
    with pytest.raises(CheckpointError, match="no pruned network"):
        load_pruned(tmp_path / "zoo")


# ---------------------------------------------------------------------------------------
# Width rounding and latency models (issue 28 item 7: pruning that pays)
# ---------------------------------------------------------------------------------------


def _widths(t: Target) -> list[int]:
    return [g.size for g in symmetry.structural_groups(t)]


def test_rounded_width_rule():
    """Kept widths round up to a multiple of round_to, never past the group's size; a group
    smaller than round_to is not rounded and keeps >= 1 unit."""
    assert [latency.rounded_width(k, 32, 8) for k in (0, 1, 8, 9, 16, 17, 31, 32)] == [
        8, 8, 8, 16, 16, 24, 32, 32
    ]  # fmt: skip
    assert [latency.rounded_width(k, 20, 8) for k in (1, 9, 17, 20)] == [8, 16, 20, 20]
    assert [latency.rounded_width(k, 6, 8) for k in (0, 1, 5, 6)] == [1, 1, 5, 6]
    assert [latency.rounded_width(k, 6, 1) for k in (0, 3, 6)] == [1, 3, 6]
    # down: to the multiple at or below, at least one multiple; the same set of widths
    down = [latency.rounded_width(k, 32, 8, down=True) for k in (0, 1, 8, 9, 16, 17, 31, 32)]
    assert down == [8, 8, 8, 8, 16, 16, 24, 32]
    assert [latency.rounded_width(k, 20, 8, down=True) for k in (1, 15, 19, 20)] == [8, 8, 16, 20]
    assert [latency.rounded_width(k, 6, 8, down=True) for k in (0, 5, 6)] == [1, 5, 6]
    for size in (6, 20, 32):
        up = {latency.rounded_width(k, size, 8) for k in range(1, size + 1)}
        assert up == {latency.rounded_width(k, size, 8, down=True) for k in range(1, size + 1)}
    assert latency.width_grid([20, 4], 8) == [
        (w, v) for w in (20, 16, 8) for v in (4, 3, 2, 1)
    ]  # fmt: skip


def test_round_to_keeps_multiples_and_counts_flops_after_rounding(target, net):
    """round_to=4 on 6/6 channels: every kept width is 4 or 6 (the whole group), the
    rounded network meets the FLOPs goal, and the kept units are each group's best-scored
    ones (one round: the scores of the original)."""
    f0 = compact.count_flops(target)
    for s in (1.2, 1.5, 1.8):  # [4, 4] is 1.87x
        small, sp = prune_to_speedup(target, net, s, round_to=4, steps=1)
        widths = _widths(small)
        assert set(widths) <= {4, 6} and widths != [6, 6]
        assert compact.count_flops(small) <= f0 / s  # counted on the rounded network
        # no overshoot: widening any group by one multiple (or to its size) misses the goal
        for i, w in enumerate(widths):
            if w < 6:
                wider = [np.arange(min(v + 4, 6) if j == i else v) for j, v in enumerate(widths)]
                t, _ = compact.remove_units(target, net, wider)
                assert compact.count_flops(t) > f0 / s
        scores = compact.group_importance(target, net, method="l2", normalizer="mean")
        for i, w in enumerate(widths):
            b0, b1 = (
                np.asarray(net["convs"][str(i)]["bias"]),
                np.asarray(sp["convs"][str(i)]["bias"]),
            )
            best = np.sort(np.argsort(-np.asarray(scores[i]), kind="stable")[:w])
            np.testing.assert_array_equal(b1, b0[best])
    # without rounding, the same goal leaves widths rounding forbids
    unrounded = _widths(prune_to_speedup(target, net, 1.8, steps=1)[0])
    assert not set(unrounded) <= {4, 6}
    # a goal reachable at widths 1/1 but not at 4/4 is refused only with rounding
    small4, _ = compact.remove_units(target, net, [np.arange(4), np.arange(4)])
    s = f0 / compact.count_flops(small4) + 0.5
    check_reachable(target, s)
    with pytest.raises(UnreachableSpeedup, match="rounded to multiples of 4"):
        check_reachable(target, s, round_to=4)
    with pytest.raises(UnreachableSpeedup, match="rounded to multiples of 4"):
        prune_to_speedup(target, net, s, round_to=4, steps=1)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="round_to"):
            prune_to_speedup(target, net, 2.0, round_to=bad)


def test_rounding_keeps_the_rankings_allocation_across_layers():
    """A CNN 8/16/16 (initial weights, no training) to 3x fewer FLOPs with round_to=4: the
    rounded widths are never below the unrounded ones rounded down. Rounding up while
    walking the ranking (the old rule) cut the second layer to 4 where the ranking kept 8
    (widths 8/4/8: the first layer, cheap in FLOPs and dear in time, kept whole)."""
    t = make_target("cnn2d", input_shape=(8, 8), channels=[8, 16, 16], out_features=10)
    p = t.init(jax.random.key(2))
    f0 = compact.count_flops(t)
    for s in (2.0, 3.0):
        u = _widths(prune_to_speedup(t, p, s, steps=1)[0])
        small, _ = prune_to_speedup(t, p, s, steps=1, round_to=4)
        r = _widths(small)
        assert all(v % 4 == 0 for v in r) and compact.count_flops(small) <= f0 / s
        floor = [latency.rounded_width(a, 16 if i else 8, 4, down=True) for i, a in enumerate(u)]
        assert all(b >= a for a, b in zip(floor, r, strict=True)), (u, r)


def test_trim_and_refill_by_score_per_cost():
    """Two groups of 16, multiples of 8, cost 4*w0 + w1: the first group's units score
    twice as high but cost four times as much, so trimming takes them first and refilling
    restores the cheap group first (restoring by score alone would give (16, 8))."""
    order = [(g, u) for u in range(16) for g in (0, 1)]
    scores = [np.full(16, 2.0), np.full(16, 1.0)]

    def cost(w):
        return 4.0 * w[0] + w[1]

    args = ([16, 16], order, scores, 8, cost)
    assert latency.trim_widths((16, 16), *args, 48.0) == (8, 16)
    assert latency.refill_widths((8, 8), *args, 72.0) == (8, 16)
    assert latency.refill_widths((8, 8), *args, 80.0) == (16, 16)
    assert latency.trim_widths((16, 16), *args, 1.0) == (8, 8)  # nothing left: over
    assert latency.refill_widths((8, 8), [16, 16], order, scores, 8, lambda w: w[0], 8.0) == (
        8,
        16,
    )  # a restore that costs nothing comes first


def test_a_latency_table_steers_pruning(target, net, x_batch):
    """With an injected latency model the goal is latency(widths) <= latency(6, 6) / speedup:
    a model in which only the first layer's width costs prunes the first layer down to the
    first width meeting the goal, one in which only the second costs prunes the second;
    a table gives what the same function gives, and the same run twice is identical."""

    def first(w):
        return 1.0 if w[0] > 2 else 0.1

    def second(w):
        return 1.0 if w[1] > 2 else 0.1

    t1, p1 = prune_to_speedup(target, net, 2.0, latency=first, steps=1)
    t2, _ = prune_to_speedup(target, net, 2.0, latency=second, steps=1)
    assert _widths(t1)[0] == 2 and _widths(t2)[1] == 2
    # the first candidate in ranking order: group 0 has lost 4 units (6 -> 2), group 1 the
    # units ranked below group 0's 4th-lowest (never its best one)
    scores = compact.group_importance(target, net, method="l2", normalizer="mean")
    s0, s1 = np.sort(np.asarray(scores[0])), np.asarray(scores[1])
    assert _widths(t1)[1] == 6 - min(5, int(np.sum(s1 < s0[3])))
    table = {(a, b): first((a, b)) for a in range(1, 7) for b in range(1, 7)}
    t3, p3 = prune_to_speedup(target, net, 2.0, latency=table, steps=1)
    assert _widths(t3) == _widths(t1)
    for u, v in zip(_leaves(p1), _leaves(p3), strict=True):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_allclose(
        np.asarray(t3.apply(p3, x_batch)), np.asarray(t1.apply(p1, x_batch)), rtol=1e-6
    )
    # a table restricts the candidates to its width vectors
    only = {(6, 6): 1.0, (6, 3): 0.9, (3, 3): 0.4}
    t4, _ = prune_to_speedup(target, net, 2.0, latency=only, steps=1)
    assert _widths(t4) == [3, 3]
    with pytest.raises(UnreachableSpeedup, match=r"latency speed-up 5x .*\[3, 3\]"):
        prune_to_speedup(target, net, 5.0, latency=only, steps=1)
    with pytest.raises(ValueError, match=r"unpruned widths \[6, 6\]"):
        prune_to_speedup(target, net, 2.0, latency={(3, 3): 0.1})
    with pytest.raises(ValueError, match="latency must be"):
        prune_to_speedup(target, net, 2.0, latency=[1.0])


def test_measure_table_times_narrowed_networks(target):
    table = latency.measure_table(target, [(6, 6), (2, 4)], batch=8, repeats=2)
    assert set(table) == {(6, 6), (2, 4)} and all(0 < v < 10 for v in table.values())
    with pytest.raises(ValueError, match="2 structural groups"):
        latency.measure_table(target, [(6,)], batch=8, repeats=1)
    with pytest.raises(ValueError, match="width 7"):
        latency.measure_table(target, [(7, 6)], batch=8, repeats=1)
