"""Scale and sign symmetries of hidden units: which units admit them, a canonical form that
divides them out, and random equivalent networks.

Besides permutations (`hyper.symmetry`), a hidden unit ``h = act(w . x + b)`` read by
``v * h`` admits

- a positive *scale* when `act` is positively homogeneous (``act(a z) = a act(z)`` for
  ``a > 0``: ``relu``, ``leaky_relu``, ``identity``): ``(w, b, v) -> (a w, a b, v / a)``;
- a *sign* flip when `act` is odd (``tanh``, ``identity``): ``(w, b, v) -> (-w, -b, -v)``.

Nothing here is read from leaf names. The units are the structural groups of
`hyper.symmetry.structural_groups` (traced axis classes: residual streams, flattens and
BatchNorms included); each group entry is sorted by its leaf's role and axis (the spec,
inferred from the traced computation): a kernel's out-axis and a bias are *incoming*, a
kernel's in-axis is *outgoing*. When the group holds a normalization's per-unit scale and
shift (BatchNorm, LayerNorm affine), the unit's scale lives after the norm: the norm's
scale and shift are incoming and the layer before the norm and the running statistics are
left as they are (a BatchNorm makes that layer's own scale free only up to its epsilon,
which is not an exact symmetry and is not used). The activation that follows each
producing layer comes from `hyper.layer_ops.activations`; a sign flip is refused when a
max pooling window follows (`hyper.layer_ops.structural_ops`), since ``max(-z) != -max(z)``.

Every symmetry found this way is then checked numerically once per target (random
parameters that vary per unit, random factors, one vmapped apply): a group whose rescaling
changes the function (a pre-norm residual stream, attention's query/key head dimensions, a
depthwise convolution, a weight shared between layers) is reported with the reason and left
unchanged by `canonicalize` and `random_symmetry`. `scale_symmetries` is the report.

The canonical form divides each unit's scale out by the norm of its incoming weights (the
unit's incoming weights then have norm 1) and fixes its sign so that their sum is
non-negative. Groups are processed in forward order, and each reads its norm only from
incoming leaves whose other units are already canonical (a residual stream reads the stem,
not the blocks that write into it), so the result is invariant under any rescaling and sign
flip of the admitted units: ``canonicalize(random_symmetry(p, permute=False)) ==
canonicalize(p)`` up to float rounding. Permutations are not fixed by it.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper import layer_ops, symmetry
from hyper.errors import WeightspaceError
from hyper.symmetry import Entry, Group, StridedAxis
from hyper.target import Params, Target

__all__ = [
    "SCALE_ACTIVATIONS",
    "SIGN_ACTIVATIONS",
    "UnitSymmetry",
    "canonicalize",
    "describe_symmetries",
    "random_symmetry",
    "scale_symmetries",
]

SCALE_ACTIVATIONS = ("identity", "relu", "leaky_relu")
"""Positively homogeneous activation kinds (`hyper.layer_ops.activations`)."""
SIGN_ACTIVATIONS = ("identity", "tanh")
"""Odd activation kinds."""


@dataclasses.dataclass(frozen=True)
class UnitSymmetry:
    """The scale and sign symmetries of one structural group of hidden units.

    Attributes:
      group: the structural group (`hyper.symmetry.Group`).
      activations: the activation kind after each producing layer, in producer order.
      scale: every unit of the group admits a positive rescaling (verified numerically).
      sign: every unit of the group admits a sign flip (verified numerically).
      incoming: entries multiplied by a unit's factor (kernel out-axes and biases, or the
        norm's scale and shift when a normalization follows the producing layers).
      outgoing: entries divided by it (the consuming kernels' in-axes).
      scale_anchors: the incoming entries `canonicalize` reads each unit's norm from
        (empty: the scale is not canonicalised, see `reason`).
      sign_anchors: the incoming entries it reads each unit's sign from.
      reason: why a symmetry is not admitted or not canonicalised; ``""`` when none is
        missing.
    """

    group: Group
    activations: tuple[str, ...]
    scale: bool
    sign: bool
    incoming: tuple[Entry, ...] = ()
    outgoing: tuple[Entry, ...] = ()
    scale_anchors: tuple[Entry, ...] = ()
    sign_anchors: tuple[Entry, ...] = ()
    reason: str = ""


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _classify(target: Target, g: Group, acts: dict, ops: dict, uses: dict) -> UnitSymmetry:
    """The candidate symmetry of group `g` from roles, activations and structural ops."""
    spec = {s.path: s for s in target.spec}
    producers, biases, consumers, affine, stats, other = [], [], [], [], [], []
    for e in symmetry.entries(g):
        s, ax = spec[e[0]], e[1]
        if s.role == "kernel" and ax in s.out_axes and ax not in s.in_axes:
            producers.append(e)
        elif s.role == "kernel" and ax in s.in_axes:
            consumers.append(e)
        elif s.role == "bias":
            biases.append(e)
        elif s.role in ("norm_scale", "norm_shift"):
            affine.append(e)
        elif s.role == "running_stat":
            stats.append(e)
        else:
            other.append(e)
    layers = tuple(dict.fromkeys(spec[e[0]].layer_name for e in producers))
    kinds = tuple(acts.get(layer, "unknown") for layer in layers)

    def refuse(why: str) -> UnitSymmetry:
        return UnitSymmetry(g, kinds, False, False, reason=why)

    if other:
        e = other[0]
        return refuse(f"leaf {e[0]!r} (role {spec[e[0]].role}) holds these units")
    shared = [e[0] for e in producers + consumers if len(uses.get(e[0], ())) > 1]
    if shared:
        return refuse(f"kernel {shared[0]!r} is shared between layers")
    if not producers:
        return refuse("no layer produces these units")
    incoming = tuple(affine) if affine else tuple(producers + biases)
    scale = all(k in SCALE_ACTIVATIONS for k in kinds)
    pooled = [
        op for layer in layers for op in ops.get(layer, ()) if op.startswith("reduce_window_m")
    ]
    sign = all(k in SIGN_ACTIVATIONS for k in kinds) and not pooled
    why = []
    if not scale:
        why.append(f"activation {'+'.join(kinds)} is not positively homogeneous")
    if not sign:
        why.append(
            f"max pooling follows ({pooled[0]})"
            if pooled and all(k in SIGN_ACTIVATIONS for k in kinds)
            else f"activation {'+'.join(kinds)} is not odd"
        )
    return UnitSymmetry(g, kinds, scale, sign, incoming, tuple(consumers), reason="; ".join(why))


def _units_shape(leaf: Any, entry: Entry) -> tuple[int, ...]:
    """The broadcast shape of a per-unit vector against `units_first(leaf, entry)`."""
    ndim = np.ndim(leaf) + (len(entry.shape) - 1 if isinstance(entry, StridedAxis) else 0)
    return (-1,) + (1,) * (ndim - 1)


def _rescale(leaves: list, index: dict, sym: UnitSymmetry, factor: Any) -> None:
    """In place on `leaves`: incoming entries times `factor` [size], outgoing divided by it.

    NumPy leaves and factor stay NumPy (the numerical check runs no JAX op per group)."""
    for entries, f in ((sym.incoming, factor), (sym.outgoing, 1.0 / factor)):
        for e in entries:
            i = index[e[0]]
            leaf = leaves[i]
            v = symmetry.units_first(leaf, e)
            v = v * f.astype(v.dtype).reshape(_units_shape(leaf, e))
            leaves[i] = symmetry.units_restore(v, e, np.shape(leaf))


def _anchor_matrix(leaves: list, index: dict, size: int, anchors: Sequence[Entry]) -> jax.Array:
    """`[size, k]`: every anchor entry's values per unit, side by side."""
    cols = [jnp.reshape(symmetry.units_first(leaves[index[e[0]]], e), (size, -1)) for e in anchors]
    return jnp.concatenate(cols, axis=1)


def _verify(target: Target, syms: list[UnitSymmetry], sample_input: Any) -> list[UnitSymmetry]:
    """`syms` with every scale/sign claim checked numerically (one vmapped apply)."""
    rng = np.random.default_rng(0)
    x0 = symmetry.example_batch(target, sample_input, batch=4)
    index = {p: i for i, p in enumerate(target.paths)}
    leaves = symmetry.scrambled_params(target, rng)
    x = (
        rng.standard_normal(x0.shape).astype(x0.dtype)
        if jnp.issubdtype(x0.dtype, jnp.floating)
        else np.asarray(x0)
    )
    claims = [
        (k, kind) for k, s in enumerate(syms) for kind in ("scale", "sign") if getattr(s, kind)
    ]
    if not claims:
        return syms
    members = [leaves]
    for k, kind in claims:
        size = syms[k].group.size
        if kind == "scale":
            f = np.exp(rng.uniform(np.log(0.5), np.log(2.0), size))
        else:
            f = np.where(np.arange(size) % 2 == 0, -1.0, 1.0)
        moved = list(leaves)
        _rescale(moved, index, syms[k], f.astype(np.float32))
        members.append(moved)
    pop = jax.tree.unflatten(target.treedef, [np.stack(ls) for ls in zip(*members, strict=True)])
    ys = target.apply_population(pop, jnp.asarray(x))
    ys = np.asarray(ys, np.float64).reshape(len(members), -1)
    ref, scale = ys[0], float(np.max(np.abs(ys[0])))
    out = list(syms)
    for (k, kind), y in zip(claims, ys[1:], strict=True):
        if not np.all(np.abs(y - ref) <= 1e-4 + 1e-3 * scale):
            s = out[k]
            why = f"a random {kind} changes the function"
            out[k] = dataclasses.replace(
                s, **{kind: False}, reason="; ".join(r for r in (s.reason, why) if r)
            )
    return out


def _with_anchors(syms: list[UnitSymmetry]) -> tuple[list[UnitSymmetry], dict[str, list[int]]]:
    """Each group's anchors: the incoming entries it reads its norm (`scale_anchors`) and
    sign (`sign_anchors`) from.

    Scales are fixed first, in forward order and repeated passes: an incoming leaf is an
    anchor when every other group touching it is already scale-canonical or admits no
    scale (a norm does not see sign flips). Signs follow, once every scale is fixed: an
    anchor's other groups must be sign-canonical or admit no sign. A group left without
    anchors (a cycle, as between attention heads and head dimensions) is not canonicalised.
    Returns the groups and, per kind, the order in which `canonicalize` visits them.
    """
    touching: dict[str, set[int]] = {}
    for k, s in enumerate(syms):
        for e in symmetry.entries(s.group):
            touching.setdefault(e[0], set()).add(k)
    out = list(syms)
    stuck_scale: set[int] = set()
    orders: dict[str, list[int]] = {}
    for kind in ("scale", "sign"):
        done = {k for k, s in enumerate(syms) if not getattr(s, kind)}
        if kind == "sign":
            done -= stuck_scale
        todo = [k for k in range(len(syms)) if k not in done]
        progress, orders[kind] = True, []
        while todo and progress:
            progress = False
            for k in list(todo):
                ready = tuple(e for e in syms[k].incoming if touching[e[0]] - {k} <= done)
                if ready and not (kind == "sign" and k in stuck_scale):
                    out[k] = dataclasses.replace(out[k], **{f"{kind}_anchors": ready})
                    done.add(k)
                    orders[kind].append(k)
                    todo.remove(k)
                    progress = True
        for k in todo:
            why = f"{kind} not canonicalised: no incoming weights free of other units' {kind}s"
            out[k] = dataclasses.replace(
                out[k], reason="; ".join(r for r in (out[k].reason, why) if r)
            )
        if kind == "scale":
            stuck_scale = set(todo)
    return out, orders


def scale_symmetries(target: Target, *, sample_input: Any = None) -> list[UnitSymmetry]:
    """The scale and sign symmetry of every structural group of hidden units of `target`.

    Derived from the traced computation (see the module docstring) and verified
    numerically once; cached per target.

    Args:
      target: any target whose evaluation apply traces.
      sample_input: an input batch ``[batch, ...]``; default zeros of `target.input_shape`.

    Returns:
      one `UnitSymmetry` per structural group: first the groups `canonicalize` fixes, in
      the order it processes them, then the others (no symmetry, or no anchor).

    Raises:
      WeightspaceError: the apply cannot be traced.
    """
    per = _CACHE.setdefault(target, {})
    if "syms" not in per:
        groups = symmetry.structural_groups(target, sample_input=sample_input)
        acts = layer_ops.activations(target, sample_input)
        ops = layer_ops.structural_ops(target, sample_input)
        uses = layer_ops.weight_uses(target, sample_input)
        syms = [_classify(target, g, acts, ops, uses) for g in groups]
        per["syms"], per["orders"] = _with_anchors(_verify(target, syms, sample_input))
    return list(per["syms"])


def _batched(target: Target, params: Params, batched: bool | None) -> bool:
    if batched is None:
        leaf, s = jax.tree.leaves(params)[0], target.spec[0]
        batched = np.ndim(leaf) == len(s.shape) + 1
    target.validate(params, batched=batched)
    return batched


def canonicalize(
    target: Target,
    params: Params,
    *,
    scale: bool = True,
    sign: bool = True,
    batched: bool | None = None,
) -> Params:
    """The canonical representative of `params` under hidden-unit rescaling and sign flips.

    For every group that admits it (`scale_symmetries`): each unit's incoming entries are
    divided by their norm ``s`` over the group's `scale_anchors` (a zero norm is left as
    1) and its outgoing entries multiplied by ``s``; then, where the activation is odd,
    the unit's sign is chosen so that the sum of its `sign_anchors` values is
    non-negative. The function is unchanged (up to float rounding); units without a
    verified symmetry, or without anchors, are untouched. Permutations are not
    canonicalised. With ``scale=False`` the signs are read from unnormalised weights: the
    result is then invariant under sign flips, not under rescaling.

    Args:
      target: the target.
      params: one network, or a population with a leading `targets` axis.
      scale: divide out positive scales (positively homogeneous units).
      sign: fix signs (odd units).
      batched: whether `params` is a population; default: read from the rank of the first
        leaf against its spec.

    Returns:
      params of the same structure (a population stays one). Traceable.
    """
    is_pop = _batched(target, params, batched)
    scale_symmetries(target)  # analyse (and verify) before tracing
    fn = _compiled(target, ("canonicalize", bool(scale), bool(sign), is_pop), _canonical_one)
    return fn(params)


def _compiled(target: Target, key: tuple, body: Any) -> Any:
    """``jit(body(target, params, *args, flags...))``, vmapped for a population; cached per
    target (the compiled function holds the target weakly)."""
    per = _CACHE.setdefault(target, {})
    if key not in per:
        ref = weakref.ref(target)
        flags = key[1:-1]

        def one(params, *args):
            return body(ref(), params, *args, *flags)

        per[key] = jax.jit(jax.vmap(one) if key[-1] else one)
    return per[key]


def _canonical_one(target: Target, params: Params, scale: bool, sign: bool) -> Params:
    """`canonicalize` of one network."""
    index = {p: i for i, p in enumerate(target.paths)}
    leaves = [jnp.asarray(v) for v in jax.tree.leaves(params)]
    syms = scale_symmetries(target)
    orders = _CACHE[target]["orders"]
    for kind in ("scale", "sign") if scale else ("sign",):
        if kind == "sign" and not sign:
            continue
        for k in orders[kind]:
            sym = syms[k]
            anchors = sym.scale_anchors if kind == "scale" else sym.sign_anchors
            a = _anchor_matrix(leaves, index, sym.group.size, anchors)
            if kind == "scale":
                norm = jnp.sqrt(jnp.sum(a * a, axis=1))
                factor = 1.0 / jnp.where(norm > 0, norm, 1.0)
            else:
                factor = jnp.where(jnp.sum(a, axis=1) < 0, -1.0, 1.0).astype(a.dtype)
            _rescale(leaves, index, sym, factor)
    return jax.tree.unflatten(target.treedef, leaves)


def random_symmetry(
    target: Target,
    params: Params,
    key: jax.Array,
    *,
    permute: bool = True,
    scale: bool = True,
    sign: bool = True,
    scale_range: tuple[float, float] = (0.5, 2.0),
    batched: bool | None = None,
) -> Params:
    """A random network computing the same function as `params` (training augmentation).

    Every unit of a group admitting it (`scale_symmetries`) gets an independent
    log-uniform positive factor in `scale_range` (`scale`) and a random sign (`sign`); then
    every structural group is permuted uniformly at random (`permute`,
    `hyper.symmetry.permute`). Population members get independent draws.

    Args:
      target: the target.
      params: one network, or a population with a leading `targets` axis.
      key: a `jax.random` key.
      permute / scale / sign: which symmetries to draw.
      scale_range: ``(low, high)`` with ``0 < low <= high``.
      batched: whether `params` is a population; default: read from the leaf ranks.

    Returns:
      params of the same structure. Traceable.

    Raises:
      WeightspaceError: a bad `scale_range`.
    """
    lo, hi = (float(v) for v in scale_range)
    if not 0 < lo <= hi:
        raise WeightspaceError(
            f"random_symmetry: scale_range must satisfy 0 < low <= high, got {scale_range}"
        )
    is_pop = _batched(target, params, batched)
    scale_symmetries(target)
    symmetry.structural_groups(target)
    flags = (bool(permute), bool(scale), bool(sign), lo, hi)
    fn = _compiled(target, ("random_symmetry", *flags, is_pop), _random_one)
    if is_pop:
        key = jax.random.split(key, jax.tree.leaves(params)[0].shape[0])
    return fn(params, key)


def _random_one(
    target: Target, params: Params, key: jax.Array, permute: bool, scale: bool, sign: bool,
    lo: float, hi: float,
) -> Params:  # fmt: skip
    """`random_symmetry` of one network."""
    index = {p: i for i, p in enumerate(target.paths)}
    leaves = [jnp.asarray(v) for v in jax.tree.leaves(params)]
    syms = scale_symmetries(target)
    groups = [s.group for s in syms]
    total = sum(g.size for g in groups)
    # One PRNG draw for everything: each threefry call costs about a second of compile
    # time on CPU. A random permutation is the argsort of i.i.d. uniforms.
    u = jax.random.uniform(key, (3, total))
    logs = np.log(lo) + (np.log(hi) - np.log(lo)) * u[0]
    flips = jnp.where(u[1] < 0.5, -1.0, 1.0)
    start = 0
    for sym in syms:
        size = sym.group.size
        part = slice(start, start + size)
        start += size
        do_scale, do_sign = scale and sym.scale, sign and sym.sign
        if not (do_scale or do_sign):
            continue
        factor = jnp.ones((size,), jnp.float32)
        if do_scale:
            factor = jnp.exp(logs[part])
        if do_sign:
            factor = factor * flips[part]
        _rescale(leaves, index, sym, factor)
    out = jax.tree.unflatten(target.treedef, leaves)
    if permute:
        offsets = np.cumsum([0] + [g.size for g in groups])
        perms = [jnp.argsort(u[2, offsets[i] : offsets[i + 1]]) for i in range(len(groups))]
        out = symmetry.permute(target, out, perms, groups=groups)
    return out


def describe_symmetries(target: Target) -> list[str]:
    """One line per structural group: its activations, the symmetries it admits, and why
    a symmetry is missing (`scale_symmetries` as text)."""
    syms = scale_symmetries(target)
    return [
        f"{s.group.name} ({s.group.size}): {'+'.join(s.activations) or '-'}"
        f" scale={s.scale} sign={s.sign}" + (f" ({s.reason})" if s.reason else "")
        for s in syms
    ]
