"""Benchmark: how throughput, compile time and memory scale with the number of targets.

- **Zoo training** (`hyper.train.Trainer`, digits MLP 64-32-10, batch 128, Adam, members
  sharded over the CPU cores): net-steps/s and first-epoch (compile) seconds for
  N = 1 ... 4096 members, best of a few timed runs in one process. Goal: net-steps/s at
  N=4096 ≥ 0.8× the best over all N (``no_collapse_ratio``).
- **Zoo memory**: each N runs one epoch in a fresh subprocess that reports its peak memory
  (host RSS on CPU; on a GPU, the device allocator's peak bytes in use);
  the growth over N=1 is compared with the train state's own bytes (params + Adam moments
  + per-member keys, subsets and counters). Goal: at N=4096, peak growth ≤ 2× the state
  (``memory_over_state``).
- **Hypernet generation** (`hyper.hypernets.hypernet.generate`, MIP defaults, hidden [16, 64]):
  targets/s and compile seconds against M conditions (target MLP 64-32-10) and against the
  target's size at M=256 (widths [32], [128, 128], [512, 512]).
- **Memory-bounded generation**: `generate_and_evaluate` of M = 256 ... 16384 targets
  (chunks of 32) in fresh subprocesses: peak memory should not grow with M
  (``gen_eval_rss_growth``: peak at the largest M over peak at the smallest).
- **Metanet batches** (`metanets.models.GraphMetanet`, hidden 32, 3 layers, on graphs of
  digits CNNs 1-8-8-8 padded to power-of-two buckets and split over the devices with
  `metanets.batching.shard_graphs`): forward+backward graphs/s and compile seconds against
  the batch size.
- **Fraction of peak**: zoo training's matmul FLOPs (forward + backward ≈ 3 × 2·batch·
  Σ fan_in·fan_out per net-step) at the best N, over this machine's fp32 matmul peak.

Usage::

  python bench/scaling.py [--quick] [--out PATH] [--plots DIR]

Writes ``bench/results/scaling.json`` (and ``scaling_*.png`` beside it) and prints the JSON
as one line. ``--quick`` measures fewer sizes (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.common import (
    goal,
    logger,
    machine,
    matmul_peak,
    peak_rss_mb,
    result_path,
    stdout_to_stderr,
    write_result,
)
from bench.zoo import BATCH, LEARNING_RATE, digits_trainer, speed_vmapped
from hyper import data, population, sharding
from hyper.architectures import make_target
from hyper.hypernets.conditions import Continuous
from hyper.hypernets.hypernet import HyperNet, generate

log = logger("scaling")

SIZES = {
    "full": {
        "zoo_n": [1, 4, 16, 64, 256, 1024, 4096],
        "zoo_mem_n": [1, 256, 1024, 4096],
        "gen_m": [1, 16, 256, 4096],
        "gen_widths": [[32], [128, 128], [512, 512]],
        "gen_eval_m": [256, 4096, 16384],
        "metanet_b": [8, 32, 128, 512, 2048],
        "repeats": 3,
    },
    # One H100/H200 (bench/gpu.sh): larger populations and targets, same structure.
    "gpu": {
        "zoo_n": [1, 64, 1024, 4096, 16384, 65536],
        "zoo_mem_n": [1, 4096, 65536],
        "gen_m": [16, 1024, 16384, 65536],
        "gen_widths": [[32], [512, 512], [2048, 2048]],
        "gen_eval_m": [256, 16384],
        "metanet_b": [64, 512, 4096, 16384],
        "repeats": 3,
    },
    "quick": {
        "zoo_n": [1, 64, 4096],
        "zoo_mem_n": [1, 4096],
        "gen_m": [16, 1024],
        "gen_widths": [[32], [256, 256]],
        "gen_eval_m": [256, 4096],
        "metanet_b": [],  # the sweep runs at full and GPU sizes; quick stays under 5 min
        "repeats": 2,
    },
}
# Version 2: structured goals, provenance and goals_met by bench.common.write_result.
SCHEMA_VERSION = 2
GOALS = {
    "no_collapse_ratio": goal("no_collapse_ratio", ">=", 0.8),
    "memory_over_state": goal("memory_over_state", "<=", 2.0),
}


def state_bytes(trainer: Any, n: int) -> int:
    """Bytes of a Trainer state for `n` members (params, optimizer state, keys, ...)."""
    state = trainer.init(jax.random.key(0), n, learning_rate=LEARNING_RATE, shard=False)
    size = population.size_bytes(jax.tree.map(lambda v: v, state._asdict()))
    del state
    return size


def zoo_speed(sizes: list[int], repeats: int) -> dict[str, Any]:
    trainer = digits_trainer()
    out: dict[str, Any] = {"n": sizes, "net_steps_per_s": [], "first_epoch_s": []}
    out["member_chunk"] = []
    for n in sizes:
        epochs = max(1, min(20, 4096 // max(n, 1)))  # at least ~4096 net-epochs per timing
        r = speed_vmapped(trainer, epochs, repeats, n=n)
        out["net_steps_per_s"].append(r["net_steps_per_s"])
        out["first_epoch_s"].append(r["first_epoch_s"])
        out["member_chunk"].append(r["member_chunk"])
    best = max(out["net_steps_per_s"])
    out["best_net_steps_per_s"] = best
    out["best_n"] = sizes[int(np.argmax(out["net_steps_per_s"]))]
    # The goal's N (4096) where it was measured, else the largest.
    ref = 4096 if 4096 in sizes else max(sizes)
    out["no_collapse_n"] = ref
    out["no_collapse_ratio"] = out["net_steps_per_s"][sizes.index(ref)] / best
    out["steps_per_epoch"] = trainer.steps_per_epoch
    out["matmul_flops_per_net_step"] = (
        3 * 2 * BATCH * sum(s.fan_in * s.fan_out for s in trainer.target.spec if s.role == "kernel")
    )
    return out


# Children report their peak memory: on a GPU the device allocator's peak bytes in use, on
# CPU VmHWM (this process image's peak RSS; ru_maxrss would include the parent's RSS, which
# Linux carries over fork and exec).
_HWM = """
def hwm_mb():
    import jax
    if jax.default_backend() != "cpu":
        return jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**20
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024
"""


def memory_measure() -> str:
    if jax.default_backend() != "cpu":
        return "device peak_bytes_in_use"
    return "host peak RSS (VmHWM)"


_CHILD_ZOO = (
    _HWM
    + """
import json, sys
from hyper import sharding
sharding.use_cpu_cores()
import jax
sys.path.insert(0, sys.argv[2])
from bench.zoo import LEARNING_RATE, digits_trainer
n = int(sys.argv[1])
trainer = digits_trainer()
state = trainer.init(jax.random.key(0), n, learning_rate=LEARNING_RATE)
chunk = trainer.member_chunk(state)
state, _ = trainer.train_epoch(state, 0)
jax.block_until_ready(state)
print(json.dumps({"peak_mb": hwm_mb(), "member_chunk": chunk}))
"""
)

_CHILD_GEN_EVAL = (
    _HWM
    + """
import json, sys
from hyper import sharding
sharding.use_cpu_cores()
import jax, jax.numpy as jnp
from flax import nnx
from hyper import data
from hyper.architectures import make_target
from hyper.hypernets.conditions import Continuous
from hyper.hypernets.hypernet import HyperNet, generate_and_evaluate
m = int(sys.argv[1])
ds = data.load("digits")
target = make_target("mlp", input_shape=ds.input_shape, widths=[128, 128], out_features=10)
hnet = HyperNet(target, [Continuous("gamma")], rngs=nnx.Rngs(0))
gamma = jnp.linspace(0, 1, m)
out = generate_and_evaluate(hnet, {"gamma": gamma}, ds.x_test, ds.y_test, batch_size=32)
jax.block_until_ready(out)
print(json.dumps({"peak_mb": hwm_mb()}))
"""
)


def _children(code: str, args: list[int]) -> list[dict[str, Any]]:
    """Runs `code` once per arg, each in a fresh process; the JSON each prints last.

    On CPU the children run side by side, as many at once as there are cores: each reports
    its own peak RSS, which does not depend on what else runs (nothing here is timed). On an
    accelerator they run one at a time, since they would share the device's memory.
    """
    env = dict(os.environ)
    cpu = jax.default_backend() == "cpu"
    if cpu:  # keep the child off an accelerator the parent skips
        env.setdefault("JAX_PLATFORMS", "cpu")
    width = max(1, os.cpu_count() or 1) if cpu else 1
    repo = str(Path(__file__).resolve().parents[1])
    out: list[dict[str, Any]] = []
    for i in range(0, len(args), width):
        batch = args[i : i + width]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(arg), repo],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for arg in batch
        ]
        try:
            for arg, p in zip(batch, procs, strict=True):
                stdout, stderr = p.communicate(timeout=600)
                lines = stdout.strip().splitlines()
                if p.returncode != 0 or not lines:
                    last = stderr.strip().splitlines()[-1:]
                    raise RuntimeError(
                        f"child for {arg} failed (status {p.returncode}): {last or 'no output'}"
                    )
                out.append(json.loads(lines[-1]))
        finally:  # a failed or timed-out child: stop the others of its batch
            for p in procs:
                if p.poll() is None:
                    p.kill()
                for f in (p.stdout, p.stderr):
                    if f is not None:
                        f.close()
                p.wait()
    return out


def zoo_memory(sizes: list[int]) -> dict[str, Any] | None:
    """Peak memory of fresh processes: host RSS on CPU, device memory on a GPU."""
    if not sizes:
        return None
    trainer = digits_trainer()
    runs = _children(_CHILD_ZOO, sizes)
    rss = [float(r["peak_mb"]) for r in runs]
    state = [state_bytes(trainer, n) / 2**20 for n in sizes]
    growth = [r - rss[0] for r in rss]
    extra_state = [s - state[0] for s in state]
    for n, r, s in zip(sizes, rss, state, strict=True):
        log(f"zoo memory N={n}: peak {r:.0f} MiB ({memory_measure()}), state {s:.1f} MiB")
    return {
        "n": sizes,
        "measure": memory_measure(),
        "member_chunk": [r["member_chunk"] for r in runs],
        "peak_mb": rss,
        "state_mb": state,
        "growth_mb": growth,
        "memory_over_state": growth[-1] / extra_state[-1] if extra_state[-1] > 0 else None,
    }


def _hnet(widths: list[int]) -> HyperNet:
    target = make_target("mlp", input_shape=(8, 8), widths=widths, out_features=10)
    return HyperNet(target, [Continuous("gamma")], rngs=nnx.Rngs(0))


def _time_generate(hnet: HyperNet, m: int, repeats: int) -> tuple[float, float]:
    cond = {"gamma": jnp.linspace(0.0, 1.0, m)}
    t0 = time.perf_counter()
    jax.block_until_ready(generate(hnet, cond))
    first = time.perf_counter() - t0
    best = float("inf")
    reps = max(repeats, min(50, 4096 // m))
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(generate(hnet, cond))
        best = min(best, time.perf_counter() - t0)
    return m / best, first


def generation(ms: list[int], widths: list[list[int]], repeats: int) -> dict[str, Any]:
    hnet = _hnet([32])
    by_m = {"m": ms, "targets_per_s": [], "first_call_s": []}
    for m in ms:
        rate, first = _time_generate(hnet, m, repeats)
        by_m["targets_per_s"].append(rate)
        by_m["first_call_s"].append(first)
        log(f"generate M={m}: {rate:,.0f} targets/s (first call {first:.2f} s)")
    by_size = {"widths": widths, "num_params": [], "targets_per_s": [], "params_per_s": []}
    for w in widths:
        h = _hnet(w)
        rate, _ = _time_generate(h, 256, repeats)
        by_size["num_params"].append(h.target.num_params)
        by_size["targets_per_s"].append(rate)
        by_size["params_per_s"].append(rate * h.target.num_params)
        log(f"generate widths={w} ({h.target.num_params:,} params): {rate:,.0f} targets/s")
    return {"by_m": by_m, "by_target_size": by_size}


def gen_eval_memory(ms: list[int]) -> dict[str, Any] | None:
    if not ms:
        return None
    rss = [float(r["peak_mb"]) for r in _children(_CHILD_GEN_EVAL, ms)]
    for m, r in zip(ms, rss, strict=True):
        log(f"generate_and_evaluate M={m} (chunks of 32): peak {r:.0f} MiB ({memory_measure()})")
    return {
        "m": ms,
        "measure": memory_measure(),
        "peak_mb": rss,
        "gen_eval_rss_growth": rss[-1] / rss[0],
    }


def metanet_batches(sizes: list[int], repeats: int) -> dict[str, Any] | None:
    """Forward+backward graphs/s of a GraphMetanet against the batch size."""
    if not sizes:
        return None
    from metanets.batching import GraphBank
    from metanets.models import GraphMetanet

    target = make_target("cnn2d", input_shape=(8, 8), channels=[8, 8, 8], out_features=10)
    n = max(sizes)
    keys = jax.random.split(jax.random.key(0), n)
    pop = jax.vmap(target.init)(keys)
    bank = GraphBank([(target, pop)])
    model = GraphMetanet(bank.window[0] * bank.window[1], hidden=32, num_layers=3, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    ndev = jax.device_count()
    mesh = sharding.targets_mesh() if ndev > 1 else None
    if mesh is not None:
        state = sharding.put(state, sharding.replicated(mesh))

    @jax.jit
    def step(state, graphs):
        def loss(s):
            y = nnx.merge(graphdef, s)(graphs)[:, 0]
            return jnp.sum(jnp.where(graphs.globals["mask"], y * y, 0.0))

        return jax.grad(loss)(state)

    out: dict[str, Any] = {
        "batch": sizes,
        "graphs_per_s": [],
        "first_call_s": [],
        "devices": ndev,
        "target": target.name,
    }
    for b in sizes:
        g = bank.batch(np.arange(b), batch_size=b, mesh=mesh)  # one part per device
        t0 = time.perf_counter()
        jax.block_until_ready(step(state, g))
        first = time.perf_counter() - t0
        best = float("inf")
        for _ in range(max(repeats, min(20, 2048 // b))):
            t0 = time.perf_counter()
            jax.block_until_ready(step(state, g))
            best = min(best, time.perf_counter() - t0)
        out["graphs_per_s"].append(b / best)
        out["first_call_s"].append(first)
        log(f"metanet batch {b}: {b / best:,.0f} graphs/s fwd+bwd (first call {first:.2f} s)")
    return out


def plots(result: dict[str, Any], directory: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    z, mem = result["zoo"], result["zoo_memory"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(z["n"], z["net_steps_per_s"], "o-")
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="members N",
        ylabel="net-steps/s",
        title="zoo training throughput",
    )
    axes[1].plot(z["n"], z["first_epoch_s"], "o-")
    axes[1].set(xscale="log", xlabel="members N", ylabel="s", title="first epoch (compile)")
    if mem is None:
        axes[2].axis("off")
    else:
        axes[2].plot(mem["n"], mem["growth_mb"], "o-", label="peak memory growth over N=1")
        axes[2].plot(
            mem["n"],
            [s - mem["state_mb"][0] for s in mem["state_mb"]],
            "s--",
            label="train state growth",
        )
        axes[2].set(xscale="log", xlabel="members N", ylabel="MiB", title="zoo memory")
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    path = directory / "scaling_zoo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    g, ge = result["generation"], result["gen_eval_memory"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(g["by_m"]["m"], g["by_m"]["targets_per_s"], "o-")
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="conditions M",
        ylabel="targets/s",
        title="generation throughput",
    )
    axes[1].plot(g["by_target_size"]["num_params"], g["by_target_size"]["params_per_s"], "o-")
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="target params",
        ylabel="params/s",
        title="generation vs target size (M=256)",
    )
    if ge is None:
        axes[2].axis("off")
    else:
        axes[2].plot(ge["m"], ge["peak_mb"], "o-")
        axes[2].set(
            xscale="log",
            xlabel="targets M",
            ylabel=f"peak MiB ({ge['measure']})",
            ylim=(0, None),
            title="generate+evaluate memory (chunks of 32)",
        )
    fig.tight_layout()
    path = directory / "scaling_generation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    mn = result.get("metanet")
    if mn:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        axes[0].plot(mn["batch"], mn["graphs_per_s"], "o-")
        axes[0].set(
            xscale="log",
            yscale="log",
            xlabel="graphs per batch",
            ylabel="graphs/s (fwd+bwd)",
            title=f"metanet throughput ({mn['devices']} devices)",
        )
        axes[1].plot(mn["batch"], mn["first_call_s"], "o-")
        axes[1].set(xscale="log", xlabel="graphs per batch", ylabel="s", title="first call")
        fig.tight_layout()
        path = directory / "scaling_metanet.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def run(
    quick: bool,
    size: str | None = None,
    partial: Callable[[dict[str, Any]], None] | None = None,
    memory_only: bool = False,
) -> dict[str, Any]:
    """All sections; `partial(result)` after each one (a killed run keeps what it measured).
    `memory_only`: the two memory sections alone."""
    size = size or ("quick" if quick else "full")
    partial = partial or (lambda r: None)
    sizes = SIZES[size]
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "sizes": size,
        "machine": machine(),
    }
    if memory_only:
        result["zoo_memory"] = zoo_memory(sizes["zoo_mem_n"])
        partial(result)
        result["gen_eval_memory"] = gen_eval_memory(sizes["gen_eval_m"])
        result["memory_over_state"] = (result["zoo_memory"] or {}).get("memory_over_state")
        result["gen_eval_rss_growth"] = (result["gen_eval_memory"] or {}).get("gen_eval_rss_growth")
        result["wall_s"] = time.perf_counter() - t0
        return result
    peak = matmul_peak()
    peak_before = peak()
    result["zoo"] = zoo_speed(sizes["zoo_n"], sizes["repeats"])
    partial(result)
    result["generation"] = generation(sizes["gen_m"], sizes["gen_widths"], sizes["repeats"])
    partial(result)
    result["metanet"] = metanet_batches(sizes.get("metanet_b", []), sizes["repeats"])
    partial(result)
    result["zoo_memory"] = zoo_memory(sizes["zoo_mem_n"])
    partial(result)
    result["gen_eval_memory"] = gen_eval_memory(sizes["gen_eval_m"])
    peak_flops = max(peak_before, peak())
    z = result["zoo"]
    result["matmul_peak_gflops"] = peak_flops / 1e9
    result["zoo_fraction_of_peak"] = (
        z["best_net_steps_per_s"] * z["matmul_flops_per_net_step"] / peak_flops
    )
    result["no_collapse_ratio"] = z["no_collapse_ratio"]
    result["memory_over_state"] = (result["zoo_memory"] or {}).get("memory_over_state")
    result["gen_eval_rss_growth"] = (result["gen_eval_memory"] or {}).get("gen_eval_rss_growth")
    result["peak_rss_mb_parent"] = peak_rss_mb()
    result["wall_s"] = time.perf_counter() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes (about a minute)")
    ap.add_argument("--out", default=None, help="default bench/results[/quick]/scaling.json")
    ap.add_argument("--plots", default=None, help="directory for PNGs (default: beside --out)")
    ap.add_argument("--sizes", choices=sorted(SIZES), default=None, help="override the sizes")
    ap.add_argument("--memory-only", action="store_true", help="only the memory sections")
    args = ap.parse_args(argv)
    quick = args.quick or args.sizes == "quick"
    out = result_path("scaling", quick=quick, out=args.out)
    sharding.use_cpu_cores()
    with stdout_to_stderr():
        data.load("digits")  # warm the dataset cache outside the timings

        def partial(r: dict[str, Any]) -> None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({**r, "partial": True}, indent=1) + "\n")

        result = run(quick, args.sizes, partial, args.memory_only)
        if not args.memory_only:
            result["plots"] = plots(result, Path(args.plots) if args.plots else out.parent)
    write_result(result, out, name="scaling", schema=SCHEMA_VERSION, quick=quick, goals=GOALS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
