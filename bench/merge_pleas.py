"""The PLeaS section of `bench/merge.py` (issue 31; `hyper.pleas`), and the helpers both
share. Run through ``python bench/merge.py [--quick] [--pleas-only]``; that docstring says
what is measured and the goals.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import goal, logger
from hyper import data as data_lib
from hyper import merge, pleas
from hyper import population as pop_ops
from hyper.architectures import make_target
from hyper.target import Target
from hyper.train import TrainConfig, Trainer, evaluate

log = logger("merge")

FT_LR = 1e-3  # fine-tuning learning rate (both architectures)


def init_population(target: Target, seed: int, n: int) -> Any:
    """`n` independent LeCun-normal initialisations (biases 0, norm scales 1), on the host.

    The same distribution as the modules' own initialisers, without compiling the Flax
    init program for every width (that dominated `--quick`).
    """
    rng = np.random.default_rng(seed)
    leaves = []
    for s in target.spec:
        if s.role == "kernel":
            v = rng.standard_normal((n, *s.shape)) / np.sqrt(max(s.fan_in, 1))
        elif s.role == "norm_scale" or (s.role == "running_stat" and s.path.endswith("var")):
            v = np.ones((n, *s.shape))
        else:
            v = np.zeros((n, *s.shape))
        leaves.append(jnp.asarray(v.astype(s.dtype)))
    return jax.tree.unflatten(target.treedef, leaves)


# ---------------------------------------------------------------------------------------
# pleas
# ---------------------------------------------------------------------------------------

PLEAS_SPLIT = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
PLEAS_WIDTHS = (1.0, 1.25, 1.5, 2.0)
PLEAS_LR = {"digits": 1e-3, "mnist1d": 3e-3}


def pleas_arch(dataset: str) -> Target:
    if dataset == "digits":
        return make_target("mlp", input_shape=(8, 8), widths=(64, 64), out_features=10)
    return make_target(
        "cnn1d", input_shape=(40,), channels=(32, 32), strides=(1, 2), out_features=10
    )


def _train_on(
    tr: Trainer, params: Any, masks: np.ndarray, epochs: int, lr: float, seed: int
) -> Any:
    """Trains the 2-member population `params`, member `i` on the examples `masks[i]`."""
    keys = jnp.stack([jax.random.key(seed + i) for i in range(len(masks))])
    state = tr.init(
        jax.random.key(seed), len(masks), learning_rate=lr, params=params, member_keys=keys
    )
    state = state._replace(subset=jax.device_put(jnp.asarray(masks), state.subset.sharding))
    return jax.device_get(tr.fit(state, epochs).params)


def _acc(target: Target, params: Any, x: np.ndarray, y: np.ndarray) -> float:
    """10-way accuracy of one network."""
    acc = evaluate(target, pop_ops.of_one(params), jnp.asarray(x), jnp.asarray(y))["acc"]
    return round(float(acc[0]), 4)


def pleas_for(
    dataset: str,
    *,
    epochs: int,
    base_epochs: int,
    ft_epochs: int,
    sample: int,
    inputs: tuple[str, ...],
    seed: int,
) -> dict[str, Any]:
    """Two networks trained on the two halves of the classes, merged (see the docstring)."""
    data = data_lib.load(dataset)
    target = pleas_arch(dataset)
    train, (x_val, y_val) = data_lib.split_validation(data)
    x_test, y_test = np.asarray(data.x_test), np.asarray(data.y_test)
    tr = Trainer(target, train, TrainConfig(batch_size=64))
    halves = np.stack([np.isin(train.y_train, c) for c in PLEAS_SPLIT])
    every = np.ones_like(halves)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(train.x_train[rng.choice(len(train.x_train), sample, replace=False)])
    lr = PLEAS_LR[dataset]
    out: dict[str, Any] = {"arch": target.name, "params": target.num_params}
    for start in ("independent", "shared_base"):
        t0 = time.time()
        r: dict[str, Any] = {}
        if start == "independent":  # two initialisations, each trained on its half
            pair = _train_on(tr, init_population(target, seed, 2), halves, epochs, lr, seed)
        else:  # one base trained on all classes briefly, then fine-tuned on each half
            one = init_population(target, seed, 1)
            base2 = _train_on(tr, pop_ops.concatenate([one, one]), every, base_epochs, lr, seed)
            base = pop_ops.take(base2, 0)
            pair = _train_on(tr, base2, halves, ft_epochs, FT_LR, seed + 10)
            r["base"] = _acc(target, base, x_test, y_test)
        a, b = pop_ops.take(pair, 0), pop_ops.take(pair, 1)
        r["individual"] = [_acc(target, a, x_test, y_test), _acc(target, b, x_test, y_test)]
        mean = 0.5 * (target.apply(a, x_test) + target.apply(b, x_test))
        r["ensemble"] = round(float(np.mean(np.argmax(mean, -1) == y_test)), 4)
        r["rebasin"] = {
            m: _acc(target, merge.aligned_average(target, pair, method=m, x=x), x_test, y_test)
            for m in ("weight", "activation")
        }
        if start == "shared_base":
            lams = np.round(np.arange(0.2, 2.01, 0.2), 2)
            cands = merge.task_arithmetic(target, base, pair, lams)
            val = np.asarray(evaluate(target, cands, jnp.asarray(x_val), jnp.asarray(y_val))["acc"])
            best = int(np.argmax(val))
            r["task_arithmetic"] = {
                "acc": _acc(target, pop_ops.take(cands, best), x_test, y_test),
                "lam": float(lams[best]),
            }
        for inp in inputs:
            key = "pleas" if inp == "merged" else "pleas_original_inputs"
            r[key] = {}
            for w in PLEAS_WIDTHS:
                mt, mp = pleas.pleas_merge(target, a, b, x, width=w, inputs=inp)
                r[key][str(w)] = {"acc": _acc(mt, mp, x_test, y_test), "params": mt.num_params}
        p, ens = r["pleas"], r["ensemble"]
        for m, rb in r["rebasin"].items():
            r[f"gain_1x_vs_{m}"] = round(p["1.0"]["acc"] - rb, 4)
            r[f"half_gap_1.5x_vs_{m}"] = round(p["1.5"]["acc"] - rb - 0.5 * (ens - rb), 4)
        r["wall_s"] = round(time.time() - t0, 1)
        log(
            f"pleas {dataset} {start}: "
            + ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("pleas_original_inputs",))
        )
        out[start] = r
    return out


def pleas_goals(datasets: list[str]) -> dict[str, dict[str, Any]]:
    """Per dataset and start: PLeaS at 1.0x beats Re-Basin averaging (both matchings), and
    at 1.5x closes half the gap from Re-Basin averaging to the ensemble."""
    goals = {}
    for ds in datasets:
        for start in ("independent", "shared_base"):
            k = f"pleas/{ds}/{start}"
            goals[f"{k}/beats_rebasin_1x"] = goal(
                f"{k}/gain_1x_vs_weight", ">=", 0.0001, controls=[f"{k}/gain_1x_vs_activation"]
            )
            goals[f"{k}/half_gap_1.5x"] = goal(
                f"{k}/half_gap_1.5x_vs_weight",
                ">=",
                0.0,
                controls=[f"{k}/half_gap_1.5x_vs_activation"],
            )
    return goals
