"""Populations: many weight sets of one `Target`, stacked along a leading `targets` axis.

A population is a plain nested dict of arrays, each leaf `[targets, *leaf_shape]`. The
functions here stack and slice populations, flatten them to a `[targets, P]` matrix and
back (exactly), select leaves by path glob, and import/export dicts of numpy arrays,
including the PyTorch `state_dict` layout (`hyper.torch_layout`, re-exported here).
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper.errors import WeightspaceError, WeightspaceTypeError
from hyper.target import Target
from hyper.torch_layout import from_torch_state_dict, to_torch_state_dict, torch_key_map
from hyper.tree import Params, flatten_dict, nest

__all__ = [
    "concatenate",
    "flatten",
    "from_numpy",
    "from_torch_state_dict",
    "num_targets",
    "of_one",
    "only",
    "select",
    "stack",
    "take",
    "to_numpy",
    "to_torch_state_dict",
    "torch_key_map",
    "unflatten",
    "unstack",
    "update",
]


# One jitted program per tree structure (and index length), not one per leaf and shape.
@jax.jit
def _gather(tree: Params, idx: jax.Array) -> Params:
    return jax.tree.map(lambda v: v[idx], tree)


@jax.jit
def _stack(trees: list[Params]) -> Params:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@jax.jit
def _concatenate(trees: list[Params]) -> Params:
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)


@jax.jit
def _rows(leaves: list[jax.Array]) -> jax.Array:
    return jnp.concatenate([jnp.reshape(v, (v.shape[0], -1)) for v in leaves], axis=1)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _split_rows(
    matrix: jax.Array, shapes: tuple[tuple[int, ...], ...], dtypes: tuple[str, ...]
) -> list[jax.Array]:
    n, out, offset = matrix.shape[0], [], 0
    for shape, dtype in zip(shapes, dtypes, strict=True):
        size = math.prod(shape)
        out.append(matrix[:, offset : offset + size].reshape((n, *shape)).astype(dtype))
        offset += size
    return out


def num_targets(population: Params) -> int:
    """Size of the leading `targets` axis; raises if leaves disagree or the tree is empty."""
    leaves = jax.tree.leaves(population)
    if not leaves:
        raise WeightspaceError("population has no leaves")
    sizes = {int(np.shape(v)[0]) if np.ndim(v) else -1 for v in leaves}
    if len(sizes) != 1 or -1 in sizes:
        shapes = {p: tuple(np.shape(v)) for p, v in flatten_dict(population).items()}
        raise WeightspaceError(f"population leaves disagree on the targets axis: {shapes}")
    return sizes.pop()


def _check_leaves_match(what: str, trees: Sequence[Params], *, lead: int) -> None:
    """Raises ValueError naming the first leaf whose structure, shape (after `lead` axes) or
    dtype differs between ``trees[0]`` and another tree."""
    first = jax.tree.structure(trees[0])
    ref = flatten_dict(trees[0])
    for i, t in enumerate(trees[1:], 1):
        if jax.tree.structure(t) != first:
            raise WeightspaceError(f"{what}: [{i}] has a different structure from [0]")
        for path, b in flatten_dict(t).items():
            a = ref[path]
            if np.shape(a)[lead:] != np.shape(b)[lead:]:
                raise WeightspaceError(
                    f"{what}: leaf {path!r} has shape {np.shape(a)} in [0] and "
                    f"{np.shape(b)} in [{i}]"
                )
            if np.dtype(a.dtype) != np.dtype(b.dtype):
                raise WeightspaceError(
                    f"{what}: leaf {path!r} has dtype {a.dtype} in [0] and {b.dtype} in [{i}]"
                )


def stack(params_list: Sequence[Params]) -> Params:
    """Stacks single-target params into a population (leaves `[n, ...]`).

    Raises:
      ValueError: an empty list, or params whose structure, leaf shapes or dtypes differ.
    """
    if len(params_list) == 0:
        raise WeightspaceError("stack: empty list of params")
    _check_leaves_match("stack", params_list, lead=0)
    return _stack(list(params_list))


def unstack(population: Params) -> list[Params]:
    """Splits a population into a list of single-target params."""
    n = num_targets(population)
    return [_gather(population, jnp.int32(i)) for i in range(n)]


def of_one(params: Params) -> Params:
    """One network's params as a population of one (every leaf ``[1, ...]``), for the
    functions that take a population; `only` undoes it."""
    return jax.tree.map(lambda a: jnp.asarray(a)[None], params)


def only(population: Params) -> Params:
    """The params of a population of one, without the `targets` axis (`of_one` undone).

    Raises:
      ValueError: the population holds more or fewer than one target.
    """
    n = num_targets(population)
    if n != 1:
        raise WeightspaceError(f"only: expected a population of one target, got {n}")
    return jax.tree.map(lambda a: a[0], population)


def take(population: Params, index: Any) -> Params:
    """Targets selected along the `targets` axis.

    Args:
      index: a 1-D int array or sequence (a population of ``len(index)``, in that order,
        repeats allowed), a slice, a `[targets]` boolean mask, or a scalar int (one target's
        params without the `targets` axis, like ``unstack(population)[index]``).

    Raises:
      ValueError: an index out of range, a mask of the wrong length, or an index that is
        not integer or boolean, or has more than one axis.
    """
    n = num_targets(population)
    if isinstance(index, slice):
        index = np.arange(n)[index]
    idx = np.asarray(index)
    if idx.size == 0 and idx.dtype != bool:
        idx = idx.astype(np.int64)
    if idx.dtype != bool and not np.issubdtype(idx.dtype, np.integer):
        raise WeightspaceError(
            f"take: index must be integers or a boolean mask, got dtype {idx.dtype}"
        )
    if idx.ndim > 1:
        raise WeightspaceError(f"take: index must be a scalar or 1-D, got shape {idx.shape}")
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise WeightspaceError(
                f"take: boolean mask has shape {idx.shape}, population has {n} targets"
            )
        idx = np.nonzero(idx)[0]
    if idx.size and (idx.max() >= n or idx.min() < -n):
        raise WeightspaceError(f"take: index out of range for {n} targets: {idx.tolist()}")
    return _gather(population, jnp.asarray(idx % n if idx.size else idx, jnp.int32))


def concatenate(populations: Sequence[Params]) -> Params:
    """Concatenates populations of one target along the `targets` axis."""
    if len(populations) == 0:
        raise WeightspaceError("concatenate: no populations")
    for p in populations:
        num_targets(p)
    _check_leaves_match("concatenate", populations, lead=1)
    return _concatenate(list(populations))


def flatten(target: Target, population: Params, *, trainable_only: bool = False) -> jax.Array:
    """Population -> matrix `[targets, P]`, leaves in spec order, each row-major.

    Args:
      trainable_only: leave out non-trainable state (running statistics).
    """
    target.validate(population, batched=True)
    flat = flatten_dict(population)
    cols = [flat[s.path] for s in target.spec if s.trainable or not trainable_only]
    dtypes = {np.dtype(c.dtype) for c in cols}
    if len(dtypes) > 1:
        raise WeightspaceError(f"flatten: leaves have several dtypes {sorted(map(str, dtypes))}")
    return _rows(cols)


def unflatten(
    target: Target,
    matrix: jax.Array,
    *,
    trainable_only: bool = False,
    state: Params | None = None,
) -> Params:
    """Inverse of `flatten`: `[targets, P]` -> population.

    Args:
      trainable_only: `matrix` holds only trainable leaves; the others come from `state`
        (a population), or are initialised to zeros/ones by role if `state` is None.
    """
    dtype = getattr(matrix, "dtype", None) or np.asarray(matrix).dtype
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)) or (
        dtype == np.bool_
    ):
        raise WeightspaceTypeError(f"unflatten: matrix must hold real numbers, got dtype {dtype}")
    matrix = jnp.asarray(matrix)
    specs = [s for s in target.spec if s.trainable or not trainable_only]
    p_total = sum(s.size for s in specs)
    if matrix.ndim != 2 or matrix.shape[1] != p_total:
        raise WeightspaceError(
            f"unflatten: matrix has shape {matrix.shape}, expected (targets, {p_total}) "
            f"for {target.name}"
        )
    n = matrix.shape[0]
    leaves = _split_rows(matrix, tuple(s.shape for s in specs), tuple(s.dtype for s in specs))
    out: dict[str, Any] = {s.path: v for s, v in zip(specs, leaves, strict=True)}
    if trainable_only:
        state_flat = flatten_dict(state) if state is not None else {}
        for s in target.spec:
            if s.trainable:
                continue
            if state is not None:
                if s.path not in state_flat:
                    raise WeightspaceError(f"unflatten: state has no leaf {s.path!r}")
                v = state_flat[s.path]
                if tuple(np.shape(v)) != (n,) + s.shape:
                    raise WeightspaceError(
                        f"unflatten: state leaf {s.path!r} has shape {tuple(np.shape(v))}, "
                        f"expected {(n,) + s.shape}"
                    )
                out[s.path] = v
            else:
                fill = 1.0 if s.path.endswith("var") else 0.0
                out[s.path] = jnp.full((n,) + s.shape, fill, s.dtype)
    params = nest(out)
    target.validate(params, batched=True)
    return params


def select(target: Target, population: Params, *globs: str) -> dict[str, jax.Array]:
    """``{path: leaf}`` for the leaves whose path matches any glob (e.g. ``"*/kernel"``)."""
    if not globs:
        raise WeightspaceError("select: give at least one path glob")
    flat = flatten_dict(population)
    out = {p: v for p, v in flat.items() if any(fnmatch.fnmatchcase(p, g) for g in globs)}
    if not out:
        raise WeightspaceError(
            f"select: no leaf of {target.name} matches {list(globs)}; leaves: {target.paths}"
        )
    return out


def update(population: Params, leaves: Mapping[str, Any]) -> Params:
    """A copy of `population` with the leaves named by path replaced.

    Raises:
      ValueError: an unknown path, or a new leaf whose shape or dtype differs from the old.
    """
    flat = flatten_dict(population)
    for path, v in leaves.items():
        if path not in flat:
            raise WeightspaceError(f"update: no leaf {path!r}; leaves are {sorted(flat)}")
        if np.shape(v) != np.shape(flat[path]):
            raise WeightspaceError(
                f"update: leaf {path!r} has shape {np.shape(flat[path])}, got {np.shape(v)}"
            )
        old_dtype, new_dtype = np.dtype(flat[path].dtype), np.dtype(getattr(v, "dtype", None))
        if new_dtype != old_dtype:
            raise WeightspaceError(f"update: leaf {path!r} has dtype {old_dtype}, got {new_dtype}")
        flat[path] = v
    return nest(flat)


# ---------------------------------------------------------------------------------------
# numpy dicts
# ---------------------------------------------------------------------------------------


def to_numpy(params: Params) -> dict[str, np.ndarray]:
    """``{path: np.ndarray}`` (works for one target or a population)."""
    return {p: np.asarray(v) for p, v in flatten_dict(params).items()}


def from_numpy(target: Target, arrays: Mapping[str, Any], *, batched: bool = False) -> Params:
    """Params (or a population if `batched`) from ``{path: array}``, validated.

    Arrays become JAX arrays with `jnp.asarray` (so float64 becomes float32 unless x64 is
    enabled); the result must then match the target's shapes and dtypes exactly.

    Raises:
      TypeError: `arrays` is not a mapping of path strings.
      ValueError: a missing or extra path, or a wrong shape or dtype (see `Target.validate`).
    """
    if not isinstance(arrays, Mapping):
        raise WeightspaceTypeError(
            f"from_numpy: expected a mapping of path -> array, got {type(arrays).__name__}"
        )
    bad = [p for p in arrays if not isinstance(p, str)]
    if bad:
        raise WeightspaceTypeError(
            f"from_numpy: keys must be slash-separated path strings, got {bad}"
        )
    params = nest({p: jnp.asarray(v) for p, v in arrays.items()})
    target.validate(params, batched=batched)
    return params


def size_bytes(population: Params) -> int:
    """Total bytes of all leaves (typed PRNG keys count their key data)."""

    def nbytes(v: Any) -> int:
        if jnp.issubdtype(v.dtype, jax.dtypes.prng_key):
            v = jax.eval_shape(jax.random.key_data, v)
        return math.prod(np.shape(v)) * np.dtype(v.dtype).itemsize

    return int(sum(nbytes(v) for v in jax.tree.leaves(population)))
