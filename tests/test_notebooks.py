"""Every notebook (`notebooks/*.py`, jupytext percent format) runs as a script with
`SMOKE=1`, and its paired `.ipynb` holds the same cells."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


def _cells(path: Path) -> list[tuple[str, str]]:
    import jupytext

    nb = jupytext.read(path)
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/*.py found"


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_pair_in_sync(script: Path):
    ipynb = script.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `jupytext --to ipynb {script}`"
    py_cells, nb_cells = _cells(script), _cells(ipynb)
    assert [t for t, _ in py_cells] == [t for t, _ in nb_cells], (
        f"{script.name} and {ipynb.name} have different cells: run `jupytext --sync {script}`"
    )
    for i, (a, b) in enumerate(zip(py_cells, nb_cells, strict=True)):
        assert a == b, f"cell {i} differs between {script.name} and {ipynb.name}"


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> dict[str, dict]:
    """Every notebook run once with `SMOKE=1`, all in one subprocess
    (`tests/notebook_runner.py`: JAX and the package are imported once, and programs that
    several notebooks compile are compiled once)."""
    root = tmp_path_factory.mktemp("notebooks")
    jobs = [
        {
            "script": str(script),
            "out_dir": str(root / script.stem / "out"),
            "cwd": str(root / script.stem),
            "log": str(root / f"{script.stem}.log"),
        }
        for script in NOTEBOOKS
    ]
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {
        **os.environ,
        "SMOKE": "1",
        "JAX_PLATFORMS": "cpu",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("OUT_DIR", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "notebook_runner.py"), str(root / "jobs.json"),
         str(root / "results.json")],
        env=env, capture_output=True, text=True, timeout=600 * len(NOTEBOOKS),
    )  # fmt: skip
    results = json.loads((root / "results.json").read_text()) if proc.returncode == 0 else {}
    for job in jobs:
        log = Path(job["log"])
        results.setdefault(
            job["script"],
            {"ok": False, "error": f"runner exited {proc.returncode}\n{proc.stderr[-4000:]}"},
        )
        results[job["script"]].update(
            out=Path(job["out_dir"]), log=log.read_text() if log.exists() else ""
        )
    return results


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(script: Path, smoke_runs: dict[str, dict]):
    run = smoke_runs[str(script)]
    assert run["ok"], f"{script.name} failed\n--- output\n{run['log'][-4000:]}\n{run['error']}"
    out = run["out"]
    if script.name == "01_quickstart.py":
        assert (out / "accuracy_vs_learning_rate.png").stat().st_size > 0
        assert (out / "zoo" / "zoo.json").exists()
