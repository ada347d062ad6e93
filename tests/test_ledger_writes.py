"""The ledger's cheaper writes of issue 24 (a row's outcome as one UPDATE by key, the
patchable values kept with one encoder): the same records as the general statements."""

from __future__ import annotations

from typing import Any

import pytest

from importer.ledger._codec import pack_field_hashes, pack_hash, pack_id, pack_request_id
from importer.ledger._ledger import Ledger
from importer.ledger._schema import UNDO_COLUMNS, ErrorNote, Op, RowState, Source
from importer.ledger._transitions import _CLEARED

RUN = 1
K = Source("K1", "in.csv", 2)
ERROR = ErrorNote("api", "server_error", "503", '{"a": 1}', 503, "req_" + "ab" * 8)
T = "2026-01-01T10:00:30.000+00:00"
HASHES = {"patientId": "0a0b0c0d", "status": "01020304"}
DIGEST = "cd" * 32


def _intent(db: Ledger, src: Source = K) -> None:
    db.intent(RUN, src, Op.CREATE, body='{"b":1}', body_hash=DIGEST, patient_id="pt_1")


#: How the row stands before its outcome (each through transitions only).
BEFORE: dict[str, list[Any]] = {
    "no record": [],
    "in flight": [_intent],
    "in flight, error noted": [
        _intent,
        lambda db: db.outcome_unknown(RUN, K, Op.CREATE, ERROR),
    ],
    "settling": [
        _intent,
        lambda db: db.settling(RUN, K, Op.CREATE, ERROR, settle_after=T),
    ],
    "failed": [_intent, lambda db: db.failed(RUN, K, Op.CREATE, ERROR)],
    "in flight from another file": [lambda db: _intent(db, Source("K1", "old.csv", 9))],
    "a patch in flight": [
        lambda db: db.intent(
            RUN,
            K,
            Op.PATCH,
            body='{"status":"inactive"}',
            body_hash=DIGEST,
            patient_id="pt_1",
            consent_id="consent_" + "34" * 12,
        )
    ],
}


def _record(db: Ledger) -> tuple[dict[str, Any] | None, Any]:
    columns = ", ".join(c for c in UNDO_COLUMNS if c != "updated_at")
    found = db._db.execute(f"SELECT {columns} FROM rows").fetchall()  # noqa: S608
    bodies = db._db.execute("SELECT * FROM bodies").fetchall()
    tally = db._db.execute("SELECT * FROM tally WHERE n != 0 ORDER BY 1, 2, 3").fetchall()
    names = [c for c in UNDO_COLUMNS if c != "updated_at"]
    rows = [dict(zip(names, r, strict=True)) for r in found]
    return (rows[0] if rows else None), (bodies, tally)


@pytest.mark.parametrize("before", list(BEFORE))
@pytest.mark.parametrize("consent_id", ["consent_" + "12" * 12, None])
@pytest.mark.parametrize("cells_hash", [None, -5])
def test_done_leaves_the_record_the_upsert_left(
    before: str, consent_id: str | None, cells_hash: int | None
) -> None:
    """`done` by UPDATE (or an insert for a row of no record) against the general upsert
    it replaced, column by column, with the body and the tally."""
    made, reference = Ledger(":memory:"), Ledger(":memory:")
    for db in (made, reference):
        for step in BEFORE[before]:
            step(db)
    with made.transaction():
        made.done(
            RUN + 1,
            K,
            Op.CREATE,
            action="created",
            payload_hash=DIGEST,
            field_hashes=HASHES,
            patient_id="pt_2",
            request_id="req_" + "01" * 8,
            consent_id=consent_id,
            cells_hash=cells_hash,
        )
    values: dict[str, Any] = {
        **_CLEARED,
        "state": RowState.DONE,
        "action": "created",
        "payload_hash": pack_hash(DIGEST),
        "field_hashes": pack_field_hashes(HASHES),
        "cells_hash": cells_hash,
        "request_id": pack_request_id("req_" + "01" * 8),
        "patient_id": "pt_2",
    }
    if consent_id is not None:
        values["consent_id"] = pack_id(consent_id)
    with reference.transaction():
        reference._upsert(RUN + 1, K, values)
    assert _record(made) == _record(reference)
    row = made.get(["K1"])["K1"]
    assert row.state is RowState.DONE
    assert row.pending_body is None
    assert made.counts() == {"done": 1}
