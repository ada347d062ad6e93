"""`/__sandbox/*` inspection and control: stats, duplicates, request log, reset, config."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from importer.sandbox import RunningSandbox, SandboxConfig, running_sandbox
from importer.sandbox._state import REQUEST_LOG_SIZE, SandboxState

KEY = {"x-api-key": "clk_test_stats"}
BODY = {
    "patientId": "pt_1",
    "scope": "treatment",
    "category": ["treatment-consent", "hipaa-notice"],
    "dateTime": "2024-03-01T09:30:00Z",
}


@pytest.fixture
def sb(server: RunningSandbox) -> RunningSandbox:
    return server


def test_stats_count_what_happened(sb: RunningSandbox, client: httpx.Client) -> None:
    first = client.post("/v1/consents", json=BODY).json()["data"]["id"]
    client.post("/v1/consents", json={**BODY, "patientId": "pt_2"})
    client.post("/v1/consents", json={})  # 422
    client.get(f"/v1/consents/{first}")
    client.get("/v1/consents", params={"patientId": "pt_1"})
    client.patch(f"/v1/consents/{first}", json={"status": "inactive"})
    client.delete(f"/v1/consents/{first}")
    client.get(f"/v1/consents/{first}")  # 404
    client.get("/v1/consents", headers={"x-api-key": "nope"})  # 401
    client.get("/health")  # not a /v1 request: not counted
    assert sb.stats() == {
        "requests": 9,
        "by_status": {"200": 4, "201": 2, "401": 1, "404": 1, "422": 1},
        "by_method": {"DELETE": 1, "GET": 4, "PATCH": 1, "POST": 3},
        "creates": 2,
        "patches": 1,
        "deletes": 1,
        "max_in_flight": 1,
        "in_flight": 0,
        "consents": 1,
        "duplicates": 0,
        "rate_limited": 0,
        "faults": {
            "unavailable": 0,
            "error_after_store": 0,
            "drop_after_store": 0,
            "slow_after_store": 0,
            "late": 0,
            "search_lag": 0,
        },
        "late_pending": 0,
    }


@pytest.mark.parametrize(
    ("second", "duplicate"),
    [
        (BODY, True),
        ({**BODY, "category": ["hipaa-notice", "treatment-consent"]}, True),  # order ignored
        ({**BODY, "dateTime": "2024-03-01T11:30:00+02:00"}, True),  # the same instant
        ({**BODY, "status": "draft", "policyUri": "https://x"}, True),  # not identity fields
        ({**BODY, "patientId": "pt_2"}, False),
        ({**BODY, "scope": "research"}, False),
        ({**BODY, "category": ["treatment-consent"]}, False),
        ({**BODY, "dateTime": "2024-03-01T09:30:01Z"}, False),
        ({k: v for k, v in BODY.items() if k != "dateTime"}, False),
    ],
)
def test_duplicates(
    sb: RunningSandbox, client: httpx.Client, second: dict[str, Any], duplicate: bool
) -> None:
    assert client.post("/v1/consents", json=BODY).status_code == 201
    assert client.post("/v1/consents", json=second).status_code == 201
    assert sb.stats()["duplicates"] == int(duplicate)


def test_duplicates_count_each_extra_copy_and_forget_deleted_ones(
    sb: RunningSandbox, client: httpx.Client
) -> None:
    ids = [client.post("/v1/consents", json=BODY).json()["data"]["id"] for _ in range(3)]
    assert sb.stats()["duplicates"] == 2
    client.delete(f"/v1/consents/{ids[0]}")
    assert sb.stats()["duplicates"] == 1
    client.delete(f"/v1/consents/{ids[2]}")
    assert sb.stats()["duplicates"] == 0


@pytest.mark.anyio
async def test_max_in_flight(sb: RunningSandbox) -> None:
    # Each request is held 1 s, far longer than starting 8 takes, so all 8 overlap.
    sb.configure(latency_ms=1000)
    async with (
        httpx.AsyncClient(base_url=sb.base_url, headers=KEY, timeout=30) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(8):
            tg.start_soon(client.get, "/v1/consents")
    stats = sb.stats()
    assert stats["max_in_flight"] == 8
    assert stats["in_flight"] == 0


def test_request_log(sb: RunningSandbox, client: httpx.Client) -> None:
    client.post("/v1/consents", json=BODY)
    client.get("/v1/consents/consent_nope")
    client.get("/health")  # not logged
    log = sb.requests()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", "/v1/consents", 201),
        ("GET", "/v1/consents/consent_nope", 404),
    ]
    assert 0 < log[0]["t"] <= log[1]["t"]  # seconds since the server started


def test_request_log_is_bounded() -> None:
    state = SandboxState(SandboxConfig())
    assert state.log.maxlen == REQUEST_LOG_SIZE
    for _ in range(REQUEST_LOG_SIZE + 5):
        state.begin("GET")
        state.end(0.0, "GET", "/v1/consents", 200)
    assert len(state.log) == REQUEST_LOG_SIZE
    assert state.stats()["requests"] == REQUEST_LOG_SIZE + 5


def test_http_inspection_matches_the_handle(sb: RunningSandbox, client: httpx.Client) -> None:
    client.post("/v1/consents", json=BODY)
    client.post("/v1/consents", json={**BODY, "patientId": "pt_2"})
    consents = client.get("/__sandbox/consents").json()
    assert consents == sb.consents()
    assert [c["patientId"] for c in consents] == ["pt_1", "pt_2"]  # creation order
    assert client.get("/__sandbox/stats").json() == sb.stats()
    assert client.get("/__sandbox/requests").json() == sb.requests()


def test_reset_over_http(sb: RunningSandbox, client: httpx.Client) -> None:
    client.post("/v1/consents", json=BODY)
    response = client.post("/__sandbox/reset")
    assert response.status_code == 200
    assert response.json()["requests"] == 0
    assert sb.consents() == []
    assert sb.requests() == []


def test_config_over_http(sb: RunningSandbox, client: httpx.Client) -> None:
    response = client.post(
        "/__sandbox/config", json={"fault_unavailable": 1.0, "revoked_keys": ["clk_test_gone"]}
    )
    assert response.status_code == 200
    assert response.json() == {
        **SandboxConfig().to_json(),
        "fault_unavailable": 1.0,
        "revoked_keys": ["clk_test_gone"],
    }
    assert sb.config.revoked_keys == frozenset({"clk_test_gone"})
    assert client.get("/v1/consents").status_code == 503
    assert client.get("/__sandbox/config").json() == response.json()


@pytest.mark.parametrize(
    ("content", "status", "diagnostic"),
    [
        (b'{"latency": 5}', 422, "config: unknown sandbox setting(s): latency"),
        (
            b'{"rate_limit": -1}',
            422,
            "config: rate_limit must be at least 1 (or None for unlimited)",
        ),
        (b"[1]", 422, "body: must be a JSON object"),
        (b"{", 400, "body: malformed JSON"),
    ],
)
def test_bad_config_over_http_changes_nothing(
    sb: RunningSandbox, client: httpx.Client, content: bytes, status: int, diagnostic: str
) -> None:
    response = client.post("/__sandbox/config", content=content)
    assert response.status_code == status
    assert [i["diagnostics"] for i in response.json()["issues"]] == [diagnostic]
    assert sb.config == SandboxConfig()


def test_configure_refuses_unknown_fields(sb: RunningSandbox) -> None:
    with pytest.raises(ValueError, match="unknown sandbox setting"):
        sb.configure(latency=5)
    assert sb.config == SandboxConfig()


def test_the_handle_reads_the_final_state_after_stopping() -> None:
    with running_sandbox() as sandbox:
        httpx.post(f"{sandbox.base_url}/v1/consents", json=BODY, headers=KEY)
    assert len(sandbox.consents()) == 1
    assert sandbox.stats()["creates"] == 1
