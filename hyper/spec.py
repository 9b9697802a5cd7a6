"""Leaf specs: what each weight leaf of a target is, inferred from the traced computation
and, where the trace says nothing, from names and shapes.

`ROLES` names what a leaf does (kernel, bias, norm scale/shift, running statistic,
embedding). `build_spec` gives every leaf of a params tree a `LeafSpec`:

- its role, layer kind and neuron axes first from how the traced apply uses it
  (`hyper.leaf_use`): an operand of ``dot_general`` or the kernel of a convolution is a
  kernel (contracted axes = input axes, free axes = output axes, so the q/k/v kernels
  ``(in, heads, head_dim)`` of a multi-head attention have fan-in ``in``), a leaf added
  to a contraction's output is that layer's bias, a gather table is an embedding, a leaf
  added to activations is an additive embedding (layer kind ``"position"``, e.g. a
  learned position embedding);
- otherwise from its name, shape and siblings (``kernel``/``weight``, ``bias``,
  ``scale``, ``mean``/``var``, ``embedding``), then the user's ``roles=`` overrides;
- its layer: the leaf's parent path, except that a parent holding several kernels (flat
  ``{"w1", "b1", "w2", "b2"}``) is split: each kernel is its own layer, named by its path,
  and a bias joins the layer of the kernel it is added to;
- its fan-in/out from its axes (`leaf_fans`); its layer index from the order in which the
  traced apply first reads it (`hyper.jaxpr.first_use`).

`default_init` initialises a target's leaves by role.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper import jaxpr as jaxpr_lib
from hyper.errors import WeightspaceError
from hyper.leaf_use import LeafUse, leaf_uses
from hyper.tree import Params, path_str

__all__ = [
    "POSITION_STD",
    "ROLES",
    "LeafSpec",
    "build_spec",
    "default_init",
    "fans_and_axes",
    "leaf_fans",
    "respec",
]

POSITION_STD = 0.02
"""Standard deviation of `default_init` for additive embeddings (layer kind "position")."""

ROLES = (
    "kernel",
    "bias",
    "norm_scale",
    "norm_shift",
    "running_stat",
    "embedding",
    "other",
)
"""The roles of a weight leaf, in `LeafSpec.role`: kernel, bias, norm scale and shift,
running statistic, embedding, or other."""


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
      layer_kind: ``"dense"`` (a ``dot_general`` kernel and its bias), ``"conv"``,
        ``"norm"``, ``"embedding"`` (a gather table), ``"position"`` (an embedding added
        to activations, e.g. a learned position embedding) or ``"other"``.
      in_axis: the axis indexing the layer's input neurons/channels when there is exactly
        one (``in_axes == (in_axis,)``), else None.
      out_axis: the axis indexing the layer's output neurons/channels when there is
        exactly one, else None. Permuting hidden units permutes these axes (the
        weight-space symmetries). Code that handles kernels with several neuron axes
        (attention's ``(in, heads, head_dim)``) reads `in_axes` / `out_axes`.
      trainable: False for non-trainable state such as BatchNorm running statistics.
      in_axes: every input-neuron axis, sorted: a kernel's contracted axes (its input
        features, e.g. ``(0, 1)`` for an attention out projection ``(heads, head_dim,
        out)``); empty for other roles.
      out_axes: every output-neuron axis, sorted: a kernel's free axes (``(1, 2)`` for a
        q/k/v kernel ``(in, heads, head_dim)``), a bias's axes along them, the feature
        axis of norms, statistics and embeddings. The row-major flatten of a kernel's
        `in_axes` (`out_axes`) is the ``in_features`` (``out_features``) of the equivalent
        PyTorch ``Linear``/``Conv``.
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
    in_axes: tuple[int, ...] = ()
    out_axes: tuple[int, ...] = ()

    def __post_init__(self):
        # Given axes decide the single ones; a spec written before `in_axes` existed (old
        # JSON, hand-built) gets them from `in_axis` / `out_axis`.
        for many, one in (("in_axes", "in_axis"), ("out_axes", "out_axis")):
            axes = tuple(int(a) for a in getattr(self, many))
            if axes:
                object.__setattr__(self, one, axes[0] if len(axes) == 1 else None)
            elif getattr(self, one) is not None:
                axes = (int(getattr(self, one)),)
            object.__setattr__(self, many, axes)

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["in_axes"], d["out_axes"] = list(self.in_axes), list(self.out_axes)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LeafSpec:
        """A spec from `to_json`; specs stored before `in_axes`/`out_axes` existed load
        with them taken from `in_axis`/`out_axis`."""
        d = dict(d)
        d["shape"] = tuple(int(s) for s in d["shape"])
        for k in ("in_axes", "out_axes"):
            if k in d:
                d[k] = tuple(int(a) for a in d[k])
        return cls(**d)


_STAT_NAMES = ("mean", "var", "running_mean", "running_var")
_KERNEL_NAMES = ("kernel", "weight")
_NORM_KINDS = {"running_stat": "norm", "norm_scale": "norm", "norm_shift": "norm"}


def _layer_of(path: str, collections: Sequence[str]) -> str:
    """The layer path of a leaf: its parent, without a leading variable collection."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    head, _, rest = parent.partition("/")
    return rest if head in collections else parent


def _own_layer(path: str, collections: Sequence[str]) -> str:
    """A leaf's path as a layer name of its own, without a leading variable collection."""
    head, _, rest = path.partition("/")
    return rest if head in collections and rest else path


def _names_roles(
    paths: Sequence[str],
    layers: Sequence[str],
    shapes: Sequence[tuple[int, ...]],
    stat_mask: Sequence[bool],
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
    return out


def _traced_roles(
    by_name: Sequence[tuple[str, str]],
    uses: Mapping[int, LeafUse],
    shapes: Sequence[tuple[int, ...]],
    stat_mask: Sequence[bool],
) -> list[tuple[str, str]]:
    """(role, layer_kind) per leaf: the trace's kernels, biases and embeddings first, the
    names where the trace says nothing; a leaf the names call "other" that is added to
    activations is an additive embedding (or a free bias, if it varies along one axis)."""
    out = list(by_name)
    for i, u in uses.items():
        if stat_mask[i]:
            continue
        if u.role == "kernel" or u.role == "embedding":
            out[i] = (u.role, u.kind)
        elif u.role == "bias" and uses.get(u.kernel, LeafUse("", "")).role == "kernel":
            out[i] = ("bias", uses[u.kernel].kind)
        elif u.role in ("bias", "additive") and by_name[i][0] == "other":
            big = sum(1 for d in shapes[i] if d != 1)
            out[i] = ("embedding", "position") if big >= 2 else ("bias", "other")
    return out


def _override_roles(
    out: list[tuple[str, str]],
    paths: Sequence[str],
    shapes: Sequence[tuple[int, ...]],
    overrides: Mapping[str, str],
    uses: Mapping[int, LeafUse],
) -> list[tuple[str, str]]:
    """The user's ``{path_glob: role}`` overrides applied to `out`."""
    out = list(out)
    for pattern, r in overrides.items():
        if r not in ROLES:
            raise WeightspaceError(
                f"roles[{pattern!r}]: unknown role {r!r}; expected one of {ROLES}"
            )
        hits = [i for i, p in enumerate(paths) if fnmatch.fnmatchcase(p, pattern)]
        if not hits:
            raise WeightspaceError(f"roles[{pattern!r}] matches no leaf; leaves are {list(paths)}")
        for i in hits:
            nd = len(shapes[i])
            if (r == "kernel" and nd < 2) or (r == "embedding" and nd != 2):
                raise WeightspaceError(
                    f"roles[{pattern!r}]: leaf {paths[i]!r} has shape {shapes[i]}; a {r} "
                    f"needs {'2 or more axes' if r == 'kernel' else '2 axes'}"
                )
            kind = out[i][1]
            if r == "kernel":
                u = uses.get(i)
                kind = u.kind if u and u.role == "kernel" else ("dense" if nd == 2 else "conv")
            out[i] = (r, _NORM_KINDS.get(r, kind))
    return out


def _axes_of(
    role: str, shape: tuple[int, ...], use: LeafUse | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(in_axes, out_axes)`` of a leaf: from its traced use where that agrees with its
    role, else by role (a kernel ``[..., in, out]``, a feature axis last)."""
    nd = len(shape)
    if use is not None and use.role == role and role in ("kernel", "bias"):
        return use.in_axes, use.out_axes
    if role == "kernel":
        return (nd - 2,), (nd - 1,)
    if role in ("bias", "embedding", "norm_scale", "norm_shift", "running_stat") and nd:
        return (), (nd - 1,)
    return (), ()


def leaf_fans(
    role: str,
    kind: str,
    shape: tuple[int, ...],
    in_axes: Sequence[int],
    out_axes: Sequence[int],
    kernel: tuple[tuple[int, ...], Sequence[int], Sequence[int], str] | None = None,
) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a leaf from its axes.

    A kernel's fan-in is the product of its input axes (times its receptive field, the
    axes that are neither, for a conv), its fan-out that of its output axes (times the
    receptive field): an attention q kernel ``(in, heads, head_dim)`` has fan-in ``in``,
    its out projection ``(heads, head_dim, out)`` fan-in ``heads * head_dim``.

    Args:
      role, kind, shape, in_axes, out_axes: the leaf's (as in `LeafSpec`).
      kernel: ``(shape, in_axes, out_axes, kind)`` of its layer's kernel; a bias takes its
        fans.
    """
    nd = len(shape)
    if role == "kernel":
        rest = [a for a in range(nd) if a not in in_axes and a not in out_axes]
        rf = math.prod(shape[a] for a in rest) if kind == "conv" else 1
        fan_in = math.prod(shape[a] for a in in_axes) * rf
        return int(fan_in), int(math.prod(shape[a] for a in out_axes) * rf)
    if role == "bias" and kernel is not None:
        return leaf_fans("kernel", kernel[3], *kernel[:3])
    if role in ("embedding", "bias"):
        return 1, (shape[-1] if nd else 1)
    if role in ("norm_scale", "norm_shift", "running_stat"):
        return 1, 1
    return (shape[-1] if nd else 1), 1


def fans_and_axes(
    role: str, shape: tuple[int, ...], kernel_shape: tuple[int, ...] | None
) -> tuple[int, int, int | None, int | None]:
    """``(fan_in, fan_out, in_axis, out_axis)`` of a leaf of `role` and `shape` whose kernel
    is laid out ``[*receptive_field, in, out]`` (the name-based default). Leaves whose
    axes came from the trace (attention kernels): use `leaf_fans` / `respec`.

    Args:
      role: one of `ROLES`.
      shape: the leaf's shape (one target).
      kernel_shape: the shape of its layer's kernel, if any (a bias takes its fans).
    """
    nd = len(shape)
    ins, outs = _axes_of(role, shape, None)
    kernel = None
    if kernel_shape is not None:
        kn = len(kernel_shape)
        kernel = (kernel_shape, (kn - 2,), (kn - 1,), "conv")
    fan_in, fan_out = leaf_fans(role, "conv", shape, ins, outs, kernel)
    if role == "bias" and nd == 0:
        return fan_in, fan_out, None, None
    return fan_in, fan_out, (ins[0] if ins else None), (outs[0] if outs else None)


def respec(spec: LeafSpec, shape: tuple[int, ...], kernel: LeafSpec | None = None) -> LeafSpec:
    """`spec` for a leaf of a new `shape` (same axes, fewer units): fans recomputed.

    Args:
      spec: the leaf's spec.
      shape: its new shape (same number of axes).
      kernel: the spec of its layer's kernel, already at its new shape (a bias takes its
        fans).
    """
    shape = tuple(int(d) for d in shape)
    k = (
        None
        if kernel is None
        else (kernel.shape, kernel.in_axes, kernel.out_axes, kernel.layer_kind)
    )
    fan_in, fan_out = leaf_fans(spec.role, spec.layer_kind, shape, spec.in_axes, spec.out_axes, k)
    return dataclasses.replace(spec, shape=shape, fan_in=fan_in, fan_out=fan_out)


def _trace(
    apply_fn: Callable[[Params, Any], Any], params: Params, x: Any, shapes: Sequence[tuple]
) -> tuple[list[int], dict[int, LeafUse]] | str:
    """(first use of each leaf, its deciding use) from the traced apply, or why the apply
    could not be traced (spec inference then reads names only)."""
    treedef = jax.tree.structure(params)

    def fn(leaves):
        return apply_fn(jax.tree.unflatten(treedef, leaves), x)

    leaves = jax.tree.leaves(params)
    try:
        jaxpr = jax.make_jaxpr(fn)(leaves).jaxpr
    except Exception as e:  # noqa: BLE001 - the trace is best effort; fall back to names
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return jaxpr_lib.first_use(jaxpr), leaf_uses(jaxpr, len(leaves), shapes)


def _layer_names(
    paths: Sequence[str],
    parents: Sequence[str],
    roles: Sequence[tuple[str, str]],
    uses: Mapping[int, LeafUse],
    collections: Sequence[str],
) -> list[str]:
    """The layer of each leaf: its parent, except in a parent holding several kernels,
    where each kernel is a layer of its own (named by its path), a bias joins the layer of
    the kernel the trace adds it to, and any other leaf is a layer of its own."""
    kernels: dict[str, int] = {}
    for parent, (role, _) in zip(parents, roles, strict=True):
        if role == "kernel":
            kernels[parent] = kernels.get(parent, 0) + 1
    shared = {p for p, n in kernels.items() if n >= 2}
    names = [
        _own_layer(path, collections) if parent in shared else parent
        for path, parent in zip(paths, parents, strict=True)
    ]
    for i, (role, _) in enumerate(roles):
        u = uses.get(i)
        if role == "bias" and u is not None and u.role == "bias" and roles[u.kernel][0] == "kernel":
            names[i] = names[u.kernel]
    return names


def _warn_all_other(paths: Sequence[str], roles: Sequence[tuple[str, str]], how: str) -> None:
    if any(r != "other" for r, _ in roles):
        return
    shown = list(paths[:8]) + (["..."] if len(paths) > 8 else [])
    warnings.warn(
        f"every leaf has role 'other' ({shown}): {how}. default_init sets 'other' leaves to "
        "zero, so every network computes the same constant and does not train. Pass "
        "sample_input= (roles are then read from the traced computation) or roles=, e.g. "
        "roles={'w*': 'kernel', 'b*': 'bias'}",
        stacklevel=4,
    )


def build_spec(
    params: Params,
    stat_paths: set[str],
    apply_fn: Callable[[Params, Any], Any] | None,
    sample_x: Any,
    roles: Mapping[str, str] | None,
    collections: Sequence[str] = (),
) -> tuple[LeafSpec, ...]:
    """One `LeafSpec` per leaf of `params` (see the module docstring for how).

    Args:
      params: the params tree (arrays).
      stat_paths: paths of non-trainable running statistics.
      apply_fn, sample_x: ``apply(params, x)`` and a sample batch, traced to read roles
        and layer order; without them, roles come from names only.
      roles: the user's ``{path_glob: role}`` overrides.
      collections: top-level keys that name variable collections (Linen's ``"params"``,
        ``"batch_stats"``); they are not part of a layer's name, so a BatchNorm's scale
        and its running statistics belong to one layer.

    Warns:
      UserWarning: every leaf has role "other" (default init would be all zeros).
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = [path_str(p) for p, _ in flat]
    shapes = [tuple(int(s) for s in np.shape(v)) for _, v in flat]
    dtypes = [str(np.dtype(v.dtype)) for _, v in flat]
    parents = [_layer_of(p, collections) for p in paths]
    stat_mask = [p in stat_paths for p in paths]
    traced: Any = "no sample input was given, so roles come from names only"
    if apply_fn is not None and sample_x is not None:
        traced = _trace(apply_fn, params, sample_x, shapes)
    if isinstance(traced, str):
        how = traced if traced.startswith("no sample") else f"the apply did not trace ({traced})"
        first_use, uses = list(range(len(paths))), {}
    else:
        how = "the traced computation uses none of them as a kernel, bias or embedding"
        first_use, uses = traced
    rk = _traced_roles(_names_roles(paths, parents, shapes, stat_mask), uses, shapes, stat_mask)
    if roles:
        rk = _override_roles(rk, paths, shapes, roles, uses)
    _warn_all_other(paths, rk, how)
    layers = _layer_names(paths, parents, rk, uses, collections)
    layer_first: dict[str, int] = {}
    for layer, fu in zip(layers, first_use, strict=True):
        layer_first[layer] = min(layer_first.get(layer, 10**9), fu)
    # Layers ordered by first use; leaves never read (unused params) go last in path order.
    layer_order = sorted(layer_first, key=lambda n: (layer_first[n], layers.index(n)))
    layer_index = {n: i for i, n in enumerate(layer_order)}
    axes = [
        _axes_of(r, shape, uses.get(i))
        for i, ((r, _), shape) in enumerate(zip(rk, shapes, strict=True))
    ]
    kernel_of: dict[str, tuple] = {}
    for layer, shape, (role, kind), (ins, outs) in zip(layers, shapes, rk, axes, strict=True):
        if role == "kernel":
            kernel_of.setdefault(layer, (shape, ins, outs, kind))
    specs = []
    for i, (path, layer, shape, dtype, (role, kind)) in enumerate(
        zip(paths, layers, shapes, dtypes, rk, strict=True)
    ):
        ins, outs = axes[i]
        u = uses.get(i)
        kernel = kernel_of.get(layer)
        if u is not None and u.role == "bias" and role == "bias" and rk[u.kernel][0] == "kernel":
            kernel = (shapes[u.kernel], *axes[u.kernel], rk[u.kernel][1])
        fan_in, fan_out = leaf_fans(role, kind, shape, ins, outs, kernel)
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
                in_axis=None,
                out_axis=None,
                trainable=role != "running_stat",
                in_axes=ins,
                out_axes=outs,
            )
        )
    return tuple(specs)


def default_init(target: Any, key: jax.Array) -> Params:
    """Initialises one target by role: kernels LeCun-normal by fan-in, embedding tables
    normal (std 1), additive embeddings (layer kind "position") normal with std
    `POSITION_STD`, biases and norm shifts and running means 0, norm scales and running
    variances 1, "other" leaves 0.

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
            std = POSITION_STD if s.layer_kind == "position" else 1.0
            leaves.append(std * jax.random.normal(k, s.shape, dt))
        elif s.role == "norm_scale" or (s.role == "running_stat" and s.path.endswith("var")):
            leaves.append(jnp.ones(s.shape, dt))
        else:
            leaves.append(jnp.zeros(s.shape, dt))
    return jax.tree.unflatten(target.treedef, leaves)
