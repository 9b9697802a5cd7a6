"""Networks as graphs: a `Target` + population <-> a `jraph.GraphsTuple`, exactly.

A population maps onto its target's `metanets.graph_topology.topology` in one jitted scatter
(`features`, `population_to_graphs`), and back in one gather (`graphs_to_population`,
`graphs_to_populations`, which also split a mixed batch of `metanets.batching`).

Optionally, nodes also carry probe features (`metanets.probes.probe_features`): what each
neuron computes on a few fixed inputs, from the network's own forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from hyper import population as population_lib
from hyper.errors import WeightspaceError
from hyper.target import Params, Target
from metanets.graph_topology import NODE_FEATURES, GraphTopology, common_kernel_window, topology
from metanets.probes import probe_features

__all__ = [
    "features",
    "graphs_to_population",
    "graphs_to_populations",
    "population_to_graphs",
    "position_features",
]

# ---------------------------------------------------------------------------------------
# Population <-> feature arrays
# ---------------------------------------------------------------------------------------


def _scatter(
    base: jax.Array, index: jax.Array, flat: jax.Array, sizes: tuple[int, int, int, int, int]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Every member's flat parameters scattered into its feature vector, split into node,
    edge and position features (`sizes`: nodes, node width, edges, edge width, pos width)."""
    feats = jax.vmap(lambda v: base.at[index].set(v, unique_indices=True))(flat)
    nn_, fn, ne, fe, fp = sizes
    n, a, b = flat.shape[0], nn_ * fn, nn_ * fn + ne * fe
    return (
        feats[:, :a].reshape(n, nn_, fn),
        feats[:, a:b].reshape(n, ne, fe),
        feats[:, b:].reshape(n, nn_, fp),
    )


# One program per target shape (scatter, split and reshape), not one per eager op.
_scatter_jit = jax.jit(_scatter, static_argnums=3)


def _gather(x, w, pos, index, layout: tuple[int, int, int, int, int, int]) -> jax.Array:
    """The flat parameters `[n, P]` of `n` graphs of one target read back from a batch's
    node, edge and position features (`layout`: first node, first edge, n, nodes and edges
    per graph, position width)."""
    node_off, edge_off, n, nn_, ne, pw = layout
    rows = slice(node_off, node_off + n * nn_)
    parts = [x[rows].reshape(n, -1), w[edge_off : edge_off + n * ne].reshape(n, -1)]
    if pw:
        parts.append(pos[rows, :pw].reshape(n, -1))
    return jnp.concatenate(parts, axis=1)[:, index]


_gather_jit = jax.jit(_gather, static_argnums=4)


def features(target: Target, population: Params, window: Sequence[int] | None = None):
    """Node and edge features of every member: `([n, N, 5], [n, E, h*w])` (one scatter).

    A target with a position embedding (`GraphTopology.pos_width` > 0) also has position
    features, which only `position_features` / `population_to_graphs` return.
    """
    return _all_features(target, population, window)[:2]


def position_features(target: Target, population: Params, window: Sequence[int] | None = None):
    """The position-embedding features of every member, `[n, N, pos_width]`."""
    return _all_features(target, population, window)[2]


def _all_features(target: Target, population: Params, window: Sequence[int] | None):
    topo = topology(target, window)
    flat = population_lib.flatten(target, population).astype(jnp.float32)
    base = np.concatenate(
        [
            topo.node_base.ravel(),
            topo.edge_base.ravel(),
            np.zeros(topo.num_nodes * topo.pos_width, np.float32),
        ]
    )
    sizes = (
        topo.num_nodes,
        len(NODE_FEATURES),
        topo.num_edges,
        topo.edge_features,
        topo.pos_width,
    )
    nodes, edges, pos = _scatter_jit(jnp.asarray(base), jnp.asarray(topo.index), flat, sizes)
    return nodes, edges, pos


def _graphs(
    topo: GraphTopology,
    nodes: jax.Array,
    edges: jax.Array,
    probe: jax.Array | None = None,
    pos: jax.Array | None = None,
) -> jraph.GraphsTuple:
    n = nodes.shape[0]
    offs = (np.arange(n, dtype=np.int32) * topo.num_nodes)[:, None]
    tile = lambda a: jnp.asarray(np.tile(a, n))
    extra = {} if probe is None else {"probe": jnp.reshape(probe, (n * topo.num_nodes, -1))}
    if topo.pos_width:
        extra["pos"] = jnp.reshape(pos, (n * topo.num_nodes, topo.pos_width))
    return jraph.GraphsTuple(
        nodes={
            "x": nodes.reshape(n * topo.num_nodes, -1),
            "type": tile(topo.node_type),
            "layer": tile(topo.node_layer),
            "io": tile(topo.node_io),
            "act": tile(topo.node_act),
            "norm": tile(topo.node_norm),
            "mask": jnp.asarray(np.ones(n * topo.num_nodes, bool)),
            **extra,
        },
        edges={
            "w": edges.reshape(n * topo.num_edges, -1),
            "type": tile(topo.edge_type),
            "layer": tile(topo.edge_layer),
            "mask": jnp.asarray(np.ones(n * topo.num_edges, bool)),
        },
        senders=jnp.asarray((offs + topo.senders[None, :]).reshape(-1)),
        receivers=jnp.asarray((offs + topo.receivers[None, :]).reshape(-1)),
        n_node=jnp.asarray(np.full((n,), topo.num_nodes, np.int32)),
        n_edge=jnp.asarray(np.full((n,), topo.num_edges, np.int32)),
        globals={"mask": jnp.asarray(np.ones((n,), bool))},
    )


def population_to_graphs(
    target: Target,
    population: Params,
    *,
    window: Sequence[int] | None = None,
    probes: Any = None,
) -> jraph.GraphsTuple:
    """A population as a `GraphsTuple` of `n` graphs (unpadded; see `batch_graphs`).

    Nodes: ``x`` `[n*N, 5]` (`NODE_FEATURES`), ``type``, ``layer``, ``io``, ``act``,
    ``norm`` (`NORM_IDS`), ``mask``; with a position embedding (a transformer's),
    ``pos`` `[n*N, X]` (`GraphTopology.pos_width`: row ``c`` of the channels it is added
    to holds ``pos[..., c]``, zeros elsewhere); with `probes` (`[K, *input_shape]`,
    `probe_inputs`), ``probe`` `[n*N, K]` (`probe_features`). Edges: ``w`` `[n*E, h*w]`,
    ``type``, ``layer``, ``mask``. Globals: ``mask`` `[n]`.
    """
    topo = topology(target, window)
    nodes, edges, pos = _all_features(target, population, topo.window)
    probe = None if probes is None else probe_features(target, population, probes)
    return _graphs(topo, nodes, edges, probe, pos)


def graphs_to_population(
    target: Target,
    graphs: jraph.GraphsTuple,
    *,
    window: Sequence[int] | None = None,
    count: int | None = None,
) -> Params:
    """Inverse of `population_to_graphs` (reads ``nodes["x"]``, ``edges["w"]`` and, for a
    target with a position embedding, ``nodes["pos"]``).

    `count` (the number of networks) is needed inside `jit`/`grad`, where the graph mask
    cannot be counted; by default it is read from the mask.
    """
    return graphs_to_populations(graphs, [(target, count)], window=window)[0]


def _layout(graphs: jraph.GraphsTuple, pairs, topos) -> list[int]:
    known = sum(n for _, n in pairs if n is not None)
    unknown = [i for i, (_, n) in enumerate(pairs) if n is None]
    counts = [n for _, n in pairs]
    if len(unknown) > 1:
        raise WeightspaceError("graphs_to_populations: at most one count may be None")
    mask = graphs.globals["mask"]
    if isinstance(mask, jax.core.Tracer):  # under jit: the mask has no value to count
        if unknown:
            raise WeightspaceError(
                "graphs_to_populations: inside jit/grad every count must be given (the "
                "graph mask is traced)"
            )
        return counts
    total = int(np.asarray(mask).sum())
    if unknown:
        counts[unknown[0]] = total - known
    if sum(counts) != total:
        raise WeightspaceError(f"graphs_to_populations: counts {counts} != {total} real graphs")
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
    window = common_kernel_window(targets) if window is None else tuple(window)
    topos = [topology(t, window) for t in targets]
    counts = _layout(graphs, pairs, topos)
    x, w = graphs.nodes["x"], graphs.edges["w"]
    if w.shape[-1] != window[0] * window[1]:
        raise WeightspaceError(
            f"graphs have {w.shape[-1]} edge features; window {window} needs "
            f"{window[0] * window[1]}"
        )
    out = []
    node_off = edge_off = 0
    for t, topo, n in zip(targets, topos, counts, strict=True):
        pos = graphs.nodes.get("pos")
        if topo.pos_width and (pos is None or pos.shape[-1] < topo.pos_width):
            raise WeightspaceError(
                f"graphs_to_populations: {t.name} has a position embedding of "
                f"{topo.pos_width} features per node; the graphs carry "
                f"{'none' if pos is None else pos.shape[-1]} (nodes['pos'], built by "
                "population_to_graphs)"
            )
        layout = (node_off, edge_off, n, topo.num_nodes, topo.num_edges, topo.pos_width)
        flat = _gather_jit(x, w, pos if topo.pos_width else None, jnp.asarray(topo.index), layout)
        node_off += n * topo.num_nodes
        edge_off += n * topo.num_edges
        dtypes = {s.dtype for s in t.spec}
        if len(dtypes) == 1:
            flat = flat.astype(next(iter(dtypes)))
        out.append(population_lib.unflatten(t, flat))
    return out
