"""``weightspace metanet ...`` and ``weightspace prune``: property predictors on zoos, and
(meta-)structured pruning of trained networks into compact ones.

  weightspace metanet train --zoo DIR [--zoo DIR ...] --task accuracy|gap
                            --model gmn|gmn_t|probes|statnn|gbm|flat --out DIR [--epochs N]
                            [--probes K] [--input-norm] [--canonicalize] [--augment K]
                            [--test-fraction F]
                            [--seed S] [--overwrite | --resume]
  weightspace metanet predict --from DIR --zoo DIR2 [--out FILE.jsonl]
  weightspace metanet prune-train --zoo DIR --out DIR [--steps N] [--nets-per-step K]
                            [--r R] [--sparsity L] [--hidden H] [--layers N] [--seed S]
                            [--overwrite] [--quiet]
  weightspace prune --from CKPT|ZOO (--speedup X | --floor F) --out DIR [--metanet DIR]
                    [--member I] [--epoch E] [--dataset NAME] [--importance l2|l1|random]
                    [--prune-steps N] [--finetune-before N] [--finetune-after N] [--lr LR]
                    [--seed S] [--overwrite]

`train` splits the zoos' checkpoints 80/20 by training run, fits the model (``gmn`` the
graph metanet with PNA message passing, ``gmn_t`` the graph transformer, ``probes`` learned
probes, ``statnn`` the StatNN MLP head, ``gbm`` the StatNN gradient-boosted trees; with
``--input-norm`` the graph models standardise their input features per layer with the
training graphs' statistics, with ``--canonicalize`` every network is in canonical scale
and sign, with ``--augment K`` K random symmetric equivalents of each training network
join it; `metanets.predict.fit`), reports Kendall tau and R² on the held-out runs, and
saves the predictor (Orbax) with ``metrics.json`` in `--out`.
Training checkpoints every evaluation in ``--out/checkpoints``; after a crash, the same
command with ``--resume`` continues and ends with the same weights as an uninterrupted run.
`predict` applies a saved predictor to every checkpoint of another zoo and reports tau and
R² against its recorded labels.

`prune-train` fits a MetaPruning metanetwork (`metanets.metaprune.meta_train`) over a zoo of one
architecture and saves it in `--out`. `prune` takes one trained network (member `--member`
of a zoo, or of a population checkpoint such as one `prune` wrote), optionally edits it
with a `prune-train` metanet, fine-tunes, prunes whole hidden units to a FLOPs speed-up
(`--speedup`) or down to a training-accuracy floor (`--floor`), fine-tunes again and writes
the compact network (`hyper.prune.export_pruned`: it loads without the original, with the
pipeline's record, dataset included, in its metadata). Without `--metanet` it is the
group-L2 baseline with the same fine-tune budget.

Registered through the ``weightspace.commands`` entry point; bad input raises WeightspaceError
(the `weightspace` command prints one line and exits with status 2).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from hyper.errors import WeightspaceError

__all__ = ["add_parsers", "zoo_architecture"]

_CLI_MODELS = {
    "gmn": "gmn",
    "gmn_t": "gmn_t",
    "probes": "probes",
    "statnn": "statnn_mlp",
    "gbm": "statnn_gbm",
    "flat": "flat",
}
_GRAPH_CLI_MODELS = ("gmn", "gmn_t")


def add_parsers(subparsers: Any) -> None:
    """Adds ``metanet train``, ``metanet predict``, ``metanet prune-train`` and ``prune`` to
    the `weightspace` parser."""
    m = subparsers.add_parser("metanet", help="graph metanetworks: predict properties of nets")
    sub = m.add_subparsers(
        dest="metanet_command", required=True, metavar="{train,predict,prune-train}"
    )
    t = sub.add_parser("train", help="fit a predictor of a property from weights")
    t.add_argument("--zoo", action="append", required=True, help="zoo directory (repeatable)")
    t.add_argument("--task", choices=("accuracy", "gap"), default="accuracy")
    t.add_argument("--model", choices=sorted(_CLI_MODELS), default="gmn")
    t.add_argument("--out", required=True, help="output directory for the predictor")
    t.add_argument("--epochs", type=int, default=None, help="training epochs (model default)")
    t.add_argument(
        "--probes",
        type=int,
        default=None,
        help="gmn, gmn_t: also read each neuron's response to K fixed probe inputs (default 0)",
    )
    t.add_argument(
        "--input-norm",
        action="store_true",
        help="gmn, gmn_t: standardise node and edge features per layer (training statistics)",
    )
    t.add_argument(
        "--canonicalize",
        action="store_true",
        help="fit and predict on networks in canonical scale and sign (hyper.canonical)",
    )
    t.add_argument(
        "--augment",
        type=int,
        default=0,
        help="K random symmetric equivalents (permutations, rescalings) per training network",
    )
    t.add_argument("--test-fraction", type=float, default=0.2, help="held-out runs (0.2)")
    t.add_argument(
        "--shard",
        action="store_true",
        help="--model gmn or gmn_t: split every graph batch over all local devices (one part each; "
        "predictions match one device bit for bit, training up to float summation order)",
    )
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
    p.add_argument(
        "--shard",
        action="store_true",
        help="a gmn predictor: split every graph batch over all local devices",
    )
    p.set_defaults(run=_predict)
    _add_prune_train(sub)
    _add_prune(subparsers)


def _add_prune_train(sub: Any) -> None:
    t = sub.add_parser("prune-train", help="fit a MetaPruning metanetwork over a zoo")
    t.add_argument("--zoo", required=True, help="zoo directory (one architecture)")
    t.add_argument("--out", required=True, help="output directory for the metanet")
    t.add_argument("--steps", type=int, default=300, help="optimisation steps (300)")
    t.add_argument("--nets-per-step", type=int, default=8, help="zoo networks per step (8)")
    t.add_argument("--r", type=float, default=0.05, help="edit scale r of θ + r·Δθ (0.05)")
    t.add_argument("--sparsity", type=float, default=1.0, help="sparsity weight λ (1.0)")
    t.add_argument(
        "--sparsity-kind",
        choices=("group_l2", "ratio"),
        default="group_l2",
        help="group_l2 (the paper's mean group norm) or ratio (scale-invariant)",
    )
    t.add_argument("--hidden", type=int, default=32, help="metanet state width (32)")
    t.add_argument("--layers", type=int, default=4, help="message-passing rounds (4)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    t.set_defaults(run=_prune_train)


def _add_prune(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "prune", help="structured pruning of a trained network into a compact one"
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        help="a population checkpoint (e.g. one `prune` wrote) or a zoo directory",
    )
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--speedup", type=float, default=None, help="FLOPs speed-up to reach")
    goal.add_argument(
        "--floor", type=float, default=None, help="prune while train accuracy stays >= F"
    )
    p.add_argument("--out", required=True, help="output directory for the compact network")
    p.add_argument("--metanet", default=None, help="a `metanet prune-train` directory")
    p.add_argument("--member", type=int, default=0, help="which network of --from (0)")
    p.add_argument("--epoch", type=int, default=None, help="zoo epoch (default: the last)")
    p.add_argument("--dataset", default=None, help="default: the one --from records")
    p.add_argument("--importance", choices=("l2", "l1", "random"), default="l2")
    p.add_argument("--prune-steps", type=int, default=4, help="pruning rounds (4)")
    p.add_argument("--finetune-before", type=int, default=100, help="Adam steps (100)")
    p.add_argument("--finetune-after", type=int, default=300, help="Adam steps (300)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tune learning rate (1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.set_defaults(run=_prune)


def _check_zoo(path: str) -> str:
    if not os.path.isfile(os.path.join(path, "zoo.json")):
        raise WeightspaceError(f"--zoo {path}: not a zoo directory (no zoo.json)")
    return os.path.abspath(path)


def _train(args: argparse.Namespace) -> int:
    import sys

    from metanets import datasets, predict

    zoos = [_check_zoo(z) for z in args.zoo]
    out = os.path.abspath(args.out)
    if not (args.resume and os.path.isdir(os.path.join(out, "checkpoints"))):
        more = "" if args.resume else " or --resume to continue it"
        _prepare_out(out, args.overwrite, write=args.overwrite, more=more)
    if args.epochs is not None and args.epochs < 1:
        raise WeightspaceError(f"--epochs must be >= 1, got {args.epochs}")
    if args.epochs is not None and args.model == "gbm":
        raise WeightspaceError(
            "--epochs does not apply to --model gbm (boosting stops on validation)"
        )
    if args.probes is not None and (args.model not in _GRAPH_CLI_MODELS or args.probes < 0):
        raise WeightspaceError(
            f"--probes applies to --model gmn or gmn_t and must be >= 0, got {args.probes}"
        )
    if args.augment < 0:
        raise WeightspaceError(f"--augment must be >= 0, got {args.augment}")
    if args.input_norm and args.model not in _GRAPH_CLI_MODELS:
        raise WeightspaceError(f"--input-norm applies to --model gmn or gmn_t, not {args.model}")
    kind = _CLI_MODELS[args.model]
    if args.shard and kind not in _GRAPH_CLI_MODELS:
        raise WeightspaceError(f"--shard applies to --model gmn or gmn_t, not {args.model}")
    ds = datasets.load_zoos(zoos, task=args.task)
    if kind == "flat" and not ds.homogeneous:
        raise WeightspaceError("--model flat needs zoos of one architecture (a homogeneous zoo)")
    train, test = datasets.split_by_run(ds.run, args.test_fraction, args.seed)
    over = {} if args.epochs is None else {"epochs": args.epochs}
    if args.probes is not None:
        over["probes"] = args.probes
    if args.input_norm:
        over["input_norm"] = True
    if args.canonicalize:
        over["canonicalize"] = True
    if args.augment:
        over["augment"] = args.augment
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    # Checkpoints every evaluation: a killed training continues with --resume.
    checkpoints = os.path.join(out, "checkpoints")
    if args.shard:
        from hyper import sharding

        over["mesh"] = sharding.targets_mesh()
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
    from metanets import datasets, metrics, predict

    src = os.path.abspath(args.source)
    if not os.path.isdir(os.path.join(src, "predictor")):
        raise WeightspaceError(
            f"--from {src}: no predictor (run `weightspace metanet train` first)"
        )
    pred = predict.load_predictor(os.path.join(src, "predictor"))
    if args.shard and pred.kind not in _GRAPH_CLI_MODELS:
        raise WeightspaceError(f"--shard applies to a gmn or gmn_t predictor, not {pred.kind}")
    ds = datasets.load_zoos([_check_zoo(args.zoo)], task=pred.config.get("task", "accuracy"))
    mesh = None
    if args.shard:
        from hyper import sharding

        mesh = sharding.targets_mesh()
    y = pred.predict(ds, mesh=mesh)
    tau, r2 = metrics.kendall_tau(y, ds.y), metrics.r2_score(y, ds.y)
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


# ---------------------------------------------------------------------------------------
# MetaPruning: prune-train and prune
# ---------------------------------------------------------------------------------------


def _at_least(flag: str, value: int, low: int) -> None:
    if value < low:
        raise WeightspaceError(f"{flag} must be an int >= {low}, got {value}")


def _finite(flag: str, value: float, *, low: float, strict: bool) -> None:
    import math

    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise WeightspaceError(
            f"{flag} must be a finite number {'>' if strict else '>='} {low:g}, got {value:g}"
        )


def _inside(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies below it."""
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _check_out(out: str, overwrite: bool, **inputs: str | None) -> None:
    """--out must be empty (or --overwrite given) and must not hold an input."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise WeightspaceError(f"--out {out} exists and is not a directory")
    for flag, path in inputs.items():
        if path is not None and _inside(path, out):
            raise WeightspaceError(f"--out {out} holds --{flag} {path}; choose another directory")
    _prepare_out(out, overwrite, write=False)


def _prepare_out(out: str, overwrite: bool, *, write: bool, more: str = "") -> None:
    """`hyper.checkpoint.prepare_dir` for --out, its refusal naming the flags: "--out DIR is
    not empty; pass --overwrite to replace it" (then `more`)."""
    from hyper.checkpoint import CheckpointError, prepare_dir

    try:
        prepare_dir(out, overwrite=overwrite, hint="pass --overwrite", write=write)
    except CheckpointError as e:
        tail = more if "not empty" in str(e) else ""
        raise WeightspaceError(f"--out {e}{tail}") from None


def _arithmetic(fn, *args, **kwargs):
    """`fn`; a divergence (FloatingPointError) becomes a one-line WeightspaceError."""
    try:
        return fn(*args, **kwargs)
    except FloatingPointError as e:
        raise WeightspaceError(str(e)) from None


def _prune_train(args: argparse.Namespace) -> int:
    import sys

    import jax
    import jax.numpy as jnp
    import numpy as np

    from hyper import data
    from hyper import zoo as zoo_lib
    from metanets.metaprune import MetaPruneConfig, meta_train

    for flag, v in (
        ("--steps", args.steps),
        ("--nets-per-step", args.nets_per_step),
        ("--hidden", args.hidden),
        ("--layers", args.layers),
    ):
        _at_least(flag, v, 1)
    _finite("--r", args.r, low=0, strict=True)
    _finite("--sparsity", args.sparsity, low=0, strict=False)
    src = _check_zoo(args.zoo)
    out = os.path.abspath(args.out)
    _check_out(out, args.overwrite, zoo=src)
    z = zoo_lib.load(src)
    target = zoo_architecture(z)
    population = jax.tree.map(lambda *a: jnp.concatenate(a), *[g.params for g in z.groups])
    # Diverged members (non-finite weights) would make every loss non-finite: leave them out.
    finite = np.logical_and.reduce(
        [
            np.isfinite(np.asarray(a)).reshape(a.shape[0], -1).all(1)
            for a in jax.tree.leaves(population)
        ]
    )
    if not finite.any():
        raise WeightspaceError(f"--zoo {src}: every network has non-finite weights (diverged)")
    if not finite.all():
        keep = np.flatnonzero(finite)
        population = jax.tree.map(lambda a: a[keep], population)
        if not args.quiet:
            print(f"leaving out {int((~finite).sum())} diverged network(s)", file=sys.stderr)
    dataset = data.load(z.config["dataset"])
    config = MetaPruneConfig(
        hidden=args.hidden,
        num_layers=args.layers,
        r=args.r,
        sparsity=args.sparsity,
        sparsity_kind=args.sparsity_kind,
        steps=args.steps,
        nets_per_step=args.nets_per_step,
        seed=args.seed,
    )
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    pruner = _arithmetic(meta_train, target, population, dataset, config, log=log)
    pruner.save(out, overwrite=args.overwrite)
    last = pruner.history[-1]
    print(
        f"metaprune {target.name} on {dataset.name} ({int(finite.sum())} networks): step "
        f"{last['step']} loss {last['loss']:.4f} ce {last['ce']:.4f} "
        f"sparsity {last['sparsity']:.4f}"
    )
    print(f"wrote {out}")
    return 0


def zoo_architecture(z: Any) -> Any:
    """The one target of a loaded zoo's groups (`hyper.zoo.load`), as ``prune-train``
    reads it; groups that would need different targets (other leaves or shapes, or another
    activation) are refused. Dropout may differ: the metanet's loss applies the networks
    in evaluation mode.

    Raises:
      WeightspaceError: several architectures, or groups that compute different functions.
    """
    first = z.groups[0]
    for g in z.groups[1:]:
        if g.target.spec_differences(first.target, fields=("shape",)):
            raise WeightspaceError(
                f"--zoo {z.directory} holds several architectures ({first.id}: "
                f"{first.target.name}, {g.id}: {g.target.name}); prune-train needs one"
            )
        if g.target.config_differences(first.target):
            raise WeightspaceError(
                f"--zoo {z.directory}: groups {first.id} ({first.target.name}) and {g.id} "
                f"({g.target.name}) compute different functions; prune-train needs one "
                "architecture (build a zoo with one activation)"
            )
    return first.target


def _load_network(
    src: str, member: int, epoch: int | None
) -> tuple[Any, Any, str | None, str, int | None]:
    """``(target, params, recorded dataset name, description, zoo epoch)`` of one network
    of a zoo directory or a population checkpoint."""
    import jax

    from hyper import zoo as zoo_lib
    from hyper.checkpoint import CheckpointError, load_population

    if os.path.isfile(os.path.join(src, "zoo.json")):
        z = zoo_lib.load(src, epoch=epoch)
        for g in z.groups:
            for i, row in enumerate(g.members):
                if row["member"] == member:
                    params = jax.tree.map(lambda a, i=i: a[i], g.params)
                    where = f"member {member} of zoo {src} (epoch {g.epoch})"
                    return g.target, params, z.config.get("dataset"), where, g.epoch
        ids = sorted(m["member"] for m in z.members)
        raise WeightspaceError(
            f"--member {member}: zoo {src} has members {ids[0]}..{ids[-1]} ({len(ids)})"
        )
    if epoch is not None:
        raise WeightspaceError(f"--epoch applies to zoo directories; {src} holds no zoo.json")
    try:
        target, population, meta = load_population(src)
    except CheckpointError as e:
        raise WeightspaceError(f"--from: {e}") from None
    n = int(jax.tree.leaves(population)[0].shape[0])
    if member >= n:
        raise WeightspaceError(f"--member {member}: {src} holds {n} network(s)")
    params = jax.tree.map(lambda a: a[member], population)
    info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
    name = meta.get("dataset") or info.get("dataset")
    name = name if isinstance(name, str) else None
    return target, params, name, f"network {member} of {src}", None


def _prune(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from hyper import data
    from hyper.checkpoint import CheckpointError
    from hyper.prune import export_pruned, hidden_widths, prune_pipeline
    from metanets.metaprune import load_metapruner

    if args.speedup is not None:
        _finite("--speedup", args.speedup, low=1, strict=False)
    if args.floor is not None and not 0 <= args.floor <= 1:
        raise WeightspaceError(f"--floor must lie in [0, 1], got {args.floor:g}")
    _at_least("--member", args.member, 0)
    _at_least("--prune-steps", args.prune_steps, 1)
    _at_least("--finetune-before", args.finetune_before, 0)
    _at_least("--finetune-after", args.finetune_after, 0)
    _finite("--lr", args.lr, low=0, strict=True)
    src = os.path.abspath(args.source)
    if not os.path.isdir(src):
        what = "not a directory" if os.path.exists(src) else "no such directory"
        raise WeightspaceError(f"--from {src}: {what}")
    mdir = None
    if args.metanet is not None:
        mdir = os.path.abspath(args.metanet)
        if not os.path.isdir(mdir):
            what = "not a directory" if os.path.exists(mdir) else "no such directory"
            raise WeightspaceError(f"--metanet {mdir}: {what}")
    out = os.path.abspath(args.out)
    # Re-pruning a pruned checkpoint in place is allowed (it is read before --out is written);
    # a zoo or a metanet is never replaced.
    is_zoo = os.path.isfile(os.path.join(src, "zoo.json"))
    in_place = not is_zoo and os.path.realpath(out) == os.path.realpath(src)
    _check_out(out, args.overwrite, **{"from": None if in_place else src, "metanet": mdir})

    target, params, recorded, where, epoch = _load_network(src, args.member, args.epoch)
    name = args.dataset or recorded
    if not name:
        raise WeightspaceError(f"--from {src} records no dataset; pass --dataset")
    dataset = data.load(name)
    if target.input_shape is not None and tuple(target.input_shape) != dataset.input_shape:
        raise WeightspaceError(
            f"--dataset {name}: inputs {dataset.input_shape}, but {target.name} takes "
            f"{tuple(target.input_shape)}"
        )
    if not all(bool(np.all(np.isfinite(a))) for a in jax.tree.leaves(params)):
        raise WeightspaceError(f"{where} has non-finite weights (it diverged)")
    metanet = None
    if mdir is not None:
        try:
            metanet = load_metapruner(mdir)
        except CheckpointError as e:
            raise WeightspaceError(f"--metanet: {e}") from None
    widths0 = hidden_widths(target)
    result = _arithmetic(
        prune_pipeline,
        target,
        params,
        dataset,
        speedup=args.speedup,
        accuracy_floor=args.floor,
        edit=None if metanet is None else metanet.edit_for(target),
        importance=args.importance,
        prune_steps=args.prune_steps,
        finetune_before=args.finetune_before,
        finetune_after=args.finetune_after,
        learning_rate=args.lr,
        seed=args.seed,
    )
    result.info.update(dataset=name, source=src, member=args.member, epoch=epoch, metanet_dir=mdir)
    export_pruned(out, result, overwrite=args.overwrite)
    acc, (f0, f1), (n0, n1) = result.acc, result.flops, result.num_params
    steps = ", ".join(f"{k} {acc[k]:.3f}" for k in ("edited", "finetuned", "pruned") if k in acc)
    how = f"{'metanet edit + ' if metanet is not None else ''}{args.importance} importance"
    print(f"pruned {where} on {name} ({how})")
    print(f"accuracy {acc['original']:.3f} -> {acc['final']:.3f} ({steps})")
    print(f"FLOPs {f0:,} -> {f1:,}: {result.speedup:.2f}x speed-up; parameters {n0:,} -> {n1:,}")
    print(f"widths {widths0} -> {result.info['widths']}")
    print(f"wrote {out}")
    return 0
