"""A CSV file's layout from a sample: its delimiter, quoting and header row."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from importer._errors import InputError
from importer.intake._formulas import (
    unescape_formula,
)

#: csv.Sniffer's regexes turn quadratic on unclosed quotes; it sees only this much.
_SNIFF_CHARS: Final = 8 * 1024


_DELIMITERS: Final = (",", ";", "\t", "|")


#: Excel's first line naming the delimiter, which Excel hides when it opens the file.
_SEP_LINE: Final = re.compile(r"sep=([^\r\n\"])(?:\r\n|\n|\r)", re.IGNORECASE)


@dataclass(frozen=True)
class _CsvLayout:
    encoding: str
    delimiter: str
    columns: list[str]
    skip: int  # blank records before the header
    width: int  # most cells seen in a record of the sample, at least len(columns)
    newline: str
    may_escape: bool  # some cell might start with our formula escape
    preamble: int = 0  # non-blank records before the header (Excel's `sep=` line)


def _unterminated(name: str, row: int) -> InputError:
    return InputError(
        f'{name}: unterminated quoted field starting near row {row}; close the quote (") '
        "or remove it"
    )


def _parse(sample: str, delimiter: str, whole: bool) -> list[list[str]]:
    """The complete records of a sample (the last one may be cut unless it is the whole file)."""
    reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter, quotechar='"')
    records = list(reader)
    if not whole and records:
        records.pop()
    return records


def _csv_layout(
    name: str,
    sample: str,
    whole: bool,
    encoding: str,
    forced_delimiter: str | None,
    suffix: str,
    header_row: int | None = None,
) -> _CsvLayout | None:
    """Delimiter, header and width from the sample; None if the sample is too short to tell.

    With `header_row`, the lines above it are titles: left out of sniffing and skipped
    (an Excel `sep=` line among them is a title too).
    """
    titled = 0  # non-blank title lines above `header_row`
    if header_row is not None and set(_first_record(sample)) >= set(ERROR_COLUMNS):
        header_row = None  # our own failed.csv, fed back: its header is its first line
    if header_row is not None:
        lines = sample.splitlines(keepends=True)
        if len(lines) < header_row + 1 and not whole:
            return None
        titles = lines[: header_row - 1]
        titled = sum(1 for line in titles if line.strip())
        sample = sample[len("".join(titles)) :]
    declared = _SEP_LINE.match(sample) if header_row is None else None
    if declared is not None:
        # Excel's `sep=;` line: the file says its delimiter, and the line is not the header.
        delimiter = forced_delimiter or declared.group(1)
    else:
        delimiter = forced_delimiter or _sniff(sample, whole, suffix)
    if (
        declared is None
        and forced_delimiter is not None
        and forced_delimiter not in _first_line(sample)
    ):
        # A header without the configured delimiter makes a one-column table, which no
        # mapping wants: the file says otherwise (a fixed failed.csv we wrote with ",",
        # fed back with the legacy export's mapping), so the file's own delimiter wins.
        delimiter = _sniff(sample, whole, suffix)
    if whole:
        _check_quotes(name, sample, delimiter)
    records = _parse(sample, delimiter, whole)
    preamble = 0 if declared is None else 1
    skip = next((i for i, r in enumerate(records) if i >= preamble and not _blank(r)), None)
    if header_row is not None and skip != 0 and records:
        raise InputError(
            f"{name}: line {header_row} (source.header_row) is blank; give the line of the header"
        )
    if skip is None:
        if whole:
            raise InputError(f"{name}: the file is empty; export it again with a header row")
        return None
    if not whole and len(records) < skip + 2:
        return None  # pandas must not meet a first record wider than the sample showed
    header = records[skip]
    columns = _header(name, header, skip + 1, lambda i: str(i + 1))
    width = max(len(r) for r in records[skip:])
    newline = "\r" if "\n" not in sample and "\r" in sample else "\n"
    if header_row is not None:
        skip = header_row - 1  # lines above the header: pandas skips lines
        preamble = titled
    return _CsvLayout(
        encoding, delimiter, columns, skip, width, newline, may_escape=True, preamble=preamble
    )


#: The columns `export --failed` adds (after the input's own): a file carrying them is our
#: own correction file. The reader, reports, exports and revocation all read this one tuple.
ERROR_COLUMNS: Final = ("error_stage", "error_code", "error_message")


def _first_record(sample: str) -> list[str]:
    """The first line's cells, split on whichever delimiter splits it most."""
    line = _first_line(sample)
    return max((line.split(d) for d in _DELIMITERS), key=len)


def _first_line(sample: str) -> str:
    """The first non-blank line of the sample (the header row, unless quoted newlines)."""
    return next((line for line in sample.splitlines() if line.strip()), "")


def _check_quotes(name: str, sample: str, delimiter: str) -> None:
    """An unterminated quote pandas would not report (one in a skipped header row)."""
    reader = csv.reader(
        io.StringIO(sample, newline=""), delimiter=delimiter, quotechar='"', strict=True
    )
    count = 0
    header = False  # a non-blank record was complete before the error
    try:
        for record in reader:
            count += 1
            header = header or not _blank(record)
    except csv.Error as exc:
        # Without a final line break, a row below the header was cut inside a value:
        # the table reports that row (`truncated_file`) and reads the others.
        cut = header and not sample.endswith(("\n", "\r"))
        if "unexpected end of data" in str(exc) and not cut:
            raise _unterminated(name, count + 1) from None


def _sniff(sample: str, whole: bool, suffix: str) -> str:
    """The candidate delimiter that splits the header and the rows most consistently."""
    order = ("\t", ",", ";", "|") if suffix == ".tsv" else _DELIMITERS
    scores: dict[str, tuple[float, int]] = {}
    for candidate in order:
        records = [r for r in _parse(sample, candidate, whole) if not _blank(r)][:200]
        if not records or len(records[0]) < 2:
            scores[candidate] = (0.0, 1)
            continue
        width = len(records[0])
        same = sum(1 for r in records if len(r) == width) / len(records)
        scores[candidate] = (same, width)
    best = max(order, key=lambda c: scores[c])  # max keeps the first of equals
    try:
        sniffed = csv.Sniffer().sniff(sample[:_SNIFF_CHARS], delimiters="".join(order)).delimiter
    except csv.Error:
        return best
    # Trust the sniffer only where it is as consistent as the best candidate.
    if sniffed in scores and scores[sniffed][1] > 1 and scores[sniffed][0] >= scores[best][0]:
        return sniffed
    return best


def _named(names: list[str]) -> list[int] | None:
    """Positions of the named columns, or None when every column is named."""
    keep = [i for i, n in enumerate(names) if n]
    return None if len(keep) == len(names) else keep


def _blank(cells: list[str]) -> bool:
    return not "".join(cells).strip()


def _header(name: str, cells: list[str], row: int, label: Callable[[int], str]) -> list[str]:
    """The column names: stripped; trailing empty cells dropped; no repeats.

    A column with an empty header before the last named one stays as "" and is left out
    of the table (`_named`): a pandas index column is common, and no mapping can name it.
    """
    names = [unescape_formula(cell).strip().lstrip("\ufeff").strip() for cell in cells]
    while names and not names[-1]:
        names.pop()
    seen: dict[str, int] = {}
    for i, column in enumerate(names):
        if not column:
            continue
        if column in seen:
            # Positions only: without a header row, these cells are a patient's values.
            raise InputError(
                f"{name}: columns {label(seen[column])} and {label(i)} have the same header "
                f"in row {row}; rename one"
            )
        seen[column] = i
    return names
