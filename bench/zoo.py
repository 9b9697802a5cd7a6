"""Benchmark: training a zoo of small networks as one vmapped population.

Speed: N=512 digits MLPs 64-32-10, batch 128, Adam (lr 1e-2), trained by
`hyper.train.Trainer` (an epoch is one jitted `lax.scan` over vmapped steps, the members
sharded over the CPU cores), against

- the same math in a Python loop over members: each member steps with one jitted
  single-member step (compiled once, called per member per step); a slice of the
  members is timed and the rate extrapolated per net-step, as the PyTorch peer does;
- the PyTorch peer ``../shared/peers/torch_zoo_digits.py`` (a sequential loop with Adam,
  and torch.func.vmap over stacked parameters with SGD), run in the same run while JAX
  is idle.

Quality: the best final test accuracy in zoos built with `hyper.zoo.build` for the
presets ``digits-mlp``, ``digits-cnn``, ``mnist1d-mlp`` and ``mnist1d-cnn`` (MNIST-1D
paper: logistic 32%, MLP 68%, CNN 94%).

Usage::

  python bench/zoo.py [--quick] [--out PATH]

Writes ``bench/results/zoo.json`` and prints the same JSON as one line on stdout; progress
goes to stderr. ``--quick`` (under a minute) keeps N=512 for the speed keys and builds
smaller zoos, of the two presets with a goal only. Environment:
``WEIGHTSPACE_PEERS_PYTHON`` (the peer's interpreter, default ``../peers-venv/bin/python``
beside the repository) and ``WEIGHTSPACE_PEERS_DIR`` (the peer scripts, default
``../shared/peers``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np

from bench.common import goal, logger, machine, ratio, stdout_to_stderr, write_result
from hyper import data, sharding
from hyper.architectures import make_target
from hyper.train import TrainConfig, Trainer, shuffled_order

log = logger("zoo")

REPO = Path(__file__).resolve().parents[1]
N = 512
BATCH = 128
LEARNING_RATE = 1e-2  # the PyTorch peer's Adam learning rate
# Version 2: structured goals, provenance and goals_met by bench.common.write_result.
SCHEMA_VERSION = 2
GOALS = {
    "speedup_vs_loop": goal("speedup_vs_loop", ">=", 20.0),
    "speedup_vs_torch_vmap": goal("speedup_vs_torch_vmap", ">=", 1.2),
    "speedup_vs_torch_seq": goal("speedup_vs_torch_seq", ">=", 15.0),
    "best_test_acc/digits-mlp": goal("best_test_acc/digits-mlp", ">=", 0.97),
    "best_test_acc/mnist1d-cnn": goal("best_test_acc/mnist1d-cnn", ">=", 0.90),
}

# preset -> (grid overrides, seeds, epochs). Axes left out keep the preset's values.
_ONE = {"init_scale": [1.0], "train_fraction": [1.0], "dropout": [0.0], "weight_decay": [0.0]}
QUALITY = {
    "digits-mlp": (
        {**_ONE, "learning_rate": [3e-3, 1e-2, 3e-2], "weight_decay": [0.0, 1e-3]},
        4,
        20,
    ),
    "digits-cnn": ({**_ONE, "learning_rate": [3e-3, 1e-2, 3e-2], "activation": ["relu"]}, 4, 30),
    "mnist1d-mlp": (
        {**_ONE, "learning_rate": [1e-3, 3e-3, 1e-2], "activation": ["relu"]},
        4,
        50,
    ),
    "mnist1d-cnn": ({**_ONE, "learning_rate": [3e-3, 1e-2], "activation": ["relu"]}, 3, 30),
}
QUALITY_QUICK = {  # the two presets with a goal (each zoo group is a compile of its own)
    "digits-mlp": QUALITY["digits-mlp"],  # cheap: the full zoo
    "mnist1d-cnn": ({**_ONE, "learning_rate": [1e-2], "activation": ["relu"]}, 2, 8),
}
SETTINGS = {
    False: {
        "epochs": 10,
        "repeats": 5,
        "loop_members": N // 8,
        "loop_epochs": 2,
        "loop_repeats": 5,
        "peer_steps": 100,
        "peer_runs": 2,
        "quality": QUALITY,
    },
    True: {
        "epochs": 3,
        "repeats": 3,
        "loop_members": N // 16,
        "loop_epochs": 2,
        "loop_repeats": 2,
        "peer_steps": 50,
        "peer_runs": 1,
        "quality": QUALITY_QUICK,
    },
}


def digits_trainer(member_chunk: int | str | None = None) -> Trainer:
    target = make_target("mlp", input_shape=(8, 8), widths=[32], out_features=10)
    config = TrainConfig(optimizer="adam", batch_size=BATCH, member_chunk=member_chunk)
    return Trainer(target, data.load("digits"), config)


def speed_vmapped(trainer: Trainer, epochs: int, repeats: int, n: int = N) -> dict[str, Any]:
    """Net-steps/s of `Trainer.train_epoch` on `n` members (best of `repeats` timings)."""
    state = trainer.init(jax.random.key(0), n, learning_rate=LEARNING_RATE)
    t0 = time.perf_counter()
    chunk = trainer.member_chunk(state)  # the "memory" rule's probe compile counts here
    state, metrics = trainer.train_epoch(state, 0)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    rates, epoch = [], 1
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(epochs):
            state, metrics = trainer.train_epoch(state, epoch)
            epoch += 1
        jax.block_until_ready(state)
        rates.append(n * trainer.steps_per_epoch * epochs / (time.perf_counter() - t0))
    log(f"vmapped N={n}: {max(rates):,.0f} net-steps/s (runs {[round(r) for r in rates]})")
    return {
        "net_steps_per_s": max(rates),
        "runs": rates,
        "epochs_per_run": epochs,
        "steps_per_epoch": trainer.steps_per_epoch,
        "first_epoch_s": compile_s,
        "member_chunk": chunk,
        "final_train_batch_acc_mean": float(np.mean(np.asarray(metrics["batch_acc"]))),
    }


def speed_loop(trainer: Trainer, members: int, epochs: int, repeats: int) -> dict[str, Any]:
    """The same training as a Python loop over members, one jitted single-member step.

    Times `members` members for `epochs` epochs each (best of `repeats`), and checks that
    they end where the vmapped trainer puts them.
    """
    batch = trainer.config.batch_size
    x_train, y_train = trainer.x_train, trainer.y_train

    @jax.jit
    def member_order(key, subset, epoch):
        return shuffled_order(jax.random.fold_in(jax.random.fold_in(key, 2), epoch), subset)

    @jax.jit
    def member_step(params, opt_state, diverged, order, n_sub, key, epoch, j):
        idx = order[(j * batch + jnp.arange(batch)) % n_sub]
        k = jax.random.fold_in(jax.random.fold_in(key, 3), epoch * 100003 + j)
        params, opt_state, _, _, diverged = trainer.member_step(
            params, opt_state, x_train[idx], y_train[idx], k, diverged
        )
        return params, opt_state, diverged

    init = trainer.init(jax.random.key(0), N, learning_rate=LEARNING_RATE, shard=False)
    device = jax.devices()[0]
    start = [
        jax.device_put(
            jax.tree.map(
                lambda a, i=i: a[i],
                (init.params, init.opt_state, init.diverged, init.key, init.subset),
            ),
            device,
        )
        for i in range(members)
    ]

    def run(slice_):
        out = []
        for params, opt_state, diverged, key, subset in slice_:
            n_sub = jnp.sum(subset)
            for e in range(epochs):
                order = member_order(key, subset, e)
                for j in range(trainer.steps_per_epoch):
                    params, opt_state, diverged = member_step(
                        params, opt_state, diverged, order, n_sub, key, e, j
                    )
            out.append(params)
        return jax.block_until_ready(out)

    run(start[:1])  # compile
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        looped = run(start)
        rates.append(members * epochs * trainer.steps_per_epoch / (time.perf_counter() - t0))
    # The vmapped trainer from the same initial state, for the same epochs.
    state = trainer.init(jax.random.key(0), N, learning_rate=LEARNING_RATE)
    for e in range(epochs):
        state, _ = trainer.train_epoch(state, e)
    diff = max(
        float(jnp.max(jnp.abs(jax.device_put(p, device) - jax.device_put(v[i], device))))
        for i, params in enumerate(looped)
        for p, v in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True)
    )
    log(f"loop: {max(rates):,.0f} net-steps/s (runs {[round(r) for r in rates]}), diff {diff:.2e}")
    return {
        "net_steps_per_s": max(rates),
        "runs": rates,
        "members_timed": members,
        "epochs_per_member": epochs,
        "max_abs_param_diff_vs_vmapped": diff,
    }


def torch_peer(steps: int, runs: int) -> dict[str, Any]:
    """Runs ``torch_zoo_digits.py N steps`` `runs` times; the best rate of each kind."""
    python = os.environ.get("WEIGHTSPACE_PEERS_PYTHON") or str(
        REPO.parent / "peers-venv" / "bin" / "python"
    )
    peers = Path(os.environ.get("WEIGHTSPACE_PEERS_DIR") or REPO.parent / "shared" / "peers")
    script = peers / "torch_zoo_digits.py"
    cmd = [python, str(script), str(N), str(steps)]
    out: dict[str, Any] = {"cmd": " ".join(cmd), "seq": None, "vmap": None, "reason": None}
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        out["reason"] = f"no peer interpreter at {python} (set WEIGHTSPACE_PEERS_PYTHON)"
        return out
    if not script.is_file():
        out["reason"] = f"no peer script at {script} (set WEIGHTSPACE_PEERS_DIR)"
        return out
    seq, vm = [], []
    for _ in range(runs):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            out["reason"] = f"peer failed: {e}"
            return out
        lines = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("{")]
        if p.returncode != 0 or not lines:
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
            out["reason"] = f"peer exited {p.returncode}: {tail[0][:300]}"
            return out
        row = json.loads(lines[-1])
        out["peer"] = row.get("peer")
        seq.append(float(row["seq_net_steps_per_s"]))
        vm.append(float(row["torch_func_vmap_net_steps_per_s"]))
    out.update(seq=max(seq), vmap=max(vm), seq_runs=seq, vmap_runs=vm, steps=steps)
    log(f"torch peer: seq {max(seq):,.0f}, vmap {max(vm):,.0f} net-steps/s ({out.get('peer')})")
    return out


def quality(specs: dict[str, tuple[dict, int, int]]) -> dict[str, dict[str, Any]]:
    """Builds one zoo per preset and reports its best final test accuracy."""
    from hyper import zoo

    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        for name, (grid, seeds, epochs) in specs.items():
            preset = zoo.PRESETS[name]
            t0 = time.perf_counter()
            z = zoo.build(
                os.path.join(tmp, name),
                preset=name,
                grid=grid,
                seeds=seeds,
                epochs=epochs,
                checkpoint_epochs=[epochs],
                progress=False,
            )
            wall = time.perf_counter() - t0
            rows = [r for r in z.metadata if r["epoch"] == epochs]
            acc = np.array([r["test_acc"] for r in rows], np.float64)
            best = rows[int(np.argmax(acc))]
            keys = ("learning_rate", "weight_decay", "init_scale", "train_fraction", "activation")
            out[name] = {
                "best_test_acc": float(acc.max()),
                "mean_test_acc": float(acc.mean()),
                "members": len(rows),
                "diverged": int(sum(bool(r.get("diverged")) for r in rows)),
                "epochs": epochs,
                "seeds": seeds,
                "dataset": preset.dataset,
                "arch": dict(preset.arch),
                "grid": grid,
                "best_member": {k: best[k] for k in keys if k in best},
                "wall_s": wall,
            }
            log(f"{name}: best test acc {acc.max():.4f} of {len(rows)} members ({wall:.1f} s)")
    return out


def run(quick: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    cfg = SETTINGS[quick]
    info = machine()
    log(f"{info['cpu_model']}, {info['cpu_cores']} cores, {info['device_count']} JAX devices")
    trainer = digits_trainer()
    vm = speed_vmapped(trainer, cfg["epochs"], cfg["repeats"])
    loop = speed_loop(trainer, cfg["loop_members"], cfg["loop_epochs"], cfg["loop_repeats"])
    peer = torch_peer(cfg["peer_steps"], cfg["peer_runs"])  # JAX is idle meanwhile
    qual = quality(cfg["quality"])
    rate = vm["net_steps_per_s"]
    result: dict[str, Any] = {
        "N": N,
        "arch": "mlp 64-32-10",
        "dataset": "digits",
        "batch_size": BATCH,
        "optimizer": f"adam lr={LEARNING_RATE}",
        "net_steps_per_s": rate,
        "loop_net_steps_per_s": loop["net_steps_per_s"],
        "speedup_vs_loop": ratio(rate, loop["net_steps_per_s"]),
        "torch_seq_net_steps_per_s": peer["seq"],
        "torch_vmap_net_steps_per_s": peer["vmap"],
        "speedup_vs_torch_vmap": ratio(rate, peer["vmap"]),
        "speedup_vs_torch_seq": ratio(rate, peer["seq"]),
        "best_test_acc": {k: v["best_test_acc"] for k, v in qual.items()},
    }
    result["vmapped"] = vm
    result["loop"] = loop
    result["torch_peer"] = peer
    result["quality"] = qual
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"] = info
    result["wall_s"] = time.perf_counter() - t_start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller zoos, under a minute")
    parser.add_argument("--out", default=None, help="default bench/results[/quick]/zoo.json")
    args = parser.parse_args(argv)
    sharding.use_cpu_cores()  # before any JAX computation: one JAX device per core
    with stdout_to_stderr():
        result = run(args.quick)
    write_result(result, args.out, name="zoo", schema=SCHEMA_VERSION, quick=args.quick, goals=GOALS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
