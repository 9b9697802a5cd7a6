"""Alignment: weight matching, activation matching and Sinkhorn recover permutations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from hyper import align, symmetry
from hyper import population as pop
from hyper.architectures import make_target
from tests.test_hyper_symmetry import random_params


def leaves_equal(a, b) -> bool:
    return all(
        np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def mlp2():
    return make_target("mlp", input_shape=(8, 8), widths=(12, 10), out_features=10)


@pytest.mark.parametrize("seed", [0, 1])
def test_weight_matching_recovers_a_known_permutation(mlp2, rescnn_target, seed):
    for target in (mlp2, rescnn_target):
        a = random_params(target, seed)
        b = symmetry.permute(target, a, symmetry.random_permutations(target, jax.random.key(seed)))
        assert not leaves_equal(a, b)
        perms = align.weight_matching(target, a, b, key=jax.random.key(seed))
        assert leaves_equal(symmetry.permute(target, b, perms), a)


def test_weight_matching_recovers_nested_head_groups_the_identity_start_misses():
    # Heads and the dims within a head: from the identity alone, the descent stops in a local
    # optimum for this permuted copy; the sorted-weight start recovers it.
    vit = make_target(
        "transformer", input_shape=(8, 8), patch_size=(2, 2), width=16, depth=1, heads=2,
        mlp_dim=16, out_features=10,
    )  # fmt: skip
    a = random_params(vit, 4)
    b = symmetry.permute(vit, a, symmetry.random_permutations(vit, jax.random.key(4)))
    identity = [np.arange(g.size)[None] for g in symmetry.structural_groups(vit)]
    single = align.pairwise_weight_matching(
        vit, pop.of_one(a), pop.of_one(b), key=jax.random.key(4), init=identity
    )
    assert not leaves_equal(symmetry.permute(vit, b, [p[0] for p in single]), a)
    perms = align.weight_matching(vit, a, b, key=jax.random.key(4))
    assert leaves_equal(symmetry.permute(vit, b, perms), a)


def test_weight_matching_keeps_the_better_start_by_the_objective(mlp2):
    n = 8
    pop_a = jax.tree.map(lambda *v: jnp.stack(v), *(random_params(mlp2, s) for s in range(n)))
    pop_b = jax.tree.map(lambda *v: jnp.stack(v), *(random_params(mlp2, 50 + s) for s in range(n)))
    identity = [np.tile(np.arange(g.size), (n, 1)) for g in symmetry.structural_groups(mlp2)]
    default = align.pairwise_weight_matching(mlp2, pop_a, pop_b, key=jax.random.key(1))
    single = align.pairwise_weight_matching(
        mlp2, pop_a, pop_b, key=jax.random.key(1), init=identity
    )
    obj = align.weight_matching_objective(mlp2, pop_a, pop_b, default)
    obj_single = align.weight_matching_objective(mlp2, pop_a, pop_b, single)
    assert np.all(obj >= obj_single) and np.any(obj > obj_single + 1e-6)
    # The objective is the sum over leaves of <W_a, W_b permuted>.
    moved = symmetry.permute(mlp2, pop_b, default, batched=True)
    direct = sum(
        np.sum(np.asarray(u, np.float64) * np.asarray(v, np.float64), axis=tuple(range(1, u.ndim)))
        for u, v in zip(*map(jax.tree.leaves, (pop_a, moved)), strict=True)
    )
    np.testing.assert_allclose(obj, direct, rtol=1e-12)
    with pytest.raises(ValueError, match="1 permutations for 2 groups"):
        align.weight_matching_objective(mlp2, pop_a, pop_b, default[:1])


def test_activation_matching_recovers_a_known_permutation(mlp2, rescnn_target):
    for target in (mlp2, rescnn_target):
        a = random_params(target, 3)
        b = symmetry.permute(target, a, symmetry.random_permutations(target, jax.random.key(3)))
        x = np.random.default_rng(0).standard_normal((32, 8, 8)).astype(np.float32)
        perms = align.activation_matching(target, a, b, x)
        assert leaves_equal(symmetry.permute(target, b, perms), a)


def test_pairwise_matching_is_vmapped_over_pairs(mlp2):
    pop_a = jax.tree.map(lambda *v: jnp.stack(v), *(random_params(mlp2, s) for s in range(3)))
    perms = [
        jnp.stack([jax.random.permutation(jax.random.key(7 * i + j), g.size) for j in range(3)])
        for i, g in enumerate(symmetry.structural_groups(mlp2))
    ]
    pop_b = symmetry.permute(mlp2, pop_a, perms, batched=True)
    found = align.pairwise_weight_matching(mlp2, pop_a, pop_b, key=jax.random.key(0))
    assert [p.shape for p in found] == [(3, 12), (3, 10)]
    assert leaves_equal(symmetry.permute(mlp2, pop_b, found, batched=True), pop_a)
    # Aligning a population to member 0 keeps every member's function.
    aligned, _ = align.align_population(mlp2, pop_b, method="weight")
    x = np.random.default_rng(1).standard_normal((5, 8, 8)).astype(np.float32)
    for j in range(3):
        member = jax.tree.map(lambda v, j=j: v[j], pop_b)
        moved = jax.tree.map(lambda v, j=j: v[j], aligned)
        assert symmetry.check_equivalent(mlp2, member, moved, x)


def test_alignment_brings_independent_networks_closer(mlp2):
    a, b = random_params(mlp2, 10), random_params(mlp2, 11)
    perms = align.weight_matching(mlp2, a, b)
    moved = symmetry.permute(mlp2, b, perms)

    def dist(u, v):
        return sum(
            float(jnp.sum((x - y) ** 2)) for x, y in zip(*map(jax.tree.leaves, (u, v)), strict=True)
        )

    assert dist(a, moved) < dist(a, b)


def test_sinkhorn_is_doubly_stochastic_and_tends_to_the_assignment():
    scores = jax.random.normal(jax.random.key(0), (3, 6, 6))
    plans = align.sinkhorn(scores, reg=0.1)
    np.testing.assert_allclose(plans.sum(-1), 1, atol=1e-4)
    np.testing.assert_allclose(plans.sum(-2), 1, atol=1e-4)
    assert np.all(np.asarray(plans) >= 0)
    hard = align.hard_projection(align.sinkhorn(scores, reg=0.02))
    for s, h in zip(np.asarray(scores), hard, strict=True):
        np.testing.assert_array_equal(h, linear_sum_assignment(s, maximize=True)[1])
    with pytest.raises(ValueError, match=r"\[\.\.\., n, n\]"):
        align.sinkhorn(jnp.zeros((3, 4)))


def test_sinkhorn_alignment_and_transport(mlp2):
    a = random_params(mlp2, 4)
    perms = symmetry.random_permutations(mlp2, jax.random.key(4))
    b = symmetry.permute(mlp2, a, perms)
    plans = align.sinkhorn_alignment(mlp2, a, b, reg=0.02)
    for t in plans:
        np.testing.assert_allclose(t.sum(0), 1, atol=1e-4)
        np.testing.assert_allclose(t.sum(1), 1, atol=1e-4)
    assert leaves_equal(symmetry.permute(mlp2, b, align.hard_projection(plans)), a)
    # One-hot plans are permutations: apply_transport == permute.
    onehot = [jax.nn.one_hot(p, p.shape[0]) for p in perms]
    moved = align.apply_transport(mlp2, a, onehot)
    for u, v in zip(jax.tree.leaves(moved), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)


def test_bad_inputs(mlp_target, mlp2):
    a = random_params(mlp_target, 0)
    wider = random_params(make_target("mlp", input_shape=(8, 8), widths=(17,), out_features=10), 0)
    with pytest.raises(ValueError, match=r"params_b.*layers/0/bias.*\(17,\)"):
        align.weight_matching(mlp_target, a, wider)
    with pytest.raises(ValueError, match=r"params_b.*unexpected leaves"):
        align.activation_matching(mlp_target, a, random_params(mlp2, 0), np.zeros((2, 8, 8)))
    pop = jax.tree.map(lambda v: jnp.stack([v, v]), a)
    pop3 = jax.tree.map(lambda v: jnp.stack([v, v, v]), a)
    with pytest.raises(ValueError, match="2 targets, population_b has 3"):
        align.pairwise_weight_matching(mlp_target, pop, pop3)
    with pytest.raises(ValueError, match="unknown method"):
        align.align_population(mlp_target, pop, method="greedy")
    with pytest.raises(ValueError, match="needs an input batch"):
        align.align_population(mlp_target, pop, method="activation")
    with pytest.raises(ValueError, match=r"inputs have shape \(2, 7\)"):
        align.activation_matching(mlp_target, a, a, np.zeros((2, 7)))
