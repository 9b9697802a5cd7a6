"""metanets graphs of transformers: nnx.MultiHeadAttention and a learned position embedding.

Exact round trips population -> graphs -> population, where the q/k/v/out kernels and the
position embedding land, node counts, and equivariance: permuting the residual stream,
the heads and the head dims (`hyper.symmetry.permute`) permutes the graph's nodes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hyper import architectures
from hyper.symmetry import permute, random_permutations, structural_groups
from hyper.target import Target
from metanets import graph, graph_topology


class _Block(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(width, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(2, width, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(width, rngs=rngs)
        self.mlp1 = nnx.Linear(width, 2 * width, rngs=rngs)
        self.mlp2 = nnx.Linear(2 * width, width, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp2(nnx.gelu(self.mlp1(self.ln2(x))))


class _ViT(nnx.Module):
    """8x8 images as 16 patches of 2x2, a (1, 16, width) position Param, 2 blocks."""

    def __init__(self, rngs: nnx.Rngs, width: int = 8):
        self.proj = nnx.Linear(4, width, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 16, width)))
        self.blocks = nnx.List([_Block(width, rngs) for _ in range(2)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, 3, rngs=rngs)

    def __call__(self, x):
        b = x.shape[0]
        x = x.reshape(b, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(b, 16, 4)
        x = self.proj(x) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(axis=1))


class _InputAttention(nnx.Module):
    """q, k and v all read the network input (no embedding before the attention)."""

    def __init__(self, rngs: nnx.Rngs):
        self.att = nnx.MultiHeadAttention(2, 4, qkv_features=6, decode=False, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(self.att(x).mean(1))


class _Tokens(nnx.Module):
    """Tokens of a 7-word vocabulary: an nnx.Embed table starts the residual stream."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(7, 8, rngs=rngs)
        self.pos = nnx.Param(jnp.zeros((1, 5, 8)))
        self.block = _Block(8, rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, tokens):
        return self.head(self.block(self.embed(tokens) + self.pos).mean(axis=1))


_TARGETS: dict[str, Target] = {}


def _target(kind: str) -> Target:
    if kind not in _TARGETS:
        if kind == "preset":
            _TARGETS[kind] = architectures.make_target(
                "transformer",
                input_shape=(8, 8, 1),
                patch_size=[2, 2],
                width=8,
                depth=1,
                heads=2,
                mlp_dim=16,
                out_features=10,
            )
        elif kind == "vit":
            _TARGETS[kind] = Target.from_nnx(_ViT(nnx.Rngs(0)), sample_input=jnp.zeros((2, 8, 8)))
        elif kind == "tokens":
            tokens = jnp.zeros((2, 5), jnp.int32)
            _TARGETS[kind] = Target.from_nnx(_Tokens(nnx.Rngs(0)), sample_input=tokens)
        else:
            m = _InputAttention(nnx.Rngs(0))
            _TARGETS[kind] = Target.from_nnx(m, sample_input=jnp.zeros((2, 3, 4)))
    return _TARGETS[kind]


def _same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and bool(jnp.array_equal(x, y)) for x, y in zip(la, lb, strict=True)
    )


# (node sets in order, their sizes, pos_width)
_EXPECTED = {
    "preset": (
        ["input", "patch"]
        + [f"blocks/0/{n}" for n in ("attn/query", "attn/key", "attn/value", "attn/out")]
        + ["blocks/0/mlp1", "blocks/0/mlp2", "head"],
        [1, 8, 8, 8, 8, 8, 16, 8, 10],
        16,
    ),
    "vit": (
        ["input", "proj"]
        + [
            f"blocks/{b}/{n}"
            for b in (0, 1)
            for n in ("attn/query", "attn/key", "attn/value", "attn/out", "mlp1", "mlp2")
        ]
        + ["head"],
        [4, 8] + [8, 8, 8, 8, 16, 8] * 2 + [3],
        16,
    ),
    "input": (
        ["input", "att/query", "att/key", "att/value", "att/out", "head"],
        [4, 6, 6, 6, 4, 2],
        0,
    ),
    "tokens": (  # the vocabulary as inputs, the table's features start the stream
        ["input", "embed"]
        + [f"block/{n}" for n in ("attn/query", "attn/key", "attn/value", "attn/out")]
        + ["block/mlp1", "block/mlp2", "head"],
        [7, 8, 8, 8, 8, 8, 16, 8, 3],
        5,
    ),
}


@pytest.mark.parametrize("kind", ["preset", "vit", "input", "tokens"])
def test_round_trip_is_exact_and_counts_nodes(kind, random_params):
    t = _target(kind)
    pop = random_params(t, 1, n=2)
    g = graph.population_to_graphs(t, pop)
    assert _same(graph.graphs_to_population(t, g), pop)
    topo = graph_topology.topology(t)
    names, sizes, pos_width = _EXPECTED[kind]
    assert [s[0] for s in topo.node_sets] == names
    assert [s[2] for s in topo.node_sets] == sizes
    assert topo.num_nodes == sum(sizes) and topo.pos_width == pos_width
    assert len(np.unique(topo.index)) == t.num_params
    assert ("pos" in g.nodes) == bool(pos_width)
    if pos_width:  # graphs without the position features cannot give the population back
        no_pos = g._replace(nodes={k: v for k, v in g.nodes.items() if k != "pos"})
        with pytest.raises(ValueError, match="position embedding"):
            graph.graphs_to_population(t, no_pos)
    if kind == "tokens":  # the attention output is added to the table's features
        sets = {s[0]: s for s in topo.node_sets}
        emb, out = sets["embed"][1], sets["block/attn/out"][1]
        into = (topo.edge_type == graph_topology.EDGE_RESIDUAL) & (topo.receivers >= out)
        into &= topo.receivers < out + 8
        assert set(topo.senders[into]) == set(range(emb, emb + 8))


def test_attention_kernels_and_position_land_on_their_nodes(random_params):
    t = _target("vit")
    params = jax.tree.map(lambda a: a[0], random_params(t, 2, n=1))
    topo = graph_topology.topology(t)
    g = graph.population_to_graphs(t, jax.tree.map(lambda a: a[None], params))
    sets = {s[0]: s for s in topo.node_sets}
    x, w, pos = (np.asarray(a) for a in (g.nodes["x"], g.edges["w"], g.nodes["pos"]))
    snd, rcv, typ = topo.senders, topo.receivers, topo.edge_type
    att = params["blocks"]["0"]["attn"]
    proj, out = sets["proj"][1], sets["blocks/0/attn/out"][1]
    q, v = sets["blocks/0/attn/query"][1], sets["blocks/0/attn/value"][1]
    heads, dim = 2, 4
    for h in range(heads):
        for d in range(dim):
            node = h * dim + d  # (heads, head_dim) flattened row-major
            assert x[q + node, 0] == att["query"]["bias"][h, d]
            for c in range(8):
                (e,) = np.flatnonzero((snd == proj + c) & (rcv == q + node))
                assert w[e, 0] == att["query"]["kernel"][c, h, d]
                (e,) = np.flatnonzero((snd == v + node) & (rcv == out + c))
                assert w[e, 0] == att["out"]["kernel"][h, d, c]
    # The q and k node sets send no edges (their product is the attention, no weight).
    for name in ("blocks/0/attn/query", "blocks/0/attn/key"):
        start, size = sets[name][1:3]
        assert not np.any((snd >= start) & (snd < start + size))
    # Into the out projection: weight edges from the value nodes only, plus the residual.
    into = (rcv >= out) & (rcv < out + 8)
    assert set(snd[into & (typ == graph_topology.EDGE_WEIGHT)]) == set(range(v, v + 8))
    assert set(snd[into & (typ == graph_topology.EDGE_RESIDUAL)]) == set(range(proj, proj + 8))
    # The position embedding is added to proj's channels: row c holds pos[0, :, c].
    np.testing.assert_array_equal(pos[proj : proj + 8], np.asarray(params["pos"])[0].T)
    assert not np.any(np.delete(pos, np.arange(proj, proj + 8), axis=0))


def _node_permutation(t: Target, topo, groups, perms) -> np.ndarray:
    """Node i of the permuted network's graph is node pi[i] of the original's."""
    axis_group = {e: gi for gi, g in enumerate(groups) for e in g.axes}
    pi = np.arange(topo.num_nodes)
    kernels = {s.layer_name: s for s in t.spec if s.role == "kernel"}
    for name, start, size, kind in topo.node_sets:
        if kind != graph_topology.NODE_HIDDEN:
            continue
        k = kernels[name]
        grids = np.meshgrid(*[np.arange(k.shape[a]) for a in k.out_axes], indexing="ij")
        moved = [
            np.asarray(perms[axis_group[(k.path, a)]])[ix]
            for a, ix in zip(k.out_axes, grids, strict=True)
        ]
        pi[start : start + size] = start + np.ravel_multi_index(moved, grids[0].shape).ravel()
    return pi


@pytest.mark.parametrize("kind", ["preset", "vit"])
def test_permuting_residual_heads_and_head_dims_permutes_nodes(kind, random_params):
    t = _target(kind)
    params = jax.tree.map(lambda a: a[0], random_params(t, 3, n=1))
    groups = structural_groups(t)
    perms = random_permutations(t, jax.random.key(1))
    moved = permute(t, params, perms)
    topo = graph_topology.topology(t)
    pi = _node_permutation(t, topo, groups, perms)
    assert not np.array_equal(pi, np.arange(topo.num_nodes))
    stack = lambda p: jax.tree.map(lambda a: a[None], p)  # noqa: E731
    g0 = graph.population_to_graphs(t, stack(params))
    g1 = graph.population_to_graphs(t, stack(moved))
    for field in ("x", "pos"):
        a0, a1 = np.asarray(g0.nodes[field]), np.asarray(g1.nodes[field])
        np.testing.assert_array_equal(a1, a0[pi])
    ends = list(zip(topo.senders, topo.receivers, topo.edge_type, strict=True))
    edge_of = {(int(s), int(r), int(k)): e for e, (s, r, k) in enumerate(ends)}
    assert len(edge_of) == topo.num_edges
    w0, w1 = np.asarray(g0.edges["w"]), np.asarray(g1.edges["w"])
    for e, (s, r, k) in enumerate(ends):
        np.testing.assert_array_equal(w1[e], w0[edge_of[(int(pi[s]), int(pi[r]), int(k))]])
