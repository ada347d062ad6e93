"""`init` guesses rightly and says what it guessed: behaviour tables over small exports
(a REDCap eConsent export, a registry table with a birth date and a US state, a CDISC
DS-like file), the encoding line, the time zone TODO; then the written mapping, once its
TODOs are filled in, runs against the sandbox."""

from __future__ import annotations

import codecs
import shutil
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from importer.sandbox import RunningSandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import run

REDCAP = Path(__file__).parent / "data" / "redcap"

REDCAP_CSV = (REDCAP / "econsent_export.csv").read_text(encoding="utf-8")
REGISTRY_CSV = """participant_id,birth_date,state,consent_status,withdrawal_date,last_updated
P-001,1980-02-01,CA,Consented,,2024-06-30
P-002,1975-07-12,NY,Withdrawn,2024-03-01,2024-06-30
P-003,1990-01-01,TX,Consented,,2024-06-30
"""
CDISC_CSV = (
    "STUDYID,DOMAIN,USUBJID,DSSEQ,DSTERM,DSDECOD,DSCAT,DSSTDTC\n"
    "ABC-101,DS,ABC-101-0001,1,INFORMED CONSENT OBTAINED,INFORMED CONSENT OBTAINED,"
    "PROTOCOL MILESTONE,2023-05-01T10:15\n"
    "ABC-101,DS,ABC-101-0002,1,INFORMED CONSENT OBTAINED,INFORMED CONSENT OBTAINED,"
    "PROTOCOL MILESTONE,2023-05-02\n"
)


def init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes, name: str = "in.csv"
) -> tuple[dict[str, Any], str, str]:
    """(the written mapping as TOML, its text, init's stdout) for a file holding `text`."""
    source = tmp_path / name
    if isinstance(text, bytes):
        source.write_bytes(text)
    else:
        source.write_text(text, encoding="utf-8")
    output = tmp_path / "mapping.toml"
    code, out, err = run_cli(["init", str(source), "--output", str(output)], capsys)
    assert code == 0, err
    written = output.read_text(encoding="utf-8")
    return tomllib.loads(written), written, out


@pytest.mark.parametrize(
    ("text", "columns", "not_columns"),
    [
        # REDCap: record_id is the participant; the timestamp is the consent time; dob,
        # state and withdraw_date are none of patientId, status or dateTime
        (
            REDCAP_CSV,
            {"patientId": "record_id", "dateTime": "consent_timestamp"},
            ["dob", "state", "withdraw_date", "consent___1"],  # consent___1: in [fields]
        ),
        # A registry table: a birth date and a withdrawal date are not the consent time,
        # US state codes are not a status
        (
            REGISTRY_CSV,
            {"patientId": "participant_id"},
            ["birth_date", "state", "withdrawal_date", "last_updated", "consent_status"],
        ),
        # CDISC DS: USUBJID is the subject, not STUDYID; DSSTDTC the event's date-time
        (CDISC_CSV, {"patientId": "USUBJID", "dateTime": "DSSTDTC"}, ["STUDYID"]),
    ],
)
def test_init_places_columns_rightly(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    columns: dict[str, str],
    not_columns: list[str],
) -> None:
    doc, _, _ = init(tmp_path, capsys, text)
    for name, header in columns.items():
        assert doc["columns"][name] == header
    for header in not_columns:
        assert header not in doc["columns"].values()


@pytest.mark.parametrize(
    ("text", "notes"),
    [
        (
            REDCAP_CSV,
            [
                "patientId = column 'record_id': guessed from the header",
                "dateTime = column 'consent_timestamp': guessed from the header",
                "status = column 'consent___1': a consent checkbox; a ticked box proposed as "
                "active (commented out)",
                "not status: column 'state' holds US state codes, not a consent status",
                "not dateTime: column 'withdraw_date' looks like a withdrawal date: a status "
                "signal",
                "status: column 'withdraw_date' tells a withdrawal: a value there makes the "
                'consent "inactive" ([fields] status cases)',
                "null_values: 1 word for no value seen in the cells; proposed as read as empty",
                "timezone = \"TODO\": column 'consent_timestamp' has date-times without an "
                "offset; set [source] timezone to the IANA zone they were written in (e.g. "
                '"Europe/Berlin", or "UTC")',
                "encoding utf-8: detected; written commented out, so each file is detected again",
            ],
        ),
        (
            REGISTRY_CSV,
            [
                "not dateTime: column 'birth_date' looks like a birth date, not the consent time",
                "not dateTime: column 'withdrawal_date' looks like a withdrawal date: a status "
                "signal",
                "not dateTime: column 'last_updated' looks like a record's edit time, not the "
                "consent time",
                "not status: column 'state' holds US state codes, not a consent status",
                "status: column 'withdrawal_date' tells a withdrawal: a value there makes the "
                'consent "inactive" ([fields] status cases)',
                "patientId: column 'participant_id' holds legacy ids, not pt_...: resolved "
                "through [patients] crosswalk; name yours (validate stops until then)",
            ],
        ),
        (
            CDISC_CSV,
            [
                "patientId = column 'USUBJID': guessed from the header",
                "dateTime = column 'DSSTDTC': guessed from the header",
                "patientId: column 'USUBJID' holds legacy ids, not pt_...: resolved through "
                "[patients] crosswalk; name yours (validate stops until then)",
            ],
        ),
    ],
)
def test_init_says_every_guess_one_line_each_without_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, notes: list[str]
) -> None:
    _, _, out = init(tmp_path, capsys, text)
    said = [line.strip() for line in out.splitlines()[2:]]
    for note in notes:
        assert note in said
    cells = {c for line in text.splitlines()[1:] for c in line.split(",") if len(c) > 2}
    guesses = "\n".join(said)
    for cell in cells:  # no cell value on the terminal (PHI): headers only
        assert cell not in guesses, cell


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        (
            REDCAP_CSV,
            [
                'patientId = "record_id"   # TODO: guessed from the header; check',
                '# ? = "state"   # status? no: it holds US state codes, not a consent status',
                "status = { cases = [",
                '  { when = { column = "withdraw_date", not_empty = true }, value = "inactive" },',
                '  { column = "consent___1", map = "status" },',
                '# TODO: guessed: "withdraw_date" tells that the consent was withdrawn (inactive);',
                '# "1" = "active"   # TODO: guessed: a ticked consent checkbox',
                '# "0" = TODO',
                'null_values = ["[not completed]"]   # TODO: seen in the file; cells read as empty',
                # the record id is a legacy id: a crosswalk stanza, its headers commented
                'crosswalk = "record_to_patient.csv"   # TODO: found next to the file; check it',
                '# from = "record_id"   # the crosswalk\'s column of legacy ids '
                '(as in "record_id")',
                '# to = "patientId"   # the crosswalk\'s column of ClinikAPI patient ids (pt_...)',
            ],
        ),
        (
            REGISTRY_CSV,
            [
                '# ? = "birth_date"   # dateTime? no: it looks like a birth date, not the '
                "consent time",
                '  { when = { column = "withdrawal_date", not_empty = true }, '
                'value = "inactive" },',
                '  { column = "consent_status", map = "status" },',
                'crosswalk = "TODO-participantid_to_patient.csv"   # validate stops (exit 2) '
                "until this file exists",
                '# from = "TODO"   # the crosswalk\'s column of legacy ids '
                '(as in "participant_id")',
            ],
        ),
        (
            CDISC_CSV,
            [
                'patientId = "USUBJID"   # TODO: guessed from the header; check',
                'dateTime = "DSSTDTC"   # TODO: guessed from the header; check',
                'crosswalk = "TODO-usubjid_to_patient.csv"   # validate stops (exit 2) until '
                "this file exists",
                '# ? = "STUDYID"   # not recognised; name a field, or use [fields]',
            ],
        ),
    ],
)
def test_init_marks_each_guess_in_the_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, lines: list[str]
) -> None:
    if text == REDCAP_CSV:
        shutil.copy(REDCAP / "record_to_patient.csv", tmp_path)
    _, written, _ = init(tmp_path, capsys, text)
    for line in lines:
        assert line in written.splitlines()


@pytest.mark.parametrize(
    "header",
    ["pid", "PTID", "subject_id", "Subject", "USUBJID", "SUBJID", "MRN", "record_id",
     "participant_id", "Participant", "Patient MRN", "medical_record_number"],
)  # fmt: skip
def test_subject_id_headers_are_patient_ids_through_a_crosswalk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], header: str
) -> None:
    text = f"{header},consent_date,scope\nS-01,2024-01-05T10:00:00Z,research\n"
    doc, _, out = init(tmp_path, capsys, text)
    assert doc["columns"]["patientId"] == header
    assert doc["patients"]["crosswalk"].startswith("TODO-")
    assert f"patientId: column '{header}' holds legacy ids" in out


@pytest.mark.parametrize(
    ("head", "cells", "status", "refused"),
    [
        # "state" holding consent states is a status
        ("State", ["Active", "Withdrawn"], "State", None),
        ("State", ["CA", "ny"], None, "holds US state codes, not a consent status"),
        ("Vital Status", ["Alive", "Dead"], None, "is another kind of status"),
        ("Record Status", ["Alive", "Dead"], None, "its values do not look like consent statuses"),
        ("Status", ["Alive", "Dead"], "Status", None),  # a recognised spelling is taken as is
        ("Consent Status", ["Whatever"], "Consent Status", None),  # said "consent": trusted
        ("Statement", ["Signed"], None, None),  # not a "state" word
    ],
)
def test_a_status_column_must_hold_statuses(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    head: str,
    cells: list[str],
    status: str | None,
    refused: str | None,
) -> None:
    rows = "".join(f"pt_{i},{cell}\n" for i, cell in enumerate(cells))
    doc, written, out = init(tmp_path, capsys, f"patientId,{head}\n{rows}")
    assert doc["columns"].get("status") == status
    if refused is not None:
        assert f"not status: column '{head}' {refused}" in out
        assert f'# ? = "{head}"   # status? no: it {refused}' in written


@pytest.mark.parametrize(
    ("head", "cells", "when"),
    [
        # a date (or any value) there: withdrawn
        ("withdraw_date", ["", "2024-03-01"], '{ column = "withdraw_date", not_empty = true }'),
        ("Date Withdrawn", ["05/01/2024", ""], '{ column = "Date Withdrawn", not_empty = true }'),
        ("revoked_on", ["2024-01-01", ""], '{ column = "revoked_on", not_empty = true }'),
        # a yes/no flag: withdrawn where it says yes, not wherever it is filled in
        ("Withdrawn", ["N", "Y", "N"], '{ column = "Withdrawn", in = ["Y"] }'),
        ("withdrawn_flag", ["0", "1"], '{ column = "withdrawn_flag", in = ["1"] }'),
    ],
)
def test_a_withdrawal_column_makes_the_status_inactive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], head: str, cells: list[str], when: str
) -> None:
    rows = "".join(f"pt_{i},active,{cell}\n" for i, cell in enumerate(cells))
    doc, written, _ = init(tmp_path, capsys, f"patientId,status,{head}\n{rows}")
    assert "status" not in doc["columns"]  # the status is chosen in [fields]
    assert f'  {{ when = {when}, value = "inactive" }},' in written
    cases = doc["fields"]["status"]["cases"]
    assert cases[1] == {"column": "status", "map": "status"}


@pytest.mark.parametrize(
    ("cells", "nulls"),
    [
        (["[not completed]", "x"], ["[not completed]"]),  # REDCap
        (["UNK", "NA", "x"], ["UNK", "NA"]),  # CDISC, R
        ([".", "x"], ["."]),  # SAS, Stata
        (["-", "N/A", "x"], ["-", "N/A"]),
        (["x", "y"], None),
    ],
)
def test_init_proposes_sentinels_as_nulls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cells: list[str], nulls: list[str] | None
) -> None:
    rows = "".join(f"pt_{i},{cell}\n" for i, cell in enumerate(cells))
    doc, _, _ = init(tmp_path, capsys, f"patientId,Witness\n{rows}")
    assert doc["source"].get("null_values") == nulls


TEXT = "patientId,scope,category,Note\npt_1,research,research-participation,Zoë Müller\n"


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (TEXT.encode("utf-8"), '# encoding = "utf-8"   # detected; each file is detected again '
         "(uncomment to pin)"),
        (TEXT.encode("cp1252"), '# encoding = "cp1252"   # detected; each file is detected '
         "again (uncomment to pin)"),
        (codecs.BOM_UTF8 + TEXT.encode("utf-8"), '# encoding = "utf-8-sig"   # detected; each '
         "file is detected again (uncomment to pin)"),
        (TEXT.encode("utf-16"), '# encoding = "utf-16"   # detected; each file is detected '
         "again (uncomment to pin)"),  # with its byte-order mark
        # UTF-16 without a byte-order mark: found only while the text is mostly ASCII
        (TEXT.encode("utf-16-le"), 'encoding = "utf-16-le"   # detected; pinned: UTF-16 '
         "without a byte-order mark is not reliably detected"),
        # neither UTF-8 nor Windows-1252 (0x81 is no cp1252 letter): detection refuses it,
        # so the Latin-1 reading init falls back on is pinned, as a guess to check
        (TEXT.replace("Zoë", "Zoë \x81").encode("latin-1"), 'encoding = "iso8859-1"   # TODO: '
         "guessed: the file is neither UTF-8 nor Windows-1252; check accented letters with "
         "preview"),
    ],
)  # fmt: skip
def test_the_encoding_is_written_commented_out_unless_it_cannot_be_detected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, line: str
) -> None:
    _, written, _ = init(tmp_path, capsys, data)
    assert line in written.splitlines()


def test_a_pinned_latin1_mapping_validates_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(tmp_path, capsys, TEXT.replace("Zoë", "Zoë \x81").encode("latin-1"))
    mapping = str(tmp_path / "mapping.toml")
    code, _, err = run_cli(["validate", str(tmp_path / "in.csv"), "--mapping", mapping], capsys)
    assert code == 0, err


def test_a_cp1252_mapping_reads_a_utf8_night(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(tmp_path, capsys, TEXT.encode("cp1252"), name="monday.csv")
    tuesday = tmp_path / "tuesday.csv"
    tuesday.write_text(TEXT, encoding="utf-8")
    mapping = str(tmp_path / "mapping.toml")
    code, out, err = run_cli(["validate", str(tuesday), "--mapping", mapping], capsys)
    assert code == 0, err
    assert "1 row, 1 valid" in out


@pytest.mark.parametrize(
    ("cells", "todo"),
    [
        (["2024-01-05T10:00:00+01:00", "2024-01-06T10:00:00Z"], False),  # every offset stated
        (["2024-01-05T10:00:00+01:00", "2024-01-06T10:00:00"], True),  # one without
        (["2024-01-05 10:00"], True),
        (["01/05/2024 10:00 AM"], True),
        (["2024-01-05"], True),  # a date alone is a moment in some zone too
        ([""], False),  # no date at all
    ],
)
def test_naive_times_make_the_zone_a_todo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cells: list[str], todo: bool
) -> None:
    rows = "".join(f"pt_{i},{cell}\n" for i, cell in enumerate(cells))
    doc, written, out = init(tmp_path, capsys, f"patientId,dateTime\n{rows}")
    assert (doc["source"].get("timezone") == "TODO") is todo
    assert ('# timezone = "UTC"' in written) is not todo
    assert ('timezone = "TODO"' in out) is todo


def fill_todos(mapping: Path, replacements: dict[str, str]) -> None:
    text = mapping.read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    mapping.write_text(text, encoding="utf-8")


def test_the_redcap_mapping_init_writes_runs_once_its_todos_are_filled(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    server: RunningSandbox,
    client: httpx.Client,
) -> None:
    shutil.copy(REDCAP / "record_to_patient.csv", tmp_path)
    init(tmp_path, capsys, REDCAP_CSV, name="export.csv")
    mapping = tmp_path / "mapping.toml"
    fill_todos(
        mapping,
        {
            'timezone = "TODO"': 'timezone = "America/Chicago"',
            'scope = ""': 'scope = "research"',
            'category = ""': 'category = "research-participation"',
            '# "1" = "active"': '"1" = "active"',
            '# "0" = TODO': '"0" = "rejected"',
        },
    )
    source = tmp_path / "export.csv"
    code, out, err = run_cli(["validate", str(source), "--mapping", str(mapping)], capsys)
    assert code == 0, err + out
    result = run(source, server.base_url, tmp_path / "ledger.db", mapping=mapping)
    assert (result.stats.created, result.stats.invalid) == (4, 0)
    sent = {
        patient: [c["status"] for c in client.get("/v1/consents", params={"patientId": patient})
                  .json()["data"]]
        for patient in ("pt_5101", "pt_5102", "pt_5103")
    }  # fmt: skip
    assert sent == {"pt_5101": ["active"], "pt_5102": ["inactive"], "pt_5103": ["rejected"]}
