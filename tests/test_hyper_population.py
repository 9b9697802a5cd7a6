"""Populations: exact conversions (hypothesis), slicing, selection, vmapped apply, bad input."""

import fnmatch

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyper import population as pop_ops
from hyper.target import Target

# Deterministic and quick; no deadline (the first call of a shape compiles).
property_test = settings(max_examples=10, deadline=None, derandomize=True, database=None)


# --- random targets (pure-function templates) and populations ---------------------------


@st.composite
def templates(draw):
    """A params template of 1-2 dense/conv layers and optionally a BatchNorm-like layer.

    Few distinct shapes, so that JAX compiles each slicing program only a few times.
    """
    tmpl = {}
    for i in range(draw(st.integers(1, 2))):
        spatial = draw(st.sampled_from([(), (2,)]))
        shape = spatial + (draw(st.integers(1, 2)), draw(st.integers(1, 3)))
        layer = {"kernel": jax.ShapeDtypeStruct(shape, jnp.float32)}
        if draw(st.booleans()):
            layer["bias"] = jax.ShapeDtypeStruct(shape[-1:], jnp.float32)
        tmpl[f"layer{i}"] = layer
    if draw(st.booleans()):
        c = draw(st.integers(1, 2))
        tmpl["norm"] = {k: jax.ShapeDtypeStruct((c,), jnp.float32) for k in ("scale", "bias")}
        tmpl["norm"] |= {k: jax.ShapeDtypeStruct((c,), jnp.float32) for k in ("mean", "var")}
    return tmpl


def make_population(target, n, seed):
    """Random values (incl. -0.0, inf, nan, subnormals) for every leaf, `[n, ...]`."""
    rng = np.random.default_rng(seed)
    special = np.array([-0.0, np.inf, -np.inf, np.nan, 1e-45, 3.4e38], np.float32)
    flat = {}
    for s in target.spec:
        v = rng.standard_normal((n, *s.shape)).astype(np.float32)
        mask = rng.random(v.shape) < 0.1
        v[mask] = rng.choice(special, int(mask.sum()))
        flat[s.path] = v
    return pop_ops.from_numpy(target, flat, batched=True)


@st.composite
def populations(draw, max_n=3):
    target = Target.from_function(lambda p, x: x, draw(templates()), name="random")
    n = draw(st.integers(1, max_n))
    return target, make_population(target, n, draw(st.integers(0, 2**31)))


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.dtype(x.dtype) == np.dtype(y.dtype) and np.shape(x) == np.shape(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- exact conversions ----------------------------------------------------------------


@property_test
@given(populations())
def test_flatten_unflatten_exact(tp):
    t, pop = tp
    n = pop_ops.num_targets(pop)
    m = pop_ops.flatten(t, pop)
    assert m.shape == (n, t.num_params + t.num_state) and m.dtype == jnp.float32
    assert_trees_equal(pop_ops.unflatten(t, m), pop)
    # Columns are the leaves in spec order, each row-major.
    first = t.spec[0]
    np.testing.assert_array_equal(
        m[:, : first.size], np.asarray(pop_ops.to_numpy(pop)[first.path]).reshape(n, -1)
    )


@property_test
@given(populations())
def test_flatten_trainable_only_with_state(tp):
    t, pop = tp
    m = pop_ops.flatten(t, pop, trainable_only=True)
    assert m.shape[1] == t.num_params
    assert_trees_equal(pop_ops.unflatten(t, m, trainable_only=True, state=pop), pop)
    # Without state, running statistics are reset: means 0, variances 1.
    fresh = pop_ops.to_numpy(pop_ops.unflatten(t, m, trainable_only=True))
    for s in t.spec:
        if not s.trainable:
            np.testing.assert_array_equal(fresh[s.path], 1.0 if s.path.endswith("var") else 0.0)


@property_test
@given(populations())
def test_stack_unstack(tp):
    _, pop = tp
    members = pop_ops.unstack(pop)
    assert len(members) == pop_ops.num_targets(pop)
    host = jax.tree.map(np.asarray, pop)
    for i, m in enumerate(members):
        assert_trees_equal(m, jax.tree.map(lambda v, i=i: v[i], host))
    assert_trees_equal(pop_ops.stack(members), pop)


@property_test
@given(populations(), st.data())
def test_take_and_concatenate(tp, data):
    _, pop = tp
    host = jax.tree.map(np.asarray, pop)  # expectations from NumPy indexing
    n = pop_ops.num_targets(pop)
    idx = data.draw(st.lists(st.integers(-n, n - 1), max_size=3))
    got = pop_ops.take(pop, idx)
    assert_trees_equal(got, jax.tree.map(lambda v: v[np.asarray(idx, int)], host))
    sl = slice(data.draw(st.integers(0, n)), None, data.draw(st.integers(1, 2)))
    assert_trees_equal(pop_ops.take(pop, sl), jax.tree.map(lambda v: v[sl], host))
    mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    assert_trees_equal(pop_ops.take(pop, mask), jax.tree.map(lambda v: v[mask], host))
    i = data.draw(st.integers(0, n - 1))
    assert_trees_equal(pop_ops.take(pop, i), jax.tree.map(lambda v: v[i], host))
    b = np.asarray(idx, int) % n if idx else np.zeros(1, int)
    both = pop_ops.concatenate([pop_ops.take(pop, [i]), pop_ops.take(pop, b)])
    assert_trees_equal(both, jax.tree.map(lambda v: v[np.concatenate([[i], b])], host))


@property_test
@given(populations())
def test_numpy_roundtrip(tp):
    t, pop = tp
    arrays = pop_ops.to_numpy(pop)
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    assert sorted(arrays) == sorted(t.paths)
    assert_trees_equal(pop_ops.from_numpy(t, arrays, batched=True), pop)
    one = pop_ops.to_numpy(pop_ops.unstack(pop)[0])
    assert_trees_equal(pop_ops.from_numpy(t, one), pop_ops.unstack(pop)[0])


@property_test
@given(populations(), st.sampled_from(["*/kernel", "layer0/*", "norm/*", "*", "*/b*"]))
def test_select_by_glob(tp, glob):
    t, pop = tp
    matching = [p for p in t.paths if fnmatch.fnmatchcase(p, glob)]
    if not matching:
        with pytest.raises(ValueError, match="no leaf"):
            pop_ops.select(t, pop, glob)
        return
    got = pop_ops.select(t, pop, glob)
    assert sorted(got) == sorted(matching)
    flat = pop_ops.to_numpy(pop)
    for p, v in got.items():
        np.testing.assert_array_equal(v, flat[p])


@property_test
@given(populations())
def test_update(tp):
    t, pop = tp
    path = t.paths[-1]
    before = pop_ops.to_numpy(pop)
    new = jnp.full(before[path].shape, 7.0, jnp.float32)
    out = pop_ops.update(pop, {path: new})
    after = pop_ops.to_numpy(out)
    np.testing.assert_array_equal(after[path], 7.0)
    for p in t.paths:
        if p != path:
            np.testing.assert_array_equal(after[p], before[p])
    np.testing.assert_array_equal(pop_ops.to_numpy(pop)[path], before[path])  # not in place
    t.validate(out, batched=True)


# --- apply over a population ------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp_target", "rescnn_target"])
def test_apply_population_matches_loop(name, request, random_params, rng):
    t = request.getfixturevalue(name)
    pop = random_params(t, 0, n=3)  # non-trivial running statistics too
    x = rng.standard_normal((3, *t.input_shape), np.float32)
    ys = t.apply_population(pop, x)
    assert ys.shape == (3, 3, 10)
    xs = rng.standard_normal((3, 3, *t.input_shape), np.float32)
    ys_own = t.apply_population(pop, xs, per_target_inputs=True)
    for i, p in enumerate(pop_ops.unstack(pop)):
        np.testing.assert_allclose(ys[i], t.apply(p, x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ys_own[i], t.apply(p, xs[i]), rtol=1e-5, atol=1e-5)


def test_init_population_members_differ(mlp_target):
    pop = mlp_target.init_population(jax.random.key(0), 3)
    k = pop_ops.to_numpy(pop)["layers/0/kernel"]
    assert not np.allclose(k[0], k[1])
    np.testing.assert_array_equal(np.asarray(pop["layers"]["0"]["bias"]), 0.0)
    again = mlp_target.init_population(jax.random.key(0), 3)
    assert_trees_equal(pop, again)


# --- bad input ----------------------------------------------------------------------------


def _pop(n=3):
    tmpl = {"a": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros(3)}}
    t = Target.from_function(lambda p, x: x, tmpl)
    return t, make_population(t, n, 0)


def test_population_ops_reject_mismatches():
    t, pop = _pop()
    other = {"a": {"kernel": jnp.zeros((3, 2, 4)), "bias": jnp.zeros((3, 4))}}
    with pytest.raises(ValueError, match=r"leaf 'a/kernel' has shape \(3, 2, 3\) in \[0\] and "):
        pop_ops.concatenate([pop, other])
    half = {"a": {"kernel": pop["a"]["kernel"].astype(jnp.float16), "bias": pop["a"]["bias"]}}
    with pytest.raises(ValueError, match=r"'a/kernel' has dtype float32 in \[0\] and float16"):
        pop_ops.concatenate([pop, half])
    with pytest.raises(ValueError, match="different structure"):
        pop_ops.concatenate([pop, {"a": {"kernel": pop["a"]["kernel"]}}])
    members = pop_ops.unstack(pop)
    with pytest.raises(ValueError, match=r"leaf 'a/bias' has shape \(3,\) in \[0\] and \(4,\)"):
        pop_ops.stack([members[0], {"a": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros(4)}}])
    with pytest.raises(ValueError, match="empty"):
        pop_ops.stack([])
    with pytest.raises(ValueError, match="no populations"):
        pop_ops.concatenate([])
    uneven = {"a": {"kernel": pop["a"]["kernel"], "bias": pop["a"]["bias"][:2]}}
    with pytest.raises(ValueError, match="disagree on the targets axis"):
        pop_ops.num_targets(uneven)
    with pytest.raises(ValueError, match="no leaves"):
        pop_ops.num_targets({})


def test_take_rejects_bad_indices():
    _, pop = _pop()
    with pytest.raises(ValueError, match=r"out of range for 3 targets: \[0, 3\]"):
        pop_ops.take(pop, [0, 3])
    with pytest.raises(ValueError, match="out of range"):
        pop_ops.take(pop, [-4])
    with pytest.raises(ValueError, match=r"boolean mask has shape \(2,\), population has 3"):
        pop_ops.take(pop, [True, False])
    with pytest.raises(ValueError, match="integers or a boolean mask, got dtype float64"):
        pop_ops.take(pop, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"scalar or 1-D, got shape \(1, 2\)"):
        pop_ops.take(pop, [[0, 1]])
    assert pop_ops.num_targets(pop_ops.take(pop, [])) == 0


def test_flatten_update_numpy_reject_bad_input():
    t, pop = _pop()
    with pytest.raises(ValueError, match=r"matrix has shape \(3, 8\), expected \(targets, 9\)"):
        pop_ops.unflatten(t, jnp.zeros((3, 8)))
    with pytest.raises(ValueError, match=r"matrix has shape \(9,\)"):
        pop_ops.unflatten(t, jnp.zeros(9))
    with pytest.raises(ValueError, match=r"update: leaf 'a/bias' has shape \(3, 3\), got \(3,\)"):
        pop_ops.update(pop, {"a/bias": jnp.zeros(3)})
    with pytest.raises(ValueError, match="update: leaf 'a/bias' has dtype float32, got int32"):
        pop_ops.update(pop, {"a/bias": jnp.zeros((3, 3), jnp.int32)})
    with pytest.raises(ValueError, match="update: no leaf 'a/scale'"):
        pop_ops.update(pop, {"a/scale": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"missing leaves \['a/bias'\]"):
        pop_ops.from_numpy(t, {"a/kernel": np.zeros((3, 2, 3), np.float32)}, batched=True)
    with pytest.raises(ValueError, match=r"'a/bias' has shape \(3,\), expected \(targets, 3\)"):
        pop_ops.from_numpy(t, pop_ops.to_numpy(pop_ops.unstack(pop)[0]), batched=True)
    with pytest.raises(TypeError, match="keys must be slash-separated path strings"):
        pop_ops.from_numpy(t, {0: np.zeros(3)})
    with pytest.raises(TypeError, match="expected a mapping"):
        pop_ops.from_numpy(t, [np.zeros(3)])
    with pytest.raises(ValueError, match="select: give at least one path glob"):
        pop_ops.select(t, pop)


def test_flatten_rejects_mixed_dtypes_and_bad_state():
    tmpl = {
        "a": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros(3, jnp.bfloat16)},
        "bn": {"mean": jnp.zeros(3), "var": jnp.zeros(3)},
    }
    t = Target.from_function(lambda p, x: x, tmpl)
    pop = t.init_population(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="several dtypes"):
        pop_ops.flatten(t, pop)
    t2 = Target.from_function(lambda p, x: x, {**tmpl, "a": {"kernel": jnp.zeros((2, 3))}})
    pop2 = t2.init_population(jax.random.key(0), 2)
    m = pop_ops.flatten(t2, pop2, trainable_only=True)
    bad_state = {"bn": {"mean": jnp.zeros((3, 3)), "var": jnp.zeros((2, 3))}}
    with pytest.raises(ValueError, match=r"state leaf 'bn/mean' has shape \(3, 3\), expected"):
        pop_ops.unflatten(t2, m, trainable_only=True, state=bad_state)
    with pytest.raises(ValueError, match="state has no leaf 'bn/var'"):
        pop_ops.unflatten(t2, m, trainable_only=True, state={"bn": {"mean": jnp.zeros((2, 3))}})
