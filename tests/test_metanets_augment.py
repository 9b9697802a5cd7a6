"""metanets.augment: random equivalent networks and canonical forms of weight datasets."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from hyper import symmetry
from hyper.architectures import make_target
from hyper.errors import WeightspaceError
from metanets.augment import augment_dataset, canonicalize_dataset, random_equivalents
from metanets.datasets import WeightDataset


@pytest.fixture(scope="module")
def ds():
    """Two groups (relu and tanh MLPs), 3 networks each, every leaf varying per unit."""
    rng = np.random.default_rng(0)
    targets, pops = [], []
    for act in ("relu", "tanh"):
        t = make_target("mlp", input_shape=(5,), widths=(4,), out_features=2, activation=act)
        members = [symmetry.scrambled_params(t, rng) for _ in range(3)]
        targets.append(t)
        pops.append(
            jax.tree.unflatten(t.treedef, [np.stack(m) for m in zip(*members, strict=True)])
        )
    group = np.repeat(np.arange(2, dtype=np.int32), 3)
    return WeightDataset(
        targets=targets,
        populations=pops,
        group=group,
        member=np.tile(np.arange(3, dtype=np.int32), 2),
        y=np.linspace(0, 1, 6, dtype=np.float32),
        run=np.arange(6),
        epoch=np.ones(6, np.int32),
    )


def outputs(ds: WeightDataset, x: np.ndarray) -> np.ndarray:
    """`[M, batch, out]`: every sample's outputs on `x`."""
    per = [
        np.asarray(t.apply_population(p, x))
        for t, p in zip(ds.targets, ds.populations, strict=True)
    ]
    return np.stack([per[g][m] for g, m in zip(ds.group, ds.member, strict=True)])


def test_augmented_copies_keep_labels_runs_and_function(ds):
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    train = np.array([0, 4, 5])
    aug, extra = augment_dataset(ds, jax.random.key(0), copies=2, samples=train)
    assert len(aug) == len(ds) + 6 and list(extra) == list(range(6, 12))
    copied = np.tile(train, 2)
    for field in ("y", "run", "epoch", "group"):
        np.testing.assert_array_equal(getattr(aug, field)[extra], getattr(ds, field)[copied])
    ys, ya = outputs(ds, x), outputs(aug, x)
    np.testing.assert_array_equal(ya[: len(ds)], ys)  # the originals are untouched
    np.testing.assert_allclose(ya[extra], ys[copied], atol=1e-5)
    # ... while the weights of the copies moved.
    g, m = aug.group[extra[1]], aug.member[extra[1]]
    w = [np.asarray(a) for a in jax.tree.leaves(aug.populations[g])]
    assert not all(np.allclose(a[m], a[ds.member[4]]) for a in w)
    with pytest.raises(WeightspaceError, match="copies"):
        augment_dataset(ds, jax.random.key(0), copies=0)


def test_canonical_dataset_is_invariant_under_rescaling_and_sign_flips(ds):
    moved = random_equivalents(ds, jax.random.key(1), permute=False)
    a, b = canonicalize_dataset(ds), canonicalize_dataset(moved)
    for pa, pb in zip(a.populations, b.populations, strict=True):
        for u, v in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
            np.testing.assert_allclose(u, v, atol=1e-5)
    for pm, p in zip(moved.populations, ds.populations, strict=True):  # the draw moved them
        assert not all(
            np.allclose(u, v) for u, v in zip(jax.tree.leaves(pm), jax.tree.leaves(p), strict=True)
        )


def test_fit_canonicalizes_and_augments_as_configured(ds, tmp_path):
    """`predict.fit(canonicalize=True)` predicts the same for rescaled and sign-flipped
    networks (and keeps the option when saved); ``augment=2`` trains on three times the
    samples."""
    from metanets import predict

    kw = dict(epochs=2, eval_every=1, hidden=8, depth=1, batch_size=8, val_fraction=0.4)
    train = np.arange(len(ds))
    pred = predict.fit("statnn_mlp", ds, train, canonicalize=True, augment=2, **kw)
    plain = predict.fit("statnn_mlp", ds, train, **kw)
    assert pred.config["canonicalize"] is True and pred.config["augment"] == 2
    assert pred.stats["train_samples"] == 3 * plain.stats["train_samples"] > 0
    moved = random_equivalents(ds, jax.random.key(2), permute=False)
    y = pred.predict(ds)
    np.testing.assert_allclose(pred.predict(moved), y, rtol=1e-4, atol=1e-5)
    assert not np.allclose(plain.predict(moved), plain.predict(ds), rtol=1e-4, atol=1e-5)
    again = predict.load_predictor(predict.save_predictor(pred, tmp_path / "p"))
    assert again.config["canonicalize"] is True
    np.testing.assert_allclose(again.predict(moved), y, rtol=1e-4, atol=1e-5)
    with pytest.raises(WeightspaceError, match="augment"):
        predict.fit("statnn_mlp", ds, train, augment=-1, **kw)
