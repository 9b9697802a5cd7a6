"""Training hypernetworks: a jitted step over `M` sampled conditions, checkpoints, presets.

Each step samples `M` conditions, generates `M` weight sets, evaluates every target on
its batch (one shared batch, or one batch per condition) and averages a
condition-dependent loss ``loss_fn(condition, logits, labels, params) -> scalar``.

Runs are described by a JSON-able config (see `PRESETS`), saved with Orbax every
`checkpoint_every` steps, and resume exactly: the key of step `s` is
``fold_in(key(seed), s)``.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hyper import data as data_lib
from hyper import sharding
from hyper import train as train_lib
from hyper.architectures import target_from_config
from hyper.checkpoint import (
    CheckpointError,
    PopulationCheckpointer,
    prepare_dir,
    target_from_stored,
)
from hyper.errors import WeightspaceError
from hyper.hypernets import conditions as cond_lib
from hyper.hypernets.hypernet import HyperNet
from hyper.target import Target
from hyper.train import cross_entropy
from hyper.tree import Params, flatten_dict

__all__ = [
    "LOSSES",
    "PRESETS",
    "HyperTrainer",
    "NonFiniteLossError",
    "build_hypernet",
    "l2_conditioned_loss",
    "load_run",
    "make_optimizer",
    "train_run",
]

LossFn = Callable[[Mapping[str, jax.Array], jax.Array, jax.Array, Params], jax.Array]


def _is_key(v: Any) -> bool:
    return jnp.issubdtype(v.dtype, jax.dtypes.prng_key)


class NonFiniteLossError(FloatingPointError):
    """The hypernet's loss or gradients became NaN/Inf; the last good checkpoint is kept."""


def cross_entropy_loss(cond, logits, labels, params) -> jax.Array:
    """Plain cross-entropy (ignores the condition)."""
    del cond, params
    return cross_entropy(logits, labels)


def l2_conditioned_loss(name: str = "gamma", scale: float = 1e-3) -> LossFn:
    """Cross-entropy + γ·scale·‖θ‖² with γ the continuous condition `name` (MIP's task T1)."""

    def loss(cond, logits, labels, params):
        sq = sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(params))
        g = jnp.reshape(cond[name], (-1,))[0]
        return cross_entropy(logits, labels) + g * scale * sq

    return loss


LOSSES: dict[str, Callable[..., LossFn]] = {
    "cross_entropy": lambda: cross_entropy_loss,
    "l2_conditioned": l2_conditioned_loss,
}


def make_optimizer(name: str = "adam", learning_rate: float = 1e-3, **kw: Any):
    """A run config's optimizer: ``adam`` or ``sgd`` (momentum 0.9 unless given), built by
    `hyper.train.make_optimizer` (equal to ``optax.adam(learning_rate, **kw)`` and
    ``optax.sgd(learning_rate, momentum, **kw)``); `kw` are options of adam or of the
    momentum trace (e.g. ``b1``, ``nesterov``)."""
    if isinstance(learning_rate, bool) or not (
        isinstance(learning_rate, int | float) and learning_rate > 0
    ):
        raise WeightspaceError(f"optimizer learning_rate must be > 0, got {learning_rate!r}")
    if name not in ("adam", "sgd"):
        raise WeightspaceError(f"unknown optimizer {name!r}; expected 'adam' or 'sgd'")
    chain_args = sorted(set(kw) & {"schedule", "steps", "weight_decay", "decay_mask", "clip_norm"})
    if chain_args:  # a run config names options of adam or sgd only
        raise TypeError(f"make_optimizer() got unexpected keyword arguments {chain_args}")
    if name == "sgd":
        kw["momentum"] = kw.get("momentum", 0.9)
    return train_lib.make_optimizer(name, learning_rate, **kw)


class HyperTrainer:
    """Trains a `HyperNet` with one jitted step.

    Args:
      hnet: the hypernetwork (its state is split once; read it back with `.hnet`).
      x, y: training inputs `[N, ...]` and int labels `[N]`.
      loss_fn: ``(condition, logits, labels, params) -> scalar`` for one condition.
      optimizer: an optax transformation (default Adam 1e-3).
      conditions_per_step: M, conditions sampled (and targets generated) per step.
      batch_size: examples per target per step.
      shared_batch: one batch for all M targets (True) or one per target.
      sampler: ``(key, M) -> {name: [M, ...]}``; default `hyper.hypernets.conditions.sample`.
      mesh: a 1-D ``targets`` mesh (`hyper.sharding.targets_mesh`, possibly spanning
        several processes): each step's M conditions, the targets generated from them and
        their losses are split across its devices (M must be a multiple of its size); the
        hypernet, optimizer state and data are replicated; gradients are summed across
        devices by the compiler (GSPMD). Results equal a single-device run up to the
        order of floating-point sums, unless `reduce_groups` fixes that order.
      reduce_groups: G, or None (default): the loss and gradient summed over each step's
        M targets by one reduction whose order depends on the device count. With G, the
        targets are split into G equal groups, each group's gradient is computed by itself
        and the G gradients are added in group order
        (`hyper.sharding.fixed_order_sum`): a run with the same G then gives bit-identical
        weights on one device and on any mesh whose size divides G (tested on CPU with 4
        and 8 devices), at the memory of one gradient per group. M must be a multiple of G.
    """

    def __init__(
        self,
        hnet: HyperNet,
        x: Any,
        y: Any,
        *,
        loss_fn: LossFn = cross_entropy_loss,
        optimizer: optax.GradientTransformation | None = None,
        conditions_per_step: int = 1,
        batch_size: int = 128,
        shared_batch: bool = True,
        sampler: Callable[[jax.Array, int], dict[str, jax.Array]] | None = None,
        mesh: jax.sharding.Mesh | None = None,
        reduce_groups: int | None = None,
    ):
        if conditions_per_step < 1 or batch_size < 1:
            raise WeightspaceError(
                f"conditions_per_step and batch_size must be >= 1, got "
                f"{conditions_per_step}, {batch_size}"
            )
        x, y = jnp.asarray(x), jnp.asarray(y)
        t = hnet.target
        if t.input_shape is not None and tuple(x.shape[1:]) != tuple(t.input_shape):
            raise WeightspaceError(
                f"inputs have shape {x.shape[1:]}, target {t.name} takes {t.input_shape}"
            )
        if y.shape != (x.shape[0],):
            raise WeightspaceError(f"labels have shape {y.shape}, expected ({x.shape[0]},)")
        self.x, self.y = x, y
        self.m = int(conditions_per_step)
        self.batch_size = int(batch_size)
        self.shared_batch = bool(shared_batch)
        self.loss_fn = loss_fn
        self.sampler = sampler or (lambda k, m: cond_lib.sample(hnet.specs, k, m))
        self.optimizer = optimizer or train_lib.make_optimizer("adam", 1e-3)
        self.graphdef, params, self.rest = nnx.split(hnet, nnx.Param, ...)
        # Steps donate `self.params`: own copies, so the caller's `hnet` stays usable.
        self.params = jax.tree.map(jnp.copy, params)
        self.mesh = mesh
        if reduce_groups is not None:
            g = reduce_groups
            if isinstance(g, bool) or not isinstance(g, int | np.integer) or g < 1 or self.m % g:
                raise WeightspaceError(
                    f"HyperTrainer: reduce_groups must be a positive divisor of "
                    f"conditions_per_step={self.m}, got {reduce_groups!r}"
                )
            if mesh is not None and g % mesh.devices.size:
                raise WeightspaceError(
                    f"HyperTrainer: reduce_groups={g} must be a multiple of the mesh size "
                    f"{mesh.devices.size}"
                )
        self.reduce_groups = None if reduce_groups is None else int(reduce_groups)
        self._conds_sharding = None
        if mesh is not None:
            size = mesh.devices.size
            if self.m % size:
                raise WeightspaceError(
                    f"HyperTrainer: conditions_per_step={self.m} must be a multiple of the "
                    f"mesh size {size} to shard the targets"
                )
            rep = sharding.replicated(mesh)
            self.params, self.rest = sharding.put((self.params, self.rest), rep)
            self.x, self.y = sharding.put((self.x, self.y), rep)
            self._conds_sharding = sharding.targets_sharding(mesh)
        self.opt_state = self.optimizer.init(self.params)
        self.step_count = 0
        self._step = jax.jit(self._step_impl, donate_argnums=(0, 2))
        self._scan = jax.jit(self._scan_impl, static_argnums=5, donate_argnums=(0, 2))

    @property
    def hnet(self) -> HyperNet:
        """The hypernet with the current weights (a copy: later steps leave it alone)."""
        return nnx.merge(self.graphdef, jax.tree.map(jnp.copy, self.params), self.rest)

    def _loss(self, params, rest, conds, xb, yb):
        hnet = nnx.merge(self.graphdef, params, rest)
        pop = hnet(conds)
        apply = hnet.target.pure_apply
        if self.shared_batch:
            logits = jax.vmap(apply, in_axes=(0, None))(pop, xb)
            labels = jnp.broadcast_to(yb, (logits.shape[0], *yb.shape))
        else:
            logits = jax.vmap(apply)(pop, xb)
            labels = yb
        gen = {p: v for p, v in flatten_dict(pop).items() if p in hnet.gen_paths}
        per = jax.vmap(self.loss_fn)(conds, logits, labels, gen)
        return per.mean(), per

    def _grouped_loss_and_grad(self, params, rest, conds, xb, yb):
        """The mean loss and its gradient, summed over `reduce_groups` groups of targets in a
        fixed order (the same bits on one device and on the mesh)."""

        def term(shared, group):
            params, rest, *batch = shared
            conds, *own = group
            xg, yg = batch if self.shared_batch else own

            def group_sum(p):
                _, per = self._loss(p, rest, conds, xg, yg)
                return per.sum(), per

            (total, per), grads = jax.value_and_grad(group_sum, has_aux=True)(params)
            return (total, grads), per

        if self.shared_batch:
            shared, group = (params, rest, xb, yb), (conds,)
        else:
            shared, group = (params, rest), (conds, xb, yb)
        (total, grads), per = sharding.fixed_order_sum(
            term, shared, group, self.reduce_groups, self.mesh
        )
        return total / self.m, per, jax.tree.map(lambda g: g / self.m, grads)

    def _step_impl(self, params, rest, opt_state, key, alive=None):
        kc, kb = jax.random.split(key)
        conds = self.sampler(kc, self.m)
        if self._conds_sharding is not None:  # targets split across the mesh
            conds = jax.lax.with_sharding_constraint(conds, self._conds_sharding)
        shape = (self.batch_size,) if self.shared_batch else (self.m, self.batch_size)
        idx = jax.random.randint(kb, shape, 0, self.x.shape[0])
        xb, yb = self.x[idx], self.y[idx]
        if self.reduce_groups is None:
            (loss, per), grads = jax.value_and_grad(self._loss, has_aux=True)(
                params, rest, conds, xb, yb
            )
        else:
            loss, per, grads = self._grouped_loss_and_grad(params, rest, conds, xb, yb)
        updates, new_opt = self.optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        gnorm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        # A non-finite step (in `run_scan` also every later one) leaves the weights untouched.
        ok = finite if alive is None else finite & alive
        new_params = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_params, params)
        new_opt = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_opt, opt_state)
        return new_params, new_opt, {"loss": loss, "grad_norm": gnorm, "finite": finite}

    def _scan_impl(self, params, rest, opt_state, key, start, steps):
        def body(carry, i):
            params, opt_state, alive = carry
            k = jax.random.fold_in(key, start + i)
            params, opt_state, m = self._step_impl(params, rest, opt_state, k, alive)
            return (params, opt_state, alive & m["finite"]), (m["loss"], m["finite"])

        init = (params, opt_state, jnp.asarray(True))
        (params, opt_state, _), (losses, finite) = jax.lax.scan(body, init, jnp.arange(steps))
        return params, opt_state, losses, finite

    def step(self, key: jax.Array) -> dict[str, float]:
        """One optimisation step; raises `NonFiniteLossError` (weights unchanged) on NaN/Inf."""
        self.params, self.opt_state, metrics = self._step(
            self.params, self.rest, self.opt_state, key
        )
        self.step_count += 1
        if not bool(metrics["finite"]):
            raise NonFiniteLossError(
                f"hypernet loss or gradient is not finite at step {self.step_count} "
                f"(loss={float(metrics['loss'])}); lower the learning rate"
            )
        return {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"])}

    def run(self, key: jax.Array, steps: int, *, start: int = 0) -> np.ndarray:
        """Steps `start .. start+steps-1` with keys ``fold_in(key, s)``; returns the losses."""
        losses = np.empty(steps, np.float32)
        for i in range(steps):
            losses[i] = self.step(jax.random.fold_in(key, start + i))["loss"]
        return losses

    def run_scan(self, key: jax.Array, steps: int, *, start: int = 0) -> np.ndarray:
        """`run` as one jitted `jax.lax.scan`: the same steps and keys, one dispatch and one
        host sync in all (compiles once per distinct `steps`).

        Raises:
          NonFiniteLossError: as `step`; the weights are those before the first non-finite
            step (the later steps of the scan change nothing) and `step_count` counts up to it.
        """
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
            raise WeightspaceError(f"run_scan: steps must be a positive int, got {steps!r}")
        self.params, self.opt_state, losses, finite = self._scan(
            self.params, self.rest, self.opt_state, key, jnp.asarray(start, jnp.int32), int(steps)
        )
        losses, finite = np.asarray(losses, np.float32), np.asarray(finite)
        if not finite.all():
            bad = int(np.argmin(finite))
            self.step_count += bad + 1
            raise NonFiniteLossError(
                f"hypernet loss or gradient is not finite at step {self.step_count} "
                f"(loss={float(losses[bad])}); lower the learning rate"
            )
        self.step_count += int(steps)
        return losses

    # --- checkpoint arrays ---------------------------------------------------------------

    def arrays(self) -> dict[str, Any]:
        """Everything a resume needs, as flat name -> array dicts (copies: later steps donate
        the live buffers)."""
        out = {
            "params": _indexed(self.params),
            "rest": _indexed(self.rest, skip_keys=True),
            "opt_state": _indexed(self.opt_state),
        }
        out = jax.tree.map(jnp.copy, out)
        return {k: v for k, v in out.items() if v}  # Orbax refuses empty items

    def load_arrays(self, arrays: Mapping[str, Any]) -> None:
        """Loads what `arrays` returned (copied).

        Raises:
          ValueError: a group has the wrong number of arrays, or an array the wrong shape or
            dtype (e.g. arrays of a hypernet for another target); nothing is loaded then.
        """
        params = _filled("params", self.params, arrays.get("params", {}))
        rest = _filled("rest", self.rest, arrays.get("rest", {}), skip_keys=True)
        opt_state = _filled("opt_state", self.opt_state, arrays.get("opt_state", {}))
        if self.mesh is not None:  # the weights live replicated on the mesh, like at init
            params, rest, opt_state = sharding.put(
                (params, rest, opt_state), sharding.replicated(self.mesh)
            )
        self.params, self.rest, self.opt_state = params, rest, opt_state


def _indexed(tree: Any, skip_keys: bool = False) -> dict[str, Any]:
    """The leaves of `tree` as ``{"0": leaf, "1": ...}`` (PRNG keys left out with
    `skip_keys`): the layout of a run's checkpoint items."""
    leaves = [v for v in jax.tree.leaves(tree) if not (skip_keys and _is_key(v))]
    return {str(i): v for i, v in enumerate(leaves)}


def _filled(name: str, tree: Any, flat: Mapping[str, Any], skip_keys: bool = False) -> Any:
    """`tree` with its leaves replaced by copies of the arrays of `flat` (`_indexed`'s layout),
    checked for count, shape and dtype."""
    flat = dict(flat)
    leaves, treedef = jax.tree.flatten(tree)
    want = [v for v in leaves if not (skip_keys and _is_key(v))]
    if sorted(flat) != sorted(str(j) for j in range(len(want))):
        raise WeightspaceError(
            f"load_arrays: {name!r} holds {len(flat)} arrays, this hypernet has {len(want)}"
        )
    out, j = [], 0
    for v in leaves:
        if skip_keys and _is_key(v):
            out.append(v)
            continue
        a = flat[str(j)]
        if tuple(np.shape(a)) != tuple(v.shape) or np.dtype(a.dtype) != np.dtype(v.dtype):
            raise WeightspaceError(
                f"load_arrays: {name}[{j}] has shape {tuple(np.shape(a))} "
                f"{np.dtype(a.dtype)}, this hypernet has {tuple(v.shape)} "
                f"{np.dtype(v.dtype)}"
            )
        out.append(jnp.array(a, copy=True))
        j += 1
    return jax.tree.unflatten(treedef, out)


# ---------------------------------------------------------------------------------------
# Configured runs (CLI, presets)
# ---------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "digits-mip": {
        "dataset": "digits",
        "target": {"arch": "mlp", "widths": [128, 128], "out_features": 10},
        "conditions": [
            {"kind": "continuous", "name": "gamma", "shape": [], "low": 0.0, "high": 1.0}
        ],
        "hypernet": {"hidden": [16, 64], "encoding": "cos|sin", "residual": True},
        "loss": {"kind": "l2_conditioned", "name": "gamma", "scale": 1e-3},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "steps": 1000,
        "conditions_per_step": 8,
        "batch_size": 128,
        "checkpoint_every": 250,
        "seed": 0,
        "reduce_groups": None,
    }
}
"""``digits-mip``: MIP task T1 — one hypernet maps γ ∈ [0, 1] to all weights of an MLP
64-128-128-10 on digits; loss = cross-entropy + γ·1e-3·‖θ‖². ``reduce_groups`` (see
`HyperTrainer`) set to an int makes a run's weights the same bits with or without a mesh."""

_RUN_KEYS = set(PRESETS["digits-mip"])


def resolve_config(config: str | Mapping[str, Any]) -> dict[str, Any]:
    """A preset name, a JSON file path, or a dict -> a full, validated run config.

    Missing keys take the ``digits-mip`` defaults.
    """
    if isinstance(config, str):
        if config in PRESETS:
            config = PRESETS[config]
        else:
            try:
                with open(config) as f:
                    config = json.load(f)
            except OSError as e:
                raise WeightspaceError(
                    f"config {config!r} is neither a preset {sorted(PRESETS)} nor a readable file: "
                    f"{e.strerror}"
                ) from None
            except json.JSONDecodeError as e:
                raise WeightspaceError(f"config {config!r} is not valid JSON: {e}") from None
    if not isinstance(config, Mapping):
        raise WeightspaceError(f"config must be a JSON object, got {type(config).__name__}")
    unknown = sorted(set(config) - _RUN_KEYS)
    if unknown:
        raise WeightspaceError(f"config: unknown keys {unknown}; expected {sorted(_RUN_KEYS)}")
    full = copy.deepcopy(PRESETS["digits-mip"])
    full.update(copy.deepcopy(dict(config)))
    for k in ("steps", "conditions_per_step", "batch_size", "checkpoint_every"):
        v = full[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "steps" else 1):
            raise WeightspaceError(f"config[{k!r}] must be a positive int, got {v!r}")
    g = full["reduce_groups"]
    if g is not None and (
        isinstance(g, bool) or not isinstance(g, int) or g < 1 or full["conditions_per_step"] % g
    ):
        raise WeightspaceError(
            f"config['reduce_groups'] must be null or a positive divisor of "
            f"conditions_per_step={full['conditions_per_step']}, got {g!r}"
        )
    if full["dataset"] not in data_lib.available():
        raise WeightspaceError(f"config['dataset']: unknown {full['dataset']!r}")
    for k in ("target", "hypernet", "loss", "optimizer"):
        if not isinstance(full[k], Mapping):
            raise WeightspaceError(f"config[{k!r}] must be a JSON object, got {full[k]!r}")
    if not isinstance(full["seed"], int) or isinstance(full["seed"], bool):
        raise WeightspaceError(f"config['seed'] must be an int, got {full['seed']!r}")
    if full["loss"].get("kind") not in LOSSES:
        raise WeightspaceError(f"config['loss']['kind'] must be one of {sorted(LOSSES)}")
    if not isinstance(full["target"].get("arch"), str):
        raise WeightspaceError("config['target'] needs an 'arch' name")
    if "input_shape" in full["target"]:
        raise WeightspaceError(
            "config['target']: 'input_shape' comes from the dataset; leave it out"
        )
    hnet_args = set(inspect.signature(HyperNet.__init__).parameters) - {
        "self",
        "target",
        "conditions",
        "rngs",
        "theta0",
    }
    unknown = sorted(set(full["hypernet"]) - hnet_args)
    if unknown:
        raise WeightspaceError(
            f"config['hypernet']: unknown keys {unknown}; expected {sorted(hnet_args)}"
        )
    try:
        make_optimizer(**full["optimizer"])
    except TypeError as e:
        raise WeightspaceError(f"config['optimizer']: {e}") from None
    if not isinstance(full["conditions"], list) or not all(
        isinstance(c, Mapping) for c in full["conditions"]
    ):
        raise WeightspaceError("config['conditions'] must be a list of JSON objects")
    try:
        cond_lib.from_json(full["conditions"])  # validates
    except TypeError as e:
        raise WeightspaceError(f"config['conditions']: {e}") from None
    return full


def build_hypernet(config: Mapping[str, Any]) -> tuple[HyperNet, data_lib.Dataset]:
    """The freshly initialised hypernet of a resolved run config, and its dataset."""
    ds = data_lib.load(config["dataset"])
    try:  # the run config is user input: a target it does not describe is bad input
        target = target_from_config({**config["target"], "input_shape": list(ds.input_shape)})
    except (ValueError, TypeError) as e:
        raise WeightspaceError(f"config['target']: {e}") from e
    return _hypernet(config, target), ds


def _hypernet(config: Mapping[str, Any], target: Target) -> HyperNet:
    specs = cond_lib.from_json(config["conditions"])
    try:
        return HyperNet(target, specs, rngs=nnx.Rngs(config["seed"]), **config["hypernet"])
    except (ValueError, TypeError) as e:  # the run config's hypernet options are user input
        raise WeightspaceError(f"config['hypernet']: {e}") from e


def _trainer(
    config: Mapping[str, Any],
    hnet: HyperNet,
    ds: data_lib.Dataset,
    mesh: jax.sharding.Mesh | None = None,
) -> HyperTrainer:
    loss_cfg = dict(config["loss"])
    loss_fn = LOSSES[loss_cfg.pop("kind")](**loss_cfg)
    opt_cfg = dict(config["optimizer"])
    return HyperTrainer(
        hnet,
        ds.x_train,
        ds.y_train,
        loss_fn=loss_fn,
        optimizer=make_optimizer(**opt_cfg),
        conditions_per_step=config["conditions_per_step"],
        batch_size=config["batch_size"],
        mesh=mesh,
        reduce_groups=config["reduce_groups"],
    )


def train_run(
    config: str | Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> HyperTrainer:
    """Trains a configured hypernet, checkpointing to `out_dir` (resumable).

    `mesh` (`hyper.sharding.targets_mesh`) splits each step's targets over its devices; it
    changes placement only, so a run may be resumed with or without one.

    Raises:
      ValueError: bad config, or `out_dir` holds another run and neither flag fits.
      NonFiniteLossError: the loss diverged; the last good checkpoint stays latest.
    """
    from tqdm.auto import tqdm

    config = resolve_config(config)
    for k in ("conditions_per_step", "reduce_groups"):  # refused before anything is written
        if mesh is not None and config[k] and config[k] % mesh.devices.size:
            raise WeightspaceError(
                f"{k}={config[k]} must be a multiple of the {mesh.devices.size} devices to "
                "shard the targets"
            )
    directory = os.path.abspath(os.fspath(out_dir))
    run_json = os.path.join(directory, "hypernet.json")
    if not overwrite and os.path.exists(run_json):  # a run is there: continue it or refuse
        old = _read_run(directory)
        try:  # a run written before a key existed has that key's default
            old_config = resolve_config(old.get("config"))
        except ValueError:
            old_config = old.get("config")
        if json.dumps(old_config, sort_keys=True) != json.dumps(config, sort_keys=True):
            raise WeightspaceError(f"{directory} holds a different hypernet run; use overwrite")
        if not resume:
            raise WeightspaceError(f"{directory} already holds this run; use resume to continue it")
    else:
        prepare_dir(directory, overwrite=overwrite, holds="hypernet run", hint="use overwrite")
    hnet, ds = build_hypernet(config)
    trainer = _trainer(config, hnet, ds, mesh)
    if not os.path.exists(run_json):
        with open(run_json + ".tmp", "w") as f:
            json.dump(
                {"format": "weightspace-hypernet", "config": config, "hypernet": hnet.config},
                f,
                indent=1,
            )
        os.replace(run_json + ".tmp", run_json)
    key = jax.random.key(config["seed"])
    every = config["checkpoint_every"]
    with PopulationCheckpointer(os.path.join(directory, "checkpoints")) as ckpt:
        start = 0
        losses: list[float] = []
        if ckpt.latest_step() is not None:
            start = ckpt.latest_step()
            abstract = jax.tree.map(
                lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), trainer.arrays()
            )
            arrays, meta = ckpt.restore(start, abstract)
            trainer.load_arrays(arrays)
            trainer.step_count = start
            losses = list(meta.get("losses", []))
        steps = config["steps"]
        bar = tqdm(total=steps, initial=start, disable=not progress, desc="hypernet", unit="step")
        try:
            s = start
            while s < steps:
                n = min(every - s % every, steps - s)
                if stop_after_steps is not None:
                    n = min(n, start + stop_after_steps - s)
                    if n <= 0:
                        break
                losses.extend(trainer.run(key, n, start=s).tolist())
                s += n
                bar.update(n)
                if s % every == 0 or s == steps:
                    ckpt.save(s, trainer.arrays(), meta={"step": s, "losses": losses})
        finally:
            bar.close()
    return trainer


def _read_run(directory: str) -> dict[str, Any]:
    """The checked ``hypernet.json`` of a run directory.

    Raises:
      CheckpointError: missing, unreadable or not a weightspace hypernet run.
    """
    run_json = os.path.join(directory, "hypernet.json")
    try:
        with open(run_json) as f:
            run = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory} holds no readable hypernet run: {e}") from None
    if not isinstance(run, dict) or run.get("format") != "weightspace-hypernet":
        raise CheckpointError(f"{run_json} is not a weightspace hypernet run")
    return run


def load_run(
    directory: str | os.PathLike, step: int | None = None
) -> tuple[HyperNet, dict[str, Any]]:
    """The trained hypernet of a run directory (latest or given step) and its run config."""
    directory = os.path.abspath(os.fspath(directory))
    run_json = os.path.join(directory, "hypernet.json")
    run = _read_run(directory)
    config = resolve_config(run["config"])
    # The hypernet's own config holds the target with its input shape: no dataset to load.
    target_config = (run.get("hypernet") or {}).get("target")
    if not isinstance(target_config, Mapping):
        raise CheckpointError(f"{run_json} has no hypernet target config")
    hnet = _hypernet(config, target_from_stored(target_config, run_json))
    graphdef, params, rest = nnx.split(hnet, nnx.Param, ...)
    items = {"params": _indexed(params), "rest": _indexed(rest, skip_keys=True)}
    abstract = {
        k: jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), v)
        for k, v in items.items()
        if v  # an empty item is not stored
    }
    with PopulationCheckpointer(os.path.join(directory, "checkpoints"), read_only=True) as ckpt:
        arrays, _ = ckpt.restore(step, abstract)
    params = _filled("params", params, arrays.get("params", {}))
    rest = _filled("rest", rest, arrays.get("rest", {}), skip_keys=True)
    return nnx.merge(graphdef, params, rest), config


def parse_conditions(text: str, hnet: HyperNet) -> dict[str, np.ndarray]:
    """Conditions from a JSON file (``{name: list}``) or a grid ``name=lo:hi:n[,name=...]``.

    A grid over several names takes their cross product.
    """
    if os.path.exists(text):
        try:
            with open(text) as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise WeightspaceError(f"--conditions: {text} is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise WeightspaceError(f"--conditions: {text} must hold a JSON object of name -> list")
        out = {}
        for k, v in raw.items():
            try:
                a = np.asarray(v)
            except ValueError as e:  # ragged lists
                raise WeightspaceError(f"--conditions: {k!r}: {e}") from None
            if a.dtype.kind not in "iuf":
                raise WeightspaceError(f"--conditions: {k!r} must be numbers")
            out[k] = a.astype(np.int32) if a.dtype.kind in "iu" else a.astype(np.float32)
        hnet.validate(out)
        return out
    axes = {}
    for part in text.split(","):
        name, eq, rng = part.partition("=")
        bits = rng.split(":")
        if not eq or len(bits) != 3:
            raise WeightspaceError(f"--conditions: {part!r} is neither a file nor name=lo:hi:n")
        try:
            lo, hi, n = float(bits[0]), float(bits[1]), int(bits[2])
        except ValueError:
            raise WeightspaceError(
                f"--conditions: {part!r}: expected numbers in name=lo:hi:n"
            ) from None
        if n < 1:
            raise WeightspaceError(f"--conditions: {part!r}: n must be >= 1")
        axes[name.strip()] = np.linspace(lo, hi, n, dtype=np.float32)
    mesh = np.meshgrid(*axes.values(), indexing="ij")
    out = {k: m.reshape(-1) for k, m in zip(axes, mesh, strict=True)}
    hnet.validate(out)
    return out


def steps_to_threshold(losses: np.ndarray, threshold: float, window: int = 20) -> int | None:
    """First step at which the running mean loss (over `window` steps) is <= `threshold`."""
    losses = np.asarray(losses, np.float64)
    if losses.size < window:
        return None
    run = np.convolve(losses, np.ones(window) / window, mode="valid")
    hits = np.nonzero(run <= threshold)[0]
    return int(hits[0] + window) if hits.size else None


def num_steps_for(total_examples: int, batch_size: int) -> int:
    return math.ceil(total_examples / batch_size)
