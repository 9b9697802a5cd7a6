"""``weightspace metanet ...``: train and apply property predictors on zoos.

  weightspace metanet train --zoo DIR [--zoo DIR ...] --task accuracy|gap
                            --model gmn|statnn|flat --out DIR [--epochs N]
                            [--test-fraction F] [--seed S] [--overwrite | --resume]
  weightspace metanet predict --from DIR --zoo DIR2 [--out FILE.jsonl]

`train` splits the zoos' checkpoints 80/20 by training run, fits the model (``statnn`` is
the StatNN MLP head), reports Kendall tau and R² on the held-out runs, and saves the
predictor (Orbax) with ``metrics.json`` in `--out`. Training checkpoints every evaluation
in ``--out/checkpoints``; after a crash, the same command with ``--resume`` continues and
ends with the same weights as an uninterrupted run. `predict` applies a saved predictor to
every checkpoint of another zoo and reports tau and R² against its recorded labels.

Registered through the ``weightspace.commands`` entry point; bad input raises ValueError
(the `weightspace` command prints one line and exits with status 2).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

__all__ = ["add_parsers"]

_CLI_MODELS = {"gmn": "gmn", "statnn": "statnn_mlp", "flat": "flat"}


def add_parsers(subparsers: Any) -> None:
    """Adds ``metanet train`` and ``metanet predict`` to the `weightspace` parser."""
    m = subparsers.add_parser("metanet", help="graph metanetworks: predict properties of nets")
    sub = m.add_subparsers(dest="metanet_command", required=True, metavar="{train,predict}")
    t = sub.add_parser("train", help="fit a predictor of a property from weights")
    t.add_argument("--zoo", action="append", required=True, help="zoo directory (repeatable)")
    t.add_argument("--task", choices=("accuracy", "gap"), default="accuracy")
    t.add_argument("--model", choices=sorted(_CLI_MODELS), default="gmn")
    t.add_argument("--out", required=True, help="output directory for the predictor")
    t.add_argument("--epochs", type=int, default=None, help="training epochs (model default)")
    t.add_argument("--test-fraction", type=float, default=0.2, help="held-out runs (0.2)")
    t.add_argument("--seed", type=int, default=0)
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    mode.add_argument(
        "--resume", action="store_true", help="continue an interrupted training in --out"
    )
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    t.set_defaults(run=_train)
    p = sub.add_parser("predict", help="apply a saved predictor to a zoo")
    p.add_argument("--from", dest="source", required=True, help="a `metanet train` directory")
    p.add_argument("--zoo", required=True, help="zoo directory to predict")
    p.add_argument("--out", default=None, help="write per-checkpoint predictions (JSON lines)")
    p.set_defaults(run=_predict)


def _check_zoo(path: str) -> str:
    if not os.path.isfile(os.path.join(path, "zoo.json")):
        raise ValueError(f"--zoo {path}: not a zoo directory (no zoo.json)")
    return os.path.abspath(path)


def _train(args: argparse.Namespace) -> int:
    import sys

    from metanets import predict

    zoos = [_check_zoo(z) for z in args.zoo]
    out = os.path.abspath(args.out)
    if os.path.isdir(out) and os.listdir(out):
        if args.overwrite:
            import shutil

            shutil.rmtree(out)
        elif not (args.resume and os.path.isdir(os.path.join(out, "checkpoints"))):
            raise ValueError(
                f"--out {out} is not empty; pass --overwrite to replace it"
                + ("" if args.resume else " or --resume to continue it")
            )
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    kind = _CLI_MODELS[args.model]
    ds = predict.load_zoos(zoos, task=args.task)
    if kind == "flat" and not ds.homogeneous:
        raise ValueError("--model flat needs zoos of one architecture (a homogeneous zoo)")
    train, test = predict.split_by_run(ds.run, args.test_fraction, args.seed)
    over = {} if args.epochs is None else {"epochs": args.epochs}
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    # Checkpoints every evaluation: a killed training continues with --resume.
    checkpoints = os.path.join(out, "checkpoints")
    pred = predict.fit(kind, ds, train, seed=args.seed, log=log, checkpoint_dir=checkpoints, **over)
    metrics = {
        "model": args.model,
        "task": args.task,
        "zoos": zoos,
        "test": predict.evaluate(pred, ds, test),
        "train": predict.evaluate(pred, ds, train),
    }
    predict.save_predictor(pred, os.path.join(out, "predictor"), overwrite=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    te = metrics["test"]
    print(f"{args.model} {args.task}: test tau {te['tau']:.4f} r2 {te['r2']:.4f} (n={te['n']})")
    print(f"wrote {out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from metanets import predict

    src = os.path.abspath(args.source)
    if not os.path.isdir(os.path.join(src, "predictor")):
        raise ValueError(f"--from {src}: no predictor (run `weightspace metanet train` first)")
    pred = predict.load_predictor(os.path.join(src, "predictor"))
    ds = predict.load_zoos([_check_zoo(args.zoo)], task=pred.config.get("task", "accuracy"))
    y = pred.predict(ds)
    tau, r2 = predict.kendall_tau(y, ds.y), predict.r2_score(y, ds.y)
    if args.out:
        with open(args.out, "w") as f:
            for i in range(len(ds)):
                row = {
                    "run": int(ds.run[i]),
                    "epoch": int(ds.epoch[i]),
                    "label": float(ds.y[i]),
                    "prediction": float(y[i]),
                }
                f.write(json.dumps(row) + "\n")
    print(f"{pred.kind} on {len(ds)} checkpoints: tau {tau:.4f} r2 {r2:.4f}")
    return 0
