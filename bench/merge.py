"""Loss barriers before/after alignment, and multi-task merging, on digits (issue 9).

**barrier**: pairs of networks trained independently (different init and data order,
same recipe) on scikit-learn digits; the test cross-entropy along the straight line
``(1 - a) * theta_A + a * theta_B`` at 21 values of `a` in [0, 1]; the barrier is
``max_a [loss(a) - ((1 - a) loss(0) + a loss(1))]``. Three versions of `theta_B`: as
trained (``naive``), permuted by weight matching (``weight``), permuted by activation
matching on the training inputs (``activation``). Both permutations keep `theta_B`'s
function exactly, so only the path changes. Diagnostic: ``weight_identity_start`` is weight
matching's single descent from the identity (the default keeps, per pair, the better of it
and the sorted-weight start by the objective); ``weight_objective`` lists, per pair, the
objective ``sum <W_A, W_B'>`` beside the barrier for both. (Over 15 pairs per CNN width
8/16/32, with identity, sorted and 8 random starts, the rank correlation of objective and
barrier across starts was -0.16/-0.04/-0.10; two starts changed the mean barrier by
-0.88/+0.05/-0.21, s.e. 0.61/0.33/0.15, against the identity alone; ten starts by
-0.05/-0.09/+0.00 against two: the reason `hyper.align` runs two.) Widths: MLP 64-w-w-10 with w
in {16, 64, 256}; CNN with two 3x3 conv layers of c channels, c in {8, 16, 32} (strides 1,
2; global average pooling; dense). Reported: mean and std over pairs.

**merge_acc**: the training split is divided 80/20 (stratified) into train/validation. A
base network is trained on all ten classes for a few epochs (MLP 3, CNN 10), then copied
and fine-tuned (15 epochs, Adam 1e-3) on four class subsets {0,1,2}, {3,4,5}, {6,7},
{8,9} (only those examples; the four fine-tunes run as one vmapped program). Merges:
``average`` (the mean of the four), ``task_arithmetic``, ``ties`` (density 0.2), ``pcb``
(ratio 0.1), ``fisher`` (exact diagonal Fisher of each model on its own task's training
inputs, uniform coefficients) and, on rank-4 truncated-SVD task vectors,
``task_arithmetic_rank4`` and ``ties_rank4``. The scaling `lam` of task arithmetic, TIES
and PCB is chosen on the validation split (mean per-task accuracy), never on the test
split. Per-task accuracy is *restricted*: on the test examples of a task's classes, the
prediction is the argmax of the logits over that task's classes only (task-aware
evaluation, as in the merging papers' per-task heads). ``joint_acc`` is the plain 10-way
accuracy on the whole test split.

**digits_vit** (transformer fusion, issue 28): pairs of `digits-vit` networks (the zoo
preset: 16 patches of 2x2, width 32, 2 pre-LN blocks with 2 heads, MLP 64, gelu) trained
from different seeds (init and data order), Adam, batch 64. Four versions of `theta_B`
along the same 21-point test path: ``naive``; ``weight`` and ``activation`` (permutations
of every structural group: residual stream, query/key and value/output head dims, MLP
units; `theta_B`'s function kept); ``sinkhorn``: OT-fusion soft alignment (entropic plans
from the activation correlations on the training inputs, ``reg`` relative to the largest
correlation) applied to `theta_B` with `hyper.align.apply_transport`, which is *not*
`theta_B`'s function, so its path ends elsewhere (``sinkhorn_end_acc``). Reported per
method: the loss barrier, and the accuracy of the fused network
``merge.fuse(theta_A, theta_B, method=m)``, which is the path's midpoint (checked on the
first pair), against the two parents (``parents_acc``: mean of both, ``best_parent_acc``:
mean over pairs of the better one); then every fused network is fine-tuned for a few epochs
(Adam 1e-3, ``fused_finetuned_acc``) next to the parents continuing for as long
(``parents_finetuned_acc``, the control), as the OT-fusion paper does.

**pleas** (PLeaS merging, issue 31; `hyper.pleas`): on digits (MLP 64-64-64-10) and
MNIST-1D (CNN1d, 32-32 channels, strides 1, 2, global average pooling), two networks are
trained on disjoint halves of the classes (0-4 and 5-9: `TrainState.subset` keeps each
member to its half's examples), once from two initialisations (``independent``, Adam,
`epochs`) and once fine-tuned (`ft_epochs`, Adam 1e-3) from one base trained on all classes
for `base_epochs` (``shared_base``). Reported, as 10-way accuracy on the test split: each
network, the 2-model ensemble (mean logits), Git Re-Basin averaging (`merge.aligned_average`
after weight and after activation matching), task arithmetic (shared base; `lam` chosen on
the validation split) and `pleas.pleas_merge` at widths 1.0x, 1.25x, 1.5x, 2.0x (with the
merged target's parameter count) on `sample` unlabeled training inputs; the full run adds
``pleas_original_inputs`` (the paper code's layer inputs). Goals per dataset and start:
PLeaS at 1.0x beats Re-Basin averaging (both matchings: ``gain_1x_vs_*`` >= 0.0001), and at
1.5x ``PLeaS - ReBasin >= (ensemble - ReBasin) / 2`` (``half_gap_1.5x_vs_*`` >= 0).

Usage: ``python bench/merge.py [--quick] [--pleas-only] [--out FILE]``; writes
``bench/results/merge.json`` (``--quick``: ``bench/results/quick/merge.json``, so it never
overwrites the full results) with `bench.common.write_result` and prints the same content
as one JSON line (logs go to stderr). ``--pleas-only`` runs the PLeaS section alone and
keeps the other sections from the results file (their provenance under
``other_sections_from``). Goals: the PLeaS section's; the other sections are studies.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.common import logger, machine, result_path, write_result  # noqa: E402

# Version 2: provenance (git, schema_version) and goals written by bench.common.write_result.
SCHEMA_VERSION = 2

log = logger("merge")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import hyper.sharding  # noqa: E402
from bench.merge_pleas import (  # noqa: E402
    FT_LR,
    PLEAS_LR,
    PLEAS_SPLIT,
    PLEAS_WIDTHS,
    init_population,
    pleas_for,
    pleas_goals,
)
from hyper import align, merge, symmetry  # noqa: E402
from hyper import data as data_lib  # noqa: E402
from hyper import population as pop_ops  # noqa: E402
from hyper.architectures import make_target  # noqa: E402
from hyper.target import Target  # noqa: E402
from hyper.train import TrainConfig, Trainer, evaluate  # noqa: E402
from hyper.zoo import PRESETS  # noqa: E402

TASKS = ((0, 1, 2), (3, 4, 5), (6, 7), (8, 9))
ALPHAS = np.linspace(0.0, 1.0, 21)
LR = {"mlp": 1e-3, "cnn": 3e-3}  # Adam; the CNN trains slowly at 1e-3


def make_arch(kind: str, width: int) -> Target:
    if kind == "mlp":
        return make_target("mlp", input_shape=(8, 8), widths=(width, width), out_features=10)
    return make_target(
        "cnn2d", input_shape=(8, 8), channels=(width, width), strides=(1, 2), out_features=10
    )


# ---------------------------------------------------------------------------------------
# barrier
# ---------------------------------------------------------------------------------------


def barrier_for(
    kind: str,
    width: int,
    data: data_lib.Dataset,
    *,
    pairs: int,
    epochs: int,
    lr: float,
    seed: int,
) -> dict[str, Any]:
    target = make_arch(kind, width)
    trainer = Trainer(target, data, TrainConfig(batch_size=64))
    init = init_population(target, seed, 2 * pairs)
    state = trainer.init(jax.random.key(seed), 2 * pairs, learning_rate=lr, params=init)
    state = trainer.fit(state, epochs)
    params = jax.device_get(state.params)
    pop_a, pop_b = (
        pop_ops.take(params, range(0, 2 * pairs, 2)),
        pop_ops.take(params, range(1, 2 * pairs, 2)),
    )
    x_train = jnp.asarray(data.x_train)

    t0 = time.time()
    perms_w = align.pairwise_weight_matching(target, pop_a, pop_b, key=jax.random.key(seed))
    t_w = time.time() - t0
    t0 = time.time()
    perms_a = align.pairwise_activation_matching(target, pop_a, pop_b, x_train)
    t_a = time.time() - t0
    # Diagnostic: the single descent from the identity start (weight matching's default keeps,
    # per pair, the better of this and the sorted-weight start by the objective).
    identity = [np.tile(np.arange(g.size), (pairs, 1)) for g in symmetry.structural_groups(target)]
    perms_wi = align.pairwise_weight_matching(
        target, pop_a, pop_b, key=jax.random.key(seed), init=identity
    )
    versions = {
        "naive": pop_b,
        "weight": symmetry.permute(target, pop_b, perms_w, batched=True),
        "activation": symmetry.permute(target, pop_b, perms_a, batched=True),
        "weight_identity_start": symmetry.permute(target, pop_b, perms_wi, batched=True),
    }
    # Every interpolated network of every pair and method, evaluated in one vmapped call.
    alphas = jnp.asarray(ALPHAS, jnp.float32)

    def path(a, b):
        w = alphas.reshape((-1,) + (1,) * a.ndim)
        return (1 - w) * a[None] + w * b[None]

    @jax.jit  # one program (eagerly: one per leaf shape and method)
    def interpolate(pop_a, versions):
        paths = [jax.tree.map(jax.vmap(path), pop_a, v) for v in versions]
        return jax.tree.map(lambda *v: jnp.concatenate(v).reshape(-1, *v[0].shape[2:]), *paths)

    stacked = interpolate(pop_a, list(versions.values()))
    ev = jax.jit(lambda p: evaluate(target, p, jnp.asarray(data.x_test), jnp.asarray(data.y_test)))
    res = ev(stacked)
    losses = np.asarray(res["loss"]).reshape(len(versions), pairs, len(ALPHAS))
    accs = np.asarray(res["acc"]).reshape(len(versions), pairs, len(ALPHAS))
    endpoints = np.concatenate([accs[0, :, 0], accs[0, :, -1]])
    out: dict[str, Any] = {"width": width, "test_acc_endpoints": round(float(endpoints.mean()), 4)}
    for m, name in enumerate(versions):
        b = [merge.loss_barrier(losses[m, p], ALPHAS) for p in range(pairs)]
        out[name] = round(float(np.mean(b)), 4)
        out[f"{name}_std"] = round(float(np.std(b)), 4)
        out[f"{name}_mid_acc"] = round(float(accs[m, :, len(ALPHAS) // 2].mean()), 4)
        # Same function at alpha = 1 whatever the permutation (a sanity check).
        assert np.allclose(losses[m, :, -1], losses[0, :, -1], rtol=1e-3, atol=1e-4), name
    objective = {
        name: align.weight_matching_objective(target, pop_a, pop_b, p)
        for name, p in (("weight", perms_w), ("weight_identity_start", perms_wi))
    }
    out["weight_objective"] = {
        name: {
            "objective": [round(float(v), 3) for v in objective[name]],
            "barrier": [round(merge.loss_barrier(losses[m, p], ALPHAS), 4) for p in range(pairs)],
        }
        for m, name in enumerate(versions)
        if name in objective
    }
    out["seconds_weight_matching"] = round(t_w, 2)
    out["seconds_activation_matching"] = round(t_a, 2)
    out["curves"] = {
        name: [round(float(v), 4) for v in losses[m].mean(0)] for m, name in enumerate(versions)
    }
    log(
        f"barrier {kind} width={width}: naive={out['naive']:.3f} weight={out['weight']:.3f} "
        f"activation={out['activation']:.3f} (endpoint acc {out['test_acc_endpoints']:.3f}); "
        f"identity start only: weight={out['weight_identity_start']:.3f}"
    )
    return out


# ---------------------------------------------------------------------------------------
# digits_vit: transformer fusion
# ---------------------------------------------------------------------------------------

VIT_LR = 3e-3
VIT_FT_LR = 1e-3
SINKHORN_REG = 0.05


def stacked_paths(stacked: Any, points: int) -> Any:
    """`[paths * points, ...]` -> `[paths, points, ...]`."""
    return jax.tree.map(lambda v: v.reshape(-1, points, *v.shape[1:]), stacked)


def vit_target() -> Target:
    cfg = {k: v for k, v in PRESETS["digits-vit"].arch.items() if k != "arch"}
    return make_target(PRESETS["digits-vit"].arch["arch"], input_shape=(8, 8), **cfg)


def vit_fusion(
    data: data_lib.Dataset, *, pairs: int, epochs: int, ft_epochs: int, seed: int
) -> dict[str, Any]:
    target = vit_target()
    trainer = Trainer(target, data, TrainConfig(batch_size=64))
    t0 = time.time()
    state = trainer.init(jax.random.key(seed), 2 * pairs, learning_rate=VIT_LR)
    params = jax.device_get(trainer.fit(state, epochs).params)
    t_train = time.time() - t0
    pop_a = pop_ops.take(params, range(0, 2 * pairs, 2))
    pop_b = pop_ops.take(params, range(1, 2 * pairs, 2))
    x_train = jnp.asarray(data.x_train)
    seconds = {"train": round(t_train, 1)}

    t0 = time.time()
    perms_w = align.pairwise_weight_matching(target, pop_a, pop_b, key=jax.random.key(seed))
    seconds["weight_matching"] = round(time.time() - t0, 2)
    t0 = time.time()
    perms_a = align.pairwise_activation_matching(target, pop_a, pop_b, x_train)
    seconds["activation_matching"] = round(time.time() - t0, 2)
    t0 = time.time()
    plans = align.pairwise_sinkhorn_alignment(target, pop_a, pop_b, x=x_train, reg=SINKHORN_REG)
    seconds["sinkhorn"] = round(time.time() - t0, 2)
    versions = {
        "naive": pop_b,
        "weight": symmetry.permute(target, pop_b, perms_w, batched=True),
        "activation": symmetry.permute(target, pop_b, perms_a, batched=True),
        "sinkhorn": align.apply_transport(target, pop_b, plans, batched=True),
    }
    alphas = jnp.asarray(ALPHAS, jnp.float32)
    paths = [
        merge.interpolate(target, pop_ops.take(pop_a, p), pop_ops.take(v, p), alphas)
        for v in versions.values()
        for p in range(pairs)
    ]
    stacked = jax.tree.map(lambda *v: jnp.concatenate(v), *paths)
    ev = jax.jit(lambda p: evaluate(target, p, jnp.asarray(data.x_test), jnp.asarray(data.y_test)))
    res = ev(stacked)
    losses = np.asarray(res["loss"]).reshape(len(versions), pairs, len(ALPHAS))
    accs = np.asarray(res["acc"]).reshape(len(versions), pairs, len(ALPHAS))
    mid = len(ALPHAS) // 2
    assert ALPHAS[mid] == 0.5
    # merge.fuse is the midpoint of each method's path (first pair).
    a0, b0 = pop_ops.take(pop_a, 0), pop_ops.take(pop_b, 0)
    fuse_diff: dict[str, float] = {}
    for m, name in enumerate(versions):
        method = "none" if name == "naive" else name
        fused = merge.fuse(
            target,
            a0,
            b0,
            method=method,
            x=x_train if method in ("activation", "sinkhorn") else None,
            key=jax.random.key(seed),
            reg=SINKHORN_REG,
        )
        midpoint = jax.tree.map(lambda v: v[mid], paths[m * pairs])
        diff = max(
            float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
            for u, v in zip(jax.tree.leaves(fused), jax.tree.leaves(midpoint), strict=True)
        )
        fuse_diff[name] = diff
        # Hard alignments are exact; a Sinkhorn plan (reg 0.05) amplifies float32 differences
        # between the one-pair and the batched similarity computations.
        assert diff <= (1e-3 if name == "sinkhorn" else 1e-5), (name, diff)
    parents = np.stack([accs[0, :, 0], accs[0, :, -1]])  # [2, pairs]
    out: dict[str, Any] = {
        "target": target.name,
        "num_params": target.num_params,
        "groups": [f"{g.name}[{g.size}]" for g in symmetry.structural_groups(target)],
        "pairs": pairs,
        "epochs": epochs,
        "learning_rate": VIT_LR,
        "sinkhorn": {"similarity": "activations on the training inputs", "reg": SINKHORN_REG},
        "fuse_vs_path_midpoint_max_diff": fuse_diff,
        "parents_acc": round(float(parents.mean()), 4),
        "best_parent_acc": round(float(parents.max(0).mean()), 4),
        "barrier": {},
        "fused_acc": {},
    }
    for m, name in enumerate(versions):
        b = [merge.loss_barrier(losses[m, p], ALPHAS) for p in range(pairs)]
        out["barrier"][name] = round(float(np.mean(b)), 4)
        out["barrier"][f"{name}_std"] = round(float(np.std(b)), 4)
        out["fused_acc"][name] = round(float(accs[m, :, mid].mean()), 4)
        out["fused_acc"][f"{name}_std"] = round(float(accs[m, :, mid].std()), 4)
        if name != "sinkhorn":  # a permutation keeps theta_B's function
            assert np.allclose(losses[m, :, -1], losses[0, :, -1], rtol=1e-3, atol=1e-4), name
    out["sinkhorn_end_acc"] = round(float(accs[3, :, -1].mean()), 4)
    # A short fine-tune of every fused network, the parents continuing as the control (a
    # fresh Adam state for all), in populations of 2 * pairs: the training program again.
    t0 = time.time()
    fused_pop = jax.tree.map(lambda v: v[:, mid], stacked_paths(stacked, len(ALPHAS)))
    members = jax.tree.map(lambda f, p: jnp.concatenate([f, p]), fused_pop, params)
    tuned = []
    for c in range(0, (len(versions) + 2) * pairs, 2 * pairs):
        chunk = pop_ops.take(members, range(c, c + 2 * pairs))
        st = trainer.init(
            jax.random.key(seed + 1 + c), 2 * pairs, learning_rate=VIT_FT_LR, params=chunk
        )
        tuned.append(np.asarray(trainer.evaluate(trainer.fit(st, ft_epochs).params)["test_acc"]))
    tuned = np.concatenate(tuned)
    seconds["finetune"] = round(time.time() - t0, 1)
    out["finetune"] = {"epochs": ft_epochs, "learning_rate": VIT_FT_LR}
    out["fused_finetuned_acc"] = {
        name: round(float(tuned[m * pairs : (m + 1) * pairs].mean()), 4)
        for m, name in enumerate(versions)
    }
    out["parents_finetuned_acc"] = round(float(tuned[len(versions) * pairs :].mean()), 4)
    out["seconds"] = seconds
    out["curves"] = {
        name: [round(float(v), 4) for v in losses[m].mean(0)] for m, name in enumerate(versions)
    }
    log(
        "digits-vit: barrier "
        + " ".join(f"{k}={out['barrier'][k]:.3f}" for k in versions)
        + " | fused acc "
        + " ".join(f"{k}={out['fused_acc'][k]:.3f}" for k in versions)
        + f" | parents {out['parents_acc']:.3f} (best {out['best_parent_acc']:.3f})"
        + f" | after {ft_epochs} epochs: "
        + " ".join(f"{k}={out['fused_finetuned_acc'][k]:.3f}" for k in versions)
        + f" parents={out['parents_finetuned_acc']:.3f}"
    )
    return out


# ---------------------------------------------------------------------------------------
# merge_acc
# ---------------------------------------------------------------------------------------


def task_scores(target: Target, population: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`[members, tasks + 1]`: restricted accuracy per task, then the joint 10-way accuracy."""
    logits = np.asarray(target.apply_population(population, jnp.asarray(x)))
    out = []
    for classes in TASKS:
        rows = np.isin(y, classes)
        sub = logits[:, rows][:, :, list(classes)]
        pred = np.asarray(classes)[np.argmax(sub, -1)]
        out.append((pred == y[rows][None]).mean(1))
    out.append((np.argmax(logits, -1) == y[None]).mean(1))
    return np.stack(out, 1)


def merge_acc_for(
    kind: str,
    width: int,
    data: data_lib.Dataset,
    *,
    base_epochs: int,
    ft_epochs: int,
    lr: float,
    ft_lr: float,
    seed: int,
) -> dict[str, Any]:
    target = make_arch(kind, width)
    train, (x_val, y_val) = data_lib.split_validation(data)
    # One trainer, one compiled program: the base trains as 4 identical members (same
    # key) on all classes; fine-tuning restarts from it with each member restricted to
    # its task's examples (`TrainState.subset`), so the four fine-tunes run as one vmap.
    tr = Trainer(target, train, TrainConfig(batch_size=64))
    keys = jnp.stack([jax.random.key(seed)] * len(TASKS))
    init = jax.tree.map(lambda v: jnp.repeat(v, len(TASKS), 0), init_population(target, seed, 1))
    state = tr.init(
        jax.random.key(seed), len(TASKS), learning_rate=lr, params=init, member_keys=keys
    )
    state = tr.fit(state, base_epochs)
    base_pop = jax.device_get(state.params)
    base = pop_ops.take(base_pop, 0)
    ft_keys = jnp.stack([jax.random.key(seed + 1 + t) for t in range(len(TASKS))])
    state = tr.init(
        jax.random.key(seed), len(TASKS), learning_rate=ft_lr, params=base_pop, member_keys=ft_keys
    )
    masks = np.stack([np.isin(train.y_train, c) for c in TASKS])
    state = state._replace(subset=jax.device_put(jnp.asarray(masks), state.subset.sharding))
    pop = jax.device_get(tr.fit(state, ft_epochs).params)

    def score(p: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return task_scores(target, p, x, y)

    def report(test: np.ndarray, lam: Any = None) -> dict[str, Any]:
        r = {
            "per_task": [round(float(v), 4) for v in test[:4]],
            "mean": round(float(test[:4].mean()), 4),
            "joint_acc": round(float(test[4]), 4),
        }
        if lam is not None:
            r["lam"] = round(float(lam), 3)
        return r

    out: dict[str, Any] = {"arch": target.name}
    base_test = score(jax.tree.map(lambda v: v[None], base), data.x_test, data.y_test)[0]
    out["base"] = report(base_test)
    own = score(pop, data.x_test, data.y_test)
    out["individual"] = {
        "per_task": [round(float(own[t, t]), 4) for t in range(4)],
        "mean": round(float(np.mean([own[t, t] for t in range(4)])), 4),
    }
    one = jax.tree.map(lambda v: v[None], merge.average(target, pop))
    out["average"] = report(score(one, data.x_test, data.y_test)[0])

    grids = {
        "task_arithmetic": (np.round(np.arange(0.1, 1.01, 0.1), 2), {}, merge.task_arithmetic),
        "ties": (np.round(np.arange(0.5, 2.51, 0.25), 2), {"density": 0.2}, merge.ties_merge),
        "pcb": (np.round(np.arange(0.5, 2.51, 0.25), 2), {"ratio": 0.1}, merge.pcb_merge),
        "task_arithmetic_rank4": (
            np.round(np.arange(0.1, 1.01, 0.1), 2),
            {"rank": 4},
            merge.task_arithmetic,
        ),
        "ties_rank4": (
            np.round(np.arange(0.5, 2.51, 0.25), 2),
            {"density": 0.2, "rank": 4},
            merge.ties_merge,
        ),
    }
    for name, (lams, kw, fn) in grids.items():
        if fn is merge.task_arithmetic:
            cands = fn(target, base, pop, lams, **kw)
        else:
            cands = fn(target, base, pop, lam=lams, **kw)
        val = score(cands, x_val, y_val)[:, :4].mean(1)
        best = int(np.argmax(val))
        out[name] = report(
            score(pop_ops.take(cands, [best]), data.x_test, data.y_test)[0], lams[best]
        )

    # Each model's Fisher on its own task's training inputs (the first m of each task, m
    # the smallest task's size, so the four run as one vmapped program).
    idx = [np.nonzero(np.isin(train.y_train, c))[0] for c in TASKS]
    m = min(len(i) for i in idx)
    x_tasks = np.stack([train.x_train[i[:m]] for i in idx])
    fish = merge.diagonal_fisher(target, pop, x_tasks, per_target_inputs=True)
    merged = jax.tree.map(lambda v: v[None], merge.fisher_merge(target, pop, fish))
    out["fisher"] = report(score(merged, data.x_test, data.y_test)[0])
    log(
        f"merge_acc {kind}: "
        + " ".join(
            f"{k}={v['mean']:.3f}" for k, v in out.items() if isinstance(v, dict) and "mean" in v
        )
    )
    return out


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 1 minute")
    parser.add_argument(
        "--out",
        default=None,
        help="results file (default bench/results/merge.json; --quick: bench/results/quick/)",
    )
    parser.add_argument(
        "--pleas-only",
        action="store_true",
        help="run only the PLeaS section; the other sections are kept from the results file",
    )
    args = parser.parse_args(argv)
    hyper.sharding.use_cpu_cores()
    t_start = time.time()
    mach = machine()  # the load average before the work starts
    data = data_lib.load("digits")
    if args.quick:
        pleas_cfg = {"epochs": 6, "base_epochs": 1, "ft_epochs": 3, "sample": 256}
        pleas_cfg["inputs"] = ("merged",)
    else:
        pleas_cfg = {"epochs": 30, "base_epochs": 3, "ft_epochs": 15, "sample": 512}
        pleas_cfg["inputs"] = ("merged", "original")
    pleas_res: dict[str, Any] = {
        "split": [list(c) for c in PLEAS_SPLIT],
        "widths": list(PLEAS_WIDTHS),
        "accuracy": "10-way, test split",
        "lr": PLEAS_LR,
        "finetune_lr": FT_LR,
        **{k: v for k, v in pleas_cfg.items() if k != "inputs"},
    }
    for ds in ("digits", "mnist1d"):
        pleas_res[ds] = pleas_for(ds, **pleas_cfg, seed=200)
    goals = pleas_goals(["digits", "mnist1d"])
    if args.pleas_only:
        path = result_path("merge", quick=args.quick, out=args.out)
        old = json.loads(path.read_text()) if path.exists() else {}
        result = {k: old[k] for k in ("barrier", "merge_acc", "digits_vit") if k in old}
        result["other_sections_from"] = {k: old.get(k) for k in ("git", "machine", "wall_s")}
        result.update(pleas=pleas_res, machine=mach, wall_s=round(time.time() - t_start, 1))
        write_result(
            result, args.out, name="merge", schema=SCHEMA_VERSION, quick=args.quick, goals=goals
        )
        return result
    if args.quick:
        widths = {"mlp": [16, 64], "cnn": [8]}
        pairs, epochs = 1, {"mlp": 8, "cnn": 8}
        merge_archs = {"mlp": 64}
        base_epochs, ft_epochs = {"mlp": 2}, 4
        vit_pairs, vit_epochs, vit_ft = 1, 8, 1
    else:
        widths = {"mlp": [16, 64, 256], "cnn": [8, 16, 32]}
        pairs, epochs = 3, {"mlp": 40, "cnn": 80}
        merge_archs = {"mlp": 64, "cnn": 16}
        base_epochs, ft_epochs = {"mlp": 3, "cnn": 10}, 15
        vit_pairs, vit_epochs, vit_ft = 3, 20, 2

    barrier: dict[str, Any] = {
        "split": "test",
        "loss": "cross-entropy",
        "alphas": len(ALPHAS),
        "pairs": pairs,
        "epochs": epochs,
    }
    for kind, ws in widths.items():
        rows = [
            barrier_for(kind, w, data, pairs=pairs, epochs=epochs[kind], lr=LR[kind], seed=w)
            for w in ws
        ]
        barrier[kind] = {str(r.pop("width")): r for r in rows}
        first, last = barrier[kind][str(ws[0])], barrier[kind][str(ws[-1])]
        barrier[kind]["shrinks_with_width"] = {
            m: bool(last[m] < first[m]) for m in ("naive", "weight", "activation")
        }

    merge_acc: dict[str, Any] = {
        "tasks": [list(t) for t in TASKS],
        "accuracy": "restricted to each task's classes on its test examples; joint_acc: 10-way",
        "lam_selected_on": "validation (20% of the training split)",
        "base_epochs": base_epochs,
        "base_lr": {k: LR[k] for k in merge_archs},
        "finetune_epochs": ft_epochs,
        "finetune_lr": FT_LR,
    }
    for kind, w in merge_archs.items():
        merge_acc[kind] = merge_acc_for(
            kind,
            w,
            data,
            base_epochs=base_epochs[kind],
            ft_epochs=ft_epochs,
            lr=LR[kind],
            ft_lr=FT_LR,
            seed=100,
        )

    digits_vit = vit_fusion(data, pairs=vit_pairs, epochs=vit_epochs, ft_epochs=vit_ft, seed=7)

    result = {
        "barrier": barrier,
        "merge_acc": merge_acc,
        "digits_vit": digits_vit,
        "pleas": pleas_res,
        "machine": mach,
        "wall_s": round(time.time() - t_start, 1),
    }
    write_result(
        result, args.out, name="merge", schema=SCHEMA_VERSION, quick=args.quick, goals=goals
    )
    return result


if __name__ == "__main__":
    main()
