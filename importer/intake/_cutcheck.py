"""Find CSV records with fewer cells than the header, and a file cut off inside its last record.

pandas' C parser pads a record that has fewer cells than the header with empty cells, so a
row cut short looks like a row whose last cells are empty. `CellCounter` counts the cells
of every record in the raw bytes (vectorised with numpy, one more pass over the file) so
the reader can tell the two apart: a short row is an error, never a row to send.

A quote opens a quoted field only at the start of a field and closes it before a
delimiter, a line break or another quote, as in well-formed CSV. Where a file breaks
those rules (a quote closed in mid-field, a lone CR), the count could differ from the
parser's, so the counter says it is unsure and the reader counts with the csv module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

_QUOTE: Final = ord('"')
_CR: Final = 13
_LF: Final = 10
#: The most of a cut last record kept to read its cells (a consent row is far smaller).
MAX_TAIL_BYTES: Final = 1024 * 1024


@dataclass
class Cut:
    """The last record of a file that ends without a line break, cut short."""

    record: int  # 0-based record index from the start of the file
    cells: int
    in_quotes: bool  # the file ends inside a quoted value
    tail: bytes  # the record's bytes (empty if longer than MAX_TAIL_BYTES)


@dataclass
class Shape:
    """What the counter found: short records (0-based record indexes, ascending, and their
    cells), and the cut last record if any. Arrays, so that a file whose every row is
    short costs 12 bytes a row."""

    records: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    cells: npt.NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    cut: Cut | None = None
    sure: bool = True  # False: malformed quoting, count again with the csv module
    #: Where each short record's bytes start and where its line break is (byte offsets in
    #: the stream; -1: a cut last record has none), for a reader that leaves them out.
    starts: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    ends: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    widest: int = 0  # the most cells of any record
    #: Byte offsets just past the line breaks of records `mark`, `mark + every`, ...
    #: (`CellCounter(mark=, every=)`): where a reader may start on whole records.
    marks: list[int] = field(default_factory=list)


class CellCounter:
    """Count the cells of every CSV record fed to it in blocks of bytes.

    Only records with fewer than `width` cells are remembered (blank ones too; the
    reader never yields those). `newline` is the record separator's byte (LF or CR).
    """

    def __init__(
        self, delimiter: int, newline: int, width: int, *, mark: int = -1, every: int = 1 << 62
    ) -> None:
        self.delimiter = delimiter
        self.mark = mark  # the next record whose end `Shape.marks` gets (the header's first)
        self.every = every
        self.offset = 0  # the stream offset of the bytes `_count` is given
        self.start = 0  # the stream offset of the record still open
        self.newline = newline
        self.width = width
        boundary = np.zeros(256, dtype=bool)
        boundary[[delimiter, _LF, _CR, _QUOTE]] = True
        self.boundary = boundary  # a byte next to which a quote is structural
        self.content = np.ones(256, dtype=bool)
        self.content[[delimiter, 9, _LF, _CR, 32, _QUOTE]] = False
        self.parity = 0  # 1 while inside a quoted field
        self.prev = newline  # the byte before the current block
        self.held = b""  # the last byte, kept until the byte after it is known
        self.record = 0  # index of the record still open
        self.cells = 1  # cells of the record still open, so far
        self.tail = bytearray()  # bytes of the record still open (capped)
        self.tail_whole = True
        self.ended = True  # the last byte fed ends a record
        self.shape = Shape()
        self._records: list[npt.NDArray[np.int64]] = []
        self._cells: list[npt.NDArray[np.int32]] = []
        self._starts: list[npt.NDArray[np.int64]] = []
        self._ends: list[npt.NDArray[np.int64]] = []

    def feed(self, block: bytes) -> None:
        data = self.held + block
        if len(data) < 2:
            self.held = data
            return
        self.held = data[-1:]
        self._count(memoryview(data)[:-1], data[-1], data)

    def finish(self) -> Shape:
        if self.held:
            # EOF behaves like a line break for a closing quote.
            self._count(self.held, self.newline, self.held)
            self.held = b""
        tail = bytes(self.tail)
        if not self.ended and (self.parity or self.content[np.frombuffer(tail, np.uint8)].any()):
            if self.parity or self.cells < self.width:
                self.shape.cut = Cut(
                    self.record, self.cells, bool(self.parity), tail if self.tail_whole else b""
                )
            if self.cells < self.width:
                self._records.append(np.array([self.record], dtype=np.int64))
                self._cells.append(np.array([self.cells], dtype=np.int32))
                self._starts.append(np.array([self.start], dtype=np.int64))
                self._ends.append(np.array([-1], dtype=np.int64))
            self.shape.widest = max(self.shape.widest, self.cells)
        if self._records:
            self.shape.records = np.concatenate(self._records)
            self.shape.cells = np.concatenate(self._cells)
            self.shape.starts = np.concatenate(self._starts)
            self.shape.ends = np.concatenate(self._ends)
        return self.shape

    def _count(self, data: bytes | memoryview, after: int, whole: bytes) -> None:
        """Count `data`, followed by the byte `after`. `whole` starts with `data`'s bytes:
        memchr finds in it that a block holds no quote or no CR (most files), sparing
        numpy a scan of the block for each."""
        a = np.frombuffer(data, dtype=np.uint8)
        n = a.size
        quoted = whole.find(b'"', 0, n) >= 0
        quotes = np.flatnonzero(a == _QUOTE) if quoted else np.empty(0, dtype=np.intp)
        if quotes.size:
            quotes = self._structural(a, quotes, after)
        delims = np.flatnonzero(a == self.delimiter)
        breaks = np.flatnonzero(a == self.newline)
        if self.newline == _LF and whole.find(b"\r", 0, n) >= 0:
            crs = np.flatnonzero(a == _CR)
            if crs.size:
                following = a[np.minimum(crs + 1, n - 1)]
                following[crs == n - 1] = after
                if (following != _LF).any():
                    self.shape.sure = False  # the C parser ends a record at a lone CR
        if quotes.size or self.parity:
            # (a block with no quote that starts inside a quoted value is inside it all)
            delims = delims[((np.searchsorted(quotes, delims) + self.parity) & 1) == 0]
            breaks = breaks[((np.searchsorted(quotes, breaks) + self.parity) & 1) == 0]
        self.parity = (self.parity + quotes.size) & 1
        self.prev = int(a[-1])
        if breaks.size:
            at = np.searchsorted(delims, breaks)
            cells = np.diff(at, prepend=0) + 1
            cells[0] += self.cells - 1
            ends = breaks.astype(np.int64) + self.offset
            short = np.flatnonzero(cells < self.width)
            if short.size:
                self._records.append((short + self.record).astype(np.int64))
                self._cells.append(cells[short].astype(np.int32))
                starts = np.concatenate(([self.start], ends[:-1] + 1))
                self._starts.append(starts[short])
                self._ends.append(ends[short])
            self.shape.widest = max(self.shape.widest, int(cells.max()))
            while 0 <= self.mark - self.record < breaks.size:
                self.shape.marks.append(int(ends[self.mark - self.record]) + 1)
                self.mark += self.every
            self.start = int(ends[-1]) + 1
            self.record += int(breaks.size)
            self.cells = 1 + int(delims.size - at[-1])
            start = int(breaks[-1]) + 1
            self.tail = bytearray()
            self.tail_whole = True
        else:
            self.cells += int(delims.size)
            start = 0
        if self.tail_whole:
            if len(self.tail) + n - start <= MAX_TAIL_BYTES:
                self.tail += data[start:]
            else:
                self.tail, self.tail_whole = bytearray(), False
        self.ended = bool(breaks.size) and int(breaks[-1]) == n - 1
        self.offset += n

    def _structural(
        self, a: npt.NDArray[np.uint8], quotes: npt.NDArray[np.intp], after: int
    ) -> npt.NDArray[np.intp]:
        """The quotes that open or close a quoted field; marks the shape unsure where
        quoting breaks the well-formed rules the count relies on."""
        n = a.size
        before = a[np.maximum(quotes - 1, 0)]
        before[quotes == 0] = self.prev
        following = a[np.minimum(quotes + 1, n - 1)]
        following[quotes == n - 1] = after
        toggles = self.boundary[before] | self.boundary[following]
        # Inside or outside quotes at each quote, counting the toggles before it.
        state = (np.cumsum(toggles) - toggles + self.parity) & 1
        opening = toggles & (state == 0)
        closing = toggles & (state == 1)
        bad = (
            (opening & ~self.boundary[before])  # a quote in mid-field: a literal to the parser
            | (closing & ~self.boundary[following])  # closed in mid-field
            | (~toggles & (state == 1))  # a lone quote inside a quoted field
        )
        if bad.any():
            self.shape.sure = False
        return quotes[toggles]
