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
import re
import sqlite3
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from importer._errors import ConfigError, no_such_file
from importer._resources import resource_error

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
from importer.ledger._codec import (
    _iso,
    now_iso,
    pack_id,
    pack_key,
    unpack_field_hashes,
    unpack_hash,
    unpack_id,
    unpack_key,
)
from importer.ledger._migrations import _add_created_run, _first_naive_times, _migrate
from importer.ledger._reads import (
    _NEEDS_A_PERSON,
    _READ_ROWS,
    _Evidence,
    _UndoRecords,
    _VerifyReads,
)
from importer.ledger._schema import (
    _MIGRATES,
    _SCHEMA,
    SCHEMA_VERSION,
    LedgerRow,
    Op,
    RowState,
)
from importer.ledger._transitions import _NOT_DONE, _UNCHANGED, _Transitions

log = logging.getLogger("importer.ledger")


T = TypeVar("T")
_SCHEMA_TABLES = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")
_SELECT_ROWS = (
    "SELECT source_key, state, action, consent_id, payload_hash, field_hashes, pending_op, "
    "(SELECT body FROM bodies p WHERE p.source_key = rows.source_key), "
    "(SELECT hash FROM bodies p WHERE p.source_key = rows.source_key), "
    "error_code, settle_after, updated_at FROM rows"
)


class Ledger(_Transitions, _VerifyReads, _UndoRecords, _Evidence):
    """Synchronous access to the ledger file; one connection, used by one thread at a time.

    Rows change only through the named transitions of `_Transitions` (`intent`, `done`,
    `failed`, `patch_failed`, `outcome_unknown`, `settling`, `gave_up`, `unsent`,
    `revoking`, `revoke_failed`, `revoked`, `invalid`, `refused`, `seen`);
    call them inside a transaction (`AsyncLedger.write` runs each in one).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        base_url: str | None = None,
        copy_of: ReadOnlyLedger | None = None,
    ) -> None:
        """Open (or create) the ledger at `path`, bringing an older schema to this one.

        With `copy_of`, that ledger's contents are copied into memory and opened there
        instead: whatever this code writes (a migration, meta) goes to the copy, never to
        the file (`Ledger.for_reading`).
        """
        self.path = Path(path)
        self.schema = SCHEMA_VERSION
        self._reads: sqlite3.Connection | None = None
        self._files = {}
        self._values_kept = {}
        if str(path) != ":memory:" and copy_of is None:  # in memory: for transition tests
            _create_private(self.path)
        try:
            if copy_of is not None:
                self._db = _connect(":memory:", check_same_thread=False)
                copy_of._db.backup(self._db)
            else:
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
            _add_created_run(self._db)
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
        return _Transaction(self._db, self._files, self._values_kept)

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

    # -- read-only access (verify, status, a dry run) -----------------------------------

    @classmethod
    def open_readonly(cls, path: str | Path) -> ReadOnlyLedger:
        """Open an existing ledger for reading only (see `ReadOnlyLedger`)."""
        return ReadOnlyLedger(path)

    @classmethod
    def for_reading(cls, path: str | Path) -> Ledger:
        """The ledger at `path` as a run of this code would read it, the file never
        written: read-only when it is of this schema and whole; else (an older schema, a
        table or a meta entry missing) a copy in memory, brought to this schema there.

        Raises:
            ConfigError: no such file, not a ledger, or another schema version.
        """
        readonly = ReadOnlyLedger(path)
        if readonly.is_current():
            return readonly
        with closing(readonly):
            return cls(path, copy_of=readonly)


def record_mapping(ledger: Ledger, run_id: int, mapping: str, crosswalk: str) -> None:
    """Note the digests of the mapping and crosswalk run `run_id` reads with."""
    with ledger.transaction():
        ledger._db.execute(
            "INSERT OR REPLACE INTO run_mappings VALUES (?, ?, ?)", (run_id, mapping, crosswalk)
        )


def last_mapping(ledger: Ledger, before: int) -> tuple[int, str, str] | None:
    """(run id, mapping digest, crosswalk digest) of the last run before `before` that
    noted them and was neither refused nor undone, or None."""
    found = ledger._db.execute(
        # (runs compared with: not refused, which sent nothing, nor wholly undone)
        "SELECT m.run_id, m.mapping, m.crosswalk FROM run_mappings m "
        "JOIN runs r ON r.id = m.run_id LEFT JOIN run_undo u ON u.run_id = m.run_id "
        "WHERE m.run_id < ? AND r.status != 'refused' AND u.state IS NOT 'undone' "
        "ORDER BY m.run_id DESC LIMIT 1",
        (before,),
    ).fetchone()
    return None if found is None else (int(found[0]), str(found[1]), str(found[2]))


def record_identity(ledger: Ledger, run_id: int, fields: dict[str, list[str]]) -> None:
    """Note which headers fed each identity field in run `run_id` (headers, no cells)."""
    with ledger.transaction():
        ledger._db.execute(
            "INSERT OR REPLACE INTO run_identity VALUES (?, ?)",
            (run_id, json.dumps(fields, sort_keys=True)),
        )


def last_identity(ledger: Ledger, before: int) -> tuple[int, dict[str, list[str]]] | None:
    """(run id, {field: headers}) of the last run before `before` that noted them and
    was neither refused nor undone, or None."""
    found = ledger._db.execute(
        "SELECT m.run_id, m.fields FROM run_identity m "
        "JOIN runs r ON r.id = m.run_id LEFT JOIN run_undo u ON u.run_id = m.run_id "
        "WHERE m.run_id < ? AND r.status != 'refused' AND u.state IS NOT 'undone' "
        "ORDER BY m.run_id DESC LIMIT 1",
        (before,),
    ).fetchone()
    if found is None:
        return None
    fields: dict[str, list[str]] = json.loads(found[1])
    return int(found[0]), fields


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
    __slots__ = ("db", "files", "values")

    def __init__(
        self, db: sqlite3.Connection, files: dict[str, int], values: dict[Any, Any]
    ) -> None:
        self.db = db
        self.files = files
        self.values = values

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind:
            self.db.execute("ROLLBACK")
            # ids of files and field values added in the rolled-back writes are void
            self.files.clear()
            self.values.clear()
        else:
            self.db.execute("COMMIT")


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


class ReadOnlyLedger(Ledger):
    """An existing ledger opened for reading only: nothing is created, migrated or written.

    A ledger of an older schema this code migrates is read as it is. Its reads are the
    `Ledger`'s; its transitions fail, as the file is opened read-only.
    """

    def __init__(self, path: str | Path) -> None:
        """Open `path` read-only.

        Raises:
            ConfigError: no such file, not a ledger, or another schema version.
        """
        self.path = Path(path)
        self._reads = None
        self._files = {}
        self._values_kept = {}
        if not self.path.is_file():
            raise ConfigError(no_such_file("ledger", self.path, "give the --ledger of a run"))
        try:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self._db = _connect(uri, uri=True)
            self._db.execute("PRAGMA busy_timeout=5000")
            _check_ours(self._db, self.path)  # another program's database: said as a run says it
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"ledger {self.path} is not a consent-import ledger ({exc}); give another --ledger"
            ) from None
        version = meta.get("schema_version")
        if version is not None and version != SCHEMA_VERSION and version not in _MIGRATES:
            self._db.close()
            raise ConfigError(
                f"ledger {self.path} has schema version {version}; this consent-import "
                f"reads version {SCHEMA_VERSION}"
            )
        self.schema = version or SCHEMA_VERSION
        #: as `Ledger` reads them; "" when the ledger has not recorded them yet
        self.naive_times = meta.get("naive_times", "")
        self.key_scheme = meta.get("key_scheme", "")

    def is_current(self) -> bool:
        """Whether the file is of this schema, with every table and meta entry a run of
        this code would make: then reading it read-only reads what a run would."""
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        found = self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = {name for (name,) in found}
        return (
            meta.get("schema_version") == SCHEMA_VERSION
            and {"naive_times", "key_scheme"} <= meta.keys()
            and set(_SCHEMA_TABLES.findall(_SCHEMA)) <= tables
        )  # rows.created_run may be missing: the reads that use it read it as NULL
