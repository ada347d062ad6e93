"""An httpx transport that spreads requests over several small connection pools.

httpcore 1.0.x (the newest release) re-examines every pooled connection, with a `poll`
and a `getpeername` per idle socket, each time a request starts or ends (encode/httpcore
#1035). At 64 connections that bookkeeping costs more CPU than the requests themselves
and caps a client near 100 requests/s. Pools of at most `per_pool` connections keep the
scan short; each request goes to the pool with the fewest requests in flight.

The scan's readability check of an idle socket also goes through anyio's typed-attribute
lookup, which builds a dict of lambdas per call; `_CheapStreams` wraps each pool's network
backend so that the check is one `poll` on the socket found once at connect time.
"""

from __future__ import annotations

import math
import select
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

import httpcore
import httpx


class ShardedTransport(httpx.AsyncBaseTransport):
    """`connections` connections in all, in pools of at most `per_pool`."""

    def __init__(self, connections: int, *, per_pool: int = 8, **transport_options: Any) -> None:
        count = max(1, math.ceil(connections / per_pool))
        size = math.ceil(connections / count)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        options = dict(transport_options)
        if options.get("cert") is None:
            # One TLS context for every pool: making one loads the CA bundle (tens of ms),
            # and there may be 64 pools. httpx takes a context as `verify` unchanged.
            options["verify"] = httpx.create_ssl_context(
                verify=options.get("verify", True), trust_env=options.get("trust_env", True)
            )
        self._pools = [httpx.AsyncHTTPTransport(limits=limits, **options) for _ in range(count)]
        for pool in self._pools:
            _cheapen(pool)
        self._busy = [0] * count

    @property
    def pools(self) -> int:
        return len(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        busy = self._busy
        index = busy.index(min(busy))  # the first of the least busy, in two C-level passes
        busy[index] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._busy[index] -= 1

        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        # The connection stays busy until the body has been read and the stream closed.
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Released(response.stream, release)
        return response

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _Released(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release = release

    def __aiter__(self) -> AsyncIterator[bytes]:
        # The stream's own iterator: no async generator layered on each chunk.
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release()


def _cheapen(transport: httpx.AsyncHTTPTransport) -> None:
    """Give the transport's httpcore pool streams with a cheap readability check.

    Left alone when the pool is not the plain one this was written against (a proxy, or
    another httpcore's attribute names).
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(pool, httpcore.AsyncConnectionPool) and isinstance(
        backend, httpcore.AsyncNetworkBackend
    ):
        pool._network_backend = _CheapStreams(backend)


class _CheapStreams(httpcore.AsyncNetworkBackend):
    """A network backend whose streams answer "is_readable" without anyio's attribute maps."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(
            host,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )
        return _CheapStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )
        return _CheapStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _CheapStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        # A TLS stream keeps the socket of the plain stream below it. Under uvloop it is
        # a `PseudoSocket`, which has a `fileno` too.
        sock = stream.get_extra_info("socket")
        self._socket: _HasFileno | None = sock if callable(getattr(sock, "fileno", None)) else None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _CheapStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._socket is not None:
            return _readable(self._socket)
        return self._stream.get_extra_info(info)


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def _readable(sock: _HasFileno) -> bool:
    """Whether a read would not block: data, or the peer's close (httpcore's own test)."""
    fd = sock.fileno()
    if fd < 0:
        return True  # closed: as good as a pending end of stream
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))
