"""Migrations: a schema-1 or schema-2 ledger brought to the current schema in place, once."""

from __future__ import annotations

import logging
import sqlite3
import time
from datetime import datetime
from typing import TYPE_CHECKING

from importer.ledger._codec import (
    _PAYLOAD_HASH_BYTES,
    _now,
    _unpack_field_hashes_v2,
    pack_field_hashes,
    pack_hash,
    pack_id,
    pack_request_id,
)
from importer.ledger._schema import (
    _SCHEMA,
    _SYSTEM_OF,
    CREATED_RUN,
    SCHEMA_VERSION,
    _statements,
)

if TYPE_CHECKING:
    from importer.ledger._ledger import Ledger

log = logging.getLogger("importer.ledger")


def _first_naive_times(db: sqlite3.Connection) -> str:
    """How naive date-times are read when the mapping states no zone, recorded once per
    ledger: one holding rows already was written when they were read as UTC, and keeps
    that ("utc"), so upgrading moves no consent's instant; a new one stops ("stated":
    the mapping must say)."""
    held = db.execute("SELECT 1 FROM rows LIMIT 1").fetchone() is not None
    rule = "utc" if held else "stated"
    db.execute("INSERT INTO meta VALUES ('naive_times', ?)", (rule,))
    return rule


def _add_created_run(db: sqlite3.Connection) -> None:
    """Give a ledger from before issue 24's `rows.created_run` the column (in `rows` and
    `run_changes`), in place: no row is rewritten (an added column reads as NULL in the
    rows before it), and the rows those runs created stay in `run_created`."""
    for table in ("rows", "run_changes"):
        # Each table on its own: a ledger from before undo gets run_changes from the
        # schema script, with the column already (review of issue 24).
        if not any(r[1] == CREATED_RUN for r in db.execute(f"PRAGMA table_info({table})")):
            db.execute(f"ALTER TABLE {table} ADD COLUMN {CREATED_RUN} INTEGER")


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
