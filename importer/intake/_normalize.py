"""Turn chunks of raw cells into validated ClinikAPI consent bodies or row errors.

Each field's cells are prepared a column at a time (trimmed, translated, defaulted, dates
parsed once per distinct value); the per-row part only assembles a dict and hands it to
the pydantic model. The JSON body and its hash are made only when something asks for
them, so a dry run of a keyed file never serialises a row.

`Normalizer.rows` gives every row with its model (what a run sends). `Normalizer.check`
gives only verdicts (what `validate` needs): rows that `fastcheck` proves valid a column
at a time skip the body and the model, which makes it several times faster.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import ValidationError

from importer._keys import (
    CELLS_PREFIX,
    NATURAL_PREFIX,
    SOURCE_PREFIX,
    KeyTally,
    namespaced,
    natural_key,
    source_key,
    split_key,
)
from importer._rows import Row, RowError, Unchanged, _digest, sheet_label
from importer.intake._cells import (
    Consents,
    UnchangedCheck,
    _as_text,
    _cells_digest_key,
    _gc_paused,
    _identity,
    _identity_failed,
    _mark_unmapped,
    _rule_text,
    _translate_codes,
    _whole,
    key_digests,
    split_codes,
)
from importer.intake._dates import _ISO_TIME, DateColumn
from importer.intake._fastcheck import proven_valid
from importer.intake._fhir import RESOURCE_COLUMN, FhirTable
from importer.intake._fhir_body import FhirConsents, MappedConsent
from importer.intake._key_index import KeyIndex
from importer.intake._mapping import DATE_FIELDS, Mapping
from importer.intake._mapping_v2 import (
    Spec,
)
from importer.intake._models import ConsentIn, field_errors
from importer.intake._reader import EXCEL_SUFFIXES, RowDefects, Table
from importer.intake._v1rows import _ConsentPlan, _v1_body, _v1_consents
from importer.intake._v2rows import _V2Rows

#: The fields a row's identity is made of, without a key column (importer._keys).
_IDENTITY = ("patientId", "scope", "category", "dateTime")
#: How a natural key's collision names its field.
NATURAL_KEY_FIELD = "/".join(("patientId", "scope", "category", "dateTime"))
#: API field paths (as the models report them) -> the row field a user filled in.
_API_TO_ROW_FIELD = {
    "provision.type": "provisionType",
    "provision.period.start": "provisionStart",
    "provision.period.end": "provisionEnd",
    "provision.period": "provisionEnd",
    "provision.purpose": "purpose",
    "verification.verified": "verified",
    "verification.verifiedWith": "verifiedWith",
    "verification.verificationDate": "verificationDate",
}
#: Row fields whose cell may hold several codes, split on `;` or `|` (`split_codes`).
MULTI_VALUE_FIELDS = frozenset({"category", "purpose"})


#: Rows whose bodies a run builds at a time (models cost kilobytes a row; a chunk of
#: them was most of a run's memory).
_SLICE = 1_000


@dataclass(slots=True)
class Checked:
    """A chunk's verdict from `_FileNormalizer.check`: every row's source key and its
    digest, and the invalid rows by position in the chunk."""

    keys: list[str]
    digests: npt.NDArray[np.uint64]
    invalid: list[tuple[int, Row]]


@dataclass(slots=True)
class Batch:
    """One chunk's verdict for `validate`: how many rows, and the invalid ones in order."""

    file: str
    rows: int
    invalid: list[Row]
    skipped: int = 0  # rows a [[filter]] left out, or for which no [[consents]] `when` holds


class Normalizer:
    """Maps and validates rows of any number of files, remembering source keys across them."""

    def __init__(self, mapping: Mapping, *, content_keys: bool = False) -> None:
        self.mapping = mapping
        #: key rows without a key column by a hash of their whole body, as ledgers made
        #: before natural keys do (see importer._keys)
        self.content_keys = content_keys
        #: key them by natural identity, as ledgers made before source-cell keys do
        self.natural_keys = False
        #: read naive date-times as UTC when the mapping states no zone, as ledgers
        #: made before zones were stated did (importer.ledger._ledger: naive_times)
        self.naive_utc = False
        self._file_rows: list[_FileNormalizer] = []
        self.unkeyed_files = 0
        self._keys = KeyIndex()
        self._files: list[str] = []
        #: Rows skipped so far: filtered out, or making no consent.
        self.skipped = 0
        #: Rows read so far from the files (before any [[filter]]).
        self.rows_read = 0
        #: Invalid rows read so far without a stable key (read by --revoke-missing).
        self.tally = KeyTally()
        #: a FHIR resource without an id was keyed by its natural identity (older ledgers)
        self._fhir_natural = False
        #: FHIR input's ids sent, per reference path (FhirMapper.ids): validate's warning
        self.fhir_ids: dict[str, Counter[str]] = {}
        #: CSV or Excel files read without a key column
        self._unkeyed_tables = 0
        #: given each file's normalizer, what counts its chunks' cells (validate's values
        #: profile, importer.reports._values), when one is wanted
        self.on_file: Callable[[_FileNormalizer], Callable[[dict[str, list[Any]]], None]] | None
        self.on_file = None

    @property
    def key_kind(self) -> str:
        """Which source key the files read so far use: "column", "natural" or
        "content hash"."""
        if not self.unkeyed_files:
            return "column"
        if self.content_keys and self._unkeyed_tables:
            return "content hash"
        # A FHIR resource without an id is keyed by its elements as written, or by its
        # mapped fields in a ledger made before source keys (importer.intake._fhir_body).
        return "natural" if self.natural_keys or self._fhir_natural else "source cells"

    def read_naive_as_utc(self) -> bool:
        """Whether naive times of day were read as UTC, no zone stated (older ledgers)."""
        return any(_read_naive_as_utc(f) for f in self._file_rows)

    def rows(self, table: Table) -> Iterator[Row]:
        """Every row of one table, in order, with its model when valid (what a run needs).

        A row making several consents ([[consents]]) gives one Row per consent.
        """
        for item in self.rows_or_unchanged(table, None):
            assert isinstance(item, Row)
            yield item

    def rows_or_unchanged(
        self, table: Table, unchanged: UnchangedCheck | None
    ) -> Iterator[Row | Unchanged]:
        """Every row of one table, with its model when valid; with `unchanged`, rows it
        confirms come as counts instead (`Unchanged`), their bodies never built.

        `unchanged(keys, digests)` is asked once a chunk, for the rows `fastcheck` proves
        valid, whether the ledger holds each key as done with that cells digest. The
        other rows are built `_SLICE` at a time, so a run holds a slice of models, not a
        chunk of them. A version-2 mapping's consents go the same way (a row's consents
        share its digest; each has its own key).
        """
        if isinstance(table, FhirTable):  # resources, not cells
            for rows, _ in self._fhir_rows(table):
                yield from rows
            return
        file_rows = self.file_normalizer(table)
        file_index = self._add_file(table.name)
        for chunk in table.chunks():
            self.rows_read += len(chunk)
            chunk, skipped = file_rows.prefilter(chunk)
            self.skipped += skipped
            with _gc_paused():
                if file_rows.v2:
                    consents = file_rows.v2_rows.consents_of(chunk, unchanged)
                    self.skipped += file_rows.take_skipped()
                else:
                    consents = _v1_consents(file_rows, chunk, unchanged)
            yield from self._sliced(file_rows.file, file_index, consents)

    def _sliced(self, file: str, file_index: int, chunk: Consents) -> Iterator[Row | Unchanged]:
        """A chunk's consents, `_SLICE` rows at a time: unchanged ones counted, the rest
        built; a repeat of an earlier key is built (to report it), even if unchanged."""
        for start in range(0, chunk.size, _SLICE):
            lo, hi = np.searchsorted(chunk.pos, [start, start + _SLICE]).tolist()
            if lo == hi:
                continue
            with _gc_paused():
                skipped = chunk.skip[lo:hi].tolist()
                built = {i: chunk.build(i) for i, same in enumerate(skipped, lo) if not same}
                keys = [key or "" for key in chunk.keys[lo:hi]]
                for i, row in built.items():
                    keys[i - lo] = row.source_key
                where = file_index << 40 | chunk.numbers[chunk.pos[lo:hi]]
                firsts = self._keys.add(key_digests(keys), where)
                for at in np.flatnonzero(firsts >= 0).tolist():
                    i = lo + at
                    if i not in built:
                        built[i] = chunk.build(i)
                        skipped[at] = False
                    self._duplicate(built[i], int(firsts[at]))
            same = skipped.count(True)
            if same:
                yield Unchanged(file, same)
            yield from (built[i] for i in sorted(built))

    def in_input(self, keys: list[str]) -> npt.NDArray[np.bool_]:
        """For each key, whether the input read so far held it (by its 64-bit digest)."""
        return self._keys.contains(key_digests(keys))

    def check(self, table: Table) -> Iterator[Batch]:
        """The verdict on every row of one table, a chunk at a time, without bodies.

        What `validate` needs: valid rows are only counted, invalid ones come with their
        errors.
        """
        if isinstance(table, FhirTable):  # resources, not cells
            for rows, skipped in self._fhir_rows(table):
                yield Batch(table.name, len(rows), [r for r in rows if not r.valid], skipped)
            return
        file_rows = self.file_normalizer(table)
        file_index = self._add_file(table.name)
        for chunk in table.chunks():
            self.rows_read += len(chunk)
            chunk, skipped = file_rows.prefilter(chunk)
            if file_rows.v2:
                yield self._check_v2(file_rows, file_index, chunk, skipped)
                continue
            checked = file_rows.check(chunk)
            self.skipped += skipped
            where = file_index << 40 | chunk.index.to_numpy(dtype=np.int64)
            firsts = self._keys.add(checked.digests, where)
            invalid = dict(checked.invalid)
            for pos in np.flatnonzero(firsts >= 0).tolist():
                row = invalid.get(pos)
                if row is None:
                    row = invalid[pos] = file_rows.plain_row(chunk, pos, checked.keys[pos])
                self._duplicate(row, int(firsts[pos]))
            rows = [invalid[pos] for pos in sorted(invalid)]
            batch = Batch(table.name, len(chunk), rows, skipped)
            # Nothing of this chunk held while the next one is read (its cells, keys and
            # digests: about 20 MB at 50,000 rows).
            del chunk, checked, invalid, where, firsts, rows
            yield batch

    def _check_v2(
        self, file_rows: _FileNormalizer, file_index: int, chunk: pd.DataFrame, skipped: int
    ) -> Batch:
        """A chunk's verdict through a version-2 mapping: consents proven valid column-wise
        are only counted; the rest are built and checked, which names their errors."""
        keys, places, invalid = file_rows.v2_rows.check(chunk)
        skipped += file_rows.take_skipped()
        self.skipped += skipped
        where = file_index << 40 | np.array([number for number, _ in places], dtype=np.int64)
        firsts = self._keys.add(key_digests(keys), where)
        for index in np.flatnonzero(firsts >= 0).tolist():
            row = invalid.get(index)
            if row is None:
                pos, consent = places[index][1], file_rows.v2_rows.consent_at(index)
                row = invalid[index] = file_rows.plain_row(chunk, pos, keys[index])
                row.consent = consent
            self._duplicate(row, int(firsts[index]))
        # Reports list a row's consents together, in row order.
        order = sorted(invalid, key=lambda i: (places[i][1], i))
        return Batch(file_rows.file, len(keys), [invalid[i] for i in order], skipped)

    def _fhir_rows(self, table: FhirTable) -> Iterator[tuple[list[Row], int]]:
        """A FHIR file's Consents as rows (importer.intake._fhir_body maps them), `_SLICE` at a
        time, each slice with the resources of other types it skipped."""
        file_index = self._add_file(table.name)
        natural = self.natural_keys or self.content_keys  # ledgers made before source keys
        consents = FhirConsents(self.mapping, table, self.tally, natural=natural)
        for mapped in consents.slices(_SLICE):
            skipped, self.rows_read = consents.skipped, self.rows_read + consents.read
            self.skipped += skipped
            consents.read = consents.skipped = 0
            keys: list[str | None] = [namespaced(self.mapping.system, m.key) for m in mapped]
            size = len(mapped)
            chunk = Consents(
                size,
                np.array([m.row for m in mapped], dtype=np.int64),
                np.arange(size, dtype=np.int64),
                keys,
                np.zeros(size, dtype=bool),
                partial(_fhir_row, table.name, mapped, self.mapping.system),
            )
            made = self._sliced(table.name, file_index, chunk)
            yield [row for row in made if isinstance(row, Row)], skipped
        self.unkeyed_files += consents.unkeyed
        for path, seen in consents.mapper.ids.items():
            self.fhir_ids.setdefault(path, Counter()).update(seen)
        self._fhir_natural = self._fhir_natural or (consents.unkeyed and natural)

    def _add_file(self, name: str) -> int:
        self._files.append(name)
        return len(self._files) - 1

    def file_normalizer(self, table: Table) -> _FileNormalizer:
        columns = self.mapping.resolve(table.columns, table.label)
        file_rows = _FileNormalizer(
            self.mapping,
            columns,
            table.name,
            excel=table.path.suffix.lower() in EXCEL_SUFFIXES,
            headers=table.columns,
            content_keys=self.content_keys,
            natural_keys=self.natural_keys,
            tally=self.tally,
            sheet=table.sheet or "",
            naive_utc=self.naive_utc,
        )
        self._file_rows.append(file_rows)
        self.unkeyed_files += not file_rows.keyed
        self._unkeyed_tables += not file_rows.keyed
        file_rows.defects = table.defects
        if self.on_file is not None:
            file_rows.profile = self.on_file(file_rows)
        return file_rows

    def _duplicate(self, row: Row, first: int) -> None:
        """A repeat of an earlier row's source key: identical export rows would
        otherwise be sent twice."""
        file, number = self._files[first >> 40], first & ((1 << 40) - 1)
        where = f"row {number}" if file == row.file else f"{file} row {number}"
        fhir = row.headers == (RESOURCE_COLUMN,)
        if split_key(row.source_key)[1].startswith(SOURCE_PREFIX) and fhir:
            name, value = NATURAL_KEY_FIELD, ""
            message = (
                f"{name}: same patient reference, scope, category codes and dateTime as "
                f"{where} (the identity of a resource without an id); give the resources "
                "ids to import both"
            )
        elif split_key(row.source_key)[1].startswith(SOURCE_PREFIX):
            name, value = NATURAL_KEY_FIELD, ""
            message = (
                f"{name}: same patient, scope, category and date-time cells as {where} (the "
                "row's identity without a key column); give the file a key column "
                "([source] key) to import both"
            )
        elif split_key(row.source_key)[1].startswith(NATURAL_PREFIX):
            # No key column: the two rows are one consent as far as the ledger can tell.
            name, value = NATURAL_KEY_FIELD, ""
            message = (
                f"{name}: same patient, scope, categories and date-time as {where} (the "
                "natural key); give the file a key column ([source] key) to import both"
            )
        else:
            name, value = "sourceKey", row.source_key
            message = f"sourceKey: same source key as {where}; a row is imported once"
        row.errors.append(
            RowError(
                row.file,
                row.row,
                name,
                "duplicate_row",
                f"{message} (duplicate_row)",
                value=value,
                consent=row.consent,
                sheet=row.sheet,
            )
        )
        row.model = None


def _fhir_row(file: str, mapped: list[MappedConsent], system: str | None, index: int) -> Row:
    """The `Row` of a mapped FHIR Consent: its resource is its one cell."""
    consent = mapped[index]
    row = Row(file, consent.row, namespaced(system, consent.key), (RESOURCE_COLUMN,))
    row.values, row.model = (consent.text,), consent.model
    row.errors = [
        RowError(file, consent.row, *error[:3], value=error[3]) for error in consent.errors
    ]
    return row


class _FileNormalizer:
    def __init__(
        self,
        mapping: Mapping,
        columns: dict[str, str],
        file: str,
        *,
        excel: bool,
        headers: list[str] | None = None,
        content_keys: bool = False,
        natural_keys: bool = False,
        tally: KeyTally | None = None,
        sheet: str = "",
        naive_utc: bool = False,
    ) -> None:
        self.mapping = mapping
        #: read naive date-times as UTC when the mapping states no zone (older ledgers)
        self.naive_utc = naive_utc
        #: counts the rows given a key made from their cells (importer._keys.CELLS_PREFIX)
        self.tally = tally or KeyTally()
        self.columns = columns
        self.file = file
        self.sheet, self.label = sheet, sheet_label(file, sheet)  # messages only, not ledger
        self.fields = sorted(set(columns) | set(mapping.defaults))
        self.keyed = bool(mapping.key) or "sourceKey" in columns
        self.headers = mapping.header_map(list(headers or columns.values()), self.label)
        self.key_headers = tuple(self.headers.get(c, c) for c in mapping.key)
        self.nulls = mapping.null_values
        self.system = mapping.system
        self.content_keys = content_keys
        self.v2 = mapping.builds_v2
        #: rows without a key column keyed by their identity cells (importer._keys)
        self.source_keyed = not self.keyed and not content_keys and not natural_keys
        self._excel = excel
        # One reading per date column (see DateColumn), decided as chunks come.
        self._date_columns: dict[str, DateColumn] = {}
        self._chunk_dates: dict[str, dict[str, datetime | None]] = {}
        self._skipped = 0
        self.v2_rows = _V2Rows(self, mapping)
        self._digest_key = _cells_digest_key(mapping, self.fields, excel=excel)
        #: rows the reader found cut short (`Table.defects`): invalid whatever their cells
        self.defects = RowDefects()
        self.numbers: pd.Index = pd.Index([], dtype="int64")  # the last `_prepare`d chunk's
        #: rows of the last chunk holding a value their [values] table lacks (None: none)
        self._unmapped_rows: npt.NDArray[np.bool_] | None = None
        self._unstable_rows: set[int] = set()
        #: counts each chunk's cells by header (validate's values profile), if asked
        self.profile: Callable[[dict[str, list[Any]]], None] | None = None

    def mapped(self, proven: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """`proven` without the rows of the last chunk holding an unmapped value."""
        return proven if self._unmapped_rows is None else proven & ~self._unmapped_rows

    def digest_key(self) -> str:
        """The cells digests' key for the chunk just read: the mapping's, with the way
        each date column reads its cells (a date cell enters the digest as its text)."""
        readings = sorted((name, column.reading()) for name, column in self._date_columns.items())
        text = f"{self._digest_key}{readings!r}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def parse_date(self, name: str, text: str) -> datetime | None:
        """A date cell of field `name` in the current chunk, read the column's one way."""
        dates = self._chunk_dates.get(name)
        return dates.get(text) if dates is not None else None

    def _date_column(
        self, name: str, label: str, formats: tuple[str, ...], *, end: bool = False
    ) -> DateColumn:
        column = self._date_columns.get(name)
        if column is None:
            column = self._date_columns[name] = _date_column(self, label, formats, end)
        return column

    def prefilter(self, chunk: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        """The chunk without the rows a [[filter]] leaves out, and how many those were."""
        if not self.mapping.filters or not len(chunk):
            return chunk, 0
        keep = np.ones(len(chunk), dtype=bool)
        for condition in self.mapping.filters:
            cells = self._cells(chunk[self.headers[condition.column]].tolist())
            keep &= np.array(condition.holds(cells), dtype=bool)
        if keep.all():
            return chunk, 0
        return chunk[keep], int((~keep).sum())

    def _constant_date(self, text: str, *, end: bool = False) -> datetime | None:
        """A date written in the mapping (value, default, map): ISO 8601."""
        return _mapping_date(self, text, end=end)

    def take_skipped(self) -> int:
        """Rows of the last chunks for which no [[consents]] `when` held; resets."""
        skipped, self._skipped = self._skipped, 0
        return skipped

    def _cells(self, values: list[Any]) -> list[str]:
        """Cells trimmed, with [source] null_values read as empty."""
        cells: list[str] = _stripped(values)  # the reader gives str cells
        nulls = self.nulls
        if nulls:
            # Folded once per distinct cell, not once per cell.
            hits = {c for c in set(cells) if c.casefold() in nulls}
            if hits:
                cells = ["" if c in hits else c for c in cells]
        return cells

    def normalize(self, chunk: pd.DataFrame) -> list[Row]:
        """Every row of the chunk, with its model when valid."""
        with _gc_paused():
            return self._normalize(chunk)

    def check(self, chunk: pd.DataFrame) -> Checked:
        """The chunk's verdict without bodies: rows proven valid column-wise are only
        counted; the rest take the full path, which names their errors."""
        with _gc_paused():
            if not self.keyed and self.content_keys:
                # Keyed by the body's hash (a ledger made before natural keys): bodies
                # are needed.
                rows = self._normalize(chunk)
                hashed = [row.source_key for row in rows]
                invalid = [(i, row) for i, row in enumerate(rows) if not row.valid]
                return Checked(hashed, key_digests(hashed), invalid)
            headers, raw, prepared, keys = self._prepare(chunk)
            if not self.keyed and not self.source_keyed:
                keys = self._natural_keys(prepared, len(chunk))
            proven = proven_valid(
                prepared,
                keys,
                parse_date=self.parse_date,
                crosswalk=self.mapping.crosswalk,
                read_dates=self._chunk_dates,
            )
            proven = self.mapped(proven)
            numbers = chunk.index.tolist()
            proven &= _whole(self.defects, numbers)
            if self.source_keyed:
                # (the unproven rows are counted by `_row`)
                for pos in np.flatnonzero(proven & _blank_identity(self, raw)).tolist():
                    self._unstable(int(numbers[pos]))
            names = list(prepared)
            checked: list[tuple[int, Row]] = []
            for pos in np.flatnonzero(~proven).tolist():
                values = tuple(column[pos] for column in raw.values())
                cells = {name: prepared[name][pos] for name in names}
                # An unproven row's natural key comes from its model, as in `normalize`.
                key = keys[pos] if self.keyed or self.source_keyed else None
                row = self._row(int(numbers[pos]), headers, values, cells, key)
                keys[pos] = row.source_key
                if not row.valid:
                    checked.append((pos, row))
            final = [key or "" for key in keys]
            return Checked(final, key_digests(final), checked)

    def plain_row(self, chunk: pd.DataFrame, pos: int, key: str) -> Row:
        """A row the check proved valid, rebuilt from its chunk (to report it after all)."""
        values = tuple(str(v) for v in chunk.iloc[pos].tolist())
        headers = tuple(str(c) for c in chunk.columns)
        return Row(self.file, int(chunk.index[pos]), key, headers, values, sheet=self.sheet)

    def _prepare(
        self, chunk: pd.DataFrame
    ) -> tuple[tuple[str, ...], dict[str, list[Any]], dict[str, list[str]], list[str | None]]:
        """Headers, raw cells by header, prepared cells by row field, and source keys."""
        headers = tuple(str(c) for c in chunk.columns)
        self.numbers = chunk.index
        raw = {h: chunk[h].to_numpy(dtype=object).tolist() for h in headers}
        self._unmapped_rows = None
        if self.profile is not None:
            self.profile(raw)
        prepared = {name: self._column(raw, name, len(chunk)) for name in self.fields}
        index = chunk.index
        self._chunk_dates = {
            name: self._date_column(
                name, self._label(name), self.mapping.date_formats, end=name == "provisionEnd"
            ).read(prepared[name], lambda pos: int(index[pos]))
            for name in DATE_FIELDS
            if name in prepared
        }
        return headers, raw, prepared, self._keys(raw, len(chunk))

    def _normalize(self, chunk: pd.DataFrame) -> list[Row]:
        if self.v2:
            return self.v2_rows.normalize(chunk)
        headers, raw, prepared, keys = self._prepare(chunk)
        names = list(prepared)
        numbers = chunk.index.tolist()
        value_rows = zip(*raw.values(), strict=True)
        field_rows = zip(*prepared.values(), strict=True)
        return [
            self._row(int(number), headers, values, dict(zip(names, cells, strict=True)), key)
            for number, values, cells, key in zip(
                numbers, value_rows, field_rows, keys, strict=True
            )
        ]

    def _column(self, raw: dict[str, list[Any]], name: str, size: int) -> list[str]:
        """One field's cells for the chunk: trimmed, translated, defaulted."""
        header = self.columns.get(name)
        values = self._cells(raw[header]) if header else [""] * size
        translations = self.mapping.values.get(name)
        if translations:
            table = {k: _as_text(v) for k, v in translations.items()}
            if name not in self.mapping.unmapped_keep:
                mask = _mark_unmapped(values, table, multi=name in MULTI_VALUE_FIELDS)
                if mask is not None:
                    seen = self._unmapped_rows
                    self._unmapped_rows = mask if seen is None else seen | mask
            if name in MULTI_VALUE_FIELDS:
                values = [_translate_codes(v, table) for v in values]
            else:
                values = [table.get(v.casefold(), v) for v in values]
        default = self.mapping.defaults.get(name)
        if default is not None:
            text = _as_text(default)
            values = [v or text for v in values]
        return values

    def _keys(self, raw: dict[str, list[Any]], size: int) -> list[str | None]:
        """The stable source key per row; None where the body's hash will serve."""
        keys: list[str | None]
        if self.mapping.key:
            parts = [self._cells(raw[c]) for c in self.key_headers]
            keys = [None if not all(p) else "|".join(p) for p in zip(*parts, strict=True)]
        elif (header := self.columns.get("sourceKey")) is not None:
            keys = [c or None for c in self._cells(raw[header])]
        elif self.source_keyed and not self.v2:
            keys = _source_keys(self, raw, size)
        else:
            return [None] * size
        if self.system is not None:
            keys = [None if k is None else namespaced(self.system, k) for k in keys]
        return keys

    def _natural_keys(self, prepared: dict[str, list[str]], size: int) -> list[str | None]:
        """Natural keys a column at a time, from the cells as the body would hold them
        (None where the patient or the date is unusable: such rows take the full path).
        For rows `proven_valid` passes, these equal the keys made from their models."""
        empty = [""] * size
        patients = prepared.get("patientId", empty)
        crosswalk = self.mapping.crosswalk
        if crosswalk is not None:
            patients = [crosswalk.get(p, "") for p in patients]
        keys: list[str | None] = []
        parse, system = self.parse_date, self.system
        for patient, scope, category, text in zip(
            patients,
            prepared.get("scope", empty),
            prepared.get("category", empty),
            prepared.get("dateTime", empty),
            strict=True,
        ):
            when = parse("dateTime", text) if text else None
            if not patient or (text and when is None):
                keys.append(None)
            else:
                keys.append(
                    namespaced(system, natural_key(patient, scope, split_codes(category), when))
                )
        return keys

    def _row(
        self,
        number: int,
        headers: tuple[str, ...],
        values: tuple[str, ...],
        cells: dict[str, str],
        key: str | None,
        v2: tuple[_ConsentPlan, int] | None = None,
    ) -> Row:
        consent = v2[0].key if v2 is not None else ""
        labels = v2[0].labels if v2 is not None else {}
        row = Row(self.file, number, key or "", headers, values, consent=consent, sheet=self.sheet)
        errors = row.errors

        def fail(name: str, code: str, rule: str) -> None:
            errors.append(
                RowError(
                    self.file,
                    number,
                    name,
                    code,
                    f"{self._label(name, labels)}: {rule} ({code})",
                    value=self._cell(row, name, labels),
                    consent=consent,
                    sheet=self.sheet,
                )
            )

        body = _v1_body(cells, fail, self.parse_date, self.mapping.crosswalk)
        if v2 is not None:
            body = v2[0].body(body, v2[1], fail)
        try:
            model = ConsentIn.model_validate(body)
        except ValidationError as exc:
            already = {e.field for e in errors}
            for err in field_errors(exc):
                name = err.field
                if name not in self.v2_rows.labels:
                    name = _API_TO_ROW_FIELD.get(err.field, err.field)
                if name in already:
                    continue  # e.g. an unknown patient was dropped: not also "missing"
                message = err.message
                if name != err.field or name in self.columns or name in labels:
                    message = f"{self._label(name, labels)}: {_rule_text(err.message)}"
                errors.append(
                    RowError(
                        self.file,
                        number,
                        name,
                        err.code,
                        message,
                        value=self._cell(row, name, labels),
                        consent=consent,
                        sheet=self.sheet,
                    )
                )
        else:
            if not errors:
                row.model = model
        if key is None:
            if self.keyed:
                fail(
                    "sourceKey", "missing_required", "the source key is empty; every row needs one"
                )
            plan = v2[0] if v2 is not None else None
            row.source_key = namespaced(self.system, self._key_without_column(row, body, plan))
        if consent:
            # Each consent of the row has its own key, so reruns and patches go per consent.
            row.source_key += "#" + consent
        if self.source_keyed and (
            (errors and _identity_failed(row.source_key, errors))
            or number in self.defects
            or _row_blank_identity(self, row, v2[0] if v2 is not None else None)
        ):
            # Its identity cells hold a typo, are blank, or are cut off (short_row,
            # truncated_file): the row may be the one the ledger misses.
            self._unstable(number)
        if number in self.defects:
            _cut_short(row, self.defects[number])
        if errors:
            row.model = None
        return row

    def _unstable(self, number: int) -> None:
        """Count row `number` as having no stable key, once however often it is read
        (the check and the send both build it)."""
        if number not in self._unstable_rows:
            self._unstable_rows.add(number)
            self.tally.unstable += 1

    def _key_without_column(
        self, row: Row, body: dict[str, Any], plan: _ConsentPlan | None = None
    ) -> str:
        """A row's key when no key column gives one: its source-cell identity (natural
        identity or body hash, in older ledgers); the hash of its cells when nothing
        stable is left."""
        model = row.model if not row.errors else None
        if self.source_keyed and (found := _row_source_key(self, row, plan)) is not None:
            return found
        if not self.keyed and not self.source_keyed:
            # (a keyed row here has an empty key cell: nothing is stable)
            if model is not None and self.content_keys:
                return "sha256:" + row.body_hash[:32]
            if model is not None:
                when = model.date_time
                return natural_key(model.patient_id, model.scope.value, model.category, when)
            if not self.content_keys and (identity := _identity(body, row.errors)) is not None:
                # Invalid elsewhere (a typo in status, say): still the same consent, so
                # the ledger keeps its row rather than take it for missing.
                return natural_key(*identity)
        self._unstable(row.row)
        return CELLS_PREFIX + _digest(repr(row.values))

    def _cell(self, row: Row, name: str, labels: dict[str, Spec] | None = None) -> str:
        """The raw cell behind a field, for the HTML report's value column."""
        cells = row.cells
        if name == "sourceKey" and self.mapping.key:
            return "|".join(cells.get(c, "") for c in self.key_headers)
        header = self.columns.get(name)
        if labels and name in labels:
            spec = labels[name]
            header = self.headers.get(spec.columns[0]) if spec.columns else None
        return str(cells.get(header, "")) if header else ""

    def _label(self, name: str, labels: dict[str, Spec] | None = None) -> str:
        spec = labels.get(name) if labels else None
        if spec is not None:
            return f"{name} ({spec.describe()})" if spec.source != "value" else name
        header = self.columns.get(name)
        return f"{name} (column '{header}')" if header and header != name else name


def _zone(owner: _FileNormalizer) -> ZoneInfo | None:
    """The zone naive date-times are read in: the mapping's, UTC where an older
    ledger read them so, else None (they stop the read)."""
    if owner.mapping.timezone_stated:
        return owner.mapping.timezone
    return owner.mapping.timezone if owner.naive_utc else None


def _date_column(
    owner: _FileNormalizer, label: str, formats: tuple[str, ...], end: bool
) -> DateColumn:
    """How a date column of the file is read: in the zone stated (UTC for an older
    ledger's runs; None: naive times stop), a date-only period end at the day's end."""
    return DateColumn(
        owner.label,
        label,
        formats,
        _zone(owner),
        excel=owner._excel,
        end_of_day=end,
        unstated=owner.mapping.timezone_todo,
    )


def _mapping_date(owner: _FileNormalizer, text: str, *, end: bool) -> datetime | None:
    """A date written in the mapping, a naive one in the zone (see DateColumn)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is not None:
        return value
    column = DateColumn(
        str(owner.mapping.path or "mapping"),
        "a date-time written in the mapping",
        (),
        _zone(owner),
        excel=False,
        end_of_day=end,
        unstated=owner.mapping.timezone_todo,
    )
    return column._local(value, bool(_ISO_TIME.search(text)), text, [text], None)


def _read_naive_as_utc(owner: _FileNormalizer) -> bool:
    """Whether a naive time of day was read as UTC with no zone stated (an older
    ledger's rule)."""
    return not owner.mapping.timezone_stated and any(
        column.read_naive for column in owner._date_columns.values()
    )


def _identity_headers(
    owner: _FileNormalizer, plan: _ConsentPlan | None = None
) -> list[tuple[str, ...]]:
    """Per identity field (patientId, scope, category, dateTime), the file's headers
    whose cells feed it (none for a constant or a default)."""
    out: list[tuple[str, ...]] = []
    for name in _IDENTITY:
        spec = plan.labels.get(name) if plan is not None else None
        if spec is not None:
            out.append(tuple(owner.headers.get(c, c) for c in spec.headers))
        elif name in owner.columns and (plan is None or name not in plan.dropped):
            out.append((owner.columns[name],))
        else:
            out.append(())
    return out


def _source_keys(owner: _FileNormalizer, raw: dict[str, list[Any]], size: int) -> list[str | None]:
    """Source-cell keys a column at a time (None where the patient cell is empty:
    such rows take the full path, and a key made from all their cells)."""
    parts: list[list[str]] = []
    fed = _identity_headers(owner)
    for headers in fed:
        columns = [owner._cells(raw[h]) for h in headers]
        if not columns:
            parts.append([""] * size)
        elif len(columns) == 1:
            parts.append(columns[0])
        else:
            parts.append(["\x1f".join(cells) for cells in zip(*columns, strict=True)])
    system, needs_patient = owner.system, bool(fed[0])
    return [
        None
        if needs_patient and not patient
        else namespaced(system, source_key(patient, scope, category, when))
        for patient, scope, category, when in zip(*parts, strict=True)
    ]


def _blank_identity(owner: _FileNormalizer, raw: dict[str, list[Any]]) -> npt.NDArray[np.bool_]:
    """Per row, whether a cell feeding an identity field is blank: its key is not the
    one it had when the cell was filled, so it has no stable key (review finding 1)."""
    size = len(next(iter(raw.values()), []))
    blank = np.zeros(size, dtype=bool)
    for headers in _identity_headers(owner):
        for header in headers:
            blank |= np.array([not cell for cell in owner._cells(raw[header])], dtype=bool)
    return blank


def _row_blank_identity(owner: _FileNormalizer, row: Row, plan: _ConsentPlan | None) -> bool:
    """One row's `_blank_identity`, for a row built alone."""
    cells, nulls = row.cells, owner.nulls
    for headers in _identity_headers(owner, plan):
        for header in headers:
            text = str(cells.get(header, "")).strip()
            if not text or text.casefold() in nulls:
                return True
    return False


def _row_source_key(owner: _FileNormalizer, row: Row, plan: _ConsentPlan | None) -> str | None:
    """One row's source-cell key (see `_source_keys`), for a row built alone."""
    cells, nulls = row.cells, owner.nulls
    parts: list[str] = []
    fed = _identity_headers(owner, plan)
    for headers in fed:
        texts = [str(cells.get(h, "")).strip() for h in headers]
        parts.append("\x1f".join("" if t.casefold() in nulls else t for t in texts))
    if fed[0] and not parts[0]:
        return None
    return source_key(*parts)


def _cut_short(row: Row, defect: tuple[str, str]) -> None:
    """Make `row` invalid for the reader's `defect` (rule code, message), its only error:
    its last cells are missing, not empty, so what they would fail on says nothing."""
    code, message = defect
    row.errors[:] = [
        RowError(row.file, row.row, "row", code, message, consent=row.consent, sheet=row.sheet)
    ]


#: The ASCII characters `str.strip` removes (Python counts \x1c-\x1f as whitespace too).
_ASCII_SPACES = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


def _stripped(values: list[str]) -> list[str]:
    """Each cell stripped: a column of ASCII cells without any whitespace (ids, codes,
    dates: most of them) is found so in a few C-speed scans and only copied."""
    joined = "".join(values)
    if joined.isascii() and not any(space in joined for space in _ASCII_SPACES):
        return list(values)
    return list(map(str.strip, values))
