"""The parts of the weight generative model (`generators.weightgen`): its configuration, the
per-layer normalisation of flattened weights, the autoencoder, the latent velocity network,
condition vectors and the flow-matching sampler.

- **Normalisation** is per leaf of the `Target` spec (a kernel, a bias, a norm scale: the
  "layers" of Hyper-Representations' layer-wise normalisation): one mean and one standard
  deviation over the population and the leaf's entries. The layout is the spec's
  (`hyper.population.flatten`), so nothing here knows an architecture.
- **Autoencoder** (MLP): ``P -> hidden -> hidden -> latent`` with a parameter-free
  LayerNorm on the latent (so that the latent-noise augmentation has a fixed scale and the
  encoder cannot inflate its latents to escape it), and the mirror decoder. An MLP rather
  than p-diff's 1-D convolution: the flattened vector of a small network has no
  translation structure a convolution could share (leaves of different roles sit side by
  side), and at the sizes we target (up to ~100k parameters) one dense layer of `hidden`
  units is affordable.
- **Velocity network**: an MLP of residual blocks over the latent, modulated (FiLM) by a
  time embedding plus a condition embedding; a learned null embedding stands for "no
  condition" (classifier-free guidance).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hyper.errors import WeightspaceError, WeightspaceTypeError
from hyper.target import Target

__all__ = [
    "CONDITIONS",
    "LatentVelocity",
    "WeightAutoencoder",
    "WeightGenConfig",
    "condition_vectors",
    "denormalize",
    "flow_sample",
    "leaf_statistics",
    "normalize",
]

CONDITIONS = (None, "accuracy", "task")


@dataclasses.dataclass(frozen=True)
class WeightGenConfig:
    """Hyperparameters of a weight generative model (all JSON-serialisable).

    Attributes:
      condition: None (unconditional), ``"accuracy"`` (a target test accuracy in [0, 1])
        or ``"task"`` (a multi-hot class subset).
      seed: the root seed of initialisation, batches and noise.
      latent_dim: size of the autoencoder's latent.
      ae_hidden: width of the autoencoder's hidden layers.
      ae_steps: autoencoder training steps.
      input_noise: std of the noise added to normalised weights in autoencoder training
        (p-diff: 0.001).
      latent_noise: std of the noise added to the (unit-scale) latent in autoencoder
        training (p-diff adds 0.5 to an unnormalised latent).
      flow_hidden: width of the velocity network.
      flow_blocks: residual blocks of the velocity network.
      flow_steps: flow-matching training steps.
      batch_size: networks per training step.
      learning_rate: Adam(W) learning rate of both stages.
      weight_decay: AdamW weight decay.
      functional_weight: weight of the autoencoder's functional term (the KL divergence
        from each network's predictions to its reconstruction's on example inputs;
        `generators.weightgen_train`); 0: p-diff's squared error alone. Training with it
        needs the task's example inputs (`weightgen.train(inputs=...)`).
      functional_batch: example inputs per step of the functional term.
      lr_schedule: ``"cosine"`` (the learning rate of each stage decays to 0 over its
        steps) or ``"constant"`` (the generators saved before this field).
      cond_dropout: probability of dropping the condition in training (classifier-free
        guidance).
      guidance: default guidance weight at sampling (1: the conditional model alone;
        above 1: pushed away from the unconditional one).
      sample_steps: Euler steps of the flow ODE at sampling.
      checkpoint_every: steps between checkpoints (and jitted training chunks).
    """

    condition: str | None = None
    seed: int = 0
    latent_dim: int = 64
    ae_hidden: int = 256
    ae_steps: int = 2000
    input_noise: float = 0.001
    latent_noise: float = 0.1
    flow_hidden: int = 256
    flow_blocks: int = 3
    flow_steps: int = 4000
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    functional_weight: float = 0.0
    functional_batch: int = 128
    lr_schedule: str = "constant"
    cond_dropout: float = 0.1
    guidance: float = 1.0
    sample_steps: int = 32
    checkpoint_every: int = 500

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise WeightspaceError(
                f"WeightGenConfig.condition: {self.condition!r} is not one of {list(CONDITIONS)}"
            )
        ints = (
            "latent_dim",
            "ae_hidden",
            "flow_hidden",
            "flow_blocks",
            "batch_size",
            "sample_steps",
            "checkpoint_every",
            "functional_batch",
        )
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise WeightspaceError(f"WeightGenConfig.{name} must be an int >= 1, got {v!r}")
        if not 0 <= self.seed < 2**32:
            raise WeightspaceError(f"WeightGenConfig.seed must be in [0, 2**32), got {self.seed!r}")
        for name in ("ae_steps", "flow_steps", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
                raise WeightspaceError(f"WeightGenConfig.{name} must be an int >= 0, got {v!r}")
        numbers = ("input_noise", "latent_noise", "learning_rate", "weight_decay", "guidance")
        for name in (*numbers, "functional_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise WeightspaceError(f"WeightGenConfig.{name} must be a number, got {v!r}")
            if v < 0 or (name == "learning_rate" and v == 0):
                raise WeightspaceError(f"WeightGenConfig.{name} must be positive, got {v!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise WeightspaceError(
                f"WeightGenConfig.lr_schedule must be 'cosine' or 'constant', "
                f"got {self.lr_schedule!r}"
            )
        if not 0.0 <= self.cond_dropout < 1.0:
            raise WeightspaceError(
                f"WeightGenConfig.cond_dropout must be in [0, 1), got {self.cond_dropout!r}"
            )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> WeightGenConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise WeightspaceError(f"WeightGenConfig: unknown fields {unknown}")
        # saved before the field existed: those generators trained at a constant rate
        return cls(**{"lr_schedule": "constant", **dict(d)})


# ---------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------


def leaf_statistics(target: Target, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-leaf mean and std `[leaves]` of a flattened population `[N, P]` (spec order);
    a constant leaf gets std 1."""
    mean, std, offset = [], [], 0
    for s in target.spec:
        block = np.asarray(matrix[:, offset : offset + s.size], np.float64)
        offset += s.size
        mean.append(block.mean() if block.size else 0.0)
        sd = block.std() if block.size else 0.0
        std.append(sd if sd > 1e-12 else 1.0)
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def _expand(layout: Target | tuple[int, ...], per_leaf: jax.Array) -> jax.Array:
    sizes = np.asarray(
        [s.size for s in layout.spec] if isinstance(layout, Target) else layout, np.int64
    )
    return jnp.repeat(per_leaf, sizes, total_repeat_length=int(sizes.sum()))


def normalize(
    layout: Target | tuple[int, ...], matrix: jax.Array, mean: jax.Array, std: jax.Array
) -> jax.Array:
    """`[N, P]` weights -> per-leaf standardised weights; `layout` is the target or its
    leaves' sizes in spec order, `mean` and `std` are `[leaves]`."""
    return (matrix - _expand(layout, mean)[None, :]) / _expand(layout, std)[None, :]


def denormalize(
    layout: Target | tuple[int, ...], matrix: jax.Array, mean: jax.Array, std: jax.Array
) -> jax.Array:
    """Inverse of `normalize`."""
    return matrix * _expand(layout, std)[None, :] + _expand(layout, mean)[None, :]


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------


class WeightAutoencoder(nnx.Module):
    """MLP autoencoder of normalised flattened weights `[B, P]` <-> latents `[B, latent]`."""

    def __init__(self, num_params: int, latent_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.enc_in = nnx.Linear(num_params, hidden, rngs=rngs)
        self.enc_norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.enc_mid = nnx.Linear(hidden, hidden, rngs=rngs)
        self.enc_out = nnx.Linear(hidden, latent_dim, rngs=rngs)
        # parameter-free: the latent has unit scale per network
        self.latent_norm = nnx.LayerNorm(latent_dim, use_scale=False, use_bias=False, rngs=rngs)
        self.dec_in = nnx.Linear(latent_dim, hidden, rngs=rngs)
        self.dec_norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.dec_mid = nnx.Linear(hidden, hidden, rngs=rngs)
        self.dec_out = nnx.Linear(hidden, num_params, rngs=rngs)

    def encode(self, x: jax.Array) -> jax.Array:
        h = nnx.silu(self.enc_norm(self.enc_in(x)))
        h = nnx.silu(self.enc_mid(h))
        return self.latent_norm(self.enc_out(h))

    def decode(self, z: jax.Array) -> jax.Array:
        h = nnx.silu(self.dec_norm(self.dec_in(z)))
        h = nnx.silu(self.dec_mid(h))
        return self.dec_out(h)


class _Block(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(hidden, use_scale=False, use_bias=False, rngs=rngs)
        self.film = nnx.Linear(hidden, 2 * hidden, rngs=rngs)
        self.fc1 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)

    def __call__(self, h: jax.Array, e: jax.Array) -> jax.Array:
        scale, shift = jnp.split(self.film(e), 2, axis=-1)
        y = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(nnx.silu(self.fc1(y)))


class LatentVelocity(nnx.Module):
    """The flow-matching velocity ``v(z_t, t, c)`` over latents `[B, latent]`.

    Args:
      latent_dim: latent size.
      cond_dim: condition vector size (0: unconditional).
      hidden: width.
      blocks: residual blocks.
    """

    def __init__(self, latent_dim: int, cond_dim: int, hidden: int, blocks: int, *, rngs):
        self.cond_dim = cond_dim
        self.inp = nnx.Linear(latent_dim, hidden, rngs=rngs)
        self.time1 = nnx.Linear(32, hidden, rngs=rngs)
        self.time2 = nnx.Linear(hidden, hidden, rngs=rngs)
        if cond_dim:
            self.cond1 = nnx.Linear(cond_dim, hidden, rngs=rngs)
            self.cond2 = nnx.Linear(hidden, hidden, rngs=rngs)
            self.null = nnx.Param(jnp.zeros((hidden,)))
        self.blocks = nnx.List([_Block(hidden, rngs=rngs) for _ in range(blocks)])
        self.out_norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, latent_dim, rngs=rngs)

    def __call__(
        self, z: jax.Array, t: jax.Array, c: jax.Array | None, keep: jax.Array | None
    ) -> jax.Array:
        """`z` `[B, L]`, `t` `[B]` in [0, 1], `c` `[B, cond_dim]`, `keep` `[B]` (1: use the
        condition, 0: the null embedding)."""
        freqs = jnp.exp(jnp.linspace(0.0, math.log(1000.0), 16))
        tt = t[:, None] * freqs[None, :]
        e = self.time2(nnx.silu(self.time1(jnp.concatenate([jnp.sin(tt), jnp.cos(tt)], -1))))
        if self.cond_dim:
            ce = self.cond2(nnx.silu(self.cond1(c)))
            k = keep[:, None].astype(ce.dtype)
            e = e + k * ce + (1 - k) * self.null[...][None, :]
        e = nnx.silu(e)
        h = self.inp(z)
        for b in self.blocks:
            h = b(h, e)
        return self.out(nnx.silu(self.out_norm(h)))


# ---------------------------------------------------------------------------------------
# Conditions and sampling
# ---------------------------------------------------------------------------------------


def condition_vectors(
    condition: str | None,
    n: int,
    *,
    accuracy: Any = None,
    classes: Any = None,
    num_classes: int = 0,
    acc_stats: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """The model's condition input `[n, cond_dim]` (float32; `[n, 0]` unconditional).

    Args:
      accuracy: a float in [0, 1] or `[n]` of them (condition ``"accuracy"``); stored
        standardised by the training accuracies' `acc_stats` (mean, std).
      classes: a list of class indices (one task for all) or a multi-hot `[n, C]` array.

    Raises:
      WeightspaceError: a missing, extra or malformed condition.
    """
    if condition is None:
        if accuracy is not None or classes is not None:
            raise WeightspaceError(
                "this weight generator is unconditional; give neither accuracy nor classes"
            )
        return np.zeros((n, 0), np.float32)
    if condition == "accuracy":
        if classes is not None or accuracy is None:
            raise WeightspaceError("this weight generator is conditioned on accuracy; give it")
        a = np.asarray(accuracy, np.float64)
        if a.ndim == 0:
            a = np.full((n,), float(a))
        if a.shape != (n,) or not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
            raise WeightspaceError(
                f"accuracy must be a number or [{n}] numbers in [0, 1], got shape {a.shape}"
            )
        mean, std = acc_stats
        return ((a - mean) / std).astype(np.float32)[:, None]
    if accuracy is not None or classes is None:
        raise WeightspaceError("this weight generator is conditioned on a task; give classes")
    if isinstance(classes, list | tuple) and all(
        isinstance(c, int | np.integer) and not isinstance(c, bool) for c in classes
    ):
        bad = [c for c in classes if not 0 <= c < num_classes]
        if not classes or bad:
            raise WeightspaceError(
                f"classes {list(classes)}: give class indices in 0..{num_classes - 1}"
            )
        v = np.zeros((n, num_classes), np.float32)
        v[:, list(classes)] = 1.0
        return v
    try:
        v = np.asarray(classes, np.float32)
    except (TypeError, ValueError):
        raise WeightspaceTypeError(
            "classes must be a list of class indices or a multi-hot [n, C] array"
        ) from None
    if v.shape != (n, num_classes) or not np.all((v == 0) | (v == 1)):
        raise WeightspaceError(
            f"classes must be a list of class indices or a 0/1 array of shape "
            f"({n}, {num_classes}), got shape {v.shape}"
        )
    return v


def flow_sample(
    velocity: LatentVelocity,
    noise: jax.Array,
    cond: jax.Array,
    guidance: jax.Array,
    steps: int,
) -> jax.Array:
    """Integrates the flow ODE from `noise` `[B, L]` (t=0) to latents (t=1) with `steps`
    Euler steps; with a condition, classifier-free guidance
    ``v = v_null + guidance * (v_cond - v_null)`` (both in one batched call)."""
    b = noise.shape[0]
    dt = 1.0 / steps

    def step(i, z):
        t = jnp.full((b,), i * dt, z.dtype)
        if not velocity.cond_dim:
            return z + dt * velocity(z, t, None, None)
        zz = jnp.concatenate([z, z])
        keep = jnp.concatenate([jnp.ones((b,)), jnp.zeros((b,))])
        v = velocity(zz, jnp.concatenate([t, t]), jnp.concatenate([cond, cond]), keep)
        v_c, v_u = v[:b], v[b:]
        return z + dt * (v_u + guidance * (v_c - v_u))

    return jax.lax.fori_loop(0, steps, step, noise)
