"""Params and the path vocabulary every room shares: a network's weights are a nested dict
of arrays with string keys; a leaf is named by its slash-separated path ("conv/kernel")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax

from hyper.errors import WeightspaceTypeError

Params = dict[str, Any]
"""A nested dict of arrays with string keys; one network's weights and state."""

__all__ = ["Params", "check_str_keys", "flatten_dict", "leaf_paths", "nest", "path_str"]


def path_str(keypath: Sequence[Any]) -> str:
    """Turns a jax key path into the slash-separated path used in specs ("conv/kernel")."""
    parts = []
    for k in keypath:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaf_paths(tree: Any) -> list[str]:
    """Slash-separated paths of the leaves of `tree`, in `jax.tree.leaves` order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def check_str_keys(tree: Any, where: str = "") -> None:
    """Raises `TypeError` naming the path of the first non-string key of a nested dict."""
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            if not isinstance(k, str):
                raise WeightspaceTypeError(
                    f"params keys must be strings; got {k!r} at {where or '<root>'}"
                )
            check_str_keys(v, f"{where}/{k}" if where else k)


def flatten_dict(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a/b/c": leaf}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            if not v:
                continue
            out.update(flatten_dict(v, key))
        else:
            out[key] = v
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b/c": leaf}`` -> nested dict."""
    out: dict[str, Any] = {}
    for path, v in flat.items():
        node = out
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return out
