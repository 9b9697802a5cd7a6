"""The coverage matrix of issue 28: hand-written networks x every operation.

Every network of `bench/coverage_nets.py` (Flax NNX, Flax Linen and pure functions, written
the way their authors write them) goes through every operation of `bench/coverage_checks.py`
(spec, population, training, hypernetwork, graphs, structural groups + `remove_units`,
permutation + weight matching, merging, PyTorch-convention export, checkpoints), each
checked numerically. Each cell is OK, ``refused: <reason>``, ``PART: <what>`` (silently
partial), ``WRONG: <what>`` or ``ERR: <exception>``.

Writes ``bench/results/coverage.json`` (goals: no WRONG, no PART, no ERR, the cells the
issue requires OK are OK, no refusal outside the documented ones) and the table
``docs/coverage.md``. ``--quick``: narrower networks, fewer training steps, results under
``bench/results/quick/`` (the table beside them).

Usage::

  python bench/coverage.py [--quick] [--only lenet,vit] [--out FILE] [--strict]

``--strict`` (used by ``.ci/run``) exits with status 1 when a cell is WRONG, PART or ERR,
or a cell the issue requires is not OK (the correctness goals). A refusal that is not
documented as inexpressible is an unmet goal in the results and the table, but does not
fail CI: it is a missing feature, not a wrong result.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script

from bench.common import REPO, goal, logger, machine, write_result  # noqa: E402
from bench.coverage_checks import (  # noqa: E402
    ALLOWED_REFUSALS,
    OPERATIONS,
    REQUIRED_OK,
    Case,
    Sizes,
    run_cell,
    status,
)
from bench.coverage_nets import NETS  # noqa: E402

SCHEMA_VERSION = 1
STATUSES = ("OK", "refused", "PART", "WRONG", "ERR")
DOC = REPO / "docs" / "coverage.md"
log = logger("coverage")

COLUMNS = {
    "spec": "a spec",
    "pop": "b pop",
    "train": "c train",
    "hyper": "d hyper",
    "graph": "e graph",
    "prune": "f prune",
    "align": "g align",
    "merge": "h merge",
    "torch": "i torch",
    "ckpt": "j ckpt",
}
HOW = """\
How each column is checked (`bench/coverage_checks.py`):

- **a spec**: `apply` on the module's own weights equals calling the module (1e-5);
  every kernel is typed `kernel` (a pure function's `w1` too) with its true fan-in
  (attention q/k/v `(in, heads, head_dim)`: `in`); no leaf of role `other` is
  initialised to zero.
- **b pop**: 4 members, finite outputs, different between members and across inputs.
- **c train**: `Trainer`, 2 members, Adam 1e-2, one epoch of a few steps (digits,
  MNIST-1D or digits as tokens): each member's cross-entropy on a fixed batch of
  training examples, in training mode (BatchNorm on batch statistics, dropout on a fixed
  key), drops by more than 0.02 (a stuck network stays at 2.30); before -> after shown.
- **d hyper**: `HyperNet` + `generate` for 4 values of gamma; the generated networks
  apply to finite outputs.
- **e graph**: `population_to_graphs` -> `graphs_to_population` is bit-exact, the
  hidden nodes' activations are known (not all "none"), and a kernel that several layers
  use has weight edges for every use (else the graph drops a layer).
- **f prune**: `structural_groups` (+ `verify_groups`); every hidden kernel's output axis
  is in a group (else PART, or refused where the package says which layer and why);
  `remove_units` keeping half of each group equals the masked original (every group
  entry's slice of the removed units zeroed) within 1e-5.
- **g align**: a random permutation keeps the function; `weight_matching` recovers it
  exactly; aligning one member to another keeps its function.
- **h merge**: `task_arithmetic` over 3 members equals base + lam * sum of task vectors;
  `task_arithmetic` and `ties_merge` give finite outputs.
- **i torch**: `to_torch_state_dict` -> `from_torch_state_dict` is exact, and a forward
  pass written with PyTorch's conventions (NCHW, `x @ W.T`, C-H-W flatten, separate
  q/k/v/out `Linear` attention) in float64 NumPy on the export equals ours within 1e-5.
- **j ckpt**: `save_population` -> `load_population` is exact.
"""
LEGEND = """\
Legend: **OK** (a figure where one says more: loss before -> after, group sizes);
**refused: reason**: a `WeightspaceError`, or the package reporting the layer it leaves
out and why; **PART: what**: runs, but silently covers only part; **WRONG: what**: a
numerical check failed; **ERR: exception**: a crash that is no clear refusal. Cells marked
\\* are required OK by issue 28.
"""


def run_matrix(sizes: Sizes, names: list[str] | None = None) -> tuple[dict, dict]:
    """``({net: {op: cell}}, {net: seconds})`` for the networks named (default all)."""
    matrix: dict[str, dict[str, str]] = {}
    seconds: dict[str, float] = {}
    for net in NETS:
        if names and net.name not in names:
            continue
        t0 = time.perf_counter()
        cases: list[Case] = []
        built = run_cell(lambda net=net, cases=cases: cases.append(Case(net, sizes)) or "OK")
        if not cases:
            matrix[net.name] = {op: f"{built} (building the target)" for op in OPERATIONS}
        else:
            matrix[net.name] = {op: cases[0].cell(op) for op in OPERATIONS}
        seconds[net.name] = round(time.perf_counter() - t0, 1)
        log(
            f"{net.name}: {seconds[net.name]} s",
            {o: status(c) for o, c in matrix[net.name].items()},
        )
    return matrix, seconds


def summarise(matrix: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Counts per status, the required cells and the refusals outside the documented ones."""
    counts = {s: 0 for s in STATUSES}
    for row in matrix.values():
        for cell in row.values():
            counts[status(cell)] += 1
    required = {f"{n}/{op}": matrix[n][op] for n, op in REQUIRED_OK if n in matrix}
    undocumented = {
        f"{n}/{op}": cell
        for n, row in matrix.items()
        for op, cell in row.items()
        if status(cell) == "refused" and op not in ALLOWED_REFUSALS.get(n, ())
    }
    return {
        "counts": counts,
        "required": required,
        "required_not_ok": sum(status(c) != "OK" for c in required.values()),
        "undocumented_refusals": undocumented,
        "undocumented_refusal_count": len(undocumented),
    }


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def markdown(matrix: dict, summary: dict, meta: dict[str, Any]) -> str:
    """The table, its legend, the refusals and how each column is checked."""
    titles = {n.name: n.title for n in NETS}
    required = set(REQUIRED_OK)
    lines = [
        "# Coverage: hand-written networks through every operation",
        "",
        f"Written by `python bench/coverage.py{' --quick' if meta['quick'] else ''}` "
        f"(commit {meta['commit']}, {meta['wall_s']:.0f} s on {meta['cpu']}); the JSON is "
        "`bench/results/coverage.json`. The networks are in `bench/coverage_nets.py`, "
        "written the way their authors write them (issue 28).",
        "",
        "Counts: "
        + ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
        + f"; required cells not OK: {summary['required_not_ok']} of "
        f"{len(summary['required'])}.",
        "",
        LEGEND,
        "| network | " + " | ".join(COLUMNS[o] for o in OPERATIONS) + " |",
        "|---|" + "---|" * len(OPERATIONS),
    ]
    for name, row in matrix.items():
        cells = []
        for op in OPERATIONS:
            cell = row[op]
            short = status(cell) if status(cell) != "OK" else cell
            cells.append(short + ("\\*" if (name, op) in required else ""))
        lines.append(f"| {titles.get(name, name)} (`{name}`) | " + " | ".join(cells) + " |")
    lines += ["", "## Cells that are not OK, in full", ""]
    for name, row in matrix.items():
        for op in OPERATIONS:
            if status(row[op]) != "OK":
                lines.append(f"- `{name}` / {op}: {_escape(row[op])}")
    lines += [
        "",
        "## Documented refusals",
        "",
        "Refusals are allowed only for what cannot be expressed:",
        "",
    ]
    for name, ops in ALLOWED_REFUSALS.items():
        lines.append(
            f"- `{name}` ({titles.get(name, name)}): {', '.join(ops)} may refuse: one weight "
            "used by two layers has no graph with one edge per weight, and its two uses tie "
            "their units; the refusal must name the shared leaf. Never wrong."
        )
    lines += ["", HOW]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="width 4")
    ap.add_argument("--only", default=None, help="comma-separated network names")
    ap.add_argument("--out", default=None, help="results file (default bench/results/...)")
    ap.add_argument("--strict", action="store_true", help="exit with status 1 if a goal is unmet")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    mach = machine()
    sizes = Sizes(width=4, train_steps=100) if args.quick else Sizes()
    names = args.only.split(",") if args.only else None
    matrix, seconds = run_matrix(sizes, names)
    summary = summarise(matrix)
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {
        "machine": mach,
        "sizes": vars(sizes),
        "operations": list(OPERATIONS),
        "matrix": matrix,
        **summary,
        "seconds_per_network": seconds,
        "wall_s": round(wall, 1),
    }
    goals = {
        "counts/WRONG": goal("counts/WRONG", "==", 0),
        "counts/PART": goal("counts/PART", "==", 0),
        "counts/ERR": goal("counts/ERR", "==", 0),
        "required_not_ok": goal("required_not_ok", "==", 0),
        "undocumented_refusal_count": goal("undocumented_refusal_count", "==", 0),
    }
    path = write_result(
        result, args.out, name="coverage", schema=SCHEMA_VERSION, quick=args.quick, goals=goals
    )
    doc = DOC if not args.quick and not args.only and args.out is None else path.with_suffix(".md")
    meta = {
        "quick": args.quick,
        "commit": (result["git"]["commit"] or "?")[:10],
        "wall_s": wall,
        "cpu": f"{mach['cpu_model']} ({mach['cpu_cores']} cores)",
    }
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(markdown(matrix, summary, meta) + "\n")
    log(f"wrote {path} and {doc} in {wall:.0f} s")
    unmet = [
        k
        for k, v in (result["goals_met"] or {}).items()
        if not v and k != "undocumented_refusal_count"
    ]
    if args.strict and unmet:
        log(f"goals not met: {unmet}")
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
