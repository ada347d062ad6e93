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

import dataclasses
import gc
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache, partial
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import ValidationError

from importer._errors import ConfigError
from importer._keys import (
    CELLS_PREFIX,
    NATURAL_FIELDS,
    NATURAL_PREFIX,
    SOURCE_PREFIX,
    KeyTally,
    namespaced,
    natural_key,
    source_key,
    split_key,
)
from importer.intake._fastcheck import proven_by_specs, proven_valid
from importer.intake._fhir import RESOURCE_COLUMN, FhirTable
from importer.intake._fhir_body import FhirConsents, MappedConsent
from importer.intake._mapping import DATE_FIELDS, FALSE_WORDS, TRUE_WORDS, Mapping
from importer.intake._mapping_v2 import (
    BOOL,
    DATE,
    UNMAPPED,
    V1_PATHS,
    Condition,
    Shape,
    Spec,
    Value,
    coding,
    evaluate,
    merge,
    overlaps,
    parse_path,
)
from importer.intake._mapping_v2 import split_codes as split_cell
from importer.intake._models import ConsentIdentity, ConsentIn, field_errors
from importer.intake._reader import (
    EXCEL_SUFFIXES,
    RowDefects,
    Table,
    excel_serial_to_iso,
    sheet_label,
)

#: The fields a row's identity is made of, without a key column (importer._keys).
_IDENTITY = ("patientId", "scope", "category", "dateTime")
#: Where an error's field name ends its first part ("category.0" -> "category").
_KEY_ROOT = re.compile(r"[.\[]")
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
#: Row fields copied into the body as they are.
_PLAIN_FIELDS = (
    "patientId",
    "scope",
    "status",
    "dateTime",
    "performerId",
    "organizationId",
    "policyUri",
    "policyRule",
    "sourceReferenceId",
)
_SPLIT = re.compile(r"[;|]")
#: Row fields whose cell may hold several codes, split on `;` or `|` (`split_codes`).
MULTI_VALUE_FIELDS = frozenset({"category", "purpose"})


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem with one row: where, which field, which rule.

    `value` is the offending cell, for the user's own HTML report only: it is PHI, so
    messages, logs and the JSON report never carry it.
    """

    file: str
    row: int
    field: str
    code: str
    message: str
    stage: str = "validate"
    value: str = dataclasses.field(default="", repr=False)  # no PHI in reprs
    consent: str = ""  # the [[consents]] key of a row making several consents
    #: the Excel sheet the row is on ("" for CSV): shown, never part of `file`, which is
    #: the source name the ledger records
    sheet: str = ""

    @property
    def where(self) -> str:
        """`file:row` (`book.xlsx[Consents]:12` on a sheet), `#key` added for one consent
        of a row making several."""
        return place(self.file, self.sheet, self.row, self.consent)


def place(file: str, sheet: str, row: int, consent: str = "") -> str:
    """Where a row is, as messages and reports show it: `file:row`, the sheet in brackets
    after an Excel file's name, `#key` after a `[[consents]]` row's number."""
    where = f"{sheet_label(file, sheet)}:{row}"
    return f"{where}#{consent}" if consent else where


def sheet_note(sheet: str, message: str) -> str:
    """A message as the CSV files we write give it (a CSV report, failed.csv): they have
    no location columns, so a row of an Excel sheet says its sheet first."""
    return f"sheet '{sheet}': {message}" if sheet else message


@dataclass(slots=True)
class Row:
    """One source row after mapping: a body ready to send, or the reasons it is not.

    `body_json` is the exact JSON the API receives; `body_hash` its SHA-256, which tells
    a rerun whether the row changed. `cells` are the row's own cells, by header.
    """

    file: str
    row: int
    # The cells, the key and the body are PHI: kept out of the repr, like RowError.value.
    source_key: str = field(repr=False)
    headers: tuple[str, ...] = ()
    values: tuple[str, ...] = field(default=(), repr=False)
    model: ConsentIn | None = field(default=None, repr=False)
    errors: list[RowError] = field(default_factory=list)
    _json: str | None = field(default=None, repr=False)
    _hash: str | None = None
    consent: str = ""  # the [[consents]] key, for a row making several consents
    sheet: str = ""  # the Excel sheet, for messages only (see RowError.sheet)
    #: a 64-bit digest of the row's prepared cells and the mapping (`cells_digests`):
    #: a rerun that finds it in the ledger knows the body is unchanged without making it
    cells_digest: int | None = None

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def cells(self) -> dict[str, str]:
        return dict(zip(self.headers, self.values, strict=True))

    @property
    def where(self) -> str:
        """`file:row` as messages show it (see `place`)."""
        return place(self.file, self.sheet, self.row, self.consent)

    @property
    def body_json(self) -> str:
        if self._json is None:
            self._json = (
                self.model.model_dump_json(by_alias=True, exclude_none=True) if self.model else ""
            )
        return self._json

    @property
    def body_hash(self) -> str:
        if self._hash is None:
            self._hash = hashlib.sha256(self.body_json.encode()).hexdigest() if self.model else ""
        return self._hash

    def body(self) -> dict[str, Any]:
        """The API body as a dict (only for valid rows)."""
        parsed: dict[str, Any] = json.loads(self.body_json)
        return parsed

    def field_hashes(self) -> dict[str, str]:
        """A short hash per top-level API field, to tell which fields changed."""
        return body_field_hashes(self.body())


def body_field_hashes(body: dict[str, Any]) -> dict[str, str]:
    """A short hash per top-level field of a parsed API body (`Row.field_hashes`; `verify`
    hashes the server's copy the same way to compare without keeping values)."""
    return {name: _digest(repr(value))[:12] for name, value in body.items()}


#: Rows whose bodies a run builds at a time (models cost kilobytes a row; a chunk of
#: them was most of a run's memory).
_SLICE = 1_000
#: Bump when a change of this module changes the body made from the same cells: every
#: stored cells digest then misses once, and the rerun compares bodies instead (and
#: when the digest itself is made differently: 2 = column-wise; 3 = a date-only period
#: end is the end of its day; 4 = `system|code` stays one coding in version 1's purpose
#: and category).
_BODY_RULES = "4"


@dataclass(frozen=True, slots=True)
class Unchanged:
    """A count of rows of `file` a rerun found unchanged in the ledger, without bodies."""

    file: str
    count: int


#: The rows of a chunk the ledger holds as done with the same cells digest: asked with
#: their source keys and cells digests, answers True for each such row.
UnchangedCheck = Callable[[list[str], npt.NDArray[np.int64]], npt.NDArray[np.bool_]]


@dataclass(slots=True)
class Checked:
    """A chunk's verdict from `_FileNormalizer.check`: every row's source key and its
    digest, and the invalid rows by position in the chunk."""

    keys: list[str]
    digests: npt.NDArray[np.uint64]
    invalid: list[tuple[int, Row]]


@dataclass(slots=True)
class Consents:
    """The consents a chunk makes, in row order (a row's in [[consents]] order): the
    position of each one's row in the chunk (ascending), its key when known without a
    body (None: only the body tells), whether the ledger holds it unchanged, and how to
    build its `Row`."""

    size: int  # rows in the chunk
    numbers: npt.NDArray[np.int64]  # the rows' numbers in the file
    pos: npt.NDArray[np.int64]
    keys: list[str | None]
    skip: npt.NDArray[np.bool_]
    build: Callable[[int], Row]


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
        self._fhir_unkeyed = False
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
        if self.content_keys:
            return "content hash"
        # A FHIR resource without an id is keyed by its mapped fields (importer.intake._fhir_body).
        return "natural" if self.natural_keys or self._fhir_unkeyed else "source cells"

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
            yield Batch(table.name, len(chunk), [invalid[pos] for pos in sorted(invalid)], skipped)

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
        consents = FhirConsents(self.mapping, table, self.tally)
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
        self._fhir_unkeyed = self._fhir_unkeyed or bool(consents.unkeyed)

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
        file_rows.defects = table.defects
        if self.on_file is not None:
            file_rows.profile = self.on_file(file_rows)
        return file_rows

    def _duplicate(self, row: Row, first: int) -> None:
        """A repeat of an earlier row's source key: identical export rows would
        otherwise be sent twice."""
        file, number = self._files[first >> 40], first & ((1 << 40) - 1)
        where = f"row {number}" if file == row.file else f"{file} row {number}"
        if split_key(row.source_key)[1].startswith(SOURCE_PREFIX):
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


class KeyIndex:
    """The source keys seen so far, as sorted 64-bit digests with where each was first
    seen: 16 bytes a row, checked a batch at a time with numpy.

    Sorted runs, each at least `_FACTOR` times the size of the next: a batch's new keys
    are a run of their own, merged into the one before while that one is not that much
    bigger. A run adds a slice at a time; merging the whole index on every slice was
    quadratic in the file's size, and merging into one run of recent keys still cost a
    sort of an eighth of the index a slice. Here a key is merged about log4(n) times,
    and a lookup searches a handful of runs.
    """

    _FACTOR = 4

    def __init__(self) -> None:
        self._runs: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]] = []

    def contains(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        return self._first(keys) >= 0

    def _first(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """For each key, where it was first seen, or -1."""
        first = np.full(len(keys), -1, dtype=np.int64)
        if not len(keys):
            return first
        for known, where in self._runs:
            pos = np.minimum(np.searchsorted(known, keys), len(known) - 1)
            seen = known[pos] == keys
            first[seen] = where[pos[seen]]
        return first

    def add(
        self, keys: npt.NDArray[np.uint64], here: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """Add a batch of key digests and where each row is; for each key, -1 if it is
        new, else where it was first seen."""
        first = self._first(keys)
        unique, first_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
        earliest = first_index[inverse]
        repeat = (earliest != np.arange(len(keys))) & (first < 0)
        first[repeat] = here[earliest[repeat]]
        new = first[first_index] < 0
        if new.any():
            runs = self._runs
            runs.append((unique[new], here[first_index[new]]))
            while len(runs) > 1 and len(runs[-2][0]) < self._FACTOR * len(runs[-1][0]):
                last = runs.pop()
                runs[-1] = _merged(*runs[-1], *last)
        return first


def _merged(
    keys: npt.NDArray[np.uint64],
    where: npt.NDArray[np.int64],
    more_keys: npt.NDArray[np.uint64],
    more_where: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """Two sorted runs of distinct keys as one (each put in place, not sorted again)."""
    at = np.searchsorted(keys, more_keys)
    return np.insert(keys, at, more_keys), np.insert(where, at, more_where)


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
        cells: list[str] = list(map(str.strip, values))  # the reader gives str cells
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
        if errors and self.source_keyed and _identity_failed(row.source_key, errors):
            # Its identity cells hold a typo: the row may be the one the ledger misses.
            self.tally.unstable += 1
        if number in self.defects:
            _cut_short(row, self.defects[number])
        if errors:
            row.model = None
        return row

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
        self.tally.unstable += 1
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


def _whole(defects: RowDefects, numbers: Any) -> npt.NDArray[np.bool_]:
    """Per row number: not cut short by the reader, so a column-wise proof may pass it."""
    return defects.whole(numbers)


def _cut_short(row: Row, defect: tuple[str, str]) -> None:
    """Make `row` invalid for the reader's `defect` (rule code, message), its only error:
    its last cells are missing, not empty, so what they would fail on says nothing."""
    code, message = defect
    row.errors[:] = [
        RowError(row.file, row.row, "row", code, message, consent=row.consent, sheet=row.sheet)
    ]


def _v1_consents(
    owner: _FileNormalizer, chunk: pd.DataFrame, unchanged: UnchangedCheck | None
) -> Consents:
    """A version-1 chunk's rows (one consent each), those `unchanged` confirms marked."""
    headers, raw, fields, keys = owner._prepare(chunk)
    size = len(chunk)
    digests = cells_digests(fields, owner.digest_key(), size)
    skip = np.zeros(size, dtype=bool)
    # Keys of the rows that may be skipped: the key column's, or natural keys made a
    # column at a time (not content hashes: those need the body).
    fast_keys = keys
    if unchanged is not None and (owner.keyed or not owner.content_keys):
        if not owner.keyed and not owner.source_keyed:
            fast_keys = owner._natural_keys(fields, size)
        proven = proven_valid(
            fields,
            fast_keys,
            parse_date=owner.parse_date,
            crosswalk=owner.mapping.crosswalk,
            read_dates=owner._chunk_dates,
        )
        proven &= _whole(owner.defects, chunk.index)
        candidates = np.flatnonzero(owner.mapped(proven)).tolist()
        if candidates:
            asked = [fast_keys[pos] or "" for pos in candidates]
            skip[candidates] = unchanged(asked, digests[candidates])
    numbers = chunk.index.to_numpy(dtype=np.int64)

    def build(pos: int) -> Row:
        values = tuple(column[pos] for column in raw.values())
        cells = {name: column[pos] for name, column in fields.items()}
        row = owner._row(int(numbers[pos]), headers, values, cells, keys[pos])
        row.cells_digest = int(digests[pos])
        return row

    return Consents(size, numbers, np.arange(size, dtype=np.int64), fast_keys, skip, build)


class _V2Rows:
    """A file's rows through a version-2 mapping: its consent plans, each row's consents
    checked (`check`, for validate) or built (`normalize`, for a run)."""

    def __init__(self, owner: _FileNormalizer, mapping: Mapping) -> None:
        self.owner = owner
        self.consents = _consent_plans(owner, mapping)
        self.plan_of: list[str] = []  # the consent key of each of `check`'s consents
        #: the [fields] specs by row field, for error labels
        self.labels = {spec.path.plain: spec for plan in self.consents for spec in plan.specs}

    def check(self, chunk: pd.DataFrame) -> tuple[list[str], list[tuple[int, int]], dict[int, Row]]:
        """Every consent of a chunk through a version-2 mapping: source keys, (row number,
        position in the chunk) of each, and the invalid ones by index.

        Consents come plan by plan (all `#research`, then all `#hipaa`): keys of different
        plans never collide, and within a plan rows keep their order, which is all the
        duplicate check needs. Proven consents cost a key each; the rest are built.
        """
        headers, raw, prepared, keys = self.owner._prepare(chunk)
        size = len(chunk)
        self._evaluate(raw, size, chunk.index)
        numbers = chunk.index.tolist()
        value_rows: list[tuple[Any, ...]] | None = None
        names = list(prepared)
        out_keys: list[str] = []
        places: list[tuple[int, int]] = []
        invalid: dict[int, Row] = {}
        self.plan_of = []
        made = np.zeros(size, dtype=bool)
        has_key = np.array([k is not None for k in keys], dtype=bool)
        for plan in self.consents:
            holds = (
                np.array(plan.holds, dtype=bool)
                if plan.holds is not None
                else np.ones(size, dtype=bool)
            )
            made |= holds
            proven = self._proof(plan, prepared, keys, size) & holds & has_key
            suffix = f"#{plan.key}" if plan.key else ""
            for pos in np.flatnonzero(holds).tolist():
                index = len(out_keys)
                places.append((int(numbers[pos]), pos))
                self.plan_of.append(plan.key)
                if proven[pos]:
                    out_keys.append(f"{keys[pos]}{suffix}")
                    continue
                if value_rows is None:
                    value_rows = list(zip(*raw.values(), strict=True))
                cells = {n: prepared[n][pos] for n in names if n not in plan.dropped}
                row = self.owner._row(
                    int(numbers[pos]), headers, value_rows[pos], cells, keys[pos], (plan, pos)
                )
                out_keys.append(row.source_key)
                if not row.valid:
                    invalid[index] = row
        self.owner._skipped += int(size - made.sum())
        return out_keys, places, invalid

    def consent_at(self, index: int) -> str:
        """The [[consents]] key of the consent at `index` of the last `check`."""
        return self.plan_of[index]

    def _proof(
        self, plan: _ConsentPlan, prepared: dict[str, list[str]], keys: list[str | None], size: int
    ) -> npt.NDArray[np.bool_]:
        """Which rows' consent of this plan is certain to validate (keyed files only)."""
        if not self.owner.keyed or (
            plan.patient_from_v2 and self.owner.mapping.crosswalk is not None
        ):
            return np.zeros(size, dtype=bool)
        v1 = {n: cells for n, cells in prepared.items() if n not in plan.dropped}
        proven = proven_valid(
            v1,
            keys,
            parse_date=self.owner.parse_date,
            crosswalk=self.owner.mapping.crosswalk,
            supplied=plan.supplied,
            read_dates=self.owner._chunk_dates,
        )
        proven &= _whole(self.owner.defects, self.owner.numbers)
        return self.owner.mapped(proven) & proven_by_specs(plan.specs, plan.values, size)

    def _evaluate(
        self, raw: dict[str, list[Any]], size: int, index: pd.Index | None = None
    ) -> dict[str, list[str]]:
        """Every plan evaluated over the chunk; the trimmed cells by mapped column
        (`rows`: a position in the chunk -> its row number, for messages)."""
        cells = {
            name: self.owner._cells(raw[header]) for name, header in self.owner.headers.items()
        }
        numbers = None if index is None else index.tolist()
        rows = None if numbers is None else (lambda pos: int(numbers[pos]))
        for plan in self.consents:
            plan.evaluate(cells, size, rows)
        return cells

    def consents_of(self, chunk: pd.DataFrame, unchanged: UnchangedCheck | None) -> Consents:
        """A chunk's consents through a version-2 mapping, in row order, those `unchanged`
        confirms marked (keyed files: a natural key needs the body's patient)."""
        owner = self.owner
        headers, raw, prepared, keys = owner._prepare(chunk)
        size = len(chunk)
        cells = self._evaluate(raw, size, chunk.index)
        # A row's digest covers its version-1 fields and every mapped column's cells
        # (what the specs read); date cells enter as text, their reading in the key.
        digests = cells_digests(
            {**prepared, **{"\x00" + name: column for name, column in cells.items()}},
            owner.digest_key(),
            size,
        )
        holds = np.array(
            [np.ones(size, dtype=bool) if p.holds is None else p.holds for p in self.consents],
            dtype=bool,
        ).reshape(len(self.consents), size)
        owner._skipped += int(size - holds.any(axis=0).sum())
        pos, plan_of = np.nonzero(holds.T)  # row by row, a row's consents in order
        suffixes = [f"#{p.key}" if p.key else "" for p in self.consents]
        fast_keys: list[str | None] = [
            None if keys[at] is None else f"{keys[at]}{suffixes[p]}"
            for at, p in zip(pos.tolist(), plan_of.tolist(), strict=True)
        ]
        skip = np.zeros(len(pos), dtype=bool)
        if unchanged is not None and owner.keyed and len(pos):
            has_key = np.array([k is not None for k in keys], dtype=bool)
            proven = np.array(
                [self._proof(p, prepared, keys, size) & has_key for p in self.consents],
                dtype=bool,
            ).reshape(len(self.consents), size)
            candidates = np.flatnonzero(proven[plan_of, pos]).tolist()
            if candidates:
                asked = [fast_keys[i] or "" for i in candidates]
                skip[candidates] = unchanged(asked, digests[pos[candidates]])
        numbers = chunk.index.to_numpy(dtype=np.int64)
        names = list(prepared)

        def build(index: int) -> Row:
            at, plan = int(pos[index]), self.consents[int(plan_of[index])]
            values = tuple(column[at] for column in raw.values())
            row_cells = {n: prepared[n][at] for n in names if n not in plan.dropped}
            row = owner._row(int(numbers[at]), headers, values, row_cells, keys[at], (plan, at))
            row.cells_digest = int(digests[at])
            return row

        return Consents(size, numbers, pos.astype(np.int64), fast_keys, skip, build)

    def normalize(self, chunk: pd.DataFrame) -> list[Row]:
        """Rows through a version-2 mapping: per row, one Row per consent made."""
        headers, raw, prepared, keys = self.owner._prepare(chunk)
        size = len(chunk)
        self._evaluate(raw, size, chunk.index)
        names = list(prepared)
        numbers = chunk.index.tolist()
        value_rows = list(zip(*raw.values(), strict=True))
        rows: list[Row] = []
        for pos in range(size):
            made = False
            for plan in self.consents:
                if plan.holds is not None and not plan.holds[pos]:
                    continue
                made = True
                row_cells = {n: prepared[n][pos] for n in names if n not in plan.dropped}
                rows.append(
                    self.owner._row(
                        int(numbers[pos]),
                        headers,
                        value_rows[pos],
                        row_cells,
                        keys[pos],
                        (plan, pos),
                    )
                )
            if not made:
                self.owner._skipped += 1
        return rows


def _consent_plans(owner: _FileNormalizer, mapping: Mapping) -> list[_ConsentPlan]:
    """What each consent of a row is made of: one plan without [[consents]]."""
    top = list(mapping.fields.values())
    if not mapping.consents:
        return [_ConsentPlan(owner, "", None, top, frozenset())]
    plans = []
    for consent in mapping.consents:
        own = list(consent.fields.values())
        # The consent's own fields override top-level ones naming the same place,
        # and version-1 [columns]/[defaults] fields too.
        kept = [t for t in top if not any(overlaps(t.path, o.path) for o in own)]
        dropped = frozenset(
            name
            for name, path in V1_PATHS.items()
            if any(overlaps(parse_path(path, "v1"), o.path) for o in own)
        )
        plans.append(_ConsentPlan(owner, consent.key, consent.when, [*kept, *own], dropped))
    return plans


def _v1_body(
    c: dict[str, str],
    fail: Callable[[str, str, str], None],
    parse_date: Callable[[str, str], datetime | None],
    crosswalk: dict[str, str] | None,
) -> dict[str, Any]:
    """Assemble the API body from one row's prepared cells; faults go to `fail`."""
    if UNMAPPED_CELL in c.values():
        for name, cell in c.items():
            if cell == UNMAPPED_CELL:
                fail(name, UNMAPPED, _unmapped_rule(f"[values.{name}]"))
        c = {name: "" if cell == UNMAPPED_CELL else cell for name, cell in c.items()}
    body: dict[str, Any] = {name: c[name] for name in _PLAIN_FIELDS if c.get(name)}
    dates: dict[str, datetime] = {}
    for name in DATE_FIELDS:
        text = c.get(name)
        if text:
            parsed = parse_date(name, text)
            if parsed is None:
                fail(name, "invalid_date", "not a date-time in ISO 8601 or a date_formats format")
                body.pop(name, None)
            else:
                dates[name] = parsed
    if "dateTime" in dates:
        body["dateTime"] = dates["dateTime"]
    patient = body.get("patientId")
    if patient is not None and crosswalk is not None:
        resolved = crosswalk.get(patient)
        if resolved is None:
            fail("patientId", "unknown_patient", "not in the crosswalk; add it there")
            del body["patientId"]
        else:
            body["patientId"] = resolved
    category = c.get("category")
    if category:
        body["category"] = split_codes(category)
    if c.get("verified") or c.get("verifiedWith") or "verificationDate" in dates:
        verification = _verification(c, dates, fail)
        if verification is not None:
            body["verification"] = verification
    provision = _provision(c, dates)
    if provision:
        body["provision"] = provision
    return body


def _verification(
    c: dict[str, str], dates: dict[str, datetime], fail: Callable[[str, str, str], None]
) -> dict[str, Any] | None:
    verification: dict[str, Any] = {}
    flag = c.get("verified", "").casefold()
    if flag in TRUE_WORDS:
        verification["verified"] = True
    elif flag in FALSE_WORDS:
        verification["verified"] = False
    elif flag:
        fail("verified", "invalid_boolean", "must be Y/N, yes/no, true/false or 1/0")
        return None
    if c.get("verifiedWith"):
        verification["verifiedWith"] = c["verifiedWith"]
    if "verificationDate" in dates:
        verification["verificationDate"] = dates["verificationDate"]
    return verification


def _provision(c: dict[str, str], dates: dict[str, datetime]) -> dict[str, Any]:
    provision: dict[str, Any] = {}
    if c.get("provisionType"):
        provision["type"] = c["provisionType"]
    period = {
        end: dates[name]
        for end, name in (("start", "provisionStart"), ("end", "provisionEnd"))
        if name in dates
    }
    if period:
        provision["period"] = period
    if c.get("purpose"):
        provision["purpose"] = [coding(code) for code in split_codes(c["purpose"])]
    return provision


class _ConsentPlan:
    """One consent a row can make: its key, its `when`, and the specs filling its body."""

    def __init__(
        self,
        owner: _FileNormalizer,
        key: str,
        when: Condition | None,
        specs: list[Spec],
        dropped: frozenset[str],
    ) -> None:
        self.owner = owner
        self.key = key
        self.when = when
        self.specs = specs
        self.dropped = dropped
        self.holds: list[bool] | None = None
        self.shape = Shape(specs)
        self.values: list[list[Value]] = []
        top = {spec.path.steps[0][0] for spec in specs if len(spec.path.steps) == 1}
        #: Required fields this consent gets from its specs, not from version-1 columns.
        self.supplied = frozenset(top & {"patientId", "scope", "category"})
        # A patient id from [fields] goes through [patients], unless its spec names its
        # own crosswalk (then `evaluate` has resolved it already).
        self.patient_from_v2 = "patientId" in top and not any(
            spec.crosswalk is not None for spec in specs if spec.path.plain == "patientId"
        )
        self._rows: list[tuple[Value, ...]] = []
        self._errors: dict[int, list[tuple[Spec, str]]] = {}
        #: The spec behind each field path (without indexes), to name it in row errors.
        self.labels = {spec.path.plain: spec for spec in specs}

    def evaluate(
        self, cells: dict[str, list[str]], size: int, rows: Callable[[int], int] | None = None
    ) -> None:
        """Evaluate `when` and every spec over a chunk's cells, a column at a time
        (`rows`: a position in the chunk -> its row number, for messages)."""
        owner = self.owner
        self.holds = self.when.holds(cells[self.when.column]) if self.when else None
        values = []
        for spec in self.specs:
            reader = None
            # A period's end given as a date alone means the end of that day.
            end = spec.path.kind == DATE and spec.path.steps[-1][0] == "end"
            if spec.path.kind == DATE and spec.source != "value":
                column = owner._date_column(
                    f"{self.key}:{spec.key}",
                    f"{spec.path.plain} ({spec.describe()})",
                    spec.formats if spec.formats is not None else owner.mapping.date_formats,
                    end=end,
                )

                def reader(texts: list[str], column: DateColumn = column) -> list[datetime | None]:
                    read = column.read(texts, rows)
                    return [read.get(t) if t else None for t in texts]

            constant = partial(owner._constant_date, end=end)
            values.append(evaluate(spec, cells, size, reader, constant))
        self.values = values
        self._rows = list(zip(*values, strict=True)) if values else [()] * size
        self._errors = {}
        for spec, results in zip(self.specs, values, strict=True):
            can_fail = spec.map is not None or spec.crosswalk is not None or spec.cases
            if spec.path.kind not in (DATE, BOOL) and not can_fail:
                continue  # only dates, booleans, maps, crosswalks and cases can fail
            for pos, (_, _, code) in enumerate(results):
                if code is not None:
                    self._errors.setdefault(pos, []).append((spec, code))

    def body(
        self, base: dict[str, Any], pos: int, fail: Callable[[str, str, str], None]
    ) -> dict[str, Any]:
        """The row's body: the version-1 part, then every spec's value put in place."""
        for spec, code in self._errors.get(pos, ()):
            fail(spec.path.plain, code, _V2_RULES[code])
        built = self.shape.build(self._rows[pos])
        body = merge(base, built) if base else built
        crosswalk = self.owner.mapping.crosswalk
        if self.patient_from_v2 and crosswalk is not None and "patientId" in built:
            # A patient id from [fields] is a legacy id too: resolved, never sent as is.
            resolved = crosswalk.get(str(body["patientId"]))
            if resolved is None:
                fail("patientId", "unknown_patient", "not in the crosswalk; add it there")
                del body["patientId"]
            else:
                body["patientId"] = resolved
        return body


def _unmapped_rule(table: str) -> str:
    return (
        f"its column holds a value {table} does not list; add it there, or set "
        'unmapped = "keep" to send such values as they are'
    )


_V2_RULES = {
    UNMAPPED: _unmapped_rule("the map"),
    "unknown_patient": "not in the crosswalk, or its target is blank there; add it",
    "unknown_id": "not in the crosswalk, or its target is blank there; add it",
    "invalid_date": "not a date-time in ISO 8601 or one of the formats given",
    "invalid_boolean": "must be Y/N, yes/no, true/false or 1/0, or be listed in the map",
}


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

    def read(
        self, texts: list[str], rows: Callable[[int], int] | None = None
    ) -> dict[str, datetime | None]:
        """Each distinct non-empty text of a chunk -> its date-time (None: unreadable).

        A cell without an offset is read in the zone; with no zone stated, one holding a
        time of day stops the read (ConfigError naming the column and, through `rows`
        (position in `texts` -> row number), a row). A date alone is read in the zone,
        or UTC: the start of its day, or its end for a period's end."""
        out: dict[str, datetime | None] = {}
        rest: list[str] = []
        parse = datetime.fromisoformat
        timed = _ISO_TIME.search
        for text in set(texts):
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
            message = naive_time_message(self.file, self.label, row, texts[pos], self.unstated)
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


def naive_time_message(file: str, label: str, row: int | None, text: str, unstated: str) -> str:
    """Why a naive date-time stops a read: the column, a row, the cell's shape, the key."""
    where = f"row {row}, " if row is not None else ""
    said = (
        'and the mapping\'s [source] timezone is still "TODO"'
        if unstated == "TODO"
        else "and the mapping states no time zone"
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


def key_digests(keys: list[str]) -> npt.NDArray[np.uint64]:
    """64-bit digests of source keys (pandas' SipHash, the same in every process), for
    the duplicate check: a collision among a million keys has odds of about 1e-8."""
    digests: npt.NDArray[np.uint64] = pd.util.hash_array(
        np.array(keys, dtype=object), categorize=False
    )
    return digests


def cells_digests(fields: dict[str, list[str]], key: str, size: int) -> npt.NDArray[np.int64]:
    """Per row, a 64-bit digest of its prepared cells, keyed by `key`, a digest of all
    else that makes its body (`_FileNormalizer.digest_key`: the mapping, and how each
    date column is read): equal digests, equal bodies.

    A column at a time: each cell is hashed (keyed SipHash) and a row's column hashes are
    combined in field order as CPython combines a tuple's (what pandas does for a frame's
    rows), so no text is joined per row.
    """
    out = np.full(size, 0x345678, dtype=np.uint64)
    mult = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        for i, cells in enumerate(fields.values()):
            if cells and cells.count(cells[0]) == size:
                # One value in the whole column (a default, a constant): hashed once.
                first = np.array(cells[:1], dtype=object)
                out ^= pd.util.hash_array(first, categorize=False, hash_key=key)[0]
            else:
                column = np.array(cells, dtype=object)
                out ^= pd.util.hash_array(column, categorize=False, hash_key=key)
            out *= mult
            mult += np.uint64(82_520 + 2 * (len(fields) - i))
    out += np.uint64(97_531)
    digests: npt.NDArray[np.int64] = out.view(np.int64)
    return digests


def _cells_digest_key(mapping: Mapping, fields: list[str], *, excel: bool) -> str:
    """The SipHash key of a file's cells digests (16 characters): a digest of the body
    rules, the mapping (with its crosswalk) and the file kind."""
    crosswalk = sorted((mapping.crosswalk or {}).items())
    # Named crosswalks are left out of the mapping's repr (PHI): their tables count here.
    crosswalk += sorted(
        (f"{name}\x00{k}", v) for name, t in mapping.crosswalks.items() for k, v in t.items()
    )
    text = repr((_BODY_RULES, dataclasses.replace(mapping, path=None), crosswalk, fields, excel))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """A chunk makes hundreds of thousands of acyclic objects; cyclic GC passes over them
    would cost more than the work itself. Cycles are collected after it."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _identity(
    body: dict[str, Any], errors: list[RowError]
) -> tuple[str, str, list[str], datetime | None] | None:
    """An invalid row's natural identity, when every field it is made of holds (None:
    one does not, and the row has no stable key)."""
    if any(_KEY_ROOT.split(e.field, maxsplit=1)[0] in NATURAL_FIELDS for e in errors):
        return None  # e.g. a dateTime that does not parse is missing from the body
    try:
        found = ConsentIdentity.model_validate(body)
    except ValidationError:
        return None
    return found.patient_id, found.scope.value, found.category, found.date_time


def _identity_failed(key: str, errors: list[RowError]) -> bool:
    """Whether a row keyed by its identity cells failed in one of its identity fields."""
    return split_key(key)[1].startswith(SOURCE_PREFIX) and any(
        _KEY_ROOT.split(e.field, maxsplit=1)[0] in NATURAL_FIELDS for e in errors
    )


def split_codes(text: str) -> list[str]:
    """The codes of a multi-value cell (`a;b|c`), stripped, empty ones dropped; a
    `system|code` pair stays one code (`importer.intake._mapping_v2.split_codes`)."""
    return split_cell(text)


def _translate_codes(cell: str, table: dict[str, str]) -> str:
    """A multi-value cell translated: by its own entry when it has one, else code by code
    (a code not in the table stays as it is), so `init`'s one-entry-per-code tables apply."""
    whole = table.get(cell.casefold())
    if whole is not None or not _SPLIT.search(cell):
        return cell if whole is None else whole
    return ";".join(table.get(code.casefold(), code) for code in split_codes(cell))


#: What a cell its `[values.NAME]` table does not list becomes (see `_FileNormalizer
#: ._column`): no model accepts it, and `_v1_body` reports it as `unmapped_value`.
UNMAPPED_CELL = "\x00\x01"


def _mark_unmapped(
    cells: list[str], table: dict[str, str], *, multi: bool
) -> npt.NDArray[np.bool_] | None:
    """Cells the table does not list are entered in it as UNMAPPED_CELL (a row error);
    the rows holding one (None: none). Found once per distinct cell: most chunks have
    none and pay one set()."""
    missing = {c for c in set(cells) if c and not _listed(c, table, multi=multi)}
    if not missing:
        return None
    table.update(dict.fromkeys((c.casefold() for c in missing), UNMAPPED_CELL))
    return np.array([c in missing for c in cells], dtype=bool)


def _listed(cell: str, table: dict[str, str], *, multi: bool) -> bool:
    """Whether a values table translates the cell: as a whole, or (a multi-value
    field) code by code."""
    if cell.casefold() in table:
        return True
    if not multi or not _SPLIT.search(cell):
        return False
    return all(code.casefold() in table for code in split_codes(cell))


def _as_text(value: str | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else value


def _rule_text(message: str) -> str:
    """The rule part of a model message ("field: rule (code)" -> "rule (code)")."""
    return message.split(": ", 1)[1] if ": " in message else message


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]
