"""Permutation alignment of networks: weight matching, activation matching, Sinkhorn.

Two networks of one target that compute the same function can differ by a permutation of
the hidden units of every structural group (`hyper.symmetry.structural_groups`). Aligning
`b` to `a` finds, per group, the permutation that makes `b`'s weights closest to `a`'s;
`permute(target, b, perms)` then gives a network that computes exactly the function of
`b`, in `a`'s unit order. Averages and interpolations of aligned networks stay in one
basin far more often than naive ones (Git Re-Basin, Ainsworth et al. 2023).

- `weight_matching`: coordinate descent over groups (random order each sweep); for group
  `g`, ``A = sum over the axes g touches of W_a @ (W_b with the other groups permuted)^T``
  and `scipy.optimize.linear_sum_assignment` maximises ``sum_i A[i, perm[i]]``; a group's
  permutation changes only if the objective strictly improves; stops after a sweep
  without improvement or `max_iter` sweeps. The descent runs from two starts, the identity
  and a matching of each unit's sorted weights (features no other group's permutation
  changes), and keeps, per pair, the larger `weight_matching_objective` ``sum <W_a, W_b>``:
  with nested groups such as attention heads and the dims within a head, the identity
  start can stop in a local optimum (a permuted copy is then not recovered) that the second
  start avoids. On trained pairs the objective barely predicts the loss barrier (rank
  correlation -0.16 to -0.04 over 10 starts, `bench/merge.py`'s CNNs, 15 pairs per width);
  two starts are no worse than one, ten no better than two (bench/merge.py): hence two.
- `activation_matching`: per group, the summed Pearson correlation between the hidden
  activations of `a` and `b` on a data batch (`hyper.symmetry.group_activations`: the traced
  apply is re-evaluated and every value carrying the group is read), then one linear
  assignment per group (groups are independent given activations).
- `sinkhorn_alignment`: OT-fusion style soft alignment; the same similarities (activations
  if a batch is given, else weights after weight matching), normalised by their largest
  magnitude, give a doubly-stochastic transport plan per group by entropic Sinkhorn
  iterations (log domain). `hard_projection` turns plans into permutations and
  `apply_transport` applies plans (soft permutations) to a network.

Layers the structural analysis leaves out (`hyper.symmetry.left_out`: a hidden axis that
an unsupported primitive such as a sort touches) keep their unit order, so the result is
still exact: every entry point warns once per target naming each layer, the primitive and
what to change, and does not refuse.

The `pairwise_*` functions align many pairs at once: similarity matrices for all pairs are
computed in one jitted `vmap`, and the linear assignments run on the host per pair.
`align_population` aligns every member of a population to a reference.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from hyper import population as pop
from hyper import symmetry
from hyper.errors import WeightspaceError
from hyper.symmetry import Group
from hyper.target import Params, Target

__all__ = [
    "activation_matching",
    "activation_similarity",
    "align_population",
    "apply_transport",
    "hard_projection",
    "pairwise_activation_matching",
    "pairwise_sinkhorn_alignment",
    "pairwise_weight_matching",
    "sinkhorn",
    "sinkhorn_alignment",
    "weight_matching",
    "weight_matching_objective",
]

METHODS = ("weight", "activation", "sinkhorn")


# --- Validation helpers ------------------------------------------------------------


def _validate(fn: str, what: str, target: Target, params: Params, *, batched: bool) -> int | None:
    """`target.validate` with the calling function and argument named in the message."""
    try:
        return target.validate(params, batched=batched)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{fn}: {what}: {e}") from None


def _is_population(target: Target, params: Params) -> bool:
    """Whether `params` carries a leading `targets` axis (judged on the first leaf)."""
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise WeightspaceError(f"{target.name}: params have no leaves")
    return np.ndim(leaves[0]) == len(target.spec[0].shape) + 1


def _pair_populations(fn: str, target: Target, population_a: Params, population_b: Params) -> int:
    na = _validate(fn, "population_a", target, population_a, batched=True)
    nb = _validate(fn, "population_b", target, population_b, batched=True)
    if na != nb:
        raise WeightspaceError(f"{fn}: population_a has {na} targets, population_b has {nb}")
    return int(na)


def _one_pair(fn: str, target: Target, params_a: Params, params_b: Params) -> tuple[Params, Params]:
    """Two networks, validated, as populations of one (for the one-pair cases)."""
    _validate(fn, "params_a", target, params_a, batched=False)
    _validate(fn, "params_b", target, params_b, batched=False)
    return pop.of_one(params_a), pop.of_one(params_b)


def _check_x(fn: str, target: Target, x: Any) -> jax.Array:
    x = jnp.asarray(x)
    if target.input_shape is not None and tuple(x.shape[1:]) != tuple(target.input_shape):
        raise WeightspaceError(
            f"{fn}: inputs have shape {tuple(x.shape)}, {target.name} takes "
            f"(batch, {', '.join(map(str, target.input_shape))})"
        )
    return x


_WARNED: weakref.WeakSet = weakref.WeakSet()


def _groups(fn: str, target: Target) -> tuple[Group, ...]:
    """The target's structural groups; warns once per target about left-out layers."""
    groups = tuple(symmetry.structural_groups(target))
    if target not in _WARNED:
        _WARNED.add(target)
        missing = symmetry.left_out(target)
        if missing:
            listed = "; ".join(
                f"{m.path} axis {m.axis} (layer {m.layer!r}: {m.primitive}, {m.reason})"
                for m in missing
            )
            warnings.warn(
                f"{fn}: {target.name}: these hidden layers are in no structural group and are "
                f"left unaligned (their units keep their order; the result still computes the "
                f"same function): {listed}. To align them, replace the named primitive on "
                "those axes with supported operations.",
                UserWarning,
                stacklevel=3,
            )
    return groups


def _seed(key: jax.Array | None) -> np.random.Generator:
    """A NumPy generator from a JAX key (host-side randomness compiles nothing)."""
    if key is None:
        return np.random.default_rng(0)
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint64).tolist())


def _lap(score: np.ndarray) -> np.ndarray:
    """The permutation maximising ``sum_i score[i, perm[i]]``."""
    rows, cols = linear_sum_assignment(score, maximize=True)
    assert np.array_equal(rows, np.arange(len(rows)))
    return cols.astype(np.int32)


# --- Weight matching ---------------------------------------------------------------


def _axes_by_leaf(target: Target, groups: Sequence[Group]) -> dict[int, list[tuple[int, Any]]]:
    """Leaf index -> [(group index, entry)] for every group entry (whole or strided axis)."""
    index = {p: i for i, p in enumerate(target.paths)}
    out: dict[int, list[tuple[int, Any]]] = {}
    for gi, g in enumerate(groups):
        for entry in symmetry.entries(g):
            out.setdefault(index[entry[0]], []).append((gi, entry))
    return out


def _weight_similarity(
    target: Target,
    groups: Sequence[Group],
    gi: int,
    leaves_a: Sequence[jax.Array],
    leaves_b: Sequence[jax.Array],
    perms: Sequence[jax.Array],
) -> jax.Array:
    """`[n, n]` similarity of group `gi`'s units of `a` and `b`, the other groups of `b`
    permuted by `perms`: ``A[i, j] = sum over axes <slice i of W_a, slice j of W_b>``."""
    by_leaf = _axes_by_leaf(target, groups)
    index = {p: i for i, p in enumerate(target.paths)}
    n = groups[gi].size
    total = jnp.zeros((n, n), jnp.float32)
    for entry in symmetry.entries(groups[gi]):
        i = index[entry[0]]
        wa, wb = leaves_a[i], leaves_b[i]
        for gj, other in by_leaf[i]:
            if (gj, other) != (gi, entry):
                wb = symmetry.take_units(wb, other, perms[gj])
        wa = symmetry.units_first(wa, entry).reshape(n, -1).astype(jnp.float32)
        wb = symmetry.units_first(wb, entry).reshape(n, -1).astype(jnp.float32)
        total = total + wa @ wb.T
    return total


@functools.lru_cache(maxsize=64)
def _similarity_fn(target: Target, groups: tuple[Group, ...], gi: int):
    def one(la, lb, perms):
        return _weight_similarity(target, groups, gi, la, lb, perms)

    return jax.jit(jax.vmap(one))


def pairwise_weight_matching(
    target: Target,
    population_a: Params,
    population_b: Params,
    *,
    key: jax.Array | None = None,
    max_iter: int = 100,
    init: Sequence[Any] | None = None,
) -> list[np.ndarray]:
    """Weight matching of member `i` of `population_b` to member `i` of `population_a`.

    Args:
      target: the target of both populations.
      population_a, population_b: populations of equal size `pairs`.
      key: randomness for the group order of each sweep (default: a fixed order seed).
      max_iter: at most this many sweeps over all groups.
      init: starting permutations, one `[pairs, size]` array per group (one descent);
        default: per pair, the better descent (ties: the identity's) from the identity and
        from the sorted-weight start (see the module docstring for why).

    Returns:
      one `[pairs, size]` int32 array per group; ``permute(target, b_i, perms_i)`` is
      member `i` of `b` aligned to member `i` of `a`.

    Raises:
      ValueError: the populations do not match `target` or differ in size (the message
        names the leaf and both shapes), or `max_iter < 1`.
    """
    pairs = _pair_populations("weight_matching", target, population_a, population_b)
    if max_iter < 1:
        raise WeightspaceError(f"weight_matching: max_iter must be >= 1, got {max_iter}")
    groups = _groups("weight_matching", target)
    la, lb = jax.tree.leaves(population_a), jax.tree.leaves(population_b)
    if init is not None:
        if len(init) != len(groups):
            raise WeightspaceError(
                f"weight_matching: init has {len(init)} entries, {len(groups)} groups"
            )
        perms = [
            np.array(p, np.int32).reshape(pairs, g.size) for p, g in zip(init, groups, strict=True)
        ]
        return _descend(target, groups, la, lb, perms, _seed(key), max_iter)
    if not groups:
        return []
    identity = [np.tile(np.arange(g.size, dtype=np.int32), (pairs, 1)) for g in groups]
    starts = [identity, _sorted_start(target, groups, la, lb)]
    # Each start its own generator from `key`: its result does not depend on the other's.
    results = [_descend(target, groups, la, lb, p, _seed(key), max_iter) for p in starts]
    objectives = [weight_matching_objective(target, population_a, population_b, r) for r in results]
    best = np.argmax(np.stack(objectives), axis=0)  # per pair; ties keep the identity start
    return [np.stack([results[best[p]][gi][p] for p in range(pairs)]) for gi in range(len(groups))]


def _descend(target, groups, la, lb, perms, rng, max_iter) -> list[np.ndarray]:
    """Coordinate descent over groups from `perms` (see `pairwise_weight_matching`)."""
    perms = [np.array(p, np.int32) for p in perms]
    if not groups:
        return perms
    pairs = perms[0].shape[0]
    for _ in range(max_iter):
        progress = False
        for gi in rng.permutation(len(groups)):
            score = np.asarray(
                _similarity_fn(target, groups, int(gi))(la, lb, [jnp.asarray(p) for p in perms]),
                np.float64,
            )
            rows = np.arange(groups[gi].size)
            for p in range(pairs):
                new = _lap(score[p])
                old_obj = score[p][rows, perms[gi][p]].sum()
                new_obj = score[p][rows, new].sum()
                if new_obj > old_obj + 1e-7 * abs(old_obj) + 1e-12:
                    perms[gi][p] = new
                    progress = True
        if not progress:
            break
    return perms


def _sorted_start(target, groups, la, lb) -> list[np.ndarray]:
    """Starting permutations from features of each unit that no other group's permutation
    changes: the sorted values of the unit's slices (e.g. an attention head's weights,
    whatever the order of the head dims). A permuted copy is matched exactly."""
    index = {p: i for i, p in enumerate(target.paths)}
    perms = []
    for g in groups:
        fa, fb = [], []
        for entry in symmetry.entries(g):
            i = index[entry[0]]
            for leaves, out in ((la, fa), (lb, fb)):
                w = np.asarray(leaves[i], np.float64)
                w = np.stack([np.asarray(symmetry.units_first(m, entry)) for m in w])
                out.append(np.sort(w.reshape(w.shape[0], g.size, -1), axis=-1))
        fa, fb = np.concatenate(fa, -1), np.concatenate(fb, -1)
        dist = (
            np.sum(fa * fa, -1)[:, :, None]
            - 2 * np.einsum("pif,pjf->pij", fa, fb)
            + np.sum(fb * fb, -1)[:, None, :]
        )
        perms.append(np.stack([_lap(-d) for d in dist]).astype(np.int32))
    return perms


def weight_matching_objective(
    target: Target, population_a: Params, population_b: Params, perms: Sequence[Any]
) -> np.ndarray:
    """What weight matching maximises, per pair: ``sum over leaves <W_a, W_b permuted>``.

    Args:
      target: the target of both populations.
      population_a, population_b: populations of equal size `pairs`.
      perms: one `[pairs, size]` array per group, as `pairwise_weight_matching` returns.

    Returns:
      `[pairs]` float64 values (leaves that no group touches add a constant).
    """
    pairs = _pair_populations("weight_matching", target, population_a, population_b)
    groups = _groups("weight_matching", target)
    if len(perms) != len(groups):
        raise WeightspaceError(
            f"weight_matching_objective: {len(perms)} permutations for {len(groups)} groups"
        )
    perms = [
        jnp.asarray(p, jnp.int32).reshape(pairs, g.size) for p, g in zip(perms, groups, strict=True)
    ]
    aligned = symmetry.permute(target, population_b, perms, groups=groups, batched=True)
    total = 0.0
    for a, b in zip(jax.tree.leaves(population_a), jax.tree.leaves(aligned), strict=True):
        prod = np.asarray(a, np.float64) * np.asarray(b, np.float64)
        total = total + prod.reshape(prod.shape[0], -1).sum(-1)
    return np.asarray(total)


def weight_matching(
    target: Target,
    params_a: Params,
    params_b: Params,
    *,
    key: jax.Array | None = None,
    max_iter: int = 100,
) -> list[np.ndarray]:
    """Permutations (one `[size]` array per group) aligning network `b` to network `a`.

    See `pairwise_weight_matching`; this is the one-pair case.
    """
    pa, pb = _one_pair("weight_matching", target, params_a, params_b)
    perms = pairwise_weight_matching(target, pa, pb, key=key, max_iter=max_iter)
    return [p[0] for p in perms]


# --- Activation matching -----------------------------------------------------------


def _correlation(za: jax.Array, zb: jax.Array) -> jax.Array:
    """Pearson correlation `[n, n]` between the columns of `za` and `zb` (`[rows, n]`)."""
    za = za.astype(jnp.float32)
    zb = zb.astype(jnp.float32)
    za = za - za.mean(0, keepdims=True)
    zb = zb - zb.mean(0, keepdims=True)
    sa = jnp.sqrt(jnp.mean(za * za, 0))
    sb = jnp.sqrt(jnp.mean(zb * zb, 0))
    cov = za.T @ zb / za.shape[0]
    # A dead unit (zero variance) correlates with nothing.
    return cov / (sa[:, None] * sb[None, :] + 1e-8)


@functools.lru_cache(maxsize=64)
def _activation_fn(target: Target, kind: str):
    def one(pa, pb, x):
        acts_a = symmetry.group_activations(target, pa, x, kind=kind)
        acts_b = symmetry.group_activations(target, pb, x, kind=kind)
        out = []
        for za_list, zb_list, g in zip(
            acts_a, acts_b, symmetry.structural_groups(target), strict=True
        ):
            if not za_list:
                out.append(jnp.zeros((g.size, g.size), jnp.float32))
                continue
            corr = sum(_correlation(za, zb) for za, zb in zip(za_list, zb_list, strict=True))
            out.append(corr / len(za_list))
        return out

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


def activation_similarity(
    target: Target,
    population_a: Params,
    population_b: Params,
    x: Any,
    *,
    kind: str = "both",
) -> list[jax.Array]:
    """Per group, the mean Pearson correlation of the hidden units of pairs of networks.

    Args:
      target: the target.
      population_a, population_b: populations of equal size `pairs`.
      x: an input batch `[batch, ...]` shared by all networks.
      kind: which intermediate values carry a group (see
        `hyper.symmetry.group_activations`); ``"both"`` = inputs and outputs of the
        contractions (post-activation features and pre-activations).

    Returns:
      one `[pairs, size, size]` array per group; entry ``[p, i, j]`` is the correlation of
      unit `i` of `a_p` with unit `j` of `b_p`, averaged over the values that carry it.
      Computed in one jitted `vmap` over pairs.
    """
    _pair_populations("activation_matching", target, population_a, population_b)
    x = _check_x("activation_matching", target, x)
    _groups("activation_matching", target)
    return _activation_fn(target, kind)(population_a, population_b, x)


def pairwise_activation_matching(
    target: Target,
    population_a: Params,
    population_b: Params,
    x: Any,
    *,
    kind: str = "both",
) -> list[np.ndarray]:
    """Activation matching of member `i` of `population_b` to member `i` of `population_a`.

    One linear assignment per group and pair on `activation_similarity`.

    Returns:
      one `[pairs, size]` int32 array per group (see `pairwise_weight_matching`).
    """
    sims = activation_similarity(target, population_a, population_b, x, kind=kind)
    return [np.stack([_lap(s) for s in np.asarray(sim, np.float64)]) for sim in sims]


def activation_matching(
    target: Target, params_a: Params, params_b: Params, x: Any, *, kind: str = "both"
) -> list[np.ndarray]:
    """Permutations (one `[size]` array per group) aligning `b` to `a` by activations on `x`."""
    pa, pb = _one_pair("activation_matching", target, params_a, params_b)
    return [p[0] for p in pairwise_activation_matching(target, pa, pb, x, kind=kind)]


# --- Sinkhorn soft alignment -------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("num_iters",))
def sinkhorn(
    scores: jax.Array, reg: float = 0.05, num_iters: int = 10000, tol: float = 1e-5
) -> jax.Array:
    """Entropic optimal transport with uniform marginals (a doubly-stochastic matrix).

    Maximises ``<T, scores> + reg * H(T)`` over `[..., n, n]` matrices whose rows and
    columns each sum to 1, by Sinkhorn iterations in the log domain (stable for small
    `reg`). As ``reg -> 0`` the plan tends to the permutation matrix of the linear
    assignment of `scores`.

    Args:
      scores: `[..., n, n]` similarities (higher = more alike); batched over leading axes.
      reg: entropic regularisation, in the units of `scores`.
      num_iters: at most this many iterations (each normalises rows, then columns).
      tol: stop once every row sum is within `tol` of 1 (columns are exact after each
        iteration).

    Returns:
      `[..., n, n]` plans.
    """
    scores = jnp.asarray(scores, jnp.float32)
    if scores.ndim < 2 or scores.shape[-1] != scores.shape[-2]:
        raise WeightspaceError(f"sinkhorn: scores must be [..., n, n], got shape {scores.shape}")
    # Potentials in the units of `scores`, so they carry over while epsilon shrinks
    # (epsilon scaling: start at the scores' spread, decay to `reg`; far fewer iterations
    # than running at a small `reg` from the start).
    eps0 = jnp.maximum(jnp.max(scores) - jnp.min(scores), reg)
    f = jnp.zeros(scores.shape[:-1], scores.dtype)
    g = jnp.zeros(scores.shape[:-2] + scores.shape[-1:], scores.dtype)

    def plan_log(f, g, eps):
        return (scores + f[..., :, None] + g[..., None, :]) / eps

    def cond(state):
        i, _, _, err = state
        return (i < num_iters) & (err > tol)

    def body(state):
        i, f, g, _ = state
        eps = jnp.maximum(reg, eps0 * 0.9**i)
        f = -eps * jax.nn.logsumexp((scores + g[..., None, :]) / eps, axis=-1)
        g = -eps * jax.nn.logsumexp((scores + f[..., :, None]) / eps, axis=-2)
        rows = jax.nn.logsumexp(plan_log(f, g, eps), axis=-1)
        err = jnp.where(eps > reg, jnp.inf, jnp.max(jnp.abs(jnp.expm1(rows))))
        return i + 1, f, g, err

    init = (jnp.asarray(0), f, g, jnp.asarray(jnp.inf, scores.dtype))
    _, f, g, _ = jax.lax.while_loop(cond, body, init)
    return jnp.exp(plan_log(f, g, jnp.asarray(reg, scores.dtype)))


def hard_projection(plans: Any) -> Any:
    """The permutation closest to each plan: linear assignment maximising ``sum T[i, p[i]]``.

    Args:
      plans: `[..., n, n]` transport plans (or any scores), or a list of them (one per
        group, as `sinkhorn_alignment` returns).

    Returns:
      `[..., n]` int32 permutations (for `hyper.symmetry.permute`), or a list of them.
    """
    if isinstance(plans, list | tuple):
        return [hard_projection(p) for p in plans]
    plans = np.asarray(plans, np.float64)
    flat = plans.reshape(-1, *plans.shape[-2:])
    return np.stack([_lap(t) for t in flat]).reshape(plans.shape[:-1])


def _normalised(scores: jax.Array) -> jax.Array:
    scale = jnp.max(jnp.abs(scores), axis=(-2, -1), keepdims=True)
    return scores / jnp.maximum(scale, 1e-12)


def pairwise_sinkhorn_alignment(
    target: Target,
    population_a: Params,
    population_b: Params,
    *,
    x: Any = None,
    reg: float = 0.05,
    num_iters: int = 10000,
    key: jax.Array | None = None,
    max_iter: int = 100,
    kind: str = "both",
) -> list[jax.Array]:
    """Soft (OT-fusion style) alignment of member `i` of `b` to member `i` of `a`.

    Similarities per group: `activation_similarity` on `x` if given; otherwise the weight
    similarity of `weight_matching`, with the other groups of `b` permuted by the hard
    weight-matching solution. Each similarity matrix is divided by its largest magnitude,
    so `reg` is relative (0.05: nearly hard; 1: nearly uniform).

    Returns:
      one `[pairs, size, size]` doubly-stochastic plan per group; ``T[p, i, j]`` is how much
      of unit `j` of `b_p` goes to position `i` (see `apply_transport`).
    """
    pairs = _pair_populations("sinkhorn_alignment", target, population_a, population_b)
    if reg <= 0:
        raise WeightspaceError(f"sinkhorn_alignment: reg must be > 0, got {reg}")
    if x is not None:
        sims = activation_similarity(target, population_a, population_b, x, kind=kind)
    else:
        groups = _groups("sinkhorn_alignment", target)
        perms = pairwise_weight_matching(
            target, population_a, population_b, key=key, max_iter=max_iter
        )
        la, lb = jax.tree.leaves(population_a), jax.tree.leaves(population_b)
        jperms = [jnp.asarray(p) for p in perms]
        sims = [_similarity_fn(target, groups, gi)(la, lb, jperms) for gi in range(len(groups))]
    del pairs
    return [sinkhorn(_normalised(s), reg, num_iters) for s in sims]


def sinkhorn_alignment(
    target: Target,
    params_a: Params,
    params_b: Params,
    *,
    x: Any = None,
    reg: float = 0.05,
    num_iters: int = 10000,
    key: jax.Array | None = None,
    max_iter: int = 100,
) -> list[jax.Array]:
    """Soft alignment plans (one `[size, size]` per group) of network `b` to network `a`.

    See `pairwise_sinkhorn_alignment`; this is the one-pair case.
    """
    pa, pb = _one_pair("sinkhorn_alignment", target, params_a, params_b)
    plans = pairwise_sinkhorn_alignment(
        target, pa, pb, x=x, reg=reg, num_iters=num_iters, key=key, max_iter=max_iter
    )
    return [t[0] for t in plans]


def apply_transport(
    target: Target, params: Params, plans: Sequence[Any], *, batched: bool = False
) -> Params:
    """Applies soft permutations: along every axis of group `g`, ``new = T_g @ old``.

    With permutation matrices (``T[i, perm[i]] = 1``) this equals
    ``hyper.symmetry.permute(target, params, perms)``. With soft plans the result is an
    OT-fusion style barycentric mix of units; it is *not* function-preserving in general
    (nonlinearities do not commute with averaging), which is why fusion averages it with
    the reference network.

    Args:
      target: the target.
      params: one network, or a population if `batched`.
      plans: one `[size, size]` matrix per group (`[targets, size, size]` if `batched`).

    Returns:
      params of the same structure.
    """
    groups = _groups("apply_transport", target)
    if len(plans) != len(groups):
        raise WeightspaceError(f"apply_transport: {len(plans)} plans for {len(groups)} groups")
    for g, t in zip(groups, plans, strict=True):
        want = (g.size, g.size)
        if tuple(np.shape(t))[-2:] != want or np.ndim(t) != 2 + batched:
            raise WeightspaceError(
                f"apply_transport: group {g.name!r} needs a {want} plan"
                f"{' per target' if batched else ''}, got shape {tuple(np.shape(t))}"
            )
    _validate("apply_transport", "params", target, params, batched=batched)
    if batched:
        return jax.vmap(lambda p, t: apply_transport(target, p, t))(params, list(plans))
    index = {p: i for i, p in enumerate(target.paths)}
    leaves = list(jax.tree.leaves(params))
    for g, t in zip(groups, plans, strict=True):
        for entry in symmetry.entries(g):
            i = index[entry[0]]
            v = jnp.asarray(leaves[i])
            units = symmetry.units_first(v, entry)
            moved = jnp.tensordot(jnp.asarray(t, v.dtype), units, axes=1)
            leaves[i] = symmetry.units_restore(moved, entry, v.shape).astype(v.dtype)
    return jax.tree.unflatten(target.treedef, leaves)


# --- Populations -------------------------------------------------------------------


def align_population(
    target: Target,
    population: Params,
    reference: Params | None = None,
    *,
    method: str = "weight",
    x: Any = None,
    key: jax.Array | None = None,
    max_iter: int = 100,
    reg: float = 0.05,
    kind: str = "both",
) -> tuple[Params, list[Any]]:
    """Aligns every member of `population` to a reference network.

    Args:
      target: the target.
      population: `[targets, ...]` networks to align.
      reference: None (member 0 of `population`), one network (every member is aligned to
        it), or a population of the same size (member `i` to reference member `i`).
      method: ``"weight"`` (weight matching), ``"activation"`` (needs `x`) or
        ``"sinkhorn"`` (soft plans; activations if `x` is given, else weights).
      x: an input batch for activation-based methods.
      key: randomness of weight matching's group order.
      max_iter: weight matching sweeps.
      reg: Sinkhorn regularisation (relative to the largest similarity).
      kind: which activations carry a group (see `activation_similarity`).

    Returns:
      ``(aligned, alignment)``: the aligned population, and per group the `[targets, size]`
      permutations (or `[targets, size, size]` plans for ``"sinkhorn"``). Hard alignments
      keep every member's function exactly.

    Raises:
      ValueError: an unknown method, a missing `x`, or networks whose leaves do not match
        `target` (the message names the leaf and shapes).
    """
    if method not in METHODS:
        raise WeightspaceError(f"align_population: unknown method {method!r}; expected {METHODS}")
    n = _validate("align_population", "population", target, population, batched=True)
    if reference is None:
        ref = jax.tree.map(lambda v: jnp.broadcast_to(v[0], v.shape), population)
    elif _is_population(target, reference):
        m = _validate("align_population", "reference", target, reference, batched=True)
        if m != n:
            raise WeightspaceError(
                f"align_population: reference has {m} targets, population has {n}"
            )
        ref = reference
    else:
        _validate("align_population", "reference", target, reference, batched=False)
        ref = jax.tree.map(lambda v: jnp.broadcast_to(v, (n, *np.shape(v))), reference)
    if method == "activation" and x is None:
        raise WeightspaceError("align_population: method='activation' needs an input batch x")
    if method == "weight":
        perms = pairwise_weight_matching(target, ref, population, key=key, max_iter=max_iter)
    elif method == "activation":
        perms = pairwise_activation_matching(target, ref, population, x, kind=kind)
    else:
        plans = pairwise_sinkhorn_alignment(
            target, ref, population, x=x, reg=reg, key=key, max_iter=max_iter, kind=kind
        )
        return apply_transport(target, population, plans, batched=True), plans
    aligned = symmetry.permute(target, population, [jnp.asarray(p) for p in perms], batched=True)
    return aligned, perms
