"""``weightspace weightgen ...``: train a generative model of a zoo's weights and sample it.

  weightspace weightgen train --zoo DIR --out DIR [--condition accuracy|task]
                              [--epoch E[,E...]] [--align] [--ae-steps N] [--flow-steps N]
                              [--functional-weight W] [--choose-sampler [--choose-n N]]
                              [--seed S]
                              [--resume | --overwrite] [--quiet]
  weightspace weightgen sample --from DIR --n 1000 [--accuracy 0.9 | --classes 0,3,7]
                               [--sampler default|chosen] [--guidance G] [--temperature T]
                               [--seed S] [--chunk C] --out DIR
                               [--overwrite] [--quiet]

``train`` reads the networks of one target from a zoo (its groups of that target, at the
last checkpointed epoch or the given ones; diverged members left out), the members' test
accuracy from the metadata rows (``--condition accuracy``) or their class subset from the
member key ``"classes"`` (``--condition task``), optionally aligns them to the first one
(``--align``, weight matching: `hyper.align.align_population`), trains with the
autoencoder's functional term on the zoo data set's training inputs (weight
``--functional-weight``, default 1; 0 turns it off: p-diff's squared error alone; see
`generators.weightgen_train`), and writes ``DIR/model``
(the generator) and ``DIR/checkpoints`` (resumable with ``--resume``). With
``--choose-sampler`` it then chooses, on the data set's training examples, the sampler
settings (accuracy prompt, guidance, temperature: `generators.sampler_choice.choose_sampler`)
and, for accuracy prompts, a guidance and its `PromptCalibration`
(`sampler_choice.choose_prompt_guidance`), and stores them with the model. ``sample
--sampler chosen`` uses them: without ``--accuracy`` the chosen settings; with
``--accuracy A`` the prompt that reaches A by the calibration, under its guidance (an
explicit ``--guidance`` or ``--temperature`` wins; the row records the requested accuracy
and the prompt given). ``sample`` writes a
zoo directory that ``hyper.zoo.load`` reads, each network evaluated on the generator's data
set (train/test loss and accuracy in the metadata rows) and its prompt in its member row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from generators import sampler_choice
from generators.weightgen import WeightGen, WeightGenConfig, train, write_generated_zoo
from hyper import data as data_lib
from hyper import population as pop_ops
from hyper import zoo as zoo_lib
from hyper.align import align_population
from hyper.errors import WeightspaceError
from hyper.train import evaluate

__all__ = ["add_parsers", "zoo_training_data"]


def _int_list(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,3,7, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return out


def add_parsers(subparsers: Any) -> None:
    """Adds ``weightgen train`` and ``weightgen sample`` to the `weightspace` parser."""
    w = subparsers.add_parser("weightgen", help="generative models of a zoo's weights")
    sub = w.add_subparsers(dest="weightgen_command", required=True, metavar="{train,sample}")
    t = sub.add_parser("train", help="train a latent flow-matching model of a zoo's weights")
    t.add_argument("--zoo", required=True, help="zoo directory (networks of one target)")
    t.add_argument("--out", required=True, help="output directory (model/ and checkpoints/)")
    t.add_argument("--condition", choices=("accuracy", "task"), default=None)
    t.add_argument(
        "--epoch", type=_int_list, default=None, help="checkpointed epochs to train on (last)"
    )
    t.add_argument(
        "--align",
        action="store_true",
        help="align every network to member 0 by weight matching first (same functions)",
    )
    d = WeightGenConfig()
    t.add_argument("--ae-steps", type=int, default=d.ae_steps)
    t.add_argument("--flow-steps", type=int, default=d.flow_steps)
    t.add_argument("--latent-dim", type=int, default=d.latent_dim)
    t.add_argument(
        "--functional-weight",
        type=float,
        default=1.0,
        help="weight of the autoencoder's functional term on the zoo's training inputs "
        "(0: squared error alone)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--choose-sampler",
        action="store_true",
        help="choose prompt, guidance and temperature on the training examples (accuracy)",
    )
    t.add_argument(
        "--choose-n",
        type=int,
        default=100,
        help="networks sampled per setting tried by --choose-sampler",
    )
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument("--overwrite", action="store_true")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=_train)
    s = sub.add_parser("sample", help="sample networks from a trained generator as a zoo")
    s.add_argument("--from", dest="source", required=True, help="generator (train's --out)")
    s.add_argument("--n", type=int, required=True, help="how many networks")
    c = s.add_mutually_exclusive_group()
    c.add_argument("--accuracy", type=float, default=None, help="prompted test accuracy")
    c.add_argument("--classes", type=_int_list, default=None, help="prompted task, e.g. 0,3,7")
    s.add_argument("--guidance", type=float, default=None, help="classifier-free guidance")
    s.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="initial-noise scale (below 1: closer to the zoo, more accurate, less novel)",
    )
    s.add_argument(
        "--sampler",
        choices=("default", "chosen"),
        default="default",
        help="'chosen': the settings train --choose-sampler stored with the model",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--chunk", type=int, default=256, help="networks per jitted call")
    s.add_argument("--out", required=True, help="output zoo directory")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(run=_sample)


def zoo_training_data(
    directory: str, *, condition: str | None, epochs: list[int] | None = None
) -> tuple[Any, Any, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """The training data of a weight generator from a zoo directory.

    Returns:
      ``(target, population, accuracy [N] or None, classes [N, C] or None, metadata)``:
      the networks of the zoo's one target at `epochs` (default: the last), diverged ones
      (and, for the accuracy condition, those without a test accuracy) left out; test
      accuracies from the metadata rows; multi-hot class subsets from the member key
      ``"classes"``.

    Raises:
      WeightspaceError: groups of several targets, no usable network, members without
        ``classes`` for the task condition.
    """
    config = zoo_lib.read_config(f"{directory}/zoo.json")
    epochs = epochs or [config["checkpoint_epochs"][-1]]
    target, pops, accs, subsets = None, [], [], []
    for e in epochs:
        z = zoo_lib.load(directory, epoch=e)
        rows = {r["member"]: r for r in z.rows(e)}
        for g in z.groups:
            if target is None:
                target = g.target
            elif g.target.config != target.config:
                raise WeightspaceError(
                    f"--zoo {directory}: groups of several targets ({target.config} and "
                    f"{g.target.config}); a weight generator learns one target"
                )
            keep = []
            for i, m in enumerate(g.members):
                r = rows.get(m["member"], {})
                acc = r.get("test_acc", float("nan"))
                if r.get("diverged") or (condition == "accuracy" and not np.isfinite(acc)):
                    continue
                if condition == "task":
                    cls = m.get("classes")
                    if not isinstance(cls, list) or not cls:
                        raise WeightspaceError(
                            f"--condition task: member {m['member']} of {directory} has no "
                            "'classes' list (build the zoo with a 'classes' grid axis)"
                        )
                    subsets.append([int(c) for c in cls])
                keep.append(i)
                accs.append(float(acc))
            if keep:
                pops.append(pop_ops.take(g.params, np.asarray(keep)))
    if not pops:
        raise WeightspaceError(f"--zoo {directory}: no usable network (all diverged or unrated)")
    population = pop_ops.concatenate(pops)
    accuracy = np.asarray(accs) if condition == "accuracy" else None
    classes = None
    if condition == "task":
        try:
            num_classes = data_lib.load(config["dataset"]).num_classes
        except (ValueError, KeyError):
            num_classes = max(max(s) for s in subsets) + 1
        classes = np.zeros((len(subsets), num_classes), np.float32)
        for i, s in enumerate(subsets):
            classes[i, s] = 1.0
    meta = {"zoo": directory, "dataset": config.get("dataset", ""), "epochs": epochs}
    return target, population, accuracy, classes, meta


def _train(args: argparse.Namespace) -> int:
    if args.ae_steps < 0 or args.flow_steps < 0 or args.seed < 0:
        raise WeightspaceError("--ae-steps, --flow-steps and --seed must be >= 0")
    if args.choose_n < 1:
        raise WeightspaceError("--choose-n must be >= 1")
    if args.choose_sampler and args.condition != "accuracy":
        raise WeightspaceError("--choose-sampler needs --condition accuracy")
    zoo_dir = os.path.abspath(args.zoo)
    target, pop, acc, classes, meta = zoo_training_data(
        zoo_dir, condition=args.condition, epochs=args.epoch
    )
    if args.align:
        pop, _ = align_population(target, pop, key=jax.random.key(args.seed))
        meta["aligned_to_member"] = 0
    config = WeightGenConfig(
        condition=args.condition,
        seed=args.seed,
        ae_steps=args.ae_steps,
        flow_steps=args.flow_steps,
        latent_dim=args.latent_dim,
        functional_weight=args.functional_weight,
    )
    data = None  # the zoo's data set: the functional term's inputs, the sampler's examples
    if config.functional_weight > 0:
        if not meta["dataset"]:
            raise WeightspaceError(
                f"{zoo_dir}/zoo.json names no data set, so the functional term has no inputs; "
                "pass --functional-weight 0"
            )
        data = data_lib.load(meta["dataset"])
    t0 = time.perf_counter()
    gen = train(
        target,
        pop,
        config=config,
        accuracy=acc,
        classes=classes,
        inputs=None if data is None else data.x_train,
        out_dir=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        metadata=meta,
    )
    chosen = None
    if args.choose_sampler:
        data = data or data_lib.load(meta["dataset"])
        x, y, key = data.x_train, data.y_train, jax.random.key(args.seed)
        c = sampler_choice.choose_sampler(gen, pop, x, y, key=key, accuracy=acc, n=args.choose_n)
        prompts = np.linspace(*np.quantile(acc, [0.15, 0.85]), 6).tolist()
        g = sampler_choice.choose_prompt_guidance(
            gen, pop, x, y, key=jax.random.fold_in(key, 1), accuracy=acc, prompts=prompts,
            n=args.choose_n, calibrate=True,
        )  # fmt: skip
        chosen = {**c["chosen"], "prompt_guidance": g["guidance"]}
        gen.metadata["sampler"] = {k: c[k] for k in ("chosen", "chosen_row", "examples")}
        gen.metadata["prompts"] = {
            "guidance": g["guidance"],
            "calibration": g["calibration"].to_json(),
            "mean_abs_error_on_selection": min(r["mean_abs_error"] for r in g["rows"]),
        }
        gen.save(os.path.join(args.out, "model"), overwrite=True)
    last = gen.history[-1] if gen.history else {}
    print(
        json.dumps(
            {
                "out": os.path.abspath(args.out),
                "networks": pop_ops.num_targets(pop),
                "params": target.num_params,
                "condition": args.condition,
                "seconds": round(time.perf_counter() - t0, 1),
                "last_loss": last.get("loss"),
                "sampler": chosen,
            }
        )
    )
    return 0


def _sample(args: argparse.Namespace) -> int:
    if args.n < 1 or args.chunk < 1:
        raise WeightspaceError("--n and --chunk must be >= 1")
    gen = WeightGen.load(args.source)
    chosen: dict[str, Any] = {}
    given = None  # the calibrated prompt given for --accuracy
    if args.sampler == "chosen":
        stored = gen.metadata.get("sampler")
        if not stored:
            raise WeightspaceError(
                f"--sampler chosen: {args.source} stores no sampler; train with --choose-sampler"
            )
        chosen = dict(stored["chosen"])
        if args.classes is not None:  # a task prompt replaces the stored accuracy prompt
            chosen.pop("accuracy")
        prompts = gen.metadata.get("prompts")
        if args.accuracy is not None and prompts:  # the calibrated prompt, its guidance
            cal = sampler_choice.PromptCalibration.from_json(prompts["calibration"])
            given = cal(args.accuracy)
            lo, hi = cal.reachable
            if not lo <= args.accuracy <= hi:
                print(
                    f"weightgen sample: accuracy {args.accuracy} is outside what the "
                    f"calibrated prompts reach on the training examples ({lo:.3f}..{hi:.3f}); "
                    f"giving the nearest prompt, {given:.3f}",
                    file=sys.stderr,
                )
            chosen = {"accuracy": given, "guidance": prompts["guidance"], "temperature": 1.0}
    keys = ("accuracy", "guidance", "temperature")
    explicit = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if given is not None:
        explicit.pop("accuracy")  # requested; `given` is what the generator is prompted with
    settings = {"temperature": 1.0, **chosen, **explicit}  # explicit flags win
    pop = gen.sample(
        jax.random.key(args.seed),
        args.n,
        classes=args.classes,
        chunk=args.chunk,
        progress=not args.quiet,
        **settings,
    )
    prompt: dict[str, Any] = {}
    if settings.get("accuracy") is not None:
        prompt["prompt_accuracy"] = settings["accuracy"] if given is None else args.accuracy
    if given is not None:
        prompt["given_prompt"] = given
    if args.classes is not None:
        prompt["prompt_classes"] = sorted(set(args.classes))
    if settings["temperature"] != 1.0:
        prompt["temperature"] = settings["temperature"]
    if settings.get("guidance") is not None:
        prompt["guidance"] = settings["guidance"]
    rows = [dict(prompt) for _ in range(args.n)]
    name = gen.metadata.get("dataset")
    if name in data_lib.available():
        ds = data_lib.load(name)
        splits = {
            "train": (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)),
            "test": (jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)),
        }
        ev = jax.jit(lambda p, x, y: evaluate(gen.target, p, x, y))
        for lo in tqdm(range(0, args.n, args.chunk), disable=args.quiet, desc="evaluate"):
            part = pop_ops.take(pop, np.arange(lo, min(args.n, lo + args.chunk)))
            for split, (x, y) in splits.items():
                m = ev(part, x, y)
                for j, (loss, acc) in enumerate(
                    zip(m["loss"].tolist(), m["acc"].tolist(), strict=True)
                ):
                    rows[lo + j][f"{split}_loss"] = loss
                    rows[lo + j][f"{split}_acc"] = acc
    out = write_generated_zoo(gen, pop, args.out, rows=rows, overwrite=args.overwrite)
    acc = [r["test_acc"] for r in rows if "test_acc" in r]
    print(
        json.dumps(
            {
                "out": out,
                "networks": args.n,
                **prompt,
                "median_test_acc": float(np.median(acc)) if acc else None,
            }
        )
    )
    return 0
