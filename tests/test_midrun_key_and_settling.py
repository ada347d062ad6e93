"""The smaller points of issue 19 (point 6): a key revoked mid-run fails no row, and rows
still settling are neither failed nor errors anywhere (export, status, summary), but are
shown as settling. The key is revoked through the sandbox's admin call, over its port.
"""

from __future__ import annotations

import csv
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from importer.reports._export import export_csvs
from importer.reports._status import status as ledger_status
from importer.sandbox import RunningSandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, run, write_csv


def _admin(server: RunningSandbox, **changes: object) -> None:
    """Change the sandbox's config through its admin endpoint (no key needed)."""
    answer = httpx.post(f"{server.base_url}/__sandbox/config", json=changes, timeout=10)
    answer.raise_for_status()


@contextmanager
def _revoke_key_after(server: RunningSandbox, creates: int) -> Iterator[None]:
    """Revoke the run's key once the server has seen `creates` POSTs."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while server.stats()["creates"] < creates and time.monotonic() < deadline:
            time.sleep(0.005)
        _admin(server, revoked_keys=[KEY])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield
    finally:
        watcher.join()


def _states(ledger: Path) -> dict[str, int]:
    with sqlite3.connect(ledger) as db:
        return dict(db.execute("SELECT state, count(*) FROM rows GROUP BY state").fetchall())


def _failed_csv_rows(ledger: Path, out: Path) -> list[dict[str, str]]:
    counts = export_csvs(ledger, None, out)
    with out.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert counts.failed == len(rows)
    return rows


def _each_row_once(server: RunningSandbox, rows: int) -> None:
    consents = server.consents()
    assert len(consents) == rows == len({(c["patientId"], c["dateTime"]) for c in consents})


def test_a_key_revoked_mid_run_fails_no_row_and_the_rerun_resumes(
    server: RunningSandbox, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(200))
    ledger = tmp_path / "l.db"
    _admin(server, latency_ms=10)
    with _revoke_key_after(server, 30):
        result = run(source, server.base_url, ledger, concurrency=4)
    assert result.exit_code == 3  # the contract: the key refused mid-run, resumable
    assert result.stats.aborted.startswith("authentication failed (401 KEY_REVOKED)")
    assert (result.stats.failed, result.stats.by_error) == (0, {})
    assert result.stats.rows_left > 0
    # Before: the rows whose requests got the 401 were `failed` (http_401).
    assert set(_states(ledger)) <= {"done", "in_flight"}
    with sqlite3.connect(ledger) as db:
        assert db.execute("SELECT count(*) FROM rows WHERE error_code IS NOT NULL").fetchone() == (
            0,
        )
    assert _failed_csv_rows(ledger, tmp_path / "failed.csv") == []

    _admin(server, revoked_keys=[])  # a good key again
    again = run(source, server.base_url, ledger, concurrency=4)
    assert again.exit_code == 0, again.stats.aborted
    _each_row_once(server, 200)


def test_settling_rows_are_no_errors_but_are_shown_as_settling(
    server: RunningSandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(100))
    ledger = tmp_path / "l.db"
    # Every POST is stored, then answered 500: ambiguous, so each row settles (30 s);
    # the key revoked meanwhile stops the run with rows still settling.
    _admin(server, latency_ms=20, fault_error_after_store=1.0)
    with _revoke_key_after(server, 5):
        result = run(source, server.base_url, ledger, concurrency=2, settle_s=30)
    assert result.exit_code == 3
    settling = _states(ledger).get("settling", 0)
    assert settling > 0
    assert (result.stats.failed, result.stats.by_error) == (0, {})
    summary = result.stats.summary()
    assert summary["settling"] == settling
    assert summary["failed_by_code"] == {}
    # Not in failed.csv, not among status's errors; status counts them as settling.
    assert _failed_csv_rows(ledger, tmp_path / "failed.csv") == []
    info = ledger_status(ledger)
    assert info["top_errors"] == {}
    assert info["settling"] == settling
    code, out, _ = run_cli(["status", "--ledger", str(ledger)], capsys)
    assert code == 0
    assert f"settling (waiting for a lookup): {settling:,}" in out.splitlines()[0]
    assert "Most common errors" not in out
    assert info["runs"][0]["summary"]["settling"] == settling  # the run's record too

    _admin(server, revoked_keys=[], fault_error_after_store=0.0, latency_ms=0)
    again = run(source, server.base_url, ledger, concurrency=2)
    assert again.exit_code == 0, again.stats.aborted
    _each_row_once(server, 100)  # the settled rows were found and adopted, not re-posted
