"""Where a network can be cut for stitching, read from its traced computation, and how a
linear stitch fuses into the layer after the cut.

A *cut* before layer ``j`` is the activation that layer ``j``'s contraction (a
``dot_general`` or ``conv_general_dilated`` whose other operand is layer ``j``'s kernel
leaf itself) reads. It is found by evaluating the target's jaxpr (`hyper.jaxpr.evaluate`,
calls inlined) and following which values depend on the input. A cut is only offered
where it is a *bottleneck*: no value computed from the input before the contraction is
read after it (a residual stream that skips the layer is not cut). The stitched network
``front of A (layers < j) -> stitch -> back of B (layers >= j)`` is then exactly a network
of the same family whose layer-``j`` kernel is ``S @ K_B`` (the stitch folded into the
kernel's input-feature axis, `LeafSpec.in_axis`); a stitch bias ``c`` folds into layer
``j``'s bias as ``b_B + c @ K_B`` where that is exact (a dense contraction, whose bias has
the kernel's output shape). A convolution's stitch (a 1x1 convolution) has no bias, since
the zeros the convolution pads with would not carry it.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from hyper import jaxpr as jaxpr_lib
from hyper.errors import WeightspaceError
from hyper.symmetry import apply_on_leaves, example_batch
from hyper.target import Target

__all__ = ["Cut", "cut_activations", "find_cuts", "fuse", "least_squares_stitch"]

CONTRACTIONS = ("dot_general", "conv_general_dilated")


@dataclasses.dataclass(frozen=True)
class Cut:
    """The activation read by layer `layer`'s contraction: where a stitch goes.

    Attributes:
      layer: the spec layer index of the consuming layer (its leaves and all later ones
        come from the back anchor).
      layer_name: its `LeafSpec.layer_name`.
      primitive: ``"dot_general"`` or ``"conv_general_dilated"``.
      kernel: index (spec order) of the layer's kernel leaf.
      kernel_axis: the kernel's input-feature axis (`LeafSpec.in_axis`).
      bias: index of the layer's bias leaf when a stitch bias folds into it exactly.
      feature_axis: the activation's feature axis (what the stitch maps).
      shape: the activation's shape for a batch of one (features included).
      bottleneck: whether the input reaches the rest of the network only through here.
    """

    layer: int
    layer_name: str
    primitive: str
    kernel: int
    kernel_axis: int
    bias: int | None
    feature_axis: int
    shape: tuple[int, ...]
    bottleneck: bool

    @property
    def features(self) -> int:
        return self.shape[self.feature_axis]


_DATA = "data"
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # target -> layers -> jit


def _walk(target: Target, leaves: Sequence[Any], x: Any, found: dict, values: dict) -> Any:
    """Evaluates the target's apply, recording each layer's contraction of an
    input-dependent value with its own kernel leaf (``found``: layer -> facts) and the
    values read there (``values``: layer -> array)."""
    avals = [jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype) for a in leaves]
    closed = jax.make_jaxpr(apply_on_leaves(target))(avals, jax.ShapeDtypeStruct(x.shape, x.dtype))
    n = len(leaves)
    # tag per (scope, var): a leaf index (the leaf itself), or (_DATA, producing step)
    tag: dict[Any, Any] = {}
    for i, v in enumerate(closed.jaxpr.invars):
        tag[((), v)] = i if i < n else (_DATA, -1)
    reads: dict[int, list[int]] = {}
    counter = [0]
    kernels = {i for i, s in enumerate(target.spec) if s.role == "kernel"}

    def get(scope, v):
        return tag.get((scope, v)) if isinstance(v, jcore.Var) else None

    def hook(step: jaxpr_lib.Step, invals: list[Any], outvals: list[Any] | None) -> None:
        eqn = step.eqn
        if step.kind == "call":
            for iv, ov in zip(step.body.jaxpr.invars, eqn.invars, strict=True):
                t = get(step.scope, ov)
                if t is not None:
                    tag[(step.inner, iv)] = t
            return
        if step.kind == "return":
            for bo, eo in zip(step.body.jaxpr.outvars, eqn.outvars, strict=True):
                t = get(step.inner, bo)
                if t is not None and not jaxpr_lib.is_drop(eo):
                    tag[(step.scope, eo)] = t
            return
        k = counter[0]
        counter[0] += 1
        ins = [get(step.scope, v) for v in eqn.invars]
        data = [i for i, t in enumerate(ins) if isinstance(t, tuple)]
        for i in data:
            reads.setdefault(ins[i][1], []).append(k)
        if eqn.primitive.name in CONTRACTIONS and len(data) == 1 and len(ins) == 2:
            other = ins[1 - data[0]]
            if isinstance(other, int) and other in kernels:
                layer = target.spec[other].layer
                if layer not in found:
                    found[layer] = (eqn, data[0], other, k, ins[data[0]][1])
                    values[layer] = invals[data[0]]
        if data:
            for v in eqn.outvars:
                if not jaxpr_lib.is_drop(v):
                    tag[(step.scope, v)] = (_DATA, k)

    found["_reads"] = reads
    return jaxpr_lib.evaluate(closed, [*leaves, x], record=hook)


def _feature_axis(eqn: Any, data_index: int) -> int | None:
    if eqn.primitive.name == "conv_general_dilated":
        if eqn.params["feature_group_count"] != 1 or eqn.params["batch_group_count"] != 1:
            return None
        return eqn.params["dimension_numbers"].lhs_spec[1]
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    contract = (lc, rc)[data_index]
    if lb or rb or len(contract) != 1:
        return None
    return int(contract[0])


def find_cuts(target: Target, sample_input: Any = None) -> list[Cut]:
    """Every layer (after the first contraction) whose contraction reads an input-dependent
    activation with the layer's own kernel, in forward order.

    Raises:
      WeightspaceError: the apply cannot be traced, or no layer can be cut.
    """
    x = example_batch(target, sample_input, batch=1)[:1]
    found: dict[Any, Any] = {}
    leaves = [jax.ShapeDtypeStruct(s.shape, np.dtype(s.dtype)) for s in target.spec]
    try:
        jax.eval_shape(lambda ls, xx: _walk(target, ls, xx, found, {}), leaves, x)
    except WeightspaceError:
        raise
    except Exception as e:  # noqa: BLE001 - name the target in any tracing error
        raise WeightspaceError(f"{target.name}: cannot trace apply to find cuts: {e}") from e
    reads = found.pop("_reads")
    order = sorted(found, key=lambda layer: found[layer][3])
    cuts = []
    for layer in order[1:]:
        eqn, di, kernel, step, produced = found[layer]
        spec = target.spec[kernel]
        fa = _feature_axis(eqn, di)
        if fa is None or spec.in_axis is None:
            continue
        bottleneck = all(
            max(r) <= step for p, r in reads.items() if p < step and p != produced
        ) and reads.get(produced, [step]) == [step]
        bias = None
        if eqn.primitive.name == "dot_general":
            out_shape = tuple(d for a, d in enumerate(spec.shape) if a != spec.in_axis)
            for i, s in enumerate(target.spec):
                if s.layer == spec.layer and s.role == "bias" and s.shape == out_shape:
                    bias = i
        cuts.append(
            Cut(
                layer=layer,
                layer_name=spec.layer_name,
                primitive=eqn.primitive.name,
                kernel=kernel,
                kernel_axis=spec.in_axis,
                bias=bias,
                feature_axis=fa,
                shape=tuple(int(d) for d in eqn.invars[di].aval.shape),
                bottleneck=bottleneck,
            )
        )
    if not any(c.bottleneck for c in cuts):
        raise WeightspaceError(
            f"{target.name}: no layer to stitch at: stitching needs a layer whose contraction "
            "(dot_general/conv) reads its own kernel leaf and an activation through which "
            "alone the input reaches the rest of the network"
        )
    return cuts


def cut_activations(
    target: Target, params: Any, x: Any, layers: Sequence[int], *, with_output: bool = False
) -> Any:
    """The activations read at the cuts before `layers` on inputs `x` (one network).

    Returns:
      layer -> `[batch, ...]` as its contraction reads it; with `with_output`, the pair
      (that, the network's output).
    """
    want = tuple(int(j) for j in layers)
    programs = _PROGRAMS.setdefault(target, {})
    if want not in programs:

        @jax.jit
        def run(ls, xx):
            found: dict[Any, Any] = {}
            values: dict[int, Any] = {}
            out = _walk(target, ls, xx, found, values)
            return {j: values[j] for j in want}, out[0]

        programs[want] = run
    values, out = programs[want](jax.tree.leaves(params), jnp.asarray(x))
    return (values, out) if with_output else values


def features_matrix(h: Any, axis: int) -> np.ndarray:
    """`h` with its feature `axis` last and every other axis merged: `[rows, features]`
    (float64, on the host)."""
    h = np.moveaxis(np.asarray(h, np.float64), axis, -1)
    return h.reshape(-1, h.shape[-1])


def least_squares_stitch(
    h_front: jax.Array, h_back: jax.Array, axis: int, *, bias: bool, ridge: float = 1e-4
) -> tuple[jax.Array, jax.Array]:
    """The stitch ``(S [c_front, c_back], c [c_back])`` minimising
    ``|| h_front S + c - h_back ||^2 + ridge * n * ||S||^2`` over rows (examples and
    positions); ``c`` is zero when not `bias`. Solved in float64 on the host."""
    a, b = features_matrix(h_front, axis), features_matrix(h_back, axis)
    if a.shape[0] != b.shape[0]:
        raise WeightspaceError(
            f"stitch: the activations have {a.shape[0]} and {b.shape[0]} rows (other axes "
            "than the features differ between the anchors)"
        )
    if bias:
        a = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
    reg = ridge * a.shape[0] * np.eye(a.shape[1])
    if bias:
        reg[-1, -1] = 0.0
    w = np.linalg.solve(a.T @ a + reg, a.T @ b)
    s = w[:-1] if bias else w
    c = w[-1] if bias else np.zeros(b.shape[1])
    return jnp.asarray(s, jnp.float32), jnp.asarray(c, jnp.float32)


def fuse(
    cut: Cut,
    front: Sequence[Any],
    back: Sequence[Any],
    layers: Sequence[int],
    stitch: tuple[jax.Array, jax.Array],
) -> list[Any]:
    """The leaves (spec order) of ``front (layers < cut.layer) -> stitch -> back``.

    Args:
      cut: the cut (of the back anchor; the front's has the same layer).
      front, back: the two anchors' leaves.
      layers: the spec layer index of every leaf.
      stitch: ``(S [c_front, c_back], c [c_back])``.
    """
    s, c = stitch
    out = []
    for i, (a, b, layer) in enumerate(zip(front, back, layers, strict=True)):
        if layer < cut.layer:
            out.append(a)
        elif i == cut.kernel:
            k = jnp.tensordot(s, b, axes=([1], [cut.kernel_axis]))
            out.append(jnp.moveaxis(k, 0, cut.kernel_axis))
        elif i == cut.bias:
            out.append(b + jnp.tensordot(c, back[cut.kernel], axes=([0], [cut.kernel_axis])))
        else:
            out.append(b)
    return out
