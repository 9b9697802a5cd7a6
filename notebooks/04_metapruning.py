# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # MetaPruning: a graph metanetwork that edits networks so that they prune well
#
# Structured pruning removes whole hidden units (channels) of a trained network: the
# result is a smaller standalone network, not a mask. Which units go is decided by an
# importance score; the usual one is **group-L2**, the L2 norm of every weight a unit
# owns (its kernel out-slice, bias, and the next layer's in-slice;
# `hyper.compact.group_importance`).
#
# **MetaPruning** (`metanets.metaprune`) adds one step before pruning: a graph metanetwork
# (`metanets.models.GraphMetanet`) reads the trained network as a graph and edits it,
# ``θ' = θ + r·Δθ``. The metanet is trained over a zoo of networks of one architecture
# to keep the edited networks accurate (cross-entropy) while making them group-sparse
# (``λ`` · mean group norm), so that afterwards group-L2 pruning removes units that
# matter less. Its edit is permutation-equivariant: permuting a network's hidden units
# permutes the edit the same way.
#
# This notebook trains a small zoo of digits CNNs, meta-trains a MetaPruner on most of
# them, and on a few held-out networks compares accuracy against FLOPs speed-up for
# three pipelines with the same fine-tune budgets: **metaprune** (edit, fine-tune,
# prune by group-L2, fine-tune), **group-L2** (the same without the edit) and
# **random** (random unit scores). It also shows the per-unit group norms before and
# after the edit.
#
# Whether MetaPruning beats group-L2 is *measured*, not asserted, in
# `bench/metaprune.py` (results in `bench/results/metaprune.json`); the few networks
# here show the mechanics, and their curves may well go either way.
#
# Set `SMOKE=1` to shrink every size (the test suite runs this file that way), and
# `OUT_DIR` to choose where files go (default: a fresh temporary directory).

# %%
import os
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless script: draw to files only

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hyper import compact, data, symmetry  # noqa: E402
from hyper.architectures import make_target  # noqa: E402
from hyper.prune import export_pruned, load_pruned, prune_pipeline  # noqa: E402
from hyper.train import TrainConfig, Trainer  # noqa: E402
from metanets.metaprune import MetaPruneConfig, group_lasso, meta_train  # noqa: E402

SMOKE = os.environ.get("SMOKE") == "1"
OUT_DIR = Path(os.environ.get("OUT_DIR") or tempfile.mkdtemp(prefix="weightspace_metaprune_"))
OUT_DIR.mkdir(parents=True, exist_ok=True)
print(f"SMOKE={SMOKE}, writing to {OUT_DIR}")

# %% [markdown]
# ## 1. A zoo of digits CNNs
#
# One architecture (a 2-D CNN: convs, global average pooling, a dense head), many
# trained networks: every member has its own seed (initialisation and data order) and
# one of a few learning rates. The last few members are held out: the metanet never
# sees them, and they are the networks we prune.

# %%
ds = data.load("digits")
CHANNELS = [8, 8] if SMOKE else [16, 32]
N_ZOO, N_HELD = (4, 1) if SMOKE else (16, 3)
EPOCHS = 2 if SMOKE else 20

target = make_target("cnn2d", input_shape=ds.input_shape, channels=CHANNELS, out_features=10)
learning_rates = np.resize(np.array([3e-3, 1e-2, 2e-2], np.float32), N_ZOO)
trainer = Trainer(target, ds, TrainConfig(batch_size=64))
t0 = time.perf_counter()
state = trainer.init(jax.random.key(0), N_ZOO, learning_rate=learning_rates)
state = trainer.fit(state, EPOCHS)
zoo_acc = np.asarray(trainer.evaluate(state.params)["test_acc"])
print(f"{N_ZOO} networks, {target.num_params} parameters each, {time.perf_counter() - t0:.1f} s")
print("test accuracy:", np.round(zoo_acc, 3))


def member(population, i):
    return jax.tree.map(lambda a: a[i], population)


n_meta = N_ZOO - N_HELD
meta_zoo = jax.tree.map(lambda a: a[:n_meta], state.params)
held_out = [member(state.params, i) for i in range(n_meta, N_ZOO)]
groups = symmetry.structural_groups(target)
print("structural groups:", [(g.name, g.size) for g in groups])
print("FLOPs per example:", compact.count_flops(target))

# %% [markdown]
# ## 2. Meta-train the MetaPruner
#
# Each step samples a few zoo networks and a batch of training examples, edits the
# networks (graph -> metanet -> graph -> parameters, all differentiable and vmapped over
# the networks) and minimises their cross-entropy plus ``λ`` times their mean group-L2
# norm (`metanets.metaprune.group_lasso`).

# %%
if SMOKE:
    meta_config = MetaPruneConfig(
        hidden=8, num_layers=1, steps=10, nets_per_step=2, batch_size=64, sparsity=1.0
    )
else:
    meta_config = MetaPruneConfig(
        hidden=32, num_layers=3, steps=200, nets_per_step=8, batch_size=128, sparsity=1.0
    )
t0 = time.perf_counter()
pruner = meta_train(target, meta_zoo, ds, meta_config, log=print, log_every=5 if SMOKE else 50)
print(f"meta-training: {time.perf_counter() - t0:.1f} s")

hist = pruner.history
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
steps = [h["step"] for h in hist]
axes[0].plot(steps, [h["ce"] for h in hist], "o-")
axes[0].set_title("cross-entropy of the edited networks")
axes[1].plot(steps, [h["sparsity"] for h in hist], "o-", color="C1")
axes[1].set_title("mean group norm of the edited networks")
for ax in axes:
    ax.set_xlabel("step")
fig.tight_layout()
fig.savefig(OUT_DIR / "meta_training.png", dpi=100)

# %% [markdown]
# ## 3. What the edit does to the group norms
#
# Per-unit group norms (`group_importance(..., method="l2", normalizer="mean")`: each
# group's norms divided by their mean, which is how the pruning ranks units across
# layers) of the held-out networks, before and after the edit. A metanet that has learned
# to sparsify moves some units towards zero and keeps the rest; with a small edit scale
# ``r`` (and, with `SMOKE=1`, a few steps of meta-training) the shift can be slight. The
# mean raw group norm (the sparsity term) is printed as well.


# %%
def unit_norms(params):
    scores = compact.group_importance(target, params, method="l2", normalizer="mean")
    return np.concatenate([np.asarray(s) for s in scores])


edited = [pruner.edit_one(p) for p in held_out]
before = np.concatenate([unit_norms(p) for p in held_out])
after = np.concatenate([unit_norms(p) for p in edited])
for i, (p, e) in enumerate(zip(held_out, edited, strict=True)):
    print(
        f"held-out {i}: mean group norm {float(group_lasso(target, p)):.4f} -> "
        f"{float(group_lasso(target, e)):.4f}"
    )

fig, ax = plt.subplots(figsize=(5, 3))
bins = np.linspace(0, max(before.max(), after.max()), 25)
ax.hist(before, bins=bins, alpha=0.6, label="trained")
ax.hist(after, bins=bins, alpha=0.6, label="after metanet edit")
ax.set_xlabel("group norm / group mean")
ax.set_ylabel("hidden units")
ax.legend()
fig.tight_layout()
fig.savefig(OUT_DIR / "group_norms.png", dpi=100)

# %% [markdown]
# ## 4. Accuracy against speed-up
#
# Every held-out network goes through `prune_pipeline` three ways at each FLOPs speed-up,
# with identical fine-tune budgets (Adam steps before and after pruning):
#
# - **metaprune**: metanet edit -> fine-tune -> progressive global group-L2 pruning ->
#   fine-tune;
# - **group-L2**: the same without the edit;
# - **random**: random unit scores instead of group-L2.
#
# Pruning physically removes units (`hyper.compact.remove_units`), in a few rounds of a
# falling FLOPs goal; every layer keeps at least one unit. The left panel is the test
# accuracy right after pruning, the right one after the final fine-tune.

# %%
SPEEDUPS = [1.5, 2.0, 3.0]
# SMOKE: no fine-tuning (every compact network would compile its own training step).
BUDGET = (
    {"finetune_before": 0, "finetune_after": 0}
    if SMOKE
    else {"finetune_before": 100, "finetune_after": 300}
)
METHODS = {
    "metaprune": {"edit": pruner.edit_for(target)},
    "group-L2": {},
    "random": {"importance": "random"},
}
results = {m: {s: [] for s in SPEEDUPS} for m in METHODS}
t0 = time.perf_counter()
for i, params in enumerate(held_out):
    for m, kw in METHODS.items():
        for s in SPEEDUPS:
            r = prune_pipeline(target, params, ds, speedup=s, seed=i, **BUDGET, **kw)
            results[m][s].append(r)
print(f"{len(held_out) * len(METHODS) * len(SPEEDUPS)} pipelines: {time.perf_counter() - t0:.1f} s")

print(f"{'method':>10} {'speed-up':>8} {'achieved':>8} {'pruned':>7} {'final':>7}  widths")
for m in METHODS:
    for s in SPEEDUPS:
        rs = results[m][s]
        print(
            f"{m:>10} {s:>8.1f} {np.mean([r.speedup for r in rs]):>8.2f} "
            f"{np.mean([r.acc['pruned'] for r in rs]):>7.3f} "
            f"{np.mean([r.acc['final'] for r in rs]):>7.3f}  {rs[0].info['widths']}"
        )

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
for ax, stage in zip(axes, ("pruned", "final"), strict=True):
    for m, marker in zip(METHODS, "os^", strict=True):
        acc = np.array([[r.acc[stage] for r in results[m][s]] for s in SPEEDUPS])
        ax.errorbar(SPEEDUPS, acc.mean(1), yerr=acc.std(1), marker=marker, capsize=3, label=m)
    ax.set_xlabel("FLOPs speed-up")
    ax.set_title("right after pruning" if stage == "pruned" else "after fine-tuning")
axes[0].set_ylabel(f"test accuracy (mean of {len(held_out)})")
axes[1].legend()
fig.tight_layout()
fig.savefig(OUT_DIR / "accuracy_vs_speedup.png", dpi=100)

# %% [markdown]
# These few networks and short budgets are an illustration; the comparison of record
# (more held-out networks, longer fine-tuning, a goal stated in advance) is
# `bench/metaprune.py`, whose numbers are in `bench/results/metaprune.json`.
#
# ## 5. Export: the compact network loads on its own
#
# `export_pruned` writes the compact weights with a plain `make_target` config holding
# the new widths, so `load_pruned` rebuilds the small network without the original.

# %%
best = results["metaprune"][SPEEDUPS[-1]][0]
path = export_pruned(OUT_DIR / "pruned", best)
small, small_params, record = load_pruned(path)
print("rebuilt from:", small.config)
print(f"FLOPs {record['flops'][0]} -> {record['flops'][1]} ({record['speedup']:.2f}x)")
print(f"parameters {record['num_params'][0]} -> {record['num_params'][1]}")
x = ds.x_test[:32]
assert small.config["channels"] == best.info["widths"]
assert np.allclose(small.apply(small_params, x), best.target.apply(best.params, x), atol=1e-6)
