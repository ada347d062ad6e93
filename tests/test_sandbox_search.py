"""`GET /v1/consents`: filters, count, cursor pages, and refused parameters."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from importer.sandbox import RunningSandbox, running_sandbox

KEY = "clk_test_search"

# (patientId, status, dateTime) of the consents every test searches, in creation order.
ROWS = [
    ("pt_a", "active", "2024-01-10T10:00:00Z"),
    ("pt_a", "inactive", "2024-01-20T23:30:00-05:00"),  # 2024-01-21 in UTC
    ("pt_a", "active", None),  # no dateTime: outside every date range
    ("pt_b", "active", "2024-01-21T00:00:00+00:00"),
    ("pt_b", "draft", "2024-02-01T08:00:00+02:00"),  # 2024-02-01 06:00 UTC
]


@pytest.fixture
def server(server: RunningSandbox) -> RunningSandbox:
    """The shared sandbox holding ROWS."""
    with httpx.Client(base_url=server.base_url, headers={"x-api-key": KEY}) as client:
        for patient, status, when in ROWS:
            body: dict[str, Any] = {"patientId": patient, "scope": "treatment"}
            body |= {"category": "treatment-consent", "status": status}
            if when:
                body["dateTime"] = when
            assert client.post("/v1/consents", json=body).status_code == 201
    return server


def rows_of(response: httpx.Response) -> list[int]:
    """Which of ROWS a page holds, by index."""
    assert response.status_code == 200, response.text
    keys = [(c["patientId"], c["status"], c.get("dateTime")) for c in response.json()["data"]]
    return [ROWS.index(key) for key in keys]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [0, 1, 2, 3, 4]),  # oldest first
        ({"patientId": "pt_a"}, [0, 1, 2]),
        ({"patientId": "pt_nobody"}, []),
        ({"status": "active"}, [0, 2, 3]),
        ({"patientId": "pt_a", "status": "active"}, [0, 2]),
        ({"dateFrom": "2024-01-21"}, [1, 3, 4]),  # row 1 is the 21st in UTC
        ({"dateTo": "2024-01-20"}, [0]),  # inclusive, and row 1 is not the 20th in UTC
        ({"dateFrom": "2024-01-21", "dateTo": "2024-01-21"}, [1, 3]),  # one whole day
        ({"patientId": "pt_b", "dateFrom": "2024-02-01"}, [4]),
        ({"patientId": "", "status": ""}, [0, 1, 2, 3, 4]),  # empty means absent
    ],
)
def test_filters(client: httpx.Client, params: dict[str, str], expected: list[int]) -> None:
    response = client.get("/v1/consents", params=params)
    assert rows_of(response) == expected
    meta = response.json()["meta"]
    assert meta["nextCursor"] is None
    assert meta["requestId"] == response.headers["x-request-id"]


def test_cursor_pages_through_everything_once(client: httpx.Client) -> None:
    seen: list[int] = []
    pages = 0
    params: dict[str, Any] = {"count": 2}
    while True:
        response = client.get("/v1/consents", params=params)
        seen += rows_of(response)
        pages += 1
        cursor = response.json()["meta"]["nextCursor"]
        if cursor is None:
            break
        params["cursor"] = cursor
    assert seen == [0, 1, 2, 3, 4]
    assert pages == 3


def test_exactly_full_last_page_has_no_cursor(client: httpx.Client) -> None:
    response = client.get("/v1/consents", params={"patientId": "pt_a", "count": 3})
    assert rows_of(response) == [0, 1, 2]
    assert response.json()["meta"]["nextCursor"] is None


def test_cursor_keeps_the_filters_of_each_request(client: httpx.Client) -> None:
    first = client.get("/v1/consents", params={"status": "active", "count": 1})
    assert rows_of(first) == [0]
    cursor = first.json()["meta"]["nextCursor"]
    rest = client.get("/v1/consents", params={"status": "active", "cursor": cursor})
    assert rows_of(rest) == [2, 3]


def test_count_defaults_to_20() -> None:
    with (
        running_sandbox() as sb,
        httpx.Client(base_url=sb.base_url, headers={"x-api-key": KEY}) as client,
    ):
        body = {"patientId": "pt_x", "scope": "research", "category": "research-participation"}
        for _ in range(21):
            client.post("/v1/consents", json=body)
        page = client.get("/v1/consents").json()
        assert len(page["data"]) == 20
        assert page["meta"]["nextCursor"] is not None
        assert len(client.get("/v1/consents", params={"count": 100}).json()["data"]) == 21


@pytest.mark.parametrize(
    ("params", "diagnostic"),
    [
        ({"count": "101"}, "count: must be between 1 and 100"),
        ({"count": "0"}, "count: must be between 1 and 100"),
        ({"count": "ten"}, "count: must be a whole number"),
        ({"count": "-1"}, "count: must be a whole number"),
        (
            {"status": "revoked"},
            "status: must be one of draft, proposed, active, rejected, inactive",
        ),
        ({"dateFrom": "2024-13-01"}, "dateFrom: must be a date YYYY-MM-DD"),
        ({"dateTo": "2024-01-01T00:00:00Z"}, "dateTo: must be a date YYYY-MM-DD"),
        ({"dateFrom": "2024-02-01", "dateTo": "2024-01-01"}, "dateFrom: must not be after dateTo"),
        ({"cursor": "bm9wZQ"}, "cursor: not a cursor this server handed out"),
        ({"cursor": "%%%"}, "cursor: not a cursor this server handed out"),
        # A misspelt filter would otherwise return every patient's consents.
        ({"patient_id": "pt_a"}, "patient_id: unknown parameter"),
        ([("patientId", "pt_a"), ("patientId", "pt_b")], "patientId: given more than once"),
    ],
)
def test_bad_parameters_are_400(client: httpx.Client, params: Any, diagnostic: str) -> None:
    response = client.get("/v1/consents", params=params)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "BAD_REQUEST"
    assert error["error"] == "Bad Request"
    assert [i["diagnostics"] for i in error["issues"]] == [diagnostic]


def test_deleted_and_patched_consents_search_as_they_are_now() -> None:
    with (
        running_sandbox() as sb,
        httpx.Client(base_url=sb.base_url, headers={"x-api-key": KEY}) as client,
    ):
        body = {"patientId": "pt_z", "scope": "treatment", "category": "treatment-consent"}
        first = client.post("/v1/consents", json=body).json()["data"]["id"]
        second = client.post("/v1/consents", json=body).json()["data"]["id"]
        client.delete(f"/v1/consents/{first}")
        client.patch(f"/v1/consents/{second}", json={"status": "inactive"})
        found = client.get("/v1/consents", params={"patientId": "pt_z"}).json()["data"]
        assert [(c["id"], c["status"]) for c in found] == [(second, "inactive")]
        assert client.get("/v1/consents", params={"status": "active"}).json()["data"] == []
