"""Stitchable Neural Networks (SN-Net, issue 31): the accuracy-FLOPs points of a stitched
family against its anchors.

Families (`generators.stitch_zoos.FAMILIES`): scikit-learn digits MLPs 64-w-w-w-w-10 with
w in {16, 32, 64, 128}, and MNIST-1D CNNs of four 5-tap conv layers of c channels (strides
1, 2, 2, 2; global average pooling; dense) with c in {8, 16, 32}. Each anchor is its own
zoo of one member (`hyper.zoo.build`, Adam 3e-3, relu, batch 128; digits 20 epochs,
MNIST-1D 30). The stitched family (`generators.stitch.stitch_family`) holds every ordered
pair of different anchors at every cut the traced computation offers (before each dense
layer after the first, or each convolution after the first and the dense head: four per
pair); each stitch is least-squares initialised on 512 training inputs. Then the whole
family trains jointly as SN-Net does (``StitchedFamily.train(anchors=True)``: each Adam
step, lr 1e-3, batch 128, draws one stitched network per cut and one anchor; the anchors'
weights train with the stitches) for ``steps_per_stitch x stitches`` steps (digits 100,
MNIST-1D 50; ``--frozen-anchors`` trains the stitches only). Accuracy is on the test
split; FLOPs per example by `hyper.compact.count_flops` on each standalone (stitch folded)
network. ``anchor_accuracy`` are the anchors as trained (the baseline);
``finetuned_anchor_accuracy`` the same anchors after the joint training.

Goal (per family): at every FLOPs budget F between the cheapest and the dearest anchor, the
best accuracy among the family's networks of at most F FLOPs (its anchors, fine-tuned,
included) is at least the linear interpolation (in FLOPs) of the neighbouring original (not
fine-tuned) anchors' accuracies minus 1 point (``worst_gap`` = max over F of
interpolation - best, goal <= 0.01; checked at every candidate's FLOPs and just below
it); and at least 10 operating points (frontier networks
within the anchors' FLOPs range, anchors included, greedily kept >= 5% apart in FLOPs).
Training cost: the stitch training's wall time and examples against one anchor's zoo build
(the dearest anchor; compilation included in both).

Usage: ``python bench/stitch.py [--quick] [--out FILE]``; writes ``bench/results/stitch.json``
(``--quick``: two anchors per family, 3-5 epochs, 5-20 steps per stitch, written to
``bench/results/quick/stitch.json``) and prints it as one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.common import goal, logger, machine, stdout_to_stderr, write_result  # noqa: E402

SCHEMA_VERSION = 1

log = logger("stitch")

import jax  # noqa: E402

import hyper.sharding  # noqa: E402
from generators.stitch import operating_points, stitch_family  # noqa: E402
from generators.stitch_zoos import anchors_from_zoos, build_family_zoos  # noqa: E402
from hyper import data as data_lib  # noqa: E402

GOALS = {
    f"{fam}_{what}": g
    for fam in ("digits_mlp", "mnist1d_cnn")
    for what, g in (
        ("worst_gap", goal(f"families/{fam}/worst_gap", "<=", 0.01)),
        ("operating_points", goal(f"families/{fam}/operating_points", ">=", 10)),
    )
}


def gap_check(
    points: list[dict[str, Any]], baseline: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Worst shortfall of the best of `points` within budget F against the linear
    interpolation of the `baseline` anchors (default: the anchors among `points`), over F
    in the anchors' FLOPs range."""
    anchors = sorted(baseline or (p for p in points if p["anchor"]), key=lambda p: p["flops"])
    lo, hi = anchors[0]["flops"], anchors[-1]["flops"]
    budgets = sorted(
        {b for p in points for b in (p["flops"], p["flops"] - 1) if lo <= b <= hi} | {lo, hi}
    )
    worst, at = -np.inf, None
    for f in budgets:
        best = max(p["accuracy"] for p in points if p["flops"] <= f)
        k = max(i for i, a in enumerate(anchors) if a["flops"] <= f)
        a = anchors[k]
        b = anchors[min(k + 1, len(anchors) - 1)]
        t = 0.0 if b["flops"] == a["flops"] else (f - a["flops"]) / (b["flops"] - a["flops"])
        interp = (1 - t) * a["accuracy"] + t * b["accuracy"]
        if interp - best > worst:
            worst, at = interp - best, f
    return {"worst_gap": round(float(worst), 5), "worst_gap_at_flops": at, "budgets": len(budgets)}


def run_family(
    name: str,
    root: str,
    *,
    widths: tuple[int, ...] | None,
    epochs: int | None,
    steps_per_stitch: int,
    finetune: bool,
    progress: bool,
) -> dict[str, Any]:
    log(f"{name}: training anchors")
    zoos = build_family_zoos(
        os.path.join(root, name), name, widths, epochs=epochs, overwrite=True, progress=progress
    )
    anchors, dataset = anchors_from_zoos([d for d, _ in zoos])
    ds = data_lib.load(dataset)
    t0 = time.perf_counter()
    family = stitch_family(anchors, ds, progress=progress)
    build_s = time.perf_counter() - t0
    init_points = family.points()
    steps = steps_per_stitch * len(family.stitched)
    log(f"{name}: {len(family.candidates)} networks; training stitches for {steps} steps")
    hist = family.train(steps, key=jax.random.key(0), anchors=finetune, progress=progress)
    points = family.points()
    original = [p for p in init_points if p["anchor"]]  # the baseline: the anchors as given
    front = family.frontier()
    lo = min(a.flops for a in family.anchors)
    hi = max(a.flops for a in family.anchors)
    ops = operating_points([p for p in front if lo <= p["flops"] <= hi], 0.05)
    dearest = max(s for _, s in zoos)
    n_train = len(ds.x_train)
    anchor_epochs = epochs
    return {
        "dataset": dataset,
        "anchors": [
            {"name": a.name, "flops": a.flops, "params": a.target.num_params}
            for a in family.anchors
        ],
        "anchor_accuracy": {p["name"]: round(p["accuracy"], 4) for p in original},
        "anchors_finetuned": finetune,
        "finetuned_anchor_accuracy": (
            {p["name"]: round(p["accuracy"], 4) for p in points if p["anchor"]}
            if finetune
            else None
        ),
        "candidates": len(family.candidates),
        "cuts": sorted({c.layer for c in family.stitched}),
        "points": [
            {k: p[k] for k in ("name", "flops", "accuracy", "anchor", "layer")} for p in points
        ],
        "least_squares_only": gap_check(init_points)
        | {"frontier_size": len(_frontier(init_points))},
        **gap_check(points, original),
        "frontier": [{"name": p["name"], "flops": p["flops"], "acc": p["accuracy"]} for p in front],
        "operating_points": len(ops),
        "operating_point_names": [p["name"] for p in ops],
        "cost": {
            "stitch_params": int(
                sum(np.size(a) + np.size(b) for a, b in map(family.stitch, _stitched(family)))
            ),
            "family_build_s": round(build_s, 2),
            "stitch_train_s": round(hist["seconds"], 2),
            "stitch_steps": steps,
            "stitch_examples": hist["examples"],
            "anchor_build_s": [round(s, 2) for _, s in zoos],
            "anchor_epochs": anchor_epochs,
            "anchor_examples": (anchor_epochs or 0) * n_train,
            "stitch_vs_dearest_anchor_time": round(hist["seconds"] / dearest, 3),
            "stitch_vs_anchor_examples": round(
                hist["examples"] / max(1, (anchor_epochs or 0) * n_train), 3
            ),
        },
    }


def _stitched(family) -> range:
    return range(family.num_anchors, len(family.candidates))


def _frontier(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out, best = [], -1.0
    for p in sorted(points, key=lambda p: (p["flops"], -p["accuracy"])):
        if p["accuracy"] > best:
            out.append(p)
            best = p["accuracy"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 2 minutes")
    parser.add_argument("--out", default=None, help="results file")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument(
        "--frozen-anchors",
        action="store_true",
        help="train the stitches only (default: the anchors with them, as SN-Net does)",
    )
    args = parser.parse_args(argv)
    hyper.sharding.use_cpu_cores()
    t_start = time.time()
    mach = machine()
    finetune = not args.frozen_anchors
    if args.quick:  # two anchors per family: smoke sizes, nothing to conclude
        settings = {"digits-mlp": ((16, 64), 5, 20), "mnist1d-cnn": ((8, 32), 3, 5)}
    else:
        settings = {"digits-mlp": (None, 20, 100), "mnist1d-cnn": (None, 30, 50)}
    families = {}
    with tempfile.TemporaryDirectory() as root, stdout_to_stderr():
        for name, (widths, epochs, per_stitch) in settings.items():
            families[name.replace("-", "_")] = run_family(
                name,
                root,
                widths=widths,
                epochs=epochs,
                steps_per_stitch=per_stitch,
                finetune=finetune,
                progress=args.progress,
            )
            families[name.replace("-", "_")]["steps_per_stitch"] = per_stitch
    result = {
        "machine": mach,
        "families": families,
        "seconds": round(time.time() - t_start, 1),
    }
    write_result(
        result, args.out, name="stitch", schema=SCHEMA_VERSION, quick=args.quick, goals=GOALS
    )
    return result


if __name__ == "__main__":
    main()
