"""The Small CNN Zoo format (Unterthiner et al. 2020, "Predicting Neural Network Accuracy
from Weights"; google-research ``dnn_predict_accuracy``), read and written.

A zoo directory in that format holds three files::

  weights.npy       float32 `[rows, P]`: one checkpoint of one run per row, every parameter
                    of the network flattened
  layout.csv        which columns of a row are which tensor: ``varname,start_idx,end_idx,shape``
                    (``conv2d/kernel:0``, ``0``-based ``[start, end)``, a Python tuple such as
                    ``(3, 3, 1, 16)``), one row per tensor; kernels in TensorFlow's layout
                    (conv ``(kh, kw, in, out)``, dense ``(in, out)``: ours too), each layer's
                    bias before its kernel (the published order: bias ``[0, 16)``, kernel
                    ``[16, 160)``, ...)
  metrics.csv.gz    one row per weights row: the hyperparameters (``config.activation``,
                    ``config.learning_rate``, ...), ``modeldir`` (the run), ``step`` (the
                    checkpoint's epoch: 0, 1, 2, 3, 20, 40, 60, 80, 86) and train/test
                    accuracy and loss (`METRIC_COLUMNS`)

The published CNN (`small_cnn_zoo_target`): 1-channel input, three 3x3 convolutions of 16
channels at stride 2 without padding (Keras' default ``'valid'``), global average pooling,
a dense layer of 10: 4,970 parameters. Public loaders (NFN, Neural Graphs, ScaleGMN) read
``layout.csv`` by column name, reshape each slice C-order and tell kernels from biases by
the ``kernel:0`` / ``bias:0`` suffix; they read ``step`` and ``test_accuracy`` by name.

Our writer adds, beside those files, ``weightspace.json`` (each group's `make_target`
config) and the metrics columns ``weightspace.group``, ``weightspace.member`` and
``weightspace.diverged``, which other readers ignore, so a zoo we write reads back into
the same targets. The reader and writer are tested on synthetic files of the published
layout (the real files are not downloaded here).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import gzip
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hyper import population as pop_ops
from hyper.architectures import make_target
from hyper.checkpoint import prepare_dir, target_from_stored
from hyper.errors import WeightspaceError
from hyper.formats import FormatError
from hyper.target import Params, Target
from hyper.tree import flatten_dict

__all__ = [
    "CONFIG_COLUMNS",
    "METRIC_COLUMNS",
    "LayoutRow",
    "SmallCNNGroup",
    "SmallCNNZoo",
    "from_population",
    "layout_for",
    "read",
    "read_groups",
    "small_cnn_zoo_target",
    "to_population",
    "write",
]

CONFIG_COLUMNS = (
    "config.activation",
    "config.b_init",
    "config.dataset",
    "config.dnn_architecture",
    "config.dropout",
    "config.epochs",
    "config.epochs_between_checkpoints",
    "config.init_std",
    "config.l2reg",
    "config.learning_rate",
    "config.num_layers",
    "config.num_units",
    "config.optimizer",
    "config.random_seed",
    "config.train_fraction",
    "config.w_init",
)
"""The hyperparameter columns of ``metrics.csv.gz``, in the README's order."""

METRIC_COLUMNS = (
    *CONFIG_COLUMNS,
    "modeldir",
    "step",
    "test_accuracy",
    "test_loss",
    "train_accuracy",
    "train_loss",
)
"""Every column of ``metrics.csv.gz`` the README lists, in its order."""

_REQUIRED = ("config.activation", "modeldir", "step", "test_accuracy")
_NUMERIC = {
    "config.dropout": float,
    "config.epochs": int,
    "config.epochs_between_checkpoints": int,
    "config.init_std": float,
    "config.l2reg": float,
    "config.learning_rate": float,
    "config.num_layers": int,
    "config.num_units": int,
    "config.random_seed": int,
    "config.train_fraction": float,
    "step": int,
    "test_accuracy": float,
    "test_loss": float,
    "train_accuracy": float,
    "train_loss": float,
    "weightspace.member": int,
}
_OURS = ("weightspace.group", "weightspace.member", "weightspace.diverged")
_INPUT_SIDES = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "svhn_cropped": 32}
_SIDECAR = "weightspace.json"


def small_cnn_zoo_target(
    activation: str = "relu", *, input_shape: Sequence[int] = (32, 32), dropout: float = 0.0
) -> Target:
    """The Small CNN Zoo's network: three 3x3 convolutions of 16 channels, stride 2, no
    padding ('VALID'), `activation` after each, global average pooling, dense 10 (4,970
    parameters). Inputs are grayscale: ``(32, 32)`` for CIFAR-10-GS and SVHN-GS, ``(28,
    28)`` for MNIST and Fashion-MNIST."""
    return make_target(
        "cnn2d",
        input_shape=tuple(input_shape),
        channels=[16, 16, 16],
        strides=[2, 2, 2],
        kernel_size=3,
        padding="VALID",
        activation=activation,
        dropout=dropout,
        out_features=10,
    )


@dataclasses.dataclass(frozen=True)
class LayoutRow:
    """One row of ``layout.csv``: the columns ``[start_idx, end_idx)`` hold `varname`."""

    varname: str
    start_idx: int
    end_idx: int
    shape: tuple[int, ...]


@dataclasses.dataclass
class SmallCNNZoo:
    """The three files, read and checked.

    Attributes:
      weights: `[rows, P]` float32 (memory-mapped from ``weights.npy``).
      layout: the tensors of a row, in file order.
      metrics: one dict per row (numbers parsed, other values as strings).
      targets: group id -> `make_target` config, from ``weightspace.json`` (empty for a
        zoo written elsewhere).
    """

    weights: np.ndarray
    layout: list[LayoutRow]
    metrics: list[dict[str, Any]]
    targets: dict[str, dict[str, Any]]


@dataclasses.dataclass
class SmallCNNGroup:
    """Rows of one target: `population` `[len(rows), ...]`, `rows` the metrics rows and
    `index` their row numbers in the files."""

    id: str
    target: Target
    population: Params
    rows: list[dict[str, Any]]
    index: np.ndarray


def _layers(target: Target) -> list[tuple[str, str, str]]:
    """``(kind, kernel path, bias path)`` per layer in forward order; a target with any
    other leaf (norms, running statistics, embeddings), a layer without exactly one kernel
    and one bias, or a conv that is not 2-D is refused, naming the leaf."""
    by_layer: dict[int, dict[str, Any]] = {}
    for s in target.spec:
        if s.role not in ("kernel", "bias"):
            raise WeightspaceError(
                f"{target.name}: leaf {s.path!r} ({s.role}) has no place in the Small CNN Zoo "
                "format (conv and dense kernels and biases only)"
            )
        slot = by_layer.setdefault(s.layer, {})
        if s.role in slot:
            raise WeightspaceError(
                f"{target.name}: layer {s.layer_name!r} has two {s.role}s "
                f"({slot[s.role].path!r}, {s.path!r})"
            )
        slot[s.role] = s
    out = []
    for layer in sorted(by_layer):
        slot = by_layer[layer]
        if set(slot) != {"kernel", "bias"}:
            only = next(iter(slot.values()))
            raise WeightspaceError(
                f"{target.name}: layer {only.layer_name!r} needs a kernel and a bias, has "
                f"{sorted(slot)}"
            )
        k = slot["kernel"]
        kind = {("conv", 4): "conv2d", ("dense", 2): "dense"}.get((k.layer_kind, len(k.shape)))
        if kind is None:
            raise WeightspaceError(
                f"{target.name}: kernel {k.path!r} {k.shape} ({k.layer_kind}) is neither a 2-D "
                "conv (kh, kw, in, out) nor a dense (in, out) kernel"
            )
        out.append((kind, k.path, slot["bias"].path))
    return out


def layout_for(target: Target) -> list[LayoutRow]:
    """The ``layout.csv`` rows of `target` as our writer names them: Keras layer names in
    forward order (``conv2d``, ``conv2d_1``, ..., ``dense``), each bias before its kernel.

    Raises:
      WeightspaceError: the target has a leaf the format cannot hold (`_layers`).
    """
    rows, start, counts = [], 0, {"conv2d": 0, "dense": 0}
    for kind, kernel, bias in _layers(target):
        name = kind if counts[kind] == 0 else f"{kind}_{counts[kind]}"
        counts[kind] += 1
        for suffix, path in (("bias:0", bias), ("kernel:0", kernel)):
            shape = target.leaf(path).shape
            end = start + math.prod(shape)
            rows.append(LayoutRow(f"{name}/{suffix}", start, end, shape))
            start = end
    return rows


def _match(target: Target, layout: Sequence[LayoutRow], where: str) -> dict[str, LayoutRow]:
    """Our path -> its layout row: the file's layers (rows grouped by the varname before its
    last ``/``, ordered by first column) matched to the target's in forward order, shapes
    checked (the first mismatch is named)."""
    groups: dict[str, dict[str, LayoutRow]] = {}
    for r in sorted(layout, key=lambda r: r.start_idx):
        prefix, _, leaf = r.varname.rpartition("/")
        kind = {"kernel:0": "kernel", "bias:0": "bias"}.get(leaf)
        if kind is None:
            raise FormatError(f"{where}: varname {r.varname!r} is neither a kernel:0 nor a bias:0")
        if kind in groups.setdefault(prefix, {}):
            raise FormatError(f"{where}: layer {prefix!r} has two {kind} rows")
        groups[prefix][kind] = r
    ours = _layers(target)
    if len(groups) != len(ours):
        raise FormatError(
            f"{where}: the layout has {len(groups)} layers ({list(groups)}), "
            f"{target.name} has {len(ours)}"
        )
    out = {}
    for (prefix, rows), (_, kernel, bias) in zip(groups.items(), ours, strict=True):
        for kind, path in (("kernel", kernel), ("bias", bias)):
            if kind not in rows:
                raise FormatError(f"{where}: layer {prefix!r} has no {kind}:0 row")
            r, want = rows[kind], target.leaf(path).shape
            if r.shape != want:
                raise FormatError(
                    f"{where}: {r.varname!r} has shape {r.shape}, {target.name}'s {path!r} "
                    f"has {want}"
                )
            out[path] = r
    return out


def to_population(
    target: Target, weights: np.ndarray, layout: Sequence[LayoutRow], *, where: str = "weights"
) -> Params:
    """Rows of the weight matrix `[n, P]` as a population of `target` `[n, ...]`.

    Raises:
      FormatError: the layout does not match `target` (layer count, a shape).
    """
    rows = _match(target, layout, where)
    arrays = {
        path: np.asarray(weights[:, r.start_idx : r.end_idx], np.float32).reshape(
            (len(weights), *r.shape)
        )
        for path, r in rows.items()
    }
    return pop_ops.from_numpy(target, arrays, batched=True)


def from_population(target: Target, population: Params) -> np.ndarray:
    """A population as rows of the weight matrix `[n, P]` (float32, `layout_for` order)."""
    n = target.validate(population, batched=True)
    flat = flatten_dict(population)
    layout = layout_for(target)
    out = np.empty((n, layout[-1].end_idx), np.float32)
    order = [p for _, kernel, bias in _layers(target) for p in (bias, kernel)]
    for r, path in zip(layout, order, strict=True):
        out[:, r.start_idx : r.end_idx] = np.asarray(flat[path], np.float32).reshape(n, -1)
    return out


def _read_layout(path: str) -> list[LayoutRow]:
    try:
        with open(path, newline="") as f:
            table = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FormatError(f"{path}: cannot read the layout table ({e})") from None
    rows = []
    for i, t in enumerate(table):
        try:
            shape = ast.literal_eval(t["shape"])
            shape = (shape,) if isinstance(shape, int) else tuple(shape)
            if not all(isinstance(v, int) and v > 0 for v in shape):
                raise ValueError(f"shape {t['shape']!r}")
            r = LayoutRow(str(t["varname"]), int(t["start_idx"]), int(t["end_idx"]), shape)
        except (KeyError, TypeError, ValueError, SyntaxError) as e:
            raise FormatError(
                f"{path}: row {i} is not varname,start_idx,end_idx,shape ({e!s})"
            ) from None
        if r.end_idx - r.start_idx != math.prod(r.shape) or r.start_idx < 0:
            raise FormatError(
                f"{path}: {r.varname!r} spans [{r.start_idx}, {r.end_idx}), "
                f"which does not hold shape {r.shape}"
            )
        rows.append(r)
    if not rows:
        raise FormatError(f"{path}: no layout rows")
    spans = sorted((r.start_idx, r.end_idx, r.varname) for r in rows)
    for (_, e0, a), (s1, _, b) in zip(spans[:-1], spans[1:], strict=True):
        if s1 < e0:
            raise FormatError(f"{path}: {a!r} and {b!r} overlap")
    return rows


def _parse_metrics_row(path: str, i: int, row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k is None or k == "" or k.startswith("Unnamed"):
            continue  # an index column pandas wrote
        if k in _NUMERIC and (v is None or v == "") and k != "step":
            out[k] = None  # not recorded (our writer leaves unknown hyperparameters empty)
        elif k in _NUMERIC:
            try:
                out[k] = _NUMERIC[k](float(v)) if _NUMERIC[k] is int else float(v)
            except (TypeError, ValueError, OverflowError):
                raise FormatError(f"{path}: row {i}, column {k!r}: {v!r} is not a number") from None
        elif k == "weightspace.diverged":
            out[k] = v == "True"
        else:
            out[k] = v
    return out


def _read_metrics(path: str) -> list[dict[str, Any]]:
    try:
        with gzip.open(path, "rt", newline="") as f:
            reader = csv.DictReader(f)
            table = list(reader)
            header = reader.fieldnames or []
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, gzip.BadGzipFile) as e:
        raise FormatError(f"{path}: cannot read the gzip-compressed metrics table ({e})") from None
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise FormatError(f"{path}: no column {missing[0]!r} (columns: {header})")
    return [_parse_metrics_row(path, i, r) for i, r in enumerate(table)]


def read(directory: str | os.PathLike) -> SmallCNNZoo:
    """Reads and checks a Small CNN Zoo directory (``weights.npy``, ``layout.csv``,
    ``metrics.csv.gz``; ``weightspace.json`` when we wrote it).

    Raises:
      FormatError: a missing, truncated or malformed file; a weight matrix that is not 2-D
        floats, whose width is not the layout's, or whose row count is not the metrics'.
    """
    d = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(d):
        raise FormatError(f"{d}: not a directory")
    layout = _read_layout(os.path.join(d, "layout.csv"))
    metrics = _read_metrics(os.path.join(d, "metrics.csv.gz"))
    wpath = os.path.join(d, "weights.npy")
    try:
        weights = np.load(wpath, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise FormatError(f"{wpath}: not a readable .npy matrix ({e})") from None
    if weights.ndim != 2 or weights.dtype.kind != "f":
        raise FormatError(
            f"{wpath}: expected a 2-D float matrix, got {weights.dtype} {weights.shape}"
        )
    width = max(r.end_idx for r in layout)
    if weights.shape[1] != width:
        raise FormatError(f"{wpath}: {weights.shape[1]} columns, the layout covers {width}")
    if weights.shape[0] != len(metrics):
        raise FormatError(f"{wpath}: {weights.shape[0]} rows, metrics.csv.gz has {len(metrics)}")
    targets: dict[str, dict[str, Any]] = {}
    side = os.path.join(d, _SIDECAR)
    if os.path.exists(side):
        try:
            with open(side) as f:
                targets = dict(json.load(f)["targets"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FormatError(f"{side}: not a weightspace sidecar ({e})") from None
    return SmallCNNZoo(weights=weights, layout=layout, metrics=metrics, targets=targets)


def _default_config(row: Mapping[str, Any], input_shape: Sequence[int] | None) -> dict[str, Any]:
    side = _INPUT_SIDES.get(str(row.get("config.dataset", "")), 32)
    shape = tuple(input_shape) if input_shape is not None else (side, side)
    dropout = float(row.get("config.dropout", 0.0) or 0.0)
    return small_cnn_zoo_target(
        str(row["config.activation"]), input_shape=shape, dropout=dropout
    ).config


def read_groups(
    directory: str | os.PathLike,
    *,
    target: Target | None = None,
    input_shape: Sequence[int] | None = None,
) -> list[SmallCNNGroup]:
    """A Small CNN Zoo directory as populations, one per target.

    Without `target`, rows are grouped by the target they describe: a zoo we wrote by its
    ``weightspace.group`` column and ``weightspace.json`` configs; any other by
    ``config.activation`` and ``config.dropout``, each group the published CNN
    (`small_cnn_zoo_target`) at the dataset's input size (28x28 for ``mnist`` and
    ``fashion_mnist``, else 32x32, or `input_shape`). With `target`, every row is one
    network of it.

    Raises:
      FormatError: as `read`, or a layout that does not match a group's target.
      WeightspaceError: an activation the platform does not know (`ACTIVATIONS`).
    """
    zoo = read(directory)
    where = os.path.join(os.path.abspath(os.fspath(directory)), "layout.csv")
    keys: list[str] = []
    configs: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(zoo.metrics):
        if target is not None:
            key = "g0"
        elif zoo.targets and "weightspace.group" in row:
            key = str(row["weightspace.group"])
            if key not in zoo.targets:
                raise FormatError(f"{where}: row {i} names group {key!r} missing from {_SIDECAR}")
            configs.setdefault(key, zoo.targets[key])
        else:
            cfg = _default_config(row, input_shape)
            key = f"{cfg['activation']}-dropout{cfg.get('dropout', 0.0)}"
            configs.setdefault(key, cfg)
        keys.append(key)
    out = []
    for gid in dict.fromkeys(keys):
        idx = np.asarray([i for i, k in enumerate(keys) if k == gid], np.int64)
        t = target if target is not None else target_from_stored(configs[gid], where)
        pop = to_population(t, np.asarray(zoo.weights[idx]), zoo.layout, where=where)
        out.append(SmallCNNGroup(gid, t, pop, [zoo.metrics[i] for i in idx], idx))
    return out


def write(
    directory: str | os.PathLike,
    groups: Sequence[tuple[str, Target, Params, Sequence[Mapping[str, Any]]]],
    *,
    overwrite: bool = False,
) -> str:
    """Writes networks in the Small CNN Zoo format.

    Args:
      directory: the output directory (refused if it holds anything, unless `overwrite`).
      groups: ``(group id, target, population [n, ...], n metrics rows)``: every target
        with the same `layout_for` layout (the same tensors in the same shapes); each row
        holds the `METRIC_COLUMNS` it knows (missing ones are written empty) and may hold
        ``weightspace.member`` and ``weightspace.diverged``.

    Returns:
      the absolute directory.

    Raises:
      WeightspaceError: a target the format cannot hold, targets of different layouts, or
        a row count that differs from its population's.
    """
    if not groups:
        raise WeightspaceError("write: no groups")
    layout = layout_for(groups[0][1])
    blocks, rows = [], []
    for gid, target, population, metrics in groups:
        if layout_for(target) != layout:
            raise WeightspaceError(
                f"group {gid!r}: {target.name} has another layout than {groups[0][1].name}"
            )
        block = from_population(target, population)
        if len(metrics) != len(block):
            raise WeightspaceError(f"group {gid!r}: {len(metrics)} rows for {len(block)} networks")
        blocks.append(block)
        rows.extend({**dict(r), "weightspace.group": gid} for r in metrics)
    d = prepare_dir(directory, overwrite=overwrite, hint="use --overwrite (overwrite=True)")
    np.save(os.path.join(d, "weights.npy"), np.concatenate(blocks))
    with open(os.path.join(d, "layout.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "shape"])
        for r in layout:
            w.writerow([r.varname, r.start_idx, r.end_idx, str(tuple(r.shape))])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*METRIC_COLUMNS, *_OURS], extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    with gzip.open(os.path.join(d, "metrics.csv.gz"), "wt", newline="") as f:
        f.write(buf.getvalue())
    with open(os.path.join(d, _SIDECAR), "w") as f:
        json.dump(
            {"format": "small-cnn-zoo", "targets": {g[0]: g[1].config for g in groups}},
            f,
            indent=1,
            sort_keys=True,
        )
    return d
