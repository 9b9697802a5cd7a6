"""metanets.graph: exact params <-> graph conversion; features land on their nodes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hyper.architectures import make_target
from hyper.symmetry import check_equivalent, permute, random_permutations
from metanets import graph, graph_topology


def _same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and x.dtype == y.dtype and bool(jnp.array_equal(x, y))
        for x, y in zip(la, lb, strict=True)
    )


@st.composite
def architectures(draw):
    kind = draw(st.sampled_from(["mlp", "cnn2d", "cnn1d", "rescnn"]))
    if kind == "mlp":
        widths = draw(st.lists(st.integers(2, 5), min_size=0, max_size=3))
        return dict(arch="mlp", input_shape=(3, 2), widths=widths, out_features=3)
    if kind == "rescnn":
        return dict(
            arch="rescnn",
            input_shape=(4, 4),
            channels=draw(st.integers(2, 3)),
            num_blocks=draw(st.integers(0, 2)),
            out_features=2,
        )
    depth = draw(st.integers(1, 4))
    cfg = dict(
        arch=kind,
        input_shape=(5, 4) if kind == "cnn2d" else (6,),
        channels=draw(st.lists(st.sampled_from([2, 3]), min_size=depth, max_size=depth)),
        kernel_size=draw(st.lists(st.sampled_from([1, 3, 5]), min_size=depth, max_size=depth)),
        strides=draw(st.lists(st.sampled_from([1, 2]), min_size=depth, max_size=depth)),
        out_features=3,
    )
    if kind == "cnn2d":
        cfg["batchnorm"] = draw(st.booleans())
        cfg["residual"] = draw(st.booleans())
    return cfg


@settings(max_examples=8, deadline=None)
@given(cfg=architectures(), seed=st.integers(0, 2**16))
def test_params_graph_params_is_exact(cfg, seed, random_params):
    cfg = dict(cfg)
    target = make_target(cfg.pop("arch"), **cfg)
    pop = random_params(target, seed, n=2)
    topo = graph_topology.topology(target)
    g = graph.population_to_graphs(target, pop)
    assert _same(graph.graphs_to_population(target, g), pop)
    # One edge per weight (dense) or kernel (conv), one node per unit, plus identity edges.
    kernels = sorted(target.select(roles=["kernel"]), key=lambda s: s.layer)
    n_in = kernels[0].shape[kernels[0].in_axis]
    assert topo.num_nodes == n_in + sum(k.shape[-1] for k in kernels)
    n_weight_edges = sum(k.shape[-1] * k.shape[-2] for k in kernels)
    assert int((topo.edge_type == graph_topology.EDGE_WEIGHT).sum()) == n_weight_edges
    assert g.nodes["x"].shape == (2 * topo.num_nodes, len(graph_topology.NODE_FEATURES))
    # Every parameter scalar has its own slot; nothing else is written.
    assert len(np.unique(topo.index)) == target.num_params + target.num_state


def test_bn_values_land_on_their_nodes(rescnn_target, random_params):
    pop = random_params(rescnn_target, 3, n=1)
    g = graph.population_to_graphs(rescnn_target, pop)
    x = np.asarray(g.nodes["x"])
    stem = slice(1, 5)
    np.testing.assert_array_equal(x[stem, 1], np.asarray(pop["stem_bn"]["scale"][0]))
    np.testing.assert_array_equal(x[stem, 4], np.asarray(pop["stem_bn"]["var"][0]))
    np.testing.assert_array_equal(x[-10:, 0], np.asarray(pop["dense"]["bias"][0]))
    # The stem has no bias: the identity default 0; inputs hold identity normalisation.
    np.testing.assert_array_equal(x[stem, 0], 0.0)
    np.testing.assert_array_equal(x[0], [0, 1, 0, 0, 1])


def test_permuting_hidden_units_relabels_graph(rescnn_target, random_params):
    """A hidden permutation keeps the function and only relabels nodes: the multiset of
    (sender, receiver)-independent features per layer is unchanged."""
    t = rescnn_target
    pop = random_params(t, 4, n=1)
    one = jax.tree.map(lambda a: a[0], pop)
    moved = permute(t, one, random_permutations(t, jax.random.key(1)))
    x = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    assert not _same(moved, one)
    assert check_equivalent(t, one, moved, x)
    ga = graph.population_to_graphs(t, jax.tree.map(lambda a: a[None], one))
    gb = graph.population_to_graphs(t, jax.tree.map(lambda a: a[None], moved))
    for k in ("x",):
        np.testing.assert_array_equal(
            np.sort(np.asarray(ga.nodes[k]), axis=0), np.sort(np.asarray(gb.nodes[k]), axis=0)
        )
    np.testing.assert_array_equal(
        np.sort(np.asarray(ga.edges["w"]), axis=0), np.sort(np.asarray(gb.edges["w"]), axis=0)
    )
