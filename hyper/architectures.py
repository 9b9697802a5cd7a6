"""Target architectures used across weightspace, as Flax NNX modules and `Target` factories.

- `MLP`: dense layers with a configurable activation (digits MLP 64-32-10).
- `CNN2d`: a 3x3 conv stack + global average pooling + dense, Small-CNN-Zoo style (digits).
- `CNN1d`: the same for 1-D signals (MNIST-1D).
- `ResCNN`: a residual CNN with BatchNorm.

`make_target(arch, **config)` builds a `Target` whose `config` rebuilds it exactly, so
zoos and checkpoints can restore a target without the code that made it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hyper.errors import WeightspaceError, WeightspaceTypeError
from hyper.target import Target

__all__ = ["ACTIVATIONS", "CNN1d", "CNN2d", "MLP", "ResCNN", "config_for_params", "make_target"]

# The one activation table of weightspace, in id order: graph metanetworks encode a hidden
# node's activation as its index in ``("none", *ACTIVATIONS)``, so new entries go last.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "leaky_relu": jax.nn.leaky_relu,  # negative slope 0.01
    "sigmoid": jax.nn.sigmoid,
}


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise WeightspaceError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def _check_widths(name: str, widths: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if any(w < 1 for w in widths):
        raise WeightspaceError(f"{name}: widths must be positive, got {widths}")
    return widths


class MLP(nnx.Module):
    """Dense layers `in -> widths... -> out`, activation between, optional dropout.

    Input `[batch, *in_shape]` is flattened to `[batch, in_features]`.
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        out_features: int,
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        sizes = (in_features, *_check_widths("MLP", widths), out_features)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.activation = activation
        self.act = _activation(activation)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
            if self.dropout is not None:
                x = self.dropout(x)
        return self.layers[-1](x)


class CNN2d(nnx.Module):
    """Conv stack (`kernel_size`, 'SAME', given strides) + global average pooling + dense.

    Input `[batch, H, W]` or `[batch, H, W, C]`. `kernel_size` is one size or one per conv
    layer. With `batchnorm`, each conv is followed by BatchNorm (conv-BN-act); with
    `residual`, a conv layer whose input and output shapes agree (same channels, stride 1)
    adds its input to its activated output (``x + act(bn(conv(x)))``).

    'SAME' follows XLA: per axis the total padding ``max((ceil(n/s) - 1)*s + k - n, 0)`` is
    split ``low = total // 2``, ``high = total - low``. With stride 2 on an even input that
    is asymmetric (k=3, n=8: low 0, high 1), which a PyTorch ``Conv2d(padding=...)`` cannot
    express: a PyTorch port needs ``F.pad`` before a ``padding=0`` conv.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        out_features: int,
        *,
        kernel_size: int | Sequence[int] = 3,
        strides: Sequence[int] | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        batchnorm: bool = False,
        residual: bool = False,
        ndim: int = 2,
        rngs: nnx.Rngs,
    ):
        channels = _check_widths("CNN", channels)
        strides = tuple(strides) if strides is not None else (1,) + (2,) * (len(channels) - 1)
        if len(strides) != len(channels):
            raise WeightspaceError(f"CNN: {len(strides)} strides for {len(channels)} conv layers")
        kernels = (
            (int(kernel_size),) * len(channels)
            if isinstance(kernel_size, int)
            else tuple(int(k) for k in kernel_size)
        )
        if len(kernels) != len(channels) or any(k < 1 for k in kernels):
            raise WeightspaceError(f"CNN: kernel sizes {kernels} for {len(channels)} conv layers")
        sizes = (in_channels, *channels)
        self.ndim = ndim
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, (k,) * ndim, strides=(s,) * ndim, padding="SAME", rngs=rngs)
                for a, b, s, k in zip(sizes[:-1], sizes[1:], strides, kernels, strict=True)
            ]
        )
        self.norms = (
            nnx.List([nnx.BatchNorm(b, momentum=0.9, rngs=rngs) for b in channels])
            if batchnorm
            else None
        )
        self.residual = tuple(
            bool(residual) and a == b and s == 1
            for a, b, s in zip(sizes[:-1], sizes[1:], strides, strict=True)
        )
        self.dense = nnx.Linear(channels[-1], out_features, rngs=rngs)
        self.act = _activation(activation)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == self.ndim + 1:
            x = x[..., None]
        for i, conv in enumerate(self.convs):
            h = conv(x)
            if self.norms is not None:
                h = self.norms[i](h)
            x = x + self.act(h) if self.residual[i] else self.act(h)
        x = x.mean(axis=tuple(range(1, self.ndim + 1)))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.dense(x)


class CNN1d(CNN2d):
    """`CNN2d` over 1-D signals `[batch, L]` or `[batch, L, C]` (MNIST-1D)."""

    def __init__(self, in_channels: int, channels: Sequence[int], out_features: int, **kw: Any):
        kw.setdefault("kernel_size", 5)
        super().__init__(in_channels, channels, out_features, ndim=1, **kw)


class ResBlock(nnx.Module):
    """conv-BN-act-conv-BN + identity, then act."""

    def __init__(self, channels: int, act: Callable, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(channels, channels, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(channels, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(channels, momentum=0.9, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.act(self.bn1(self.conv1(x)))
        return self.act(x + self.bn2(self.conv2(h)))


class ResCNN(nnx.Module):
    """Stem conv-BN-act, `num_blocks` residual blocks, global average pooling, dense."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        out_features: int,
        *,
        num_blocks: int = 2,
        activation: str = "relu",
        rngs: nnx.Rngs,
    ):
        if channels < 1 or num_blocks < 0:
            raise WeightspaceError(f"ResCNN: channels={channels}, num_blocks={num_blocks}")
        act = _activation(activation)
        self.stem = nnx.Conv(
            in_channels, channels, (3, 3), padding="SAME", use_bias=False, rngs=rngs
        )
        self.stem_bn = nnx.BatchNorm(channels, momentum=0.9, rngs=rngs)
        self.blocks = nnx.List([ResBlock(channels, act, rngs=rngs) for _ in range(num_blocks)])
        self.dense = nnx.Linear(channels, out_features, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == 3:
            x = x[..., None]
        x = self.act(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.dense(x.mean(axis=(1, 2)))


_BUILDERS: dict[str, tuple[type, Callable[[dict], tuple[tuple, dict]]]] = {
    "mlp": (
        MLP,
        lambda c: (
            (c["in_features"], c["widths"], c["out_features"]),
            {"activation": c.get("activation", "relu"), "dropout": c.get("dropout", 0.0)},
        ),
    ),
    "cnn2d": (
        CNN2d,
        lambda c: (
            (c.get("in_channels", 1), c["channels"], c["out_features"]),
            {
                "kernel_size": c.get("kernel_size", 3),
                "strides": c.get("strides"),
                "activation": c.get("activation", "relu"),
                "dropout": c.get("dropout", 0.0),
                "batchnorm": c.get("batchnorm", False),
                "residual": c.get("residual", False),
            },
        ),
    ),
    "cnn1d": (
        CNN1d,
        lambda c: (
            (c.get("in_channels", 1), c["channels"], c["out_features"]),
            {
                "kernel_size": c.get("kernel_size", 5),
                "strides": c.get("strides"),
                "activation": c.get("activation", "relu"),
                "dropout": c.get("dropout", 0.0),
            },
        ),
    ),
    "rescnn": (
        ResCNN,
        lambda c: (
            (c.get("in_channels", 1), c["channels"], c["out_features"]),
            {"num_blocks": c.get("num_blocks", 2), "activation": c.get("activation", "relu")},
        ),
    ),
}


_CONV_KEYS = {"in_channels", "channels", "out_features", "kernel_size", "strides", "activation"}
_KEYS: dict[str, set[str]] = {
    "mlp": {"in_features", "widths", "out_features", "activation", "dropout"},
    "cnn2d": _CONV_KEYS | {"dropout", "batchnorm", "residual"},
    "cnn1d": _CONV_KEYS | {"dropout"},
    "rescnn": {"in_channels", "channels", "out_features", "num_blocks", "activation"},
}


def make_target(arch: str, *, input_shape: Sequence[int], **config: Any) -> Target:
    """Builds a `Target` for one of the platform's architectures.

    Args:
      arch: ``"mlp"``, ``"cnn2d"``, ``"cnn1d"`` or ``"rescnn"``.
      input_shape: shape of one example, e.g. ``(8, 8)`` for digits, ``(40,)`` for MNIST-1D.
      **config: the module's arguments (``widths``/``channels``, ``out_features``,
        ``activation``, ``dropout``, ...). For ``"mlp"``, ``in_features`` defaults to the
        product of `input_shape`.

    Returns:
      a `Target` whose ``config`` (``{"arch": ..., "input_shape": ..., **config}``)
      rebuilds it with ``make_target(**target.config)``.

    Example:
      >>> t = make_target("mlp", input_shape=(8, 8), widths=(32,), out_features=10)
      >>> t.num_params
      2410
    """
    if not isinstance(arch, str) or arch not in _BUILDERS:
        raise WeightspaceError(
            f"unknown architecture {arch!r}; expected one of {sorted(_BUILDERS)}"
        )
    input_shape = _positive_ints("input_shape", input_shape)
    cfg = dict(config)
    unknown = sorted(set(cfg) - _KEYS[arch])
    if unknown:
        raise WeightspaceError(
            f"make_target({arch!r}): unknown config keys {unknown}; expected {sorted(_KEYS[arch])}"
        )
    dropout = cfg.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise WeightspaceError(
            f"make_target({arch!r}): dropout must lie in [0, 1), got {dropout!r}"
        )
    if arch == "mlp":
        size = 1
        for s in input_shape:
            size *= s
        cfg.setdefault("in_features", size)
    for k in ("in_features", "in_channels", "out_features", "kernel_size"):
        if k in cfg and not isinstance(cfg[k], list | tuple):
            cfg[k] = _positive_ints(k, [cfg[k]])[0]
    if "num_blocks" in cfg:  # 0 blocks: stem and head only
        cfg["num_blocks"] = _positive_ints("num_blocks", [cfg["num_blocks"] + 1])[0] - 1
    if "widths" in cfg:
        cfg["widths"] = list(_positive_ints("widths", cfg["widths"], allow_empty=True))
    if "channels" in cfg:
        if isinstance(cfg["channels"], int) and not isinstance(cfg["channels"], bool):
            cfg["channels"] = _positive_ints("channels", [cfg["channels"]])[0]
        else:
            cfg["channels"] = list(_positive_ints("channels", cfg["channels"]))
    if cfg.get("strides") is not None:
        cfg["strides"] = list(_positive_ints("strides", cfg["strides"]))
    if isinstance(cfg.get("kernel_size"), list | tuple):
        cfg["kernel_size"] = list(_positive_ints("kernel_size", cfg["kernel_size"]))
    cls, to_args = _BUILDERS[arch]
    try:
        args, kwargs = to_args(cfg)
    except KeyError as e:
        raise WeightspaceError(f"make_target({arch!r}): missing config {e.args[0]!r}") from None

    def build(key: jax.Array) -> nnx.Module:
        return cls(*args, **kwargs, rngs=nnx.Rngs(params=key, dropout=key))

    sample = jnp.zeros((1, *input_shape), jnp.float32)
    # An abstract template: building concrete weights would compile every initializer.
    module = nnx.eval_shape(lambda: build(jax.random.key(0)))
    full_config = {"arch": arch, "input_shape": list(input_shape), **cfg}
    name = f"{arch}(" + ",".join(f"{k}={v}" for k, v in cfg.items() if k != "in_features") + ")"
    return Target.from_nnx(module, sample_input=sample, name=name, config=full_config, init=build)


def _positive_ints(name: str, value: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    """A sequence of positive ints (numpy ints too; no bools, floats or strings)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise WeightspaceTypeError(f"make_target: {name} must be a sequence of ints, got {value!r}")
    out = []
    for v in list(value):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise WeightspaceError(f"make_target: {name} must be positive ints, got {value!r}")
        out.append(int(v))
    if not out and not allow_empty:
        raise WeightspaceError(f"make_target: {name} must not be empty")
    return tuple(out)


def target_from_config(config: dict[str, Any]) -> Target:
    """Rebuilds a target from its ``config`` (as stored in zoos and checkpoints)."""
    if not isinstance(config, dict) or "arch" not in config or "input_shape" not in config:
        raise WeightspaceError(f"target config needs 'arch' and 'input_shape', got {config!r}")
    cfg = dict(config)
    return make_target(cfg.pop("arch"), input_shape=cfg.pop("input_shape"), **cfg)


def config_for_params(config: dict[str, Any], params: Any) -> dict[str, Any] | None:
    """The `make_target` config of a network of `config`'s family with `params`' widths.

    After hidden units are removed (`hyper.compact.remove_units`) a network of a built-in
    architecture is still one of that architecture, only narrower; this returns the config
    that rebuilds it (``widths`` of an MLP, ``channels`` of a CNN or ResCNN, read from the
    kernels), so that a compact model loads without the original. Returns None when
    `config` is not a `make_target` config or the rebuilt target's leaves differ from
    `params` (the caller then keeps the derived target).
    """
    if not isinstance(config, dict) or config.get("arch") not in _BUILDERS:
        return None
    cfg = dict(config)
    try:
        if cfg["arch"] == "mlp":
            layers = params["layers"]
            cfg["widths"] = [
                int(np.shape(layers[str(i)]["kernel"])[-1]) for i in range(len(layers) - 1)
            ]
        elif cfg["arch"] in ("cnn2d", "cnn1d"):
            convs = params["convs"]
            cfg["channels"] = [
                int(np.shape(convs[str(i)]["kernel"])[-1]) for i in range(len(convs))
            ]
        else:
            cfg["channels"] = int(np.shape(params["stem"]["kernel"])[-1])
        rebuilt = target_from_config(cfg)
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    shapes = [tuple(np.shape(a)) for a in jax.tree.leaves(params)]
    if jax.tree.structure(params) != rebuilt.treedef or shapes != [s.shape for s in rebuilt.spec]:
        return None
    return rebuilt.config
