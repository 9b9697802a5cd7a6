"""Property tests over random stacks of the layers of issue 28 (dense or conv layers, each
with a norm, an activation and, for convs, a pooling; a global mean pool or a flatten
before the head): the graph round trip is exact, and permuting the structural groups keeps
the function, with every hidden layer's units in a group (so the permutation is not
vacuous). Few, tiny examples; each builds one NNX network."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bench.coverage_checks import Case, Sizes
from bench.coverage_nets import Built, Net, nnx_weights
from hyper import symmetry
from hyper.target import Target
from metanets import graphs_to_population, population_to_graphs

ACTIVATIONS = {"relu": nnx.relu, "tanh": jnp.tanh, "gelu": nnx.gelu}
NORMS = {
    "dense": ("none", "layernorm", "rmsnorm"),
    # GroupNorm is left out: graph conversion refuses it (an open gap, listed in
    # docs/coverage.md); its pruning and alignment are required OK in bench/coverage.py
    # (cnn_groupnorm), which CI runs with --strict.
    "conv": ("none", "batchnorm", "layernorm"),
}


@dataclasses.dataclass(frozen=True)
class Layer:
    width: int
    norm: str
    act: str
    pool: str  # "none", "max" or "avg" (convs only)


class Unit(nnx.Module):
    def __init__(self, kind: str, c_in: int, layer: Layer, *, rngs: nnx.Rngs):
        self.spec = layer
        w = layer.width
        self.layer = (
            nnx.Conv(c_in, w, (3, 3), rngs=rngs)
            if kind == "conv"
            else nnx.Linear(c_in, w, rngs=rngs)
        )
        if layer.norm == "layernorm":
            self.norm = nnx.LayerNorm(w, rngs=rngs)
        elif layer.norm == "rmsnorm":
            self.norm = nnx.RMSNorm(w, rngs=rngs)
        elif layer.norm == "batchnorm":
            self.norm = nnx.BatchNorm(w, rngs=rngs)
        elif layer.norm == "groupnorm":
            self.norm = nnx.GroupNorm(w, num_groups=1, rngs=rngs)

    def __call__(self, x):
        x = self.layer(x)
        if self.spec.norm != "none":
            x = self.norm(x)
        x = ACTIVATIONS[self.spec.act](x)
        if self.spec.pool == "max":
            x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        elif self.spec.pool == "avg":
            x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
        return x


class Stack(nnx.Module):
    """Dense: a flat digit -> units -> head. Conv: an [8, 8, 1] digit -> units -> a global
    mean pool or a flatten -> head."""

    def __init__(self, kind: str, layers: tuple[Layer, ...], head: str, *, rngs: nnx.Rngs):
        self.kind, self.head_kind = kind, head
        c, side, units = (1 if kind == "conv" else 64), 8, []
        for layer in layers:
            units.append(Unit(kind, c, layer, rngs=rngs))
            c, side = layer.width, side // (2 if layer.pool != "none" else 1)
        self.units = nnx.List(units)
        feats = c * side * side if kind == "conv" and head == "flatten" else c
        self.head = nnx.Linear(feats, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1) if self.kind == "dense" else x
        for unit in self.units:
            x = unit(x)
        if self.kind == "conv":
            x = x.reshape(x.shape[0], -1) if self.head_kind == "flatten" else x.mean(axis=(1, 2))
        return self.head(x)


@st.composite
def stacks(draw):
    kind = draw(st.sampled_from(("dense", "conv")))
    n = draw(st.integers(1, 2))
    layers = tuple(
        Layer(
            width=draw(st.sampled_from((2, 3))),
            norm=draw(st.sampled_from(NORMS[kind])),
            act=draw(st.sampled_from(tuple(ACTIVATIONS))),
            pool=draw(st.sampled_from(("none", "max", "avg"))) if kind == "conv" else "none",
        )
        for _ in range(n)
    )
    head = draw(st.sampled_from(("gap", "flatten"))) if kind == "conv" else "dense"
    return kind, layers, head


def _case(kind, layers, head) -> Case:
    def build(width, x):
        module = Stack(kind, layers, head, rngs=nnx.Rngs(0))
        target = Target.from_nnx(module, sample_input=x, name="Stack")

        def reference(x):
            module.eval()
            return module(x)

        return Built(target, nnx_weights(module), reference)

    data = "digits-image" if kind == "conv" else "digits"
    net = Net("stack", f"{kind} {layers} {head}", kind, "nnx", data, build, torch_forward=None)
    return Case(net, Sizes(width=0, batch=4, members=2))


# No shrinking: each example compiles a network; the failing example is printed as drawn.
@settings(
    max_examples=6,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(stacks())
def test_random_stacks_round_trip_graphs_and_keep_the_function_when_permuted(stack):
    case = _case(*stack)
    t = case.target
    graphs = population_to_graphs(t, case.population)
    back = graphs_to_population(t, graphs)
    for a, b in zip(jax.tree.leaves(case.population), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert case.coverage is None, case.coverage  # every hidden layer's units are in a group
    params = case.scrambled
    perms = symmetry.random_permutations(t, jax.random.key(3), groups=case.groups)
    moved = symmetry.permute(t, params, perms, groups=case.groups)
    y, y_moved = case.logits(params), case.logits(moved)
    np.testing.assert_allclose(y_moved, y, atol=1e-5 * max(1.0, float(np.abs(y).max())))
