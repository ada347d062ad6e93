"""validate's faster paths against the ways they replaced (issue 24): the same results.

- `DateColumn.read` reads a chunk of all-ISO 8601 cells in C; it must give what the cell
  by cell reading (`_read_each`) gives, errors included;
- `CellCounter` skips its quote and CR scans of a block when memchr finds none there;
- `_scan_text` looks for a formula escape only in blocks holding an apostrophe, and
  counts lines with numpy.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from importer._errors import ConfigError
from importer.intake import _reader as reader_module
from importer.intake._cutcheck import CellCounter
from importer.intake._dates import DateColumn
from importer.intake._fastcheck import _ordered, proven_valid
from importer.intake._key_index import KeyIndex, _merged
from importer.intake._reader import _DecodeFailed, _line_breaks, _scan_text
from tests.helpers import key_index_answers

FORMATS = ("%d.%m.%Y", "%m/%d/%Y", "%m/%d/%Y %I:%M %p")
#: ISO with an offset, ISO naive (date, time of day), other formats, Excel serials, junk.
CELLS = [
    "",
    "2024-03-01T10:00:00Z",
    "2024-03-01T10:00:00+02:00",
    "2023-12-31T23:59:59.123-05:00",
    "2024-03-01",
    "2024-02-29",
    "2024-03-01T10:00:00",
    "2024-03-01 10:00",
    "01.03.2024",
    "03/01/2024",
    "03/01/2024 10:00 AM",
    "45000",
    "not a date",
    "2024-13-01",
]


def _column(tz: ZoneInfo | None, unstated: str, end: bool) -> DateColumn:
    return DateColumn(
        "in.csv", "dateTime", FORMATS, tz, excel=True, end_of_day=end, unstated=unstated
    )


def _outcome(read: object) -> object:
    try:
        return read()  # type: ignore[operator]
    except ConfigError as exc:
        return ("ConfigError", str(exc))


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.lists(st.sampled_from(CELLS), max_size=12), min_size=1, max_size=4),
    zone=st.sampled_from([None, "UTC", "America/Chicago"]),
    unstated=st.sampled_from(["", "TODO"]),
    end=st.booleans(),
)
def test_date_read_is_the_cell_by_cell_reading(
    chunks: list[list[str]], zone: str | None, unstated: str, end: bool
) -> None:
    tz = ZoneInfo(zone) if zone else None
    fast, slow = _column(tz, unstated, end), _column(tz, unstated, end)
    for texts in chunks:
        rows = lambda pos: pos + 2  # noqa: E731
        got = _outcome(lambda: fast.read(texts, rows))  # noqa: B023
        distinct = set(texts)
        distinct.discard("")
        want = _outcome(lambda: slow._read_each(distinct, texts, rows))  # noqa: B023
        assert got == want
        if isinstance(want, tuple):
            return  # the read stopped
        assert (fast.read_naive, fast.decided, fast.candidates) == (
            slow.read_naive,
            slow.decided,
            slow.candidates,
        )


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (
            ["2024-03-01T10:00:00Z", "", "2024-03-01T10:00:00Z"],
            {"2024-03-01T10:00:00Z": "2024-03-01T10:00:00+00:00"},
        ),
        (["2024-03-01"], {"2024-03-01": "2024-03-01T00:00:00+00:00"}),  # a date alone: UTC
        (
            ["2024-03-01", "01.03.2024"],
            {"2024-03-01": "2024-03-01T00:00:00+00:00", "01.03.2024": "2024-03-01T00:00:00+00:00"},
        ),
        (["nope"], {"nope": None}),
        ([""], {}),
    ],
)
def test_date_read_table(texts: list[str], expected: dict[str, str | None]) -> None:
    read = DateColumn("in.csv", "dateTime", FORMATS, None, excel=False).read(texts)
    assert {k: v.isoformat() if isinstance(v, datetime) else v for k, v in read.items()} == expected


def test_a_naive_time_of_day_without_a_zone_still_stops_the_read() -> None:
    column = DateColumn("in.csv", "dateTime", FORMATS, None, excel=False)
    with pytest.raises(ConfigError, match="row 3, a cell shaped '9999-99-99A99:99:99'"):
        column.read(["2024-03-01T10:00:00Z", "2024-03-01T10:00:00"], lambda pos: pos + 2)


# --- the cell counter: a quote or CR anywhere, blocks split anywhere ----------------------


def _reference(raw: bytes, width: int) -> list[tuple[int, int]]:
    """(record, cells) of each record shorter than `width`, by the csv module."""
    records = csv.reader(io.StringIO(raw.decode(), newline=""))
    return [(i, max(len(r), 1)) for i, r in enumerate(records) if max(len(r), 1) < width]


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.lists(
            st.sampled_from(["x", "", "a,b", 'say "hi"', "l1\r\nl2", "l1\nl2", "yy"]),
            min_size=1,
            max_size=4,
        ),
        min_size=1,
        max_size=30,
    ),
    newline=st.sampled_from(["\n", "\r\n"]),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=6),
)
def test_cell_counter_agrees_with_the_csv_module(
    rows: list[list[str]], newline: str, cuts: list[int]
) -> None:
    out = io.StringIO()
    csv.writer(out, lineterminator=newline).writerows(rows)
    raw = out.getvalue().encode()
    counter = CellCounter(ord(","), ord("\n"), 3)
    at = 0
    for cut in sorted(set(cuts)):
        counter.feed(raw[at:cut])
        at = max(at, cut)
    counter.feed(raw[at:])
    shape = counter.finish()
    assert shape.sure
    assert shape.cut is None
    assert list(zip(shape.records.tolist(), shape.cells.tolist(), strict=True)) == _reference(
        raw, 3
    )


@pytest.mark.parametrize(
    ("raw", "sure"),
    [
        (b"a,b\r\n1,2\r\n", True),
        (b"a,b\r1,2\r\n", False),  # a lone CR ends a record for the C parser
        (b"a,b\n1,2\r", True),  # a CR at the very end: the end of the file is a line break
        (b'a,b\n1,"x"y\n', False),  # a quote closed in mid-field
        (b"a,b\n1,2\n", True),
    ],
)
def test_cell_counter_still_flags_lone_crs_and_stray_quotes(raw: bytes, sure: bool) -> None:
    for size in (1, 2, 3, len(raw)):
        counter = CellCounter(ord(","), ord("\n"), 2)
        for start in range(0, len(raw), size):
            counter.feed(raw[start : start + size])
        assert counter.finish().sure is sure


# --- the encoding scan -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "escape"),
    [
        ("a,b\n1,2\n", False),
        ("a,b\n1,'=SUM(A1)\n", True),
        ("a,b\n1,'-3\n", True),
        ("a,b\n1,it's\n", False),  # an apostrophe that escapes nothing
        ("a,b\n1,'\n2,=x\n", False),  # quote, then a line break: no escape
        ("a,b\n1,x'\t2\n", True),
    ],
)
@pytest.mark.parametrize("block", [1, 2, 5, 4096])
def test_scan_text_finds_formula_escapes_in_any_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, escape: bool, block: int
) -> None:
    monkeypatch.setattr(reader_module, "_BLOCK_BYTES", block)
    path = tmp_path / "in.csv"
    path.write_bytes(text.encode())
    assert _scan_text(path, "in.csv", "utf-8") is escape


@pytest.mark.parametrize("block", [1, 3, 4096])
def test_scan_text_names_the_line_of_a_bad_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(reader_module, "_BLOCK_BYTES", block)
    path = tmp_path / "in.csv"
    path.write_bytes(b"a,b\n1,2\r\n3,4\n5,\xff\n")
    with pytest.raises(_DecodeFailed) as caught:
        _scan_text(path, "in.csv", "utf-8")
    assert caught.value.line == 4


@pytest.mark.parametrize(
    ("block", "count"), [(b"", 0), (b"abc", 0), (b"\n", 1), (b"a\r\nb\n\n", 3)]
)
def test_line_breaks(block: bytes, count: int) -> None:
    assert _line_breaks(block) == count


# --- the key index: the bitmap in front of the sorted runs ---------------------------------


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            # a few top bits (the bitmap's slot) and a few low ones: keys that share a
            # slot without being equal, repeats within and across batches
            st.tuples(st.integers(0, 5), st.integers(0, 7)).map(
                lambda t: t[0] << 60 | t[1] << 3 | t[0]
            ),
            max_size=40,
        ),
        max_size=12,
    )
)
def test_key_index_answers_as_a_dict(batches: list[list[int]]) -> None:
    index = KeyIndex()
    got = []
    at = 0
    for batch in batches:
        here = np.arange(at, at + len(batch), dtype=np.int64)
        got.append(index.add(np.array(batch, dtype=np.uint64), here).tolist())
        at += len(batch)
    assert got == key_index_answers(batches)
    everything = sorted({k for b in batches for k in b})
    assert index.contains(np.array(everything, dtype=np.uint64)).all()
    others = np.array([k ^ 1 << 2 for k in everything], dtype=np.uint64)  # same slot, absent
    assert not index.contains(others).any()


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_merged_runs_are_np_insert(size: int) -> None:
    rng = np.random.default_rng(size)
    keys = rng.choice(1 << 40, size=3 * size, replace=False).astype(np.uint64)
    a, b = np.sort(keys[: 2 * size]), np.sort(keys[2 * size :])
    aw, bw = rng.integers(0, 99, len(a)), rng.integers(0, 99, len(b))
    at = np.searchsorted(a, b)
    merged = _merged(a, aw, b, bw)
    assert merged[0].tolist() == np.insert(a, at, b).tolist()
    assert merged[1].tolist() == np.insert(aw, at, bw).tolist()


# --- proven_valid: dates read from these very cells, periods in order at once ---------------

DATE_CELLS = [
    "",
    "2024-03-01",
    "2024-03-02T10:00:00Z",
    "2030-12-31",
    "2020-01-01",
    "bad",
    "31.12.2030",
]


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(DATE_CELLS), st.sampled_from(DATE_CELLS), st.sampled_from(DATE_CELLS)
        ),
        min_size=1,
        max_size=30,
    )
)
def test_proofs_from_the_chunks_readings_are_the_cell_by_cell_proofs(
    rows: list[tuple[str, str, str]],
) -> None:
    size = len(rows)
    fields = {
        "patientId": [f"pt_{i}" for i in range(size)],
        "scope": ["treatment"] * size,
        "category": ["a"] * size,
        "dateTime": [r[0] for r in rows],
        "provisionStart": [r[1] for r in rows],
        "provisionEnd": [r[2] for r in rows],
    }
    keys: list[str | None] = [f"K{i}" for i in range(size)]
    readings = {
        name: DateColumn(
            "in.csv",
            name,
            ("%d.%m.%Y",),
            ZoneInfo("UTC"),
            excel=False,
            end_of_day=name == "provisionEnd",
        ).read(fields[name])
        for name in ("dateTime", "provisionStart", "provisionEnd")
    }

    def parse_date(name: str, text: str) -> datetime | None:
        return readings[name].get(text)

    fast = proven_valid(fields, keys, parse_date=parse_date, crosswalk=None, read_dates=readings)
    plain = {name: dict(read) for name, read in readings.items()}  # no `texts`: the set path
    by_set = proven_valid(fields, keys, parse_date=parse_date, crosswalk=None, read_dates=plain)
    by_cell = proven_valid(fields, keys, parse_date=parse_date, crosswalk=None)
    assert fast.tolist() == by_set.tolist() == by_cell.tolist()


@pytest.mark.parametrize(
    ("starts", "ends", "ordered"),
    [
        ({"a": datetime(2024, 1, 1, tzinfo=UTC)}, {"b": datetime(2024, 1, 2, tzinfo=UTC)}, True),
        ({"a": datetime(2024, 1, 1, tzinfo=UTC)}, {"b": datetime(2024, 1, 1, tzinfo=UTC)}, True),
        ({"a": datetime(2024, 1, 3, tzinfo=UTC)}, {"b": datetime(2024, 1, 2, tzinfo=UTC)}, False),
        ({"a": None}, {"b": datetime(2024, 1, 2, tzinfo=UTC)}, True),  # nothing to order
        ({}, {}, True),
        ({"a": datetime(2024, 1, 1)}, {"b": datetime(2024, 1, 2, tzinfo=UTC)}, False),  # naive
    ],
)
def test_ordered(
    starts: dict[str, datetime | None], ends: dict[str, datetime | None], ordered: bool
) -> None:
    assert _ordered({"s": starts, "e": ends}, "s", "e") is ordered
    assert not _ordered({"s": starts}, "s", "e")
    assert not _ordered(None, "s", "e")
