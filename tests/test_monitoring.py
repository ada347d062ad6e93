"""A summary for monitors, always (issue 19, point 5): `--summary-json` and
`--metrics-file` for every outcome past argument parsing, refusals recorded in an
existing ledger, the last success carried over a failing night, and the output checks.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from importer.ledger._lock import LedgerLock
from importer.sandbox import RunningSandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, write_csv

#: The keys a monitor reads, beside the contract's first ones.
MONITOR_KEYS = {
    "exit_code",
    "run_id",
    "started_at",
    "finished_at",
    "revoked",
    "revoke_pending",
    "missing_from_source",
    "paused",
    "rows_left",
    "settling",
    "adopted",
}
CONTRACT_KEYS = {"rows", "valid", "invalid", "created", "updated", "unchanged", "failed"}
CONTRACT_KEYS |= {"requests", "retries", "rate_limited", "duration_s"}


@pytest.fixture
def night(
    server: RunningSandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> object:
    """`night(*extra)`: a nightly `run` of in.csv (5 rows) into l.db, with its summary
    and metrics; returns (exit code, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    write_csv(tmp_path / "in.csv", consent_rows(5))

    def night(*extra: str) -> tuple[int, str]:
        args = ["run", "in.csv", "--ledger", "l.db", "--base-url", server.base_url, "-q"]
        args += ["--summary-json", "s.json", "--metrics-file", "m.prom", *extra]
        code, _, err = run_cli(args, capsys)
        return code, err

    return night


def _metrics(path: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{label}}}" if label else sample.name] = sample.value
    return found


def _bad_mapping(tmp_path: Path, held: list[LedgerLock] | None = None) -> list[str]:
    (tmp_path / "bad.toml").write_text("[nonsense\n")
    return ["--mapping", "bad.toml"]


def _held_lock(tmp_path: Path, held: list[LedgerLock]) -> list[str]:
    lock = LedgerLock(tmp_path / "l.db")
    lock.acquire()  # another run holds the ledger
    held.append(lock)
    return []


@pytest.mark.parametrize(
    ("setup", "code", "recorded"),
    [
        (lambda tmp, held: [], 0, True),
        (_bad_mapping, 2, True),  # a config error: recorded, the ledger existed
        (_held_lock, 2, True),  # an overlapping run: recorded beside it
        # a usage error past parsing: written, but no run (the ledger is left untouched)
        (lambda tmp, held: ["--report", "r.txt"], 2, False),
        (lambda tmp, held: ["--api-key", "clk_test_revokedkey1234"], 2, True),  # refused key
    ],
    ids=["ok", "bad_mapping", "overlap", "bad_report", "refused_key"],
)
def test_the_summary_and_metrics_are_written_for_every_outcome(
    night: object,
    server: RunningSandbox,
    tmp_path: Path,
    setup: object,
    code: int,
    recorded: bool,
) -> None:
    first, err = night()  # type: ignore[operator]
    assert first == 0, err
    server.configure(revoked_keys=["clk_test_revokedkey1234"])
    held: list[LedgerLock] = []
    extra = setup(tmp_path, held)  # type: ignore[operator]
    try:
        got, err = night(*extra)  # type: ignore[operator]
    finally:
        for lock in held:
            lock.release()
    assert got == code, err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert set(summary) >= MONITOR_KEYS | CONTRACT_KEYS
    assert summary["exit_code"] == code
    assert (summary["run_id"] == 2) is recorded  # night 1 was run 1
    started = datetime.fromisoformat(summary["started_at"])
    assert started <= datetime.fromisoformat(summary["finished_at"])
    metrics = _metrics(tmp_path / "m.prom")
    assert metrics["consent_import_last_exit_code"] == code
    assert metrics["consent_import_last_success_timestamp_seconds"] > 0  # night 1's, kept
    # Written in place by a rename: no temporary file is left beside them.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("s.", "m.", "."))) == [
        "m.prom",
        "s.json",
    ]


def test_a_refusal_is_recorded_as_a_run_and_status_shows_it(
    night: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    night()  # type: ignore[operator]
    code, _ = night(*_bad_mapping(tmp_path))  # type: ignore[operator]
    assert code == 2
    code, out, _ = run_cli(["status", "--ledger", "l.db"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert " refused  exit 2  mapping file bad.toml is not valid TOML" in lines[1]
    assert " finished exit 0  rows=5 created=5 " in lines[2]
    assert lines[2].endswith("adopted=0 revoked=0 paused=0")
    code, out, _ = run_cli(["status", "--ledger", "l.db", "--json"], capsys)
    runs = json.loads(out)["runs"]
    assert [(r["id"], r["status"], r["exit_code"]) for r in runs] == [
        (2, "refused", 2),
        (1, "finished", 0),
    ]


def test_a_refusal_creates_no_ledger(night: object, tmp_path: Path) -> None:
    code, _ = night(*_bad_mapping(tmp_path))  # type: ignore[operator]
    assert code == 2
    assert not (tmp_path / "l.db").exists()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["exit_code"], summary["run_id"]) == (2, None)
    # Never succeeded: 0, so an alert on its age fires from the first night.
    assert _metrics(tmp_path / "m.prom")["consent_import_last_success_timestamp_seconds"] == 0


def test_the_last_success_is_carried_over_failing_nights(night: object, tmp_path: Path) -> None:
    code, _ = night()  # type: ignore[operator]
    assert code == 0
    first = _metrics(tmp_path / "m.prom")
    success = first["consent_import_last_success_timestamp_seconds"]
    assert success == first["consent_import_last_run_timestamp_seconds"] > 0
    assert first["consent_import_last_run_rows{outcome=created}"] == 5
    assert first["consent_import_last_run_id"] == 1
    for _ in range(2):  # two failing nights
        code, _ = night(*_bad_mapping(tmp_path))  # type: ignore[operator]
        assert code == 2
        failing = _metrics(tmp_path / "m.prom")
        assert failing["consent_import_last_exit_code"] == 2
        assert failing["consent_import_last_success_timestamp_seconds"] == success
        assert failing["consent_import_last_run_timestamp_seconds"] > success
    code, _ = night()  # type: ignore[operator]
    assert code == 0
    again = _metrics(tmp_path / "m.prom")
    assert again["consent_import_last_success_timestamp_seconds"] > success
    assert again["consent_import_last_run_rows{outcome=unchanged}"] == 5


@pytest.mark.parametrize(
    ("extra", "victim", "message"),
    [
        (["--metrics-file", "in.csv"], "in.csv", "--metrics-file in.csv is the same file as input"),
        (
            ["--metrics-file", "m.toml"],
            "m.toml",
            "--metrics-file m.toml is the same file as --mapping",
        ),
        (["--metrics-file", "l.db"], "l.db", "--metrics-file l.db is the same file as --ledger"),
        (
            ["--summary-json", "x.json", "--metrics-file", "x.json"],
            "x.json",
            "--summary-json x.json is the same file as --metrics-file x.json",
        ),
    ],
)
def test_monitor_outputs_never_overwrite_an_input(
    server: RunningSandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    victim: str,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    write_csv(tmp_path / "in.csv", consent_rows(3))
    (tmp_path / "m.toml").write_text("[columns]\n")
    (tmp_path / "l.db").write_bytes(b"")
    (tmp_path / "x.json").write_text("keep\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    args = ["run", "in.csv", "--mapping", "m.toml", "--ledger", "l.db"]
    code, _, err = run_cli([*args, "--base-url", server.base_url, *extra], capsys)
    assert code == 2
    assert message in err
    assert (tmp_path / victim).read_bytes() == before[victim]
    assert server.consents() == []


def test_a_summary_path_of_a_crosswalk_is_kept_when_the_mapping_fails(
    night: object, tmp_path: Path
) -> None:
    crosswalk = "mrn,patientId\nM1,pt_0001\n"
    (tmp_path / "cw.csv").write_text(crosswalk)
    (tmp_path / "m.toml").write_text('[patients]\ncrosswalk = "cw.csv"\n[bogus]\n')
    code, err = night("--mapping", "m.toml", "--summary-json", "cw.csv")  # type: ignore[operator]
    assert code == 2
    assert (tmp_path / "cw.csv").read_text() == crosswalk
    assert "--summary-json cw.csv holds something else" in err


def test_a_create_check_refusal_is_one_run_with_its_counts_and_nothing_to_undo(
    night: object,
    server: RunningSandbox,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = night()  # type: ignore[operator]
    assert code == 0, err
    (tmp_path / "l.db").rename(tmp_path / "first.db")
    Path(f"{tmp_path / 'l.db'}.lineage").unlink(missing_ok=True)
    # A new ledger while the server already holds the rows: the check refuses (exit 2).
    code, err = night()  # type: ignore[operator]
    assert code == 2
    assert "already exist" in err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["exit_code"], summary["run_id"], summary["rows"]) == (2, 1, 5)
    assert summary["created"] == 0
    code, out, _ = run_cli(["status", "--ledger", "l.db", "--json"], capsys)
    runs = json.loads(out)["runs"]
    assert [(r["id"], r["status"], r["exit_code"]) for r in runs] == [(1, "refused", 2)]
    code, out, _ = run_cli(["status", "--ledger", "l.db"], capsys)
    assert " refused  exit 2  " in out
    assert "already exist" in out
    base = ["undo", "--ledger", "l.db", "--base-url", server.base_url, "--run", "1"]
    code, out, err = run_cli(base, capsys)
    assert code == 2
    assert "run 1 was refused before it sent any request" in err
    assert "nothing to undo" in err
    assert "before `undo` existed" not in err
    assert len(server.consents()) == 5


@pytest.mark.parametrize("key", ["", "not-a-key"], ids=["missing", "misshapen"])
def test_a_missing_or_misshapen_key_records_no_run(
    night: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    code, err = night()  # type: ignore[operator]
    assert code == 0, err
    before = (tmp_path / "l.db").read_bytes()
    monkeypatch.setenv("CLINIKAPI_API_KEY", key)
    code, err = night()  # type: ignore[operator]
    assert code == 2
    assert "key" in err
    assert (tmp_path / "l.db").read_bytes() == before  # no run recorded, nothing written
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["exit_code"], summary["run_id"]) == (2, None)
