"""Reports of a validation or a run: the terminal summary, JSON, and CSV row errors.

CSV we write is safe to open in Excel: a cell starting with `=`, `+`, `-`, `@` is
escaped with a leading `'`, which the reader undoes, so a fixed file feeds back unchanged.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rich.console import Console

from importer._errors import UsageError
from importer._results import RunStats, ValidationSummary
from importer._rows import Row, sheet_note
from importer.intake._fhir import FHIR_SUFFIXES
from importer.intake._formulas import escape_formula
from importer.intake._layout import ERROR_COLUMNS
from importer.reports._outputs import AtomicFile
from importer.reports._outputs import write_text as write_whole

REPORT_SUFFIXES = (".json", ".csv", ".html")


def check_report_paths(paths: Sequence[str | Path], *, redact: bool = False) -> list[Path]:
    """Refuse report paths of a kind we cannot write, before any work is done.

    `--redact` applies to every form: HTML leaves values out, JSON never holds them. A CSV
    report *is* the rows' cells (to fix and feed back), so it cannot be redacted: refused.
    """
    checked = []
    for path in paths:
        suffix = Path(path).suffix.lower()
        if suffix not in REPORT_SUFFIXES:
            raise UsageError(
                f"--report {path}: unknown report type '{suffix or '(none)'}'; "
                "use .json, .csv or .html"
            )
        if redact and suffix == ".csv":
            raise UsageError(
                f"--redact does not apply to a .csv report ({path}): it holds the rows' own "
                "cells, to fix and feed back; leave out --redact or the .csv report"
            )
        checked.append(Path(path))
    return checked


def check_run_report_paths(paths: Sequence[str | Path], *, redact: bool = False) -> list[Path]:
    """`run --report` writes .json and .html; invalid rows as CSV come from `export`."""
    checked = check_report_paths(paths, redact=redact)
    for path in checked:
        if path.suffix.lower() == ".csv":
            raise UsageError(
                f"--report {path}: a run writes .json or .html reports; for the invalid and "
                "failed rows as CSV use `consent-import export --failed`"
            )
    return checked


def write_run_reports(
    paths: Sequence[Path], summary: ValidationSummary, stats: RunStats, *, redact: bool
) -> None:
    """A run's reports: JSON (run counts, validation summary, row errors) and HTML."""
    for path in paths:
        if path.suffix.lower() == ".json":
            write_json(path, {"run": stats.summary(), **summary.to_json()})
        else:
            from importer.reports._html_report import write_run_html

            write_run_html(path, summary, stats, redact=redact)


def write_json(path: Path, document: dict[str, Any]) -> None:
    write_whole(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


class SafeCsvWriter:
    """A CSV writer whose every cell is escaped against formula injection; the file is
    owner-only and appears whole when closed (an error discards it)."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        # utf-8-sig so Excel opens non-ASCII names correctly; our reader strips the BOM.
        self._file = AtomicFile(path, newline="", encoding="utf-8-sig")
        self._handle: IO[str] = self._file.handle
        self._writer = csv.writer(self._handle)
        self._writer.writerow([escape_formula(c) for c in self.columns])

    def write(self, cells: dict[str, Any]) -> None:
        self._writer.writerow(
            [escape_formula("" if cells.get(c) is None else str(cells[c])) for c in self.columns]
        )

    def close(self) -> None:
        """Put the complete file in place."""
        self._file.commit()

    def discard(self) -> None:
        self._file.discard()

    def __enter__(self) -> SafeCsvWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()


def error_columns(
    input_columns: Iterable[Iterable[str]], extra: Sequence[str] = ERROR_COLUMNS
) -> list[str]:
    """The union of the input files' columns, in first-seen order, then `extra` (the
    error columns)."""
    seen: dict[str, None] = {}
    for columns in input_columns:
        for column in columns:
            if column not in extra:
                seen.setdefault(column, None)
    return [*seen, *extra]


def row_error_cells(rows: Sequence[Row], stage: str = "validate") -> dict[str, str]:
    """An invalid source row as the CSV report shows it: its own cells once plus what is
    wrong; `rows` are its invalid consents, each named (`#hipaa: ...`) when it has one."""
    consents = sorted(rows, key=lambda row: row.consent)

    def joined(values: Callable[[Row], str]) -> str:
        return "; ".join(
            f"#{row.consent}: {values(row)}" if row.consent else values(row) for row in consents
        )

    return {
        **rows[0].cells,
        "error_stage": joined(lambda _: stage),
        "error_code": joined(lambda row: "; ".join(e.code for e in row.errors)),
        "error_message": joined(
            lambda row: sheet_note(row.sheet, "; ".join(e.message for e in row.errors))
        ),
    }


def source_rows(invalid: Iterable[Row]) -> Iterator[list[Row]]:
    """Invalid rows grouped by source row: a `[[consents]]` row's consents come together."""
    for _, group in itertools.groupby(invalid, key=lambda row: (row.file, row.row)):
        yield list(group)


def skipped_note(names: Iterable[str | Path]) -> str:
    """Why rows were skipped, as the terminal says it: a [[filter]] or no consent (CSV,
    Excel), another resource type than Consent (FHIR input)."""
    fhir = {str(name).lower().endswith(FHIR_SUFFIXES) for name in names}
    if fhir == {True}:
        return "not Consents"
    return "filtered out, or not Consents" if True in fhir else "filtered out"


def print_validation(summary: ValidationSummary, console: Console, *, first: int = 10) -> None:
    """The terminal summary of a validation: counts, then the first errors, one a line."""
    files = len(summary.by_file)
    console.print(
        f"Validated {files} file{'s' if files != 1 else ''}: {summary.rows:,} "
        f"row{'s' if summary.rows != 1 else ''}, "
        f"[green]{summary.valid:,} valid[/], "
        f"[{'red' if summary.invalid else 'green'}]{summary.invalid:,} invalid[/]"
        + (
            f", {summary.skipped:,} skipped ({skipped_note(summary.by_file)})"
            if summary.skipped
            else ""
        )
    )
    for warning in summary.warnings:
        console.print(f"warning: {warning}", soft_wrap=True, markup=False)
    if not summary.invalid:
        return
    console.print(
        "By rule:  " + ", ".join(f"{code} {n:,}" for code, n in summary.by_rule.most_common())
    )
    console.print(
        "By field: " + ", ".join(f"{name} {n:,}" for name, n in summary.by_field.most_common())
    )
    shown = summary.errors[:first]
    console.print(f"First {len(shown)} of {len(summary.errors):,} errors:")
    for error in shown:
        # Not markup: a message may hold brackets ("[source] key"), and so may a file name.
        console.print(f"  {error.where}  {error.message}", soft_wrap=True, markup=False)
