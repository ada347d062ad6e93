"""The circuit breaker: when no request gets an answer for a while, stop the run.

Fed by the client with every request's outcome; when no request has had an answer for
`WINDOW_S` and `MAX_IN_A_ROW` went unanswered in a row (both: a burst of refusals in a
one-second blip is no outage), every further request raises `ServerUnreachable` before it
is sent, and the run stops (exit 3, resumable) instead of failing every row slowly. A row
whose every try went unanswered waits for the verdict: an answer (its failure is its own)
or the window passing without one (one row at a time never makes 20 requests). (A
module of its own: the client holds one, and the preflight, which uses the client,
reports through it.)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from importer._errors import ServerUnreachable

__all__ = ["MAX_IN_A_ROW", "WINDOW_S", "CircuitBreaker"]

#: The breaker trips when no request has had an answer for this long ...
WINDOW_S = 30.0
#: ... and this many went unanswered in a row: both.
MAX_IN_A_ROW = 20


class CircuitBreaker:
    """Counts requests that got no HTTP answer in a row; trips after too many for too long.

    Any HTTP answer (even a 5xx) resets it: the server is there. Once tripped it stays
    tripped, and `check` raises `ServerUnreachable` before every further request.
    """

    def __init__(
        self,
        target: str,
        *,
        window_s: float | None = None,
        max_in_a_row: int = MAX_IN_A_ROW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.window_s = WINDOW_S if window_s is None else window_s
        self.max_in_a_row = max_in_a_row
        self._clock = clock
        self.in_a_row = 0
        self._since: float | None = None
        self._cause = ""
        self.reason = ""

    def answered(self) -> None:
        """A request got an HTTP answer."""
        if not self.reason:
            self.in_a_row, self._since = 0, None

    def no_answer(self, cause: str) -> None:
        """A request got no HTTP answer (refused, reset, timed out); `cause` names why."""
        now = self._clock()
        if self._since is None:
            self._since = now
        self.in_a_row += 1
        self._cause = cause
        if self.in_a_row >= self.max_in_a_row and now - self._since >= self.window_s:
            self._trip(now)

    async def verdict(self, poll_s: float = 0.05) -> None:
        """Wait while requests go unanswered: return once one is answered (or none is
        failing), raise ServerUnreachable once the breaker trips, at the latest when the
        window has passed since the first unanswered request."""
        while self.in_a_row and not self.reason:
            now = self._clock()
            if self._since is not None and now - self._since >= self.window_s:
                self._trip(now)
                break
            await anyio.sleep(poll_s)
        self.check()

    def _trip(self, now: float) -> None:
        if self.reason:
            return
        lasted = now - (self._since if self._since is not None else now)
        self.reason = (
            f"ClinikAPI at {self.target} is unreachable: {self.in_a_row} requests in a row "
            f"got no answer over {lasted:,.0f} s (last: {self._cause}); rows not reached stay "
            "pending and rows in flight are looked up on the next run"
        )

    def check(self) -> None:
        """Raise ServerUnreachable once tripped (before a request is sent)."""
        if self.reason:
            raise ServerUnreachable(self.reason)


# -- the server check ---------------------------------------------------------------
