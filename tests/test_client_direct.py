"""The client's direct path (`_Direct`: requests as bytes to its `Http11Transport`, past
httpx's models) over real sockets: the same bytes on the wire as through httpx, the same
envelope and typed errors, and the same "could it have reached the server?"."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from importer._errors import NoResponseError, RateLimitedError, ServerError
from importer.api._client import ClinikClient, make_http_client
from importer.api._http11 import Http11Transport
from tests.test_http11 import answer, anyio_backend, read_request, server  # noqa: F401

pytestmark = pytest.mark.anyio

# anyio_backend (imported): asyncio, and uvloop as a run's loop, as in test_http11


KEY = "clk_test_0000testing1234"
BODY = {"patientId": "pt_1", "status": "active"}


def reply(status: str, body: bytes, *headers: bytes) -> bytes:
    lines = [b"HTTP/1.1 " + status.encode(), *headers, b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def created(consent_id: str = "c1", *headers: bytes) -> bytes:
    body = json.dumps({"data": {"id": consent_id}, "meta": {}}).encode()
    return reply("201 Created", body, b"Content-Type: application/json", *headers)


@asynccontextmanager
async def direct_client(url: str, timeout_s: float = 30) -> AsyncIterator[ClinikClient]:
    """A client over `make_http_client`, whose httpx path fails the test if taken
    (undone by `via_httpx`)."""
    async with make_http_client(base_url=url, concurrency=2, timeout_s=timeout_s) as http:
        client = ClinikClient(http, base_url=url, api_key=KEY)
        assert client._direct is not None

        async def not_httpx(*args: Any, **kwargs: Any) -> httpx.Response:
            raise AssertionError("went through httpx")

        http.request = not_httpx  # type: ignore[method-assign]
        yield client


def via_httpx(client: ClinikClient) -> None:
    del client._http.request  # type: ignore[attr-defined]


async def calls(client: ClinikClient) -> None:
    await client.create_consent(BODY)
    await client.patch_consent("c 1/x", {"status": "inactive"})
    await client.get_consent("c1")
    await client.delete_consent("c1")


async def test_the_bytes_sent_are_those_httpx_sends() -> None:
    """POST, PATCH, GET, DELETE: byte for byte what the same client sends through httpx
    (over the same transport: its head, Host, defaults and Content-Length)."""
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            seen.append(head + await reader.readexactly(length))
            writer.write(created())
            await writer.drain()

    async with server(record) as (url, _):
        async with direct_client(url + "/base/") as client:
            await calls(client)
        direct, seen[:] = list(seen), []
        async with httpx.AsyncClient(transport=Http11Transport(1), timeout=30) as http:
            await calls(ClinikClient(http, base_url=url + "/base", api_key=KEY))
    assert direct == seen
    assert [r.split(b"\r\n")[0] for r in direct] == [
        b"POST /base/v1/consents HTTP/1.1",
        b"PATCH /base/v1/consents/c%201%2Fx HTTP/1.1",
        b"GET /base/v1/consents/c1 HTTP/1.1",
        b"DELETE /base/v1/consents/c1 HTTP/1.1",
    ]


RATE = (b"X-RateLimit-Limit: 50", b"X-RateLimit-Remaining: 7", b"X-RateLimit-Reset: 9")


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (created("c9", b"X-Request-Id: req_7", *RATE), ("data", {"id": "c9"}, "req_7", 7)),
        # the request id from the body when the header has none
        (
            reply("201 Created", b'{"data": {"id": "c2"}, "meta": {"requestId": "req_m"}}'),
            ("data", {"id": "c2"}, "req_m", None),
        ),
        # a repeated header is joined as httpx.Headers.get joins it
        (
            created("c3", b"X-Request-Id: a", b"x-request-id: b"),
            ("data", {"id": "c3"}, "a, b", None),
        ),
        (
            reply("429 Too Many Requests", b"{}", b"Retry-After: 3", *RATE),
            ("error", RateLimitedError, "POST /v1/consents: 429 Too Many Requests", 3.0),
        ),
        (
            reply("503 Service Unavailable", b"<html>", b"Content-Type: text/html; charset=x"),
            ("error", ServerError, "a non-JSON body (text/html)", None),
        ),
        # a success we cannot read may still have stored the consent
        (
            reply("201 Created", b"oops", b"Content-Type: text/plain"),
            ("error", ServerError, "not JSON (text/plain); the request may have", None),
        ),
        # a Content-Encoding is httpx's to undo
        (
            reply(
                "201 Created",
                gzip.compress(b'{"data": {"id": "cz"}}'),
                b"Content-Encoding: gzip",
            ),
            ("data", {"id": "cz"}, "", None),
        ),
    ],
    ids=["created", "request-id-in-body", "repeated", "429", "503-html", "201-not-json", "gzip"],
)
async def test_responses_read_as_through_httpx(response: bytes, expected: tuple[Any, ...]) -> None:
    kind, want, detail, extra = expected
    async with server(answer(response)) as (url, _), direct_client(url) as client:
        if kind == "data":
            got = await client.create_consent(BODY)
            assert (got.data, got.request_id) == (want, detail)
            assert (got.rate.remaining if got.rate else None) == extra
            return
        with pytest.raises(want) as info:
            await client.create_consent(BODY)
    assert detail in str(info.value)
    if extra is not None:
        assert info.value.retry_after == extra


async def test_a_cookie_is_kept_and_sent_back_through_httpx() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in (created("c1", b"Set-Cookie: lb=node2; Path=/"), created("c2")):
            seen.append(await read_request(reader))
            writer.write(response)
            await writer.drain()
        await reader.read()

    async with server(handler) as (url, _), direct_client(url) as client:
        await client.create_consent(BODY)  # direct: no cookie yet
        via_httpx(client)
        assert (await client.create_consent(BODY)).data == {"id": "c2"}
    assert b"Cookie: lb=node2" in seen[1]
    assert b"Cookie" not in seen[0]


Fails = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await reader.read()


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"NOT HTTP\r\n\r\n")
    await writer.drain()


@pytest.mark.parametrize(
    ("handler", "kind"),
    [
        (None, "ConnectError"),
        (_silent, "ReadTimeout"),
        (_hang_up, "RemoteProtocolError"),
        (_garbage, "RemoteProtocolError"),
    ],
    ids=["refused", "silent", "hang-up", "garbage"],
)
async def test_could_it_have_reached_the_server(handler: Fails | None, kind: str) -> None:
    """Only a failure before the request left says "not sent" (a POST then needs no lookup)."""
    async with server(handler or answer()) as (url, _):
        if handler is None:
            closed = url
    if handler is None:
        async with direct_client(closed) as client:
            with pytest.raises(NoResponseError) as info:
                await client.create_consent(BODY)
    else:
        async with server(handler) as (url, _), direct_client(url, timeout_s=0.3) as client:
            with pytest.raises(NoResponseError) as info:
                await client.create_consent(BODY)
    assert kind in str(info.value)
    assert info.value.sent is (handler is not None)
    assert client.stats.transport_errors == 1


async def test_a_client_with_hooks_or_not_from_make_http_client_goes_through_httpx() -> None:
    async with make_http_client(base_url="http://127.0.0.1:9", concurrency=1, timeout_s=1) as http:
        http.event_hooks["request"].append(lambda request: None)
        assert ClinikClient(http, base_url="http://127.0.0.1:9", api_key=KEY)._direct is None
    async with httpx.AsyncClient(transport=Http11Transport(1)) as plain:
        assert ClinikClient(plain, base_url="http://127.0.0.1:9", api_key=KEY)._direct is None
