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
from hyper.conv_matmul import for_populations
from hyper.errors import WeightspaceError
from hyper.optimizers import make_optimizer
from hyper.target import Target
from hyper.train import cross_entropy
from hyper.tree import Params

__all__ = [
    "PAIRS",
    "Anchor",
    "Candidate",
    "StitchedFamily",
    "operating_points",
    "pareto",
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


@dataclasses.dataclass(frozen=True)
class CutGroup:
    """The stitched networks of one cut, evaluated and trained as one vmapped computation.

    All anchors are zero-padded to the widest anchor's sizes (checked to keep each anchor's
    function), so every network of the group is the widest anchor's computation on
    ``fuse(cut, padded front, padded back, stitch)``; each stitch is stored padded to
    `features` x `features` with a mask of its true block.

    Attributes:
      cut: the widest anchor's cut.
      members: candidate indices.
      fronts, backs: `[members]` anchor indices.
      mask: `[members, features, features]` 1 on each stitch's true block.
    """

    cut: Cut
    members: tuple[int, ...]
    fronts: np.ndarray
    backs: np.ndarray
    mask: np.ndarray

    @property
    def features(self) -> int:
        return self.cut.features


class StitchedFamily:
    """Anchors plus every stitched network between them, with their stitches.

    Attributes:
      anchors: the anchors, ascending in FLOPs.
      candidates: anchors first, then every ``(front, back, layer)`` with front != back,
        grouped by cut.
      groups: one `CutGroup` per cut.
      stitch_params: per cut layer (as a string) ``{"s": [members, F, F], "c": [members,
        F]}``, padded (see `CutGroup`).
      dataset: the data the stitches train on (least squares and `train`).
      validation: held-out ``(x, y)`` no stitch trained on; `frontier`, `choose` and
        `best` select networks by their accuracy on it, never on the test split.
      accuracy: per candidate, the test accuracy of the last `evaluate` (None before).
      val_accuracy: per candidate, the validation accuracy of the last `evaluate`.
      history: what `train` did (steps, seconds, examples, losses).
    """

    def __init__(
        self, anchors, candidates, groups, stitch_params, dataset, validation, padded, layers
    ):
        self.anchors: list[Anchor] = anchors
        self.candidates: list[Candidate] = candidates
        self.groups: list[CutGroup] = groups
        self.stitch_params: dict[str, dict[str, jax.Array]] = stitch_params
        self.dataset: data_lib.Dataset = dataset
        self.validation: tuple[np.ndarray, np.ndarray] = validation
        self.accuracy: np.ndarray | None = None
        self.val_accuracy: np.ndarray | None = None
        self.history: dict[str, Any] = {}
        self._padded = padded  # leaves [anchors, *widest shape]
        self._layers = layers  # spec layer index of every leaf
        self._widest = anchors[int(np.argmax([a.target.num_params for a in anchors]))].target
        self._widest_apply = for_populations(self._widest.pure_apply)
        self._logits_fn = None
        self._anchor_mask = [  # 1 on each anchor's own block of the padded leaves
            jnp.asarray(
                np.stack(
                    [np.pad(np.ones(s.shape, np.float32), _pad(s.shape, w.shape)) for s in specs]
                )
            )
            for w, specs in zip(
                self._widest.spec,
                zip(*(a.target.spec for a in anchors), strict=True),
                strict=True,
            )
        ]

    def _set_anchors(self, padded: list) -> None:
        """Takes fine-tuned padded anchor leaves: each anchor's params are its block."""
        self._padded = padded
        out = []
        for i, a in enumerate(self.anchors):
            leaves = [
                leaf[i][tuple(slice(0, n) for n in s.shape)]
                for leaf, s in zip(padded, a.target.spec, strict=True)
            ]
            out.append(dataclasses.replace(a, params=jax.tree.unflatten(a.target.treedef, leaves)))
        self.anchors = out

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    @property
    def stitched(self) -> list[Candidate]:
        return self.candidates[self.num_anchors :]

    def _where(self, k: int) -> tuple[CutGroup, int]:
        for g in self.groups:
            if k in g.members:
                return g, g.members.index(k)
        raise WeightspaceError(f"candidate {k} is an anchor, not a stitched network")

    def stitch(self, k: int) -> tuple[jax.Array, jax.Array]:
        """The stitch ``(S [c_front, c_back], c [c_back])`` of stitched candidate `k`."""
        g, r = self._where(k)
        cand = self.candidates[k]
        nf = self.anchors[cand.front].target.spec[g.cut.kernel].shape[g.cut.kernel_axis]
        nb = self.anchors[cand.back].target.spec[g.cut.kernel].shape[g.cut.kernel_axis]
        p = self.stitch_params[str(g.cut.layer)]
        return p["s"][r, :nf, :nb], p["c"][r, :nb]

    def params_of(self, k: int) -> Params:
        """The standalone params of candidate `k` (the stitch folded in)."""
        cand = self.candidates[k]
        if cand.is_anchor:
            return self.anchors[k].params
        g, _ = self._where(k)
        front = jax.tree.leaves(self.anchors[cand.front].params)
        back = jax.tree.leaves(self.anchors[cand.back].params)
        leaves = fuse(g.cut, front, back, self._layers, self.stitch(k))
        return jax.tree.unflatten(cand.target.treedef, [jnp.asarray(a) for a in leaves])

    def _fused(self, g: CutGroup, s, c, fi, bi, padded) -> list:
        """The widest-shaped leaves of one network of group `g` (padded stitch, traced
        anchor indices)."""
        front = [leaf[fi] for leaf in padded]
        back = [leaf[bi] for leaf in padded]
        return fuse(g.cut, front, back, self._layers, (s, c))

    def _apply(self, stacked: list, x):
        """`[networks, batch, classes]`: the widest anchor's computation of every network of
        `stacked` (leaves `[networks, *widest shape]`) on `x`, one vmapped call (on XLA:CPU
        with convolutions as matmuls: `hyper.conv_matmul.for_populations`)."""
        widest, apply = self._widest, self._widest_apply

        def one(leaves):
            return apply(jax.tree.unflatten(widest.treedef, leaves), x)

        return jax.vmap(one)(stacked)

    def _all_logits(self, stitch_params, padded, x):
        stacks = [padded]
        for g in self.groups:
            p = stitch_params[str(g.cut.layer)]
            s = p["s"] * g.mask
            c = p["c"] * g.mask[:, 0, :]
            one = lambda s_, c_, f_, b_, g=g: self._fused(g, s_, c_, f_, b_, padded)  # noqa: E731
            stacks.append(jax.vmap(one)(s, c, jnp.asarray(g.fronts), jnp.asarray(g.backs)))
        # candidate order: anchors, then the groups in order
        return self._apply([jnp.concatenate(ls) for ls in zip(*stacks, strict=True)], x)

    def logits(self, x: Any) -> jax.Array:
        """`[candidates, batch, classes]`: every network on `x` (each cut's fused weights
        vmapped, then all networks in one vmapped call), one compiled program."""
        if self._logits_fn is None:
            self._logits_fn = jax.jit(self._all_logits)
        return self._logits_fn(self.stitch_params, self._padded, jnp.asarray(x))

    # --- training ------------------------------------------------------------------------

    def train(
        self,
        steps: int,
        *,
        key: jax.Array,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        anchors: bool = False,
        chunk: int = 100,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Trains every stitch at once. Each step draws, for every cut, one stitched network
        uniformly (SN-Net's random sampling, one draw per cut so that each step runs every
        cut's computation once) and takes an Adam step on the mean of their cross-entropies
        on one random training batch.

        Args:
          anchors: also fine-tune the anchors (SN-Net's joint training of the whole
            family): each step then draws one anchor too, and the anchors' weights (shared
            by every network they take part in) train with the stitches; `anchors` holds
            the fine-tuned weights afterwards. Otherwise the anchors stay frozen.

        Returns:
          `history`: steps, batch size, wall seconds (compilation included), examples seen
          (steps x batch), mean loss per chunk, whether the anchors trained.
        """
        from tqdm.auto import tqdm

        if not self.groups or steps <= 0:
            return self.history
        opt = make_optimizer("adam", learning_rate)
        ds = self.dataset
        x_train, y_train = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
        sizes = [len(g.members) for g in self.groups]
        if anchors:
            sizes.append(self.num_anchors)
        masks = self._anchor_mask

        def loss(params, picks, x, y):
            stitches, padded = params if anchors else (params, self._padded)
            if anchors:  # the padding stays zero: each anchor keeps its own sizes
                padded = [p * m for p, m in zip(padded, masks, strict=True)]
            nets = []  # the drawn networks' leaves, run as one vmapped computation
            for g, r in zip(self.groups, picks, strict=False):
                p = stitches[str(g.cut.layer)]
                mask = jnp.asarray(g.mask)[r]
                s, c = p["s"][r] * mask, p["c"][r] * mask[0]
                fi, bi = jnp.asarray(g.fronts)[r], jnp.asarray(g.backs)[r]
                nets.append(self._fused(g, s, c, fi, bi, padded))
            if anchors:
                nets.append([leaf[picks[-1]] for leaf in padded])
            logits = self._apply([jnp.stack(ls) for ls in zip(*nets, strict=True)], x)
            return jnp.mean(jax.vmap(cross_entropy, in_axes=(0, None))(logits, y))

        def one(carry, step_key):
            params, opt_state = carry
            keys = jax.random.split(step_key, len(sizes) + 1)
            picks = [jax.random.randint(k, (), 0, n) for k, n in zip(keys[1:], sizes, strict=True)]
            idx = jax.random.randint(keys[0], (batch_size,), 0, x_train.shape[0])
            value, grads = jax.value_and_grad(loss)(params, picks, x_train[idx], y_train[idx])
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        @jax.jit
        def run(params, opt_state, keys):
            (params, opt_state), losses = jax.lax.scan(one, (params, opt_state), keys)
            return params, opt_state, losses.mean()

        params = (self.stitch_params, self._padded) if anchors else self.stitch_params
        opt_state = opt.init(params)
        losses = []
        t0 = time.perf_counter()
        done = 0
        with tqdm(total=steps, disable=not progress, desc="stitch", unit="step") as bar:
            while done < steps:
                n = min(chunk, steps - done)
                key, sub = jax.random.split(key)
                params, opt_state, value = run(params, opt_state, jax.random.split(sub, n))
                losses.append(float(value))
                done += n
                bar.update(n)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if anchors:
            params, padded = params
            self._set_anchors([p * m for p, m in zip(padded, masks, strict=True)])
        self.stitch_params = params
        self.history = {
            "steps": steps,
            "batch_size": batch_size,
            "examples": steps * batch_size,
            "seconds": time.perf_counter() - t0,
            "losses": losses,
            "anchors_trained": anchors,
        }
        self.accuracy = self.val_accuracy = None
        return self.history

    # --- evaluation ----------------------------------------------------------------------

    def evaluate(self, x: Any = None, y: Any = None) -> np.ndarray:
        """Accuracy of every candidate on `x, y`, all candidates in one compiled program
        (`logits`). By default on the test split, stored as `accuracy`, and on the
        validation split, stored as `val_accuracy`."""
        if x is None:
            self.accuracy = self.evaluate(self.dataset.x_test, self.dataset.y_test)
            self.val_accuracy = self.evaluate(*self.validation)
            return self.accuracy
        hit = jnp.argmax(self.logits(x), -1) == jnp.asarray(y)[None, :]
        return np.asarray(jnp.mean(hit, axis=1)).astype(np.float64)

    def points(self) -> list[dict[str, Any]]:
        """Every candidate as ``{name, flops, accuracy, val_accuracy, anchor, front, back,
        layer, index}``, ascending in FLOPs (`accuracy` on the test split, `val_accuracy` on
        the validation split; evaluated if needed)."""
        if self.accuracy is None or self.val_accuracy is None:
            self.evaluate()
        out = [
            {
                "name": c.name,
                "flops": int(c.flops),
                "accuracy": float(a),
                "val_accuracy": float(v),
                "anchor": c.is_anchor,
                "front": self.anchors[c.front].name,
                "back": self.anchors[c.back].name,
                "layer": c.layer,
                "index": k,
            }
            for k, (c, a, v) in enumerate(
                zip(self.candidates, self.accuracy, self.val_accuracy, strict=True)
            )
        ]
        return sorted(out, key=lambda p: (p["flops"], -p["val_accuracy"]))

    def frontier(self) -> list[dict[str, Any]]:
        """The Pareto frontier of `points` on the validation split: each point more accurate
        on it than every cheaper one (the networks `choose` can return)."""
        return pareto(self.points())

    def choose(self, budget_flops: float) -> dict[str, Any]:
        """The frontier point (see `points`) of the network of at most `budget_flops` FLOPs
        per example that is most accurate on the validation split.

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
        """The network of at most `budget_flops` FLOPs per example most accurate on the
        validation split, as a standalone ``(target, params)`` (the stitch folded into the
        next layer).

        Raises:
          WeightspaceError: no network fits the budget.
        """
        k = self.choose(budget_flops)["index"]
        return self.candidates[k].target, self.params_of(k)


def pareto(points: Sequence[dict[str, Any]], key: str = "val_accuracy") -> list[dict]:
    """The points more accurate (by `key`) than every cheaper point, ascending in FLOPs
    (of equal FLOPs, the most accurate)."""
    out: list[dict] = []
    best = -np.inf
    for p in sorted(points, key=lambda p: (p["flops"], -p[key])):
        if p[key] > best:
            out.append(p)
            best = p[key]
    return out


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
    pairs: str = "all",
    validation: tuple[Any, Any] | float = 0.2,
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
      pairs: which ``(front, back)`` anchor pairs to stitch (anchors ordered by FLOPs):
        ``"all"`` every ordered pair of different anchors; ``"ascending"`` the front
        cheaper than the back (SN-Net's Fast-to-Slow direction); ``"nearest"`` ascending
        pairs of neighbouring anchors only (SN-Net's nearest stitching).
      validation: held-out ``(x, y)`` the family selects its networks on, or a fraction
        of the training split to hold out for it (`hyper.data.split_validation`: then the
        stitches never train on it, but the anchors may have: give held-out data the
        anchors never saw where there is some).
      progress: show a progress bar.

    Raises:
      WeightspaceError: fewer than two anchors, anchors of different kinds, no common cut,
        or an unknown `pairs`.
    """
    from tqdm.auto import tqdm

    ds = data_lib.load(dataset) if isinstance(dataset, str) else dataset
    if isinstance(validation, int | float):
        ds, validation = data_lib.split_validation(ds, float(validation))
    validation = (np.asarray(validation[0]), np.asarray(validation[1]))
    if validation[0].shape[1:] != tuple(ds.input_shape) or len(validation[1]) != len(validation[0]):
        raise WeightspaceError(
            f"stitch: validation inputs {validation[0].shape} with {len(validation[1])} "
            f"labels do not match the data set's inputs {ds.input_shape}"
        )
    if len(anchors) < 2:
        raise WeightspaceError(f"stitch: need at least two anchors, got {len(anchors)}")
    _pairs(len(anchors), pairs)  # refuses an unknown choice before any work
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
    usable = [{c.layer: c for c in cuts[i] if c.bottleneck} for i in range(len(made))]
    common = [
        j
        for j in sorted(set.intersection(*(set(u) for u in usable)))
        if len({(u[j].primitive, u[j].feature_axis, u[j].kernel) for u in usable}) == 1
    ]
    if not common:
        raise WeightspaceError("stitch: the anchors have no common layer to stitch at")
    x = jnp.asarray(ds.x_train[:sample_size])
    acts, outs = zip(
        *(cut_activations(a.target, a.params, x, common, with_output=True) for a in made),
        strict=True,
    )
    fronts = [list(jax.tree.leaves(a.params)) for a in made]
    layers = [s.layer for s in made[0].target.spec]
    wi = int(np.argmax([a.target.num_params for a in made]))
    widest = made[wi].target
    padded = _padded_anchors(made, widest, x, outs)
    candidates = [Candidate(a.name, i, i, None, a.target, a.flops) for i, a in enumerate(made)]
    groups, stitch_params = [], {}
    built: dict[str, tuple[Target, int]] = {}
    pairs = _pairs(len(made), pairs)
    bar = tqdm(total=len(pairs) * len(common), disable=not progress, desc="stitches", unit="net")
    for j in common:
        wcut = usable[wi][j]
        n, size = len(pairs), wcut.features
        s_pad, c_pad = np.zeros((n, size, size), np.float32), np.zeros((n, size), np.float32)
        mask = np.zeros((n, size, size), np.float32)
        members = []
        for r, (f, b) in enumerate(pairs):
            cut = usable[b][j]
            ha, hb = acts[f][j], acts[b][j]
            other = [d for i, d in enumerate(ha.shape) if i != cut.feature_axis]
            if other != [d for i, d in enumerate(hb.shape) if i != cut.feature_axis]:
                raise WeightspaceError(
                    f"stitch: before layer {cut.layer_name}, {made[f].name}'s activation has "
                    f"shape {tuple(ha.shape)} and {made[b].name}'s {tuple(hb.shape)}: only the "
                    f"feature axis {cut.feature_axis} may differ"
                )
            stitch = least_squares_stitch(
                ha, hb, cut.feature_axis, bias=cut.bias is not None, ridge=ridge
            )
            nf, nb = stitch[0].shape
            s_pad[r, :nf, :nb], c_pad[r, :nb], mask[r, :nf, :nb] = stitch[0], stitch[1], 1.0
            name = f"{made[f].name}[:{cut.layer_name}]>{made[b].name}"
            shapes = jax.eval_shape(
                lambda s, c, f=f, b=b, cut=cut: fuse(cut, fronts[f], fronts[b], layers, (s, c)),
                *stitch,
            )
            key = json.dumps([[list(p.shape) for p in shapes], cut.layer])
            if key not in built:
                zeros = [np.zeros(p.shape, p.dtype) for p in shapes]
                params = jax.tree.unflatten(made[0].target.treedef, zeros)
                t = _standalone(widest, made[f].target.config, params, name)
                built[key] = (t, count_flops(t))
            t, flops = built[key]
            members.append(len(candidates))
            candidates.append(Candidate(name, f, b, j, t, flops))
            bar.update(1)
        groups.append(
            CutGroup(
                wcut,
                tuple(members),
                np.array([f for f, _ in pairs]),
                np.array([b for _, b in pairs]),
                mask,
            )
        )
        stitch_params[str(j)] = {"s": jnp.asarray(s_pad), "c": jnp.asarray(c_pad)}
    bar.close()
    return StitchedFamily(made, candidates, groups, stitch_params, ds, validation, padded, layers)


PAIRS = ("all", "ascending", "nearest")
"""The anchor-pair choices of `stitch_family`."""


def _pairs(n: int, which: str) -> list[tuple[int, int]]:
    """``(front, back)`` indices of `n` anchors ascending in FLOPs, per `stitch_family`."""
    if which == "all":
        return [(f, b) for f in range(n) for b in range(n) if f != b]
    if which == "ascending":
        return [(f, b) for f in range(n) for b in range(f + 1, n)]
    if which == "nearest":
        return [(f, f + 1) for f in range(n - 1)]
    raise WeightspaceError(f"stitch: pairs must be one of {list(PAIRS)}, got {which!r}")


def _padded_anchors(made: list[Anchor], widest: Target, x: Any, outs: Sequence[Any]) -> list:
    """Every anchor's leaves zero-padded at the end of each axis to the widest anchor's
    shapes, stacked `[anchors, ...]`; refused unless each keeps its anchor's outputs."""
    per_leaf = []
    for i, w in enumerate(widest.spec):
        rows = []
        for a in made:
            leaf = np.asarray(jax.tree.leaves(a.params)[i])
            if any(p > q for p, q in zip(leaf.shape, w.shape, strict=True)):
                raise WeightspaceError(
                    f"stitch: no anchor is widest in every layer ({a.name} is wider than "
                    f"{widest.name} in {w.path})"
                )
            rows.append(np.pad(leaf, _pad(leaf.shape, w.shape)))
        per_leaf.append(jnp.asarray(np.stack(rows)))

    def apply(leaves):
        return widest.pure_apply(jax.tree.unflatten(widest.treedef, leaves), x)

    got = np.asarray(jax.jit(jax.vmap(apply))(per_leaf))
    for a, want, have in zip(made, outs, got, strict=True):
        want = np.asarray(want)
        if not np.allclose(have, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max())):
            raise WeightspaceError(
                f"stitch: zero-padding {a.name} to {widest.name}'s sizes changes its outputs "
                "(something sums over the hidden units, e.g. a norm over features); the "
                "family's stitches are evaluated on padded anchors"
            )
    return per_leaf


def _pad(shape: Sequence[int], widest: Sequence[int]) -> list[tuple[int, int]]:
    """`np.pad` widths that zero-pad `shape` at the end of each axis to `widest`."""
    return [(0, q - p) for p, q in zip(shape, widest, strict=True)]
