"""Read the rows of a well-formed UTF-8 CSV with Arrow's multithreaded parser.

The reader (`importer.intake._reader`) takes this path only where Arrow reads a file the
way pandas' C parser does: UTF-8 text (cp1252, UTF-16 and every other codec stay with the C
parser: Arrow would decode them through Python, slower than the C parser), one ASCII
delimiter, LF or CRLF line breaks, quoting the cell counter found well-formed, no record
wider than the header, and a file not cut off. What Arrow does differently there is undone
here:

- Arrow drops a record with fewer cells than the header (the invalid-row handler says
  "skip"); the cell counter found every such record beforehand, so the reader hands them
  in, read by the csv module and padded with empty cells as the C parser pads them, and
  they go back in their places. A record that is wholly empty Arrow pads itself.
- The rows come out as the C parser's frames: chunks of the same records (Arrow parses a
  stretch between two of the counter's marks at a time and fills a chunk with it),
  columns numbered from 0, every cell the reader's `CELLS` (Python `str`), so row numbers,
  the blank-row check and everything after them are the C path's own.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api.extensions import ExtensionDtype

if TYPE_CHECKING:
    import pyarrow as pa

#: Bytes a thread of Arrow's parses at a time: a stretch of 12,500 canonical records
#: (2.4 MB) is five blocks, so both cores of a small machine take part.
BLOCK_BYTES: Final = 1 << 19


@dataclass(frozen=True)
class Skipped:
    """The records Arrow leaves out, fewer cells than the header and not empty.

    Args:
        records: their 0-based indexes among the records after the header, ascending.
        cells: their cells, padded with "" to the width read.
    """

    records: npt.NDArray[np.int64]
    cells: Sequence[list[str]]


class ArrowMismatch(Exception):
    """Arrow left out other records than the cell counter found (never seen; a bug)."""


def arrow_frames(
    path: Path,
    marks: Sequence[int],
    width: int,
    delimiter: str,
    stretch: int,
    skipped: Skipped,
    dtype: ExtensionDtype,
    rows: int,
) -> Generator[pd.DataFrame]:
    """The records after the header as positional frames of `rows` records (the last
    may hold fewer), as the C parser's chunks of `rows`.

    `marks` are the byte offsets where the records after the header start, and then
    after every `stretch` records: each stretch between two is parsed whole by Arrow (its
    threads share the blocks), so Arrow holds one stretch, whatever the file's size, and
    its cells are put in their chunk's place a column at a time.
    (Parsing the next stretch in a thread while the frame is used was no faster on two
    cores, the GIL handed back and forth, and held one more stretch.)

    Raises:
        ArrowMismatch: Arrow skipped other records than `skipped`, or read a stretch to
            another number of records than the counter counted.
        pyarrow.ArrowInvalid: the file does not parse (a record wider than `width`).
    """
    import pyarrow as pa
    from pyarrow import csv as pacsv

    names = [str(i) for i in range(width)]
    # Dictionary-encoded in Arrow's threads: a block's repeated cells become one Python
    # string each, as the C parser shares them (string columns made a str a cell: 160 MB
    # more at 1M rows, and slower after). A column of mostly distinct cells (keys, ids,
    # time stamps) is read as plain strings from the second stretch on: hashing it buys
    # nothing.
    coded = pa.dictionary(pa.int32(), pa.string())
    types = dict.fromkeys(names, coded)

    def converting() -> Any:
        return pacsv.ConvertOptions(
            column_types=types,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            # The reader decoded the whole file as UTF-8 when it opened it (`_scan_text`).
            check_utf8=False,
        )

    convert = converting()
    read = pacsv.ReadOptions(column_names=names, block_size=BLOCK_BYTES, use_threads=True)

    # Arrow's own allocator (mimalloc) kept 30-40 MB of freed pages resident through a
    # 1M-row `validate`, though a stretch's table is a few MB: the C library's malloc
    # lets them be reused (peak RSS 260-277 -> 250-256 MB, no slower).
    pool = pa.system_memory_pool()

    def parse(handle: BinaryIO, at: int) -> tuple[pa.Table, int]:
        left_out = 0

        def invalid(row: Any) -> str:
            nonlocal left_out
            if row.actual_columns < row.expected_columns:
                left_out += 1
                return "skip"
            return "error"

        handle.seek(marks[at])
        size = marks[at + 1] - marks[at] if at + 1 < len(marks) else -1
        data = handle.read(size)
        options = pacsv.ParseOptions(
            delimiter=delimiter,
            quote_char='"',
            double_quote=True,
            escape_char=False,
            newlines_in_values=True,
            ignore_empty_lines=False,  # a blank line is a record: it has a row number
            invalid_row_handler=invalid,
        )
        if not data:
            return pa.table({n: pa.array([], pa.string()) for n in names}), 0

        def read_as(blocks: Any) -> pa.Table:
            return pacsv.read_csv(
                pa.BufferReader(data),
                read_options=blocks,
                parse_options=options,
                convert_options=convert,
                memory_pool=pool,
            )

        try:
            table = read_as(read)
        except pa.ArrowInvalid:
            # A record longer than a block (a cell of a megabyte, an embedded document):
            # this stretch again as one block, in one thread. (A file that does not parse
            # fails again, and that error is raised.)
            left_out = 0
            table = read_as(
                pacsv.ReadOptions(column_names=names, block_size=len(data) + 1, use_threads=False)
            )
        return table, left_out

    shorts = skipped.records
    # The chunk being filled: one object array a column, `rows` long, each stretch's cells
    # put in place a column at a time as Arrow's table is turned into Python strings, so
    # a chunk is never held twice (as stretches and as their concatenation) and a stretch
    # is never held as Python strings beside it.
    filling: list[npt.NDArray[np.object_]] = []
    filled = 0
    with path.open("rb") as handle:
        for at in range(len(marks)):
            table, left_out = parse(handle, at)
            start = at * stretch
            inside = int(np.searchsorted(shorts, start + stretch) - np.searchsorted(shorts, start))
            end = start + table.num_rows + left_out
            if left_out != inside or (at + 1 < len(marks) and end != start + stretch):
                raise ArrowMismatch(
                    f"records {start}-{start + stretch}: Arrow read {table.num_rows} and "
                    f"skipped {left_out}; the counter found {inside} short"
                )
            if at == 0 and table.num_rows:
                for name in names:
                    column = table.column(name)
                    distinct = sum(len(chunk.dictionary) for chunk in column.chunks)
                    if distinct > table.num_rows // 2:
                        types[name] = pa.string()
                convert = converting()
            # Where the stretch's records go: the chunk being filled, and the next one
            # when a chunk ends inside the stretch (a stretch is at most a chunk).
            places: list[tuple[list[npt.NDArray[np.object_]], int, int, int]] = []
            full: list[list[npt.NDArray[np.object_]]] = []
            done = start
            while done < end:
                if not filling:
                    # `rows`, or the records left if fewer (the stretches after this one
                    # hold `stretch` each at most): a small file's chunk is its size.
                    left = end - done + (len(marks) - at - 1) * stretch
                    filling = [np.empty(min(rows, left), dtype=object) for _ in range(width)]
                    filled = 0
                take = min(end - done, len(filling[0]) - filled)
                places.append((filling, filled, done - start, take))
                filled += take
                done += take
                if filled == len(filling[0]):
                    full.append(filling)
                    filling = []
            stretch_cells = _Stretch(skipped, start, end)
            for i in range(width):
                values = stretch_cells.column(table.column(i), i)
                for arrays, to, since, take in places:
                    arrays[i][to : to + take] = values[since : since + take]
                del values
            del table, places  # Arrow's copy goes before the chunk is used
            while full:  # (no name left holding a chunk the caller is done with)
                chunk = full.pop(0)
                yield _frame(chunk, len(chunk[0]), dtype)
                del chunk
    if filling and filled:
        yield _frame([values[:filled] for values in filling], filled, dtype)


def _frame(
    columns: list[npt.NDArray[np.object_]], size: int, dtype: ExtensionDtype
) -> pd.DataFrame:
    """Positional columns of Python strings as a frame of `dtype` cells, not copied
    (`pd.array` and the frame's constructor each copied a column: 0.6 s of the 1M rows)."""
    # (`_from_sequence` is the extension-array API's constructor; pandas-stubs omit it)
    build = dtype.construct_array_type()._from_sequence  # type: ignore[attr-defined]
    return pd.DataFrame(
        {i: build(values, dtype=dtype, copy=False) for i, values in enumerate(columns)},
        index=pd.RangeIndex(size),
        copy=False,
    )


class _Stretch:
    """A stretch's records [start, end) a column at a time: Arrow's rows with the
    skipped ones in their places."""

    def __init__(self, skipped: Skipped, start: int, end: int) -> None:
        shorts = skipped.records
        first, last = int(np.searchsorted(shorts, start)), int(np.searchsorted(shorts, end))
        self.size = end - start
        self.at = shorts[first:last] - start
        self.arrow_at = np.delete(np.arange(self.size), self.at) if first < last else None
        self.short_cells = skipped.cells[first:last]

    def column(self, column: pa.ChunkedArray, i: int) -> npt.NDArray[np.object_]:
        """Column `i` as Python strings."""
        values = _objects(column)
        if self.arrow_at is None:
            return values
        whole = np.empty(self.size, dtype=object)
        if len(values):
            whole[self.arrow_at] = values
        whole[self.at] = [record[i] for record in self.short_cells]
        return whole


def _objects(column: pa.ChunkedArray) -> npt.NDArray[np.object_]:
    """A column as Python strings (dictionary-encoded: one object per distinct cell of a block)."""
    parts = [
        chunk.dictionary.to_numpy(zero_copy_only=False)[chunk.indices.to_numpy()]
        if hasattr(chunk, "indices")  # a DictionaryArray
        else chunk.to_numpy(zero_copy_only=False)
        for chunk in column.chunks
    ]
    if len(parts) == 1:
        return parts[0]  # type: ignore[no-any-return]
    if not parts:
        return np.empty(0, dtype=object)
    return np.concatenate(parts)
