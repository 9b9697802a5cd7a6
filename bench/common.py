"""What every benchmark shares: the machine record, logging to stderr, keeping stdout for
the one JSON line, timing, peak memory and fp32 matmul peak.

Benchmarks run as scripts (``python bench/zoo.py``) or modules (``python -m bench.zoo``);
scripts reach this module through `ensure_importable` (the repository root on
``sys.path``)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def logger(name: str) -> Callable[..., None]:
    """``log(*args)`` printing ``[bench/<name>] ...`` on stderr."""

    def log(*args: Any) -> None:
        print(f"[bench/{name}]", *args, file=sys.stderr, flush=True)

    return log


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Sends everything written to stdout (Python or C) to stderr, so the JSON line is alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def machine() -> dict[str, Any]:
    """CPU model and cores, OS, Python and library versions, JAX backend and devices, and
    the load average when the benchmark started (the machines are shared)."""
    import flax
    import jax
    import jaxlib
    import optax

    cpu: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                key, _, value = ln.partition(":")
                if key.strip() in ("model name", "cpu family", "model") and key.strip() not in cpu:
                    cpu[key.strip()] = value.strip()
                if not ln.strip():
                    break
    except OSError:
        pass
    devices = jax.devices()
    return {
        "cpu_model": cpu.get("model name") or platform.processor() or "unknown",
        "cpu_family_model": f"{cpu.get('cpu family', '?')}/{cpu.get('model', '?')}",
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(value, wall seconds, CPU share = process CPU s / wall s) of one blocking call."""
    import jax

    c0, t0 = os.times(), time.perf_counter()
    value = jax.block_until_ready(fn())
    wall = time.perf_counter() - t0
    c1 = os.times()
    return value, wall, (c1.user - c0.user + c1.system - c0.system) / wall


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PEAK_SIZES = (1024, 2048)


def matmul_peak() -> Callable[[], float]:
    """A function that times jitted fp32 square matmuls (`PEAK_SIZES`, three of each of the
    smaller ones) and returns the best FLOP/s."""
    import jax
    import jax.numpy as jnp

    dot = jax.jit(jnp.dot)
    mats = []
    for n in PEAK_SIZES:
        a = jax.random.normal(jax.random.key(n), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(n + 1), (n, n), jnp.float32)
        dot(a, b).block_until_ready()
        mats.append((n, a, b))

    def once() -> float:
        rates = []
        for n, a, b in mats:
            for _ in range(3 if n < max(PEAK_SIZES) else 1):
                rates.append(2 * n**3 / timed(lambda a=a, b=b: dot(a, b))[1])
        return max(rates)

    return once


def write_result(result: dict[str, Any], out: str | os.PathLike) -> None:
    """Writes `result` as indented JSON to `out` and prints it as one line on stdout."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)
