"""The one jaxpr evaluator: it computes what `jax.core.eval_jaxpr` computes, its hooks see and
replace every equation, and its call rule (`INLINE_CALLS`) is the only walker in the tree."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper import jaxpr as jaxpr_lib


@jax.custom_vjp
def _clip_grad(x):
    return jnp.sin(x)


def _clip_fwd(x):
    return jnp.sin(x), x


def _clip_bwd(x, g):
    return (jnp.clip(g * jnp.cos(x), -0.1, 0.1),)


_clip_grad.defvjp(_clip_fwd, _clip_bwd)


@jax.jit
def _inner(w, x):
    return jax.nn.relu(x @ w) + jnp.float32(1.0)


def _nested(w, x):
    h = _inner(w, x)  # pjit containing a custom_jvp (relu)
    h = jax.checkpoint(lambda a: jnp.tanh(a) * 2.0)(h)
    h = _clip_grad(h)
    return jax.jit(lambda a: jax.nn.gelu(a, approximate=False).sum(0))(h)


def _loop(w, x):
    def body(c, xi):
        return c + jnp.tanh(xi @ w).sum(), None

    c, _ = jax.lax.scan(body, jnp.float32(0), x[None])
    return jax.lax.cond(c > 0, lambda: c * 2, lambda: c - 1)


FUNCTIONS = {"nested": _nested, "loop": _loop, "plain": lambda w, x: jnp.exp(x @ w).mean()}


def _args():
    rng = np.random.default_rng(0)
    return (
        jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
        jnp.asarray(rng.standard_normal((5, 3)), jnp.float32),
    )


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_evaluate_equals_eval_jaxpr(name):
    fn, args = FUNCTIONS[name], _args()
    closed = jax.make_jaxpr(fn)(*args)
    want = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *args)
    for differentiable in (False, True):
        got = jaxpr_lib.evaluate(closed, args, differentiable=differentiable)
        for a, b in zip(want, got, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    jitted = jax.jit(lambda *a: jaxpr_lib.evaluate(closed, a))(*args)
    np.testing.assert_allclose(np.asarray(jitted[0]), np.asarray(want[0]), rtol=1e-5)


def test_calls_are_inlined_by_the_one_list():
    closed = jax.make_jaxpr(_nested)(*_args())
    called = [s.eqn.primitive.name for s in jaxpr_lib.steps(closed) if s.kind == "call"]
    assert set(called) <= jaxpr_lib.INLINE_CALLS
    assert {"jit", "custom_jvp_call", "custom_vjp_call"} <= set(called)
    assert {"remat2", "checkpoint", "remat"} & set(called)  # jax.checkpoint
    primitives = {s.eqn.primitive.name for s in jaxpr_lib.steps(closed) if s.kind == "eqn"}
    assert not primitives & jaxpr_lib.INLINE_CALLS  # every call was walked into
    plain = [s for s in jaxpr_lib.steps(closed, differentiable=True) if s.kind == "call"]
    assert {s.eqn.primitive.name for s in plain} <= jaxpr_lib.PLAIN_CALLS
    # loops and branches are single opaque steps; all_eqns still sees inside them
    loop = jax.make_jaxpr(_loop)(*_args())
    names = {s.eqn.primitive.name for s in jaxpr_lib.steps(loop)}
    assert {"scan", "cond"} <= names and "tanh" not in names
    assert "tanh" in {e.primitive.name for e in jaxpr_lib.all_eqns(loop)}


def test_record_sees_every_intermediate():
    args = _args()
    closed = jax.make_jaxpr(_nested)(*args)
    seen = []

    def record(step, invals, outvals):
        seen.append((step, outvals))

    jaxpr_lib.evaluate(closed, args, record=record)

    def where(steps):
        return [(s.kind, s.scope, s.index, s.eqn) for s in steps]

    assert where(s for s, _ in seen) == where(jaxpr_lib.steps(closed))
    # the matmul inside the jitted inner function is recorded with its value
    (dot,) = [o for s, o in seen if s.kind == "eqn" and s.eqn.primitive.name == "dot_general"]
    np.testing.assert_allclose(np.asarray(dot[0]), np.asarray(args[1] @ args[0]), rtol=1e-6)
    calls = [(s, o) for s, o in seen if s.kind == "call"]
    assert calls and all(o is None for _, o in calls)
    assert all(len(s.inner) == len(s.scope) + 1 for s, _ in calls)


def test_replace_substitutes_an_equation():
    args = _args()
    closed = jax.make_jaxpr(_nested)(*args)

    def tanh_to_sin(eqn, invals):
        return [jnp.sin(invals[0])] if eqn.primitive.name == "tanh" else None

    def with_sin(w, x):
        h = jax.nn.relu(x @ w) + 1.0
        return jax.nn.gelu(_clip_grad(jnp.sin(h) * 2.0), approximate=False).sum(0)

    got = jaxpr_lib.evaluate(closed, args, replace=tanh_to_sin)[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(with_sin(*args)), rtol=1e-5)


def test_differentiable_evaluation_keeps_custom_derivatives():
    args = _args()
    closed = jax.make_jaxpr(_nested)(*args)

    def loss(w):
        return jaxpr_lib.evaluate(closed, (w, args[1]), differentiable=True)[0].sum()

    want = jax.grad(lambda w: _nested(w, args[1]).sum())(args[0])
    np.testing.assert_allclose(np.asarray(jax.grad(loss)(args[0])), np.asarray(want), rtol=1e-5)


def test_first_use_walks_into_calls():
    def fn(params):
        a, b, c, unused = params
        h = jax.jit(lambda x, w: jnp.tanh(x @ w))(jnp.ones((2, 3)), b)
        return jax.nn.relu(h @ c) * a.sum()

    leaves = [jnp.ones(4), jnp.ones((3, 5)), jnp.ones((5, 2)), jnp.ones(1)]
    first = jaxpr_lib.first_use(jax.make_jaxpr(fn)(leaves))
    assert first[1] < first[2] < first[0] and first[3] == 10**9


def test_only_hyper_jaxpr_walks_equations():
    """One walker: no other module of the packages iterates a jaxpr's equations."""
    root = pathlib.Path(__file__).resolve().parents[1]
    offenders = [
        str(p.relative_to(root))
        for pkg in ("hyper", "metanets", "generators")
        for p in (root / pkg).rglob("*.py")
        if re.search(r"\.eqns\b", p.read_text()) and p.name != "jaxpr.py"
    ]
    assert offenders == []
