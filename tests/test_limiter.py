"""Limiter: concurrency cap, shared 429 pause, window budget, max wait, request pace.

Timings assert lower bounds (a loaded machine only makes things later) and loose upper
bounds, so these tests do not flake.
"""

from __future__ import annotations

import math

import anyio
import pytest

from importer._errors import BudgetWaitTooLong, LimiterClosed
from importer.api._limiter import SAFETY_MARGIN_S, Limiter, RateLimitInfo

# Slack for timer granularity when asserting "waited at least".
EPS = 0.03


@pytest.mark.parametrize("concurrency", [1, 3, 8])
@pytest.mark.anyio
async def test_never_more_than_concurrency_inside(concurrency: int) -> None:
    limiter = Limiter(concurrency=concurrency)
    inside = 0
    most = 0

    async def worker() -> None:
        nonlocal inside, most
        async with limiter.slot():
            inside += 1
            most = max(most, inside)
            await anyio.sleep(0.005)
            inside -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency * 6):
            tg.start_soon(worker)

    assert most == concurrency
    assert limiter.max_in_flight == concurrency


@pytest.mark.anyio
async def test_pause_blocks_every_worker() -> None:
    limiter = Limiter(concurrency=4)
    start = anyio.current_time()
    limiter.pause(0.3)
    limiter.pause(0.05)  # a shorter pause never shortens the running one
    entered: list[float] = []

    async def worker() -> None:
        async with limiter.slot():
            entered.append(anyio.current_time() - start)

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(worker)

    assert len(entered) == 6
    assert min(entered) >= 0.3 - EPS
    assert max(entered) < 2.0
    # four hold the slots through the pause; the other two queue behind them, no pause left
    assert limiter.waits == 4
    assert limiter.waited_s >= 4 * (0.3 - EPS)


@pytest.mark.anyio
async def test_pause_that_starts_while_waiting_is_honoured() -> None:
    limiter = Limiter(concurrency=1)
    start = anyio.current_time()
    limiter.pause(0.1)

    async def extend() -> None:
        await anyio.sleep(0.05)
        limiter.pause(0.3)  # a 429 elsewhere, while this worker still waits

    async with anyio.create_task_group() as tg:
        tg.start_soon(extend)
        async with limiter.slot():
            elapsed = anyio.current_time() - start
    assert elapsed >= 0.35 - EPS


@pytest.mark.anyio
async def test_budget_counts_unanswered_requests() -> None:
    limiter = Limiter(concurrency=8)
    assert limiter.budget() == math.inf  # nothing known before the first answer

    limiter.observe(RateLimitInfo(limit=100, remaining=50, reset_s=30))
    assert limiter.budget() == 50

    async with limiter.slot():
        assert limiter.budget() == 49  # sent, not answered: may already be counted
        limiter.observe(RateLimitInfo(limit=100, remaining=49, reset_s=30))
        assert limiter.budget() == 49  # answered: now inside the server's figure
    assert limiter.budget() == 49

    # A late answer with a higher Remaining is older news: the lowest wins.
    limiter.observe(RateLimitInfo(limit=100, remaining=60, reset_s=29))
    assert limiter.budget() == 49

    # A request with no answer (timeout) may have been counted...
    async with limiter.slot():
        pass
    assert limiter.budget() == 48
    # ...until the next answer says.
    limiter.observe(RateLimitInfo(limit=100, remaining=45, reset_s=29))
    assert limiter.budget() == 45

    # The reset jumps up: a new window, its Remaining replaces the old one.
    limiter.observe(RateLimitInfo(limit=100, remaining=99, reset_s=90))
    assert limiter.budget() == 99


@pytest.mark.anyio
async def test_spent_budget_holds_workers_until_an_answer_frees_it() -> None:
    limiter = Limiter(concurrency=8)
    limiter.observe(RateLimitInfo(limit=10, remaining=3, reset_s=30))
    release = anyio.Event()
    entered: list[int] = []

    async def worker(n: int) -> None:
        async with limiter.slot():
            entered.append(n)
            await release.wait()

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(worker, n)
        await anyio.sleep(0.2)
        assert len(entered) == 3  # the fourth would overspend the window
        # The next window answers (Reset jumped): budget for the fourth.
        limiter.observe(RateLimitInfo(limit=10, remaining=10, reset_s=60))
        with anyio.fail_after(2):
            while len(entered) < 4:
                await anyio.sleep(0.01)
        release.set()
    assert limiter.waits == 1


@pytest.mark.anyio
async def test_spent_budget_waits_for_the_reset_then_resumes() -> None:
    limiter = Limiter(concurrency=4)
    start = anyio.current_time()
    limiter.observe(RateLimitInfo(limit=5, remaining=0, reset_s=0.3))
    entered: list[float] = []

    async def worker() -> None:
        async with limiter.slot():
            entered.append(anyio.current_time() - start)
            # the new window's first answer
            limiter.observe(RateLimitInfo(limit=5, remaining=4, reset_s=2))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(worker)

    assert len(entered) == 3
    assert min(entered) >= 0.3 + SAFETY_MARGIN_S - EPS
    assert max(entered) < 2.0
    assert limiter.budget() == 4


@pytest.mark.anyio
async def test_late_answer_from_an_ended_window_is_not_trusted() -> None:
    limiter = Limiter()
    limiter.observe(RateLimitInfo(limit=5, remaining=4, reset_s=2))  # the window is 2 s long
    limiter.observe(RateLimitInfo(limit=5, remaining=1, reset_s=0.2))  # ...and ends soon
    async with limiter.slot():  # sent in the old window, answered after it ended
        await anyio.sleep(0.2 + SAFETY_MARGIN_S + EPS)
        assert limiter.budget() == 4  # a fresh window, less this request still unanswered
        limiter.observe(RateLimitInfo(limit=5, remaining=0, reset_s=1))
        # Its Remaining speaks of the old window; the request itself may count in the new.
        assert limiter.budget() == 4
    async with limiter.slot():  # sent in the new window: its answer describes it
        limiter.observe(RateLimitInfo(limit=5, remaining=3, reset_s=1))
    assert limiter.budget() == 3


@pytest.mark.anyio
async def test_answer_sent_after_the_deadline_resyncs_without_a_jump() -> None:
    # Whole-second Reset blurs deadlines by up to 1 s, so after the deadline passed the new
    # window's Reset need not look far ahead; the send time tells instead.
    limiter = Limiter()
    limiter.observe(RateLimitInfo(limit=50, remaining=10, reset_s=2))
    limiter.observe(RateLimitInfo(limit=50, remaining=0, reset_s=0.1))
    await anyio.sleep(0.1 + SAFETY_MARGIN_S + EPS)
    async with limiter.slot():
        limiter.observe(RateLimitInfo(limit=50, remaining=20, reset_s=1))
    assert limiter.budget() == 20


@pytest.mark.anyio
async def test_remaining_rising_after_send_means_a_new_window() -> None:
    limiter = Limiter()
    limiter.observe(RateLimitInfo(limit=10, remaining=5, reset_s=30))
    # An old answer (not this limiter's request) with a higher Remaining: older news.
    limiter.observe(RateLimitInfo(limit=10, remaining=9, reset_s=30))
    assert limiter.budget() == 5
    async with limiter.slot():
        # Sent after 5 was seen: within the same window it could only be lower.
        limiter.observe(RateLimitInfo(limit=10, remaining=9, reset_s=30))
    assert limiter.budget() == 9


@pytest.mark.anyio
async def test_window_outliving_its_reset_makes_the_limiter_roll_later() -> None:
    # A server that rounds Reset down: its window is still spent after our deadline.
    limiter = Limiter()
    limiter.observe(RateLimitInfo(limit=5, remaining=3, reset_s=2))
    limiter.observe(RateLimitInfo(limit=5, remaining=0, reset_s=0.1))
    await anyio.sleep(0.1 + SAFETY_MARGIN_S + EPS)
    async with limiter.slot():
        limiter.observe(RateLimitInfo(limit=5, remaining=0, reset_s=0))  # still the old one
    start = anyio.current_time()
    async with limiter.slot():
        elapsed = anyio.current_time() - start
    assert elapsed >= SAFETY_MARGIN_S + 0.5 - EPS  # the margin and the learnt lateness


@pytest.mark.anyio
async def test_max_wait_raises_instead_of_waiting_for_the_window() -> None:
    limiter = Limiter(max_wait_s=5)
    limiter.observe(RateLimitInfo(limit=500, remaining=0, reset_s=60))
    with anyio.fail_after(1), pytest.raises(BudgetWaitTooLong) as info:
        async with limiter.slot():
            pytest.fail("must not enter")
    assert 59 <= info.value.reset_in_s <= 61
    assert "60 s" in str(info.value)


@pytest.mark.anyio
async def test_max_wait_raises_on_a_long_429_pause() -> None:
    limiter = Limiter(max_wait_s=5)
    limiter.pause(120)
    with anyio.fail_after(1), pytest.raises(BudgetWaitTooLong):
        async with limiter.slot():
            pytest.fail("must not enter")


@pytest.mark.anyio
async def test_on_wait_reports_a_long_wait_once() -> None:
    calls: list[tuple[float, str]] = []
    limiter = Limiter(concurrency=4, on_wait=lambda s, reason: calls.append((s, reason)))
    # 2 s: a stall of up to a second on a loaded machine still leaves a wait worth telling.
    limiter.observe(RateLimitInfo(limit=5, remaining=0, reset_s=2.05))

    async def worker() -> None:
        async with limiter.slot():
            pass

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(worker)

    assert len(calls) == 1  # four workers wait, the user is told once
    seconds, reason = calls[0]
    assert 1.0 <= seconds <= 2.05 + SAFETY_MARGIN_S
    assert reason == "rate-limit window spent; resets in 2 s"


@pytest.mark.anyio
async def test_short_waits_are_not_reported() -> None:
    calls: list[tuple[float, str]] = []
    limiter = Limiter(on_wait=lambda s, reason: calls.append((s, reason)))
    limiter.pause(0.1)
    async with limiter.slot():
        pass
    assert calls == []


@pytest.mark.anyio
async def test_max_rps_spaces_request_starts() -> None:
    limiter = Limiter(concurrency=4, max_rps=20)
    starts: list[float] = []

    async def worker() -> None:
        for _ in range(3):
            async with limiter.slot():
                starts.append(anyio.current_time())

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(worker)

    starts.sort()
    assert len(starts) == 12
    # 12 starts at 20/s: the first at once, then 11 gaps of 50 ms
    assert starts[-1] - starts[0] >= 11 * 0.05 - EPS
    assert limiter.waits == 0  # pacing is not a budget wait


@pytest.mark.parametrize(
    "kwargs",
    [{"concurrency": 0}, {"max_rps": 0}, {"max_rps": -1.0}],
)
def test_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Limiter(**kwargs)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_simulated_server_window_is_spent_without_429s() -> None:
    """A fixed-window server (20 per 0.5 s) behind 8 workers: full windows, no refusals."""
    limit, window, latency = 20, 0.5, 0.004
    limiter = Limiter(concurrency=8)
    grid_start = anyio.current_time()
    counted: dict[int, int] = {}
    refused = 0

    async def request() -> None:
        nonlocal refused
        async with limiter.slot():
            await anyio.sleep(latency)
            now = anyio.current_time()
            k = int((now - grid_start) // window)
            if counted.get(k, 0) >= limit:
                refused += 1
                remaining = 0
            else:
                counted[k] = counted.get(k, 0) + 1
                remaining = limit - counted[k]
            reset = grid_start + (k + 1) * window - now
            await anyio.sleep(latency)
            limiter.observe(RateLimitInfo(limit=limit, remaining=remaining, reset_s=reset))

    async def worker(jobs: list[int]) -> None:
        while jobs:
            jobs.pop()
            await request()

    jobs = list(range(3 * limit))
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(worker, jobs)

    assert refused == 0
    assert sum(counted.values()) == 3 * limit
    assert all(n <= limit for n in counted.values())
    assert limiter.waits >= 1


@pytest.mark.anyio
async def test_close_refuses_every_slot_not_yet_granted() -> None:
    """A stopping run: the holder finishes, waiters for a slot or for a 429 pause are
    refused at once, and so is any later request."""
    limiter = Limiter(concurrency=1)
    outcomes: list[str] = []

    async def holder() -> None:
        async with limiter.slot():
            await anyio.sleep(0.2)
            outcomes.append("holder done")

    async def waiter(name: str) -> None:
        try:
            async with limiter.slot():
                outcomes.append(f"{name} sent")
        except LimiterClosed:
            outcomes.append(f"{name} refused")

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await anyio.sleep(0.02)
        tg.start_soon(waiter, "a")
        tg.start_soon(waiter, "b")
        await anyio.sleep(0.02)
        limiter.close()
    assert outcomes == ["holder done", "a refused", "b refused"]
    with pytest.raises(LimiterClosed):
        async with limiter.slot():
            pass

    paused = Limiter(concurrency=4)
    paused.pause(30.0)
    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, "c")
        await anyio.sleep(0.02)
        paused.close()  # wakes the pause's waiter at once, not after 30 s
    assert outcomes[-1] == "c refused"
    assert anyio.current_time() - started < 5


@pytest.mark.anyio
async def test_a_refused_slot_gives_its_place_back() -> None:
    """`slot()` refused after taking a concurrency place (closed, or a wait over
    --max-wait) gives the place back: the slots stay whole."""
    limiter = Limiter(concurrency=2, max_wait_s=1.0)
    limiter.pause(30.0)
    for _ in range(3):
        with pytest.raises(BudgetWaitTooLong):
            async with limiter.slot():
                pass
    limiter.close()
    with pytest.raises(LimiterClosed):
        async with limiter.slot():
            pass
    assert limiter._slots.value == 2
    assert limiter._inside == 0


@pytest.mark.anyio
async def test_an_answer_wakes_workers_waiting_for_the_budget() -> None:
    """Workers held by a spent window wake on the answer that frees it (not at the
    window's end), however many answers came before anyone waited."""
    limiter = Limiter(concurrency=4)
    async with limiter.slot():
        limiter.observe(RateLimitInfo(limit=10, remaining=1, reset_s=60))
    for _ in range(3):  # answers while nobody waits
        async with limiter.slot():
            limiter.observe(RateLimitInfo(limit=10, remaining=1, reset_s=60))
    sent: list[float] = []
    holder_done = anyio.Event()

    async def holder() -> None:
        async with limiter.slot():  # spends the last request of the window
            await holder_done.wait()
            limiter.observe(RateLimitInfo(limit=10, remaining=5, reset_s=60 + 2))

    async def waiter() -> None:
        async with limiter.slot():
            sent.append(anyio.current_time())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await anyio.sleep(0.02)
            tg.start_soon(waiter)
            await anyio.sleep(0.05)
            assert sent == []  # held: the budget is spent
            holder_done.set()
    assert len(sent) == 1


@pytest.mark.anyio
async def test_a_wake_up_that_frees_nothing_leaves_the_waiter_asleep() -> None:
    """An answer that leaves the window spent wakes the waiter once; it looks again and
    sleeps until the next change, never spinning on an event already set (review of
    issue 24: a `_notify` that set its event without replacing it passed every test)."""
    limiter = Limiter(concurrency=4)
    async with limiter.slot():
        limiter.observe(RateLimitInfo(limit=10, remaining=0, reset_s=60))
    looks = 0
    wait_needed = limiter._wait_needed

    def counted(now: float) -> tuple[float, str]:
        nonlocal looks
        looks += 1
        return wait_needed(now)

    limiter._wait_needed = counted  # type: ignore[method-assign]

    async def waiter() -> None:
        async with limiter.slot():
            pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.02)
            for _ in range(2):  # answers of requests sent before: still nothing left
                limiter.observe(RateLimitInfo(limit=10, remaining=0, reset_s=60))
                await anyio.sleep(0.05)
            assert looks <= 4  # one look at first, one after each wake-up
            tg.cancel_scope.cancel()
