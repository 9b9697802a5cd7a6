"""Generative models of weights against the baselines that expose memorization (issue 29).

For each architecture (the digits MLP 64-32-10 and a MNIST-1D CNN, 1-D convolutions
16-16-16, kernel 5): a zoo of independent-seed runs (`hyper.zoo`: learning rates
1e-3..3e-2, each run from its own seed) checkpointed at several epochs; the *training set*
holds every run once, at one checkpointed epoch drawn for it (so runs are independent and
test accuracies span tens of points, as accuracy conditioning needs). The weight generator
(`generators.weightgen`, accuracy-conditioned, classifier-free, with the autoencoder's
functional term) is trained on it, after aligning its networks to member 0 by weight
matching (`hyper.align`), once per functional weight (1 and 3; `fit_generator` keeps one by
the sampler rule below, on the zoo's training examples), and sampled; the
table then scores, through the same code (`generators.novelty`), the generated networks,
the training networks themselves, and the baselines of Zeng et al. 2026: Gaussian noise on
training weights (absolute amplitudes swept 0.01..0.3, 0.06 and 0.12 included), the average
of 16 random training networks, a per-coordinate Gaussian fit.

Columns: best and median test accuracy, the fraction within 1 point of the training
median, the median max-IoU of misclassified test sets to the training set (the training
row leaves each network's own IoU out), the median permutation-aligned nearest-neighbour
L2 (`novelty.nearest_neighbour_l2`), diversity (mean pairwise IoU). Digits has 450 test
examples, so IoU moves in coarse steps there (a 95% network makes ~22 errors); MNIST-1D's
1,000 test examples are used whole.

- **goal** (per architecture): the model's (median accuracy, median max-IoU) point, with
  the sampler chosen on the zoo's training examples (`select_sampler`: accuracy prompt,
  guidance, temperature; the test split is never read for it), lies
  strictly below the noise curve (the noise medians interpolated at the model's median
  accuracy; None outside the swept range), has lower max-IoU than the 16-average and the
  Gaussian fit at equal or higher accuracy, and its median accuracy is within 1 point of
  the training networks'. ``not_dominated_by`` says, more softly, whether a baseline point
  has both higher-or-equal accuracy and lower-or-equal max-IoU. The model is also sampled
  at lower temperatures (``model_t<T>`` rows, ``model_temperature_curve``: its own
  accuracy-novelty curve, each point beside the noise curve at its accuracy); the goal
  reads the chosen sampler (``model_selected``); ``goal_check_unprompted`` is the same
  check of the unprompted model at temperature 1 (``model``).
- **conditioning** (per architecture): >= 5 accuracy prompts between the training set's
  15th and 85th accuracy percentiles (>= 10 points apart in the full run), given to the
  model through the `PromptCalibration` of the guidance chosen on the zoo's training
  examples (`generators.sampler_choice`); Spearman of prompted vs achieved median
  accuracy, mean |achieved - prompted| in points (``default_guidance``: the prompts given
  as they are, guidance 1).
- **task conditioning** (digits MLP): a zoo of networks trained on class subsets
  (`classes` grid axis); held-out subsets (not in the zoo) are prompted, and the generated
  networks' accuracy on the prompted classes (argmax over those classes, on their test
  examples) is set beside networks trained on those subsets.
- **speed** (digits MLP): networks sampled and evaluated on the test split per second
  (M = 1,000; goal < 10 s), and the peak resident-memory growth during sampling and
  evaluating M = 256 and M = 4,096 networks (a thread samples /proc/self/statm every 5 ms).

Usage::

  python bench/weightgen.py [--quick] [--out FILE] [--cache DIR] [--stand-in]
                            [--archs digits_mlp,...] [--no-task]

Writes ``bench/results/weightgen.json`` (``--quick``: ``bench/results/quick/``), one JSON
line on stdout, logs on stderr. Zoos are cached under ``--cache`` (default: a folder in
the system temp dir) and reused when complete. ``--stand-in`` replaces the model by a
retrieval stand-in (the training networks nearest the prompt plus noise 0.03) to test the
pipeline without `generators.weightgen`; it writes ``weightgen_standin.json`` and no goals.
``--archs`` (a subset of the architectures) and ``--no-task`` (no task-conditioning zoo)
make a partial run, a diagnosis: it needs ``--out`` and checks the goals of what it ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script

import jax  # noqa: E402
import numpy as np  # noqa: E402

import hyper  # noqa: E402
from bench.common import goal, logger, machine, stdout_to_stderr, write_result  # noqa: E402
from generators import novelty, sampler_choice  # noqa: E402
from hyper import data as data_lib  # noqa: E402
from hyper import population as pop  # noqa: E402
from hyper import zoo  # noqa: E402
from hyper.zoo_tasks import class_masks  # noqa: E402

SCHEMA_VERSION = 1
log = logger("weightgen")

NOISE = (0.01, 0.02, 0.03, 0.06, 0.12, 0.2, 0.3)
ARCHS = {
    "digits_mlp": {
        "preset": "digits-mlp",
        "arch": {"arch": "mlp", "widths": [32], "out_features": 10},
    },
    "mnist1d_cnn": {
        "preset": "mnist1d-cnn",
        "arch": {"arch": "cnn1d", "channels": [16, 16, 16], "kernel_size": 5, "out_features": 10},
    },
}
FULL = {
    "lrs": [1e-3, 3e-3, 1e-2, 3e-2],
    "seeds": 128,  # per learning rate: 512 runs
    "epochs": {"digits_mlp": 20, "mnist1d_cnn": 30},
    "ckpt": {"digits_mlp": [1, 2, 3, 5, 10, 20], "mnist1d_cnn": [1, 2, 4, 8, 15, 30]},
    "generated": 200,
    "noise": NOISE,
    "prompts": 6,
    "per_prompt": 100,
    # the guidance of the prompted samplers, chosen on the training examples
    # (`sampler_choice.choose_prompt_guidance`)
    "prompt_guidance": sampler_choice.PROMPT_GUIDANCE,
    # prompts given through a `PromptCalibration` measured at this many prompts (training
    # examples): without it the samples regress towards the zoo's middle
    "calibration_points": 11,
    "task_subsets": 40,
    "task_seeds": 13,  # 520 task networks
    "task_heldout": 5,
    "task_ref_seeds": 16,
    "per_task": 100,
    "speed_n": 1000,
    "memory_m": (256, 4096),
    "model_overrides": {},
    # the autoencoder's functional term (`generators.weightgen_train`), on the task's
    # training inputs: the MNIST-1D CNN's reconstructions keep their function with it
    # (median accuracy of unprompted samples 0.18 -> 0.62 on training examples, issue 29).
    # One model per weight; `fit_generator` keeps the one whose chosen sampler does best
    # on the training examples (`select_sampler`'s rule).
    "functional_weights": (1.0, 3.0),
    # the model sampled at lower temperatures too (`WeightGen.sample(temperature=...)`):
    # its own accuracy-novelty curve beside the noise baseline's
    "temperatures": (0.25, 0.5, 0.75),
    # the sampler the goal reads: prompt (a quantile of the training networks' accuracies;
    # None: unprompted), guidance and temperature chosen on the zoo's training examples
    # (`select_sampler`), never on the test split
    "sampler_grid": sampler_choice.SAMPLER_GRID,
    # The generator trains on the networks aligned to member 0 (`hyper.align`): median
    # sampled accuracy 0.80 against 0.67 unaligned on a 510-network digits zoo (issue 29's
    # first measurement); novelty is measured against the unaligned originals (the same
    # functions, so the same IoU; NN-L2 aligns anyway).
    "align": True,
}
QUICK = {
    "lrs": [3e-3, 3e-2],
    "seeds": 16,
    "epochs": {"digits_mlp": 3, "mnist1d_cnn": 2},
    "ckpt": {"digits_mlp": [1, 3], "mnist1d_cnn": [1, 2]},
    "generated": 32,
    "noise": (0.01, 0.06, 0.12, 0.3),
    "prompts": 5,
    "per_prompt": 16,
    "prompt_guidance": (1.0, 2.0),
    "calibration_points": 5,
    "task_subsets": 6,
    "task_seeds": 4,
    "task_heldout": 2,
    "task_ref_seeds": 4,
    "per_task": 16,
    "speed_n": 256,
    "memory_m": (64, 256),
    # `WeightGenConfig` fields (the quick run must stay < 2 min)
    "model_overrides": {"ae_steps": 200, "flow_steps": 300},
    "functional_weights": (1.0, 3.0),
    "temperatures": (0.5,),
    "sampler_grid": {
        "prompt_quantiles": (None, 0.5, 1.0),
        "guidance": (1.0, 2.0),
        "temperature": (1.0, 0.5),
    },
    "align": True,
}


# --- zoos -------------------------------------------------------------------------------


def cached_zoo(directory: Path, **kw: Any) -> zoo.Zoo:
    """The zoo built in `directory`, or resumed/rebuilt there when it holds another."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        z = zoo.build(directory, resume=True, progress=False, **kw)
    except ValueError as e:  # another zoo (or something else) is cached there
        log(f"rebuilding {directory}: {e}")
        z = zoo.build(directory, overwrite=True, progress=False, **kw)
    log(f"zoo {directory.name}: {z.num_members} runs in {time.perf_counter() - t0:.1f}s")
    return z


def training_set(z: zoo.Zoo, seed: int) -> tuple[hyper.Target, Any, np.ndarray, list[dict]]:
    """Every run of `z` once, at one checkpointed epoch drawn for it (independent runs).

    Returns ``(target, params [runs, ...], test_acc [runs], rows)``.
    """
    epochs = z.checkpoint_epochs
    rng = np.random.default_rng(seed)
    n = z.num_members
    pick = rng.integers(0, len(epochs), n)
    by_epoch = {e: zoo.load(z.directory, epoch=e) for e in sorted({epochs[i] for i in pick})}
    parts, rows = [], []
    for e, ze in by_epoch.items():
        (g,) = ze.groups  # one structural group: one target
        order = {m["member"]: i for i, m in enumerate(g.members)}
        erows = {r["member"]: r for r in ze.rows(e)}
        ids = [m for m in sorted(order) if epochs[pick[m]] == e]
        parts.append(pop.take(g.params, np.array([order[m] for m in ids])))
        rows += [erows[m] for m in ids]
    params = pop.concatenate(parts)
    acc = np.array([r["test_acc"] for r in rows])
    return ze.groups[0].target, params, acc, rows


# --- the sampler ---------------------------------------------------------------------------


class RetrievalStandIn:
    """Pipeline stand-in for the model (not a result): the training networks nearest the
    prompt (accuracy, or most classes shared), plus absolute noise 0.03."""

    def __init__(self, target, params, accuracy=None, classes=None, amplitude=0.03):
        self.target, self.params, self.amplitude = target, params, amplitude
        self.accuracy, self.classes = accuracy, classes
        condition = "accuracy" if accuracy is not None else "task" if classes is not None else None
        self.config = SimpleNamespace(condition=condition)  # what the choosers read

    def sample(
        self, key, n, accuracy=None, classes=None, guidance=None, temperature=1.0, chunk=256
    ):
        m = jax.tree.leaves(self.params)[0].shape[0]
        amplitude = self.amplitude * temperature
        if accuracy is None and classes is None:  # unprompted: any training network
            return novelty.noise_baseline(key, self.target, self.params, n, amplitude)
        score = np.zeros(m)
        if accuracy is not None and self.accuracy is not None:
            score = -np.abs(self.accuracy - accuracy)
        if classes is not None and self.classes is not None:
            want = class_masks([classes], self.classes.shape[1])[0]
            score = (self.classes & want).sum(1) / (self.classes | want).sum(1)
        pool = np.argsort(-score, kind="stable")[: max(8, m // 16)]
        base = pop.take(self.params, pool)
        return novelty.noise_baseline(key, self.target, base, n, amplitude)


def train_model(
    target, params, *, cfg, condition, inputs, accuracy=None, classes=None, stand_in=False,
    functional_weight=None,
):  # fmt: skip
    """The generator of `params` (`inputs`: the task's training inputs, read by the
    autoencoder's functional term; its weight `functional_weight`, default the first of
    ``cfg["functional_weights"]``)."""
    if stand_in:
        return RetrievalStandIn(target, params, accuracy=accuracy, classes=classes)
    try:
        from generators import weightgen
    except ImportError as e:
        raise SystemExit(
            "bench/weightgen.py needs generators.weightgen (the weight generator of issue 29), "
            f"which is not importable here ({e}); run with --stand-in to test the pipeline"
        ) from e
    if functional_weight is None:
        functional_weight = cfg["functional_weights"][0]
    wcfg = weightgen.WeightGenConfig(
        condition=condition, seed=0, functional_weight=functional_weight,
        **cfg["model_overrides"],
    )  # fmt: skip
    t0 = time.perf_counter()
    if cfg["align"]:  # the same functions, permuted towards member 0 (weight matching)
        from hyper.align import align_population

        params, _ = align_population(target, params, key=jax.random.key(0))
        log(f"training networks aligned to member 0 in {time.perf_counter() - t0:.1f}s")
    gen = weightgen.train(
        target, params, config=wcfg, accuracy=accuracy, classes=classes, progress=False,
        inputs=inputs if wcfg.functional_weight > 0 else None,
    )  # fmt: skip
    log(
        f"weightgen ({condition}, functional weight {functional_weight}) trained in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    return gen


# --- measurements -----------------------------------------------------------------------------


def _r(x: float | None, nd: int = 4) -> float | int | None:
    if x is None or isinstance(x, int):
        return x
    return round(float(x), nd)


def select_sampler(train_p, train_acc, gen, data, cfg, key, calibration) -> dict[str, Any]:
    """The sampler settings the goal reads, chosen on the zoo's *training* examples by
    `generators.sampler_choice.choose_sampler` (the test split is never read): over
    ``cfg["sampler_grid"]`` and its prompts given through `calibration` (the
    `prompt_calibration`'s), the setting whose median accuracy there is within 1 point of
    the training networks' with the lowest median max-IoU, else the closest accuracy."""
    x, y = data.x_train, data.y_train
    c = sampler_choice.choose_sampler(
        gen, train_p, x, y, key=key, accuracy=train_acc, n=cfg["generated"],
        grid=cfg["sampler_grid"], calibration=calibration,
    )  # fmt: skip
    log(f"sampler chosen on {len(y)} training examples: {c['chosen']} ({c['chosen_row']})")

    def rounded(row: dict[str, Any]) -> dict[str, Any]:
        return {k: _r(v) if k.startswith("median") else v for k, v in row.items()}

    return {
        "selection_examples": c["examples"],
        "training_median_acc_on_selection": _r(c["training_median_acc"]),
        "grid": [rounded(r) for r in c["grid"]],
        "chosen": c["chosen"],
        "chosen_row": rounded(c["chosen_row"]),
    }


def fit_generator(target, train_p, train_acc, data, cfg, key, stand_in=False):
    """The generator the goals read, with its prompt calibration and sampler, all chosen on
    the zoo's *training* examples: one model per ``cfg["functional_weights"]`` (aligned,
    accuracy-conditioned), each with its `prompt_calibration` and `select_sampler`; the
    kept model is the one whose chosen sampler wins by `sampler_choice.pick` (within 1
    point of the training networks' median accuracy there, the lowest max-IoU).

    Returns ``(gen, prompting, sampler, selection)`` (`selection`: one row per weight)."""
    weights = (None,) if stand_in else cfg["functional_weights"]
    k_novelty, k_cond = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    fits, rows = [], []
    for w in weights:
        gen = train_model(
            target, train_p, cfg=cfg, condition="accuracy", accuracy=train_acc,
            inputs=data.x_train, stand_in=stand_in, functional_weight=w,
        )  # fmt: skip
        prompting = prompt_calibration(
            train_p, train_acc, gen, data, cfg, jax.random.fold_in(k_cond, 100)
        )
        sampler = select_sampler(
            train_p, train_acc, gen, data, cfg, jax.random.fold_in(k_novelty, 2000),
            prompting["calibration"],
        )  # fmt: skip
        fits.append((gen, prompting, sampler))
        rows.append({
            "functional_weight": w, **sampler["chosen_row"],
            "prompt_guidance": prompting["guidance"],
            "prompt_mean_abs_error": _r(min(r["mean_abs_error"] for r in prompting["rows"])),
        })  # fmt: skip
    want = fits[0][2]["training_median_acc_on_selection"]
    best = rows.index(sampler_choice.pick(rows, want))
    log(f"functional weight chosen on the training examples: {rows[best]['functional_weight']}")
    return (*fits[best], {"rows": rows, "chosen": rows[best]["functional_weight"]})


def novelty_table(arch, target, train_p, train_acc, gen, data, cfg, key, sampler) -> dict[str, Any]:
    """The table for one architecture: model, training set and every baseline; the model
    unprompted at temperature 1 (``model``) and with the sampler `select_sampler` chose
    (`sampler`; ``model_selected``, the row the goal reads)."""
    x, y = data.x_test, data.y_test
    _, train_wrong = novelty.evaluate(target, train_p, x, y)
    n = cfg["generated"]
    keys = iter(jax.random.split(key, 64))
    populations = {"model": gen.sample(next(keys), n)}
    for a in cfg["noise"]:
        populations[f"noise_{a}"] = novelty.noise_baseline(next(keys), target, train_p, n, a)
    populations["average_16"] = novelty.average_baseline(next(keys), train_p, n, k=16)
    populations["gaussian_fit"] = novelty.gaussian_baseline(next(keys), train_p, n)
    temps = cfg.get("temperatures", ())
    for j, t in enumerate(temps):  # own keys: the rows above keep theirs
        k = jax.random.fold_in(key, 1000 + j)
        populations[f"model_t{t}"] = gen.sample(k, n, temperature=float(t))
    populations["model_selected"] = gen.sample(
        jax.random.fold_in(key, 3000), n, **sampler["chosen"]
    )
    rows: dict[str, Any] = {
        "training": novelty.summary(
            train_acc, train_wrong, train_acc, train_wrong, exclude_self=True
        )
    }
    points = {}
    for name, p in populations.items():
        t0 = time.perf_counter()
        acc, wrong = novelty.evaluate(target, p, x, y)
        nn = novelty.nearest_neighbour_l2(target, p, train_p, key=next(keys))
        rows[name] = {
            k: _r(v)
            for k, v in novelty.summary(acc, wrong, train_acc, train_wrong, nn_l2=nn).items()
        }
        points[name] = (
            float(np.median(acc)),
            float(np.median(novelty.max_similarity(wrong, train_wrong))),
        )
        log(f"{arch} {name}: {rows[name]} ({time.perf_counter() - t0:.1f}s)")
    rows["training"] = {k: _r(v) for k, v in rows["training"].items()}
    curve = [points[f"noise_{a}"] for a in cfg["noise"]]
    train_med = float(np.median(train_acc))

    def noise_at(acc: float) -> float | None:  # the noise curve's max-IoU at `acc`
        return novelty.frontier_at([c[0] for c in curve], [c[1] for c in curve], acc)

    def goal_check(name: str) -> dict[str, Any]:
        m_acc, m_iou = points[name]
        at = noise_at(m_acc)
        check: dict[str, Any] = {
            "row": name,
            "model_median_acc": _r(m_acc),
            "model_median_max_iou": _r(m_iou),
            "noise_curve_max_iou_at_model_acc": _r(at),
            "below_noise_curve": int(at is not None and m_iou < at),
            "median_acc_gap_to_training_points": _r(100 * abs(m_acc - train_med), 2),
        }
        for b in ("average_16", "gaussian_fit"):
            b_acc, b_iou = points[b]
            check[f"beats_{b}"] = int(m_acc >= b_acc and m_iou < b_iou)
            check[f"not_dominated_by_{b}"] = int(not (b_acc >= m_acc and b_iou <= m_iou))
        check["met"] = int(
            check["below_noise_curve"]
            and check["beats_average_16"]
            and check["beats_gaussian_fit"]
            and check["median_acc_gap_to_training_points"] <= 1.0
        )
        return check

    return {
        "test_examples": int(len(y)),
        "training_networks": int(len(train_acc)),
        "generated_per_row": n,
        "noise_amplitudes": list(cfg["noise"]),
        "noise_scale": "absolute (the study's): std = amplitude on every trainable coordinate",
        "table": rows,
        "noise_curve": [
            {"amplitude": a, "median_acc": _r(c[0]), "median_max_iou": _r(c[1])}
            for a, c in zip(cfg["noise"], curve, strict=True)
        ],
        "model_temperature_curve": [
            {
                "temperature": t,
                "median_acc": _r(points[name][0]),
                "median_max_iou": _r(points[name][1]),
                "noise_curve_max_iou_at_its_acc": _r(noise_at(points[name][0])),
            }
            for t, name in [(t, f"model_t{t}") for t in temps] + [(1.0, "model")]
        ],
        "sampler_selection": sampler,
        "goal_check": goal_check("model_selected"),
        "goal_check_unprompted": goal_check("model"),
    }


def conditioning_prompts(train_acc, cfg) -> np.ndarray:
    """The conditioning goal's prompts: ``cfg["prompts"]`` from the training networks'
    15th to their 85th accuracy percentile."""
    lo, hi = np.quantile(train_acc, [0.15, 0.85])
    return np.round(np.linspace(lo, hi, cfg["prompts"]), 3)


def prompt_calibration(train_p, train_acc, gen, data, cfg, key) -> dict[str, Any]:
    """The guidance and its `PromptCalibration` chosen on the zoo's *training* examples
    (`sampler_choice.choose_prompt_guidance` with ``calibrate=True``, on the conditioning
    prompts), for `accuracy_conditioning` and `select_sampler`."""
    chosen = sampler_choice.choose_prompt_guidance(
        gen, train_p, data.x_train, data.y_train, key=key, accuracy=train_acc,
        prompts=conditioning_prompts(train_acc, cfg).tolist(), n=cfg["per_prompt"],
        guidance=cfg["prompt_guidance"], calibrate=True, points=cfg["calibration_points"],
    )  # fmt: skip
    cal = chosen["calibration"]
    log(
        f"prompt guidance chosen on {chosen['examples']} training examples: {chosen['guidance']}"
        f" (calibrated; reachable {np.round(cal.reachable, 3).tolist()})"
    )
    return chosen


def accuracy_conditioning(target, train_acc, gen, data, cfg, key, chosen) -> dict[str, Any]:
    """Prompted against achieved median test accuracy over the `conditioning_prompts`,
    given through the `PromptCalibration` of the guidance `prompt_calibration` chose
    (`chosen`; the goal's figures); and the prompts given as they are with guidance 1
    (``default_guidance``, for comparison)."""
    from scipy.stats import spearmanr

    prompts = conditioning_prompts(train_acc, cfg)
    cal = chosen["calibration"]

    def measure(guidance: float, calibration=None) -> dict[str, Any]:
        given = [calibration(float(p)) if calibration else float(p) for p in prompts]
        achieved = []
        for i, p in enumerate(given):
            g = gen.sample(
                jax.random.fold_in(key, i), cfg["per_prompt"], accuracy=p, guidance=guidance
            )
            acc, _ = novelty.evaluate(target, g, data.x_test, data.y_test)
            achieved.append(float(np.median(acc)))
        achieved = np.array(achieved)
        rho = spearmanr(prompts, achieved).statistic if len(set(achieved)) > 1 else 0.0
        return {
            "guidance": guidance,
            "calibrated": calibration is not None,
            "given_prompts": [_r(p) for p in given],
            "achieved_median": [_r(a) for a in achieved],
            "spearman": _r(rho),
            "mean_abs_error_points": _r(100 * np.mean(np.abs(achieved - prompts)), 2),
        }

    def rounded(r: dict[str, Any]) -> dict[str, Any]:
        return {
            **r,
            "given": [_r(a) for a in r["given"]],
            "achieved_median": [_r(a) for a in r["achieved_median"]],
            "mean_abs_error": _r(r["mean_abs_error"]),
        }

    return {
        "prompts": prompts.tolist(),
        "span_points": _r(100 * (prompts[-1] - prompts[0]), 2),
        "per_prompt": cfg["per_prompt"],
        **measure(chosen["guidance"], cal),
        "guidance_selection": {
            "examples": chosen["examples"],
            "targets_on_selection": [_r(t) for t in chosen["targets"]],
            "rows": [rounded(r) for r in chosen["rows"]],
            "calibration": {
                k: [_r(v) for v in vs] if isinstance(vs, list) else vs
                for k, vs in cal.to_json().items()
            },
        },
        "default_guidance": measure(1.0),
    }


def class_subsets(count: int, rng: np.random.Generator, exclude=()) -> list[list[int]]:
    out: list[list[int]] = []
    while len(out) < count:
        s = sorted(rng.choice(10, size=int(rng.integers(3, 6)), replace=False).tolist())
        if s not in out and s not in exclude:
            out.append(s)
    return out


def task_conditioning(cfg, cache, stand_in, key) -> dict[str, Any]:
    data = data_lib.load("digits")
    rng = np.random.default_rng(29)
    held = class_subsets(cfg["task_heldout"], rng)
    seen = class_subsets(cfg["task_subsets"], rng, exclude=held)
    common = {
        "preset": "digits-mlp",
        "arch": ARCHS["digits_mlp"]["arch"],
        "epochs": cfg["epochs"]["digits_mlp"],
        "checkpoint_epochs": [cfg["epochs"]["digits_mlp"]],
        "batch_size": 64,
    }
    grid = {
        "learning_rate": [1e-2],
        "weight_decay": [0.0],
        "init_scale": [1.0],
        "train_fraction": [1.0],
        "activation": ["relu"],
        "dropout": [0.0],
        "optimizer": ["adam"],
    }
    tz = cached_zoo(
        cache / "task_zoo", grid={**grid, "classes": seen}, seeds=cfg["task_seeds"], **common
    )
    rz = cached_zoo(
        cache / "task_heldout",
        grid={**grid, "classes": held},
        seeds=list(range(1000, 1000 + cfg["task_ref_seeds"])),
        **common,
    )
    (g,) = tz.groups
    multihot = class_masks([m["classes"] for m in g.members], 10)
    gen = train_model(
        g.target, g.params, cfg=cfg, condition="task", classes=multihot, stand_in=stand_in,
        inputs=data.x_train,
    )  # fmt: skip
    out = {}
    for i, s in enumerate(held + seen[:2]):
        p = gen.sample(jax.random.fold_in(key, i), cfg["per_task"], classes=s)
        mask = np.repeat(class_masks([s], 10), cfg["per_task"], axis=0)
        acc, _ = novelty.evaluate(g.target, p, data.x_test, data.y_test, class_mask=mask)
        trained = [r["test_acc"] for r in (rz if s in held else tz).rows() if r["classes"] == s]
        out[",".join(map(str, s))] = {
            "in_zoo": s in seen,
            "generated_median_acc": _r(np.median(acc)),
            "trained_median_acc": _r(np.median(trained)),
            "trained_networks": len(trained),
            "chance": _r(1 / len(s)),
        }
    return {"zoo_subsets": len(seen), "zoo_networks": tz.num_members, "subsets": out}


class PeakRSS:
    """The peak resident-memory growth (MiB) over a block, sampled every 5 ms."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.growth_mib = (self.peak - self.base) / 2**20


def speed(target, gen, data, cfg, key) -> dict[str, Any]:
    def run(n, k):
        g = gen.sample(k, n, chunk=256)
        acc, _ = novelty.evaluate(target, g, data.x_test, data.y_test, chunk=256)
        return acc

    n = cfg["speed_n"]
    t0 = time.perf_counter()
    run(n, jax.random.fold_in(key, 0))
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(n, jax.random.fold_in(key, 1))
    warm = time.perf_counter() - t0
    memory = {}
    for m in cfg["memory_m"]:
        with PeakRSS() as peak:
            run(m, jax.random.fold_in(key, m))
        memory[str(m)] = _r(peak.growth_mib, 1)
    return {
        "n": n,
        "seconds_first_call": _r(cold, 2),
        "seconds": _r(warm, 2),
        "networks_per_second": _r(n / warm, 1),
        "seconds_per_1000": _r(1000 * warm / n, 2),
        "peak_rss_growth_mib": memory,
    }


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, < 2 minutes")
    ap.add_argument("--out", default=None, help="results file")
    ap.add_argument(
        "--cache", default=str(Path(tempfile.gettempdir()) / "weightspace-weightgen-bench")
    )
    ap.add_argument("--stand-in", action="store_true", help="retrieval stand-in for the model")
    ap.add_argument("--archs", default=",".join(ARCHS), help="comma-separated subset of ARCHS")
    ap.add_argument("--no-task", action="store_true", help="skip task conditioning")
    args = ap.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    unknown = sorted(set(archs) - set(ARCHS))
    if unknown or not archs:
        ap.error(f"--archs: unknown {unknown}; expected a subset of {list(ARCHS)}")
    partial = archs != list(ARCHS) or args.no_task
    if partial and args.out is None:
        ap.error("a partial run (--archs, --no-task) needs --out: it is not the benchmark")
    hyper.sharding.use_cpu_cores()
    cfg = QUICK if args.quick else FULL
    cache = Path(args.cache) / ("quick" if args.quick else "full")
    t_start = time.time()
    mach = machine()
    key = jax.random.key(29)
    result: dict[str, Any] = {
        "sampler": "stand-in: nearest training networks + noise 0.03"
        if args.stand_in
        else "generators.weightgen",
        "zoo": {
            "learning_rates": cfg["lrs"],
            "seeds_per_lr": cfg["seeds"],
            "epochs": cfg["epochs"],
            "checkpoint_epochs": cfg["ckpt"],
        },
        "archs": {},
    }
    if partial:
        result["partial"] = {"archs": archs, "task_conditioning": not args.no_task}
    with stdout_to_stderr():
        for i, (arch, spec) in enumerate(ARCHS.items()):
            if arch not in archs:
                continue
            data = data_lib.load(zoo.PRESETS[spec["preset"]].dataset)
            z = cached_zoo(
                cache / arch,
                preset=spec["preset"],
                arch=spec["arch"],
                grid={
                    "learning_rate": cfg["lrs"],
                    "weight_decay": [0.0],
                    "init_scale": [1.0],
                    "train_fraction": [1.0],
                    "activation": ["relu"],
                    "dropout": [0.0],
                    "optimizer": ["adam"],
                },
                seeds=cfg["seeds"],
                epochs=cfg["epochs"][arch],
                checkpoint_epochs=cfg["ckpt"][arch],
            )
            target, train_p, train_acc, _ = training_set(z, seed=i)
            q = np.quantile(train_acc, [0, 0.5, 1]).round(3).tolist()
            log(f"{arch}: {len(train_acc)} networks, {target.num_params} params, test acc {q}")
            k = jax.random.fold_in(key, i)
            gen, prompting, sampler, selection = fit_generator(
                target, train_p, train_acc, data, cfg, k, stand_in=args.stand_in
            )
            entry = {
                "params": target.num_params,
                "training_acc_range_points": _r(100 * (train_acc.max() - train_acc.min()), 2),
                "functional_weight_selection": selection,
                "novelty": novelty_table(
                    arch,
                    target,
                    train_p,
                    train_acc,
                    gen,
                    data,
                    cfg,
                    jax.random.fold_in(k, 0),
                    sampler,
                ),  # fmt: skip
                "conditioning": accuracy_conditioning(
                    target, train_acc, gen, data, cfg, jax.random.fold_in(k, 1), prompting
                ),
            }
            if arch == "digits_mlp":
                entry["speed"] = speed(target, gen, data, cfg, jax.random.fold_in(k, 2))
            result["archs"][arch] = entry
        if not args.no_task:
            result["task_conditioning"] = task_conditioning(
                cfg, cache, args.stand_in, jax.random.fold_in(key, 99)
            )
    result["machine"] = mach
    result["wall_s"] = round(time.time() - t_start, 1)
    goals = {}
    if not args.stand_in:
        for arch in archs:
            a = f"archs/{arch}"
            goals[f"{arch}_novelty"] = goal(f"{a}/novelty/goal_check/met", "==", 1)
            goals[f"{arch}_spearman"] = goal(f"{a}/conditioning/spearman", ">=", 0.9)
            goals[f"{arch}_prompt_error"] = goal(
                f"{a}/conditioning/mean_abs_error_points", "<=", 2.0
            )
        if "digits_mlp" in archs:
            goals["speed_1000_mlps"] = goal("archs/digits_mlp/speed/seconds_per_1000", "<=", 10.0)
    name = "weightgen_standin" if args.stand_in else "weightgen"
    write_result(result, args.out, name=name, schema=SCHEMA_VERSION, quick=args.quick, goals=goals)
    return result


if __name__ == "__main__":
    main()
