"""Target architectures used across weightspace, as Flax NNX modules and `Target` factories.

- `MLP`: dense layers with a configurable activation (digits MLP 64-32-10).
- `CNN2d`: a 3x3 conv stack + global average pooling + dense, Small-CNN-Zoo style (digits).
- `CNN1d`: the same for 1-D signals (MNIST-1D).
- `ResCNN`: a residual CNN with BatchNorm.
- `Transformer`: a pre-LN vision/sequence transformer over patches (digits ViT, MNIST-1D).

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

__all__ = [
    "ACTIVATIONS",
    "CNN1d",
    "CNN2d",
    "MLP",
    "PADDINGS",
    "ResCNN",
    "Transformer",
    "TransformerBlock",
    "config_for_params",
    "make_target",
    "target_from_config",
]

PADDINGS = ("SAME", "VALID", "SYMMETRIC")
"""The `padding` options of `CNN2d` / `CNN1d` (and of their `make_target` configs)."""

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
    """Conv stack (`kernel_size`, `padding`, given strides) + global average pooling + dense.

    Input `[batch, H, W]` or `[batch, H, W, C]`. `kernel_size` is one size or one per conv
    layer. With `batchnorm`, each conv is followed by BatchNorm (conv-BN-act); with
    `residual`, a conv layer whose input and output shapes agree (same channels, stride 1)
    adds its input to its activated output (``x + act(bn(conv(x)))``).

    `padding` (one of `PADDINGS`):

    - ``"SYMMETRIC"``: ``k // 2`` zeros on both sides of every spatial axis, explicit pads
      ``((k // 2, k // 2), ...)``: PyTorch's ``Conv2d(..., padding=k // 2)``, so the
      natural PyTorch port computes the same function. The built-in CNN presets use it.
    - ``"SAME"`` (the default of the class and of a `make_target` config without a
      ``padding`` key, i.e. of zoos built before the presets moved to ``"SYMMETRIC"``)
      follows XLA: per axis the total padding ``max((ceil(n/s) - 1)*s + k - n, 0)`` is
      split ``low = total // 2``, ``high = total - low``. With stride 2 on an even input
      that is asymmetric (k=3, n=8: low 0, high 1), which a PyTorch ``Conv2d(padding=...)``
      cannot express: a PyTorch port needs ``F.pad`` before a ``padding=0`` conv
      (`hyper.torch_layout.padding_warning` says so on export). At stride 1 with an odd
      kernel it equals ``"SYMMETRIC"``.
    - ``"VALID"`` (no padding, Keras' default: the Small CNN Zoo) is PyTorch's
      ``padding=0``.
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
        padding: str = "SAME",
        ndim: int = 2,
        rngs: nnx.Rngs,
    ):
        channels = _check_widths("CNN", channels)
        if padding not in PADDINGS:
            raise WeightspaceError(f"CNN: padding must be one of {list(PADDINGS)}, got {padding!r}")
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
                nnx.Conv(
                    a,
                    b,
                    (k,) * ndim,
                    strides=(s,) * ndim,
                    padding=_pads(padding, k, ndim),
                    rngs=rngs,
                )
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
        if padding == "SYMMETRIC" and any(
            r and k % 2 == 0 for r, k in zip(self.residual, kernels, strict=True)
        ):
            raise WeightspaceError(
                f"CNN: padding='SYMMETRIC' with even kernel sizes {kernels} grows the feature "
                "map by one, so a residual layer cannot add its input; use odd kernels or "
                "padding='SAME'"
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


def _pads(padding: str, k: int, ndim: int) -> str | tuple[tuple[int, int], ...]:
    """Flax's `padding` of one conv: explicit ``(k // 2, k // 2)`` pairs for "SYMMETRIC"."""
    return ((k // 2, k // 2),) * ndim if padding == "SYMMETRIC" else padding


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


def _per_block(name: str, value: int | Sequence[int], depth: int) -> tuple[int, ...]:
    """One positive int per block: an int for every block, or a list of `depth` ints."""
    vals = (value,) * depth if isinstance(value, int | np.integer) else tuple(value)
    if len(vals) != depth or any(
        isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in vals
    ):
        raise WeightspaceError(
            f"Transformer: {name} must be a positive int or {depth} positive ints, got {value!r}"
        )
    return tuple(int(v) for v in vals)


class TransformerBlock(nnx.Module):
    """Pre-LN block: ``x + attn(ln1(x))``, then ``x + mlp2(act(mlp1(ln2(x))))``."""

    def __init__(
        self,
        width: int,
        heads: int,
        head_dim: int,
        mlp_dim: int,
        act: Callable,
        *,
        rngs: nnx.Rngs,
    ):
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            heads,
            width,
            qkv_features=heads * head_dim,
            out_features=width,
            decode=False,
            keep_rngs=False,
            rngs=rngs,
        )
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.mlp1 = nnx.Linear(width, mlp_dim, rngs=rngs)
        self.mlp2 = nnx.Linear(mlp_dim, width, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp2(self.act(self.mlp1(self.norm2(x))))


class Transformer(nnx.Module):
    """A pre-LN transformer over non-overlapping patches (ViT style), for images or signals.

    Input `[batch, *spatial]` or `[batch, *spatial, C]`; ``len(patch_size)`` spatial axes,
    each divisible by its patch size. A conv with kernel = stride = `patch_size` projects
    every patch to `width` (a dense layer on each flattened patch); the patches, row-major,
    are the tokens, plus a learned position embedding `pos` `[tokens, width]` (normal,
    std 0.02). Then `depth` `TransformerBlock`s (LayerNorm, `nnx.MultiHeadAttention` with
    `heads` heads of `head_dim`, LayerNorm, MLP `width -> mlp_dim -> width`), a final
    LayerNorm, the mean over tokens, optional dropout, and a dense head.

    `heads`, `head_dim` and `mlp_dim` are one int for every block or one per block (a
    pruned network's blocks may differ).
    """

    def __init__(
        self,
        in_channels: int,
        spatial: Sequence[int],
        patch_size: Sequence[int],
        out_features: int,
        *,
        width: int = 32,
        depth: int = 2,
        heads: int | Sequence[int] = 2,
        head_dim: int | Sequence[int] | None = None,
        mlp_dim: int | Sequence[int] = 64,
        activation: str = "gelu",
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        spatial, patch = tuple(spatial), tuple(patch_size)
        if len(patch) != len(spatial) or any(n % p for n, p in zip(spatial, patch, strict=True)):
            raise WeightspaceError(
                f"Transformer: patch_size {list(patch)} does not tile the input {list(spatial)} "
                "(one patch size per spatial axis, each dividing it)"
            )
        heads = _per_block("heads", heads, depth)
        if head_dim is None:
            if any(width % h for h in heads):
                raise WeightspaceError(
                    f"Transformer: width {width} is not divisible by heads {list(heads)}; "
                    "give head_dim"
                )
            head_dim = [width // h for h in heads]
        head_dim = _per_block("head_dim", head_dim, depth)
        mlp_dim = _per_block("mlp_dim", mlp_dim, depth)
        tokens = int(np.prod([n // p for n, p in zip(spatial, patch, strict=True)]))
        self.ndim = len(spatial)
        self.patch = nnx.Conv(in_channels, width, patch, strides=patch, padding="VALID", rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (tokens, width)))
        act = _activation(activation)
        self.blocks = nnx.List(
            [
                TransformerBlock(width, h, d, m, act, rngs=rngs)
                for h, d, m in zip(heads, head_dim, mlp_dim, strict=True)
            ]
        )
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.head = nnx.Linear(width, out_features, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == self.ndim + 1:
            x = x[..., None]
        h = self.patch(x)
        h = h.reshape(h.shape[0], -1, h.shape[-1]) + self.pos[None]
        for block in self.blocks:
            h = block(h)
        h = self.norm(h).mean(axis=1)
        if self.dropout is not None:
            h = self.dropout(h)
        return self.head(h)


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
                "padding": c.get("padding", "SAME"),
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
                "padding": c.get("padding", "SAME"),
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
    "transformer": (
        Transformer,
        lambda c: (
            (c.get("in_channels", 1), c["spatial"], c["patch_size"], c["out_features"]),
            {
                "width": c.get("width", 32),
                "depth": c.get("depth", 2),
                "heads": c.get("heads", 2),
                "head_dim": c.get("head_dim"),
                "mlp_dim": c.get("mlp_dim", 64),
                "activation": c.get("activation", "gelu"),
                "dropout": c.get("dropout", 0.0),
            },
        ),
    ),
}


_CONV_KEYS = {"in_channels", "channels", "out_features", "kernel_size", "strides", "activation"}
_KEYS: dict[str, set[str]] = {
    "mlp": {"in_features", "widths", "out_features", "activation", "dropout"},
    "cnn2d": _CONV_KEYS | {"dropout", "batchnorm", "residual", "padding"},
    "cnn1d": _CONV_KEYS | {"dropout", "padding"},
    "rescnn": {"in_channels", "channels", "out_features", "num_blocks", "activation"},
    "transformer": {
        "in_channels",
        "patch_size",
        "out_features",
        "width",
        "depth",
        "heads",
        "head_dim",
        "mlp_dim",
        "activation",
        "dropout",
    },
}
_PER_BLOCK = ("heads", "head_dim", "mlp_dim")  # an int, or one int per transformer block


def make_target(arch: str, *, input_shape: Sequence[int], **config: Any) -> Target:
    """Builds a `Target` for one of the platform's architectures.

    Args:
      arch: ``"mlp"``, ``"cnn2d"``, ``"cnn1d"``, ``"rescnn"`` or ``"transformer"``
        (`Transformer`: ``patch_size`` per spatial axis, ``width``, ``depth``, ``heads``,
        ``head_dim``, ``mlp_dim``; `input_shape` is the spatial shape, optionally with a
        trailing channel axis of ``in_channels``).
      input_shape: shape of one example, e.g. ``(8, 8)`` for digits, ``(40,)`` for MNIST-1D.
      **config: the module's arguments (``widths``/``channels``, ``out_features``,
        ``activation``, ``dropout``, ...). For ``"mlp"``, ``in_features`` defaults to the
        product of `input_shape`.

    Returns:
      a `Target` whose ``config`` (``{"arch": ..., "input_shape": ..., **config}``)
      rebuilds it with ``make_target(**target.config)``.

    Examples:
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
    for k in ("in_features", "in_channels", "out_features", "kernel_size", "width", "depth"):
        if k in cfg and not isinstance(cfg[k], list | tuple):
            cfg[k] = _positive_ints(k, [cfg[k]])[0]
    for k in _PER_BLOCK:
        if cfg.get(k) is not None:
            if isinstance(cfg[k], int | np.integer) and not isinstance(cfg[k], bool):
                cfg[k] = _positive_ints(k, [cfg[k]])[0]
            else:
                cfg[k] = list(_positive_ints(k, cfg[k]))
    spatial = input_shape
    if arch == "transformer" and "patch_size" in cfg:
        cfg["patch_size"] = list(_positive_ints("patch_size", cfg["patch_size"]))
        spatial = _transformer_spatial(input_shape, cfg)
    if "num_blocks" in cfg:  # 0 blocks: stem and head only
        cfg["num_blocks"] = _positive_ints("num_blocks", [cfg["num_blocks"] + 1])[0] - 1
    if "widths" in cfg:
        cfg["widths"] = list(_positive_ints("widths", cfg["widths"], allow_empty=True))
    if "channels" in cfg:
        if isinstance(cfg["channels"], int) and not isinstance(cfg["channels"], bool):
            cfg["channels"] = _positive_ints("channels", [cfg["channels"]])[0]
        else:
            cfg["channels"] = list(_positive_ints("channels", cfg["channels"]))
    if arch in ("cnn2d", "cnn1d"):
        # Recorded explicitly: a stored config without it (a zoo built before the presets
        # moved to "SYMMETRIC") rebuilds with the old default, XLA's 'SAME'.
        cfg["padding"] = cfg.get("padding", "SAME")
        if cfg["padding"] not in PADDINGS:
            raise WeightspaceError(
                f"make_target({arch!r}): padding must be one of {list(PADDINGS)}, "
                f"got {cfg['padding']!r}"
            )
    if cfg.get("strides") is not None:
        cfg["strides"] = list(_positive_ints("strides", cfg["strides"]))
    if isinstance(cfg.get("kernel_size"), list | tuple):
        cfg["kernel_size"] = list(_positive_ints("kernel_size", cfg["kernel_size"]))
    cls, to_args = _BUILDERS[arch]
    try:
        args, kwargs = to_args({**cfg, "spatial": spatial})
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


def _transformer_spatial(input_shape: tuple[int, ...], cfg: dict[str, Any]) -> tuple[int, ...]:
    """The spatial axes of a transformer's `input_shape` (a trailing channel axis dropped)."""
    n = len(cfg["patch_size"])
    channels = cfg.get("in_channels", 1)
    if len(input_shape) == n + 1 and input_shape[-1] == channels:
        return input_shape[:-1]
    if len(input_shape) == n and channels == 1:
        return input_shape
    raise WeightspaceError(
        f"make_target('transformer'): input_shape {list(input_shape)} does not match "
        f"patch_size {cfg['patch_size']} ({n} spatial axes) and in_channels {channels}; expected "
        f"{n} spatial axes, optionally followed by {channels} channels"
    )


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
        elif cfg["arch"] == "transformer":
            if not _transformer_resizable(cfg, params):
                return None
            sizes = _transformer_sizes(params)
            if sizes["heads"] != config.get("heads", 2) and config.get("head_dim") is None:
                # The default head_dim is width // heads: keep the original dims explicitly.
                sizes["head_dim"] = int(
                    np.shape(params["blocks"]["0"]["attn"]["query"]["kernel"])[-1]
                )
            cfg.update(sizes)
        else:
            cfg["channels"] = int(np.shape(params["stem"]["kernel"])[-1])
        rebuilt = target_from_config(cfg)
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    shapes = [tuple(np.shape(a)) for a in jax.tree.leaves(params)]
    if jax.tree.structure(params) != rebuilt.treedef or shapes != [s.shape for s in rebuilt.spec]:
        return None
    return rebuilt.config


def _transformer_sizes(params: Any) -> dict[str, Any]:
    """`heads` and `mlp_dim` of `Transformer` params, one int where all blocks agree."""
    blocks = [params["blocks"][str(i)] for i in range(len(params["blocks"]))]
    out = {
        "heads": [int(np.shape(b["attn"]["query"]["kernel"])[1]) for b in blocks],
        "mlp_dim": [int(np.shape(b["mlp1"]["kernel"])[-1]) for b in blocks],
    }
    return {k: v[0] if len(set(v)) == 1 else v for k, v in out.items()}


def _transformer_resizable(config: dict[str, Any], params: Any) -> bool:
    """Whether `params` differ from `config`'s transformer in whole heads and MLP units only.

    A compact model with fewer residual units or head dims computes the original's
    LayerNorm statistics over the original width and its attention scale
    ``1 / sqrt(head_dim)`` with the original `head_dim` (`hyper.compact.remove_units`:
    the masked original); a narrower `Transformer` would compute both at the new sizes,
    another function, so no config describes it.
    """
    shapes = {s.path: s.shape for s in target_from_config(config).spec}
    blocks = params["blocks"]
    same_dims = all(
        np.shape(blocks[str(i)]["attn"][n]["kernel"])[-1]
        == shapes[f"blocks/{i}/attn/{n}/kernel"][-1]
        for i in range(len(blocks))
        for n in ("query", "key", "value")
    )
    return same_dims and np.shape(params["patch"]["kernel"])[-1] == shapes["patch/kernel"][-1]
