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
# # Assembling networks from a family: stitching
#
# Stitchable Neural Networks (SN-Net, Pan et al. 2023) take a family of trained networks
# of one kind and different sizes (the *anchors*), cut them between layers and join the
# front of one anchor to the back of another with a small *stitching layer*: a linear map
# from one anchor's activations to the other's. Every (front anchor, back anchor, cut)
# is a new network with its own cost, so a handful of anchors yields many accuracy-FLOPs
# trade-offs after a short joint training of the stitches and the anchors.
#
# `generators.stitch` reads the cuts from the traced computation (the activation a
# layer's contraction reads, where the input reaches the rest of the network through it
# alone), initialises each stitch by least squares on activations, trains all stitches at
# once (each cut's networks vmapped on zero-padded anchors, one network per cut drawn
# per step) and folds each stitch into the next layer's kernel, so every stitched
# network is a plain network of the family that exports like any other.
#
# Set `SMOKE=1` to shrink every size (the test suite runs this file that way), and
# `OUT_DIR` to choose where figures go. The benchmark with both families (digits MLPs and
# MNIST-1D CNNs) is `bench/stitch.py`.

# %%
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless script: draw to files only

from hyper import sharding

sharding.use_cpu_cores()  # before any JAX computation: one JAX device per CPU core

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from generators.stitch import operating_points, stitch_family  # noqa: E402
from hyper import data, formats, make_target  # noqa: E402
from hyper.optimizers import make_optimizer  # noqa: E402
from hyper.train import cross_entropy  # noqa: E402

SMOKE = os.environ.get("SMOKE") == "1"
OUT_DIR = Path(os.environ.get("OUT_DIR") or tempfile.mkdtemp(prefix="weightspace_stitch_"))
OUT_DIR.mkdir(parents=True, exist_ok=True)
print(f"SMOKE={SMOKE}, {jax.device_count()} JAX device(s), writing to {OUT_DIR}")


def train_anchor(target, digits, epochs, seed, lr=3e-3, batch=128):
    """One network from a LeCun-normal start (drawn with NumPy), Adam on shuffled
    batches: the short loop of one small network (`hyper.train.Trainer` trains
    populations, and `generators.stitch_zoos.build_family_zoos` whole zoos, at a larger
    compile cost than this notebook's smoke run affords)."""
    rng = np.random.default_rng(seed)
    params = jax.tree.unflatten(
        target.treedef,
        [
            jnp.asarray(
                rng.standard_normal(s.shape) / np.sqrt(s.fan_in)
                if s.role == "kernel"
                else np.zeros(s.shape),
                s.dtype,
            )
            for s in target.spec
        ],
    )
    opt = make_optimizer("adam", lr)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    n = len(y) // batch * batch

    @jax.jit
    def epoch(params, opt_state, key):
        def step(carry, idx):
            p, o = carry
            grads = jax.grad(lambda q: cross_entropy(target.pure_apply(q, x[idx]), y[idx]))(p)
            updates, o = opt.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), None

        order = jax.random.permutation(key, len(y))[:n].reshape(-1, batch)
        return jax.lax.scan(step, (params, opt_state), order)[0]

    opt_state = opt.init(params)
    for e in range(epochs):
        params, opt_state = epoch(params, opt_state, jax.random.key(seed * 1000 + e))
    return params


# %% [markdown]
# ## 1. The anchors: digits MLPs of four widths
#
# MLPs 64-w-w-10 (relu), one per width, trained with the same recipe (Adam 3e-3, batch
# 128). Cost is counted in FLOPs per example by `hyper.compact.count_flops` on the traced
# apply. A stratified fifth of the training split is held out (`data.split_validation`):
# no anchor and no stitch trains on it, and the family chooses its networks on it, so the
# test split only reports.

# %%
digits, validation = data.split_validation(data.load("digits"), 0.2)
widths = (16, 64) if SMOKE else (16, 32, 64, 128)
epochs = 3 if SMOKE else 20
anchors = []
for w in widths:
    target = make_target("mlp", input_shape=(8, 8), widths=[w, w], out_features=10)
    anchors.append((f"mlp-{w}", target, train_anchor(target, digits, epochs, seed=w)))

# %% [markdown]
# ## 2. The stitched family
#
# Every ordered pair of different anchors at every cut (here before the second and the
# third dense layer). Each stitch starts as the least-squares map from the front
# anchor's activations at the cut to the back anchor's, on 512 training inputs.

# %%
family = stitch_family(anchors, digits, validation=validation, progress=False)
for g in family.groups:
    print(f"cut before {g.cut.layer_name}: {len(g.members)} stitched networks")
least_squares = family.points()
print(f"{len(family.candidates)} networks ({family.num_anchors} anchors)")

# %% [markdown]
# Then the whole family trains jointly, as SN-Net does: each step draws one network per
# cut and one anchor and takes an Adam step on their cross-entropy; the anchors' weights,
# shared by every network they take part in, train with the stitches (`anchors=True`;
# without it only the stitches train). The baseline stays the anchors as they were given.

# %%
steps = 30 if SMOKE else 150 * len(family.stitched)
history = family.train(steps, key=jax.random.key(0), anchors=True, progress=False)
print(f"{steps} steps, {history['seconds']:.1f} s, loss {history['losses'][-1]:.3f}")
points = family.points()
front = family.frontier()
for p in front:  # the validation frontier; test accuracy reported beside it
    print(
        f"{p['flops']:>7d} FLOPs  val {p['val_accuracy']:.3f}  test {p['accuracy']:.3f}"
        f"  {p['name']}"
    )

# %% [markdown]
# ## 3. Accuracy against FLOPs
#
# Grey: every network (least-squares start hollow, trained filled); red: the given
# anchors and the straight line between neighbouring anchors, the trade-off one gets
# without stitching by picking the affordable anchor "on average".

# %%
anchor_pts = sorted((p for p in least_squares if p["anchor"]), key=lambda p: p["flops"])
fig, ax = plt.subplots(figsize=(6, 4))
ls = [p for p in least_squares if not p["anchor"]]
ax.scatter(
    [p["flops"] for p in ls],
    [p["accuracy"] for p in ls],
    facecolors="none",
    edgecolors="0.6",
    label="stitched, least squares only",
)
ax.scatter(  # the fine-tuned anchors among them
    [p["flops"] for p in points], [p["accuracy"] for p in points], c="0.4", label="trained"
)
ax.step(
    [p["flops"] for p in front],
    [p["accuracy"] for p in front],
    where="post",
    c="C0",
    label="chosen within budget (on validation)",
)
ax.plot(
    [p["flops"] for p in anchor_pts],
    [p["accuracy"] for p in anchor_pts],
    "r*--",
    markersize=12,
    label="anchors as given",
)
ax.set_xscale("log")
ax.set_xlabel("FLOPs per example")
ax.set_ylabel("test accuracy")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT_DIR / "stitch_frontier.png", dpi=120)
plt.show()
lo, hi = anchor_pts[0]["flops"], anchor_pts[-1]["flops"]
ops = operating_points([p for p in front if lo <= p["flops"] <= hi], 0.05)
print(f"{len(ops)} operating points >= 5% apart in FLOPs between the anchors")

# %% [markdown]
# ## 4. One network for a budget, exported
#
# `best(budget)` returns a standalone `Target` and params: the stitch is folded into the
# next layer, so the result is an MLP with mixed widths, rebuilt by `make_target`, and
# it goes through the safetensors export and back like any other network.

# %%
budget = (lo * hi) ** 0.5
target, params = family.best(budget)
print(target.name, "FLOPs:", family.choose(budget)["flops"], "budget:", int(budget))
path = formats.save_safetensors(target, params, OUT_DIR / "stitched.safetensors", overwrite=True)
again = formats.read_target(path)
x = digits.x_test[:64]
same = np.array_equal(
    np.asarray(again.apply(formats.load_safetensors(again, path), x)),
    np.asarray(target.apply(params, x)),
)
print("reloaded network computes the same function:", same)

# %% [markdown]
# ## PLeaS
#
# PLeaS (Nasery et al. 2024) merges two networks trained on different data: it matches
# their units with a permutation per layer, then solves each layer of the merged network
# by least squares on activations, at any width between one network and both side by
# side. The next cells compare it with weight averaging after Git Re-Basin matching, task
# arithmetic and the two-model ensemble on digits split into classes 0-4 and 5-9.

# %%
from hyper import merge, pleas  # noqa: E402
from hyper import population as pop_ops  # noqa: E402

halves = [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
target = make_target("mlp", input_shape=(8, 8), widths=[32, 32], out_features=10)
pair = []
for i, classes in enumerate(halves):
    keep = np.isin(digits.y_train, classes)
    half = data.Dataset(
        f"digits-{i}",
        np.asarray(digits.x_train)[keep],
        np.asarray(digits.y_train)[keep],
        np.asarray(digits.x_test),
        np.asarray(digits.y_test),
        digits.num_classes,
    )
    pair.append(train_anchor(target, half, 15 if SMOKE else 40, seed=100 + i))
a, b = pair
x_fit = jnp.asarray(digits.x_train[:256])
x_test, y_test = np.asarray(digits.x_test), np.asarray(digits.y_test)


def accuracy(t, p):
    return float(np.mean(np.argmax(np.asarray(t.apply(p, x_test)), -1) == y_test))


mean_logits = 0.5 * (np.asarray(target.apply(a, x_test)) + np.asarray(target.apply(b, x_test)))
ensemble = float(np.mean(np.argmax(mean_logits, -1) == y_test))
both = pop_ops.stack([a, b])
rebasin = accuracy(target, merge.aligned_average(target, both, method="weight"))
merge_widths = (1.0, 1.5, 2.0) if SMOKE else (1.0, 1.25, 1.5, 2.0)
merged = {w: pleas.pleas_merge(target, a, b, x_fit, width=w) for w in merge_widths}
pleas_acc = {w: accuracy(*merged[w]) for w in merge_widths}
print(f"each alone: {accuracy(target, a):.3f}, {accuracy(target, b):.3f} (10 classes)")
print(f"ensemble {ensemble:.3f}, Git Re-Basin average {rebasin:.3f}")
for w in merge_widths:
    print(f"PLeaS {w}x: {pleas_acc[w]:.3f} ({merged[w][0].num_params} parameters)")

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(merge_widths, [pleas_acc[w] for w in merge_widths], "o-", label="PLeaS")
ax.axhline(rebasin, color="C1", ls="--", label="Re-Basin average")
ax.axhline(ensemble, color="k", ls=":", label="ensemble of the two")
ax.set_xlabel("merged width (x one network)")
ax.set_ylabel("test accuracy, 10 classes")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT_DIR / "pleas_width.png", dpi=120)
plt.show()
