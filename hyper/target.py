"""`Target`: a network architecture whose weights are data.

A target is a static description of every weight leaf (`LeafSpec`, see `hyper.spec`) plus
pure functions `init(key) -> params` and `apply(params, x) -> y`. Params are a nested dict
of arrays with string keys (the natural Flax layout); a *population* is the same pytree
with a leading `targets` axis on every leaf.

Targets are built from a Flax NNX module (`Target.from_nnx`), a Flax Linen module and a
sample input (`Target.from_linen`), or a pure function and a params template
(`Target.from_function`), or derived from another target with fewer units
(`Target.derive`). Roles, fan-in/out, layer order and neuron axes are derived once, at
construction; every other part of weightspace reads them from the spec. Two targets are
compared in one place: `Target.spec_differences` / `check_same_spec`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper import resize
from hyper.errors import WeightspaceError, WeightspaceTypeError
from hyper.init_programs import init_compiler_options, run_once
from hyper.spec import ROLES, LeafSpec, build_spec, default_init, respec
from hyper.tree import Params, check_str_keys, flatten_dict, leaf_paths, nest, path_str

__all__ = [
    "ROLES",
    "LeafSpec",
    "Params",
    "Target",
    "check_same_spec",
    "leaf_paths",
    "path_str",
]


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
      input_dtype: the sample input's dtype (token ids: an integer), else float32.
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
        input_dtype: Any = None,
    ):
        self.name = name
        self.spec = spec
        self.treedef = treedef
        self._init_fn = init_fn
        self._apply_fn = apply_fn
        self._train_apply_fn = train_apply_fn
        self.input_shape = input_shape
        self.input_dtype = np.dtype(np.float32 if input_dtype is None else input_dtype)
        self.config = dict(config or {})
        self._by_path = {s.path: s for s in spec}
        # Set by `derive`: the original computation a target with fewer units re-evaluates.
        self._resize_source: resize.Source | None = None
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
            raise WeightspaceError("from_nnx: the module has no nnx.Param leaves")
        overlap = set(p_flat) & set(s_flat)
        if overlap:
            raise WeightspaceError(f"from_nnx: paths both Param and BatchStat: {sorted(overlap)}")
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
        spec = build_spec(params, set(s_paths), apply_fn, sample_input, roles)
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
            input_dtype=None if sample_input is None else np.asarray(sample_input).dtype,
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
            raise WeightspaceError(
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
        spec = build_spec(
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
            input_dtype=np.asarray(sample_input).dtype,
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
            raise WeightspaceTypeError(
                "from_function: params_template must be a nested dict, got "
                f"{type(params_template).__name__}"
            )
        check_str_keys(params_template)
        if not jax.tree.leaves(params_template):
            raise WeightspaceError("from_function: params_template has no leaves")
        template = jax.tree.map(lambda a: jnp.zeros(np.shape(a), a.dtype), params_template)
        spec = build_spec(template, set(), apply, sample_input, roles)
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
            input_dtype=None if sample_input is None else np.asarray(sample_input).dtype,
        )
        return target

    # --- the functional interface -----------------------------------------------------

    def init(self, key: jax.Array) -> Params:
        """Fresh weights (and state) for one target (jitted)."""
        return run_once(self._init_jit, self._init_nested, key)

    def init_population(self, key: jax.Array, n: int) -> Params:
        """`n` independently initialised targets, stacked: every leaf `[n, ...]`."""
        if n < 1:
            raise WeightspaceError(f"init_population: n must be >= 1, got {n}")
        return run_once(self._init_pop, self._init_pop_nested, jax.random.split(key, n))

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
        """Runs every target of a population on `x` (one jitted vmap): the plain forward pass.
        For the loss and accuracy of a population use `hyper.train.evaluate` (in chunks of
        examples, with the fast CPU convolutions).

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

    @property
    def pure_init(self) -> Callable[[jax.Array], Params]:
        """The unjitted `init(key)`, for use inside user transforms."""
        return self._init_fn

    def derive(
        self,
        params: Params,
        *,
        name: str | None = None,
        config: dict[str, Any] | None = None,
        check: bool = True,
    ) -> Target:
        """A target for `params`, whose leaves are leaves of this target with possibly fewer
        units (e.g. after `hyper.compact.remove_units`).

        The new target keeps this target's leaf descriptions with new shapes and fans. When
        `params` has every leaf of this target and some are smaller, its apply and
        train_apply re-evaluate this target's traced computation at the new sizes
        (`hyper.resize`): any network works (Linen, NNX attention, plain functions), and the
        result equals this target on the params with the removed units' slices zeroed
        (norm statistics included; a sum over the units that would change is refused).
        Leaves that `params` lacks are dropped and this target's apply functions are reused
        (the apply must then tolerate their absence, e.g. a network that loops over the
        blocks it is given). Nothing is traced unless `check`.

        Args:
          params: one network with the new shapes.
          name: default ``"<target name>-compact"``.
          config: stored on the new target (default: ``{"derived_from": self.config}``).
          check: trace the apply once (`jax.eval_shape`) on `input_shape` and raise if it
            fails.

        Raises:
          ValueError: a leaf unknown to this target, a leaf whose number of axes changed,
            or (with `check`) an apply that does not accept the new shapes.
        """
        if not isinstance(params, dict):
            raise WeightspaceTypeError(
                f"derive_target: params must be a nested dict, got {type(params).__name__}"
            )
        paths = leaf_paths(params)
        known = self._by_path
        specs = []
        for path, leaf in zip(paths, jax.tree.leaves(params), strict=True):
            if path not in known:
                raise WeightspaceError(f"derive_target: leaf {path!r} is not a leaf of {self.name}")
            s = known[path]
            shape = tuple(int(d) for d in np.shape(leaf))
            if len(shape) != len(s.shape):
                raise WeightspaceError(
                    f"derive_target: leaf {path!r} has shape {shape}; {self.name} has {s.shape}"
                )
            specs.append(dataclasses.replace(s, shape=shape))
        kernels: dict[str, LeafSpec] = {}
        for s in specs:
            if s.role == "kernel":
                kernels.setdefault(s.layer_name, respec(s, s.shape))
        renumber = {old: new for new, old in enumerate(sorted({s.layer for s in specs}))}
        new_specs = [
            dataclasses.replace(
                respec(s, s.shape, kernels.get(s.layer_name)), layer=renumber[s.layer]
            )
            for s in specs
        ]
        new: Target

        def init_fn(key: jax.Array) -> Params:
            return default_init(new, key)

        apply_fn, train_fn, source = self._apply_fn, self._train_apply_fn, None
        if paths == self.paths and any(
            a.shape != b.shape for a, b in zip(specs, self.spec, strict=True)
        ):
            source = self._resize_source or resize.source(
                self._apply_fn,
                self._train_apply_fn,
                self.treedef,
                [jax.ShapeDtypeStruct(s.shape, np.dtype(s.dtype)) for s in self.spec],
                self.paths,
                what=self.name,
            )
            apply_fn, train_fn = source.functions()
        new = Target(
            name=name or f"{self.name}-compact",
            spec=tuple(new_specs),
            treedef=jax.tree.structure(params),
            init_fn=init_fn,
            apply_fn=apply_fn,
            train_apply_fn=train_fn,
            input_shape=self.input_shape,
            config=config if config is not None else {"derived_from": self.config},
            input_dtype=self.input_dtype,
        )
        new._resize_source = source
        if check and self.input_shape is not None:
            x = jax.ShapeDtypeStruct((1, *self.input_shape), self.input_dtype)
            try:
                y_new = jax.eval_shape(new.pure_apply, new.abstract_params(), x)
                y_old = jax.eval_shape(self.pure_apply, self.abstract_params(), x)
            except WeightspaceError:
                raise
            except Exception as e:  # noqa: BLE001 - name the target in any tracing error
                raise WeightspaceError(
                    f"{new.name}: apply does not accept the new shapes: {e}"
                ) from e
            if jax.tree.map(np.shape, y_new) != jax.tree.map(np.shape, y_old):
                raise WeightspaceError(
                    f"{new.name}: the output shape changed with the new sizes "
                    f"({jax.tree.map(np.shape, y_old)} -> {jax.tree.map(np.shape, y_new)}); "
                    "remove hidden units only"
                )
        return new

    # --- comparison ---------------------------------------------------------------------

    def spec_differences(
        self, other: Target, *, fields: Sequence[str] = ("shape", "dtype", "role")
    ) -> list[str]:
        """How the leaves of `other` differ from this target's; empty when they agree.

        Args:
          other: the target to compare with.
          fields: the `LeafSpec` fields compared per leaf (paths are always compared).

        Returns:
          one message per difference: the leaves only one target has, or per leaf and
          field the two values.
        """
        pa, pb = self.paths, other.paths
        if pa != pb:
            only_a = sorted(set(pa) - set(pb))
            only_b = sorted(set(pb) - set(pa))
            return [
                f"targets {self.name} and {other.name} have different leaves: "
                f"only in the first {only_a}, only in the second {only_b}"
            ]
        return [
            f"targets {self.name} and {other.name} differ at leaf {a.path!r}: "
            f"{field} {getattr(a, field)} vs {getattr(b, field)}"
            for a, b in zip(self.spec, other.spec, strict=True)
            for field in fields
            if getattr(a, field) != getattr(b, field)
        ]

    def config_differences(self, other: Target) -> list[str]:
        """Config keys in which two targets compute different functions (dropout aside: it
        does not change evaluation); empty when they agree or either has no config."""
        ca = {k: v for k, v in (self.config or {}).items() if k != "dropout"}
        cb = {k: v for k, v in (other.config or {}).items() if k != "dropout"}
        if not ca or not cb:
            return []
        return sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))

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
                raise WeightspaceError(f"select: unknown roles {sorted(bad)}; expected {ROLES}")
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
                f"fan_in={s.fan_in} fan_out={s.fan_out} "
                f"axes(in={_axes_text(s.in_axes)}, out={_axes_text(s.out_axes)})"
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
            raise WeightspaceTypeError(
                f"{self.name}: params must be a nested dict, got {type(params).__name__}"
            )
        try:
            check_str_keys(params)
            flat = flatten_dict(params)
        except TypeError as e:
            raise WeightspaceTypeError(f"{self.name}: {e}") from None
        expected = set(self._by_path)
        missing = sorted(expected - set(flat))
        extra = sorted(set(flat) - expected)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing leaves {missing}")
            if extra:
                parts.append(f"unexpected leaves {extra}")
            raise WeightspaceError(
                f"{self.name}: params do not match the target: " + "; ".join(parts)
            )
        n = None
        for s in self.spec:
            v = flat[s.path]
            if not hasattr(v, "shape") or not hasattr(v, "dtype"):
                raise WeightspaceTypeError(
                    f"{self.name}: leaf {s.path!r} is {type(v).__name__}, not an array"
                )
            shape = tuple(v.shape)
            if batched:
                if len(shape) != len(s.shape) + 1 or shape[1:] != s.shape:
                    raise WeightspaceError(
                        f"{self.name}: leaf {s.path!r} has shape {shape}, expected "
                        f"(targets, {', '.join(map(str, s.shape))}) i.e. (n,)+{s.shape}"
                    )
                if n is None:
                    n = shape[0]
                elif shape[0] != n:
                    raise WeightspaceError(
                        f"{self.name}: leaf {s.path!r} has {shape[0]} targets, "
                        f"other leaves have {n}"
                    )
            elif shape != s.shape:
                raise WeightspaceError(
                    f"{self.name}: leaf {s.path!r} has shape {shape}, expected {s.shape}"
                )
            if np.dtype(v.dtype) != np.dtype(s.dtype):
                raise WeightspaceError(
                    f"{self.name}: leaf {s.path!r} has dtype {np.dtype(v.dtype)}, "
                    f"expected {s.dtype}"
                )
        return n


def _axes_text(axes: tuple[int, ...]) -> str:
    """``None``, ``1`` or ``(1, 2)``: a leaf's neuron axes for `Target.describe`."""
    return "None" if not axes else str(axes[0]) if len(axes) == 1 else str(axes)


def _materialize(x: Any) -> Any:
    """A zero array (an RNG key for key dtypes) in place of a `jax.ShapeDtypeStruct`."""
    if not isinstance(x, jax.ShapeDtypeStruct):
        return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        key = jnp.broadcast_to(jax.random.key(0), x.shape)
        if key.dtype != x.dtype:
            raise WeightspaceError(f"cannot make a placeholder RNG key of dtype {x.dtype}")
        return key
    return jnp.asarray(np.zeros(x.shape, x.dtype))


def check_same_spec(target_a: Target, target_b: Target) -> None:
    """Raises ValueError naming the first leaf whose path, shape, dtype or role differs
    (`Target.spec_differences`). Use it before aligning or merging networks given with two
    `Target`s."""
    diffs = target_a.spec_differences(target_b)
    if diffs:
        raise WeightspaceError(diffs[0])
