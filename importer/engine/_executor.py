"""The executor: one row's work sent to the API — create, patch, look up, revoke — retried
as the policy says, its outcome handed to the recorder.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

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
from importer.api._lookup import find_consent
from importer.engine._decide import PATCHABLE
from importer.engine._rowlog import row_fields
from importer.engine._work import (
    _RUN_STOPPERS,
    Work,
    _Ambiguous,
    _row_error,
    _send_inactive,
    _Stop,
    error_code,
)
from importer.ledger._ledger import Ledger
from importer.ledger._schema import Op, RowState

log = logging.getLogger("importer.engine")

if TYPE_CHECKING:
    from importer.engine._engine import Engine


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
        await self.record.transition(
            Ledger.patch_failed,
            work.src,
            Op.PATCH,
            error,
            state=state,
            consent_id=consent_id,
            field_hashes=kept,
        )
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
                # The retire failed: in flight with it, the error noted, for the next run.
                await self.record.transition(
                    Ledger.outcome_unknown, work.src, Op.RETIRE, _row_error(work, exc)
                )
                self.observer.failed(code)
                return
        if work.patch_error is not None:  # the new consent's PATCH failed: note it now
            error, kept = work.patch_error
            assert work.consent_id is not None
            await self.record.transition(
                Ledger.patch_failed,
                work.src,
                Op.PATCH,
                error,
                state=RowState.DONE,
                consent_id=work.consent_id,
                field_hashes=kept,
            )
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
        await self.record.transition(Ledger.revoking, key)
        try:
            await _send_inactive(self.client, self.retry, work.consent_id)
        except _RUN_STOPPERS:
            raise
        except ConsentImportError as exc:
            await self._breaker_verdict(exc)
            code = error_code(exc)
            self._log_failed(work, exc, code)
            await self.record.transition(Ledger.revoke_failed, key, _row_error(work, exc))
            self.observer.failed(code)
            return
        await self.record.transition(Ledger.revoked, key)
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
        failure = Ledger.outcome_unknown if unknown else Ledger.failed
        await self.record.transition(failure, work.src, work.op, error)
        self.observer.failed(code)

    async def _ambiguous(self, work: Work, exc: ConsentImportError) -> None:
        """A POST may have stored the consent: the row settles for --settle seconds, then
        is looked up; after --max-attempts such answers it fails as outcome_unknown."""
        work.ambiguous += 1
        error = _row_error(work, exc)
        if work.ambiguous >= self.options.max_attempts:
            log.info("row failed: file=%s row=%d code=outcome_unknown", work.row.file, work.row.row)
            gave_up = replace(error, code="outcome_unknown")
            await self.record.transition(Ledger.gave_up, work.src, work.op, gave_up)
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
        settling = settle_after.isoformat(timespec="milliseconds")
        await self.record.transition(
            Ledger.settling, work.src, work.op, error, settle_after=settling
        )
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
