"""Symmetry augmentation and canonical forms for weight datasets.

The networks of a `WeightDataset` keep their function (and so their label) under
hidden-unit permutations, positive rescalings of positively homogeneous units and sign flips
of odd units (`hyper.canonical`). This module applies those maps to every population of a
dataset:

- `random_equivalents`: every network replaced by a random equivalent one (a fresh draw
  per call: call it once per epoch for on-line augmentation);
- `augment_dataset`: `copies` random equivalents of chosen samples appended to the dataset
  (same label, run and epoch, so `split_by_run` keeps them with their originals), for any
  `metanets.predict.fit` model;
- `canonicalize_dataset`: every network in its canonical scale and sign
  (`hyper.canonical.canonicalize`), a preprocessing step before features or graphs.

One compiled call per group of the dataset; nothing loops over networks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from hyper import canonical
from hyper.errors import WeightspaceError
from metanets.datasets import WeightDataset

__all__ = ["augment_dataset", "canonicalize_dataset", "random_equivalents"]


def canonicalize_dataset(
    ds: WeightDataset, *, scale: bool = True, sign: bool = True
) -> WeightDataset:
    """`ds` with every network in canonical form (`hyper.canonical.canonicalize`): each
    hidden unit's incoming weights of norm 1 (positively homogeneous units) and of
    non-negative sum (odd units). Labels, runs and indices are unchanged."""
    pops = [
        canonical.canonicalize(t, p, scale=scale, sign=sign, batched=True)
        for t, p in zip(ds.targets, ds.populations, strict=True)
    ]
    return dataclasses.replace(ds, populations=pops)


def random_equivalents(
    ds: WeightDataset,
    key: jax.Array,
    *,
    permute: bool = True,
    scale: bool = True,
    sign: bool = True,
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> WeightDataset:
    """`ds` with every network replaced by a random network computing the same function
    (`hyper.canonical.random_symmetry`, independent draws per network)."""
    keys = jax.random.split(key, max(len(ds.targets), 1))
    pops = [
        canonical.random_symmetry(
            t, p, k, permute=permute, scale=scale, sign=sign, scale_range=scale_range,
            batched=True,
        )
        for t, p, k in zip(ds.targets, ds.populations, keys, strict=False)
    ]  # fmt: skip
    return dataclasses.replace(ds, populations=pops)


def augment_dataset(
    ds: WeightDataset,
    key: jax.Array,
    *,
    copies: int = 1,
    samples: Sequence[int] | None = None,
    permute: bool = True,
    scale: bool = True,
    sign: bool = True,
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> tuple[WeightDataset, np.ndarray]:
    """`ds` with `copies` random equivalents of each of `samples` appended.

    Samples ``0 .. len(ds) - 1`` are the originals, unchanged; the appended ones carry the
    label, run and epoch of the sample they copy. Typical use: augment the training
    samples only, ``aug, extra = augment_dataset(ds, key, samples=train)``, then fit on
    ``np.concatenate([train, extra])`` and evaluate on the untouched test indices.

    Args:
      ds: the dataset.
      key: a `jax.random` key.
      copies: random equivalents per sample (>= 1).
      samples: the samples to copy (default: all).
      permute / scale / sign / scale_range: as in `hyper.canonical.random_symmetry`.

    Returns:
      ``(augmented dataset, indices of the appended samples)``, the indices ordered copy
      by copy (copy ``k`` of ``samples[j]`` is ``len(ds) + k * len(samples) + j``).

    Raises:
      WeightspaceError: `copies` < 1 or a sample index out of range.
    """
    if int(copies) < 1:
        raise WeightspaceError(f"augment_dataset: copies must be >= 1, got {copies}")
    samples = np.arange(len(ds)) if samples is None else np.asarray(samples, np.int64)
    if samples.size and (samples.min() < 0 or samples.max() >= len(ds)):
        raise WeightspaceError(f"augment_dataset: sample indices must lie in [0, {len(ds)})")
    order = np.tile(samples, copies)  # the new samples, copy by copy
    pops = list(ds.populations)
    member = np.empty(len(order), np.int32)
    keys = jax.random.split(key, max(len(ds.targets), 1))
    for g, (t, pop) in enumerate(zip(ds.targets, ds.populations, strict=True)):
        here = np.flatnonzero(ds.group[order] == g)
        if not here.size:
            continue
        picked = jax.tree.map(lambda a, m=ds.member[order[here]]: np.asarray(a)[m], pop)
        moved = canonical.random_symmetry(
            t, picked, keys[g], permute=permute, scale=scale, sign=sign,
            scale_range=scale_range, batched=True,
        )  # fmt: skip
        n = int(jax.tree.leaves(pop)[0].shape[0])
        pops[g] = jax.tree.map(
            lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)]), pop, moved
        )
        member[here] = n + np.arange(here.size)
    out = WeightDataset(
        targets=list(ds.targets),
        populations=pops,
        group=np.concatenate([ds.group, ds.group[order]]),
        member=np.concatenate([ds.member, member]),
        y=np.concatenate([ds.y, ds.y[order]]),
        run=np.concatenate([ds.run, ds.run[order]]),
        epoch=np.concatenate([ds.epoch, ds.epoch[order]]),
        task=ds.task,
    )
    return out, len(ds) + np.arange(len(order))
