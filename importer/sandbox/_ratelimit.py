"""A fixed-window request budget, like ClinikAPI's plan windows (e.g. 500 per 3600 s)."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: What the headers show when no limit is configured: a budget no run can spend.
UNLIMITED = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Quota:
    """The window's state as one response reports it.

    Args:
        allowed: False when the request is over the limit (answer 429).
        reset_s: whole seconds until the window resets, rounded up, at least 1.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        """`X-RateLimit-*` (and `Retry-After` on a refusal) as raw ASGI headers."""
        headers = [
            (b"x-ratelimit-limit", b"%d" % self.limit),
            (b"x-ratelimit-remaining", b"%d" % self.remaining),
            (b"x-ratelimit-reset", b"%d" % self.reset_s),
        ]
        if not self.allowed:
            headers.append((b"retry-after", b"%d" % self.reset_s))
        return headers


class FixedWindow:
    """Counts requests in consecutive windows of `window_s` seconds from `now`.

    Windows sit on a fixed grid from the moment the limiter (re)starts, so a client that
    waits `Retry-After` seconds always lands in a fresh window.
    """

    def __init__(self, limit: int | None, window_s: float, now: float) -> None:
        self.restart(limit, window_s, now)

    def restart(self, limit: int | None, window_s: float, now: float) -> None:
        """Start a new, unspent window at `now` with the given limit and length."""
        self.limit = limit
        self.window_s = window_s
        self._start = now
        self._end = now + window_s
        self._used = 0

    def hit(self, now: float) -> Quota:
        """Count one request and say whether it fits in the current window."""
        self._roll(now)
        limit = UNLIMITED if self.limit is None else self.limit
        allowed = self._used < limit
        if allowed:
            self._used += 1
        return self._quota(allowed, limit, now)

    def peek(self, now: float) -> Quota:
        """The window's state without counting a request (for refused keys)."""
        self._roll(now)
        return self._quota(True, UNLIMITED if self.limit is None else self.limit, now)

    def _roll(self, now: float) -> None:
        if now >= self._end:
            # Skip whole idle windows at once: the grid stays anchored at the restart.
            passed = math.floor((now - self._start) / self.window_s)
            self._start += passed * self.window_s
            self._end = self._start + self.window_s
            if now >= self._end:  # float rounding on a boundary
                self._start, self._end = self._end, self._end + self.window_s
            self._used = 0

    def _quota(self, allowed: bool, limit: int, now: float) -> Quota:
        reset_s = max(1, math.ceil(self._end - now))
        return Quota(allowed, limit, max(0, limit - self._used), reset_s)
