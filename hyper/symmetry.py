"""Structural groups: the permutable sets of hidden units of a target, and their use.

A *structural group* is one set of hidden units (neurons or channels) that can be permuted
together without changing the function a network computes: a layer's kernel out-axis and
bias, the BatchNorm that follows it (scale, shift, running mean and variance), the next
layer's kernel in-axis, and, through residual additions, every other layer whose channels
are added to them. Input and output units are never permutable.

The groups are derived, not declared: `structural_groups` traces the target's evaluation
`apply` and classifies its array axes (`hyper.unit_axes`); each permutable class that
contains an axis of a weight leaf is one `Group`. No architecture is special-cased;
`verify_groups` checks the result numerically. `permute` applies permutations of the
groups, and `group_activations` records the hidden activations that carry each group.

A group may index a *sub-axis* of a leaf axis: the rows of the dense kernel after a flatten
``[B, H, W, C] -> [B, H*W*C]`` are ``(H, W, C)`` row-major, and the conv channels before
the flatten are a group that holds ``StridedAxis("fc1/kernel", 0, (H, W, C), 2)``; a
depthwise convolution's kernel out-axis ``C*m`` is ``(C, m)``. Such entries live in
`Group.strided`; `entries`, `take_units`, `units_first` and `units_restore` handle both
kinds, and every consumer goes through them. `axis_views` lists every composite weight
axis. What the analysis could not group (a hidden kernel axis blocked by an unsupported
primitive) is reported by `left_out`, with the primitive that blocked it.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hyper import jaxpr as jaxpr_lib
from hyper.errors import WeightspaceError
from hyper.target import Params, Target
from hyper.unit_axes import AxisClasses, analyze_axes

__all__ = [
    "AxisView",
    "Group",
    "LeftOut",
    "StridedAxis",
    "axis_views",
    "same_units",
    "entries",
    "left_out",
    "take_units",
    "units_first",
    "units_restore",
    "check_equivalent",
    "group_activations",
    "permute",
    "random_permutations",
    "apply_on_leaves",
    "example_batch",
    "scrambled_params",
    "structural_groups",
    "verify_groups",
]


class StridedAxis(NamedTuple):
    """A sub-axis of a leaf axis: the axis viewed row-major as `shape`, sub-axis `sub`.

    Attributes:
      path: the leaf path.
      axis: the leaf axis, of length ``prod(shape)``.
      shape: that axis viewed row-major as this shape.
      sub: the index in `shape` of the sub-axis that the group's units index.
    """

    path: str
    axis: int
    shape: tuple[int, ...]
    sub: int


Entry = tuple[str, int] | StridedAxis
"""One group entry: a whole axis ``(path, axis)`` or a `StridedAxis`."""


@dataclasses.dataclass(frozen=True)
class Group:
    """One permutable set of hidden units.

    Attributes:
      name: the producing layers' names joined by ``"+"`` (e.g. ``"stem+blocks/0/conv2"``).
      size: number of units (the length of every axis in `axes`).
      axes: ``(leaf path, axis)`` pairs this group permutes (whole axes), in spec order.
      producers: paths of the kernels whose out-axis (or a sub-axis of it) is in the group.
      consumers: paths of the kernels whose in-axis (or a sub-axis of it) is in the group.
      strided: sub-axes of leaf axes this group permutes (see `StridedAxis`), in spec
        order. Use `entries` to read both kinds.
    """

    name: str
    size: int
    axes: tuple[tuple[str, int], ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    strided: tuple[StridedAxis, ...] = ()


def entries(g: Group) -> tuple[Entry, ...]:
    """Every entry of `g`: its whole axes ``(path, axis)``, then its `StridedAxis` entries."""
    return (*g.axes, *g.strided)


def _xp(a: Any) -> Any:
    return np if isinstance(a, np.ndarray | np.generic) else jnp


def _view(leaf: Any, entry: Entry) -> tuple[Any, int]:
    """`leaf` with a strided entry's axis split into its shape, and the units' axis."""
    if isinstance(entry, StridedAxis):
        shape = tuple(np.shape(leaf))
        ax = entry.axis
        return leaf.reshape((*shape[:ax], *entry.shape, *shape[ax + 1 :])), ax + entry.sub
    return leaf, entry[1]


def take_units(leaf: Any, entry: Entry, idx: Any) -> Any:
    """Keeps (or reorders) units `idx` of `entry` in `leaf` (a NumPy or JAX array).

    For a whole axis this is ``take(leaf, idx, axis)``; for a `StridedAxis` the axis is
    viewed as its shape, the sub-axis is indexed, and the axis merged back.
    """
    xp = _xp(leaf)
    v, ax = _view(leaf, entry)
    out = xp.take(v, idx if xp is np else jnp.asarray(idx), axis=ax)
    if isinstance(entry, StridedAxis):
        shape = tuple(np.shape(leaf))
        merged = int(np.prod(np.shape(out)[entry.axis : entry.axis + len(entry.shape)]))
        out = out.reshape((*shape[: entry.axis], merged, *shape[entry.axis + 1 :]))
    return out


def units_first(leaf: Any, entry: Entry) -> Any:
    """`leaf` as ``[units, ...]``: the entry's units axis first (other axes in order)."""
    v, ax = _view(leaf, entry)
    return _xp(leaf).moveaxis(v, ax, 0)


def units_restore(units: Any, entry: Entry, shape: Sequence[int]) -> Any:
    """The inverse of `units_first`: a leaf of `shape` from its ``[units, ...]`` view."""
    shape = tuple(shape)
    ax = entry.axis + entry.sub if isinstance(entry, StridedAxis) else entry[1]
    return _xp(units).moveaxis(units, 0, ax).reshape(shape)


# --- Groups ------------------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def example_batch(target: Target, x: Any | None = None, batch: int = 2) -> Any:
    """`x` as an array, or zeros `[batch, *target.input_shape]` (`target.input_dtype`) if
    None."""
    if x is not None:
        return jnp.asarray(x)
    if target.input_shape is None:
        raise WeightspaceError(
            f"{target.name}: the target has no input_shape; pass a sample input batch"
        )
    return jnp.zeros((batch, *target.input_shape), target.input_dtype)


def apply_on_leaves(target: Target) -> Callable[[list[Any], Any], Any]:
    """``fn(leaves, x)``: the target's evaluation apply on its leaves in spec order."""

    def fn(leaves, x):
        return target.pure_apply(jax.tree.unflatten(target.treedef, leaves), x)

    return fn


def _analysis(target: Target, x: Any) -> AxisClasses:
    """The (cached) analysis of `target` traced on inputs shaped like `x`."""
    per_target = _CACHE.setdefault(target, {})
    key = ("analysis", tuple(np.shape(x)), str(jnp.asarray(x).dtype))
    if key not in per_target:
        leaves = [jax.ShapeDtypeStruct(s.shape, np.dtype(s.dtype)) for s in target.spec]
        try:
            per_target[key] = analyze_axes(
                apply_on_leaves(target), leaves, jax.ShapeDtypeStruct(x.shape, x.dtype)
            )
        except Exception as e:  # noqa: BLE001 - name the target in any tracing error
            raise WeightspaceError(
                f"{target.name}: cannot trace apply for group analysis: {e}"
            ) from e
    return per_target[key]


@dataclasses.dataclass
class _Members:
    """The leaf axes of one unblocked class: whole axes and sub-axes of composite axes."""

    whole: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (leaf, axis)
    strided: list[tuple[int, int, tuple[int, ...], int]] = dataclasses.field(
        default_factory=list
    )  # (leaf, axis, shape, sub)


def _group_roots(an: AxisClasses) -> dict[int, _Members]:
    """Unblocked class root -> its leaf axes, for every class holding a leaf (sub-)axis."""
    uf = an.uf
    blocked = uf.blocked_roots()
    classes: dict[int, _Members] = {}
    for i, ns in enumerate(an.leaf_nodes):
        for ax, n in enumerate(ns):
            exp = uf.expand(n)
            if len(exp) == 1:
                if exp[0] not in blocked:
                    classes.setdefault(exp[0], _Members()).whole.append((i, ax))
                continue
            shape = tuple(uf.size[r] for r in exp)
            for sub, r in enumerate(exp):
                if r not in blocked:
                    classes.setdefault(r, _Members()).strided.append((i, ax, shape, sub))
    return classes


def _neuron_axes(s: Any, kind: str) -> tuple[int, ...]:
    """A kernel's input (``"in"``) or output (``"out"``) neuron axes."""
    many = getattr(s, f"{kind}_axes", None)
    if many:
        return tuple(many)
    one = getattr(s, f"{kind}_axis", None)
    return () if one is None else (one,)


def structural_groups(
    target: Target, *, sample_input: Any = None, check: bool = False
) -> list[Group]:
    """The permutable groups of hidden units of `target` (see the module docstring).

    Layers that no group covers (e.g. a hidden axis that an unsupported primitive such as
    a sort or a scan touches) are not an error here: ``left_out(target)`` lists each such
    kernel axis with the primitive that blocked it, and `hyper.align` warns about them.

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
        x = example_batch(target, sample_input)
        an = _analysis(target, x)
        spec = target.spec
        groups = []
        for root, m in _group_roots(an).items():
            m.whole.sort()
            m.strided.sort()
            axes = tuple((spec[i].path, ax) for i, ax in m.whole)
            strided = tuple(StridedAxis(spec[i].path, ax, sh, sub) for i, ax, sh, sub in m.strided)
            touched = [(i, ax) for i, ax in m.whole] + [(i, ax) for i, ax, _, _ in m.strided]
            size = an.uf.size[root]

            def kernels(kind, touched=touched):
                return tuple(
                    dict.fromkeys(
                        spec[i].path
                        for i, ax in sorted(touched)
                        if spec[i].role == "kernel" and ax in _neuron_axes(spec[i], kind)
                    )
                )

            producers, consumers = kernels("out"), kernels("in")
            named = [spec[i] for i, _ in touched if spec[i].path in producers] or [
                spec[i] for i, _ in touched
            ]
            name = "+".join(dict.fromkeys(s.layer_name for s in sorted(named, key=_order)))
            first = min(_order(s) for s in named)
            group = Group(name, int(size), axes, producers, consumers, strided)
            groups.append((first, root, group))
        groups.sort(key=lambda t: t[0])
        per_target["groups"] = [g for _, _, g in groups]
    groups = per_target["groups"]
    if check and not per_target.get("checked"):
        verify_groups(target, jax.random.key(0), sample_input=sample_input, groups=groups)
        per_target["checked"] = True
    return list(groups)


class LeftOut(NamedTuple):
    """A hidden kernel axis that no structural group covers, and why.

    Attributes:
      layer: the kernel's layer name.
      path: the kernel's leaf path.
      axis: the kernel axis (an input or output neuron axis).
      primitive: the primitive that blocked it (e.g. ``"sort"``, ``"cumsum"``).
      reason: what that primitive does to the axis.
    """

    layer: str
    path: str
    axis: int
    primitive: str
    reason: str


class AxisView(NamedTuple):
    """A leaf axis that is the row-major flatten of several axes of an intermediate value.

    Attributes:
      shape: the split shape (e.g. ``(H, W, C)`` for the dense kernel after a flatten).
      channel: which sub-axis carries a convolution's output channels, or None.
    """

    shape: tuple[int, ...]
    channel: int | None


def left_out(target: Target, sample_input: Any = None) -> list[LeftOut]:
    """Every hidden kernel or embedding axis (a neuron axis of size > 1 that is neither the
    network's input nor its output) that is in no structural group, with the primitive that
    blocked it.

    Such layers are skipped by pruning, alignment and graphs; to include them, replace the
    named primitive (e.g. a sort or scan over the channels) with supported operations.
    """
    an = _analysis(target, example_batch(target, sample_input))
    uf = an.uf
    blocked = uf.blocked_roots()
    io = {uf.find(n) for n in an.io_nodes}
    out = []
    for i, s in enumerate(target.spec):
        if s.role not in ("kernel", "embedding"):  # an embedding table's feature axis too
            continue
        for ax in sorted(set(_neuron_axes(s, "in") + _neuron_axes(s, "out"))):
            if s.shape[ax] <= 1:
                continue
            exp = uf.expand(an.leaf_nodes[i][ax])
            if any(r not in blocked or r in io for r in exp):
                continue
            reasons = [why for r in exp for why in uf.reasons(r)]
            if any(why.primitive in ("input", "output") for why in reasons):
                continue
            why = next((w for w in reasons if not w.spatial), reasons[0])
            out.append(LeftOut(s.layer_name, s.path, ax, why.primitive, why.detail))
    return out


def axis_views(target: Target, sample_input: Any = None) -> dict[tuple[str, int], AxisView]:
    """``(path, axis) -> AxisView`` for every leaf axis that is a composite of several axes
    (the dense kernel's rows after a flatten, a depthwise kernel's ``(C, m)`` out-axis)."""
    an = _analysis(target, example_batch(target, sample_input))
    uf = an.uf
    channels = {r for n in an.channel_nodes for r in uf.expand(n)}
    views = {}
    for s, ns in zip(target.spec, an.leaf_nodes, strict=True):
        for ax, n in enumerate(ns):
            exp = uf.expand(n)
            if len(exp) > 1:
                hit = [k for k, r in enumerate(exp) if r in channels]
                shape = tuple(uf.size[r] for r in exp)
                views[(s.path, ax)] = AxisView(shape, hit[0] if hit else None)
    return views


def same_units(target: Target, a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether leaf axes `a` and `b` (``(path, axis)``) index the same units in the same
    order: the analysis tied every row-major sub-axis of one to the other's, whether or not
    the units are permutable (a GroupNorm's ``(groups, channels / groups)`` view of a conv's
    channels ties them, though only the groups are a structural group)."""
    an = _analysis(target, example_batch(target))
    index = {s.path: i for i, s in enumerate(target.spec)}
    ea, eb = (an.uf.expand(an.leaf_nodes[index[p]][ax]) for p, ax in (a, b))
    return ea == eb


def _order(s: Any) -> tuple[int, str]:
    return (s.layer, s.path)


def _check_perms(groups: Sequence[Group], perms: Sequence[Any], batched: bool) -> None:
    if len(perms) != len(groups):
        raise WeightspaceError(f"permute: {len(perms)} permutations for {len(groups)} groups")
    for g, p in zip(groups, perms, strict=True):
        shape = tuple(np.shape(p))
        want = shape[-1:] if batched else shape
        if want != (g.size,) or len(shape) != 1 + batched:
            raise WeightspaceError(
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
        for entry in entries(g):
            i = index[entry[0]]
            leaves[i] = take_units(leaves[i], entry, perm)
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


def scrambled_params(target: Target, rng: np.random.Generator) -> list[np.ndarray]:
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
    x0 = example_batch(target, sample_input, batch=4)
    index = {p: i for i, p in enumerate(target.paths)}
    members, xs = [], []
    for _ in range(trials):
        leaves = scrambled_params(target, rng)
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
            for entry in entries(g):
                moved[index[entry[0]]] = take_units(moved[index[entry[0]]], entry, perm)
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
            raise WeightspaceError(
                f"{target.name}: permuting group {g.name!r} ({g.size} units, axes "
                f"{list(entries(g))}) changes the function; the group analysis is wrong here"
            )


# --- Hidden activations per group --------------------------------------------------


def _interpret(closed: Any, leaves: Sequence[Any], x: Any, record: set) -> dict[Any, Any]:
    """Evaluates `closed` on ``(leaves, x)``; returns the values of the `record` entries.

    Args:
      record: ``(scope, var)`` pairs as in `AxisClasses.produced`.
    """
    args = [*leaves, x]
    seen = {((), v): a for v, a in zip(closed.jaxpr.invars, args, strict=True) if ((), v) in record}

    def hook(step: jaxpr_lib.Step, invals: list[Any], outvals: list[Any] | None) -> None:
        if step.kind == "call":
            named = zip(step.body.jaxpr.invars, invals, strict=True)
            scope = step.inner
        else:
            named = zip(step.eqn.outvars, outvals, strict=True)
            scope = step.scope
        for v, val in named:
            if not jaxpr_lib.is_drop(v) and (scope, v) in record:
                seen[(scope, v)] = val

    jaxpr_lib.evaluate(closed, args, record=hook)
    return seen


_ACTIVATION_KINDS = ("inputs", "outputs", "both", "all")


@dataclasses.dataclass(frozen=True)
class _Carriers:
    """Per group: the intermediate values that carry it, as ((scope, var), group entry,
    axes of other groups).

    The entry is the value's axis (an int) or a `StridedAxis` (path ``""``) when the group
    is a sub-axis of a composite axis of the value (e.g. the flattened features). The other
    groups' axes (e.g. the head dims of a ``[batch, tokens, heads, head_dim]`` query, for
    the heads group) are sorted before use, so the columns do not depend on their order.
    """

    closed: Any
    per_group: list[list[tuple[Any, int | StridedAxis, tuple[int, ...]]]]


def _entry_root(an: AxisClasses, index: dict[str, int], entry: Entry) -> int:
    """The class root of a group entry in the analysis `an`."""
    node = an.leaf_nodes[index[entry[0]]][entry[1]]
    if isinstance(entry, StridedAxis):
        return an.uf.expand(node)[entry.sub]
    return an.uf.find(node)


def _carriers(target: Target, x: Any, kind: str) -> _Carriers:
    if kind not in _ACTIVATION_KINDS:
        raise WeightspaceError(f"activations kind {kind!r}; expected one of {_ACTIVATION_KINDS}")
    per_target = _CACHE.setdefault(target, {})
    key = ("carriers", kind, tuple(np.shape(x)), str(jnp.asarray(x).dtype))
    if key in per_target:
        return per_target[key]
    groups = structural_groups(target)
    an = _analysis(target, x)
    uf = an.uf
    index = {p: i for i, p in enumerate(target.paths)}
    root_to_group = {_entry_root(an, index, entries(g)[0]): gi for gi, g in enumerate(groups)}
    batch = uf.find(an.batch_node) if an.batch_node is not None else None
    if kind == "all":
        values = list(an.produced)
    else:
        wanted = {
            "inputs": an.contraction_in,
            "outputs": an.contraction_out,
            "both": an.contraction_in | an.contraction_out,
        }[kind]
        values = [e for e in an.nodes if e in wanted]
    per_group: list[list[tuple[Any, int | StridedAxis, tuple[int, ...]]]] = [[] for _ in groups]
    for value in dict.fromkeys(values):
        ns = an.nodes.get(value, ())
        if not ns or not jnp.issubdtype(value[1].aval.dtype, jnp.floating):
            continue
        exps = [uf.expand(n) for n in ns]
        hits = [
            (ax, sub, root_to_group[r])
            for ax, exp in enumerate(exps)
            for sub, r in enumerate(exp)
            if r in root_to_group
        ]
        if not hits or not any(batch in exp for exp in exps):
            continue
        for ax, sub, gi in hits:
            others = tuple(a for a, _, _ in hits if a != ax)
            if any(len(exps[a]) > 1 for a in others) or len({h[2] for h in hits}) < len(hits):
                continue  # another group on a composite axis, or a group twice: skip
            exp = exps[ax]
            where = (
                ax if len(exp) == 1 else StridedAxis("", ax, tuple(uf.size[r] for r in exp), sub)
            )
            per_group[gi].append((value, where, others))
    out = _Carriers(an.closed, per_group)
    per_target[key] = out
    return out


def group_activations(
    target: Target, params: Params, x: Any, *, kind: str = "inputs"
) -> list[list[jax.Array]]:
    """The hidden activations that carry each group, on a batch `x`.

    The traced apply is re-evaluated while recording intermediate values. A value carries a
    group if it has the batch axis and an axis (or sub-axis of a composite axis, e.g. the
    channels of flattened features) in the group; axes of other groups in the same value
    (an attention query ``[batch, tokens, heads, head_dim]`` carries the heads and the head
    dims) are sorted first, so the matrix does not depend on those groups' order. Which
    values count:

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
    record = {v for vs in car.per_group for v, _, _ in vs}
    values = _interpret(car.closed, jax.tree.leaves(params), x, record)
    out = []
    for vs, g in zip(car.per_group, structural_groups(target), strict=True):
        mats = []
        for v, where, others in vs:
            entry = where if isinstance(where, StridedAxis) else ("", where)
            val = values[v]
            for a in others:  # invariant to the other groups' permutations
                val = jnp.sort(val, axis=a)
            mats.append(jnp.moveaxis(units_first(val, entry), 0, -1).reshape(-1, g.size))
        out.append(mats)
    return out
