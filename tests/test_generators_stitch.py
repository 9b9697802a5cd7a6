"""Stitching (SN-Net, `generators.stitch`): an identity stitch of an anchor with itself is the
anchor; a stitched network is the composition front -> stitch -> back (checked against an
independent evaluation of the back that swaps the cut activation in) and survives a
safetensors round trip; the least-squares stitch fits the activations better than others;
the command refuses bad input with status 2."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from generators.stitch import operating_points, stitch_family
from generators.stitch_cuts import (
    cut_activations,
    features_matrix,
    find_cuts,
    fuse,
    least_squares_stitch,
)
from hyper import data as data_lib
from hyper import formats
from hyper import jaxpr as jaxpr_lib
from hyper.architectures import config_for_params, make_target
from hyper.cli import main
from hyper.errors import WeightspaceError
from hyper.symmetry import apply_on_leaves


def _lecun(target, seed: int):
    """LeCun-normal kernels and small random biases, on the host (no init program)."""
    rng = np.random.default_rng(seed)
    leaves = [
        (rng.standard_normal(s.shape) / np.sqrt(s.fan_in if s.role == "kernel" else 10.0)).astype(
            np.float32
        )
        for s in target.spec
    ]
    return jax.tree.unflatten(target.treedef, leaves)


def _mlp(width: int):
    t = make_target("mlp", input_shape=(8, 8), widths=[width, width], out_features=10)
    return t, _lecun(t, width)


@pytest.fixture(scope="module")
def digits():
    return data_lib.load("digits")


@pytest.fixture(scope="module")
def family(digits):
    anchors = [(f"mlp{w}", *_mlp(w)) for w in (4, 8)]
    fam = stitch_family(anchors, digits, sample_size=128, progress=False)
    before = {k: np.asarray(v["s"]) for k, v in fam.stitch_params.items()}
    given = [np.asarray(a) for a in jax.tree.leaves([a.params for a in fam.anchors])]
    fam.train(4, key=jax.random.key(0), batch_size=16, chunk=4, progress=False)
    frozen = [np.asarray(a) for a in jax.tree.leaves([a.params for a in fam.anchors])]
    fam.train(4, key=jax.random.key(1), batch_size=16, chunk=4, anchors=True, progress=False)
    fam.trained_from, fam.given, fam.frozen = before, given, frozen
    return fam


@pytest.mark.parametrize("kind", ["mlp", "cnn1d"])
def test_identity_stitch_is_the_anchor(kind, family):
    if kind == "mlp":
        t, params = family.anchors[0].target, family.anchors[0].params
        x = np.random.default_rng(0).standard_normal((5, 8, 8)).astype(np.float32)
    else:
        t = make_target("cnn1d", input_shape=(12,), channels=[3, 5], out_features=4)
        params = _lecun(t, 1)
        x = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    leaves = jax.tree.leaves(params)
    layers = [s.layer for s in t.spec]
    ref = np.asarray(t.apply(params, x))
    cuts = find_cuts(t)
    assert [c.bottleneck for c in cuts] == [True] * len(cuts) and len(cuts) == 2
    for cut in cuts:
        n = cut.features
        fused = fuse(cut, leaves, leaves, layers, (jnp.eye(n), jnp.zeros(n)))
        for a, b in zip(fused, leaves, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        stitched = jax.tree.unflatten(t.treedef, fused)
        assert config_for_params(t.config, stitched) == t.config
        np.testing.assert_array_equal(np.asarray(t.apply(stitched, x)), ref)


def _back_with(target, params, x, layer_index: int, h):
    """Logits of `target` whose `layer_index`-th dense contraction reads `h` instead of its
    own activation (an evaluation independent of the fused kernel)."""
    leaves = jax.tree.leaves(params)
    avals = [jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in leaves]
    closed = jax.make_jaxpr(apply_on_leaves(target))(avals, jax.ShapeDtypeStruct(x.shape, x.dtype))
    seen = [0]

    def replace(eqn, invals):
        if eqn.primitive.name != "dot_general":
            return None
        seen[0] += 1
        if seen[0] - 1 != layer_index:
            return None
        return jaxpr_lib.bind(eqn, [h, invals[1]])

    return jaxpr_lib.evaluate(closed, [*leaves, x], replace=replace)[0]


def test_stitched_network_is_the_composition_and_round_trips(family, digits, tmp_path):
    assert len(family.candidates) == 2 + 2 * 2  # anchors + 2 ordered pairs x 2 cuts
    for g in family.groups:  # training moved the stitches, never outside their blocks
        s = np.asarray(family.stitch_params[str(g.cut.layer)]["s"])
        assert not np.allclose(s, family.trained_from[str(g.cut.layer)])
        assert np.all(s[g.mask == 0] == 0)
    # frozen training keeps the anchors; joint training (SN-Net) moves them, in their shapes
    tuned = [np.asarray(a) for a in jax.tree.leaves([a.params for a in family.anchors])]
    assert all(np.array_equal(a, b) for a, b in zip(family.given, family.frozen, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(family.given, tuned, strict=True))
    assert [a.shape for a in tuned] == [a.shape for a in family.given]
    acc = family.evaluate()
    assert acc.shape == (6,) and np.all((acc >= 0) & (acc <= 1))
    x = jnp.asarray(digits.x_test[:16])
    acts = [cut_activations(a.target, a.params, x, [1, 2]) for a in family.anchors]
    padded = family.logits(x)  # every network, vmapped per cut on zero-padded anchors
    for k, a in enumerate(family.anchors):  # the padding of the tuned anchors stayed zero
        want = np.asarray(a.target.apply(a.params, x))
        np.testing.assert_allclose(np.asarray(padded[k]), want, rtol=1e-4, atol=1e-4)
    for k, cand in enumerate(family.stitched, start=family.num_anchors):
        back = family.anchors[cand.back]
        s, c = family.stitch(k)
        h = acts[cand.front][cand.layer]
        want = _back_with(back.target, back.params, x, cand.layer, h @ s + c[None, :])
        got = cand.target.apply(family.params_of(k), x)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(padded[k]), np.asarray(got), rtol=1e-4, atol=1e-4)
    # the best network within a budget, exported and reloaded, computes the same function
    budget = family.anchors[-1].flops
    target, params = family.best(budget)
    assert family.choose(budget)["flops"] <= budget
    path = formats.save_safetensors(target, params, tmp_path / "best.safetensors")
    again = formats.read_target(path)
    loaded = formats.load_safetensors(again, path)
    np.testing.assert_array_equal(np.asarray(again.apply(loaded, x)), target.apply(params, x))
    front = family.frontier()
    assert all(
        a["val_accuracy"] < b["val_accuracy"] for a, b in zip(front, front[1:], strict=False)
    )
    assert operating_points(front, 0.05)[0] == front[0]


def test_networks_are_chosen_on_the_held_out_validation_split(family, digits):
    """The stitches train on the training split less a stratified validation split, and
    `choose` picks by validation accuracy (the cheapest of equals), never by test accuracy."""
    x_val, y_val = family.validation
    assert len(family.dataset.y_train) + len(y_val) == len(digits.y_train)
    assert np.bincount(y_val, minlength=10).min() > 0
    train_rows = {r.tobytes() for r in family.dataset.x_train.reshape(-1, 64)}
    assert not any(r.tobytes() in train_rows for r in x_val.reshape(-1, 64))
    family.evaluate()
    np.testing.assert_array_equal(family.val_accuracy, family.evaluate(x_val, y_val))
    points = family.points()
    for budget in sorted({p["flops"] for p in points}):
        fits = [p for p in points if p["flops"] <= budget]
        want = max(fits, key=lambda p: (p["val_accuracy"], -p["flops"]))
        assert family.choose(budget)["index"] == want["index"]
    with pytest.raises(WeightspaceError, match="validation"):
        stitch_family(
            [(a.name, a.target, a.params) for a in family.anchors],
            digits,
            validation=(x_val[:, :4], y_val),
            progress=False,
        )


def test_pairs_choose_which_anchors_are_stitched(digits):
    anchors = [(f"mlp{w}", *_mlp(w)) for w in (4, 6, 8)]
    counts = {}
    for pairs in ("all", "ascending", "nearest"):
        fam = stitch_family(anchors, digits, sample_size=64, pairs=pairs, progress=False)
        got = {(fam.anchors[c.front].name, fam.anchors[c.back].name) for c in fam.stitched}
        counts[pairs] = got
    assert len(counts["all"]) == 6
    assert counts["ascending"] == {("mlp4", "mlp6"), ("mlp4", "mlp8"), ("mlp6", "mlp8")}
    assert counts["nearest"] == {("mlp4", "mlp6"), ("mlp6", "mlp8")}
    with pytest.raises(WeightspaceError, match="pairs must be one of"):
        stitch_family(anchors, digits, pairs="sideways", progress=False)


def test_least_squares_stitch_reduces_the_mismatch(family, digits):
    a, b = family.anchors
    x = jnp.asarray(digits.x_train[:128])
    ha = cut_activations(a.target, a.params, x, [1, 2])[1]
    hb = cut_activations(b.target, b.params, x, [1, 2])[1]
    rows_a, rows_b = features_matrix(ha, 1), features_matrix(hb, 1)

    def mismatch(s, c):
        return float(jnp.mean((rows_a @ s + c[None, :] - rows_b) ** 2))

    s, c = least_squares_stitch(ha, hb, 1, bias=True, ridge=0.0)
    pad = jnp.eye(ha.shape[1], hb.shape[1])  # the narrow anchor's units onto the first ones
    rand = jax.random.normal(jax.random.key(0), s.shape) / np.sqrt(s.shape[0])
    best = mismatch(s, c)
    assert best < mismatch(pad, jnp.zeros_like(c))
    assert best < mismatch(rand, jnp.zeros_like(c))
    assert best <= mismatch(s, jnp.zeros_like(c)) and best <= mismatch(s * 1.01, c)


@pytest.mark.parametrize(
    "argv",
    [
        ["--zoo", "{tmp}/missing", "--zoo", "{tmp}/missing2"],
        ["--zoo", "{tmp}/one"],
        ["--zoo", "{tmp}/a", "--zoo", "{tmp}/b", "--budget-flops", "-3"],
        ["--zoo", "{tmp}/a", "--zoo", "{tmp}/b", "--pairs", "sideways"],
        ["--zoo", "{tmp}/a", "--zoo", "{tmp}/b", "--validation-fraction", "1.5"],
    ],
)
def test_cli_bad_input_exits_2(argv, tmp_path, capsys):
    (tmp_path / "one").mkdir()
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--budget-flops" not in argv:
        argv += ["--budget-flops", "1e4"]
    assert main(["stitch", *argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("weightspace: error:") and len(err.splitlines()) == 1
