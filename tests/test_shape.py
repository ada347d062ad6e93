"""The package's shape, measured: no SQL outside the ledger, row types in a leaf, a stated
public API. The import graph (layers, independent parts, the sandbox on its own) is the
import-linter contract in pyproject.toml, run by `make lint`. Size is a smell to read, not
a rule (issue 23): no line caps."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import importer

PACKAGE = Path(importer.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_sql_outside_the_ledger() -> None:
    offenders = []
    for name, path in MODULES.items():
        if name.startswith(("importer.ledger", "importer.sandbox")):
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
        _ = importer.Engine


def test_the_exception_tree_is_public() -> None:
    """Every exception of `_errors` a caller may catch is public, with its hierarchy."""
    from importer import _errors

    tree = {
        name
        for name, value in vars(_errors).items()
        if isinstance(value, type) and issubclass(value, _errors.ConsentImportError)
    }
    assert tree <= set(importer.__all__)
    assert issubclass(importer.AuthError, importer.ApiError)
    assert issubclass(importer.ApiError, importer.ConsentImportError)
    assert issubclass(importer.ServerUnreachable, importer.AbortError)
    assert importer.ConfigError is _errors.ConfigError


def test_importing_the_package_loads_no_engine() -> None:
    """`import importer` is cheap: names load on first use."""
    code = "import sys, importer; print('importer.engine._engine' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_module_imports_on_its_own() -> None:
    for name in MODULES:
        if name.endswith("__main__"):
            continue
        importlib.import_module(name)


@pytest.mark.parametrize("module", ["importer._rows", "importer._errors", "importer._results"])
def test_the_leaf_types_load_without_pandas_or_numpy(module: str) -> None:
    """Row types are a leaf (issue 23): naming a row does not load the data stack."""
    code = f"import sys, {module}; print(sorted({{'pandas', 'numpy'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_one_row_error_type() -> None:
    """The mapping's RowError is the only one; the ledger's note of an error is ErrorNote."""
    from importer import _rows
    from importer.ledger import _schema

    assert not hasattr(_schema, "RowError")
    assert _schema.ErrorNote is not _rows.RowError


def test_the_api_client_is_built_in_one_place() -> None:
    """One construction path (issue 23): only `api._build.open_client` assembles a client."""
    builders = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            called = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            if called and node.func.id in ("ClinikClient", "make_http_client"):
                builders.append(f"{name}:{node.func.id}")
    assert builders == ["importer.api._build:make_http_client", "importer.api._build:ClinikClient"]


def test_run_stats_have_one_writer() -> None:
    """`RunStats` is written by the engine's observer only (issue 23): the engine, the
    runner and the identity checks hand it what they know. (The client's own `ClientStats`
    in `api/` shares some field names, so `api/` is left out.)"""
    from dataclasses import fields

    from importer._results import RunStats

    names = {f.name for f in fields(RunStats)}
    writers = []
    for name, path in MODULES.items():
        if name in {"importer._results", "importer.engine._observer"} or ".api." in name:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AugAssign | ast.AnnAssign)
                else []
            )
            for target in targets:
                for leaf in ast.walk(target):
                    if (
                        isinstance(leaf, ast.Attribute)
                        and leaf.attr in names
                        and isinstance(leaf.value, ast.Name | ast.Attribute)
                        and (getattr(leaf.value, "id", None) or getattr(leaf.value, "attr", ""))
                        == "stats"
                    ):
                        writers.append(f"{name}:{node.lineno} .{leaf.attr}")
    assert writers == []
