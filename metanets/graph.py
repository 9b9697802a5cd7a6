"""Networks as graphs: a `Target` + population <-> a `jraph.GraphsTuple`, exactly.

Neuron/channel-level encoding (Neural Graphs / MetaPruning style, derived from the spec):

- one node per input feature/channel, per hidden neuron/channel and per output;
- one edge per weight of a dense layer and per kernel of a conv layer (in -> out), its
  feature the kernel flattened into a `window` (e.g. 5x5), centred and zero-padded, so
  kernels of several sizes share one feature layout (a dense weight sits at the centre);
- biases and normalization parameters as node features, `NODE_FEATURES`:
  ``bias, scale, shift, mean, var`` (absent ones hold the identity values 0, 1, 0, 0, 1);
- residual additions as identity edges (centre 1) from the channels added in to the
  channels of the layer they are added to.

Nodes carry their type (input/hidden/output), layer depth, activation id and, for input
and output nodes, their index (those are not permutable); edges their type (weight or
residual) and layer depth.

The topology comes from the target's spec and its `hyper.symmetry.structural_groups`
(which hidden axes are tied, residuals included): a layer reads the most recent layer, in
forward order, whose output channels are tied to its input channels; every later producer
in a residual group gets identity edges from the previous one. Nothing is keyed on
parameter names. A structure this encoding cannot express (a flatten between layers, a
concatenation, grouped convs, an unknown layer kind) raises a ValueError naming the layer.

Topology is computed once per target (`topology`); a population maps to feature arrays in
one jitted scatter (`population_to_graphs`), and back in one gather
(`graphs_to_population`). Populations of different targets batch into one padded
`GraphsTuple` with masks (`batch_graphs`), padded to power-of-two shape buckets so `jit`
compiles a handful of programs.

Optionally, nodes also carry probe features (`probe_features`): what each neuron computes
on a few fixed inputs, from the network's own forward pass (Neural Graphs' probes, fixed).
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from hyper import population as population_lib
from hyper.jaxpr import evaluate
from hyper.symmetry import structural_groups
from hyper.target import Params, Target

__all__ = [
    "ACTIVATION_IDS",
    "NODE_DEFAULTS",
    "NODE_FEATURES",
    "NODE_HIDDEN",
    "NODE_INPUT",
    "NODE_OUTPUT",
    "EDGE_RESIDUAL",
    "EDGE_WEIGHT",
    "GraphBank",
    "GraphTopology",
    "batch_graphs",
    "bucket_size",
    "graph_parts",
    "graphs_to_population",
    "graphs_to_populations",
    "kernel_window",
    "pad_graphs",
    "pad_parts",
    "population_to_graphs",
    "probe_features",
    "probe_inputs",
    "shard_graphs",
    "topology",
]

NODE_FEATURES = ("bias", "scale", "shift", "mean", "var")
NODE_DEFAULTS = np.array([0.0, 1.0, 0.0, 0.0, 1.0], np.float32)
"""The identity value of each `NODE_FEATURES` entry, held where a node lacks it."""
NODE_INPUT, NODE_HIDDEN, NODE_OUTPUT = 0, 1, 2
EDGE_WEIGHT, EDGE_RESIDUAL = 0, 1
ACTIVATION_IDS = (
    "none",
    "identity",
    "relu",
    "tanh",
    "gelu",
    "silu",
    "leaky_relu",
    "sigmoid",
)
"""Activation ids of hidden nodes (``"none"``: input/output nodes or unknown)."""

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
      node_base / edge_base: default features `[num_nodes, 5]`, `[num_edges, h*w]`.
      index: `[P]` int32: where each scalar of `population.flatten` goes in the flat
        feature vector ``concat(nodes.ravel(), edges.ravel())`` of one graph.
      node_sets: ``(name, first node, size, type)`` per node set, in forward order.
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
    node_base: np.ndarray
    edge_base: np.ndarray
    index: np.ndarray
    node_sets: tuple[tuple[str, int, int, int], ...]

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
    raise ValueError(f"kernel {path!r} has shape {shape}: convs of more than 2 spatial axes")


def kernel_window(target: Target) -> tuple[int, int]:
    """The smallest edge window that holds every kernel of `target`."""
    hw = [_spatial(s.shape, s.path) for s in target.spec if s.role == "kernel"]
    if not hw:
        raise ValueError(f"{target.name}: no kernel leaves; nothing to turn into a graph")
    return (max(h for h, _ in hw), max(w for _, w in hw))


def _activation_id(target: Target) -> int:
    act = target.config.get("activation") if target.config else None
    return ACTIVATION_IDS.index(act) if act in ACTIVATION_IDS else 0


def topology(target: Target, window: Sequence[int] | None = None) -> GraphTopology:
    """The graph of `target` (cached per target and window).

    Args:
      target: an MLP/CNN-like target: dense and conv kernels (any spatial size), biases,
        normalization layers and residual additions.
      window: edge window `(h, w)`; default the target's largest kernel. Batches of
        several targets need one window (`batch_graphs` takes their maximum).

    Raises:
      ValueError: naming the layer whose structure the encoding cannot express.
    """
    own = kernel_window(target)
    window = own if window is None else (int(window[0]), int(window[1]))
    if window[0] < own[0] or window[1] < own[1]:
        raise ValueError(f"{target.name}: window {window} is smaller than its kernels {own}")
    per = _CACHE.setdefault(target, {})
    if window not in per:
        per[window] = _build_topology(target, window)
    return per[window]


def _build_topology(target: Target, window: tuple[int, int]) -> GraphTopology:
    spec = target.spec
    for s in spec:
        if s.role in ("embedding", "other") or s.layer_kind not in ("dense", "conv", "norm"):
            raise ValueError(
                f"{target.name}: layer {s.layer_name!r} (leaf {s.path!r}, role {s.role}, kind "
                f"{s.layer_kind}) is not supported by the graph encoding: only dense and conv "
                "kernels, biases and normalization layers"
            )
        if s.role == "running_stat" and s.path.rsplit("/", 1)[-1] not in ("mean", "var"):
            raise ValueError(
                f"{target.name}: layer {s.layer_name!r}: running statistic {s.path!r} is "
                "neither a mean nor a var"
            )
    kernels = sorted((s for s in spec if s.role == "kernel"), key=lambda s: (s.layer, s.path))
    if not kernels:
        raise ValueError(f"{target.name}: no kernel leaves; nothing to turn into a graph")
    for k in kernels:
        _spatial(k.shape, k.path)
    if len({k.layer_name for k in kernels}) != len(kernels):
        raise ValueError(f"{target.name}: a layer holds several kernels; not supported")
    groups = structural_groups(target)
    axis_group: dict[tuple[str, int], int] = {}
    for gi, g in enumerate(groups):
        for path, ax in g.axes:
            axis_group[(path, ax)] = gi
    # Every axis a group permutes must be one this encoding reads as a neuron axis.
    neuron_axes = {(s.path, s.out_axis) for s in spec if s.out_axis is not None} | {
        (k.path, k.in_axis) for k in kernels
    }
    for g in groups:
        for path, ax in g.axes:
            if (path, ax) not in neuron_axes:
                s = target.leaf(path)
                raise ValueError(
                    f"{target.name}: layer {s.layer_name!r}: axis {ax} of {path!r} is permutable "
                    "but is not a neuron axis the graph encoding knows; unsupported connection"
                )

    act = _activation_id(target)
    # Node sets: inputs, then one per kernel (its outputs).
    first = kernels[0]
    if (first.path, first.in_axis) in axis_group:
        raise ValueError(
            f"{target.name}: layer {first.layer_name!r} is the first kernel but its inputs are "
            "tied to another layer's outputs; unsupported connection"
        )
    sets: list[tuple[str, int, int, int]] = [("input", 0, first.shape[first.in_axis], NODE_INPUT)]
    set_of_kernel: dict[str, int] = {}
    n_nodes = sets[0][2]
    last = kernels[-1]
    for k in kernels:
        size = k.shape[k.out_axis]
        in_group = (k.path, k.out_axis) in axis_group
        if k is last:
            if in_group:
                raise ValueError(
                    f"{target.name}: layer {k.layer_name!r} is the last kernel but its outputs "
                    "are permutable; the network's outputs must be fixed"
                )
            kind = NODE_OUTPUT
        elif not in_group:
            raise ValueError(
                f"{target.name}: layer {k.layer_name!r}: its output channels do not reach a "
                "later layer through a supported connection (e.g. a flatten, a concatenation "
                "or grouped convolution follows"
                + (
                    "; or it is a hidden layer of width 1, which is not supported)"
                    if size == 1
                    else ")"
                )
            )
        else:
            kind = NODE_HIDDEN
        set_of_kernel[k.path] = len(sets)
        sets.append((k.layer_name, n_nodes, size, kind))
        n_nodes += size

    # Which node set each kernel reads: the input set, or the latest earlier producer of the
    # group its input axis belongs to.
    producers: dict[int, list[Any]] = {}
    for k in kernels:
        gi = axis_group.get((k.path, k.out_axis))
        if gi is not None:
            producers.setdefault(gi, []).append(k)
    reads: dict[str, int] = {}
    for k in kernels:
        gi = axis_group.get((k.path, k.in_axis))
        if gi is None:
            if k is not first:
                raise ValueError(
                    f"{target.name}: layer {k.layer_name!r}: its input channels are not tied to "
                    "an earlier layer's outputs (a flatten, reshape, concatenation or a second "
                    "network input); unsupported connection"
                )
            reads[k.path] = 0
            continue
        earlier = [p for p in producers.get(gi, []) if p.layer < k.layer]
        if not earlier:
            raise ValueError(
                f"{target.name}: layer {k.layer_name!r} reads channels that no earlier layer "
                "produces; unsupported connection"
            )
        reads[k.path] = set_of_kernel[earlier[-1].path]

    node_type = np.zeros(n_nodes, np.int32)
    node_layer = np.zeros(n_nodes, np.int32)
    node_io = np.full(n_nodes, -1, np.int32)
    node_act = np.zeros(n_nodes, np.int32)
    for si, (_, start, size, kind) in enumerate(sets):
        node_type[start : start + size] = kind
        node_layer[start : start + size] = si
        if kind in (NODE_INPUT, NODE_OUTPUT):
            node_io[start : start + size] = np.arange(size)
        else:
            node_act[start : start + size] = act
    nf = len(NODE_FEATURES)
    node_base = np.tile(NODE_DEFAULTS, (n_nodes, 1))

    wh, ww = window
    f = wh * ww
    senders, receivers, etype, elayer = [], [], [], []
    edge_start: dict[str, int] = {}
    n_edges = 0
    for k in kernels:
        src = sets[reads[k.path]]
        dst = sets[set_of_kernel[k.path]]
        n_in, n_out = k.shape[k.in_axis], k.shape[k.out_axis]
        if n_in != src[2]:
            raise ValueError(f"{target.name}: layer {k.layer_name!r} reads {n_in} channels")
        ii, oo = np.meshgrid(np.arange(n_in), np.arange(n_out), indexing="ij")
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
    norm_owner: dict[int, str] = {}
    taken: set[tuple[int, int]] = set()
    for s in spec:
        if s.role == "kernel":
            kh, kw = _spatial(s.shape, s.path)
            oh, ow = (wh - kh) // 2, (ww - kw) // 2
            n_in, n_out = s.shape[s.in_axis], s.shape[s.out_axis]
            hh, wi, ii, oo = np.meshgrid(
                np.arange(kh), np.arange(kw), np.arange(n_in), np.arange(n_out), indexing="ij"
            )
            edge = edge_start[s.path] + ii * n_out + oo
            slot = (oh + hh) * ww + (ow + wi)
            idx = node_size + edge * f + slot  # [kh, kw, in, out] = kernel layout (2-D)
            index_parts.append(idx.reshape(-1))
            continue
        # 1-D node-feature leaves: bias of a kernel layer, or a normalization parameter.
        if len(s.shape) != 1 or s.out_axis != 0:
            raise ValueError(f"{target.name}: leaf {s.path!r} of shape {s.shape} is not 1-D")
        if s.role == "bias":
            owner = next((k for k in kernels if k.layer_name == s.layer_name), None)
            if owner is None:
                raise ValueError(f"{target.name}: bias {s.path!r} belongs to no kernel layer")
            si, slot = set_of_kernel[owner.path], 0
        else:
            si = _norm_owner(target, s, kernels, axis_group, producers, set_of_kernel)
            prev = norm_owner.setdefault(si, s.layer_name)
            if prev != s.layer_name:
                raise ValueError(
                    f"{target.name}: layers {prev!r} and {s.layer_name!r} both normalize the "
                    f"channels of {sets[si][0]!r}; one normalization per layer is supported"
                )
            if s.role == "running_stat":
                slot = 3 if s.path.endswith("mean") else 4
            else:
                slot = _NORM_SLOT[s.role]
        start, size = sets[si][1], sets[si][2]
        if s.shape[0] != size:
            raise ValueError(f"{target.name}: leaf {s.path!r} has {s.shape[0]} units, not {size}")
        if (si, slot) in taken:
            raise ValueError(
                f"{target.name}: leaf {s.path!r} would overwrite node feature "
                f"{NODE_FEATURES[slot]!r} of {sets[si][0]!r}; unsupported layer structure"
            )
        taken.add((si, slot))
        index_parts.append((start + np.arange(size)) * nf + slot)
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
        node_base=node_base,
        edge_base=edge_base,
        index=index,
        node_sets=tuple(sets),
    )


def _norm_owner(target, s, kernels, axis_group, producers, set_of_kernel) -> int:
    """The node set a normalization leaf belongs to: the latest earlier producer of its
    channels (the output layer if its channels are the network's outputs)."""
    gi = axis_group.get((s.path, 0))
    if gi is not None:
        earlier = [p for p in producers.get(gi, []) if p.layer < s.layer]
        if earlier:
            return set_of_kernel[earlier[-1].path]
    else:
        earlier = [k for k in kernels if k.layer < s.layer]
        if earlier and earlier[-1] is kernels[-1] and kernels[-1].shape[-1] == s.shape[0]:
            return set_of_kernel[earlier[-1].path]
    raise ValueError(
        f"{target.name}: normalization layer {s.layer_name!r} (leaf {s.path!r}) follows no "
        "layer whose channels it normalizes; unsupported connection"
        + (" (normalized layers of width 1 are not supported)" if s.shape[0] == 1 else "")
    )


# ---------------------------------------------------------------------------------------
# Population <-> feature arrays
# ---------------------------------------------------------------------------------------


def _scatter(base: jax.Array, index: jax.Array, flat: jax.Array) -> jax.Array:
    return jax.vmap(lambda v: base.at[index].set(v, unique_indices=True))(flat)


_scatter_jit = jax.jit(_scatter)
_gather_jit = jax.jit(lambda feats, index: feats[:, index])


def features(target: Target, population: Params, window: Sequence[int] | None = None):
    """Node and edge features of every member: `([n, N, 5], [n, E, h*w])` (one scatter)."""
    topo = topology(target, window)
    flat = population_lib.flatten(target, population).astype(jnp.float32)
    base = np.concatenate([topo.node_base.ravel(), topo.edge_base.ravel()])
    feats = _scatter_jit(jnp.asarray(base), jnp.asarray(topo.index), flat)
    n = flat.shape[0]
    nodes = feats[:, : topo.num_nodes * len(NODE_FEATURES)].reshape(n, topo.num_nodes, -1)
    edges = feats[:, topo.num_nodes * len(NODE_FEATURES) :].reshape(n, topo.num_edges, -1)
    return nodes, edges


def _graphs(
    topo: GraphTopology, nodes: jax.Array, edges: jax.Array, probe: jax.Array | None = None
) -> jraph.GraphsTuple:
    n = nodes.shape[0]
    offs = (np.arange(n, dtype=np.int32) * topo.num_nodes)[:, None]
    tile = lambda a: jnp.asarray(np.tile(a, n))
    extra = {} if probe is None else {"probe": jnp.reshape(probe, (n * topo.num_nodes, -1))}
    return jraph.GraphsTuple(
        nodes={
            "x": nodes.reshape(n * topo.num_nodes, -1),
            "type": tile(topo.node_type),
            "layer": tile(topo.node_layer),
            "io": tile(topo.node_io),
            "act": tile(topo.node_act),
            "mask": jnp.ones(n * topo.num_nodes, bool),
            **extra,
        },
        edges={
            "w": edges.reshape(n * topo.num_edges, -1),
            "type": tile(topo.edge_type),
            "layer": tile(topo.edge_layer),
            "mask": jnp.ones(n * topo.num_edges, bool),
        },
        senders=jnp.asarray((offs + topo.senders[None, :]).reshape(-1)),
        receivers=jnp.asarray((offs + topo.receivers[None, :]).reshape(-1)),
        n_node=jnp.full((n,), topo.num_nodes, jnp.int32),
        n_edge=jnp.full((n,), topo.num_edges, jnp.int32),
        globals={"mask": jnp.ones((n,), bool)},
    )


def population_to_graphs(
    target: Target,
    population: Params,
    *,
    window: Sequence[int] | None = None,
    probes: Any = None,
) -> jraph.GraphsTuple:
    """A population as a `GraphsTuple` of `n` graphs (unpadded; see `batch_graphs`).

    Nodes: ``x`` `[n*N, 5]` (`NODE_FEATURES`), ``type``, ``layer``, ``io``, ``act``, ``mask``
    and, with `probes` (`[K, *input_shape]`, `probe_inputs`), ``probe`` `[n*N, K]`
    (`probe_features`). Edges: ``w`` `[n*E, h*w]`, ``type``, ``layer``, ``mask``.
    Globals: ``mask`` `[n]`.
    """
    topo = topology(target, window)
    nodes, edges = features(target, population, topo.window)
    probe = None if probes is None else probe_features(target, population, probes)
    return _graphs(topo, nodes, edges, probe)


def graphs_to_population(
    target: Target,
    graphs: jraph.GraphsTuple,
    *,
    window: Sequence[int] | None = None,
    count: int | None = None,
) -> Params:
    """Inverse of `population_to_graphs` (reads ``nodes["x"]`` and ``edges["w"]``).

    `count` (the number of networks) is needed inside `jit`/`grad`, where the graph mask
    cannot be counted; by default it is read from the mask.
    """
    return graphs_to_populations(graphs, [(target, count)], window=window)[0]


def _layout(graphs: jraph.GraphsTuple, pairs, topos) -> list[int]:
    known = sum(n for _, n in pairs if n is not None)
    unknown = [i for i, (_, n) in enumerate(pairs) if n is None]
    counts = [n for _, n in pairs]
    if len(unknown) > 1:
        raise ValueError("graphs_to_populations: at most one count may be None")
    mask = graphs.globals["mask"]
    if isinstance(mask, jax.core.Tracer):  # under jit: the mask has no value to count
        if unknown:
            raise ValueError(
                "graphs_to_populations: inside jit/grad every count must be given (the "
                "graph mask is traced)"
            )
        return counts
    total = int(np.asarray(mask).sum())
    if unknown:
        counts[unknown[0]] = total - known
    if sum(counts) != total:
        raise ValueError(f"graphs_to_populations: counts {counts} != {total} real graphs")
    return counts


def graphs_to_populations(
    graphs: jraph.GraphsTuple,
    pairs: Sequence[tuple[Target, int | None]],
    *,
    window: Sequence[int] | None = None,
) -> list[Params]:
    """Inverse of `batch_graphs`: one population per `(target, count)`, in order.

    Args:
      graphs: a (padded or unpadded) batch whose real graphs are, in order, `count`
        members of each target.
      pairs: `(target, count)`; one count may be None (the rest of the graphs).
      window: the edge window the batch was built with; default the largest kernel of the
        targets (as `batch_graphs` chooses it).
    """
    targets = [t for t, _ in pairs]
    window = _common_window(targets) if window is None else tuple(window)
    topos = [topology(t, window) for t in targets]
    counts = _layout(graphs, pairs, topos)
    x, w = graphs.nodes["x"], graphs.edges["w"]
    if w.shape[-1] != window[0] * window[1]:
        raise ValueError(
            f"graphs have {w.shape[-1]} edge features; window {window} needs "
            f"{window[0] * window[1]}"
        )
    out = []
    node_off = edge_off = 0
    for t, topo, n in zip(targets, topos, counts, strict=True):
        nodes = x[node_off : node_off + n * topo.num_nodes].reshape(n, -1)
        edges = w[edge_off : edge_off + n * topo.num_edges].reshape(n, -1)
        node_off += n * topo.num_nodes
        edge_off += n * topo.num_edges
        flat = _gather_jit(jnp.concatenate([nodes, edges], axis=1), jnp.asarray(topo.index))
        dtypes = {s.dtype for s in t.spec}
        if len(dtypes) == 1:
            flat = flat.astype(next(iter(dtypes)))
        out.append(population_lib.unflatten(t, flat))
    return out


# ---------------------------------------------------------------------------------------
# Mixed batches, padding buckets
# ---------------------------------------------------------------------------------------


def bucket_size(n: int, minimum: int = 1) -> int:
    """The padded size of `n`: the next power of two (at least `minimum`)."""
    return max(int(minimum), 1 << max(0, math.ceil(math.log2(max(int(n), 1)))))


def _common_window(targets: Sequence[Target]) -> tuple[int, int]:
    ws = [kernel_window(t) for t in targets]
    return (max(h for h, _ in ws), max(w for _, w in ws))


def _concat(gs: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
    offs = np.cumsum([0] + [int(g.nodes["x"].shape[0]) for g in gs[:-1]])
    cat = lambda *xs: jnp.concatenate(xs, axis=0)
    return jraph.GraphsTuple(
        nodes=jax.tree.map(cat, *[g.nodes for g in gs]),
        edges=jax.tree.map(cat, *[g.edges for g in gs]),
        senders=cat(*[g.senders + o for g, o in zip(gs, offs, strict=True)]),
        receivers=cat(*[g.receivers + o for g, o in zip(gs, offs, strict=True)]),
        n_node=cat(*[g.n_node for g in gs]),
        n_edge=cat(*[g.n_edge for g in gs]),
        globals=jax.tree.map(cat, *[g.globals for g in gs]),
    )


def pad_graphs(
    graphs: jraph.GraphsTuple, n_node: int, n_edge: int, n_graph: int
) -> jraph.GraphsTuple:
    """Pads a batch to exactly `n_node` nodes, `n_edge` edges and `n_graph` graphs.

    One padding graph takes the extra nodes and edges (its edges connect its first node
    to itself), the remaining padding graphs are empty; every padding element has mask
    False and zero features.
    """
    nn_, ne, ng = (
        int(graphs.nodes["x"].shape[0]),
        int(graphs.edges["w"].shape[0]),
        int(graphs.n_node.shape[0]),
    )
    if n_node < nn_ + 1 or n_edge < ne or n_graph < ng + 1:
        raise ValueError(
            f"pad_graphs: cannot pad ({nn_} nodes, {ne} edges, {ng} graphs) to "
            f"({n_node}, {n_edge}, {n_graph}); padding needs one extra node and graph"
        )
    dn, de, dg = n_node - nn_, n_edge - ne, n_graph - ng

    def pad(a, k):
        return jnp.concatenate([a, jnp.zeros((k, *a.shape[1:]), a.dtype)], axis=0)

    return jraph.GraphsTuple(
        nodes=jax.tree.map(lambda a: pad(a, dn), graphs.nodes),
        edges=jax.tree.map(lambda a: pad(a, de), graphs.edges),
        senders=jnp.concatenate([graphs.senders, jnp.full((de,), nn_, jnp.int32)]),
        receivers=jnp.concatenate([graphs.receivers, jnp.full((de,), nn_, jnp.int32)]),
        n_node=jnp.concatenate(
            [graphs.n_node, jnp.array([dn], jnp.int32), jnp.zeros((dg - 1,), jnp.int32)]
        ),
        n_edge=jnp.concatenate(
            [graphs.n_edge, jnp.array([de], jnp.int32), jnp.zeros((dg - 1,), jnp.int32)]
        ),
        globals=jax.tree.map(lambda a: pad(a, dg), graphs.globals),
    )


def _check_parts_count(parts: int) -> int:
    if int(parts) != parts or parts < 1:
        raise ValueError(f"parts must be a positive integer, got {parts!r}")
    return int(parts)


def _split(n: int, parts: int) -> list[np.ndarray]:
    """`range(n)` in `parts` contiguous runs of nearly equal length (the first ones longer)."""
    return np.array_split(np.arange(n), parts)


def _slice_graphs(g: jraph.GraphsTuple, start: int, stop: int) -> jraph.GraphsTuple:
    """Graphs ``start:stop`` of an unpadded batch, with their own node numbering."""
    n_node, n_edge = np.asarray(g.n_node), np.asarray(g.n_edge)
    n0, n1 = int(n_node[:start].sum()), int(n_node[:stop].sum())
    e0, e1 = int(n_edge[:start].sum()), int(n_edge[:stop].sum())
    return jraph.GraphsTuple(
        nodes=jax.tree.map(lambda a: a[n0:n1], g.nodes),
        edges=jax.tree.map(lambda a: a[e0:e1], g.edges),
        senders=g.senders[e0:e1] - n0,
        receivers=g.receivers[e0:e1] - n0,
        n_node=g.n_node[start:stop],
        n_edge=g.n_edge[start:stop],
        globals=jax.tree.map(lambda a: a[start:stop], g.globals),
    )


def _part_buckets(
    sizes: Sequence[tuple[int, int, int]], min_nodes: int, min_edges: int, min_graphs: int
) -> tuple[int, int, int]:
    """The common padded (nodes, edges, graphs) of parts of these unpadded sizes; the
    minimums are for all parts together."""
    k = len(sizes)
    return (
        max(bucket_size(nn_ + 1, -(-min_nodes // k)) for nn_, _, _ in sizes),
        max(bucket_size(ne, -(-min_edges // k)) for _, ne, _ in sizes),
        max(bucket_size(ng + 1, -(-min_graphs // k)) for _, _, ng in sizes),
    )


def pad_parts(
    parts: Sequence[jraph.GraphsTuple],
    *,
    min_nodes: int = 1,
    min_edges: int = 1,
    min_graphs: int = 1,
) -> jraph.GraphsTuple:
    """Unpadded batches padded to common power-of-two buckets (`pad_graphs`) and joined:
    part ``p`` fills the ``p``-th equal block of every node, edge and graph axis, and its
    edges stay inside its block (see `shard_graphs`). One part is plain padding. The
    minimum sizes apply to all parts together."""
    if not parts:
        raise ValueError("pad_parts: no parts")
    sizes = [
        (int(g.nodes["x"].shape[0]), int(g.edges["w"].shape[0]), int(g.n_node.shape[0]))
        for g in parts
    ]
    pn, pe, pg = _part_buckets(sizes, min_nodes, min_edges, min_graphs)
    padded = [pad_graphs(g, pn, pe, pg) for g in parts]
    return padded[0] if len(padded) == 1 else _concat(padded)


def graph_parts(graphs: jraph.GraphsTuple, parts: int) -> bool:
    """Whether `graphs` splits into `parts` equal blocks of nodes, edges and graphs, each
    block's edges joining only its own nodes and its graphs holding exactly its nodes and
    edges (as `batch_graphs` / `GraphBank.batch` build with ``parts``)."""
    nn_, ne, ng = (
        int(graphs.nodes["x"].shape[0]),
        int(graphs.edges["w"].shape[0]),
        int(graphs.n_node.shape[0]),
    )
    if nn_ % parts or ne % parts or ng % parts:
        return False
    bn, be, bg = nn_ // parts, ne // parts, ng // parts
    block = np.arange(ne) // be
    if not (
        np.array_equal(np.asarray(graphs.senders) // bn, block)
        and np.array_equal(np.asarray(graphs.receivers) // bn, block)
    ):
        return False
    per_n = np.asarray(graphs.n_node).reshape(parts, bg).sum(1)
    per_e = np.asarray(graphs.n_edge).reshape(parts, bg).sum(1)
    return bool(np.all(per_n == bn) and np.all(per_e == be))


def batch_graphs(
    pairs: Sequence[tuple[Target, Params]],
    *,
    window: Sequence[int] | None = None,
    pad: bool = True,
    min_nodes: int = 1,
    min_edges: int = 1,
    min_graphs: int = 1,
    probes: Any = None,
    parts: int = 1,
) -> jraph.GraphsTuple:
    """Populations of (possibly different) targets as one `GraphsTuple`.

    Args:
      pairs: `(target, population)`; graphs come in this order, members in order.
      window: the common edge window; default the largest kernel over all targets.
      pad: pad nodes, edges and graphs to powers of two (`bucket_size`), at least
        `min_nodes` / `min_edges` / `min_graphs`, so batches of similar size share one
        compiled program. Masks (``nodes["mask"]``, ``edges["mask"]``, ``globals["mask"]``)
        mark the real elements.
      probes: fixed probe inputs `[K, *input_shape]`: adds the ``probe`` node features
        (`probe_features`).

      parts: split the graphs (in order) into this many contiguous parts of nearly equal
        count, each padded to the same buckets on its own, so part ``p`` is the ``p``-th
        equal block of every node, edge and graph axis and no edge crosses a block:
        `shard_graphs` on a mesh of `parts` devices then gives the one-device result
        bit for bit. The minimum sizes apply to the whole batch.
    Returns:
      the batch; `graphs_to_populations(batch, [(target, n), ...])` inverts it.
    """
    if not pairs:
        raise ValueError("batch_graphs: no populations")
    window = _common_window([t for t, _ in pairs]) if window is None else tuple(window)
    parts = _check_parts_count(parts)
    g = _concat([population_to_graphs(t, p, window=window, probes=probes) for t, p in pairs])
    if not pad:
        if parts != 1:
            raise ValueError("batch_graphs: parts > 1 needs pad=True (every part padded alike)")
        return g
    ng = int(g.n_node.shape[0])
    ends = np.cumsum([0] + [c.size for c in _split(ng, parts)])
    chunks = [_slice_graphs(g, int(a), int(b)) for a, b in zip(ends[:-1], ends[1:], strict=True)]
    return pad_parts(chunks, min_nodes=min_nodes, min_edges=min_edges, min_graphs=min_graphs)


def shard_graphs(graphs: Any, mesh: jax.sharding.Mesh) -> Any:
    """Places a graph batch built in ``parts`` equal to the mesh size (`batch_graphs`,
    `GraphBank.batch`), or a tree of such batches and per-graph arrays (e.g. labels),
    across a 1-D mesh (`hyper.sharding.targets_mesh`): device ``p`` holds part ``p``.

    Message passing then runs sharded under `jit`. No edge crosses a part, so every
    node's and graph's sums are made on one device, in the one-device order, and
    predictions and edits equal the one-device ones on the same batch bit for bit (as
    measured for `GraphMetanet` on CPU; XLA's products are not guaranteed to round the
    same for every row count). Gradients with respect to shared parameters add up over
    every device's edges, so those equal the one-device ones to float rounding only.

    Raises:
      ValueError: a batch not built in `mesh size` parts (an edge or a graph would cross
        devices), or a leaf whose leading axis the mesh size does not divide.
    """
    size = int(mesh.devices.size)
    is_graphs = lambda x: isinstance(x, jraph.GraphsTuple)
    for g in jax.tree.leaves(graphs, is_leaf=is_graphs):
        if is_graphs(g) and not graph_parts(g, size):
            raise ValueError(
                f"shard_graphs: the batch is not split into {size} self-contained parts, one "
                f"per device; build it with parts={size} (batch_graphs / GraphBank.batch)"
            )
    for a in jax.tree.leaves(graphs):
        if np.ndim(a) < 1 or np.shape(a)[0] % size:
            raise ValueError(
                f"shard_graphs: an array of shape {np.shape(a)} does not split over {size} "
                "devices (per-graph arrays need one row per graph of the batch)"
            )
    return _place(graphs, mesh)


def _place(graphs: Any, mesh: jax.sharding.Mesh) -> Any:
    """Every leaf split along its leading axis over the 1-D mesh (no checks)."""
    from hyper import sharding

    return sharding.put(graphs, sharding.targets_sharding(mesh))


class GraphBank:
    """Graph features of many networks (of several targets), held in host memory, from
    which padded batches of any subset are assembled without re-converting.

    Args:
      pairs: `(target, population)` per group; features are computed once per group (one
        jitted scatter each).
      window: the common edge window (default: the largest kernel of all targets).
      probes: fixed probe inputs `[K, *input_shape]`: batches then carry the ``probe``
        node features (`probe_features`, computed once per group).

    Attributes:
      group / member: `[M]` the group and the index in its population of sample `i`.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Target, Params]],
        *,
        window: Sequence[int] | None = None,
        probes: Any = None,
    ):
        if not pairs:
            raise ValueError("GraphBank: no populations")
        self.window = _common_window([t for t, _ in pairs]) if window is None else tuple(window)
        self.topologies = [topology(t, self.window) for t, _ in pairs]
        self.nodes, self.edges = [], []
        for t, p in pairs:
            nodes, edges = features(t, p, self.window)
            self.nodes.append(np.asarray(nodes))
            self.edges.append(np.asarray(edges))
        self.probes = (
            None if probes is None else [np.asarray(probe_features(t, p, probes)) for t, p in pairs]
        )
        sizes = [a.shape[0] for a in self.nodes]
        self.group = np.repeat(np.arange(len(sizes)), sizes)
        self.member = np.concatenate([np.arange(s) for s in sizes])

    def __len__(self) -> int:
        return len(self.group)

    def batch(
        self,
        samples: Sequence[int],
        *,
        min_nodes: int = 1,
        min_edges: int = 1,
        min_graphs: int = 1,
        parts: int = 1,
        batch_size: int | None = None,
        mesh: jax.sharding.Mesh | None = None,
        per_graph: Mapping[str, Any] | None = None,
        full: bool = False,
    ) -> jraph.GraphsTuple:
        """The graphs of `samples` (indices into the bank, in this order), padded to
        power-of-two buckets like `batch_graphs` (and in `parts` like it). The real graphs
        are where ``globals["mask"]`` is True, in the order of `samples`.

        Args:
          batch_size: the largest number of samples a batch of this run holds: the graph
            axis is padded so every batch of up to `batch_size` samples (in the same
            number of parts) gets a full batch's graph bucket (nodes and edges keep their
            own power-of-two buckets).
          full: with `batch_size`, nodes and edges are padded too, as a full batch of the
            bank's largest graphs would be: every batch of the run has one shape (one
            compiled program), at the cost of padding (used for predictions).
          mesh: place the batch across this 1-D mesh (`shard_graphs`), built in one part
            per device (``parts`` is then the mesh size). The host arrays go to the devices
            once.
          per_graph: more per-sample arrays (``[len(samples), ...]``, e.g. labels) carried
            as ``globals[name]`` in the batch's graph order, zero on padding graphs, so
            they are placed (and sharded) with their graphs.
        """
        samples = np.asarray(samples, np.int64)
        if samples.ndim != 1 or samples.size == 0:
            raise ValueError("GraphBank.batch: need a non-empty 1-D list of samples")
        parts = _check_parts_count(parts)
        if mesh is not None:
            size = int(mesh.devices.size)
            if parts not in (1, size):
                raise ValueError(
                    f"GraphBank.batch: parts={parts} on a mesh of {size} devices (one part per "
                    "device: leave parts out)"
                )
            parts = size
        if batch_size is not None:
            if batch_size < samples.size:
                raise ValueError(
                    f"GraphBank.batch: {samples.size} samples exceed batch_size={batch_size}"
                )
            # a full batch's graph bucket: its largest part and a padding graph
            largest_part = -(-int(batch_size) // parts)
            min_graphs = max(min_graphs, parts * bucket_size(largest_part + 1))
            if full:  # and its nodes (with a padding node) and edges, of the largest graphs
                most_nodes = max(t.num_nodes for t in self.topologies)
                most_edges = max(t.num_edges for t in self.topologies)
                min_nodes = max(min_nodes, parts * (largest_part * most_nodes + 1))
                min_edges = max(min_edges, parts * largest_part * most_edges)
        elif full:
            raise ValueError("GraphBank.batch: full=True needs batch_size")
        per_graph = {} if per_graph is None else {k: np.asarray(v) for k, v in per_graph.items()}
        for k, v in per_graph.items():
            if v.ndim < 1 or v.shape[0] != samples.size or k == "mask":
                raise ValueError(
                    f"GraphBank.batch: per_graph[{k!r}] needs one row per sample "
                    f"({samples.size}), got shape {v.shape}"
                    + (" ('mask' is reserved)" if k == "mask" else "")
                )
        chunks = _split(samples.size, parts)
        built = [self._assemble(samples[c]) for c in chunks]
        sizes = [(int(sum(nn_)), int(sum(ne)), len(nn_)) for _, nn_, ne in built]
        pn, pe, pg = _part_buckets(sizes, min_nodes, min_edges, min_graphs)
        padded = [_pad_host(cat, nn_, ne, pn, pe, pg) for cat, nn_, ne in built]
        for k, (g, c) in enumerate(zip(padded, chunks, strict=True)):
            g["senders"] += k * pn  # node numbers of part k start at k * pn
            g["receivers"] += k * pn
            for name, v in per_graph.items():
                g["g_" + name] = np.zeros((pg, *v.shape[1:]), v.dtype)
                g["g_" + name][: c.size] = v[c]
        host = {k: np.concatenate([g[k] for g in padded]) for k in padded[0]}
        node_keys = ("x", "type", "layer", "io", "act", "mask")
        graphs = jraph.GraphsTuple(
            nodes={
                **{k: host["n_" + k] for k in node_keys},
                **({"probe": host["n_probe"]} if self.probes is not None else {}),
            },
            edges={k: host["e_" + k] for k in ("w", "type", "layer", "mask")},
            senders=host["senders"],
            receivers=host["receivers"],
            n_node=host["n_node"],
            n_edge=host["n_edge"],
            globals={"mask": host["g_mask"], **{k: host["g_" + k] for k in per_graph}},
        )
        if mesh is None:
            return jax.tree.map(jnp.asarray, graphs)
        # Built in one part per device just above: `shard_graphs`' checks would only repeat it.
        return _place(graphs, mesh)

    def _assemble(self, samples: np.ndarray) -> tuple[dict[str, np.ndarray], list, list]:
        """The unpadded host arrays of `samples` (node numbers from 0), and per graph its
        node and edge counts."""
        keys = _BANK_KEYS + (("probe",) if self.probes is not None else ())
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        n_node, n_edge = [], []
        offset = 0
        for i in samples:
            g, m = self.group[i], self.member[i]
            topo = self.topologies[g]
            parts["x"].append(self.nodes[g][m])
            if self.probes is not None:
                parts["probe"].append(self.probes[g][m])
            parts["w"].append(self.edges[g][m])
            for k in ("type", "layer", "io", "act"):
                parts["n" + k].append(getattr(topo, "node_" + k))
            parts["etype"].append(topo.edge_type)
            parts["elayer"].append(topo.edge_layer)
            parts["senders"].append(topo.senders + offset)
            parts["receivers"].append(topo.receivers + offset)
            n_node.append(topo.num_nodes)
            n_edge.append(topo.num_edges)
            offset += topo.num_nodes
        if not samples.size:  # an empty part: zero rows of every array
            first = self._assemble(np.zeros(1, np.int64))[0]
            return {k: v[:0] for k, v in first.items()}, [], []
        return {k: np.concatenate(v) for k, v in parts.items()}, n_node, n_edge


def _pad_host(
    cat: dict[str, np.ndarray], n_node: list, n_edge: list, pn: int, pe: int, pg: int
) -> dict[str, np.ndarray]:
    """`GraphBank._assemble`'s arrays padded like `pad_graphs` (flat host arrays)."""
    nn_, ne, ng = int(sum(n_node)), int(sum(n_edge)), len(n_node)

    def pad(a, size, fill=0):
        out = np.full((size, *a.shape[1:]), fill, a.dtype)
        out[: len(a)] = a
        return out

    out = {
        "n_x": pad(cat["x"], pn),
        "n_type": pad(cat["ntype"], pn),
        "n_layer": pad(cat["nlayer"], pn),
        "n_io": pad(cat["nio"], pn),
        "n_act": pad(cat["nact"], pn),
        "n_mask": np.arange(pn) < nn_,
        "e_w": pad(cat["w"], pe),
        "e_type": pad(cat["etype"], pe),
        "e_layer": pad(cat["elayer"], pe),
        "e_mask": np.arange(pe) < ne,
        "senders": pad(cat["senders"], pe, nn_),
        "receivers": pad(cat["receivers"], pe, nn_),
        "n_node": np.array(list(n_node) + [pn - nn_] + [0] * (pg - ng - 1), np.int32),
        "n_edge": np.array(list(n_edge) + [pe - ne] + [0] * (pg - ng - 1), np.int32),
        "g_mask": np.arange(pg) < ng,
    }
    if "probe" in cat:
        out["n_probe"] = pad(cat["probe"], pn)
    return out


_BANK_KEYS = ("x", "w", "ntype", "nlayer", "nio", "nact", "etype", "elayer", "senders", "receivers")


# ---------------------------------------------------------------------------------------
# Probe features: what each neuron computes on fixed inputs
# ---------------------------------------------------------------------------------------

# Primitives that only re-view a kernel (its values, differently laid out or typed).
_VIEWS = frozenset(
    {"convert_element_type", "reshape", "transpose", "copy", "copy_p", "squeeze", "expand_dims"}
)
_CONTRACTIONS = frozenset({"dot_general", "conv_general_dilated"})


def _eval_recording(jaxpr, consts, args, alias, found):
    """Evaluates `jaxpr`, recording ``found[leaf] = (lhs, out)`` at the first contraction
    (dot_general / conv) that reads a view of kernel leaf `leaf` (`alias`: var -> leaf)."""
    views = {((), v): leaf for v, leaf in alias.items()}  # (scope, var) -> leaf

    def record(step, invals, outvals):
        eqn = step.eqn
        if step.kind == "call":  # the body's inputs view what the call's operands view
            for iv, ov in zip(step.body.jaxpr.invars, eqn.invars, strict=True):
                if isinstance(ov, jax.extend.core.Var) and (step.scope, ov) in views:
                    views[(step.inner, iv)] = views[(step.scope, ov)]
            return
        if step.kind != "eqn":
            return
        leaves = [
            views.get((step.scope, v)) if isinstance(v, jax.extend.core.Var) else None
            for v in eqn.invars
        ]
        name = eqn.primitive.name
        if name in _VIEWS and leaves[0] is not None:
            views[(step.scope, eqn.outvars[0])] = leaves[0]
        elif name in _CONTRACTIONS:
            for i, leaf in enumerate(leaves):
                if leaf is not None and leaf not in found:
                    found[leaf] = (invals[1 - i], outvals[0])

    return evaluate(jax.extend.core.ClosedJaxpr(jaxpr, consts), args, record=record)


def probe_inputs(target: Target, count: int, seed: int = 0) -> np.ndarray:
    """`count` fixed probe inputs for `target`: standard normal, `[count, *input_shape]`."""
    if target.input_shape is None:
        raise ValueError(f"{target.name}: input shape unknown; cannot make probe inputs")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((int(count), *target.input_shape)).astype(np.float32)


def _channel_means(a: jax.Array, size: int, what: str) -> jax.Array:
    """`[K, ..., C]` -> `[C, K]`: the mean of every channel over its positions."""
    if a.shape[-1] != size:
        raise ValueError(
            f"probe features: {what} has shape {a.shape}; expected {size} channels last"
        )
    return jnp.moveaxis(a.reshape(a.shape[0], -1, size).mean(1), 0, 1)


def probe_features(target: Target, population: Params, probes: Any) -> jax.Array:
    """What each node computes on fixed inputs: `[n, N, K]` for `K` probes.

    Runs every member on the probes `[K, *input_shape]` (`probe_inputs`) and records, per
    node, the mean over positions of its channel: the probe itself for input nodes, the
    output of the layer's kernel (before bias, normalization and activation) for hidden
    and output nodes. This is Neural Graphs' probe features with fixed (not learned)
    probes. The values come from the network's own forward pass (its jaxpr, evaluated
    with the kernel contractions recorded), so every architecture the graph encoding
    supports is covered; they move with the nodes under hidden-unit permutations.

    Raises:
      ValueError: a kernel whose contraction (dot/conv) cannot be located in the forward
        pass, or whose output does not hold its channels last.
    """
    topo = topology(target)
    kernels = sorted(target.select(roles=["kernel"]), key=lambda s: (s.layer, s.path))
    leaf_index = {s.path: i for i, s in enumerate(target.spec)}
    probes = jnp.asarray(probes, jnp.float32)
    treedef = jax.tree.structure(population)
    leaves = jax.tree.leaves(population)
    closed = jax.make_jaxpr(lambda ls, x: target.apply(jax.tree.unflatten(treedef, ls), x))(
        [a[0] for a in leaves], probes
    )
    jx = closed.jaxpr
    n_leaves = len(leaves)

    def member(ls):
        found: dict[int, Any] = {}
        alias = {v: i for i, v in enumerate(jx.invars[:n_leaves])}
        _eval_recording(jx, closed.consts, [*ls, probes], alias, found)
        cols = []
        for j, k in enumerate(kernels):
            li = leaf_index[k.path]
            if li not in found:
                raise ValueError(
                    f"probe features: {target.name}: layer {k.layer_name!r}: no dot/conv in "
                    "the forward pass reads its kernel"
                )
            lhs, out = found[li]
            if j == 0:
                cols.append(_channel_means(lhs, topo.node_sets[0][2], "the network input"))
            cols.append(_channel_means(out, k.shape[k.out_axis], f"layer {k.layer_name!r}"))
        return jnp.concatenate(cols, 0)

    fn = jax.jit(jax.vmap(member))
    n = leaves[0].shape[0]
    chunk = _PROBE_CHUNK
    return jnp.concatenate(
        [fn([jnp.asarray(a[i : i + chunk]) for a in leaves]) for i in range(0, n, chunk)]
    )


_PROBE_CHUNK = 512  # members per probe forward pass (bounds memory on large populations)
