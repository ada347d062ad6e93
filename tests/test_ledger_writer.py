"""AsyncLedger: grouped commits, waited-for writes and queued (not waited-for) outcomes."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from importer.ledger._ledger import Ledger
from importer.ledger._schema import Op, Source
from importer.ledger._writer import AsyncLedger

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
        await writer.write_soon(upsert("K1", "in_flight"))
        await writer.write_soon(upsert("K1", "done"))
        # A waited write queued after them sees them: one queue, one order.
        seen = await writer.write(lambda ledger: ledger.get(["K1"])["K1"].state)
        await writer.write_soon(upsert("K2"))
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
            await writer.write_soon(upsert("K1"))
            await writer.write_soon(broken)
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


@pytest.mark.parametrize(("bound", "outcomes"), [(1, 5), (4, 30), (16, 16)])
async def test_outcomes_not_yet_committed_never_exceed_the_bound_under_a_stalled_writer(
    tmp_path: Path, bound: int, outcomes: int
) -> None:
    ledger = Ledger(tmp_path / "l.db")
    writer = AsyncLedger(ledger, max_unsettled=bound)
    stall = threading.Event()
    queued: list[int] = []

    async def outcome(key: str) -> None:
        await writer.write_soon(upsert(key))
        queued.append(writer.peak_unsettled)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run_committer)
        # The committer's thread blocks inside a transaction until released.
        tg.start_soon(writer.write, lambda _: stall.wait(30))
        await anyio.sleep(0.05)
        async with anyio.create_task_group() as workers:
            for i in range(outcomes):
                workers.start_soon(outcome, f"K{i}")
            await anyio.sleep(0.3)  # the writer is stalled: the workers fill the bound
            assert len(queued) == min(bound, outcomes)
            assert writer.peak_unsettled == min(bound, outcomes)
            stall.set()
        writer.close()
    assert writer.peak_unsettled == min(bound, outcomes)
    ledger.close()
    with sqlite3.connect(tmp_path / "l.db") as db:
        assert db.execute("SELECT count(*) FROM rows").fetchone() == (outcomes,)


async def test_writes_queued_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    """The committer's thread takes everything queued while it committed in one batch,
    and every waited write of it returns its own result."""
    ledger = Ledger(tmp_path / "l.db")
    writer = AsyncLedger(ledger)
    stall = threading.Event()
    results: dict[int, object] = {}

    async def waited(i: int) -> None:
        results[i] = await writer.write(lambda ledger: (upsert(f"W{i}")(ledger), i)[1])

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run_committer)
        tg.start_soon(writer.write, lambda _: stall.wait(30))
        await anyio.sleep(0.05)  # the thread holds the first batch
        async with anyio.create_task_group() as workers:
            for i in range(5):
                workers.start_soon(waited, i)
                await writer.write_soon(upsert(f"S{i}"))
            await anyio.sleep(0.05)
            assert results == {}  # nothing returns before its commit
            stall.set()
        writer.close()
    assert results == {i: i for i in range(5)}
    assert writer.batches == 2
    ledger.close()
    with sqlite3.connect(tmp_path / "l.db") as db:
        assert db.execute("SELECT count(*) FROM rows").fetchone() == (10,)


async def test_a_cancelled_committer_still_commits_what_was_queued(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    writer = AsyncLedger(ledger)
    stall = threading.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run_committer)
        tg.start_soon(writer.write, lambda _: stall.wait(30))
        await anyio.sleep(0.05)
        for i in range(3):
            await writer.write_soon(upsert(f"S{i}"))
        tg.cancel_scope.cancel()
        threading.Timer(0.1, stall.set).start()
    assert writer.batches == 2
    ledger.close()
    with sqlite3.connect(tmp_path / "l.db") as db:
        assert db.execute("SELECT count(*) FROM rows").fetchone() == (3,)
