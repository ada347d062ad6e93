"""SettleQueue: items come out when due, in due order; the drain ends when nothing waits
or works; a stop drops what waits."""

from __future__ import annotations

import anyio
import pytest

from importer.engine._settle import SettleQueue

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("delays", "order"),
    [
        ([0.05, 0.0, 0.02], ["b", "c", "a"]),
        ([0.0, 0.0, 0.0], ["a", "b", "c"]),  # ties keep their order
    ],
)
async def test_items_come_out_when_due(delays: list[float], order: list[str]) -> None:
    queue = SettleQueue[str]()
    send, receive = anyio.create_memory_object_stream[str](10)
    now = anyio.current_time()
    for name, delay in zip("abc", delays, strict=True):
        queue.push(now + delay, name)
    out: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue.drain, send, lambda _: None, lambda _: None)
        queue.input_done()
        async with receive:
            async for item in receive:
                out.append(item)
                queue.finished()
    assert out == order


async def test_the_drain_waits_for_items_at_work_that_may_come_back() -> None:
    queue = SettleQueue[str]()
    send, receive = anyio.create_memory_object_stream[str](10)
    seen: list[str] = []

    async def worker() -> None:
        async with receive:
            async for item in receive:
                seen.append(item)
                if item == "a":
                    queue.push(anyio.current_time() + 0.01, "a again")  # settles once more
                queue.finished()

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        drain_send = send.clone()
        tg.start_soon(queue.drain, drain_send, lambda _: None, lambda _: None)
        await queue.send(send, "a")
        send.close()
        queue.input_done()
    assert seen == ["a", "a again"]


async def test_a_stop_drops_what_waits() -> None:
    queue = SettleQueue[str]()
    send, receive = anyio.create_memory_object_stream[str](10)
    receive.close()
    dropped: list[str] = []
    queue.push(anyio.current_time() + 60, "late")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(queue.drain, send, lambda _: None, dropped.append)
            await anyio.sleep(0.01)
            queue.stop()
    assert dropped == ["late"]
    assert len(queue) == 0


async def test_the_drain_ends_when_the_last_item_at_work_finishes() -> None:
    """Items finishing one by one: the drain returns at the last, not before."""
    queue = SettleQueue[str]()
    send, receive = anyio.create_memory_object_stream[str](10)
    ended: list[int] = []
    for item in "abc":
        await queue.send(send, item)
    queue.input_done()

    async def drain() -> None:
        await queue.drain(send, lambda _: None, lambda _: None)
        ended.append(len(queue))

    with anyio.fail_after(5):
        async with receive, anyio.create_task_group() as tg:
            tg.start_soon(drain)
            for left in (2, 1):
                queue.finished()
                await anyio.sleep(0.02)
                assert ended == [], f"ended with {left} at work"
            queue.finished()
    assert ended == [0]
