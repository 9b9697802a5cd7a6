"""mkdocs hook: the benchmarks page and the figures of the guides, from ``bench/results``.

- The summary table of ``docs/benchmarks.md`` (the ``<!-- bench:summary -->`` marker) is
  ``python -m bench summary``'s table, rendered from the committed ``bench/results/*.json``
  by the bench suite's own code; the PNGs that benchmarks write (``bench/results/*.png``)
  join the site beside it.
- ``docs/figures/*.png`` are drawn from the same JSON files before the build reads the docs.
  They are committed (the README shows them on GitHub), and rewritten only when their bytes
  change, so a build leaves the tree clean unless a result changed.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import textwrap
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
FIGURES = ROOT / "docs" / "figures"
MARKER = "<!-- bench:summary -->"
log = logging.getLogger("mkdocs.hooks.benchmarks")


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _bars(ax, groups: list[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ys = [float("nan") if v is None else v for v in values]
        ax.bar(xs, ys, width, label=label)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def plot_metaprune(plt):
    """Mean test accuracy after pruning to 2x and 3x FLOPs, by method."""
    r = _load("metaprune")
    fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
    speedups = ["2x", "3x"]
    series = {m: [r["acc"][m][s]["mean"] for s in speedups] for m in r["acc"]}
    _bars(ax, speedups, series, "test accuracy after fine-tuning")
    lo = min(v for vs in series.values() for v in vs)
    ax.set_ylim(lo - 0.02, 1.0)
    ax.set_title("Pruning a digits CNN (10 held-out nets)", fontsize=10)
    return fig


def plot_metanet_predict(plt):
    """Kendall tau of predicted test accuracy, by model and zoo."""
    tau = _load("metanet_predict")["tau"]
    models = ["gmn", "statnn_mlp", "statnn_gbm", "flat"]
    fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
    _bars(ax, list(tau), {m: [tau[z].get(m) for z in tau] for m in models}, "Kendall τ (test)")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy prediction from weights", fontsize=10)
    return fig


def plot_metanet_splits(plt):
    """Kendall tau (mean and std over seeds) by model on each split of issue 30."""
    splits = _load("metanet_predict").get("splits", {})
    order = [s for s in ("homogeneous", "wild", "unseen", "cross", "transformer") if s in splits]
    models = ["statnn_gbm", "statnn_mlp", "gmn", "gmn_t", "probes", "best_combination"]
    fig, ax = plt.subplots(figsize=(7, 3.2), constrained_layout=True)
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        rows = [splits[s]["summary"].get(m) or {} for s in order]
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(order))]
        ys = [r.get("tau_mean", float("nan")) for r in rows]
        ax.bar(xs, ys, width, yerr=[r.get("tau_std", 0.0) for r in rows], label=m, capsize=2)
    ax.set_xticks(range(len(order)), order)
    ax.set_ylabel("Kendall τ (test, mean ± std)")
    ax.set_ylim(-0.1, 1)
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("Accuracy prediction, 3 seeds per split", fontsize=10)
    return fig


def plot_merge_barrier(plt):
    """Loss barrier between two networks against width, by alignment."""
    barrier = _load("merge")["barrier"]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3), constrained_layout=True)
    for ax, arch in zip(axes, ("mlp", "cnn"), strict=True):
        widths = sorted((w for w in barrier[arch] if w.isdigit()), key=int)
        for how in ("naive", "weight", "activation"):
            ax.plot([int(w) for w in widths], [barrier[arch][w][how] for w in widths], "o-")
        ax.set_xscale("log", base=2)
        ax.set_xticks([int(w) for w in widths], widths)
        ax.minorticks_off()
        ax.set_xlabel(f"{arch.upper()} width")
        ax.set_title(f"{arch.upper()}: loss barrier", fontsize=10)
    axes[0].set_ylabel("barrier (cross-entropy)")
    axes[0].legend(["naive", "weight matching", "activation matching"], fontsize=8)
    return fig


def plot_assembler(plt):
    """Accuracy of assembled models against trained-from-scratch and group-L2 pruning."""
    ds = _load("assembler")["datasets"]
    fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
    keys = {"assembled": "acc_assembled", "from scratch": "acc_scratch", "group-L2": "acc_group_l2"}
    _bars(ax, list(ds), {k: [ds[d][v] for d in ds] for k, v in keys.items()}, "test accuracy")
    ax.set_ylim(0.5, 1.0)
    ax.set_title("Module assembly on held-out class subsets", fontsize=10)
    return fig


def plot_formats(plt):
    """Write and read time of 4,096 digits MLPs, by file format."""
    speed = _load("formats")["speed"]
    fmts = [k for k, v in speed.items() if isinstance(v, dict)]
    fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
    series = {op: [speed[f][op]["seconds"] for f in fmts] for op in ("write", "read")}
    _bars(ax, [textwrap.fill(f, 12) for f in fmts], series, "seconds")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"{speed['nets']:,} digits MLPs, {speed['megabytes']:.0f} MB", fontsize=10)
    return fig


def plot_stitch(plt):
    """Stitched networks' accuracy against FLOPs, beside the anchors (SN-Net)."""
    fams = _load("stitch")["families"]
    fig, axes = plt.subplots(1, len(fams), figsize=(3.5 * len(fams), 3), constrained_layout=True)
    for ax, (name, fam) in zip(axes, fams.items(), strict=True):
        pts = fam["points"]
        acc = fam["anchor_accuracy"]  # the anchors as trained (fine-tuned ones are points)
        anchors = [{"flops": a["flops"], "accuracy": acc[a["name"]]} for a in fam["anchors"]]
        ax.scatter([p["flops"] for p in pts], [p["accuracy"] for p in pts], s=10, c="0.5")
        front = fam["frontier"]
        ax.step([p["flops"] for p in front], [p["acc"] for p in front], where="post", c="C0")
        ax.plot([p["flops"] for p in anchors], [p["accuracy"] for p in anchors], "r*--")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xlabel("FLOPs per example")
        ax.set_title(name.replace("_", " "), fontsize=10)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(
        ["networks", "chosen within budget (on validation)", "anchors as trained"], fontsize=7
    )
    return fig


def plot_pleas(plt):
    """PLeaS accuracy against merged width, beside Re-Basin averaging and the ensemble."""
    res = _load("merge")["pleas"]
    cases = [(d, s) for d in ("digits", "mnist1d") for s in ("independent", "shared_base")]
    fig, axes = plt.subplots(1, len(cases), figsize=(9, 2.8), constrained_layout=True)
    for ax, (d, s) in zip(axes, cases, strict=True):
        r = res[d][s]
        widths = sorted(r["pleas"], key=float)
        ax.plot([float(w) for w in widths], [r["pleas"][w]["acc"] for w in widths], "o-")
        ax.axhline(max(r["rebasin"].values()), color="C1", ls="--")
        ax.axhline(r["ensemble"], color="k", ls=":")
        ax.set_title(f"{d}, {s.replace('_', ' ')}", fontsize=9)
        ax.set_xlabel("merged width")
    axes[0].set_ylabel("test accuracy, 10 classes")
    axes[0].legend(["PLeaS", "Re-Basin average", "ensemble"], fontsize=7)
    return fig


def plot_weightgen(plt):
    """The accuracy-novelty plane: generated networks against the training networks and
    the memorization baselines (median test accuracy, median max-IoU to training)."""
    archs = _load("weightgen")["archs"]
    fig, axes = plt.subplots(1, len(archs), figsize=(7, 3), constrained_layout=True)
    for ax, (name, arch) in zip(axes, archs.items(), strict=True):
        table = arch["novelty"]["table"]
        noise = sorted((k for k in table if k.startswith("noise_")), key=lambda k: float(k[6:]))
        ax.plot(
            [table[k]["median_max_iou"] for k in noise],
            [table[k]["median_acc"] for k in noise],
            "o--",
            c="0.5",
            label="noise on training weights",
        )
        marks = {
            "training": "k*",
            "model": "C0o",
            "model_selected": "C3D",
            "average_16": "C1s",
            "gaussian_fit": "C2^",
        }
        temps = sorted(k for k in table if k.startswith("model_t"))
        if temps:  # the model's own curve over sampling temperatures
            ax.plot(
                [table[k]["median_max_iou"] for k in [*temps, "model"]],
                [table[k]["median_acc"] for k in [*temps, "model"]],
                ":",
                c="C0",
                lw=1,
            )
        for k, m in marks.items():
            if k in table:
                row = table[k]
                ax.plot(row["median_max_iou"], row["median_acc"], m, ms=8, label=k)
        ax.set_xlabel("median max-IoU to training")
        ax.set_title(name.replace("_", " "), fontsize=10)
    axes[0].set_ylabel("median test accuracy")
    axes[0].legend(fontsize=7)
    return fig


PLOTS = {
    "metaprune": plot_metaprune,
    "metanet_predict": plot_metanet_predict,
    "metanet_splits": plot_metanet_splits,
    "merge_barrier": plot_merge_barrier,
    "assembler": plot_assembler,
    "formats": plot_formats,
    "stitch": plot_stitch,
    "pleas": plot_pleas,
    "weightgen": plot_weightgen,
}


def write_figures() -> None:
    """Draw every figure of `PLOTS` into docs/figures/, rewriting a file only when it changed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(exist_ok=True)
    for name, plot in PLOTS.items():
        fig = plot(plt)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
        plt.close(fig)
        path = FIGURES / f"{name}.png"
        if not path.exists() or path.read_bytes() != buf.getvalue():
            path.write_bytes(buf.getvalue())
            log.info(f"wrote {path.relative_to(ROOT)}")


def summary_table() -> str:
    """`python -m bench summary`'s text for bench/results, without its title, its plots
    pointing at ``bench_results/``."""
    sys.path.insert(0, str(ROOT))
    from bench.__main__ import benches, collect, summary

    runs = collect(benches(), RESULTS)
    text = summary(runs, False, RESULTS, sum(r["wall_s"] for r in runs), collected=True)
    text = text.split("\n", 1)[1].replace("## Plots", "### Plots written by the benchmarks")
    for png in RESULTS.glob("*.png"):
        text = text.replace(f"]({png.name})", f"](bench_results/{png.name})")
    return text


def on_pre_build(config):
    write_figures()


def on_files(files, config):
    for png in sorted([*RESULTS.glob("*.png"), *RESULTS.glob("gpu/*.png")]):
        uri = f"bench_results/{png.relative_to(RESULTS).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        return markdown.replace(MARKER, summary_table())
    return markdown
