"""Probe features: what each neuron computes on a few fixed inputs.

Neural Graphs' probe features with fixed (not learned) probes: every member runs on the
probes (`probe_inputs`) and each node records the mean over positions of its channel, read
off the network's own forward pass (its jaxpr, evaluated with the kernel contractions
recorded), so every architecture the graph encoding supports is covered.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from hyper.errors import WeightspaceError
from hyper.jaxpr import evaluate
from hyper.target import Params, Target
from metanets.graph_topology import topology

__all__ = ["probe_features", "probe_inputs"]

# Primitives that only re-view a kernel (its values, differently laid out or typed).
_VIEWS = frozenset(
    {"convert_element_type", "reshape", "transpose", "copy", "copy_p", "squeeze", "expand_dims"}
)
_CONTRACTIONS = frozenset({"dot_general", "conv_general_dilated"})


def _eval_recording(jaxpr, consts, args, alias, found):
    """Evaluates `jaxpr`, recording ``found[leaf] = (lhs, out)`` at the first contraction
    (dot_general / conv) that reads a view of kernel leaf `leaf` (`alias`: var -> leaf)."""
    views = {((), v): leaf for v, leaf in alias.items()}  # (scope, var) -> leaf

    def record(step, invals, outvals):
        eqn = step.eqn
        if step.kind == "call":  # the body's inputs view what the call's operands view
            for iv, ov in zip(step.body.jaxpr.invars, eqn.invars, strict=True):
                if isinstance(ov, jax.extend.core.Var) and (step.scope, ov) in views:
                    views[(step.inner, iv)] = views[(step.scope, ov)]
            return
        if step.kind != "eqn":
            return
        leaves = [
            views.get((step.scope, v)) if isinstance(v, jax.extend.core.Var) else None
            for v in eqn.invars
        ]
        name = eqn.primitive.name
        if name in _VIEWS and leaves[0] is not None:
            views[(step.scope, eqn.outvars[0])] = leaves[0]
        elif name in _CONTRACTIONS:
            for i, leaf in enumerate(leaves):
                if leaf is not None and leaf not in found:
                    found[leaf] = (invals[1 - i], outvals[0])

    return evaluate(jax.extend.core.ClosedJaxpr(jaxpr, consts), args, record=record)


def probe_inputs(target: Target, count: int, seed: int = 0) -> np.ndarray:
    """`count` fixed probe inputs for `target`: standard normal, `[count, *input_shape]`."""
    if target.input_shape is None:
        raise WeightspaceError(f"{target.name}: input shape unknown; cannot make probe inputs")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((int(count), *target.input_shape)).astype(np.float32)


def _channel_means(a: jax.Array, size: int, what: str) -> jax.Array:
    """`[K, ..., C]` -> `[C, K]`: the mean of every channel over its positions."""
    if a.shape[-1] != size:
        raise WeightspaceError(
            f"probe features: {what} has shape {a.shape}; expected {size} channels last"
        )
    return jnp.moveaxis(a.reshape(a.shape[0], -1, size).mean(1), 0, 1)


def probe_features(target: Target, population: Params, probes: Any) -> jax.Array:
    """What each node computes on fixed inputs: `[n, N, K]` for `K` probes.

    Runs every member on the probes `[K, *input_shape]` (`probe_inputs`) and records, per
    node, the mean over positions of its channel: the probe itself for input nodes, the
    output of the layer's kernel (before bias, normalization and activation) for hidden
    and output nodes. This is Neural Graphs' probe features with fixed (not learned)
    probes. The values come from the network's own forward pass (its jaxpr, evaluated
    with the kernel contractions recorded), so every architecture the graph encoding
    supports is covered; they move with the nodes under hidden-unit permutations.

    Raises:
      WeightspaceError: a kernel whose contraction (dot/conv) cannot be located in the forward
        pass, or whose output does not hold its channels last.
    """
    topo = topology(target)
    kernels = sorted(target.select(roles=["kernel"]), key=lambda s: (s.layer, s.path))
    leaf_index = {s.path: i for i, s in enumerate(target.spec)}
    probes = jnp.asarray(probes, jnp.float32)
    treedef = jax.tree.structure(population)
    leaves = jax.tree.leaves(population)
    closed = jax.make_jaxpr(lambda ls, x: target.apply(jax.tree.unflatten(treedef, ls), x))(
        [a[0] for a in leaves], probes
    )
    jx = closed.jaxpr
    n_leaves = len(leaves)

    def member(ls):
        found: dict[int, Any] = {}
        alias = {v: i for i, v in enumerate(jx.invars[:n_leaves])}
        _eval_recording(jx, closed.consts, [*ls, probes], alias, found)
        cols = []
        for j, k in enumerate(kernels):
            li = leaf_index[k.path]
            if li not in found:
                raise WeightspaceError(
                    f"probe features: {target.name}: layer {k.layer_name!r}: no dot/conv in "
                    "the forward pass reads its kernel"
                )
            lhs, out = found[li]
            if j == 0:
                cols.append(_channel_means(lhs, topo.node_sets[0][2], "the network input"))
            cols.append(_channel_means(out, k.shape[k.out_axis], f"layer {k.layer_name!r}"))
        return jnp.concatenate(cols, 0)

    fn = jax.jit(jax.vmap(member))
    n = leaves[0].shape[0]
    chunk = _PROBE_CHUNK
    return jnp.concatenate(
        [fn([jnp.asarray(a[i : i + chunk]) for a in leaves]) for i in range(0, n, chunk)]
    )


_PROBE_CHUNK = 512  # members per probe forward pass (bounds memory on large populations)
