"""The training programs of the weight generative model (`generators.weightgen.train`): one
jitted chunk of steps per stage, the autoencoder's and the flow's.

**The autoencoder's loss** is the mean squared error of the normalised weights (p-diff's),
plus, with ``config.functional_weight > 0``, a *functional* term: the KL divergence from
each training network's predictions to its reconstruction's, on a batch of example inputs
drawn every step (``config.functional_batch`` of them, shared by the networks of the step's
batch). The squared error weighs every coordinate alike, but a network's function does not:
a convolutional network whose kernels are reconstructed to 3% loses most of its accuracy,
and the latent-noise augmentation makes the decoder map a neighbourhood of each latent to
weights that must still *compute* the same predictions. The reconstructions run through the
target's own forward pass (`Target.pure_apply`, vmapped over the batch of networks), so the
term knows no architecture.

Both programs are cached by the configuration fields they read (`program_key`), so runs
that differ only in seed or in the other stage share a compiled program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from generators.weightgen_nets import WeightGenConfig, denormalize
from hyper import population as pop_ops
from hyper.conv_matmul import for_populations
from hyper.optimizers import make_optimizer
from hyper.target import Target

__all__ = ["AE_FIELDS", "FLOW_FIELDS", "autoencoder_chunk", "flow_chunk", "program_key"]

_COMMON = ("batch_size", "learning_rate", "weight_decay", "lr_schedule")
AE_FIELDS = (*_COMMON, "ae_steps", "input_noise", "latent_noise", "functional_weight",
             "functional_batch")  # fmt: skip
"""The `WeightGenConfig` fields the autoencoder stage's program reads (its cache key)."""
FLOW_FIELDS = (*_COMMON, "flow_steps", "condition", "cond_dropout")
"""The `WeightGenConfig` fields the flow stage's program reads (its cache key)."""


def _optimizer(config: WeightGenConfig, steps: int):
    """AdamW over one stage of `steps` steps, its learning rate constant or cosine-decayed
    to 0 over the stage (``config.lr_schedule``)."""
    cosine = config.lr_schedule == "cosine" and steps > 0
    return make_optimizer(
        "adam",
        config.learning_rate,
        schedule="cosine" if cosine else None,
        steps=steps if cosine else None,
        weight_decay=config.weight_decay,
    )


def program_key(config: WeightGenConfig, fields: tuple[str, ...]) -> WeightGenConfig:
    """`config` with every field but `fields` at its default: the cache key of a training
    program that reads only `fields` (runs differing in seed or the other stage share it)."""
    return WeightGenConfig(**{f: getattr(config, f) for f in fields})


def _run_chunk(opt, loss_fn, batch_size: int):
    """Jitted: ``length`` steps of `loss_fn` from step ``start`` (scan); the step's batch and
    noise keys come from ``fold_in(root, step)``, so a resumed run repeats them exactly.
    ``data`` is the per-network array the batch indexes; ``extra`` goes to `loss_fn`."""

    @jax.jit
    def run(state, opt_state, data, extra, root, start, length):
        def body(carry, s):
            state, opt_state = carry
            kb, kn = jax.random.split(jax.random.fold_in(root, s))
            idx = jax.random.randint(kb, (batch_size,), 0, jax.tree.leaves(data)[0].shape[0])
            batch = jax.tree.map(lambda a: a[idx], data)
            loss, g = jax.value_and_grad(loss_fn)(state, batch, extra, kn)
            upd, opt_state = opt.update(g, opt_state, state)
            return (optax.apply_updates(state, upd), opt_state), loss

        steps = start + jnp.arange(length.shape[0])
        (state, opt_state), losses = jax.lax.scan(body, (state, opt_state), steps)
        return state, opt_state, jnp.mean(losses)

    return run


@functools.lru_cache(maxsize=16)
def autoencoder_chunk(ae_def, config: WeightGenConfig, target: Target | None = None):
    """``(optimizer, run)`` of the autoencoder stage.

    ``run(state, opt_state, xn [N, P], extra, root, start, length)``: `extra` is
    ``(inputs [E, ...], leaf_mean, leaf_std)`` for the functional term (`target` given and
    ``config.functional_weight > 0``), else ``()``.
    """
    opt = _optimizer(config, config.ae_steps)
    functional = target is not None and config.functional_weight > 0
    apply = jax.vmap(for_populations(target.pure_apply), in_axes=(0, None)) if functional else None

    def loss_fn(state, x, extra, key):
        ae = nnx.merge(ae_def, state)
        k1, k2 = jax.random.split(key)
        z = ae.encode(x + config.input_noise * jax.random.normal(k1, x.shape))
        rec = ae.decode(z + config.latent_noise * jax.random.normal(k2, z.shape))
        mse = jnp.mean(jnp.square(rec - x))
        if not functional:
            return mse
        inputs, mean, std = extra
        pick = jax.random.randint(
            jax.random.fold_in(key, 2), (config.functional_batch,), 0, inputs.shape[0]
        )
        xb = inputs[pick]

        def log_probs(w):
            logits = apply(pop_ops.unflatten(target, denormalize(target, w, mean, std)), xb)
            return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

        ref = jax.lax.stop_gradient(log_probs(x))
        kl = jnp.mean(jnp.sum(jnp.exp(ref) * (ref - log_probs(rec)), axis=-1))
        return mse + config.functional_weight * kl

    return opt, _run_chunk(opt, loss_fn, config.batch_size)


@functools.lru_cache(maxsize=16)
def flow_chunk(v_def, config: WeightGenConfig):
    """``(optimizer, run)`` of the flow-matching stage: ``run(state, opt_state, (latents,
    cond), (), root, start, length)``."""
    opt = _optimizer(config, config.flow_steps)
    conditional = config.condition is not None

    def loss_fn(state, batch, extra, key):
        z1, c = batch
        vel = nnx.merge(v_def, state)
        k0, kt, kd = jax.random.split(key, 3)
        z0 = jax.random.normal(k0, z1.shape)
        t = jax.random.uniform(kt, (z1.shape[0],))
        zt = (1 - t[:, None]) * z0 + t[:, None] * z1
        keep = jax.random.bernoulli(kd, 1 - config.cond_dropout, (z1.shape[0],))
        v = vel(zt, t, c if conditional else None, keep if conditional else None)
        return jnp.mean(jnp.square(v - (z1 - z0)))

    return opt, _run_chunk(opt, loss_fn, config.batch_size)
