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
# # Graph metanetworks: networks as graphs
#
# `metanets.graph` turns a population of any MLP/CNN target (residual connections and
# BatchNorm included) into a `jraph.GraphsTuple`: one node per input channel, hidden
# channel and output; one edge per weight (dense) or kernel (conv); biases and
# normalization parameters as node features; residual additions as identity edges. The
# topology comes from the target's spec and its structural groups, and the conversion
# is exact in both directions.
#
# This notebook draws one network as its graph, shows that a graph metanetwork cannot
# tell a network from a hidden-unit permutation of it, and predicts test accuracy from
# weights on a small zoo (StatNN vs graph metanet, Kendall tau).
#
# Set `SMOKE=1` to shrink every size (the test suite runs this file that way), and
# `OUT_DIR` to choose where files go (default: a fresh temporary directory).

# %%
import json
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
from flax import nnx  # noqa: E402

from hyper import make_target, zoo  # noqa: E402
from hyper.symmetry import check_equivalent, permute, random_permutations  # noqa: E402
from metanets import batching, datasets, graph, graph_topology, metrics, predict  # noqa: E402
from metanets.models import GraphMetanet  # noqa: E402

SMOKE = os.environ.get("SMOKE") == "1"
OUT_DIR = Path(os.environ.get("OUT_DIR") or tempfile.mkdtemp(prefix="weightspace_metanets_"))
OUT_DIR.mkdir(parents=True, exist_ok=True)
print(f"SMOKE={SMOKE}, {jax.device_count()} JAX device(s), writing to {OUT_DIR}")

# %% [markdown]
# ## 1. One network drawn as its graph
#
# A residual CNN with BatchNorm and mixed kernel sizes. Columns are node sets (inputs,
# each layer's output channels, outputs); edge colour is the kernel's centre weight,
# dashed edges are residual identities.

# %%
target = make_target(
    "cnn2d",
    input_shape=(8, 8),
    channels=[4, 4, 6],
    kernel_size=[3, 5, 3],
    strides=[1, 1, 2],
    batchnorm=True,
    residual=True,
    activation="gelu",
    out_features=10,
)
params = target.init_population(jax.random.key(0), 1)
topo = graph_topology.topology(target)
g = graph.population_to_graphs(target, params)
print(f"{target.name}: {topo.num_nodes} nodes, {topo.num_edges} edges, window {topo.window}")
print("node sets:", [(name, size) for name, _, size, _ in topo.node_sets])
back = graph.graphs_to_population(target, g)
exact = all(
    bool(jnp.array_equal(a, b))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True)
)
print("params -> graph -> params exact:", exact)
assert exact  # bit for bit, every leaf

pos = np.zeros((topo.num_nodes, 2))
for si, (_, start, size, _) in enumerate(topo.node_sets):
    pos[start : start + size] = np.stack(
        [np.full(size, si), np.arange(size) - (size - 1) / 2], axis=1
    )
w = np.asarray(g.edges["w"])
centre = w[:, (topo.window[0] // 2) * topo.window[1] + topo.window[1] // 2]
fig, ax = plt.subplots(figsize=(8, 5))
lim = np.abs(centre[topo.edge_type == 0]).max()
for e in range(topo.num_edges):
    s, r = topo.senders[e], topo.receivers[e]
    residual = topo.edge_type[e] == graph_topology.EDGE_RESIDUAL
    ax.plot(
        *zip(pos[s], pos[r], strict=True),
        color="k" if residual else plt.cm.coolwarm(0.5 + centre[e] / (2 * lim)),
        ls="--" if residual else "-",
        lw=1.2 if residual else 0.5,
        alpha=0.9 if residual else 0.5,
    )
colors = np.array(["tab:green", "tab:blue", "tab:red"])[topo.node_type]
ax.scatter(pos[:, 0], pos[:, 1], c=colors, s=30, zorder=3)
ax.set_xticks(range(len(topo.node_sets)), [n for n, *_ in topo.node_sets], rotation=20)
ax.set_yticks([])
ax.set_title("a residual CNN as a graph (green: inputs, blue: hidden, red: outputs)")
fig.tight_layout()
fig.savefig(OUT_DIR / "network_graph.png", dpi=100)

# %% [markdown]
# ## 2. Invariance: a permuted network is the same network
#
# `hyper.symmetry.permute` shuffles the hidden channels (residual-tied channels and BN
# statistics move together). The function is unchanged, and so is the metanet's
# prediction; its edit of the weights permutes the same way.

# %%
one = jax.tree.map(lambda a: a[0], params)
perms = random_permutations(target, jax.random.key(1))
moved = permute(target, one, perms)
x = np.random.default_rng(0).standard_normal((8, 8, 8)).astype(np.float32)
same = check_equivalent(target, one, moved, x)
print("same function after permuting:", same)
assert same
both = jax.tree.map(lambda a, b: jnp.stack([a, b]), one, moved)
batch = batching.batch_graphs([(target, both)])
metanet = GraphMetanet(batch.edges["w"].shape[1], hidden=16, num_layers=2, rngs=nnx.Rngs(0))
y = np.asarray(metanet(batch))[:2, 0]
print(f"metanet outputs: {y[0]:.6f} vs {y[1]:.6f} (|diff| {abs(y[0] - y[1]):.1e})")
assert abs(y[0] - y[1]) < 1e-4  # invariant up to float32 summation order
edited = graph.graphs_to_populations(metanet.edit(batch, 0.1), [(target, 2)])[0]
e0 = permute(target, jax.tree.map(lambda a: a[0], edited), perms)
e1 = jax.tree.map(lambda a: a[1], edited)
gap = max(
    float(jnp.abs(a - b).max())
    for a, b in zip(jax.tree.leaves(e0), jax.tree.leaves(e1), strict=True)
)
print(f"equivariant edit: max |permute(edit(net)) - edit(permute(net))| = {gap:.1e}")
assert gap < 1e-4  # equivariant up to float32 summation order

# %% [markdown]
# ## 3. Predicting test accuracy from weights
#
# A small digits-CNN zoo (checkpoints at several epochs), split by training run; StatNN
# statistics with gradient-boosted trees against the graph metanet. The full-size
# comparison (homogeneous zoo and a heterogeneous wild park) is
# `bench/metanet_predict.py`; its last results are printed at the end.

# %%
zoo_dir = OUT_DIR / "zoo"
z = zoo.build(
    zoo_dir,
    "digits-cnn",
    arch={"arch": "cnn2d", "channels": [4, 4], "out_features": 10},
    grid={
        "learning_rate": [3e-3, 3e-2] if SMOKE else [1e-3, 3e-3, 1e-2, 3e-2],
        "weight_decay": [0.0] if SMOKE else [0.0, 1e-3],
        "init_scale": [0.5, 1.0],
        "train_fraction": [0.5, 1.0],
        "activation": ["relu"] if SMOKE else ["relu", "tanh"],
        "dropout": [0.0],
    },
    seeds=2 if SMOKE else 4,
    epochs=2 if SMOKE else 6,
    checkpoint_epochs=[1, 2] if SMOKE else [1, 3, 6],
    progress=False,
    overwrite=True,
)
ds = datasets.load_zoos([zoo_dir])
train, test = datasets.split_by_run(ds.run, 0.25, seed=0)
print(f"{len(ds)} checkpoints of {z.num_members} runs; {len(test)} held out")
fits = {
    "statnn_gbm": predict.fit("statnn_gbm", ds, train),
    "gmn": predict.fit("gmn", ds, train, epochs=3 if SMOKE else 20),
}
fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
for ax, (name, model) in zip(axes, fits.items(), strict=True):
    pred = model.predict(ds, test)
    tau = metrics.kendall_tau(pred, ds.y[test])
    ax.scatter(ds.y[test], pred, s=10)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_title(f"{name}: Kendall tau {tau:.3f}")
    ax.set_xlabel("true test accuracy")
axes[0].set_ylabel("predicted")
fig.tight_layout()
fig.savefig(OUT_DIR / "tau_scatter.png", dpi=100)

# %%
name = "bench/results/metanet_predict.json"
candidates = [Path(name), Path("..") / name]
if "__file__" in globals():  # run as a script
    candidates.append(Path(__file__).resolve().parents[1] / name)
results = next((c for c in candidates if c.exists()), None)
if results is not None:
    tau = json.loads(results.read_text())["tau"]
    for zoo_kind, row in tau.items():
        cells = ", ".join(f"{k} {v:.3f}" for k, v in row.items() if v is not None)
        print(f"bench tau, {zoo_kind}: {cells}")
