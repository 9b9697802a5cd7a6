"""Convolutions rewritten as patch matmuls, for populations on XLA:CPU.

On a CPU, XLA runs a convolution of many targets at once (`jax.vmap` over weights) as a
grouped convolution, and any convolution inside a loop (`lax.scan`, where an epoch runs)
without its fast kernels; training a population of CNNs is then tens of times slower than
training its members one by one. As a matmul of image patches (strided slices of the
padded input) with the flattened kernel, the same convolution vmaps to a batched matmul
and differentiates to slices, pads and matmuls, which XLA:CPU runs fast everywhere.

`convs_as_matmuls(fn)` traces `fn` and evaluates its jaxpr with every plain convolution
(no dilation, no feature or batch groups) replaced by that matmul; other primitives run
unchanged. Results equal the convolution's up to float rounding. `for_populations(fn)` does
so on XLA:CPU only: the function to vmap over targets or to run inside a loop.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from hyper import jaxpr as jaxpr_lib

__all__ = ["conv_as_matmul", "convs_as_matmuls", "for_populations"]


def conv_as_matmul(
    lhs: jax.Array,
    rhs: jax.Array,
    *,
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.conv_general_dilated` without dilation or groups, as one patch matmul.

    Args:
      lhs, rhs: input and kernel, laid out as `dimension_numbers` (a
        `lax.ConvDimensionNumbers`) says.
      window_strides: stride per spatial axis.
      padding: ``(low, high)`` non-negative padding per spatial axis.
      precision, preferred_element_type: passed to the matmul.

    Returns:
      the convolution, laid out as ``dimension_numbers.out_spec``.
    """
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    nsp = len(lhs_spec) - 2
    x = jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))  # [N, *spatial, C]
    w = jnp.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))  # [*window, C, O]
    x = jnp.pad(x, ((0, 0), *[tuple(p) for p in padding], (0, 0)))
    window = w.shape[:nsp]
    out = [(x.shape[1 + i] - window[i]) // window_strides[i] + 1 for i in range(nsp)]
    strides = (1, *window_strides, 1)
    cols = []
    for offset in itertools.product(*(range(k) for k in window)):
        limit = [o + s * (n - 1) + 1 for o, s, n in zip(offset, window_strides, out, strict=True)]
        cols.append(jax.lax.slice(x, (0, *offset, 0), (x.shape[0], *limit, x.shape[-1]), strides))
    patches = jnp.stack(cols, axis=-2).reshape(x.shape[0], *out, -1)  # [N, *out, window*C]
    y = jax.lax.dot_general(
        patches,
        w.reshape(-1, w.shape[-1]),
        (((patches.ndim - 1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )  # [N, *out, O]
    order = (out_spec[0], *out_spec[2:], out_spec[1])
    return jnp.transpose(y, [order.index(d) for d in range(nsp + 2)])


def _is_plain_conv(eqn: Any) -> bool:
    p = eqn.params
    return (
        eqn.primitive.name == "conv_general_dilated"
        and p["feature_group_count"] == 1
        and p["batch_group_count"] == 1
        and all(d == 1 for d in p["lhs_dilation"])
        and all(d == 1 for d in p["rhs_dilation"])
        and all(lo >= 0 and hi >= 0 for lo, hi in p["padding"])
    )


def _has_conv(jaxpr: Any) -> bool:
    return any(
        _is_plain_conv(step.eqn)
        for step in jaxpr_lib.steps(jaxpr, differentiable=True)
        if step.kind == "eqn"
    )


def _replace(eqn: Any, invals: list[Any]) -> list[Any] | None:
    if not _is_plain_conv(eqn):
        return None
    p = eqn.params
    return [
        conv_as_matmul(
            *invals,
            window_strides=p["window_strides"],
            padding=p["padding"],
            dimension_numbers=p["dimension_numbers"],
            precision=p["precision"],
            preferred_element_type=p["preferred_element_type"],
        )
    ]


def _eval(closed: Any, args: Sequence[Any]) -> list[Any]:
    # Calls are inlined only where a convolution hides (others run as they are), and
    # never calls with custom derivatives: the result is differentiated when training.
    return jaxpr_lib.evaluate(
        closed,
        args,
        replace=_replace,
        differentiable=True,
        inline=lambda eqn, body: _has_conv(body),
    )


def convs_as_matmuls(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with its plain convolutions computed by `conv_as_matmul`.

    `fn` is traced at each call (inside `jit`/`vmap`/`grad` traces as well); if it has no
    plain convolution, `fn` itself runs, so results are unchanged.
    """

    @functools.wraps(fn)
    def wrapped(*args):
        flat, tree = jax.tree.flatten(args)
        closed, out_shape = jax.make_jaxpr(
            lambda *leaves: fn(*jax.tree.unflatten(tree, leaves)), return_shape=True
        )(*flat)
        if not _has_conv(closed.jaxpr):
            return fn(*args)
        outs = _eval(closed, flat)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return wrapped


def for_populations(fn: Callable) -> Callable:
    """`fn` as it runs fastest vmapped over targets or inside a `lax.scan` on the default
    backend: on XLA:CPU with its convolutions as patch matmuls (`convs_as_matmuls`),
    elsewhere unchanged."""
    return convs_as_matmuls(fn) if jax.default_backend() == "cpu" else fn
