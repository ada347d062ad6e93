"""The mapping file and the built-in header synonyms."""

from __future__ import annotations

from pathlib import Path

import pytest

from importer._errors import ConfigError
from importer.intake._mapping import Mapping, canonical_header, load_mapping

CANONICAL = ["patientId", "scope", "category"]


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ("patientId", "patientId"),
        ("PATIENT_ID", "patientId"),
        ("Patient", "patientId"),
        ("patient-id", "patientId"),
        ("Consent Scope", "scope"),
        ("categories", "category"),
        ("Consent_Category", "category"),
        ("Signed At", "dateTime"),
        ("consent_date", "dateTime"),
        ("date-time", "dateTime"),
        ("performer_id", "performerId"),
        ("Organization ID", "organizationId"),
        ("policy", "policyUri"),
        ("policy_uri", "policyUri"),
        ("Verified With", "verifiedWith"),
        ("verification_date", "verificationDate"),
        ("Provision Type", "provisionType"),
        ("provision_start", "provisionStart"),
        ("PROVISION-END", "provisionEnd"),
        ("Purpose", "purpose"),
        ("legacy_id", "sourceKey"),
        ("Consent ID", "sourceKey"),
        ("source key", "sourceKey"),
    ],
)
def test_header_synonyms_are_recognised(header: str, field: str) -> None:
    required = {"patientId": "patientId", "scope": "scope", "category": "category"}
    headers = [h for f, h in required.items() if f != field] + [header]
    resolved = Mapping().resolve(headers, "f.csv")
    assert resolved[field] == header


def test_two_columns_for_one_field_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        Mapping().resolve(["patientId", "Patient ID", "scope", "category"], "f.csv")
    assert str(err.value) == (
        "f.csv: columns 'patientId' and 'Patient ID' both look like 'patientId'; "
        "name the right one under [columns] in a mapping file"
    )


def test_a_named_column_beats_a_lookalike() -> None:
    mapping = Mapping(columns={"patientId": "MRN"})
    assert mapping.resolve(["MRN", "patient", "scope", "category"], "f")["patientId"] == "MRN"


def test_canonical_header_ignores_case_spaces_underscores_dashes() -> None:
    assert canonical_header(" Patient_-ID ") == "patientid"


def test_unrecognised_headers_are_ignored() -> None:
    resolved = Mapping().resolve([*CANONICAL, "Notes", "Patient Name"], "f.csv")
    assert set(resolved) == {"patientId", "scope", "category"}


def test_missing_required_field_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        Mapping().resolve(["patientId", "category"], "f.csv")
    assert str(err.value) == (
        "f.csv: no column for required field 'scope' (looked for: scope, consent_scope); "
        "name it under [columns] or give it a value under [defaults]"
    )


def write(tmp_path: Path, text: str, name: str = "map.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_full_mapping_file(tmp_path: Path) -> None:
    (tmp_path / "xwalk.csv").write_text("MRN,patientId\n007,pt_1\n008 , pt_2\n", encoding="utf-8")
    path = write(
        tmp_path,
        """
[source]
sheet = "Consents"
encoding = "cp1252"
delimiter = ";"
key = ["LegacyID", "Site"]
timezone = "America/Chicago"
date_formats = ["%m/%d/%Y"]

[columns]
patientId = "MRN"
scope = "Type"

[values.scope]
" HIPAA " = "patient-privacy"

[values.verified]
"signed" = true

[defaults]
organizationId = "org_main"
category = "hipaa-notice"

[patients]
crosswalk = "xwalk.csv"
""",
    )
    mapping = load_mapping(path)
    assert mapping.source.sheet == "Consents"
    assert mapping.source.encoding == "cp1252"
    assert mapping.source.delimiter == ";"
    assert mapping.key == ("LegacyID", "Site")
    assert str(mapping.timezone) == "America/Chicago"
    assert mapping.date_formats == ("%m/%d/%Y",)
    assert mapping.columns == {"patientId": "MRN", "scope": "Type"}
    assert mapping.values == {"scope": {"hipaa": "patient-privacy"}, "verified": {"signed": True}}
    assert mapping.defaults == {"organizationId": "org_main", "category": "hipaa-notice"}
    assert mapping.crosswalk == {"007": "pt_1", "008": "pt_2"}
    resolved = mapping.resolve(["MRN", "Type", "LegacyID", "Site"], "f.csv")
    # LegacyID also looks like sourceKey; with [source] key set, the key columns rule
    assert resolved == {"patientId": "MRN", "scope": "Type", "sourceKey": "LegacyID"}


def test_sheet_may_be_an_index(tmp_path: Path) -> None:
    assert load_mapping(write(tmp_path, "[source]\nsheet = 1\n")).source.sheet == 1


def test_key_may_be_one_string(tmp_path: Path) -> None:
    assert load_mapping(write(tmp_path, '[source]\nkey = "ID"\n')).key == ("ID",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sources]\n", "unknown key 'sources'"),
        ("[source]\nsheets = 1\n", "[source]: unknown key 'sheets'"),
        ("[columns]\npatient = 'X'\n", "[columns]: unknown key 'patient'"),
        ("[values.colour]\n'a' = 'b'\n", "[values.colour] is not used: no [fields] spec names it"),
        ("[defaults]\nnope = 'x'\n", "[defaults]: unknown key 'nope'"),
        ("[patients]\nfile = 'x.csv'\n", "[patients]: unknown key 'file'"),
        ("[source]\ntimezone = 'Mars/Olympus'\n", "unknown timezone 'Mars/Olympus'"),
        ("[source]\nencoding = 'klingon'\n", "unknown encoding 'klingon'"),
        ("[source]\nsheet = -1\n", "'sheet' must be a sheet name or a 0-based index"),
        ("[source]\ndate_formats = '%Y'\n", "'date_formats' must be a list of non-empty strings"),
        ("[columns]\nscope = 3\n", "'columns.scope' must be a non-empty string"),
        ("[values.scope]\n'a' = true\n", "[values.scope] 'scope' values must be a string"),
        ("[defaults]\nverified = 1\n", "'verified' values must be a string or a boolean"),
        ("[patients]\ncrosswalk = 'missing.csv'\n", "crosswalk file"),
        ("this is = = not toml", "is not valid TOML"),
    ],
)
def test_bad_mapping_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        load_mapping(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mapping file .*nope\.toml: no such file"):
        load_mapping(tmp_path / "nope.toml")


def test_mapping_naming_a_missing_column(tmp_path: Path) -> None:
    mapping = load_mapping(write(tmp_path, "[columns]\npatientId = 'MRN'\n"))
    with pytest.raises(ConfigError) as err:
        mapping.resolve(["patient", "scope", "category"], "x.csv")
    assert str(err.value) == (
        "x.csv: the mapping names column 'MRN', which the file does not have "
        "(its header row has 3 columns; check the name's spelling, and that the file has a "
        "header row)"
    )


def test_a_missing_column_message_never_echoes_the_header_cells(tmp_path: Path) -> None:
    # A file without a header row: its "header" is the first patient's row.
    mapping = load_mapping(write(tmp_path, "[columns]\npatientId = 'MRN'\n"))
    with pytest.raises(ConfigError) as err:
        mapping.resolve(["MRN-004417", "Jane Doe", "treatment", "Y"], "x.csv")
    assert "has 4 columns" in str(err.value)
    for cell in ("MRN-004417", "Jane Doe", "treatment"):
        assert cell not in str(err.value)


def test_key_column_must_exist(tmp_path: Path) -> None:
    mapping = load_mapping(write(tmp_path, "[source]\nkey = ['LegacyID']\n"))
    with pytest.raises(ConfigError, match="names column 'LegacyID'"):
        mapping.resolve(CANONICAL, "x.csv")


@pytest.mark.parametrize(
    ("crosswalk", "message"),
    [
        ("MRN,patientId\n", "has no rows"),
        ("MRN,patientId\n007\n", "line 2: 1 cell, the header has 2"),
        ("MRN,patientId\n007,pt_1\n007,pt_2\n", "line 3: a legacy id maps to two different"),
    ],
)
def test_bad_crosswalks(tmp_path: Path, crosswalk: str, message: str) -> None:
    (tmp_path / "x.csv").write_text(crosswalk, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_mapping(write(tmp_path, "[patients]\ncrosswalk = 'x.csv'\n"))


def test_crosswalk_path_is_relative_to_the_mapping_file(tmp_path: Path) -> None:
    sub = tmp_path / "maps"
    sub.mkdir()
    (sub / "x.csv").write_text("\ufeffMRN,patientId\n1,pt_1\n\n", encoding="utf-8")
    assert load_mapping(write(sub, "[patients]\ncrosswalk = 'x.csv'\n")).crosswalk == {"1": "pt_1"}
