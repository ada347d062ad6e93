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
- The rows come out as the C parser's chunks: `chunk_rows` records each, columns
  numbered from 0, every cell `CELLS` (Python `str`), so row numbers, the blank-row and
  extra-cell checks and everything after them are the C path's own.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api.extensions import ExtensionDtype

if TYPE_CHECKING:
    import pyarrow as pa

#: Bytes Arrow parses at a time (one block per thread): peak memory grows with it, speed
#: hardly past 1 MiB.
BLOCK_BYTES: Final = 1 << 20


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
    offset: int,
    width: int,
    delimiter: str,
    chunk_rows: int,
    skipped: Skipped,
    dtype: ExtensionDtype,
) -> Generator[pd.DataFrame]:
    """The records from byte `offset` on as positional frames of `chunk_rows` records.

    Raises:
        ArrowMismatch: Arrow skipped records the counter did not report, or the reverse.
        pyarrow.ArrowInvalid: the file does not parse (a record wider than `width`).
    """
    import pyarrow as pa
    from pyarrow import csv as pacsv

    left_out = 0

    def invalid(row: Any) -> str:
        nonlocal left_out
        if row.actual_columns < row.expected_columns:
            left_out += 1
            return "skip"
        return "error"

    names = [str(i) for i in range(width)]
    source = pa.memory_map(str(path))
    try:
        if offset >= source.size():
            return  # no record after the header
        source.seek(offset)
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(
                column_names=names, block_size=BLOCK_BYTES, use_threads=True
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                quote_char='"',
                double_quote=True,
                escape_char=False,
                newlines_in_values=True,
                ignore_empty_lines=False,  # a blank line is a record: it has a row number
                invalid_row_handler=invalid,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        shorts = skipped.records
        done = 0  # records already in frames
        held: pa.Table | None = None
        batches = iter(reader)
        ended = False
        while True:
            # Records [done, done + chunk_rows): the skipped ones among them come from
            # `skipped`, the rest from Arrow.
            end = done + chunk_rows
            inside = int(np.searchsorted(shorts, end) - np.searchsorted(shorts, done))
            wanted = chunk_rows - inside
            held_rows = 0 if held is None else held.num_rows
            parts: list[pa.RecordBatch] = []
            while not ended and held_rows < wanted:
                batch = next(batches, None)
                if batch is None:
                    ended = True
                else:
                    parts.append(batch)
                    held_rows += batch.num_rows
            if parts:
                more = pa.Table.from_batches(parts)
                held = more if held is None else pa.concat_tables([held, more])
            take = min(wanted, held_rows)
            if ended and take < wanted:
                # The last frame: Arrow's last rows and every skipped record left.
                end = done + take + int(shorts.size - np.searchsorted(shorts, done))
                if end == done:
                    break
            rows = held
            columns = [] if rows is None else [rows.column(i).slice(0, take) for i in range(width)]
            yield _frame(columns, skipped, done, end, width, dtype)
            held = None if rows is None or take == held_rows else rows.slice(take)
            done = end
    finally:
        source.close()
    if left_out != shorts.size:
        raise ArrowMismatch(f"Arrow skipped {left_out} records, the counter found {shorts.size}")


def _frame(
    columns: Sequence[pa.ChunkedArray],
    skipped: Skipped,
    start: int,
    end: int,
    width: int,
    dtype: ExtensionDtype,
) -> pd.DataFrame:
    """Records [start, end) as a positional frame: Arrow's rows with the skipped ones."""
    shorts = skipped.records
    first, last = int(np.searchsorted(shorts, start)), int(np.searchsorted(shorts, end))
    size = end - start
    if first == last:
        cells = [c.to_numpy(zero_copy_only=False) for c in columns]
    else:
        at = shorts[first:last] - start
        arrow_at = np.delete(np.arange(size), at)
        short_cells = skipped.cells[first:last]
        cells = []
        for i in range(width):
            values = np.empty(size, dtype=object)
            if columns:
                values[arrow_at] = columns[i].to_numpy(zero_copy_only=False)
            values[at] = [record[i] for record in short_cells]
            cells.append(values)
    return pd.DataFrame(
        {i: pd.array(values, dtype=dtype) for i, values in enumerate(cells)},
        index=pd.RangeIndex(size),
    )
