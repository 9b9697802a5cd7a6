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
# # Aligning and merging networks
#
# Two networks trained from different seeds usually sit in different basins: the
# straight line between their weights passes through high loss. Much of that barrier is
# a symmetry artefact: permuting the hidden units of a layer (and the rows of the next
# layer) gives a different weight vector with the same function. Git Re-Basin (Ainsworth
# et al. 2023) aligns the units first and reports that the barrier then shrinks, and
# vanishes as width grows.
#
# This notebook:
#
# 1. derives the permutation symmetries of any target from its traced `apply`
#    (`hyper.symmetry.structural_groups`), residual connections and BatchNorm included;
# 2. measures the loss barrier between two independently trained digits MLPs before and
#    after weight matching and activation matching (`hyper.align`), and shows Sinkhorn
#    soft alignment;
# 3. merges four networks fine-tuned from one base on different digit classes with
#    averaging, task arithmetic, TIES, PCB and Fisher merging (`hyper.merge`).
#
# Set `SMOKE=1` to shrink every size (the test suite runs this file that way), and
# `OUT_DIR` to choose where figures go (default: a fresh temporary directory). The
# benchmark with more widths and pairs is `bench/merge.py`.

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

from hyper import align, data, make_target, merge, symmetry  # noqa: E402
from hyper.train import TrainConfig, Trainer, evaluate  # noqa: E402

SMOKE = os.environ.get("SMOKE") == "1"
OUT_DIR = Path(os.environ.get("OUT_DIR") or tempfile.mkdtemp(prefix="weightspace_merge_"))
OUT_DIR.mkdir(parents=True, exist_ok=True)
print(f"SMOKE={SMOKE}, {jax.device_count()} JAX device(s), writing to {OUT_DIR}")


def lecun_init(target, seed, n):
    """`n` LeCun-normal initialisations drawn with NumPy (biases 0, norm scales 1): the
    modules' own initialisers' distribution, without compiling their init program."""
    rng = np.random.default_rng(seed)
    leaves = []
    for s in target.spec:
        if s.role == "kernel":
            v = rng.standard_normal((n, *s.shape)) / np.sqrt(s.fan_in)
        elif s.role == "norm_scale" or s.path.endswith("var"):
            v = np.ones((n, *s.shape))
        else:
            v = np.zeros((n, *s.shape))
        leaves.append(jnp.asarray(v, s.dtype))
    return jax.tree.unflatten(target.treedef, leaves)


# %% [markdown]
# ## 1. Structural groups: which units can be permuted together
#
# A group is one set of hidden units with every `(leaf, axis)` it indexes. Nobody writes
# them by hand: the evaluation `apply` is traced with `jax.make_jaxpr`, and a union-find
# over array axes follows the data flow (contractions tie a kernel's in-axis to the
# channels it reads; elementwise ops such as the residual `x + f(x)` tie the channels they
# combine; the input, the output and spatial axes are never permutable). In a ResNet the
# stem, every block's second conv and BatchNorm, and the identity path share one group.

# %%
res_target = make_target("rescnn", input_shape=(8, 8), channels=8, num_blocks=2, out_features=10)
groups = symmetry.structural_groups(res_target, check=True)  # check: verified numerically
for g in groups:
    print(f"{g.name:40s} {g.size} units, {len(g.axes)} axes: producers {list(g.producers)}")

# %% [markdown]
# Any permutation of the groups keeps the function exactly (in evaluation mode, running
# statistics included):

# %%
res_params = jax.tree.map(lambda v: v[0], lecun_init(res_target, 0, 1))
perms = symmetry.random_permutations(res_target, jax.random.key(1))
shuffled = symmetry.permute(res_target, res_params, perms)
x_probe = jax.random.normal(jax.random.key(2), (4, 8, 8))
print("same function:", symmetry.check_equivalent(res_target, res_params, shuffled, x_probe))
print("weights moved:", not np.allclose(res_params["stem"]["kernel"], shuffled["stem"]["kernel"]))

# %% [markdown]
# ## 2. Two independently trained MLPs
#
# Two members of one population, trained with the same recipe from different seeds
# (initialisation and data order).

# %%
digits = data.load("digits")
width = 32 if SMOKE else 128
epochs = 6 if SMOKE else 40
target = make_target("mlp", input_shape=(8, 8), widths=(width, width), out_features=10)
trainer = Trainer(target, digits, TrainConfig(batch_size=64))
state = trainer.init(jax.random.key(0), 2, learning_rate=1e-3, params=lecun_init(target, 0, 2))
pair = jax.device_get(trainer.fit(state, epochs).params)
net_a = jax.tree.map(lambda v: v[0], pair)
net_b = jax.tree.map(lambda v: v[1], pair)
x_test, y_test = jnp.asarray(digits.x_test), jnp.asarray(digits.y_test)
test_metrics = jax.jit(lambda population: evaluate(target, population, x_test, y_test))
print("test accuracy of A and B:", np.round(test_metrics(pair)["acc"], 3))

# %% [markdown]
# ## 3. Alignment and the loss barrier
#
# Weight matching solves, group by group, a linear assignment that maximises
# `<W_A, P W_B>` summed over every leaf the group touches, and sweeps the groups until no
# assignment improves. Activation matching correlates the hidden units of A and B on the
# training inputs and solves one assignment per group. Both return permutations that keep
# B's function; only the path between A and B changes.

# %%
perm_w = align.weight_matching(target, net_a, net_b, key=jax.random.key(0))
perm_a = align.activation_matching(target, net_a, net_b, digits.x_train)
versions = {
    "naive": net_b,
    "weight matching": symmetry.permute(target, net_b, perm_w),
    "activation matching": symmetry.permute(target, net_b, perm_a),
}
for name, b in versions.items():
    assert symmetry.check_equivalent(target, net_b, b, digits.x_test[:32]), name

alphas = np.linspace(0, 1, 11 if SMOKE else 21)
paths = [merge.interpolate(target, net_a, b, alphas) for b in versions.values()]
losses = test_metrics(jax.tree.map(lambda *v: jnp.concatenate(v), *paths))["loss"]
curves = dict(zip(versions, np.asarray(losses).reshape(len(versions), -1), strict=True))
for name, c in curves.items():
    print(f"{name:20s} barrier = {merge.loss_barrier(c, alphas):.3f}")

fig, ax = plt.subplots(figsize=(5, 3.5))
for name, c in curves.items():
    ax.plot(alphas, c, marker="o", ms=3, label=name)
ax.set_xlabel("alpha  (0 = A, 1 = B)")
ax.set_ylabel("test cross-entropy")
ax.set_title(f"MLP 64-{width}-{width}-10: interpolation A -> B")
ax.legend()
fig.tight_layout()
fig.savefig(OUT_DIR / "barrier.png", dpi=120)
plt.show()

# %% [markdown]
# ## 4. Sinkhorn soft alignment
#
# OT fusion replaces the hard permutation by an entropic transport plan (rows and columns
# sum to 1). Small `reg` gives nearly a permutation; large `reg` spreads each unit of B
# over several units of A. Applied with `apply_transport`, a soft plan does not keep B's
# function, so it is used for fusion: average A with the transported B.

# %%
plans = {reg: align.sinkhorn_alignment(target, net_a, net_b, reg=reg) for reg in (0.02, 0.2)}
for reg, ps in plans.items():
    t = np.asarray(ps[0])
    print(
        f"reg={reg}: rows sum to 1 within {np.abs(t.sum(1) - 1).max():.1e}, max entry {t.max():.2f}"
    )

fused = {
    "plain average": merge.average(
        target, jax.tree.map(lambda a, b: jnp.stack([a, b]), net_a, net_b)
    ),
    "weight-matched average": merge.average(
        target, jax.tree.map(lambda a, b: jnp.stack([a, b]), net_a, versions["weight matching"])
    ),
}
for reg, ps in plans.items():
    moved = align.apply_transport(target, net_b, ps)
    fused[f"OT fusion, reg={reg}"] = jax.tree.map(lambda a, b: (a + b) / 2, net_a, moved)
fused_pop = jax.tree.map(lambda *v: jnp.stack(v), *fused.values())
fused_acc = np.asarray(test_metrics(fused_pop)["acc"])
for name, acc in zip(fused, fused_acc, strict=True):
    print(f"{name:24s} test accuracy {acc:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
for ax, (reg, ps) in zip(axes, plans.items(), strict=True):
    ax.imshow(np.asarray(ps[0])[:32, :32], cmap="viridis")
    ax.set_title(f"plan, group 1, reg={reg}")
    ax.set_xlabel("unit of B")
    ax.set_ylabel("position in A")
fig.tight_layout()
fig.savefig(OUT_DIR / "sinkhorn_plans.png", dpi=120)
plt.show()

# %% [markdown]
# ## 5. Merging networks fine-tuned on different classes
#
# A base MLP is trained briefly on all ten digits; four copies are fine-tuned on
# {0,1,2}, {3,4,5}, {6,7} and {8,9}. The four fine-tunes run as one vmapped program: each
# member of the population sees only its task's examples (`TrainState.subset`). The
# scaling `lam` of task arithmetic, TIES and PCB is chosen on a validation split carved
# out of the training set; accuracy is per task, restricted to the task's classes.

# %%
tasks = ((0, 1, 2), (3, 4, 5), (6, 7), (8, 9))
rng = np.random.default_rng(0)
is_val = rng.random(len(digits.y_train)) < 0.2
train_split = data.Dataset(
    "digits-train",
    np.array(digits.x_train[~is_val]),
    np.array(digits.y_train[~is_val]),
    np.array(digits.x_test),
    np.array(digits.y_test),
    10,
)
x_val, y_val = np.array(digits.x_train[is_val]), np.array(digits.y_train[is_val])
mt_target = make_target("mlp", input_shape=(8, 8), widths=(64, 64), out_features=10)
mt_trainer = Trainer(mt_target, train_split, TrainConfig(batch_size=64))
same_key = jnp.stack([jax.random.key(3)] * len(tasks))  # 4 identical members = the base
base_init = jax.tree.map(lambda v: jnp.repeat(v, len(tasks), 0), lecun_init(mt_target, 3, 1))
st = mt_trainer.init(
    jax.random.key(3), len(tasks), learning_rate=1e-3, params=base_init, member_keys=same_key
)
st = mt_trainer.fit(st, 2)
base_pop = jax.device_get(st.params)
base = jax.tree.map(lambda v: v[0], base_pop)
ft_keys = jnp.stack([jax.random.key(10 + t) for t in range(len(tasks))])
st = mt_trainer.init(
    jax.random.key(3), len(tasks), learning_rate=1e-3, params=base_pop, member_keys=ft_keys
)
masks = np.stack([np.isin(train_split.y_train, c) for c in tasks])
st = st._replace(subset=jax.device_put(jnp.asarray(masks), st.subset.sharding))
finetuned = jax.device_get(mt_trainer.fit(st, 4 if SMOKE else 15).params)


def per_task_accuracy(population, x, y):
    """`[members, tasks]` accuracy on each task's examples, argmax over its classes only."""
    logits = np.asarray(mt_target.apply_population(population, jnp.asarray(x)))
    cols = []
    for classes in tasks:
        rows = np.isin(y, classes)
        pred = np.asarray(classes)[np.argmax(logits[:, rows][:, :, list(classes)], -1)]
        cols.append((pred == y[rows][None]).mean(1))
    return np.stack(cols, 1)


def one(params):
    return jax.tree.map(lambda v: v[None], params)


results = {
    "base": per_task_accuracy(one(base), digits.x_test, digits.y_test)[0],
    "fine-tuned (own task)": np.diag(per_task_accuracy(finetuned, digits.x_test, digits.y_test)),
    "average": per_task_accuracy(
        one(merge.average(mt_target, finetuned)), digits.x_test, digits.y_test
    )[0],
}
sweeps = {
    "task arithmetic": merge.task_arithmetic(mt_target, base, finetuned, np.arange(0.1, 1.01, 0.1)),
    "TIES": merge.ties_merge(mt_target, base, finetuned, lam=np.arange(0.5, 2.51, 0.25)),
    "PCB": merge.pcb_merge(mt_target, base, finetuned, lam=np.arange(0.5, 2.51, 0.25)),
    "task arithmetic, rank 4": merge.task_arithmetic(
        mt_target, base, finetuned, np.arange(0.1, 1.01, 0.1), rank=4
    ),
}
for name, cands in sweeps.items():
    best = int(np.argmax(per_task_accuracy(cands, x_val, y_val).mean(1)))  # validation only
    chosen = jax.tree.map(lambda v, b=best: v[b : b + 1], cands)
    results[name] = per_task_accuracy(chosen, digits.x_test, digits.y_test)[0]

idx = [np.nonzero(np.isin(train_split.y_train, c))[0] for c in tasks]
m = min(len(i) for i in idx)
x_tasks = np.stack([train_split.x_train[i[:m]] for i in idx])
fishers = merge.diagonal_fisher(mt_target, finetuned, x_tasks, per_target_inputs=True)
results["Fisher"] = per_task_accuracy(
    one(merge.fisher_merge(mt_target, finetuned, fishers)), digits.x_test, digits.y_test
)[0]
for name, acc in results.items():
    print(f"{name:26s} per task {np.round(acc, 3)}  mean {acc.mean():.3f}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
names = list(results)
for t in range(len(tasks)):
    ax.bar(
        np.arange(len(names)) + 0.2 * (t - 1.5),
        [results[n][t] for n in names],
        width=0.2,
        label=str(tasks[t]),
    )
ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
ax.set_ylim(0.5, 1.0)
ax.set_ylabel("test accuracy (task classes)")
ax.legend(title="task", fontsize=7, ncol=4)
fig.tight_layout()
fig.savefig(OUT_DIR / "merge_accuracy.png", dpi=120)
plt.show()

# %% [markdown]
# ## Takeaways
#
# - The symmetries come from the traced program, so the same code aligns MLPs, CNNs,
#   ResNets with BatchNorm and hand-written functions; `verify_groups` checks them.
# - Alignment turns most of the naive barrier into a much smaller one; how far it falls
#   with width on digits is measured in `bench/merge.py` (`barrier`).
# - Merging fine-tunes of one base needs no alignment (they share a basin); the merge
#   rules differ in how they resolve interference between the task vectors
#   (`bench/merge.py`, `merge_acc`).
