"""`consent-import verify`: read back what the ledger says the server holds.

For every consent the ledger says was created or updated (or a sample of them), the
server's copy is read and compared with what was sent, as the ledger remembers it: a hash
per field, never the values. What it reports:

- `missing`: the ledger has it, the server does not (a 404 by id);
- `differs`: fields the server holds differ from what was sent (named, never shown);
- `duplicate`: another consent of the same patient with the same scope, categories and
  date-time, which no ledger row claims;
- `outcome_unknown`: a row whose create may or may not have landed (a rerun settles it);
- `unchecked`: the server could not be read for it, even after retries;
- `suspect_duplicate`: another live consent of the patient with the same scope and
  categories, whose date-time is a whole number of hours away (up to 14) or on the same
  day: the trace of a time zone (or date format) read two ways, by natural keys of before
  or by two ledgers (importer.reports._suspects).

It only reads: GET requests through the run's limiter (budget, `--max-wait`), the ledger
opened read-only under its lock.

Cost: a search per patient reads all of a patient's consents, 100 a page, and is the only
way to see duplicates; a GET per consent costs one request each. Per patient, the plan
takes whichever costs fewer requests on what the ledger knows (a search needs at least one
page per 100 of the ledger's consents of that patient), the search on a tie. A search
that has read as many pages as the GETs would cost, without finding all of ours, stops
and fetches the rest by id (which also tells a lagging search index from a deletion).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError

from importer._errors import (
    ApiError,
    AuthError,
    BudgetWaitTooLong,
    ClientRequestError,
    ConfigError,
    ConsentImportError,
    UsageError,
    no_such_file,
)
from importer._options import DEFAULTS
from importer._results import KINDS, Finding, VerifyResult
from importer._rows import body_field_hashes
from importer.api._build import open_client
from importer.api._client import (
    MAX_PAGE_SIZE,
    ClinikClient,
    check_api_key,
    check_base_url,
)
from importer.api._limiter import Limiter
from importer.api._lookup import matches_consent
from importer.api._retry import retrying
from importer.engine._preflight import refused_key
from importer.intake._models import ConsentIn
from importer.ledger._ledger import Ledger
from importer.ledger._lock import LedgerLock
from importer.ledger._schema import DoneConsent, UnknownOutcome
from importer.reports import _outputs as outputs
from importer.reports._report import SafeCsvWriter, check_report_paths, write_json
from importer.reports._suspects import suspects

#: The body fields a consent can carry, by their API (camelCase) names.
_BODY_FIELDS = frozenset(f.alias or name for name, f in ConsentIn.model_fields.items())
#: Values the server fills in when a body leaves the field out (clinikapi.md).
_SERVER_DEFAULTS = {"status": "active"}
#: The fields that make two consents the same signed consent (lookup.matches_consent).
_IDENTITY = ("patientId", "scope", "category", "dateTime")
#: Findings printed on the terminal; the report files hold them all.
SHOWN = 50
CSV_COLUMNS = (
    "kind",
    "source_file",
    "source_row",
    "source_key",
    "consent_id",
    "duplicate_id",
    "patient_id",
    "fields",
    "detail",
)


@dataclass
class VerifyConfig:
    """Everything `consent-import verify` takes, as a library call takes it."""

    ledger: Path
    base_url: str = DEFAULTS.base_url
    api_key: str | None = field(default=None, repr=False)  # never printed whole
    sample: int | None = None
    concurrency: int = DEFAULTS.concurrency
    timeout_s: float = DEFAULTS.timeout_s
    max_attempts: int = DEFAULTS.max_attempts
    max_wait_s: float | None = None
    seed: int | None = None  # for the sample; tests pin it


@dataclass
class ReadPlan:
    """Which patients to search and which consents to fetch by id."""

    searches: dict[str, list[DoneConsent]] = field(default_factory=dict)
    gets: list[DoneConsent] = field(default_factory=list)


def plan_reads(chosen: Sequence[DoneConsent], everything: Sequence[DoneConsent]) -> ReadPlan:
    """Search per patient or GET per consent, whichever costs fewer requests.

    A patient's search reads all of the patient's consents on the server, so it costs at
    least one page per 100 of the ledger's consents of that patient (`everything`), and
    it replaces one GET per chosen consent. On a tie the search wins: only it can see a
    duplicate. Rows without a patient id can only be fetched by id.
    """
    held: dict[str, int] = defaultdict(int)
    for row in everything:
        if row.patient_id:
            held[row.patient_id] += 1
    by_patient: dict[str, list[DoneConsent]] = defaultdict(list)
    plan = ReadPlan()
    for row in chosen:
        if row.patient_id:
            by_patient[row.patient_id].append(row)
        else:
            plan.gets.append(row)
    for patient, rows in by_patient.items():
        pages = max(1, math.ceil(held[patient] / MAX_PAGE_SIZE))
        if pages <= len(rows):
            plan.searches[patient] = rows
        else:
            plan.gets.extend(rows)
    return plan


def check_verify_report_paths(paths: Sequence[str], ledger: Path) -> list[Path]:
    """Report paths of a kind we write, none of them the ledger or another report, each
    in a writable folder (importer.reports._outputs)."""
    checked = check_report_paths(paths)
    outputs.check([("--report", p) for p in checked], [("--ledger", ledger)])
    return checked


def verify(
    config: VerifyConfig,
    *,
    on_wait: Callable[[float, str], None] | None = None,
    on_plan: Callable[[ReadPlan], None] | None = None,
) -> VerifyResult:
    """Read back the ledger's consents from the server; blocking. Writes nothing (the
    caller writes the reports).

    Args:
        on_wait: called with (seconds, reason) before a long wait for the rate budget.
        on_plan: called with the plan before the first request.
    """
    api_key = check_api_key(config.api_key)
    base_url = check_base_url(config.base_url)
    if config.sample is not None and config.sample < 1:
        raise UsageError("--sample must be at least 1")
    if not config.ledger.is_file():  # said before the lock, which would leave its file
        raise ConfigError(no_such_file("ledger", config.ledger, "give the --ledger of a run"))
    started = time.monotonic()
    with LedgerLock(config.ledger):
        ledger = Ledger.open_readonly(config.ledger)
        try:
            known = ledger.base_url()
            if known is not None and known != base_url:
                raise ConfigError(
                    f"ledger {config.ledger} records imports into {known}, not {base_url}; "
                    "verify against the server the ledger was written for"
                )
            everything = ledger.done_consents()
            unknown = ledger.unknown_outcomes()
            chosen: list[DoneConsent] = everything
            result = VerifyResult(str(config.ledger), ledger_consents=len(everything))
            if config.sample is not None and config.sample < len(everything):
                chosen = random.Random(config.seed).sample(everything, config.sample)
                result.sampled = True
            plan = plan_reads(chosen, everything)
            if on_plan is not None:
                on_plan(plan)
            checker = _Checker(config, base_url, api_key, everything, result, on_wait)
            anyio.run(checker.run, plan)
            _drop_claimed(result, ledger)
        finally:
            ledger.close()
    result.findings.extend(_unknown_finding(row) for row in unknown)
    order = {kind: i for i, kind in enumerate(KINDS)}
    result.findings.sort(key=lambda f: (order[f.kind], f.source_file, f.source_row))
    result.duration_s = time.monotonic() - started
    return result


def _drop_claimed(result: VerifyResult, ledger: Ledger) -> None:
    """A consent that some ledger row claims is that row's, not a duplicate."""
    candidates = [f.duplicate_id for f in result.findings if f.kind == "duplicate"]
    ids = [c for c in candidates if c]
    claimed: set[str] = set()
    for start in range(0, len(ids), 500):  # SQLite bounds the parameters of one query
        claimed |= ledger.claimed_consents(ids[start : start + 500])
    result.findings = [
        f for f in result.findings if f.kind != "duplicate" or f.duplicate_id not in claimed
    ]


def _unknown_finding(row: UnknownOutcome) -> Finding:
    detail = (
        "still settling"
        if row.state == "settling"
        else "sent, but whether it was stored is unknown; a run with this ledger looks it up"
    )
    return Finding(
        "outcome_unknown",
        row.source_file,
        row.source_row,
        row.source_key,
        row.consent_id,
        row.patient_id,
        detail=detail,
    )


class _Checker:
    """Runs a plan's reads with bounded concurrency and records what they show."""

    def __init__(
        self,
        config: VerifyConfig,
        base_url: str,
        api_key: str,
        everything: Sequence[DoneConsent],
        result: VerifyResult,
        on_wait: Callable[[float, str], None] | None,
    ) -> None:
        self.config = config
        self.base_url = base_url
        self.api_key = api_key
        self.result = result
        self.on_wait = on_wait
        self._of_patient: dict[str, list[DoneConsent]] = defaultdict(list)
        for row in everything:
            if row.patient_id:
                self._of_patient[row.patient_id].append(row)
        self._client: ClinikClient | None = None
        self._scope: anyio.CancelScope | None = None

    async def run(self, plan: ReadPlan) -> None:
        limiter = Limiter(
            concurrency=self.config.concurrency,
            max_wait_s=self.config.max_wait_s,
            on_wait=self.on_wait,
        )
        jobs: list[Callable[[], Awaitable[None]]] = [
            partial(self._search, patient, rows) for patient, rows in plan.searches.items()
        ]
        jobs += [partial(self._get, row) for row in plan.gets]
        async with open_client(
            self.base_url,
            self.api_key,
            concurrency=self.config.concurrency,
            timeout_s=self.config.timeout_s,
            limiter=limiter,
        ) as client:
            self._client = client
            pending = iter(jobs)
            # The first read goes alone: a refused key is then one request and one line
            # (exit 2, as run's preflight), not a refusal per worker.
            first = next(pending, None)
            if first is not None:
                await first()
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                for _ in range(min(self.config.concurrency, len(jobs))):
                    tg.start_soon(self._worker, pending)
            self.result.requests = self._client.stats.requests
            self.result.rate_limited = self._client.stats.rate_limited

    async def _worker(self, pending: Iterator[Callable[[], Awaitable[None]]]) -> None:
        for job in pending:
            await job()

    # -- reads ------------------------------------------------------------------------

    async def _search(self, patient: str, rows: list[DoneConsent]) -> None:
        """Read the patient's consents; compare ours, look for duplicates among the rest."""
        ours = {row.consent_id: row for row in rows}
        seen: dict[str, dict[str, Any]] = {}
        others: list[dict[str, Any]] = []
        capped = False

        async def read() -> None:
            nonlocal capped
            seen.clear()
            others.clear()
            pages = 0
            assert self._client is not None
            search = self._client.search_pages(patient_id=patient)
            async with aclosing(search) as found:
                async for page, more in found:
                    pages += 1
                    for consent in page:
                        consent_id = str(consent.get("id"))
                        if consent_id in ours:
                            seen[consent_id] = consent
                        else:
                            others.append(consent)
                    # Past the GETs it replaces, a search costs more than it saves.
                    capped = more and pages >= len(rows) and len(seen) < len(ours)
                    if capped:
                        break

        if not await self._read(read, rows):
            return
        self.result.searched_patients += 1
        for row in rows:
            if row.consent_id in seen:
                self._compare(row, seen[row.consent_id])
            else:
                # Not in the search: gone, or the search index lags behind the store.
                await self._get(row)
        self._duplicates(patient, others, seen)
        for row, other, detail in suspects(rows, seen, others):
            self.result.findings.append(
                Finding(
                    "suspect_duplicate",
                    row.source_file,
                    row.source_row,
                    row.source_key,
                    row.consent_id,
                    row.patient_id,
                    duplicate_id=other,
                    detail=detail,
                )
            )

    async def _get(self, row: DoneConsent) -> None:
        consent: dict[str, Any] | None = None

        async def read() -> None:
            nonlocal consent
            assert self._client is not None
            try:
                response = await self._client.get_consent(row.consent_id)
            except ClientRequestError as exc:
                if exc.status != 404:
                    raise
                consent = None
                return
            consent = response.data if isinstance(response.data, dict) else {}

        if not await self._read(read, [row]):
            return
        self.result.fetched_by_id += 1
        if consent is None:
            self._found(row, "missing", detail="the server has no consent with this id")
        else:
            self._compare(row, consent)

    async def _read(self, read: Callable[[], Awaitable[None]], rows: Sequence[DoneConsent]) -> bool:
        """Run `read` with retries; False when it failed (rows reported) or the run stops."""
        try:
            async for attempt in retrying(
                attempts=self.config.max_attempts, on_retry=self._retried
            ):
                with attempt:
                    await read()
        except BudgetWaitTooLong as exc:
            self._stop(
                f"the rate-limit budget resets in {exc.reset_in_s:,.0f} s, past --max-wait",
                exc.reset_in_s,
            )
            return False
        except AuthError as exc:
            if self._scope is None:  # the first read: nothing was verified yet
                assert self._client is not None
                where = self.base_url + "/v1/consents"
                code = exc.code or "no code"
                raise refused_key(where, self._client.masked_key, exc.status, code) from None
            self._stop(f"authentication failed ({exc.status} {exc.code or 'no code'})")
            return False
        except ConsentImportError as exc:
            code = f"http_{exc.status}" if isinstance(exc, ApiError) else "network_error"
            for row in rows:
                self._found(row, "unchecked", detail=f"could not read it: {code}")
            return False
        return True

    def _retried(self, exc: BaseException, attempt: int) -> None:
        self.result.retries += 1

    def _stop(self, reason: str, resets_in_s: float | None = None) -> None:
        if not self.result.aborted:
            self.result.aborted = reason
            self.result.resets_in_s = None if resets_in_s is None else round(resets_in_s, 1)
        assert self._scope is not None
        self._scope.cancel()

    # -- judging ----------------------------------------------------------------------

    def _compare(self, row: DoneConsent, consent: dict[str, Any]) -> None:
        differing = differing_fields(consent, row.field_hashes)
        if differing:
            self._found(row, "differs", fields=tuple(differing), detail="the server's copy differs")
        else:
            self.result.checked += 1
            self.result.agree += 1

    def _duplicates(
        self, patient: str, others: list[dict[str, Any]], seen: dict[str, dict[str, Any]]
    ) -> None:
        """Consents of the patient matching one of the ledger's rows (claims are checked
        against the whole ledger afterwards)."""
        for other in others:
            for row in self._of_patient[patient]:
                ours = seen.get(row.consent_id)
                if ours is not None:
                    # Policy aside: a second copy with another policy is still a second
                    # consent for the same signature.
                    same = matches_consent(other, {**ours, "policyUri": other.get("policyUri")})
                else:
                    same = same_identity(other, row.field_hashes)
                if same:
                    self.result.findings.append(
                        Finding(
                            "duplicate",
                            row.source_file,
                            row.source_row,
                            row.source_key,
                            row.consent_id,
                            row.patient_id,
                            duplicate_id=str(other.get("id")),
                            detail="another consent with the same patient, scope, categories "
                            "and date-time, claimed by no ledger row",
                        )
                    )
                    break

    def _found(
        self, row: DoneConsent, kind: str, *, fields: tuple[str, ...] = (), detail: str = ""
    ) -> None:
        if kind != "unchecked":
            self.result.checked += 1
        self.result.findings.append(
            Finding(
                kind,
                row.source_file,
                row.source_row,
                row.source_key,
                row.consent_id,
                row.patient_id,
                fields=fields,
                detail=detail,
            )
        )


def normalised_body(consent: dict[str, Any]) -> dict[str, Any]:
    """The server's consent as the importer would have sent it: body fields only, through
    the same model and JSON dump as a row (`Row.body`), so equal values hash equal."""
    body = {name: value for name, value in consent.items() if name in _BODY_FIELDS}
    try:
        model = ConsentIn.model_validate(body)
    except ValidationError:
        return body  # compared as the server wrote it: any difference still shows
    parsed: dict[str, Any] = json.loads(model.model_dump_json(by_alias=True, exclude_none=True))
    return parsed


def differing_fields(consent: dict[str, Any], sent: dict[str, str]) -> list[str]:
    """Names of the fields whose server value differs from what was sent (by hash).

    A field we left out that the server filled with its documented default is no
    difference; any other field the server holds and we did not send is one.
    """
    theirs = body_field_hashes(normalised_body(consent))
    return sorted(
        name
        for name in set(sent) | set(theirs)
        if theirs.get(name) != sent.get(name)
        and not (name not in sent and consent.get(name) == _SERVER_DEFAULTS.get(name, ...))
    )


def same_identity(consent: dict[str, Any], sent: dict[str, str]) -> bool:
    """Does `consent` carry the identity fields that were sent (by hash), for a row
    whose own copy is gone from the server?"""
    theirs = body_field_hashes(normalised_body(consent))
    return all(theirs.get(name) == sent.get(name) for name in _IDENTITY)


# -- output ---------------------------------------------------------------------------


def write_reports(paths: Sequence[Path], result: VerifyResult) -> None:
    """The report files: .json, .csv (one line per finding) or .html. They may hold PHI
    (patient ids, source keys), so they are written owner-only (importer.reports._outputs)."""
    for path in paths:
        suffix = path.suffix.lower()
        if suffix == ".json":
            write_json(path, result.to_json())
        elif suffix == ".csv":
            with SafeCsvWriter(path, CSV_COLUMNS) as writer:
                for finding in result.findings:
                    cells = finding.to_json()
                    cells["fields"] = ";".join(finding.fields)
                    writer.write(cells)
        else:
            from importer.reports._html_report import write_verify_html

            write_verify_html(path, result)


def summary_lines(result: VerifyResult, ledger: Path) -> list[str]:
    """The terminal summary: counts, then the first findings; no cell values, no patient ids."""
    counts = result.counts()
    scope = (
        f"a sample of {result.checked + counts['unchecked']:,}"
        if result.sampled
        else f"{result.checked + counts['unchecked']:,}"
    )
    lines = [
        f"Verify {ledger}: {scope} of {result.ledger_consents:,} consents read back · "
        f"{result.agree:,} agree · " + " · ".join(f"{counts[kind]:,} {kind}" for kind in KINDS),
        f"     {result.requests:,} requests ({result.searched_patients:,} patients searched, "
        f"{result.fetched_by_id:,} consents fetched by id) · {result.retries:,} retries · "
        f"{result.duration_s:,.1f} s",
    ]
    for finding in result.findings[:SHOWN]:
        lines.append(f"  {finding.line()}")
    if len(result.findings) > SHOWN:
        lines.append(f"  … and {len(result.findings) - SHOWN:,} more; write them with --report")
    if result.aborted:
        lines.append(f"Stopped early: {result.aborted}. Nothing was changed; run verify again.")
    return lines
