"""PyTorch `state_dict` layout: import, export and a NumPy reference forward pass.

The reference reads the torch layout directly (Linear weight `[out, in]`, Conv weight
`[out, in, *kernel]` on NCHW / NCL inputs, BatchNorm running statistics) and is written
without JAX, so it checks our kernel transposes and our reading of the state_dict keys.

Padding: our convolutions use 'SAME' padding in the XLA/TensorFlow convention: per spatial
axis, total padding ``max((ceil(n / s) - 1) * s + k - n, 0)``, split ``low = total // 2``,
``high = total - low``. With stride 1 and an odd kernel that is PyTorch's symmetric
``padding=k // 2``; with stride 2 and an even input it is asymmetric (e.g. k=3, n=8: low 0,
high 1), which `torch.nn.Conv2d(padding=...)` cannot express: a PyTorch port of a strided
CNN2d/CNN1d needs an explicit ``F.pad(x, (low, high, ...))`` before a ``padding=0`` conv.
The reference below follows the XLA convention.
"""

import re

import chex
import jax
import numpy as np
import pytest

from hyper import population as pop_ops

EPS = 1e-5  # nnx.BatchNorm and torch.nn.BatchNorm2d default epsilon


# --- NumPy reference (torch layout, float64) --------------------------------------------


def same_pads(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv(x, w, b, stride):
    """Cross-correlation of `x` `[B, C, *S]` with torch weight `w` `[O, C, *K]`, SAME padding."""
    nd = w.ndim - 2
    spatial = x.shape[2:]
    pads = [same_pads(spatial[i], w.shape[2 + i], stride) for i in range(nd)]
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    out = [-(-spatial[i] // stride) for i in range(nd)]
    y = np.zeros((x.shape[0], w.shape[0], *out))
    for offs in np.ndindex(*w.shape[2:]):
        window = tuple(
            slice(o, o + stride * (m - 1) + 1, stride) for o, m in zip(offs, out, strict=True)
        )
        patch = xp[(slice(None), slice(None), *window)]  # [B, C, *out]
        y += np.einsum("bc...,oc->bo...", patch, w[(slice(None), slice(None), *offs)])
    if b is not None:
        y += b.reshape(1, -1, *[1] * nd)
    return y


def batchnorm(x, sd, name):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = sd[f"{name}.running_mean"].reshape(shape)
    var = sd[f"{name}.running_var"].reshape(shape)
    w, b = sd[f"{name}.weight"].reshape(shape), sd[f"{name}.bias"].reshape(shape)
    return (x - mean) / np.sqrt(var + EPS) * w + b


def relu(x):
    return np.maximum(x, 0.0)


def linear(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def ref_mlp(sd, x, num_layers):
    h = x.reshape(x.shape[0], -1)
    for i in range(num_layers):
        h = linear(h, sd, f"layers.{i}")
        if i < num_layers - 1:
            h = relu(h)
    return h


def ref_cnn(sd, x, num_convs):
    h = x[:, None]  # [B, 1, *S]: one input channel
    for i in range(num_convs):
        stride = 1 if i == 0 else 2  # the architectures' default strides
        h = relu(conv(h, sd[f"convs.{i}.weight"], sd[f"convs.{i}.bias"], stride))
    h = h.mean(axis=tuple(range(2, h.ndim)))
    return linear(h, sd, "dense")


def ref_rescnn(sd, x, num_blocks):
    h = relu(batchnorm(conv(x[:, None], sd["stem.weight"], None, 1), sd, "stem_bn"))
    for i in range(num_blocks):
        p = f"blocks.{i}"
        r = relu(batchnorm(conv(h, sd[f"{p}.conv1.weight"], None, 1), sd, f"{p}.bn1"))
        h = relu(h + batchnorm(conv(r, sd[f"{p}.conv2.weight"], None, 1), sd, f"{p}.bn2"))
    return linear(h.mean(axis=(2, 3)), sd, "dense")


# --- the PyTorch modules' state_dict shapes, written out by hand ------------------------


def torch_shapes(name):
    if name == "mlp_target":  # Linear(64, 16), Linear(16, 10)
        return {
            "layers.0.weight": (16, 64),
            "layers.0.bias": (16,),
            "layers.1.weight": (10, 16),
            "layers.1.bias": (10,),
        }
    if name == "cnn2d_rect_target":  # Conv2d(1,3,3) Conv2d(3,4,3,s2) Conv2d(4,5,3,s2) Linear(5,6)
        return {
            "convs.0.weight": (3, 1, 3, 3),
            "convs.0.bias": (3,),
            "convs.1.weight": (4, 3, 3, 3),
            "convs.1.bias": (4,),
            "convs.2.weight": (5, 4, 3, 3),
            "convs.2.bias": (5,),
            "dense.weight": (6, 5),
            "dense.bias": (6,),
        }
    if name == "cnn1d_target":  # Conv1d(1,3,5) Conv1d(3,4,5,s2) Linear(4,10)
        return {
            "convs.0.weight": (3, 1, 5),
            "convs.0.bias": (3,),
            "convs.1.weight": (4, 3, 5),
            "convs.1.bias": (4,),
            "dense.weight": (10, 4),
            "dense.bias": (10,),
        }
    if name == "rescnn_target":  # stem Conv2d(1,4,3,bias=False)+BN, 1 block, Linear(4,10)
        out = {"stem.weight": (4, 1, 3, 3)}
        bns = ["stem_bn", "blocks.0.bn1", "blocks.0.bn2"]
        for bn in bns:
            out |= {f"{bn}.{k}": (4,) for k in ("weight", "bias", "running_mean", "running_var")}
            out[f"{bn}.num_batches_tracked"] = ()
        out |= {"blocks.0.conv1.weight": (4, 4, 3, 3), "blocks.0.conv2.weight": (4, 4, 3, 3)}
        return out | {"dense.weight": (10, 4), "dense.bias": (10,)}
    raise KeyError(name)


REFERENCES = {
    "mlp_target": lambda sd, x: ref_mlp(sd, x, 2),
    "cnn2d_rect_target": lambda sd, x: ref_cnn(sd, x, 3),
    "cnn1d_target": lambda sd, x: ref_cnn(sd, x, 2),
    "rescnn_target": lambda sd, x: ref_rescnn(sd, x, 1),
}
NAMES = list(REFERENCES)


def random_state_dict(name, seed, lead=()):
    """A random torch-layout state_dict (float32), `lead` extra leading axes on each array."""
    rng = np.random.default_rng(seed)
    sd = {}
    for k, shape in torch_shapes(name).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = np.asarray(rng.integers(0, 100), np.int64)  # scalar even when batched
        elif k.endswith("running_var"):
            sd[k] = rng.uniform(0.3, 3.0, lead + shape).astype(np.float32)
        elif k.endswith("running_mean"):
            sd[k] = rng.normal(0.0, 0.5, lead + shape).astype(np.float32)
        else:
            sd[k] = (0.5 * rng.standard_normal(lead + shape)).astype(np.float32)
    return sd


def as64(sd):
    return {k: np.asarray(v, np.float64) for k, v in sd.items()}


def test_same_padding_matches_jax_convention():
    """The reference's padding equals what jax.lax uses for 'SAME' (asymmetric at stride 2)."""
    assert same_pads(8, 3, 2) == (0, 1) and same_pads(40, 5, 2) == (1, 2)
    assert same_pads(9, 3, 2) == (1, 1) and same_pads(8, 3, 1) == (1, 1)
    rng = np.random.default_rng(0)
    for n, k, s in [(8, 3, 2), (9, 3, 2), (40, 5, 2), (7, 3, 1)]:
        x = rng.standard_normal((2, 3, n)).astype(np.float32)
        w = rng.standard_normal((4, 3, k)).astype(np.float32)
        ours = jax.lax.conv_general_dilated(x, w, (s,), "SAME")  # NCH / OIH, like torch
        np.testing.assert_allclose(ours, conv(x, w, None, s), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_import_matches_numpy_reference(name, request):
    t = request.getfixturevalue(name)
    sd = random_state_dict(name, 1)
    params = pop_ops.from_torch_state_dict(t, sd)
    x = np.random.default_rng(2).standard_normal((3, *t.input_shape)).astype(np.float32)
    expect = REFERENCES[name](as64(sd), x.astype(np.float64))
    np.testing.assert_allclose(t.apply(params, x), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_export_import_roundtrip_exact(name, request):
    t = request.getfixturevalue(name)
    sd = random_state_dict(name, 3)
    params = pop_ops.from_torch_state_dict(t, sd)
    out = pop_ops.to_torch_state_dict(t, params)
    expected_keys = {k for k in sd if not k.endswith("num_batches_tracked")}
    assert set(out) == expected_keys
    for k in expected_keys:
        assert out[k].shape == sd[k].shape and out[k].dtype == np.float32, k
        np.testing.assert_array_equal(out[k], sd[k], err_msg=k)
    again = pop_ops.from_torch_state_dict(t, out)
    chex.assert_trees_all_equal(again, params)


@pytest.mark.parametrize("name", ["cnn2d_rect_target", "rescnn_target"])
def test_batched_import_export(name, request):
    t = request.getfixturevalue(name)
    n = 3
    sd = random_state_dict(name, 4, lead=(n,))
    pop = pop_ops.from_torch_state_dict(t, sd, batched=True)
    assert t.validate(pop, batched=True) == n
    x = np.random.default_rng(5).standard_normal((3, *t.input_shape)).astype(np.float32)
    ys = t.apply_population(pop, x)
    for i in range(n):
        member = {k: v if v.ndim == 0 else v[i] for k, v in sd.items()}
        expect = REFERENCES[name](as64(member), x.astype(np.float64))
        np.testing.assert_allclose(ys[i], expect, rtol=1e-4, atol=1e-4)
    out = pop_ops.to_torch_state_dict(t, pop, batched=True)
    for k, v in out.items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
    # Member i of the batched export is the single-target export of member i.
    single = pop_ops.to_torch_state_dict(t, pop_ops.unstack(pop)[1])
    for k, v in single.items():
        np.testing.assert_array_equal(v, out[k][1], err_msg=k)


def test_key_map(rescnn_target, linen_bn_target):
    keys = pop_ops.torch_key_map(rescnn_target)
    assert keys["stem/kernel"] == "stem.weight"
    assert keys["blocks/0/bn2/scale"] == "blocks.0.bn2.weight"
    assert keys["blocks/0/bn2/mean"] == "blocks.0.bn2.running_mean"
    assert set(keys.values()) == {
        k for k in torch_shapes("rescnn_target") if not k.endswith("num_batches_tracked")
    }
    # Linen: the collections are not part of the torch key.
    assert pop_ops.torch_key_map(linen_bn_target) == {
        "params/Conv_0/kernel": "Conv_0.weight",
        "params/Conv_0/bias": "Conv_0.bias",
        "params/BatchNorm_0/scale": "BatchNorm_0.weight",
        "params/BatchNorm_0/bias": "BatchNorm_0.bias",
        "batch_stats/BatchNorm_0/mean": "BatchNorm_0.running_mean",
        "batch_stats/BatchNorm_0/var": "BatchNorm_0.running_var",
        "params/Dense_0/kernel": "Dense_0.weight",
        "params/Dense_0/bias": "Dense_0.bias",
    }


def test_custom_key_map(mlp_target):
    sd = random_state_dict("mlp_target", 6)
    renamed = {k.replace("layers.", "fc"): v for k, v in sd.items()}
    key_map = {p: k.replace("layers.", "fc") for p, k in pop_ops.torch_key_map(mlp_target).items()}
    a = pop_ops.from_torch_state_dict(mlp_target, renamed, key_map=key_map)
    chex.assert_trees_all_equal(a, pop_ops.from_torch_state_dict(mlp_target, sd))
    partial = dict(list(key_map.items())[:-1])
    with pytest.raises(ValueError, match="key_map has no entry for"):
        pop_ops.from_torch_state_dict(mlp_target, renamed, key_map=partial)


def test_bad_state_dicts(rescnn_target):
    t = rescnn_target
    sd = random_state_dict("rescnn_target", 7)
    wrong = dict(sd)
    wrong["stem.weight"] = np.zeros((4, 1, 5, 5), np.float32)
    msg = re.escape(
        "'stem.weight' (our 'stem/kernel') has shape (4, 1, 5, 5), expected (4, 1, 3, 3)"
    )
    with pytest.raises(ValueError, match=msg):
        pop_ops.from_torch_state_dict(t, wrong)
    # An [in, out] (JAX-layout) dense weight is caught by its shape.
    wrong = dict(sd, **{"dense.weight": sd["dense.weight"].T})
    with pytest.raises(
        ValueError,
        match=re.escape("'dense.weight' (our 'dense/kernel') has shape (4, 10), expected (10, 4)"),
    ):
        pop_ops.from_torch_state_dict(t, wrong)
    renamed = {k.replace("stem_bn.", "bn0."): v for k, v in sd.items()}
    with pytest.raises(
        ValueError, match=r"missing keys \['stem_bn.bias'.*unexpected keys \['bn0.bias'"
    ):
        pop_ops.from_torch_state_dict(t, renamed)
    with pytest.raises(ValueError, match=r"has shape \(4,\), expected \(targets,\) \+ \(4,\)"):
        pop_ops.from_torch_state_dict(t, sd, batched=True)
    with pytest.raises(TypeError, match="expected a mapping"):
        pop_ops.from_torch_state_dict(t, list(sd.items()))
    # Export validates first, naming the leaf.
    with pytest.raises(ValueError, match="missing leaves"):
        pop_ops.to_torch_state_dict(t, {"stem": {"kernel": np.zeros((3, 3, 1, 4), np.float32)}})
