"""A row's work in the engine: what it carries between planning, sending and recording, the
retry policy, and how an API error becomes a row's error code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from importer._errors import (
    ApiError,
    AuthError,
    BudgetWaitTooLong,
    ClientRequestError,
    ConsentImportError,
    LimiterClosed,
    NoResponseError,
    ServerUnreachable,
)
from importer._rows import Row, sheet_note
from importer.api._client import ClinikClient
from importer.api._retry import RowRetrying, row_retrying
from importer.ledger._schema import ErrorNote, LedgerRow, Op, Source

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
    patch_error: tuple[ErrorNote, dict[str, str]] | None = None
    _src: Source | None = None

    @property
    def src(self) -> Source:
        """Where the row comes from, made once (every transition of the row asks)."""
        if self._src is None:
            row = self.row
            self._src = Source(row.source_key, row.file, row.row)
        return self._src

    @property
    def body(self) -> dict[str, Any]:
        """The row's API body as a dict, parsed on first use, once a row (`Row.body`: the
        POST itself sends the row's JSON as it is; the field hashes, lookups, patches and
        adoption need the dict)."""
        return self.row.body()

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

    def __call__(self, work: Work | None = None) -> RowRetrying:
        row, op = (work.row, work.op.value) if work is not None else (None, None)
        return row_retrying(
            attempts=self.attempts, on_retry=lambda exc, n: self.on_retry(exc, n, row, op)
        )


class _Stop(Exception):
    """Raised inside a worker when the run is stopping before this row is sent."""


class _Ambiguous(Exception):
    """A POST's answer says nothing of whether it stored the consent (with --settle)."""

    def __init__(self, error: ConsentImportError) -> None:
        super().__init__(str(error))
        self.error = error


async def _send_inactive(client: ClinikClient, retry: RetryPolicy, consent_id: str) -> None:
    """PATCH a consent to inactive; one already gone is as good as inactive."""
    async for attempt in retry():
        with attempt:
            try:
                await client.patch_consent(consent_id, {"status": "inactive"})
            except ClientRequestError as exc:
                if exc.status != 404:
                    raise


def _row_error(work: Work, exc: ConsentImportError) -> ErrorNote:
    status = exc.status if isinstance(exc, ApiError) else None
    request_id = exc.request_id if isinstance(exc, ApiError) else None
    cells = json.dumps(work.row.cells)
    message = sheet_note(work.row.sheet, str(exc))
    return ErrorNote("api", error_code(exc), message, cells, status, request_id)


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
