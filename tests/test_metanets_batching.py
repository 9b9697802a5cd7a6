"""metanets.batching: mixed padded batches, exact round trips, one padder for host and device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper.architectures import make_target
from metanets import batching, graph, graph_topology


def _same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and x.dtype == y.dtype and bool(jnp.array_equal(x, y))
        for x, y in zip(la, lb, strict=True)
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
    b = batching.batch_graphs(list(zip(targets, pops, strict=True)))
    n_graphs = sum(range(1, 5))
    for a in (b.nodes["x"].shape[0], b.edges["w"].shape[0], b.n_node.shape[0]):
        assert a & (a - 1) == 0  # powers of two
    assert b.edges["w"].shape[1] == 25  # the 5x5 window of the largest kernel
    assert int(b.globals["mask"].sum()) == n_graphs
    topos = [graph_topology.topology(t, (5, 5)) for t in targets]
    assert int(b.nodes["mask"].sum()) == sum((i + 1) * tp.num_nodes for i, tp in enumerate(topos))
    assert int(b.edges["mask"].sum()) == sum((i + 1) * tp.num_edges for i, tp in enumerate(topos))
    assert int(b.n_node.sum()) == b.nodes["x"].shape[0]
    # Padding edges stay inside the padding graph.
    real_nodes = int(b.nodes["mask"].sum())
    pad_e = ~np.asarray(b.edges["mask"])
    assert np.all(np.asarray(b.senders)[pad_e] >= real_nodes)
    # A GraphBank assembles the same batch from precomputed features.
    bank = batching.GraphBank(list(zip(targets, pops, strict=True)))
    same = bank.batch(np.arange(n_graphs))
    for a, c in zip(jax.tree.leaves(b), jax.tree.leaves(same), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    # In parts (one per device for shard_graphs): equal self-contained blocks, real graphs
    # in order; the bank and batch_graphs agree, and a part may hold padding only.
    pairs = list(zip(targets, pops, strict=True))
    for parts in (2, 8, 16):
        p = batching.batch_graphs(pairs, parts=parts, min_graphs=20)
        assert batching.graph_parts(p, parts) and not batching.graph_parts(b, parts)
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
    assert batching.graph_parts(full, mesh.devices.size)
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
        batching.batch_graphs(pairs, pad=False, parts=2)
    back = graph.graphs_to_populations(b, [(t, i + 1) for i, t in enumerate(targets)])
    for p, q in zip(pops, back, strict=True):
        assert _same(p, q)
    # A 3x3 kernel sits in the centre of the 5x5 window.
    g = graph.population_to_graphs(cnn_target, pops[1], window=(5, 5))
    w = np.asarray(g.edges["w"]).reshape(-1, 5, 5)
    assert np.all(w[:, 0, :] == 0) and np.all(w[:, :, 4] == 0)


def test_bucket_sizes():
    assert [batching.bucket_size(n) for n in (1, 2, 3, 5, 64, 65)] == [1, 2, 4, 8, 64, 128]
    assert batching.bucket_size(3, minimum=16) == 16


def test_one_padder_for_host_and_device(mlp_target, cnn_target, random_params):
    """`pad_graphs` pads a host (NumPy) batch and a device (JAX) batch alike: the same
    arrays, dtypes and structure. `GraphBank` assembles its batches on the host with it,
    so they equal `batch_graphs`' in any number of parts, per-graph arrays zero-padded."""
    pairs = [
        (mlp_target, random_params(mlp_target, 0, n=3)),
        (cnn_target, random_params(cnn_target, 1, n=2)),
    ]
    g = batching.batch_graphs(pairs, pad=False)
    sizes = (g.nodes["x"].shape[0] + 5, g.edges["w"].shape[0] + 7, g.n_node.shape[0] + 3)
    host = batching.pad_graphs(jax.tree.map(np.asarray, g), *sizes)
    assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(host))
    assert _same(jax.tree.map(jnp.asarray, host), batching.pad_graphs(g, *sizes))
    bank = batching.GraphBank(pairs)
    for parts in (1, 2, 8):
        b = bank.batch(np.arange(5), parts=parts, per_graph={"y": np.arange(5, dtype=np.int32)})
        ref = batching.batch_graphs(pairs, parts=parts)
        y = b.globals.pop("y")
        assert _same(b, ref)
        np.testing.assert_array_equal(np.asarray(y)[np.asarray(b.globals["mask"])], np.arange(5))
        assert not np.asarray(y)[~np.asarray(b.globals["mask"])].any()


def test_position_features_ride_in_batches(mlp_target, random_params):
    """A transformer's ``nodes["pos"]`` survives batching beside a target without one:
    `GraphBank` and `batch_graphs` agree, the MLP's nodes and the padding hold zeros, and
    the populations come back exactly; a subset of the bank keeps its members' rows."""
    vit = make_target(
        "transformer",
        input_shape=(8, 8, 1),
        patch_size=[4, 4],
        width=4,
        depth=1,
        heads=2,
        mlp_dim=8,
        out_features=10,
    )
    pops = [random_params(vit, 0, n=2), random_params(mlp_target, 1, n=2)]
    pairs = [(vit, pops[0]), (mlp_target, pops[1])]
    assert graph_topology.topology(vit).pos_width == 4
    ref = batching.batch_graphs(pairs)
    bank = batching.GraphBank(pairs)
    assert _same(bank.batch(np.arange(4)), ref)
    pos = np.asarray(ref.nodes["pos"])
    own = np.asarray(graph.population_to_graphs(*pairs[0]).nodes["pos"])
    assert pos.shape == (ref.nodes["x"].shape[0], 4) and own.any()
    np.testing.assert_array_equal(pos[: len(own)], own)
    assert not pos[len(own) :].any()  # the MLP's nodes and the padding
    back = graph.graphs_to_populations(ref, [(vit, 2), (mlp_target, None)])
    assert all(_same(p, q) for p, q in zip(pops, back, strict=True))
    n = graph_topology.topology(vit).num_nodes
    sub = np.asarray(bank.batch([1, 3]).nodes["pos"])  # the second member of each
    np.testing.assert_array_equal(sub[:n], own[n:])
    assert not sub[n:].any()
