"""Read CSV and Excel exports as chunks of text cells keyed by spreadsheet row number.

`open_table` checks a file up front (type, encoding, delimiter, header, at least one row)
and raises `InputError` with one line saying what is wrong and what to do. `Table.chunks`
then streams DataFrames whose cells are all `str` and whose index is the row number a user
sees in Excel: the header is row 1 (or wherever it is after leading blank rows), a quoted
cell holding a line break is still one row, and blank rows count but are never yielded.

Cells are not trimmed or interpreted here; only the formula escape our CSV writer adds
(`escape_formula`) is undone, so a report a user fixed feeds back unchanged. Excel cells
become text: dates ISO 8601, whole numbers without ".0", booleans "true"/"false".
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import math
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.errors import ParserError
from python_calamine import (
    CalamineError,
    CalamineSheet,
    CalamineWorkbook,
    PasswordError,
    SheetVisibleEnum,
)

from importer._errors import ConfigError, InputError, no_such_file
from importer.intake._cutcheck import CellCounter, Cut, Shape

log = logging.getLogger("importer.reader")

__all__ = [
    "CSV_SUFFIXES",
    "EXCEL_SUFFIXES",
    "OPENERS",
    "SHORT_ROW",
    "TRUNCATED_FILE",
    "RowDefects",
    "SourceOptions",
    "Table",
    "escape_formula",
    "excel_serial_to_iso",
    "open_table",
    "sheet_label",
    "unescape_formula",
]

CSV_SUFFIXES: Final = (".csv", ".tsv", ".txt")
EXCEL_SUFFIXES: Final = (".xlsx", ".xlsm", ".xls")
_SUFFIX_LIST: Final = ".csv, .tsv, .txt, .xlsx, .xlsm or .xls"
#: Readers of files that are not tables of cells, by suffix: importer.intake._fhir adds FHIR's
#: (.json, .ndjson) when imported (it builds on `Table`, so this module cannot import it).
OPENERS: dict[str, Callable[[Path, str], Table]] = {}
#: Row error codes of rows the reader finds cut short (see `Table.defects`).
SHORT_ROW: Final = "short_row"
TRUNCATED_FILE: Final = "truncated_file"

_SAMPLE_BYTES: Final = 64 * 1024
#: csv.Sniffer's regexes turn quadratic on unclosed quotes; it sees only this much.
_SNIFF_CHARS: Final = 8 * 1024
#: A header (or first record) bigger than this is not a consent export.
_MAX_SAMPLE_BYTES: Final = 64 * 1024 * 1024
_BLOCK_BYTES: Final = 4 * 1024 * 1024
#: Re-reads allowed for records wider than the sample showed; more means a broken file.
_MAX_RESTARTS: Final = 16
_DELIMITERS: Final = (",", ";", "\t", "|")
_DELIMITER_NAMES: Final = {
    "tab": "\t",
    "\\t": "\t",
    "comma": ",",
    "semicolon": ";",
    "pipe": "|",
}

_BOMS: Final = (
    # UTF-32 first: its little-endian BOM starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_ZIP_MAGIC: Final = b"PK\x03\x04"
_OLE_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
#: Control bytes that never occur in text (tab, LF, FF, CR, ESC and DOS's EOF are allowed).
_BINARY_BYTES: Final = bytes(set(range(32)) - {9, 10, 12, 13, 26, 27})

#: What escape_formula protects: a formula or DDE trigger as the first character.
_NEEDS_ESCAPE: Final = re.compile(r"'*[=+\-@\t\r]")
_ESCAPED: Final = re.compile(r"'+[=+\-@\t\r]")
_ESCAPED_BYTES: Final = re.compile(rb"'[=+\-@\t\r]")

_EXPECTED_FIELDS: Final = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_EOF_IN_QUOTES: Final = re.compile(r"EOF inside string starting at row (\d+)")
_SERIAL: Final = re.compile(r"\d{1,7}(?:\.\d+)?")

_Bools = npt.NDArray[np.bool_]
#: Excel's first line naming the delimiter, which Excel hides when it opens the file.
_SEP_LINE: Final = re.compile(r"sep=([^\r\n\"])(?:\r\n|\n|\r)", re.IGNORECASE)

# The csv module refuses a field over 128 KiB by default; a long note or an embedded
# document in the first rows is a cell like any other (pandas' parser has no such limit).
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


@dataclass(frozen=True)
class SourceOptions:
    """How to read an input file; None means detect (or the first sheet).

    `sheet` applies to Excel files only, `encoding` and `delimiter` to CSV files only.

    Args:
        sheet: an Excel sheet by name or 0-based index.
        encoding: a Python codec name for CSV text.
        delimiter: one character, or "tab", "comma", "semicolon", "pipe".
        header_row: the 1-based line (CSV) or row (Excel) of the header; the lines above
            it (titles) are skipped. None: the first non-blank one.
    """

    sheet: str | int | None = None
    encoding: str | None = None
    delimiter: str | None = None
    header_row: int | None = None


# --- the formula escape ---------------------------------------------------------------------


def escape_formula(text: str) -> str:
    """Prefix `'` to a cell Excel would run as a formula (`=`, `+`, `-`, `@`, tab, CR).

    A cell that already starts with quotes before a trigger gets one more, so
    `unescape_formula(escape_formula(x)) == x` for every text.
    """
    return "'" + text if _NEEDS_ESCAPE.match(text) else text


def unescape_formula(text: str) -> str:
    """Undo `escape_formula`: `'=SUM(A1)` -> `=SUM(A1)`, while `'hello` stays as it is."""
    return text[1:] if _ESCAPED.match(text) else text


def _unescape_column(column: pd.Series) -> pd.Series:
    values = column.to_numpy(dtype=object)
    # One C-level join and find tells whether any cell starts with a quote at all, which
    # is far cheaper than a per-cell test on columns that have none (nearly all).
    joined = "\x00".join(values)
    if not joined.startswith("'") and "\x00'" not in joined:
        return column
    hits = column.str.match(_ESCAPED.pattern)
    if not hits.any():
        return column
    column = column.copy()
    column[hits] = column[hits].str.slice(1)
    return column


def _unescape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    for position in range(frame.shape[1]):
        column = frame.iloc[:, position]
        fixed = _unescape_column(column)
        if fixed is not column:
            frame.isetitem(position, fixed.array)
    return frame


# --- Excel serial dates -----------------------------------------------------------------------


def excel_serial_to_iso(text: str) -> str | None:
    """An Excel serial day number as ISO 8601 text, or None if `text` is not one.

    Serials count days from 1899-12-30 (so 45356 is 2024-03-05); the fraction is the time
    of day, kept to the second. Whole days give a date, others a date-time. Excel's
    phantom 1900-02-29 (serial 60) is rejected and earlier serials are shifted as Excel
    does; values past 9999-12-31 are not dates.
    """
    text = text.strip()
    if not _SERIAL.fullmatch(text):
        return None
    serial = float(text)
    if serial < 1 or serial >= 2958466 or 60 <= serial < 61:
        return None
    days = math.floor(serial)
    seconds = round((serial - days) * 86400)
    epoch = date(1899, 12, 31) if serial < 60 else date(1899, 12, 30)
    moment = datetime.combine(epoch, time()) + timedelta(days=days, seconds=seconds)
    if moment.year > 9999:
        return None
    if moment.time() == time():
        return moment.date().isoformat()
    return moment.isoformat(timespec="seconds")


# --- tables ---------------------------------------------------------------------------------


class RowDefects(Mapping[int, tuple[str, str]]):
    """Rows the reader found cut short, by row number: (rule code, message).

    Short rows are kept as two arrays (a file whose every row is short costs 12 bytes a
    row); the row a file ends in, cut off, is one entry of its own.
    """

    def __init__(
        self,
        rows: npt.NDArray[np.int64] | None = None,
        cells: npt.NDArray[np.int32] | None = None,
        width: int = 0,
        last: tuple[int, str] | None = None,
    ) -> None:
        self._rows = rows if rows is not None else np.empty(0, np.int64)
        self._cells = cells if cells is not None else np.empty(0, np.int32)
        self._width = width
        self._last = last  # (row, message) of a file's cut last row

    def __getitem__(self, row: int) -> tuple[str, str]:
        if self._last is not None and row == self._last[0]:
            return TRUNCATED_FILE, self._last[1]
        at = int(np.searchsorted(self._rows, row))
        if at == self._rows.size or self._rows[at] != row:
            raise KeyError(row)
        return SHORT_ROW, (
            f"has {self._cells[at]} of the header's {self._width} cells; a row cut short is "
            f"not read as empty cells, check the export ({SHORT_ROW})"
        )

    def __iter__(self) -> Iterator[int]:
        last = self._last[0] if self._last is not None else None
        yield from (row for row in self._rows.tolist() if row != last)
        if last is not None:
            yield last

    def __len__(self) -> int:
        last = self._last[0] if self._last is not None else None
        return int(self._rows.size) + (last is not None and last not in self._rows)

    def whole(self, numbers: npt.ArrayLike) -> _Bools:
        """Per row number: not cut short (for a chunk's index, at numpy speed)."""
        at = np.asarray(numbers, dtype=np.int64)
        whole: _Bools = ~np.isin(at, self._rows)
        if self._last is not None:
            whole &= at != self._last[0]
        return whole


class Table:
    """One opened input file: its header, and its rows as a stream of chunks.

    Attributes:
        name: the path as the user gave it, for messages and reports.
        columns: the header cells, stripped, unique and non-empty.
        encoding: the codec used for CSV text; None for Excel.
        delimiter: the CSV delimiter; None for Excel.
        sheet: the Excel sheet read; None for CSV.
        header_row: the row number of the header (1 unless blank rows precede it).
        defects: rows cut short, by row number: (rule code, what is wrong). Filled
            before `chunks` yields its first chunk; such a row is never to be sent.
            It may also name blank rows, which `chunks` never yields.
        truncated: the file ends inside a row (the export was cut off): one line
            saying so, else None. Set like `defects`.
    """

    def __init__(
        self,
        path: Path,
        name: str,
        columns: list[str],
        *,
        header_row: int,
        chunk_rows: int,
        encoding: str | None = None,
        delimiter: str | None = None,
        sheet: str | None = None,
    ) -> None:
        self.path = path
        self.name = name
        self.columns = columns
        self.header_row = header_row
        self.chunk_rows = chunk_rows
        self.encoding = encoding
        self.delimiter = delimiter
        self.sheet = sheet
        self.defects = RowDefects()
        self.truncated: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} columns={len(self.columns)}>"

    @property
    def label(self) -> str:
        """The file as errors name it: `book.xlsx[Consents]` for an Excel sheet, else the
        name (`name` stays what the ledger records)."""
        return sheet_label(self.name, self.sheet)

    def chunks(self) -> Iterator[pd.DataFrame]:
        """The non-blank rows, at most `chunk_rows` per chunk, every cell a `str`.

        The index is the spreadsheet row number; each call reads the file again.
        """
        raise NotImplementedError

    def count_rows(self) -> int:
        """How many non-blank rows `chunks` will yield, found without building them."""
        raise NotImplementedError

    def _require_rows(self) -> None:
        rows = self.chunks()
        try:
            first = next(rows, None)
        finally:
            if isinstance(rows, Generator):
                rows.close()  # closes the file now, not when collected
        if first is None:
            raise _no_rows(self.label)


def open_table(
    path: str | Path, options: SourceOptions = SourceOptions(), *, chunk_rows: int = 50_000
) -> Table:
    """Open a CSV or Excel file for reading, checking everything that can be checked early.

    Raises:
        InputError: the file is missing, of an unknown type, empty, has no rows under its
            header, is not what its extension says, or cannot be decoded or parsed.
        ConfigError: `options` names an unknown encoding or an unusable delimiter.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    name = str(path)
    path = Path(path)
    if not path.exists():
        raise InputError(no_such_file("", name, "check the path"))
    if path.is_dir():
        raise InputError(f"{name}: is a folder, not a file; give the path of a {_SUFFIX_LIST} file")
    suffix = path.suffix.lower()
    if suffix not in (*CSV_SUFFIXES, *EXCEL_SUFFIXES, *OPENERS):
        kind = f"'{path.suffix}'" if path.suffix else "(no extension)"
        raise InputError(
            f"{name}: unsupported file type {kind}; save it as {_SUFFIX_LIST} "
            "(FHIR: .json, .ndjson)"
        )
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(_SAMPLE_BYTES)
    except OSError as exc:
        raise InputError(
            f"{name}: cannot be read ({exc.strerror}); check its permissions"
        ) from None
    if size == 0:
        raise InputError(f"{name}: the file is empty; export it again with a header row")
    if suffix in OPENERS:
        return OPENERS[suffix](path, name)
    table: Table
    if suffix in EXCEL_SUFFIXES:
        table = _open_excel(path, name, head, options, chunk_rows)
    else:
        table = _open_csv(path, name, head, options, chunk_rows)
    table._require_rows()
    return table


# --- CSV ------------------------------------------------------------------------------------


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


class _CsvTable(Table):
    def __init__(self, path: Path, name: str, layout: _CsvLayout, chunk_rows: int) -> None:
        super().__init__(
            path,
            name,
            [c for c in layout.columns if c],
            header_row=layout.skip + 1,
            chunk_rows=chunk_rows,
            encoding=layout.encoding,
            delimiter=layout.delimiter,
        )
        self._layout = layout
        self._count: int | None = None
        self._cut: int | None = None  # the row cut inside quotes; 0: none; None: not looked
        self._cut_text = ""

    def chunks(self) -> Iterator[pd.DataFrame]:
        width = self._layout.width
        done = 0  # records after the header already turned into chunks
        restarts = 0
        cut = self._find_defects()
        # A file cut inside a quoted value: pandas reads up to the cut record, which is
        # read here (its cells as far as they go) so that it is reported, not lost.
        limit = cut - self.header_row - 1 if cut is not None else None
        while True:
            try:
                with closing(self._frames(width, done, limit)) as frames:
                    for frame in frames:
                        chunk = self._finish(frame, done)
                        done += len(frame)
                        if len(chunk):
                            yield chunk
                if cut is not None and (last := self._cut_frame(cut)) is not None:
                    yield last
                return
            except ParserError as exc:
                # A record wider than any in the sample: read on from the last chunk with
                # room for it, so its extra cells are checked like any others.
                wider = _EXPECTED_FIELDS.search(str(exc))
                if wider is None or restarts == _MAX_RESTARTS:
                    raise self._parse_error(exc) from None
                width = max(width, int(wider.group(3)))
                restarts += 1
            except UnicodeDecodeError:
                raise InputError(
                    f"{self.name}: is not valid {self.encoding} text; set encoding in the "
                    "mapping's [source] section"
                ) from None
            except OSError as exc:
                raise InputError(f"{self.name}: cannot be read ({exc.strerror})") from None

    def _frames(self, width: int, done: int, limit: int | None = None) -> Generator[pd.DataFrame]:
        layout = self._layout
        if limit is not None and limit <= done:
            return
        with pd.read_csv(
            self.path,
            sep=layout.delimiter,
            header=None,
            names=list(range(width)),
            skiprows=layout.skip + 1 + done,
            dtype=str,
            na_filter=False,
            keep_default_na=False,
            # Blank lines stay records so that row numbers count them; they are dropped
            # after parsing.
            skip_blank_lines=False,
            index_col=False,
            quotechar='"',
            doublequote=True,
            encoding=layout.encoding,
            engine="c",
            chunksize=self.chunk_rows,
            nrows=None if limit is None else max(limit - done, 0),
        ) as reader:
            yield from reader

    def _finish(self, frame: pd.DataFrame, done: int) -> pd.DataFrame:
        """Row numbers, the unnamed-cells check, blank rows out, formula escapes undone."""
        named = len(self._layout.columns)
        first = self.header_row + 1 + done
        if frame.shape[1] > named:
            extra = frame.iloc[:, named:]
            for offset in range(extra.shape[1]):
                filled = _has_text(extra.iloc[:, offset].to_numpy(dtype=object))
                if filled.any():
                    row = first + int(np.flatnonzero(filled)[0])
                    raise _unnamed_cell(self.name, row, str(named + offset + 1))
            frame = frame.iloc[:, :named]
        named_at = _named(self._layout.columns)
        if named_at is not None:
            frame = frame.iloc[:, named_at]
        frame.columns = pd.Index(self.columns)
        frame.index = pd.RangeIndex(first, first + len(frame))
        keep = _non_blank(frame)
        if not keep.all():
            frame = frame[keep]
        if self._layout.may_escape:
            frame = _unescape_frame(frame)
        return frame

    def _parse_error(self, exc: ParserError) -> InputError:
        message = str(exc)
        if match := _EXPECTED_FIELDS.search(message):
            row = int(match.group(2))
            return InputError(
                f"{self.name}, row {row}: has {match.group(3)} cells but the header has "
                f"{len(self.columns)} columns; remove the extra cells or name their columns"
            )
        if match := _EOF_IN_QUOTES.search(message):
            return _unterminated(self.name, int(match.group(1)) + 1)
        return InputError(f"{self.name}: cannot be parsed as CSV; check its quotes and delimiters")

    def count_rows(self) -> int:
        if self._count is None:
            self._count = self._scan_count()
        return self._count

    def _find_defects(self) -> int | None:
        """Fill `defects` and `truncated` (once); the row number of a last record cut
        inside a quoted value, which pandas cannot read."""
        if self._cut is not None:
            return self._cut or None
        layout = self._layout
        shape, stream = self._shape()
        named = len(layout.columns)
        first = layout.skip + 1  # records before it: titles, `sep=`, the header
        # Record i is row i + 1: pandas numbers rows by records as well (quoted line
        # breaks included), which is what `_finish` counts.
        keep = shape.records >= first
        rows, cells = shape.records[keep] + 1, shape.cells[keep]
        cut_row = 0
        last = None
        cut = shape.cut
        if cut is not None and cut.record >= first:
            row = cut.record + 1
            how = (
                "inside a quoted value"
                if cut.in_quotes
                else f"after {cut.cells} of the header's {named} cells"
            )
            last = (
                row,
                f"the file ends {how} of this row without a line break: the export was cut "
                f"off, export it again ({TRUNCATED_FILE})",
            )
            self.truncated = (
                f"{self.name}: ends {how} of row {row} without a line break: the export looks "
                f"cut off; row {row} is reported invalid, never sent ({TRUNCATED_FILE})"
            )
            log.warning("%s", self.truncated)
            if cut.in_quotes:
                cut_row = row
                self._cut_text = cut.tail.decode(stream, "replace")
        self.defects = RowDefects(rows, cells, named, last)
        self._cut = cut_row
        return cut_row or None

    def _shape(self) -> tuple[Shape, str]:
        """Cells per record where short, by one vectorised pass over the bytes (the
        csv module where quoting is too irregular for it); the stream's encoding."""
        layout = self._layout
        compatible = _ascii_compatible(layout.encoding)
        stream = layout.encoding if compatible else "utf-8"
        delimiter = layout.delimiter.encode(stream)
        named = len(layout.columns)
        shape: Shape | None = None
        if len(delimiter) == 1:
            blocks = _byte_blocks(self.path)
            if not compatible:
                blocks = _transcode(blocks, layout.encoding)
            counter = CellCounter(delimiter[0], ord(layout.newline), named)
            try:
                for block in blocks:
                    counter.feed(block)
            except OSError as exc:
                raise InputError(f"{self.name}: cannot be read ({exc.strerror})") from None
            shape = counter.finish()
        if shape is None or not shape.sure:
            shape = self._exact_shape(shape, named)
        return shape, stream

    def _exact_shape(self, counted: Shape | None, named: int) -> Shape:
        """Cells per record by the csv module, whose quoting rules are the C parser's."""
        records: list[int] = []
        widths: list[int] = []
        index = -1
        cells = named
        try:
            with self.path.open(encoding=self._layout.encoding, errors="replace", newline="") as f:
                for index, record in enumerate(
                    csv.reader(f, delimiter=self._layout.delimiter, quotechar='"')
                ):
                    cells = len(record)
                    if cells < named:
                        records.append(index)
                        widths.append(cells)
                raw = self.path.read_bytes()[-4:]
        except OSError as exc:
            raise InputError(f"{self.name}: cannot be read ({exc.strerror})") from None
        shape = Shape(np.array(records, dtype=np.int64), np.array(widths, dtype=np.int32))
        ended = raw.rstrip(b"\x00").endswith((b"\n", b"\r"))
        if counted is not None and counted.cut is not None:
            shape.cut = replace(counted.cut, record=index, cells=cells)
        elif not ended and index >= 0 and cells < named:
            shape.cut = Cut(index, cells, in_quotes=False, tail=b"")
        return shape

    def _cut_frame(self, row: int) -> pd.DataFrame | None:
        """The record a file ends in, inside a quoted value, as a one-row chunk."""
        text = self._cut_text
        if not text:
            return None  # longer than MAX_TAIL_BYTES: reported, not readable
        record = next(
            csv.reader(io.StringIO(text, newline=""), delimiter=self._layout.delimiter), []
        )
        named = len(self._layout.columns)
        cells = (record + [""] * named)[:named]
        named_at = _named(self._layout.columns)
        if named_at is not None:
            cells = [cells[i] for i in named_at]
        frame = pd.DataFrame(
            [cells], columns=pd.Index(self.columns), index=pd.Index([row]), dtype="str"
        )
        if _blank(cells):
            return None
        return _unescape_frame(frame) if self._layout.may_escape else frame

    def _scan_count(self) -> int:
        layout = self._layout
        delimiter = layout.delimiter.encode("utf-8")
        if len(delimiter) != 1:
            return sum(len(chunk) for chunk in self.chunks())
        blocks = _byte_blocks(self.path)
        if not _ascii_compatible(layout.encoding):
            blocks = _transcode(blocks, layout.encoding)
        counter = _RecordCounter(delimiter[0], ord(layout.newline))
        for block in blocks:
            counter.feed(block)
        # The first non-blank record after the preamble is the header.
        return max(counter.finish() - 1 - layout.preamble, 0)


def _open_csv(
    path: Path, name: str, head: bytes, options: SourceOptions, chunk_rows: int
) -> _CsvTable:
    forced = _encoding_option(options.encoding)
    delimiter = _delimiter_option(options.delimiter)
    encoding, may_escape = _choose_encoding(path, name, head, forced)
    size = _SAMPLE_BYTES
    while True:
        sample, whole = _read_sample(path, encoding, size)
        layout = _csv_layout(
            name, sample, whole, encoding, delimiter, path.suffix.lower(), options.header_row
        )
        if layout is not None:
            break
        if size >= _MAX_SAMPLE_BYTES:
            raise InputError(
                f"{name}: no header row in the first {_MAX_SAMPLE_BYTES >> 20} MB; check that "
                "it is a CSV export"
            )
        size *= 4
    return _CsvTable(path, name, replace(layout, may_escape=may_escape), chunk_rows)


def _encoding_option(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return codecs.lookup(value).name
    except LookupError:
        raise ConfigError(
            f"[source] encoding '{value}' is not a known encoding; use a name like utf-8 or cp1252"
        ) from None


def _delimiter_option(value: str | None) -> str | None:
    if value is None:
        return None
    delimiter = _DELIMITER_NAMES.get(value.lower(), value) if len(value) > 1 else value
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise ConfigError(
            f"[source] delimiter {value!r} is not usable; give one character, or tab, "
            "comma, semicolon or pipe"
        )
    return delimiter


def _choose_encoding(path: Path, name: str, head: bytes, forced: str | None) -> tuple[str, bool]:
    """The codec to read with, checked on the whole file, and whether a formula escape may occur.

    A BOM decides, even over a forced encoding; without one, the forced encoding, else
    UTF-8 if the whole file decodes as UTF-8, else cp1252 (what Excel on Windows writes).
    """
    if head.startswith(_ZIP_MAGIC):
        raise InputError(f"{name}: is an Excel workbook, not CSV text; rename it to .xlsx")
    if head.startswith(_OLE_MAGIC):
        raise InputError(f"{name}: is an Excel 97-2003 workbook, not CSV text; rename it to .xls")
    bom = next((codec for mark, codec in _BOMS if head.startswith(mark)), None)
    # A BOM is certain, a mapping's encoding a default: a fixed failed.csv (UTF-8 with
    # BOM) feeds back with the cp1252 export's mapping.
    encoding = bom or forced or _bomless_utf16(head) or ""
    # NULs belong in UTF-16 and UTF-32 text; in any other they mean a binary file.
    texty = not _ascii_compatible(encoding or "utf-8")
    if not texty and (b"\x00" in head or _binary_share(head) > 0.01):
        raise _binary(name)
    if encoding:
        try:
            return encoding, _scan_text(path, name, encoding)
        except _DecodeFailed as exc:
            raise _undecodable(name, encoding, exc.line) from None
    try:
        return "utf-8", _scan_text(path, name, "utf-8")
    except _DecodeFailed:
        pass
    try:
        return "cp1252", _scan_text(path, name, "cp1252")
    except _DecodeFailed as exc:
        raise InputError(
            f"{name}: is neither UTF-8 nor Windows-1252 text (near line {exc.line}); set "
            "encoding in the mapping's [source] section (for example latin-1)"
        ) from None


def _binary_share(head: bytes) -> float:
    """The share of bytes that are control characters text never holds."""
    return (len(head) - len(head.translate(None, _BINARY_BYTES))) / max(len(head), 1)


def _bomless_utf16(head: bytes) -> str | None:
    """UTF-16 without a BOM: mostly-ASCII text has a NUL in every other byte."""
    if len(head) < 4 or len(head) % 2:
        return None
    even, odd = head[0::2], head[1::2]
    if odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None


class _DecodeFailed(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _scan_text(path: Path, name: str, encoding: str) -> bool:
    """Decode the whole file block by block; tell whether a formula escape may occur.

    Raises:
        _DecodeFailed: with the line of the first byte that does not decode.
        InputError: the file holds NUL bytes or cannot be read.
    """
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    compatible = _ascii_compatible(encoding)
    may_escape = False
    lines = 1
    tail = b""  # the last byte of the previous block: an escape may straddle blocks
    text_tail = ""
    try:
        for block in _byte_blocks(path):
            if compatible:
                # Pure-ASCII blocks are valid in every ASCII-compatible codec.
                if not block.isascii() or decoder.getstate()[0]:
                    _decode(decoder, block, lines)
                if b"\x00" in block:
                    raise _binary(name)
                may_escape = may_escape or bool(
                    _ESCAPED_BYTES.search(block) or _ESCAPED_BYTES.match(tail + block[:1])
                )
                lines += block.count(b"\n")
                tail = block[-1:]
            else:
                text = _decode(decoder, block, lines)
                if "\x00" in text:
                    raise _binary(name)
                may_escape = may_escape or bool(
                    _ESCAPED.search(text) or _ESCAPED.match(text_tail + text[:1])
                )
                lines += text.count("\n")
                text_tail = text[-1:] or text_tail  # a block can decode to nothing
        _decode(decoder, b"", lines, final=True)
    except OSError as exc:
        raise InputError(f"{name}: cannot be read ({exc.strerror})") from None
    return may_escape


def _decode(
    decoder: codecs.IncrementalDecoder, block: bytes, lines: int, *, final: bool = False
) -> str:
    try:
        return decoder.decode(block, final)
    except UnicodeDecodeError as exc:
        before = bytes(exc.object[: exc.start]).decode(exc.encoding, "replace")
        raise _DecodeFailed(lines + before.count("\n")) from None


def _undecodable(name: str, encoding: str, line: int) -> InputError:
    other = "cp1252" if encoding.startswith("utf") else "utf-8"
    return InputError(
        f'{name}: is not valid {encoding} text (near line {line}); set encoding = "{other}" '
        "in the mapping's [source] section, or remove it to detect the encoding"
    )


def _binary(name: str) -> InputError:
    return InputError(
        f"{name}: does not look like a text CSV (it holds binary data); export it again as "
        "CSV or Excel"
    )


def _no_rows(name: str) -> InputError:
    return InputError(f"{name}: has a header row but no rows to import; add rows below the header")


def _unterminated(name: str, row: int) -> InputError:
    return InputError(
        f'{name}: unterminated quoted field starting near row {row}; close the quote (") '
        "or remove it"
    )


def _unnamed_cell(name: str, row: int, column: str) -> InputError:
    return InputError(
        f"{name}, row {row}: a value in column {column}, which has no header; name the column "
        "in the header row or delete the value"
    )


def _ascii_compatible(encoding: str) -> bool:
    """True if ASCII bytes always mean ASCII characters (no multi-byte code units)."""
    codec = codecs.lookup(encoding).name
    return codec in {"utf-8", "utf-8-sig", "ascii", "latin-1"} or codec.startswith(
        ("cp125", "iso8859", "cp437", "cp850", "mac-")
    )


def _byte_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK_BYTES):
            yield block


def _transcode(blocks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    for block in blocks:
        yield decoder.decode(block).encode("utf-8")
    yield decoder.decode(b"", True).encode("utf-8")


def _read_sample(path: Path, encoding: str, size: int) -> tuple[str, bool]:
    """The start of the file as text, and whether that is all of it."""
    with path.open("rb") as handle:
        raw = handle.read(size + 1)
    whole = len(raw) <= size
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    text = decoder.decode(raw[:size], whole)
    return text.lstrip("\ufeff"), whole


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
        # Other strict-mode complaints (text after a closing quote) pandas accepts.


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


_isspace: Final = np.frompyfunc(str.isspace, 1, 1)


def _has_text(values: npt.NDArray[Any]) -> _Bools:
    """Per cell: holds something other than whitespace."""
    filled: _Bools = values.astype(bool)
    where = np.flatnonzero(filled)
    if where.size:
        spaces = _isspace(values[where]).astype(bool)
        filled[where[spaces]] = False
    return filled


def _non_blank(frame: pd.DataFrame) -> _Bools:
    """Per row: some cell holds text.

    Columns are tried in turn on the rows still in doubt, so the usual frame (first
    column always filled) costs one column.
    """
    rows = len(frame)
    keep = np.zeros(rows, dtype=bool)
    doubt = np.arange(rows)
    for position in range(frame.shape[1]):
        if not doubt.size:
            break
        values = frame.iloc[:, position].to_numpy(dtype=object)
        found = _has_text(values if doubt.size == rows else values[doubt])
        keep[doubt[found]] = True
        doubt = doubt[~found]
    return keep


class _RecordCounter:
    """Count non-blank CSV records in ASCII-compatible bytes, vectorised with numpy.

    A quote opens or closes a quoted field only next to a delimiter, a line break or
    another quote, as in well-formed CSV; a stray quote inside a cell (`12" ruler`) is
    ignored as the C parser does. A record is blank when it holds nothing but
    delimiters, quotes and whitespace. Exact for well-formed files, close otherwise.
    """

    def __init__(self, delimiter: int, newline: int) -> None:
        self.newline = newline
        self.quote = ord('"')
        self.boundary = np.zeros(256, dtype=bool)
        self.boundary[[delimiter, 10, 13, self.quote]] = True
        self.content = np.ones(256, dtype=bool)
        self.content[[delimiter, 9, 10, 13, 32, self.quote]] = False
        self.parity = 0
        self.prev = newline  # the byte before the current block
        self.held = b""  # the last byte, kept until the byte after it is known
        self.open_content = False  # the record still open has content
        self.total = 0

    def feed(self, block: bytes) -> None:
        data = self.held + block
        if len(data) < 2:
            self.held = data
            return
        self.held = data[-1:]
        array = np.frombuffer(data, dtype=np.uint8)
        self._count(array[:-1], int(array[-1]))

    def finish(self) -> int:
        if self.held:
            self._count(np.frombuffer(self.held, dtype=np.uint8), self.newline)
            self.held = b""
        if self.open_content:
            self.total += 1
            self.open_content = False
        return self.total

    def _count(self, a: npt.NDArray[np.uint8], after: int) -> None:
        n = a.size
        quotes = np.flatnonzero(a == self.quote)
        if quotes.size:
            before = a[np.maximum(quotes - 1, 0)]
            before[quotes == 0] = self.prev
            following = a[np.minimum(quotes + 1, n - 1)]
            following[quotes == n - 1] = after
            quotes = quotes[self.boundary[before] | self.boundary[following]]
        breaks = np.flatnonzero(a == self.newline)
        inside = (np.searchsorted(quotes, breaks) + self.parity) & 1
        ends = breaks[inside == 0]
        self.parity = (self.parity + quotes.size) & 1
        self.prev = int(a[-1])
        if not ends.size:
            self.open_content = self.open_content or bool(self.content[a].any())
            return
        starts = np.concatenate(([0], ends[:-1] + 1))
        filled = np.zeros(ends.size, dtype=bool)
        # Most records show content in their first bytes; only the rest need a full look.
        for step in range(4):
            at = starts + step
            filled |= (at < ends) & self.content[a[np.minimum(at, n - 1)]]
        doubt = np.flatnonzero(~filled & (ends - starts > 4))
        if doubt.size:
            sums = np.concatenate(([0], np.cumsum(self.content[a], dtype=np.int32)))
            filled[doubt] = sums[ends[doubt]] > sums[starts[doubt]]
        if self.open_content:
            filled[0] = True
        self.total += int(np.count_nonzero(filled))
        self.open_content = bool(self.content[a[ends[-1] + 1 :]].any())


# --- Excel ----------------------------------------------------------------------------------


class _Workbook:
    """Opens the workbook, by content when the extension is wrong about the format."""

    def __init__(self, path: Path, name: str, by_content: bool) -> None:
        self.path = path
        self.name = name
        self.by_content = by_content

    @contextmanager
    def open(self) -> Iterator[CalamineWorkbook]:
        with ExitStack() as stack:
            try:
                if self.by_content:
                    handle = stack.enter_context(self.path.open("rb"))
                    workbook = CalamineWorkbook.from_filelike(handle)
                else:
                    workbook = CalamineWorkbook.from_path(str(self.path))
            except PasswordError:
                raise InputError(
                    f"{self.name}: is password-protected; save a copy without a password"
                ) from None
            except (CalamineError, OSError):
                raise self.unreadable() from None
            stack.enter_context(workbook)
            yield workbook

    def unreadable(self) -> InputError:
        return InputError(
            f"{self.name}: cannot be read as an Excel workbook (damaged, encrypted or another "
            "format); open it in Excel and save it again as .xlsx"
        )


class _ExcelTable(Table):
    def __init__(
        self,
        path: Path,
        name: str,
        columns: list[str],
        *,
        keep: list[int] | None = None,
        workbook: _Workbook,
        sheet: str,
        header_row: int,
        first_column: int,
        count: int,
        chunk_rows: int,
    ) -> None:
        super().__init__(
            path,
            name,
            [c for c in columns if c],
            header_row=header_row,
            chunk_rows=chunk_rows,
            sheet=sheet,
        )
        self._width = len(columns)
        self._keep = keep
        self._workbook = workbook
        self._first_column = first_column
        self._count = count

    def count_rows(self) -> int:
        return self._count

    def _require_rows(self) -> None:
        # The open pass counted the rows already; parsing the sheet again would double
        # the cost of opening.
        if self._count == 0:
            raise _no_rows(self.label)

    def chunks(self) -> Iterator[pd.DataFrame]:
        named = self._width
        keep = self._keep
        where = self.label
        convert = _cell_text
        rows: list[list[str]] = []
        numbers: list[int] = []
        for number, cells in self._rows():
            texts = [cell if type(cell) is str else convert(cell) for cell in cells]
            if _blank(texts):
                continue
            if len(texts) > named:
                if not _blank(texts[named:]):
                    offset = next(i for i, t in enumerate(texts[named:]) if t.strip())
                    column = _column_letter(self._first_column + named + offset)
                    raise _unnamed_cell(where, number, column)
                del texts[named:]
            elif len(texts) < named:
                texts.extend([""] * (named - len(texts)))
            rows.append(texts if keep is None else [texts[i] for i in keep])
            numbers.append(number)
            if len(rows) == self.chunk_rows:
                yield self._frame(rows, numbers)
                rows, numbers = [], []
        if rows:
            yield self._frame(rows, numbers)

    def _frame(self, rows: list[list[str]], numbers: list[int]) -> pd.DataFrame:
        frame = pd.DataFrame(
            rows,
            columns=pd.Index(self.columns),
            index=pd.Index(numbers, dtype="int64"),
            dtype="str",
        )
        return _unescape_frame(frame)

    def _rows(self) -> Iterator[tuple[int, list[Any]]]:
        with self._workbook.open() as workbook:
            try:
                sheet = workbook.get_sheet_by_name(self.sheet or "")
            except CalamineError:
                raise self._workbook.unreadable() from None
            if sheet.start is None:
                return
            for number, cells in _sheet_rows(sheet, fill_below=self.header_row):
                if number > self.header_row:
                    yield number, cells


def _open_excel(
    path: Path, name: str, head: bytes, options: SourceOptions, chunk_rows: int
) -> _ExcelTable:
    suffix = path.suffix.lower()
    if head.startswith(_ZIP_MAGIC):
        by_content = suffix == ".xls"
    elif head.startswith(_OLE_MAGIC):
        by_content = suffix != ".xls"
    else:
        raise _not_excel(name, head, suffix)
    workbook = _Workbook(path, name, by_content)
    with workbook.open() as book:
        hidden = {
            meta.name for meta in book.sheets_metadata if meta.visible != SheetVisibleEnum.Visible
        }
        sheet_name = _pick_sheet(name, book.sheet_names, options.sheet, hidden)
        try:
            sheet = book.get_sheet_by_name(sheet_name)
        except CalamineError:
            raise workbook.unreadable() from None
        if sheet.start is None:
            raise InputError(
                f"{name}: sheet '{sheet_name}' is empty; choose the sheet with the data"
            )
        first_column = sheet.start[1]
        # The header as it is (a merged title or header cell is not spread over columns),
        # then the rows below it as Excel shows them (merged cells filled). With
        # `header_row`, the rows above it are titles.
        wanted = options.header_row
        header = next(
            (
                (n, cells)
                for n, cells in enumerate(sheet.iter_rows(), 1)
                if (n == wanted if wanted is not None else True) and not _blank_cells(cells)
            ),
            None,
        )
        if header is None and wanted is not None:
            raise InputError(
                f"{name}: row {wanted} (source.header_row) of sheet '{sheet_name}' is blank; "
                "give the row of the header"
            )
        if header is None:
            raise InputError(
                f"{name}: sheet '{sheet_name}' is empty; choose the sheet with the data"
            )
        count = sum(
            1
            for number, cells in _sheet_rows(sheet, fill_below=header[0])
            if number > header[0] and not _blank_cells(cells)
        )
    header_row, cells = header
    columns = _header(
        sheet_label(name, sheet_name),
        [_cell_text(cell) for cell in cells],
        header_row,
        lambda i: _column_letter(first_column + i),
    )
    return _ExcelTable(
        path,
        name,
        columns,
        keep=_named(columns),
        workbook=workbook,
        sheet=sheet_name,
        header_row=header_row,
        first_column=first_column,
        count=count,
        chunk_rows=chunk_rows,
    )


def _not_excel(name: str, head: bytes, suffix: str) -> InputError:
    text = head.lstrip(codecs.BOM_UTF8).lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<table", b"<?xml")):
        return InputError(
            f"{name}: is a web page or XML file saved as {suffix}, not an Excel workbook; open "
            "it in Excel and save it as .xlsx"
        )
    has_bom = any(head.startswith(mark) for mark, _ in _BOMS)
    if has_bom or (b"\x00" not in head and _binary_share(head) <= 0.01):
        return InputError(
            f"{name}: is not an Excel file, it looks like CSV text; rename it to .csv"
        )
    return InputError(
        f"{name}: is not an Excel workbook (damaged or another format); open it in Excel and "
        "save it again as .xlsx"
    )


def sheet_label(name: str, sheet: str | None) -> str:
    """The file as errors name it: an Excel file with its sheet (`book.xlsx[Consents]`),
    a CSV file (no sheet) as it is."""
    return f"{name}[{sheet}]" if sheet else name


def _sheet_rows(sheet: CalamineSheet, *, fill_below: int) -> Iterator[tuple[int, list[Any]]]:
    """(row number, cells) of a sheet, with each merged range below row `fill_below`
    holding its top-left value in every cell, as Excel shows it (calamine leaves the other
    cells of the range empty)."""
    first_column = sheet.start[1] if sheet.start is not None else 0
    merges = sorted(
        (r0, c0, r1, c1)
        for (r0, c0), (r1, c1) in (sheet.merged_cell_ranges or [])
        if r0 >= fill_below and (r1, c1) != (r0, c0)
    )
    upcoming = 0
    active: list[tuple[int, int, int, Any]] = []  # (last row, first column, last column, value)
    # iter_rows pads the rows above the used range, so positions are real rows.
    for index, cells in enumerate(sheet.iter_rows()):
        while upcoming < len(merges) and merges[upcoming][0] == index:
            _, c0, r1, c1 = merges[upcoming]
            at = c0 - first_column
            value = cells[at] if 0 <= at < len(cells) else ""
            active.append((r1, c0, c1, value))
            upcoming += 1
        if active:
            active = [m for m in active if m[0] >= index]
            cells = list(cells)
            for _, c0, c1, value in active:
                for at in range(max(c0 - first_column, 0), min(c1 - first_column + 1, len(cells))):
                    cells[at] = value
        yield index + 1, cells


def _pick_sheet(
    name: str, sheets: list[str], wanted: str | int | None, hidden: set[str] | None = None
) -> str:
    listed = ", ".join(f"'{s}'" for s in sheets)
    if wanted is None:
        if not sheets:
            raise InputError(f"{name}: the workbook has no sheets")
        # The first sheet a person sees, not a hidden lookup or settings sheet.
        return next((s for s in sheets if s not in (hidden or set())), sheets[0])
    if isinstance(wanted, int):
        if 0 <= wanted < len(sheets):
            return sheets[wanted]
        raise InputError(
            f"{name}: no sheet at index {wanted} (0-based); the workbook has {len(sheets)}: "
            f"{listed}"
        )
    if wanted in sheets:
        return wanted
    raise InputError(f"{name}: no sheet named '{wanted}'; the sheets are {listed}")


def _blank_cells(cells: list[Any]) -> bool:
    return all(type(cell) is str and (not cell or cell.isspace()) for cell in cells)


def _column_letter(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA."""
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(65 + remainder) + letters
    return letters


def _cell_text(value: object) -> str:
    """One Excel cell as the text a user would type for it."""
    convert = _CELL_TEXT.get(type(value))
    return convert(value) if convert is not None else str(value)


def _number_text(value: float) -> str:
    # Ids stored as numbers come back as floats: 12345.0 must read "12345".
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    # 15 significant digits is what Excel shows, and drops float noise (0.1 + 0.2).
    return format(value, ".15g")


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


def _moment_text(value: datetime | time) -> str:
    # Excel keeps milliseconds at most; whole seconds are the usual case.
    return value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")


def _duration_text(value: timedelta) -> str:
    seconds = round(value.total_seconds())
    sign = "-" if seconds < 0 else ""
    hours, rest = divmod(abs(seconds), 3600)
    return f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}"


#: By exact type (one dict lookup per cell): what calamine hands back for each cell kind.
_CELL_TEXT: Final[dict[type, Callable[[Any], str]]] = {
    str: str,
    float: _number_text,
    int: str,
    bool: _bool_text,
    datetime: _moment_text,
    date: date.isoformat,
    time: _moment_text,
    timedelta: _duration_text,
}
