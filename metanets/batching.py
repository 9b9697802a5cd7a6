"""Mixed graph batches: populations of several targets as one padded `GraphsTuple`.

Batches are padded to power-of-two shape buckets (`bucket_size`) so `jit` compiles a
handful of programs, never one per batch; masks (``nodes["mask"]``, ``edges["mask"]``,
``globals["mask"]``) mark the real elements. Batches are assembled and padded in host
memory (`GraphBank`, which holds the features of a whole zoo and assembles batches of any
subset; `batch_graphs` builds one bank for its populations), so no program is compiled per
eager op and batch shape, and go to the devices once. The padder (`pad_graphs`) also pads a
batch of JAX arrays alike. A batch built in ``parts`` splits into self-contained blocks
that `shard_graphs` places one per device.

Position-embedding features (``nodes["pos"]``, `GraphTopology.pos_width`) travel with
their nodes: a batch holding any target with a position embedding carries ``pos`` at the
largest width of its targets (of the bank's, for `GraphBank`), zeros for the other
targets' nodes, the padding and the columns past a target's own width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from hyper import sharding
from hyper.errors import WeightspaceError
from hyper.target import Params, Target
from metanets.graph import features, position_features
from metanets.graph_topology import common_kernel_window, topology
from metanets.probes import probe_features

__all__ = [
    "GraphBank",
    "batch_graphs",
    "bucket_size",
    "graph_parts",
    "pad_graphs",
    "pad_parts",
    "shard_graphs",
]


def bucket_size(n: int, minimum: int = 1) -> int:
    """The padded size of `n`: the next power of two (at least `minimum`)."""
    return max(int(minimum), 1 << max(0, math.ceil(math.log2(max(int(n), 1)))))


def _array_module(graphs: jraph.GraphsTuple) -> Any:
    """NumPy for a batch held in host memory (`GraphBank`), else `jax.numpy`."""
    return np if isinstance(graphs.senders, np.ndarray) else jnp


def _concat(gs: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
    xp = _array_module(gs[0])
    offs = np.cumsum([0] + [int(g.nodes["x"].shape[0]) for g in gs[:-1]])
    cat = lambda *xs: xp.concatenate(xs, axis=0)
    return jraph.GraphsTuple(
        nodes=jax.tree.map(cat, *[g.nodes for g in gs]),
        edges=jax.tree.map(cat, *[g.edges for g in gs]),
        senders=cat(*[g.senders + int(o) for g, o in zip(gs, offs, strict=True)]),
        receivers=cat(*[g.receivers + int(o) for g, o in zip(gs, offs, strict=True)]),
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
    False and zero features. A batch of NumPy arrays (host memory) stays NumPy, a batch of
    JAX arrays stays JAX: the one padder of `batch_graphs` and `GraphBank.batch`.
    """
    xp = _array_module(graphs)
    nn_, ne, ng = (
        int(graphs.nodes["x"].shape[0]),
        int(graphs.edges["w"].shape[0]),
        int(graphs.n_node.shape[0]),
    )
    if n_node < nn_ + 1 or n_edge < ne or n_graph < ng + 1:
        raise WeightspaceError(
            f"pad_graphs: cannot pad ({nn_} nodes, {ne} edges, {ng} graphs) to "
            f"({n_node}, {n_edge}, {n_graph}); padding needs one extra node and graph"
        )
    dn, de, dg = n_node - nn_, n_edge - ne, n_graph - ng

    def pad(a, k):
        return xp.concatenate([a, xp.zeros((k, *a.shape[1:]), a.dtype)], axis=0)

    return jraph.GraphsTuple(
        nodes=jax.tree.map(lambda a: pad(a, dn), graphs.nodes),
        edges=jax.tree.map(lambda a: pad(a, de), graphs.edges),
        senders=xp.concatenate([graphs.senders, xp.full((de,), nn_, np.int32)]),
        receivers=xp.concatenate([graphs.receivers, xp.full((de,), nn_, np.int32)]),
        n_node=xp.concatenate(
            [graphs.n_node, xp.array([dn], np.int32), xp.zeros((dg - 1,), np.int32)]
        ),
        n_edge=xp.concatenate(
            [graphs.n_edge, xp.array([de], np.int32), xp.zeros((dg - 1,), np.int32)]
        ),
        globals=jax.tree.map(lambda a: pad(a, dg), graphs.globals),
    )


def _check_parts_count(parts: int) -> int:
    if int(parts) != parts or parts < 1:
        raise WeightspaceError(f"parts must be a positive integer, got {parts!r}")
    return int(parts)


def _split(n: int, parts: int) -> list[np.ndarray]:
    """`range(n)` in `parts` contiguous runs of nearly equal length (the first ones longer)."""
    return np.array_split(np.arange(n), parts)


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
        raise WeightspaceError("pad_parts: no parts")
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
        raise WeightspaceError("batch_graphs: no populations")
    parts = _check_parts_count(parts)
    if not pad and parts != 1:
        raise WeightspaceError("batch_graphs: parts > 1 needs pad=True (every part padded alike)")
    # Assembled and padded in host memory (`GraphBank`): the same arrays as converting and
    # padding on the device, without compiling a program per eager op and batch shape.
    bank = GraphBank(pairs, window=window, probes=probes)
    samples = np.arange(len(bank))
    if not pad:
        return jax.tree.map(jnp.asarray, bank._assemble(samples))
    return bank.batch(
        samples, min_nodes=min_nodes, min_edges=min_edges, min_graphs=min_graphs, parts=parts
    )


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
      WeightspaceError: a batch not built in `mesh size` parts (an edge or a graph would cross
        devices), or a leaf whose leading axis the mesh size does not divide.
    """
    size = int(mesh.devices.size)
    is_graphs = lambda x: isinstance(x, jraph.GraphsTuple)
    for g in jax.tree.leaves(graphs, is_leaf=is_graphs):
        if is_graphs(g) and not graph_parts(g, size):
            raise WeightspaceError(
                f"shard_graphs: the batch is not split into {size} self-contained parts, one "
                f"per device; build it with parts={size} (batch_graphs / GraphBank.batch)"
            )
    for a in jax.tree.leaves(graphs):
        if np.ndim(a) < 1 or np.shape(a)[0] % size:
            raise WeightspaceError(
                f"shard_graphs: an array of shape {np.shape(a)} does not split over {size} "
                "devices (per-graph arrays need one row per graph of the batch)"
            )
    return _place(graphs, mesh)


def _place(graphs: Any, mesh: jax.sharding.Mesh) -> Any:
    """Every leaf split along its leading axis over the 1-D mesh (no checks)."""
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

    Where a target has a position embedding, batches carry ``nodes["pos"]`` at
    `pos_width`, the largest of the bank's targets (see the module docstring).

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
            raise WeightspaceError("GraphBank: no populations")
        self.window = (
            common_kernel_window([t for t, _ in pairs]) if window is None else tuple(window)
        )
        self.topologies = [topology(t, self.window) for t, _ in pairs]
        self.nodes, self.edges = [], []
        for t, p in pairs:
            nodes, edges = features(t, p, self.window)
            self.nodes.append(np.asarray(nodes))
            self.edges.append(np.asarray(edges))
        self.probes = (
            None if probes is None else [np.asarray(probe_features(t, p, probes)) for t, p in pairs]
        )
        # Position features at the bank's one width (zeros for targets without them).
        self.pos_width = max(topo.pos_width for topo in self.topologies)
        self.pos = None
        if self.pos_width:
            self.pos = []
            for (t, p), topo, nodes in zip(pairs, self.topologies, self.nodes, strict=True):
                pos = np.zeros((*nodes.shape[:2], self.pos_width), np.float32)
                if topo.pos_width:
                    pos[..., : topo.pos_width] = np.asarray(position_features(t, p, self.window))
                self.pos.append(pos)
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
            raise WeightspaceError("GraphBank.batch: need a non-empty 1-D list of samples")
        parts = _check_parts_count(parts)
        if mesh is not None:
            size = int(mesh.devices.size)
            if parts not in (1, size):
                raise WeightspaceError(
                    f"GraphBank.batch: parts={parts} on a mesh of {size} devices (one part per "
                    "device: leave parts out)"
                )
            parts = size
        if batch_size is not None:
            if batch_size < samples.size:
                raise WeightspaceError(
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
            raise WeightspaceError("GraphBank.batch: full=True needs batch_size")
        per_graph = {} if per_graph is None else {k: np.asarray(v) for k, v in per_graph.items()}
        for k, v in per_graph.items():
            if v.ndim < 1 or v.shape[0] != samples.size or k == "mask":
                raise WeightspaceError(
                    f"GraphBank.batch: per_graph[{k!r}] needs one row per sample "
                    f"({samples.size}), got shape {v.shape}"
                    + (" ('mask' is reserved)" if k == "mask" else "")
                )
        chunks = _split(samples.size, parts)
        built = []
        for c in chunks:
            g = self._assemble(samples[c])
            built.append(
                g._replace(globals={**g.globals, **{k: v[c] for k, v in per_graph.items()}})
            )
        graphs = pad_parts(built, min_nodes=min_nodes, min_edges=min_edges, min_graphs=min_graphs)
        if mesh is None:
            return jax.tree.map(jnp.asarray, graphs)
        # Built in one part per device just above: `shard_graphs`' checks would only repeat it.
        return _place(graphs, mesh)

    def _assemble(self, samples: np.ndarray) -> jraph.GraphsTuple:
        """The unpadded graphs of `samples` as host (NumPy) arrays, node numbers from 0."""
        topos = [self.topologies[self.group[i]] for i in samples]
        if not topos:  # an empty part: zero rows of every array
            first = self._assemble(np.zeros(1, np.int64))
            return jax.tree.map(lambda a: a[:0], first)
        rows = [(self.group[i], self.member[i]) for i in samples]
        offsets = np.cumsum([0] + [t.num_nodes for t in topos[:-1]])
        cat = np.concatenate
        nodes = {
            "x": cat([self.nodes[g][m] for g, m in rows]),
            **{
                k: cat([getattr(t, "node_" + k) for t in topos])
                for k in ("type", "layer", "io", "act", "norm")
            },
            "mask": np.ones(sum(t.num_nodes for t in topos), bool),
        }
        if self.probes is not None:
            nodes["probe"] = cat([self.probes[g][m] for g, m in rows])
        if self.pos is not None:
            nodes["pos"] = cat([self.pos[g][m] for g, m in rows])
        return jraph.GraphsTuple(
            nodes=nodes,
            edges={
                "w": cat([self.edges[g][m] for g, m in rows]),
                "type": cat([t.edge_type for t in topos]),
                "layer": cat([t.edge_layer for t in topos]),
                "mask": np.ones(sum(t.num_edges for t in topos), bool),
            },
            senders=cat([t.senders + int(o) for t, o in zip(topos, offsets, strict=True)]),
            receivers=cat([t.receivers + int(o) for t, o in zip(topos, offsets, strict=True)]),
            n_node=np.array([t.num_nodes for t in topos], np.int32),
            n_edge=np.array([t.num_edges for t in topos], np.int32),
            globals={"mask": np.ones(len(topos), bool)},
        )
