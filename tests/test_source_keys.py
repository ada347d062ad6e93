"""Without a key column, a row is keyed by its consent's natural identity (issue 10,
item 2): an edit of a patchable field is a PATCH, never a second consent. Ledgers made
before keep their content-hash keys."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from importer import retry
from importer.cli import main
from importer.sandbox import SandboxConfig, running_sandbox
from tests.engine_helpers import KEY, consent_rows, run, write_csv

LEGACY = Path(__file__).parent / "data" / "legacy_ledger"


@pytest.fixture(autouse=True)
def _instant_backoff() -> Iterator[None]:
    with retry.no_waits():
        yield


def unkeyed_rows(n: int) -> list[dict[str, str]]:
    rows = list(consent_rows(n, category="treatment-consent;hipaa-notice"))
    for row in rows:
        del row["sourceKey"]
    return rows


# (the edit to row 2, then created, updated, unchanged on the rerun)
EDITS = [
    ({"status": "inactive"}, (0, 1, 4)),
    ({"policyUri": "https://clinic.example/policy/v2"}, (0, 1, 4)),
    ({"category": "hipaa-notice;treatment-consent"}, (0, 0, 5)),  # a set: order is no edit
    ({"category": "hipaa-notice|treatment-consent|hipaa-notice"}, (0, 0, 5)),
]


@pytest.mark.parametrize(("edit", "counts"), EDITS)
def test_an_edit_without_a_key_column_is_a_patch_not_a_second_consent(
    tmp_path: Path, edit: dict[str, str], counts: tuple[int, int, int]
) -> None:
    rows = unkeyed_rows(5)
    source = write_csv(tmp_path / "in.csv", rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        assert run(source, sandbox.base_url, tmp_path / "l.db").stats.created == 5
        rows[2].update(edit)
        write_csv(source, rows)
        stats = run(source, sandbox.base_url, tmp_path / "l.db").stats
        assert (stats.created, stats.updated, stats.unchanged) == counts
        assert stats.missing_from_source == 0
        assert stats.source_key == "natural"
        assert sandbox.stats()["creates"] == 5
        assert sandbox.stats()["duplicates"] == 0


def test_the_same_instant_in_another_zone_is_the_same_consent(tmp_path: Path) -> None:
    rows = unkeyed_rows(3)
    rows[1]["dateTime"] = "2024-02-02T01:01:00Z"
    source = write_csv(tmp_path / "in.csv", rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, tmp_path / "l.db")
        rows[1]["dateTime"] = "2024-02-02T02:01:00+01:00"
        write_csv(source, rows)
        stats = run(source, sandbox.base_url, tmp_path / "l.db").stats
        assert (stats.created, stats.missing_from_source) == (0, 0)
        assert sandbox.stats()["creates"] == 3


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0), out, err


@pytest.mark.parametrize(
    ("keyed", "said", "summary"),
    [
        (False, "natural identity", "natural"),
        (True, None, "column"),
    ],
)
def test_the_terminal_and_the_summary_say_which_key_is_in_use(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    keyed: bool,
    said: str | None,
    summary: str,
) -> None:
    rows = list(consent_rows(3)) if keyed else unkeyed_rows(3)
    write_csv(tmp_path / "in.csv", rows)
    monkeypatch.chdir(tmp_path)
    with running_sandbox(SandboxConfig()) as sandbox:
        monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
        monkeypatch.setenv("CLINIKAPI_BASE_URL", sandbox.base_url)
        code, out, err = run_cli(
            ["run", "in.csv", "--ledger", "l.db", "--summary-json", "s.json"], capsys
        )
    assert code == 0, err
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["source_key"] == summary
    if said:
        assert said in out
    else:
        assert "Source key" not in out


def test_a_ledger_made_before_natural_keys_still_works(tmp_path: Path) -> None:
    """tests/data/legacy_ledger/legacy.db was made by consent-import 15ffa94 (make.py)."""
    ledger = shutil.copy(LEGACY / "legacy.db", tmp_path / "legacy.db")
    source = shutil.copy(LEGACY / "legacy.csv", tmp_path / "legacy.csv")
    with running_sandbox(SandboxConfig()) as sandbox:
        with sqlite3.connect(ledger) as db:  # the sandbox of the day had another port
            db.execute("UPDATE meta SET value = ? WHERE key = 'base_url'", (sandbox.base_url,))
        result = run(Path(source), sandbox.base_url, Path(ledger))
        assert sandbox.stats()["requests"] == 0  # nothing sent: every row is known
        stats = result.stats
        assert (stats.unchanged, stats.created, stats.missing_from_source) == (6, 0, 0)
        assert stats.source_key == "content hash"
    with sqlite3.connect(ledger) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'key_scheme'").fetchone() == (
            "content",
        )


@pytest.mark.parametrize(
    ("second", "invalid"),
    [
        ("pt_1,treatment,a;b,inactive,2024-01-01T10:00:00Z", 1),  # same consent, new status
        ("pt_1,treatment,b;a,active,2024-01-01T10:00:00Z", 1),  # same set of categories
        ("pt_1,treatment,a,active,2024-01-01T10:00:00Z", 0),  # another set: another consent
        ("pt_1,treatment,a;b,active,2024-01-01T10:00:01Z", 0),  # another instant
    ],
)
def test_validate_finds_two_rows_of_one_consent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], second: str, invalid: int
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        "patientId,scope,category,status,dateTime\n"
        f"pt_1,treatment,a;b,active,2024-01-01T10:00:00Z\n{second}\n",
        encoding="utf-8",
    )
    code, _, _ = run_cli(["validate", str(source), "--report", str(tmp_path / "r.json")], capsys)
    errors = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["errors"]
    assert [e["code"] for e in errors] == ["duplicate_row"] * invalid
    assert code == invalid
