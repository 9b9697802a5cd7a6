"""Weight files (issue 33): export and import speed, round-trip errors per preset, and the
files the PyTorch check (``bench/formats_torch.py``, peers' environment) reads.

1. ``speed``: a population of `NETS` (4,096) digits MLPs (preset ``digits-mlp``, 2,410
   parameters each, random weights) written and read back by each writer, timed
   interleaved (`REPEATS` rounds, the median of each; the load average beside it):
   ``np.savez`` / ``np.load`` of the raw arrays (the baseline: no metadata, no checks),
   our ``.npz`` and stacked safetensors files (``flax`` layout), and the PyTorch layout
   (one safetensors `state_dict` per network). MB/s counts the parameter bytes.
2. ``round_trips``: for every built-in preset, one network (random weights) through every
   format and layout and back: the largest absolute difference (0 means exact).
3. ``torch_check``: one trained network of each of ``digits-mlp``, ``digits-cnn`` and
   ``mnist1d-cnn`` (the presets as they are: symmetric padding), of ``digits-cnn`` as zoos
   built before stored it (``digits-cnn-same``: no ``padding`` key, XLA's 'SAME'), and a
   random ResCNN with BatchNorm, exported in the PyTorch layout to
   ``bench/results/formats_torch/`` with the test splits, our accuracies and our logits
   (and whether the file carries the padding ``warning``); ``bench/formats_torch.py`` loads
   them into plain PyTorch modules and records what PyTorch computes.

Usage::

  python bench/formats.py [--quick] [--out PATH]

Writes ``bench/results/formats.json`` (``--quick``: ``bench/results/quick/``) and prints it
as one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, logger, machine, stdout_to_stderr, write_result  # noqa: E402

SCHEMA_VERSION = 1
NETS = 4096
REPEATS = 3
log = logger("formats")


def _target(name):
    from hyper import data
    from hyper.architectures import make_target
    from hyper.zoo_presets import PRESETS

    p = PRESETS[name]
    shape = data.load(p.dataset).input_shape
    return make_target(**{**p.arch, "input_shape": shape, "activation": p.grid["activation"][0]})


def _random(target, n, seed):
    from hyper import population as pop_ops

    rng = np.random.default_rng(seed)
    lead = () if n is None else (n,)
    flat = {
        s.path: (0.5 * rng.standard_normal(lead + s.shape)).astype(np.float32) for s in target.spec
    }
    for s in target.spec:
        if s.role == "running_stat" and s.path.endswith("var"):
            flat[s.path] = rng.uniform(0.5, 2.0, lead + s.shape).astype(np.float32)
    return pop_ops.from_numpy(target, flat, batched=n is not None)


def speed(n: int, tmp: str) -> dict:
    from hyper import formats
    from hyper import population as pop_ops

    t = _target("digits-mlp")
    pop = _random(t, n, 0)
    flat = pop_ops.to_numpy(pop)
    nbytes = sum(a.nbytes for a in flat.values())

    def raw_write(p):
        with open(p, "wb") as f:
            np.savez(f, **flat)

    def raw_read(p):
        with np.load(p) as z:
            return {k: z[k] for k in z.files}

    methods = {
        "np.savez (raw arrays)": (raw_write, raw_read, "raw.npz"),
        "npz (ours, flax)": (
            lambda p: formats.save_npz(t, pop, p, layout="flax", batched=True, overwrite=True),
            lambda p: formats.load_npz(t, p),
            "ours.npz",
        ),
        "safetensors stacked (flax)": (
            lambda p: formats.save_safetensors(
                t, pop, p, layout="flax", batched=True, overwrite=True
            ),
            lambda p: formats.load_safetensors(t, p),
            "stacked.safetensors",
        ),
        "safetensors per network (torch)": (
            lambda p: formats.save_safetensors(
                t, pop, p, layout="torch", batched=True, overwrite=True
            ),
            lambda p: formats.load_safetensors(t, p),
            "torch",
        ),
    }
    times: dict[str, dict[str, list[float]]] = {k: {"write": [], "read": []} for k in methods}
    loads = []
    for r in range(REPEATS):
        loads.append(round(os.getloadavg()[0], 2))
        for name, (write, read, fname) in methods.items():
            path = os.path.join(tmp, fname)
            t0 = time.perf_counter()
            write(path)
            t1 = time.perf_counter()
            back = read(path)
            t2 = time.perf_counter()
            if r == 0:  # exact, whatever the writer
                got = (
                    back
                    if isinstance(back, dict) and "layers/0/kernel" in back
                    else pop_ops.to_numpy(back)
                )
                assert all(np.array_equal(got[k], flat[k]) for k in flat), name
            times[name]["write"].append(t1 - t0)
            times[name]["read"].append(t2 - t1)
            log(f"round {r} {name}: write {t1 - t0:.3f}s read {t2 - t1:.3f}s")
    out = {"nets": n, "params_per_net": t.num_params, "megabytes": nbytes / 1e6, "loadavg": loads}
    base = {k: statistics.median(v) for k, v in times["np.savez (raw arrays)"].items()}
    for name, tv in times.items():
        row = {}
        for op, v in tv.items():
            s = statistics.median(v)
            row[op] = {
                "seconds": round(s, 4),
                "MB_per_s": round(nbytes / 1e6 / s, 1),
                "nets_per_s": round(n / s, 1),
                "time_vs_np_savez": round(s / base[op], 2),
            }
        out[name] = row
    return out


def round_trips(tmp: str) -> dict:
    from hyper import formats
    from hyper import population as pop_ops
    from hyper.zoo_presets import PRESETS

    out = {}
    for name in PRESETS:
        t = _target(name)
        params = _random(t, None, 1)
        ref = pop_ops.to_numpy(params)
        row = {"params": t.num_params}
        for fmt in formats.FORMATS:
            for layout in formats.LAYOUTS:
                p = os.path.join(tmp, f"{name}-{layout}.{fmt}")
                formats.save_weights(t, params, p, format=fmt, layout=layout, overwrite=True)
                back = pop_ops.to_numpy(formats.load_weights(t, p))
                row[f"{fmt}/{layout}"] = float(max(np.max(np.abs(back[k] - ref[k])) for k in ref))
        out[name] = row
        log(f"round trip {name}: {row}")
    return out


def torch_check(quick: bool) -> dict:
    from hyper import data, formats, train, zoo
    from hyper import population as pop_ops
    from hyper.architectures import make_target
    from hyper.torch_layout import TorchPaddingWarning

    out_dir = RESULTS / ("quick" if quick else "") / "formats_torch"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    sets = {name: data.load(name) for name in ("digits", "mnist1d")}
    for name, d in sets.items():
        np.savez(out_dir / f"{name}_test.npz", x=d.x_test, y=d.y_test)
    old_cnn = {k: v for k, v in zoo.PRESETS["digits-cnn"].arch.items() if k != "padding"}
    networks = {  # file name: (preset, arch override)
        "digits-mlp": ("digits-mlp", None),
        "digits-cnn": ("digits-cnn", None),
        "mnist1d-cnn": ("mnist1d-cnn", None),
        "digits-cnn-same": ("digits-cnn", old_cnn),  # a zoo built before: XLA's 'SAME'
    }
    record = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (preset, arch) in networks.items():
            grid = {k: v[:1] for k, v in zoo.PRESETS[preset].grid.items()}
            z = zoo.build(
                os.path.join(tmp, name),
                preset,
                grid=grid,
                seeds=1,
                epochs=2 if quick else None,  # the preset's epochs
                arch=arch,
                progress=False,
            )
            g, ds = z.groups[0], sets[zoo.PRESETS[preset].dataset]
            params = pop_ops.only(g.params)
            ours = train.evaluate(g.target, pop_ops.of_one(params), ds.x_test, ds.y_test)
            with warnings.catch_warnings():  # digits-cnn-same warns; the file says so
                warnings.simplefilter("ignore", TorchPaddingWarning)
                path = formats.save_safetensors(g.target, params, out_dir / f"{name}.safetensors")
            record[name] = {
                "target": g.target.config,
                "epochs": z.config["epochs"],
                "test_acc_ours": float(np.asarray(ours["acc"])[0]),
                "file_warning": formats.read_metadata(path).get("warning"),
            }
            np.save(out_dir / f"{name}_logits.npy", np.asarray(g.target.apply(params, ds.x_test)))
    ds = sets["digits"]
    t = make_target("rescnn", input_shape=(8, 8), channels=4, num_blocks=1, out_features=10)
    params = _random(t, None, 2)
    formats.save_safetensors(t, params, out_dir / "rescnn.safetensors")
    np.save(out_dir / "rescnn_logits.npy", np.asarray(t.apply(params, ds.x_test)))
    record["rescnn"] = {"target": t.config}
    return {"directory": str(out_dir.relative_to(RESULTS.parent.parent)), "networks": record}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 networks, 2 training epochs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    with stdout_to_stderr():
        import jax

        jax.config.update("jax_platforms", "cpu")
        result = {"machine": machine()}
        with tempfile.TemporaryDirectory() as tmp:
            result["speed"] = speed(256 if args.quick else NETS, tmp)
            result["round_trips"] = round_trips(tmp)
        result["torch_check"] = torch_check(args.quick)
    write_result(result, args.out, name="formats", schema=SCHEMA_VERSION, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
