"""metanets.baselines / predict: StatNN features, metrics, run-wise splits, fitting,
saving, and datasets from a zoo."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hyper.architectures import make_target
from metanets import baselines, datasets, metrics, predict


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    from hyper import zoo

    d = tmp_path_factory.mktemp("metanet_zoo") / "zoo"
    zoo.build(
        d,
        "digits-cnn",
        arch={"arch": "cnn2d", "channels": [3, 3], "out_features": 10},
        grid={
            "learning_rate": [3e-3, 3e-2],
            "weight_decay": [0.0],
            "init_scale": [0.5, 1.0],
            "train_fraction": [1.0],
            "activation": ["relu"],
            "dropout": [0.0],
        },
        seeds=3,
        epochs=2,
        checkpoint_epochs=[0, 1, 2],
        progress=False,
    )
    return str(d)


@pytest.fixture(scope="session")
def synthetic(random_params):
    """Two architectures; the label is the spread of the output layer's weights."""
    t1 = make_target("cnn2d", input_shape=(8, 8), channels=[3, 3], out_features=10)
    t2 = make_target(
        "cnn2d",
        input_shape=(8, 8),
        channels=[3, 4, 4],
        kernel_size=[5, 3, 3],
        strides=[1, 1, 1],
        batchnorm=True,
        residual=True,
        out_features=10,
    )
    rng = np.random.default_rng(0)
    pops, ys = [], []
    for i, t in enumerate((t1, t2)):
        p = random_params(t, 10 + i, n=60)
        scale = rng.uniform(0.2, 2.0, 60).astype(np.float32)
        p["dense"]["kernel"] = p["dense"]["kernel"] * scale[:, None, None]
        pops.append(p)
        ys.append(np.asarray(p["dense"]["kernel"]).std(axis=(1, 2)))
    return datasets.WeightDataset(
        targets=[t1, t2],
        populations=pops,
        group=np.repeat([0, 1], 60).astype(np.int32),
        member=np.tile(np.arange(60), 2).astype(np.int32),
        y=np.concatenate(ys).astype(np.float32),
        run=np.arange(120),
        epoch=np.zeros(120, np.int32),
    )


def test_metrics_match_references():
    from scipy.stats import kendalltau

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(50), rng.standard_normal(50)
    assert metrics.kendall_tau(a, b) == pytest.approx(kendalltau(a, b).statistic)
    assert metrics.kendall_tau(a, 2 * a + 1) == pytest.approx(1.0)
    assert predict.r2_score(b, b) == pytest.approx(1.0)
    assert predict.r2_score(np.full(50, b.mean()), b) == pytest.approx(0.0, abs=1e-12)


def test_split_by_run_keeps_runs_together():
    runs = np.repeat(np.arange(20), 4)
    train, test = datasets.split_by_run(runs, 0.25, seed=3)
    assert len(set(runs[train]) & set(runs[test])) == 0
    assert len(set(runs[test])) == 5 and len(train) + len(test) == 80
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.split_by_run(runs, 1.5)


def test_statnn_features_are_per_tensor_statistics(synthetic):
    t, p = synthetic.targets[1], synthetic.populations[1]
    f = baselines.statnn_features(t, p, slots=5).reshape(60, 5, -1)
    k0 = np.asarray(p["convs"]["0"]["kernel"]).reshape(60, -1)
    np.testing.assert_allclose(f[:, 0, 0], k0.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f[:, 0, 1], k0.var(1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(f[:, 0, 4], np.median(k0, 1), rtol=1e-5, atol=1e-6)
    # Layer slot 0: kernel stats, then bias stats (7 each); BN scale stats after those.
    b0 = np.asarray(p["convs"]["0"]["bias"])
    np.testing.assert_allclose(f[:, 0, 7 + 6], b0.max(1), rtol=1e-6)
    s0 = np.asarray(p["norms"]["0"]["scale"])
    np.testing.assert_allclose(f[:, 0, 14], s0.mean(1), rtol=1e-5, atol=1e-6)
    # 4 kernel layers in 5 slots: the output layer sits in the last slot, slot 3 is empty.
    dk = np.asarray(p["dense"]["kernel"]).reshape(60, -1)
    np.testing.assert_allclose(f[:, 4, 1], dk.var(1), rtol=1e-4)
    assert np.all(f[:, 3] == 0) and np.all(f[:, :3, -1] == 1) and np.all(f[:, 4, -1] == 1)
    with pytest.raises(ValueError, match="slots"):
        baselines.statnn_features(t, p, slots=2)


def test_flat_needs_one_architecture(synthetic):
    with pytest.raises(ValueError, match="homogeneous"):
        predict.fit("flat", synthetic, np.arange(100))


def test_statnn_models_learn_a_weight_statistic(synthetic, tmp_path):
    train, test = datasets.split_by_run(synthetic.run, 0.25)
    gbm = predict.fit("statnn_gbm", synthetic, train)
    assert predict.evaluate(gbm, synthetic, test)["tau"] > 0.8
    # the fitted trees as arrays: the same predictions as scikit-learn's, and saveable
    from sklearn.ensemble import HistGradientBoostingRegressor

    x = predict.vector_features("statnn_gbm", synthetic, gbm.config)
    sk = HistGradientBoostingRegressor(
        max_iter=500, learning_rate=0.05, early_stopping=True, random_state=0
    ).fit(x[train].astype(np.float64), synthetic.y[train].astype(np.float64))
    np.testing.assert_array_equal(gbm.model.predict(x), sk.predict(x.astype(np.float64)))
    loaded = predict.load_predictor(predict.save_predictor(gbm, tmp_path / "gbm"))
    np.testing.assert_array_equal(loaded.predict(synthetic), gbm.predict(synthetic))
    mlp = predict.fit("statnn_mlp", synthetic, train, epochs=40, eval_every=10)
    assert predict.evaluate(mlp, synthetic, test)["tau"] > 0.6
    assert [h["epoch"] for h in mlp.history] == [0, 10, 20, 30, 39]
    # predictions are padded to a few row counts: one compiled forward per bucket, the same
    # values as the unpadded model (validation during fit compiled the bucket already)
    compiled = predict.mlp_forward._cache_size()
    y = mlp.predict(synthetic, test)
    x = predict.vector_features("statnn_mlp", synthetic, mlp.config)[test]
    direct = np.asarray(mlp.model(jnp.asarray(x))[:, 0]) * mlp.config["y_std"]
    np.testing.assert_allclose(y, direct + mlp.config["y_mean"], rtol=1e-5, atol=1e-5)
    for n in (1, 2, 5):
        np.testing.assert_allclose(mlp.predict(synthetic, test[:n]), y[:n], rtol=1e-6, atol=1e-6)
    assert predict.mlp_forward._cache_size() <= compiled + 1
    assert mlp.predict(synthetic, test[:0]).shape == (0,)
    assert [predict.mlp_rows(n) for n in (1, 64, 65, 4096)] == [64, 64, 128, 4096]


def test_build_gmn_gives_the_fit_setup(synthetic):
    model, bank = predict.build_gmn(synthetic, hidden=8, num_layers=1, seed=3)
    assert len(bank) == len(synthetic) and bank.window == (5, 5)
    g = bank.batch(np.arange(5), batch_size=8)
    y = np.asarray(model(g))[np.asarray(g.globals["mask"])]
    assert y.shape == (5, 1) and np.all(np.isfinite(y))
    wide, wide_bank = predict.build_gmn(synthetic, window=(7, 7), hidden=8, num_layers=1)
    assert wide_bank.window == (7, 7) and wide.edge_in.kernel.shape[0] == 49
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        predict.build_gmn(synthetic, hiden=8)


def test_gmn_fits_saves_and_loads(synthetic, tmp_path):
    train, test = datasets.split_by_run(synthetic.run, 0.25)
    pred = predict.fit("gmn", synthetic, train, epochs=2, batch_size=32, hidden=8, num_layers=1)
    y = pred.predict(synthetic, test)
    assert y.shape == (len(test),) and np.all(np.isfinite(y))
    assert pred.config["window"] == [5, 5] and len(pred.history) == 2
    # samples are padded as full batches of a power-of-two size (at least 16 graphs): a
    # few compiled forwards serve every call, the same values as unpadded
    forward = predict.gmn_forward(nnx.split(pred.model, nnx.Param, ...)[0])
    compiled = forward._cache_size()
    for n in (1, 3, 16, len(test) - 1):
        np.testing.assert_allclose(pred.predict(synthetic, test[:n]), y[:n], rtol=1e-5, atol=1e-6)
    assert forward._cache_size() <= compiled + 1
    d = predict.save_predictor(pred, tmp_path / "gmn")
    again = predict.load_predictor(d)
    np.testing.assert_allclose(again.predict(synthetic, test), y, rtol=1e-6, atol=1e-6)
    # the same fit with every graph batch split over the 8 test devices
    from hyper import sharding

    kw = dict(epochs=2, batch_size=32, hidden=8, num_layers=1)
    sharded = predict.fit("gmn", synthetic, train, mesh=sharding.targets_mesh(), **kw)
    np.testing.assert_allclose(sharded.predict(synthetic, test), y, rtol=1e-3, atol=1e-4)
    # sharded inference: the batches differ only in their padding (one part per device)
    on_mesh = pred.predict(synthetic, test, mesh=sharding.targets_mesh())
    np.testing.assert_allclose(on_mesh, y, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="mesh applies"):
        predict.fit("statnn_mlp", synthetic, train, mesh=sharding.targets_mesh())
    with pytest.raises(ValueError, match="mesh applies"):
        predict.Predictor("statnn_mlp", None, {}).predict(synthetic, mesh=sharding.targets_mesh())
    with pytest.raises(ValueError, match="not empty"):
        predict.save_predictor(pred, d)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        predict.fit("gmn", synthetic, train, nonsense=1)


def test_gmn_with_probe_features_fits_saves_and_loads(synthetic, tmp_path):
    train, test = datasets.split_by_run(synthetic.run, 0.25)
    kw = dict(epochs=1, batch_size=32, hidden=8, num_layers=1)
    pred = predict.fit("gmn", synthetic, train, probes=2, **kw)
    assert pred.model.probe_features == 2 and pred.config["probes"] == 2
    y = pred.predict(synthetic, test)
    assert np.all(np.isfinite(y))
    again = predict.load_predictor(predict.save_predictor(pred, tmp_path / "gmn"))
    np.testing.assert_allclose(again.predict(synthetic, test), y, rtol=1e-6, atol=1e-6)
    assert again.config["probe_input_shape"] == [8, 8]
    again.config["probe_input_shape"] = [64]
    with pytest.raises(ValueError, match="probes have input shape"):
        again.predict(synthetic, test)


def test_perturb_graphs_touches_parameters_only(synthetic):
    from metanets.batching import GraphBank
    from metanets.graph_topology import EDGE_RESIDUAL, NODE_DEFAULTS

    bank = GraphBank(list(zip(synthetic.targets, synthetic.populations, strict=True)))
    g = bank.batch(np.array([0, 1, 60, 61]), min_graphs=5)  # both architectures
    out = predict.perturb_graphs(g, jax.random.key(0), 0.1)
    w, w2 = np.asarray(g.edges["w"]), np.asarray(out.edges["w"])
    x, x2 = np.asarray(g.nodes["x"]), np.asarray(out.nodes["x"])
    assert np.all(w2[w == 0] == 0)  # window padding stays zero
    res = np.asarray(g.edges["type"]) == EDGE_RESIDUAL
    assert res.any() and np.array_equal(w2[res], w[res])  # identity edges are not weights
    absent = x == NODE_DEFAULTS
    assert absent.any() and np.array_equal(x2[absent], x[absent])
    ratio = w2[(w != 0) & ~res[:, None]] / w[(w != 0) & ~res[:, None]]
    assert 0.07 < np.std(ratio) < 0.13 and abs(np.mean(ratio) - 1) < 0.01
    same = predict.perturb_graphs(g, jax.random.key(0), 0.0)
    assert np.array_equal(np.asarray(same.edges["w"]), w)


def test_gmn_noise_fit_resumes_to_the_same_weights(synthetic, tmp_path):
    train, _ = datasets.split_by_run(synthetic.run, 0.25)
    kw = dict(epochs=6, eval_every=2, batch_size=32, hidden=8, num_layers=1, noise=0.1)
    ref = predict.fit("gmn", synthetic, train, checkpoint_dir=tmp_path / "ref", **kw)
    plain = predict.fit("gmn", synthetic, train, **{**kw, "noise": 0.0})
    calls = []

    def die_on_third(msg):  # the third evaluation: checkpoints of epochs 0 and 2 exist
        calls.append(msg)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict.fit(
            "gmn", synthetic, train, checkpoint_dir=tmp_path / "run", log=die_on_third, **kw
        )
    again = predict.fit("gmn", synthetic, train, checkpoint_dir=tmp_path / "run", **kw)
    # the step is traced once per batch shape bucket (two architectures: at most two),
    # not per epoch (12 steps); the fits with the same settings reuse it
    assert 1 <= ref.stats["train_compilations"] <= 2, ref.stats
    assert again.stats["train_compilations"] == 0, again.stats
    leaves = lambda p: jax.tree.leaves(nnx.state(p.model))  # noqa: E731
    for a, b in zip(leaves(again), leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)
    assert again.history == ref.history
    # the noise reached the training: the same fit without it ends elsewhere
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(plain), leaves(ref), strict=True))


def test_load_zoos_one_sample_per_run_and_epoch(tiny_zoo):
    from hyper import zoo

    ds = datasets.load_zoos([tiny_zoo])
    z = zoo.load(tiny_zoo)
    assert len(ds) == z.num_members * 3 and ds.homogeneous
    rows = {(r["member"], r["epoch"]): r["test_acc"] for r in z.metadata}
    for i in range(len(ds)):
        assert ds.y[i] == pytest.approx(rows[(int(ds.run[i]), int(ds.epoch[i]))])
    # Sample i is member ds.member[i] of its group's population, at its epoch.
    at2 = zoo.load(tiny_zoo, epoch=2).groups[0].params["dense"]["kernel"]
    i = int(np.flatnonzero((ds.epoch == 2) & (ds.run == 1))[0])
    got = ds.populations[ds.group[i]]["dense"]["kernel"][ds.member[i]]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(at2[1]))
    gap = datasets.load_zoos([tiny_zoo], task="gap", epochs=[2])
    assert len(gap) == z.num_members and np.all(np.abs(gap.y) < 1)
    with pytest.raises(ValueError, match="task"):
        datasets.load_zoos([tiny_zoo], task="loss")


def test_cli_train_and_predict(tiny_zoo, tmp_path, capsys):
    from hyper.cli import main

    out = tmp_path / "statnn"
    rc = main(
        ["metanet", "train", "--zoo", tiny_zoo, "--model", "statnn", "--epochs", "3",
         "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "statnn"
    assert "test tau" in capsys.readouterr().out
    preds = tmp_path / "preds.jsonl"
    rc = main(["metanet", "predict", "--from", str(out), "--zoo", tiny_zoo, "--out", str(preds)])
    assert rc == 0
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    ds = datasets.load_zoos([tiny_zoo])
    assert len(rows) == len(ds) and "prediction" in rows[0]
    assert "tau" in capsys.readouterr().out
    # The saved predictor's predictions on the held-out runs (train's default split) give
    # the tau and R² that training reported, recomputed here by hand.
    _, test = datasets.split_by_run(ds.run, 0.2, 0)
    assert metrics["test"]["n"] == len(test) >= 2
    p = np.array([rows[i]["prediction"] for i in test])
    y = np.array([rows[i]["label"] for i in test])
    np.testing.assert_array_equal(y, ds.y[test])
    assert metrics["test"]["tau"] == pytest.approx(_tau_b(p, y), abs=1e-6)
    r2 = 1 - ((y - p) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
    assert metrics["test"]["r2"] == pytest.approx(r2, rel=1e-4, abs=1e-6)

    # gbm: the trees saved as arrays predict exactly what the fitted ones did
    rc = main(
        ["metanet", "train", "--zoo", tiny_zoo, "--model", "gbm", "--out", str(tmp_path / "gbm")]
    )
    assert rc == 0
    fitted = json.loads((tmp_path / "gbm" / "metrics.json").read_text())["test"]
    assert main(["metanet", "predict", "--from", str(tmp_path / "gbm"), "--zoo", tiny_zoo]) == 0
    ds = datasets.load_zoos([tiny_zoo])
    again = predict.load_predictor(tmp_path / "gbm" / "predictor")
    _, test = datasets.split_by_run(ds.run, 0.2, 0)
    assert predict.evaluate(again, ds, test) == fitted
    assert main(["metanet", "train", "--zoo", tiny_zoo, "--model", "gbm", "--epochs", "3",
                 "--out", str(tmp_path / "gbm2")]) == 2  # fmt: skip
    assert "does not apply" in capsys.readouterr().err
    assert main(["metanet", "train", "--zoo", tiny_zoo, "--model", "gbm", "--probes", "4",
                 "--out", str(tmp_path / "gbm3")]) == 2  # fmt: skip
    assert "--probes applies to --model gmn" in capsys.readouterr().err
    # Bad input: one line on stderr, exit status 2.
    assert main(["metanet", "train", "--zoo", str(tmp_path), "--out", str(out)]) == 2
    assert "not a zoo directory" in capsys.readouterr().err
    assert main(["metanet", "train", "--zoo", tiny_zoo, "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["metanet", "predict", "--from", str(tmp_path), "--zoo", tiny_zoo]) == 2
    assert "no predictor" in capsys.readouterr().err


def _tau_b(p, y) -> float:
    """Kendall tau-b from its definition (0 where it is undefined, as `kendall_tau`)."""
    conc = disc = tie_p = tie_y = 0
    for i in range(len(p)):
        for j in range(i + 1, len(p)):
            s = np.sign(p[i] - p[j]) * np.sign(y[i] - y[j])
            conc, disc = conc + (s > 0), disc + (s < 0)
            tie_p, tie_y = tie_p + (p[i] == p[j]), tie_y + (y[i] == y[j])
    pairs = len(p) * (len(p) - 1) // 2
    denom = np.sqrt((pairs - tie_p) * (pairs - tie_y))
    return float((conc - disc) / denom) if denom > 0 else 0.0


def test_cli_gmn_shard(tiny_zoo, tmp_path, capsys, monkeypatch):
    """`--shard` splits every graph batch over the 8 test devices, in training and in
    prediction; sharded predictions match the one-device ones."""
    from hyper.cli import main

    small = {**predict.DEFAULTS["gmn"], "hidden": 8, "num_layers": 1}  # the CLI reads these
    monkeypatch.setitem(predict.DEFAULTS, "gmn", small)
    out = tmp_path / "gmn"
    rc = main(
        ["metanet", "train", "--zoo", tiny_zoo, "--model", "gmn", "--epochs", "1", "--shard",
         "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert rc == 0
    rows = {}
    for name, extra in (("one", []), ("sharded", ["--shard"])):
        path = tmp_path / f"{name}.jsonl"
        argv = ["metanet", "predict", "--from", str(out), "--zoo", tiny_zoo, "--out", str(path)]
        assert main(argv + extra) == 0
        rows[name] = [json.loads(line)["prediction"] for line in path.read_text().splitlines()]
    np.testing.assert_allclose(rows["sharded"], rows["one"], rtol=1e-6, atol=1e-6)
    capsys.readouterr()
    assert main(["metanet", "train", "--zoo", tiny_zoo, "--model", "statnn", "--shard",
                 "--out", str(tmp_path / "s")]) == 2  # fmt: skip
    assert "--shard applies to --model gmn" in capsys.readouterr().err


def test_gmn_learns_the_synthetic_label(synthetic):
    """The graph metanet learns: its training loss falls and its test Kendall tau on the
    held-out runs is far above chance (0). Negating its gradient fails both."""
    train, test = predict.split_by_run(synthetic.run, 0.25)
    kw = dict(epochs=20, batch_size=32, hidden=16, num_layers=2, eval_every=5, lr=3e-3)
    pred = predict.fit("gmn", synthetic, train, **kw)
    losses = [h["train_loss"] for h in pred.history]
    assert losses[-1] < 0.5 * losses[0], losses
    tau = predict.evaluate(pred, synthetic, test)["tau"]
    assert tau > 0.1, tau  # 30 held-out runs; a fit with a negated gradient gives ~0 or less


def test_gmn_input_norm_reads_small_deviations_and_round_trips(synthetic, tmp_path):
    """The label sits in the BatchNorm scales' 1 % deviations from 1 (as a transformer's
    LayerNorm scales carry it): with `input_norm` the graph metanet reads it off held-out
    runs, and the statistics are saved with the predictor."""
    t, pop = synthetic.targets[1], jax.tree.map(jnp.asarray, synthetic.populations[1])
    u = np.random.default_rng(5).uniform(-1.0, 1.0, 60).astype(np.float32)
    pop["norms"] = {
        k: {**v, "scale": 1.0 + 0.01 * u[:, None] + 0.001 * jnp.abs(v["scale"])}
        for k, v in pop["norms"].items()
    }
    ds = datasets.WeightDataset(
        targets=[t], populations=[pop], group=np.zeros(60, np.int32),
        member=np.arange(60, dtype=np.int32), y=u, run=np.arange(60),
        epoch=np.zeros(60, np.int32),
    )  # fmt: skip
    train, test = datasets.split_by_run(ds.run, 0.25)
    kw = dict(epochs=12, batch_size=16, hidden=8, num_layers=1, eval_every=4, lr=3e-3)
    pred = predict.fit("gmn", ds, train, input_norm=True, **kw)
    assert pred.model.input_norm and np.any(np.asarray(pred.model.node_std[...]) != 1.0)
    y = pred.predict(ds, test)
    assert predict.evaluate(pred, ds, test)["tau"] > 0.5
    again = predict.load_predictor(predict.save_predictor(pred, tmp_path / "norm"))
    np.testing.assert_allclose(again.predict(ds, test), y, rtol=1e-6, atol=1e-6)
