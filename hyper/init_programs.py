"""Programs that run once per population (initialisation), compiled for compile speed.

`init_compiler_options` are the XLA options for such programs (LLVM -O1 on CPU);
`many_programs_compiler_options` those for programs compiled once per architecture of a
large set (hundreds of targets in one process);
`run_once` runs one with them at the top level and without them under another transform;
`init_module` builds a Flax NNX module with one cached compiled program per arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

__all__ = [
    "cached_module_programs",
    "init_compiler_options",
    "init_module",
    "many_programs_compiler_options",
    "run_once",
]


def init_compiler_options() -> dict[str, Any] | None:
    """XLA options for programs that run once per population, such as initialisation.

    On CPU, LLVM -O1: random initialisers (threefry rounds, truncated normals) compile
    2-6x faster than at the default -O2 and give bit-identical weights (checked in
    `tests/test_hyper_target.py`); they run once, so their slightly slower code costs nothing.
    None (the defaults) on accelerators.
    """
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


def many_programs_compiler_options() -> dict[str, Any] | None:
    """XLA options for programs compiled once per architecture when a process holds
    hundreds of architectures (a wild-park zoo read by the probe metanet).

    On CPU: XLA's legacy loop emitters instead of its fusion emitters, and the module
    compiled as one LLVM object instead of split for parallel code generation. XLA:CPU maps
    each object it compiles into memory separately, and Linux allows 65,530 mappings per
    process (``vm.max_map_count``): with the defaults one park conv net's forward and VJP
    held 400-1,200 mappings, about a hundred architectures exhausted them, and LLVM failed
    with "Cannot allocate memory" before the process crashed. With these options the same
    programs hold 18-53 mappings (six park architectures), compile 1.5-3x faster and run in
    about the same time. None (the defaults) on accelerators.
    """
    if jax.default_backend() != "cpu":
        return None
    return {"xla_cpu_use_fusion_emitters": False, "xla_cpu_parallel_codegen_split_count": 1}


def init_module(cls: Callable[..., Any], /, *args: Any, seed: int = 0, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs, rngs=nnx.Rngs(seed))`` for a Flax NNX module, its parameters
    initialised by one compiled program (`init_compiler_options`) instead of eagerly.

    Eager construction compiles one small program per initialiser and shape (a graph
    metanet: ~40 of them, ~4 s on 2 CPU cores); this compiles one (~2 s) and shares it
    between every module built with the same arguments, whatever the `seed`. The weights
    equal the eager ones up to float rounding (fused multiplies: an ulp here and there), and
    the same arguments and seed always give the same weights. Arguments must be hashable
    (ints, strings, tuples); otherwise, or under another transform, the module is built
    eagerly.
    """
    from flax import nnx

    key = (id(cls), args, tuple(sorted(kwargs.items())))
    try:
        program = _MODULE_PROGRAMS.get(key)
    except TypeError:  # unhashable arguments
        program, key = None, None
    if key is not None and program is None:
        program = _MODULE_PROGRAMS[key] = _module_program(cls, args, key[2])
    if program is None:
        return cls(*args, **kwargs, rngs=nnx.Rngs(seed))
    graphdef, fn = program

    def eager(key: jax.Array) -> Any:
        return nnx.state(cls(*args, **kwargs, rngs=nnx.Rngs(key)))

    return nnx.merge(graphdef, run_once(fn, eager, jax.random.key(seed)))


# (id(cls), args, kwargs) -> (graphdef, compiled init); NNX module classes are not hashable.
# The program closes over `cls`, which keeps the class (and its id) alive.
_MODULE_PROGRAMS: dict[tuple, tuple[Any, Callable]] = {}


def _module_program(cls: Callable[..., Any], args: tuple, kwargs: tuple) -> tuple[Any, Callable]:
    from flax import nnx

    def build(key: jax.Array) -> Any:  # nnx.Rngs(seed) is nnx.Rngs(jax.random.key(seed))
        return cls(*args, **dict(kwargs), rngs=nnx.Rngs(key))

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build(jax.random.key(0))))
    fn = jax.jit(lambda key: nnx.state(build(key)), compiler_options=init_compiler_options())
    return graphdef, fn


def run_once(fast: Callable, nested: Callable, key: jax.Array) -> Any:
    """`fast` (compiled with `init_compiler_options`) at the top level; under another
    transform, `nested` (the same program without options, which JAX refuses nested)."""
    if isinstance(key, jax.core.Tracer):
        return nested(key)
    try:
        return fast(key)
    except ValueError as e:  # inside a jit, with a key closed over from outside
        if "compiler_options" not in str(e):
            raise
        return nested(key)


def cached_module_programs() -> int:
    """How many `init_module` programs are cached (one per class and arguments)."""
    return len(_MODULE_PROGRAMS)
