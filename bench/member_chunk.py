"""Benchmark: zoo training speed and peak memory against `TrainConfig.member_chunk`.

`Trainer.train_epoch` steps a population's members in chunks, one after another, so that
activation temporaries grow with the chunk, not with the population. Wider chunks keep an
accelerator busier but take more memory; this sweep measures that trade-off, one fresh
process per (N, chunk), on the digits MLP 64-32-10 of `bench/scaling.py` (batch 128, Adam):
net-steps/s (best of 3 timings after a compiling epoch) and peak memory (device allocator's
peak bytes in use on a GPU, VmHWM on CPU), whose growth over an N=1 process is compared
with the train state's own bytes (the 2x goal of `bench/scaling.py`). ``"memory"`` is the
default rule on accelerators; the chunk it picks is recorded.

Usage::

  python bench/member_chunk.py [--sizes gpu|quick] [--out PATH]

Writes ``bench/results/member_chunk.json`` and prints the JSON as one line. The children run
one at a time (they are timed). ``--sizes quick`` (the default on CPU) takes about a minute;
it is a dry run of the script: its states are a few MiB, so compiler memory dominates the
growth it reports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script

from bench.common import logger, machine, stdout_to_stderr, write_result

# Version 2: provenance (git, schema_version) and goals written by bench.common.write_result.
SCHEMA_VERSION = 2


log = logger("member_chunk")

# (N, chunk) pairs; chunk "memory" is the accelerator default rule.
SIZES: dict[str, list[tuple[int, int | str]]] = {
    "gpu": [
        (4096, 1024),
        (4096, 2048),
        (4096, 4096),
        (65536, 8192),
        (65536, 16384),
        (65536, 32768),
        (65536, 65536),
    ],
    "quick": [(256, 64), (256, 256), (256, "memory")],
}

_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[3])
from hyper import sharding
sharding.use_cpu_cores()
import jax
from bench.scaling import _HWM, state_bytes
exec(_HWM)  # defines hwm_mb(), as in bench/scaling.py's memory children
from bench.zoo import digits_trainer, speed_vmapped
n = int(sys.argv[1])
chunk = sys.argv[2] if sys.argv[2] == "memory" else int(sys.argv[2])
trainer = digits_trainer(member_chunk=chunk)
state_mb = state_bytes(trainer, n) / 2**20
epochs = max(1, min(20, 4096 // n))
r = speed_vmapped(trainer, epochs, 3, n=n)
print(json.dumps({**r, "peak_mb": hwm_mb(), "state_mb": state_mb}))
"""


def child(n: int, chunk: int | str) -> dict[str, Any]:
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # peak bytes, not the pool
    repo = str(Path(__file__).resolve().parents[1])
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n), str(chunk), repo],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        last = p.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"child N={n} chunk={chunk} failed ({p.returncode}): {last}")
    return json.loads(lines[-1])


def run(pairs: list[tuple[int, int | str]]) -> dict[str, Any]:
    base = child(1, 1)  # the baseline: one member, trained the same way
    rows = []
    for n, chunk in pairs:
        r = child(n, chunk)
        growth = r["peak_mb"] - base["peak_mb"]
        row = {
            "n": n,
            "chunk_asked": chunk,
            "member_chunk": r["member_chunk"],
            "net_steps_per_s": r["net_steps_per_s"],
            "runs": r["runs"],
            "first_epoch_s": r["first_epoch_s"],
            "peak_mb": r["peak_mb"],
            "state_mb": r["state_mb"],
            "growth_over_state": growth / (r["state_mb"] - base["state_mb"]),
        }
        log(
            f"N={n} chunk={chunk} ({r['member_chunk']}): {r['net_steps_per_s']:,.0f} net-steps/s, "
            f"peak {r['peak_mb']:.0f} MiB, growth {row['growth_over_state']:.2f}x the state"
        )
        rows.append(row)
    best = max(r["net_steps_per_s"] for r in rows)
    for r in rows:
        r["over_best"] = r["net_steps_per_s"] / best
    return {"base_peak_mb": base["peak_mb"], "rows": rows, "best_net_steps_per_s": best}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", choices=sorted(SIZES), default=None)
    ap.add_argument("--quick", action="store_true", help="the same as --sizes quick")
    ap.add_argument("--out", default=None, help="default bench/results[/quick]/member_chunk.json")
    args = ap.parse_args(argv)
    import jax

    size = args.sizes or ("quick" if args.quick or jax.default_backend() == "cpu" else "gpu")
    t0 = time.perf_counter()
    with stdout_to_stderr():
        result = {"sizes": size, "machine": machine()}
        result.update(run(SIZES[size]))
    result["wall_s"] = time.perf_counter() - t0
    quick = size == "quick"  # a CPU dry run of the GPU sweep
    write_result(result, args.out, name="member_chunk", schema=SCHEMA_VERSION, quick=quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
