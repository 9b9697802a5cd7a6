"""Vmapped training and evaluation of populations.

A whole population of one `Target` trains in one jitted call per epoch (`jax.vmap` over
targets inside a `jax.lax.scan` over steps). Each member has its own seed (init, data
order, dropout), learning rate, weight decay and train fraction; the optimizer family and
batch size are shared within a population (they change the program).

Numerical faults are quarantined: a member whose loss or weights become NaN/Inf stops
updating and is flagged in `TrainState.diverged`; the others keep training.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyper import sharding
from hyper.conv_matmul import for_populations
from hyper.data import Dataset
from hyper.errors import WeightspaceError
from hyper.init_programs import init_compiler_options
from hyper.optimizers import OPTIMIZERS, SCHEDULES, make_optimizer
from hyper.population import size_bytes
from hyper.target import Params, Target

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "cross_entropy",
    "evaluate",
    "make_optimizer",
    "map_member_chunks",
    "member_subsets",
    "shuffled_order",
    "subsets_program",
]


def shuffled_order(key: jax.Array, subset: jax.Array) -> jax.Array:
    """The indices of `subset`'s True entries in random order, then the others.

    Equals ``argsort(where(subset, uniform(key, subset.shape), 2.0), stable=True)``:
    ``jax.random.uniform`` draws ``bits(key) >> 9`` / 2**23, so sorting those 23-bit
    integers, ties broken by index, gives the same order. XLA:CPU sorts one integer array
    several times faster than (float, index) pairs, so the (key, index) pairs are packed
    into uint32 words, in two stable passes (low key bits, then high) when they need more
    than 32 bits.

    Args:
      key: one PRNG key.
      subset: `[n]` bool.

    Returns:
      `[n]` int32, a permutation of ``range(n)``.
    """
    n = subset.shape[-1]
    b = max(1, (n - 1).bit_length())  # bits of an index
    a = max(0, b - 8)  # low key bits sorted first, so the high (24 - a) bits + b bits fit 32
    if a + b > 32:  # over 2**20 examples: the plain sort
        u = jax.random.uniform(key, subset.shape)
        return jnp.argsort(jnp.where(subset, u, 2.0))
    k = jnp.where(subset, jax.random.bits(key, subset.shape, jnp.uint32) >> 9, 1 << 23)
    k = k.astype(jnp.uint32)
    index = jnp.arange(n, dtype=jnp.uint32)
    low = jnp.uint32((1 << b) - 1)
    if a == 0:
        return (jnp.sort((k << b) | index) & low).astype(jnp.int32)
    first = jnp.sort(((k & jnp.uint32((1 << a) - 1)) << b) | index) & low
    second = jnp.sort(((k[first] >> a) << b) | index) & low  # ties keep the first pass order
    return first[second].astype(jnp.int32)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of `[batch, classes]` logits against int labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What all members of a trained population share.

    Attributes:
      optimizer: a family of `OPTIMIZERS` (`make_optimizer`).
      batch_size: examples per step and member.
      steps_per_epoch: default ``ceil(n_train / batch_size)``.
      eval_batch_size: examples per chunk in `evaluate` (bounds memory).
      member_chunk: members that step together in an epoch; the population's chunks run
        one after another, each through all its steps, so large populations stay in cache
        and their activation memory is bounded by the chunk (same results, members being
        independent, bit for bit while each device steps at least two members at a time:
        XLA's CPU code for a vmapped batch of one can round differently). Used only when
        it divides the population and is a multiple of the device count. ``"memory"``:
        the widest such chunk (two or more members per device) whose temporaries fit in
        half the population state's own bytes, estimated from one compiled probe chunk
        (`memory_analysis()`); on accelerators at least 1,024 members (`_MIN_DEVICE_CHUNK`).
        Default: 64 on CPU (best of 16-1,024 for N=4,096 digits MLPs in
        `bench/scaling.py`, about 2x all at once); ``"memory"`` on accelerators.
    """

    optimizer: str = "adam"
    batch_size: int = 128
    steps_per_epoch: int | None = None
    eval_batch_size: int = 1024
    member_chunk: int | str | None = None

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise WeightspaceError(
                f"unknown optimizer {self.optimizer!r}; expected one of {sorted(OPTIMIZERS)}"
            )
        if self.batch_size < 1:
            raise WeightspaceError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise WeightspaceError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        chunk = self.member_chunk
        if (
            chunk is not None
            and chunk != "memory"
            and (isinstance(chunk, str) or int(chunk) != chunk or chunk < 1)
        ):
            raise WeightspaceError(f"member_chunk must be >= 1 or 'memory', got {chunk!r}")


# The smallest member chunk the "memory" rule uses on an accelerator: on one H100 (stop-13
# `bench/gpu.sh` run) 1,024 digits MLPs stepping together reached 84% of the best
# net-steps/s measured (65,536 at once); 64 reached 15%. On one H200
# (`bench/member_chunk.py`), N=4,096 in chunks of 1,024 ran at 0.94x the speed of all at
# once, with 1.34x instead of 4.25x the state's bytes of memory growth.
_MIN_DEVICE_CHUNK = 1024


class TrainState(NamedTuple):
    """Per-member training state; every leaf has a leading `targets` axis.

    Attributes:
      params: the population.
      opt_state: optax state (holds each member's learning rate and weight decay).
      key: per-member PRNG keys (data order and dropout).
      subset: `[targets, n_train]` bool, the training examples each member may see.
      diverged: `[targets]` bool, members quarantined after a NaN/Inf.
      step: `[targets]` int32 steps taken.
    """

    params: Params
    opt_state: Any
    key: jax.Array
    subset: jax.Array
    diverged: jax.Array
    step: jax.Array


def _as_member_array(name: str, value: Any, n: int, dtype: Any) -> jax.Array:
    a = np.asarray(value, dtype=dtype)
    if a.ndim == 0:
        a = np.full((n,), a, dtype)
    if a.shape != (n,):
        raise WeightspaceError(f"{name}: expected a scalar or shape ({n},), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise WeightspaceError(f"{name}: values must be finite, got {a.tolist()}")
    return jnp.asarray(a)


def _init_chunk(n: int, preferred: int = 64) -> int:
    """Members per chunk for one-off per-member work (init, subsets): the largest divisor of
    `n` up to `preferred` that splits evenly over the devices; all `n` when none is >= 8."""
    if n <= preferred:
        return n
    ndev = jax.device_count()
    step = ndev if n % ndev == 0 else 1
    for k in range(preferred - preferred % step, 7, -step):
        if n % k == 0:
            return k
    return n


def map_member_chunks(fn, tree: Any, chunk: int, *, in_place: bool = False) -> Any:
    """``fn(tree)`` for a batched `fn` (members on the leading axis of its inputs and
       outputs), applied `chunk` members at a time. For use inside `jax.jit`.
    Member ``m = i * c + j`` (``c = n // chunk``) is row `i` of
       chunk `j`: a free reshape to ``[chunk, c, ...]`` keeps each device's block of rows when
       the members axis is sharded, so every chunk is split over the devices like the whole
       population and the work stays local (a plain ``lax.map`` over the sharded axis makes XLA
       replicate it). Temporaries grow with `chunk`, not with the population.

       With ``in_place=True``, `fn` returns ``(new, out)`` where `new` has the structure of
       `tree`; each chunk's `new` is written back into `tree`'s buffers (donate them to the
       enclosing jit to update the state without a second copy) and ``(tree', out)`` returned.
    """
    n = jax.tree.leaves(tree)[0].shape[0]
    if chunk >= n:
        return fn(tree)
    if n % chunk:
        raise WeightspaceError(f"map_member_chunks: chunk {chunk} does not divide {n} members")
    c = n // chunk
    grid = jax.tree.map(lambda v: v.reshape(chunk, c, *v.shape[1:]), tree)

    def column(t, j):
        return jax.tree.map(lambda v: jax.lax.dynamic_index_in_dim(v, j, 1, False), t)

    def put(t, part, j):
        return jax.tree.map(lambda v, x: jax.lax.dynamic_update_index_in_dim(v, x, j, 1), t, part)

    shapes = jax.eval_shape(fn, column(grid, 0))
    if in_place:
        shapes = shapes[1]
    out = jax.tree.map(lambda a: jnp.zeros((chunk, c, *a.shape[1:]), a.dtype), shapes)

    def body(j, carry):
        grid, out = carry
        res = fn(column(grid, j))
        if in_place:
            return put(grid, res[0], j), put(out, res[1], j)
        return grid, put(out, res, j)

    grid, out = jax.lax.fori_loop(0, c, body, (grid, out))
    flat = lambda v: v.reshape(n, *v.shape[2:])  # noqa: E731
    out = jax.tree.map(flat, out)
    return (jax.tree.map(flat, grid), out) if in_place else out


def _splits(n: int) -> bool:
    """Whether `Trainer.place` splits `n` members over the devices (more than one device,
    and `n` a multiple of their number)."""
    ndev = jax.device_count()
    return ndev > 1 and n > 0 and n % ndev == 0


def member_subsets(
    keys: jax.Array, n_sub: jax.Array, n_train_arange: jax.Array, shard: bool
) -> jax.Array:
    """Each member's training subset: its first `n_sub` examples in a permutation of its own.

    Args:
      keys: `[targets]` member keys (the permutation uses ``fold_in(key, 1)``).
      n_sub: `[targets]` int, the subset sizes.
      n_train_arange: ``arange(n_train)``.
      shard: keep the result split over the targets mesh (see `Trainer.place`).

    Returns:
      `[targets, n_train]` bool.
    """

    def one(k, m):
        perm = jax.random.permutation(jax.random.fold_in(k, 1), n_train_arange.shape[0])
        rank = jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0]))
        return rank < m

    # Chunks of members: a vmapped permutation's sort temporaries grow with all of them.
    chunk = _init_chunk(keys.shape[0])
    subsets = map_member_chunks(lambda a: jax.vmap(one)(*a), (keys, n_sub), chunk)
    return _keep_sharded(subsets, shard)


@functools.cache
def subsets_program() -> Callable:
    """`member_subsets` compiled once for every Trainer, like the initialisation (it runs
    once per population; `init_compiler_options`: on CPU 0.5 s -> 0.3 s, same subsets)."""
    return jax.jit(member_subsets, static_argnums=3, compiler_options=init_compiler_options())


def _keep_sharded(tree: Any, shard: bool) -> Any:
    """Inside jit: pins per-member leaves to the targets mesh when `shard` and `place` would
    split them (else XLA may replicate outputs, e.g. those that read no sharded input)."""
    leaves = jax.tree.leaves(tree)
    n = leaves[0].shape[0] if leaves and leaves[0].ndim else 0
    if not shard or not _splits(n):
        return tree
    s = sharding.targets_sharding(sharding.targets_mesh())
    return jax.tree.map(
        lambda v: jax.lax.with_sharding_constraint(v, s) if v.ndim and v.shape[0] == n else v,
        tree,
    )


class Trainer:
    """Trains populations of `target` on `dataset` with one compiled program per epoch.

    Examples:
      >>> from hyper import data, architectures
      >>> t = architectures.make_target("mlp", input_shape=(8, 8), widths=(32,), out_features=10)
      >>> tr = Trainer(t, data.load("digits"), TrainConfig(batch_size=64))
      >>> state = tr.init(jax.random.key(0), n=4, learning_rate=1e-2)
      >>> state, _ = tr.train_epoch(state, 0)
      >>> tr.evaluate(state.params)["test_acc"].shape
      (4,)
    """

    def __init__(self, target: Target, dataset: Dataset, config: TrainConfig | None = None):
        self.target = target
        self.dataset = dataset
        self.config = config or TrainConfig()
        if target.input_shape is not None and tuple(target.input_shape) != dataset.input_shape:
            raise WeightspaceError(
                f"target {target.name} takes inputs {target.input_shape}, dataset {dataset.name} "
                f"has {dataset.input_shape}"
            )
        self.x_train = jnp.asarray(dataset.x_train)
        self.y_train = jnp.asarray(dataset.y_train)
        self.x_test = jnp.asarray(dataset.x_test)
        self.y_test = jnp.asarray(dataset.y_test)
        self.n_train = int(dataset.x_train.shape[0])
        self.steps_per_epoch = self.config.steps_per_epoch or math.ceil(
            self.n_train / self.config.batch_size
        )
        decay_mask = jax.tree.unflatten(
            target.treedef, [s.role in ("kernel", "embedding") for s in target.spec]
        )
        self._trainable = jax.tree.unflatten(target.treedef, [s.trainable for s in target.spec])
        family = self.config.optimizer
        self._opt_factory = optax.inject_hyperparams(
            lambda learning_rate, weight_decay: make_optimizer(
                family, learning_rate, weight_decay=weight_decay, decay_mask=decay_mask
            )
        )
        # Placeholder values: `update` reads each member's hyperparameters from its state.
        self._opt = self._opt_factory(learning_rate=0.0, weight_decay=0.0)
        self._train_apply = for_populations(target.pure_train_apply)
        self._epoch_fn = jax.jit(self._epoch, donate_argnums=0, static_argnums=2)
        # members -> members per chunk, as the "memory" rule decided it (once per size)
        self.memory_chunks: dict[int, int] = {}
        self.epoch_traces = 0  # how often the epoch program was traced (compile checks)
        self._member_step_fn = jax.jit(self.member_step)
        self._eval_fn = jax.jit(self._evaluate_both)  # both splits: one compile
        # Initialisation runs once per population: compiled for compile speed (see
        # `init_compiler_options`). Training keeps the default optimisation.
        once = init_compiler_options()
        # In chunks of members, like the epochs: the random-number temporaries stay small.
        # Outputs stay split like the inputs (see `place`): no replicated copy of the state.
        self._init_params_fn = jax.jit(
            lambda keys, scale, shard: _keep_sharded(
                map_member_chunks(
                    lambda ks: jax.vmap(self._init_member)(*ks),
                    (keys, scale),
                    _init_chunk(keys.shape[0]),
                ),
                shard,
            ),
            static_argnums=2,
            compiler_options=once,
        )
        self._init_opt_fn = jax.jit(
            lambda p, a, b, shard: _keep_sharded(
                jax.vmap(lambda p, a, b: self._opt_factory(a, b).init(p))(p, a, b), shard
            ),
            static_argnums=3,
            compiler_options=once,
        )

    # --- state ---------------------------------------------------------------------------

    def init(
        self,
        key: jax.Array,
        n: int,
        *,
        learning_rate: Any = 1e-3,
        weight_decay: Any = 0.0,
        train_fraction: Any = 1.0,
        init_scale: Any = 1.0,
        params: Params | None = None,
        member_keys: jax.Array | None = None,
        shard: bool = True,
    ) -> TrainState:
        """A fresh `TrainState` for `n` members.

        Args:
          key: one key; member `i` uses ``fold_in(key, i)`` for init, data and dropout.
          n: population size.
          learning_rate, weight_decay, train_fraction, init_scale: scalars or `[n]` arrays.
            `train_fraction` in (0, 1] is the share of the train split a member sees;
            `init_scale` multiplies the initial kernels.
          params: an existing population to train instead of fresh weights (init_scale ignored).
          member_keys: `[n]` keys, one per member, instead of ``fold_in(key, i)`` (a zoo
            uses this so a member's run does not depend on how members are grouped).
          shard: split the members over all local devices when `n` is a multiple of their
            number (see `hyper.sharding`); results are identical, only placement changes.
        """
        if n < 1:
            raise WeightspaceError(f"Trainer.init: n must be >= 1, got {n}")
        lr = _as_member_array("learning_rate", learning_rate, n, np.float32)
        wd = _as_member_array("weight_decay", weight_decay, n, np.float32)
        frac = _as_member_array("train_fraction", train_fraction, n, np.float32)
        scale = _as_member_array("init_scale", init_scale, n, np.float32)
        if np.any(np.asarray(lr) <= 0):
            raise WeightspaceError(f"learning_rate must be > 0, got {np.asarray(lr).tolist()}")
        if np.any(np.asarray(wd) < 0):
            raise WeightspaceError(f"weight_decay must be >= 0, got {np.asarray(wd).tolist()}")
        if np.any((np.asarray(frac) <= 0) | (np.asarray(frac) > 1)):
            raise WeightspaceError(
                f"train_fraction must be in (0, 1], got {np.asarray(frac).tolist()}"
            )
        if member_keys is not None:
            keys = jnp.array(member_keys)  # a copy: train_epoch donates the state's buffers
            if keys.shape != (n,) or not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
                raise WeightspaceError(
                    f"member_keys: expected {n} typed PRNG keys, got {keys.shape}"
                )
        else:
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
        if shard:
            # Every per-member input is split first, so params, optimizer state and subsets
            # are created already sharded: no full unsharded copy exists at any time.
            keys, scale, lr, wd, frac = self.place((keys, scale, lr, wd, frac))
        if params is None:
            params = self._init_params_fn(keys, scale, shard)
        else:
            got = self.target.validate(params, batched=True)
            if got != n:
                raise WeightspaceError(f"Trainer.init: params hold {got} targets, n={n}")
            # train_epoch donates the state's buffers: the caller's arrays must survive. A
            # leaf that placing moved is a new buffer already; only the others are copied.
            placed = self.place(params) if shard else params
            params = jax.tree.map(lambda a, b: jnp.copy(b) if a is b else b, params, placed)
        opt_state = self._init_opt_fn(params, lr, wd, shard)
        subset = self._subsets(keys, frac, shard)
        state = TrainState(
            params=params,
            opt_state=opt_state,
            key=keys,
            subset=subset,
            diverged=jnp.zeros((n,), bool),
            step=jnp.zeros((n,), jnp.int32),
        )
        return self.place(state) if shard else state

    @staticmethod
    def place(state: Any) -> Any:
        """Shards a per-member tree over all local devices if its size allows, else returns it."""
        if _splits(jax.tree.leaves(state)[0].shape[0]):
            return sharding.shard_targets(state, sharding.targets_mesh())
        return state

    def _init_member(self, key: jax.Array, scale: jax.Array) -> Params:
        kernel = jax.tree.unflatten(
            self.target.treedef, [s.role == "kernel" for s in self.target.spec]
        )
        p = self.target.init(jax.random.fold_in(key, 0))
        return jax.tree.map(lambda v, is_k: v * scale if is_k else v, p, kernel)

    def _subsets(self, keys: jax.Array, frac: jax.Array, shard: bool) -> jax.Array:
        n_sub = jnp.maximum(1, jnp.round(frac * self.n_train).astype(jnp.int32))
        return subsets_program()(keys, n_sub, jnp.arange(self.n_train), shard)

    # --- training ------------------------------------------------------------------------

    def _loss(self, params, x, y, key):
        logits, new_params = self._train_apply(params, x, key)
        return cross_entropy(logits, y), (new_params, logits)

    @property
    def epoch_programs(self) -> int:
        """How many epoch programs `train_epoch` has compiled (one per state shape, sharding
        and member chunk)."""
        return self._epoch_fn._cache_size()

    def member_step(self, params, opt_state, x, y, key, diverged):
        """One optimisation step of one member (unbatched: `train_epoch` vmaps it); NaN/Inf
        quarantines the member.

        Returns:
          ``(params, opt_state, loss, acc, diverged)``.
        """
        (loss, (new_params, logits)), grads = jax.value_and_grad(self._loss, has_aux=True)(
            params, x, y, key
        )
        updates, new_opt = self._opt.update(grads, opt_state, params)
        stepped = optax.apply_updates(params, updates)
        # Non-trainable leaves (running statistics) take the values the forward pass computed.
        stepped = jax.tree.map(lambda t, a, b: a if t else b, self._trainable, stepped, new_params)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(stepped)])
        )
        ok = finite & ~diverged
        params = jax.tree.map(lambda a, b: jnp.where(ok, a, b), stepped, params)
        opt_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_opt, opt_state)
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return params, opt_state, loss, acc, diverged | ~finite

    def member_chunk(self, state: TrainState) -> int:
        """How many members of `state` step together in `train_epoch` (see
        `TrainConfig.member_chunk`; the ``"memory"`` rule decides once per population size)."""
        n = state.diverged.shape[0]
        chunk = self.config.member_chunk
        if chunk is None:  # CPU caches favour small chunks; accelerators, bounded memory
            chunk = 64 if jax.default_backend() == "cpu" else "memory"
        if chunk == "memory":
            if n not in self.memory_chunks:
                self.memory_chunks[n] = self._memory_chunk(state)
            return self.memory_chunks[n]
        ndev = jax.device_count()
        if chunk >= n or n % chunk or chunk % ndev:
            return n
        return chunk

    def _memory_chunk(self, state: TrainState) -> int:
        """The widest usable chunk whose epoch temporaries fit in half the state's bytes
        (peak memory then stays near 1.5x the state's own size).

        Usable: a divisor of the population, at least two members per device (see
        `TrainConfig.member_chunk`), or the whole population. One probe chunk (the widest
        usable one up to 256 members) is compiled, never run; its temporary bytes per
        member scale the others. On accelerators the chunk is at least `_MIN_DEVICE_CHUNK`
        members, or the device idles.
        """
        n = state.diverged.shape[0]
        ndev = jax.device_count()
        usable = [c for c in range(2 * ndev, n, ndev) if n % c == 0] + [n]
        probe = max([c for c in usable if c <= 256] or usable[:1])
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct((probe, *a.shape[1:]), a.dtype), state)
        epoch = jax.ShapeDtypeStruct((), jnp.int32)
        compiled = jax.jit(self._epoch_members).lower(shapes, epoch).compile()
        temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)
        if not temp:  # the backend does not say: all at once
            return n
        per_member = temp / probe
        budget = size_bytes(state) / 2
        fits = [c for c in usable if c * per_member <= budget]
        chunk = max(fits) if fits else usable[0]
        if jax.default_backend() != "cpu":
            chunk = max(chunk, min(c for c in usable if c >= min(n, _MIN_DEVICE_CHUNK)))
        return chunk

    def _epoch(self, state: TrainState, epoch: jax.Array, chunk: int):
        self.epoch_traces += 1  # this Python body runs once per trace
        # The chunks run one after another, updating the carried (donated) state in place.
        return map_member_chunks(
            lambda s: self._epoch_members(s, epoch), state, chunk, in_place=True
        )

    def _epoch_members(self, state: TrainState, epoch: jax.Array):
        batch = self.config.batch_size
        n_sub = jnp.sum(state.subset, axis=1)

        def orders(key, subset):
            return shuffled_order(jax.random.fold_in(jax.random.fold_in(key, 2), epoch), subset)

        order = jax.vmap(orders)(state.key, state.subset)

        def step(carry, j):
            params, opt_state, diverged = carry
            pos = (j * batch + jnp.arange(batch))[None, :] % n_sub[:, None]
            idx = jnp.take_along_axis(order, pos, axis=1)
            x = self.x_train[idx]
            y = self.y_train[idx]
            keys = jax.vmap(
                lambda k: jax.random.fold_in(jax.random.fold_in(k, 3), epoch * 100003 + j)
            )(state.key)
            params, opt_state, loss, acc, diverged = jax.vmap(self.member_step)(
                params, opt_state, x, y, keys, diverged
            )
            return (params, opt_state, diverged), (loss, acc)

        (params, opt_state, diverged), (loss, acc) = jax.lax.scan(
            step, (state.params, state.opt_state, state.diverged), jnp.arange(self.steps_per_epoch)
        )
        new_state = state._replace(
            params=params,
            opt_state=opt_state,
            diverged=diverged,
            step=state.step + jnp.where(diverged, 0, self.steps_per_epoch),
        )
        return new_state, {"batch_loss": jnp.mean(loss, 0), "batch_acc": jnp.mean(acc, 0)}

    def train_epoch(self, state: TrainState, epoch: int) -> tuple[TrainState, dict[str, jax.Array]]:
        """Trains every member for one epoch (`steps_per_epoch` steps, one compiled call).

        The data order and dropout keys depend only on each member's key and `epoch`, so a
        run resumed from a saved state repeats an uninterrupted run exactly.

        Note: the input state's buffers are donated; use the returned state.

        Returns:
          the new state and ``{"batch_loss", "batch_acc"}``: per-member means over the epoch's
          minibatches, `[targets]`.
        """
        chunk = self.member_chunk(state)
        return self._epoch_fn(state, jnp.asarray(epoch, jnp.int32), chunk)

    def fit(
        self, state: TrainState, epochs: int, *, start_epoch: int = 0, progress: bool = False
    ) -> TrainState:
        """Runs epochs `start_epoch .. start_epoch + epochs - 1`."""
        from tqdm.auto import tqdm

        for e in tqdm(
            range(start_epoch, start_epoch + epochs), disable=not progress, desc="epochs"
        ):
            state, _ = self.train_epoch(state, e)
        return state

    # --- evaluation ----------------------------------------------------------------------

    def _evaluate_both(self, params, x_train, y_train, x_test, y_test):
        splits = [(x_train, y_train), (x_test, y_test)]
        return _evaluate_splits(self.target, params, splits, self.config.eval_batch_size)

    def evaluate(self, params: Params) -> dict[str, jax.Array]:
        """Per-member ``train_loss, train_acc, test_loss, test_acc`` (each `[targets]`) on the
        full train and test splits, in evaluation mode: `evaluate` over both splits in one
        pass (one compiled program; its chunks of examples span the two splits)."""
        self.target.validate(params, batched=True)
        (train_loss, train_acc), (test_loss, test_acc) = self._eval_fn(
            params, self.x_train, self.y_train, self.x_test, self.y_test
        )
        return {
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
        }


def evaluate(
    target: Target, population: Params, x: jax.Array, y: jax.Array, *, batch_size: int = 1024
) -> Mapping[str, jax.Array]:
    """Mean cross-entropy and accuracy of every member on `(x, y)`, in chunks of examples.

    The one evaluation of a population in weightspace: `Trainer.evaluate` (both splits in
    one pass), `hyper.hypernets.generate_and_evaluate`, the hypernet export and
    `hyper.prune.accuracy` all run it. On XLA:CPU the targets' convolutions run as patch
    matmuls (`hyper.conv_matmul`); `Target.apply_population` is the plain forward pass.
    Pure and traceable (call it inside `jax.jit`).

    Returns:
      ``{"loss": [targets], "acc": [targets]}``.
    """
    ((loss, acc),) = _evaluate_splits(target, population, [(x, y)], batch_size)
    return {"loss": loss, "acc": acc}


def _evaluate_splits(
    target: Target,
    population: Params,
    splits: list[tuple[jax.Array, jax.Array]],
    batch_size: int,
) -> list[tuple[jax.Array, jax.Array]]:
    """`(loss, acc)` per `(x, y)` split, every member, in one pass over all their examples
    in equal chunks of at most `batch_size` (one program for all splits: a trainer's train
    and test splits compile once together)."""
    sizes = [int(x.shape[0]) for x, _ in splits]
    x = jnp.concatenate([x for x, _ in splits])
    y = jnp.concatenate([y for _, y in splits])
    split_id = np.repeat(np.arange(len(splits)), sizes)
    n = x.shape[0]
    chunks = max(1, math.ceil(n / batch_size))
    size = math.ceil(n / chunks)
    pad = chunks * size - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]) if pad else y
    # [chunks, splits, size]: 1 where an example belongs to the split (0 for the padding)
    owner = np.concatenate([split_id, np.full(pad, -1)]).reshape(chunks, 1, size)
    weights = jnp.asarray(owner == np.arange(len(splits))[None, :, None], jnp.float32)
    xs = xp.reshape(chunks, size, *x.shape[1:])
    ys = yp.reshape(chunks, size)

    apply = for_populations(target.pure_apply)

    def chunk(carry, inp):
        xc, yc, wc = inp
        logits = jax.vmap(apply, in_axes=(0, None))(population, xc)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yc[None, :])
        correct = jnp.argmax(logits, -1) == yc[None, :]
        loss_sum, acc_sum = carry  # [splits, targets]
        # per split, a sum over the chunk's examples (a reduction along the example axis
        # only: sharded members give the one-device sums)
        loss = jnp.stack([jnp.sum(ce * w[None, :], -1) for w in wc])
        acc = jnp.stack([jnp.sum(correct * w[None, :], -1) for w in wc])
        return (loss_sum + loss, acc_sum + acc), None

    t = jax.tree.leaves(population)[0].shape[0]
    zeros = jnp.zeros((len(splits), t), jnp.float32)
    (loss_sum, acc_sum), _ = jax.lax.scan(chunk, (zeros, zeros), (xs, ys, weights))
    return [(loss_sum[i] / m, acc_sum[i] / m) for i, m in enumerate(sizes)]
