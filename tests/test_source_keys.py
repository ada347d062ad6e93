"""Without a key column, a row is keyed by the source cells feeding its consent's identity
(issue 20; natural identity before, issue 10, item 2): an edit of a patchable field is a
PATCH, never a second consent. Ledgers made before keep their natural or content-hash
keys."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from importer._keys import natural_key, source_key
from importer.intake._mapping import load_mapping, open_tables
from importer.intake._normalize import Normalizer
from importer.sandbox import SandboxConfig, running_sandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, run, write_csv

LEGACY = Path(__file__).parent / "data" / "legacy_ledger"


pytestmark = pytest.mark.usefixtures("instant_backoff")


def unkeyed_rows(n: int) -> list[dict[str, str]]:
    rows = list(consent_rows(n, category="treatment-consent;hipaa-notice"))
    for row in rows:
        del row["sourceKey"]
    return rows


# (the edit to row 2, then created, updated, unchanged, refused as an immutable change on
# the rerun)
EDITS = [
    ({"status": "inactive"}, (0, 1, 4, 0)),
    ({"policyUri": "https://clinic.example/policy/v2"}, (0, 1, 4, 0)),
    # The same set of codes is the same row (its key), but the body's list changed order,
    # which the API cannot patch: an immutable change (recreated on request), no 2nd consent.
    ({"category": "hipaa-notice;treatment-consent"}, (0, 0, 4, 1)),
    ({"category": "hipaa-notice|treatment-consent|hipaa-notice"}, (0, 0, 4, 1)),
]


@pytest.mark.parametrize(("edit", "counts"), EDITS)
def test_an_edit_without_a_key_column_is_a_patch_not_a_second_consent(
    tmp_path: Path, edit: dict[str, str], counts: tuple[int, int, int, int]
) -> None:
    rows = unkeyed_rows(5)
    source = write_csv(tmp_path / "in.csv", rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        assert run(source, sandbox.base_url, tmp_path / "l.db").stats.created == 5
        rows[2].update(edit)
        write_csv(source, rows)
        stats = run(source, sandbox.base_url, tmp_path / "l.db").stats
        immutable = stats.by_error.get("immutable_change", 0)
        assert (stats.created, stats.updated, stats.unchanged, immutable) == counts
        assert stats.missing_from_source == 0
        assert stats.source_key == "source cells"
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


@pytest.mark.parametrize(
    ("keyed", "said", "summary"),
    [
        (False, "as read before mapping", "source cells"),
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
    """tests/data/legacy_ledger/legacy.db was made by consent-import 15ffa94 (see its README)."""
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


NATURAL_DUPLICATE = (
    "patientId/scope/category/dateTime: same patient, scope, category and date-time cells as "
    "row 2 (the row's identity without a key column); give the file a key column ([source] "
    "key) to import both (duplicate_row)"
)


# (the file's header and second row; then the duplicate's field and message)
@pytest.mark.parametrize(
    ("header", "second", "field", "message"),
    [
        (
            "patientId,scope,category,status,dateTime,policyUri",
            "pt_1,treatment,b;a,active,2024-01-01T11:00:00+01:00,https://p/v2",
            "patientId/scope/category/dateTime",
            NATURAL_DUPLICATE,
        ),
        (  # an invalid row keeps its natural key (A5), so it is found too
            "patientId,scope,category,status,dateTime,policyUri",
            "pt_1,treatment,a;b,actve,2024-01-01T10:00:00Z,https://p/v2",
            "patientId/scope/category/dateTime",
            NATURAL_DUPLICATE,
        ),
        (
            "sourceKey,patientId,scope,category,status,dateTime,policyUri",
            "K1,pt_2,treatment,a,active,2024-01-01T10:00:00Z,https://p/v2",
            "sourceKey",
            "sourceKey: same source key as row 2; a row is imported once (duplicate_row)",
        ),
    ],
)
def test_a_natural_key_collision_names_the_natural_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    header: str,
    second: str,
    field: str,
    message: str,
) -> None:
    first = "pt_1,treatment,a;b,active,2024-01-01T10:00:00Z,https://p/v1"
    if header.startswith("sourceKey"):
        first = "K1," + first
    source = tmp_path / "nk.csv"
    source.write_text(f"{header}\n{first}\n{second}\n", encoding="utf-8")
    code, out, _ = run_cli(["validate", str(source), "--report", str(tmp_path / "r.json")], capsys)
    errors = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["errors"]
    duplicates = [e for e in errors if e["code"] == "duplicate_row"]
    assert [(e["row"], e["field"], e["message"]) for e in duplicates] == [(3, field, message)]
    assert f"nk.csv:3  {message}" in out
    assert code == 1


@pytest.mark.parametrize("natural", [False, True])
@pytest.mark.parametrize(
    "edit",
    [{"status": "actve"}, {"status": "actve", "category": "b|a|b"}, {"verified": "maybe"}],
)
def test_a_run_and_validate_key_an_invalid_row_by_its_natural_identity(
    tmp_path: Path, edit: dict[str, str], natural: bool
) -> None:
    row = {"patientId": "pt_1", "scope": "treatment", "category": "a;b", "verified": "yes"}
    row |= {"status": "active", "dateTime": "2024-01-01T10:00:00Z"}
    source = write_csv(tmp_path / "in.csv", [row, {**row, "patientId": "pt_2", **edit}])
    mapping = load_mapping(None)
    (table,) = open_tables([source], mapping)
    first = Normalizer(mapping)
    first.natural_keys = natural
    rows = list(first.rows(table))
    assert [r.valid for r in rows] == [True, False]
    when = datetime(2024, 1, 1, 10, tzinfo=UTC)
    if natural:  # a ledger made with natural keys keeps them
        assert rows[1].source_key == natural_key("pt_2", "treatment", ["a", "b"], when)
    else:  # the cells as read; the categories a set, the instant stated
        expected = source_key("pt_2", "treatment", "a;b", "2024-01-01T10:00:00+00:00")
        assert rows[1].source_key == expected
    (table,) = open_tables([source], mapping)
    normalizer = Normalizer(mapping)
    normalizer.natural_keys = natural
    checked = [r for batch in normalizer.check(table) for r in batch.invalid]
    assert [(r.row, r.source_key) for r in checked] == [(3, rows[1].source_key)]
