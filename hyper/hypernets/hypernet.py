"""Hypernetworks that write the weights of any `Target`, MIP by default.

`HyperNet` maps a batch of conditions `{name: [M, ...]}` to a population of `M` weight
sets of its target. Its parts, each switchable for ablation:

- **input encoding** of continuous conditions (`hyper.hypernets.conditions.ENCODINGS`; MIP:
  ``"cos|sin"``), learned embeddings for categorical ids, free vectors and noise as given;
- **backbone**: an MLP (`hidden` sizes, LeakyReLU by default) with Kaiming fan-out init
  (MIP) or the framework default;
- **heads**: ``"per_tensor"`` linear heads (default), ``"chunked"`` (learned chunk
  embeddings + one shared generator, memory independent of hidden x |θ|) or
  ``"lowrank"`` (U, V factors per kernel);
- **head init**: ``"split_fan_out"`` (MIP/hyperlight: per tensor, Kaiming fan-out by the
  tensor's size), ``"hyperfan_in"``, ``"hyperfan_out"``, ``"zero"`` (bias-hyperinit) or
  ``"default"``;
- **residual output** θ = θ0 + Δθ (MIP), with θ0 a separate pytree initialised like the
  target (or loaded from a zoo member), trainable or frozen; ``residual=False`` is the
  default parametrization θ = h(γ).

Which leaves are generated is chosen by path glob; the other trainable leaves are
shared learned weights (or frozen), and non-trainable state (running statistics) is
carried from the template.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hyper import architectures as arch_lib
from hyper import sharding
from hyper import train as train_lib
from hyper.errors import WeightspaceError
from hyper.hypernets import conditions as cond_lib
from hyper.hypernets.conditions import Categorical, Condition, Continuous, Noise, Vector
from hyper.target import LeafSpec, Target
from hyper.tree import Params, flatten_dict, nest

__all__ = [
    "HEADS",
    "HEAD_INITS",
    "HIDDEN_INITS",
    "ACTIVATIONS",
    "Frozen",
    "HyperNet",
    "generate",
    "generate_and_evaluate",
    "delta_ratio",
    "norm_slope",
]

HEADS = ("per_tensor", "chunked", "lowrank")
HEAD_INITS = ("split_fan_out", "hyperfan_in", "hyperfan_out", "zero", "default")
HIDDEN_INITS = ("kaiming_fan_out", "default")
ACTIVATIONS = ("leaky_relu", "relu", "gelu", "tanh", "silu")
"""Hidden activations of a hypernet: names of `hyper.architectures.ACTIVATIONS` (leaky ReLU
with slope 0.01)."""
_LEAKY_GAIN2 = 2.0 / (1.0 + 0.01**2)


class Frozen(nnx.Variable):
    """A hypernet variable that is not trained (frozen θ0, frozen shared weights, state)."""


_BLOCK = 1 << 16


@jax.jit
def _normal_block(key: jax.Array) -> jax.Array:
    return jax.random.normal(key, (_BLOCK,), jnp.float32)


def _normal(key: jax.Array, shape: Sequence[int], var: float) -> jax.Array:
    """`N(0, var)` float32 of `shape`, deterministic per key.

    Drawn in fixed-size blocks ``fold_in(key, i)`` assembled on the host: XLA compiles one
    program for every shape, and a hypernet has many shapes (seconds each on a busy CPU).
    """
    shape = tuple(int(d) for d in shape)
    std = math.sqrt(max(var, 0.0))
    if isinstance(key, jax.core.Tracer):  # built inside a transform (e.g. nnx.eval_shape)
        return jax.random.normal(key, shape, jnp.float32) * std
    n = math.prod(shape)
    if n == 0 or std == 0.0:
        return _zeros(shape)
    blocks = [np.asarray(_normal_block(jax.random.fold_in(key, i))) for i in range(-(-n // _BLOCK))]
    return jnp.asarray((np.concatenate(blocks)[:n] * np.float32(std)).reshape(shape))


def _zeros(shape: Sequence[int]) -> jax.Array:
    return jnp.asarray(np.zeros(tuple(shape), np.float32))


def _head_var(init: str, leaf: LeafSpec, hidden: int, size: int) -> float:
    """Variance of a linear head's weights writing `size` outputs of `leaf`."""
    if init == "split_fan_out":
        return _LEAKY_GAIN2 / size
    if init == "hyperfan_in":
        return 1.0 / (hidden * max(leaf.fan_in, 1)) * (1.0 if leaf.role == "kernel" else 0.5)
    if init == "hyperfan_out":
        return 1.0 / (hidden * max(leaf.fan_out, 1)) * (1.0 if leaf.role == "kernel" else 0.5)
    if init == "zero":
        return 0.0
    return 1.0 / hidden  # "default": LeCun normal by the head's fan-in


class HyperNet(nnx.Module):
    """A hypernetwork for `target` (Flax NNX).

    Examples:
      >>> from hyper import make_target
      >>> from hyper.hypernets.conditions import Continuous
      >>> t = make_target("mlp", input_shape=(8, 8), widths=(16,), out_features=10)
      >>> h = HyperNet(t, [Continuous("gamma")], hidden=(8,), rngs=nnx.Rngs(0))
      >>> pop = h({"gamma": jnp.array([0.1, 0.9])})
      >>> pop["layers"]["0"]["kernel"].shape
      (2, 64, 16)

    Args:
      target: the target network.
      conditions: condition specs (`hyper.hypernets.conditions`).
      generate: path globs of the leaves to generate (default: every trainable leaf).
      hidden: hidden sizes of the backbone MLP.
      activation: backbone activation (``"leaky_relu"`` as in MIP).
      encoding: encoding of continuous conditions (``"cos|sin"`` = MIP).
      residual: θ = θ0 + Δθ (MIP) if True, θ = h(γ) otherwise.
      head: ``"per_tensor"``, ``"chunked"`` or ``"lowrank"``.
      head_init: one of `HEAD_INITS`.
      hidden_init: ``"kaiming_fan_out"`` (MIP) or ``"default"`` (LeCun fan-in).
      theta0: one target's params used for θ0 and for the non-generated leaves
        (e.g. a zoo member); default: ``target.init`` of a fresh key.
      train_theta0: whether θ0 is learned (True) or frozen.
      train_shared: whether the non-generated trainable leaves are learned.
      chunk_size: outputs per chunk of the chunked head.
      chunk_dim: chunk embedding width; chunk_hidden: width of the shared generator.
      rank: rank of the low-rank head.
      rngs: `nnx.Rngs` for initialisation.
    """

    def __init__(
        self,
        target: Target,
        conditions: Sequence[Condition],
        *,
        generate: Sequence[str] | str = ("*",),
        hidden: Sequence[int] = (16, 64),
        activation: str = "leaky_relu",
        encoding: str = "cos|sin",
        residual: bool = True,
        head: str = "per_tensor",
        head_init: str = "split_fan_out",
        hidden_init: str = "kaiming_fan_out",
        theta0: Params | None = None,
        train_theta0: bool = True,
        train_shared: bool = True,
        chunk_size: int = 1024,
        chunk_dim: int = 16,
        chunk_hidden: int = 64,
        rank: int = 4,
        rngs: nnx.Rngs,
    ):
        specs = cond_lib.check_specs(conditions)
        if isinstance(generate, str):
            generate = (generate,)
        for name, value, allowed in (
            ("encoding", encoding, cond_lib.ENCODINGS),
            ("head", head, HEADS),
            ("head_init", head_init, HEAD_INITS),
            ("hidden_init", hidden_init, HIDDEN_INITS),
            ("activation", activation, ACTIVATIONS),
        ):
            if value not in allowed:
                raise WeightspaceError(
                    f"HyperNet: unknown {name} {value!r}; expected one of {allowed}"
                )
        hidden = tuple(int(h) for h in hidden)
        if not hidden or any(h < 1 for h in hidden):
            raise WeightspaceError(f"HyperNet: hidden sizes must be positive, got {hidden}")
        if head_init == "zero" and not residual:
            raise WeightspaceError("HyperNet: head_init='zero' needs residual=True (θ would be 0)")
        for name, v in (("chunk_size", chunk_size), ("chunk_dim", chunk_dim), ("rank", rank)):
            if int(v) < 1:
                raise WeightspaceError(f"HyperNet: {name} must be >= 1, got {v}")

        gen = [s for s in target.select(*generate) if s.trainable]
        if not gen:
            raise WeightspaceError(
                f"HyperNet: no trainable leaf of {target.name} matches {list(generate)}; "
                f"leaves: {target.paths}"
            )
        if theta0 is None:
            theta0 = target.init(rngs.params())
        else:
            target.validate(theta0)
        flat0 = flatten_dict(theta0)

        self.target = target
        self.specs = specs
        self.encoding = encoding
        self.residual = bool(residual)
        self.head_kind = head
        self.activation = activation
        self.gen_paths = tuple(s.path for s in gen)
        self.config = {
            "target": dict(target.config),
            "conditions": cond_lib.to_json(specs),
            "generate": list(generate),
            "hidden": list(hidden),
            "activation": activation,
            "encoding": encoding,
            "residual": bool(residual),
            "head": head,
            "head_init": head_init,
            "hidden_init": hidden_init,
            "train_theta0": bool(train_theta0),
            "train_shared": bool(train_shared),
            "chunk_size": int(chunk_size),
            "chunk_dim": int(chunk_dim),
            "chunk_hidden": int(chunk_hidden),
            "rank": int(rank),
        }

        # Input: encoded continuous + categorical embeddings + vectors + noise.
        width = cond_lib.encoded_width(specs, encoding)
        embeds = []
        for s in specs:
            if isinstance(s, Categorical):
                # Var 1/dim: an embedding has norm ~1, like one encoded scalar.
                init = lambda k, shape, dtype, d=s.dim: _normal(k, shape, 1.0 / d)  # noqa: E731
                embeds.append(nnx.Embed(s.num_classes, s.dim, embedding_init=init, rngs=rngs))
                width += s.dim
            elif isinstance(s, Vector | Noise):
                width += s.dim
        self.embeds = nnx.List(embeds)

        sizes = (width, *hidden)
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            kw = {}
            if hidden_init == "kaiming_fan_out":
                kw["kernel_init"] = lambda k, shape, dtype, b=b: _normal(k, shape, _LEAKY_GAIN2 / b)
            zeros = lambda k, shape, dtype: _zeros(shape)  # noqa: E731
            layers.append(nnx.Linear(a, b, bias_init=zeros, rngs=rngs, **kw))
        self.layers = nnx.List(layers)
        h = hidden[-1]

        # θ0 and the non-generated leaves.
        theta_cls = nnx.Param if train_theta0 else Frozen
        self.theta0 = nnx.List([theta_cls(jnp.asarray(flat0[p])) for p in self.gen_paths])
        shared_specs = [s for s in target.spec if s.path not in self.gen_paths]
        self.shared_paths = tuple(s.path for s in shared_specs)
        self.shared = nnx.List(
            [
                (nnx.Param if (s.trainable and train_shared) else Frozen)(
                    jnp.asarray(flat0[s.path])
                )
                for s in shared_specs
            ]
        )

        # Heads.
        if head == "per_tensor":
            self.head_w = nnx.List(
                [
                    nnx.Param(
                        _normal(rngs.params(), (h, s.size), _head_var(head_init, s, h, s.size))
                    )
                    for s in gen
                ]
            )
        elif head == "lowrank":
            ws = []
            for s in gen:
                if s.role == "kernel" and len(s.shape) >= 2:
                    m, n = s.size // s.shape[-1], s.shape[-1]
                    # Var(Δ) = rank·(h·Var(W_u))·(h·Var(W_v)) for unit activations: match the
                    # per-tensor head's h·Var(W). Zero init: V = 0, U random (else no gradient).
                    var_delta = _head_var(head_init, s, h, s.size) * h
                    var_uv = math.sqrt(var_delta / rank) if var_delta > 0 else 1.0
                    wu = _normal(rngs.params(), (h, m * rank), var_uv / h)
                    wv = (
                        _zeros((h, rank * n))
                        if head_init == "zero"
                        else _normal(rngs.params(), (h, rank * n), var_uv / h)
                    )
                    ws.append(nnx.List([nnx.Param(wu), nnx.Param(wv)]))
                else:
                    ws.append(
                        nnx.List(
                            [
                                nnx.Param(
                                    _normal(
                                        rngs.params(),
                                        (h, s.size),
                                        _head_var(head_init, s, h, s.size),
                                    )
                                )
                            ]
                        )
                    )
            self.head_w = nnx.List(ws)
        else:  # chunked
            total = sum(s.size for s in gen)
            n_chunks = math.ceil(total / chunk_size)
            self.n_chunks = n_chunks
            self.chunk_emb = nnx.Param(_normal(rngs.params(), (n_chunks, chunk_dim), 1.0))
            self.chunk_u_a = nnx.Param(_normal(rngs.params(), (h, chunk_hidden), 1.0 / h))
            self.chunk_u_e = nnx.Param(
                _normal(rngs.params(), (chunk_dim, chunk_hidden), 1.0 / chunk_dim)
            )
            self.chunk_b = nnx.Param(_zeros((chunk_hidden,)))
            proxy = LeafSpec(
                "chunk",
                (chunk_size,),
                "float32",
                "kernel",
                chunk_hidden,
                chunk_size,
                0,
                "",
                "dense",
                0,
                0,
            )
            self.chunk_v = nnx.Param(
                _normal(
                    rngs.params(),
                    (chunk_hidden, chunk_size),
                    _head_var(head_init, proxy, chunk_hidden, chunk_size),
                )
            )
        if not residual:
            self.head_b = nnx.List([nnx.Param(_zeros(s.shape)) for s in gen])
        self.gen_specs = tuple(gen)

    # --- forward ------------------------------------------------------------------------

    def embed(self, conditions: Mapping[str, jax.Array]) -> jax.Array:
        """The backbone's input `[M, width]`."""
        parts, gammas, i_emb = [], [], 0
        for s in self.specs:
            v = jnp.asarray(conditions[s.name])
            if isinstance(s, Continuous):
                g = (v.astype(jnp.float32) - s.low) / (s.high - s.low)
                gammas.append(g.reshape(g.shape[0], -1))
        if gammas:
            parts.append(cond_lib.encode(jnp.concatenate(gammas, -1), self.encoding))
        for s in self.specs:
            v = jnp.asarray(conditions[s.name])
            if isinstance(s, Categorical):
                parts.append(self.embeds[i_emb](v))
                i_emb += 1
            elif isinstance(s, Vector | Noise):
                parts.append(v.astype(jnp.float32))
        return jnp.concatenate(parts, -1)

    def features(self, conditions: Mapping[str, jax.Array]) -> jax.Array:
        """Last hidden activations `[M, H]`."""
        act = arch_lib.ACTIVATIONS[self.activation]
        a = self.embed(conditions)
        for layer in self.layers:
            a = act(layer(a))
        return a

    def deltas(self, a: jax.Array) -> list[jax.Array]:
        """Head outputs Δθ per generated leaf, each `[M, *shape]`."""
        m = a.shape[0]
        out = []
        if self.head_kind == "per_tensor":
            for s, w in zip(self.gen_specs, self.head_w, strict=True):
                out.append((a @ w[...]).reshape(m, *s.shape))
        elif self.head_kind == "lowrank":
            rank = self.config["rank"]
            for s, ws in zip(self.gen_specs, self.head_w, strict=True):
                if len(ws) == 2:
                    n = s.shape[-1]
                    u = (a @ ws[0][...]).reshape(m, s.size // n, rank)
                    v = (a @ ws[1][...]).reshape(m, rank, n)
                    out.append((u @ v).reshape(m, *s.shape))
                else:
                    out.append((a @ ws[0][...]).reshape(m, *s.shape))
        else:
            act = arch_lib.ACTIVATIONS[self.activation]
            z = act(
                (a @ self.chunk_u_a[...])[:, None, :]
                + (self.chunk_emb[...] @ self.chunk_u_e[...])[None, :, :]
                + self.chunk_b[...][None, None, :]
            )  # [M, C, G]
            flat = (z @ self.chunk_v[...]).reshape(m, -1)  # [M, C * chunk_size]
            offset = 0
            for s in self.gen_specs:
                out.append(flat[:, offset : offset + s.size].reshape(m, *s.shape))
                offset += s.size
        return out

    def __call__(self, conditions: Mapping[str, jax.Array]) -> Params:
        """A population `[M, ...]` of target params for a batch of conditions.

        Noise conditions must be given here (see `generate` to sample them).
        """
        a = self.features(conditions)
        m = a.shape[0]
        flat: dict[str, jax.Array] = {}
        for i, (s, d) in enumerate(zip(self.gen_specs, self.deltas(a), strict=True)):
            if self.residual:
                theta = self.theta0[i][...][None] + d
            else:
                theta = d + self.head_b[i][...][None]
            flat[s.path] = theta.astype(s.dtype)
        for p, v in zip(self.shared_paths, self.shared, strict=True):
            flat[p] = jnp.broadcast_to(v[...][None], (m, *v[...].shape))
        return nest({p: flat[p] for p in self.target.paths})

    def theta0_params(self) -> Params:
        """θ0 and the shared leaves as one target's params."""
        flat = {p: v[...] for p, v in zip(self.gen_paths, self.theta0, strict=True)}
        flat.update({p: v[...] for p, v in zip(self.shared_paths, self.shared, strict=True)})
        return nest({p: flat[p] for p in self.target.paths})

    def validate(self, conditions: Mapping[str, Any]) -> int:
        """Checks a batch of conditions against the specs; returns M."""
        return cond_lib.validate(self.specs, conditions)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, rngs: nnx.Rngs) -> HyperNet:
        """Rebuilds a hypernet from `HyperNet.config` (weights freshly initialised)."""
        c = dict(config)
        target = arch_lib.target_from_config(c.pop("target"))
        specs = cond_lib.from_json(c.pop("conditions"))
        return cls(target, specs, rngs=rngs, **c)


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise WeightspaceError(f"batch_size must be a positive int, got {batch_size!r}")


@nnx.jit(static_argnames=("batch_size",))
def _generate_jit(hnet, conditions, batch_size):
    if batch_size is None:
        return hnet(conditions)
    return jax.lax.map(
        lambda c: hnet(jax.tree.map(lambda v: v[None], c)), conditions, batch_size=batch_size
    )


def generate(
    hnet: HyperNet,
    conditions: Mapping[str, Any],
    *,
    key: jax.Array | None = None,
    batch_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Params:
    """Generates a population for `M` conditions in one jitted call.

    Args:
      conditions: ``{name: [M, ...]}``; validated before compilation.
      key: samples noise conditions that are not given.
      batch_size: generate in chunks of this many conditions (bounds the activation
        memory); default: all at once when ``M <= 4096``, else 1024.
      mesh: a 1-D ``targets`` mesh (`hyper.sharding.targets_mesh`, possibly spanning
        several processes): the conditions are padded to a multiple of its size and
        sharded, the hypernet replicated, and each device generates its block of targets.
        The result is sharded the same way (gather it with `hyper.sharding.to_host`).

    Returns:
      a population of `hnet.target` with `M` members.
    """
    _check_batch_size(batch_size)
    m = hnet.validate(conditions)
    conditions = cond_lib.fill_noise(
        hnet.specs, {k: jnp.asarray(v) for k, v in conditions.items()}, key, m
    )
    if mesh is not None:
        if batch_size is not None:
            raise WeightspaceError("generate: pass either mesh or batch_size, not both")
        padded, _ = sharding.pad_targets(conditions, mesh.devices.size)
        padded = sharding.shard_targets(padded, mesh)
        graphdef, state = nnx.split(hnet)
        replica = nnx.merge(graphdef, sharding.put(state, sharding.replicated(mesh)))
        pop = _generate_jit(replica, padded, None)
        n_padded = jax.tree.leaves(pop)[0].shape[0]
        return pop if n_padded == m else jax.tree.map(lambda v: v[:m], pop)
    if batch_size is None and m > 4096:
        batch_size = 1024
    if batch_size is not None:
        pop = _generate_jit(hnet, conditions, int(batch_size))
        return jax.tree.map(lambda v: v.reshape(m, *v.shape[2:]), pop)
    return _generate_jit(hnet, conditions, None)


def generate_and_evaluate(
    hnet: HyperNet,
    conditions: Mapping[str, Any],
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array | None = None,
    batch_size: int = 32,
) -> dict[str, jax.Array]:
    """Generates and evaluates `M` targets on `(x, y)` chunk by chunk; never holds more than
    `batch_size` generated networks at once (small chunks stay in cache: on a 2-core CPU,
    chunks of 8-32 ran about 1.8x faster than 256 in `bench/hypernet.py`). Each chunk is
    evaluated by `hyper.train.evaluate`.

    Returns:
      ``{"loss": [M], "acc": [M]}``.
    """
    _check_batch_size(batch_size)
    m = hnet.validate(conditions)
    x, y = jnp.asarray(x), jnp.asarray(y)
    t = hnet.target
    if t.input_shape is not None and tuple(x.shape[1:]) != tuple(t.input_shape):
        raise WeightspaceError(
            f"inputs have shape {x.shape[1:]}, target {t.name} takes {t.input_shape}"
        )
    if y.shape != x.shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
        raise WeightspaceError(
            f"labels must be ints of shape ({x.shape[0]},), got {y.dtype}{y.shape}"
        )
    conditions = cond_lib.fill_noise(
        hnet.specs, {k: jnp.asarray(v) for k, v in conditions.items()}, key, m
    )
    batch_size = min(int(batch_size), m)  # no padding beyond one chunk of M
    chunks = math.ceil(m / batch_size)
    pad = chunks * batch_size - m
    padded = jax.tree.map(
        lambda v: jnp.concatenate([v, jnp.repeat(v[-1:], pad, 0)]) if pad else v, conditions
    )
    out = _gen_eval_jit(hnet, padded, x, y, batch_size)
    return {k: v[:m] for k, v in out.items()}


@nnx.jit(static_argnames=("batch_size",))
def _gen_eval_jit(hnet, conditions, x, y, batch_size):
    chunks = jax.tree.leaves(conditions)[0].shape[0] // batch_size
    cs = jax.tree.map(lambda v: v.reshape(chunks, batch_size, *v.shape[1:]), conditions)

    def one(c):
        return train_lib.evaluate(hnet.target, hnet(c), x, y)

    res = jax.lax.map(one, cs)
    return {k: v.reshape(-1) for k, v in res.items()}


def norm_slope(
    hnet: HyperNet, name: str, values: Any, base: Mapping[str, Any] | None = None
) -> float:
    """Slope of log‖θ‖ against log‖γ‖ when continuous condition `name` sweeps `values`.

    The paper's mechanism: with raw inputs and a positively homogeneous backbone the
    generated weights scale with the input (slope ≈ 1); MIP's encoding and residual make
    them magnitude invariant (slope ≈ 0). Other conditions are taken from `base` (first
    row) or set to the middle of their range.
    """
    spec = {s.name: s for s in hnet.specs}.get(name)
    if not isinstance(spec, Continuous):
        raise WeightspaceError(f"norm_slope: {name!r} is not a continuous condition")
    values = np.asarray(values, np.float32)
    m = values.shape[0]
    conds: dict[str, Any] = {}
    for s in hnet.specs:
        if s.name == name:
            conds[name] = values.reshape(m, *s.shape) if s.shape else values
        elif base is not None and s.name in base:
            conds[s.name] = jnp.repeat(jnp.asarray(base[s.name])[:1], m, 0)
        elif isinstance(s, Continuous):
            conds[s.name] = jnp.full((m, *s.shape), (s.low + s.high) / 2)
        elif isinstance(s, Categorical):
            conds[s.name] = jnp.zeros((m,), jnp.int32)
        else:
            conds[s.name] = jnp.zeros((m, s.dim))
    pop = generate(hnet, conds)
    flat = flatten_dict(pop)
    theta = jnp.concatenate([flat[p].reshape(m, -1) for p in hnet.gen_paths], 1)
    g = (values.reshape(m, -1) - spec.low) / (spec.high - spec.low)
    lg = np.log(np.linalg.norm(g, axis=1) + 1e-12)
    lt = np.log(np.asarray(jnp.linalg.norm(theta, axis=1)) + 1e-12)
    return float(np.polyfit(lg, lt, 1)[0])


def delta_ratio(hnet: HyperNet, conditions: Mapping[str, Any], *, key: jax.Array | None = None):
    """‖Δθ‖/‖θ0‖ per generated tensor, averaged over a batch of conditions.

    Δθ is the heads' output (θ − θ0 with the residual parametrization). A ratio near 0
    means the hypernet barely moves its targets away from θ0; MIP's split init starts it
    small for large tensors.

    Returns:
      ``{leaf path: mean ratio}`` (θ0 norms below 1e-12 count as 1e-12).
    """
    m = hnet.validate(conditions)
    conds = cond_lib.fill_noise(
        hnet.specs, {k: jnp.asarray(v) for k, v in conditions.items()}, key, m
    )
    deltas = hnet.deltas(hnet.features(conds))
    flat0 = flatten_dict(hnet.theta0_params())
    out = {}
    for path, d in zip(hnet.gen_paths, deltas, strict=True):
        num = jnp.linalg.norm(d.reshape(m, -1), axis=1)
        den = jnp.maximum(jnp.linalg.norm(flat0[path]), 1e-12)
        out[path] = float(jnp.mean(num / den))
    return out
