"""The `weightspace` command: one-line errors with exit status 2, and a zoo build that,
killed and resumed, ends with the same metadata and weights as an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from hyper import zoo
from hyper.cli import main
from hyper.errors import WeightspaceError, WeightspaceTypeError

# One group (the structural hyperparameters are fixed), two members: a small, fast zoo.
GRID = {
    "learning_rate": [0.01, 0.03],
    "weight_decay": [0.0],
    "init_scale": [1.0],
    "train_fraction": [1.0],
    "activation": ["relu"],
}
EPOCHS = 8


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("weightspace")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hyper.cli"]


def _env(cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        # Shared by processes that run one after another (JAX writes cache files in place).
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def _zoo_args(grid_file: Path, out: Path) -> list[str]:
    return [
        "zoo",
        "--preset",
        "digits-mlp",
        "--seeds",
        "1",
        "--epochs",
        str(EPOCHS),
        # A checkpoint every epoch leaves a wide window to kill the build in.
        "--checkpoint-epochs",
        ",".join(map(str, range(EPOCHS))),
        "--grid",
        str(grid_file),
        "--out",
        str(out),
    ]


def _committed_steps(group_dir: Path) -> list[int]:
    try:
        return sorted(int(p.name) for p in group_dir.iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Builds one zoo uninterrupted with the console script, then again with
    ``python -m hyper.cli``, killed (SIGKILL) after its first trained checkpoint and resumed
    with --resume. Returns both directories, the reference's stdout and the committed steps
    at the kill."""
    root = tmp_path_factory.mktemp("cli")
    grid_file = root / "grid.json"
    grid_file.write_text(json.dumps(GRID))
    ref_dir, run_dir = root / "ref", root / "run"
    env = _env(root / "jax-cache")  # the later runs compile nothing
    ref = subprocess.run(
        [*_cli(), *_zoo_args(grid_file, ref_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # generous: the machine may be shared
    )
    assert ref.returncode == 0, ref.stderr

    run_cmd = [sys.executable, "-m", "hyper.cli", *_zoo_args(grid_file, run_dir), "--quiet"]
    with open(root / "run.stderr", "w") as err:  # a file: a full pipe would stall the run
        run = subprocess.Popen(run_cmd, env=env, stderr=err)
        deadline = time.monotonic() + 300
        while not [s for s in _committed_steps(run_dir / "groups" / "g0") if s > 0]:
            if run.poll() is not None or time.monotonic() > deadline:
                run.kill()
                pytest.fail(f"no committed step beyond 0 (rc={run.wait()})")
            time.sleep(0.005)
        run.send_signal(signal.SIGKILL)
        run.wait()
    killed_at = _committed_steps(run_dir / "groups" / "g0")
    assert run.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert not json.loads((run_dir / "zoo.json").read_text())["complete"]

    resumed = subprocess.run(
        [*run_cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    return ref_dir, run_dir, ref.stdout, killed_at


def test_killed_build_resumes_to_the_same_zoo(killed_and_resumed):
    ref_dir, run_dir, _, killed_at = killed_and_resumed
    assert killed_at[-1] < EPOCHS  # it really was interrupted
    for name in ("metadata.jsonl", "zoo.json"):
        assert (run_dir / name).read_bytes() == (ref_dir / name).read_bytes(), name
    a, b = zoo.load(run_dir), zoo.load(ref_dir)
    assert a.config["complete"] and len(a.metadata) == 2 * (EPOCHS + 1)
    for ga, gb in zip(a.groups, b.groups, strict=True):
        for x, y in zip(jax.tree.leaves(ga.params), jax.tree.leaves(gb.params), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # No half-written step survives the resumed build.
    assert [p.name for p in (run_dir / "groups" / "g0").iterdir() if "tmp" in p.name] == []


def test_console_script_prints_the_summary(killed_and_resumed):
    ref_dir, _, out, _ = killed_and_resumed
    assert "zoo digits-mlp on digits: 2 networks" in out
    assert "by learning_rate:" in out
    assert f"wrote {ref_dir}" in out


def test_info_prints_the_summary(killed_and_resumed, capsys):
    ref_dir = killed_and_resumed[0]
    assert main(["info", str(ref_dir)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == zoo.summarize(zoo.load(ref_dir))
    assert f"epoch {EPOCHS}" in out and "by learning_rate:" in out
    assert main(["info", str(ref_dir), "--epoch", "1"]) == 0
    assert "epoch 1," in capsys.readouterr().out
    _assert_usage_error(capsys, ["info", str(ref_dir), "--epoch", "99"], "not checkpointed")


def _assert_usage_error(capsys, argv: list[str], match: str) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("weightspace: error: "), lines[0]
    assert match in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.fixture
def grid_files(tmp_path):
    files = {
        "bad_json": "{ not json",
        "not_object": "[0.01, 0.03]",
        "unknown_key": json.dumps({"momentum": [0.9]}),
        "bad_value": json.dumps({"activation": ["swish"]}),
    }
    for name, text in files.items():
        (tmp_path / f"{name}.json").write_text(text)
    return tmp_path


ZOO = ["zoo", "--preset", "digits-mlp", "--out", "{out}"]


@pytest.mark.parametrize(
    "argv, match",
    [
        ([], "command"),
        (["train"], "invalid choice"),
        (["zoo", "--preset", "imagenet-vit", "--out", "{out}"], "--preset"),
        (["zoo", "--preset", "digits-mlp"], "--out"),
        ([*ZOO, "--checkpoint-epochs", "a,b"], "'a,b'"),
        ([*ZOO, "--checkpoint-epochs", ","], "at least one epoch"),
        ([*ZOO, "--epochs", "3", "--checkpoint-epochs", "0,5"], "must lie in [0, 3]"),
        ([*ZOO, "--epochs", "x"], "--epochs"),
        ([*ZOO, "--seeds", "0"], "--seeds"),
        ([*ZOO, "--batch-size", "0"], "batch_size"),
        ([*ZOO, "--format", "xml"], "--format"),
        ([*ZOO, "--overwrite", "--resume"], "not allowed with"),
        ([*ZOO, "--grid", "{dir}/missing.json"], "cannot read"),
        ([*ZOO, "--grid", "{dir}/bad_json.json"], "not valid JSON"),
        ([*ZOO, "--grid", "{dir}/not_object.json"], "JSON object"),
        ([*ZOO, "--grid", "{dir}/unknown_key.json"], "'momentum'"),
        ([*ZOO, "--grid", "{dir}/bad_value.json"], "grid['activation']"),
        (["info", "{dir}"], "zoo description"),
    ],
)
def test_bad_input_is_one_line_and_status_2(capsys, grid_files, argv, match):
    argv = [a.format(dir=grid_files, out=grid_files / "zoo") for a in argv]
    _assert_usage_error(capsys, argv, match)
    assert not (grid_files / "zoo").exists()  # refused before anything was written
    assert jax.device_count() == 8  # main() kept the device count its caller chose


def test_output_directory_problems_are_one_line(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = ["zoo", "--preset", "digits-mlp", "--epochs", "1", "--quiet"]
    _assert_usage_error(capsys, [*argv, "--out", str(afile)], "not a directory")
    _assert_usage_error(capsys, [*argv, "--out", str(afile / "zoo")], "cannot create")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    _assert_usage_error(capsys, [*argv, "--out", str(tmp_path / "other")], "holds no zoo")


def test_console_script_error_end_to_end(tmp_path):
    proc = subprocess.run(
        [*_cli(), "zoo", "--preset", "digits-mlp", "--grid", str(tmp_path / "missing.json")]
        + ["--out", str(tmp_path / "zoo")],
        env=_env(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"weightspace: error: --grid: cannot read {tmp_path / 'missing.json'}: "
        "No such file or directory"
    ]


@pytest.mark.parametrize("error", [KeyError("k"), ValueError("v"), TypeError("t")])
def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path, error):
    """Only `hyper.errors.INPUT_ERRORS` mean bad input; any other exception propagates."""

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(zoo, "load", broken)
    with pytest.raises(type(error)):
        main(["info", str(tmp_path)])


@pytest.mark.parametrize("error", [WeightspaceError("bad value"), WeightspaceTypeError("bad type")])
def test_input_errors_are_one_line_and_status_2(monkeypatch, capsys, tmp_path, error):
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(zoo, "load", refuse)
    _assert_usage_error(capsys, ["info", str(tmp_path)], str(error))
