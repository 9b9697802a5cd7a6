"""Every public name of the package faces has a docstring, as the API reference renders it.

The reference (`make docs`, mkdocstrings) reads the source statically and leaves out an object
without a docstring, so this test reads the source the same way, with `ast`, and nothing is
imported: a class or function needs its own docstring (a dataclass's generated signature
does not count), a module its module docstring, and a constant or alias a string literal
right after its assignment (an attribute docstring). Names are followed through the
`from X import name` statements that re-export them.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FACES = ["hyper", "hyper.hypernets", "metanets", "generators"]


def _path(module: str) -> Path:
    base = ROOT / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@cache
def _tree(module: str) -> ast.Module:
    return ast.parse(_path(module).read_text(), filename=str(_path(module)))


def _all(module: str) -> list[str]:
    for node in _tree(module).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{module} has no __all__")


def _is_docstring(node: ast.stmt | None) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        and bool(node.value.value.strip())
    )


def _docstring(module: str, name: str, seen: frozenset = frozenset()) -> str | None:
    """Where `name` of `module` is defined and whether it has a docstring: None when it
    has one, else a line saying what is missing."""
    if (module, name) in seen:
        return f"{module}.{name}: import cycle"
    body = _tree(module).body
    for i, node in enumerate(body):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name == name:
                ok = ast.get_docstring(node) and ast.get_docstring(node).strip()
                return None if ok else f"{module}.{name} ({type(node).__name__}) has no docstring"
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                following = body[i + 1] if i + 1 < len(body) else None
                ok = _is_docstring(following)
                return None if ok else f"{module}.{name} has no docstring after its assignment"
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) != name:
                    continue
                sub = f"{node.module}.{alias.name}"
                if _path(sub).exists():  # a module imported from its package
                    doc = ast.get_docstring(_tree(sub))
                    return None if doc and doc.strip() else f"module {sub} has no docstring"
                return _docstring(node.module, alias.name, seen | {(module, name)})
    return f"{module}.{name}: not defined or imported in {_path(module).relative_to(ROOT)}"


@pytest.mark.parametrize("face", FACES)
def test_face_names_have_docstrings(face: str):
    names = _all(face)
    assert names, f"{face}.__all__ is empty"
    missing = [m for m in (_docstring(face, n) for n in names) if m]
    assert not missing, "names of the API reference without a docstring:\n" + "\n".join(missing)


def test_faces_have_module_docstrings():
    missing = [f for f in FACES if not ast.get_docstring(_tree(f))]
    assert not missing, f"faces without a module docstring: {missing}"


def test_the_check_sees_a_missing_docstring(monkeypatch):
    """The check itself fails on an undocumented class, function or constant."""
    src = 'X = 1\nY = 2\n"""Y, documented."""\nclass C:\n    a: int\ndef f():\n    pass\n'
    tree = ast.parse(src)
    monkeypatch.setitem(globals(), "_tree", lambda module: tree)
    assert _docstring("fake", "X") and _docstring("fake", "C") and _docstring("fake", "f")
    assert _docstring("fake", "Y") is None
