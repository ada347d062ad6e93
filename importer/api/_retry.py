"""The one place tenacity is configured: what is retried, how long to wait, a testing switch.

Usage, around one row operation (the pool decides what a retry of a POST means):

    async for attempt in retrying(attempts=5, on_retry=count):
        with attempt:
            ...  # may raise; attempt.retry_state.attempt_number is 1, 2, …

Waits are "full jitter": random(0, min(wait_initial * 2**(n-1), wait_max)) before retry n,
and at least the server's Retry-After after a 429 (up to `wait_max`: a longer pause is the
shared Limiter's job, which every worker obeys and which reports it or stops the run per
`max_wait_s`, where a silent sleep here could not). The last real exception is re-raised,
never tenacity's RetryError.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import tenacity

from importer._errors import NoResponseError, RateLimitedError, ServerError

__all__ = [
    "RowRetrying",
    "compute_wait",
    "is_retryable",
    "is_testing",
    "no_waits",
    "retrying",
    "row_retrying",
    "set_testing",
]

_testing = False


def set_testing(on: bool) -> None:
    """Turn the testing switch on or off: on, retries never sleep."""
    global _testing  # one process-wide switch, like stamina's
    _testing = on


def is_testing() -> bool:
    """Whether retries currently skip their sleeps."""
    return _testing


@contextmanager
def no_waits() -> Iterator[None]:
    """Retries inside the block never sleep; the previous setting is restored after."""
    before = _testing
    set_testing(True)
    try:
        yield
    finally:
        set_testing(before)


def is_retryable(exc: BaseException) -> bool:
    """Whether trying the same operation again may succeed.

    429, 5xx and transport failures are transient; 401/403 and other 4xx are not, and
    anything else (a bug, a cancellation) must surface at once.
    """
    return isinstance(exc, RateLimitedError | ServerError | NoResponseError)


def compute_wait(
    exc: BaseException | None,
    attempt_number: int,
    *,
    wait_initial: float,
    wait_max: float,
) -> float:
    """Seconds to wait after failed attempt `attempt_number` (1-based) raised `exc`.

    Full jitter below the doubling cap; after a 429, at least its `retry_after` (at most
    `wait_max`).
    """
    cap = min(wait_initial * 2 ** max(attempt_number - 1, 0), wait_max)
    wait = random.uniform(0.0, max(cap, 0.0))
    if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
        wait = max(wait, min(exc.retry_after, wait_max))
    return wait


async def _sleep(seconds: float) -> None:
    # Still a checkpoint under the switch, so cancellation and fairness behave as in production.
    await anyio.sleep(0 if _testing else seconds)


def retrying(
    *,
    attempts: int,
    wait_initial: float = 0.5,
    wait_max: float = 10.0,
    on_retry: Callable[[BaseException, int], None] | None = None,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> tenacity.AsyncRetrying:
    """A fresh `AsyncRetrying` for one operation.

    Args:
        attempts: total tries, the first included.
        wait_initial: cap of the first backoff; the cap doubles each retry up to `wait_max`.
        on_retry: called with (exception, failed attempt number) before each retry's sleep.
        before_sleep: tenacity's raw hook, for callers that need the whole retry state.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return compute_wait(
            exc,
            state.attempt_number,
            wait_initial=wait_initial,
            wait_max=wait_max,
        )

    def hook(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(exc, state.attempt_number)
        if before_sleep is not None:
            before_sleep(state)

    return tenacity.AsyncRetrying(
        sleep=_sleep,
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait,
        retry=tenacity.retry_if_exception(is_retryable),
        before_sleep=hook,
        reraise=True,
    )


class _Attempt:
    """One try of `row_retrying`: a retryable error below the last try is kept for the
    next one (swallowed); success, any other error or the last try's error go on."""

    __slots__ = ("_loop", "number")

    def __init__(self, loop: RowRetrying, number: int) -> None:
        self._loop = loop
        self.number = number

    def __enter__(self) -> _Attempt:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        if exc is None or self.number >= self._loop.attempts or not is_retryable(exc):
            return False
        self._loop.failed = exc
        return True


class RowRetrying:
    """`retrying`'s semantics as a plain loop (issue 24: tenacity's machinery cost 49-81 µs
    a row on the send path): the same tries, predicate, waits, hook order and re-raise."""

    __slots__ = ("_number", "_on_retry", "_wait_initial", "_wait_max", "attempts", "failed")

    def __init__(
        self,
        attempts: int,
        wait_initial: float,
        wait_max: float,
        on_retry: Callable[[BaseException, int], None] | None,
    ) -> None:
        self.attempts = attempts
        self.failed: BaseException | None = None
        self._number = 0
        self._on_retry = on_retry
        self._wait_initial = wait_initial
        self._wait_max = wait_max

    def __aiter__(self) -> RowRetrying:
        return self

    async def __anext__(self) -> _Attempt:
        if self._number:
            exc, self.failed = self.failed, None
            if exc is None:  # the try succeeded
                raise StopAsyncIteration
            # As tenacity: the wait first, then the hook, then the sleep.
            wait = compute_wait(
                exc, self._number, wait_initial=self._wait_initial, wait_max=self._wait_max
            )
            if self._on_retry is not None:
                self._on_retry(exc, self._number)
            await _sleep(wait)
        self._number += 1
        return _Attempt(self, self._number)


def row_retrying(
    *,
    attempts: int,
    wait_initial: float = 0.5,
    wait_max: float = 10.0,
    on_retry: Callable[[BaseException, int], None] | None = None,
) -> RowRetrying:
    """`retrying` without tenacity, for the per-row path: used the same way
    (`async for attempt in ...: with attempt: ...`), with the same tries, predicate
    (`is_retryable`), waits (`compute_wait`), `on_retry` hook, testing switch and
    re-raise of the last real error."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    return RowRetrying(attempts, wait_initial, wait_max, on_retry)
