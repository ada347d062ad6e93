"""The ledger's row states and the named transitions between them, as a table."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from importer.ledger import _ledger as ledger_module
from importer.ledger._ledger import Ledger
from importer.ledger._schema import ErrorNote, Op, RowState, Source
from importer.sandbox import SandboxConfig, running_sandbox
from tests.engine_helpers import consent_rows, run, write_csv

K = Source("K1", "in.csv", 2)
ERROR = ErrorNote("api", "server_error", "503", "{}", 503, "req_1")
RUN = 1
T = "2026-01-01T10:00:30.000+00:00"

Event = Callable[[Ledger], None]


def intent(op: Op = Op.CREATE) -> Event:
    return lambda db: db.intent(RUN, K, op, body="{}", body_hash="h", patient_id="pt_1")


def done(db: Ledger) -> None:
    db.done(
        RUN,
        K,
        Op.CREATE,
        action="created",
        payload_hash="h",
        field_hashes={},
        patient_id="pt_1",
        request_id="req_1",
        consent_id="c1",
    )


def unsent(before: RowState | None) -> Event:
    return lambda db: db.unsent(K, before)


#: How to bring K1 into each state, through transitions only.
SETUP: dict[RowState | None, list[Event]] = {
    None: [],
    RowState.INVALID: [lambda db: db.invalid(RUN, K, ERROR)],
    RowState.IN_FLIGHT: [intent()],
    RowState.PENDING: [intent(), intent(), unsent(RowState.IN_FLIGHT)],
    RowState.DONE: [intent(), done],
    RowState.FAILED: [intent(), lambda db: db.failed(RUN, K, Op.CREATE, ERROR)],
    RowState.REVOKED: [intent(), done, lambda db: db.revoked(RUN, "K1")],
    RowState.SETTLING: [intent(), lambda db: db.settling(RUN, K, Op.CREATE, ERROR, settle_after=T)],
}
EVENTS: dict[str, Event] = {
    "intent": intent(),
    "done": done,
    "failed": lambda db: db.failed(RUN, K, Op.PATCH, ERROR),
    "outcome_unknown": lambda db: db.outcome_unknown(RUN, K, Op.CREATE, ERROR),
    "unsent (new row)": unsent(None),
    "unsent (was done)": unsent(RowState.DONE),
    "unsent (was failed)": unsent(RowState.FAILED),
    "unsent (was in flight)": unsent(RowState.IN_FLIGHT),
    "revoked": lambda db: db.revoked(RUN, "K1"),
    "invalid": lambda db: db.invalid(RUN, K, ERROR),
    "refused": lambda db: db.refused(RUN, K, ERROR),
    "seen": lambda db: db.seen([("K1", None)], RUN),
    "settling": lambda db: db.settling(RUN, K, Op.CREATE, ERROR, settle_after=T),
    "gave_up": lambda db: db.gave_up(RUN, K, Op.CREATE, ERROR),
    "patch_failed": lambda db: db.patch_failed(
        RUN, K, Op.PATCH, ERROR, state=RowState.DONE, consent_id="c1", field_hashes={}
    ),
    "patch_failed (was revoked)": lambda db: db.patch_failed(
        RUN, K, Op.PATCH, ERROR, state=RowState.REVOKED, consent_id="c1", field_hashes={}
    ),
    "revoking": lambda db: db.revoking(RUN, "K1"),
    "revoke_failed": lambda db: db.revoke_failed(RUN, "K1", ERROR),
}


def state_of(db: Ledger) -> RowState | None:
    found = db.get(["K1"]).get("K1")
    return found.state if found else None


#: (state before, event, state after) of every transition.
TRANSITIONS: list[tuple[RowState | None, str, RowState | None]] = [
    (None, "intent", RowState.IN_FLIGHT),
    (RowState.DONE, "intent", RowState.IN_FLIGHT),  # a patch about to be sent
    (RowState.FAILED, "intent", RowState.IN_FLIGHT),
    (RowState.IN_FLIGHT, "done", RowState.DONE),
    (RowState.IN_FLIGHT, "failed", RowState.FAILED),
    (RowState.IN_FLIGHT, "outcome_unknown", RowState.IN_FLIGHT),  # a lookup comes next
    (RowState.IN_FLIGHT, "unsent (new row)", None),  # never sent: as if never planned
    (RowState.IN_FLIGHT, "unsent (was done)", RowState.DONE),
    (RowState.IN_FLIGHT, "unsent (was failed)", RowState.FAILED),
    (RowState.IN_FLIGHT, "unsent (was in flight)", RowState.PENDING),
    (RowState.DONE, "unsent (was done)", RowState.DONE),  # only in-flight rows go back
    (RowState.DONE, "revoked", RowState.REVOKED),
    (None, "invalid", RowState.INVALID),
    (RowState.FAILED, "invalid", RowState.INVALID),
    (RowState.PENDING, "invalid", RowState.INVALID),
    (RowState.DONE, "invalid", RowState.DONE),  # the consent stays; the error is noted
    (RowState.IN_FLIGHT, "invalid", RowState.IN_FLIGHT),  # may exist: keep for a lookup
    (RowState.REVOKED, "invalid", RowState.REVOKED),
    (RowState.DONE, "refused", RowState.DONE),
    (RowState.DONE, "seen", RowState.DONE),
    (RowState.IN_FLIGHT, "settling", RowState.SETTLING),  # an ambiguous answer
    (RowState.SETTLING, "intent", RowState.IN_FLIGHT),  # looked up, not found: posted again
    (RowState.SETTLING, "done", RowState.DONE),  # found and adopted
    (RowState.SETTLING, "gave_up", RowState.FAILED),  # --max-attempts ambiguous answers
    (RowState.SETTLING, "invalid", RowState.SETTLING),  # may exist: keep for a lookup
    # a PATCH refused or unanswered: the row keeps its consent, the error noted
    (RowState.IN_FLIGHT, "patch_failed", RowState.DONE),
    (RowState.IN_FLIGHT, "patch_failed (was revoked)", RowState.REVOKED),
    # a revoke: intent first; a PATCH that keeps failing leaves the row done
    (RowState.DONE, "revoking", RowState.IN_FLIGHT),
    (RowState.IN_FLIGHT, "revoke_failed", RowState.DONE),
    (RowState.IN_FLIGHT, "revoked", RowState.REVOKED),
]


@pytest.mark.parametrize(("before", "event", "after"), TRANSITIONS)
def test_transition(before: RowState | None, event: str, after: RowState | None) -> None:
    db = Ledger(":memory:")
    for step in SETUP[before]:
        step(db)
    assert state_of(db) == before
    EVENTS[event](db)
    assert state_of(db) == after


@pytest.mark.parametrize(
    ("event", "noted"),
    [
        ("refused", "server_error"),  # the error is kept for failed.csv
        ("seen", None),  # an edit undone: the error goes
        ("done", None),
    ],
)
def test_errors_noted_and_cleared(event: str, noted: str | None) -> None:
    db = Ledger(":memory:")
    for step in [*SETUP[RowState.DONE], EVENTS["refused"]]:
        step(db)
    if event == "done":  # a later edit sent and stored
        intent()(db)
    if event != "refused":
        EVENTS[event](db)
    assert db.get(["K1"])["K1"].error_code == noted


@pytest.mark.parametrize(
    ("steps", "noted", "pending", "missing"),
    [
        # a failed PATCH: the error noted, the fields it carried forgotten, still done
        (["patch_failed"], "server_error", None, True),
        # a revoke cut short by a crash is revoked again by the next run
        (["revoking"], None, Op.REVOKE, True),
        # a revoke refused: done with the error, revoked by the next --revoke-missing
        (["revoking", "revoke_failed"], "server_error", None, True),
        # revoked at last: the error goes
        (["revoking", "revoke_failed", "revoking", "revoked"], None, None, False),
    ],
)
def test_failed_patches_and_revokes_keep_the_row_on_its_consent(
    steps: list[str], noted: str | None, pending: Op | None, missing: bool
) -> None:
    db = Ledger(":memory:")
    for step in [*SETUP[RowState.DONE], *(EVENTS[s] for s in steps)]:
        step(db)
    after = db.get(["K1"])["K1"]
    assert (after.error_code, after.pending_op, after.consent_id) == (noted, pending, "c1")
    assert bool(list(db.missing_rows(RUN + 1))) == missing


def test_a_crash_after_the_intent_leaves_the_row_in_flight_for_a_lookup(tmp_path: Path) -> None:
    """A crash between the intent and the outcome: the outcome's transaction never
    commits, and the reopened ledger says in flight, with the op that was being sent."""
    db = Ledger(tmp_path / "l.db")
    with db.transaction():
        intent()(db)

    def killed_before_commit() -> None:
        with db.transaction():
            done(db)
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        killed_before_commit()
    db.close()
    reopened = Ledger(tmp_path / "l.db")
    record = reopened.get(["K1"])["K1"]
    assert (record.state, record.pending_op, record.consent_id) == (
        RowState.IN_FLIGHT,
        Op.CREATE,
        None,
    )


def test_a_state_nobody_listed_is_refused() -> None:
    db = Ledger(":memory:")
    with pytest.raises(ValueError, match="half_done"):
        db._upsert(RUN, K, {"state": "half_done"})


def test_the_schema_comment_lists_every_state_and_op() -> None:
    schema = ledger_module._SCHEMA
    state_line = schema[schema.index("state TEXT NOT NULL") : schema.index("action TEXT")]
    assert {s.value for s in RowState} <= set(state_line.replace("|", " ").split())
    start = schema.index("op TEXT NOT NULL")
    op_line = schema[start : schema.index("at TEXT NOT NULL", start)]
    assert {o.value for o in Op} <= set(op_line.replace("|", " ").split())


def test_every_state_and_op_a_run_writes_is_listed(tmp_path: Path) -> None:
    """Runs that meet faults, invalid rows, edits, recreates and revocations write only
    states and ops of the lists."""
    ledger = tmp_path / "l.db"
    rows = list(consent_rows(40))
    rows[0]["scope"] = "nope"  # invalid
    source = write_csv(tmp_path / "in.csv", rows)
    with running_sandbox(SandboxConfig.with_fault_rate(0.3, seed=3, slow_delay_s=1.0)) as sb:
        run(source, sb.base_url, ledger, max_attempts=2, timeout_s=0.5)
        sb.configure(fault_unavailable=0, fault_error_after_store=0, fault_drop_after_store=0)
        sb.configure(fault_slow_after_store=0)
        rows[1]["status"] = "inactive"  # patch
        rows[2]["scope"] = "research"  # recreate
        write_csv(source, rows[:-3])  # three rows left: revoked
        run(
            source,
            sb.base_url,
            ledger,
            on_immutable_change="recreate",
            revoke_missing=True,
            revoke_after=1,
        )
    with sqlite3.connect(ledger) as db:
        states = {s for (s,) in db.execute("SELECT DISTINCT state FROM rows")}
        ops = {o for (o,) in db.execute("SELECT DISTINCT op FROM attempts")}
        outcomes = {o for (o,) in db.execute("SELECT DISTINCT outcome FROM attempts")}
        pending = {o for (o,) in db.execute("SELECT DISTINCT pending_op FROM rows") if o}
    assert states <= {s.value for s in RowState}
    assert {"done", "invalid", "revoked"} <= states
    assert ops | pending <= {o.value for o in Op}
    # Only failed attempts have rows (a success is the row's own state and action).
    assert outcomes == {"error"}
    assert {"create"} <= ops


@pytest.mark.parametrize(
    ("event", "settle_after", "pending_op"),
    [
        ("settling", T, Op.CREATE),  # the deadline is stored: a crash keeps it
        ("intent", None, Op.CREATE),  # a new POST clears it
        ("gave_up", None, Op.CREATE),  # failed, its op kept for the lookup next run
    ],
)
def test_the_settle_deadline_and_the_op_are_kept(
    event: str, settle_after: str | None, pending_op: Op
) -> None:
    db = Ledger(":memory:")
    for step in SETUP[RowState.SETTLING]:
        step(db)
    EVENTS[event](db)
    record = db.get(["K1"])["K1"]
    assert (record.settle_after, record.pending_op) == (settle_after, pending_op)


def test_a_ledger_from_before_settling_gains_the_column(tmp_path: Path) -> None:
    legacy = Path(__file__).parent / "data" / "legacy-ledger-15ffa94.db"
    copy = tmp_path / "old.db"
    copy.write_bytes(legacy.read_bytes())
    Ledger(copy).close()
    with sqlite3.connect(copy) as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(rows)")}
    assert "settle_after" in columns


@pytest.mark.parametrize(("before", "event", "after"), TRANSITIONS)
def test_the_tally_follows_every_transition(
    before: RowState | None, event: str, after: RowState | None
) -> None:
    """`status` counts from `tally`, which triggers keep in step with the rows."""
    db = Ledger(":memory:")
    for step in [*SETUP[before], EVENTS[event]]:
        step(db)
    assert db.counts() == ({after.value: 1} if after else {})
    assert db.sources() == (({"(none)": 1}, {"in.csv": 1}) if after else ({}, {}))


@pytest.mark.parametrize(
    ("keys", "systems"),
    [
        (["K1", "K2"], {"(none)": 2}),
        (["crm\x1fK1", "erp\x1fK1", "K1"], {"(none)": 1, "crm": 1, "erp": 1}),
        # a natural key is packed to 16 bytes: none of them is read as a separator
        (["nk:" + "1f" * 16, "crm\x1fnk:" + "1f" * 16], {"(none)": 1, "crm": 1}),
    ],
)
def test_the_tally_counts_by_file_and_system(keys: list[str], systems: dict[str, int]) -> None:
    db = Ledger(":memory:")
    with db.transaction():
        for n, key in enumerate(keys):
            db.invalid(RUN, Source(key, "a.csv", n + 2), ERROR)
        db.intent(
            RUN, Source(keys[0], "b.csv", 2), Op.CREATE, body="{}", body_hash="h", patient_id=None
        )  # the row is read from another file now
    assert db.sources() == (systems, {"a.csv": len(keys) - 1, "b.csv": 1})
    assert db.counts() == {"invalid": len(keys) - 1, "in_flight": 1}
    assert db.done_count() == 0


def test_a_rolled_back_file_is_not_named_by_a_later_row() -> None:
    db = Ledger(":memory:")

    def broken() -> None:
        with db.transaction():
            db.invalid(RUN, Source("K1", "gone.csv", 2), ERROR)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        broken()
    db.invalid(RUN, Source("K2", "kept.csv", 2), ERROR)  # takes the id gone.csv had
    db.invalid(RUN, Source("K3", "gone.csv", 3), ERROR)
    assert db.sources()[1] == {"gone.csv": 1, "kept.csv": 1}
    assert [r["source_file"] for r in db.rows_needing_a_person()] == ["gone.csv", "kept.csv"]


@pytest.mark.parametrize(
    ("before", "event", "created", "kept"),
    [
        # a row the ledger held no record of: the run noted in rows.created_run (issue 24:
        # not a run_created entry, nor a run_changes row of NULLs)
        (None, "intent", 1, 0),
        # a row it held: its record before the run, for undo to put back
        (RowState.FAILED, "intent", 0, 1),
        (RowState.DONE, "revoking", 0, 1),
    ],
)
def test_a_run_keeps_a_created_row_narrowly_for_undo(
    before: RowState | None, event: str, created: int, kept: int
) -> None:
    db = Ledger(":memory:")
    for step in SETUP[before]:
        step(db)
    later = RUN + 1
    _in_run(db, later, event)
    raw = db._db
    assert (
        raw.execute("SELECT count(*) FROM rows WHERE created_run = ?", (later,)).fetchone()[0]
        == created
    )
    assert raw.execute("SELECT count(*) FROM run_created").fetchone()[0] == 0
    assert (
        raw.execute("SELECT count(*) FROM run_changes WHERE run_id = ?", (later,)).fetchone()[0]
        == kept
    )
    [change] = db.run_changes(later)
    assert (change.existed, change.posted) == (bool(kept), event == "intent")


def _in_run(db: Ledger, run_id: int, event: str) -> None:
    if event == "intent":
        db.intent(run_id, K, Op.CREATE, body="{}", body_hash="h", patient_id="pt_1")
    else:
        db.revoking(run_id, "K1")


@pytest.mark.parametrize("op", [Op.CREATE, Op.PATCH])
def test_an_intent_said_new_leaves_the_same_undo_record(tmp_path: Path, op: Op) -> None:
    """`intent(new=True)` (the engine: planned from no record) skips looking for a record
    to keep for undo; the ledger ends as without it, on a first intent and a retry."""
    tables = []
    for new in (False, True):
        db = Ledger(tmp_path / f"{new}.db")
        run_id = db.begin_run(["in.csv"])
        for _ in range(2):  # the first intent, then a retry's in the same run
            with db.transaction():
                db.intent(run_id, K, op, body="{}", body_hash="h", patient_id="p", new=new)
        tables.append(
            (
                db._db.execute("SELECT created_run, state, attempts FROM rows").fetchall(),
                db._db.execute("SELECT run_id, existed, posted FROM run_changes").fetchall(),
            )
        )
        db.close()
    assert tables[0] == tables[1]
    assert tables[1][0] == [(1 if op is Op.CREATE else None, "in_flight", 2)]
