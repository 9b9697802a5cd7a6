"""Structural groups through pooling, flatten, reshapes, grouped convs and attention."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hyper import align, compact, symmetry
from hyper.symmetry import StridedAxis
from hyper.target import Target


def random_params(target: Target, seed: int):
    return jax.tree.unflatten(
        target.treedef, symmetry.scrambled_params(target, np.random.default_rng(seed))
    )


def names(target: Target) -> list[tuple[str, int]]:
    return [(g.name, g.size) for g in symmetry.structural_groups(target, check=True)]


class LeNet(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 3, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.fc1 = nnx.Linear(2 * 2 * 4, 5, rngs=rngs)
        self.fc2 = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.fc2(nnx.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def lenet():
    return Target.from_nnx(LeNet(nnx.Rngs(0)), sample_input=jnp.zeros((2, 8, 8, 1)))


def test_lenet_pooling_and_flatten_keep_every_conv(lenet):
    groups = symmetry.structural_groups(lenet, check=True)
    assert [(g.name, g.size) for g in groups] == [("conv1", 3), ("conv2", 4), ("fc1", 5)]
    conv1, conv2, _ = groups
    assert ("conv2/kernel", 2) in conv1.axes and conv1.strided == ()
    # The flatten of [B, 2, 2, 4]: fc1's rows are (H, W, C) and the channels are sub-axis 2.
    assert conv2.strided == (StridedAxis("fc1/kernel", 0, (2, 2, 4), 2),)
    assert conv2.consumers == ("fc1/kernel",)
    assert symmetry.axis_views(lenet) == {("fc1/kernel", 0): symmetry.AxisView((2, 2, 4), 2)}
    assert symmetry.left_out(lenet) == []


def test_strided_helpers_match_a_manual_view():
    w = np.arange(2 * 3 * 4 * 5).reshape(24, 5)
    e = StridedAxis("w", 0, (2, 3, 4), 1)
    idx = np.array([2, 0])
    want = w.reshape(2, 3, 4, 5)[:, idx].reshape(16, 5)
    np.testing.assert_array_equal(symmetry.take_units(w, e, idx), want)
    np.testing.assert_array_equal(symmetry.take_units(jnp.asarray(w), e, idx), want)
    first = symmetry.units_first(w, e)
    assert first.shape == (3, 2, 4, 5)
    np.testing.assert_array_equal(first[1], w.reshape(2, 3, 4, 5)[:, 1])
    np.testing.assert_array_equal(symmetry.units_restore(first, e, w.shape), w)
    np.testing.assert_array_equal(symmetry.take_units(w, ("w", 1), idx), w[:, idx])


def test_lenet_alignment_recovers_a_permutation_and_activations_are_equivariant(lenet):
    a = random_params(lenet, 0)
    perms = symmetry.random_permutations(lenet, jax.random.key(3))
    b = symmetry.permute(lenet, a, perms)
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 1)).astype(np.float32)
    assert symmetry.check_equivalent(lenet, a, b, x)
    assert not np.array_equal(a["fc1"]["kernel"], b["fc1"]["kernel"])
    found = align.weight_matching(lenet, a, b)
    back = symmetry.permute(lenet, b, [jnp.asarray(p) for p in found])
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(u, v)
    # The flattened features carry conv2's channels (a strided carrier), permuted alike.
    acts = symmetry.group_activations(lenet, a, x)
    moved = symmetry.group_activations(lenet, b, x)
    assert [m.shape for m in acts[1]] == [(3 * 4, 4)]
    for perm, za, zb in zip(perms, acts, moved, strict=True):
        for u, v in zip(za, zb, strict=True):
            np.testing.assert_allclose(np.asarray(u)[:, perm], v, rtol=1e-5, atol=1e-6)
    # Soft transport with permutation matrices equals permute, strided entries included.
    plans = [
        np.eye(g.size, dtype=np.float32)[np.asarray(p)]
        for g, p in zip(symmetry.structural_groups(lenet), perms, strict=True)
    ]
    soft = align.apply_transport(lenet, a, plans)
    for u, v in zip(jax.tree.leaves(b), jax.tree.leaves(soft), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)


def test_lenet_remove_units_through_the_flatten(lenet):
    """Removing conv2 channels drops the matching fc1 rows (H, W, C) = (2, 2, 4) -> 8 rows;
    the compact network equals the original with those units' weights zeroed."""
    params = random_params(lenet, 0)
    conv2 = symmetry.structural_groups(lenet)[1]
    scores = compact.group_importance(lenet, params)
    assert scores[1].shape == (4,)
    new, new_params = compact.remove_units(
        lenet, params, [None, np.array([True, False, True, False]), None]
    )
    assert new_params["fc1"]["kernel"].shape == (8, 5)
    masked = jax.tree.map(np.array, params)
    for e in symmetry.entries(conv2):
        layer, leaf = e[0].split("/")
        units = symmetry.units_first(masked[layer][leaf], e).copy()
        units[[1, 3]] = 0
        masked[layer][leaf] = symmetry.units_restore(units, e, masked[layer][leaf].shape)
    x = np.random.default_rng(1).standard_normal((3, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(new.apply(new_params, x), lenet.apply(masked, x), atol=1e-5)


class PoolCNN(nnx.Module):
    """avg_pool (reduce_window_sum / 4) between convs, then a global mean."""

    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 3, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
        return self.head(nnx.relu(self.conv2(x)).mean((1, 2)))


class LinenCNN(nn.Module):
    """Flax tutorial style: conv, avg_pool, conv, avg_pool, flatten, dense, dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.avg_pool(nn.relu(nn.Conv(3, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.avg_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(5)(x.reshape((x.shape[0], -1))))
        return nn.Dense(3)(x)


class ReshapeAtInput(nnx.Module):
    """A PyTorch-style port: flat 64-vectors reshaped to images inside the module."""

    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 3, (3, 3), rngs=rngs)
        self.head = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(-1, 8, 8, 1)
        return self.head(nnx.relu(self.conv1(x)).mean((1, 2)))


def test_avg_pool_linen_and_reshape_at_input():
    pool = Target.from_nnx(PoolCNN(nnx.Rngs(0)), sample_input=jnp.zeros((2, 8, 8, 1)))
    assert names(pool) == [("conv1", 3), ("conv2", 4)]
    linen = Target.from_linen(LinenCNN(), jnp.zeros((2, 8, 8, 1)))
    groups = symmetry.structural_groups(linen, check=True)
    assert [g.size for g in groups] == [3, 4, 5]
    assert groups[1].strided == (StridedAxis("params/Dense_0/kernel", 0, (2, 2, 4), 2),)
    flat = Target.from_nnx(ReshapeAtInput(nnx.Rngs(0)), sample_input=jnp.zeros((2, 64)))
    assert names(flat) == [("conv1", 3)]  # no size-1 group for the created channel axis
    assert symmetry.left_out(flat) == []


class DepthwiseSeparable(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.dw = nnx.Conv(4, 4, (3, 3), feature_group_count=4, rngs=rngs)
        self.pw = nnx.Conv(4, 6, (1, 1), rngs=rngs)
        self.dw2 = nnx.Conv(6, 12, (3, 3), feature_group_count=6, rngs=rngs)  # multiplier 2
        self.grouped = nnx.Conv(12, 4, (1, 1), feature_group_count=2, rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.dw(nnx.relu(self.conv1(x))))
        x = nnx.relu(self.dw2(nnx.relu(self.pw(x))))
        return self.head(nnx.relu(self.grouped(x)).mean((1, 2)))


def test_depthwise_and_grouped_convs_tie_channels_across_groups():
    t = Target.from_nnx(DepthwiseSeparable(nnx.Rngs(0)), sample_input=jnp.zeros((2, 6, 6, 1)))
    groups = symmetry.structural_groups(t, check=True)
    by_name = {g.name: g for g in groups}
    # The depthwise channels are conv1's channels (one group, whole axes).
    first = by_name["conv1+dw"]
    assert {("conv1/kernel", 3), ("dw/kernel", 3), ("dw/bias", 0), ("pw/kernel", 2)} <= set(
        first.axes
    )
    assert ("dw/kernel", 2) not in {e[:2] for g in groups for e in symmetry.entries(g)}
    # pw's 6 channels feed dw2 (multiplier 2, out (6, 2)) and a 2-group conv: (2, 3).
    assert StridedAxis("dw2/kernel", 3, (2, 3, 2), 2) in by_name["dw2"].strided
    # 12 = (6, 2) for dw2 and (2, 6) for the grouped conv: refined to (2, 3, 2).
    assert sorted(g.size for g in groups) == [2, 2, 2, 3, 4]
    assert symmetry.left_out(t) == []


def test_reshape_refines_factorisations_and_blocks_crossings():
    def refine(p, x):
        h = jax.nn.relu(x @ p["a"]["kernel"]).reshape(-1, 2, 6)
        h = jnp.tanh(h).reshape(-1, 4, 3).reshape(-1, 12)
        return h @ p["b"]["kernel"]

    def crossing(p, x):
        h = jax.nn.relu(x @ p["a"]["kernel"]).reshape(-1, 2, 3).reshape(-1, 3, 2)
        return h.reshape(-1, 6) @ p["b"]["kernel"]

    def sort(p, x):
        return jnp.sort(jax.nn.relu(x @ p["a"]["kernel"]), axis=-1) @ p["b"]["kernel"]

    def cumsum(p, x):
        return jnp.cumsum(jax.nn.relu(x @ p["a"]["kernel"]), axis=-1) @ p["b"]["kernel"]

    def target(fn, width):
        shapes = {"a": (5, width), "b": (width, 2)}
        template = {k: {"kernel": jnp.zeros(s)} for k, s in shapes.items()}
        return Target.from_function(fn, template, sample_input=jnp.zeros((2, 5)))

    t = target(refine, 12)
    groups = symmetry.structural_groups(t, check=True)
    assert [g.size for g in groups] == [2, 2, 3]
    assert {e for g in groups for e in g.strided} == {
        StridedAxis(p, ax, (2, 2, 3), k)
        for p, ax in (("a/kernel", 1), ("b/kernel", 0))
        for k in range(3)
    }
    for fn, width, prim in ((crossing, 6, "reshape"), (sort, 4, "sort"), (cumsum, 4, "cumsum")):
        t = target(fn, width)
        assert symmetry.structural_groups(t) == []
        out = symmetry.left_out(t)
        assert [(o.path, o.axis, o.primitive) for o in out] == [
            ("a/kernel", 1, prim),
            ("b/kernel", 0, prim),
        ]
        with pytest.warns(UserWarning, match=f"a/kernel.*{prim}"):
            align.weight_matching(t, random_params(t, 0), random_params(t, 1))

    def sort_at_the_ends(p, x):  # input and output sides: not hidden, so not left out
        h = jax.nn.relu(jnp.sort(x, axis=-1) @ p["a"]["kernel"])
        return jnp.sort(h @ p["b"]["kernel"], axis=-1)

    t = target(sort_at_the_ends, 4)
    assert [g.size for g in symmetry.structural_groups(t)] == [4]
    assert symmetry.left_out(t) == []


class Block(nnx.Module):
    def __init__(self, d, heads, rngs):
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.mlp1 = nnx.Linear(d, 6, rngs=rngs)
        self.mlp2 = nnx.Linear(6, d, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp2(nnx.relu(self.mlp1(self.ln2(x))))


class Transformer(nnx.Module):
    def __init__(self, rngs):
        self.proj = nnx.Linear(3, 8, rngs=rngs)
        self.blocks = nnx.List([Block(8, 2, rngs) for _ in range(2)])
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        x = self.proj(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x.mean(1))


def test_attention_heads_head_dims_and_residual_stream():
    t = Target.from_nnx(Transformer(nnx.Rngs(0)), sample_input=jnp.zeros((2, 5, 3)))
    groups = symmetry.structural_groups(t, check=True)
    axes = [set(g.axes) for g in groups]
    assert all(g.strided == () for g in groups)
    residual = [a for a in axes if ("proj/kernel", 1) in a]
    assert len(residual) == 1 and ("head/kernel", 0) in residual[0]
    assert {("blocks/1/attn/out/kernel", 2), ("blocks/0/ln2/scale", 0)} <= residual[0]
    for b in ("blocks/0", "blocks/1"):
        heads = [a for a in axes if (f"{b}/attn/query/kernel", 1) in a]
        qk = [a for a in axes if (f"{b}/attn/query/kernel", 2) in a]
        vo = [a for a in axes if (f"{b}/attn/value/kernel", 2) in a]
        assert len(heads) == len(qk) == len(vo) == 1
        assert {(f"{b}/attn/key/kernel", 1), (f"{b}/attn/value/kernel", 1)} <= heads[0]
        assert (f"{b}/attn/out/kernel", 0) in heads[0]
        assert (f"{b}/attn/key/kernel", 2) in qk[0] and (f"{b}/attn/out/kernel", 1) in vo[0]
    assert symmetry.left_out(t) == []  # softmax's stop_gradient does not block the heads


class TokenMLP(nnx.Module):
    """Token ids -> nnx.Embed -> mean over tokens -> Dense -> relu -> Dense."""

    def __init__(self, rngs, shuffle=None):
        self.embed = nnx.Embed(16, 8, rngs=rngs)
        self.fc1 = nnx.Linear(8, 6, rngs=rngs)
        self.fc2 = nnx.Linear(6, 3, rngs=rngs)
        self.shuffle = shuffle  # a fixed gather over the features: blocks them

    def __call__(self, tokens):
        x = self.embed(tokens)
        if self.shuffle is not None:
            x = jnp.take(x, jnp.asarray(self.shuffle), axis=-1)
        return self.fc2(nnx.relu(self.fc1(x.mean(axis=1))))


TOKENS = np.random.default_rng(0).integers(0, 16, (4, 5)).astype(np.int32)


@pytest.fixture(scope="module")
def token_mlp():
    return Target.from_nnx(TokenMLP(nnx.Rngs(0)), sample_input=TOKENS)


def test_embedding_features_join_the_first_dense_input_group(token_mlp):
    groups = symmetry.structural_groups(token_mlp, sample_input=TOKENS, check=True)
    axes = [set(g.axes) for g in groups]
    assert axes == [
        {("embed/embedding", 1), ("fc1/kernel", 0)},
        {("fc1/kernel", 1), ("fc1/bias", 0), ("fc2/kernel", 0)},
    ]
    assert [g.size for g in groups] == [8, 6]
    assert symmetry.left_out(token_mlp, TOKENS) == []
    # Permuting the group changes the weights and keeps the function; a wrong
    # permutation of the table's features alone changes it.
    a = random_params(token_mlp, 0)
    perms = symmetry.random_permutations(token_mlp, jax.random.key(1))
    b = symmetry.permute(token_mlp, a, perms)
    assert symmetry.check_equivalent(token_mlp, a, b, TOKENS)
    assert not np.array_equal(a["embed"]["embedding"], b["embed"]["embedding"])
    wrong = jax.tree.map(lambda v: v, a)
    wrong["embed"]["embedding"] = np.asarray(a["embed"]["embedding"])[:, ::-1]
    assert not symmetry.check_equivalent(token_mlp, a, wrong, TOKENS)
    # Weight matching recovers the permutation exactly.
    found = align.weight_matching(token_mlp, a, b)
    back = symmetry.permute(token_mlp, b, [jnp.asarray(p) for p in found])
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(u, v)


def test_a_gather_over_the_embedding_features_is_reported():
    perm = np.array([1, 0, 2, 3, 4, 5, 6, 7])
    t = Target.from_nnx(TokenMLP(nnx.Rngs(0), shuffle=perm), sample_input=TOKENS)
    groups = symmetry.structural_groups(t, sample_input=TOKENS, check=True)
    assert [set(g.axes) for g in groups] == [
        {("fc1/kernel", 1), ("fc1/bias", 0), ("fc2/kernel", 0)}
    ]
    (lo,) = [lo for lo in symmetry.left_out(t, TOKENS) if lo.path == "embed/embedding"]
    assert (lo.axis, lo.primitive) == (1, "gather") and "indexed" in lo.reason
