"""metanets.graph: exact params <-> graph conversion, mixed padded batches, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyper.architectures import make_target
from hyper.symmetry import check_equivalent, permute, random_permutations
from hyper.target import Target
from metanets import graph


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
    topo = graph.topology(target)
    g = graph.population_to_graphs(target, pop)
    assert _same(graph.graphs_to_population(target, g), pop)
    # One edge per weight (dense) or kernel (conv), one node per unit, plus identity edges.
    kernels = sorted(target.select(roles=["kernel"]), key=lambda s: s.layer)
    n_in = kernels[0].shape[kernels[0].in_axis]
    assert topo.num_nodes == n_in + sum(k.shape[-1] for k in kernels)
    n_weight_edges = sum(k.shape[-1] * k.shape[-2] for k in kernels)
    assert int((topo.edge_type == graph.EDGE_WEIGHT).sum()) == n_weight_edges
    assert g.nodes["x"].shape == (2 * topo.num_nodes, len(graph.NODE_FEATURES))
    # Every parameter scalar has its own slot; nothing else is written.
    assert len(np.unique(topo.index)) == target.num_params + target.num_state


def test_rescnn_graph_structure(rescnn_target):
    topo = graph.topology(rescnn_target)
    names = [s[0] for s in topo.node_sets]
    assert names == ["input", "stem", "blocks/0/conv1", "blocks/0/conv2", "dense"]
    # The block's identity shortcut: stem channel i -> conv2 channel i, kernel centre 1.
    res = topo.edge_type == graph.EDGE_RESIDUAL
    assert res.sum() == 4
    stem, conv2 = topo.node_sets[1][1], topo.node_sets[3][1]
    np.testing.assert_array_equal(topo.senders[res], stem + np.arange(4))
    np.testing.assert_array_equal(topo.receivers[res], conv2 + np.arange(4))
    np.testing.assert_array_equal(topo.edge_base[res][:, 4], 1.0)
    # The dense layer reads the residual stream's last producer.
    dense_edges = topo.edge_layer == 4
    assert set(topo.senders[dense_edges & ~res]) == set(conv2 + np.arange(4))
    # BatchNorm statistics are node features of the channels they normalize.
    assert list(topo.node_type) == [0] + [1] * 12 + [2] * 10
    np.testing.assert_array_equal(topo.node_io[-10:], np.arange(10))


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


def test_mixed_batch_is_padded_masked_and_exact(
    mlp_target, cnn_target, rescnn_target, random_params
):
    wild = make_target(
        "cnn2d",
        input_shape=(8, 8),
        channels=[4, 4],
        kernel_size=[5, 3],
        strides=[1, 1],
        batchnorm=True,
        residual=True,
        out_features=10,
    )
    targets = [mlp_target, cnn_target, rescnn_target, wild]
    pops = [random_params(t, i, n=i + 1) for i, t in enumerate(targets)]
    b = graph.batch_graphs(list(zip(targets, pops, strict=True)))
    n_graphs = sum(range(1, 5))
    for a in (b.nodes["x"].shape[0], b.edges["w"].shape[0], b.n_node.shape[0]):
        assert a & (a - 1) == 0  # powers of two
    assert b.edges["w"].shape[1] == 25  # the 5x5 window of the largest kernel
    assert int(b.globals["mask"].sum()) == n_graphs
    topos = [graph.topology(t, (5, 5)) for t in targets]
    assert int(b.nodes["mask"].sum()) == sum((i + 1) * tp.num_nodes for i, tp in enumerate(topos))
    assert int(b.edges["mask"].sum()) == sum((i + 1) * tp.num_edges for i, tp in enumerate(topos))
    assert int(b.n_node.sum()) == b.nodes["x"].shape[0]
    # Padding edges stay inside the padding graph.
    real_nodes = int(b.nodes["mask"].sum())
    pad_e = ~np.asarray(b.edges["mask"])
    assert np.all(np.asarray(b.senders)[pad_e] >= real_nodes)
    # A GraphBank assembles the same batch from precomputed features.
    bank = graph.GraphBank(list(zip(targets, pops, strict=True)))
    same = bank.batch(np.arange(n_graphs))
    for a, c in zip(jax.tree.leaves(b), jax.tree.leaves(same), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    # In parts (one per device for shard_graphs): equal self-contained blocks, real graphs
    # in order; the bank and batch_graphs agree, and a part may hold padding only.
    pairs = list(zip(targets, pops, strict=True))
    for parts in (2, 8, 16):
        p = graph.batch_graphs(pairs, parts=parts, min_graphs=20)
        assert graph.graph_parts(p, parts) and not graph.graph_parts(b, parts)
        assert p.n_node.shape[0] >= 20 and int(p.globals["mask"].sum()) == n_graphs
        for a, c in zip(
            jax.tree.leaves(p),
            jax.tree.leaves(bank.batch(np.arange(n_graphs), parts=parts, min_graphs=20)),
            strict=True,
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
        real = np.flatnonzero(np.asarray(p.globals["mask"]))
        ends = np.cumsum(np.asarray(p.n_node))
        for k, j in enumerate(real):  # graph j holds the k-th member's nodes, in order
            np.testing.assert_array_equal(
                np.asarray(p.nodes["x"])[ends[j] - p.n_node[j] : ends[j]],
                np.asarray(b.nodes["x"])[int(b.n_node[:k].sum()) : int(b.n_node[: k + 1].sum())],
            )
    # per_graph arrays ride along as globals (zero on padding graphs); batch_size gives
    # smaller batches the same graph bucket; a mesh places the host arrays once, one part
    # per device.
    from hyper import sharding

    mesh = sharding.targets_mesh()
    lab = np.arange(n_graphs, dtype=np.float32) + 1.0
    full = bank.batch(np.arange(n_graphs), batch_size=n_graphs, mesh=mesh, per_graph={"y": lab})
    assert len(full.globals["y"].sharding.device_set) == mesh.devices.size
    assert graph.graph_parts(full, mesh.devices.size)
    real = np.asarray(full.globals["mask"])
    np.testing.assert_array_equal(np.asarray(full.globals["y"])[real], lab)
    assert not np.any(np.asarray(full.globals["y"])[~real])
    plain = bank.batch(np.arange(n_graphs), parts=8, min_graphs=n_graphs + 8)  # 4 per part
    placed = full._replace(globals={"mask": real})
    for a, c in zip(jax.tree.leaves(plain), jax.tree.leaves(placed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    small = bank.batch(np.arange(3), batch_size=n_graphs, mesh=mesh)
    assert small.n_node.shape == full.n_node.shape
    # full=True: nodes and edges get a full batch's buckets too, whatever the samples
    for pt in (1, 2):
        shapes = {
            (g.nodes["x"].shape, g.edges["w"].shape, g.n_node.shape)
            for s in ([0], [1, 2], [n_graphs - 1], [0, 1, 2, 3])
            for g in [bank.batch(s, batch_size=4, full=True, parts=pt)]
        }
        assert len(shapes) == 1, (pt, shapes)  # one shape per number of parts
    one = bank.batch([0], batch_size=4, full=True)
    most = max(t.num_nodes for t in bank.topologies), max(t.num_edges for t in bank.topologies)
    assert one.nodes["x"].shape[0] >= 4 * most[0] + 1 and one.edges["w"].shape[0] >= 4 * most[1]
    real = np.asarray(one.globals["mask"])
    assert real.sum() == 1
    with pytest.raises(ValueError, match="full=True needs batch_size"):
        bank.batch([0], full=True)
    with pytest.raises(ValueError, match="one part per device"):
        bank.batch([0, 1], parts=2, mesh=mesh)
    with pytest.raises(ValueError, match="exceed batch_size=2"):
        bank.batch([0, 1, 2], batch_size=2)
    with pytest.raises(ValueError, match="one row per sample"):
        bank.batch([0, 1], per_graph={"y": lab})
    with pytest.raises(ValueError, match="reserved"):
        bank.batch([0, 1], per_graph={"mask": lab[:2]})
    with pytest.raises(ValueError, match="parts must be a positive integer"):
        bank.batch([0, 1], parts=0)
    with pytest.raises(ValueError, match="pad=True"):
        graph.batch_graphs(pairs, pad=False, parts=2)
    back = graph.graphs_to_populations(b, [(t, i + 1) for i, t in enumerate(targets)])
    for p, q in zip(pops, back, strict=True):
        assert _same(p, q)
    # A 3x3 kernel sits in the centre of the 5x5 window.
    g = graph.population_to_graphs(cnn_target, pops[1], window=(5, 5))
    w = np.asarray(g.edges["w"]).reshape(-1, 5, 5)
    assert np.all(w[:, 0, :] == 0) and np.all(w[:, :, 4] == 0)


def test_bucket_sizes():
    assert [graph.bucket_size(n) for n in (1, 2, 3, 5, 64, 65)] == [1, 2, 4, 8, 64, 128]
    assert graph.bucket_size(3, minimum=16) == 16


def test_unknown_layer_kind_names_the_layer():
    def apply(p, x):
        return p["embed"]["embedding"][x].sum(-1) @ p["head"]["kernel"]

    t = Target.from_function(
        apply,
        {"embed": {"embedding": jnp.zeros((5, 3))}, "head": {"kernel": jnp.zeros((1, 2))}},
        sample_input=jnp.zeros((2, 1), jnp.int32),
    )
    with pytest.raises(ValueError, match="'embed'"):
        graph.topology(t)


def test_unsupported_connection_names_the_layer():
    """conv -> flatten -> dense: the dense layer reads flattened pixels x channels."""

    def apply(p, x):
        h = jax.lax.conv_general_dilated(
            x[..., None],
            p["conv"]["kernel"],
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return jax.nn.relu(h).reshape(x.shape[0], -1) @ p["dense"]["kernel"]

    t = Target.from_function(
        apply,
        {"conv": {"kernel": jnp.zeros((3, 3, 1, 2))}, "dense": {"kernel": jnp.zeros((32, 3))}},
        sample_input=jnp.zeros((2, 4, 4)),
    )
    with pytest.raises(ValueError, match="'conv'|'dense'"):
        graph.topology(t)


def test_window_too_small_is_rejected(cnn_target):
    with pytest.raises(ValueError, match="window"):
        graph.topology(cnn_target, (1, 1))


def test_width_one_normalized_layer_is_rejected():
    t = make_target("cnn2d", input_shape=(4, 4), channels=[1, 2], batchnorm=True, out_features=2)
    with pytest.raises(ValueError, match="'norms/0'.*width 1"):
        graph.topology(t)


def test_residual_from_the_network_input_is_rejected():
    """x + act(conv(x)) on the raw input: the input channels would be hidden units."""
    t = make_target(
        "cnn2d", input_shape=(4, 4), channels=[1, 2], strides=[1, 1], residual=True, out_features=2
    )
    with pytest.raises(ValueError, match="'convs/0'"):
        graph.topology(t)


def test_probe_features_follow_the_forward_pass(rescnn_target, random_params):
    """Probe features are the network's own computation: inputs are the probe's channel
    means, output nodes the logits before the bias; hidden permutations only move rows."""
    t = rescnn_target
    pop = random_params(t, 7, n=2)
    probes = graph.probe_inputs(t, 3, seed=1)
    assert probes.shape == (3, 8, 8)
    np.testing.assert_array_equal(probes, graph.probe_inputs(t, 3, seed=1))
    feats = np.asarray(graph.probe_features(t, pop, probes))
    topo = graph.topology(t)
    assert feats.shape == (2, topo.num_nodes, 3)
    np.testing.assert_allclose(feats[:, 0], np.broadcast_to(probes.mean((1, 2)), (2, 3)), 1e-6)
    _, first, size, _ = topo.node_sets[-1]
    for m in range(2):
        one = jax.tree.map(lambda a, m=m: a[m], pop)
        logits = np.asarray(t.apply(one, probes)) - np.asarray(one["dense"]["bias"])
        np.testing.assert_allclose(feats[m, first : first + size].T, logits, atol=1e-5)
    one = jax.tree.map(lambda a: a[0], pop)
    moved = permute(t, one, random_permutations(t, jax.random.key(3)))
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), one, moved)
    fa, fb = np.asarray(graph.probe_features(t, both, probes))
    assert not np.allclose(fa, fb)
    np.testing.assert_allclose(np.sort(fa, axis=0), np.sort(fb, axis=0), atol=1e-5)
    # batches carry them: batch_graphs and GraphBank agree, padding is zero
    g = graph.batch_graphs([(t, pop)], probes=probes)
    bank = graph.GraphBank([(t, pop)], probes=probes)
    gb = bank.batch([0, 1])
    np.testing.assert_allclose(np.asarray(g.nodes["probe"]), np.asarray(gb.nodes["probe"]), 1e-6)
    n = 2 * topo.num_nodes
    np.testing.assert_allclose(np.asarray(g.nodes["probe"])[:n], feats.reshape(n, 3), 1e-6)
    assert not np.asarray(g.nodes["probe"])[n:].any()
    assert "probe" not in graph.batch_graphs([(t, pop)]).nodes


def test_probe_features_name_a_layer_they_cannot_read():
    """A kernel applied without a dot/conv (here multiply-and-sum) has no contraction to
    record: the error names the layer instead of returning wrong features."""

    def apply(p, x):
        h = jnp.tanh(x @ p["l1"]["kernel"])
        return (h[..., :, None] * p["l2"]["kernel"][None]).sum(-2)

    t = Target.from_function(
        apply,
        {"l1": {"kernel": jnp.ones((3, 4))}, "l2": {"kernel": jnp.ones((4, 2))}},
        sample_input=jnp.zeros((2, 3)),
    )
    pop = jax.tree.map(lambda a: a[None], t.init(jax.random.key(0)))
    with pytest.raises(ValueError, match="'l2'"):
        graph.probe_features(t, pop, graph.probe_inputs(t, 2))
