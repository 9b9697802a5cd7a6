"""The transformer presets (`digits-vit`, `mnist1d-transformer`): leaf shapes, the function
they compute, the config round trip through checkpoints (`target_from_config`,
`config_for_params`, narrower blocks included), clear errors, and one short zoo build of
`digits-vit` that trains it to a useful test accuracy."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper import data, zoo
from hyper.architectures import config_for_params, make_target, target_from_config
from hyper.cli import main
from hyper.errors import WeightspaceError

PRESETS = {"digits-vit": (8, 8), "mnist1d-transformer": (40,)}


def _random_params(target, seed):
    """Random weights for every leaf, on the host (compiling the Flax initialiser of every
    target would dominate this file)."""
    rng = np.random.default_rng(seed)
    leaves = [(0.3 * rng.standard_normal(s.shape)).astype(s.dtype) for s in target.spec]
    return jax.tree.unflatten(target.treedef, leaves)


def _preset_target(name):
    p = zoo.PRESETS[name]
    cfg = {k: v for k, v in p.arch.items() if k != "arch"}
    return make_target(p.arch["arch"], input_shape=PRESETS[name], activation="gelu", **cfg)


@pytest.fixture(scope="module", params=sorted(PRESETS))
def preset(request):
    """(preset name, its target), built once per module."""
    return request.param, _preset_target(request.param)


def test_preset_leaves_and_function(preset):
    name, t = preset
    assert zoo.PRESETS[name].dataset == name.split("-")[0]
    shapes = {s.path: s.shape for s in t.spec}
    tokens = 16 if name == "digits-vit" else 40
    patch = (2, 2, 1, 32) if name == "digits-vit" else (1, 1, 32)
    assert shapes["patch/kernel"] == patch and shapes["pos"] == (tokens, 32)
    for b in (0, 1):
        for qkv in ("query", "key", "value"):
            assert shapes[f"blocks/{b}/attn/{qkv}/kernel"] == (32, 2, 16)
        assert shapes[f"blocks/{b}/attn/out/kernel"] == (2, 16, 32)
        assert shapes[f"blocks/{b}/mlp1/kernel"] == (32, 64)
        assert shapes[f"blocks/{b}/norm1/scale"] == (32,)
    assert shapes["head/kernel"] == (32, 10) and len(shapes) == 39
    params = _random_params(t, 0)
    x = np.random.default_rng(0).standard_normal((5, *PRESETS[name]), np.float32)
    y = np.asarray(t.apply(params, x))
    assert y.shape == (5, 10) and np.isfinite(y).all() and np.ptp(y, 0).max() > 1e-3
    # The learned position embedding is used: moving a token changes the output.
    flat = x.reshape(5, -1)
    rolled = np.roll(flat, PRESETS[name][-1] if name == "digits-vit" else 1, axis=1)
    assert np.abs(np.asarray(t.apply(params, rolled.reshape(x.shape))) - y).max() > 1e-3
    if name == "digits-vit":  # a channel axis of size 1 is accepted as well
        np.testing.assert_allclose(t.apply(params, x[..., None]), y, rtol=1e-5, atol=1e-6)


def test_config_round_trip(preset):
    name, t = preset
    again = target_from_config(json.loads(json.dumps(t.config)))
    assert again.spec == t.spec and again.treedef == t.treedef and again.name == t.name
    params = _random_params(t, 1)
    assert config_for_params(t.config, params) == t.config
    x = jnp.ones((2, *PRESETS[name]))
    np.testing.assert_array_equal(again.apply(params, x), t.apply(params, x))


def test_config_for_params_reads_narrower_blocks():
    """A network whose blocks lost whole heads or MLP units (as after pruning) is rebuilt
    from the sizes in its kernels, one entry per block. Fewer residual units or head dims
    give no config: the compact model keeps the original's LayerNorm statistics and
    attention scale, which a narrower `Transformer` would not."""
    base = make_target("transformer", input_shape=(8, 8), patch_size=(2, 2), out_features=10)

    def narrow(**kw):
        cfg = dict(width=32, heads=[2, 1], head_dim=16, mlp_dim=[64, 40])
        cfg.update(kw)
        t = make_target(
            "transformer", input_shape=(8, 8), patch_size=(2, 2), out_features=10, **cfg
        )
        return t, _random_params(t, 0)

    t, params = narrow()
    cfg = config_for_params(base.config, params)
    assert cfg is not None
    assert cfg == {**base.config, "heads": [2, 1], "head_dim": 16, "mlp_dim": [64, 40]}
    rebuilt = target_from_config(cfg)
    assert [s.shape for s in rebuilt.spec] == [s.shape for s in t.spec]
    assert config_for_params(base.config, narrow(width=24)[1]) is None
    assert config_for_params(base.config, narrow(head_dim=[16, 12])[1]) is None
    assert config_for_params(base.config, {"blocks": {}}) is None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"patch_size": (3, 3)}, "does not tile the input"),
        ({"patch_size": (2,)}, "does not match patch_size"),
        ({"patch_size": (2, 2), "heads": 3}, "not divisible by heads"),
        ({"patch_size": (2, 2), "mlp_dim": [8, 8, 8]}, "mlp_dim must be a positive int or 2"),
        ({"patch_size": (2, 2), "in_channels": 3}, "in_channels 3"),
        ({"patch_size": (2, 2), "depth": 0}, "depth must be positive"),
        ({"patch_size": (2, 2), "heads": [2, 0]}, "heads must be positive"),
        ({}, "missing config 'patch_size'"),
        ({"patch_size": (2, 2), "widths": [3]}, "unknown config keys"),
    ],
)
def test_transformer_config_errors(kw, match):
    with pytest.raises(WeightspaceError, match=match):
        make_target("transformer", input_shape=(8, 8), out_features=10, **kw)


def test_cli_offers_the_presets(capsys, tmp_path):
    assert main(["zoo", "--preset", "imagenet-vit", "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert "'digits-vit'" in err and "'mnist1d-transformer'" in err


def test_digits_vit_zoo_trains(tmp_path):
    """A tiny zoo of the preset (2 seeds, 8 epochs): every member reaches a useful test
    accuracy (measured 0.85-0.91), and the zoo reloads with the preset's target."""
    z = zoo.build(
        tmp_path / "vit",
        "digits-vit",
        grid={
            "learning_rate": [3e-3],
            "weight_decay": [0.0],
            "train_fraction": [1.0],
        },
        seeds=[0, 1],
        epochs=8,
        checkpoint_epochs=[0],
        progress=False,
    )
    assert z.num_members == 2 and len(z.groups) == 1
    final, start = z.rows(), z.rows(0)
    assert all(r["test_acc"] > 0.8 for r in final), [r["test_acc"] for r in final]
    assert all(r["test_acc"] < 0.3 for r in start)
    g = zoo.load(z.directory).groups[0]
    assert g.target.config["arch"] == "transformer"
    assert g.target.spec == _preset_target("digits-vit").spec
    digits = data.load("digits")
    logits = g.target.apply_population(g.params, jnp.asarray(digits.x_test))
    acc = (np.argmax(np.asarray(logits), -1) == digits.y_test[None]).mean(1)
    np.testing.assert_allclose(acc, [r["test_acc"] for r in final], atol=1e-6)


@pytest.mark.parametrize(("name", "shape"), [("digits-cnn", (8, 8)), ("mnist1d-cnn", (40,))])
def test_cnn_presets_pad_symmetrically_and_old_configs_rebuild_as_same(name, shape):
    """The CNN presets record ``padding="SYMMETRIC"`` (PyTorch's ``padding=k // 2``; the
    traced convolutions pad equally on both sides); a config stored before (no
    ``padding`` key) rebuilds with XLA's 'SAME', asymmetric at stride 2 on even sizes, and
    its config now records that. The structural groups of the new presets are found and
    verified numerically (align, prune and graphs build on them; bench/prune_speed.py)."""
    from hyper.torch_layout import padding_warning

    cfg = {**zoo.PRESETS[name].arch, "input_shape": list(shape), "activation": "relu"}
    new = target_from_config(json.loads(json.dumps(cfg)))
    old = target_from_config({k: v for k, v in cfg.items() if k != "padding"})
    assert new.config["padding"] == "SYMMETRIC" and old.config["padding"] == "SAME"
    assert target_from_config(json.loads(json.dumps(old.config))).config == old.config
    assert new.spec == old.spec and padding_warning(new) is None
    assert "'convs/1' pads" in padding_warning(old)
    params = _random_params(new, 2)
    x = np.random.default_rng(3).standard_normal((2, *shape)).astype(np.float32)
    assert np.abs(np.asarray(new.apply(params, x)) - np.asarray(old.apply(params, x))).max() > 1e-3
    with pytest.raises(WeightspaceError, match="padding must be one of"):
        make_target(**{**cfg, "padding": "same"})
    if name == "digits-cnn":  # an even kernel grows the map: no residual add
        with pytest.raises(WeightspaceError, match="residual layer cannot add"):
            make_target(**{**cfg, "kernel_size": 4, "strides": [1] * 3, "residual": True})
    # The structural analysis reads the explicit pads from the trace like 'SAME' ones.
    from hyper import symmetry

    assert len(symmetry.structural_groups(new)) == 3 and not symmetry.left_out(new)
    symmetry.verify_groups(new, jax.random.key(0))
