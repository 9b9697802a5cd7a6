"""Wild park, more training runs: does the graph metanet's lead over StatNN grow with data?

``bench/metanet_predict.py`` fits its wild-park models on 80 % of 48 architectures × 32
runs. Its graph metanet fits those training runs almost perfectly (training loss ~0.01 on
standardised labels) while validation τ stalls: it looks data-limited. This study keeps the
benchmark's test runs *fixed* (the same seed-0 split by run) and adds runs to the training
side only: ``--more K`` adds K runs per architecture, drawn from a second hyperparameter grid
(`MORE_GRID`, values between and beside the park's, initialisation seeds 1, 2, …) so that
no added run repeats a test run's settings. Every model is refit on the larger training set
with the benchmark's configuration (`FULL`, ``FULL["gmn_wild"]``); the 1× row is the
benchmark's own fit, read from ``results/metanet_predict.json`` (fits are deterministic).

Usage::

  python bench/metanet_parksize.py [--more-seeds 1] [--cache DIR] [--out PATH]

Writes ``bench/results/metanet_parksize.json`` and prints it as one JSON line. The added
zoos are cached beside the benchmark's (``<cache>/wild_more``). Not part of ``python -m
bench all``: building 32 more runs per architecture takes ~30 minutes and the graph metanet's
fit ~45 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import goal, machine, write_result  # noqa: E402

# Version 2: provenance (git, schema_version) and goals written by bench.common.write_result.
SCHEMA_VERSION = 2
STUDY_MARGIN = 0.05  # gmn >= best statnn + 0.05 (the benchmark's heterogeneous goal)

from bench.metanet_predict import (  # noqa: E402
    FULL,
    build_zoo,
    build_zoos,
    evaluate_models,
    log,
    stored_wild_run,
)

MODELS = ("statnn_mlp", "statnn_gbm", "gmn")
MORE_GRID: dict[str, list[float]] = {
    # the park's grid is lr {3e-3, 1e-2, 3e-2, 1e-1}, wd {0, 1e-3}, init {0.5, 1}
    "learning_rate": [2e-3, 6e-3, 2e-2, 6e-2],
    "weight_decay": [3e-4, 3e-3],
    "init_scale": [0.7, 1.4],
    "train_fraction": [0.5, 1.0],
    "dropout": [0.0],
}
"""Hyperparameters of the added runs (32 per initialisation seed and architecture)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--more-seeds",
        type=int,
        nargs="+",
        default=[1],
        help="initialisation seeds of the added runs (each adds 32 runs per architecture)",
    )
    p.add_argument(
        "--cache", default=str(Path(tempfile.gettempdir()) / "weightspace-metanet-bench")
    )
    p.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "metanet_parksize.json")
    )
    args = p.parse_args(argv)
    if 0 in args.more_seeds or len(set(args.more_seeds)) != len(args.more_seeds):
        raise SystemExit(
            f"--more-seeds must be distinct and not 0 (the park's), got {args.more_seeds}"
        )
    from hyper import sharding
    from metanets import datasets, predict

    sharding.use_cpu_cores()  # before any JAX computation: one JAX device per core (zoo builds)
    t0 = time.perf_counter()
    cache = Path(args.cache).resolve()
    zoos = build_zoos(FULL, cache)
    more = []
    for i, a in enumerate(zoos["archs"][: FULL["wild_archs"]]):
        more.append(
            build_zoo(
                cache / "wild_more" / f"arch{i:02d}",
                arch=a["arch"],
                grid={**MORE_GRID, "activation": [a["activation"]]},
                seeds=args.more_seeds,
                seed=0,  # the park's data split and batch order
                epochs=FULL["wild_epochs"],
                checkpoint_epochs=FULL["wild_ckpt"],
            )
        )
    build_s = time.perf_counter() - t0
    park = datasets.load_zoos(zoos["wild"])
    ds = datasets.load_zoos(zoos["wild"] + more)
    # The park's samples come first, in the same order and with the same run ids, so the
    # benchmark's seed-0 split selects the same test samples here.
    n_park = len(park)
    if not np.array_equal(ds.run[:n_park], park.run) or not np.array_equal(ds.y[:n_park], park.y):
        raise RuntimeError("the park's samples moved in the combined dataset")
    park_train, test = datasets.split_by_run(park.run, 0.2, seed=0)
    train = np.concatenate([park_train, np.arange(n_park, len(ds))])
    log(f"park {n_park} samples; +{len(ds) - n_park} added; train {len(train)}, test {len(test)}")

    gmn_config = {**predict.DEFAULTS["gmn"], **FULL["gmn_wild"]}
    het = stored_wild_run(gmn_config)
    rows: dict[str, dict[str, Any]] = {}
    if het is not None:
        if het["n_test"] != len(test):
            raise RuntimeError("results/metanet_predict.json holds another split")
        rows["1x"] = {k: {m: het["models"][k][m] for m in ("tau", "r2", "n")} for k in MODELS}
        rows["1x"]["n_train"] = het["n_train"]
    else:
        res, _ = evaluate_models("park 1x", park, list(MODELS), FULL, FULL["gmn_wild"])
        rows["1x"] = {k: {m: v[m] for m in ("tau", "r2", "n")} for k, v in res["models"].items()}
        rows["1x"]["n_train"] = res["n_train"]
    label = f"{1 + len(args.more_seeds)}x"
    res, _ = evaluate_models(
        f"park {label}", ds, list(MODELS), FULL, FULL["gmn_wild"], split=(train, test)
    )
    rows[label] = {k: {m: v[m] for m in ("tau", "r2", "n")} for k, v in res["models"].items()}
    rows[label]["n_train"] = int(len(train))
    fit_seconds = {k: v["fit_seconds"] for k, v in res["models"].items()}
    margins = {
        r: v["gmn"]["tau"] - max(v["statnn_mlp"]["tau"], v["statnn_gbm"]["tau"])
        for r, v in rows.items()
    }
    result = {
        "benchmark": "metanet_parksize",
        "machine": machine(),
        "dataset": "heterogeneous (wild park, bench/metanet_predict.py FULL) + added runs",
        "wild_archs": FULL["wild_archs"],
        "more_grid": MORE_GRID,
        "more_seeds": args.more_seeds,
        "n_park_samples": n_park,
        "n_added_samples": len(ds) - n_park,
        "n_test": int(len(test)),
        "gmn_config": FULL["gmn_wild"],
        "tau_by_training_set": rows,
        "fit_seconds": fit_seconds,
        "build_seconds": build_s,
        "goal": "gmn >= best statnn + 0.05 on the benchmark's test runs",
        "margin_over_best_statnn": margins,
        "goal_met": {r: bool(m >= STUDY_MARGIN) for r, m in margins.items()},
        "seconds": time.perf_counter() - t0,
    }
    goals = {r: goal(f"margin_over_best_statnn/{r}", ">=", STUDY_MARGIN) for r in margins}
    write_result(
        result, args.out, name="metanet_parksize", schema=SCHEMA_VERSION, quick=False, goals=goals
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
