"""failed.csv of a `[[consents]]` mapping: one line per source row, its error columns
naming each failed consent; fixed and fed back, only what failed is sent again and no
created consent is revoked or marked invalid."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from importer.cli._main import main
from importer.sandbox import RunningSandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY

REGISTRY = Path(__file__).parent.parent / "sample_data" / "registry"


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code, out, _ = run_cli(args, capsys)
    return code, out


def read_failed(path: Path) -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_id = {row["Record ID"]: row for row in rows}
    assert len(by_id) == len(rows), "a source row is listed twice"
    return by_id


@pytest.fixture
def registry(tmp_path: Path, server: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("registry_export.csv", "mapping.toml", "participants.csv"):
        shutil.copy(REGISTRY / name, tmp_path / name)
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    monkeypatch.setenv("CLINIKAPI_BASE_URL", server.base_url)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def first_run(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, str]]:
    code, _ = cli(
        ["run", "registry_export.csv", "--mapping", "mapping.toml", "--ledger", "rc.db",
         "--revoke-missing", "--revoke-after", "1"],
        capsys,
    )  # fmt: skip
    assert code == 1
    assert cli(["export", "--ledger", "rc.db", "--failed", "failed.csv"], capsys)[0] == 0
    return read_failed(Path("failed.csv"))


@pytest.mark.parametrize(
    ("record", "stage", "code", "message_starts"),
    [
        # only the #hipaa consent failed: the message says so
        ("REC-1005", "#hipaa: validate", "#hipaa: invalid_date", "#hipaa: dateTime (column"),
        # both consents failed: the row once, both named
        (
            "REC-1011",
            "#hipaa: validate; #research: validate",
            "#hipaa: unknown_patient; #research: unknown_patient",
            "#hipaa: patientId (column",
        ),
        ("REC-1012", "#research: validate", "#research: invalid_date", "#research: dateTime"),
        (
            "REC-1013",
            "#hipaa: validate; #research: validate",
            "#hipaa: unmapped_value; #research: unmapped_value",
            "#hipaa: status (column",
        ),
    ],
)
def test_failed_csv_lists_a_row_once_naming_its_failed_consents(
    registry: Path,
    capsys: pytest.CaptureFixture[str],
    record: str,
    stage: str,
    code: str,
    message_starts: str,
) -> None:
    failed = first_run(capsys)
    assert sorted(failed) == ["REC-1005", "REC-1011", "REC-1012", "REC-1013"]
    row = failed[record]
    assert (row["error_stage"], row["error_code"]) == (stage, code)
    assert row["error_message"].startswith(message_starts)
    assert row["Participant ID"].startswith("RDR-")  # the row's own cells, once


def test_the_fixed_failed_csv_feeds_back_sending_only_what_failed(
    registry: Path, server: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    first_run(capsys)
    with (registry / "participants.csv").open("a", encoding="utf-8") as crosswalk:
        crosswalk.write("RDR-0999,pt_r0999\n")  # REC-1011's participant
    fixed = (
        Path("failed.csv")
        .read_text(encoding="utf-8-sig")
        .replace("2024-13-01", "12/01/2024")  # REC-1005's HIPAA date
        .replace("02/30/2024", "02/28/2024")  # REC-1012
        .replace("On hold", "Signed")  # REC-1013
    )
    Path("failed-fixed.csv").write_text(fixed, encoding="utf-8")
    code, out = cli(
        ["run", "failed-fixed.csv", "--mapping", "mapping.toml", "--ledger", "rc.db",
         "--revoke-missing", "--revoke-after", "1", "--summary-json", "s.json"],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    # 6 consents were invalid; REC-1005's #research was created the first time
    summary = json.loads(Path("s.json").read_text(encoding="utf-8"))
    counts = {k: summary.get(k, 0) for k in ("created", "unchanged", "invalid", "revoked")}
    assert counts == {"created": 6, "unchanged": 1, "invalid": 0, "revoked": 0}
    assert "duplicate_row" not in out
    assert server.stats()["duplicates"] == 0
    assert cli(["export", "--ledger", "rc.db", "--failed", "again.csv"], capsys)[0] == 0
    assert read_failed(Path("again.csv")) == {}
    code, out = cli(["status", "--ledger", "rc.db", "--json"], capsys)
    assert "invalid" not in json.loads(out)["rows_by_state"]


def test_validates_csv_report_lists_a_row_once_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "errors.csv"
    code, _ = cli(
        ["validate", str(REGISTRY / "registry_export.csv"), "--mapping",
         str(REGISTRY / "mapping.toml"), "--report", str(report), "-q"],
        capsys,
    )  # fmt: skip
    assert code == 1
    rows = read_failed(report)
    assert sorted(rows) == ["REC-1005", "REC-1011", "REC-1012", "REC-1013"]
    assert rows["REC-1011"]["error_code"] == "#hipaa: unknown_patient; #research: unknown_patient"
    assert rows["REC-1005"]["error_message"].startswith("#hipaa: dateTime (column")


def test_the_correction_file_notice_is_said_once(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first_run(capsys)
    with pytest.raises(SystemExit):
        main(["run", "failed.csv", "--mapping", "mapping.toml", "--ledger", "rc.db",
              "--revoke-missing", "--revoke-after", "1"])  # fmt: skip
    out, err = capsys.readouterr()
    assert (out + err).count("is a correction file") == 1, out + err
    # the summary still says why nothing was revoked
    assert "     none revoked: a correction file" in out.splitlines()
