"""Issue 20, points 1 and 2: a row keeps its identity when only the mapping changed, and
naive date-times are read only in a zone the mapping states."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from importer.commands._verify import VerifyConfig, verify
from importer.intake._mapping import load_mapping, open_tables
from importer.intake._normalize import Normalizer
from importer.ledger._ledger import Ledger
from importer.reports._suspects import suspicion
from importer.sandbox import SandboxConfig, running_sandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, run

HEAD = "Patient,Scope,Category,Status,Signed\n"
ROWS = [
    ("L1", "treatment", "treatment-consent", "Signed", "03/04/2024 09:30"),
    ("L2", "research", "research-participation", "Signed", "03/05/2024 10:00"),
    ("L3", "treatment", "treatment-consent", "Signed", "03/06/2024 11:15"),
]
CROSSWALK = "legacy,patientId\nL1,pt_1\nL2,pt_2\nL3,pt_3\n"


def mapping(zone: str = "UTC", formats: str = "%m/%d/%Y %H:%M", status: str = "active") -> str:
    return (
        f'[source]\ntimezone = "{zone}"\ndate_formats = ["{formats}"]\n'
        '[columns]\npatientId = "Patient"\nscope = "Scope"\ncategory = "Category"\n'
        'status = "Status"\ndateTime = "Signed"\n'
        f'[values.status]\n"Signed" = "{status}"\n'
        '[patients]\ncrosswalk = "xwalk.csv"\n'
    )


pytestmark = pytest.mark.usefixtures("instant_backoff")


@pytest.fixture
def sandbox_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[object]:
    monkeypatch.chdir(tmp_path)
    with running_sandbox(SandboxConfig()) as sandbox:
        monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
        monkeypatch.setenv("CLINIKAPI_BASE_URL", sandbox.base_url)
        yield sandbox


@pytest.fixture
def export(tmp_path: Path) -> Path:
    source = tmp_path / "in.csv"
    source.write_text(HEAD + "".join(",".join(r) + "\n" for r in ROWS), encoding="utf-8")
    (tmp_path / "xwalk.csv").write_text(CROSSWALK, encoding="utf-8")
    return source


def live_per_patient(sandbox: object) -> Counter[str]:
    consents = sandbox.consents()  # type: ignore[attr-defined]
    return Counter(c["patientId"] for c in consents if c["status"] != "inactive")


# (the fix, then what it changes: updated, refused as immutable, what changed)
FIXES = [
    ({"zone": "America/Chicago"}, (0, 3), "mapping"),  # dateTime moves: not patchable
    ({"formats": "%d/%m/%Y %H:%M"}, (0, 3), "mapping"),  # day and month were swapped
    ({"status": "draft"}, (3, 0), "mapping"),  # a value map: status is PATCHed
    ("crosswalk", (0, 1), "crosswalk"),  # L1 was the wrong patient: patientId changes
]


@pytest.mark.parametrize(("fix", "changes", "what"), FIXES)
def test_a_mapping_fix_creates_no_second_consent(
    tmp_path: Path,
    export: Path,
    fix: dict[str, str] | str,
    changes: tuple[int, int],
    what: str,
) -> None:
    map_path = tmp_path / "map.toml"
    map_path.write_text(mapping(), encoding="utf-8")
    ledger = tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        first = run(export, sandbox.base_url, ledger, mapping=map_path)
        assert (first.stats.created, first.exit_code, first.stats.mapping_changed) == (3, 0, "")
        if isinstance(fix, dict):
            map_path.write_text(mapping(**fix), encoding="utf-8")
        else:
            (tmp_path / "xwalk.csv").write_text(CROSSWALK.replace("L1,pt_1", "L1,pt_9"))
        posts = sandbox.stats()["creates"]
        again = run(export, sandbox.base_url, ledger, mapping=map_path)
        stats = again.stats
        refused = stats.by_error.get("immutable_change", 0)
        assert (stats.created, stats.updated, refused) == (0, *changes)
        assert stats.mapping_changed == what
        assert sandbox.stats()["creates"] == posts  # 0 POST
        assert set(live_per_patient(sandbox).values()) == {1}
        assert again.exit_code == (1 if refused else 0)
        if refused:  # --on-immutable-change recreate: the old consent retired
            last = run(
                export, sandbox.base_url, ledger, mapping=map_path, on_immutable_change="recreate"
            )
            assert (last.stats.created, last.stats.updated, last.exit_code) == (0, refused, 0)
            live = live_per_patient(sandbox)
            assert set(live.values()) == {1}
            assert sum(live.values()) == 3
            assert sandbox.stats()["duplicates"] == 0


def test_the_terminal_says_the_mapping_changed_and_what_it_changed(
    tmp_path: Path,
    export: Path,
    capsys: pytest.CaptureFixture[str],
    sandbox_env: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "map.toml").write_text(mapping(), encoding="utf-8")
    args = ["run", "in.csv", "--mapping", "map.toml", "--ledger", "l.db"]
    assert run_cli(args, capsys)[0] == 0
    (tmp_path / "map.toml").write_text(mapping(status="draft"), encoding="utf-8")
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "The mapping changed since the last run: this run changed 3 rows (3 updated" in out
    code, out, _ = run_cli(args, capsys)
    assert "changed since the last run" not in out


# --- time zones -------------------------------------------------------------------------

NAIVE = "patientId,scope,category,dateTime\npt_1,treatment,c,2024-03-01T00:00:00Z\n"
NAIVE += "pt_2,treatment,c,2024-03-01 09:30\n"


@pytest.mark.parametrize("command", ["validate", "preview", "run"])
@pytest.mark.parametrize(
    ("source_table", "said"),
    [
        ("", "and the mapping states no time zone"),
        ('[source]\ntimezone = "TODO"\n', 'and the mapping\'s [source] timezone is still "TODO"'),
    ],
)
def test_naive_times_without_a_zone_stop_with_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sandbox_env: object,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    source_table: str,
    said: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text(NAIVE, encoding="utf-8")
    (tmp_path / "map.toml").write_text(source_table, encoding="utf-8")
    extra = ["--ledger", "l.db"] if command == "run" else []
    code, out, err = run_cli([command, "in.csv", "--mapping", "map.toml", *extra], capsys)
    assert code == 2
    assert (
        "in.csv: dateTime holds date-times without a UTC offset (row 3, a cell shaped "
        f"'9999-99-99 99:99') {said}; set [source] timezone to the zone they were written in, "
        'e.g. timezone = "America/Chicago" (timezone = "UTC" if they are UTC)'
    ) in err
    assert "09:30" not in out + err  # the cell's shape, never its value


@pytest.mark.parametrize("command", ["validate", "run"])
def test_dates_alone_under_a_todo_zone_are_called_dates(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sandbox_env: object,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """`timezone = "TODO"` stops a date alone too; the message says dates, not date-times."""
    monkeypatch.chdir(tmp_path)
    text = "patientId,scope,category,dateTime\npt_1,treatment,c,2024-03-01\n"
    (tmp_path / "in.csv").write_text(text, encoding="utf-8")
    (tmp_path / "map.toml").write_text('[source]\ntimezone = "TODO"\n', encoding="utf-8")
    extra = ["--ledger", "l.db"] if command == "run" else []
    code, out, err = run_cli([command, "in.csv", "--mapping", "map.toml", *extra], capsys)
    assert code == 2
    assert (
        "in.csv: dateTime holds dates without a time of day (row 2, a cell shaped "
        "'9999-99-99') and the mapping's [source] timezone is still \"TODO\"; set [source] "
        "timezone to the zone they were written in (a date alone is read as its day there), "
        'e.g. timezone = "America/Chicago"'
    ) in err
    assert "date-times" not in err
    assert "2024-03-01" not in out + err


@pytest.mark.parametrize(
    ("zone", "expected"),
    [("UTC", "2024-03-01T09:30:00Z"), ("America/Chicago", "2024-03-01T09:30:00-06:00")],
)
def test_a_stated_zone_reads_naive_times(tmp_path: Path, zone: str, expected: str) -> None:
    rows = rows_of(tmp_path, NAIVE, f'[source]\ntimezone = "{zone}"\n')
    assert rows[1].body()["dateTime"] == expected


def rows_of(tmp_path: Path, text: str, mapping_text: str) -> list:  # type: ignore[type-arg]
    (tmp_path / "in.csv").write_text(text, encoding="utf-8")
    (tmp_path / "m.toml").write_text(mapping_text, encoding="utf-8")
    the_mapping = load_mapping(tmp_path / "m.toml")
    (table,) = open_tables([tmp_path / "in.csv"], the_mapping)
    return list(Normalizer(the_mapping).rows(table))


END = "patientId,scope,category,provisionStart,provisionEnd\n"


@pytest.mark.parametrize(
    ("cell", "zone", "expected"),
    [
        ("2029-12-31", "America/Chicago", "2029-12-31T23:59:59.999000-06:00"),
        ("2029-12-31", None, "2029-12-31T23:59:59.999000Z"),  # a date alone needs no zone
        ("2029-12-31T12:00:00Z", None, "2029-12-31T12:00:00Z"),  # a time: as given
    ],
)
def test_a_date_only_end_is_the_end_of_that_day(
    tmp_path: Path, cell: str, zone: str | None, expected: str
) -> None:
    text = f"{END}pt_1,treatment,c,2024-01-01,{cell}\n"
    stated = f'[source]\ntimezone = "{zone}"\n' if zone else ""
    [row] = rows_of(tmp_path, text, stated)
    assert row.body()["provision"]["period"]["end"] == expected
    assert row.body()["provision"]["period"]["start"].startswith("2024-01-01T00:00:00")
    # version 2: provision.dataPeriod.end alike
    v2 = stated + '[fields]\n"provision.dataPeriod.end" = "provisionEnd"\n'
    [row] = rows_of(
        tmp_path, f"patientId,scope,category,provisionEnd\npt_1,treatment,c,{cell}\n", v2
    )
    assert row.body()["provision"]["dataPeriod"]["end"] == expected


def test_a_ledger_that_read_naive_times_as_utc_keeps_doing_so_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(NAIVE, encoding="utf-8")
    ledger = tmp_path / "l.db"
    utc = tmp_path / "utc.toml"
    utc.write_text('[source]\ntimezone = "UTC"\n', encoding="utf-8")
    with running_sandbox(SandboxConfig()) as sandbox:
        assert run(source, sandbox.base_url, ledger, mapping=utc).stats.created == 2
        with sqlite3.connect(ledger) as db:  # as an upgrade finds a ledger of before
            db.execute("UPDATE meta SET value = 'utc' WHERE key = 'naive_times'")
        again = run(source, sandbox.base_url, ledger)  # no zone stated
        assert (again.stats.created, again.stats.unchanged, again.exit_code) == (0, 2, 0)
    said = [r.getMessage() for r in caplog.records if "read as UTC" in r.getMessage()]
    assert len(said) == 1


# --- verify: suspect duplicates ---------------------------------------------------------


def consent(when: str, **extra: Any) -> dict[str, Any]:
    body = {"id": "c", "patientId": "pt_1", "scope": "treatment", "category": ["a", "b"]}
    return {**body, "status": "active", "dateTime": when, **extra}


A = "2024-03-01T09:30:00Z"


@pytest.mark.parametrize(
    ("other", "suspect"),
    [
        (consent("2024-03-01T15:30:00Z"), "6 h apart"),  # 09:30 read in UTC and in Chicago
        (consent("2024-03-01T09:30:00-06:00"), "6 h apart"),  # the same, as written
        (consent("2024-03-01T23:30:00Z"), "14 h apart"),
        (consent("2024-03-01T00:00:00Z"), "on the same day"),  # a date alone, read twice
        (consent("2024-03-01T10:00:00Z"), "on the same day"),  # not a whole hour away
        (consent("2024-03-02T00:30:00Z"), None),  # 15 h: no zone is that far; another day
        (consent("2024-03-02T09:30:00Z"), None),  # 24 h: another day
        (consent(A), None),  # the very same instant is a `duplicate`, not a suspect
        (consent("2024-03-01T15:30:00Z", status="inactive"), None),  # retired: not live
        (consent("2024-03-01T15:30:00Z", scope="research"), None),
        (consent("2024-03-01T15:30:00Z", category=["b", "a"]), "6 h apart"),  # a set
        (consent("2024-03-01T15:30:00Z", category=["a"]), None),
        (consent("2024-03-01T15:30:00Z", patientId="pt_2"), None),
    ],
)
def test_what_makes_two_consents_suspect_duplicates(
    other: dict[str, Any], suspect: str | None
) -> None:
    why = suspicion(consent(A), other)
    assert (why is None) if suspect is None else (why is not None and suspect in why)


def test_verify_reports_a_suspect_duplicate_left_by_a_zone_read_two_ways(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(NAIVE, encoding="utf-8")
    utc, chicago = tmp_path / "utc.toml", tmp_path / "chicago.toml"
    utc.write_text('[source]\ntimezone = "UTC"\n', encoding="utf-8")
    chicago.write_text('[source]\ntimezone = "America/Chicago"\n', encoding="utf-8")
    with running_sandbox(SandboxConfig()) as sandbox:
        # Two ledgers (or natural keys of before): row 3's 09:30 made twice, 6 h apart.
        run(source, sandbox.base_url, tmp_path / "a.db", mapping=utc)
        run(source, sandbox.base_url, tmp_path / "b.db", mapping=chicago)
        result = verify(VerifyConfig(tmp_path / "b.db", base_url=sandbox.base_url, api_key=KEY))
    found = [(f.kind, f.source_row) for f in result.findings]
    # Row 2 states its offset: both ledgers made the same instant, a `duplicate`.
    assert found == [("duplicate", 2), ("suspect_duplicate", 3)]
    [suspect] = [f for f in result.findings if f.kind == "suspect_duplicate"]
    assert "6 h apart" in suspect.detail
    assert result.counts()["suspect_duplicate"] == 1


V2_HEAD = "Patient,HIPAA Date,Research Date,Research Time\n"
V2_ROWS = "pt_1,2024-03-01 09:00,03/02/2024,10:30\npt_2,2024-03-03 08:00,,\n"


def v2_mapping(zone: str) -> str:
    return f"""
[source]
timezone = "{zone}"
[fields]
patientId = "Patient"
[[consents]]
key = "hipaa"
when = {{ column = "HIPAA Date", not_empty = true }}
[consents.fields]
scope = {{ value = "patient-privacy" }}
category = {{ value = "hipaa-notice" }}
dateTime = "HIPAA Date"
[[consents]]
key = "research"
when = {{ column = "Research Date", not_empty = true }}
[consents.fields]
scope = {{ value = "research" }}
category = {{ value = "research-participation" }}
dateTime = {{ columns = ["Research Date", "Research Time"], formats = ["%m/%d/%Y %H:%M"] }}
"""


def test_a_zone_fix_under_a_version_2_mapping_keeps_each_consents_identity(
    tmp_path: Path,
) -> None:
    source = tmp_path / "v2.csv"
    source.write_text(V2_HEAD + V2_ROWS, encoding="utf-8")
    map_path = tmp_path / "v2.toml"
    map_path.write_text(v2_mapping("UTC"), encoding="utf-8")
    ledger = tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        assert run(source, sandbox.base_url, ledger, mapping=map_path).stats.created == 3
        map_path.write_text(v2_mapping("America/Chicago"), encoding="utf-8")
        again = run(source, sandbox.base_url, ledger, mapping=map_path)
        assert (again.stats.created, again.stats.by_error.get("immutable_change")) == (0, 3)
        last = run(
            source, sandbox.base_url, ledger, mapping=map_path, on_immutable_change="recreate"
        )
        assert (last.stats.created, last.stats.updated, last.exit_code) == (0, 3, 0)
        live = [c for c in sandbox.consents() if c["status"] != "inactive"]
        assert sorted((c["patientId"], c["dateTime"]) for c in live) == [
            ("pt_1", "2024-03-01T09:00:00-06:00"),
            ("pt_1", "2024-03-02T10:30:00-06:00"),
            ("pt_2", "2024-03-03T08:00:00-06:00"),
        ]


# --- what a ledger records, and what an older one keeps ---------------------------------

LEGACY = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("ledger", "scheme", "naive"),
    [
        (None, "source", "stated"),  # a new ledger: identity cells; zones must be stated
        ("schema2-ledger.db", "natural", "utc"),  # made with natural keys, naive as UTC
        ("legacy_ledger/legacy.db", "content", "utc"),  # made before natural keys
    ],
)
def test_a_ledger_records_its_rules_once_and_keeps_them(
    tmp_path: Path, ledger: str | None, scheme: str, naive: str
) -> None:
    path = tmp_path / "l.db"
    if ledger is not None:
        shutil.copy(LEGACY / ledger, path)
    for _ in range(2):  # the second opening reads what the first recorded
        opened = Ledger(path)
        assert (opened.key_scheme, opened.naive_times) == (scheme, naive)
        opened.close()


def test_a_natural_key_ledger_says_so_on_every_run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sandbox_env: object,
) -> None:
    (tmp_path / "in.csv").write_text(NAIVE.replace(" 09:30", "T09:30Z"), encoding="utf-8")
    args = ["run", "in.csv", "--ledger", "l.db", "--summary-json", "s.json"]
    with closing(Ledger(tmp_path / "l.db")):
        pass
    with sqlite3.connect(tmp_path / "l.db") as db:  # as a ledger of issues 10 to 19
        db.execute("UPDATE meta SET value = 'natural' WHERE key = 'key_scheme'")
    for _ in range(2):
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        assert "this ledger was made with natural keys" in out
        assert json.loads((tmp_path / "s.json").read_text())["source_key"] == "natural"


def test_a_mapping_fix_under_natural_keys_is_said_to_risk_second_consents(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sandbox_env: object,
) -> None:
    (tmp_path / "in.csv").write_text(NAIVE, encoding="utf-8")
    with closing(Ledger(tmp_path / "l.db")):
        pass
    with sqlite3.connect(tmp_path / "l.db") as db:  # as a ledger of issues 10 to 19
        db.execute("UPDATE meta SET value = 'natural' WHERE key = 'key_scheme'")
    args = ["run", "in.csv", "--mapping", "m.toml", "--ledger", "l.db"]
    (tmp_path / "m.toml").write_text('[source]\ntimezone = "UTC"\n', encoding="utf-8")
    assert run_cli(args, capsys)[0] == 0
    (tmp_path / "m.toml").write_text('[source]\ntimezone = "America/Chicago"\n')
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert (
        "this run changed 0 rows (0 updated, 0 refused as immutable changes) and created 1" in out
    )
    assert "some of the 1 created may be second consents of earlier rows" in out


def test_the_zone_fix_after_legacy_utc_reads_creates_nothing(tmp_path: Path, export: Path) -> None:
    ledger = tmp_path / "l.db"
    with closing(Ledger(ledger)):
        pass
    with sqlite3.connect(ledger) as db:  # naive times read as UTC, no zone stated: as before
        db.execute("UPDATE meta SET value = 'utc' WHERE key = 'naive_times'")
    map_path = tmp_path / "map.toml"
    map_path.write_text(mapping().replace('timezone = "UTC"\n', ""), encoding="utf-8")
    with running_sandbox(SandboxConfig()) as sandbox:
        first = run(export, sandbox.base_url, ledger, mapping=map_path)
        assert first.stats.created == 3
        assert {c["dateTime"] for c in sandbox.consents()} >= {"2024-03-04T09:30:00Z"}
        map_path.write_text(mapping(zone="America/Chicago"), encoding="utf-8")
        again = run(export, sandbox.base_url, ledger, mapping=map_path)
        assert (again.stats.created, again.stats.by_error.get("immutable_change")) == (0, 3)
        assert sandbox.stats()["creates"] == 3  # 0 POST
        last = run(
            export, sandbox.base_url, ledger, mapping=map_path, on_immutable_change="recreate"
        )
        assert (last.stats.created, last.stats.updated) == (0, 3)
        live = [c for c in sandbox.consents() if c["status"] != "inactive"]
        assert sorted(c["dateTime"] for c in live) == [
            "2024-03-04T09:30:00-06:00",
            "2024-03-05T10:00:00-06:00",
            "2024-03-06T11:15:00-06:00",
        ]
        assert set(live_per_patient(sandbox).values()) == {1}


# --- the columns feeding an identity field (review finding 5) ----------------------------

SPLIT_HEAD = "Patient,Scope,Category,Status,SDate,STime\n"
SPLIT_ROWS = "pt_1,treatment,c,active,03/04/2024,09:30\npt_2,research,c,active,03/05/2024,10:00\n"
SPLIT_ROWS += "pt_3,treatment,c,active,03/06/2024,11:15\n"
SPLIT_COLUMNS = '[columns]\npatientId = "Patient"\nscope = "Scope"\ncategory = "Category"\n'
SPLIT_COLUMNS += 'status = "Status"\n'
DATE_ONLY = '[source]\ntimezone = "UTC"\ndate_formats = ["%m/%d/%Y"]\n' + SPLIT_COLUMNS
DATE_ONLY += 'dateTime = "SDate"\n'
DATE_AND_TIME = '[source]\ntimezone = "UTC"\n' + SPLIT_COLUMNS + "[fields]\n"
DATE_AND_TIME += '"dateTime" = { columns = ["SDate", "STime"], join = " ", '
DATE_AND_TIME += 'formats = ["%m/%d/%Y %H:%M"] }\n'


# (the way on after the refusal; then that run's exit code, its creates, live consents
# per patient): the refused run creates nothing; reverting the mapping, or accepting
# the new columns, are the ways on.
@pytest.mark.parametrize(
    ("way", "code", "created", "live"),
    [
        ("again", 2, 0, {1}),  # the refusal is no baseline: the same rerun stops again
        ("skip", 2, 0, {1}),  # --skip-existing is no way on: its lookup matches instants
        ("revert", 0, 0, {1}),
        ("accept", 0, 3, {2}),  # told: the new consents are made beside the old ones
    ],
)
def test_a_change_of_the_columns_feeding_an_identity_field_stops_before_creating(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sandbox_env: object,
    way: str,
    code: int,
    created: int,
    live: set[int],
) -> None:
    (tmp_path / "in.csv").write_text(SPLIT_HEAD + SPLIT_ROWS, encoding="utf-8")
    map_path = tmp_path / "map.toml"
    map_path.write_text(DATE_ONLY, encoding="utf-8")
    args = ["run", "in.csv", "--mapping", "map.toml", "--ledger", "l.db"]
    args += ["--summary-json", "s.json"]
    assert run_cli(args, capsys)[0] == 0
    map_path.write_text(DATE_AND_TIME, encoding="utf-8")
    refused, out, err = run_cli(args, capsys)
    assert refused == 2, err
    assert "the columns feeding dateTime changed since run 1" in err
    assert "'SDate' then, 'SDate' + 'STime' now" in err
    assert "--identity-changed accept" in err
    for phi in ("pt_1", "03/04/2024", "09:30"):
        assert phi not in out + err
    assert sum(live_per_patient(sandbox_env).values()) == 3  # nothing created
    if way == "revert":
        map_path.write_text(DATE_ONLY, encoding="utf-8")
    extra = {"accept": ["--identity-changed", "accept"], "skip": ["--skip-existing"]}
    extra_args = extra.get(way, [])
    again, out, err = run_cli([*args, *extra_args], capsys)
    summary = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert (again, summary["created"]) == (code, created), err
    assert set(live_per_patient(sandbox_env).values()) == live
    if way == "revert":  # compared with run 1, not with the refused run 2 (review, low)
        assert summary.get("mapping_changed") is None
    if way == "accept":  # the accepted columns are the next run's baseline
        assert run_cli(args, capsys)[0] == 0


def test_the_mapping_is_compared_with_the_last_run_not_undone(
    tmp_path: Path, export: Path, capsys: pytest.CaptureFixture[str], sandbox_env: object
) -> None:
    (tmp_path / "map.toml").write_text(mapping(), encoding="utf-8")
    args = ["run", "in.csv", "--mapping", "map.toml", "--ledger", "l.db"]
    args += ["--summary-json", "s.json"]
    assert run_cli(args, capsys)[0] == 0
    (tmp_path / "map.toml").write_text(mapping(status="draft"), encoding="utf-8")
    assert run_cli(args, capsys)[0] == 0  # run 2: 3 rows patched to draft
    assert run_cli(["undo", "--ledger", "l.db", "--run", "2"], capsys)[0] == 0
    (tmp_path / "map.toml").write_text(mapping(), encoding="utf-8")
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert (summary["updated"], summary.get("mapping_changed")) == (0, None)
    assert "changed since the last run" not in out
