"""From cells to API bodies: value maps, defaults, dates, booleans, crosswalk, keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from importer._keys import natural_key, source_key
from importer._rows import Row
from importer.intake._mapping import load_mapping
from importer.intake._normalize import Normalizer
from importer.intake._reader import open_table

HEAD = "patientId,scope,category"


def rows_of(tmp_path: Path, csv_text: str, mapping: str | None = None) -> list[Row]:
    source = tmp_path / "in.csv"
    source.write_text(csv_text, encoding="utf-8")
    path = None
    if mapping is not None:
        path = tmp_path / "map.toml"
        path.write_text(mapping, encoding="utf-8")
    the_mapping = load_mapping(path)
    return list(Normalizer(the_mapping).rows(open_table(source, the_mapping.source)))


def body(row: Row) -> dict[str, Any]:
    assert row.valid, row.errors
    return row.body()


def errors(row: Row) -> list[tuple[str, str]]:
    return [(e.field, e.code) for e in row.errors]


def test_full_row_gives_the_exact_api_body(tmp_path: Path) -> None:
    [row] = rows_of(
        tmp_path,
        "sourceKey,patientId,scope,category,status,dateTime,performerId,organizationId,"
        "policyUri,verified,verifiedWith,verificationDate,provisionType,provisionStart,"
        "provisionEnd,purpose\n"
        "K1, pt_1 ,treatment,a;b|c,active,2024-03-05T14:30:00-06:00,pt_1,org_1,"
        "https://p/1,Y,pt_1,2024-03-05T15:00:00Z,permit,2024-03-05T00:00:00Z,"
        "2025-03-05T00:00:00Z,TREAT|HPAYMT\n",
    )
    assert row.source_key == "K1"
    assert body(row) == {
        "patientId": "pt_1",
        "scope": "treatment",
        "category": ["a", "b", "c"],
        "status": "active",
        "dateTime": "2024-03-05T14:30:00-06:00",
        "performerId": "pt_1",
        "organizationId": "org_1",
        "policyUri": "https://p/1",
        "verification": {
            "verified": True,
            "verifiedWith": "pt_1",
            "verificationDate": "2024-03-05T15:00:00Z",
        },
        "provision": {
            "type": "permit",
            "period": {"start": "2024-03-05T00:00:00Z", "end": "2025-03-05T00:00:00Z"},
            "purpose": [{"code": "TREAT"}, {"code": "HPAYMT"}],
        },
    }
    assert json.loads(row.body_json) == row.body()
    assert len(row.body_hash) == 64


@pytest.mark.parametrize(
    ("cell", "verified"),
    [
        ("Y", True),
        ("n", False),
        ("Yes", True),
        ("NO", False),
        ("true", True),
        ("False", False),
        ("1", True),
        ("0", False),
        (" y ", True),
    ],
)
def test_booleans(tmp_path: Path, cell: str, verified: bool) -> None:
    [row] = rows_of(tmp_path, f"{HEAD},verified\npt_1,treatment,c,{cell}\n")
    assert body(row)["verification"] == {"verified": verified}


def test_a_bad_boolean_is_a_row_error(tmp_path: Path) -> None:
    [row] = rows_of(tmp_path, f"{HEAD},verified\npt_1,treatment,c,maybe\n")
    assert errors(row) == [("verified", "invalid_boolean")]


@pytest.mark.parametrize(
    ("cell", "mapping", "expected"),
    [
        ("2024-03-05T14:30:00Z", "", "2024-03-05T14:30:00Z"),
        ("2024-03-05T14:30:00+02:00", "", "2024-03-05T14:30:00+02:00"),
        # naive: in the zone stated (UTC is a statement; none stops: tests/test_time_zones.py)
        ("2024-03-05 14:30", "[source]\ntimezone='UTC'\n", "2024-03-05T14:30:00Z"),
        ("2024-03-05", "", "2024-03-05T00:00:00Z"),  # a date alone: UTC when none is stated
        # naive with a timezone: Chicago is UTC-6 in March before DST, UTC-5 in July
        (
            "2024-03-05T14:30:00",
            "[source]\ntimezone='America/Chicago'\n",
            "2024-03-05T14:30:00-06:00",
        ),
        (
            "2024-07-05T14:30:00",
            "[source]\ntimezone='America/Chicago'\n",
            "2024-07-05T14:30:00-05:00",
        ),
        # an explicit offset wins over the mapping's timezone
        ("2024-07-05T14:30:00Z", "[source]\ntimezone='America/Chicago'\n", "2024-07-05T14:30:00Z"),
        (
            "03/05/2024 02:30 PM",
            "[source]\ntimezone='UTC'\ndate_formats=['%m/%d/%Y %I:%M %p']\n",
            "2024-03-05T14:30:00Z",
        ),
        (
            "03/05/2024",
            "[source]\ndate_formats=['%m/%d/%Y %I:%M %p', '%m/%d/%Y']\n",
            "2024-03-05T00:00:00Z",
        ),
    ],
)
def test_dates(tmp_path: Path, cell: str, mapping: str, expected: str) -> None:
    [row] = rows_of(tmp_path, f"{HEAD},dateTime\npt_1,treatment,c,{cell}\n", mapping or None)
    assert body(row)["dateTime"] == expected


@pytest.mark.parametrize("cell", ["2024-13-01", "yesterday", "31/02/2023", "2024-02-30T10:00Z"])
def test_bad_dates_are_invalid_date(tmp_path: Path, cell: str) -> None:
    [row] = rows_of(tmp_path, f"{HEAD},signed_at\npt_1,treatment,c,{cell}\n")
    assert errors(row) == [("dateTime", "invalid_date")]
    assert row.errors[0].message.startswith("dateTime (column 'signed_at'): ")
    assert cell not in row.errors[0].message


def test_value_maps_are_trimmed_and_case_insensitive(tmp_path: Path) -> None:
    rows = rows_of(
        tmp_path,
        "MRN,Type,Status\npt_1,  hipaa ,SIGNED\npt_2,Research,revoked\npt_3,treatment,active\n",
        "[columns]\npatientId='MRN'\nscope='Type'\ncategory='Type'\nstatus='Status'\n"
        "[values.scope]\nHIPAA='patient-privacy'\nresearch='research'\nunmapped='keep'\n"
        "[values.category]\nHIPAA='hipaa-notice'\nunmapped='keep'\n"
        "[values.status]\nSigned='active'\nRevoked='inactive'\nunmapped='keep'\n",
    )
    assert [(b["scope"], b["category"], b["status"]) for b in map(body, rows)] == [
        ("patient-privacy", ["hipaa-notice"], "active"),
        ("research", ["Research"], "inactive"),
        # values the map lacks pass through with unmapped = "keep" (else unmapped_value:
        # tests/test_values.py)
        ("treatment", ["treatment"], "active"),
    ]


@pytest.mark.parametrize(
    ("cell", "categories"),
    [
        ("Surgery", ["surgical-consent"]),
        ("HIPAA;Surgery", ["hipaa-notice", "surgical-consent"]),  # each code translated
        ("surgery | other", ["surgical-consent", "other"]),  # one not in the map stays
        ("Both", ["treatment-consent", "hipaa-notice"]),  # a whole cell may map to two
        ("Surgery;Both", ["surgical-consent", "treatment-consent", "hipaa-notice"]),
        ("Surgery;HIPAA ", ["hipaa-notice", "surgical-consent"]),  # the whole cell's own entry
    ],
)
def test_multi_value_cells_are_translated_code_by_code(
    tmp_path: Path, cell: str, categories: list[str]
) -> None:
    [row] = rows_of(
        tmp_path,
        f"patientId,scope,Kinds\npt_1,treatment,{cell}\n",
        "[columns]\ncategory='Kinds'\n"
        "[values.category]\nSurgery='surgical-consent'\nHIPAA='hipaa-notice'\n"
        "Both='treatment-consent;hipaa-notice'\n'Surgery;HIPAA'='hipaa-notice|surgical-consent'\n"
        "unmapped='keep'\n",  # "other" passes as it is
    )
    assert body(row)["category"] == categories


def test_boolean_value_maps(tmp_path: Path) -> None:
    [row] = rows_of(
        tmp_path,
        f"{HEAD},verified\npt_1,treatment,c,Witnessed\n",
        "[values.verified]\nwitnessed=true\n",
    )
    assert body(row)["verification"] == {"verified": True}


def test_defaults_fill_empty_cells_only(tmp_path: Path) -> None:
    rows = rows_of(
        tmp_path,
        f"{HEAD},organizationId\npt_1,treatment,c,\npt_2,treatment,c,org_x\n",
        "[defaults]\norganizationId='org_main'\nstatus='active'\n",
    )
    assert [(b["organizationId"], b["status"]) for b in map(body, rows)] == [
        ("org_main", "active"),
        ("org_x", "active"),
    ]


def test_crosswalk(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("MRN,patientId\n007,pt_7\n", encoding="utf-8")
    rows = rows_of(
        tmp_path,
        "MRN,scope,category\n007,treatment,c\n008,treatment,c\n",
        "[columns]\npatientId='MRN'\n[patients]\ncrosswalk='x.csv'\n",
    )
    assert body(rows[0])["patientId"] == "pt_7"  # leading zeros matter and are kept
    assert errors(rows[1]) == [("patientId", "unknown_patient")]
    assert "008" not in rows[1].errors[0].message


def test_source_key_from_key_columns(tmp_path: Path) -> None:
    rows = rows_of(
        tmp_path,
        f"Site,ID,{HEAD}\nA,1,pt_1,treatment,c\nA,,pt_2,treatment,c\n",
        "[source]\nkey=['Site','ID']\n",
    )
    assert rows[0].source_key == "A|1"
    assert errors(rows[1]) == [("sourceKey", "missing_required")]


def test_source_key_defaults_to_the_identity_cells(tmp_path: Path) -> None:
    # Issue 10 changed the default from a hash of the whole body (an edit made a new key),
    # issue 20 from the natural identity (a mapping fix made a new key).
    rows = rows_of(tmp_path, f"{HEAD}\npt_1,treatment,c\npt_2,treatment,c\n")
    assert rows[0].source_key == source_key("pt_1", "treatment", "c", "")
    assert rows[0].source_key != rows[1].source_key


def test_a_ledger_made_with_natural_keys_keeps_them(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f"{HEAD}\npt_1,treatment,c\n", encoding="utf-8")
    mapping = load_mapping(None)
    normalizer = Normalizer(mapping)
    normalizer.natural_keys = True
    [row] = normalizer.rows(open_table(source, mapping.source))
    assert row.source_key == natural_key("pt_1", "treatment", ["c"], None)
    assert normalizer.key_kind == "natural"


def test_a_ledger_made_before_natural_keys_keeps_the_body_hash(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f"{HEAD}\npt_1,treatment,c\n", encoding="utf-8")
    mapping = load_mapping(None)
    normalizer = Normalizer(mapping, content_keys=True)
    [row] = normalizer.rows(open_table(source, mapping.source))
    assert row.source_key == "sha256:" + row.body_hash[:32]
    assert normalizer.key_kind == "content hash"


@pytest.mark.parametrize(
    ("system", "expected"),
    [(None, "K1"), ("clinic_a", "clinic_a\x1fK1")],
)
def test_a_source_system_namespaces_its_keys(
    tmp_path: Path, system: str | None, expected: str
) -> None:
    mapping = f'[source]\nsystem = "{system}"\n' if system else ""
    [row] = rows_of(tmp_path, "sourceKey,patientId,scope,category\nK1,pt_1,treatment,c\n", mapping)
    assert row.source_key == expected


@pytest.mark.parametrize(
    ("csv_text", "field", "duplicate_of"),
    [
        # the same key column value twice
        (
            "sourceKey,patientId,scope,category\nK,pt_1,treatment,c\nK,pt_2,treatment,c\n",
            "sourceKey",
            "row 2",
        ),
        # no key column: two rows of one consent (natural identity), named as such
        (
            "patientId,scope,category\npt_1,treatment,c\npt_1,treatment,c\n",
            "patientId/scope/category/dateTime",
            "row 2 (the row's identity without a key column)",
        ),
    ],
)
def test_duplicate_rows(tmp_path: Path, csv_text: str, field: str, duplicate_of: str) -> None:
    first, second = rows_of(tmp_path, csv_text)
    assert first.valid
    assert errors(second) == [(field, "duplicate_row")]
    assert duplicate_of in second.errors[0].message


def test_duplicates_are_found_across_files(tmp_path: Path) -> None:
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("sourceKey,patientId,scope,category\nK,pt_1,treatment,c\n")
    normalizer = Normalizer(load_mapping(None))
    rows = [r for n in ("a.csv", "b.csv") for r in normalizer.rows(open_table(tmp_path / n))]
    assert errors(rows[1]) == [("sourceKey", "duplicate_row")]
    assert "a.csv row 2" in rows[1].errors[0].message


@pytest.mark.parametrize(
    ("extra_header", "cell", "field", "code"),
    [
        ("scope2", "x", None, None),  # unknown columns are ignored
        ("status", "maybe", "status", "invalid_enum"),
        ("provisionType", "allow", "provisionType", "invalid_enum"),
        ("performerId", "bad id!", "performerId", "invalid_id"),
        ("verificationDate", "soon", "verificationDate", "invalid_date"),
    ],
)
def test_rule_table(
    tmp_path: Path, extra_header: str, cell: str, field: str | None, code: str | None
) -> None:
    [row] = rows_of(tmp_path, f"{HEAD},{extra_header}\npt_1,treatment,c,{cell}\n")
    assert errors(row) == ([] if field is None else [(field, code)])
    for error in row.errors:
        assert error.message.startswith(f"{field}")
        assert cell not in error.message


def test_period_order(tmp_path: Path) -> None:
    [row] = rows_of(
        tmp_path, f"{HEAD},provisionStart,provisionEnd\npt_1,treatment,c,2025-01-02,2025-01-01\n"
    )
    assert errors(row) == [("provisionEnd", "period_order")]


@pytest.mark.parametrize(
    ("cells", "missing"),
    [
        ("pt_1,,c", "scope"),
        (",treatment,c", "patientId"),
        ("pt_1,treatment,", "category"),
        ("pt_1,treatment, ; |", "category"),
    ],
)
def test_missing_required(tmp_path: Path, cells: str, missing: str) -> None:
    [row] = rows_of(tmp_path, f"{HEAD}\n{cells}\n")
    assert (missing, "missing_required") in errors(row)


def test_row_numbers_follow_the_spreadsheet(tmp_path: Path) -> None:
    rows = rows_of(tmp_path, f'{HEAD},notes\npt_1,treatment,c,"two\nlines"\n\npt_2,bad,c,\n')
    assert [(r.row, r.valid) for r in rows] == [(2, True), (4, False)]


def test_reprs_hold_no_cell_key_or_body(tmp_path: Path) -> None:
    [row] = rows_of(tmp_path, f"sourceKey,{HEAD}\nK-secret,pt_secret,treatment,c\n")
    assert row.valid
    assert row.body_json  # made, so the repr could show it
    text = repr(row)
    assert "secret" not in text
    assert "in.csv" in text  # where the row is still shows


def test_a_rows_field_hashes_are_made_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run asks when it decides and when it records: one parse and hashing a row."""
    from importer import _rows

    made: list[int] = []
    real = _rows.body_field_hashes
    monkeypatch.setattr(_rows, "body_field_hashes", lambda body: made.append(1) or real(body))
    row = _rows.Row("in.csv", 2, "k", _json='{"status":"active","scope":"research"}')
    first = row.field_hashes()
    first["status"] = "changed by a caller"
    assert row.field_hashes() == real({"status": "active", "scope": "research"})
    assert len(made) == 1
