"""Orbax checkpoints of populations, optimizer states and metadata.

One wrapper around Orbax's V0 `CheckpointManager` so that a later move to another API
touches one file. Conventions:

- paths are made absolute before Orbax sees them;
- arrays are always restored against an abstract tree (`jax.ShapeDtypeStruct`s), never
  inferred from disk, and nothing is unpickled;
- metadata is JSON beside the arrays (an Orbax ``JsonSave`` item);
- a step becomes visible only after Orbax's atomic commit (a half-written step is a
  ``*.orbax-checkpoint-tmp`` directory, never listed as a step);
- every step holds a manifest (a JSON item): each array leaf's path, shape, dtype and
  SHA-256, plus the Target spec when the caller gives one. Restoring checks the stored
  structure against the manifest and the asked-for trees before reading, and every restored
  array against its checksum after, so a corrupted, truncated or mismatched checkpoint is a
  `CheckpointError` naming what is wrong, never garbage weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from hyper import sharding
from hyper.architectures import target_from_config
from hyper.errors import WeightspaceError
from hyper.target import Params, Target, path_str

__all__ = [
    "CheckpointError",
    "PopulationCheckpointer",
    "abstract_like",
    "load_model",
    "load_population",
    "prepare_dir",
    "read_model_metadata",
    "safe_join",
    "save_model",
    "save_population",
    "stored_config_differences",
    "target_from_stored",
]

_MANIFEST = "manifest"
_RESERVED = ("meta", _MANIFEST)


class CheckpointError(WeightspaceError):
    """A checkpoint is missing, incomplete or does not match what is asked of it."""


def _abs(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def abstract_like(tree: Any) -> Any:
    """`jax.ShapeDtypeStruct`s (on the default device) for every array leaf of `tree`."""
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            sharding = x.sharding if x.sharding is not None else dev
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return jax.ShapeDtypeStruct(
            np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype, sharding=dev
        )

    return jax.tree.map(one, tree)


def safe_join(root: str | os.PathLike, *parts: str) -> str:
    """`root` joined with path parts read from metadata, refusing any that would leave it.

    Raises:
      CheckpointError: a part is not a non-empty string, is absolute, or the joined path
        (after resolving ``..`` and symbolic links) lies outside `root`.
    """
    root_real = os.path.realpath(os.fspath(root))
    for part in parts:
        if not isinstance(part, str) or not part or "\x00" in part:
            raise CheckpointError(f"path component {part!r} in metadata is not a valid name")
        if os.path.isabs(part):
            raise CheckpointError(f"path {part!r} in metadata is absolute")
    joined = os.path.realpath(os.path.join(root_real, *parts))
    if os.path.commonpath([root_real, joined]) != root_real:
        raise CheckpointError(
            f"path {os.path.join(*parts)!r} in metadata escapes the directory {root_real}"
        )
    return joined


def _brief(e: BaseException) -> str:
    """The first line of an Orbax/TensorStore error, without TensorStore's spec dump."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text.split(" [tensorstore_spec=")[0]


def _sha256(x: Any) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def _manifest_of(tree: Any) -> dict[str, dict[str, Any]]:
    return {
        path_str(p): {
            "shape": list(np.shape(x)),
            "dtype": str(np.asarray(x).dtype),
            "sha256": _sha256(x),
        }
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _to_host(tree: Any) -> Any:
    """Gathers (possibly sharded) arrays to host numpy so checkpoints do not depend on the
    device layout they were made on; arrays spanning several processes are gathered from
    all of them (a collective: every process saves)."""
    return sharding.to_host(tree)


def prepare_dir(
    directory: str | os.PathLike,
    *,
    overwrite: bool = False,
    holds: str | None = None,
    hint: str = "pass overwrite=True",
    ignore: Sequence[str] = (),
    write: bool = True,
) -> str:
    """Makes `directory` ready to be written: refused if it exists and is not a directory,
    or holds anything (names in `ignore` aside) unless `overwrite`, which deletes it; then
    created (with its parents).

    Args:
      directory: the output directory.
      overwrite: replace what the directory holds.
      holds: what the caller writes (``"zoo"``), named in the refusal: "... is not empty and
        holds no zoo".
      hint: how the user asks to overwrite, in the refusal (``"use --overwrite"``).
      ignore: names that do not make the directory non-empty (a killed writer's ``*.tmp``).
      write: delete and create (False: only the checks, e.g. on processes other than the
        one that writes).

    Returns:
      the absolute directory.

    Raises:
      CheckpointError: the path is a file, the directory is not empty and not `overwrite`,
        or it cannot be created or written.
    """
    directory = _abs(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"{directory} exists and is not a directory")
    if os.path.isdir(directory) and set(os.listdir(directory)) - set(ignore):
        if not overwrite:
            what = f" and holds no {holds}" if holds else ""
            raise CheckpointError(f"{directory} is not empty{what}; {hint} to replace it")
        if write:
            shutil.rmtree(directory)
    if write:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            kind = f"{holds} " if holds else ""
            raise CheckpointError(
                f"cannot create {kind}directory {directory}: {e.strerror or e}"
            ) from e
        if not os.access(directory, os.W_OK):
            raise CheckpointError(f"{directory} is not writable")
    return directory


class PopulationCheckpointer:
    """Numbered steps (e.g. epochs) of array items plus one JSON item, in one directory.

    Examples:
      >>> ckpt = PopulationCheckpointer("/tmp/run")          # doctest: +SKIP
      >>> ckpt.save(5, {"params": pop}, meta={"epoch": 5})    # doctest: +SKIP
      >>> arrays, meta = ckpt.restore(5, {"params": target.abstract_params(n)})  # doctest: +SKIP

    Args:
      directory: where steps live (``directory/<step>/<item>``); created if missing.
      read_only: open an existing directory without creating or cleaning anything.
    """

    def __init__(self, directory: str | os.PathLike, *, read_only: bool = False):
        self.directory = _abs(directory)
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"no checkpoint directory at {self.directory}")
        # Reading opens the manager without creating or cleaning (Orbax's own read_only
        # mode logs a warning per directory).
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,
            create=not read_only,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only,
        )
        self.read_only = read_only
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as e:  # e.g. a parent is a regular file, or no permission
            raise CheckpointError(
                f"cannot open checkpoint directory {self.directory}: {e.strerror or e}"
            ) from e

    def steps(self) -> list[int]:
        """Committed steps, ascending."""
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(
        self,
        step: int,
        arrays: Mapping[str, Any],
        *,
        meta: Mapping[str, Any] | None = None,
        specs: Mapping[str, Any] | None = None,
    ) -> None:
        """Saves `arrays` (name -> pytree of arrays) and JSON `meta` as `step`, atomically,
        with a manifest of per-array checksums.

        Args:
          specs: name -> the JSON spec of the `Target` the item's arrays belong to
            (``target.spec_json()``), stored in the manifest.

        Raises:
          CheckpointError: the step exists already, or the directory is not writable.
        """
        if not isinstance(step, int | np.integer) or step < 0:
            raise CheckpointError(f"checkpoint step must be a non-negative int, got {step!r}")
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only")
        reserved = [k for k in arrays if k in _RESERVED]
        if reserved:
            raise CheckpointError(f"item names {_RESERVED} are reserved, got {reserved}")
        unknown = sorted(set(specs or {}) - set(arrays))
        if unknown:
            raise CheckpointError(f"specs given for items {unknown} that are not saved")
        if int(step) in self.steps():
            raise CheckpointError(f"step {step} already exists in {self.directory}")
        try:
            meta_json = json.loads(json.dumps(dict(meta or {})))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint meta of step {step} is not JSON: {e}") from e
        host = {k: _to_host(v) for k, v in arrays.items()}
        manifest = {
            "format": "weightspace-manifest",
            "version": 1,
            "items": {k: _manifest_of(v) for k, v in host.items()},
            "specs": json.loads(json.dumps(dict(specs or {}))),
        }
        items = {k: ocp.args.StandardSave(v) for k, v in host.items()}
        items["meta"] = ocp.args.JsonSave(meta_json)
        items[_MANIFEST] = ocp.args.JsonSave(manifest)
        try:
            self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - TensorStore reports a full disk as ValueError
            self._remove_partial(int(step))
            raise CheckpointError(
                f"could not write step {step} to {self.directory} (nothing was committed): "
                f"{_brief(e)}"
            ) from e

    def _remove_partial(self, step: int) -> None:
        """Deletes what a failed save of `step` left (Orbax's uncommitted tmp directory), so
        that a full disk does not also leave a half-written step behind."""
        prefix = f"{step}.orbax-checkpoint-tmp"
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if name.startswith(prefix):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def restore(
        self, step: int | None, abstract: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restores the named array items against abstract trees, plus the JSON meta.

        Args:
          step: the step, or None for the latest.
          abstract: name -> tree of `jax.ShapeDtypeStruct` (or arrays) giving the
            expected structure, shapes and dtypes.

        Raises:
          CheckpointError: no such step, or the stored arrays do not match `abstract`.
        """
        steps = self.steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"no committed checkpoint in {self.directory}")
            step = steps[-1]
        if step not in steps:
            raise CheckpointError(f"no step {step} in {self.directory}; steps: {steps}")
        abstract = {k: abstract_like(v) for k, v in abstract.items()}
        if jax.process_count() > 1:  # every process reads whole arrays onto its own device
            local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            abstract = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=local), abstract
            )
        manifest = self.manifest(step)
        for name, tree in abstract.items():
            self._check_manifest(step, manifest, name, tree)
            self._check_stored(step, name, tree)
        items = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
        items["meta"] = ocp.args.JsonRestore()
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many kinds on bad data
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} is unreadable or does not match what was "
                f"asked: {type(e).__name__}: {_brief(e)}"
            ) from e
        arrays = {k: out[k] for k in abstract}
        for name, tree in arrays.items():
            _check_like(f"{name}", tree, abstract[name])
            self._check_checksums(step, manifest["items"][name], name, tree)
        return arrays, dict(out["meta"] or {})

    def manifest(self, step: int) -> dict[str, Any]:
        """The manifest of `step`: ``{"items": {name: {leaf: {shape, dtype, sha256}}},
        "specs": {name: target spec}}``.

        Raises:
          CheckpointError: no such step, or it has no readable manifest.
        """
        if step not in self.steps():
            raise CheckpointError(f"no step {step} in {self.directory}")
        where = f"checkpoint {self.directory}/{step}"
        if not os.path.isdir(os.path.join(self.directory, str(step), _MANIFEST)):
            raise CheckpointError(f"{where} has no manifest (not written by weightspace?)")
        try:
            out = self._manager.restore(
                step, args=ocp.args.Composite(**{_MANIFEST: ocp.args.JsonRestore()})
            )
        except Exception as e:  # noqa: BLE001 - a corrupted JSON item fails in several ways
            raise CheckpointError(f"{where} has an unreadable manifest: {type(e).__name__}") from e
        m = out[_MANIFEST]
        if (
            not isinstance(m, dict)
            or m.get("format") != "weightspace-manifest"
            or not isinstance(m.get("items"), dict)
            or not all(isinstance(v, dict) for v in m["items"].values())
        ):
            raise CheckpointError(f"{where} has a malformed manifest")
        return m

    def _check_manifest(self, step: int, manifest: Mapping[str, Any], name: str, abstract: Any):
        where = f"checkpoint {self.directory}/{step}"
        if name not in manifest["items"]:
            raise CheckpointError(
                f"{where} has no item {name!r}; items: {sorted(manifest['items'])}"
            )
        listed = manifest["items"][name]
        for p, entry in listed.items():
            if not isinstance(entry, dict) or not {"shape", "dtype", "sha256"} <= set(entry):
                raise CheckpointError(f"{where}: manifest entry of {name}/{p} is malformed")
        try:
            stored = {p: (tuple(e["shape"]), np.dtype(e["dtype"])) for p, e in listed.items()}
        except TypeError as e:
            raise CheckpointError(f"{where}: manifest of {name!r} is malformed: {e}") from None
        _compare_leaves(where, name, stored, abstract)

    def _check_checksums(self, step: int, listed: Mapping[str, Any], name: str, tree: Any):
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                continue  # another process holds part of it; it checks what it reads
            if _sha256(np.asarray(jax.device_get(x))) != listed[path_str(p)]["sha256"]:
                raise CheckpointError(
                    f"checkpoint {self.directory}/{step}: {name}/{path_str(p)} does not match "
                    "its checksum (the stored data is corrupted)"
                )

    def restore_meta(self, step: int) -> dict[str, Any]:
        """Only the JSON item of `step`."""
        if step not in self.steps():
            raise CheckpointError(f"no step {step} in {self.directory}")
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} has no readable JSON meta: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from e
        return dict(out["meta"] or {})

    def _check_stored(self, step: int, name: str, abstract: Any) -> None:
        """Compares the on-disk leaf paths, shapes and dtypes of item `name` with `abstract`
        before Orbax reads any array (Orbax would silently cast dtypes, and its structure
        errors do not name the leaf)."""
        where = f"checkpoint {self.directory}/{step}"
        step_dir = os.path.join(self.directory, str(step))
        item_dir = os.path.join(step_dir, name)
        if not os.path.isdir(item_dir):
            stored = sorted(
                d for d in os.listdir(step_dir) if os.path.isdir(os.path.join(step_dir, d))
            )
            raise CheckpointError(f"{where} has no item {name!r}; items: {stored}")
        try:
            md = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir))
        except (OSError, ValueError) as e:
            raise CheckpointError(
                f"{where}: item {name!r} is unreadable (corrupted, or not an array tree): "
                f"{_brief(e)}"
            ) from e
        tree = getattr(md, "tree", md)
        stored = {
            path_str(p): (tuple(m.shape), np.dtype(m.dtype))
            for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]
            if hasattr(m, "shape") and hasattr(m, "dtype")
        }
        _compare_leaves(where, name, stored, abstract)

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> PopulationCheckpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _compare_leaves(
    where: str, name: str, stored: Mapping[str, tuple[tuple[int, ...], Any]], abstract: Any
) -> None:
    """Stored leaf paths, shapes and dtypes (`stored`: path -> (shape, dtype)) against the
    asked-for tree: missing, extra and mismatched leaves are named."""
    asked = {
        path_str(p): (tuple(a.shape), np.dtype(a.dtype))
        for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]
    }
    missing = [p for p in asked if p not in stored]
    if missing:
        raise CheckpointError(f"{where}: item {name!r} has no leaves {missing}")
    extra = [p for p in stored if p not in asked]
    if extra:
        raise CheckpointError(f"{where}: item {name!r} holds leaves {extra} not asked for")
    for p, (shape, dtype) in asked.items():
        if stored[p] != (shape, dtype):
            raise CheckpointError(
                f"{where}: {name}/{p}: stored {stored[p][0]} {stored[p][1]}, "
                f"asked for {shape} {dtype}"
            )


def _check_like(name: str, tree: Any, abstract: Any) -> None:
    flat_t = jax.tree_util.tree_flatten_with_path(tree)[0]
    flat_a = jax.tree_util.tree_flatten_with_path(abstract)[0]
    if len(flat_t) != len(flat_a):
        raise CheckpointError(f"{name}: restored {len(flat_t)} leaves, expected {len(flat_a)}")
    for (path, t), (_, a) in zip(flat_t, flat_a, strict=True):
        if tuple(np.shape(t)) != tuple(np.shape(a)) or np.dtype(t.dtype) != np.dtype(a.dtype):
            raise CheckpointError(
                f"{name}{jax.tree_util.keystr(path)}: stored {np.shape(t)} {t.dtype}, "
                f"expected {np.shape(a)} {a.dtype}"
            )


def target_from_stored(config: Mapping[str, Any], where: str) -> Target:
    """The target a checkpoint's stored rebuild config describes (`target_from_config`).

    Raises:
      CheckpointError: the stored config does not build a target (a hand-edited or foreign
        file); the message names `where` the config was read.
    """
    try:
        return target_from_config(config)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{where}: the stored target config does not build: {e}") from e


_STORED: dict[str, Target | None] = {}  # a stored config's JSON -> its target (None: no build)


def stored_config_differences(target: Target, stored: Any, where: str) -> list[str]:
    """How a given `target`'s config differs from a file's `stored` rebuild config, as
    ``"key: file X, given Y"`` lines (`Target.config_differences` after rebuilding the
    stored config: e.g. a preset that now pads symmetrically, given for a file of a 'SAME'
    zoo). Empty when they agree, or when `stored` is missing or does not build."""
    if not isinstance(stored, dict) or not target.config or stored == target.config:
        return []
    key = json.dumps(stored, sort_keys=True)
    if key not in _STORED:
        try:
            _STORED[key] = target_from_stored(stored, where)
        except CheckpointError:
            _STORED[key] = None
    rebuilt = _STORED[key]
    diff = target.config_differences(rebuilt) if rebuilt is not None else []
    return [f"{k}: file {rebuilt.config.get(k)!r}, given {target.config.get(k)!r}" for k in diff]


def _stored_target(stored: Mapping[str, Any], target: Target | None, where: str) -> Target:
    """The target to restore against: `target`, or rebuilt from the stored config. A
    network with fewer units (``{"derived_from": config}``, `Target.derive`) is its
    original rebuilt (or `target` when given at the original sizes), derived at the
    stored shapes."""
    config = stored.get("config") or {}
    root = config
    while isinstance(root, Mapping) and "derived_from" in root:
        root = root["derived_from"]
    if target is None:
        if not root:
            what = "a network derived from one" if root is not config else "it"
            raise CheckpointError(
                f"{where}: target {stored['name']!r} has no rebuild config ({what} without "
                "a config); pass target= (the target, or its original)"
            )
        target = target_from_stored(dict(root), where)
    shapes = {s["path"]: tuple(s["shape"]) for s in stored["spec"]}
    if list(shapes) == target.paths and any(shapes[s.path] != s.shape for s in target.spec):
        abstract = jax.tree.unflatten(
            target.treedef,
            [jax.ShapeDtypeStruct(shapes[s.path], np.dtype(s.dtype)) for s in target.spec],
        )
        try:
            target = target.derive(abstract, name=stored["name"], config=dict(config), check=False)
        except ValueError as e:
            raise CheckpointError(f"{where}: the stored shapes do not fit the target: {e}") from e
    return target


def save_population(
    directory: str | os.PathLike,
    population: Params,
    target: Target,
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Saves a population with its target description (spec and rebuild config).

    The result loads without the code that made the population, as long as the target
    came from `hyper.architectures.make_target` (its config is stored); other targets
    need the `target` argument of `load_population`.

    Returns:
      the absolute directory.
    """
    n = target.validate(population, batched=True)
    directory = prepare_dir(directory, overwrite=overwrite)
    meta = {
        "format": "weightspace-population",
        "version": 1,
        "num_targets": n,
        "target": {"name": target.name, "config": target.config, "spec": target.spec_json()},
        "metadata": dict(metadata or {}),
    }
    with PopulationCheckpointer(directory) as ckpt:
        ckpt.save(0, {"params": population}, meta=meta, specs={"params": target.spec_json()})
    return directory


def load_population(
    directory: str | os.PathLike, target: Target | None = None
) -> tuple[Target, Params, dict[str, Any]]:
    """Loads what `save_population` wrote: ``(target, population, metadata)``.

    Args:
      target: the target to restore against; default: rebuilt from the stored config.

    Raises:
      CheckpointError: the directory holds no population, or its spec does not match
        `target`.
    """
    with PopulationCheckpointer(directory, read_only=True) as ckpt:
        steps = ckpt.steps()
        if not steps:
            raise CheckpointError(f"no population checkpoint in {_abs(directory)}")
        meta = ckpt.restore_meta(steps[-1])
        if meta.get("format") != "weightspace-population":
            raise CheckpointError(f"{_abs(directory)} is not a weightspace population checkpoint")
        target = _stored_target(meta["target"], target, _abs(directory))
        stored = [s["path"] for s in meta["target"]["spec"]]
        if stored != target.paths:
            raise CheckpointError(
                f"{_abs(directory)}: stored leaves {stored} do not match target {target.paths}"
            )
        arrays, meta = ckpt.restore(
            steps[-1], {"params": target.abstract_params(meta["num_targets"])}
        )
    return target, arrays["params"], meta["metadata"]


def save_model(
    directory: str | os.PathLike,
    module: nnx.Module,
    *,
    format: str,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Saves an NNX module's state with JSON metadata beside it (one step, item ``state``).

    The stored JSON is ``{"format": format, **metadata}``: `load_model` checks the tag and
    hands the metadata to the function that rebuilds the module.

    Args:
      directory: the output directory (see `prepare_dir`).
      module: the model (hypernet, metanet, assembler, ...).
      format: a tag naming what is stored (``"weightspace-predictor"``).
      metadata: JSON-able; what rebuilding the module needs (its config) and more.
      overwrite: replace what `directory` holds.

    Returns:
      the absolute directory.

    Raises:
      CheckpointError: `directory` is not empty (without `overwrite`), or `metadata` is not
        JSON or uses the key ``format``.
    """
    metadata = dict(metadata or {})
    if "format" in metadata:
        raise CheckpointError("save_model: the metadata key 'format' is reserved")
    directory = prepare_dir(directory, overwrite=overwrite)
    state = nnx.to_pure_dict(nnx.state(module))
    with PopulationCheckpointer(directory) as ckpt:
        ckpt.save(0, {"state": state}, meta={"format": format, **metadata})
    return directory


def read_model_metadata(
    directory: str | os.PathLike, *, format: str, what: str | None = None
) -> dict[str, Any]:
    """The JSON metadata `save_model` stored (``format`` included), after the tag check.

    Raises:
      CheckpointError: no checkpoint, or one of another format (named by `what`, default
        the format tag).
    """
    directory = _abs(directory)
    what = what or format
    with PopulationCheckpointer(directory, read_only=True) as ckpt:
        steps = ckpt.steps()
        if not steps:
            raise CheckpointError(f"no {what} checkpoint in {directory}")
        meta = ckpt.restore_meta(steps[-1])
    if meta.get("format") != format:
        raise CheckpointError(f"{directory} holds no {what} (format {meta.get('format')!r})")
    return meta


def load_model(
    directory: str | os.PathLike,
    build: Callable[[dict[str, Any]], nnx.Module],
    *,
    format: str,
    what: str | None = None,
) -> tuple[nnx.Module, dict[str, Any]]:
    """Loads what `save_model` wrote: ``(module, metadata)``.

    Args:
      directory: the saved model.
      build: metadata -> a freshly initialised module of the stored structure; its state
        is the abstract tree the arrays are restored against.
      format: the expected format tag.
      what: the model's name in error messages (default: `format`).

    Raises:
      CheckpointError: no checkpoint, another format, or stored arrays that do not match
        the built module (leaf paths, shapes, dtypes, checksums).
    """
    meta = read_model_metadata(directory, format=format, what=what)
    module = build(meta)
    state = nnx.state(module)
    with PopulationCheckpointer(directory, read_only=True) as ckpt:
        arrays, _ = ckpt.restore(ckpt.steps()[-1], {"state": nnx.to_pure_dict(state)})
    nnx.replace_by_pure_dict(state, arrays["state"])
    nnx.update(module, state)
    return module, meta
