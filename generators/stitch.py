"""Stitchable Neural Networks (SN-Net): many accuracy-FLOPs trade-offs from a family of
trained networks ("anchors") of one kind and different widths.

A stitched network is ``front of anchor A (layers < j) -> stitch -> back of anchor B
(layers >= j)``. The cuts are read from the traced computation (`generators.stitch_cuts`):
the activation a layer's contraction reads, where the input reaches the rest of the network
through it alone. The stitch is a linear map of the activation's features (a dense map, or
a 1x1 convolution), initialised by least squares to map A's activations at the cut onto
B's on a data sample, then trained with the task loss through B's frozen back; every step
samples one stitched network uniformly (SN-Net's random sampling of stitching positions),
and all stitches train in one compiled program (a ``lax.switch`` over the candidates: they
are different computations, not one computation over stacked weights, so they cannot be
vmapped). Anchors stay as they are.

Because nothing nonlinear sits between the stitch and the contraction it feeds, the
stitched network *is* a network of the family with mixed widths: the stitch folds into the
next layer's kernel (`stitch_cuts.fuse`). So `StitchedFamily.best` returns a plain `Target`
(rebuilt by `make_target` for built-in architectures, else derived from the widest anchor)
that exports, saves and reloads like any other network, and whose FLOPs are counted by
`hyper.compact.count_flops` on its own traced apply.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from generators.stitch_cuts import Cut, cut_activations, find_cuts, fuse, least_squares_stitch
from hyper import data as data_lib
from hyper.architectures import config_for_params, target_from_config
from hyper.compact import count_flops
from hyper.errors import WeightspaceError
from hyper.optimizers import make_optimizer
from hyper.prune import hidden_widths
from hyper.target import Target
from hyper.train import cross_entropy
from hyper.tree import Params

__all__ = [
    "Anchor",
    "Candidate",
    "StitchedFamily",
    "anchors_from_zoos",
    "operating_points",
    "stitch_family",
]


@dataclasses.dataclass(frozen=True)
class Anchor:
    """One trained network of the family: its name, target, params (one network), FLOPs."""

    name: str
    target: Target
    params: Params
    flops: int


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One network of the family: an anchor (``layer`` None, ``front == back``) or a stitch
    of anchor `front` before layer `layer` into anchor `back`."""

    name: str
    front: int
    back: int
    layer: int | None
    target: Target
    flops: int

    @property
    def is_anchor(self) -> bool:
        return self.layer is None


def _standalone(widest: Target, base_config: Any, params: Params, name: str) -> Target:
    """A target for fused `params`: rebuilt from a plain config when the family has one,
    else the widest anchor's traced computation at the new sizes."""
    cfg = config_for_params(base_config, params) if isinstance(base_config, dict) else None
    if cfg is not None:
        return target_from_config(cfg)
    return widest.derive(params, name=name, config={"derived_from": widest.config})


class StitchedFamily:
    """Anchors plus every stitched network between them, with their stitches.

    Attributes:
      anchors: the anchors, ascending in FLOPs.
      cuts: the layers stitched at (spec layer indices, common to all anchors).
      candidates: anchors first, then every ``(front, back, layer)`` with front != back.
      stitches: per stitched candidate (same order, after the anchors) ``(S, c)``.
      dataset: the data set the anchors were trained on.
      accuracy: per candidate, the accuracy of the last `evaluate` (None before).
      history: what `train` did (steps, seconds, examples, losses).
    """

    def __init__(self, anchors, cuts, candidates, stitches, dataset, fronts, layers):
        self.anchors: list[Anchor] = anchors
        self.cuts: dict[int, list[Cut]] = cuts
        self.candidates: list[Candidate] = candidates
        self.stitches: list[tuple[jax.Array, jax.Array]] = stitches
        self.dataset: data_lib.Dataset = dataset
        self.accuracy: np.ndarray | None = None
        self.history: dict[str, Any] = {}
        self._fronts = fronts  # per anchor, its leaves
        self._layers = layers  # spec layer index of every leaf
        self._step = None
        self._eval = None

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    @property
    def stitched(self) -> list[Candidate]:
        return self.candidates[self.num_anchors :]

    def _cut(self, cand: Candidate) -> Cut:
        return next(c for c in self.cuts[cand.back] if c.layer == cand.layer)

    def _leaves(self, k: int, stitches, fronts) -> list[Any]:
        cand = self.candidates[k]
        if cand.is_anchor:
            return list(fronts[cand.front])
        stitch = stitches[k - self.num_anchors]
        return fuse(self._cut(cand), fronts[cand.front], fronts[cand.back], self._layers, stitch)

    def params_of(self, k: int) -> Params:
        """The standalone params of candidate `k` (stitch folded in)."""
        cand = self.candidates[k]
        leaves = self._leaves(k, self.stitches, self._fronts)
        return jax.tree.unflatten(cand.target.treedef, [jnp.asarray(a) for a in leaves])

    def _logits(self, k: int, stitches, fronts, x):
        cand = self.candidates[k]
        params = jax.tree.unflatten(cand.target.treedef, self._leaves(k, stitches, fronts))
        return cand.target.pure_apply(params, x)

    # --- training ------------------------------------------------------------------------

    def train(
        self,
        steps: int,
        *,
        key: jax.Array,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        chunk: int = 100,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Trains every stitch at once: each step samples one stitched network uniformly and
        takes an Adam step on its stitch through the frozen anchors (cross-entropy on a
        random training batch).

        Returns:
          `history`: steps, wall seconds (compilation included), examples seen, mean loss
          per chunk.
        """
        from tqdm.auto import tqdm

        if not self.stitched or steps <= 0:
            return self.history
        n_anchor, n_stitch = self.num_anchors, len(self.stitched)
        opt = make_optimizer("adam", learning_rate)
        ds = self.dataset
        x_train, y_train = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)

        def loss_of(k):
            def fn(stitches, fronts, x, y):
                return cross_entropy(self._logits(k, stitches, fronts, x), y)

            return fn

        branches = [loss_of(n_anchor + i) for i in range(n_stitch)]

        def one(carry, step_key):
            stitches, opt_state = carry
            k_pick, k_batch = jax.random.split(step_key)
            pick = jax.random.randint(k_pick, (), 0, n_stitch)
            idx = jax.random.randint(k_batch, (batch_size,), 0, x_train.shape[0])
            x, y = x_train[idx], y_train[idx]

            def loss(s):
                return jax.lax.switch(pick, branches, s, self._fronts, x, y)

            value, grads = jax.value_and_grad(loss)(stitches)
            updates, opt_state = opt.update(grads, opt_state, stitches)
            return (optax.apply_updates(stitches, updates), opt_state), value

        @jax.jit
        def run(stitches, opt_state, keys):
            (stitches, opt_state), losses = jax.lax.scan(one, (stitches, opt_state), keys)
            return stitches, opt_state, losses.mean()

        stitches = list(self.stitches)
        opt_state = opt.init(stitches)
        losses = []
        t0 = time.perf_counter()
        done = 0
        with tqdm(total=steps, disable=not progress, desc="stitch", unit="step") as bar:
            while done < steps:
                n = min(chunk, steps - done)
                key, sub = jax.random.split(key)
                stitches, opt_state, loss = run(stitches, opt_state, jax.random.split(sub, n))
                losses.append(float(loss))
                done += n
                bar.update(n)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        self.stitches = [(jnp.asarray(s), jnp.asarray(c)) for s, c in stitches]
        self.history = {
            "steps": steps,
            "batch_size": batch_size,
            "examples": steps * batch_size,
            "seconds": time.perf_counter() - t0,
            "losses": losses,
        }
        self.accuracy = None
        return self.history

    # --- evaluation ----------------------------------------------------------------------

    def evaluate(self, x: Any = None, y: Any = None) -> np.ndarray:
        """Accuracy of every candidate on `x, y` (default: the test split), all candidates in
        one compiled program. Stored as `accuracy` when on the test split."""
        default = x is None
        x = jnp.asarray(self.dataset.x_test if default else x)
        y = jnp.asarray(self.dataset.y_test if default else y)
        if self._eval is None:

            @jax.jit
            def run(stitches, fronts, xx, yy):
                return jnp.stack(
                    [
                        jnp.mean(jnp.argmax(self._logits(k, stitches, fronts, xx), -1) == yy)
                        for k in range(len(self.candidates))
                    ]
                )

            self._eval = run
        acc = np.asarray(self._eval(self.stitches, self._fronts, x, y), np.float64)
        if default:
            self.accuracy = acc
        return acc

    def points(self) -> list[dict[str, Any]]:
        """Every candidate as ``{name, flops, accuracy, anchor, front, back, layer}``,
        ascending in FLOPs (test accuracy; evaluated if needed)."""
        acc = self.accuracy if self.accuracy is not None else self.evaluate()
        out = [
            {
                "name": c.name,
                "flops": int(c.flops),
                "accuracy": float(a),
                "anchor": c.is_anchor,
                "front": self.anchors[c.front].name,
                "back": self.anchors[c.back].name,
                "layer": c.layer,
                "index": k,
            }
            for k, (c, a) in enumerate(zip(self.candidates, acc, strict=True))
        ]
        return sorted(out, key=lambda p: (p["flops"], -p["accuracy"]))

    def frontier(self) -> list[dict[str, Any]]:
        """The Pareto frontier of `points`: each point more accurate than every cheaper one."""
        out, best = [], -1.0
        for p in self.points():
            if p["accuracy"] > best:
                out.append(p)
                best = p["accuracy"]
        return out

    def choose(self, budget_flops: float) -> dict[str, Any]:
        """The frontier point (see `points`) of the most accurate network of at most
        `budget_flops` FLOPs per example.

        Raises:
          WeightspaceError: no network fits the budget.
        """
        fits = [p for p in self.frontier() if p["flops"] <= budget_flops]
        if not fits:
            cheapest = min(c.flops for c in self.candidates)
            raise WeightspaceError(
                f"no network of the family fits {budget_flops:g} FLOPs; the cheapest needs "
                f"{cheapest} FLOPs"
            )
        return fits[-1]

    def best(self, budget_flops: float) -> tuple[Target, Params]:
        """The most accurate network of at most `budget_flops` FLOPs per example, as a
        standalone ``(target, params)`` (the stitch folded into the next layer).

        Raises:
          WeightspaceError: no network fits the budget.
        """
        k = self.choose(budget_flops)["index"]
        return self.candidates[k].target, self.params_of(k)


def operating_points(points: Sequence[dict[str, Any]], spacing: float = 0.05) -> list[dict]:
    """Frontier points at least `spacing` apart in relative FLOPs (greedy from the cheapest)."""
    out: list[dict] = []
    for p in sorted(points, key=lambda p: p["flops"]):
        if not out or p["flops"] >= (1 + spacing) * out[-1]["flops"]:
            out.append(p)
    return out


def _check_family(anchors: Sequence[Anchor]) -> None:
    first = anchors[0].target
    for a in anchors[1:]:
        t = a.target
        if t.treedef != first.treedef or t.paths != first.paths:
            raise WeightspaceError(
                f"stitch: anchors {anchors[0].name} and {a.name} are not of one kind (their "
                "leaves differ); give networks of one architecture and different widths"
            )
        if tuple(t.input_shape or ()) != tuple(first.input_shape or ()):
            raise WeightspaceError(
                f"stitch: anchor {a.name} takes inputs {t.input_shape}, "
                f"{anchors[0].name} {first.input_shape}"
            )
        if [s.layer for s in t.spec] != [s.layer for s in first.spec]:
            raise WeightspaceError(
                f"stitch: anchors {anchors[0].name} and {a.name} order their layers differently"
            )


def stitch_family(
    anchors: Sequence[tuple[str, Target, Params]],
    dataset: data_lib.Dataset | str,
    *,
    sample_size: int = 512,
    ridge: float = 1e-4,
    progress: bool = True,
) -> StitchedFamily:
    """Builds the stitched family of `anchors`: every ordered pair of different anchors at
    every common bottleneck cut, each stitch least-squares initialised on the activations of
    the first `sample_size` training inputs.

    Args:
      anchors: ``(name, target, params)`` of one network each, one architecture.
      dataset: a `hyper.data.Dataset` or its registry name.
      sample_size: training inputs for the least-squares initialisation.
      ridge: the least-squares ridge, relative to the number of rows.
      progress: show a progress bar.

    Raises:
      WeightspaceError: fewer than two anchors, anchors of different kinds, or no common cut.
    """
    from tqdm.auto import tqdm

    ds = data_lib.load(dataset) if isinstance(dataset, str) else dataset
    if len(anchors) < 2:
        raise WeightspaceError(f"stitch: need at least two anchors, got {len(anchors)}")
    made = []
    for name, target, params in anchors:
        if tuple(target.input_shape or ()) != tuple(ds.input_shape):
            raise WeightspaceError(
                f"stitch: anchor {name} takes inputs {target.input_shape}; data set "
                f"{ds.name} has {ds.input_shape}"
            )
        target.validate(params)
        made.append(Anchor(name, target, params, count_flops(target)))
    made.sort(key=lambda a: a.flops)
    _check_family(made)
    cuts = {i: find_cuts(a.target) for i, a in enumerate(made)}
    usable = [
        {c.layer: c for c in cuts[i] if c.bottleneck and c.primitive == cuts[0][0].primitive}
        for i in range(len(made))
    ]
    common = sorted(set.intersection(*(set(u) for u in usable)))
    common = [
        j
        for j in common
        if all(usable[i][j].primitive == usable[0][j].primitive for i in range(len(made)))
    ]
    if not common:
        raise WeightspaceError("stitch: the anchors have no common layer to stitch at")
    x = jnp.asarray(ds.x_train[:sample_size])
    acts = [cut_activations(a.target, a.params, x, common) for a in made]
    fronts = [list(jax.tree.leaves(a.params)) for a in made]
    layers = [s.layer for s in made[0].target.spec]
    widest = max(made, key=lambda a: a.target.num_params).target
    for a in made:
        too_big = [
            s.path
            for s, w in zip(a.target.spec, widest.spec, strict=True)
            if any(p > q for p, q in zip(s.shape, w.shape, strict=True))
        ]
        if too_big and config_for_params(a.target.config, a.params) is None:
            raise WeightspaceError(
                f"stitch: no anchor is widest in every layer ({a.name} is wider in {too_big[0]})"
            )
    candidates = [Candidate(a.name, i, i, None, a.target, a.flops) for i, a in enumerate(made)]
    stitches = []
    built: dict[str, tuple[Target, int]] = {}
    pairs = [
        (f, b, j) for f in range(len(made)) for b in range(len(made)) if f != b for j in common
    ]
    for f, b, j in tqdm(pairs, disable=not progress, desc="stitches", unit="net"):
        cut = usable[b][j]
        ha, hb = acts[f][j], acts[b][j]
        if ha.shape[: cut.feature_axis] + ha.shape[cut.feature_axis + 1 :] != (
            hb.shape[: cut.feature_axis] + hb.shape[cut.feature_axis + 1 :]
        ):
            raise WeightspaceError(
                f"stitch: before layer {cut.layer_name}, {made[f].name}'s activation has shape "
                f"{tuple(ha.shape)} and {made[b].name}'s {tuple(hb.shape)}: only the feature "
                f"axis {cut.feature_axis} may differ"
            )
        stitch = least_squares_stitch(
            ha, hb, cut.feature_axis, bias=cut.bias is not None, ridge=ridge
        )
        name = f"{made[f].name}[:{cut.layer_name}]>{made[b].name}"
        params = jax.tree.unflatten(
            made[0].target.treedef, fuse(cut, fronts[f], fronts[b], layers, stitch)
        )
        key = json.dumps([[list(np.shape(p)) for p in jax.tree.leaves(params)], cut.layer])
        if key not in built:
            t = _standalone(widest, made[f].target.config, params, name)
            built[key] = (t, count_flops(t))
        t, flops = built[key]
        candidates.append(Candidate(name, f, b, j, t, flops))
        stitches.append(stitch)
    return StitchedFamily(
        made,
        {i: list(usable[i].values()) for i in range(len(made))},
        candidates,
        stitches,
        ds,
        fronts,
        layers,
    )


def anchors_from_zoos(
    directories: Sequence[str],
) -> tuple[list[tuple[str, Target, Params]], str]:
    """One anchor per zoo directory: the member of lowest final training loss (never chosen
    on the test split).

    Returns:
      ``[(name, target, params)]`` and the zoos' common data set name.

    Raises:
      WeightspaceError / CheckpointError: a directory that is not a complete zoo, or zoos of
      different data sets.
    """
    from hyper import zoo as zoo_lib

    out, datasets = [], set()
    for d in directories:
        z = zoo_lib.load(d)
        datasets.add(z.config["dataset"])
        last = {r["member"]: r for r in z.rows() if r["epoch"] == max(z.checkpoint_epochs)}
        best_row = min(last.values(), key=lambda r: float(r["train_loss"]))
        for g in z.groups:
            ids = [m["member"] for m in g.members]
            if best_row["member"] in ids and g.params is not None:
                i = ids.index(best_row["member"])
                params = jax.tree.map(lambda a, i=i: a[i], g.params)
                width = "x".join(str(w) for w in hidden_widths(g.target))
                out.append((f"{g.target.config.get('arch', 'net')}-{width}", g.target, params))
                break
        else:
            raise WeightspaceError(f"stitch: zoo {d} has no trained member")
    if len(datasets) != 1:
        raise WeightspaceError(f"stitch: the zoos hold different data sets: {sorted(datasets)}")
    return out, datasets.pop()
