"""The weight generative model (`generators.weightgen`): sampling shapes and determinism,
autoencoder reconstruction, conditioning, generated zoos, resume, CLI errors. Tiny sizes:
one trained generator shared by the module."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from generators import novelty, sampler_choice
from generators.weightgen import WeightGen, WeightGenConfig, train, write_generated_zoo
from generators.weightgen_cli import zoo_training_data
from generators.weightgen_nets import condition_vectors
from hyper import population as pop_ops
from hyper import zoo
from hyper.architectures import make_target
from hyper.checkpoint import CheckpointError
from hyper.cli import main
from hyper.errors import WeightspaceError

N = 24
CONFIG = WeightGenConfig(
    condition="accuracy",
    latent_dim=8,
    ae_hidden=32,
    ae_steps=250,
    flow_hidden=32,
    flow_blocks=1,
    flow_steps=250,
    batch_size=16,
    learning_rate=3e-3,
    lr_schedule="constant",
    sample_steps=8,
    checkpoint_every=250,
)


@pytest.fixture(scope="module")
def tiny():
    """A tiny 'zoo': N networks of an 8-6-3 MLP, with accuracies to condition on."""
    target = make_target("mlp", input_shape=(8,), widths=(6,), out_features=3)
    pop = target.init_population(jax.random.key(0), N)
    acc = np.linspace(0.5, 0.95, N)
    return target, pop, acc


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    target, pop, acc = tiny
    out = tmp_path_factory.mktemp("weightgen") / "run"
    gen = train(target, pop, config=CONFIG, accuracy=acc, out_dir=out, progress=False)
    return gen, out


def _leaves(tree):
    return [np.asarray(v) for v in jax.tree.leaves(tree)]


def test_sampling_shapes_and_determinism(trained, tiny):
    gen, _ = trained
    target = tiny[0]
    a = gen.sample(jax.random.key(1), 4, accuracy=0.9, chunk=3)  # chunks of 3 and 1 (padded)
    assert target.validate(a, batched=True) == 4
    b = gen.sample(jax.random.key(1), 4, accuracy=0.9)  # chunking changes nothing
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    c = gen.sample(jax.random.key(2), 4, accuracy=0.9)
    assert not np.allclose(_leaves(a)[0], _leaves(c)[0])
    assert all(np.isfinite(x).all() for x in _leaves(a))


def test_temperature_scales_the_spread_of_samples(trained):
    """Temperature 0 starts every network at the same noise (one network per prompt), 1 is
    the default sampler, other values change the samples; bad values are refused."""
    gen, _ = trained
    key = jax.random.key(3)
    flat = {
        temp: np.concatenate(
            [a.reshape(8, -1) for a in _leaves(gen.sample(key, 8, accuracy=0.9, temperature=temp))],
            axis=1,
        )
        for temp in (0.0, 0.5, 1.0)
    }
    assert float(flat[0.0].std(0).max()) < 1e-5 < float(flat[0.5].std(0).mean())
    default = np.concatenate(
        [a.reshape(8, -1) for a in _leaves(gen.sample(key, 8, accuracy=0.9))], axis=1
    )
    np.testing.assert_allclose(flat[1.0], default, rtol=1e-6, atol=1e-6)
    assert not np.allclose(flat[0.5], flat[1.0])
    for bad in (-0.5, float("nan"), True, "1"):
        with pytest.raises(WeightspaceError, match="temperature"):
            gen.sample(key, 2, accuracy=0.9, temperature=bad)


def test_choose_sampler_follows_its_rule_on_the_grid(trained, tiny):
    """`sampler_choice.choose_sampler` samples every setting of its grid (prompts only for an
    accuracy-conditioned generator given accuracies) and picks by its rule: within 1 point
    of the training networks' median accuracy, the lowest max-IoU; else the closest."""
    gen, _ = trained
    _, pop, acc = tiny
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    grid = {"prompt_quantiles": (None, 0.5, 1.0), "guidance": (1.0, 2.0), "temperature": (1.0, 0.5)}
    key = jax.random.key(4)
    c = sampler_choice.choose_sampler(gen, pop, x, y, key=key, accuracy=acc, n=8, grid=grid)
    assert len(c["grid"]) == 2 + 2 * 2 * 2 and c["examples"] == 60
    assert {r["accuracy"] for r in c["grid"]} == {None, float(np.quantile(acc, 0.5)), 0.95}
    want = c["training_median_acc"]
    close = [r for r in c["grid"] if abs(r["median_acc"] - want) <= 0.01 + 1e-9]
    if close:
        assert c["chosen_row"]["median_max_iou"] == min(r["median_max_iou"] for r in close)
    gap = abs(c["chosen_row"]["median_acc"] - want)
    assert gap == min(abs(r["median_acc"] - want) for r in c["grid"]) or close
    assert c["chosen"] == {k: c["chosen_row"][k] for k in ("accuracy", "guidance", "temperature")}
    # without accuracies: unprompted rows only, one per temperature
    c = sampler_choice.choose_sampler(gen, pop, x, y, key=key, n=8, grid=grid)
    assert [(r["accuracy"], r["guidance"]) for r in c["grid"]] == [(None, 1.0)] * 2
    with pytest.raises(WeightspaceError, match="no prompt"):
        sampler_choice.choose_sampler(gen, pop, x, y, key=key, grid={"prompt_quantiles": (0.5,)})


def test_choose_prompt_guidance_follows_its_rule(trained, tiny):
    """`sampler_choice.choose_prompt_guidance`: each prompt's target on the examples is the
    prompt plus the median gap (accuracy there minus label) of the training networks with
    the nearest labels; the chosen guidance has the lowest mean error to the targets;
    prompt `j` samples from ``fold_in(key, j)``."""
    gen, _ = trained
    target, pop, acc = tiny
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    key, prompts = jax.random.key(6), [0.6, 0.9]
    c = sampler_choice.choose_prompt_guidance(
        gen, pop, x, y, key=key, accuracy=acc, prompts=prompts, n=6, guidance=(1.0, 3.0)
    )
    on_xy, _ = novelty.evaluate(target, pop, x, y)
    for p, t in zip(prompts, c["targets"], strict=True):
        near = np.argsort(np.abs(acc - p))[:8]
        assert t == pytest.approx(p + np.median(on_xy[near] - acc[near]))
    assert [r["guidance"] for r in c["rows"]] == [1.0, 3.0] and c["examples"] == 60
    assert c["guidance"] == min(c["rows"], key=lambda r: r["mean_abs_error"])["guidance"]
    again = gen.sample(jax.random.fold_in(key, 1), 6, accuracy=0.9, guidance=3.0)
    assert c["rows"][1]["achieved_median"][1] == pytest.approx(
        np.median(novelty.evaluate(target, again, x, y)[0])
    )
    with pytest.raises(WeightspaceError, match="accuracies for"):
        sampler_choice.choose_prompt_guidance(
            gen, pop, x, y, key=key, accuracy=acc[:3], prompts=[0.7]
        )


def test_autoencoder_reconstructs_the_zoo(trained, tiny):
    gen, _ = trained
    target, pop, _ = tiny
    x = np.asarray(pop_ops.flatten(target, pop))
    r = np.asarray(pop_ops.flatten(target, gen.reconstruct(pop)))
    spread = np.mean((x - x.mean(0)) ** 2)  # error of the best constant guess
    err = np.mean((r - x) ** 2)
    assert err < 0.1 * spread, (err, spread)


def test_accuracy_condition_changes_the_output(trained):
    gen, _ = trained
    key = jax.random.key(3)
    lo = _leaves(gen.sample(key, 4, accuracy=0.5))
    hi = _leaves(gen.sample(key, 4, accuracy=0.95))
    assert max(np.abs(x - y).max() for x, y in zip(lo, hi, strict=True)) > 1e-3
    # guidance 0 is the unconditional model: the prompt no longer matters
    lo0 = _leaves(gen.sample(key, 4, accuracy=0.5, guidance=0.0))
    hi0 = _leaves(gen.sample(key, 4, accuracy=0.95, guidance=0.0))
    for x, y in zip(lo0, hi0, strict=True):
        np.testing.assert_array_equal(x, y)
    # no prompt at all: the same unconditional (null-condition) samples
    for x, y in zip(_leaves(gen.sample(key, 4)), lo0, strict=True):
        np.testing.assert_array_equal(x, y)


def test_condition_vectors_and_bad_conditions(trained):
    v = condition_vectors("task", 2, classes=[0, 2], num_classes=4)
    np.testing.assert_array_equal(v, [[1, 0, 1, 0], [1, 0, 1, 0]])
    with pytest.raises(WeightspaceError, match="0..3"):
        condition_vectors("task", 2, classes=[4], num_classes=4)
    with pytest.raises(WeightspaceError, match="shape"):
        condition_vectors("task", 2, classes=np.ones((3, 4)), num_classes=4)
    gen, _ = trained
    with pytest.raises(WeightspaceError, match=r"\[0, 1\]"):
        gen.sample(jax.random.key(0), 2, accuracy=1.5)


def test_config_schedule_field_is_backwards_compatible():
    old = {k: v for k, v in CONFIG.to_json().items() if k != "lr_schedule"}
    assert WeightGenConfig.from_json(old).lr_schedule == "constant"  # saved before the field
    cosine = WeightGenConfig(lr_schedule="cosine")
    assert WeightGenConfig.from_json(cosine.to_json()) == cosine
    with pytest.raises(WeightspaceError, match="lr_schedule"):
        WeightGenConfig(lr_schedule="linear")


def test_generated_zoo_loads(trained, tiny, tmp_path):
    gen, _ = trained
    pop = gen.sample(jax.random.key(4), 4, accuracy=0.8)
    rows = [{"test_acc": 0.5 + 0.1 * i, "prompt_accuracy": 0.8} for i in range(4)]
    d = write_generated_zoo(gen, pop, tmp_path / "gen", rows=rows)
    z = zoo.load(d)
    assert z.config["preset"] == "generated" and z.num_members == 4
    for x, y in zip(_leaves(z.groups[0].params), _leaves(pop), strict=True):
        np.testing.assert_array_equal(x, y)
    got = z.rows()
    assert [r["test_acc"] for r in got] == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert all(r["prompt_accuracy"] == 0.8 and not r["diverged"] for r in got)


def test_cli_reads_a_zoo_s_accuracies_and_class_subsets(trained, tiny, tmp_path, capsys):
    gen, _ = trained
    target, pop, acc = tiny
    subsets = [[i % 3, (i + 1) % 3] for i in range(N)]
    rows = [{"classes": c, "test_acc": a} for c, a in zip(subsets, acc, strict=True)]
    d = write_generated_zoo(gen, pop, tmp_path / "zoo", rows=rows)
    t, p, a, classes, meta = zoo_training_data(d, condition="task")
    assert a is None and t.config == target.config and meta["zoo"] == d
    want = np.zeros((N, 3))
    for i, c in enumerate(subsets):
        want[i, c] = 1
    np.testing.assert_array_equal(classes, want)
    for x, y in zip(_leaves(p), _leaves(pop), strict=True):
        np.testing.assert_array_equal(x, y)
    _, _, a, classes, _ = zoo_training_data(d, condition="accuracy")
    assert classes is None and a == pytest.approx(acc)
    with pytest.raises(WeightspaceError, match="classes"):  # a zoo without class subsets
        zoo_training_data(write_generated_zoo(gen, pop, tmp_path / "z2"), condition="task")
    # the CLI's functional term reads the zoo's data set; this one names none
    cli = ["weightgen", "train", "--zoo", d, "--out", str(tmp_path / "g"), "--quiet"]
    assert main(cli) == 2
    assert "names no data set" in capsys.readouterr().err
    small = ["--ae-steps", "2", "--flow-steps", "2", "--latent-dim", "2"]
    assert main([*cli, *small, "--functional-weight", "0"]) == 0
    assert WeightGen.load(tmp_path / "g").config.functional_weight == 0


def test_resume_equals_an_uninterrupted_run(trained, tiny, tmp_path):
    gen, out = trained
    target, pop, acc = tiny
    run = tmp_path / "run"
    # stop after the autoencoder stage (a checkpoint), then resume into the flow stage
    train(target, pop, config=CONFIG, accuracy=acc, out_dir=run, progress=False, stop_after=250)
    with pytest.raises(CheckpointError):  # the finished run's model is not there yet
        WeightGen.load(run)
    with pytest.raises(CheckpointError, match="another weightgen run"):  # other data
        train(target, pop, config=CONFIG, accuracy=acc[::-1], out_dir=run, resume=True)
    resumed = train(
        target, pop, config=CONFIG, accuracy=acc, out_dir=run, resume=True, progress=False
    )
    for a, b in (
        (gen.autoencoder, resumed.autoencoder),
        (gen.velocity, resumed.velocity),
    ):
        for x, y in zip(_leaves(nnx.state(a)), _leaves(nnx.state(b)), strict=True):
            np.testing.assert_array_equal(x, y)
    loaded = WeightGen.load(out)  # the saved model samples like the trained one
    key = jax.random.key(5)
    for x, y in zip(
        _leaves(loaded.sample(key, 4, accuracy=0.7)),
        _leaves(gen.sample(key, 4, accuracy=0.7)),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)


def test_cli_bad_input_exits_2(trained, tmp_path, capsys):
    _, out = trained
    assert (
        main(["weightgen", "train", "--zoo", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("weightspace: error:")
    args = ["weightgen", "sample", "--from", str(out), "--n", "2", "--accuracy", "1.5"]
    assert main([*args, "--out", str(tmp_path / "y")]) == 2
    assert "[0, 1]" in capsys.readouterr().err
    args = ["weightgen", "sample", "--from", str(out), "--n", "0", "--accuracy", "0.9"]
    assert main([*args, "--out", str(tmp_path / "z")]) == 2
    args = ["weightgen", "sample", "--from", str(out), "--n", "2", "--temperature", "-1"]
    assert main([*args, "--out", str(tmp_path / "t")]) == 2
    assert "temperature" in capsys.readouterr().err
    args[-1] = "0.5"  # a valid temperature: recorded in every generated member's row
    assert main([*args, "--accuracy", "0.8", "--quiet", "--out", str(tmp_path / "t")]) == 0
    assert [r["temperature"] for r in zoo.load(tmp_path / "t").rows()] == [0.5, 0.5]
    # --sampler chosen: the settings stored with the model, an explicit flag wins
    args = ["weightgen", "sample", "--from", str(out), "--n", "2", "--sampler", "chosen"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 2
    assert "stores no sampler" in capsys.readouterr().err
    gen = WeightGen.load(out)
    gen.metadata["sampler"] = {"chosen": {"accuracy": 0.9, "guidance": 2.0, "temperature": 0.5}}
    gen.save(tmp_path / "g")
    args[3] = str(tmp_path / "g")
    assert main([*args, "--temperature", "0.7", "--quiet", "--out", str(tmp_path / "s")]) == 0
    rows = zoo.load(tmp_path / "s").rows()
    assert [(r["prompt_accuracy"], r["temperature"]) for r in rows] == [(0.9, 0.7)] * 2
    bad = ["weightgen", "train", "--zoo", str(tmp_path), "--out", str(tmp_path / "x")]
    assert main([*bad, "--choose-sampler"]) == 2  # needs --condition accuracy
    assert "--choose-sampler needs --condition accuracy" in capsys.readouterr().err
    assert (
        main(
            [
                "weightgen",
                "sample",
                "--from",
                str(tmp_path),
                "--n",
                "1",
                "--out",
                str(tmp_path / "w"),
            ]
        )
        == 2
    )


def test_functional_term_brings_reconstructions_closer_in_function(tiny):
    """The autoencoder's functional term (`generators.weightgen_train`): with it the
    reconstructions' predictions are closer to the originals' (KL on held-out inputs) than
    with the squared error alone, on the same seed and steps; it needs inputs the target
    runs on, and is refused inputs it would not read."""
    target, pop, _ = tiny
    inputs = jax.random.normal(jax.random.key(1), (64, 8))
    held = np.asarray(jax.random.normal(jax.random.key(2), (256, 8)))
    base = dataclasses.replace(CONFIG, condition=None, latent_dim=4, flow_steps=0)

    def kl(config, **kw):
        gen = train(target, pop, config=config, progress=False, **kw)
        p = jax.nn.log_softmax(target.apply_population(pop, held))
        q = jax.nn.log_softmax(target.apply_population(gen.reconstruct(pop), held))
        return float(np.mean(np.sum(np.exp(p) * (p - q), -1)))

    plain = kl(base)
    functional = kl(dataclasses.replace(base, functional_weight=30.0), inputs=inputs)
    assert functional < 0.7 * plain, (functional, plain)
    with pytest.raises(WeightspaceError, match="needs inputs"):
        train(target, pop, config=dataclasses.replace(base, functional_weight=1.0))
    with pytest.raises(WeightspaceError, match="cannot run on inputs"):
        train(
            target, pop, config=dataclasses.replace(base, functional_weight=1.0),
            inputs=np.zeros((4, 5)),
        )  # fmt: skip
    one_output = make_target("mlp", input_shape=(8,), widths=(6,), out_features=1)
    with pytest.raises(WeightspaceError, match="classes >= 2"):  # nothing to compare
        train(
            one_output, one_output.init_population(jax.random.key(0), 4),
            config=dataclasses.replace(base, functional_weight=1.0), inputs=inputs,
        )  # fmt: skip
    with pytest.raises(WeightspaceError, match="functional_weight is 0"):
        train(target, pop, config=base, inputs=inputs)


def test_cli_choose_sampler_stores_the_prompt_calibration(tmp_path, capsys):
    """``train --choose-sampler`` stores the chosen sampler and, for accuracy prompts, the
    chosen guidance with its `PromptCalibration`; ``sample --sampler chosen --accuracy A``
    gives the generator the calibrated prompt under that guidance and records both."""
    one = {"learning_rate": [0.003, 0.05], "activation": ["relu"], "dropout": [0.0]}
    one |= {"weight_decay": [0.0], "init_scale": [1.0], "train_fraction": [1.0]}
    z = zoo.build(tmp_path / "z", "digits-mlp", grid=one | {"optimizer": ["adam"]}, seeds=3,
                  epochs=1, checkpoint_epochs=[1], progress=False)  # fmt: skip
    out = tmp_path / "g"
    cli = ["weightgen", "train", "--zoo", str(z.directory), "--out", str(out), "--quiet"]
    small = ["--ae-steps", "2", "--flow-steps", "2", "--latent-dim", "2"]
    choose = ["--condition", "accuracy", "--choose-sampler", "--choose-n", "4"]
    assert main([*cli, *small, *choose]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    gen = WeightGen.load(out)
    stored = gen.metadata["prompts"]
    cal = sampler_choice.PromptCalibration.from_json(stored["calibration"])
    assert printed["sampler"]["prompt_guidance"] == stored["guidance"] == cal.guidance
    assert gen.metadata["sampler"]["chosen"] == {
        k: printed["sampler"][k] for k in ("accuracy", "guidance", "temperature")
    }
    ask = sum(cal.reachable) / 2
    args = ["weightgen", "sample", "--from", str(out), "--n", "2", "--quiet", "--seed", "3"]
    assert (
        main([*args, "--sampler", "chosen", "--accuracy", str(ask), "--out", str(tmp_path / "s")])
        == 0
    )
    rows = zoo.load(tmp_path / "s").rows()
    assert [(r["prompt_accuracy"], r["guidance"]) for r in rows] == [(ask, cal.guidance)] * 2
    assert [r["given_prompt"] for r in rows] == pytest.approx([cal(ask)] * 2)
    want = gen.sample(jax.random.key(3), 2, accuracy=cal(ask), guidance=cal.guidance)
    got = zoo.load(tmp_path / "s").groups[0].params
    for x, y in zip(_leaves(got), _leaves(want), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # outside what the prompts reach: the nearest prompt, with a warning
    assert (
        main([*args, "--sampler", "chosen", "--accuracy", "1.0", "--out", str(tmp_path / "t")]) == 0
    )
    assert "outside what the calibrated prompts reach" in capsys.readouterr().err
