"""metanets graphs of user networks: traced activation and norm ids, refusal messages."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hyper.target import Target
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
