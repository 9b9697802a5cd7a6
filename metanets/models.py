"""Graph metanetworks: encoders, invariant readouts and equivariant decoders (Flax NNX).

`GraphMetanet` reads a batch of network graphs (`metanets.batching`):

- `__call__(graphs)` -> `[n_graph, out]`: an invariant prediction per graph (masked mean
  and max over nodes and edges, then an MLP); hidden-neuron permutations of an input
  network do not change it;
- `edit(graphs, r)` -> graphs whose node and edge features are ``x + r * Δx``: the
  equivariant residual edit of every parameter (MetaPruning-style); permuting the input
  network permutes the edit the same way. `graphs_to_populations` turns it back into
  networks.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from flax import nnx

from hyper.errors import WeightspaceError
from metanets.graph_topology import ACTIVATION_IDS, NODE_FEATURES, NODE_INPUT, NODE_OUTPUT
from metanets.layers import EdgeUpdateLayer, pna_aggregate, segment_max, segment_mean
from metanets.transformer import EdgeAttentionLayer

__all__ = ["GraphMetanet", "InputStat", "graph_ids", "input_stats", "masked_graph_pool"]


class InputStat(nnx.Variable):
    """A fixed statistic of the training inputs (`GraphMetanet`'s ``input_norm``): saved
    with the model, never trained."""


def input_stats(
    graphs: Iterable[jraph.GraphsTuple],
    max_layers: int,
    edge_features: int,
    input_transform: str = "asinh",
) -> dict[str, np.ndarray]:
    """Mean and standard deviation of the node features per layer slot and of the edge
    features per layer slot and edge type (after `input_transform`, as the model reads
    them), over the real (masked) nodes and edges of `graphs`. A slot without data gets
    mean 0 and std 1; a (near-)constant feature its mean and std 1 (centred only), so
    nothing is divided by zero."""
    nf = len(NODE_FEATURES)
    n_sum, n_sq, n_cnt = (
        np.zeros((max_layers, nf)),
        np.zeros((max_layers, nf)),
        np.zeros(max_layers),
    )
    shape = (max_layers, 2, edge_features)
    e_sum, e_sq, e_cnt = np.zeros(shape), np.zeros(shape), np.zeros(shape[:2])
    fx = np.arcsinh if input_transform == "asinh" else (lambda v: v)
    for g in graphs:
        m = np.asarray(g.nodes["mask"])
        x = fx(np.asarray(g.nodes["x"], np.float64)[m])
        layer = np.clip(np.asarray(g.nodes["layer"])[m], 0, max_layers - 1)
        np.add.at(n_sum, layer, x)
        np.add.at(n_sq, layer, x * x)
        np.add.at(n_cnt, layer, 1.0)
        m = np.asarray(g.edges["mask"])
        w = fx(np.asarray(g.edges["w"], np.float64)[m])
        idx = (np.clip(np.asarray(g.edges["layer"])[m], 0, max_layers - 1),
               np.asarray(g.edges["type"])[m])  # fmt: skip
        np.add.at(e_sum, idx, w)
        np.add.at(e_sq, idx, w * w)
        np.add.at(e_cnt, idx, 1.0)

    def finish(total, sq, cnt):
        cnt = np.maximum(cnt, 1.0)[..., None]
        mean = total / cnt
        std = np.sqrt(np.maximum(sq / cnt - mean**2, 0.0))
        # a constant feature (identity edges, absent BatchNorm statistics) is centred only
        std = np.where(std > 1e-6 * (1.0 + np.abs(mean)), std, 1.0)
        return mean.astype(np.float32), std.astype(np.float32)

    node_mean, node_std = finish(n_sum, n_sq, n_cnt)
    edge_mean, edge_std = finish(e_sum, e_sq, e_cnt)
    return {"node_mean": node_mean, "node_std": node_std, "edge_mean": edge_mean,
            "edge_std": edge_std}  # fmt: skip


def graph_ids(graphs: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
    """The graph index of every node `[N]` and every edge `[E]`."""
    g = jnp.arange(graphs.n_node.shape[0])
    nodes = jnp.repeat(g, graphs.n_node, total_repeat_length=graphs.nodes["x"].shape[0])
    edges = jnp.repeat(g, graphs.n_edge, total_repeat_length=graphs.edges["w"].shape[0])
    return nodes, edges


def masked_graph_pool(x: jax.Array, ids: jax.Array, mask: jax.Array, num_graphs: int) -> jax.Array:
    """``concat(mean, max)`` of the masked rows of `x` per graph, `[num_graphs, 2d]`."""
    return jnp.concatenate(
        [segment_mean(x, ids, num_graphs, mask), segment_max(x, ids, num_graphs, mask)], -1
    )


class GraphMetanet(nnx.Module):
    """An edge-updating message-passing metanetwork over network graphs.

    Args:
      edge_features: edge feature width (`h * w` of the batch's kernel window).
      hidden: width of node and edge states.
      num_layers: message-passing rounds (`EdgeUpdateLayer`).
      out_features: outputs of the invariant head.
      max_layers: layer-depth embeddings (deeper layers share the last one).
      max_io: input/output index embeddings (further indices share the last one).
      input_transform: ``"asinh"`` (default) feeds ``asinh`` of the weights and node
        parameters to the encoders (linear near 0, logarithmic for the large values of
        diverging or badly scaled networks); ``"none"`` feeds them raw. Elementwise, so
        invariance and equivariance are unaffected.
      readout: ``"layer"``: pool (mean, max) node and edge states per layer slot, the
        hidden layers from the first slot on and the output layer (its nodes and incoming
        edges) in the last of `readout_layers` slots, deeper layers sharing the one before
        it; ``"global"``: pool over the whole graph. Both are invariant to hidden-unit
        permutations.
      pool: the readout's statistics per slot: ``"meanmax"`` (default) or ``"pna"``
        (mean, max, min and standard deviation, `layers.pna_aggregate`).
      probe_features: `K` > 0 reads the nodes' ``probe`` features (`K` per node,
        `probes.probe_features`; transformed like the weights) into the node states; the
        graphs must then carry them. 0 (default) ignores them.
      layer: ``"pna"`` (default): `layers.EdgeUpdateLayer` message passing;
        ``"attention"``: `transformer.EdgeAttentionLayer`, the NG-T-style graph transformer
        (edge features in the attention, attention along the graph's edges).
      heads: attention heads (``layer="attention"``).
      global_attention: ``layer="attention"``: also a per-graph virtual token attending
        over all of the graph's nodes.
      input_norm: standardise node and edge features (after `input_transform`) per layer
        slot before the encoders: ``(x - mean[layer]) / std[layer]`` (edges also per edge
        type) with the statistics of
        the training graphs (`set_input_stats`, `input_stats`; held as `InputStat`
        variables, saved with the model). Every unit of a layer shares them, so
        permutation invariance holds. It brings out the small deviations that carry the
        signal in features with a large common value (a LayerNorm's scale near 1).
      rngs: keyword-only NNX RNGs.
    """

    def __init__(
        self,
        edge_features: int,
        *,
        hidden: int = 32,
        num_layers: int = 4,
        out_features: int = 1,
        max_layers: int = 16,
        max_io: int = 64,
        readout: str = "layer",
        readout_layers: int = 8,
        input_transform: str = "asinh",
        pool: str = "meanmax",
        probe_features: int = 0,
        layer: str = "pna",
        heads: int = 4,
        global_attention: bool = False,
        input_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        if layer not in ("pna", "attention"):
            raise WeightspaceError(f"layer must be 'pna' or 'attention', got {layer!r}")
        self.layer_kind = layer
        if input_transform not in ("asinh", "none"):
            raise WeightspaceError(
                f"input_transform must be 'asinh' or 'none', got {input_transform!r}"
            )
        self.input_transform = input_transform
        if readout not in ("layer", "global"):
            raise WeightspaceError(f"readout must be 'layer' or 'global', got {readout!r}")
        self.readout = readout
        if pool not in ("meanmax", "pna"):
            raise WeightspaceError(f"pool must be 'meanmax' or 'pna', got {pool!r}")
        self.pool = pool
        self.readout_layers = readout_layers if readout == "layer" else 1
        self.edge_features = edge_features
        self.max_layers = max_layers
        self.max_io = max_io
        self.input_norm = bool(input_norm)
        if self.input_norm:  # identity until `set_input_stats`
            nf = len(NODE_FEATURES)
            self.node_mean = InputStat(jnp.zeros((max_layers, nf), jnp.float32))
            self.node_std = InputStat(jnp.ones((max_layers, nf), jnp.float32))
            self.edge_mean = InputStat(jnp.zeros((max_layers, 2, edge_features), jnp.float32))
            self.edge_std = InputStat(jnp.ones((max_layers, 2, edge_features), jnp.float32))
        self.node_in = nnx.Linear(len(NODE_FEATURES), hidden, rngs=rngs)
        self.probe_features = int(probe_features)
        self.node_probe = (
            nnx.Linear(self.probe_features, hidden, rngs=rngs) if self.probe_features else None
        )
        self.edge_in = nnx.Linear(edge_features, hidden, rngs=rngs)
        self.node_type = nnx.Embed(3, hidden, rngs=rngs)
        self.node_layer = nnx.Embed(max_layers, hidden, rngs=rngs)
        # Inputs and outputs are not permutable: each gets its own embedding.
        self.node_io = nnx.Embed(2 * max_io, hidden, rngs=rngs)
        self.node_act = nnx.Embed(len(ACTIVATION_IDS), hidden, rngs=rngs)
        self.edge_type = nnx.Embed(2, hidden, rngs=rngs)
        self.edge_layer = nnx.Embed(max_layers, hidden, rngs=rngs)
        if layer == "pna":
            blocks = [EdgeUpdateLayer(hidden, rngs=rngs) for _ in range(num_layers)]
        else:
            blocks = [
                EdgeAttentionLayer(
                    hidden, heads=heads, global_attention=global_attention, rngs=rngs
                )
                for _ in range(num_layers)
            ]
        self.layers = nnx.List(blocks)
        stats = 2 if pool == "meanmax" else 4
        self.head1 = nnx.Linear(2 * stats * hidden * self.readout_layers, hidden, rngs=rngs)
        self.head2 = nnx.Linear(hidden, out_features, rngs=rngs)
        self.node_dec1 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.node_dec2 = nnx.Linear(hidden, len(NODE_FEATURES), rngs=rngs)
        self.edge_dec1 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.edge_dec2 = nnx.Linear(hidden, edge_features, rngs=rngs)

    def encode(self, graphs: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
        """Node states `[N, hidden]` and edge states `[E, hidden]` after message passing."""
        nodes, edges = graphs.nodes, graphs.edges
        if edges["w"].shape[-1] != self.edge_features:
            raise WeightspaceError(
                f"GraphMetanet: graphs have {edges['w'].shape[-1]} edge features, the model "
                f"{self.edge_features}; build the batch with the model's window"
            )
        ntype = nodes["type"]
        is_io = (ntype == NODE_INPUT) | (ntype == NODE_OUTPUT)
        io = jnp.clip(nodes["io"], 0, self.max_io - 1) + jnp.where(
            ntype == NODE_OUTPUT, self.max_io, 0
        )
        fx = jnp.arcsinh if self.input_transform == "asinh" else (lambda v: v)
        x, w = fx(nodes["x"]), fx(edges["w"])
        if self.input_norm:
            nl = jnp.clip(nodes["layer"], 0, self.max_layers - 1)
            el = jnp.clip(edges["layer"], 0, self.max_layers - 1)
            x = (x - self.node_mean[...][nl]) / self.node_std[...][nl]
            w = (w - self.edge_mean[...][el, edges["type"]]) / self.edge_std[...][el, edges["type"]]
        h = (
            self.node_in(x)
            + self.node_type(ntype)
            + self.node_layer(jnp.clip(nodes["layer"], 0, self.max_layers - 1))
            + jnp.where(is_io[:, None], self.node_io(io), 0.0)
            + self.node_act(nodes["act"])
        )
        if self.node_probe is not None:
            probe = nodes.get("probe")
            if probe is None or probe.shape[-1] != self.probe_features:
                got = "none" if probe is None else probe.shape[-1]
                raise WeightspaceError(
                    f"GraphMetanet: the model reads {self.probe_features} probe features per "
                    f"node, the graphs carry {got}; build them with that many probes"
                )
            h = h + self.node_probe(fx(probe))
        e = (
            self.edge_in(w)
            + self.edge_type(edges["type"])
            + self.edge_layer(jnp.clip(edges["layer"], 0, self.max_layers - 1))
        )
        nmask, emask = nodes["mask"], edges["mask"]
        h = jnp.where(nmask[:, None], h, 0.0)
        e = jnp.where(emask[:, None], e, 0.0)
        extra = {}
        if self.layer_kind == "attention":
            extra = {"node_graph": graph_ids(graphs)[0], "num_graphs": graphs.n_node.shape[0]}
        for layer in self.layers:
            h, e = layer(h, e, graphs.senders, graphs.receivers, nmask, emask, **extra)
        return h, e

    def set_input_stats(self, stats: dict[str, np.ndarray]) -> None:
        """Sets the `input_norm` statistics (`input_stats`: ``node_mean``, ``node_std``
        `[max_layers, F]`, ``edge_mean``, ``edge_std`` `[max_layers, 2, W]`)."""
        if not self.input_norm:
            raise WeightspaceError("set_input_stats: the model was built without input_norm")
        for k in ("node_mean", "node_std", "edge_mean", "edge_std"):
            var = getattr(self, k)
            if tuple(stats[k].shape) != tuple(var[...].shape):
                raise WeightspaceError(
                    f"set_input_stats: {k} has shape {stats[k].shape}, the model {var[...].shape}"
                )
            var[...] = jnp.asarray(stats[k], jnp.float32)

    def __call__(self, graphs: jraph.GraphsTuple) -> jax.Array:
        """Invariant predictions `[n_graph, out_features]` (padding graphs give junk)."""
        h, e = self.encode(graphs)
        g = graphs.n_node.shape[0]
        nid, eid = graph_ids(graphs)
        slots = self.readout_layers
        if slots > 1:
            out_node = graphs.nodes["type"] == NODE_OUTPUT
            nslot = jnp.where(out_node, slots - 1, jnp.clip(graphs.nodes["layer"], 0, slots - 2))
            eslot = jnp.where(
                out_node[graphs.receivers],
                slots - 1,
                jnp.clip(graphs.edges["layer"] - 1, 0, slots - 2),
            )
            nid, eid = nid * slots + nslot, eid * slots + eslot

        def pool(x, ids, mask):
            if self.pool == "meanmax":
                return masked_graph_pool(x, ids, mask, g * slots).reshape(g, -1)
            return pna_aggregate(x, ids, g * slots, mask).reshape(g, -1)

        pooled = jnp.concatenate(
            [pool(h, nid, graphs.nodes["mask"]), pool(e, eid, graphs.edges["mask"])], -1
        )
        return self.head2(jax.nn.gelu(self.head1(pooled)))

    def edit(self, graphs: jraph.GraphsTuple, r: float = 0.01) -> jraph.GraphsTuple:
        """Equivariant residual edit: node features ``x + r Δx``, edge weights ``w + r Δw``.

        Residual (identity) edges are not parameters and keep their features; the other
        entries of a padded window are ignored by `graphs_to_populations`.
        """
        h, e = self.encode(graphs)
        dx = self.node_dec2(jax.nn.gelu(self.node_dec1(h)))
        dw = self.edge_dec2(jax.nn.gelu(self.edge_dec1(e)))
        is_weight = (graphs.edges["type"] == 0)[:, None]
        nodes = {**graphs.nodes, "x": graphs.nodes["x"] + r * dx}
        edges = {**graphs.edges, "w": graphs.edges["w"] + r * jnp.where(is_weight, dw, 0.0)}
        return graphs._replace(nodes=nodes, edges=edges)
