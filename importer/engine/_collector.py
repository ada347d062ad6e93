"""The garbage collector while a run sends (issue 24).

CPython's cyclic collector makes a young-generation pass every 700 net allocations of
tracked objects. A run allocates in bursts (a batch of rows read, their models, the work
waiting for a worker) that live a while and then die by reference counting: at 700 a pass
ran every few rows, scanned live rows, promoted them, and the full passes that followed
rescanned every object of start-up (pandas, pydantic's schemas). That was about 1 s of CPU
over 20,000 rows, a tenth of the run. The send loop itself leaves no cyclic garbage
(tests/test_http11.py holds the transport to it), so while a run sends:

- start-up's objects are frozen out of the collector's passes (`gc.freeze`);
- the young generation's threshold is `YOUNG_THRESHOLD`, above a run's working set of
  young objects: a pass comes when garbage piles up, not at every burst;
- `Pacing.tick` makes a full pass every `FULL_PASS_EVERY_S` seconds, so cyclic garbage a
  reader might make (none is made by today's) cannot grow with the file.

Both settings are put back when the run ends.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Young-generation threshold while a run sends (CPython's default: 700).
YOUNG_THRESHOLD = 50_000
#: Seconds between the full passes `Pacing.tick` makes.
FULL_PASS_EVERY_S = 10.0


class Pacing:
    """Full collections at most every `every_s` seconds, made by `tick`."""

    def __init__(
        self, every_s: float = FULL_PASS_EVERY_S, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every_s = every_s
        self.passes = 0  # for tests
        self._clock = clock
        self._next = clock() + every_s

    def tick(self) -> None:
        """A full collection if `every_s` has passed since the last (or since start)."""
        now = self._clock()
        if now >= self._next:
            gc.collect()
            self.passes += 1
            self._next = now + self.every_s


@contextmanager
def sending() -> Iterator[None]:
    """While a run sends: start-up's objects frozen, young passes at `YOUNG_THRESHOLD`."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
