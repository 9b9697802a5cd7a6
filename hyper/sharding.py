"""A 1-D `targets` mesh over the local devices, and sharded populations.

Populations shard along their leading `targets` axis; `jit(vmap(f))` then runs each
device's block of targets on that device. On a CPU, `use_cpu_cores()` exposes each core
as a device (before JAX starts its backend), so independent targets train in parallel.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["replicated", "shard_targets", "targets_mesh", "targets_sharding", "use_cpu_cores"]


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
            raise ValueError(
                f"shard_targets: a leaf with shape {getattr(leaf, 'shape', None)} cannot be split "
                f"over {size} devices (the targets axis must be a multiple of {size})"
            )
    return jax.device_put(tree, targets_sharding(mesh))
