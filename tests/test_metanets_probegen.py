"""metanets.probegen / predict "probes": learned probes (ProbeGen) trained end to end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hyper.architectures import make_target
from metanets import datasets, predict, probegen
from tests.test_metanets_predict import synthetic  # noqa: F401  (fixture)

KW = dict(count=8, latent=8, gen_width=16, gen_depth=3, hidden=32, depth=2, batch_size=8)


@pytest.fixture(scope="module")
def fitted(synthetic):  # noqa: F811
    train, test = datasets.split_by_run(synthetic.run, 0.25)
    pred = predict.fit("probes", synthetic, train, epochs=10, eval_every=3, lr=3e-3, **KW)
    return pred, train, test


def test_gradients_reach_the_probe_generator(synthetic, fitted):  # noqa: F811
    """The generator's parameters get a nonzero gradient through the networks' forward
    pass, and the fit's split step (readout, per-group VJPs, generator VJP) moves them."""
    pred, _, _ = fitted
    model = predict.build_module("probes", pred.config, seed=0)
    target, pop = synthetic.targets[1], synthetic.populations[1]
    members = jax.tree.map(lambda a: a[:4], pop)

    graphdef, params, rest = nnx.split(model.generator, nnx.Param, ...)

    @jax.jit
    def loss(p):
        probes = nnx.merge(graphdef, p, rest)()
        resp = jax.vmap(target.pure_apply, in_axes=(0, None))(members, probes)
        return jnp.sum(model.read(resp) ** 2)

    norms = [float(jnp.abs(g).max()) for g in jax.tree.leaves(jax.grad(loss)(params))]
    assert len(norms) == 1 + 2 * 3 and min(norms) > 0, norms
    # the fitted generator moved away from its initial weights (same seed, same shapes)
    init = predict.build_module("probes", pred.config, seed=pred.config["seed"])
    for a, b in zip(
        jax.tree.leaves(nnx.state(pred.model.generator)),
        jax.tree.leaves(nnx.state(init.generator)),
        strict=True,
    ):
        assert float(jnp.abs(a - b).max()) > 1e-4


def test_split_gradient_equals_the_direct_gradient(synthetic):  # noqa: F811
    """The per-group responses and VJPs add up to the gradient of the whole batch's loss."""
    cfg = {**predict.DEFAULTS["probes"], **KW, "input_shape": [8, 8], "out_features": 10}
    model = predict.build_module("probes", cfg, seed=1)
    batch = np.array([0, 3, 61, 70, 5])  # both architectures
    probes = model.generator()
    rows = [np.flatnonzero(synthetic.group[batch] == g) for g in (0, 1)]
    pops = [
        jax.tree.map(lambda a, m=synthetic.member[batch[r]]: a[m], synthetic.populations[g])
        for g, r in enumerate(rows)
    ]

    graphdef, params, rest = nnx.split(model.generator, nnx.Param, ...)

    @jax.jit
    def direct(p):
        x = nnx.merge(graphdef, p, rest)()
        resp = jnp.zeros((len(batch), *probes.shape[:1], 10))
        for g, r in enumerate(rows):
            out = jax.vmap(synthetic.targets[g].pure_apply, in_axes=(0, None))(pops[g], x)
            resp = resp.at[r].set(out)
        return jnp.sum(model.read(resp))

    want = jax.grad(direct)(params)
    resp = np.zeros((len(batch), len(probes), 10), np.float32)
    for g, r in enumerate(rows):
        resp[r] = np.asarray(synthetic.targets[g].apply_population(pops[g], probes))
    g_resp = jax.jit(jax.grad(lambda r: jnp.sum(model.read(r))))(jnp.asarray(resp))
    cot = sum(
        probegen.group_fns(synthetic.targets[g]).vjp(pops[g], probes, g_resp[r])
        for g, r in enumerate(rows)
    )
    got = jax.jit(lambda p, c: jax.vjp(lambda q: nnx.merge(graphdef, q, rest)(), p)[1](c)[0])(
        params, cot
    )
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_group_programs_equal_apply_population_and_the_cache_is_bounded(
    synthetic,  # noqa: F811
    monkeypatch,
):
    """Each architecture's compiled forward (its own compiler options) computes what
    `apply_population` does, and `group_fns` keeps at most `MAX_CACHED_TARGETS`
    architectures' programs, dropping the least recently used."""
    probes = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8)), jnp.float32)
    t0, t1 = synthetic.targets[0], synthetic.targets[1]
    for g, t in enumerate((t0, t1)):
        pop = jax.tree.map(lambda a: a[:4], synthetic.populations[g])
        got = np.asarray(probegen.group_fns(t).forward(pop, probes))
        want = np.asarray(t.apply_population(pop, probes))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    f0 = probegen.group_fns(t0)
    probegen.group_fns(t1)
    assert probegen.group_fns(t0) is f0  # both cached
    monkeypatch.setattr(probegen, "MAX_CACHED_TARGETS", 1)
    probegen.group_fns(t1)  # evicts t0, the least recently used
    assert probegen.group_fns(t0) is not f0


def test_probes_learn_the_synthetic_label_and_round_trip(synthetic, fitted, tmp_path):  # noqa: F811
    pred, _, test = fitted
    losses = [h["train_loss"] for h in pred.history]
    assert losses[-1] < 0.5 * losses[0], losses
    res = predict.evaluate(pred, synthetic, test)
    # 30 held-out runs: chance is 0 (sd 0.13); the outputs carry the label only through
    # the logits' spread, so probes read it less directly than weight statistics do
    assert res["tau"] > 0.15, res
    y = pred.predict(synthetic, test)
    again = predict.load_predictor(predict.save_predictor(pred, tmp_path / "probes"))
    assert again.kind == "probes"
    np.testing.assert_allclose(again.predict(synthetic, test), y, rtol=1e-5, atol=1e-6)
    # one vmapped forward pass per group: the responses of a whole group at once
    probes = pred.model.generator()
    r = probegen.probe_responses(synthetic, np.arange(len(synthetic)), probes)
    assert r.shape == (len(synthetic), 8, 10) and np.all(np.isfinite(r))


def test_learned_probes_as_graph_node_features(synthetic, tmp_path):  # noqa: F811
    train, test = datasets.split_by_run(synthetic.run, 0.25)
    kw = dict(epochs=1, batch_size=32, hidden=8, num_layers=1, probes=2, probe_epochs=1)
    pred = predict.fit("gmn", synthetic, train, probe_source="learned", **kw)
    fixed = predict.gmn_probes(synthetic, {"probes": 2})
    learned = predict.gmn_probes(synthetic, pred.config)
    assert learned.shape == fixed.shape == (2, 8, 8)
    assert np.abs(learned).max() <= 2.0 and not np.allclose(learned, fixed)
    y = pred.predict(synthetic, test)
    again = predict.load_predictor(predict.save_predictor(pred, tmp_path / "gmn"))
    np.testing.assert_allclose(again.predict(synthetic, test), y, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="probe_source"):
        predict.fit("gmn", synthetic, train, probe_source="random", **kw)


def test_probes_need_one_input_shape_and_output_width(synthetic):  # noqa: F811
    other = make_target("mlp", input_shape=(64,), widths=[4], out_features=10)
    with pytest.raises(ValueError, match="one known input shape"):
        probegen.response_shape([synthetic.targets[0], other])
    five = make_target("mlp", input_shape=(8, 8), widths=[4], out_features=5)
    with pytest.raises(ValueError, match="one output width"):
        probegen.response_shape([synthetic.targets[0], five])
