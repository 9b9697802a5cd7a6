"""Structural groups: the permutable sets of hidden units of a target.

A *structural group* is one set of hidden units (neurons or channels) that can be permuted
together without changing the function a network computes: a layer's kernel out-axis and
bias, the BatchNorm that follows it (scale, shift, running mean and variance), the next
layer's kernel in-axis, and, through residual additions, every other layer whose channels
are added to them. Input and output units are never permutable.

The groups are derived, not declared: `structural_groups` traces the target's evaluation
`apply` with `jax.make_jaxpr` and propagates "which group indexes this axis" through the
equations with a union-find over array axes:

- elementwise ops (``add``, ``mul``, ``max``, ``select_n``, ``tanh``, ...) unify the axes
  of equal size of their operands and result; this is how residual additions tie channels;
- ``dot_general`` unifies contracted axes and maps batch/free axes to the result;
  ``conv_general_dilated`` unifies the input feature axis with the kernel's in-axis and
  the kernel's out-axis with the output feature axis;
- reductions, ``transpose``, ``broadcast_in_dim``, ``squeeze`` and ``reshape`` carry the
  axes they keep; a ``reshape`` that merges or splits axes blocks them;
- calls (``jit``, ``custom_jvp_call``, ...) are followed into their sub-jaxprs;
- anything else (spatial axes of convolutions, gathers, sorts, cumulative ops, unknown
  primitives, captured constants) *blocks* the axes it touches, as do the input and the
  output: a class with a blocked axis is not permutable.

Each remaining class that contains an axis of a weight leaf is one `Group`. No
architecture is special-cased; `verify_groups` checks the result numerically.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from hyper.target import Params, Target

__all__ = [
    "IMPORTANCE_METHODS",
    "IMPORTANCE_NORMALIZERS",
    "Group",
    "check_equivalent",
    "check_same_spec",
    "count_flops",
    "count_params",
    "derive_target",
    "group_activations",
    "group_importance",
    "permute",
    "random_permutations",
    "remove_units",
    "structural_groups",
    "verify_groups",
]


@dataclasses.dataclass(frozen=True)
class Group:
    """One permutable set of hidden units.

    Attributes:
      name: the producing layers' names joined by ``"+"`` (e.g. ``"stem+blocks/0/conv2"``).
      size: number of units (the length of every axis in `axes`).
      axes: ``(leaf path, axis)`` pairs this group permutes, in spec order.
      producers: paths of the kernels whose out-axis is in the group.
      consumers: paths of the kernels whose in-axis is in the group.
    """

    name: str
    size: int
    axes: tuple[tuple[str, int], ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]


# ---------------------------------------------------------------------------------------
# Data-flow analysis over a jaxpr
# ---------------------------------------------------------------------------------------

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


def _sub_jaxpr(eqn: Any) -> Any:
    """The single sub-jaxpr of a call-like equation whose in/out arity matches, or None."""
    subs = [
        v
        for v in eqn.params.values()
        if isinstance(v, jcore.ClosedJaxpr | jcore.Jaxpr)
        or (isinstance(v, tuple) and any(isinstance(u, jcore.ClosedJaxpr | jcore.Jaxpr) for u in v))
    ]
    if len(subs) != 1 or isinstance(subs[0], tuple):
        return None
    sub = subs[0]
    inner = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
    if len(inner.invars) != len(eqn.invars) or len(inner.outvars) != len(eqn.outvars):
        return None
    return sub


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
class _Analysis:
    """The result of propagating axis classes through one traced apply."""

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


def _analyze(fn: Callable, leaves: Sequence[Any], x: Any) -> _Analysis:
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

    def walk(jx: Any, scope: tuple) -> None:
        inner_outs = set() if not scope else set(_outvar_set(jx))
        for k, eqn in enumerate(jx.eqns):
            ins = [get(scope, v) for v in eqn.invars]
            outs = [get(scope, v) for v in eqn.outvars]
            sub = _sub_jaxpr(eqn)
            if sub is not None:
                inner = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
                sc = (*scope, k)
                for cv in inner.constvars:
                    uf.block(*get(sc, cv))
                for iv, ns in zip(inner.invars, ins, strict=True):
                    if isinstance(iv, jcore.Var) and shape(iv) == tuple(uf.size[n] for n in ns):
                        nodes[(sc, iv)] = ns
                walk(inner, sc)
                for ov, ns in zip(inner.outvars, outs, strict=True):
                    on = get(sc, ov)
                    if len(on) == len(ns):
                        for a, b in zip(on, ns, strict=True):
                            uf.union(a, b)
                    else:
                        uf.block(*on, *ns)
                produced.extend(
                    (scope, v) for v in eqn.outvars if not _is_drop(v) and v not in inner_outs
                )
                continue
            produced.extend(
                (scope, v) for v in eqn.outvars if not _is_drop(v) and v not in inner_outs
            )
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                contraction_in.update(
                    (scope, v) for v in eqn.invars[:2] if isinstance(v, jcore.Var)
                )
                contraction_out.update((scope, v) for v in eqn.outvars)
            _rule(uf, eqn.primitive.name, eqn, ins, outs, [shape(v) for v in eqn.invars])

    for cv in jaxpr.constvars:
        uf.block(*get((), cv))
    *leaf_vars, x_var = jaxpr.invars
    leaf_nodes = [get((), v) for v in leaf_vars]
    xn = get((), x_var)
    uf.block(*xn)
    walk(jaxpr, ())
    for v in jaxpr.outvars:
        uf.block(*get((), v))
    return _Analysis(
        closed=closed,
        uf=uf,
        nodes=nodes,
        leaf_nodes=leaf_nodes,
        batch_node=xn[0] if xn else None,
        produced=produced,
        contraction_in=contraction_in,
        contraction_out=contraction_out,
    )


def _is_drop(v: Any) -> bool:
    return isinstance(v, jcore.DropVar) or not isinstance(v, jcore.Var)


def _outvar_set(jx: Any) -> list[Any]:
    return [v for v in jx.outvars if isinstance(v, jcore.Var)]


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


# ---------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sample_input(target: Target, x: Any | None, batch: int = 2) -> Any:
    if x is not None:
        return jnp.asarray(x)
    if target.input_shape is None:
        raise ValueError(f"{target.name}: the target has no input_shape; pass a sample input batch")
    return jnp.zeros((batch, *target.input_shape), jnp.float32)


def _fn(target: Target) -> Callable:
    def fn(leaves, x):
        return target.pure_apply(jax.tree.unflatten(target.treedef, leaves), x)

    return fn


def _analysis(target: Target, x: Any) -> _Analysis:
    """The (cached) analysis of `target` traced on inputs shaped like `x`."""
    per_target = _CACHE.setdefault(target, {})
    key = ("analysis", tuple(np.shape(x)), str(jnp.asarray(x).dtype))
    if key not in per_target:
        leaves = [jax.ShapeDtypeStruct(s.shape, np.dtype(s.dtype)) for s in target.spec]
        try:
            per_target[key] = _analyze(_fn(target), leaves, jax.ShapeDtypeStruct(x.shape, x.dtype))
        except Exception as e:  # noqa: BLE001 - name the target in any tracing error
            raise ValueError(f"{target.name}: cannot trace apply for group analysis: {e}") from e
    return per_target[key]


def _group_roots(target: Target, an: _Analysis) -> dict[int, list[tuple[int, int]]]:
    """Unblocked class root -> [(leaf index, axis)] for every class holding a leaf axis."""
    uf = an.uf
    blocked = uf.blocked_roots()
    classes: dict[int, list[tuple[int, int]]] = {}
    for i, ns in enumerate(an.leaf_nodes):
        for ax, n in enumerate(ns):
            r = uf.find(n)
            if r not in blocked:
                classes.setdefault(r, []).append((i, ax))
    return classes


def structural_groups(
    target: Target, *, sample_input: Any = None, check: bool = False
) -> list[Group]:
    """The permutable groups of hidden units of `target` (see the module docstring).

    Args:
      target: any target; its evaluation `apply` is traced (not run).
      sample_input: an input batch `[batch, ...]`; default zeros of `target.input_shape`.
      check: verify numerically (`verify_groups`, once per target) that random
        permutations of the groups keep the function. The analysis is exact by
        construction; this guards against primitives it models wrongly.

    Returns:
      the groups, ordered by the forward position of their producing layer. Cached per
      target.

    Raises:
      ValueError: the apply cannot be traced, or `check` finds a group that changes the
        function (a bug in the analysis; please report the target).
    """
    per_target = _CACHE.setdefault(target, {})
    if "groups" not in per_target:
        x = _sample_input(target, sample_input)
        an = _analysis(target, x)
        spec = target.spec
        groups = []
        for members in _group_roots(target, an).values():
            members.sort()
            axes = tuple((spec[i].path, ax) for i, ax in members)
            size = spec[members[0][0]].shape[members[0][1]]
            producers = tuple(
                spec[i].path
                for i, ax in members
                if spec[i].role == "kernel" and ax == spec[i].out_axis
            )
            consumers = tuple(
                spec[i].path
                for i, ax in members
                if spec[i].role == "kernel" and ax == spec[i].in_axis
            )
            named = [spec[i] for i, _ in members if spec[i].path in producers] or [
                spec[i] for i, _ in members
            ]
            name = "+".join(dict.fromkeys(s.layer_name for s in sorted(named, key=_order)))
            first = min(_order(s) for s in named)
            groups.append((first, Group(name, int(size), axes, producers, consumers)))
        per_target["groups"] = [g for _, g in sorted(groups, key=lambda t: t[0])]
    groups = per_target["groups"]
    if check and not per_target.get("checked"):
        verify_groups(target, jax.random.key(0), sample_input=sample_input, groups=groups)
        per_target["checked"] = True
    return list(groups)


def _order(s: Any) -> tuple[int, str]:
    return (s.layer, s.path)


def check_same_spec(target_a: Target, target_b: Target) -> None:
    """Raises ValueError naming the first leaf whose path, shape, dtype or role differs.

    Use it before aligning or merging networks given with two `Target`s.
    """
    pa, pb = target_a.paths, target_b.paths
    if pa != pb:
        only_a = sorted(set(pa) - set(pb))
        only_b = sorted(set(pb) - set(pa))
        raise ValueError(
            f"targets {target_a.name} and {target_b.name} have different leaves: "
            f"only in the first {only_a}, only in the second {only_b}"
        )
    for a, b in zip(target_a.spec, target_b.spec, strict=True):
        for field in ("shape", "dtype", "role"):
            if getattr(a, field) != getattr(b, field):
                raise ValueError(
                    f"targets {target_a.name} and {target_b.name} differ at leaf {a.path!r}: "
                    f"{field} {getattr(a, field)} vs {getattr(b, field)}"
                )


def _check_perms(groups: Sequence[Group], perms: Sequence[Any], batched: bool) -> None:
    if len(perms) != len(groups):
        raise ValueError(f"permute: {len(perms)} permutations for {len(groups)} groups")
    for g, p in zip(groups, perms, strict=True):
        shape = tuple(np.shape(p))
        want = shape[-1:] if batched else shape
        if want != (g.size,) or len(shape) != 1 + batched:
            raise ValueError(
                f"permute: group {g.name!r} has {g.size} units, got a permutation of shape {shape}"
            )


def permute(
    target: Target,
    params: Params,
    perms: Sequence[Any],
    *,
    groups: Sequence[Group] | None = None,
    batched: bool = False,
) -> Params:
    """Permutes the hidden units of one network (or of every member of a population).

    Unit ``i`` of group ``g`` in the result is unit ``perms[g][i]`` of the input, along every
    axis the group lists: ``out[..., i, ...] = params[..., perms[g][i], ...]``.

    Args:
      target: the target.
      params: one network, or a population if `batched`.
      perms: one int array per group, `[size]` (or `[targets, size]` if `batched`).
      groups: default `structural_groups(target)`.
      batched: `params` and `perms` have a leading `targets` axis.

    Returns:
      params of the same structure. Traceable (works under `jit`/`vmap`).
    """
    groups = structural_groups(target) if groups is None else groups
    _check_perms(groups, perms, batched)
    target.validate(params, batched=batched)
    if batched:
        return jax.vmap(lambda p, q: permute(target, p, q, groups=groups))(params, list(perms))
    index = {p: i for i, p in enumerate(target.paths)}
    leaves = list(jax.tree.leaves(params))
    for g, perm in zip(groups, perms, strict=True):
        perm = jnp.asarray(perm)
        for path, ax in g.axes:
            i = index[path]
            leaves[i] = jnp.take(leaves[i], perm, axis=ax)
    return jax.tree.unflatten(target.treedef, leaves)


def random_permutations(
    target: Target, key: jax.Array, *, groups: Sequence[Group] | None = None
) -> list[jax.Array]:
    """One uniformly random permutation `[size]` (int32) per group."""
    groups = structural_groups(target) if groups is None else groups
    keys = jax.random.split(key, max(len(groups), 1))
    return [jax.random.permutation(k, g.size) for k, g in zip(keys, groups, strict=False)]


def check_equivalent(
    target: Target,
    params_a: Params,
    params_b: Params,
    x: Any,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> bool:
    """Whether two networks compute the same function on `x`, within tolerance.

    Compares ``apply(params_a, x)`` and ``apply(params_b, x)`` (evaluation mode) with
    ``|a - b| <= atol + rtol * max|a|``.
    """
    ya = np.asarray(target.apply(params_a, x), np.float64)
    yb = np.asarray(target.apply(params_b, x), np.float64)
    if ya.shape != yb.shape or not (np.all(np.isfinite(ya)) and np.all(np.isfinite(yb))):
        return False
    scale = float(np.max(np.abs(ya))) if ya.size else 0.0
    return bool(np.all(np.abs(ya - yb) <= atol + rtol * scale))


def _scrambled_params(target: Target, rng: np.random.Generator) -> list[np.ndarray]:
    """Random leaves (numpy, spec order) that vary per unit, norm statistics included.

    Leaves that the role-based init sets positive everywhere (variances, scales) stay
    positive. NumPy randomness: no PRNG program to compile for a check.
    """
    out = []
    for s in target.spec:
        dt = np.dtype(s.dtype)
        if not np.issubdtype(dt, np.floating):
            out.append(np.zeros(s.shape, dt))
            continue
        noise = rng.standard_normal(s.shape)
        if s.role == "norm_scale" or (s.role == "running_stat" and s.path.endswith("var")):
            v = np.exp(0.3 * noise)
        elif s.role == "kernel":
            v = noise / np.sqrt(max(s.fan_in, 1))
        else:
            v = 0.3 * noise
        out.append(v.astype(dt))
    return out


def verify_groups(
    target: Target,
    key: jax.Array,
    *,
    sample_input: Any = None,
    groups: Sequence[Group] | None = None,
    trials: int = 2,
) -> None:
    """Checks numerically that a random permutation of each group keeps the function.

    Uses random params in which every leaf (running statistics included) differs per unit,
    random inputs of the sample's shape, and one vmapped apply for all checks.

    Raises:
      ValueError: naming the group whose permutation changed the outputs.
    """
    groups = structural_groups(target, check=False) if groups is None else list(groups)
    if not groups:
        return
    seed = np.asarray(jax.random.key_data(key)).astype(np.uint64).tolist()
    rng = np.random.default_rng(seed)
    x0 = _sample_input(target, sample_input, batch=4)
    index = {p: i for i, p in enumerate(target.paths)}
    members, xs = [], []
    for _ in range(trials):
        leaves = _scrambled_params(target, rng)
        x = (
            rng.standard_normal(x0.shape).astype(x0.dtype)
            if jnp.issubdtype(x0.dtype, jnp.floating)
            else np.asarray(x0)
        )
        members.append(leaves)
        xs.append(x)
        for g in groups:
            perm = rng.permutation(g.size)
            moved = list(leaves)
            for path, ax in g.axes:
                moved[index[path]] = np.take(moved[index[path]], perm, axis=ax)
            members.append(moved)
            xs.append(x)
    pop = jax.tree.unflatten(target.treedef, [np.stack(ls) for ls in zip(*members, strict=True)])
    ys = np.asarray(target.apply_population(pop, np.stack(xs), per_target_inputs=True), np.float64)
    ys = ys.reshape(trials, 1 + len(groups), -1)
    ref, moved = ys[:, :1], ys[:, 1:]
    scale = np.max(np.abs(ref), axis=-1, keepdims=True)
    bad = np.any(~(np.abs(moved - ref) <= 1e-4 + 1e-3 * scale), axis=(0, 2))
    for g, b in zip(groups, bad, strict=True):
        if b:
            raise ValueError(
                f"{target.name}: permuting group {g.name!r} ({g.size} units, axes "
                f"{list(g.axes)}) changes the function; the group analysis is wrong here"
            )


# ---------------------------------------------------------------------------------------
# Hidden activations per group
# ---------------------------------------------------------------------------------------


def _interpret(closed: Any, leaves: Sequence[Any], x: Any, record: set) -> dict[Any, Any]:
    """Evaluates `closed` on ``(leaves, x)``; returns the values of the `record` entries.

    Args:
      record: ``(scope, var)`` pairs as in `_Analysis.produced`.
    """
    seen: dict[Any, Any] = {}

    def run(jx: Any, consts: Sequence[Any], args: Sequence[Any], scope: tuple) -> list[Any]:
        env: dict[Any, Any] = {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for v, a in zip(jx.constvars, consts, strict=True):
            env[v] = a
        for v, a in zip(jx.invars, args, strict=True):
            env[v] = a
            if (scope, v) in record:
                seen[(scope, v)] = a
        for k, eqn in enumerate(jx.eqns):
            invals = [read(v) for v in eqn.invars]
            sub = _sub_jaxpr(eqn)
            if sub is not None:
                inner = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
                inner_consts = sub.consts if isinstance(sub, jcore.ClosedJaxpr) else []
                outvals = run(inner, inner_consts, invals, (*scope, k))
            else:
                bind_params = eqn.primitive.get_bind_params(eqn.params)
                if isinstance(bind_params, tuple):  # older JAX: (subfuns, params)
                    subfuns, bind_params = bind_params
                    invals = [*subfuns, *invals]
                with eqn.ctx.manager:
                    ans = eqn.primitive.bind(*invals, **bind_params)
                outvals = ans if eqn.primitive.multiple_results else [ans]
            for v, val in zip(eqn.outvars, outvals, strict=True):
                if not _is_drop(v):
                    env[v] = val
                    if (scope, v) in record:
                        seen[(scope, v)] = val
        return [read(v) for v in jx.outvars]

    run(closed.jaxpr, closed.consts, [*leaves, x], ())
    return seen


_ACTIVATION_KINDS = ("inputs", "outputs", "both", "all")


@dataclasses.dataclass(frozen=True)
class _Carriers:
    """Per group: the intermediate values that carry it, as ((scope, var), group axis)."""

    closed: Any
    per_group: list[list[tuple[Any, int]]]


def _carriers(target: Target, x: Any, kind: str) -> _Carriers:
    if kind not in _ACTIVATION_KINDS:
        raise ValueError(f"activations kind {kind!r}; expected one of {_ACTIVATION_KINDS}")
    per_target = _CACHE.setdefault(target, {})
    key = ("carriers", kind, tuple(np.shape(x)), str(jnp.asarray(x).dtype))
    if key in per_target:
        return per_target[key]
    groups = structural_groups(target)
    an = _analysis(target, x)
    uf = an.uf
    index = {p: i for i, p in enumerate(target.paths)}
    roots = []
    for g in groups:
        path, ax = g.axes[0]
        roots.append(uf.find(an.leaf_nodes[index[path]][ax]))
    root_to_group = {r: gi for gi, r in enumerate(roots)}
    batch = uf.find(an.batch_node) if an.batch_node is not None else None
    if kind == "all":
        entries = list(an.produced)
    else:
        wanted = {
            "inputs": an.contraction_in,
            "outputs": an.contraction_out,
            "both": an.contraction_in | an.contraction_out,
        }[kind]
        entries = [e for e in an.nodes if e in wanted]
    per_group: list[list[tuple[Any, int]]] = [[] for _ in groups]
    for entry in dict.fromkeys(entries):
        ns = an.nodes.get(entry, ())
        if not ns or not jnp.issubdtype(entry[1].aval.dtype, jnp.floating):
            continue
        rs = [uf.find(n) for n in ns]
        hits = [(i, root_to_group[r]) for i, r in enumerate(rs) if r in root_to_group]
        if len(hits) == 1 and batch in rs:
            ax, gi = hits[0]
            per_group[gi].append((entry, ax))
    out = _Carriers(an.closed, per_group)
    per_target[key] = out
    return out


def group_activations(
    target: Target, params: Params, x: Any, *, kind: str = "inputs"
) -> list[list[jax.Array]]:
    """The hidden activations that carry each group, on a batch `x`.

    The traced apply is re-evaluated while recording intermediate values. A value carries a
    group if it has the batch axis and exactly one axis in the group. Which values count:

    - ``"inputs"`` (default): values fed into a contraction (``dot_general``/conv), i.e.
      the features the next layers read: post-nonlinearity activations, the residual
      stream entering each block, globally pooled features;
    - ``"outputs"``: results of the producing contractions (pre-activations, pre-norm);
    - ``"both"``: the union of the two;
    - ``"all"``: every intermediate value carrying the group.

    Each value becomes a matrix `[rows, size]`: the group axis last, batch and spatial axes
    flattened into rows. Permuting the group permutes the columns of every matrix, so any
    statistic built from them is permutation-equivariant. Traceable (`jit`/`vmap`).

    Args:
      target: the target.
      params: one network.
      x: inputs `[batch, ...]`.
      kind: ``"inputs"``, ``"outputs"``, ``"both"`` or ``"all"``.

    Returns:
      per group, a list of `[rows, size]` arrays (in forward order).
    """
    x = jnp.asarray(x)
    car = _carriers(target, x, kind)
    record = {v for vs in car.per_group for v, _ in vs}
    values = _interpret(car.closed, jax.tree.leaves(params), x, record)
    out = []
    for vs, g in zip(car.per_group, structural_groups(target), strict=True):
        out.append([jnp.moveaxis(values[v], ax, -1).reshape(-1, g.size) for v, ax in vs])
    return out


# ---------------------------------------------------------------------------------------
# Group importance, parameter and FLOP counts, physical removal of units
# ---------------------------------------------------------------------------------------

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
        raise ValueError(f"importance method {method!r}; expected one of {IMPORTANCE_METHODS}")
    if normalizer not in IMPORTANCE_NORMALIZERS:
        raise ValueError(
            f"importance normalizer {normalizer!r}; expected one of {IMPORTANCE_NORMALIZERS}"
        )
    if method == "random" and key is None:
        raise ValueError("importance method 'random' needs a key")
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
            for path, ax in g.axes:
                if target.spec[index[path]].role not in _IMPORTANCE_ROLES:
                    continue
                a = xp.moveaxis(xp.asarray(leaves[index[path]], np.float32), ax, 0)
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
    x = _sample_input(target, sample_input, batch=1)
    leaves = [jax.ShapeDtypeStruct(s.shape, np.dtype(s.dtype)) for s in target.spec]
    try:
        closed = jax.make_jaxpr(_fn(target))(leaves, jax.ShapeDtypeStruct(x.shape, x.dtype))
    except Exception as e:  # noqa: BLE001 - name the target in any tracing error
        raise ValueError(f"{target.name}: cannot trace apply to count FLOPs: {e}") from e

    def walk(jx: Any) -> int:
        total = 0
        for eqn in jx.eqns:
            subs = [
                v
                for v in eqn.params.values()
                if isinstance(v, jcore.ClosedJaxpr | jcore.Jaxpr)
                or (isinstance(v, tuple) and v and isinstance(v[0], jcore.ClosedJaxpr))
            ]
            for sub in subs:
                for s in sub if isinstance(sub, tuple) else (sub,):
                    total += walk(s.jaxpr if isinstance(s, jcore.ClosedJaxpr) else s)
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
        return total

    return walk(closed.jaxpr) // max(int(x.shape[0]), 1)


def derive_target(
    target: Target,
    params: Params,
    *,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    check: bool = True,
) -> Target:
    """A target for `params`, whose leaves are leaves of `target` with possibly fewer units.

    The new target reuses `target`'s apply functions (which must accept the smaller arrays,
    as Flax layers do) and its leaf descriptions with new shapes and fans; nothing is traced
    unless `check`. Leaves of `target` that `params` lacks are dropped (their apply must then
    tolerate their absence, e.g. a network that loops over the blocks it is given).

    Args:
      target: the original target.
      params: one network with the new shapes.
      name: default ``"<target name>-compact"``.
      config: stored on the new target (default: ``{"derived_from": target.config}``).
      check: trace the apply once (`jax.eval_shape`) on `target.input_shape` and raise if
        it fails.

    Raises:
      ValueError: a leaf unknown to `target`, a leaf whose number of axes changed, or
        (with `check`) an apply that does not accept the new shapes.
    """
    from hyper.target import _fans_and_axes, default_init, leaf_paths

    if not isinstance(params, dict):
        raise TypeError(f"derive_target: params must be a nested dict, got {type(params).__name__}")
    paths = leaf_paths(params)
    known = {s.path: s for s in target.spec}
    specs = []
    for path, leaf in zip(paths, jax.tree.leaves(params), strict=True):
        if path not in known:
            raise ValueError(f"derive_target: leaf {path!r} is not a leaf of {target.name}")
        s = known[path]
        shape = tuple(int(d) for d in np.shape(leaf))
        if len(shape) != len(s.shape):
            raise ValueError(
                f"derive_target: leaf {path!r} has shape {shape}; {target.name} has {s.shape}"
            )
        specs.append(dataclasses.replace(s, shape=shape))
    kernel_shape: dict[str, tuple[int, ...]] = {}
    for s in specs:
        if s.role == "kernel":
            kernel_shape.setdefault(s.layer_name, s.shape)
    layers = sorted({s.layer for s in specs})
    renumber = {old: new for new, old in enumerate(layers)}
    new_specs = []
    for s in specs:
        fan_in, fan_out, _, _ = _fans_and_axes(s.role, s.shape, kernel_shape.get(s.layer_name))
        new_specs.append(
            dataclasses.replace(
                s, fan_in=int(fan_in), fan_out=int(fan_out), layer=renumber[s.layer]
            )
        )
    new: Target

    def init_fn(key: jax.Array) -> Params:
        return default_init(new, key)

    new = Target(
        name=name or f"{target.name}-compact",
        spec=tuple(new_specs),
        treedef=jax.tree.structure(params),
        init_fn=init_fn,
        apply_fn=target.pure_apply,
        train_apply_fn=target._train_apply_fn,  # noqa: SLF001 - same module family
        input_shape=target.input_shape,
        config=config if config is not None else {"derived_from": target.config},
    )
    if check and target.input_shape is not None:
        try:
            jax.eval_shape(
                new.pure_apply,
                new.abstract_params(),
                jax.ShapeDtypeStruct((1, *target.input_shape), jnp.float32),
            )
        except Exception as e:  # noqa: BLE001 - name the target in any tracing error
            raise ValueError(f"{new.name}: apply does not accept the new shapes: {e}") from e
    return new


def _keep_indices(g: Group, k: Any) -> np.ndarray:
    """Sorted unit indices of group `g` to keep, from a bool mask or an index array."""
    k = np.asarray(k)
    if k.dtype == bool:
        if k.shape != (g.size,):
            raise ValueError(
                f"remove_units: group {g.name!r} has {g.size} units, got a mask of shape {k.shape}"
            )
        idx = np.flatnonzero(k)
    else:
        if k.ndim != 1 or not np.issubdtype(k.dtype, np.integer):
            raise ValueError(
                f"remove_units: group {g.name!r}: keep a bool mask [{g.size}] or 1-D int "
                f"indices, got {k.dtype} {k.shape}"
            )
        idx = np.unique(k)
        if idx.size and (idx[0] < 0 or idx[-1] >= g.size):
            raise ValueError(
                f"remove_units: group {g.name!r} has {g.size} units, got indices out of range"
            )
    if idx.size == 0:
        layer = ", ".join(g.producers) or g.name
        raise ValueError(
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
      name, config, check: as in `derive_target`.

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
            raise ValueError(f"remove_units: unknown groups {unknown}; groups are {sorted(names)}")
        keep = [keep.get(g.name) for g in groups]
    keep = list(keep)
    if len(keep) != len(groups):
        raise ValueError(f"remove_units: {len(keep)} keep entries for {len(groups)} groups")
    target.validate(params)
    index = {p: i for i, p in enumerate(target.paths)}
    leaves = [np.asarray(a) for a in jax.tree.leaves(params)]
    for g, k in zip(groups, keep, strict=True):
        if k is None:
            continue
        idx = _keep_indices(g, k)
        for path, ax in g.axes:
            if path not in index:
                raise ValueError(f"remove_units: group {g.name!r} names unknown leaf {path!r}")
            leaves[index[path]] = np.take(leaves[index[path]], idx, axis=ax)
    # device_put, not jnp.asarray: the latter compiles a copy for every new shape
    new_params = jax.tree.unflatten(target.treedef, [jax.device_put(a) for a in leaves])
    new = derive_target(target, new_params, name=name, config=config, check=check)
    return new, new_params
