"""Generative models of weights: a latent flow-matching model over a zoo of one `Target`.

p-diff's recipe (Wang et al. 2024) made architecture-generic and conditional:

1. the population's parameters are flattened in the spec's layout and normalised per leaf
   (`generators.weightgen_nets.leaf_statistics`);
2. an MLP autoencoder (`WeightAutoencoder`) learns a latent of each network, with p-diff's
   noise augmentation on its input (the weights) and on its latent;
3. a generative model learns the distribution of the (standardised) latents, optionally
   conditioned on a target test accuracy (G.pt) or on a task, a multi-hot class subset
   (Tina), with classifier-free guidance (the condition is dropped in training with
   probability ``cond_dropout``; sampling mixes the two velocities with ``guidance``);
4. sampling integrates noise to latents, decodes and de-normalises: a population.

The latent model is **flow matching** (a straight-line probability path, velocity
prediction, Euler integration), not p-diff's 1000-step DDPM: one loss without a noise
schedule to tune, and a deterministic ODE that samples well in a few tens of steps, which
is what makes thousands of networks per second on a CPU possible; classifier-free guidance
applies to velocities exactly as to DDPM noise predictions.

`train` is resumable: with ``out_dir`` every ``checkpoint_every`` steps is an Orbax
checkpoint (`hyper.checkpoint.PopulationCheckpointer`) of both networks and optimizer
states; the batches and noises of step ``s`` come from ``fold_in(key(seed), s)``, so a run
resumed from any checkpoint ends with the same weights as an uninterrupted one.
`write_generated_zoo` writes sampled networks through the one zoo writer
(`hyper.zoo_format.write_zoo`), so `hyper.zoo.load` and everything downstream read them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from generators.weightgen_nets import (
    LatentVelocity,
    WeightAutoencoder,
    WeightGenConfig,
    condition_vectors,
    denormalize,
    flow_sample,
    leaf_statistics,
    normalize,
)
from generators.weightgen_train import (
    AE_FIELDS,
    FLOW_FIELDS,
    autoencoder_chunk,
    flow_chunk,
    program_key,
)
from hyper import population as pop_ops
from hyper import zoo_format
from hyper.checkpoint import (
    CheckpointError,
    PopulationCheckpointer,
    prepare_dir,
    target_from_stored,
)
from hyper.errors import WeightspaceError
from hyper.target import Params, Target

__all__ = ["WeightGen", "WeightGenConfig", "train", "write_generated_zoo"]

FORMAT = "weightspace-weightgen"
_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def _flat_leaves(tree: Any) -> dict[str, Any]:
    return {f"{i:05d}": v for i, v in enumerate(jax.tree.leaves(tree))}


def _unflat_leaves(like: Any, flat: Mapping[str, Any]) -> Any:
    return jax.tree.unflatten(jax.tree.structure(like), [flat[k] for k in sorted(flat)])


class WeightGen:
    """A trained weight generator of one `Target`.

    Attributes:
      target: the networks' target.
      config: the `WeightGenConfig`.
      autoencoder, velocity: the two NNX networks.
      stats: normalisation arrays: ``leaf_mean``, ``leaf_std`` `[leaves]`, ``latent_mean``,
        ``latent_std`` `[latent]`.
      num_classes: the task vector's size (condition ``"task"``), else 0.
      acc_stats: mean and std of the training accuracies (condition ``"accuracy"``).
      metadata: JSON-able facts about the training data (source zoo, dataset, ...).
      history: mean loss per training chunk.
    """

    def __init__(
        self,
        target: Target,
        config: WeightGenConfig,
        autoencoder: WeightAutoencoder,
        velocity: LatentVelocity,
        stats: Mapping[str, Any],
        *,
        num_classes: int = 0,
        acc_stats: tuple[float, float] = (0.0, 1.0),
        metadata: Mapping[str, Any] | None = None,
        history: Sequence[Mapping[str, Any]] = (),
    ):
        self.target, self.config = target, config
        self.autoencoder, self.velocity = autoencoder, velocity
        self.stats = {k: jnp.asarray(v, jnp.float32) for k, v in stats.items()}
        self.num_classes, self.acc_stats = int(num_classes), tuple(map(float, acc_stats))
        self.metadata, self.history = dict(metadata or {}), list(history)

    @property
    def cond_dim(self) -> int:
        return {None: 0, "accuracy": 1, "task": self.num_classes}[self.config.condition]

    # --- encoding -------------------------------------------------------------------------

    def encode(self, params: Params) -> jax.Array:
        """Latents `[N, latent]` (before standardisation) of a population."""
        x = pop_ops.flatten(self.target, params)
        x = normalize(self.target, x, self.stats["leaf_mean"], self.stats["leaf_std"])
        return self.autoencoder.encode(x)

    def reconstruct(self, params: Params) -> Params:
        """The population passed through the autoencoder (no noise)."""
        x = self.autoencoder.decode(self.encode(params))
        x = denormalize(self.target, x, self.stats["leaf_mean"], self.stats["leaf_std"])
        return pop_ops.unflatten(self.target, x)

    # --- sampling -------------------------------------------------------------------------

    def _program(self):
        ae_def, ae_state = nnx.split(self.autoencoder)
        v_def, v_state = nnx.split(self.velocity)
        sizes = tuple(s.size for s in self.target.spec)
        return _sample_program(ae_def, v_def, sizes, self.config.sample_steps), ae_state, v_state

    def sample(
        self,
        key: jax.Array,
        n: int,
        *,
        accuracy: Any = None,
        classes: Any = None,
        guidance: float | None = None,
        temperature: float = 1.0,
        chunk: int = 256,
        progress: bool = False,
    ) -> Params:
        """`n` generated networks: a population `[n, ...]` of `target`.

        One jitted program per chunk size samples the flow and decodes `chunk` networks at
        a time (the last chunk padded), so memory is bounded by `chunk`. Network ``i`` is
        drawn from ``split(key, n)[i]``: the same key and `n` give the same networks, for
        any `chunk`.

        Args:
          key: a `jax.random` key.
          n: how many networks.
          accuracy: condition ``"accuracy"``: a float in [0, 1] or `[n]` of them.
          classes: condition ``"task"``: class indices (one task) or a multi-hot `[n, C]`.
            A conditioned generator given neither samples unconditionally (its learned
            null condition, the classifier-free-guidance branch; `guidance` is ignored).
          guidance: classifier-free guidance weight (default: the config's).
          temperature: the scale of the initial noise (1: the learned distribution; below
            1 the samples move towards the latents' dense regions, trading novelty for
            accuracy, as in low-temperature sampling of flows and GANs' truncation).
          chunk: networks per jitted call.
          progress: show a progress bar over the chunks.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise WeightspaceError(f"sample: n must be a positive int, got {n!r}")
        if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
            raise WeightspaceError(f"sample: chunk must be a positive int, got {chunk!r}")
        g = self.config.guidance if guidance is None else guidance
        if self.config.condition is not None and accuracy is None and classes is None:
            # Unprompted: the learned null condition alone (guidance 0 ignores the vector).
            width = 1 if self.config.condition == "accuracy" else self.num_classes
            cond, g = np.zeros((n, width), np.float32), 0.0
        else:
            cond = condition_vectors(
                self.config.condition,
                n,
                accuracy=accuracy,
                classes=classes,
                num_classes=self.num_classes,
                acc_stats=self.acc_stats,
            )
        for name, v, given in (("guidance", g, guidance), ("temperature", temperature, None)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
                raise WeightspaceError(f"sample: {name} must be a number, got {given or v!r}")
        if temperature < 0:
            raise WeightspaceError(f"sample: temperature must be >= 0, got {temperature!r}")
        chunk = min(int(chunk), int(n))
        run, ae_state, v_state = self._program()
        keys = jax.random.split(key, n)
        parts = []
        for lo in tqdm(range(0, n, chunk), disable=not progress, desc="sample", unit="chunk"):
            k, c = keys[lo : lo + chunk], cond[lo : lo + chunk]
            pad = chunk - k.shape[0]
            if pad:
                k = jnp.concatenate([k, jnp.broadcast_to(k[:1], (pad, *k.shape[1:]))])
                c = np.concatenate([c, np.repeat(c[:1], pad, axis=0)])
            g_t = (jnp.float32(g), jnp.float32(temperature))
            x = run(ae_state, v_state, self.stats, k, jnp.asarray(c), *g_t)
            parts.append(x[: chunk - pad])
        x = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        return pop_ops.unflatten(self.target, x)

    # --- persistence ----------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        t = self.target
        return {
            "format": FORMAT,
            "version": 1,
            "config": self.config.to_json(),
            "target": {"name": t.name, "config": t.config, "spec": t.spec_json()},
            "num_classes": self.num_classes,
            "acc_stats": list(self.acc_stats),
            "metadata": self.metadata,
            "history": self.history,
        }

    def _arrays(self) -> dict[str, Any]:
        return {
            "autoencoder": nnx.to_pure_dict(nnx.state(self.autoencoder)),
            "velocity": nnx.to_pure_dict(nnx.state(self.velocity)),
            "stats": dict(self.stats),
        }

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> str:
        """Saves the generator (both networks, statistics, config, target) to `directory`;
        returns the absolute directory."""
        d = prepare_dir(directory, overwrite=overwrite, holds="weight generator")
        with PopulationCheckpointer(d) as ckpt:
            ckpt.save(0, self._arrays(), meta=self._meta())
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, *, target: Target | None = None) -> WeightGen:
        """Loads what `save` (or `train` with ``out_dir``: its ``model/``) wrote.

        Args:
          target: the target to restore against (default: rebuilt from the stored config).

        Raises:
          CheckpointError: no weight generator in `directory`.
        """
        d = os.path.abspath(os.fspath(directory))
        if os.path.isdir(os.path.join(d, "model")):  # a training run's directory
            d = os.path.join(d, "model")
        if not os.path.isdir(d):
            raise CheckpointError(f"no weight generator at {d}")
        with PopulationCheckpointer(d, read_only=True) as ckpt:
            steps = ckpt.steps()
            meta = ckpt.restore_meta(steps[-1]) if steps else {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{d} holds no weight generator")
            if target is None:
                target = target_from_stored(meta["target"]["config"], d)
            stored = [s["path"] for s in meta["target"]["spec"]]
            if stored != target.paths:
                raise CheckpointError(f"{d}: stored leaves {stored} do not match {target.paths}")
            config = WeightGenConfig.from_json(meta["config"])
            gen = _build(target, config, meta["num_classes"], abstract=True)
            arrays, _ = ckpt.restore(steps[-1], gen._arrays())
        _load_state(gen.autoencoder, arrays["autoencoder"])
        _load_state(gen.velocity, arrays["velocity"])
        gen.stats = {k: jnp.asarray(v) for k, v in arrays["stats"].items()}
        gen.acc_stats = tuple(meta["acc_stats"])
        gen.metadata, gen.history = meta["metadata"], meta["history"]
        return gen


@functools.lru_cache(maxsize=16)
def _sample_program(ae_def, v_def, sizes: tuple[int, ...], steps: int):
    """The jitted sampler of one generator structure: per-network keys `[B]` and
    conditions `[B, D]` -> flattened weights `[B, P]` (compiled once per chunk size; the
    guidance weight and the noise temperature are arguments, not constants)."""

    @jax.jit
    def run(ae_state, v_state, stats, keys, cond, guidance, temperature):
        ae, vel = nnx.merge(ae_def, ae_state), nnx.merge(v_def, v_state)
        shape = stats["latent_mean"].shape
        noise = temperature * jax.vmap(lambda k: jax.random.normal(k, shape))(keys)
        z = flow_sample(vel, noise, cond, guidance, steps)
        z = z * stats["latent_std"][None, :] + stats["latent_mean"][None, :]
        x = ae.decode(z)
        return denormalize(sizes, x, stats["leaf_mean"], stats["leaf_std"])

    return run


@functools.lru_cache(maxsize=16)
def _encode_program(ae_def):
    """Jitted: autoencoder state, normalised weights `[N, P]` -> latents, their per-dimension
    mean and std."""

    @jax.jit
    def run(ae_state, xn):
        z = nnx.merge(ae_def, ae_state).encode(xn)
        return z, jnp.mean(z, 0), jnp.maximum(jnp.std(z, 0), 1e-6)

    return run


def _load_state(module: nnx.Module, pure: Mapping[str, Any]) -> None:
    state = nnx.state(module)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)


@functools.lru_cache(maxsize=16)
def _init_program(p: int, latent: int, ae_hidden: int, cond_dim: int, hidden: int, blocks: int):
    """Jitted: seed -> freshly initialised (autoencoder, velocity network), compiled once
    per structure (any seed)."""

    def make(seed):
        rngs = nnx.Rngs(jax.random.key(seed))
        ae = WeightAutoencoder(p, latent, ae_hidden, rngs=rngs)
        return ae, LatentVelocity(latent, cond_dim, hidden, blocks, rngs=rngs)

    return make, nnx.jit(make)


def _build(
    target: Target, config: WeightGenConfig, num_classes: int, *, abstract: bool = False
) -> WeightGen:
    """A freshly initialised generator (networks from ``key(seed)``; `abstract`: shapes
    only, to restore into), unit statistics."""
    p = sum(s.size for s in target.spec)
    cond_dim = {None: 0, "accuracy": 1, "task": num_classes}[config.condition]
    c = config
    make, init = _init_program(p, c.latent_dim, c.ae_hidden, cond_dim, c.flow_hidden, c.flow_blocks)
    seed = jnp.uint32(c.seed)
    ae, vel = nnx.eval_shape(make, seed) if abstract else init(seed)
    n_leaves, width = len(target.spec), config.latent_dim
    stats = {
        "leaf_mean": np.zeros(n_leaves, np.float32),
        "leaf_std": np.ones(n_leaves, np.float32),
        "latent_mean": np.zeros(width, np.float32),
        "latent_std": np.ones(width, np.float32),
    }
    return WeightGen(target, config, ae, vel, stats, num_classes=num_classes)


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


def _check_inputs(target: Target, params: Params, config: WeightGenConfig, inputs: Any):
    if config.functional_weight == 0:
        if inputs is not None:
            raise WeightspaceError("inputs given but config.functional_weight is 0")
        return None
    if inputs is None:
        raise WeightspaceError(
            "config.functional_weight > 0 needs inputs=[E, ...]: example inputs of the "
            "networks' task (their training examples)"
        )
    inputs = jnp.asarray(inputs)  # its own dtype: integer token ids stay integers
    one = jax.tree.map(lambda a: a[0], params)
    try:
        out = jax.eval_shape(target.pure_apply, one, inputs[:1])
    except Exception as e:  # noqa: BLE001 - the target's own error, re-raised with context
        raise WeightspaceError(
            f"weightgen train: the target cannot run on inputs of shape {inputs.shape[1:]}: {e}"
        ) from e
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[1] < 2:
        raise WeightspaceError(  # a KL between class distributions: >= 2 classes
            f"weightgen train: the functional term needs [batch, classes >= 2] logits, got {out}"
        )
    return inputs


def _check_data(target: Target, params: Params, config, accuracy, classes):
    n = target.validate(params, batched=True)
    if n < 2:
        raise WeightspaceError(f"weightgen train: need at least 2 networks, got {n}")
    x = np.asarray(pop_ops.flatten(target, params), np.float32)
    if not np.issubdtype(x.dtype, np.floating) or not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))[:5].tolist()
        raise WeightspaceError(f"weightgen train: networks {bad} have non-finite weights")
    acc_stats, num_classes, cond = (0.0, 1.0), 0, None
    if config.condition != "accuracy" and accuracy is not None:
        raise WeightspaceError(f"accuracy given but config.condition is {config.condition!r}")
    if config.condition != "task" and classes is not None:
        raise WeightspaceError(f"classes given but config.condition is {config.condition!r}")
    if config.condition == "accuracy":
        if accuracy is None:
            raise WeightspaceError("condition 'accuracy' needs accuracy=[N] values in [0, 1]")
        a = np.asarray(accuracy, np.float64)
        if a.shape != (n,) or not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
            raise WeightspaceError(
                f"accuracy must be [{n}] finite values in [0, 1], got shape {a.shape}"
            )
        acc_stats = (float(a.mean()), float(max(a.std(), 1e-3)))
        cond = condition_vectors("accuracy", n, accuracy=a, acc_stats=acc_stats)
    elif config.condition == "task":
        if classes is None:
            raise WeightspaceError("condition 'task' needs classes=[N, C] multi-hot vectors")
        c = np.asarray(classes)
        if c.ndim != 2 or c.shape[0] != n or c.shape[1] < 1:
            raise WeightspaceError(f"classes must be [{n}, C] multi-hot, got shape {c.shape}")
        num_classes = int(c.shape[1])
        cond = condition_vectors("task", n, classes=c, num_classes=num_classes)
    if cond is None:
        cond = np.zeros((n, 0), np.float32)
    return x, cond, acc_stats, num_classes


def train(
    target: Target,
    params: Params,
    *,
    config: WeightGenConfig,
    accuracy: Any = None,
    classes: Any = None,
    inputs: Any = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    stop_after: int | None = None,
) -> WeightGen:
    """Trains a weight generator on a population of `target`.

    Args:
      target: the networks' target.
      params: the training networks, a population `[N, ...]`.
      config: hyperparameters; ``config.condition`` picks the condition.
      accuracy: `[N]` test accuracies in [0, 1] (condition ``"accuracy"``).
      classes: `[N, C]` multi-hot class subsets (condition ``"task"``).
      inputs: example inputs `[E, ...]` of the networks' task (their training examples)
        for the autoencoder's functional term; needed when ``config.functional_weight >
        0`` (`generators.weightgen_train`), refused otherwise.
      out_dir: where checkpoints (``checkpoints/``) and the final model (``model/``) go.
      resume: continue the run in `out_dir` from its last checkpoint (same config and
        data, else `CheckpointError`).
      progress: show a progress bar.
      metadata: JSON-able facts stored with the model (source zoo, dataset).
      overwrite: replace what `out_dir` holds.
      stop_after: train at most this many steps in this call (tests of interruption).

    Returns:
      the generator (after `stop_after`: the generator at that step).
    """
    if not isinstance(config, WeightGenConfig):
        raise WeightspaceError(f"config must be a WeightGenConfig, got {type(config).__name__}")
    if resume and out_dir is None:
        raise WeightspaceError("weightgen train: resume=True needs the run's out_dir")
    x, cond, acc_stats, num_classes = _check_data(target, params, config, accuracy, classes)
    inputs = _check_inputs(target, params, config, inputs)
    gen = _build(target, config, num_classes)
    gen.acc_stats, gen.metadata = acc_stats, dict(metadata or {})
    mean, std = leaf_statistics(target, x)
    gen.stats["leaf_mean"], gen.stats["leaf_std"] = jnp.asarray(mean), jnp.asarray(std)
    xn = normalize(target, jnp.asarray(x), gen.stats["leaf_mean"], gen.stats["leaf_std"])
    cond = jnp.asarray(cond)
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.asarray(cond).tobytes())
    if inputs is not None:
        digest.update(np.ascontiguousarray(inputs).tobytes())
    run_meta = {"config": config.to_json(), "data": digest.hexdigest(), "target": target.config}

    ae_def, ae_state = nnx.split(gen.autoencoder)
    v_def, v_state = nnx.split(gen.velocity)
    functional = config.functional_weight > 0
    ae_key, v_key = program_key(config, AE_FIELDS), program_key(config, FLOW_FIELDS)
    ae_opt, ae_run = autoencoder_chunk(ae_def, ae_key, target if functional else None)
    v_opt, v_run = flow_chunk(v_def, v_key)
    ae_extra = (inputs, gen.stats["leaf_mean"], gen.stats["leaf_std"]) if functional else ()
    ae_opt_state, v_opt_state = ae_opt.init(ae_state), v_opt.init(v_state)
    root = jax.random.key(config.seed)
    k_ae, k_flow = jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)
    total, step, history = config.ae_steps + config.flow_steps, 0, []

    ckpt = model_dir = None
    if out_dir is not None:
        out = os.path.abspath(os.fspath(out_dir))
        model_dir = os.path.join(out, "model")
        if resume and os.path.isdir(model_dir):
            return WeightGen.load(model_dir, target=target)
        if not resume:
            prepare_dir(
                out, overwrite=overwrite, holds="weight generator run", hint="use --overwrite"
            )
        ckpt = PopulationCheckpointer(os.path.join(out, "checkpoints"))
        last = ckpt.latest_step() if resume else None
        if last is not None:
            if ckpt.restore_meta(last).get("run") != json.loads(json.dumps(run_meta)):
                ckpt.close()  # checked before any array is read
                raise CheckpointError(
                    f"{out} holds checkpoints of another weightgen run (different config, "
                    "target or data); use another directory or --overwrite"
                )
            abstract = {
                "ae": nnx.to_pure_dict(ae_state),
                "velocity": nnx.to_pure_dict(v_state),
                "ae_opt": _flat_leaves(ae_opt_state),
                "velocity_opt": _flat_leaves(v_opt_state),
            }
            arrays, meta = ckpt.restore(last, abstract)
            nnx.replace_by_pure_dict(ae_state, arrays["ae"])
            nnx.replace_by_pure_dict(v_state, arrays["velocity"])
            ae_opt_state = _unflat_leaves(ae_opt_state, arrays["ae_opt"])
            v_opt_state = _unflat_leaves(v_opt_state, arrays["velocity_opt"])
            step, history = last, meta["history"]

    latents = None
    budget = total if stop_after is None else min(total, step + int(stop_after))
    bar = tqdm(total=total, initial=step, disable=not progress, desc="weightgen", unit="step")
    try:
        while step < budget:
            if step < config.ae_steps:
                end = min(
                    config.ae_steps, (step // config.checkpoint_every + 1) * config.checkpoint_every
                )
                length = jnp.zeros((end - step, 0))
                ae_state, ae_opt_state, loss = ae_run(
                    ae_state, ae_opt_state, xn, ae_extra, k_ae, jnp.int32(step), length
                )
                phase = "autoencoder"
            else:
                if latents is None:  # the flow's data: standardised latents
                    z, mu, sd = _encode_program(ae_def)(ae_state, xn)
                    latents = (z - mu[None, :]) / sd[None, :]
                s = step - config.ae_steps
                end_s = min(
                    config.flow_steps, (s // config.checkpoint_every + 1) * config.checkpoint_every
                )
                end = config.ae_steps + end_s
                length = jnp.zeros((end - step, 0))
                v_state, v_opt_state, loss = v_run(
                    v_state, v_opt_state, (latents, cond), (), k_flow, jnp.int32(s), length
                )
                phase = "flow"
            history.append({"step": end, "phase": phase, "loss": float(loss)})
            bar.set_postfix(phase=phase, loss=f"{float(loss):.4g}", refresh=False)
            bar.update(end - step)
            step = end
            if ckpt is not None:
                ckpt.save(
                    step,
                    {
                        "ae": nnx.to_pure_dict(ae_state),
                        "velocity": nnx.to_pure_dict(v_state),
                        "ae_opt": _flat_leaves(ae_opt_state),
                        "velocity_opt": _flat_leaves(v_opt_state),
                    },
                    meta={"run": run_meta, "history": history, "step": step},
                )
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    nnx.update(gen.autoencoder, ae_state)
    nnx.update(gen.velocity, v_state)
    _, gen.stats["latent_mean"], gen.stats["latent_std"] = _encode_program(ae_def)(ae_state, xn)
    gen.history = history
    if model_dir is not None and step >= total:
        gen.save(model_dir)
    return gen


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray | jax.Array):
        return np.asarray(v).tolist()
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def write_generated_zoo(
    gen: WeightGen,
    params: Params,
    out_dir: str | os.PathLike,
    *,
    rows: Sequence[Mapping[str, Any]] | None = None,
    overwrite: bool = False,
) -> str:
    """Writes generated networks as a zoo directory (one group, epoch 0) through the one
    zoo writer, `hyper.zoo_format.write_zoo`; `hyper.zoo.load` reads it.

    Args:
      gen: the generator (its target, config and metadata are recorded).
      params: the networks, a population `[n, ...]` of ``gen.target``.
      rows: one JSON-able dict per network: ``train_loss``, ``train_acc``, ``test_loss``,
        ``test_acc`` and ``diverged`` become its metrics (NaN / non-finite weights when
        missing), everything else (the prompt, ...) its member row; a ``member`` int is its
        id (default: its index).
      overwrite: replace what `out_dir` holds.

    Returns:
      the absolute zoo directory.
    """
    n = gen.target.validate(params, batched=True)
    rows = [dict(r) for r in rows] if rows is not None else [{} for _ in range(n)]
    if len(rows) != n:
        raise WeightspaceError(f"write_generated_zoo: {len(rows)} rows for {n} networks")
    x = np.asarray(pop_ops.flatten(gen.target, params))
    finite = np.isfinite(x).all(axis=1)
    members, metrics = [], {k: np.full(n, np.nan) for k in _METRICS}
    diverged = ~finite
    for i, r in enumerate(rows):
        r = _jsonable(r)
        for k in _METRICS:
            if k in r:
                metrics[k][i] = np.nan if r[k] is None else float(r.pop(k))
        diverged[i] |= bool(r.pop("diverged", False))
        member = r.pop("member", i)
        members.append({"member": member, **r})
    ids = [m["member"] for m in members]
    if not all(isinstance(m, int) and not isinstance(m, bool) for m in ids) or len(set(ids)) != n:
        raise WeightspaceError("write_generated_zoo: rows' 'member' ids must be unique ints")
    source = {
        "generator": "weightgen",
        "config": gen.config.to_json(),
        "metadata": _jsonable(gen.metadata),
    }
    parts = [("g0", gen.target, members, {0: (params, metrics, diverged)})]
    return zoo_format.write_zoo(
        os.fspath(out_dir),
        parts,
        dataset=gen.metadata.get("dataset"),
        source=source,
        overwrite=overwrite,
        preset="generated",
    )
