"""Benchmark: MetaPruning against group-L2 and random structured pruning.

Per data set (digits 2-D CNNs, MNIST-1D 1-D CNNs; `--quick`: digits only, smaller, the 3x
speed-up only):

1. A zoo of networks of one architecture is trained with `hyper.train.Trainer` (seeds x
   learning rates {3e-3, 1e-2}, Adam); ≥ 10 more networks with other seeds are held out
   (never seen by the metanet).
2. `metanets.metaprune.meta_train` fits a MetaPruning metanet on the zoo (CE + λ·group-L2 of
   the edited networks; `MetaPruneConfig` below).
3. Each held-out network goes through the same pipeline three ways, with identical
   fine-tune budgets (Adam, lr 1e-3, batch 128): ``metaprune`` = metanet edit -> fine-tune
   ``ft_before`` steps -> progressive global group-L2 pruning (mean-normalised per group,
   4 rounds) to the FLOPs speed-up -> fine-tune ``ft_after`` steps; ``group_l2`` = the
   same without the edit; ``random`` = random importance instead of group-L2. The
   pre-pruning fine-tune is shared by the 2x and 3x runs of a method.
4. ``acc[method][2x|3x]``: mean and std of test accuracy over the held-out networks
   (also before the final fine-tune, ``acc_pruned``). FLOPs and parameters before/after
   (from the compact targets, `hyper.compact.count_flops`/`count_params`);
   ``compact_speedup_measured``: wall time of the original over the compact model on a
   batch of 4,096 test inputs (jitted, median of 20), for the first held-out network's
   3x metaprune model (and 2x).

Goal (issue 5): MetaPruning >= group-L2 + 1 point at 3x. The paper's anchors are
ResNet-56/VGG-19 on CIFAR; this is the mechanism at small scale, reported as measured.

Usage::

  python bench/metaprune.py [--quick] [--out PATH]

Writes ``bench/results/metaprune.json`` and prints it as one JSON line on stdout (the
``acc`` and ``compact_speedup_measured`` keys first); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import goal, logger, machine, stdout_to_stderr, write_result  # noqa: E402
from hyper import compact, data, prune  # noqa: E402
from hyper import population as pop_ops  # noqa: E402
from hyper.architectures import make_target  # noqa: E402
from hyper.train import TrainConfig, Trainer  # noqa: E402
from metanets import metaprune  # noqa: E402

log = logger("metaprune")
SPEEDUPS = {"2x": 2.0, "3x": 3.0}
METHODS = ("metaprune", "group_l2", "random")
GOAL = "acc/metaprune/3x >= acc/group_l2/3x + 0.01"
# Version 2: structured goals, provenance and goals_met by bench.common.write_result.
SCHEMA_VERSION = 2
GOAL_MARGIN = 0.01


def goals_for(datasets: list[str]) -> dict[str, dict[str, Any]]:
    """`GOAL` on every data set run: met only when met on each one (the value shown is the
    worst of them)."""
    keys = [f"metaprune_minus_group_l2_3x/{d}" for d in datasets]
    return {"metaprune_vs_group_l2_3x": goal(keys[0], ">=", GOAL_MARGIN, controls=keys[1:])}


SETUPS: dict[str, dict[str, Any]] = {
    "digits": {
        "arch": {"arch": "cnn2d", "channels": [16, 32, 32], "out_features": 10},
        "epochs": 30,
        "zoo_seeds": 24,
        "held_out": 10,
        "meta": metaprune.MetaPruneConfig(steps=600, nets_per_step=8, r=0.05, sparsity=1.0),
        "ft_before": 100,
        "ft_after": 300,
    },
    "mnist1d": {
        "arch": {"arch": "cnn1d", "channels": [32, 32, 32], "kernel_size": 5, "out_features": 10},
        "epochs": 30,
        "zoo_seeds": 16,
        "held_out": 10,
        "meta": metaprune.MetaPruneConfig(steps=600, nets_per_step=8, r=0.05, sparsity=1.0),
        "ft_before": 100,
        "ft_after": 300,
    },
}
QUICK = {  # the mechanism end to end (one held-out network: a smoke test); ~45 s on 2 cores
    "digits": {
        "arch": {"arch": "cnn2d", "channels": [16, 16, 16], "out_features": 10},
        "epochs": 8,
        "zoo_seeds": 4,
        "held_out": 1,
        "meta": metaprune.MetaPruneConfig(steps=20, nets_per_step=4, r=0.05, sparsity=1.0),
        "ft_before": 10,
        "ft_after": 30,
        "speedups": ("3x",),  # the goal's speed-up only: each pruned shape is a new compile
    }
}
LRS = (3e-3, 1e-2)


def train_networks(target, ds, groups, epochs, lrs):
    """For each `(n, seed)` of `groups`: `n` networks, learning rates cycling through `lrs`,
    member `i` from ``fold_in(key(seed), i)``. All groups train as one population (one
    compiled program); each member's run is its own, whatever it is trained beside."""
    tr = Trainer(target, ds, TrainConfig(batch_size=128))
    keys = [jax.random.fold_in(jax.random.key(seed), i) for n, seed in groups for i in range(n)]
    lr = np.asarray([lrs[i % len(lrs)] for n, _ in groups for i in range(n)], np.float32)
    state = tr.init(jax.random.key(0), len(keys), learning_rate=lr, member_keys=jnp.stack(keys))
    state = tr.fit(state, epochs)
    acc = np.asarray(tr.evaluate(state.params)["test_acc"])
    out, start = [], 0
    for n, _ in groups:
        idx = np.arange(start, start + n)
        out.append((pop_ops.take(state.params, idx), acc[idx]))
        start += n
    return out


def member(pop, i):
    return jax.tree.map(lambda a: a[i], pop)


def time_apply(target, params, x, reps: int = 20) -> float:
    fn = jax.jit(target.pure_apply)
    jax.block_until_ready(fn(params, x))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, x))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mean_std(v):
    v = [float(x) for x in v]
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}


def run_dataset(name: str, setup: dict[str, Any], seed: int) -> dict[str, Any]:
    ds = data.load(name)
    cfg = dict(setup["arch"])
    target = make_target(cfg.pop("arch"), input_shape=ds.input_shape, **cfg)
    t0 = time.perf_counter()
    (zoo, zoo_acc), (held, held_acc) = train_networks(
        target,
        ds,
        [(setup["zoo_seeds"], seed), (setup["held_out"], seed + 1000)],
        setup["epochs"],
        LRS,
    )
    t_zoo = time.perf_counter() - t0
    log(
        f"[{name}] {target.name}: zoo {setup['zoo_seeds']} nets (test acc mean "
        f"{zoo_acc.mean():.3f}), held-out {setup['held_out']} (mean {held_acc.mean():.3f}), "
        f"{t_zoo:.0f} s"
    )
    t0 = time.perf_counter()
    mp = metaprune.meta_train(target, zoo, ds, setup["meta"], log=log, log_every=100)
    t_meta = time.perf_counter() - t0
    # How the edit moves the held-out networks (before any fine-tuning).
    edited = mp.edit(held)
    lasso_before = [
        float(metaprune.group_lasso(target, member(held, i))) for i in range(setup["held_out"])
    ]
    lasso_after = [
        float(metaprune.group_lasso(target, member(edited, i))) for i in range(setup["held_out"])
    ]
    acc_edited = [prune.accuracy(target, member(edited, i), ds) for i in range(setup["held_out"])]
    ft = {"learning_rate": 1e-3, "batch_size": 128}
    speedups = {k: SPEEDUPS[k] for k in setup.get("speedups", SPEEDUPS)}
    rows = []
    f0, n0 = compact.count_flops(target), compact.count_params(target)
    timing: dict[str, Any] = {}
    t0 = time.perf_counter()
    for i in range(setup["held_out"]):
        net = member(held, i)
        start = {
            "metaprune": prune.finetune(
                target, member(edited, i), ds, steps=setup["ft_before"], seed=i, **ft
            ),
            "group_l2": prune.finetune(target, net, ds, steps=setup["ft_before"], seed=i, **ft),
        }
        start["random"] = start["group_l2"]
        for method in METHODS:
            for label, s in speedups.items():
                r = prune.prune_pipeline(
                    target,
                    start[method],
                    ds,
                    speedup=s,
                    importance="random" if method == "random" else "l2",
                    finetune_before=0,
                    finetune_after=setup["ft_after"],
                    seed=i,
                    **ft,
                )
                rows.append(
                    {
                        "net": i,
                        "method": method,
                        "speedup": label,
                        "acc_original": float(held_acc[i]),
                        "acc_start": r.acc["finetuned"],
                        "acc_pruned": r.acc["pruned"],
                        "acc": r.acc["final"],
                        "flops": list(r.flops),
                        "num_params": list(r.num_params),
                        "speedup_flops": r.speedup,
                        "widths": r.info["widths"],
                    }
                )
                if i == 0 and method == "metaprune":
                    x = jnp.asarray(np.resize(ds.x_test, (4096, *ds.input_shape)))
                    t_full = time_apply(target, net, x)
                    t_small = time_apply(r.target, r.params, x)
                    timing[label] = {
                        "original_s": t_full,
                        "compact_s": t_small,
                        "ratio": t_full / t_small,
                        "flops_ratio": r.speedup,
                        "widths": r.info["widths"],
                    }
        done = [x for x in rows if x["net"] == i]
        log(
            f"[{name}] net {i}: "
            + ", ".join(f"{x['method']} {x['speedup']} {x['acc']:.3f}" for x in done)
        )
    t_eval = time.perf_counter() - t0

    def col(m: str, label: str, key: str) -> list[Any]:
        return [x[key] for x in rows if x["method"] == m and x["speedup"] == label]

    def per_method(stat) -> dict[str, dict[str, Any]]:
        return {m: {label: stat(m, label) for label in speedups} for m in METHODS}

    acc = per_method(lambda m, lb: mean_std(col(m, lb, "acc")))
    acc_pruned = per_method(lambda m, lb: mean_std(col(m, lb, "acc_pruned")))
    size = per_method(
        lambda m, lb: {
            "flops_after_mean": float(np.mean([f[1] for f in col(m, lb, "flops")])),
            "params_after_mean": float(np.mean([n[1] for n in col(m, lb, "num_params")])),
            "speedup_flops_min": float(min(col(m, lb, "speedup_flops"))),
        }
    )
    margin = acc["metaprune"]["3x"]["mean"] - acc["group_l2"]["3x"]["mean"]
    # rows come in the same (net, speedup) order for every method
    meta3, l2_3 = col("metaprune", "3x", "acc"), col("group_l2", "3x", "acc")
    paired = [a - b for a, b in zip(meta3, l2_3, strict=True)]
    return {
        "dataset": name,
        "target": target.name,
        "acc": acc,
        "acc_pruned_before_finetune": acc_pruned,
        "acc_original": mean_std(held_acc),
        "acc_edited_before_finetune": mean_std(acc_edited),
        "group_lasso_held_out": {
            "before_edit": mean_std(lasso_before),
            "after_edit": mean_std(lasso_after),
        },
        "metaprune_minus_group_l2_3x": margin,
        "metaprune_wins_3x": int(sum(d > 0 for d in paired)),
        "paired_3x": mean_std(paired),
        "goal_met": bool(margin >= GOAL_MARGIN),
        "flops_before": f0,
        "params_before": n0,
        "size_after": size,
        "compact_speedup_measured": timing.get("3x", {}).get("ratio"),
        "compact_timing": timing,
        "setup": {
            **{k: v for k, v in setup.items() if k not in ("meta", "speedups")},
            "speedups": list(speedups),
            "meta": dataclasses.asdict(setup["meta"]),
            "zoo_lrs": list(LRS),
            "finetune": ft,
            "prune_steps": 4,
            "importance_normalizer": "mean",
        },
        "metanet_history": mp.history,
        "seconds": {"zoo": t_zoo, "meta_train": t_meta, "pipelines": t_eval},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="comma-separated data sets")
    parser.add_argument(
        "--sparsity-kind",
        choices=metaprune.SPARSITY_KINDS,
        default="group_l2",
        help="the metanet's sparsity term (group_l2: the paper's; ratio: scale-invariant)",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    setups = {
        k: {**v, "meta": dataclasses.replace(v["meta"], sparsity_kind=args.sparsity_kind)}
        for k, v in (QUICK if args.quick else SETUPS).items()
    }
    names = args.only.split(",") if args.only else list(setups)
    t0 = time.perf_counter()
    info = machine()
    with stdout_to_stderr():
        per = [run_dataset(n, setups[n], args.seed) for n in names]
    head = per[0]
    result = {
        "sparsity_kind": args.sparsity_kind,
        # headline keys: the first data set; every data set is under "datasets"
        "acc": head["acc"],
        "compact_speedup_measured": head["compact_speedup_measured"],
        "goal_in_words": GOAL,
        "metaprune_minus_group_l2_3x": {
            d["dataset"]: d["metaprune_minus_group_l2_3x"] for d in per
        },
        "datasets": {d["dataset"]: d for d in per},
        "machine": info,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    # --quick holds one held-out network: write_result leaves its goals_met null
    write_result(
        result,
        args.out,
        name="metaprune",
        schema=SCHEMA_VERSION,
        quick=args.quick,
        goals=goals_for([d["dataset"] for d in per]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
