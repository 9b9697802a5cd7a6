"""Fuzzing the public entry points with generated bad input: target construction,
population operations, hypernet conditions, run configs, zoo grids, zoo descriptions on disk,
graph conversion (metanets) and CLI flags. Each must fail only with the documented errors
(`ValueError` — including `CheckpointError` — or `TypeError`), and the CLI with one line on
stderr and exit status 2.

Every example is bad by construction (a valid base with one drawn fault), so a call that
returns normally is a failure too (except for zoo descriptions, where an edit may be benign
and loading must then succeed). Examples: 45 + 60 + 40 + 40 + 35 + 40 + 45 + 30 = 335."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hyper import population, zoo
from hyper.architectures import make_target
from hyper.cli import main
from hyper.hypernets import conditions as cond_lib
from hyper.hypernets import train as hypertrain
from hyper.tree import nest
from metanets import batching, graph

DOCUMENTED = (ValueError, TypeError)


def fuzz(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.integers(-2, 2), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


def _expect_documented(fn, *args, **kwargs) -> None:
    with pytest.raises(DOCUMENTED):
        fn(*args, **kwargs)


# --- Target construction ------------------------------------------------------------------

_TARGET_BASE = {"arch": "mlp", "input_shape": (8, 8), "widths": (4,), "out_features": 3}


@st.composite
def bad_target_configs(draw):
    cfg = dict(_TARGET_BASE)
    fault = draw(st.sampled_from(["arch", "input_shape", "widths", "out", "unknown", "act"]))
    if fault == "arch":
        cfg["arch"] = draw(st.one_of(st.sampled_from(["MLP", "transformer", ""]), junk))
    elif fault == "input_shape":
        cfg["input_shape"] = draw(
            st.one_of(
                st.just(()),
                st.tuples(st.integers(-4, 0)),
                st.tuples(st.integers(1, 3), st.integers(-3, 0)),
                st.just("8x8"),
                st.just(None),
            )
        )
    elif fault == "widths":
        cfg["widths"] = draw(
            st.one_of(
                st.lists(st.integers(-3, 0), min_size=1, max_size=3),
                st.just("16"),
                st.just(None),
                st.lists(st.text(min_size=1, max_size=2), min_size=1, max_size=2),
            )
        )
    elif fault == "out":
        cfg["out_features"] = draw(st.one_of(st.integers(-3, 0), st.just("10"), st.just(2.5)))
    elif fault == "unknown":
        cfg[draw(st.sampled_from(["width", "layers", "kernel", "momentum"]))] = 3
    else:
        cfg["activation"] = draw(st.sampled_from(["swish", "RELU", "", "sigmoid!"]))
    return cfg


@fuzz(45)
@given(bad_target_configs())
def test_make_target_rejects_bad_configs(cfg):
    cfg = dict(cfg)
    arch = cfg.pop("arch")
    _expect_documented(make_target, arch, **cfg)


# --- Population operations ----------------------------------------------------------------


@st.composite
def bad_population_calls(draw, target):
    n = 3
    good = population.to_numpy(target.init_population(__import__("jax").random.key(0), n))
    flat_w = sum(s.size for s in target.spec)
    op = draw(
        st.sampled_from(
            ["stack", "take", "concatenate", "unflatten", "from_numpy", "torch", "validate"]
        )
    )
    if op == "stack":
        bad = draw(
            st.sampled_from(["empty", "mismatch", "shape"]),
        )
        if bad == "empty":
            return population.stack, ([],), {}
        one = {k: v[0] for k, v in good.items()}
        other = dict(one)
        if bad == "mismatch":
            other.pop(next(iter(other)))
        else:
            k = next(iter(other))
            other[k] = np.zeros((*other[k].shape, 2), other[k].dtype)
        return population.stack, ([nest(one), nest(other)],), {}
    if op == "take":
        index = draw(
            st.one_of(st.integers(n, 10), st.integers(-10, -n - 1), st.just(1.5), st.just("0"))
        )
        return population.take, (nest(good), index), {}
    if op == "concatenate":
        other = {k: v[:, None] if v.ndim > 1 else v for k, v in good.items()}
        other[next(iter(other))] = np.zeros((n, 1), np.float32)
        return (
            population.concatenate,
            (draw(st.sampled_from([[], [nest(good), nest(other)]])),),
            {},
        )
    if op == "unflatten":
        shape = draw(
            st.sampled_from(
                [(n, flat_w + 1), (n, flat_w - 1), (flat_w,), (n, flat_w, 1), (0,), (n, flat_w)]
            )
        )
        dtype = np.complex64 if shape == (n, flat_w) else np.float32  # wrong shape or dtype
        arr = np.zeros(shape, dtype)
        return population.unflatten, (target, arr), {}
    if op == "from_numpy":
        arrays = dict(good)
        k = draw(st.sampled_from(sorted(arrays)))
        fault = draw(st.sampled_from(["missing", "extra", "shape", "dtype", "scalar"]))
        if fault == "missing":
            arrays.pop(k)
        elif fault == "extra":
            arrays[k + "_x"] = arrays[k]
        elif fault == "shape":
            arrays[k] = np.zeros((*arrays[k].shape[:-1], arrays[k].shape[-1] + 1), np.float32)
        elif fault == "dtype":
            arrays[k] = np.array([["a"]] * n, dtype=object)
        else:
            arrays[k] = 1.0
        return population.from_numpy, (target, arrays), {"batched": True}
    if op == "torch":
        sd = population.to_torch_state_dict(target, nest({k: v[0] for k, v in good.items()}))
        k = draw(st.sampled_from(sorted(sd)))
        fault = draw(st.sampled_from(["missing", "transposed", "extra"]))
        sd = dict(sd)
        if fault == "missing":
            sd.pop(k)
        elif fault == "extra":
            sd["num_batches_tracked_x"] = np.zeros(())
        else:
            sd[k] = np.zeros((*np.shape(sd[k]), 2), np.float32)
        return population.from_torch_state_dict, (target, sd), {}
    arrays = dict(good)
    k = draw(st.sampled_from(sorted(arrays)))
    arrays[k] = draw(
        st.sampled_from([np.zeros((2, 2, 2, 2), np.float32), np.zeros((n,), np.float16), "x"])
    )
    return target.validate, (nest(arrays),), {"batched": True}


@pytest.fixture(scope="module")
def small_mlp():
    return make_target("mlp", input_shape=(5,), widths=(3,), out_features=2)


@fuzz(60)
@given(data=st.data())
def test_population_ops_reject_bad_input(small_mlp, data):
    fn, args, kwargs = data.draw(bad_population_calls(small_mlp))
    _expect_documented(fn, *args, **kwargs)


# --- Hypernet conditions -------------------------------------------------------------------

SPECS = (
    cond_lib.Continuous("gamma", shape=(), low=0.0, high=1.0),
    cond_lib.Categorical("task", num_classes=3),
)


@st.composite
def bad_conditions(draw):
    m = draw(st.integers(1, 3))
    good = {"gamma": np.full((m,), 0.5, np.float32), "task": np.zeros((m,), np.int32)}
    fault = draw(
        st.sampled_from(
            [
                "range",
                "nan",
                "id",
                "float_id",
                "shape",
                "batch",
                "unknown",
                "missing",
                "type",
                "empty",
            ]
        )
    )
    c = dict(good)
    if fault == "range":
        c["gamma"] = np.full((m,), draw(st.sampled_from([-0.1, 1.5, 1e9])), np.float32)
    elif fault == "nan":
        c["gamma"] = np.full((m,), draw(st.sampled_from([np.nan, np.inf])), np.float32)
    elif fault == "id":
        c["task"] = np.full((m,), draw(st.sampled_from([-1, 3, 99])), np.int32)
    elif fault == "float_id":
        c["task"] = np.zeros((m,), np.float32)
    elif fault == "shape":
        c["gamma"] = np.zeros((m, 2), np.float32)
    elif fault == "batch":
        c["task"] = np.zeros((m + 1,), np.int32)
    elif fault == "unknown":
        c[draw(st.sampled_from(["lr", "Gamma", ""]))] = np.zeros((m,), np.float32)
    elif fault == "missing":
        c.pop(draw(st.sampled_from(["gamma", "task"])))
    elif fault == "type":
        return draw(st.sampled_from([[0.5], 0.5, "gamma", None]))
    else:
        c = {"gamma": np.zeros((0,), np.float32), "task": np.zeros((0,), np.int32)}
    return c


@fuzz(40)
@given(bad_conditions())
def test_condition_batches_are_validated(cond):
    _expect_documented(cond_lib.validate, SPECS, cond)


# --- Run configs (hypernet training) -------------------------------------------------------


@st.composite
def bad_run_configs(draw):
    cfg = copy.deepcopy(hypertrain.PRESETS["digits-mip"])
    key = draw(
        st.sampled_from(
            [
                "steps",
                "batch_size",
                "dataset",
                "loss",
                "optimizer",
                "hypernet",
                "conditions",
                "target",
                "seed",
                "unknown",
                "whole",
            ]
        )
    )
    if key in ("steps", "batch_size"):
        cfg[key] = draw(st.one_of(st.integers(-5, -1), st.just("10"), st.just(1.5), st.just(True)))
    elif key == "dataset":
        cfg[key] = draw(st.sampled_from(["cifar10", "", "Digits"]))
    elif key == "loss":
        cfg[key] = draw(st.one_of(junk, st.just({"kind": "mse"})))
    elif key == "optimizer":
        cfg[key] = draw(
            st.sampled_from(
                [
                    {"name": "adagrad"},
                    {"learning_rate": -1.0},
                    {"learning_rate": True},
                    {"name": "adam", "beta": 0.9},
                    "adam",
                    None,
                ]
            )
        )
    elif key == "hypernet":
        cfg[key] = draw(st.sampled_from([{"depth": 3}, {"hiden": [8]}, [16], None]))
    elif key == "conditions":
        cfg[key] = draw(
            st.sampled_from(
                [
                    [{"kind": "ordinal", "name": "x"}],
                    [{"kind": "continuous"}],
                    [{"kind": "continuous", "name": "g", "shape": ["a"]}],
                    "gamma",
                    [1, 2],
                    [{"kind": "continuous", "name": "g", "low": 1.0, "high": 0.0}],
                ]
            )
        )
    elif key == "target":
        cfg[key] = draw(
            st.sampled_from(
                [None, [], {"widths": [8]}, {"arch": 3}, {"arch": "mlp", "input_shape": [3]}]
            )
        )
    elif key == "seed":
        cfg[key] = draw(st.sampled_from(["0", 1.5, None, True]))
    elif key == "unknown":
        cfg[draw(st.sampled_from(["epochs", "lr", "Steps"]))] = 1
    else:
        return draw(st.one_of(st.lists(st.integers(), max_size=2), st.integers(), st.none()))
    return cfg


@fuzz(40)
@given(bad_run_configs())
def test_run_configs_are_validated(cfg):
    _expect_documented(hypertrain.resolve_config, cfg)


# --- Zoo grids ---------------------------------------------------------------------------


@st.composite
def bad_grids(draw):
    key = draw(
        st.sampled_from(
            [
                "learning_rate",
                "weight_decay",
                "init_scale",
                "train_fraction",
                "dropout",
                "activation",
                "optimizer",
                "momentum",
                "lr",
            ]
        )
    )
    values = {
        "learning_rate": st.sampled_from([[], [-0.1], [0.0], ["0.1"], [np.nan], [True]]),
        "weight_decay": st.sampled_from([[-1e-4], ["x"], [None], []]),
        "init_scale": st.sampled_from([[0.0], [-1.0], [[1.0]]]),
        "train_fraction": st.sampled_from([[0.0], [1.5], [-0.5]]),
        "dropout": st.sampled_from([[1.0], [-0.1], ["0.5"]]),
        "activation": st.sampled_from([["swish"], [["relu"]], [3], ["relu", "relu"]]),
        "optimizer": st.sampled_from([["adagrad"], [{"name": "adam"}], [None]]),
    }.get(key, st.just([0.9]))
    return {key: draw(values)}


@fuzz(35)
@given(bad_grids())
def test_zoo_grids_fail_before_writing(tmp_path_factory, grid):
    out = tmp_path_factory.mktemp("grid") / "z"
    _expect_documented(zoo.build, out, "digits-mlp", grid=grid, seeds=1, epochs=1, progress=False)
    assert not out.exists()


# --- Zoo descriptions on disk ---------------------------------------------------------------


def _mutations():
    leaf = st.one_of(junk, st.just("../x"), st.just(-1), st.just([]), st.just({}))
    return st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "format",
                    "complete",
                    "checkpoint_epochs",
                    "members",
                    "groups",
                    "groups.0.id",
                    "groups.0.members",
                    "groups.0.target",
                    "groups.0.target.arch",
                    "groups.0.target.widths",
                    "groups.0.target.input_shape",
                    "members.0.member",
                    "members.1",
                    "epochs",
                    "dataset",
                ]
            ),
            leaf,
        ),
        min_size=1,
        max_size=2,
    )


def _set(cfg, path, value):
    node = cfg
    *parents, last = path.split(".")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


_READ_BY_NOBODY = ("epochs", "dataset")  # zoo.json fields that `zoo.load` does not read
_STORED: dict = {}


def _stored(tiny_zoo):
    if "zoo" not in _STORED:
        _STORED["zoo"] = zoo.load(tiny_zoo)
    return _STORED["zoo"]


@fuzz(40)
@given(_mutations())
@example([("complete", False)])  # refused: the build has not finished
@example([("complete", 1), ("dataset", "x")])  # benign: loads the stored zoo
def test_edited_zoo_descriptions_load_or_fail_cleanly(tiny_zoo, tmp_path_factory, edits):
    """An edit of a field `zoo.load` does not read (or ``complete`` to another true value)
    is benign: the zoo loads with its stored weights and table. Any other edit fails with a
    documented error that says what is wrong."""
    d = tmp_path_factory.mktemp("edited") / "z"
    shutil.copytree(tiny_zoo, d)
    cfg = json.loads((d / "zoo.json").read_text())
    for path, value in edits:
        _set(cfg, path, value)
    (d / "zoo.json").write_text(json.dumps(cfg))
    final = {path: value for path, value in edits}  # the last edit of a path wins
    benign = all(p in _READ_BY_NOBODY or (p == "complete" and bool(v)) for p, v in final.items())
    try:
        z = zoo.load(d)
    except DOCUMENTED as e:
        assert not benign, f"benign edit {edits} refused: {e}"
        assert str(e)
    else:
        assert benign, f"edit {edits} loaded without an error"
        ref = _stored(tiny_zoo)
        assert z.metadata == ref.metadata
        for g, h in zip(z.groups, ref.groups, strict=True):
            for a, b in zip(jax.tree.leaves(g.params), jax.tree.leaves(h.params), strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    shutil.rmtree(d)


# --- CLI flags ------------------------------------------------------------------------------


@st.composite
def bad_argvs(draw, base: Path):
    out = str(base / "out")
    zoo_base = ["zoo", "--preset", "digits-mlp", "--out", out]
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return [
            "zoo",
            "--preset",
            draw(st.sampled_from(["imagenet", "", "DIGITS-MLP"])),
            "--out",
            out,
        ]
    if choice == 1:
        return [*zoo_base, "--seeds", draw(st.sampled_from(["0", "-2", "x", "1.5", ""]))]
    if choice == 2:
        return [
            *zoo_base,
            "--checkpoint-epochs",
            draw(st.sampled_from(["a", ",", "1,,x", "-1", "0,99"])),
            "--epochs",
            "2",
        ]
    if choice == 3:
        return [*zoo_base, "--epochs", draw(st.sampled_from(["-1", "x", "1e3"]))]
    if choice == 4:
        return [
            *zoo_base,
            draw(st.sampled_from(["--grid", "--format", "--batch-size"])),
            draw(st.sampled_from([str(base / "missing.json"), "xml", "0", "-3"])),
        ]
    if choice == 5:
        return [*zoo_base, draw(st.sampled_from(["--bogus", "-x", "--seed=abc", "--resume=1"]))]
    if choice == 6:
        return ["info", draw(st.sampled_from([str(base / "nowhere"), str(base), "/dev/null"]))]
    if choice == 7:
        return [
            "hyper",
            "train",
            "--config",
            draw(st.sampled_from(["nope", str(base / "bad.json"), str(base / "list.json")])),
            "--out",
            out,
        ]
    if choice == 8:
        return [
            "hyper",
            "generate",
            "--from",
            str(base / "norun"),
            "--conditions",
            draw(st.sampled_from(["gamma=0:1:5", "{}", "x"])),
            "--out",
            out,
        ]
    return draw(st.sampled_from([[], ["hyper"], ["frobnicate"], ["--version"], ["zoo"]]))


@pytest.fixture(scope="module")
def cli_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli-fuzz")
    (base / "bad.json").write_text("{ nope")
    (base / "list.json").write_text("[1, 2]")
    return base


@fuzz(45)
@given(data=st.data())
def test_cli_bad_flags_are_one_line_and_status_2(cli_base, capsys, data):
    argv = data.draw(bad_argvs(cli_base))
    capsys.readouterr()
    assert main(argv) == 2, argv
    captured = capsys.readouterr()
    assert captured.err.startswith("weightspace: error: "), (argv, captured.err)
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert not (cli_base / "out").exists()


# --- Graph conversion (metanets) --------------------------------------------------------


@pytest.fixture(scope="module")
def small_cnn():
    return make_target("cnn2d", input_shape=(6, 6), channels=(2, 3), out_features=2)


@st.composite
def bad_graph_calls(draw, target):
    good = population.to_numpy(target.init_population(__import__("jax").random.key(0), 2))
    fault = draw(
        st.sampled_from(["missing", "shape", "dtype", "unbatched", "window", "empty", "counts"])
    )
    arrays = dict(good)
    k = draw(st.sampled_from(sorted(arrays)))
    if fault == "missing":
        arrays.pop(k)
    elif fault == "shape":
        arrays[k] = np.zeros((*arrays[k].shape[:-1], arrays[k].shape[-1] + 1), np.float32)
    elif fault == "dtype":
        arrays[k] = arrays[k].astype(np.complex64)
    elif fault == "unbatched":
        arrays = {p: v[0] for p, v in arrays.items()}
    elif fault == "window":
        window = draw(st.sampled_from([(1, 1), (0, 3), (3,), (-3, -3), (2, 3)]))
        return graph.population_to_graphs, (target, nest(arrays)), {"window": window}
    elif fault == "empty":
        return batching.batch_graphs, ([],), {}
    else:
        g = batching.batch_graphs([(target, nest(arrays))])
        counts = draw(st.sampled_from([[3], [None, None], [1]]))
        return graph.graphs_to_populations, (g, [(target, c) for c in counts]), {}
    return graph.population_to_graphs, (target, nest(arrays)), {}


@fuzz(30)
@given(data=st.data())
def test_graph_conversion_rejects_bad_input(small_cnn, data):
    fn, args, kwargs = data.draw(bad_graph_calls(small_cnn))
    _expect_documented(fn, *args, **kwargs)
