"""The one place a ClinikAPI client is assembled: an HTTP connection pool sized for the
work, the client over it, and (for commands that write) a circuit breaker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from importer.api._breaker import CircuitBreaker
from importer.api._client import ClinikClient, make_http_client
from importer.api._limiter import Limiter


@asynccontextmanager
async def open_client(
    base_url: str,
    api_key: str,
    *,
    concurrency: int,
    timeout_s: float,
    limiter: Limiter | None = None,
    breaker: bool = False,
) -> AsyncIterator[ClinikClient]:
    """A client for one command, its connections closed on exit.

    `limiter` is shared by the command's workers; `breaker` stops a run (or an undo) when
    no request gets an answer for a while (`run` and `undo` use one; reads do not).
    """
    http = make_http_client(base_url=base_url, concurrency=concurrency, timeout_s=timeout_s)
    async with http:
        yield ClinikClient(
            http,
            base_url=base_url,
            api_key=api_key,
            limiter=limiter,
            breaker=CircuitBreaker(urlsplit(base_url).netloc) if breaker else None,
        )
