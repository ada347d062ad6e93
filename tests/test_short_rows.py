"""Short and cut rows (#19, point 3): a CSV row with fewer cells than the header is an
error (`short_row`), a file cut off inside its last row is reported (`truncated_file`),
and neither row is ever sent, by `validate`, `preview` or `run`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer._errors import InputError
from importer.commands._validate import validate_files
from importer.intake import _cutcheck
from importer.intake import _reader as reader_module
from importer.intake._formulas import unescape_formula
from importer.intake._mapping import load_mapping
from importer.intake._reader import (
    SHORT_ROW,
    TRUNCATED_FILE,
    RowDefects,
    SourceOptions,
    Table,
    open_table,
)
from importer.sandbox import RunningSandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, run, write_csv
from tests.test_mapping_v2 import CONSENTS  # the same two-consent mapping


def defects(table: Table) -> tuple[dict[int, str], dict[int, list[str]]]:
    """The rule code of each defective row `chunks` yields, and every yielded row."""
    rows = {
        int(n): cells
        for chunk in table.chunks()
        for n, cells in zip(chunk.index, chunk.to_numpy().tolist(), strict=True)
    }
    # (`defects` may also name blank records, which are never yielded)
    return {n: code for n, (code, _) in table.defects.items() if n in rows}, rows


def opened(tmp_path: Path, raw: bytes, **options: str) -> Table:
    path = tmp_path / "in.csv"
    path.write_bytes(raw)
    return open_table(path, SourceOptions(**options))  # type: ignore[arg-type]


S, T = SHORT_ROW, TRUNCATED_FILE


@pytest.mark.parametrize(
    ("text", "encoding", "expected", "cut"),
    [
        ("id,a,b\n1,x,y\n2,x\n3,x,y\n", "utf-8", {3: S}, False),
        ("id,a,b\n1,x,y\n2\n3,x,y\n", "utf-8", {3: S}, False),
        # a quoted cell holding a line break is one row, not two short ones
        ('id,a,b\n1,"x\ny",z\n2,"p\r\nq",r\n', "utf-8", {}, False),
        ('id,a,b\r\n1,"x\r\ny",z\r\n2,x\r\n', "utf-8", {3: S}, False),
        # a delimiter inside quotes is not a cell boundary: 2 cells, short
        ('id,a,b\n1,"x,y"\n', "utf-8", {2: S}, False),
        ('id,a,b\n1,"x ""q"", y",z\n2,"""",\n', "utf-8", {}, False),
        # trailing empty cells written out are cells; wider rows with empty extras are fine
        ("id,a,b\n1,,\n2,x,y,,\n", "utf-8", {}, False),
        # blank rows are skipped, not short
        ("id,a,b\n\n1,x,y\n  \n", "utf-8", {}, False),
        # the last line without a line break: complete is fine, short is a cut file
        ("id,a,b\n1,x,y\n2,x,y", "utf-8", {}, False),
        ("id,a,b\n1,x,y\n2,x", "utf-8", {3: T}, True),
        ('id,a,b\n1,x,y\n2,x,"https://clinic.exa', "utf-8", {3: T}, True),
        ('id,a,b\n1,x,y\n2,"note\nline two', "utf-8", {3: T}, True),
        # every encoding and delimiter the reader knows
        ("id;a;b\n1;é;y\n2;é\n", "cp1252", {3: S}, False),
        ("id\ta\tb\n1\tx\ty\n2\tx\n", "utf-16", {3: S}, False),
        ("id,a,b\n1,x,y\n2,x", "utf-16", {3: T}, True),
        ('id,a,b\n1,"x\ny",z\n2,x\n', "utf-16-le", {3: S}, False),
        ("id,a,b\n1,ü,y\n2,ü\n", "utf-8-sig", {3: S}, False),
        ("id,a,b\n1,x,y\n2,x\n", "utf-32", {3: S}, False),
        ("sep=;\nid;a;b\n1;x;y\n2;x\n", "utf-8", {4: S}, False),
        ("id|a|b\r1|x|y\r2|x\r", "utf-8", {3: S}, False),  # old Mac line ends
    ],
)
def test_short_and_cut_rows_are_found(
    tmp_path: Path, text: str, encoding: str, expected: dict[int, str], cut: bool
) -> None:
    table = opened(tmp_path, text.encode(encoding))
    found, rows = defects(table)
    assert found == expected
    assert set(expected) <= set(rows)  # reported rows are still read (their keys count)
    assert (table.truncated is not None) == cut
    assert table.count_rows() == len(rows)


def test_short_rows_are_found_across_chunks_and_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny read blocks: records, quotes and CRLFs straddle every block boundary.
    monkeypatch.setattr(reader_module, "_BLOCK_BYTES", 7)
    lines = [f'{i},"x\r\n{i}",y' if i % 3 else f"{i},x" for i in range(1, 200)]
    path = tmp_path / "in.csv"
    path.write_bytes(("id,a,b\r\n" + "\r\n".join(lines) + "\r\n").encode())
    table = open_table(path, chunk_rows=7)
    found, rows = defects(table)
    assert len(rows) == 199
    assert found == {i + 1: S for i in range(1, 200) if i % 3 == 0}
    assert len(table.defects) == len(found)


def test_row_defects_is_a_compact_mapping() -> None:
    found = RowDefects(
        np.array([3, 5], dtype=np.int64), np.array([1, 2], dtype=np.int32), 4, (9, "cut")
    )
    assert dict(found) == {
        3: (S, "has 1 of the header's 4 cells; a row cut short is not read as empty cells, "
            "check the export (short_row)"),
        5: (S, "has 2 of the header's 4 cells; a row cut short is not read as empty cells, "
            "check the export (short_row)"),
        9: (T, "cut"),
    }  # fmt: skip
    assert len(found) == 3
    assert 4 not in found
    assert found.whole([2, 3, 4, 5, 9, 10]).tolist() == [True, False, True, False, False, True]
    assert RowDefects().whole([1, 2]).tolist() == [True, True]


@pytest.mark.parametrize(
    "found",
    [
        RowDefects(),
        RowDefects(np.array([3, 5], dtype=np.int64), np.array([1, 2], dtype=np.int32), 4),
        RowDefects(last=(9, "cut")),
        RowDefects(
            np.array([3, 5, 9], dtype=np.int64), np.array([1, 2, 3], dtype=np.int32), 4, (9, "cut")
        ),
    ],
    ids=["none", "short", "cut-only", "short-and-cut"],
)
def test_row_defects_membership_is_its_keys(found: RowDefects) -> None:
    # `in` has a fast path of its own (asked of every row a run reads): it must say what
    # the keys say, for Python ints, numpy integers and what is no row number at all.
    keys = set(dict(found))
    for number in range(12):
        assert (number in found) is (number in keys)
        assert (np.int64(number) in found) is (number in keys)
    assert "3" not in found
    assert 3.5 not in found


def test_cut_rows_keep_their_cells_and_messages_name_counts_not_values(tmp_path: Path) -> None:
    table = opened(tmp_path, b'id,a,b\n1,x,y\n2,SECRET\n3,x,"cut SECRET')
    found, rows = defects(table)
    assert found == {3: S, 4: T}
    assert rows[4] == ["3", "x", "cut SECRET"]
    assert table.defects[3][1] == (
        "has 2 of the header's 3 cells; a row cut short is not read as empty cells, check the "
        "export (short_row)"
    )
    assert table.truncated == (
        f"{table.name}: ends inside a quoted value of row 4 without a line break: the export "
        "looks cut off; row 4 is reported invalid, never sent (truncated_file)"
    )
    assert "SECRET" not in repr(table.defects) + table.truncated


@pytest.mark.parametrize(
    ("raw", "row"),
    [
        (b'id,name\n1,"Smith\n2,Jones\n', 2),  # a line break after it: not a cut
        (b'"id,name\n1,2', 1),  # in the header: no rows to read at all
    ],
)
def test_an_unterminated_quote_that_is_no_cut_row_is_still_an_error(
    tmp_path: Path, raw: bytes, row: int
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(raw)
    with pytest.raises(InputError, match=f"unterminated quoted field starting near row {row};"):
        open_table(path)


def test_irregular_quoting_is_counted_by_the_csv_module(tmp_path: Path) -> None:
    # `"a"b` closes a quote in mid-field: the vectorised count is unsure, the csv module
    # (the C parser's rules) decides.
    raw = b'id,a,b\n1,"a"b,c\n2,"a"b\n3,x,y\n'
    counter = _cutcheck.CellCounter(ord(","), ord("\n"), 3)
    counter.feed(raw)
    assert not counter.finish().sure
    found, _ = defects(opened(tmp_path, raw))
    assert found == {3: S}


def test_wider_rows_stay_errors(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="row 3: a value in column 4, which has no header"):
        defects(opened(tmp_path, b"id,a,b\n1,x,y\n2,x,y,EXTRA\n"))


def test_excel_rows_with_trailing_empty_cells_are_not_short(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["id", "a", "b"])
    sheet.append([1, "x"])  # Excel stores no cell for an empty one
    sheet.append([2, "x", "y"])
    path = tmp_path / "in.xlsx"
    book.save(path)
    table = open_table(path)
    found, rows = defects(table)
    assert found == {}
    assert table.truncated is None
    assert rows[2] == ["1", "x", ""]


# --- the property: a row cut short is always reported, never padded ---------------------

_cell = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
    | st.sampled_from([",", '"', "\n", "\r", ";", " ", "\t", "|"]),
    max_size=8,
)


@st.composite
def _tables(draw: st.DrawFn) -> tuple[list[list[str]], int, int, str, str, str]:
    width = draw(st.integers(2, 6))
    header = [f"c{i}" for i in range(width)]
    body = draw(
        st.lists(
            st.lists(_cell, min_size=width, max_size=width).filter(lambda r: "".join(r).strip()),
            min_size=1,
            max_size=8,
        )
    )
    short_at = draw(st.integers(0, len(body) - 1))
    keep = draw(st.integers(1, width - 1))
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]))
    ending = draw(st.sampled_from(["\n", "\r\n", ""]))  # "": no final line break
    return [header, *body], short_at + 1, keep, delimiter, encoding, ending


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_tables())
def test_a_row_cut_short_is_always_reported_never_padded(
    tmp_path: Path, drawn: tuple[list[list[str]], int, int, str, str, str]
) -> None:
    records, short_at, keep, delimiter, encoding, ending = drawn
    records = [list(r) for r in records]
    cut = records[short_at][:keep]
    # cells left must hold something, or the row is blank (skipped, not a row)
    if not "".join(cut).strip() or (keep == 1 and cut[0] == ""):
        cut[0] = "k"
    records[short_at] = cut
    if encoding == "cp1252":
        records = [[c.encode("cp1252", "replace").decode("cp1252") for c in r] for r in records]
    newline = ending or "\n"
    text = newline.join(_line(r, delimiter) for r in records) + ending
    path = tmp_path / "prop.csv"
    path.write_bytes(text.encode(encoding))
    # (cp1252 text that happens to be valid UTF-8 would be read as UTF-8: say it)
    forced = "cp1252" if encoding == "cp1252" else None
    table = open_table(path, SourceOptions(delimiter=delimiter, encoding=forced))
    found, rows = defects(table)
    # row numbers: the header is row 1, each record one row (quoted breaks inside it)
    row = short_at + 1
    last = short_at == len(records) - 1 and ending == ""
    assert found.get(row) == (T if last else S), (found, text)
    assert set(found) == {row}
    if not last:
        assert rows[row][:keep] == [unescape_formula(c) for c in records[short_at]]


def _line(cells: list[str], delimiter: str) -> str:
    """One CSV record as exports write it: a cell quoted when it holds a delimiter, a
    quote or a line break (csv.writer leaves a lone CR unquoted with "\n" line ends)."""
    special = (delimiter, '"', "\r", "\n")
    return delimiter.join(
        '"' + c.replace('"', '""') + '"' if any(s in c for s in special) else c for c in cells
    )


# --- validate, preview and run never send such a row ----------------------------------------


def _cut_file(tmp_path: Path) -> Path:
    """Five rows: row 3 short, the last (row 6) cut inside its dateTime."""
    lines = write_csv(tmp_path / "full.csv", consent_rows(5)).read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:5])  # K000001: no dateTime, no policyUri
    lines[5] = lines[5][: lines[5].index(",2024-") + 8]
    path = tmp_path / "cut.csv"
    path.write_text("\n".join(lines))  # no final line break: the export died
    return path


def test_validate_and_preview_report_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _cut_file(tmp_path)
    code, out, _err = run_cli(["validate", str(source)], capsys)
    assert code == 1
    assert "5 rows, 3 valid, 2 invalid" in out
    assert "short_row 1, truncated_file 1" in out
    assert f"{source}:3  has 5 of the header's 7 cells" in out
    assert f"{source}:6  the file ends after 6 of the header's 7 cells of this row" in out
    code, out, _ = run_cli(["preview", str(source), "--row", "6"], capsys)
    assert code == 1
    assert "invalid" in out
    assert "run would send" not in out


def test_a_truncated_file_run_sends_every_row_but_the_cut_ones(
    tmp_path: Path, server: RunningSandbox
) -> None:
    source = _cut_file(tmp_path)
    result = run(source, server.base_url, tmp_path / "l.db")
    assert result.exit_code == 1
    assert (result.stats.invalid, result.stats.created) == (2, 3)
    sent = sorted(c["dateTime"] for c in server.consents())
    assert sent == sorted(r["dateTime"] for i, r in enumerate(consent_rows(5)) if i in (0, 2, 3))
    assert server.stats()["by_method"].get("POST", 0) == 3


@pytest.mark.parametrize(
    "policy",
    [
        "https://clinic.example/policy/v1",  # padded, it would be sent as a PATCH
        "",  # padded, it would match the ledger's digest and pass as unchanged
    ],
)
def test_a_rerun_never_takes_a_row_that_came_back_short(
    tmp_path: Path, server: RunningSandbox, policy: str
) -> None:
    rows = list(consent_rows(5))
    rows[1]["policyUri"] = policy
    full = write_csv(tmp_path / "full.csv", rows)
    ledger = tmp_path / "l.db"
    assert run(full, server.base_url, ledger).exit_code == 0
    lines = full.read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:6])  # row 3 (K000001): its policyUri cell gone
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines) + "\n")
    result = run(short, server.base_url, ledger)
    assert result.exit_code == 1
    assert (result.stats.invalid, result.stats.updated) == (1, 0)
    assert server.stats()["patches"] == 0
    assert sorted(c.get("policyUri", "") for c in server.consents()) == sorted(
        r["policyUri"] for r in rows
    )


def test_cli_run_of_a_truncated_file_exits_1(
    tmp_path: Path,
    server: RunningSandbox,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    monkeypatch.setenv("CLINIKAPI_BASE_URL", server.base_url)
    source = _cut_file(tmp_path)
    code, out, err = run_cli(
        ["run", str(source), "--ledger", str(tmp_path / "l.db"), "--no-preflight"], capsys
    )
    assert code == 1, out + err
    assert server.stats()["creates"] == 3
    assert "truncated_file" in out + err


# --- a version-2 mapping ([[consents]]) takes the same way --------------------------------

FULL = (
    "ID,Patient,Research Status,HIPAA Date,HIPAA Status\n"
    "R1,pt_1,active,2024-05-01T00:00:00Z,active\n"
    "R2,pt_2,active,,\n"
    "R3,pt_3,active,2024-05-03T00:00:00Z,active\n"
)
SHORT = FULL.replace("R2,pt_2,active,,\n", "R2,pt_2,active\n")  # same cells, cut short


def test_a_version_2_mapping_never_takes_a_short_row(
    tmp_path: Path, server: RunningSandbox
) -> None:
    mapping_path = tmp_path / "map.toml"
    mapping_path.write_text(CONSENTS, encoding="utf-8")
    mapping = load_mapping(mapping_path)
    source = tmp_path / "in.csv"
    source.write_text(SHORT, encoding="utf-8")
    summary = validate_files([source], mapping)
    assert (summary.valid, summary.invalid) == (4, 1)
    assert [(e.row, e.code, e.consent) for e in summary.errors] == [(3, S, "research")]
    # a rerun: the row came back short with the same cells; not counted as unchanged
    source.write_text(FULL, encoding="utf-8")
    ledger = tmp_path / "l.db"
    assert run(source, server.base_url, ledger, mapping=mapping_path).exit_code == 0
    source.write_text(SHORT, encoding="utf-8")
    result = run(source, server.base_url, ledger, mapping=mapping_path)
    assert result.exit_code == 1
    assert (result.stats.invalid, result.stats.updated) == (1, 0)
    assert server.stats()["patches"] == 0
