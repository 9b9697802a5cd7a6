# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Generating weights, and asking whether they are new
#
# A generative model of weights (p-diff, G.pt, SANE, RPG) learns a distribution over
# trained networks and samples new ones. Zeng et al. (CVPR 2026, "Generative Modeling of
# Weights: Generalization or Memorization?") found that such models mostly reproduce or
# interpolate their training checkpoints, and that simple baselines are as good at being
# both accurate and different: Gaussian noise on training weights, the average of 16
# checkpoints, a per-coordinate Gaussian fit.
#
# This notebook:
#
# 1. builds a zoo of digits MLPs from independent seeds (`hyper.zoo`), each run used
#    once, at one checkpointed epoch, so accuracies spread widely;
# 2. trains the accuracy-conditioned weight generator (`generators.weightgen`) and samples
#    networks unprompted and at several accuracy prompts, given as they are and through
#    a calibration measured on the training examples;
# 3. scores generated networks, training networks and the three baselines with the same
#    code (`generators.novelty`): test accuracy against *max similarity* (the largest IoU
#    of a network's misclassified test examples with any training network's);
# 4. shows a few generated networks' weight histograms next to training ones, and writes
#    the generated networks as a zoo that `hyper.zoo.load` reads.
#
# Set `SMOKE=1` to shrink every size (the test suite runs this file that way), and
# `OUT_DIR` to choose where figures go (default: a fresh temporary directory). The
# benchmark with both architectures, task conditioning and speed is `bench/weightgen.py`.

# %%
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless script: draw to files only

import jax
import matplotlib.pyplot as plt
import numpy as np

from generators import novelty, sampler_choice, weightgen
from hyper import data, zoo
from hyper import population as pop

SMOKE = os.environ.get("SMOKE") == "1"
OUT_DIR = Path(os.environ.get("OUT_DIR") or tempfile.mkdtemp(prefix="weightgen-nb-"))
OUT_DIR.mkdir(parents=True, exist_ok=True)
print(f"SMOKE={SMOKE}, {jax.device_count()} JAX device(s), writing to {OUT_DIR}")

# %% [markdown]
# ## A zoo of independent runs
#
# Four learning rates, many seeds, checkpoints at several epochs. The training set takes
# every run once, at one epoch drawn for it: no two training networks are snapshots of
# one run (the study names consecutive snapshots as a cause of memorization).

# %%
digits = data.load("digits")
epochs, ckpts = (1, [0, 1]) if SMOKE else (20, [1, 2, 3, 5, 10, 20])
z = zoo.build(
    OUT_DIR / "zoo",
    preset="digits-mlp",
    arch={"arch": "mlp", "widths": [8 if SMOKE else 32], "out_features": 10},
    grid={
        "learning_rate": [3e-3, 3e-2] if SMOKE else [1e-3, 3e-3, 1e-2, 3e-2],
        "weight_decay": [0.0],
        "init_scale": [1.0],
        "train_fraction": [1.0],
        "activation": ["relu"],
        "dropout": [0.0],
        "optimizer": ["adam"],
    },
    seeds=4 if SMOKE else 128,
    epochs=epochs,
    checkpoint_epochs=ckpts,
    progress=not SMOKE,
)
rng = np.random.default_rng(0)
pick = rng.integers(0, len(ckpts), z.num_members)  # one epoch per run
parts, accs = [], []
for i, e in enumerate(ckpts):
    ze = zoo.load(z.directory, epoch=e)
    (g,) = ze.groups
    ids = np.flatnonzero(pick[[m["member"] for m in g.members]] == i)
    parts.append(pop.take(g.params, ids))
    rows = {r["member"]: r["test_acc"] for r in ze.rows(e)}
    accs.append([rows[g.members[j]["member"]] for j in ids])
target = g.target
train_p = pop.concatenate(parts)
train_acc = np.concatenate(accs)
print(f"{len(train_acc)} training networks, {target.num_params} parameters each")
print("test accuracy quartiles:", np.quantile(train_acc, [0, 0.25, 0.5, 0.75, 1]).round(3))

# %% [markdown]
# ## Train the generator and sample

# %%
# functional_weight: the autoencoder also keeps each network's predictions on the training
# inputs (`generators.weightgen_train`), not only its weights
cfg = weightgen.WeightGenConfig(condition="accuracy", seed=0, functional_weight=1.0)
if SMOKE:  # a few training steps of a small model only
    cfg = dataclasses.replace(
        cfg, ae_steps=20, flow_steps=20, ae_hidden=32, flow_hidden=32, checkpoint_every=20
    )
gen = weightgen.train(
    target, train_p, config=cfg, accuracy=train_acc, inputs=digits.x_train, progress=not SMOKE
)
n = 16 if SMOKE else 200
generated = gen.sample(jax.random.key(1), n)

# %% [markdown]
# ## Accuracy against novelty
#
# Every population below goes through `novelty.evaluate` (accuracy and misclassified
# masks on the 450 test examples: IoU is coarse here, a 95% network makes ~22 errors) and
# `novelty.max_similarity` against the training set. A point to the upper left (accurate,
# yet unlike every training network) is what a generator should reach; the noise curve
# shows what copying plus noise achieves.

# %%
x, y = digits.x_test, digits.y_test
_, train_wrong = novelty.evaluate(target, train_p, x, y)
keys = jax.random.split(jax.random.key(2), 8)
populations = {
    "generated": generated,
    "noise 0.06": novelty.noise_baseline(keys[0], target, train_p, n, 0.06),
    "noise 0.12": novelty.noise_baseline(keys[1], target, train_p, n, 0.12),
    "average of 16": novelty.average_baseline(keys[2], train_p, n, k=min(16, len(train_acc))),
    "Gaussian fit": novelty.gaussian_baseline(keys[3], train_p, n),
}
scores = {
    "training": (train_acc, novelty.max_similarity(train_wrong, train_wrong, exclude_self=True))
}
for name, p in populations.items():
    acc, wrong = novelty.evaluate(target, p, x, y)
    scores[name] = (acc, novelty.max_similarity(wrong, train_wrong))
    row = novelty.summary(acc, wrong, train_acc, train_wrong)
    print(f"{name:>14}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "n"))

fig, ax = plt.subplots(figsize=(6, 4.5))
for name, (acc, sim) in scores.items():
    ax.scatter(sim, acc, s=12, alpha=0.7, label=name)
ax.set_xlabel("max similarity to training (IoU of misclassified sets)")
ax.set_ylabel("test accuracy")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT_DIR / "accuracy_vs_novelty.png", dpi=120)

# %% [markdown]
# ## Accuracy against the prompt
#
# A conditional generator's samples regress towards the zoo's middle: asked for a low
# accuracy they land higher, asked for a high one lower. `sampler_choice.calibrate_prompts`
# measures where prompts land on the zoo's *training* examples and inverts that, so the
# test split below is read only to show the result.

# %%
prompts = np.round(np.linspace(*np.quantile(train_acc, [0.15, 0.85]), 5), 3)
calibration = sampler_choice.calibrate_prompts(
    gen, train_p, digits.x_train, digits.y_train, key=jax.random.key(9), accuracy=train_acc,
    n=8 if SMOKE else 100, points=4 if SMOKE else 11,
)  # fmt: skip
print("reachable on the training examples:", np.round(calibration.reachable, 3).tolist())
fig, ax = plt.subplots(figsize=(5, 4))
for name, given, shift in (
    ("as given", prompts, -0.004),
    ("calibrated", calibration(prompts), 0.004),
):
    achieved = []
    for i, p in enumerate(given):
        g_p = gen.sample(jax.random.key(10 + i), 8 if SMOKE else 100, accuracy=float(p))
        achieved.append(novelty.evaluate(target, g_p, x, y)[0])
    box = ax.boxplot(achieved, positions=prompts + shift, widths=0.006, manage_ticks=False)
    for part in box["boxes"]:
        part.set_color("C0" if name == "as given" else "C1")
    ax.plot([], [], color="C0" if name == "as given" else "C1", label=f"prompts {name}")
    medians = [round(float(np.median(a)), 3) for a in achieved]
    error = 100 * np.mean(np.abs(np.array(medians) - prompts))
    print(f"prompts {name}: achieved medians {medians}, mean error {error:.1f} points")
ax.plot(prompts, prompts, "k--", lw=1, label="achieved = asked")
ax.set_xlabel("asked-for accuracy")
ax.set_ylabel("achieved test accuracy")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT_DIR / "accuracy_vs_prompt.png", dpi=120)
print("asked:", prompts.tolist())

# %% [markdown]
# ## Weight histograms
#
# The first layer's kernel of three generated networks beside three training networks.

# %%
path = target.paths[[s.role for s in target.spec].index("kernel")]
fig, axes = plt.subplots(2, 3, figsize=(9, 4.5), sharex=True)
for j in range(3):
    for row, (label, p) in enumerate([("training", train_p), ("generated", generated)]):
        w = np.asarray(pop.select(target, pop.take(p, np.array([j])), path)[path]).ravel()
        axes[row, j].hist(w, bins=40, color=f"C{row}")
        axes[row, j].set_title(f"{label} #{j}: {path}", fontsize=8)
fig.tight_layout()
fig.savefig(OUT_DIR / "weight_histograms.png", dpi=120)

# %% [markdown]
# ## Generated networks as a zoo
#
# The one zoo writer stores them, so metanets, merging and pruning read them like
# trained networks.

# %%
rows = [{"test_acc": float(a)} for a in scores["generated"][0]]  # scored above
weightgen.write_generated_zoo(gen, generated, OUT_DIR / "generated", rows=rows)
gz = zoo.load(OUT_DIR / "generated")
print(zoo.summarize(gz))
assert gz.num_members == n
