"""PyTorch `state_dict` layout: import, export and a NumPy reference forward pass.

The reference reads the torch layout directly (Linear weight `[out, in]`, Conv weight
`[out, in, *kernel]` on NCHW / NCL inputs, BatchNorm running statistics) and is written
without JAX, so it checks our kernel transposes and our reading of the state_dict keys.

Padding: the CNN fixtures here (`make_target` without ``padding``) use 'SAME' padding in
the XLA/TensorFlow convention: per spatial axis, total padding
``max((ceil(n / s) - 1) * s + k - n, 0)``, split ``low = total // 2``, ``high = total - low``.
With stride 1 and an odd kernel that is PyTorch's symmetric ``padding=k // 2``; with stride 2
and an even input it is asymmetric (e.g. k=3, n=8: low 0, high 1), which
`torch.nn.Conv2d(padding=...)` cannot express: a PyTorch port of a strided CNN2d/CNN1d needs
an explicit ``F.pad(x, (low, high, ...))`` before a ``padding=0`` conv, and exporting one
warns (`TorchPaddingWarning`, naming those pads). The reference `conv` follows the XLA
convention by default and PyTorch's ``padding=k // 2`` with ``padding="symmetric"`` (the
CNN presets: ``padding="SYMMETRIC"``, tests/test_hyper_formats.py).
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper import population as pop_ops
from hyper.target import Target
from hyper.torch_layout import TorchPaddingWarning, padding_warning, torch_layouts

EPS = 1e-5  # nnx.BatchNorm and torch.nn.BatchNorm2d default epsilon


# --- NumPy reference (torch layout, float64) --------------------------------------------


def same_pads(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv(x, w, b, stride, padding="same"):
    """Cross-correlation of `x` `[B, C, *S]` with torch weight `w` `[O, C, *K]`: XLA's SAME
    padding, or (``"symmetric"``) PyTorch's ``padding=k // 2`` on both sides."""
    nd = w.ndim - 2
    spatial = x.shape[2:]
    if padding == "symmetric":
        pads = [(w.shape[2 + i] // 2,) * 2 for i in range(nd)]
    else:
        pads = [same_pads(spatial[i], w.shape[2 + i], stride) for i in range(nd)]
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    out = [(xp.shape[2 + i] - w.shape[2 + i]) // stride + 1 for i in range(nd)]
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


def ref_cnn(sd, x, num_convs, padding="same"):
    h = x[:, None]  # [B, 1, *S]: one input channel
    for i in range(num_convs):
        stride = 1 if i == 0 else 2  # the architectures' default strides
        h = relu(conv(h, sd[f"convs.{i}.weight"], sd[f"convs.{i}.bias"], stride, padding))
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
ASYMMETRIC = {"cnn2d_rect_target", "cnn1d_target"}  # strided 'SAME' on an even size


def export(name, t, params, **kw):
    """`to_torch_state_dict`, expecting the padding warning exactly for `ASYMMETRIC`."""
    if name not in ASYMMETRIC:
        return pop_ops.to_torch_state_dict(t, params, **kw)
    with pytest.warns(TorchPaddingWarning, match=r"F\.pad\(x, "):
        return pop_ops.to_torch_state_dict(t, params, **kw)


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


def test_padding_warning_names_the_asymmetric_convs(cnn2d_rect_target, rescnn_target):
    """Read from the trace: input 9x8, k=3, stride 2: H pads (1, 1), W pads (0, 1), so
    F.pad's last-axis-first tuple is (0, 1, 1, 1); then 5x4 -> the same. Stride-1 'SAME'
    with odd kernels (ResCNN) is symmetric: no warning."""
    note = padding_warning(cnn2d_rect_target)
    assert "'convs/1' pads [[1, 1], [0, 1]]" in note and "'convs/2' pads [[1, 1], [0, 1]]" in note
    assert note.count("F.pad(x, (0, 1, 1, 1))") == 2 and "'convs/0'" not in note
    assert "padding='SYMMETRIC'" in note
    assert padding_warning(rescnn_target) is None


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
    out = export(name, t, params)
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
    out = export(name, t, pop, batched=True)
    for k, v in out.items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
    # Member i of the batched export is the single-target export of member i.
    single = export(name, t, pop_ops.unstack(pop)[1])
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


# --- user networks: flatten, depthwise, attention, flat names (issue 28: D4, D5, D8) ----
#
# Each check: a random torch-layout state_dict imported and run by us equals the NumPy
# forward written in PyTorch's conventions (NCHW, ``x @ W.T``, C-H-W flatten, separate
# query/key/value/out Linear layers), and exporting the imported params gives the
# state_dict back bit for bit (so the export computes the same function in PyTorch).

LN_EPS = 1e-6  # nnx.LayerNorm's default epsilon


def maxpool2(x):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def grouped_conv(x, w, b, groups):
    """`conv` with ``groups`` (torch's ``Conv2d(groups=...)``, weight `[O, C/groups, *K]`)."""
    xs = np.split(x, groups, axis=1)
    ws, bs = np.split(w, groups, axis=0), np.split(b, groups)
    return np.concatenate([conv(a, v, c, 1) for a, v, c in zip(xs, ws, bs, strict=True)], 1)


def layernorm(x, sd, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def attention(x, sd, name, heads):
    """Multi-head self-attention with separate query/key/value/out `Linear` layers."""
    b, t, _ = x.shape

    def split(h):  # [B, T, H*hd] -> [B, H, T, hd]
        return h.reshape(b, t, heads, -1).transpose(0, 2, 1, 3)

    q, k, v = (split(linear(x, sd, f"{name}.{p}")) for p in ("query", "key", "value"))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    o = (att @ v).transpose(0, 2, 1, 3).reshape(b, t, -1)
    return linear(o, sd, f"{name}.out")


def patches(x):
    """[B, 8, 8] -> [B, 4, 16]: four 4x4 patches, row-major (the model does the same)."""
    b = x.shape[0]
    return x.reshape(b, 2, 4, 2, 4).transpose(0, 1, 3, 2, 4).reshape(b, 4, 16)


def ref_lenet(sd, x):
    h = maxpool2(relu(conv(x[:, None], sd["conv1.weight"], sd["conv1.bias"], 1)))
    h = maxpool2(relu(conv(h, sd["conv2.weight"], sd["conv2.bias"], 1)))
    h = h.reshape(h.shape[0], -1)  # torch.flatten of NCHW: C-H-W
    return linear(relu(linear(h, sd, "fc1")), sd, "fc2")


def ref_linen_cnn(sd, x):
    h = relu(conv(x[:, None], sd["Conv_0.weight"], sd["Conv_0.bias"], 1))
    b, c, hh, ww = h.shape
    h = h.reshape(b, c, hh // 2, 2, ww // 2, 2).mean(axis=(3, 5))  # avg_pool 2x2
    return linear(h.reshape(b, -1), sd, "Dense_0")


def ref_depthwise(sd, x):
    h = relu(conv(x[:, None], sd["c1.weight"], sd["c1.bias"], 1))
    h = maxpool2(relu(grouped_conv(h, sd["dw.weight"], sd["dw.bias"], 4)))
    return linear(h.reshape(h.shape[0], -1), sd, "fc")


def ref_vit(sd, x):
    h = linear(patches(x), sd, "proj") + sd["pos"]
    h = h + attention(layernorm(h, sd, "ln1"), sd, "attn", heads=2)
    h = h + linear(gelu_tanh(linear(layernorm(h, sd, "ln2"), sd, "mlp1")), sd, "mlp2")
    return linear(h.mean(1), sd, "head")


def ref_flat_mlp(sd, x):
    return linear(np.tanh(linear(x.reshape(x.shape[0], -1), sd, "w1")), sd, "w2")


def _user_targets():
    import flax.linen as linen
    from flax import nnx

    class LeNet(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(1, 3, (3, 3), rngs=rngs)
            self.conv2 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.fc1 = nnx.Linear(4 * 2 * 2, 6, rngs=rngs)
            self.fc2 = nnx.Linear(6, 10, rngs=rngs)

        def __call__(self, x):
            h = nnx.max_pool(jax.nn.relu(self.conv1(x[..., None])), (2, 2), (2, 2))
            h = nnx.max_pool(jax.nn.relu(self.conv2(h)), (2, 2), (2, 2))
            return self.fc2(jax.nn.relu(self.fc1(h.reshape(h.shape[0], -1))))

    class Depthwise(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.dw = nnx.Conv(4, 8, (3, 3), feature_group_count=4, rngs=rngs)
            self.fc = nnx.Linear(8 * 4 * 4, 10, rngs=rngs)

        def __call__(self, x):
            h = jax.nn.relu(self.c1(x[..., None]))
            h = nnx.max_pool(jax.nn.relu(self.dw(h)), (2, 2), (2, 2))
            return self.fc(h.reshape(h.shape[0], -1))

    class ViT(nnx.Module):
        def __init__(self, rngs):
            self.proj = nnx.Linear(16, 8, rngs=rngs)
            self.pos = nnx.Param(jnp.zeros((1, 4, 8)))
            self.ln1 = nnx.LayerNorm(8, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(
                num_heads=2, in_features=8, qkv_features=12, decode=False, rngs=rngs
            )
            self.ln2 = nnx.LayerNorm(8, rngs=rngs)
            self.mlp1 = nnx.Linear(8, 16, rngs=rngs)
            self.mlp2 = nnx.Linear(16, 8, rngs=rngs)
            self.head = nnx.Linear(8, 10, rngs=rngs)

        def __call__(self, x):
            b = x.shape[0]
            x = x.reshape(b, 2, 4, 2, 4).transpose(0, 1, 3, 2, 4).reshape(b, 4, 16)
            h = self.proj(x) + self.pos[...]
            h = h + self.attn(self.ln1(h))
            h = h + self.mlp2(jax.nn.gelu(self.mlp1(self.ln2(h))))
            return self.head(h.mean(1))

    class LinenCNN(linen.Module):  # the Flax tutorial's style: avg_pool, flatten
        @linen.compact
        def __call__(self, x):
            h = linen.relu(linen.Conv(4, (3, 3))(x[..., None]))
            h = linen.avg_pool(h, (2, 2), (2, 2))
            return linen.Dense(10)(h.reshape(h.shape[0], -1))

    def flat_mlp(p, x):
        h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"][None])
        return h @ p["w2"] + p["b2"][None]

    x = jnp.zeros((2, 8, 8))

    def abstract(cls):  # shapes only: no eager initialisation (the tests set the weights)
        return nnx.eval_shape(lambda: cls(nnx.Rngs(0)))

    flat = {"w1": jnp.zeros((64, 16)), "b1": jnp.zeros(16)}
    flat |= {"w2": jnp.zeros((16, 10)), "b2": jnp.zeros(10)}
    return {
        "lenet": Target.from_nnx(abstract(LeNet), sample_input=x),
        "depthwise": Target.from_nnx(abstract(Depthwise), sample_input=x),
        "linen_cnn": Target.from_linen(LinenCNN(), x),
        "vit": Target.from_nnx(abstract(ViT), sample_input=x),
        "flat_mlp": Target.from_function(flat_mlp, flat, sample_input=x),
    }


USER_TORCH_SHAPES = {
    "lenet": {  # Conv2d(1,3,3,p=1) Conv2d(3,4,3,p=1) Linear(16,6) Linear(6,10)
        "conv1.weight": (3, 1, 3, 3),
        "conv1.bias": (3,),
        "conv2.weight": (4, 3, 3, 3),
        "conv2.bias": (4,),
        "fc1.weight": (6, 16),
        "fc1.bias": (6,),
        "fc2.weight": (10, 6),
        "fc2.bias": (10,),
    },
    "linen_cnn": {  # Conv2d(1,4,3,p=1), AvgPool2d(2), Linear(64,10)
        "Conv_0.weight": (4, 1, 3, 3),
        "Conv_0.bias": (4,),
        "Dense_0.weight": (10, 64),
        "Dense_0.bias": (10,),
    },
    "depthwise": {  # Conv2d(1,4,3) Conv2d(4,8,3,groups=4) Linear(128,10)
        "c1.weight": (4, 1, 3, 3),
        "c1.bias": (4,),
        "dw.weight": (8, 1, 3, 3),
        "dw.bias": (8,),
        "fc.weight": (10, 128),
        "fc.bias": (10,),
    },
    "vit": {  # D=8, 2 heads of 6 (qkv 12): query/key/value Linear(8,12), out Linear(12,8)
        "proj.weight": (8, 16),
        "proj.bias": (8,),
        "pos": (1, 4, 8),
        "ln1.weight": (8,),
        "ln1.bias": (8,),
        "ln2.weight": (8,),
        "ln2.bias": (8,),
        "attn.query.weight": (12, 8),
        "attn.query.bias": (12,),
        "attn.key.weight": (12, 8),
        "attn.key.bias": (12,),
        "attn.value.weight": (12, 8),
        "attn.value.bias": (12,),
        "attn.out.weight": (8, 12),
        "attn.out.bias": (8,),
        "mlp1.weight": (16, 8),
        "mlp1.bias": (16,),
        "mlp2.weight": (8, 16),
        "mlp2.bias": (8,),
        "head.weight": (10, 8),
        "head.bias": (10,),
    },
    "flat_mlp": {"w1.weight": (16, 64), "w1.bias": (16,), "w2.weight": (10, 16), "w2.bias": (10,)},
}
USER_REFERENCES = {
    "lenet": ref_lenet,
    "depthwise": ref_depthwise,
    "linen_cnn": ref_linen_cnn,
    "vit": ref_vit,
    "flat_mlp": ref_flat_mlp,
}


@pytest.fixture(scope="module")
def user_targets():
    return _user_targets()


def random_user_state_dict(name, seed):
    rng = np.random.default_rng(seed)
    shapes = USER_TORCH_SHAPES[name]
    return {k: (0.4 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


@pytest.mark.parametrize("name", list(USER_REFERENCES))
def test_user_network_export_computes_the_same_function(name, user_targets):
    t = user_targets[name]
    keys = pop_ops.torch_key_map(t)
    layouts = torch_layouts(t)
    assert {keys[p]: lay.torch_shape for p, lay in layouts.items()} == USER_TORCH_SHAPES[name]
    sd = random_user_state_dict(name, 11)
    params = pop_ops.from_torch_state_dict(t, sd)
    x = np.random.default_rng(12).standard_normal((3, 8, 8)).astype(np.float32)
    expect = USER_REFERENCES[name](as64(sd), x.astype(np.float64))
    np.testing.assert_allclose(t.apply(params, x), expect, rtol=1e-5, atol=1e-5)
    out = pop_ops.to_torch_state_dict(t, params)
    for k in sd:
        np.testing.assert_array_equal(out[k], sd[k], err_msg=k)
    # A population: member i of the batched export is the export of member i.
    pop = jax.tree.map(lambda a: np.stack([a, -a]), params)
    both = pop_ops.to_torch_state_dict(t, pop, batched=True)
    for k in sd:
        np.testing.assert_array_equal(both[k][1], -sd[k], err_msg=k)
    back = pop_ops.from_torch_state_dict(t, both, batched=True)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, back), pop)


def test_flatten_rows_move_from_hwc_to_chw(user_targets):
    """The dense layer after a flatten: our rows are H-W-C, PyTorch's C-H-W."""
    t = user_targets["lenet"]
    p = pop_ops.from_torch_state_dict(t, random_user_state_dict("lenet", 2))
    k = np.asarray(p["fc1"]["kernel"])  # [(H, W, C) = (2, 2, 4), 6]
    want = k.reshape(2, 2, 4, 6).transpose(2, 0, 1, 3).reshape(16, 6).T
    np.testing.assert_array_equal(pop_ops.to_torch_state_dict(t, p)["fc1.weight"], want)


def test_attention_projections_export_as_linear(user_targets):
    t = user_targets["vit"]
    p = pop_ops.from_torch_state_dict(t, random_user_state_dict("vit", 3))
    sd = pop_ops.to_torch_state_dict(t, p)
    q = np.asarray(p["attn"]["query"]["kernel"])  # (D, H, hd) = (8, 2, 6)
    np.testing.assert_array_equal(sd["attn.query.weight"], q.reshape(8, 12).T)
    o = np.asarray(p["attn"]["out"]["kernel"])  # (H, hd, D)
    np.testing.assert_array_equal(sd["attn.out.weight"], o.reshape(12, 8).T)
    qb = np.asarray(p["attn"]["query"]["bias"])
    np.testing.assert_array_equal(sd["attn.query.bias"], qb.ravel())
