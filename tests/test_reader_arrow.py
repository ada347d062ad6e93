"""The two CSV readers (issue 24 point 2): Arrow's, for well-formed UTF-8 files, and pandas'
C parser, for the rest, yield the same rows (cells and row numbers), the same short and cut
rows, the same failures, and `validate` finds the same errors row for row.

Each case says which reader must read it: Arrow where it reads the file as the C parser
does, the C parser where it cannot (other codecs, irregular quoting, a lone CR, a record
wider than the header, a file cut off).
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer._errors import InputError
from importer.commands._validate import validate_files
from importer.intake import _reader as reader
from importer.intake._mapping import load_mapping
from importer.intake._reader import CELLS, open_table
from tests.engine_helpers import consent_rows, write_csv

try:
    import pyarrow  # noqa: F401
except ImportError:  # the `arrow` extra; `dev` installs it, so CI reads with both readers
    if os.environ.get("CI"):
        raise
    pytest.skip("pyarrow (the `arrow` extra) is not installed", allow_module_level=True)

A, C = "arrow", "c"

CASES: list[tuple[str, bytes, str]] = [
    ("plain", b"id,a,b\n1,x,y\n2,x,y\n", A),
    ("CRLF", b"id,a,b\r\n1,x,y\r\n2,x,y\r\n", A),
    ("UTF-8 BOM", "\ufeffid,name\n1,Zoë\n2,€\n".encode(), A),
    ("Excel sep= line", b"sep=;\r\nid;name\r\n1;A\r\n2;B\r\n", A),
    ("tab delimiter", b"id\ta\n1\tx\n2\ty\n", A),
    ("quoted line breaks", b'id,note\n1,"two\nlines"\n2,"a\r\nb"\n3,x\n', A),
    ("doubled quotes, delimiter in quotes", b'id,note\n1,"say ""hi"", then go"\n2,""\n', A),
    # a blank line Arrow pads itself; a line of spaces and a CRLF blank it skips as short
    ("blank and whitespace rows", b"id,a,b\n1,x,y\n\n  \n,,\n , ,\n4,x,y\n", A),
    ("blank CRLF rows", b"id,a,b\r\n1,x,y\r\n\r\n\r\n4,x,y\r\n", A),
    ("short rows", b"id,a,b\n1,x,y\n2,x\n3\n4,x,y\n5,,\n", A),
    ("short row holding a quoted line break", b'id,a,b\n1,"x\ny"\n2,x,y\n', A),
    ("short rows at the end", b"id,a,b\n1,x,y\n2,x\n3\n", A),
    ("leading zeros, NA-looking cells", b"id,a,b\n007,NA,TRUE\n,null,N/A\n1e5,#N/A, padded \n", A),
    ("blank lines above the header", b"\n\nid;a\n1;x\n\n3;z\n", A),
    ("a formula escape undone", b"id,a\n1,'=SUM(A1)\n2,'hello\n", A),
    ("a column without a header", b"id,,a\n1,,x\n2,,y\n", A),
    ("whole last row without a line break", b"id,a\n1,x\n2,y", A),
    ("header only", b"id,a\n", C),  # no rows: refused before reading
    ("cp1252", "id,name\n1,Renée €5 l’été\n".encode("cp1252"), C),
    ("UTF-16 with BOM", "id,name\n1,Zoë\n".encode("utf-16"), C),
    # a quote in mid-field is a literal to both parsers
    ("a stray quote in mid-field", b'id,size\n1,12" ruler\n2,"5"" disk"\n', A),
    # a quote closed in mid-field: the counter is unsure, the C parser reads it
    ("a quote closed in mid-field", b'id,size\n1,"12" ruler\n2,x\n', C),
    ("cut inside a quoted value", b'id,a\n1,x\n2,"y\n', C),
    ("cut short at the end", b"id,a,b\n1,x,y\n2,x", C),
    ("a row wider than the header", b"id,a\n1,x\n2,y,z\n", C),
    ("a row wider, its extra cells empty", b"id,a\n1,x\n2,y,,\n", C),
    ("lone CR line breaks", b"id,a\r1,x\r2,y\r", C),
    ("a quoted line break in the header", b'id,"no\nte"\n1,x\n', C),
]


def outcome(path: Path, arrow: bool, chunk_rows: int) -> tuple[str, Any]:
    """Everything a reader tells about a file, by the reader asked for."""
    reader._CsvTable.arrow = arrow
    try:
        table = open_table(path, chunk_rows=chunk_rows)
        rows: dict[int, list[str]] = {}
        for chunk in table.chunks():
            assert list(chunk.columns) == table.columns
            assert 0 < len(chunk) <= chunk_rows
            assert all(dtype == CELLS for dtype in chunk.dtypes)
            for number, cells in zip(chunk.index, chunk.to_numpy().tolist(), strict=True):
                assert int(number) not in rows
                rows[int(number)] = cells
        used = A if arrow and isinstance(table, reader._CsvTable) and table._plan else C
        return used, (table.columns, rows, dict(table.defects.items()), table.truncated)
    except InputError as exc:
        return C, str(exc)
    finally:
        reader._CsvTable.arrow = True


def test_without_pyarrow_the_c_parser_reads_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,a,b\n1,x,y\n2,x\n3,x,y\n")
    used, with_arrow = outcome(path, True, 50_000)
    assert used == A
    monkeypatch.setitem(sys.modules, "pyarrow.csv", None)  # `import pyarrow.csv` fails
    used, without = outcome(path, True, 50_000)
    assert used == C
    assert without == with_arrow


@pytest.mark.parametrize(
    ("raw", "path_used"),
    [(raw, used) for _, raw, used in CASES],
    ids=[name for name, _, _ in CASES],
)
@pytest.mark.parametrize("chunk_rows", [1, 2, 50_000])
def test_arrow_reads_as_the_c_parser(
    tmp_path: Path, raw: bytes, path_used: str, chunk_rows: int
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(raw)
    used, by_arrow = outcome(path, True, chunk_rows)
    _, by_c = outcome(path, False, chunk_rows)
    assert by_arrow == by_c
    assert used == path_used


def test_arrow_reads_block_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrow's blocks and the counter's blocks end mid-record, mid-quote, mid-CRLF."""
    monkeypatch.setattr(reader, "_BLOCK_BYTES", 7)
    monkeypatch.setattr("importer.intake._arrow_csv.BLOCK_BYTES", 64)
    lines = ["id,a,b"]
    for i in range(300):
        lines.append(
            [f"{i},x,y", f'{i},"q\r\n{i}",z', f"{i},short", "", " ", f'{i},"a,""b""",c'][i % 6]
        )
    path = tmp_path / "in.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    used, by_arrow = outcome(path, True, 37)
    assert used == A
    assert by_arrow == outcome(path, False, 37)[1]


def canonical(tmp_path: Path, newline: str, prefix: str = "") -> Path:
    """A canonical export with what goes wrong in real ones: bad cells, short rows, blank
    rows, a line break in a quoted cell, NA-looking and zero-led keys."""
    rows = list(consent_rows(40))
    rows[3]["patientId"] = "P-17"  # not a patient id
    rows[5]["dateTime"] = "31/02/2024"  # not a date
    rows[7]["policyUri"] = "https://clinic.example/p\nolicy"
    rows[9]["sourceKey"] = "007"
    rows[11]["sourceKey"] = "NA"
    rows[13]["scope"] = ""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, list(rows[0]), lineterminator=newline)
    writer.writeheader()
    for i, row in enumerate(rows):
        writer.writerow(row)
        if i == 15:
            buffer.write(newline + "  " + newline)  # blank rows
        if i == 20:
            buffer.write("K900,pt_0001,treatment" + newline)  # a short row
    path = tmp_path / "in.csv"
    path.write_bytes((prefix + buffer.getvalue()).encode())
    return path


@pytest.mark.parametrize(
    ("newline", "prefix"),
    [("\n", ""), ("\r\n", ""), ("\r\n", "\ufeff"), ("\r\n", "sep=,\r\n")],
    ids=["LF", "CRLF", "BOM", "sep="],
)
def test_validate_finds_the_same_errors_row_for_row(
    tmp_path: Path, newline: str, prefix: str
) -> None:
    path = canonical(tmp_path, newline, prefix)
    mapping = load_mapping(None)
    found = []
    for arrow in (True, False):
        reader._CsvTable.arrow = arrow
        try:
            summary = validate_files([path], mapping)
        finally:
            reader._CsvTable.arrow = True
        found.append(
            (
                summary.valid,
                summary.invalid,
                [(e.row, e.field, e.code, e.message) for e in summary.errors],
            )
        )
    assert found[0] == found[1]
    _, invalid, errors = found[0]
    assert invalid == 4  # the bad patient, date, scope and the short row
    shift = 1 if prefix.startswith("sep=") else 0  # Excel's line is row 1
    assert {row - shift for row, *_ in errors} == {5, 7, 15, 25}
    table = open_table(path)
    list(table.chunks())
    assert table._plan is not None  # read by Arrow


CELL = st.text(alphabet='ab ,"\n\r;0', max_size=6)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.lists(st.lists(CELL, min_size=0, max_size=4), min_size=1, max_size=12),
    crlf=st.booleans(),
)
def test_arrow_and_c_agree_on_generated_files(
    tmp_path: Path, records: list[list[str]], crlf: bool
) -> None:
    """Any file csv.writer makes (short, blank and quoted records among them)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(["id", "a", "b"])
    for record in records:
        writer.writerow(record)
    path = tmp_path / "gen.csv"
    path.write_bytes(buffer.getvalue().encode())
    used, by_arrow = outcome(path, True, 3)
    assert by_arrow == outcome(path, False, 3)[1]
    # csv.writer's quoting is well-formed: only a wider row, a CR in a cell (the counter
    # does not tell a quoted lone CR from a line break) or no rows leave Arrow out
    if used == C and not isinstance(by_arrow, str):
        assert any(len(r) > 3 or any("\r" in c for c in r) for r in records)


# Review of issue 24: where the readers once disagreed.
@pytest.mark.parametrize("quoted", [True, False])
def test_a_cell_over_a_mib_is_read_as_the_c_parser_reads_it(tmp_path: Path, quoted: bool) -> None:
    # An embedded document of 1.1 MB: Arrow's 512 KiB blocks cannot hold the record
    # ("straddling object straddles two block boundaries"); the C parser reads it.
    cell = "Z" * (1100 * 1024)
    big = f'"{cell}"' if quoted else cell
    path = tmp_path / "in.csv"
    path.write_bytes(f"id,a,b\n1,x,y\n2,{big},y\n3,x,y\n".encode())
    _, by_c = outcome(path, False, 50_000)
    _, by_arrow = outcome(path, True, 50_000)
    assert not isinstance(by_c, str)
    assert by_arrow == by_c  # by_arrow: "in.csv: cannot be parsed as CSV; ..."


def test_the_values_profile_is_the_same_by_either_reader(tmp_path: Path) -> None:
    # 40,000 rows, 97 patient ids (more than the profile's LIMIT of 50): Arrow's chunks of
    # 12,500 make the profile count its 50 values over the first 12,500 rows only (129
    # each, the rest "other_rows"), the C parser's chunks of 50,000 over all (412 each).
    path = write_csv(tmp_path / "in.csv", consent_rows(40_000))
    mapping = load_mapping(None)
    profiles = []
    for arrow in (True, False):
        reader._CsvTable.arrow = arrow
        try:
            profiles.append(validate_files([path], mapping).values)
        finally:
            reader._CsvTable.arrow = True
    assert profiles[0] is not None
    assert profiles[0] == profiles[1]


DATE_MAPPING = '[source]\ntimezone = "UTC"\ndate_formats = ["%m/%d/%Y", "%d/%m/%Y"]\n'


def dates_file(tmp_path: Path, cells: dict[int, str]) -> Path:
    rows = list(consent_rows(20_000))
    for i, row in enumerate(rows):
        row["dateTime"] = f"{1 + i % 12:02d}/{1 + i % 12:02d}/2024"  # same either way
    for i, cell in cells.items():
        rows[i]["dateTime"] = cell
    return write_csv(tmp_path / "in.csv", rows)


def errors_by(path: Path, mapping_path: Path, arrow: bool) -> object:
    reader._CsvTable.arrow = arrow
    try:
        summary = validate_files([path], load_mapping(mapping_path))
        return sorted((e.row, e.code) for e in summary.errors)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        reader._CsvTable.arrow = True


@pytest.mark.parametrize(
    "cells",
    [
        # An ambiguous cell in the first 12,500 rows, the cell that settles the order at
        # row 15,000: the C parser's 50,000-row chunk sees both (month first, valid);
        # Arrow's first 12,500-row chunk sees only the ambiguous one: "reads as both
        # '%m/%d/%Y' and '%d/%m/%Y' ... keep only the right one" (ConfigError).
        {5: "03/04/2024", 15_000: "12/25/2024"},
        # No full reading: the family read most in the first chunk wins. In 12,500 rows
        # day-first (3 cells to 0), in 50,000 month-first (10 to 3): other rows invalid,
        # and row 7's 03/04/2024 is sent as 3 April by one reader, 4 March by the other.
        {5: "03/04/2024", 10: "25/12/2024", 11: "25/12/2024", 12: "25/12/2024",
         **dict.fromkeys(range(15000, 15010), "12/26/2024")},
    ],
    ids=["refused", "another-family"],
)  # fmt: skip
def test_the_date_order_is_decided_alike_by_either_reader(
    tmp_path: Path, cells: dict[int, str]
) -> None:
    path = dates_file(tmp_path, cells)
    mapping = tmp_path / "m.toml"
    mapping.write_text(DATE_MAPPING)
    by_c = errors_by(path, mapping, False)
    assert not isinstance(by_c, str)  # the C parser's chunk settles the order: no refusal
    assert errors_by(path, mapping, True) == by_c


def test_an_arrow_failure_logs_no_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Arrow's parse errors quote the row: the log and the error name the file only."""
    import pyarrow as pa

    def failing(*_: Any) -> Any:
        raise pa.ArrowInvalid("CSV parse error: Expected 3 columns, got 2: 1,Jane Doe")
        yield  # a generator, as arrow_frames

    monkeypatch.setattr(reader, "arrow_frames", failing)
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,a,b\n1,x,y\n2,x,y\n")
    with pytest.raises(InputError) as info:
        list(open_table(path, chunk_rows=50_000).chunks())
    assert "Jane" not in str(info.value)
    assert "Arrow's CSV reader failed (ArrowInvalid)" in caplog.text
    assert "Jane" not in caplog.text


def chunk_by_chunk(path: Path, arrow: bool, chunk_rows: int) -> list[tuple[list[int], Any]]:
    """Each chunk's row numbers and cells, in order, by the reader asked for."""
    reader._CsvTable.arrow = arrow
    try:
        table = open_table(path, chunk_rows=chunk_rows)
        chunks = [(chunk.index.tolist(), chunk.to_numpy().tolist()) for chunk in table.chunks()]
        assert table._plan is not None  # Arrow reads it when asked to
        return chunks
    finally:
        reader._CsvTable.arrow = True


@pytest.mark.parametrize("chunk_rows", [3, 4, 5, 7, 10, 64])
def test_arrow_chunks_are_the_c_parsers_when_one_ends_inside_a_stretch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    """Arrow parses 4 records at a time here (a stretch) and fills each chunk in place:
    its chunks hold the C parser's rows, chunk for chunk, where a chunk ends at a
    stretch's end or inside one, with short and blank records at stretches' edges, a
    stretch of short records only (Arrow reads none of it) and a last chunk cut short."""
    monkeypatch.setattr(reader, "_ARROW_STRETCH", 4)
    short = {3, 4, 12, 13, 14, 15, 27}  # records after the header: 3|4 is a stretch edge
    blank = {7, 8, 20}
    lines = ["id,a,b"]
    for i in range(29):
        if i in short:
            lines.append(f"{i},s")
        elif i in blank:
            lines.append("")
        elif i % 5 == 0:
            lines.append(f'{i},"two\nlines",z')  # a quoted line break
        else:
            lines.append(f"{i},x{i},y")
    path = tmp_path / "in.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode())
    by_arrow = chunk_by_chunk(path, True, chunk_rows)
    assert by_arrow == chunk_by_chunk(path, False, chunk_rows)
    assert sum(len(rows) for rows, _ in by_arrow) == 29 - len(blank)


@pytest.mark.parametrize(
    ("raw", "path_used"),
    [
        (b"id,a\n\n\n,\n \n\n\n1,x\n", A),  # the first row in the second stretch
        (b"id,a\n\n\n,\n \n\n\n,\n", C),  # no row at all: refused when opened, by either
    ],
    ids=["first-row-after-a-blank-stretch", "blank-rows-only"],
)
def test_opening_finds_a_first_row_a_stretch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: bytes, path_used: str
) -> None:
    monkeypatch.setattr(reader, "_ARROW_STRETCH", 4)
    path = tmp_path / "in.csv"
    path.write_bytes(raw)
    used, by_arrow = outcome(path, True, 50)
    assert by_arrow == outcome(path, False, 50)[1]
    assert used == path_used
    if path_used == C:
        assert (
            by_arrow == f"{path}: has a header row but no rows to import; add rows below the header"
        )


def test_a_small_file_gets_a_chunk_of_its_size(tmp_path: Path) -> None:
    """Arrow's path fills a chunk made for the records left, not `chunk_rows` of them (a
    3-row file took 16 columns x 50,000 places: 6.4 MB)."""
    import tracemalloc

    path = write_csv(tmp_path / "in.csv", consent_rows(3))
    table = open_table(path, chunk_rows=50_000)
    tracemalloc.start()
    try:
        chunks = list(table.chunks())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert table._plan is not None  # read by Arrow
    assert [len(chunk) for chunk in chunks] == [3]
    assert peak < 1 << 20
