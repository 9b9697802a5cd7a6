"""Which array axes of a traced computation index the same hidden units.

`analyze_axes` traces ``fn(leaves, x)`` with `jax.make_jaxpr` and propagates "which units
index this axis" through the equations with a union-find over array axes:

- elementwise ops (``add``, ``mul``, ``max``, ``select_n``, ``tanh``, ...) unify the axes
  of equal size of their operands and result; this is how residual additions tie channels;
- ``dot_general`` unifies contracted axes and maps batch/free axes to the result;
  ``conv_general_dilated`` unifies the input feature axis with the kernel's in-axis and
  the kernel's out-axis with the output feature axis. A grouped convolution
  (``feature_group_count`` G > 1, depthwise included) views the input features as
  ``(G, cin/G)`` and the output features as ``(G, cout/G)``: the G sub-axes are one class,
  the kernel's in-axis is the within-group input sub-axis;
- pooling (``reduce_window_*``) carries the axes whose window is 1 (batch, channels) and
  blocks the pooled ones; reductions, ``transpose``, ``broadcast_in_dim``, ``squeeze``,
  ``pad`` and ``slice`` carry the axes they keep;
- ``reshape`` makes *composite* axes: an axis that is the row-major merge of several axes
  (a flatten ``[B, H, W, C] -> [B, H*W*C]``) gets the merged axes as its *split*; a class
  that is unified with a composite adopts its split (the dense kernel after a flatten),
  and two splits are refined to a common factorisation (or blocked where there is none).
  A composite is never permuted as a whole; its sub-axes are. Size-1 axes that a reshape
  adds or removes follow their neighbour axis (they are never units of their own);
- calls (`hyper.jaxpr.INLINE_CALLS`: ``jit``, ``custom_jvp_call``, ...) are followed into
  their bodies;
- ``gather`` (an embedding table ``[V, D]`` taken at token ids ``[B, T]``): an operand
  axis taken whole (not indexed, slice size the full axis: the table's ``D``) flows to
  its offset axis of the result, the index array's batch axes to the result's other axes;
  the indexed axes (``V``), partial slices and the index vector block;
- anything else (spatial axes of convolutions, sorts, cumulative ops, loops,
  unknown primitives, captured constants) *blocks* the axes it touches, as do the input
  and the output: a class with a blocked axis is not permutable, and blocking a composite
  blocks its sub-axes. Every block records a `Reason` (the primitive and why), so callers
  can say what left a layer out (`hyper.symmetry.left_out`).

`hyper.symmetry` turns the classes into structural groups.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.extend.core as jcore

from hyper import jaxpr as jaxpr_lib

__all__ = ["AxisClasses", "Reason", "analyze_axes", "gather_offset_axes"]


_ELEMENTWISE = frozenset(
    """
    abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp conj convert_element_type
    copy copy_p cos cosh div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow
    is_finite le lgamma digamma log log1p logistic lt max min mul ne neg nextafter not or pow
    real reduce_precision rem round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan
    tanh xor
    """.split()
)
_REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor".split()
)
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_POOLING = frozenset("reduce_window_sum reduce_window_max reduce_window_min reduce_window".split())


class Reason(NamedTuple):
    """Why an axis class is blocked.

    Attributes:
      primitive: the primitive that blocked it (``"input"``/``"output"`` for the network's
        input and output, ``"constant"`` for captured constants).
      detail: a short human-readable explanation.
      spatial: the axis is a spatial/window axis (of a convolution or a pooling window):
        blocked by design, not a unit axis.
    """

    primitive: str
    detail: str
    spatial: bool = False


_INPUT = Reason("input", "the network input")
_OUTPUT = Reason("output", "the network output")


class _UnionFind:
    """Union-find over integer nodes (array axes) with sizes, composite splits and reasons.

    A class may carry a *split*: the nodes of the axes it is the row-major merge of.
    """

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.split: dict[int, tuple[int, ...]] = {}  # root -> sub-nodes (row-major)
        self.blocks: list[tuple[int, Reason]] = []  # in evaluation order
        self.ties: list[tuple[int, int]] = []  # (size-1 node, the node it follows)
        self._closed: dict[int, list[Reason]] | None = None

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
            self.block(ra, rb, reason=Reason("internal", "axes of different sizes were tied"))
        self.parent[rb] = ra
        sb = self.split.pop(rb, None)
        if sb is not None:
            sa = self.split.get(ra)
            if sa is None:
                self.split[ra] = sb
            else:
                self.unify(sa, sb, Reason("reshape", "two incompatible factorisations"))

    def block(self, *nodes: int, reason: Reason) -> None:
        self.blocks.extend((n, reason) for n in nodes)

    def set_split(self, node: int, subs: Sequence[int], reason: Reason) -> None:
        """Makes `node` the row-major merge of `subs` (size-1 sub-nodes are left out)."""
        subs = tuple(s for s in subs if self.size[s] != 1)
        if len(subs) == 1:
            self.union(node, subs[0])
            return
        r = self.find(node)
        if r in self.split:
            self.unify(self.split[r], subs, reason)
        elif subs:
            self.split[r] = subs

    def unify(self, a: Sequence[int], b: Sequence[int], reason: Reason) -> None:
        """Ties two row-major factorisations of one axis, refining them to a common one."""
        qa = collections.deque(n for n in a if self.size[n] != 1)
        qb = collections.deque(n for n in b if self.size[n] != 1)
        while qa and qb:
            x, y = qa.popleft(), qb.popleft()
            if self.size[x] == self.size[y]:
                self.union(x, y)
                continue
            (big, bq), (small, sq) = sorted([(x, qa), (y, qb)], key=lambda t: -self.size[t[0]])
            sub = self.split.get(self.find(big))
            if sub is not None:
                bq.extendleft(reversed(sub))
                sq.appendleft(small)
            elif self.size[big] % self.size[small] == 0:
                head, rest = (
                    self.new(self.size[small]),
                    self.new(self.size[big] // self.size[small]),
                )
                self.split[self.find(big)] = (head, rest)
                self.union(head, small)
                bq.appendleft(rest)
            else:
                self.block(big, small, *qa, *qb, reason=reason)
                return
        if qa or qb:
            self.block(*qa, *qb, reason=reason)

    def expand(self, node: int) -> list[int]:
        """The class roots of `node` read as row-major sub-axes (``[root]`` if not composite)."""
        r = self.find(node)
        sub = self.split.get(r)
        if sub is None:
            return [r]
        return [q for s in sub for q in self.expand(s)]

    def close(self) -> None:
        """Computes the blocked classes: direct blocks, composites' sub-axes, size-1 ties."""
        reasons: dict[int, list[Reason]] = {}

        def add(r: int, rs: Sequence[Reason]) -> bool:
            have = reasons.setdefault(r, [])
            new = [x for x in rs if x not in have]
            have.extend(new)
            return bool(new)

        def spread() -> None:
            todo = [r for r in reasons if r in self.split]
            while todo:
                r = todo.pop()
                for s in self.split.get(r, ()):
                    rs = self.find(s)
                    if add(rs, reasons[r]) and rs in self.split:
                        todo.append(rs)

        for n, why in self.blocks:
            add(self.find(n), [why])
        spread()
        for n, anchor in self.ties:
            ra = self.find(anchor)
            add(self.find(n), reasons.get(ra) or [Reason("reshape", "a size-1 axis added")])
        spread()
        self._closed = reasons

    def blocked_roots(self) -> set[int]:
        if self._closed is None:
            self.close()
        return set(self._closed)

    def reasons(self, root: int) -> list[Reason]:
        """Why the class `root` is blocked (empty if it is not)."""
        if self._closed is None:
            self.close()
        return list(self._closed.get(self.find(root), ()))


@dataclasses.dataclass
class AxisClasses:
    """The axis classes of one traced apply ``fn(leaves, x)``.

    Attributes:
      closed: the `ClosedJaxpr` of ``fn(leaves, x)``.
      uf: the union-find over array axes (``find``, ``size``, ``expand``,
        ``blocked_roots``, ``reasons``).
      nodes: ``(scope, var)`` (as in `hyper.jaxpr.Step`) -> one node per axis.
      leaf_nodes: per leaf, its axes' nodes.
      batch_node: the node of the input's batch axis, or None for a scalar input.
      produced: ``(scope, var)`` values produced by a primitive (not a body's output) or a
        call, in evaluation order.
      contraction_in, contraction_out: the operands and results of ``dot_general`` and
        convolutions.
      channel_nodes: the output feature axes of the convolutions (channels).
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
    channel_nodes: list[int] = dataclasses.field(default_factory=list)
    io_nodes: set = dataclasses.field(default_factory=set)
    """Nodes of values computed from the input alone, or that reach the output through
    weight-free primitives only (no contraction): their classes are the network's input or
    output side, not hidden units, even where no union ties them to the input/output."""


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
    channel_nodes: list[int] = []
    constant = Reason("constant", "a captured or literal constant array")

    def fresh(aval: Any) -> tuple[int, ...]:
        return tuple(uf.new(s) for s in getattr(aval, "shape", ()))

    def get(scope: tuple, v: Any) -> tuple[int, ...]:
        if isinstance(v, jcore.Literal):
            ns = fresh(v.aval)
            uf.block(*ns, reason=constant)  # a non-scalar constant cannot be permuted
            return ns
        if (scope, v) not in nodes:
            nodes[(scope, v)] = fresh(v.aval)
        return nodes[(scope, v)]

    def shape(v: Any) -> tuple[int, ...]:
        return tuple(getattr(v.aval, "shape", ()))

    for cv in jaxpr.constvars:
        uf.block(*get((), cv), reason=constant)
    *leaf_vars, x_var = jaxpr.invars
    leaf_nodes = [get((), v) for v in leaf_vars]
    xn = get((), x_var)
    uf.block(*xn, reason=_INPUT)
    # Per scope, the outputs of its jaxpr: values a primitive did not produce there.
    body_outs: dict[tuple, set] = {(): set()}
    walk = list(jaxpr_lib.steps(jaxpr))
    for step in walk:
        scope, eqn = step.scope, step.eqn
        inner_outs = body_outs[scope]
        ins = [get(scope, v) for v in eqn.invars]
        outs = [get(scope, v) for v in eqn.outvars]
        if step.kind == "call":
            inner, sc = step.body.jaxpr, step.inner
            for cv in inner.constvars:
                uf.block(*get(sc, cv), reason=constant)
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
                    uf.block(*on, *ns, reason=Reason(eqn.primitive.name, "a call's output"))
        produced.extend(
            (scope, v) for v in eqn.outvars if not jaxpr_lib.is_drop(v) and v not in inner_outs
        )
        if step.kind == "return":
            continue
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            contraction_in.update((scope, v) for v in eqn.invars[:2] if isinstance(v, jcore.Var))
            contraction_out.update((scope, v) for v in eqn.outvars)
        if eqn.primitive.name == "conv_general_dilated":
            channel_nodes.append(outs[0][eqn.params["dimension_numbers"].out_spec[1]])
        _rule(uf, eqn.primitive.name, eqn, ins, outs, [shape(v) for v in eqn.invars])
    for v in jaxpr.outvars:
        uf.block(*get((), v), reason=_OUTPUT)
    uf.close()
    io_nodes = _io_nodes(walk, jaxpr, nodes, x_var)
    return AxisClasses(
        closed=closed,
        uf=uf,
        nodes=nodes,
        leaf_nodes=leaf_nodes,
        batch_node=xn[0] if xn else None,
        produced=produced,
        contraction_in=contraction_in,
        contraction_out=contraction_out,
        channel_nodes=channel_nodes,
        io_nodes=io_nodes,
    )


def _io_nodes(walk: list, jaxpr: Any, nodes: dict, x_var: Any) -> set:
    """`AxisClasses.io_nodes`: a forward pass from the input, a backward one from the output."""
    vars_in = {((), x_var)}
    for step in walk:
        ins = [(step.scope, v) for v in step.eqn.invars if isinstance(v, jcore.Var)]
        if step.kind == "call":
            pairs = zip(step.body.jaxpr.invars, step.eqn.invars, strict=True)
            vars_in |= {(step.inner, iv) for iv, v in pairs if (step.scope, v) in vars_in}
        elif step.kind == "return":
            pairs = zip(step.body.jaxpr.outvars, step.eqn.outvars, strict=True)
            vars_in |= {(step.scope, v) for iv, v in pairs if (step.inner, iv) in vars_in}
        elif ins and all(v in vars_in for v in ins):
            vars_in |= {(step.scope, v) for v in step.eqn.outvars}
    vars_out = {((), v) for v in jaxpr.outvars if isinstance(v, jcore.Var)}
    for step in reversed(walk):
        outs = [(step.scope, v) for v in step.eqn.outvars]
        if step.kind == "return":
            pairs = zip(step.body.jaxpr.outvars, step.eqn.outvars, strict=True)
            vars_out |= {(step.inner, iv) for iv, v in pairs if (step.scope, v) in vars_out}
        elif step.kind == "call":
            pairs = zip(step.body.jaxpr.invars, step.eqn.invars, strict=True)
            vars_out |= {(step.scope, v) for iv, v in pairs if (step.inner, iv) in vars_out}
        elif step.eqn.primitive.name not in ("dot_general", "conv_general_dilated") and any(
            v in vars_out for v in outs
        ):
            vars_out |= {(step.scope, v) for v in step.eqn.invars if isinstance(v, jcore.Var)}
    return {n for key in vars_in | vars_out for n in nodes.get(key, ())}


def _reshape(uf: _UnionFind, src: Sequence[int], out: Sequence[int]) -> None:
    """A reshape: equal axes are tied, merged/split axes become composites."""
    sizes_a, sizes_b = [uf.size[n] for n in src], [uf.size[n] for n in out]
    if sizes_a == sizes_b:
        for a, b in zip(src, out, strict=True):
            uf.union(a, b)
        return
    for ns in (src, out):  # size-1 axes added or removed follow a neighbour axis
        big = [i for i, n in enumerate(ns) if uf.size[n] != 1]
        for i, n in enumerate(ns):
            if uf.size[n] == 1:
                before = [j for j in big if j < i]
                after = [j for j in big if j > i]
                anchor = before[-1] if before else (after[0] if after else None)
                if anchor is not None:  # else all axes have size 1: nothing to tie
                    uf.ties.append((n, ns[anchor]))
    uf.unify(src, out, Reason("reshape", "merges and splits axes across their boundaries"))


def _pool_axis_trivial(p: dict, i: int) -> bool:
    return (
        p["window_dimensions"][i] == 1
        and p["window_strides"][i] == 1
        and tuple(p["padding"][i]) == (0, 0)
        and p["base_dilation"][i] == 1
        and p["window_dilation"][i] == 1
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
    block_all = None  # or the detail of a Reason that blocks every axis
    if name in _ELEMENTWISE and len(outs) == 1:
        out = outs[0]
        osize = [uf.size[n] for n in out]
        for ns, sh in zip(ins, in_shapes, strict=True):
            if len(ns) == 0:
                continue
            if len(ns) != len(out):
                block_all = "operands of different ranks"
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
        _conv(uf, p, ins, outs)
    elif name == "gather" and len(ins) == 2:
        _gather(uf, p, ins, outs[0], in_shapes[0])
    elif name in _POOLING:
        n_ops = len(outs)
        for src, out in zip(ins[:n_ops], outs, strict=True):
            for i, (a, o) in enumerate(zip(src, out, strict=True)):
                if _pool_axis_trivial(p, i):
                    uf.union(a, o)
                else:
                    why = Reason(name, f"a pooling window over axis {i}", spatial=True)
                    uf.block(a, o, reason=why)
    elif name in _REDUCTIONS or name in ("argmax", "argmin"):
        (src,) = ins
        axes = set(p["axes"])
        kept = [n for i, n in enumerate(src) if i not in axes]
        for a, o in zip(kept, outs[0], strict=True):
            uf.union(a, o)
        if name in ("argmax", "argmin"):  # an index is not invariant under permutation
            uf.block(*(src[i] for i in axes), reason=Reason(name, "an index over this axis"))
    elif name in _CUMULATIVE:
        (src,) = ins
        for i, (a, o) in enumerate(zip(src, outs[0], strict=True)):
            if i == p["axis"]:
                uf.block(a, o, reason=Reason(name, "a cumulative op along this axis"))
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
        # A broadcast scalar is constant along every axis: any permutation keeps it.
        if src:
            new = (o for i, o in enumerate(out) if i not in p["broadcast_dimensions"])
            uf.block(*new, reason=Reason(name, "an axis of copies added by a broadcast"))
        if len(ins) > 1:
            block_all = "dynamic shapes"
    elif name == "squeeze":
        (src,) = ins
        dims = {d % len(src) for d in p["dimensions"]}
        for a, o in zip([n for i, n in enumerate(src) if i not in dims], outs[0], strict=True):
            uf.union(a, o)
    elif name == "reshape":
        if p.get("dimensions") is not None or len(ins) > 1:
            block_all = "a reshape with dynamic shapes or dimensions"
        else:
            _reshape(uf, ins[0], outs[0])
    elif name == "concatenate":
        d = p["dimension"]
        for ns in ins:
            for i, (a, o) in enumerate(zip(ns, outs[0], strict=True)):
                if i == d:
                    uf.block(a, o, reason=Reason(name, f"a concatenation along axis {i}"))
                else:
                    uf.union(a, o)
    elif name == "pad":
        for i, (a, o) in enumerate(zip(ins[0], outs[0], strict=True)):
            if tuple(p["padding_config"][i]) == (0, 0, 0):
                uf.union(a, o)
            else:
                uf.block(a, o, reason=Reason(name, f"padding of axis {i}", spatial=True))
    elif name == "slice":
        for i, (a, o) in enumerate(zip(ins[0], outs[0], strict=True)):
            strides = p["strides"]
            full = (
                p["start_indices"][i] == 0
                and p["limit_indices"][i] == in_shapes[0][i]
                and (strides is None or strides[i] == 1)
            )
            if full:
                uf.union(a, o)
            else:
                uf.block(a, o, reason=Reason(name, f"a slice of axis {i}"))
    else:
        block_all = f"no rule for primitive {name!r}"
    if block_all is not None:
        why = Reason(name, block_all)
        for ns in (*ins, *outs):
            uf.block(*ns, reason=why)


def gather_offset_axes(p: dict, operand_shape: Sequence[int]) -> dict[int, int]:
    """``gather``'s operand axes that are taken whole: operand axis -> output axis.

    An operand axis that is neither collapsed nor a batching axis is an offset axis of the
    result (in order, at ``offset_dims``); it is taken whole when its slice size is the
    full axis (the feature axis ``D`` of an embedding table ``[V, D]`` gathered by token
    ids): the result holds the operand's units along it, in the same order.
    """
    dn = p["dimension_numbers"]
    dropped = set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
    kept = [i for i in range(len(operand_shape)) if i not in dropped]
    return {
        i: o
        for i, o in zip(kept, dn.offset_dims, strict=True)
        if p["slice_sizes"][i] == operand_shape[i]
    }


def _gather(
    uf: _UnionFind, p: dict, ins: list, out: tuple[int, ...], operand_shape: Sequence[int]
) -> None:
    """``gather``: operand axes taken whole flow to their offset axes of the result;
    the index array's batch axes flow to the result's other axes; every other axis (the
    indexed axes, partial slices, the index vector, batching axes) blocks."""
    name = "gather"
    dn = p["dimension_numbers"]
    operand, indices = ins
    whole = gather_offset_axes(p, operand_shape)
    for i, a in enumerate(operand):
        if i in whole:
            uf.union(a, out[whole[i]])
        elif i in dn.collapsed_slice_dims:
            uf.block(a, reason=Reason(name, f"operand axis {i} is indexed"))
        elif i in getattr(dn, "operand_batching_dims", ()):
            uf.block(a, reason=Reason(name, f"operand axis {i} is a batching axis"))
        else:
            uf.block(a, reason=Reason(name, f"a partial slice of operand axis {i}"))
    partial = [o for o in dn.offset_dims if o not in whole.values()]
    uf.block(*(out[o] for o in partial), reason=Reason(name, "a partial slice"))
    # The index vector is the indices' last axis; their other axes are the result's
    # non-offset axes, in order.
    batch_out = [n for o, n in enumerate(out) if o not in dn.offset_dims]
    idx_batching = set(getattr(dn, "start_indices_batching_dims", ()))
    for j, (a, o) in enumerate(zip(indices[:-1], batch_out, strict=True)):
        if j in idx_batching:
            uf.block(a, o, reason=Reason(name, f"index axis {j} is a batching axis"))
        else:
            uf.union(a, o)
    if indices:
        uf.block(indices[-1], reason=Reason(name, "the index vector"))


def _conv(uf: _UnionFind, p: dict, ins: list, outs: list) -> None:
    """``conv_general_dilated``: features flow (grouped: per group), spatial axes block."""
    name = "conv_general_dilated"
    dn = p["dimension_numbers"]
    lhs, rhs = ins[0], ins[1]
    (out,) = outs
    lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    uf.union(lhs[lspec[0]], out[ospec[0]])
    lf, rin, rout, of = lhs[lspec[1]], rhs[rspec[1]], rhs[rspec[0]], out[ospec[1]]
    groups = p["feature_group_count"]
    if p["batch_group_count"] != 1:
        uf.block(lf, rin, rout, of, reason=Reason(name, "batch_group_count > 1"))
    elif groups == 1:
        uf.union(lf, rin)
        uf.union(rout, of)
    else:
        # Grouped: input features (G, cin/G), output features (G, cout/G); the group
        # sub-axes are one class, the kernel's in-axis is the within-group input axis.
        why = Reason(name, "feature groups that cannot be factorised")
        uf.union(rout, of)
        g = uf.new(groups)
        uf.set_split(lf, (g, rin), why)
        if uf.size[rin] == 1:  # one input feature per group (depthwise): not a unit axis
            uf.block(rin, reason=Reason(name, "one input feature per group"))
        per = uf.size[of] // groups
        uf.set_split(of, (g, uf.new(per)), why)
    spatial = Reason(name, "a spatial axis", spatial=True)
    uf.block(*(lhs[i] for i in lspec[2:]), *(rhs[i] for i in rspec[2:]), reason=spatial)
    uf.block(*(out[i] for i in ospec[2:]), reason=spatial)
