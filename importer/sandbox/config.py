"""The sandbox's knobs: rate limit, latency and fault injection."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: The four fault modes, by the name used in stats and in `with_fault_rate`.
FAULT_FIELDS = (
    "fault_unavailable",
    "fault_error_after_store",
    "fault_drop_after_store",
    "fault_slow_after_store",
)


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
        for name in ("latency_ms", "jitter_ms", "slow_delay_s"):
            _number(getattr(self, name), name)
        total = 0.0
        for name in FAULT_FIELDS:
            rate = _number(getattr(self, name), name)
            if rate > 1:
                raise ValueError(f"{name} must be a probability between 0 and 1")
            total += rate
        if total > 1 + 1e-9:
            raise ValueError("the four fault rates must add up to at most 1")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError("seed must be an integer or None")

    @classmethod
    def with_fault_rate(cls, p: float, **fields: Any) -> SandboxConfig:
        """A config whose total fault rate `p` is spread evenly over the four modes.

        Example: `SandboxConfig.with_fault_rate(0.2, seed=7)` fails 5% of requests
        in each mode.
        """
        if not 0 <= p <= 1:
            raise ValueError("the total fault rate must be between 0 and 1")
        share = p / len(FAULT_FIELDS)
        rates: dict[str, Any] = dict.fromkeys(FAULT_FIELDS, share)
        return cls(**rates, **fields)

    @property
    def fault_rate(self) -> float:
        """The total probability that a request meets some fault."""
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


def _string_set(value: object, name: str) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a set or list of strings")
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{name} must hold only strings")
    return frozenset(items)
