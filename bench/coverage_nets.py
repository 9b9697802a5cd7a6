"""Hand-written networks for the coverage matrix (issue 28): written the way their authors
write them (Flax NNX, Flax Linen, a pure function), never through `hyper.architectures`.

Each `Net` builds a `hyper.Target` through the public constructors
(`Target.from_nnx` / `from_linen` / `from_function`) and carries what a user knows about
their own network and nothing the package could read from it:

- `reference`: the module called directly on its own weights (the truth for the spec);
- `torch_forward`: the same network written with PyTorch's conventions (NCHW / NCL
  activations, ``x @ W.T``, OIHW kernels, a C-H-W flatten, separate q/k/v/out ``Linear``
  projections with heads split head-major) in float64 NumPy, reading the arrays that
  `hyper.population.to_torch_state_dict` exports (the package never imports torch);
- `fan_in`: the true fan-in of the kernels where flax's layout does not say it
  (``prod(shape[:-1])`` otherwise); `kernels`: leaves that are kernels whatever their name.

`bench/coverage_checks.py` runs every operation on them; `bench/coverage.py` runs the whole
matrix and `tests/test_coverage.py` one network per layer kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hyper import data
from hyper.target import Target
from hyper.tree import nest, path_str

__all__ = ["NETS", "Built", "Net", "dataset", "net", "nnx_weights", "true_fan_in"]

Get = Callable[[str], np.ndarray]  # our leaf path -> its exported (PyTorch-layout) array


@dataclasses.dataclass(frozen=True)
class Built:
    """A built network: its target, its own weights and the module called directly."""

    target: Target
    own: Any
    reference: Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class Net:
    """One hand-written architecture of the matrix.

    Attributes:
      name: short id (the matrix row).
      title: what it is, for the table.
      kind: the layer kind it stands for (the tests take one network per kind).
      frontend: ``"nnx"``, ``"linen"`` or ``"function"``.
      data: dataset name for `dataset` (its input layout is the network's).
      build: ``(width, sample_input) -> Built``.
      torch_forward: ``(get, x) -> logits`` in PyTorch conventions (float64 NumPy).
      in_axes: ``{leaf-path suffix: input axes}`` of kernels whose fan-in is not
        ``prod(shape[:-1])`` (flax's attention q/k/v kernels `(in, heads, head_dim)`).
      kernels: leaf-path suffixes that are kernels whatever their names.
      shared: leaf-path suffixes of kernels that more than one layer uses, with how many.
    """

    name: str
    title: str
    kind: str
    frontend: str
    data: str
    build: Callable[[int, Any], Built]
    torch_forward: Callable[[Get, np.ndarray], np.ndarray]
    in_axes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    kernels: tuple[str, ...] = ()
    shared: dict[str, int] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Datasets in each network's input layout
# ---------------------------------------------------------------------------------------

_DATA: dict[str, data.Dataset] = {}


def dataset(name: str) -> data.Dataset:
    """``digits`` [8, 8], ``digits-image`` [8, 8, 1], ``digits-flat`` [64],
    ``digits-tokens`` [64] int32 (pixel intensities 0..16 as tokens), or ``mnist1d`` [40]."""
    if name not in _DATA:
        if name == "mnist1d":
            _DATA[name] = data.load("mnist1d")
        else:
            d = data.load("digits")
            shape = {"digits": (8, 8), "digits-image": (8, 8, 1)}.get(name, (64,))

            def view(x, shape=shape):
                x = np.asarray(x).reshape(-1, *shape)
                return np.round(x * 16).astype(np.int32) if name == "digits-tokens" else x

            _DATA[name] = data.Dataset(
                name, view(d.x_train), d.y_train, view(d.x_test), d.y_test, d.num_classes
            )
    return _DATA[name]


# ---------------------------------------------------------------------------------------
# Building targets the public way
# ---------------------------------------------------------------------------------------


def nnx_weights(module: nnx.Module) -> Any:
    """The module's own Param and BatchStat values as a nested dict of attribute paths."""
    _, params, stats, _ = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    flat = {}
    for state in (params, stats):
        for kp, v in jax.tree_util.tree_flatten_with_path(state)[0]:
            flat[path_str(kp).removesuffix("/value")] = jnp.asarray(v)
    return nest(flat)


def _nnx(cls: type) -> Callable[[int, Any], Built]:
    def build(width: int, x: Any) -> Built:
        module = cls(width, rngs=nnx.Rngs(0))
        target = Target.from_nnx(module, sample_input=x, name=cls.__name__)
        own = nnx_weights(module)

        @nnx.jit
        def call(module, x):
            return module(x)

        def reference(x):
            module.eval()  # from_nnx leaves the module in training mode
            return call(module, x)

        return Built(target, own, reference)

    return build


def _linen(cls: type) -> Callable[[int, Any], Built]:
    def build(width: int, x: Any) -> Built:
        module = cls(width)
        target = Target.from_linen(module, x, name=cls.__name__)
        own = dict(module.init(jax.random.key(1), x))
        return Built(target, own, jax.jit(lambda x: module.apply(own, x)))

    return build


# ---------------------------------------------------------------------------------------
# PyTorch-convention forward passes (float64 NumPy)
# ---------------------------------------------------------------------------------------


def _linear(get: Get, name: str, x: np.ndarray) -> np.ndarray:
    """``torch.nn.Linear``: ``x @ W.T + b`` with W `[out, in]`."""
    w, b = get(f"{name}/kernel"), get(f"{name}/bias")
    if w.ndim != 2 or b.ndim != 1:
        raise ValueError(f"{name}: weight {w.shape} / bias {b.shape} is no torch.nn.Linear")
    return x @ w.T + b


def _conv(get: Get, name: str, x: np.ndarray, groups: int = 1) -> np.ndarray:
    """``torch.nn.Conv{1,2}d`` (stride 1, ``padding=k // 2``): x `[B, C, *S]`, W `[O, C/g, *K]`."""
    w, b = get(f"{name}/kernel"), get(f"{name}/bias")
    nd = w.ndim - 2
    pads = [(k // 2, k // 2) for k in w.shape[2:]]
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    spatial = x.shape[2:]
    out_c, in_per = w.shape[0], w.shape[1]
    y = np.zeros((x.shape[0], out_c, *spatial))
    per_out = out_c // groups
    for g in range(groups):
        xs = xp[:, g * in_per : (g + 1) * in_per]
        ws = w[g * per_out : (g + 1) * per_out]
        for offs in np.ndindex(*w.shape[2:]):
            window = tuple(slice(o, o + m) for o, m in zip(offs, spatial, strict=True))
            patch = xs[(slice(None), slice(None), *window)]
            y[:, g * per_out : (g + 1) * per_out] += np.einsum(
                "bc...,oc->bo...", patch, ws[(slice(None), slice(None), *offs)]
            )
    return y + b.reshape(1, -1, *[1] * nd)


def _pool(x: np.ndarray, k: int, how: str) -> np.ndarray:
    """``torch.nn.{Max,Avg}Pool2d(k)`` on `[B, C, H, W]` (no padding, floor)."""
    b, c, h, w = x.shape
    x = x[:, :, : h // k * k, : w // k * k].reshape(b, c, h // k, k, w // k, k)
    return x.max(axis=(3, 5)) if how == "max" else x.mean(axis=(3, 5))


def _layer_norm(get: Get, name: str, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * get(f"{name}/scale") + get(f"{name}/bias")


def _rms_norm(get: Get, name: str, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * get(f"{name}/scale")


def _group_norm(get: Get, name: str, x: np.ndarray, groups: int, eps=1e-6) -> np.ndarray:
    """``torch.nn.GroupNorm`` on `[B, C, *S]`."""
    b, c = x.shape[:2]
    g = x.reshape(b, groups, -1)
    mu, var = g.mean(-1, keepdims=True), g.var(-1, keepdims=True)
    y = ((g - mu) / np.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return y * get(f"{name}/scale").reshape(shape) + get(f"{name}/bias").reshape(shape)


def _batch_norm(get: Get, name: str, x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """``torch.nn.BatchNorm2d`` in eval mode on `[B, C, H, W]`."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = get(f"{name}/mean").reshape(shape), get(f"{name}/var").reshape(shape)
    w, b = get(f"{name}/scale").reshape(shape), get(f"{name}/bias").reshape(shape)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _relu(x):
    return np.maximum(x, 0.0)


def _gelu(x):  # torch.nn.GELU(approximate="tanh") = flax's default gelu
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _attention(get: Get, name: str, x: np.ndarray, heads: int) -> np.ndarray:
    """Multi-head self-attention with separate q/k/v/out ``nn.Linear`` projections; the
    embedding splits head-major (``view(B, T, heads, head_dim)``), as PyTorch's does."""
    b, t, _ = x.shape
    q, k, v = (_linear(get, f"{name}/{p}", x) for p in ("query", "key", "value"))
    split = [a.reshape(b, t, heads, -1).transpose(0, 2, 1, 3) for a in (q, k, v)]
    s = split[0] @ split[1].transpose(0, 1, 3, 2) / np.sqrt(split[0].shape[-1])
    s = np.exp(s - s.max(-1, keepdims=True))
    o = (s / s.sum(-1, keepdims=True)) @ split[2]
    return _linear(get, f"{name}/out", o.transpose(0, 2, 1, 3).reshape(b, t, -1))


def _nchw(x: np.ndarray) -> np.ndarray:
    """A user's [B, H, W, 1] image as PyTorch's [B, 1, H, W]."""
    return np.moveaxis(x, -1, 1)


# ---------------------------------------------------------------------------------------
# NNX networks
# ---------------------------------------------------------------------------------------


class MLPReluTanh(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, width, rngs=rngs)
        self.fc2 = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.fc1(x))
        x = jnp.tanh(self.fc2(x))
        return self.out(x)


def _torch_mlp_relu_tanh(get, x):
    x = x.reshape(x.shape[0], -1)
    x = np.tanh(_linear(get, "fc2", _relu(_linear(get, "fc1", x))))
    return _linear(get, "out", x)


class MLPDropout(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, width, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.fc2 = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.fc2(self.drop(nnx.relu(self.fc1(x))))


def _torch_mlp2(get, x):  # dropout is the identity in eval mode
    x = x.reshape(x.shape[0], -1)
    return _linear(get, "fc2", _relu(_linear(get, "fc1", x)))


class MLPLayerNorm(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, width, rngs=rngs)
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.fc2 = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.fc2(nnx.relu(self.norm(self.fc1(x))))


def _torch_mlp_layernorm(get, x):
    x = _layer_norm(get, "norm", _linear(get, "fc1", x.reshape(x.shape[0], -1)))
    return _linear(get, "fc2", _relu(x))


class MLPRMSNorm(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, width, rngs=rngs)
        self.norm = nnx.RMSNorm(width, rngs=rngs)
        self.fc2 = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.fc2(nnx.relu(self.norm(self.fc1(x))))


def _torch_mlp_rmsnorm(get, x):
    x = _rms_norm(get, "norm", _linear(get, "fc1", x.reshape(x.shape[0], -1)))
    return _linear(get, "fc2", _relu(x))


class CNNGroupNorm(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.gn1 = nnx.GroupNorm(width, num_groups=2, rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), rngs=rngs)
        self.gn2 = nnx.GroupNorm(width, num_groups=2, rngs=rngs)
        self.head = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.gn1(self.conv1(x)))
        x = nnx.relu(self.gn2(self.conv2(x)))
        return self.head(x.mean(axis=(1, 2)))


def _torch_cnn_groupnorm(get, x):
    x = _relu(_group_norm(get, "gn1", _conv(get, "conv1", _nchw(x)), 2))
    x = _relu(_group_norm(get, "gn2", _conv(get, "conv2", x), 2))
    return _linear(get, "head", x.mean(axis=(2, 3)))


class CNNReshapeInput(nnx.Module):
    """A PyTorch port: the flat 64-pixel input is viewed as an image inside the model."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(-1, 8, 8, 1)
        x = nnx.relu(self.conv1(x))
        x = nnx.relu(self.conv2(x))
        return self.fc(x.mean(axis=(1, 2)))


def _torch_cnn_reshape(get, x):
    x = x.reshape(-1, 1, 8, 8)  # x.view(-1, 1, 8, 8)
    x = _relu(_conv(get, "conv2", _relu(_conv(get, "conv1", x))))
    return _linear(get, "fc", x.mean(axis=(2, 3)))


class LeNet(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), rngs=rngs)
        self.fc1 = nnx.Linear(width * 2 * 2, 2 * width, rngs=rngs)
        self.fc2 = nnx.Linear(2 * width, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.fc2(nnx.relu(self.fc1(x)))


def _torch_lenet(get, x, names=("conv1", "conv2", "fc1", "fc2")):
    c1, c2, f1, f2 = names
    x = _pool(_relu(_conv(get, c1, _nchw(x))), 2, "max")
    x = _pool(_relu(_conv(get, c2, x)), 2, "max")
    x = x.reshape(x.shape[0], -1)  # torch.flatten: C-H-W order
    return _linear(get, f2, _relu(_linear(get, f1, x)))


class AvgPoolCNN(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.relu(self.conv2(x))
        return self.fc(x.mean(axis=(1, 2)))


def _torch_avgpool(get, x):
    x = _pool(_relu(_conv(get, "conv1", _nchw(x))), 2, "avg")
    return _linear(get, "fc", _relu(_conv(get, "conv2", x)).mean(axis=(2, 3)))


class ResCNNBatchNorm(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.stem = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.bn0 = nnx.BatchNorm(width, rngs=rngs)
        self.conv1 = nnx.Conv(width, width, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(width, rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(width, rngs=rngs)
        self.fc = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn0(self.stem(x)))
        h = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(x + self.bn2(self.conv2(h)))
        return self.fc(x.mean(axis=(1, 2)))


def _torch_rescnn(get, x):
    x = _relu(_batch_norm(get, "bn0", _conv(get, "stem", _nchw(x))))
    h = _relu(_batch_norm(get, "bn1", _conv(get, "conv1", x)))
    x = _relu(x + _batch_norm(get, "bn2", _conv(get, "conv2", h)))
    return _linear(get, "fc", x.mean(axis=(2, 3)))


class DepthwiseSeparable(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.dw = nnx.Conv(width, width, (3, 3), feature_group_count=width, rngs=rngs)
        self.pw = nnx.Conv(width, 2 * width, (1, 1), rngs=rngs)
        self.fc = nnx.Linear(2 * width, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv1(x))
        x = nnx.relu(self.pw(nnx.relu(self.dw(x))))
        return self.fc(x.mean(axis=(1, 2)))


def _torch_depthwise(get, x):
    x = _relu(_conv(get, "conv1", _nchw(x)))
    c = x.shape[1]
    x = _relu(_conv(get, "pw", _relu(_conv(get, "dw", x, groups=c))))
    return _linear(get, "fc", x.mean(axis=(2, 3)))


class GroupedConv(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), feature_group_count=2, rngs=rngs)
        self.fc = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.fc(x.mean(axis=(1, 2)))


def _torch_grouped(get, x):
    x = _relu(_conv(get, "conv2", _relu(_conv(get, "conv1", _nchw(x))), groups=2))
    return _linear(get, "fc", x.mean(axis=(2, 3)))


class CNN1d(nnx.Module):
    """MNIST-1D: 40 steps, one channel."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, width, (5,), rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (5,), rngs=rngs)
        self.fc = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv1(x[..., None]))
        x = nnx.relu(self.conv2(x))
        return self.fc(x.mean(axis=1))


def _torch_cnn1d(get, x):
    x = _relu(_conv(get, "conv1", x[:, None, :]))
    return _linear(get, "fc", _relu(_conv(get, "conv2", x)).mean(axis=2))


class TokenEmbedding(nnx.Module):
    """Digits as 64 tokens (pixel intensities 0..16) embedded and mean-pooled."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(17, width, rngs=rngs)
        self.fc1 = nnx.Linear(width, width, rngs=rngs)
        self.fc2 = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens).mean(axis=1)
        return self.fc2(nnx.relu(self.fc1(x)))


def _torch_embedding(get, tokens):
    x = get("embed/embedding")[np.asarray(tokens, np.int64)].mean(axis=1)
    return _linear(get, "fc2", _relu(_linear(get, "fc1", x)))


class Block(nnx.Module):
    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(width, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(width, rngs=rngs)
        self.mlp1 = nnx.Linear(width, 2 * width, rngs=rngs)
        self.mlp2 = nnx.Linear(2 * width, width, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp2(nnx.gelu(self.mlp1(self.ln2(x))))


class ViT(nnx.Module):
    """8x8 digits as 16 patches of 2x2, a learned position embedding, 2 pre-norm blocks."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.proj = nnx.Linear(4, width, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 16, width)))
        self.blocks = nnx.List([Block(width, 2, rngs=rngs) for _ in range(2)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        b = x.shape[0]
        x = x.reshape(b, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(b, 16, 4)
        x = self.proj(x) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(axis=1))


def _torch_vit(get, x):
    b = x.shape[0]
    x = x.reshape(b, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(b, 16, 4)
    x = _linear(get, "proj", x) + get("pos")
    for i in range(2):
        p = f"blocks/{i}"
        x = x + _attention(get, f"{p}/attn", _layer_norm(get, f"{p}/ln1", x), 2)
        h = _gelu(_linear(get, f"{p}/mlp1", _layer_norm(get, f"{p}/ln2", x)))
        x = x + _linear(get, f"{p}/mlp2", h)
    return _linear(get, "head", _layer_norm(get, "norm", x).mean(axis=1))


class SharedWeightMLP(nnx.Module):
    """One hidden Linear applied twice: a weight shared between two layers."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.inp = nnx.Linear(64, width, rngs=rngs)
        self.shared = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.inp(x.reshape(x.shape[0], -1)))
        x = nnx.relu(self.shared(x))
        x = nnx.relu(self.shared(x))
        return self.out(x)


def _torch_shared(get, x):
    x = _relu(_linear(get, "inp", x.reshape(x.shape[0], -1)))
    x = _relu(_linear(get, "shared", _relu(_linear(get, "shared", x))))
    return _linear(get, "out", x)


# ---------------------------------------------------------------------------------------
# Linen networks
# ---------------------------------------------------------------------------------------


class LinenMLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.width)(x))
        x = nn.tanh(nn.Dense(self.width)(x))
        return nn.Dense(10)(x)


def _torch_linen_mlp(get, x):
    x = _relu(_linear(get, "params/Dense_0", x.reshape(x.shape[0], -1)))
    return _linear(get, "params/Dense_2", np.tanh(_linear(get, "params/Dense_1", x)))


class LinenLeNet(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(self.width, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(self.width, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(2 * self.width)(x))
        return nn.Dense(10)(x)


class LinenTutorialCNN(nn.Module):
    """The Flax tutorial CNN (conv-relu-avg_pool twice, flatten, two Dense), narrow."""

    width: int

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(features=self.width, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Conv(features=2 * self.width, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))  # flatten
        x = nn.Dense(features=4 * self.width)(x)
        x = nn.relu(x)
        return nn.Dense(features=10)(x)


def _torch_tutorial(get, x):
    x = _pool(_relu(_conv(get, "params/Conv_0", _nchw(x))), 2, "avg")
    x = _pool(_relu(_conv(get, "params/Conv_1", x)), 2, "avg")
    x = _relu(_linear(get, "params/Dense_0", x.reshape(x.shape[0], -1)))
    return _linear(get, "params/Dense_1", x)


# ---------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------


def _flat_mlp(params, x):
    x = x.reshape(x.shape[0], -1)
    h = jax.nn.relu(x @ params["w1"] + params["b1"][None])
    return h @ params["w2"] + params["b2"][None]


def _nested_mlp(params, x):
    x = x.reshape(x.shape[0], -1)
    d1, d2 = params["dense1"], params["dense2"]
    h = jax.nn.relu(x @ d1["kernel"] + d1["bias"][None])
    return h @ d2["kernel"] + d2["bias"][None]


def _user_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, jax.Array]:
    """How a user initialises a pure function: kernels normal / sqrt(fan-in), biases 0.1."""
    keys = jax.random.split(jax.random.key(1), len(shapes))
    out = {}
    for k, (name, shape) in zip(keys, shapes.items(), strict=True):
        out[name] = (
            jax.random.normal(k, shape) / np.sqrt(shape[0])
            if len(shape) == 2
            else jnp.full(shape, 0.1, jnp.float32)
        )
    return out


def _function(nested: bool) -> Callable[[int, Any], Built]:
    def build(width: int, x: Any) -> Built:
        flat = _user_weights({"w1": (64, width), "b1": (width,), "w2": (width, 10), "b2": (10,)})
        if nested:
            own = {
                "dense1": {"kernel": flat["w1"], "bias": flat["b1"]},
                "dense2": {"kernel": flat["w2"], "bias": flat["b2"]},
            }
            fn, name = _nested_mlp, "nested_function"
        else:
            own, fn, name = flat, _flat_mlp, "flat_function"
        template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), own)
        target = Target.from_function(fn, template, sample_input=x, name=name)
        return Built(target, own, jax.jit(lambda x: fn(own, x)))

    return build


def _torch_flat(get, x):
    x = x.reshape(x.shape[0], -1)  # a user's nn.Linear weights are [out, in]
    w1, w2 = get("w1"), get("w2")
    return _relu(x @ w1.T + get("b1")) @ w2.T + get("b2")


def _torch_nested(get, x):
    x = x.reshape(x.shape[0], -1)
    return _linear(get, "dense2", _relu(_linear(get, "dense1", x)))


# ---------------------------------------------------------------------------------------
# The matrix rows
# ---------------------------------------------------------------------------------------

_QKV_IN = {f"attn/{p}/kernel": (0,) for p in ("query", "key", "value")}

NETS: tuple[Net, ...] = (
    Net("mlp_relu_tanh", "MLP relu->tanh", "dense", "nnx", "digits",
        _nnx(MLPReluTanh), _torch_mlp_relu_tanh),
    Net("mlp_linen", "Linen MLP relu->tanh", "dense", "linen", "digits",
        _linen(LinenMLP), _torch_linen_mlp),
    Net("mlp_dropout", "MLP + Dropout", "dropout", "nnx", "digits",
        _nnx(MLPDropout), _torch_mlp2),
    Net("mlp_layernorm", "MLP + LayerNorm", "layernorm", "nnx", "digits",
        _nnx(MLPLayerNorm), _torch_mlp_layernorm),
    Net("mlp_rmsnorm", "MLP + RMSNorm", "rmsnorm", "nnx", "digits",
        _nnx(MLPRMSNorm), _torch_mlp_rmsnorm),
    Net("cnn_groupnorm", "CNN + GroupNorm, global mean pool", "groupnorm", "nnx",
        "digits-image", _nnx(CNNGroupNorm), _torch_cnn_groupnorm),
    Net("cnn_reshape_input", "flat-64 CNN, x.reshape(-1, 8, 8, 1) in __call__", "reshape",
        "nnx", "digits-flat", _nnx(CNNReshapeInput), _torch_cnn_reshape),
    Net("lenet", "LeNet: conv-relu-max_pool x2, flatten, dense x2", "maxpool+flatten",
        "nnx", "digits-image", _nnx(LeNet), _torch_lenet),
    Net("lenet_linen", "Linen LeNet", "maxpool+flatten", "linen", "digits-image",
        _linen(LinenLeNet),
        lambda g, x: _torch_lenet(g, x, tuple(
            f"params/{n}" for n in ("Conv_0", "Conv_1", "Dense_0", "Dense_1")))),
    Net("avgpool_gap", "avg_pool CNN + global mean pool", "avgpool", "nnx", "digits-image",
        _nnx(AvgPoolCNN), _torch_avgpool),
    Net("flax_tutorial_linen", "Flax tutorial Linen CNN (avg_pool, flatten)",
        "avgpool+flatten", "linen", "digits-image", _linen(LinenTutorialCNN),
        _torch_tutorial),
    Net("rescnn_bn", "ResCNN + BatchNorm", "batchnorm+residual", "nnx", "digits-image",
        _nnx(ResCNNBatchNorm), _torch_rescnn),
    Net("depthwise_separable", "depthwise-separable CNN (feature_group_count=C)",
        "depthwise", "nnx", "digits-image", _nnx(DepthwiseSeparable), _torch_depthwise),
    Net("grouped_conv", "grouped conv (feature_group_count=2)", "grouped", "nnx",
        "digits-image", _nnx(GroupedConv), _torch_grouped),
    Net("cnn1d", "1-D CNN, MNIST-1D", "conv1d", "nnx", "mnist1d", _nnx(CNN1d),
        _torch_cnn1d),
    Net("token_embedding", "nnx.Embed on digit pixels as tokens", "embedding", "nnx",
        "digits-tokens", _nnx(TokenEmbedding), _torch_embedding),
    Net("vit", "ViT: 2x2 patches, pos nnx.Param, 2 blocks of MultiHeadAttention + MLP",
        "attention", "nnx", "digits", _nnx(ViT), _torch_vit, in_axes=_QKV_IN),
    Net("function_flat", "from_function {w1, b1, w2, b2}", "function-flat", "function",
        "digits", _function(nested=False), _torch_flat, kernels=("w1", "w2")),
    Net("function_nested", "from_function {dense1: {kernel, bias}, ...}",
        "function-nested", "function", "digits", _function(nested=True), _torch_nested),
    Net("shared_weight", "one Linear applied twice (a shared weight)", "shared", "nnx",
        "digits", _nnx(SharedWeightMLP), _torch_shared, shared={"shared/kernel": 2}),
)  # fmt: skip


def net(name: str) -> Net:
    """The row named `name`."""
    for n in NETS:
        if n.name == name:
            return n
    raise KeyError(name)


def true_fan_in(n: Net, path: str, shape: tuple[int, ...]) -> int:
    """What a kernel's fan-in is: how many inputs feed one output unit."""
    for suffix, axes in n.in_axes.items():
        if path.endswith(suffix):
            return int(np.prod([shape[a] for a in axes]))
    return int(np.prod(shape[:-1]))
