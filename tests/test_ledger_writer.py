"""AsyncLedger: grouped commits, waited-for writes and queued (not waited-for) outcomes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from importer.ledger import AsyncLedger, Ledger, Op, Source

pytestmark = pytest.mark.anyio


def upsert(key: str, state: str = "done"):  # type: ignore[no-untyped-def]
    """A write that leaves row `key` in `state` (in_flight or done), through a transition."""
    src = Source(key, "in.csv", 2)
    if state == "in_flight":
        return lambda ledger: ledger.intent(
            1, src, Op.CREATE, body="{}", body_hash="h", patient_id=None
        )
    return lambda ledger: ledger.done(
        1,
        src,
        Op.CREATE,
        action="created",
        payload_hash="h",
        field_hashes={},
        patient_id=None,
        request_id=None,
    )


async def test_queued_and_waited_writes_commit_in_order(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    writer = AsyncLedger(ledger)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run_committer)
        writer.write_soon(upsert("K1", "in_flight"))
        writer.write_soon(upsert("K1", "done"))
        # A waited write queued after them sees them: one queue, one order.
        seen = await writer.write(lambda ledger: ledger.get(["K1"])["K1"].state)
        writer.write_soon(upsert("K2"))
        writer.close()
    assert seen == "done"
    ledger.close()
    with sqlite3.connect(tmp_path / "l.db") as db:
        assert dict(db.execute("SELECT source_key, state FROM rows")) == {
            "K1": "done",
            "K2": "done",
        }


async def test_a_failed_commit_of_a_queued_write_ends_the_run(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    writer = AsyncLedger(ledger)

    def broken(_: Ledger) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run_committer)
            writer.write_soon(upsert("K1"))
            writer.write_soon(broken)
            await anyio.sleep(5)  # the committer's error cancels this

    with pytest.raises(ExceptionGroup) as info:
        await run()
    assert info.group_contains(sqlite3.OperationalError, match="disk I/O")
    ledger.close()
    with sqlite3.connect(tmp_path / "l.db") as db:
        # The whole group rolled back: not a half-written transaction.
        assert db.execute("SELECT count(*) FROM rows").fetchone() == (0,)


async def test_a_failed_commit_is_raised_to_the_writers_who_wait(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    writer = AsyncLedger(ledger)

    def broken(_: Ledger) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run_committer)
        with pytest.raises(sqlite3.OperationalError):
            await writer.write(broken)
        assert await writer.write(lambda ledger: 42) == 42  # the next group commits
        writer.close()
    ledger.close()
