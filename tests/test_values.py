"""What is sent means what the source meant (issue 20, points 3-5): a value its map does
not list is a row error, `unmapped = "keep"` keeps it on purpose, validate's reports
profile the mapped columns' values; crosswalks by header for every id, targets checked
when they load; `system|code` stays one coding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from importer._errors import ConfigError
from importer._rows import Row
from importer.intake._mapping import load_crosswalk, load_mapping
from importer.intake._mapping_v2 import evaluate as evaluate_spec
from importer.intake._mapping_v2 import parse_path, parse_spec
from importer.intake._normalize import Normalizer
from importer.intake._reader import open_table
from importer.sandbox import RunningSandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
HRESCH = {"system": ACT_REASON, "code": "HRESCH"}
OID = "urn:oid:2.16.840.1.113883.5.8"


def setup_files(tmp_path: Path, csv_text: str, mapping: str, **files: str) -> tuple[Path, Path]:
    source = tmp_path / "in.csv"
    source.write_text(csv_text, encoding="utf-8")
    path = tmp_path / "map.toml"
    path.write_text(mapping, encoding="utf-8")
    for name, text in files.items():
        (tmp_path / name.replace("_", ".")).write_text(text, encoding="utf-8")
    return source, path


def rows_of(tmp_path: Path, csv_text: str, mapping: str, **files: str) -> list[Row]:
    """Rows by the full path (what a run builds)."""
    source, path = setup_files(tmp_path, csv_text, mapping, **files)
    the_mapping = load_mapping(path)
    return list(Normalizer(the_mapping).rows(open_table(source, the_mapping.source)))


def checked(tmp_path: Path) -> list[tuple[int, str, str]]:
    """validate's verdict on the files `rows_of` wrote (the column-wise check)."""
    mapping = load_mapping(tmp_path / "map.toml")
    table = open_table(tmp_path / "in.csv", mapping.source)
    return [
        (row.row, e.field, e.code)
        for batch in Normalizer(mapping).check(table)
        for row in batch.invalid
        for e in row.errors
    ]


def verdicts(rows: list[Row]) -> list[tuple[int, str, str]]:
    return [(row.row, e.field, e.code) for row in rows for e in row.errors]


# --- point 3: unmapped is an error --------------------------------------------------------

V1 = "[columns]\nscope = 'Type'\n"
V2 = "[fields]\nscope = { column = 'Type', map = { 'HIPAA' = 'patient-privacy' } }\n"


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        # version 1: [values.FIELD]
        (V1 + "[values.scope]\nHIPAA = 'patient-privacy'\n", [(3, "scope", "unmapped_value")]),
        (V1 + "[values.scope]\nHIPAA = 'patient-privacy'\nunmapped = 'keep'\n", []),
        (V1 + "[values.scope]\nHIPAA = 'patient-privacy'\nunmapped = 'error'\n",
         [(3, "scope", "unmapped_value")]),
        # version 2: an inline map, a map naming a [values.NAME] table
        (V2, [(3, "scope", "unmapped_value")]),
        (V2.replace("} }", "}, unmapped = 'keep' }"), []),  # on the spec
        (V2.replace("'patient-privacy' }", "'patient-privacy', unmapped = 'keep' }"), []),
        ("[fields]\nscope = { column = 'Type', map = 'kinds' }\n"
         "[values.kinds]\nHIPAA = 'patient-privacy'\n", [(3, "scope", "unmapped_value")]),
        ("[fields]\nscope = { column = 'Type', map = 'kinds' }\n"
         "[values.kinds]\nHIPAA = 'patient-privacy'\nunmapped = 'keep'\n", []),
    ],
)  # fmt: skip
def test_a_value_its_map_does_not_list_is_a_row_error(
    tmp_path: Path, mapping: str, expected: list[tuple[int, str, str]]
) -> None:
    rows = rows_of(
        tmp_path,
        # row 3's "treatment" is a valid scope: only the map can refuse it
        "patientId,Type,category\npt_1, hipaa ,c\npt_2,treatment,c\n",
        mapping,
    )
    assert verdicts(rows) == expected
    assert checked(tmp_path) == expected  # validate's column-wise check agrees
    assert rows[0].body()["scope"] == "patient-privacy"
    if not expected:
        assert rows[1].body()["scope"] == "treatment"  # kept as it is, on purpose


def test_the_message_names_field_table_and_column_never_the_value(tmp_path: Path) -> None:
    [row] = rows_of(
        tmp_path,
        "patientId,Kind,category\npt_1,Photo Release,c\n",
        "[columns]\nscope = 'Kind'\n[values.scope]\nHIPAA = 'patient-privacy'\n",
    )
    [error] = row.errors
    assert error.message == (
        "scope (column 'Kind'): its column holds a value [values.scope] does not list; add "
        'it there, or set unmapped = "keep" to send such values as they are (unmapped_value)'
    )
    assert error.value == "Photo Release"  # for the user's own HTML report only


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("HIPAA;Surgery", ["hipaa-notice", "surgical-consent"]),  # code by code
        ("Surgery;Other", "unmapped_value"),  # one code not listed: the cell is refused
        ("Photo", "unmapped_value"),
        ("", "missing_required"),  # an empty cell is not unmapped: it is empty
    ],
)
def test_multi_value_cells_are_checked_code_by_code(
    tmp_path: Path, cell: str, expected: Any
) -> None:
    [row] = rows_of(
        tmp_path,
        f"patientId,scope,Kinds\npt_1,treatment,{cell}\n",
        "[columns]\ncategory = 'Kinds'\n"
        "[values.category]\nSurgery = 'surgical-consent'\nHIPAA = 'hipaa-notice'\n",
    )
    if isinstance(expected, list):
        assert row.body()["category"] == expected
    else:
        assert [e.code for e in row.errors] == [expected]


def test_v2_codes_and_booleans_through_a_map(tmp_path: Path) -> None:
    rows = rows_of(
        tmp_path,
        "patientId,scope,category,Why,Witnessed\npt_1,treatment,c,research,X\n"
        "pt_2,treatment,c,marketing,X\npt_3,treatment,c,research,maybe\n",
        "[fields]\n"
        "'provision.purpose' = { column = 'Why', map = { research = 'HRESCH' } }\n"
        "'verification.verified' = { column = 'Witnessed', map = { X = true, '' = false } }\n",
    )
    assert verdicts(rows) == [
        (3, "provision.purpose", "unmapped_value"),
        (4, "verification.verified", "unmapped_value"),
    ]
    assert checked(tmp_path) == verdicts(rows)
    assert rows[0].body()["provision"] == {"purpose": [{"code": "HRESCH"}]}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("[values.kinds]\na = 'b'\n", "[values.kinds] is not used: no [fields] spec names it"),
        ("[values.stauts]\na = 'b'\n", "the scope column); did you mean [values.status]?"),
        ("[values.scope]\nunmapped = 'sometimes'\n", 'values.scope.unmapped: must be "keep"'),
    ],
)
def test_value_table_mistakes(tmp_path: Path, values: str, message: str) -> None:
    path = tmp_path / "map.toml"
    path.write_text(values, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_mapping(path)
    assert message in str(err.value)
    assert "unknown key" not in str(err.value)


def test_a_custom_table_name_is_fine_when_used(tmp_path: Path) -> None:
    path = tmp_path / "map.toml"
    path.write_text(
        "[fields]\nstatus = { column = 'S', map = 'kinds' }\n[values.kinds]\nY = 'active'\n",
        encoding="utf-8",
    )
    assert load_mapping(path).fields["status"].map == {"y": "active"}


_CELL = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")))


@settings(max_examples=200, deadline=None)
@given(
    table=st.dictionaries(_CELL.filter(bool), _CELL.filter(bool), max_size=6),
    others=st.lists(_CELL, max_size=6),
    keep=st.booleans(),
)
def test_property_listed_values_translate_others_are_unmapped(
    table: dict[str, str], others: list[str], keep: bool
) -> None:
    # Keys differing only in case are one key (maps compare case-folded): keep the last.
    folded = {k.casefold(): v for k, v in table.items()}
    raw: dict[str, Any] = {"column": "C", "map": dict(table)}
    if keep:
        raw["unmapped"] = "keep"
    spec = parse_spec(parse_path("policyRule", "t"), raw, "policyRule", "t")
    cells = [*table, *others]
    values = evaluate_spec(spec, {"C": cells}, len(cells), None, lambda _: None)
    for cell, (value, _, code) in zip(cells, values, strict=True):
        if not cell:
            assert (value, code) == (None, None)
        elif cell.casefold() in folded:
            assert (value, code) == (folded[cell.casefold()].strip() or None, None)
        elif keep:
            assert (value, code) == (cell, None)
        else:
            assert (value, code) == (None, "unmapped_value")


# --- the values profile -------------------------------------------------------------------

PROFILED = (
    "Rec,MRN,Type,participant_id\n1,007,HIPAA,1\n2,007,hipaa ,2\n3,008,Photo,1\n4,009,HIPAA,1\n"
)
PROFILE_MAPPING = (
    "[source]\nkey = 'Rec'\n[columns]\npatientId = 'MRN'\nscope = 'Type'\ncategory = 'Type'\n"
    "performerId = 'participant_id'\n"
    "[values.scope]\nHIPAA = 'patient-privacy'\n[values.category]\nHIPAA = 'hipaa-notice'\n"
    "[patients]\ncrosswalk = 'x.csv'\n"
)


def test_validate_reports_the_values_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, mapping = setup_files(
        tmp_path, PROFILED, PROFILE_MAPPING, x_csv="MRN,patientId\n007,pt_7\n008,pt_8\n"
    )
    report, html = tmp_path / "r.json", tmp_path / "r.html"
    code, out, err = run_cli(
        ["validate", str(source), "--mapping", str(mapping), "--report", str(report),
         "--report", str(html)],
        capsys,
    )  # fmt: skip
    assert code == 1
    profile = {(c["field"], c["column"]): c for c in json.loads(report.read_text())["values"]}
    assert profile[("scope", "Type")]["values"] == [
        {"value": "HIPAA", "count": 2, "became": "patient-privacy"},
        {"value": "Photo", "count": 1, "became": None, "error": "unmapped_value"},
        {"value": "hipaa", "count": 1, "became": "patient-privacy"},  # " hipaa ", trimmed
    ]
    assert profile[("patientId", "MRN")]["values"] == [
        {"value": "007", "count": 2, "became": "pt_7"},
        {"value": "008", "count": 1, "became": "pt_8"},
        {"value": "009", "count": 1, "became": None, "error": "unknown_patient"},
    ]
    assert profile[("performerId", "participant_id")]["values"] == [
        {"value": "1", "count": 3, "became": "1"},
        {"value": "2", "count": 1, "became": "2"},
    ]
    page = html.read_text()
    assert 'id="values"' in page
    assert "<code>Photo</code>" in page
    assert "<code>patient-privacy</code>" in page
    # The terminal names fields and columns, never a value (PHI).
    for value in ("Photo", "007", "pt_7"):
        assert value not in out + err


def test_the_profile_keeps_fifty_values_and_counts_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = "".join(f"pt_{n},treatment,c,org_{n % 60}\n" for n in range(120))
    source, mapping = setup_files(tmp_path, "patientId,scope,category,organizationId\n" + lines, "")
    report = tmp_path / "r.json"
    code, _, _ = run_cli(
        ["validate", str(source), "--mapping", str(mapping), "--report", str(report)], capsys
    )
    assert code == 0
    [orgs] = [
        c for c in json.loads(report.read_text())["values"] if c["column"] == "organizationId"
    ]
    assert orgs["distinct"] == 50
    assert sum(v["count"] for v in orgs["values"]) + orgs["other_rows"] == 120
    assert orgs["other_rows"] == 20  # org_50..org_59, twice each


def test_redacted_reports_leave_the_profile_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, mapping = setup_files(
        tmp_path, PROFILED, PROFILE_MAPPING, x_csv="MRN,patientId\n007,pt_7\n008,pt_8\n"
    )
    html, report = tmp_path / "r.html", tmp_path / "r.json"
    run_cli(
        ["validate", str(source), "--mapping", str(mapping), "--report", str(html),
         "--report", str(report), "--redact"],
        capsys,
    )  # fmt: skip
    page = html.read_text()
    assert 'id="values-redacted"' in page
    assert "Photo" not in page
    assert "values" not in json.loads(report.read_text())
    assert "Photo" not in report.read_text()


@pytest.mark.parametrize(
    ("column", "cells", "warned"),
    [
        ("performerId", ["1", "2"], True),  # legacy participant numbers: sent as "valid" ids
        ("performerId", ["prac_1", "pt_2"], False),
        ("organizationId", ["MAIN"], True),
        ("organizationId", ["org_main"], False),
    ],
)
def test_validate_warns_when_ids_do_not_look_like_clinikapi_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str, cells: list[str], warned: bool
) -> None:
    lines = "".join(f"pt_{n},treatment,c,{cell}\n" for n, cell in enumerate(cells))
    source, mapping = setup_files(
        tmp_path, f"patientId,scope,category,Who\n{lines}", f"[columns]\n{column} = 'Who'\n"
    )
    report = tmp_path / "r.json"
    code, out, _ = run_cli(
        ["validate", str(source), "--mapping", str(mapping), "--report", str(report)], capsys
    )
    assert code == 0  # the rows are valid for the API; the warning says what they mean
    warning = f"warning: {column} (column 'Who'): "
    assert (warning in out) is warned
    assert ("warnings" in json.loads(report.read_text())) is warned
    for cell in cells:
        assert f"'{cell}'" not in out


# --- point 4: crosswalks by header, for every id ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "keys", "expected"),
    [
        # a two-column file without from/to: as before
        ("MRN,patientId\n007,pt_7\n", {}, {"007": "pt_7"}),
        # three columns, by header (a Synthea-style patients file)
        ("Id,SSN,Clinik\nS1,999,pt_1\nS2,998,pt_2\n", {"source": "Id", "target": "Clinik"},
         {"S1": "pt_1", "S2": "pt_2"}),
        # swapped columns, by header
        ("patientId,MRN\npt_7,007\n", {"source": "mrn", "target": " PatientID "}, {"007": "pt_7"}),
        # naming one column of two names the other
        ("patientId,MRN\npt_7,007\n", {"source": "MRN"}, {"007": "pt_7"}),
        # a blank target: that id is unknown (its rows unknown_patient), the rest is read
        ("MRN,patientId\n007,pt_7\n008,\n", {}, {"007": "pt_7"}),
    ],
)  # fmt: skip
def test_crosswalks_by_header(
    tmp_path: Path, text: str, keys: dict[str, str], expected: dict[str, str]
) -> None:
    path = tmp_path / "x.csv"
    path.write_text(text, encoding="utf-8")
    assert load_crosswalk(path, **keys) == expected


@pytest.mark.parametrize(
    ("text", "keys", "message"),
    [
        ("Id,SSN,Clinik\nS1,999,pt_1\n", {},
         "x.csv: 3 columns; name the legacy id and the ClinikAPI id columns by header with "
         "from = and to ="),
        ("MRN,patientId\n007,pt_7\n008,P-8\n", {},
         "x.csv, line 3: the target (column 2) is not a ClinikAPI patient id (pt_…); if the "
         "columns are the other way round, name them with from = and to ="),
        ("patientId,MRN\npt_7,007\n", {},
         "x.csv, line 2: the target (column 2) is not a ClinikAPI"),
        ("MRN,patientId\n007,pt_7\n008,P-8\n", {"source": "MRN", "target": "patientId"},
         "x.csv, line 3: the target (column 2) is not a ClinikAPI patient id (pt_…)"),
        ("MRN,patientId\n007,pt_7\n", {"source": "Subject"}, "from = 'Subject': no such column"),
        ("MRN,patientId\n007,pt_7\n007,\n", {}, "x.csv, line 3: a legacy id maps to two"),
        ("Doc,Id\nD1,1\n", {"kind": "id"}, "line 2: the target (column 2) is not a ClinikAPI id"),
    ],
)  # fmt: skip
def test_crosswalk_errors_name_the_file_and_line(
    tmp_path: Path, text: str, keys: dict[str, Any], message: str
) -> None:
    path = tmp_path / "x.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_crosswalk(path, **keys)
    assert message in str(err.value)
    assert "P-8" not in str(err.value)  # ids are PHI
    assert "007" not in str(err.value)


def test_patients_from_to_in_the_mapping(tmp_path: Path) -> None:
    rows = rows_of(
        tmp_path,
        "Subject,scope,category\nS1,treatment,c\nS2,treatment,c\nS3,treatment,c\n",
        "[columns]\npatientId = 'Subject'\n"
        "[patients]\ncrosswalk = 'x.csv'\nfrom = 'Subject'\nto = 'Clinik Patient'\n",
        x_csv="Name,Clinik Patient,Subject\nAnn,pt_1,S1\nBo,,S2\n",
    )
    assert [r.body()["patientId"] for r in rows if r.valid] == ["pt_1"]
    assert verdicts(rows) == [
        (3, "patientId", "unknown_patient"),
        (4, "patientId", "unknown_patient"),
    ]


PATIENTS = "[columns]\npatientId = 'MRN'\n[patients]\ncrosswalk = 'p.csv'\n"
NAMED = PATIENTS + "[crosswalks.docs]\nfile = 'd.csv'\nfrom = 'Legacy Doc'\nto = 'Clinik Id'\n"


@pytest.mark.parametrize(
    ("fields", "expected", "errors"),
    [
        # a named crosswalk feeding performerId
        ("performerId = { column = 'Doc', crosswalk = 'docs' }", ["prac_1", None],
         [(3, "performerId", "unknown_id")]),
        # the performer is the patient: the [patients] crosswalk
        ("performerId = { column = 'MRN', crosswalk = 'patients' }", ["pt_7", "pt_8"], []),
        # a reference list through it too
        ("'provision.data' = { column = 'Doc', crosswalk = 'docs' }", [None, None],
         [(3, "provision.data", "unknown_id")]),
    ],
)  # fmt: skip
def test_named_crosswalks_feed_any_id(
    tmp_path: Path, fields: str, expected: list[str | None], errors: list[tuple[int, str, str]]
) -> None:
    rows = rows_of(
        tmp_path,
        "MRN,scope,category,Doc\n007,treatment,c,D1\n008,treatment,c,D9\n",
        (NAMED if "docs" in fields else PATIENTS) + f"[fields]\n{fields}\n",
        p_csv="MRN,patientId\n007,pt_7\n008,pt_8\n",
        d_csv="Clinik Id,Legacy Doc\nprac_1,D1\n",
    )
    assert verdicts(rows) == errors
    assert checked(tmp_path) == errors
    assert [r.body().get("performerId") if r.valid else None for r in rows] == expected
    if "provision.data" in fields:
        assert rows[0].body()["provision"]["data"] == [{"reference": "prac_1"}]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (NAMED, "[crosswalks.docs]: no spec uses it"),
        (NAMED + "[fields]\nperformerId = { column = 'Doc', crosswalk = 'nurses' }\n",
         "performerId.crosswalk: no table [crosswalks.nurses] (defined: docs)"),
        ("[fields]\nperformerId = { column = 'Doc', crosswalk = 'patients' }\n",
         "'patients' is the [patients] crosswalk, and there is none"),
        ("[fields]\nscope = { column = 'Doc', crosswalk = 'x' }\n", "scope does not hold an id"),
        # a crosswalk feeding patientId holds pt_ ids: checked when it loads
        (NAMED.replace("patientId = 'MRN'", "sourceKey = 'MRN'")
         + "[fields]\npatientId = { column = 'Doc', crosswalk = 'docs' }\n",
         "d.csv, line 2: the target (column 1) is not a ClinikAPI patient id"),
    ],
)  # fmt: skip
def test_named_crosswalk_mistakes(tmp_path: Path, mapping: str, message: str) -> None:
    _, path = setup_files(
        tmp_path,
        "",
        mapping,
        p_csv="MRN,patientId\n007,pt_7\n",
        d_csv="Clinik Id,Legacy Doc\nprac_1,D1\n",
    )
    with pytest.raises(ConfigError) as err:
        load_mapping(path)
    assert message in str(err.value)


def test_over_the_sandbox_crosswalks_by_header_and_a_blank_target(
    tmp_path: Path,
    server: RunningSandbox,
    client: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A three-column patients file by header with one blank target, a named crosswalk for
    the performer: the blank one's rows are unknown_patient, the rest are imported."""
    source, mapping = setup_files(
        tmp_path,
        "Rec,Subject,Type,Doc\nR1,S1,HIPAA,D1\nR2,S2,HIPAA,D1\nR3,S3,Research,D2\nR4,S2,Research,D2\n",
        "[source]\nkey = 'Rec'\n[columns]\npatientId = 'Subject'\nscope = 'Type'\n"
        "[values.scope]\nHIPAA = 'patient-privacy'\nResearch = 'research'\n"
        "[defaults]\ncategory = 'hipaa-notice'\n"
        "[patients]\ncrosswalk = 'subjects.csv'\nfrom = 'Subject'\nto = 'Clinik Patient'\n"
        "[crosswalks.docs]\nfile = 'docs.csv'\nfrom = 'Legacy Doc'\nto = 'Clinik Id'\n"
        "[fields]\nperformerId = { column = 'Doc', crosswalk = 'docs' }\n",
        subjects_csv="Clinik Patient,Name,Subject\npt_1,Ann,S1\n,Bo,S2\npt_3,Cy,S3\n",
        docs_csv="Legacy Doc,Clinik Id\nD1,prac_1\nD2,prac_2\n",
    )
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    monkeypatch.setenv("CLINIKAPI_BASE_URL", server.base_url)
    code, out, err = run_cli(
        ["run", str(source), "--mapping", str(mapping), "--ledger", str(tmp_path / "l.db")],
        capsys,
    )
    assert code == 1, out + err
    assert "2 created" in out
    assert "2 invalid" in out  # R2 and R4: S2's target is blank
    held = {}
    for patient in ("pt_1", "pt_3"):
        [consent] = client.get("/v1/consents", params={"patientId": patient}).json()["data"]
        held[patient] = (consent["scope"], consent["performerId"])
    assert held == {"pt_1": ("patient-privacy", "prac_1"), "pt_3": ("research", "prac_2")}
    everything = client.get("/v1/consents", params={"count": 100}).json()["data"]
    assert len(everything) == 2


# --- point 5: system|code stays one coding ---------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "codings"),
    [
        (f"{ACT_REASON}|HRESCH", [{"system": ACT_REASON, "code": "HRESCH"}]),
        ("TREAT|HPAYMT", [{"code": "TREAT"}, {"code": "HPAYMT"}]),  # codes still split on |
        (f"TREAT;{ACT_REASON}|HRESCH", [{"code": "TREAT"}, HRESCH]),
        (f"TREAT|{ACT_REASON}|HRESCH", [{"code": "TREAT"}, HRESCH]),
        (f"{OID}|ETREAT", [{"system": OID, "code": "ETREAT"}]),
    ],
)  # fmt: skip
def test_v1_purpose_keeps_system_code_as_one_coding(
    tmp_path: Path, cell: str, codings: list[dict[str, str]]
) -> None:
    [row] = rows_of(
        tmp_path, f"patientId,scope,category,purpose\npt_1,research,c,{cell}\n", "[columns]\n"
    )
    assert row.body()["provision"]["purpose"] == codings


@pytest.mark.parametrize(
    ("cell", "categories"),
    [
        ("a|b;c", ["a", "b", "c"]),
        ("http://loinc.org|59284-0", ["http://loinc.org|59284-0"]),  # a pair: not split
        ("hipaa-notice|http://loinc.org|59284-0", ["hipaa-notice", "http://loinc.org|59284-0"]),
        ("hipaa:notice|b", ["hipaa:notice", "b"]),  # a colon alone makes no system
    ],
)
def test_a_category_cell_splits_on_bar_only_outside_a_pair(
    tmp_path: Path, cell: str, categories: list[str]
) -> None:
    [row] = rows_of(tmp_path, f"patientId,scope,category\npt_1,research,{cell}\n", "[columns]\n")
    assert row.body()["category"] == categories


def test_v2_split_on_bar_keeps_system_code(tmp_path: Path) -> None:
    [row] = rows_of(
        tmp_path,
        f"patientId,scope,category,Why\npt_1,research,c,TREAT|{ACT_REASON}|HRESCH\n",
        "[fields]\n'provision.purpose' = { column = 'Why', split = '|' }\n",
    )
    assert row.body()["provision"]["purpose"] == [
        {"code": "TREAT"},
        {"system": ACT_REASON, "code": "HRESCH"},
    ]


def test_a_patient_id_through_its_own_crosswalk_is_not_looked_up_twice(tmp_path: Path) -> None:
    rows = rows_of(
        tmp_path,
        "Subject,scope,category\nS1,treatment,c\nS9,treatment,c\n",
        "[patients]\ncrosswalk = 'p.csv'\n"
        "[crosswalks.subjects]\nfile = 's.csv'\n"
        "[fields]\npatientId = { column = 'Subject', crosswalk = 'subjects' }\n",
        p_csv="MRN,patientId\n007,pt_7\n",
        s_csv="Subject,Patient\nS1,pt_1\n",
    )
    assert rows[0].body()["patientId"] == "pt_1"
    assert verdicts(rows) == [(3, "patientId", "unknown_patient")]
    assert checked(tmp_path) == verdicts(rows)


def test_a_changed_named_crosswalk_changes_the_cells_digest(tmp_path: Path) -> None:
    """A rerun after a crosswalk fix must rebuild its rows, not take them as unchanged."""
    from importer.intake._cells import _cells_digest_key

    keys = []
    for target in ("prac_1", "prac_2"):
        _, path = setup_files(
            tmp_path,
            "",
            "[crosswalks.docs]\nfile = 'd.csv'\n"
            "[fields]\nperformerId = { column = 'Doc', crosswalk = 'docs' }\n",
            d_csv=f"Doc,Id\nD1,{target}\n",
        )
        keys.append(_cells_digest_key(load_mapping(path), ["patientId"], excel=False))
    assert keys[0] != keys[1]
