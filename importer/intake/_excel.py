"""Excel workbooks (.xlsx, .xlsm, .xls) as tables: a sheet picked, its cells as text."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final

import pandas as pd
from python_calamine import (
    CalamineError,
    CalamineSheet,
    CalamineWorkbook,
    PasswordError,
    SheetVisibleEnum,
)

from importer._errors import InputError
from importer._rows import sheet_label
from importer.intake._encoding import _BOMS, _OLE_MAGIC, _ZIP_MAGIC, _binary_share
from importer.intake._formulas import _unescape_frame
from importer.intake._layout import _blank, _header, _named
from importer.intake._reader import CELLS, SourceOptions, Table, _no_rows, _unnamed_cell


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
            dtype=CELLS,
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
