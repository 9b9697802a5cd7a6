"""Sampler settings of a weight generator, chosen on examples other than the test split.

A weight generator (`generators.weightgen.WeightGen`) samples under an accuracy prompt, a
classifier-free guidance and a temperature. Which settings give networks that are both
accurate and new, and where a prompt lands, depend on the zoo and the model; the functions
here choose them on examples the results are not reported on (the zoo's *training*
examples, say), with the metrics of `generators.novelty`:

- `choose_sampler`: the prompt (a quantile of the training networks' accuracies, or none),
  guidance and temperature whose samples' median accuracy is within 1 point of the
  training networks' with the lowest median max-IoU to them.
- `calibrate_prompts`: a `PromptCalibration`, the monotone map from the accuracy a user
  asks for to the prompt given to the generator. A conditional generator's samples regress
  towards the zoo's middle (asked for a low accuracy they land higher, asked for a high one
  lower) and an autoencoder may cost its reconstructions some accuracy; the map undoes
  both, as far as the samples reach (beyond the highest accuracy any prompt reaches, the
  map gives the highest prompt: it cannot do better than the model).
- `choose_prompt_guidance`: the guidance under which prompts land closest, with or without
  the calibration.

Accuracies on the selection examples are not in the units of the prompts (the training
networks' test accuracies; a network reads higher on its own training examples), so a
prompt is first *carried* to the examples: its target there is the prompt plus the median
gap (accuracy on the examples minus label) of the ``max(8, m // 16)`` training networks
whose labels are nearest the prompt (a gap, not their accuracies: where the zoo is sparse
the nearest labels lie far from the prompt, and their gaps still apply).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from generators.novelty import evaluate, max_similarity
from hyper.errors import WeightspaceError
from hyper.target import Params

__all__ = [
    "PROMPT_GUIDANCE",
    "SAMPLER_GRID",
    "PromptCalibration",
    "calibrate_prompts",
    "choose_prompt_guidance",
    "choose_sampler",
    "pick",
]

SAMPLER_GRID: dict[str, tuple] = {
    "prompt_quantiles": (None, 0.5, 0.75, 0.9, 1.0),
    "guidance": (1.0, 2.0, 3.0),
    "temperature": (1.0, 0.7, 0.5),
}


def pick(rows: Sequence[dict[str, Any]], training_median: float) -> dict[str, Any]:
    """`choose_sampler`'s rule over rows with ``median_acc`` and ``median_max_iou``: among
    the rows within 1 point of `training_median`, the lowest max-IoU; if none is, the
    closest median accuracy (first wins ties)."""
    if not rows:
        raise WeightspaceError("pick: no rows to choose from")
    close = [r for r in rows if abs(r["median_acc"] - training_median) <= 0.01 + 1e-9]
    if close:
        return min(close, key=lambda r: r["median_max_iou"])
    return min(rows, key=lambda r: abs(r["median_acc"] - training_median))


def choose_sampler(
    gen: Any,
    training: Params,
    x: Any,
    y: Any,
    *,
    key: jax.Array,
    accuracy: Any = None,
    n: int = 200,
    grid: dict[str, Sequence[Any]] | None = None,
    calibration: PromptCalibration | None = None,
) -> dict[str, Any]:
    """Sampler settings of a weight generator chosen on the examples `x, y` (the zoo's
    training examples, say; never the split the results are reported on).

    Over `grid` (default `SAMPLER_GRID`): the accuracy prompt as a quantile of the
    training networks' accuracies `accuracy` (None: unprompted; only None when `accuracy`
    is None or the generator is not accuracy-conditioned), the guidance (prompted only) and
    the temperature, `n` networks each from ``fold_in(key, i)``. The chosen setting is the
    one whose median accuracy on `x, y` is within 1 point of the training networks' median
    there with the lowest median max-IoU to them; if none is, the closest median accuracy.
    With a `calibration` (`calibrate_prompts`), each prompt quantile is also tried as a
    requested accuracy given through it, under its guidance, at every temperature (rows
    with ``"calibrated": True``, after the others).

    Args:
      gen: a `generators.weightgen.WeightGen` (anything with its ``sample`` and ``target``).
      training: the training population `[m, ...]`.

    Returns:
      ``{"chosen": {"accuracy", "guidance", "temperature"}`` (keyword arguments of
      ``gen.sample``; a calibrated row's ``accuracy`` is the prompt given),
      ``"chosen_row"``, ``"grid"`` (one row per setting: its median accuracy and max-IoU;
      ``requested`` is the accuracy asked for), ``"training_median_acc"``, ``"examples"}``.
    """
    grid = {**SAMPLER_GRID, **(grid or {})}
    conditioned = getattr(getattr(gen, "config", None), "condition", None) == "accuracy"
    quantiles = [
        q for q in grid["prompt_quantiles"] if q is None or (conditioned and accuracy is not None)
    ]
    if not quantiles:
        raise WeightspaceError("choose_sampler: the grid has no prompt this generator can take")
    tr_acc, tr_wrong = evaluate(gen.target, training, x, y)
    want = float(np.median(tr_acc))
    settings = []  # (quantile, requested, given prompt, guidance, calibrated)
    for q in quantiles:
        prompt = None if q is None else float(np.quantile(np.asarray(accuracy), q))
        for g in grid["guidance"] if q is not None else (1.0,):
            settings.append((q, prompt, prompt, float(g), False))
    if calibration is not None:
        for q in quantiles:
            if q is not None:
                prompt = float(np.quantile(np.asarray(accuracy), q))
                settings.append((q, prompt, calibration(prompt), calibration.guidance, True))
    rows: list[dict[str, Any]] = []
    for q, requested, prompt, g, calibrated in settings:
        for t in grid["temperature"]:
            k = jax.random.fold_in(key, len(rows))
            population = gen.sample(k, n, accuracy=prompt, guidance=g, temperature=t)
            acc, wrong = evaluate(gen.target, population, x, y)
            sim = max_similarity(wrong, tr_wrong)
            rows.append({
                "prompt_quantile": q, "requested": requested, "calibrated": calibrated,
                "accuracy": prompt, "guidance": g, "temperature": float(t),
                "median_acc": float(np.median(acc)), "median_max_iou": float(np.median(sim)),
            })  # fmt: skip
    best = pick(rows, want)
    return {
        "chosen": {k: best[k] for k in ("accuracy", "guidance", "temperature")},
        "chosen_row": best,
        "grid": rows,
        "training_median_acc": want,
        "examples": int(len(np.asarray(y))),
    }


# --- accuracy prompts ------------------------------------------------------------------------

PROMPT_GUIDANCE: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
"""The guidance values `choose_prompt_guidance` tries by default."""


def _labels(gen: Any, training: Params, x: Any, y: Any, accuracy: Any, who: str):
    """The training networks' labels `[m]` and their accuracies on `x, y`."""
    if getattr(getattr(gen, "config", None), "condition", None) != "accuracy":
        raise WeightspaceError(f"{who}: the generator is not accuracy-conditioned")
    labels = np.asarray(accuracy, np.float64)
    if labels.ndim != 1 or labels.size < 1:
        raise WeightspaceError(f"{who}: needs [m] accuracies (the training networks' labels)")
    on_xy, _ = evaluate(gen.target, training, x, y)
    if labels.size != on_xy.size:
        raise WeightspaceError(
            f"{who}: {labels.size} accuracies for {on_xy.size} training networks"
        )
    return labels, np.asarray(on_xy, np.float64)


def _carry(labels: np.ndarray, on_xy: np.ndarray, prompts: Any) -> np.ndarray:
    """Each prompt's target on the selection examples (the module docstring's rule)."""
    k = max(8, labels.size // 16)
    gap = on_xy - labels
    return np.array([
        p + np.median(gap[np.argsort(np.abs(labels - p), kind="stable")[:k]])
        for p in np.atleast_1d(np.asarray(prompts, np.float64))
    ])  # fmt: skip


def _median_acc(gen: Any, key: jax.Array, n: int, x: Any, y: Any, **prompt: Any) -> float:
    population = gen.sample(key, n, **prompt)
    return float(np.median(evaluate(gen.target, population, x, y)[0]))


def _increasing(v: Any) -> np.ndarray:
    """`v` made strictly increasing (a running maximum plus a negligible ramp), so that
    `np.interp` may read it as abscissae."""
    v = np.maximum.accumulate(np.asarray(v, np.float64))
    return v + 1e-9 * np.arange(v.size)


@dataclasses.dataclass(frozen=True)
class PromptCalibration:
    """The monotone map from a requested accuracy to the prompt given to the generator.

    Attributes:
      requested: increasing accuracies, each the one the prompt ``given[i]`` reaches (its
        samples' median accuracy on the selection examples, carried back to label units).
      given: the prompts (increasing).
      guidance: the guidance the map was measured under (sample with it).
      achieved: the measured median accuracies on the selection examples, per prompt.
      examples: how many selection examples.
    """

    requested: tuple[float, ...]
    given: tuple[float, ...]
    guidance: float
    achieved: tuple[float, ...] = ()
    examples: int = 0

    def __post_init__(self):
        r, g = np.asarray(self.requested), np.asarray(self.given)
        if r.ndim != 1 or r.size < 2 or r.shape != g.shape or np.any(np.diff(r) <= 0):
            raise WeightspaceError(
                "PromptCalibration: requested and given must be equal-length increasing lists "
                f"of >= 2 accuracies, got {self.requested!r} and {self.given!r}"
            )

    def __call__(self, accuracy: Any) -> Any:
        """The prompt(s) to give for requested accuracy (a float or an array of them),
        clipped to the prompts measured (a request beyond what the samples reach gets the
        nearest end)."""
        out = np.interp(np.asarray(accuracy, np.float64), self.requested, self.given)
        return float(out) if np.ndim(out) == 0 else out

    @property
    def reachable(self) -> tuple[float, float]:
        """The lowest and highest accuracy the measured prompts reach."""
        return float(self.requested[0]), float(self.requested[-1])

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PromptCalibration:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{
            k: tuple(float(x) for x in v) if isinstance(v, list) else v
            for k, v in d.items() if k in fields
        })  # fmt: skip


def _calibrate(gen, x, y, labels, on_xy, *, key, guidance, n, points) -> PromptCalibration:
    if points < 2 or n < 1:
        raise WeightspaceError(f"calibration needs points >= 2 and n >= 1, got {points}, {n}")
    spaced = np.linspace(0.0, 1.0, points)  # where the networks are, and evenly between
    lo, hi = labels.min(), labels.max()
    given = np.unique(np.concatenate([np.quantile(labels, spaced), lo + (hi - lo) * spaced]))
    if given.size < 2:
        raise WeightspaceError("calibrate_prompts: the training accuracies are all equal")
    achieved = np.array([
        _median_acc(gen, jax.random.fold_in(key, j), n, x, y, accuracy=float(a),
                    guidance=float(guidance))
        for j, a in enumerate(given)
    ])  # fmt: skip
    grid = np.linspace(lo, hi, 201)  # label units
    carried = _increasing(_carry(labels, on_xy, grid))  # ... and their targets on x, y
    requested = _increasing(np.interp(achieved, carried, grid))
    return PromptCalibration(
        requested=tuple(requested.tolist()), given=tuple(given.tolist()),
        guidance=float(guidance), achieved=tuple(achieved.tolist()), examples=int(len(y)),
    )  # fmt: skip


def calibrate_prompts(
    gen: Any,
    training: Params,
    x: Any,
    y: Any,
    *,
    key: jax.Array,
    accuracy: Any,
    guidance: float = 1.0,
    n: int = 100,
    points: int = 11,
) -> PromptCalibration:
    """The `PromptCalibration` of an accuracy-conditioned generator, measured on the
    examples `x, y` (the zoo's training examples, say; never the split the results are
    reported on).

    Prompts at `points` evenly spaced quantiles (0 to 1) of the training networks' labels
    `accuracy` and at `points` evenly spaced accuracies from their lowest to their highest
    (so that sparse stretches of a skewed zoo are measured too) are each sampled `n` times
    under `guidance` (key ``fold_in(key, j)`` for the j-th lowest prompt); each prompt's
    median accuracy on `x, y` is carried back to label units through the training networks
    (the inverse of the module docstring's rule, made monotone), which is the accuracy that
    prompt reaches. ``calibration(a)`` interpolates the inverse: the prompt that reaches `a`.
    """
    labels, on_xy = _labels(gen, training, x, y, accuracy, "calibrate_prompts")
    return _calibrate(gen, x, y, labels, on_xy, key=key, guidance=guidance, n=n, points=points)


def choose_prompt_guidance(
    gen: Any,
    training: Params,
    x: Any,
    y: Any,
    *,
    key: jax.Array,
    accuracy: Any,
    prompts: Sequence[float],
    n: int = 100,
    guidance: Sequence[float] = PROMPT_GUIDANCE,
    calibrate: bool = False,
    points: int = 11,
) -> dict[str, Any]:
    """The classifier-free guidance under which an accuracy-conditioned generator's prompts
    land closest, chosen on the examples `x, y` (the zoo's training examples, say; never
    the split the results are reported on).

    Each prompt (in the units of the labels `accuracy`, the training networks' test
    accuracies) is carried to a target on `x, y` (the module docstring's rule). For each
    guidance, `n` networks per prompt (keys ``fold_in(key, j)`` for prompt `j`, the same
    for every guidance) give a median accuracy on `x, y`; the chosen guidance has the
    lowest mean absolute error to the targets (ties: the first in `guidance`). With
    `calibrate`, each guidance first gets its `PromptCalibration` (`calibrate_prompts`,
    `points` prompts, keys ``fold_in(key, 10_000 + i)`` for the i-th guidance: other
    samples than those it is judged on) and the prompts are given through it.

    Returns:
      ``{"guidance": chosen, "calibration": its `PromptCalibration` or None, "targets":
      [per prompt], "rows": [{"guidance", "given", "achieved_median", "mean_abs_error"}],
      "examples"}``.
    """
    labels, on_xy = _labels(gen, training, x, y, accuracy, "choose_prompt_guidance")
    prompts = [float(p) for p in prompts]
    if not prompts or not guidance:
        raise WeightspaceError("choose_prompt_guidance: needs at least one prompt and one guidance")
    targets = _carry(labels, on_xy, prompts)
    rows, calibrations = [], []
    for i, g in enumerate(guidance):
        cal = None
        if calibrate:
            cal = _calibrate(gen, x, y, labels, on_xy, key=jax.random.fold_in(key, 10_000 + i),
                             guidance=g, n=n, points=points)  # fmt: skip
        given = [cal(p) for p in prompts] if cal else prompts
        achieved = [
            _median_acc(gen, jax.random.fold_in(key, j), n, x, y, accuracy=p, guidance=float(g))
            for j, p in enumerate(given)
        ]
        err = float(np.mean(np.abs(np.asarray(achieved) - targets)))
        rows.append({"guidance": float(g), "given": given, "achieved_median": achieved,
                     "mean_abs_error": err})  # fmt: skip
        calibrations.append(cal)
    best = min(range(len(rows)), key=lambda i: rows[i]["mean_abs_error"])
    return {
        "guidance": rows[best]["guidance"],
        "calibration": calibrations[best],
        "targets": targets.tolist(),
        "rows": rows,
        "examples": int(len(np.asarray(y))),
    }
