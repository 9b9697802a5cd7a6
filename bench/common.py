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


# ---------------------------------------------------------------------------------------
# Results: provenance, goals and the one atomic writer
# ---------------------------------------------------------------------------------------

QUICK_RESULTS = RESULTS / "quick"
CMPS = (">=", "<=", "==")


def git_state() -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository (None outside git)."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def goal(key: str, cmp: str, threshold: float, *, controls: list[str] | None = None) -> dict:
    """A structured goal: ``lookup(result, key) <cmp> threshold``. `controls`: further keys
    (the same measurement against other control runs) that must meet the threshold too; the
    goal is met only when every one does, and its value is the worst of them."""
    if cmp not in CMPS:
        raise ValueError(f"goal {key!r}: cmp must be one of {CMPS}, got {cmp!r}")
    g: dict[str, Any] = {"key": key, "cmp": cmp, "threshold": threshold}
    if controls:
        g["controls"] = list(controls)
    return g


def lookup(result: Any, path: str, default: Any = None) -> Any:
    """The value at ``a/b/c`` (`default` where the path does not exist); ``*last`` picks
    the entry with the largest numeric key."""
    node = result
    for part in path.split("/"):
        if part == "*last" and isinstance(node, dict):
            numeric = [k for k in node if k.isdigit()]
            if not numeric:
                return default
            node = node[max(numeric, key=int)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return default
    return node


def _number(v: Any) -> float | None:
    if isinstance(v, dict) and "value" in v:  # {"value": x, "kind": ...} records
        v = v["value"]
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def goal_margin(g: dict[str, Any], result: dict[str, Any]) -> tuple[float | None, float | None]:
    """(value, margin) of one structured goal; margin > 0 (or == 0) means met. The value is
    the worst over the goal's key and its controls; None when any of them is missing."""
    values = [_number(lookup(result, k)) for k in [g["key"], *g.get("controls", [])]]
    if any(v is None for v in values):
        return None, None
    t = float(g["threshold"])
    if g["cmp"] == ">=":
        value = min(values)
        return value, value - t
    if g["cmp"] == "<=":
        value = max(values)
        return value, t - value
    value = (
        values[0] if all(v == values[0] for v in values) else max(values, key=lambda v: abs(v - t))
    )
    return value, -abs(value - t)


def evaluate_goals(
    goals: dict[str, dict[str, Any]], result: dict[str, Any], *, quick: bool
) -> tuple[dict[str, bool | None] | None, dict[str, float | None]]:
    """(goals_met, margins). goals_met is None for a quick run (smoke sizes say nothing of a
    goal) and for a study without goals; a goal whose value is missing is None."""
    margins: dict[str, float | None] = {}
    met: dict[str, bool | None] = {}
    for name, g in goals.items():
        _, margin = goal_margin(g, result)
        margins[name] = None if margin is None else round(margin, 6)
        if margin is None:
            met[name] = None
        elif g["cmp"] == "==":
            met[name] = margin == 0
        else:
            met[name] = margin >= 0
    if quick or not goals:
        return None, margins
    return met, margins


def result_path(name: str, *, quick: bool, out: str | os.PathLike | None = None) -> Path:
    """Where a run writes: `out`, else ``bench/results[/quick]/<name>.json``. A quick run
    may not write into ``bench/results/`` outside ``quick/`` (it would pass for a full one)."""
    path = Path(out) if out else (QUICK_RESULTS if quick else RESULTS) / f"{name}.json"
    if quick:
        resolved = path.resolve()
        if resolved.is_relative_to(RESULTS.resolve()) and not resolved.is_relative_to(
            QUICK_RESULTS.resolve()
        ):
            raise ValueError(
                f"a --quick run may write only under {QUICK_RESULTS}, not {path} "
                "(it would replace a full result)"
            )
    return path


def write_result(
    result: dict[str, Any],
    out: str | os.PathLike | None = None,
    *,
    name: str,
    schema: int,
    quick: bool,
    goals: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Adds the provenance (benchmark name, schema version, git commit and dirty flag, the
    quick flag) and the goals (`goals`, `goals_met`, `goal_margins`; ``{}``/None for a study
    without goals, None for a quick run) to `result`; writes it atomically as indented JSON
    to `result_path` and prints it as one line on stdout. Returns the path written."""
    path = result_path(name, quick=quick, out=out)
    goals = dict(goals or {})
    met, margins = evaluate_goals(goals, result, quick=quick)
    result.update(
        benchmark=name,
        schema_version=schema,
        quick=bool(quick),
        git=git_state(),
        goals=goals,
        goals_met=met,
        goal_margins=margins,
    )
    _write_json(path, result)
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return path


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def record_section(name: str, section: str, key: str, value: Any) -> Path | None:
    """Sets ``result[section][key] = value`` in the committed full result `name` (a run
    that measures one part of a benchmark, recorded beside the rest of it); returns the
    path, or None when that result does not exist yet."""
    path = result_path(name, quick=False)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data.setdefault(section, {})[key] = value
    _write_json(path, data)
    return path
