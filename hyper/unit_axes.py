"""Which array axes of a traced computation index the same hidden units.

`analyze_axes` traces ``fn(leaves, x)`` with `jax.make_jaxpr` and propagates "which units
index this axis" through the equations with a union-find over array axes:

- elementwise ops (``add``, ``mul``, ``max``, ``select_n``, ``tanh``, ...) unify the axes
  of equal size of their operands and result; this is how residual additions tie channels;
- ``dot_general`` unifies contracted axes and maps batch/free axes to the result;
  ``conv_general_dilated`` unifies the input feature axis with the kernel's in-axis and
  the kernel's out-axis with the output feature axis;
- reductions, ``transpose``, ``broadcast_in_dim``, ``squeeze`` and ``reshape`` carry the
  axes they keep; a ``reshape`` that merges or splits axes blocks them;
- calls (`hyper.jaxpr.INLINE_CALLS`: ``jit``, ``custom_jvp_call``, ...) are followed into
  their bodies;
- anything else (spatial axes of convolutions, gathers, sorts, cumulative ops, loops,
  unknown primitives, captured constants) *blocks* the axes it touches, as do the input
  and the output: a class with a blocked axis is not permutable.

`hyper.symmetry` turns the classes into structural groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jcore

from hyper import jaxpr as jaxpr_lib

__all__ = ["AxisClasses", "analyze_axes"]


_ELEMENTWISE = frozenset(
    """
    abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp conj convert_element_type
    copy copy_p cos cosh div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow
    is_finite le lgamma digamma log log1p logistic lt max min mul ne neg nextafter not or pow
    real reduce_precision rem round rsqrt select_n sign sin sinh sqrt square sub tan tanh xor
    """.split()
)
_REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor".split()
)
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())


class _UnionFind:
    """Union-find over integer nodes (array axes), each with a size; mismatched sizes block."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.blocked: set[int] = set()

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:  # never expected; be conservative
            self.blocked.update((ra, rb))
        self.parent[rb] = ra

    def block(self, *nodes: int) -> None:
        self.blocked.update(nodes)

    def blocked_roots(self) -> set[int]:
        return {self.find(b) for b in self.blocked}


def _reshape_pairs(a: Sequence[int], b: Sequence[int]) -> tuple[list[tuple[int, int]], set, set]:
    """Axes kept 1-to-1 by a reshape from shape `a` to `b` (size-1 axes ignored).

    Returns:
      ``(pairs, mixed_a, mixed_b)``: (axis of a, axis of b) kept, and the merged/split axes.
    """
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [i for i, s in enumerate(b) if s != 1]
    pairs, mixed_a, mixed_b = [], set(), set()
    i = j = 0
    while i < len(ia) and j < len(ib):
        ga, gb = [ia[i]], [ib[j]]
        pa, pb = a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(ia):
                ga.append(ia[i])
                pa *= a[ia[i]]
                i += 1
            elif pb < pa and j < len(ib):
                gb.append(ib[j])
                pb *= b[ib[j]]
                j += 1
            else:
                break
        if len(ga) == 1 and len(gb) == 1 and pa == pb:
            pairs.append((ga[0], gb[0]))
        else:
            mixed_a.update(ga)
            mixed_b.update(gb)
    mixed_a.update(ia[i:])
    mixed_b.update(ib[j:])
    return pairs, mixed_a, mixed_b


@dataclasses.dataclass
class AxisClasses:
    """The axis classes of one traced apply ``fn(leaves, x)``.

    Attributes:
      closed: the `ClosedJaxpr` of ``fn(leaves, x)``.
      uf: the union-find over array axes (``find``, ``size``, ``blocked_roots``).
      nodes: ``(scope, var)`` (as in `hyper.jaxpr.Step`) -> one node per axis.
      leaf_nodes: per leaf, its axes' nodes.
      batch_node: the node of the input's batch axis, or None for a scalar input.
      produced: ``(scope, var)`` values produced by a primitive (not a body's output) or a
        call, in evaluation order.
      contraction_in, contraction_out: the operands and results of ``dot_general`` and
        convolutions.
    """

    closed: Any  # ClosedJaxpr of fn(leaves, x)
    uf: _UnionFind
    nodes: dict[Any, tuple[int, ...]]  # (scope, Var) -> one node per axis
    leaf_nodes: list[tuple[int, ...]]
    batch_node: int | None
    # (scope, var) entries produced by a primitive (not a sub-jaxpr's outvar) or by a call
    # equation, in evaluation order; and the operands/results of contractions (dot, conv).
    produced: list[Any]
    contraction_in: set
    contraction_out: set


def analyze_axes(fn: Callable, leaves: Sequence[Any], x: Any) -> AxisClasses:
    """Traces ``fn(leaves, x)`` (abstract `leaves`, `x`) and classifies its array axes.

    Weight axes in one unblocked class index the same hidden units; the input's and the
    output's axes are blocked.
    """
    closed = jax.make_jaxpr(fn)(list(leaves), x)
    jaxpr = closed.jaxpr
    uf = _UnionFind()
    # Keyed by (scope, var): a sub-jaxpr shared by several call sites (e.g. one `relu`
    # jaxpr) is walked once per site, each in its own scope, so sites are not tied.
    nodes: dict[Any, tuple[int, ...]] = {}
    produced: list[Any] = []
    contraction_in: set = set()
    contraction_out: set = set()

    def fresh(aval: Any) -> tuple[int, ...]:
        return tuple(uf.new(s) for s in getattr(aval, "shape", ()))

    def get(scope: tuple, v: Any) -> tuple[int, ...]:
        if isinstance(v, jcore.Literal):
            ns = fresh(v.aval)
            uf.block(*ns)  # a non-scalar constant cannot be permuted
            return ns
        if (scope, v) not in nodes:
            nodes[(scope, v)] = fresh(v.aval)
        return nodes[(scope, v)]

    def shape(v: Any) -> tuple[int, ...]:
        return tuple(getattr(v.aval, "shape", ()))

    for cv in jaxpr.constvars:
        uf.block(*get((), cv))
    *leaf_vars, x_var = jaxpr.invars
    leaf_nodes = [get((), v) for v in leaf_vars]
    xn = get((), x_var)
    uf.block(*xn)
    # Per scope, the outputs of its jaxpr: values a primitive did not produce there.
    body_outs: dict[tuple, set] = {(): set()}
    for step in jaxpr_lib.steps(jaxpr):
        scope, eqn = step.scope, step.eqn
        inner_outs = body_outs[scope]
        ins = [get(scope, v) for v in eqn.invars]
        outs = [get(scope, v) for v in eqn.outvars]
        if step.kind == "call":
            inner, sc = step.body.jaxpr, step.inner
            for cv in inner.constvars:
                uf.block(*get(sc, cv))
            for iv, ns in zip(inner.invars, ins, strict=True):
                if isinstance(iv, jcore.Var) and shape(iv) == tuple(uf.size[n] for n in ns):
                    nodes[(sc, iv)] = ns
            body_outs[sc] = {v for v in inner.outvars if isinstance(v, jcore.Var)}
            continue
        if step.kind == "return":
            for ov, ns in zip(step.body.jaxpr.outvars, outs, strict=True):
                on = get(step.inner, ov)
                if len(on) == len(ns):
                    for a, b in zip(on, ns, strict=True):
                        uf.union(a, b)
                else:
                    uf.block(*on, *ns)
        produced.extend(
            (scope, v) for v in eqn.outvars if not jaxpr_lib.is_drop(v) and v not in inner_outs
        )
        if step.kind == "return":
            continue
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            contraction_in.update((scope, v) for v in eqn.invars[:2] if isinstance(v, jcore.Var))
            contraction_out.update((scope, v) for v in eqn.outvars)
        _rule(uf, eqn.primitive.name, eqn, ins, outs, [shape(v) for v in eqn.invars])
    for v in jaxpr.outvars:
        uf.block(*get((), v))
    return AxisClasses(
        closed=closed,
        uf=uf,
        nodes=nodes,
        leaf_nodes=leaf_nodes,
        batch_node=xn[0] if xn else None,
        produced=produced,
        contraction_in=contraction_in,
        contraction_out=contraction_out,
    )


def _rule(
    uf: _UnionFind,
    name: str,
    eqn: Any,
    ins: list[tuple[int, ...]],
    outs: list[tuple[int, ...]],
    in_shapes: list[tuple[int, ...]],
) -> None:
    """Unifies or blocks the axes of one primitive equation."""
    p = eqn.params
    block_all = False
    if name in _ELEMENTWISE and len(outs) == 1:
        out = outs[0]
        osize = [uf.size[n] for n in out]
        for ns, sh in zip(ins, in_shapes, strict=True):
            if len(ns) == 0:
                continue
            if len(ns) != len(out):
                block_all = True
                break
            for n, o, s, t in zip(ns, out, sh, osize, strict=True):
                if s == t:
                    uf.union(n, o)  # equal axes flow through; size-1 broadcasts do not
    elif name == "dot_general":
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        lhs, rhs = ins
        (out,) = outs
        for a, b in zip(lc, rc, strict=True):
            uf.union(lhs[a], rhs[b])
        lfree = [i for i in range(len(lhs)) if i not in lc and i not in lb]
        rfree = [i for i in range(len(rhs)) if i not in rc and i not in rb]
        order = (
            [(lhs[a], rhs[b]) for a, b in zip(lb, rb, strict=True)]
            + [(lhs[i], None) for i in lfree]
            + [(rhs[i], None) for i in rfree]
        )
        for o, (a, b) in zip(out, order, strict=True):
            uf.union(a, o)
            if b is not None:
                uf.union(b, o)
    elif name == "conv_general_dilated":
        dn = p["dimension_numbers"]
        lhs, rhs = ins[0], ins[1]
        (out,) = outs
        lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        uf.union(lhs[lspec[0]], out[ospec[0]])
        if p["feature_group_count"] == 1 and p["batch_group_count"] == 1:
            uf.union(lhs[lspec[1]], rhs[rspec[1]])
            uf.union(rhs[rspec[0]], out[ospec[1]])
        else:
            uf.block(lhs[lspec[1]], rhs[rspec[1]], rhs[rspec[0]], out[ospec[1]])
        uf.block(*(lhs[i] for i in lspec[2:]), *(rhs[i] for i in rspec[2:]))
        uf.block(*(out[i] for i in ospec[2:]))
    elif name in _REDUCTIONS or name in ("argmax", "argmin"):
        (src,) = ins
        axes = set(p["axes"])
        kept = [n for i, n in enumerate(src) if i not in axes]
        for a, o in zip(kept, outs[0], strict=True):
            uf.union(a, o)
        if name in ("argmax", "argmin"):  # an index is not invariant under permutation
            uf.block(*(src[i] for i in axes))
    elif name in _CUMULATIVE:
        (src,) = ins
        for i, (a, o) in enumerate(zip(src, outs[0], strict=True)):
            if i == p["axis"]:
                uf.block(a, o)
            else:
                uf.union(a, o)
    elif name == "transpose":
        (src,) = ins
        for o, i in zip(outs[0], p["permutation"], strict=True):
            uf.union(src[i], o)
    elif name == "broadcast_in_dim":
        src = ins[0]
        out = outs[0]
        for j, d in enumerate(p["broadcast_dimensions"]):
            if uf.size[src[j]] == uf.size[out[d]]:
                uf.union(src[j], out[d])
        # New axes hold copies (e.g. a channel axis added to a grayscale input): not units.
        uf.block(*(o for i, o in enumerate(out) if i not in p["broadcast_dimensions"]))
        if len(ins) > 1:
            block_all = True  # dynamic shapes
    elif name == "squeeze":
        (src,) = ins
        dims = {d % len(src) for d in p["dimensions"]}
        for a, o in zip([n for i, n in enumerate(src) if i not in dims], outs[0], strict=True):
            uf.union(a, o)
    elif name == "reshape":
        src = ins[0]
        out = outs[0]
        if p.get("dimensions") is not None or len(ins) > 1:
            block_all = True
        else:
            pairs, ma, mb = _reshape_pairs([uf.size[n] for n in src], [uf.size[n] for n in out])
            for a, b in pairs:
                uf.union(src[a], out[b])
            uf.block(*(src[i] for i in ma), *(out[i] for i in mb))
    elif name == "concatenate":
        d = p["dimension"]
        for ns in ins:
            for i, (a, o) in enumerate(zip(ns, outs[0], strict=True)):
                if i == d:
                    uf.block(a, o)
                else:
                    uf.union(a, o)
    else:
        block_all = True
    if block_all:
        for ns in (*ins, *outs):
            uf.block(*ns)
