"""`make demo`: a digits model zoo, then a MIP hypernetwork that writes 256 more networks.

  python -m hyper.hypernets.demo --out demo_out [--seeds 8] [--epochs 10] [--hyper-steps 500]
                       [--generate 256] [--quiet]

The zoo is the ``digits-mlp`` preset (a 64-32-10 MLP on scikit-learn's 8x8 digits) over
its default grid of 48 hyperparameter points (learning rate, weight decay, init scale,
train fraction, activation) times `--seeds` seeds: 384 networks with the defaults, trained
as two vmapped populations (one per activation). The zoo lands in ``OUT/zoo`` (Orbax
checkpoints + ``metadata.jsonl``) and the figure in ``OUT/zoo_summary.png``.

Then a short ``digits-mip`` run (MIP task T1: one hypernet maps γ ∈ [0, 1] to all weights
of a 64-128-128-10 MLP, loss = cross-entropy + γ·1e-3·‖θ‖²; `--hyper-steps` steps of 8
conditions) checkpoints to ``OUT/hypernet``, and the hypernet generates `--generate`
networks for γ evenly spaced in [0, 1] into ``OUT/generated``, a zoo-format directory
(`hyper.zoo.load` reads it). The demo prints their test accuracy (mean, min, max, and at
γ = 0, 0.5, 1) and the slope of log‖θ‖ against log‖γ‖, and draws
``OUT/generated_summary.png``. ``--hyper-steps 0`` skips this part.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hyper import population, sharding
from hyper import zoo as zoo_lib
from hyper.checkpoint import PopulationCheckpointer
from hyper.hypernets import hypernet
from hyper.hypernets import train as hypertrain
from hyper.hypernets.export import export_generated

__all__ = ["main", "plot_generated", "plot_zoo"]

PRESET = "digits-mlp"
CHECKPOINT_EPOCHS = (0, 1, 2, 3, 5, 7, 10)


def _checkpoint_epochs(epochs: int) -> list[int]:
    return sorted({e for e in CHECKPOINT_EPOCHS if e <= epochs} | {epochs})


def plot_zoo(zoo: Any, path: str | os.PathLike) -> str:
    """Draws a 2x2 summary of a zoo to `path` (PNG) and returns the path.

    Panels: the distribution of final test accuracy by activation; final test accuracy
    against learning rate by activation; test accuracy over the checkpointed epochs (median
    and interquartile band); train against test accuracy by learning rate and train fraction.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = zoo.rows()
    epoch = rows[0]["epoch"]
    acts = list(zoo.config["grid"]["activation"])
    colors = dict(zip(acts, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    n_diverged = sum(r["diverged"] for r in rows)

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), constrained_layout=True)
    fig.suptitle(
        f"weightspace demo: {len(rows)} MLPs on digits ({zoo.config['preset']}, "
        f"{len(zoo.config['seeds'])} seeds, {zoo.config['epochs']} epochs, "
        f"{n_diverged} diverged)",
        fontsize=13,
    )

    # (a) distribution of final test accuracy
    ax = axes[0, 0]
    all_acc = np.array([r["test_acc"] for r in rows])
    bins = np.linspace(min(all_acc.min(), 0.9), 1.0, 31) if all_acc.min() > 0.5 else 30
    for a in acts:
        acc = [r["test_acc"] for r in rows if r["activation"] == a]
        ax.hist(acc, bins=bins, alpha=0.6, color=colors[a], label=f"{a} (n={len(acc)})")
    ax.axvline(np.median(all_acc), color="k", ls="--", lw=1, label="median, all")
    ax.set(xlabel=f"test accuracy at epoch {epoch}", ylabel="networks")
    ax.set_title("(a) final test accuracy")
    ax.legend(fontsize=9)

    # (b) test accuracy vs learning rate, one jittered point per network, median line
    ax = axes[0, 1]
    lrs = sorted(zoo.config["grid"]["learning_rate"])
    rng = np.random.default_rng(0)
    offsets = np.linspace(-0.06, 0.06, len(acts)) if len(acts) > 1 else [0.0]
    for a, off in zip(acts, offsets, strict=True):
        med = []
        for lr in lrs:
            acc = np.array(
                [r["test_acc"] for r in rows if r["activation"] == a and r["learning_rate"] == lr]
            )
            x = lr * 10 ** (off + rng.uniform(-0.02, 0.02, len(acc)))
            ax.scatter(x, acc, s=8, alpha=0.35, color=colors[a], lw=0)
            med.append(np.median(acc))
        ax.plot(lrs, med, "o-", color=colors[a], lw=2, label=f"{a}, median")
    ax.set_xscale("log")
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
    ax.minorticks_off()
    ax.set(xlabel="learning rate (Adam)", ylabel=f"test accuracy at epoch {epoch}")
    ax.set_title("(b) test accuracy vs learning rate")
    ax.legend(fontsize=9)

    # (c) learning curves over checkpointed epochs: median and interquartile band
    ax = axes[1, 0]
    epochs = zoo.checkpoint_epochs
    for a in acts:
        q = np.array(
            [
                np.quantile(
                    [r["test_acc"] for r in zoo.rows(e) if r["activation"] == a], [0.25, 0.5, 0.75]
                )
                for e in epochs
            ]
        )
        ax.fill_between(epochs, q[:, 0], q[:, 2], color=colors[a], alpha=0.25, lw=0)
        ax.plot(epochs, q[:, 1], "o-", color=colors[a], lw=2, label=f"{a}: median, IQR band")
    ax.set(xlabel="epoch (checkpointed)", ylabel="test accuracy", ylim=(0, 1.02))
    ax.set_xticks(epochs)
    ax.set_title("(c) test accuracy over training")
    ax.legend(fontsize=9, loc="lower right")

    # (d) generalisation: train vs test accuracy; learning rate dominates, fraction is the marker
    ax = axes[1, 1]
    fracs = sorted(zoo.config["grid"]["train_fraction"])
    markers = dict(zip(fracs, "o^sDv", strict=False))
    lr_colors = dict(zip(lrs, ("tab:purple", "tab:green", "tab:red", "tab:brown"), strict=False))
    for lr in lrs:
        for f in fracs:
            sel = [r for r in rows if r["learning_rate"] == lr and r["train_fraction"] == f]
            ax.scatter(
                [r["train_acc"] for r in sel],
                [r["test_acc"] for r in sel],
                s=14,
                alpha=0.5,
                lw=0,
                marker=markers.get(f, "o"),
                color=lr_colors.get(lr, "tab:gray"),
                label=f"lr {lr:g}, train fraction {f:g}",
            )
    lo = min(min(r["train_acc"] for r in rows), min(r["test_acc"] for r in rows))
    lo = max(0.0, lo - 0.01)
    ax.plot([lo, 1], [lo, 1], color="k", lw=1, ls=":", label="test = train")
    ax.set(xlabel="train accuracy (full train split)", ylabel="test accuracy")
    ax.set_title("(d) train vs test accuracy")
    ax.legend(fontsize=8, loc="upper left")

    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_generated(zoo: Any, path: str | os.PathLike, condition: str = "gamma") -> str:
    """Draws test/train accuracy and ‖θ‖ of a generated zoo against `condition` to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = zoo.rows()
    g = np.array([r[condition] for r in rows])
    order = np.argsort(g)
    group = zoo.groups[0]
    norms = np.linalg.norm(np.asarray(population.flatten(group.target, group.params)), axis=1)
    position = {m["member"]: i for i, m in enumerate(group.members)}
    norms = norms[[position[r["member"]] for r in rows]]  # in the order of the rows
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    fig.suptitle(
        f"{len(rows)} networks generated by one hypernetwork (hypernet step {rows[0]['epoch']})"
    )
    ax = axes[0]
    for key, label in (("test_acc", "test"), ("train_acc", "train")):
        ax.plot(g[order], np.array([r[key] for r in rows])[order], label=label)
    ax.set(xlabel=condition, ylabel="accuracy", title=f"(a) accuracy vs {condition}")
    ax.legend()
    ax = axes[1]
    ax.plot(g[order], norms[order])
    ax.set(xlabel=condition, ylabel="‖θ‖ (all weights)", title=f"(b) weight norm vs {condition}")
    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _hypernet_part(out: str, steps: int, n: int, quiet: bool) -> None:
    """Trains ``digits-mip`` for `steps` steps and generates `n` networks from it."""

    config = hypertrain.resolve_config(
        {**hypertrain.PRESETS["digits-mip"], "steps": steps, "checkpoint_every": steps}
    )
    t0 = time.perf_counter()
    trainer = hypertrain.train_run(
        config, os.path.join(out, "hypernet"), overwrite=True, progress=not quiet
    )
    seconds = time.perf_counter() - t0
    hnet = trainer.hnet
    with PopulationCheckpointer(
        os.path.join(out, "hypernet", "checkpoints"), read_only=True
    ) as ckpt:
        losses = np.asarray(ckpt.restore_meta(steps)["losses"])
    tail = losses[-max(1, steps // 10) :].mean()
    print(
        f"hypernet digits-mip: {steps} steps x {config['conditions_per_step']} conditions in "
        f"{seconds:.1f} s (compilation included); loss {losses[0]:.3f} -> {tail:.3f} "
        f"(mean of the last {max(1, steps // 10)} steps)"
    )

    t0 = time.perf_counter()
    gamma = np.linspace(0.0, 1.0, n, dtype=np.float32)
    gen = export_generated(
        os.path.join(out, "generated"),
        hnet,
        {"gamma": gamma},
        run_config=config,
        step=steps,
        overwrite=True,
    )
    seconds = time.perf_counter() - t0
    rows = gen.rows()
    acc = np.array([r["test_acc"] for r in rows])
    g = np.array([r["gamma"] for r in rows])
    at = []
    for want in (0.0, 0.5, 1.0):
        i = int(np.argmin(np.abs(g - want)))
        at.append(f"{acc[i]:.3f} (gamma {g[i]:.3f})")
    slope = hypernet.norm_slope(hnet, "gamma", np.geomspace(1e-2, 1.0, 64))
    print(
        f"generated {len(rows)} networks for gamma = 0..1 in {seconds:.1f} s: test accuracy "
        f"mean {acc.mean():.3f}  min {acc.min():.3f}  max {acc.max():.3f}"
    )
    print(f"test accuracy at gamma 0 / 0.5 / 1: {' / '.join(at)}")
    print(
        f"slope of log‖θ‖ vs log‖γ‖ (γ in [0.01, 1]): {slope:.3f} "
        "(MIP aims near 0; the default parametrization is near 1)"
    )
    print(f"generated: {gen.directory}")
    print(f"figure: {plot_generated(gen, os.path.join(out, 'generated_summary.png'))}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hyper.hypernets.demo",
        description="Build a small digits MLP zoo, print its summary and draw a figure.",
    )
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--seeds", type=int, default=8, help="seeds per grid point (default 8)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument(
        "--hyper-steps",
        type=int,
        default=500,
        help="digits-mip hypernet training steps (default 500; 0 skips the hypernet part)",
    )
    p.add_argument("--generate", type=int, default=256, help="networks to generate (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the demo; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        print(
            f"hyper.hypernets.demo: error: --seeds and --epochs must be >= 1, got {args.seeds}, "
            f"{args.epochs}",
            file=sys.stderr,
        )
        return 2
    if args.hyper_steps < 0 or args.generate < 1:
        print(
            f"hyper.hypernets.demo: error: --hyper-steps must be >= 0 and --generate >= 1, got "
            f"{args.hyper_steps}, {args.generate}",
            file=sys.stderr,
        )
        return 2

    sharding.use_cpu_cores()  # one device per core, unless a count was chosen already
    import jax

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    zoo = zoo_lib.build(
        os.path.join(out, "zoo"),
        PRESET,
        seeds=args.seeds,
        epochs=args.epochs,
        checkpoint_epochs=_checkpoint_epochs(args.epochs),
        overwrite=True,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - t0
    print(zoo_lib.summarize(zoo))
    print(
        f"built {zoo.num_members} networks in {len(zoo.groups)} vmapped groups on "
        f"{jax.device_count()} {jax.default_backend().upper()} device(s) in {seconds:.1f} s "
        "(compilation included)"
    )
    print(f"zoo: {zoo.directory}")
    fig = plot_zoo(zoo, os.path.join(out, "zoo_summary.png"))
    print(f"figure: {fig}")
    if args.hyper_steps:
        _hypernet_part(out, args.hyper_steps, args.generate, args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
