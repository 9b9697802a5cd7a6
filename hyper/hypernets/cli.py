"""The `weightspace hyper` subcommands: train a hypernetwork, generate a zoo from it.

  weightspace hyper train --config FILE|PRESET --out DIR [--resume | --overwrite] [--quiet]
  weightspace hyper generate --from DIR --conditions FILE|GRID --out DIR [--step S]
                             [--overwrite] [--quiet]

`train` runs `hyper.hypernets.train.train_run` (Orbax checkpoints in ``DIR/checkpoints``,
resumable to the same weights). `generate` loads a trained run (its latest checkpoint, or
``--step``), generates one network per condition and writes a zoo-format directory
(`hyper.hypernets.export.export_generated`) that `weightspace info` and `hyper.zoo.load` read.
``--conditions`` is a JSON file ``{name: [values]}`` or a grid ``gamma=0:1:256`` (several
names, comma-separated, take their cross product).

A plugin of `hyper.cli` (the ``weightspace.commands`` entry point ``hyper``). Bad input
raises `ValueError`; `hyper.cli.main` prints it as one line and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from hyper.errors import WeightspaceError

__all__ = ["add_parsers", "run"]


def add_parsers(subparsers: Any) -> None:
    """Adds ``hyper train`` and ``hyper generate`` to the `weightspace` subparsers."""
    from hyper.hypernets.train import PRESETS

    h = subparsers.add_parser("hyper", help="train hypernetworks and generate networks")
    h.set_defaults(run=run)
    sub = h.add_subparsers(dest="hyper_command", required=True, metavar="{train,generate}")

    t = sub.add_parser("train", help="train a hypernetwork (resumable Orbax checkpoints)")
    t.add_argument(
        "--config",
        required=True,
        help=f"a preset ({', '.join(sorted(PRESETS))}) or a JSON run config file",
    )
    t.add_argument("--out", metavar="DIR", required=True, help="run directory")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an interrupted run")
    mode.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    t.add_argument(
        "--shard",
        action="store_true",
        help="split each step's targets over all local devices (conditions_per_step must be "
        "a multiple of their number); results match one device up to float summation order, "
        "or bit for bit when the config sets reduce_groups (a multiple of the device count)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    g = sub.add_parser("generate", help="generate networks as a zoo directory")
    g.add_argument(
        "--from", dest="from_dir", metavar="DIR", required=True, help="a trained run directory"
    )
    g.add_argument(
        "--conditions",
        required=True,
        help="JSON file {name: [values]} or a grid name=lo:hi:n[,name=lo:hi:n]",
    )
    g.add_argument("--out", metavar="DIR", required=True, help="output zoo directory")
    g.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    g.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    g.add_argument("--quiet", action="store_true", help="no summary")


def run(args: argparse.Namespace) -> int:
    """Runs a parsed ``weightspace hyper ...`` command; returns the exit status."""
    if args.hyper_command == "train":
        return _train(args)
    if args.hyper_command == "generate":
        return _generate(args)
    raise WeightspaceError(f"unknown hyper command {args.hyper_command!r}")


def _train(args: argparse.Namespace) -> int:
    from hyper.hypernets.train import NonFiniteLossError, train_run

    mesh = None
    if args.shard:
        from hyper import sharding

        mesh = sharding.targets_mesh()
    try:
        trainer = train_run(
            args.config,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet,
            mesh=mesh,
        )
    except NonFiniteLossError as e:  # a diverged run is reported like bad input
        raise WeightspaceError(str(e)) from None
    if not args.quiet:
        print(f"trained {trainer.step_count} steps; wrote {os.path.abspath(args.out)}")
    return 0


class _DeclaredConditions:
    """A run's condition specs, so ``--conditions`` is checked before any weight is loaded
    (`parse_conditions` only calls ``validate``)."""

    def __init__(self, specs: Any):
        self.specs = specs

    def validate(self, conditions: Any) -> int:
        from hyper.hypernets.conditions import validate

        return validate(self.specs, conditions)


def _generate(args: argparse.Namespace) -> int:
    from hyper import zoo
    from hyper.checkpoint import CheckpointError, PopulationCheckpointer, prepare_dir
    from hyper.hypernets.conditions import from_json
    from hyper.hypernets.export import export_generated
    from hyper.hypernets.train import load_run, parse_conditions

    src, out = os.path.abspath(args.from_dir), os.path.abspath(args.out)
    real = os.path.realpath(src), os.path.realpath(out)
    if os.path.commonpath(real) in real:  # --overwrite would delete the run
        raise WeightspaceError(
            f"--out {out} must lie outside the run directory {src} and not hold it"
        )
    prepare_dir(out, overwrite=args.overwrite, hint="use overwrite", write=False)
    try:
        with open(os.path.join(src, "hypernet.json")) as f:
            specs = from_json(json.load(f)["config"]["conditions"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{src} holds no readable hypernet run: {e}") from None
    conditions = parse_conditions(args.conditions, _DeclaredConditions(specs))

    hnet, config = load_run(src, args.step)
    step = args.step
    if step is None:
        with PopulationCheckpointer(os.path.join(src, "checkpoints"), read_only=True) as ckpt:
            step = ckpt.latest_step()
    z = export_generated(
        out, hnet, conditions, run_config=config, step=step, overwrite=args.overwrite
    )
    if not args.quiet:
        print(zoo.summarize(z))
        print(f"wrote {z.directory}")
    return 0
