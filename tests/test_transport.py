"""`ShardedTransport` against a real (in-process) sandbox: spread, busy counts, closing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpcore
import httpx
import pytest

from importer.sandbox import SandboxConfig, running_sandbox
from importer.sandbox.server import RunningSandbox
from importer.transport import ShardedTransport

pytestmark = pytest.mark.anyio

KEY = {"x-api-key": "clk_test_0000testing1234"}
BODY = {"patientId": "pt_1", "scope": "treatment", "category": "treatment-consent"}


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxConfig()) as sb:
        yield sb


def connections(transport: ShardedTransport) -> list[list[httpcore.AsyncConnectionInterface]]:
    """The connections of each pool (httpcore's own view)."""
    pools: list[list[httpcore.AsyncConnectionInterface]] = []
    for pool in transport._pools:
        inner = pool._pool
        assert isinstance(inner, httpcore.AsyncConnectionPool)
        pools.append(list(inner.connections))
    return pools


def test_pool_count_and_sizes() -> None:
    assert ShardedTransport(64).pools == 8
    assert ShardedTransport(64, per_pool=1).pools == 64
    assert ShardedTransport(10, per_pool=4).pools == 3
    assert ShardedTransport(1).pools == 1
    assert ShardedTransport(0).pools == 1


async def test_requests_spread_over_pools_never_more_than_per_pool(
    sandbox: RunningSandbox,
) -> None:
    sandbox.configure(latency_ms=150)
    transport = ShardedTransport(8, per_pool=2)
    assert transport.pools == 4
    seen_busy: list[list[int]] = []
    async with httpx.AsyncClient(transport=transport, headers=KEY) as client:

        async def post() -> None:
            response = await client.post(f"{sandbox.base_url}/v1/consents", json=BODY)
            assert response.status_code == 201

        async def watch() -> None:
            for _ in range(30):
                seen_busy.append(list(transport._busy))
                await anyio.sleep(0.01)

        for _ in range(2):  # a second round reuses the kept-alive connections
            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(post)
                group.start_soon(watch)
            assert transport._busy == [0, 0, 0, 0]
            assert all(len(pool) <= 2 for pool in connections(transport))
        # Every pool got its share: 2 requests each while all 8 were in flight.
        assert [2, 2, 2, 2] in seen_busy
        assert max(max(busy) for busy in seen_busy) <= 2
        assert sum(len(pool) for pool in connections(transport)) == 8
        assert len(sandbox.consents()) == 16


async def test_more_requests_than_connections_wait_for_one(sandbox: RunningSandbox) -> None:
    sandbox.configure(latency_ms=50)
    transport = ShardedTransport(4, per_pool=2)
    async with httpx.AsyncClient(transport=transport, headers=KEY) as client:

        async def post() -> None:
            response = await client.post(f"{sandbox.base_url}/v1/consents", json=BODY)
            assert response.status_code == 201

        async with anyio.create_task_group() as group:
            for _ in range(12):
                group.start_soon(post)
        assert transport._busy == [0, 0]
        assert all(len(pool) <= 2 for pool in connections(transport))


async def test_busy_until_the_streamed_body_is_closed(sandbox: RunningSandbox) -> None:
    transport = ShardedTransport(4, per_pool=2)
    async with httpx.AsyncClient(transport=transport, headers=KEY) as client:
        request = client.build_request("POST", f"{sandbox.base_url}/v1/consents", json=BODY)
        response = await client.send(request, stream=True)
        assert sum(transport._busy) == 1
        await response.aread()
        await response.aclose()
        assert transport._busy == [0, 0]
        # Closing twice releases once.
        await response.aclose()
        assert transport._busy == [0, 0]


async def test_busy_returns_to_zero_when_the_connection_drops(sandbox: RunningSandbox) -> None:
    sandbox.configure(fault_drop_after_store=1.0)
    transport = ShardedTransport(4, per_pool=2)
    async with httpx.AsyncClient(transport=transport, headers=KEY) as client:

        async def post() -> None:
            with pytest.raises(httpx.TransportError):
                await client.post(f"{sandbox.base_url}/v1/consents", json=BODY)

        async with anyio.create_task_group() as group:
            for _ in range(6):
                group.start_soon(post)
        assert transport._busy == [0, 0]

        # The pools still work once the server behaves again.
        sandbox.configure(fault_drop_after_store=0.0)
        response = await client.post(f"{sandbox.base_url}/v1/consents", json=BODY)
        assert response.status_code == 201
        assert transport._busy == [0, 0]


async def test_busy_returns_to_zero_when_nothing_listens() -> None:
    with running_sandbox(SandboxConfig()) as sb:
        url = sb.base_url
    transport = ShardedTransport(2, per_pool=1)
    async with httpx.AsyncClient(transport=transport, headers=KEY) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(f"{url}/v1/consents", json=BODY)
        assert transport._busy == [0, 0]


async def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    transport = ShardedTransport(1, per_pool=1)
    async with httpx.AsyncClient(transport=transport, headers=KEY) as client:
        with running_sandbox(SandboxConfig()) as sb:
            url = sb.base_url
            first = await client.post(f"{url}/v1/consents", json=BODY)
            assert first.status_code == 201
            [[connection]] = connections(transport)
            stream: Any = connection._connection._network_stream  # type: ignore[attr-defined]
            assert stream.get_extra_info("is_readable") is False
        # The server went away while the connection sat idle in the pool.
        with anyio.fail_after(5):
            while not stream.get_extra_info("is_readable"):
                await anyio.sleep(0.01)
        port = int(url.rsplit(":", 1)[1])
        with running_sandbox(SandboxConfig(), port=port):
            second = await client.post(f"{url}/v1/consents", json=BODY)
            assert second.status_code == 201
            [[replacement]] = connections(transport)
            assert replacement is not connection


async def test_aclose_closes_every_pool(sandbox: RunningSandbox) -> None:
    transport = ShardedTransport(6, per_pool=2)
    client = httpx.AsyncClient(transport=transport, headers=KEY)

    async def post() -> None:
        response = await client.post(f"{sandbox.base_url}/v1/consents", json=BODY)
        assert response.status_code == 201

    async with anyio.create_task_group() as group:
        for _ in range(6):
            group.start_soon(post)
    opened = [connection for pool in connections(transport) for connection in pool]
    assert len(opened) == 6
    assert all(len(pool) == 2 for pool in connections(transport))

    await client.aclose()
    assert all(connection.is_closed() for connection in opened)
    assert connections(transport) == [[], [], []]
    with pytest.raises(RuntimeError):
        await client.post(f"{sandbox.base_url}/v1/consents", json=BODY)
