"""The fixed-window rate limit: headers on every /v1 response, 429s, and roll-over.

Exact window arithmetic is tested on `FixedWindow` with a fake clock; over the socket,
windows are either long (nothing rolls over during the test) or asserted with margins.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from importer.sandbox import SandboxConfig, running_sandbox
from importer.sandbox._ratelimit import UNLIMITED, FixedWindow, Quota

KEY = {"x-api-key": "clk_test_ratelimit"}
BODY = {"patientId": "pt_1", "scope": "treatment", "category": "treatment-consent"}


def quota_headers(response: httpx.Response) -> tuple[int, int, int]:
    h = response.headers
    return int(h["x-ratelimit-limit"]), int(h["x-ratelimit-remaining"]), int(h["x-ratelimit-reset"])


# --- FixedWindow on a fake clock -----------------------------------------------------


@pytest.mark.parametrize(
    ("hits_at", "expected"),
    [
        # (times of successive hits, quota of the last one) with limit 2 per 10 s from t=0
        ([0.0], Quota(True, 2, 1, 10)),
        ([0.0, 0.5], Quota(True, 2, 0, 10)),  # reset rounds 9.5 up
        ([0.0, 1.0, 2.0], Quota(False, 2, 0, 8)),
        ([0.0, 1.0, 9.999], Quota(False, 2, 0, 1)),  # never 0 while the window lasts
        ([0.0, 1.0, 10.0], Quota(True, 2, 1, 10)),  # the boundary opens a new window
        ([0.0, 1.0, 2.0, 12.5], Quota(True, 2, 1, 8)),  # windows stay on the 10 s grid
        ([0.0, 95.0], Quota(True, 2, 1, 5)),  # idle windows are skipped, grid kept
    ],
)
def test_fixed_window(hits_at: list[float], expected: Quota) -> None:
    window = FixedWindow(2, 10.0, now=0.0)
    quotas = [window.hit(t) for t in hits_at]
    assert quotas[-1] == expected


def test_refused_hits_do_not_spend_more() -> None:
    window = FixedWindow(1, 10.0, now=0.0)
    assert [window.hit(1.0).allowed for _ in range(5)] == [True, False, False, False, False]
    assert window.hit(10.0) == Quota(True, 1, 0, 10)


def test_peek_counts_nothing() -> None:
    window = FixedWindow(3, 10.0, now=0.0)
    window.hit(0.0)
    assert window.peek(1.0) == Quota(True, 3, 2, 9)
    assert window.peek(2.0).remaining == 2


def test_unlimited_reports_a_huge_budget() -> None:
    window = FixedWindow(None, 60.0, now=0.0)
    assert window.hit(0.0) == Quota(True, UNLIMITED, UNLIMITED - 1, 60)


def test_quota_headers() -> None:
    assert Quota(False, 5, 0, 3).headers() == [
        (b"x-ratelimit-limit", b"5"),
        (b"x-ratelimit-remaining", b"0"),
        (b"x-ratelimit-reset", b"3"),
        (b"retry-after", b"3"),
    ]
    assert (b"retry-after", b"3") not in Quota(True, 5, 1, 3).headers()


# --- over the socket -----------------------------------------------------------------


def test_budget_is_spent_then_429_with_retry_after() -> None:
    with running_sandbox(SandboxConfig(rate_limit=3, rate_window_s=3600)) as sb:
        with httpx.Client(base_url=sb.base_url, headers=KEY) as client:
            responses = [client.post("/v1/consents", json=BODY) for _ in range(5)]
        assert [r.status_code for r in responses] == [201, 201, 201, 429, 429]
        assert [quota_headers(r)[:2] for r in responses] == [(3, 2), (3, 1), (3, 0), (3, 0), (3, 0)]
        refused = responses[3]
        assert refused.json()["code"] == "RATE_LIMITED"
        assert refused.json()["error"] == "Too Many Requests"
        # Seconds until the hour-long window ends: ceil, so at most 3600, never 0.
        assert 3500 < int(refused.headers["retry-after"]) <= 3600
        assert refused.headers["retry-after"] == refused.headers["x-ratelimit-reset"]
        meta = responses[2].json()["meta"]
        assert (meta["rateLimitTotal"], meta["rateLimitRemaining"]) == (3, 0)
        assert 3500 < meta["rateLimitReset"] <= 3600
        stats = sb.stats()
        assert (stats["rate_limited"], stats["creates"], stats["consents"]) == (2, 3, 3)


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("POST", "/v1/consents", BODY),
        ("POST", "/v1/consents", {}),  # 422
        ("GET", "/v1/consents", None),
        ("GET", "/v1/consents/consent_nope", None),  # 404
        ("PATCH", "/v1/consents/consent_nope", {"status": "inactive"}),
        ("DELETE", "/v1/consents/consent_nope", None),
        ("GET", "/v1/nothing-here", None),  # no such route
    ],
)
def test_every_v1_response_carries_the_headers(
    method: str, path: str, json: dict[str, Any] | None
) -> None:
    with running_sandbox(SandboxConfig(rate_limit=10, rate_window_s=3600)) as sb:
        response = httpx.request(method, f"{sb.base_url}{path}", headers=KEY, json=json)
        assert quota_headers(response)[:2] == (10, 9)
        assert "retry-after" not in response.headers


def test_refused_keys_do_not_spend_the_budget() -> None:
    with running_sandbox(SandboxConfig(rate_limit=2, rate_window_s=3600)) as sb:
        url = f"{sb.base_url}/v1/consents"
        for _ in range(3):
            refused = httpx.get(url, headers={"x-api-key": "wrong"})
            assert refused.status_code == 401
            assert quota_headers(refused)[:2] == (2, 2)
        assert httpx.get(url, headers=KEY).status_code == 200


def test_no_limit_still_sends_headers() -> None:
    with running_sandbox() as sb:
        response = httpx.get(f"{sb.base_url}/v1/consents", headers=KEY)
        limit, remaining, reset = quota_headers(response)
        assert limit == UNLIMITED
        assert remaining == UNLIMITED - 1
        assert 0 < reset <= 60


def test_inspection_endpoints_are_not_counted() -> None:
    with running_sandbox(SandboxConfig(rate_limit=1, rate_window_s=3600)) as sb:
        for path in ["/health", "/__sandbox/stats", "/__sandbox/consents"]:
            httpx.get(f"{sb.base_url}{path}")
        assert httpx.get(f"{sb.base_url}/v1/consents", headers=KEY).status_code == 200


def test_window_rolls_over() -> None:
    # A 1 s window: spend it until refused, wait Retry-After, and the budget is back.
    # Loops instead of counting exactly, because a slow machine may cross a boundary.
    config = SandboxConfig(rate_limit=3, rate_window_s=1.0)
    with running_sandbox(config) as sb, httpx.Client(base_url=sb.base_url, headers=KEY) as client:
        for _ in range(100):
            refused = client.get("/v1/consents")
            if refused.status_code == 429:
                break
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"  # ceil of under a second
        time.sleep(int(refused.headers["retry-after"]) + 0.2)
        fresh = client.get("/v1/consents")
        assert fresh.status_code == 200
        assert quota_headers(fresh)[1] >= 1  # at most one earlier request in this window


def test_changing_the_limit_at_run_time_starts_a_fresh_window() -> None:
    with running_sandbox(SandboxConfig(rate_limit=1, rate_window_s=3600)) as sb:
        url = f"{sb.base_url}/v1/consents"
        assert httpx.get(url, headers=KEY).status_code == 200
        assert httpx.get(url, headers=KEY).status_code == 429
        sb.configure(rate_limit=5)
        response = httpx.get(url, headers=KEY)
        assert response.status_code == 200
        assert quota_headers(response)[:2] == (5, 4)
        sb.configure(rate_limit=None)
        assert quota_headers(httpx.get(url, headers=KEY))[0] == UNLIMITED


def test_reset_restores_the_budget() -> None:
    with running_sandbox(SandboxConfig(rate_limit=1, rate_window_s=3600)) as sb:
        url = f"{sb.base_url}/v1/consents"
        httpx.get(url, headers=KEY)
        assert httpx.get(url, headers=KEY).status_code == 429
        sb.reset()
        assert httpx.get(url, headers=KEY).status_code == 200
