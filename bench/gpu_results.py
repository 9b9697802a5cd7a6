"""Collects `bench/gpu.sh`'s results into one file: ``bench/results/gpu.json``.

Usage::

  python bench/gpu_results.py [DIR]     # default bench/results/gpu

Reads every ``DIR/*.json`` (one benchmark's result each; benchmarks run by hand into DIR,
e.g. ``bench/member_chunk.py --out DIR/member_chunk.json``, are collected too) and
``DIR/steps.txt`` (``name exit-status seconds`` per step that `gpu.sh` ran), and writes
``{"gpu": {bench: result}, "steps": {bench: {rc, seconds, timed_out}}, "wall_s": seconds of
the steps, "dry_run_on_cpu": whether a result ran on a CPU}`` beside DIR as ``gpu.json``.
Prints a one-line summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# Version 2: provenance (git, schema_version) written by bench.common.write_result.
SCHEMA_VERSION = 2


def collect(out: Path) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for p in sorted(out.glob("*.json")):
        try:
            runs[p.stem] = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            runs[p.stem] = {"error": f"unreadable: {e}"}
    steps: dict[str, Any] = {}
    listed = out / "steps.txt"
    for line in listed.read_text().splitlines() if listed.exists() else []:
        if line.strip():
            name, rc, secs = line.split()
            steps[name] = {"rc": int(rc), "seconds": int(secs), "timed_out": rc == "124"}
    backends = {(r.get("machine") or {}).get("backend") for r in runs.values()}
    return {
        "gpu": runs,
        "steps": steps,
        "wall_s": sum(s["seconds"] for s in steps.values()),
        "dry_run_on_cpu": "cpu" in backends,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else RESULTS / "gpu"
    result = collect(out)
    sys.path.insert(0, str(RESULTS.parents[1]))
    from bench.common import write_result

    write_result(
        result, out.parent / "gpu.json", name="gpu_results", schema=SCHEMA_VERSION, quick=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
