"""The hypernetwork trainer: one jitted step over `M` sampled conditions.

Each step samples `M` conditions, generates `M` weight sets, evaluates every target on
its batch (one shared batch, or one batch per condition) and averages a
condition-dependent loss ``loss_fn(condition, logits, labels, params) -> scalar``.
Configured, checkpointed runs of it are `hyper.hypernets.train`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hyper import sharding
from hyper import train as train_lib
from hyper.conv_matmul import for_populations
from hyper.errors import WeightspaceError, WeightspaceTypeError
from hyper.hypernets import conditions as cond_lib
from hyper.hypernets.hypernet import HyperNet
from hyper.train import cross_entropy
from hyper.tree import Params, flatten_dict

__all__ = [
    "LOSSES",
    "HyperTrainer",
    "LossFn",
    "NonFiniteLossError",
    "cross_entropy_loss",
    "flat_items",
    "from_flat_items",
    "l2_conditioned_loss",
    "make_optimizer",
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
        raise WeightspaceTypeError(
            f"make_optimizer() got unexpected keyword arguments {chain_args}"
        )
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
        apply = for_populations(hnet.target.pure_apply)  # the fast CPU convolutions
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

    def lower_step(self, key: jax.Array) -> jax.stages.Lowered:
        """The jitted step lowered for the current state and `key` (``.compile().as_text()``
        shows the program that `step` runs)."""
        return self._step.lower(self.params, self.rest, self.opt_state, key)

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
            "params": flat_items(self.params),
            "rest": flat_items(self.rest, skip_keys=True),
            "opt_state": flat_items(self.opt_state),
        }
        out = jax.tree.map(jnp.copy, out)
        return {k: v for k, v in out.items() if v}  # Orbax refuses empty items

    def load_arrays(self, arrays: Mapping[str, Any]) -> None:
        """Loads what `arrays` returned (copied).

        Raises:
          ValueError: a group has the wrong number of arrays, or an array the wrong shape or
            dtype (e.g. arrays of a hypernet for another target); nothing is loaded then.
        """
        params = from_flat_items("params", self.params, arrays.get("params", {}))
        rest = from_flat_items("rest", self.rest, arrays.get("rest", {}), skip_keys=True)
        opt_state = from_flat_items("opt_state", self.opt_state, arrays.get("opt_state", {}))
        if self.mesh is not None:  # the weights live replicated on the mesh, like at init
            params, rest, opt_state = sharding.put(
                (params, rest, opt_state), sharding.replicated(self.mesh)
            )
        self.params, self.rest, self.opt_state = params, rest, opt_state


def flat_items(tree: Any, *, skip_keys: bool = False) -> dict[str, Any]:
    """The leaves of `tree` as ``{"0": leaf, "1": ...}`` (PRNG keys left out with
    `skip_keys`): the layout of a run's checkpoint items."""
    leaves = [v for v in jax.tree.leaves(tree) if not (skip_keys and _is_key(v))]
    return {str(i): v for i, v in enumerate(leaves)}


def from_flat_items(
    name: str, tree: Any, flat: Mapping[str, Any], *, skip_keys: bool = False
) -> Any:
    """`tree` with its leaves replaced by copies of the arrays of `flat` (`flat_items`'s layout),
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
