"""metanets.probes: probe features follow the forward pass; unreadable layers are named."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper.symmetry import permute, random_permutations
from hyper.target import Target
from metanets import batching, graph_topology
from metanets.probes import probe_features, probe_inputs


def test_probe_features_follow_the_forward_pass(rescnn_target, random_params):
    """Probe features are the network's own computation: inputs are the probe's channel
    means, output nodes the logits before the bias; hidden permutations only move rows."""
    t = rescnn_target
    pop = random_params(t, 7, n=2)
    probes = probe_inputs(t, 3, seed=1)
    assert probes.shape == (3, 8, 8)
    np.testing.assert_array_equal(probes, probe_inputs(t, 3, seed=1))
    feats = np.asarray(probe_features(t, pop, probes))
    topo = graph_topology.topology(t)
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
    fa, fb = np.asarray(probe_features(t, both, probes))
    assert not np.allclose(fa, fb)
    np.testing.assert_allclose(np.sort(fa, axis=0), np.sort(fb, axis=0), atol=1e-5)
    # batches carry them: batch_graphs and GraphBank agree, padding is zero
    g = batching.batch_graphs([(t, pop)], probes=probes)
    bank = batching.GraphBank([(t, pop)], probes=probes)
    gb = bank.batch([0, 1])
    np.testing.assert_allclose(np.asarray(g.nodes["probe"]), np.asarray(gb.nodes["probe"]), 1e-6)
    n = 2 * topo.num_nodes
    np.testing.assert_allclose(np.asarray(g.nodes["probe"])[:n], feats.reshape(n, 3), 1e-6)
    assert not np.asarray(g.nodes["probe"])[n:].any()
    assert "probe" not in batching.batch_graphs([(t, pop)]).nodes


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
        probe_features(t, pop, probe_inputs(t, 2))
