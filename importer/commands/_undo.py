"""`undo`: put the server (and the ledger) back as they were before one run.

Every run of this version keeps, before its first request for a row, the row as the
ledger held it (`run_changes`), and the ledger keeps the patchable values it sent by
their hash (`field_values`). From these, for each row the run changed on the server:

- a consent it created (or recreated) is deleted; a recreate's retired consent gets back
  the status it had;
- a consent it PATCHed gets back the patchable fields it had; one it revoked, its status;
- a consent it adopted existed before the run: it is left on the server, only forgotten.

Then the row's ledger record is put back as it was before the run, so a rerun of the
same files redoes exactly the undone work; so is the evidence `--revoke-missing` counts
(`revoke_misses`, `scope_reads`: kept as before the run in `run_evidence`), so the run's
misses no longer count towards a revocation. An undo that changed the ledger advances its
lineage (importer.ledger._lineage): a copy from before it is an older one.

Safe against what happened since: each consent is read back first and compared with
what the run left; one that differs is left alone (`changed_since`), and so is a row a
later run touched (`later_run`). Crash-safe as a run is: the intent is committed before
the first request of a row, and every DELETE or PATCH is preceded by a read, so a request
whose answer was lost (or a killed undo) is checked before it is sent again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import sniffio

from importer._errors import (
    ApiError,
    AuthError,
    BudgetWaitTooLong,
    ClientRequestError,
    ConfigError,
    ConsentImportError,
    LimiterClosed,
    ServerUnreachable,
    UsageError,
    no_such_file,
)
from importer._options import DEFAULTS
from importer._rows import body_field_hashes
from importer.api._build import open_client
from importer.api._client import check_api_key, check_base_url
from importer.api._limiter import Limiter
from importer.api._retry import retrying
from importer.commands._verify import differing_fields
from importer.engine._decide import PATCHABLE
from importer.ledger._codec import unpack_field_hashes, unpack_id
from importer.ledger._ledger import Ledger
from importer.ledger._lineage import advance as advance_lineage
from importer.ledger._lineage import check as check_lineage
from importer.ledger._lock import LedgerLock
from importer.ledger._schema import RunChange
from importer.ledger._writer import AsyncLedger
from importer.reports._outputs import write_text

log = logging.getLogger("importer.undo")

#: The statuses a consent can have (clinikapi.md): a status is found from its hash.
STATUSES = ("draft", "proposed", "active", "rejected", "inactive")
#: Outcomes that leave a row as it is (exit 1).
LEFT = (
    "changed_since",
    "later_run",
    "in_flight",
    "no_before",
    "cannot_restore",
    "failed",
    "uncertain",
)
#: Errors that stop the whole undo (exit 3; the next `undo` finishes it).
_STOPPERS = (AuthError, BudgetWaitTooLong, LimiterClosed, ServerUnreachable)


@dataclass(frozen=True)
class UndoConfig:
    """Everything `consent-import undo` takes, as a library call takes it."""

    ledger: Path
    run_id: int
    base_url: str = DEFAULTS.base_url
    api_key: str | None = field(default=None, repr=False)  # never printed whole
    dry_run: bool = False
    concurrency: int = DEFAULTS.concurrency
    timeout_s: float = DEFAULTS.timeout_s
    max_attempts: int = DEFAULTS.max_attempts
    max_wait_s: float | None = None


@dataclass
class UndoRow:
    """What undo did (or would do, or refused) for one row of the run."""

    file: str
    row: int
    source_key: str
    consent_id: str | None
    #: delete | delete_and_restore | restore_fields | restore_status | forget
    action: str
    #: undone | would_undo (dry run) | not_done (the undo stopped first) | one of LEFT
    outcome: str = "would_undo"
    detail: str = ""


@dataclass
class UndoResult:
    run_id: int
    ledger: str
    dry_run: bool
    rows: list[UndoRow] = field(default_factory=list)
    requests: int = 0
    #: why the undo stopped before every row was seen (exit 3), if it did
    aborted: str | None = None
    #: entries of --revoke-missing's evidence (misses counted or reset, scope reads) the
    #: run recorded, put back as before it (or, dry, that would be)
    evidence: int = 0

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for row in self.rows:
            found[row.outcome] = found.get(row.outcome, 0) + 1
        return dict(sorted(found.items()))

    @property
    def left(self) -> int:
        return sum(1 for row in self.rows if row.outcome in LEFT)

    @property
    def exit_code(self) -> int:
        """0 everything undone (or, dry, undoable), 1 some rows left, 3 stopped early."""
        if self.aborted:
            return 3
        return 1 if self.left else 0

    def summary(self) -> dict[str, Any]:
        """Counts and codes only, no PHI."""
        return {
            "run": self.run_id,
            "dry_run": self.dry_run,
            "rows": len(self.rows),
            "by_outcome": self.counts(),
            "requests": self.requests,
            "evidence": self.evidence,
            "aborted": self.aborted,
        }


# -- what to do for one row (pure) ---------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """One consent to put back: DELETE it (`body` None) or PATCH it with `body`.

    `left` are the field hashes the run left it with; `back` those it has once put back
    (None: gone).
    """

    consent_id: str
    body: dict[str, Any] | None
    left: dict[str, str]
    back: dict[str, str] | None


@dataclass
class _Change:
    """A row run N changed (`RunChange`), what to do for it, and what undo did."""

    record: RunChange
    row: UndoRow
    targets: list[_Target] = field(default_factory=list)

    @classmethod
    def of(cls, record: RunChange) -> _Change:
        row = UndoRow(record.source_file, record.source_row, record.source_key, None, "forget")
        return cls(record, row)


def _status_hash(status: str) -> str:
    return body_field_hashes({"status": status})["status"]


def _status_before(before: dict[str, Any], hashes: dict[str, str]) -> str | None:
    """The status the consent had before the run: found from its hash (a closed set)."""
    if before.get("state") == "revoked":
        return "inactive"
    held = hashes.get("status")
    if held is None:
        return "active"  # sent without one: the server's default
    return next((s for s in STATUSES if _status_hash(s) == held), None)


def _plan(change: _Change, values: Callable[[str, str], str | None]) -> None:
    """Fill in the row's action, its targets, or the reason it is left."""
    row, now, before = change.row, change.record.now, change.record.before
    if change.record.undo == "undone":
        row.outcome = "undone"
        return
    if change.record.later:
        row.outcome, row.detail = "later_run", "a later run changed it: undo that run first"
        return
    if now is None:
        return  # no record left to restore: forget
    state, action = now["state"], now["action"]
    now_hashes = unpack_field_hashes(now["field_hashes"])
    existed = change.record.existed
    before_hashes = unpack_field_hashes(before.get("field_hashes")) if existed else {}
    consent_id = unpack_id(now["consent_id"])
    row.consent_id = consent_id
    # A POST that may have landed (in flight, settling, or failed as outcome_unknown with
    # its op kept for a lookup): forgetting it would let a rerun post it again.
    unknown = now["error_code"] == "outcome_unknown" or now["pending_op"] in ("create", "recreate")
    if state in ("in_flight", "settling") or unknown:
        row.outcome = "in_flight"
        row.detail = "the run left its request unfinished: rerun the same files, then undo"
        return
    if state in ("failed", "invalid", "pending"):
        return  # the run changed nothing on the server: forget
    if now["error_code"] is not None:
        row.outcome = "failed"
        row.detail = f"its request failed in the run ({now['error_code']}): check it by hand"
        return
    if action == "adopted":
        if change.record.posted:
            # Found after the run's own POST went unanswered: the run's consent, or one
            # that was there before; deleting the wrong one, or forgetting the run's (a
            # rerun would post it again), are both worse than asking.
            row.outcome = "uncertain"
            row.detail = "adopted after the run's own POST was lost: check it by hand"
            return
        return  # it existed before the run: left on the server, forgotten
    if action in ("created", "recreated"):
        row.action = "delete"
        change.targets.append(_Target(consent_id, None, now_hashes, None))
        if action == "recreated":
            old = unpack_id(now["previous_consent_id"])
            status = _status_before(before, before_hashes)
            if old is None or status is None:
                row.outcome, row.detail = "no_before", "the retired consent's status is unknown"
                return
            row.action = "delete_and_restore"
            left = {**before_hashes, "status": _status_hash("inactive")}
            back = {**before_hashes, "status": _status_hash(status)}
            change.targets.append(_Target(old, {"status": status}, left, back))
        return
    if state == "revoked" and action == "revoked":
        status = _status_before({}, before_hashes)
        if status is None:
            row.outcome, row.detail = "no_before", "the status it had is unknown"
            return
        row.action = "restore_status"
        left = {**before_hashes, "status": _status_hash("inactive")}
        back = {**before_hashes, "status": _status_hash(status)}
        change.targets.append(_Target(consent_id, {"status": status}, left, back))
        return
    if action == "updated":
        _plan_patch(change, consent_id, now_hashes, before_hashes, values)
        return
    row.outcome, row.detail = "failed", f"nothing known undoes a row {action or state}"


def _plan_patch(
    change: _Change,
    consent_id: str,
    now_hashes: dict[str, str],
    before_hashes: dict[str, str],
    values: Callable[[str, str], str | None],
) -> None:
    """A PATCH: the patchable fields back to the values they had before the run."""
    row = change.row
    row.action = "restore_fields"
    before = change.record.before
    if not change.record.existed or before.get("state") not in ("done", "revoked"):
        row.outcome, row.detail = "no_before", "the ledger held no consent for it before the run"
        return
    # Fields the run's PATCH did not carry kept the value they had.
    left = {**{n: h for n, h in before_hashes.items() if n in PATCHABLE}, **now_hashes}
    status = _status_before(before, before_hashes)
    if status is None:
        row.outcome, row.detail = "no_before", "the status it had is unknown"
        return
    left.setdefault("status", _status_hash("active"))  # the run's PATCH sends one always
    back = {**left, "status": _status_hash(status)}
    body: dict[str, Any] = {}
    if left["status"] != back["status"]:
        body["status"] = status
    for name in PATCHABLE:
        if name == "status" or left.get(name) == before_hashes.get(name):
            continue
        if name not in before_hashes:
            row.outcome = "cannot_restore"
            row.detail = f"the run added {name}, which the API cannot remove"
            return
        value = values(name, before_hashes[name])
        if value is None:
            row.outcome = "no_before"
            row.detail = f"the {name} it had was not recorded (a run before undo existed)"
            return
        body[name] = json.loads(value)
        back[name] = before_hashes[name]
    if body:
        change.targets.append(_Target(consent_id, body, left, back))


# -- the undo ----------------------------------------------------------------------------


#: Statuses of a run refused before it sent anything (importer.reports._monitoring,
#: and the check before creating).
_REFUSED = ("refused", "stopped", "error")


def _check_run(ledger: Ledger, run_id: int) -> None:
    recorded = ledger.undo_recorded(run_id)
    if recorded is None:
        raise UsageError(
            f"ledger {ledger.path} has no run {run_id}; `consent-import status` lists its runs"
        )
    status = ledger.run_status(run_id)
    if status in _REFUSED and not ledger.changed_anything(run_id):
        raise ConfigError(
            f"run {run_id} was {status} before it sent any request: it changed nothing on "
            "the server, so there is nothing to undo; nothing was changed"
            if status == "refused"
            else f"run {run_id} stopped before it sent any request ({status}): it changed "
            "nothing on the server, so there is nothing to undo; nothing was changed"
        )
    if not recorded:
        raise ConfigError(
            f"run {run_id} was made by a consent-import before `undo` existed: it recorded "
            "nothing to take it back with; nothing was changed"
        )


class _Changed(Exception):
    """The consent is neither as the run left it nor as undo puts it back."""


def undo(config: UndoConfig, *, on_wait: Callable[[float, str], None] | None = None) -> UndoResult:
    """Take run `config.run_id` back; blocking. With `dry_run`, only reads.

    Raises:
        ConfigError: no ledger, another server's ledger, or a run that recorded nothing.
        UsageError: no such run.
    """
    api_key = check_api_key(config.api_key)
    base_url = check_base_url(config.base_url)
    if not config.ledger.is_file():  # said before the lock, which would leave its file
        raise ConfigError(no_such_file("ledger", config.ledger, "give the --ledger of a run"))
    result = UndoResult(config.run_id, str(config.ledger), config.dry_run)
    with LedgerLock(config.ledger):
        # A dry run opens the ledger read-only: it cannot write to it even by mistake.
        ledger = Ledger.open_readonly(config.ledger) if config.dry_run else Ledger(config.ledger)
        try:
            known = ledger.base_url()
            if known is not None and known != base_url:
                raise ConfigError(
                    f"ledger {config.ledger} records imports into {known}, not {base_url}; "
                    "undo against the server the ledger was written for"
                )
            _check_run(ledger, config.run_id)
            changes = [_Change.of(c) for c in ledger.run_changes(config.run_id)]
            for change in changes:
                _plan(change, ledger.field_value)
            result.rows = [c.row for c in changes]
            done = {id(row) for row in result.rows if row.outcome == "undone"}  # before
            undoer = _Undoer(config, ledger, base_url, api_key, result, on_wait)
            anyio.run(undoer.run, changes)
            if not config.dry_run:
                for row in result.rows:
                    if row.outcome == "would_undo":  # stopped before it was done
                        row.outcome = "not_done"
            if config.dry_run:
                result.evidence = ledger.undo_evidence(config.run_id, dry_run=True)
            else:
                with ledger.transaction():
                    ledger.undo_finish(config.run_id)
                    if result.aborted is None:  # else the next undo, which finishes it
                        result.evidence = ledger.undo_evidence(config.run_id)
                undone = any(r.outcome == "undone" for r in result.rows if id(r) not in done)
                if undone or result.evidence:
                    _advance_lineage(ledger, config.run_id)
        finally:
            ledger.close()
    return result


def _advance_lineage(ledger: Ledger, run_id: int) -> None:
    """The undo changed the ledger: a copy of it from before (a backup restored later)
    is an older one, and must be told from the live ledger as after a run
    (importer.ledger._lineage). A ledger already stale stays so."""
    lineage = check_lineage(ledger)
    if not lineage.stale:
        advance_lineage(ledger, lineage, run_id, undo=True)


class _Undoer:
    """Runs the undo of each row with bounded concurrency, through the run's client,
    limiter, breaker, retries and grouped ledger commits."""

    def __init__(
        self,
        config: UndoConfig,
        ledger: Ledger,
        base_url: str,
        api_key: str,
        result: UndoResult,
        on_wait: Callable[[float, str], None] | None,
    ) -> None:
        self.config, self.ledger, self.result = config, ledger, result
        self.base_url, self.api_key, self.on_wait = base_url, api_key, on_wait
        self.writer = AsyncLedger(ledger, max_unsettled=4 * config.concurrency)

    async def run(self, changes: list[_Change]) -> None:
        sniffio.current_async_library_cvar.set("asyncio")
        config = self.config
        limiter = Limiter(
            concurrency=config.concurrency, max_wait_s=config.max_wait_s, on_wait=self.on_wait
        )
        pending = iter(c for c in changes if c.row.outcome == "would_undo")
        async with open_client(
            self.base_url,
            self.api_key,
            concurrency=config.concurrency,
            timeout_s=config.timeout_s,
            limiter=limiter,
            breaker=True,
        ) as client:
            self.client = client
            async with anyio.create_task_group() as outer:
                if not config.dry_run:
                    outer.start_soon(self.writer.run_committer)
                try:
                    async with anyio.create_task_group() as workers:
                        for _ in range(config.concurrency):
                            workers.start_soon(self._worker, pending)
                finally:
                    self.writer.close()
            self.result.requests = self.client.stats.requests

    async def _worker(self, pending: Iterator[_Change]) -> None:
        for change in pending:
            try:
                await self._undo(change)
            except _STOPPERS as exc:
                # Stop well: no new request starts (the others' waits end with
                # LimiterClosed), requests on the wire finish, their outcomes commit.
                if self.client.limiter is not None:
                    self.client.limiter.close()
                if not isinstance(exc, LimiterClosed) and self.result.aborted is None:
                    self.result.aborted = (
                        f"the API key was refused ({exc.status} {exc.code or 'no code'})"
                        if isinstance(exc, AuthError)
                        else str(exc)
                    )
                return

    async def _undo(self, change: _Change) -> None:
        row = change.row
        try:
            await self._put_back_all(change)
        except _Changed:
            row.outcome = "changed_since"
            row.detail = "changed on the server while undo ran: left as it is"
        except _STOPPERS:
            raise
        except ConsentImportError as exc:
            row.outcome = "failed"
            row.detail = _failure(exc)
            log.info("undo failed: file=%s row=%d %s", row.file, row.row, row.detail)

    async def _put_back_all(self, change: _Change) -> None:
        """Read every consent of the row back; if each is as the run left it (or, after
        an earlier undo's intent, put back), commit the intent and put them back."""
        row = change.row
        seen: list[dict[str, Any] | None] = []
        for target in change.targets:
            consent = await self._get(target.consent_id)
            theirs = _state(target, consent)
            # Put back already, with no undo intent committed: someone else did it.
            if theirs == "other" or (theirs == "back" and change.record.undo is None):
                row.outcome = "changed_since"
                row.detail = "changed on the server since the run: left as it is"
                return
            seen.append(consent)
        if self.config.dry_run:
            return
        run_id, key = self.config.run_id, change.record.stored_key
        if change.record.undo is None and change.targets:
            await self.writer.write(lambda ledger: ledger.undo_mark(run_id, key, "undoing"))
        for target, consent in zip(change.targets, seen, strict=True):
            await self._put_back(target, consent)
        await self.writer.write_soon(lambda ledger: ledger.undo_restore(run_id, key))
        row.outcome = "undone"

    async def _get(self, consent_id: str) -> dict[str, Any] | None:
        """The consent as the server holds it; None when it is gone (404)."""
        async for attempt in self._retrying():
            with attempt:
                try:
                    return dict((await self.client.get_consent(consent_id)).data)
                except ClientRequestError as exc:
                    if exc.status == 404:
                        return None
                    raise
        raise AssertionError("unreachable: the retry policy re-raises the last error")

    async def _put_back(self, target: _Target, consent: dict[str, Any] | None) -> None:
        """DELETE or PATCH the consent; after a lost answer, read it again before
        sending again: a request that landed is never sent twice."""
        first = True
        async for attempt in self._retrying():
            with attempt:
                if not first:
                    consent = await self._get(target.consent_id)
                first = False
                theirs = _state(target, consent)
                if theirs == "back":
                    return
                if theirs == "other":
                    raise _Changed
                try:
                    if target.body is None:
                        await self.client.delete_consent(target.consent_id)
                    else:
                        await self.client.patch_consent(target.consent_id, target.body)
                except ClientRequestError as exc:
                    if exc.status != 404:
                        raise
                    if target.body is not None:
                        raise _Changed from None
                return

    def _retrying(self) -> Any:
        return retrying(attempts=self.config.max_attempts)


def _state(target: _Target, consent: dict[str, Any] | None) -> str:
    """Whether the consent is as the run `left` it, put `back`, or `other`."""
    if consent is None:
        return "back" if target.back is None else "other"
    if target.back is not None and not differing_fields(consent, target.back):
        return "back"
    return "other" if differing_fields(consent, target.left) else "left"


def _failure(exc: ConsentImportError) -> str:
    if isinstance(exc, ApiError):
        return f"the API answered {exc.status} {exc.code or ''}".strip()
    return type(exc).__name__


# -- output ---------------------------------------------------------------------------------


_SAID = {
    "delete": "delete the consent it created",
    "delete_and_restore": "delete the consent it created, give the retired one its status back",
    "restore_fields": "give its consent back the fields it had",
    "restore_status": "give its revoked consent back its status",
    "forget": "forget it (nothing to change on the server)",
}


def row_lines(result: UndoResult) -> list[str]:
    """One line per row that was or would be touched, or left: file and row, no PHI."""
    lines = []
    for row in result.rows:
        where = f"{row.file} row {row.row}"
        if row.outcome in LEFT:
            lines.append(f"  {where}: left ({row.outcome}): {row.detail}")
        elif result.dry_run and row.outcome == "would_undo":
            lines.append(f"  {where}: would {_SAID[row.action]}")
    return lines


def summary_lines(result: UndoResult) -> list[str]:
    counts = result.counts()
    told = ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "no rows"
    head = "Dry run of undo" if result.dry_run else "Undo"
    lines = [f"{head} of run {result.run_id}: {told}; {result.requests:,} requests"]
    if result.evidence:
        verb = "would put back" if result.dry_run else "put back"
        lines.append(
            f"--revoke-missing's evidence: {verb} {result.evidence:,} entries the run "
            "recorded (rows it counted as missing or seen again, its full reads), as before it"
        )
    if result.aborted:
        lines.append(f"stopped: {result.aborted}; run undo again to finish")
    elif result.left:
        lines.append(f"{result.left:,} rows left as they are (see above)")
    return lines


def write_report(path: Path, result: UndoResult) -> None:
    """Every row with what undo did: source keys and consent ids, so owner-only."""
    document = {
        "summary": result.summary(),
        "rows": [
            {
                "file": r.file,
                "row": r.row,
                "source_key": r.source_key,
                "consent_id": r.consent_id,
                "action": r.action,
                "outcome": r.outcome,
                "detail": r.detail,
            }
            for r in result.rows
        ],
    }
    write_text(path, json.dumps(document, indent=2) + "\n")


def check_report_path(path: Path | None) -> None:
    if path is not None and path.suffix.lower() != ".json":
        raise UsageError(f"--report {path}: undo writes a .json report")
