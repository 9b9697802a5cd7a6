"""Merging: TIES, PCB, task arithmetic and Fisher against NumPy references; bad input."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper import merge, symmetry
from hyper.architectures import make_target
from hyper.tree import flatten_dict
from hyper.zoo_presets import PRESETS
from tests.test_hyper_symmetry import random_params


def stack(*trees):
    return jax.tree.map(lambda *v: jnp.stack(v), *trees)


def flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in flatten_dict(tree).items()}


# --- NumPy references -------------------------------------------------------------------


def ties_reference(taus: np.ndarray, density: float) -> np.ndarray:
    n, d = taus.shape
    trimmed = np.zeros_like(taus)
    for i in range(n):
        if density >= 1:  # keep everything (the reference returns M unchanged for K >= 1)
            trimmed[i] = taus[i]
            continue
        k = d - int(d * density)
        thresh = np.sort(np.abs(taus[i]))[k - 1]
        trimmed[i] = np.where(np.abs(taus[i]) >= thresh, taus[i], 0)
    sign = np.sign(trimmed.sum(0))
    sign[sign == 0] = np.sign(sign.sum())
    out = np.zeros(d)
    for j in range(d):
        agree = [t for t in trimmed[:, j] if t != 0 and np.sign(t) == sign[j]]
        out[j] = np.mean(agree) if agree else 0.0
    return out


def pcb_reference(taus: np.ndarray, ratio: float) -> np.ndarray:
    n, d = taus.shape

    def clamp(x, lo_ratio, hi_ratio):
        s = np.sort(x, axis=1)
        lo = s[:, int(d * lo_ratio)][:, None]
        hi = s[:, int(d * (1 - hi_ratio) - 1)][:, None]
        return np.clip(x, lo, hi)

    def minmax(x):
        lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
        return (x - lo) / (hi - lo)

    mag = clamp(np.abs(taus), 1e-4, 1e-4)
    importance = np.exp(n * minmax(mag) ** 2) * np.tanh(taus * taus.sum(0, keepdims=True))
    w = minmax(clamp(importance, 1 - ratio, 0))
    return (np.sign(taus) * mag * w).sum(0) / np.maximum(w.sum(0), 1e-12)


# --- task-vector rules ------------------------------------------------------------------


def test_ties_on_hand_made_vectors():
    taus = np.array(
        [
            [1.0, -2.0, 0.5, 0.0, 3.0],
            [-1.5, -1.0, 0.2, 2.0, -0.1],
            [0.5, 1.0, -0.3, 1.0, 0.0],
        ],
        np.float32,
    )
    # Trim keeps |tau| >= the 2nd smallest magnitude per row; column 0 sums to 0 and takes
    # the majority sign (+); disjoint means of the agreeing entries.
    expected = [0.75, -1.5, 0.35, 1.5, 3.0]
    np.testing.assert_allclose(
        jax.jit(merge.ties_vectors, static_argnums=1)(taus, 0.6), expected, rtol=1e-6
    )
    np.testing.assert_allclose(ties_reference(taus, 0.6), expected, rtol=1e-6)


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_matches_reference(density):
    taus = np.random.default_rng(0).standard_normal((4, 40)).astype(np.float32)
    np.testing.assert_allclose(
        merge.ties_vectors(taus, density), ties_reference(taus, density), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("ratio", [0.1, 0.5])
def test_pcb_matches_reference(ratio):
    taus = np.random.default_rng(1).standard_normal((3, 200)).astype(np.float32)
    got = jax.jit(merge.pcb_vectors, static_argnums=1)(taus, ratio)
    np.testing.assert_allclose(got, pcb_reference(taus, ratio), rtol=1e-4, atol=1e-6)


def test_task_arithmetic_ties_pcb_on_networks(mlp_target):
    base = random_params(mlp_target, 0)
    members = stack(*(random_params(mlp_target, s) for s in (1, 2, 3)))
    fb, fm = flat(base), flat(members)
    merged = flat(merge.task_arithmetic(mlp_target, base, members, 0.3))
    for path, b in fb.items():
        np.testing.assert_allclose(
            merged[path], b + 0.3 * (fm[path] - b[None]).sum(0), rtol=1e-5, atol=1e-6
        )
    # A sequence of lams gives a population of merges; lam=0 is the base.
    sweep = merge.task_arithmetic(mlp_target, base, members, [0.0, 0.3])
    assert mlp_target.validate(sweep, batched=True) == 2
    for path, b in fb.items():
        np.testing.assert_allclose(flat(sweep)[path][0], b, atol=1e-6)
        np.testing.assert_allclose(flat(sweep)[path][1], merged[path], atol=1e-6)
    # TIES and PCB on networks = the vector rules on the flattened trainable leaves.
    taus = np.concatenate(
        [(fm[s.path] - fb[s.path][None]).reshape(3, -1) for s in mlp_target.spec], 1
    )
    base_row = np.concatenate([fb[s.path].reshape(-1) for s in mlp_target.spec])
    for fn, ref, kw in (
        (merge.ties_merge, ties_reference(taus, 0.2), {"density": 0.2}),
        (merge.pcb_merge, pcb_reference(taus, 0.1), {"ratio": 0.1}),
    ):
        out = flat(fn(mlp_target, base, members, lam=1.5, **kw))
        row = np.concatenate([out[s.path].reshape(-1) for s in mlp_target.spec])
        np.testing.assert_allclose(row, base_row + 1.5 * ref, rtol=1e-4, atol=1e-5)


def test_running_statistics_are_averaged(rescnn_target):
    base = random_params(rescnn_target, 0)
    members = stack(*(random_params(rescnn_target, s) for s in (1, 2)))
    out = flat(merge.task_arithmetic(rescnn_target, base, members, 0.5))
    fm = flat(members)
    for s in rescnn_target.spec:
        if not s.trainable:
            np.testing.assert_allclose(out[s.path], fm[s.path].mean(0), rtol=1e-6)


def test_low_rank_deltas(mlp_target):
    deltas = stack(*(random_params(mlp_target, s) for s in (1, 2)))
    exact = merge.low_rank(mlp_target, deltas, 64)
    chex.assert_trees_all_close(exact, deltas, rtol=1e-4, atol=1e-5)
    r1 = flat(merge.low_rank(mlp_target, deltas, 1))
    for s in mlp_target.spec:
        if s.role == "kernel":
            assert all(np.linalg.matrix_rank(m, tol=1e-4) == 1 for m in r1[s.path])
        else:
            np.testing.assert_array_equal(r1[s.path], flat(deltas)[s.path])
    base = random_params(mlp_target, 0)
    members = jax.tree.map(lambda b, d: b[None] + d, base, deltas)
    full = merge.task_arithmetic(mlp_target, base, members, 1.0, rank=64)
    plain = merge.task_arithmetic(mlp_target, base, members, 1.0)
    chex.assert_trees_all_close(full, plain, rtol=1e-4, atol=1e-4)


# --- Fisher -----------------------------------------------------------------------------


def test_fisher_weighting_matches_numpy(mlp_target):
    members = stack(*(random_params(mlp_target, s) for s in (1, 2, 3)))
    rng = np.random.default_rng(0)
    fishers = jax.tree.map(lambda v: jnp.asarray(rng.random(v.shape, np.float32)), members)
    fishers = jax.tree.map(lambda f: f.at[0].set(0.0), fishers)  # member 0: floored
    c = np.array([0.2, 0.3, 0.5])
    got = flat(merge.fisher_merge(mlp_target, members, fishers, coeffs=c))
    fm, ff = flat(members), flat(fishers)
    for path, theta in fm.items():
        w = c.reshape(-1, *[1] * (theta.ndim - 1)) * np.maximum(ff[path], 1e-6)
        np.testing.assert_allclose(got[path], (w * theta).sum(0) / w.sum(0), rtol=1e-4, atol=1e-7)
    # Equal Fishers: the plain (weighted) average.
    ones = jax.tree.map(jnp.ones_like, members)
    avg = flat(merge.fisher_merge(mlp_target, members, ones))
    for path, v in flat(merge.average(mlp_target, members)).items():
        np.testing.assert_allclose(avg[path], v, rtol=1e-5, atol=1e-6)


def test_diagonal_fisher_matches_per_example_gradients(mlp_target):
    members = stack(random_params(mlp_target, 1))
    params = jax.tree.map(lambda v: v[0], members)
    x = np.random.default_rng(2).standard_normal((3, 8, 8)).astype(np.float32)
    labels = np.array([1, 4, 7])

    def log_probs(p, xi):
        return jax.nn.log_softmax(mlp_target.pure_apply(p, xi[None])[0])

    jac = jax.jit(jax.jacrev(log_probs))
    exact_ref, emp_ref = {}, {}
    for i in range(3):
        g = flat(jac(params, x[i]))  # [classes, ...]
        prob = np.exp(np.asarray(log_probs(params, x[i])))
        for path, v in g.items():
            exact_ref[path] = exact_ref.get(path, 0) + np.tensordot(prob, v**2, axes=1) / 3
            emp_ref[path] = emp_ref.get(path, 0) + v[labels[i]] ** 2 / 3
    exact = flat(merge.diagonal_fisher(mlp_target, members, x, chunk_size=2))
    emp = flat(merge.diagonal_fisher(mlp_target, members, x, mode="empirical", labels=labels))
    # Per-member inputs (each model its own task data) give the same numbers.
    own = flat(merge.diagonal_fisher(mlp_target, members, x[None], per_target_inputs=True))
    for path in exact_ref:
        np.testing.assert_allclose(exact[path][0], exact_ref[path], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(emp[path][0], emp_ref[path], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(own[path], exact[path], rtol=1e-5, atol=1e-8)


# --- averaging and interpolation --------------------------------------------------------


def test_aligned_average_of_a_permuted_copy_is_the_network(mlp_target):
    a = random_params(mlp_target, 5)
    b = symmetry.permute(mlp_target, a, symmetry.random_permutations(mlp_target, jax.random.key(5)))
    members = stack(a, b)
    for u, v in zip(
        jax.tree.leaves(merge.aligned_average(mlp_target, members)),
        jax.tree.leaves(a),
        strict=True,
    ):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)
    plain = merge.average(mlp_target, members)
    assert not np.allclose(plain["layers"]["0"]["kernel"], a["layers"]["0"]["kernel"])


def test_interpolation_and_barrier(mlp_target):
    a, b = random_params(mlp_target, 0), random_params(mlp_target, 1)
    path = merge.interpolate(mlp_target, a, b, [0.0, 0.25, 1.0])
    np.testing.assert_allclose(path["layers"]["0"]["kernel"][0], a["layers"]["0"]["kernel"])
    np.testing.assert_allclose(path["layers"]["0"]["kernel"][2], b["layers"]["0"]["kernel"])
    mid = 0.75 * a["layers"]["1"]["bias"] + 0.25 * b["layers"]["1"]["bias"]
    np.testing.assert_allclose(path["layers"]["1"]["bias"][1], mid, rtol=1e-6)
    assert merge.loss_barrier([1.0, 2.0, 3.0]) == pytest.approx(0.0)
    assert merge.loss_barrier([1.0, 3.0, 1.0]) == pytest.approx(2.0)
    assert merge.loss_barrier([1.0, 1.0, 3.0], alphas=[0.0, 0.5, 1.0]) == pytest.approx(0.0)


# --- fusion of two transformers (digits-vit) -------------------------------------------


@pytest.fixture(scope="module")
def vit(digits):
    """The digits-vit preset, two random networks, a permuted copy of the first and an
    input batch."""
    cfg = {k: v for k, v in PRESETS["digits-vit"].arch.items() if k != "arch"}
    t = make_target("transformer", input_shape=(8, 8), **cfg)
    a, b = random_params(t, 0), random_params(t, 1)
    rng = np.random.default_rng(3)  # host permutations: no PRNG program to compile
    perms = [jnp.asarray(rng.permutation(g.size)) for g in symmetry.structural_groups(t)]
    return t, a, b, symmetry.permute(t, a, perms), jnp.asarray(digits.x_train[:64])


def _max_diff(u, v) -> float:
    return max(
        float(np.max(np.abs(np.asarray(p) - np.asarray(q))))
        for p, q in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True)
    )


def test_fuse_of_a_permuted_transformer_is_the_network(vit):
    """Weight and activation matching find the permutation of every group (residual
    stream, query/key and value/output head dims, MLP units) exactly; the Sinkhorn plan
    is nearly hard; averaging without alignment is far off."""
    t, a, _, pa, x = vit
    groups = symmetry.structural_groups(t)
    residual = [g for g in groups if ("blocks/1/mlp2/kernel", 1) in g.axes]
    assert len(residual) == 1 and ("blocks/0/attn/out/kernel", 2) in residual[0].axes
    assert sorted(g.size for g in groups if g.size > 2) == [16, 16, 16, 16, 32, 64, 64]
    for method in ("weight", "activation"):
        fused = merge.fuse(t, a, pa, method=method, x=x)
        for u, v in zip(jax.tree.leaves(fused), jax.tree.leaves(a), strict=True):
            np.testing.assert_array_equal(u, v)
    assert _max_diff(merge.fuse(t, a, pa, method="sinkhorn", weight=0.5), a) < 1e-2
    assert _max_diff(merge.fuse(t, a, pa, method="none"), a) > 0.3


def test_fuse_each_method(vit, digits):
    """Every method returns a network of the target (weight 0: `a` itself); hard
    alignments keep `b`'s function (weight 1); the fused networks' accuracy is finite."""
    t, a, b, _, x = vit
    xt = jnp.asarray(digits.x_test[:200])
    logits_b = np.asarray(t.apply(b, xt))
    for method in merge.FUSE_METHODS:
        x_m = x if method in ("activation", "sinkhorn") else None
        fused = merge.fuse(t, a, b, method=method, x=x_m)
        t.validate(fused)
        assert [u.dtype for u in jax.tree.leaves(fused)] == [s.dtype for s in t.spec]
        logits = np.asarray(t.apply(fused, xt))
        acc = np.mean(np.argmax(logits, -1) == digits.y_test[:200])
        assert np.isfinite(logits).all() and 0 <= acc <= 1
        assert _max_diff(fused, a) > 0.1  # b contributes
        if method in ("weight", "activation", "none"):
            b_aligned = merge.fuse(t, a, b, method=method, x=x_m, weight=1.0)
            np.testing.assert_allclose(t.apply(b_aligned, xt), logits_b, rtol=1e-4, atol=1e-4)
    zero = merge.fuse(t, a, b, method="sinkhorn", weight=0.0)
    assert _max_diff(zero, a) == 0.0


def test_fuse_bad_inputs(vit, mlp_target):
    t, a, b, _, x = vit
    with pytest.raises(ValueError, match=r"unknown method 'ot'.*'weight', 'activation'"):
        merge.fuse(t, a, b, method="ot")
    with pytest.raises(ValueError, match="method='activation' needs an input batch x"):
        merge.fuse(t, a, b, method="activation")
    for w in (1.5, -0.1, "half", True, float("nan"), [0.5]):
        with pytest.raises(ValueError, match="weight must be a number in"):
            merge.fuse(t, a, b, weight=w)
    with pytest.raises(ValueError, match=r"fuse: params_b: .*'blocks/0/attn/key/bias'"):
        merge.fuse(t, a, random_params(mlp_target, 0))
    with pytest.raises(ValueError, match=r"inputs have shape \(64, 64\)"):
        merge.fuse(t, a, b, method="activation", x=x.reshape(64, 64))


# --- bad input --------------------------------------------------------------------------


def test_bad_inputs(mlp_target):
    base = random_params(mlp_target, 0)
    members = stack(base, base)
    other = make_target("mlp", input_shape=(8, 8), widths=(8,), out_features=10)
    others = stack(random_params(other, 0), random_params(other, 1))
    with pytest.raises(ValueError, match=r"task_arithmetic: population: .*'layers/0/bias'"):
        merge.task_arithmetic(mlp_target, base, others)
    with pytest.raises(ValueError, match=r"ties_merge: base: .*'layers/0/bias'"):
        merge.ties_merge(mlp_target, random_params(other, 0), members)
    with pytest.raises(ValueError, match=r"average: population"):
        merge.average(mlp_target, others)
    with pytest.raises(ValueError, match="1 Fishers for 2 networks"):
        merge.fisher_merge(mlp_target, members, stack(base))
    with pytest.raises(ValueError, match="lam must be"):
        merge.task_arithmetic(mlp_target, base, members, float("nan"))
    with pytest.raises(ValueError, match="density"):
        merge.ties_merge(mlp_target, base, members, density=0.0)
    with pytest.raises(ValueError, match="ratio"):
        merge.pcb_merge(mlp_target, base, members, ratio=1.5)
    with pytest.raises(ValueError, match="rank"):
        merge.task_arithmetic(mlp_target, base, members, rank=0)
    with pytest.raises(ValueError, match="unknown mode"):
        merge.diagonal_fisher(mlp_target, members, np.zeros((2, 8, 8)), mode="true")
    with pytest.raises(ValueError, match="weights must be 2"):
        merge.average(mlp_target, members, weights=[1.0])
