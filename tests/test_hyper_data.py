"""Embedded datasets: offline, documented shapes, deterministic, labels in range."""

import dataclasses

import numpy as np
import pytest

from hyper import data


def _check(d, train, test, input_shape):
    assert d.x_train.shape == (train, *input_shape) and d.x_test.shape == (test, *input_shape)
    assert d.y_train.shape == (train,) and d.y_test.shape == (test,)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    assert d.num_classes == 10 and d.input_shape == input_shape
    for y in (d.y_train, d.y_test):
        assert y.min() >= 0 and y.max() < d.num_classes
        assert set(np.unique(y)) == set(range(10))
    assert np.isfinite(d.x_train).all() and np.isfinite(d.x_test).all()


def test_digits(digits):
    _check(digits, 1347, 450, (8, 8))
    assert digits.x_train.min() == 0.0 and digits.x_train.max() == 1.0
    # Stratified: 25% of each class (rounded) is in the test split.
    counts = np.bincount(np.concatenate([digits.y_train, digits.y_test]), minlength=10)
    np.testing.assert_array_equal(np.bincount(digits.y_test), np.round(0.25 * counts))
    again = data.build("digits")  # uncached: a second, independent build
    for a, b in zip(
        (digits.x_train, digits.y_train, digits.x_test, digits.y_test),
        (again.x_train, again.y_train, again.x_test, again.y_test),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_mnist1d_deterministic_and_leaves_global_rngs_alone(tmp_path, monkeypatch):
    import random

    d = data.load("mnist1d")
    _check(d, 4000, 1000, (40,))
    assert data.load("mnist1d") is d  # cached per process
    import mnist1d.data

    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path / "cache"))
    generate = mnist1d.data.make_dataset
    for build in ("generated", "read from disk", "regenerated over a broken file"):

        def refuse(args):
            raise AssertionError("generated again instead of read from the disk cache")

        monkeypatch.setattr(mnist1d.data, "make_dataset", refuse if "disk" in build else generate)
        np.random.seed(123)
        random.seed(123)
        np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
        again = data.build("mnist1d")  # not the per-process cache: a second build
        np.testing.assert_array_equal(np.random.get_state()[1], np_before, err_msg=build)
        assert random.getstate() == py_before, build
        for a, b in zip(dataclasses.astuple(again), dataclasses.astuple(d), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=build)
        (kept,) = (tmp_path / "cache").glob("mnist1d-*.npz")  # one file, no temporaries
        if build == "read from disk":
            kept.write_bytes(b"not an npz file")


def test_cached_arrays_are_read_only(digits):
    with pytest.raises(ValueError, match="read-only"):
        digits.x_train[0, 0, 0] = 5.0


def test_registry_errors_and_register():
    assert {"digits", "mnist1d"} <= set(data.available())
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        data.load("cifar")
    with pytest.raises(ValueError, match="non-empty string"):
        data.register("", lambda: None)
    x = np.zeros((4, 3), np.float32)
    y = np.arange(4, dtype=np.int32) % 2
    with pytest.raises(ValueError, match="3 train inputs for 4 labels"):
        data.Dataset("bad", x[:3], y, x, y, 2)
    with pytest.raises(ValueError, match=r"train inputs \(3,\), test inputs \(2,\)"):
        data.Dataset("bad", x, y, x[:, :2], y, 2)
    data.register("tiny", lambda: data.Dataset("tiny", x, y, x, y, 2))
    try:
        assert data.load("tiny").input_shape == (3,)
    finally:
        data.unregister("tiny")
    assert "tiny" not in data.available()


def test_split_validation_is_stratified_disjoint_and_deterministic(digits):
    train, (x_val, y_val) = data.split_validation(digits, 0.2)
    assert train.name == "digits-train80" and len(train.y_train) + len(y_val) == 1347
    np.testing.assert_array_equal(train.x_test, digits.x_test)
    per_class = np.bincount(digits.y_train, minlength=10)
    np.testing.assert_array_equal(np.bincount(y_val, minlength=10), np.round(0.2 * per_class))
    rows = {r.tobytes() for r in train.x_train}
    assert not any(r.tobytes() in rows for r in x_val)  # digits has no duplicate images
    again = data.split_validation(digits, 0.2)
    np.testing.assert_array_equal(again[1][1], y_val)
    np.testing.assert_array_equal(again[0].x_train, train.x_train)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(data.WeightspaceError, match="validation fraction"):
            data.split_validation(digits, bad)
