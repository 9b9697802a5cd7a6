"""Conditions of a hypernetwork: what a generated network is generated *for*.

A condition set is declared once as a tuple of specs and passed as a dict of arrays with a
leading batch axis `[M, ...]`:

- `Continuous(name, shape)`: numbers in [low, high] (hyperparameters, loss weights),
  rescaled to [0, 1] and then encoded (MIP's cos|sin by default);
- `Categorical(name, num_classes, dim)`: integer ids (task, class subset) with learned
  embeddings;
- `Vector(name, dim)`: free vectors (e.g. a data-set embedding), used as given;
- `Noise(name, dim)`: standard normal inputs, sampled from a key when not given.

`validate` checks a batch of conditions against the specs *before* anything is compiled
and raises `ValueError` naming the condition, its shape or its out-of-range values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper.errors import WeightspaceError, WeightspaceTypeError

__all__ = [
    "ENCODINGS",
    "Categorical",
    "Condition",
    "Continuous",
    "Noise",
    "Vector",
    "encode",
    "fill_noise",
    "from_json",
    "sample",
    "sample_one",
    "to_json",
    "validate",
]

ENCODINGS = ("cos|sin", "z|1-z", "raw", "normalize")
"""Input encodings of continuous conditions (γ rescaled to [0, 1]):

- ``cos|sin`` (MIP): [cos(πγ/2), sin(πγ/2)] per scalar, constant L2 norm √D;
- ``z|1-z``: [γ, 1-γ], constant L1 norm;
- ``raw``: γ as is (the default parametrization: output scale follows ‖γ‖);
- ``normalize``: γ/‖γ‖ (ε-guarded).
"""


@dataclasses.dataclass(frozen=True)
class Continuous:
    """A continuous condition: numbers of shape `shape` in [low, high] per generated network
    (a hyperparameter, a loss weight), rescaled to [0, 1] and then encoded (`ENCODINGS`)."""

    name: str
    shape: tuple[int, ...] = ()
    low: float = 0.0
    high: float = 1.0

    kind = "continuous"

    def __post_init__(self):
        shape = (self.shape,) if _is_int(self.shape) else self.shape
        if not isinstance(shape, tuple | list) or not all(_is_int(d) for d in shape):
            raise WeightspaceTypeError(
                f"condition {self.name!r}: shape must be a tuple of ints, got {self.shape!r}"
            )
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))


@dataclasses.dataclass(frozen=True)
class Categorical:
    """A categorical condition: integer ids in [0, num_classes) (a task, a class subset),
    each with a learned embedding of `dim` values."""

    name: str
    num_classes: int
    dim: int = 8

    kind = "categorical"
    shape = ()


@dataclasses.dataclass(frozen=True)
class Vector:
    """A free vector of `dim` values per generated network (e.g. a data-set embedding),
    used as given."""

    name: str
    dim: int

    kind = "vector"

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.dim,)


@dataclasses.dataclass(frozen=True)
class Noise:
    """`dim` standard normal inputs per generated network, sampled from a key when the
    conditions do not give them."""

    name: str
    dim: int

    kind = "noise"

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.dim,)


Condition = Continuous | Categorical | Vector | Noise
"""Any condition spec: `Continuous`, `Categorical`, `Vector` or `Noise`."""
_KINDS = {"continuous": Continuous, "categorical": Categorical, "vector": Vector, "noise": Noise}


def check_specs(specs: Sequence[Condition]) -> tuple[Condition, ...]:
    """Validates a declaration of conditions (unique names, positive sizes, low < high)."""
    if isinstance(specs, Continuous | Categorical | Vector | Noise):
        specs = (specs,)
    specs = tuple(specs)
    if not specs:
        raise WeightspaceError("a hypernetwork needs at least one condition")
    for s in specs:
        if not isinstance(s, Continuous | Categorical | Vector | Noise):
            raise WeightspaceTypeError(f"not a condition spec: {s!r}")
        if not isinstance(s.name, str) or not s.name:
            raise WeightspaceError(f"condition name must be a non-empty string, got {s.name!r}")
        if isinstance(s, Continuous):
            if any(d < 1 for d in s.shape):
                raise WeightspaceError(f"condition {s.name!r}: shape {s.shape} must be positive")
            if not all(_is_real(v) for v in (s.low, s.high)) or not s.low < s.high:
                raise WeightspaceError(
                    f"condition {s.name!r}: need finite low < high, got {s.low!r}, {s.high!r}"
                )
        elif isinstance(s, Categorical):
            if not (_is_int(s.num_classes) and _is_int(s.dim) and min(s.num_classes, s.dim) >= 1):
                raise WeightspaceError(
                    f"condition {s.name!r}: num_classes and dim must be ints >= 1, got "
                    f"{s.num_classes!r}, {s.dim!r}"
                )
        elif not (_is_int(s.dim) and s.dim >= 1):
            raise WeightspaceError(f"condition {s.name!r}: dim must be an int >= 1, got {s.dim!r}")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise WeightspaceError(f"condition names must be unique, got {names}")
    return specs


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and bool(np.isfinite(v))


def to_json(specs: Sequence[Condition]) -> list[dict[str, Any]]:
    """The specs as JSON objects (``kind`` plus the dataclass fields)."""
    return [{"kind": s.kind, **dataclasses.asdict(s)} for s in specs]


def from_json(items: Sequence[Mapping[str, Any]]) -> tuple[Condition, ...]:
    """The specs `to_json` wrote, checked (`check_specs`)."""
    out = []
    for d in items:
        d = dict(d)
        kind = d.pop("kind", None)
        if kind not in _KINDS:
            raise WeightspaceError(
                f"unknown condition kind {kind!r}; expected one of {sorted(_KINDS)}"
            )
        if "shape" in d:
            try:
                d["shape"] = tuple(int(x) for x in d["shape"])
            except (TypeError, ValueError):
                raise WeightspaceError(
                    f"condition shape must be a list of ints, got {d['shape']!r}"
                ) from None
        out.append(_KINDS[kind](**d))
    return check_specs(out)


def validate(
    specs: Sequence[Condition], conditions: Mapping[str, Any], *, allow_missing_noise: bool = True
) -> int:
    """Checks a batch of conditions; returns the batch size M.

    Raises:
      TypeError: `conditions` is not a mapping.
      ValueError: an unknown or missing name, a wrong shape, a non-finite value, a
        continuous value outside [low, high], or a categorical id outside its range.
    """
    if not isinstance(conditions, Mapping):
        raise WeightspaceTypeError(
            f"conditions must be a dict of arrays, got {type(conditions).__name__}"
        )
    known = {s.name for s in specs}
    unknown = sorted(set(conditions) - known)
    if unknown:
        raise WeightspaceError(f"unknown conditions {unknown}; declared: {sorted(known)}")
    m = None
    for s in specs:
        if s.name not in conditions:
            if isinstance(s, Noise) and allow_missing_noise:
                continue
            raise WeightspaceError(f"missing condition {s.name!r}")
        v = conditions[s.name]
        shape = tuple(np.shape(v))
        want = tuple(s.shape)
        if len(shape) != len(want) + 1 or shape[1:] != want:
            raise WeightspaceError(
                f"condition {s.name!r} has shape {shape}, expected {('M', *want)} "
                f"(a leading batch axis M)".replace("'M'", "M")
            )
        if m is None:
            m = shape[0]
        elif shape[0] != m:
            raise WeightspaceError(f"condition {s.name!r} has batch {shape[0]}, others have {m}")
        if isinstance(v, jax.core.Tracer):
            continue
        a = np.asarray(v)
        if isinstance(s, Categorical):
            if not np.issubdtype(a.dtype, np.integer):
                raise WeightspaceError(f"condition {s.name!r}: ids must be integers, got {a.dtype}")
            if a.size and (a.min() < 0 or a.max() >= s.num_classes):
                raise WeightspaceError(
                    f"condition {s.name!r}: ids must lie in [0, {s.num_classes}), got "
                    f"ids in [{a.min()}, {a.max()}]"
                )
        else:
            if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)):
                raise WeightspaceError(
                    f"condition {s.name!r}: expected real numbers, got {a.dtype}"
                )
            if not np.all(np.isfinite(a)):
                raise WeightspaceError(f"condition {s.name!r}: values must be finite")
            if isinstance(s, Continuous) and a.size and (a.min() < s.low or a.max() > s.high):
                raise WeightspaceError(
                    f"condition {s.name!r}: values must lie in [{s.low}, {s.high}], got "
                    f"values in [{a.min():.4g}, {a.max():.4g}]"
                )
    if m is None:
        raise WeightspaceError("no conditions given")
    if m < 1:
        raise WeightspaceError("empty batch of conditions (M = 0)")
    return m


def encode(gamma: jax.Array, encoding: str) -> jax.Array:
    """Encodes `[M, D]` values in [0, 1] (see `ENCODINGS`)."""
    if encoding == "cos|sin":
        return jnp.concatenate([jnp.cos(jnp.pi * gamma / 2), jnp.sin(jnp.pi * gamma / 2)], -1)
    if encoding == "z|1-z":
        return jnp.concatenate([gamma, 1.0 - gamma], -1)
    if encoding == "raw":
        return gamma
    if encoding == "normalize":
        return gamma / jnp.maximum(jnp.linalg.norm(gamma, axis=-1, keepdims=True), 1e-6)
    raise WeightspaceError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")


def encoded_width(specs: Sequence[Condition], encoding: str) -> int:
    """Width of the continuous part after encoding."""
    d = sum(s.size for s in specs if isinstance(s, Continuous))
    return 2 * d if encoding in ("cos|sin", "z|1-z") else d


def sample_one(spec: Condition, key: jax.Array, index: int, m: int) -> jax.Array:
    """`m` values of condition `spec`, the `index`-th of its spec list, drawn from
    ``fold_in(key, index)``: uniform continuous values in [low, high], uniform ids, normal
    vectors and noise. The one sampling rule: `sample`, `fill_noise` and the hypernet
    export all draw through it, so the same key gives the same conditions everywhere.

    Returns:
      `[m, *spec.shape]`.
    """
    k = jax.random.fold_in(key, index)
    if isinstance(spec, Continuous):
        return jax.random.uniform(k, (m, *spec.shape), minval=spec.low, maxval=spec.high)
    if isinstance(spec, Categorical):
        return jax.random.randint(k, (m,), 0, spec.num_classes)
    return jax.random.normal(k, (m, spec.dim))


def sample(specs: Sequence[Condition], key: jax.Array, m: int) -> dict[str, jax.Array]:
    """`m` values of every condition (see `sample_one`): ``{name: [m, ...]}``."""
    return {s.name: sample_one(s, key, i, m) for i, s in enumerate(specs)}


def fill_noise(
    specs: Sequence[Condition], conditions: Mapping[str, Any], key: jax.Array | None, m: int
) -> dict[str, Any]:
    """`conditions` with the missing `Noise` conditions sampled as `sample` samples them
    (the key of spec `i` is ``fold_in(key, i)``): the same key gives the same noise in
    every process.

    Raises:
      ValueError: a noise condition is missing and `key` is None.
    """
    out = dict(conditions)
    for i, s in enumerate(specs):
        if isinstance(s, Noise) and s.name not in out:
            if key is None:
                raise WeightspaceError(
                    f"noise condition {s.name!r} not given and no key to sample it"
                )
            out[s.name] = sample_one(s, key, i, m)
    return out
