"""Dates and times of cells: formats, zones, a date column parsed at once, and their messages."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from operator import attrgetter
from zoneinfo import ZoneInfo

from importer._errors import ConfigError
from importer.intake._reader import excel_serial_to_iso


class Readings(dict[str, "datetime | None"]):
    """`DateColumn.read`'s answer: each distinct non-empty cell of `texts` -> its reading
    (so a proof can tell that every cell of that very list has one, without a set)."""

    texts: list[str] | None = None


class DateColumn:
    """How one date column of a file is read: one way for the whole column.

    ISO 8601 cells are read as such. The other cells are read with one *family* of the
    formats: formats with the same day/month/year order (`%m/%d/%Y` and `%m/%d/%Y %I:%M
    %p` are one family; `%d.%m.%Y` another), each cell with the family's first format
    that reads it. The family is the first that reads every non-empty cell; when none
    does, the one reading most (its unreadable cells are `invalid_date`); when two read
    every cell but give different dates, the file is refused (ConfigError).

    Chunks: the choice is made from the first chunk that decides it and kept. Until then
    (say every cell so far is 01.01.2024 or ISO), the families that read every cell and
    agree stay candidates; a later chunk narrows them. A later chunk in which the
    remaining candidates disagree is refused like the first (`run` may have sent rows of
    earlier chunks by then: they were read identically by every candidate).
    """

    def __init__(
        self,
        file: str,
        label: str,
        formats: tuple[str, ...],
        tz: ZoneInfo | None,
        *,
        excel: bool,
        end_of_day: bool = False,
        unstated: str = "",
    ) -> None:
        self.file = file
        self.label = label
        #: None: the mapping states no zone, and a naive time stops the read (`unstated`
        #: says how the mapping left it: "" or "TODO")
        self.tz = tz
        self.unstated = unstated
        #: a date-only cell means the end of its day (a period's end), else its start
        self.end_of_day = end_of_day
        #: whether a naive time of day was read in `tz` (UTC, for an older ledger)
        self.read_naive = False
        self.excel = excel
        self.families = date_families(formats)
        self.candidates = list(range(len(self.families)))
        self.decided: int | None = 0 if len(self.families) <= 1 else None

    def read(self, texts: list[str], rows: Callable[[int], int] | None = None) -> Readings:
        """Each distinct non-empty text of a chunk -> its date-time (None: unreadable).

        A cell without an offset is read in the zone; with no zone stated, one holding a
        time of day stops the read (ConfigError naming the column and, through `rows`
        (position in `texts` -> row number), a row). A date alone is read in the zone,
        or UTC: the start of its day, or its end for a period's end."""
        timed = _ISO_TIME.search
        distinct = set(texts)
        distinct.discard("")
        try:
            # Every distinct cell ISO 8601 (most columns): read in C, no loop in Python.
            values = list(map(datetime.fromisoformat, distinct))
        except ValueError:
            found = Readings(self._read_each(distinct, texts, rows))
        else:
            found = Readings(zip(distinct, values, strict=True))
            if None in map(_TZINFO, values):
                for text, value in zip(distinct, values, strict=True):
                    if value.tzinfo is None:
                        found[text] = self._local(value, bool(timed(text)), text, texts, rows)
        found.texts = texts
        return found

    def _read_each(
        self, distinct: set[str], texts: list[str], rows: Callable[[int], int] | None
    ) -> dict[str, datetime | None]:
        """`read`, cell by cell: where some distinct cell is not ISO 8601 (and what `read`
        is tested against)."""
        parse = datetime.fromisoformat
        timed = _ISO_TIME.search
        out: dict[str, datetime | None] = {}
        rest: list[str] = []
        for text in distinct:
            if not text:
                continue
            try:
                value = parse(text)
            except ValueError:
                rest.append(text)
                continue
            if value.tzinfo is None:
                value = self._local(value, bool(timed(text)), text, texts, rows)
            out[text] = value
        if not rest:
            return out
        if self.decided is None:
            self._decide(rest)
        index = self.reading()
        family = self.families[index] if self.families else ()
        for text in rest:
            read = self._parse(family, text)
            if read is not None and (read.tzinfo is _LOCAL_TIME or read.tzinfo is _LOCAL_DATE):
                read = self._local(read, read.tzinfo is _LOCAL_TIME, text, texts, rows)
            out[text] = read
        return out

    def _local(
        self,
        value: datetime,
        timed: bool,
        text: str,
        texts: list[str],
        rows: Callable[[int], int] | None,
    ) -> datetime:
        """A naive reading in the column's zone (see `read`). Init's `timezone = "TODO"`
        stops a date alone too: the mapping is unfinished until a person states the zone."""
        todo = self.tz is None and self.unstated == "TODO"
        if not timed and not todo:
            if self.end_of_day:
                value = value.replace(hour=23, minute=59, second=59, microsecond=999_000)
            return value.replace(tzinfo=self.tz or UTC)
        if self.tz is None:
            # The first such cell of the chunk, not the one this set of texts met first.
            pos = next(
                at for at, cell in enumerate(texts) if cell and self._naive(cell, dates=todo)
            )
            row = rows(pos) if rows is not None else None
            cell = texts[pos]
            message = naive_time_message(
                self.file, self.label, row, cell, self.unstated, timed=self._naive(cell)
            )
            raise ConfigError(message)
        self.read_naive = True
        return value.replace(tzinfo=self.tz)

    def reading(self) -> int:
        """Which family read the cells so far (the decided one, or the first candidate:
        the candidates left read every cell so far alike). With the text, it fixes the
        date a cell is read as (ISO 8601 cells read alike under every family)."""
        return self.decided if self.decided is not None else self.candidates[0]

    def _decide(self, texts: list[str]) -> None:
        results = {i: [self._parse(self.families[i], t) for t in texts] for i in self.candidates}
        full = [i for i in self.candidates if all(v is not None for v in results[i])]
        if len(full) >= 2:
            first = full[0]
            for other in full[1:]:
                if results[other] != results[first]:
                    raise ConfigError(
                        f"{self.file}: {self.label} reads as both '{self.families[first][0]}' "
                        f"and '{self.families[other][0]}', which give different dates (day and "
                        "month swapped); keep only the right one in date_formats"
                    )
            self.candidates = full
            return
        if len(full) == 1:
            self.decided = full[0]
            return
        counts = {i: sum(v is not None for v in results[i]) for i in self.candidates}
        self.decided = max(self.candidates, key=lambda i: (counts[i], -i))

    def _naive(self, text: str, *, dates: bool = False) -> bool:
        """Whether a cell reads as a time of day (or, with `dates`, a date alone) without
        an offset (the error path)."""
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            family = self.families[self.reading()] if self.families else ()
            read = self._parse(family, text)
            local = (_LOCAL_TIME, _LOCAL_DATE) if dates else (_LOCAL_TIME,)
            return read is not None and read.tzinfo in local
        return value.tzinfo is None and (dates or bool(_ISO_TIME.search(text)))

    @lru_cache(maxsize=65536)  # noqa: B019 - one DateColumn per column of a run
    def _parse(self, family: tuple[str, ...], text: str) -> datetime | None:
        """The cell read by the family; a naive reading marked _LOCAL_TIME or
        _LOCAL_DATE (a time of day or not), for `read` to place in the zone."""
        for fmt in family:
            try:
                value = datetime.strptime(text, fmt)
            except ValueError:
                continue
            return _marked(value, bool(_FORMAT_TIME.search(fmt)))
        if self.excel:
            iso = excel_serial_to_iso(text)
            if iso:
                return _marked(datetime.fromisoformat(iso), "T" in iso)
        return None


#: A naive reading's mark, until `DateColumn.read` places it in the zone.
_LOCAL_TIME = timezone(timedelta(0), "local time of day")


_LOCAL_DATE = timezone(timedelta(0), "local date")


#: A date-time's zone (None: naive).
_TZINFO = attrgetter("tzinfo")


#: An ISO 8601 cell with a time of day (a date alone has no `T`, space or colon).
_ISO_TIME = re.compile(r"[Tt :]")


#: A strptime format reading a time of day.
_FORMAT_TIME = re.compile(r"%[HIMSpfXcTRr]")


def _marked(value: datetime, timed: bool) -> datetime:
    if value.tzinfo is not None:
        return value
    return value.replace(tzinfo=_LOCAL_TIME if timed else _LOCAL_DATE)


def cell_shape(text: str) -> str:
    """A cell's shape without its value (digits as 9, letters as A or a): what a
    message may show of a date cell, which can be PHI."""
    return re.sub(r"[a-z]", "a", re.sub(r"[A-Z]", "A", re.sub(r"\d", "9", text)))


def naive_time_message(
    file: str, label: str, row: int | None, text: str, unstated: str, *, timed: bool = True
) -> str:
    """Why a naive date-time stops a read: the column, a row, the cell's shape, the key.
    `timed` false: the cell is a date alone (only `timezone = "TODO"` stops those)."""
    where = f"row {row}, " if row is not None else ""
    said = (
        'and the mapping\'s [source] timezone is still "TODO"'
        if unstated == "TODO"
        else "and the mapping states no time zone"
    )
    if not timed:
        return (
            f"{file}: {label} holds dates without a time of day ({where}a cell shaped "
            f"'{cell_shape(text)}') {said}; set [source] timezone to the zone they were "
            "written in (a date alone is read as its day there), e.g. "
            'timezone = "America/Chicago" (timezone = "UTC" if they are UTC)'
        )
    return (
        f"{file}: {label} holds date-times without a UTC offset ({where}a cell shaped "
        f"'{cell_shape(text)}') {said}; set [source] timezone to the zone they were "
        'written in, e.g. timezone = "America/Chicago" (timezone = "UTC" if they are UTC)'
    )


_DATE_PARTS = {"d": "d", "m": "m", "b": "m", "B": "m", "Y": "y", "y": "y", "j": "d"}


def date_families(formats: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Formats grouped by the order of their day, month and year, in first-seen order."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for fmt in formats:
        order = tuple(
            dict.fromkeys(
                _DATE_PARTS[c] for c in re.findall(r"%([a-zA-Z])", fmt) if c in _DATE_PARTS
            )
        )
        groups.setdefault(order, []).append(fmt)
    return [tuple(g) for g in groups.values()]
