"""The traced computation re-evaluated at new sizes.

After hidden units are removed (`hyper.compact.remove_units`) the leaves are smaller, but
the code that built the network may not accept them: Linen checks every parameter against
its initializer, NNX attention reshapes to its stored ``(heads, head_dim)``, a hand-written
function may hard-code a width. `resized` does not run that code again. It traces the
original ``fn(leaves, x)`` once per input shape (`hyper.unit_axes.analyze_axes`), reads the
new size of every axis class from the new leaves' shapes, and evaluates the original
jaxpr (`hyper.jaxpr.evaluate`) on the smaller leaves, rewriting each primitive's
shape-carrying parameters (``reshape``'s ``new_sizes``, ``broadcast_in_dim``'s and
``iota``'s ``shape``, ...) to the new sizes. Literals stay as traced: a mean over a
smaller axis still divides by the original width, and attention still scales by the
original ``1/sqrt(head_dim)``.

The contract: the result equals the original computation on the *masked* leaves, the
original leaves with every slice of the removed units set to zero. That holds whenever
every sum over a shrunk axis (a reduction, a contraction) adds values that are exactly
zero at the removed units in the masked network; the evaluation tracks that property
("zero at removed units") through the primitives and refuses, naming the primitive and
the units, where it does not hold (a centred variance ``mean((x - mean)^2)`` over the
units, a maximum over them). LayerNorm/RMSNorm with Flax's default fast variance
(``mean(x^2) - mean(x)^2``) qualifies: its statistics equal the original's with the
removed units' activations zero. Leaves may also grow (`hyper.pleas` widens networks): the
contract then reads backwards, the original is the wider computation with the added units'
slices zeroed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jcore
import numpy as np

from hyper import jaxpr as jaxpr_lib
from hyper.errors import WeightspaceError
from hyper.unit_axes import AxisClasses, analyze_axes, gather_offset_axes

__all__ = ["Resized", "Source", "resized", "source"]

# Elementwise primitives (same shape in and out, scalars broadcast).
_ZERO_KEEPING = frozenset(  # f(0) == 0: a unit that is zero stays zero
    """
    abs asin asinh atan atanh cbrt ceil conj convert_element_type copy copy_p erf erf_inv
    expm1 floor imag log1p neg real reduce_precision round sign sin sinh sqrt square tan tanh
    stop_gradient
    """.split()
)
_SUM_LIKE = frozenset("add sub max min add_any".split())  # zero if every operand is zero
_PRODUCT_LIKE = frozenset("mul and".split())  # zero if any operand is zero
_ELEMENTWISE = (
    _ZERO_KEEPING
    | _SUM_LIKE
    | _PRODUCT_LIKE
    | frozenset(
        """
        acos acosh atan2 clamp cos cosh digamma div eq exp exp2 ge gt integer_pow is_finite le
        lgamma log logistic lt ne nextafter not or pow rem rsqrt select_n xor
        shift_left shift_right_logical shift_right_arithmetic population_count
        """.split()
    )
)
_REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax "
    "argmin".split()
)
_LAYOUT = frozenset("transpose squeeze reshape broadcast_in_dim concatenate".split())
_SHAPE_PARAMS = ("shape", "new_sizes")


@dataclasses.dataclass
class _Plan:
    """One traced computation and the new size of each shrunk axis class."""

    an: AxisClasses
    sizes: dict[int, int]  # class root -> new size
    where: dict[int, str]  # class root -> the leaf axes it holds, for messages
    out_tree: Any

    def find(self, n: int) -> int:
        return self.an.uf.find(n)

    def new_shape(self, key: Any) -> tuple[int, ...]:
        uf = self.an.uf
        return tuple(self.sizes.get(uf.find(n), uf.size[n]) for n in self.an.nodes[key])

    def shrunk(self, key: Any) -> list[int | None]:
        """Per axis of a value: its class root if that class shrank, else None."""
        uf = self.an.uf
        out = []
        for n in self.an.nodes.get(key, ()):
            r = uf.find(n)
            out.append(r if r in self.sizes else None)
        return out


class Resized:
    """``fn(leaves, x)`` re-evaluated on smaller leaves (see the module docstring).

    Args:
      fn: the original computation on a list of leaves and an input array.
      leaves: the original leaves (arrays or `jax.ShapeDtypeStruct`s).
      paths: a name per leaf, for messages.
      what: what the computation is (for messages, e.g. the target's name).
      extra_unions: also tie the axes of same-shaped operands of primitives the axis
        analysis does not know (bit twiddling of a dropout mask), so that their shapes
        follow the units they are combined with.

    Calling it as ``fn(new_leaves, x)`` traces the original once per input shape and new
    leaf shapes (cached) and evaluates it at the new sizes; traceable (`jit`, `vmap`).
    """

    def __init__(
        self,
        fn: Callable[[list[Any], Any], Any],
        leaves: Sequence[Any],
        paths: Sequence[str],
        *,
        what: str,
        extra_unions: bool = False,
    ):
        self.fn = fn
        self.leaves = [jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in leaves]
        self.paths = list(paths)
        self.what = what
        self.extra_unions = extra_unions
        self._plans: dict[Any, _Plan] = {}
        self._traced: dict[Any, tuple[AxisClasses, Any]] = {}

    # --- planning -------------------------------------------------------------------

    def plan(self, new_shapes: Sequence[tuple[int, ...]], x: Any) -> _Plan:
        """The analysis of the original traced on `x`'s shape and the new class sizes."""
        new_shapes = [tuple(int(d) for d in s) for s in new_shapes]
        key = (tuple(new_shapes), tuple(np.shape(x)), str(x.dtype))
        if key in self._plans:
            return self._plans[key]
        if len(new_shapes) != len(self.leaves):
            raise WeightspaceError(
                f"{self.what}: {len(new_shapes)} leaves given, the original has {len(self.leaves)}"
            )
        an, out_tree = self._analysis(x)
        uf = an.uf
        sizes: dict[int, int] = {}
        where: dict[int, list[str]] = {}
        for path, leaf, shape, ns in zip(
            self.paths, self.leaves, new_shapes, an.leaf_nodes, strict=True
        ):
            if len(shape) != len(leaf.shape):
                raise WeightspaceError(
                    f"{self.what}: leaf {path!r} has shape {shape}, the original {leaf.shape}"
                )
            for ax, (old, new, n) in enumerate(zip(leaf.shape, shape, ns, strict=True)):
                r = uf.find(n)
                where.setdefault(r, []).append(f"{path}:{ax}")
                if new == old:
                    continue
                if new < 1:  # more units than the original: the contract read backwards
                    raise WeightspaceError(
                        f"{self.what}: leaf {path!r} axis {ax} has {new} units, at least 1 needed"
                    )
                if sizes.setdefault(r, new) != new:
                    raise WeightspaceError(
                        f"{self.what}: leaf {path!r} axis {ax} has {new} units, but the axes "
                        f"it is tied to ({', '.join(where[r])}) have {sizes[r]}"
                    )
        text = {r: ", ".join(ws) for r, ws in where.items()}
        for path, leaf, shape, ns in zip(
            self.paths, self.leaves, new_shapes, an.leaf_nodes, strict=True
        ):
            for ax, (old, new, n) in enumerate(zip(leaf.shape, shape, ns, strict=True)):
                r = uf.find(n)
                if new == old and r in sizes:
                    raise WeightspaceError(
                        f"{self.what}: leaf {path!r} axis {ax} keeps {old} units, but the "
                        f"axes it is tied to ({text[r]}) have {sizes[r]}; slice every axis "
                        "of the group (hyper.compact.remove_units does)"
                    )
        _split_sizes(uf, sizes)
        x_var = an.closed.jaxpr.invars[-1]
        for n in an.nodes[((), x_var)]:
            if uf.find(n) in sizes:
                raise WeightspaceError(
                    f"{self.what}: the units of {text[uf.find(n)]} are axes of the input; "
                    "they cannot be removed"
                )
        plan = _Plan(an, sizes, text, out_tree)
        self._plans[key] = plan
        return plan

    def _analysis(self, x: Any) -> tuple[AxisClasses, Any]:
        """The original traced on `x`'s shape, its axis classes and output tree (cached:
        pruning in rounds asks for many new sizes at one input shape)."""
        key = (tuple(np.shape(x)), str(x.dtype))
        if key not in self._traced:
            xs = jax.ShapeDtypeStruct(np.shape(x), x.dtype)
            try:
                an = analyze_axes(self.fn, self.leaves, xs)
                out_tree = jax.tree.structure(jax.eval_shape(self.fn, self.leaves, xs))
            except Exception as e:  # noqa: BLE001 - name the computation in any tracing error
                raise WeightspaceError(f"{self.what}: cannot trace the original: {e}") from e
            if self.extra_unions:
                _tie_same_shapes(an)
            self._traced[key] = (an, out_tree)
        return self._traced[key]

    # --- evaluation -----------------------------------------------------------------

    def __call__(self, new_leaves: Sequence[Any], x: Any) -> Any:
        new_leaves = list(new_leaves)
        plan = self.plan([np.shape(a) for a in new_leaves], x)
        outs = _Evaluation(self, plan).run(new_leaves, x)
        return jax.tree.unflatten(plan.out_tree, outs)


def resized(
    fn: Callable[[list[Any], Any], Any],
    leaves: Sequence[Any],
    paths: Sequence[str],
    *,
    what: str,
    extra_unions: bool = False,
) -> Resized:
    """`Resized` (see there): ``fn(leaves, x)`` re-evaluated on smaller leaves."""
    return Resized(fn, leaves, paths, what=what, extra_unions=extra_unions)


def _tie_same_shapes(an: AxisClasses) -> None:
    """Unifies the axes of same-shaped operands and results of primitives the analysis
    blocks wholesale (``shift_right_logical``, ``bitcast_convert_type``, ``random_bits``'
    consumers): their shapes must follow each other when units shrink."""
    uf = an.uf
    for step in jaxpr_lib.steps(an.closed):
        if step.kind != "eqn":
            continue
        eqn = step.eqn
        if eqn.primitive.name in _REDUCTIONS or eqn.primitive.name in _LAYOUT:
            continue
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            continue
        if jaxpr_lib.sub_jaxpr(eqn) is not None or len(eqn.outvars) != 1:
            continue
        out_key = (step.scope, eqn.outvars[0])
        shape = tuple(getattr(eqn.outvars[0].aval, "shape", ()))
        if out_key not in an.nodes or not shape:
            continue
        for v in eqn.invars:
            if isinstance(v, jcore.Var) and tuple(v.aval.shape) == shape:
                for a, b in zip(an.nodes[(step.scope, v)], an.nodes[out_key], strict=True):
                    uf.union(a, b)


class _Evaluation:
    """One evaluation of a plan: the jaxpr bound primitive by primitive at new sizes,
    tracking which axes are zero at the removed units (``zero``)."""

    def __init__(self, owner: Resized, plan: _Plan):
        self.owner = owner
        self.plan = plan
        self.scopes: list[tuple[int, ...]] = [()]
        self.zero: dict[Any, frozenset[int]] = {}

    def run(self, leaves: list[Any], x: Any) -> list[Any]:
        closed = self.plan.an.closed
        for v in closed.jaxpr.invars[:-1]:
            self.zero[((), v)] = frozenset(
                i for i, r in enumerate(self.plan.shrunk(((), v))) if r is not None
            )
        return jaxpr_lib.evaluate(closed, [*leaves, x], record=self.record, replace=self.replace)

    # Scopes: `replace` is not told where an equation lives; `record` sees calls.
    def record(self, step: jaxpr_lib.Step, invals: Any, outvals: Any) -> None:
        if step.kind == "call":
            for iv, ov in zip(step.body.jaxpr.invars, step.eqn.invars, strict=True):
                self.zero[(step.inner, iv)] = self._z(step.scope, ov)
            self.scopes.append(step.inner)
        elif step.kind == "return":
            self.scopes.pop()
            for ov, bv in zip(step.eqn.outvars, step.body.jaxpr.outvars, strict=True):
                if not jaxpr_lib.is_drop(ov):
                    self.zero[(step.scope, ov)] = self._z(step.inner, bv)

    def _z(self, scope: tuple, v: Any) -> frozenset[int]:
        if isinstance(v, jcore.Literal):
            return frozenset()
        return self.zero.get((scope, v), frozenset())

    def _fail(self, eqn: Any, root: int, why: str) -> WeightspaceError:
        return WeightspaceError(
            f"{self.owner.what}: cannot remove units of {self.plan.where.get(root, '?')}: "
            f"primitive {eqn.primitive.name!r} {why}"
        )

    def replace(self, eqn: Any, invals: list[Any]) -> list[Any] | None:
        scope = self.scopes[-1]
        plan = self.plan
        outs_key = [(scope, v) for v in eqn.outvars]
        want = [plan.new_shape(k) for k in outs_key]
        in_shrunk = [
            plan.shrunk((scope, v)) if isinstance(v, jcore.Var) else [] for v in eqn.invars
        ]
        touched = any(r is not None for rs in in_shrunk for r in rs) or any(
            r is not None for k in outs_key for r in plan.shrunk(k)
        )
        zs = [self._z(scope, v) for v in eqn.invars]
        self._check_sums(eqn, in_shrunk, zs)
        out_zero = _zero_rule(eqn, zs, [np.ndim(a) for a in invals])
        for k in outs_key:
            self.zero[k] = out_zero
        if not touched:
            return None
        name = eqn.primitive.name
        if jaxpr_lib.sub_jaxpr(eqn) is not None or not (
            name in _ELEMENTWISE
            or name in _REDUCTIONS
            or name in _LAYOUT
            or name in ("dot_general", "conv_general_dilated", "cumsum", "cummax", "cummin")
            or name == "gather"
            or any(p in eqn.params for p in _SHAPE_PARAMS)
            or name in _UNIT_FREE
        ):
            root = next(
                r
                for rs in in_shrunk + [plan.shrunk(k) for k in outs_key]
                for r in rs
                if r is not None
            )
            raise self._fail(eqn, root, "has no rule for evaluation at new sizes")
        params = dict(eqn.params)
        if name == "reshape":
            if params.get("dimensions") is not None:
                raise self._fail(eqn, _first(in_shrunk), "reshapes with dimensions")
            params["new_sizes"] = _reshape_sizes(
                tuple(eqn.invars[0].aval.shape),
                tuple(eqn.outvars[0].aval.shape),
                tuple(np.shape(invals[0])),
                want[0],
            )
        elif name == "broadcast_in_dim":
            shape = list(want[0])
            for j, d in enumerate(params["broadcast_dimensions"]):
                if eqn.invars[0].aval.shape[j] == eqn.outvars[0].aval.shape[d]:
                    shape[d] = np.shape(invals[0])[j]
            params["shape"] = tuple(shape)
        elif "shape" in params:
            params["shape"] = want[0]
        elif name == "gather":
            params["slice_sizes"] = self._gather_sizes(eqn, in_shrunk, np.shape(invals[0]))
        elif name == "conv_general_dilated" and params["feature_group_count"] > 1:
            lhs, rhs = np.shape(invals[0]), np.shape(invals[1])
            dn = params["dimension_numbers"]
            params["feature_group_count"] = lhs[dn.lhs_spec[1]] // rhs[dn.rhs_spec[1]]
        outs = jaxpr_lib.bind(eqn.replace(params=params), invals)
        for o, w, k in zip(outs, want, outs_key, strict=True):
            if tuple(np.shape(o)) != w and name != "reshape":
                r = next((r for r in plan.shrunk(k) if r is not None), _first(in_shrunk))
                raise self._fail(
                    eqn, r, f"gives shape {tuple(np.shape(o))} at the new sizes, expected {w}"
                )
        return outs

    def _gather_sizes(
        self, eqn: Any, in_shrunk: list[list[int | None]], new_operand: tuple[int, ...]
    ) -> tuple[int, ...]:
        """``gather``'s ``slice_sizes`` at the new sizes: an operand axis taken whole (an
        embedding table's feature axis) keeps being taken whole; units of an indexed axis,
        a partial slice, the index vector or a batching axis cannot be removed."""
        p = eqn.params
        dn = p["dimension_numbers"]
        whole = gather_offset_axes(p, tuple(eqn.invars[0].aval.shape))
        for i, r in enumerate(in_shrunk[0]):
            if r is not None and i not in whole:
                raise self._fail(
                    eqn,
                    r,
                    f"indexes or slices operand axis {i} (slice sizes {p['slice_sizes']}); "
                    "only an axis taken whole (an embedding's feature axis) can shrink",
                )
        idx = in_shrunk[1] if len(in_shrunk) > 1 else []
        batching = set(getattr(dn, "start_indices_batching_dims", ()))
        for j, r in enumerate(idx):
            if r is not None and (j == len(idx) - 1 or j in batching):
                raise self._fail(eqn, r, f"uses index axis {j} as indices or a batching axis")
        sizes = list(p["slice_sizes"])
        for i in whole:
            sizes[i] = int(new_operand[i])
        return tuple(sizes)

    def _check_sums(self, eqn: Any, in_shrunk: list[list[int | None]], zs: list) -> None:
        """Every sum over a shrunk axis must add zeros at the removed units."""
        name, p = eqn.primitive.name, eqn.params
        if name in _REDUCTIONS or name in ("cumsum", "cummax", "cummin", "cumprod"):
            axes = p["axes"] if "axes" in p else (p["axis"],)
            for a in axes:
                r = in_shrunk[0][a] if a < len(in_shrunk[0]) else None
                if r is None:
                    continue
                if name != "reduce_sum":
                    raise self._fail(eqn, r, "reduces over them: its result changes")
                if a not in zs[0]:
                    raise self._fail(
                        eqn,
                        r,
                        "sums values over them that are not zero at the removed units (e.g. "
                        "a centred variance mean((x - mean)^2)); the compact network would "
                        "compute other statistics. Use a fast variance (mean(x^2) - "
                        "mean(x)^2, Flax's default) or keep these units",
                    )
        elif name == "dot_general":
            (lc, rc), _ = p["dimension_numbers"]
            for a, b in zip(lc, rc, strict=True):
                r = in_shrunk[0][a] if in_shrunk[0] else None
                if r is not None and a not in zs[0] and b not in zs[1]:
                    raise self._fail(
                        eqn, r, "contracts two operands that are not zero at the removed units"
                    )
        elif name == "conv_general_dilated":
            dn = p["dimension_numbers"]
            a, b = dn.lhs_spec[1], dn.rhs_spec[1]
            r = in_shrunk[0][a] if in_shrunk[0] else None
            if r is not None and a not in zs[0] and b not in zs[1]:
                raise self._fail(
                    eqn, r, "contracts two operands that are not zero at the removed units"
                )
            for i in dn.lhs_spec[2:]:
                if in_shrunk[0] and in_shrunk[0][i] is not None:
                    raise self._fail(eqn, in_shrunk[0][i], "slides a window over them")
        elif name.startswith("reduce_window") or name in ("select_and_scatter_add",):
            dims = p.get("window_dimensions", ())
            for i, d in enumerate(dims):
                if d > 1 and in_shrunk[0] and in_shrunk[0][i] is not None:
                    raise self._fail(eqn, in_shrunk[0][i], "pools over them")


# Primitives whose parameters carry no unit count (windows over other axes).
_UNIT_FREE = frozenset(
    "reduce_window_sum reduce_window_max reduce_window_min cumprod bitcast_convert_type".split()
)


def _split_sizes(uf: Any, sizes: dict[int, int]) -> None:
    """Sizes of the sub-axes of shrunk composite axes (a GroupNorm's channels viewed as
    (groups, channels per group)): where exactly one sub-axis is permutable (not blocked),
    it takes the new size; the others keep theirs. Otherwise nothing is inferred, and a
    reshape that needs it is refused."""
    blocked = uf.blocked_roots()
    for r, new in list(sizes.items()):
        subs = uf.expand(r)
        if len(subs) < 2:
            continue
        free = [q for q in subs if q not in blocked and q not in sizes]
        if len(free) != 1:
            continue
        rest = math.prod(uf.size[q] for q in subs if q != free[0])
        if new % rest == 0:
            sizes[free[0]] = new // rest


def _first(in_shrunk: list[list[int | None]]) -> int:
    return next((r for rs in in_shrunk for r in rs if r is not None), -1)


def _reshape_sizes(
    old_in: tuple[int, ...],
    old_out: tuple[int, ...],
    new_in: tuple[int, ...],
    want: tuple[int, ...],
) -> tuple[int, ...]:
    """A reshape's output sizes at new sizes: the classes' sizes, and for an output axis
    that merges input axes (a flatten of shrunk channels) the product of their new sizes."""
    want = list(want)
    if math.prod(want) == math.prod(new_in):
        return tuple(want)
    i = j = 0
    while i < len(old_in) and j < len(old_out):
        ga, gb = [i], [j]
        pa, pb = old_in[i], old_out[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(old_in):
                ga.append(i)
                pa *= old_in[i]
                i += 1
            elif pb < pa and j < len(old_out):
                gb.append(j)
                pb *= old_out[j]
                j += 1
            else:
                break
        if len(gb) == 1 and len(ga) > 1:
            want[gb[0]] = math.prod(new_in[k] for k in ga)
    return tuple(want)


def _zero_rule(eqn: Any, zs: list[frozenset[int]], ranks: list[int]) -> frozenset[int]:
    """The axes of an equation's result that are zero at the removed units, given its
    operands' (`zs`). Conservative: an unknown primitive gives none."""
    name, p = eqn.primitive.name, eqn.params
    if len(eqn.outvars) != 1:
        return frozenset()
    out_rank = len(getattr(eqn.outvars[0].aval, "shape", ()))
    full = [z for z, r in zip(zs, ranks, strict=True) if r == out_rank and out_rank > 0]
    scalars = [v for v, r in zip(eqn.invars, ranks, strict=True) if r == 0]

    def is_zero_literal(v: Any) -> bool:
        return isinstance(v, jcore.Literal) and np.ndim(v.val) == 0 and float(v.val) == 0.0

    if name in _ZERO_KEEPING or (name == "integer_pow" and p.get("y", 0) > 0):
        return zs[0]
    if name in _SUM_LIKE:
        if not full or not all(is_zero_literal(v) for v in scalars):
            return frozenset()
        return frozenset.intersection(*full)
    if name in _PRODUCT_LIKE:
        return frozenset.union(frozenset(), *full)
    if name == "div":
        return zs[0] if ranks[0] == out_rank else frozenset()
    if name == "select_n":
        cases = zs[1:]
        return frozenset.intersection(*cases) if cases else frozenset()
    if name == "dot_general":
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        lfree = [i for i in range(ranks[0]) if i not in lc and i not in lb]
        rfree = [i for i in range(ranks[1]) if i not in rc and i not in rb]
        out = set()
        k = 0
        for a, b in zip(lb, rb, strict=True):
            if a in zs[0] or b in zs[1]:
                out.add(k)
            k += 1
        for i in lfree:
            if i in zs[0]:
                out.add(k)
            k += 1
        for i in rfree:
            if i in zs[1]:
                out.add(k)
            k += 1
        return frozenset(out)
    if name == "gather" and _fills_with_zero_or_nan(p):
        whole = gather_offset_axes(p, tuple(eqn.invars[0].aval.shape))
        return frozenset(o for i, o in whole.items() if i in zs[0])
    if name == "conv_general_dilated":
        dn = p["dimension_numbers"]
        return frozenset({dn.out_spec[1]}) if dn.rhs_spec[0] in zs[1] else frozenset()
    if name in _REDUCTIONS and name not in ("argmax", "argmin"):
        axes = set(p["axes"])
        kept = [i for i in range(ranks[0]) if i not in axes]
        return frozenset(j for j, i in enumerate(kept) if i in zs[0])
    if name in ("cumsum", "cummax", "cummin", "cumprod"):
        return frozenset(i for i in zs[0] if i != p["axis"])
    if name.startswith("reduce_window"):
        return zs[0]
    if name == "transpose":
        return frozenset(j for j, i in enumerate(p["permutation"]) if i in zs[0])
    if name == "squeeze":
        dims = {d % ranks[0] for d in p["dimensions"]}
        kept = [i for i in range(ranks[0]) if i not in dims]
        return frozenset(j for j, i in enumerate(kept) if i in zs[0])
    if name == "broadcast_in_dim":
        in_shape = eqn.invars[0].aval.shape
        out_shape = eqn.outvars[0].aval.shape
        return frozenset(
            d
            for j, d in enumerate(p["broadcast_dimensions"])
            if j in zs[0] and in_shape[j] == out_shape[d]
        )
    if name == "reshape":
        in_shape = tuple(eqn.invars[0].aval.shape)
        out_shape = tuple(eqn.outvars[0].aval.shape)
        return frozenset(b for a, b in _kept_axes(in_shape, out_shape) if a in zs[0])
    if name == "concatenate":
        d = p["dimension"]
        return frozenset(i for i in frozenset.intersection(*zs) if i != d) if zs else frozenset()
    return frozenset()


def _fills_with_zero_or_nan(p: dict) -> bool:
    """A gather whose out-of-bounds slices (mode ``fill``) are NaN or zero: a filled
    slice sums to the same (NaN or zero) over the kept units as over all of them."""
    if p.get("mode") != jax.lax.GatherScatterMode.FILL_OR_DROP:
        return True
    fill = p.get("fill_value")
    return fill is None or float(fill) == 0.0 or math.isnan(float(fill))


def _kept_axes(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[int, int]]:
    """Axes a reshape keeps one to one (same size, same place among the non-1 axes)."""
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [i for i, s in enumerate(b) if s != 1]
    out = []
    i = j = 0
    while i < len(ia) and j < len(ib):
        pa, pb = a[ia[i]], b[ib[j]]
        si, sj = i, j
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(ia):
                pa *= a[ia[i]]
                i += 1
            elif pb < pa and j < len(ib):
                pb *= b[ib[j]]
                j += 1
            else:
                break
        if i - si == 1 and j - sj == 1 and pa == pb:
            out.append((ia[si], ib[sj]))
    return out


@dataclasses.dataclass(frozen=True)
class Source:
    """The original computations a target with fewer units re-evaluates.

    Attributes:
      apply: ``apply`` on the original's leaves, as a `Resized`.
      train: ``train_apply`` (the RNG key as one more leaf), or None.
      treedef: the params tree structure (the same at every size).
    """

    apply: Resized
    train: Resized | None
    treedef: Any

    def functions(self) -> tuple[Callable, Callable | None]:
        """``(apply(params, x), train_apply(params, x, key))`` at the params' sizes."""

        def apply_fn(params, x):
            return self.apply(jax.tree.leaves(params), x)

        if self.train is None:
            return apply_fn, None
        train = self.train

        def train_fn(params, x, key):
            return train([*jax.tree.leaves(params), key], x)

        return apply_fn, train_fn


def source(
    apply_fn: Callable[[Any, Any], Any],
    train_fn: Callable[[Any, Any, Any], Any] | None,
    treedef: Any,
    leaves: Sequence[Any],
    paths: Sequence[str],
    *,
    what: str,
) -> Source:
    """The `Source` of a target given by its functions, tree structure and leaves."""

    def on_leaves(ls, x):
        return apply_fn(jax.tree.unflatten(treedef, ls), x)

    train = None
    if train_fn is not None:

        def train_on_leaves(ls, x):
            *ps, key = ls
            return train_fn(jax.tree.unflatten(treedef, ps), x, key)

        key = jax.eval_shape(lambda: jax.random.key(0))
        train = Resized(
            train_on_leaves,
            [*leaves, key],
            [*paths, "<rng key>"],
            what=f"{what} (train_apply)",
            extra_unions=True,
        )
    return Source(Resized(on_leaves, leaves, paths, what=what), train, treedef)
