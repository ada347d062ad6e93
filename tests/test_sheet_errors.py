"""Issue 15: every error that comes from an Excel sheet names the sheet, in every output
(terminal, JSON/CSV/HTML reports, JSON log lines, failed.csv), while the source name the
ledger records stays the file's; the same rows in a CSV file give the outputs as before.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from importer.ledger._ledger import Ledger
from importer.sandbox import RunningSandbox, SandboxConfig
from tests.cli_helpers import run_cli
from tests.engine_helpers import HEADERS, KEY, consent_rows, ledger_ids

pytestmark = pytest.mark.slow

SHEET = "Consents"
ERROR_COLUMNS = ["error_stage", "error_code", "error_message"]
FAILED_COLUMNS = [*ERROR_COLUMNS, "http_status", "request_id"]
#: the patient the sandbox does not know: its row fails with a 422 (an API failure)
UNKNOWN = "pt_9999"
#: the messages of the invalid and the failed row, as a CSV file gives them
SCOPE_RULE = "scope: must be one of patient-privacy, treatment, research, adr (invalid_enum)"
API_RULE = "POST /v1/consents: 422 VALIDATION_ERROR (req_X): patientId: unknown patient"
ON_SHEET = f"sheet '{SHEET}': "


def write_input(folder: Path, kind: str, rows: list[list[object]]) -> Path:
    """`rows` (header first) as book.xlsx, on sheet "Consents" after a cover sheet the
    mapping passes over, or as book.csv."""
    if kind == "csv":
        path = folder / "book.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
        return path
    path = folder / "book.xlsx"
    book = openpyxl.Workbook()
    cover = book.active
    assert cover is not None
    cover.title = "Cover"
    cover["A1"] = "Consent export, March"
    sheet = book.create_sheet(SHEET)
    for cells in rows:
        sheet.append(cells)
    book.save(path)
    return path


def write_mapping(folder: Path, extra: str = "") -> Path:
    path = folder / "mapping.toml"
    path.write_text(f'[source]\nsheet = "{SHEET}"\n{extra}', encoding="utf-8")
    return path


def table(rows: Iterator[dict[str, str]]) -> list[list[object]]:
    listed = list(rows)
    return [list(listed[0]), *([*row.values()] for row in listed)]


# --- row errors, in every output --------------------------------------------------------


@dataclass
class Outputs:
    terminal: str
    json_report: dict[str, Any]
    csv_report: list[dict[str, str]]
    csv_report_columns: list[str]
    html: str
    log_lines: list[dict[str, Any]]
    failed: list[dict[str, str]]
    failed_columns: list[str]
    folder: Path
    kind: str


def cli(args: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLINIKAPI_API_KEY": KEY}
    return subprocess.run(
        [sys.executable, "-m", "importer", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def make_outputs(kind: str, folder: Path, sandbox: RunningSandbox) -> Outputs:
    """Row 3 invalid (scope), row 5 refused by the API (unknown patient), the rest valid."""
    rows = list(consent_rows(5))
    rows[1]["scope"] = "nope"
    rows[3]["patientId"] = UNKNOWN
    write_input(folder, kind, table(iter(rows)))
    write_mapping(folder)
    source = f"book.{kind}"
    checked = cli(
        ["validate", source, "--mapping", "mapping.toml",
         "--report", "r.json", "--report", "r.csv", "--report", "r.html"],
        folder,
    )  # fmt: skip
    assert checked.returncode == 1, checked.stderr
    sandbox.configure(known_patients=sorted({r["patientId"] for r in rows} - {UNKNOWN}))
    sandbox.reset()
    try:
        ran = cli(
            ["run", source, "--mapping", "mapping.toml", "--ledger", "l.db", "--no-preflight",
             "--base-url", sandbox.base_url, "--log-format", "json", "--settle", "0"],
            folder,
        )  # fmt: skip
    finally:
        sandbox.configure(**SandboxConfig().to_json())
        sandbox.reset()
    assert ran.returncode == 1, ran.stderr
    exported = cli(["export", "--ledger", "l.db", "--failed", "failed.csv"], folder)
    assert exported.returncode == 0, exported.stderr
    report_columns, report_rows = read_csv(folder / "r.csv")
    failed_columns, failed_rows = read_csv(folder / "failed.csv")
    return Outputs(
        terminal=checked.stdout,
        json_report=json.loads((folder / "r.json").read_text(encoding="utf-8")),
        csv_report=report_rows,
        csv_report_columns=report_columns,
        html=(folder / "r.html").read_text(encoding="utf-8"),
        log_lines=[json.loads(line) for line in ran.stderr.splitlines()],
        failed=failed_rows,
        failed_columns=failed_columns,
        folder=folder,
        kind=kind,
    )


@pytest.fixture(scope="module")
def outputs(
    tmp_path_factory: pytest.TempPathFactory, _shared_sandbox: RunningSandbox
) -> Callable[[str], Outputs]:
    """The outputs for book.xlsx or book.csv, made once per module for each."""
    made: dict[str, Outputs] = {}

    def get(kind: str) -> Outputs:
        if kind not in made:
            made[kind] = make_outputs(kind, tmp_path_factory.mktemp(kind), _shared_sandbox)
        return made[kind]

    return get


def terminal_place(out: Outputs) -> str:
    """Where the terminal's error line puts the invalid row."""
    [line] = [line for line in out.terminal.splitlines() if "(invalid_enum)" in line]
    return line.split()[0]


def report_place(out: Outputs) -> dict[str, Any]:
    [error] = out.json_report["errors"]
    return {k: v for k, v in error.items() if k not in ("field", "code", "message")}


def csv_report_message(out: Outputs) -> tuple[list[str], str]:
    [row] = out.csv_report
    return out.csv_report_columns[len(HEADERS) :], row["error_message"]


def html_place(out: Outputs) -> bool:
    return {
        "xlsx": f'<td class="file">book.xlsx<span class="sheet">[{SHEET}]</span></td>',
        "csv": '<td class="file">book.csv</td><td class="num">3</td>',
    }[out.kind] in out.html


def log_places(out: Outputs) -> list[dict[str, Any]]:
    """The places of the invalid and failed row lines (file, sheet, row)."""
    return [
        {k: line[k] for k in ("event", "file", "sheet", "row") if k in line}
        for line in out.log_lines
        if line.get("event") in ("row_invalid", "row_failed")
    ]


def failed_messages(out: Outputs) -> tuple[list[str], list[tuple[str, str]]]:
    return out.failed_columns[len(HEADERS) :], [
        (row["error_code"], re.sub(r"req_\w+", "req_X", row["error_message"])) for row in out.failed
    ]


@pytest.mark.parametrize(
    ("output", "kind", "expected"),
    [
        # the terminal: the sheet in brackets after the file's name
        (terminal_place, "xlsx", f"book.xlsx[{SHEET}]:3"),
        (terminal_place, "csv", "book.csv:3"),
        # the JSON report: a `sheet` key beside `file` (the contract's keys stay as they are)
        (report_place, "xlsx", {"file": "book.xlsx", "row": 3, "sheet": SHEET}),
        (report_place, "csv", {"file": "book.csv", "row": 3}),
        # the CSV report: the contract's columns; the message says the sheet first
        (csv_report_message, "xlsx", (ERROR_COLUMNS, ON_SHEET + SCOPE_RULE)),
        (csv_report_message, "csv", (ERROR_COLUMNS, SCOPE_RULE)),
        # the HTML report: the sheet after the file's name
        (html_place, "xlsx", True),
        (html_place, "csv", True),
        # JSON log lines: a `sheet` key on the invalid and the failed row's lines
        (
            log_places,
            "xlsx",
            [
                {"event": "row_invalid", "file": "book.xlsx", "sheet": SHEET, "row": 3},
                {"event": "row_failed", "file": "book.xlsx", "sheet": SHEET, "row": 5},
            ],
        ),
        (
            log_places,
            "csv",
            [
                {"event": "row_invalid", "file": "book.csv", "row": 3},
                {"event": "row_failed", "file": "book.csv", "row": 5},
            ],
        ),
        # failed.csv: the contract's columns; each message (invalid and API failure alike)
        # says the sheet first
        (
            failed_messages,
            "xlsx",
            (
                FAILED_COLUMNS,
                [("invalid_enum", ON_SHEET + SCOPE_RULE), ("api_validation", ON_SHEET + API_RULE)],
            ),
        ),
        (
            failed_messages,
            "csv",
            (FAILED_COLUMNS, [("invalid_enum", SCOPE_RULE), ("api_validation", API_RULE)]),
        ),
    ],
)
def test_every_output_names_the_sheet_of_an_excel_row(
    outputs: Callable[[str], Outputs], output: Callable[[Outputs], Any], kind: str, expected: Any
) -> None:
    assert output(outputs(kind)) == expected


@pytest.mark.parametrize("kind", ["xlsx", "csv"])
def test_the_ledger_records_the_file_and_failed_csv_feeds_back(
    outputs: Callable[[str], Outputs], kind: str
) -> None:
    out = outputs(kind)
    with closing(Ledger.open_readonly(out.folder / "l.db")) as ledger:
        files = set(ledger.sources()[1])  # the file names the rows hold
    assert files == {f"book.{kind}"}  # never "book.xlsx[Consents]"
    assert len(ledger_ids(out.folder / "l.db")) == 3
    # fixed, failed.csv is a valid input (its messages, sheet and all, are not read)
    fixed = out.folder / "fixed.csv"
    with fixed.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, out.failed_columns)
        writer.writeheader()
        for row in out.failed:
            writer.writerow({**row, "scope": "treatment", "patientId": "pt_0003"})
    checked = cli(["validate", "fixed.csv"], out.folder)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- file-level errors ------------------------------------------------------------------

GOOD = table(consent_rows(3))


def with_header(cells: list[object]) -> list[list[object]]:
    return [cells, *GOOD[1:]]


@pytest.mark.parametrize(
    ("rows", "mapping", "message"),
    [
        # a column the mapping names is missing
        (GOOD, '[columns]\npatientId = "MRN"\n', "{file}: the mapping names column 'MRN'"),
        # a column the mapping's [fields] names is missing
        (GOOD, '[fields]\n"policyUri" = "Form"\n', "column 'Form' is not in {file} "),
        # a required field has no column
        (
            with_header([HEADERS[0], "Person", *HEADERS[2:]]),
            "",
            "{file}: no column for required field 'patientId'",
        ),
        # a date column reads both day-first and month-first, differently
        (
            [GOOD[0], *([*row[:5], "03.04.2024", row[6]] for row in GOOD[1:])],
            'date_formats = ["%m.%d.%Y", "%d.%m.%Y"]\n',
            "{file}: dateTime reads as both '%m.%d.%Y' and '%d.%m.%Y'",
        ),
        # two columns with the same header
        (with_header([*HEADERS[:-1], "scope"]), "", "{file}: columns "),
        # a header and no rows
        (GOOD[:1], "", "{file}: has a header row but no rows to import"),
    ],
)
@pytest.mark.parametrize(("kind", "label"), [("xlsx", f"book.xlsx[{SHEET}]"), ("csv", "book.csv")])
def test_file_level_errors_name_the_sheet(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rows: list[list[object]],
    mapping: str,
    message: str,
    kind: str,
    label: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write_input(tmp_path, kind, rows)
    write_mapping(tmp_path, mapping)
    code, out, err = run_cli(["validate", f"book.{kind}", "--mapping", "mapping.toml"], capsys)
    assert code == 2, out + err
    assert message.format(file=label) in err


def test_an_empty_sheet_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write_input(tmp_path, "xlsx", [])
    write_mapping(tmp_path)
    code, _, err = run_cli(["validate", "book.xlsx", "--mapping", "mapping.toml"], capsys)
    assert code == 2
    assert f"book.xlsx: sheet '{SHEET}' is empty" in err
