"""`Http11Transport` over real sockets: the sandbox, and small servers that misbehave.

What matters most is which httpx error each failure raises: the client treats only
`ConnectError`, `ConnectTimeout` and `PoolTimeout` as "certainly not sent", so a failure
after the request may have left must never be reported as one of those.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
import trustme

from importer.api._http11 import Http11Transport
from importer.sandbox import SandboxConfig, running_sandbox
from importer.sandbox._server import RunningSandbox

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),  # as a run's loop
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return request.param  # type: ignore[no-any-return]


KEY = {"x-api-key": "clk_test_0000testing1234"}
BODY = {"patientId": "pt_1", "scope": "treatment", "category": "treatment-consent"}
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"a": true}'

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxConfig()) as sb:
        yield sb


@asynccontextmanager
async def server(
    handler: Handler, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server on a free loopback port; yields its URL and a count of connections."""
    connections = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    port = srv.sockets[0].getsockname()[1]
    scheme = "https" if tls else "http"
    async with srv:
        yield f"{scheme}://127.0.0.1:{port}", connections


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


def answer(*responses: bytes, then: str = "keep") -> Handler:
    """Answer each request with the next response; then keep the connection or close it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await read_request(reader)
            writer.write(response)
            await writer.drain()
        if then == "keep":
            await reader.read()  # until the client closes

    return handler


async def test_posts_to_the_sandbox_on_one_kept_alive_connection(sandbox: RunningSandbox) -> None:
    transport = Http11Transport(4)
    async with httpx.AsyncClient(transport=transport, headers=KEY) as client:
        for _ in range(5):
            response = await client.post(f"{sandbox.base_url}/v1/consents", json=BODY)
            assert response.status_code == 201
            assert response.json()["data"]["patientId"] == "pt_1"
        found = await client.get(f"{sandbox.base_url}/v1/consents", params={"patientId": "pt_1"})
    assert len(found.json()["data"]) == 5
    assert transport.connections_opened == 1
    assert len(sandbox.consents()) == 5


async def test_never_more_connections_than_its_limit(sandbox: RunningSandbox) -> None:
    sandbox.configure(latency_ms=100)
    transport = Http11Transport(3)
    async with httpx.AsyncClient(transport=transport, headers=KEY) as client:

        async def post() -> None:
            response = await client.post(f"{sandbox.base_url}/v1/consents", json=BODY)
            assert response.status_code == 201

        async with anyio.create_task_group() as group:
            for _ in range(12):
                group.start_soon(post)
    assert sandbox.stats()["max_in_flight"] == 3
    assert transport.connections_opened == 3


async def test_refused_connection_is_a_connect_error() -> None:
    async with server(answer(OK)) as (url, _):
        pass  # closed: nothing listens on the port now
    async with httpx.AsyncClient(transport=Http11Transport(1)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(url)


async def test_silent_server_is_a_read_timeout_not_a_connect_error() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async with (
        server(silent) as (url, _),
        httpx.AsyncClient(transport=Http11Transport(1), timeout=0.3) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await client.post(url, json=BODY)


async def test_close_after_reading_the_request_is_a_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with (
        server(hang_up) as (url, _),
        httpx.AsyncClient(transport=Http11Transport(1)) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(url, json=BODY)


@pytest.mark.parametrize(
    "response",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"short"',  # then closed
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=["garbage", "truncated-body", "bad-length", "upgrade"],
)
async def test_a_broken_response_is_a_protocol_error(
    response: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    async with (
        server(answer(response, then="close")) as (url, _),
        httpx.AsyncClient(transport=Http11Transport(1)) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(url, json=BODY)
    # never the event loop's "Fatal error ... data_received() call failed" with a traceback
    assert not [r for r in caplog.records if r.name == "asyncio"]


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async with server(answer(OK, then="close")) as (url, connections):
        transport = Http11Transport(1)
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get(url)).json() == {"a": True}
            await anyio.sleep(0.1)  # the server's close arrives
            assert (await client.get(url)).json() == {"a": True}  # a new connection, no error
    assert connections[0] == 2
    assert transport.connections_opened == 2


async def test_connection_close_and_expired_connections_are_not_reused() -> None:
    closing = OK.replace(b"Content-Type", b"Connection: close\r\nContent-Type")
    first = True

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal first
        while True:
            await read_request(reader)
            writer.write(closing if first else OK)
            await writer.drain()
            if first:
                first = False
                return

    async with server(handler) as (url, connections):
        transport = Http11Transport(1, keepalive_expiry=1.0)
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(url)  # "Connection: close": not kept
            await client.get(url)
            await client.get(url)  # reused
            await anyio.sleep(1.2)
            await client.get(url)  # idle too long: a new one
    assert transport.connections_opened == connections[0] == 3


async def test_chunked_bodies_and_interim_responses_are_read() -> None:
    response = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-Request-Id: req_9\r\n\r\n"
        b'5\r\n{"id"\r\n6\r\n: "c1"\r\n1\r\n}\r\n0\r\n\r\n'
    )
    async with (
        server(answer(response)) as (url, _),
        httpx.AsyncClient(transport=Http11Transport(1)) as client,
    ):
        got = await client.post(url, json=BODY)
    assert got.status_code == 201
    assert got.headers["x-request-id"] == "req_9"
    assert got.json() == {"id": "c1"}


async def test_a_compressed_body_is_decoded_as_httpx_would() -> None:
    payload = gzip.compress(b'{"id": "c1"}')
    response = (
        b"HTTP/1.1 201 Created\r\nContent-Encoding: gzip\r\nContent-Length: "
        + str(len(payload)).encode()
        + b"\r\n\r\n"
        + payload
    )
    async with (
        server(answer(response)) as (url, _),
        httpx.AsyncClient(transport=Http11Transport(1)) as client,
    ):
        got = await client.post(url, json=BODY)
    assert got.json() == {"id": "c1"}


async def test_the_request_is_sent_as_httpx_built_it() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        seen.append(head + await reader.readexactly(length))
        writer.write(OK)
        await writer.drain()

    async with (
        server(record) as (url, _),
        httpx.AsyncClient(transport=Http11Transport(1), headers=KEY) as client,
    ):
        await client.patch(f"{url}/v1/consents/c%201?x=1", json={"status": "inactive"})
    [raw] = seen
    head, body = raw.split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"PATCH /v1/consents/c%201?x=1 HTTP/1.1"
    assert b"x-api-key: clk_test_0000testing1234" in lines
    assert f"Host: {url.removeprefix('http://')}".encode() in lines
    assert body == b'{"status":"inactive"}'
    assert f"Content-Length: {len(body)}".encode() in lines


async def test_a_header_with_a_line_break_is_refused_before_sending() -> None:
    async with (
        server(answer(OK)) as (url, connections),
        httpx.AsyncClient(transport=Http11Transport(1)) as client,
    ):
        with pytest.raises(httpx.LocalProtocolError):
            await client.get(url, headers={"x-note": "a\r\nx-injected: 1"})
    assert connections[0] == 1  # connected, but nothing was written


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_https_verifies_the_server_certificate(ca: trustme.CA) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with (
        server(answer(OK, OK), tls=tls) as (url, _),
        httpx.AsyncClient(transport=Http11Transport(1, verify=trusted)) as client,
    ):
        assert (await client.get(url)).json() == {"a": True}
        # The default trust store does not know this CA: refused before anything is sent.
        async with httpx.AsyncClient(transport=Http11Transport(1)) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(url)


async def test_a_server_that_never_answers_the_tls_handshake_is_a_connect_timeout() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with server(mute) as (url, _):
        timeout = httpx.Timeout(5.0, connect=0.3)
        async with httpx.AsyncClient(transport=Http11Transport(1), timeout=timeout) as client:
            with pytest.raises(httpx.ConnectTimeout):
                await client.get(url.replace("http://", "https://"))


async def test_no_free_connection_in_time_is_a_pool_timeout() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await anyio.sleep(1.0)
        writer.write(OK)
        await writer.drain()

    async with server(slow) as (url, _):
        timeout = httpx.Timeout(5.0, pool=0.2)
        async with (
            httpx.AsyncClient(transport=Http11Transport(1), timeout=timeout) as client,
            anyio.create_task_group() as group,
        ):
            group.start_soon(client.get, url)
            await anyio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await client.get(url)


async def test_the_read_timeout_is_the_longest_wait_for_the_next_bytes() -> None:
    """A response trickling in, each piece within the read timeout though the whole
    takes longer, is read (as httpx's); a pause longer than it is a ReadTimeout."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for piece in (OK[:20], OK[20:40], OK[40:]):
            writer.write(piece)
            await writer.drain()
            await anyio.sleep(0.2)
        await read_request(reader)
        writer.write(OK[:20])
        await writer.drain()
        await reader.read()

    async with (
        server(trickle) as (url, _),
        httpx.AsyncClient(transport=Http11Transport(1), timeout=0.35) as client,
    ):
        assert (await client.get(url)).json() == {"a": True}  # 0.4 s in all
        with pytest.raises(httpx.ReadTimeout):
            await client.get(url)


async def test_bytes_from_the_server_while_idle_make_the_connection_unfit() -> None:
    """A response to nothing (or junk) after the answer: the next request goes on a new
    connection, not after those bytes."""

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await anyio.sleep(0.05)
        writer.write(OK)  # nobody asked
        await writer.drain()
        while True:
            await read_request(reader)
            writer.write(OK)
            await writer.drain()

    async with server(chatty) as (url, connections):
        transport = Http11Transport(1)
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(url)
            await anyio.sleep(0.2)
            assert (await client.get(url)).json() == {"a": True}
    assert transport.connections_opened == connections[0] == 2


async def test_a_response_leaves_no_reference_cycle(sandbox: RunningSandbox) -> None:
    # The parser holds the response's bound callbacks; the response held the parser: every
    # request left a cycle of about ten objects to the garbage collector, whose passes took
    # a fifth of a run's CPU (issue 24). Without cycles, refcounting frees them at once.
    url = httpx.URL(sandbox.base_url)
    origin = (url.scheme, url.host, url.port or 80)
    head = f"Host: {url.host}:{url.port}\r\nx-api-key: {KEY['x-api-key']}\r\n".encode()
    data = b"GET /v1/consents?count=1 HTTP/1.1\r\n" + head + b"\r\n"
    transport = Http11Transport(1)
    timeouts = {"read": 5.0, "connect": 5.0, "pool": 5.0, "write": 5.0}
    await transport.exchange(origin, data, timeouts)  # the connection's own objects
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            raw = await transport.exchange(origin, data, timeouts)
            assert raw.status == 200
        unreachable = gc.collect()
    finally:
        gc.enable()
        await transport.aclose()
    assert unreachable < 50  # was about 500: ten a response
