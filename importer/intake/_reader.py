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
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.errors import ParserError

from importer._errors import ConfigError, InputError, no_such_file
from importer._rows import sheet_label
from importer.intake._arrow_csv import ArrowMismatch, Skipped, arrow_frames
from importer.intake._cutcheck import CellCounter, Cut, Shape
from importer.intake._encoding import (
    _BOMS,
    _OLE_MAGIC,
    _ZIP_MAGIC,
    _ascii_compatible,
    _binary,
    _binary_share,
    _bomless_utf16,
    _decode,
    _DecodeFailed,
    _transcode,
    _undecodable,
)
from importer.intake._formulas import (
    _ESCAPED,
    _ESCAPED_BYTES,
    _unescape_frame,
    escape_formula,
    unescape_formula,
)
from importer.intake._layout import _blank, _csv_layout, _CsvLayout, _named, _unterminated

log = logging.getLogger("importer.reader")

__all__ = [
    "CELLS",
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
#: A header (or first record) bigger than this is not a consent export.
_MAX_SAMPLE_BYTES: Final = 64 * 1024 * 1024
_BLOCK_BYTES: Final = 4 * 1024 * 1024
_LF_BYTE: Final = 10
#: Re-reads allowed for records wider than the sample showed; more means a broken file.
_MAX_RESTARTS: Final = 16
#: Codecs Arrow's CSV reader reads natively; any other it would decode through Python,
#: slower than pandas' C parser, so those files (cp1252, UTF-16, ...) stay with the C parser.
_ARROW_CODECS: Final = frozenset({"utf-8", "utf-8-sig"})
#: Records Arrow parses at a time (a stretch); each fills its part of a chunk of
#: `chunk_rows`, as the C parser yields them. Arrow holds one stretch's bytes and table:
#: stretches of 50,000 put `validate` of 1M rows at 300-330 MB.
_ARROW_STRETCH: Final = 12_500
#: Short records (fewer cells than the header, not blank) the Arrow path puts back itself,
#: at most: a file with more is read by the C parser, which pads them as it goes.
_MAX_SKIPPED: Final = 10_000
_DELIMITER_NAMES: Final = {
    "tab": "\t",
    "\\t": "\t",
    "comma": ",",
    "semicolon": ";",
    "pipe": "|",
}


_EXPECTED_FIELDS: Final = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_EOF_IN_QUOTES: Final = re.compile(r"EOF inside string starting at row (\d+)")
_SERIAL: Final = re.compile(r"\d{1,7}(?:\.\d+)?")

_Bools = npt.NDArray[np.bool_]

#: The dtype of every cell a reader yields: pandas' `str` with Python storage, named in
#: full. `dtype=str` would mean Arrow storage wherever pyarrow is installed (pandas 3's
#: default), which made `validate` 1.6x slower and 120 MB bigger; the Arrow CSV path
#: turns its columns into this dtype too, so the rest of the product sees one kind of
#: chunk whichever reader made it.
CELLS: Final = pd.StringDtype("python", na_value=np.nan)

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

    def __contains__(self, row: object) -> bool:
        # Asked of every row a run normalizes, and most files have no short row: no
        # searchsorted and no KeyError raised and caught (Mapping's way) for those.
        if not isinstance(row, int | np.integer):  # as __getitem__ takes them
            return False
        number = int(row)
        if self._last is not None and number == self._last[0]:
            return True
        if not self._rows.size:
            return False
        at = int(np.searchsorted(self._rows, number))
        return at < self._rows.size and int(self._rows[at]) == number

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
        # Here, not at the top: the Excel reader builds on this module's Table.
        from importer.intake._excel import _open_excel

        table = _open_excel(path, name, head, options, chunk_rows)
    else:
        table = _open_csv(path, name, head, options, chunk_rows)
    table._require_rows()
    return table


# --- CSV ------------------------------------------------------------------------------------


class _CsvTable(Table):
    #: Read with Arrow where it reads the file as the C parser does (`_arrow_plan`);
    #: False: always the C parser (tests compare the two).
    arrow: bool = True

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
        #: Where Arrow starts, every `chunk_rows` records, and the records it skips.
        self._plan: tuple[list[int], Skipped] | None = None

    def chunks(self) -> Iterator[pd.DataFrame]:
        width = self._layout.width
        done = 0  # records after the header already turned into chunks
        restarts = 0
        cut = self._find_defects()
        if self.arrow and self._plan is not None:
            yield from self._arrow_chunks(*self._plan)
            return
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

    @property
    def _stretch(self) -> int:
        """Records Arrow parses at a time."""
        return min(self.chunk_rows, _ARROW_STRETCH)

    def _require_rows(self) -> None:
        self._find_defects()
        if not (self.arrow and self._plan is not None):
            super()._require_rows()
            return
        # Arrow's path looks for a first row a stretch at a time, not a chunk (the chunk
        # would be parsed again when read).
        rows = self._arrow_chunks(*self._plan, rows=self._stretch)
        try:
            first = next(rows, None)
        finally:
            rows.close()
        if first is None:
            raise _no_rows(self.label)

    def _arrow_chunks(
        self, marks: list[int], skipped: Skipped, rows: int | None = None
    ) -> Generator[pd.DataFrame]:
        """`chunks` by Arrow (chunks of `rows`, else `chunk_rows`): its frames are the C
        parser's, so `_finish` is the same."""
        import pyarrow as pa

        done = 0
        frames = arrow_frames(
            self.path,
            marks,
            len(self._layout.columns),
            self._layout.delimiter,
            self._stretch,
            skipped,
            CELLS,
            rows or self.chunk_rows,
        )
        # Chunks of `chunk_rows`, the C parser's, though Arrow parses a stretch at a time:
        # what is decided a chunk at a time (a date column's day/month order, the values
        # profile's first values) is then decided alike by either reader (review of
        # issue 24).
        try:
            with closing(frames):
                for frame in frames:
                    chunk = self._finish(frame, done)
                    done += len(frame)
                    del frame  # (no chunk held here while the next one is made)
                    if len(chunk):
                        yield chunk
                    del chunk
        except (pa.ArrowInvalid, ArrowMismatch) as exc:
            # `_arrow_plan` admits only files the counter found regular: not expected.
            # Arrow's messages quote the row (PHI): only the kind of failure is logged.
            log.error("%s: Arrow's CSV reader failed (%s)", self.name, type(exc).__name__)
            raise InputError(
                f"{self.name}: cannot be parsed as CSV; check its quotes and delimiters"
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
            dtype=CELLS,
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
        self._plan = self._arrow_plan(shape, first)
        return cut_row or None

    def _arrow_plan(self, shape: Shape, first: int) -> tuple[list[int], Skipped] | None:
        """Where Arrow starts and the records it will skip, when Arrow reads this file as
        the C parser does; else None (the C parser reads it).

        Arrow's parser: UTF-8 only (`_ARROW_CODECS`), LF or CRLF line breaks (it also ends
        a record at a lone CR, which the counter marks unsure), quoting the counter found
        well-formed (`Shape.sure`; a stray quote in mid-field, `12" ruler`, it reads
        differently), no record wider than the header (the C path's extra-cell checks),
        not cut off at the end (the C path reads the cut record), and a header that is
        one line a record (Arrow starts at a byte offset found by counting records).
        """
        layout = self._layout
        named = len(layout.columns)
        if (
            layout.encoding not in _ARROW_CODECS
            or layout.newline != "\n"
            or not layout.delimiter.isascii()
            or not shape.sure
            or shape.cut is not None
            or shape.widest > named
            or layout.width != named
            or not shape.marks
        ):
            return None
        try:
            import pyarrow.csv  # noqa: F401  (the `arrow` extra; the C parser if it is missing)
        except ImportError:
            return None
        keep = shape.records >= first
        starts, ends = shape.starts[keep], shape.ends[keep]
        records: list[int] = []
        cells: list[list[str]] = []
        try:
            with self.path.open("rb") as handle:
                if handle.read(shape.marks[0]).count(b"\n") != first:
                    return None  # a quoted line break in the titles or the header
                for record, start, end in zip(
                    (shape.records[keep] - first).tolist(),
                    starts.tolist(),
                    ends.tolist(),
                    strict=True,
                ):
                    handle.seek(start)
                    raw = handle.read(end - start)
                    if not raw.rstrip(b"\r"):
                        continue  # an empty line: Arrow pads it, as the C parser does
                    if len(records) == _MAX_SKIPPED:
                        return None
                    text = raw.decode("utf-8")
                    found = next(
                        csv.reader(io.StringIO(text, newline=""), delimiter=layout.delimiter), []
                    )
                    records.append(record)
                    cells.append((found + [""] * named)[:named])
        except OSError as exc:
            raise InputError(f"{self.name}: cannot be read ({exc.strerror})") from None
        return shape.marks, Skipped(np.array(records, dtype=np.int64), cells)

    def _shape(self) -> tuple[Shape, str]:
        """Cells per record where short, by one vectorised pass over the bytes (the
        csv module where quoting is too irregular for it); the stream's encoding."""
        layout = self._layout
        compatible = _ascii_compatible(layout.encoding)
        stream = layout.encoding if compatible else "utf-8"
        # (not `encode(stream)`: utf-8-sig's encoder puts a BOM before the delimiter)
        delimiter = layout.delimiter.encode("utf-8" if stream == "utf-8-sig" else stream)
        named = len(layout.columns)
        shape: Shape | None = None
        if len(delimiter) == 1:
            blocks = _byte_blocks(self.path)
            if not compatible:
                blocks = _transcode(blocks, layout.encoding)
            counter = CellCounter(
                delimiter[0], ord(layout.newline), named, mark=layout.skip, every=self._stretch
            )
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
            [cells], columns=pd.Index(self.columns), index=pd.Index([row]), dtype=CELLS
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
                # (an apostrophe is rare: memchr finds none before the regex would look)
                may_escape = may_escape or bool(
                    (b"'" in block and _ESCAPED_BYTES.search(block))
                    or _ESCAPED_BYTES.match(tail + block[:1])
                )
                lines += _line_breaks(block)
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


def _no_rows(name: str) -> InputError:
    return InputError(f"{name}: has a header row but no rows to import; add rows below the header")


def _unnamed_cell(name: str, row: int, column: str) -> InputError:
    return InputError(
        f"{name}, row {row}: a value in column {column}, which has no header; name the column "
        "in the header row or delete the value"
    )


def _line_breaks(block: bytes) -> int:
    """LF bytes in a block (numpy counts a byte 5x faster than `bytes.count`)."""
    return int(np.count_nonzero(np.frombuffer(block, dtype=np.uint8) == _LF_BYTE))


def _byte_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK_BYTES):
            yield block


def _read_sample(path: Path, encoding: str, size: int) -> tuple[str, bool]:
    """The start of the file as text, and whether that is all of it."""
    with path.open("rb") as handle:
        raw = handle.read(size + 1)
    whole = len(raw) <= size
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    text = decoder.decode(raw[:size], whole)
    return text.lstrip("\ufeff"), whole

    # Other strict-mode complaints (text after a closing quote) pandas accepts.


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
