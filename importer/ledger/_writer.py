"""The async writer: the engine's ledger writes grouped into few transactions, off the event
loop, each caller waiting for its own commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from importer.ledger._ledger import Ledger

T = TypeVar("T")


class AsyncLedger:
    """Group commit for concurrent workers.

    Every `write` queues a function of the ledger and waits until the transaction that
    ran it has committed. One task takes everything queued, runs it in one transaction
    in a worker thread, commits, and wakes the writers: under load, one fsync serves
    many rows.

    Outcomes queued without waiting (`write_soon`) are bounded: at `max_unsettled` not
    yet committed, the next `write_soon` waits for a commit. A writer that falls behind
    slows the workers down instead of piling up rows in memory.
    """

    def __init__(self, ledger: Ledger, *, max_unsettled: int = 1024) -> None:
        if max_unsettled < 1:
            raise ValueError("max_unsettled must be at least 1")
        self.ledger = ledger
        self.max_unsettled = max_unsettled
        #: the most outcomes ever queued and not yet committed (for tests and benchmarks)
        self.peak_unsettled = 0
        #: transactions committed or rolled back (for tests and benchmarks)
        self.batches = 0
        self._queue: list[tuple[Callable[[Ledger], Any], _Waiter | None]] = []
        self._unsettled = 0
        self._wake = anyio.Event()
        self._room = anyio.Event()
        self._closed = False

    async def write(self, fn: Callable[[Ledger], T]) -> T:
        """Run `fn(ledger)` in the next grouped transaction; return once it is committed."""
        if self._closed:
            raise RuntimeError("ledger writer is closed")
        waiter = _Waiter()
        self._queue.append((fn, waiter))
        self._wake.set()
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[no-any-return]

    async def write_soon(self, fn: Callable[[Ledger], Any]) -> None:
        """Queue `fn(ledger)` for the next grouped transaction, without waiting for it
        to commit (only, at `max_unsettled` outcomes not yet committed, for room).

        For a row's outcome: until it commits, the row is in flight in the ledger (its
        intent was committed before the request), which a rerun settles by a lookup. So
        the worker need not wait, and takes its next row one commit sooner. Writes keep
        their order. If the transaction fails, the committer raises, ending the run.
        """
        while self._unsettled >= self.max_unsettled:
            await self._room.wait()
        if self._closed:
            raise RuntimeError("ledger writer is closed")
        self._unsettled += 1
        self.peak_unsettled = max(self.peak_unsettled, self._unsettled)
        self._queue.append((fn, None))
        self._wake.set()

    async def run_committer(self) -> None:
        """The committer task: run until `close()` and the queue is drained."""
        while True:
            if not self._queue:
                if self._closed:
                    return
                # Re-armed before waiting, and the queue checked after any wake: a write
                # or close between the two is never missed.
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            batch, self._queue = self._queue, []
            # Shielded: a cancelled run still commits what its workers already sent.
            with anyio.CancelScope(shield=True):
                error = await anyio.to_thread.run_sync(self._commit, batch)
            self.batches += 1
            settled = 0
            for _, waiter in batch:
                if waiter is not None:
                    waiter.event.set()
                else:
                    settled += 1
            if error is not None and settled:
                raise error  # an outcome nobody waits for was not stored
            if settled:
                self._unsettled -= settled
                self._room.set()  # wake the outcomes waiting for room, then re-arm
                self._room = anyio.Event()

    def close(self) -> None:
        """Let the committer finish what is queued and stop."""
        self._closed = True
        self._wake.set()

    def _commit(
        self, batch: list[tuple[Callable[[Ledger], Any], _Waiter | None]]
    ) -> BaseException | None:
        """Run the batch in one transaction; the error that rolled it back, if any."""
        try:
            with self.ledger.transaction():
                for fn, waiter in batch:
                    result = fn(self.ledger)
                    if waiter is not None:
                        waiter.result = result
        except BaseException as exc:  # the whole group rolled back: tell every writer
            for _, waiter in batch:
                if waiter is not None:
                    waiter.error = exc
            return exc
        return None


class _Waiter:
    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
