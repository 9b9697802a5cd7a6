"""Compacting networks: how much each hidden unit matters, what a network costs, and
physical removal of units.

`group_importance` scores the units of each structural group (`hyper.symmetry`);
`count_params` and `count_flops` measure a network; `remove_units` slices the kept units
out of every axis of their group and returns a smaller standalone target
(`hyper.target.Target.derive`) with its params.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper import jaxpr as jaxpr_lib
from hyper.errors import WeightspaceError
from hyper.symmetry import (
    Group,
    StridedAxis,
    apply_on_leaves,
    entries,
    example_batch,
    structural_groups,
    take_units,
    units_first,
)
from hyper.target import Params, Target

__all__ = [
    "IMPORTANCE_METHODS",
    "IMPORTANCE_NORMALIZERS",
    "count_flops",
    "count_params",
    "group_importance",
    "remove_units",
]


IMPORTANCE_METHODS = ("l2", "l1", "random")
IMPORTANCE_NORMALIZERS = (None, "mean", "max")
# Leaves whose values say how much a unit matters; running statistics do not.
_IMPORTANCE_ROLES = ("kernel", "bias", "norm_scale", "norm_shift", "embedding")


def group_importance(
    target: Target,
    params: Params,
    *,
    method: str = "l2",
    normalizer: str | None = None,
    groups: Sequence[Group] | None = None,
    key: jax.Array | None = None,
    eps: float = 0.0,
) -> list[jax.Array]:
    """A score per hidden unit of each structural group (higher: more important).

    - ``"l2"`` (group-L2): the L2 norm of every trainable weight a unit owns across the
      group's axes: the producing kernels' out-slices, biases, norm scales and shifts, and
      the consuming kernels' in-slices;
    - ``"l1"``: the sum of their absolute values;
    - ``"random"``: uniform scores from `key` (a baseline).

    Args:
      target: the target.
      params: one network.
      method: ``"l2"``, ``"l1"`` or ``"random"``.
      normalizer: None, ``"mean"`` or ``"max"``: divide each group's scores by their mean
        or maximum, so that groups of different sizes and scales compare on one ranking.
      groups: default `structural_groups(target)`.
      key: needed for ``"random"``.
      eps: added under the square root of ``"l2"`` (``sqrt(sum w^2 + eps)``), so that the
        score has a finite gradient at all-zero units (for sparsity penalties).

    Returns:
      one float32 array `[group.size]` per group. Weights given as numpy arrays are scored
      with numpy on the host (``"l2"``/``"l1"``: nothing to compile for each new shape, as
      when pruning in rounds); JAX arrays with `jax.numpy` (traceable and differentiable).
    """
    if method not in IMPORTANCE_METHODS:
        raise WeightspaceError(
            f"importance method {method!r}; expected one of {IMPORTANCE_METHODS}"
        )
    if normalizer not in IMPORTANCE_NORMALIZERS:
        raise WeightspaceError(
            f"importance normalizer {normalizer!r}; expected one of {IMPORTANCE_NORMALIZERS}"
        )
    if method == "random" and key is None:
        raise WeightspaceError("importance method 'random' needs a key")
    groups = structural_groups(target) if groups is None else groups
    target.validate(params)
    index = {p: i for i, p in enumerate(target.paths)}
    leaves = jax.tree.leaves(params)
    keys = jax.random.split(key, max(len(groups), 1)) if method == "random" else None
    on_host = method != "random" and all(isinstance(a, np.ndarray) for a in leaves)
    xp = np if on_host else jnp
    out = []
    for gi, g in enumerate(groups):
        if method == "random":
            score = jax.random.uniform(keys[gi], (g.size,), jnp.float32)
        else:
            score = xp.zeros((g.size,), np.float32)
            for entry in entries(g):
                if target.spec[index[entry[0]]].role not in _IMPORTANCE_ROLES:
                    continue
                a = units_first(xp.asarray(leaves[index[entry[0]]], np.float32), entry)
                a = a.reshape(g.size, -1)
                score = score + (xp.sum(a * a, 1) if method == "l2" else xp.sum(xp.abs(a), 1))
            if method == "l2":
                score = xp.sqrt(score + np.float32(eps))
        if normalizer == "mean":
            score = score / (xp.mean(score) + np.float32(1e-12))
        elif normalizer == "max":
            score = score / (xp.max(score) + np.float32(1e-12))
        out.append(score)
    return out


def count_params(target: Target, *, trainable_only: bool = True) -> int:
    """Number of scalars of one network: trainable ones, or all (with running statistics)."""
    return sum(s.size for s in target.spec if s.trainable or not trainable_only)


def count_flops(target: Target, sample_input: Any = None) -> int:
    """Floating-point operations of one forward pass on one example (evaluation mode).

    Counts the multiply-adds of every ``dot_general`` and convolution in the traced apply as
    2 FLOPs each (the usual convention; elementwise ops, norms and pooling are not counted).

    Args:
      target: the target.
      sample_input: an input batch; default zeros of `target.input_shape`. The count is
        divided by its batch size.
    """
    x = example_batch(target, sample_input, batch=1)
    leaves = [jax.ShapeDtypeStruct(s.shape, np.dtype(s.dtype)) for s in target.spec]
    try:
        closed = jax.make_jaxpr(apply_on_leaves(target))(
            leaves, jax.ShapeDtypeStruct(x.shape, x.dtype)
        )
    except Exception as e:  # noqa: BLE001 - name the target in any tracing error
        raise WeightspaceError(f"{target.name}: cannot trace apply to count FLOPs: {e}") from e

    total = 0
    for eqn in jaxpr_lib.all_eqns(closed):  # every branch and loop body counted once
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2 * int(np.prod(out)) * int(np.prod([lhs[i] for i in lc]))
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out = eqn.outvars[0].aval.shape
            per_out = int(np.prod(rhs)) // rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2 * int(np.prod(out)) * per_out
    return total // max(int(x.shape[0]), 1)


def _keep_indices(g: Group, k: Any) -> np.ndarray:
    """Sorted unit indices of group `g` to keep, from a bool mask or an index array."""
    k = np.asarray(k)
    if k.dtype == bool:
        if k.shape != (g.size,):
            raise WeightspaceError(
                f"remove_units: group {g.name!r} has {g.size} units, got a mask of shape {k.shape}"
            )
        idx = np.flatnonzero(k)
    else:
        if k.ndim != 1 or not np.issubdtype(k.dtype, np.integer):
            raise WeightspaceError(
                f"remove_units: group {g.name!r}: keep a bool mask [{g.size}] or 1-D int "
                f"indices, got {k.dtype} {k.shape}"
            )
        idx = np.unique(k)
        if idx.size and (idx[0] < 0 or idx[-1] >= g.size):
            raise WeightspaceError(
                f"remove_units: group {g.name!r} has {g.size} units, got indices out of range"
            )
    if idx.size == 0:
        layer = ", ".join(g.producers) or g.name
        raise WeightspaceError(
            f"remove_units: removing every unit of group {g.name!r} (layer {layer}) would "
            "disconnect the network; keep at least one unit"
        )
    return idx


def remove_units(
    target: Target,
    params: Params,
    keep: Sequence[Any] | dict[str, Any],
    *,
    groups: Sequence[Group] | None = None,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    check: bool = True,
) -> tuple[Target, Params]:
    """Physically removes hidden units: a smaller standalone network, not a mask.

    Every axis of a group (the producers' out-axes, biases, norm parameters and running
    statistics, the consumers' in-axes) is sliced to the kept units, so the result computes
    what the original computes with the removed units' activations forced to zero in the
    consumers; a unit whose weights are all zero is removed without changing the function.

    Args:
      target: the target.
      params: one network (numpy or jax arrays).
      keep: per group, a bool mask `[size]` or int indices of units to keep, or None to
        keep all; a sequence aligned with `groups`, or a dict from group name.
      groups: default `structural_groups(target)`.
      name, config, check: as in `hyper.target.Target.derive`.

    Returns:
      ``(compact_target, compact_params)``; kept units stay in their original order.

    Raises:
      ValueError: a group would lose every unit (naming the group and its layers), a mask
        of the wrong size, or an unknown group name.
    """
    groups = list(structural_groups(target) if groups is None else groups)
    if isinstance(keep, dict):
        names = {g.name for g in groups}
        unknown = sorted(set(keep) - names)
        if unknown:
            raise WeightspaceError(
                f"remove_units: unknown groups {unknown}; groups are {sorted(names)}"
            )
        keep = [keep.get(g.name) for g in groups]
    keep = list(keep)
    if len(keep) != len(groups):
        raise WeightspaceError(f"remove_units: {len(keep)} keep entries for {len(groups)} groups")
    target.validate(params)
    index = {p: i for i, p in enumerate(target.paths)}
    leaves = [np.asarray(a) for a in jax.tree.leaves(params)]
    # (path, axis) -> (its split, the current sizes of that split's sub-axes)
    splits: dict[tuple[str, int], tuple[tuple[int, ...], list[int]]] = {}
    for g, k in zip(groups, keep, strict=True):
        if k is None:
            continue
        idx = _keep_indices(g, k)
        for entry in entries(g):
            if entry[0] not in index:
                raise WeightspaceError(
                    f"remove_units: group {g.name!r} names unknown leaf {entry[0]!r}"
                )
            if isinstance(entry, StridedAxis):
                # Another group may have shrunk a sibling sub-axis of this axis already
                # (a grouped conv: the groups and the channels within a group).
                orig, cur = splits.setdefault(
                    (entry.path, entry.axis), (entry.shape, list(entry.shape))
                )
                if orig != entry.shape:
                    raise WeightspaceError(
                        f"remove_units: leaf {entry.path!r} axis {entry.axis} is split two "
                        f"ways ({orig} and {entry.shape}) by different groups; remove "
                        "the units of one of them at a time"
                    )
                entry = entry._replace(shape=tuple(cur))
                cur[entry.sub] = len(idx)
            leaves[index[entry[0]]] = take_units(leaves[index[entry[0]]], entry, idx)
    # device_put, not jnp.asarray: the latter compiles a copy for every new shape
    new_params = jax.tree.unflatten(target.treedef, [jax.device_put(a) for a in leaves])
    new = target.derive(new_params, name=name, config=config, check=check)
    return new, new_params
