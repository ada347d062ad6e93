"""The import engine: rows in, consents created or patched, the ledger kept true.

A row goes through four steps:

1. **decide** (here): `importer.engine._decide.decide_row`, from the row, its ledger record
   and the options: send an op, or nothing (unchanged, invalid, an edit the API cannot
   apply);
2. **execute**: one handler per `Op`, chosen from `importer.engine._executor.Executor`'s
   table, retried by one `RetryPolicy`;
3. **record**: every step through a named transition of the ledger
   (`importer.ledger._transitions`), written by `importer.engine._recorder.Recorder`
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

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from itertools import islice
from typing import TypeVar

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from importer._errors import (
    BudgetWaitTooLong,
    ConsentImportError,
    LimiterClosed,
)
from importer._options import RunOptions
from importer._results import RunStats, ValidationSummary
from importer._rows import Row, Unchanged
from importer.api._client import ClinikClient
from importer.engine._collector import Pacing
from importer.engine._decide import Verdict, decide_row
from importer.engine._executor import Executor
from importer.engine._gate import CreateCheck, SampleGate
from importer.engine._observer import ProgressCallback, RunObserver
from importer.engine._preflight import look_up_sample, sample_refusal
from importer.engine._recorder import Recorder
from importer.engine._revocation import RevokeScope
from importer.engine._revocation import weigh as weigh_revocations
from importer.engine._rowlog import log_invalid_row
from importer.engine._settle import SettleQueue
from importer.engine._work import (
    RetryPolicy,
    Work,
    _seconds_until,
    _Stop,
)
from importer.ledger._ledger import Ledger
from importer.ledger._schema import LedgerRow, Op

log = logging.getLogger("importer.engine")
T = TypeVar("T")

#: Rows pulled from the reader per hop to the reader thread.
_BATCH = 256


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
            self.observer.stopped(reason)
            if self.client.limiter is not None:
                self.client.limiter.close()
            self._settling.stop()

    async def _pump(self, jobs: AsyncIterator[Work]) -> bool:
        """Feed `jobs`, then rows back from settling, to the workers; True when every job
        was taken (no stop). Returns once no row is at work or settling."""
        concurrency = self.options.concurrency
        # Two rows waiting a worker: while the feeder plans the next batch (a ledger read,
        # one commit away) the workers still find rows. With one, they ran dry at every
        # batch, and a worker that finds none costs two more loop turns (anyio's
        # checkpoint, then its wake-up): 0.46 a row at 64 in flight, now ~0.02 (issue 24).
        send, receive = anyio.create_memory_object_stream[Work](concurrency * 4)
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

    async def _worker(self, receive: MemoryObjectReceiveStream[Work]) -> None:
        async with receive:
            while True:
                try:
                    work = receive.receive_nowait()  # no checkpoint when a row waits (issue 24)
                except anyio.WouldBlock:
                    try:
                        work = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
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

    # -- decide -------------------------------------------------------------------

    async def _read_ahead(
        self, rows: Iterator[Row | Unchanged], ahead: MemoryObjectSendStream[list[Row | Unchanged]]
    ) -> None:
        """The input a batch at a time, one batch ahead of the planner; stops when the
        planner stops taking them."""
        collector = Pacing()  # young passes are rare while a run sends: see _collector
        async with ahead:
            while not self._stop:
                collector.tick()
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
            for work in await self._gated(await self._decide(batch)):
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
        # A refusal of every create (identity columns changed) holds the lookups of
        # --skip-existing too: they adopt only a consent with the same instant and codes.
        refusing = bool(self.create_check is not None and self.create_check.refuse)
        for work in jobs or []:
            new = work.op is Op.CREATE and work.consent_id is None
            new = new and (refusing or not work.maybe_sent)
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
        if check.refuse:
            return self._refuse(check.refuse)
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
        self.observer.create_refused(message)
        self.stop("the check before creating refused this run (nothing was created)")
        return False

    async def _decide(self, batch: list[Row | Unchanged]) -> list[Work]:
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
            decision = decide_row(row, before, self.options)
            if decision.verdict is Verdict.SEND:
                assert decision.op is not None
                jobs.append(
                    Work(
                        decision.op,
                        row,
                        before,
                        decision.lookup_first,
                        decision.consent_id,
                        decision.not_before,
                    )
                )
            elif decision.verdict is Verdict.UNCHANGED:
                seen.append(row)
                self.observer.on("unchanged")
            elif decision.verdict is Verdict.INVALID:
                invalid.append(row)
                log_invalid_row(log, row)
                self.observer.on("invalid")
            else:
                assert before is not None
                refused.append((row, before))
                self.observer.failed(decision.verdict.value)
        await self.record.planned(seen, invalid, refused)
        return jobs

    async def _missing_rows(self, in_input: InInput | None) -> AsyncIterator[Work]:
        """Rows done in earlier runs that this run's input no longer holds: counted, and
        revoked with --revoke-missing."""
        run_id, scope, stats = self.run_id, self.revoke_scope, self.stats
        sizes = scope.read_sizes({f: c.rows for f, c in self.validation.by_file.items()})
        after = self.options.revoke_after
        weighed = await self.record.read(
            lambda ledger: weigh_revocations(
                ledger, run_id, scope, after=after, sizes=sizes, in_input=in_input
            )
        )
        self.observer.weighed(weighed, revoking=self.options.revoke_missing)
        if weighed.in_scope:
            log.warning("%d rows are missing from the source since earlier runs", weighed.in_scope)
        if not self.options.revoke_missing:
            return
        if weighed.refusal or weighed.note:
            (log.error if weighed.refusal else log.warning)(
                "%s", weighed.refusal or weighed.note, extra={"fields": weighed.log_fields()}
            )
            return
        if weighed.pending:
            log.warning(
                "%s (--revoke-after %d)",
                stats.revoke_pending_note,
                weighed.after,
                extra={
                    "fields": {
                        "event": "revoke_pending",
                        "pending": weighed.pending_total,
                        "due": weighed.due,
                        "revoke_after": weighed.after,
                    }
                },
            )
        for key, file, number, consent_id in weighed.rows:
            yield Work(Op.REVOKE, Row(file, number, key), None, consent_id=consent_id)


#: Which of these source keys the run's input held (`Normalizer.in_input`).
InInput = Callable[[list[str]], npt.NDArray[np.bool_]]
