"""Which activation follows each layer and which kind each normalization layer is, read
from the traced computation.

Names and configs say nothing about a network a user brings, so both are read from the
jaxpr of the target's evaluation apply (`hyper.jaxpr.steps`, calls inlined):

- `activations`: for every layer whose kernel is the matrix of a contraction
  (``dot_general``/``conv_general_dilated``), or whose embedding table a ``gather`` reads,
  the elementwise nonlinearity applied to the contraction's (gather's) output before the
  next contraction. The walk starts at that output and follows every value computed from
  it (bias, normalization, residual additions, pooling), stopping at contractions; the
  nearest *signature* equation opens the activation, whose kind is read from the
  equations that follow from its input without mixing in another stream:

  ==============  =============================================================
  ``relu``        ``max(x, c)`` with a constant ``c``
  ``leaky_relu``  a ``select_n`` on a comparison of ``x`` with a constant
  ``elu``         ``expm1`` (the negative branch)
  ``softplus``    ``log1p`` (``logaddexp(x, 0)``)
  ``sigmoid``     ``logistic``
  ``silu``        ``logistic(x) * x``
  ``tanh``        ``tanh``
  ``gelu``        ``erf``/``erfc`` (exact), or ``tanh`` of a value built from ``x ** 3``
  ``identity``    none of these (a linear layer, an attention projection)
  ==============  =============================================================

  Another nonlinear elementwise primitive (``sin``, ``exp``, ``abs``, ...) is reported by
  its primitive name. Values computed by a reduction (a norm's mean and variance, global
  pooling) are *statistics*: nonlinearities applied only to them are no activations. A
  contraction with a weight leaf starts the stream again, so the activation of a dense
  layer after global pooling (or after an embedding's mean over tokens) is seen.

- `norms`: for every normalization layer (leaves of roles ``norm_scale``, ``norm_shift``,
  ``running_stat``), read from the equations that compute the factor its scale multiplies:
  ``batchnorm`` (the variance is a stored leaf, or a reduction over the batch axis),
  ``groupnorm`` (statistics of a reshape that splits the features into groups),
  ``instancenorm`` (statistics over the spatial axes, not the features), ``layernorm``
  (statistics over the features per example, the mean subtracted), ``rmsnorm`` (the same
  without the mean). ``unknown`` where no ``rsqrt``/``sqrt`` of a statistic is found.

`structural_ops` lists, per layer, the primitives between its output and the next
contractions that are neither elementwise nor a plain view (pooling windows, reshapes that
merge or split axes, concatenations, grouped convolutions, ...): what to name when an axis
of that layer cannot be followed.

`layer_inputs` says which layers' outputs (or the network input) reach each layer's
contraction, `conv_groups` the ``feature_group_count`` of each convolution layer, and
`weight_uses` which contractions and gathers read each weight leaf (more than one: a
weight shared between layers).

All return plain dicts ``layer_name -> kind`` and are cached per target and input shape.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from hyper import jaxpr as jaxpr_lib
from hyper.errors import WeightspaceError
from hyper.target import Target

__all__ = [
    "ACTIVATION_KINDS",
    "INPUT",
    "NORM_KINDS",
    "activations",
    "conv_groups",
    "layer_inputs",
    "norms",
    "structural_ops",
    "weight_uses",
]

ACTIVATION_KINDS = (
    "identity",
    "relu",
    "tanh",
    "gelu",
    "silu",
    "leaky_relu",
    "sigmoid",
    "softplus",
    "elu",
)
"""The activation kinds `activations` names (other nonlinearities: their primitive)."""
NORM_KINDS = ("batchnorm", "layernorm", "rmsnorm", "groupnorm", "instancenorm", "unknown")

INPUT = "<input>"
"""The `structural_ops` key of the network's input."""

_CONTRACTIONS = frozenset({"dot_general", "conv_general_dilated"})
_VIEWS = frozenset(
    {
        "convert_element_type",
        "reshape",
        "transpose",
        "broadcast_in_dim",
        "squeeze",
        "expand_dims",
        "copy",
        "copy_p",
        "reduce_precision",
    }
)
_REDUCE = frozenset(
    {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "psum"}
)
_COMPARE = frozenset({"ge", "gt", "le", "lt"})
_OTHER_NONLINEAR = frozenset(
    {"sin", "cos", "tan", "exp", "exp2", "log", "abs", "sqrt", "atan", "sinh", "cosh",
     "asinh", "sign", "floor", "ceil", "round", "clamp", "min", "cbrt"}
)  # fmt: skip
_SIGNATURE = frozenset(
    {
        "erf",
        "erfc",
        "tanh",
        "logistic",
        "log1p",
        "expm1",
        "max",
        "select_n",
        *_COMPARE,
        *_OTHER_NONLINEAR,
    }
)


@dataclasses.dataclass
class _Eqn:
    """One primitive equation of the flattened (calls inlined) computation."""

    order: int
    prim: str
    params: dict
    ins: list[int | None]  # value ids; None for literals
    outs: list[int]
    in_shapes: list[tuple[int, ...]]
    out_shapes: list[tuple[int, ...]]


@dataclasses.dataclass
class _Flow:
    """The dataflow of a traced apply: equations in evaluation order over value ids."""

    ops: list[_Eqn]
    producer: dict[int, int]  # value -> index into eqns
    consumers: dict[int, list[int]]
    leaf_of: dict[int, int]  # value -> leaf index, for leaves and views of one leaf
    xdep: set[int]  # values that depend on the network input
    stat: set[int]  # x-dependent values computed from reductions only


def _flow(closed: Any, n_leaves: int) -> _Flow:
    ids: dict[Any, int] = {}
    counter = [0]

    def new() -> int:
        counter[0] += 1
        return counter[0]

    def ref(scope, v) -> int | None:
        if isinstance(v, jcore.Literal):
            return None
        key = (scope, v)
        if key not in ids:
            ids[key] = new()
        return ids[key]

    jx = closed.jaxpr
    leaf_vars = [ref((), v) for v in jx.invars]
    x_vars = leaf_vars[n_leaves:]
    eqns: list[_Eqn] = []
    for step in jaxpr_lib.steps(closed):
        eqn, scope = step.eqn, step.scope
        if step.kind == "call":
            for iv, ov in zip(step.body.jaxpr.invars, eqn.invars, strict=True):
                r = ref(scope, ov)
                ids[(step.inner, iv)] = new() if r is None else r
            continue
        if step.kind == "return":
            for ov, iv in zip(eqn.outvars, step.body.jaxpr.outvars, strict=True):
                if not jaxpr_lib.is_drop(ov):
                    r = ref(step.inner, iv)
                    ids[(scope, ov)] = new() if r is None else r
            continue
        eqns.append(
            _Eqn(
                order=len(eqns),
                prim=eqn.primitive.name,
                params=dict(eqn.params),
                ins=[ref(scope, v) for v in eqn.invars],
                outs=[new() if jaxpr_lib.is_drop(v) else ref(scope, v) for v in eqn.outvars],
                in_shapes=[tuple(getattr(v.aval, "shape", ())) for v in eqn.invars],
                out_shapes=[tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars],
            )
        )
    producer: dict[int, int] = {}
    consumers: dict[int, list[int]] = {}
    for i, e in enumerate(eqns):
        for o in e.outs:
            producer[o] = i
        for v in e.ins:
            if v is not None:
                consumers.setdefault(v, []).append(i)
    leaf_of = {v: i for i, v in enumerate(leaf_vars[:n_leaves]) if v is not None}
    xdep = {v for v in x_vars if v is not None}
    stat: set[int] = set()
    for e in eqns:
        live = [v for v in e.ins if v is not None and v in xdep]
        if e.prim in _VIEWS and len(e.ins) >= 1 and e.ins[0] in leaf_of:
            for o in e.outs:
                leaf_of[o] = leaf_of[e.ins[0]]
        if not live:
            continue
        xdep.update(e.outs)
        weighted = e.prim in _CONTRACTIONS and any(v in leaf_of for v in e.ins if v is not None)
        if e.prim in _REDUCE or (all(v in stat for v in live) and not weighted):
            stat.update(e.outs)
    return _Flow(eqns, producer, consumers, leaf_of, xdep, stat)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _traced(target: Target, sample_input: Any) -> _Flow:
    if sample_input is None:
        if target.input_shape is None:
            raise WeightspaceError(
                f"{target.name}: the target has no input_shape; pass a sample input batch"
            )
        x = jax.ShapeDtypeStruct((2, *target.input_shape), target.input_dtype)
    else:
        x = jax.ShapeDtypeStruct(np.shape(sample_input), jnp.asarray(sample_input).dtype)
    per = _CACHE.setdefault(target, {})
    key = (tuple(x.shape), str(x.dtype))
    if key not in per:
        leaves = [jax.ShapeDtypeStruct(s.shape, np.dtype(s.dtype)) for s in target.spec]

        def fn(leaves, x):
            return target.pure_apply(jax.tree.unflatten(target.treedef, leaves), x)

        try:
            closed = jax.make_jaxpr(fn)(leaves, x)
        except Exception as e:  # noqa: BLE001 - name the target in any tracing error
            raise WeightspaceError(f"{target.name}: cannot trace apply: {e}") from e
        per[key] = _flow(closed, len(leaves))
    return per[key]


# ---------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------


def _is_const(flow: _Flow, v: int | None) -> bool:
    return v is None or v not in flow.xdep


def _live(flow: _Flow, e: _Eqn) -> list[int]:
    """The operands of `e` on the network's stream (x-dependent, not statistics)."""
    return [v for v in e.ins if v is not None and v in flow.xdep and v not in flow.stat]


def _is_signature(flow: _Flow, e: _Eqn) -> bool:
    if e.prim not in _SIGNATURE or not _live(flow, e):
        return False
    if e.prim in ("max", "min", *_COMPARE):  # against a constant
        return any(_is_const(flow, v) for v in e.ins)
    if e.prim == "select_n":  # a predicate computed by a comparison
        p = flow.producer.get(e.ins[0]) if e.ins[0] is not None else None
        return p is not None and flow.ops[p].prim in _COMPARE
    return True


def _region(flow: _Flow, start: int) -> dict[int, int]:
    """Equations computed from value `start`, stopping at contractions: index -> depth."""
    depth: dict[int, int] = {}
    frontier = [(start, 0)]
    seen = {start}
    while frontier:
        nxt = []
        for v, d in frontier:
            for i in flow.consumers.get(v, []):
                e = flow.ops[i]
                if i in depth or e.prim in _CONTRACTIONS:
                    continue
                depth[i] = d + 1
                for o in e.outs:
                    if o not in seen:
                        seen.add(o)
                        nxt.append((o, d + 1))
        frontier = nxt
    return depth


def _closed_from(flow: _Flow, u: int) -> list[_Eqn]:
    """Equations computed from `u` alone (every stream operand derived from `u`, the rest
    constant), stopping at contractions: the activation that `u` enters."""
    inside = {u}
    out: list[_Eqn] = []
    for e in flow.ops:
        if e.prim in _CONTRACTIONS:
            continue
        xs = [v for v in e.ins if v is not None and v in flow.xdep]
        if xs and all(v in inside for v in xs):
            inside.update(e.outs)
            out.append(e)
    return out


def _ancestors(flow: _Flow, v: int, stop: set[int]) -> list[_Eqn]:
    """Equations `v` is computed from, back to (not through) contractions and `stop`."""
    out, todo, seen = [], [v], set()
    while todo:
        w = todo.pop()
        if w in seen or w in stop or w not in flow.producer:
            continue
        seen.add(w)
        e = flow.ops[flow.producer[w]]
        if e.prim in _CONTRACTIONS:
            continue
        out.append(e)
        todo.extend(x for x in e.ins if x is not None)
    return out


def _classify(flow: _Flow, first: _Eqn, start: int) -> str:
    u = _live(flow, first)[0]
    act = _closed_from(flow, u)
    prims = {e.prim for e in act}
    if "erf" in prims or "erfc" in prims:
        return "gelu"
    if "log1p" in prims:
        return "softplus"
    if "expm1" in prims:
        return "elu"
    if "tanh" in prims:
        before = _ancestors(flow, u, {start})
        cubes = [e for e in before if e.prim == "integer_pow" and e.params.get("y") == 3]
        return "gelu" if cubes else "tanh"
    if "logistic" in prims:
        for e in act:
            if e.prim == "logistic":
                s = e.outs[0]
                for i in flow.consumers.get(s, []):
                    m = flow.ops[i]
                    if m.prim == "mul" and u in m.ins:
                        return "silu"
        return "sigmoid"
    if "select_n" in prims and any(e.prim in _COMPARE for e in act):
        return "leaky_relu"
    if any(e.prim == "max" and any(_is_const(flow, v) for v in e.ins) for e in act):
        return "relu"
    return first.prim


def _kernel_contractions(target: Target, flow: _Flow) -> dict[str, _Eqn]:
    """layer name -> the first contraction whose matrix is one of the layer's kernels."""
    out: dict[str, _Eqn] = {}
    for e in flow.ops:
        if e.prim not in _CONTRACTIONS:
            continue
        for v in e.ins:
            if v is not None and v in flow.leaf_of:
                s = target.spec[flow.leaf_of[v]]
                if s.role == "kernel" or s.layer_kind in ("dense", "conv"):
                    out.setdefault(s.layer_name, e)
    return out


def _table_gathers(target: Target, flow: _Flow) -> dict[str, _Eqn]:
    """layer name -> the first gather whose table is one of the layer's embedding leaves."""
    out: dict[str, _Eqn] = {}
    for e in flow.ops:
        if e.prim == "gather" and e.ins and e.ins[0] is not None and e.ins[0] in flow.leaf_of:
            s = target.spec[flow.leaf_of[e.ins[0]]]
            if s.role == "embedding":
                out.setdefault(s.layer_name, e)
    return out


def activations(target: Target, sample_input: Any = None) -> dict[str, str]:
    """``layer name -> activation kind`` for every layer whose kernel a contraction reads
    or whose embedding table a gather reads (see the module docstring), in forward order.

    Args:
      target: any target whose apply traces.
      sample_input: an input batch (default zeros shaped ``[2, *target.input_shape]``).

    Raises:
      WeightspaceError: apply does not trace on the input.
    """
    flow = _traced(target, sample_input)
    out: dict[str, str] = {}
    layers = _table_gathers(target, flow) | _kernel_contractions(target, flow)
    for layer, e in sorted(layers.items(), key=lambda kv: kv[1].order):
        start = e.outs[0]
        region = _region(flow, start)
        hits = [i for i in region if _is_signature(flow, flow.ops[i])]
        if not hits:
            out[layer] = "identity"
            continue
        first = flow.ops[min(hits, key=lambda i: (region[i], i))]
        out[layer] = _classify(flow, first, start)
    return out


# ---------------------------------------------------------------------------------------
# Normalizations
# ---------------------------------------------------------------------------------------


def _entry(flow: _Flow, v: int) -> _Eqn | None:
    """The first equation where the stream meets the values computed from leaf value `v`
    (alone or with other parameters and statistics)."""
    todo, seen = [v], set()
    best: _Eqn | None = None
    while todo:
        w = todo.pop()
        if w in seen:
            continue
        seen.add(w)
        for i in flow.consumers.get(w, []):
            e = flow.ops[i]
            if _live(flow, e):
                if best is None or e.order < best.order:
                    best = e
            else:
                todo.extend(e.outs)
    return best


def _near(flow: _Flow, v: int, levels: int) -> list[tuple[int, _Eqn]]:
    """``(depth, equation)`` for the equations `v` is computed from, `levels` deep."""
    out, frontier, seen = [], [v], set()
    for d in range(1, levels + 1):
        nxt = []
        for w in frontier:
            if w in seen or w not in flow.producer:
                continue
            seen.add(w)
            e = flow.ops[flow.producer[w]]
            if e.prim in _CONTRACTIONS:
                continue
            out.append((d, e))
            nxt.extend(x for x in e.ins if x is not None)
        frontier = nxt
    return out


def _stat_ancestors(flow: _Flow, v: int) -> list[_Eqn]:
    """The equations that compute statistic `v`, back to the reductions that start it."""
    out, todo, seen = [], [v], set()
    while todo:
        w = todo.pop()
        if w in seen or w not in flow.stat or w not in flow.producer:
            continue
        seen.add(w)
        e = flow.ops[flow.producer[w]]
        out.append(e)
        if e.prim not in _REDUCE:
            todo.extend(x for x in e.ins if x is not None)
    return out


def _norm_kind(flow: _Flow, meet: _Eqn) -> str:
    rank = len(meet.out_shapes[0])
    roots = [(d, e) for d, e in _near(flow, meet.outs[0], 6) if e.prim in ("rsqrt", "sqrt")]
    if not roots:
        return "unknown"
    root = min(roots, key=lambda de: (de[0], -de[1].order))[1]
    if _is_const(flow, root.ins[0]):
        return "batchnorm"  # the variance is stored (running statistics)
    reduces = [e for e in _stat_ancestors(flow, root.ins[0]) if e.prim == "reduce_sum"]
    if not reduces:
        return "unknown"
    red = max(reduces, key=lambda e: e.order)
    axes = tuple(int(a) for a in red.params.get("axes", ()))
    if 0 in axes:
        return "batchnorm"  # statistics over the batch
    if len(red.in_shapes[0]) > rank:
        return "groupnorm"  # statistics of the features split into groups
    if len(red.in_shapes[0]) - 1 not in axes:
        return "instancenorm"
    since = min(e.order for e in reduces)
    centred = any(
        e.prim == "sub"
        and e.order > since
        and any(v is not None and v in flow.stat for v in e.ins)
        and _live(flow, e)
        for e in flow.ops[since : meet.order + 1]
    )
    return "layernorm" if centred else "rmsnorm"


def norms(target: Target, sample_input: Any = None) -> dict[str, str]:
    """``layer name -> normalization kind`` (`NORM_KINDS`) for every layer holding leaves
    of roles ``norm_scale``, ``norm_shift`` or ``running_stat`` (see the module docstring).

    Raises:
      WeightspaceError: apply does not trace on the input.
    """
    flow = _traced(target, sample_input)
    leaf_values: dict[int, list[int]] = {}
    for v, i in flow.leaf_of.items():
        leaf_values.setdefault(i, []).append(v)
    order = {"norm_scale": 0, "norm_shift": 1, "running_stat": 2}
    by_layer: dict[str, list[int]] = {}
    for i, s in enumerate(target.spec):
        if s.role in order:
            by_layer.setdefault(s.layer_name, []).append(i)
    out: dict[str, str] = {}
    for layer, idx in by_layer.items():
        kind = "unknown"
        for i in sorted(idx, key=lambda i: order[target.spec[i].role]):
            meets = [m for v in leaf_values.get(i, []) if (m := _entry(flow, v)) is not None]
            if meets:
                kind = _norm_kind(flow, min(meets, key=lambda e: e.order))
                if kind != "unknown":
                    break
        out[layer] = kind
    return out


# ---------------------------------------------------------------------------------------
# Structural primitives (for error messages)
# ---------------------------------------------------------------------------------------

_PLAIN = frozenset(
    """
    abs add and atan2 clamp convert_element_type copy copy_p cos div eq erf erf_inv erfc exp
    exp2 expm1 ge gt integer_pow le log log1p logistic lt max min mul ne neg not or pow
    reduce_precision rem round rsqrt select_n sign sin sqrt square sub tan tanh xor
    broadcast_in_dim squeeze expand_dims stop_gradient
    """.split()
)


def _describe(e: _Eqn) -> str:
    if e.prim == "reshape":
        return f"reshape {list(e.in_shapes[0])} -> {list(e.out_shapes[0])}"
    if e.prim.startswith("reduce_window"):
        dims = e.params.get("window_dimensions")
        return f"{e.prim} (window {tuple(dims)})" if dims is not None else e.prim
    if e.prim == "conv_general_dilated":
        return f"conv_general_dilated (feature_group_count={e.params.get('feature_group_count')})"
    return e.prim


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def structural_ops(target: Target, sample_input: Any = None) -> dict[str, tuple[str, ...]]:
    """``layer name -> primitives`` applied to the layer's output before the next
    contractions that are neither elementwise nor a broadcast (described with their
    shapes or windows, in evaluation order), plus any following grouped convolution;
    `INPUT` (``"<input>"``): those applied to the network's input.

    Raises:
      WeightspaceError: apply does not trace on the input.
    """
    flow = _traced(target, sample_input)
    out: dict[str, tuple[str, ...]] = {}
    starts = [(INPUT, None, v) for v in sorted(flow.xdep) if v not in flow.producer]
    starts += [(layer, e, e.outs[0]) for layer, e in _kernel_contractions(target, flow).items()]
    for layer, e, start in starts:
        found: list[_Eqn] = []
        for i in sorted(_region(flow, start)):
            q = flow.ops[i]
            if q.prim in _PLAIN:
                continue
            if not _live(flow, q):
                continue  # computes statistics only
            if q.prim == "reshape" and _squeezed(q.in_shapes[0]) == _squeezed(q.out_shapes[0]):
                continue  # adds or removes unit axes only
            if q.prim in _REDUCE:
                continue  # global pooling, a norm's statistics
            found.append(q)
        reached = set(_region(flow, start)) | ({e.order} if e is not None else set())
        for i in reached:
            for o in flow.ops[i].outs:
                for c in flow.consumers.get(o, []):
                    q = flow.ops[c]
                    grouped = q.params.get("feature_group_count", 1) != 1
                    if q.prim == "conv_general_dilated" and grouped and q not in found:
                        found.append(q)
        if e is not None and e.params.get("feature_group_count", 1) != 1:
            found.insert(0, e)
        ops = tuple(_describe(q) for q in sorted(found, key=lambda q: q.order))
        out[layer] = out.get(layer, ()) + ops
    return out


def layer_inputs(target: Target, sample_input: Any = None) -> dict[str, tuple[str, ...]]:
    """``layer name -> layers`` whose contraction outputs (or `INPUT`, the network input)
    reach the layer's contraction input without passing through another contraction, in
    forward order (several through a residual addition or a concatenation).

    Raises:
      WeightspaceError: apply does not trace on the input.
    """
    flow = _traced(target, sample_input)
    layers = _kernel_contractions(target, flow)
    of_value: dict[int, str] = {e.outs[0]: name for name, e in layers.items()}
    of_value.update({v: INPUT for v in flow.xdep if v not in flow.producer})
    order = {name: e.order for name, e in layers.items()} | {INPUT: -1}
    out: dict[str, tuple[str, ...]] = {}
    for name, e in layers.items():
        found: set[str] = set()
        todo = [v for v in e.ins if v is not None and v in flow.xdep]
        seen: set[int] = set()
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in of_value:
                found.add(of_value[v])
                continue
            if v in flow.producer:
                q = flow.ops[flow.producer[v]]
                if q.prim not in _CONTRACTIONS:
                    todo.extend(w for w in q.ins if w is not None and w in flow.xdep)
        out[name] = tuple(sorted(found, key=order.__getitem__))
    return out


def conv_groups(target: Target, sample_input: Any = None) -> dict[str, int]:
    """``layer name -> feature_group_count`` of every layer whose kernel a convolution
    reads (1: an ordinary convolution; the input channels for a depthwise one).

    Raises:
      WeightspaceError: apply does not trace on the input.
    """
    flow = _traced(target, sample_input)
    return {
        name: int(e.params.get("feature_group_count", 1))
        for name, e in _kernel_contractions(target, flow).items()
        if e.prim == "conv_general_dilated"
    }


def weight_uses(target: Target, sample_input: Any = None) -> dict[str, tuple[str, ...]]:
    """``leaf path -> the primitives that read it as a weight``, in evaluation order, for
    every leaf that is (a view of) the matrix of a contraction (``dot_general``,
    ``conv_general_dilated``) or the table of a ``gather``. More than one use is a weight
    shared between layers (one `nnx.Linear` applied twice, an embedding table reused as
    the output projection).

    Raises:
      WeightspaceError: apply does not trace on the input.
    """
    flow = _traced(target, sample_input)
    out: dict[str, tuple[str, ...]] = {}
    for e in flow.ops:
        if e.prim in _CONTRACTIONS:
            operands = e.ins[:2]
        elif e.prim == "gather":
            operands = e.ins[:1]
        else:
            continue
        for i in {flow.leaf_of[v] for v in operands if v is not None and v in flow.leaf_of}:
            path = target.spec[i].path
            out[path] = (*out.get(path, ()), e.prim)
    return out
