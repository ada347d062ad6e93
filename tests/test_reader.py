"""The reader: files in, chunks of text cells keyed by spreadsheet row number out."""

from __future__ import annotations

import codecs
import json
import zipfile
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
import pytest
import xlwt

from importer._errors import ConfigError, InputError
from importer.intake import _reader as reader
from importer.intake._formulas import escape_formula, unescape_formula
from importer.intake._reader import SourceOptions, Table, excel_serial_to_iso, open_table

DATA = Path(__file__).parent / "data" / "reader"


def write(tmp_path: Path, name: str, content: str | bytes, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode(encoding) if isinstance(content, str) else content)
    return path


def rows(table: Table) -> dict[int, list[str]]:
    """Every yielded row by its row number, checking the chunk contract on the way."""
    found: dict[int, list[str]] = {}
    for chunk in table.chunks():
        assert list(chunk.columns) == table.columns
        assert len(chunk) > 0
        for number, cells in zip(chunk.index, chunk.to_numpy().tolist(), strict=True):
            assert all(type(cell) is str for cell in cells)
            assert int(number) not in found
            found[int(number)] = cells
    assert list(found) == sorted(found)
    return found


def read(
    tmp_path: Path,
    content: str | bytes,
    name: str = "in.csv",
    *,
    write_as: str = "utf-8",
    **options: Any,
) -> Table:
    """Open `content` written to a file; `options` are SourceOptions."""
    return open_table(write(tmp_path, name, content, write_as), SourceOptions(**options))


def error(call: Callable[[], object]) -> str:
    with pytest.raises(InputError) as caught:
        call()
    return str(caught.value)


# --- data files: real-world shapes, each with its expected reading ------------------------------


@pytest.mark.parametrize(
    "path",
    sorted(p for p in DATA.iterdir() if not p.name.endswith(".json")),
    ids=lambda p: p.name,
)
def test_data_files(path: Path) -> None:
    expected = json.loads(Path(f"{path}.expected.json").read_text(encoding="utf-8"))
    table = open_table(path)
    assert table.encoding == expected["encoding"]
    assert table.delimiter == expected["delimiter"]
    assert table.header_row == expected["header_row"]
    assert table.columns == expected["columns"]
    assert rows(table) == {int(k): v for k, v in expected["rows"].items()}
    assert table.count_rows() == len(expected["rows"])


# --- encodings --------------------------------------------------------------------------------

TEXT = "id,name,city\n1,Zoë,Müller €\n"


@pytest.mark.parametrize(
    ("raw", "detected"),
    [
        (TEXT.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF8 + TEXT.encode("utf-8"), "utf-8-sig"),
        (codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"), "utf-16"),
        (codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), "utf-16"),
        (codecs.BOM_UTF32_LE + TEXT.encode("utf-32-le"), "utf-32"),
        (TEXT.encode("cp1252"), "cp1252"),
        # Excel's "Unicode text" without its BOM: NUL in every other byte
        (TEXT.encode("utf-16-le"), "utf-16-le"),
        (TEXT.encode("utf-16-be"), "utf-16-be"),
    ],
)
def test_encoding_is_detected(tmp_path: Path, raw: bytes, detected: str) -> None:
    table = read(tmp_path, raw)
    assert table.encoding == detected
    assert table.columns == ["id", "name", "city"]  # no BOM left on "id"
    assert rows(table) == {2: ["1", "Zoë", "Müller €"]}


@pytest.mark.parametrize(
    ("raw", "forced", "used", "city"),
    [
        (TEXT.encode("cp1252"), "latin-1", "iso8859-1", "Müller \x80"),  # latin-1 has no €
        (TEXT.encode("utf-8"), "cp1252", "cp1252", "MÃ¼ller â‚¬"),  # forced wins, even if wrong
        (codecs.BOM_UTF8 + TEXT.encode("utf-8"), "utf-8", "utf-8-sig", "Müller €"),
        (codecs.BOM_UTF8 + TEXT.encode("utf-8"), "UTF8", "utf-8-sig", "Müller €"),
    ],
)
def test_forced_encoding(tmp_path: Path, raw: bytes, forced: str, used: str, city: str) -> None:
    table = read(tmp_path, raw, encoding=forced)
    assert table.encoding == used
    assert table.columns == ["id", "name", "city"]
    assert rows(table)[2][2] == city


def test_detection_checks_the_whole_file_not_just_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny blocks: multi-byte characters split across blocks, the bad byte far from the start.
    monkeypatch.setattr(reader, "_BLOCK_BYTES", 5)
    good = "id,name\n" + "1,Zoë\n" * 50
    assert read(tmp_path, good, "a.csv").encoding == "utf-8"
    late_cp1252 = good.encode() + "2,Müller\n".encode("cp1252")
    table = read(tmp_path, late_cp1252, "b.csv")
    assert table.encoding == "cp1252"  # and so the UTF-8 "ë" above reads as mojibake
    assert rows(table)[52] == ["2", "Müller"]


# --- delimiters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "delimiter"),
    [
        ('id,name,note\n1,"Müller; Hans",a|b\n2,x,y\n', ","),
        ("id;name;amount\n1;Müller, Hans;1,5\n2;x;2,25\n", ";"),  # decimal commas
        ("id\tname\tnote\n1\tMüller, Hans\ta;b\n2\tx\ty\n", "\t"),
        ("id|name|note\n1|Müller, Hans|a;b\n2|x|y\n", "|"),
        ("id\n1\n2\n", ","),  # one column: nothing to split
        ('"id";"name"\n"1";"a,b"\n', ";"),
    ],
)
def test_delimiter_is_sniffed(tmp_path: Path, text: str, delimiter: str) -> None:
    assert read(tmp_path, text).delimiter == delimiter


def test_tsv_prefers_tab_when_ambiguous(tmp_path: Path) -> None:
    assert read(tmp_path, "id\n1\n", "in.tsv").delimiter == "\t"


@pytest.mark.parametrize(
    ("option", "delimiter"),
    [("\t", "\t"), ("tab", "\t"), ("TAB", "\t"), ("\\t", "\t"), (";", ";"), ("semicolon", ";")],
)
def test_delimiter_option_overrides(tmp_path: Path, option: str, delimiter: str) -> None:
    # Sniffing would pick the comma here.
    text = "a,b\tc,d\n1,2\t3,4\n".replace("\t", delimiter)
    table = read(tmp_path, text, delimiter=option)
    assert table.delimiter == delimiter
    assert table.columns == ["a,b", "c,d"]


# --- records, rows and row numbers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # header, a record with a line break in a quoted cell, a blank line, a record
        ('id,note\n1,"a\nb"\n\n2,c\n', {2: ["1", "a\nb"], 4: ["2", "c"]}),
        ('id,note\r\n1,"a\r\nb"\r\n\r\n2,c\r\n', {2: ["1", "a\r\nb"], 4: ["2", "c"]}),
        ("id,note\r1,a\r\r2,c\r", {2: ["1", "a"], 4: ["2", "c"]}),  # old Mac line ends
        ('id,note\n1,"x, ""quoted"", y"\n', {2: ["1", 'x, "quoted", y']}),
        ("id,note\n1,a", {2: ["1", "a"]}),  # no final line break
        ("\n\nid,note\n1,a\n", {4: ["1", "a"]}),  # blank lines above the header count too
        ("id,note\n1,a\n\n\n\n", {2: ["1", "a"]}),
        # whitespace-only and delimiter-only rows are blank: skipped, still counted
        ("id,note\n  \n,\n , \t\n1,a\n", {5: ["1", "a"]}),
        ('id,note\n"",""\n1,a\n', {3: ["1", "a"]}),
        # a row with fewer cells is read with "" for the missing ones, and named in
        # `defects` (short_row: tests/test_short_rows.py), which makes it invalid
        ("id,note,x\n1\n2,b\n", {2: ["1", "", ""], 3: ["2", "b", ""]}),
        # trailing delimiters: extra empty cells are ignored, with or without a header for them
        ("id,note,\n1,a,\n2,b,\n", {2: ["1", "a"], 3: ["2", "b"]}),
        ("id,note\n1,a,,\n2,b\n", {2: ["1", "a"], 3: ["2", "b"]}),
    ],
)
def test_rows_and_numbers(tmp_path: Path, text: str, expected: dict[int, list[str]]) -> None:
    table = read(tmp_path, text)
    assert rows(table) == expected
    assert table.count_rows() == len(expected)


@pytest.mark.parametrize(
    "value",
    ["007", "NA", "N/A", "null", "NaN", "1e5", "TRUE", "#N/A", " padded ", "1,000.50", "-"],
)
def test_cells_are_kept_verbatim(tmp_path: Path, value: str) -> None:
    table = read(tmp_path, f'id,value\nP1,"{value}"\n')
    assert rows(table) == {2: ["P1", value]}


def test_header_cells_are_stripped(tmp_path: Path) -> None:
    table = read(tmp_path, codecs.BOM_UTF8 + b' id ,"\tname "\n1,2\n')
    assert table.columns == ["id", "name"]


@pytest.mark.parametrize(("chunk_rows", "sizes"), [(2, [2, 2, 1]), (5, [5]), (50_000, [5])])
def test_chunks_have_at_most_chunk_rows(tmp_path: Path, chunk_rows: int, sizes: list[int]) -> None:
    path = write(tmp_path, "in.csv", "id\n" + "".join(f"{i}\n" for i in range(5)))
    chunks = list(open_table(path, chunk_rows=chunk_rows).chunks())
    assert [len(c) for c in chunks] == sizes
    assert [n for c in chunks for n in c.index] == [2, 3, 4, 5, 6]


def test_chunks_carry_row_numbers_across_boundaries_and_blank_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", 'id\n1\n\n"2\n"\n3\n\n\n4\n')
    table = open_table(path, chunk_rows=2)
    assert [list(c.index) for c in table.chunks()] == [[2], [4, 5], [8]]
    assert table.count_rows() == 4


def test_chunks_can_be_read_again(tmp_path: Path) -> None:
    table = read(tmp_path, "id,x\n1,a\n2,b\n")
    first = rows(table)
    assert first == {2: ["1", "a"], 3: ["2", "b"]}
    assert rows(table) == first


def test_chunk_cells_are_never_missing(tmp_path: Path) -> None:
    chunk = next(read(tmp_path, "a,b,c\n1\n,,x\n").chunks())
    assert not chunk.isna().any().any()
    assert chunk.to_numpy().tolist() == [["1", "", ""], ["", "", "x"]]


def test_a_wide_row_far_past_the_sample_is_checked_like_any_other(tmp_path: Path) -> None:
    body = "id,name\n" + "1,abc\n" * 20_000
    path = write(tmp_path, "in.csv", body + "2,b,,\n3,c\n")  # empty extras: fine
    table = open_table(path, chunk_rows=7_000)
    assert list(rows(table))[-2:] == [20_002, 20_003]
    assert rows(table)[20_002] == ["2", "b"]
    path = write(tmp_path, "bad.csv", body + "2,b,x\n")
    assert error(lambda: list(open_table(path, chunk_rows=7_000).chunks())) == (
        f"{path}, row 20002: a value in column 3, which has no header; name the column in the "
        "header row or delete the value"
    )


# --- count_rows -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'id,note\n1,"a\nb"\n\n2,c\n',
        'id,note\r\n"1","a\r\n\r\nb"\r\n\r\n"2",""\r\n',  # quoted first cells, blank inside a cell
        'id,size\n1,12" ruler\n2,"5"" disk"\n',  # a stray quote and an escaped one
        "id,note\n,\n , \n,x\n  y,\n",
        "\n\nid;note\n1;a\n;\n",
        'id,note\n1,"a,\n\n,b"\n',
        "id,note\r1,a\r\r2,b",
        "id,note\n" + "1,a\n" * 1000 + "\n" * 10 + ",x\n, ,\n",
    ],
)
@pytest.mark.parametrize("block", [3, 4 << 20])
def test_count_rows_matches_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, block: int
) -> None:
    monkeypatch.setattr(reader, "_BLOCK_BYTES", block)
    table = read(tmp_path, text)
    assert table.count_rows() == len(rows(table))


def test_count_rows_of_utf16(tmp_path: Path) -> None:
    raw = codecs.BOM_UTF16_LE + 'id,note\n1,"a\nb"\n\n2,€\n'.encode("utf-16-le")
    assert read(tmp_path, raw).count_rows() == 2


# --- formula escapes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "read_as"),
    [
        ("'=SUM(A1)", "=SUM(A1)"),
        ("'-5", "-5"),
        ("'+1", "+1"),
        ("'@cmd", "@cmd"),
        ("'\tx", "\tx"),
        ("'\rx", "\rx"),
        ("''=x", "'=x"),  # escape of a cell that itself began with '=
        ("'hello", "'hello"),  # not our escape
        ("'", "'"),
        ("it's =", "it's ="),
        ("=SUM(A1)", "=SUM(A1)"),
        ("", ""),
    ],
)
def test_unescape_formula(tmp_path: Path, cell: str, read_as: str) -> None:
    assert unescape_formula(cell) == read_as
    quoted = '"' + cell.replace('"', '""') + '"'
    assert rows(read(tmp_path, f"id,value\nP1,{quoted}\n")) == {2: ["P1", read_as]}


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+1", "'=1+1"),
        ("-5", "'-5"),
        ("+1", "'+1"),
        ("@x", "'@x"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("'=x", "''=x"),
        ("'hello", "'hello"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_escape_formula(cell: str, written: str) -> None:
    assert escape_formula(cell) == written
    assert unescape_formula(escape_formula(cell)) == cell


@pytest.mark.parametrize("block", range(1, 18))
def test_escape_is_found_wherever_the_scan_blocks_split_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(reader, "_BLOCK_BYTES", block)
    for encoding in ("utf-8", "utf-16"):
        table = read(tmp_path, "id,value\nP1,'=x\n", write_as=encoding)
        assert rows(table) == {2: ["P1", "=x"]}


def test_escaped_header_reads_back(tmp_path: Path) -> None:
    assert read(tmp_path, "'=id,'-x\n1,2\n").columns == ["=id", "-x"]


# --- CSV errors: one line, file name first, never a cell value --------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty; export it again with a header row"),
        (b"\n\n \n,,\n", "the file is empty; export it again with a header row"),
        (codecs.BOM_UTF8, "the file is empty; export it again with a header row"),
        (b"id,name\n", "has a header row but no rows to import; add rows below the header"),
        (b"id,name\n\n,\n", "has a header row but no rows to import; add rows below the header"),
        (
            bytes(range(256)) * 4,
            "does not look like a text CSV (it holds binary data); export it again as CSV or Excel",
        ),
        (
            b"\x89PNG\r\n\x1a\n" + bytes(64),
            "does not look like a text CSV (it holds binary data); export it again as CSV or Excel",
        ),
        (b"PK\x03\x04" + bytes(64), "is an Excel workbook, not CSV text; rename it to .xlsx"),
        (
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64),
            "is an Excel 97-2003 workbook, not CSV text; rename it to .xls",
        ),
        (
            b'id,name\n1,"Smith\n2,Jones\n',
            'unterminated quoted field starting near row 2; close the quote (") or remove it',
        ),
        (
            b'"id,name\n1,2\n',  # in the header, which pandas skips
            'unterminated quoted field starting near row 1; close the quote (") or remove it',
        ),
        (
            b"\nid, id \n1,2\n",
            "columns 1 and 2 have the same header in row 2; rename one",
        ),
        (
            b"id,name\n1,a\n2,b,Smith\n",
            "row 3: a value in column 3, which has no header; name the column in the header row "
            "or delete the value",
        ),
        (
            b"id,name\n1,\x81\x8d\n",  # bytes neither UTF-8 nor cp1252 can decode
            "is neither UTF-8 nor Windows-1252 text (near line 2); set encoding in the mapping's "
            "[source] section (for example latin-1)",
        ),
    ],
)
def test_csv_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path, "in.csv", content)
    text = error(lambda: open_table(path))
    separator = ", " if message.startswith("row ") else ": "
    assert text == f"{path}{separator}{message}"
    assert "Smith" not in text  # cell values can be PHI


def test_nul_bytes_past_the_start_are_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "_SAMPLE_BYTES", 16)
    monkeypatch.setattr(reader, "_BLOCK_BYTES", 16)
    path = write(tmp_path, "in.csv", b"id,name\n" + b"1,a\n" * 20 + b"2,\x00\x00\n")
    assert error(lambda: open_table(path)).startswith(f"{path}: does not look like a text CSV")


@pytest.mark.parametrize(
    ("raw", "forced", "message"),
    [
        (
            TEXT.encode("cp1252"),
            "utf-8",
            'is not valid utf-8 text (near line 2); set encoding = "cp1252" in the mapping\'s '
            "[source] section, or remove it to detect the encoding",
        ),
        (
            TEXT.encode("utf-8"),
            "ascii",
            'is not valid ascii text (near line 2); set encoding = "utf-8" in the mapping\'s '
            "[source] section, or remove it to detect the encoding",
        ),
    ],
)
def test_undecodable_with_a_forced_encoding(
    tmp_path: Path, raw: bytes, forced: str, message: str
) -> None:
    path = write(tmp_path, "in.csv", raw)
    assert error(lambda: open_table(path, SourceOptions(encoding=forced))) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            SourceOptions(encoding="klingon"),
            "[source] encoding 'klingon' is not a known encoding; use a name like utf-8 or cp1252",
        ),
        (
            SourceOptions(delimiter="::"),
            "[source] delimiter '::' is not usable; give one character, or tab, comma, semicolon "
            "or pipe",
        ),
        (
            SourceOptions(delimiter='"'),
            "[source] delimiter '\"' is not usable; give one character, or tab, comma, semicolon "
            "or pipe",
        ),
    ],
)
def test_bad_options(tmp_path: Path, options: SourceOptions, message: str) -> None:
    path = write(tmp_path, "in.csv", "id\n1\n")
    with pytest.raises(ConfigError) as caught:
        open_table(path, options)
    assert str(caught.value) == message


# --- paths ------------------------------------------------------------------------------------

SUFFIXES = ".csv, .tsv, .txt, .xlsx, .xlsm or .xls"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.csv", "no such file; check the path"),
        (
            lambda d: (d / "folder.csv").mkdir() or d / "folder.csv",
            f"is a folder, not a file; give the path of a {SUFFIXES} file",
        ),
        (
            lambda d: write(d, "in.xml", "<a/>"),
            f"unsupported file type '.xml'; save it as {SUFFIXES} (FHIR: .json, .ndjson)",
        ),
        (
            lambda d: write(d, "noext", "id\n1\n"),
            f"unsupported file type (no extension); save it as {SUFFIXES} (FHIR: .json, .ndjson)",
        ),
    ],
)
def test_path_errors(tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    path = make(tmp_path)
    assert error(lambda: open_table(path)) == f"{path}: {message}"


def test_name_is_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "In.CSV", "id\n1\n")
    monkeypatch.chdir(tmp_path)
    table = open_table("In.CSV")
    assert table.name == "In.CSV"
    assert table.path == Path("In.CSV")


# --- Excel ------------------------------------------------------------------------------------


def workbook(tmp_path: Path, name: str = "in.xlsx") -> Path:
    """A workbook as a legacy export looks: typed cells, a blank row, a second sheet."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Consents"
    sheet.append(["patient_id", "signed", "at", "time", "verified", "score", "note"])
    sheet.append([12345, date(2024, 3, 5), datetime(2024, 3, 5, 14, 30), time(9, 15)])
    sheet.append([12345.0, datetime(2024, 3, 5), None, None, True, 0.1, "'=SUM(A1)"])
    sheet.append([])
    sheet.append(["007", None, None, None, False, 0.1 + 0.2, " padded "])
    sheet.append([-3, None, None, None, None, 1e-5, "Zoë"])
    other = book.create_sheet("Other")
    other.append(["a", "b"])
    other.append([1, 2])
    path = tmp_path / name
    book.save(path)
    return path


def test_excel_cells_become_text(tmp_path: Path) -> None:
    table = open_table(workbook(tmp_path))
    assert (table.sheet, table.encoding, table.delimiter) == ("Consents", None, None)
    assert table.columns == ["patient_id", "signed", "at", "time", "verified", "score", "note"]
    assert rows(table) == {
        2: ["12345", "2024-03-05", "2024-03-05T14:30:00", "09:15:00", "", "", ""],
        3: ["12345", "2024-03-05", "", "", "true", "0.1", "=SUM(A1)"],
        5: ["007", "", "", "", "false", "0.3", " padded "],
        6: ["-3", "", "", "", "", "1e-05", "Zoë"],
    }
    assert table.count_rows() == 4


@pytest.mark.parametrize("sheet", ["Other", 1])
def test_excel_sheet_by_name_or_index(tmp_path: Path, sheet: str | int) -> None:
    table = open_table(workbook(tmp_path), SourceOptions(sheet=sheet))
    assert table.sheet == "Other"
    assert rows(table) == {2: ["1", "2"]}


@pytest.mark.parametrize(
    ("sheet", "message"),
    [
        ("Nope", "no sheet named 'Nope'; the sheets are 'Consents', 'Other'"),
        (2, "no sheet at index 2 (0-based); the workbook has 2: 'Consents', 'Other'"),
    ],
)
def test_excel_missing_sheet(tmp_path: Path, sheet: str | int, message: str) -> None:
    path = workbook(tmp_path)
    assert error(lambda: open_table(path, SourceOptions(sheet=sheet))) == f"{path}: {message}"


def test_excel_row_numbers_are_the_sheets(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet["C3"] = "id"  # header below blank rows, right of blank columns
    sheet["D3"] = "name"
    sheet["C4"] = 1
    sheet["D6"] = "x"
    path = tmp_path / "in.xlsx"
    book.save(path)
    table = open_table(path)
    assert table.header_row == 3
    assert rows(table) == {4: ["1", ""], 6: ["", "x"]}


@pytest.mark.parametrize(("chunk_rows", "sizes"), [(2, [2, 2, 1]), (5, [5])])
def test_excel_chunks(tmp_path: Path, chunk_rows: int, sizes: list[int]) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for row in [["id"], [1], [2], [3], [4], [5]]:
        sheet.append(row)
    path = tmp_path / "in.xlsx"
    book.save(path)
    chunks = list(open_table(path, chunk_rows=chunk_rows).chunks())
    assert [len(c) for c in chunks] == sizes
    assert [n for c in chunks for n in c.index] == [2, 3, 4, 5, 6]


def legacy_workbook(tmp_path: Path, name: str = "in.xls") -> Path:
    book = xlwt.Workbook()
    sheet = book.add_sheet("Export")
    day = xlwt.easyxf(num_format_str="YYYY-MM-DD")
    moment = xlwt.easyxf(num_format_str="YYYY-MM-DD HH:MM:SS")
    for column, title in enumerate(["id", "signed", "at", "ok"]):
        sheet.write(0, column, title)
    sheet.write(1, 0, 12345)
    sheet.write(1, 1, date(2024, 3, 5), day)
    sheet.write(1, 2, datetime(2024, 3, 5, 14, 30), moment)
    sheet.write(1, 3, True)
    sheet.write(3, 0, 45356.0)  # a serial date without a date format stays a number
    path = tmp_path / name
    book.save(str(path))
    return path


def test_legacy_xls(tmp_path: Path) -> None:
    table = open_table(legacy_workbook(tmp_path))
    assert table.sheet == "Export"
    assert rows(table) == {
        2: ["12345", "2024-03-05", "2024-03-05T14:30:00", "true"],
        4: ["45356", "", "", ""],
    }


@pytest.mark.parametrize(
    "make", [lambda d: workbook(d, "in.xls"), lambda d: legacy_workbook(d, "in.xlsx")]
)
def test_excel_with_the_wrong_excel_extension_still_reads(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    assert len(rows(open_table(make(tmp_path)))) >= 2


def sheet_of(tmp_path: Path, cells: dict[str, object]) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for ref, value in cells.items():
        sheet[ref] = value
    path = tmp_path / "in.xlsx"
    book.save(path)
    return path


def truncated_xlsx(tmp_path: Path) -> Path:
    path = workbook(tmp_path, "whole.xlsx")
    return write(tmp_path, "in.xlsx", path.read_bytes()[:300])


def not_a_sheet_zip(tmp_path: Path) -> Path:
    path = tmp_path / "in.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "hi")
    return path


EXCEL_UNREADABLE = (
    "cannot be read as an Excel workbook (damaged, encrypted or another format); open it in "
    "Excel and save it again as .xlsx"
)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda d: write(d, "in.xlsx", "id,name\n1,Smith\n"),
            "is not an Excel file, it looks like CSV text; rename it to .csv",
        ),
        (
            lambda d: write(d, "in.xlsx", "id\tname\n1\tSmith\n", "utf-16"),
            "is not an Excel file, it looks like CSV text; rename it to .csv",
        ),
        (
            lambda d: write(d, "in.xls", "<html><table><tr><td>Smith</td></tr></table></html>"),
            "is a web page or XML file saved as .xls, not an Excel workbook; open it in Excel "
            "and save it as .xlsx",
        ),
        (
            lambda d: write(d, "in.xlsx", bytes(range(256))),
            "is not an Excel workbook (damaged or another format); open it in Excel and save it "
            "again as .xlsx",
        ),
        (
            lambda d: write(d, "in.xlsx", b""),
            "the file is empty; export it again with a header row",
        ),
        (truncated_xlsx, EXCEL_UNREADABLE),
        (not_a_sheet_zip, EXCEL_UNREADABLE),
        (lambda d: sheet_of(d, {}), "sheet 'Sheet' is empty; choose the sheet with the data"),
        (
            lambda d: sheet_of(d, {"A1": "id", "B1": "name"}),
            "has a header row but no rows to import; add rows below the header",
        ),
        (
            lambda d: sheet_of(d, {"A1": "id", "B1": 7, "C1": "7", "A2": 1}),
            "columns B and C have the same header in row 1; rename one",
        ),
        (
            lambda d: sheet_of(d, {"A1": "id", "A2": 1, "A3": 2, "C3": "Smith"}),
            "row 3: a value in column C, which has no header; name the column in the header row "
            "or delete the value",
        ),
    ],
)
def test_excel_errors(tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    path = make(tmp_path)
    text = error(lambda: list(open_table(path).chunks()))
    separator = ", " if message.startswith("row ") else ": "
    # Errors about a sheet's cells name the sheet (issue 15); file-level ones cannot.
    sheet = "[Sheet]" if message.startswith(("row ", "has ", "column")) else ""
    assert text == f"{path}{sheet}{separator}{message}"
    assert "Smith" not in text


# --- Excel serial dates -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("45356", "2024-03-05"),
        ("45356.0", "2024-03-05"),
        (" 45356 ", "2024-03-05"),
        ("45356.5", "2024-03-05T12:00:00"),
        ("45356.604166667", "2024-03-05T14:30:00"),  # rounded to the second
        ("45356.99999999", "2024-03-06"),  # rounds up to the next midnight
        ("61", "1900-03-01"),
        ("59", "1900-02-28"),  # before Excel's phantom leap day
        ("1", "1900-01-01"),
        ("2958465", "9999-12-31"),
        ("60", None),  # 1900-02-29 never existed
        ("0", None),
        ("2958466", None),
        ("20240305", None),  # a yyyymmdd number, not a serial
        ("-1", None),
        ("1e4", None),
        ("1_000", None),
        ("2024-03-05", None),
        ("", None),
        ("abc", None),
    ],
)
def test_excel_serial_to_iso(text: str, iso: str | None) -> None:
    assert excel_serial_to_iso(text) == iso


def test_excel_serial_round_trips_dates() -> None:
    day = date(2024, 3, 5)
    serial = (day - date(1899, 12, 30)).days
    assert excel_serial_to_iso(str(serial)) == day.isoformat()
    noon = serial + timedelta(hours=12) / timedelta(days=1)
    assert excel_serial_to_iso(str(noon)) == "2024-03-05T12:00:00"


def test_chunk_frames_are_plain_string_frames(tmp_path: Path) -> None:
    for table in (read(tmp_path, "id,x\n1,2\n"), open_table(workbook(tmp_path))):
        chunk = next(table.chunks())
        assert isinstance(chunk, pd.DataFrame)
        assert all(str(dtype) in ("str", "object") for dtype in chunk.dtypes)
        assert chunk.index.dtype.kind == "i"


# -- the file's own markers beat the mapping's defaults --------------------------------


def test_a_bom_beats_the_mappings_encoding(tmp_path: Path) -> None:
    path = tmp_path / "fixed.csv"
    path.write_bytes("\ufeffname,city\nJosé,Zürich\n".encode())
    table = open_table(path, SourceOptions(encoding="cp1252"))
    assert table.columns == ["name", "city"]
    assert next(table.chunks()).iloc[0].tolist() == ["José", "Zürich"]


def test_a_delimiter_missing_from_the_header_gives_way_to_the_sniffed_one(tmp_path: Path) -> None:
    path = tmp_path / "fixed.csv"
    path.write_text("a,b,c\n1,2,3\n", encoding="utf-8")
    assert open_table(path, SourceOptions(delimiter=";")).columns == ["a", "b", "c"]
    # a delimiter the header does hold is kept, even where another would also split it
    path.write_text("a;b,c\n1;2,3\n", encoding="utf-8")
    assert open_table(path, SourceOptions(delimiter=";")).columns == ["a", "b,c"]


# --- messy files (issue 15) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        # a cell over the csv module's 128 KiB field limit, in the sniffed first rows
        (
            "id,note\n1," + "x" * 200_000 + "\n2,short\n",
            {2: ["1", "x" * 200_000], 3: ["2", "short"]},
        ),
        ('id,note\n1,"' + "y\n" * 70_000 + '"\n', {2: ["1", "y\n" * 70_000]}),  # quoted, lines
    ],
)
def test_long_cells_are_read_whole(
    tmp_path: Path, content: str, expected: dict[int, list[str]]
) -> None:
    table = open_table(write(tmp_path, "in.csv", content))
    assert rows(table) == expected
    assert table.count_rows() == len(expected)


@pytest.mark.parametrize(
    ("content", "delimiter"),
    [
        ("sep=;\nid;name\n1;a,b\n2;c\n", ";"),  # Excel's line: honoured, not the header
        ("SEP=|\r\nid|name\r\n1|a,b\r\n2|c\r\n", "|"),
        ("sep=\t\nid\tname\n1\ta,b\n2\tc\n", "\t"),
        ('sep=,\nid,name\n1,"a,b"\n2,c\n', ","),
    ],
)
def test_excels_sep_line_names_the_delimiter(tmp_path: Path, content: str, delimiter: str) -> None:
    table = open_table(write(tmp_path, "in.csv", content))
    assert (table.delimiter, table.columns, table.header_row) == (delimiter, ["id", "name"], 2)
    assert rows(table) == {3: ["1", "a,b"], 4: ["2", "c"]}  # row numbers are the file's lines
    assert table.count_rows() == 2


def messy_workbook(tmp_path: Path) -> Path:
    """A hidden lookup sheet first, then the data with merged cells."""
    book = openpyxl.Workbook()
    lookup = book.active
    assert lookup is not None
    lookup.title = "Lookup"
    lookup.append(["code", "meaning"])
    lookup.append(["T", "treatment"])
    lookup.sheet_state = "hidden"
    data = book.create_sheet("Consents")
    data.append(["patientId", "scope", "category"])
    data.append(["pt_1", "treatment", "treatment-consent"])
    data.append([None, "research", "research-participation"])
    data.merge_cells("A2:A3")  # one patient's two consents: pt_1 merged down
    data.append(["pt_2", "adr", None])
    data.merge_cells("B4:C4")  # one value over two columns
    path = tmp_path / "messy.xlsx"
    book.save(path)
    return path


def test_excel_skips_hidden_sheets_and_fills_merged_cells(tmp_path: Path) -> None:
    table = open_table(messy_workbook(tmp_path))
    assert (table.sheet, table.columns) == ("Consents", ["patientId", "scope", "category"])
    assert rows(table) == {
        2: ["pt_1", "treatment", "treatment-consent"],
        3: ["pt_1", "research", "research-participation"],  # as Excel shows it
        4: ["pt_2", "adr", "adr"],
    }
    assert table.count_rows() == 3


def test_a_hidden_sheet_named_in_the_mapping_is_read(tmp_path: Path) -> None:
    table = open_table(messy_workbook(tmp_path), SourceOptions(sheet="Lookup"))
    assert rows(table) == {2: ["T", "treatment"]}


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ({"A1": "id", "A2": 1, "C2": "x"}, "in.xlsx[Data], row 2: a value in column C"),
        ({"A1": "id", "B1": "id", "A2": 1}, "in.xlsx[Data]: columns A and B have the same"),
        ({"A1": "id"}, "in.xlsx[Data]: has a header row but no rows to import"),
    ],
)
def test_excel_errors_name_the_sheet(
    tmp_path: Path, cells: dict[str, object], message: str
) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Data"
    for ref, value in cells.items():
        sheet[ref] = value
    book.save(tmp_path / "in.xlsx")
    text = error(lambda: rows(open_table(tmp_path / "in.xlsx")))
    assert message in text


# Issue 14: a column with an empty header (a pandas index column, a gap) is ignored.
@pytest.mark.parametrize(
    ("make", "suffix"),
    [
        (lambda d: write(d, "in.csv", b",id,,name\n0,1,x,a\n1,2,y,b\n"), ".csv"),
        (lambda d: sheet_of(d, {"A1": "id", "C1": "name", "A2": 1, "B2": "x", "C2": "a"}), ".xlsx"),
    ],
)
def test_a_column_with_an_empty_header_is_ignored(
    tmp_path: Path, make: Callable[[Path], Path], suffix: str
) -> None:
    table = open_table(make(tmp_path))
    assert table.columns == ["id", "name"]
    [chunk] = list(table.chunks())
    assert list(chunk.columns) == ["id", "name"]
    assert chunk.iloc[0].tolist()[1] == "a"
