"""Runs several notebook scripts in one interpreter (the suite's notebook check).

  python tests/notebook_runner.py JOBS.json RESULTS.json

``JOBS.json``: a list of ``{"script", "out_dir", "cwd", "log"}``. Each script runs with
``runpy`` as ``__main__`` in its own working directory, with ``OUT_DIR`` set and its
stdout and stderr written to ``log``; ``RESULTS.json`` gets ``{script: {"ok", "error"}}``.
One interpreter imports JAX, Flax and the package once for all notebooks and shares its
compiled programs between them, instead of once per notebook.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import sys
import traceback


def run(job: dict[str, str]) -> dict[str, object]:
    os.environ["OUT_DIR"] = job["out_dir"]
    os.makedirs(job["cwd"], exist_ok=True)
    os.chdir(job["cwd"])
    with (
        open(job["log"], "w") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        try:
            runpy.run_path(job["script"], run_name="__main__")
        except SystemExit as e:
            if e.code not in (None, 0):
                return {"ok": False, "error": f"SystemExit({e.code!r})"}
        except BaseException:  # noqa: BLE001 - reported to the test, which fails on it
            return {"ok": False, "error": traceback.format_exc()}
        finally:
            import matplotlib.pyplot as plt

            plt.close("all")
    return {"ok": True, "error": None}


def main(argv: list[str]) -> int:
    jobs_path, results_path = argv
    with open(jobs_path) as f:
        jobs = json.load(f)
    results = {}
    for job in jobs:
        results[job["script"]] = run(job)
        with open(results_path, "w") as f:  # after each notebook: a crash keeps the others
            json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
