"""What the library's calls return: the counts of a validation, a dry run, a run, an
export and a verify. A leaf module: the engine fills these and the reports read them,
and neither imports the other.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from importer._keys import split_key

if TYPE_CHECKING:
    from importer._rows import Row, RowError
    from importer.intake._normalize import Batch


@dataclass
class FileCounts:
    rows: int = 0
    valid: int = 0
    invalid: int = 0


@dataclass
class ValidationSummary:
    """Counts of a validation, exact however many rows, and the row errors."""

    rows: int = 0
    valid: int = 0
    invalid: int = 0
    #: Rows a [[filter]] left out, or for which no [[consents]] `when` held: never sent.
    skipped: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    by_field: Counter[str] = field(default_factory=Counter)
    by_file: dict[str, FileCounts] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)
    #: FHIR elements without a ClinikAPI field, by path (`unsupported_element` errors)
    fhir_unsupported: Counter[str] = field(default_factory=Counter)
    #: validate's values profile (importer.reports._values): cell values, for reports only
    values: list[dict[str, Any]] | None = None
    #: what validate saw that is not a row error (no values: they go to the terminal)
    warnings: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        counts = self.by_file.setdefault(row.file, FileCounts())
        self.rows += 1
        counts.rows += 1
        if row.valid:
            self.valid += 1
            counts.valid += 1
        else:
            self._add_invalid(row, counts)

    def add_valid(self, file: str, rows: int) -> None:
        """Valid rows counted without their `Row`s (a rerun's unchanged rows)."""
        counts = self.by_file.setdefault(file, FileCounts())
        self.rows += rows
        counts.rows += rows
        self.valid += rows
        counts.valid += rows

    def add_batch(self, batch: Batch) -> None:
        """A chunk's verdict: its rows counted, its invalid rows' errors kept."""
        counts = self.by_file.setdefault(batch.file, FileCounts())
        valid = batch.rows - len(batch.invalid)
        self.skipped += batch.skipped
        self.rows += batch.rows
        counts.rows += batch.rows
        self.valid += valid
        counts.valid += valid
        for row in batch.invalid:
            self._add_invalid(row, counts)

    def _add_invalid(self, row: Row, counts: FileCounts) -> None:
        self.invalid += 1
        counts.invalid += 1
        for error in row.errors:
            self.by_rule[error.code] += 1
            self.by_field[error.field] += 1
            self.errors.append(error)
            if error.code == "unsupported_element":
                self.fhir_unsupported[error.field] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": {
                "rows": self.rows,
                "valid": self.valid,
                "invalid": self.invalid,
                "skipped": self.skipped,
                "by_rule": dict(self.by_rule.most_common()),
                "by_field": dict(self.by_field.most_common()),
                "by_file": {
                    name: {"rows": c.rows, "valid": c.valid, "invalid": c.invalid}
                    for name, c in self.by_file.items()
                },
            },
            "errors": [
                {
                    "file": e.file,
                    "row": e.row,
                    "field": e.field,
                    "code": e.code,
                    "message": e.message,
                    **({"consent": e.consent} if e.consent else {}),
                    **({"sheet": e.sheet} if e.sheet else {}),  # an Excel file's sheet
                }
                for e in self.errors
            ],
            # FHIR input only: what [fhir] rename or drop would have to say
            **(
                {"fhir_unsupported": dict(self.fhir_unsupported.most_common())}
                if self.fhir_unsupported
                else {}
            ),
            **({"warnings": self.warnings} if self.warnings else {}),
            **({"values": self.values} if self.values is not None else {}),
        }


@dataclass
class RunStats:
    rows: int = 0
    valid: int = 0
    invalid: int = 0
    skipped: int = 0  # filtered out by the mapping, never sent (set by the runner)
    created: int = 0
    adopted: int = 0
    updated: int = 0
    #: of `updated`, rows whose edit the API cannot PATCH, posted as a new consent and
    #: the old one retired (--on-immutable-change recreate)
    recreated: int = 0
    unchanged: int = 0
    failed: int = 0
    revoked: int = 0
    missing_from_source: int = 0
    revoke_out_of_scope: int = 0  # ledger rows missing here, but of other files or systems
    revoke_refused: str = ""  # over --revoke-max: nothing revoked (exit 2)
    revoke_note: str = ""  # a correction file, or rows without a stable key: nothing revoked
    revoke_reason: str = ""  # RevokePlan.reason
    #: rows missing from the source that --revoke-missing holds back until more runs miss
    #: them (--revoke-after), and the sentence saying when they would go
    revoke_pending: int = 0
    revoke_pending_note: str = ""
    #: the check before creating found the ledger stale or foreign: nothing created (exit 2)
    create_refused: str = ""
    source_key: str = "column"  # or "source cells"; "natural", "content hash" (older ledgers)
    #: what changed since the last run noted its mapping: "mapping", "crosswalk", both, ""
    mapping_changed: str = ""
    lookups: int = 0
    #: rows waiting out --settle after an ambiguous answer, right now
    settling: int = 0
    settled_adopted: int = 0  # found by the lookup after settling
    settled_reposted: int = 0  # not found after settling: posted again
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
            recreated=self.recreated,
            revoked=self.revoked,
            revoke_pending=self.revoke_pending,
            missing_from_source=self.missing_from_source,
            revoke_out_of_scope=self.revoke_out_of_scope,
            revoke_refused=self.revoke_refused or None,
            source_key=self.source_key,
            mapping_changed=self.mapping_changed or None,
            lookups=self.lookups,
            settled_adopted=self.settled_adopted,
            settled_reposted=self.settled_reposted,
            paused=self.paused,
            aborted=self.aborted or None,
            rows_left=self.rows_left,
            settling=self.settling,
            resets_in_s=self.resets_in_s,
            failed_by_code=self.by_error,
        )
        out["duration_s"] = round(self.duration_s, 3)
        return out


#: (ledger key, source file, source row, consent id) of a row missing from the source
Missing = tuple[str, str, int, str | None]


@dataclass
class RevokePlan:
    """The missing rows in scope, how many were out of it, and why none is revoked:
    `refusal` (over the cap: the run exits 2) or `note` (a correction file, or rows
    without a stable key), and `reason`, that why as a word for JSON logs."""

    rows: list[Missing] = field(default_factory=list)
    in_scope: int = 0
    out_of_scope: int = 0
    refusal: str = ""
    note: str = ""
    reason: str = ""  # "over_cap", "shrunk", "correction_file", "unstable_keys"
    #: --revoke-after: runs that must miss a row before it is revoked
    after: int = 1
    #: in scope and missed by enough runs: `rows` holds (some of) these
    due: int = 0
    #: in scope, missed by fewer runs than `after`: how many, by runs that missed them
    pending: dict[int, int] = field(default_factory=dict)

    @property
    def pending_total(self) -> int:
        return sum(self.pending.values())

    def pending_note(self) -> str:
        """When the held-back rows would go, one clause per count of runs that missed
        them ("28 consents missing from the source for 1 of 2 runs: revoked at the next
        run that misses them")."""
        parts = []
        for misses, count in sorted(self.pending.items(), reverse=True):
            more = self.after - misses
            when = (
                "revoked at the next run that misses them"
                if more == 1
                else f"revoked once {more} more runs miss them"
            )
            noun = "consent" if count == 1 else "consents"
            parts.append(
                f"{count:,} {noun} missing from the source for {misses} of {self.after} "
                f"runs: {when}"
            )
        return "; ".join(parts)

    @staticmethod
    def named(reason: str) -> str:
        """What a run's summary calls the brake (its warning gives the whole note)."""
        return {
            "correction_file": "a correction file",
            "unstable_keys": "rows without a stable key",
        }.get(reason, "see the warning")

    def log_fields(self) -> dict[str, object]:
        """The JSON log's fields of the line saying why nothing is revoked."""
        return {"event": "revoke_skipped", "reason": self.reason, "missing": self.in_scope}


@dataclass
class PlanSummary:
    """What a run would do, per action, without sending anything (a dry run)."""

    counts: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    invalid: int = 0
    revoke: RevokePlan | None = None  # with --revoke-missing and a ledger
    source_key: str = "column"  # as RunStats.source_key
    #: why the real run would be refused before creating (a restored or replaced ledger,
    #: importer.ledger._lineage); "" when it would not
    refused: str = ""

    def add(self, action: str) -> None:
        self.counts[action] = self.counts.get(action, 0) + 1

    def summary(self) -> dict[str, Any]:
        """The `--summary-json` keys a dry run sets over a run's (all else 0, as nothing
        was done): the rows read, and under `planned` what the terminal says the run
        would do, by action (`create`, `patch`, ..., `revoke`), no values."""
        planned = dict(sorted(self.counts.items()))
        out: dict[str, Any] = {
            "rows": self.rows,
            "valid": self.rows - self.invalid,  # skipped rows are not among `rows`
            "invalid": self.invalid,
            "skipped": self.counts.get("skipped", 0),
            "source_key": self.source_key,
            "would_be_refused": self.refused or None,
        }
        plan = self.revoke
        if plan is not None:
            held = bool(plan.refusal or plan.note)
            planned["revoke"] = 0 if held else plan.due
            out.update(
                missing_from_source=plan.in_scope,
                revoke_pending=plan.pending_total,
                revoke_out_of_scope=plan.out_of_scope,
                revoke_refused=plan.refusal or None,
            )
        out["planned"] = planned
        return out


@dataclass
class ExportCounts:
    """Rows written by `export`."""

    created: int = 0
    failed: int = 0


#: What `verify` reports, by kind.
KINDS = ("missing", "differs", "duplicate", "outcome_unknown", "unchecked", "suspect_duplicate")


@dataclass(frozen=True)
class Finding:
    """One disagreement between the ledger and the server.

    `patient_id` and `source_key` may be PHI: report files carry them, the terminal never.
    """

    kind: str
    source_file: str
    source_row: int
    source_key: str
    consent_id: str | None
    patient_id: str | None = None
    fields: tuple[str, ...] = ()
    duplicate_id: str | None = None
    detail: str = ""

    def line(self) -> str:
        """The finding as the terminal shows it: where, which consent, what; no values."""
        where = f"{self.source_file}:{self.source_row}"
        text = f"{self.kind:<15} {where}  {self.consent_id or '(no consent id)'}"
        if self.fields:
            text += f"  fields: {', '.join(self.fields)}"
        if self.duplicate_id:
            text += f"  duplicate: {self.duplicate_id}"
        return f"{text}  ({self.detail})" if self.detail else text

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["fields"] = list(self.fields)
        out["source_key"] = split_key(self.source_key)[1]  # as the file has it, no system
        return out


@dataclass
class VerifyResult:
    """What a verify found and what it cost."""

    ledger: str = ""
    ledger_consents: int = 0
    checked: int = 0
    agree: int = 0
    sampled: bool = False
    searched_patients: int = 0
    fetched_by_id: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    duration_s: float = 0.0
    aborted: str = ""
    resets_in_s: float | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """3 stopped before the end (rerun it), 1 something reported, 0 all agree."""
        if self.aborted:
            return 3
        return 1 if self.findings else 0

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(KINDS, 0)
        for finding in self.findings:
            counts[finding.kind] += 1
        return counts

    def summary(self) -> dict[str, Any]:
        return {
            "ledger_consents": self.ledger_consents,
            "checked": self.checked,
            "agree": self.agree,
            **self.counts(),
            "sampled": self.sampled,
            "searched_patients": self.searched_patients,
            "fetched_by_id": self.fetched_by_id,
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "duration_s": round(self.duration_s, 3),
            "complete": not self.aborted,
            "aborted": self.aborted or None,
            "resets_in_s": self.resets_in_s,
        }

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary(), "findings": [f.to_json() for f in self.findings]}
