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
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import ValidationError

from importer.fastcheck import proven_valid
from importer.keys import namespaced, natural_key
from importer.mapping import DATE_FIELDS, FALSE_WORDS, TRUE_WORDS, Mapping
from importer.models import ConsentIn, field_errors
from importer.reader import EXCEL_SUFFIXES, Table, excel_serial_to_iso

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
#: Rows whose bodies a run builds at a time (models cost kilobytes a row; a chunk of
#: them was most of a run's memory).
_SLICE = 1_000
#: Bump when a change of this module changes the body made from the same cells: every
#: stored cells digest then misses once, and the rerun compares bodies instead.
_BODY_RULES = "1"


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


@dataclass(frozen=True, slots=True)
class Unchanged:
    """A count of rows of `file` a rerun found unchanged in the ledger, without bodies."""

    file: str
    count: int


#: The rows of a chunk the ledger holds as done with the same cells digest: asked with
#: their source keys and cells digests, answers True for each such row.
UnchangedCheck = Callable[[list[str], npt.NDArray[np.int64]], npt.NDArray[np.bool_]]


@dataclass(slots=True)
class Prepared:
    """A chunk's cells, a column at a time: raw by header, prepared by row field, the
    source keys (None: empty) and each row's cells digest."""

    headers: tuple[str, ...]
    raw: dict[str, list[Any]]
    fields: dict[str, list[str]]
    keys: list[str | None]
    digests: npt.NDArray[np.int64]


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


class Normalizer:
    """Maps and validates rows of any number of files, remembering source keys across them."""

    def __init__(self, mapping: Mapping, *, content_keys: bool = False) -> None:
        self.mapping = mapping
        #: key rows without a key column by a hash of their whole body, as ledgers made
        #: before natural keys do (see importer.keys)
        self.content_keys = content_keys
        self.unkeyed_files = 0
        self._keys = KeyIndex()
        self._files: list[str] = []

    @property
    def key_kind(self) -> str:
        """Which source key the files read so far use: "column", "natural" or
        "content hash"."""
        if not self.unkeyed_files:
            return "column"
        return "content hash" if self.content_keys else "natural"

    def rows(self, table: Table) -> Iterator[Row]:
        """Every row of one table, in order, with its model when valid (what a run needs)."""
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
        chunk of them.
        """
        file_rows = self.file_normalizer(table)
        file_index = self._add_file(table.name)
        for chunk in table.chunks():
            with _gc_paused():
                prepared = file_rows.prepare(chunk)
                skip = np.zeros(len(chunk), dtype=bool)
                # Keys of the rows that may be skipped: the key column's, or natural keys
                # made a column at a time (not content hashes: those need the body).
                fast_keys = prepared.keys
                if unchanged is not None and (file_rows.keyed or not file_rows.content_keys):
                    if not file_rows.keyed:
                        fast_keys = file_rows.natural_keys(prepared.fields, len(chunk))
                    candidates = np.flatnonzero(file_rows.proven(prepared, fast_keys)).tolist()
                    if candidates:
                        keys = [fast_keys[pos] or "" for pos in candidates]
                        digests = prepared.digests[candidates]
                        skip[candidates] = unchanged(keys, digests)
            numbers = chunk.index.to_numpy(dtype=np.int64)
            for start in range(0, len(chunk), _SLICE):
                stop = min(start + _SLICE, len(chunk))
                with _gc_paused():
                    skipped = skip[start:stop].tolist()
                    built = {
                        pos: file_rows.row_at(prepared, int(numbers[pos]), pos)
                        for pos, same in enumerate(skipped, start)
                        if not same
                    }
                    keys = [key or "" for key in fast_keys[start:stop]]
                    for pos, row in built.items():
                        keys[pos - start] = row.source_key
                    where = file_index << 40 | numbers[start:stop]
                    firsts = self._keys.add(key_digests(keys), where)
                    for at in np.flatnonzero(firsts >= 0).tolist():
                        pos = start + at
                        if pos not in built:
                            # A repeat of an earlier key is reported, even if unchanged.
                            built[pos] = file_rows.row_at(prepared, int(numbers[pos]), pos)
                            skipped[at] = False
                        self._duplicate(built[pos], int(firsts[at]))
                same = skipped.count(True)
                if same:
                    yield Unchanged(table.name, same)
                yield from (built[pos] for pos in sorted(built))

    def in_input(self, keys: list[str]) -> npt.NDArray[np.bool_]:
        """For each key, whether the input read so far held it (by its 64-bit digest)."""
        return self._keys.contains(key_digests(keys))

    def check(self, table: Table) -> Iterator[Batch]:
        """The verdict on every row of one table, a chunk at a time, without bodies.

        What `validate` needs: valid rows are only counted, invalid ones come with their
        errors.
        """
        file_rows = self.file_normalizer(table)
        file_index = self._add_file(table.name)
        for chunk in table.chunks():
            checked = file_rows.check(chunk)
            where = file_index << 40 | chunk.index.to_numpy(dtype=np.int64)
            firsts = self._keys.add(checked.digests, where)
            invalid = dict(checked.invalid)
            for pos in np.flatnonzero(firsts >= 0).tolist():
                row = invalid.get(pos)
                if row is None:
                    row = invalid[pos] = file_rows.plain_row(chunk, pos, checked.keys[pos])
                self._duplicate(row, int(firsts[pos]))
            yield Batch(table.name, len(chunk), [invalid[pos] for pos in sorted(invalid)])

    def _add_file(self, name: str) -> int:
        self._files.append(name)
        return len(self._files) - 1

    def file_normalizer(self, table: Table) -> _FileNormalizer:
        columns = self.mapping.resolve(table.columns, table.name)
        file_rows = _FileNormalizer(
            self.mapping,
            columns,
            table.name,
            excel=table.path.suffix.lower() in EXCEL_SUFFIXES,
            content_keys=self.content_keys,
        )
        self.unkeyed_files += not file_rows.keyed
        return file_rows

    def _duplicate(self, row: Row, first: int) -> None:
        """A repeat of an earlier row's source key: identical export rows would
        otherwise be sent twice."""
        file, number = self._files[first >> 40], first & ((1 << 40) - 1)
        where = f"row {number}" if file == row.file else f"{file} row {number}"
        row.errors.append(
            RowError(
                row.file,
                row.row,
                "sourceKey",
                "duplicate_row",
                f"sourceKey: same source key as {where}; a row is imported once (duplicate_row)",
                value=row.source_key,
            )
        )
        row.model = None


class KeyIndex:
    """The source keys seen so far, as sorted 64-bit digests with where each was first
    seen: 16 bytes a row, checked a batch at a time with numpy.

    Two sorted runs: the old keys, and the recent ones, merged into the old when they
    grow past an eighth of them (at least `_RECENT` keys). A run adds a slice at a time;
    merging the whole index on every slice made it quadratic in the file's size.
    """

    _RECENT = 65_536

    def __init__(self) -> None:
        self._keys = np.empty(0, dtype=np.uint64)
        self._where = np.empty(0, dtype=np.int64)
        self._recent_keys = np.empty(0, dtype=np.uint64)
        self._recent_where = np.empty(0, dtype=np.int64)

    def contains(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        return self._first(keys) >= 0

    def _first(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """For each key, where it was first seen, or -1."""
        first = np.full(len(keys), -1, dtype=np.int64)
        for known, where in ((self._keys, self._where), (self._recent_keys, self._recent_where)):
            if len(known) and len(keys):
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
        self._recent_keys, self._recent_where = _merged(
            self._recent_keys, self._recent_where, unique[new], here[first_index[new]]
        )
        if len(self._recent_keys) > max(self._RECENT, len(self._keys) // 8):
            self._keys, self._where = _merged(
                self._keys, self._where, self._recent_keys, self._recent_where
            )
            self._recent_keys = np.empty(0, dtype=np.uint64)
            self._recent_where = np.empty(0, dtype=np.int64)
        return first


def _merged(
    keys: npt.NDArray[np.uint64],
    where: npt.NDArray[np.int64],
    more_keys: npt.NDArray[np.uint64],
    more_where: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    merged_keys = np.concatenate([keys, more_keys])
    merged_where = np.concatenate([where, more_where])
    order = np.argsort(merged_keys, kind="stable")
    return merged_keys[order], merged_where[order]


class _FileNormalizer:
    def __init__(
        self,
        mapping: Mapping,
        columns: dict[str, str],
        file: str,
        *,
        excel: bool,
        content_keys: bool = False,
    ) -> None:
        self.mapping = mapping
        self.columns = columns
        self.file = file
        self.parse_date = _date_parser(mapping, excel=excel)
        self.fields = sorted(set(columns) | set(mapping.defaults))
        self.keyed = bool(mapping.key) or "sourceKey" in columns
        self.system = mapping.system
        self.content_keys = content_keys
        self._digest_key = _cells_digest_key(mapping, self.fields, excel=excel)

    def prepare(self, chunk: pd.DataFrame) -> Prepared:
        """The chunk's cells a column at a time, with each row's cells digest."""
        headers, raw, prepared, keys = self._prepare(chunk)
        return Prepared(headers, raw, prepared, keys, self.cells_digests(prepared, len(chunk)))

    def proven(self, prepared: Prepared, keys: list[str | None]) -> npt.NDArray[np.bool_]:
        """Rows `fastcheck` proves valid (their bodies are certain to validate)."""
        return proven_valid(
            prepared.fields,
            keys,
            parse_date=self.parse_date,
            crosswalk=self.mapping.crosswalk,
        )

    def row_at(self, prepared: Prepared, number: int, pos: int) -> Row:
        """The full row at position `pos` of a prepared chunk: its model or its errors."""
        values = tuple(column[pos] for column in prepared.raw.values())
        cells = {name: column[pos] for name, column in prepared.fields.items()}
        row = self._row(number, prepared.headers, values, cells, prepared.keys[pos])
        row.cells_digest = int(prepared.digests[pos])
        return row

    def cells_digests(self, fields: dict[str, list[str]], size: int) -> npt.NDArray[np.int64]:
        """Per row, a 64-bit SipHash of its prepared cells, keyed by everything else that
        makes its body (mapping, file kind, body rules): equal digests, equal bodies."""
        if not fields:
            return np.zeros(size, dtype=np.int64)
        joined = np.array(
            ["\x1f".join(cells) for cells in zip(*fields.values(), strict=True)], dtype=object
        )
        hashed = pd.util.hash_array(joined, categorize=False, hash_key=self._digest_key)
        digests: npt.NDArray[np.int64] = hashed.view(np.int64)
        return digests

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
            if not self.keyed:
                keys = self.natural_keys(prepared, len(chunk))
            proven = proven_valid(
                prepared, keys, parse_date=self.parse_date, crosswalk=self.mapping.crosswalk
            )
            numbers = chunk.index.tolist()
            names = list(prepared)
            checked: list[tuple[int, Row]] = []
            for pos in np.flatnonzero(~proven).tolist():
                values = tuple(column[pos] for column in raw.values())
                cells = {name: prepared[name][pos] for name in names}
                # An unproven row's natural key comes from its model, as in `normalize`.
                key = keys[pos] if self.keyed else None
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
        return Row(self.file, int(chunk.index[pos]), key, headers, values)

    def _prepare(
        self, chunk: pd.DataFrame
    ) -> tuple[tuple[str, ...], dict[str, list[Any]], dict[str, list[str]], list[str | None]]:
        """Headers, raw cells by header, prepared cells by row field, and source keys."""
        headers = tuple(str(c) for c in chunk.columns)
        raw = {h: chunk[h].to_numpy(dtype=object).tolist() for h in headers}
        prepared = {name: self._column(raw, name, len(chunk)) for name in self.fields}
        return headers, raw, prepared, self._keys(raw, len(chunk))

    def _normalize(self, chunk: pd.DataFrame) -> list[Row]:
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
        values = [str(v).strip() for v in raw[header]] if header else [""] * size
        translations = self.mapping.values.get(name)
        if translations:
            table = {k: _as_text(v) for k, v in translations.items()}
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
            parts = [[str(v).strip() for v in raw[c]] for c in self.mapping.key]
            keys = [None if not all(p) else "|".join(p) for p in zip(*parts, strict=True)]
        elif (header := self.columns.get("sourceKey")) is not None:
            keys = [str(v).strip() or None for v in raw[header]]
        else:
            return [None] * size
        if self.system is not None:
            keys = [None if k is None else namespaced(self.system, k) for k in keys]
        return keys

    def natural_keys(self, prepared: dict[str, list[str]], size: int) -> list[str | None]:
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
            when = parse(text) if text else None
            if not patient or (text and when is None):
                keys.append(None)
            else:
                keys.append(namespaced(system, natural_key(patient, scope, _split(category), when)))
        return keys

    def _row(
        self,
        number: int,
        headers: tuple[str, ...],
        values: tuple[str, ...],
        cells: dict[str, str],
        key: str | None,
    ) -> Row:
        row = Row(self.file, number, key or "", headers, values)
        errors = row.errors

        def fail(name: str, code: str, rule: str) -> None:
            errors.append(
                RowError(
                    self.file,
                    number,
                    name,
                    code,
                    f"{self._label(name)}: {rule} ({code})",
                    value=self._cell(row, name),
                )
            )

        body = self._body(cells, fail)
        try:
            model = ConsentIn.model_validate(body)
        except ValidationError as exc:
            already = {e.field for e in errors}
            for err in field_errors(exc):
                name = _API_TO_ROW_FIELD.get(err.field, err.field)
                if name in already:
                    continue  # e.g. an unknown patient was dropped: not also "missing"
                message = err.message
                if name != err.field or name in self.columns:
                    message = f"{self._label(name)}: {_rule_text(err.message)}"
                errors.append(
                    RowError(
                        self.file, number, name, err.code, message, value=self._cell(row, name)
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
                row.source_key = "cells:" + _digest(repr(values))
            elif row.model is not None and self.content_keys:
                row.source_key = "sha256:" + row.body_hash[:32]
            elif row.model is not None:
                model = row.model
                row.source_key = natural_key(
                    model.patient_id, model.scope.value, model.category, model.date_time
                )
            else:
                row.source_key = "cells:" + _digest(repr(values))
            row.source_key = namespaced(self.system, row.source_key)
        if errors:
            row.model = None
        return row

    def _body(self, c: dict[str, str], fail: Callable[[str, str, str], None]) -> dict[str, Any]:
        """Assemble the API body from one row's prepared cells; faults go to `fail`."""
        body: dict[str, Any] = {name: c[name] for name in _PLAIN_FIELDS if c.get(name)}
        dates: dict[str, datetime] = {}
        for name in DATE_FIELDS:
            text = c.get(name)
            if text:
                parsed = self.parse_date(text)
                if parsed is None:
                    fail(
                        name, "invalid_date", "not a date-time in ISO 8601 or a date_formats format"
                    )
                    body.pop(name, None)
                else:
                    dates[name] = parsed
        if "dateTime" in dates:
            body["dateTime"] = dates["dateTime"]
        patient = body.get("patientId")
        if patient is not None and self.mapping.crosswalk is not None:
            resolved = self.mapping.crosswalk.get(patient)
            if resolved is None:
                fail("patientId", "unknown_patient", "not in the crosswalk; add it there")
                del body["patientId"]
            else:
                body["patientId"] = resolved
        category = c.get("category")
        if category:
            body["category"] = _split(category)
        if c.get("verified") or c.get("verifiedWith") or "verificationDate" in dates:
            verification = self._verification(c, dates, fail)
            if verification is not None:
                body["verification"] = verification
        provision = self._provision(c, dates)
        if provision:
            body["provision"] = provision
        return body

    @staticmethod
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

    @staticmethod
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
            provision["purpose"] = [{"code": code} for code in _split(c["purpose"])]
        return provision

    def _cell(self, row: Row, name: str) -> str:
        """The raw cell behind a field, for the HTML report's value column."""
        cells = row.cells
        if name == "sourceKey" and self.mapping.key:
            return "|".join(cells.get(c, "") for c in self.mapping.key)
        header = self.columns.get(name)
        return str(cells.get(header, "")) if header else ""

    def _label(self, name: str) -> str:
        header = self.columns.get(name)
        return f"{name} (column '{header}')" if header and header != name else name


def _date_parser(mapping: Mapping, *, excel: bool) -> Callable[[str], datetime | None]:
    """A cached parser: ISO 8601 first, then the mapping's formats, then Excel serials."""
    tz, formats = mapping.timezone, mapping.date_formats

    @lru_cache(maxsize=65536)
    def parse(text: str) -> datetime | None:
        value: datetime | None = None
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            for fmt in formats:
                try:
                    value = datetime.strptime(text, fmt)
                    break
                except ValueError:
                    continue
            if value is None and excel:
                iso = excel_serial_to_iso(text)
                value = datetime.fromisoformat(iso) if iso else None
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=tz)
        return value

    return parse


def key_digests(keys: list[str]) -> npt.NDArray[np.uint64]:
    """64-bit digests of source keys (pandas' SipHash, the same in every process), for
    the duplicate check: a collision among a million keys has odds of about 1e-8."""
    digests: npt.NDArray[np.uint64] = pd.util.hash_array(
        np.array(keys, dtype=object), categorize=False
    )
    return digests


def _cells_digest_key(mapping: Mapping, fields: list[str], *, excel: bool) -> str:
    """The SipHash key of a file's cells digests (16 characters): a digest of the body
    rules, the mapping (with its crosswalk) and the file kind."""
    crosswalk = sorted((mapping.crosswalk or {}).items())
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


def _split(text: str) -> list[str]:
    return [part.strip() for part in _SPLIT.split(text) if part.strip()]


def _as_text(value: str | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else value


def _rule_text(message: str) -> str:
    """The rule part of a model message ("field: rule (code)" -> "rule (code)")."""
    return message.split(": ", 1)[1] if ": " in message else message


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]
