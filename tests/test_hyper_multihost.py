"""Multi-host: two processes on localhost (CPU collectives over Gloo) train one zoo
population, build (interrupt and resume) one checkpointed zoo into one directory, and
generate one batch of networks, sharded across both; the results equal a single
process's on as many devices, bit for bit. Bad multi-host setups fail before
anything compiles."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hyper import sharding

WORKER = Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _spawn(pid: int, nproc: int, port: int, ndev: int, out: Path, log):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # The suite's compile-speed flags stay (tests/conftest.py); a forced device count would
    # fight the worker's own.
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "force_host_platform_device_count" not in f)
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(pid), str(nproc), str(port), str(ndev), str(out)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("multihost")
    port = _free_port()
    names = ["p0", "p1", "single"]
    logs = [open(d / f"{name}.log", "w") for name in names]  # noqa: SIM115 - closed below
    try:
        procs = [
            _spawn(0, 2, port, 2, d / "multi.npz", logs[0]),
            _spawn(1, 2, port, 2, d / "multi.npz", logs[1]),
            _spawn(0, 1, 0, 4, d / "single.npz", logs[2]),
        ]
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=300))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                    q.wait()
                codes.append("timeout")
    finally:
        for f in logs:
            f.close()
    for name, rc in zip(names, codes, strict=True):
        assert rc == 0, f"{name}: {rc}\n" + (d / f"{name}.log").read_text()[-3000:]
    return [dict(np.load(d / f)) for f in ("multi.0.npz", "multi.1.npz", "single.0.npz")]


def test_two_processes_equal_one_process_exactly(runs):
    multi0, multi1, single = runs
    assert set(single) == set(multi0) == set(multi1)
    assert any(k.startswith("zoo/") for k in single) and any(k.startswith("gen/") for k in single)
    assert all(v.shape[0] == 6 for k, v in single.items() if k.startswith("gen/"))
    assert all(v.shape[0] == 8 for k, v in single.items() if k.startswith("zoo/"))
    for k in single:
        np.testing.assert_array_equal(multi0[k], single[k], err_msg=k)
        np.testing.assert_array_equal(multi1[k], single[k], err_msg=k)
    assert single["test_acc"].shape == (8,) and np.all(single["test_acc"] > 0.1)
    # the zoo built (interrupted, then resumed) by both processes into one directory
    assert any(k.startswith("built/") for k in single)
    assert single["zoo_rows_test_acc"].shape == (4 * 3,)  # 4 members x epochs 0, 1, 2


@pytest.mark.parametrize(
    "args, match",
    [
        (("localhost:1234", 0, 0), "num_processes must be >= 1"),
        (("localhost:1234", 2, 2), r"process_id must lie in \[0, 2\)"),
        (("localhost:1234", 2, -1), r"process_id must lie in \[0, 2\)"),
        (("localhost:1234", "2", 0), "num_processes must be an int"),
        (("localhost", 2, 0), "host:port"),
        ((":99", 2, 0), "host:port"),
    ],
)
def test_bad_multihost_setups_fail_before_joining(args, match):
    with pytest.raises(ValueError, match=match):
        sharding.initialize_multihost(*args)


def test_mismatched_process_counts_fail_on_every_process(tmp_path):
    """Process 0 started for 2 processes, process 1 for 3: both stop with the same clear
    error right after joining, before any work compiles (neither waits for the other)."""
    port = _free_port()
    logs = [open(tmp_path / f"p{i}.log", "w") for i in range(2)]  # noqa: SIM115 - closed below
    try:
        procs = [
            _spawn(0, 2, port, 1, tmp_path / "x.npz", logs[0]),
            _spawn(1, 3, port, 1, tmp_path / "x.npz", logs[1]),
        ]
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for f in logs:
            f.close()
    for i, rc in enumerate(codes):
        text = (tmp_path / f"p{i}.log").read_text()
        assert rc != 0, text[-2000:]
        assert "started with num_processes [2, 3]" in text, text[-2000:]
        assert "Trainer" not in text  # no work started


def test_pad_targets_repeats_the_last_target():
    tree = {"a": np.arange(6.0).reshape(3, 2), "b": np.array([1, 2, 3])}
    padded, n = sharding.pad_targets(tree, 4)
    assert n == 3 and padded["a"].shape == (4, 2)
    np.testing.assert_array_equal(np.asarray(padded["a"][3]), [4.0, 5.0])
    np.testing.assert_array_equal(np.asarray(padded["b"]), [1, 2, 3, 3])
    same, n = sharding.pad_targets(tree, 3)
    assert same is tree and n == 3
    with pytest.raises(ValueError, match="same non-empty leading axis"):
        sharding.pad_targets({"a": np.zeros((3,)), "b": np.zeros((2,))}, 4)
