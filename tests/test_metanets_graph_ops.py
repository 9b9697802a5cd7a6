"""metanets graphs of user networks: traced activation and norm ids, token embeddings,
refusal messages (a blocking primitive, a shared weight)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hyper.target import Target
from metanets import graph
from metanets import graph_topology as gt


class _MLP(nnx.Module):
    def __init__(self, act, norm, rngs):
        self.act = act
        self.l1 = nnx.Linear(4, 3, rngs=rngs)
        self.n = norm(3, rngs=rngs) if norm is not None else None
        self.l2 = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        h = self.l1(x)
        if self.n is not None:
            h = self.n(h)
        return self.l2(self.act(h))


def _mlp(act, norm=None):
    return Target.from_nnx(_MLP(act, norm, nnx.Rngs(0)), sample_input=jnp.zeros((2, 4)))


def _hidden(topo, field):
    return set(np.asarray(field)[topo.node_type == gt.NODE_HIDDEN].tolist())


def test_user_networks_get_their_traced_activation():
    for act, name in ((nnx.relu, "relu"), (jnp.tanh, "tanh"), (nnx.gelu, "gelu")):
        topo = gt.topology(_mlp(act))
        assert _hidden(topo, topo.node_act) == {gt.ACTIVATION_IDS.index(name)}
        assert set(topo.node_act[topo.node_type != gt.NODE_HIDDEN].tolist()) == {0}


def test_layernorm_and_batchnorm_nodes_differ():
    ln, bn = gt.topology(_mlp(nnx.relu, nnx.LayerNorm)), gt.topology(_mlp(nnx.relu, nnx.BatchNorm))
    assert _hidden(ln, ln.node_norm) == {gt.NORM_IDS.index("layernorm")}
    assert _hidden(bn, bn.node_norm) == {gt.NORM_IDS.index("batchnorm")}
    # Same feature slots (scale, shift), told apart by the id; nodes without a norm: "none".
    assert set(ln.node_norm[ln.node_type != gt.NODE_HIDDEN].tolist()) == {0}


def test_refusal_names_the_blocking_primitive():
    class Cat(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(4, 3, rngs=rngs)
            self.b = nnx.Linear(4, 3, rngs=rngs)
            self.out = nnx.Linear(6, 2, rngs=rngs)

        def __call__(self, x):
            return self.out(jnp.concatenate([nnx.relu(self.a(x)), nnx.relu(self.b(x))], -1))

    t = Target.from_nnx(Cat(nnx.Rngs(0)), sample_input=jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="concatenate.*add the branches"):
        gt.topology(t)


class _Tokens(nnx.Module):
    """Tokens of a 5-word vocabulary, embedded (3 features), mean-pooled, two dense layers."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(5, 3, rngs=rngs)
        self.l1 = nnx.Linear(3, 4, rngs=rngs)
        self.l2 = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, tokens):
        return self.l2(nnx.relu(self.l1(self.embed(tokens).mean(axis=1))))


def test_token_embedding_is_a_dense_layer_from_the_vocabulary(random_params):
    t = Target.from_nnx(_Tokens(nnx.Rngs(0)), sample_input=jnp.zeros((2, 6), jnp.int32))
    pop = random_params(t, 0, n=2)
    g = graph.population_to_graphs(t, pop)
    back = graph.graphs_to_population(t, g)
    for a, b in zip(jax.tree.leaves(pop), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    topo = gt.topology(t)
    assert [(n, size, kind) for n, _, size, kind in topo.node_sets] == [
        ("input", 5, gt.NODE_INPUT),
        ("embed", 3, gt.NODE_HIDDEN),
        ("l1", 4, gt.NODE_HIDDEN),
        ("l2", 2, gt.NODE_OUTPUT),
    ]
    np.testing.assert_array_equal(topo.node_io[:5], np.arange(5))  # one node per word
    # One weight edge per table entry, vocab -> feature, l1 reads the feature nodes.
    table = np.asarray(pop["embed"]["embedding"][1])
    w = np.asarray(g.edges["w"])[topo.num_edges :, 0]  # the second network's edges
    into = topo.edge_layer == 1
    assert into.sum() == table.size and np.all(topo.edge_type[into] == gt.EDGE_WEIGHT)
    np.testing.assert_array_equal(w[into], table[topo.senders[into], topo.receivers[into] - 5])
    assert set(topo.senders[topo.edge_layer == 2]) == {5, 6, 7}
    # Traced activations: the table's features enter a mean (identity), l1 a relu.
    ids = {n: topo.node_act[start] for n, start, _, _ in topo.node_sets[1:3]}
    assert ids == {
        "embed": gt.ACTIVATION_IDS.index("identity"),
        "l1": gt.ACTIVATION_IDS.index("relu"),
    }


def test_shared_weight_refusal_names_the_leaf():
    class Shared(nnx.Module):
        def __init__(self, rngs):
            self.inp = nnx.Linear(4, 3, rngs=rngs)
            self.shared = nnx.Linear(3, 3, rngs=rngs)
            self.out = nnx.Linear(3, 2, rngs=rngs)

        def __call__(self, x):
            return self.out(self.shared(nnx.relu(self.shared(nnx.relu(self.inp(x))))))

    t = Target.from_nnx(Shared(nnx.Rngs(0)), sample_input=jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"'shared/kernel'.*used by 2 contractions.*shared weight"):
        gt.topology(t)
