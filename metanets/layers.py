"""Message passing over graphs of networks: masked segment aggregators and an NNX layer.

Everything is written over `jax.ops.segment_*` with explicit masks, so that padded
batches (`metanets.batching.batch_graphs`) and nodes without neighbours (input nodes have no
incoming edges) give finite, well-defined results: an empty segment aggregates to 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "EdgeMLP",
    "EdgeUpdateLayer",
    "LayerNorm",
    "pna_aggregate",
    "segment_max",
    "segment_mean",
    "segment_min",
    "segment_std",
]


def _count(segment_ids: jax.Array, mask: jax.Array, num_segments: int) -> jax.Array:
    return jax.ops.segment_sum(mask.astype(jnp.float32), segment_ids, num_segments)[:, None]


def segment_mean(
    data: jax.Array, segment_ids: jax.Array, num_segments: int, mask: jax.Array
) -> jax.Array:
    """Mean of the masked rows of `data` `[E, d]` per segment `[num_segments, d]`; 0 if empty."""
    m = mask[:, None].astype(data.dtype)
    total = jax.ops.segment_sum(data * m, segment_ids, num_segments)
    return total / jnp.maximum(_count(segment_ids, mask, num_segments), 1.0)


def segment_max(
    data: jax.Array, segment_ids: jax.Array, num_segments: int, mask: jax.Array
) -> jax.Array:
    """Masked max per segment; 0 for an empty segment (never -inf)."""
    out = jax.ops.segment_max(jnp.where(mask[:, None], data, -jnp.inf), segment_ids, num_segments)
    return jnp.where(_count(segment_ids, mask, num_segments) > 0, out, 0.0)


def segment_min(
    data: jax.Array, segment_ids: jax.Array, num_segments: int, mask: jax.Array
) -> jax.Array:
    """Masked min per segment; 0 for an empty segment (never +inf)."""
    out = jax.ops.segment_min(jnp.where(mask[:, None], data, jnp.inf), segment_ids, num_segments)
    return jnp.where(_count(segment_ids, mask, num_segments) > 0, out, 0.0)


def segment_std(
    data: jax.Array,
    segment_ids: jax.Array,
    num_segments: int,
    mask: jax.Array,
    eps: float = 1e-5,
) -> jax.Array:
    """Masked standard deviation per segment, ``sqrt(var + eps) - sqrt(eps)`` (0 if empty;
    the eps keeps the gradient finite at zero variance)."""
    mean = segment_mean(data, segment_ids, num_segments, mask)
    sq = segment_mean(data * data, segment_ids, num_segments, mask)
    return jnp.sqrt(jnp.maximum(sq - mean * mean, 0.0) + eps) - jnp.sqrt(eps)


def pna_aggregate(
    data: jax.Array, segment_ids: jax.Array, num_segments: int, mask: jax.Array
) -> jax.Array:
    """PNA-style aggregation: ``concat(mean, max, min, std)`` per segment, `[S, 4d]`."""
    return jnp.concatenate(
        [
            segment_mean(data, segment_ids, num_segments, mask),
            segment_max(data, segment_ids, num_segments, mask),
            segment_min(data, segment_ids, num_segments, mask),
            segment_std(data, segment_ids, num_segments, mask),
        ],
        axis=-1,
    )


class LayerNorm(nnx.Module):
    """Layer normalization over the last axis, ``(x - mean) / sqrt(var + eps) * scale +
    bias``, with the row statistics taken as matrix products with a ``1/d`` vector.

    Same parameters (``scale``, ``bias``) and epsilon as `nnx.LayerNorm`. The products
    make a row's statistics independent of how many rows are computed together: XLA's
    CPU code for a row reduction sums in an order that changes with the row count, so a
    graph batch split over devices (`batching.shard_graphs`) would not give the one-device
    result bit for bit.
    """

    def __init__(self, dim: int, *, epsilon: float = 1e-6, rngs: nnx.Rngs):
        del rngs  # deterministic initialisation, like nnx.LayerNorm
        self.epsilon = epsilon
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        avg = jnp.full((x.shape[-1],), 1.0 / x.shape[-1], x.dtype)
        centred = x - (x @ avg)[..., None]
        var = (centred * centred) @ avg
        row = (1,) * (x.ndim - 1) + (-1,)
        scale, bias = self.scale[...].reshape(row), self.bias[...].reshape(row)
        return centred * jax.lax.rsqrt(var + self.epsilon)[..., None] * scale + bias


class EdgeMLP:
    """The edge update of the graph layers, ``e + MLP(LN([e, h_sender, h_receiver]))`` with
    padded edges zeroed: a mixin giving a layer its ``edge_norm``, ``edge_mlp1`` and
    ``edge_mlp2`` parameters (`EdgeUpdateLayer`, `transformer.EdgeAttentionLayer`)."""

    def init_edge_mlp(self, dim: int, *, rngs: nnx.Rngs) -> None:
        self.edge_norm = LayerNorm(3 * dim, rngs=rngs)
        self.edge_mlp1 = nnx.Linear(3 * dim, dim, rngs=rngs)
        self.edge_mlp2 = nnx.Linear(dim, dim, rngs=rngs)

    def update_edges(
        self,
        h: jax.Array,
        e: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        edge_mask: jax.Array,
    ) -> jax.Array:
        """The updated edge states `[E, d]` from the new node states `h` `[N, d]`."""
        upd = self.edge_norm(jnp.concatenate([e, h[senders], h[receivers]], -1))
        e = e + self.edge_mlp2(jax.nn.gelu(self.edge_mlp1(upd)))
        return jnp.where(edge_mask[:, None], e, 0.0)


class EdgeUpdateLayer(nnx.Module, EdgeMLP):
    """One round of message passing with edge updates, in both edge directions.

    Forward messages ``W_f [h_sender, e]`` are aggregated at receivers, reverse messages
    ``W_b [h_receiver, e]`` at senders (PNA: mean, max, min, std); nodes update
    residually, ``h + MLP(LN([h, agg_f, agg_b]))``; then edges,
    ``e + MLP(LN([e, h_sender, h_receiver]))``. Permuting nodes (and edges) permutes the
    outputs the same way.

    >>> layer = EdgeUpdateLayer(8, rngs=nnx.Rngs(0))
    >>> h, e = jnp.ones((3, 8)), jnp.ones((2, 8))
    >>> s, r = jnp.array([0, 1]), jnp.array([1, 2])
    >>> [a.shape for a in layer(h, e, s, r, jnp.ones(3, bool), jnp.ones(2, bool))]
    [(3, 8), (2, 8)]
    """

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.msg_fwd = nnx.Linear(2 * dim, dim, rngs=rngs)
        self.msg_bwd = nnx.Linear(2 * dim, dim, rngs=rngs)
        self.node_norm = LayerNorm(9 * dim, rngs=rngs)
        self.node_mlp1 = nnx.Linear(9 * dim, dim, rngs=rngs)
        self.node_mlp2 = nnx.Linear(dim, dim, rngs=rngs)
        self.init_edge_mlp(dim, rngs=rngs)

    def __call__(
        self,
        h: jax.Array,
        e: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        node_mask: jax.Array,
        edge_mask: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """Args: h `[N, d]`, e `[E, d]`, senders/receivers `[E]`, masks `[N]`, `[E]`.

        Returns: updated `(h, e)`; padded rows are zeroed.
        """
        n = h.shape[0]
        hs, hr = h[senders], h[receivers]
        fwd = jax.nn.gelu(self.msg_fwd(jnp.concatenate([hs, e], -1)))
        bwd = jax.nn.gelu(self.msg_bwd(jnp.concatenate([hr, e], -1)))
        agg_f = pna_aggregate(fwd, receivers, n, edge_mask)
        agg_b = pna_aggregate(bwd, senders, n, edge_mask)
        upd = self.node_norm(jnp.concatenate([h, agg_f, agg_b], -1))
        h = h + self.node_mlp2(jax.nn.gelu(self.node_mlp1(upd)))
        h = jnp.where(node_mask[:, None], h, 0.0)
        return h, self.update_edges(h, e, senders, receivers, edge_mask)
