"""decide_row as a decision table: (ledger record, row, options) -> plan."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from importer._options import RunOptions
from importer._rows import Row, RowError
from importer.engine._decide import RowDecision, Verdict, decide_row
from importer.intake._models import ConsentIn
from importer.ledger._schema import LedgerRow, Op, RowState

BODY = {
    "patientId": "pt_1",
    "scope": "treatment",
    "category": ["treatment-consent"],
    "status": "active",
    "dateTime": "2024-01-01T00:00:00Z",
    "policyUri": "https://clinic.example/policy/v1",
}


def row(**changes: Any) -> Row:
    return Row("in.csv", 2, "K1", model=ConsentIn.model_validate({**BODY, **changes}))


def record(
    state: RowState,
    *,
    held: Row | None = None,
    consent_id: str | None = "c1",
    pending_op: Op | None = None,
) -> LedgerRow:
    """The ledger's record of K1; `held` is the body the server holds (default: BODY)."""
    held = held or row()
    return LedgerRow(
        "K1",
        state,
        None,
        consent_id,
        held.body_hash,
        held.field_hashes(),
        pending_op,
        None,
        None,
        None,
    )


INVALID_ROW = Row("in.csv", 2, "K1", errors=[RowError("in.csv", 2, "scope", "invalid_enum", "x")])
SEND = Verdict.SEND
FAIL, RECREATE = RunOptions(), RunOptions(on_immutable_change="recreate")
SKIP_EXISTING = RunOptions(skip_existing=True)
SETTLE_5 = RunOptions(settle_s=5)
AT = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("before", "the_row", "options", "plan"),
    [
        # new rows, and rows that never reached the server
        (None, row(), FAIL, RowDecision(SEND, Op.CREATE)),
        (None, row(), SKIP_EXISTING, RowDecision(SEND, Op.CREATE, lookup_first=True)),
        (None, INVALID_ROW, FAIL, RowDecision(Verdict.INVALID)),
        (record(RowState.INVALID, consent_id=None), row(), FAIL, RowDecision(SEND, Op.CREATE)),
        (record(RowState.PENDING, consent_id=None), row(), FAIL, RowDecision(SEND, Op.CREATE)),
        (record(RowState.FAILED, consent_id=None), row(), FAIL, RowDecision(SEND, Op.CREATE)),
        # done: unchanged, patchable edit, immutable edit
        (record(RowState.DONE), row(), FAIL, RowDecision(Verdict.UNCHANGED)),
        (
            record(RowState.DONE),
            row(status="inactive"),
            FAIL,
            RowDecision(SEND, Op.PATCH, consent_id="c1"),
        ),
        (record(RowState.DONE), row(scope="research"), FAIL, RowDecision(Verdict.IMMUTABLE_CHANGE)),
        (
            record(RowState.DONE),
            row(scope="research"),
            RECREATE,
            RowDecision(SEND, Op.RECREATE, consent_id="c1"),
        ),
        # an earlier edit whose PATCH failed: the same body is patched again
        (record(RowState.FAILED), row(), FAIL, RowDecision(SEND, Op.PATCH, consent_id="c1")),
        # in flight (a crash, or an unknown outcome): look up before any POST
        (
            record(RowState.IN_FLIGHT, consent_id=None, pending_op=Op.CREATE),
            row(),
            FAIL,
            RowDecision(SEND, Op.CREATE, lookup_first=True),
        ),
        (
            record(RowState.IN_FLIGHT, consent_id=None, pending_op=None),  # old ledgers
            row(),
            FAIL,
            RowDecision(SEND, Op.CREATE, lookup_first=True),
        ),
        (
            record(RowState.IN_FLIGHT, pending_op=Op.RECREATE),
            row(scope="research"),
            RECREATE,
            RowDecision(SEND, Op.RECREATE, lookup_first=True, consent_id="c1"),
        ),
        (
            record(RowState.IN_FLIGHT, consent_id="c2", pending_op=Op.RETIRE),
            row(scope="research"),
            FAIL,
            RowDecision(SEND, Op.RETIRE, consent_id="c2"),
        ),
        # an unfinished PATCH: compare with what the server last held
        (
            record(RowState.IN_FLIGHT, pending_op=Op.PATCH),
            row(status="inactive"),
            FAIL,
            RowDecision(SEND, Op.PATCH, consent_id="c1"),
        ),
        (
            record(RowState.IN_FLIGHT, pending_op=Op.PATCH),
            row(),
            FAIL,
            RowDecision(SEND, Op.PATCH, consent_id="c1"),
        ),
        # settling: the lookup waits for the stored deadline (kept across a crash)
        (
            replace(
                record(RowState.SETTLING, consent_id=None, pending_op=Op.CREATE),
                settle_after="2026-01-01T10:00:30.000+00:00",
            ),
            row(),
            FAIL,
            RowDecision(SEND, Op.CREATE, lookup_first=True, not_before=AT + timedelta(seconds=30)),
        ),
        # in flight when a run died: `settle_s` after its intent
        (
            replace(
                record(RowState.IN_FLIGHT, consent_id=None, pending_op=Op.CREATE),
                updated_at="2026-01-01T10:00:00.000+00:00",
            ),
            row(),
            SETTLE_5,
            RowDecision(SEND, Op.CREATE, lookup_first=True, not_before=AT + timedelta(seconds=5)),
        ),
        # gave up after --max-attempts ambiguous answers: looked up before any POST
        (
            replace(
                record(RowState.FAILED, consent_id=None, pending_op=Op.CREATE),
                error_code="outcome_unknown",
            ),
            row(),
            FAIL,
            RowDecision(SEND, Op.CREATE, lookup_first=True),
        ),
        # an adoption's PATCH a crash cut short (no hashes yet): a PATCH of that consent
        (
            replace(record(RowState.IN_FLIGHT, pending_op=Op.PATCH), payload_hash=None),
            row(),
            FAIL,
            RowDecision(SEND, Op.PATCH, consent_id="c1"),
        ),
        (
            replace(
                record(RowState.IN_FLIGHT, pending_op=Op.PATCH), payload_hash=None, field_hashes={}
            ),
            row(scope="research"),
            RECREATE,
            RowDecision(SEND, Op.PATCH, consent_id="c1"),
        ),
        # a PATCH with no answer (older ledgers: failed, outcome_unknown, no op): a PATCH
        # of the row's consent again, never a lookup and a create
        (
            replace(record(RowState.FAILED), error_code="outcome_unknown"),
            row(policyUri="https://clinic.example/policy/v2"),
            FAIL,
            RowDecision(SEND, Op.PATCH, consent_id="c1"),
        ),
        (
            replace(record(RowState.FAILED, pending_op=Op.PATCH), error_code="outcome_unknown"),
            row(status="inactive"),
            FAIL,
            RowDecision(SEND, Op.PATCH, consent_id="c1"),
        ),
        # ... and now: done, the fields it carried without a hash, so they are sent again
        (
            replace(
                record(RowState.DONE),
                payload_hash=None,
                field_hashes={k: v for k, v in row().field_hashes().items() if k != "status"},
                error_code="patch_outcome_unknown",
            ),
            row(),
            FAIL,
            RowDecision(SEND, Op.PATCH, consent_id="c1"),
        ),
        # a revoke a crash cut short, the row back in the source: a PATCH (to active)
        (
            record(RowState.IN_FLIGHT, pending_op=Op.REVOKE),
            row(),
            FAIL,
            RowDecision(SEND, Op.PATCH, consent_id="c1"),
        ),
        # revoked (the ledger forgets the body's hash), then back in the source as it was
        (
            replace(record(RowState.REVOKED), payload_hash=None),
            row(),
            FAIL,
            RowDecision(SEND, Op.PATCH, consent_id="c1"),
        ),
    ],
)
def test_plan_row(
    before: LedgerRow | None, the_row: Row, options: RunOptions, plan: RowDecision
) -> None:
    assert decide_row(the_row, before, options) == plan


@pytest.mark.parametrize(
    ("plan", "label"),
    [
        (RowDecision(SEND, Op.CREATE), "create"),
        (RowDecision(SEND, Op.CREATE, lookup_first=True), "create (after a lookup)"),
        (RowDecision(Verdict.UNCHANGED), "unchanged"),
        (RowDecision(Verdict.IMMUTABLE_CHANGE), "immutable_change"),
    ],
)
def test_a_plan_as_the_dry_run_counts_it(plan: RowDecision, label: str) -> None:
    assert plan.label == label
