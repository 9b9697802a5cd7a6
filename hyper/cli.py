"""The `weightspace` command.

  weightspace zoo --preset digits-cnn --seeds 8 --epochs E --checkpoint-epochs 0,1,2,5,10,E
                  --out DIR [--grid FILE.json] [--overwrite | --resume] [--quiet]
  weightspace info DIR [--epoch E]
  weightspace export --from DIR [--member I | --all] [--epoch E]
                     --format safetensors|npz|small-cnn-zoo [--layout torch|flax] --out PATH
                     [--overwrite] [--quiet]
  weightspace import --from PATH --format safetensors|npz|small-cnn-zoo
                     [--target PRESET|JSON] [--layout torch|flax] --out ZOO_DIR
                     [--overwrite] [--quiet]
  weightspace hyper train --config FILE|PRESET --out DIR [--resume | --overwrite] [--quiet]
  weightspace hyper generate --from DIR --conditions FILE|GRID --out DIR [--overwrite]

Other packages add commands through the ``weightspace.commands`` entry-point group (a module
with ``add_parsers(subparsers)``), e.g. ``weightspace metanet ...`` from `metanets`.

Bad input (unknown preset, bad grid file, an output directory holding another zoo, ...:
the errors of `hyper.errors.INPUT_ERRORS`) prints one line on stderr and exits with status 2;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from hyper.errors import INPUT_ERRORS, WeightspaceError

__all__ = ["UsageError", "main"]


class UsageError(WeightspaceError):
    """Bad command-line usage (argparse's complaint), reported like any bad input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UsageError(message)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one epoch")
    return values


def _read_grid(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            grid = json.load(f)
    except OSError as e:
        raise WeightspaceError(f"--grid: cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise WeightspaceError(f"--grid: {path} is not valid JSON: {e}") from None
    if not isinstance(grid, dict):
        raise WeightspaceError(f"--grid: {path} must hold a JSON object of hyperparameter -> list")
    return grid


def _parser() -> argparse.ArgumentParser:
    from hyper.zoo import PRESETS

    p = _Parser(prog="weightspace", description="Neural networks as data.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    z = sub.add_parser("zoo", help="build a model zoo (grid x seeds) with checkpoints")
    z.add_argument("--preset", required=True, choices=sorted(PRESETS))
    z.add_argument("--seeds", type=int, default=8, help="seeds per grid point (default 8)")
    z.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    z.add_argument(
        "--checkpoint-epochs",
        type=_int_list,
        default=None,
        help="comma-separated epochs to save, 0 = initialisation (the last is always saved)",
    )
    z.add_argument("--grid", default=None, help="JSON file: hyperparameter -> list of values")
    z.add_argument("--batch-size", type=int, default=None)
    z.add_argument("--seed", type=int, default=0, help="root seed of the zoo")
    z.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="metadata table")
    z.add_argument("--out", required=True, help="output directory")
    mode = z.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    mode.add_argument("--resume", action="store_true", help="continue an interrupted build")
    z.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    i = sub.add_parser("info", help="summarise a zoo directory")
    i.add_argument("dir")
    i.add_argument("--epoch", type=int, default=None)
    _add_exchange_parsers(sub)
    for plugin in _plugins():
        plugin.add_parsers(sub)
    return p


def _add_exchange_parsers(sub: Any) -> None:
    formats = ("safetensors", "npz", "small-cnn-zoo")  # hyper.exchange.EXPORT_FORMATS
    e = sub.add_parser("export", help="write networks as safetensors, npz or the Small CNN Zoo")
    e.add_argument("--from", dest="source", required=True, help="a zoo or a saved population")
    which = e.add_mutually_exclusive_group()
    which.add_argument("--member", type=int, default=None, help="one member (its zoo id)")
    which.add_argument("--all", action="store_true", help="every member (the default)")
    e.add_argument("--epoch", type=int, default=None, help="a zoo's epoch (default: the last)")
    e.add_argument("--format", required=True, choices=formats)
    e.add_argument("--layout", choices=("torch", "flax"), default="torch")
    e.add_argument("--out", required=True, help="output file or directory")
    e.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    e.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    m = sub.add_parser("import", help="read safetensors, npz or Small CNN Zoo files as a zoo")
    m.add_argument("--from", dest="source", required=True, help="a file or a directory")
    m.add_argument("--format", required=True, choices=formats)
    m.add_argument(
        "--target",
        default=None,
        help="a preset name, 'small-cnn-zoo', or a make_target JSON config (object or file); "
        "default: the file's own",
    )
    m.add_argument("--layout", choices=("torch", "flax"), default=None)
    m.add_argument("--dataset", default=None, help="dataset name stored in zoo.json")
    m.add_argument("--out", required=True, help="the zoo directory to write")
    m.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    m.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def _run_exchange(args: argparse.Namespace) -> int:
    from hyper import exchange
    from hyper.torch_layout import TorchPaddingWarning

    if args.command == "export":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TorchPaddingWarning)
            path = exchange.export(
                args.source,
                args.out,
                format=args.format,
                layout=args.layout,
                member=args.member,
                epoch=args.epoch,
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
        # One line per distinct warning (a population warns once per member).
        for text in dict.fromkeys(str(w.message) for w in caught):
            print(f"weightspace: warning: {text}", file=sys.stderr)
    else:
        target = exchange.resolve_target(args.target) if args.target else None
        path = exchange.import_weights(
            args.source,
            args.out,
            format=args.format,
            target=target,
            layout=args.layout,
            dataset=args.dataset,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    if not args.quiet:
        print(f"wrote {path}")
    return 0


def _plugins() -> list[Any]:
    """Command modules of the other packages (`hyper.hypernets`, `metanets`, `generators`),
    found through the ``weightspace.commands`` entry-point group so that the core never
    imports them by name.
    Each module has ``add_parsers(subparsers)``, whose parsers ``set_defaults(run=...)``."""
    from importlib.metadata import entry_points

    return [ep.load() for ep in sorted(entry_points(group="weightspace.commands"), key=str)]


def _use_cpu_cores_unless_chosen() -> None:
    """One CPU device per core, unless the caller chose a device count already (a program
    calling `main` in-process, ``JAX_NUM_CPU_DEVICES`` or ``XLA_FLAGS``)."""
    import jax

    from hyper import sharding

    if jax.config.jax_num_cpu_devices >= 0:
        return
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    sharding.use_cpu_cores()  # before any JAX computation


def _run(args: argparse.Namespace) -> int:
    _use_cpu_cores_unless_chosen()
    from hyper import zoo

    if args.command == "zoo":
        grid = _read_grid(args.grid) if args.grid else None
        if args.seeds < 1:
            raise WeightspaceError(f"--seeds must be >= 1, got {args.seeds}")
        z = zoo.build(
            args.out,
            args.preset,
            grid=grid,
            seeds=args.seeds,
            epochs=args.epochs,
            checkpoint_epochs=args.checkpoint_epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            metadata_format=args.format,
            overwrite=args.overwrite,
            resume=args.resume,
            progress=not args.quiet,
        )
        if not args.quiet:
            print(zoo.summarize(z))
            print(f"wrote {z.directory}")
        return 0
    if args.command == "info":
        z = zoo.load(args.dir, epoch=args.epoch)
        print(zoo.summarize(z, args.epoch))
        return 0
    if args.command in ("export", "import"):
        return _run_exchange(args)
    if callable(getattr(args, "run", None)):
        return int(args.run(args))
    raise UsageError(f"unknown command {args.command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `weightspace` console script; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
        return _run(args)
    except INPUT_ERRORS as e:  # bad input only: a bug keeps its traceback
        msg = str(e)
        print(
            f"weightspace: error: {msg.splitlines()[0] if msg else type(e).__name__}",
            file=sys.stderr,
        )
        return 2
    except OSError as e:  # the environment, not the arguments: disk full, permissions, ...
        print(f"weightspace: error: {e}".splitlines()[0], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("weightspace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
