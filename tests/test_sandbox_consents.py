"""The sandbox's consent endpoints over a real socket: create, read, patch, delete."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from importer.sandbox import RunningSandbox, SandboxConfig, running_sandbox

KEY = "clk_test_consents"
CONSENT = {
    "patientId": "pt_100",
    "scope": "treatment",
    "category": ["treatment-consent"],
    "dateTime": "2024-03-01T09:30:00Z",
}


def create(client: httpx.Client, **changes: Any) -> dict[str, Any]:
    response = client.post("/v1/consents", json={**CONSENT, **changes})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def assert_envelope(response: httpx.Response, status: int) -> None:
    """The success envelope: data plus meta with request id and rate-limit state."""
    body = response.json()
    assert set(body) == {"data", "meta"}
    meta = body["meta"]
    assert meta["requestId"] == response.headers["x-request-id"]
    assert re.fullmatch(r"req_[0-9a-f]+", meta["requestId"])
    assert meta["status"] == status
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", meta["timestamp"])
    assert meta["rateLimitTotal"] == int(response.headers["x-ratelimit-limit"])
    assert meta["rateLimitRemaining"] == int(response.headers["x-ratelimit-remaining"])
    assert meta["rateLimitReset"] == int(response.headers["x-ratelimit-reset"])


def test_create_answers_201_with_the_stored_consent(client: httpx.Client) -> None:
    response = client.post("/v1/consents", json=CONSENT)
    assert response.status_code == 201
    assert_envelope(response, 201)
    data = response.json()["data"]
    assert re.fullmatch(r"consent_[0-9a-f]+", data["id"])
    assert data == {"id": data["id"], **CONSENT, "status": "active"}  # status defaults


def test_create_keeps_every_documented_field(client: httpx.Client) -> None:
    full = {
        **CONSENT,
        "status": "draft",
        "performerId": "pt_100",
        "organizationId": "org_1",
        "policyUri": "https://example.org/policy",
        "policies": [{"authority": "https://example.org", "uri": "https://example.org/p"}],
        "policyRule": "hipaa",
        "sourceAttachment": {"contentType": "application/pdf", "title": "signed form"},
        "sourceReferenceId": "doc_1",
        "verification": [{"verified": True, "verifiedWith": "pt_100"}],
        "provision": {
            "type": "permit",
            "period": {"start": "2024-01-01", "end": "2025-01-01"},
            "actor": [{"role": "PRCP", "reference": "prac_1"}],
            "action": [{"code": "access"}],
            "provision": [{"type": "deny", "purpose": [{"code": "MARKT"}]}],
        },
    }
    data = create(client, **full)
    assert data == {"id": data["id"], **full}


def test_ids_are_unique(client: httpx.Client) -> None:
    ids = {create(client, patientId=f"pt_{i}")["id"] for i in range(20)}
    assert len(ids) == 20


def test_read_returns_the_consent(client: httpx.Client) -> None:
    created = create(client)
    response = client.get(f"/v1/consents/{created['id']}")
    assert response.status_code == 200
    assert_envelope(response, 200)
    assert response.json()["data"] == created


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"status": "inactive"}, {"status": "inactive"}),  # revoking a consent
        ({"policyUri": "https://example.org/v2"}, {"policyUri": "https://example.org/v2"}),
        ({"verification": {"verified": False}}, {"verification": {"verified": False}}),
        ({"provision": {"type": "deny"}}, {"provision": {"type": "deny"}}),
        ({}, {}),  # nothing to change is not an error
    ],
)
def test_patch_replaces_the_given_fields(
    client: httpx.Client, change: dict[str, Any], expected: dict[str, Any]
) -> None:
    created = create(client, provision={"type": "permit"}, policyUri="https://example.org/v1")
    response = client.patch(f"/v1/consents/{created['id']}", json=change)
    assert response.status_code == 200
    assert_envelope(response, 200)
    assert response.json()["data"] == {**created, **expected}
    assert client.get(f"/v1/consents/{created['id']}").json()["data"] == {**created, **expected}


def test_patch_with_null_removes_an_optional_field(client: httpx.Client) -> None:
    created = create(client, policyUri="https://example.org/v1")
    response = client.patch(f"/v1/consents/{created['id']}", json={"policyUri": None})
    assert response.status_code == 200
    assert "policyUri" not in response.json()["data"]


@pytest.mark.parametrize(
    ("change", "diagnostic"),
    [
        ({"scope": "research"}, "scope: cannot be changed with PATCH"),
        ({"patientId": "pt_2"}, "patientId: cannot be changed with PATCH"),
        (
            {"status": "revoked"},
            "status: must be one of draft, proposed, active, rejected, inactive",
        ),
        ({"status": None}, "status: must be one of draft, proposed, active, rejected, inactive"),
        ({"verification": {"verified": "yes"}}, "verification.verified: must be true or false"),
        ({"provision": {"type": "maybe"}}, "provision.type: must be one of permit, deny"),
    ],
)
def test_patch_refuses_other_fields_and_bad_values(
    client: httpx.Client, change: dict[str, Any], diagnostic: str
) -> None:
    created = create(client)
    response = client.patch(f"/v1/consents/{created['id']}", json=change)
    assert response.status_code == 422
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert [i["diagnostics"] for i in response.json()["issues"]] == [diagnostic]
    assert client.get(f"/v1/consents/{created['id']}").json()["data"] == created  # unchanged


def test_delete_removes_the_consent(client: httpx.Client, server: RunningSandbox) -> None:
    created = create(client)
    response = client.delete(f"/v1/consents/{created['id']}")
    assert response.status_code == 200
    assert_envelope(response, 200)
    assert response.json()["data"] == {"id": created["id"], "deleted": True}
    assert client.get(f"/v1/consents/{created['id']}").status_code == 404
    assert server.consents() == []


@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", None), ("PATCH", {"status": "inactive"}), ("DELETE", None)],
)
def test_unknown_id_is_404_not_found(
    client: httpx.Client, method: str, body: dict[str, Any] | None
) -> None:
    response = client.request(method, "/v1/consents/consent_nope", json=body)
    assert response.status_code == 404
    error = response.json()
    assert error["code"] == "NOT_FOUND"
    assert error["error"] == "Not Found"
    assert error["requestId"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/patients", 404, "NOT_FOUND"),  # no such /v1 route
        ("PUT", "/v1/consents/consent_1", 405, "METHOD_NOT_ALLOWED"),
        ("DELETE", "/v1/consents", 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/nowhere", 404, "NOT_FOUND"),  # outside /v1 too
    ],
)
def test_unknown_routes_answer_json_errors(
    client: httpx.Client, method: str, path: str, status: int, code: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize(
    ("content", "diagnostic"),
    [
        (b"{not json", "body: malformed JSON"),
        (b"", "body: malformed JSON"),
        (b'{"patientId": NaN}', "body: malformed JSON"),  # Python accepts NaN; JSON does not
        (b"\xff\xfe\x00", "body: malformed JSON"),
    ],
)
def test_malformed_json_is_400(client: httpx.Client, content: bytes, diagnostic: str) -> None:
    response = client.post(
        "/v1/consents", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "BAD_REQUEST"
    assert [i["diagnostics"] for i in response.json()["issues"]] == [diagnostic]


def test_patch_with_malformed_json_is_400(client: httpx.Client) -> None:
    created = create(client)
    response = client.patch(f"/v1/consents/{created['id']}", content=b"[")
    assert response.status_code == 400


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_1_mib_is_413(client: httpx.Client, chunked: bool) -> None:
    big = b'{"patientId": "' + b"x" * (1024 * 1024) + b'"}'
    # A generator body has no length, so httpx sends it chunked: the server must count.
    content: Any = iter([big[:1000], big[1000:]]) if chunked else big
    response = client.post("/v1/consents", content=content)
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert response.json()["error"] == "Payload Too Large"


def test_body_just_under_1_mib_is_read(client: httpx.Client) -> None:
    padding = "x" * (1024 * 1024 - 200)
    response = client.post("/v1/consents", json={**CONSENT, "policyRule": padding})
    assert response.status_code == 201


def test_every_response_has_a_request_id(client: httpx.Client) -> None:
    responses = [
        client.get("/health"),
        client.get("/__sandbox/stats"),
        client.post("/v1/consents", json=CONSENT),
        client.post("/v1/consents", json={}),
        client.get("/v1/consents/consent_nope"),
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(re.fullmatch(r"req_[0-9a-f]{16}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_health_needs_no_key(server: RunningSandbox) -> None:
    response = httpx.get(f"{server.base_url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_known_patients_refuses_others() -> None:
    with running_sandbox(SandboxConfig(known_patients=frozenset({"pt_100"}))) as sb:
        with httpx.Client(base_url=sb.base_url, headers={"x-api-key": KEY}) as client:
            assert client.post("/v1/consents", json=CONSENT).status_code == 201
            response = client.post("/v1/consents", json={**CONSENT, "patientId": "pt_999"})
        assert response.status_code == 422
        assert [i["diagnostics"] for i in response.json()["issues"]] == [
            "patientId: unknown patient"
        ]
        assert "pt_999" not in response.text
