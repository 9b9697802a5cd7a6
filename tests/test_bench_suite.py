"""`python -m bench`: discovery, goal checking (including lower-is-better goals) and the
summary table, on hand-made results (the benchmarks themselves run in `bench/`)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
suite = importlib.import_module("bench.__main__")


def test_discovers_every_benchmark_script_in_order():
    names = suite.benches()
    assert names[:5] == ["scaling", "zoo", "hypernet", "mip", "merge"]
    assert "common" not in names and "__main__" not in names
    # studies that refit the wild park for an hour or more, and the GPU member-chunk sweep
    # (`bench/gpu.sh` with GPU_CHUNKS=1), stay out of `bench all`
    studies = {"metanet_select", "metanet_seeds", "metanet_parksize", "member_chunk"}
    assert not studies & set(names)


def test_goals_are_checked_in_the_right_direction():
    result = {
        "goals": {"no_collapse_ratio": 0.8, "memory_over_state": 2.0, "nested/acc": 0.9},
        "no_collapse_ratio": 0.75,
        "memory_over_state": 1.5,
        "nested": {"acc": 0.95},
    }
    rows = {r[0]: r for r in suite.headline_rows("x", result)}
    assert rows["no_collapse_ratio"][3] == "no"
    assert rows["memory_over_state"][3] == "yes"  # lower is better
    assert rows["nested/acc"][1] == "0.95" and rows["nested/acc"][3] == "yes"


def test_quick_headlines_leave_out_only_absent_parts():
    """A quick run measures less (metaprune: the 3x speed-up only): its absent keys drop out
    of the table, while a key present with no value (a speed-up never reached) stays."""
    acc = {m: {"3x": {"mean": 0.5}} for m in ("metaprune", "group_l2", "random")}
    quick = {"quick": True, "acc": acc, "compact_speedup_measured": None}
    rows = [r[0] for r in suite.headline_rows("metaprune", quick)]
    assert "acc metaprune 3x (first data set)" in rows
    assert not any("2x" in r for r in rows)
    assert "compact_speedup_measured (3x, first data set)" in rows
    full = [r[0] for r in suite.headline_rows("metaprune", {**quick, "quick": False})]
    assert "acc metaprune 2x (first data set)" in full  # shown as missing in a full run


def test_summary_lists_failures_and_plots(tmp_path):
    (tmp_path / "scaling_zoo.png").write_bytes(b"")
    runs = [
        {"name": "zoo", "ok": True, "wall_s": 3.0, "result": {"goals": {"a": 1}, "a": 2}},
        {"name": "merge", "ok": False, "wall_s": 1.0, "status": 1},
    ]
    text = suite.summary(runs, True, tmp_path, 4.0)
    assert "| zoo | 3 | a | 2 | 1 | yes |" in text
    assert "| merge | 1 | FAILED (status 1) |" in text
    assert "![scaling_zoo.png](scaling_zoo.png)" in text


def test_unknown_benchmark_is_a_usage_error():
    out = subprocess.run(
        [sys.executable, "-m", "bench", "nope"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 2 and "unknown benchmark 'nope'" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--only", "zoo,nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "['nope']" in out.stderr


def test_summary_collects_the_latest_results(tmp_path):
    (tmp_path / "zoo.json").write_text('{"goals": {"a": 1}, "a": 2, "wall_s": 7.0}')
    runs = suite.collect(["zoo", "merge"], tmp_path)
    assert runs[0]["ok"] and runs[0]["wall_s"] == 7.0 and not runs[1]["ok"]
    text = suite.summary(runs, False, tmp_path, 7.0, collected=True)
    assert "| zoo | 7 | a | 2 | 1 | yes |" in text and "| merge | 0 | no results |" in text
    assert "collected from the latest result" in text


def test_scaling_children_keep_the_order_and_report_failures():
    """The peak-memory subprocesses of bench/scaling run side by side on CPU: their
    results come back in the order of their arguments, and a failing child is an error."""
    from bench.scaling import _children

    code = "import json, sys; print('noise'); print(json.dumps({'arg': int(sys.argv[1])}))"
    assert [r["arg"] for r in _children(code, [3, 1, 2])] == [3, 1, 2]
    with pytest.raises(RuntimeError, match="child for 2 failed"):  # a non-zero status
        _children(code.replace("print('noise'); ", "assert sys.argv[1] != '2'; "), [1, 2, 3])
    with pytest.raises(RuntimeError, match="child for 1 failed .*no output"):
        _children("pass", [1])


def test_gpu_results_collects_every_result_and_the_steps(tmp_path):
    """`bench/gpu_results.py` (the end of `bench/gpu.sh`): every result in the folder, the
    steps with their exit status, the steps' seconds summed, and whether one ran on a CPU."""
    gpu_results = importlib.import_module("bench.gpu_results")
    out = tmp_path / "gpu"
    out.mkdir()
    (out / "zoo.json").write_text('{"machine": {"backend": "gpu"}, "x": 1}')
    (out / "extra.json").write_text('{"machine": {"backend": "gpu"}}')  # run by hand
    (out / "bad.json").write_text("{")
    (out / "steps.txt").write_text("zoo 0 40\nscaling 124 250\n")
    assert gpu_results.main([str(out)]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert sorted(result["gpu"]) == ["bad", "extra", "zoo"] and result["gpu"]["zoo"]["x"] == 1
    assert "unreadable" in result["gpu"]["bad"]["error"]
    assert result["steps"]["scaling"] == {"rc": 124, "seconds": 250, "timed_out": True}
    assert result["wall_s"] == 290 and result["dry_run_on_cpu"] is False
    (out / "zoo.json").write_text('{"machine": {"backend": "cpu"}}')
    assert gpu_results.collect(out)["dry_run_on_cpu"] is True
