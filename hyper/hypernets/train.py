"""Hypernetwork runs: presets, configs, checkpointed and resumable training, loading.

A run trains a `HyperNet` with `hyper.hypernets.trainer.HyperTrainer` (whose names this
module re-exports). Runs are described by a JSON-able config (see `PRESETS`), saved with Orbax every
`checkpoint_every` steps, and resume exactly: the key of step `s` is
``fold_in(key(seed), s)``.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from hyper import data as data_lib
from hyper.architectures import target_from_config
from hyper.checkpoint import (
    CheckpointError,
    PopulationCheckpointer,
    prepare_dir,
    target_from_stored,
)
from hyper.errors import WeightspaceError
from hyper.hypernets import conditions as cond_lib
from hyper.hypernets.hypernet import HyperNet
from hyper.hypernets.trainer import (
    LOSSES,
    HyperTrainer,
    NonFiniteLossError,
    cross_entropy_loss,
    flat_items,
    from_flat_items,
    l2_conditioned_loss,
    make_optimizer,
)
from hyper.target import Target

__all__ = [
    "LOSSES",
    "PRESETS",
    "HyperTrainer",
    "NonFiniteLossError",
    "build_hypernet",
    "cross_entropy_loss",
    "l2_conditioned_loss",
    "load_run",
    "make_optimizer",
    "num_steps_for",
    "parse_conditions",
    "resolve_config",
    "steps_to_threshold",
    "train_run",
]

# ---------------------------------------------------------------------------------------
# Configured runs (CLI, presets)
# ---------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "digits-mip": {
        "dataset": "digits",
        "target": {"arch": "mlp", "widths": [128, 128], "out_features": 10},
        "conditions": [
            {"kind": "continuous", "name": "gamma", "shape": [], "low": 0.0, "high": 1.0}
        ],
        "hypernet": {"hidden": [16, 64], "encoding": "cos|sin", "residual": True},
        "loss": {"kind": "l2_conditioned", "name": "gamma", "scale": 1e-3},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "steps": 1000,
        "conditions_per_step": 8,
        "batch_size": 128,
        "checkpoint_every": 250,
        "seed": 0,
        "reduce_groups": None,
    }
}
"""``digits-mip``: MIP task T1 — one hypernet maps γ ∈ [0, 1] to all weights of an MLP
64-128-128-10 on digits; loss = cross-entropy + γ·1e-3·‖θ‖². ``reduce_groups`` (see
`HyperTrainer`) set to an int makes a run's weights the same bits with or without a mesh."""

_RUN_KEYS = set(PRESETS["digits-mip"])


def resolve_config(config: str | Mapping[str, Any]) -> dict[str, Any]:
    """A preset name, a JSON file path, or a dict -> a full, validated run config.

    Missing keys take the ``digits-mip`` defaults.
    """
    if isinstance(config, str):
        if config in PRESETS:
            config = PRESETS[config]
        else:
            try:
                with open(config) as f:
                    config = json.load(f)
            except OSError as e:
                raise WeightspaceError(
                    f"config {config!r} is neither a preset {sorted(PRESETS)} nor a readable file: "
                    f"{e.strerror}"
                ) from None
            except json.JSONDecodeError as e:
                raise WeightspaceError(f"config {config!r} is not valid JSON: {e}") from None
    if not isinstance(config, Mapping):
        raise WeightspaceError(f"config must be a JSON object, got {type(config).__name__}")
    unknown = sorted(set(config) - _RUN_KEYS)
    if unknown:
        raise WeightspaceError(f"config: unknown keys {unknown}; expected {sorted(_RUN_KEYS)}")
    full = copy.deepcopy(PRESETS["digits-mip"])
    full.update(copy.deepcopy(dict(config)))
    for k in ("steps", "conditions_per_step", "batch_size", "checkpoint_every"):
        v = full[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "steps" else 1):
            raise WeightspaceError(f"config[{k!r}] must be a positive int, got {v!r}")
    g = full["reduce_groups"]
    if g is not None and (
        isinstance(g, bool) or not isinstance(g, int) or g < 1 or full["conditions_per_step"] % g
    ):
        raise WeightspaceError(
            f"config['reduce_groups'] must be null or a positive divisor of "
            f"conditions_per_step={full['conditions_per_step']}, got {g!r}"
        )
    if full["dataset"] not in data_lib.available():
        raise WeightspaceError(f"config['dataset']: unknown {full['dataset']!r}")
    for k in ("target", "hypernet", "loss", "optimizer"):
        if not isinstance(full[k], Mapping):
            raise WeightspaceError(f"config[{k!r}] must be a JSON object, got {full[k]!r}")
    if not isinstance(full["seed"], int) or isinstance(full["seed"], bool):
        raise WeightspaceError(f"config['seed'] must be an int, got {full['seed']!r}")
    if full["loss"].get("kind") not in LOSSES:
        raise WeightspaceError(f"config['loss']['kind'] must be one of {sorted(LOSSES)}")
    if not isinstance(full["target"].get("arch"), str):
        raise WeightspaceError("config['target'] needs an 'arch' name")
    if "input_shape" in full["target"]:
        raise WeightspaceError(
            "config['target']: 'input_shape' comes from the dataset; leave it out"
        )
    hnet_args = set(inspect.signature(HyperNet.__init__).parameters) - {
        "self",
        "target",
        "conditions",
        "rngs",
        "theta0",
    }
    unknown = sorted(set(full["hypernet"]) - hnet_args)
    if unknown:
        raise WeightspaceError(
            f"config['hypernet']: unknown keys {unknown}; expected {sorted(hnet_args)}"
        )
    try:
        make_optimizer(**full["optimizer"])
    except TypeError as e:
        raise WeightspaceError(f"config['optimizer']: {e}") from None
    if not isinstance(full["conditions"], list) or not all(
        isinstance(c, Mapping) for c in full["conditions"]
    ):
        raise WeightspaceError("config['conditions'] must be a list of JSON objects")
    try:
        cond_lib.from_json(full["conditions"])  # validates
    except TypeError as e:
        raise WeightspaceError(f"config['conditions']: {e}") from None
    return full


def build_hypernet(config: Mapping[str, Any]) -> tuple[HyperNet, data_lib.Dataset]:
    """The freshly initialised hypernet of a resolved run config, and its dataset."""
    ds = data_lib.load(config["dataset"])
    try:  # the run config is user input: a target it does not describe is bad input
        target = target_from_config({**config["target"], "input_shape": list(ds.input_shape)})
    except (ValueError, TypeError) as e:
        raise WeightspaceError(f"config['target']: {e}") from e
    return _hypernet(config, target), ds


def _hypernet(config: Mapping[str, Any], target: Target) -> HyperNet:
    specs = cond_lib.from_json(config["conditions"])
    try:
        return HyperNet(target, specs, rngs=nnx.Rngs(config["seed"]), **config["hypernet"])
    except (ValueError, TypeError) as e:  # the run config's hypernet options are user input
        raise WeightspaceError(f"config['hypernet']: {e}") from e


def _trainer(
    config: Mapping[str, Any],
    hnet: HyperNet,
    ds: data_lib.Dataset,
    mesh: jax.sharding.Mesh | None = None,
) -> HyperTrainer:
    loss_cfg = dict(config["loss"])
    loss_fn = LOSSES[loss_cfg.pop("kind")](**loss_cfg)
    opt_cfg = dict(config["optimizer"])
    return HyperTrainer(
        hnet,
        ds.x_train,
        ds.y_train,
        loss_fn=loss_fn,
        optimizer=make_optimizer(**opt_cfg),
        conditions_per_step=config["conditions_per_step"],
        batch_size=config["batch_size"],
        mesh=mesh,
        reduce_groups=config["reduce_groups"],
    )


def train_run(
    config: str | Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> HyperTrainer:
    """Trains a configured hypernet, checkpointing to `out_dir` (resumable).

    `mesh` (`hyper.sharding.targets_mesh`) splits each step's targets over its devices; it
    changes placement only, so a run may be resumed with or without one.

    Raises:
      ValueError: bad config, or `out_dir` holds another run and neither flag fits.
      NonFiniteLossError: the loss diverged; the last good checkpoint stays latest.
    """
    from tqdm.auto import tqdm

    config = resolve_config(config)
    for k in ("conditions_per_step", "reduce_groups"):  # refused before anything is written
        if mesh is not None and config[k] and config[k] % mesh.devices.size:
            raise WeightspaceError(
                f"{k}={config[k]} must be a multiple of the {mesh.devices.size} devices to "
                "shard the targets"
            )
    directory = os.path.abspath(os.fspath(out_dir))
    run_json = os.path.join(directory, "hypernet.json")
    if not overwrite and os.path.exists(run_json):  # a run is there: continue it or refuse
        old = _read_run(directory)
        try:  # a run written before a key existed has that key's default
            old_config = resolve_config(old.get("config"))
        except ValueError:
            old_config = old.get("config")
        if json.dumps(old_config, sort_keys=True) != json.dumps(config, sort_keys=True):
            raise WeightspaceError(f"{directory} holds a different hypernet run; use overwrite")
        if not resume:
            raise WeightspaceError(f"{directory} already holds this run; use resume to continue it")
    else:
        prepare_dir(directory, overwrite=overwrite, holds="hypernet run", hint="use overwrite")
    hnet, ds = build_hypernet(config)
    trainer = _trainer(config, hnet, ds, mesh)
    if not os.path.exists(run_json):
        with open(run_json + ".tmp", "w") as f:
            json.dump(
                {"format": "weightspace-hypernet", "config": config, "hypernet": hnet.config},
                f,
                indent=1,
            )
        os.replace(run_json + ".tmp", run_json)
    key = jax.random.key(config["seed"])
    every = config["checkpoint_every"]
    with PopulationCheckpointer(os.path.join(directory, "checkpoints")) as ckpt:
        start = 0
        losses: list[float] = []
        if ckpt.latest_step() is not None:
            start = ckpt.latest_step()
            abstract = jax.tree.map(
                lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), trainer.arrays()
            )
            arrays, meta = ckpt.restore(start, abstract)
            trainer.load_arrays(arrays)
            trainer.step_count = start
            losses = list(meta.get("losses", []))
        steps = config["steps"]
        bar = tqdm(total=steps, initial=start, disable=not progress, desc="hypernet", unit="step")
        try:
            s = start
            while s < steps:
                n = min(every - s % every, steps - s)
                if stop_after_steps is not None:
                    n = min(n, start + stop_after_steps - s)
                    if n <= 0:
                        break
                losses.extend(trainer.run(key, n, start=s).tolist())
                s += n
                bar.update(n)
                if s % every == 0 or s == steps:
                    ckpt.save(s, trainer.arrays(), meta={"step": s, "losses": losses})
        finally:
            bar.close()
    return trainer


def _read_run(directory: str) -> dict[str, Any]:
    """The checked ``hypernet.json`` of a run directory.

    Raises:
      CheckpointError: missing, unreadable or not a weightspace hypernet run.
    """
    run_json = os.path.join(directory, "hypernet.json")
    try:
        with open(run_json) as f:
            run = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory} holds no readable hypernet run: {e}") from None
    if not isinstance(run, dict) or run.get("format") != "weightspace-hypernet":
        raise CheckpointError(f"{run_json} is not a weightspace hypernet run")
    return run


def load_run(
    directory: str | os.PathLike, step: int | None = None
) -> tuple[HyperNet, dict[str, Any]]:
    """The trained hypernet of a run directory (latest or given step) and its run config."""
    directory = os.path.abspath(os.fspath(directory))
    run_json = os.path.join(directory, "hypernet.json")
    run = _read_run(directory)
    config = resolve_config(run["config"])
    # The hypernet's own config holds the target with its input shape: no dataset to load.
    target_config = (run.get("hypernet") or {}).get("target")
    if not isinstance(target_config, Mapping):
        raise CheckpointError(f"{run_json} has no hypernet target config")
    hnet = _hypernet(config, target_from_stored(target_config, run_json))
    graphdef, params, rest = nnx.split(hnet, nnx.Param, ...)
    items = {"params": flat_items(params), "rest": flat_items(rest, skip_keys=True)}
    abstract = {
        k: jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), v)
        for k, v in items.items()
        if v  # an empty item is not stored
    }
    with PopulationCheckpointer(os.path.join(directory, "checkpoints"), read_only=True) as ckpt:
        arrays, _ = ckpt.restore(step, abstract)
    params = from_flat_items("params", params, arrays.get("params", {}))
    rest = from_flat_items("rest", rest, arrays.get("rest", {}), skip_keys=True)
    return nnx.merge(graphdef, params, rest), config


def parse_conditions(text: str, hnet: HyperNet) -> dict[str, np.ndarray]:
    """Conditions from a JSON file (``{name: list}``) or a grid ``name=lo:hi:n[,name=...]``.

    A grid over several names takes their cross product.
    """
    if os.path.exists(text):
        try:
            with open(text) as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise WeightspaceError(f"--conditions: {text} is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise WeightspaceError(f"--conditions: {text} must hold a JSON object of name -> list")
        out = {}
        for k, v in raw.items():
            try:
                a = np.asarray(v)
            except ValueError as e:  # ragged lists
                raise WeightspaceError(f"--conditions: {k!r}: {e}") from None
            if a.dtype.kind not in "iuf":
                raise WeightspaceError(f"--conditions: {k!r} must be numbers")
            out[k] = a.astype(np.int32) if a.dtype.kind in "iu" else a.astype(np.float32)
        hnet.validate(out)
        return out
    axes = {}
    for part in text.split(","):
        name, eq, rng = part.partition("=")
        bits = rng.split(":")
        if not eq or len(bits) != 3:
            raise WeightspaceError(f"--conditions: {part!r} is neither a file nor name=lo:hi:n")
        try:
            lo, hi, n = float(bits[0]), float(bits[1]), int(bits[2])
        except ValueError:
            raise WeightspaceError(
                f"--conditions: {part!r}: expected numbers in name=lo:hi:n"
            ) from None
        if n < 1:
            raise WeightspaceError(f"--conditions: {part!r}: n must be >= 1")
        axes[name.strip()] = np.linspace(lo, hi, n, dtype=np.float32)
    mesh = np.meshgrid(*axes.values(), indexing="ij")
    out = {k: m.reshape(-1) for k, m in zip(axes, mesh, strict=True)}
    hnet.validate(out)
    return out


def steps_to_threshold(losses: np.ndarray, threshold: float, window: int = 20) -> int | None:
    """First step at which the running mean loss (over `window` steps) is <= `threshold`."""
    losses = np.asarray(losses, np.float64)
    if losses.size < window:
        return None
    run = np.convolve(losses, np.ones(window) / window, mode="valid")
    hits = np.nonzero(run <= threshold)[0]
    return int(hits[0] + window) if hits.size else None


def num_steps_for(total_examples: int, batch_size: int) -> int:
    return math.ceil(total_examples / batch_size)
