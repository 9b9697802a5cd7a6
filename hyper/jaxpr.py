"""The one jaxpr walker and evaluator of weightspace.

Several rooms read a target's traced computation (`jax.make_jaxpr` of its apply): spec
inference orders layers by the first primitive that reads each leaf, symmetry analysis
propagates permutable axes, group activations and probe features record intermediate
values, the CPU training path replaces convolutions by matmuls, and pruning counts FLOPs.
They all see the computation through this module, with one rule for what a *call* is:

- `INLINE_CALLS`: call primitives whose body computes their outputs (``jit``,
  ``custom_jvp_call``, ``remat2``, ...). `steps` walks into them, so a wrapped or
  jitted apply reads like its primitives; every other equation (``scan``, ``cond``, ...)
  is one opaque step.
- `PLAIN_CALLS`, a subset: calls that do nothing but evaluate their body. Inlining the
  others drops a custom derivative rule or a rematerialisation policy, so an evaluation
  that will be differentiated (`differentiable=True`) keeps those as calls.

Only this module iterates a jaxpr's equations; this is the code most exposed to JAX
internals (e.g. the older ``get_bind_params`` tuple is handled in `bind`, once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax.extend.core as jcore

__all__ = [
    "INLINE_CALLS",
    "PLAIN_CALLS",
    "Step",
    "all_eqns",
    "bind",
    "call_body",
    "evaluate",
    "first_use",
    "is_drop",
    "steps",
    "sub_jaxpr",
]

PLAIN_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call"})
"""Call primitives that only evaluate their body: inlining them changes nothing."""

# jax.checkpoint's primitive is "remat2" in JAX 0.10 ("checkpoint"/"remat" in others).
INLINE_CALLS = PLAIN_CALLS | frozenset(
    {"custom_jvp_call", "custom_vjp_call", "remat2", "checkpoint", "remat"}
)
"""Call primitives whose body computes their outputs; walkers and evaluators inline them."""


def sub_jaxpr(eqn: Any) -> Any:
    """The one sub-jaxpr (`ClosedJaxpr` or `Jaxpr`) among an equation's params, or None
    (none, or several: a ``while``'s cond and body, a ``cond``'s tuple of branches)."""
    subs = [
        v
        for v in eqn.params.values()
        if isinstance(v, jcore.ClosedJaxpr | jcore.Jaxpr)
        or (isinstance(v, tuple) and any(isinstance(u, jcore.ClosedJaxpr | jcore.Jaxpr) for u in v))
    ]
    if len(subs) != 1 or isinstance(subs[0], tuple):
        return None
    return subs[0]


def _closed(jx: Any) -> Any:
    return jx if isinstance(jx, jcore.ClosedJaxpr) else jcore.ClosedJaxpr(jx, [])


def call_body(eqn: Any, *, differentiable: bool = False) -> Any:
    """The body (a `ClosedJaxpr`) of a call in `INLINE_CALLS` (`PLAIN_CALLS` if
    `differentiable`) whose inputs and outputs match the equation's, or None."""
    if eqn.primitive.name not in (PLAIN_CALLS if differentiable else INLINE_CALLS):
        return None
    sub = sub_jaxpr(eqn)
    if sub is None:
        return None
    sub = _closed(sub)
    if len(sub.jaxpr.invars) != len(eqn.invars) or len(sub.jaxpr.outvars) != len(eqn.outvars):
        return None
    return sub


class Step(NamedTuple):
    """One step of a depth-first walk over a jaxpr, in evaluation order.

    Attributes:
      kind: ``"eqn"`` (a primitive, or a call that is not inlined), ``"call"`` (entering
        an inlined call's body) or ``"return"`` (leaving it).
      scope: where the equation lives: ``()`` for the top-level jaxpr, ``(*scope, index)``
        inside the body of the call at `index`. A body shared by several call sites is
        walked once per site, each in its own scope.
      index: the equation's position in its jaxpr.
      eqn: the equation.
      body: the inlined body (`ClosedJaxpr`) for ``"call"``/``"return"``, else None.
    """

    kind: str
    scope: tuple[int, ...]
    index: int
    eqn: Any
    body: Any = None

    @property
    def inner(self) -> tuple[int, ...]:
        """The scope of the body of a ``"call"``/``"return"`` step."""
        return (*self.scope, self.index)


InlineRule = Callable[[Any, Any], bool]
"""``(eqn, body) -> bool``: whether to inline a call that `call_body` accepts."""


def steps(
    jaxpr: Any,
    *,
    differentiable: bool = False,
    inline: InlineRule | None = None,
    scope: tuple[int, ...] = (),
) -> Iterator[Step]:
    """Walks `jaxpr` (a `Jaxpr` or `ClosedJaxpr`) depth first, into inlined calls.

    Args:
      differentiable: inline only `PLAIN_CALLS`.
      inline: further restricts which calls are inlined (default: all that qualify).
    """
    jx = jaxpr.jaxpr if isinstance(jaxpr, jcore.ClosedJaxpr) else jaxpr
    for k, eqn in enumerate(jx.eqns):
        body = call_body(eqn, differentiable=differentiable)
        if body is not None and (inline is None or inline(eqn, body)):
            yield Step("call", scope, k, eqn, body)
            yield from steps(body, differentiable=differentiable, inline=inline, scope=(*scope, k))
            yield Step("return", scope, k, eqn, body)
        else:
            yield Step("eqn", scope, k, eqn)


def all_eqns(jaxpr: Any) -> Iterator[Any]:
    """Every equation of `jaxpr` and of every sub-jaxpr in its params (loop bodies and
    each branch of a ``cond`` included), depth first; a call equation precedes its body."""
    jx = jaxpr.jaxpr if isinstance(jaxpr, jcore.ClosedJaxpr) else jaxpr
    for eqn in jx.eqns:
        yield eqn
        for v in eqn.params.values():
            for sub in v if isinstance(v, tuple) else (v,):
                if isinstance(sub, jcore.ClosedJaxpr | jcore.Jaxpr):
                    yield from all_eqns(sub)


def is_drop(v: Any) -> bool:
    """Whether an equation's outvar is discarded (a `DropVar`, or not a variable)."""
    return isinstance(v, jcore.DropVar) or not isinstance(v, jcore.Var)


def bind(eqn: Any, invals: Sequence[Any]) -> list[Any]:
    """Applies an equation's primitive to `invals`; returns its outputs as a list."""
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns, params = params if isinstance(params, tuple) else ((), params)  # older JAX
    with eqn.ctx.manager:
        outs = eqn.primitive.bind(*subfuns, *invals, **params)
    return list(outs) if eqn.primitive.multiple_results else [outs]


Replace = Callable[[Any, list[Any]], Sequence[Any] | None]
"""``(eqn, invals) -> outvals or None``: replaces an equation's evaluation (None: bind)."""
Record = Callable[[Step, list[Any], list[Any] | None], None]
"""``(step, invals, outvals)``: sees every step; outvals is None on ``"call"`` steps."""


def evaluate(
    closed: Any,
    args: Sequence[Any],
    *,
    record: Record | None = None,
    replace: Replace | None = None,
    differentiable: bool = False,
    inline: InlineRule | None = None,
) -> list[Any]:
    """Evaluates a `ClosedJaxpr` on `args` (like `jax.core.eval_jaxpr`), with hooks.

    Inlined calls (see `steps`) are evaluated equation by equation, so the hooks see inside
    them; the result equals binding every primitive in order.

    Args:
      closed: the jaxpr and its constants.
      args: one value per input variable.
      record: called at every step: on ``"eqn"`` and ``"return"`` steps with the
        equation's input and output values, on ``"call"`` with its inputs (which become the
        body's inputs, in the body's scope) and None.
      replace: called for every ``"eqn"`` step before binding; its non-None result is
        used instead.
      differentiable, inline: which calls to inline, as in `steps`.

    Returns:
      the values of the jaxpr's outputs.
    """
    closed = _closed(closed)
    env: dict[Any, Any] = {}

    def read(scope, v):
        return v.val if isinstance(v, jcore.Literal) else env[(scope, v)]

    def write(scope, vs, vals):
        for v, val in zip(vs, vals, strict=True):
            if not is_drop(v):
                env[(scope, v)] = val

    write((), closed.jaxpr.constvars, closed.consts)
    write((), closed.jaxpr.invars, args)
    for step in steps(closed, differentiable=differentiable, inline=inline):
        eqn, scope = step.eqn, step.scope
        invals = [read(scope, v) for v in eqn.invars]
        if step.kind == "call":
            inner = step.body.jaxpr
            write(step.inner, inner.constvars, step.body.consts)
            write(step.inner, inner.invars, invals)
            outvals = None
        elif step.kind == "return":
            outvals = [read(step.inner, v) for v in step.body.jaxpr.outvars]
            write(scope, eqn.outvars, outvals)
        else:
            outvals = None if replace is None else replace(eqn, invals)
            outvals = bind(eqn, invals) if outvals is None else list(outvals)
            write(scope, eqn.outvars, outvals)
        if record is not None:
            record(step, invals, outvals)
    return [read((), v) for v in closed.jaxpr.outvars]


def first_use(jaxpr: Any) -> list[int]:
    """Position (counting primitive equations, calls walked into) of the first read of
    each input of `jaxpr`; ``10**9`` for inputs never read.

    A wrapped or jitted apply thus still yields the order of the primitives inside it.
    """
    jx = jaxpr.jaxpr if isinstance(jaxpr, jcore.ClosedJaxpr) else jaxpr
    never = 10**9
    first = [never] * len(jx.invars)
    alias = {((), v): i for i, v in enumerate(jx.invars)}
    counter = 0
    for step in steps(jx):
        keys = [(step.scope, v) for v in step.eqn.invars if isinstance(v, jcore.Var)]
        if step.kind == "call":
            for iv, ov in zip(step.body.jaxpr.invars, step.eqn.invars, strict=True):
                if isinstance(ov, jcore.Var) and (step.scope, ov) in alias:
                    alias[(step.inner, iv)] = alias[(step.scope, ov)]
        elif step.kind == "eqn":
            for key in keys:
                if key in alias:
                    first[alias[key]] = min(first[alias[key]], counter)
            counter += 1
    return first
