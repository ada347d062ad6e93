"""ClinikClient against httpx.MockTransport scripts: envelope, errors, transport, checks."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import httpx
import pytest

from importer import __version__
from importer._errors import (
    AuthError,
    ClientRequestError,
    ConfigError,
    NoResponseError,
    RateLimitedError,
    ServerError,
)
from importer.api._client import (
    ClinikClient,
    RateLimitInfo,
    check_api_key,
    check_base_url,
    make_http_client,
    mask_key,
    parse_rate,
    proxy_for,
)
from importer.api._limiter import Limiter

KEY = "clk_test_s3cretKEYa1b2"
BASE = "https://api.clinikapi.test"
# A body value that must never appear in an error message (it stands for PHI).
SECRET_VALUE = "pt_SECRETVALUE42"

Handler = Callable[[httpx.Request], Any]


@asynccontextmanager
async def client_for(handler: Handler, *, limiter: Any = None) -> AsyncIterator[ClinikClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        yield ClinikClient(http, base_url=BASE, api_key=KEY, limiter=limiter)


def envelope(data: Any, **meta: Any) -> dict[str, Any]:
    return {"data": data, "meta": {"requestId": "req_meta", "status": 200, **meta}}


def error_body(code: str, *diagnostics: str, request_id: str = "req_1") -> dict[str, Any]:
    return {
        "error": "Some Error",
        "code": code,
        "requestId": request_id,
        "issues": [{"severity": "error", "code": "invalid", "diagnostics": d} for d in diagnostics],
    }


RATE_HEADERS = {
    "X-RateLimit-Limit": "500",
    "X-RateLimit-Remaining": "499",
    "X-RateLimit-Reset": "3600",
}


class RecordingLimiter:
    """Duck-typed Limiter that records what the client tells it."""

    def __init__(self) -> None:
        self.observed: list[RateLimitInfo] = []
        self.paused: list[float] = []
        self.inside = 0
        self.entered = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.inside += 1
        self.entered += 1
        try:
            yield
        finally:
            self.inside -= 1

    def observe(self, rate: RateLimitInfo) -> None:
        assert self.inside == 1, "observe() must be called inside the request's slot"
        self.observed.append(rate)

    def pause(self, seconds: float) -> None:
        assert self.inside == 1
        self.paused.append(seconds)


# -- success and the envelope ---------------------------------------------------------------


@pytest.mark.anyio
async def test_create_parses_envelope_and_sends_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            201,
            json=envelope({"id": "consent_1", "status": "active"}, requestId="req_abc"),
            headers={**RATE_HEADERS, "x-request-id": "req_abc"},
        )

    async with client_for(handler) as client:
        response = await client.create_consent({"patientId": "pt_1", "scope": "treatment"})

    assert response.status == 201
    assert response.data == {"id": "consent_1", "status": "active"}
    assert response.meta["requestId"] == "req_abc"
    assert response.request_id == "req_abc"
    assert response.rate == RateLimitInfo(limit=500, remaining=499, reset_s=3600.0)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/v1/consents"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["accept"] == "application/fhir+json"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"consent-import/{__version__}"
    assert json.loads(request.content) == {"patientId": "pt_1", "scope": "treatment"}
    assert client.stats.requests == 1
    assert client.stats.by_status == {201: 1}


@pytest.mark.anyio
async def test_rate_falls_back_to_meta_and_request_id_to_meta() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = envelope(
            {"id": "consent_1"},
            requestId="req_m",
            rateLimitTotal=100,
            rateLimitRemaining=7,
            rateLimitReset=2,
        )
        return httpx.Response(200, json=body)

    async with client_for(handler) as client:
        response = await client.get_consent("consent_1")

    assert response.rate == RateLimitInfo(limit=100, remaining=7, reset_s=2.0)
    assert response.request_id == "req_m"


class _In:
    """An instant `seconds` from when the test runs (not from collection, which can be
    minutes earlier in a full run): epoch seconds, ISO 8601 or an HTTP date."""

    def __init__(self, seconds: float, form: str) -> None:
        self.seconds, self.form = seconds, form

    def __str__(self) -> str:
        instant = datetime.now(UTC) + timedelta(seconds=self.seconds)
        if self.form == "epoch":
            return str(int(instant.timestamp()))
        return instant.isoformat() if self.form == "iso" else format_datetime(instant, usegmt=True)


def _now(values: dict[str, Any]) -> dict[str, Any]:
    """Header or meta values with every `_In` made an instant now."""
    return {k: str(v) if isinstance(v, _In) else v for k, v in values.items()}


@pytest.mark.parametrize(
    ("headers", "meta", "expected"),
    [
        (
            {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "5"},
            {},
            (10, 3, 5, 5),
        ),
        # a header missing: its meta twin stands in
        (
            {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "3"},
            {"rateLimitReset": 4},
            (10, 3, 4, 4),
        ),
        (
            {},
            {"rateLimitTotal": "9", "rateLimitRemaining": "0", "rateLimitReset": "1.5"},
            (9, 0, 1.5, 1.5),
        ),
        # a reset given as the epoch instant or an ISO instant rather than a delay
        (
            {
                "X-RateLimit-Limit": "10",
                "X-RateLimit-Remaining": "3",
                "X-RateLimit-Reset": _In(60, "epoch"),
            },
            {},
            (10, 3, 55, 61),
        ),
        (
            {},
            {"rateLimitTotal": 9, "rateLimitRemaining": 1, "rateLimitReset": _In(60, "iso")},
            (9, 1, 55, 61),
        ),
        (
            {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "soon"},
            {},
            None,
        ),
        ({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "5"}, {}, None),
    ],
)
def test_parse_rate(
    headers: dict[str, Any], meta: dict[str, Any], expected: tuple[int, int, float, float] | None
) -> None:
    rate = parse_rate(httpx.Headers(_now(headers)), _now(meta))
    if expected is None:
        assert rate is None
        return
    assert rate is not None
    limit, remaining, low, high = expected
    assert (rate.limit, rate.remaining) == (limit, remaining)
    assert low <= rate.reset_s <= high


@pytest.mark.anyio
async def test_no_rate_information_gives_none() -> None:
    async with client_for(lambda r: httpx.Response(200, json=envelope({}))) as client:
        response = await client.get_consent("consent_1")
    assert response.rate is None


@pytest.mark.parametrize(
    ("method", "call", "path"),
    [
        ("GET", lambda c: c.get_consent("consent_1"), "/v1/consents/consent_1"),
        (
            "PATCH",
            lambda c: c.patch_consent("consent_1", {"status": "inactive"}),
            "/v1/consents/consent_1",
        ),
        # an odd id is quoted whole and cannot reach another path
        ("GET", lambda c: c.get_consent("../patients/x"), "/v1/consents/..%2Fpatients%2Fx"),
    ],
)
@pytest.mark.anyio
async def test_single_consent_methods(method: str, call: Any, path: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=envelope({"id": "consent_1"}))

    async with client_for(handler) as client:
        response = await call(client)
    assert response.data == {"id": "consent_1"}
    assert seen[0].method == method
    assert seen[0].url.raw_path.decode() == path


@pytest.mark.anyio
async def test_an_answer_with_an_empty_body() -> None:
    async with client_for(lambda r: httpx.Response(204)) as client:
        response = await client.patch_consent("consent_1", {"status": "inactive"})
    assert (response.status, response.data, response.meta) == (204, None, {})


@pytest.mark.anyio
async def test_unreadable_success_body_is_a_server_error() -> None:
    # A 201 we cannot read may still have stored the consent: the pool must look it up.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, text="<html>ok</html>", headers={"content-type": "text/html"})

    async with client_for(handler) as client:
        with pytest.raises(ServerError) as info:
            await client.create_consent({"patientId": SECRET_VALUE})
    assert "text/html" in str(info.value)
    assert "<html>" not in str(info.value)


# -- error responses ------------------------------------------------------------------------

ERROR_CASES = [
    # status, body, exception, code, issues
    (400, None, ClientRequestError, "", []),
    (401, error_body("INVALID_KEY"), AuthError, "INVALID_KEY", []),
    (401, error_body("KEY_REVOKED"), AuthError, "KEY_REVOKED", []),
    (403, error_body("FORBIDDEN"), AuthError, "FORBIDDEN", []),
    (404, error_body("NOT_FOUND"), ClientRequestError, "NOT_FOUND", []),
    (409, error_body("CONFLICT"), ClientRequestError, "CONFLICT", []),
    (
        422,
        error_body("VALIDATION_ERROR", "patientId: Required", "scope: Invalid enum value"),
        ClientRequestError,
        "VALIDATION_ERROR",
        ["patientId: Required", "scope: Invalid enum value"],
    ),
    (429, error_body("RATE_LIMITED"), RateLimitedError, "RATE_LIMITED", []),
    (500, error_body("INTERNAL_ERROR"), ServerError, "INTERNAL_ERROR", []),
    (503, None, ServerError, "", []),
]


@pytest.mark.parametrize(("status", "body", "exc_type", "code", "issues"), ERROR_CASES)
@pytest.mark.anyio
async def test_status_maps_to_exception(
    status: int, body: Any, exc_type: type[Exception], code: str, issues: list[str]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status)
        return httpx.Response(status, json=body)

    async with client_for(handler) as client:
        with pytest.raises(exc_type) as info:
            await client.create_consent({"patientId": SECRET_VALUE, "scope": "treatment"})

    exc = info.value
    assert type(exc) is exc_type
    assert exc.status == status  # type: ignore[attr-defined]
    assert exc.code == code  # type: ignore[attr-defined]
    assert exc.issues == issues  # type: ignore[attr-defined]
    assert exc.request_id == ("req_1" if body else "")  # type: ignore[attr-defined]
    message = str(exc)
    assert message.startswith(f"POST /v1/consents: {status} ")
    assert SECRET_VALUE not in message
    assert KEY not in message
    assert client.stats.by_status == {status: 1}


@pytest.mark.anyio
async def test_validation_message_format() -> None:
    body = error_body("VALIDATION_ERROR", "patientId: Required", request_id="req_9")

    async with client_for(lambda r: httpx.Response(422, json=body)) as client:
        with pytest.raises(ClientRequestError) as info:
            await client.create_consent({"patientId": SECRET_VALUE})
    assert str(info.value) == "POST /v1/consents: 422 VALIDATION_ERROR (req_9): patientId: Required"


@pytest.mark.anyio
async def test_auth_error_shows_only_masked_key() -> None:
    async with client_for(lambda r: httpx.Response(401, json=error_body("INVALID_KEY"))) as client:
        with pytest.raises(AuthError) as info:
            await client.get_consent("consent_1")
    assert "clk_test_…a1b2" in str(info.value)
    assert KEY not in str(info.value)


@pytest.mark.anyio
async def test_request_id_header_wins_for_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json=error_body("NOT_FOUND"), headers={"x-request-id": "req_h"})

    async with client_for(handler) as client:
        with pytest.raises(ClientRequestError) as info:
            await client.get_consent("consent_1")
    assert info.value.request_id == "req_h"
    assert "(req_h)" in str(info.value)


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({"Retry-After": "7"}, 7, 7),
        ({"Retry-After": "2.5"}, 2.5, 2.5),
        # an HTTP date 30 s ahead (whole seconds, and the clock moves while the test runs)
        ({"Retry-After": _In(30, "http")}, 25, 31),
        # no Retry-After: the window reset says how long
        (
            {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "12"},
            12,
            12,
        ),
        # Retry-After wins over the reset
        (
            {
                "Retry-After": "3",
                "X-RateLimit-Limit": "1",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": "9",
            },
            3,
            3,
        ),
        # neither: a short default pause
        ({}, 1, 1),
        # garbage Retry-After falls back like an absent one
        ({"Retry-After": "soon"}, 1, 1),
    ],
)
@pytest.mark.anyio
async def test_retry_after(headers: dict[str, Any], low: float, high: float) -> None:
    limiter = RecordingLimiter()
    headers = _now(headers)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json=error_body("RATE_LIMITED"), headers=headers)

    async with client_for(handler, limiter=limiter) as client:
        with pytest.raises(RateLimitedError) as info:
            await client.create_consent({"patientId": "pt_1"})

    retry_after = info.value.retry_after
    assert retry_after is not None
    assert low <= retry_after <= high
    # Every worker pauses, not only the one that got the 429.
    assert limiter.paused == [retry_after]
    assert client.stats.rate_limited == 1


@pytest.mark.anyio
async def test_every_response_reaches_the_limiter_inside_a_slot() -> None:
    limiter = RecordingLimiter()
    statuses = iter([201, 500, 422])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(statuses), json=envelope({"id": "c"}), headers=RATE_HEADERS)

    async with client_for(handler, limiter=limiter) as client:
        await client.create_consent({})
        with pytest.raises(ServerError):
            await client.create_consent({})
        with pytest.raises(ClientRequestError):
            await client.create_consent({})

    assert limiter.entered == 3
    assert len(limiter.observed) == 3
    assert limiter.paused == []
    assert client.stats.by_status == {201: 1, 500: 1, 422: 1}


@pytest.mark.anyio
async def test_non_json_error_body_is_described_not_echoed() -> None:
    html = "<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text=html, headers={"content-type": "text/html; charset=utf-8"})

    async with client_for(handler) as client:
        with pytest.raises(ServerError) as info:
            await client.create_consent({"patientId": SECRET_VALUE})
    message = str(info.value)
    assert message.startswith("POST /v1/consents: 502 Bad Gateway, a non-JSON body (text/html)")
    assert "nginx" not in message
    assert info.value.code == ""
    assert info.value.issues == []


# -- transport failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc_type", "sent"),
    [
        (httpx.ConnectError, False),  # refused: nothing left this machine
        (httpx.ConnectTimeout, False),
        (httpx.PoolTimeout, False),  # waited for a connection, never sent
        (httpx.ProxyError, False),
        (httpx.ReadTimeout, True),  # sent; the answer did not come in time
        (httpx.WriteTimeout, True),  # part of the request may have gone
        (httpx.WriteError, True),
        (httpx.ReadError, True),  # connection dropped after sending
        (httpx.RemoteProtocolError, True),  # e.g. server closed without a response
    ],
)
@pytest.mark.anyio
async def test_transport_errors(exc_type: type[httpx.RequestError], sent: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("boom", request=request)

    limiter = RecordingLimiter()
    async with client_for(handler, limiter=limiter) as client:
        with pytest.raises(NoResponseError) as info:
            await client.create_consent({"patientId": SECRET_VALUE})
    assert info.value.sent is sent
    assert isinstance(info.value.__cause__, exc_type)
    assert str(info.value).startswith("POST /v1/consents: ")
    assert SECRET_VALUE not in str(info.value)
    assert client.stats.transport_errors == 1
    assert limiter.observed == []


# -- search and pagination ------------------------------------------------------------------


def _consents(*ids: str) -> list[dict[str, Any]]:
    return [{"id": i, "patientId": "pt_1"} for i in ids]


def _meta_cursor_pages(request: httpx.Request) -> httpx.Response:
    cursor = request.url.params.get("cursor")
    pages = {
        None: (_consents("c1", "c2"), "p2"),
        "p2": (_consents("c3"), "p3"),
        "p3": (_consents("c4"), None),
    }
    data, next_cursor = pages[cursor]
    return httpx.Response(200, json=envelope(data, nextCursor=next_cursor))


def _data_cursor_pages(request: httpx.Request) -> httpx.Response:
    cursor = request.url.params.get("cursor")
    if cursor is None:
        data = {"data": _consents("c1", "c2"), "cursor": "p2", "hasMore": True}
    elif cursor == "p2":
        data = {"data": _consents("c3"), "cursor": "p3", "hasMore": True}
    else:
        # a cursor with hasMore false means the end
        data = {"data": _consents("c4"), "cursor": "p4", "hasMore": False}
    return httpx.Response(200, json=envelope(data))


def _items_shape_pages(request: httpx.Request) -> httpx.Response:
    cursor = request.url.params.get("cursor")
    if cursor is None:
        data = {"items": _consents("c1", "c2", "c3"), "cursor": "next", "hasMore": True}
    else:
        data = {"items": _consents("c4"), "hasMore": False}
    return httpx.Response(200, json=envelope(data))


def _fhir_bundle_pages(request: httpx.Request) -> httpx.Response:
    cursor = request.url.params.get("cursor")
    ids = ("c1", "c2", "c3") if cursor is None else ("c4",)
    data = {"resourceType": "Bundle", "entry": [{"resource": c} for c in _consents(*ids)]}
    return httpx.Response(200, json=envelope(data, nextCursor=None if cursor else "n"))


@pytest.mark.parametrize(
    "pages",
    [_meta_cursor_pages, _data_cursor_pages, _items_shape_pages, _fhir_bundle_pages],
)
@pytest.mark.anyio
async def test_search_follows_every_cursor_shape(pages: Handler) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        response: httpx.Response = pages(request)
        return response

    async with client_for(handler) as client:
        found = await client.search_consents(patient_id="pt_1", date_from="2024-01-01")

    assert [c["id"] for c in found] == ["c1", "c2", "c3", "c4"]
    first = seen[0].url.params
    assert first["patientId"] == "pt_1"
    assert first["dateFrom"] == "2024-01-01"
    assert first["count"] == "100"
    assert "cursor" not in first
    assert all(r.url.params["patientId"] == "pt_1" for r in seen)


@pytest.mark.anyio
async def test_search_passes_filters_and_caps_count() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=envelope([]))

    async with client_for(handler) as client:
        found = await client.search_consents(
            patient_id="pt_1",
            date_from="2024-01-01",
            date_to="2024-01-02",
            status="active",
            count=500,
        )
    assert found == []
    assert dict(seen[0].url.params) == {
        "patientId": "pt_1",
        "count": "100",
        "dateFrom": "2024-01-01",
        "dateTo": "2024-01-02",
        "status": "active",
    }
    assert seen[0].url.path == "/v1/consents"


@pytest.mark.parametrize(
    "page",
    [
        # a cursor that comes back again would loop forever
        envelope(_consents("c1"), nextCursor="same"),
        # hasMore without a cursor cannot be followed
        envelope({"data": _consents("c1"), "hasMore": True}),
        # no list anywhere: unreadable must not pass for "not found"
        envelope({"unexpected": 1}),
    ],
)
@pytest.mark.anyio
async def test_search_refuses_pages_it_cannot_complete(page: dict[str, Any]) -> None:
    async with client_for(lambda r: httpx.Response(200, json=page)) as client:
        with pytest.raises(ServerError) as info:
            await client.search_consents(patient_id="pt_SECRET")
    # The label is the path only: the patient id in the query stays out of messages.
    assert "pt_SECRET" not in str(info.value)


# -- with the real limiter ------------------------------------------------------------------


@pytest.mark.anyio
async def test_requests_go_through_the_real_limiter() -> None:
    limiter = Limiter(concurrency=2)
    inside = 0
    most = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await anyio.sleep(0.01)
        inside -= 1
        return httpx.Response(201, json=envelope({"id": "c"}), headers=RATE_HEADERS)

    async with client_for(handler, limiter=limiter) as client, anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(client.create_consent, {})

    assert most == 2
    assert limiter.max_in_flight == 2
    assert client.stats.requests == 10
    # every answer was matched to its request: nothing counted as unanswered
    assert limiter.budget() == 499


# -- key and base URL checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("clk_live_abc123", True),
        ("clk_test_a1b2c3d4e5", True),
        ("  clk_test_padded1234  ", True),  # pasted with blanks: stripped
        (None, False),
        ("", False),
        ("   ", False),
        ("clk_test_", False),  # empty rest
        ("clk_prod_abc123", False),  # unknown environment
        ("CLK_TEST_abc123", False),
        ("sk_test_abc123456789", False),  # another vendor's key
        ("clk_test_abc 123", False),  # a space cannot go in a header
        ("clk_test_abc\n123", False),
    ],
)
def test_check_api_key(key: str | None, ok: bool) -> None:
    if ok:
        assert key is not None
        assert check_api_key(key) == key.strip()
        return
    with pytest.raises(ConfigError) as info:
        check_api_key(key)
    # (a bare prefix holds nothing secret to hide)
    if key and len(key.strip()) > len("clk_test_"):
        assert key.strip() not in str(info.value)


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        ("clk_test_abcdefa1b2", "clk_test_…a1b2"),
        ("clk_live_0123456789", "clk_live_…6789"),
        ("clk_test_short", "clk_test_…"),  # too short to spare 4 characters
        ("sk_test_abcdef123456", "…3456"),  # unknown prefix: only the tail
        ("abc", "…"),
    ],
)
def test_mask_key(key: str, masked: str) -> None:
    assert mask_key(key) == masked
    assert key not in mask_key(key)


def test_client_repr_hides_the_key() -> None:
    client = ClinikClient(httpx.AsyncClient(), base_url=BASE, api_key=KEY)
    assert KEY not in repr(client)
    assert "clk_test_…a1b2" in repr(client)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.clinikapi.com", "https://api.clinikapi.com"),
        ("https://api.clinikapi.com/", "https://api.clinikapi.com"),
        ("https://api.clinikapi.com/v1/", "https://api.clinikapi.com"),  # /v1 is ours to add
        ("https://proxy.example.org:8443/clinik/", "https://proxy.example.org:8443/clinik"),
        ("HTTPS://api.clinikapi.com", "https://api.clinikapi.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://127.3.4.5:8080/", "http://127.3.4.5:8080"),  # all of 127.0.0.0/8 is loopback
        ("http://localhost:8000", "http://localhost:8000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("http://example.com", None),  # health data in clear text over the network
        ("http://10.0.0.5", None),
        ("http://localhost.evil.com", None),
        ("ftp://api.clinikapi.com", None),
        ("api.clinikapi.com", None),  # no scheme
        ("https://", None),
        ("https://user:pw@api.clinikapi.com", None),
        ("https://api.clinikapi.com/?x=1", None),
        ("https://api.clinikapi.com:99999", None),
    ],
)
def test_check_base_url(url: str, expected: str | None) -> None:
    if expected is not None:
        assert check_base_url(url) == expected
        return
    with pytest.raises(ConfigError) as info:
        check_base_url(url)
    assert "pw" not in str(info.value)


@pytest.mark.anyio
async def test_make_http_client() -> None:
    async with make_http_client(
        base_url="https://api.clinikapi.com", concurrency=4, timeout_s=12.0, connect_timeout_s=3.0
    ) as http:
        assert http.timeout.connect == 3.0
        assert http.timeout.read == 12.0
        assert http.follow_redirects is False


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({}, "https://api.clinikapi.com", None),
        ({"HTTPS_PROXY": "http://px:3128"}, "https://api.clinikapi.com", "http://px:3128"),
        ({"https_proxy": "http://px:3128"}, "https://api.clinikapi.com", "http://px:3128"),
        ({"ALL_PROXY": "http://px:1"}, "https://api.clinikapi.com", "http://px:1"),
        ({"HTTP_PROXY": "http://px:3128"}, "https://api.clinikapi.com", None),  # other scheme
        (
            {"HTTPS_PROXY": "http://px:3128", "NO_PROXY": "clinikapi.com"},
            "https://api.clinikapi.com",
            None,
        ),
        (
            {"HTTPS_PROXY": "http://px:3128", "NO_PROXY": "other.example"},
            "https://api.clinikapi.com",
            "http://px:3128",
        ),
        # the sandbox on loopback never goes through a proxy
        ({"HTTP_PROXY": "http://px:3128"}, "http://127.0.0.1:8000", None),
        ({"HTTP_PROXY": "http://px:3128"}, "http://localhost:8000", None),
    ],
)
def test_proxy_for(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, expected: str | None
) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxy_for(url) == expected


@pytest.mark.anyio
async def test_a_run_behind_a_proxy_goes_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY is honoured: the request reaches the proxy as a CONNECT, not the host."""
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for name in ("NO_PROXY", "no_proxy", "https_proxy", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    async with (
        server,
        make_http_client(base_url="https://api.clinikapi.com", concurrency=2, timeout_s=30) as http,
    ):
        client = ClinikClient(http, base_url="https://api.clinikapi.com", api_key=KEY)
        with pytest.raises(NoResponseError) as info:
            await client.create_consent({"patientId": "pt_1"})
    [request] = seen
    assert request.startswith(b"CONNECT api.clinikapi.com:443 HTTP/1.1")
    assert info.value.sent is False  # refused by the proxy: the API never saw it


@pytest.mark.anyio
async def test_no_patient_id_reaches_the_logs_even_with_info_on_for_everything(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: what logging.basicConfig would do
    monkeypatch.setattr(logging.getLogger("httpx"), "level", logging.NOTSET)
    handler = lambda r: httpx.Response(200, json=envelope([]))  # noqa: E731
    # Without our client, httpx logs the URL, query and all: the capture sees it.
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        await http.get(f"{BASE}/v1/consents", params={"patientId": "pt_control_1"})
    assert "pt_control_1" in caplog.text
    async with client_for(handler) as client:
        await client.search_consents(patient_id="pt_secret_4417", date_from="2024-01-01")
    assert "pt_secret_4417" not in caplog.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("42", 42.0),
        ("007", 7.0),
        (" 5 ", 5.0),
        ("2.5", 2.5),
        ("1" * 400, None),  # too big for a float: not finite
        ("²", None),  # a digit to isdigit(), not to float()
        ("٣", 3.0),  # an Arabic-Indic 3: float() reads it
        ("", None),
        ("nan", None),
        (True, None),
        (7, 7.0),
    ],
)
def test_a_rate_limit_number(value: object, expected: float | None) -> None:
    from importer.api._client import _number

    assert _number(value) == expected


@pytest.mark.parametrize(
    "content",
    [
        b'{"data":{"id":"consent_1"},"meta":{"requestId":"req_1","rateLimitRemaining":9}}',
        b'{"a":1,"a":2}',  # a repeated name: the last wins
        b'{"a":123456789012345678901234567890,"b":1.0000000000000002,"c":-0.0,"d":1e400}',
        b'{"a":NaN,"b":Infinity}',  # json.loads reads them; so must we
        b'{"a":"\\u00e9\\ud83d\\ude00","b":"\xc3\xa9"}',
        b"\t[1,2]\r\n",
        b'"text"',
        b"null",
        # Refused by pydantic_core's parser, read by json.loads: must read the same
        b'\xef\xbb\xbf{"a":1}',  # a UTF-8 BOM
        '{"a":1}'.encode("utf-16"),  # UTF-16 with its BOM
        b'{"a":"\\ud800"}',  # a lone surrogate
        b'{"a":"\\udc00\\ud800"}',
    ],
)
def test_a_body_reads_as_json_loads_reads_it(content: bytes) -> None:
    from importer.api._client import _json

    got, expected = _json(content), json.loads(content)
    assert repr(got) == repr(expected)  # repr: NaN is not equal to itself
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    "content",
    [b"<html>ok</html>", b'{"a":1} x', b"[1,]", b'{"a":"\xff"}', b"\xff\xfe", b'{"a":"x\ny"}'],
)
def test_a_body_json_loads_refuses_is_refused_as_it_refuses(content: bytes) -> None:
    from importer.api._client import _json

    def error(read: Callable[[bytes], Any]) -> tuple[type[BaseException], str] | None:
        try:
            read(content)
        except ValueError as exc:
            return type(exc), str(exc)
        return None

    assert error(json.loads) is not None
    assert error(_json) == error(json.loads)  # json.loads's own error (ValueError)


@pytest.mark.parametrize("content", [b"", b"  \r\n"])
def test_an_empty_body_reads_as_none(content: bytes) -> None:
    from importer.api._client import _json

    assert _json(content) is None
