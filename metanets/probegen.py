"""Learned probes (ProbeGen): a probe generator trained end to end with a readout.

The ``"probes"`` model of `metanets.predict`, after Kahana et al., "Deep Linear Probe
Generators for Weight Space Learning" (ICLR 2025):

- `ProbeGenerator`: `K` learned latent codes mapped by a shared *deep-linear* generator
  (dense layers, no activation between them, a final ``scale * tanh``) to `K` probes of the
  networks' input shape. ProbeGen's generator is a transposed-conv stack for images; a
  dense one serves every input shape (images, sequences, tokens as vectors).
- `ProbeNet`: the generator and an MLP readout of the networks' outputs on the probes
  (``asinh`` of the `K x C` responses, flattened).

The responses of a group of networks (one target) are one vmapped forward pass over the
group's members (`group_fns`: on XLA:CPU with convolutions as patch matmuls; its vmap
differentiated with respect to the probes in training), never a Python loop over
networks. A training step runs, per architecture present in the batch, one forward pass
and one VJP over that group's members (padded to a power of two, so every target compiles
a few programs), and adds the probe cotangents of all groups before back-propagating
into the generator.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hyper.conv_matmul import for_populations
from hyper.errors import WeightspaceError
from hyper.init_programs import many_programs_compiler_options
from hyper.target import Target
from metanets.baselines import MLPRegressor
from metanets.metrics import kendall_tau
from metanets.training import fit_setup, run_fit

__all__ = [
    "ProbeGenerator",
    "ProbeNet",
    "fit_probe_net",
    "group_fns",
    "probe_net_predict",
    "probe_responses",
    "response_shape",
]

_CHUNK = 256  # members per forward pass at prediction


class ProbeGenerator(nnx.Module):
    """`count` probes `[count, *input_shape]` from learned codes through a deep-linear map.

    Args:
      input_shape: one probe's shape (the networks' input shape).
      count: number of probes `K`.
      latent: width of the codes.
      width: width of the generator's hidden (linear) layers.
      depth: number of linear layers (>= 1).
      scale: the probes are ``scale * tanh(.)``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        count: int,
        *,
        latent: int = 32,
        width: int = 64,
        depth: int = 4,
        scale: float = 2.0,
        rngs: nnx.Rngs,
    ):
        self.input_shape = tuple(int(d) for d in input_shape)
        self.count, self.scale = int(count), float(scale)
        self.codes = nnx.Param(jax.random.normal(rngs.params(), (self.count, int(latent))))
        sizes = [int(latent)] + [int(width)] * (int(depth) - 1) + [math.prod(self.input_shape)]
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )

    def __call__(self) -> jax.Array:
        z = self.codes[...]
        for layer in self.layers:  # deep linear: no activation between the layers
            z = layer(z)
        return self.scale * jnp.tanh(z).reshape(self.count, *self.input_shape)


class ProbeNet(nnx.Module):
    """The probe generator and the readout of the responses `[B, K, C]` -> `[B]`."""

    def __init__(
        self,
        input_shape: Sequence[int],
        count: int,
        out_features: int,
        *,
        latent: int = 32,
        gen_width: int = 64,
        gen_depth: int = 4,
        scale: float = 2.0,
        hidden: int = 256,
        depth: int = 3,
        rngs: nnx.Rngs,
    ):
        self.generator = ProbeGenerator(
            input_shape,
            count,
            latent=latent,
            width=gen_width,
            depth=gen_depth,
            scale=scale,
            rngs=rngs,
        )
        width = count * int(out_features)
        self.readout = MLPRegressor(width, hidden=hidden, depth=depth, rngs=rngs)

    def read(self, responses: jax.Array) -> jax.Array:
        """Predictions `[B]` from the networks' responses `[B, K, C]` to the probes."""
        return self.readout(jnp.arcsinh(responses).reshape(responses.shape[0], -1))[:, 0]


def response_shape(targets: Sequence[Target]) -> tuple[tuple[int, ...], int]:
    """`(input_shape, out_features)` shared by every target; probes need both to agree.

    Raises:
      WeightspaceError: unknown or differing input shapes, non-float inputs, or outputs
        that differ between targets or are not one vector per example.
    """
    shapes = {t.input_shape for t in targets}
    if len(shapes) != 1 or None in shapes:
        raise WeightspaceError(
            "learned probes need one known input shape across the zoo, got "
            f"{sorted(map(str, shapes))}"
        )
    (shape,) = shapes
    outs = set()
    for t in targets:
        if not np.issubdtype(t.input_dtype, np.floating):
            raise WeightspaceError(
                f"learned probes: {t.name} takes {t.input_dtype} inputs (token ids?); probes "
                "are generated as floats"
            )
        x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
        y = jax.eval_shape(t.pure_apply, t.abstract_params(), x)
        if not hasattr(y, "shape") or len(y.shape) != 2:
            raise WeightspaceError(
                f"learned probes: {t.name} returns {jax.tree.map(lambda a: a.shape, y)} per "
                "batch; the readout needs one output vector per example"
            )
        outs.add(int(y.shape[1]))
    if len(outs) != 1:
        raise WeightspaceError(f"learned probes need one output width across the zoo, got {outs}")
    return shape, outs.pop()


class _GroupFns:
    """Jitted forward and probe-VJP of one target's members (vmapped over members; on
    XLA:CPU with convolutions as matmuls, `hyper.conv_matmul.for_populations`; compiled
    with `hyper.init_programs.many_programs_compiler_options`)."""

    def __init__(self, target: Target):
        self.target = target  # keeps the id stable while cached
        apply = jax.vmap(for_populations(target.pure_apply), in_axes=(0, None))
        options = many_programs_compiler_options()
        self.forward = jax.jit(apply, compiler_options=options)

        def vjp(pop, probes, cot):
            return jax.vjp(lambda x: apply(pop, x), probes)[1](cot)[0]

        self.vjp = jax.jit(vjp, compiler_options=options)


MAX_CACHED_TARGETS = 512
"""Architectures whose compiled programs `group_fns` keeps (least recently used dropped)."""

_FNS: collections.OrderedDict[int, _GroupFns] = collections.OrderedDict()


def group_fns(target: Target) -> _GroupFns:
    """The compiled forward and vector-Jacobian programs of one architecture's networks on
    the probes (cached per target, the `MAX_CACHED_TARGETS` most recently used; a dropped
    target's executables are freed): ``.vjp(population, probes, cotangent)``."""
    f = _FNS.get(id(target))
    if f is None or f.target is not target:
        f = _FNS[id(target)] = _GroupFns(target)
    _FNS.move_to_end(id(target))
    while len(_FNS) > MAX_CACHED_TARGETS:
        _FNS.popitem(last=False)
    return f


def _bucket(n: int) -> int:
    return max(4, 1 << max(0, n - 1).bit_length())


def _gather(pop: Any, members: np.ndarray, size: int) -> Any:
    idx = np.concatenate([members, np.full(size - len(members), members[0])])
    return jax.tree.map(lambda a: a[idx], pop)


def probe_responses(ds: Any, samples: np.ndarray, probes: jax.Array) -> np.ndarray:
    """The responses `[len(samples), K, C]` of the `samples` of dataset `ds` to `probes`:
    per group, one vmapped forward pass over its members (chunks of 256; `group_fns`)."""
    samples = np.asarray(samples)
    out: np.ndarray | None = None
    for g in np.unique(ds.group[samples]):
        rows = np.flatnonzero(ds.group[samples] == g)
        members = ds.member[samples[rows]]
        target = ds.targets[g]
        for i in range(0, len(rows), _CHUNK):
            m = members[i : i + _CHUNK]
            pop = _gather(ds.populations[g], m, _bucket(len(m)))
            target.validate(pop, batched=True)
            y = np.asarray(group_fns(target).forward(pop, probes))[: len(m)]
            if out is None:
                out = np.zeros((len(samples), *y.shape[1:]), np.float32)
            out[rows[i : i + _CHUNK]] = y
    if out is None:
        return np.zeros((0,), np.float32)
    return out


def probe_net_predict(model: ProbeNet, ds: Any, samples: np.ndarray, config: dict) -> np.ndarray:
    """Predictions (in label units) of a fitted `ProbeNet` on `samples` of `ds`."""
    samples = np.asarray(samples)
    if len(samples) == 0:
        return np.zeros((0,), np.float32)
    graphdef, state = nnx.split(model)
    probes = _generate(graphdef)(state)
    resp = probe_responses(ds, samples, probes)
    y = np.asarray(_read(graphdef)(state, jnp.asarray(resp)))
    return y * config["y_std"] + config["y_mean"]


_JIT: dict[Any, Any] = {}


def _generate(graphdef):
    key = ("gen", graphdef)
    if key not in _JIT:
        _JIT[key] = jax.jit(lambda s: nnx.merge(graphdef, s).generator())
    return _JIT[key]


def _read(graphdef):
    key = ("read", graphdef)
    if key not in _JIT:
        _JIT[key] = jax.jit(lambda s, r: nnx.merge(graphdef, s).read(r))
    return _JIT[key]


def fit_probe_net(
    model: ProbeNet,
    ds: Any,
    train: np.ndarray,
    val: np.ndarray,
    config: dict[str, Any],
    log: Callable[[str], None],
    checkpoint_dir: Any = None,
) -> tuple[ProbeNet, list[dict[str, Any]], dict[str, Any]]:
    """Trains generator and readout end to end on the `train` samples (MSE on the
    standardised labels, ``config["y_mean"]``/``["y_std"]``), keeping the parameters of
    the best validation tau; returns ``(model, history, stats)``."""
    setup = fit_setup(model, len(train), config)
    bs, graphdef, rest, tx = setup.batch_size, setup.graphdef, setup.rest, setup.tx
    yt = ((ds.y - config["y_mean"]) / config["y_std"]).astype(np.float32)

    def merged(p):
        return nnx.merge(graphdef, p, rest)

    @jax.jit
    def generate(p):
        return merged(p).generator()

    @jax.jit
    def readout_grads(p, resp, yb, mask):
        def loss_fn(p, resp):
            pred = merged(p).read(resp)
            return jnp.sum(jnp.where(mask, (pred - yb) ** 2, 0.0)) / jnp.sum(mask)

        loss, (gp, gr) = jax.value_and_grad(loss_fn, argnums=(0, 1))(p, resp)
        return loss, gp, gr

    @jax.jit
    def generator_grads(p, cot):
        return jax.vjp(lambda q: merged(q).generator(), p)[1](cot)[0]

    @jax.jit
    def update(p, opt_state, g_read, g_gen):
        grads = jax.tree.map(jnp.add, g_read, g_gen)
        updates, opt_state = tx.update(grads, opt_state, p)
        return jax.tree.map(jnp.add, p, updates), opt_state

    seen = [0]

    def step(p, opt_state, batch):
        probes = generate(p)
        groups = ds.group[batch]
        resp = None
        parts = []
        for g in np.unique(groups):
            rows = np.flatnonzero(groups == g)
            size = _bucket(len(rows))
            pop = _gather(ds.populations[g], ds.member[batch[rows]], size)
            fns = group_fns(ds.targets[g])
            r = np.asarray(fns.forward(pop, probes))
            if resp is None:
                resp = np.zeros((bs, *r.shape[1:]), np.float32)
            resp[rows] = r[: len(rows)]
            parts.append((rows, size, pop, fns))
        yb = np.zeros(bs, np.float32)
        yb[: len(batch)] = yt[batch]
        mask = np.arange(bs) < len(batch)
        loss, g_read, g_resp = readout_grads(p, jnp.asarray(resp), yb, mask)
        g_resp = np.asarray(g_resp)
        cot = np.zeros(probes.shape, np.float32)
        for rows, size, pop, fns in parts:
            c = np.zeros((size, *g_resp.shape[1:]), np.float32)
            c[: len(rows)] = g_resp[rows]
            cot += np.asarray(fns.vjp(pop, probes, jnp.asarray(c)))
        g_gen = generator_grads(p, jnp.asarray(cot))
        p, opt_state = update(p, opt_state, g_read, g_gen)
        seen[0] += len(batch)
        return p, opt_state, loss

    t0 = time.perf_counter()

    def val_tau(p):
        pred = probe_net_predict(merged(p), ds, val, config)
        tau = kendall_tau(pred, ds.y[val])
        log(f"probes: val tau {tau:.4f} after {time.perf_counter() - t0:.1f} s")
        return tau

    best = run_fit(setup, step, val_tau, train, config, checkpoint_dir)
    stats = {
        "train_seconds": time.perf_counter() - t0,
        "train_networks_seen": seen[0],
        "best_val_tau": best[0],
    }
    return merged(best[1]), best[2], stats
