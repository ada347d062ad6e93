"""One limiter shared by every worker: a concurrency cap, a request-start pace, the server's
rate-limit window budget and a shared pause after a 429.

ClinikAPI limits requests per plan window and reports the window on every response
(`X-RateLimit-Limit`, `-Remaining`, `-Reset` in seconds). The limiter keeps an estimate of the
budget left in the window and, when it is spent, holds every worker until the window resets,
so a run waits for the reset instead of collecting 429s.

Budget estimate, in short:

- `remaining` is the lowest `Remaining` seen in the current window. Remaining only falls
  within a window, so the lowest is the freshest, whatever order the answers arrive in.
- Requests sent whose answer has not been observed yet may not be counted in it, so they are
  subtracted: `budget = remaining - in_flight - orphans` (`orphans` ended without a usable
  answer, e.g. a timeout, and may have been counted; the next answer accounts for them).
- The window's deadline is the earliest `now + Reset` of its answers (Reset is rounded up).
  Once it has passed (plus a margin) the budget is taken to be the full `Limit` again, until
  an answer from a request sent after that moment re-syncs it.
- A new window is also recognised when an answer's deadline jumps a whole window ahead, or
  when a request's answer shows a Remaining above what had been seen before it was sent.
- Answers to requests sent before the current window was known are not trusted to describe
  it (they may come from the old one): they count as orphans instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import anyio

from importer._errors import BudgetWaitTooLong, LimiterClosed

__all__ = ["Limiter", "RateLimitInfo"]

#: Sent after the reset deadline, because `Reset` is rounded to whole seconds and clocks differ.
SAFETY_MARGIN_S = 0.15
#: Waits longer than this are reported through `on_wait`, so a CLI can say why it is idle.
ANNOUNCE_AFTER_S = 1.0
#: Longest sleep between re-checks while waiting for in-flight answers.
_POLL_S = 1.0


@dataclass(frozen=True)
class RateLimitInfo:
    """The server's rate-limit window as one response reported it.

    Args:
        limit: requests allowed in the window.
        remaining: requests left in the window when the server answered.
        reset_s: seconds until the window resets.
    """

    limit: int
    remaining: int
    reset_s: float


class _Ticket:
    """The request a task is making inside `slot()`, so `observe()` can place its answer.

    Args:
        epoch: the limiter's window epoch when the request was sent.
        seen: the window's lowest Remaining known when it was sent (None: none known).
    """

    __slots__ = ("epoch", "observed", "owner", "seen")

    def __init__(self, owner: Limiter, epoch: int, seen: int | None) -> None:
        self.owner = owner
        self.epoch = epoch
        self.seen = seen
        self.observed = False


def loop_time() -> float:
    """The event loop's clock, as `anyio.current_time()` reads it on asyncio, without its
    look-up of the running library each call (about 2 µs here, and a few a row; issue 24).
    The limiter gates the client's requests, whose transport needs asyncio."""
    return asyncio.get_running_loop().time()


_current_ticket: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar(
    "consent_import_limiter_ticket", default=None
)


class Limiter:
    """Gate for every request of a run; one instance is shared by all workers.

    Args:
        concurrency: most requests inside `slot()` at once.
        max_rps: most request starts per second (evenly spaced); None for no cap.
        max_wait_s: a budget or 429 wait longer than this raises `BudgetWaitTooLong`
            instead of sleeping; None waits however long the server says.
        on_wait: called with (seconds, reason) when workers are about to wait longer than
            about a second, once per wait (not once per worker).
    """

    def __init__(
        self,
        *,
        concurrency: int = 8,
        max_rps: float | None = None,
        max_wait_s: float | None = None,
        on_wait: Callable[[float, str], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_rps is not None and max_rps <= 0:
            raise ValueError("max_rps must be positive")
        self.concurrency = concurrency
        self.max_rps = max_rps
        self.max_wait_s = max_wait_s
        self.on_wait = on_wait

        self.max_in_flight = 0
        self.waits = 0
        self.waited_s = 0.0

        # Taken without a checkpoint when free: every request awaits its answer anyway.
        self._slots = anyio.Semaphore(concurrency, fast_acquire=True)
        self._interval = 1.0 / max_rps if max_rps else 0.0
        self._next_start = -math.inf
        self._pause_until = -math.inf
        self._announced_until = -math.inf
        self._changed = anyio.Event()
        self._waiting = 0  # tasks waiting on `_changed`: only they need a new one set
        self._inside = 0
        self._closed = False

        # The server window, as far as answers have told us.
        self._limit: int | None = None
        self._remaining: int | None = None  # None: no answer yet, no budget known
        self._deadline: float | None = None  # loop time the window resets
        self._synced = False  # False once the deadline passed, until the new window answers
        self._window_s = 0.0  # longest Reset seen: a lower bound of the window length
        self._in_flight = 0  # started, answer not observed yet
        self._orphans = 0  # ended without a usable answer since the last observation
        # Each window (and each stretch after a deadline passed, before the new window
        # answers) is an epoch; a request's epoch says which window its answer can speak for.
        self._epoch = 0
        self._legit_from = 0
        self._spent_at_roll = 0  # the window's lowest Remaining when its deadline passed
        self._late_s = 0.0  # learnt: how much later than its Reset says the window resets

    # -- public ---------------------------------------------------------------------------

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Wait for the pause, the window budget, the pace and a concurrency slot; hold it.

        Raises:
            BudgetWaitTooLong: the wait would exceed `max_wait_s`.
        """
        return _Slot(self)

    def close(self) -> None:
        """Start no more requests: every `slot` not yet granted raises `LimiterClosed`.

        For a stopping run: workers may wait here with their row's intent committed,
        and must not send it after the stop.
        """
        self._closed = True
        self._notify()

    def observe(self, rate: RateLimitInfo) -> None:
        """Update the window budget from one response's rate-limit headers."""
        now = loop_time()
        ticket = _current_ticket.get()
        if ticket is not None and ticket.owner is not self:
            ticket = None
        if ticket is not None and not ticket.observed:
            ticket.observed = True
            self._in_flight -= 1

        reset_s = max(0.0, rate.reset_s)
        remaining = max(0, rate.remaining)
        implied = now + reset_s
        self._window_s = max(self._window_s, reset_s)
        self._roll(now)
        # Same-window answers spread their implied deadline over up to ~1 s (whole-second
        # Reset, varying latency); the next window's lies a whole window later.
        jumped = self._deadline is not None and implied > self._deadline + min(
            1.5, 0.75 * self._window_s
        )
        sent_after = ticket is not None and ticket.epoch >= self._epoch
        if self._deadline is None:
            self._new_window(rate, implied, legit_from=0)
        elif not self._synced:
            if sent_after and not jumped and remaining <= self._spent_at_roll:
                # The window we took for over is still counting down: the server rounds its
                # Reset down, or its clock runs late. Roll later from now on.
                self._late_s = min(1.0, self._late_s + 0.5)
            if sent_after or jumped:
                # Sent after the deadline passed: whatever it says is the window now.
                self._new_window(rate, implied, legit_from=self._epoch_of(ticket))
            else:
                self._ignore()  # a late answer from the window that has ended
        elif jumped or (
            ticket is not None
            and sent_after
            and ticket.seen is not None
            # Sent after answers had shown `seen`: within one window it could only be lower.
            and remaining > ticket.seen
        ):
            self._new_window(rate, implied, legit_from=self._epoch_of(ticket))
        elif ticket is not None and ticket.epoch < self._legit_from:
            self._ignore()  # sent before this window was known; its figure may be older
        elif self._remaining is not None and self._deadline is not None:
            self._limit = max(rate.limit, 0)
            self._remaining = min(self._remaining, remaining)
            self._deadline = min(self._deadline, implied)
            # Whatever the orphans did, this answer's Remaining already counts it.
            self._orphans = 0
        self._notify()

    def pause(self, seconds: float) -> None:
        """Stop every worker from sending for `seconds` from now (extends, never shortens)."""
        if seconds <= 0:
            return
        self._pause_until = max(self._pause_until, loop_time() + seconds)

    def budget(self) -> float:
        """Requests the limiter believes may still be sent in this window (inf: unknown)."""
        return self._budget(loop_time())

    # -- internals ------------------------------------------------------------------------

    async def _admit(self) -> None:
        """Sleep until no gate holds; then claim the pace slot (no await in between)."""
        waited_from: float | None = None
        while True:
            if self._closed:
                raise LimiterClosed
            now = loop_time()
            wait, kind = self._wait_needed(now)
            if wait <= 0:
                break
            if kind in ("pause", "budget"):
                if self.max_wait_s is not None and wait > self.max_wait_s:
                    raise BudgetWaitTooLong(wait)
                if waited_from is None:
                    waited_from = now
                self._announce(now, wait, kind)
            changed = self._changed
            if kind == "rps":
                await anyio.sleep(wait)
            else:
                # Answers and 429s change the picture; wake on them, not only at the deadline.
                self._waiting += 1
                try:
                    with anyio.move_on_after(wait):
                        await changed.wait()
                finally:
                    self._waiting -= 1
        if waited_from is not None:
            self.waits += 1
            self.waited_s += now - waited_from
        if self._interval:
            self._next_start = max(now, self._next_start) + self._interval

    def _wait_needed(self, now: float) -> tuple[float, str]:
        """How long the first closed gate stays closed, and which gate it is."""
        if self._pause_until > now:
            return self._pause_until - now, "pause"
        if self._budget(now) <= 0:
            if self._synced and self._deadline is not None:
                return self._reset_at() - now, "budget"
            if self._in_flight > 0:
                # A new window's budget may be spent by requests still unanswered.
                return _POLL_S, "answers"
            # Nothing in flight and no live window: one request re-syncs the budget.
        if self._next_start > now:
            return self._next_start - now, "rps"
        return 0.0, ""

    def _budget(self, now: float) -> float:
        self._roll(now)
        if self._remaining is None:
            return math.inf
        return self._remaining - self._in_flight - self._orphans

    def _roll(self, now: float) -> None:
        """Start a new window once the known deadline has passed."""
        if self._synced and self._deadline is not None and now >= self._reset_at():
            self._spent_at_roll = self._remaining if self._remaining is not None else 0
            self._synced = False
            self._remaining = self._limit
            self._orphans = 0
            self._epoch += 1

    def _reset_at(self) -> float:
        """When the current window is taken to have reset."""
        assert self._deadline is not None
        return self._deadline + SAFETY_MARGIN_S + self._late_s

    def _new_window(self, rate: RateLimitInfo, implied: float, *, legit_from: int) -> None:
        self._limit = max(rate.limit, 0)
        self._remaining = max(0, rate.remaining)
        self._deadline = implied
        self._synced = True
        self._orphans = 0
        self._epoch += 1
        self._legit_from = legit_from

    def _epoch_of(self, ticket: _Ticket | None) -> int:
        # Requests sent in the same epoch as the one that showed the new window may have
        # been counted in it; later ones surely were.
        return ticket.epoch if ticket is not None else self._epoch

    def _ignore(self) -> None:
        # Its request may still count against the current window, like an unanswered one.
        self._orphans += 1

    def _announce(self, now: float, wait: float, kind: str) -> None:
        until = now + wait
        if self.on_wait is None or wait < ANNOUNCE_AFTER_S or until <= self._announced_until + 0.5:
            return
        self._announced_until = until
        if kind == "pause":
            reason = f"ClinikAPI asked to pause (429); resuming in {wait:,.0f} s"
        else:
            reason = f"rate-limit window spent; resets in {wait:,.0f} s"
        self.on_wait(wait, reason)

    def _notify(self) -> None:
        if self._waiting:
            self._changed.set()
            self._changed = anyio.Event()


class _Slot:
    """`Limiter.slot()`: a class, not an `asynccontextmanager` (a generator and its
    frames a request; issue 24)."""

    __slots__ = ("_limiter", "_ticket", "_token")

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    async def __aenter__(self) -> None:
        limiter = self._limiter
        await limiter._slots.acquire()
        try:
            await limiter._admit()
        except BaseException:
            limiter._slots.release()
            raise
        ticket = _Ticket(limiter, limiter._epoch, limiter._remaining if limiter._synced else None)
        self._ticket = ticket
        self._token = _current_ticket.set(ticket)
        limiter._in_flight += 1
        limiter._inside += 1
        limiter.max_in_flight = max(limiter.max_in_flight, limiter._inside)

    async def __aexit__(self, *exc_info: object) -> None:
        limiter = self._limiter
        try:
            _current_ticket.reset(self._token)
            limiter._inside -= 1
            if not self._ticket.observed:
                limiter._in_flight -= 1
                limiter._orphans += 1
            limiter._notify()
        finally:
            limiter._slots.release()
