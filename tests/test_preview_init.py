"""`preview` and `init` end to end, through the CLI."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from importer.cli import main

SAMPLES = Path(__file__).parent.parent / "sample_data"
REGISTRY = SAMPLES / "registry"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0), out, err


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
        (["--row", "16"], 1, ["registry_export.csv:16#research  invalid:", "(invalid_enum)"]),
        (["--row", "6"], 1, ["no such row, or the mapping's filters skip it"]),  # a visit
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
    assert code in (0, 1), err


def test_init_on_the_legacy_export_finds_how_to_read_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "mapping.toml"
    run_cli(
        ["init", str(SAMPLES / "legacy_ehr/consents_export.csv"), "--output", str(output)], capsys
    )
    doc = tomllib.loads(output.read_text(encoding="utf-8"))
    assert doc["source"]["encoding"] == "cp1252"
    assert doc["source"]["delimiter"] == ";"
    assert doc["source"]["date_formats"] == ["%m/%d/%Y %I:%M %p"]
    assert doc["columns"]["scope"] == "Consent Type"
    assert doc["columns"]["status"] == "Consent Status"
    assert set(doc["values"]["scope"]) == {
        "General Treatment",
        "Research Study",
        "Surgery",
        "HIPAA Notice",
        "Photo Release",
    }
    text = output.read_text(encoding="utf-8")
    for status in ("signed", "Revoked", "Pending", "Maybe"):
        assert f'# "{status}" = ""' in text  # listed, to fill in
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
    assert "already exists; init never overwrites a file" in err
    assert output.read_text(encoding="utf-8") == "# mine\n"
