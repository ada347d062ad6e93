"""A ledger written by main before schema 3 (commit 2e2c374, schema 2) migrates and resumes.

tests/data/schema2-ledger.db was made by tests/data/make_schema2_ledger.py with that
commit's code, from two inputs (a key column; natural keys); schema2-created.csv,
schema2-failed.csv and schema2-done.json are what that code exported and read from it.
Its server is gone, so the reruns point it at a new sandbox with the last inputs.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from importer.ledger._ledger import Ledger, ReadOnlyLedger
from importer.ledger._lock import LedgerLock
from importer.reports._export import export_csvs
from importer.reports._status import status
from importer.sandbox import SandboxConfig, running_sandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import run
from tests.helpers import copy_ledger

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "schema2-ledger.db"
#: Done rows with no error noted: no rerun sends anything for them.
SETTLED = {
    "K000000",  # recreated
    "K000001",  # updated
    "K000005",
    "K000006",
    "nk:985bf3b0eed858ba7d5fc374d2e6aefd",  # updated
    "nk:bdc69100d83673339113acfe23732873",
    "nk:2348d5e23d2296ee3c11f90fbef253a7",
}


def copy_for(tmp_path: Path, base_url: str) -> Path:
    """The fixture and its inputs in `tmp_path`, under the names the ledger recorded."""
    shutil.copy(DATA / "schema2-keyed.csv", tmp_path / "keyed.csv")
    shutil.copy(DATA / "schema2-natural.csv", tmp_path / "natural.csv")
    return copy_ledger(FIXTURE, tmp_path / "schema2.db", base_url)


def read_done(ledger: Path) -> list[list[object]]:
    readonly = Ledger.open_readonly(ledger)  # never migrates
    try:
        return [
            [d.source_key, d.source_file, d.source_row, d.consent_id, d.patient_id, *hashes]
            for d in readonly.done_consents()
            for hashes in [(d.payload_hash, d.field_hashes)]
        ]
    finally:
        readonly.close()


def test_the_schema2_ledger_is_migrated_once_and_says_so(
    tmp_path: Path, ledger_warnings: list[str]
) -> None:
    said = ledger_warnings
    ledger = copy_for(tmp_path, "http://127.0.0.1:1")
    first = status(ledger)  # opens it: the migration runs here
    second = status(ledger)
    assert len(said) == 1
    assert said[0].startswith(f"ledger {ledger}: upgraded from schema 2 to 3 in place, once (")
    assert first == second
    assert first["rows_by_state"] == {"done": 8, "in_flight": 1, "invalid": 2, "revoked": 1}
    assert first["source_files"] == {"keyed.csv": 8, "natural.csv": 4}
    assert first["systems"] == {"(none)": 12}
    assert first["top_errors"] == {"server_error": 2, "invalid_enum": 2}
    with sqlite3.connect(ledger) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == ("3",)


def test_the_migrated_ledger_exports_what_schema_2_exported(tmp_path: Path) -> None:
    ledger = copy_for(tmp_path, "http://127.0.0.1:1")
    counts = export_csvs(ledger, tmp_path / "created.csv", tmp_path / "failed.csv")
    assert (counts.created, counts.failed) == (8, 4)
    for name in ("created", "failed"):
        written = (tmp_path / f"{name}.csv").read_bytes()
        assert written == (DATA / f"schema2-{name}.csv").read_bytes(), name


def test_verify_reads_the_same_consents_before_and_after_the_migration(tmp_path: Path) -> None:
    ledger = copy_for(tmp_path, "http://127.0.0.1:1")
    expected = json.loads((DATA / "schema2-done.json").read_text())
    before = read_done(ledger)  # schema 2, read as it is
    Ledger(ledger).close()  # migrates
    after = read_done(ledger)
    # That code's field hashes, read as their first 8 digits (issue 24: a row's hashes
    # and the ledger's are 4 bytes since).
    expected = [[*row[:6], {f: h[:8] for f, h in row[6].items()}] for row in expected]
    assert before == expected
    assert len(after) == len(expected) == 8
    for old, new in zip(expected, after, strict=True):
        # Everything as it was; of each body's SHA-256, the first 16 bytes.
        assert new[:5] + new[6:] == old[:5] + old[6:]
        if old[5] is None:  # K000002: its PATCH failed, what the server holds is unknown
            assert new[5] is None
        else:
            assert len(new[5]) == 32
            assert old[5].startswith(new[5])
    assert sum(old[5] is None for old in expected) == 1


def test_a_rerun_of_the_migrated_ledger_sends_nothing_for_its_settled_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bodies: list[int]
) -> None:
    monkeypatch.chdir(tmp_path)
    inputs = [Path("keyed.csv"), Path("natural.csv")]
    with running_sandbox(SandboxConfig()) as sb:
        ledger = copy_for(tmp_path, sb.base_url)
        settled = {row[3] for row in read_done(ledger) if row[0] in SETTLED}
        first = run(inputs, sb.base_url, ledger)
        sent = [(r["method"], r["path"]) for r in sb.requests() if r["path"].startswith("/v1")]
        bodies[0] = 0
        second = run(inputs, sb.base_url, ledger)
        again = [(r["method"], r["path"]) for r in sb.requests() if r["path"].startswith("/v1")]
    # K000007 was in flight: looked up (not found on this server), then posted once;
    # K000002's failed PATCH is sent again (its consent lived on the gone server).
    assert (first.stats.lookups, first.stats.created) == (1, 1)
    assert sorted(method for method, _ in sent) == ["GET", "PATCH", "POST"]
    assert len(settled) == len(SETTLED)
    assert not any(consent in path for _, path in sent for consent in settled)
    assert first.stats.unchanged == len(SETTLED)
    # The second rerun: the settled rows and K000007 skipped in bulk, no body built for
    # them; only K000002 (its PATCH failed again) is sent.
    assert second.stats.unchanged == len(SETTLED) + 1
    assert [method for method, _ in again[len(sent) :]] == ["PATCH"]
    assert bodies[0] == 3  # K000002, and the two invalid rows validated again


def test_status_says_what_it_said_of_the_schema2_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tests/data/schema2-status.txt is main's `status` of the fixture (2e2c374), the
    ledger's path written LEDGER, with issue 19's columns (exit code, unknown for runs
    recorded before; adopted, revoked, paused; rows settling)."""
    ledger = copy_for(tmp_path, "http://127.0.0.1:1")
    code, out, _ = run_cli(["status", "--ledger", str(ledger)], capsys)
    assert code == 0
    expected = (DATA / "schema2-status.txt").read_text()
    assert out.replace(str(ledger), "LEDGER") == expected


def test_a_dry_run_reads_the_schema2_ledger_as_a_run_would_and_never_writes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --dry-run` opens the ledger read-only (issue 23): the file stays byte for
    byte, and its plan is the one a migrated ledger gives (what the dry run said when it
    migrated the file)."""
    monkeypatch.chdir(tmp_path)
    ledger = copy_for(tmp_path, "http://127.0.0.1:1")
    before = ledger.read_bytes()
    args = ["run", "keyed.csv", "natural.csv", "--ledger", str(ledger), "--dry-run"]
    code, read_only, _ = run_cli(args, capsys)
    assert ledger.read_bytes() == before
    assert sqlite3.connect(ledger).execute(
        "SELECT value FROM meta WHERE key = 'schema_version'"
    ).fetchone() == ("2",)
    Ledger(ledger).close()  # migrated, as the dry run used to do to the file
    again, migrated, _ = run_cli(args, capsys)
    assert (code, read_only) == (again, migrated)
    assert "unchanged" in read_only


def test_a_dry_run_works_while_a_run_holds_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run takes no lock (it writes nothing), as before: a run holding the ledger
    does not stop it."""
    monkeypatch.chdir(tmp_path)
    ledger = copy_for(tmp_path, "http://127.0.0.1:1")
    Ledger(ledger).close()
    args = ["run", "keyed.csv", "natural.csv", "--ledger", str(ledger), "--dry-run"]
    free = run_cli(args, capsys)
    with LedgerLock(ledger):
        held = run_cli(args, capsys)
    assert held[:2] == free[:2]  # the exit code and the plan
    assert held[0] in (0, 1)


def test_the_read_only_ledger_is_a_ledger_that_cannot_write(tmp_path: Path) -> None:
    ledger = copy_for(tmp_path, "http://127.0.0.1:1")
    with closing(Ledger.open_readonly(ledger)) as old:
        assert isinstance(old, ReadOnlyLedger)
        assert old.schema == "2"  # read as it is, never migrated
    Ledger(ledger).close()
    with closing(Ledger.open_readonly(ledger)) as readonly:
        assert readonly.schema == "3"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            readonly.revoking(1, "K000000")
