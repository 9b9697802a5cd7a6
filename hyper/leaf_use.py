"""How a traced computation uses each weight leaf: what spec inference reads from the trace.

`leaf_uses` walks the jaxpr of ``apply(leaves, x)`` (`hyper.jaxpr.steps`) and follows each
leaf through layout-only primitives (``convert_element_type``, ``reshape``, ``transpose``,
``broadcast_in_dim``, ``squeeze``, slices), keeping which leaf axes every axis of the value
indexes. A leaf is then

- a **kernel** when it is an operand of ``dot_general`` (its contracted axes are its input
  axes, its free axes its output axes; a batch axis is neither) or the kernel operand of
  ``conv_general_dilated`` (input and output feature axes from the dimension numbers, the
  spatial axes are its receptive field);
- a **bias** when it is added to the output of such a contraction and varies only along the
  axes that the kernel's output axes produce (it is broadcast over everything else);
- an **embedding** when it is the table of a ``gather`` (``jnp.take``, ``table[ids]``);
- **additive** when it is added to activations without being a bias (a learned position
  embedding ``pos`` of shape ``(1, T, D)``, a free offset after a nonlinearity).

A contraction's output keeps its link to the kernel through layout-only primitives; adding
a bias ends it (a second leaf added after the bias is additive, not another bias).
Calls in `hyper.jaxpr.INLINE_CALLS` are followed; anything else (loops, ``cond``) hides the
leaves it reads, which spec inference then types by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.extend.core as jcore

from hyper import jaxpr as jaxpr_lib

__all__ = ["LeafUse", "leaf_uses", "reshape_blocks"]

_IDENTITY = frozenset({"convert_element_type", "copy", "copy_p", "reduce_precision"})
_SLICES = frozenset({"slice", "dynamic_slice"})
_ADD = frozenset({"add", "add_any"})

# Which use decides a leaf's role when it has several (a tied embedding is also a kernel).
_PRIORITY = {"embedding": 0, "kernel": 1, "bias": 2, "additive": 3}


class LeafUse(NamedTuple):
    """The use of one leaf that decides its role.

    Attributes:
      role: ``"kernel"``, ``"bias"``, ``"embedding"`` or ``"additive"``.
      kind: layer kind of a kernel (``"dense"`` for ``dot_general``, ``"conv"``), an
        embedding (``"embedding"``) or an additive leaf (``"other"``); ``""`` for a bias,
        whose kind is its kernel's.
      in_axes: a kernel's input-neuron axes (contracted / input features), sorted.
      out_axes: a kernel's output-neuron axes, or the axes of a bias along its kernel's
        output axes, sorted.
      field_axes: a conv kernel's spatial axes (receptive field).
      kernel: for a bias, the index of its kernel leaf; else None.
    """

    role: str
    kind: str
    in_axes: tuple[int, ...] = ()
    out_axes: tuple[int, ...] = ()
    field_axes: tuple[int, ...] = ()
    kernel: int | None = None


def reshape_blocks(
    old: Sequence[int], new: Sequence[int]
) -> list[tuple[list[int], list[int]]] | None:
    """Row-major ``reshape`` as blocks of old axes and new axes with equal products.

    Trailing size-1 axes join the last block. Returns None for shapes with a zero size.
    """
    if 0 in old or 0 in new:
        return None
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(old) and j < len(new):
        oi, nj, po, pn = [i], [j], old[i], new[j]
        i, j = i + 1, j + 1
        while po != pn:
            if po < pn:
                oi.append(i)
                po *= old[i]
                i += 1
            else:
                nj.append(j)
                pn *= new[j]
                j += 1
        blocks.append((oi, nj))
    if not blocks:
        return [(list(range(len(old))), list(range(len(new))))]
    blocks[-1][0].extend(range(i, len(old)))
    blocks[-1][1].extend(range(j, len(new)))
    return blocks


def _reshape_axes(axes: tuple, old: Sequence[int], new: Sequence[int], merge) -> tuple | None:
    """Per-axis entries carried through a reshape: each new axis of size > 1 gets the merge
    of its block's entries (a block of size-1 axes: its last new axis does)."""
    blocks = reshape_blocks(old, new)
    if blocks is None:
        return None
    out: list[Any] = [merge([])] * len(new)
    for oi, nj in blocks:
        entry = merge([axes[k] for k in oi])
        big = [j for j in nj if new[j] != 1] or nj[-1:]
        for j in big:
            out[j] = entry
    return tuple(out)


def _union(entries: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(sorted({a for e in entries for a in e}))


def _cout_merge(entries: Sequence[tuple[int, ...] | None]) -> tuple[int, ...] | None:
    """A contraction-output axis entry: the kernel output axes it indexes; None if it also
    indexes something else (a batch, token or spatial axis)."""
    if any(e is None for e in entries):
        return None
    return _union(entries)


class _View(NamedTuple):
    leaf: int
    axes: tuple[tuple[int, ...], ...]  # per value axis: the leaf axes it indexes


class _Out(NamedTuple):
    kernel: int
    axes: tuple[tuple[int, ...] | None, ...]  # per value axis: kernel output axes, or None


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in v.aval.shape)


def _layout(name: str, params: dict, axes: tuple, shapes, merge, empty) -> tuple | None:
    """Per-axis entries of a layout-only primitive's output, or None (not layout-only)."""
    in_shape, out_shape = shapes
    if name in _IDENTITY or name in _SLICES:
        return axes
    if name == "transpose":
        return tuple(axes[p] for p in params["permutation"])
    if name == "reshape":
        return _reshape_axes(axes, in_shape, out_shape, merge)
    if name == "squeeze":
        drop = {d % len(axes) for d in params["dimensions"]}
        return tuple(a for k, a in enumerate(axes) if k not in drop)
    if name == "broadcast_in_dim" and empty is not None:
        out = [empty] * len(out_shape)
        for k, d in enumerate(params["broadcast_dimensions"]):
            out[int(d)] = axes[k]
        return tuple(out)
    return None


def leaf_uses(closed: Any, n_leaves: int, shapes: Sequence[tuple[int, ...]]) -> dict[int, LeafUse]:
    """The deciding use of each leaf read by a traced apply.

    Args:
      closed: the jaxpr (`ClosedJaxpr` or `Jaxpr`) of ``fn(leaves, x)``; its first
        `n_leaves` inputs are the leaves.
      n_leaves: number of leaves.
      shapes: the leaves' shapes.

    Returns:
      ``{leaf index: LeafUse}`` for the leaves with a kernel, bias, embedding or additive
      use; leaves used otherwise (norm scales, statistics) or hidden in loops are absent.
    """
    jx = closed.jaxpr if isinstance(closed, jcore.ClosedJaxpr) else closed
    views: dict[Any, _View] = {}
    outs: dict[Any, _Out] = {}
    for i, v in enumerate(jx.invars[:n_leaves]):
        views[((), v)] = _View(i, tuple((a,) for a in range(len(shapes[i]))))
    uses: dict[int, LeafUse] = {}

    def note(i: int, use: LeafUse) -> None:
        if i not in uses or _PRIORITY[use.role] < _PRIORITY[uses[i].role]:
            uses[i] = use

    def get(d: dict, scope: tuple, v: Any) -> Any:
        return d.get((scope, v)) if isinstance(v, jcore.Var) else None

    for step in jaxpr_lib.steps(jx):
        eqn, scope = step.eqn, step.scope
        if step.kind in ("call", "return"):
            src, dst = (
                (eqn.invars, step.body.jaxpr.invars)
                if step.kind == "call"
                else (step.body.jaxpr.outvars, eqn.outvars)
            )
            s_src, s_dst = (scope, step.inner) if step.kind == "call" else (step.inner, scope)
            for a, b in zip(src, dst, strict=True):
                for d in (views, outs):
                    got = get(d, s_src, a)
                    if got is not None and not jaxpr_lib.is_drop(b):
                        d[(s_dst, b)] = got
            continue
        name, p = eqn.primitive.name, eqn.params
        ins = [get(views, scope, v) for v in eqn.invars]
        if name == "dot_general":
            _dot(eqn, ins, scope, outs, note)
        elif name == "conv_general_dilated":
            _conv(eqn, ins, scope, outs, note)
        elif name == "gather" and ins and ins[0] is not None:
            note(ins[0].leaf, LeafUse("embedding", "embedding"))
        elif name in _ADD and len(eqn.invars) == 2:
            _add(eqn, ins, scope, outs, shapes, note)
        if len(eqn.outvars) != 1 or not eqn.invars or jaxpr_lib.is_drop(eqn.outvars[0]):
            continue
        shp = (_shape(eqn.invars[0]), _shape(eqn.outvars[0]))
        key = (scope, eqn.outvars[0])
        if ins[0] is not None:
            axes = _layout(name, p, ins[0].axes, shp, _union, ())
            if axes is not None:
                views[key] = _View(ins[0].leaf, axes)
        o = get(outs, scope, eqn.invars[0])
        if o is not None:
            axes = _layout(name, p, o.axes, shp, _cout_merge, None)
            if axes is not None:
                outs[key] = _Out(o.kernel, axes)
    return uses


def _dot(eqn, ins, scope, outs, note) -> None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars
    nl, nr = len(lhs.aval.shape), len(rhs.aval.shape)
    lfree = [d for d in range(nl) if d not in lc and d not in lb]
    rfree = [d for d in range(nr) if d not in rc and d not in rb]
    kernel_side = None
    for side, (view, contract, free) in enumerate(((ins[0], lc, lfree), (ins[1], rc, rfree))):
        if view is None:
            continue
        in_axes = _union([view.axes[d] for d in contract])
        out_axes = _union([view.axes[d] for d in free])
        if not in_axes or not out_axes or set(in_axes) & set(out_axes):
            continue
        note(view.leaf, LeafUse("kernel", "dense", in_axes, out_axes))
        if kernel_side is None or side == 1:
            kernel_side = side
    if kernel_side is None:
        return
    view = ins[kernel_side]
    # Output axes: batch, lhs free, rhs free (dot_general's layout).
    axes: list[tuple[int, ...] | None] = [None] * (len(lb) + len(lfree) + len(rfree))
    start = len(lb) + (0 if kernel_side == 0 else len(lfree))
    for k, d in enumerate(lfree if kernel_side == 0 else rfree):
        axes[start + k] = view.axes[d]
    outs[(scope, eqn.outvars[0])] = _Out(view.leaf, tuple(axes))


def _conv(eqn, ins, scope, outs, note) -> None:
    view = ins[1]
    if view is None:
        return
    _, rhs_spec, out_spec = eqn.params["dimension_numbers"]
    out_axes, in_axes = view.axes[rhs_spec[0]], view.axes[rhs_spec[1]]
    field = _union([view.axes[d] for d in rhs_spec[2:]])
    if not in_axes or not out_axes or set(in_axes) & set(out_axes):
        return
    note(view.leaf, LeafUse("kernel", "conv", in_axes, out_axes, field))
    axes: list[tuple[int, ...] | None] = [None] * len(out_spec)
    axes[out_spec[1]] = out_axes
    outs[(scope, eqn.outvars[0])] = _Out(view.leaf, tuple(axes))


def _add(eqn, ins, scope, outs, shapes, note) -> None:
    a, b = eqn.invars
    for view, other, other_view in ((ins[0], b, ins[1]), (ins[1], a, ins[0])):
        if view is None or other_view is not None or not isinstance(other, jcore.Var):
            continue
        if len(other.aval.shape) != len(view.axes):
            continue
        size = shapes[view.leaf]
        o = outs.get((scope, other))
        bias_axes: list[int] = []
        is_bias = o is not None
        for k, leaf_axes in enumerate(view.axes):
            if not leaf_axes or is_bias is False:
                continue
            if o.axes[k]:
                bias_axes.extend(leaf_axes)
            elif math.prod(size[x] for x in leaf_axes) != 1:
                is_bias = False
        if is_bias and bias_axes:
            note(view.leaf, LeafUse("bias", "", (), tuple(sorted(set(bias_axes))), (), o.kernel))
        else:
            note(view.leaf, LeafUse("additive", "other"))
