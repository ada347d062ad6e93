"""Seeded latency and fault draws: the bad days an importer must survive."""

from __future__ import annotations

import random
from enum import StrEnum

from importer.sandbox._config import SandboxConfig


class Fault(StrEnum):
    """A fault mode; its value is the key in `stats()["faults"]`."""

    UNAVAILABLE = "unavailable"  # 503 before anything is stored
    ERROR_AFTER_STORE = "error_after_store"  # stored, then 500
    DROP_AFTER_STORE = "drop_after_store"  # stored, then the connection drops mid-response
    SLOW_AFTER_STORE = "slow_after_store"  # stored, then the answer comes too late
    LATE = "late"  # 502/504 at once, stored `late_ms` later
    SEARCH_LAG = "search_lag"  # stored, but hidden from search for `search_lag_ms`

    @property
    def after_store(self) -> bool:
        """True for the modes that store first and then spoil the answer."""
        return self in _AFTER_STORE


_AFTER_STORE = frozenset({Fault.ERROR_AFTER_STORE, Fault.DROP_AFTER_STORE, Fault.SLOW_AFTER_STORE})
#: The gateway errors a late write answers with, chosen by its own seeded generator.
LATE_STATUSES = (502, 504)


# Methods that write; only they can meet an after-store fault.
WRITE_METHODS = frozenset({"POST", "PATCH"})


class FaultInjector:
    """Draws latency and faults from their own seeded generators.

    Jitter, faults, the late answer's status and search lag use separate generators so
    that turning one on does not change which requests meet the others. With concurrent
    clients the arrival order, and so which request gets which draw, is up to the
    scheduler; a sequential run is reproducible.
    """

    def __init__(self, seed: int | None) -> None:
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Restart every generator (a None seed draws fresh entropy)."""
        self._faults = random.Random(None if seed is None else f"{seed}:faults")
        self._jitter = random.Random(None if seed is None else f"{seed}:jitter")
        self._late = random.Random(None if seed is None else f"{seed}:late")
        self._search_lag = random.Random(None if seed is None else f"{seed}:search_lag")

    def latency_s(self, config: SandboxConfig) -> float:
        """Seconds to hold a request: fixed latency plus uniform jitter."""
        delay = config.latency_ms
        if config.jitter_ms:
            delay += self._jitter.uniform(0.0, config.jitter_ms)
        return delay / 1000.0

    def draw(self, config: SandboxConfig, method: str) -> Fault | None:
        """The fault this request meets, if any.

        Every request draws once (when any fault is on), so a mode's rate is its share
        of all requests; reads and deletes can only meet `UNAVAILABLE`.
        """
        if not config.fault_rate:
            return None
        u = self._faults.random()
        edge = config.fault_unavailable
        if u < edge:
            return Fault.UNAVAILABLE
        if method not in WRITE_METHODS:
            return None
        for fault, rate in (
            (Fault.ERROR_AFTER_STORE, config.fault_error_after_store),
            (Fault.DROP_AFTER_STORE, config.fault_drop_after_store),
            (Fault.SLOW_AFTER_STORE, config.fault_slow_after_store),
            (Fault.LATE, config.fault_late),
        ):
            edge += rate
            if u < edge:
                return fault
        return None

    def late_status(self) -> int:
        """The status a late write answers with at once: 502 or 504, evenly."""
        return self._late.choice(LATE_STATUSES)

    def search_lag_s(self, config: SandboxConfig) -> float:
        """Seconds a newly created consent stays out of search (0: visible at once).

        Draws only while a lag is configured, so a run without lag draws nothing.
        """
        if not config.search_lag_ms or not config.fault_search_lag:
            return 0.0
        if self._search_lag.random() >= config.fault_search_lag:
            return 0.0
        return config.search_lag_ms / 1000.0
