"""The row types every part shares: a mapped row, its errors, where it is, its hashes.

A leaf: it imports neither pandas nor numpy (nor any other part of the package but the
consent body model, for types only), so the ledger, the engine, the reports and `verify`
can name a row without loading the data stack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importer.intake._models import ConsentIn


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
    _field_hashes: dict[str, str] | None = field(default=None, repr=False)
    consent: str = ""  # the [[consents]] key, for a row making several consents
    sheet: str = ""  # the Excel sheet, for messages only (see RowError.sheet)
    #: a 64-bit digest of the row's prepared cells and the mapping (`cells_digests`):
    #: a rerun that finds it in the ledger knows the body is unchanged without making it
    cells_digest: int | None = None
    #: the body parsed, once a row (`body()`): shared by its field hashes and the engine
    _parsed: dict[str, Any] | None = field(default=None, repr=False, compare=False)

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
        """The API body as a dict (only for valid rows), parsed once a row: the same dict
        each call, which callers read and never change (issue 24: the field hashes and
        the engine's `Work.body` each parsed it)."""
        if self._parsed is None:
            self._parsed = json.loads(self.body_json)
        return self._parsed

    def field_hashes(self) -> dict[str, str]:
        """A short hash per top-level API field, to tell which fields changed (made once
        a row: a run asks when it decides and again when it records; issue 24)."""
        if self._field_hashes is None:
            self._field_hashes = body_field_hashes(self.body())
        return dict(self._field_hashes)


def body_field_hashes(body: dict[str, Any]) -> dict[str, str]:
    """A short hash per top-level field of a parsed API body (`Row.field_hashes`; `verify`
    hashes the server's copy the same way to compare without keeping values): 8 hex
    digits, as the ledger keeps them (importer.ledger._codec._FIELD_HASH_BYTES)."""
    return {name: _digest(repr(value))[:8] for name, value in body.items()}


@dataclass(frozen=True, slots=True)
class Unchanged:
    """A count of rows of `file` a rerun found unchanged in the ledger, without bodies."""

    file: str
    count: int


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def sheet_label(name: str, sheet: str | None) -> str:
    """The file as errors name it: an Excel file with its sheet (`book.xlsx[Consents]`),
    a CSV file (no sheet) as it is."""
    return f"{name}[{sheet}]" if sheet else name
