"""The SQLite ledger: the truth of what was sent, created, patched and failed.

A row's intent (its body and hash) is committed before its request is sent, and its
outcome when the answer comes, so a crash at any instant leaves every row done, failed,
or in flight with an unknown outcome, which the next run reconciles by a lookup.

The file holds PHI (payloads of rows in flight, cells of failed rows), so it is created
readable by its owner only. Commits are synchronous=FULL in WAL mode: an intent survives
a power cut, not just a crash. `AsyncLedger` groups the writes of concurrent workers
into shared transactions run in a worker thread, so one fsync serves many rows and the
event loop never waits on the disk.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from importer._errors import ConfigError
from importer._resources import resource_error

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

SCHEMA_VERSION = "3"
#: Schema versions this code migrates in place, once, when it opens their ledger (and
#: reads as they are when it opens them read-only, for `verify`).
_MIGRATES = frozenset({"1", "2"})
log = logging.getLogger("importer.ledger")


class RowState(StrEnum):
    """Where a source row stands; `rows.state` holds one of these and nothing else."""

    INVALID = "invalid"  # failed validation; nothing was sent
    PENDING = "pending"  # an intent taken back unsent (stopped before sending): send next run
    IN_FLIGHT = "in_flight"  # intent committed, outcome unknown: look it up before re-posting
    SETTLING = "settling"  # an ambiguous answer: look it up once `settle_after` has passed
    DONE = "done"  # the server holds the row's body (`payload_hash`) as `consent_id`
    FAILED = "failed"  # the server refused it, or retries ran out; the next run tries again
    REVOKED = "revoked"  # left the source; its consent was patched inactive


class Op(StrEnum):
    """What a row's request does; `rows.pending_op` and `attempts.op` hold these."""

    CREATE = "create"  # POST the row
    PATCH = "patch"  # PATCH the patchable fields of the row's consent
    RECREATE = "recreate"  # POST the edited row, then retire the consent it replaces
    RETIRE = "retire"  # PATCH the consent a recreate replaced to inactive
    REVOKE = "revoke"  # PATCH the consent of a row gone from the source to inactive


#: Row states that hold (or may hold) a consent on the server: an error of a later edit
#: is noted on them without changing their state.
_HOLDS_CONSENT = frozenset({RowState.IN_FLIGHT, RowState.SETTLING, RowState.DONE, RowState.REVOKED})

#: Top-level API fields in the order `field_hashes` packs them (append only: a packed
#: value names its fields by position here).
FIELD_ORDER = (
    "patientId",
    "scope",
    "category",
    "status",
    "dateTime",
    "performerId",
    "organizationId",
    "policyUri",
    "policies",
    "policyRule",
    "sourceAttachment",
    "sourceReferenceId",
    "verification",
    "provision",
)
_FIELD_INDEX = {name: i for i, name in enumerate(FIELD_ORDER)}
#: Bytes kept of each field's hash (the 12 hex digits `Row.field_hashes` gives).
_FIELD_HASH_BYTES = 6
#: Bytes of the presence bitmap that opens a packed `field_hashes` (bit i: FIELD_ORDER[i]).
_BITMAP_BYTES = 2
#: Bytes kept of a body's SHA-256 (`payload_hash`): 128 bits, as many as a UUID; a body
#: that changes and keeps them would need a collision no edit of a row can aim at.
_PAYLOAD_HASH_BYTES = 16

_ROWS_TABLE = """
CREATE TABLE IF NOT EXISTS rows (
    source_key PRIMARY KEY,          -- TEXT; a natural key ("nk:" and 32 hex digits) as
                                     -- its 16 bytes (BLOB; pack_key)
    file INTEGER NOT NULL,           -- files.id: the input it was last read from
    source_row INTEGER NOT NULL,
    state TEXT NOT NULL,             -- invalid | pending | in_flight | settling | done
                                     -- | failed | revoked (RowState)
    action TEXT,                     -- created | adopted | updated | recreated | revoked
    consent_id,                      -- TEXT; "consent_" and 24 hex digits as their
    previous_consent_id,             -- 12 bytes (BLOB; pack_id). previous: the consent
                                     -- a recreate replaced
    patient_id TEXT,
    payload_hash BLOB,               -- the first 16 bytes of the SHA-256 of the body the
                                     -- server holds
    field_hashes BLOB,               -- per top-level field of that body: a 2-byte bitmap
                                     -- of the fields present (bit i: FIELD_ORDER[i]),
                                     -- then 6 bytes of each one's hash, in that order
    cells_hash INTEGER,              -- digest of the cells that made that body (done rows):
                                     -- a rerun finds unchanged rows by it, without bodies
    pending_op TEXT,                 -- create | patch | recreate | retire | revoke
                                     -- (Op; in_flight rows)
    error_stage TEXT,                -- validate | sync | api
    error_code TEXT,
    error_message TEXT,
    http_status INTEGER,
    request_id,                      -- TEXT; "req_" and 16 hex digits as 8 bytes (BLOB)
    cells TEXT,                      -- JSON of the source cells (invalid/failed rows only: PHI)
    settle_after TEXT,               -- settling rows: look up no sooner (UTC ISO time)
    attempts INTEGER NOT NULL DEFAULT 0,
    first_run INTEGER,
    last_run INTEGER,                -- the last run whose input held this row
    updated_at INTEGER NOT NULL      -- Unix time in milliseconds
) WITHOUT ROWID
"""
#: The columns of `rows` (but its key) that `run_changes` keeps of a row before a run.
UNDO_COLUMNS = (
    "file", "source_row", "state", "action", "consent_id", "previous_consent_id",
    "patient_id", "payload_hash", "field_hashes", "cells_hash", "pending_op", "error_stage",
    "error_code", "error_message", "http_status", "request_id", "cells", "settle_after",
    "attempts", "first_run", "last_run", "updated_at",
)  # fmt: skip
_UNDO_COLUMNS_DDL = ", ".join(UNDO_COLUMNS)
#: A row's source system, as `tally` counts it: the part of a text key before the
#: separator (importer._keys.SYSTEM_SEPARATOR), '' for none. A packed key has none.
_SYSTEM_OF = (
    "CASE WHEN typeof({k}) = 'text' AND instr({k}, char(31)) > 0 "
    "THEN substr({k}, 1, instr({k}, char(31)) - 1) ELSE '' END"
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,            -- running | finished | aborted | paused | crashed
    pid INTEGER,
    inputs TEXT,                     -- JSON list of input file names
    summary TEXT                     -- JSON summary when finished
);
-- Input file names, once each: a row names its file by id.
CREATE TABLE IF NOT EXISTS files (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
{_ROWS_TABLE};
-- Rows not done are few once a run is over: the index leaves the done ones out (`tally`
-- counts them). A query uses it when it says `state != 'done'` (_NOT_DONE) as it is.
CREATE INDEX IF NOT EXISTS rows_state ON rows (state) WHERE state != 'done';
-- Rows with an error noted are few: `status` counts them without reading every row.
CREATE INDEX IF NOT EXISTS rows_errors ON rows (error_code) WHERE error_code IS NOT NULL;
-- Rows by file, source system and state, kept by the triggers below in the transaction
-- that changes the rows: `status` reads this, not a million rows.
CREATE TABLE IF NOT EXISTS tally (
    file INTEGER NOT NULL,
    system TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (file, system, state)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS tally_insert AFTER INSERT ON rows BEGIN
    INSERT INTO tally VALUES (new.file, {_SYSTEM_OF.format(k="new.source_key")}, new.state, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS tally_delete AFTER DELETE ON rows BEGIN
    UPDATE tally SET n = n - 1 WHERE file = old.file
        AND system = {_SYSTEM_OF.format(k="old.source_key")} AND state = old.state;
END;
CREATE TRIGGER IF NOT EXISTS tally_update AFTER UPDATE OF file, state ON rows
WHEN old.file IS NOT new.file OR old.state IS NOT new.state BEGIN
    UPDATE tally SET n = n - 1 WHERE file = old.file
        AND system = {_SYSTEM_OF.format(k="old.source_key")} AND state = old.state;
    INSERT INTO tally VALUES (new.file, {_SYSTEM_OF.format(k="new.source_key")}, new.state, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
-- The body of each request in flight (PHI), apart from `rows`: a row's record stays the
-- same small size from its intent on, so the pages of `rows` stay full.
CREATE TABLE IF NOT EXISTS bodies (
    source_key PRIMARY KEY,          -- as rows.source_key
    body TEXT NOT NULL,
    hash TEXT
);
-- Failed attempts only (a row's successes are its state, action and attempts count).
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    source_key NOT NULL,             -- as rows.source_key
    op TEXT NOT NULL,                -- create | patch | recreate | retire | revoke (Op)
    at TEXT NOT NULL,
    outcome TEXT NOT NULL,           -- error
    http_status INTEGER,
    request_id TEXT,
    error_code TEXT
);
-- What each run read its rows with: digests of the mapping and of its crosswalks' contents
-- (no PHI), so a run can say that the mapping changed since the last one.
CREATE TABLE IF NOT EXISTS run_mappings (
    run_id INTEGER PRIMARY KEY,
    mapping TEXT NOT NULL,
    crosswalk TEXT NOT NULL
);
-- Undo (issue 21). Each row a run changed on the server, as the ledger held it before
-- that run's first request for it (existed = 0: it held no record), and how far an
-- `undo` of that run took it (undo: NULL, deleting, restoring, undone).
CREATE TABLE IF NOT EXISTS run_changes (
    run_id INTEGER NOT NULL,
    source_key NOT NULL,             -- as rows.source_key
    existed INTEGER NOT NULL,
    posted INTEGER,                  -- 1: that first request was a POST (create, recreate)
    {_UNDO_COLUMNS_DDL},
    body TEXT,                       -- the bodies row it had (PHI), if any
    body_hash TEXT,
    undo TEXT,
    PRIMARY KEY (run_id, source_key)
) WITHOUT ROWID;
-- Runs that recorded their changes for undo, and how far an undo took them
-- (state: NULL, partly undone, undone).
CREATE TABLE IF NOT EXISTS run_undo (run_id INTEGER PRIMARY KEY, state TEXT, undone_at TEXT);
-- The values of the patchable fields the server was sent, by their short hash (as
-- `field_hashes` holds it): what the undo of a PATCH puts back. A hash two values share
-- holds NULL (unknown), never a guess.
CREATE TABLE IF NOT EXISTS field_values (
    field INTEGER NOT NULL,          -- its index in FIELD_ORDER
    hash NOT NULL,                   -- its short hash: 6 bytes (BLOB), or the text it is
    value TEXT,                      -- JSON
    PRIMARY KEY (field, hash)
) WITHOUT ROWID;
-- --revoke-missing's evidence (importer.engine._revocation): done rows missing from the source,
-- and for how many consecutive runs that read their scope. A row seen again leaves it.
CREATE TABLE IF NOT EXISTS revoke_misses (
    source_key PRIMARY KEY,          -- as rows.source_key
    misses INTEGER NOT NULL,
    last_run INTEGER NOT NULL        -- the run that counted its last miss
) WITHOUT ROWID;
-- The rows the last full read of each revocation scope held: a run whose input shrank
-- by more than --revoke-max since revokes nothing.
CREATE TABLE IF NOT EXISTS scope_reads (
    scope TEXT PRIMARY KEY,          -- "system:NAME", or "file:NAME" (a base name, no system)
    rows INTEGER NOT NULL,
    run_id INTEGER NOT NULL
) WITHOUT ROWID;
"""  # noqa: S608 - constant text
#: The condition of `rows_state`, written as the queries that use the index must say it.
_NOT_DONE = "state != 'done'"

T = TypeVar("T")
_SELECT_ROWS = (
    "SELECT source_key, state, action, consent_id, payload_hash, field_hashes, pending_op, "
    "(SELECT body FROM bodies p WHERE p.source_key = rows.source_key), "
    "(SELECT hash FROM bodies p WHERE p.source_key = rows.source_key), "
    "error_code, settle_after, updated_at FROM rows"
)
#: Marks a pending body an upsert leaves as it is.
_KEEP: Any = object()
#: Done rows with no error noted, by key and cells digest: what a rerun skips in bulk.
_UNCHANGED = (
    # CROSS JOIN: the keys outside, one lookup by primary key each (through the state
    # index, SQLite would look each row up twice). k.key is the key's place in the list.
    "SELECT k.key, r.cells_hash FROM json_each(?) AS k CROSS JOIN rows AS r "
    "ON r.source_key = {key} WHERE r.state = 'done' AND r.error_code IS NULL "
    "AND r.cells_hash IS NOT NULL"
)
#: Rows that need a person: invalid, failed, sent with an outcome still unknown, or done
#: but edited in a way the API cannot apply (the error stays until a run clears it).
_NEEDS_A_PERSON = f"({_NOT_DONE} AND state IN ('invalid', 'failed')) OR error_code IS NOT NULL"
#: A row as the exports read it (sqlite3.Row): every column by its name, the packed
#: ones unpacked, the file by its name.
_READ_ROWS = (
    "SELECT unpack_key(source_key) AS source_key, f.name AS source_file, source_row, state, "
    "action, unpack_id(consent_id) AS consent_id, "
    "unpack_id(previous_consent_id) AS previous_consent_id, patient_id, pending_op, "
    "error_stage, error_code, error_message, http_status, "
    "unpack_id(request_id) AS request_id, cells, settle_after, attempts, first_run, "
    "last_run, updated_at FROM rows JOIN files AS f ON f.id = rows.file"
)
#: Columns cleared once a row's outcome is known.
_CLEARED = dict.fromkeys(
    (
        "pending_op",
        "pending_body",
        "pending_hash",
        "error_stage",
        "error_code",
        "error_message",
        "http_status",
        "cells",
        "settle_after",
    )
)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _now() -> int:
    """`updated_at` as stored: Unix milliseconds (an ISO text takes 29 bytes a row)."""
    return time.time_ns() // 1_000_000


def _iso(stored: int | str | None) -> str | None:
    """A stored `updated_at` as `now_iso` writes times (a legacy text as it is)."""
    if not isinstance(stored, int):
        return stored
    return datetime.fromtimestamp(stored / 1000, UTC).isoformat(timespec="milliseconds")


def _hex_bytes(text: str, size: int) -> bytes | None:
    """`text` as `size` bytes, when it is exactly their lowercase hex (so it comes back
    the same), else None."""
    if len(text) != 2 * size:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if raw.hex() == text else None


def _packer(prefix: str, size: int) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """(pack, unpack) for ids made of `prefix` and `size` bytes in hex: stored as those
    bytes (a BLOB), any other text as it is (TEXT). Lossless: a BLOB is never text."""
    cut = len(prefix)

    def pack(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(prefix):
            raw = _hex_bytes(value[cut:], size)
            if raw is not None:
                return raw
        return value

    def unpack(stored: Any) -> Any:
        return prefix + stored.hex() if isinstance(stored, bytes) else stored

    return pack, unpack


#: Natural keys (importer._keys.NATURAL_PREFIX and 32 hex digits) as their 16 bytes;
#: keys from a key column, namespaced keys and content keys stay the text they are.
_pack_natural, _unpack_natural = _packer("nk:", 16)
#: Source-cell keys (importer._keys.SOURCE_PREFIX, "sk:") as a tag byte and their 16
#: bytes: 17 bytes, never mistaken for a natural key's 16.
_pack_source, _ = _packer("sk:", 16)
_SOURCE_TAG = b"\x01"


def pack_key(value: Any) -> Any:
    """A source key as stored: natural and source-cell keys as bytes, others as text."""
    if isinstance(value, str) and value.startswith("sk:"):
        raw = _pack_source(value)
        return _SOURCE_TAG + raw if isinstance(raw, bytes) else raw
    return _pack_natural(value)


def unpack_key(stored: Any) -> Any:
    """A stored source key as the normalizer makes it."""
    if isinstance(stored, bytes) and len(stored) == 17 and stored[:1] == _SOURCE_TAG:
        return "sk:" + stored[1:].hex()
    return _unpack_natural(stored)


#: Consent ids as ClinikAPI makes them ("consent_" and 24 hex digits) as 12 bytes.
pack_id, _unpack_consent = _packer("consent_", 12)
#: Request ids ("req_" and 16 hex digits) as 8 bytes.
pack_request_id, _unpack_request = _packer("req_", 8)


def unpack_id(stored: Any) -> Any:
    """A stored consent or request id as the server gave it."""
    if isinstance(stored, bytes):
        return (_unpack_consent if len(stored) == 12 else _unpack_request)(stored)
    return stored


def pack_hash(hex_digest: str | None) -> bytes | str | None:
    """A body's SHA-256 as stored: its first 16 bytes (any other text kept as it is)."""
    if hex_digest is not None and len(hex_digest) == 64:
        raw = _hex_bytes(hex_digest, 32)
        if raw is not None:
            return raw[:_PAYLOAD_HASH_BYTES]
    return hex_digest


def unpack_hash(stored: bytes | str | None) -> str | None:
    """A stored payload hash as hex: 32 digits (64 read from a ledger before schema 3)."""
    return stored.hex() if isinstance(stored, bytes) else stored


def same_payload(stored: str | None, body_hash: str) -> bool:
    """Whether a body of SHA-256 `body_hash` is the one whose hash the ledger holds."""
    if stored is None:
        return False
    if len(stored) == 2 * _PAYLOAD_HASH_BYTES and len(body_hash) == 64:
        return body_hash.startswith(stored)
    return stored == body_hash


def pack_field_hashes(hashes: dict[str, str]) -> bytes | str:
    """{field: 12 hex digits} as stored: a bitmap of the fields present (bit i:
    FIELD_ORDER[i]), then the 6 bytes of each one's hash in FIELD_ORDER. A field or hash
    this form cannot hold keeps the JSON form."""
    try:
        order = sorted((_FIELD_INDEX[name], digest) for name, digest in hashes.items())
    except KeyError:
        order = []
    text = "".join(digest for _, digest in order)
    # One conversion for the lot (a run packs a row's hashes on every commit).
    raw = _hex_bytes(text, _FIELD_HASH_BYTES * len(order)) if order else b""
    if (
        len(order) != len(hashes)
        or raw is None
        or any(len(digest) != 2 * _FIELD_HASH_BYTES for _, digest in order)
        or (order and order[-1][0] >= 8 * _BITMAP_BYTES)
    ):
        return json.dumps(hashes, separators=(",", ":"))
    bits = sum(1 << at for at, _ in order)
    return bits.to_bytes(_BITMAP_BYTES, "little") + raw


def _pack_field_hash(digest: str) -> bytes | str:
    """One field's short hash as `field_values` keys it: its 6 bytes (else the text)."""
    return _hex_bytes(digest, _FIELD_HASH_BYTES) or digest


def unpack_field_hashes(stored: bytes | str | None) -> dict[str, str]:
    if not stored:
        return {}
    if isinstance(stored, str):
        found: dict[str, str] = json.loads(stored)
        return found
    bits = int.from_bytes(stored[:_BITMAP_BYTES], "little")
    fields = [name for i, name in enumerate(FIELD_ORDER) if bits >> i & 1]
    step = _FIELD_HASH_BYTES
    return {
        name: stored[at : at + step].hex()
        for name, at in zip(fields, range(_BITMAP_BYTES, len(stored), step), strict=True)
    }


def _unpack_field_hashes_v2(stored: bytes | str | None) -> dict[str, str]:
    """Schema 2's packing: per field, its index in FIELD_ORDER (1 byte) and 6 bytes."""
    if not isinstance(stored, bytes):
        return unpack_field_hashes(stored)
    step = 1 + _FIELD_HASH_BYTES
    return {
        FIELD_ORDER[stored[i]]: stored[i + 1 : i + step].hex() for i in range(0, len(stored), step)
    }


@dataclass(frozen=True, slots=True)
class Source:
    """Where a row comes from: its key, file and row number (what every transition needs)."""

    key: str
    file: str
    row: int


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """What the ledger knows of one source key."""

    source_key: str
    state: RowState
    action: str | None
    consent_id: str | None
    payload_hash: str | None
    field_hashes: dict[str, str]
    pending_op: Op | None
    pending_body: str | None
    pending_hash: str | None
    error_code: str | None
    settle_after: str | None = None  # settling rows: look up no sooner than this
    updated_at: str | None = None  # in-flight rows: when the intent was committed


@dataclass(frozen=True, slots=True)
class RowError:
    """An error to note on a row: where it arose, its code and one-line message."""

    stage: str  # validate | sync | api
    code: str
    message: str
    cells: str | None = None  # JSON of the source cells (PHI), for failed.csv
    http_status: int | None = None
    request_id: str | None = None


class _Transitions:
    """The only ways a row of the ledger changes, each named for its event and with
    the states it moves between. Call them inside a transaction."""

    _db: sqlite3.Connection
    #: files.id by name, as this connection has committed or is writing them
    _files: dict[str, int]

    def intent(
        self,
        run_id: int,
        src: Source,
        op: Op,
        *,
        body: str,
        body_hash: str,
        patient_id: str | None,
        consent_id: str | None = None,
        previous_consent_id: str | None = None,
    ) -> None:
        """any -> in_flight: the request for `op` is about to be sent with `body`."""
        self._keep_before(run_id, src.key, posted=op in (Op.CREATE, Op.RECREATE))
        values: dict[str, Any] = {
            "state": RowState.IN_FLIGHT,
            "pending_op": op,
            "pending_body": body,
            "pending_hash": body_hash,
            "patient_id": patient_id,
            "settle_after": None,
        }
        if consent_id is not None:
            values["consent_id"] = pack_id(consent_id)
        if previous_consent_id is not None:
            values["previous_consent_id"] = pack_id(previous_consent_id)
        self._upsert(run_id, src, values)
        self._db.execute(
            "UPDATE rows SET attempts = attempts + 1 WHERE source_key = ?", (pack_key(src.key),)
        )

    def done(
        self,
        run_id: int,
        src: Source,
        op: Op,
        *,
        action: str,
        payload_hash: str,
        field_hashes: dict[str, str],
        patient_id: str | None,
        request_id: str | None,
        consent_id: str | None = None,
        cells_hash: int | None = None,
    ) -> None:
        """in_flight -> done: the server holds the row's body (as `consent_id`); its
        success is the row itself (no attempts row)."""
        values: dict[str, Any] = {
            **_CLEARED,
            "state": RowState.DONE,
            "action": action,
            "payload_hash": pack_hash(payload_hash),
            "field_hashes": pack_field_hashes(field_hashes),
            "cells_hash": cells_hash,
            "request_id": pack_request_id(request_id),
            "patient_id": patient_id,
        }
        if consent_id is not None:
            values["consent_id"] = pack_id(consent_id)
        self._upsert(run_id, src, values)

    def failed(self, run_id: int, src: Source, op: Op, error: RowError) -> None:
        """in_flight -> failed: the server refused the request, or retries ran out with
        the request certainly not applied (or harmless to send again: a PATCH)."""
        values = {**_error_values(error), "state": RowState.FAILED}
        values.update(pending_op=None, pending_body=None)
        self._upsert(run_id, src, values)
        self._attempt(run_id, src.key, op, "error", error=error)

    def outcome_unknown(self, run_id: int, src: Source, op: Op, error: RowError) -> None:
        """in_flight -> in_flight, error noted: a POST may have been stored; the next run
        looks it up before anything is posted again."""
        self._upsert(run_id, src, {**_error_values(error), "state": RowState.IN_FLIGHT})
        self._attempt(run_id, src.key, op, "error", error=error)

    def settling(
        self, run_id: int, src: Source, op: Op, error: RowError, *, settle_after: str
    ) -> None:
        """in_flight -> settling: a POST's answer was ambiguous; look the consent up no
        sooner than `settle_after` (kept across a crash), then adopt it or post again."""
        values = {**_error_values(error), "state": RowState.SETTLING}
        self._upsert(run_id, src, {**values, "settle_after": settle_after})
        self._attempt(run_id, src.key, op, "error", error=error)

    def gave_up(self, run_id: int, src: Source, op: Op, error: RowError) -> None:
        """settling -> failed as outcome_unknown: ambiguous `--max-attempts` times. The op
        stays, and the next run looks the consent up before posting."""
        values = {**_error_values(error), "state": RowState.FAILED, "settle_after": None}
        self._upsert(run_id, src, values)
        self._attempt(run_id, src.key, op, "error", error=error)

    def unsent(self, src: Source, before: RowState | None) -> None:
        """in_flight -> the state before the intent (pending if it was in flight too), or
        no row at all for a new one: the request was never sent."""
        key = pack_key(src.key)
        if before is None:
            self._db.execute("DELETE FROM rows WHERE source_key = ?", (key,))
            self._db.execute("DELETE FROM bodies WHERE source_key = ?", (key,))
            return
        back = RowState.PENDING if before is RowState.IN_FLIGHT else before
        changed = self._db.execute(
            "UPDATE rows SET state = ?, pending_op = NULL "
            "WHERE source_key = ? AND state = 'in_flight'",
            (back, key),
        )
        if changed.rowcount:
            self._db.execute("DELETE FROM bodies WHERE source_key = ?", (key,))

    def patch_failed(
        self,
        run_id: int,
        src: Source,
        op: Op,
        error: RowError,
        *,
        state: RowState,
        consent_id: str,
        field_hashes: dict[str, str],
    ) -> None:
        """in_flight -> done (or revoked), error noted: a PATCH of the row's consent was
        refused or went unanswered. The row keeps its consent (created.csv, verify and
        revocation still see it); `field_hashes` leave out the fields the PATCH carried,
        so the next run sends them again, whatever the server made of this one."""
        values = {**_error_values(error), "state": state, "consent_id": pack_id(consent_id)}
        values.update(
            pending_op=None,
            pending_body=None,
            pending_hash=None,
            settle_after=None,
            payload_hash=None,
            field_hashes=pack_field_hashes(field_hashes),
            cells_hash=None,
        )
        self._upsert(run_id, src, values)
        self._attempt(run_id, src.key, op, "error", error=error)

    def revoking(self, run_id: int, key: str) -> None:
        """done -> in_flight (revoke): the PATCH to inactive is about to be sent. A crash
        after it leaves the row to the next run's revocation, or to a PATCH that makes
        the consent active again if the row is back in the source."""
        self._keep_before(run_id, key, posted=False)
        self._db.execute(
            "UPDATE rows SET state = 'in_flight', pending_op = 'revoke', updated_at = ?, "
            "attempts = attempts + 1 WHERE source_key = ?",
            (_now(), pack_key(key)),
        )

    def revoke_failed(self, run_id: int, key: str, error: RowError) -> None:
        """in_flight (revoke) -> done, error noted: the consent may still be active (or
        not: a 5xx may have applied it); the next run with --revoke-missing tries again,
        and failed.csv lists the row. Its status is no longer taken as known, so a row
        back in the source is PATCHed (to its status, or active)."""
        stored_key = pack_key(key)
        found = self._db.execute(
            "SELECT field_hashes FROM rows WHERE source_key = ?", (stored_key,)
        ).fetchone()
        hashes = unpack_field_hashes(found[0]) if found else {}
        hashes.pop("status", None)
        self._db.execute(
            "UPDATE rows SET payload_hash = NULL, cells_hash = NULL, field_hashes = ? "
            "WHERE source_key = ?",
            (pack_field_hashes(hashes), stored_key),
        )
        self._db.execute(
            "UPDATE rows SET state = 'done', pending_op = NULL, "
            "error_stage = ?, error_code = ?, error_message = ?, http_status = ?, "
            "request_id = ?, updated_at = ? WHERE source_key = ?",
            (
                error.stage,
                error.code,
                error.message,
                error.http_status,
                pack_request_id(error.request_id),
                _now(),
                stored_key,
            ),
        )
        self._attempt(run_id, key, Op.REVOKE, "error", error=error)

    def revoked(self, run_id: int, key: str) -> None:
        """done -> revoked: the row left the source and its consent is now inactive."""
        self._db.execute(
            "UPDATE rows SET state = 'revoked', action = 'revoked', payload_hash = NULL, "
            "cells_hash = NULL, pending_op = NULL, error_stage = NULL, error_code = NULL, "
            "error_message = NULL, http_status = NULL, updated_at = ? WHERE source_key = ?",
            (_now(), pack_key(key)),
        )
        self._db.execute("DELETE FROM bodies WHERE source_key = ?", (pack_key(key),))

    def invalid(self, run_id: int, src: Source, error: RowError) -> None:
        """-> invalid, or the error noted on a row that holds a consent (its state kept):
        the row failed validation."""
        before = self._state(src.key)
        state = before if before in _HOLDS_CONSENT else RowState.INVALID
        self._upsert(run_id, src, {**_error_values(error), "state": state})

    def refused(self, run_id: int, src: Source, error: RowError) -> None:
        """The error noted, state kept: the row's edit cannot be applied (the consent
        stays as it is and in created.csv; failed.csv lists the row until it is fixed)."""
        self._db.execute(
            "UPDATE rows SET file = ?, source_row = ?, last_run = ?, error_stage = ?, "
            "error_code = ?, error_message = ?, http_status = NULL, request_id = NULL, "
            "cells = ?, updated_at = ? WHERE source_key = ?",
            (
                self._file_id(src.file),
                src.row,
                run_id,
                error.stage,
                error.code,
                error.message,
                error.cells,
                _now(),
                pack_key(src.key),
            ),
        )

    def seen(self, rows: Sequence[tuple[str, int | None]], run_id: int) -> None:
        """These done rows (key, cells digest) are in this run's input as the server
        holds them: note that they were seen, clear any error of an earlier edit that
        has since been undone, and keep their cells digest (a ledger from before digests
        gets them here, so its next rerun skips the rows in bulk)."""
        self._db.executemany(
            "UPDATE rows SET last_run = ?, cells_hash = coalesce(?, cells_hash), "
            "error_stage = NULL, error_code = NULL, error_message = NULL, cells = NULL "
            "WHERE source_key = ?",
            [(run_id, digest, pack_key(key)) for key, digest in rows],
        )

    def _keep_before(self, run_id: int, key: str, *, posted: bool) -> None:
        """Before a run's first request for a row: keep the row as the ledger holds it,
        so `undo` can give it back (later requests of the same run keep nothing)."""
        stored = pack_key(key)
        columns = ", ".join(UNDO_COLUMNS)
        kept = self._db.execute(
            f"INSERT OR IGNORE INTO run_changes (run_id, source_key, existed, posted, "  # noqa: S608
            f"{columns}, body, body_hash) SELECT ?, source_key, 1, ?, {columns}, "
            "(SELECT body FROM bodies AS b WHERE b.source_key = rows.source_key), "
            "(SELECT hash FROM bodies AS b WHERE b.source_key = rows.source_key) "
            "FROM rows WHERE source_key = ?",
            (run_id, posted, stored),
        )
        if not kept.rowcount:
            self._db.execute(
                "INSERT OR IGNORE INTO run_changes (run_id, source_key, existed, posted) "
                "VALUES (?, ?, 0, ?)",
                (run_id, stored, posted),
            )

    def keep_field_values(self, values: dict[str, Any], hashes: dict[str, str]) -> None:
        """Remember the patchable fields' values the server was sent, by their hash."""
        self._db.executemany(
            "INSERT INTO field_values VALUES (?, ?, ?) ON CONFLICT (field, hash) DO UPDATE "
            "SET value = NULL WHERE field_values.value IS NOT excluded.value",
            [
                (
                    _FIELD_INDEX[name],
                    _pack_field_hash(hashes[name]),
                    json.dumps(value, separators=(",", ":")),
                )
                for name, value in values.items()
                if name in hashes
            ],
        )

    def _upsert(self, run_id: int, src: Source, values: dict[str, Any]) -> None:
        """Create or update one row's record with `values` (column = value)."""
        RowState(values["state"])  # a state nobody listed is a bug: fail the transaction
        body = values.pop("pending_body", _KEEP)
        body_hash = values.pop("pending_hash", None)
        values["updated_at"] = _now()
        key = pack_key(src.key)
        columns = ", ".join(values)
        marks = ", ".join("?" * len(values))
        updates = ", ".join(f"{c} = excluded.{c}" for c in values)
        self._db.execute(
            f"INSERT INTO rows (source_key, file, source_row, first_run, last_run, "  # noqa: S608
            f"{columns}) VALUES (?, ?, ?, ?, ?, {marks}) ON CONFLICT (source_key) DO UPDATE SET "
            f"file = excluded.file, source_row = excluded.source_row, "
            f"last_run = excluded.last_run, {updates}",
            (key, self._file_id(src.file), src.row, run_id, run_id, *values.values()),
        )
        if body is None:
            self._db.execute("DELETE FROM bodies WHERE source_key = ?", (key,))
        elif body is not _KEEP:
            self._db.execute(
                "INSERT OR REPLACE INTO bodies VALUES (?, ?, ?)", (key, body, body_hash)
            )

    def _file_id(self, name: str) -> int:
        """The id of an input file's name in `files` (added the first time it is met)."""
        known = self._files.get(name)
        if known is None:
            self._db.execute("INSERT OR IGNORE INTO files (name) VALUES (?)", (name,))
            (known,) = self._db.execute("SELECT id FROM files WHERE name = ?", (name,)).fetchone()
            self._files[name] = known
        return int(known)

    def _attempt(self, run_id: int, key: str, op: Op, outcome: str, *, error: RowError) -> None:
        """A failed attempt (successes are not kept apart: the row holds them)."""
        self._db.execute(
            "INSERT INTO attempts (run_id, source_key, op, at, outcome, http_status, "
            "request_id, error_code) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                pack_key(key),
                op,
                now_iso(),
                outcome,
                error.http_status,
                error.request_id,
                error.code,
            ),
        )

    def _state(self, key: str) -> RowState | None:
        found = self._db.execute(
            "SELECT state FROM rows WHERE source_key = ?", (pack_key(key),)
        ).fetchone()
        return RowState(found[0]) if found else None


class _VerifyReads:
    """What `verify` reads of a ledger, as its schema (1, 2 or 3) stores it."""

    _db: sqlite3.Connection
    schema: str

    def base_url(self) -> str | None:
        """The server this ledger records imports into (None before any run)."""
        found = self._db.execute("SELECT value FROM meta WHERE key = 'base_url'").fetchone()
        return None if found is None else str(found[0])

    def _source_columns(self) -> str:
        """The FROM clause and the key and file columns, as this ledger's schema has them."""
        if self.schema == SCHEMA_VERSION:
            return (
                "unpack_key(source_key), f.name, {} FROM rows JOIN files AS f ON f.id = rows.file"
            )
        return "source_key, source_file, {} FROM rows"

    def done_consents(self) -> list[DoneConsent]:
        """Every row the ledger says the server holds (created, adopted, updated, recreated)."""
        columns = "source_row, unpack_id(consent_id), patient_id, payload_hash, field_hashes"
        query = (
            f"SELECT {self._source_columns().format(columns)} "
            "WHERE state = 'done' AND consent_id IS NOT NULL ORDER BY 2, source_row"
        )
        # Schema 2 packed field hashes otherwise: its rows are packed as schema 3 packs them.
        repack = self.schema == "2"
        return [
            DoneConsent(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                unpack_hash(r[5]),
                pack_field_hashes(_unpack_field_hashes_v2(r[6])) if repack else r[6],
            )
            for r in self._db.execute(query)
        ]

    def unknown_outcomes(self) -> list[UnknownOutcome]:
        """Rows whose POST may or may not have created a consent: failed as
        `outcome_unknown`, or a create still in flight or settling (left by a stopped run)."""
        columns = "source_row, unpack_id(consent_id), patient_id, state"
        return [
            UnknownOutcome(r[0], r[1], r[2], r[3], r[4], r[5])
            for r in self._db.execute(
                f"SELECT {self._source_columns().format(columns)} "
                "WHERE error_code = 'outcome_unknown' OR (state IN "
                "('in_flight', 'settling') AND pending_op IN ('create', 'recreate')) "
                "ORDER BY 2, source_row"
            )
        ]


@dataclass(frozen=True, slots=True)
class RunChange:
    """A row a run sent a request for: its record now and before that run (`UNDO_COLUMNS`,
    as stored), and how far an undo of the run took it."""

    stored_key: Any  # as rows.source_key holds it
    source_key: str
    source_file: str
    source_row: int
    existed: bool  # the ledger held a record of it before the run
    posted: bool  # the run's first request for it was a POST
    undo: str | None  # None, undoing (intent committed), undone
    later: bool  # a later run, not undone, sent a request for it too
    now: dict[str, Any] | None
    before: dict[str, Any]


class _UndoRecords:
    """What `undo` reads and writes: `run_changes`, `run_undo`, `field_values`. A ledger
    from before undo existed lacks the tables: read as empty."""

    _db: sqlite3.Connection

    def _has_undo_tables(self) -> bool:
        found = self._db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
            "AND name IN ('run_changes', 'run_undo', 'field_values')"
        ).fetchone()
        return bool(found[0] == 3)

    def undo_recorded(self, run_id: int) -> bool | None:
        """Whether run `run_id` recorded its changes for undo; None: no such run."""
        if self._db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            return None
        return self._has_undo_tables() and (
            self._db.execute("SELECT 1 FROM run_undo WHERE run_id = ?", (run_id,)).fetchone()
            is not None
        )

    def run_changes(self, run_id: int) -> list[RunChange]:
        """Every row run `run_id` sent a request for, by file and row."""
        now_columns = ", ".join(f"r.{c}" for c in UNDO_COLUMNS)
        before_columns = ", ".join(f"c.{c}" for c in UNDO_COLUMNS)
        query = (
            "SELECT c.source_key, c.existed, c.posted, c.undo, l.source_key IS NOT NULL, "  # noqa: S608 - constant column lists
            "r.source_key IS NOT NULL, coalesce(f.name, g.name), "
            f"coalesce(r.source_row, c.source_row), {now_columns}, {before_columns} "
            "FROM run_changes AS c LEFT JOIN rows AS r ON r.source_key = c.source_key "
            "LEFT JOIN files AS f ON f.id = r.file LEFT JOIN files AS g ON g.id = c.file "
            # Rows of later runs not undone, once each (joined, not a subquery a row: the
            # key is not first in run_changes' primary key).
            "LEFT JOIN (SELECT DISTINCT source_key FROM run_changes WHERE run_id > ? "
            "AND undo IS NOT 'undone') AS l ON l.source_key = c.source_key "
            "WHERE c.run_id = ? ORDER BY 7, 8"
        )
        width = len(UNDO_COLUMNS)
        found = []
        for r in self._db.execute(query, (run_id, run_id)):
            stored, existed, posted, undo, later, has_now, file, number = r[:8]
            now = dict(zip(UNDO_COLUMNS, r[8 : 8 + width], strict=True)) if has_now else None
            before = dict(zip(UNDO_COLUMNS, r[8 + width :], strict=True))
            found.append(
                RunChange(
                    stored,
                    unpack_key(stored),
                    file or "",
                    number or 0,
                    bool(existed),
                    bool(posted),
                    undo,
                    bool(later),
                    now,
                    before,
                )
            )
        return found

    def field_value(self, name: str, digest: str) -> str | None:
        """The JSON of the value of field `name` whose short hash is `digest`, if known."""
        hit = self._db.execute(
            "SELECT value FROM field_values WHERE field = ? AND hash = ?",
            (_FIELD_INDEX[name], _pack_field_hash(digest)),
        ).fetchone()
        return None if hit is None or hit[0] is None else str(hit[0])

    def undo_mark(self, run_id: int, stored_key: Any, undo: str) -> None:
        """Note how far the undo of run `run_id` took the row (intent: `undoing`)."""
        self._db.execute(
            "UPDATE run_changes SET undo = ? WHERE run_id = ? AND source_key = ?",
            (undo, run_id, stored_key),
        )

    def undo_restore(self, run_id: int, stored_key: Any) -> None:
        """The row's record as before run `run_id` (none if it had none); marked undone."""
        db = self._db
        db.execute("DELETE FROM rows WHERE source_key = ?", (stored_key,))
        db.execute("DELETE FROM bodies WHERE source_key = ?", (stored_key,))
        columns = ", ".join(UNDO_COLUMNS)
        db.execute(
            f"INSERT INTO rows (source_key, {columns}) SELECT source_key, {columns} "  # noqa: S608
            "FROM run_changes WHERE run_id = ? AND source_key = ? AND existed",
            (run_id, stored_key),
        )
        db.execute(
            "INSERT INTO bodies SELECT source_key, body, body_hash FROM run_changes "
            "WHERE run_id = ? AND source_key = ? AND existed AND body IS NOT NULL",
            (run_id, stored_key),
        )
        self.undo_mark(run_id, stored_key, "undone")

    def undo_finish(self, run_id: int) -> str | None:
        """Note the run's undo state for `status`: undone, partly undone, or None."""
        total, undone = self._db.execute(
            "SELECT count(*), count(*) FILTER (WHERE undo = 'undone') FROM run_changes "
            "WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        state = "undone" if undone == total else ("partly undone" if undone else None)
        self._db.execute(
            "UPDATE run_undo SET state = ?, undone_at = ? WHERE run_id = ?",
            (state, now_iso(), run_id),
        )
        return state

    def undo_states(self) -> dict[int, str]:
        """Runs `undo` took back, wholly ("undone") or partly ("partly undone")."""
        if not self._has_undo_tables():
            return {}
        return dict(self._db.execute("SELECT run_id, state FROM run_undo WHERE state NOT NULL"))


class _Evidence:
    """What `--revoke-missing` counts across runs (importer.engine._revocation) and what tells
    a restored copy of the ledger (importer.ledger._lineage): tables and keys of their own."""

    _db: sqlite3.Connection

    def count_miss(self, key: str, run_id: int) -> int:
        """Run `run_id` missed this done row too: its count of consecutive misses now
        (counted once a run)."""
        (misses,) = self._db.execute(
            "INSERT INTO revoke_misses VALUES (?, 1, ?) ON CONFLICT (source_key) DO UPDATE "
            "SET misses = misses + (last_run < excluded.last_run), last_run = excluded.last_run "
            "RETURNING misses",
            (pack_key(key), run_id),
        ).fetchone()
        return int(misses)

    def misses(self, key: str) -> int:
        """How many consecutive runs have missed this row so far (0: none)."""
        found = self._db.execute(
            "SELECT misses FROM revoke_misses WHERE source_key = ?", (pack_key(key),)
        ).fetchone()
        return int(found[0]) if found else 0

    def reset_misses(
        self, run_id: int, in_input: Callable[[list[str]], npt.NDArray[np.bool_]] | None
    ) -> None:
        """Forget the misses of rows this run's input held (seen again: counting starts
        over) and of rows no longer done (revoked, or gone from the ledger)."""
        self._db.execute(
            "DELETE FROM revoke_misses WHERE NOT EXISTS (SELECT 1 FROM rows AS r WHERE "
            "r.source_key = revoke_misses.source_key AND (r.state = 'done' OR "
            "(r.state = 'in_flight' AND r.pending_op = 'revoke')))"
        )
        if in_input is None:  # the rows this run recorded as seen
            self._db.execute(
                "DELETE FROM revoke_misses WHERE source_key IN "
                "(SELECT source_key FROM rows WHERE last_run >= ?)",
                (run_id,),
            )
            return
        stored = [key for (key,) in self._db.execute("SELECT source_key FROM revoke_misses")]
        for start in range(0, len(stored), 10_000):
            part = stored[start : start + 10_000]
            held = in_input([k if type(k) is str else unpack_key(k) for k in part]).tolist()
            self._db.executemany(
                "DELETE FROM revoke_misses WHERE source_key = ?",
                [(key,) for key, h in zip(part, held, strict=True) if h],
            )

    def tentative(self, keep: bool | None = None) -> None:
        """Open (None), keep (True) or undo (False) writes that may be taken back: a
        run's count of misses stands only if its revocation guards pass."""
        if keep is None:
            self._db.execute("SAVEPOINT tentative")
        elif keep:
            self._db.execute("RELEASE tentative")
        else:
            self._db.execute("ROLLBACK TO tentative")
            self._db.execute("RELEASE tentative")

    def full_reads(self) -> dict[str, tuple[int, int]]:
        """Each scope's last full read: (rows, run id)."""
        return {
            scope: (rows, run_id)
            for scope, rows, run_id in self._db.execute(
                "SELECT scope, rows, run_id FROM scope_reads"
            )
        }

    def record_full_reads(self, sizes: dict[str, int], run_id: int) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO scope_reads VALUES (?, ?, ?)",
            [(scope, rows, run_id) for scope, rows in sizes.items()],
        )

    def meta_value(self, key: str) -> str | None:
        found = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if found is None else str(found[0])

    def set_meta(self, key: str, value: str) -> None:
        """One statement, committed on its own (outside a transaction) or with it."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


class Ledger(_Transitions, _VerifyReads, _UndoRecords, _Evidence):
    """Synchronous access to the ledger file; one connection, used by one thread at a time.

    Rows change only through the named transitions of `_Transitions` (`intent`, `done`,
    `failed`, `patch_failed`, `outcome_unknown`, `settling`, `gave_up`, `unsent`,
    `revoking`, `revoke_failed`, `revoked`, `invalid`, `refused`, `seen`);
    call them inside a transaction (`AsyncLedger.write` runs each in one).
    """

    def __init__(self, path: str | Path, *, base_url: str | None = None) -> None:
        self.path = Path(path)
        self.schema = SCHEMA_VERSION
        self._reads: sqlite3.Connection | None = None
        self._files = {}
        if str(path) != ":memory:":  # in memory: for tests of the transitions
            _create_private(self.path)
        try:
            self._db = _connect(str(self.path), check_same_thread=False)
            _check_ours(self._db, self.path)
            _make_private(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = _schema_version(self._db)
            if version in _MIGRATES:
                columns = {r[1] for r in self._db.execute("PRAGMA table_info(rows)")}
                if "settle_after" not in columns:  # a ledger of a version before settling
                    self._db.execute("ALTER TABLE rows ADD COLUMN settle_after TEXT")
            elif version is None or version == SCHEMA_VERSION:
                self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            # A full disk or a read-only file system is the machine's, not the file's.
            resource = resource_error(exc, self.path, started=False)
            if resource is not None:
                raise resource from exc
            raise ConfigError(
                f"ledger {self.path} is not a consent-import ledger ({exc}); give another --ledger"
            ) from None
        try:
            self._check_meta(base_url)
        except sqlite3.OperationalError as exc:  # its first write: a full or read-only disk
            resource = resource_error(exc, self.path, started=False)
            if resource is None:
                raise
            raise resource from exc

    def _check_meta(self, base_url: str | None) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        version = meta.get("schema_version")
        if version in _MIGRATES:
            _migrate(self, version)
        elif version is not None and version != SCHEMA_VERSION:
            raise ConfigError(
                f"ledger {self.path} has schema version {version}; this consent-import "
                f"reads version {SCHEMA_VERSION}"
            )
        with self.transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
            #: how earlier runs read naive date-times: "utc" (before zones were stated)
            self.naive_times = meta.get("naive_times") or _first_naive_times(self._db)
            self.key_scheme = meta.get("key_scheme") or self._first_key_scheme()
            if base_url is None:
                return
            known = meta.get("base_url")
            if known is None or (known != base_url and self.created_nothing()):
                # A ledger that never created anything holds no consent ids to mix up,
                # so a first run with a wrong base URL does not bind it for good.
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('base_url', ?)", (base_url,))
            elif known != base_url:
                # Consent ids of one server mean nothing on another: never mix them.
                raise ConfigError(
                    f"ledger {self.path} records imports into {known}, not {base_url}; "
                    "use another --ledger for another server"
                )

    def _first_key_scheme(self) -> str:
        """How rows without a key column are keyed, recorded once per ledger. One that
        already holds rows was made before natural keys: it keeps hashing whole bodies
        ("content"), so its rows still match; a new ledger keys them by their source
        cells ("source", importer._keys.source_key). A ledger recorded as "natural" keeps
        natural keys."""
        held = self._db.execute("SELECT 1 FROM rows LIMIT 1").fetchone() is not None
        scheme = "content" if held else "source"
        self._db.execute("INSERT INTO meta VALUES ('key_scheme', ?)", (scheme,))
        return scheme

    def close(self) -> None:
        if self._reads is not None:
            self._reads.close()
        self._db.close()

    def copy_to(self, path: Path) -> None:
        """Write this ledger whole, as its connection sees it, into a new owner-only file
        (a ledger file deleted mid-run is still open here: what the run recorded is kept)."""
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        target = sqlite3.connect(path)
        try:
            self._db.backup(target)
        finally:
            target.close()

    def created_nothing(self) -> bool:
        """True when no row holds a consent id or may have created one (in flight)."""
        found = self._db.execute(
            "SELECT 1 FROM rows WHERE consent_id IS NOT NULL "
            "OR state IN ('in_flight', 'settling') OR error_code = 'outcome_unknown' LIMIT 1"
        ).fetchone()
        return found is None

    def transaction(self) -> _Transaction:
        return _Transaction(self._db, self._files)

    # -- runs ---------------------------------------------------------------------

    def begin_run(self, inputs: Sequence[str]) -> int:
        with self.transaction():
            # A run left "running" belongs to a process that is gone (the lock says so).
            self._db.execute("UPDATE runs SET status = 'crashed' WHERE status = 'running'")
            cursor = self._db.execute(
                "INSERT INTO runs (started_at, status, pid, inputs) VALUES (?, 'running', ?, ?)",
                (now_iso(), os.getpid(), json.dumps(list(inputs))),
            )
            # This run records what it changes, so `undo` can take it back.
            self._db.execute("INSERT INTO run_undo (run_id) VALUES (?)", (cursor.lastrowid,))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE runs SET finished_at = ?, status = ?, summary = ? WHERE id = ?",
                (now_iso(), status, json.dumps(summary), run_id),
            )

    def runs(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, started_at, finished_at, status, pid, inputs, summary FROM runs "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            {
                "id": r[0],
                "started_at": r[1],
                "finished_at": r[2],
                "status": r[3],
                "pid": r[4],
                "inputs": json.loads(r[5] or "[]"),
                "summary": json.loads(r[6]) if r[6] else None,
            }
            for r in rows
        ]

    # -- reads ----------------------------------------------------------------------

    def get(self, keys: Iterable[str]) -> dict[str, LedgerRow]:
        """The ledger's rows for these source keys (absent keys are new rows)."""
        found: dict[str, LedgerRow] = {}
        batch = [pack_key(key) for key in keys]
        for start in range(0, len(batch), 500):
            part = batch[start : start + 500]
            marks = ",".join("?" * len(part))
            # Only "?" placeholders are formatted into the query.
            query = f"{_SELECT_ROWS} WHERE source_key IN ({marks})"
            for r in self._db.execute(query, part):
                key = unpack_key(r[0])
                found[key] = LedgerRow(
                    key,
                    RowState(r[1]),
                    r[2],
                    unpack_id(r[3]),
                    unpack_hash(r[4]),
                    unpack_field_hashes(r[5]),
                    Op(r[6]) if r[6] else None,
                    r[7],
                    r[8],
                    r[9],
                    r[10],
                    _iso(r[11]),
                )
        return found

    def claimed_consents(self, consent_ids: Iterable[str]) -> set[str]:
        """Those of `consent_ids` the ledger already holds for some row."""
        ids = list(consent_ids)
        if not ids:
            return set()
        stored = ids if self.schema != SCHEMA_VERSION else [pack_id(i) for i in ids]
        marks = ",".join("?" * len(ids))
        return {
            unpack_id(r[0])
            for r in self._db.execute(
                f"SELECT consent_id FROM rows WHERE consent_id IN ({marks})",  # noqa: S608
                stored,
            )
        }

    def previous_consent(self, key: str) -> str | None:
        """The consent a recreate of this row replaced (its retire patches it inactive)."""
        found = self._db.execute(
            "SELECT previous_consent_id FROM rows WHERE source_key = ?", (pack_key(key),)
        ).fetchone()
        return unpack_id(found[0]) if found else None

    def unchanged(self, keys: list[str], digests: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """For each key, whether the ledger holds it as done, with no error noted, made
        from cells of this digest: one read for the lot, on a connection of its own (the
        reader's thread asks while the writer commits)."""
        import numpy as np  # here: `status` and `verify` open the ledger without numpy

        if self._reads is None:
            self._reads = _connect(str(self.path), check_same_thread=False)
            self._reads.execute("PRAGMA busy_timeout=5000")
        # Keys as stored: natural ones packed (by a function, a call a key: only if any).
        natural = any(key.startswith(("nk:", "sk:")) for key in keys)
        query = _UNCHANGED.format(key="pack_key(k.value)" if natural else "k.value")
        found = self._reads.execute(query, (json.dumps(keys),)).fetchall()
        same = np.zeros(len(keys), dtype=bool)
        if found:
            at, stored = np.array(found, dtype=np.int64).T
            same[at] = stored == digests[at]
        return same

    def created_rows(self) -> Iterator[sqlite3.Row]:
        """Rows whose consent the server holds as the row says (created.csv)."""
        return self._rows("state = 'done'")

    def rows_needing_a_person(self) -> Iterator[sqlite3.Row]:
        """Invalid and failed rows, and done rows with an error noted (failed.csv)."""
        return self._rows(_NEEDS_A_PERSON)

    def missing_rows(
        self,
        run_id: int | None = None,
        seen: Container[str] = frozenset(),
        *,
        in_input: Callable[[list[str]], npt.NDArray[np.bool_]] | None = None,
    ) -> Iterator[tuple[str, str, int, str | None]]:
        """Done rows missing from the source: (key, file, row, consent id) of those run
        `run_id` did not see; a dry run, which records nothing, passes the keys it saw.
        A run passes `in_input(keys)`, which says which keys its input held: rows found
        unchanged in bulk are not noted as seen one by one."""
        query = (
            "SELECT unpack_key(source_key), f.name, source_row, unpack_id(consent_id) "
            "FROM rows JOIN files AS f ON f.id = rows.file WHERE "
        )
        # A revoke a crash cut short is in flight: it is sent again.
        gone = (
            f"(state = 'done' OR ({_NOT_DONE} AND state = 'in_flight' AND pending_op = 'revoke'))"
        )
        if in_input is not None:
            # Keys only, then the few rows gone.
            cursor = self._db.execute("SELECT source_key FROM rows WHERE " + gone)  # noqa: S608 - constant text
            while part := cursor.fetchmany(10_000):
                stored = [key for (key,) in part]
                held = in_input([k if type(k) is str else unpack_key(k) for k in stored]).tolist()
                left = [key for key, h in zip(stored, held, strict=True) if not h]
                for start in range(0, len(left), 500):
                    some = left[start : start + 500]
                    marks = ",".join("?" * len(some))
                    yield from self._db.execute(query + f"source_key IN ({marks})", some)
            return
        query += gone
        if run_id is None:
            rows = self._db.execute(query)
        else:
            rows = self._db.execute(query + " AND (last_run IS NULL OR last_run < ?)", (run_id,))
        for key, file, number, consent_id in rows:
            if key not in seen:
                yield key, file, number, consent_id

    def sources(self) -> tuple[dict[str, int], dict[str, int]]:
        """Rows by source system ("(none)" for keys of no system) and by source file."""
        systems: dict[str, int] = {}
        files: dict[str, int] = {}
        for system, name, count in self._db.execute(
            "SELECT t.system, f.name, sum(t.n) FROM tally AS t JOIN files AS f ON f.id = t.file "
            "GROUP BY t.system, f.name HAVING sum(t.n) > 0"
        ):
            system = system or "(none)"
            systems[system] = systems.get(system, 0) + count
            files[name] = files.get(name, 0) + count
        return dict(sorted(systems.items())), dict(sorted(files.items()))

    def done_count(self) -> int:
        return self.counts().get(RowState.DONE, 0)

    def counts(self) -> dict[str, int]:
        """Rows by state."""
        return dict(
            self._db.execute(
                "SELECT state, sum(n) FROM tally GROUP BY state HAVING sum(n) > 0"
            ).fetchall()
        )

    def error_counts(self) -> dict[str, int]:
        """Rows by the error code noted on them; settling rows' ambiguous answers are no
        error (they wait for their lookup)."""
        return dict(
            self._db.execute(
                "SELECT error_code, count(*) FROM rows WHERE error_code IS NOT NULL "
                "AND state != 'settling' GROUP BY error_code"
            ).fetchall()
        )

    def _rows(self, where: str, params: Sequence[Any] = ()) -> Iterator[sqlite3.Row]:
        cursor = self._db.cursor()
        cursor.row_factory = sqlite3.Row
        yield from cursor.execute(
            f"{_READ_ROWS} WHERE {where} ORDER BY f.name, source_row",
            params,
        )

    # -- read-only access (verify) ----------------------------------------------------

    @classmethod
    def open_readonly(cls, path: str | Path) -> Ledger:
        """Open an existing ledger for reading only: nothing is created, migrated or
        written. A ledger of an older schema this code migrates is read as it is.

        Raises:
            ConfigError: no such file, not a ledger, or another schema version.
        """
        ledger = cls.__new__(cls)
        ledger.path = Path(path)
        ledger._reads = None
        ledger._files = {}
        if not ledger.path.is_file():
            raise ConfigError(f"ledger {ledger.path} not found; give the --ledger of a run")
        try:
            uri = ledger.path.resolve().as_uri() + "?mode=ro"
            ledger._db = _connect(uri, uri=True)
            ledger._db.execute("PRAGMA busy_timeout=5000")
            meta = dict(ledger._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"ledger {ledger.path} is not a consent-import ledger ({exc}); "
                "give another --ledger"
            ) from None
        version = meta.get("schema_version")
        if version is not None and version != SCHEMA_VERSION and version not in _MIGRATES:
            ledger._db.close()
            raise ConfigError(
                f"ledger {ledger.path} has schema version {version}; this consent-import "
                f"reads version {SCHEMA_VERSION}"
            )
        ledger.schema = version or SCHEMA_VERSION
        return ledger


def _first_naive_times(db: sqlite3.Connection) -> str:
    """How naive date-times are read when the mapping states no zone, recorded once per
    ledger: one holding rows already was written when they were read as UTC, and keeps
    that ("utc"), so upgrading moves no consent's instant; a new one stops ("stated":
    the mapping must say)."""
    held = db.execute("SELECT 1 FROM rows LIMIT 1").fetchone() is not None
    rule = "utc" if held else "stated"
    db.execute("INSERT INTO meta VALUES ('naive_times', ?)", (rule,))
    return rule


def record_mapping(ledger: Ledger, run_id: int, mapping: str, crosswalk: str) -> None:
    """Note the digests of the mapping and crosswalk run `run_id` reads with."""
    with ledger.transaction():
        ledger._db.execute(
            "INSERT OR REPLACE INTO run_mappings VALUES (?, ?, ?)", (run_id, mapping, crosswalk)
        )


def last_mapping(ledger: Ledger, before: int) -> tuple[int, str, str] | None:
    """(run id, mapping digest, crosswalk digest) of the last run before `before` that
    noted them, or None."""
    found = ledger._db.execute(
        "SELECT run_id, mapping, crosswalk FROM run_mappings WHERE run_id < ? "
        "ORDER BY run_id DESC LIMIT 1",
        (before,),
    ).fetchone()
    return None if found is None else (int(found[0]), str(found[1]), str(found[2]))


def _connect(database: str, **options: Any) -> sqlite3.Connection:
    """A connection to a ledger (autocommit: transactions are explicit), with the
    functions its queries pack and unpack keys and ids with."""
    db: sqlite3.Connection = sqlite3.connect(database, isolation_level=None, **options)
    db.create_function("pack_key", 1, pack_key, deterministic=True)
    db.create_function("unpack_key", 1, unpack_key, deterministic=True)
    db.create_function("unpack_id", 1, unpack_id, deterministic=True)
    return db


def _schema_version(db: sqlite3.Connection) -> str | None:
    """The schema version a ledger file records (None: a new file)."""
    try:
        found = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # no meta table: a new (empty) file
        return None
    return None if found is None else str(found[0])


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one at a time (triggers whole)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""


def _migrate(ledger: Ledger, version: str) -> None:
    """Rewrite a ledger of schema 1 or 2 as this schema, in place and once: the same
    rows and guarantees, their files named by id, natural keys and server ids packed,
    payload hashes cut to 16 bytes, field hashes packed with a bitmap, the counts of
    `tally` made, successes' attempts rows (schema 1) dropped, the file compacted.
    Digests of cells (schema 1) come with the next rerun."""
    started = time.monotonic()
    db = ledger._db
    db.create_function("pack_hash", 1, _repack_hash, deterministic=True)
    db.create_function("pack_fields", 1, _repack_field_hashes, deterministic=True)
    db.create_function("pack_id", 1, pack_id, deterministic=True)
    db.create_function("pack_request_id", 1, pack_request_id, deterministic=True)
    db.create_function("unix_ms", 1, _unix_ms, deterministic=True)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    old_columns = {r[1] for r in db.execute("PRAGMA table_info(rows)")}
    cells_hash = "cells_hash" if "cells_hash" in old_columns else "NULL"
    with ledger.transaction():
        db.execute("ALTER TABLE rows RENAME TO rows_old")
        db.execute("DROP INDEX IF EXISTS rows_state")
        db.execute("DROP INDEX IF EXISTS rows_errors")
        if "bodies" in tables:
            db.execute("ALTER TABLE bodies RENAME TO bodies_old")
        if "attempts" in tables:
            db.execute("ALTER TABLE attempts RENAME TO attempts_old")
        for statement in _statements(_SCHEMA):
            db.execute(statement)
        db.execute("DROP TRIGGER tally_insert")  # counted once, at the end
        db.execute("INSERT INTO files (name) SELECT DISTINCT source_file FROM rows_old")
        db.execute(
            "INSERT INTO rows (source_key, file, source_row, state, action, consent_id, "  # noqa: S608
            "previous_consent_id, patient_id, payload_hash, field_hashes, cells_hash, "
            "pending_op, error_stage, error_code, error_message, http_status, request_id, "
            "cells, settle_after, attempts, first_run, last_run, updated_at) "
            "SELECT pack_key(source_key), f.id, source_row, state, action, pack_id(consent_id), "
            "pack_id(previous_consent_id), patient_id, pack_hash(payload_hash), "
            f"pack_fields(field_hashes), {cells_hash}, pending_op, error_stage, error_code, "
            "error_message, http_status, pack_request_id(request_id), cells, settle_after, "
            "attempts, first_run, last_run, unix_ms(updated_at) "
            "FROM rows_old JOIN files AS f ON f.name = rows_old.source_file"
        )
        if "bodies" in tables:
            db.execute("INSERT INTO bodies SELECT pack_key(source_key), body, hash FROM bodies_old")
            db.execute("DROP TABLE bodies_old")
        if "pending_body" in old_columns:
            db.execute(
                "INSERT OR REPLACE INTO bodies SELECT pack_key(source_key), pending_body, "
                "pending_hash FROM rows_old WHERE pending_body IS NOT NULL"
            )
        if "attempts" in tables:
            db.execute(
                "INSERT INTO attempts SELECT id, run_id, pack_key(source_key), op, at, outcome, "
                "http_status, request_id, error_code FROM attempts_old WHERE outcome != 'ok'"
            )
            db.execute("DROP TABLE attempts_old")
        db.execute("DROP TABLE rows_old")
        db.execute(
            f"INSERT INTO tally SELECT file, {_SYSTEM_OF.format(k='source_key')}, state, "  # noqa: S608
            "count(*) FROM rows GROUP BY 1, 2, 3"
        )
        db.execute(next(s for s in _statements(_SCHEMA) if "tally_insert" in s))
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
    db.execute("VACUUM")
    log.warning(
        "ledger %s: upgraded from schema %s to %s in place, once (%.1f s): the same rows, "
        "in a smaller file",
        ledger.path,
        version,
        SCHEMA_VERSION,
        time.monotonic() - started,
    )


def _repack_hash(stored: bytes | str | None) -> bytes | str | None:
    """A payload hash of schema 1 (hex text) or 2 (32 bytes) as schema 3 keeps it."""
    if isinstance(stored, bytes):
        return stored[:_PAYLOAD_HASH_BYTES]
    return pack_hash(stored)


def _repack_field_hashes(stored: bytes | str | None) -> bytes | str | None:
    """Field hashes of schema 1 (JSON) or 2 (index and hash per field) as schema 3 packs them."""
    return pack_field_hashes(_unpack_field_hashes_v2(stored)) if stored else None


def _unix_ms(stored: int | str | None) -> int:
    if isinstance(stored, int):
        return stored
    try:
        return int(datetime.fromisoformat(stored or "").timestamp() * 1000)
    except ValueError:
        return _now()


def _error_values(error: RowError) -> dict[str, Any]:
    return {
        "error_stage": error.stage,
        "error_code": error.code,
        "error_message": error.message,
        "http_status": error.http_status,
        "request_id": pack_request_id(error.request_id),
        "cells": error.cells,
    }


def recorded_sources(path: Path) -> list[str]:
    """The input names every run of the ledger at `path` recorded (read-only; none if it
    is not there or not a ledger: opening it says so, with the right message)."""
    if not path.is_file():
        return []
    names: set[str] = set()
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            for (inputs,) in db.execute("SELECT inputs FROM runs"):
                names.update(json.loads(inputs or "[]"))
            try:
                names.update(n for (n,) in db.execute("SELECT name FROM files"))
            except sqlite3.OperationalError:  # a ledger of schema 1 or 2
                names.update(n for (n,) in db.execute("SELECT DISTINCT source_file FROM rows"))
        finally:
            db.close()
    except (sqlite3.Error, ValueError):
        return []
    return sorted(names)


def record_refused_run(
    path: Path,
    *,
    inputs: Sequence[str],
    started_at: str,
    finished_at: str,
    status: str,
    summary: dict[str, Any],
) -> int | None:
    """Add a run that stopped before it began to the ledger at `path`, if that is an
    existing ledger of this schema: its id, else None (also when it cannot be written).
    Never creates, migrates or binds a ledger (a refusal is no reason to)."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return None
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=5)
    except (OSError, sqlite3.Error):
        return None
    try:
        if _schema_version(db) != SCHEMA_VERSION:
            return None
        with db:
            cursor = db.execute(
                "INSERT INTO runs (started_at, finished_at, status, pid, inputs, summary) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    started_at,
                    finished_at,
                    status,
                    os.getpid(),
                    json.dumps(list(inputs)),
                    json.dumps(summary),
                ),
            )
        return cursor.lastrowid
    except sqlite3.Error:
        return None
    finally:
        db.close()


def _check_ours(db: sqlite3.Connection, path: Path) -> None:
    """Refuse another program's SQLite database before anything is written to it."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables and not {"meta", "runs", "rows"} <= tables:
        db.close()
        raise ConfigError(
            f"ledger {path} is not a consent-import ledger (an SQLite database of something "
            "else); it was left as it is: give another --ledger"
        )


def _make_private(path: Path) -> None:
    """An adopted file keeps no mode wider than owner-only (SQLite's -wal and -shm
    files take the database's mode when created)."""
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if file.exists() and file.stat().st_mode & 0o077:
            file.chmod(0o600)


class _Transaction:
    def __init__(self, db: sqlite3.Connection, files: dict[str, int]) -> None:
        self.db = db
        self.files = files

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind:
            self.db.execute("ROLLBACK")
            self.files.clear()  # ids of files added in the rolled-back writes are void
        else:
            self.db.execute("COMMIT")


class AsyncLedger:
    """Group commit for concurrent workers.

    Every `write` queues a function of the ledger and waits until the transaction that
    ran it has committed. One task takes everything queued, runs it in one transaction
    in a worker thread, commits, and wakes the writers: under load, one fsync serves
    many rows.

    Outcomes queued without waiting (`write_soon`) are bounded: at `max_unsettled` not
    yet committed, the next `write_soon` waits for a commit. A writer that falls behind
    slows the workers down instead of piling up rows in memory.
    """

    def __init__(self, ledger: Ledger, *, max_unsettled: int = 1024) -> None:
        if max_unsettled < 1:
            raise ValueError("max_unsettled must be at least 1")
        self.ledger = ledger
        self.max_unsettled = max_unsettled
        #: the most outcomes ever queued and not yet committed (for tests and benchmarks)
        self.peak_unsettled = 0
        self._queue: list[tuple[Callable[[Ledger], Any], _Waiter | None]] = []
        self._unsettled = 0
        self._wake = anyio.Event()
        self._room = anyio.Event()
        self._closed = False

    async def write(self, fn: Callable[[Ledger], T]) -> T:
        """Run `fn(ledger)` in the next grouped transaction; return once it is committed."""
        if self._closed:
            raise RuntimeError("ledger writer is closed")
        waiter = _Waiter()
        self._queue.append((fn, waiter))
        self._wake.set()
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[no-any-return]

    async def write_soon(self, fn: Callable[[Ledger], Any]) -> None:
        """Queue `fn(ledger)` for the next grouped transaction, without waiting for it
        to commit (only, at `max_unsettled` outcomes not yet committed, for room).

        For a row's outcome: until it commits, the row is in flight in the ledger (its
        intent was committed before the request), which a rerun settles by a lookup. So
        the worker need not wait, and takes its next row one commit sooner. Writes keep
        their order. If the transaction fails, the committer raises, ending the run.
        """
        while self._unsettled >= self.max_unsettled:
            await self._room.wait()
        if self._closed:
            raise RuntimeError("ledger writer is closed")
        self._unsettled += 1
        self.peak_unsettled = max(self.peak_unsettled, self._unsettled)
        self._queue.append((fn, None))
        self._wake.set()

    async def run_committer(self) -> None:
        """The committer task: run until `close()` and the queue is drained."""
        while True:
            if not self._queue:
                if self._closed:
                    return
                # Re-armed before waiting, and the queue checked after any wake: a write
                # or close between the two is never missed.
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            batch, self._queue = self._queue, []
            # Shielded: a cancelled run still commits what its workers already sent.
            with anyio.CancelScope(shield=True):
                error = await anyio.to_thread.run_sync(self._commit, batch)
            settled = 0
            for _, waiter in batch:
                if waiter is not None:
                    waiter.event.set()
                else:
                    settled += 1
            if error is not None and settled:
                raise error  # an outcome nobody waits for was not stored
            if settled:
                self._unsettled -= settled
                self._room.set()  # wake the outcomes waiting for room, then re-arm
                self._room = anyio.Event()

    def close(self) -> None:
        """Let the committer finish what is queued and stop."""
        self._closed = True
        self._wake.set()

    def _commit(
        self, batch: list[tuple[Callable[[Ledger], Any], _Waiter | None]]
    ) -> BaseException | None:
        """Run the batch in one transaction; the error that rolled it back, if any."""
        try:
            with self.ledger.transaction():
                for fn, waiter in batch:
                    result = fn(self.ledger)
                    if waiter is not None:
                        waiter.result = result
        except BaseException as exc:  # the whole group rolled back: tell every writer
            for _, waiter in batch:
                if waiter is not None:
                    waiter.error = exc
            return exc
        return None


class _Waiter:
    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _create_private(path: Path) -> None:
    """Create the ledger file readable by its owner only (it holds PHI); an existing file
    is adopted only when empty or an SQLite database (`_check_ours` looks inside), and is
    then made owner-only too, whatever mode it had."""
    if path.exists():
        if path.is_dir():
            raise ConfigError(f"ledger {path} is a directory; give a file path")
        with path.open("rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
        if head and head != _SQLITE_MAGIC:
            raise ConfigError(
                f"ledger {path} is not a consent-import ledger (not an SQLite database); "
                "it was left as it is: give another --ledger"
            )
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileNotFoundError:
        raise ConfigError(f"ledger {path}: folder {path.parent} does not exist") from None
    except PermissionError:
        raise ConfigError(f"ledger {path}: no permission to create it") from None
    os.close(fd)


@dataclass(frozen=True, slots=True)
class DoneConsent:
    """A row the ledger says the server holds, as `verify` reads it back."""

    source_key: str
    source_file: str
    source_row: int
    consent_id: str
    patient_id: str | None
    payload_hash: str | None
    # Kept as stored and unpacked when asked: a big ledger is read whole.
    field_hashes_stored: bytes | str | None

    @property
    def field_hashes(self) -> dict[str, str]:
        """{field: short hash} of the body the server should hold."""
        return unpack_field_hashes(self.field_hashes_stored)


@dataclass(frozen=True, slots=True)
class UnknownOutcome:
    """A row whose create may or may not have reached the server."""

    source_key: str
    source_file: str
    source_row: int
    consent_id: str | None
    patient_id: str | None
    state: str
