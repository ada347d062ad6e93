"""Added latency and jitter: every /v1 request is held, inspection is not."""

from __future__ import annotations

import time

import httpx
import pytest

from importer.sandbox import SandboxConfig, running_sandbox
from importer.sandbox._faults import FaultInjector

KEY = {"x-api-key": "clk_test_latency"}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (KEY, 200),
        ({"x-api-key": "bad"}, 401),  # refusals are held too, like a real network
    ],
)
def test_v1_requests_are_held_at_least_the_latency(headers: dict[str, str], status: int) -> None:
    with running_sandbox(SandboxConfig(latency_ms=300)) as sb:
        start = time.monotonic()
        response = httpx.get(f"{sb.base_url}/v1/consents", headers=headers, timeout=30)
        assert response.status_code == status
        assert time.monotonic() - start >= 0.3


def test_inspection_is_not_held() -> None:
    # With 5 s of latency on /v1, /health answering within 4 s shows it was not held.
    with running_sandbox(SandboxConfig(latency_ms=5000)) as sb:
        start = time.monotonic()
        assert httpx.get(f"{sb.base_url}/health", timeout=30).status_code == 200
        assert time.monotonic() - start < 4


@pytest.mark.parametrize(
    ("latency_ms", "jitter_ms"),
    [(0, 0), (100, 0), (0, 50), (20, 30)],
)
def test_latency_draws_stay_in_range(latency_ms: float, jitter_ms: float) -> None:
    config = SandboxConfig(latency_ms=latency_ms, jitter_ms=jitter_ms, seed=5)
    injector = FaultInjector(config.seed)
    draws = [injector.latency_s(config) for _ in range(1000)]
    assert min(draws) >= latency_ms / 1000
    assert max(draws) <= (latency_ms + jitter_ms) / 1000
    if jitter_ms:
        assert len(set(draws)) > 900  # really random


def test_jitter_is_seeded() -> None:
    config = SandboxConfig(jitter_ms=100, seed=42)
    first, second = FaultInjector(42), FaultInjector(42)
    assert [first.latency_s(config) for _ in range(50)] == [
        second.latency_s(config) for _ in range(50)
    ]
    assert FaultInjector(43).latency_s(config) != FaultInjector(42).latency_s(config)


def test_jitter_does_not_change_which_requests_fail() -> None:
    # Separate generators: turning jitter on keeps the fault sequence of a seed.
    quiet = SandboxConfig(fault_unavailable=0.5, seed=9)
    jittery = SandboxConfig(fault_unavailable=0.5, jitter_ms=10, seed=9)
    a, b = FaultInjector(9), FaultInjector(9)
    draws_a = [a.draw(quiet, "POST") for _ in range(100)]
    draws_b = []
    for _ in range(100):
        b.latency_s(jittery)
        draws_b.append(b.draw(jittery, "POST"))
    assert draws_a == draws_b
