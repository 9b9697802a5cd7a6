"""The benchmark suite: ``python -m bench all [--quick]`` or ``python -m bench NAME ...``.

``all`` runs every benchmark script in ``bench/`` (each in its own process, one after
another, never concurrently), collects the JSON line each prints, and writes
``summary.md`` with a table of headline figures against their goals, the machine, each
benchmark's wall time and the plots. Full runs write ``bench/results/``; ``--quick`` runs
write ``bench/results/quick/`` so they never overwrite full results. ``--only a,b`` runs a
subset. A failing benchmark is reported in the summary and makes the exit status 1; the
others still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, RESULTS, goal_margin, logger, lookup, machine  # noqa: E402

log = logger("all")
_NOT_BENCHES = {
    "__init__",
    "__main__",
    "common",
    "coverage_checks",
    "coverage_nets",
    "smoke",
    "gpu_results",
    "migrate_results",
    "metanet_select",
    "metanet_seeds",
    "metanet_parksize",
    "member_chunk",
    "merge_pleas",  # the PLeaS section of bench/merge.py
    "metanet_splits",  # the --split runs of bench/metanet_predict.py
    "formats_torch",  # runs in the peers' environment (PyTorch), after bench/formats.py
    "weightgen_diagnose",  # a diagnosis of bench/weightgen.py's generator; prints only
}
# The order `all` runs them in (others found in bench/ follow, alphabetically).
ORDER = [
    "scaling",
    "zoo",
    "hypernet",
    "mip",
    "merge",
    "metanet_predict",
    "metaprune",
    "prune_speed",
    "assembler",
]
# Headline keys shown beside the goals: (label, key path).
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "mip": [
        (
            "T1 speed-up MIP vs default (Adam, best lr)",
            "claims/T1/speedup_by_optimizer/adam/best_lr/value",
        ),
        ("T1 failed runs default -> MIP", "claims/T1/failed_fraction"),
        ("T2 speed-up (Adam, best lr)", "claims/T2/speedup_by_optimizer/adam/best_lr/value"),
        ("T3 speed-up (Adam, best lr)", "claims/T3/speedup_by_optimizer/adam/best_lr/value"),
    ],
    "metanet_predict": [
        (f"tau {zoo} {model}", f"tau/{zoo}/{model}")
        for zoo in ("homogeneous", "heterogeneous")
        for model in ("gmn", "statnn_mlp", "statnn_gbm", "flat")
    ],
    "assembler": [
        ("acc_assembled (first data set)", "acc_assembled"),
        ("acc_group_l2 (same budgets)", "acc_group_l2"),
    ],
    "merge": [
        *(
            (
                f"{arch} loss barrier at the widest width, {how}",
                f"barrier/{arch.lower()}/*last/{how}",
            )
            for arch in ("MLP", "CNN")
            for how in ("naive", "weight", "activation")
        ),
        ("MLP merged accuracy (TIES)", "merge_acc/mlp/ties/mean"),
        *(
            (f"digits-vit {what}, {how}", f"digits_vit/{key}/{how}")
            for what, key in (("loss barrier", "barrier"), ("fused accuracy", "fused_acc"))
            for how in ("naive", "weight", "activation", "sinkhorn")
        ),
        ("digits-vit parents' accuracy", "digits_vit/parents_acc"),
    ],
    "metaprune": [
        *(
            (f"acc {method} {s} (first data set)", f"acc/{method}/{s}/mean")
            for s in ("2x", "3x")
            for method in ("metaprune", "group_l2", "random")
        ),
        ("compact_speedup_measured (3x, first data set)", "compact_speedup_measured"),
    ],
    "prune_speed": [
        (
            f"compact_speedup_measured {arch} {s} round_to {r}",
            f"compact_speedup_measured/{arch}/{s}/round_to_{r}",
        )
        for arch in ("digits-cnn", "mnist1d-cnn")
        for s in ("2x", "3x")
        for r in (1, 8)
    ],
}


def benches() -> list[str]:
    found = sorted(p.stem for p in (REPO / "bench").glob("*.py") if p.stem not in _NOT_BENCHES)
    return [b for b in ORDER if b in found] + [b for b in found if b not in ORDER]


_ABSENT = object()


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, dict):
        keep = {k: x for k, x in v.items() if isinstance(x, int | float) and "std" not in k}
        return ", ".join(f"{k} {_fmt(x)}" for k, x in list(keep.items())[:4])
    return str(v)


def _signed(v: float) -> str:
    return f"+{_fmt(abs(v))}" if v >= 0 else f"-{_fmt(-v)}"


def headline_rows(name: str, result: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(metric, measured, goal, margin, met) rows for the summary table. Goals are the
    structured ``{"key", "cmp", "threshold"[, "controls"]}`` a benchmark writes; the value
    shown is the worst over the key and its controls, the margin is how far it is past the
    threshold (negative: missed), and "met" is the benchmark's own ``goals_met`` (a quick
    run's is null: "not judged")."""
    rows = []
    goals = result.get("goals") or {}
    met_all = result.get("goals_met")
    for gname, g in goals.items():
        if not isinstance(g, dict) or "key" not in g:
            rows.append((gname, "", _fmt(g), "", "unstructured goal"))
            continue
        value, margin = goal_margin(g, result)
        met = None if met_all is None else met_all.get(gname)
        verdict = "not judged (quick)" if result.get("quick") else "n/a"
        if met is not None:
            verdict = "yes" if met else "no"
        label = gname if gname == g["key"] else f"{gname}: {g['key']}"
        if g.get("controls"):
            label += f" (worst of it and {', '.join(g['controls'])})"
        rows.append(
            (
                label,
                _fmt(value),
                f"{g['cmp']} {_fmt(g['threshold'])}",
                "" if margin is None else _signed(margin),
                verdict,
            )
        )
    for label, path in HEADLINES.get(name, []):
        value = lookup(result, path, _ABSENT)
        if value is _ABSENT and result.get("quick"):  # a part that quick mode leaves out
            continue
        rows.append((label, _fmt(None if value is _ABSENT else value), "", "", ""))
    if not rows:  # some numbers at least
        for key, value in result.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "wall_s":
                rows.append((key, _fmt(value), "", "", ""))
            if len(rows) >= 6:
                break
    return rows


def run_one(name: str, quick: bool, out_dir: Path) -> dict[str, Any]:
    out = out_dir / f"{name}.json"
    cmd = [sys.executable, str(REPO / "bench" / f"{name}.py"), "--out", str(out)]
    if quick:
        cmd.append("--quick")
    log(f"{name}: {' '.join(cmd[1:])}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, timeout=3 * 3600)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    if proc.returncode != 0 or not lines:
        log(f"{name}: FAILED (status {proc.returncode}) after {wall:.0f} s")
        return {"name": name, "ok": False, "wall_s": wall, "status": proc.returncode}
    log(f"{name}: done in {wall:.0f} s")
    return {"name": name, "ok": True, "wall_s": wall, "result": json.loads(lines[-1])}


def summary(
    runs: list[dict[str, Any]], quick: bool, out_dir: Path, total_s: float, collected: bool = False
) -> str:
    from hyper import sharding

    sharding.use_cpu_cores()  # report the devices the benchmarks used
    recorded = [r["result"]["machine"] for r in runs if r["ok"] and "machine" in r["result"]]
    # Collected results describe the machine they ran on (e.g. bench/results/gpu).
    mach = recorded[0] if collected and recorded else machine()
    ran = (
        "`python -m bench summary`: collected from the latest result of each benchmark (each "
        f"ran on its own; wall s from its JSON, {total_s:.0f} s summed)."
        if collected
        else f"`python -m bench all{' --quick' if quick else ''}`: {total_s:.0f} s in all."
    )
    lines = [
        f"# Benchmark summary{' (--quick)' if quick else ''}",
        "",
        f"{ran} Machine: "
        f"{mach['cpu_model']}, {mach['cpu_cores']} cores, {mach['backend']} "
        f"({mach['device_kind']} x{mach['device_count']}), jax {mach['jax']}, load average at "
        f"the end {mach['loadavg_start']} (other jobs share the machine: compare ratios). "
        "Each JSON holds its own machine record.",
        "",
        "| benchmark | wall s | metric | measured | goal | margin | met |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for r in runs:
        if not r["ok"]:
            what = r.get("missing") or f"FAILED (status {r['status']})"
            lines.append(f"| {r['name']} | {r['wall_s']:.0f} | {what} | | | | |")
            continue
        rows = headline_rows(r["name"], r["result"]) or [("(no headline keys)", "", "", "", "")]
        quick_label = " (QUICK)" if r["result"].get("quick") and not quick else ""
        for i, (metric, value, goal, margin, met) in enumerate(rows):
            first = f"{r['name']}{quick_label} | {r['wall_s']:.0f}" if i == 0 else " | "
            lines.append(f"| {first} | {metric} | {value} | {goal} | {margin} | {met} |")
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    if pngs:
        lines += ["", "## Plots", ""]
        lines += [f"![{p}]({p})" for p in pngs]
    return "\n".join(lines) + "\n"


def collect(names: list[str], out_dir: Path, quick: bool = False) -> list[dict[str, Any]]:
    """The latest `<name>.json` of each benchmark in `out_dir`, as `run_one` reports runs.
    A full summary (`quick` False) refuses a quick result: it is listed as refused, never
    read as a full one."""
    runs = []
    for name in names:
        path = out_dir / f"{name}.json"
        if not path.exists():
            runs.append({"name": name, "ok": False, "wall_s": 0.0, "missing": "no results"})
            continue
        result = json.loads(path.read_text())
        if result.get("quick") and not quick:
            what = "REFUSED: a --quick result in a full summary (rerun it at full size)"
            runs.append({"name": name, "ok": False, "wall_s": 0.0, "missing": what})
            continue
        wall = result.get("wall_s") or result.get("seconds") or 0.0
        runs.append({"name": name, "ok": True, "wall_s": float(wall), "result": result})
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument(
        "what",
        nargs="?",
        default="all",
        help="'all', one benchmark's name, or 'summary' (rewrite summary.md from the results)",
    )
    ap.add_argument("--quick", action="store_true", help="every benchmark's --quick mode")
    ap.add_argument("--only", default=None, help="comma-separated subset for 'all' and 'summary'")
    ap.add_argument("--out-dir", default=None, help="default bench/results[/quick]")
    args = ap.parse_args(argv)
    names = benches()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            ap.error(f"--only: unknown benchmarks {unknown}; expected some of {names}")
        names = [n for n in names if n in wanted]
    if args.what == "summary":
        out_dir = (
            Path(args.out_dir) if args.out_dir else (RESULTS / "quick" if args.quick else RESULTS)
        )
        runs = collect(names, out_dir, quick=args.quick or out_dir.resolve() != RESULTS.resolve())
        total = sum(r["wall_s"] for r in runs)
        (out_dir / "summary.md").write_text(summary(runs, args.quick, out_dir, total, True))
        log(f"wrote {out_dir / 'summary.md'} from {sum(r['ok'] for r in runs)} results")
        return 0
    if args.what != "all":
        if args.what not in names:
            ap.error(f"unknown benchmark {args.what!r}; expected 'all' or one of {names}")
        names = [args.what]
    out_dir = Path(args.out_dir) if args.out_dir else (RESULTS / "quick" if args.quick else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = [run_one(n, args.quick, out_dir) for n in names]
    total = time.perf_counter() - t0
    text = summary(runs, args.quick, out_dir, total)
    (out_dir / "summary.md").write_text(text)
    log(f"wrote {out_dir / 'summary.md'} ({total:.0f} s)")
    print(
        json.dumps(
            {
                "summary": str(out_dir / "summary.md"),
                "wall_s": total,
                "ok": {r["name"]: r["ok"] for r in runs},
            }
        )
    )
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
