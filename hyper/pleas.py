"""PLeaS: merging two networks with permutations and least squares, at any width.

PLeaS (Nasery et al., "PLeaS: Merging Models with Permutations and Least Squares") merges
two networks of one architecture trained on different data or tasks, from different
initialisations or not, without training:

1. **Permutations.** `b` is aligned to `a` by activation (or weight) matching
   (`hyper.align`), so unit `i` of every structural group plays one role in both.
2. **Partial merging.** Per group, a width ``w`` in [1, 2] keeps the ``m = n - k`` units
   whose activations correlate best merged (one unit for both networks) and the ``k =
   round((w - 1) n)`` others separate (a copy of `a`'s and one of `b`'s): the merged group
   has ``m + 2k = w n`` units laid out ``[merged, a's separate, b's separate]``. ``w = 1``
   merges everything (as weight averaging after matching does); ``w = 2`` runs both
   networks side by side.
3. **Least squares.** Layer by layer in forward order, the merged kernel and bias are the
   ridge least-squares fit, on a small data sample `x`, of the merged layer's output to the
   two networks' outputs laid out the same way: at a merged unit the mean of `a`'s and
   `b`'s, at a separate unit its own network's, and at the output (logits) the mean of the
   two. A separate unit of `a` reads no separate unit of `b` (and vice versa): those
   weights stay zero, as in the paper's masked objective. The ridge pulls towards the
   partial merge's weights, so a fit the data leave free keeps them.

The layer inputs of the fit are, by default, the merged network's own activations
(``inputs="merged"``: each layer corrects what the earlier ones could not fit); with
``inputs="original"`` they are the two networks' activations laid out like the targets, as
in the paper's code (every layer fitted independently).

Nothing is specific to an architecture: groups come from `hyper.symmetry`, a wider target
from `Target.derive` (`hyper.resize` re-evaluates the traced computation at the new
sizes), and the kernels, their inputs and outputs are read from the traced apply's
contractions (``dot_general``, ``conv_general_dilated``; a convolution is fitted on its
input patches). What the fit does not cover is refused with a `WeightspaceError` naming
the leaf or primitive: normalisation layers and embeddings (their leaves are not kernels
or biases), kernels with several neuron axes (attention heads), products of two
activations (attention scores), grouped convolutions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from hyper import align, symmetry
from hyper import jaxpr as jaxpr_lib
from hyper import population as pop
from hyper.errors import WeightspaceError
from hyper.symmetry import Group, StridedAxis
from hyper.target import Params, Target

__all__ = ["Layout", "layouts", "pleas_merge", "widen"]

_CONTRACTIONS = ("dot_general", "conv_general_dilated")
_ALIASES = ("convert_element_type", "copy", "copy_p")


class Layout(NamedTuple):
    """Where each unit of one merged group comes from.

    Attributes:
      merged: `[m]` units (in both networks' order after alignment) merged into one.
      separate: `[k]` units kept once per network.
      take: `[m + 2k]` the original unit each merged-group unit reads, per network
        (``[merged, separate, separate]``).
      share: ``{"a": [m + 2k], "b": [m + 2k]}``: each network's share of a unit's value
        (1/2 at a merged unit, 1 at its own separate units, 0 at the other's).
      carry: ``{"a": ..., "b": ...}``: 1 where the unit carries that network's unit.
    """

    merged: np.ndarray
    separate: np.ndarray
    take: np.ndarray
    share: dict[str, np.ndarray]
    carry: dict[str, np.ndarray]

    @property
    def size(self) -> int:
        return len(self.take)

    def codes(self) -> np.ndarray:
        """`[m + 2k]`: 0 at merged units, 1 at `a`'s separate ones, 2 at `b`'s."""
        m, k = len(self.merged), len(self.separate)
        return np.concatenate([np.zeros(m), np.ones(k), np.full(k, 2)]).astype(np.int32)


def _widths(target: Target, groups: Sequence[Group], width: Any) -> list[float]:
    if isinstance(width, str):
        width = [width] * len(groups)
    if isinstance(width, Mapping):
        unknown = sorted(set(width) - {g.name for g in groups})
        if unknown:
            raise WeightspaceError(
                f"pleas_merge: width names groups {unknown}; {target.name} has groups "
                f"{[g.name for g in groups]}"
            )
        ws = [width.get(g.name, 1.0) for g in groups]
    elif isinstance(width, int | float | np.number):
        ws = [width] * len(groups)
    else:
        ws = list(width)
        if len(ws) != len(groups):
            raise WeightspaceError(
                f"pleas_merge: {len(ws)} widths for the {len(groups)} groups of {target.name} "
                f"({[g.name for g in groups]})"
            )
    for g, w in zip(groups, ws, strict=True):
        if not isinstance(w, int | float | np.number) or not 1.0 <= float(w) <= 2.0:
            raise WeightspaceError(
                f"pleas_merge: width {w!r} for group {g.name!r}; a width is a number from 1.0 "
                "(fully merged) to 2.0 (both networks side by side)"
            )
    return [float(w) for w in ws]


def layouts(scores: Sequence[Any], widths: Sequence[float]) -> list[Layout]:
    """Per group, the merged units (the best-matched ``n - k``) and the separate ones.

    Args:
      scores: per group, `[n]` similarity of unit `i` of `a` and of aligned `b`.
      widths: per group, the merged width as a multiple of `n` (1.0 to 2.0).
    """
    out = []
    for score, w in zip(scores, widths, strict=True):
        score = np.asarray(score, np.float64)
        n = len(score)
        k = int(round((w - 1.0) * n))
        order = np.argsort(-score, kind="stable")
        merged, separate = np.sort(order[: n - k]), np.sort(order[n - k :])
        m = len(merged)
        take = np.concatenate([merged, separate, separate]).astype(np.int32)
        ones, zeros = np.ones(k), np.zeros(k)
        half = np.full(m, 0.5)
        share = {"a": np.concatenate([half, ones, zeros]), "b": np.concatenate([half, zeros, ones])}
        carry = {
            "a": np.concatenate([np.ones(m), ones, zeros]),
            "b": np.concatenate([np.ones(m), zeros, ones]),
        }
        out.append(Layout(merged, separate, take, share, carry))
    return out


def _wide_entry(entry: Any, new: int) -> Any:
    if isinstance(entry, StridedAxis):
        shape = list(entry.shape)
        shape[entry.sub] = new
        return entry._replace(shape=tuple(shape))
    return entry


def widen(value: Any, entry: Any, layout: Layout, factor: np.ndarray) -> Any:
    """`value` with the units of `entry` replaced by the merged group's units.

    Unit `j` of the result is ``factor[j] * value[..., layout.take[j], ...]`` along the
    entry's axis (or sub-axis, for a `StridedAxis`).
    """
    xp = np if isinstance(value, np.ndarray) else jnp
    u = symmetry.units_first(value, entry)
    u = xp.take(u, layout.take, axis=0) * xp.asarray(factor, u.dtype).reshape(
        (-1,) + (1,) * (u.ndim - 1)
    )
    shape = list(np.shape(value))
    wide = _wide_entry(entry, layout.size)
    shape[wide[1]] = int(np.prod(wide.shape)) if isinstance(wide, StridedAxis) else layout.size
    return symmetry.units_restore(u, wide, shape)


def _leaf_entries(target: Target, groups: Sequence[Group]) -> dict[str, list[tuple[int, Any]]]:
    by_leaf: dict[str, list[tuple[int, Any]]] = {}
    for gi, g in enumerate(groups):
        for e in symmetry.entries(g):
            by_leaf.setdefault(e[0], []).append((gi, e))
    for path, es in by_leaf.items():
        axes = [e[1] for _, e in es]
        if len(set(axes)) != len(axes):
            raise WeightspaceError(
                f"pleas_merge: leaf {path!r} has several groups on one axis (e.g. attention "
                "heads and head dims); PLeaS widens one group per axis"
            )
    return by_leaf


def _combine(
    value_a: Any,
    value_b: Any,
    es: Sequence[tuple[int, Any]],
    lay: Sequence[Layout],
    out_axes: Sequence[int],
) -> Any:
    """The merged value: each network's value widened along every entry (its share along
    output axes, carried along input axes), summed; 1/2 each where no output axis is a
    group (the logits, a layer nobody permutes)."""
    total = 0.0
    for net, v in (("a", value_a), ("b", value_b)):
        for gi, e in es:
            f = lay[gi].share[net] if e[1] in out_axes else lay[gi].carry[net]
            v = widen(v, e, lay[gi], f)
        total = total + v
    if not any(e[1] in out_axes for _, e in es):
        total = total * 0.5
    return total


def _check_supported(target: Target) -> None:
    problems = [
        f"leaf {s.path!r} has role {s.role!r} (layer kind {s.layer_kind!r})"
        for s in target.spec
        if s.role not in ("kernel", "bias")
    ] + [
        f"kernel {s.path!r} has in-axes {s.in_axes} and out-axes {s.out_axes}"
        for s in target.spec
        if s.role == "kernel" and (len(s.in_axes) != 1 or len(s.out_axes) > 1)
    ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise WeightspaceError(
            f"pleas_merge: {target.name}: {'; '.join(problems[:3])}{more}. PLeaS's least "
            "squares fits the kernels (one input and one output neuron axis) and biases of "
            "dense and conv layers only: normalisation, statistics, embeddings and attention "
            "projections with heads (transformers, BatchNorm) are not supported"
        )


class _Use(NamedTuple):
    eqn: Any
    act: Any  # the activation operand
    out: Any  # the contraction's result


def _contractions(target: Target, params: Params, x: Any) -> dict[int, _Use]:
    """Per kernel leaf index: the contraction that reads it, its input and output on `x`."""
    leaves = list(jax.tree.leaves(params))
    closed = jax.make_jaxpr(symmetry.apply_on_leaves(target))(leaves, x)
    alias = {((), v): i for i, v in enumerate(closed.jaxpr.invars[: len(leaves)])}
    kernels = {i for i, s in enumerate(target.spec) if s.role == "kernel"}
    uses: dict[int, _Use] = {}

    def record(step: jaxpr_lib.Step, invals: list[Any], outvals: Any) -> None:
        eqn = step.eqn
        keys = [(step.scope, v) if isinstance(v, jcore.Var) else None for v in eqn.invars]
        if step.kind == "call":
            for iv, k in zip(step.body.jaxpr.invars, keys, strict=True):
                if k in alias:
                    alias[(step.inner, iv)] = alias[k]
            return
        if step.kind != "eqn":
            return
        name = eqn.primitive.name
        if name in _ALIASES and keys[0] in alias:
            alias[(step.scope, eqn.outvars[0])] = alias[keys[0]]
        if name not in _CONTRACTIONS:
            return
        leaf = [alias.get(k) for k in keys]
        if leaf[1] is None or leaf[1] not in kernels or leaf[0] is not None:
            raise WeightspaceError(
                f"pleas_merge: {target.name}: primitive {name!r} does not multiply an "
                "activation (left) by one kernel leaf (right)"
                + (
                    " (a product of two activations, e.g. attention)"
                    if leaf == [None, None]
                    else ""
                )
                + "; PLeaS fits dense and conv kernels only"
            )
        if leaf[1] in uses:
            raise WeightspaceError(
                f"pleas_merge: kernel {target.spec[leaf[1]].path!r} of {target.name} is used "
                "by several contractions (tied weights); PLeaS fits each kernel once"
            )
        if name == "conv_general_dilated" and (
            eqn.params["feature_group_count"] != 1 or eqn.params["batch_group_count"] != 1
        ):
            raise WeightspaceError(
                f"pleas_merge: kernel {target.spec[leaf[1]].path!r} of {target.name} is a "
                "grouped convolution; PLeaS fits plain convolutions only"
            )
        if name == "dot_general" and eqn.params["dimension_numbers"][1] != ((), ()):
            raise WeightspaceError(
                f"pleas_merge: kernel {target.spec[leaf[1]].path!r}: batched dot_general"
            )
        uses[leaf[1]] = _Use(eqn, invals[0], outvals[0])

    jaxpr_lib.evaluate(closed, [*leaves, jnp.asarray(x)], record=record)
    return uses


def _kernel_perm(eqn: Any, ndim: int) -> tuple[int, ...]:
    """Axes of a kernel in matrix order: its input features (as the activation's are
    flattened), then its outputs."""
    if eqn.primitive.name == "conv_general_dilated":
        _, rhs, _ = eqn.params["dimension_numbers"]
        return (rhs[1], *rhs[2:], rhs[0])
    (_, rc), _ = eqn.params["dimension_numbers"]
    return (*rc, *[a for a in range(ndim) if a not in rc])


def _to_matrix(kernel: Any, eqn: Any, outs: int) -> np.ndarray:
    k = np.transpose(np.asarray(kernel, np.float64), _kernel_perm(eqn, np.ndim(kernel)))
    return k.reshape(-1, outs)


def _from_matrix(mat: np.ndarray, eqn: Any, shape: tuple[int, ...]) -> np.ndarray:
    perm = _kernel_perm(eqn, len(shape))
    k = mat.reshape([shape[a] for a in perm])
    return np.transpose(k, np.argsort(perm))


def _design(use: _Use, kernel_shape: tuple[int, ...]) -> np.ndarray:
    """`[rows, features]`: the contraction's input as a matrix (patches for a conv)."""
    eqn, act = use.eqn, jnp.asarray(use.act)
    if eqn.primitive.name == "conv_general_dilated":
        p = eqn.params
        lhs, rhs, out = p["dimension_numbers"]
        patches = jax.lax.conv_general_dilated_patches(
            act,
            tuple(kernel_shape[a] for a in rhs[2:]),
            p["window_strides"],
            p["padding"],
            lhs_dilation=p["lhs_dilation"],
            rhs_dilation=p["rhs_dilation"],
            dimension_numbers=p["dimension_numbers"],
        )
        return np.asarray(jnp.moveaxis(patches, out[1], -1), np.float64).reshape(
            -1, patches.shape[out[1]]
        )
    (lc, _), _ = eqn.params["dimension_numbers"]
    free = [a for a in range(act.ndim) if a not in lc]
    z = np.asarray(jnp.transpose(act, (*free, *lc)), np.float64)
    return z.reshape(int(np.prod([act.shape[a] for a in free])), -1)


def _outputs(use: _Use) -> np.ndarray:
    """`[rows, outputs]`: the contraction's result, output units last."""
    out = np.asarray(use.out, np.float64)
    if use.eqn.primitive.name == "conv_general_dilated":
        out = np.moveaxis(out, use.eqn.params["dimension_numbers"][2][1], -1)
    return out.reshape(-1, out.shape[-1])


def _act_entry(entry: Any, use: _Use) -> Any:
    """The kernel's input entry as an entry of the activation it contracts with."""
    eqn = use.eqn
    if eqn.primitive.name == "conv_general_dilated":
        ax = eqn.params["dimension_numbers"][0][1]
    else:
        (lc, rc), _ = eqn.params["dimension_numbers"]
        ax = lc[list(rc).index(entry[1])]
    if isinstance(entry, StridedAxis):
        return StridedAxis("", ax, entry.shape, entry.sub)
    return ("", ax)


def _fit(z: np.ndarray, y: np.ndarray, w0: np.ndarray, ridge: float) -> np.ndarray:
    """``argmin |z w - y|^2 + lam |w - w0|^2``, `lam` = `ridge` x the mean feature power."""
    zz = z.T @ z
    lam = ridge * max(float(np.mean(np.diag(zz))), 1e-12)
    return np.linalg.solve(zz + lam * np.eye(len(zz)), z.T @ y + lam * w0)


def _input_codes(
    shape: tuple[int, ...],
    ins: Sequence[tuple[int, Any]],
    lay: Sequence[Layout],
    eqn: Any,
    outs: int,
) -> np.ndarray:
    """Per row of a merged kernel's matrix (an input feature): the `Layout.codes` of its
    input unit (0 for inputs no group holds)."""
    codes = np.zeros(shape, np.int32)
    for gi, e in ins:
        e = _wide_entry(e, lay[gi].size)
        u = symmetry.units_first(codes, e)
        u = np.broadcast_to(lay[gi].codes().reshape((-1,) + (1,) * (u.ndim - 1)), u.shape)
        codes = symmetry.units_restore(np.array(u), e, shape)
    return _to_matrix(codes, eqn, outs)[:, 0]


def _solve(
    z: np.ndarray,
    y: np.ndarray,
    w0: np.ndarray,
    b0: np.ndarray | None,
    in_codes: np.ndarray,
    out_codes: np.ndarray,
    ridge: float,
) -> tuple[np.ndarray, Any]:
    """The masked fit of one layer: per kind of output unit (merged, `a`'s, `b`'s), the
    inputs it may read (merged and its own network's; all for merged outputs) and the bias.
    Returns the kernel matrix and the bias (None without one)."""
    zb = np.concatenate([z, np.ones((len(z), 1))], 1)
    w0b = np.concatenate([w0, (np.zeros(y.shape[1]) if b0 is None else b0)[None]], 0)
    new = np.zeros_like(w0b)
    for code in np.unique(out_codes):
        cols = out_codes == code
        rows = np.concatenate(
            [(in_codes == 0) | (in_codes == code) | (code == 0), [b0 is not None]]
        )
        new[np.ix_(rows, cols)] = _fit(zb[:, rows], y[:, cols], w0b[np.ix_(rows, cols)], ridge)
    return new[:-1], (None if b0 is None else new[-1])


def pleas_merge(
    target: Target,
    params_a: Params,
    params_b: Params,
    x: Any,
    *,
    width: float | Sequence[float] | Mapping[str, float] = 1.0,
    matching: str = "activation",
    inputs: str = "merged",
    ridge: float = 1e-4,
    name: str | None = None,
) -> tuple[Target, Params]:
    """Merges two networks of `target` by PLeaS (see the module docstring).

    Args:
      target: the target of both networks (dense/conv layers, elementwise activations,
        pooling, reshapes).
      params_a, params_b: one network each.
      x: a data sample `[batch, ...]` for the matching and the least squares (a few hundred
        examples of both networks' data).
      width: the merged width per group as a multiple of its units: one number for every
        group, one per group (`hyper.symmetry.structural_groups` order) or a mapping from
        group name (others 1.0); from 1.0 (fully merged) to 2.0 (side by side).
      matching: ``"activation"`` (on `x`, as PLeaS) or ``"weight"``.
      inputs: ``"merged"`` (the merged network's own activations) or ``"original"`` (the
        two networks' activations) as the inputs of each layer's fit.
      ridge: regularisation of the least squares towards the partial merge, relative to
        the mean power of the layer's input features.
      name: the merged target's name (default ``"<target>-pleas"``).

    Returns:
      ``(merged_target, merged_params)``: a target with the merged widths (`target` itself
      when nothing widens) and one network of it.

    Raises:
      WeightspaceError: bad widths or options, params that do not match `target`, or a
        network PLeaS does not cover (the message names the leaf or primitive).
    """
    if matching not in ("activation", "weight"):
        raise WeightspaceError(
            f"pleas_merge: matching {matching!r}; expected 'activation' or 'weight'"
        )
    if inputs not in ("merged", "original"):
        raise WeightspaceError(f"pleas_merge: inputs {inputs!r}; expected 'merged' or 'original'")
    if not ridge >= 0:
        raise WeightspaceError(f"pleas_merge: ridge must be >= 0, got {ridge}")
    target.validate(params_a)
    target.validate(params_b)
    _check_supported(target)
    groups = symmetry.structural_groups(target)
    widths = _widths(target, groups, width)
    x = jnp.asarray(x)
    if matching == "activation":
        perms = align.activation_matching(target, params_a, params_b, x)
    else:
        perms = align.weight_matching(target, params_a, params_b)
    params_b = symmetry.permute(target, params_b, perms, groups=groups)
    sims = align.activation_similarity(target, pop.of_one(params_a), pop.of_one(params_b), x)
    lay = layouts([np.diag(np.asarray(s[0])) for s in sims], widths)
    by_leaf = _leaf_entries(target, groups)

    la = [np.asarray(v, np.float64) for v in jax.tree.leaves(params_a)]
    lb = [np.asarray(v, np.float64) for v in jax.tree.leaves(params_b)]
    wide = [
        _combine(a, b, by_leaf.get(s.path, []), lay, s.out_axes)
        for s, a, b in zip(target.spec, la, lb, strict=True)
    ]
    dtypes = [np.dtype(s.dtype) for s in target.spec]

    def as_params(leaves):
        return jax.tree.unflatten(
            target.treedef, [jnp.asarray(v, d) for v, d in zip(leaves, dtypes, strict=True)]
        )

    if all(np.shape(w) == s.shape for w, s in zip(wide, target.spec, strict=True)):
        merged_target = target
    else:
        merged_target = target.derive(
            as_params(wide),
            name=name or f"{target.name}-pleas",
            config={"derived_from": target.config, "pleas_widths": widths},
            check=True,
        )

    uses_a = _contractions(target, as_params(la), x)
    uses_b = _contractions(target, as_params(lb), x)
    bias_of = {
        s.layer: i for i, s in enumerate(target.spec) if s.role == "bias" and len(s.shape) == 1
    }
    for ki in sorted(uses_a, key=lambda i: target.spec[i].layer):
        s = target.spec[ki]
        es = by_leaf.get(s.path, [])
        ins = [(gi, e) for gi, e in es if e[1] in s.in_axes]
        outs = [(gi, e) for gi, e in es if e[1] in s.out_axes]
        ua, ub = uses_a[ki], uses_b[ki]
        bi = bias_of.get(s.layer)
        ya, yb = _outputs(ua), _outputs(ub)
        n_out = ya.shape[1]
        if bi is not None and target.spec[bi].shape != (n_out,):
            bi = None
        if bi is not None:
            ya, yb = ya + la[bi], yb + lb[bi]
        if outs:
            ((go, _),) = outs
            y = sum(widen(v, ("", 1), lay[go], lay[go].share[n]) for n, v in (("a", ya), ("b", yb)))
            out_codes = lay[go].codes()
        else:
            y, out_codes = 0.5 * (ya + yb), np.zeros(n_out, np.int32)
        if inputs == "merged":
            z = _design(_contractions(merged_target, as_params(wide), x)[ki], wide[ki].shape)
        else:  # the two networks' inputs, laid out (and shared) like the targets
            act_es = [(gi, _act_entry(e, ua)) for gi, e in ins]
            act = _combine(
                np.asarray(ua.act), np.asarray(ub.act), act_es, lay, [e[1] for _, e in act_es]
            )
            z = _design(ua._replace(act=act), wide[ki].shape)
        in_codes = _input_codes(wide[ki].shape, ins, lay, ua.eqn, y.shape[1])
        bias0 = None if bi is None else wide[bi]
        kernel, bias = _solve(
            z, y, _to_matrix(wide[ki], ua.eqn, y.shape[1]), bias0, in_codes, out_codes, ridge
        )
        wide[ki] = _from_matrix(kernel, ua.eqn, wide[ki].shape)
        if bi is not None:
            wide[bi] = bias
    return merged_target, as_params(wide)
