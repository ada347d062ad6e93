"""`undo` (issue 21): a run taken back over the sandbox on a real port."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from importer._ledger import Ledger
from importer._undo import UndoConfig, UndoResult, undo
from importer.sandbox import RunningSandbox, SandboxConfig, running_sandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, ledger_ids, run, write_csv

WRITES = ("POST", "PATCH", "DELETE")


def do_undo(sandbox: RunningSandbox, ledger: Path, run_id: int, **options: Any) -> UndoResult:
    return undo(
        UndoConfig(ledger=ledger, run_id=run_id, base_url=sandbox.base_url, api_key=KEY, **options)
    )


def by_id(sandbox: RunningSandbox) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in sandbox.consents()}


def methods(sandbox: RunningSandbox) -> dict[str, int]:
    return dict(sandbox.stats()["by_method"])


def ledger_dump(path: Path) -> list[tuple[Any, ...]]:
    """Every table of the ledger, as rows (to tell that nothing was written)."""
    db = sqlite3.connect(path)
    try:
        tables = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, *r) for t in sorted(tables) for r in db.execute(f"SELECT * FROM {t}")]  # noqa: S608
    finally:
        db.close()


def nightly(tmp_path: Path, sandbox: RunningSandbox) -> tuple[Path, Path, list[dict[str, str]]]:
    """Run 1 creates 100 rows; run 2 (the nightly) patches those 100 and creates 50."""
    rows = list(consent_rows(100))
    source = write_csv(tmp_path / "in.csv", rows)
    ledger = tmp_path / "l.db"
    assert run(source, sandbox.base_url, ledger).exit_code == 0
    for i, row in enumerate(rows):
        row["policyUri"] = f"https://clinic.example/policy/v{2 + i % 3}"
        if i % 4 == 0:
            row["status"] = "inactive"
    rows.extend(consent_rows(50, start=1000))
    write_csv(source, rows)
    second = run(source, sandbox.base_url, ledger)
    assert (second.stats.created, second.stats.updated) == (50, 100)
    return source, ledger, rows


def test_undo_of_a_nightly_run_restores_the_bodies_before_it_and_a_rerun_redoes_it(
    tmp_path: Path,
) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        rows = list(consent_rows(100))
        source = write_csv(tmp_path / "in.csv", rows)
        ledger = tmp_path / "l.db"
        run(source, sandbox.base_url, ledger)
        before_run = by_id(sandbox)
        ids_before = ledger_ids(ledger)
        _, _, _ = nightly_again(source, ledger, rows, sandbox)
        after_run = by_id(sandbox)
        assert len(after_run) == 150
        writes = methods(sandbox)
        result = do_undo(sandbox, ledger, 2)
        assert result.exit_code == 0, result.rows[:3]
        assert result.counts() == {"undone": 150}
        # The server's consents are those before the run, field by field.
        assert by_id(sandbox) == before_run
        spent = {m: methods(sandbox).get(m, 0) - writes.get(m, 0) for m in WRITES}
        assert spent == {"POST": 0, "PATCH": 100, "DELETE": 50}
        assert ledger_ids(ledger) == ids_before
        # A rerun of the same file redoes exactly the undone work: no lookups.
        again = run(source, sandbox.base_url, ledger)
        spent = {m: methods(sandbox).get(m, 0) - writes.get(m, 0) for m in WRITES}
        assert (again.stats.created, again.stats.updated, again.stats.lookups) == (50, 100, 0)
        assert again.stats.requests == 150
        assert sandbox.stats()["duplicates"] == 0
        assert {k: v for k, v in by_id(sandbox).items() if k in before_run} == {
            k: v for k, v in after_run.items() if k in before_run
        }


def nightly_again(
    source: Path, ledger: Path, rows: list[dict[str, str]], sandbox: RunningSandbox
) -> tuple[Path, Path, list[dict[str, str]]]:
    for i, row in enumerate(rows):
        row["policyUri"] = f"https://clinic.example/policy/v{2 + i % 3}"
        if i % 4 == 0:
            row["status"] = "inactive"
    rows.extend(consent_rows(50, start=1000))
    write_csv(source, rows)
    second = run(source, sandbox.base_url, ledger)
    assert (second.stats.created, second.stats.updated) == (50, 100)
    return source, ledger, rows
