"""Exporting what the platform writes and importing what others wrote: the work behind
``weightspace export`` and ``weightspace import``.

- `load_source`: the networks of a directory the platform wrote, as groups of one target
  (a zoo, a generated zoo: one group per zoo group, at one epoch; a saved population such
  as a pruned or assembled model: one group).
- `export`: those networks as safetensors or ``.npz`` files (`hyper.formats`) or as a
  Small CNN Zoo directory (`hyper.small_cnn_zoo`, every checkpointed epoch).
- `import_weights`: files of those formats as a zoo directory (`hyper.zoo_format`) that
  `hyper.zoo.load`, ``weightspace info`` and `metanets.datasets.load_zoos` read.
- `resolve_target`: a preset name or a `make_target` JSON config as a `Target`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hyper import data as data_lib
from hyper import formats, zoo_format
from hyper import population as pop_ops
from hyper import small_cnn_zoo as scz
from hyper import zoo as zoo_lib
from hyper.architectures import target_from_config
from hyper.checkpoint import load_population, prepare_dir
from hyper.errors import WeightspaceError
from hyper.target import Params, Target
from hyper.tree import flatten_dict
from hyper.zoo_presets import PRESETS

__all__ = [
    "EXPORT_FORMATS",
    "SourceGroup",
    "export",
    "import_weights",
    "load_source",
    "resolve_target",
]

EXPORT_FORMATS = (*formats.FORMATS, "small-cnn-zoo")
_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


@dataclasses.dataclass
class SourceGroup:
    """Networks of one target: `population` `[n, ...]`, one member row (``member`` id and
    hyperparameters) and one metrics row (or None) per network."""

    id: str
    target: Target
    population: Params
    members: list[dict[str, Any]]
    rows: list[dict[str, Any] | None]


def load_source(directory: str | os.PathLike, *, epoch: int | None = None) -> list[SourceGroup]:
    """The networks of a zoo directory (at `epoch`, default its last) or of a saved
    population (`hyper.checkpoint.save_population`: pruned, assembled, factory models).

    Raises:
      WeightspaceError: the directory holds neither.
    """
    d = os.path.abspath(os.fspath(directory))
    if os.path.isfile(os.path.join(d, "zoo.json")):
        z = zoo_lib.load(d, epoch=epoch)
        rows = {r["member"]: r for r in z.rows(epoch)}
        return [
            SourceGroup(
                g.id,
                g.target,
                g.params,
                list(g.members),
                [rows.get(m["member"]) for m in g.members],
            )
            for g in z.groups
        ]
    if not os.path.isdir(d):
        raise WeightspaceError(f"--from {d}: no such directory")
    if epoch is not None:
        raise WeightspaceError(f"--epoch: {d} is a saved population, not a zoo (no epochs)")
    target, pop, meta = load_population(d)
    n = pop_ops.num_targets(pop)
    return [SourceGroup("g0", target, pop, [{"member": i} for i in range(n)], [None] * n)]


def _select_member(groups: list[SourceGroup], member: int) -> list[SourceGroup]:
    for g in groups:
        for i, m in enumerate(g.members):
            if m["member"] == member:
                return [
                    SourceGroup(g.id, g.target, pop_ops.take(g.population, [i]), [m], [g.rows[i]])
                ]
    known = sorted(m["member"] for g in groups for m in g.members)
    raise WeightspaceError(f"--member {member}: no such member (members {known[0]}..{known[-1]})")


def _zoo_epochs(directory: str) -> list[int] | None:
    path = os.path.join(directory, "zoo.json")
    return zoo_format.read_config(path)["checkpoint_epochs"] if os.path.isfile(path) else None


def _small_cnn_rows(
    group: SourceGroup, epoch: int, zoo_config: Mapping[str, Any], source: str
) -> list[dict[str, Any]]:
    """Metrics rows of the Small CNN Zoo format for one group at one epoch."""
    cfg = group.target.config
    kernels = [s for s in group.target.spec if s.role == "kernel" and s.layer_kind == "conv"]
    out = []
    for m, r in zip(group.members, group.rows, strict=True):
        r = r or {}
        out.append(
            {
                "config.activation": m.get("activation", cfg.get("activation", "relu")),
                "config.dataset": zoo_config.get("dataset", ""),
                "config.dnn_architecture": "cnn",
                "config.dropout": m.get("dropout", cfg.get("dropout", 0.0)),
                "config.epochs": zoo_config.get("epochs", ""),
                "config.init_std": m.get("init_scale", ""),
                "config.l2reg": m.get("weight_decay", ""),
                "config.learning_rate": m.get("learning_rate", ""),
                "config.num_layers": len(kernels),
                "config.num_units": kernels[0].shape[-1] if kernels else "",
                "config.optimizer": m.get("optimizer", ""),
                "config.random_seed": m.get("seed", ""),
                "config.train_fraction": m.get("train_fraction", ""),
                "modeldir": f"{source}/member-{m['member']}",
                "step": epoch,
                "test_accuracy": r.get("test_acc", ""),
                "test_loss": r.get("test_loss", ""),
                "train_accuracy": r.get("train_acc", ""),
                "train_loss": r.get("train_loss", ""),
                "weightspace.member": m["member"],
                "weightspace.diverged": bool(r.get("diverged", False)),
            }
        )
    return out


def _export_small_cnn_zoo(
    directory: str,
    out: str,
    member: int | None,
    epoch: int | None,
    overwrite: bool,
    progress: bool,
) -> str:
    from tqdm.auto import tqdm

    epochs = _zoo_epochs(directory) or [None]
    if epoch is not None:
        if epoch not in epochs:
            raise WeightspaceError(f"--epoch {epoch}: not a checkpointed epoch ({epochs})")
        epochs = [epoch]
    zoo_config = (
        zoo_format.read_config(os.path.join(directory, "zoo.json")) if epochs[0] is not None else {}
    )
    source = os.path.basename(directory.rstrip(os.sep))
    per_group: dict[str, list[tuple[SourceGroup, int]]] = {}
    for e in tqdm(epochs, disable=not progress, desc="export", unit="epoch"):
        groups = load_source(directory, epoch=e)
        if member is not None:
            groups = _select_member(groups, member)
        for g in groups:
            per_group.setdefault(g.id, []).append((g, 0 if e is None else e))
    parts = []
    for gid, items in per_group.items():
        target = items[0][0].target
        # rows ordered run by run, each run's checkpoints by epoch (the published order)
        n = len(items[0][0].members)
        order = [(i, k) for i in range(n) for k in range(len(items))]
        pops = [pop_ops.to_numpy(g.population) for g, _ in items]
        flat = {p: np.stack([pops[k][p][i] for i, k in order]) for p in pops[0]}
        population = pop_ops.from_numpy(target, flat, batched=True)
        rows_by_epoch = [_small_cnn_rows(g, e, zoo_config, source) for g, e in items]
        rows = [rows_by_epoch[k][i] for i, k in order]
        parts.append((gid, target, population, rows))
    return scz.write(out, parts, overwrite=overwrite)


def export(
    directory: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str,
    layout: str = "torch",
    member: int | None = None,
    epoch: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> str:
    """Writes the networks of `directory` (`load_source`) to `out` in `format`.

    safetensors / npz: one network (`member`) is one file; all networks of one target are
    one file (``"flax"`` layout, or npz) or a directory of per-member files (safetensors,
    ``"torch"`` layout: ``member-<id>.safetensors``, the zoo's member ids); several targets
    (a zoo's groups) go to a directory with one such entry per group (``<group>.<ext>``).
    small-cnn-zoo: every checkpointed epoch of the zoo (`epoch`: only that one), or the
    population, as one Small CNN Zoo directory (`layout` does not apply).

    Returns:
      the absolute path written.
    """
    d = os.path.abspath(os.fspath(directory))
    out = os.path.abspath(os.fspath(out))
    if format not in EXPORT_FORMATS:
        raise WeightspaceError(f"unknown format {format!r}; expected one of {list(EXPORT_FORMATS)}")
    if format == "small-cnn-zoo":
        return _export_small_cnn_zoo(d, out, member, epoch, overwrite, progress)
    groups = load_source(d, epoch=epoch)
    if member is not None:
        g = _select_member(groups, member)[0]
        meta = {"member": g.members[0], "metrics": g.rows[0]}
        return formats.save_weights(
            g.target,
            pop_ops.only(g.population),
            out,
            format=format,
            layout=layout,
            metadata=meta,
            overwrite=overwrite,
        )
    if format == "safetensors" and layout == "torch":
        directory_out = prepare_dir(out, overwrite=overwrite, hint="use --overwrite")
        for g in groups:
            formats.write_member_files(
                directory_out,
                g.target,
                g.population,
                names=[f"member-{m['member']:05d}" for m in g.members],
                metadata=[
                    {"member": m, "metrics": r} for m, r in zip(g.members, g.rows, strict=True)
                ],
                progress=progress,
            )
        return directory_out
    ext = "safetensors" if format == "safetensors" else "npz"
    if len(groups) == 1:
        g = groups[0]
        return formats.save_weights(
            g.target,
            g.population,
            out,
            format=format,
            layout=layout,
            batched=True,
            metadata={"members": g.members, "metrics": g.rows},
            overwrite=overwrite,
        )
    directory_out = prepare_dir(out, overwrite=overwrite, hint="use --overwrite")
    for g in groups:
        formats.save_weights(
            g.target,
            g.population,
            os.path.join(directory_out, f"{g.id}.{ext}"),
            format=format,
            layout=layout,
            batched=True,
            metadata={"members": g.members, "metrics": g.rows},
        )
    return directory_out


def resolve_target(text: str) -> Target:
    """A target from the command line: a preset name (`hyper.zoo_presets.PRESETS`: its
    architecture at its dataset's input shape, with its grid's first activation),
    ``small-cnn-zoo`` (the published CNN at 32x32), a path to a JSON file or a JSON object
    (a `make_target` config with ``arch`` and ``input_shape``).

    Raises:
      WeightspaceError: none of these, or a config that does not build.
    """
    if text in PRESETS:
        p = PRESETS[text]
        config = {**dict(p.arch), "input_shape": list(data_lib.load(p.dataset).input_shape)}
        config["activation"] = p.grid.get("activation", ["relu"])[0]
        return target_from_config(config)
    if text == "small-cnn-zoo":
        return scz.small_cnn_zoo_target()
    if text.lstrip().startswith("{"):
        raw = text
    elif os.path.isfile(text):
        with open(text) as f:
            raw = f.read()
    else:
        raise WeightspaceError(
            f"--target {text!r}: not a preset ({sorted(PRESETS)}), 'small-cnn-zoo', a JSON "
            "file or a JSON object"
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise WeightspaceError(f"--target: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise WeightspaceError("--target: the JSON must be an object (a make_target config)")
    return target_from_config(config)


def _member_row(row: Mapping[str, Any], member: int) -> dict[str, Any]:
    """A zoo member row from a Small CNN Zoo metrics row (our hyperparameter names)."""
    names = {
        "config.random_seed": "seed",
        "config.learning_rate": "learning_rate",
        "config.l2reg": "weight_decay",
        "config.init_std": "init_scale",
        "config.train_fraction": "train_fraction",
        "config.activation": "activation",
        "config.dropout": "dropout",
        "config.optimizer": "optimizer",
        "config.w_init": "w_init",
        "config.b_init": "b_init",
        "modeldir": "modeldir",
    }
    out: dict[str, Any] = {"member": member}
    for theirs, ours in names.items():
        v = row.get(theirs, "")
        if v is not None and v != "" and not (isinstance(v, float) and not np.isfinite(v)):
            out[ours] = v
    return out


def _number(v: Any) -> float:
    return np.nan if v is None or v == "" else float(v)


def _small_cnn_parts(path: str, target: Target | None, progress: bool):
    from tqdm.auto import tqdm

    groups = scz.read_groups(path, target=target)
    runs: dict[str, int] = {}
    for g in groups:
        for r in g.rows:
            runs.setdefault(str(r["modeldir"]), int(r.get("weightspace.member", -1)))
    # our own member ids where the file has them, else runs in order of appearance
    if any(v < 0 for v in runs.values()) or len(set(runs.values())) != len(runs):
        runs = {k: i for i, k in enumerate(sorted(runs, key=lambda k: list(runs).index(k)))}
    steps = sorted({int(r["step"]) for g in groups for r in g.rows})
    parts = []
    for g in tqdm(groups, disable=not progress, desc="import", unit="group"):
        flat = pop_ops.to_numpy(g.population)
        order = list(dict.fromkeys(str(r["modeldir"]) for r in g.rows))
        slot = {(str(r["modeldir"]), int(r["step"])): j for j, r in enumerate(g.rows)}
        first = {k: g.rows[[str(r["modeldir"]) for r in g.rows].index(k)] for k in order}
        members = [_member_row(first[k], runs[k]) for k in order]
        per_epoch = {}
        for e in steps:
            rows = [slot.get((k, e)) for k in order]
            arrays = {
                p: np.stack(
                    [a[j] if j is not None else np.full(a.shape[1:], np.nan, a.dtype) for j in rows]
                )
                for p, a in flat.items()
            }
            metrics = {
                ours: np.asarray(
                    [_number(g.rows[j].get(theirs)) if j is not None else np.nan for j in rows],
                    np.float64,
                )
                for ours, theirs in (
                    ("train_loss", "train_loss"),
                    ("train_acc", "train_accuracy"),
                    ("test_loss", "test_loss"),
                    ("test_acc", "test_accuracy"),
                )
            }
            finite = np.all(
                [np.isfinite(a.reshape(len(rows), -1)).all(axis=1) for a in arrays.values()], axis=0
            )
            flagged = np.asarray(
                [j is None or bool(g.rows[j].get("weightspace.diverged", False)) for j in rows]
            )
            diverged = flagged | ~finite | ~np.isfinite(metrics["test_loss"])
            population = pop_ops.from_numpy(g.target, arrays, batched=True)
            per_epoch[e] = (population, metrics, diverged)
        parts.append((g.id, g.target, members, per_epoch))
    return parts


def import_weights(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str,
    target: Target | None = None,
    layout: str | None = None,
    dataset: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> str:
    """Reads weight files and writes them as a zoo directory.

    safetensors / npz: one network, a stacked population or a directory of member files,
    of `target` (default: the target the file's metadata describes), as one group at
    epoch 0 without metrics (NaN). small-cnn-zoo: one group per target
    (`hyper.small_cnn_zoo.read_groups`), one member per run (``modeldir``), one
    checkpoint per ``step``; a run missing a step gets NaN weights there and is marked
    diverged, as are runs with non-finite weights or loss.

    Returns:
      the zoo directory.
    """
    path = os.path.abspath(os.fspath(path))
    if format not in EXPORT_FORMATS:
        raise WeightspaceError(f"unknown format {format!r}; expected one of {list(EXPORT_FORMATS)}")
    if format == "small-cnn-zoo":
        prepare_dir(out, overwrite=overwrite, holds="zoo", hint="use --overwrite", write=False)
        parts = _small_cnn_parts(path, target, progress)
        rows0 = scz.read(path).metrics[:1]
        dataset = dataset or (str(rows0[0].get("config.dataset", "")) if rows0 else None)
    else:
        prepare_dir(out, overwrite=overwrite, holds="zoo", hint="use --overwrite", write=False)
        parts = _weight_file_parts(path, format, target, layout, progress)
    source = {"format": format, "path": path}
    return zoo_format.write_zoo(
        os.fspath(out), parts, dataset=dataset, source=source, overwrite=overwrite
    )


def _weight_file_parts(
    path: str, format: str, target: Target | None, layout: str | None, progress: bool
):
    """Zoo groups from a weight file or a directory of them: one group per target (the
    given one, or each file's stored config); member ids and metrics from the metadata
    our export stores (``member``/``members``, ``metrics``), else numbered in file order."""
    from tqdm.auto import tqdm

    ext = "npz" if format == "npz" else "safetensors"
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(f".{ext}"))
        if not files:
            raise WeightspaceError(f"--from {path}: no .{ext} files")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise WeightspaceError(f"--from {path}: no such file or directory")
    groups: dict[str, dict[str, Any]] = {}
    for f in tqdm(files, disable=not progress, desc="import", unit="file"):
        t, params, meta = formats.load_file(f, target, layout=layout)
        batched = _is_batched(t, params)
        pop = params if batched else pop_ops.of_one(params)
        n = pop_ops.num_targets(pop)
        extra = meta.get("metadata", {})
        members = extra.get("members") if batched else [extra.get("member")]
        metrics = extra.get("metrics") if batched else [extra.get("metrics")]
        if not _rows_of(members, n, member=True):
            members = [None] * n
        if not _rows_of(metrics, n):
            metrics = [None] * n
        key = "given" if target is not None else json.dumps(t.config, sort_keys=True)
        g = groups.setdefault(key, {"target": t, "pops": [], "members": [], "metrics": []})
        g["pops"].append(pop_ops.to_numpy(pop))
        g["members"].extend(members)
        g["metrics"].extend(metrics)
    ids = [m["member"] if m else None for g in groups.values() for m in g["members"]]
    if None in ids or len(set(ids)) != len(ids):  # number the networks in file order
        count = iter(range(len(ids)))
        for g in groups.values():
            g["members"] = [{**(m or {}), "member": next(count)} for m in g["members"]]
    epochs = {(r or {}).get("epoch") for g in groups.values() for r in g["metrics"]}
    epoch = epochs.pop() if len(epochs) == 1 else None
    epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0 else 0
    parts = []
    for i, g in enumerate(groups.values()):
        flat = {k: np.concatenate([p[k] for p in g["pops"]]) for k in g["pops"][0]}
        n = len(g["members"])
        metrics = {
            k: np.asarray([_number((r or {}).get(k)) for r in g["metrics"]], np.float64)
            for k in _METRICS
        }
        diverged = np.asarray([bool((r or {}).get("diverged", False)) for r in g["metrics"]])
        pop = pop_ops.from_numpy(g["target"], flat, batched=True)
        parts.append((f"g{i}", g["target"], g["members"], {epoch: (pop, metrics, diverged[:n])}))
    return parts


def _rows_of(rows: Any, n: int, *, member: bool = False) -> bool:
    """Whether `rows` is `n` JSON objects (with an int ``member`` if `member`)."""
    return (
        isinstance(rows, list)
        and len(rows) == n
        and all(
            isinstance(r, dict)
            and (
                not member
                or (isinstance(r.get("member"), int) and not isinstance(r.get("member"), bool))
            )
            for r in rows
        )
    )


def _is_batched(target: Target, params: Params) -> bool:
    s = target.spec[0]
    return np.ndim(flatten_dict(params)[s.path]) == len(s.shape) + 1
