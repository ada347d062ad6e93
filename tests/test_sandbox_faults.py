"""Fault injection: each mode at rate 1.0, what the client sees, and what was stored."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest

from importer.sandbox import Fault, SandboxConfig, running_sandbox
from importer.sandbox._config import SPREAD_FAULT_FIELDS
from importer.sandbox._faults import FaultInjector
from tests.helpers import wait_for

SPREAD = [Fault(name.removeprefix("fault_")) for name in SPREAD_FAULT_FIELDS]

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
            # --fault-rate spreads over the four classic modes; late has its own rate
            {None: 0.6, **dict.fromkeys(SPREAD, 0.1)},
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
            "the fault rates .* must add up to at most 1",
        ),
        (
            {"fault_slow_after_store": 0.6, "fault_late": 0.6},
            "the fault rates .* must add up to at most 1",
        ),
        ({"fault_late": 1.5}, "fault_late must be a probability between 0 and 1"),
        ({"fault_search_lag": 2}, "fault_search_lag must be a probability between 0 and 1"),
        ({"late_ms": -1}, "late_ms must be at least 0"),
        ({"search_lag_ms": float("inf")}, "search_lag_ms must be a finite number"),
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


# --- late writes and search lag -------------------------------------------------------
# Timing checks are one-sided and exact: a late write is stored no earlier than late_ms
# after its answer, so anything observed before t0 + late_ms (t0 taken before sending)
# must not show it, and the first observation that shows it comes at t0 + late_ms or
# later. Checks that might run after the deadline on a loaded machine are skipped, not
# failed; polls wait generously.

LATE_S = 1.0
POLL_DEADLINE_S = 30.0


def search_ids(sb: Any, patient: str = "pt_1") -> list[str]:
    response = httpx.get(
        f"{sb.base_url}/v1/consents", params={"patientId": patient}, headers=KEY, timeout=30
    )
    assert response.status_code == 200
    return [c["id"] for c in response.json()["data"]]


def test_late_post_answers_502_or_504_at_once_and_stores_late_ms_later() -> None:
    with running_sandbox(only("fault_late", late_ms=LATE_S * 1000)) as sb:
        t0 = time.monotonic()
        response = httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY, timeout=30)
        assert response.status_code in (502, 504)
        error = response.json()
        assert error["code"] == "INTERNAL_ERROR"
        assert error["requestId"] == response.headers["x-request-id"]
        stored, searched, pending = sb.consents(), search_ids(sb), sb.stats()["late_pending"]
        if time.monotonic() - t0 < LATE_S:  # else too loaded to tell "before" apart
            assert (stored, searched, pending) == ([], [], 1)
        seen = wait_for(lambda: search_ids(sb), POLL_DEADLINE_S)
        assert seen - t0 >= LATE_S  # never before late_ms
        [consent] = sb.consents()
        assert consent["patientId"] == "pt_1"
        by_id = httpx.get(f"{sb.base_url}/v1/consents/{consent['id']}", headers=KEY, timeout=30)
        assert by_id.status_code == 200
        stats = sb.stats()
        assert (stats["faults"]["late"], stats["creates"], stats["late_pending"]) == (1, 1, 0)
        assert stats["by_status"] == {
            str(response.status_code): 1,
            "200": stats["by_method"]["GET"],
        }


def test_late_patch_is_applied_late_ms_later() -> None:
    with running_sandbox() as sb:
        created = httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY).json()["data"]
        sb.configure(fault_late=1.0, late_ms=LATE_S * 1000)
        url = f"{sb.base_url}/v1/consents/{created['id']}"
        t0 = time.monotonic()
        response = httpx.patch(url, json={"status": "inactive"}, headers=KEY, timeout=30)
        assert response.status_code in (502, 504)
        status = sb.consents()[0]["status"]
        if time.monotonic() - t0 < LATE_S:
            assert status == "active"
        seen = wait_for(lambda: sb.consents()[0]["status"] == "inactive", POLL_DEADLINE_S)
        assert seen - t0 >= LATE_S
        assert sb.stats()["patches"] == 1


def test_late_patch_of_an_unknown_id_is_404_at_once() -> None:
    with running_sandbox(only("fault_late")) as sb:
        url = f"{sb.base_url}/v1/consents/consent_nope"
        response = httpx.patch(url, json={"status": "inactive"}, headers=KEY, timeout=30)
        assert response.status_code == 404
        assert sb.stats()["faults"]["late"] == 0


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("GET", "/v1/consents", None),
        ("POST", "/v1/consents", {}),  # invalid: nothing to store, so nothing to lose
    ],
)
def test_late_spares_reads_and_invalid_bodies(
    method: str, path: str, json: dict[str, Any] | None
) -> None:
    with running_sandbox(only("fault_late")) as sb:
        response = httpx.request(method, sb.base_url + path, json=json, headers=KEY, timeout=30)
        assert response.status_code in (200, 422)
        assert sb.stats()["faults"]["late"] == 0


def test_reset_drops_pending_late_writes() -> None:
    with running_sandbox(only("fault_late", late_ms=LATE_S * 1000)) as sb:
        httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY, timeout=30)
        sb.reset()
        assert sb.stats()["late_pending"] == 0
        time.sleep(LATE_S + 0.5)
        assert sb.consents() == []


def test_search_lag_hides_a_new_consent_from_search_but_not_from_get() -> None:
    with running_sandbox(SandboxConfig(search_lag_ms=LATE_S * 1000)) as sb:
        t0 = time.monotonic()
        response = httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY, timeout=30)
        assert response.status_code == 201
        consent_id = response.json()["data"]["id"]
        by_id = httpx.get(f"{sb.base_url}/v1/consents/{consent_id}", headers=KEY, timeout=30)
        assert by_id.status_code == 200  # whenever it runs: GET by id never lags
        searched = search_ids(sb)
        if time.monotonic() - t0 < LATE_S:
            assert searched == []
        seen = wait_for(lambda: search_ids(sb) == [consent_id], POLL_DEADLINE_S)
        assert seen - t0 >= LATE_S
        assert sb.stats()["faults"]["search_lag"] == 1


def test_a_patch_does_not_reset_search_lag() -> None:
    with running_sandbox(SandboxConfig(search_lag_ms=60_000)) as sb:
        created = httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY).json()["data"]
        url = f"{sb.base_url}/v1/consents/{created['id']}"
        assert httpx.patch(url, json={"status": "inactive"}, headers=KEY).status_code == 200
        assert search_ids(sb) == []  # 60 s: still hidden
        sb.configure(search_lag_ms=0)  # only new consents draw a lag
        assert search_ids(sb) == []


def test_late_and_search_lag_combine() -> None:
    # A late write is a new consent like any other: it draws search lag when stored.
    config = only("fault_late", late_ms=300, search_lag_ms=60_000)
    with running_sandbox(config) as sb:
        httpx.post(f"{sb.base_url}/v1/consents", json=BODY, headers=KEY, timeout=30)
        wait_for(sb.consents, POLL_DEADLINE_S)
        assert search_ids(sb) == []
        assert sb.stats()["faults"] == {
            **dict.fromkeys([f.value for f in Fault], 0),
            "late": 1,
            "search_lag": 1,
        }


def lagged_pattern(seed: int) -> tuple[list[int], list[bool], dict[str, int]]:
    """Statuses of 30 POSTs and which consents search hides, under seeded late and lag."""
    config = SandboxConfig(
        fault_late=0.3, late_ms=60_000, fault_search_lag=0.4, search_lag_ms=60_000, seed=seed
    )
    with running_sandbox(config) as sb, httpx.Client(base_url=sb.base_url, headers=KEY) as c:
        statuses = [
            c.post("/v1/consents", json={**BODY, "patientId": f"pt_{i}"}).status_code
            for i in range(30)
        ]
        visible = {
            consent["patientId"]
            for consent in c.get("/v1/consents", params={"count": 100}).json()["data"]
        }
        hidden = [f"pt_{i}" not in visible for i, status in enumerate(statuses) if status == 201]
        return statuses, hidden, sb.stats()["faults"]


def test_late_and_search_lag_are_seeded_and_reproducible() -> None:
    statuses, hidden, faults = lagged_pattern(seed=4)
    assert (statuses, hidden, faults) == lagged_pattern(seed=4)
    assert set(statuses) == {201, 502, 504}
    assert faults["late"] == statuses.count(502) + statuses.count(504)
    assert faults["search_lag"] == sum(hidden)
    assert 0 < sum(hidden) < len(hidden)
    assert lagged_pattern(seed=5)[:2] != (statuses, hidden)


@pytest.mark.parametrize(("rate", "share"), [(0.0, 0.0), (0.25, 0.25), (1.0, 1.0)])
def test_search_lag_draws_follow_the_rate(rate: float, share: float) -> None:
    config = SandboxConfig(fault_search_lag=rate, search_lag_ms=500, seed=2)
    injector = FaultInjector(config.seed)
    lags = [injector.search_lag_s(config) for _ in range(20_000)]
    assert set(lags) <= {0.0, 0.5}
    assert lags.count(0.5) / 20_000 == pytest.approx(share, abs=0.02)


def test_late_draws_leave_the_other_modes_alone() -> None:
    # Adding a late rate takes its share after the classic modes: their draws do not move.
    classic = SandboxConfig(fault_unavailable=0.2, fault_error_after_store=0.2, seed=9)
    with_late = classic.replace(fault_late=0.3)
    a, b = FaultInjector(9), FaultInjector(9)
    for _ in range(2_000):
        before, after = a.draw(classic, "POST"), b.draw(with_late, "POST")
        assert after == before or (before is None and after is Fault.LATE)


def test_late_and_search_lag_over_http_config() -> None:
    with running_sandbox() as sb, httpx.Client(base_url=sb.base_url, headers=KEY) as c:
        changes = {"fault_late": 1.0, "late_ms": 300, "search_lag_ms": 250}
        response = c.post("/__sandbox/config", json=changes)
        assert response.status_code == 200
        assert response.json() == {**SandboxConfig().to_json(), **changes}
        assert c.post("/v1/consents", json=BODY).status_code in (502, 504)
        wait_for(lambda: sb.stats()["faults"]["search_lag"] == 1, POLL_DEADLINE_S)
        assert c.get("/__sandbox/stats").json()["faults"]["late"] == 1


LATE_FLAGS = ["--late-rate", "0.25", "--late-ms", "1500", "--search-lag-rate", "0.5"]
LATE_FLAGS += ["--search-lag-ms", "2000", "--fault-rate", "0.4", "--seed", "3"]
LATE_CONFIG = {
    "fault_late": 0.25,
    "late_ms": 1500.0,
    "fault_search_lag": 0.5,
    "search_lag_ms": 2000.0,
    "fault_unavailable": 0.1,
    "seed": 3,
}


def serve_config(monkeypatch: pytest.MonkeyPatch, which: str, argv: list[str]) -> SandboxConfig:
    """The config `consent-import sandbox` or `python -m importer.sandbox` would serve."""
    import importer.sandbox
    import importer.sandbox.__main__ as module_main
    from importer.cli._main import main as cli_main

    served: list[SandboxConfig] = []

    def fake_serve(config: SandboxConfig, *args: Any, **kwargs: Any) -> None:
        served.append(config)

    monkeypatch.setattr(importer.sandbox, "serve", fake_serve)
    with pytest.raises(SystemExit) as exited:  # `python -m importer.sandbox` is the CLI's
        cli_main(["sandbox", *argv]) if which == "cli" else module_main.main(argv)
    assert exited.value.code == 0
    [config] = served
    return config


@pytest.mark.parametrize("which", ["cli", "module"])
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"fault_late": 0.0, "late_ms": 4000.0, "fault_search_lag": 1.0, "search_lag_ms": 0}),
        (LATE_FLAGS, LATE_CONFIG),
    ],
)
def test_sandbox_flags_set_late_and_search_lag(
    monkeypatch: pytest.MonkeyPatch, which: str, argv: list[str], expected: dict[str, Any]
) -> None:
    config = serve_config(monkeypatch, which, argv).to_json()
    assert {name: config[name] for name in expected} == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["--late-rate", "1.5"],
        ["--search-lag-rate", "-0.1"],
        ["--late-ms", "-1"],
        ["--fault-rate", "0.8", "--late-rate", "0.5"],  # the exclusive modes exceed 1
    ],
)
def test_bad_sandbox_late_flags_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    from importer.cli._main import main as cli_main

    monkeypatch.setattr("importer.sandbox.serve", lambda *a, **k: None)
    with pytest.raises(SystemExit) as exited:
        cli_main(["sandbox", *argv])
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
