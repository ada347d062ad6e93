"""Mapping version 2: a spec that chooses among sources by condition (`cases`), first match
wins; per row, column-wise (validate's proof) and over the sandbox."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from importer._errors import ConfigError
from importer._rows import Row
from importer.commands._validate import validate_files
from importer.intake._mapping import load_mapping
from importer.intake._normalize import Normalizer
from importer.intake._reader import open_table
from importer.sandbox import RunningSandbox
from tests.engine_helpers import run

REDCAP = Path(__file__).parent / "data" / "redcap"
STATUS = """
status = { cases = [
  { when = { column = "Withdrawn", not_empty = true }, value = "inactive" },
  { column = "Consent", map = { "1" = "active", "0" = "rejected" } },
] }
"""
HEAD = """
[source]
key = ["Key"]
timezone = "UTC"
null_values = ["[not completed]"]
[columns]
patientId = "Patient"
[fields]
scope = { value = "research" }
category = { value = "research-participation" }
"""


def rows_of(tmp_path: Path, csv_text: str, mapping: str) -> list[Row]:
    source = tmp_path / "in.csv"
    source.write_text(csv_text, encoding="utf-8")
    path = tmp_path / "map.toml"
    path.write_text(mapping, encoding="utf-8")
    the_mapping = load_mapping(path)
    normalizer = Normalizer(the_mapping)
    return list(normalizer.rows(open_table(source, the_mapping.source)))


@pytest.mark.parametrize(
    ("withdrawn", "consent", "status"),
    [
        ("2024-05-01", "1", "inactive"),  # the first case holds: it wins over the second
        ("2024-05-01", "0", "inactive"),
        ("", "1", "active"),  # the default (no `when`) maps its column
        ("", "0", "rejected"),
        ("[not completed]", "1", "active"),  # a null value is empty: not_empty is false
        ("", "", None),  # the default's cell is empty: the field is left out
    ],
)
def test_first_case_that_holds_gives_the_value(
    tmp_path: Path, withdrawn: str, consent: str, status: str | None
) -> None:
    text = f"Key,Patient,Withdrawn,Consent\nK1,pt_1,{withdrawn},{consent}\n"
    [row] = rows_of(tmp_path, text, HEAD + STATUS)
    assert row.valid, [e.message for e in row.errors]
    assert row.body().get("status") == status


@pytest.mark.parametrize(
    ("spec", "cells", "expected"),
    [
        # no case holds and no default: the (optional) field is absent
        (
            'status = { cases = [ { when = { column = "W", not_empty = true }, '
            'value = "inactive" } ] }',
            ",x",
            {"status": None},
        ),
        # a later `when` holds when the earlier ones do not
        (
            'status = { cases = [ { when = { column = "W", in = ["y"] }, value = "inactive" },'
            ' { when = { column = "C", matches = "x+" }, value = "draft" } ] }',
            "n,xx",
            {"status": "draft"},
        ),
        # a case's map may name a [values.NAME] table
        (
            'status = { cases = [ { column = "C", map = "answers" } ] }\n'
            '[values.answers]\n"X" = "proposed"',
            ",x",
            {"status": "proposed"},
        ),
        # a template and a constant as cases of another path
        (
            '"sourceAttachment.url" = { cases = [ { when = { column = "W", not_empty = true },'
            ' template = "https://scans/{W}" }, { value = "https://scans/none" } ] }',
            "7,",
            {"sourceAttachment": {"url": "https://scans/7"}},
        ),
        # a date path: `formats` beside the cases, shared by them
        (
            'dateTime = { formats = ["%d.%m.%Y"], cases = [ { when = { column = "W", '
            'not_empty = true }, column = "W" }, { column = "C" } ] }',
            ",05.03.2024",
            {"dateTime": "2024-03-05T00:00:00Z"},
        ),
    ],
)
def test_case_forms(tmp_path: Path, spec: str, cells: str, expected: dict[str, Any]) -> None:
    fields, _, values = spec.partition("\n")
    text = f"Key,Patient,W,C\nK1,pt_1,{cells}\n"
    [row] = rows_of(tmp_path, text, f"{HEAD}{fields}\n{values}\n")
    assert row.valid, [e.message for e in row.errors]
    body = row.body()
    for name, value in expected.items():
        assert body.get(name) == value


def test_a_required_field_no_case_gives_is_a_row_error(tmp_path: Path) -> None:
    mapping = HEAD.replace(
        'scope = { value = "research" }',
        'scope = { cases = [ { when = { column = "Consent", in = ["1"] }, value = "research" } ] }',
    )
    text = "Key,Patient,Consent\nK1,pt_1,1\nK2,pt_2,0\n"
    given, missing = rows_of(tmp_path, text, mapping)
    assert given.valid
    assert [(e.field, e.code) for e in missing.errors] == [("scope", "missing_required")]
    assert missing.errors[0].message == (
        "scope (cases on column 'Consent'): is required (missing_required)"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "status = { cases = [] }",
            "fields.status.cases: must be a non-empty list of tables",
        ),
        (
            'status = { cases = [ { value = "active" }, { when = { column = "W", '
            'not_empty = true }, value = "inactive" } ] }',
            "status.cases[2]: comes after a case without `when` (the default), so it is never "
            "used; put the default last",
        ),
        (
            'dateTime = { cases = [ { column = "W", formats = ["%Y"] } ] }',
            "dateTime.cases[1].formats: not inside a case; put it beside cases = [...]",
        ),
        (
            'status = { cases = [ { when = { column = "W" }, value = "inactive" } ] }',
            "status.cases[1].when: needs exactly one of in = [...]",
        ),
        (
            'status = { cases = [ { when = { column = "W", not_empty = true } } ] }',
            "status.cases[1]: needs exactly one of column, columns, template, value",
        ),
        (
            'status = { cases = [ { column = "W" } ], column = "C" }',
            "unknown key 'column'",
        ),
        (
            'status = { cases = [ { column = "W", map = "nowhere" } ] }',
            "status.cases[1].map: no table [values.nowhere]",
        ),
        (
            'status = { cases = [ { column = "Nope" } ] }',
            "fields.status.cases[1]: column 'Nope' is not in",
        ),
    ],
)
def test_case_mistakes_are_named(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        rows_of(tmp_path, "Key,Patient,W,C\nK1,pt_1,a,b\n", HEAD + spec + "\n")
    assert message in str(caught.value)


REDCAP_CASES = [
    # (record, withdraw cell, consent cell, status sent or the row's error)
    ("101", "", "1", "active"),
    ("102", "2024-05-01", "1", "inactive"),
    ("103", "", "0", "rejected"),
    ("104", "", "2", "unmapped_value"),  # a checkbox value its map does not list (issue 20)
    ("105", "[not completed]", "1", "active"),
]


def redcap_file(tmp_path: Path, cases: list[tuple[str, str, str, str]]) -> Path:
    shutil.copy(REDCAP / "econsent.toml", tmp_path)
    lines = ["record_id,consent_timestamp,consent___1,withdraw_date,consent_complete"]
    walk = ["record_id,patientId"]
    for record, withdraw, consent, _ in cases:
        lines.append(f"{record},2024-03-05 14:22:10,{consent},{withdraw},2")
        walk.append(f"{record},pt_{record}")
    (tmp_path / "record_to_patient.csv").write_text("\n".join(walk) + "\n", encoding="utf-8")
    source = tmp_path / "export.csv"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return source


def test_column_wise_and_per_row_agree(tmp_path: Path, bodies: list[int]) -> None:
    source = redcap_file(tmp_path, REDCAP_CASES)
    mapping = load_mapping(tmp_path / "econsent.toml")
    rows = list(Normalizer(mapping).rows(open_table(source, mapping.source)))
    per_row = {row.row: (row.body()["status"] if row.valid else row.errors[0].code) for row in rows}
    assert per_row == {n: case[3] for n, case in enumerate(REDCAP_CASES, start=2)}
    built = bodies[0]
    summary = validate_files([source], mapping)
    assert (summary.valid, summary.invalid) == (4, 1)
    assert [(e.row, e.field, e.code) for e in summary.errors] == [(5, "status", "unmapped_value")]
    # the report's cell is the value column's, not the withdrawal date's
    assert summary.errors[0].value == "2"
    assert summary.errors[0].message.startswith(
        "status (cases on column 'consent___1' + column 'withdraw_date'): "
    )
    # validate proved the four valid rows column-wise: only the invalid one was built
    assert bodies[0] - built == 1


def consents_of(client: httpx.Client, patient: str) -> list[dict[str, Any]]:
    response = client.get("/v1/consents", params={"patientId": patient})
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()["data"]
    return found


def test_a_withdrawn_row_is_sent_inactive_and_a_later_withdrawal_patches_it(
    tmp_path: Path, server: RunningSandbox, client: httpx.Client
) -> None:
    cases = [c for c in REDCAP_CASES if c[3] != "unmapped_value"]
    source = redcap_file(tmp_path, cases)
    mapping, ledger = tmp_path / "econsent.toml", tmp_path / "ledger.db"
    first = run(source, server.base_url, ledger, mapping=mapping)
    assert (first.stats.created, first.stats.invalid) == (4, 0)
    assert [c["status"] for c in consents_of(client, "pt_102")] == ["inactive"]
    assert [c["status"] for c in consents_of(client, "pt_101")] == ["active"]
    # Participant 101 withdraws: the next export has a date in withdraw_date.
    withdrawn = [("101", "2024-06-01", "1", "inactive"), *cases[1:]]
    redcap_file(tmp_path, withdrawn)
    again = run(source, server.base_url, ledger, mapping=mapping)
    assert (again.stats.created, again.stats.updated, again.stats.unchanged) == (0, 1, 3)
    assert [c["status"] for c in consents_of(client, "pt_101")] == ["inactive"]


def test_the_redcap_example_reads_as_documented(capsys: pytest.CaptureFixture[str]) -> None:
    mapping = load_mapping(REDCAP / "econsent.toml")
    source = REDCAP / "econsent_export.csv"
    rows = list(Normalizer(mapping).rows(open_table(source, mapping.source)))
    assert [(r.valid, r.body().get("status"), "dateTime" in r.body()) for r in rows] == [
        (True, "active", True),
        (True, "inactive", True),  # withdraw_date set
        (True, "rejected", False),  # consent___1 = 0; "[not completed]" timestamp is empty
        (True, "active", True),
    ]


def test_the_readme_shows_the_redcap_example_as_it_is() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```toml\n")[1:]]
    [shown] = [b for b in blocks if "consent___1" in b]
    written = (REDCAP / "econsent.toml").read_text(encoding="utf-8")
    assert tomllib.loads(shown) == tomllib.loads(written)


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        # the hipaa consent's own status comes from its cases; research keeps the top one
        ("2024-05-01,Y", {"research": "inactive", "hipaa": "inactive"}),
        (",Y", {"research": None, "hipaa": "active"}),
        (",N", {"research": None}),  # no hipaa consent: its `when` does not hold
    ],
)
def test_cases_in_a_consents_table(
    tmp_path: Path, cells: str, expected: dict[str, str | None]
) -> None:
    mapping = (
        HEAD + 'status = { cases = [ { when = { column = "Withdrawn", not_empty = true }, '
        'value = "inactive" } ] }\n'
        + '[[consents]]\nkey = "research"\n'
        + '[[consents]]\nkey = "hipaa"\nwhen = { column = "Hipaa", in = ["Y"] }\n'
        + "[consents.fields]\n"
        + 'status = { cases = [ { when = { column = "Withdrawn", not_empty = true }, '
        'value = "inactive" }, { value = "active" } ] }\n'
    )
    rows = rows_of(tmp_path, f"Key,Patient,Withdrawn,Hipaa\nK1,pt_1,{cells}\n", mapping)
    assert all(row.valid for row in rows), [e.message for r in rows for e in r.errors]
    assert {row.consent: row.body().get("status") for row in rows} == expected


def test_a_cases_constant_alone_makes_no_nested_object(tmp_path: Path) -> None:
    # Constants alone make nothing: a case's `value` is a constant like any other, so an
    # opt-out flag alone never becomes a blanket deny; with the purposes it does.
    mapping = (
        HEAD + '"provision.provision[0].type" = { cases = [ { when = { column = "OptOut", '
        'not_empty = true }, value = "deny" } ] }\n'
        + '"provision.provision[0].purpose" = { column = "Purposes", split = ";" }\n'
    )
    alone, with_purposes = rows_of(
        tmp_path, "Key,Patient,OptOut,Purposes\nK1,pt_1,x,\nK2,pt_2,x,HMARKT\n", mapping
    )
    assert "provision" not in alone.body()
    assert with_purposes.body()["provision"]["provision"] == [
        {"type": "deny", "purpose": [{"code": "HMARKT"}]}
    ]
