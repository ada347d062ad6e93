"""The row transitions: every change of a row's state, each one named and defined once."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from importer.ledger._codec import (
    _FIELD_INDEX,
    _now,
    _pack_field_hash,
    now_iso,
    pack_field_hashes,
    pack_field_value,
    pack_hash,
    pack_id,
    pack_key,
    pack_request_id,
    unpack_field_hashes,
)
from importer.ledger._schema import (
    _HOLDS_CONSENT,
    UNDO_COLUMNS,
    ErrorNote,
    Op,
    RowState,
    Source,
)

#: The condition of `rows_state`, written as the queries that use the index must say it.
_NOT_DONE = "state != 'done'"


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


class _Transitions:
    """The only ways a row of the ledger changes, each named for its event and with
    the states it moves between. Call them inside a transaction."""

    _db: sqlite3.Connection
    #: files.id by name, as this connection has committed or is writing them
    _files: dict[str, int]
    #: field_values as this connection has committed or is writing them: (field name,
    #: short hash as given) to the value's JSON, None when shared by two values (cleared
    #: with `_files`)
    _values_kept: dict[tuple[str, str], str | None]

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
        new: bool = False,
    ) -> None:
        """any -> in_flight: the request for `op` is about to be sent with `body`.

        `new`: the caller planned the row from no record in the ledger, so a POST keeps
        nothing for undo (a record this run made since notes the run in created_run), and
        the statement that would find nothing to keep is skipped (issue 24)."""
        posted = op in (Op.CREATE, Op.RECREATE)
        if not (new and posted):
            self._keep_before(run_id, src.key, posted=posted)
        key = pack_key(src.key)
        # A row it creates (no record before) notes the run in created_run, for undo.
        self._db.execute(
            _INTENT,
            (
                key,
                self._file_id(src.file),
                src.row,
                run_id,
                run_id,
                run_id if posted else None,
                op,
                patient_id,
                None if consent_id is None else pack_id(consent_id),
                None if previous_consent_id is None else pack_id(previous_consent_id),
                _now(),
            ),
        )
        self._db.execute("INSERT OR REPLACE INTO bodies VALUES (?, ?, ?)", (key, body, body_hash))

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
        success is the row itself (no attempts row).

        The row's intent made its record: one UPDATE by key (issue 24: not an upsert, which
        looks the key up to insert before it updates); a row of no record is inserted."""
        key = pack_key(src.key)
        packed_hash = pack_hash(payload_hash)
        packed_fields = pack_field_hashes(field_hashes)
        packed_request = pack_request_id(request_id)
        packed_id = None if consent_id is None else pack_id(consent_id)
        updated = self._db.execute(
            _DONE,
            (
                self._file_id(src.file),
                src.row,
                run_id,
                action,
                packed_hash,
                packed_fields,
                cells_hash,
                packed_request,
                patient_id,
                packed_id,
                _now(),
                key,
            ),
        )
        if updated.rowcount:
            self._db.execute("DELETE FROM bodies WHERE source_key = ?", (key,))
            return
        values: dict[str, Any] = {
            **_CLEARED,
            "state": RowState.DONE,
            "action": action,
            "payload_hash": packed_hash,
            "field_hashes": packed_fields,
            "cells_hash": cells_hash,
            "request_id": packed_request,
            "patient_id": patient_id,
        }
        if packed_id is not None:
            values["consent_id"] = packed_id
        self._upsert(run_id, src, values)

    def failed(self, run_id: int, src: Source, op: Op, error: ErrorNote) -> None:
        """in_flight -> failed: the server refused the request, or retries ran out with
        the request certainly not applied (or harmless to send again: a PATCH)."""
        values = {**_error_values(error), "state": RowState.FAILED}
        values.update(pending_op=None, pending_body=None)
        self._upsert(run_id, src, values)
        self._attempt(run_id, src.key, op, "error", error=error)

    def outcome_unknown(self, run_id: int, src: Source, op: Op, error: ErrorNote) -> None:
        """in_flight -> in_flight, error noted: a POST may have been stored; the next run
        looks it up before anything is posted again."""
        self._upsert(run_id, src, {**_error_values(error), "state": RowState.IN_FLIGHT})
        self._attempt(run_id, src.key, op, "error", error=error)

    def settling(
        self, run_id: int, src: Source, op: Op, error: ErrorNote, *, settle_after: str
    ) -> None:
        """in_flight -> settling: a POST's answer was ambiguous; look the consent up no
        sooner than `settle_after` (kept across a crash), then adopt it or post again."""
        values = {**_error_values(error), "state": RowState.SETTLING}
        self._upsert(run_id, src, {**values, "settle_after": settle_after})
        self._attempt(run_id, src.key, op, "error", error=error)

    def gave_up(self, run_id: int, src: Source, op: Op, error: ErrorNote) -> None:
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
        error: ErrorNote,
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

    def revoke_failed(self, run_id: int, key: str, error: ErrorNote) -> None:
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

    def invalid(self, run_id: int, src: Source, error: ErrorNote) -> None:
        """-> invalid, or the error noted on a row that holds a consent (its state kept):
        the row failed validation."""
        before = self._state(src.key)
        state = before if before in _HOLDS_CONSENT else RowState.INVALID
        self._upsert(run_id, src, {**_error_values(error), "state": state})

    def refused(self, run_id: int, src: Source, error: ErrorNote) -> None:
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
        so `undo` can give it back (later requests of the same run keep nothing). A row
        of no record whose first request is a POST keeps nothing here: its intent notes
        the run in `rows.created_run` (issue 24: not a wide entry of NULLs)."""
        stored = pack_key(key)
        kept = self._db.execute(_KEEP_BEFORE, (run_id, posted, stored, run_id))
        if kept.rowcount or posted:
            return
        self._db.execute(
            "INSERT OR IGNORE INTO run_changes (run_id, source_key, existed, posted) "
            "SELECT ?, ?, 0, 0 WHERE NOT EXISTS (SELECT 1 FROM rows WHERE source_key = ?)",
            (run_id, stored, stored),
        )

    def keep_field_values(self, values: dict[str, Any], hashes: dict[str, str]) -> None:
        """Remember the patchable fields' values the server was sent, by their hash
        (packed: `pack_field_value`; a ledger from before holds the text, the same value).
        A value this connection has already stored under its hash is not written again."""
        kept = self._values_kept
        entries = []
        for name, value in values.items():
            digest = hashes.get(name)
            if digest is None:
                continue
            text = _encode(value)
            # Kept by name and digest as given (issue 24: packed only when written; the
            # same slot either way, a hex digest packing to its bytes and any other
            # text staying itself).
            slot = (name, digest)
            known = kept.get(slot, _KEEP)
            if known is None or known == text:
                continue  # stored as it is, or known to be shared (NULL) already
            kept[slot] = text if known is _KEEP else None
            entries.append(
                (_FIELD_INDEX[name], _pack_field_hash(digest), pack_field_value(text), text)
            )
        if len(kept) > _VALUES_KEPT_MAX:
            kept.clear()
        if entries:
            self._db.executemany(_KEEP_VALUE, entries)

    def _upsert(self, run_id: int, src: Source, values: dict[str, Any]) -> None:
        """Create or update one row's record with `values` (column = value)."""
        RowState(values["state"])  # a state nobody listed is a bug: fail the transaction
        body = values.pop("pending_body", _KEEP)
        body_hash = values.pop("pending_hash", None)
        values["updated_at"] = _now()
        key = pack_key(src.key)
        names = tuple(values)
        sql = _UPSERTS.get(names)
        if sql is None:
            sql = _UPSERTS[names] = _upsert_sql(names)
        self._db.execute(
            sql, (key, self._file_id(src.file), src.row, run_id, run_id, *values.values())
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

    def _attempt(self, run_id: int, key: str, op: Op, outcome: str, *, error: ErrorNote) -> None:
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


#: `_upsert`'s statement by the columns it sets (a transition sets the same few each time).
_UPSERTS: dict[tuple[str, ...], str] = {}


def _upsert_sql(columns: tuple[str, ...]) -> str:
    marks = ", ".join("?" * len(columns))
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
    return (
        f"INSERT INTO rows (source_key, file, source_row, first_run, last_run, "  # noqa: S608
        f"{', '.join(columns)}) VALUES (?, ?, ?, ?, ?, {marks}) ON CONFLICT (source_key) "
        "DO UPDATE SET file = excluded.file, source_row = excluded.source_row, "
        f"last_run = excluded.last_run, {updates}"
    )


#: `intent`'s upsert: in flight with its op, one more attempt; created_run only when it
#: inserts the row (a record kept before keeps its own); ids only when given.
_INTENT = (
    "INSERT INTO rows (source_key, file, source_row, first_run, last_run, created_run, "
    "state, pending_op, patient_id, settle_after, consent_id, previous_consent_id, "
    "attempts, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'in_flight', ?, ?, NULL, ?, ?, 1, ?) "
    "ON CONFLICT (source_key) DO UPDATE SET file = excluded.file, "
    "source_row = excluded.source_row, last_run = excluded.last_run, state = excluded.state, "
    "pending_op = excluded.pending_op, patient_id = excluded.patient_id, settle_after = NULL, "
    "consent_id = coalesce(excluded.consent_id, consent_id), "
    "previous_consent_id = coalesce(excluded.previous_consent_id, previous_consent_id), "
    "attempts = attempts + 1, updated_at = excluded.updated_at"
)


#: `done`'s statement: the row's outcome on the record its intent made (the columns
#: `_CLEARED` names cleared; its body deleted apart), as `_upsert` would update it.
_DONE = (
    "UPDATE rows SET file = ?, source_row = ?, last_run = ?, state = 'done', action = ?, "
    "payload_hash = ?, field_hashes = ?, cells_hash = ?, request_id = ?, patient_id = ?, "
    "consent_id = coalesce(?, consent_id), pending_op = NULL, error_stage = NULL, "
    "error_code = NULL, error_message = NULL, http_status = NULL, cells = NULL, "
    "settle_after = NULL, updated_at = ? WHERE source_key = ?"
)


#: A row as the ledger holds it before run ? first sends a request for it (not again in
#: the same run, nor for a row that run created).
_KEEP_BEFORE = (
    f"INSERT OR IGNORE INTO run_changes (run_id, source_key, existed, posted, "  # noqa: S608
    f"{', '.join(UNDO_COLUMNS)}, body, body_hash) SELECT ?, source_key, 1, ?, "
    f"{', '.join(UNDO_COLUMNS)}, "
    "(SELECT body FROM bodies AS b WHERE b.source_key = rows.source_key), "
    "(SELECT hash FROM bodies AS b WHERE b.source_key = rows.source_key) "
    "FROM rows WHERE source_key = ? AND created_run IS NOT ?"
)


#: `keep_field_values`'s statement: a value under its (field, short hash), or NULL there
#: once two values share it (the packed value, then its text as a ledger before kept it).
_KEEP_VALUE = (
    "INSERT INTO field_values VALUES (?, ?, ?) ON CONFLICT (field, hash) DO UPDATE "
    "SET value = NULL WHERE field_values.value IS NOT excluded.value "
    "AND field_values.value IS NOT ?"
)


#: A patchable value's JSON as `field_values` keeps it: `json.dumps(value, separators=
#: (",", ":"))`, with one encoder (json.dumps makes one a call for these separators).
_encode = json.JSONEncoder(separators=(",", ":")).encode


#: Entries `keep_field_values` remembers before it forgets them all (a bound on memory).
_VALUES_KEPT_MAX = 100_000


def _error_values(error: ErrorNote) -> dict[str, Any]:
    return {
        "error_stage": error.stage,
        "error_code": error.code,
        "error_message": error.message,
        "http_status": error.http_status,
        "request_id": pack_request_id(error.request_id),
        "cells": error.cells,
    }
