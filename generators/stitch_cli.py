"""``weightspace stitch``: the best stitched network of a family of zoos for a FLOPs budget.

  weightspace stitch --zoo DIR --zoo DIR [--zoo DIR ...] --budget-flops F --out DIR
                     [--steps N] [--train-anchors] [--pairs all|ascending|nearest]
                     [--validation-fraction V] [--seed S] [--overwrite] [--quiet]

Each ``--zoo`` is one anchor's zoo (one architecture, different widths; the member of
lowest final training loss is the anchor). The stitched family is built and its stitches
trained (`generators.stitch`) on the training split less a held-out validation fraction
(default 0.2; the stitches never see it, the anchors' own training may have); the network
of at most F FLOPs per example most accurate on that validation split is written to
``--out`` as a zoo of one member (loadable with ``weightspace info`` and `hyper.zoo.load`),
and one JSON line describes it and the family's frontier.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from hyper.errors import WeightspaceError

__all__ = ["add_parsers", "write_network_zoo"]


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("stitch", help="stitch a family of zoos (SN-Net); best network per FLOPs")
    p.add_argument("--zoo", action="append", required=True, help="one anchor's zoo (repeat, >= 2)")
    p.add_argument("--budget-flops", required=True, type=_positive_float, help="FLOPs per example")
    p.add_argument("--out", required=True, help="output zoo directory of the chosen network")
    p.add_argument("--steps", type=int, default=None, help="stitch training steps")
    p.add_argument(
        "--train-anchors",
        action="store_true",
        help="fine-tune the anchors with the stitches (SN-Net's joint training)",
    )
    p.add_argument(
        "--pairs",
        choices=("all", "ascending", "nearest"),
        default="all",
        help="anchor pairs to stitch: every ordered pair, cheaper front only, or neighbours",
    )
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=0.2,
        help="share of the training split held out to choose the network on",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_stitch)


def write_network_zoo(
    out: str,
    target: Any,
    params: Any,
    *,
    dataset: str,
    metrics: Mapping[str, float],
    source: Mapping[str, Any],
    overwrite: bool = False,
) -> str:
    """Writes one network as a complete zoo of one member (group ``g0``, epoch 0), through
    the one zoo writer (`hyper.zoo_format.write_zoo`)."""
    import jax
    import numpy as np

    from hyper import zoo_format
    from hyper.population import of_one

    population = jax.tree.map(np.asarray, of_one(params))
    columns = {k: np.asarray([v]) for k, v in metrics.items()}
    per_epoch = {0: (population, columns, np.asarray([False]))}
    return zoo_format.write_zoo(
        out,
        [("g0", target, [{"member": 0}], per_epoch)],
        dataset=dataset,
        source=source,
        overwrite=overwrite,
        preset="stitched",
    )


def _check_zoos(zoos: Sequence[str]) -> None:
    import os

    if len(zoos) < 2:
        raise WeightspaceError(f"--zoo: give at least two zoos (one per anchor), got {len(zoos)}")
    for z in zoos:
        if not os.path.isfile(os.path.join(z, "zoo.json")):
            raise WeightspaceError(f"--zoo {z}: not a zoo directory (no zoo.json)")


def _stitch(args: argparse.Namespace) -> int:
    import jax

    from generators.stitch import stitch_family
    from generators.stitch_zoos import anchors_from_zoos
    from hyper.checkpoint import prepare_dir

    if not 0.0 < args.validation_fraction < 1.0:
        raise WeightspaceError(
            f"--validation-fraction must be in (0, 1), got {args.validation_fraction}"
        )
    _check_zoos(args.zoo)
    if args.steps is not None and args.steps < 0:
        raise WeightspaceError(f"--steps must be >= 0, got {args.steps}")
    prepare_dir(
        args.out, overwrite=args.overwrite, holds="zoo", hint="use --overwrite", write=False
    )
    anchors, dataset = anchors_from_zoos(args.zoo)
    family = stitch_family(
        anchors,
        dataset,
        pairs=args.pairs,
        validation=args.validation_fraction,
        progress=not args.quiet,
    )
    steps = 200 * len(family.stitched) if args.steps is None else args.steps
    family.train(
        steps, key=jax.random.key(args.seed), anchors=args.train_anchors, progress=not args.quiet
    )
    acc = family.evaluate()
    chosen = family.choose(args.budget_flops)
    target, params = family.best(args.budget_flops)
    out = write_network_zoo(
        args.out,
        target,
        params,
        dataset=dataset,
        metrics={"test_acc": chosen["accuracy"], "val_acc": chosen["val_accuracy"]},
        source={
            "stitched": chosen["name"],
            "zoos": list(args.zoo),
            "steps": steps,
            "anchors_trained": args.train_anchors,
            "pairs": args.pairs,
            "validation_fraction": args.validation_fraction,
        },
        overwrite=args.overwrite,
    )
    print(
        json.dumps(
            {
                "out": out,
                "network": chosen["name"],
                "flops": chosen["flops"],
                "test_acc": round(chosen["accuracy"], 4),
                "val_acc": round(chosen["val_accuracy"], 4),
                "budget_flops": args.budget_flops,
                "candidates": len(acc),
                "frontier": [
                    {
                        "name": p["name"],
                        "flops": p["flops"],
                        "acc": round(p["accuracy"], 4),
                        "val_acc": round(p["val_accuracy"], 4),
                    }
                    for p in family.frontier()
                ],
            }
        )
    )
    return 0
