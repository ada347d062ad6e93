"""The column-wise proof of validity agrees with the full path (body + pydantic), row by row.

`validate` trusts `proven_valid` for the rows it passes and sends only the rest through the
models. These tests feed both paths the same randomised rows, full of the edge cases an
export holds, under several mappings, and require the same verdict and the same errors.
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from importer.intake._fastcheck import KNOWN_FIELDS, _ids, proven_valid
from importer.intake._mapping import FIELDS, Mapping, load_mapping
from importer.intake._models import ID_PATTERN, PATIENT_ID_PATTERN
from importer.intake._normalize import Normalizer
from importer.intake._reader import Table, open_table
from tests.zones import with_zone

#: Every row field, as a column of the same name.
HEADERS = list(FIELDS)
LONG_ID = "a" * 128
IDS = ["pt_1", "PT-2.x", LONG_ID, "", " ", LONG_ID + "a", "pt 1", "pt/1", "ptä", "١٢", "=1+2"]
DATES = [
    "2024-03-05T14:30:00Z",
    "2024-03-05T14:30:00+05:30",
    "2024-03-05 14:30",
    "2024-03-05",
    "",
    "2024-02-30",
    "03/05/2024 2:30 PM",
    "45000",
    "1700000000",
    "2024-13-01T00:00:00Z",
    "yesterday",
    "2024-03-05T14:30:00.123456-08:00",
]
VALUES: dict[str, list[str]] = {
    "sourceKey": ["K{n}", "K{n}", "K{n}", "K1", "", " "],
    "patientId": [*IDS, "legacy-1", "legacy-2", "legacy-404"],
    "scope": ["treatment", "research", "adr", "patient-privacy", "Treatment", "", "nope"],
    "category": ["a", "a;b|c", " a ; ", ";", "; ;", "|\u2003;", ";\x1c|", "", "a;a", "١"],
    "status": ["active", "draft", "inactive", "", "ACTIVE", "signed", "revoked"],
    "dateTime": DATES,
    "performerId": IDS,
    "organizationId": IDS,
    "policyUri": ["https://p/1", "", " ", "x"],
    "policyRule": ["rule", ""],
    "sourceReferenceId": IDS,
    "verified": ["Y", "n", "Yes", "FALSE", "1", "0", "", "maybe", "t", "F"],
    "verifiedWith": IDS,
    "verificationDate": DATES,
    "provisionType": ["permit", "deny", "", "Permit", "allow"],
    "provisionStart": [*DATES, "2030-01-01T00:00:00Z"],
    "provisionEnd": [*DATES, "2020-01-01T00:00:00Z"],
    "purpose": ["TREAT", "TREAT|HPAYMT", "", ";", " | "],
}
#: Most rows should be valid, as in a real export; each field is bad in a few of them.
GOOD: dict[str, list[str]] = {
    "scope": ["treatment", "research"],
    "category": ["a", "a;b|c"],
    "status": ["active", ""],
    "dateTime": ["2024-03-05T14:30:00Z", "2024-03-05", ""],
    "verified": ["Y", "N", ""],
    "verificationDate": ["2024-03-05", ""],
    "provisionStart": ["2024-01-01", ""],
    "provisionEnd": ["2030-12-31", ""],
}

MAPPINGS = {
    "canonical": "",
    "two-column key": '[source]\nkey = ["sourceKey", "patientId"]\n',
    "unkeyed": None,  # the sourceKey column is dropped from the file
    "values, defaults, zone, formats": """
[source]
timezone = "America/Chicago"
date_formats = ["%m/%d/%Y %I:%M %p"]
[values.scope]
"Treatment" = "treatment"
unmapped = "keep"   # the API's own values pass as they are
[values.status]
signed = "active"
revoked = "inactive"
unmapped = "keep"
[values.verified]
"maybe" = false
unmapped = "keep"
[defaults]
status = "proposed"
scope = "patient-privacy"
provisionType = "permit"
""",
    "crosswalk": '[patients]\ncrosswalk = "xwalk.csv"\n',
    # Every value listed: an unlisted one (nope, ACTIVE, maybe...) is unmapped_value.
    "strict values": """
[values.scope]
"treatment" = "treatment"
"research" = "research"
"Treatment" = "treatment"
"adr" = "adr"
"patient-privacy" = "patient-privacy"
[values.status]
"active" = "active"
"signed" = "active"
"inactive" = "inactive"
"revoked" = "inactive"
"draft" = "draft"
[values.category]
"a" = "a"
"b" = "b"
"c" = "c"
""",
}


def write_rows(path: Path, count: int, seed: int, headers: list[str]) -> None:
    rng = random.Random(seed)
    good = GOOD
    if "sourceKey" not in headers:
        # Keyed by natural identity: as in a real export, most rows are distinct consents.
        good = {**GOOD, "patientId": ["pt_{n}"]}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(headers)
        for n in range(count):
            row = []
            for name in headers:
                pool = VALUES[name] if rng.random() < 0.08 else good.get(name, VALUES[name][:3])
                row.append(rng.choice(pool).format(n=n))
            writer.writerow(row)


def setup(tmp_path: Path, name: str, rows: int = 3000, seed: int = 7) -> tuple[Mapping, Path]:
    text = MAPPINGS[name]
    headers = [h for h in HEADERS if not (text is None and h == "sourceKey")]
    source = tmp_path / "in.csv"
    write_rows(source, rows, seed, headers)
    map_path = tmp_path / "map.toml"
    map_path.write_text(with_zone(text), encoding="utf-8")
    (tmp_path / "xwalk.csv").write_text(
        "legacy,patientId\nlegacy-1,pt_1\nlegacy-2,\npt_1,pt_1\n", encoding="utf-8"
    )
    return load_mapping(map_path), source


def table(mapping: Mapping, source: Path, chunk_rows: int = 500) -> Table:
    return open_table(source, mapping.source, chunk_rows=chunk_rows)


def verdicts_by_full_path(mapping: Mapping, source: Path) -> list[tuple[int, list[str]]]:
    rows = Normalizer(mapping).rows(table(mapping, source))
    return [
        (r.row, [f"{e.field}/{e.code}/{e.message}" for e in r.errors]) for r in rows if r.errors
    ]


def verdicts_by_check(mapping: Mapping, source: Path) -> tuple[int, list[tuple[int, list[str]]]]:
    count, invalid = 0, []
    for batch in Normalizer(mapping).check(table(mapping, source)):
        count += batch.rows
        invalid += [
            (r.row, [f"{e.field}/{e.code}/{e.message}" for e in r.errors]) for r in batch.invalid
        ]
    return count, invalid


def test_every_row_field_has_a_proof() -> None:
    assert set(FIELDS) == KNOWN_FIELDS


@pytest.mark.parametrize("name", list(MAPPINGS))
@pytest.mark.parametrize("seed", [7, 8])
def test_check_reports_exactly_the_full_paths_errors(tmp_path: Path, name: str, seed: int) -> None:
    mapping, source = setup(tmp_path, name, seed=seed)
    expected = verdicts_by_full_path(mapping, source)
    count, found = verdicts_by_check(mapping, source)
    assert count == 3000
    assert found == expected
    # The data holds both kinds in numbers, so the comparison means something.
    assert 300 < len(expected) < 2700


@pytest.mark.parametrize(
    "name", ["canonical", "crosswalk", "values, defaults, zone, formats", "strict values"]
)
def test_rows_it_proves_valid_are_valid_and_it_proves_most(tmp_path: Path, name: str) -> None:
    mapping, source = setup(tmp_path, name)
    the_table = table(mapping, source, chunk_rows=100_000)
    file_rows = Normalizer(mapping).file_normalizer(the_table)
    [chunk] = list(the_table.chunks())
    _, _, prepared, keys = file_rows._prepare(chunk)
    assert file_rows.keyed
    proven = proven_valid(
        prepared, keys, parse_date=file_rows.parse_date, crosswalk=mapping.crosswalk
    )
    valid = np.array([row.valid for row in file_rows.normalize(chunk)])
    assert not (proven & ~valid).any(), "a row proven valid fails the models"
    # Narrower than the models, but not by much: else validate is slow for nothing.
    assert proven.sum() >= 0.95 * valid.sum()


def test_a_proven_row_repeating_a_key_of_an_earlier_chunk_is_reported_with_its_cells(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.csv"
    lines = [f"K{n},pt_{n},treatment,a" for n in range(1200)] + ["K3,pt_x,research,b"]
    source.write_text("sourceKey,patientId,scope,category\n" + "\n".join(lines) + "\n")
    mapping = load_mapping(None)
    batches = list(Normalizer(mapping).check(table(mapping, source)))
    assert [b.rows for b in batches] == [500, 500, 201]
    [row] = [r for b in batches for r in b.invalid]
    assert (row.row, row.source_key) == (1202, "K3")
    assert row.cells == {
        "sourceKey": "K3",
        "patientId": "pt_x",
        "scope": "research",
        "category": "b",
    }
    assert [(e.code, e.message) for e in row.errors] == [
        (
            "duplicate_row",
            "sourceKey: same source key as row 5; a row is imported once (duplicate_row)",
        )
    ]


@pytest.mark.parametrize("seed", [7, 8])
def test_both_paths_give_an_unkeyed_row_the_same_natural_key(tmp_path: Path, seed: int) -> None:
    mapping, source = setup(tmp_path, "unkeyed", seed=seed)
    full = {
        r.row: r.source_key
        for r in Normalizer(mapping).rows(table(mapping, source))
        if r.valid or [e.code for e in r.errors] == ["duplicate_row"]
    }
    the_table = table(mapping, source)
    file_rows = Normalizer(mapping).file_normalizer(the_table)
    compared = 0
    for chunk in the_table.chunks():
        checked = file_rows.check(chunk)
        for number, key in zip(chunk.index.tolist(), checked.keys, strict=True):
            if number in full:
                assert key == full[number], number
                compared += 1
    assert compared > 1000  # about 40% of the random rows are valid


_ID_ALPHABET = "aZ09._-pt_ \n\x00é/"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(alphabet=_ID_ALPHABET, max_size=6)
        | st.sampled_from(["pt_1", "x" * 129, "pt_" + "a" * 126]),
        max_size=8,
    )
)
def test_whole_column_id_proofs_agree_with_the_models_rules(values: list[str]) -> None:
    """`_ids` judges a column at once; it must say "all pass" exactly when each cell
    passes the models' rule (issue 24: the column proofs at C speed)."""
    patient = re.compile(PATIENT_ID_PATTERN)
    ident = re.compile(ID_PATTERN)
    assert _ids(values, prefix="pt_", shortest=4, longest=128) == all(
        patient.fullmatch(v) for v in values
    )
    assert _ids(values, shortest=0, longest=128) == all(not v or ident.fullmatch(v) for v in values)
