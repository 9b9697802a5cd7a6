"""Module assembler: supernet gating = physical cut, budgets met by construction, I/O."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import generators.factory
from generators import (
    Assembler,
    Factory,
    Scenario,
    Supernet,
    SupernetConfig,
    build_compact,
    class_subsets,
    export_model,
    load_factory,
    load_model,
    make_factory,
    project_to_budget,
)
from hyper import compact, symmetry

TINY = SupernetConfig((8, 8), 10, stem_width=8, module_widths=(4, 6), num_stages=2)


@pytest.fixture(scope="session")
def trained(digits):
    """A tiny factory: 60 pretraining steps, 40 assembler steps on digits."""
    subsets, held = class_subsets(10, (2, 3), 0.3, jax.random.key(5))
    factory, info = make_factory(
        digits,
        jax.random.key(0),
        config=TINY,
        subsets=subsets,
        pretrain_steps=60,
        assembler_steps=40,
        budget_range=(0.6, 0.95),
    )
    return factory, info, held


@pytest.fixture(scope="session")
def supernet():
    return Supernet(TINY)


def test_supernet_costs_match_counts(supernet):
    assert supernet.costs("params")["total"] == supernet.target.num_params
    assert supernet.costs("flops")["total"] == compact.count_flops(supernet.target)
    names = [g.name for g in symmetry.structural_groups(supernet.target)]
    assert len(names) == 1 + supernet.num_modules  # the residual stream + one per module


def test_gated_supernet_equals_physical_cut(supernet, random_params):
    params = random_params(supernet.target, 0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 8, 8)), jnp.float32)
    for trial in range(4):
        mask = rng.random(supernet.num_channels) < 0.5
        if trial == 0:
            mask[: 4 + 6] = False  # the whole first stage off: it becomes the identity
        classes = sorted(rng.choice(10, size=3, replace=False).tolist())
        model = build_compact(supernet, params, classes, mask)
        gates = supernet.gates_from_mask(jnp.asarray(mask))
        want = supernet.gated_apply(params, x, jnp.asarray(mask, jnp.float32), gates)
        got = model.target.apply(model.params, x)
        np.testing.assert_allclose(
            np.asarray(got), np.asarray(want)[:, classes], rtol=1e-5, atol=1e-5
        )
        assert model.target.num_params == model.cost == compact.count_params(model.target)
        # physically smaller: only the kept modules and channels exist
        widths = [w for _, _, w in model.config["modules"]]
        assert sum(widths) == int(mask.sum())
        if trial == 0:
            assert all(s != 0 for s, _, _ in model.config["modules"])


def reference_projection(scores, allowed, mods, channel_cost, module_cost):
    order = np.argsort(-scores, kind="stable")
    seen, cost, keep = set(), 0, np.zeros(len(scores), bool)
    for i in order:
        extra = channel_cost + (module_cost if mods[i] not in seen else 0)
        if cost + extra > allowed:
            break
        cost += extra
        seen.add(mods[i])
        keep[i] = True
    return keep


def test_projection_matches_greedy_reference(supernet):
    rng = np.random.default_rng(1)
    mods = supernet.module_of_channel
    fn = jax.jit(lambda s, a: project_to_budget(s, a, mods, supernet.num_modules, 17, 8))
    for _ in range(20):
        scores = rng.standard_normal(supernet.num_channels).astype(np.float32)
        allowed = float(rng.integers(0, 17 * supernet.num_channels + 100))
        got = np.asarray(fn(scores, allowed))
        np.testing.assert_array_equal(got, reference_projection(scores, allowed, mods, 17, 8))


@pytest.mark.parametrize("kind", ["params", "flops"])
def test_budget_never_exceeded(trained, kind):
    factory, _, held = trained
    f = (
        factory
        if kind == "params"
        else Factory(factory.supernet, factory.params, factory.assembler, kind=kind)
    )
    rng = np.random.default_rng(2)
    c = f.supernet.costs(kind)
    scenarios = []
    for _ in range(40):
        classes = held[rng.integers(len(held))]
        smallest = (c["stem"] + c["head_per_class"] * len(classes)) / c["total"]
        scenarios.append(Scenario(classes, float(rng.uniform(smallest + 1e-3, 1.0))))
    models = f.customize_many(scenarios)
    for m, s in zip(models, scenarios, strict=True):
        counted = (
            compact.count_params(m.target) if kind == "params" else compact.count_flops(m.target)
        )
        assert counted == m.cost <= np.floor(s.budget * c["total"])
        assert m.target.leaf("head/kernel").shape[1] == len(s.classes)


def test_customize_many_equals_one_by_one_and_depends_on_task(trained):
    factory, _, held = trained
    scenarios = [Scenario(held[i], 0.8) for i in range(5)]
    many = factory.choose(scenarios)
    one = np.stack([factory.choose([s])[0] for s in scenarios])
    np.testing.assert_array_equal(many, one)
    # the assembler's scores depend on the task
    tasks = jnp.asarray(np.stack([np.isin(np.arange(10), h) for h in held[:5]]), jnp.float32)
    scores = np.asarray(factory.assembler(tasks, jnp.full((5,), 0.8)))
    assert np.ptp(scores, axis=0).max() > 1e-4
    m = factory.customize(classes=held[0], budget=0.8)
    np.testing.assert_array_equal(
        np.sort([w for _, _, w in m.config["modules"]]),
        np.sort(
            [
                int(many[0][s.offset : s.offset + s.width].sum())
                for s in factory.supernet.slots
                if many[0][s.offset : s.offset + s.width].any()
            ]
        ),
    )


def test_pretrain_and_assembler_train(trained, digits):
    _, info, held = trained
    assert info["pretrain"]["test_accuracy_full"] > 0.3  # chance is 0.1
    assert np.isfinite(info["assembler"]["task_loss"])
    factory = trained[0]
    m = factory.customize(classes=held[0], budget=0.9)
    sel = np.isin(digits.y_test, m.classes)
    acc = np.mean(m.predict(digits.x_test[sel]) == digits.y_test[sel])
    assert acc > 1.0 / len(m.classes)


def test_assembler_against_random_and_group_l2_at_one_budget(trained, digits):
    """At budget 0.7 on eight of its training tasks, the trained assembler's choice, the
    group-L2 ranking's and a random ranking's all fit the budget; the assembler's is its own
    (not the group-L2 prior's, not random) and its networks are above chance. At these tiny
    sizes (40 assembler steps) it does NOT beat the random choice on accuracy (measured
    mean train accuracy 0.61 vs 0.69 at 0.7), so that is not asserted."""
    factory, _, _ = trained
    subsets, _ = class_subsets(10, (2, 3), 0.3, jax.random.key(5))  # the fixture's pool
    sn, budget = factory.supernet, 0.7
    c = sn.costs("params")
    l2 = Factory(sn, factory.params, None)
    rng = np.random.default_rng(3)
    accs, chance, differs_l2, differs_random = [], [], 0, 0
    for classes in subsets[:8]:
        s = Scenario(classes, budget)
        allowed = np.floor(budget * c["total"]) - c["stem"] - c["head_per_class"] * len(classes)
        random_scores = jnp.asarray(rng.standard_normal(sn.num_channels), jnp.float32)
        masks = {
            "assembler": factory.choose([s])[0],
            "group_l2": l2.choose([s])[0],
            "random": np.asarray(
                project_to_budget(
                    random_scores, allowed, sn.module_of_channel, sn.num_modules,
                    c["channel"], c["module"],
                )
            ),
        }  # fmt: skip
        models = {k: build_compact(sn, factory.params, classes, m) for k, m in masks.items()}
        for m in models.values():
            assert m.cost == compact.count_params(m.target) <= np.floor(budget * c["total"])
        differs_l2 += not np.array_equal(masks["assembler"], masks["group_l2"])
        differs_random += not np.array_equal(masks["assembler"], masks["random"])
        sel = np.isin(digits.y_train, classes)
        accs.append(
            np.mean(models["assembler"].predict(digits.x_train[sel]) == digits.y_train[sel])
        )
        chance.append(np.bincount(digits.y_train[sel]).max() / sel.sum())
    assert differs_l2 >= 6 and differs_random == 8  # measured: 8 and 8
    assert np.mean(accs) > np.mean(chance) + 0.15  # measured: 0.62 vs 0.34


def test_bad_scenarios(trained):
    factory = trained[0]
    with pytest.raises(ValueError, match="below the smallest assemblable model"):
        factory.customize(classes=(0, 1), budget=0.01)
    with pytest.raises(ValueError, match=r"classes \[12\] are outside the supernet's label space"):
        factory.customize(classes=(0, 12), budget=0.8)
    with pytest.raises(ValueError, match="budget must be in"):
        factory.customize(classes=(0, 1), budget=1.5)
    with pytest.raises(ValueError, match="no classes"):
        factory.customize(classes=(), budget=0.8)
    with pytest.raises(TypeError, match="not a scenario"):
        factory.customize_many([3])


def test_factory_and_model_checkpoints(trained, tmp_path, digits):
    factory, _, held = trained
    factory.save(tmp_path / "f")
    again = load_factory(tmp_path / "f")
    s = [Scenario(held[1], 0.75), Scenario(held[2], 0.85)]
    np.testing.assert_array_equal(factory.choose(s), again.choose(s))
    m = factory.customize(s[0])
    export_model(tmp_path / "m", m)
    back = load_model(tmp_path / "m")
    assert back.target.paths == m.target.paths and back.classes == m.classes
    x = digits.x_test[:5]
    np.testing.assert_allclose(
        np.asarray(back.target.apply(back.params, x)), np.asarray(m.target.apply(m.params, x))
    )
    # a bare supernet checkpoint gives a group-L2 factory
    bare = load_factory(tmp_path / "f" / "supernet")
    assert bare.assembler is None
    assert bare.customize(s[1]).cost <= 0.85 * bare.supernet.costs()["total"]


def test_cli_assemble(trained, tmp_path, capsys):
    from hyper.cli import main

    factory, _, _ = trained
    factory.save(tmp_path / "f")
    rc = main(
        [
            "assemble",
            "--supernet",
            str(tmp_path / "f"),
            "--classes",
            "0,3,7",
            "--budget",
            "0.8",
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert rc == 0
    assert load_model(tmp_path / "m").classes == (0, 3, 7)
    rc = main(
        [
            "assemble",
            "--supernet",
            str(tmp_path / "f"),
            "--classes",
            "0,3,17",
            "--budget",
            "0.8",
            "--out",
            str(tmp_path / "m2"),
        ]
    )
    assert rc == 2
    assert "outside the supernet's label space" in capsys.readouterr().err
    rc = main(
        [
            "assemble",
            "--supernet",
            str(tmp_path / "f"),
            "--classes",
            "0,3",
            "--budget",
            "0.001",
            "--out",
            str(tmp_path / "m3"),
        ]
    )
    assert rc == 2


def test_assembler_shapes():
    from flax import nnx

    a = Assembler(10, (4, 6, 4), rngs=nnx.Rngs(0))
    out = a(jnp.zeros((3, 10)), jnp.full((3,), 0.2))
    assert out.shape == (3, 14)


def test_choose_compiles_once_per_bucket(trained, monkeypatch):
    """5 to 8 scenarios pad to one bucket of 8: `choose` traces its program once."""
    factory, _, held = trained
    # `choose` projects inside its jitted program: count the traces of that call.
    monkeypatch.setattr(
        generators.factory, "project_to_budget", chex.assert_max_traces(project_to_budget, n=1)
    )
    fresh = Factory(factory.supernet, factory.params, factory.assembler)
    try:
        fresh.choose([Scenario(held[0], 0.8)] * 5)
        for n in (6, 7, 8):  # all in the bucket of 8
            fresh.choose([Scenario(held[i], 0.8) for i in range(n)])
    finally:
        chex.clear_trace_counter()
