"""Model selection for the graph metanet on the wild park, on validation runs only.

Fits the GMN with each candidate configuration on the *training* runs of the
heterogeneous (wild-park) dataset of ``bench/metanet_predict.py`` (same zoo, same 80/20
split by run); `metanets.predict.fit` holds out 10 % of those training runs as validation.
The candidate with the best validation τ is chosen; only then is it evaluated on the test
runs, so the test split plays no part in the choice. Writes
``bench/results/metanet_select.json`` and prints it as one JSON line.

Usage::

  python bench/metanet_select.py [--cache DIR] [--only NAME ...]

The zoo comes from ``bench/metanet_predict.py``'s cache (built there if missing; that takes
about 25 minutes on 2 cores). Not part of ``python -m bench all``: it is a selection step
run before changing the defaults that benchmark uses. The committed rounds:
``results/metanet_select_round1.json`` (24 architectures; hidden 32 chosen),
``results/metanet_select_round2_noise.json`` (``--only wild noise0.05 noise0.1``) and
``results/metanet_select_round2_pool.json`` (``--only wild pool_pna``; chosen), both on 48;
round 3, over the pna model: ``results/metanet_select_round3_probes.json`` (``--only wild
probes16``: fixed Gaussian probe features, not chosen) and
``results/metanet_select_round3_noise.json`` (``--only wild noise0.05``: weight noise on top
of the pna readout).

Caveat, measured: the validation split (10 % of the training runs, about 370 samples of 123
runs) is noisy. In round 2, pool_pna led on validation by 0.029 τ and trailed the current
model on the test runs by 0.003; noise0.05 tied on validation (+0.0005) and led on test by
0.014.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_result  # noqa: E402

# Version 2: provenance (git, schema_version) and goals written by bench.common.write_result.
SCHEMA_VERSION = 2

from bench.metanet_predict import FULL, build_zoos, log, stored_wild_run  # noqa: E402

CANDIDATES: dict[str, dict[str, Any]] = {
    "wild": {},
    "noise0.05": {"noise": 0.05},
    "noise0.1": {"noise": 0.1},
    "pool_pna": {"pool": "pna"},
    "probes16": {"probes": 16},
}
"""Changes over ``FULL["gmn_wild"]``. Round 1 (``results/metanet_select_round1.json``, on
the 24-architecture park, over ``FULL["gmn"]``) compared the defaults with hidden 32, four
layers and sixty epochs, and chose hidden 32; round 2, on the 48-architecture park, adds
weight-noise augmentation (`metanets.predict.perturb_graphs`) and a readout pooling mean,
max, min and std (``pool="pna"``); round 3, over that pna model, probe features
(`metanets.probes.probe_features`, 16 fixed Gaussian probes) and noise 0.05 again (each entry
is a change over the ``FULL["gmn_wild"]`` of its round)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cache", default=str(Path(tempfile.gettempdir()) / "weightspace-metanet-bench")
    )
    p.add_argument("--only", nargs="*", default=None, help="candidate names to fit")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "metanet_select.json"))
    args = p.parse_args(argv)
    from metanets import datasets, predict

    t0 = time.perf_counter()
    zoos = build_zoos(FULL, Path(args.cache))
    wild = datasets.load_zoos(zoos["wild"])
    train, test = datasets.split_by_run(wild.run, 0.2, seed=0)
    names = args.only or list(CANDIDATES)
    result: dict[str, Any] = {
        "benchmark": "metanet_select",
        "machine": machine(),
        "dataset": "heterogeneous (wild park, bench/metanet_predict.py FULL)",
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "wild_archs": FULL["wild_archs"],
        "selection": "best validation tau (10 % of the training runs); test evaluated after",
        "candidates": {},
    }
    fitted: dict[str, Any] = {}
    ref = _reference_fit({**predict.DEFAULTS["gmn"], **FULL["gmn_wild"]})
    if ref is not None and "wild" in names:
        # FULL["gmn_wild"] itself was fit, on this split, by bench/metanet_predict.py; fits
        # are deterministic, so its validation record stands in for a refit.
        names = [n for n in names if n != "wild"]
        result["candidates"]["wild"] = ref
        fitted["wild"] = None
    for name in names:
        over = {**FULL["gmn_wild"], **CANDIDATES[name]}
        t1 = time.perf_counter()
        pred = predict.fit("gmn", wild, train, log=lambda m, n=name: log(f"{n}: {m}"), **over)
        result["candidates"][name] = {
            "overrides": over,
            "best_val_tau": pred.stats["best_val_tau"],
            "history": pred.history,
            "fit_seconds": time.perf_counter() - t1,
        }
        fitted[name] = pred
        log(f"{name}: best val tau {pred.stats['best_val_tau']:.4f}")
    chosen = max(fitted, key=lambda n: result["candidates"][n]["best_val_tau"])
    result["chosen"] = chosen
    if fitted[chosen] is None:
        result["test"] = {chosen: ref["test"]}
    else:
        result["test"] = {chosen: predict.evaluate(fitted[chosen], wild, test)}
    result["seconds"] = time.perf_counter() - t0
    write_result(result, args.out, name="metanet_select", schema=SCHEMA_VERSION, quick=False)
    return 0


def _reference_fit(config: dict[str, Any]) -> dict[str, Any] | None:
    """The wild-park GMN of ``results/metanet_predict.json`` if it was fit with `config`
    on the current park (else None)."""
    het = stored_wild_run(config)
    if het is None:
        return None
    m = het["models"]["gmn"]
    return {
        "overrides": dict(FULL["gmn_wild"]),
        "best_val_tau": m["stats"]["best_val_tau"],
        "history": m.get("history"),
        "fit_seconds": m["fit_seconds"],
        "from": "results/metanet_predict.json (the same fit)",
        "test": {k: m[k] for k in ("tau", "r2", "n")},
    }


if __name__ == "__main__":
    raise SystemExit(main())
