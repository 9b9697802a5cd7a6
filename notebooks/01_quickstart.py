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
# # weightspace quickstart: networks as data
#
# A **target** is an architecture whose weights are data: a `Target` holds a pure
# `apply(params, x)` and a spec of every weight leaf (path, shape, role, fan-in/out,
# neuron axes). A **population** is many weight sets of one target, stacked along a
# leading `targets` axis: a plain pytree of arrays.
#
# This notebook walks through the core: make a target, initialise and run a population,
# flatten it to a `[targets, P]` matrix, export it in PyTorch's `state_dict` layout,
# train a population with one vmapped program, and build and load a small model zoo.
#
# Set `SMOKE=1` to shrink every size (the test suite runs this file that way), and
# `OUT_DIR` to choose where files go (default: a fresh temporary directory).

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
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hyper import data, make_target, population, zoo  # noqa: E402
from hyper.train import TrainConfig, Trainer  # noqa: E402

SMOKE = os.environ.get("SMOKE") == "1"
OUT_DIR = Path(os.environ.get("OUT_DIR") or tempfile.mkdtemp(prefix="weightspace_quickstart_"))
OUT_DIR.mkdir(parents=True, exist_ok=True)
print(f"SMOKE={SMOKE}, {jax.device_count()} JAX device(s), writing to {OUT_DIR}")

# %% [markdown]
# ## 1. A target and its spec
#
# `make_target` builds a Flax NNX module and reads it into a `Target`. Its `config`
# rebuilds it exactly, which is how zoos and checkpoints restore targets.

# %%
target = make_target("mlp", input_shape=(8, 8), widths=(32,), out_features=10)
print(target)
print(target.describe())
print(target.config)

# %% [markdown]
# ## 2. A population
#
# `init_population` draws `n` independent weight sets; every leaf gets a leading
# `targets` axis. `apply_population` runs them all on one batch with one jitted vmap.

# %%
n = 4 if SMOKE else 16
pop = target.init_population(jax.random.key(0), n)
print(jax.tree.map(lambda v: v.shape, pop))

digits = data.load("digits")
print(digits)
logits = target.apply_population(pop, digits.x_test[:5])
print("logits:", logits.shape)  # [targets, batch, classes]

# %% [markdown]
# ## 3. Flatten to a matrix and back
#
# `flatten` concatenates the leaves in spec order, each row-major, into `[targets, P]`;
# `unflatten` is its exact inverse.

# %%
matrix = population.flatten(target, pop)
print("matrix:", matrix.shape, "=", (n, target.num_params))
back = population.unflatten(target, matrix)
assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), pop, back)))

# %% [markdown]
# ## 4. PyTorch `state_dict` layout
#
# Export gives numpy arrays under PyTorch names and layouts (`Linear.weight` is
# `[out, in]`); with `batched=True` every array keeps the leading `targets` axis.
# Importing goes back exactly.

# %%
state_dict = population.to_torch_state_dict(target, pop, batched=True)
for key, value in state_dict.items():
    print(f"{key:18s} {value.shape}")
print(population.torch_key_map(target))
again = population.from_torch_state_dict(target, state_dict, batched=True)
assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), pop, again)))

# %% [markdown]
# ## 5. Train a population
#
# `Trainer` trains all members in one compiled call per epoch (a `jax.lax.scan` over
# steps inside a `jax.vmap` over members). Each member has its own seed and may have its
# own learning rate, weight decay and train fraction.

# %%
epochs = 1 if SMOKE else 10
trainer = Trainer(target, digits, TrainConfig(optimizer="adam", batch_size=64))
learning_rates = np.geomspace(1e-3, 3e-2, n)
state = trainer.init(jax.random.key(1), n, learning_rate=learning_rates)
for epoch in range(epochs):
    state, stats = trainer.train_epoch(state, epoch)
metrics = trainer.evaluate(state.params)
for lr, acc in zip(learning_rates, np.asarray(metrics["test_acc"]), strict=True):
    print(f"learning rate {lr:.4f}: test accuracy {acc:.3f}")

# %% [markdown]
# ## 6. A model zoo
#
# `zoo.build` trains a hyperparameter grid times seeds. Members that share a compiled
# program (same activation, dropout and optimizer) form a group and train together; the
# zoo directory holds `zoo.json`, a metadata table and Orbax checkpoints per group and
# checkpointed epoch. The same is available as `weightspace zoo ...` on the command line.
# (Each group compiles its own training step, so `SMOKE=1` keeps to one activation.)

# %%
zoo_dir = OUT_DIR / "zoo"
grid = {
    "learning_rate": [3e-3, 1e-2, 3e-2],
    "weight_decay": [0.0],
    "init_scale": [1.0],
    "train_fraction": [1.0],
    "activation": ["relu"] if SMOKE else ["relu", "tanh"],  # one compiled group per activation
}
built = zoo.build(
    zoo_dir,
    "digits-mlp",
    grid=grid,
    seeds=2 if SMOKE else 8,
    epochs=1 if SMOKE else 10,
    checkpoint_epochs=[0, 1] if SMOKE else [0, 1, 2, 5, 10],
    overwrite=True,
    progress=False,
)
print(sorted(os.listdir(zoo_dir)))

# %% [markdown]
# Loading restores each group's population against an abstract tree built from its
# target (nothing is unpickled), plus one metadata row per member and checkpointed epoch.

# %%
loaded = zoo.load(zoo_dir)
print(zoo.summarize(loaded))
for g in loaded.groups:
    shapes = jax.tree.map(lambda v: v.shape, g.params)
    print(g.id, g.target.name, f"{len(g.members)} members, epoch {g.epoch}", shapes)
print(loaded.rows()[0])

initial = zoo.load(zoo_dir, epoch=0)  # any checkpointed epoch
print("epoch 0 median test accuracy:", np.median([r["test_acc"] for r in initial.rows(0)]))

# %% [markdown]
# ## 7. Accuracy against learning rate

# %%
rows = loaded.rows()
fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
for act in grid["activation"]:
    lrs = [r["learning_rate"] for r in rows if r["activation"] == act]
    accs = [r["test_acc"] for r in rows if r["activation"] == act]
    ax.scatter(lrs, accs, label=act, alpha=0.7)
lr_grid = grid["learning_rate"]
ax.set_xscale("log")
ax.set_xticks(lr_grid, [f"{lr:g}" for lr in lr_grid])
ax.minorticks_off()
ax.set(
    xlabel="learning rate",
    ylabel=f"test accuracy at epoch {rows[0]['epoch']}",
    title="digits MLP zoo",
)
ax.legend()
figure_path = OUT_DIR / "accuracy_vs_learning_rate.png"
fig.savefig(figure_path, dpi=100)
print(f"figure: {figure_path}")

# %% [markdown]
# ## 8. Weights for PyTorch
#
# `hyper.formats` writes a network as a safetensors file in PyTorch's layout (`Linear`
# weights `[out, in]`, keys such as `layers.0.weight`), which a PyTorch module's
# `load_state_dict` takes as it is (`docs/formats.md` has the PyTorch snippet);
# `weightspace export --from ZOO --format safetensors --layout torch` does it for a whole zoo.
# Reading a file back checks every key, shape and dtype against the target.

# %%
from hyper import formats  # noqa: E402

g = loaded.groups[0]
member = population.take(g.params, 0)
path = formats.save_safetensors(
    g.target, member, OUT_DIR / "member0.safetensors", layout="torch", overwrite=True
)
print(sorted(formats.to_tensors(g.target, member, layout="torch")))
back = formats.load_safetensors(g.target, path)
pairs = zip(jax.tree.leaves(member), jax.tree.leaves(back), strict=True)
exact = all(np.array_equal(a, b) for a, b in pairs)
print(f"{path}: round trip exact: {exact}")
assert exact
