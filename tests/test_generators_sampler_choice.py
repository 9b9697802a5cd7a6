"""Prompt calibration (`generators.sampler_choice`) against a generator whose prompts are
known to land short: a stand-in that answers a prompt with a training network of a
compressed accuracy, the regression towards the zoo's middle that calibration undoes.
No training: the stand-in picks networks of a population with a known spread."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np
import pytest

from generators import sampler_choice
from generators.novelty import evaluate
from generators.sampler_choice import PromptCalibration
from hyper import population as pop_ops
from hyper.architectures import make_target
from hyper.errors import WeightspaceError

M = 64


@pytest.fixture(scope="module")
def spread():
    """M networks of an 8-6-3 MLP whose accuracies on `x, y` (labels = a teacher's
    argmax) fall from 1 towards chance as noise on the teacher grows."""
    target = make_target("mlp", input_shape=(8,), widths=(6,), out_features=3)
    teacher = target.init_population(jax.random.key(0), 1)
    x = np.asarray(jax.random.normal(jax.random.key(1), (400, 8)))
    y = np.asarray(target.apply_population(teacher, x)[0].argmax(-1))
    amp = np.linspace(0.0, 2.0, M)
    leaves, treedef = jax.tree.flatten(teacher)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    noisy = [
        np.repeat(np.asarray(v), M, 0)
        + amp.reshape((M,) + (1,) * (v.ndim - 1))
        * np.asarray(jax.random.normal(k, (M, *v.shape[1:])))
        for v, k in zip(leaves, keys, strict=True)
    ]
    pop = jax.tree.unflatten(treedef, [v.astype(np.float32) for v in noisy])
    acc, _ = evaluate(target, pop, x, y)
    return target, pop, np.asarray(acc, np.float64), x, y


class Compressed:
    """A stand-in accuracy-conditioned generator: prompted with `p` (guidance `g`), it
    returns copies of the training network whose label is nearest the middle +
    ``shrink(g) * (p - middle)``; higher guidance shrinks less."""

    def __init__(self, target, pop, labels):
        self.target, self.pop, self.labels = target, pop, labels
        self.middle = float(np.median(labels))
        self.config = SimpleNamespace(condition="accuracy")

    def lands(self, p, g=1.0):
        return self.middle + (0.4 + 0.1 * g) * (p - self.middle)

    def sample(self, key, n, accuracy=None, guidance=1.0, temperature=1.0):
        i = int(np.argmin(np.abs(self.labels - self.lands(accuracy, guidance))))
        return pop_ops.take(self.pop, np.full(n, i))


def test_calibration_undoes_a_compressed_prompt(spread):
    target, pop, labels, x, y = spread
    gen = Compressed(target, pop, labels)
    key = jax.random.key(3)
    cal = sampler_choice.calibrate_prompts(gen, pop, x, y, key=key, accuracy=labels, n=2)
    lo, hi = cal.reachable
    assert cal.guidance == 1.0 and cal.examples == len(y) and len(cal.given) <= 22
    # what the prompts reach is the compressed range, not the labels'
    assert lo > labels.min() + 0.05 and hi < labels.max() - 0.05
    asks = np.linspace(lo + 0.02, hi - 0.02, 7)

    def landed(prompts):  # the label of the network each prompt returns
        return np.array([labels[np.argmin(np.abs(labels - gen.lands(p)))] for p in prompts])

    plain = np.abs(landed(asks) - asks).mean()
    calibrated = np.abs(landed(cal(asks)) - asks).mean()
    assert calibrated < 0.25 * plain and calibrated < 0.03, (calibrated, plain)
    # beyond what any prompt reaches: the nearest end, never beyond the prompts measured
    assert cal(1.5) == cal.given[-1] and cal(-1.0) == cal.given[0]
    again = PromptCalibration.from_json(cal.to_json())
    assert again == cal and isinstance(cal(0.7), float)


def test_choose_prompt_guidance_with_calibration(spread):
    """With `calibrate`, each guidance's prompts go through its own calibration: the error
    falls below the plain prompts' for every guidance, and the chosen guidance comes with
    its calibration."""
    target, pop, labels, x, y = spread
    gen = Compressed(target, pop, labels)
    prompts = np.quantile(labels, [0.3, 0.5, 0.7]).tolist()
    kw = dict(key=jax.random.key(4), accuracy=labels, prompts=prompts, n=2, guidance=(1.0, 2.0))
    plain = sampler_choice.choose_prompt_guidance(gen, pop, x, y, **kw)
    cal = sampler_choice.choose_prompt_guidance(gen, pop, x, y, calibrate=True, points=9, **kw)
    assert plain["calibration"] is None and plain["guidance"] == 2.0  # shrinks less
    assert isinstance(cal["calibration"], PromptCalibration)
    assert cal["calibration"].guidance == cal["guidance"]
    for p, c in zip(plain["rows"], cal["rows"], strict=True):
        assert c["mean_abs_error"] < p["mean_abs_error"], (c, p)
        assert p["given"] == prompts and c["given"] != prompts


def test_calibration_refuses_what_it_cannot_use(spread):
    target, pop, labels, x, y = spread
    gen = Compressed(target, pop, labels)
    key = jax.random.key(5)
    with pytest.raises(WeightspaceError, match="accuracies for"):
        sampler_choice.calibrate_prompts(gen, pop, x, y, key=key, accuracy=labels[:5])
    with pytest.raises(WeightspaceError, match="all equal"):
        sampler_choice.calibrate_prompts(gen, pop, x, y, key=key, accuracy=np.full(M, 0.5))
    with pytest.raises(WeightspaceError, match="not accuracy-conditioned"):
        sampler_choice.calibrate_prompts(
            SimpleNamespace(target=target, config=SimpleNamespace(condition="task")),
            pop, x, y, key=key, accuracy=labels,
        )  # fmt: skip
    with pytest.raises(WeightspaceError, match="points >= 2"):  # through either entry
        sampler_choice.choose_prompt_guidance(
            gen, pop, x, y, key=key, accuracy=labels, prompts=[0.5], calibrate=True, points=1
        )
    with pytest.raises(WeightspaceError, match="increasing"):
        PromptCalibration(requested=(0.5, 0.4), given=(0.1, 0.2), guidance=1.0)


def test_choose_sampler_tries_the_calibrated_prompts(spread):
    """With a calibration, `choose_sampler` also asks for each prompt quantile through it
    (rows after the plain ones, the prompt given recorded as ``accuracy``), and those rows
    land nearer the quantile they ask for."""
    target, pop, labels, x, y = spread
    gen = Compressed(target, pop, labels)
    cal = sampler_choice.calibrate_prompts(
        gen, pop, x, y, key=jax.random.key(6), accuracy=labels, n=2
    )
    grid = {"prompt_quantiles": (0.5, 0.85), "guidance": (1.0,), "temperature": (1.0,)}
    c = sampler_choice.choose_sampler(
        gen, pop, x, y, key=jax.random.key(7), accuracy=labels, n=2, grid=grid, calibration=cal
    )
    assert [(r["prompt_quantile"], r["calibrated"]) for r in c["grid"]] == [
        (0.5, False), (0.85, False), (0.5, True), (0.85, True)
    ]  # fmt: skip
    plain, calibrated = c["grid"][1], c["grid"][3]
    ask = float(np.quantile(labels, 0.85))
    assert plain["requested"] == calibrated["requested"] == ask == plain["accuracy"]
    assert calibrated["accuracy"] == pytest.approx(cal(ask))
    assert abs(calibrated["median_acc"] - ask) < 0.5 * abs(plain["median_acc"] - ask)
    assert c["chosen_row"] == sampler_choice.pick(c["grid"], c["training_median_acc"])
