"""`preview` and `init` end to end, through the CLI."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli

SAMPLES = Path(__file__).parent.parent / "sample_data"
REGISTRY = SAMPLES / "registry"


def fill_zone(mapping: Path, zone: str = "UTC") -> None:
    """Set the zone init leaves as TODO (a mapping with `timezone = "TODO"` is refused)."""
    text = mapping.read_text(encoding="utf-8")
    mapping.write_text(text.replace('timezone = "TODO"', f'timezone = "{zone}"'), encoding="utf-8")


def bodies(out: str) -> list[dict[str, object]]:
    """The JSON bodies in preview's output, in order."""
    decoder = json.JSONDecoder()
    found = []
    position = out.find("{")
    while position >= 0:
        body, end = decoder.raw_decode(out, position)
        found.append(body)
        position = out.find("{", end)
    return found


def test_preview_prints_the_bodies_of_one_row_with_two_consents(
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = REGISTRY / "registry_export.csv"
    args = ["preview", str(source), "--mapping", str(REGISTRY / "mapping.toml"), "--row", "4"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    assert f"{source}:4#research  valid; run would send:" in out
    assert f"{source}:4#hipaa  valid; run would send:" in out
    research, hipaa = bodies(out)
    assert research["scope"] == "research"
    assert research["provision"]["provision"][0]["type"] == "deny"  # type: ignore[index]
    assert hipaa["scope"] == "patient-privacy"
    assert "provision" not in hipaa


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--rows", "1"], 0, ["registry_export.csv:4#research", "registry_export.csv:4#hipaa"]),
        (["--row", "16"], 1, ["registry_export.csv:16#research  invalid:", "(unmapped_value)"]),
        # a visit: the filter says which
        (["--row", "6"], 1, ["row 6 is skipped: filter[1] does not hold"]),
    ],
)
def test_preview_rows_errors_and_skipped_rows(
    capsys: pytest.CaptureFixture[str], args: list[str], code: int, expected: list[str]
) -> None:
    source = REGISTRY / "registry_export.csv"
    got, out, _ = run_cli(
        ["preview", str(source), "--mapping", str(REGISTRY / "mapping.toml"), *args], capsys
    )
    assert got == code
    for text in expected:
        assert text in out
    if args == ["--rows", "1"]:
        assert ":5" not in out


def test_preview_never_calls_the_api(capsys: pytest.CaptureFixture[str]) -> None:
    # No key, no URL: preview needs neither.
    code, _, err = run_cli(["preview", str(SAMPLES / "consents.csv"), "--rows", "2"], capsys)
    assert code == 0
    assert err == ""


@pytest.mark.parametrize(
    "name",
    [
        "consents.csv",
        "legacy_ehr/consents_export.csv",
        "clinic_consents.xlsx",
        "registry/registry_export.csv",
    ],
)
def test_init_writes_a_mapping_that_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    output = tmp_path / "mapping.toml"
    code, out, _ = run_cli(["init", str(SAMPLES / name), "--output", str(output)], capsys)
    assert code == 0
    assert f"Wrote {output}" in out
    code, _, err = run_cli(["validate", str(SAMPLES / name), "--mapping", str(output)], capsys)
    # init saw naive times: the zone is a TODO, and the mapping stops until it is set
    assert code == 2, err
    assert "timezone" in err
    assert "TODO" in err
    fill_zone(output)
    code, _, err = run_cli(["validate", str(SAMPLES / name), "--mapping", str(output)], capsys)
    assert code in (0, 1), err


def test_init_on_the_legacy_export_finds_how_to_read_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "mapping.toml"
    run_cli(
        ["init", str(SAMPLES / "legacy_ehr/consents_export.csv"), "--output", str(output)], capsys
    )
    doc = tomllib.loads(output.read_text(encoding="utf-8"))
    assert "encoding" not in doc["source"]  # detected, so a UTF-8 night is read too
    assert '# encoding = "cp1252"   # detected' in output.read_text(encoding="utf-8")
    assert doc["source"]["delimiter"] == ";"
    assert doc["source"]["date_formats"] == ["%m/%d/%Y %I:%M %p"]
    assert doc["columns"]["scope"] == "Consent Type"
    assert doc["columns"]["status"] == "Consent Status"
    assert doc["values"]["scope"] == {}  # nothing translated until a person says so
    text = output.read_text(encoding="utf-8")
    for value in ("General Treatment", "Research Study", "Surgery", "HIPAA Notice"):
        assert f'# "{value}" = TODO' in text  # listed, to fill in
    for status in ("signed", "Revoked", "Pending", "Maybe"):
        assert f'# "{status}" = TODO' in text
    assert '# ? = "Witness"' in text


def test_init_finds_title_lines_above_the_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "mapping.toml"
    run_cli(["init", str(REGISTRY / "registry_export.csv"), "--output", str(output)], capsys)
    doc = tomllib.loads(output.read_text(encoding="utf-8"))
    assert doc["source"]["header_row"] == 3
    assert doc["source"]["delimiter"] == ","


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "mapping.toml"
    output.write_text("# mine\n", encoding="utf-8")
    code, _, err = run_cli(["init", str(SAMPLES / "consents.csv"), "--output", str(output)], capsys)
    assert code == 2
    assert "already exists; init never overwrites a file; choose another --output name" in err
    assert "(use --output)" not in err
    assert output.read_text(encoding="utf-8") == "# mine\n"


def init_and_validate(
    source: Path, output: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[dict[str, object], int, str, str]:
    """(the written mapping, validate's exit code, stdout, stderr) with it untouched but
    for its time zone, stated as a person must (issue 20)."""
    code, _, err = run_cli(["init", str(source), "--output", str(output)], capsys)
    assert code == 0, err
    fill_zone(output)
    doc = tomllib.loads(output.read_text(encoding="utf-8"))
    code, out, err = run_cli(["validate", str(source), "--mapping", str(output)], capsys)
    return doc, code, out, err


@pytest.mark.parametrize(
    ("files", "patients", "validate_code"),
    [
        # pt_ ids: mapped straight, no crosswalk.
        (["consents.csv"], None, 1),
        # MRNs with their crosswalk next to the file: init names it.
        (
            ["legacy_ehr/consents_export.csv", "legacy_ehr/mrn_to_patient.csv"],
            "mrn_to_patient.csv",
            1,
        ),
        # Registry participant ids and their crosswalk.
        (["registry/registry_export.csv", "registry/participants.csv"], "participants.csv", 1),
        # MRNs and no crosswalk: a TODO file name that stops validate until it is filled in.
        (["legacy_ehr/consents_export.csv"], "TODO-mrn_to_patient.csv", 2),
    ],
)
def test_init_never_sends_legacy_ids_as_patient_ids(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    files: list[str],
    patients: str | None,
    validate_code: int,
) -> None:
    for name in files:
        shutil.copy(SAMPLES / name, tmp_path)
    source = tmp_path / Path(files[0]).name
    doc, code, _, err = init_and_validate(source, tmp_path / "mapping.toml", capsys)
    assert code == validate_code, err
    if patients is None:
        assert "patients" not in doc
        return
    assert doc["patients"] == {"crosswalk": patients}
    if code == 2:
        assert "TODO-mrn_to_patient.csv: no such file" in err
    else:  # resolved through the crosswalk: no row is refused for a legacy id
        report = tmp_path / "errors.json"
        args = ["validate", str(source), "--mapping", str(tmp_path / "mapping.toml")]
        run_cli([*args, "--report", str(report)], capsys)
        assert "scope" in report.read_text(encoding="utf-8")  # the report holds the errors
        assert "must be a ClinikAPI patient id" not in report.read_text(encoding="utf-8")


def test_init_names_a_crosswalk_relative_to_the_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out" / "mapping.toml"
    output.parent.mkdir()
    source = SAMPLES / "legacy_ehr/consents_export.csv"
    doc, code, _, err = init_and_validate(source, output, capsys)
    assert code == 1, err
    crosswalk = doc["patients"]["crosswalk"]  # type: ignore[index]
    assert (output.parent / crosswalk).resolve() == (
        SAMPLES / "legacy_ehr/mrn_to_patient.csv"
    ).resolve()


def validate_counts(out: str) -> tuple[str, str]:
    """(the "N valid, M invalid" line's counts, the "By rule:" line) of validate's output."""
    counts = re.search(r"\d+ rows, \d+ valid, \d+ invalid", out)
    rules = re.search(r"By rule:.*", out)
    assert counts is not None, out
    assert rules is not None, out
    return counts.group(0), rules.group(0)


def test_init_leaves_a_valid_file_as_valid_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = SAMPLES / "consents.csv"
    _, code, with_mapping, _ = init_and_validate(source, tmp_path / "mapping.toml", capsys)
    _, without, _ = run_cli(["validate", str(source)], capsys)
    assert code == 1
    # The same rows invalid for the same cells: `marketing`, left TODO in init's
    # [values.scope], is refused as unmapped_value before the scope check sees it.
    counts, rules = validate_counts(with_mapping)
    assert (counts, rules.replace("unmapped_value", "invalid_enum")) == validate_counts(without)
    assert "unmapped_value 1" in rules
    assert validate_counts(without)[0] == "21 rows, 15 valid, 6 invalid"


@pytest.mark.parametrize(
    ("line", "present"),
    [
        ('"surgical-consent" = "surgical-consent"', True),  # a category cell split on ;
        ('"treatment-consent" = "treatment-consent"', True),
        ('"surgical-consent;treatment-consent"', False),
        ('"treatment" = "treatment"', True),  # valid API values map to themselves
        ('# "marketing" = TODO', True),  # unknown: listed, not translated
        ('= ""', False),  # no placeholder that makes a present cell look missing
    ],
)
def test_init_value_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, present: bool
) -> None:
    output = tmp_path / "mapping.toml"
    run_cli(["init", str(SAMPLES / "consents.csv"), "--output", str(output)], capsys)
    assert (line in output.read_text(encoding="utf-8")) is present


@pytest.mark.parametrize(
    ("name", "nulls"),
    [
        ("registry/registry_export.csv", ["NA", "N/A", "-"]),
        ("consents.csv", None),
    ],
)
def test_init_proposes_the_null_values_it_saw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, nulls: list[str] | None
) -> None:
    output = tmp_path / "mapping.toml"
    run_cli(["init", str(SAMPLES / name), "--output", str(output)], capsys)
    source = tomllib.loads(output.read_text(encoding="utf-8"))["source"]
    assert source.get("null_values") == nulls


CONSENTS_ONLY_WHEN = """
[source]
timezone = "UTC"
null_values = ["-"]
[[filter]]
column = "Kind"
in = ["CONSENT"]
[[filter]]
column = "Site"
matches = "S[0-9]+"
[columns]
patientId = "Patient"
[[consents]]
key = "research"
when = { column = "Research", not_empty = true }
fields = { scope = { value = "research" }, category = { value = "research-participation" } }
[[consents]]
key = "hipaa"
when = { column = "Hipaa", in = ["Y", "yes"] }
fields = { scope = { value = "patient-privacy" }, category = { value = "hipaa-notice" } }
"""
CONSENTS_ONLY_CSV = """Kind,Site,Patient,Research,Hipaa
CONSENT,S1,pt_1,x,Y
VISIT,S1,pt_2,x,Y
CONSENT,Main,pt_3,x,Y

CONSENT,S2,pt_4,-,N
"""


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (1, "in.csv: row 1 is the header row, not a data row"),
        (3, "in.csv: row 3 is skipped: filter[1] does not hold (column 'Kind' in [\"consent\"])"),
        (
            4,
            "in.csv: row 4 is skipped: filter[2] does not hold (column 'Site' matches \"S[0-9]+\")",
        ),
        (5, "in.csv: row 5 is blank"),
        # a null value is empty: neither `when` holds
        (
            6,
            "in.csv: row 6 makes no consent: no [[consents]] `when` holds (consents[1]: column "
            "'Research' not_empty; consents[2]: column 'Hipaa' in [\"y\", \"yes\"])",
        ),
        (7, "in.csv: row 7: no such row (the file has 4 rows, the last is row 6)"),
        (70, "in.csv: row 70: no such row (the file has 4 rows, the last is row 6)"),
    ],
)
def test_preview_says_why_a_row_shows_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], row: int, message: str
) -> None:
    source, mapping = tmp_path / "in.csv", tmp_path / "m.toml"
    source.write_text(CONSENTS_ONLY_CSV, encoding="utf-8")
    mapping.write_text(CONSENTS_ONLY_WHEN, encoding="utf-8")
    args = ["preview", str(source), "--mapping", str(mapping), "--row", str(row)]
    code, out, err = run_cli(args, capsys)
    assert code == 1, err
    assert out.splitlines() == [message.replace("in.csv", str(source))]


def test_preview_of_a_row_that_makes_a_consent_is_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, mapping = tmp_path / "in.csv", tmp_path / "m.toml"
    source.write_text(CONSENTS_ONLY_CSV, encoding="utf-8")
    mapping.write_text(CONSENTS_ONLY_WHEN, encoding="utf-8")
    code, out, _ = run_cli(
        ["preview", str(source), "--mapping", str(mapping), "--row", "2"], capsys
    )
    assert code == 0
    assert [b["scope"] for b in bodies(out)] == ["research", "patient-privacy"]
