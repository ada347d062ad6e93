"""The sandbox's knobs: rate limit, latency and fault injection."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: The fault modes a request draws from one share of the unit interval (at most one each).
FAULT_FIELDS = (
    "fault_unavailable",
    "fault_error_after_store",
    "fault_drop_after_store",
    "fault_slow_after_store",
    "fault_late",
)
#: The modes `with_fault_rate` (the `--fault-rate` flag) spreads a total over; `fault_late`
#: has its own flag, so an existing `--fault-rate` keeps meaning what it meant.
SPREAD_FAULT_FIELDS = FAULT_FIELDS[:4]


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox behaves; change it at run time with `RunningSandbox.configure`.

    Args:
        rate_limit: requests per fixed window (all /v1 requests of the server count);
            None means unlimited (the headers then show a very large limit).
        rate_window_s: the window's length in seconds.
        latency_ms: fixed latency added to every /v1 request.
        jitter_ms: plus a uniform random 0..jitter_ms.
        fault_unavailable: P(503 before anything is stored), on every /v1 method.
        fault_error_after_store: P(store, then 500) on POST and PATCH.
        fault_drop_after_store: P(store, then drop the connection mid-response).
        fault_slow_after_store: P(store, then answer only after `slow_delay_s`).
        slow_delay_s: how long a slow answer takes; longer than a client's timeout.
        fault_late: P(answer 502 or 504 at once, then do the write `late_ms` later) on
            POST and PATCH: a gateway timing out while the backend goes on.
        late_ms: how long after its 502/504 a late write is stored.
        fault_search_lag: P(a new consent is hidden from search for `search_lag_ms`),
            drawn per created consent from its own generator; a GET by id sees it at once.
        search_lag_ms: how far search lags behind the store; 0 turns the lag off.
        seed: seeds jitter and fault draws, so a sequential run is reproducible.
        revoked_keys: keys answered with 401 KEY_REVOKED.
        known_patients: when set, a POST for any other patientId fails with 422.
    """

    rate_limit: int | None = None
    rate_window_s: float = 60.0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fault_unavailable: float = 0.0
    fault_error_after_store: float = 0.0
    fault_drop_after_store: float = 0.0
    fault_slow_after_store: float = 0.0
    slow_delay_s: float = 35.0
    fault_late: float = 0.0
    late_ms: float = 4000.0
    fault_search_lag: float = 1.0
    search_lag_ms: float = 0.0
    seed: int | None = None
    revoked_keys: frozenset[str] = field(default_factory=frozenset)
    known_patients: frozenset[str] | None = None

    def __post_init__(self) -> None:
        # Lists (from JSON or a caller's convenience) become frozensets, so the config
        # stays immutable and hashable whatever it was built from.
        object.__setattr__(self, "revoked_keys", _string_set(self.revoked_keys, "revoked_keys"))
        if self.known_patients is not None:
            known = _string_set(self.known_patients, "known_patients")
            object.__setattr__(self, "known_patients", known)
        if self.rate_limit is not None and (
            isinstance(self.rate_limit, bool) or not isinstance(self.rate_limit, int)
        ):
            raise ValueError("rate_limit must be a whole number of requests or None")
        if self.rate_limit is not None and self.rate_limit < 1:
            raise ValueError("rate_limit must be at least 1 (or None for unlimited)")
        _number(self.rate_window_s, "rate_window_s", positive=True)
        for name in ("latency_ms", "jitter_ms", "slow_delay_s", "late_ms", "search_lag_ms"):
            _number(getattr(self, name), name)
        total = sum(_probability(getattr(self, name), name) for name in FAULT_FIELDS)
        if total > 1 + 1e-9:
            raise ValueError(
                f"the fault rates ({', '.join(FAULT_FIELDS)}) must add up to at most 1"
            )
        _probability(self.fault_search_lag, "fault_search_lag")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError("seed must be an integer or None")

    @classmethod
    def with_fault_rate(cls, p: float, **fields: Any) -> SandboxConfig:
        """A config whose total fault rate `p` is spread evenly over the four classic modes.

        Example: `SandboxConfig.with_fault_rate(0.2, seed=7)` fails 5% of requests
        in each of unavailable, error/drop/slow after store (`fault_late` is set apart).
        """
        if not 0 <= p <= 1:
            raise ValueError("the total fault rate must be between 0 and 1")
        share = p / len(SPREAD_FAULT_FIELDS)
        rates: dict[str, Any] = dict.fromkeys(SPREAD_FAULT_FIELDS, share)
        return cls(**rates, **fields)

    @property
    def fault_rate(self) -> float:
        """The total probability that a request meets some drawn fault (search lag aside)."""
        return sum(float(getattr(self, name)) for name in FAULT_FIELDS)

    def replace(self, **changes: Any) -> SandboxConfig:
        """A copy with `changes` applied; an unknown field name raises ValueError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown sandbox setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The config as JSON-ready values (sets become sorted lists)."""
        out: dict[str, Any] = dataclasses.asdict(self)
        out["revoked_keys"] = sorted(self.revoked_keys)
        out["known_patients"] = None if self.known_patients is None else sorted(self.known_patients)
        return out


def _number(value: object, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'greater than' if positive else 'at least'} 0")
    return float(value)


def _probability(value: object, name: str) -> float:
    rate = _number(value, name)
    if rate > 1:
        raise ValueError(f"{name} must be a probability between 0 and 1")
    return rate


def _string_set(value: object, name: str) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a set or list of strings")
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{name} must hold only strings")
    return frozenset(items)
