"""Stats and progress of a run, as a listener of the engine's events.

The engine says what happened to a row (`on("created")`, `failed(code)`); the observer
counts it in `RunStats`, samples the throughput timeline about once a second, and hands
the stats to the caller's progress callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from importer._results import RevokePlan, RunStats, ValidationSummary
from importer._rows import Row, Unchanged
from importer.api._client import ClientStats
from importer.api._limiter import loop_time
from importer.engine._rowlog import row_fields

log = logging.getLogger("importer.engine")

ProgressCallback = Callable[[str, RunStats], None]

#: Each event and the `RunStats` field it counts.
_COUNTS = {
    "invalid": "invalid",
    "unchanged": "unchanged",
    "created": "created",
    "adopted": "created",  # a found consent taken as the row's counts as created
    "found": "adopted",  # ... and apart as adopted, from the moment it is found
    "updated": "updated",
    "recreated": "updated",  # ... and apart as recreated (`_ALSO`)
    "revoked": "revoked",
    "lookup": "lookups",
    "retry": "retries",
    "left": "rows_left",  # not done because the run stopped
    "settling": "settling",  # an ambiguous answer: the row waits out --settle
    "settled_adopted": "settled_adopted",
    "settled_reposted": "settled_reposted",
}


#: Events counted in a second field too.
_ALSO = {"recreated": "recreated"}


class RunObserver:
    """Counts a run's events and reports progress."""

    def __init__(self, client_stats: ClientStats, on_progress: ProgressCallback | None) -> None:
        self.stats = RunStats()
        #: every row's validation outcome, for the run's reports
        self.validation = ValidationSummary()
        self._client = client_stats
        self._listener = on_progress or (lambda _event, _stats: None)
        self._started = 0.0
        self._last_sample = -1.0

    def started(self) -> None:
        self._started = loop_time()

    def finished(self) -> None:
        self.stats.duration_s = loop_time() - self._started
        self.stats.timeline.append((round(self.stats.duration_s, 2), self.stats.finished))

    def read(self, row: Row) -> None:
        """A row came from the input."""
        self.stats.rows += 1
        self.stats.valid += row.valid
        self.validation.add(row)

    def unchanged(self, rows: Unchanged) -> None:
        """Valid rows found unchanged in bulk (no `Row` was made for them)."""
        self.stats.rows += rows.count
        self.stats.valid += rows.count
        self.stats.unchanged += rows.count
        self.validation.add_valid(rows.file, rows.count)
        self._emit("unchanged")

    def on(self, event: str) -> None:
        """Count `event` (a key of `_COUNTS`) and tell the listener."""
        for name in (_COUNTS[event], _ALSO.get(event)):
            if name is not None:
                setattr(self.stats, name, getattr(self.stats, name) + 1)
        self._emit(event)

    def settled(self, _row: object = None) -> None:
        """A settling row's wait is over: it is looked up now."""
        self.stats.settling -= 1
        self._emit("settled")

    def dropped(self, _row: object = None) -> None:
        """The run stopped while a row settled (the ledger keeps it settling)."""
        self.settled()
        self.on("left")

    def failed(self, code: str) -> None:
        self.stats.fail(code)
        self._emit("failed")

    def retried(self, exc: BaseException, attempt: int, row: Row | None, op: str | None) -> None:
        where = f" row {row.file}:{row.row}" if row is not None else ""
        log.info(
            "retrying%s after %s (attempt %d)",
            where,
            type(exc).__name__,
            attempt,
            extra={"fields": row_fields("retry", row, op, exc, attempt=attempt)},
        )
        self.on("retry")

    def paused(self, reset_in_s: float) -> bool:
        """Note a pause for the rate-limit budget; False if the run was already paused."""
        if self.stats.paused:
            return False
        self.stats.paused = True
        self.stats.resets_in_s = round(reset_in_s, 1)
        return True

    def stopped(self, reason: str) -> None:
        """The run stops: the first reason given is the one the summary says."""
        self.stats.aborted = self.stats.aborted or reason

    def halted(self, reason: str) -> None:
        """The run could not go on (a resource refused it): this reason, not a pause,
        whatever was said before (exit 3)."""
        self.stats.aborted, self.stats.paused = reason, False

    def closed(self, *, cancelled: bool) -> None:
        """The run's last figures from its client; a cancelled run says it was
        interrupted unless it had said why it stopped."""
        if cancelled:
            self.stopped("interrupted")
        self.stats.requests = self._client.requests
        self.stats.rate_limited = self._client.rate_limited

    def create_refused(self, message: str) -> None:
        """The check before creating refused the run (it exits 2 with `message`)."""
        self.stats.create_refused = message

    def weighed(self, plan: RevokePlan, *, revoking: bool) -> None:
        """What the run found of rows missing from the source: always counted; with
        `--revoke-missing`, its refusal or note, and the rows waiting out --revoke-after."""
        stats = self.stats
        stats.missing_from_source = plan.in_scope
        stats.revoke_out_of_scope = plan.out_of_scope
        if not revoking:
            return
        stats.revoke_refused, stats.revoke_note = plan.refusal, plan.note
        stats.revoke_reason = plan.reason
        if not (plan.refusal or plan.note) and plan.pending:
            stats.revoke_pending = plan.pending_total
            stats.revoke_pending_note = plan.pending_note()

    def preflight(self, requests: int) -> None:
        """The requests the checks before the engine spent (the server check)."""
        self.stats.requests += requests

    def input_read(self, *, skipped: int, source_key: str, mapping_changed: str) -> None:
        """What the runner learned of the input around the engine: the rows the mapping
        filtered out, how rows were keyed, and whether the mapping changed."""
        stats = self.stats
        stats.skipped = skipped
        stats.source_key, stats.mapping_changed = source_key, mapping_changed

    def left_unread(self, total: int) -> None:
        """A stopped run: rows not yet read count as left, as the rows it did not finish."""
        self.stats.rows_left = max(total - self.stats.finished, self.stats.rows_left)

    def settling_left(self, rows: int) -> None:
        """Rows a stop left waiting out --settle, as the ledger counts them at the end."""
        self.stats.settling = rows

    def _emit(self, event: str) -> None:
        stats = self.stats
        stats.requests = self._client.requests
        stats.rate_limited = self._client.rate_limited
        now = loop_time() - self._started
        if now - self._last_sample >= 1.0:
            self._last_sample = now
            stats.timeline.append((round(now, 2), stats.finished))
        self._listener(event, stats)
