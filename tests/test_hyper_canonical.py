"""Scale and sign symmetries of hidden units: read from the traced computation, canonical
forms invariant under them, random equivalent networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hyper import canonical, symmetry
from hyper.architectures import make_target
from hyper.errors import WeightspaceError
from hyper.target import Target


class LeNet(nnx.Module):
    """relu conv + max pool, tanh conv + average pool, flatten, linear dense, dense."""

    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 3, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.fc1 = nnx.Linear(2 * 2 * 4, 5, rngs=rngs)
        self.fc2 = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(jax.nn.relu(self.conv1(x)), (2, 2), (2, 2))
        x = nnx.avg_pool(jnp.tanh(self.conv2(x)), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.fc2(self.fc1(x))


def mlp_apply(p, x):
    """An MLP with one hidden layer of each kind: relu, tanh, gelu, silu."""
    for name, act in (("a", jax.nn.relu), ("b", jnp.tanh), ("c", jax.nn.gelu), ("d", jax.nn.silu)):
        x = act(x @ p[name]["kernel"] + p[name]["bias"][None])
    return x @ p["e"]["kernel"]


def _mlp():
    shapes = {"a": (6, 5), "b": (5, 4), "c": (4, 4), "d": (4, 3), "e": (3, 2)}
    template = {k: {"kernel": jnp.zeros(s), "bias": jnp.zeros(s[1])} for k, s in shapes.items()}
    del template["e"]["bias"]
    return Target.from_function(mlp_apply, template, sample_input=jnp.zeros((2, 6)))


_BUILT: dict[str, Target] = {}


def target(name: str) -> Target:
    """One target per name for the module (its compiled functions are shared)."""
    if name not in _BUILT:
        _BUILT[name] = TARGETS[name]()
    return _BUILT[name]


TARGETS = {
    "mlp": _mlp,
    "lenet": lambda: Target.from_nnx(
        nnx.eval_shape(lambda: LeNet(nnx.Rngs(0))), sample_input=jnp.zeros((2, 8, 8, 1))
    ),
    "rescnn_bn": lambda: make_target(
        "rescnn", input_shape=(6, 6, 1), channels=3, num_blocks=1, out_features=2
    ),
}

# (scale, sign) per structural group, in group order.
EXPECTED = {
    "mlp": [(True, False), (False, True), (False, False), (False, False)],
    # relu + max pool: scale; tanh + average pool + flatten: sign; linear: both.
    "lenet": [(True, False), (False, True), (True, True)],
    "rescnn_bn": [(True, False), (True, False)],
}


def population(target: Target, n: int, seed: int):
    """`n` networks whose every leaf varies per unit (norm statistics included)."""
    rng = np.random.default_rng(seed)
    members = [symmetry.scrambled_params(target, rng) for _ in range(n)]
    return jax.tree.unflatten(target.treedef, [np.stack(ls) for ls in zip(*members, strict=True)])


def close(a, b, tol=1e-5):
    """Leaves equal within `tol` relative to each leaf's largest entry."""
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        if u.shape != v.shape or np.max(np.abs(u - v)) > tol * max(1.0, np.max(np.abs(u))):
            return False
    return True


_CASES: dict[str, tuple] = {}


@pytest.fixture(scope="module", params=sorted(TARGETS))
def case(request):
    return make_case(request.param)


def make_case(name: str):
    """A target, two networks, their random equivalents and canonical forms (cached)."""
    if name in _CASES:
        return _CASES[name]
    t = target(name)
    p = population(t, 2, seed=1)
    moved = jax.tree.map(
        np.asarray, canonical.random_symmetry(t, p, jax.random.key(3), permute=False)
    )
    both = jax.tree.map(lambda a, b: np.concatenate([a, b]), p, moved)
    canon = jax.tree.map(np.asarray, canonical.canonicalize(t, both))  # sliced on the host
    _CASES[name] = name, t, p, moved, canon
    return _CASES[name]


def test_symmetries_come_from_the_traced_computation(case):
    name, t, *_ = case
    syms = canonical.scale_symmetries(t)
    assert [(s.scale, s.sign) for s in syms] == EXPECTED[name]
    for s in syms:
        if s.scale:
            assert s.scale_anchors and set(s.scale_anchors) <= set(s.incoming)
        assert bool(s.reason) == (not (s.scale and s.sign))


def test_canonical_form_is_invariant_and_keeps_the_function(case):
    name, t, p, moved, canon = case
    x = np.random.default_rng(0).standard_normal((3, *t.input_shape)).astype(np.float32)
    nets = jax.tree.map(lambda *a: np.concatenate(a), p, moved, canon)
    ys = np.asarray(t.apply_population(nets, x)).reshape(4, 2, -1)
    scale = np.max(np.abs(ys[0]))
    for y in ys[1:]:  # rescaled, canonical of p, canonical of rescaled
        np.testing.assert_allclose(y, ys[0], atol=1e-5 * max(1.0, scale))
    # The symmetries did move the weights ...
    assert not close(p, moved, 1e-3)
    # ... and the canonical forms of both agree.
    first = jax.tree.map(lambda a: a[:2], canon)
    second = jax.tree.map(lambda a: a[2:], canon)
    assert close(first, second)


def test_canonical_units_have_unit_norm_and_positive_sum(case):
    _, t, _, _, canon = case
    index = {p: i for i, p in enumerate(t.paths)}
    leaves = [np.asarray(a[0]) for a in jax.tree.leaves(canon)]
    for s in canonical.scale_symmetries(t):
        for anchors, check in ((s.scale_anchors, "norm"), (s.sign_anchors, "sum")):
            if not anchors:
                continue
            a = np.concatenate(
                [symmetry.units_first(leaves[index[e[0]]], e).reshape(s.group.size, -1)
                 for e in anchors], axis=1,
            )  # fmt: skip
            if check == "norm":
                np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
            else:
                assert np.all(a.sum(axis=1) >= 0)


def test_gelu_and_silu_units_are_left_alone():
    _, t, p, moved, canon = make_case("mlp")
    syms = canonical.scale_symmetries(t)
    assert [s.activations for s in syms] == [("relu",), ("tanh",), ("gelu",), ("silu",)]
    # Their biases belong to their own units only: nothing may have rescaled them.
    for layer in ("c", "d"):
        np.testing.assert_array_equal(moved[layer]["bias"], p[layer]["bias"])
        np.testing.assert_array_equal(canon[layer]["bias"][:2], p[layer]["bias"])
    # The relu and tanh units did move.
    assert not np.allclose(moved["a"]["bias"], p["a"]["bias"])
    assert not np.allclose(moved["b"]["bias"], p["b"]["bias"])


def test_a_claim_the_function_refutes_is_dropped():
    """relu, then a norm without parameters: the activation says "scale", the numerical
    check says no (the norm mixes the units), and the units are left unchanged."""

    def apply(p, x):
        h = jax.nn.relu(x @ p["a"]["kernel"] + p["a"]["bias"][None])
        h = h / jnp.sqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-3)
        return h @ p["b"]["kernel"]

    template = {"a": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}}
    template["b"] = {"kernel": jnp.zeros((3, 2))}
    t = Target.from_function(apply, template, sample_input=jnp.zeros((2, 4)))
    (s,) = canonical.scale_symmetries(t)
    assert s.activations == ("relu",) and not s.scale and "changes the function" in s.reason
    p = population(t, 1, seed=0)
    assert close(canonical.canonicalize(t, p), p, 0.0)


def test_permutations_scales_and_signs_together_keep_the_function():
    """Through max and average pooling and a flatten (strided groups)."""
    _, t, p, _, _ = make_case("lenet")
    shuffled = jax.tree.map(np.asarray, canonical.random_symmetry(t, p, jax.random.key(4)))
    assert not close(p, shuffled, 1e-3)
    x = np.random.default_rng(0).standard_normal((3, *t.input_shape)).astype(np.float32)
    # four copies: the population size (and compiled apply) of the test above
    nets = jax.tree.map(lambda a, b: np.concatenate([a, b, a, b]), p, shuffled)
    y0, y1 = np.asarray(t.apply_population(nets, x))[:4].reshape(2, 2, -1)
    np.testing.assert_allclose(y1, y0, atol=1e-5 * max(1.0, np.max(np.abs(y0))))


def test_one_network_and_bad_ranges():
    t = target("mlp")
    p = population(t, 2, seed=2)
    one = jax.tree.map(lambda a: a[1], p)
    np.testing.assert_allclose(
        jax.tree.leaves(canonical.canonicalize(t, one))[0],
        jax.tree.leaves(canonical.canonicalize(t, p))[0][1],
        rtol=1e-6,
    )
    with pytest.raises(WeightspaceError, match="scale_range"):
        canonical.random_symmetry(t, p, jax.random.key(0), scale_range=(2.0, 0.5))
    assert any("scale=True" in line for line in canonical.describe_symmetries(t))
