import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper import population as pop_ops


def test_spec_roles_and_layers(rescnn_target):
    t = rescnn_target
    roles = {s.path: s.role for s in t.spec}
    assert roles["stem/kernel"] == "kernel"
    assert roles["stem_bn/scale"] == "norm_scale"
    assert roles["stem_bn/bias"] == "norm_shift"
    assert roles["stem_bn/mean"] == "running_stat"
    assert not t.leaf("stem_bn/var").trainable
    # forward order: stem before its BN before the block before the head
    assert t.leaf("stem/kernel").layer < t.leaf("stem_bn/scale").layer
    assert t.leaf("blocks/0/conv1/kernel").layer < t.leaf("blocks/0/conv2/kernel").layer
    assert t.leaf("dense/kernel").layer == t.num_layers - 1
    k = t.leaf("blocks/0/conv1/kernel")
    assert (k.in_axis, k.out_axis, k.fan_in, k.fan_out) == (2, 3, 36, 36)


def test_apply_population_matches_loop(mlp_target):
    t = mlp_target
    pop = t.init_population(jax.random.key(0), 5)
    x = jax.random.normal(jax.random.key(1), (7, 8, 8))
    y = t.apply_population(pop, x)
    for i, p in enumerate(pop_ops.unstack(pop)):
        np.testing.assert_allclose(y[i], t.apply(p, x), rtol=1e-5, atol=1e-6)


def test_flatten_roundtrip_exact(rescnn_target):
    t = rescnn_target
    pop = t.init_population(jax.random.key(0), 3)
    m = pop_ops.flatten(t, pop)
    assert m.shape == (3, t.num_params + t.num_state)
    back = pop_ops.unflatten(t, m)
    jax.tree.map(np.testing.assert_array_equal, pop, back)


def test_wrong_shape_names_leaf(mlp_target):
    p = mlp_target.init(jax.random.key(0))
    p["layers"]["0"]["kernel"] = jnp.zeros((3, 3))
    with pytest.raises(ValueError, match=r"layers/0/kernel.*\(3, 3\).*\(64, 16\)"):
        mlp_target.apply(p, jnp.zeros((1, 8, 8)))
