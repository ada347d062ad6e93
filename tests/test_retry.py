"""retry: what is retried, how often, how long it waits, and the testing switch."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
import tenacity

from importer._errors import (
    AbortError,
    ApiError,
    AuthError,
    ClientRequestError,
    ConfigError,
    NoResponseError,
    RateLimitedError,
    ServerError,
)
from importer.api import _retry as retry
from importer.api._retry import compute_wait, is_retryable, no_waits, retrying


@pytest.fixture(autouse=True)
def _switch_restored() -> Iterator[None]:
    before = retry.is_testing()
    yield
    retry.set_testing(before)


def server_error(n: int = 0) -> ServerError:
    return ServerError(f"boom {n}", status=500)


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (RateLimitedError("429", status=429, retry_after=1), True),
        (server_error(), True),
        (ServerError("502", status=502), True),
        (NoResponseError("dropped", sent=True), True),
        (NoResponseError("refused", sent=False), True),
        (AuthError("401", status=401), False),  # the key will not get better
        (AuthError("403", status=403), False),
        (ClientRequestError("422", status=422), False),  # the body will not get better
        (ClientRequestError("409", status=409), False),
        (ApiError("?", status=418), False),
        (ConfigError("bad"), False),
        (AbortError("stop"), False),
        (ValueError("a bug"), False),
        (KeyError("a bug"), False),
    ],
)
def test_is_retryable(exc: BaseException, retryable: bool) -> None:
    assert is_retryable(exc) is retryable


async def run(
    failures: list[BaseException], *, attempts: int, **kwargs: object
) -> tuple[str, list[int]]:
    """Raise each of `failures` in turn, then succeed; return the result and attempt numbers."""
    numbers: list[int] = []
    remaining = list(failures)
    async for attempt in retrying(attempts=attempts, **kwargs):  # type: ignore[arg-type]
        with attempt:
            numbers.append(attempt.retry_state.attempt_number)
            if remaining:
                raise remaining.pop(0)
            return "ok", numbers
    raise AssertionError("unreachable")


@pytest.mark.anyio
async def test_succeeds_after_retryable_failures() -> None:
    seen: list[tuple[str, int]] = []
    with no_waits():
        result = await run(
            [server_error(1), NoResponseError("t", sent=True)],
            attempts=5,
            on_retry=lambda exc, n: seen.append((type(exc).__name__, n)),
        )
    assert result == ("ok", [1, 2, 3])
    assert seen == [("ServerError", 1), ("NoResponseError", 2)]


@pytest.mark.anyio
async def test_gives_up_after_attempts_and_reraises_the_last_error() -> None:
    with no_waits(), pytest.raises(ServerError) as info:
        await run([server_error(n) for n in range(1, 10)], attempts=3)
    assert str(info.value) == "boom 3"  # the real last error, not tenacity.RetryError


@pytest.mark.parametrize(
    "exc",
    [ClientRequestError("422", status=422), AuthError("401", status=401), ValueError("bug")],
)
@pytest.mark.anyio
async def test_not_retryable_raises_at_once(exc: BaseException) -> None:
    calls: list[tuple[BaseException, int]] = []
    with no_waits(), pytest.raises(type(exc)) as info:
        await run([exc], attempts=5, on_retry=lambda e, n: calls.append((e, n)))
    assert info.value is exc
    assert calls == []


@pytest.mark.anyio
async def test_one_attempt_means_no_retry() -> None:
    with no_waits(), pytest.raises(ServerError):
        await run([server_error()], attempts=1)


def test_zero_attempts_is_refused() -> None:
    with pytest.raises(ValueError, match="attempts"):
        retrying(attempts=0)


@pytest.mark.parametrize(
    ("attempt_number", "cap"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 10.0), (20, 10.0)],
)
def test_full_jitter_stays_within_its_cap(attempt_number: int, cap: float) -> None:
    waits = [
        compute_wait(server_error(), attempt_number, wait_initial=0.5, wait_max=10.0)
        for _ in range(300)
    ]
    assert all(0.0 <= w <= cap for w in waits)
    # jittered, not a fixed delay: the spread covers most of [0, cap]
    assert min(waits) < cap * 0.25
    assert max(waits) > cap * 0.75


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        (7.0, 7.0, 7.0),  # longer than any jitter at attempt 1: exactly Retry-After
        (0.1, 0.1, 0.5),  # shorter: at least it, at most the jitter cap
        # beyond wait_max the shared Limiter pause waits (and may stop the run), not a sleep
        (3600.0, 10.0, 10.0),
        (None, 0.0, 0.5),
    ],
)
def test_retry_after_is_a_floor(retry_after: float | None, low: float, high: float) -> None:
    exc = RateLimitedError("429", status=429, retry_after=retry_after)
    for _ in range(50):
        wait = compute_wait(exc, 1, wait_initial=0.5, wait_max=10.0)
        assert low <= wait <= high


@pytest.mark.anyio
async def test_retry_after_is_slept_without_the_switch() -> None:
    start = anyio.current_time()
    result = await run(
        [RateLimitedError("429", status=429, retry_after=0.2)], attempts=2, wait_initial=0.0
    )
    assert result == ("ok", [1, 2])
    assert anyio.current_time() - start >= 0.2 - 0.03


@pytest.mark.anyio
async def test_testing_switch_makes_waits_instant() -> None:
    planned: list[float] = []
    start = anyio.current_time()
    retry.set_testing(True)
    with pytest.raises(RateLimitedError):
        await run(
            [RateLimitedError("429", status=429, retry_after=50) for _ in range(4)],
            attempts=4,
            wait_initial=30,
            wait_max=50,  # the jitter cap equals retry_after: every planned wait is exactly 50
            before_sleep=lambda state: planned.append(state.upcoming_sleep),
        )
    assert anyio.current_time() - start < 1.0
    # The planned waits are still computed (and reported), only not slept.
    assert planned == [50.0, 50.0, 50.0]


def test_no_waits_restores_the_previous_setting() -> None:
    retry.set_testing(False)
    with no_waits():
        assert retry.is_testing()
    assert not retry.is_testing()


def test_retrying_is_tenacity() -> None:
    assert isinstance(retrying(attempts=5), tenacity.AsyncRetrying)


CASES = [
    ([], 5),  # succeeds at once
    ([server_error(1), NoResponseError("t", sent=True)], 5),  # retried, then succeeds
    ([server_error(n) for n in range(1, 10)], 3),  # gives up: the last real error
    ([ClientRequestError("422", status=422)], 5),  # not retryable: at once
    ([RateLimitedError("429", status=429, retry_after=3)], 5),  # waits its Retry-After
    ([server_error()], 1),  # one attempt: no retry
    ([ValueError("bug")], 5),
]


async def _trace(
    make: object, failures: list[BaseException], attempts: int, monkeypatch: pytest.MonkeyPatch
) -> list[object]:
    """What a loop does: its tries, hook calls, sleeps (under a seed) and its outcome."""
    trace: list[object] = []

    async def sleep(seconds: float) -> None:
        trace.append(("sleep", round(seconds, 9)))

    monkeypatch.setattr(retry, "_sleep", sleep)
    retry.random.seed(7)
    remaining = list(failures)
    try:
        async for attempt in make(  # type: ignore[operator]
            attempts=attempts, on_retry=lambda e, n: trace.append(("retry", str(e), n))
        ):
            with attempt:
                trace.append("try")
                if remaining:
                    raise remaining.pop(0)
        trace.append("ok")
    except Exception as exc:
        trace.append(("raised", exc))
    return trace


@pytest.mark.parametrize(("failures", "attempts"), CASES)
@pytest.mark.anyio
async def test_the_row_loop_retries_as_tenacity_does(
    failures: list[BaseException], attempts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 24: the per-row path's plain loop, step for step the same as `retrying`."""
    expected = await _trace(retrying, failures, attempts, monkeypatch)
    assert await _trace(retry.row_retrying, failures, attempts, monkeypatch) == expected


@pytest.mark.anyio
async def test_the_row_loop_obeys_the_testing_switch() -> None:
    started = anyio.current_time()
    with no_waits():
        async for attempt in retry.row_retrying(attempts=3, wait_initial=5, wait_max=5):
            with attempt:
                if attempt.number < 3:
                    raise server_error()
    assert anyio.current_time() - started < 1
    with pytest.raises(ValueError, match="attempts"):
        retry.row_retrying(attempts=0)
