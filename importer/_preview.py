"""`preview`: the exact bodies `run` would send for a few rows, or their errors; reads only."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from importer._mapping import Mapping, open_tables
from importer._normalize import Normalizer, Row


@dataclass
class Preview:
    """The rows shown (a row making several consents gives several)."""

    rows: list[Row]
    missing: list[str]  # files in which the asked-for row does not exist or was skipped

    @property
    def invalid(self) -> bool:
        return any(not row.valid for row in self.rows)


def preview_rows(
    inputs: Sequence[str | Path], mapping: Mapping, *, rows: int = 5, row: int | None = None
) -> Preview:
    """The first `rows` source rows of every input, or spreadsheet row `row` of each."""
    tables = open_tables(inputs, mapping)
    normalizer = Normalizer(mapping)
    shown: list[Row] = []
    missing: list[str] = []
    for table in tables:
        made = normalizer.rows(table)
        try:
            found = list(_take(made, rows, row))
        finally:
            made.close()  # type: ignore[attr-defined]  # a generator: closes the file now
        if row is not None and not found:
            missing.append(table.label)
        shown += found
    return Preview(shown, missing)


def _take(made: Iterator[Row], count: int, number: int | None) -> Iterator[Row]:
    """The consents of the first `count` source rows, or of row `number`."""
    seen: set[int] = set()
    for row in made:
        if number is not None:
            if row.row == number:
                yield row
            elif row.row > number:
                return
            continue
        if row.row not in seen:
            if len(seen) == count:
                return
            seen.add(row.row)
        yield row


def render(preview: Preview) -> Iterator[str]:
    """The preview as text: per consent its place, then its JSON body or its errors."""
    for row in preview.rows:
        if row.valid:
            yield f"{row.where}  valid; run would send:"
            yield json.dumps(row.body(), indent=2, ensure_ascii=False)
        else:
            yield f"{row.where}  invalid:"
            for error in row.errors:
                yield f"  {error.message}"
    for name in preview.missing:
        yield f"{name}: no such row, or the mapping's filters skip it (or it makes no consent)"
