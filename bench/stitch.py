"""Stitchable Neural Networks (SN-Net, issue 31): the accuracy-FLOPs points of a stitched
family against its anchors.

Families (`SETTINGS`, built by `generators.stitch_zoos.build_family_zoos`): scikit-learn
digits MLPs 64-w-w-w-w-10 with w in {16, 32, 64, 128} (``digits_mlp``) and in {8, 16, 32,
64, 128} (``digits_mlp_8``), and MNIST-1D CNNs of four 5-tap conv layers of c channels
(strides 1, 2, 2, 2; global average pooling; dense) with c in {8, 16, 32}
(``mnist1d_cnn``); every ordered pair of anchors stitched (``pairs``; the API also offers
SN-Net's Fast-to-Slow and nearest pairs). Each anchor is its own zoo of one member
(`hyper.zoo.build`, Adam 3e-3, relu, batch 128) trained to convergence: digits 100
epochs, MNIST-1D 150. Shorter training makes the baseline weak: at 30 epochs the
8-channel CNN is 12 points under its accuracy at 200 epochs (0.768 against 0.892) and the
16-wide MLP 3 points (measured on this split), so the extra steps of the joint training
alone would beat the anchors. Anchors train on the training split less a stratified fifth
(`hyper.data.split_validation`), the validation split: no anchor and no stitch trains on
it. The stitched family (`generators.stitch.stitch_family`) holds its pairs at every cut
the traced computation offers (before each dense layer after the first, or each
convolution after the first and the dense head: four per pair); each stitch is
least-squares initialised on 512 training inputs. Then the whole family trains jointly as
SN-Net does (``StitchedFamily.train(anchors=True)``: each Adam step, lr 1e-3, batch 128,
draws one stitched network per cut and one anchor; the anchors' weights train with the
stitches) for ``steps_per_stitch x stitches`` steps (digits 400 per stitch: 19,200 and
32,000 steps; MNIST-1D 1,000: 24,000 steps; ``--frozen-anchors`` trains the stitches
only). FLOPs per example by
`hyper.compact.count_flops` on each standalone (stitch folded) network. ``anchor_accuracy``
are the anchors as trained (the baseline); ``finetuned_anchor_accuracy`` the same anchors
after the joint training; ``vs_finetuned_anchors`` repeats the gap check against those
(the stitches and the fine-tuned anchors have had the same training).

Networks are chosen on the validation split and reported on the test split. Goals (per
family): at every FLOPs budget F between the cheapest and the dearest anchor, the test
accuracy of the network chosen at F (the most accurate on validation among the family's
networks of at most F FLOPs, its fine-tuned anchors included: `StitchedFamily.choose`) is
at least the linear interpolation (in FLOPs) of the neighbouring original (not fine-tuned)
anchors' test accuracies minus 1 point (``worst_gap`` = max over F of interpolation -
chosen, goal <= 0.01; checked at every network's FLOPs and just below it); and at least 10
operating points: networks of the family (anchors included) in the anchors' FLOPs range
whose test accuracy is at least that interpolation minus 1 point at their own FLOPs,
greedily kept >= 5% apart in FLOPs (``operating_points``). ``frontier_points`` counts the
stricter set the earlier versions of this bench counted: the Pareto frontier (on
validation) kept >= 5% apart. Training cost: the stitch training's wall time and examples
against one anchor's zoo build (the dearest anchor; compilation included in both).

Usage: ``python bench/stitch.py [--quick] [--seed S] [--out FILE]``; writes
``bench/results/stitch.json`` (``--quick``: two anchors per family, 3-5 epochs, 5-20 steps
per stitch, written to ``bench/results/quick/stitch.json``) and prints it as one JSON
line. ``--seed`` draws another validation split, anchor initialisation and stitch
training (``bench/results/stitch_seed1.json``: ``--seed 1``).
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
from generators.stitch import operating_points, pareto, stitch_family  # noqa: E402
from generators.stitch_zoos import FAMILIES, anchors_from_zoos, build_family_zoos  # noqa: E402
from hyper import data as data_lib  # noqa: E402
from hyper.zoo_presets import PRESETS  # noqa: E402

VALIDATION = 0.2
"""Share of each family's training split held out (stratified) to choose networks on: no
anchor and no stitch trains on it."""


SETTINGS = {
    False: {  # key: (family, widths, epochs, steps per stitch, pairs)
        "digits_mlp": ("digits-mlp", (16, 32, 64, 128), 100, 400, "all"),
        "digits_mlp_8": ("digits-mlp", (8, 16, 32, 64, 128), 100, 400, "all"),
        "mnist1d_cnn": ("mnist1d-cnn", (8, 16, 32), 150, 1000, "all"),
    },
    True: {  # --quick: two anchors per family, smoke sizes, nothing to conclude
        "digits_mlp": ("digits-mlp", (16, 64), 5, 20, "all"),
        "mnist1d_cnn": ("mnist1d-cnn", (8, 32), 3, 5, "all"),
    },
}
"""Per ``--quick``: the families the bench runs."""

GOALS = {
    f"{fam}_{what}": g
    for fam in SETTINGS[False]
    for what, g in (
        ("worst_gap", goal(f"families/{fam}/worst_gap", "<=", 0.01)),
        ("operating_points", goal(f"families/{fam}/operating_points", ">=", 10)),
    )
}


def interpolate(anchors: list[dict[str, Any]], f: float) -> float:
    """Linear interpolation in FLOPs of the `anchors`' (ascending in FLOPs) test accuracies
    at `f` (within their range)."""
    k = max(i for i, a in enumerate(anchors) if a["flops"] <= f)
    a = anchors[k]
    b = anchors[min(k + 1, len(anchors) - 1)]
    t = 0.0 if b["flops"] == a["flops"] else (f - a["flops"]) / (b["flops"] - a["flops"])
    return (1 - t) * a["accuracy"] + t * b["accuracy"]


def gap_check(
    points: list[dict[str, Any]], baseline: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Worst shortfall, over budgets F in the anchors' FLOPs range, of the test accuracy of
    the network chosen at F (the most accurate on the validation split among `points` of at
    most F FLOPs, the cheapest of equals, as `StitchedFamily.choose` does) against the linear
    interpolation of the `baseline` anchors' test accuracies (default: the anchors among
    `points`)."""
    anchors = sorted(baseline or (p for p in points if p["anchor"]), key=lambda p: p["flops"])
    lo, hi = anchors[0]["flops"], anchors[-1]["flops"]
    budgets = sorted(
        {b for p in points for b in (p["flops"], p["flops"] - 1) if lo <= b <= hi} | {lo, hi}
    )
    worst, at = -np.inf, None
    for f in budgets:
        chosen = pareto([p for p in points if p["flops"] <= f])[-1]  # as `choose` picks
        short = interpolate(anchors, f) - chosen["accuracy"]
        if short > worst:
            worst, at = short, f
    return {"worst_gap": round(float(worst), 5), "worst_gap_at_flops": at, "budgets": len(budgets)}


def on_the_line(
    points: list[dict[str, Any]], baseline: list[dict[str, Any]], tolerance: float = 0.01
) -> list[dict[str, Any]]:
    """The networks (anchors included) in the `baseline` anchors' FLOPs range whose test
    accuracy is at least the anchors' interpolation at their own FLOPs minus `tolerance`,
    greedily kept >= 5% apart in FLOPs from the cheapest (`operating_points`): the distinct
    costs the family offers without falling under the anchors' trade-off."""
    anchors = sorted(baseline, key=lambda p: p["flops"])
    lo, hi = anchors[0]["flops"], anchors[-1]["flops"]
    good = [
        p
        for p in points
        if lo <= p["flops"] <= hi and p["accuracy"] >= interpolate(anchors, p["flops"]) - tolerance
    ]
    return operating_points(good, 0.05)


def run_family(
    name: str,
    root: str,
    *,
    widths: tuple[int, ...] | None,
    epochs: int | None,
    steps_per_stitch: int,
    finetune: bool,
    pairs: str,
    progress: bool,
    seed: int = 0,
) -> dict[str, Any]:
    log(f"{name}: training anchors")
    base = data_lib.load(PRESETS[FAMILIES[name]["preset"]].dataset)
    fit, validation = data_lib.split_validation(base, VALIDATION, seed=seed)
    data_lib.register(fit.name, lambda: fit)  # the anchors train without the validation split
    zoos = build_family_zoos(
        root,
        name,
        widths,
        epochs=epochs,
        dataset=fit.name,
        seed=seed,
        overwrite=True,
        progress=progress,
    )
    anchors, dataset = anchors_from_zoos([d for d, _ in zoos])
    ds = data_lib.load(dataset)
    t0 = time.perf_counter()
    family = stitch_family(anchors, ds, pairs=pairs, validation=validation, progress=progress)
    build_s = time.perf_counter() - t0
    init_points = family.points()
    steps = steps_per_stitch * len(family.stitched)
    log(f"{name}: {len(family.candidates)} networks; training stitches for {steps} steps")
    hist = family.train(steps, key=jax.random.key(seed), anchors=finetune, progress=progress)
    points = family.points()
    original = [p for p in init_points if p["anchor"]]  # the baseline: the anchors as given
    front = family.frontier()
    lo = min(a.flops for a in family.anchors)
    hi = max(a.flops for a in family.anchors)
    ops = operating_points([p for p in front if lo <= p["flops"] <= hi], 0.05)
    line = on_the_line(points, original)
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
        "pairs": pairs,
        "validation_examples": len(validation[1]),
        "points": [
            {k: p[k] for k in ("name", "flops", "accuracy", "val_accuracy", "anchor", "layer")}
            for p in points
        ],
        "least_squares_only": gap_check(init_points) | {"frontier_size": len(pareto(init_points))},
        **gap_check(points, original),
        # the same check against the fine-tuned anchors (trained as long as the stitches)
        "vs_finetuned_anchors": gap_check(points),
        "frontier": [
            {"name": p["name"], "flops": p["flops"], "acc": p["accuracy"], "val": p["val_accuracy"]}
            for p in front
        ],
        "frontier_points": len(ops),
        "frontier_point_names": [p["name"] for p in ops],
        "operating_points": len(line),
        "operating_point_names": [p["name"] for p in line],
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 2 minutes")
    parser.add_argument("--out", default=None, help="results file")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the validation split, the anchors' initialisation and the stitch "
        "training (the committed results: 0)",
    )
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
    families = {}
    with tempfile.TemporaryDirectory() as root, stdout_to_stderr():
        for key, (name, widths, epochs, per_stitch, pairs) in SETTINGS[args.quick].items():
            families[key] = run_family(
                name,
                os.path.join(root, key),
                widths=widths,
                epochs=epochs,
                steps_per_stitch=per_stitch,
                finetune=finetune,
                pairs=pairs,
                progress=args.progress,
                seed=args.seed,
            )
            families[key]["steps_per_stitch"] = per_stitch
    result = {
        "machine": mach,
        "families": families,
        "seconds": round(time.time() - t_start, 1),
        "seed": args.seed,
    }
    write_result(
        result, args.out, name="stitch", schema=SCHEMA_VERSION, quick=args.quick, goals=GOALS
    )
    return result


if __name__ == "__main__":
    main()
