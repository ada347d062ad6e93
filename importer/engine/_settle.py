"""Rows waiting out `--settle`: a delay queue the engine's pump drains into its workers.

A POST answered ambiguously (timeout after sending, dropped connection, 5xx) may have
stored its consent, or may store it later, or the search may show it later. Its row
waits here, holding no worker and no request slot, until its due time; then it goes
back to the workers, which look the consent up and adopt it or post again.

The queue also knows when the pump is finished: the input is read, nothing waits
here, and no row handed to the workers is still being worked on (any of them could
come back here).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

T = TypeVar("T")


class SettleQueue(Generic[T]):
    """Items due at a time (on the event loop's clock), and the count of items at work."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()  # ties keep their order; items never compare
        self._at_work = 0
        self._input_done = False
        self._stopped = False
        self._changed = anyio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, item: T) -> None:
        heapq.heappush(self._heap, (due, next(self._order), item))
        self._changed.set()

    async def send(self, stream: MemoryObjectSendStream[T], item: T) -> None:
        """Hand `item` to the workers, counted at work until `finished`."""
        self._at_work += 1
        try:
            stream.send_nowait(item)  # no checkpoint while there is room (issue 24)
        except anyio.WouldBlock:
            await stream.send(item)

    def finished(self) -> None:
        """A worker is done with an item (it may have pushed it back here)."""
        self._at_work -= 1
        if not self._at_work:
            # Only the last one can end `drain` (a row pushed back wakes it itself): not
            # a wake-up of the drain a row (issue 24).
            self._changed.set()

    def input_done(self) -> None:
        self._input_done = True
        self._changed.set()

    def stop(self) -> None:
        """Hand out nothing more; `drain` drops what waits."""
        self._stopped = True
        self._changed.set()

    async def drain(
        self,
        stream: MemoryObjectSendStream[T],
        on_due: Callable[[T], None],
        on_dropped: Callable[[T], None],
    ) -> None:
        """Send each item to the workers when due, until the input is done and nothing
        waits or is at work; on a stop, drop what waits."""
        async with stream:
            while True:
                self._changed = anyio.Event()  # re-armed before the checks: no lost wake
                if self._stopped:
                    for _, _, item in self._heap:
                        on_dropped(item)
                    self._heap.clear()
                    return
                now = anyio.current_time()
                if self._heap and self._heap[0][0] <= now:
                    item = heapq.heappop(self._heap)[2]
                    on_due(item)
                    await self.send(stream, item)
                    continue
                if not self._heap and self._input_done and self._at_work == 0:
                    return
                wait = self._heap[0][0] - now if self._heap else math.inf
                with anyio.move_on_after(wait):
                    await self._changed.wait()
