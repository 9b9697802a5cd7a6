"""The house rules of `docs/ARCHITECTURE.md`, read from the source with `ast` (nothing is
imported): the dependency direction between packages, no private name of one project
module used from another, project imports at module level (the CLI files excepted), one
jaxpr walker, and modules of at most 700 lines."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hyper", "metanets", "generators")
# Files whose `add_parsers` / `run` import their commands' modules when a command runs, so
# that `weightspace --help` stays fast.
CLI_FILES = {
    "hyper/cli.py",
    "hyper/hypernets/cli.py",
    "metanets/cli.py",
    "generators/cli.py",
    "generators/stitch_cli.py",
}
MAX_LINES = 700


def _files(*roots: str) -> list[Path]:
    return sorted(
        p for r in roots for p in (REPO / r).rglob("*.py") if "__pycache__" not in p.parts
    )


def _rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


def _module_name(p: Path) -> str:
    parts = list(p.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PACKAGE_FILES = _files(*PACKAGES)
TREES = {_rel(p): ast.parse(p.read_text(), filename=str(p)) for p in PACKAGE_FILES}
MODULES = {_module_name(REPO / rel): rel for rel in TREES}


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _imports(tree: ast.AST) -> Iterator[tuple[ast.AST, str]]:
    """(node, imported module) for every import of a project module in `tree`; ``from a
    import b`` names ``a.b`` where that is a module, else ``a``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _is_project(a.name):
                    yield node, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and _is_project(node.module):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                yield node, sub if sub in MODULES else node.module


def _layer(module: str) -> str:
    if module == "hyper.hypernets" or module.startswith("hyper.hypernets."):
        return "hypernets"
    return "core" if module.split(".")[0] == "hyper" else module.split(".")[0]


# What each layer may import (besides itself).
ALLOWED = {
    "core": {"core"},
    "hypernets": {"core", "hypernets"},
    "metanets": {"core", "metanets"},
    "generators": {"core", "generators"},
}


@pytest.mark.parametrize("rel", sorted(TREES))
def test_dependency_direction(rel):
    layer = _layer(_module_name(REPO / rel))
    bad = sorted(
        {m for _, m in _imports(TREES[rel]) if _layer(m) not in ALLOWED[layer]},
    )
    assert not bad, f"{rel} ({layer}) imports {bad}"


# The public API of `typing.NamedTuple` / `collections.namedtuple` starts with an underscore.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def _private(name: str) -> bool:
    return (
        name.startswith("_")
        and not name.startswith("__")
        and name != "_"
        and name not in NAMEDTUPLE_API
    )


def _private_definitions() -> dict[str, set[str]]:
    """Module -> the private names it defines: top-level functions, classes and
    assignments, methods and class attributes, and ``self._x`` attributes."""
    out: dict[str, set[str]] = {}
    for rel, tree in TREES.items():
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            names.add(n.id)
                        elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
                            if n.value.id in ("self", "cls"):
                                names.add(n.attr)
        out[_module_name(REPO / rel)] = {n for n in names if _private(n)}
    return out


PRIVATE = _private_definitions()


# Private attributes of third-party objects that share a name with one of ours.
THIRD_PARTY = {
    # scikit-learn's HistGradientBoostingRegressor keeps its loss (and link) private;
    # `GBMTrees` reads it to refuse models whose trees it cannot export.
    "metanets/baselines.py": {"_loss"},
}


def _private_uses(tree: ast.AST, own: set[str], rel: str = "") -> list[str]:
    """Private names of other project modules that `tree` reaches: ``from x import _y``,
    ``x._y`` for an imported project module `x`, and ``obj._y`` where ``_y`` is private to
    another project module and not defined here."""
    others = set().union(*(names for names in PRIVATE.values())) - own
    aliases = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and _is_project(node.module):
            for a in node.names:
                if _private(a.name):
                    found.append(f"from {node.module} import {a.name} (line {node.lineno})")
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if _is_project(a.name):
                    aliases[a.asname or a.name.split(".")[0]] = a.name
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not _private(attr) or attr in THIRD_PARTY.get(rel, ()):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            continue
        if isinstance(base, ast.Name) and base.id in aliases:
            if attr not in own:
                found.append(f"{base.id}.{attr} (line {node.lineno})")
        elif attr in others:
            found.append(f"<object>.{attr} (line {node.lineno})")
    return found


def _own_private(rel: str, tree: ast.AST) -> set[str]:
    if rel in TREES:
        return PRIVATE[_module_name(REPO / rel)]
    return {
        n.name
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name.startswith("_")
    } | {
        t.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name) and t.id.startswith("_")
    }


# mutations.py swaps internals for deliberately wrong ones, to show that the tests fail.
OTHER_FILES = [
    p
    for p in _files("tests", "bench", "notebooks")
    if p.name not in ("test_architecture.py", "mutations.py")
]


@pytest.mark.parametrize("rel", sorted(TREES) + [_rel(p) for p in OTHER_FILES])
def test_no_private_names_across_modules(rel):
    tree = TREES.get(rel) or ast.parse((REPO / rel).read_text())
    found = _private_uses(tree, _own_private(rel, tree), rel)
    assert not found, f"{rel} reaches private names of other modules: {found}"


@pytest.mark.parametrize("rel", sorted(set(TREES) - CLI_FILES))
def test_project_imports_at_module_level(rel):
    tree = TREES[rel]
    local = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            local += [f"{m} (line {n.lineno})" for n, m in _imports(fn)]
    assert not local, f"{rel} imports project modules inside functions: {sorted(set(local))}"


def test_only_the_jaxpr_module_walks_equations():
    walkers = [
        f"{rel}:{n.lineno}"
        for rel, tree in TREES.items()
        if rel != "hyper/jaxpr.py"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and n.attr == "eqns"
    ]
    assert (REPO / "hyper" / "jaxpr.py").exists()
    assert not walkers, f"only hyper/jaxpr.py may iterate a jaxpr's equations: {walkers}"


def test_modules_are_at_most_700_lines():
    long = {
        rel: n for rel in TREES if (n := len((REPO / rel).read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_faces_declare_their_names():
    for rel, tree in TREES.items():
        if not rel.endswith("__init__.py"):
            continue
        names = [
            n
            for n in tree.body
            if isinstance(n, ast.Assign)
            and any(getattr(t, "id", "") == "__all__" for t in n.targets)
        ]
        assert names, f"{rel} has no __all__"
        declared = ast.literal_eval(names[0].value)
        bound = {
            a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names
        }
        assert set(declared) <= bound, f"{rel}: __all__ names unbound {set(declared) - bound}"


def test_the_rules_catch_violations():
    """Each rule flags a hand-written violation (so a broken rule cannot pass silently)."""
    core_bad = ast.parse("from metanets import graph\n")
    assert [m for _, m in _imports(core_bad)] == ["metanets.graph"]
    assert _layer("metanets.graph") not in ALLOWED["core"]
    some = next(iter(sorted(n for names in PRIVATE.values() for n in names)))
    owner = next(m for m, names in PRIVATE.items() if some in names)
    src = f"import {owner} as mod\nfrom {owner} import {some}\nmod.{some}\nx.{some}\n"
    assert len(_private_uses(ast.parse(src), set())) == 3
    fn = ast.parse("def f():\n    from hyper import zoo\n").body[0]
    assert [m for _, m in _imports(fn)] == ["hyper.zoo"]


# Tests of the whole project rather than of one package.
PROJECT_TESTS = {
    "test_architecture.py",
    "test_bench_suite.py",
    "test_coverage.py",
    "test_coverage_properties.py",
    "test_docs.py",
    "test_fuzz.py",
    "test_notebooks.py",
    "test_reliability.py",
    "test_suite_flags.py",
}


def test_test_files_mirror_the_packages():
    prefixes = ("test_hyper_", "test_hypernets_", "test_metanets_", "test_generators")
    stray = [
        p.name
        for p in (REPO / "tests").glob("test_*.py")
        if p.name not in PROJECT_TESTS and not p.name.startswith(prefixes)
    ]
    assert not stray, f"test files not named by package: {stray}"
