"""metanets.layers / models: masked aggregators, invariance and equivariance under hidden
permutations, padding, and no retrace within a shape bucket."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hyper.architectures import make_target
from hyper.symmetry import check_equivalent, permute, random_permutations
from metanets import batching, graph, layers
from metanets.models import GraphMetanet, input_stats
from metanets.probes import probe_inputs


@pytest.fixture(scope="session")
def wild_target():
    return make_target(
        "cnn2d",
        input_shape=(8, 8),
        channels=[4, 4, 6],
        kernel_size=[3, 5, 3],
        strides=[1, 1, 2],
        batchnorm=True,
        residual=True,
        activation="tanh",
        out_features=10,
    )


# One padded shape for the shared metanet's batches: its programs compile once for the file.
BUCKET = dict(min_nodes=512, min_edges=4096, min_graphs=16)


@pytest.fixture(scope="session")
def metanet():
    model = GraphMetanet(25, hidden=16, num_layers=2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, graphs):
        return nnx.merge(graphdef, state)(graphs)

    @jax.jit
    def edit(state, graphs):
        return nnx.merge(graphdef, state).edit(graphs, 0.5)

    return state, forward, edit


def test_layer_norm_matches_flax_and_ignores_the_row_count():
    """Our LayerNorm normalises like nnx.LayerNorm (same parameters) and gives every row
    the same bits however many rows are computed together (a row reduction would not)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4096, 48)) * 3 + 1, jnp.float32)
    ours, ref = layers.LayerNorm(48, rngs=nnx.Rngs(0)), nnx.LayerNorm(48, rngs=nnx.Rngs(0))
    assert jax.tree.map(jnp.shape, nnx.state(ours)) == jax.tree.map(jnp.shape, nnx.state(ref))
    ours.scale[...] = ref.scale[...] = jnp.linspace(0.5, 2, 48)
    ours.bias[...] = ref.bias[...] = jnp.linspace(-1, 1, 48)
    y = np.asarray(jax.jit(lambda v: ours(v))(x))
    np.testing.assert_allclose(y, np.asarray(ref(x)), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda v: ours(v))(x[:512])), y[:512])


def test_segment_aggregators_match_numpy_and_handle_empty_segments():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((7, 3)).astype(np.float32)
    ids = np.array([0, 0, 2, 2, 2, 3, 3])
    mask = np.array([1, 1, 1, 1, 0, 1, 1], bool)  # segment 1 is empty, row 4 padded
    agg = np.asarray(
        layers.pna_aggregate(jnp.asarray(data), jnp.asarray(ids), 4, jnp.asarray(mask))
    )
    for s in range(4):
        rows = data[(ids == s) & mask]
        want = (
            np.zeros(12)
            if len(rows) == 0
            else np.concatenate(
                [
                    rows.mean(0),
                    rows.max(0),
                    rows.min(0),
                    np.sqrt(rows.var(0) + 1e-5) - np.sqrt(1e-5),
                ]
            )
        )
        np.testing.assert_allclose(agg[s], want, rtol=1e-5, atol=1e-5)
    grad = jax.grad(
        lambda d: layers.pna_aggregate(d, jnp.asarray(ids), 4, jnp.asarray(mask)).sum()
    )(jnp.zeros_like(data))  # zero variance everywhere: gradients stay finite
    assert np.all(np.isfinite(np.asarray(grad)))


def _pair(target, params, key):
    one = jax.tree.map(lambda a: a[0], params)
    moved = permute(target, one, random_permutations(target, key))
    return one, moved


@pytest.mark.parametrize("name", ["wild", "rescnn"])
def test_metanet_is_invariant_and_edit_is_equivariant(
    name, wild_target, rescnn_target, metanet, random_params
):
    target = {"wild": wild_target, "rescnn": rescnn_target}[name]
    state, forward, edit = metanet
    one, moved = _pair(target, random_params(target, 1, n=1), jax.random.key(2))
    x = np.random.default_rng(1).standard_normal((4, 8, 8)).astype(np.float32)
    # The permutation is a real symmetry (and not the identity).
    assert check_equivalent(target, one, moved, x)
    assert not all(
        bool(jnp.array_equal(a, b))
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(moved), strict=True)
    )
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), one, moved)
    g = batching.batch_graphs([(target, both)], window=(5, 5), **BUCKET)
    y = np.asarray(forward(state, g))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[0], y[1], atol=1e-5, rtol=0)
    # Equivariance: edit(permuted) == permute(edit(original)), parameter by parameter.
    edited = graph.graphs_to_populations(edit(state, g), [(target, 2)], window=(5, 5))[0]
    e_one = jax.tree.map(lambda a: a[0], edited)
    e_moved = jax.tree.map(lambda a: a[1], edited)
    perms = random_permutations(target, jax.random.key(2))
    expected = permute(target, e_one, perms)
    for a, b in zip(jax.tree.leaves(e_moved), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
    # The edit changes every parameter kind (kernels, biases, BN) but stays residual.
    for a, b in zip(jax.tree.leaves(e_one), jax.tree.leaves(one), strict=True):
        assert 0 < float(jnp.max(jnp.abs(a - b))) < 10.0


def test_padded_and_unpadded_batches_agree(mlp_target, wild_target, metanet, random_params):
    state, forward, _ = metanet
    pairs = [
        (mlp_target, random_params(mlp_target, 3, n=2)),
        (wild_target, random_params(wild_target, 4, n=3)),
    ]
    # The MLP has a 1x1 window: batched with the 5x5 conv, its weights sit at the centre.
    unpadded = batching.batch_graphs(pairs, window=(5, 5), pad=False)
    padded = batching.batch_graphs(pairs, window=(5, 5), **BUCKET)
    assert padded.nodes["x"].shape[0] > unpadded.nodes["x"].shape[0]
    ya = np.asarray(forward(state, unpadded))
    yb = np.asarray(forward(state, padded))
    np.testing.assert_allclose(ya, yb[:5], atol=1e-5, rtol=1e-5)
    assert np.all(np.isfinite(yb))


def test_pna_readout_is_invariant_and_padding_safe(wild_target, mlp_target, random_params):
    model = GraphMetanet(25, hidden=8, num_layers=1, pool="pna", rngs=nnx.Rngs(3))
    assert model.head1.in_features == 2 * 4 * 8 * model.readout_layers
    forward = jax.jit(lambda g: model(g))
    one, moved = _pair(wild_target, random_params(wild_target, 5, n=1), jax.random.key(4))
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), one, moved)
    pairs = [(wild_target, both), (mlp_target, random_params(mlp_target, 6, n=1))]
    y = np.asarray(forward(batching.batch_graphs(pairs, window=(5, 5), pad=False)))
    np.testing.assert_allclose(y[0], y[1], atol=1e-5, rtol=0)
    assert not np.allclose(y[0], y[2])
    padded = batching.batch_graphs(
        pairs, window=(5, 5), min_nodes=512, min_edges=4096, min_graphs=8
    )
    yp = np.asarray(forward(padded))
    np.testing.assert_allclose(yp[:3], y, atol=1e-5, rtol=1e-5)
    assert np.all(np.isfinite(yp))
    with pytest.raises(ValueError, match="pool must be"):
        GraphMetanet(25, pool="sum", rngs=nnx.Rngs(0))


def test_probe_features_keep_the_metanet_invariant(wild_target, random_params):
    model = GraphMetanet(25, hidden=8, num_layers=1, probe_features=3, rngs=nnx.Rngs(5))
    forward = jax.jit(lambda g: model(g))
    one, moved = _pair(wild_target, random_params(wild_target, 8, n=1), jax.random.key(6))
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), one, moved)
    probes = probe_inputs(wild_target, 3)
    g = batching.batch_graphs([(wild_target, both)], window=(5, 5), probes=probes)
    y = np.asarray(forward(g))
    np.testing.assert_allclose(y[0], y[1], atol=1e-5, rtol=0)
    # the probes reach the prediction
    other = g._replace(nodes={**g.nodes, "probe": g.nodes["probe"] * 2.0})
    assert not np.allclose(np.asarray(forward(other))[0], y[0])
    with pytest.raises(ValueError, match="3 probe features per node, the graphs carry none"):
        model(batching.batch_graphs([(wild_target, both)], window=(5, 5)))


def test_no_retrace_within_one_bucket(cnn_target, random_params):
    model = GraphMetanet(9, hidden=8, num_layers=1, readout="global", rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(model)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(state, graphs):
        return nnx.merge(graphdef, state)(graphs)

    # 5 and 6 graphs of this target pad to the same bucket (128 nodes, 512 edges, 8 graphs).
    bank = batching.GraphBank([(cnn_target, random_params(cnn_target, 5, n=6))])
    shapes = set()
    for samples in ([0, 1, 2, 3, 4], [5, 4, 3, 2, 1, 0], [1, 2, 3, 4, 5]):
        g = bank.batch(samples, min_graphs=8)
        shapes.add((g.nodes["x"].shape, g.edges["w"].shape, g.n_node.shape))
        forward(state, g).block_until_ready()
    assert len(shapes) == 1
    chex.clear_trace_counter()


def test_window_mismatch_is_an_error(cnn_target, random_params):
    model = GraphMetanet(25, hidden=8, num_layers=1, rngs=nnx.Rngs(0))
    g = batching.batch_graphs([(cnn_target, random_params(cnn_target, 0, n=1))])  # 3x3 window
    with pytest.raises(ValueError, match="edge features"):
        model(g)


@pytest.mark.xla_fusion_emitters
def test_sharded_graph_batch_matches_one_device(mlp_target, wild_target, metanet, random_params):
    """A padded mixed batch built in 8 parts and split over the 8 test devices gives the
    single-device predictions and edits bit for bit, gradients up to the order of sums."""
    from hyper import sharding

    state, _, _ = metanet
    pairs = [
        (mlp_target, random_params(mlp_target, 5, n=3)),
        (wild_target, random_params(wild_target, 6, n=2)),
    ]
    mesh = sharding.targets_mesh()
    with pytest.raises(ValueError, match="parts=8"):  # edges would cross devices
        batching.shard_graphs(batching.batch_graphs(pairs, window=(5, 5), min_graphs=8), mesh)
    g = batching.batch_graphs(pairs, window=(5, 5), parts=8)
    with pytest.raises(ValueError, match="does not split over 8"):
        batching.shard_graphs((g, np.zeros(5)), mesh)
    gs = batching.shard_graphs(g, mesh)
    assert len(gs.nodes["x"].sharding.device_set) == mesh.devices.size
    assert gs.nodes["x"].sharding.shard_shape(gs.nodes["x"].shape)[0] == g.nodes["x"].shape[0] // 8
    rep = sharding.put(state, sharding.replicated(mesh))
    graphdef = nnx.graphdef(GraphMetanet(25, hidden=16, num_layers=2, rngs=nnx.Rngs(0)))

    @jax.jit
    def run(s, g):  # prediction, edit and gradient in one program per placement
        def loss(s):
            y = nnx.merge(graphdef, s)(g)
            return jnp.sum(y[:5] ** 2), y

        (_, y), grad = jax.value_and_grad(loss, has_aux=True)(s)
        return y, nnx.merge(graphdef, s).edit(g, 0.5).edges["w"], grad

    y_rep, w_rep, g_rep = run(rep, gs)
    y_one, w_one, g_one = run(state, g)
    np.testing.assert_array_equal(y_rep, y_one)
    np.testing.assert_array_equal(w_rep, w_one)
    for a, b in zip(jax.tree.leaves(g_rep), jax.tree.leaves(g_one), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_input_norm_standardises_per_layer_and_keeps_invariance(wild_target, random_params):
    one, moved = _pair(wild_target, random_params(wild_target, 9, n=1), jax.random.key(7))
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), one, moved)
    pairs = [(wild_target, both), (wild_target, random_params(wild_target, 10, n=2))]
    g = batching.batch_graphs(pairs, window=(5, 5), pad=False)
    model = GraphMetanet(25, hidden=8, num_layers=1, input_norm=True, rngs=nnx.Rngs(2))
    stats = input_stats([g], model.max_layers, 25)
    # one layer's statistics, by hand: asinh of the features of its real nodes
    layer = np.asarray(g.nodes["layer"])
    x = np.arcsinh(np.asarray(g.nodes["x"], np.float64))[layer == 1]
    np.testing.assert_allclose(stats["node_mean"][1], x.mean(0), rtol=1e-5, atol=1e-6)
    spread = x.std(0)
    np.testing.assert_allclose(stats["node_std"][1], np.where(spread > 1e-6, spread, 1.0), 1e-4)
    # an empty slot stays the identity; the identity (residual) edges are centred only
    assert np.all(stats["node_mean"][-1] == 0) and np.all(stats["node_std"][-1] == 1)
    res = np.asarray(g.edges["type"]) == 1
    assert res.any() and np.all(stats["edge_std"][np.asarray(g.edges["layer"])[res], 1] == 1)
    before = np.asarray(model(g))
    model.set_input_stats(stats)
    y = np.asarray(model(g))
    assert np.all(np.isfinite(y)) and not np.allclose(y, before)  # the statistics are read
    np.testing.assert_allclose(y[0], y[1], atol=1e-5, rtol=0)  # a permuted copy: same output
    with pytest.raises(ValueError, match="node_std has shape"):
        model.set_input_stats({**stats, "node_std": stats["node_std"][:3]})
    with pytest.raises(ValueError, match="without input_norm"):
        GraphMetanet(25, hidden=8, num_layers=1, rngs=nnx.Rngs(2)).set_input_stats(stats)
