"""Group importance, FLOP/parameter counts and physical removal of hidden units."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from hyper import compact, symmetry
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
