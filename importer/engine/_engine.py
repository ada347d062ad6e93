"""The import engine: rows in, consents created or patched, the ledger kept true.

A row goes through four steps, in this order in this file:

1. **plan**: `importer.engine._plan.plan_row` decides from the row, its ledger record and the
   options: send an op, or nothing (unchanged, invalid, an edit the API cannot apply);
2. **execute**: one handler per `Op`, chosen from `Executor`'s table, retried by one
   `RetryPolicy`;
3. **record**: every step through a named transition of `importer.ledger._ledger.Ledger`
   (intent before the request, outcome after), grouped into shared commits;
4. **observe**: `importer.engine._observer.RunObserver` counts and reports progress.

The one rule that keeps consents from being created twice: once a POST may have reached
the server (timeout after sending, dropped connection, 5xx), the next step for that row
is a lookup, never a blind re-post. Only the lookup and the POST are retried
(`Executor._post`); adopting, patching and retiring come after and never lead back to a
POST. To change what happens to an in-flight row, read `Executor._create` (and
`_ambiguous`) and the ledger transitions they call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt
import tenacity
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from importer._errors import (
    ApiError,
    AuthError,
    BudgetWaitTooLong,
    ClientRequestError,
    ConsentImportError,
    LimiterClosed,
    NoResponseError,
    RateLimitedError,
    ServerError,
    ServerUnreachable,
)
from importer._options import RunOptions
from importer._results import RunStats, ValidationSummary
from importer.api._client import ClinikClient
from importer.api._lookup import find_consent
from importer.api._retry import retrying
from importer.engine._gate import CreateCheck, SampleGate
from importer.engine._observer import ProgressCallback, RunObserver
from importer.engine._plan import PATCHABLE, Verdict, immutable_changes, plan_row
from importer.engine._preflight import look_up_sample, sample_refusal
from importer.engine._revocation import RevokeScope
from importer.engine._revocation import weigh as weigh_revocations
from importer.engine._rowlog import log_invalid_row, row_fields
from importer.engine._settle import SettleQueue
from importer.intake._normalize import Row, Unchanged, sheet_note
from importer.ledger._ledger import AsyncLedger, Ledger, LedgerRow, Op, RowError, RowState, Source

log = logging.getLogger("importer.engine")
T = TypeVar("T")

#: Rows pulled from the reader per hop to the reader thread.
_BATCH = 256
#: Errors that are not the row's: they stop (or pause) the run, and `_do` handles them.
_RUN_STOPPERS = (AuthError, BudgetWaitTooLong, LimiterClosed, ServerUnreachable)


@dataclass
class Work:
    """One row's job for a worker: its plan, carried out."""

    op: Op
    row: Row
    prior: LedgerRow | None
    maybe_sent: bool = False  # an earlier POST of this row may have created the consent
    consent_id: str | None = None
    not_before: datetime | None = None  # look the consent up no sooner (UTC)
    ambiguous: int = 0  # ambiguous answers to this row's POSTs in this run
    settled: bool = False  # back from waiting out --settle: count what the lookup finds
    # An adopted consent's PATCH failed (a recreate): noted once the old one is retired.
    patch_error: tuple[RowError, dict[str, str]] | None = None
    _body: dict[str, Any] | None = None

    @property
    def src(self) -> Source:
        return Source(self.row.source_key, self.row.file, self.row.row)

    @property
    def body(self) -> dict[str, Any]:
        """The row's API body as a dict, parsed on first use (the POST itself sends the
        row's JSON as it is; only lookups, patches and adoption need the dict)."""
        if self._body is None:
            self._body = self.row.body()
        return self._body

    @property
    def prior_hashes(self) -> dict[str, str]:
        """The field hashes of what the server last held for this row (none if new)."""
        return self.prior.field_hashes if self.prior is not None else {}

    @property
    def patient_id(self) -> str | None:
        model = self.row.model
        return model.patient_id if model is not None else self.body.get("patientId")


@dataclass(frozen=True)
class RetryPolicy:
    """How every request of a run is retried: one policy, one count of retries (each
    reported with the row it was for, if any)."""

    attempts: int
    on_retry: Callable[[BaseException, int, Row | None, str | None], None]

    def __call__(self, work: Work | None = None) -> tenacity.AsyncRetrying:
        row, op = (work.row, work.op.value) if work is not None else (None, None)
        return retrying(
            attempts=self.attempts, on_retry=lambda exc, n: self.on_retry(exc, n, row, op)
        )


class _Stop(Exception):
    """Raised inside a worker when the run is stopping before this row is sent."""


class _Ambiguous(Exception):
    """A POST's answer says nothing of whether it stored the consent (with --settle)."""

    def __init__(self, error: ConsentImportError) -> None:
        super().__init__(str(error))
        self.error = error


class Engine:
    """Runs rows through the ledger and the API: two workers per request slot."""

    def __init__(
        self,
        client: ClinikClient,
        ledger: Ledger,
        *,
        run_id: int,
        options: RunOptions,
        revoke_scope: RevokeScope,
        on_progress: ProgressCallback | None = None,
        create_check: CreateCheck | None = None,
    ) -> None:
        self.client, self.ledger, self.run_id = client, ledger, run_id
        # Before the first create: hold jobs until a sample of the creates is looked up.
        self.create_check = create_check
        self._gate = SampleGate[Work](create_check.size) if create_check is not None else None
        self.options = options
        self.revoke_scope = revoke_scope
        self.observer = RunObserver(client.stats, on_progress)
        self.retry = RetryPolicy(options.max_attempts, self.observer.retried)
        # Outcomes not yet committed are bounded (each holds its row): two per worker.
        self.record = Recorder(ledger, run_id, max_unsettled=4 * options.concurrency)
        self._stop = False
        self._settling = SettleQueue[Work]()
        self.executor = Executor(self)

    @property
    def stats(self) -> RunStats:
        return self.observer.stats

    @property
    def validation(self) -> ValidationSummary:
        return self.observer.validation

    # -- the run ----------------------------------------------------------------

    async def run(
        self, rows: Iterator[Row | Unchanged], in_input: InInput | None = None
    ) -> RunStats:
        """Import every row of `rows`, then note (or revoke) rows gone from the source.

        `in_input(keys)` says which source keys the input held (`Normalizer.in_input`);
        without it, rows gone are the done rows this run did not record as seen (which
        rows that come as `Unchanged` counts are not).
        """
        self.observer.started()
        async with anyio.create_task_group() as outer:
            outer.start_soon(self.record.writer.run_committer)
            # One batch is read ahead (in a thread) while the one before it is planned
            # and sent: the requests mostly wait on the server, so reading takes that
            # time instead of coming after it.
            ahead, batches = anyio.create_memory_object_stream[list[Row | Unchanged]](1)
            outer.start_soon(self._read_ahead, rows, ahead)
            try:
                with batches:
                    complete = await self._pump(self._planned(batches))
                if complete and not self._stop:
                    await self._pump(self._missing_rows(in_input))
                else:  # rows read before the stop are in the source all the same
                    run_id = self.run_id
                    await self.record.read(lambda ledger: ledger.reset_misses(run_id, in_input))
            finally:
                self.record.writer.close()
        self.observer.finished()
        return self.stats

    @property
    def stopping(self) -> bool:
        return self._stop

    def stop(self, reason: str) -> None:
        """Take no new rows and start no new request; rows already sent settle. Safe to
        call more than once."""
        if not self._stop:
            log.warning("stopping: %s", reason)
            self._stop = True
            self.stats.aborted = self.stats.aborted or reason
            if self.client.limiter is not None:
                self.client.limiter.close()
            self._settling.stop()

    async def _pump(self, jobs: AsyncIterator[Work]) -> bool:
        """Feed `jobs`, then rows back from settling, to the workers; True when every job
        was taken (no stop). Returns once no row is at work or settling."""
        concurrency = self.options.concurrency
        send, receive = anyio.create_memory_object_stream[Work](concurrency * 2)
        self._settling = settling = SettleQueue[Work]()
        if self._stop:
            settling.stop()
        async with anyio.create_task_group() as workers:
            # Twice as many workers as requests may be in flight (the limiter holds them to
            # --concurrency): while one waits for its row's intent to commit, another's
            # request uses the slot. With one worker a slot, every commit wait left a slot
            # idle, and commits come in bursts.
            for _ in range(concurrency * 2):
                workers.start_soon(self._worker, receive.clone())
            receive.close()
            async with send, anyio.create_task_group() as feeders:
                observer = self.observer
                feeders.start_soon(settling.drain, send.clone(), observer.settled, observer.dropped)
                try:
                    async for work in jobs:
                        if self._stop:
                            break
                        if work.not_before is not None:
                            self.wait_out(work, _seconds_until(work.not_before))
                        else:
                            await settling.send(send, work)
                finally:
                    settling.input_done()
        return not self._stop

    async def _worker(self, receive: ObjectReceiveStream[Work]) -> None:
        async with receive:
            async for work in receive:
                try:
                    if self._stop:
                        self.observer.on("left")
                        continue
                    await self.executor.do(work)
                except _Stop:
                    self.observer.on("left")
                finally:
                    self._settling.finished()

    def wait_out(self, work: Work, seconds: float) -> None:
        """Park a row whose POST may have landed until the server has had `seconds`."""
        work.not_before, work.settled = None, True
        self._settling.push(anyio.current_time() + max(seconds, 0.0), work)
        self.observer.on("settling")

    # -- plan ---------------------------------------------------------------------

    async def _read_ahead(
        self, rows: Iterator[Row | Unchanged], ahead: MemoryObjectSendStream[list[Row | Unchanged]]
    ) -> None:
        """The input a batch at a time, one batch ahead of the planner; stops when the
        planner stops taking them."""
        async with ahead:
            while not self._stop:
                # Reading and normalizing is CPU work in pandas: a thread keeps the loop free.
                batch = await anyio.to_thread.run_sync(lambda: list(islice(rows, _BATCH)))
                if not batch:
                    return
                try:
                    await ahead.send(batch)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return

    async def _planned(
        self, batches: MemoryObjectReceiveStream[list[Row | Unchanged]]
    ) -> AsyncIterator[Work]:
        """The input's rows that need a request, planned a batch at a time."""
        async for batch in batches:
            if self._stop:
                return
            for work in await self._gated(await self._plan(batch)):
                yield work
        for work in await self._gated(None):  # the input's end: the sample is what it is
            yield work

    async def _gated(self, jobs: list[Work] | None) -> list[Work]:
        """The jobs that may go now: all once the check before creating passed; until
        then, held (importer.engine._gate). `None`: the input ended."""
        gate = self._gate
        if gate is None or gate.open:
            return jobs or []
        out: list[Work] = []
        for work in jobs or []:
            new = work.op is Op.CREATE and not work.maybe_sent and work.consent_id is None
            out += gate.hold(work, creates=new)
        if (jobs is None or gate.full) and not self._stop and await self._sample_clear(gate):
            out += gate.release()
        return out

    async def _sample_clear(self, gate: SampleGate[Work]) -> bool:
        """Look the sample of creates up; False (the run stopped) if any exists, if the
        ledger is stale (importer.ledger._lineage), or if the lookups could not finish."""
        check = self.create_check
        assert check is not None
        if not gate.creates:
            return True
        if check.stale:
            return self._refuse(
                f"{check.stale}; nothing was created. Pass --skip-existing to adopt what the "
                "server holds (one lookup per new row; the run then makes this ledger the "
                "live one), or --no-preflight to create without checking"
            )
        bodies = [work.body for work in gate.creates]
        try:
            checked, found = await look_up_sample(self.client, bodies, most=check.most)
        except LimiterClosed:
            return False
        except BudgetWaitTooLong as exc:
            if self.observer.paused(exc.reset_in_s):
                self.stop(
                    f"the rate-limit budget resets in {exc.reset_in_s:,.0f} s, past --max-wait"
                )
            return False
        except ConsentImportError as exc:
            self.stop(
                f"the check before creating could not finish ({exc}); nothing was created; "
                "rerun, or pass --no-preflight to skip the check"
            )
            return False
        if found:
            base_url = self.client.base_url
            return self._refuse(
                sample_refusal(found, checked, base_url, check.ledger, fresh=check.fresh)
            )
        log.info(
            "check before creating: none of %d sampled rows exists on the server",
            checked,
            extra={"fields": {"event": "create_check", "checked": checked, "found": 0}},
        )
        return True

    def _refuse(self, message: str) -> bool:
        """Create nothing: the run stops, and exits 2 with `message`."""
        self.stats.create_refused = message
        self.stop("the check before creating refused this run (nothing was created)")
        return False

    async def _plan(self, batch: list[Row | Unchanged]) -> list[Work]:
        """Plan each row from the ledger; record what needs no request."""
        rows: list[Row] = []
        for item in batch:
            if isinstance(item, Unchanged):
                self.observer.unchanged(item)  # found unchanged in bulk: nothing to record
            else:
                rows.append(item)
        if not rows:
            return []
        keys = [row.source_key for row in rows]
        prior = await self.record.read(lambda ledger: ledger.get(keys))
        jobs: list[Work] = []
        seen: list[Row] = []
        invalid: list[Row] = []
        refused: list[tuple[Row, LedgerRow]] = []
        for row in rows:
            self.observer.read(row)
            before = prior.get(row.source_key)
            plan = plan_row(row, before, self.options)
            if plan.verdict is Verdict.SEND:
                assert plan.op is not None
                jobs.append(
                    Work(plan.op, row, before, plan.lookup_first, plan.consent_id, plan.not_before)
                )
            elif plan.verdict is Verdict.UNCHANGED:
                seen.append(row)
                self.observer.on("unchanged")
            elif plan.verdict is Verdict.INVALID:
                invalid.append(row)
                log_invalid_row(log, row)
                self.observer.on("invalid")
            else:
                assert before is not None
                refused.append((row, before))
                self.observer.failed(plan.verdict.value)
        await self.record.planned(seen, invalid, refused)
        return jobs

    async def _missing_rows(self, in_input: InInput | None) -> AsyncIterator[Work]:
        """Rows done in earlier runs that this run's input no longer holds: counted, and
        revoked with --revoke-missing."""
        run_id, scope, stats = self.run_id, self.revoke_scope, self.stats
        sizes = scope.read_sizes({f: c.rows for f, c in self.validation.by_file.items()})
        after = self.options.revoke_after
        plan = await self.record.read(
            lambda ledger: weigh_revocations(
                ledger, run_id, scope, after=after, sizes=sizes, in_input=in_input
            )
        )
        stats.missing_from_source = plan.in_scope
        stats.revoke_out_of_scope = plan.out_of_scope
        if plan.in_scope:
            log.warning("%d rows are missing from the source since earlier runs", plan.in_scope)
        if not self.options.revoke_missing:
            return
        stats.revoke_refused, stats.revoke_note = plan.refusal, plan.note
        stats.revoke_reason = plan.reason
        if plan.refusal or plan.note:
            (log.error if plan.refusal else log.warning)(
                "%s", plan.refusal or plan.note, extra={"fields": plan.log_fields()}
            )
            return
        if plan.pending:
            stats.revoke_pending = plan.pending_total
            stats.revoke_pending_note = plan.pending_note()
            log.warning(
                "%s (--revoke-after %d)",
                stats.revoke_pending_note,
                plan.after,
                extra={
                    "fields": {
                        "event": "revoke_pending",
                        "pending": plan.pending_total,
                        "due": plan.due,
                        "revoke_after": plan.after,
                    }
                },
            )
        for key, file, number, consent_id in plan.rows:
            yield Work(Op.REVOKE, Row(file, number, key), None, consent_id=consent_id)


class Executor:
    """Execute: one handler per op, chosen from a table, retried by the run's policy."""

    def __init__(self, run: Engine) -> None:
        self.run = run
        self.client, self.options, self.retry = run.client, run.options, run.retry
        self.record, self.observer = run.record, run.observer
        self._handlers: dict[Op, Callable[[Work], Awaitable[None]]] = {
            Op.CREATE: self._create,
            Op.RECREATE: self._create,
            Op.PATCH: self._patch,
            Op.RETIRE: self._retire,
            Op.REVOKE: self._revoke,
        }

    async def do(self, work: Work) -> None:
        try:
            await self._handlers[work.op](work)
        except AuthError as exc:
            # The key, not the row: no row fails for it (a key revoked mid-run). A create
            # never sent is put back; one that may have landed, a patch, a retire or a
            # revoke stays in flight, and the next run with a good key resumes them.
            if work.op in (Op.CREATE, Op.RECREATE):
                await self.record.unsent(work)
            self.run.stop(f"authentication failed ({exc.status} {exc.code or 'no code'})")
            raise _Stop from None
        except BudgetWaitTooLong as exc:
            # Any operation's request: the budget resets past --max-wait, so pause the run.
            if self.observer.paused(exc.reset_in_s):
                self.run.stop(
                    f"the rate-limit budget resets in {exc.reset_in_s:,.0f} s, past --max-wait"
                )
            raise _Stop from None
        except LimiterClosed:
            # Stopped while waiting to send: the row's request never started (a patch or
            # retire intent stays in flight, which the next run settles).
            raise _Stop from None
        except ServerUnreachable as exc:
            # The server is gone: stop the run; the row is not failed. A create never sent
            # is put back, one that may have landed stays in flight for a lookup, and a
            # patch stays in flight to be sent again.
            if work.op in (Op.CREATE, Op.RECREATE):
                await self.record.unsent(work)
            self.run.stop(str(exc))
            raise _Stop from None

    async def _create(self, work: Work) -> None:
        """POST the row, looking it up first whenever an earlier POST may have landed;
        then take the consent as the row's (adopt, retire), never to POST again."""
        try:
            outcome = await self._post(work)
        except (BudgetWaitTooLong, LimiterClosed, ServerUnreachable, _Stop):
            await self.record.unsent(work)  # stays in flight if an earlier attempt may have landed
            raise  # `_do` pauses or stops the run
        except _Ambiguous as ambiguous:
            await self._ambiguous(work, ambiguous.error)
            return
        except AuthError:
            raise
        except ConsentImportError as exc:
            await self._breaker_verdict(exc)
            await self._failure(work, exc, sent=work.maybe_sent)
            return
        if isinstance(outcome, dict):
            await self._adopt(work, outcome)
        else:
            await self._created(work, *outcome)

    async def _post(self, work: Work) -> dict[str, Any] | tuple[str, str]:
        """The retried part of a create: the lookup and the POST, nothing after them.
        Returns the consent found, or the new consent's id and the request id."""
        async for attempt in self.retry(work):
            with attempt:
                if work.maybe_sent:
                    found = await self._lookup(work)
                    if work.settled:  # back from settling: count what it found
                        work.settled = False
                        adopted = found is not None
                        self.observer.on("settled_adopted" if adopted else "settled_reposted")
                    if found is not None:
                        return found
                    work.maybe_sent = False
                self._check_stop()
                await self.record.intent(work, work.op)
                work.maybe_sent = True
                try:
                    response = await self.client.create_consent(work.row.body_json.encode())
                except NoResponseError as exc:
                    work.maybe_sent = exc.sent
                    if exc.sent and self.options.settle_s > 0:
                        raise _Ambiguous(exc) from exc
                    raise
                except ServerError as exc:  # any 5xx: it may have stored the consent
                    if self.options.settle_s > 0:
                        raise _Ambiguous(exc) from exc
                    raise
                except (RateLimitedError, ClientRequestError, *_RUN_STOPPERS):
                    work.maybe_sent = False  # answered, or refused before sending
                    raise
                return str(response.data["id"]), response.request_id
        raise AssertionError("unreachable: the retry policy re-raises the last error")

    async def _lookup(self, work: Work) -> dict[str, Any] | None:
        """The consent an earlier POST of this row may have created, if the server has it
        and no other row of the ledger claims it. For a recreate, the consent it replaces
        is never a candidate: the edit may be in a field the lookup does not match on."""
        self._check_stop()
        self.observer.on("lookup")
        own = work.prior.consent_id if work.prior else None
        replaced: set[str] = set()
        if work.op is Op.RECREATE:
            key = work.row.source_key
            previous = await self.record.read(lambda ledger: ledger.previous_consent(key))
            replaced = {c for c in (own, previous) if c}
            own = None

        async def claimed(ids: list[str]) -> set[str]:
            return await self.record.read(lambda ledger: ledger.claimed_consents(ids))

        return await find_consent(self.client, work.body, claimed, own=own, replaced=replaced)

    async def _adopt(self, work: Work, consent: dict[str, Any]) -> None:
        """Take a found consent as the row's; patch it where it differs from the row. A
        PATCH that fails leaves the row on the found consent (never posted again)."""
        self.observer.on("found")
        consent_id = str(consent["id"])
        differing = {
            name: work.body[name]
            for name in PATCHABLE
            if name in work.body and consent.get(name) != work.body[name]
        }
        request_id = ""
        if differing:
            await self.record.intent(work, Op.PATCH, consent_id=consent_id, body=differing)
            try:
                request_id = await self._send_patch(work, consent_id, differing)
            except _RUN_STOPPERS:
                raise  # stays in flight as a PATCH of the found consent
            except ConsentImportError as exc:
                await self._patch_failed(work, exc, consent_id, differing, adopted=True)
                return
        await self._created(work, consent_id, request_id, action="adopted")

    async def _created(
        self, work: Work, consent_id: str, request_id: str, *, action: str = "created"
    ) -> None:
        if work.op is Op.RECREATE:
            # The new consent exists: retire the old one next (a crash here resumes there).
            await self.record.intent(work, Op.RETIRE, consent_id=consent_id)
            work.consent_id = consent_id
            await self._retire(work)
            return
        await self.record.done(work, action, request_id, consent_id=consent_id)
        self.observer.on(action)

    async def _patch(self, work: Work) -> None:
        assert work.consent_id is not None
        consent_id = work.consent_id
        body = {name: work.body[name] for name in PATCHABLE if name in work.body}
        # Always a status: a row without one means the server's default, and its consent
        # may be inactive (revoked, then back in the source).
        body.setdefault("status", "active")
        self._check_stop()
        await self.record.intent(work, Op.PATCH, consent_id=consent_id)
        try:
            request_id = await self._send_patch(work, consent_id, body)
        except _RUN_STOPPERS:
            raise  # not the row's failure: `_do` stops or pauses the run
        except ConsentImportError as exc:
            await self._patch_failed(work, exc, consent_id, body)
            return
        await self.record.done(work, "updated", request_id)
        self.observer.on("updated")

    async def _send_patch(self, work: Work, consent_id: str, body: dict[str, Any]) -> str:
        """PATCH a consent with the run's retries; the request id of the answer."""
        async for attempt in self.retry(work):
            with attempt:
                self._check_stop()
                return (await self.client.patch_consent(consent_id, body)).request_id
        raise AssertionError("unreachable: the retry policy re-raises the last error")

    async def _patch_failed(
        self,
        work: Work,
        exc: ConsentImportError,
        consent_id: str,
        body: dict[str, Any],
        *,
        adopted: bool = False,
    ) -> None:
        """A PATCH of the row's consent failed: the row keeps the consent, with the error
        noted, and the next run sends the fields again. A recreate that adopted its new
        consent still retires the old one (a rerun then completes it)."""
        await self._breaker_verdict(exc)
        code = error_code(exc)
        if isinstance(exc, NoResponseError) and exc.sent:
            code = "patch_outcome_unknown"  # not a create's: no lookup, a PATCH again
        self._log_failed(work, exc, code)
        error = replace(_row_error(work, exc), code=code)
        hashes = work.row.field_hashes() if adopted else dict(work.prior_hashes)
        kept = {name: h for name, h in hashes.items() if name not in body}
        if adopted and work.op is Op.RECREATE:
            # The found consent is the row's new one: the old one is retired all the same.
            work.patch_error = (error, kept)
            await self.record.intent(work, Op.RETIRE, consent_id=consent_id)
            work.consent_id = consent_id
            await self._retire(work)
            return
        revoked = work.prior is not None and work.prior.state is RowState.REVOKED
        state = RowState.REVOKED if revoked and not adopted else RowState.DONE
        await self.record.patch_failed(work, error, state, consent_id, kept)
        self.observer.failed(code)

    async def _retire(self, work: Work) -> None:
        """After a recreate: the replaced consent becomes inactive. A PATCH that keeps
        failing leaves the row in flight with the retire, which a rerun sends again."""
        key = work.row.source_key
        old = await self.record.read(lambda ledger: ledger.previous_consent(key))
        if old:
            try:
                await _send_inactive(self.client, self.retry, old)
            except _RUN_STOPPERS:
                raise
            except ConsentImportError as exc:
                await self._breaker_verdict(exc)
                code = error_code(exc)
                self._log_failed(work, exc, code)
                await self.record.retire_pending(work, _row_error(work, exc))
                self.observer.failed(code)
                return
        if work.patch_error is not None:  # the new consent's PATCH failed: note it now
            error, kept = work.patch_error
            assert work.consent_id is not None
            await self.record.patch_failed(work, error, RowState.DONE, work.consent_id, kept)
            self.observer.failed(error.code)
            return
        await self.record.done(work, "recreated", "", consent_id=work.consent_id)
        self.observer.on("recreated")

    async def _revoke(self, work: Work) -> None:
        """A row gone from the source: its consent becomes inactive. The intent comes
        first; a PATCH that keeps failing leaves the row done with the error noted, for
        the next --revoke-missing run (failed.csv lists it until then)."""
        assert work.consent_id is not None
        self._check_stop()
        key = work.row.source_key
        await self.record.revoking(key)
        try:
            await _send_inactive(self.client, self.retry, work.consent_id)
        except _RUN_STOPPERS:
            raise
        except ConsentImportError as exc:
            await self._breaker_verdict(exc)
            code = error_code(exc)
            self._log_failed(work, exc, code)
            await self.record.revoke_failed(key, _row_error(work, exc))
            self.observer.failed(code)
            return
        await self.record.revoked(key)
        self.observer.on("revoked")

    def _log_failed(self, work: Work, exc: ConsentImportError, code: str) -> None:
        """The row_failed line: file, row, code, status and request id (never a value)."""
        status = exc.status if isinstance(exc, ApiError) else None
        request_id = exc.request_id if isinstance(exc, ApiError) else None
        log.info(
            "row failed: file=%s row=%d code=%s status=%s request_id=%s",
            work.row.file,
            work.row.row,
            code,
            status,
            request_id,
            extra={"fields": row_fields("row_failed", work.row, work.op.value, exc, code=code)},
        )

    async def _failure(self, work: Work, exc: ConsentImportError, *, sent: bool) -> None:
        """The row failed for this run; an unknown outcome stays in flight for a lookup."""
        code = error_code(exc)
        self._log_failed(work, exc, code)
        error = _row_error(work, exc)
        unknown = sent and work.op in (Op.CREATE, Op.RECREATE)
        await self.record.failure(work, error, outcome_unknown=unknown)
        self.observer.failed(code)

    async def _ambiguous(self, work: Work, exc: ConsentImportError) -> None:
        """A POST may have stored the consent: the row settles for --settle seconds, then
        is looked up; after --max-attempts such answers it fails as outcome_unknown."""
        work.ambiguous += 1
        error = _row_error(work, exc)
        if work.ambiguous >= self.options.max_attempts:
            log.info("row failed: file=%s row=%d code=outcome_unknown", work.row.file, work.row.row)
            gave_up = replace(error, code="outcome_unknown")
            await self.record.gave_up(work, gave_up)
            self.observer.failed("outcome_unknown")
            return
        settle_s = self.options.settle_s
        fields = row_fields("settling", work.row, work.op.value, exc, settle_s=settle_s)
        log.info(
            "row settling: file=%s row=%d for %.0f s after %s",
            *(work.row.file, work.row.row, settle_s, type(exc).__name__),
            extra={"fields": fields},
        )
        settle_after = datetime.now(UTC) + timedelta(seconds=settle_s)
        await self.record.settling(work, error, settle_after.isoformat(timespec="milliseconds"))
        self.run.wait_out(work, settle_s)

    async def _breaker_verdict(self, exc: ConsentImportError) -> None:
        """Before a row fails for want of an answer: while no request is being answered,
        wait for the breaker to trip (ServerUnreachable: not the row's fault) or for an
        answer (the row's failure is its own)."""
        if isinstance(exc, NoResponseError) and self.client.breaker is not None:
            await self.client.breaker.verdict()

    def _check_stop(self) -> None:
        if self.run.stopping:
            raise _Stop


class Recorder:
    """A run's writes to the ledger, each one of its named transitions, grouped into
    shared commits by `AsyncLedger`."""

    def __init__(self, ledger: Ledger, run_id: int, *, max_unsettled: int = 1024) -> None:
        self.writer = AsyncLedger(ledger, max_unsettled=max_unsettled)
        self.run_id = run_id

    async def read(self, fn: Callable[[Ledger], T]) -> T:
        """Read through the writer, so a read sees every write queued before it."""
        return await self.writer.write(fn)

    async def planned(
        self, unchanged: list[Row], invalid: list[Row], refused: list[tuple[Row, LedgerRow]]
    ) -> None:
        """A batch's rows that need no request: seen unchanged, invalid, or refused."""
        run_id = self.run_id
        seen = [(row.source_key, row.cells_digest) for row in unchanged]
        notes = [_invalid_note(row) for row in invalid]
        notes += [_refused_note(row, before) for row, before in refused]

        def record(ledger: Ledger) -> None:
            ledger.seen(seen, run_id)
            for src, transition, error in notes:
                transition(ledger, run_id, src, error)

        await self.writer.write(record)

    async def intent(
        self,
        work: Work,
        op: Op,
        *,
        consent_id: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Commit that this row's request is about to be sent (before it is)."""
        row, run_id, src = work.row, self.run_id, work.src
        pending = row.body_json if body is None else json.dumps(body, separators=(",", ":"))
        previous = None
        if op is Op.RECREATE and work.prior is not None:
            previous = work.prior.consent_id
        patient_id = work.patient_id
        await self.writer.write(
            lambda ledger: ledger.intent(
                run_id,
                src,
                op,
                body=pending,
                body_hash=row.body_hash,
                patient_id=patient_id,
                consent_id=consent_id,
                previous_consent_id=previous,
            )
        )

    async def done(
        self, work: Work, action: str, request_id: str, *, consent_id: str | None = None
    ) -> None:
        """Queue the row's outcome without waiting for its commit (only for room under
        the writer's bound): until it commits the row is in flight, which a rerun
        settles by a lookup."""
        row, run_id, src, op = work.row, self.run_id, work.src, work.op
        hashes, patient_id, digest = row.field_hashes(), work.patient_id, row.cells_digest
        # The patchable values the server now holds: what an undo of a later PATCH puts back.
        patchable = {name: work.body[name] for name in PATCHABLE if name in work.body}

        def record(ledger: Ledger) -> None:
            ledger.done(
                run_id,
                src,
                op,
                action=action,
                payload_hash=row.body_hash,
                field_hashes=hashes,
                cells_hash=digest,
                patient_id=patient_id,
                request_id=request_id or None,
                consent_id=consent_id,
            )
            ledger.keep_field_values(patchable, hashes)

        await self.writer.write_soon(record)

    async def unsent(self, work: Work) -> None:
        """The row's request was never sent after its intent: put its state back."""
        if work.maybe_sent:
            return  # an earlier attempt may have landed: stay in flight for a lookup
        src = work.src
        before = work.prior.state if work.prior is not None else None
        await self.writer.write(lambda ledger: ledger.unsent(src, before))

    async def failure(self, work: Work, error: RowError, *, outcome_unknown: bool) -> None:
        run_id, src, op = self.run_id, work.src, work.op
        if outcome_unknown:
            await self.writer.write(lambda ledger: ledger.outcome_unknown(run_id, src, op, error))
        else:
            await self.writer.write(lambda ledger: ledger.failed(run_id, src, op, error))

    async def settling(self, work: Work, error: RowError, settle_after: str) -> None:
        run_id, src, op = self.run_id, work.src, work.op
        await self.writer.write(
            lambda ledger: ledger.settling(run_id, src, op, error, settle_after=settle_after)
        )

    async def gave_up(self, work: Work, error: RowError) -> None:
        run_id, src, op = self.run_id, work.src, work.op
        await self.writer.write(lambda ledger: ledger.gave_up(run_id, src, op, error))

    async def patch_failed(
        self,
        work: Work,
        error: RowError,
        state: RowState,
        consent_id: str,
        field_hashes: dict[str, str],
    ) -> None:
        run_id, src = self.run_id, work.src
        await self.writer.write(
            lambda ledger: ledger.patch_failed(
                run_id,
                src,
                Op.PATCH,
                error,
                state=state,
                consent_id=consent_id,
                field_hashes=field_hashes,
            )
        )

    async def retire_pending(self, work: Work, error: RowError) -> None:
        """The retire failed: in flight with it, the error noted, for the next run."""
        run_id, src = self.run_id, work.src
        await self.writer.write(
            lambda ledger: ledger.outcome_unknown(run_id, src, Op.RETIRE, error)
        )

    async def revoking(self, key: str) -> None:
        run_id = self.run_id
        await self.writer.write(lambda ledger: ledger.revoking(run_id, key))

    async def revoke_failed(self, key: str, error: RowError) -> None:
        run_id = self.run_id
        await self.writer.write(lambda ledger: ledger.revoke_failed(run_id, key, error))

    async def revoked(self, key: str) -> None:
        run_id = self.run_id
        await self.writer.write(lambda ledger: ledger.revoked(run_id, key))


#: Which of these source keys the run's input held (`Normalizer.in_input`).
InInput = Callable[[list[str]], npt.NDArray[np.bool_]]
_Note = tuple[Source, Callable[[Ledger, int, Source, RowError], None], RowError]


def _invalid_note(row: Row) -> _Note:
    key = row.source_key
    if any(e.code == "duplicate_row" for e in row.errors):
        # Its key is the first row's: record it apart, so that row's record stays whole.
        key = f"{key}#duplicate@{row.file}:{row.row}"
    error = RowError(
        "validate",
        "; ".join(e.code for e in row.errors),
        sheet_note(row.sheet, "; ".join(e.message for e in row.errors)),
        json.dumps(row.cells),
    )
    return Source(key, row.file, row.row), Ledger.invalid, error


def _refused_note(row: Row, before: LedgerRow) -> _Note:
    message = (
        f"{', '.join(immutable_changes(row, before))}: changed since the consent was "
        "created, and the API cannot patch them; rerun with --on-immutable-change "
        "recreate to replace it (immutable_change)"
    )
    log.info(
        "row failed: file=%s row=%d code=immutable_change",
        row.file,
        row.row,
        extra={
            "fields": {
                "event": "row_failed",
                "file": row.file,
                **({"sheet": row.sheet} if row.sheet else {}),
                "row": row.row,
                "field": "; ".join(immutable_changes(row, before)),
                "code": "immutable_change",
            }
        },
    )
    error = RowError(
        "sync", "immutable_change", sheet_note(row.sheet, message), json.dumps(row.cells)
    )
    return Source(row.source_key, row.file, row.row), Ledger.refused, error


async def _send_inactive(client: ClinikClient, retry: RetryPolicy, consent_id: str) -> None:
    """PATCH a consent to inactive; one already gone is as good as inactive."""
    async for attempt in retry():
        with attempt:
            try:
                await client.patch_consent(consent_id, {"status": "inactive"})
            except ClientRequestError as exc:
                if exc.status != 404:
                    raise


def _row_error(work: Work, exc: ConsentImportError) -> RowError:
    status = exc.status if isinstance(exc, ApiError) else None
    request_id = exc.request_id if isinstance(exc, ApiError) else None
    cells = json.dumps(work.row.cells)
    message = sheet_note(work.row.sheet, str(exc))
    return RowError("api", error_code(exc), message, cells, status, request_id)


def _seconds_until(when: datetime) -> float:
    return (when - datetime.now(UTC)).total_seconds()


def error_code(exc: ConsentImportError) -> str:
    """The short code failed.csv and the summary give a row's API failure."""
    if isinstance(exc, ApiError):
        known = {422: "api_validation", 404: "not_found", 409: "conflict", 429: "rate_limited"}
        if exc.status in known:
            return known[exc.status]
        return "server_error" if exc.status >= 500 else f"http_{exc.status}"
    if isinstance(exc, NoResponseError):
        return "outcome_unknown" if exc.sent else "network_error"
    return "error"
