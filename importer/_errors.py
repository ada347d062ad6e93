"""The one exception tree of consent-import.

Every message says what went wrong and what to do next, in one line, and never holds
a cell value or a whole API key (values can be PHI).

    ConsentImportError            base; `exit_code` is what the CLI exits with
    ├── UsageError                bad options (exit 2)
    ├── ConfigError               bad mapping file, crosswalk, ledger lock (exit 2)
    │   └── ApiKeyError           no key, or not a key's shape (also a UsageError: no run)
    ├── InputError                unreadable, empty or malformed input file (exit 2)
    ├── ResourceError             the machine refused a file: disk full, read-only file
    │                             system, a file gone, no permission (exit 2 before the
    │                             run started, 3 once it had: resumable); not a bug
    ├── AbortError                the run stopped before the end: auth failure, signal (exit 3)
    │   ├── LimiterClosed         the run is stopping: this request was never started
    │   ├── BudgetWaitTooLong     the rate-limit budget resets past --max-wait: the run
    │   │                         pauses (exit 0, rerun after the reset to resume)
    │   └── ServerUnreachable     every request failed to get an answer for a while (exit 3)
    ├── ApiError                  a ClinikAPI error response (status, code, request id, issues)
    │   ├── AuthError             401 / 403: the key is wrong or lacks scope; aborts a run
    │   ├── RateLimitedError      429, with the server's Retry-After
    │   ├── ServerError           5xx: the request may or may not have been applied
    │   └── ClientRequestError    any other 4xx (404, 409, 422, …): the row fails
    └── NoResponseError           no answer: the request may have reached the server
                                  (timeout after sending, dropped connection); named
                                  apart from httpx.TransportError, which it wraps
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class ConsentImportError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1
    #: A run that began and then stopped with this error: its id in the ledger and its
    #: figures (importer._results.RunStats), which a monitor reports as that run's
    #: (None: no run began, or it was not recorded).
    run_id: int | None = None
    stats: Any = None


class UsageError(ConsentImportError):
    """The command line is wrong."""

    exit_code = 2


class ConfigError(ConsentImportError):
    """The mapping file, crosswalk, key or ledger cannot be used as given."""

    exit_code = 2


class ApiKeyError(UsageError, ConfigError):
    """No API key, or one not shaped as a ClinikAPI key: a ConfigError, and a mistake
    found before anything is opened or sent, so no run (nothing is recorded for it)."""


def no_such_file(what: str, path: object, hint: str) -> str:
    """The one wording of a missing file: `<what> <path>: no such file; <hint>` (an
    input file is only its path, as the reader's other messages are)."""
    return f"{what} {path}: no such file; {hint}".lstrip()


def unknown_key(where: str, key: str, allowed: Iterable[str]) -> str:
    """The one wording of a key a mapping table does not take, with the closest allowed
    key when one is close: `<where>: unknown key 'K'; did you mean 'A'? (allowed: ...)`."""
    names = sorted(allowed)
    guess = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean '{guess[0]}'?" if guess else ""
    return f"{where}: unknown key '{key}'{hint} (allowed: {', '.join(names)})"


def no_unknown_keys(table: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """Raise `ConfigError` (`unknown_key`) for the first key of `table` not in `allowed`."""
    names = set(allowed)
    for key in table:
        if key not in names:
            raise ConfigError(unknown_key(where, key, names))


class InputError(ConsentImportError):
    """An input file cannot be read as a table of consents."""

    exit_code = 2


class ResourceError(ConsentImportError):
    """The machine refused a file operation (importer._resources names the cause).

    Args:
        path: the file it was about.
        cause: what the machine said, in words ("the disk is full").
        started: whether the run had started: then exit 3 (resumable, the ledger
            consistent), else exit 2.
    """

    def __init__(self, message: str, *, path: object, cause: str, started: bool) -> None:
        super().__init__(message)
        self.path, self.cause, self.started = path, cause, started
        self.exit_code = 3 if started else 2


class AbortError(ConsentImportError):
    """The run stopped before every row was processed; rerun to resume."""

    exit_code = 3


class LimiterClosed(AbortError):
    """The run is stopping: no new request may start. Nothing was sent."""

    def __init__(self, message: str = "the run is stopping; no new request starts") -> None:
        super().__init__(message)


class BudgetWaitTooLong(AbortError):
    """The window budget is spent (or the server asked for a pause) for longer than allowed.

    The run stops cleanly and counts as paused, not failed (exit 0); running it again
    after the reset resumes it.
    """

    exit_code = 0

    def __init__(self, reset_in_s: float) -> None:
        super().__init__(
            f"the ClinikAPI rate-limit budget is spent for another {reset_in_s:,.0f} s, longer "
            "than the allowed wait; run the import again after that to resume"
        )
        self.reset_in_s = reset_in_s


class ServerUnreachable(AbortError):
    """The circuit breaker tripped: no request got an answer for too long or too often.

    Raised before a request is sent, so the request that gets it never left this machine.
    """


class ApiError(ConsentImportError):
    """An error response from ClinikAPI.

    Args:
        status: the HTTP status.
        code: the `code` of the error body (`VALIDATION_ERROR`, …), or "" when absent.
        request_id: the server's request id, for support tickets.
        issues: the `diagnostics` strings of the error body (fields and rules, no values).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str = "",
        request_id: str = "",
        issues: list[str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.issues = issues or []
        self.retry_after = retry_after


class AuthError(ApiError):
    """401 or 403: no request with this key will succeed, so the run aborts."""

    exit_code = 3


class RateLimitedError(ApiError):
    """429: the plan's window is spent; wait `retry_after` seconds."""


class ServerError(ApiError):
    """5xx: the server failed; a POST may still have been stored."""


class ClientRequestError(ApiError):
    """Any other 4xx: the request itself is wrong and retrying cannot help."""


class NoResponseError(ConsentImportError):
    """No response: the request may or may not have reached the server.

    Args:
        sent: False only when the connection failed before the request could be sent,
            so the server certainly did not act on it.
    """

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent
