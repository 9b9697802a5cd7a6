"""Every notebook (`notebooks/*.py`, jupytext percent format) runs as a script with
`SMOKE=1`, and its paired `.ipynb` holds the same cells."""

from __future__ import annotations

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


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(script: Path, tmp_path: Path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "SMOKE": "1",
        "JAX_PLATFORMS": "cpu",
        "MPLBACKEND": "Agg",
        "OUT_DIR": str(out),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"{script.name} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
        f"--- stderr\n{proc.stderr[-4000:]}"
    )
    if script.name == "01_quickstart.py":
        assert (out / "accuracy_vs_learning_rate.png").stat().st_size > 0
        assert (out / "zoo" / "zoo.json").exists()
