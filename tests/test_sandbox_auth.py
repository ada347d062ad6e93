"""The `x-api-key` header: missing, malformed, revoked, and where it is not needed."""

from __future__ import annotations

import httpx
import pytest

from importer.sandbox import RunningSandbox, running_sandbox

REVOKED = "clk_live_revoked0001"


@pytest.fixture
def server(server: RunningSandbox) -> RunningSandbox:
    server.configure(revoked_keys=[REVOKED])
    return server


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "UNAUTHORIZED"),
        ({"x-api-key": ""}, "UNAUTHORIZED"),
        ({"x-api-key": "sk_live_abcdef"}, "INVALID_KEY_FORMAT"),
        ({"x-api-key": "clk_prod_abcdef"}, "INVALID_KEY_FORMAT"),
        ({"x-api-key": "clk_test_"}, "INVALID_KEY_FORMAT"),  # the prefix alone
        ({"x-api-key": "CLK_TEST_abcdef"}, "INVALID_KEY_FORMAT"),
        ({"authorization": "Bearer clk_test_abcdef"}, "UNAUTHORIZED"),  # wrong header
        ({"x-api-key": REVOKED}, "KEY_REVOKED"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/consents"), ("GET", "/v1/consents"), ("GET", "/v1/consents/consent_1")],
)
def test_refused_keys_are_401(
    server: RunningSandbox, headers: dict[str, str], code: str, method: str, path: str
) -> None:
    body = {"patientId": "pt_1", "scope": "treatment", "category": "x"}
    response = httpx.request(
        method, f"{server.base_url}{path}", headers=headers, json=body if method == "POST" else None
    )
    assert response.status_code == 401
    error = response.json()
    assert error["error"] == "Unauthorized"
    assert error["code"] == code
    assert error["requestId"] == response.headers["x-request-id"]
    assert "abcdef" not in response.text  # no key is echoed
    assert "revoked0001" not in response.text
    assert "x-ratelimit-remaining" in response.headers  # even refusals report the window


@pytest.mark.parametrize("key", ["clk_test_abc", "clk_live_ABC-123_x"])
def test_well_formed_keys_are_accepted(server: RunningSandbox, key: str) -> None:
    response = httpx.get(f"{server.base_url}/v1/consents", headers={"x-api-key": key})
    assert response.status_code == 200


def test_refused_requests_store_nothing(server: RunningSandbox) -> None:
    body = {"patientId": "pt_1", "scope": "treatment", "category": "x"}
    httpx.post(f"{server.base_url}/v1/consents", json=body, headers={"x-api-key": REVOKED})
    assert all(c["patientId"] != "pt_1" for c in server.consents())


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("GET", "/__sandbox/stats"),
        ("GET", "/__sandbox/consents"),
        ("GET", "/__sandbox/requests"),
        ("GET", "/__sandbox/config"),
    ],
)
def test_health_and_inspection_need_no_key(server: RunningSandbox, method: str, path: str) -> None:
    assert httpx.request(method, f"{server.base_url}{path}").status_code == 200


def test_revoking_a_key_at_run_time() -> None:
    key = "clk_test_soon_revoked"
    with running_sandbox() as sb:
        url = f"{sb.base_url}/v1/consents"
        assert httpx.get(url, headers={"x-api-key": key}).status_code == 200
        sb.configure(revoked_keys=[key])  # a list is accepted and kept as a frozenset
        response = httpx.get(url, headers={"x-api-key": key})
        assert (response.status_code, response.json()["code"]) == (401, "KEY_REVOKED")
        assert sb.config.revoked_keys == frozenset({key})
