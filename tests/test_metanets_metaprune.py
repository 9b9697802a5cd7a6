"""metanets.metaprune: group-L2 sparsity, MetaPruning metanet training (equivariant edits,
save/load, the sparsity term going down), and the pruning pipeline with the metanet's
edit (`hyper.prune.prune_pipeline`) and compact export. Pruning itself:
tests/test_hyper_prune.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper import compact, symmetry
from hyper.architectures import make_target
from hyper.checkpoint import CheckpointError, save_population
from hyper.prune import accuracy, export_pruned, load_pruned, prune_pipeline
from hyper.target import Target
from hyper.train import TrainConfig, Trainer
from metanets.graph_topology import kernel_window
from metanets.metaprune import (
    MetaPruneConfig,
    MetaPruner,
    group_lasso,
    group_norm_ratio,
    load_metapruner,
    meta_train,
)
from metanets.models import GraphMetanet

CHANNELS = [6, 6]
ZOO = 4  # members 0..2 train the metanet, member 3 is held out


def _leaves(params) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(params)]


def _member(population, i: int):
    return jax.tree.map(lambda a: a[i], population)


def _stack(*nets):
    return jax.tree.map(lambda *a: jnp.stack(a), *nets)


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
def pruner(target, zoo, digits):
    """A metanet trained 8 steps on three networks, all three in every step (so the logged
    sparsity term is a function of the metanet alone), with a large sparsity weight."""
    config = MetaPruneConfig(
        hidden=8,
        num_layers=1,
        steps=8,
        nets_per_step=3,
        batch_size=32,
        sparsity=10.0,
        learning_rate=1e-2,
    )
    lines = []
    mp = meta_train(
        target,
        jax.tree.map(lambda a: a[: ZOO - 1], zoo),
        digits,
        config,
        log=lines.append,
        log_every=1,
    )
    assert len(lines) == config.steps
    return mp


@pytest.fixture(scope="module")
def x_batch(digits):
    return np.asarray(digits.x_test[:64])


# ---------------------------------------------------------------------------------------
# group_lasso
# ---------------------------------------------------------------------------------------


def test_group_lasso_matches_numpy(cnn2d_rect_target, random_params):
    t = cnn2d_rect_target  # groups of 3, 4 and 5 units: a mean over units, not over groups
    p = random_params(t, 0)
    k = [np.asarray(p["convs"][str(i)]["kernel"], np.float64) for i in range(3)]
    b = [np.asarray(p["convs"][str(i)]["bias"], np.float64) for i in range(3)]
    dense = np.asarray(p["dense"]["kernel"], np.float64)
    norms = []
    for i in range(3):
        sq = (k[i] ** 2).sum((0, 1, 2)) + b[i] ** 2
        sq = sq + ((k[i + 1] ** 2).sum((0, 1, 3)) if i < 2 else (dense**2).sum(1))
        norms.append(np.sqrt(sq))
    want = np.concatenate(norms).mean()
    assert not np.isclose(want, np.mean([n.mean() for n in norms]), rtol=1e-3)
    np.testing.assert_allclose(float(group_lasso(t, p)), want, rtol=1e-5)
    jitted = jax.jit(lambda q: group_lasso(t, q))
    np.testing.assert_allclose(float(jitted(p)), want, rtol=1e-5)


def test_group_lasso_gradient_is_finite_at_zero_units(cnn2d_rect_target, random_params):
    t = cnn2d_rect_target
    groups = symmetry.structural_groups(t)
    p = zero_units(t, random_params(t, 1), groups[1], [0, 2])
    grad = jax.grad(lambda q: group_lasso(t, q))(p)
    for path, g, a in zip(t.paths, _leaves(grad), _leaves(p), strict=True):
        assert np.all(np.isfinite(g)), path
        # a zero weight has zero gradient (w / ||unit||), whichever unit norm it is in
        np.testing.assert_array_equal(g[a == 0.0], 0.0)
    assert any(np.any(g != 0) for g in _leaves(grad))
    zeros = jax.tree.map(jnp.zeros_like, p)
    assert float(group_lasso(t, zeros)) == pytest.approx(0.0, abs=1e-5)
    grad = jax.grad(lambda q: group_lasso(t, q))(zeros)
    assert all(np.all(np.isfinite(g)) for g in _leaves(grad))


# ---------------------------------------------------------------------------------------
# meta_train and the MetaPruner
# ---------------------------------------------------------------------------------------


def test_meta_train_history_and_sparsity_goes_down(pruner):
    h = pruner.history
    assert [row["step"] for row in h] == list(range(1, 9))
    for row in h:
        assert set(row) == {"step", "loss", "ce", "sparsity"}
        assert all(np.isfinite(v) for v in row.values())
        assert row["loss"] == pytest.approx(row["ce"] + 10.0 * row["sparsity"], rel=1e-5)
    # deterministic (fixed seeds, all networks every step); lambda = 10 dominates the loss
    assert h[-1]["sparsity"] < 0.995 * h[0]["sparsity"]
    assert h[-1]["loss"] < h[0]["loss"]


def test_edit_is_permutation_equivariant(target, pruner, net):
    perms = symmetry.random_permutations(target, jax.random.key(5))
    assert any(np.any(np.asarray(p) != np.arange(len(p))) for p in perms)
    moved = symmetry.permute(target, net, perms)
    edited = pruner.edit(_stack(net, moved))
    e_net, e_moved = _member(edited, 0), _member(edited, 1)
    expected = symmetry.permute(target, e_net, perms)
    for path, a, b in zip(target.paths, _leaves(e_moved), _leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=path)
    # the edit is a real, residual change of every leaf (so equivariance is not vacuous)
    for path, a, b in zip(target.paths, _leaves(e_net), _leaves(net), strict=True):
        assert 1e-6 < np.max(np.abs(a - b)) < 1.0, path
    # edit_one is the same edit
    for a, b in zip(_leaves(pruner.edit_one(net)), _leaves(e_net), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)


def test_metapruner_save_load_round_trip(tmp_path, target, pruner, zoo):
    path = pruner.save(tmp_path / "mp")
    again = load_metapruner(path)
    assert again.config == pruner.config
    assert again.window == pruner.window
    assert again.target.config == target.config
    assert again.history == pruner.history
    pair = jax.tree.map(lambda a: a[:2], zoo)
    for a, b in zip(_leaves(pruner.edit(pair)), _leaves(again.edit(pair)), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="not empty"):
        pruner.save(path)


# ---------------------------------------------------------------------------------------
# The pipeline and compact export
# ---------------------------------------------------------------------------------------

FT = {"finetune_before": 3, "finetune_after": 3, "prune_steps": 1}


@pytest.fixture(scope="module")
def results(target, net, digits, pruner):
    return {
        "metaprune": prune_pipeline(
            target, net, digits, speedup=2.0, edit=pruner.edit_for(target), **FT
        ),
        "group_l2": prune_pipeline(target, net, digits, speedup=2.0, **FT),
    }


@pytest.mark.parametrize("method", ["metaprune", "group_l2"])
def test_pipeline_record(method, results, target, net, digits):
    r = results[method]
    stages = {"original", "finetuned", "pruned", "final"}
    assert set(r.acc) == (stages | {"edited"} if method == "metaprune" else stages)
    n_test = len(digits.y_test)  # each accuracy is a count of correct test examples
    for stage, v in r.acc.items():
        assert v * n_test == pytest.approx(round(v * n_test), abs=1e-3), stage
    # Pruned to half the FLOPs and fine-tuned, the network keeps its accuracy (0.46 here;
    # chance is 0.1) to within 0.05.
    assert r.acc["final"] >= r.acc["original"] - 0.05 and r.acc["final"] > 0.3
    assert r.acc["original"] == pytest.approx(accuracy(target, net, digits))
    assert r.speedup >= 2.0
    assert r.flops == (compact.count_flops(target), compact.count_flops(r.target))
    assert r.num_params[1] < r.num_params[0] == compact.count_params(target)
    assert r.info["metanet"] is (method == "metaprune")
    assert r.info["speedup_goal"] == 2.0 and r.info["accuracy_floor"] is None
    assert r.info["finetune_before"] == 3 and r.info["finetune_after"] == 3
    # a standalone make_target config with the new widths, not a derived target
    assert r.config is not None and "derived_from" not in r.config
    assert r.config["channels"] == r.info["widths"]
    assert r.target.config == r.config
    r.target.validate(r.params)
    assert r.acc["final"] == pytest.approx(accuracy(r.target, r.params, digits))


def test_export_and_load_pruned(tmp_path, results, target, zoo, x_batch):
    r = results["metaprune"]
    path = export_pruned(tmp_path / "pruned", r)
    t, p, record = load_pruned(path)
    assert t is not r.target
    assert t.config == r.config and "derived_from" not in t.config
    assert t.config["channels"] == r.info["widths"]
    for a, b in zip(_leaves(p), _leaves(r.params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        np.asarray(t.apply(p, x_batch)), np.asarray(r.target.apply(r.params, x_batch)), rtol=1e-6
    )
    assert record["speedup"] == pytest.approx(r.speedup)
    assert record["acc"] == pytest.approx(r.acc)
    assert tuple(record["flops"]) == r.flops
    save_population(tmp_path / "zoo", zoo, target)
    with pytest.raises(CheckpointError, match="no pruned network"):
        load_pruned(tmp_path / "zoo")


def test_pipeline_refusals(target, net, digits, pruner, mlp_target, random_params):
    with pytest.raises(ValueError, match="exactly one"):
        prune_pipeline(target, net, digits)
    with pytest.raises(ValueError, match="exactly one"):
        prune_pipeline(target, net, digits, speedup=2.0, accuracy_floor=0.5)
    with pytest.raises(ValueError, match="metanet edits .*other leaves or shapes"):
        prune_pipeline(
            mlp_target,
            random_params(mlp_target, 0),
            digits,
            speedup=2.0,
            edit=pruner.edit_for(mlp_target),
        )
    wider = make_target("cnn2d", input_shape=(8, 8), channels=[8, 6], out_features=10)
    with pytest.raises(ValueError, match="metanet edits .*other leaves or shapes"):
        prune_pipeline(
            wider, random_params(wider, 0), digits, speedup=2.0, edit=pruner.edit_for(wider)
        )
    # same leaves and shapes, another function: refused too
    tanh = make_target(
        "cnn2d", input_shape=(8, 8), channels=CHANNELS, out_features=10, activation="tanh"
    )
    with pytest.raises(ValueError, match="activation"):
        prune_pipeline(tanh, net, digits, speedup=2.0, edit=pruner.edit_for(tanh))


def test_group_norm_ratio_is_scale_invariant_and_rewards_separation(target, net):
    base = float(group_norm_ratio(target, net))
    scaled = jax.tree.map(lambda a: 3.0 * a, net)
    assert float(group_norm_ratio(target, scaled)) == pytest.approx(base, rel=1e-5)
    # group_lasso is not: it rewards shrinking every weight alike
    assert float(group_lasso(target, scaled)) == pytest.approx(3 * float(group_lasso(target, net)))
    g = symmetry.structural_groups(target)[0]
    sparser = zero_units(target, net, g, np.arange(g.size // 2))
    assert float(group_norm_ratio(target, sparser)) < base - 0.01
    with pytest.raises(ValueError, match="sparsity_kind"):
        MetaPruneConfig(sparsity_kind="l0")


def test_edit_keeps_running_statistics():
    """BatchNorm running mean/variance are node features of the graph, but the edit leaves
    them as they are (an edited variance could turn negative)."""
    from flax import nnx

    t = make_target("cnn2d", input_shape=(8, 8), channels=[3, 3], out_features=10, batchnorm=True)
    p = t.init(jax.random.key(1))
    p = jax.tree.map(lambda a: a + 0.1, p)  # non-trivial running statistics
    window = kernel_window(t)
    model = GraphMetanet(window[0] * window[1], hidden=8, num_layers=1, rngs=nnx.Rngs(0))
    mp = MetaPruner(t, model, MetaPruneConfig(r=0.5), window)
    edited = mp.edit_one(p)
    changed = []
    for s, a, b in zip(t.spec, _leaves(p), _leaves(edited), strict=True):
        if s.role == "running_stat":
            np.testing.assert_array_equal(a, b, err_msg=s.path)
        else:
            changed.append(not np.allclose(a, b))
    assert any(changed)
