"""Model merging on populations: averaging, task arithmetic, TIES, Fisher, PCB.

Fine-tuned networks of one target are a population `[tasks, ...]`; a merge returns one
network (or, for a sequence of scaling factors `lam`, a population `[len(lam), ...]` of
merges, ready for one vmapped evaluation to pick `lam` on validation data).

- `average` / `aligned_average`: the (weighted) mean of the members, optionally after
  aligning them to member 0 (`hyper.align`);
- `task_arithmetic`: ``theta_base + lam * sum_i tau_i`` with ``tau_i = theta_i - theta_base``;
- `ties_merge` (Yadav et al. 2023): trim each task vector to its top-`density` magnitudes,
  elect a sign per parameter by total mass, average the entries that agree (disjoint mean),
  scale by `lam`;
- `fisher_merge` (Matena & Raffel 2022): ``sum_j c_j F_j theta_j / sum_j c_j F_j`` with a
  diagonal Fisher `F_j` from `diagonal_fisher` (vmapped per-example gradients of the
  log-likelihood), floored at 1e-6;
- `pcb_merge` (Du et al. 2024): intra-balancing ``exp(n * minmax(|tau|)^2)`` times
  inter-balancing ``tanh(tau_i * sum_j tau_j)``, the top `ratio` kept and min-max
  normalised into weights, ``sum_i w_i tau_i / sum_i w_i``, scaled by `lam`.

Task-vector merges act on the trainable leaves (flattened per task into one vector, as the
reference implementations do); non-trainable state such as BatchNorm running statistics
is the plain mean of the members. Every task-vector merge takes ``rank=r`` to merge
low-rank deltas instead: each kernel's delta is replaced by its truncated SVD of rank `r`
(`low_rank`; a kernel ``[..., in, out]`` is seen as a matrix ``[prod(...) * in, out]``).

`fuse` merges two independently trained networks (OT fusion, Imfeld et al. 2024 for
transformers; Git Re-Basin): align `b` to `a` (hard permutations or a soft Sinkhorn plan),
then average. `interpolate` and `loss_barrier` measure linear mode connectivity.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper import align, symmetry
from hyper import population as pop
from hyper.errors import WeightspaceError
from hyper.target import Params, Target

__all__ = [
    "aligned_average",
    "average",
    "diagonal_fisher",
    "fisher_merge",
    "fuse",
    "interpolate",
    "loss_barrier",
    "low_rank",
    "pcb_merge",
    "pcb_vectors",
    "task_arithmetic",
    "task_vectors",
    "ties_merge",
    "ties_vectors",
]


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _validate(fn: str, what: str, target: Target, params: Params, *, batched: bool) -> int | None:
    try:
        return target.validate(params, batched=batched)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{fn}: {what}: {e}") from None


def _lams(fn: str, lam: Any) -> tuple[np.ndarray, bool]:
    """`lam` as a 1-D float array and whether it was a scalar."""
    a = np.asarray(lam, np.float32)
    if a.ndim > 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise WeightspaceError(f"{fn}: lam must be a finite scalar or 1-D sequence, got {lam!r}")
    return a.reshape(-1), a.ndim == 0


def _check_task_inputs(fn: str, target: Target, base: Params, population: Params, rank: Any):
    _validate(fn, "base", target, base, batched=False)
    _validate(fn, "population", target, population, batched=True)
    if rank is not None and (not isinstance(rank, int | np.integer) or rank < 1):
        raise WeightspaceError(f"{fn}: rank must be a positive integer or None, got {rank!r}")


@functools.partial(jax.jit, static_argnames=("target", "rule", "option", "rank"))
def _task_merge(
    target: Target,
    base: Params,
    population: Params,
    lams: jax.Array,
    *,
    rule: str,
    option: float,
    rank: int | None,
) -> Params:
    """`[L, ...]` merges ``base + lam_l * rule(taus)``; state = the members' mean."""
    deltas = jax.tree.map(lambda p, b: p - b[None], population, base)
    if rank is not None:
        deltas = _low_rank(target, deltas, rank)
    taus = pop.flatten(target, deltas, trainable_only=True).astype(jnp.float32)
    base_row = pop.flatten(target, pop.of_one(base), trainable_only=True)
    if rule == "sum":
        merged = jnp.sum(taus, 0)
    elif rule == "ties":
        merged = ties_vectors(taus, option)
    elif rule == "pcb":
        merged = pcb_vectors(taus, option)
    else:
        raise ValueError(f"unknown merge rule {rule!r}")
    rows = base_row.astype(jnp.float32) + lams[:, None] * merged[None]
    n = lams.shape[0]
    state = jax.tree.map(
        lambda v: jnp.broadcast_to(jnp.mean(v, 0), (n, *v.shape[1:])).astype(v.dtype), population
    )
    return pop.unflatten(target, rows, trainable_only=True, state=state)


def _run_task_merge(
    fn: str,
    target: Target,
    base: Params,
    population: Params,
    lam: Any,
    rule: str,
    option: float,
    rank: int | None,
) -> Params:
    lams, scalar = _lams(fn, lam)
    _check_task_inputs(fn, target, base, population, rank)
    out = _task_merge(
        target,
        base,
        population,
        jnp.asarray(lams),
        rule=rule,
        option=float(option),
        rank=None if rank is None else int(rank),
    )
    return jax.tree.map(lambda v: v[0], out) if scalar else out


# ---------------------------------------------------------------------------------------
# Interpolation and averaging
# ---------------------------------------------------------------------------------------


def interpolate(target: Target, params_a: Params, params_b: Params, alphas: Any) -> Params:
    """Networks on the segment ``(1 - alpha) * a + alpha * b`` (every leaf, state included).

    Args:
      alphas: `[A]` interpolation weights (0 gives `a`, 1 gives `b`).

    Returns:
      a population `[A, ...]`.
    """
    _validate("interpolate", "params_a", target, params_a, batched=False)
    _validate("interpolate", "params_b", target, params_b, batched=False)
    alphas = jnp.asarray(alphas, jnp.float32).reshape(-1)

    def mix(a, b):
        w = alphas.reshape((-1,) + (1,) * a.ndim)
        return ((1 - w) * a[None] + w * b[None]).astype(a.dtype)

    return jax.tree.map(mix, params_a, params_b)


def loss_barrier(losses: Any, alphas: Any = None) -> float:
    """Loss barrier along an interpolation path.

    ``max_alpha [ loss(alpha) - ((1 - alpha) * loss(0) + alpha * loss(1)) ]`` (Frankle et
    al. 2020; Ainsworth et al. 2023): the largest excess of the path's loss over the
    straight line between the endpoint losses. Zero for a linearly connected pair.

    Args:
      losses: `[A]` losses at `alphas` (the first and last are the endpoints).
      alphas: `[A]` increasing weights from 0 to 1; default evenly spaced.
    """
    losses = np.asarray(losses, np.float64).reshape(-1)
    if losses.size < 2:
        raise WeightspaceError(f"loss_barrier: need at least 2 losses, got {losses.size}")
    alphas = np.linspace(0, 1, losses.size) if alphas is None else np.asarray(alphas, np.float64)
    if alphas.shape != losses.shape:
        raise WeightspaceError(
            f"loss_barrier: {alphas.shape[0]} alphas for {losses.shape[0]} losses"
        )
    line = (1 - alphas) * losses[0] + alphas * losses[-1]
    return float(np.max(losses - line))


def average(target: Target, population: Params, weights: Any = None) -> Params:
    """The (weighted) mean of the members of `population`, every leaf.

    Args:
      weights: `[tasks]` nonnegative weights (normalised to sum 1); default uniform.
    """
    n = _validate("average", "population", target, population, batched=True)
    w = np.full((n,), 1.0 / n) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (n,) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise WeightspaceError(f"average: weights must be {n} nonnegative numbers, got {weights!r}")
    w = jnp.asarray(w / w.sum(), jnp.float32)
    return jax.tree.map(
        lambda v: jnp.tensordot(w, v.astype(jnp.float32), axes=1).astype(v.dtype), population
    )


def aligned_average(
    target: Target,
    population: Params,
    weights: Any = None,
    *,
    method: str = "weight",
    x: Any = None,
    key: jax.Array | None = None,
    max_iter: int = 100,
    reg: float = 0.05,
) -> Params:
    """`average` after aligning every member to member 0 (`hyper.align.align_population`).

    With ``method="sinkhorn"`` the members are mixed by soft plans (OT fusion).
    """
    aligned, _ = align.align_population(
        target, population, method=method, x=x, key=key, max_iter=max_iter, reg=reg
    )
    return average(target, aligned, weights)


FUSE_METHODS = ("weight", "activation", "sinkhorn", "none")


def fuse(
    target: Target,
    params_a: Params,
    params_b: Params,
    *,
    method: str = "weight",
    x: Any = None,
    weight: float = 0.5,
    key: jax.Array | None = None,
    max_iter: int = 100,
    reg: float = 0.05,
    kind: str = "both",
) -> Params:
    """Fuses two networks of one target: aligns `b` to `a`, then ``a + weight * (b' - a)``.

    The alignment covers every structural group (`hyper.symmetry.structural_groups`): for
    a transformer the residual stream (one group across all blocks, with its LayerNorms),
    the query/key and value/output dimensions of the attention heads (one permutation
    shared by all heads of a layer) and the MLP units; heads themselves are aligned where
    the groups include them.

    - ``"weight"``: weight matching (`hyper.align.weight_matching`); `b'` is `b` permuted,
      the same function as `b`.
    - ``"activation"``: activation matching on the batch `x`
      (`hyper.align.activation_matching`); `b'` is `b` permuted.
    - ``"sinkhorn"``: OT fusion with soft alignment: entropic transport plans per group
      (`hyper.align.sinkhorn_alignment`; similarities of activations on `x` if given, else
      of weights after weight matching, `reg` relative to the largest), and `b'` is `b`
      transported onto `a`'s units (`hyper.align.apply_transport`: each unit of `b'` a
      barycentric mix of `b`'s units, not the function of `b` in general). As ``reg -> 0``
      the plans become the permutations of ``"weight"`` (or ``"activation"``).
    - ``"none"``: no alignment (vanilla averaging, the baseline).

    Every leaf is mixed, non-trainable state (BatchNorm statistics) included. Computed as
    ``a + weight * (b' - a)``, so a `b` that is a permuted copy of `a` fuses back to `a`
    exactly with ``"weight"``.

    Args:
      target: the target of both networks.
      params_a: the reference network (its unit order is kept).
      params_b: the network aligned to `a`.
      method: ``"weight"``, ``"activation"``, ``"sinkhorn"`` or ``"none"``.
      x: an input batch `[batch, ...]` (needed by ``"activation"``; optional for
        ``"sinkhorn"``).
      weight: the share of `b` in [0, 1] (0 returns `a`; 0.5 the midpoint).
      key: randomness of weight matching's group order.
      max_iter: weight matching sweeps.
      reg: Sinkhorn regularisation (> 0, relative; 0.05 nearly hard, 1 nearly uniform).
      kind: which activations carry a group (see `hyper.align.activation_similarity`).

    Returns:
      one network of `target`.

    Raises:
      WeightspaceError: an unknown method, ``"activation"`` without `x`, a `weight`
        outside [0, 1], inputs of the wrong shape, or networks that do not match `target`
        (the message names the argument, the leaf and the shapes).
    """
    if method not in FUSE_METHODS:
        raise WeightspaceError(f"fuse: unknown method {method!r}; expected one of {FUSE_METHODS}")
    try:
        w = float("nan") if isinstance(weight, bool | str) else float(weight)
    except (TypeError, ValueError):
        w = float("nan")
    if not 0.0 <= w <= 1.0:
        raise WeightspaceError(f"fuse: weight must be a number in [0, 1], got {weight!r}")
    _validate("fuse", "params_a", target, params_a, batched=False)
    _validate("fuse", "params_b", target, params_b, batched=False)
    if method == "activation" and x is None:
        raise WeightspaceError("fuse: method='activation' needs an input batch x")
    if method == "weight":
        perms = align.weight_matching(target, params_a, params_b, key=key, max_iter=max_iter)
        aligned = symmetry.permute(target, params_b, [jnp.asarray(p) for p in perms])
    elif method == "activation":
        perms = align.activation_matching(target, params_a, params_b, x, kind=kind)
        aligned = symmetry.permute(target, params_b, [jnp.asarray(p) for p in perms])
    elif method == "sinkhorn":
        plans = align.sinkhorn_alignment(
            target, params_a, params_b, x=x, reg=reg, key=key, max_iter=max_iter
        )
        aligned = align.apply_transport(target, params_b, plans)
    else:
        aligned = params_b
    return jax.tree.map(
        lambda a, b: (a + w * (jnp.asarray(b, a.dtype) - a)).astype(a.dtype),
        jax.tree.map(jnp.asarray, params_a),
        aligned,
    )


# ---------------------------------------------------------------------------------------
# Task vectors
# ---------------------------------------------------------------------------------------


def task_vectors(target: Target, base: Params, population: Params) -> Params:
    """``tau_i = theta_i - theta_base`` for every member (every leaf), `[tasks, ...]`."""
    _validate("task_vectors", "base", target, base, batched=False)
    _validate("task_vectors", "population", target, population, batched=True)
    return jax.tree.map(lambda p, b: p - b[None], population, base)


def low_rank(target: Target, deltas: Params, rank: int) -> Params:
    """Each kernel leaf replaced by its best rank-`rank` approximation (truncated SVD).

    A kernel ``[targets, ..., in, out]`` is treated as a matrix ``[prod(...) * in, out]``
    per target; other leaves (biases, norms) are returned unchanged.

    Args:
      deltas: a population (typically task vectors).
      rank: kept singular values (>= 1); at least the matrix rank reproduces it exactly.
    """
    if not isinstance(rank, int | np.integer) or rank < 1:
        raise WeightspaceError(f"low_rank: rank must be a positive integer, got {rank!r}")
    _validate("low_rank", "deltas", target, deltas, batched=True)
    return jax.jit(_low_rank, static_argnums=(0, 2))(target, deltas, int(rank))


def _low_rank(target: Target, deltas: Params, rank: int) -> Params:
    out = []
    for s, v in zip(target.spec, jax.tree.leaves(deltas), strict=True):
        if s.role != "kernel":
            out.append(v)
            continue
        n = v.shape[0]
        m = v.reshape(n, -1, s.shape[-1]).astype(jnp.float32)
        u, sv, vt = jnp.linalg.svd(m, full_matrices=False)
        r = min(rank, sv.shape[-1])
        approx = (u[..., :r] * sv[..., None, :r]) @ vt[..., :r, :]
        out.append(approx.reshape(v.shape).astype(v.dtype))
    return jax.tree.unflatten(target.treedef, out)


def task_arithmetic(
    target: Target, base: Params, population: Params, lam: Any = 1.0, *, rank: int | None = None
) -> Params:
    """``theta_base + lam * sum_i tau_i`` (Ilharco et al. 2023).

    Args:
      target: the target.
      base: the network the members were fine-tuned from.
      population: fine-tuned members `[tasks, ...]`.
      lam: a scaling factor, or a sequence of them (returns a population of merges).
      rank: merge rank-`rank` approximations of the kernels' task vectors.

    Returns:
      one network, or `[len(lam), ...]` networks.
    """
    return _run_task_merge("task_arithmetic", target, base, population, lam, "sum", 0.0, rank)


def _minmax(x: jax.Array, axis: int) -> jax.Array:
    lo = jnp.min(x, axis=axis, keepdims=True)
    hi = jnp.max(x, axis=axis, keepdims=True)
    den = hi - lo
    return jnp.where(den > 0, (x - lo) / jnp.where(den > 0, den, 1), 0.0)


def ties_vectors(taus: jax.Array, density: float = 0.2) -> jax.Array:
    """The TIES merge of task vectors `[tasks, P]` -> `[P]` (before scaling by `lam`).

    1. Trim: in each row keep the entries whose magnitude is at least the k-th smallest,
       ``k = P - floor(P * density)`` (the reference's `kthvalue` threshold; ties kept);
       the others become 0.
    2. Elect: sign of the column sum of the trimmed vectors; a zero sum takes the sign of
       the sum of all elected signs (the majority).
    3. Disjoint mean: per column, the mean of the entries whose sign equals the elected one
       (zeros excluded); 0 where none agree.
    """
    taus = jnp.asarray(taus)
    if taus.ndim != 2:
        raise WeightspaceError(f"ties_vectors: taus must be [tasks, P], got shape {taus.shape}")
    if not 0 < density <= 1:
        raise WeightspaceError(f"ties: density must be in (0, 1], got {density}")
    d = taus.shape[1]
    keep = int(d * density)
    if keep >= d:
        trimmed = taus
    else:
        k = d - keep  # 1-based rank of the threshold among ascending magnitudes
        thresh = jnp.sort(jnp.abs(taus), axis=1)[:, k - 1 : k]
        trimmed = jnp.where(jnp.abs(taus) >= thresh, taus, 0.0)
    sign = jnp.sign(jnp.sum(trimmed, 0))
    sign = jnp.where(sign == 0, jnp.sign(jnp.sum(sign)), sign)
    agree = jnp.where(sign[None] > 0, trimmed > 0, trimmed < 0)
    selected = jnp.where(agree, trimmed, 0.0)
    count = jnp.sum(selected != 0, 0)
    return jnp.sum(selected, 0) / jnp.maximum(count, 1)


def ties_merge(
    target: Target,
    base: Params,
    population: Params,
    *,
    density: float = 0.2,
    lam: Any = 1.0,
    rank: int | None = None,
) -> Params:
    """TIES-merging (Yadav et al. 2023): ``theta_base + lam * ties_vectors(taus, density)``.

    Args:
      density: share of each task vector kept by magnitude (``topk20`` = 0.2).
      lam: scaling factor(s); the reference sweeps 0.8 to 2.5.
      rank: merge rank-`rank` approximations of the kernels' task vectors.

    Returns:
      one network, or `[len(lam), ...]` networks.
    """
    if not 0 < density <= 1:
        raise WeightspaceError(f"ties_merge: density must be in (0, 1], got {density}")
    return _run_task_merge("ties_merge", target, base, population, lam, "ties", density, rank)


def _clamp_quantiles(x: jax.Array, min_ratio: float, max_ratio: float) -> jax.Array:
    """Row-wise clamp to the sorted values at ``int(P * min_ratio)`` and
    ``int(P * (1 - max_ratio)) - 1`` (PCB's `clamp`)."""
    d = x.shape[1]
    s = jnp.sort(x, axis=1)
    lo = s[:, int(d * min_ratio)][:, None]
    hi = s[:, max(int(d * (1 - max_ratio) - 1), 0)][:, None]
    return jnp.clip(x, lo, hi)


def pcb_vectors(taus: jax.Array, ratio: float = 0.1, outlier: float = 1e-4) -> jax.Array:
    """The PCB merge of task vectors `[tasks, P]` -> `[P]` (before scaling by `lam`).

    1. Magnitudes are clamped to their row's `outlier` and ``1 - outlier`` quantiles
       (signs kept).
    2. Intra-balancing ``exp(n * minmax_row(|tau|)^2)`` (`n` tasks), inter-balancing
       ``tanh(tau_i * sum_j tau_j)``; their product is the importance.
    3. Each row's importance is clamped below at its ``1 - ratio`` quantile (so only the top
       `ratio` stays above the floor) and min-max normalised: weights in [0, 1], 0 for the
       dropped entries.
    4. ``sum_i w_i tau_i / max(sum_i w_i, 1e-12)``.
    """
    taus = jnp.asarray(taus)
    if taus.ndim != 2:
        raise WeightspaceError(f"pcb_vectors: taus must be [tasks, P], got shape {taus.shape}")
    if not 0 < ratio <= 1:
        raise WeightspaceError(f"pcb: ratio must be in (0, 1], got {ratio}")
    n = taus.shape[0]
    mag = _clamp_quantiles(jnp.abs(taus), outlier, outlier)
    clamped = jnp.sign(taus) * mag
    intra = jnp.exp(n * _minmax(mag, 1) ** 2)
    inter = jnp.tanh(taus * jnp.sum(taus, 0, keepdims=True))
    importance = intra * inter
    weights = _minmax(_clamp_quantiles(importance, 1 - ratio, 0.0), 1)
    return jnp.sum(clamped * weights, 0) / jnp.maximum(jnp.sum(weights, 0), 1e-12)


def pcb_merge(
    target: Target,
    base: Params,
    population: Params,
    *,
    ratio: float = 0.1,
    lam: Any = 1.0,
    rank: int | None = None,
) -> Params:
    """PCB-merging (Du et al. 2024): ``theta_base + lam * pcb_vectors(taus, ratio)``.

    Args:
      ratio: share of each task's entries kept (``pcb_ratio``).
      lam: scaling factor(s) (the reference searches per-task factors in [0.8, 1.3]).
      rank: merge rank-`rank` approximations of the kernels' task vectors.

    Returns:
      one network, or `[len(lam), ...]` networks.
    """
    if not 0 < ratio <= 1:
        raise WeightspaceError(f"pcb_merge: ratio must be in (0, 1], got {ratio}")
    return _run_task_merge("pcb_merge", target, base, population, lam, "pcb", ratio, rank)


# ---------------------------------------------------------------------------------------
# Fisher merging
# ---------------------------------------------------------------------------------------

FISHER_MODES = ("exact", "sampled", "empirical")


def diagonal_fisher(
    target: Target,
    population: Params,
    x: Any,
    *,
    mode: str = "exact",
    labels: Any = None,
    key: jax.Array | None = None,
    chunk_size: int = 32,
    per_target_inputs: bool = False,
) -> Params:
    """Diagonal Fisher information of every member, from per-example gradients.

    ``F = mean_x E_y [ (d log p(y | x) / d theta)^2 ]`` with the expectation over

    - ``"exact"``: the model's own predictive distribution, summed over all classes
      weighted by ``p(y | x)`` (one gradient per class and example; Matena & Raffel's
      default for classifiers);
    - ``"sampled"``: one ``y ~ p(y | x)`` per example (needs `key`);
    - ``"empirical"``: the true `labels`.

    Per-example gradients are a `vmap` of `grad` over a chunk of examples (chunks scanned
    to bound memory), vmapped again over members. Non-trainable leaves get 0.

    Args:
      target: a classifier target (outputs `[batch, classes]` logits).
      population: `[tasks, ...]` networks.
      x: `[batch, ...]` inputs shared by all members, or `[targets, batch, ...]` (each
        member its own data, e.g. its task's examples) if `per_target_inputs`.
      mode: ``"exact"``, ``"sampled"`` or ``"empirical"``.
      labels: `[batch]` (or `[targets, batch]`) int labels for ``"empirical"``.
      key: PRNG key for ``"sampled"``.
      chunk_size: examples per vmapped chunk.
      per_target_inputs: `x` (and `labels`) carry a leading `targets` axis.

    Returns:
      a population of the same structure: the diagonal Fisher of each member.
    """
    if mode not in FISHER_MODES:
        raise WeightspaceError(f"diagonal_fisher: unknown mode {mode!r}; expected {FISHER_MODES}")
    t = _validate("diagonal_fisher", "population", target, population, batched=True)
    x = jnp.asarray(x)
    lead = (t,) if per_target_inputs else ()
    if per_target_inputs and x.shape[:1] != lead:
        raise WeightspaceError(
            f"diagonal_fisher: per-target inputs have shape {tuple(x.shape)}, expected "
            f"({t}, batch, ...) for {t} targets"
        )
    ex_shape = tuple(x.shape[len(lead) + 1 :])
    if target.input_shape is not None and ex_shape != tuple(target.input_shape):
        raise WeightspaceError(
            f"diagonal_fisher: inputs have shape {tuple(x.shape)}, {target.name} takes "
            f"({'targets, ' if lead else ''}batch, {', '.join(map(str, target.input_shape))})"
        )
    n = x.shape[len(lead)]
    if mode == "empirical":
        if labels is None or np.shape(labels) != (*lead, n):
            raise WeightspaceError(f"diagonal_fisher: mode='empirical' needs {[*lead, n]} labels")
        y = jnp.asarray(labels, jnp.int32)
    else:
        y = jnp.zeros((*lead, n), jnp.int32)
    if mode == "sampled" and key is None:
        raise WeightspaceError("diagonal_fisher: mode='sampled' needs a key")
    key = jax.random.key(0) if key is None else key
    chunks = max(1, math.ceil(n / chunk_size))
    size = math.ceil(n / chunks)
    pad = chunks * size - n

    def chunked(a: jax.Array) -> jax.Array:
        """`[n, ...]` -> `[chunks, size, ...]`, zero-padded."""
        a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a
        return a.reshape(chunks, size, *a.shape[1:])

    valid = chunked((jnp.arange(n) < n).astype(jnp.float32))
    ks = chunked(jax.random.split(key, n))
    trainable = [s.trainable for s in target.spec]

    def log_probs(params, xi):
        return jax.nn.log_softmax(target.pure_apply(params, xi[None])[0])

    def one_example(params, xi, yi, ki):
        if mode == "exact":
            jac = jax.jacrev(log_probs)(params, xi)  # leaves [classes, ...]
            p = jax.lax.stop_gradient(jnp.exp(log_probs(params, xi)))
            return jax.tree.map(lambda g: jnp.tensordot(p, g * g, axes=1), jac)
        if mode == "sampled":
            logits = jax.lax.stop_gradient(log_probs(params, xi))
            yi = jax.random.categorical(ki, logits)
        g = jax.grad(lambda q: log_probs(q, xi)[yi])(params)
        return jax.tree.map(lambda a: a * a, g)

    def member(params, xm, ym):
        xs, ys = chunked(xm), chunked(ym)

        def chunk(total, inp):
            xc, yc, vc, kc = inp
            sq = jax.vmap(one_example, in_axes=(None, 0, 0, 0))(params, xc, yc, kc)
            return jax.tree.map(lambda t, s: t + jnp.tensordot(vc, s, axes=1), total, sq), None

        zero = jax.tree.map(jnp.zeros_like, params)
        total, _ = jax.lax.scan(chunk, zero, (xs, ys, valid, ks))
        leaves = [
            (v / n if t else jnp.zeros_like(v))
            for v, t in zip(jax.tree.leaves(total), trainable, strict=True)
        ]
        return jax.tree.unflatten(target.treedef, leaves)

    in_axes = (0, 0, 0) if per_target_inputs else (0, None, None)
    return jax.jit(jax.vmap(member, in_axes=in_axes))(population, x, y)


def fisher_merge(
    target: Target,
    population: Params,
    fishers: Params,
    *,
    coeffs: Sequence[float] | None = None,
    floor: float = 1e-6,
    normalize: bool = False,
) -> Params:
    """Fisher-weighted averaging: per parameter ``sum_j c_j F_j theta_j / sum_j c_j F_j``.

    Args:
      target: the target.
      population: `[tasks, ...]` networks (full weights, not task vectors).
      fishers: their diagonal Fishers (`diagonal_fisher`), same structure.
      coeffs: `[tasks]` nonnegative model weights `c_j`; default uniform.
      floor: each Fisher entry is at least this (so unused parameters average plainly).
      normalize: divide each member's Fisher by its L2 norm over all leaves first.

    Returns:
      one network.
    """
    n = _validate("fisher_merge", "population", target, population, batched=True)
    m = _validate("fisher_merge", "fishers", target, fishers, batched=True)
    if m != n:
        raise WeightspaceError(f"fisher_merge: {m} Fishers for {n} networks")
    c = np.full((n,), 1.0 / n) if coeffs is None else np.asarray(coeffs, np.float64)
    if c.shape != (n,) or np.any(c < 0) or not np.isfinite(c).all():
        raise WeightspaceError(
            f"fisher_merge: coeffs must be {n} nonnegative numbers, got {coeffs!r}"
        )
    if not floor > 0:
        raise WeightspaceError(f"fisher_merge: floor must be > 0, got {floor}")
    c = jnp.asarray(c, jnp.float32)
    if normalize:
        norms = jnp.sqrt(
            sum(
                jnp.sum(f.reshape(n, -1).astype(jnp.float32) ** 2, 1)
                for f in jax.tree.leaves(fishers)
            )
        )
        fishers = jax.tree.map(
            lambda f: f / jnp.maximum(norms, 1e-30).reshape((n,) + (1,) * (f.ndim - 1)), fishers
        )

    def merge_leaf(theta, f):
        w = c.reshape((n,) + (1,) * (theta.ndim - 1)) * jnp.maximum(f.astype(jnp.float32), floor)
        return (jnp.sum(w * theta, 0) / jnp.sum(w, 0)).astype(theta.dtype)

    return jax.tree.map(merge_leaf, population, fishers)
