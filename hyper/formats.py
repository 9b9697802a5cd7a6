"""Weight files the field exchanges: safetensors and NumPy ``.npz``, in two layouts.

- ``layout="torch"``: PyTorch `state_dict` keys and shapes (`hyper.torch_layout`: `Linear`
  weights ``[out, in]``, `Conv` weights ``[out, in, *kernel]``, attention projections as
  separate `Linear` layers, the dense layer after a flatten in C-H-W order) plus a
  ``<bn>.num_batches_tracked`` int64 scalar per BatchNorm layer, so that
  ``module.load_state_dict(safetensors.torch.load_file(p))`` (strict) takes the file as it
  is. A population is written as one file per member (``member-00000.safetensors``, ...)
  in a directory: each file is one PyTorch `state_dict`.
- ``layout="flax"``: our own leaf paths (``convs/0/kernel``) and shapes; a population is one
  file whose arrays have a leading `targets` axis.

Every file we write carries, in its metadata (safetensors' string header; ``.npz``: a
``__weightspace__`` JSON string entry): the format tag, the layout, the target's name and
rebuild config (`read_target`), each tensor's role and our leaf path, the number of targets,
and the caller's metadata; a ``"torch"``-layout file of a target whose convolutions pad
unequally on the two sides (zoos built before the CNN presets moved to symmetric padding)
also carries ``"warning"`` (`hyper.torch_layout.padding_warning`: the ``F.pad`` a PyTorch
module needs), and writing it warns (`hyper.torch_layout.TorchPaddingWarning`). Files
written by other programs load as long as their keys, shapes and dtypes match the target.
Nothing is pickled: ``.npz`` files are read with ``allow_pickle=False``.

Reading checks every key, shape and dtype against the target and names the first
mismatch; a truncated, corrupted or foreign file raises `FormatError` (a
`WeightspaceError`). Non-finite values (the weights of a diverged run) load unchanged.
"""

from __future__ import annotations

import glob
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy as st_numpy

from hyper import population as pop_ops
from hyper.checkpoint import prepare_dir, stored_config_differences, target_from_stored
from hyper.errors import WeightspaceError
from hyper.target import Params, Target
from hyper.torch_layout import (
    from_torch_state_dict,
    padding_warning,
    to_torch_state_dict,
    torch_key_map,
    torch_layouts,
)
from hyper.tree import flatten_dict

__all__ = [
    "FORMATS",
    "FORMAT_TAG",
    "LAYOUTS",
    "FormatError",
    "check_tensors",
    "file_metadata",
    "from_tensors",
    "load_file",
    "load_npz",
    "load_safetensors",
    "load_weights",
    "member_files",
    "read_metadata",
    "read_target",
    "save_npz",
    "save_safetensors",
    "save_weights",
    "to_tensors",
    "write_member_files",
]

FORMATS = ("safetensors", "npz")
LAYOUTS = ("torch", "flax")
FORMAT_TAG = "weightspace-weights"
"""The ``format`` entry of the metadata of every file written here."""

_NPZ_META = "__weightspace__"
_NBT = "num_batches_tracked"


class FormatError(WeightspaceError):
    """A weight file that cannot be read (truncated, corrupted, not the format) or does
    not match its target (a key, shape or dtype); the message names the file and the
    first mismatch."""


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise WeightspaceError(f"unknown layout {layout!r}; expected one of {list(LAYOUTS)}")
    return layout


def _bn_layers(target: Target, keys: Mapping[str, str]) -> list[str]:
    """Torch key prefixes of the layers holding running statistics (BatchNorm)."""
    out: list[str] = []
    for s in target.spec:
        if s.role == "running_stat":
            prefix = keys[s.path].rsplit(".", 1)[0] if "." in keys[s.path] else ""
            if prefix not in out:
                out.append(prefix)
    return out


def _nbt_key(prefix: str) -> str:
    return f"{prefix}.{_NBT}" if prefix else _NBT


def to_tensors(
    target: Target,
    params: Params,
    *,
    layout: str = "torch",
    batched: bool = False,
    key_map: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Params (a population if `batched`) as ``{key: numpy array}`` in `layout`.

    ``"torch"``: `hyper.torch_layout.to_torch_state_dict` plus a ``num_batches_tracked``
    int64 zero per BatchNorm layer (`[targets]` zeros if `batched`); ``"flax"``: our leaf
    paths and shapes.
    """
    _check_layout(layout)
    if layout == "flax":
        target.validate(params, batched=batched)
        flat = flatten_dict(params)
        return {s.path: np.asarray(flat[s.path], order="C") for s in target.spec}
    out = to_torch_state_dict(target, params, batched=batched, key_map=key_map)
    keys = dict(key_map) if key_map is not None else torch_key_map(target)
    lead = (pop_ops.num_targets(params),) if batched else ()
    for prefix in _bn_layers(target, keys):
        out[_nbt_key(prefix)] = np.zeros(lead, np.int64)
    return out


def _expected(
    target: Target, layout: str, key_map: Mapping[str, str] | None
) -> tuple[dict[str, tuple[str, tuple[int, ...], str]], dict[str, str]]:
    """``{key: (our path, shape for one target, dtype)}`` of the leaves in `layout`, and
    the optional ``num_batches_tracked`` keys -> their layer."""
    if layout == "flax":
        return {s.path: (s.path, s.shape, s.dtype) for s in target.spec}, {}
    keys = dict(key_map) if key_map is not None else torch_key_map(target)
    layouts = torch_layouts(target)
    want = {keys[s.path]: (s.path, layouts[s.path].torch_shape, s.dtype) for s in target.spec}
    nbt = {_nbt_key(p): p for p in _bn_layers(target, keys)}
    return want, nbt


def from_tensors(
    target: Target,
    tensors: Mapping[str, np.ndarray],
    *,
    layout: str = "torch",
    batched: bool | None = None,
    key_map: Mapping[str, str] | None = None,
    where: str = "tensors",
) -> Params:
    """The params that `tensors` (``{key: array}`` in `layout`) hold, after checking every
    key, shape and dtype against `target` (the first mismatch is named).

    Args:
      batched: whether the arrays have a leading `targets` axis (None: read from the first
        leaf's rank).
      where: the file named in errors.

    Raises:
      FormatError: a missing or unexpected key, a shape or dtype that differs from the
        target's, or leading axes that disagree between tensors.
    """
    lead = check_tensors(
        target, tensors, layout=layout, batched=batched, key_map=key_map, where=where
    )
    want, _ = _expected(target, layout, key_map)
    if layout == "flax":
        return pop_ops.from_numpy(target, {k: tensors[k] for k in want}, batched=bool(lead))
    sd = {k: tensors[k] for k in want}
    return from_torch_state_dict(target, sd, batched=bool(lead), key_map=key_map)


def check_tensors(
    target: Target,
    tensors: Mapping[str, np.ndarray],
    *,
    layout: str = "torch",
    batched: bool | None = None,
    key_map: Mapping[str, str] | None = None,
    where: str = "tensors",
) -> int:
    """Checks every key, shape and dtype of `tensors` against `target` (see
    `from_tensors`); returns the number of leading axes (0, or 1 for a population).

    Raises:
      FormatError: the first mismatch.
    """
    _check_layout(layout)
    want, nbt = _expected(target, layout, key_map)
    for k in want:
        if k not in tensors:
            raise FormatError(
                f"{where}: no tensor {k!r} (leaf {want[k][0]!r} of {target.name}, {layout} layout)"
            )
    extra = [k for k in tensors if k not in want and k not in nbt]
    if extra:
        raise FormatError(
            f"{where}: unexpected tensor {extra[0]!r} for {target.name} ({layout} layout; "
            f"{len(extra)} unexpected in all)"
        )
    first = next(iter(want))
    lead = (np.ndim(tensors[first]) - len(want[first][1])) if batched is None else int(batched)
    if lead not in (0, 1):
        raise FormatError(
            f"{where}: tensor {first!r} has shape {np.shape(tensors[first])}, expected "
            f"{want[first][1]} or (targets, *{want[first][1]})"
        )
    n = np.shape(tensors[first])[0] if lead else None
    for k, (path, shape, dtype) in want.items():
        a = tensors[k]
        expect = ((n,) if lead else ()) + tuple(shape)
        if tuple(np.shape(a)) != expect:
            raise FormatError(
                f"{where}: tensor {k!r} (leaf {path!r}) has shape {tuple(np.shape(a))}, "
                f"expected {expect}"
            )
        if np.asarray(a).dtype != np.dtype(dtype):
            raise FormatError(
                f"{where}: tensor {k!r} (leaf {path!r}) has dtype {np.asarray(a).dtype}, "
                f"expected {dtype}"
            )
    for k in nbt:
        if k in tensors:
            a = np.asarray(tensors[k])
            if a.dtype.kind not in "iu" or a.shape not in ((), (n,) if lead else ()):
                raise FormatError(
                    f"{where}: {k!r} must be an integer scalar{' per target' if lead else ''}, "
                    f"got {a.dtype} {a.shape}"
                )
    return lead


def file_metadata(
    target: Target,
    tensors: Mapping[str, np.ndarray],
    *,
    layout: str,
    num_targets: int | None,
    metadata: Mapping[str, Any] | None = None,
    key_map: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The string metadata stored with a file: format tag, layout, target name and
    rebuild config, each tensor's role and our path, the number of targets (None: one
    network, no `targets` axis) and the caller's `metadata` (JSON). In the ``"torch"``
    layout, a target whose convolutions pad unequally on the two sides (old zoos' XLA
    'SAME' at stride 2) adds ``"warning"``: `hyper.torch_layout.padding_warning`, what the
    PyTorch module must do to compute the same function."""
    want, nbt = _expected(target, layout, key_map)
    roles = {k: target.leaf(p).role for k, (p, _, _) in want.items()}
    roles.update({k: "batch_count" for k in nbt if k in tensors})
    extra = _metadata_json(metadata)
    note = padding_warning(target) if layout == "torch" else None
    return {
        **({"warning": note} if note else {}),
        "format": FORMAT_TAG,
        "version": "1",
        "layout": layout,
        "num_targets": "" if num_targets is None else str(int(num_targets)),
        "target": json.dumps({"name": target.name, "config": target.config}, sort_keys=True),
        "roles": json.dumps(roles),
        "paths": json.dumps({k: p for k, (p, _, _) in want.items()}),
        "metadata": extra,
    }


def _metadata_json(metadata: Mapping[str, Any] | None) -> str:
    try:
        return json.dumps(dict(metadata or {}), sort_keys=True)
    except (TypeError, ValueError) as e:
        raise WeightspaceError(f"metadata must be JSON-able: {e}") from None


def _refuse_existing(path: str, overwrite: bool) -> None:
    if os.path.isdir(path):
        raise FormatError(f"{path} is a directory; give a file path")
    if os.path.exists(path) and not overwrite:
        raise FormatError(f"{path} exists; use --overwrite (overwrite=True) to replace it")


def _write_safetensors(path: str, tensors: Mapping[str, np.ndarray], meta: dict[str, str]):
    # the bytes written through open(): save_file creates files readable by their owner only
    data = st_numpy.save(dict(tensors), metadata=meta)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def member_files(directory: str) -> list[str]:
    """The per-member files of a PyTorch-layout population directory, in member order."""
    return sorted(glob.glob(os.path.join(glob.escape(directory), "member-*.safetensors")))


def save_safetensors(
    target: Target,
    params: Params,
    path: str | os.PathLike,
    *,
    layout: str = "torch",
    batched: bool = False,
    metadata: Mapping[str, Any] | None = None,
    member_metadata: list[Mapping[str, Any]] | None = None,
    key_map: Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> str:
    """Writes one network (or, with `batched`, a population) as safetensors.

    One network: one file at `path`. A population in the ``"flax"`` layout: one file whose
    arrays have a leading `targets` axis. A population in the ``"torch"`` layout: the
    directory `path` with one `state_dict` file per member, ``member-00000.safetensors``,
    ... (each with `member_metadata[i]` merged into its metadata).

    Returns:
      the absolute path written.

    Raises:
      WeightspaceError: an unknown layout, params that do not match `target`, or `path`
        exists and not `overwrite`.
    """
    _check_layout(layout)
    path = os.path.abspath(os.fspath(path))
    if not (batched and layout == "torch"):
        tensors = to_tensors(target, params, layout=layout, batched=batched, key_map=key_map)
        n = pop_ops.num_targets(params) if batched else None
        meta = file_metadata(
            target, tensors, layout=layout, num_targets=n, metadata=metadata, key_map=key_map
        )
        _refuse_existing(path, overwrite)
        _write_safetensors(path, tensors, meta)
        return path
    n = pop_ops.num_targets(params)
    if member_metadata is not None and len(member_metadata) != n:
        raise WeightspaceError(f"member_metadata has {len(member_metadata)} rows for {n} members")
    directory = prepare_dir(path, overwrite=overwrite, hint="use --overwrite (overwrite=True)")
    extra = [
        {**dict(metadata or {}), **(dict(member_metadata[i]) if member_metadata else {})}
        for i in range(n)
    ]
    write_member_files(
        directory, target, params, metadata=extra, key_map=key_map, progress=progress
    )
    return directory


def write_member_files(
    directory: str,
    target: Target,
    population: Params,
    *,
    names: Sequence[str] | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    key_map: Mapping[str, str] | None = None,
    progress: bool = False,
) -> list[str]:
    """Writes each member of `population` as one PyTorch-layout safetensors file
    ``<directory>/<name>.safetensors`` (default names ``member-00000``, ...), with
    `metadata[i]` in its metadata; returns the paths. The directory must exist."""
    from tqdm.auto import tqdm

    stacked = to_tensors(target, population, layout="torch", batched=True, key_map=key_map)
    n = pop_ops.num_targets(population)
    names = list(names) if names is not None else [f"member-{i:05d}" for i in range(n)]
    if len(names) != n or (metadata is not None and len(metadata) != n):
        raise WeightspaceError(f"write_member_files: {n} members, {len(names)} names")
    paths = []
    base = file_metadata(target, stacked, layout="torch", num_targets=None, key_map=key_map)
    for i in tqdm(range(n), disable=not progress, desc="export", unit="net"):
        one = {k: np.asarray(v[i], order="C") for k, v in stacked.items()}
        meta = dict(base)
        if metadata is not None:
            meta["metadata"] = _metadata_json(metadata[i])
        paths.append(os.path.join(directory, f"{names[i]}.safetensors"))
        _write_safetensors(paths[-1], one, meta)
    return paths


def _read_safetensors_file(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not os.path.isfile(path):
        raise FormatError(f"{path}: no such file")
    try:
        with safetensors.safe_open(path, framework="np") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except safetensors.SafetensorError as e:
        raise FormatError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a weight file we wrote (safetensors, ``.npz`` or a directory of
    member files), its JSON entries decoded; ``{}`` for a file written elsewhere.

    Raises:
      FormatError: the file cannot be read, or its weightspace metadata is malformed.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        files = member_files(path)
        if not files:
            raise FormatError(f"{path}: no member-*.safetensors files")
        path = files[0]
    raw = _read_npz(path)[1] if path.endswith(".npz") else _read_safetensors_file(path)[1]
    return _decode_meta(path, raw)


def _decode_meta(path: str, raw: Mapping[str, str]) -> dict[str, Any]:
    if raw.get("format") != FORMAT_TAG:
        return {}
    out: dict[str, Any] = dict(raw)
    for k in ("target", "roles", "paths", "metadata"):
        try:
            out[k] = json.loads(raw.get(k, "{}"))
        except (TypeError, json.JSONDecodeError) as e:
            raise FormatError(f"{path}: metadata entry {k!r} is not JSON ({e})") from None
        if not isinstance(out[k], dict):
            raise FormatError(f"{path}: metadata entry {k!r} must be a JSON object")
    if out.get("layout") not in LAYOUTS:
        raise FormatError(f"{path}: metadata layout {out.get('layout')!r} is not one of {LAYOUTS}")
    return out


def read_target(path: str | os.PathLike) -> Target:
    """The target a file we wrote describes (its stored `make_target` rebuild config).

    Raises:
      FormatError: the file has no weightspace metadata or no rebuild config (pass the
        target yourself).
    """
    meta = read_metadata(path)
    config = (meta.get("target") or {}).get("config")
    if not config or "arch" not in config:
        raise FormatError(
            f"{os.fspath(path)}: no target rebuild config in the file; give the target "
            "(a preset name or a make_target JSON config)"
        )
    return target_from_stored(config, os.fspath(path))


def _layout_of(path: str, meta: Mapping[str, Any], layout: str | None) -> str:
    stored = meta.get("layout")
    if layout is None:
        return stored or "torch"
    _check_layout(layout)
    if stored and stored != layout:
        raise FormatError(f"{path}: the file holds the {stored} layout, not {layout}")
    return layout


def load_safetensors(
    target: Target,
    path: str | os.PathLike,
    *,
    layout: str | None = None,
    key_map: Mapping[str, str] | None = None,
    progress: bool = False,
) -> Params:
    """Reads what `save_safetensors` wrote (or any file of the same keys and shapes).

    Args:
      target: the network the file holds.
      path: a file (one network, or a stacked population in the ``"flax"`` layout) or a
        directory of ``member-*.safetensors`` files (a population, one network per file).
      layout: ``"torch"`` or ``"flax"`` (default: the file's own, else ``"torch"``).

    Returns:
      the params: a population `[targets, ...]` for a stacked file or a directory.

    Raises:
      FormatError: a truncated or corrupted file, or a key, shape or dtype that does not
        match `target` (the first mismatch is named).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        from tqdm.auto import tqdm

        files = member_files(path)
        if not files:
            raise FormatError(f"{path}: no member-*.safetensors files")
        # every file checked on its own (errors name it), then one conversion of the stack
        stacked: dict[str, list[np.ndarray]] = {}
        lay = None
        for f in tqdm(files, disable=not progress, desc="import", unit="net"):
            tensors, raw = _read_safetensors_file(f)
            this = _layout_of(f, _decode_meta(f, raw), layout)
            if lay is not None and this != lay:
                raise FormatError(f"{f}: the {this} layout among files of the {lay} layout")
            lay = this
            check_tensors(target, tensors, layout=lay, batched=False, key_map=key_map, where=f)
            for k, v in tensors.items():
                stacked.setdefault(k, []).append(v)
        if len({len(v) for v in stacked.values()}) != 1:
            raise FormatError(f"{path}: the member files do not hold the same tensors")
        arrays = {k: np.stack(v) for k, v in stacked.items()}
        return from_tensors(target, arrays, layout=lay, batched=True, key_map=key_map, where=path)
    return _from_file(target, path, _read_safetensors_file(path), layout, key_map)


def _check_stored_config(target: Target, meta: Mapping[str, Any], path: str) -> None:
    """Refuses a given `target` whose config computes another function than the file's
    stored one (`hyper.checkpoint.stored_config_differences`)."""
    diff = stored_config_differences(target, (meta.get("target") or {}).get("config"), path)
    if diff:
        raise FormatError(
            f"{path}: the file holds a network of another configuration than the given target "
            f"({', '.join(diff)}): the weights fit, but they would compute another function. "
            "Load it with the file's own target (no --target / target=None: "
            "formats.load_file) or give a matching one"
        )


def _from_file(target, path, read, layout, key_map) -> Params:
    """Params from one read file ``(tensors, raw metadata)``, in its own or the given layout."""
    tensors, raw = read
    meta = _decode_meta(path, raw)
    _check_stored_config(target, meta, path)
    lay = _layout_of(path, meta, layout)
    return from_tensors(target, tensors, layout=lay, key_map=key_map, where=path)


def save_npz(
    target: Target,
    params: Params,
    path: str | os.PathLike,
    *,
    layout: str = "flax",
    batched: bool = False,
    metadata: Mapping[str, Any] | None = None,
    key_map: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> str:
    """Writes one network or a population (leading `targets` axis, both layouts) as one
    uncompressed ``.npz`` file, the metadata as the JSON string entry ``__weightspace__``.

    Returns:
      the absolute path written (exactly `path`: no suffix is added).
    """
    _check_layout(layout)
    path = os.path.abspath(os.fspath(path))
    tensors = to_tensors(target, params, layout=layout, batched=batched, key_map=key_map)
    n = pop_ops.num_targets(params) if batched else None
    meta = file_metadata(
        target, tensors, layout=layout, num_targets=n, metadata=metadata, key_map=key_map
    )
    _refuse_existing(path, overwrite)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **tensors, **{_NPZ_META: np.asarray(json.dumps(meta))})
    os.replace(tmp, path)
    return path


def _read_npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not os.path.isfile(path):
        raise FormatError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh:  # our handle: numpy leaks its own when zipfile fails
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, Mapping):  # a bare .npy array
                raise ValueError("a single .npy array, not an .npz archive")
            tensors = {k: z[k] for k in z.files}
            z.close()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as e:
        raise FormatError(f"{path}: not a readable .npz file ({e})") from None
    raw = tensors.pop(_NPZ_META, None)
    if raw is None:
        return tensors, {}
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: {_NPZ_META} is not JSON ({e})") from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError(f"{path}: {_NPZ_META} must be a JSON object of strings")
    return tensors, meta


def load_npz(
    target: Target,
    path: str | os.PathLike,
    *,
    layout: str | None = None,
    key_map: Mapping[str, str] | None = None,
) -> Params:
    """Reads what `save_npz` wrote (or any ``.npz`` of the same keys and shapes), without
    pickle; a population if the arrays have a leading `targets` axis.

    Raises:
      FormatError: as `load_safetensors`.
    """
    path = os.path.abspath(os.fspath(path))
    return _from_file(target, path, _read_npz(path), layout, key_map)


def save_weights(
    target: Target,
    params: Params,
    path: str | os.PathLike,
    *,
    format: str = "safetensors",
    layout: str = "torch",
    batched: bool = False,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> str:
    """`save_safetensors` or `save_npz` by `format` (one of `FORMATS`)."""
    if format == "safetensors":
        return save_safetensors(
            target,
            params,
            path,
            layout=layout,
            batched=batched,
            metadata=metadata,
            overwrite=overwrite,
            progress=progress,
        )
    if format == "npz":
        return save_npz(
            target,
            params,
            path,
            layout=layout,
            batched=batched,
            metadata=metadata,
            overwrite=overwrite,
        )
    raise WeightspaceError(f"unknown format {format!r}; expected one of {list(FORMATS)}")


def load_file(
    path: str | os.PathLike,
    target: Target | None = None,
    *,
    layout: str | None = None,
    key_map: Mapping[str, str] | None = None,
) -> tuple[Target, Params, dict[str, Any]]:
    """One safetensors or ``.npz`` file (by suffix: ``.npz``, else safetensors):
    ``(target, params, metadata)``, the params a population if the file is stacked.

    Args:
      target: the network the file holds (default: rebuilt from the file's metadata,
        `read_target`).

    Raises:
      FormatError: as `load_safetensors`, or no `target` and no rebuild config in the file.
    """
    path = os.path.abspath(os.fspath(path))
    reader = _read_npz if path.endswith(".npz") else _read_safetensors_file
    tensors, raw = reader(path)
    meta = _decode_meta(path, raw)
    if target is None:
        config = (meta.get("target") or {}).get("config")
        if not config or "arch" not in config:
            raise FormatError(
                f"{path}: no target rebuild config in the file; give the target "
                "(a preset name or a make_target JSON config)"
            )
        target = target_from_stored(config, path)
    else:
        _check_stored_config(target, meta, path)
    lay = _layout_of(path, meta, layout)
    params = from_tensors(target, tensors, layout=lay, key_map=key_map, where=path)
    return target, params, meta


def load_weights(
    target: Target,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    layout: str | None = None,
    progress: bool = False,
) -> Params:
    """`load_safetensors` or `load_npz` by `format` (default: ``npz`` for a ``.npz`` path,
    else safetensors)."""
    fmt = format or ("npz" if os.fspath(path).endswith(".npz") else "safetensors")
    if fmt == "safetensors":
        return load_safetensors(target, path, layout=layout, progress=progress)
    if fmt == "npz":
        return load_npz(target, path, layout=layout)
    raise WeightspaceError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
