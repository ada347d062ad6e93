"""Mapping version 2: paths, source specs and modifiers, filters, [[consents]], errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from importer._errors import ConfigError
from importer._rows import Row
from importer.commands._validate import validate_files
from importer.intake._mapping import load_mapping
from importer.intake._normalize import Normalizer
from importer.intake._reader import open_table
from importer.sandbox import SandboxConfig, running_sandbox
from tests.engine_helpers import run
from tests.zones import with_zone

BASE = 'patientId = "pt_1"\nscope = "research"\ncategory = "research-participation"\n'
HEAD = "Patient,Scope,Cat"
MAPPING_HEAD = """
[columns]
patientId = "Patient"
scope = "Scope"
category = "Cat"
"""


def rows_of(tmp_path: Path, csv_text: str, mapping: str) -> tuple[list[Row], Normalizer]:
    source = tmp_path / "in.csv"
    source.write_text(csv_text, encoding="utf-8")
    path = tmp_path / "map.toml"
    path.write_text(with_zone(mapping), encoding="utf-8")
    the_mapping = load_mapping(path)
    normalizer = Normalizer(the_mapping)
    return list(normalizer.rows(open_table(source, the_mapping.source))), normalizer


def one_body(tmp_path: Path, extra_head: str, cells: str, fields: str) -> dict[str, Any]:
    text = f"{HEAD},{extra_head}\npt_1,research,research-participation,{cells}\n"
    [row], _ = rows_of(tmp_path, text, MAPPING_HEAD + "\n[fields]\n" + fields)
    assert row.valid, [e.message for e in row.errors]
    return row.body()


@pytest.mark.parametrize(
    ("head", "cells", "spec", "expected"),
    [
        # a header string
        ("URL", "https://x/1", '"sourceAttachment.url" = "URL"', {"url": "https://x/1"}),
        # column, with a default when empty
        (
            "U,T",
            "https://x/1,",
            '"sourceAttachment.url" = "U"\n'
            '"sourceAttachment.title" = { column = "T", default = "Consent form" }',
            {"url": "https://x/1", "title": "Consent form"},
        ),
        # template: filled
        (
            "A,B",
            "f1,2",
            '"sourceAttachment.url" = { template = "https://x/{A}/v{B}" }',
            {"url": "https://x/f1/v2"},
        ),
        # columns + join: empty cells left out
        (
            "A,B,C",
            "x,,z",
            '"sourceAttachment.title" = { columns = ["A", "B", "C"], join = "-" }',
            {"title": "x-z"},
        ),
        # map: inline, case-insensitive and trimmed
        (
            "T",
            " pdf ",
            '"sourceAttachment.contentType" = '
            '{ column = "T", map = { "PDF" = "application/pdf" } }',
            {"contentType": "application/pdf"},
        ),
        # map: a [values.NAME] table
        (
            "T",
            "jpg",
            '"sourceAttachment.contentType" = { column = "T", map = "kinds" }\n'
            '[values.kinds]\n"JPG" = "image/jpeg"',
            {"contentType": "image/jpeg"},
        ),
    ],
)
def test_each_source_form_and_modifier(
    tmp_path: Path, head: str, cells: str, spec: str, expected: dict[str, Any]
) -> None:
    assert one_body(tmp_path, head, cells, spec)["sourceAttachment"] == expected


@pytest.mark.parametrize(
    ("head", "cells", "spec", "expected"),
    [
        # template with an empty cell: empty, so the path is left out
        ("A,B", "x,", '"sourceAttachment.url" = { template = "{A}/{B}" }', None),
        # value alone: a constant, left out (constants alone make no object)
        ("A", "x", '"sourceAttachment.contentType" = { value = "application/pdf" }', None),
    ],
)
def test_empty_results_leave_the_path_out(
    tmp_path: Path, head: str, cells: str, spec: str, expected: None
) -> None:
    assert one_body(tmp_path, head, cells, spec).get("sourceAttachment") is expected


@pytest.mark.parametrize(
    ("cells", "spec", "expected"),
    [
        # split + system: a list of codings
        (
            "A;B",
            '"provision.purpose" = { column = "P", split = ";", system = "http://s" }',
            [{"system": "http://s", "code": "A"}, {"system": "http://s", "code": "B"}],
        ),
        # a code written system|code carries its own system
        (
            "http://o|X",
            '"provision.purpose" = { column = "P", system = "http://s" }',
            [{"system": "http://o", "code": "X"}],
        ),
        # no split: the cell is one code
        ("A;B", '"provision.purpose" = "P"', [{"code": "A;B"}]),
        # map before coding
        (
            "hm",
            '"provision.purpose" = { column = "P", map = { "hm" = "HMARKT" } }',
            [{"code": "HMARKT"}],
        ),
    ],
)
def test_codings(tmp_path: Path, cells: str, spec: str, expected: list[dict[str, str]]) -> None:
    body = one_body(tmp_path, "P", cells, spec)
    assert body["provision"]["purpose"] == expected


@pytest.mark.parametrize(
    ("cells", "spec", "expected"),
    [
        ("Y", '"verification.verified" = "W"', True),
        ("no", '"verification.verified" = "W"', False),
        ("X", '"verification.verified" = { column = "W", map = { "X" = true } }', True),
    ],
)
def test_booleans(tmp_path: Path, cells: str, spec: str, expected: bool) -> None:
    assert one_body(tmp_path, "W", cells, spec)["verification"] == {"verified": expected}


def test_dates_formats_and_joined_columns(tmp_path: Path) -> None:
    body = one_body(
        tmp_path,
        "D,T",
        "05/01/2024,14:30",
        '"dateTime" = { columns = ["D", "T"], formats = ["%m/%d/%Y %H:%M"] }',
    )
    assert body["dateTime"] == "2024-05-01T14:30:00Z"


# Every object of the body, nested provisions and lists of codings included.
EVERY_PATH = {
    "dateTime": ("2024-05-01T09:00:00Z", "2024-05-01T09:00:00Z"),
    "status": ("active", "active"),
    "performerId": ("pt_1", "pt_1"),
    "organizationId": ("org_1", "org_1"),
    "policyUri": ("https://p", "https://p"),
    "policyRule": ("hipaa", "hipaa"),
    "sourceReferenceId": ("doc_1", "doc_1"),
    "policies[0].authority": ("https://a", "https://a"),
    "policies[1].uri": ("https://u", "https://u"),
    "sourceAttachment.contentType": ("application/pdf", "application/pdf"),
    "sourceAttachment.data": ("QUJD", "QUJD"),
    "sourceAttachment.url": ("https://d", "https://d"),
    "sourceAttachment.title": ("Form", "Form"),
    "verification.verified": ("yes", True),
    "verification.verifiedWith": ("pt_2", "pt_2"),
    "verification.verificationDate": ("2024-05-02T00:00:00Z", "2024-05-02T00:00:00Z"),
    "provision.type": ("permit", "permit"),
    "provision.period.start": ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
    "provision.period.end": ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
    "provision.actor[0].role": ("PRCP", "PRCP"),
    "provision.actor[0].reference": ("Organization/org_9", "Organization/org_9"),
    "provision.action": ("access", [{"code": "access"}]),
    "provision.securityLabel": ("R", [{"code": "R"}]),
    "provision.purpose[0].system": ("http://s", "http://s"),
    "provision.purpose[0].code": ("TREAT", "TREAT"),
    "provision.purpose[0].display": ("treatment", "treatment"),
    "provision.class": ("Observation", [{"code": "Observation"}]),
    "provision.dataPeriod.start": ("2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z"),
    "provision.data": ("DocumentReference/d1", [{"reference": "DocumentReference/d1"}]),
    "provision.provision[0].type": ("deny", "deny"),
    "provision.provision[0].purpose": ("HMARKT", [{"code": "HMARKT"}]),
    "provision.provision[0].actor[0].role": ("IRCP", "IRCP"),
    "provision.provision[0].actor[0].reference": ("org_2", "org_2"),
    "provision.provision[0].provision[0].type": ("permit", "permit"),
    "provision.provision[0].provision[0].data": ("d2", [{"reference": "d2"}]),
}


def dig(body: Any, path: str) -> Any:
    for part in path.split("."):
        name, _, index = part.partition("[")
        body = body[name]
        if index:
            body = body[int(index.rstrip("]"))]
    return body


def test_every_path_of_the_body_is_reachable(tmp_path: Path) -> None:
    names = [f"C{i}" for i in range(len(EVERY_PATH))]
    fields = "\n".join(f'"{path}" = "{name}"' for path, name in zip(EVERY_PATH, names, strict=True))
    cells = ",".join(cell for cell, _ in EVERY_PATH.values())
    body = one_body(tmp_path, ",".join(names), cells, fields)
    for path, (_, expected) in EVERY_PATH.items():
        assert dig(body, path) == expected, path
    assert body["policies"] == [{"authority": "https://a"}, {"uri": "https://u"}]


def test_verification_as_a_list(tmp_path: Path) -> None:
    body = one_body(
        tmp_path,
        "A,B",
        "yes,no",
        '"verification[0].verified" = "A"\n"verification[1].verified" = "B"',
    )
    assert body["verification"] == [{"verified": True}, {"verified": False}]


@pytest.mark.parametrize(
    ("optout", "expected"),
    [
        ("HMARKT", [{"type": "deny", "purpose": [{"code": "HMARKT"}]}]),
        ("", None),  # a constant type = "deny" alone is never a blanket deny
        ("NA", None),  # a null value is an empty cell
    ],
)
def test_a_nested_provision_of_constants_alone_is_left_out(
    tmp_path: Path, optout: str, expected: Any
) -> None:
    fields = (
        '"provision.type" = { value = "permit" }\n'
        '"provision.purpose" = "Purpose"\n'
        '"provision.provision[0].type" = { value = "deny" }\n'
        '"provision.provision[0].purpose" = "Optout"\n'
    )
    text = f"{HEAD},Purpose,Optout\npt_1,research,research-participation,TREAT,{optout}\n"
    mapping = '[source]\nnull_values = ["NA"]\n' + MAPPING_HEAD + "[fields]\n" + fields
    [row], _ = rows_of(tmp_path, text, mapping)
    provision = row.body()["provision"]
    assert provision.get("provision") == expected
    assert provision["type"] == "permit"


@pytest.mark.parametrize(
    ("condition", "kept"),
    [
        ('in = ["consent"]', ["1", "3"]),
        ('not_in = ["CONSENT", "visit"]', ["4"]),
        ("not_empty = true", ["1", "2", "3"]),
        ('matches = "C.*T"', ["1"]),  # a regular expression: case counts
    ],
)
def test_filters_skip_rows(tmp_path: Path, condition: str, kept: list[str]) -> None:
    text = (
        f"ID,Type,{HEAD}\n1,CONSENT,pt_1,research,a\n2,VISIT,pt_1,research,a\n"
        "3, consent ,pt_1,research,a\n4,,pt_1,research,a\n"
    )
    mapping = (
        '[source]\nkey = ["ID"]\n' + MAPPING_HEAD + f'[[filter]]\ncolumn = "Type"\n{condition}\n'
    )
    rows, normalizer = rows_of(tmp_path, text, mapping)
    assert [row.source_key for row in rows] == kept
    assert normalizer.skipped == 4 - len(kept)


def test_filtered_rows_are_skipped_in_the_validation_summary(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f"Type,{HEAD}\nC,pt_1,research,a\nV,,bad,\n", encoding="utf-8")
    mapping = tmp_path / "m.toml"
    mapping.write_text(MAPPING_HEAD + '[[filter]]\ncolumn = "Type"\nin = ["C"]\n')
    summary = validate_files([source], load_mapping(mapping))
    assert (summary.rows, summary.valid, summary.invalid, summary.skipped) == (1, 1, 0, 1)
    assert summary.to_json()["summary"]["skipped"] == 1


CONSENTS = """
[source]
key = ["ID"]

[columns]
patientId = "Patient"

[[consents]]
key = "research"
fields = { scope = { value = "research" }, category = { value = "research-participation" }, \
status = "Research Status" }

[[consents]]
key = "hipaa"
when = { column = "HIPAA Date", not_empty = true }
fields = { scope = { value = "patient-privacy" }, category = { value = "hipaa-notice" }, \
dateTime = "HIPAA Date", status = "HIPAA Status" }
"""
CONSENTS_CSV = (
    "ID,Patient,Research Status,HIPAA Date,HIPAA Status\n"
    "R1,pt_1,active,2024-05-01,active\n"
    "R2,pt_2,active,,\n"
    "R3,pt_3,active,2024-05-03,bogus\n"
)


def test_consents_fan_out_with_their_own_keys_and_error_locations(tmp_path: Path) -> None:
    rows, _ = rows_of(tmp_path, CONSENTS_CSV, CONSENTS)
    assert [(r.row, r.source_key, r.valid) for r in rows] == [
        (2, "R1#research", True),
        (2, "R1#hipaa", True),
        (3, "R2#research", True),
        (4, "R3#research", True),
        (4, "R3#hipaa", False),
    ]
    assert rows[1].body()["scope"] == "patient-privacy"
    [error] = rows[4].errors
    assert error.where == f"{tmp_path / 'in.csv'}:4#hipaa"
    assert error.field == "status"


def test_a_row_where_no_when_holds_makes_no_consent(tmp_path: Path) -> None:
    mapping = CONSENTS.replace(
        'key = "research"\n',
        'key = "research"\nwhen = { column = "Research Status", not_empty = true }\n',
    )
    rows, normalizer = rows_of(
        tmp_path, CONSENTS_CSV.replace("R2,pt_2,active,", "R2,pt_2,,"), mapping
    )
    assert "R2#research" not in [r.source_key for r in rows]
    assert normalizer.skipped == 1


def test_consents_rerun_unchanged_then_one_consent_changed_patches_once(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(CONSENTS_CSV.replace("bogus", "active"), encoding="utf-8")
    mapping = tmp_path / "m.toml"
    mapping.write_text(CONSENTS, encoding="utf-8")
    ledger = tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        first = run(source, sandbox.base_url, ledger, mapping=mapping)
        assert first.stats.created == 5
        again = run(source, sandbox.base_url, ledger, mapping=mapping)
        assert (again.stats.unchanged, again.stats.created, again.stats.updated) == (5, 0, 0)
        before = sandbox.stats()
        source.write_text(
            CONSENTS_CSV.replace("bogus", "active").replace(
                "R1,pt_1,active,2024-05-01,active", "R1,pt_1,active,2024-05-01,inactive"
            ),
            encoding="utf-8",
        )
        changed = run(source, sandbox.base_url, ledger, mapping=mapping)
        after = sandbox.stats()
        assert after["patches"] - before["patches"] == 1
        assert after["creates"] == before["creates"]
        assert (changed.stats.updated, changed.stats.unchanged) == (1, 4)
        assert after["duplicates"] == 0


# Mapping errors: the file, the TOML key, what to do.
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[fields]\n"provision.actors" = "X"',
            'fields."provision.actors": unknown path; did you mean "provision.actor"?',
        ),
        (
            '[fields]\n"provison.type" = "X"',
            'fields."provison.type": unknown path; did you mean "provision"?',
        ),
        (
            '[fields]\n"provision.actor.role" = "X"',
            'fields."provision.actor.role": "provision.actor" is a list; name an item, '
            'e.g. "provision.actor[0].role"',
        ),
        (
            '[fields]\n"provision.period" = "X"',
            'fields."provision.period": "provision.period" is an object; name one of its '
            "fields (start, end)",
        ),
        (
            '[fields]\n"scope[0]" = "X"',
            'fields."scope[0]": "scope" is not a list; write it without [0]',
        ),
        (
            '[fields]\n"policies" = "X"',
            'fields.policies: "policies" is a list of objects; name a field of one item, '
            'e.g. "policies[0].authority" (fields: authority, uri)',
        ),
        (
            '[fields]\nscope = { column = "A", value = "x" }',
            "fields.scope: needs exactly one of column, columns, template, value "
            "(found column, value)",
        ),
        (
            '[fields]\nscope = { colum = "A" }',
            # one wording of an unknown key everywhere (issue 23): the guess, then the list
            "fields.scope: unknown key 'colum'; did you mean 'column'? (allowed: column, "
            "columns, crosswalk, default, formats, join, map, split, system, template, "
            "unmapped, value)",
        ),
        (
            '[fields]\nscope = { column = "A", split = ";" }',
            "fields.scope.split: scope holds one value, not a list",
        ),
        (
            '[fields]\nscope = { column = "A", formats = ["%d"] }',
            "fields.scope.formats: scope is not a date-time",
        ),
        (
            '[fields]\nscope = { column = "A", system = "http://s" }',
            "fields.scope.system: scope is not a coding (action, securityLabel, purpose, class)",
        ),
        (
            '[fields]\n"verification.verified" = { value = "yes" }',
            'fields."verification.verified".value: verification.verified takes true or false',
        ),
        (
            '[fields]\nscope = { template = "plain" }',
            "fields.scope.template: names no column; write headers in braces, like "
            '"Organization/{Org ID}" (or use value = for a constant)',
        ),
        (
            '[fields]\nscope = { column = "A", map = "nope" }',
            "fields.scope.map: no table [values.nope]; add it, or write the map inline",
        ),
        (
            '[columns]\nscope = "A"\n[fields]\nscope = "B"',
            "fields.scope: columns.scope fills the same path; keep one",
        ),
        (
            '[fields]\n"provision.purpose" = "A"\n"provision.purpose[0].system" = "B"',
            'fields."provision.purpose[0].system": overlaps fields."provision.purpose"; '
            "a path is filled once",
        ),
        (
            '[[filter]]\ncolumn = "T"\nin = ["A"]\nnot_empty = true',
            "filter[1]: needs exactly one of in = [...], not_in = [...], not_empty = true, "
            'matches = "REGEX" (found 2)',
        ),
        (
            '[[filter]]\nin = ["A"]',
            'filter[1]: needs column = "HEADER", the column to test',
        ),
        (
            '[[filter]]\ncolumn = "T"\nmatches = "("',
            "filter[1].matches: not a valid regular expression (missing ), unterminated "
            "subpattern at position 0)",
        ),
        (
            '[[consents]]\nwhen = { column = "T", not_empty = true }',
            "consents[1].key: needs a short name (letters, digits, '-', '_', '.'), e.g. "
            'key = "hipaa"; it is appended to the row\'s source key',
        ),
        (
            '[[consents]]\nkey = "a"\n[[consents]]\nkey = "a"',
            "consents[2].key: 'a' is used twice; keys must differ",
        ),
        (
            '[[consents]]\nkey = "a"\nfields = { "provision.typ" = "T" }',
            'consents[1].fields."provision.typ": unknown path; did you mean "provision.type"?',
        ),
        (
            "[source]\nheader_row = 0",
            "source.header_row: must be the 1-based line number of the header, e.g. 3",
        ),
        (
            '[source]\nnull_values = "NA"',
            "source.null_values: must be a list of strings",
        ),
    ],
)
def test_mapping_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mapping.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (
            '[fields]\n"sourceAttachment.url" = "Scan Ur"',
            "fields.\"sourceAttachment.url\": column 'Scan Ur' is not in {source}; did you mean "
            "'Scan Url'? (check the spelling, and [source] header_row if the header is not the "
            "first line)",
        ),
        (
            '[[filter]]\ncolumn = "Kind"\nin = ["x"]',
            "filter[1].column: column 'Kind' is not in {source} (check the spelling, and [source] "
            "header_row if the header is not the first line)",
        ),
    ],
)
def test_a_header_the_file_lacks_is_named_before_any_row(
    tmp_path: Path, mapping: str, message: str
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("patientId,scope,category,Scan Url\npt_1,research,a,u\n", encoding="utf-8")
    path = tmp_path / "mapping.toml"
    path.write_text(mapping, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        validate_files([source], load_mapping(path))
    assert str(caught.value) == f"{path}: {message.format(source=source)}"


def test_headers_match_trimmed_and_case_folded(tmp_path: Path) -> None:
    text = "MRN,Type ,cat\npt_1,research,a\n"
    mapping = '[columns]\npatientId = "mrn"\nscope = " TYPE"\ncategory = "Cat"\n'
    [row], _ = rows_of(tmp_path, text, mapping)
    assert row.body() == {"patientId": "pt_1", "scope": "research", "category": ["a"]}


def test_title_lines_above_the_header(tmp_path: Path) -> None:
    text = "Registry export\nGenerated today\n" + HEAD + "\npt_1,research,a\n"
    [row], _ = rows_of(tmp_path, text, "[source]\nheader_row = 3\n" + MAPPING_HEAD)
    assert row.row == 4
    assert row.valid


# Dates: one reading per column.
@pytest.mark.parametrize(
    ("cells", "formats", "expected"),
    [
        # 13.04 only reads day-first, so the whole column is day-first: 03.04 is April 3
        (["03.04.2024", "13.04.2024"], '["%m.%d.%Y", "%d.%m.%Y"]', ["2024-04-03", "2024-04-13"]),
        # time and no time in one column: one family
        (
            ["05/01/2024 02:15 PM", "05/02/2024"],
            '["%m/%d/%Y %I:%M %p", "%m/%d/%Y"]',
            ["2024-05-01", "2024-05-02"],
        ),
        # ISO cells are always read as ISO
        (["2024-01-02", "13.04.2024"], '["%m.%d.%Y", "%d.%m.%Y"]', ["2024-01-02", "2024-04-13"]),
        # none reads every cell: the best one is used, the rest are invalid
        (
            ["13.04.2024", "14.04.2024", "04/13/2024"],
            '["%m/%d/%Y", "%d.%m.%Y"]',
            ["2024-04-13", "2024-04-14", None],
        ),
    ],
)
def test_a_date_column_is_read_one_way(
    tmp_path: Path, cells: list[str], formats: str, expected: list[str | None]
) -> None:
    text = "patientId,scope,category,dateTime\n" + "".join(
        f"pt_1,research,a,{cell}\n" for cell in cells
    )
    rows, _ = rows_of(tmp_path, text, f"[source]\ndate_formats = {formats}\n")
    got = [r.body()["dateTime"][:10] if r.valid else None for r in rows]
    assert got == expected


def test_a_date_column_two_formats_read_differently_is_refused(tmp_path: Path) -> None:
    text = (
        "patientId,scope,category,dateTime\n"
        "pt_1,research,a,03.04.2024\npt_1,research,a,05.06.2024\n"
    )
    source = tmp_path / "in.csv"
    source.write_text(text, encoding="utf-8")
    path = tmp_path / "m.toml"
    path.write_text('[source]\ndate_formats = ["%m.%d.%Y", "%d.%m.%Y"]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        validate_files([source], load_mapping(path))
    assert str(caught.value) == (
        f"{source}: dateTime reads as both '%m.%d.%Y' and '%d.%m.%Y', which give different "
        "dates (day and month swapped); keep only the right one in date_formats"
    )


# The column-wise proof for version-2 consents never passes a consent the models refuse.
PROOF_MAPPING = """
[source]
key = ["ID"]
null_values = ["NA"]

[columns]
patientId = "Patient"

[fields]
"status" = "Status"
"performerId" = "Performer"
"verification.verified" = { column = "Verified", map = { "X" = true } }
"verification.verifiedWith" = "Witness"
"provision.period.start" = "Start"
"provision.period.end" = "End"
"provision.actor[0].role" = "Role"
"provision.actor[0].reference" = "Org"
"provision.provision[0].type" = "Type"
"provision.provision[0].purpose" = { column = "Purposes", split = ";" }
"provision.purpose[0].system" = "System"
"provision.data" = { column = "Data", split = ";" }

[[consents]]
key = "a"
fields = { scope = "Scope", category = { value = "c1" } }

[[consents]]
key = "b"
when = { column = "Second", not_empty = true }
fields = { scope = { value = "research" }, category = "Category" }
"""
PROOF_CHOICES = {
    "Patient": ["pt_1", "pt 2", "", "NA"],
    "Status": ["active", "bogus", ""],
    "Performer": ["pr_1", "pr!", ""],
    "Verified": ["X", "yes", "maybe", ""],
    "Witness": ["w_1", "w 1", ""],
    "Start": ["2024-01-01", "2024-06-01", "soon", ""],
    "End": ["2024-03-01", ""],
    "Role": ["PRCP", ""],
    "Org": ["Organization/o1", "o 1", ""],
    "Type": ["deny", "permit", "maybe", ""],
    "Purposes": ["HMARKT;HRESCH", ";", "|X", ""],
    "System": ["http://s", ""],
    "Data": ["d1;Doc/d2", "bad ref", ""],
    "Scope": ["treatment", "marketing", ""],
    "Second": ["y", ""],
    "Category": ["c2", "", ";"],
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_v2_proof_agrees_with_the_full_path(tmp_path: Path, seed: int) -> None:
    import random

    rng = random.Random(seed)
    names = list(PROOF_CHOICES)
    lines = ["ID," + ",".join(names)]
    for n in range(800):
        # Mostly the first (valid) choice, so that both verdicts come in numbers.
        cells = [
            PROOF_CHOICES[c][0] if rng.random() < 0.93 else rng.choice(PROOF_CHOICES[c])
            for c in names
        ]
        lines.append(f"K{n}," + ",".join(cells))
    source = tmp_path / "in.csv"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = tmp_path / "m.toml"
    path.write_text(PROOF_MAPPING, encoding="utf-8")
    mapping = load_mapping(path)
    full = {
        (r.row, r.consent): sorted((e.field, e.code) for e in r.errors)
        for r in Normalizer(mapping).rows(open_table(source, mapping.source))
        if not r.valid
    }
    fast: dict[tuple[int, str], list[tuple[str, str]]] = {}
    counted = 0
    for batch in Normalizer(mapping).check(open_table(source, mapping.source)):
        counted += batch.rows
        for row in batch.invalid:
            fast[row.row, row.consent] = sorted((e.field, e.code) for e in row.errors)
    assert fast == full
    assert 100 < len(full) < counted  # both kinds, in numbers


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('fields = "x"', "fields: must be a table of path = source"),
        (
            '[fields]\nscope = { column = "A", join = "-" }',
            "fields.scope.join: only goes with columns = [...]",
        ),
        (
            '[fields]\nscope = { column = "A", map = 3 }',
            'fields.scope.map: must be an inline table { "source" = "api" } or the name of a '
            "[values.NAME] table",
        ),
        (
            "[fields]\nscope = 3",
            'fields.scope: must be a column header ("Signed Date") or a table '
            'such as { column = "Signed Date" } or { value = "permit" }',
        ),
        (
            '[[consents]]\nkey = "a"\nwhen = "x"',
            'consents[1].when: must be a table like { column = "Type", in = ["X"] }',
        ),
        (
            '[[consents]]\nkey = "a"\nfield = {}',
            "consents[1]: unknown key 'field'; did you mean 'fields'? (allowed: fields, key, when)",
        ),
        ('[[filter]]\ncolumn = "T"\nin = []', "filter[1].in: must be a non-empty list of strings"),
        ('[[filter]]\ncolumn = "T"\nnot_empty = false', "filter[1].not_empty: must be true"),
        (
            '[fields]\n"provision.provision[0].typ" = "T"',
            'fields."provision.provision[0].typ": unknown '
            'path; did you mean "provision.provision[0].type"?',
        ),
    ],
)
def test_more_mapping_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mapping.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert str(caught.value) == f"{path}: {message}"


def test_an_unknown_section_gets_a_did_you_mean(tmp_path: Path) -> None:
    path = tmp_path / "mapping.toml"
    path.write_text('[feilds]\nscope = "A"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert "unknown key 'feilds'; did you mean 'fields'?" in str(caught.value)


def dated_rows(tmp_path: Path, cells: list[str], formats: str) -> list[Row]:
    source = tmp_path / "in.csv"
    source.write_text(
        "patientId,scope,category,dateTime\n"
        + "".join(f"pt_1,research,a,{cell}\n" for cell in cells),
        encoding="utf-8",
    )
    path = tmp_path / "m.toml"
    path.write_text(f"[source]\ndate_formats = {formats}\n", encoding="utf-8")
    mapping = load_mapping(path)
    table = open_table(source, mapping.source, chunk_rows=2)  # two rows a chunk
    return list(Normalizer(mapping).rows(table))


BOTH = '["%m.%d.%Y", "%d.%m.%Y"]'


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        # undecided in the first chunk (both read 01.01 and 02.02 alike), decided by the second
        (
            ["01.01.2024", "02.02.2024", "13.04.2024", "03.04.2024"],
            ["2024-01-01", "2024-02-02", "2024-04-13", "2024-04-03"],
        ),
        # decided day-first by the first chunk: a later month-first cell is invalid
        (["13.04.2024", "14.04.2024", "04.13.2024"], ["2024-04-13", "2024-04-14", None]),
    ],
)
def test_a_date_column_is_decided_by_the_first_chunk_that_decides(
    tmp_path: Path, cells: list[str], expected: list[str | None]
) -> None:
    rows = dated_rows(tmp_path, cells, BOTH)
    assert [r.body()["dateTime"][:10] if r.valid else None for r in rows] == expected


def test_a_later_chunk_the_candidates_read_differently_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("reads as both '%m.%d.%Y' and '%d.%m.%Y'")):
        dated_rows(tmp_path, ["12.12.2024", "11.11.2024", "03.04.2024", "05.06.2024"], BOTH)


def test_excel_header_row(tmp_path: Path) -> None:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(["Registry export"])
    sheet.append(["Patient", "Scope", "Cat"])
    sheet.append(["pt_1", "research", "a"])
    book.save(tmp_path / "in.xlsx")
    path = tmp_path / "m.toml"
    path.write_text("[source]\nheader_row = 2\n" + MAPPING_HEAD, encoding="utf-8")
    mapping = load_mapping(path)
    [row] = list(Normalizer(mapping).rows(open_table(tmp_path / "in.xlsx", mapping.source)))
    assert (row.row, row.valid) == (3, True)


def test_a_failed_csv_of_a_file_with_titles_feeds_back_with_its_mapping(tmp_path: Path) -> None:
    from importer.reports._export import export_csvs

    source = tmp_path / "in.csv"  # R3#hipaa is invalid
    mapping = tmp_path / "m.toml"
    mapping.write_text(CONSENTS.replace("[source]\n", "[source]\nheader_row = 3\n"), "utf-8")
    source.write_text("Registry export\nGenerated today\n" + CONSENTS_CSV, encoding="utf-8")
    ledger = tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        first = run(source, sandbox.base_url, ledger, mapping=mapping)
        assert (first.stats.created, first.stats.invalid) == (4, 1)
        failed = tmp_path / "failed.csv"
        export_csvs(ledger, None, failed)
        fixed = tmp_path / "fixed.csv"
        fixed.write_text(failed.read_text(encoding="utf-8-sig").replace("bogus", "active"), "utf-8")
        again = run(fixed, sandbox.base_url, ledger, mapping=mapping)
        assert (again.stats.created, again.stats.unchanged, again.stats.invalid) == (1, 1, 0)
        assert sandbox.stats()["duplicates"] == 0


def test_a_recognised_header_gives_way_to_a_path_the_mapping_fills(tmp_path: Path) -> None:
    text = "patientId,scope,category,purpose,P\npt_1,research,a,TREAT,HMARKT\n"
    [row], _ = rows_of(tmp_path, text, '[fields]\n"provision.purpose[0].code" = "P"\n')
    assert row.body()["provision"] == {"purpose": [{"code": "HMARKT"}]}
