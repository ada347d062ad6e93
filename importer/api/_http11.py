"""An httpx transport speaking HTTP/1.1 over an asyncio protocol, parsed by httptools.

The import's client is CPU-bound: at 64 requests in flight this machine spent about
1.7 ms of Python per request, and httpcore's connection pool and h11's pure-Python
parser, with anyio's locks, cancel scopes and checkpoints around every step, took over
half of it. This transport does the same job with less: a list of idle kept-alive
connections per origin, one request per connection at a time, an asyncio protocol
feeding httptools (llhttp, the C parser uvicorn uses; already a dependency of the
sandbox) as bytes arrive, one timer a response for its read timeout, and the (small,
JSON) response read whole before it is returned. Requests are written as bytes, framed
by Content-Length, and refused if a header or the target holds a line break.

Errors are httpx's, raised in the same cases as httpx's own transport, because the
client's "could this request have reached the server?" rests on them: only
`ConnectError`, `ConnectTimeout` and `PoolTimeout` mean it certainly did not.
tests/test_http11.py holds it to that over real sockets.
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, cast

import httptools
import httpx

#: The most a response body may hold; the API's largest page is far below it.
MAX_BODY_BYTES = 64 * 1024 * 1024

_Origin = tuple[str, str, int]


class Http11Transport(httpx.AsyncBaseTransport):
    """At most `max_connections` connections, each kept alive for `keepalive_expiry` s.

    Needs asyncio (the run's event loop). `verify` is as httpx's: True, a CA bundle
    path, or an `ssl.SSLContext`.
    """

    def __init__(
        self,
        max_connections: int,
        *,
        verify: ssl.SSLContext | str | bool = True,
        keepalive_expiry: float = 4.0,
    ) -> None:
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._keepalive_expiry = keepalive_expiry
        self._slots = asyncio.Semaphore(max(1, max_connections))
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False
        self.connections_opened = 0  # for tests: kept-alive connections are reused

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
        origin = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        body = await request.aread()
        try:
            message = await self.exchange(origin, lambda: _request_bytes(request, body), timeouts)
        except httpx.RequestError as exc:
            exc.request = request
            raise
        # The body as it came: httpx undoes any Content-Encoding (gzip, deflate) when it
        # reads the stream, as with its own transport.
        return httpx.Response(
            message.status,
            headers=message.headers,
            stream=httpx.ByteStream(message.content),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def exchange(
        self,
        origin: _Origin,
        data: Callable[[], bytes] | bytes,
        timeouts: Mapping[str, float | None],
    ) -> RawResponse:
        """One request, given as HTTP/1.1 bytes (or made by `data` once connected), and
        its whole response, not decoded: the client's way past httpx's models on the hot
        path (issue 24). Raises httpx's errors, as `handle_async_request`, without a
        `request`; `data` must frame the body with Content-Length and carry a Host."""
        slots = self._slots
        if slots.locked():  # an acquire without a wait needs no timeout
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection in time") from None
        else:
            await slots.acquire()
        try:
            connection = self._take_idle(origin) or await self._connect(
                origin, timeouts.get("connect")
            )
            try:
                message = await connection.exchange(
                    data if isinstance(data, bytes) else data(), timeouts
                )
            except BaseException:
                connection.close()
                raise
            if connection.reusable and not self._closed:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(origin, []).append(connection)
            else:
                connection.close()
            return message
        finally:
            slots.release()

    async def aclose(self) -> None:
        self._closed = True  # connections still in use close when their request ends
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        """The most recently used idle connection that is still fit to send on."""
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            # Readable while idle means the server closed it (or sent junk): a request
            # on it would fail after being written, an ambiguous outcome.
            if now - connection.idle_since < self._keepalive_expiry and not connection.readable():
                return connection
            connection.close()
        return None

    async def _connect(self, origin: _Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context(verify=self._verify)
            tls = self._ssl
        try:
            async with asyncio.timeout(timeout):
                _, connection = await asyncio.get_running_loop().create_connection(
                    _Connection, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake (ssl.SSLError)
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from None
        self.connections_opened += 1
        return connection


class _Connection(asyncio.Protocol):
    """One kept-alive connection: requests written as bytes, each response fed to
    httptools as its bytes arrive, and the request's task woken once, when the response
    is whole (or has failed): no stream reader, one timer a response (issue 24)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._poll: select.poll | None = None
        self._message: RawResponse | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._done: asyncio.Future[BaseException | None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout: float | None = None
        self._drained: asyncio.Future[None] | None = None
        self._paused = False
        self._lost = False  # the loop saw the connection end (or bytes nobody asked for)
        self.reusable = False
        self.idle_since = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but are as good as one.
        self._transport = cast(asyncio.Transport, transport)
        self._poll = _poller(_socket_of(transport))

    def data_received(self, data: bytes) -> None:
        message, parser = self._message, self._parser
        if message is None or parser is None or self._done is None:
            self._lost = True  # bytes while idle: junk, or a response to nothing
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A 101 (not an HttpParserError): the API never switches protocols.
            self._lost = True
            self._finish(httpx.RemoteProtocolError("unexpected protocol upgrade (101)"))
            return
        except httptools.HttpParserError as exc:
            if not message.complete:
                self._finish(
                    httpx.RemoteProtocolError(f"invalid HTTP response ({type(exc).__name__})")
                )
                return
            message.extra = True  # junk after a complete response: do not reuse
        if message.size > MAX_BODY_BYTES:
            self._finish(httpx.RemoteProtocolError(f"response body over {MAX_BODY_BYTES} bytes"))
        elif message.complete:
            self._finish(None)
        elif self._timer is not None and self._timeout is not None:
            # A read timeout is the longest wait for the next bytes, as httpx's.
            self._timer.cancel()
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + self._timeout, self._expire)

    def eof_received(self) -> bool:
        self._lost = True
        self._finish(
            httpx.RemoteProtocolError("Server disconnected without sending a complete response.")
        )
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if exc is None:
            error: BaseException = httpx.RemoteProtocolError(
                "Server disconnected without sending a complete response."
            )
        else:
            error = httpx.ReadError(f"{type(exc).__name__}: {exc}")
        self._finish(error)
        self._wake_writer()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    # -- the transport's side -----------------------------------------------------------

    def readable(self) -> bool:
        """Whether the connection is unfit to send on: the loop saw it end (or bytes came
        while idle), or the kernel has bytes or its end for us (poll)."""
        if self._lost or self._transport is None or self._transport.is_closing():
            return True
        return self._poll is None or bool(self._poll.poll(0))

    def close(self) -> None:
        # Not waiting for the close to finish: a TLS goodbye to a silent server could hold
        # a worker for the loop's whole shutdown timeout.
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    async def exchange(self, data: bytes, timeouts: Mapping[str, float | None]) -> RawResponse:
        """Send one request and read its whole response."""
        self.reusable = False
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            raise httpx.WriteError("ConnectionResetError: the connection was closed")
        message = RawResponse()
        parser = httptools.HttpResponseParser(message)
        message.parser = parser
        loop = asyncio.get_running_loop()
        done: asyncio.Future[BaseException | None] = loop.create_future()
        self._message, self._parser, self._done = message, parser, done
        try:
            try:
                transport.write(data)
            except (OSError, RuntimeError) as exc:  # RuntimeError: the transport is closing
                raise httpx.WriteError(f"{type(exc).__name__}: {exc}") from None
            if self._paused:  # the send buffer is full: wait for room, as drain would
                await self._drain(loop, timeouts.get("write"))
            timeout = self._timeout = timeouts.get("read")
            if timeout is not None:
                self._timer = loop.call_at(loop.time() + timeout, self._expire)
            error = await done
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._message = self._parser = self._done = self._timer = None
            # The parser holds the message's bound callbacks: without this, every response
            # was a reference cycle (about ten objects) left to the garbage collector,
            # whose passes took a fifth of a run's CPU (issue 24).
            message.parser = None
        if error is not None:
            raise error
        self.reusable = message.keep_alive and not message.extra and not self._lost
        message.content = b"".join(message.body)
        return message

    async def _drain(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self._drained = loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._drained
        except TimeoutError:
            raise httpx.WriteTimeout("writing the request timed out") from None
        finally:
            self._drained = None
        if self._lost and self._paused:
            raise httpx.WriteError("ConnectionResetError: Connection lost")

    def _wake_writer(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _expire(self) -> None:
        self._timer = None
        self._finish(httpx.ReadTimeout("reading the response timed out"))

    def _finish(self, error: BaseException | None) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_result(error)


class RawResponse:
    """One response as it came (httptools' callbacks; 1xx interim responses are skipped):
    its status, its headers as (name, value) bytes in order, and `content`, its body not
    decoded (a Content-Encoding is the reader's to undo)."""

    __slots__ = (
        "body",
        "complete",
        "content",
        "extra",
        "headers",
        "keep_alive",
        "parser",
        "size",
        "status",
    )

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.content = b""
        self.size = 0
        self.status = 0
        self.complete = False
        self.extra = False
        self.keep_alive = False

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True  # a second response to one request

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # interim (e.g. 103 Early Hints): the final one follows
            self.headers, self.body, self.size = [], [], 0
            return
        self.status = status
        self.complete = True
        # Asked now: once the message is done the parser forgets (and answers False).
        self.keep_alive = self.parser.should_keep_alive()


#: Bytes that would end a request line or header line early (header injection).
_LINE_BREAKING = re.compile(rb"[\r\n\0]")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Framing headers are ours to write: the body is sent whole, with its length.
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    """The request as HTTP/1.1 bytes, framed by Content-Length."""
    method = request.method.encode("ascii")
    target = request.url.raw_path
    if not _TOKEN.fullmatch(method) or _LINE_BREAKING.search(target):
        raise httpx.LocalProtocolError("invalid request line", request=request)
    if method == b"HEAD":
        # A HEAD response has no body whatever its headers say; the parser cannot be told.
        raise httpx.LocalProtocolError("HEAD is not supported by this transport", request=request)
    try:
        head = header_lines(request.headers.raw)
    except httpx.LocalProtocolError as exc:
        exc.request = request
        raise
    return request_bytes(method, target, head, body)


def header_lines(raw: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Request header lines as this transport writes them: framing headers left out
    (Content-Length is written with the body), a name or value that could break a line
    refused (`LocalProtocolError`)."""
    lines: list[bytes] = []
    for name, value in raw:
        if name.lower() in _FRAMING:
            continue
        if not _TOKEN.fullmatch(name) or _LINE_BREAKING.search(value):
            raise httpx.LocalProtocolError("invalid request header")
        lines += [name, b": ", value, b"\r\n"]
    return b"".join(lines)


def request_bytes(method: bytes, target: bytes, head: bytes, body: bytes) -> bytes:
    """A request's bytes from its checked parts (`head` from `header_lines`)."""
    if body or method in (b"POST", b"PUT", b"PATCH"):
        length = b"Content-Length: %d\r\n\r\n" % len(body)
    else:
        length = b"\r\n"
    return b"".join((method, b" ", target, b" HTTP/1.1\r\n", head, length, body))


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def _socket_of(transport: asyncio.BaseTransport) -> _HasFileno | None:
    # Under uvloop a `PseudoSocket`, which has a `fileno` too.
    sock: Any = transport.get_extra_info("socket")
    return sock if callable(getattr(sock, "fileno", None)) else None


def _poller(sock: _HasFileno | None) -> select.poll | None:
    """A poll of the socket's readability (data, or the peer's close), made once a
    connection; None when there is no socket to poll (then taken as readable: unfit)."""
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return None
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return poll
