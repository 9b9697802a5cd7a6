"""Novelty metrics and memorization baselines (`generators.novelty`), and the zoo's
class-subset axis (`hyper.zoo_tasks`), on hand-computed cases and tiny networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from generators import novelty as nv
from hyper import architectures, data, symmetry, zoo
from hyper import population as pop
from hyper.errors import WeightspaceError


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def target():
    return architectures.make_target("mlp", input_shape=(8, 8), widths=(6,), out_features=10)


@pytest.fixture(scope="module")
def training(target):
    keys = jax.random.split(jax.random.key(0), 6)
    return pop.stack([target.init(k) for k in keys])


# --- IoU, max similarity, diversity ---------------------------------------------------


def test_iou_matrix_hand_computed_and_both_empty_is_one():
    a = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    b = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], bool)
    want = np.array([[1 / 3, 0.0], [0.0, 1.0], [2 / 4, 0.0]])
    np.testing.assert_allclose(nv.iou_matrix(a, b), want)
    with pytest.raises(WeightspaceError, match="masks"):
        nv.iou_matrix(a, b[:, :3])


def test_max_similarity_and_diversity_hand_computed():
    gen = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)
    train = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1]], bool)
    # gen 0: IoU 1/2, 2/3, 0 -> 2/3; gen 1: 0, 1/4, 1 -> 1
    np.testing.assert_allclose(nv.max_similarity(gen, train), [2 / 3, 1.0])
    # train vs itself without the diagonal: IoU(t0, t1) = 1/3, (t0, t2) = 0, (t1, t2) = 1/4
    own = nv.max_similarity(train, train, exclude_self=True)
    np.testing.assert_allclose(own, [1 / 3, 1 / 3, 1 / 4])
    assert nv.diversity(gen) == 0.0
    np.testing.assert_allclose(nv.diversity(train), (1 / 3 + 0 + 1 / 4) / 3)


def test_summary_and_frontier():
    wrong = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], bool)
    row = nv.summary([0.75, 0.74], wrong, [0.75, 0.70, 0.76], wrong[:1], nn_l2=[1.0, 3.0])
    assert row["best_acc"] == 0.75 and row["median_nn_l2"] == 2.0
    assert row["frac_within_1pt_of_training_median"] == 1.0
    assert row["median_max_iou"] == 0.5 and row["diversity"] == 0.0
    assert nv.frontier_at([0.9, 0.5, 0.7], [0.8, 0.2, 0.4], 0.8) == pytest.approx(0.6)
    assert nv.frontier_at([0.9, 0.5], [0.8, 0.2], 0.95) is None


# --- evaluation ---------------------------------------------------------------------------


def test_evaluate_matches_the_population_evaluation_and_masks(target, training, digits):
    x, y = digits.x_test[:100], digits.y_test[:100]
    acc, wrong = nv.evaluate(target, training, x, y, chunk=4)  # 6 members: a padded chunk
    logits = np.asarray(target.apply_population(training, jnp.asarray(x)))
    np.testing.assert_array_equal(wrong, logits.argmax(-1) != y[None])
    np.testing.assert_allclose(acc, (logits.argmax(-1) == y[None]).mean(1), atol=1e-6)
    # task networks: argmax over the prompted classes, on their examples only
    mask = np.zeros((6, 10), bool)
    mask[:, [0, 3, 7]] = True
    mask[5] = True
    acc_t, wrong_t = nv.evaluate(target, training, x, y, class_mask=mask)
    sub = np.isin(y, [0, 3, 7])
    masked = np.where(mask[0][None, None], logits, -np.inf)
    want = (masked.argmax(-1) == y[None])[:, sub].mean(1)
    np.testing.assert_allclose(acc_t[:5], want[:5], atol=1e-6)
    assert acc_t[5] == pytest.approx(acc[5])
    assert not wrong_t[0, ~sub].any()


# --- nearest neighbour under permutations ------------------------------------------------


def test_nn_l2_of_permuted_copies_is_zero(target, training):
    groups = symmetry.structural_groups(target)
    perms = [
        jnp.stack([jax.random.permutation(jax.random.key(i), g.size) for i in (1, 2)])
        for g in groups
    ]
    copies = symmetry.permute(target, pop.take(training, np.array([2, 4])), perms, batched=True)
    raw = pop.flatten(target, copies) - pop.flatten(target, pop.take(training, np.array([2, 4])))
    assert float(jnp.abs(raw).max()) > 0.1  # the permutation did move the weights
    other = jax.tree.map(lambda v: v[:1] + 0.5, training)
    gen = pop.concatenate([copies, other])
    d = nv.nearest_neighbour_l2(target, gen, training, candidates=2)
    np.testing.assert_allclose(d[:2], 0.0, atol=1e-5)
    assert d[2] > 1.0


# --- baselines ----------------------------------------------------------------------------


def test_noise_baseline_scale_and_shapes(target, training):
    same = jax.tree.map(lambda v: jnp.broadcast_to(v[:1], v.shape), training)
    out = nv.noise_baseline(jax.random.key(3), target, same, 40, 0.06)
    assert jax.tree.map(jnp.shape, out) == jax.tree.map(lambda v: (40, *v.shape[1:]), training)
    for o, v in zip(jax.tree.leaves(out), jax.tree.leaves(same), strict=True):
        delta = np.asarray(o) - np.asarray(v[:1])
        assert delta.std() == pytest.approx(0.06, rel=0.1)  # absolute: the same in every leaf
    rms = nv.noise_baseline(jax.random.key(3), target, same, 40, 0.5, scale="rms")
    kernel = np.asarray(same["layers"]["0"]["kernel"])
    delta = np.asarray(rms["layers"]["0"]["kernel"]) - kernel[:1]
    assert delta.std() == pytest.approx(0.5 * np.sqrt(np.mean(kernel**2)), rel=0.05)
    with pytest.raises(WeightspaceError, match="scale"):
        nv.noise_baseline(jax.random.key(3), target, same, 4, 0.06, scale="layer")


def test_average_and_gaussian_baselines(training):
    avg = nv.average_baseline(jax.random.key(4), training, 3, k=6)  # k = all: the mean
    for a, v in zip(jax.tree.leaves(avg), jax.tree.leaves(training), strict=True):
        assert a.shape == (3, *v.shape[1:])
        np.testing.assert_allclose(a, np.broadcast_to(np.mean(v, 0), a.shape), atol=1e-6)
    with pytest.raises(WeightspaceError, match="k must be"):
        nv.average_baseline(jax.random.key(4), training, 3, k=7)
    g = nv.gaussian_baseline(jax.random.key(5), training, 4000)
    v, s = np.asarray(training["layers"]["0"]["kernel"]), np.asarray(g["layers"]["0"]["kernel"])
    assert s.shape == (4000, *v.shape[1:])
    np.testing.assert_allclose(s.mean(0), v.mean(0), atol=0.1 * v.std())
    np.testing.assert_allclose(s.std(0), v.std(0, ddof=1), rtol=0.1)


# --- the zoo's class-subset axis ----------------------------------------------------------


def test_class_subset_zoo_records_classes_and_scores_prompted_classes(tmp_path, digits):
    z = zoo.build(
        tmp_path / "z",
        preset="digits-mlp",
        grid={
            "learning_rate": [3e-2],
            "weight_decay": [0.0],
            "init_scale": [1.0],
            "train_fraction": [1.0],
            "activation": ["relu"],
            "classes": [[7, 0, 3], [1, 2]],
        },
        seeds=[0],
        epochs=1,
        checkpoint_epochs=[1],
        batch_size=256,
        arch={"arch": "mlp", "widths": [6], "out_features": 10},
        progress=False,
    )
    rows = z.rows()
    assert [r["classes"] for r in rows] == [[0, 3, 7], [1, 2]]
    (g,) = z.groups
    logits = np.asarray(g.target.apply_population(g.params, jnp.asarray(digits.x_test)))
    for i, r in enumerate(rows):
        sub = np.isin(digits.y_test, r["classes"])
        masked = np.full_like(logits[i], -np.inf)
        masked[:, r["classes"]] = logits[i][:, r["classes"]]
        want = (masked.argmax(-1) == digits.y_test)[sub].mean()
        assert r["test_acc"] == pytest.approx(want, abs=1e-6)
        assert r["test_acc"] > 1.5 / len(r["classes"])  # trained on those classes: above chance


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        ("0,1", "non-empty list of class subsets"),
        ([[]], "non-empty list of class ids"),
        ([[0, 0]], "repeats"),
        ([[0, 1], [1, 0]], "given twice"),
        ([[0, 1.5]], "non-integer"),
        ([[-1]], "negative"),
        ([[3, 10]], "class ids \\[10\\]"),
    ],
)
def test_class_subset_grid_errors(tmp_path, classes, match):
    with pytest.raises(WeightspaceError, match=match):
        zoo.build(
            tmp_path / "z",
            preset="digits-mlp",
            grid={"classes": classes},
            seeds=1,
            epochs=0,
            progress=False,
        )
    assert not (tmp_path / "z").exists()
