"""Fault injection: each mode at rate 1.0, what the client sees, and what was stored."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest

from importer.sandbox import Fault, SandboxConfig, running_sandbox
from importer.sandbox.faults import FaultInjector

KEY = {"x-api-key": "clk_test_faults"}
BODY = {"patientId": "pt_1", "scope": "treatment", "category": "treatment-consent"}


def only(mode: str, **fields: Any) -> SandboxConfig:
    """A config where every request meets fault `mode` (a SandboxConfig field name)."""
    return SandboxConfig(**{mode: 1.0}, **fields)


def test_unavailable_is_503_before_storing() -> None:
    with running_sandbox(only("fault_unavailable")) as sb:
        response = httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY)
        assert response.status_code == 503
        error = response.json()
        assert (error["error"], error["code"]) == ("Service Unavailable", "INTERNAL_ERROR")
        assert error["requestId"] == response.headers["x-request-id"]
        assert "x-ratelimit-limit" in response.headers
        assert sb.consents() == []
        assert sb.stats()["faults"]["unavailable"] == 1


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("GET", "/v1/consents", None),
        ("GET", "/v1/consents/{id}", None),
        ("PATCH", "/v1/consents/{id}", {"status": "inactive"}),
        ("DELETE", "/v1/consents/{id}", None),
    ],
)
def test_unavailable_applies_to_every_method_and_changes_nothing(
    method: str, path: str, json: dict[str, Any] | None
) -> None:
    with running_sandbox() as sb:
        created = httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY).json()["data"]
        sb.configure(fault_unavailable=1.0)
        url = sb.base_url + path.format(id=created["id"])
        response = httpx.request(method, url, json=json, headers=KEY)
        assert response.status_code == 503
        assert sb.consents() == [created]


def test_error_after_store_is_500_but_stored() -> None:
    with running_sandbox(only("fault_error_after_store")) as sb:
        response = httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY)
        assert response.status_code == 500
        error = response.json()
        assert (error["error"], error["code"]) == ("Internal Server Error", "INTERNAL_ERROR")
        [stored] = sb.consents()
        assert stored["patientId"] == "pt_1"
        assert sb.stats()["faults"]["error_after_store"] == 1


def test_drop_after_store_leaves_no_response_but_stores() -> None:
    with running_sandbox(only("fault_drop_after_store")) as sb:
        with pytest.raises(httpx.TransportError):  # RemoteProtocolError on loopback
            httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY)
        [stored] = sb.consents()
        assert stored["patientId"] == "pt_1"
        stats = sb.stats()
        assert stats["faults"]["drop_after_store"] == 1
        assert stats["by_status"] == {"dropped": 1}
        assert sb.requests()[-1]["status"] is None


def test_slow_after_store_outlasts_the_client_timeout_but_stores() -> None:
    with running_sandbox(only("fault_slow_after_store", slow_delay_s=60)) as sb:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY, timeout=0.5)
        assert len(sb.consents()) == 1
        assert sb.stats()["faults"]["slow_after_store"] == 1
        stopping = time.monotonic()
    # Leaving the block must not wait out the 60 s sleeper.
    assert time.monotonic() - stopping < 20


def test_slow_after_store_answers_late() -> None:
    with running_sandbox(only("fault_slow_after_store", slow_delay_s=0.3)) as sb:
        start = time.monotonic()
        response = httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY, timeout=30)
        assert response.status_code == 201
        assert time.monotonic() - start >= 0.3


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        ("fault_error_after_store", 500),
        ("fault_drop_after_store", httpx.TransportError),
        ("fault_slow_after_store", httpx.ReadTimeout),
    ],
)
def test_after_store_faults_apply_to_patch(mode: str, outcome: int | type[Exception]) -> None:
    with running_sandbox(SandboxConfig(slow_delay_s=60)) as sb:
        created = httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY).json()["data"]
        sb.configure(**{mode: 1.0})
        url = f"{sb.base_url}/v1/consents/{created['id']}"
        seen: int | Exception
        try:
            # Only the slow mode needs the short timeout; a loaded machine must not turn
            # the others' answers into timeouts.
            timeout = 0.5 if mode == "fault_slow_after_store" else 30
            seen = httpx.patch(
                url, json={"status": "inactive"}, headers=KEY, timeout=timeout
            ).status_code
        except httpx.TransportError as exc:
            seen = exc
        if isinstance(outcome, int):
            assert seen == outcome
        else:
            assert isinstance(seen, outcome)
        assert sb.consents()[0]["status"] == "inactive"  # the write happened all the same


@pytest.mark.parametrize(
    "mode", ["fault_error_after_store", "fault_drop_after_store", "fault_slow_after_store"]
)
def test_after_store_faults_spare_reads_and_deletes(mode: str) -> None:
    with running_sandbox(SandboxConfig(**{mode: 1.0}, slow_delay_s=60)) as sb:
        assert httpx.get(f"{sb.base_url}/v1/consents", headers=KEY, timeout=5).status_code == 200
        gone = httpx.delete(f"{sb.base_url}/v1/consents/consent_x", headers=KEY, timeout=5)
        assert gone.status_code == 404


def test_after_store_faults_spare_invalid_bodies() -> None:
    with running_sandbox(only("fault_drop_after_store")) as sb:
        response = httpx.post(f"{sb.base_url}/v1/consents", json={}, headers=KEY)
        assert response.status_code == 422  # nothing stored, so nothing to lose
        assert sb.stats()["faults"]["drop_after_store"] == 0


def test_faults_can_be_turned_off_at_run_time() -> None:
    with running_sandbox(only("fault_unavailable")) as sb:
        url = f"{sb.base_url}/v1/consents"
        assert httpx.post(url, json=BODY, headers=KEY).status_code == 503
        sb.configure(fault_unavailable=0.0)
        assert httpx.post(url, json=BODY, headers=KEY).status_code == 201


def test_mixed_faults_are_seeded_and_reproducible() -> None:
    def run() -> list[int | str]:
        config = SandboxConfig(fault_unavailable=0.3, fault_error_after_store=0.3, seed=11)
        with running_sandbox(config) as sb, httpx.Client(base_url=sb.base_url, headers=KEY) as c:
            return [c.post("/v1/consents", json=BODY).status_code for _ in range(40)]

    first = run()
    assert first == run()
    assert set(first) == {201, 500, 503}


@pytest.mark.parametrize(
    ("config", "method", "share"),
    [
        # (rates, method, expected share of each outcome) over many seeded draws
        (
            SandboxConfig.with_fault_rate(0.4, seed=1),
            "POST",
            {None: 0.6, **dict.fromkeys(Fault, 0.1)},
        ),
        (SandboxConfig.with_fault_rate(0.4, seed=1), "GET", {None: 0.9, Fault.UNAVAILABLE: 0.1}),
        (SandboxConfig(fault_drop_after_store=1.0), "PATCH", {Fault.DROP_AFTER_STORE: 1.0}),
        (SandboxConfig(fault_drop_after_store=1.0), "DELETE", {None: 1.0}),
        (SandboxConfig(), "POST", {None: 1.0}),
    ],
)
def test_draws_follow_the_rates(
    config: SandboxConfig, method: str, share: dict[Fault | None, float]
) -> None:
    injector = FaultInjector(config.seed)
    draws = Counter(injector.draw(config, method) for _ in range(20_000))
    assert set(draws) == set(share)
    for outcome, expected in share.items():
        assert draws[outcome] / 20_000 == pytest.approx(expected, abs=0.02)


def test_with_fault_rate_spreads_evenly() -> None:
    config = SandboxConfig.with_fault_rate(0.2, seed=3, rate_limit=10)
    assert config.fault_unavailable == config.fault_drop_after_store == pytest.approx(0.05)
    assert config.fault_rate == pytest.approx(0.2)
    assert (config.seed, config.rate_limit) == (3, 10)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"fault_unavailable": 1.5}, "fault_unavailable must be a probability between 0 and 1"),
        ({"fault_unavailable": -0.1}, "fault_unavailable must be at least 0"),
        (
            {"fault_unavailable": 0.6, "fault_error_after_store": 0.6},
            "the four fault rates must add up to at most 1",
        ),
        ({"rate_limit": 0}, "rate_limit must be at least 1"),
        ({"rate_limit": 2.5}, "rate_limit must be a whole number"),
        ({"rate_window_s": 0}, "rate_window_s must be greater than 0"),
        ({"latency_ms": -1}, "latency_ms must be at least 0"),
        ({"slow_delay_s": float("nan")}, "slow_delay_s must be a finite number"),
        ({"seed": "seven"}, "seed must be an integer"),
        ({"revoked_keys": "clk_test_a"}, "revoked_keys must be a set or list"),  # not one key
    ],
)
def test_bad_configs_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SandboxConfig(**fields)
