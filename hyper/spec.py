"""Leaf specs: what each weight leaf of a target is, inferred from names, shapes and the
traced computation.

`ROLES` names what a leaf does (kernel, bias, norm scale/shift, running statistic,
embedding). `build_spec` gives every leaf of a params tree a `LeafSpec`: its role and layer
kind from its name, shape and siblings; its fan-in/out and neuron axes from its role
(`fans_and_axes`); its layer index from the order in which the traced apply first reads
it (`hyper.jaxpr.first_use`). `default_init` initialises a target's leaves by role.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper import jaxpr as jaxpr_lib
from hyper.errors import WeightspaceError
from hyper.tree import Params, path_str

__all__ = ["ROLES", "LeafSpec", "build_spec", "default_init", "fans_and_axes"]

ROLES = (
    "kernel",
    "bias",
    "norm_scale",
    "norm_shift",
    "running_stat",
    "embedding",
    "other",
)


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """What one weight leaf is.

    Attributes:
      path: slash-separated path in the params tree, e.g. ``"convs/0/kernel"``.
      shape: shape of the leaf for one target (no `targets` axis).
      dtype: numpy dtype name, e.g. ``"float32"``.
      role: one of `ROLES`.
      fan_in: inputs feeding one output unit (kernel: in-channels x receptive field).
      fan_out: outputs fed by one input unit (kernel: out-channels x receptive field).
      layer: index of the layer this leaf belongs to, in forward order.
      layer_name: path of the layer (the leaf's parent, without a Linen collection such as
        ``"params"``), e.g. ``"convs/0"``.
      layer_kind: ``"dense"``, ``"conv"``, ``"norm"``, ``"embedding"`` or ``"other"``.
      in_axis: axis indexing the layer's input neurons/channels, or None.
      out_axis: axis indexing the layer's output neurons/channels, or None. Permuting
        hidden units permutes these axes (the weight-space symmetries).
      trainable: False for non-trainable state such as BatchNorm running statistics.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    role: str
    fan_in: int
    fan_out: int
    layer: int
    layer_name: str
    layer_kind: str
    in_axis: int | None
    out_axis: int | None
    trainable: bool = True

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LeafSpec:
        d = dict(d)
        d["shape"] = tuple(int(s) for s in d["shape"])
        return cls(**d)


_STAT_NAMES = ("mean", "var", "running_mean", "running_var")
_KERNEL_NAMES = ("kernel", "weight")
_NORM_KINDS = {"running_stat": "norm", "norm_scale": "norm", "norm_shift": "norm"}


def _layer_of(path: str, collections: Sequence[str]) -> str:
    """The layer path of a leaf: its parent, without a leading variable collection."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    head, _, rest = parent.partition("/")
    return rest if head in collections else parent


def _infer_roles(
    paths: Sequence[str],
    layers: Sequence[str],
    shapes: Sequence[tuple[int, ...]],
    stat_mask: Sequence[bool],
    overrides: Mapping[str, str] | None,
) -> list[tuple[str, str]]:
    """(role, layer_kind) per leaf from names, shapes and the other leaves of its layer."""
    names = [p.rsplit("/", 1)[-1] for p in paths]
    siblings: dict[str, set[str]] = {}
    kernel_ndim: dict[str, int] = {}
    for layer, name, shape in zip(layers, names, shapes, strict=True):
        siblings.setdefault(layer, set()).add(name)
        if name in _KERNEL_NAMES and len(shape) >= 2:
            kernel_ndim.setdefault(layer, len(shape))
    out = []
    for layer, name, shape, is_stat in zip(layers, names, shapes, stat_mask, strict=True):
        sib = siblings[layer]
        has_kernel = layer in kernel_ndim
        # A 1-D "weight" is a norm scale in the PyTorch naming ("bn.weight", "bn.bias").
        has_scale = "scale" in sib or ("weight" in sib and not has_kernel)
        role, kind = "other", "other"
        if is_stat or (name in _STAT_NAMES and not has_kernel):
            role, kind = "running_stat", "norm"
        elif name in _KERNEL_NAMES and len(shape) >= 2:
            role, kind = "kernel", ("dense" if len(shape) == 2 else "conv")
        elif name == "embedding" and len(shape) == 2:
            role, kind = "embedding", "embedding"
        elif name in ("scale", "weight") and not has_kernel:
            role, kind = "norm_scale", "norm"
        elif name == "bias" and not has_kernel and has_scale:
            role, kind = "norm_shift", "norm"
        elif name == "bias":
            role = "bias"
            kind = "other" if not has_kernel else ("dense" if kernel_ndim[layer] == 2 else "conv")
        out.append((role, kind))
    if overrides:
        for pattern, r in overrides.items():
            if r not in ROLES:
                raise WeightspaceError(
                    f"roles[{pattern!r}]: unknown role {r!r}; expected one of {ROLES}"
                )
            hits = [i for i, p in enumerate(paths) if fnmatch.fnmatchcase(p, pattern)]
            if not hits:
                raise WeightspaceError(
                    f"roles[{pattern!r}] matches no leaf; leaves are {list(paths)}"
                )
            for i in hits:
                nd = len(shapes[i])
                if (r == "kernel" and nd < 2) or (r == "embedding" and nd != 2):
                    raise WeightspaceError(
                        f"roles[{pattern!r}]: leaf {paths[i]!r} has shape {shapes[i]}; a {r} "
                        f"needs {'2 or more axes' if r == 'kernel' else '2 axes'}"
                    )
                kind = out[i][1]
                if r == "kernel":
                    kind = "dense" if len(shapes[i]) == 2 else "conv"
                out[i] = (r, _NORM_KINDS.get(r, kind))
    return out


def fans_and_axes(
    role: str, shape: tuple[int, ...], kernel_shape: tuple[int, ...] | None
) -> tuple[int, int, int | None, int | None]:
    """``(fan_in, fan_out, in_axis, out_axis)`` of a leaf of `role` and `shape`.

    Args:
      role: one of `ROLES`.
      shape: the leaf's shape (one target).
      kernel_shape: the shape of its layer's kernel, if any (a bias takes its fans).
    """
    nd = len(shape)
    if role == "kernel":
        rf = int(math.prod(shape[:-2]))
        return shape[-2] * rf, shape[-1] * rf, nd - 2, nd - 1
    if role == "embedding":
        return 1, shape[-1], None, nd - 1
    if role == "bias":
        if kernel_shape is not None:
            rf = int(math.prod(kernel_shape[:-2]))
            return kernel_shape[-2] * rf, kernel_shape[-1] * rf, None, nd - 1
        return 1, shape[-1] if nd else 1, None, (nd - 1 if nd else None)
    if role in ("norm_scale", "norm_shift", "running_stat"):
        return 1, 1, None, (nd - 1 if nd else None)
    return (shape[-1] if nd else 1), 1, None, None


def _forward_order(
    apply_fn: Callable[[Params, Any], Any], params: Params, x: Any, paths: Sequence[str]
) -> list[int]:
    """Index of the first primitive that reads each leaf (its position in forward order)."""
    treedef = jax.tree.structure(params)

    def fn(leaves):
        return apply_fn(jax.tree.unflatten(treedef, leaves), x)

    leaves = jax.tree.leaves(params)
    try:
        jaxpr = jax.make_jaxpr(fn)(leaves).jaxpr
    except Exception:  # noqa: BLE001 - ordering is best effort; fall back to path order
        return list(range(len(paths)))
    return jaxpr_lib.first_use(jaxpr)


def build_spec(
    params: Params,
    stat_paths: set[str],
    apply_fn: Callable[[Params, Any], Any] | None,
    sample_x: Any,
    roles: Mapping[str, str] | None,
    collections: Sequence[str] = (),
) -> tuple[LeafSpec, ...]:
    """One `LeafSpec` per leaf of `params`.

    Args:
      collections: top-level keys that name variable collections (Linen's ``"params"``,
        ``"batch_stats"``); they are not part of a layer's name, so a BatchNorm's scale
        and its running statistics belong to one layer.
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = [path_str(p) for p, _ in flat]
    shapes = [tuple(int(s) for s in np.shape(v)) for _, v in flat]
    dtypes = [str(np.dtype(v.dtype)) for _, v in flat]
    layers = [_layer_of(p, collections) for p in paths]
    rk = _infer_roles(paths, layers, shapes, [p in stat_paths for p in paths], roles)
    if apply_fn is not None and sample_x is not None:
        first_use = _forward_order(apply_fn, params, sample_x, paths)
    else:
        first_use = list(range(len(paths)))
    layer_first: dict[str, int] = {}
    for layer, fu in zip(layers, first_use, strict=True):
        layer_first[layer] = min(layer_first.get(layer, 10**9), fu)
    # Layers ordered by first use; leaves never read (unused params) go last in path order.
    layer_order = sorted(layer_first, key=lambda n: (layer_first[n], layers.index(n)))
    layer_index = {n: i for i, n in enumerate(layer_order)}
    kernel_shape = {}
    for layer, shape, (role, _) in zip(layers, shapes, rk, strict=True):
        if role == "kernel":
            kernel_shape.setdefault(layer, shape)
    specs = []
    for path, layer, shape, dtype, (role, kind) in zip(
        paths, layers, shapes, dtypes, rk, strict=True
    ):
        fan_in, fan_out, in_axis, out_axis = fans_and_axes(role, shape, kernel_shape.get(layer))
        specs.append(
            LeafSpec(
                path=path,
                shape=shape,
                dtype=dtype,
                role=role,
                fan_in=int(fan_in),
                fan_out=int(fan_out),
                layer=layer_index[layer],
                layer_name=layer,
                layer_kind=kind,
                in_axis=in_axis,
                out_axis=out_axis,
                trainable=role != "running_stat",
            )
        )
    return tuple(specs)


def default_init(target: Any, key: jax.Array) -> Params:
    """Initialises one target by role: kernels LeCun-normal by fan-in, embeddings normal,
    biases and norm shifts and running means 0, norm scales and running variances 1.

    Args:
      target: a `hyper.target.Target` (read: its `spec` and `treedef`).
      key: a PRNG key.
    """
    keys = jax.random.split(key, len(target.spec))
    leaves = []
    for k, s in zip(keys, target.spec, strict=True):
        dt = np.dtype(s.dtype)
        if s.role == "kernel":
            leaves.append(jax.random.normal(k, s.shape, dt) / math.sqrt(max(s.fan_in, 1)))
        elif s.role == "embedding":
            leaves.append(jax.random.normal(k, s.shape, dt))
        elif s.role == "norm_scale" or (s.role == "running_stat" and s.path.endswith("var")):
            leaves.append(jnp.ones(s.shape, dt))
        else:
            leaves.append(jnp.zeros(s.shape, dt))
    return jax.tree.unflatten(target.treedef, leaves)
