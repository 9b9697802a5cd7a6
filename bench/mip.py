"""Reproduces the claims of the MIP paper at small scale (issue 3).

"Magnitude Invariant Parametrizations Improve Hypernetwork Learning" (Gonzalez Ortiz et
al., ICLR 2024) claims that the cos|sin input encoding plus the residual output
θ = θ0 + Δθ make hypernetworks converge faster, fail on fewer optimizer settings, and
generate weights whose norm does not follow the norm of the condition. This benchmark
trains one `hyper.hypernets.HyperNet` per (task, arm, optimizer, learning rate, seed) and measures
exactly that.

Tasks (conditions per step M = 8, one shared batch per step):

- **T1** loss-conditioned digits classifier: target MLP 64-128-128-10, γ ∈ [0, 1],
  loss = cross-entropy + γ·1e-3·‖θ‖² (`hyper.hypernets.train.l2_conditioned_loss`), batch 128.
- **T2** family of functions: target MLP 1-32-32-1 fits sin(ωx + φ) on 64 points
  x ~ U[-π, π] per step, γ = (ω, φ) rescaled to [0, 1]² with ω ∈ [1, 5], φ ∈ [0, π];
  mean squared error.
- **T3** MNIST-1D 1-D CNN (channels 8-8-8, kernel 5, strides 1-2-2, global average pool,
  dense), γ ∈ [0, 1] sets the label smoothing ε = 0.3·γ, batch 128.

Arms: ``default`` (raw γ, θ = h(γ), framework-default head and hidden init), ``encoding``
(cos|sin only), ``residual`` (θ0 residual only), ``mip`` (the `HyperNet` defaults: cos|sin,
residual, split fan-out head, Kaiming fan-out hidden), ``hyperfan`` (default + hyperfan-in
head), ``zero_head`` (bias-hyperinit: raw γ, zero head, θ0 = target init).

The seeds and learning rates of one (task, arm) train together: their parameter states
are stacked along a ``members`` axis, one jitted `jax.lax.scan` runs all steps of a
`jax.vmap`-ed update, and the members are split across the CPU cores. Adam and
SGD+momentum share one program: SGD's momentum buffer is Adam's first moment / (1 - 0.9).

Grid: Adam lr ∈ {1e-4, 3e-4, 1e-3, 3e-3, 1e-2} and SGD+momentum 0.9 lr ∈ {1e-3, 1e-2,
1e-1}, seeds 0-2, for every task and arm (144 runs per task). Thresholds follow one rule
fixed before any run (see ``protocol`` in the JSON): within 10% of the gap between the
all-zero network's loss and the best final loss of any arm.

``--quick`` (< 2 min): arms default and mip, Adam {1e-3, 1e-2} + SGD {1e-1}, 2 seeds,
40-80 steps; the JSON says ``"quick": true``.

Usage: ``python bench/mip.py [--quick] [--out FILE] [--tasks T1,T2] [--arms ...]``; writes
``bench/results/mip.json`` (``--quick``: ``bench/results/quick/mip.json``) and prints the
same content as one JSON line (logs on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.common import logger, machine, write_result  # noqa: E402

# Version 2: provenance (git, schema_version) and goals written by bench.common.write_result.
SCHEMA_VERSION = 2

log = logger("mip")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import hyper.sharding  # noqa: E402
from hyper import data as data_lib  # noqa: E402
from hyper.architectures import make_target  # noqa: E402
from hyper.hypernets.conditions import Continuous, sample  # noqa: E402
from hyper.hypernets.hypernet import HyperNet, norm_slope  # noqa: E402
from hyper.hypernets.train import l2_conditioned_loss, steps_to_threshold  # noqa: E402
from hyper.target import Target  # noqa: E402

M = 8  # conditions per step
HIDDEN = (16, 64)  # hypernet hidden sizes (the digits-mip preset, hyperlight's peer)
WINDOW = 20  # running-mean window of the training loss (steps)
GAP_FRACTION = 0.1  # threshold: within 10% of the (all-zero net -> best) loss gap
STRICT_GAP_FRACTION = 0.02
STALL_FRACTION = 0.1  # stalled: less than 10% of that gap closed by the end
EXPLODE_FACTOR = 10.0  # diverged: running loss above 10x max(initial, all-zero) loss
SLOPE_GAMMAS = np.linspace(0.05, 1.0, 16, dtype=np.float32)
SLOPE_TOL = 0.25  # "slope ≈ 0": |s| < 0.25; "slope ≈ 1": |s - 1| < 0.25

ARMS: dict[str, dict[str, Any]] = {
    "default": {
        "encoding": "raw",
        "residual": False,
        "head_init": "default",
        "hidden_init": "default",
    },
    "encoding": {
        "encoding": "cos|sin",
        "residual": False,
        "head_init": "default",
        "hidden_init": "default",
    },
    "residual": {
        "encoding": "raw",
        "residual": True,
        "head_init": "default",
        "hidden_init": "default",
    },
    "mip": {
        "encoding": "cos|sin",
        "residual": True,
        "head_init": "split_fan_out",
        "hidden_init": "kaiming_fan_out",
    },
    "hyperfan": {
        "encoding": "raw",
        "residual": False,
        "head_init": "hyperfan_in",
        "hidden_init": "default",
    },
    "zero_head": {
        "encoding": "raw",
        "residual": True,
        "head_init": "zero",
        "hidden_init": "default",
    },
}

FULL_GRID = {"adam": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], "sgd": [1e-3, 1e-2, 1e-1]}
QUICK_GRID = {"adam": [1e-3, 1e-2], "sgd": [1e-1]}
QUICK_ARMS = ("default", "mip")
SGD_MOMENTUM = 0.9


# ---------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Task:
    """One hypernetwork task.

    Attributes:
      name, description: for the report.
      target: the target network.
      specs: the hypernet's conditions (one continuous ``"gamma"``).
      batch: ``key -> (x [B, ...], y [B] or None)``, one shared batch per step.
      loss: ``(gamma [*shape], out [B, ...], x, y, params) -> scalar`` for one condition.
      eval_gammas: fixed conditions `[E, *shape]` for the final evaluation.
      eval_x, eval_y: fixed evaluation data.
      classification: whether to report accuracy.
    """

    name: str
    description: str
    target: Target
    specs: tuple[Continuous, ...]
    batch: Callable[[jax.Array], tuple[jax.Array, jax.Array | None]]
    loss: Callable[..., jax.Array]
    eval_gammas: np.ndarray
    eval_x: jax.Array
    eval_y: jax.Array | None
    classification: bool
    slope_values: np.ndarray
    info: dict[str, Any]


def _sampled_batch(x: np.ndarray, y: np.ndarray, size: int):
    x, y = jnp.asarray(x), jnp.asarray(y)

    def batch(key):
        idx = jax.random.randint(key, (size,), 0, x.shape[0])
        return x[idx], y[idx]

    return batch


def task_t1() -> Task:
    ds = data_lib.load("digits")
    target = make_target("mlp", input_shape=(8, 8), widths=[128, 128], out_features=10)
    l2 = l2_conditioned_loss("gamma", 1e-3)

    def loss(gamma, out, x, y, params):
        return l2({"gamma": gamma}, out, y, params)

    return Task(
        name="T1",
        description="loss-conditioned digits classifier: MLP 64-128-128-10, "
        "loss = cross-entropy + γ·1e-3·‖θ‖², γ ∈ [0, 1]",
        target=target,
        specs=(Continuous("gamma"),),
        batch=_sampled_batch(ds.x_train, ds.y_train, 128),
        loss=loss,
        eval_gammas=np.linspace(0.0, 1.0, 8, dtype=np.float32),
        eval_x=jnp.asarray(ds.x_test),
        eval_y=jnp.asarray(ds.y_test),
        classification=True,
        slope_values=SLOPE_GAMMAS,
        info={"dataset": "digits", "batch_size": 128, "eval": "test split, 8 γ in [0, 1]"},
    )


OMEGA = (1.0, 5.0)
PHI = (0.0, math.pi)


def _sine(gamma: jax.Array, x: jax.Array) -> jax.Array:
    omega = OMEGA[0] + (OMEGA[1] - OMEGA[0]) * gamma[0]
    phi = PHI[0] + (PHI[1] - PHI[0]) * gamma[1]
    return jnp.sin(omega * x + phi)


def task_t2() -> Task:
    target = make_target("mlp", input_shape=(1,), widths=[32, 32], out_features=1)

    def batch(key):
        return jax.random.uniform(key, (64, 1), minval=-math.pi, maxval=math.pi), None

    def loss(gamma, out, x, y, params):
        del y, params
        return jnp.mean(jnp.square(out - _sine(gamma, x)))

    g = np.linspace(0.0, 1.0, 4, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    # The norm sweep runs along the diagonal γ = (t, t).
    slope_values = np.stack([SLOPE_GAMMAS, SLOPE_GAMMAS], -1)
    return Task(
        name="T2",
        description="family of functions: MLP 1-32-32-1 fits sin(ωx + φ), x ~ U[-π, π], "
        "γ = ((ω - 1)/4, φ/π) ∈ [0, 1]², ω ∈ [1, 5], φ ∈ [0, π]; mean squared error",
        target=target,
        specs=(Continuous("gamma", (2,)),),
        batch=batch,
        loss=loss,
        eval_gammas=grid,
        eval_x=jnp.linspace(-math.pi, math.pi, 256)[:, None],
        eval_y=None,
        classification=False,
        slope_values=slope_values,
        info={
            "points_per_step": 64,
            "omega": list(OMEGA),
            "phi": [PHI[0], PHI[1]],
            "eval": "256 evenly spaced x, 4x4 grid of γ",
            "slope_sweep": "γ = (t, t), t in [0.05, 1]",
        },
    )


def _conv1d_same(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """'SAME' 1-D convolution as im2col + matmul (`x` `[B, L, C]`, `kernel` `[k, C, O]`)."""
    k, length = kernel.shape[0], x.shape[1]
    out = -(-length // stride)
    total = max((out - 1) * stride + k - length, 0)
    xp = jnp.pad(x, ((0, 0), (total // 2, total - total // 2), (0, 0)))
    patches = jnp.stack([xp[:, j : j + (out - 1) * stride + 1 : stride] for j in range(k)], 2)
    return jnp.einsum("blkc,kco->blo", patches, kernel)


def cnn1d_im2col(nnx_target: Target) -> Target:
    """The same CNN1d as `nnx_target` (same params layout, spec and init), applied with
    im2col matmuls. XLA:CPU runs a conv vmapped over weight sets as a grouped convolution:
    with the NNX conv, one training step of 24 hypernets x 8 conditions (16-channel convs)
    took 42 s here; with im2col, steps take ~0.1 s."""
    cfg = nnx_target.config
    channels = cfg["channels"]
    strides = cfg.get("strides") or [1] + [2] * (len(channels) - 1)
    act = jax.nn.relu

    def apply(params, x):
        if x.ndim == 2:
            x = x[..., None]
        for i, s in enumerate(strides):
            conv = params["convs"][str(i)]
            x = act(_conv1d_same(x, conv["kernel"], s) + conv["bias"])
        x = x.mean(axis=1)
        return x @ params["dense"]["kernel"] + params["dense"]["bias"]

    t = Target.from_function(
        apply,
        nnx_target.abstract_params(),
        init=nnx_target.init,
        sample_input=jnp.zeros((1, *nnx_target.input_shape), jnp.float32),
        name=nnx_target.name + "[im2col]",
        config=cfg,
    )
    if [s.to_json() for s in t.spec] != [s.to_json() for s in nnx_target.spec]:
        raise RuntimeError("cnn1d_im2col: the spec differs from the NNX target's")
    rng = np.random.default_rng(0)
    p = jax.tree.map(
        lambda a: rng.normal(size=a.shape).astype(np.float32), nnx_target.abstract_params()
    )
    xs = rng.normal(size=(4, *nnx_target.input_shape)).astype(np.float32)
    err = float(jnp.max(jnp.abs(t.apply(p, xs) - nnx_target.apply(p, xs))))
    if err > 1e-4:
        raise RuntimeError(f"cnn1d_im2col: outputs differ from the NNX target's by {err}")
    return t


LABEL_SMOOTHING_MAX = 0.3


def task_t3() -> Task:
    ds = data_lib.load("mnist1d")
    nnx_target = make_target(
        "cnn1d", input_shape=(40,), channels=[8, 8, 8], out_features=10, kernel_size=5
    )
    target = cnn1d_im2col(nnx_target)

    def loss(gamma, out, x, y, params):
        del x, params
        eps = LABEL_SMOOTHING_MAX * gamma
        labels = optax.smooth_labels(jax.nn.one_hot(y, out.shape[-1]), eps)
        return jnp.mean(optax.softmax_cross_entropy(out, labels))

    return Task(
        name="T3",
        description="MNIST-1D 1-D CNN (channels 8-8-8, kernel 5, strides 1-2-2) conditioned "
        f"on label smoothing ε = {LABEL_SMOOTHING_MAX}·γ, γ ∈ [0, 1]",
        target=target,
        specs=(Continuous("gamma"),),
        batch=_sampled_batch(ds.x_train, ds.y_train, 128),
        loss=loss,
        eval_gammas=np.linspace(0.0, 1.0, 8, dtype=np.float32),
        eval_x=jnp.asarray(ds.x_test),
        eval_y=jnp.asarray(ds.y_test),
        classification=True,
        slope_values=SLOPE_GAMMAS,
        info={
            "dataset": "mnist1d",
            "batch_size": 128,
            "eval": "test split, 8 γ in [0, 1]",
            "apply": "im2col matmuls, checked equal to make_target('cnn1d') outputs",
        },
    )


TASKS = {"T1": task_t1, "T2": task_t2, "T3": task_t3}


# ---------------------------------------------------------------------------------------
# Training one (task, arm) over a grid of (optimizer, lr, seed) members
# ---------------------------------------------------------------------------------------


def _eval_members(task: Task, hnet: HyperNet) -> tuple[jax.Array, jax.Array]:
    """Mean loss and accuracy of the generated targets over `task.eval_gammas`."""
    gammas = jnp.asarray(task.eval_gammas)
    pop = hnet({"gamma": gammas})
    apply = task.target.pure_apply
    out = jax.vmap(apply, in_axes=(0, None))(pop, task.eval_x)
    losses = jax.vmap(task.loss, in_axes=(0, 0, None, None, 0))(
        gammas, out, task.eval_x, task.eval_y, pop
    )
    if task.classification:
        acc = jnp.mean(jnp.argmax(out, -1) == task.eval_y[None])
    else:
        acc = jnp.float32(jnp.nan)
    return jnp.mean(losses), acc


def trivial_loss(task: Task) -> float:
    """The evaluation loss of the all-zero target network (a constant predictor)."""

    @jax.jit
    def loss():
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), task.target.abstract_params())
        out = task.target.pure_apply(zeros, task.eval_x)
        gammas = jnp.asarray(task.eval_gammas)
        return jnp.mean(
            jax.vmap(lambda g: task.loss(g, out, task.eval_x, task.eval_y, zeros))(gammas)
        )

    return float(loss())


def train_arm(
    task: Task,
    arm: Mapping[str, Any],
    members: Sequence[tuple[str, float, int]],
    steps: int,
) -> dict[str, Any]:
    """Trains one hypernet per member ``(optimizer, lr, seed)``; all in one jitted scan.

    Returns:
      losses `[steps, R]` (the training loss before each update), the final evaluation
      loss and accuracy `[R]`, the norm slopes at init (per seed) and after training (per
      member, None where the weights are not finite), compile and run seconds.
    """
    seeds = sorted({s for _, _, s in members})

    def build(key):
        return HyperNet(task.target, task.specs, hidden=HIDDEN, rngs=nnx.Rngs(key), **arm)

    # Eager construction: its small kernels are compiled once and reused by every arm.
    parts = {s: nnx.split(build(jax.random.key(s)), nnx.Param, ...) for s in seeds}
    graphdef, _, rest = parts[seeds[0]]
    slope_init = {s: _slope(task, nnx.merge(*parts[s])) for s in seeds}
    host_of = {s: jax.tree.map(np.asarray, parts[s][1]) for s in seeds}

    r = len(members)
    params = jax.tree.map(lambda *a: np.stack(a), *[host_of[s] for _, _, s in members])
    lr = np.asarray([lr for _, lr, _ in members], np.float32)
    is_adam = np.asarray([opt == "adam" for opt, _, _ in members])
    seed_ids = np.asarray([s for _, _, s in members], np.int32)
    adam = optax.scale_by_adam()
    opt_state = optax.ScaleByAdamState(
        count=np.zeros(r, np.int32),
        mu=jax.tree.map(np.zeros_like, params),
        nu=jax.tree.map(np.zeros_like, params),
    )

    n_dev = len(jax.devices())
    if n_dev > 1 and r % n_dev == 0:
        mesh = hyper.sharding.targets_mesh()
        params, opt_state, lr, is_adam, seed_ids = hyper.sharding.shard_targets(
            (params, opt_state, lr, is_adam, seed_ids), mesh
        )

    def member_loss(p, key):
        kc, kb = jax.random.split(key)
        hnet = nnx.merge(graphdef, p, rest)
        conds = sample(hnet.specs, kc, M)
        xb, yb = task.batch(kb)
        pop = hnet(conds)
        out = jax.vmap(task.target.pure_apply, in_axes=(0, None))(pop, xb)
        per = jax.vmap(task.loss, in_axes=(0, 0, None, None, 0))(conds["gamma"], out, xb, yb, pop)
        return jnp.mean(per)

    def member_step(p, st, lr_i, adam_i, seed_i, step):
        # Batches and conditions depend on (seed, step) only: every arm and learning rate
        # of one seed sees the same data.
        key = jax.random.fold_in(jax.random.key(seed_i + 10_000), step)
        loss, grads = jax.value_and_grad(member_loss)(p, key)
        u_adam, st = adam.update(grads, st)
        # optax.sgd(momentum=0.9): trace = g + 0.9 trace = Adam's mu / (1 - 0.9).
        u = jax.tree.map(
            lambda a, mu: -lr_i * jnp.where(adam_i, a, mu / (1.0 - SGD_MOMENTUM)), u_adam, st.mu
        )
        return optax.apply_updates(p, u), st, loss

    @jax.jit
    def run(params, opt_state, lr, is_adam, seed_ids):
        def body(carry, step):
            p, st = carry
            p, st, loss = jax.vmap(member_step, in_axes=(0, 0, 0, 0, 0, None))(
                p, st, lr, is_adam, seed_ids, step
            )
            return (p, st), loss

        (params, _), losses = jax.lax.scan(body, (params, opt_state), jnp.arange(steps))
        ev_loss, ev_acc = jax.vmap(lambda p: _eval_members(task, nnx.merge(graphdef, p, rest)))(
            params
        )
        return params, losses, ev_loss, ev_acc

    t0 = time.perf_counter()
    compiled = run.lower(params, opt_state, lr, is_adam, seed_ids).compile()
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    params, losses, ev_loss, ev_acc = jax.block_until_ready(
        compiled(params, opt_state, lr, is_adam, seed_ids)
    )
    t_run = time.perf_counter() - t0

    host = jax.tree.map(np.asarray, params)
    slope_final = []
    for i in range(r):
        p_i = jax.tree.map(lambda a, i=i: jnp.asarray(a[i]), host)
        finite = all(np.all(np.isfinite(a[i])) for a in jax.tree.leaves(host))
        slope_final.append(_slope(task, nnx.merge(graphdef, p_i, rest)) if finite else None)
    return {
        "losses": np.asarray(losses, np.float64),
        "eval_loss": np.asarray(ev_loss, np.float64),
        "eval_acc": np.asarray(ev_acc, np.float64),
        "slope_init": slope_init,
        "slope_final": slope_final,
        "compile_s": t_compile,
        "run_s": t_run,
    }


def _slope(task: Task, hnet: HyperNet) -> float | None:
    s = norm_slope(hnet, "gamma", task.slope_values)
    return s if math.isfinite(s) else None


# ---------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
    """Median where +inf stands for 'not reached' / 'diverged'; None if it is +inf."""
    a = np.asarray(values, np.float64)
    if a.size == 0:
        return None
    m = float(np.median(a))
    return m if math.isfinite(m) else None


def _finite_median(values: Sequence[float | None]) -> float | None:
    a = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(a)) if a else None


def _r(x: float | None, nd: int = 4) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{nd}g}")


def run_metrics(losses: np.ndarray, trivial: float) -> dict[str, np.ndarray]:
    """Per-run quantities that do not depend on the threshold."""
    steps, r = losses.shape
    final = np.full(r, np.inf)
    diverged = np.zeros(r, bool)
    for i in range(r):
        li = losses[:, i]
        if not np.all(np.isfinite(li)):
            diverged[i] = True
            continue
        run = np.convolve(li, np.ones(WINDOW) / WINDOW, mode="valid")
        if run.max() > EXPLODE_FACTOR * max(li[0], trivial):
            diverged[i] = True
            continue
        final[i] = run[-1]
    return {"final": final, "diverged": diverged, "initial": losses[0]}


def _aggregate(runs: Mapping[str, np.ndarray | None], idx: np.ndarray) -> dict[str, Any]:
    """Medians and fractions over the runs selected by the boolean mask `idx`."""
    acc = runs["eval_acc"]
    return {
        "runs": int(idx.sum()),
        "steps_to_threshold_median": _r(_median(runs["reach"][idx])),
        "reached_fraction": _r(float(np.isfinite(runs["reach"][idx]).mean())),
        "steps_to_strict_threshold_median": _r(_median(runs["reach_strict"][idx])),
        "strict_reached_fraction": _r(float(np.isfinite(runs["reach_strict"][idx]).mean())),
        "final_loss_median": _r(_median(runs["final"][idx])),
        "initial_loss_median": _r(_finite_median(runs["initial"][idx].tolist())),
        "eval_loss_median": _r(_finite_median(runs["eval_loss"][idx].tolist())),
        "eval_acc_median": None if acc is None else _r(_finite_median(acc[idx].tolist())),
        "diverged_fraction": _r(float(runs["diverged"][idx].mean())),
        "stalled_fraction": _r(float(runs["stalled"][idx].mean())),
        "failed_fraction": _r(float(runs["failed"][idx].mean())),
    }


def summarise(
    task: Task,
    results: Mapping[str, Mapping[str, Any]],
    members: Sequence[tuple[str, float, int]],
    steps: int,
    trivial: float,
) -> dict[str, Any]:
    metrics = {a: run_metrics(res["losses"], trivial) for a, res in results.items()}
    cells = sorted({(o, lr) for o, lr, _ in members})
    # Best final loss: over every (arm, optimizer, lr) cell, the seed-median final loss.
    best = min(
        float(np.median([m["final"][i] for i, mem in enumerate(members) if mem[:2] == c]))
        for m in metrics.values()
        for c in cells
    )
    gap = trivial - best
    thr = best + GAP_FRACTION * gap
    strict = best + STRICT_GAP_FRACTION * gap
    curve_steps = np.unique(np.linspace(WINDOW, steps, 21).astype(int))
    out_arms: dict[str, Any] = {}
    for arm, res in results.items():
        met = metrics[arm]
        r = len(members)
        reach = np.full(r, np.inf)
        reach_strict = np.full(r, np.inf)
        for i in range(r):
            if met["diverged"][i]:
                continue
            s = steps_to_threshold(res["losses"][:, i], thr, WINDOW)
            reach[i] = np.inf if s is None else s
            s = steps_to_threshold(res["losses"][:, i], strict, WINDOW)
            reach_strict[i] = np.inf if s is None else s
        # Running-mean loss at `curve_steps`, non-finite (diverged) runs as +inf.
        run_mean = np.stack(
            [
                np.convolve(res["losses"][:, i], np.ones(WINDOW) / WINDOW, mode="valid")
                for i in range(r)
            ],
            1,
        )
        curves = np.where(np.isfinite(run_mean), run_mean, np.inf)[curve_steps - WINDOW]
        progress = (trivial - met["final"]) / gap
        stalled = ~met["diverged"] & (progress < STALL_FRACTION)
        failed = met["diverged"] | stalled

        runs = {
            "reach": reach,
            "reach_strict": reach_strict,
            "final": met["final"],
            "initial": met["initial"],
            "eval_loss": res["eval_loss"],
            "eval_acc": res["eval_acc"] if task.classification else None,
            "diverged": met["diverged"],
            "stalled": stalled,
            "failed": failed,
        }

        all_idx = np.ones(len(members), bool)
        entry = _aggregate(runs, all_idx)
        entry["by_optimizer"] = {}
        for opt in sorted({o for o, _, _ in members}):
            idx = np.array([o == opt for o, _, _ in members])
            e = _aggregate(runs, idx)
            # Best learning rate of this optimizer: the lowest seed-median steps.
            per_lr = {}
            for o, lr in cells:
                if o != opt:
                    continue
                j = np.array([mem[:2] == (o, lr) for mem in members])
                per_lr[f"{lr:g}"] = {
                    "steps_to_threshold": [
                        None if not math.isfinite(v) else int(v) for v in reach[j]
                    ],
                    "final_loss": [_r(v) for v in met["final"][j]],
                    "diverged": [bool(v) for v in met["diverged"][j]],
                    "stalled": [bool(v) for v in stalled[j]],
                    "eval_loss": [_r(v) for v in res["eval_loss"][j]],
                    "slope_final": [_r(res["slope_final"][k], 3) for k in np.nonzero(j)[0]],
                    "curve_median": [_r(v) for v in np.median(curves[:, j], 1)],
                }
            lr_medians = {
                lr: _median([np.inf if v is None else v for v in c["steps_to_threshold"]])
                for lr, c in per_lr.items()
            }
            reached = {lr: v for lr, v in lr_medians.items() if v is not None}
            e["best_lr"] = min(reached, key=reached.get) if reached else None
            e["best_lr_steps_to_threshold_median"] = _r(reached[e["best_lr"]]) if reached else None
            e["per_lr"] = per_lr
            entry["by_optimizer"][opt] = e
        entry["slope_init_median"] = _r(_finite_median(list(res["slope_init"].values())), 3)
        entry["slope_init_per_seed"] = [_r(v, 3) for v in res["slope_init"].values()]
        entry["slope_final_median"] = _r(_finite_median(res["slope_final"]), 3)
        q = [v for v in res["slope_final"] if v is not None]
        entry["slope_final_iqr"] = (
            [_r(float(np.percentile(q, 25)), 3), _r(float(np.percentile(q, 75)), 3)] if q else None
        )
        entry["compile_s"] = round(res["compile_s"], 2)
        entry["run_s"] = round(res["run_s"], 2)
        out_arms[arm] = entry

    return {
        "description": task.description,
        "target": task.target.name,
        "target_params": task.target.num_params,
        "steps": steps,
        "info": task.info,
        "trivial_loss": _r(trivial),
        "best_final_loss": _r(best),
        "threshold": _r(thr),
        "strict_threshold": _r(strict),
        "curve_steps": curve_steps.tolist(),
        "arms": out_arms,
        "claims": claims(out_arms, steps),
    }


def _speedup(base: float | None, new: float | None, steps: int) -> dict[str, Any]:
    """base/new with 'not reached' (None) as > `steps`: a bound when one side never reached."""
    if new is None and base is None:
        return {"value": None, "kind": "neither reached"}
    if new is None:
        return {"value": _r(base / steps), "kind": "upper bound (mip did not reach)"}
    if base is None:
        return {"value": _r(steps / new), "kind": "lower bound (default did not reach)"}
    return {"value": _r(base / new), "kind": "exact"}


def claims(arms: Mapping[str, Any], steps: int) -> dict[str, Any]:
    d, m = arms["default"], arms["mip"]
    grid = _speedup(d["steps_to_threshold_median"], m["steps_to_threshold_median"], steps)
    per_opt = {
        opt: {
            "grid_median": _speedup(
                d["by_optimizer"][opt]["steps_to_threshold_median"],
                m["by_optimizer"][opt]["steps_to_threshold_median"],
                steps,
            ),
            "best_lr": _speedup(
                d["by_optimizer"][opt]["best_lr_steps_to_threshold_median"],
                m["by_optimizer"][opt]["best_lr_steps_to_threshold_median"],
                steps,
            ),
        }
        for opt in d["by_optimizer"]
    }
    sd, sm = d["slope_init_median"], m["slope_init_median"]
    return {
        "speedup_mip_vs_default": grid,
        "speedup_by_optimizer": per_opt,
        "mip_2x_faster": (grid["value"] is not None and grid["value"] >= 2.0)
        if grid["kind"] != "upper bound (mip did not reach)"
        else False,
        "mip_fewer_failures": m["failed_fraction"] < d["failed_fraction"],
        "failed_fraction": {"default": d["failed_fraction"], "mip": m["failed_fraction"]},
        "slope_init": {"default": sd, "mip": sm},
        "slope_final": {"default": d["slope_final_median"], "mip": m["slope_final_median"]},
        "slope_default_near_1_at_init": sd is not None and abs(sd - 1) < SLOPE_TOL,
        "slope_mip_near_0_at_init": sm is not None and abs(sm) < SLOPE_TOL,
        "slope_mip_near_0_after_training": m["slope_final_median"] is not None
        and abs(m["slope_final_median"]) < SLOPE_TOL,
    }


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small grid, few steps (< 2 min)")
    ap.add_argument(
        "--out", default=None, help="default bench/results/mip.json (--quick: results/quick/)"
    )
    ap.add_argument("--tasks", default="T1,T2,T3", help="comma-separated subset of T1,T2,T3")
    ap.add_argument(
        "--arms",
        default=None,
        help="comma-separated subset of arms (default: all; quick: " + ",".join(QUICK_ARMS) + ")",
    )
    args = ap.parse_args(argv)
    hyper.sharding.use_cpu_cores()
    t_start = time.perf_counter()
    mach = machine()
    task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    arms = args.arms or ",".join(QUICK_ARMS if args.quick else ARMS)
    arm_names = [a.strip() for a in arms.split(",") if a.strip()]
    for t in task_names:
        if t not in TASKS:
            raise SystemExit(f"unknown task {t!r}; expected {sorted(TASKS)}")
    for a in arm_names:
        if a not in ARMS:
            raise SystemExit(f"unknown arm {a!r}; expected {sorted(ARMS)}")
    if "default" not in arm_names or "mip" not in arm_names:
        raise SystemExit("--arms must include default and mip")

    if args.quick:
        plan = {
            "T1": (QUICK_GRID, (0, 1), 40),
            "T2": (QUICK_GRID, (0, 1), 80),
            "T3": (QUICK_GRID, (0, 1), 40),
        }
    else:
        plan = {
            "T1": (FULL_GRID, (0, 1, 2), 200),
            "T2": (FULL_GRID, (0, 1, 2), 1000),
            "T3": (FULL_GRID, (0, 1, 2), 200),
        }

    tasks_out = {}
    for tname in task_names:
        grid, seeds, steps = plan[tname]
        t_task = time.perf_counter()
        task = TASKS[tname]()
        members = [(o, lr, s) for o in sorted(grid) for lr in grid[o] for s in seeds]
        trivial = trivial_loss(task)
        log(f"[{tname}] {task.description}; {len(members)} runs per arm, {steps} steps")
        results = {}
        for arm in arm_names:
            res = train_arm(task, ARMS[arm], members, steps)
            results[arm] = res
            log(
                f"[{tname}] {arm:9s} compile {res['compile_s']:.1f}s run {res['run_s']:.1f}s "
                f"({res['run_s'] / steps * 1e3:.0f} ms/step for {len(members)} runs); "
                f"median final loss {np.nanmedian(res['losses'][-WINDOW:].mean(0)):.4g}"
            )
        out = summarise(task, results, members, steps, trivial)
        out["grid"] = {o: [f"{lr:g}" for lr in grid[o]] for o in sorted(grid)}
        out["seeds"] = list(seeds)
        out["grid_reduced"] = grid != FULL_GRID
        out["wall_s"] = round(time.perf_counter() - t_task, 1)
        tasks_out[tname] = out
        c = out["claims"]
        log(
            f"[{tname}] {out['wall_s']}s; threshold {out['threshold']} (trivial "
            f"{out['trivial_loss']}, best {out['best_final_loss']}); speedup "
            f"{c['speedup_mip_vs_default']}; failed {c['failed_fraction']}; slope init "
            f"{c['slope_init']} final {c['slope_final']}"
        )

    mach["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "command": "python bench/mip.py" + (" --quick" if args.quick else ""),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "machine": mach,
        "protocol": {
            "conditions_per_step": M,
            "hypernet_hidden": list(HIDDEN),
            "hypernet_activation": "leaky_relu",
            "condition_sampling": "γ ~ U[0, 1] per condition, fresh each step",
            "optimizers": {
                "adam": "optax.adam defaults (b1 0.9, b2 0.999, eps 1e-8)",
                "sgd": f"optax.sgd momentum {SGD_MOMENTUM}",
            },
            "data_pairing": "batches and conditions depend on (seed, step) only; every arm "
            "and learning rate of a seed sees the same data, and a seed's hypernet "
            "initialisation is nnx.Rngs(seed)",
            "loss_curve": f"training loss before each update, running mean over {WINDOW} steps",
            "final_loss": f"running mean of the last {WINDOW} steps' training loss",
            "eval_loss": "loss of the generated targets on the fixed evaluation set "
            "(see each task's info), after training; its medians skip diverged runs",
            "trivial_loss": "evaluation loss of the all-zero target network (a constant "
            "predictor: ln 10 for the classifiers, E[sin²] for T2)",
            "best_final_loss": "over every (arm, optimizer, lr) cell, the median over seeds of "
            "the final loss; the minimum of these",
            "threshold_rule": f"best + {GAP_FRACTION} x (trivial - best): within "
            f"{GAP_FRACTION:.0%} of the gap between the all-zero network and the best "
            "final loss; fixed before any run",
            "strict_threshold_rule": f"best + {STRICT_GAP_FRACTION} x (trivial - best)",
            "steps_to_threshold": "first step at which the running mean loss is <= threshold "
            "(hyper.hypernets.train.steps_to_threshold); never reached or diverged -> +inf",
            "aggregation": "median over all (optimizer, lr, seed) runs of an arm, with +inf "
            "for runs that never reach the threshold (null when the median itself is +inf); "
            "best_lr: the learning rate with the lowest seed-median steps",
            "diverged": f"a non-finite loss at any step, or a running loss above "
            f"{EXPLODE_FACTOR:g} x max(initial loss, trivial loss)",
            "stalled": f"not diverged, and the final loss closed less than "
            f"{STALL_FRACTION:.0%} of the gap (trivial - best)",
            "failed": "diverged or stalled",
            "slope": "hyper.hypernets.hypernet.norm_slope: slope of log‖θ‖ vs log‖γ‖ over 16 γ in "
            "[0.05, 1] (T2 along γ = (t, t)); init: median over seeds; final: median over "
            "every non-diverged run",
            "curve_median": "per (arm, optimizer, lr): the seed-median running-mean training "
            "loss after each of curve_steps steps (null: a diverged run made the median inf)",
            "slope_criteria": f"≈ 0: |slope| < {SLOPE_TOL}; ≈ 1: |slope - 1| < {SLOPE_TOL}",
            "speedup": "default's median steps / mip's median steps; a bound when one of "
            "them never reached the threshold",
        },
        "arms": {a: ARMS[a] for a in arm_names},
        "tasks": tasks_out,
        "claims": {
            t: {
                k: v
                for k, v in o["claims"].items()
                if k
                in (
                    "speedup_mip_vs_default",
                    "speedup_by_optimizer",
                    "mip_2x_faster",
                    "failed_fraction",
                    "mip_fewer_failures",
                    "slope_default_near_1_at_init",
                    "slope_mip_near_0_at_init",
                    "slope_mip_near_0_after_training",
                )
            }
            for t, o in tasks_out.items()
        },
    }
    write_result(result, args.out, name="mip", schema=SCHEMA_VERSION, quick=args.quick)
    return result


if __name__ == "__main__":
    main()
