"""`Target`: a network architecture whose weights are data.

A target is a static description of every weight leaf (`LeafSpec`) plus pure functions
`init(key) -> params` and `apply(params, x) -> y`. Params are a nested dict of arrays
with string keys (the natural Flax layout); a *population* is the same pytree with a
leading `targets` axis on every leaf.

Targets are built from a Flax NNX module (`Target.from_nnx`), a Flax Linen module and a
sample input (`Target.from_linen`), or a pure function and a params template
(`Target.from_function`). Roles, fan-in/out, layer order and neuron axes are derived
once, here; every other part of weightspace reads them from the spec.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from hyper.tree import Params, check_str_keys, flatten_dict, leaf_paths, nest, path_str

ROLES = (
    "kernel",
    "bias",
    "norm_scale",
    "norm_shift",
    "running_stat",
    "embedding",
    "other",
)

__all__ = [
    "ROLES",
    "LeafSpec",
    "Params",
    "Target",
    "init_compiler_options",
    "leaf_paths",
    "path_str",
]


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """What one weight leaf is.

    Attributes:
      path: slash-separated path in the params tree, e.g. ``"convs/0/kernel"``.
      shape: shape of the leaf for one target (no `targets` axis).
      dtype: numpy dtype name, e.g. ``"float32"``.
      role: one of `ROLES`.
      fan_in: inputs feeding one output unit (kernel: in-channels x receptive field).
      fan_out: outputs fed by one input unit (kernel: out-channels x receptive field).
      layer: index of the layer this leaf belongs to, in forward order.
      layer_name: path of the layer (the leaf's parent, without a Linen collection such as
        ``"params"``), e.g. ``"convs/0"``.
      layer_kind: ``"dense"``, ``"conv"``, ``"norm"``, ``"embedding"`` or ``"other"``.
      in_axis: axis indexing the layer's input neurons/channels, or None.
      out_axis: axis indexing the layer's output neurons/channels, or None. Permuting
        hidden units permutes these axes (the weight-space symmetries).
      trainable: False for non-trainable state such as BatchNorm running statistics.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    role: str
    fan_in: int
    fan_out: int
    layer: int
    layer_name: str
    layer_kind: str
    in_axis: int | None
    out_axis: int | None
    trainable: bool = True

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LeafSpec:
        d = dict(d)
        d["shape"] = tuple(int(s) for s in d["shape"])
        return cls(**d)


# ---------------------------------------------------------------------------------------
# Spec inference
# ---------------------------------------------------------------------------------------

_STAT_NAMES = ("mean", "var", "running_mean", "running_var")
_KERNEL_NAMES = ("kernel", "weight")
_NORM_KINDS = {"running_stat": "norm", "norm_scale": "norm", "norm_shift": "norm"}


def _layer_of(path: str, collections: Sequence[str]) -> str:
    """The layer path of a leaf: its parent, without a leading variable collection."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    head, _, rest = parent.partition("/")
    return rest if head in collections else parent


def _infer_roles(
    paths: Sequence[str],
    layers: Sequence[str],
    shapes: Sequence[tuple[int, ...]],
    stat_mask: Sequence[bool],
    overrides: Mapping[str, str] | None,
) -> list[tuple[str, str]]:
    """(role, layer_kind) per leaf from names, shapes and the other leaves of its layer."""
    names = [p.rsplit("/", 1)[-1] for p in paths]
    siblings: dict[str, set[str]] = {}
    kernel_ndim: dict[str, int] = {}
    for layer, name, shape in zip(layers, names, shapes, strict=True):
        siblings.setdefault(layer, set()).add(name)
        if name in _KERNEL_NAMES and len(shape) >= 2:
            kernel_ndim.setdefault(layer, len(shape))
    out = []
    for layer, name, shape, is_stat in zip(layers, names, shapes, stat_mask, strict=True):
        sib = siblings[layer]
        has_kernel = layer in kernel_ndim
        # A 1-D "weight" is a norm scale in the PyTorch naming ("bn.weight", "bn.bias").
        has_scale = "scale" in sib or ("weight" in sib and not has_kernel)
        role, kind = "other", "other"
        if is_stat or (name in _STAT_NAMES and not has_kernel):
            role, kind = "running_stat", "norm"
        elif name in _KERNEL_NAMES and len(shape) >= 2:
            role, kind = "kernel", ("dense" if len(shape) == 2 else "conv")
        elif name == "embedding" and len(shape) == 2:
            role, kind = "embedding", "embedding"
        elif name in ("scale", "weight") and not has_kernel:
            role, kind = "norm_scale", "norm"
        elif name == "bias" and not has_kernel and has_scale:
            role, kind = "norm_shift", "norm"
        elif name == "bias":
            role = "bias"
            kind = "other" if not has_kernel else ("dense" if kernel_ndim[layer] == 2 else "conv")
        out.append((role, kind))
    if overrides:
        for pattern, r in overrides.items():
            if r not in ROLES:
                raise ValueError(f"roles[{pattern!r}]: unknown role {r!r}; expected one of {ROLES}")
            hits = [i for i, p in enumerate(paths) if fnmatch.fnmatchcase(p, pattern)]
            if not hits:
                raise ValueError(f"roles[{pattern!r}] matches no leaf; leaves are {list(paths)}")
            for i in hits:
                nd = len(shapes[i])
                if (r == "kernel" and nd < 2) or (r == "embedding" and nd != 2):
                    raise ValueError(
                        f"roles[{pattern!r}]: leaf {paths[i]!r} has shape {shapes[i]}; a {r} "
                        f"needs {'2 or more axes' if r == 'kernel' else '2 axes'}"
                    )
                kind = out[i][1]
                if r == "kernel":
                    kind = "dense" if len(shapes[i]) == 2 else "conv"
                out[i] = (r, _NORM_KINDS.get(r, kind))
    return out


def _fans_and_axes(
    role: str, shape: tuple[int, ...], kernel_shape: tuple[int, ...] | None
) -> tuple[int, int, int | None, int | None]:
    nd = len(shape)
    if role == "kernel":
        rf = int(math.prod(shape[:-2]))
        return shape[-2] * rf, shape[-1] * rf, nd - 2, nd - 1
    if role == "embedding":
        return 1, shape[-1], None, nd - 1
    if role == "bias":
        if kernel_shape is not None:
            rf = int(math.prod(kernel_shape[:-2]))
            return kernel_shape[-2] * rf, kernel_shape[-1] * rf, None, nd - 1
        return 1, shape[-1] if nd else 1, None, (nd - 1 if nd else None)
    if role in ("norm_scale", "norm_shift", "running_stat"):
        return 1, 1, None, (nd - 1 if nd else None)
    return (shape[-1] if nd else 1), 1, None, None


def sub_jaxpr(eqn: Any) -> Any:
    """The one sub-jaxpr (`ClosedJaxpr` or `Jaxpr`) among an equation's params, or None
    (none, or several: a `cond`'s branches)."""
    subs = [
        v
        for v in eqn.params.values()
        if isinstance(v, jax.extend.core.ClosedJaxpr | jax.extend.core.Jaxpr)
    ]
    return subs[0] if len(subs) == 1 else None


def _first_use(jaxpr: Any) -> list[int]:
    """Position (in a depth-first walk over primitives) of the first read of each input.

    Calls with one sub-jaxpr (`jit`, `custom_jvp_call`, `scan`, ...) are walked into, so a
    wrapped or jitted apply still yields the order of the primitives inside it.
    """
    never = 10**9
    first = [never] * len(jaxpr.invars)
    counter = 0

    def walk(jx, alias):
        nonlocal counter
        for eqn in jx.eqns:
            inner = sub_jaxpr(eqn)
            inner = inner.jaxpr if isinstance(inner, jax.extend.core.ClosedJaxpr) else inner
            if inner is not None and len(inner.invars) == len(eqn.invars):
                walk(
                    inner,
                    {
                        iv: alias[ov]
                        for iv, ov in zip(inner.invars, eqn.invars, strict=True)
                        if isinstance(ov, jax.extend.core.Var) and ov in alias
                    },
                )
                continue
            for v in eqn.invars:
                if isinstance(v, jax.extend.core.Var) and v in alias:
                    first[alias[v]] = min(first[alias[v]], counter)
            counter += 1

    walk(jaxpr, {v: i for i, v in enumerate(jaxpr.invars)})
    return first


def _forward_order(
    apply_fn: Callable[[Params, Any], Any], params: Params, x: Any, paths: Sequence[str]
) -> list[int]:
    """Index of the first primitive that reads each leaf (its position in forward order)."""
    treedef = jax.tree.structure(params)

    def fn(leaves):
        return apply_fn(jax.tree.unflatten(treedef, leaves), x)

    leaves = jax.tree.leaves(params)
    try:
        jaxpr = jax.make_jaxpr(fn)(leaves).jaxpr
    except Exception:  # noqa: BLE001 - ordering is best effort; fall back to path order
        return list(range(len(paths)))
    return _first_use(jaxpr)


def _build_spec(
    params: Params,
    stat_paths: set[str],
    apply_fn: Callable[[Params, Any], Any] | None,
    sample_x: Any,
    roles: Mapping[str, str] | None,
    collections: Sequence[str] = (),
) -> tuple[LeafSpec, ...]:
    """One `LeafSpec` per leaf of `params`.

    Args:
      collections: top-level keys that name variable collections (Linen's ``"params"``,
        ``"batch_stats"``); they are not part of a layer's name, so a BatchNorm's scale
        and its running statistics belong to one layer.
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = [path_str(p) for p, _ in flat]
    shapes = [tuple(int(s) for s in np.shape(v)) for _, v in flat]
    dtypes = [str(np.dtype(v.dtype)) for _, v in flat]
    layers = [_layer_of(p, collections) for p in paths]
    rk = _infer_roles(paths, layers, shapes, [p in stat_paths for p in paths], roles)
    if apply_fn is not None and sample_x is not None:
        first_use = _forward_order(apply_fn, params, sample_x, paths)
    else:
        first_use = list(range(len(paths)))
    layer_first: dict[str, int] = {}
    for layer, fu in zip(layers, first_use, strict=True):
        layer_first[layer] = min(layer_first.get(layer, 10**9), fu)
    # Layers ordered by first use; leaves never read (unused params) go last in path order.
    layer_order = sorted(layer_first, key=lambda n: (layer_first[n], layers.index(n)))
    layer_index = {n: i for i, n in enumerate(layer_order)}
    kernel_shape = {}
    for layer, shape, (role, _) in zip(layers, shapes, rk, strict=True):
        if role == "kernel":
            kernel_shape.setdefault(layer, shape)
    specs = []
    for path, layer, shape, dtype, (role, kind) in zip(
        paths, layers, shapes, dtypes, rk, strict=True
    ):
        fan_in, fan_out, in_axis, out_axis = _fans_and_axes(role, shape, kernel_shape.get(layer))
        specs.append(
            LeafSpec(
                path=path,
                shape=shape,
                dtype=dtype,
                role=role,
                fan_in=int(fan_in),
                fan_out=int(fan_out),
                layer=layer_index[layer],
                layer_name=layer,
                layer_kind=kind,
                in_axis=in_axis,
                out_axis=out_axis,
                trainable=role != "running_stat",
            )
        )
    return tuple(specs)


def init_compiler_options() -> dict[str, Any] | None:
    """XLA options for programs that run once per population, such as initialisation.

    On CPU, LLVM -O1: random initialisers (threefry rounds, truncated normals) compile
    2-6x faster than at the default -O2 and give bit-identical weights (checked in
    `tests/test_target.py`); they run once, so their slightly slower code costs nothing.
    None (the defaults) on accelerators.
    """
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


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

    return nnx.merge(graphdef, _once(fn, eager, jax.random.key(seed)))


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


def _once(fast: Callable, nested: Callable, key: jax.Array) -> Any:
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


# ---------------------------------------------------------------------------------------
# Target
# ---------------------------------------------------------------------------------------


class Target:
    """A network architecture whose weights are data.

    Do not call the constructor directly; use `from_nnx`, `from_linen` or `from_function`.

    Attributes:
      name: a human-readable name.
      spec: one `LeafSpec` per leaf, in `jax.tree.leaves(params)` order.
      input_shape: shape of one input example (no batch axis), if known.
      config: JSON-able description used to rebuild the target (e.g. by a zoo loader).
    """

    def __init__(
        self,
        *,
        name: str,
        spec: tuple[LeafSpec, ...],
        treedef: Any,
        init_fn: Callable[[jax.Array], Params],
        apply_fn: Callable[[Params, Any], Any],
        train_apply_fn: Callable[[Params, Any, jax.Array], tuple[Any, Params]] | None = None,
        input_shape: tuple[int, ...] | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        self.name = name
        self.spec = spec
        self.treedef = treedef
        self._init_fn = init_fn
        self._apply_fn = apply_fn
        self._train_apply_fn = train_apply_fn
        self.input_shape = input_shape
        self.config = dict(config or {})
        self._by_path = {s.path: s for s in spec}
        self._apply_pop = jax.jit(jax.vmap(self._apply_fn, in_axes=(0, None)))
        self._apply_pop_x = jax.jit(jax.vmap(self._apply_fn, in_axes=(0, 0)))
        self._apply_jit = jax.jit(self._apply_fn)
        self._train_apply_jit = None if train_apply_fn is None else jax.jit(train_apply_fn)
        once = init_compiler_options()  # top-level programs only: JAX refuses them nested
        self._init_jit = jax.jit(self._init_fn, compiler_options=once)
        self._init_nested = jax.jit(self._init_fn)
        self._init_pop = jax.jit(jax.vmap(self._init_fn), compiler_options=once)
        self._init_pop_nested = jax.jit(jax.vmap(self._init_fn))

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_nnx(
        cls,
        module: Any,
        *,
        sample_input: Any = None,
        name: str | None = None,
        roles: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
        init: Callable[[jax.Array], Any] | None = None,
    ) -> Target:
        """Builds a target from a Flax NNX module.

        `nnx.Param` leaves become trainable weights; `nnx.BatchStat` leaves running
        statistics (carried in the params tree, updated by `train_apply`). Dropout and other
        RNG streams are reseeded per call from the key given to `train_apply`; `apply`
        runs the module in eval mode.

        Args:
          module: an NNX module instance (its current values are the template). It may be
            abstract (from ``nnx.eval_shape``), which skips computing template values;
            then give `init` or rely on `default_init`.
          sample_input: one batch of inputs, used to order layers by their forward use.
          name: target name (default: the module's class name).
          roles: optional ``{path_glob: role}`` overrides of the inferred roles.
          config: JSON-able description stored on the target.
          init: ``key -> module`` building a fresh module (used by `init`); without
            it, `init` samples by role (see `default_init`).
        """
        from flax import nnx

        def _split(m):
            return nnx.split(m, nnx.Param, nnx.BatchStat, ...)

        module.train()
        gd_train, p_state, s_state, rest = _split(module)
        module.eval()
        gd_eval = _split(module)[0]
        module.train()
        # Abstract leaves (nnx.eval_shape) become placeholders: only shapes and dtypes of the
        # template matter, and train_apply reseeds RNG streams before each call.
        p_state, s_state, rest = (jax.tree.map(_materialize, t) for t in (p_state, s_state, rest))

        def _pure(state):
            # Variables flatten with a trailing "value" key; the spec path is the attribute path.
            return {
                path_str(kp).removesuffix("/value"): v
                for kp, v in jax.tree_util.tree_flatten_with_path(state)[0]
            }

        p_flat, s_flat = _pure(p_state), _pure(s_state)
        if not p_flat:
            raise ValueError("from_nnx: the module has no nnx.Param leaves")
        overlap = set(p_flat) & set(s_flat)
        if overlap:
            raise ValueError(f"from_nnx: paths both Param and BatchStat: {sorted(overlap)}")
        p_def, s_def = jax.tree.structure(p_state), jax.tree.structure(s_state)
        p_paths, s_paths = list(p_flat), list(s_flat)
        params = nest({**p_flat, **s_flat})

        def to_states(params):
            flat = flatten_dict(params)
            p = jax.tree.unflatten(p_def, [flat[k] for k in p_paths])
            s = jax.tree.unflatten(s_def, [flat[k] for k in s_paths])
            return p, s

        rest_leaves, rest_def = jax.tree.flatten(rest)

        def fresh_rest():
            # New Variable objects per call: a module merged inside a jit or vmap trace may
            # not mutate (reseed) Variables created outside it.
            return jax.tree.unflatten(rest_def, rest_leaves)

        def apply_fn(params, x):
            p, s = to_states(params)
            return nnx.merge(gd_eval, p, s, fresh_rest())(x)

        def train_apply_fn(params, x, key):
            p, s = to_states(params)
            m = nnx.merge(gd_train, p, s, fresh_rest())
            if rest_leaves:
                nnx.reseed(m, default=key, dropout=key, params=key)
            y = m(x)
            _, _, s2, _ = _split(m)
            new = flatten_dict(params)
            new.update(_pure(s2))
            return y, nest(new)

        target: Target | None = None
        if init is None:

            def init_fn(key):
                return default_init(target, key)
        else:

            def init_fn(key):
                m = init(key)
                _, p, s, _ = _split(m)
                return nest({**_pure(p), **_pure(s)})

        params = jax.tree.map(jnp.asarray, params)
        spec = _build_spec(params, set(s_paths), apply_fn, sample_input, roles)
        input_shape = None if sample_input is None else tuple(np.shape(sample_input)[1:])
        target = cls(
            name=name or type(module).__name__,
            spec=spec,
            treedef=jax.tree.structure(params),
            init_fn=init_fn,
            apply_fn=apply_fn,
            train_apply_fn=train_apply_fn,
            input_shape=input_shape,
            config=config,
        )
        return target

    @classmethod
    def from_linen(
        cls,
        module: Any,
        sample_input: Any,
        *,
        name: str | None = None,
        roles: Mapping[str, str] | None = None,
        train_kwargs: Mapping[str, Any] | None = None,
        eval_kwargs: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Target:
        """Builds a target from a Flax Linen module and a sample input batch.

        Collections: ``params`` are trainable; ``batch_stats`` are running statistics.
        The params tree is ``{"params": ..., "batch_stats": ...}`` (the Linen variables).

        Args:
          module: a Linen module.
          sample_input: one batch of inputs for `module.init`.
          train_kwargs / eval_kwargs: extra call arguments in training / evaluation
            (e.g. ``{"train": True}``).
        """
        train_kwargs = dict(train_kwargs or {})
        eval_kwargs = dict(eval_kwargs or {})
        variables = module.init(jax.random.key(0), sample_input, **eval_kwargs)
        unknown = set(variables) - {"params", "batch_stats"}
        if unknown:
            raise ValueError(
                f"from_linen: unsupported variable collections {sorted(unknown)}; "
                "expected 'params' and optionally 'batch_stats'"
            )
        variables = jax.tree.map(jnp.asarray, dict(variables))
        has_stats = "batch_stats" in variables

        def init_fn(key):
            return dict(module.init(key, sample_input, **eval_kwargs))

        def apply_fn(params, x):
            return module.apply(params, x, **eval_kwargs)

        def train_apply_fn(params, x, key):
            if has_stats:
                y, upd = module.apply(
                    params, x, mutable=["batch_stats"], rngs={"dropout": key}, **train_kwargs
                )
                return y, {**params, "batch_stats": upd["batch_stats"]}
            return module.apply(params, x, rngs={"dropout": key}, **train_kwargs), params

        stat_paths = (
            set(leaf_paths({"batch_stats": variables["batch_stats"]})) if has_stats else set()
        )
        spec = _build_spec(
            variables, stat_paths, apply_fn, sample_input, roles, collections=tuple(variables)
        )
        return cls(
            name=name or type(module).__name__,
            spec=spec,
            treedef=jax.tree.structure(variables),
            init_fn=init_fn,
            apply_fn=apply_fn,
            train_apply_fn=train_apply_fn,
            input_shape=tuple(np.shape(sample_input)[1:]),
            config=config,
        )

    @classmethod
    def from_function(
        cls,
        apply: Callable[[Params, Any], Any],
        params_template: Params,
        *,
        init: Callable[[jax.Array], Params] | None = None,
        sample_input: Any = None,
        name: str = "function",
        roles: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Target:
        """Builds a target from a pure ``apply(params, x)`` and a params template.

        Args:
          apply: pure function of a params pytree (nested dicts with string keys) and inputs.
          params_template: arrays or `jax.ShapeDtypeStruct`s giving the structure.
          init: optional ``key -> params``; by default kernels are sampled LeCun-normal by
            fan-in, biases and norm shifts are 0, norm scales 1.
        """
        if not isinstance(params_template, Mapping):
            raise TypeError(
                "from_function: params_template must be a nested dict, got "
                f"{type(params_template).__name__}"
            )
        check_str_keys(params_template)
        if not jax.tree.leaves(params_template):
            raise ValueError("from_function: params_template has no leaves")
        template = jax.tree.map(lambda a: jnp.zeros(np.shape(a), a.dtype), params_template)
        spec = _build_spec(template, set(), apply, sample_input, roles)
        treedef = jax.tree.structure(template)
        target: Target
        if init is None:

            def init_fn(key):
                return default_init(target, key)
        else:
            init_fn = init
        target = cls(
            name=name,
            spec=spec,
            treedef=treedef,
            init_fn=init_fn,
            apply_fn=apply,
            input_shape=None if sample_input is None else tuple(np.shape(sample_input)[1:]),
            config=config,
        )
        return target

    # --- the functional interface -----------------------------------------------------

    def init(self, key: jax.Array) -> Params:
        """Fresh weights (and state) for one target (jitted)."""
        return _once(self._init_jit, self._init_nested, key)

    def init_population(self, key: jax.Array, n: int) -> Params:
        """`n` independently initialised targets, stacked: every leaf `[n, ...]`."""
        if n < 1:
            raise ValueError(f"init_population: n must be >= 1, got {n}")
        return _once(self._init_pop, self._init_pop_nested, jax.random.split(key, n))

    def apply(self, params: Params, x: Any) -> Any:
        """Runs one target in evaluation mode (running statistics, no dropout)."""
        self.validate(params)
        return self._apply_jit(params, x)

    def train_apply(self, params: Params, x: Any, key: jax.Array) -> tuple[Any, Params]:
        """Runs one target in training mode; returns ``(y, params with updated state)``."""
        self.validate(params)
        if self._train_apply_jit is None:
            return self._apply_jit(params, x), params
        return self._train_apply_jit(params, x, key)

    def apply_population(self, population: Params, x: Any, *, per_target_inputs: bool = False):
        """Runs every target of a population on `x` (one jitted vmap).

        Args:
          population: params with a leading `targets` axis.
          x: inputs `[batch, ...]` shared by all targets, or `[targets, batch, ...]` when
            `per_target_inputs` is True.

        Returns:
          outputs `[targets, batch, ...]`.
        """
        self.validate(population, batched=True)
        if per_target_inputs:
            return self._apply_pop_x(population, x)
        return self._apply_pop(population, x)

    @property
    def pure_apply(self) -> Callable[[Params, Any], Any]:
        """The unvalidated `apply(params, x)`, for use inside user transforms."""
        return self._apply_fn

    @property
    def pure_train_apply(self) -> Callable[[Params, Any, jax.Array], tuple[Any, Params]]:
        """The unvalidated `train_apply(params, x, key)`."""
        if self._train_apply_fn is None:
            return lambda p, x, k: (self._apply_fn(p, x), p)
        return self._train_apply_fn

    # --- description --------------------------------------------------------------------

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.spec]

    @property
    def num_params(self) -> int:
        """Number of trainable scalars of one target."""
        return sum(s.size for s in self.spec if s.trainable)

    @property
    def num_state(self) -> int:
        """Number of non-trainable scalars (e.g. running statistics) of one target."""
        return sum(s.size for s in self.spec if not s.trainable)

    @property
    def num_layers(self) -> int:
        return 1 + max(s.layer for s in self.spec)

    def leaf(self, path: str) -> LeafSpec:
        try:
            return self._by_path[path]
        except KeyError:
            raise KeyError(f"{self.name}: no leaf {path!r}; leaves are {self.paths}") from None

    def select(self, *globs: str, roles: Sequence[str] | None = None) -> list[LeafSpec]:
        """Leaf specs whose path matches any glob (all if none) and, optionally, a role."""
        if roles is not None:
            bad = set(roles) - set(ROLES)
            if bad:
                raise ValueError(f"select: unknown roles {sorted(bad)}; expected {ROLES}")
        out = [
            s
            for s in self.spec
            if (not globs or any(fnmatch.fnmatchcase(s.path, g) for g in globs))
            and (roles is None or s.role in roles)
        ]
        return out

    def trainable_mask(self) -> Params:
        """A params-shaped tree of bools, True for trainable leaves."""
        return jax.tree.unflatten(self.treedef, [s.trainable for s in self.spec])

    def abstract_params(self, n: int | None = None) -> Params:
        """`jax.ShapeDtypeStruct`s of one target, or of a population of `n`."""
        lead = () if n is None else (n,)
        return jax.tree.unflatten(
            self.treedef,
            [jax.ShapeDtypeStruct(lead + s.shape, np.dtype(s.dtype)) for s in self.spec],
        )

    def describe(self) -> str:
        """A table of the spec, one line per leaf."""
        rows = [f"Target {self.name}: {self.num_params} params, {self.num_layers} layers"]
        for s in sorted(self.spec, key=lambda s: (s.layer, s.path)):
            rows.append(
                f"  [{s.layer:2d}] {s.path:32s} {str(s.shape):18s} {s.role:12s} "
                f"fan_in={s.fan_in} fan_out={s.fan_out} axes(in={s.in_axis}, out={s.out_axis})"
            )
        return "\n".join(rows)

    def spec_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.spec]

    def __repr__(self) -> str:
        return f"Target({self.name!r}, leaves={len(self.spec)}, num_params={self.num_params})"

    # --- validation ---------------------------------------------------------------------

    def validate(self, params: Any, *, batched: bool = False) -> int | None:
        """Checks that `params` (or a population if `batched`) matches the spec.

        Returns:
          the number of targets if `batched`, else None.

        Raises:
          TypeError: `params` is not a mapping, or a leaf is not an array.
          ValueError: a missing or extra leaf, a wrong shape or dtype, or inconsistent
            `targets` axes; the message names the leaf path and both shapes.
        """
        if not isinstance(params, Mapping):
            raise TypeError(
                f"{self.name}: params must be a nested dict, got {type(params).__name__}"
            )
        try:
            check_str_keys(params)
            flat = flatten_dict(params)
        except TypeError as e:
            raise TypeError(f"{self.name}: {e}") from None
        expected = set(self._by_path)
        missing = sorted(expected - set(flat))
        extra = sorted(set(flat) - expected)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing leaves {missing}")
            if extra:
                parts.append(f"unexpected leaves {extra}")
            raise ValueError(f"{self.name}: params do not match the target: " + "; ".join(parts))
        n = None
        for s in self.spec:
            v = flat[s.path]
            if not hasattr(v, "shape") or not hasattr(v, "dtype"):
                raise TypeError(f"{self.name}: leaf {s.path!r} is {type(v).__name__}, not an array")
            shape = tuple(v.shape)
            if batched:
                if len(shape) != len(s.shape) + 1 or shape[1:] != s.shape:
                    raise ValueError(
                        f"{self.name}: leaf {s.path!r} has shape {shape}, expected "
                        f"(targets, {', '.join(map(str, s.shape))}) i.e. (n,)+{s.shape}"
                    )
                if n is None:
                    n = shape[0]
                elif shape[0] != n:
                    raise ValueError(
                        f"{self.name}: leaf {s.path!r} has {shape[0]} targets, "
                        f"other leaves have {n}"
                    )
            elif shape != s.shape:
                raise ValueError(
                    f"{self.name}: leaf {s.path!r} has shape {shape}, expected {s.shape}"
                )
            if np.dtype(v.dtype) != np.dtype(s.dtype):
                raise ValueError(
                    f"{self.name}: leaf {s.path!r} has dtype {np.dtype(v.dtype)}, "
                    f"expected {s.dtype}"
                )
        return n


def _materialize(x: Any) -> Any:
    """A zero array (an RNG key for key dtypes) in place of a `jax.ShapeDtypeStruct`."""
    if not isinstance(x, jax.ShapeDtypeStruct):
        return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        key = jnp.broadcast_to(jax.random.key(0), x.shape)
        if key.dtype != x.dtype:
            raise ValueError(f"cannot make a placeholder RNG key of dtype {x.dtype}")
        return key
    return jnp.asarray(np.zeros(x.shape, x.dtype))


def default_init(target: Target, key: jax.Array) -> Params:
    """Initialises one target by role: kernels LeCun-normal by fan-in, embeddings normal,
    biases and norm shifts and running means 0, norm scales and running variances 1."""
    keys = jax.random.split(key, len(target.spec))
    leaves = []
    for k, s in zip(keys, target.spec, strict=True):
        dt = np.dtype(s.dtype)
        if s.role == "kernel":
            leaves.append(jax.random.normal(k, s.shape, dt) / math.sqrt(max(s.fan_in, 1)))
        elif s.role == "embedding":
            leaves.append(jax.random.normal(k, s.shape, dt))
        elif s.role == "norm_scale" or (s.role == "running_stat" and s.path.endswith("var")):
            leaves.append(jnp.ones(s.shape, dt))
        else:
            leaves.append(jnp.zeros(s.shape, dt))
    return jax.tree.unflatten(target.treedef, leaves)
