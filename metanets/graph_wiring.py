"""How each kernel of a target connects to the node sets of its graph, from the traced
computation (`hyper.layer_ops`) and the structural groups (`hyper.symmetry`).

- A kernel reads the node set of the latest layer whose output reaches its contraction
  (`layer_ops.layer_inputs`; the network input is node set 0). Through residual
  additions several layers reach it: the latest one, the others joined by identity edges.
- A dense kernel after a flatten of ``[..., H, W, C]`` (its input axis a composite,
  `hyper.symmetry.axis_views`) reads the last conv's C channel nodes; the flattened row
  ``(h, w, c)`` becomes position ``(h, w)`` of the edge ``c -> out``'s feature window, as a
  conv kernel's taps do (Neural Graphs' "spatial position in the edge feature"). The window
  then holds the ``H x W`` map (`flatten_map`), and the round trip stays exact.
- A dense kernel with several neuron axes (attention's q/k/v `(D, heads, head_dim)` and
  out `(heads, head_dim, D)` projections) has its axes flattened row-major on each side;
  the out projection reads the value projection's node set, found by the structural
  groups its input axes share with the value's output axes (`read_layer`).
- An embedding table (`is_table`) reads the network input (its vocabulary); a kernel
  whose traced input is the gathered table (no layer output of `layer_ops.layer_inputs`)
  reads the table whose feature axis the analysis ties to its input axis.
- A grouped (depthwise) convolution with ``G`` groups has edges only within groups: output
  channel ``o`` reads input channels ``g * n_in + i`` with ``g = o // (n_out / G)``.

`blocking_ops` words a refusal: the primitives that stop a layer's channels
(`hyper.symmetry.left_out`, `layer_ops.structural_ops`) and what to change;
`refuse_shared` refuses a weight read by several contractions (a shared weight).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from hyper import layer_ops
from hyper.errors import WeightspaceError
from hyper.spec import LeafSpec
from hyper.symmetry import axis_views, left_out, same_units
from hyper.target import Target

__all__ = [
    "blocking_ops",
    "flatten_extent",
    "flatten_map",
    "flatten_positions",
    "grouped_senders",
    "is_table",
    "read_layer",
    "refuse_shared",
]

_FIXES = (
    (
        "reduce_window",
        "pooling: pool over spatial windows only (window and stride 1 on the batch and "
        "channel axes), or pool globally (x.mean(axis=(1, 2)))",
    ),
    (
        "reshape",
        "a reshape that merges or splits the channel axis: keep the channels as one axis "
        "up to the dense layer that reads a flatten, or pool globally before it",
    ),
    (
        "concatenate",
        "a concatenation of layer outputs is not one set of neurons: add the branches, "
        "or convert each branch as its own network",
    ),
    (
        "feature_group_count",
        "a grouped or depthwise convolution whose groups the structural analysis cannot follow",
    ),
    ("gather", "indexing the channels (gather): slice with static bounds, or drop it"),
)


def blocking_ops(target: Target, layer: str) -> str:
    """What the traced computation does to `layer`'s outputs (`layer_ops.INPUT`: to the
    network input) that the graph encoding cannot follow, and what to change; ``""`` if
    nothing there is structural."""
    parts = []
    if layer != layer_ops.INPUT:
        for lo in left_out(target):
            if lo.layer == layer:
                parts.append(f"{lo.primitive} on axis {lo.axis} of {lo.path!r} ({lo.reason})")
    ops = layer_ops.structural_ops(target).get(layer, ())
    if not parts and not ops:
        return ""
    where = "the network input" if layer == layer_ops.INPUT else "its outputs"
    text = "; " + "; ".join(parts) if parts else ""
    if ops:
        hints = [fix for key, fix in _FIXES if any(key in op for op in ops)]
        if not hints:
            hints = ["a primitive the structural analysis (hyper.unit_axes) does not follow"]
        text += f"; the traced computation applies {', '.join(ops)} to {where} "
        text += f"({'; '.join(hints)})"
    return text


def refuse_shared(target: Target) -> None:
    """Refuses a weight that several contractions or gathers read (`layer_ops.weight_uses`):
    one weight applied by several layers has no graph with one edge per weight."""
    for path, uses in layer_ops.weight_uses(target).items():
        if len(uses) > 1:
            s = target.leaf(path)
            contractions = set(uses) <= {"dot_general", "conv_general_dilated"}
            what = "contractions" if contractions else f"uses ({', '.join(uses)})"
            raise WeightspaceError(
                f"{target.name}: weight {path!r} (layer {s.layer_name!r}) is used by "
                f"{len(uses)} {what}, a shared weight: the graph has one edge per weight; "
                "give each use its own layer and weights (e.g. two nnx.Linear modules)"
            )


def is_table(s: LeafSpec) -> bool:
    """Whether `s` is a token-embedding table ``[vocab, features]`` that a gather reads
    (role ``embedding``, kind ``embedding``; a position embedding is added, not read)."""
    return s.role == "embedding" and s.layer_kind == "embedding"


def read_layer(
    target: Target,
    k: LeafSpec,
    kernels: Sequence[LeafSpec] = (),
    axis_group: Mapping[tuple[str, int], int] | None = None,
) -> str:
    """The layer whose node set kernel `k` reads (`layer_ops.INPUT` for the input).

    A kernel with several input axes that no traced layer output reaches directly (the
    output projection of attention reads ``softmax(q k) v``, a product of activations)
    reads the one earlier kernel whose output axes are, in order, in the structural
    groups of its input axes (`axis_group`: ``(path, axis) -> group``): the value
    projection, whose ``(heads, head_dim)`` units it contracts.
    """
    if is_table(k):  # gathered at the network's tokens: one input node per vocab entry
        return layer_ops.INPUT
    srcs = layer_ops.layer_inputs(target).get(k.layer_name, ())
    if srcs == (layer_ops.INPUT,) and k.in_axis is not None:
        # A gather's output is no layer output of `layer_inputs`: the table whose features
        # the traced computation ties to this kernel's inputs is the layer it reads.
        tables = [
            p
            for p in target.spec
            if is_table(p)
            and p.layer < k.layer
            and same_units(target, (p.path, p.out_axis), (k.path, k.in_axis))
        ]
        if tables:
            return tables[-1].layer_name
    if not srcs and len(k.in_axes) > 1 and axis_group is not None:
        want = [axis_group.get((k.path, a)) for a in k.in_axes]
        match = [
            p
            for p in kernels
            if p.layer < k.layer
            and None not in want
            and [axis_group.get((p.path, a)) for a in p.out_axes] == want
        ]
        if len(match) == 1:
            return match[0].layer_name
    if not srcs:
        refuse_shared(target)  # the usual cause: a later use of a shared kernel feeds it
        raise WeightspaceError(
            f"{target.name}: layer {k.layer_name!r}: no contraction of the traced computation "
            "reads its kernel; it cannot be placed in the graph"
        )
    return srcs[-1]


def _read_size(target: Target, k: LeafSpec) -> int | None:
    src = read_layer(target, k)
    if src == layer_ops.INPUT:
        return None
    for s in target.spec:
        if s.role == "kernel" and s.layer_name == src:
            return math.prod(s.shape[a] for a in s.out_axes)
    return None


def flatten_map(target: Target, k: LeafSpec) -> tuple[tuple[int, ...], int] | None:
    """``(view shape, channel sub-axis)`` of a dense kernel's input axis that is a
    flatten of channels and positions, or None (an ordinary input axis)."""
    if len(k.shape) != 2 or k.in_axis is None:
        return None
    view = axis_views(target).get((k.path, k.in_axis))
    if view is None:
        return None
    n = _read_size(target, k)
    if n is None or math.prod(view.shape) == n:
        return None  # the network input (one node per feature), or channels in groups
    if view.channel is None or view.shape[view.channel] != n:
        raise WeightspaceError(
            f"{target.name}: layer {k.layer_name!r}: its input rows are a flatten of "
            f"{view.shape} whose channels the graph cannot match to the layer it reads"
        )
    spatial = [d for i, d in enumerate(view.shape) if i != view.channel]
    if len(spatial) > 2:
        raise WeightspaceError(
            f"{target.name}: layer {k.layer_name!r}: flatten of {view.shape}: more than 2 "
            "positional axes"
        )
    return tuple(view.shape), int(view.channel)


def flatten_positions(shape: tuple[int, ...], channel: int) -> tuple[list, list, list]:
    """Per row of a flatten of `shape`: its channel, and its ``(h, w)`` position."""
    rows = range(math.prod(shape))
    idx = [list(_unravel(r, shape)) for r in rows]
    ch = [m[channel] for m in idx]
    sp = [[d for i, d in enumerate(m) if i != channel] for m in idx]
    sp = [([0] * (2 - len(p))) + p for p in sp]
    return ch, [p[0] for p in sp], [p[1] for p in sp]


def flatten_extent(shape: tuple[int, ...], channel: int) -> tuple[int, int]:
    """The ``(h, w)`` map of positions of a flatten of `shape`."""
    spatial = [d for i, d in enumerate(shape) if i != channel]
    spatial = [1] * (2 - len(spatial)) + spatial
    return spatial[0], spatial[1]


def _unravel(r: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for d in reversed(shape):
        out.append(r % d)
        r //= d
    return tuple(reversed(out))


def grouped_senders(n_src: int, n_in: int, n_out: int, groups: int, name: str):
    """``[n_in, n_out]`` index of the source node each edge of a grouped conv reads."""
    if n_in * groups != n_src or n_out % groups:
        raise WeightspaceError(
            f"layer {name!r}: a convolution of {groups} groups with {n_in} inputs per group "
            f"reads {n_src} channels; they do not match"
        )
    per = n_out // groups
    return [[(o // per) * n_in + i for o in range(n_out)] for i in range(n_in)]
