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
# # Module assembly: compact task- and budget-specific models without training
#
# A **supernet** (`generators.supernet`) holds a shared stem, stages of pretrained modules
# of different widths on a residual stream, and a head over all classes. It is pretrained
# once with random module and channel gating. An **assembler** (`generators.assembler`,
# Flax NNX) reads a scenario (a task as a class subset, a budget as a fraction of the
# supernet's parameters) and scores every hidden channel; projecting the scores onto the
# budget picks modules and channels. The **factory** (`generators.factory`) cuts them out
# physically (`hyper.compact.remove_units`): a standalone compact `Target` with only
# those modules and channels and a head restricted to the task's classes.
#
# This notebook plots accuracy against budget for a few held-out tasks (assembler vs
# group-L2 pruning of the supernet) and the time to get one model (assembling vs
# training it from scratch with `hyper.train.Trainer`). Set `SMOKE=1` for tiny sizes.
# The measured numbers of record are in `bench/results/assembler.json`
# (`python bench/assembler.py`).

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

from generators import (  # noqa: E402
    Factory,
    Scenario,
    SupernetConfig,
    class_subsets,
    export_model,
    load_model,
    make_factory,
)
from hyper import data  # noqa: E402
from hyper.data import Dataset  # noqa: E402
from hyper.train import TrainConfig, Trainer  # noqa: E402

SMOKE = os.environ.get("SMOKE") == "1"
OUT_DIR = Path(os.environ.get("OUT_DIR") or tempfile.mkdtemp(prefix="weightspace_assembly_"))
OUT_DIR.mkdir(parents=True, exist_ok=True)
print(f"SMOKE={SMOKE}, writing to {OUT_DIR}")

# %% [markdown]
# ## 1. Pretrain a supernet and train its assembler
#
# Class subsets of 2 to 5 classes are split into a training pool (for the assembler) and
# a held-out pool: the tasks we evaluate on were never seen while training the assembler.

# %%
ds = data.load("digits")
train_pool, held_pool = class_subsets(10, (2, 3, 4, 5), 0.2, jax.random.key(1))
config = (
    SupernetConfig(ds.input_shape, 10, stem_width=16, module_widths=(8, 16), num_stages=2)
    if SMOKE
    else SupernetConfig(ds.input_shape, 10)
)
factory, info = make_factory(
    ds,
    jax.random.key(0),
    config=config,
    subsets=train_pool,
    pretrain_steps=100 if SMOKE else 3000,
    assembler_steps=30 if SMOKE else 1500,
)
costs = factory.supernet.costs()
print(f"supernet: {costs['total']} parameters, stem {costs['stem']}")
print(f"pretraining {info['pretrain_s']:.1f} s, assembler {info['assembler_s']:.1f} s")
print("supernet test accuracy (all classes):", round(info["pretrain"]["test_accuracy_full"], 4))

# %% [markdown]
# ## 2. Accuracy against budget, per held-out task

# %%
tasks = [held_pool[i] for i in (0, len(held_pool) // 2, len(held_pool) - 1)]
smallest = max((costs["stem"] + costs["head_per_class"] * len(t)) / costs["total"] for t in tasks)
budgets = np.linspace(max(0.1, smallest + 0.01), 0.5, 3 if SMOKE else 6)
group_l2 = Factory(factory.supernet, factory.params, None)


def task_accuracy(model):
    sel = np.isin(ds.y_test, model.classes)
    return float(np.mean(model.predict(ds.x_test[sel]) == ds.y_test[sel]))


fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), sharey=True)
for ax, task in zip(np.atleast_1d(axes), tasks, strict=True):
    scen = [Scenario(task, float(b)) for b in budgets]
    acc_a = [task_accuracy(m) for m in factory.customize_many(scen)]
    acc_g = [task_accuracy(m) for m in group_l2.customize_many(scen)]
    ax.plot(budgets, acc_a, "o-", label="assembler")
    ax.plot(budgets, acc_g, "s--", label="group-L2 pruning")
    ax.set_title(f"classes {task}")
    ax.set_xlabel("budget (fraction of supernet params)")
np.atleast_1d(axes)[0].set_ylabel("test accuracy on the task")
np.atleast_1d(axes)[0].legend()
fig.tight_layout()
fig.savefig(OUT_DIR / "accuracy_vs_budget.png", dpi=100)

# %% [markdown]
# ## 3. Time to a model
#
# Assembling: one `customize` call (after compilation), and per model when 100 scenarios go
# in one `customize_many` call. Training from scratch: the same compact architecture,
# freshly initialised, trained with `hyper.train.Trainer` on the task's classes.

# %%
scen = Scenario(tasks[0], float(budgets[-1]))
factory.customize(scen)  # compile
t0 = time.perf_counter()
model = factory.customize(scen)
t_one = time.perf_counter() - t0
rng = np.random.default_rng(0)
many = [Scenario(held_pool[i], float(budgets[-1])) for i in rng.choice(len(held_pool), 100)]
factory.customize_many(many)  # compile the batch size
t0 = time.perf_counter()
factory.customize_many(many)
t_many = (time.perf_counter() - t0) / len(many)

# the task's data, labels renumbered to the compact head's outputs
classes = np.asarray(model.classes)
tr, te = np.isin(ds.y_train, classes), np.isin(ds.y_test, classes)
remap = np.searchsorted(classes, np.arange(10)).astype(np.int32)
task_ds = Dataset(
    "digits-task",
    ds.x_train[tr],
    remap[ds.y_train[tr]],
    ds.x_test[te],
    remap[ds.y_test[te]],
    len(classes),
)
epochs = 2 if SMOKE else 60
trainer = Trainer(model.target, task_ds, TrainConfig(batch_size=64))
state = trainer.init(jax.random.key(3), n=1, learning_rate=3e-3)
state, _ = trainer.train_epoch(state, 0)  # compile
state = trainer.init(jax.random.key(3), n=1, learning_rate=3e-3)
t0 = time.perf_counter()
for e in range(epochs):
    state, _ = trainer.train_epoch(state, e)
jax.block_until_ready(state.params)
t_scratch = time.perf_counter() - t0
acc_scratch = float(trainer.evaluate(state.params)["test_acc"][0])
print(f"assembled: {task_accuracy(model):.4f} in {1e3 * t_one:.1f} ms")
print(f"from scratch ({epochs} epochs): {acc_scratch:.4f} in {t_scratch:.2f} s")

fig, ax = plt.subplots(figsize=(5, 3))
names = ["assemble (1)", "assemble (100, per model)", f"scratch ({epochs} epochs)"]
ax.bar(names, [1e3 * t_one, 1e3 * t_many, 1e3 * t_scratch])
ax.set_yscale("log")
ax.set_ylabel("ms to a model")
fig.tight_layout()
fig.savefig(OUT_DIR / "time_to_model.png", dpi=100)

# %% [markdown]
# ## 4. Export: the compact model loads on its own

# %%
path = export_model(OUT_DIR / "model", model)
again = load_model(path)
print(again.target.describe())
assert np.array_equal(again.predict(ds.x_test[:20]), model.predict(ds.x_test[:20]))
