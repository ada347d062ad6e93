"""The ledger's reads beyond one row: what verify checks, what undo puts back, and the
evidence of what a run revoked.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
from importer.ledger._codec import (
    _FIELD_INDEX,
    _pack_field_hash,
    _unpack_field_hashes_v2,
    now_iso,
    pack_field_hashes,
    pack_key,
    unpack_field_value,
    unpack_hash,
    unpack_key,
)
from importer.ledger._schema import (
    CREATED_RUN,
    SCHEMA_VERSION,
    UNDO_COLUMNS,
    DoneConsent,
    RunChange,
    UnknownOutcome,
    all_changes,
)
from importer.ledger._transitions import _NOT_DONE

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

    def run_status(self, run_id: int) -> str | None:
        """The status `runs` holds for run `run_id` (None: no such run)."""
        found = self._db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if found is None else str(found[0])

    def changed_anything(self, run_id: int) -> bool:
        """Whether run `run_id` sent a request for any row (kept in `run_changes`)."""
        if not self._has_undo_tables():
            return False
        found = self._db.execute(
            f"SELECT 1 FROM {self._all_changes()} WHERE run_id = ? LIMIT 1",  # noqa: S608
            (run_id,),
        ).fetchone()
        return found is not None

    def _all_changes(self) -> str:
        """`run_changes`, `run_created` and the rows a run created, as one (a ledger
        opened read-only from before issue 24 lacks the table or the column: then what
        it has holds every change)."""
        has = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'run_created'"
        ).fetchone()
        return all_changes(created_table=has is not None, created_column=self._created_column())

    def _created_column(self) -> bool:
        """Whether `rows` (and `run_changes`) have `created_run` (added on opening for
        writing; a ledger read-only from before lacks it)."""
        return any(r[1] == CREATED_RUN for r in self._db.execute("PRAGMA table_info(rows)"))

    def run_changes(self, run_id: int) -> list[RunChange]:
        """Every row run `run_id` sent a request for, by file and row."""
        created = self._created_column()
        now_columns = ", ".join(
            f"r.{c}" if c != CREATED_RUN or created else "NULL" for c in UNDO_COLUMNS
        )
        before_columns = ", ".join(f"c.{c}" for c in UNDO_COLUMNS)
        query = (
            "SELECT c.source_key, c.existed, c.posted, c.undo, l.source_key IS NOT NULL, "  # noqa: S608 - constant column lists
            "r.source_key IS NOT NULL, coalesce(f.name, g.name), "
            f"coalesce(r.source_row, c.source_row), {now_columns}, {before_columns} "
            f"FROM {self._all_changes()} AS c LEFT JOIN rows AS r ON r.source_key = c.source_key "
            "LEFT JOIN files AS f ON f.id = r.file LEFT JOIN files AS g ON g.id = c.file "
            # Rows of later runs not undone, once each (joined, not a subquery a row: the
            # key is not first in run_changes' primary key).
            f"LEFT JOIN (SELECT DISTINCT source_key FROM {self._all_changes()} WHERE run_id > ? "
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
        packed = _pack_field_hash(digest)
        if not isinstance(packed, bytes):
            hits = self._db.execute(
                "SELECT value FROM field_values WHERE field = ? AND hash = ?",
                (_FIELD_INDEX[name], packed),
            ).fetchall()
        else:
            # Its 4 bytes, or a ledger's 6 from before issue 24 that begin with them:
            # the keys from `packed` up to (not including) its successor.
            hits = self._db.execute(
                "SELECT value FROM field_values WHERE field = ? AND hash >= ? "
                "AND (? IS NULL OR hash < ?) AND typeof(hash) = 'blob'",
                (_FIELD_INDEX[name], packed, *[_successor(packed)] * 2),
            ).fetchall()
        values = {unpack_field_value(value) for (value,) in hits}
        # Two values under one short hash, or one known to be shared (NULL): unknown.
        return values.pop() if len(values) == 1 else None

    def undo_mark(self, run_id: int, stored_key: Any, undo: str) -> None:
        """Note how far the undo of run `run_id` took the row (intent: `undoing`)."""
        # Created by the run and not marked yet: its entry moves from `rows` to
        # `run_created` (a row undo deletes keeps its mark there).
        self._db.execute(
            "INSERT OR REPLACE INTO run_created (run_id, source_key, undo) SELECT created_run, "
            "source_key, NULL FROM rows WHERE source_key = ? AND created_run = ?",
            (stored_key, run_id),
        )
        self._db.execute(
            "UPDATE rows SET created_run = NULL WHERE source_key = ? AND created_run = ?",
            (stored_key, run_id),
        )
        for table in ("run_changes", "run_created"):
            self._db.execute(
                f"UPDATE {table} SET undo = ? WHERE run_id = ? AND source_key = ?",  # noqa: S608
                (undo, run_id, stored_key),
            )

    def undo_restore(self, run_id: int, stored_key: Any) -> None:
        """The row's record as before run `run_id` (none if it had none); marked undone."""
        db = self._db
        self.undo_mark(run_id, stored_key, "undone")  # before its row goes
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

    def undo_finish(self, run_id: int) -> str | None:
        """Note the run's undo state for `status`: undone, partly undone, or None."""
        total, undone = self._db.execute(
            "SELECT count(*), count(*) FILTER (WHERE undo = 'undone') "  # noqa: S608
            f"FROM {self._all_changes()} WHERE run_id = ?",
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


def _successor(prefix: bytes) -> bytes | None:
    """The least bytes greater than every bytes that starts with `prefix` (None: none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


#: Keep revoke_misses' entries (WHERE ...) as they are before run ? changes them.
_KEEP_MISSES_BEFORE = (
    "INSERT OR IGNORE INTO run_evidence SELECT ?, 'miss', source_key, 1, misses, last_run "
    "FROM revoke_misses"
)
#: Keep one key's entry (or that it had none) before run ? changes it.
_KEEP_MISS_BEFORE = (
    "INSERT OR IGNORE INTO run_evidence SELECT ?, 'miss', ?, m.source_key IS NOT NULL, "
    "m.misses, m.last_run FROM (SELECT 1) LEFT JOIN revoke_misses AS m ON m.source_key = ?"
)
#: run_evidence.kind: its table and that table's key column
_EVIDENCE = {"miss": ("revoke_misses", "source_key"), "scope": ("scope_reads", "scope")}


class _Evidence:
    """What `--revoke-missing` counts across runs (importer.engine._revocation) and what tells
    a restored copy of the ledger (importer.ledger._lineage): tables and keys of their own."""

    _db: sqlite3.Connection

    def count_miss(self, key: str, run_id: int) -> int:
        """Run `run_id` missed this done row too: its count of consecutive misses now
        (counted once a run)."""
        stored = pack_key(key)
        self._db.execute(_KEEP_MISS_BEFORE, (run_id, stored, stored))
        (misses,) = self._db.execute(
            "INSERT INTO revoke_misses VALUES (?, 1, ?) ON CONFLICT (source_key) DO UPDATE "
            "SET misses = misses + (last_run < excluded.last_run), last_run = excluded.last_run "
            "RETURNING misses",
            (stored, run_id),
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
        gone = (
            "NOT EXISTS (SELECT 1 FROM rows AS r WHERE "
            "r.source_key = revoke_misses.source_key AND (r.state = 'done' OR "
            "(r.state = 'in_flight' AND r.pending_op = 'revoke')))"
        )
        # Each entry as it was before this run changed it: `undo` of the run puts it back.
        self._db.execute(f"{_KEEP_MISSES_BEFORE} WHERE {gone}", (run_id,))
        self._db.execute(f"DELETE FROM revoke_misses WHERE {gone}")  # noqa: S608 - constant
        if in_input is None:  # the rows this run recorded as seen
            seen = "source_key IN (SELECT source_key FROM rows WHERE last_run >= ?)"
            self._db.execute(f"{_KEEP_MISSES_BEFORE} WHERE {seen}", (run_id, run_id))
            self._db.execute(f"DELETE FROM revoke_misses WHERE {seen}", (run_id,))  # noqa: S608
            return
        stored = [key for (key,) in self._db.execute("SELECT source_key FROM revoke_misses")]
        for start in range(0, len(stored), 10_000):
            part = stored[start : start + 10_000]
            held = in_input([k if type(k) is str else unpack_key(k) for k in part]).tolist()
            again = [key for key, h in zip(part, held, strict=True) if h]
            self._db.executemany(
                f"{_KEEP_MISSES_BEFORE} WHERE source_key = ?", [(run_id, key) for key in again]
            )
            self._db.executemany(
                "DELETE FROM revoke_misses WHERE source_key = ?", [(key,) for key in again]
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
            "INSERT OR IGNORE INTO run_evidence SELECT ?, 'scope', ?, s.scope IS NOT NULL, "
            "s.rows, s.run_id FROM (SELECT 1) LEFT JOIN scope_reads AS s ON s.scope = ?",
            [(run_id, scope, scope) for scope in sizes],
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO scope_reads VALUES (?, ?, ?)",
            [(scope, rows, run_id) for scope, rows in sizes.items()],
        )

    def undo_evidence(self, run_id: int, *, dry_run: bool = False) -> int:
        """Put `revoke_misses` and `scope_reads` back as they were before run `run_id`
        changed them (with `dry_run`, only count): each entry no later run changed since
        (that run's evidence stands until it is undone too). The entries put back."""
        found = self._db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'run_evidence'"
        ).fetchone()
        if not found[0]:  # a ledger from before undo kept its evidence
            return 0
        entries = self._db.execute(
            "SELECT kind, key, existed, count, last_run FROM run_evidence AS e "
            "WHERE run_id = ? AND NOT EXISTS (SELECT 1 FROM run_evidence AS l "
            "WHERE l.kind = e.kind AND l.key = e.key AND l.run_id > e.run_id)",
            (run_id,),
        ).fetchall()
        if dry_run:
            return len(entries)
        for kind, key, existed, count, last_run in entries:
            table, column = _EVIDENCE[kind]
            if existed:
                self._db.execute(
                    f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?)",  # noqa: S608 - constant
                    (key, count, last_run),
                )
            else:
                self._db.execute(f"DELETE FROM {table} WHERE {column} = ?", (key,))  # noqa: S608
            # Put back once; an entry a later run changed is kept for when it is undone.
            self._db.execute(
                "DELETE FROM run_evidence WHERE run_id = ? AND kind = ? AND key = ?",
                (run_id, kind, key),
            )
        return len(entries)

    def meta_value(self, key: str) -> str | None:
        found = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if found is None else str(found[0])

    def set_meta(self, key: str, value: str) -> None:
        """One statement, committed on its own (outside a transaction) or with it."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
