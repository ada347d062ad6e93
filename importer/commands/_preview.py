"""`preview`: the exact bodies `run` would send for a few rows, or their errors; reads only."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from importer._rows import Row
from importer.intake._mapping import Mapping, open_tables
from importer.intake._mapping_v2 import Condition, toml_key
from importer.intake._normalize import Normalizer
from importer.intake._reader import Table


@dataclass
class Preview:
    """The rows shown (a row making several consents gives several)."""

    rows: list[Row]
    #: why the asked-for row shows nothing, per file: past the end, blank, filtered out,
    #: or making no consent
    missing: list[str]

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
            missing.append(why_not_shown(table, mapping, row))
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
    yield from preview.missing


def why_not_shown(table: Table, mapping: Mapping, number: int) -> str:
    """Why spreadsheet row `number` of `table` gives no consent, in one line naming the
    filter or the `when`s (from the mapping), never a cell's value."""
    label = table.label
    found: dict[str, str] | None = None
    count = last = 0
    for chunk in table.chunks():
        count += len(chunk)
        if len(chunk):
            last = int(chunk.index[-1])
        if found is None and number in chunk.index:
            found = {str(h): str(v) for h, v in chunk.loc[number].items()}
    if found is None:
        if number < table.header_row:
            return f"{label}: row {number} is above the header (row {table.header_row})"
        if number == table.header_row:
            return f"{label}: row {number} is the header row, not a data row"
        if number < last:
            return f"{label}: row {number} is blank"
        return (
            f"{label}: row {number}: no such row (the file has {count} rows, the last is "
            f"row {last})"
        )
    headers = mapping.header_map(table.columns, label)
    nulls = mapping.null_values

    def holds(condition: Condition) -> bool:
        cell = found[headers[condition.column]].strip()
        return condition.holds(["" if cell.casefold() in nulls else cell])[0]

    for index, condition in enumerate(mapping.filters, start=1):
        if not holds(condition):
            return (
                f"{label}: row {number} is skipped: {toml_key('filter', index)} does not hold "
                f"({describe(condition)})"
            )
    whens = [
        f"{toml_key('consents', index)}: {describe(consent.when)}"
        for index, consent in enumerate(mapping.consents, start=1)
        if consent.when is not None and not holds(consent.when)
    ]
    if mapping.consents and len(whens) == len(mapping.consents):
        return (
            f"{label}: row {number} makes no consent: no [[consents]] `when` holds "
            f"({'; '.join(whens)})"
        )
    return f"{label}: row {number} makes no consent"  # pragma: no cover - every row makes one


def describe(condition: Condition) -> str:
    """A condition as the mapping writes it (its values are the mapping's, folded)."""
    test = condition.test
    if test == "not_empty":
        return f"column '{condition.column}' not_empty"
    if test == "matches":
        assert condition.pattern is not None
        return f"column '{condition.column}' matches \"{condition.pattern.pattern}\""
    values = ", ".join(f'"{v}"' for v in sorted(condition.values))
    return f"column '{condition.column}' {test} [{values}]"
