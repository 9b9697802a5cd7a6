"""Structural groups: derived from the traced apply, permutation-invariant, residual-aware."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyper import symmetry
from hyper.symmetry import Group, StridedAxis
from hyper.target import Target


def random_params(target: Target, seed: int):
    """Params where every leaf varies per unit, running statistics included (eval mode)."""
    return jax.tree.unflatten(
        target.treedef, symmetry.scrambled_params(target, np.random.default_rng(seed))
    )


def axes_of(group: Group) -> set[tuple[str, int]]:
    return set(group.axes)


def test_mlp_groups(mlp_target):
    groups = symmetry.structural_groups(mlp_target, check=True)
    assert [g.size for g in groups] == [16]
    (g,) = groups
    assert axes_of(g) == {("layers/0/kernel", 1), ("layers/0/bias", 0), ("layers/1/kernel", 0)}
    assert g.producers == ("layers/0/kernel",) and g.consumers == ("layers/1/kernel",)


@pytest.mark.parametrize(
    ("fixture", "sizes", "first", "last"),
    [
        ("cnn_target", [4, 4], "convs/0", "convs/1"),
        ("cnn1d_target", [3, 4], "convs/0", "convs/1"),
        ("cnn2d_rect_target", [3, 4, 5], "convs/0", "convs/2"),
    ],
)
def test_cnn_groups(request, fixture, sizes, first, last):
    target = request.getfixturevalue(fixture)
    groups = symmetry.structural_groups(target, check=True)
    assert [g.size for g in groups] == sizes
    assert groups[0].name == first and groups[-1].name == last
    # The input channel (in-axis of the first conv) and the output units are never grouped.
    grouped = set().union(*(axes_of(g) for g in groups))
    assert ("convs/0/kernel", target.leaf("convs/0/kernel").in_axis) not in grouped
    assert ("dense/kernel", 1) not in grouped and ("dense/bias", 0) not in grouped
    assert ("dense/kernel", 0) in axes_of(groups[-1])
    # Spatial kernel axes are never units.
    assert all(ax >= len(target.leaf(p).shape) - 2 for p, ax in grouped if p.endswith("kernel"))


def test_rescnn_residual_group_is_shared(rescnn_target):
    groups = symmetry.structural_groups(rescnn_target, check=True)
    assert [g.size for g in groups] == [4, 4]
    res, inner = groups
    bn = ("bias", "scale", "mean", "var")
    assert axes_of(res) == {
        ("stem/kernel", 3),
        *((f"stem_bn/{n}", 0) for n in bn),
        ("blocks/0/conv1/kernel", 2),
        ("blocks/0/conv2/kernel", 3),
        *((f"blocks/0/bn2/{n}", 0) for n in bn),
        ("dense/kernel", 0),
    }
    assert axes_of(inner) == {
        ("blocks/0/conv1/kernel", 3),
        *((f"blocks/0/bn1/{n}", 0) for n in bn),
        ("blocks/0/conv2/kernel", 2),
    }
    assert set(res.producers) == {"stem/kernel", "blocks/0/conv2/kernel"}


def test_linen_batchnorm_groups(linen_bn_target):
    (g,) = symmetry.structural_groups(linen_bn_target, check=True)
    assert g.size == 4
    paths = {p for p, _ in g.axes}
    assert {"batch_stats/BatchNorm_0/mean", "batch_stats/BatchNorm_0/var"} <= paths
    assert {"params/BatchNorm_0/scale", "params/Conv_0/bias", "params/Dense_0/kernel"} <= paths


def test_pure_function_with_skip_ties_groups():
    """A skip connection written by hand (no module system) ties its layers' units."""

    def apply(p, x):
        h = jax.nn.relu(x @ p["a"]["kernel"])
        h = h + jnp.tanh(h @ p["b"]["kernel"] + p["b"]["bias"][None])
        z = jax.nn.relu(h @ p["c"]["kernel"])
        return z @ p["d"]["kernel"]

    shapes = {"a": (5, 6), "b": (6, 6), "c": (6, 3), "d": (3, 2)}
    template = {k: {"kernel": jnp.zeros(s)} for k, s in shapes.items()}
    template["b"]["bias"] = jnp.zeros(6)
    t = Target.from_function(apply, template, sample_input=jnp.zeros((2, 5)))
    groups = symmetry.structural_groups(t, check=True)
    assert [g.size for g in groups] == [6, 3]
    assert axes_of(groups[0]) == {
        ("a/kernel", 1),
        ("b/kernel", 0),
        ("b/kernel", 1),
        ("b/bias", 0),
        ("c/kernel", 0),
    }


def test_flatten_after_conv_is_a_strided_group():
    """A flatten merges space and channels: the channels stay a group, as a sub-axis of
    the dense kernel's rows (H, W, C)."""

    def apply(p, x):
        h = jax.nn.relu(
            jax.lax.conv_general_dilated(
                x, p["conv"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        )
        h = jax.nn.relu(h.reshape(h.shape[0], -1) @ p["fc"]["kernel"])
        return h @ p["out"]["kernel"]

    template = {
        "conv": {"kernel": jnp.zeros((3, 3, 1, 2))},
        "fc": {"kernel": jnp.zeros((4 * 4 * 2, 5))},
        "out": {"kernel": jnp.zeros((5, 3))},
    }
    t = Target.from_function(apply, template, sample_input=jnp.zeros((2, 4, 4, 1)))
    groups = symmetry.structural_groups(t, check=True)
    assert [(g.name, g.size) for g in groups] == [("conv", 2), ("fc", 5)]
    assert groups[0].axes == (("conv/kernel", 3),)
    assert groups[0].strided == (StridedAxis("fc/kernel", 0, (4, 4, 2), 2),)
    assert symmetry.axis_views(t) == {("fc/kernel", 0): symmetry.AxisView((4, 4, 2), 2)}


ARCHS = ["mlp_target", "cnn_target", "cnn1d_target", "rescnn_target"]


@pytest.mark.parametrize("fixture", ARCHS)
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_random_permutations_keep_the_function(request, fixture, seed):
    target = request.getfixturevalue(fixture)
    params = random_params(target, seed)
    perms = symmetry.random_permutations(target, jax.random.key(seed))
    moved = symmetry.permute(target, params, perms)
    x = np.random.default_rng(seed).standard_normal((6, *target.input_shape)).astype(np.float32)
    assert symmetry.check_equivalent(target, params, moved, x)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(moved), strict=True)
    ]
    assert any(changed) or all(np.array_equal(p, np.arange(p.size)) for p in perms)
    # Permuting back with the inverse permutations restores the weights exactly.
    back = symmetry.permute(target, moved, [jnp.argsort(p) for p in perms])
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(a, b)


def test_wrong_group_changes_the_function(mlp_target, rescnn_target):
    (g,) = symmetry.structural_groups(mlp_target)
    missing_consumer = Group(g.name, g.size, g.axes[:-1], g.producers, ())
    with pytest.raises(ValueError, match="changes the function"):
        symmetry.verify_groups(mlp_target, jax.random.key(0), groups=[missing_consumer])
    # Splitting the residual group of a ResNet into its layers breaks the function too.
    res, inner = symmetry.structural_groups(rescnn_target)
    stem_only = Group("stem", 4, tuple(a for a in res.axes if a[0].startswith("stem")), (), ())
    with pytest.raises(ValueError, match="'stem'"):
        symmetry.verify_groups(rescnn_target, jax.random.key(0), groups=[stem_only, inner])


def test_permute_population_matches_members(cnn_target):
    pop = jax.tree.map(lambda *xs: jnp.stack(xs), *(random_params(cnn_target, s) for s in range(3)))
    perms = [
        jnp.stack([jax.random.permutation(jax.random.key(10 * i + j), g.size) for j in range(3)])
        for i, g in enumerate(symmetry.structural_groups(cnn_target))
    ]
    out = symmetry.permute(cnn_target, pop, perms, batched=True)
    for j in range(3):
        member = jax.tree.map(lambda v, j=j: v[j], pop)
        one = symmetry.permute(cnn_target, member, [p[j] for p in perms])
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(out), strict=True):
            np.testing.assert_array_equal(a, b[j])


def test_group_activations_are_equivariant(rescnn_target):
    params = random_params(rescnn_target, 0)
    perms = symmetry.random_permutations(rescnn_target, jax.random.key(1))
    moved = symmetry.permute(rescnn_target, params, perms)
    x = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    for kind in ("inputs", "outputs"):
        acts = symmetry.group_activations(rescnn_target, params, x, kind=kind)
        acts_moved = symmetry.group_activations(rescnn_target, moved, x, kind=kind)
        for perm, za, zb in zip(perms, acts, acts_moved, strict=True):
            assert za, "every group has carriers"
            for a, b in zip(za, zb, strict=True):
                np.testing.assert_allclose(np.asarray(a)[:, perm], b, rtol=1e-4, atol=1e-5)
    # The residual group is read where it enters each contraction: conv1 and the pooled dense.
    res_inputs = symmetry.group_activations(rescnn_target, params, x, kind="inputs")[0]
    assert sorted(a.shape for a in res_inputs) == [(3, 4), (3 * 64, 4)]


def test_bad_inputs(mlp_target, cnn_target):
    params = random_params(mlp_target, 0)
    with pytest.raises(ValueError, match="1 groups"):
        symmetry.permute(mlp_target, params, [])
    with pytest.raises(ValueError, match="16 units"):
        symmetry.permute(mlp_target, params, [jnp.arange(15)])
    with pytest.raises(ValueError, match="layers/0/bias"):
        short_biases = jax.tree.map(lambda v: v[..., :-1] if v.ndim == 1 else v, params)
        symmetry.permute(mlp_target, short_biases, [jnp.arange(16)])
    with pytest.raises(ValueError, match="activations kind"):
        symmetry.group_activations(mlp_target, params, np.zeros((2, 8, 8)), kind="hidden")
