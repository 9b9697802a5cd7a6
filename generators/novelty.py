"""Novelty of generated networks, and the baselines that expose memorization.

Zeng et al., "Generative Modeling of Weights: Generalization or Memorization?" (CVPR 2026,
github.com/boyazeng/weight_memorization) found that weight generators mostly replicate or
interpolate their training checkpoints. This module measures that, for any population of
any `Target`, with one code path for generated networks, training networks and baselines:

- `evaluate`: test accuracy and the `[targets, examples]` mask of misclassified examples,
  vmapped over members in chunks (bounded memory) and scanned over examples; an optional
  `[targets, classes]` mask scores task networks on their prompted classes only (the argmax
  over those classes, on the examples of those classes; `hyper.zoo_tasks`).
- `iou_matrix` / `max_similarity`: the IoU of two networks' sets of misclassified
  examples, for all pairs at once as matmuls of 0/1 masks; a generated network's *max
  similarity* is its largest IoU with any training network. Two empty sets have IoU 1
  (two perfect networks agree everywhere; the study's ``inter / (union + 1e-8)`` gives 0).
  With a small test split IoU is coarse: digits' 450 test examples leave a 98%-accurate
  network about 9 errors, so IoUs move in steps of ~0.1 (MNIST-1D: 1,000 examples).
- `diversity`: mean IoU over distinct pairs of generated networks.
- `nearest_neighbour_l2`: the L2 distance to the nearest training network up to the
  permutation symmetries (`hyper.align`): every network is first aligned to one reference
  training network (weight matching), the `candidates` nearest training networks in that
  common frame are then matched to each generated network pair by pair, and the smallest
  distance found is reported (an upper bound on the exact permutation-invariant distance,
  each candidate distance being that of a function-preserving permutation).

Baselines, following the study's code (facts taken from ``P-diff/evaluation/baseline.py``,
``G.pt/evaluation/generate_and_evaluate.py`` and ``Hyper-Representations/evaluation/
noise_baseline.py``; nothing copied):

- `noise_baseline`: a training network plus i.i.d. Gaussian noise of standard deviation
  `amplitude` on every trainable coordinate. The study's amplitude is *absolute*: the same
  std for every layer, not scaled by the layer's weight magnitude (p-diff 0.06 and 0.12,
  G.pt 0.05 and 0.1, Hyper-Representations 0.02 and 0.04); running statistics are left
  as they are (the study asserts there are none). ``scale="rms"`` offers the relative
  variant (std = amplitude x the leaf's RMS over the training set) as an option.
- `average_baseline`: the plain mean of `k` = 16 training networks drawn without
  replacement (``random.sample``), all coordinates, no alignment; one draw per sample.
- `gaussian_baseline`: a per-coordinate Gaussian, mean and standard deviation over all
  training networks (unbiased std, as ``torch.std``), each coordinate sampled independently.
- The study compares the training networks with themselves leaving out the diagonal
  (``fill_diagonal_(0)``); `max_similarity(..., exclude_self=True)` does the same.

`frontier_at` interpolates the noise baseline's (accuracy, max-IoU) curve at a given
accuracy, for the accuracy-novelty goal of `bench/weightgen.py`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper import align
from hyper import population as pop
from hyper.conv_matmul import for_populations
from hyper.errors import WeightspaceError
from hyper.target import Params, Target

__all__ = [
    "average_baseline",
    "diversity",
    "evaluate",
    "frontier_at",
    "gaussian_baseline",
    "iou_matrix",
    "max_similarity",
    "nearest_neighbour_l2",
    "noise_baseline",
    "predictions",
    "summary",
]


# --- evaluation ------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _predict_program(target: Target, chunk: int, example_chunk: int):
    apply = for_populations(target.pure_apply)  # the fast CPU convolutions

    def run(params, xs, mask):  # xs: [chunks, size, ...]; mask: [members, classes]
        def one(xc):
            logits = jax.vmap(apply, in_axes=(0, None))(params, xc)
            return jnp.argmax(jnp.where(mask[:, None, :], logits, -jnp.inf), -1)

        return jax.lax.map(one, xs)  # [chunks, members, size]

    return jax.jit(run)


def predictions(
    target: Target,
    population: Params,
    x: Any,
    *,
    class_mask: Any = None,
    chunk: int = 256,
    example_chunk: int = 512,
) -> np.ndarray:
    """Predicted class of every member on every example, `[targets, examples]` int32.

    Args:
      target: the target.
      population: `[targets, ...]`.
      x: `[examples, ...]` inputs.
      class_mask: None, or `[targets, classes]` bool: each member's argmax runs over its
        True classes only (task networks).
      chunk: members per compiled call (the last chunk is padded; memory is bounded by
        ``chunk x example_chunk`` activations).
      example_chunk: examples per step of the scan inside a call.
    """
    n = target.validate(population, batched=True)
    x = jnp.asarray(x)
    e = x.shape[0]
    steps = max(1, math.ceil(e / example_chunk))
    size = math.ceil(e / steps)
    pad = steps * size - e
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    xs = xp.reshape(steps, size, *x.shape[1:])
    out_classes = jax.eval_shape(target.pure_apply, pop.take(population, 0), x[:1]).shape[-1]
    if class_mask is None:
        mask = np.ones((n, out_classes), bool)
    else:
        mask = np.asarray(class_mask, bool)
        if mask.shape != (n, out_classes):
            raise WeightspaceError(
                f"predictions: class_mask has shape {mask.shape}, expected ({n}, {out_classes})"
            )
    c = min(chunk, n)
    run = _predict_program(target, c, size)
    out = []
    for start in range(0, n, c):
        idx = np.arange(start, start + c)
        idx = np.where(idx < n, idx, 0)  # the last chunk repeats member 0 (dropped below)
        part = run(pop.take(population, idx), xs, jnp.asarray(mask[idx]))
        out.append(np.asarray(part).transpose(1, 0, 2).reshape(c, -1)[:, :e])
    return np.concatenate(out)[:n].astype(np.int32)


def evaluate(
    target: Target,
    population: Params,
    x: Any,
    y: Any,
    *,
    class_mask: Any = None,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy `[targets]` and the misclassified-example masks `[targets, examples]`.

    With `class_mask` (`[targets, classes]`), member `i` is scored on the examples whose
    label is among its classes, by the argmax over those classes; examples outside its
    classes are never counted as misclassified.
    """
    y = np.asarray(y)
    pred = predictions(target, population, x, class_mask=class_mask, chunk=chunk)
    if class_mask is None:
        counted = np.ones_like(pred, bool)
    else:
        counted = np.asarray(class_mask, bool)[:, y]
    wrong = (pred != y[None, :]) & counted
    acc = 1.0 - wrong.sum(1) / np.maximum(counted.sum(1), 1)
    return acc, wrong


# --- similarity of misclassified sets -------------------------------------------------


def iou_matrix(a: Any, b: Any) -> np.ndarray:
    """IoU of every pair of 0/1 masks: `[n, examples]` x `[m, examples]` -> `[n, m]`.

    ``|A & B| / |A | B|`` by one matmul of the masks; two empty sets give 1.
    """
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise WeightspaceError(
            f"iou_matrix: expected [n, examples] and [m, examples] masks, got {a.shape}, {b.shape}"
        )
    # float32 counts are exact below 2**24 examples
    inter = np.asarray(jnp.asarray(a, jnp.float32) @ jnp.asarray(b, jnp.float32).T)
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def max_similarity(generated: Any, training: Any, *, exclude_self: bool = False) -> np.ndarray:
    """Per generated network, the largest IoU of its misclassified set with any training
    network's, `[n]`.

    Args:
      generated: `[n, examples]` bool masks (`evaluate`).
      training: `[m, examples]` bool masks.
      exclude_self: `generated` *is* `training` (n == m): leave out each network's IoU
        with itself (set to 0, as the study does).
    """
    iou = iou_matrix(generated, training)
    if exclude_self:
        if iou.shape[0] != iou.shape[1]:
            raise WeightspaceError(f"max_similarity: exclude_self needs n == m, got {iou.shape}")
        np.fill_diagonal(iou, 0.0)
    return iou.max(axis=1)


def diversity(masks: Any) -> float:
    """Mean IoU over the distinct pairs of `[n, examples]` masks (lower: more diverse)."""
    masks = np.asarray(masks, bool)
    n = masks.shape[0]
    if n < 2:
        raise WeightspaceError(f"diversity: needs at least 2 networks, got {n}")
    iou = iou_matrix(masks, masks)
    return float((iou.sum() - np.trace(iou)) / (n * (n - 1)))


# --- weight-space distance --------------------------------------------------------------


def nearest_neighbour_l2(
    target: Target,
    generated: Params,
    training: Params,
    *,
    candidates: int = 4,
    key: jax.Array | None = None,
) -> np.ndarray:
    """Per generated network, the L2 distance (trainable coordinates) to the nearest
    training network up to hidden-unit permutations, `[n]` (see the module docstring).

    Args:
      target: the target of both populations.
      generated: `[n, ...]`.
      training: `[m, ...]`.
      candidates: training networks per generated one matched pair by pair, the nearest
        in the common frame of training network 0.
      key: randomness of weight matching's group order.
    """
    n = target.validate(generated, batched=True)
    m = target.validate(training, batched=True)
    ref = pop.take(training, 0)
    gen_c, _ = align.align_population(target, generated, ref, key=key)
    train_c, _ = align.align_population(target, training, ref, key=key)
    g = np.asarray(pop.flatten(target, gen_c, trainable_only=True), np.float64)
    t = np.asarray(pop.flatten(target, train_c, trainable_only=True), np.float64)
    d2 = (g * g).sum(1)[:, None] + (t * t).sum(1)[None, :] - 2 * g @ t.T
    canonical = np.sqrt(np.maximum(d2, 0))
    best = canonical.min(1)
    k = min(candidates, m)
    if k == 0:
        return best
    near = np.argsort(canonical, axis=1)[:, :k]  # [n, k]
    gi = np.repeat(np.arange(n), k)
    a = pop.take(training, near.reshape(-1))
    b = pop.take(generated, gi)
    aligned, _ = align.align_population(target, b, a, key=key)
    diff = pop.flatten(target, aligned, trainable_only=True) - pop.flatten(
        target, a, trainable_only=True
    )
    pair = np.asarray(jnp.sqrt(jnp.sum(diff.astype(jnp.float32) ** 2, 1))).reshape(n, k)
    return np.minimum(best, pair.min(1))


# --- baselines ----------------------------------------------------------------------------


def _draw(key: jax.Array, m: int, n: int) -> np.ndarray:
    """`n` training indices: a permutation's first `n` (every network once) while n <= m,
    else uniform with replacement."""
    if n <= m:
        return np.asarray(jax.random.permutation(key, m)[:n])
    return np.asarray(jax.random.randint(key, (n,), 0, m))


def _standard_normals(key: jax.Array, n: int, leaves: list[jax.Array]) -> list[jax.Array]:
    """`[n, *leaf.shape[1:]]` standard normals for each leaf, from one draw (one RNG kernel
    to compile, whatever the number of leaves)."""
    sizes = [int(np.prod(v.shape[1:], dtype=int)) for v in leaves]
    z = jax.random.normal(key, (n, sum(sizes)))
    cuts = np.cumsum([0, *sizes])
    return [
        z[:, a:b].reshape(n, *v.shape[1:])
        for a, b, v in zip(cuts[:-1], cuts[1:], leaves, strict=True)
    ]


@jax.jit
def _add_noise(key, base, stds):
    leaves, treedef = jax.tree.flatten(base)
    noisy = [i for i, std in enumerate(stds) if std is not None]  # None: running statistics
    z = _standard_normals(key, leaves[0].shape[0], [leaves[i] for i in noisy])
    out = list(leaves)
    for i, zi in zip(noisy, z, strict=True):
        out[i] = leaves[i] + (stds[i] * zi).astype(leaves[i].dtype)
    return jax.tree.unflatten(treedef, out)


def noise_baseline(
    key: jax.Array,
    target: Target,
    training: Params,
    n: int,
    amplitude: float,
    *,
    scale: str = "absolute",
) -> Params:
    """`n` training networks (drawn without replacement while possible) plus Gaussian noise.

    Args:
      key: randomness (the draw and the noise).
      target: the target (which leaves are trainable: only those get noise).
      training: `[m, ...]` training networks.
      n: networks to make.
      amplitude: the noise standard deviation (``"absolute"``, the study's), or its ratio
        to each leaf's RMS over the training set (``"rms"``).
      scale: ``"absolute"`` or ``"rms"``.

    Returns:
      `[n, ...]`.
    """
    if scale not in ("absolute", "rms"):
        raise WeightspaceError(f"noise_baseline: scale must be 'absolute' or 'rms', got {scale!r}")
    if not amplitude >= 0:
        raise WeightspaceError(f"noise_baseline: amplitude must be >= 0, got {amplitude}")
    m = target.validate(training, batched=True)
    kd, kn = jax.random.split(key)
    base = pop.take(training, _draw(kd, m, n))
    stds = [  # None: running statistics stay as trained
        None
        if not spec.trainable
        else amplitude * jnp.sqrt(jnp.mean(jnp.square(v.astype(jnp.float32))))
        if scale == "rms"
        else jnp.float32(amplitude)
        for v, spec in zip(jax.tree.leaves(training), target.spec, strict=True)
    ]
    return _add_noise(kn, base, stds)


@functools.partial(jax.jit, static_argnames=("n", "k"))
def _averages(key, training, n, k):
    m = jax.tree.leaves(training)[0].shape[0]
    idx = jax.vmap(lambda kk: jax.random.permutation(kk, m)[:k])(jax.random.split(key, n))
    return jax.tree.map(lambda v: jnp.mean(v[idx].astype(jnp.float32), 1).astype(v.dtype), training)


def average_baseline(key: jax.Array, training: Params, n: int, *, k: int = 16) -> Params:
    """`n` networks, each the plain mean of `k` training networks drawn without replacement
    (a fresh draw per network), `[n, ...]`."""
    m = jax.tree.leaves(training)[0].shape[0]
    if not 1 <= k <= m:
        raise WeightspaceError(f"average_baseline: k must be in [1, {m}], got {k}")
    return _averages(key, training, n, k)


@functools.partial(jax.jit, static_argnames=("n",))
def _gaussians(key, training, n):
    leaves, treedef = jax.tree.flatten(training)
    out = []
    for v, z in zip(leaves, _standard_normals(key, n, leaves), strict=True):
        f = v.astype(jnp.float32)
        mean, std = jnp.mean(f, 0), jnp.std(f, 0, ddof=1)
        out.append((mean[None] + std[None] * z).astype(v.dtype))
    return jax.tree.unflatten(treedef, out)


def gaussian_baseline(key: jax.Array, training: Params, n: int) -> Params:
    """`n` networks sampled from a per-coordinate Gaussian fitted to the training networks
    (mean and unbiased standard deviation of each coordinate), `[n, ...]`."""
    m = jax.tree.leaves(training)[0].shape[0]
    if m < 2:
        raise WeightspaceError(f"gaussian_baseline: needs at least 2 training networks, got {m}")
    return _gaussians(key, training, n)


# --- summaries --------------------------------------------------------------------------


def summary(
    acc: Any,
    wrong: Any,
    training_acc: Any,
    training_wrong: Any,
    *,
    nn_l2: Any = None,
    exclude_self: bool = False,
) -> dict[str, float]:
    """One row of the novelty table: accuracy (best, median, fraction within 1 point of
    the training networks' median), median max-IoU to the training set, diversity, and the
    median nearest-neighbour L2 if given. Accuracies are fractions in [0, 1]."""
    acc = np.asarray(acc, np.float64)
    med_train = float(np.median(training_acc))
    ms = max_similarity(wrong, training_wrong, exclude_self=exclude_self)
    row = {
        "n": int(acc.size),
        "best_acc": float(acc.max()),
        "median_acc": float(np.median(acc)),
        "frac_within_1pt_of_training_median": float(
            np.mean(np.abs(acc - med_train) <= 0.01 + 1e-9)
        ),
        "median_max_iou": float(np.median(ms)),
        "diversity": diversity(wrong),
    }
    if nn_l2 is not None:
        row["median_nn_l2"] = float(np.median(np.asarray(nn_l2)))
    return row


def frontier_at(
    accuracies: Sequence[float], similarities: Sequence[float], accuracy: float
) -> float | None:
    """The similarity of a baseline curve (points `(accuracies[i], similarities[i])`, e.g.
    the noise sweep's medians) linearly interpolated at `accuracy`; None outside the
    curve's accuracy range (no extrapolation)."""
    a = np.asarray(accuracies, np.float64)
    s = np.asarray(similarities, np.float64)
    order = np.argsort(a, kind="stable")
    a, s = a[order], s[order]
    if not a[0] <= accuracy <= a[-1]:
        return None
    return float(np.interp(accuracy, a, s))
