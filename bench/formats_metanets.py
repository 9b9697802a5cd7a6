"""A zoo through the Small CNN Zoo format and back gives the metanets the same data
(issue 33, "must show"): Kendall's tau of StatNN (trees) and a GMN on the original zoo and
on its Small-CNN-Zoo copy, on the same runs.

1. Build a digits-CNN zoo (preset ``digits-cnn``, `SEEDS` seeds over a reduced grid,
   `EPOCHS` epochs, checkpoints 0, 1, 2 and the last).
2. ``weightspace export --format small-cnn-zoo`` it; read it back with
   `metanets.zoo_formats.load_small_cnn_zoo`; the original with `metanets.datasets.load_zoos`.
3. Put the copy's samples in the original's order (by run and epoch), check labels and
   weights are identical, fit ``statnn_gbm`` and ``gmn`` (`GMN_EPOCHS` epochs) on the
   same training runs of both, and report test tau on the same held-out runs.

Usage::

  python bench/formats_metanets.py [--quick] [--out PATH]

Writes ``bench/results/formats_metanets.json`` and prints it as one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import goal, logger, machine, stdout_to_stderr, write_result  # noqa: E402

SCHEMA_VERSION = 1
SEEDS = 4
EPOCHS = 8
GMN_EPOCHS = 6
log = logger("formats_metanets")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, 2 GMN epochs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    with stdout_to_stderr():
        from hyper import population as pop_ops
        from hyper import zoo
        from hyper.cli import main as cli
        from metanets import datasets, predict
        from metanets.zoo_formats import load_small_cnn_zoo

        seeds, epochs = (1, 2) if args.quick else (SEEDS, EPOCHS)
        gmn_epochs = 2 if args.quick else GMN_EPOCHS
        result = {"machine": machine(), "seeds": seeds, "epochs": epochs}
        with tempfile.TemporaryDirectory() as tmp:
            grid = {"dropout": [0.0], "init_scale": [0.5, 1.0], "weight_decay": [0.0]}
            z = zoo.build(
                f"{tmp}/zoo",
                "digits-cnn",
                grid=grid,
                seeds=seeds,
                epochs=epochs,
                checkpoint_epochs=sorted({0, 1, 2, epochs}),
                progress=False,
            )
            log(f"zoo: {z.num_members} members, {len(z.groups)} groups")
            argv = ["export", "--from", f"{tmp}/zoo", "--format", "small-cnn-zoo"]
            assert cli([*argv, "--out", f"{tmp}/scz", "--quiet"]) == 0
            ours = datasets.load_zoos([f"{tmp}/zoo"])
            copy = load_small_cnn_zoo(f"{tmp}/scz")
            index = {
                (int(r), int(e)): i
                for i, (r, e) in enumerate(zip(copy.run, copy.epoch, strict=True))
            }
            perm = np.asarray(
                [index[(int(r), int(e))] for r, e in zip(ours.run, ours.epoch, strict=True)]
            )

            def flat(ds, i):
                g, m = ds.group[i], ds.member[i]
                return np.asarray(
                    pop_ops.flatten(ds.targets[g], pop_ops.take(ds.populations[g], [m]))
                )

            same = bool(
                np.array_equal(ours.y, copy.y[perm])
                and all(
                    np.array_equal(flat(ours, i), flat(copy, perm[i])) for i in range(len(ours))
                )
            )
            result["samples"] = len(ours)
            result["same_samples"] = same
            result["same_targets"] = [t.config for t in ours.targets] == [
                t.config for t in copy.targets
            ]
            train, test = datasets.split_by_run(ours.run, 0.25, seed=0)
            for kind, overrides in (("statnn_gbm", {}), ("gmn", {"epochs": gmn_epochs})):
                taus = {}
                for name, ds, idx in (("original", ours, None), ("small_cnn_zoo", copy, perm)):
                    tr = train if idx is None else idx[train]
                    te = test if idx is None else idx[test]
                    pred = predict.fit(kind, ds, tr, seed=0, **overrides)
                    taus[name] = round(float(predict.evaluate(pred, ds, te)["tau"]), 6)
                    log(f"{kind} {name}: tau {taus[name]}")
                taus["difference"] = abs(taus["original"] - taus["small_cnn_zoo"])
                result[kind] = taus
    goals = {
        "statnn_gbm tau difference": goal("statnn_gbm/difference", "<=", 0.0),
        "gmn tau difference": goal("gmn/difference", "<=", 1e-6),
    }
    write_result(
        result,
        args.out,
        name="formats_metanets",
        schema=SCHEMA_VERSION,
        quick=args.quick,
        goals=goals,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
