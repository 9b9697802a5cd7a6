"""A 1-D `targets` mesh over the local devices, and sharded populations.

Populations shard along their leading `targets` axis; `jit(vmap(f))` then runs each
device's block of targets on that device. On a CPU, `use_cpu_cores()` exposes each core
as a device (before JAX starts its backend), so independent targets train in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from hyper.errors import WeightspaceError

__all__ = [
    "barrier",
    "fixed_order_sum",
    "initialize_multihost",
    "is_writer",
    "pad_targets",
    "put",
    "replicated",
    "shard_targets",
    "targets_mesh",
    "targets_sharding",
    "to_host",
    "use_cpu_cores",
]


def use_cpu_cores(n: int | None = None, *, force: bool = False) -> int:
    """Asks JAX for one CPU device per core (call before any JAX computation).

    Keeps a device count that was chosen already (``jax_num_cpu_devices`` set by the
    caller, e.g. a test suite, or ``--xla_force_host_platform_device_count`` in
    ``XLA_FLAGS``) unless `force`. Has no effect once the backend has started.

    Returns:
      the number of CPU devices JAX will use (or was asked to use).
    """
    chosen = jax.config.jax_num_cpu_devices
    if not force and chosen is not None and chosen >= 0:
        return int(chosen)
    if not force and "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return len(jax.devices("cpu"))
    n = int(n or os.cpu_count() or 1)
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backend already initialised: keep what we have
        return len(jax.devices("cpu"))
    return n


def targets_mesh(devices: list[Any] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh named ``"targets"`` over `devices` (default: all devices)."""
    devices = list(devices) if devices is not None else jax.devices()
    return jax.make_mesh(
        (len(devices),), ("targets",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def targets_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("targets"))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_targets(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Places every leaf of `tree` (leading `targets` axis) split across `mesh`.

    Raises:
      ValueError: the number of targets is not a multiple of the mesh size.
    """
    size = mesh.devices.size
    for leaf in jax.tree.leaves(tree):
        n = leaf.shape[0] if getattr(leaf, "ndim", 0) else None
        if n is None or n % size:
            raise WeightspaceError(
                f"shard_targets: a leaf with shape {getattr(leaf, 'shape', None)} cannot be split "
                f"over {size} devices (the targets axis must be a multiple of {size})"
            )
    return put(tree, targets_sharding(mesh))


def put(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """`jax.device_put` that also works when `sharding` spans devices of other processes
    (multi-host): each process then supplies its own shards from its copy of the value,
    which must be the same on every process (e.g. computed from the same seed)."""
    if not sharding.is_fully_addressable:
        return jax.tree.map(lambda x: _put_global(x, sharding), tree)
    if all(d.platform == "cpu" for d in sharding.device_set):
        return jax.tree.map(lambda x: _put_cpu(x, sharding), tree)
    return jax.device_put(tree, sharding)


def _put_cpu(x: Any, sharding: jax.sharding.Sharding) -> Any:
    """On CPU devices, moving a device array to another sharding goes through a host copy:
    `jax.device_put` would compile a small resharding program per shape and dtype (~30 ms
    each, dozens per zoo or metanet run on 2 cores). The result is a new buffer, never an
    alias of `x` (callers donate it)."""
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer) or x.sharding == sharding:
        return jax.device_put(x, sharding)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _put_cpu(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(np.array(x, copy=True), sharding)


def _put_global(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(_put_global(jax.random.key_data(x), sharding), impl=impl)
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_host(tree: Any) -> Any:
    """Every leaf as a host numpy array, gathered from all processes when it is sharded
    across hosts (a collective: every process must call it)."""

    def one(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def initialize_multihost(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    cpu_devices: int | None = None,
    timeout_s: int = 120,
) -> None:
    """Joins this process to a multi-process JAX run (`jax.distributed.initialize`), checked
    first so that a bad setup is a clear error before anything compiles.

    On CPU, collectives go through Gloo and each process gets `cpu_devices` devices
    (default: one per core). On GPU/TPU clusters the same call works with each host's
    accelerators. Call it before any other JAX call. Every process waits up to `timeout_s`
    for all `num_processes` to join.

    Raises:
      ValueError: a process count below 1, an id outside ``[0, num_processes)``, an address
        that is not ``host:port``; or, after `timeout_s`, a run that could not be joined
        (processes started with different counts, a duplicate or missing id, an unreachable
        coordinator) or whose process count differs after joining.
    """
    for name, v in (("num_processes", num_processes), ("process_id", process_id)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise WeightspaceError(f"{name} must be an int, got {v!r}")
    if num_processes < 1:
        raise WeightspaceError(f"num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise WeightspaceError(f"process_id must lie in [0, {num_processes}), got {process_id}")
    host, _, port = str(coordinator_address).rpartition(":")
    if not host or not port.isdigit():
        raise WeightspaceError(
            f"coordinator_address must be 'host:port', got {coordinator_address!r}"
        )
    if os.environ.get("JAX_PLATFORMS", "cpu").split(",")[0] == "cpu":
        use_cpu_cores(cpu_devices, force=cpu_devices is not None)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s < 1:
        raise WeightspaceError(f"timeout_s must be a positive int, got {timeout_s!r}")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_s,
        )
    except Exception as e:  # noqa: BLE001 - JAX raises runtime errors of several types
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise WeightspaceError(
            f"process {process_id} of {num_processes} could not join the run at "
            f"{coordinator_address} within {timeout_s} s: every process must be started with "
            f"the same num_processes and coordinator address and its own process_id "
            f"({first})"
        ) from None
    # Every process learns what every other was told (a tiny all-gather, before any of the
    # caller's work compiles), so a mismatch fails on all of them, not only on the odd one.
    from jax.experimental import multihost_utils

    told = np.asarray(
        multihost_utils.process_allgather(np.asarray([num_processes], np.int32))
    ).reshape(-1)
    if jax.process_count() != num_processes or np.any(told != told[0]):
        raise WeightspaceError(
            f"joined a run of {jax.process_count()} processes, but its processes were started "
            f"with num_processes {sorted(told.tolist())} (this one: {num_processes}); start "
            "every process with the same count"
        )


def pad_targets(tree: Any, multiple: int) -> tuple[Any, int]:
    """Pads the leading `targets` axis of every leaf to a multiple of `multiple` by repeating
    the last target (valid inputs, so padded rows compute nothing odd). Returns the padded
    tree and the original count `n`; ``mask = arange(n_padded) < n`` marks real targets."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise WeightspaceError("pad_targets: empty tree")
    n = int(np.shape(leaves[0])[0]) if np.ndim(leaves[0]) else 0
    if n < 1 or any(np.ndim(v) < 1 or np.shape(v)[0] != n for v in leaves):
        raise WeightspaceError("pad_targets: every leaf needs the same non-empty leading axis")
    padded = -(-n // multiple) * multiple
    if padded == n:
        return tree, n

    def pad(v: Any) -> Any:
        v = jnp.asarray(v)
        return jnp.concatenate([v, jnp.repeat(v[-1:], padded - n, axis=0)], axis=0)

    return jax.tree.map(pad, tree), n


def is_writer() -> bool:
    """True on the one process that writes shared files (process 0; always on one host)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (nothing on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def fixed_order_sum(
    fn: Callable[[Any, Any], tuple[Any, Any]],
    shared: Any,
    per_item: Any,
    groups: int,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[Any, Any]:
    """Sums ``fn(shared, group)`` over `groups` equal groups of the leading axis of every
    leaf of `per_item`, one group at a time and in group order, the same on one device and
    on any 1-D ``targets`` `mesh` whose size divides `groups` (each device computes its own
    groups; the terms are gathered, then added in order).

    A plain sum over a sharded axis is reduced per device first and across devices after,
    in an order that depends on the device count; this fixes the order instead, at the cost
    of one term per group (e.g. one gradient per group). The sum is then bit-identical
    wherever the compiler emits the same code for one group on one device and inside the
    partitioned program: so for the hypernet trainer on CPU (tested), but not for every
    function (the graph metanet's forward on one batch part, looped on one device and
    inside `shard_map` on eight, differs by ~1e-6 on CPU, so its gradients are not summed
    this way).

    Args:
      fn: ``(shared, group) -> (term, kept)``: `term` (a pytree) is summed over groups;
        `kept` (leading axis: the group's items) is concatenated back in item order.
      shared: passed whole to every group (replicated on `mesh`).
      per_item: leaves with a leading axis of N items, N a multiple of `groups`.

    Returns:
      ``(sum of the terms, kept for all N items)``.
    """
    leaves = jax.tree.leaves(per_item)
    n = int(leaves[0].shape[0])
    if groups < 1 or n % groups or any(v.shape[0] != n for v in leaves):
        raise WeightspaceError(
            f"fixed_order_sum: {n} items cannot be split into {groups} equal groups"
        )
    if mesh is not None and groups % mesh.devices.size:
        raise WeightspaceError(
            f"fixed_order_sum: {groups} groups cannot be split over {mesh.devices.size} devices"
        )
    split = jax.tree.map(lambda v: v.reshape(groups, n // groups, *v.shape[1:]), per_item)

    def local(shared: Any, split: Any) -> tuple[Any, Any]:
        return jax.lax.map(lambda g: fn(shared, g), split)

    if mesh is not None:
        # check_vma=False: each device differentiates (or sums) its own groups locally;
        # no implicit cross-device sum may enter the terms.
        local = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(PartitionSpec(), PartitionSpec("targets")),
            out_specs=PartitionSpec("targets"),
            check_vma=False,
        )
    terms, kept = local(shared, split)
    total = jax.tree.map(lambda t: t[0], terms)
    for g in range(1, groups):
        total = jax.tree.map(lambda acc, t, g=g: acc + t[g], total, terms)
    kept = jax.tree.map(lambda v: v.reshape(n, *v.shape[2:]), kept)
    return total, kept
