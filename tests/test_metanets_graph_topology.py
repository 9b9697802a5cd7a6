"""metanets.graph_topology: the graph of residual CNNs; structures the encoding cannot express
are refused naming the layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper.architectures import make_target
from hyper.target import Target
from metanets import graph_topology


def test_rescnn_graph_structure(rescnn_target):
    topo = graph_topology.topology(rescnn_target)
    names = [s[0] for s in topo.node_sets]
    assert names == ["input", "stem", "blocks/0/conv1", "blocks/0/conv2", "dense"]
    # The block's identity shortcut: stem channel i -> conv2 channel i, kernel centre 1.
    res = topo.edge_type == graph_topology.EDGE_RESIDUAL
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


def test_unknown_layer_kind_names_the_layer():
    def apply(p, x):
        return p["embed"]["embedding"][x].sum(-1) @ p["head"]["kernel"]

    t = Target.from_function(
        apply,
        {"embed": {"embedding": jnp.zeros((5, 3))}, "head": {"kernel": jnp.zeros((1, 2))}},
        sample_input=jnp.zeros((2, 1), jnp.int32),
    )
    with pytest.raises(ValueError, match="'embed'"):
        graph_topology.topology(t)


def test_unsupported_connection_names_the_layer():
    """conv -> concatenation -> dense: the dense layer reads two copies of the channels."""

    def apply(p, x):
        h = jax.lax.conv_general_dilated(
            x[..., None],
            p["conv"]["kernel"],
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        h = jax.nn.relu(h).mean(axis=(1, 2))
        return jnp.concatenate([h, h], -1) @ p["dense"]["kernel"]

    t = Target.from_function(
        apply,
        {"conv": {"kernel": jnp.zeros((3, 3, 1, 2))}, "dense": {"kernel": jnp.zeros((4, 3))}},
        sample_input=jnp.zeros((2, 4, 4)),
    )
    with pytest.raises(ValueError, match="'conv'.*concatenate"):
        graph_topology.topology(t)


def test_window_too_small_is_rejected(cnn_target):
    with pytest.raises(ValueError, match="window"):
        graph_topology.topology(cnn_target, (1, 1))


def test_width_one_normalized_layer_is_rejected():
    t = make_target("cnn2d", input_shape=(4, 4), channels=[1, 2], batchnorm=True, out_features=2)
    with pytest.raises(ValueError, match="'norms/0'.*width 1"):
        graph_topology.topology(t)


def test_residual_from_the_network_input_is_rejected():
    """x + act(conv(x)) on the raw input: the input channels would be hidden units."""
    t = make_target(
        "cnn2d", input_shape=(4, 4), channels=[1, 2], strides=[1, 1], residual=True, out_features=2
    )
    with pytest.raises(ValueError, match="'convs/0'"):
        graph_topology.topology(t)
