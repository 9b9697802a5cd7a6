"""PLeaS merging (`hyper.pleas`): side by side it is the ensemble, fully merged with itself
it is the model, in between it gives runnable wider targets, and bad input is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper import align, symmetry
from hyper.architectures import make_target
from hyper.errors import WeightspaceError
from hyper.pleas import pleas_merge
from hyper.target import Target


def _flatten_cnn() -> Target:
    """conv -> relu -> 2x2 average pool -> flatten -> dense -> relu -> dense: the flatten
    makes the conv channels a strided sub-axis of the first dense kernel's rows."""

    def apply(p, x):
        h = jax.lax.conv_general_dilated(
            x[..., None],
            p["conv"]["kernel"],
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        h = jax.nn.relu(h + p["conv"]["bias"][None, None, None, :])
        h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(h @ p["fc"]["kernel"] + p["fc"]["bias"][None, :])
        return h @ p["out"]["kernel"] + p["out"]["bias"][None, :]

    tmpl = {
        "conv": {"kernel": jnp.zeros((3, 3, 1, 4)), "bias": jnp.zeros(4)},
        "fc": {"kernel": jnp.zeros((64, 6)), "bias": jnp.zeros(6)},
        "out": {"kernel": jnp.zeros((6, 10)), "bias": jnp.zeros(10)},
    }
    return Target.from_function(apply, tmpl, sample_input=jnp.zeros((2, 8, 8)), name="flat-cnn")


def _init(t: Target, seed: int):
    """LeCun-normal kernels and small random biases, on the host (no init program)."""
    rng = np.random.default_rng(seed)
    leaves = [
        rng.standard_normal(s.shape) / np.sqrt(s.fan_in if s.role == "kernel" else 10)
        for s in t.spec
    ]
    return jax.tree.unflatten(t.treedef, [jnp.asarray(v, jnp.float32) for v in leaves])


@pytest.fixture(scope="module")
def nets():
    x = jax.random.normal(jax.random.key(1), (96, 8, 8))
    x_new = jax.random.normal(jax.random.key(2), (32, 8, 8))
    out = {}
    for t in (
        make_target("mlp", input_shape=(8, 8), widths=(8, 8), out_features=10),
        _flatten_cnn(),
    ):
        out[t.name] = (t, _init(t, 0), _init(t, 3))
    return out, x, x_new


def _mlp(nets):
    return next(v for k, v in nets[0].items() if k.startswith("mlp"))


@pytest.mark.parametrize("which", ["mlp", "flat-cnn"])
def test_side_by_side_is_the_mean_of_the_logits(nets, which):
    (t, pa, pb), x, x_new = next(v for k, v in nets[0].items() if k.startswith(which)), *nets[1:]
    inputs = "merged" if which == "mlp" else "original"
    mt, mp = pleas_merge(t, pa, pb, x, width=2.0, inputs=inputs)
    for g_old, g_new in zip(
        symmetry.structural_groups(t), symmetry.structural_groups(mt), strict=True
    ):
        assert g_new.size == 2 * g_old.size
    for xs in (x, x_new):  # the function, not only the fitted sample
        mean = 0.5 * (t.apply(pa, xs) + t.apply(pb, xs))
        np.testing.assert_allclose(mt.apply(mp, xs), mean, atol=1e-4)


def test_fully_merged_with_itself_is_the_model(nets):
    t, pa, _ = _mlp(nets)
    x, x_new = nets[1:]
    for inputs in ("merged", "original"):
        mt, mp = pleas_merge(t, pa, pa, x, width=1.0, inputs=inputs)
        assert mt is t
        np.testing.assert_allclose(t.apply(mp, x_new), t.apply(pa, x_new), atol=1e-4)
        for a, b in zip(jax.tree.leaves(mp), jax.tree.leaves(pa), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_least_squares_fits_the_logits_better_than_rebasin_averaging(nets):
    # At 1.0x the partial merge is the average after activation matching; the last
    # layer's fit (on the merged network's own features) can only lower its error on x.
    t, pa, pb = _mlp(nets)
    x = nets[1]
    mean = 0.5 * (t.apply(pa, x) + t.apply(pb, x))
    _, mp = pleas_merge(t, pa, pb, x, width=1.0)
    pb_aligned = symmetry.permute(t, pb, align.activation_matching(t, pa, pb, x))
    avg = jax.tree.map(lambda u, v: 0.5 * (u + v), pa, pb_aligned)
    err_pleas = float(jnp.mean((t.apply(mp, x) - mean) ** 2))
    err_avg = float(jnp.mean((t.apply(avg, x) - mean) ** 2))
    assert err_pleas < 0.9 * err_avg


def test_widths_in_between_give_runnable_wider_targets(nets):
    t, pa, pb = _mlp(nets)
    x, x_new = nets[1:]
    groups = symmetry.structural_groups(t)
    for width, sizes in (([1.25, 2.0], [10, 16]), ({groups[1].name: 1.5}, [8, 12])):
        mt, mp = pleas_merge(t, pa, pb, x, width=width, inputs="original")
        assert [g.size for g in symmetry.structural_groups(mt)] == sizes
        mt.validate(mp)
        y = mt.apply(mp, x_new)
        assert y.shape == (len(x_new), 10) and bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0.5}, "from 1.0"),
        ({"width": 2.5}, "from 1.0"),
        ({"width": "wide"}, "from 1.0"),
        ({"width": [1.5]}, "1 widths for the 2 groups"),
        ({"width": {"nope": 1.5}}, "nope"),
        ({"matching": "sinkhorn"}, "matching"),
        ({"inputs": "teacher"}, "inputs"),
    ],
)
def test_bad_options_are_refused(nets, kwargs, match):
    t, pa, pb = _mlp(nets)
    with pytest.raises(WeightspaceError, match=match):
        pleas_merge(t, pa, pb, nets[1], **kwargs)


def test_networks_outside_the_fit_are_refused(nets):
    vit = make_target(
        "transformer",
        input_shape=(8, 8),
        patch_size=(4, 4),
        width=8,
        depth=1,
        heads=2,
        head_dim=4,
        mlp_dim=8,
        out_features=10,
    )
    p = _init(vit, 0)
    with pytest.raises(WeightspaceError, match="role 'norm_.*not supported"):
        pleas_merge(vit, p, p, nets[1], width=1.5)
