"""sample_data/ gives exactly the row errors its README lists, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from importer.commands._validate import validate_files
from importer.intake._mapping import load_mapping

SAMPLES = Path(__file__).parent.parent / "sample_data"
SETS = {
    "consents.csv": None,
    "legacy_ehr/consents_export.csv": "legacy_ehr/mapping.toml",
    "clinic_consents.xlsx": "clinic_consents.toml",
    "registry/registry_export.csv": "registry/mapping.toml",
    "fhir/consent_manager_bundle.json": "fhir/mapping.toml",
    "fhir/bulk_export.ndjson": "fhir/mapping.toml",
}


def documented_errors() -> set[tuple[str, int, str, str]]:
    text = (SAMPLES / "README.md").read_text(encoding="utf-8")
    table = text.split("## The deliberately invalid rows", 1)[1]
    rows = re.findall(r"^\| (\S+) \| (\d+) \| ([\w.]+) \| (\w+) \|", table, flags=re.M)
    return {(file, int(row), field, code) for file, row, field, code in rows}


@pytest.mark.parametrize(("name", "mapping"), SETS.items())
def test_sample_errors_match_the_readme(name: str, mapping: str | None) -> None:
    summary = validate_files([SAMPLES / name], load_mapping(SAMPLES / mapping if mapping else None))
    found = {(name, e.row, e.field, e.code) for e in summary.errors}
    expected = {e for e in documented_errors() if e[0] == name}
    assert expected
    assert found == expected
    invalid_consents = {(e.row, e.consent) for e in summary.errors}
    assert summary.valid == summary.rows - len(invalid_consents)


def test_the_legacy_error_csv_feeds_back_with_its_own_mapping(tmp_path: Path) -> None:
    """The CSV of invalid rows is UTF-8 with ',' while the export is cp1252 with ';':
    once fixed, it still reads with the export's mapping."""
    mapping = load_mapping(SAMPLES / "legacy_ehr/mapping.toml")
    report = tmp_path / "errors.csv"
    validate_files([SAMPLES / "legacy_ehr/consents_export.csv"], mapping, [str(report)])
    fixed = (
        report.read_text(encoding="utf-8-sig")
        .replace("0099999", "0000001")
        .replace("Photo Release", "HIPAA Notice")
        .replace("31/02/2023", "02/28/2023")
        .replace("Maybe", "Signed")
    )
    (tmp_path / "fixed.csv").write_text("\ufeff" + fixed, encoding="utf-8")
    summary = validate_files([tmp_path / "fixed.csv"], mapping)
    assert (summary.rows, summary.valid, summary.errors) == (4, 4, [])
