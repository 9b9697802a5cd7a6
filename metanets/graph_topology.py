"""The graph of a network: one node per neuron/channel, one edge per weight or kernel.

Neuron/channel-level encoding (Neural Graphs / MetaPruning style, derived from the spec):

- one node per input feature/channel, per hidden neuron/channel and per output;
- one edge per weight of a dense layer and per kernel of a conv layer (in -> out), its
  feature the kernel flattened into a `window` (e.g. 5x5), centred and zero-padded, so
  kernels of several sizes share one feature layout (a dense weight sits at the centre);
- biases and normalization parameters as node features, `NODE_FEATURES`:
  ``bias, scale, shift, mean, var`` (absent ones hold the identity values 0, 1, 0, 0, 1);
- residual additions as identity edges (centre 1) from the channels added in to the
  channels of the layer they are added to;
- a token-embedding table `[vocab, d]` read by a gather as the dense layer it is on one-hot
  tokens: the input nodes are the vocabulary, one edge per table entry (at the centre of
  the window, as a dense weight) into its `d` feature nodes, which the next layers read.
  It must be the network's one table and first layer.

A normalization leaf belongs to the node set whose channels the traced computation ties to
its axis: the structural group it shares with a layer's outputs, or, where the groups hold
the channels only in part (a GroupNorm's reshape into `(groups, channels / groups)`, of
which only the groups permute), the layer whose output axis the analysis ties to it
sub-axis by sub-axis (`hyper.symmetry.same_units`). A weight that several contractions
read (a shared weight, `hyper.layer_ops.weight_uses`) has no graph with one edge per
weight and is refused, naming the leaf.

Attention (Neural Graphs' per-head neurons): a dense kernel with several neuron axes,
input axes first (``nnx.MultiHeadAttention``'s q/k/v `(D, heads, head_dim)`, out
`(heads, head_dim, D)`), has each side flattened row-major: q, k and v are node sets of
``heads * head_dim`` nodes reading the residual stream, their `(heads, head_dim)` biases
node features; the out projection reads the value nodes (found through the structural
groups its input axes share with the value's outputs, as no traced layer output reaches
it directly). The q and k node sets send no edges: their product is the attention, which
has no weight, and a new edge type would change the embedding shape of saved metanets.
A learned position embedding (role ``embedding``, kind ``position``, e.g. `(1, T, D)`)
is no edge weight: row ``c`` of the node set it is added to carries ``pos[..., c]``
flattened (`T` values) in a separate node field ``pos`` (`GraphTopology.pos_width`), so
the round trip stays exact and permuting the channels permutes those rows.

Nodes carry their type (input/hidden/output), layer depth, activation id, normalization
id and, for input and output nodes, their index (those are not permutable); edges their
type (weight or residual) and layer depth. The activation of a layer's nodes and the kind
of the normalization on them (`NORM_IDS`: a LayerNorm's scale and shift sit in the same
feature slots as a BatchNorm's, the id tells them apart) are read from the traced
computation (`hyper.layer_ops`), never from a config or a name.

The topology comes from the target's spec and its `hyper.symmetry.structural_groups`
(which hidden axes are tied, residuals included): a layer reads the most recent layer, in
forward order, whose output channels are tied to its input channels; every later producer
in a residual group gets identity edges from the previous one. Nothing is keyed on
parameter names. A structure this encoding cannot express raises a ValueError naming the
layer, the primitives of the traced computation that block it
(`hyper.layer_ops.structural_ops`) and what to change.

`topology` is computed once per target and window (cached); `metanets.graph` maps
populations onto it.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from hyper import layer_ops
from hyper.architectures import ACTIVATIONS
from hyper.errors import WeightspaceError
from hyper.symmetry import same_units, structural_groups
from hyper.target import Target
from metanets import graph_wiring
from metanets.graph_wiring import blocking_ops, is_table, refuse_shared

__all__ = [
    "ACTIVATION_IDS",
    "NODE_DEFAULTS",
    "NODE_FEATURES",
    "NODE_HIDDEN",
    "NODE_INPUT",
    "NODE_OUTPUT",
    "NORM_IDS",
    "EDGE_RESIDUAL",
    "EDGE_WEIGHT",
    "GraphTopology",
    "common_kernel_window",
    "kernel_window",
    "topology",
]

NODE_FEATURES = ("bias", "scale", "shift", "mean", "var")
NODE_DEFAULTS = np.array([0.0, 1.0, 0.0, 0.0, 1.0], np.float32)
"""The identity value of each `NODE_FEATURES` entry, held where a node lacks it."""
NODE_INPUT, NODE_HIDDEN, NODE_OUTPUT = 0, 1, 2
EDGE_WEIGHT, EDGE_RESIDUAL = 0, 1
ACTIVATION_IDS = ("none", *ACTIVATIONS)
"""Activation ids of hidden nodes: ``"none"`` (input/output nodes or unknown), then
`hyper.architectures.ACTIVATIONS` in its order (ids index a trained metanet's embedding:
that table only ever grows at its end). A traced activation outside this table
(``softplus``, ``elu``, ``sin``, ...) gets ``"none"``: growing the table would change the
embedding shape of every saved metanet."""
NORM_IDS = ("none", *layer_ops.NORM_KINDS)
"""Normalization ids of nodes (``nodes["norm"]``): ``"none"``, then
`hyper.layer_ops.NORM_KINDS` in order (new kinds go last)."""

_NORM_SLOT = {"norm_scale": 1, "norm_shift": 2}


@dataclasses.dataclass(frozen=True, eq=False)
class GraphTopology:
    """The static graph of one target (shared by every member of its populations).

    Attributes:
      name: the target's name.
      num_nodes / num_edges: per graph.
      window: the kernel window `(h, w)` of edge features (`h * w` features per edge).
      senders / receivers: `[num_edges]` int32.
      edge_type: `[num_edges]` int32, `EDGE_WEIGHT` or `EDGE_RESIDUAL`.
      edge_layer: `[num_edges]` int32, depth of the kernel (residual: of the receiver).
      node_type: `[num_nodes]` int32, `NODE_INPUT` / `NODE_HIDDEN` / `NODE_OUTPUT`.
      node_layer: `[num_nodes]` int32: 0 for inputs, k for the outputs of the k-th kernel.
      node_io: `[num_nodes]` int32: index among the inputs (outputs), -1 for hidden nodes.
      node_act: `[num_nodes]` int32 index into `ACTIVATION_IDS`.
      node_norm: `[num_nodes]` int32 index into `NORM_IDS` (the norm on the node's values).
      node_base / edge_base: default features `[num_nodes, 5]`, `[num_edges, h*w]`.
      index: `[P]` int32: where each scalar of `population.flatten` goes in the flat
        feature vector ``concat(nodes.ravel(), edges.ravel())`` of one graph.
      node_sets: ``(name, first node, size, type)`` per node set, in forward order.
      pos_width: per-node width `X` of the position-embedding features (``nodes["pos"]``
        `[num_nodes, X]`; 0: none). `index` addresses the flat vector
        ``concat(nodes.ravel(), edges.ravel(), pos.ravel())``.
    """

    name: str
    num_nodes: int
    num_edges: int
    window: tuple[int, int]
    senders: np.ndarray
    receivers: np.ndarray
    edge_type: np.ndarray
    edge_layer: np.ndarray
    node_type: np.ndarray
    node_layer: np.ndarray
    node_io: np.ndarray
    node_act: np.ndarray
    node_norm: np.ndarray
    node_base: np.ndarray
    edge_base: np.ndarray
    index: np.ndarray
    node_sets: tuple[tuple[str, int, int, int], ...]
    pos_width: int = 0

    @property
    def edge_features(self) -> int:
        return self.window[0] * self.window[1]


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _spatial(shape: tuple[int, ...], path: str) -> tuple[int, int]:
    sp = shape[:-2]
    if len(sp) == 0:
        return (1, 1)
    if len(sp) == 1:
        return (1, sp[0])
    if len(sp) == 2:
        return (sp[0], sp[1])
    raise WeightspaceError(f"kernel {path!r} has shape {shape}: convs of more than 2 spatial axes")


def _is_position(s) -> bool:
    return s.role == "embedding" and s.layer_kind == "position"


def _units(s, axes: tuple[int, ...]) -> int:
    """Number of neurons along `axes` of leaf `s` (flattened row-major)."""
    return int(np.prod([s.shape[a] for a in axes], dtype=np.int64))


def _kernel_hw(s) -> tuple[int, int]:
    """Kernel window of `s`: (1, 1) for a dense kernel (any number of neuron axes)."""
    if len(s.in_axes) + len(s.out_axes) == len(s.shape):
        return (1, 1)
    return _spatial(s.shape, s.path)


def _as_kernel(s):
    """A token-embedding table `[vocab, d]` as the dense kernel it is on one-hot vocab
    inputs (input axis 0); any other leaf unchanged."""
    return dataclasses.replace(s, in_axes=(0,), in_axis=None) if is_table(s) else s


def _check_leaves(target: Target) -> None:
    """Refuses leaves the encoding has no place for, naming their layer."""
    refuse_shared(target)
    for s in target.spec:
        if is_table(s):
            if len(s.shape) != 2 or s.out_axes != (1,):
                raise WeightspaceError(
                    f"{target.name}: layer {s.layer_name!r}: embedding table {s.path!r} of "
                    f"shape {s.shape} (feature axes {s.out_axes}) is not a [vocab, features] "
                    "table; the graph encoding places only those (one edge per entry)"
                )
            continue
        if _is_position(s):
            if s.out_axis is None:
                raise WeightspaceError(
                    f"{target.name}: position embedding {s.path!r} of shape {s.shape} has "
                    f"{len(s.out_axes)} channel axes; the graph encoding needs exactly one"
                )
            continue
        if s.role in ("embedding", "other") or s.layer_kind not in ("dense", "conv", "norm"):
            raise WeightspaceError(
                f"{target.name}: layer {s.layer_name!r} (leaf {s.path!r}, role {s.role}, kind "
                f"{s.layer_kind}) is not supported by the graph encoding: only dense and conv "
                "kernels, [vocab, features] embedding tables, biases, normalization layers "
                "and position embeddings"
            )
        if s.role == "kernel" and (not s.in_axes or not s.out_axes):
            raise WeightspaceError(
                f"{target.name}: layer {s.layer_name!r}: leaf {s.path!r} of shape {s.shape} "
                "has no input or output neuron axis; the graph encoding cannot place it"
            )
        several = len(s.in_axes) > 1 or len(s.out_axes) > 1
        if s.role == "kernel" and several and s.in_axes + s.out_axes != tuple(range(len(s.shape))):
            raise WeightspaceError(
                f"{target.name}: layer {s.layer_name!r}: kernel {s.path!r} of shape {s.shape} "
                f"has several input/output neuron axes (in {s.in_axes}, out {s.out_axes}) "
                "that are not its input axes followed by its output axes (a dense kernel "
                "such as attention's per-head projections); the graph encoding flattens "
                "only such kernels"
            )
        if s.role == "running_stat" and s.path.rsplit("/", 1)[-1] not in ("mean", "var"):
            raise WeightspaceError(
                f"{target.name}: layer {s.layer_name!r}: running statistic {s.path!r} is "
                "neither a mean nor a var"
            )


def kernel_window(target: Target) -> tuple[int, int]:
    """The smallest edge window that holds every kernel of `target` (and the position map
    of every flatten a dense layer reads, `graph_wiring.flatten_map`)."""
    _check_leaves(target)
    hw = []
    for s in target.spec:
        if s.role != "kernel":
            continue
        fm = graph_wiring.flatten_map(target, s)
        hw.append(_kernel_hw(s) if fm is None else graph_wiring.flatten_extent(*fm))
    if not hw:
        raise WeightspaceError(f"{target.name}: no kernel leaves; nothing to turn into a graph")
    return (max(h for h, _ in hw), max(w for _, w in hw))


def common_kernel_window(targets: Sequence[Target]) -> tuple[int, int]:
    """The smallest edge window that holds every kernel of every target (the window a
    batch of several targets' graphs shares)."""
    ws = [kernel_window(t) for t in targets]
    return (max(h for h, _ in ws), max(w for _, w in ws))


def _activation_ids(target: Target) -> dict[str, int]:
    """Layer name -> `ACTIVATION_IDS` index of the activation on its outputs (traced)."""
    acts = layer_ops.activations(target)
    return {k: ACTIVATION_IDS.index(v) if v in ACTIVATION_IDS else 0 for k, v in acts.items()}


def topology(target: Target, window: Sequence[int] | None = None) -> GraphTopology:
    """The graph of `target` (cached per target and window).

    Args:
      target: an MLP/CNN-like target: dense and conv kernels (any spatial size), biases,
        normalization layers and residual additions.
      window: edge window `(h, w)`; default the target's largest kernel. Batches of
        several targets need one window (`batch_graphs` takes their maximum).

    Raises:
      WeightspaceError: naming the layer whose structure the encoding cannot express.
    """
    own = kernel_window(target)
    window = own if window is None else (int(window[0]), int(window[1]))
    if window[0] < own[0] or window[1] < own[1]:
        raise WeightspaceError(f"{target.name}: window {window} is smaller than its kernels {own}")
    per = _CACHE.setdefault(target, {})
    if window not in per:
        per[window] = _build_topology(target, window)
    return per[window]


def _build_topology(target: Target, window: tuple[int, int]) -> GraphTopology:
    spec = target.spec
    _check_leaves(target)
    kernels = sorted(
        (_as_kernel(s) for s in spec if s.role == "kernel" or is_table(s)),
        key=lambda s: (s.layer, s.path),
    )
    if not kernels:
        raise WeightspaceError(f"{target.name}: no kernel leaves; nothing to turn into a graph")
    for k in kernels:
        _kernel_hw(k)
    if len({k.layer_name for k in kernels}) != len(kernels):
        raise WeightspaceError(f"{target.name}: a layer holds several kernels; not supported")
    groups = structural_groups(target)
    axis_group: dict[tuple[str, int], int] = {}
    covered: set[tuple[str, int]] = set()  # leaf axes that a group indexes, wholly or in part
    for gi, g in enumerate(groups):
        for path, ax in g.axes:
            axis_group[(path, ax)] = gi
        covered.update((e.path, e.axis) for e in g.strided)
    covered.update(axis_group)
    # Every axis a group permutes must be one this encoding reads as a neuron axis (a
    # group of one unit, e.g. a position embedding's leading axis of 1, permutes nothing).
    neuron_axes = {(s.path, a) for s in spec for a in s.out_axes} | {
        (k.path, a) for k in kernels for a in k.in_axes
    }
    for g in groups:
        if g.size == 1 and not g.producers:
            continue
        for path, ax in [*g.axes, *((e.path, e.axis) for e in g.strided)]:
            if (path, ax) not in neuron_axes:
                s = target.leaf(path)
                raise WeightspaceError(
                    f"{target.name}: layer {s.layer_name!r}: axis {ax} of {path!r} (shape "
                    f"{s.shape}) is permutable but is not an input or output neuron axis of a "
                    "dense or conv kernel; the graph encoding cannot place it"
                    + blocking_ops(target, s.layer_name)
                )

    acts = _activation_ids(target)
    norm_kinds = layer_ops.norms(target)
    # Node sets: inputs, then one per kernel (its outputs).
    first = kernels[0]
    tables = [k for k in kernels if is_table(k)]
    if tables and (len(tables) > 1 or tables[0] is not first):
        names = ", ".join(repr(t.layer_name) for t in tables)
        raise WeightspaceError(
            f"{target.name}: embedding layers {names}: the graph's input nodes are the "
            "vocabulary of one embedding table, the first layer (one-hot tokens); several "
            "tables, or a table after another layer, are not supported"
        )
    if any((first.path, a) in covered for a in first.in_axes):
        raise WeightspaceError(
            f"{target.name}: layer {first.layer_name!r} is the first kernel but its inputs are "
            "tied to another layer's outputs, so the network inputs are not fixed nodes"
            + (blocking_ops(target, layer_ops.INPUT) or "; unsupported connection")
        )
    sets: list[tuple[str, int, int, int]] = [("input", 0, _units(first, first.in_axes), NODE_INPUT)]
    set_of_kernel: dict[str, int] = {}
    n_nodes = sets[0][2]
    last = kernels[-1]
    for k in kernels:
        size = _units(k, k.out_axes)
        in_group = all((k.path, a) in covered for a in k.out_axes)
        if k is last:
            if any((k.path, a) in covered for a in k.out_axes):
                raise WeightspaceError(
                    f"{target.name}: layer {k.layer_name!r} is the last kernel but its outputs "
                    "are permutable; the network's outputs must be fixed"
                )
            kind = NODE_OUTPUT
        elif not in_group:
            why = blocking_ops(target, k.layer_name)
            if not why and size == 1:
                why = "; it is a hidden layer of width 1, which the encoding does not support"
            raise WeightspaceError(
                f"{target.name}: layer {k.layer_name!r}: its output channels do not reach a "
                "later layer through a connection the structural analysis can follow, so "
                "they are no neuron set of the graph" + (why or "; unsupported connection")
            )
        else:
            kind = NODE_HIDDEN
        set_of_kernel[k.path] = len(sets)
        sets.append((k.layer_name, n_nodes, size, kind))
        n_nodes += size

    # Which node set each kernel reads: the latest layer whose output reaches it in the
    # traced computation (`graph_wiring`); producers of one group are joined by identity
    # edges (residual additions), except a grouped conv and the layer it reads. Only
    # producers whose outputs reach a later contraction are added into a residual stream:
    # attention's q/k/v projections share groups through the attention product instead.
    reaching = {src for srcs in layer_ops.layer_inputs(target).values() for src in srcs}
    if tables:  # a gathered table's output is no `layer_inputs` source: ask who reads it
        reaching |= {t.layer_name for t in tables} & {
            graph_wiring.read_layer(target, k, kernels, axis_group) for k in kernels
        }
    producers: dict[int, list[Any]] = {}
    for k in kernels:
        gi = axis_group.get((k.path, k.out_axis)) if k.out_axis is not None else None
        if gi is not None and k.layer_name in reaching:
            producers.setdefault(gi, []).append(k)
    set_of_layer = {sets[i][0]: i for i in set_of_kernel.values()}
    conv_groups = layer_ops.conv_groups(target)
    reads: dict[str, int] = {}
    for k in kernels:
        src = graph_wiring.read_layer(target, k, kernels, axis_group)
        if src == layer_ops.INPUT:  # several layers may read it (attention's q, k, v)
            if k is not first and any((k.path, a) in covered for a in k.in_axes):
                raise WeightspaceError(
                    f"{target.name}: layer {k.layer_name!r} reads the network input, but its "
                    "inputs are tied to another layer's outputs; unsupported connection"
                )
            if tables and k is not first:
                raise WeightspaceError(
                    f"{target.name}: layer {k.layer_name!r}: its inputs are not the features "
                    f"of embedding layer {first.layer_name!r} (leaf {first.path!r}) but the "
                    "tokens or a value the graph cannot follow (e.g. a reduction or indexing "
                    "of the features); the graph's input nodes are that table's vocabulary, "
                    "so every other layer must read the table's features"
                )
            reads[k.path] = 0
            continue
        if k is first or src not in set_of_layer or set_of_layer[src] >= set_of_kernel[k.path]:
            raise WeightspaceError(
                f"{target.name}: layer {k.layer_name!r} reads {src!r}, which is no earlier "
                "layer of the graph; unsupported connection"
            )
        reads[k.path] = set_of_layer[src]
        if any((k.path, a) not in covered and k.shape[a] > 1 for a in k.in_axes):
            prev = [p for p in kernels if p.layer_name == src]
            why = blocking_ops(target, prev[0].layer_name) if prev else ""
            raise WeightspaceError(
                f"{target.name}: layer {k.layer_name!r}: its input channels are not tied to "
                f"the outputs of {src!r}" + (why or "; unsupported connection")
            )

    node_type = np.zeros(n_nodes, np.int32)
    node_layer = np.zeros(n_nodes, np.int32)
    node_io = np.full(n_nodes, -1, np.int32)
    node_act = np.zeros(n_nodes, np.int32)
    node_norm = np.zeros(n_nodes, np.int32)
    for si, (set_name, start, size, kind) in enumerate(sets):
        node_type[start : start + size] = kind
        node_layer[start : start + size] = si
        if kind in (NODE_INPUT, NODE_OUTPUT):
            node_io[start : start + size] = np.arange(size)
        else:
            node_act[start : start + size] = acts.get(set_name, 0)
    nf = len(NODE_FEATURES)
    node_base = np.tile(NODE_DEFAULTS, (n_nodes, 1))

    wh, ww = window
    f = wh * ww
    senders, receivers, etype, elayer = [], [], [], []
    edge_start: dict[str, int] = {}
    n_edges = 0
    flat_maps: dict[str, tuple[tuple[int, ...], int]] = {}
    for k in kernels:
        src = sets[reads[k.path]]
        dst = sets[set_of_kernel[k.path]]
        n_in, n_out = _units(k, k.in_axes), _units(k, k.out_axes)
        fm = graph_wiring.flatten_map(target, k)
        if fm is not None:
            flat_maps[k.path] = fm
            n_in = fm[0][fm[1]]
        groups_k = conv_groups.get(k.layer_name, 1)
        ii, oo = np.meshgrid(np.arange(n_in), np.arange(n_out), indexing="ij")
        if groups_k > 1:
            ii = np.asarray(graph_wiring.grouped_senders(src[2], n_in, n_out, groups_k, k.path))
        elif n_in != src[2]:
            raise WeightspaceError(
                f"{target.name}: layer {k.layer_name!r} reads {n_in} channels, but "
                f"{src[0]!r} has {src[2]}"
            )
        edge_start[k.path] = n_edges
        senders.append(src[1] + ii.ravel())
        receivers.append(dst[1] + oo.ravel())
        etype.append(np.full(n_in * n_out, EDGE_WEIGHT, np.int32))
        elayer.append(np.full(n_in * n_out, set_of_kernel[k.path], np.int32))
        n_edges += n_in * n_out
    n_weight_edges = n_edges
    for gi in sorted(producers):
        ps = producers[gi]
        for a, b in zip(ps[:-1], ps[1:], strict=True):
            sa, sb = sets[set_of_kernel[a.path]], sets[set_of_kernel[b.path]]
            if conv_groups.get(b.layer_name, 1) > 1 and reads[b.path] == set_of_kernel[a.path]:
                continue  # a grouped conv ties its channels to those it reads: no addition
            senders.append(sa[1] + np.arange(sa[2]))
            receivers.append(sb[1] + np.arange(sb[2]))
            etype.append(np.full(sa[2], EDGE_RESIDUAL, np.int32))
            elayer.append(np.full(sa[2], set_of_kernel[b.path], np.int32))
            n_edges += sa[2]
    edge_base = np.zeros((n_edges, f), np.float32)
    centre = (wh // 2) * ww + ww // 2
    edge_base[n_weight_edges:, centre] = 1.0

    # Where every scalar of population.flatten goes.
    node_size = n_nodes * nf
    index_parts = []
    positions: list[tuple[Any, int, int]] = []
    norm_owner: dict[int, str] = {}
    taken: set[tuple[int, int]] = set()
    for s in spec:
        if is_table(s):
            s = _as_kernel(s)  # its [vocab, d] entries are the edges vocab -> d
        if s.role == "kernel" and s.path in flat_maps:
            shape, channel = flat_maps[s.path]
            ch, ph, pw = (np.asarray(a) for a in graph_wiring.flatten_positions(shape, channel))
            mh, mw = graph_wiring.flatten_extent(shape, channel)
            oh, ow = (wh - mh) // 2, (ww - mw) // 2
            n_out = s.shape[s.out_axis]
            edge = edge_start[s.path] + ch[:, None] * n_out + np.arange(n_out)[None, :]
            slot = ((oh + ph) * ww + (ow + pw))[:, None]
            index_parts.append((node_size + edge * f + slot).reshape(-1))  # [rows, out]
            continue
        if s.role == "kernel" or is_table(s):
            kh, kw = _kernel_hw(s)
            oh, ow = (wh - kh) // 2, (ww - kw) // 2
            n_in, n_out = _units(s, s.in_axes), _units(s, s.out_axes)
            hh, wi, ii, oo = np.meshgrid(
                np.arange(kh), np.arange(kw), np.arange(n_in), np.arange(n_out), indexing="ij"
            )
            edge = edge_start[s.path] + ii * n_out + oo
            slot = (oh + hh) * ww + (ow + wi)
            idx = node_size + edge * f + slot  # [kh, kw, in, out] = kernel layout (2-D)
            index_parts.append(idx.reshape(-1))  # multi-axis dense: [*in, *out] row-major
            continue
        if _is_position(s):
            si = _norm_owner(target, s, kernels, axis_group, producers, set_of_kernel)
            positions.append((s, si, len(index_parts)))
            index_parts.append(np.zeros(0, np.int64))  # placed below, once the width is known
            continue
        # Node-feature leaves: bias of a kernel layer (its units flattened row-major, as
        # the kernel's outputs), or a normalization parameter.
        if s.out_axes != tuple(range(len(s.shape))):
            raise WeightspaceError(
                f"{target.name}: leaf {s.path!r} of shape {s.shape}: not every axis is a unit "
                f"axis (units on {s.out_axes}); the graph encoding cannot place it"
            )
        if s.role == "bias":
            owner = next((k for k in kernels if k.layer_name == s.layer_name), None)
            if owner is None:
                raise WeightspaceError(f"{target.name}: bias {s.path!r} belongs to no kernel layer")
            si, slot = set_of_kernel[owner.path], 0
        else:
            si = _norm_owner(target, s, kernels, axis_group, producers, set_of_kernel)
            prev = norm_owner.setdefault(si, s.layer_name)
            norm = NORM_IDS.index(norm_kinds.get(s.layer_name, "unknown"))
            node_norm[sets[si][1] : sets[si][1] + sets[si][2]] = norm
            if prev != s.layer_name:
                raise WeightspaceError(
                    f"{target.name}: layers {prev!r} and {s.layer_name!r} both normalize the "
                    f"channels of {sets[si][0]!r}; one normalization per layer is supported"
                )
            if s.role == "running_stat":
                slot = 3 if s.path.endswith("mean") else 4
            else:
                slot = _NORM_SLOT[s.role]
        start, size = sets[si][1], sets[si][2]
        if s.size != size:
            raise WeightspaceError(f"{target.name}: leaf {s.path!r} has {s.size} units, not {size}")
        if (si, slot) in taken:
            raise WeightspaceError(
                f"{target.name}: leaf {s.path!r} would overwrite node feature "
                f"{NODE_FEATURES[slot]!r} of {sets[si][0]!r}; unsupported layer structure"
            )
        taken.add((si, slot))
        index_parts.append((start + np.arange(size)) * nf + slot)
    pos_width = _place_positions(target, positions, sets, index_parts, node_size + n_edges * f)
    index = np.concatenate(index_parts).astype(np.int32)
    assert len(np.unique(index)) == len(index), "graph index must be injective"
    return GraphTopology(
        name=target.name,
        num_nodes=n_nodes,
        num_edges=n_edges,
        window=window,
        senders=np.concatenate(senders).astype(np.int32),
        receivers=np.concatenate(receivers).astype(np.int32),
        edge_type=np.concatenate(etype),
        edge_layer=np.concatenate(elayer),
        node_type=node_type,
        node_layer=node_layer,
        node_io=node_io,
        node_act=node_act,
        node_norm=node_norm,
        node_base=node_base,
        edge_base=edge_base,
        index=index,
        node_sets=tuple(sets),
        pos_width=pos_width,
    )


def _norm_owner(target, s, kernels, axis_group, producers, set_of_kernel) -> int:
    """The node set a normalization leaf belongs to: the latest earlier producer of its
    channels (the output layer if its channels are the network's outputs)."""
    gi = axis_group.get((s.path, s.out_axes[0]))
    if gi is not None:
        earlier = [p for p in producers.get(gi, []) if p.layer < s.layer]
        if earlier:
            return set_of_kernel[earlier[-1].path]
    elif len(s.out_axes) == 1:
        # Channels the structural groups hold only in part (a GroupNorm's reshape into
        # (groups, channels / groups)) or not at all: the kernel whose outputs the traced
        # computation ties to this leaf's axis, sub-axis by sub-axis.
        tied = [
            k
            for k in kernels
            if k.layer < s.layer
            and k.out_axis is not None
            and same_units(target, (k.path, k.out_axis), (s.path, s.out_axis))
        ]
        if tied:
            return set_of_kernel[tied[-1].path]
    if gi is None:
        earlier = [k for k in kernels if k.layer < s.layer]
        if earlier and earlier[-1] is kernels[-1] and kernels[-1].shape[-1] == s.shape[0]:
            return set_of_kernel[earlier[-1].path]
    what = "position embedding" if _is_position(s) else "normalization layer"
    raise WeightspaceError(
        f"{target.name}: {what} {s.layer_name!r} (leaf {s.path!r}) follows no "
        "layer whose channels it normalizes; unsupported connection"
        + (" (normalized layers of width 1 are not supported)" if s.shape[0] == 1 else "")
    )


def _place_positions(target, positions, sets, index_parts, offset: int) -> int:
    """Fills the index of every position embedding (one `index_parts` slot each, in spec
    order): row ``c`` of the node set it is added to holds ``pos[..., c, ...]`` flattened
    row-major over its other axes; returns the width (the largest such row)."""
    width = max((s.size // s.shape[s.out_axis] for s, _, _ in positions), default=0)
    seen: dict[int, str] = {}
    for s, si, slot in positions:
        name, start, size, _ = sets[si]
        if seen.setdefault(si, s.path) != s.path:
            raise WeightspaceError(
                f"{target.name}: position embeddings {seen[si]!r} and {s.path!r} are both "
                f"added to the channels of {name!r}; one per node set is supported"
            )
        if s.shape[s.out_axis] != size:
            raise WeightspaceError(
                f"{target.name}: position embedding {s.path!r} has {s.shape[s.out_axis]} "
                f"channels, {name!r} {size}"
            )
        moved = np.moveaxis(np.arange(s.size).reshape(s.shape), s.out_axis, 0).reshape(size, -1)
        rows = (start + np.arange(size))[:, None] * width + np.arange(moved.shape[1])[None, :]
        flat = np.empty(s.size, np.int64)
        flat[moved.ravel()] = offset + rows.ravel()
        index_parts[slot] = flat
    return width
