"""A whole `run`: check the settings, lock the ledger, import, stop well, summarise."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import anyio
import sniffio

from importer._errors import ConfigError, ConsentImportError
from importer._options import DEFAULTS, RunOptions
from importer._resources import ResourceGuard, resource_error
from importer._results import RunStats, ValidationSummary
from importer._rows import Row, Unchanged
from importer.api._build import open_client
from importer.api._client import check_api_key, check_base_url
from importer.api._limiter import Limiter
from importer.engine import _collector as collector
from importer.engine._engine import Engine, InInput
from importer.engine._gate import CreateCheck
from importer.engine._identity import identity_headers, note_identity, note_mapping, read_with
from importer.engine._input import RunInput
from importer.engine._observer import RunObserver
from importer.engine._preflight import SAMPLE_REQUESTS, run_checks
from importer.engine._revocation import RevokeScope
from importer.intake._mapping import Mapping
from importer.intake._reader import Table
from importer.ledger._ledger import Ledger
from importer.ledger._lineage import advance as advance_lineage
from importer.ledger._lineage import check as check_lineage
from importer.ledger._lock import LedgerLock
from importer.reports._outputs import write_text

log = logging.getLogger("importer.run")


@dataclass(frozen=True)
class RunConfig:
    """Everything `consent-import run` takes, as a library call takes it."""

    inputs: Sequence[str | Path]
    options: RunOptions = DEFAULTS
    api_key: str | None = field(default=None, repr=False)  # never printed whole
    handle_signals: bool = True


@dataclass
class RunResult:
    stats: RunStats
    run_id: int
    ledger: Path
    validation: ValidationSummary
    #: rows in the input files (a stopped run read fewer: `stats.rows`)
    total: int = 0

    @property
    def exit_code(self) -> int:
        """0 all rows done, 1 some invalid or failed, 2 revocations over --revoke-max
        (none made), 3 aborted; a budget pause is 0."""
        if self.stats.aborted and not self.stats.paused:
            return 3
        if self.stats.revoke_refused:
            return 2
        return 1 if self.stats.invalid or self.stats.failed else 0


def run_import(
    config: RunConfig,
    mapping: Mapping,
    *,
    on_progress: Callable[[str, RunStats], None] | None = None,
    on_wait: Callable[[float, str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    count_first: bool = True,
) -> RunResult:
    """Import `config.inputs` into the API; blocking. Settings are checked before the lock.

    `on_total` is told how many rows the input holds (see `_Total`): before the run with
    `count_first` (a progress bar), else only if the run waits or stops.
    """
    api_key = check_api_key(config.api_key)
    base_url = check_base_url(config.options.base_url)
    source = RunInput.open(config.inputs, mapping, config.options.revoke_max)
    tables, normalizer = source.tables, source.normalizer
    count = _Total(tables, on_total)
    if on_total is not None and count_first:
        count()
    on_wait = count.before_waits(on_wait)
    checked, window = 0, None
    options = config.options
    if options.preflight:
        # Before the ledger exists or is bound to this base URL: a wrong one touches nothing.
        _, checked, window = run_checks(base_url, api_key, timeout_s=options.timeout_s)
    with ResourceGuard(options.ledger) as guard, LedgerLock(options.ledger):
        ledger = Ledger(options.ledger, base_url=base_url)
        source.read_as(ledger)
        # Rows the ledger holds as done from the same cells come as counts, no bodies.
        rows: Iterator[Row | Unchanged] = chain.from_iterable(
            normalizer.rows_or_unchanged(t, ledger.unchanged) for t in tables
        )
        try:
            lineage = check_lineage(ledger)
            if lineage.undone_since and options.preflight:
                # Its done rows may be gone from the server: even a run that creates
                # nothing would call them unchanged (--skip-existing looks up new rows only).
                raise ConfigError(
                    f"{lineage.stale}, so rows it holds as done may be gone from the server; "
                    "nothing was sent. Run with the live ledger, or with a new ledger and "
                    "--skip-existing (it adopts what the server holds and creates the rest); "
                    "--no-preflight runs this copy as it is"
                )
            create_check = _create_check(options, ledger, window, lineage.stale)
            run_id = guard.begun(ledger.begin_run([t.name for t in tables]))
            changed = note_mapping(ledger, run_id, mapping)
            create_check = _identity_check(
                options,
                ledger,
                create_check,
                note_identity(ledger, run_id, identity_headers(mapping, tables)),
            )
            if create_check is None or not create_check.stale:
                advance_lineage(ledger, lineage, run_id)  # this run is the live ledger's
            else:
                log.warning("%s: this run creates nothing unless --skip-existing", lineage.stale)
            session = _Session(
                config,
                source.scope,
                ledger,
                run_id,
                rows,
                normalizer.in_input,
                api_key,
                base_url,
                on_progress,
                on_wait,
                create_check,
            )
            with collector.sending():
                observer = anyio.run(
                    _run_async, session, backend_options={"use_uvloop": _has_uvloop()}
                )
            stats, validation = observer.stats, observer.validation
            observer.preflight(checked)
            if stats.create_refused:
                refusal = ConfigError(stats.create_refused)
                summary = {**stats.summary(), "exit_code": refusal.exit_code}
                ledger.finish_run(run_id, "refused", {**summary, "error": stats.create_refused})
                # This run is the refusal: the monitor reports it, and records no other.
                refusal.run_id, refusal.stats = run_id, stats
                raise refusal
            validation.skipped = normalizer.skipped
            observer.input_read(
                skipped=normalizer.skipped,
                source_key=normalizer.key_kind,
                mapping_changed=changed,
            )
            read_with(normalizer)
            gone = _vanished(guard, observer, run_id)
            if stats.aborted:
                # Rows not yet read count too: everything the next run still has to do.
                total = count()
                observer.left_unread(total)
            else:
                total = normalizer.rows_read  # every row was read
            result = RunResult(stats, run_id, config.options.ledger, validation, total)
            _finish_run(ledger, result, observer, keep_records=gone)
        finally:
            ledger.close()
    return result


def _records_copy(path: Path, run_id: int) -> Path:
    return path.with_name(f"{path.name}.run-{run_id}")


def _vanished(guard: ResourceGuard, observer: RunObserver, run_id: int) -> bool:
    """Whether the ledger file went from under the run (deleted, or replaced by another
    file): the run then stops as aborted, saying so, and its records are kept."""
    what = guard.vanished()
    if what == "deleted":
        kept = "put back in its place: find what deleted it"
    elif what == "replaced":
        kept = f"kept in {_records_copy(guard.path, run_id)}: find which is the ledger"
    else:
        return False
    observer.halted(
        f"ledger {guard.path}: the file was {what} during the run; what this run recorded is "
        f"{kept}, then rerun with the same ledger"
    )
    return True


def _keep_records(ledger: Ledger, run_id: int) -> None:
    """The ledger file went from under the run: copy what its connection holds to a new
    file, and put it in the ledger's place if that is empty (never over another file)."""
    path = ledger.path
    copy = _records_copy(path, run_id)
    try:
        ledger.copy_to(copy)
        ledger.close()  # its -wal and -shm go with it, before the copy takes the name
        if not path.exists():
            os.replace(copy, path)
    except Exception as exc:  # said; the run's outcome stands
        log.error("ledger %s: could not keep this run's records (%s)", path, exc)


def _finish_run(
    ledger: Ledger, result: RunResult, observer: RunObserver, *, keep_records: bool
) -> None:
    """Record the run's end, its exit code and the rows left settling. On a disk still
    full this cannot be written: the run stays "running" in the ledger (the next run
    marks it crashed) and the summary file still tells the monitor."""
    stats = result.stats
    status = "paused" if stats.paused else ("aborted" if stats.aborted else "finished")
    try:
        # Rows a stop left waiting out --settle: neither failed nor done.
        observer.settling_left(ledger.counts().get("settling", 0))
        ledger.finish_run(result.run_id, status, {**stats.summary(), "exit_code": result.exit_code})
    except Exception as exc:
        resource = resource_error(exc, ledger.path, started=True)
        if resource is None:
            raise
        log.warning(
            "could not record the end of run %d in the ledger: %s", result.run_id, resource.cause
        )
    if keep_records:
        _keep_records(ledger, result.run_id)


def _identity_check(
    options: RunOptions, ledger: Ledger, check: CreateCheck | None, changed: str
) -> CreateCheck | None:
    """The check before creating, refusing any create when the identity columns
    `changed` (importer.engine._identity), unless --identity-changed accept."""
    if not changed:
        return check
    if options.identity_changed == "accept":
        log.warning("%s; --identity-changed accept: creating them", changed.split(":")[0])
        return check
    if check is None:
        return CreateCheck(ledger.path, 0, refuse=changed)
    return dataclasses.replace(check, refuse=changed)


def _create_check(
    options: RunOptions, ledger: Ledger, window: int | None, stale: str
) -> CreateCheck | None:
    """The check before creating (importer.engine._gate), unless the run adopts what exists
    (--skip-existing) or skips the checks: at most 20 lookups, and a tenth of the
    server's rate-limit window."""
    if not options.preflight or options.skip_existing:
        return None
    most = SAMPLE_REQUESTS if window is None else min(SAMPLE_REQUESTS, window // 10)
    if most < 1 and not stale:
        log.warning(
            "check before creating skipped: the server's rate-limit window is too small to "
            "spare requests for it",
            extra={"fields": {"event": "create_check", "skipped": True}},
        )
        return None
    return CreateCheck(ledger.path, most, ledger.created_nothing(), stale)


class _Total:
    """The rows of the input, counted at most once and told to `on_total`. Counting is a
    pass over the files that a nightly job would pay for nothing: a finished run counts
    its rows as it reads them; a wait (idle time) counts them for its ETA."""

    def __init__(self, tables: list[Table], on_total: Callable[[int], None] | None) -> None:
        self.tables, self.on_total = tables, on_total
        self.rows: int | None = None

    def __call__(self) -> int:
        if self.rows is None:
            self.rows = sum(t.count_rows() for t in self.tables)
            if self.on_total is not None:
                self.on_total(self.rows)
        return self.rows

    def before_waits(
        self, on_wait: Callable[[float, str], None] | None
    ) -> Callable[[float, str], None] | None:
        """`on_wait`, counting first when someone wants the total."""
        if on_wait is None or self.on_total is None:
            return on_wait
        told = on_wait

        def counted(seconds: float, reason: str) -> None:
            self()
            told(seconds, reason)

        return counted


def _has_uvloop() -> bool:
    """uvloop halves the event loop's share of a request's CPU; optional (no Windows)."""
    return importlib.util.find_spec("uvloop") is not None


@dataclass(frozen=True)
class _Session:
    """What the async part of a run works with: set up by `run_import`, under its lock."""

    config: RunConfig
    revoke_scope: RevokeScope
    ledger: Ledger
    run_id: int
    rows: Iterator[Row | Unchanged]
    in_input: InInput
    api_key: str
    base_url: str
    on_progress: Callable[[str, RunStats], None] | None
    on_wait: Callable[[float, str], None] | None
    create_check: CreateCheck | None = None


async def _run_async(session: _Session) -> RunObserver:
    config, ledger, base_url = session.config, session.ledger, session.base_url
    # anyio asks sniffio which event loop runs, dozens of times a row (every lock, event,
    # sleep and thread hand-off), and sniffio finds asyncio by looking up the current task
    # each time. Trio answers it by setting this context variable; we do the same for the
    # asyncio loop we started.
    sniffio.current_async_library_cvar.set("asyncio")
    options = config.options
    limiter = Limiter(
        concurrency=options.concurrency,
        max_rps=options.max_rps,
        max_wait_s=options.max_wait_s,
        on_wait=session.on_wait,
    )
    async with open_client(
        base_url,
        session.api_key,
        concurrency=options.concurrency,
        timeout_s=options.timeout_s,
        limiter=limiter,
        breaker=True,
    ) as client:
        engine = Engine(
            client,
            ledger,
            run_id=session.run_id,
            options=options,
            revoke_scope=session.revoke_scope,
            on_progress=session.on_progress,
            create_check=session.create_check,
        )
        with anyio.CancelScope() as scope:
            try:
                async with anyio.create_task_group() as tg:
                    if config.handle_signals:
                        tg.start_soon(_watch_signals, engine, scope, options.grace_s)
                    await engine.run(session.rows, session.in_input)
                    tg.cancel_scope.cancel()
            except Exception as exc:
                _stopped_by_resource(engine, exc, ledger.path)
        engine.observer.closed(cancelled=scope.cancelled_caught)
    return engine.observer


def _stopped_by_resource(engine: Engine, exc: Exception, path: Path) -> None:
    """A full disk (or the like) stopped the run mid-way: an abort, not a bug. The
    ledger's failed transaction rolled back whole; every row is done, or in flight
    (looked up by the next run), or as before. Anything else is re-raised."""
    resource = resource_error(exc, path, started=True)
    if resource is None:
        # A mapping or data error found mid-run (a naive time in a later chunk, a date
        # column read two ways): the one line it is, not an "internal error" of a group.
        inner: BaseException = exc
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if isinstance(inner, ConsentImportError):
            raise inner from exc
        raise exc
    log.error(
        "%s",
        resource,
        # CONSENT_IMPORT_DEBUG: the traceback too (the output changes, never the exit code).
        exc_info=exc if os.environ.get("CONSENT_IMPORT_DEBUG") else None,
        extra={"fields": {"event": "resource_error", "path": str(path)}},
    )
    # Not a pause, even if the budget had paused it: the run could not go on (exit 3).
    engine.observer.halted(str(resource))
    engine.observer.finished()


async def _watch_signals(engine: Engine, scope: anyio.CancelScope, grace_s: float) -> None:
    """First Ctrl-C / SIGTERM: take no new rows, let in-flight requests settle for
    `grace_s`, then cancel; a second signal cancels at once."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if engine.stats.aborted:
                scope.cancel()
                return
            engine.stop(f"interrupted by {name}")
            scope.deadline = min(scope.deadline, anyio.current_time() + grace_s)


def summary_json(path: Path, stats: RunStats, extra: dict[str, Any] | None = None) -> None:
    """Counts and codes only, no PHI: written with the umask's mode, for log collectors."""
    document = {**stats.summary(), **(extra or {})}
    write_text(path, json.dumps(document, indent=2) + "\n", private=False)
