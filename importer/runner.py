"""A whole `run`: check the settings, lock the ledger, import, stop well, summarise."""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import sniffio

from importer.client import ClinikClient, check_api_key, check_base_url, make_http_client
from importer.ledger import Ledger
from importer.limiter import Limiter
from importer.lock import LedgerLock
from importer.mapping import Mapping
from importer.normalize import Normalizer, Row
from importer.outputs import write_text
from importer.pool import Importer, RunOptions, RunStats, plan_row
from importer.preflight import CircuitBreaker, run_checks
from importer.reader import Table
from importer.report import ValidationSummary
from importer.revocation import RevokeCap, RevokePlan, RevokeScope
from importer.revocation import plan as plan_revocations
from importer.validate import open_tables

log = logging.getLogger("importer.run")
#: How many of the rows a dry run would revoke it keeps, to list.
REVOKES_LISTED = 50


@dataclass
class RunConfig:
    """Everything `consent-import run` takes, as a library call takes it."""

    inputs: Sequence[str | Path]
    ledger: Path = Path("consent-import.db")
    base_url: str = "https://api.clinikapi.com"
    api_key: str | None = field(default=None, repr=False)  # never printed whole
    concurrency: int = 8
    max_rps: float | None = None
    timeout_s: float = 30.0
    max_attempts: int = 5
    max_wait_s: float | None = None
    grace_s: float = 30.0
    on_immutable_change: str = "fail"
    revoke_missing: bool = False
    revoke_max: str | None = None  # N or P%; default 10% of the ledger's done rows
    skip_existing: bool = False
    #: check the server, and on a ledger that created nothing a sample of rows, first
    preflight: bool = True
    handle_signals: bool = True
    options: RunOptions = field(init=False)

    def __post_init__(self) -> None:
        self.options = RunOptions(
            concurrency=self.concurrency,
            max_attempts=self.max_attempts,
            on_immutable_change=self.on_immutable_change,
            revoke_missing=self.revoke_missing,
            skip_existing=self.skip_existing,
            revoke_scope=RevokeScope(cap=RevokeCap.parse(self.revoke_max)),
        )


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
) -> RunResult:
    """Import `config.inputs` into the API; blocking. Settings are checked before the lock."""
    api_key = check_api_key(config.api_key)
    base_url = check_base_url(config.base_url)
    tables = open_tables(config.inputs, mapping)
    _scope_revocations(config.options, mapping, tables)
    total = sum(t.count_rows() for t in tables)
    if on_total is not None:
        on_total(total)
    normalizer = Normalizer(mapping)
    rows: Iterator[Row] = chain.from_iterable(normalizer.rows(t) for t in tables)
    checked, window = 0, None
    if config.preflight:
        # Before the ledger exists or is bound to this base URL: a wrong one touches nothing.
        _, checked, window = run_checks(base_url, api_key, timeout_s=config.timeout_s)
    with LedgerLock(config.ledger):
        ledger = Ledger(config.ledger, base_url=base_url)
        normalizer.content_keys = ledger.key_scheme == "content"
        try:
            if config.preflight and not config.skip_existing and ledger.created_nothing():
                sampled, spent, _ = run_checks(
                    base_url,
                    api_key,
                    timeout_s=config.timeout_s,
                    max_wait_s=config.max_wait_s,
                    on_wait=on_wait,
                    rows=rows,
                    ledger=ledger.path,
                    window_limit=window,
                )
                rows, checked = sampled or rows, checked + spent
            run_id = ledger.begin_run([t.name for t in tables])
            stats, validation = anyio.run(
                _run_async,
                config,
                ledger,
                run_id,
                rows,
                api_key,
                base_url,
                on_progress,
                on_wait,
                backend_options={"use_uvloop": _has_uvloop()},
            )
            stats.skipped = validation.skipped = normalizer.skipped
            stats.source_key = normalizer.key_kind
            stats.requests += checked
            if stats.aborted:
                # Rows not yet read count too: everything the next run still has to do.
                stats.rows_left = max(total - stats.finished, stats.rows_left)
            status = "paused" if stats.paused else ("aborted" if stats.aborted else "finished")
            ledger.finish_run(run_id, status, stats.summary())
        finally:
            ledger.close()
    return RunResult(stats, run_id, config.ledger, validation, total)


def _scope_revocations(options: RunOptions, mapping: Mapping, tables: Sequence[Table]) -> None:
    """What --revoke-missing may touch: this mapping's system, these inputs' names."""
    options.revoke_scope = RevokeScope.of_run(
        mapping.system, [(t.name, t.columns) for t in tables], options.revoke_scope.cap
    )


def _has_uvloop() -> bool:
    """uvloop halves the event loop's share of a request's CPU; optional (no Windows)."""
    return importlib.util.find_spec("uvloop") is not None


async def _run_async(
    config: RunConfig,
    ledger: Ledger,
    run_id: int,
    rows: Iterator[Row],
    api_key: str,
    base_url: str,
    on_progress: Callable[[str, RunStats], None] | None,
    on_wait: Callable[[float, str], None] | None,
) -> tuple[RunStats, ValidationSummary]:
    # anyio asks sniffio which event loop runs, dozens of times a row (every lock, event,
    # sleep and thread hand-off), and sniffio finds asyncio by looking up the current task
    # each time. Trio answers it by setting this context variable; we do the same for the
    # asyncio loop we started.
    sniffio.current_async_library_cvar.set("asyncio")
    limiter = Limiter(
        concurrency=config.concurrency,
        max_rps=config.max_rps,
        max_wait_s=config.max_wait_s,
        on_wait=on_wait,
    )
    http = make_http_client(
        base_url=base_url, concurrency=config.concurrency, timeout_s=config.timeout_s
    )
    async with http:
        breaker = CircuitBreaker(urlsplit(base_url).netloc)
        client = ClinikClient(
            http, base_url=base_url, api_key=api_key, limiter=limiter, breaker=breaker
        )
        importer = Importer(
            client, ledger, run_id=run_id, options=config.options, on_progress=on_progress
        )
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                if config.handle_signals:
                    tg.start_soon(_watch_signals, importer, scope, config.grace_s)
                await importer.run(rows)
                tg.cancel_scope.cancel()
        stats = importer.stats
        if scope.cancelled_caught:
            stats.aborted = stats.aborted or "interrupted"
        stats.requests = client.stats.requests
        stats.rate_limited = client.stats.rate_limited
    return stats, importer.validation


async def _watch_signals(importer: Importer, scope: anyio.CancelScope, grace_s: float) -> None:
    """First Ctrl-C / SIGTERM: take no new rows, let in-flight requests settle for
    `grace_s`, then cancel; a second signal cancels at once."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if importer.stats.aborted:
                scope.cancel()
                return
            importer.stop(f"interrupted by {name}")
            scope.deadline = min(scope.deadline, anyio.current_time() + grace_s)


# -- dry run ----------------------------------------------------------------------


@dataclass
class Plan:
    """What a run would do, per action, without sending anything."""

    counts: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    invalid: int = 0
    revoke: RevokePlan | None = None  # with --revoke-missing and a ledger
    source_key: str = "column"  # as RunStats.source_key

    def add(self, action: str) -> None:
        self.counts[action] = self.counts.get(action, 0) + 1


def plan_import(
    inputs: Sequence[str | Path], mapping: Mapping, ledger_path: Path, options: RunOptions
) -> Plan:
    """Validate and compare with the ledger: what would be created, patched, skipped."""
    tables = open_tables(inputs, mapping)
    _scope_revocations(options, mapping, tables)
    normalizer = Normalizer(mapping)
    plan = Plan()
    context: AbstractContextManager[Ledger | None] = (
        closing(Ledger(ledger_path)) if ledger_path.exists() else nullcontext(None)
    )
    seen: set[str] = set()
    with context as ledger:
        normalizer.content_keys = ledger is not None and ledger.key_scheme == "content"
        batch: list[Row] = []
        for row in chain.from_iterable(normalizer.rows(t) for t in tables):
            batch.append(row)
            if options.revoke_missing:
                seen.add(row.source_key)
            if len(batch) >= 500:
                _plan_batch(batch, ledger, options, plan)
                batch = []
        _plan_batch(batch, ledger, options, plan)
        if ledger is not None and options.revoke_missing:
            plan.revoke = plan_revocations(
                ledger.missing_rows(seen=seen),
                ledger.done_count(),
                options.revoke_scope,
                keep=REVOKES_LISTED,
            )
    plan.source_key = normalizer.key_kind
    if normalizer.skipped:
        plan.counts["skipped"] = normalizer.skipped  # filtered out, or making no consent
    return plan


def _plan_batch(batch: list[Row], ledger: Ledger | None, options: RunOptions, plan: Plan) -> None:
    prior = ledger.get(r.source_key for r in batch) if ledger else {}
    for row in batch:
        plan.rows += 1
        if not row.valid:
            plan.invalid += 1
            plan.add("invalid")
            continue
        work = plan_row(row, prior.get(row.source_key), options)
        if work is None:
            plan.add("unchanged")
        elif isinstance(work, str):
            plan.add(work)
        elif work.maybe_sent:
            plan.add(f"{work.op.value} (after a lookup)")
        else:
            plan.add(work.op.value)


def summary_json(path: Path, stats: RunStats, extra: dict[str, Any] | None = None) -> None:
    """Counts and codes only, no PHI: written with the umask's mode, for log collectors."""
    document = {**stats.summary(), **(extra or {})}
    write_text(path, json.dumps(document, indent=2) + "\n", private=False)
