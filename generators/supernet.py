"""A modular supernet of pretrained modules, activated per task and budget.

The backbone is a residual MLP in stages::

    h0 = relu(stem(x))                      shared stem, width d
    h_{s+1} = h_s + sum_k g_sk * down_sk(relu(up_sk(h_s)) * m_sk)    stage s, K modules
    logits = head(h_S)                      one head over all classes

Module ``(s, k)`` is a bottleneck block of its own hidden width ``w_k`` (blocks of
different widths, like experts added to a residual stream). Its module gate ``g_sk`` and
channel mask ``m_sk`` switch it and its hidden channels on or off. A module with gate 0 and
hidden channels with mask 0 contribute exactly nothing, so a gated supernet computes the
same function as the *compact* network holding only the active modules and channels
(`generators.factory` builds that one physically).

The weights are data: `Supernet.target` is a `hyper.Target` built from the pure
`supernet_apply`, which runs whatever stages and modules its params hold, so a compact
network is the same target family with fewer leaves and narrower axes.

Pretraining (`pretrain`) samples random module and channel gates at every step (vmapped
over gate samples, one of them the full network) so that modules work in many
combinations.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyper import population
from hyper.checkpoint import PopulationCheckpointer, load_population, save_population
from hyper.data import Dataset
from hyper.errors import WeightspaceError
from hyper.target import Params, Target
from hyper.train import make_optimizer

__all__ = [
    "Supernet",
    "SupernetConfig",
    "load_supernet",
    "pretrain",
    "save_supernet",
    "supernet_apply",
]


def _dense(p: Params, h: jax.Array) -> jax.Array:
    return h @ p["kernel"] + p["bias"][None, :]


def supernet_apply(params: Params, x: jax.Array) -> jax.Array:
    """Logits `[batch, classes]` of a supernet or of any compact network cut from one.

    Runs the stages and modules present in `params` (stage and module keys are integers as
    strings, run in numeric order); a missing stage is the identity.
    """
    h = jax.nn.relu(_dense(params["stem"], x.reshape(x.shape[0], -1)))
    stages = params.get("stages", {})
    for s in sorted(stages, key=int):
        out = h
        for k in sorted(stages[s], key=int):
            m = stages[s][k]
            out = out + _dense(m["down"], jax.nn.relu(_dense(m["up"], h)))
        h = out
    return _dense(params["head"], h)


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
    """Shape of a supernet.

    Attributes:
      input_shape: one example's shape, e.g. ``(8, 8)``.
      num_classes: classes of the head.
      stem_width: width ``d`` of the stem and of the residual stream.
      module_widths: hidden width of each of the K modules of a stage.
      num_stages: number of stages.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    stem_width: int = 32
    module_widths: tuple[int, ...] = (32, 64, 128)
    num_stages: int = 2

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "module_widths", tuple(int(w) for w in self.module_widths))
        if self.num_classes < 2 or self.stem_width < 1 or self.num_stages < 1:
            raise WeightspaceError(f"SupernetConfig: bad sizes {self}")
        if not self.module_widths or min(self.module_widths) < 1:
            raise WeightspaceError(f"SupernetConfig: module_widths must be positive, got {self}")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["module_widths"] = list(self.module_widths)
        return d


@dataclasses.dataclass(frozen=True)
class ModuleSlot:
    """Where one module's hidden channels sit in the flat channel vector of the supernet."""

    stage: int
    module: int
    width: int
    offset: int

    @property
    def path(self) -> str:
        return f"stages/{self.stage}/{self.module}"


class Supernet:
    """A supernet: its config, `Target`, channel layout and cost model.

    The *flat channel vector* lists every module's hidden channels, stage by stage, module
    by module (`slots`); channel masks and assembler scores use that layout.
    """

    def __init__(self, config: SupernetConfig):
        self.config = config
        d = config.stem_width
        n_in = int(np.prod(config.input_shape))
        template: Params = {
            "stem": {"kernel": jnp.zeros((n_in, d)), "bias": jnp.zeros((d,))},
            "stages": {
                str(s): {
                    str(k): {
                        "up": {"kernel": jnp.zeros((d, w)), "bias": jnp.zeros((w,))},
                        "down": {"kernel": jnp.zeros((w, d)), "bias": jnp.zeros((d,))},
                    }
                    for k, w in enumerate(config.module_widths)
                }
                for s in range(config.num_stages)
            },
            "head": {
                "kernel": jnp.zeros((d, config.num_classes)),
                "bias": jnp.zeros((config.num_classes,)),
            },
        }
        self.target = Target.from_function(
            supernet_apply,
            template,
            sample_input=jnp.zeros((1, *config.input_shape)),
            name="supernet",
            config={"supernet": config.to_json()},
        )
        slots, off = [], 0
        for s in range(config.num_stages):
            for k, w in enumerate(config.module_widths):
                slots.append(ModuleSlot(s, k, w, off))
                off += w
        self.slots: tuple[ModuleSlot, ...] = tuple(slots)
        self.num_channels = off
        self.num_modules = len(slots)
        # module index of each channel of the flat vector
        self.module_of_channel = np.repeat(np.arange(self.num_modules), [s.width for s in slots])
        self.n_in = n_in

    # --- costs ------------------------------------------------------------------------

    def costs(self, kind: str = "params") -> dict[str, int]:
        """The exact cost model of compact networks cut from this supernet.

        A compact network with active modules A, ``c_a`` channels in module a and n classes
        costs ``stem + sum_a (channel * c_a + module) + head_per_class * n``.

        Args:
          kind: ``"params"`` (trainable scalars) or ``"flops"`` (2 x multiply-adds of the
            matmuls for one example, as `hyper.compact.count_flops`).
        """
        d, n_in = self.config.stem_width, self.n_in
        if kind == "params":
            c = {"stem": n_in * d + d, "channel": 2 * d + 1, "module": d, "head_per_class": d + 1}
        elif kind == "flops":
            c = {"stem": 2 * n_in * d, "channel": 4 * d, "module": 0, "head_per_class": 2 * d}
        else:
            raise WeightspaceError(f"budget kind {kind!r}; expected 'params' or 'flops'")
        c["total"] = (
            c["stem"]
            + c["channel"] * self.num_channels
            + c["module"] * self.num_modules
            + c["head_per_class"] * self.config.num_classes
        )
        return c

    # --- gated evaluation -------------------------------------------------------------

    def gated_apply(
        self, params: Params, x: jax.Array, mask: jax.Array, gates: jax.Array
    ) -> jax.Array:
        """Logits of the supernet with channel mask `[channels]` and module gates `[modules]`.

        With 0/1 masks and gates it equals the compact network holding only the gated-on
        modules and masked-on channels (the head over all classes).
        """
        p = params
        h = jax.nn.relu(_dense(p["stem"], x.reshape(x.shape[0], -1)))
        for s in range(self.config.num_stages):
            out = h
            for i, slot in enumerate(self.slots):
                if slot.stage != s:
                    continue
                m = p["stages"][str(s)][str(slot.module)]
                z = jax.nn.relu(_dense(m["up"], h))
                z = z * mask[None, slot.offset : slot.offset + slot.width]
                out = out + z @ m["down"]["kernel"] + gates[i] * m["down"]["bias"][None, :]
            h = out
        return _dense(p["head"], h)

    def gates_from_mask(self, mask: jax.Array) -> jax.Array:
        """Module gates `[..., modules]`: 1 where a module keeps at least one channel."""
        counts = jax.ops.segment_sum(
            jnp.moveaxis(jnp.asarray(mask, jnp.float32), -1, 0),
            jnp.asarray(self.module_of_channel),
            num_segments=self.num_modules,
        )
        return (jnp.moveaxis(counts, 0, -1) > 0).astype(jnp.float32)

    def init(self, key: jax.Array) -> Params:
        return self.target.init(key)


# ---------------------------------------------------------------------------------------
# Pretraining with random gating
# ---------------------------------------------------------------------------------------


def _random_gates(sn: Supernet, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """`n` random (mask `[n, channels]`, gates `[n, modules]`); sample 0 is the full net.

    Each sample drops each module with probability 0.3 and keeps each channel of a kept
    module with a probability drawn uniformly in [0.1, 1] per module.
    """
    k1, k2, k3 = jax.random.split(key, 3)
    keep_module = jax.random.bernoulli(k1, 0.7, (n, sn.num_modules))
    rate = jax.random.uniform(k2, (n, sn.num_modules), minval=0.1, maxval=1.0)
    per_channel = jnp.take(rate, jnp.asarray(sn.module_of_channel), axis=1)
    mask = jax.random.uniform(k3, (n, sn.num_channels)) < per_channel
    mask = mask & jnp.take(keep_module, jnp.asarray(sn.module_of_channel), axis=1)
    mask = mask.at[0].set(True).astype(jnp.float32)
    return mask, sn.gates_from_mask(mask)


def pretrain(
    supernet: Supernet,
    dataset: Dataset,
    key: jax.Array,
    *,
    steps: int = 3000,
    batch_size: int = 128,
    gate_samples: int = 8,
    learning_rate: float = 3e-3,
    params: Params | None = None,
) -> tuple[Params, dict[str, float]]:
    """Trains the supernet on the full data set with random module/channel gating.

    Every step draws one batch and `gate_samples` gate configurations (the first is the full
    network), evaluates the batch under each (vmapped over gate samples) and takes one Adam
    step (cosine-decayed learning rate) on the mean cross-entropy.

    Returns:
      ``(params, info)`` with the final training loss and the full network's test accuracy.
    """
    if dataset.input_shape != supernet.config.input_shape:
        raise WeightspaceError(
            f"pretrain: dataset {dataset.name} has inputs {dataset.input_shape}, the supernet "
            f"{supernet.config.input_shape}"
        )
    if steps < 1 or batch_size < 1 or gate_samples < 1:
        raise WeightspaceError(
            f"pretrain: steps={steps}, batch_size={batch_size}, gates={gate_samples}"
        )
    key, k_init = jax.random.split(key)
    params = supernet.init(k_init) if params is None else params
    opt = make_optimizer("adam", learning_rate, schedule="cosine", steps=steps)
    x_train = jnp.asarray(dataset.x_train)
    y_train = jnp.asarray(dataset.y_train)

    def loss_fn(p, x, y, k):
        mask, gates = _random_gates(supernet, k, gate_samples)
        logits = jax.vmap(supernet.gated_apply, in_axes=(None, None, 0, 0))(p, x, mask, gates)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y[None, :]))

    def step(carry, k):
        p, o = carry
        kb, kg = jax.random.split(k)
        idx = jax.random.randint(kb, (batch_size,), 0, x_train.shape[0])
        loss, g = jax.value_and_grad(loss_fn)(p, x_train[idx], y_train[idx], kg)
        upd, o = opt.update(g, o, p)
        return (optax.apply_updates(p, upd), o), loss

    @jax.jit
    def run(p, k):
        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), jax.random.split(k, steps))
        return p, jnp.mean(losses[-50:])

    params, loss = run(params, key)
    logits = supernet.target.apply(params, jnp.asarray(dataset.x_test))
    acc = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(dataset.y_test)))
    return params, {"final_loss": float(loss), "test_accuracy_full": acc}


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------


def save_supernet(
    directory: str | os.PathLike,
    supernet: Supernet,
    params: Params,
    *,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Saves supernet weights (Orbax) with its config; `load_supernet` restores both."""
    pop = population.of_one(params)
    meta = {"supernet": supernet.config.to_json(), **(metadata or {})}
    return save_population(directory, pop, supernet.target, metadata=meta, overwrite=overwrite)


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The user metadata stored beside a population checkpoint (no arrays are read)."""
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise WeightspaceError(f"no checkpoint directory {directory}")
    with PopulationCheckpointer(directory, read_only=True) as ckpt:
        steps = ckpt.steps()
        if not steps:
            raise WeightspaceError(f"no checkpoint in {directory}")
        return dict(ckpt.restore_meta(steps[-1]).get("metadata", {}))


def load_supernet(directory: str | os.PathLike) -> tuple[Supernet, Params, dict[str, Any]]:
    """Restores ``(supernet, params, metadata)`` written by `save_supernet`."""
    meta = read_metadata(directory)
    if "supernet" not in meta:
        raise WeightspaceError(f"{os.fspath(directory)} does not hold a supernet checkpoint")
    cfg = dict(meta["supernet"])
    supernet = Supernet(SupernetConfig(**cfg))
    _, pop, meta = load_population(directory, supernet.target)
    return supernet, population.only(pop), meta


def module_paths(supernet: Supernet) -> Sequence[str]:
    return [s.path for s in supernet.slots]
