"""Group importance, FLOP/parameter counts and physical removal of hidden units."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

from hyper import compact, resize, symmetry
from hyper.checkpoint import CheckpointError, load_population, save_population
from hyper.prune import prune_to_speedup
from hyper.target import Target


def scrambled(target: Target, seed: int):
    return jax.tree.unflatten(
        target.treedef, symmetry.scrambled_params(target, np.random.default_rng(seed))
    )


def zero_units(target: Target, params, group: symmetry.Group, units: np.ndarray):
    """Sets every parameter a group's units own to zero (variances to one)."""
    index = {p: i for i, p in enumerate(target.paths)}
    leaves = [np.array(a) for a in jax.tree.leaves(params)]
    for path, ax in group.axes:
        i = index[path]
        value = 1.0 if path.endswith("var") else 0.0
        sl = [slice(None)] * leaves[i].ndim
        sl[ax] = units
        leaves[i][tuple(sl)] = value
    return jax.tree.unflatten(target.treedef, leaves)


@pytest.mark.parametrize("fixture", ["mlp_target", "cnn_target", "cnn1d_target", "rescnn_target"])
def test_removing_zero_units_keeps_the_function(request, fixture):
    target = request.getfixturevalue(fixture)
    groups = symmetry.structural_groups(target)
    rng = np.random.default_rng(1)
    params = scrambled(target, 0)
    keep = []
    for g in groups:
        dead = rng.choice(g.size, size=max(1, g.size // 3), replace=False)
        params = zero_units(target, params, g, dead)
        keep.append(np.setdiff1d(np.arange(g.size), dead))
    small, small_params = compact.remove_units(target, params, keep)
    x = rng.standard_normal((5, *target.input_shape)).astype(np.float32)
    y_full = np.asarray(target.apply(params, x))
    y_small = np.asarray(small.apply(small_params, x))
    np.testing.assert_allclose(y_small, y_full, rtol=1e-4, atol=1e-5)
    assert small.num_params < target.num_params
    assert compact.count_params(small) == small.num_params
    # The compact target is a standalone target: its groups shrank accordingly.
    assert [g.size for g in symmetry.structural_groups(small)] == [len(k) for k in keep]
    small.validate(small.init(jax.random.key(0)))


def test_removing_live_units_changes_the_function(mlp_target):
    params = scrambled(mlp_target, 3)
    small, sp = compact.remove_units(mlp_target, params, [np.arange(8)])
    x = np.random.default_rng(0).standard_normal((4, 8, 8)).astype(np.float32)
    assert not np.allclose(np.asarray(small.apply(sp, x)), np.asarray(mlp_target.apply(params, x)))


def test_remove_units_shapes_and_fans(mlp_target):
    params = scrambled(mlp_target, 0)
    mask = np.zeros(16, bool)
    mask[[1, 4, 9]] = True
    small, sp = compact.remove_units(mlp_target, params, {"layers/0": mask})
    shapes = {s.path: s.shape for s in small.spec}
    assert shapes["layers/0/kernel"] == (64, 3)
    assert shapes["layers/0/bias"] == (3,)
    assert shapes["layers/1/kernel"] == (3, 10)
    assert small.leaf("layers/1/kernel").fan_in == 3
    want = np.asarray(params["layers"]["0"]["kernel"])[:, mask]
    np.testing.assert_array_equal(np.asarray(sp["layers"]["0"]["kernel"]), want)
    assert small.num_params == 64 * 3 + 3 + 3 * 10 + 10


def test_removing_every_unit_is_refused(mlp_target, rescnn_target):
    params = scrambled(mlp_target, 0)
    with pytest.raises(ValueError, match="every unit of group 'layers/0'.*layers/0/kernel"):
        compact.remove_units(mlp_target, params, [np.zeros(16, bool)])
    with pytest.raises(ValueError, match="unknown groups"):
        compact.remove_units(mlp_target, params, {"nope": None})
    with pytest.raises(ValueError, match="has 16 units"):
        compact.remove_units(mlp_target, params, [np.ones(5, bool)])
    with pytest.raises(ValueError, match="out of range"):
        compact.remove_units(mlp_target, params, [np.array([0, 16])])
    rp = scrambled(rescnn_target, 0)
    groups = symmetry.structural_groups(rescnn_target)
    keep = [None] * len(groups)
    keep[0] = np.array([], np.int64)
    with pytest.raises(ValueError, match="stem"):
        compact.remove_units(rescnn_target, rp, keep)


def test_group_importance_matches_numpy(mlp_target, rescnn_target):
    params = scrambled(mlp_target, 2)
    k0 = np.asarray(params["layers"]["0"]["kernel"])
    b0 = np.asarray(params["layers"]["0"]["bias"])
    k1 = np.asarray(params["layers"]["1"]["kernel"])
    l2 = np.sqrt((k0**2).sum(0) + b0**2 + (k1**2).sum(1))
    l1 = np.abs(k0).sum(0) + np.abs(b0) + np.abs(k1).sum(1)
    jitted = jax.jit(lambda p: compact.group_importance(mlp_target, p))
    np.testing.assert_allclose(np.asarray(jitted(params)[0]), l2, rtol=1e-5)
    (got,) = compact.group_importance(mlp_target, params, method="l1", normalizer="mean")
    np.testing.assert_allclose(np.asarray(got), l1 / l1.mean(), rtol=1e-5)
    (got,) = compact.group_importance(mlp_target, params, normalizer="max")
    np.testing.assert_allclose(np.asarray(got), l2 / l2.max(), rtol=1e-5)
    (r1,) = compact.group_importance(mlp_target, params, method="random", key=jax.random.key(0))
    assert r1.shape == (16,) and float(r1.min()) >= 0.0
    # Running statistics do not count: changing them leaves the scores unchanged.
    rp = scrambled(rescnn_target, 0)
    base = compact.group_importance(rescnn_target, rp)
    rp["stem_bn"]["var"] = rp["stem_bn"]["var"] * 5.0
    for a, b in zip(base, compact.group_importance(rescnn_target, rp), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))
    # numpy weights are scored on the host (numpy arrays out), as JAX weights are.
    on_host = jax.tree.map(np.asarray, rp)
    on_device = jax.tree.map(jax.numpy.asarray, rp)
    for method, norm in (("l2", "mean"), ("l1", "max"), ("l2", None)):
        kw = dict(method=method, normalizer=norm, eps=1e-12)
        host = compact.group_importance(rescnn_target, on_host, **kw)
        device = compact.group_importance(rescnn_target, on_device, **kw)
        assert all(type(a) is np.ndarray and a.dtype == np.float32 for a in host)
        assert all(isinstance(b, jax.Array) for b in device)
        for a, b in zip(host, device, strict=True):
            np.testing.assert_allclose(a, np.asarray(b), rtol=1e-6)
    with pytest.raises(ValueError, match="method"):
        compact.group_importance(mlp_target, params, method="l3")
    with pytest.raises(ValueError, match="needs a key"):
        compact.group_importance(mlp_target, params, method="random")


def test_count_flops(mlp_target, cnn_target):
    assert compact.count_flops(mlp_target) == 2 * (64 * 16 + 16 * 10)
    # cnn2d channels (4, 4), strides (1, 2), 3x3 'SAME' on 8x8: 8x8 then 4x4 outputs.
    want = 2 * (8 * 8 * 4 * 9 * 1 + 4 * 4 * 4 * 9 * 4 + 4 * 10)
    assert compact.count_flops(cnn_target) == want
    params = scrambled(mlp_target, 0)
    small, _ = compact.remove_units(mlp_target, params, [np.arange(4)])
    assert compact.count_flops(small) == 2 * (64 * 4 + 4 * 10)
    assert compact.count_params(mlp_target) == mlp_target.num_params


# ---------------------------------------------------------------------------------------
# Any network: compact == masked original (the original with the removed units zeroed)
# ---------------------------------------------------------------------------------------


def masked(target: Target, params, groups, keep):
    """The original params with every slice of the removed units zeroed on every entry."""
    index = {p: i for i, p in enumerate(target.paths)}
    leaves = [np.array(a) for a in jax.tree.leaves(params)]
    for g, k in zip(groups, keep, strict=True):
        if k is None:
            continue
        alive = np.isin(np.arange(g.size), k).astype(np.float32)
        for entry in symmetry.entries(g):
            a = leaves[index[entry[0]]]
            if isinstance(entry, symmetry.StridedAxis):  # a flatten's channel sub-axis
                ax, view, sub = entry.axis, entry.shape, entry.sub
                b = a.reshape(a.shape[:ax] + tuple(view) + a.shape[ax + 1 :])
                shape = [1] * b.ndim
                shape[ax + sub] = g.size
                leaves[index[entry[0]]] = (b * alive.reshape(shape)).reshape(a.shape)
            else:
                shape = [1] * a.ndim
                shape[entry[1]] = g.size
                leaves[index[entry[0]]] = a * alive.reshape(shape)
    return jax.tree.unflatten(target.treedef, leaves)


def drop_some(groups, seed=0):
    """Per group, kept unit indices: about two thirds, in order."""
    rng = np.random.default_rng(seed)
    return [
        np.sort(rng.choice(g.size, size=max(1, 2 * g.size // 3), replace=False))
        if g.size > 1
        else None
        for g in groups
    ]


def assert_compact_is_masked(target, params, x, groups=None, keep=None):
    groups = symmetry.structural_groups(target) if groups is None else groups
    keep = drop_some(groups) if keep is None else keep
    small, sp = compact.remove_units(target, params, keep, groups=groups)
    y_small = np.asarray(small.apply(sp, x))
    y_masked = np.asarray(target.apply(masked(target, params, groups, keep), x))
    np.testing.assert_allclose(y_small, y_masked, atol=1e-5, rtol=1e-5)
    assert small.num_params < target.num_params
    return small, sp


class LayerNormMLP(nnx.Module):
    def __init__(self, rngs, width=6, use_fast_variance=True):
        self.fc1 = nnx.Linear(5, width, rngs=rngs)
        self.ln = nnx.LayerNorm(width, use_fast_variance=use_fast_variance, rngs=rngs)
        self.fc2 = nnx.Linear(width, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.ln(self.fc1(x))))


@pytest.fixture(scope="module")
def x5():
    return np.random.default_rng(7).standard_normal((4, 5)).astype(np.float32)


def test_layernorm_mlp_compact_equals_masked(x5):
    target = Target.from_nnx(LayerNormMLP(nnx.Rngs(0)), sample_input=x5)
    params = scrambled(target, 1)
    (g,) = symmetry.structural_groups(target)
    assert {"ln/scale", "ln/bias"} <= {p for p, _ in g.axes}
    keep = [np.array([0, 2, 3, 5])]
    small, sp = assert_compact_is_masked(target, params, x5, keep=keep)
    # Not the naive answer: a 4-unit LayerNorm MLP normalises over the 4 kept units only.
    y = np.asarray(small.apply(sp, x5))
    naive = Target.from_nnx(LayerNormMLP(nnx.Rngs(0), width=4), sample_input=x5)
    assert np.abs(np.asarray(naive.apply(sp, x5)) - y).max() > 1e-2
    # The compact target trains (its train_apply re-evaluates at the new sizes too).
    y_train, new = small.train_apply(sp, x5, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(y_train), y, atol=1e-6)
    small.validate(new)


def test_removing_a_zero_unit_keeps_a_layernorm_mlp(x5):
    target = Target.from_nnx(LayerNormMLP(nnx.Rngs(0)), sample_input=x5)
    params = scrambled(target, 2)
    (g,) = symmetry.structural_groups(target)
    # Unit 1's producing weights, bias and norm parameters are exactly zero.
    for path, ax in g.axes:
        if path != "fc2/kernel":
            a = np.array(params[path.split("/")[0]][path.split("/")[1]])
            np.moveaxis(a, ax, 0)[1] = 0.0
            params[path.split("/")[0]][path.split("/")[1]] = a
    small, sp = compact.remove_units(target, params, [np.array([0, 2, 3, 4, 5])])
    np.testing.assert_allclose(
        np.asarray(small.apply(sp, x5)), np.asarray(target.apply(params, x5)), atol=1e-5
    )


def test_a_centred_variance_is_refused(x5):
    target = Target.from_nnx(LayerNormMLP(nnx.Rngs(0), use_fast_variance=False), sample_input=x5)
    with pytest.raises(ValueError, match="fc1/kernel:1.*reduce_sum.*fast variance"):
        compact.remove_units(target, scrambled(target, 0), [np.array([0, 1, 2])])


class LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.relu(linen.Dense(7)(x.reshape(x.shape[0], -1)))
        x = linen.LayerNorm()(x)
        return linen.Dense(3)(linen.tanh(linen.Dense(6)(x)))


class LinenFlattenCNN(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.relu(linen.Conv(3, (3, 3))(x))
        x = linen.max_pool(x, (2, 2), strides=(2, 2))
        x = linen.relu(linen.Conv(4, (3, 3))(x))
        return linen.Dense(3)(x.reshape(x.shape[0], -1))


class LinenCNN(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.relu(linen.Conv(4, (3, 3))(x))
        x = linen.avg_pool(x, (2, 2), strides=(2, 2))
        x = linen.relu(linen.Conv(5, (3, 3))(x))
        x = x.mean(axis=(1, 2))
        return linen.Dense(3)(linen.relu(linen.Dense(6)(x)))


def test_linen_mlp_and_cnn_compact_equal_masked():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 4)).astype(np.float32)
    target = Target.from_linen(LinenMLP(), x)
    assert len(symmetry.structural_groups(target)) == 2
    small, sp = assert_compact_is_masked(target, scrambled(target, 0), x)
    assert small.leaf("params/Dense_0/kernel").shape == (16, 4)
    xi = rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
    cnn = Target.from_linen(LinenCNN(), xi)
    groups = symmetry.structural_groups(cnn)
    assert any("Conv_1/kernel" in g.producers[0] for g in groups)
    assert_compact_is_masked(cnn, scrambled(cnn, 1), xi, groups=groups)
    # A flatten between the last conv and the dense layer: its channels are a strided
    # sub-axis of the dense kernel's rows.
    flat = Target.from_linen(LinenFlattenCNN(), xi)
    groups = symmetry.structural_groups(flat)
    assert any(g.strided for g in groups)
    small, _ = assert_compact_is_masked(flat, scrambled(flat, 2), xi, groups=groups)
    assert small.leaf("params/Dense_0/kernel").shape[0] < 4 * 4 * 4


class Block(nnx.Module):
    """A tiny vision transformer: patches, position embedding, attention, MLP, mean pool."""

    def __init__(self, rngs, d=8, heads=2, hidden=6):
        self.patch = nnx.Linear(4, d, rngs=rngs)
        self.pos = nnx.Param(jax.random.normal(jax.random.key(1), (1, 4, d)) * 0.1)
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.att = nnx.MultiHeadAttention(
            num_heads=heads, in_features=d, qkv_features=d, decode=False, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.mlp1 = nnx.Linear(d, hidden, rngs=rngs)
        self.mlp2 = nnx.Linear(hidden, d, rngs=rngs)
        self.head = nnx.Linear(d, 3, rngs=rngs)

    def __call__(self, x):  # x: [B, 4 patches, 4 pixels]
        h = self.patch(x) + self.pos[...]
        h = h + self.att(self.ln1(h))
        h = h + self.mlp2(nnx.gelu(self.mlp1(self.ln2(h))))
        return self.head(h.mean(axis=1))


def test_transformer_block_compact_equals_masked():
    x = np.random.default_rng(3).standard_normal((2, 4, 4)).astype(np.float32)
    target = Target.from_nnx(Block(nnx.Rngs(0)), sample_input=x)
    groups = symmetry.structural_groups(target)
    owners = {g.name: {p for p, _ in g.axes} for g in groups}
    assert any("pos" in ps and "patch/kernel" in ps for ps in owners.values())  # residual
    assert any("mlp1/kernel" in ps for ps in owners.values())
    params = scrambled(target, 4)
    small, sp = assert_compact_is_masked(target, params, x, groups=groups)
    shapes = {s.path: s.shape for s in small.spec}
    assert shapes != {s.path: s.shape for s in target.spec}
    # Whole heads: the heads axis of q, k, v and the out projection, as one group.
    heads = symmetry.Group(
        "heads",
        2,
        (
            ("att/key/bias", 0),
            ("att/key/kernel", 1),
            ("att/out/kernel", 0),
            ("att/query/bias", 0),
            ("att/query/kernel", 1),
            ("att/value/bias", 0),
            ("att/value/kernel", 1),
        ),
        ("att/query/kernel", "att/key/kernel", "att/value/kernel"),
        ("att/out/kernel",),
    )
    one_head, hp = assert_compact_is_masked(target, params, x, groups=[heads], keep=[[1]])
    assert one_head.leaf("att/query/kernel").shape == (8, 1, 4)
    # The compact target is a target: its own groups, and it prunes again.
    again = symmetry.structural_groups(small)
    # (a group cut to one unit, e.g. one head left, is no longer an axis of units)
    want = [g.size if k is None else len(k) for g, k in zip(groups, drop_some(groups), strict=True)]
    assert [g.size for g in again if g.size > 1] == [n for n in want if n > 1]
    keep = [None] * len(again)
    keep[-1] = np.arange(1)
    tiny, tp = compact.remove_units(small, sp, keep)
    assert tiny.leaf("mlp1/kernel").shape[1] == 1
    full_keep = drop_some(groups)
    full_keep[-1] = full_keep[-1][:1]
    np.testing.assert_allclose(
        np.asarray(tiny.apply(tp, x)),
        np.asarray(target.apply(masked(target, params, groups, full_keep), x)),
        atol=1e-5,
    )


def test_pure_function_mlp_compact_equals_masked(x5):
    def apply(p, x):
        h = jnp.tanh(x @ p["w1"] + p["b1"][None])
        h = h / jnp.sqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6) * p["g"][None]  # RMSNorm
        return h @ p["w2"] + p["b2"][None]

    template = {
        "w1": np.zeros((5, 6), np.float32),
        "b1": np.zeros(6, np.float32),
        "g": np.zeros(6, np.float32),
        "w2": np.zeros((6, 2), np.float32),
        "b2": np.zeros(2, np.float32),
    }
    target = Target.from_function(apply, template, sample_input=x5, roles={"g": "norm_scale"})
    assert_compact_is_masked(target, scrambled(target, 5), x5)


def test_compact_targets_save_and_load(tmp_path, mlp_target, x5):
    # A preset: the compact target is rebuilt from the original's config, then derived.
    params = scrambled(mlp_target, 0)
    small, sp = compact.remove_units(mlp_target, params, [np.arange(5)])
    assert small.config == {"derived_from": mlp_target.config}
    save_population(tmp_path / "mlp", jax.tree.map(lambda a: a[None], sp), small)
    t, pop, _ = load_population(tmp_path / "mlp")
    assert t.paths == small.paths and [s.shape for s in t.spec] == [s.shape for s in small.spec]
    x = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    first = jax.tree.map(lambda a: a[0], pop)
    np.testing.assert_allclose(np.asarray(t.apply(first, x)), np.asarray(small.apply(sp, x)))
    # A network without a config: refused clearly, or derived from the given original.
    target = Target.from_nnx(LayerNormMLP(nnx.Rngs(0)), sample_input=x5)
    lp = scrambled(target, 1)
    lsmall, lsp = compact.remove_units(target, lp, [np.array([1, 4])])
    save_population(tmp_path / "ln", jax.tree.map(lambda a: a[None], lsp), lsmall)
    with pytest.raises(CheckpointError, match="no rebuild config.*pass target="):
        load_population(tmp_path / "ln")
    t2, pop2, _ = load_population(tmp_path / "ln", target=target)
    np.testing.assert_allclose(
        np.asarray(t2.apply(jax.tree.map(lambda a: a[0], pop2), x5)),
        np.asarray(lsmall.apply(lsp, x5)),
        atol=1e-6,
    )


def test_pruning_refuses_a_network_with_left_out_layers():
    def apply(p, x):
        h = jnp.sort(x @ p["w1"], axis=-1)  # sorting hidden units: no permutation symmetry
        return jnp.tanh(h @ p["w2"]) @ p["w3"]

    template = {
        "w1": np.zeros((5, 4), np.float32),
        "w2": np.zeros((4, 6), np.float32),
        "w3": np.zeros((6, 2), np.float32),
    }
    x = np.zeros((2, 5), np.float32)
    target = Target.from_function(apply, template, sample_input=x, roles={"w*": "kernel"})
    params = scrambled(target, 0)
    with pytest.raises(ValueError, match="left out.*sort.*remove_units"):
        prune_to_speedup(target, params, 1.2)


class TokenMLP(nnx.Module):
    """Token ids -> nnx.Embed -> mean over tokens -> Dense -> relu -> Dense."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(16, 8, rngs=rngs)
        self.fc1 = nnx.Linear(8, 6, rngs=rngs)
        self.fc2 = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, tokens):
        return self.fc2(nnx.relu(self.fc1(self.embed(tokens).mean(axis=1))))


def test_embedding_features_are_removed_like_hidden_units():
    tokens = np.random.default_rng(3).integers(0, 16, (4, 5)).astype(np.int32)
    target = Target.from_nnx(TokenMLP(nnx.Rngs(0)), sample_input=tokens)
    params = scrambled(target, 1)
    groups = symmetry.structural_groups(target, check=True)
    assert [g.size for g in groups] == [8, 6]
    keep = [np.array([0, 2, 3, 6, 7]), np.array([1, 2, 4, 5])]
    small, sp = assert_compact_is_masked(target, params, tokens, groups=groups, keep=keep)
    shapes = {s.path: s.shape for s in small.spec}
    assert shapes["embed/embedding"] == (16, 5) and shapes["fc1/kernel"] == (5, 4)
    want = np.asarray(params["embed"]["embedding"])[:, keep[0]]
    np.testing.assert_array_equal(np.asarray(sp["embed"]["embedding"]), want)
    # Not the unmasked original: the removed features carried signal.
    y = np.asarray(small.apply(sp, tokens))
    assert np.abs(y - np.asarray(target.apply(params, tokens))).max() > 1e-3
    assert [g.size for g in symmetry.structural_groups(small)] == [5, 4]


def test_resizing_an_indexed_embedding_axis_is_refused():
    tokens = np.random.default_rng(3).integers(0, 16, (4, 5)).astype(np.int32)

    def fn(leaves, x):
        return jnp.take(leaves[0], x, axis=0).sum(axis=(1, 2))

    table = np.ones((16, 8), np.float32)
    rs = resize.resized(fn, [table], ["table"], what="emb")
    np.testing.assert_allclose(np.asarray(rs([table[:, :3]], tokens)), np.full(4, 15.0))
    with pytest.raises(ValueError, match=r"table:0.*'gather' indexes or slices operand axis 0"):
        rs([table[:12]], tokens)
