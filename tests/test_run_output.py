"""What a run shows people and schedulers: status, JSON logs, waits, reports, dry runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from importer.sandbox import SandboxConfig, running_sandbox
from tests.engine_helpers import KEY, consent_rows, run, write_csv

pytestmark = pytest.mark.slow


def cli(args: list[str], base_url: str = "http://127.0.0.1:9") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLINIKAPI_API_KEY": KEY, "CLINIKAPI_BASE_URL": base_url}
    return subprocess.run(
        [sys.executable, "-m", "importer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_status_lists_runs_states_and_errors(tmp_path: Path) -> None:
    rows = list(consent_rows(6))
    rows[2]["scope"] = "nope"
    source = write_csv(tmp_path / "in.csv", rows)
    ledger = tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, ledger)
        run(source, sandbox.base_url, ledger)
    result = cli(["status", "--ledger", str(ledger)])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"Ledger {ledger}: rows done 5, invalid 1; in flight (outcome unknown): 0; "
        "settling (waiting for a lookup): 0"
    )
    assert lines[1].startswith("  run    2 ")
    assert "finished exit 1 " in lines[1]  # the invalid row
    assert "adopted=0 revoked=0 paused=0" in lines[1]
    assert "rows=6 created=0 updated=0 unchanged=5 invalid=1 failed=0" in lines[1]
    assert "rows=6 created=5" in lines[2]
    assert lines[-1].split() == ["invalid_enum", "1"]
    as_json = json.loads(cli(["status", "--ledger", str(ledger), "--json"]).stdout)
    assert as_json["rows_by_state"] == {"done": 5, "invalid": 1}
    assert [r["status"] for r in as_json["runs"]] == ["finished", "finished"]


def test_json_logs_are_json_lines_without_phi(tmp_path: Path) -> None:
    rows = list(consent_rows(4))
    rows[1]["patientId"] = "pt_SECRETPATIENT"
    source = write_csv(tmp_path / "in.csv", rows)
    known = frozenset(r["patientId"] for r in rows) - {"pt_SECRETPATIENT"}
    with running_sandbox(SandboxConfig(known_patients=known)) as sandbox:
        result = cli(
            [
                "run",
                str(source),
                "--ledger",
                str(tmp_path / "l.db"),
                "--log-format",
                "json",
                "--quiet",
            ],
            sandbox.base_url,
        )
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stderr.splitlines()]
    failures = [r for r in records if r["message"].startswith("row failed")]
    assert len(failures) == 1
    assert "row=3 code=api_validation status=422 request_id=req_" in failures[0]["message"]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert "SECRETPATIENT" not in result.stderr
    assert KEY not in result.stderr + result.stdout


def test_a_spent_window_shows_the_wait_then_carries_on(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(8))
    with running_sandbox(SandboxConfig(rate_limit=5, rate_window_s=3)) as sandbox:
        result = cli(
            [
                "run",
                str(source),
                "--ledger",
                str(tmp_path / "l.db"),
                "--concurrency",
                "2",
                "--max-wait",
                "30",
            ],
            sandbox.base_url,
        )
        assert sandbox.stats()["consents"] == 8
    assert result.returncode == 0, result.stderr
    assert "waiting" in result.stderr
    assert "rate-limit window spent; resets in" in result.stderr
    assert "rows left, ETA about" in result.stderr


def test_run_reports_json_and_html(tmp_path: Path) -> None:
    rows = list(consent_rows(5))
    rows[0]["dateTime"] = "NOT-A-DATE-XYZ"
    source = write_csv(tmp_path / "in.csv", rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        result = cli(
            [
                "run",
                str(source),
                "--ledger",
                str(tmp_path / "l.db"),
                "--quiet",
                "--report",
                str(tmp_path / "r.json"),
                "--report",
                str(tmp_path / "r.html"),
                "--redact",
            ],
            sandbox.base_url,
        )
    assert result.returncode == 1, result.stderr
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["run"]["created"] == 4
    assert document["summary"]["by_rule"] == {"invalid_date": 1}
    page = (tmp_path / "r.html").read_text()
    assert 'id="figure-created"' in page
    assert 'data-value="4"' in page
    assert "NOT-A-DATE-XYZ" not in page  # --redact


def test_run_refuses_a_csv_report(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(1))
    result = cli(["run", str(source), "--report", str(tmp_path / "r.csv")])
    assert result.returncode == 2
    assert "use `consent-import export --failed`" in result.stderr


def test_dry_run_through_the_cli_sends_nothing(tmp_path: Path) -> None:
    rows = list(consent_rows(3))
    source = write_csv(tmp_path / "in.csv", rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, tmp_path / "l.db")
        rows[0]["status"] = "inactive"
        rows.append(next(consent_rows(1, start=9)))
        write_csv(source, rows)
        before = sandbox.stats()["requests"]
        result = cli(
            ["run", str(source), "--ledger", str(tmp_path / "l.db"), "--dry-run"], sandbox.base_url
        )
        assert sandbox.stats()["requests"] == before
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Dry run: 4 rows; nothing was sent.",
        "  create                                1",
        "  patch                                 1",
        "  unchanged                             2",
    ]


def test_a_run_config_repr_never_shows_the_key() -> None:
    from importer.engine._runner import RunConfig

    config = RunConfig(["in.csv"], api_key="clk_test_s3cretKEYa1b2")
    assert "s3cretKEY" not in repr(config)
    assert "in.csv" in repr(config)


def test_every_json_log_line_of_a_run_with_faults_parses(tmp_path: Path) -> None:
    rows = list(consent_rows(30))
    rows[3]["scope"] = "nope"  # invalid
    rows[5]["patientId"] = "pt_SECRETPATIENT"  # the server refuses it (422)
    source = write_csv(tmp_path / "in.csv", rows)
    known = frozenset(r["patientId"] for r in rows) - {"pt_SECRETPATIENT"}
    config = SandboxConfig(
        known_patients=known,
        fault_unavailable=0.15,
        fault_error_after_store=0.05,
        seed=5,
        rate_limit=12,
        rate_window_s=2,
    )
    summary = tmp_path / "s.json"
    with running_sandbox(config) as sandbox:
        result = cli(
            [
                "run",
                str(source),
                "--ledger",
                str(tmp_path / "l.db"),
                "--log-format",
                "json",
                "--max-wait",
                "30",
                "--settle",  # retry 5xx at once, as before --settle: this test reads retries
                "0",
                "--summary-json",
                str(summary),
            ],
            sandbox.base_url,
        )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""  # the human summary is for terminals, not the JSON log
    records = [json.loads(line) for line in result.stderr.splitlines()]
    events = [r.get("event") for r in records]
    assert events[0] == "start"
    start = records[0]
    assert start["base_url_host"] == sandbox.base_url.removeprefix("http://")
    assert start["inputs"] == [str(source)]
    assert start["options"]["concurrency"] == 8
    [invalid] = [r for r in records if r.get("event") == "row_invalid"]
    assert (invalid["row"], invalid["field"], invalid["code"]) == (5, "scope", "invalid_enum")
    [failed] = [r for r in records if r.get("event") == "row_failed"]
    assert (failed["row"], failed["code"], failed["status"]) == (7, "api_validation", 422)
    assert failed["request_id"].startswith("req_")
    retries = [r for r in records if r.get("event") == "retry"]
    assert retries
    assert all(isinstance(r["row"], int) and r["file"] == str(source) for r in retries)
    assert any(str(r.get("request_id")).startswith("req_") for r in retries)
    assert any(r.get("event") == "budget_wait" for r in records)
    assert events[-1] == "summary"
    assert set(json.loads(summary.read_text())) <= set(records[-1])
    assert records[-1]["exit_code"] == 1
    assert "SECRETPATIENT" not in result.stderr
    assert KEY not in result.stderr


def test_redirected_output_is_never_wrapped(tmp_path: Path) -> None:
    rows = list(consent_rows(1))
    source = write_csv(tmp_path / "a-rather-long-input-file-name-for-a-wrapping-check.csv", rows)
    ledger = tmp_path / "a-rather-long-ledger-name-that-makes-the-last-line-long.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        result = cli(["run", str(source), "--ledger", str(ledger)], sandbox.base_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Run: 1 row · 1 created (0 adopted after a lookup) · 0 updated")
    assert lines[0].endswith("· 0 invalid · 0 failed")  # one line, however long
    assert lines[-1] == f"Ledger: {ledger} (consent-import export --ledger {ledger} ... for CSVs)"
    assert "\x1b[" not in result.stdout + result.stderr  # no colour, no progress bar
