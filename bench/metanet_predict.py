"""Benchmark: predicting test accuracy from weights, graph metanet vs StatNN vs flat MLP.

Zoos are built with `hyper.zoo.build` on scikit-learn digits (8x8):

- **homogeneous**: the digits CNN 1-8-8-8 + GAP + dense 10 (a Small-CNN-Zoo analogue),
  grid over learning rate, weight decay, init scale, train fraction, activation and
  dropout, checkpoints at several epochs;
- **heterogeneous**: a digits CNN "wild park": architectures sampled with a fixed seed,
  2-5 conv layers, widths {4, 8, 16, 32}, kernels {3, 5}, activations, optional
  BatchNorm and residual connections; each architecture is one zoo;
- **generalisation**: a homogeneous zoo with a disjoint seed range (and root seed), never
  used in training; and a wild park of architectures never seen in training
  (``wild_unseen_archs``, sampled after the training ones, with other seeds).

Each dataset is split 80/20 *by training run* (`metanets.datasets.split_by_run`); every
model picks its epoch on a validation split carved by run out of the training part. The
homogeneous zoo also predicts the generalisation gap (train - test accuracy).
Throughput: graphs/s of a jitted forward+backward of the metanet on a padded batch of 256
CNN graphs (homogeneous and wild-park graphs; ``--quick``: homogeneous only), the step's
compiled temp memory, the peak RSS of the process, and the number of compilations of the
training step. ``--quick`` is a smoke test of the pipeline (a few dozen samples per zoo;
the heterogeneous set is the homogeneous zoo beside one small sampled architecture): its
tau and r2 say nothing about the models.

Usage::

  python bench/metanet_predict.py [--quick] [--out PATH] [--cache DIR]
  python bench/metanet_predict.py --split homogeneous|wild|unseen|cross|transformer [--quick]

``--split`` runs one split of issue 30 (`bench/metanet_splits.py`: StatNN, the PNA and
transformer graph metanets, learned probes and the validation-chosen ensemble, over 3
seeds) and writes ``bench/results/metanet_predict_<split>.json``.

Writes ``bench/results/metanet_predict.json`` (``--quick``: under ``bench/results/quick/``)
and prints the same JSON as one line on stdout; progress goes to stderr. Zoos are cached
in ``--cache`` (default: a folder in the system temp dir) and reused when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    goal,
    machine,
    record_section,
    stdout_to_stderr,
    write_result,
)
from hyper import sharding  # noqa: E402

ANCHORS = {
    "homogeneous (CIFAR-10-GS)": {"statnn": 0.915, "nfn_hnp": 0.934, "ng_gnn": 0.930},
    "heterogeneous (CNN Wild Park)": {"statnn": 0.719, "ng_gnn": 0.804, "ng_t": 0.817},
}
GOALS_IN_WORDS = {
    "homogeneous": "gmn >= best statnn - 0.01",
    "heterogeneous": "gmn >= best statnn + 0.05",
}
# Version 2: structured goals on the measured margin gmn - best StatNN (the summary shows
# the margin, not only yes/no), provenance and goals_met by bench.common.write_result.
SCHEMA_VERSION = 2
GOALS = {
    "homogeneous": goal("gmn_minus_best_statnn/homogeneous", ">=", -0.01),
    "heterogeneous": goal("gmn_minus_best_statnn/heterogeneous", ">=", 0.05),
}


def gmn_minus_best_statnn(tau: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """Per zoo: the graph metanet's test tau minus the better StatNN's (None when absent)."""
    out: dict[str, float | None] = {}
    for zoo, models in tau.items():
        stat = [models.get(k) for k in ("statnn_mlp", "statnn_gbm")]
        if models.get("gmn") is None or any(v is None for v in stat):
            out[zoo] = None
        else:
            out[zoo] = models["gmn"] - max(stat)
    return out


HOM_ARCH = {"arch": "cnn2d", "channels": [8, 8, 8], "out_features": 10}
FULL = {
    "hom_grid": {
        "learning_rate": [1e-3, 3e-3, 1e-2, 3e-2],
        "weight_decay": [0.0, 1e-3],
        "init_scale": [0.5, 1.0, 2.0],
        "train_fraction": [0.25, 0.5, 1.0],
        "activation": ["relu", "tanh", "gelu"],
        "dropout": [0.0, 0.2],
    },
    "hom_seeds": [0, 1, 2, 3, 4],  # 432 configurations x 5 seeds = 2,160 runs
    "hom_epochs": 8,
    "hom_ckpt": [1, 2, 4, 8],
    "gen_grid": {
        "learning_rate": [1e-3, 3e-3, 1e-2, 3e-2],
        "weight_decay": [0.0, 1e-3],
        "init_scale": [0.5, 1.0, 2.0],
        "train_fraction": [0.25, 1.0],
        "activation": ["relu", "tanh", "gelu"],
        "dropout": [0.0],
    },
    "gen_seeds": [1000],
    "wild_archs": 48,
    "wild_unseen_archs": 6,
    "wild_grid": {
        "learning_rate": [3e-3, 1e-2, 3e-2, 1e-1],
        "weight_decay": [0.0, 1e-3],
        "init_scale": [0.5, 1.0],
        "train_fraction": [0.5, 1.0],
        "dropout": [0.0],
    },
    "wild_seeds": [0],
    "wild_with_homogeneous": False,
    "wild_max_depth": 5,
    "wild_kernels": (3, 5),
    "wild_epochs": 6,
    "wild_ckpt": [1, 3, 6],
    "gmn": {"epochs": 30},
    # Wild park only, chosen on validation runs by bench/metanet_select.py: hidden 32 over
    # the defaults (hidden 16), 4 layers and 60 epochs (results/metanet_select_round1.json);
    # then the mean/max/min/std readout over mean/max and over weight noise 0.05 and 0.1
    # (results/metanet_select_round2_pool.json, results/metanet_select_round2_noise.json).
    "gmn_wild": {"epochs": 30, "hidden": 32, "pool": "pna"},
    "gmn_gap": {"epochs": 12},
    "mlp": {},
}
QUICK = {
    "hom_grid": {
        "learning_rate": [3e-3, 3e-2],
        "weight_decay": [0.0],
        "init_scale": [0.5, 1.0],
        "train_fraction": [0.5, 1.0],
        "activation": ["relu"],  # one zoo group (each activation is one more compile)
        "dropout": [0.0],
    },
    "hom_seeds": [0, 1, 2, 3],
    "hom_epochs": 3,
    "hom_ckpt": [1, 3],
    "gen_grid": None,
    "gen_seeds": [1000],
    "wild_archs": 1,
    "wild_unseen_archs": 0,
    "wild_grid": {
        "learning_rate": [3e-3, 3e-2],
        "weight_decay": [0.0],
        "init_scale": [0.5, 1.0],
        "train_fraction": [0.5, 1.0],
        "dropout": [0.0],
    },
    "wild_seeds": [0],  # 8 runs per architecture: the smoke test of the pipeline, no figures
    # the heterogeneous set: the homogeneous zoo and one sampled architecture (each zoo of
    # another architecture is a compile of its own, ~8 s)
    "wild_with_homogeneous": True,
    # shallow 3x3 networks compile faster (a zoo of 5 layers with 5x5 kernels: ~15 s)
    "wild_max_depth": 3,
    "wild_kernels": (3,),
    "wild_epochs": 2,
    "wild_ckpt": [1, 2],
    "gmn": {"epochs": 6, "eval_every": 2, "num_layers": 2},  # each layer costs ~1 s of compile
    "gmn_gap": None,
    "mlp": {"epochs": 60, "eval_every": 10},
}
# issue 30: the best metanet's mean test tau minus the best StatNN's, per split
# (the transformer zoo has none)
SPLIT_GOALS = {"homogeneous": -0.01, "wild": 0.05, "unseen": 0.02, "cross": 0.02}
WILD_ACTIVATIONS = ["relu", "tanh", "gelu", "silu", "leaky_relu", "sigmoid"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wild_architectures(
    n: int, seed: int, max_depth: int = 5, kernels: tuple[int, ...] = (3, 5)
) -> list[dict[str, Any]]:
    """`n` distinct wild-park architectures (with an activation each), sampled by `seed`:
    2 to `max_depth` conv layers, each with a kernel size from `kernels`."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        depth = int(rng.integers(2, max_depth + 1))
        channels = [int(rng.choice([4, 8, 16, 32])) for _ in range(depth)]
        kernel_size = [int(rng.choice(list(kernels))) for _ in range(depth)]
        # Full resolution for two layers, then halve every other layer (8, 8, 4, 4, 2).
        strides = [1, 1, 2, 1, 2][:depth]
        arch = {
            "arch": "cnn2d",
            "channels": channels,
            "kernel_size": kernel_size,
            "strides": strides,
            "batchnorm": bool(rng.random() < 0.5),
            "residual": bool(rng.random() < 0.5),
            "out_features": 10,
        }
        if arch["residual"]:  # a residual needs equal widths: stride-1 layers keep theirs
            for j in range(1, depth):
                if strides[j] == 1:
                    channels[j] = channels[j - 1]
        act = str(rng.choice(WILD_ACTIVATIONS))
        key = json.dumps([arch, act], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append({"arch": arch, "activation": act})
    return out


def build_zoo(directory: Path, preset: str = "digits-cnn", **kw: Any) -> str:
    """Builds the zoo in `directory`, or reuses (resumes) one built there with the same
    configuration; a cached zoo of another configuration is rebuilt."""
    from hyper import zoo

    directory.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        z = zoo.build(directory, preset, resume=True, progress=False, **kw)
    except ValueError as e:  # another zoo (or something else) is cached there
        log(f"rebuilding {directory}: {e}")
        z = zoo.build(directory, preset, overwrite=True, progress=False, **kw)
    log(f"zoo {directory.name}: {z.num_members} runs ready in {time.perf_counter() - t0:.1f}s")
    return str(directory)


def build_zoos(cfg: dict[str, Any], cache: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    hom = build_zoo(
        cache / "homogeneous",
        arch=HOM_ARCH,
        grid=cfg["hom_grid"],
        seeds=cfg["hom_seeds"],
        epochs=cfg["hom_epochs"],
        checkpoint_epochs=cfg["hom_ckpt"],
    )
    gen = None
    if cfg["gen_grid"] is not None:
        gen = build_zoo(
            cache / "homogeneous_generalisation",
            arch=HOM_ARCH,
            grid=cfg["gen_grid"],
            seeds=cfg["gen_seeds"],
            seed=1,
            epochs=cfg["hom_epochs"],
            checkpoint_epochs=cfg["hom_ckpt"],
        )
    archs = wild_architectures(
        cfg["wild_archs"] + cfg["wild_unseen_archs"],
        seed=0,
        max_depth=cfg["wild_max_depth"],
        kernels=cfg["wild_kernels"],
    )
    wild, unseen = [], []
    for i, a in enumerate(archs):
        seen_arch = i < cfg["wild_archs"]
        wild_kw = dict(
            arch=a["arch"],
            grid={**cfg["wild_grid"], "activation": [a["activation"]]},
            seeds=cfg["wild_seeds"] if seen_arch else [s + 1000 for s in cfg["wild_seeds"]],
            seed=0 if seen_arch else 1,
            epochs=cfg["wild_epochs"],
            checkpoint_epochs=cfg["wild_ckpt"],
        )
        d = build_zoo(cache / ("wild" if seen_arch else "wild_unseen") / f"arch{i:02d}", **wild_kw)
        (wild if seen_arch else unseen).append(d)
    return {
        "homogeneous": hom,
        "generalisation": gen,
        "wild": wild,
        "wild_unseen": unseen,
        "archs": archs,
        "seconds": time.perf_counter() - t0,
    }


def evaluate_models(
    name: str,
    ds,
    models: list[str],
    cfg: dict[str, Any],
    extra: dict[str, Any] | None = None,
    seed: int = 0,
    split: tuple[np.ndarray, np.ndarray] | None = None,
):
    """Fits `models` on an 80/20 split by run of `ds` (split and fits seeded by `seed`)
    and evaluates them on the test runs; `split` gives `(train, test)` sample indices
    instead."""
    from metanets import datasets, predict

    train, test = split if split is not None else datasets.split_by_run(ds.run, 0.2, seed=seed)
    out: dict[str, Any] = {
        "n_samples": len(ds),
        "n_runs": int(len(np.unique(ds.run))),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        # Distinct weight layouts (the activation and dropout do not change the graph).
        "n_architectures": int(len({tuple((s.path, s.shape) for s in t.spec) for t in ds.targets})),
        "n_targets": int(len(ds.targets)),
        "label_std": float(ds.y.std()),
        "models": {},
    }
    fitted = {}
    for kind in models:
        t0 = time.perf_counter()
        over = {}
        if kind == "gmn":
            over = dict(cfg["gmn"] if extra is None else extra)
        elif kind in ("statnn_mlp", "flat"):
            over = dict(cfg["mlp"])
        pred = predict.fit(kind, ds, train, seed=seed, log=lambda m: log(f"{name}: {m}"), **over)
        secs = time.perf_counter() - t0
        metrics = predict.evaluate(pred, ds, test)
        out["models"][kind] = {
            **metrics,
            "fit_seconds": secs,
            "config": {k: v for k, v in pred.config.items() if k not in ("homogeneous_spec",)},
            **({"stats": pred.stats} if pred.stats else {}),
        }
        log(f"{name} {kind}: tau {metrics['tau']:.4f} r2 {metrics['r2']:.4f} ({secs:.0f}s)")
        fitted[kind] = pred
    return out, fitted


def throughput(
    cache_ds: dict[str, Any],
    window: tuple[int, int],
    reps: int,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Forward+backward graphs/s on padded batches of 256 graphs, per zoo of the metanet
    that zoo's fit uses (`DEFAULTS["gmn"]` with the zoo's `overrides`, built as the fit
    builds it)."""
    from flax import nnx

    from metanets.predict import build_gmn

    out = {}
    for name, ds in cache_ds.items():
        kw = (overrides or {}).get(name, {})
        model, bank = build_gmn(ds, window=window, **kw)
        rng = np.random.default_rng(0)
        samples = rng.choice(len(bank), size=min(256, len(bank)), replace=len(bank) < 256)
        g = bank.batch(samples, batch_size=256)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p, g, graphdef=graphdef, rest=rest):
            y = nnx.merge(graphdef, p, rest)(g)[:, 0]
            return jnp.sum(jnp.where(g.globals["mask"], y * y, 0.0))

        step = jax.jit(jax.value_and_grad(loss))
        compiled = step.lower(params, g).compile()
        mem = compiled.memory_analysis()
        jax.block_until_ready(step(params, g))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(step(params, g))
            times.append(time.perf_counter() - t0)
        best = min(times)
        out[name] = {
            "graphs": int(len(samples)),
            "padded_nodes": int(g.nodes["x"].shape[0]),
            "padded_edges": int(g.edges["w"].shape[0]),
            "real_nodes": int(g.nodes["mask"].sum()),
            "real_edges": int(g.edges["mask"].sum()),
            "window": list(window),
            "hidden": model.node_in.out_features,
            "num_layers": len(model.layers),
            "pool": model.pool,
            "probes": model.probe_features,
            "graphs_per_s": len(samples) / best,
            "step_seconds_runs": times,
            "compiled_temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0) or 0),
            "compiled_argument_bytes": int(getattr(mem, "argument_size_in_bytes", 0) or 0),
        }
        log(f"throughput {name}: {len(samples) / best:.0f} graphs/s fwd+bwd")
    return out


def run(quick: bool, cache: Path) -> dict[str, Any]:
    from metanets import datasets, predict

    cfg = QUICK if quick else FULL
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "metanet_predict",
        "quick": quick,
        "machine": machine(),
        "anchors_published": ANCHORS,
        "goals_in_words": GOALS_IN_WORDS,
    }
    zoos = build_zoos(cfg, cache)
    result["zoos"] = {
        "seconds": zoos["seconds"],
        "homogeneous": {
            "arch": HOM_ARCH,
            "grid": cfg["hom_grid"],
            "seeds": cfg["hom_seeds"],
            "epochs": cfg["hom_epochs"],
            "checkpoint_epochs": cfg["hom_ckpt"],
        },
        "generalisation": {"grid": cfg["gen_grid"], "seeds": cfg["gen_seeds"], "root_seed": 1},
        "wild": {
            "architectures": zoos["archs"][: cfg["wild_archs"]],
            "unseen_architectures": zoos["archs"][cfg["wild_archs"] :],
            "grid": cfg["wild_grid"],
            "seeds": cfg["wild_seeds"],
            "epochs": cfg["wild_epochs"],
            "checkpoint_epochs": cfg["wild_ckpt"],
            "includes_homogeneous_zoo": cfg["wild_with_homogeneous"],
        },
    }
    hom = datasets.load_zoos([zoos["homogeneous"]])
    wild = datasets.load_zoos(
        ([zoos["homogeneous"]] if cfg["wild_with_homogeneous"] else []) + zoos["wild"]
    )
    log(f"datasets: homogeneous {len(hom)} samples, heterogeneous {len(wild)} samples")

    # the models of this benchmark's committed rows (gmn_t and probes: --split runs)
    hom_models = ["gmn", "statnn_mlp", "statnn_gbm", "flat"]
    hom_res, hom_fit = evaluate_models("homogeneous", hom, hom_models, cfg)
    wild_models = ["statnn_mlp", "statnn_gbm", "gmn"]
    wild_res, wild_fit = evaluate_models(
        "heterogeneous", wild, wild_models, cfg, extra=cfg.get("gmn_wild")
    )
    wild_res["models"]["flat"] = None
    wild_res["flat_reason"] = "a flat vector needs one architecture"
    result["homogeneous"] = hom_res
    result["heterogeneous"] = wild_res

    generalisation: dict[str, Any] = {}
    if zoos["generalisation"]:
        gen = datasets.load_zoos([zoos["generalisation"]])
        generalisation["homogeneous_disjoint_seeds"] = {
            "n_samples": len(gen),
            **{k: predict.evaluate(p, gen) for k, p in hom_fit.items()},
        }
    if zoos["wild_unseen"]:
        unseen = datasets.load_zoos(zoos["wild_unseen"])
        generalisation["heterogeneous_unseen_architectures"] = {"n_samples": len(unseen)}
        for k, p in wild_fit.items():
            try:
                generalisation["heterogeneous_unseen_architectures"][k] = predict.evaluate(
                    p, unseen
                )
            except ValueError as e:  # e.g. a deeper network than StatNN's slots
                generalisation["heterogeneous_unseen_architectures"][k] = {"error": str(e)}
    result["generalisation"] = generalisation

    if cfg["gmn_gap"] is not None:
        gap = datasets.load_zoos([zoos["homogeneous"]], task="gap")
        gap_res, _ = evaluate_models(
            "gap", gap, ["statnn_mlp", "statnn_gbm", "gmn"], cfg, extra=cfg["gmn_gap"]
        )
        result["generalisation_gap_homogeneous"] = gap_res

    result["throughput"] = throughput(
        # quick: one zoo (each is a compile of its own); full: both
        {"homogeneous": hom} if quick else {"homogeneous": hom, "heterogeneous": wild},
        window=(5, 5),
        reps=2 if quick else 5,
        overrides={"homogeneous": cfg["gmn"], "heterogeneous": cfg.get("gmn_wild") or cfg["gmn"]},
    )
    result["compilations"] = {
        name: res["models"]["gmn"]["stats"]["train_compilations"]
        for name, res in (("homogeneous", hom_res), ("heterogeneous", wild_res))
    }
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["tau"] = {
        "homogeneous": {k: v["tau"] for k, v in hom_res["models"].items()},
        "heterogeneous": {k: (v["tau"] if v else None) for k, v in wild_res["models"].items()},
    }
    result["r2"] = {
        "homogeneous": {k: v["r2"] for k, v in hom_res["models"].items()},
        "heterogeneous": {k: (v["r2"] if v else None) for k, v in wild_res["models"].items()},
    }
    # goals_met by write_result (null for quick: a few dozen samples say nothing of them)
    result["gmn_minus_best_statnn"] = gmn_minus_best_statnn(result["tau"])
    result["seconds"] = time.perf_counter() - t_start
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def stored_wild_run(gmn_config: dict[str, Any]) -> dict[str, Any] | None:
    """The ``heterogeneous`` section of the committed full ``results/metanet_predict.json``
    if its graph metanet was fit with `gmn_config` on the current wild park (else None).

    Fits are deterministic, so `bench/metanet_select.py` and `bench/metanet_seeds.py` reuse
    it instead of refitting the same model on the same split.
    """
    path = REPO / "bench" / "results" / "metanet_predict.json"
    try:
        r = json.loads(path.read_text())
        het = r["heterogeneous"]
        config = het["models"]["gmn"]["config"]
    except (OSError, KeyError, ValueError):
        return None
    if r.get("quick") or het["n_architectures"] != FULL["wild_archs"]:
        return None
    # fits from before the noise, pool and probes options had none of them
    stored = {"noise": 0.0, "pool": "meanmax", "probes": 0, **config}
    if any(stored.get(k) != v for k, v in gmn_config.items()):
        return None
    return het


def record_split(result: dict[str, Any], path: Path) -> None:
    """Copies a full split run's summary (tau and R² per model, mean and std over seeds;
    the margins; its goal verdicts) into the ``splits`` section of the committed
    ``results/metanet_predict.json``, beside the file that holds the whole run."""
    keys = ("seeds", "data", "summary", "goals", "goals_met", "seconds", "git")
    row = {"file": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)}
    record_section("metanet_predict", "splits", result["split"], {
        **row, **{k: result.get(k) for k in keys}
    })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small zoos, few epochs: a smoke test (~70 s on 2 cores, zoos not cached)",
    )
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--split",
        default=None,
        choices=["homogeneous", "wild", "unseen", "cross", "transformer"],
        help="run one split of the model comparison (bench/metanet_splits.py)",
    )
    parser.add_argument(
        "--cache",
        default=None,
        help="zoo cache directory (default: <tmp>/weightspace-metanet-bench[-quick])",
    )
    args = parser.parse_args(argv)
    stem = "weightspace-metanet-" + ("splits" if args.split else "bench")
    cache = Path(
        args.cache or Path(tempfile.gettempdir()) / (stem + ("-quick" if args.quick else ""))
    ).resolve()
    sharding.use_cpu_cores()  # before any JAX computation: one JAX device per core
    if args.split:
        from bench.metanet_splits import SCHEMA_VERSION as SPLITS_SCHEMA_VERSION
        from bench.metanet_splits import run_split

        with stdout_to_stderr():
            result = run_split(args.split, args.quick, cache, build_zoo, log)
        result["machine"] = machine()
        key = "summary/best_metanet_minus_best_statnn"
        goals = {}
        if args.split in SPLIT_GOALS:
            goals = {"best_metanet_minus_best_statnn": goal(key, ">=", SPLIT_GOALS[args.split])}
        path = write_result(
            result,
            args.out,
            name=f"metanet_predict_{args.split}",
            schema=SPLITS_SCHEMA_VERSION,
            quick=args.quick,
            goals=goals,
        )
        if not args.quick and args.out is None:
            record_split(result, path)
        return 0
    with stdout_to_stderr():
        result = run(args.quick, cache)
    write_result(
        result,
        args.out,
        name="metanet_predict",
        schema=SCHEMA_VERSION,
        quick=args.quick,
        goals=GOALS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
