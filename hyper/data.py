"""Embedded datasets, offline and deterministic.

- ``"digits"``: scikit-learn's 8x8 digits (1,797 images, 10 classes), pixels scaled to
  [0, 1], a fixed stratified split (1,347 train / 450 test by default).
- ``"mnist1d"``: MNIST-1D generated locally with ``mnist1d.data.make_dataset`` and its
  default arguments (4,000 train / 1,000 test signals of length 40, 10 classes).

Nothing is downloaded. `load(name)` caches each dataset per process; the generated
MNIST-1D arrays are also kept on disk (``$WEIGHTSPACE_CACHE``, default
``~/.cache/weightspace``) so other processes skip the 2 s of generation.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hyper.errors import WeightspaceError

__all__ = ["Dataset", "available", "build", "load", "register", "split_validation", "unregister"]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset split into train and test (numpy, float32 inputs).

    Attributes:
      name: registry name.
      x_train: `[n_train, *input_shape]` float32.
      y_train: `[n_train]` int32 labels in `[0, num_classes)`.
      x_test, y_test: the test split, same layout.
      num_classes: number of classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self):
        n_tr, n_te = len(self.x_train), len(self.x_test)
        if len(self.y_train) != n_tr or len(self.y_test) != n_te:
            raise WeightspaceError(
                f"Dataset {self.name!r}: {n_tr} train inputs for {len(self.y_train)} labels, "
                f"{n_te} test inputs for {len(self.y_test)} labels"
            )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise WeightspaceError(
                f"Dataset {self.name!r}: train inputs {self.x_train.shape[1:]}, "
                f"test inputs {self.x_test.shape[1:]}"
            )
        # `load` caches one Dataset per process: freeze the arrays so no caller can edit it.
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            if isinstance(a, np.ndarray):
                a.flags.writeable = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"classes={self.num_classes})"
        )


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8)
    y = y.astype(np.int32)
    # Deterministic stratified split: 25% of each class to test, chosen by a fixed permutation.
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), bool)
    for c in range(10):
        idx = np.nonzero(y == c)[0]
        idx = rng.permutation(idx)
        test[idx[: round(0.25 * len(idx))]] = True
    return Dataset("digits", x[~test], y[~test], x[test], y[test], 10)


def _cache_dir() -> Path:
    """Where generated datasets are kept between processes: ``$WEIGHTSPACE_CACHE``, else
    ``$XDG_CACHE_HOME/weightspace`` (default ``~/.cache/weightspace``)."""
    if os.environ.get("WEIGHTSPACE_CACHE"):
        return Path(os.environ["WEIGHTSPACE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "weightspace"


def _mnist1d() -> Dataset:
    from importlib.metadata import version

    # Generating takes about 2 s, and importing the generator 1 s more: the arrays are kept
    # on disk, under a name that changes with the generator's version (its default
    # arguments belong to it). A cache that cannot be read or written is regenerated or
    # skipped, never an error.
    keys = ("x", "y", "x_test", "y_test")
    tag = f"mnist1d {version('mnist1d')}: make_dataset(get_dataset_args())"
    path = _cache_dir() / f"mnist1d-{hashlib.sha256(tag.encode()).hexdigest()[:16]}.npz"
    try:
        with np.load(path) as f:
            d = {k: f[k] for k in keys}
    except (OSError, KeyError, ValueError):
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()  # defaults: 5,000 samples, 80% train, seed 42
        # make_dataset reseeds the global `random` and `np.random` generators; restore them.
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            d = make_dataset(args)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, **{k: np.asarray(d[k]) for k in keys})
            os.replace(tmp, path)  # atomic: concurrent processes never read half a file
        except OSError:
            pass
    return Dataset(
        "mnist1d",
        np.asarray(d["x"], np.float32),
        np.asarray(d["y"], np.int32),
        np.asarray(d["x_test"], np.float32),
        np.asarray(d["y_test"], np.int32),
        10,
    )


_REGISTRY: dict[str, Callable[[], Dataset]] = {"digits": _digits, "mnist1d": _mnist1d}


def register(name: str, factory: Callable[[], Dataset]) -> None:
    """Adds a dataset factory to the registry (must be offline and deterministic)."""
    if not name or not isinstance(name, str):
        raise WeightspaceError(f"dataset name must be a non-empty string, got {name!r}")
    _REGISTRY[name] = factory
    load.cache_clear()


def unregister(name: str) -> None:
    """Removes a dataset registered under `name` (and forgets its cached copy)."""
    if name not in _REGISTRY:
        raise WeightspaceError(f"unknown dataset {name!r}; available: {available()}")
    del _REGISTRY[name]
    load.cache_clear()


def split_validation(
    data: Dataset, fraction: float = 0.2, *, seed: int = 0
) -> tuple[Dataset, tuple[np.ndarray, np.ndarray]]:
    """Holds a stratified, deterministic `fraction` of each class of `data`'s training split
    out as a validation split.

    Returns:
      The dataset on the rest of the training split (named ``<name>-train<percent>``, the
      same test split) and the validation ``(x, y)``.

    Raises:
      WeightspaceError: `fraction` outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise WeightspaceError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val = np.zeros(len(data.y_train), bool)
    for c in range(data.num_classes):
        idx = rng.permutation(np.nonzero(data.y_train == c)[0])
        val[idx[: round(fraction * len(idx))]] = True
    train = Dataset(
        f"{data.name}-train{round(100 * (1 - fraction))}",
        np.array(data.x_train[~val]),
        np.array(data.y_train[~val]),
        np.array(data.x_test),
        np.array(data.y_test),
        data.num_classes,
    )
    return train, (np.array(data.x_train[val]), np.array(data.y_train[val]))


def available() -> list[str]:
    """The names of the registered datasets, sorted."""
    return sorted(_REGISTRY)


def build(name: str) -> Dataset:
    """The dataset registered under `name`, built anew (`load` keeps one copy per process)."""
    if name not in _REGISTRY:
        raise WeightspaceError(f"unknown dataset {name!r}; available: {available()}")
    return _REGISTRY[name]()


@functools.cache
def load(name: str) -> Dataset:
    """The dataset registered under `name` (``"digits"``, ``"mnist1d"``, ...), built once per
    process."""
    return build(name)
