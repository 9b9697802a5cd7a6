"""`weightspace` commands of the module assembler (plugged in via ``weightspace.commands``).

- ``weightspace supernet --dataset digits --out DIR``: pretrain a supernet and train its
  assembler; DIR then holds ``supernet/`` and ``assembler/``.
- ``weightspace assemble --supernet DIR --classes 0,3,7 --budget 0.25 --out DIR``: one
  compact model for a task and budget, exported as a checkpoint.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from generators import stitch_cli
from hyper.errors import WeightspaceError

__all__ = ["add_parsers"]


def _classes(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,3,7, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("no classes given")
    return out


def add_parsers(sub: Any) -> None:
    from generators import weightgen_cli  # ``weightspace weightgen train|sample``

    weightgen_cli.add_parsers(sub)
    a = sub.add_parser("assemble", help="assemble a compact model for classes and a budget")
    a.add_argument("--supernet", required=True, help="factory or supernet checkpoint directory")
    a.add_argument("--classes", required=True, type=_classes, help="e.g. 0,3,7")
    a.add_argument(
        "--budget", required=True, type=float, help="fraction of the supernet, e.g. 0.25"
    )
    a.add_argument("--kind", choices=("params", "flops"), default=None, help="budget unit")
    a.add_argument("--out", required=True, help="output directory of the compact model")
    a.add_argument("--overwrite", action="store_true")
    a.set_defaults(run=_assemble)
    s = sub.add_parser("supernet", help="pretrain a supernet and train its module assembler")
    s.add_argument("--dataset", required=True, help="data set name (digits, mnist1d)")
    s.add_argument("--out", required=True)
    s.add_argument("--pretrain-steps", type=int, default=3000)
    s.add_argument("--assembler-steps", type=int, default=1500)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(run=_supernet)
    stitch_cli.add_parsers(sub)


def _assemble(args: argparse.Namespace) -> int:
    import time

    from generators.assembler import Scenario
    from generators.factory import export_model, load_factory

    factory = load_factory(args.supernet, kind=args.kind)
    t0 = time.perf_counter()
    model = factory.customize(Scenario(tuple(args.classes), args.budget))
    ms = 1e3 * (time.perf_counter() - t0)
    out = export_model(args.out, model, overwrite=args.overwrite)
    print(
        json.dumps(
            {
                "out": out,
                "classes": list(model.classes),
                "budget": args.budget,
                "fraction": round(model.fraction, 5),
                "cost": model.cost,
                "kind": factory.kind,
                "modules": model.config["modules"],
                "assembler": factory.assembler is not None,
                "ms": round(ms, 1),
            }
        )
    )
    return 0


def _supernet(args: argparse.Namespace) -> int:
    import jax

    from generators.factory import make_factory
    from hyper import data

    if args.pretrain_steps < 1 or args.assembler_steps < 1:
        raise WeightspaceError("--pretrain-steps and --assembler-steps must be >= 1")
    ds = data.load(args.dataset)
    factory, info = make_factory(
        ds,
        jax.random.key(args.seed),
        pretrain_steps=args.pretrain_steps,
        assembler_steps=args.assembler_steps,
    )
    out = factory.save(args.out, overwrite=args.overwrite)
    print(json.dumps({"out": out, **info}))
    return 0
