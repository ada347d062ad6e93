"""A row's decision: what to do with one row, given what the ledger knows of it.

`decide_row` is a pure function of the row, its ledger record and the options; the engine
carries its decision out, and the dry run (`importer.engine._dry_run`) only counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from importer._keys import pinned_fields
from importer._options import RunOptions
from importer._rows import Row
from importer.ledger._codec import same_payload
from importer.ledger._schema import LedgerRow, Op, RowState

#: Fields ClinikAPI lets a PATCH replace; a change to any other field cannot be patched.
PATCHABLE = ("status", "policyUri", "verification", "provision")


class Verdict(StrEnum):
    """A row's decision, in one word."""

    SEND = "send"  # send `op`
    UNCHANGED = "unchanged"  # the server already holds this exact body
    INVALID = "invalid"  # the row failed validation
    IMMUTABLE_CHANGE = "immutable_change"  # edited where the API cannot patch (option: fail)


@dataclass(frozen=True, slots=True)
class RowDecision:
    """What to do with one row.

    Args:
        op: the request to send (SEND only).
        lookup_first: an earlier POST of this row may have stored the consent (or the
            options ask to adopt existing consents): search before posting.
        consent_id: the consent the op acts on (patch, retire), or the one a recreate
            replaces.
        not_before: the lookup waits until then (UTC): an ambiguous answer, or an
            intent a crash cut short, is given `settle_s` to show on the server.
    """

    verdict: Verdict
    op: Op | None = None
    lookup_first: bool = False
    consent_id: str | None = None
    not_before: datetime | None = None

    @property
    def label(self) -> str:
        """The decision as a dry run counts it."""
        if self.op is None:
            return self.verdict.value
        return f"{self.op} (after a lookup)" if self.lookup_first else self.op.value


SEND = Verdict.SEND
_UNCHANGED = RowDecision(Verdict.UNCHANGED)
_INVALID = RowDecision(Verdict.INVALID)
_IMMUTABLE = RowDecision(Verdict.IMMUTABLE_CHANGE)


def decide_row(row: Row, before: LedgerRow | None, options: RunOptions) -> RowDecision:
    """The decision for `row` given the ledger's record of its key (None: a new key)."""
    if not row.valid:
        return _INVALID
    if (
        before is not None
        and before.state is RowState.FAILED
        and before.error_code == "outcome_unknown"
        and (
            before.pending_op in (Op.CREATE, Op.RECREATE)
            or (before.pending_op is None and before.consent_id is None)  # older ledgers
        )
    ):
        # Gave up after ambiguous answers: the consent may exist; look before posting.
        again = before.pending_op or Op.CREATE
        return RowDecision(SEND, again, lookup_first=True, consent_id=before.consent_id)
    if (
        before is None
        or before.state in (RowState.INVALID, RowState.PENDING)
        or (before.state is RowState.FAILED and before.consent_id is None)
    ):
        return RowDecision(Verdict.SEND, Op.CREATE, lookup_first=options.skip_existing)
    if before.state in (RowState.IN_FLIGHT, RowState.SETTLING):
        op = before.pending_op or Op.CREATE
        if op in (Op.CREATE, Op.RECREATE):
            # Outcome unknown: the lookup decides between adopting and posting, once the
            # server has had its time to show the consent.
            return RowDecision(
                SEND,
                op,
                lookup_first=True,
                consent_id=before.consent_id,
                not_before=_settle_deadline(before, options.settle_s),
            )
        if op is Op.RETIRE:
            return RowDecision(Verdict.SEND, op, consent_id=before.consent_id)
        if op is Op.PATCH and before.payload_hash is None and before.consent_id is not None:
            # An adoption's PATCH a crash cut short: the consent is the row's, what it
            # holds unknown; patch it to the row (never a create, never a refusal).
            return RowDecision(Verdict.SEND, Op.PATCH, consent_id=before.consent_id)
        # An unfinished PATCH is safe to send again (it replaces values): go on and
        # compare with what the server last held.
    if same_payload(before.payload_hash, row.body_hash):
        if before.state is RowState.DONE:
            return _UNCHANGED
        return RowDecision(Verdict.SEND, Op.PATCH, consent_id=before.consent_id)
    # Fields a natural key pins are equal whenever the key matches: a difference there is
    # only how they are written (category order, the zone of the instant).
    differing = changed_fields(row, before)
    changed = set(differing) - pinned_fields(row.source_key)
    if not changed and before.state is RowState.DONE:
        if differing or before.payload_hash is None:
            return _UNCHANGED
        # The body differs but no field's 4-byte hash does: an edit whose hashes collide
        # (2**-32 an edited field). The payload hash saw it; a PATCH sends every patchable
        # field, so the server gets the edit.
        return RowDecision(Verdict.SEND, Op.PATCH, consent_id=before.consent_id)
    if changed - set(PATCHABLE):
        if options.on_immutable_change == "recreate":
            return RowDecision(Verdict.SEND, Op.RECREATE, consent_id=before.consent_id)
        return _IMMUTABLE
    return RowDecision(Verdict.SEND, Op.PATCH, consent_id=before.consent_id)


def _settle_deadline(before: LedgerRow, settle_s: float) -> datetime | None:
    """When a row whose POST may have landed can be looked up: a settling row at its
    stored deadline, an in-flight row (a crash cut it short) `settle_s` after its intent."""
    if settle_s <= 0:
        return None
    if before.state is RowState.SETTLING:
        return _parse_time(before.settle_after)
    intent_at = _parse_time(before.updated_at)
    return None if intent_at is None else intent_at + timedelta(seconds=settle_s)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def changed_fields(row: Row, before: LedgerRow) -> list[str]:
    """Top-level API fields whose value differs from what the server last held."""
    new, old = row.field_hashes(), before.field_hashes
    return sorted(name for name in set(new) | set(old) if new.get(name) != old.get(name))


def immutable_changes(row: Row, before: LedgerRow) -> list[str]:
    """The changed fields a PATCH cannot apply (less those a natural key pins)."""
    changed = set(changed_fields(row, before)) - pinned_fields(row.source_key)
    return sorted(changed - set(PATCHABLE))
