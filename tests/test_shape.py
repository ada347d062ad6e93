"""The package's shape, measured: no import cycle, no SQL outside the ledger, a stated
public API. Size is a smell to read, not a rule (issue 23): no line caps."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import importer

PACKAGE = Path(importer.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every importer module `path` imports: at the top, under TYPE_CHECKING or inside
    functions alike."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "importer")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "importer":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(path) - {name} for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it; None when there is none."""
    state: dict[str, int] = {}  # 1 on the path, 2 finished
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)) is not None:
            return cycle
    return None


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),  # the check itself can fail
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_no_import_cycle_among_importer_modules() -> None:
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize(
    ("module", "must_not_import"),
    [
        # Result types are a leaf: reports read them, the engine fills them.
        (
            "importer._results",
            {
                "importer.engine._engine",
                "importer.reports._report",
                "importer.reports._html_report",
            },
        ),
        ("importer.reports._report", {"importer.engine._engine", "importer.engine._runner"}),
        ("importer.reports._html_report", {"importer.engine._engine", "importer.engine._runner"}),
        ("importer.reports._console", {"importer.engine._engine", "importer.engine._runner"}),
        (
            "importer.engine._engine",
            {
                "importer.reports._report",
                "importer.reports._html_report",
                "importer.reports._console",
            },
        ),
    ],
)
def test_reports_and_engine_do_not_import_each_other(
    module: str, must_not_import: set[str]
) -> None:
    # Transitively: the engine reaching a report through a helper module counts too.
    assert not reachable(import_graph(), module) & must_not_import


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_reachable_follows_imports_through_other_modules() -> None:
    assert reachable({"a": {"b"}, "b": {"c"}, "c": set()}, "a") == {"b", "c"}


def test_no_sql_outside_the_ledger() -> None:
    offenders = []
    for name, path in MODULES.items():
        if name == "importer.ledger._ledger" or name.startswith("importer.sandbox"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany", "db"):
                offenders.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "sqlite3" in names:
                    offenders.append(f"{name}:{node.lineno} imports sqlite3")
    assert offenders == []


def test_the_public_api_is_stated_and_every_name_loads() -> None:
    assert {"validate", "plan", "run", "export", "verify", "status", "undo"} <= set(
        importer.__all__
    )
    for name in importer.__all__:
        assert getattr(importer, name) is not None, name
    with pytest.raises(AttributeError):
        _ = importer.Engine  # type: ignore[attr-defined]


def test_importing_the_package_loads_no_engine() -> None:
    """`import importer` is cheap: names load on first use."""
    import subprocess
    import sys

    code = "import sys, importer; print('importer.engine._engine' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_module_imports_on_its_own() -> None:
    for name in MODULES:
        if name.endswith("__main__"):
            continue
        importlib.import_module(name)
