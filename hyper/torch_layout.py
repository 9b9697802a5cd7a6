"""PyTorch `state_dict` layout: export and import of params so that a PyTorch port of the
network computes the same function.

The layout of each leaf comes from its spec (`hyper.spec.LeafSpec`), not from its name:

- a kernel becomes ``[out_features, in_features, *receptive_field]``: its output axes
  (`LeafSpec.out_axes`) flattened row-major, then its input axes, then the axes that are
  neither (a conv's spatial axes, in order). A dense kernel ``[in, out]`` becomes a
  `Linear` weight ``[out, in]``, a conv kernel ``[*k, in, out]`` a `Conv` weight
  ``[out, in, *k]``; the q/k/v kernels ``(D, heads, head_dim)`` of a multi-head attention
  become ``(heads * head_dim, D)`` and its out projection ``(heads, head_dim, D)``
  ``(D, heads * head_dim)``: the weights of a port with separate query/key/value/out
  `Linear` layers (``nn.MultiheadAttention``'s ``in_proj_weight`` is the three stacked);
- a bias along several output axes (``(heads, head_dim)``) is flattened the same way;
- a leaf axis that is the row-major flatten of a convolution's feature map (the input
  axis of the dense layer after ``x.reshape(B, -1)`` of ``[B, H, W, C]``) is reordered
  from our H-W-C order to PyTorch's C-H-W (``torch.flatten`` of NCHW); which axes these
  are comes from `hyper.symmetry.axis_views`;
- everything else (norm scales and shifts, running statistics, embedding tables, a
  position embedding ``(1, T, D)``) keeps its shape.

Keys are ``<layer path with dots>.<PyTorch name of the role>`` (`torch_key_map`); export
and import both accept ``key_map=`` for modules named differently.

The weights transfer exactly; the PyTorch module must also pad as we do. A PyTorch
``Conv(padding=p)`` pads ``p`` zeros on both sides of each spatial axis. A convolution of
the traced computation whose padding differs between the two sides (XLA's 'SAME' at
stride 2 on an even size: one zero on the high side only; `hyper.architectures.CNN2d`)
cannot be written that way: `padding_warning` names each such layer with the ``F.pad``
that reproduces it, `to_torch_state_dict` warns with it (`TorchPaddingWarning`) and
`hyper.formats` stores it in the file's metadata (``"warning"``).
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from hyper import jaxpr as jaxpr_lib
from hyper import symmetry
from hyper.errors import WeightspaceError, WeightspaceTypeError
from hyper.spec import LeafSpec
from hyper.target import Target
from hyper.tree import Params, flatten_dict, nest

__all__ = [
    "TorchLayout",
    "TorchPaddingWarning",
    "from_torch_state_dict",
    "padding_warning",
    "to_torch_state_dict",
    "torch_key_map",
    "torch_layouts",
]

_TORCH_NAME = {
    "kernel": "weight",
    "bias": "bias",
    "norm_scale": "weight",
    "norm_shift": "bias",
    "embedding": "weight",
}


def _torch_leaf_name(s: LeafSpec) -> str:
    leaf = s.path.rsplit("/", 1)[-1]
    if s.role == "running_stat":
        return {"mean": "running_mean", "var": "running_var"}.get(leaf, leaf)
    if s.role == "embedding" and s.layer_kind == "position":
        return leaf  # a bare parameter such as ViT's `pos_embed`
    return _TORCH_NAME.get(s.role, leaf)


def torch_key_map(target: Target) -> dict[str, str]:
    """Our leaf path -> PyTorch `state_dict` key ("convs/0/kernel" -> "convs.0.weight").

    The key is the leaf's layer name (for Linen targets without the "params" or
    "batch_stats" collection) and the PyTorch name of its role; an additive embedding
    (layer kind "position") and an "other" leaf keep their own name. Flat names
    ``{"w1", "b1", ...}`` map to ``w1.weight``, ``w1.bias`` (each kernel is a layer named
    by its path, its bias joins it; see `hyper.spec`).

    Raises:
      ValueError: two leaves would share a key (e.g. ``roles=`` gave one layer two
        norm scales); pass your own ``key_map=`` to the export and import.
    """
    out = {}
    for s in target.spec:
        parts = s.layer_name.split("/") if s.layer_name else []
        out[s.path] = ".".join(parts + [_torch_leaf_name(s)])
    inverse: dict[str, str] = {}
    for ours, theirs in out.items():
        if theirs in inverse:
            raise WeightspaceError(
                f"torch_key_map: {ours!r} and {inverse[theirs]!r} both map to {theirs!r} "
                f"(roles {target.leaf(ours).role} and {target.leaf(inverse[theirs]).role} in "
                f"layer {target.leaf(ours).layer_name!r}); pass key_map= (our path -> torch "
                "key) to to_torch_state_dict / from_torch_state_dict"
            )
        inverse[theirs] = ours
    return out


class TorchLayout:
    """How one leaf maps to its PyTorch array: reshape to `split` (each leaf axis viewed as
    its sub-axes), transpose by `perm`, reshape to `torch_shape`; import inverts it.

    Args:
      s: the leaf's spec.
      views: ``{axis: (sub-axis shape, first channel sub-axis)}`` for the leaf's axes that
        flatten a feature map; the sub-axes from the channel on move to the front.
    """

    def __init__(self, s: LeafSpec, views: Mapping[int, tuple[tuple[int, ...], int]]):
        # Sub-axes of each leaf axis, in PyTorch order (a flattened feature map: channels first).
        split: list[int] = []
        sub: list[list[int]] = []
        for ax, n in enumerate(s.shape):
            shape, channel = views.get(ax, ((n,), 0))
            first = len(split)
            split.extend(shape)
            order = list(range(channel, len(shape))) + list(range(channel))
            sub.append([first + k for k in order])
        self.split = tuple(split)
        if s.role == "kernel":
            rest = [a for a in range(len(s.shape)) if a not in s.in_axes and a not in s.out_axes]
            groups = [list(s.out_axes), list(s.in_axes)] + [[a] for a in rest]
        elif s.role == "bias" and s.out_axes and len(s.shape) > 1:
            rest = [a for a in range(len(s.shape)) if a not in s.out_axes]
            if any(s.shape[a] != 1 for a in rest):
                groups = [[a] for a in range(len(s.shape))]
            else:
                groups = [list(s.out_axes) + rest]
        else:
            groups = [[a] for a in range(len(s.shape))]
        self.perm = tuple(k for g in groups for a in g for k in sub[a])
        self.torch_shape = tuple(math.prod(s.shape[a] for a in g) for g in groups)
        self.spec = s

    def to_torch(self, a: np.ndarray, lead: int) -> np.ndarray:
        """Our array (with `lead` leading batch axes) in the PyTorch layout."""
        head = a.shape[:lead]
        a = a.reshape(head + self.split)
        a = np.transpose(a, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        return a.reshape(head + self.torch_shape)

    def from_torch(self, a: np.ndarray, lead: int) -> np.ndarray:
        """The inverse of `to_torch`."""
        head = a.shape[:lead]
        a = a.reshape(head + tuple(self.split[p] for p in self.perm))
        inv = np.argsort(self.perm)
        a = np.transpose(a, tuple(range(lead)) + tuple(lead + int(p) for p in inv))
        return a.reshape(head + self.spec.shape)


def _flatten_views(target: Target) -> dict[tuple[str, int], tuple[tuple[int, ...], int]]:
    """``{(path, axis): (split shape, channel sub-axis)}`` for the leaf axes that flatten a
    convolution's feature map (read from `hyper.symmetry.axis_views`).

    Raises:
      ValueError: a target with convolutions but no input shape (its flattens are unknown).
    """
    if not any(s.role == "kernel" and s.layer_kind == "conv" for s in target.spec):
        return {}  # no feature map, nothing flattened in another order
    if target.input_shape is None:
        raise WeightspaceError(
            f"{target.name}: the PyTorch layout needs the target's input shape (to find the "
            "flattened feature maps): build the target with sample_input="
        )
    widths = {
        math.prod(s.shape[a] for a in s.out_axes)
        for s in target.spec
        if s.role == "kernel" and s.layer_kind == "conv"
    }
    out = {}
    for (path, ax), v in symmetry.axis_views(target).items():
        if v.channel is None:
            continue
        # The channels are the trailing sub-axes from `channel` on: a channels-last flatten
        # (H, W, C) or, for a depthwise conv's composite channels, (H, W, C, m).
        if math.prod(v.shape[v.channel :]) not in widths:
            raise WeightspaceError(
                f"{target.name}: axis {ax} of {path!r} flattens a feature map viewed as "
                f"{tuple(v.shape)} whose channels (from sub-axis {v.channel}) match no "
                "convolution's output channels; its PyTorch (C-H-W) order is unknown. Flatten "
                "[B, H, W, C] or [B, C, H, W] feature maps"
            )
        out[(path, ax)] = (tuple(v.shape), int(v.channel))
    return out


def torch_layouts(target: Target) -> dict[str, TorchLayout]:
    """Our path -> its `TorchLayout`."""
    views = _flatten_views(target)
    per_leaf: dict[str, dict[int, tuple[tuple[int, ...], int]]] = {}
    for (path, ax), v in views.items():
        per_leaf.setdefault(path, {})[ax] = v
    return {s.path: TorchLayout(s, per_leaf.get(s.path, {})) for s in target.spec}


class TorchPaddingWarning(UserWarning):
    """A PyTorch-layout export of a target whose convolutions pad asymmetrically: the
    natural PyTorch module (``Conv(padding=k // 2)``) computes another function."""


_PADDING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _asymmetric_convs(target: Target) -> list[tuple[str, list[tuple[int, int]], tuple, tuple]]:
    """``(layer, pads, strides, input spatial shape)`` of each convolution of the traced
    apply that pads a spatial axis unequally on its two sides (the layer: its kernel
    leaf's, followed through single-operand equations such as casts and reshapes)."""
    x = symmetry.example_batch(target, None, batch=1)
    leaves = [jax.ShapeDtypeStruct(s.shape, np.dtype(s.dtype)) for s in target.spec]
    try:
        closed = jax.make_jaxpr(symmetry.apply_on_leaves(target))(
            leaves, jax.ShapeDtypeStruct(x.shape, x.dtype)
        )
    except Exception as e:  # noqa: BLE001 - name the target in any tracing error
        raise WeightspaceError(f"{target.name}: cannot trace apply to read its padding: {e}") from e
    jx = closed.jaxpr
    src: dict[tuple, int] = {((), v): i for i, v in enumerate(jx.invars[: len(leaves)])}

    def leaf(scope: tuple, v: Any) -> int | None:
        return src.get((scope, v)) if isinstance(v, jcore.Var) else None

    found = []
    for step in jaxpr_lib.steps(jx):
        eqn = step.eqn
        if step.kind in ("call", "return"):
            call = step.kind == "call"
            a_vars, b_vars = (
                (eqn.invars, step.body.jaxpr.invars)
                if call
                else (step.body.jaxpr.outvars, eqn.outvars)
            )
            a_scope, b_scope = (step.scope, step.inner) if call else (step.inner, step.scope)
            for a, b in zip(a_vars, b_vars, strict=True):
                i = leaf(a_scope, a)
                if i is not None and isinstance(b, jcore.Var):
                    src[(b_scope, b)] = i
            continue
        if eqn.primitive.name == "conv_general_dilated":
            pads = [(int(lo), int(hi)) for lo, hi in eqn.params["padding"]]
            if any(lo != hi for lo, hi in pads):
                i = leaf(step.scope, eqn.invars[1])
                name = "?" if i is None else (target.spec[i].layer_name or target.spec[i].path)
                lhs = eqn.invars[0].aval.shape
                spatial = tuple(lhs[d] for d in eqn.params["dimension_numbers"].lhs_spec[2:])
                found.append((name, pads, tuple(eqn.params["window_strides"]), spatial))
        elif len(eqn.invars) == 1 and len(eqn.outvars) == 1:
            i = leaf(step.scope, eqn.invars[0])
            if i is not None and isinstance(eqn.outvars[0], jcore.Var):
                src[(step.scope, eqn.outvars[0])] = i
    return found


def padding_warning(target: Target) -> str | None:
    """Why the natural PyTorch port of `target` would compute another function, or None.

    Read from the traced computation (cached per target): every convolution whose padding
    differs between the two sides of a spatial axis, which PyTorch's ``Conv(padding=p)``
    (``p`` on both sides) cannot express. The message names each layer, its pads, strides
    and input size, and the fix: ``F.pad`` before a ``padding=0`` convolution in PyTorch,
    or a target with symmetric padding (``padding="SYMMETRIC"``, the CNN presets' default),
    trained anew. None for a target without such convolutions.
    """
    if not any(s.role == "kernel" and s.layer_kind == "conv" for s in target.spec):
        return None
    if target not in _PADDING:
        convs = _asymmetric_convs(target)
        if not convs:
            _PADDING[target] = None
        else:
            parts = []
            for name, pads, strides, spatial in convs:
                f_pad = tuple(p for lo_hi in reversed(pads) for p in lo_hi)
                parts.append(
                    f"{name!r} pads {[list(p) for p in pads]} (low, high per spatial axis; "
                    f"input {list(spatial)}, strides {list(strides)}): F.pad(x, {f_pad}) then "
                    "padding=0"
                )
            _PADDING[target] = (
                f"{target.name}: these convolutions pad unequally on the two sides (XLA's "
                "'SAME' at stride 2 on an even size), which PyTorch's Conv(padding=...) cannot "
                "express; the natural PyTorch module (padding=k//2) computes another function "
                f"on these weights: {'; '.join(parts)}. Either write those F.pad calls in the "
                "PyTorch module, or build the target with padding='SYMMETRIC' (the CNN "
                "presets' default; PyTorch's padding=k//2) and train it anew."
            )
    return _PADDING[target]


def _check_key_map(what: str, target: Target, keys: Mapping[str, str]) -> None:
    unmapped = [s.path for s in target.spec if s.path not in keys]
    if unmapped:
        raise WeightspaceError(f"{what}: key_map has no entry for {unmapped}")
    seen: dict[str, str] = {}
    for s in target.spec:
        k = keys[s.path]
        if k in seen:
            raise WeightspaceError(f"{what}: key_map maps {s.path!r} and {seen[k]!r} to {k!r}")
        seen[k] = s.path


def to_torch_state_dict(
    target: Target,
    params: Params,
    *,
    batched: bool = False,
    key_map: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Exports params (a population if `batched`) as a PyTorch-layout `state_dict` of numpy
    arrays (the layout: see the module docstring): `Linear` weights `[out, in]`, `Conv`
    weights `[out, in, *kernel]`, attention projections as separate `Linear` weights, the
    dense layer after a flatten in C-H-W order, BatchNorm
    `weight`/`bias`/`running_mean`/`running_var`. Load with
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)``
    (`num_batches_tracked` is not produced).

    Weights transfer exactly, but the PyTorch module must pad as the target does: a target
    with convolutions that pad unequally on the two sides (strided XLA 'SAME', see
    `hyper.architectures.CNN2d`) warns with `TorchPaddingWarning` naming each such layer and
    the ``F.pad`` that reproduces it (`padding_warning`).

    Args:
      key_map: our path -> torch key (default: `torch_key_map(target)`).
    """
    target.validate(params, batched=batched)
    keys = dict(key_map) if key_map is not None else torch_key_map(target)
    _check_key_map("to_torch_state_dict", target, keys)
    layouts = torch_layouts(target)
    note = padding_warning(target)
    if note is not None:
        warnings.warn(note, TorchPaddingWarning, stacklevel=2)
    flat = flatten_dict(params)
    lead = 1 if batched else 0
    return {
        keys[s.path]: np.asarray(
            layouts[s.path].to_torch(np.asarray(flat[s.path]), lead), order="C"
        )
        for s in target.spec
    }


def from_torch_state_dict(
    target: Target,
    state_dict: Mapping[str, Any],
    *,
    batched: bool = False,
    key_map: Mapping[str, str] | None = None,
) -> Params:
    """Imports a PyTorch-layout `state_dict` (numpy arrays, or anything `np.asarray` takes):
    the exact inverse of `to_torch_state_dict`; every array is cast to the target's leaf
    dtype. Weights from a PyTorch module compute its function here only if the target pads
    as that module does (``padding="SYMMETRIC"`` is PyTorch's ``padding=k // 2``; see
    `padding_warning`).

    Args:
      state_dict: ``{torch_key: array}``; with `batched`, each array has a leading
        `targets` axis. `num_batches_tracked` entries are ignored.
      key_map: our path -> torch key, for modules whose attribute names differ from
        ours (default: `torch_key_map(target)`).

    Raises:
      ValueError: a missing or unexpected key, or a shape that does not match, naming
        the key, our path and both shapes.
    """
    if not isinstance(state_dict, Mapping):
        raise WeightspaceTypeError(
            f"from_torch_state_dict: expected a mapping, got {type(state_dict).__name__}"
        )
    keys = dict(key_map) if key_map is not None else torch_key_map(target)
    _check_key_map("from_torch_state_dict", target, keys)
    sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    wanted = {keys[s.path] for s in target.spec}
    missing = sorted(wanted - set(sd))
    extra = sorted(set(sd) - wanted)
    if missing or extra:
        raise WeightspaceError(
            f"from_torch_state_dict: state_dict does not match {target.name}: "
            f"missing keys {missing}, unexpected keys {extra}"
        )
    layouts = torch_layouts(target)
    lead = 1 if batched else 0
    out = {}
    for s in target.spec:
        a = np.asarray(sd[keys[s.path]])
        want_torch = layouts[s.path].torch_shape
        if len(a.shape) != len(want_torch) + lead or a.shape[lead:] != want_torch:
            raise WeightspaceError(
                f"from_torch_state_dict: {keys[s.path]!r} (our {s.path!r}) has shape {a.shape}, "
                f"expected {'(targets,) + ' if batched else ''}{want_torch}"
            )
        out[s.path] = jnp.asarray(layouts[s.path].from_torch(a, lead).astype(s.dtype))
    params = nest(out)
    target.validate(params, batched=batched)
    return params
