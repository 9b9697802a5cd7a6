"""Target: the spec (roles, fans, layer order, neuron axes), the three builders, validation."""

import json
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper import population as pop_ops
from hyper import symmetry
from hyper.architectures import make_target, target_from_config
from hyper.spec import respec
from hyper.target import LeafSpec, Target, check_same_spec


def spec_table(target):
    return {
        s.path: (s.role, s.shape, s.fan_in, s.fan_out, s.in_axis, s.out_axis, s.layer)
        for s in target.spec
    }


# --- spec of the platform architectures ------------------------------------------------


def test_mlp_spec(mlp_target):
    t = mlp_target
    assert spec_table(t) == {
        "layers/0/kernel": ("kernel", (64, 16), 64, 16, 0, 1, 0),
        "layers/0/bias": ("bias", (16,), 64, 16, None, 0, 0),
        "layers/1/kernel": ("kernel", (16, 10), 16, 10, 0, 1, 1),
        "layers/1/bias": ("bias", (10,), 16, 10, None, 0, 1),
    }
    assert {s.layer_kind for s in t.spec} == {"dense"}
    assert t.leaf("layers/1/bias").layer_name == "layers/1"
    assert all(s.trainable for s in t.spec)
    assert (t.num_params, t.num_state, t.num_layers) == (64 * 16 + 16 + 16 * 10 + 10, 0, 2)
    assert t.input_shape == (8, 8)


def test_cnn2d_spec(cnn2d_rect_target):
    t = cnn2d_rect_target
    assert spec_table(t) == {
        "convs/0/kernel": ("kernel", (3, 3, 1, 3), 9, 27, 2, 3, 0),
        "convs/0/bias": ("bias", (3,), 9, 27, None, 0, 0),
        "convs/1/kernel": ("kernel", (3, 3, 3, 4), 27, 36, 2, 3, 1),
        "convs/1/bias": ("bias", (4,), 27, 36, None, 0, 1),
        "convs/2/kernel": ("kernel", (3, 3, 4, 5), 36, 45, 2, 3, 2),
        "convs/2/bias": ("bias", (5,), 36, 45, None, 0, 2),
        "dense/kernel": ("kernel", (5, 6), 5, 6, 0, 1, 3),
        "dense/bias": ("bias", (6,), 5, 6, None, 0, 3),
    }
    assert t.leaf("convs/1/bias").layer_kind == "conv"
    assert t.leaf("dense/bias").layer_kind == "dense"
    assert t.input_shape == (9, 8)


def test_cnn1d_spec(cnn1d_target):
    t = cnn1d_target
    assert spec_table(t) == {
        "convs/0/kernel": ("kernel", (5, 1, 3), 5, 15, 1, 2, 0),
        "convs/0/bias": ("bias", (3,), 5, 15, None, 0, 0),
        "convs/1/kernel": ("kernel", (5, 3, 4), 15, 20, 1, 2, 1),
        "convs/1/bias": ("bias", (4,), 15, 20, None, 0, 1),
        "dense/kernel": ("kernel", (4, 10), 4, 10, 0, 1, 2),
        "dense/bias": ("bias", (10,), 4, 10, None, 0, 2),
    }
    assert t.input_shape == (40,)


def test_rescnn_spec(rescnn_target):
    t = rescnn_target
    order = ["stem", "stem_bn", "blocks/0/conv1", "blocks/0/bn1", "blocks/0/conv2"]
    order += ["blocks/0/bn2", "dense"]
    assert {s.layer_name: s.layer for s in t.spec} == {n: i for i, n in enumerate(order)}
    for bn in ("stem_bn", "blocks/0/bn1", "blocks/0/bn2"):
        assert t.leaf(f"{bn}/scale").role == "norm_scale"
        assert t.leaf(f"{bn}/bias").role == "norm_shift"
        for stat in ("mean", "var"):
            s = t.leaf(f"{bn}/{stat}")
            assert (s.role, s.trainable, s.layer_kind, s.out_axis) == (
                "running_stat",
                False,
                "norm",
                0,
            )
        assert {s.layer for s in t.select(f"{bn}/*")} == {order.index(bn)}
    k = t.leaf("blocks/0/conv1/kernel")
    assert (k.in_axis, k.out_axis, k.fan_in, k.fan_out, k.layer_kind) == (2, 3, 36, 36, "conv")
    assert t.num_state == 3 * 2 * 4
    assert t.num_params == 9 * 4 + 2 * 4 + 2 * (36 * 4 + 2 * 4) + 4 * 10 + 10
    assert [s.path for s in t.select(roles=["running_stat"])] == [
        p for p in t.paths if p.endswith(("/mean", "/var"))
    ]
    mask = jax.tree.leaves(t.trainable_mask())
    assert mask == [s.trainable for s in t.spec]


@pytest.mark.parametrize(
    "name", ["mlp_target", "cnn2d_rect_target", "cnn1d_target", "rescnn_target"]
)
def test_neuron_axes_are_symmetries(name, request, random_params, rng):
    """Permuting hidden units along the spec's in/out axes leaves the function unchanged."""
    t = request.getfixturevalue(name)
    params = random_params(t, 0)
    first, last = 0, t.num_layers - 1
    perms = {}  # one permutation per hidden width (all our nets chain equal widths)
    flat = pop_ops.to_numpy(params)
    for s in t.spec:
        axes = []
        if s.in_axis is not None and s.layer != first:
            axes.append(s.in_axis)
        if s.out_axis is not None and s.layer != last:
            axes.append(s.out_axis)
        for ax in axes:
            size = s.shape[ax]
            perm = perms.setdefault(size, np.roll(np.arange(size)[::-1], 1))
            flat[s.path] = np.take(flat[s.path], perm, axis=ax)
    orig = pop_ops.to_numpy(params)
    assert any(not np.array_equal(flat[k], orig[k]) for k in flat)
    permuted = pop_ops.from_numpy(t, flat)
    x = rng.standard_normal((3, *t.input_shape), np.float32)
    np.testing.assert_allclose(t.apply(permuted, x), t.apply(params, x), rtol=1e-4, atol=1e-5)


def test_leafspec_json_roundtrip(rescnn_target):
    for s in rescnn_target.spec:
        assert LeafSpec.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert rescnn_target.describe().count("\n") == len(rescnn_target.spec)


def test_config_rebuilds_same_target(mlp_target):
    again = target_from_config(json.loads(json.dumps(mlp_target.config)))
    assert again.spec == mlp_target.spec and again.config == mlp_target.config
    assert again.treedef == mlp_target.treedef and again.name == mlp_target.name


# Dense and conv + BatchNorm initialisers (every initialiser the presets use); each case
# compiles four programs at XLA's default level, the slowest compiles of the suite.
@pytest.mark.parametrize("name", ["mlp_target", "rescnn_target"])
def test_init_compiler_options_keep_the_weights(name, request, default_compile):
    """`Target.init`/`init_population` compile with `init_compiler_options` (LLVM -O1 on
    CPU, for compile speed): the weights must equal a default-option compile bit for bit.
    (The suite compiles at level 0, tests/conftest.py: the default is asked for here.)"""
    target = request.getfixturevalue(name)
    keys = jax.random.split(jax.random.key(3), 4)
    plain = jax.jit(jax.vmap(target.pure_init), compiler_options=default_compile)(keys)
    first = jax.tree.map(lambda a: a[0], plain)
    nested = jax.jit(jax.vmap(target.init), compiler_options=default_compile)
    for want, got in (
        (plain, target.init_population(jax.random.key(3), 4)),
        (plain, nested(keys)),  # nested under a transform: no options of its own
        (first, target.init(keys[0])),
        # a concrete key, inside a jit
        (first, jax.jit(lambda: target.init(keys[0]), compiler_options=default_compile)()),
    ):
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- running statistics are state, carried and updated by train_apply -------------------


def test_rescnn_train_apply_updates_running_stats(rescnn_target, random_params, rng):
    t = rescnn_target
    params = random_params(t, 4)
    x = rng.standard_normal((3, 8, 8), np.float32)
    y, new = t.train_apply(params, x, jax.random.key(6))
    assert y.shape == (3, 10)
    before, after = pop_ops.to_numpy(params), pop_ops.to_numpy(new)
    for s in t.spec:
        if s.trainable:
            np.testing.assert_array_equal(after[s.path], before[s.path], err_msg=s.path)
        else:
            assert not np.allclose(after[s.path], before[s.path]), s.path
    # The stem BN sees the stem conv output: its running mean moves 10% toward the batch mean.
    h = jax.lax.conv_general_dilated(
        x[..., None],
        params["stem"]["kernel"],
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    expect = 0.9 * before["stem_bn/mean"] + 0.1 * np.asarray(h).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(after["stem_bn/mean"], expect, rtol=1e-5, atol=1e-6)
    # Eval mode reads the running statistics; train mode normalises by the batch instead.
    shifted = pop_ops.update(params, {"stem_bn/mean": params["stem_bn"]["mean"] + 1.0})
    assert not np.allclose(t.apply(shifted, x), t.apply(params, x))
    np.testing.assert_allclose(
        t.train_apply(shifted, x, jax.random.key(6))[0], y, rtol=1e-5, atol=1e-5
    )


def test_nnx_dropout_uses_train_key(random_params, rng):
    t = make_target("mlp", input_shape=(8, 8), widths=(32,), out_features=10, dropout=0.5)
    p = random_params(t, 0)
    x = rng.standard_normal((3, 8, 8), np.float32)
    a, _ = t.train_apply(p, x, jax.random.key(1))
    b, _ = t.train_apply(p, x, jax.random.key(2))
    c, _ = t.train_apply(p, x, jax.random.key(1))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(t.apply(p, x), t.apply(p, x))
    assert not np.allclose(t.apply(p, x), a)


# --- Linen and pure-function builders ---------------------------------------------------


def test_linen_target_spec(linen_bn_target):
    t = linen_bn_target
    roles = {s.path: s.role for s in t.spec}
    assert roles == {
        "params/Conv_0/kernel": "kernel",
        "params/Conv_0/bias": "bias",
        "params/BatchNorm_0/scale": "norm_scale",
        "params/BatchNorm_0/bias": "norm_shift",
        "batch_stats/BatchNorm_0/mean": "running_stat",
        "batch_stats/BatchNorm_0/var": "running_stat",
        "params/Dense_0/kernel": "kernel",
        "params/Dense_0/bias": "bias",
    }
    layers = {s.path: (s.layer_name, s.layer) for s in t.spec}
    # A BatchNorm's parameters and running statistics are one layer, between conv and dense.
    assert layers["params/BatchNorm_0/scale"] == ("BatchNorm_0", 1)
    assert layers["batch_stats/BatchNorm_0/var"] == ("BatchNorm_0", 1)
    assert layers["params/Conv_0/kernel"] == ("Conv_0", 0)
    assert layers["params/Dense_0/bias"] == ("Dense_0", 2)
    assert t.num_state == 8 and t.num_layers == 3
    assert not t.leaf("batch_stats/BatchNorm_0/mean").trainable


def test_linen_target_apply_and_train(linen_bn_target, rng):
    t = linen_bn_target
    pop = t.init_population(jax.random.key(4), 3)
    p = pop_ops.unstack(pop)[0]
    assert set(p) == {"params", "batch_stats"}
    x = rng.standard_normal((3, 6, 6, 1), np.float32)
    y = t.apply(p, x)
    assert y.shape == (3, 3)
    np.testing.assert_array_equal(y, t.apply(p, x))  # eval: no dropout
    yt, new = t.train_apply(p, x, jax.random.key(2))
    assert yt.shape == (3, 3)
    chex.assert_trees_all_equal(new["params"], p["params"])
    assert not np.allclose(new["batch_stats"]["BatchNorm_0"]["mean"], 0.0)
    assert not np.allclose(new["batch_stats"]["BatchNorm_0"]["var"], 1.0)
    yt2, _ = t.train_apply(p, x, jax.random.key(3))
    assert not np.allclose(yt, yt2)  # dropout reads the key
    ys = t.apply_population(pop, x)
    for i, m in enumerate(pop_ops.unstack(pop)):
        np.testing.assert_allclose(ys[i], t.apply(m, x), rtol=1e-5, atol=1e-6)


def _fn_apply(params, x):
    h = jnp.tanh(x @ params["z_in"]["kernel"] + params["z_in"]["bias"][None, :])
    return h @ params["a_out"]["kernel"] + params["a_out"]["bias"][None, :]


_FN_TEMPLATE = {
    "z_in": {"kernel": jax.ShapeDtypeStruct((3, 5), jnp.float32), "bias": jnp.zeros(5)},
    "a_out": {"kernel": jnp.zeros((5, 2)), "bias": jnp.zeros(2)},
}


@pytest.mark.parametrize("jit", [False, True])
def test_function_target(jit, rng):
    fn = jax.jit(_fn_apply) if jit else _fn_apply
    t = Target.from_function(fn, _FN_TEMPLATE, sample_input=jnp.ones((1, 3)), name="fn")
    # Layers follow forward use (z_in first), not path order, also through a jit wrapper.
    assert t.leaf("z_in/kernel").layer == 0 and t.leaf("a_out/kernel").layer == 1
    assert t.leaf("a_out/bias").fan_in == 5
    assert t.input_shape == (3,) and t.num_params == 15 + 5 + 10 + 2
    pop = t.init_population(jax.random.key(3), 4)
    p = pop_ops.unstack(pop)[0]
    assert float(jnp.abs(p["z_in"]["kernel"]).sum()) > 0
    np.testing.assert_array_equal(p["z_in"]["bias"], 0)
    x = rng.standard_normal((4, 3), np.float32)
    np.testing.assert_allclose(t.apply(p, x), _fn_apply(p, x), rtol=1e-6)
    if jit:
        return
    y, same = t.train_apply(p, x, jax.random.key(2))
    np.testing.assert_allclose(y, _fn_apply(p, x), rtol=1e-6)
    chex.assert_trees_all_equal(same, p)
    ys = t.apply_population(pop, x)
    for i, m in enumerate(pop_ops.unstack(pop)):
        np.testing.assert_allclose(ys[i], _fn_apply(m, x), rtol=1e-5, atol=1e-6)


def test_function_target_roles():
    tmpl = {
        "fc": {"weight": jnp.zeros((3, 5)), "bias": jnp.zeros(5)},
        "ln": {"scale": jnp.zeros(5), "bias": jnp.zeros(5)},
        "emb": {"embedding": jnp.zeros((7, 3))},
        "bn": {"mean": jnp.zeros(5), "var": jnp.zeros(5)},
    }
    t = Target.from_function(lambda p, x: x, tmpl)
    got = {s.path: (s.role, s.layer_kind, s.fan_in) for s in t.spec}
    assert got["fc/weight"] == ("kernel", "dense", 3)
    assert got["fc/bias"] == ("bias", "dense", 3)  # its layer's kernel is named "weight"
    assert got["ln/scale"][:2] == ("norm_scale", "norm")
    assert got["ln/bias"][:2] == ("norm_shift", "norm")
    assert got["emb/embedding"][:2] == ("embedding", "embedding")
    assert got["bn/var"][:2] == ("running_stat", "norm")
    assert t.num_state == 10
    t2 = Target.from_function(lambda p, x: x, tmpl, roles={"ln/*": "other", "emb/*": "kernel"})
    assert t2.leaf("ln/scale").role == "other" and t2.leaf("emb/embedding").role == "kernel"
    assert t2.leaf("emb/embedding").layer_kind == "dense"
    with pytest.raises(ValueError, match=r"'bn/mean' has shape \(5,\); a kernel needs"):
        Target.from_function(lambda p, x: x, tmpl, roles={"bn/mean": "kernel"})
    with pytest.raises(ValueError, match="unknown role 'weights'"):
        Target.from_function(lambda p, x: x, tmpl, roles={"fc/*": "weights"})
    with pytest.raises(ValueError, match=r"roles\['nope/\*'\] matches no leaf"):
        Target.from_function(lambda p, x: x, tmpl, roles={"nope/*": "kernel"})
    with pytest.raises(TypeError, match="nested dict"):
        Target.from_function(lambda p, x: x, [jnp.zeros(3)])
    with pytest.raises(ValueError, match="no leaves"):
        Target.from_function(lambda p, x: x, {"a": {}})
    with pytest.raises(TypeError, match="keys must be strings"):
        Target.from_function(lambda p, x: x, {"a": {0: jnp.zeros(3)}})


# --- bad input ---------------------------------------------------------------------------


def test_wrong_shape_names_leaf(mlp_target, random_params):
    p = random_params(mlp_target, 0)
    p["layers"]["0"]["kernel"] = jnp.zeros((3, 3))
    with pytest.raises(ValueError, match=r"layers/0/kernel.*\(3, 3\).*\(64, 16\)"):
        mlp_target.apply(p, jnp.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match=r"layers/0/kernel.*\(3, 3\).*\(64, 16\)"):
        mlp_target.train_apply(p, jnp.zeros((1, 8, 8)), jax.random.key(0))


def test_missing_extra_dtype_and_type_errors(mlp_target, random_params):
    t = mlp_target
    x = jnp.zeros((1, 8, 8))
    p = random_params(t, 0)
    missing = {"layers": {"0": p["layers"]["0"], "1": {"kernel": p["layers"]["1"]["kernel"]}}}
    with pytest.raises(ValueError, match=r"missing leaves \['layers/1/bias'\]"):
        t.apply(missing, x)
    extra = {"layers": {**p["layers"], "2": {"kernel": jnp.zeros((2, 2))}}}
    with pytest.raises(ValueError, match=r"unexpected leaves \['layers/2/kernel'\]"):
        t.apply(extra, x)
    bad_dtype = pop_ops.update(p, {})
    bad_dtype["layers"]["1"]["bias"] = jnp.zeros(10, jnp.float16)
    with pytest.raises(ValueError, match=r"layers/1/bias.*float16.*float32"):
        t.apply(bad_dtype, x)
    not_array = pop_ops.update(p, {})
    not_array["layers"]["1"]["bias"] = [0.0] * 10
    with pytest.raises(TypeError, match="layers/1/bias"):
        t.apply(not_array, x)
    with pytest.raises(TypeError, match="nested dict"):
        t.apply([p], x)
    with pytest.raises(TypeError, match="nested dict"):
        t.apply(None, x)
    with pytest.raises(TypeError, match="keys must be strings"):
        t.apply({"layers": {0: p["layers"]["0"], 1: p["layers"]["1"]}}, x)


def test_population_validation(mlp_target, random_params):
    t = mlp_target
    pop = random_params(t, 0, n=3)
    assert t.validate(pop, batched=True) == 3
    with pytest.raises(ValueError, match=r"layers/0/bias.*\(16,\).*\(n,\)\+\(16,\)"):
        t.apply_population(random_params(t, 0), jnp.zeros((1, 8, 8)))
    uneven = pop_ops.update(pop, {})
    uneven["layers"]["1"]["bias"] = jnp.zeros((2, 10))
    with pytest.raises(ValueError, match="layers/1/bias.*2 targets.*3"):
        t.validate(uneven, batched=True)
    with pytest.raises(ValueError, match="n must be >= 1"):
        t.init_population(jax.random.key(0), 0)
    with pytest.raises(KeyError, match="no leaf 'layers/9/kernel'"):
        t.leaf("layers/9/kernel")
    with pytest.raises(ValueError, match="unknown roles"):
        t.select(roles=["weights"])


def test_make_target_errors():
    with pytest.raises(ValueError, match="unknown architecture 'vit'"):
        make_target("vit", input_shape=(8, 8))
    with pytest.raises(ValueError, match="missing config 'out_features'"):
        make_target("mlp", input_shape=(8, 8), widths=(4,))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        make_target("mlp", input_shape=(8, 8), widths=(4,), out_features=2, activation="swish")
    with pytest.raises(ValueError, match="widths must be positive"):
        make_target("mlp", input_shape=(8, 8), widths=(4, 0), out_features=2)
    with pytest.raises(ValueError, match="2 strides for 3 conv layers"):
        make_target("cnn2d", input_shape=(8, 8), channels=(2, 2, 2), out_features=2, strides=(1, 2))
    with pytest.raises(ValueError, match="needs 'arch' and 'input_shape'"):
        target_from_config({"widths": [3]})


# --- derived targets and comparison -------------------------------------------------


def test_derive_target_rejects_unknown_leaves(mlp_target):
    params = jax.tree.unflatten(
        mlp_target.treedef, symmetry.scrambled_params(mlp_target, np.random.default_rng(0))
    )
    with pytest.raises(ValueError, match="not a leaf"):
        mlp_target.derive({"other": {"kernel": np.zeros((2, 2))}})
    bad = jax.tree.map(lambda a: a, params)
    bad["layers"]["1"]["kernel"] = np.zeros((5, 10), np.float32)  # 16 -> 5 inputs: no match
    with pytest.raises(ValueError, match="axes it is tied to"):
        mlp_target.derive(bad)


def test_spec_differences(mlp_target, cnn_target):
    assert mlp_target.spec_differences(mlp_target) == []
    check_same_spec(mlp_target, mlp_target)
    with pytest.raises(ValueError, match="different leaves"):
        check_same_spec(mlp_target, cnn_target)
    narrow = make_target("mlp", input_shape=(8, 8), widths=[8], out_features=10)
    diffs = mlp_target.spec_differences(narrow)
    assert diffs == [
        f"targets {mlp_target.name} and {narrow.name} differ at leaf {p!r}: shape {a} vs {b}"
        for p, a, b in [
            ("layers/0/bias", (16,), (8,)),
            ("layers/0/kernel", (64, 16), (64, 8)),
            ("layers/1/kernel", (16, 10), (8, 10)),
        ]
    ]
    assert mlp_target.spec_differences(narrow, fields=("role", "dtype")) == []
    assert mlp_target.config_differences(narrow) == ["widths"]


# --- roles, axes and layers from the traced computation (issue 28: D5, D8) ---------------


def _flat_mlp(params, x):
    # Explicit broadcasts: the tests run with jax_numpy_rank_promotion="raise".
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"][None])
    return h @ params["w2"] + params["b2"][None]


_FLAT_TEMPLATE = {
    "w1": jnp.zeros((64, 16)),
    "b1": jnp.zeros(16),
    "w2": jnp.zeros((16, 10)),
    "b2": jnp.zeros(10),
}


def test_attention_kernels_axes_and_fans():
    """q/k/v kernels ``(in, heads, head_dim)`` have fan-in `in`; the out projection
    ``(heads, head_dim, out)`` fan-in heads*head_dim (not the 3-axis conv reading)."""
    from flax import nnx

    mha = nnx.eval_shape(  # abstract: the spec needs shapes only
        lambda: nnx.MultiHeadAttention(
            num_heads=2,
            in_features=8,
            qkv_features=12,
            out_features=5,
            decode=False,
            rngs=nnx.Rngs(0),
        )
    )
    t = Target.from_nnx(mha, sample_input=jnp.zeros((2, 3, 8)))
    for name in ("query", "key", "value"):
        k, b = t.leaf(f"{name}/kernel"), t.leaf(f"{name}/bias")
        assert (k.shape, k.in_axes, k.out_axes, k.fan_in, k.fan_out) == (
            (8, 2, 6),
            (0,),
            (1, 2),
            8,
            12,
        )
        assert (k.in_axis, k.out_axis, k.layer_kind) == (0, None, "dense")
        assert (b.role, b.out_axes, b.out_axis, b.fan_in, b.layer_name) == (
            "bias",
            (0, 1),
            None,
            8,
            name,
        )
    o = t.leaf("out/kernel")
    assert (o.in_axes, o.out_axes, o.in_axis, o.out_axis, o.fan_in, o.fan_out) == (
        (0, 1),
        (2,),
        None,
        2,
        12,
        5,
    )
    assert "axes(in=0, out=(1, 2))" in t.describe()
    # Fewer heads (a pruned network): `respec` recomputes the fans from the same axes.
    q = respec(t.leaf("query/kernel"), (8, 1, 6))
    o = respec(t.leaf("out/kernel"), (1, 6, 5))
    assert (q.fan_in, q.fan_out, o.fan_in, o.fan_out) == (8, 6, 6, 5)
    assert respec(t.leaf("query/bias"), (1, 6), q).fan_in == 8


@pytest.mark.parametrize("use_bias", [True, False])
def test_position_embedding_role_and_init(use_bias):
    """A bare ``nnx.Param`` added to the token activations is an additive embedding with a
    small non-zero init, never a bias of the projection before it."""
    from flax import nnx

    class Tokens(nnx.Module):
        def __init__(self, rngs):
            self.proj = nnx.Linear(4, 6, use_bias=use_bias, rngs=rngs)
            self.pos = nnx.Param(jnp.zeros((1, 5, 6)))

        def __call__(self, x):
            return (self.proj(x) + self.pos[...]).mean(1)

    module = nnx.eval_shape(lambda: Tokens(nnx.Rngs(0)))
    t = Target.from_nnx(module, sample_input=jnp.zeros((2, 5, 4)))
    s = t.leaf("pos")
    assert (s.role, s.layer_kind, s.out_axes, s.layer_name) == ("embedding", "position", (2,), "")
    assert s.layer == 1 and t.leaf("proj/kernel").layer == 0
    pop = t.init_population(jax.random.key(1), 4)
    pos = np.asarray(pop["pos"])
    assert np.all(pos != 0)
    np.testing.assert_allclose(pos.std(), 0.02, rtol=0.15)
    assert pop_ops.torch_key_map(t)["pos"] == "pos"


def test_flat_names_roles_and_layers_from_use():
    t = Target.from_function(_flat_mlp, _FLAT_TEMPLATE, sample_input=jnp.zeros((2, 8, 8)))
    assert spec_table(t) == {
        "w1": ("kernel", (64, 16), 64, 16, 0, 1, 0),
        "b1": ("bias", (16,), 64, 16, None, 0, 0),
        "w2": ("kernel", (16, 10), 16, 10, 0, 1, 1),
        "b2": ("bias", (10,), 16, 10, None, 0, 1),
    }
    layers = {s.path: s.layer_name for s in t.spec}
    assert layers == {"w1": "w1", "b1": "w1", "w2": "w2", "b2": "w2"}
    assert t.num_layers == 2
    assert pop_ops.torch_key_map(t) == {
        "w1": "w1.weight",
        "b1": "w1.bias",
        "w2": "w2.weight",
        "b2": "w2.bias",
    }
    p = t.init(jax.random.key(0))
    assert np.std(np.asarray(p["w1"])) > 0.05 and np.all(np.asarray(p["b1"]) == 0)


def test_torch_style_kernel_out_in():
    """``x @ w.T`` with ``w`` [out, in] (a PyTorch port): the trace reads the axes."""

    def apply(p, x):
        return jnp.tanh(x @ p["fc"]["w"].T + p["fc"]["b"][None]) @ p["head"]["w"].T

    tmpl = {"fc": {"w": jnp.zeros((7, 3)), "b": jnp.zeros(7)}, "head": {"w": jnp.zeros((2, 7))}}
    t = Target.from_function(apply, tmpl, sample_input=jnp.zeros((2, 3)))
    w = t.leaf("fc/w")
    assert (w.role, w.in_axes, w.out_axes, w.fan_in, w.fan_out) == ("kernel", (1,), (0,), 3, 7)
    assert (t.leaf("fc/b").role, t.leaf("fc/b").fan_in) == ("bias", 3)


def test_all_other_warns_once():
    with pytest.warns(UserWarning) as record:
        t = Target.from_function(_flat_mlp, _FLAT_TEMPLATE)
    msgs = [str(r.message) for r in record if "role 'other'" in str(r.message)]
    assert len(msgs) == 1
    assert "['b1', 'b2', 'w1', 'w2']" in msgs[0] and "roles={'w*': 'kernel'" in msgs[0]
    assert {s.role for s in t.spec} == {"other"}
    # roles= (no trace): kernels split the shared parent; keys never collide.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t2 = Target.from_function(_flat_mlp, _FLAT_TEMPLATE, roles={"w*": "kernel", "b*": "bias"})
        Target.from_function(_flat_mlp, _FLAT_TEMPLATE, sample_input=jnp.zeros((1, 8, 8)))
    keys = pop_ops.torch_key_map(t2)
    assert len(set(keys.values())) == 4 and keys["w2"] == "w2.weight"


def test_key_map_collision_is_an_error_and_key_map_exports():
    tmpl = {"ln": {"a": jnp.zeros(3), "b": jnp.zeros(3)}}
    t = Target.from_function(
        lambda p, x: x * p["ln"]["a"][None] * p["ln"]["b"][None], tmpl, roles={"ln/*": "norm_scale"}
    )
    with pytest.raises(ValueError, match=r"'ln/b' and 'ln/a' both map to 'ln.weight'.*key_map="):
        pop_ops.torch_key_map(t)
    p = {"ln": {"a": jnp.arange(3.0), "b": jnp.ones(3)}}
    km = {"ln/a": "ln.a", "ln/b": "ln.b"}
    sd = pop_ops.to_torch_state_dict(t, p, key_map=km)
    assert set(sd) == {"ln.a", "ln.b"}
    chex.assert_trees_all_equal(pop_ops.from_torch_state_dict(t, sd, key_map=km), p)
    with pytest.raises(ValueError, match="maps 'ln/b' and 'ln/a' to 'ln.a'"):
        pop_ops.to_torch_state_dict(t, p, key_map={"ln/a": "ln.a", "ln/b": "ln.a"})


def test_old_json_spec_loads():
    """A spec stored before `in_axes`/`out_axes` existed (zoo dirs, checkpoints) loads."""
    old = {
        "path": "conv/kernel",
        "shape": [3, 3, 2, 4],
        "dtype": "float32",
        "role": "kernel",
        "fan_in": 18,
        "fan_out": 36,
        "layer": 0,
        "layer_name": "conv",
        "layer_kind": "conv",
        "in_axis": 2,
        "out_axis": 3,
        "trainable": True,
    }
    s = LeafSpec.from_json(old)
    assert (s.in_axes, s.out_axes, s.in_axis, s.out_axis) == ((2,), (3,), 2, 3)
    assert LeafSpec.from_json(json.loads(json.dumps(s.to_json()))) == s
    b = LeafSpec.from_json({**old, "role": "bias", "in_axis": None, "out_axis": 0})
    assert (b.in_axes, b.out_axes) == ((), (0,))


def test_flat_name_function_trains(digits):
    """The coverage file's #11: with default init a flat-named MLP now learns (every leaf
    'other' and zero kept the loss at ln 10 = 2.303, identical members)."""
    from hyper.train import TrainConfig, Trainer

    t = Target.from_function(_flat_mlp, _FLAT_TEMPLATE, sample_input=jnp.zeros((2, 8, 8)))
    trainer = Trainer(t, digits, TrainConfig(batch_size=32, steps_per_epoch=30))
    state = trainer.init(jax.random.key(0), 2, learning_rate=1e-2, shard=False)
    state, metrics = trainer.train_epoch(state, 0)
    loss = np.asarray(metrics["batch_loss"])
    assert np.all(loss < 1.8), loss  # the epoch's mean minibatch loss, from 2.3 at step 0
    assert loss[0] != loss[1]
