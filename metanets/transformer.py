"""A graph transformer layer over network graphs (NG-T style), beside the PNA layer.

`EdgeAttentionLayer` is a drop-in alternative to `layers.EdgeUpdateLayer` inside
`models.GraphMetanet` (``layer="attention"``; the ``"gmn_t"`` model of
`metanets.predict`). Following Neural Graphs' relational transformer (NG-T), the edge
features enter the attention: keys and values are ``W h_sender + W' e`` and every head's
logit gets a bias read off the edge, ``q·k / sqrt(d) + b(e)``. Attention is restricted to
the graph's edges, in both directions (receivers attend to their senders, senders to their
receivers), with a softmax per node over its masked incident edges (`segment_softmax`);
padding edges and nodes never contribute. Optionally (``global_attention``) every graph
gets a virtual token that attends over all of the graph's real nodes and is added back to
each node: global mixing at linear cost instead of NG-T's dense ``O(N^2)`` attention.
Every operation is per node, per edge or a masked segment reduction, so permuting hidden
units permutes the states the same way and the pooled predictions are invariant.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from metanets.layers import EdgeMLP, LayerNorm, segment_mean

__all__ = ["EdgeAttentionLayer", "segment_softmax"]


def segment_softmax(
    logits: jax.Array, segment_ids: jax.Array, num_segments: int, mask: jax.Array
) -> jax.Array:
    """Softmax of `logits` `[E, H]` over the masked rows of each segment; masked rows get 0.

    >>> w = segment_softmax(jnp.zeros((3, 1)), jnp.array([0, 0, 1]), 2, jnp.ones(3, bool))
    >>> w[:, 0].tolist()
    [0.5, 0.5, 1.0]
    """
    m = mask[:, None]
    top = jax.ops.segment_max(jnp.where(m, logits, -jnp.inf), segment_ids, num_segments)
    top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
    ex = jnp.where(m, jnp.exp(logits - top[segment_ids]), 0.0)
    den = jax.ops.segment_sum(ex, segment_ids, num_segments)
    return ex / jnp.maximum(den[segment_ids], 1e-30)


class _EdgeAttention(nnx.Module):
    """Multi-head attention of each node over one direction of its incident edges."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.heads, self.head_dim = heads, dim // heads
        self.q = nnx.Linear(dim, dim, rngs=rngs)
        self.k = nnx.Linear(dim, dim, rngs=rngs)
        self.v = nnx.Linear(dim, dim, rngs=rngs)
        self.ek = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
        self.ev = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
        self.eb = nnx.Linear(dim, heads, rngs=rngs)

    def __call__(self, x, e, src, dst, n, edge_mask):
        """Nodes `dst` attend to nodes `src` along the edges: `[n, dim]`."""
        hd = (self.heads, self.head_dim)
        q = self.q(x)[dst].reshape(-1, *hd)
        k = (self.k(x)[src] + self.ek(e)).reshape(-1, *hd)
        v = (self.v(x)[src] + self.ev(e)).reshape(-1, *hd)
        logits = (q * k).sum(-1) / jnp.sqrt(float(self.head_dim)) + self.eb(e)
        a = segment_softmax(logits, dst, n, edge_mask)
        return jax.ops.segment_sum((a[..., None] * v).reshape(v.shape[0], -1), dst, n)


class EdgeAttentionLayer(nnx.Module, EdgeMLP):
    """One pre-LN graph transformer block with edge updates.

    Nodes: ``h + W_o [attn_fwd, attn_bwd(, global)]`` then ``h + FFN(LN(h))``; edges:
    ``e + MLP(LN([e, h_sender, h_receiver]))`` (`layers.EdgeMLP`, as in
    `layers.EdgeUpdateLayer`). The call signature is
    `layers.EdgeUpdateLayer`'s, plus the node-to-graph ids for the global token.

    Examples:
      >>> layer = EdgeAttentionLayer(8, heads=2, rngs=nnx.Rngs(0))
      >>> h, e = jnp.ones((3, 8)), jnp.ones((2, 8))
      >>> s, r = jnp.array([0, 1]), jnp.array([1, 2])
      >>> [a.shape for a in layer(h, e, s, r, jnp.ones(3, bool), jnp.ones(2, bool))]
      [(3, 8), (2, 8)]
    """

    def __init__(self, dim: int, *, heads: int = 4, global_attention: bool = False, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"EdgeAttentionLayer: dim {dim} is not a multiple of heads {heads}")
        self.global_attention = bool(global_attention)
        self.node_norm = LayerNorm(dim, rngs=rngs)
        self.edge_in_norm = LayerNorm(dim, rngs=rngs)
        self.fwd = _EdgeAttention(dim, heads, rngs=rngs)
        self.bwd = _EdgeAttention(dim, heads, rngs=rngs)
        parts = 3 if self.global_attention else 2
        if self.global_attention:
            self.heads, self.head_dim = heads, dim // heads
            self.gq = nnx.Linear(dim, dim, rngs=rngs)
            self.gk = nnx.Linear(dim, dim, rngs=rngs)
            self.gv = nnx.Linear(dim, dim, rngs=rngs)
        self.out = nnx.Linear(parts * dim, dim, rngs=rngs)
        self.ffn_norm = LayerNorm(dim, rngs=rngs)
        self.ffn1 = nnx.Linear(dim, 2 * dim, rngs=rngs)
        self.ffn2 = nnx.Linear(2 * dim, dim, rngs=rngs)
        self.init_edge_mlp(dim, rngs=rngs)

    def _global(self, x, node_graph, num_graphs, node_mask):
        """A virtual token per graph attends over the graph's real nodes; `[n, dim]`."""
        hd = (self.heads, self.head_dim)
        token = segment_mean(x, node_graph, num_graphs, node_mask)
        q = self.gq(token)[node_graph].reshape(-1, *hd)
        k, v = self.gk(x).reshape(-1, *hd), self.gv(x).reshape(-1, *hd)
        a = segment_softmax((q * k).sum(-1) / jnp.sqrt(float(self.head_dim)), node_graph,
                            num_graphs, node_mask)  # fmt: skip
        pooled = jax.ops.segment_sum((a[..., None] * v).reshape(x.shape[0], -1), node_graph,
                                     num_graphs)  # fmt: skip
        return pooled[node_graph]

    def __call__(
        self,
        h: jax.Array,
        e: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        node_mask: jax.Array,
        edge_mask: jax.Array,
        node_graph: jax.Array | None = None,
        num_graphs: int = 1,
    ) -> tuple[jax.Array, jax.Array]:
        """Args: h `[N, d]`, e `[E, d]`, senders/receivers `[E]`, masks `[N]`, `[E]`;
        `node_graph` `[N]` the graph of each node (needed with ``global_attention``).

        Returns: updated `(h, e)`; padded rows are zeroed.
        """
        n = h.shape[0]
        x, en = self.node_norm(h), self.edge_in_norm(e)
        parts = [
            self.fwd(x, en, senders, receivers, n, edge_mask),
            self.bwd(x, en, receivers, senders, n, edge_mask),
        ]
        if self.global_attention:
            if node_graph is None:
                raise ValueError("EdgeAttentionLayer: global attention needs node_graph")
            parts.append(self._global(x, node_graph, num_graphs, node_mask))
        h = h + self.out(jnp.concatenate(parts, -1))
        h = h + self.ffn2(jax.nn.gelu(self.ffn1(self.ffn_norm(h))))
        h = jnp.where(node_mask[:, None], h, 0.0)
        return h, self.update_edges(h, e, senders, receivers, edge_mask)
