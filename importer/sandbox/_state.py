"""Everything one sandbox server remembers: config, consents, budget, counters, log."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from importer.sandbox._config import SandboxConfig
from importer.sandbox._faults import Fault, FaultInjector
from importer.sandbox._ratelimit import FixedWindow
from importer.sandbox._store import Consent, ConsentStore

#: How many requests `GET /__sandbox/requests` remembers.
REQUEST_LOG_SIZE = 100_000
#: The status recorded for a request whose connection was dropped on purpose.
DROPPED = "dropped"


class SandboxState:
    """The mutable state behind one app; touched only from the server's event loop."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.started = time.monotonic()
        self.store = ConsentStore()
        self.limiter = FixedWindow(config.rate_limit, config.rate_window_s, self.started)
        self.faults = FaultInjector(config.seed)
        self.log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._stopping = asyncio.Event()
        # Late writes not yet done; reset cancels them, so a test starts clean.
        self._pending: set[asyncio.TimerHandle] = set()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.by_method: Counter[str] = Counter()
        self.creates = 0
        self.patches = 0
        self.deletes = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.rate_limited = 0
        self.fault_counts: Counter[str] = Counter()

    # --- requests --------------------------------------------------------------------

    def begin(self, method: str) -> float:
        """Count a /v1 request arriving; returns its arrival time."""
        self.requests += 1
        self.by_method[method] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return time.monotonic()

    def end(self, arrived: float, method: str, path: str, status: int | str | None) -> None:
        """Count a /v1 request finished with `status` (None: no response was started).

        The log is in the order requests finish; each entry's `t` is its arrival.
        """
        self.in_flight -= 1
        key = "none" if status is None else str(status)
        self.by_status[key] += 1
        if status == 429:
            self.rate_limited += 1
        self.log.append(
            {
                "t": round(arrived - self.started, 6),
                "method": method,
                "path": path,
                "status": status if isinstance(status, int) else None,
            }
        )

    def count_fault(self, fault: Fault) -> None:
        """Count a fault that was actually applied."""
        self.fault_counts[fault.value] += 1

    # --- writes ----------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> Consent:
        """Store a validated body as a new consent, hidden from search for a drawn lag."""
        lag = self.faults.search_lag_s(self.config)
        if lag:
            self.count_fault(Fault.SEARCH_LAG)
        consent = self.store.create(body, time.monotonic() + lag)
        self.creates += 1
        return consent

    def later(self, seconds: float, write: Callable[[], object]) -> None:
        """Do `write` on this loop `seconds` from now (a late write), unless reset first."""

        def fire() -> None:
            self._pending.discard(handle)
            write()

        handle = asyncio.get_running_loop().call_later(seconds, fire)
        self._pending.add(handle)

    # --- slow answers and shutdown ---------------------------------------------------

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the server starts shutting down."""
        if seconds <= 0 or self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def begin_shutdown(self) -> None:
        """Wake every paused request so shutdown never waits out a slow answer."""
        self._stopping.set()

    # --- inspection and control ------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The counters of `GET /__sandbox/stats`."""
        return {
            "requests": self.requests,
            "by_status": dict(sorted(self.by_status.items())),
            "by_method": dict(sorted(self.by_method.items())),
            "creates": self.creates,
            "patches": self.patches,
            "deletes": self.deletes,
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "consents": len(self.store),
            "duplicates": self.store.duplicates,
            "rate_limited": self.rate_limited,
            "faults": {fault.value: self.fault_counts[fault.value] for fault in Fault},
            "late_pending": len(self._pending),
        }

    def reset(self) -> None:
        """Clear consents, counters, log and rate window; drop late writes; reseed the draws.

        Requests in flight keep running and are still counted when they end.
        """
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        in_flight = self.in_flight
        self.store.clear()
        self.log.clear()
        self._reset_counters()
        self.in_flight = in_flight
        self.max_in_flight = in_flight
        cfg = self.config
        self.limiter.restart(cfg.rate_limit, cfg.rate_window_s, time.monotonic())
        self.faults.reseed(cfg.seed)

    def configure(self, **changes: Any) -> SandboxConfig:
        """Apply config changes; a new limit or window starts a fresh window.

        Raises:
            ValueError: an unknown field or an invalid value; nothing is changed.
        """
        old, new = self.config, self.config.replace(**changes)
        self.config = new
        if (new.rate_limit, new.rate_window_s) != (old.rate_limit, old.rate_window_s):
            self.limiter.restart(new.rate_limit, new.rate_window_s, time.monotonic())
        if "seed" in changes:
            self.faults.reseed(new.seed)
        return new
