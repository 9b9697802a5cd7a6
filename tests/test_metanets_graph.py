"""metanets.graph: exact params <-> graph conversion; features land on their nodes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hyper.architectures import make_target
from hyper.symmetry import check_equivalent, permute, random_permutations
from hyper.tree import flatten_dict
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


def _node_offsets(target) -> dict[str, int]:
    """First node of each kernel's outputs, written from the kernels alone: the inputs come
    first, then each kernel's output units in layer order (no residual here)."""
    kernels = sorted(target.select(roles=["kernel"]), key=lambda s: s.layer)
    off, out = kernels[0].shape[-2], {}
    for k in kernels:
        out[k.layer_name] = off
        off += k.shape[-1]
    return out


def _edge_of(topo, sender: int, receiver: int) -> int:
    hits = np.flatnonzero((topo.senders == sender) & (topo.receivers == receiver))
    assert len(hits) == 1, (sender, receiver, hits)
    return int(hits[0])


def test_edge_i_to_j_carries_kernel_i_j(random_params):
    """The wiring, checked against the kernels (the round trip holds for any one-to-one
    index, a transposed one included): in an MLP the edge from input unit i of a layer to
    its output unit j carries `kernel[i, j]`."""
    t = make_target("mlp", input_shape=(3,), widths=(4, 5), out_features=2)
    pop = random_params(t, 0, n=1)
    topo = graph_topology.topology(t)
    w = np.asarray(graph.population_to_graphs(t, pop).edges["w"])
    assert w.shape[1] == 1  # a dense weight is a 1x1 window
    offsets = _node_offsets(t)
    kernels = sorted(t.select(roles=["kernel"]), key=lambda s: s.layer)
    src = 0  # the first layer reads the input nodes
    for k in kernels:
        kernel = np.asarray(flatten_dict(pop)[k.path][0])
        dst = offsets[k.layer_name]
        for i in range(kernel.shape[0]):
            for j in range(kernel.shape[1]):
                assert w[_edge_of(topo, src + i, dst + j), 0] == kernel[i, j], (k.path, i, j)
        src = dst


def test_conv_edge_c_to_d_carries_the_kernel_window(random_params):
    """A conv edge from input channel c to output channel d carries `kernel[:, :, c, d]`,
    centred in the graph's window (a 3x3 kernel inside the 5x5 window of a 5x5 layer)."""
    t = make_target(
        "cnn2d", input_shape=(6, 6), channels=(2, 3), kernel_size=(5, 3), out_features=2
    )
    pop = random_params(t, 1, n=1)
    topo = graph_topology.topology(t)
    assert topo.window == (5, 5)
    w = np.asarray(graph.population_to_graphs(t, pop).edges["w"]).reshape(-1, 5, 5)
    offsets = _node_offsets(t)
    convs = sorted(t.select(roles=["kernel"]), key=lambda s: s.layer)
    src = 0
    for k in convs[:2]:
        kernel = np.asarray(flatten_dict(pop)[k.path][0])
        kh, kw, n_in, n_out = kernel.shape
        top, left = (5 - kh) // 2, (5 - kw) // 2
        dst = offsets[k.layer_name]
        for c in range(n_in):
            for d in range(n_out):
                win = w[_edge_of(topo, src + c, dst + d)]
                np.testing.assert_array_equal(
                    win[top : top + kh, left : left + kw], kernel[..., c, d]
                )
                outside = np.ones((5, 5), bool)
                outside[top : top + kh, left : left + kw] = False
                assert not win[outside].any()  # zero padding around a smaller kernel
        src = dst
