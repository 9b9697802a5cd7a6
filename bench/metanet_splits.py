"""The per-split runs of `bench/metanet_predict.py --split NAME` (issue 30).

Each split is its own command, builds its zoos once into the cache (reused when complete)
and writes ``bench/results/metanet_predict_<split>.json`` (``--quick``: under
``bench/results/quick/``):

- ``homogeneous``: the digits CNN 1-8-8-8 zoo of the main benchmark, 80/20 by run;
- ``wild``: a park of many sampled *architectures* (`park_architectures`: depth 2-6,
  widths 4-64, kernels 3/5/7, BatchNorm and residual at random, six activations; global
  average pooling heads: `cnn2d` has no flatten head), 80/20 by run;
- ``unseen``: the same park, a fifth of its architectures held out whole for test;
- ``cross``: train on zoos built with Adam, test on zoos built with SGD + momentum and
  other init scales, learning rates and weight decays (same architectures);
- ``transformer``: the ``digits-vit`` preset zoo (a 2-block ViT), 80/20 by run.

Per seed every model (`MODELS`) is fit on the training runs; each picks its epoch on a
validation split carved by run out of the training runs, and the best combination is a
greedy ensemble (Caruana selection with replacement; a weighted mean of the members'
predictions) whose members and weights are chosen on those validation runs only. The
test runs are touched once per model and seed. The ``wild`` split also measures the cost:
probe responses of 256 networks of one architecture in one vmapped call (networks/s) and
the FLOPs per network of the probe model against the graph models' (XLA cost analysis).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

SCHEMA_VERSION = 1
"""Of the per-split results files (``metanet_predict_<split>.json``)."""
MODELS = ("statnn_gbm", "statnn_mlp", "gmn", "gmn_t", "probes")
ACTIVATIONS = ["relu", "tanh", "gelu", "silu", "leaky_relu", "sigmoid"]
HOM_ARCH = {"arch": "cnn2d", "channels": [8, 8, 8], "out_features": 10}

FULL: dict[str, Any] = {
    # sized so that the five splits together run in about two and a half hours on the
    # 2-core CPU (each well under the hour; zoos built once into the cache: the park,
    # about half an hour, serves both `wild` and `unseen`)
    "seeds": [0, 1, 2],
    "park_archs": 200,
    "park_grid": {
        "learning_rate": [3e-3, 3e-2],
        "weight_decay": [0.0],
        "init_scale": [0.5, 1.0],
        "train_fraction": [1.0],
        "dropout": [0.0],
    },
    "park_seeds": [0],
    "park_epochs": 6,
    "park_ckpt": [2, 6],
    "hom_grid": {
        "learning_rate": [1e-3, 3e-3, 1e-2, 3e-2],
        "weight_decay": [0.0, 1e-3],
        "init_scale": [0.5, 1.0, 2.0],
        "train_fraction": [0.5, 1.0],
        "activation": ["relu", "tanh", "gelu"],
        "dropout": [0.0],
    },
    "hom_seeds": [0, 1],
    "hom_epochs": 8,
    "hom_ckpt": [1, 2, 4, 8],
    "cross_adam": {
        "learning_rate": [1e-3, 3e-3, 1e-2],
        "weight_decay": [0.0, 1e-4],
        "init_scale": [0.5, 1.0],
        "train_fraction": [0.5, 1.0],
        "activation": ["relu", "tanh"],
        "dropout": [0.0],
        "optimizer": ["adam"],
    },
    "cross_sgd": {
        "learning_rate": [1e-2, 3e-2, 1e-1],
        "weight_decay": [1e-4, 1e-3],
        "init_scale": [0.75, 1.5],
        "train_fraction": [0.5, 1.0],
        "activation": ["relu", "tanh"],
        "dropout": [0.0],
        "optimizer": ["momentum"],
    },
    "cross_seeds": [0, 1, 2],
    "cross_epochs": 8,
    "cross_ckpt": [2, 4, 8],
    "vit_grid": {
        "learning_rate": [3e-4, 1e-3, 3e-3],
        "weight_decay": [0.0, 1e-3],
        "init_scale": [0.5, 1.0],
        "train_fraction": [0.5, 1.0],
        "activation": ["gelu", "relu"],
        "dropout": [0.0],
        "optimizer": ["adam"],
    },
    "vit_seeds": [0, 1],
    "vit_epochs": 10,
    "vit_ckpt": [2, 5, 10],
    "fit": {
        "gmn": {"epochs": 16},
        "gmn_t": {"epochs": 16},
        "probes": {"epochs": 20},
        "statnn_mlp": {},
    },
    # models a split does not fit, with the reason (recorded in the results as an error)
    "skip": {},
    # per split, settings that replace `fit`'s: the ViT's graphs are 30x the digits CNN's
    # (about 17k edges; a batch of 64 takes 10 GB), so fewer epochs and half batches; its
    # signal sits in small deviations of the LayerNorm scales from 1, which the graph
    # models see only with `input_norm`
    "fit_split": {
        "transformer": {
            "gmn": {"epochs": 6, "eval_every": 2, "batch_size": 32, "input_norm": True},
            "gmn_t": {"epochs": 6, "eval_every": 2, "batch_size": 32, "input_norm": True},
        },
        # the park (all 200 architectures' graphs): fewer epochs to fit the hour
        "wild": {"gmn": {"epochs": 12}, "gmn_t": {"epochs": 12}, "probes": {"epochs": 14}},
        "unseen": {"gmn": {"epochs": 12}, "gmn_t": {"epochs": 12}, "probes": {"epochs": 14}},
    },
}
QUICK: dict[str, Any] = {
    **FULL,
    "seeds": [0],
    "park_archs": 5,
    "park_grid": {
        "learning_rate": [3e-3, 3e-2],
        "weight_decay": [0.0],
        "init_scale": [0.5, 1.0],
        "train_fraction": [1.0],
        "dropout": [0.0],
    },
    "park_epochs": 2,
    "park_ckpt": [1, 2],
    "hom_grid": {
        "learning_rate": [3e-3, 3e-2],
        "weight_decay": [0.0],
        "init_scale": [0.5, 1.0],
        "train_fraction": [0.5, 1.0],
        "activation": ["relu"],
        "dropout": [0.0],
    },
    "hom_seeds": [0, 1, 2],
    "hom_epochs": 3,
    "hom_ckpt": [1, 3],
    "cross_adam": {
        **FULL["cross_adam"],
        "learning_rate": [3e-3, 1e-2],
        "activation": ["relu"],
        "weight_decay": [0.0],
        "train_fraction": [1.0],
    },  # fmt: skip
    "cross_sgd": {
        **FULL["cross_sgd"],
        "learning_rate": [3e-2, 1e-1],
        "activation": ["relu"],
        "weight_decay": [1e-3],
        "train_fraction": [1.0],
    },  # fmt: skip
    "cross_seeds": [0, 1, 2],
    "cross_epochs": 3,
    "cross_ckpt": [1, 3],
    "vit_grid": {
        "learning_rate": [1e-3, 3e-3],
        "weight_decay": [0.0],
        "init_scale": [1.0],
        "train_fraction": [0.5, 1.0],
        "activation": ["gelu"],
        "dropout": [0.0],
        "optimizer": ["adam"],
    },
    "vit_seeds": [0, 1, 2],
    "vit_epochs": 2,
    "vit_ckpt": [1, 2],
    "fit": {
        "gmn": {"epochs": 4, "eval_every": 2, "num_layers": 1, "hidden": 8},
        "gmn_t": {"epochs": 4, "eval_every": 2, "num_layers": 1, "hidden": 8},
        "probes": {"epochs": 4, "eval_every": 2, "count": 8, "hidden": 64},
        "statnn_mlp": {"epochs": 30, "eval_every": 10},
    },
    "fit_split": {
        "transformer": {"gmn": {"input_norm": True}, "gmn_t": {"input_norm": True}},
    },
}
SPLITS = ("homogeneous", "wild", "unseen", "cross", "transformer")


def park_architectures(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """`n` distinct park architectures with an activation each, sampled by `seed`: 2-6 conv
    layers, widths {4, 8, 16, 32, 64}, kernels {3, 5, 7}, BatchNorm and residual
    connections at random; strides 1, 1, 2, 1, 2, 1 (8x8 digits: 8, 8, 4, 4, 2, 2)."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        depth = int(rng.integers(2, 7))
        channels = [int(rng.choice([4, 8, 16, 32, 64])) for _ in range(depth)]
        strides = [1, 1, 2, 1, 2, 1][:depth]
        residual = bool(rng.random() < 0.5)
        if residual:  # a residual needs equal widths: stride-1 layers keep theirs
            for j in range(1, depth):
                if strides[j] == 1:
                    channels[j] = channels[j - 1]
        arch = {
            "arch": "cnn2d",
            "channels": channels,
            "kernel_size": [int(rng.choice([3, 5, 7])) for _ in range(depth)],
            "strides": strides,
            "batchnorm": bool(rng.random() < 0.5),
            "residual": residual,
            "out_features": 10,
        }
        act = str(rng.choice(ACTIVATIONS))
        key = json.dumps([arch, act], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append({"arch": arch, "activation": act})
    return out


def _zoos(split: str, cfg: dict[str, Any], cache: Path, build_zoo) -> dict[str, list[str]]:
    """The zoo directories of a split, by role (``all``, or ``train``/``test``)."""
    if split == "homogeneous":
        d = build_zoo(cache / "homogeneous", arch=HOM_ARCH, grid=cfg["hom_grid"],
                      seeds=cfg["hom_seeds"], epochs=cfg["hom_epochs"],
                      checkpoint_epochs=cfg["hom_ckpt"])  # fmt: skip
        return {"all": [d]}
    if split in ("wild", "unseen"):
        dirs = []
        for i, a in enumerate(park_architectures(cfg["park_archs"])):
            grid = {**cfg["park_grid"], "activation": [a["activation"]]}
            dirs.append(build_zoo(cache / "park" / f"arch{i:03d}", arch=a["arch"], grid=grid,
                                  seeds=cfg["park_seeds"], epochs=cfg["park_epochs"],
                                  checkpoint_epochs=cfg["park_ckpt"]))  # fmt: skip
        return {"all": dirs}
    if split == "cross":
        kw = dict(arch=HOM_ARCH, seeds=cfg["cross_seeds"], epochs=cfg["cross_epochs"],
                  checkpoint_epochs=cfg["cross_ckpt"])  # fmt: skip
        train = build_zoo(cache / "cross_adam", grid=cfg["cross_adam"], **kw)
        test = build_zoo(cache / "cross_sgd", grid=cfg["cross_sgd"], seed=1, **kw)
        return {"train": [train], "test": [test]}
    if split == "transformer":
        d = build_zoo(cache / "digits_vit", preset="digits-vit", grid=cfg["vit_grid"],
                      seeds=cfg["vit_seeds"], epochs=cfg["vit_epochs"],
                      checkpoint_epochs=cfg["vit_ckpt"])  # fmt: skip
        return {"all": [d]}
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _dataset_and_splits(split: str, zoos: dict[str, list[str]], seed: int, ds=None):
    """`(ds, train, test)`: one dataset over all zoos (`ds` when given: loaded by an
    earlier seed) and the seed's train/test samples."""
    from metanets import datasets

    if "all" in zoos:
        ds = ds if ds is not None else datasets.load_zoos(zoos["all"])
        if split == "unseen":  # a fifth of the architectures held out whole
            rng = np.random.default_rng(seed)
            n = len(ds.targets)
            held = rng.permutation(n)[: max(1, round(0.2 * n))]
            is_test = np.isin(ds.group, held)
            return ds, np.flatnonzero(~is_test), np.flatnonzero(is_test)
        train, test = datasets.split_by_run(ds.run, 0.2, seed=seed)
        return ds, train, test
    ds = ds if ds is not None else datasets.load_zoos(zoos["train"] + zoos["test"])
    n_train = len(datasets.load_zoos(zoos["train"]).targets)
    is_test = ds.group >= n_train
    return ds, np.flatnonzero(~is_test), np.flatnonzero(is_test)


def ensemble_select(val_preds: dict[str, np.ndarray], y_val: np.ndarray, rounds: int = 10):
    """Greedy ensemble selection with replacement (Caruana et al. 2004) on validation tau:
    returns ``({model: w}, val_tau)``, the weights (summing to 1) of the members'
    predictions (all in label units) and the mixture's validation tau."""
    from metanets.metrics import kendall_tau

    chosen: list[str] = []
    best_tau = -2.0
    for _ in range(rounds):
        cand = []
        for k in val_preds:
            mix = np.mean([val_preds[m] for m in [*chosen, k]], axis=0)
            cand.append((kendall_tau(mix, y_val), k))
        tau, k = max(cand)
        if chosen and tau <= best_tau:
            break
        chosen.append(k)
        best_tau = tau
    return {k: chosen.count(k) / len(chosen) for k in sorted(set(chosen))}, best_tau


def fit_settings(cfg: dict[str, Any], split: str, kind: str) -> dict[str, Any]:
    """The `predict.fit` overrides of model `kind` on `split`: ``cfg["fit"]``'s, then the
    split's own (``cfg["fit_split"]``)."""
    return {**cfg["fit"].get(kind, {}), **cfg.get("fit_split", {}).get(split, {}).get(kind, {})}


FITS_ON_VALIDATION = ("statnn_gbm",)
"""Models whose `predict.fit` trains on the validation runs too (the boosted trees hold out
their own random tenth of samples): their validation predictions, which choose the best
combination, come from a second fit without those runs (the test figures from the first)."""


def run_seed(split: str, ds, train, test, cfg, seed: int, log) -> dict[str, Any]:
    from metanets import datasets, predict
    from metanets.metrics import kendall_tau, r2_score

    # the validation runs every fit carves out of `train` (predict.fit's own split)
    tr_rel, val_rel = datasets.split_by_run(ds.run[train], 0.1, seed + 1)
    val = train[val_rel]
    out: dict[str, Any] = {"models": {}}
    val_preds, test_preds = {}, {}
    for kind in MODELS:
        if kind in cfg.get("skip", {}).get(split, {}):
            out["models"][kind] = {"error": cfg["skip"][split][kind]}
            continue
        t0 = time.perf_counter()
        over = fit_settings(cfg, split, kind)
        try:
            pred = predict.fit(kind, ds, train, seed=seed, log=lambda m: log(f"{split}: {m}"),
                               **over)  # fmt: skip
            fit_s = time.perf_counter() - t0
            val_preds[kind] = pred.predict(ds, val)
            if kind in FITS_ON_VALIDATION:  # its validation predictions, out of sample
                again = predict.fit(kind, ds, train[tr_rel], seed=seed, **over)
                val_preds[kind] = again.predict(ds, val)
            test_preds[kind] = pred.predict(ds, test)
        except ValueError as e:  # a model that cannot read this zoo: recorded, not hidden
            out["models"][kind] = {"error": str(e)}
            log(f"{split} {kind}: {e}")
            continue
        y = ds.y[test]
        out["models"][kind] = {
            "tau": kendall_tau(test_preds[kind], y),
            "r2": r2_score(test_preds[kind], y),
            "val_tau": kendall_tau(val_preds[kind], ds.y[val]),
            "fit_seconds": fit_s,
        }
        log(f"{split} seed {seed} {kind}: {out['models'][kind]}")
    weights, val_tau = ensemble_select(val_preds, ds.y[val])
    mix = sum(w * test_preds[k] for k, w in weights.items())  # label units
    out["models"]["best_combination"] = {
        "tau": kendall_tau(mix, ds.y[test]),
        "r2": r2_score(mix, ds.y[test]),
        "val_tau": val_tau,
        "weights": weights,
    }
    out.update(n_train=int(len(train)), n_val=int(len(val)), n_test=int(len(test)))
    return out


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of tau and R² per model; the margins over the best StatNN
    (by mean tau) of the best metanet (gmn, gmn_t, probes) and of the best combination."""
    out: dict[str, Any] = {}
    for k in [*MODELS, "best_combination"]:
        rows = [s["models"].get(k, {}) for s in per_seed]
        taus = [r["tau"] for r in rows if "tau" in r]
        r2s = [r["r2"] for r in rows if "r2" in r]
        if not taus:
            out[k] = None
            continue
        out[k] = {
            "tau_mean": float(np.mean(taus)),
            "tau_std": float(np.std(taus)),
            "r2_mean": float(np.mean(r2s)),
            "r2_std": float(np.std(r2s)),
            "n_seeds": len(taus),
        }
    mean = {k: v["tau_mean"] for k, v in out.items() if v}
    stat = [mean[k] for k in ("statnn_gbm", "statnn_mlp") if k in mean]
    metas = [mean[k] for k in ("gmn", "gmn_t", "probes") if k in mean]
    # the metanets alone (the ensemble may be StatNN alone), then the ensemble
    out["best_metanet_minus_best_statnn"] = (max(metas) - max(stat)) if stat and metas else None
    comb = mean.get("best_combination")
    out["best_combination_minus_best_statnn"] = (comb - max(stat)) if stat and comb else None
    return out


def cost(ds, cfg, log) -> dict[str, Any]:
    """Probe responses of 256 networks of the park's largest architecture in one vmapped
    call (networks/s; the probe model's program, `metanets.probegen.group_fns`, and the
    plain `Target.apply_population` beside it), and FLOPs per network of the probe model
    and the graph models."""
    import jax.numpy as jnp

    from bench.common import timed
    from hyper import population as pop_ops
    from metanets import predict, probegen

    g = int(max(range(len(ds.targets)), key=lambda i: ds.targets[i].num_params))
    target = ds.targets[g]
    n = int(jax.tree.leaves(ds.populations[g])[0].shape[0])
    pop = pop_ops.take(ds.populations[g], np.arange(256) % n)
    count = int(predict.DEFAULTS["probes"]["count"])
    probes = jnp.zeros((count, *target.input_shape), jnp.float32)

    def seconds(fn, runs: int) -> list[float]:  # wall seconds per call after a warm-up call
        jax.block_until_ready(fn(pop, probes))
        return [timed(lambda: fn(pop, probes))[1] for _ in range(runs)]

    times = seconds(probegen.group_fns(target).forward, 5)  # what the probe model runs
    plain = seconds(target.apply_population, 3)  # the plain vmapped forward pass, for reference
    apply = jax.jit(jax.vmap(target.pure_apply, in_axes=(0, None)))
    net_flops = apply.lower(pop, probes).compile().cost_analysis()
    net_flops = float((net_flops[0] if isinstance(net_flops, list) else net_flops)["flops"]) / 256
    readout = predict.build_module(
        "probes",
        {**predict.DEFAULTS["probes"], "input_shape": list(target.input_shape), "out_features": 10},
    )
    from flax import nnx

    gd, st = nnx.split(readout)
    r = jnp.zeros((256, count, 10))
    rc = jax.jit(lambda s, x: nnx.merge(gd, s).read(x)).lower(st, r).compile().cost_analysis()
    read_flops = float((rc[0] if isinstance(rc, list) else rc)["flops"]) / 256
    out = {
        "architecture": target.name,
        "networks": 256,
        "probes": count,
        "seconds_runs": times,
        "networks_per_s": 256 / min(times),
        "apply_population_networks_per_s": 256 / min(plain),
        "probe_model_flops_per_network": net_flops + read_flops,
    }
    for kind in ("gmn", "gmn_t"):
        model, bank = predict.build_gmn(ds, kind=kind, **{
            k: v for k, v in cfg["fit"][kind].items() if k in ("hidden", "num_layers")
        })  # fmt: skip
        gb = bank.batch(np.flatnonzero(ds.group == g)[:1].repeat(64), batch_size=64)
        gd2, st2 = nnx.split(model)
        c = jax.jit(lambda s, x, gd2=gd2: nnx.merge(gd2, s)(x)).lower(st2, gb).compile()
        ca = c.cost_analysis()
        out[f"{kind}_flops_per_network"] = (
            float((ca[0] if isinstance(ca, list) else ca)["flops"]) / 64
        )
    out["gmn_over_probes_flops"] = (
        out["gmn_flops_per_network"] / out["probe_model_flops_per_network"]
    )
    log(f"cost: {out}")
    return out


def run_split(split: str, quick: bool, cache: Path, build_zoo, log) -> dict[str, Any]:
    cfg = QUICK if quick else FULL
    t_start = time.perf_counter()
    zoos = _zoos(split, cfg, cache, build_zoo)
    result: dict[str, Any] = {
        "split": split,
        "seeds": cfg["seeds"],
        "fit": {k: fit_settings(cfg, split, k) for k in MODELS},
    }
    per_seed = []
    ds = None
    for seed in cfg["seeds"]:  # one dataset (and its compiled programs) for every seed
        ds, train, test = _dataset_and_splits(split, zoos, seed, ds)
        if seed == cfg["seeds"][0]:
            result["data"] = {
                "n_samples": len(ds),
                "n_targets": len(ds.targets),
                "n_architectures": len(
                    {tuple((s.path, s.shape) for s in t.spec) for t in ds.targets}
                ),  # fmt: skip
                "label_std": float(ds.y.std()),
            }
            log(f"{split}: {result['data']}")
        per_seed.append({"seed": seed, **run_seed(split, ds, train, test, cfg, seed, log)})
    result["per_seed"] = per_seed
    result["summary"] = summarise(per_seed)
    if split == "wild" and ds is not None:
        result["cost"] = cost(ds, cfg, log)
    if split in ("wild", "unseen"):
        result["architectures"] = park_architectures(cfg["park_archs"])
    result["seconds"] = time.perf_counter() - t_start
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result
