"""hyper.layer_ops: activations and normalization kinds read from the traced computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import linen, nnx

from hyper import layer_ops
from hyper.architectures import make_target
from hyper.target import Target

ACTS = {
    "relu": nnx.relu,
    "tanh": jnp.tanh,
    "gelu": nnx.gelu,  # tanh form
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": nnx.silu,
    "sigmoid": nnx.sigmoid,
    "softplus": nnx.softplus,
    "leaky_relu": nnx.leaky_relu,
    "elu": nnx.elu,
    "identity": lambda x: x,
    "sin": jnp.sin,
}


class _MLP(nnx.Module):
    def __init__(self, act, norm, rngs):
        self.act = act
        self.l1 = nnx.Linear(6, 5, rngs=rngs)
        self.n = norm(5, rngs=rngs) if norm is not None else None
        self.l2 = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        h = self.l1(x)
        if self.n is not None:
            h = self.n(h)
        return self.l2(self.act(h))


def _nnx_mlp(act, norm=None):
    return Target.from_nnx(_MLP(act, norm, nnx.Rngs(0)), sample_input=jnp.zeros((2, 6)))


@pytest.mark.parametrize("name", sorted(ACTS))
def test_nnx_activation_is_read_from_the_trace(name):
    acts = layer_ops.activations(_nnx_mlp(ACTS[name]))
    want = "gelu" if name == "gelu_exact" else name
    assert acts == {"l1": want, "l2": "identity"}


def test_linen_and_function_activations():
    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            x = linen.avg_pool(linen.gelu(linen.Conv(3, (3, 3))(x)), (2, 2), (2, 2))
            x = linen.tanh(linen.Dense(4)(x.reshape(x.shape[0], -1)))
            return linen.Dense(2)(x)

    t = Target.from_linen(Net(), jnp.zeros((2, 6, 6, 1)))
    assert layer_ops.activations(t) == {"Conv_0": "gelu", "Dense_0": "tanh", "Dense_1": "identity"}

    def f(p, x):
        h = jax.nn.relu(x @ p["dense1"]["kernel"] + p["dense1"]["bias"][None])
        return h @ p["dense2"]["kernel"] + p["dense2"]["bias"][None]

    tmpl = {
        "dense1": {"kernel": jnp.zeros((6, 4)), "bias": jnp.zeros(4)},
        "dense2": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)},
    }
    t = Target.from_function(f, tmpl, sample_input=jnp.zeros((2, 6)))
    assert layer_ops.activations(t) == {"dense1": "relu", "dense2": "identity"}


@pytest.mark.parametrize(
    "norm, kind",
    [
        (nnx.BatchNorm, "batchnorm"),
        (nnx.LayerNorm, "layernorm"),
        (nnx.RMSNorm, "rmsnorm"),
        (lambda c, rngs: nnx.GroupNorm(c, num_groups=5, rngs=rngs), "groupnorm"),
    ],
)
def test_norm_kinds(norm, kind):
    t = _nnx_mlp(nnx.relu, norm)
    assert layer_ops.norms(t) == {"n": kind}
    # The norm between the layer and its activation does not hide the activation.
    assert layer_ops.activations(t)["l1"] == "relu"


def test_presets_match_their_config():
    for act in ("relu", "tanh", "silu", "leaky_relu"):
        t = make_target("rescnn", input_shape=(6, 6, 1), channels=2, num_blocks=1, out_features=2,
                        activation=act)  # fmt: skip
        acts = layer_ops.activations(t)
        assert {v for k, v in acts.items() if k != "dense"} == {act}
        assert set(layer_ops.norms(t).values()) == {"batchnorm"}


def test_structural_ops_name_pooling_flatten_and_input_reshape():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(1, 2, (3, 3), rngs=rngs)
            self.c2 = nnx.Conv(2, 2, (3, 3), feature_group_count=2, rngs=rngs)
            self.d = nnx.Linear(2 * 4 * 4, 3, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.c1(x.reshape(-1, 8, 8, 1)))
            x = nnx.max_pool(nnx.relu(self.c2(x)), (2, 2), (2, 2))
            return self.d(x.reshape(x.shape[0], -1))

    t = Target.from_nnx(Net(nnx.Rngs(0)), sample_input=jnp.zeros((2, 64)))
    ops = layer_ops.structural_ops(t)
    assert ops[layer_ops.INPUT] == ("reshape [2, 64] -> [2, 8, 8, 1]",)
    assert ops["c1"] == ("conv_general_dilated (feature_group_count=2)",)
    assert ops["c2"][1:] == (
        "reduce_window_max (window (1, 2, 2, 1))",
        "reshape [2, 4, 4, 2] -> [2, 32]",
    )
    assert ops["d"] == ()
