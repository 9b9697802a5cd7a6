"""Benchmark: training and sampling a MIP hypernetwork on task T1, against hyperlight.

Task T1 (hyperlight's, ``../shared/peers/hyperlight_digits.py``): one hypernetwork maps
γ ∈ [0, 1] (one `Continuous` condition ``"gamma"``) to all 26,122 weights of a target MLP
64-128-128-10 on digits; loss = cross-entropy + γ·1e-3·‖θ‖²
(`hyper.hypernets.train.l2_conditioned_loss`); `HyperNet` with its MIP defaults and hidden
sizes [16, 64]; Adam lr 1e-3; batch 128. Data: `hyper.data` digits (stratified 1,347 train /
450 test) while the peer takes the first 1,400 samples to train and the other 397 to test:
the same work per training step, 13% more test examples per evaluated target here.

Measured, each after compilation and as the best of several timings:

- ``train_steps_per_s``: one condition per step, `HyperTrainer.run_scan` (all steps of a
  call in one jitted `jax.lax.scan`, one host sync per call); ``train_steps_per_s_run``:
  the same steps through `HyperTrainer.run` (one jitted step and one host sync per step,
  as the peer's ``loss.item()``);
- ``train_targets_per_s_m32``: 32 conditions per step (`run_scan`), 32 × steps/s;
- ``eval_targets_per_s``: `generate_and_evaluate` of 256 γ on the test split, in chunks of
  ``batch_size=16`` targets (smaller chunks stay in cache: ~1.8x the default 256 here; the
  full run also reports chunks of 8, 32 and 256);
- ``fraction_of_peak``: the matmul FLOPs of generation + evaluation (hypernet backbone and
  heads, target forward on the test split; 2·m·n·k per matmul, biases, activations and the
  loss not counted) per second at the best timing, over this machine's fp32 matmul peak
  (the best timing of jitted 1024² and 2048² jnp.dot, timed right before and right after
  each evaluation timing), for 256, 1,024 and 4,096 targets (the headline is the largest).
  On a shared CPU the peak doubles in the moments the other core is free, while the
  evaluation runs on about one core; ``fraction_of_peak_same_load_by_targets`` divides
  each evaluation timing by the peak timed next to it instead (median over timings).

The peer runs as a subprocess (``hyperlight_digits.py 128 300 256``) right before and right
after the JAX measurements, never concurrently; its best rates give the ratios
``speedup_train_vs_hyperlight``, ``targets_m32_vs_hyperlight_steps`` and
``speedup_eval_vs_hyperlight``. Other jobs may share the CPU: the load average and the CPU
share each side got are recorded; compare ratios, not absolute rates. The peer's two torch
threads wait on each other when another job takes a core, so under load it slows down far
more than on an idle machine; the full run therefore also runs it pinned to one thread
(``hyperlight_1thread_*``, a control) and reports the ratios against that too.

Usage::

  python bench/hypernet.py [--quick] [--out PATH]

Writes ``bench/results/hypernet.json`` and prints the same JSON as one line on stdout;
progress goes to stderr. ``--quick`` (about a minute) times fewer steps, skips the
per-step `run` timings, the chunk sweep and the one-thread control, and runs the peer once
with 30 steps and 64 evaluated targets.
Environment: ``WEIGHTSPACE_PEERS_PYTHON`` (the peer's interpreter, default
``../peers-venv/bin/python`` beside the repository) and ``WEIGHTSPACE_PEERS_DIR`` (the peer
scripts, default ``../shared/peers``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script

import jax  # noqa: E402
import numpy as np
from flax import nnx

from bench.common import (
    PEAK_SIZES,
    goal,
    logger,
    machine,
    matmul_peak,
    ratio,
    stdout_to_stderr,
    timed,
    write_result,
)
from hyper import data, sharding
from hyper.architectures import make_target
from hyper.hypernets.conditions import Continuous
from hyper.hypernets.hypernet import HyperNet, generate_and_evaluate
from hyper.hypernets.train import HyperTrainer, l2_conditioned_loss, make_optimizer

log = logger("hypernet")

REPO = Path(__file__).resolve().parents[1]
WIDTH = 128
HIDDEN = (16, 64)
BATCH = 128
EVAL_TARGETS = 256
EVAL_CHUNK = 16  # targets per generate_and_evaluate chunk: ~1.8x the default 256 on XLA:CPU
# Version 2: structured goals; a goal against the peer is met only when it is met against
# both hyperlight runs (2 torch threads as published, and the 1-thread control, which load
# slows less); provenance and goals_met by bench.common.write_result.
SCHEMA_VERSION = 2
GOALS = {
    "speedup_train_vs_hyperlight": goal(
        "speedup_train_vs_hyperlight",
        ">=",
        1.5,
        controls=["speedup_train_vs_hyperlight_1thread"],
    ),
    "targets_m32_vs_hyperlight_steps": goal(
        "targets_m32_vs_hyperlight_steps",
        ">=",
        10.0,
        controls=["targets_m32_vs_hyperlight_1thread_steps"],
    ),
    "speedup_eval_vs_hyperlight": goal(
        "speedup_eval_vs_hyperlight",
        ">=",
        2.0,
        controls=["speedup_eval_vs_hyperlight_1thread"],
    ),
    "fraction_of_peak": goal("fraction_of_peak", ">=", 0.5),
}
SETTINGS = {
    False: {
        "steps": 300,
        "steps_m32": 60,
        "repeats": 3,
        "run_loop": True,
        "eval_targets": (256, 1024, 4096),
        "eval_chunks": (8, 16, 32, 256),
        "eval_repeats": 4,
        "peer_args": (WIDTH, 300, EVAL_TARGETS),
        "peer_runs": ("before", "after"),
        "control": True,
    },
    True: {
        "steps": 60,
        "steps_m32": 15,
        "repeats": 2,
        "run_loop": False,
        "eval_targets": (256, 1024),
        "eval_chunks": (EVAL_CHUNK,),
        "eval_repeats": 2,
        "peer_args": (WIDTH, 30, 64),
        "peer_runs": ("after",),
        "control": False,
    },
}


# --- task --------------------------------------------------------------------------------


def task() -> tuple[HyperNet, data.Dataset]:
    ds = data.load("digits")
    target = make_target("mlp", input_shape=(8, 8), widths=[WIDTH, WIDTH], out_features=10)
    hnet = HyperNet(target, [Continuous("gamma")], hidden=HIDDEN, rngs=nnx.Rngs(0))
    return hnet, ds


def trainer(hnet: HyperNet, ds: data.Dataset, m: int) -> HyperTrainer:
    return HyperTrainer(
        hnet,
        ds.x_train,
        ds.y_train,
        loss_fn=l2_conditioned_loss("gamma", 1e-3),
        optimizer=make_optimizer("adam", 1e-3),
        conditions_per_step=m,
        batch_size=BATCH,
    )


def speed_train(
    trainers: dict[str, HyperTrainer], steps: int, repeats: int
) -> dict[str, dict[str, Any]]:
    """Steps/s of each trainer's ``"run_scan"`` or ``"run"`` (the dict's keys): best of
    `repeats` timings of `steps` steps each, the methods taking turns so that they see the
    same load, after one untimed call of the same length each (compilation)."""
    key = jax.random.key(0)
    out = {}
    for method, tr in trainers.items():
        _, warm, _ = timed(lambda tr=tr, method=method: getattr(tr, method)(key, steps))
        out[method] = {"method": f"HyperTrainer.{method}", "conditions_per_step": tr.m}
        out[method].update(first_call_s=warm, steps_per_s_runs=[], cpu_share_runs=[])
    for r in range(1, repeats + 1):
        for method, tr in trainers.items():
            losses, wall, share = timed(
                lambda tr=tr, method=method, r=r: getattr(tr, method)(key, steps, start=r * steps)
            )
            out[method]["steps_per_s_runs"].append(steps / wall)
            out[method]["cpu_share_runs"].append(share)
            out[method]["final_loss"] = float(np.mean(losses[-10:]))
    for method, tr in trainers.items():
        row = out[method]
        row.update(
            steps_per_s=max(row["steps_per_s_runs"]),
            steps_per_timing=steps,
            steps_trained=tr.step_count,
        )
        log(
            f"train M={tr.m} {row['method']}: {row['steps_per_s']:,.1f} steps/s "
            f"({tr.m * row['steps_per_s']:,.0f} targets/s), "
            f"runs {[round(x, 1) for x in row['steps_per_s_runs']]}"
        )
    return out


# --- evaluation and peak -----------------------------------------------------------------


def gen_eval_flops(hnet: HyperNet, m: int, n_examples: int) -> dict[str, int]:
    """Matmul FLOPs (2·m·n·k) of generating `m` targets and running them on `n_examples`."""
    sizes = [hnet.layers[0].in_features, *(layer.out_features for layer in hnet.layers)]
    backbone = sum(2 * m * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    heads = sum(2 * m * sizes[-1] * s.size for s in hnet.gen_specs)
    kernels = [s for s in hnet.target.spec if s.role == "kernel"]
    target = sum(2 * m * n_examples * math.prod(s.shape) for s in kernels)
    return {"backbone": backbone, "heads": heads, "target_forward": target}


def speed_eval(
    hnet: HyperNet,
    ds: data.Dataset,
    sizes: tuple[int, ...],
    chunks: tuple[int, ...],
    repeats: int,
    peak: Callable[[], float],
) -> dict[str, Any]:
    """`generate_and_evaluate` of M targets in chunks of `EVAL_CHUNK` for each M in `sizes`,
    and of `EVAL_TARGETS` in each of `chunks`: best of `repeats` timings.

    Each timing sits between two matmul-peak timings: ``fraction_of_peak`` is the best
    FLOP/s over the best peak of the whole call, ``fraction_of_peak_same_load`` the median
    over timings of each FLOP/s over the larger of its two neighbouring peaks.
    """
    x, y = ds.x_test, ds.y_test
    cases = [(m, EVAL_CHUNK) for m in sizes]
    cases += [(EVAL_TARGETS, c) for c in chunks if c != EVAL_CHUNK]
    peaks, rows = [], []
    for m, chunk in cases:
        gamma = {"gamma": np.linspace(0.0, 1.0, m, dtype=np.float32)}

        def call(g=gamma, c=chunk):
            return generate_and_evaluate(hnet, g, x, y, batch_size=c)

        first, compile_s, _ = timed(call)
        flops = gen_eval_flops(hnet, m, x.shape[0])
        walls, shares, fractions, around = [], [], [], [peak()]
        for _ in range(repeats):
            _, wall, share = timed(call)
            around.append(peak())
            walls.append(wall)
            shares.append(share)
            fractions.append(sum(flops.values()) / wall / max(around[-2:]))
        peaks += around
        rows.append(
            {
                "targets": m,
                "batch_size": chunk,
                "targets_per_s": m / min(walls),
                "targets_per_s_runs": [m / w for w in walls],
                "cpu_share_runs": shares,
                "flops": flops,
                "gflop_per_s": sum(flops.values()) / min(walls) / 1e9,
                "first_call_s": compile_s,
                "mean_test_acc": float(np.mean(np.asarray(first["acc"]))),
                "fraction_of_peak_same_load": float(np.median(fractions)),
                "fraction_of_peak_same_load_runs": fractions,
                "peak_gflop_per_s_around": [p / 1e9 for p in around],
            }
        )
        log(
            f"eval M={m} batch_size={chunk}: {m / min(walls):,.0f} targets/s, "
            f"{rows[-1]['gflop_per_s']:.1f} GFLOP/s, same-load fractions of peak "
            f"{[round(f, 2) for f in fractions]}"
        )
    best_peak = max(peaks)
    for row in rows:
        row["fraction_of_peak"] = row["gflop_per_s"] * 1e9 / best_peak
    log(f"fp32 matmul peak {best_peak / 1e9:.1f} GFLOP/s (best of {len(peaks)})")
    return {
        "runs": rows,
        "peak_gflop_per_s": best_peak / 1e9,
        "peak_gflop_per_s_runs": [p / 1e9 for p in peaks],
        "peak_matmul": f"jit(jnp.dot) fp32 n x n @ n x n, n in {list(PEAK_SIZES)}: best of "
        "three 1024s and one 2048 before and after each evaluation timing",
        "test_examples": int(x.shape[0]),
    }


# --- peer --------------------------------------------------------------------------------


def hyperlight_peer(args: tuple[int, int, int], threads: int | None = None) -> dict[str, Any]:
    """Runs ``hyperlight_digits.py H STEPS N_EVAL`` once; its JSON plus wall and CPU share.

    `threads` (a control, not the peer as published): pins PyTorch to that many threads by
    making the script's ``torch.set_num_threads(2)`` a no-op.
    """
    python = os.environ.get("WEIGHTSPACE_PEERS_PYTHON") or str(
        REPO.parent / "peers-venv" / "bin" / "python"
    )
    peers = Path(os.environ.get("WEIGHTSPACE_PEERS_DIR") or REPO.parent / "shared" / "peers")
    script = peers / "hyperlight_digits.py"
    argv = [str(script), *map(str, args)]
    if threads is None:
        cmd = [python, *argv]
    else:
        wrapper = (
            "import runpy, sys, torch; "
            f"torch.set_num_threads({int(threads)}); torch.set_num_threads = lambda n: None; "
            f"sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
        )
        cmd = [python, "-c", wrapper]
    out: dict[str, Any] = {"cmd": " ".join(cmd), "threads": threads or 2, "result": None}
    out["reason"] = None
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        out["reason"] = f"no peer interpreter at {python} (set WEIGHTSPACE_PEERS_PYTHON)"
        return out
    if not script.is_file():
        out["reason"] = f"no peer script at {script} (set WEIGHTSPACE_PEERS_DIR)"
        return out
    load = os.getloadavg()[0]
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        out["reason"] = f"peer failed: {e}"
        return out
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
        out["reason"] = f"peer exited {p.returncode}: {tail[0][:300]}"
        return out
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    out.update(
        result=json.loads(lines[-1]),
        wall_s=wall,
        cpu_share=cpu / wall,  # whole script: imports, data, warm-up, training, evaluation
        loadavg_1min_before=round(load, 2),
    )
    row = out["result"]
    log(
        f"hyperlight ({out['threads']} threads): {row['train_steps_per_s']:.1f} train steps/s, "
        f"{row['eval_targets_per_s']:,.0f} eval targets/s ({wall:.0f} s, {row.get('peer')})"
    )
    return out


def best_peer(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The best train and eval rates over `runs` (None and the first reason if none ran)."""
    rows = [r["result"] for r in runs if r["result"] is not None]
    if not rows:
        reasons = [r["reason"] for r in runs if r["reason"]] or ["not run"]
        return {"train_steps_per_s": None, "eval_targets_per_s": None, "reason": reasons[0]}
    return {
        "peer": rows[0].get("peer"),
        "train_steps_per_s": max(r["train_steps_per_s"] for r in rows),
        "eval_targets_per_s": max(r["eval_targets_per_s"] for r in rows),
        "runs": len(rows),
        "reason": None,
    }


# --- main --------------------------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    cfg = SETTINGS[quick]
    info = machine()
    log(f"{info['cpu_model']}, {info['cpu_cores']} cores, {info['device_count']} JAX devices")
    peer_runs, control_runs = [], []

    def peers() -> None:
        peer_runs.append(hyperlight_peer(cfg["peer_args"]))
        if cfg["control"]:
            control_runs.append(hyperlight_peer(cfg["peer_args"], threads=1))

    if "before" in cfg["peer_runs"]:
        peers()

    hnet, ds = task()
    jax_start = time.perf_counter()
    methods = ("run_scan", "run") if cfg["run_loop"] else ("run_scan",)
    train = {}
    for m, steps in ((1, cfg["steps"]), (32, cfg["steps_m32"])):
        trainers = {method: trainer(hnet, ds, m) for method in methods}
        for method, row in speed_train(trainers, steps, cfg["repeats"]).items():
            train[f"m{m}" if method == "run_scan" else f"m{m}_run"] = row
        if m == 1:
            trained = trainers["run_scan"].hnet
    ev = speed_eval(
        trained, ds, cfg["eval_targets"], cfg["eval_chunks"], cfg["eval_repeats"], matmul_peak()
    )
    jax_s = time.perf_counter() - jax_start

    if "after" in cfg["peer_runs"]:
        peers()
    peer, control = best_peer(peer_runs), best_peer(control_runs)

    main_rows = {r["targets"]: r for r in ev["runs"] if r["batch_size"] == EVAL_CHUNK}
    by_chunk = {r["batch_size"]: r for r in ev["runs"] if r["targets"] == EVAL_TARGETS}
    largest = max(main_rows)
    steps1 = train["m1"]["steps_per_s"]
    steps1_run = train["m1_run"]["steps_per_s"] if "m1_run" in train else None
    targets32 = 32 * train["m32"]["steps_per_s"]
    eval256 = main_rows[EVAL_TARGETS]["targets_per_s"]
    eval256_default = by_chunk[256]["targets_per_s"] if 256 in by_chunk else None
    result: dict[str, Any] = {
        "task": "T1: MIP HyperNet [16, 64], gamma in [0,1] -> MLP 64-128-128-10, "
        "CE + gamma*1e-3*|theta|^2, Adam lr 1e-3, batch 128",
        "target_params": hnet.target.num_params,
        "hypernet_params": int(sum(v.size for v in jax.tree.leaves(nnx.state(hnet, nnx.Param)))),
        "dataset": f"hyper.data digits ({len(ds.x_train)} train / {len(ds.x_test)} test); "
        "peer: first 1400 train / 397 test",
        "train_method": "HyperTrainer.run_scan (one jitted lax.scan per call); "
        "*_run: HyperTrainer.run (one jitted step + host sync per step)",
        "train_steps_per_s": steps1,
        "train_steps_per_s_run": steps1_run,
        "train_targets_per_s_m32": targets32,
        "train_targets_per_s_m32_run": (
            32 * train["m32_run"]["steps_per_s"] if "m32_run" in train else None
        ),
        "eval_targets_per_s": eval256,
        "eval_batch_size": EVAL_CHUNK,
        "eval_targets_per_s_default_batch_size": eval256_default,
        "eval_targets_per_s_by_batch_size": {
            str(c): r["targets_per_s"] for c, r in by_chunk.items()
        },
        "eval_targets_per_s_by_targets": {str(m): r["targets_per_s"] for m, r in main_rows.items()},
        "fraction_of_peak": main_rows[largest]["fraction_of_peak"],
        "fraction_of_peak_targets": largest,
        "fraction_of_peak_by_targets": {
            str(m): r["fraction_of_peak"] for m, r in main_rows.items()
        },
        "fraction_of_peak_same_load_by_targets": {
            str(m): r["fraction_of_peak_same_load"] for m, r in main_rows.items()
        },
        "peak_gflop_per_s": ev["peak_gflop_per_s"],
        "hyperlight_train_steps_per_s": peer["train_steps_per_s"],
        "hyperlight_eval_targets_per_s": peer["eval_targets_per_s"],
        "speedup_train_vs_hyperlight": ratio(steps1, peer["train_steps_per_s"]),
        "speedup_train_run_vs_hyperlight": ratio(steps1_run, peer["train_steps_per_s"]),
        "targets_m32_vs_hyperlight_steps": ratio(targets32, peer["train_steps_per_s"]),
        "speedup_eval_vs_hyperlight": ratio(eval256, peer["eval_targets_per_s"]),
        "speedup_eval_default_batch_size_vs_hyperlight": ratio(
            eval256_default, peer["eval_targets_per_s"]
        ),
        "peer_note": (
            f"hyperlight_digits.py {' '.join(map(str, cfg['peer_args']))} (2 torch threads, as "
            f"published), run {' and '.join(cfg['peer_runs'])} the JAX measurements; best of "
            f"{len(peer_runs)}"
        ),
        "peer_unavailable": peer["reason"],
        # Control: the same peer on 1 torch thread, which suffers less from other jobs on
        # the CPU than 2 threads that wait on each other.
        "hyperlight_1thread_train_steps_per_s": control["train_steps_per_s"],
        "hyperlight_1thread_eval_targets_per_s": control["eval_targets_per_s"],
        "speedup_train_vs_hyperlight_1thread": ratio(steps1, control["train_steps_per_s"]),
        "targets_m32_vs_hyperlight_1thread_steps": ratio(targets32, control["train_steps_per_s"]),
        "speedup_eval_vs_hyperlight_1thread": ratio(eval256, control["eval_targets_per_s"]),
    }
    result["train"] = train
    result["eval"] = ev
    result["hyperlight"] = {"best": peer, "runs": peer_runs}
    result["hyperlight_1thread"] = {"best": control, "runs": control_runs}
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"] = info
    result["jax_measurements_s"] = jax_s
    result["wall_s"] = time.perf_counter() - t_start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, one short peer run")
    parser.add_argument("--out", default=None, help="default bench/results[/quick]/hypernet.json")
    args = parser.parse_args(argv)
    sharding.use_cpu_cores()  # before any JAX computation: one JAX device per core
    with stdout_to_stderr():
        result = run(args.quick)
    write_result(
        result, args.out, name="hypernet", schema=SCHEMA_VERSION, quick=args.quick, goals=GOALS
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
