"""metanets graphs of CNNs users write: pooling, flatten, reshape at the input, depthwise,
GroupNorm.

Exact round trips population -> graphs -> population, the flatten's positions in the edge
features, and equivariance: permuting hidden units permutes the graph's nodes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hyper.symmetry import permute, random_permutations, structural_groups
from hyper.target import Target
from metanets import graph, graph_topology


class _CNN(nnx.Module):
    def __init__(self, kind: str, rngs: nnx.Rngs):
        self.kind = kind
        self.c1 = nnx.Conv(1, 3, (3, 3), rngs=rngs)
        self.dw = nnx.Conv(3, 3, (3, 3), feature_group_count=3, rngs=rngs) if kind == "dw" else None
        self.c2 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.gn = nnx.GroupNorm(4, num_groups=2, rngs=rngs) if kind == "gn" else None
        self.d = nnx.Linear(16, 5, rngs=rngs) if kind == "lenet" else None
        self.o = nnx.Linear(5 if kind == "lenet" else 4, 2, rngs=rngs)

    def __call__(self, x):
        if self.kind == "reshape":
            x = x.reshape(-1, 8, 8, 1)
        h = nnx.relu(self.c1(x))
        if self.dw is not None:
            h = nnx.relu(self.dw(h))
        if self.kind == "lenet":
            h = nnx.max_pool(h, (2, 2), (2, 2))
        if self.kind == "avgpool":
            h = nnx.avg_pool(h, (2, 2), (2, 2))
        h = self.c2(h)
        h = nnx.relu(h if self.gn is None else self.gn(h))
        if self.kind == "lenet":
            h = nnx.max_pool(h, (2, 2), (2, 2))
            return self.o(nnx.relu(self.d(h.reshape(h.shape[0], -1))))
        return self.o(h.mean(axis=(1, 2)))


_TARGETS: dict[str, Target] = {}


def _target(kind: str) -> Target:
    if kind not in _TARGETS:
        x = jnp.zeros((2, 64) if kind == "reshape" else (2, 8, 8, 1))
        _TARGETS[kind] = Target.from_nnx(_CNN(kind, nnx.Rngs(0)), sample_input=x)
    return _TARGETS[kind]


def _same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and bool(jnp.array_equal(x, y)) for x, y in zip(la, lb, strict=True)
    )


@pytest.mark.parametrize("kind", ["lenet", "avgpool", "reshape", "dw", "gn"])
def test_round_trip_is_exact(kind, random_params):
    t = _target(kind)
    pop = random_params(t, 1, n=2)
    g = graph.population_to_graphs(t, pop)
    assert _same(graph.graphs_to_population(t, g), pop)
    topo = graph_topology.topology(t)
    n_in = 1
    widths = {"c1": 3, "dw": 3, "c2": 4, "d": 5, "o": 2}
    used = [n for n in widths if any(s.layer_name == n for s in t.spec)]
    assert topo.num_nodes == n_in + sum(widths[n] for n in used)
    assert [s[0] for s in topo.node_sets] == ["input", *used]
    assert len(np.unique(topo.index)) == t.num_params


def test_flatten_rows_land_at_their_positions(random_params):
    t = _target("lenet")
    pop = random_params(t, 2, n=1)
    topo = graph_topology.topology(t)
    assert topo.window == (3, 3)  # holds the 3x3 convs and the 2x2 map of the flatten
    g = graph.population_to_graphs(t, pop)
    w = np.asarray(g.edges["w"]).reshape(topo.num_edges, 3, 3)
    kernel = np.asarray(pop["d"]["kernel"][0])  # [(h, w, c) rows, 5]
    c2 = dict((s[0], s) for s in topo.node_sets)["c2"]
    d = dict((s[0], s) for s in topo.node_sets)["d"]
    snd, rcv = topo.senders, topo.receivers
    for c in range(4):
        for o in range(5):
            (e,) = np.flatnonzero((snd == c2[1] + c) & (rcv == d[1] + o))
            # A 2x2 map centred in a 3x3 window starts at (0, 0).
            want = kernel[[(hh * 2 + ww) * 4 + c for hh in range(2) for ww in range(2)], o]
            np.testing.assert_array_equal(w[e, :2, :2].reshape(-1), want)
    # Grouped conv: every depthwise channel reads its own input channel only.
    dw = graph_topology.topology(_target("dw"))
    sets = {s[0]: s for s in dw.node_sets}
    mask = (dw.receivers >= sets["dw"][1]) & (dw.receivers < sets["dw"][1] + 3)
    mask &= dw.edge_type == graph_topology.EDGE_WEIGHT
    np.testing.assert_array_equal(
        dw.senders[mask] - sets["c1"][1], dw.receivers[mask] - sets["dw"][1]
    )


def test_permuting_units_permutes_nodes(random_params):
    t = _target("lenet")
    params = jax.tree.map(lambda a: a[0], random_params(t, 3, n=1))
    groups = structural_groups(t)
    perms = random_permutations(t, jax.random.key(0))
    moved = permute(t, params, perms)
    topo = graph_topology.topology(t)
    pi = np.arange(topo.num_nodes)
    by_name = {s[0]: s for s in topo.node_sets}
    for g, p in zip(groups, perms, strict=True):
        (producer,) = [s for s in t.spec if s.path == g.producers[-1]]
        start = by_name[producer.layer_name][1]
        pi[start : start + g.size] = start + np.asarray(p)
    assert not np.array_equal(pi, np.arange(topo.num_nodes))
    stack = lambda p: jax.tree.map(lambda a: a[None], p)  # noqa: E731
    g0 = graph.population_to_graphs(t, stack(params))
    g1 = graph.population_to_graphs(t, stack(moved))
    np.testing.assert_array_equal(np.asarray(g1.nodes["x"]), np.asarray(g0.nodes["x"])[pi])
    ends = list(zip(topo.senders, topo.receivers, topo.edge_type, strict=True))
    edge_of = {(int(s), int(r), int(k)): e for e, (s, r, k) in enumerate(ends)}
    w0, w1 = np.asarray(g0.edges["w"]), np.asarray(g1.edges["w"])
    for e, (s, r, k) in enumerate(ends):
        np.testing.assert_array_equal(w1[e], w0[edge_of[(int(pi[s]), int(pi[r]), int(k))]])


def test_groupnorm_lands_on_the_channels_it_normalizes(random_params):
    """GroupNorm's trace views c2's 4 channels as (2 groups, 2): only the groups permute,
    yet its scale and bias are the node features of c2's channels, in order."""
    t = _target("gn")
    params = jax.tree.map(lambda a: a[0], random_params(t, 4, n=1))
    topo = graph_topology.topology(t)
    _, c2, size, _ = {s[0]: s for s in topo.node_sets}["c2"]
    stack = lambda p: jax.tree.map(lambda a: a[None], p)  # noqa: E731
    x = np.asarray(graph.population_to_graphs(t, stack(params)).nodes["x"])
    slot = {f: i for i, f in enumerate(graph_topology.NODE_FEATURES)}
    np.testing.assert_array_equal(x[c2 : c2 + size, slot["scale"]], params["gn"]["scale"])
    np.testing.assert_array_equal(x[c2 : c2 + size, slot["shift"]], params["gn"]["bias"])
    np.testing.assert_array_equal(x[c2 : c2 + size, slot["bias"]], params["c2"]["bias"])
    gn_nodes = np.flatnonzero(topo.node_norm)
    np.testing.assert_array_equal(gn_nodes, c2 + np.arange(size))
    assert set(topo.node_norm[gn_nodes]) == {graph_topology.NORM_IDS.index("groupnorm")}
    # Swapping the two groups swaps c2's node pairs and their features.
    groups = structural_groups(t)
    (gi,) = [i for i, g in enumerate(groups) if g.producers == ("c2/kernel",)]
    perms = [np.arange(g.size) for g in groups]
    perms[gi] = np.array([1, 0])
    moved = permute(t, params, perms)
    y = np.asarray(graph.population_to_graphs(t, stack(moved)).nodes["x"])
    np.testing.assert_array_equal(y[c2 : c2 + size], x[c2 + np.array([2, 3, 0, 1])])
