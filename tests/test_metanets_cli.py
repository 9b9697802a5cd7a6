"""`weightspace metanet prune-train` and `weightspace prune`: a metanet trained on a tiny
zoo, a compact network pruned from a zoo member (loaded again without the original), pruned
again from its own checkpoint, and bad input that ends in one stderr line and status 2.

One zoo (2 groups of 2 members: dropout 0 and 0.2), one metanet and one pruned network are
built once per module."""

from __future__ import annotations

import contextlib
import dataclasses
import io

import pytest

from hyper import compact
from hyper.architectures import make_target, target_from_config
from hyper.cli import main

FAST = ["--finetune-before", "5", "--finetune-after", "5"]


def _run(*argv: str) -> tuple[int, str, str]:
    """`weightspace ARGV` in-process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    from hyper import zoo

    d = tmp_path_factory.mktemp("prune_cli") / "zoos" / "zoo"
    zoo.build(
        d,
        "digits-mlp",
        arch={"arch": "mlp", "widths": [8], "out_features": 10},
        grid={
            "learning_rate": [3e-2],
            "weight_decay": [0.0],
            "init_scale": [1.0],
            "train_fraction": [1.0],
            "activation": ["relu"],
            "dropout": [0.0, 0.2],
        },
        seeds=2,
        epochs=1,
        checkpoint_epochs=[0, 1],
        progress=False,
    )
    return d


@pytest.fixture(scope="module")
def metanet(zoo_dir):
    """(directory, status, stdout) of a 3-step `metanet prune-train`."""
    d = zoo_dir.parent.parent / "metanet"
    rc, out, _ = _run(
        "metanet", "prune-train", "--zoo", zoo_dir, "--out", d, "--steps", "3",
        "--nets-per-step", "3", "--hidden", "8", "--layers", "2", "--quiet",
    )  # fmt: skip
    return d, rc, out


@pytest.fixture(scope="module")
def pruned(zoo_dir, metanet):
    """(directory, status, stdout) of member 3 (group g1) pruned 2x with the metanet."""
    d = zoo_dir.parent.parent / "pruned"
    rc, out, _ = _run(
        "prune", "--from", zoo_dir, "--member", "3", "--speedup", "2",
        "--metanet", metanet[0], *FAST, "--out", d,
    )  # fmt: skip
    return d, rc, out


def test_prune_train_writes_a_metanet(zoo_dir, metanet):
    from hyper import zoo
    from metanets.metaprune import load_metapruner

    d, rc, out = metanet
    assert rc == 0
    assert out.strip().splitlines()[-1] == f"wrote {d}"
    assert "step 3" in out and "(4 networks)" in out  # both groups, concatenated
    m = load_metapruner(d)
    assert m.config.steps == 3 and m.config.hidden == 8 and m.config.num_layers == 2
    assert m.history[-1]["step"] == 3
    assert m.target.paths == zoo.load(zoo_dir).groups[0].target.paths


def test_prune_with_metanet_from_a_zoo_member(zoo_dir, pruned):
    from hyper import data, zoo
    from hyper.prune import accuracy, load_pruned

    d, rc, out = pruned
    assert rc == 0
    assert "speed-up" in out and out.strip().splitlines()[-1] == f"wrote {d}"
    target, params, record = load_pruned(d)
    z = zoo.load(zoo_dir)
    original = z.groups[0].target
    assert compact.count_flops(target) < compact.count_flops(original)
    assert record["speedup"] >= 2
    assert record["info"]["dataset"] == "digits"
    assert record["info"]["metanet"] is True and record["info"]["member"] == 3
    assert record["info"]["epoch"] == 1  # the zoo's last epoch, resolved
    # Member 3 is the second network of group g1: its recorded accuracy is the zoo's.
    (row,) = [r for r in z.rows() if r["member"] == 3]
    assert record["acc"]["original"] == pytest.approx(row["test_acc"], abs=1e-5)
    # The compact network is a plain MLP rebuilt from its config, without the original.
    assert "derived_from" not in target.config
    assert target.config["widths"][0] < 8
    rebuilt = target_from_config(target.config)
    assert [s.shape for s in rebuilt.spec] == [s.shape for s in target.spec]
    acc = accuracy(rebuilt, params, data.load("digits"))
    assert acc == pytest.approx(record["acc"]["final"], abs=1e-5)


def test_prune_again_from_a_population_checkpoint(pruned, tmp_path):
    from hyper.prune import load_pruned

    src = pruned[0]
    t0, _, _ = load_pruned(src)
    out = tmp_path / "again"
    rc, stdout, _ = _run(
        "prune", "--from", src, "--speedup", "1.5", "--importance", "l1",
        "--finetune-before", "0", "--finetune-after", "0", "--out", out,
    )  # fmt: skip
    assert rc == 0, stdout
    target, _, record = load_pruned(out)
    assert compact.count_flops(target) < compact.count_flops(t0)
    assert record["speedup"] >= 1.5
    assert record["info"]["dataset"] == "digits"  # read from the source's record
    assert record["info"]["metanet"] is False and record["info"]["importance"] == "l1"


@pytest.fixture(scope="module")
def no_dataset_ckpt(tmp_path_factory, random_params):
    from hyper.checkpoint import save_population

    t = make_target("mlp", input_shape=(8, 8), widths=[8], out_features=10)
    d = tmp_path_factory.mktemp("prune_cli_plain") / "ckpt"
    return str(save_population(d, random_params(t, 0, n=2), t))


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--speedup", "1000", "--finetune-before", "0"], "every channel of layer layers/0"),
        (["--speedup", "0.5"], "--speedup must be"),
        (["--floor", "1.5"], "--floor must lie"),
        (["--speedup", "2", "--floor", "0.5"], "not allowed with"),
        ([], "one of the arguments --speedup --floor is required"),
        (["--speedup", "2", "--member", "9"], "--member 9"),
        (["--speedup", "2", "--epoch", "7"], "epoch 7 was not checkpointed"),
        (["--speedup", "2", "--prune-steps", "0"], "--prune-steps must be"),
        (["--speedup", "2", "--lr", "nan"], "--lr must be"),
        (["--speedup", "2", "--dataset", "nope"], "unknown dataset"),
    ],
)
def test_bad_prune_arguments_exit_2_with_one_line(zoo_dir, tmp_path, argv, match):
    rc, out, err = _run("prune", "--from", zoo_dir, "--out", tmp_path / "o", *argv)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and match in err, err
    assert not (tmp_path / "o").exists()


def test_bad_prune_sources_exit_2_with_one_line(
    zoo_dir, metanet, pruned, no_dataset_ckpt, tmp_path
):
    m, p = metanet[0], pruned[0]
    cases = [
        (["--from", tmp_path / "missing", "--out", tmp_path / "o"], "no such directory"),
        (["--from", m, "--out", tmp_path / "o"], "not a weightspace population checkpoint"),
        (["--from", tmp_path, "--out", tmp_path / "o"], "no population checkpoint"),
        (["--from", no_dataset_ckpt, "--out", tmp_path / "o"], "pass --dataset"),
        (["--from", p, "--epoch", "2", "--out", tmp_path / "o"], "--epoch applies to zoo"),
        (["--from", p, "--metanet", m, "--out", tmp_path / "o"], "other leaves or shapes"),
        (["--from", zoo_dir, "--metanet", zoo_dir, "--out", tmp_path / "o"], "--metanet"),
        (["--from", zoo_dir, "--out", p], "not empty; pass --overwrite"),
        (["--from", zoo_dir, "--out", zoo_dir.parent, "--overwrite"], "holds --from"),
    ]
    for argv, match in cases:
        rc, _, err = _run("prune", "--speedup", "2", *argv)
        assert rc == 2, argv
        assert len(err.strip().splitlines()) == 1 and match in err, (argv, err)
    assert zoo_dir.is_dir()


def test_bad_prune_train_arguments_exit_2_with_one_line(zoo_dir, metanet, tmp_path):
    m = metanet[0]
    cases = [
        (["--zoo", tmp_path, "--out", tmp_path / "o"], "not a zoo directory"),
        (["--zoo", zoo_dir, "--out", m], "not empty; pass --overwrite"),
        (["--zoo", zoo_dir, "--out", tmp_path / "o", "--steps", "0"], "--steps must be"),
        (["--zoo", zoo_dir, "--out", tmp_path / "o", "--nets-per-step", "0"], "--nets-per"),
        (["--zoo", zoo_dir, "--out", tmp_path / "o", "--r", "0"], "--r must be"),
        (["--zoo", zoo_dir, "--out", tmp_path / "o", "--sparsity", "-1"], "--sparsity"),
    ]
    for argv, match in cases:
        rc, _, err = _run("metanet", "prune-train", *argv)
        assert rc == 2, argv
        assert len(err.strip().splitlines()) == 1 and match in err, (argv, err)


def test_prune_train_refuses_mixed_architectures(zoo_dir):
    from hyper import zoo
    from metanets.cli import zoo_architecture

    z = zoo.load(zoo_dir)
    g0 = z.groups[0]
    tanh = target_from_config({**g0.target.config, "activation": "tanh"})
    wide = target_from_config({**g0.target.config, "widths": [9]})
    assert zoo_architecture(z) is g0.target  # dropout 0 and 0.2: one function
    mixed = dataclasses.replace(z, groups=[g0, dataclasses.replace(g0, id="gt", target=tanh)])
    with pytest.raises(ValueError, match="different functions"):
        zoo_architecture(mixed)
    mixed = dataclasses.replace(z, groups=[g0, dataclasses.replace(g0, id="gw", target=wide)])
    with pytest.raises(ValueError, match="several architectures"):
        zoo_architecture(mixed)


def test_metanet_train_fits_the_probe_model(zoo_dir, tmp_path, monkeypatch):
    from metanets import predict

    tiny = dict(count=4, latent=4, gen_width=8, gen_depth=1, hidden=8, depth=1)
    monkeypatch.setitem(predict.DEFAULTS, "probes", {**predict.DEFAULTS["probes"], **tiny})
    out = tmp_path / "probes"
    rc, stdout, err = _run(
        "metanet", "train", "--zoo", zoo_dir, "--model", "probes", "--epochs", "1",
        "--out", out, "--quiet",
    )  # fmt: skip
    assert rc == 0, err
    assert "probes accuracy: test tau" in stdout
    assert predict.load_predictor(out / "predictor").kind == "probes"
    rc, stdout, err = _run("metanet", "predict", "--from", out, "--zoo", zoo_dir)
    assert rc == 0 and "tau" in stdout, err


def test_metanet_train_passes_the_transformer_and_data_options(zoo_dir, tmp_path, monkeypatch):
    """``--model gmn_t --canonicalize --augment 2 --probes 3 --input-norm`` reach
    `predict.fit` (the graph transformer's fit itself: tests/test_metanets_transformer.py)."""
    from hyper.errors import WeightspaceError
    from metanets import predict

    calls = []

    def fit(kind, ds, train, **kw):
        calls.append((kind, kw))
        raise WeightspaceError("stop here")

    monkeypatch.setattr(predict, "fit", fit)
    rc, _, err = _run(
        "metanet", "train", "--zoo", zoo_dir, "--model", "gmn_t", "--canonicalize",
        "--augment", "2", "--probes", "3", "--input-norm", "--out", tmp_path / "t", "--quiet",
    )  # fmt: skip
    assert rc == 2 and "stop here" in err
    ((kind, kw),) = calls
    assert kind == "gmn_t" and kw["canonicalize"] is True
    assert kw["augment"] == 2 and kw["probes"] == 3 and kw["input_norm"] is True
    rc, _, err = _run(
        "metanet", "train", "--zoo", zoo_dir, "--model", "gbm", "--input-norm", "--out",
        tmp_path / "v",
    )  # fmt: skip
    assert rc == 2 and "--input-norm applies to --model gmn or gmn_t" in err
    rc, _, err = _run(
        "metanet", "train", "--zoo", zoo_dir, "--augment", "-1", "--out", tmp_path / "u"
    )
    assert rc == 2 and "--augment must be >= 0" in err
