"""The bounded concurrent runner: rows in, consents created or patched, ledger kept true.

Per row the ledger decides (`plan`): create, patch, reconcile an unknown outcome, or
nothing. Workers then send with retries. The one rule that keeps consents from being
created twice: once a POST may have reached the server (timeout after sending, dropped
connection, 5xx), the next step for that row is a lookup, never a blind re-post.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from itertools import islice
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from importer.client import ClinikClient
from importer.console import log_invalid_row, row_fields
from importer.errors import (
    ApiError,
    AuthError,
    ClientRequestError,
    ConsentImportError,
    RateLimitedError,
    ServerUnreachable,
    TransportError,
)
from importer.keys import pinned_fields
from importer.ledger import AsyncLedger, Ledger, LedgerRow
from importer.limiter import BudgetWaitTooLong, LimiterClosed
from importer.normalize import Row
from importer.report import ValidationSummary
from importer.retry import retrying
from importer.revocation import RevokeScope
from importer.revocation import plan as plan_revocations

log = logging.getLogger("importer.pool")

#: Fields ClinikAPI lets a PATCH replace; a change to any other field cannot be patched.
PATCHABLE = ("status", "policyUri", "verification", "provision")
#: Rows pulled from the reader per hop to the reader thread.
_BATCH = 256


class Op(StrEnum):
    CREATE = "create"
    PATCH = "patch"
    RECREATE = "recreate"  # create the edited consent, then retire the old one
    RETIRE = "retire"  # patch the replaced consent to inactive
    REVOKE = "revoke"  # patch a consent whose row left the source to inactive


@dataclass
class RunOptions:
    """How a run behaves; the CLI's flags, as a library would take them."""

    concurrency: int = 8
    max_attempts: int = 5
    on_immutable_change: str = "fail"  # or "recreate"
    revoke_missing: bool = False
    skip_existing: bool = False
    #: which missing rows may be revoked, and how many (see importer.revocation)
    revoke_scope: RevokeScope = field(default_factory=RevokeScope)


@dataclass
class RunStats:
    rows: int = 0
    valid: int = 0
    invalid: int = 0
    skipped: int = 0  # filtered out by the mapping, never sent (set by the runner)
    created: int = 0
    adopted: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    revoked: int = 0
    missing_from_source: int = 0
    revoke_out_of_scope: int = 0  # ledger rows missing here, but of other files or systems
    revoke_refused: str = ""  # over --revoke-max: nothing revoked (exit 2)
    revoke_note: str = ""  # a correction file: nothing revoked
    source_key: str = "column"  # or "natural", or "content hash" (a ledger made before)
    lookups: int = 0
    retries: int = 0
    requests: int = 0
    rate_limited: int = 0
    duration_s: float = 0.0
    paused: bool = False
    aborted: str = ""
    resets_in_s: float | None = None
    rows_left: int = 0
    by_error: dict[str, int] = field(default_factory=dict)
    #: (seconds since start, rows finished) about once a second, for throughput charts
    timeline: list[tuple[float, int]] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.invalid + self.created + self.updated + self.unchanged + self.failed

    def fail(self, code: str) -> None:
        self.failed += 1
        self.by_error[code] = self.by_error.get(code, 0) + 1

    def summary(self) -> dict[str, Any]:
        """The keys of `--summary-json` (the contract's first, then ours)."""
        out: dict[str, Any] = {
            key: getattr(self, key)
            for key in (
                "rows",
                "valid",
                "invalid",
                "created",
                "updated",
                "unchanged",
                "failed",
                "requests",
                "retries",
                "rate_limited",
                "duration_s",
            )
        }
        out.update(
            skipped=self.skipped,
            adopted=self.adopted,
            revoked=self.revoked,
            missing_from_source=self.missing_from_source,
            revoke_out_of_scope=self.revoke_out_of_scope,
            revoke_refused=self.revoke_refused or None,
            source_key=self.source_key,
            lookups=self.lookups,
            paused=self.paused,
            aborted=self.aborted or None,
            rows_left=self.rows_left,
            resets_in_s=self.resets_in_s,
            failed_by_code=self.by_error,
        )
        out["duration_s"] = round(self.duration_s, 3)
        return out


@dataclass
class Work:
    """One row's job for a worker."""

    op: Op
    row: Row
    prior: LedgerRow | None
    maybe_sent: bool = False  # an earlier POST of this row may have created the consent
    consent_id: str | None = None
    _body: dict[str, Any] | None = None

    @property
    def body(self) -> dict[str, Any]:
        """The row's API body as a dict, parsed on first use (the POST itself sends the
        row's JSON as it is; only lookups, patches and adoption need the dict)."""
        if self._body is None:
            self._body = self.row.body()
        return self._body

    @property
    def patient_id(self) -> str | None:
        model = self.row.model
        return model.patient_id if model is not None else self.body.get("patientId")


class _Stop(Exception):
    """Raised inside a worker when the run is stopping before this row is sent."""


class Importer:
    """Runs rows through the ledger and the API with `concurrency` workers."""

    def __init__(
        self,
        client: ClinikClient,
        ledger: Ledger,
        *,
        run_id: int,
        options: RunOptions,
        on_progress: Callable[[str, RunStats], None] | None = None,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.run_id = run_id
        self.options = options
        self.stats = RunStats()
        self._user_progress = on_progress or (lambda _event, _stats: None)
        self._started = 0.0
        self._last_sample = -1.0
        #: every row's validation outcome, for the run's reports
        self.validation = ValidationSummary()
        self._writer: AsyncLedger | None = None
        self._stop = False
        self._input_complete = False

    # -- the run ----------------------------------------------------------------

    async def run(self, rows: Iterator[Row]) -> RunStats:
        """Import every row of `rows`; returns the stats (also kept on `self.stats`)."""
        self._started = started = anyio.current_time()
        self._writer = writer = AsyncLedger(self.ledger)
        async with anyio.create_task_group() as outer:
            outer.start_soon(writer.run_committer)
            try:
                await self._pump(rows)
                if self._input_complete and not self._stop:
                    await self._missing_rows()
            finally:
                writer.close()
        self.stats.duration_s = anyio.current_time() - started
        self.stats.timeline.append((round(self.stats.duration_s, 2), self.stats.finished))
        return self.stats

    def stop(self, reason: str) -> None:
        """Take no new rows and start no new request; rows already sent settle. Safe to
        call more than once."""
        if not self._stop:
            log.warning("stopping: %s", reason)
            self._stop = True
            self.stats.aborted = self.stats.aborted or reason
            if self.client.limiter is not None:
                self.client.limiter.close()

    async def _pump(self, rows: Iterator[Row]) -> None:
        send, receive = anyio.create_memory_object_stream[Work](self.options.concurrency * 2)
        async with anyio.create_task_group() as workers:
            # Twice as many workers as requests may be in flight (the limiter holds them to
            # --concurrency): while one waits for its row's intent to commit, another's
            # request uses the slot. With one worker a slot, every commit wait left a slot
            # idle, and commits come in bursts.
            for _ in range(self.options.concurrency * 2):
                workers.start_soon(self._worker, receive.clone())
            receive.close()
            await self._produce(rows, send)

    async def _produce(self, rows: Iterator[Row], send: ObjectSendStream[Work]) -> None:
        async with send:
            while not self._stop:
                # Reading and normalizing is CPU work in pandas: a thread keeps the loop free.
                batch = await anyio.to_thread.run_sync(lambda: list(islice(rows, _BATCH)))
                if not batch:
                    self._input_complete = True
                    return
                for work in await self._plan(batch):
                    if self._stop:
                        return
                    await send.send(work)

    async def _worker(self, receive: ObjectReceiveStream[Work]) -> None:
        async with receive:
            async for work in receive:
                if self._stop:
                    self.stats.rows_left += 1
                    continue
                try:
                    await self._do(work)
                except _Stop:
                    self.stats.rows_left += 1

    # -- planning -----------------------------------------------------------------

    async def _plan(self, batch: list[Row]) -> list[Work]:
        """Decide each row's work from the ledger; record what needs no request."""
        assert self._writer is not None
        keys = [row.source_key for row in batch]
        prior = await self._writer.write(lambda ledger: ledger.get(keys))
        jobs: list[Work] = []
        seen: list[str] = []
        records: list[Callable[[Ledger], None]] = []
        for row in batch:
            self.stats.rows += 1
            self.validation.add(row)
            before = prior.get(row.source_key)
            if not row.valid:
                self.stats.invalid += 1
                records.append(self._invalid_record(row, before))
                log_invalid_row(log, row)
                self._on_progress("invalid", self.stats)
                continue
            self.stats.valid += 1
            work = plan_row(row, before, self.options)
            if work is None:
                self.stats.unchanged += 1
                seen.append(row.source_key)
                self._on_progress("unchanged", self.stats)
            elif isinstance(work, str):
                self.stats.fail(work)
                records.append(self._immutable_record(row, before))
            else:
                jobs.append(work)
        run_id = self.run_id

        def record(ledger: Ledger) -> None:
            ledger.mark_unchanged(seen, run_id)
            for fn in records:
                fn(ledger)

        await self._writer.write(record)
        return jobs

    def _invalid_record(self, row: Row, before: LedgerRow | None) -> Callable[[Ledger], None]:
        message = "; ".join(e.message for e in row.errors)
        code = "; ".join(e.code for e in row.errors)
        if any(e.code == "duplicate_row" for e in row.errors):
            # Its key is the first row's: record it apart, so that row's record stays whole.
            key = f"{row.source_key}#duplicate@{row.file}:{row.row}"
            return self._error_record(key, row, "invalid", "validate", code, message)
        if before is not None and before.state not in ("invalid", "failed", "pending"):
            # A consent exists or may exist for this row: keep its state, note the error.
            return self._error_record(row.source_key, row, before.state, "validate", code, message)
        return self._error_record(row.source_key, row, "invalid", "validate", code, message)

    def _immutable_record(self, row: Row, before: LedgerRow | None) -> Callable[[Ledger], None]:
        assert before is not None
        fields = sorted(set(changed_fields(row, before)) - set(PATCHABLE))
        message = (
            f"{', '.join(fields)}: changed since the consent was created, and the API cannot "
            "patch them; rerun with --on-immutable-change recreate to replace it "
            "(immutable_change)"
        )
        log.info(
            "row failed: file=%s row=%d code=immutable_change",
            row.file,
            row.row,
            extra={
                "fields": {
                    "event": "row_failed",
                    "file": row.file,
                    "row": row.row,
                    "field": "; ".join(fields),
                    "code": "immutable_change",
                }
            },
        )
        # The consent stays as it is (state unchanged, created.csv keeps it); the error
        # marks the row for failed.csv until the source is fixed.
        return self._error_record(
            row.source_key, row, before.state, "sync", "immutable_change", message
        )

    def _error_record(
        self, key: str, row: Row, state: str, stage: str, code: str, message: str
    ) -> Callable[[Ledger], None]:
        """A ledger write noting a row's error (and its cells, for failed.csv)."""
        run_id, cells = self.run_id, json.dumps(row.cells)

        def record(ledger: Ledger) -> None:
            ledger.upsert(
                key,
                run_id,
                row.file,
                row.row,
                state=state,
                error_stage=stage,
                error_code=code,
                error_message=message,
                cells=cells,
                http_status=None,
                request_id=None,
            )

        return record

    # -- doing ----------------------------------------------------------------------

    async def _do(self, work: Work) -> None:
        try:
            if work.op in (Op.CREATE, Op.RECREATE):
                await self._create(work)
            elif work.op is Op.RETIRE:
                await self._retire(work)
            elif work.op is Op.REVOKE:
                await self._revoke(work)
            else:
                await self._patch(work)
        except AuthError as exc:
            await self._record_failure(work, exc, sent=False)
            self.stop(f"authentication failed ({exc.status} {exc.code or 'no code'})")
            raise _Stop from None
        except BudgetWaitTooLong as exc:
            # Any operation's request: the budget resets past --max-wait, so pause the run.
            self._pause(exc)
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
                await self._unsent(work)
            self.stop(str(exc))
            raise _Stop from None

    async def _create(self, work: Work) -> None:
        """POST the row, looking it up first whenever an earlier POST may have landed."""
        try:
            async for attempt in retrying(
                attempts=self.options.max_attempts, on_retry=partial(self._retried, work=work)
            ):
                with attempt:
                    if work.maybe_sent:
                        found = await self._lookup(work)
                        if found is not None:
                            await self._adopt(work, found)
                            return
                        work.maybe_sent = False
                    self._check_stop()
                    await self._intent(work, work.op.value)
                    work.maybe_sent = True
                    try:
                        response = await self.client.create_consent(work.row.body_json.encode())
                    except TransportError as exc:
                        work.maybe_sent = exc.sent
                        raise
                    except (RateLimitedError, ClientRequestError, AuthError):
                        work.maybe_sent = False  # answered without storing
                        raise
                    except (BudgetWaitTooLong, LimiterClosed, ServerUnreachable):
                        work.maybe_sent = False  # refused before sending
                        raise
                    consent_id = str(response.data["id"])
                    await self._created(work, consent_id, response.request_id)
                    return
        except (BudgetWaitTooLong, LimiterClosed, ServerUnreachable, _Stop):
            await self._unsent(work)  # stays in flight if an earlier attempt may have landed
            raise  # `_do` pauses or stops the run
        except ConsentImportError as exc:
            if isinstance(exc, AuthError):
                raise
            await self._breaker_verdict(exc)
            await self._record_failure(work, exc, sent=work.maybe_sent)

    async def _lookup(self, work: Work) -> dict[str, Any] | None:
        """Find the consent an earlier POST of this row may have created."""
        self._check_stop()
        body = work.body
        self.stats.lookups += 1
        date_from = date_to = None
        if "dateTime" in body:
            # A day either side: the server's idea of "the date" may be another zone's.
            day = datetime.fromisoformat(body["dateTime"]).astimezone(UTC).date()
            date_from = (day - timedelta(days=1)).isoformat()
            date_to = (day + timedelta(days=1)).isoformat()
        found = await self.client.search_consents(
            patient_id=body["patientId"], date_from=date_from, date_to=date_to
        )
        matches = [c for c in found if matches_consent(c, body)]
        if not matches:
            return None
        assert self._writer is not None
        ids = [str(c["id"]) for c in matches]
        own = work.prior.consent_id if work.prior else None
        claimed = await self._writer.write(lambda ledger: ledger.claimed_consents(ids))
        for consent in matches:
            if str(consent["id"]) not in claimed - {own}:
                return consent
        return None

    async def _adopt(self, work: Work, consent: dict[str, Any]) -> None:
        """Take a found consent as the row's; patch it where it differs from the row."""
        self.stats.adopted += 1
        consent_id = str(consent["id"])
        differing = {
            name: work.body[name]
            for name in PATCHABLE
            if name in work.body and consent.get(name) != work.body[name]
        }
        if differing:
            await self._intent(work, Op.PATCH.value, consent_id=consent_id, body=differing)
            response = await self.client.patch_consent(consent_id, differing)
            await self._created(work, consent_id, response.request_id, action="adopted")
        else:
            await self._created(work, consent_id, "", action="adopted")

    async def _patch(self, work: Work) -> None:
        assert work.consent_id is not None
        body = {name: work.body[name] for name in PATCHABLE if name in work.body}
        try:
            async for attempt in retrying(
                attempts=self.options.max_attempts, on_retry=partial(self._retried, work=work)
            ):
                with attempt:
                    self._check_stop()
                    await self._intent(work, Op.PATCH.value, consent_id=work.consent_id)
                    response = await self.client.patch_consent(work.consent_id, body)
                    await self._done(work, "updated", response.request_id)
                    self.stats.updated += 1
                    self._on_progress("updated", self.stats)
                    return
        except (BudgetWaitTooLong, ServerUnreachable):
            raise  # not the row's failure: `_do` pauses or stops the run
        except ConsentImportError as exc:
            if isinstance(exc, AuthError):
                raise
            await self._breaker_verdict(exc)
            await self._record_failure(work, exc, sent=True)

    async def _retire(self, work: Work) -> None:
        """After a recreate: the replaced consent becomes inactive."""
        assert self._writer is not None
        assert work.prior is not None
        previous = await self._writer.write(
            lambda ledger: ledger.db.execute(
                "SELECT previous_consent_id FROM rows WHERE source_key = ?",
                (work.row.source_key,),
            ).fetchone()
        )
        old = previous[0] if previous else None
        if old:
            await self._send_inactive(old)
        await self._done(work, "recreated", "", consent_id=work.consent_id)
        self.stats.updated += 1

    async def _revoke(self, work: Work) -> None:
        assert work.consent_id is not None
        await self._send_inactive(work.consent_id)
        assert self._writer is not None
        key, run_id = work.row.source_key, self.run_id

        def record(ledger: Ledger) -> None:
            ledger.db.execute(
                "UPDATE rows SET state = 'revoked', action = 'revoked', payload_hash = NULL, "
                "pending_op = NULL, pending_body = NULL WHERE source_key = ?",
                (key,),
            )
            ledger.attempt(run_id, key, "revoke", "ok")

        await self._writer.write(record)
        self.stats.revoked += 1

    async def _send_inactive(self, consent_id: str) -> None:
        async for attempt in retrying(attempts=self.options.max_attempts, on_retry=self._retried):
            with attempt:
                try:
                    await self.client.patch_consent(consent_id, {"status": "inactive"})
                except ClientRequestError as exc:
                    if exc.status != 404:  # already gone is as good as inactive
                        raise

    async def _missing_rows(self) -> None:
        """Rows done in earlier runs that this run's input no longer holds."""
        assert self._writer is not None
        run_id, scope = self.run_id, self.options.revoke_scope
        plan = await self._writer.write(
            lambda ledger: plan_revocations(ledger.missing_rows(run_id), ledger.done_count(), scope)
        )
        missing = plan.rows
        self.stats.missing_from_source = plan.in_scope
        self.stats.revoke_out_of_scope = plan.out_of_scope
        if plan.in_scope:
            log.warning("%d rows are missing from the source since earlier runs", plan.in_scope)
        if not self.options.revoke_missing:
            return
        self.stats.revoke_refused, self.stats.revoke_note = plan.refusal, plan.note
        if plan.refusal or plan.note:
            (log.error if plan.refusal else log.warning)("%s", plan.refusal or plan.note)
            return
        send, receive = anyio.create_memory_object_stream[Work](self.options.concurrency * 2)
        async with anyio.create_task_group() as workers:
            for _ in range(self.options.concurrency):
                workers.start_soon(self._worker, receive.clone())
            receive.close()
            async with send:
                for key, file, number, consent_id in missing:
                    if self._stop:
                        break
                    await send.send(
                        Work(Op.REVOKE, Row(file, number, key), None, consent_id=consent_id)
                    )

    # -- ledger records -----------------------------------------------------------

    async def _intent(
        self,
        work: Work,
        op: str,
        *,
        consent_id: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Commit that this row's request is about to be sent (before it is)."""
        assert self._writer is not None
        row, run_id = work.row, self.run_id
        pending = work.row.body_json if body is None else json.dumps(body, separators=(",", ":"))
        values: dict[str, Any] = {
            "state": "in_flight",
            "pending_op": op,
            "pending_body": pending,
            "pending_hash": row.body_hash,
            "patient_id": work.patient_id,
        }
        if op == Op.RECREATE.value and work.prior is not None and work.prior.consent_id:
            values["previous_consent_id"] = work.prior.consent_id
        if consent_id is not None:
            values["consent_id"] = consent_id

        def record(ledger: Ledger) -> None:
            ledger.upsert(row.source_key, run_id, row.file, row.row, **values)
            ledger.db.execute(
                "UPDATE rows SET attempts = attempts + 1 WHERE source_key = ?", (row.source_key,)
            )

        await self._writer.write(record)

    async def _created(
        self, work: Work, consent_id: str, request_id: str, *, action: str = "created"
    ) -> None:
        if work.op is Op.RECREATE:
            # The new consent exists: retire the old one next (a crash here resumes there).
            await self._intent(work, Op.RETIRE.value, consent_id=consent_id)
            work.consent_id = consent_id
            await self._retire(work)
            return
        await self._done(work, action, request_id, consent_id=consent_id)
        self.stats.created += 1  # adopted consents count as created, and apart as adopted
        self._on_progress(action, self.stats)

    async def _done(
        self, work: Work, action: str, request_id: str, *, consent_id: str | None = None
    ) -> None:
        assert self._writer is not None
        row, run_id = work.row, self.run_id
        values = {
            "state": "done",
            "action": action,
            "payload_hash": row.body_hash,
            "field_hashes": json.dumps(row.field_hashes()),
            "pending_op": None,
            "pending_body": None,
            "pending_hash": None,
            "error_stage": None,
            "error_code": None,
            "error_message": None,
            "http_status": None,
            "request_id": request_id or None,
            "cells": None,
            "patient_id": work.patient_id,
        }
        if consent_id is not None:
            values["consent_id"] = consent_id

        def record(ledger: Ledger) -> None:
            ledger.upsert(row.source_key, run_id, row.file, row.row, **values)
            ledger.attempt(
                run_id, row.source_key, work.op.value, "ok", request_id=request_id or None
            )

        self._writer.write_soon(record)

    async def _unsent(self, work: Work) -> None:
        """The row's request was never sent after its intent: put its state back."""
        assert self._writer is not None
        prior, row = work.prior, work.row
        if work.maybe_sent:
            return  # an earlier attempt may have landed: stay in flight for a lookup

        def record(ledger: Ledger) -> None:
            if prior is None:
                ledger.db.execute("DELETE FROM rows WHERE source_key = ?", (row.source_key,))
            else:
                ledger.db.execute(
                    "UPDATE rows SET state = ?, pending_op = NULL, pending_body = NULL "
                    "WHERE source_key = ? AND state = 'in_flight'",
                    (prior.state if prior.state != "in_flight" else "pending", row.source_key),
                )

        await self._writer.write(record)

    async def _record_failure(self, work: Work, exc: ConsentImportError, *, sent: bool) -> None:
        """The row failed for this run; an unknown outcome stays in flight for a lookup."""
        assert self._writer is not None
        row, run_id = work.row, self.run_id
        code = _error_code(exc)
        status = exc.status if isinstance(exc, ApiError) else None
        request_id = exc.request_id if isinstance(exc, ApiError) else None
        self.stats.fail(code)
        log.info(
            "row failed: file=%s row=%d code=%s status=%s request_id=%s",
            row.file,
            row.row,
            code,
            status,
            request_id,
            extra={"fields": row_fields("row_failed", work.row, work.op.value, exc, code=code)},
        )
        state = "in_flight" if sent and work.op in (Op.CREATE, Op.RECREATE) else "failed"
        values = {
            "state": state,
            "error_stage": "api",
            "error_code": code,
            "error_message": str(exc),
            "http_status": status,
            "request_id": request_id,
            "cells": json.dumps(row.cells),
        }
        if state == "failed":
            values.update(pending_op=None, pending_body=None)

        def record(ledger: Ledger) -> None:
            ledger.upsert(row.source_key, run_id, row.file, row.row, **values)
            ledger.attempt(
                run_id,
                row.source_key,
                work.op.value,
                "error",
                http_status=status,
                request_id=request_id,
                error_code=code,
            )

        await self._writer.write(record)
        self._on_progress("failed", self.stats)

    # -- small helpers ------------------------------------------------------------

    def _on_progress(self, event: str, stats: RunStats) -> None:
        stats.requests = self.client.stats.requests
        stats.rate_limited = self.client.stats.rate_limited
        now = anyio.current_time() - self._started
        if now - self._last_sample >= 1.0:
            self._last_sample = now
            stats.timeline.append((round(now, 2), stats.finished))
        self._user_progress(event, stats)

    async def _breaker_verdict(self, exc: ConsentImportError) -> None:
        """Before a row fails for want of an answer: while no request is being answered,
        wait for the breaker to trip (ServerUnreachable: not the row's fault) or for an
        answer (the row's failure is its own)."""
        if isinstance(exc, TransportError) and self.client.breaker is not None:
            await self.client.breaker.verdict()

    def _check_stop(self) -> None:
        if self._stop:
            raise _Stop

    def _retried(self, exc: BaseException, attempt: int, work: Work | None = None) -> None:
        self.stats.retries += 1
        where = f" row {work.row.file}:{work.row.row}" if work is not None else ""
        row, op = (work.row, work.op.value) if work is not None else (None, None)
        fields = row_fields("retry", row, op, exc, attempt=attempt)
        log.info(
            "retrying%s after %s (attempt %d)",
            where,
            type(exc).__name__,
            attempt,
            extra={"fields": fields},
        )
        self._on_progress("retry", self.stats)

    def _pause(self, exc: BudgetWaitTooLong) -> None:
        if not self.stats.paused:
            self.stats.paused = True
            self.stats.resets_in_s = round(exc.reset_in_s, 1)
            self.stop(f"the rate-limit budget resets in {exc.reset_in_s:,.0f} s, past --max-wait")


def plan_row(row: Row, before: LedgerRow | None, options: RunOptions) -> Work | str | None:
    """The job for a valid row given the ledger's record of it.

    Returns Work to do, None when the server already holds this exact body, or an error
    code when the row cannot be synced (`immutable_change`).
    """
    if (
        before is None
        or before.state in ("invalid", "pending")
        or (before.state == "failed" and before.consent_id is None)
    ):
        return Work(Op.CREATE, row, before, maybe_sent=options.skip_existing)
    if before.state == "in_flight":
        op = Op(before.pending_op or "create")
        if op in (Op.CREATE, Op.RECREATE):
            # Outcome unknown: the lookup decides between adopting and posting.
            return Work(op, row, before, maybe_sent=True, consent_id=before.consent_id)
        if op is Op.RETIRE:
            return Work(op, row, before, consent_id=before.consent_id)
        # An unfinished PATCH is safe to send again (it replaces values): go on and
        # compare with what the server last held.
    if before.payload_hash == row.body_hash:
        if before.state == "done":
            return None
        return Work(Op.PATCH, row, before, consent_id=before.consent_id)
    # Fields a natural key pins are equal whenever the key matches: a difference there is
    # only how they are written (category order, the zone of the instant).
    changed = set(changed_fields(row, before)) - pinned_fields(row.source_key)
    if not changed and before.state == "done":
        return None
    immutable = sorted(changed - set(PATCHABLE))
    if immutable:
        if options.on_immutable_change == "recreate":
            return Work(Op.RECREATE, row, before, consent_id=before.consent_id)
        return "immutable_change"
    return Work(Op.PATCH, row, before, consent_id=before.consent_id)


def changed_fields(row: Row, before: LedgerRow) -> list[str]:
    """Top-level API fields whose value differs from what the server last held."""
    new, old = row.field_hashes(), before.field_hashes
    return sorted(name for name in set(new) | set(old) if new.get(name) != old.get(name))


def matches_consent(consent: dict[str, Any], body: dict[str, Any]) -> bool:
    """Is `consent` (from a search) the one `body` would create? Matched on the fields
    that identify a consent: patient, scope, categories, instant, policy."""
    if consent.get("patientId") != body.get("patientId") or consent.get("scope") != body.get(
        "scope"
    ):
        return False
    if _categories(consent.get("category")) != _categories(body.get("category")):
        return False
    if consent.get("policyUri") != body.get("policyUri"):
        return False
    mine, theirs = body.get("dateTime"), consent.get("dateTime")
    if mine is None or theirs is None:
        return mine is None and theirs is None
    try:
        return datetime.fromisoformat(str(theirs)) == datetime.fromisoformat(str(mine))
    except ValueError:
        return False


def _categories(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset([value])
    return frozenset(str(v) for v in value)


def _error_code(exc: ConsentImportError) -> str:
    if isinstance(exc, ApiError):
        if exc.status == 422:
            return "api_validation"
        if exc.status == 404:
            return "not_found"
        if exc.status == 409:
            return "conflict"
        if exc.status == 429:
            return "rate_limited"
        if exc.status >= 500:
            return "server_error"
        return f"http_{exc.status}"
    if isinstance(exc, TransportError):
        return "outcome_unknown" if exc.sent else "network_error"
    return "error"
