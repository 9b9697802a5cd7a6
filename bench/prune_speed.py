"""Pruning that pays: does a compact network with fewer FLOPs run faster? (issue 28, item 7)

Three measurements, in one process, every timing interleaved (round-robin over the
networks compared, `REPEATS` rounds, the median of each) with the load average recorded
beside it (the machine is shared: compare ratios, rerun the final figures on an idle one):

1. ``width_sweep``: one jitted 3x3 'SAME' conv on 8x8 inputs with 16 input channels (the
   digits CNN's middle layer), batch `BATCH` (4,096, as the pruning benchmarks time), for
   1..64 output channels. It shows the first cause: XLA:CPU is fastest at multiples of 8
   output channels; one channel past a multiple of 8 costs up to twice the time.
   ``first_layer_sweep``: the same for the digits CNN's first conv (1 input channel), 1..32
   output channels. It shows the second cause: that conv's time hardly depends on its
   width (measured at load 7.5 on 2 cores: 1->8 and 1->16 channels both 28 ms; the
   whole network, timed in another run at that load, about 60 ms), a share of the
   original's time no pruning removes.
2. ``cnn_widths``: the whole digits CNN (16/32/32) at fixed widths, unrounded (the widths
   group-L2 pruning gave in ``bench/results/metaprune.json``), rounded to 8 and 8/8/8 (7x
   fewer FLOPs: the ceiling, about 1.5-1.8x faster). Third cause: the first layer's width
   costs time out of proportion to its FLOPs (its 8x8 activations are the largest tensors):
   16/8/24 and 8/16/24 have about the same FLOPs, 8/16/24 runs faster. Rounding widths up
   while walking the ranking (the first `round_to` rule) kept the first layer at 16
   (16/8/24: 1.25x); rounding the ranking's widths down, then trimming and refilling by
   score per FLOP, keeps its allocation (ranked about 9/18/17: 8/16/24 or 8/16/16).
3. ``pruning``: per architecture, `NETS` networks trained with different seeds; each is
   fine-tuned, then pruned by `hyper.prune.prune_pipeline` (global group-L2, 4 rounds,
   then ``ft_after`` fine-tuning steps) to 2x and 3x fewer FLOPs (FLOPs counted after
   rounding), with ``round_to`` 1 (no rounding) and 8. ``compact_speedup_measured`` is the
   median over the networks of (time of the original) / (time of the compact network),
   both timed interleaved on a batch of `BATCH` test inputs. Accuracies are test
   accuracies after pruning and fine-tuning (mean over the networks). The CNNs also get a
   ``latency_table_8`` variant (rows ``latency_1.3x``): a latency table measured first on
   every width vector rounding to 8 allows (`hyper.latency.measure_table`, random
   weights), then pruning to the goal's 1.3x shorter *predicted* time
   (`prune_pipeline(latency=table)`): the fewest units removed for the speed wanted (a 3x
   shorter time is out of reach on this CPU: even widths 8/8/8 are not 3x faster).

Architectures: the digits CNN of ``bench/metaprune.py`` (channels 16/32/32), the MNIST-1D
CNN (the widths and kernel of preset ``mnist1d-cnn``: 32/32/32, kernel 5), and
``digits-vit`` (the zoo preset) where this checkout has it: otherwise its row says "not
available" (nothing is faked). Both CNNs are configured here (`ARCHS`), not read from the
presets: they keep XLA's 'SAME' padding (a config without ``padding``), the padding of the
results measured so far, while the CNN presets now pad symmetrically (``"SYMMETRIC"``).

Goals: ``compact_speedup_measured`` >= 1.3 at 3x FLOPs with rounding for both CNNs;
accuracy with rounding within 0.5 points of unrounded pruning (3x).

Usage::

  python bench/prune_speed.py [--quick] [--only digits-cnn,...] [--no-sweeps] [--out PATH]
  python -m bench prune_speed [--quick]

``--only`` and ``--no-sweeps`` make partial runs (they leave the other goals unmet).

Writes ``bench/results/prune_speed.json`` (``--quick``: ``bench/results/quick/``) and prints
it as one JSON line on stdout; progress goes to stderr. The full run takes a few minutes
on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import goal, logger, machine, stdout_to_stderr, write_result  # noqa: E402
from hyper import compact, data, latency, prune, symmetry, zoo  # noqa: E402
from hyper.architectures import make_target  # noqa: E402
from hyper.errors import WeightspaceError  # noqa: E402
from hyper.population import take  # noqa: E402
from hyper.train import TrainConfig, Trainer  # noqa: E402

log = logger("prune_speed")
SCHEMA_VERSION = 1
BATCH = 4096
REPEATS = 9
ROUND_TO = (1, 8)
SPEEDUPS = {"2x": 2.0, "3x": 3.0}
GOAL_SPEEDUP = 1.3
GOAL_ACC_POINTS = 0.005  # 0.5 accuracy points
VIT = "digits-vit"
LATENCY_LABEL = f"latency_{GOAL_SPEEDUP:g}x"

ARCHS: dict[str, dict[str, Any]] = {
    "digits-cnn": {
        "dataset": "digits",
        "arch": {"arch": "cnn2d", "channels": [16, 32, 32], "out_features": 10},
        "epochs": 30,
    },
    "mnist1d-cnn": {
        "dataset": "mnist1d",
        "arch": {"arch": "cnn1d", "channels": [32, 32, 32], "kernel_size": 5, "out_features": 10},
        "epochs": 30,
    },
}
FULL = {
    "nets": 5,
    "ft_before": 100,
    "ft_after": 300,
    "sweep": list(range(1, 65)),
    "first_sweep": list(range(1, 33)),
    "latency_table": True,
}
QUICK = {
    "nets": 2,
    "ft_before": 10,
    "ft_after": 20,
    "sweep": [8, 9, 16, 17],
    "first_sweep": [8, 16],
    "epochs": 4,
}
# Widths of the digits CNN for `cnn_widths`: the unrounded ones group-L2 pruning chose
# (bench/results/metaprune.json, 2x and 3x) and widths rounded to 8 of similar FLOPs.
# [8, 8, 8] (7x fewer FLOPs) is the ceiling of what pruning to multiples of 8 can gain.
CNN_WIDTHS = [
    [16, 32, 32],
    [13, 19, 24],
    [16, 16, 24],
    [10, 15, 22],
    [8, 16, 24],
    [16, 8, 24],
    [8, 16, 16],
    [8, 8, 8],
]


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (`/proc/loadavg`)."""
    return [round(x, 2) for x in os.getloadavg()]


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each blocking call in `runs`, timed round-robin `repeats` times
    (after one untimed call each, which compiles), so a change of load hits all alike."""
    for fn in runs.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def width_sweep(channels: list[int], *, batch: int, repeats: int, in_channels: int = 16):
    """Seconds of one jitted 3x3 'SAME' conv on `[batch, 8, 8, in_channels]` against its
    number of output channels."""
    x = jax.random.normal(jax.random.key(0), (batch, 8, 8, in_channels), jnp.float32)
    conv = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    runs = {}
    for c in channels:
        w = jax.random.normal(jax.random.key(c), (3, 3, in_channels, c), jnp.float32)
        runs[str(c)] = lambda w=w: conv(x, w)
    before = loadavg()
    med = interleaved(runs, repeats)
    ms = [round(med[str(c)] * 1e3, 3) for c in channels]
    per8 = {  # time at c over time at the multiple of 8 at or below it
        str(c): round(med[str(c)] / med[str(c - c % 8)], 3)
        for c in channels
        if c % 8 and str(c - c % 8) in med
    }
    return {
        "what": f"jitted 3x3 SAME conv, input [{batch}, 8, 8, {in_channels}], NHWC",
        "out_channels": channels,
        "ms": ms,
        "ratio_to_multiple_of_8_below": per8,
        "loadavg": {"before": before, "after": loadavg()},
    }


def _batch(ds: data.Dataset, batch: int) -> jax.Array:
    return jnp.asarray(np.resize(ds.x_test, (batch, *ds.input_shape)))


def cnn_widths(widths: list[list[int]], *, batch: int, repeats: int) -> dict[str, Any]:
    """The digits CNN at fixed widths (random weights), timed interleaved."""
    ds = data.load("digits")
    x = _batch(ds, batch)
    runs, flops = {}, {}
    for w in widths:
        t = make_target("cnn2d", input_shape=ds.input_shape, channels=w, out_features=10)
        p, fn = t.init(jax.random.key(0)), jax.jit(t.pure_apply)
        runs[str(w)] = lambda fn=fn, p=p: fn(p, x)
        flops[str(w)] = compact.count_flops(t)
    before = loadavg()
    med = interleaved(runs, repeats)
    base = str(widths[0])
    rows = [
        {
            "widths": w,
            "rounded_to_8": all(v % 8 == 0 for v in w),
            "flops": flops[str(w)],
            "flops_ratio": round(flops[base] / flops[str(w)], 3),
            "ms": round(med[str(w)] * 1e3, 3),
            "speedup_measured": round(med[base] / med[str(w)], 3),
        }
        for w in widths
    ]
    return {"rows": rows, "loadavg": {"before": before, "after": loadavg()}}


def train(target, ds, nets: int, epochs: int, seed: int):
    """`nets` networks, one per seed (member keys ``fold_in(key(seed), i)``), Adam 3e-3."""
    tr = Trainer(target, ds, TrainConfig(batch_size=128))
    keys = jnp.stack([jax.random.fold_in(jax.random.key(seed), i) for i in range(nets)])
    state = tr.init(jax.random.key(seed), nets, learning_rate=3e-3, member_keys=keys)
    state = tr.fit(state, epochs)
    return state.params, np.asarray(tr.evaluate(state.params)["test_acc"])


def variants(target, setup: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict]:
    """The pruning variants compared: no rounding, `round_to` 8 and, with
    ``setup["latency_table"]``, pruning against a latency table measured here on every
    width vector rounding to 8 allows (`hyper.latency.measure_table`; pruned to a
    `GOAL_SPEEDUP` shorter predicted time, not to a FLOPs ratio)."""
    out = {f"round_to_{r}": {"round_to": r} for r in ROUND_TO}
    info: dict[str, Any] = {}
    if setup.get("latency_table"):
        sizes = [g.size for g in symmetry.structural_groups(target)]
        grid = latency.width_grid(sizes, 8)
        t0, before = time.perf_counter(), loadavg()
        table = latency.measure_table(target, grid, batch=BATCH, repeats=3)
        info = {
            "grid": len(grid),
            "seconds": time.perf_counter() - t0,
            "loadavg": {"before": before, "after": loadavg()},
            "ms": {str(list(w)): round(v * 1e3, 3) for w, v in table.items()},
        }
        out["latency_table_8"] = {"round_to": 8, "latency": table}
    return out, info


def run_arch(name: str, spec: dict[str, Any], setup: dict[str, Any], seed: int) -> dict:
    ds = data.load(spec["dataset"])
    cfg = dict(spec["arch"])
    target = make_target(cfg.pop("arch"), input_shape=ds.input_shape, **cfg)
    t0 = time.perf_counter()
    epochs = setup.get("epochs", spec["epochs"])
    pop, acc0 = train(target, ds, setup["nets"], epochs, seed)
    log(f"[{name}] {target.name}: {setup['nets']} nets, test acc {np.round(acc0, 3).tolist()}")
    x = _batch(ds, BATCH)
    f_orig = jax.jit(target.pure_apply)
    speedups = {k: SPEEDUPS[k] for k in setup.get("speedups", SPEEDUPS)}
    kinds, table_info = variants(target, setup)
    rows, loads = [], []
    ft = {"learning_rate": 1e-3, "batch_size": 128}
    for i in range(setup["nets"]):
        net = jax.tree.map(lambda a: a[0], take(pop, np.asarray([i])))
        start = prune.finetune(target, net, ds, steps=setup["ft_before"], seed=i, **ft)
        results = {}
        todo = [(lb, s, k, kw) for lb, s in speedups.items() for k, kw in kinds.items()]
        todo = [t for t in todo if "latency" not in t[3]]
        if "latency_table_8" in kinds:  # the speed goal itself, as a predicted latency ratio
            todo.append((LATENCY_LABEL, GOAL_SPEEDUP, "latency_table_8", kinds["latency_table_8"]))
        for label, s, kind, kw in todo:
            results[(label, kind)] = prune.prune_pipeline(
                target,
                start,
                ds,
                speedup=s,
                finetune_before=0,
                finetune_after=setup["ft_after"],
                seed=i,
                **kw,
                **ft,
            )
        runs = {"original": lambda p=start: f_orig(p, x)}
        for (label, kind), res in results.items():
            fn = jax.jit(res.target.pure_apply)
            runs[f"{label}/{kind}"] = lambda fn=fn, p=res.params: fn(p, x)
        before = loadavg()
        med = interleaved(runs, REPEATS)
        loads.append({"net": i, "before": before, "after": loadavg()})
        for (label, kind), res in results.items():
            rows.append(
                {
                    "net": i,
                    "speedup": label,
                    "variant": kind,
                    "widths": res.info["widths"],
                    "flops": list(res.flops),
                    "flops_ratio": res.speedup,
                    "acc_pruned": res.acc["pruned"],
                    "acc": res.acc["final"],
                    "original_s": med["original"],
                    "compact_s": med[f"{label}/{kind}"],
                    "speedup_measured": med["original"] / med[f"{label}/{kind}"],
                }
            )
        log(
            f"[{name}] net {i}: "
            + ", ".join(
                f"{row['speedup']} {row['variant']} {row['widths']} "
                f"x{row['speedup_measured']:.2f} acc {row['acc']:.3f}"
                for row in rows
                if row["net"] == i
            )
        )

    def col(label, kind, key):
        return [row[key] for row in rows if row["speedup"] == label and row["variant"] == kind]

    labels = list(speedups) + ([LATENCY_LABEL] if "latency_table_8" in kinds else [])
    summary = {
        label: {
            kind: {
                "compact_speedup_measured": statistics.median(col(label, kind, "speedup_measured")),
                "speedup_measured_all": col(label, kind, "speedup_measured"),
                "flops_ratio_min": min(col(label, kind, "flops_ratio")),
                "acc_mean": float(np.mean(col(label, kind, "acc"))),
                "acc_pruned_mean": float(np.mean(col(label, kind, "acc_pruned"))),
                "widths": col(label, kind, "widths"),
            }
            for kind in kinds
            if col(label, kind, "acc")
        }
        for label in labels
    }
    return {
        "available": True,
        "dataset": spec["dataset"],
        "target": target.name,
        "acc_original": [float(a) for a in acc0],
        "summary": summary,
        "latency_table": table_info,
        "loadavg": loads,
        "setup": {**setup, "epochs": epochs, "finetune": ft, "batch": BATCH},
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }


def vit_row(setup: dict[str, Any], seed: int) -> dict[str, Any]:
    """The digits-vit row: run as the CNNs when `hyper.zoo.PRESETS` has the preset; else
    (or when pruning refuses it) a row that says so, with the reason."""
    preset = zoo.PRESETS.get(VIT)
    if preset is None:
        return {"available": False, "reason": f"preset {VIT!r} is not in hyper.zoo.PRESETS here"}
    arch = dict(preset.arch)
    if "activation" in preset.grid:
        arch["activation"] = preset.grid["activation"][0]
    spec = {"dataset": preset.dataset, "arch": arch, "epochs": preset.epochs}
    try:  # no latency table: a transformer's width grid is too large to time
        return run_arch(VIT, spec, {**setup, "latency_table": False}, seed)
    except WeightspaceError as e:
        return {"available": False, "reason": f"refused: {e}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits only, 2 nets, 3x, < 1 min")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="comma-separated architectures")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--no-sweeps",
        action="store_true",
        help="skip the width sweeps and fixed-width rows (partial runs of the pruning rows)",
    )
    args = parser.parse_args(argv)
    setup = dict(QUICK if args.quick else FULL)
    if args.quick:
        setup["speedups"] = ["3x"]
    sweep_channels = setup.pop("sweep")
    first_channels = setup.pop("first_sweep")
    archs = {"digits-cnn": ARCHS["digits-cnn"]} if args.quick else ARCHS
    if args.only:
        archs = {k: v for k, v in archs.items() if k in args.only.split(",")}
    t0 = time.perf_counter()
    info = machine()
    with stdout_to_stderr():
        repeats = 3 if args.quick else REPEATS
        sweep = first = widths = "skipped (--no-sweeps)"
        if not args.no_sweeps:
            sweep = width_sweep(sweep_channels, batch=BATCH, repeats=repeats)
            log(f"width sweep (ms): {dict(zip(sweep['out_channels'], sweep['ms'], strict=True))}")
            first = width_sweep(first_channels, batch=BATCH, repeats=repeats, in_channels=1)
            log(f"first layer (ms): {dict(zip(first['out_channels'], first['ms'], strict=True))}")
            widths = cnn_widths(
                CNN_WIDTHS[:3] if args.quick else CNN_WIDTHS, batch=BATCH, repeats=repeats
            )
            log(f"digits CNN: {[(r['widths'], r['speedup_measured']) for r in widths['rows']]}")
        per = {n: run_arch(n, s, setup, args.seed) for n, s in archs.items()}
        skip = {"available": False, "reason": "not run in --quick or --only"}
        per[VIT] = skip if args.quick or args.only else vit_row(setup, args.seed)
    measured = {
        n: (
            {
                lb: {k: v["compact_speedup_measured"] for k, v in by_kind.items()}
                for lb, by_kind in d["summary"].items()
            }
            if d["available"]
            else f"not available: {d['reason']}"
        )
        for n, d in per.items()
    }
    cnns = list(archs)
    result = {
        "compact_speedup_measured": measured,
        "speedup_3x_rounded": {
            n: per[n]["summary"]["3x"]["round_to_8"]["compact_speedup_measured"] for n in cnns
        },
        "acc_rounded_minus_unrounded_3x": {
            n: per[n]["summary"]["3x"]["round_to_8"]["acc_mean"]
            - per[n]["summary"]["3x"]["round_to_1"]["acc_mean"]
            for n in cnns
        },
        "width_sweep": sweep,
        "first_layer_sweep": first,
        "cnn_widths": widths,
        "archs": per,
        "machine": info,
        "loadavg_end": loadavg(),
        "note": "shared machine: figures are ratios timed interleaved; rerun on an idle one",
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    # both CNNs always: a run of a subset (--only, --quick) leaves the other goals unmet
    keys = [f"speedup_3x_rounded/{n}" for n in ARCHS]
    accs = [f"acc_rounded_minus_unrounded_3x/{n}" for n in ARCHS]
    goals = {
        "speedup_3x_rounded": goal(keys[0], ">=", GOAL_SPEEDUP, controls=keys[1:]),
        "acc_rounding_3x": goal(accs[0], ">=", -GOAL_ACC_POINTS, controls=accs[1:]),
    }
    write_result(
        result, args.out, name="prune_speed", schema=SCHEMA_VERSION, quick=args.quick, goals=goals
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
