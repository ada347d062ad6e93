"""Crashes, signals, the ledger lock, budget pauses and exports, through the real CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from importer.ledger._lock import LedgerLock
from importer.sandbox import SandboxConfig, running_sandbox
from tests.engine_helpers import KEY, consent_rows, ledger_ids, run, write_csv
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


def start_cli(args: list[str], base_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CLINIKAPI_API_KEY": KEY, "CLINIKAPI_BASE_URL": base_url}
    return subprocess.Popen(
        [sys.executable, "-m", "importer", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("kill_after", [5, 60, 140])
def test_sigkill_mid_run_then_rerun_creates_each_row_once(tmp_path: Path, kill_after: int) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(400))
    ledger = tmp_path / "l.db"
    # 400 rows: the kill after 140 creates lands well before the end even on a fast run.
    # Latency keeps requests on the wire, so the kill lands with some stored but unanswered.
    with running_sandbox(SandboxConfig(latency_ms=30, jitter_ms=30, seed=3)) as sandbox:
        proc = start_cli(
            ["run", str(source), "--ledger", str(ledger), "--concurrency", "16", "--quiet"],
            sandbox.base_url,
        )
        wait_for(lambda: sandbox.stats()["creates"] >= kill_after or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        status = start_cli(["status", "--ledger", str(ledger), "--json"], sandbox.base_url)
        status_out, _ = status.communicate(timeout=60)
        # the killed run's process is gone: not "running"
        assert [r["status"] for r in json.loads(status_out)["runs"]] == ["interrupted"]
        stored_at_kill = sandbox.stats()["consents"]
        assert 0 < stored_at_kill < 400
        result = run(source, sandbox.base_url, ledger, concurrency=8)
        stats = sandbox.stats()
        # Only rows whose intent was committed and outcome not are looked up: at most
        # the killed run's requests in flight and outcomes queued (2 x --concurrency 16).
        assert result.stats.lookups <= 2 * 16
        assert stats["duplicates"] == 0
        assert stats["consents"] == 400
        assert result.exit_code == 0
        assert sorted(ledger_ids(ledger).values()) == sorted(c["id"] for c in sandbox.consents())


def test_sigterm_settles_in_flight_requests_and_exits_3(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(300))
    ledger = tmp_path / "l.db"
    summary = tmp_path / "s.json"
    with running_sandbox(SandboxConfig(latency_ms=50)) as sandbox:
        proc = start_cli(
            [
                "run",
                str(source),
                "--ledger",
                str(ledger),
                "--concurrency",
                "4",
                "--summary-json",
                str(summary),
            ],
            sandbox.base_url,
        )
        wait_for(lambda: sandbox.stats()["creates"] >= 20)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, err
        assert "Traceback" not in err
        counts = json.loads(summary.read_text())
        # the summary counts the rows of the file, and says how many were never read
        assert f"Run: {counts['rows']:,} of 300 rows · " in out
        assert f"     {300 - counts['rows']:,} rows of the input not reached" in out.splitlines()
        # every request that was sent was answered and recorded: nothing is in flight
        assert counts["created"] == sandbox.stats()["consents"] == len(ledger_ids(ledger))
        assert counts["aborted"] == "interrupted by SIGTERM"
        result = run(source, sandbox.base_url, ledger)
        assert result.stats.created == 300 - counts["created"]
        assert sandbox.stats()["duplicates"] == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_run_that_read_the_whole_file_says_how_many_rows_are_left(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # 20 rows are read at once; one at a time at 300 ms each, most are still to do.
    source = write_csv(tmp_path / "in.csv", consent_rows(20))
    summary = tmp_path / "s.json"
    with running_sandbox(SandboxConfig(latency_ms=300)) as sandbox:
        proc = start_cli(
            ["run", str(source), "--ledger", str(tmp_path / "l.db"), "--concurrency", "1",
             "--no-preflight", "--summary-json", str(summary)],
            sandbox.base_url,
        )  # fmt: skip
        wait_for(lambda: sandbox.stats()["creates"] >= 2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    counts = json.loads(summary.read_text())
    assert counts["rows"] == 20  # read to the end, yet not finished
    assert 0 < counts["rows_left"] < 20
    assert (
        f"Aborted: interrupted by {sig.name}; {counts['rows_left']} rows left. "
        "Rerun with the same ledger to resume." in out.splitlines()
    )


def test_a_second_run_on_the_same_ledger_exits_2(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(3))
    ledger = tmp_path / "l.db"
    with LedgerLock(ledger), running_sandbox(SandboxConfig()) as sandbox:
        proc = start_cli(["run", str(source), "--ledger", str(ledger)], sandbox.base_url)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"is in use by process {os.getpid()} on " in err
    assert "since 20" in err


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(3))
    ledger = tmp_path / "l.db"
    Path(f"{ledger}.lock").write_text(
        json.dumps({"pid": 999999, "host": "old", "since": "2026-01-01T00:00:00+00:00"})
    )
    with running_sandbox(SandboxConfig()) as sandbox:
        proc = start_cli(["run", str(source), "--ledger", str(ledger)], sandbox.base_url)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "took over the ledger lock left by process 999999 (since 2026-01-01" in err
    # the lock is released at exit: the file no longer names a holder
    assert Path(f"{ledger}.lock").read_text() == ""


def test_max_wait_pauses_cleanly_and_the_next_run_resumes(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(12))
    ledger, summary = tmp_path / "l.db", tmp_path / "s.json"
    with running_sandbox(SandboxConfig(rate_limit=5, rate_window_s=3600)) as sandbox:
        proc = start_cli(
            [
                "run",
                str(source),
                "--ledger",
                str(ledger),
                "--concurrency",
                "2",
                "--max-wait",
                "2",
                "--summary-json",
                str(summary),
            ],
            sandbox.base_url,
        )
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        counts = json.loads(summary.read_text())
        assert counts["paused"] is True
        assert counts["created"] <= 5
        assert counts["rows_left"] == 12 - counts["created"]
        assert counts["resets_in_s"] > 3000
        assert "Paused" in out
        assert "rows left" in out
        sandbox.configure(rate_limit=None)
        result = run(source, sandbox.base_url, ledger)
        assert result.stats.created == 12 - counts["created"]
        assert sandbox.stats()["duplicates"] == 0
        assert sandbox.stats()["consents"] == 12


def test_exports_and_failed_csv_feeds_back(tmp_path: Path) -> None:
    rows = list(consent_rows(6))
    rows[1]["scope"] = "=cmd()"  # invalid, and a formula: escaped in the export
    rows[2]["patientId"] = "pt_unknown"  # the server refuses it (422)
    source = write_csv(tmp_path / "in.csv", rows)
    ledger = tmp_path / "l.db"
    known = frozenset(r["patientId"] for r in rows) - {"pt_unknown"}
    with running_sandbox(SandboxConfig(known_patients=known | {"pt_fixed"})) as sandbox:
        run(source, sandbox.base_url, ledger)
        proc = start_cli(
            [
                "export",
                "--ledger",
                str(ledger),
                "--created",
                str(tmp_path / "c.csv"),
                "--failed",
                str(tmp_path / "f.csv"),
            ],
            sandbox.base_url,
        )
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        created_text = (tmp_path / "c.csv").read_text(encoding="utf-8-sig")
        created = list(csv.DictReader(created_text.splitlines()))
        assert list(created[0]) == [
            "source_file",
            "source_row",
            "source_key",
            "consent_id",
            "patient_id",
            "action",
            "request_id",
        ]
        assert len(created) == 4
        assert all(r["consent_id"].startswith("consent_") and r["request_id"] for r in created)
        failed_text = (tmp_path / "f.csv").read_text(encoding="utf-8-sig")
        failed = list(csv.DictReader(failed_text.splitlines()))
        assert list(failed[0]) == [
            *rows[0],
            "error_stage",
            "error_code",
            "error_message",
            "http_status",
            "request_id",
        ]
        assert [
            (r["sourceKey"], r["error_stage"], r["error_code"], r["http_status"]) for r in failed
        ] == [
            ("K000001", "validate", "invalid_enum", ""),
            ("K000002", "api", "api_validation", "422"),
        ]
        assert "'=cmd()" in failed_text
        # fix both rows in the exported file and feed it back
        fixed = failed_text.replace("'=cmd()", "treatment").replace("pt_unknown", "pt_fixed")
        (tmp_path / "fixed.csv").write_text(fixed, encoding="utf-8")
        result = run(tmp_path / "fixed.csv", sandbox.base_url, ledger)
        assert (result.stats.created, result.stats.failed, result.stats.invalid) == (2, 0, 0)
        assert sandbox.stats()["duplicates"] == 0
