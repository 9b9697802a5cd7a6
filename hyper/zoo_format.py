"""The zoo directory format: the one writer and reader of ``zoo.json`` and the metadata table.

Both the zoo builder (`hyper.zoo.build`) and the hypernetwork export
(`hyper.hypernets.export`) write zoos through these functions; `write_zoo` writes a whole
zoo of given populations at once (imported files, `hyper.exchange`; generated networks,
`generators.weightgen`), and `hyper.zoo.load` reads them back::

  zoo.json                 the configuration, the groups and the member table
                           (`zoo_config`; ``"complete": false`` until `finish`)
  metadata.jsonl|csv       one row per member and checkpointed epoch (`metric_rows`)
  groups/<gid>/<epoch>/    Orbax checkpoints (`group_dir`): params (+ optimizer state),
                           the epoch's rows as JSON

Writes are atomic (a temporary file, then ``os.replace``): a killed writer leaves the
previous version or a ``*.tmp`` file, never half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hyper.checkpoint import CheckpointError, PopulationCheckpointer, prepare_dir, safe_join
from hyper.target import Params, Target

__all__ = [
    "FORMAT",
    "finish",
    "group_config",
    "group_dir",
    "metric_rows",
    "read_config",
    "write_config",
    "write_metadata",
    "write_zoo",
    "zoo_config",
]

FORMAT = "weightspace-zoo"
"""The ``format`` tag of ``zoo.json``."""


def zoo_config(
    *,
    preset: str,
    dataset: str,
    arch: Mapping[str, Any],
    grid: Mapping[str, Any],
    seeds: Sequence[int],
    epochs: int,
    checkpoint_epochs: Sequence[int],
    batch_size: int | None,
    seed: int,
    metadata_format: str = "jsonl",
    **extra: Any,
) -> dict[str, Any]:
    """The contents of ``zoo.json`` before its groups and members are known.

    Args:
      preset: a `hyper.zoo.PRESETS` name, or ``"generated"`` for a hypernet's output.
      dataset: registry name in `hyper.data`.
      arch: the `make_target` config shared by the groups (without what the grid varies).
      grid: hyperparameter -> values (empty for a generated zoo).
      seeds: the seeds of each grid point.
      epochs: training epochs (a generated zoo: the hypernet's step).
      checkpoint_epochs: the saved epochs, ascending.
      batch_size: examples per training step.
      seed: the zoo's root seed.
      metadata_format: ``"jsonl"`` or ``"csv"``.
      **extra: further keys stored as given (a generated zoo's conditions, hypernet, run).

    Returns:
      a JSON-able dict; add ``groups`` (`group_config`) and ``members`` before writing.
    """
    return {
        "format": FORMAT,
        "version": 1,
        "preset": preset,
        "dataset": dataset,
        "arch": dict(arch),
        "grid": dict(grid),
        "seeds": list(seeds),
        "epochs": epochs,
        "checkpoint_epochs": list(checkpoint_epochs),
        "batch_size": batch_size,
        "seed": int(seed),
        "metadata_format": metadata_format,
        **extra,
    }


def group_config(
    gid: str, target: Mapping[str, Any], optimizer: str | None, members: Sequence[int]
) -> dict[str, Any]:
    """One entry of ``zoo.json``'s ``groups``: its id, target config, optimizer, member ids."""
    return {"id": gid, "target": dict(target), "optimizer": optimizer, "members": list(members)}


def group_dir(directory: str, gid: str) -> str:
    """The checkpoint directory of group `gid` (refusing ids that would leave `directory`)."""
    return safe_join(directory, "groups", gid)


def metric_rows(
    members: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    epoch: int,
    gid: str,
    diverged: Any,
) -> list[dict[str, Any]]:
    """Metadata rows of one group at one epoch.

    Args:
      members: the group's member rows (member id, seed, hyperparameters or conditions).
      metrics: name -> `[members]` values (train/test loss and accuracy).
      epoch: the checkpointed epoch (or hypernet step).
      gid: the group id.
      diverged: `[members]` bool.

    Returns:
      one row per member: its member row, ``group``, ``epoch``, the metrics as floats and
      ``diverged``.
    """
    m = {k: np.asarray(v) for k, v in metrics.items()}
    div = np.asarray(diverged)
    return [
        {
            **mem,
            "group": gid,
            "epoch": int(epoch),
            **{k: float(v[i]) for k, v in m.items()},
            "diverged": bool(div[i]),
        }
        for i, mem in enumerate(members)
    ]


def _write_json_atomic(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_config(directory: str, config: Mapping[str, Any]) -> str:
    """Writes ``directory/zoo.json`` atomically; returns its path."""
    path = os.path.join(directory, "zoo.json")
    _write_json_atomic(path, dict(config))
    return path


def write_metadata(directory: str, rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """Writes the metadata table ``directory/metadata.<fmt>`` (``jsonl`` or ``csv``) sorted by
    (member, epoch), atomically; returns its path."""
    rows = sorted(rows, key=lambda r: (r["member"], r["epoch"]))
    if fmt == "jsonl":
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        cols = sorted({k for r in rows for k in r}) if rows else []
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        text = buf.getvalue()
    path = os.path.join(directory, f"metadata.{fmt}")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def finish(directory: str, config: dict[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes the final metadata table, then marks the zoo complete (``config`` is updated)."""
    write_metadata(directory, rows, config.get("metadata_format", "jsonl"))
    config["complete"] = True
    write_config(directory, config)


def write_zoo(
    out: str,
    parts: Sequence[tuple[str, Target, list[dict[str, Any]], dict[int, tuple[Params, dict, Any]]]],
    *,
    dataset: str | None,
    source: Mapping[str, Any],
    overwrite: bool,
    preset: str = "imported",
) -> str:
    """Writes a whole zoo directory of given populations, complete.

    Args:
      out: the zoo directory (see `hyper.checkpoint.prepare_dir`).
      parts: per group ``(id, target, member rows, {epoch: (population `[n, ...]`,
        metrics name -> `[n]`, diverged `[n]`)})``.
      dataset: the data set's registry name (or None).
      source: where the networks came from, stored as ``source`` in ``zoo.json``.
      overwrite: replace what `out` holds.
      preset: the ``preset`` tag of ``zoo.json`` (``"imported"``, ``"generated"``).

    Returns:
      the absolute zoo directory.
    """
    epochs = sorted({e for *_, per_epoch in parts for e in per_epoch})
    members = sorted((m for _, _, ms, _ in parts for m in ms), key=lambda m: m["member"])
    first = parts[0][1].config
    config = zoo_config(
        preset=preset,
        dataset=dataset or "",
        arch=first,
        grid={},
        seeds=[],
        epochs=epochs[-1],
        checkpoint_epochs=epochs,
        batch_size=None,
        seed=0,
        source=dict(source),
        groups=[
            group_config(gid, t.config, None, [m["member"] for m in ms]) for gid, t, ms, _ in parts
        ],
        members=members,
        complete=False,
    )
    d = prepare_dir(out, overwrite=overwrite, holds="zoo", hint="use --overwrite")
    write_config(d, config)
    rows: list[dict[str, Any]] = []
    for gid, target, ms, per_epoch in parts:
        with PopulationCheckpointer(group_dir(d, gid)) as ckpt:
            for e in sorted(per_epoch):
                population, metrics, diverged = per_epoch[e]
                r = metric_rows(ms, metrics, e, gid, diverged)
                ckpt.save(
                    e,
                    {"params": population},
                    meta={"rows": r},
                    specs={"params": target.spec_json()},
                )
                rows.extend(r)
    finish(d, config, rows)
    return d


def read_config(path: str) -> dict[str, Any]:
    """The checked contents of a zoo description file (``zoo.json``); `CheckpointError` when
    it is unreadable, not a weightspace zoo, or malformed."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read zoo description {path}: {e}") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a weightspace zoo description")
    _check_zoo_json(path, cfg)
    return cfg


def _check_zoo_json(path: str, cfg: Mapping[str, Any]) -> None:
    """The structure `hyper.zoo.load` relies on; a hand-edited or foreign file fails here,
    naming the field, instead of deep inside loading."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    members, groups = cfg.get("members"), cfg.get("groups")
    epochs = cfg.get("checkpoint_epochs")
    if not isinstance(epochs, list) or not all(is_int(e) and e >= 0 for e in epochs):
        raise bad("'checkpoint_epochs' must be a list of non-negative ints")
    if not isinstance(members, list) or not all(
        isinstance(m, dict) and is_int(m.get("member")) for m in members
    ):
        raise bad("'members' must be a list of objects with an int 'member'")
    known = {m["member"] for m in members}
    if not isinstance(groups, list) or not groups:
        raise bad("'groups' must be a non-empty list")
    for i, g in enumerate(groups):
        if not isinstance(g, dict):
            raise bad(f"groups[{i}] is not an object")
        gid = g.get("id")
        if not isinstance(gid, str) or not gid or gid in (".", "..") or "/" in gid or "\\" in gid:
            raise bad(f"groups[{i}].id {gid!r} is not a plain directory name")
        if not isinstance(g.get("target"), dict):
            raise bad(f"groups[{i}].target must be an object")
        ids = g.get("members")
        if not isinstance(ids, list) or not ids or not all(is_int(m) for m in ids):
            raise bad(f"groups[{i}].members must be a non-empty list of ints")
        unknown = sorted(set(ids) - known)
        if unknown:
            raise bad(f"groups[{i}] names members {unknown[:5]} missing from 'members'")
