"""An httpx transport that spreads requests over several small connection pools.

httpcore 1.0.x (the newest release) re-examines every pooled connection, with a `poll`
and a `getpeername` per idle socket, each time a request starts or ends (encode/httpcore
#1035). At 64 connections that bookkeeping costs more CPU than the requests themselves
and caps a client near 100 requests/s. Pools of at most `per_pool` connections keep the
scan short; each request goes to the pool with the fewest requests in flight.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx


class ShardedTransport(httpx.AsyncBaseTransport):
    """`connections` connections in all, in pools of at most `per_pool`."""

    def __init__(self, connections: int, *, per_pool: int = 8, **transport_options: Any) -> None:
        count = max(1, math.ceil(connections / per_pool))
        size = math.ceil(connections / count)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self._pools = [
            httpx.AsyncHTTPTransport(limits=limits, **transport_options) for _ in range(count)
        ]
        self._busy = [0] * count

    @property
    def pools(self) -> int:
        return len(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[index] += 1
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

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release()
