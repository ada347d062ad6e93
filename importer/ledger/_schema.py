"""What the ledger holds: its schema and version, the row states and operations, and the
records its reads hand back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from importer.ledger._codec import (
    unpack_field_hashes,
)

SCHEMA_VERSION = "3"


#: Schema versions this code migrates in place, once, when it opens their ledger (and
#: reads as they are when it opens them read-only, for `verify`).
_MIGRATES = frozenset({"1", "2"})


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
    updated_at INTEGER NOT NULL,     -- Unix time in milliseconds
    created_run INTEGER              -- the run whose POST made the row, when the ledger
                                     -- held no record of it before (what `undo` of that
                                     -- run deletes; issue 24: not a run_created entry)
) WITHOUT ROWID
"""


#: The columns of `rows` (but its key) that `run_changes` keeps of a row before a run.
UNDO_COLUMNS = (
    "file", "source_row", "state", "action", "consent_id", "previous_consent_id",
    "patient_id", "payload_hash", "field_hashes", "cells_hash", "pending_op", "error_stage",
    "error_code", "error_message", "http_status", "request_id", "cells", "settle_after",
    "attempts", "first_run", "last_run", "updated_at", "created_run",
)  # fmt: skip


#: The column a ledger written before issue 24's created rows lacks (in `rows` and
#: `run_changes`): added when it is opened for writing, read as NULL when read-only.
CREATED_RUN = "created_run"


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
-- Which source columns fed each identity field (patientId, scope, category, dateTime) in
-- each run: a JSON object, field to its headers; headers only (no cells), so a run whose identity
-- columns changed stops before creating second consents (importer.engine._identity).
CREATE TABLE IF NOT EXISTS run_identity (
    run_id INTEGER PRIMARY KEY,
    fields TEXT NOT NULL
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
-- A row a run created that the ledger held no record of before (its first request was
-- a POST) is rows.created_run while no undo has marked it; once marked (`undo` as in
-- run_changes) it moves here. Ledgers from before issue 24's created_run hold every such
-- row here, and older ones in run_changes with existed = 0; all are read.
CREATE TABLE IF NOT EXISTS run_created (
    run_id INTEGER NOT NULL,
    source_key NOT NULL,             -- as rows.source_key
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
-- What each run changed of that evidence, as it was before the run first changed it:
-- what `undo` of the run puts back (review of issue 21: an undone run's misses no
-- longer count towards a revocation).
CREATE TABLE IF NOT EXISTS run_evidence (
    run_id INTEGER NOT NULL,
    kind TEXT NOT NULL,              -- miss (revoke_misses) | scope (scope_reads)
    key NOT NULL,                    -- revoke_misses.source_key, or scope_reads.scope
    existed INTEGER NOT NULL,        -- 0: no entry before the run
    count INTEGER,                   -- its misses, or rows
    last_run INTEGER,                -- its last_run, or run_id
    PRIMARY KEY (run_id, kind, key)
) WITHOUT ROWID;
"""  # noqa: S608 - constant text


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
class ErrorNote:
    """What the ledger notes of a row's error: where it arose, its code and one-line message
    (not `importer._rows.RowError`, the mapping's finding: this is what the ledger stores)."""

    stage: str  # validate | sync | api
    code: str
    message: str
    cells: str | None = None  # JSON of the source cells (PHI), for failed.csv
    http_status: int | None = None
    request_id: str | None = None


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


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one at a time (triggers whole)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""


def all_changes(*, created_table: bool = True, created_column: bool = True) -> str:
    """`run_changes`, `run_created` and the rows a run created (`rows.created_run`) as
    one table with the columns of run_changes: what undo reads. A ledger opened
    read-only from before lacks the table (before issue 24) or the column."""
    columns = ", ".join(
        c if c != CREATED_RUN or created_column else f"NULL AS {c}" for c in UNDO_COLUMNS
    )
    nulls = ", ".join("NULL" for _ in UNDO_COLUMNS)
    parts = [
        f"SELECT run_id, source_key, existed, posted, {columns}, body, body_hash, undo "  # noqa: S608 - constant column lists
        "FROM run_changes"
    ]
    if created_table:
        parts.append(
            f"SELECT run_id, source_key, 0, 1, {nulls}, NULL, NULL, undo FROM run_created"  # noqa: S608
        )
    if created_column:
        parts.append(
            f"SELECT created_run, source_key, 0, 1, {nulls}, NULL, NULL, NULL FROM rows "  # noqa: S608
            "WHERE created_run IS NOT NULL"
        )
    return "(" + " UNION ALL ".join(parts) + ")"
