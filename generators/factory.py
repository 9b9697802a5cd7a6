"""The model factory: a scenario in, a compact standalone network out.

`Factory.customize(scenario)` runs the assembler (one jitted call), projects its scores to
the budget, and cuts the chosen modules and channels out of the supernet *physically*
(`hyper.compact.remove_units`): the result is a `CompactModel` whose `Target` holds only
the active modules, their kept hidden channels, and a head restricted to the task's classes
(logit ``i`` is class ``classes[i]``). `customize_many` does the assembler and projection
for hundreds of scenarios in one vmapped call and then cuts each model (host slicing, no
tracing or compilation per model).

Checkpoints: `Factory.save`/`load_factory` (supernet + assembler, Orbax) and
`export_model`/`load_model` (one compact model; it loads without the supernet).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from generators.assembler import (
    Assembler,
    Scenario,
    allowed_cost,
    class_subsets,
    group_l2_scores,
    project_to_budget,
    task_vector,
    train_assembler,
    validate_scenario,
)
from generators.supernet import (
    Supernet,
    SupernetConfig,
    load_supernet,
    pretrain,
    read_metadata,
    save_supernet,
    supernet_apply,
)
from hyper import checkpoint, compact, population, symmetry
from hyper.checkpoint import load_population, save_population
from hyper.data import Dataset
from hyper.errors import WeightspaceError, WeightspaceTypeError
from hyper.target import Params, Target

__all__ = [
    "ASSEMBLER_FORMAT",
    "CompactModel",
    "Factory",
    "build_compact",
    "compact_target_from_config",
    "export_model",
    "load_factory",
    "load_model",
    "make_factory",
    "split_for_assembler",
]

ASSEMBLER_FORMAT = "weightspace-assembler"
"""The format tag of a factory's ``assembler/`` checkpoint (`hyper.checkpoint.save_model`)."""


@dataclasses.dataclass
class CompactModel:
    """One assembled network.

    Attributes:
      target: its standalone `Target` (only the chosen modules and channels).
      params: its weights.
      classes: the supernet classes of its logits, in order.
      config: JSON description that rebuilds `target` (`compact_target_from_config`).
      cost: its cost in the factory's budget kind (exact: counted on `target`).
      fraction: `cost` over the supernet's.
    """

    target: Target
    params: Params
    classes: tuple[int, ...]
    config: dict[str, Any]
    cost: int
    fraction: float

    def predict(self, x: Any) -> np.ndarray:
        """Predicted supernet class labels `[batch]`."""
        logits = self.target.apply(self.params, jnp.asarray(x))
        return np.asarray(self.classes)[np.asarray(jnp.argmax(logits, -1))]


def _template(config: dict[str, Any]) -> Params:
    sn = SupernetConfig(**config["supernet"])
    d, n_in = sn.stem_width, int(np.prod(sn.input_shape))
    n = len(config["classes"])
    t: Params = {
        "stem": {"kernel": jnp.zeros((n_in, d)), "bias": jnp.zeros((d,))},
        "head": {"kernel": jnp.zeros((d, n)), "bias": jnp.zeros((n,))},
    }
    stages: dict[str, Any] = {}
    for s, k, w in config["modules"]:
        stages.setdefault(str(s), {})[str(k)] = {
            "up": {"kernel": jnp.zeros((d, w)), "bias": jnp.zeros((w,))},
            "down": {"kernel": jnp.zeros((w, d)), "bias": jnp.zeros((d,))},
        }
    if stages:
        t["stages"] = stages
    return t


def compact_target_from_config(config: dict[str, Any]) -> Target:
    """Rebuilds a compact model's `Target` from its config (no supernet needed)."""
    sn = SupernetConfig(**config["supernet"])
    return Target.from_function(
        supernet_apply,
        _template(config),
        sample_input=jnp.zeros((1, *sn.input_shape)),
        name=_name(config),
        config=config,
    )


def _name(config: dict[str, Any]) -> str:
    mods = ",".join(f"{s}.{k}:{w}" for s, k, w in config["modules"]) or "none"
    return f"assembled(classes={','.join(map(str, config['classes']))};modules={mods})"


class _Cutter:
    """Per supernet: host copies of the weights and the structural groups, for fast cuts."""

    def __init__(self, supernet: Supernet, params: Params):
        self.supernet = supernet
        self.params = jax.tree.map(np.asarray, params)
        groups = symmetry.structural_groups(supernet.target)
        by_producer = {g.producers: g for g in groups}
        self.module_groups = [by_producer[(f"{s.path}/up/kernel",)] for s in supernet.slots]
        self.other_groups = [g for g in groups if g not in self.module_groups]

    def cut(self, classes: Sequence[int], mask: np.ndarray, kind: str) -> CompactModel:
        sn, p = self.supernet, self.params
        classes = tuple(int(c) for c in classes)
        cls = np.asarray(classes)
        sub: Params = {
            "stem": dict(p["stem"]),
            "head": {"kernel": p["head"]["kernel"][:, cls], "bias": p["head"]["bias"][cls]},
        }
        stages: dict[str, Any] = {}
        keep, groups, modules = [], [], []
        for slot, g in zip(sn.slots, self.module_groups, strict=True):
            m = np.asarray(mask[slot.offset : slot.offset + slot.width], bool)
            if not m.any():
                continue
            stages.setdefault(str(slot.stage), {})[str(slot.module)] = p["stages"][str(slot.stage)][
                str(slot.module)
            ]
            keep.append(m)
            groups.append(g)
            modules.append([slot.stage, slot.module, int(m.sum())])
        if stages:
            sub["stages"] = stages
        config = {
            "arch": "assembled",
            "supernet": sn.config.to_json(),
            "classes": list(classes),
            "modules": modules,
        }
        name = _name(config)
        sub_target = sn.target.derive(sub, name=name, config=config, check=False)
        present = set(sub_target.paths)
        for g in self.other_groups:  # the residual stream: kept whole, minus dropped leaves
            axes = tuple(a for a in g.axes if a[0] in present)
            groups.append(
                dataclasses.replace(
                    g,
                    axes=axes,
                    strided=tuple(a for a in g.strided if a.path in present),
                    producers=tuple(x for x in g.producers if x in present),
                    consumers=tuple(x for x in g.consumers if x in present),
                )
            )
            keep.append(None)
        target, params = compact.remove_units(
            sub_target, sub, keep, groups=groups, name=name, config=config, check=False
        )
        c = sn.costs(kind)
        cost = (
            c["stem"]
            + c["head_per_class"] * len(classes)
            + sum(c["channel"] * w + c["module"] for _, _, w in modules)
        )
        return CompactModel(target, params, classes, config, int(cost), cost / c["total"])


def build_compact(
    supernet: Supernet,
    params: Params,
    classes: Sequence[int],
    mask: Any,
    *,
    kind: str = "params",
) -> CompactModel:
    """Cuts a compact model out of the supernet for a channel mask `[channels]` (bool).

    Modules without a kept channel are left out; the head keeps the rows of `classes`.
    """
    mask = np.asarray(mask, bool)
    if mask.shape != (supernet.num_channels,):
        raise WeightspaceError(f"mask must have shape ({supernet.num_channels},), got {mask.shape}")
    return _Cutter(supernet, params).cut(classes, mask, kind)


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class Factory:
    """Supernet + assembler: `customize(scenario)` -> `CompactModel`.

    Args:
      supernet: the supernet.
      params: its pretrained weights.
      assembler: a trained `Assembler`, or None to rank channels by group-L2 importance
        (the training-free baseline).
      kind: the budget's unit, ``"params"`` or ``"flops"``.
    """

    def __init__(
        self,
        supernet: Supernet,
        params: Params,
        assembler: Assembler | None = None,
        *,
        kind: str = "params",
    ):
        supernet.costs(kind)  # validates kind
        self.supernet, self.params, self.assembler, self.kind = supernet, params, assembler, kind
        self._cutter = _Cutter(supernet, params)
        c = supernet.costs(kind)
        mods, n_mod = supernet.module_of_channel, supernet.num_modules

        if assembler is None:
            prior = jnp.asarray(group_l2_scores(supernet, params))

            def scores_fn(tasks, budgets):
                return jnp.broadcast_to(prior, (tasks.shape[0], prior.shape[0]))

        else:
            graphdef, state = nnx.split(assembler)

            def scores_fn(tasks, budgets):
                return nnx.merge(graphdef, state)(tasks, budgets)

        def choose(tasks, budgets):
            scores = scores_fn(tasks, budgets)
            allowed = allowed_cost(supernet, budgets, jnp.sum(tasks, axis=1), kind)
            return jax.vmap(
                lambda s, a: project_to_budget(s, a, mods, n_mod, c["channel"], c["module"])
            )(scores, allowed)

        self._choose = jax.jit(choose)

    @property
    def choose_compilations(self) -> int:
        """How many programs `choose` has compiled (one per scenario-count bucket)."""
        return self._choose._cache_size()

    def choose(self, scenarios: Sequence[Scenario]) -> np.ndarray:
        """Channel masks `[scenarios, channels]` (bool) in one jitted, vmapped call.

        Scenario batches are padded to a power of two so a handful of programs compile.
        """
        scenarios = [_as_scenario(s) for s in scenarios]
        for s in scenarios:
            validate_scenario(self.supernet, s, self.kind)
        n = len(scenarios)
        if n == 0:
            return np.zeros((0, self.supernet.num_channels), bool)
        m = _bucket(n)
        ncls = self.supernet.config.num_classes
        tasks = np.zeros((m, ncls), np.float32)
        budgets = np.ones((m,), np.float32)
        for i, s in enumerate(scenarios):
            tasks[i] = task_vector(s.classes, ncls)
            budgets[i] = s.budget
        tasks[n:] = tasks[0]
        return np.asarray(self._choose(tasks, budgets))[:n]

    def customize(self, scenario: Scenario | None = None, **kw: Any) -> CompactModel:
        """The compact model for one scenario (or ``classes=..., budget=...``)."""
        scenario = _as_scenario(scenario if scenario is not None else kw)
        return self.customize_many([scenario])[0]

    def customize_many(self, scenarios: Sequence[Scenario]) -> list[CompactModel]:
        """Compact models for many scenarios: one assembler call, then one cut each."""
        scenarios = [_as_scenario(s) for s in scenarios]
        masks = self.choose(scenarios)
        return [
            self._cutter.cut(s.classes, m, self.kind) for s, m in zip(scenarios, masks, strict=True)
        ]

    # --- checkpoints ------------------------------------------------------------------

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> str:
        """Saves the supernet (``supernet/``) and the assembler (``assembler/``)."""
        directory = os.path.abspath(os.fspath(directory))
        os.makedirs(directory, exist_ok=True)
        save_supernet(
            os.path.join(directory, "supernet"),
            self.supernet,
            self.params,
            metadata={"kind": self.kind},
            overwrite=overwrite,
        )
        if self.assembler is not None:
            a = self.assembler
            meta = {
                "num_classes": a.num_classes,
                "module_widths": list(a.module_widths),
                "hidden": a.body1.out_features,
            }
            path = os.path.join(directory, "assembler")
            checkpoint.save_model(
                path, a, format=ASSEMBLER_FORMAT, metadata=meta, overwrite=overwrite
            )
        return directory


def _as_scenario(s: Any) -> Scenario:
    if isinstance(s, Scenario):
        return s
    if isinstance(s, dict):
        try:
            return Scenario(tuple(s["classes"]), float(s["budget"]))
        except KeyError as e:
            raise WeightspaceError(f"scenario needs 'classes' and 'budget', missing {e}") from None
    if isinstance(s, tuple | list) and len(s) == 2:
        return Scenario(tuple(s[0]), float(s[1]))
    raise WeightspaceTypeError(f"not a scenario: {s!r}")


def load_factory(directory: str | os.PathLike, *, kind: str | None = None) -> Factory:
    """Restores a `Factory` saved by `Factory.save`, or a bare supernet checkpoint.

    A directory holding only a supernet (``save_supernet``) gives a factory without an
    assembler (group-L2 channel ranking).
    """
    directory = os.path.abspath(os.fspath(directory))
    sn_dir = os.path.join(directory, "supernet")
    if not os.path.isdir(sn_dir):
        supernet, params, meta = load_supernet(directory)
        return Factory(supernet, params, None, kind=kind or meta.get("kind", "params"))
    supernet, params, meta = load_supernet(sn_dir)
    kind = kind or meta.get("kind", "params")
    a_dir = os.path.join(directory, "assembler")
    assembler = None
    if os.path.isdir(a_dir):

        def build(am: dict) -> Assembler:
            return Assembler(
                am["num_classes"], am["module_widths"], hidden=am["hidden"], rngs=nnx.Rngs(0)
            )

        assembler, _ = checkpoint.load_model(
            a_dir, build, format=ASSEMBLER_FORMAT, what="assembler"
        )
    return Factory(supernet, params, assembler, kind=kind)


def export_model(
    directory: str | os.PathLike, model: CompactModel, *, overwrite: bool = False
) -> str:
    """Saves one compact model (Orbax) with the config that rebuilds it."""
    pop = population.of_one(model.params)
    meta = {"compact": model.config, "cost": model.cost, "fraction": model.fraction}
    return save_population(directory, pop, model.target, metadata=meta, overwrite=overwrite)


def load_model(directory: str | os.PathLike) -> CompactModel:
    """Restores a model written by `export_model` (the supernet is not needed)."""
    meta = read_metadata(directory)
    if "compact" not in meta:
        raise WeightspaceError(f"{os.fspath(directory)} does not hold a compact model")
    target = compact_target_from_config(meta["compact"])
    _, pop, meta = load_population(directory, target)
    params = population.only(pop)
    cfg = meta["compact"]
    return CompactModel(
        target, params, tuple(cfg["classes"]), cfg, int(meta["cost"]), float(meta["fraction"])
    )


def split_for_assembler(
    dataset: Dataset, fraction: float, key: jax.Array
) -> tuple[Dataset, Dataset]:
    """Splits the training set into (supernet part, assembler part); the test split is shared.

    The assembler learns from examples the supernet's weights never saw: on the supernet's
    own (memorised) training examples almost every choice of modules looks perfect.
    """
    if not 0.0 < fraction < 1.0:
        raise WeightspaceError(f"assembler data fraction must be in (0, 1), got {fraction}")
    perm = np.asarray(jax.random.permutation(key, len(dataset.y_train)))
    n = max(1, round(fraction * len(perm)))
    a, b = np.sort(perm[n:]), np.sort(perm[:n])

    def part(idx: np.ndarray, tag: str) -> Dataset:
        return Dataset(
            f"{dataset.name}-{tag}",
            dataset.x_train[idx],
            dataset.y_train[idx],
            dataset.x_test,
            dataset.y_test,
            dataset.num_classes,
        )

    return part(a, "supernet"), part(b, "assembler")


def make_factory(
    dataset: Dataset,
    key: jax.Array,
    *,
    config: SupernetConfig | None = None,
    subsets: Sequence[Sequence[int]] | None = None,
    pretrain_steps: int = 3000,
    assembler_steps: int = 1500,
    assembler_fraction: float = 0.2,
    budget_range: tuple[float, float] = (0.1, 0.5),
    kind: str = "params",
) -> tuple[Factory, dict[str, Any]]:
    """Pretrains a supernet and trains its assembler: a ready `Factory`.

    Args:
      dataset: the full data set (all classes).
      key: randomness for the split, pretraining and assembler training.
      config: the supernet's shape (default: `SupernetConfig` for the data set).
      subsets: class subsets to train the assembler on (default: every subset of 2 to 5
        classes).
      pretrain_steps, assembler_steps: optimisation steps of the two stages.
      assembler_fraction: share of the training split kept from pretraining for the
        assembler (`split_for_assembler`).
      budget_range: budgets sampled while training the assembler.
      kind: the budget's unit.

    Returns:
      ``(factory, info)``: info has the pretraining and assembler training summaries and
      their wall times in seconds.
    """
    config = config or SupernetConfig(dataset.input_shape, dataset.num_classes)
    supernet = Supernet(config)
    k_split, k_pre, k_asm = jax.random.split(key, 3)
    sn_data, asm_data = split_for_assembler(dataset, assembler_fraction, k_split)
    t0 = time.perf_counter()
    params, pre = pretrain(supernet, sn_data, k_pre, steps=pretrain_steps)
    t1 = time.perf_counter()
    if subsets is None:
        subsets, _ = class_subsets(config.num_classes, (2, 3, 4, 5), 0.0, k_split)
    prior = np.log(group_l2_scores(supernet, params) + 1e-3)
    assembler = Assembler(
        config.num_classes, [s.width for s in supernet.slots], prior=prior, rngs=nnx.Rngs(0)
    )
    asm = train_assembler(
        assembler,
        supernet,
        params,
        asm_data,
        subsets,
        k_asm,
        steps=assembler_steps,
        budget_range=budget_range,
        kind=kind,
    )
    t2 = time.perf_counter()
    info = {"pretrain": pre, "assembler": asm, "pretrain_s": t1 - t0, "assembler_s": t2 - t1}
    return Factory(supernet, params, assembler, kind=kind), info
