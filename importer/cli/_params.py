"""The command line's shared parts: exit codes, value types checked at parse time, the
options several commands take, and the monitor wrapper of `run`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from importer._errors import ConsentImportError, UsageError
from importer._options import DEFAULTS
from importer._resources import resource_error

EXIT_OK, EXIT_ROWS, EXIT_CONFIG, EXIT_ABORTED, EXIT_INTERNAL = 0, 1, 2, 3, 4


class _Number(click.FloatRange):
    """A float in a range that is also finite: click's FloatRange lets nan through (every
    comparison with nan is false) and inf past an open maximum."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


#: a request's read timeout: positive, at most a day
_TIMEOUT = _Number(min=0, min_open=True, max=86400)


#: seconds to wait (grace, max wait, latency): zero or more, at most a day
_WAIT = _Number(min=0, max=86400)


#: requests per second: a rate below one request per 100 s would look like a hang
_RATE = _Number(min=0.01, max=1_000_000)


#: the sandbox's added delays, in ms: zero or more, at most an hour
_MILLIS = _Number(min=0, max=3_600_000)


#: a probability
_SHARE = _Number(min=0, max=1)


_PORT = click.IntRange(0, 65535)


_inputs = click.argument(
    "inputs", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=True)
)


_mapping = click.option(
    "--mapping",
    type=click.Path(path_type=Path),
    help="TOML mapping file: columns, value translations, defaults, crosswalk.",
)


_earlier_ledger = click.option(
    "--ledger",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The ledger of earlier runs.",
)


# Options `run` and `verify` share.
_base_url = click.option(
    "--base-url",
    envvar="CLINIKAPI_BASE_URL",
    default=DEFAULTS.base_url,
    show_default=True,
    help="API base URL (env CLINIKAPI_BASE_URL). Plain http:// only to loopback.",
)


_api_key = click.option(
    "--api-key",
    envvar="CLINIKAPI_API_KEY",
    help="API key, clk_live_… or clk_test_… "
    "(env CLINIKAPI_API_KEY; prefer the environment to the command line).",
)


_concurrency = click.option(
    "--concurrency",
    default=DEFAULTS.concurrency,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Requests in flight at once.",
)


_timeout = click.option(
    "--timeout",
    "timeout_s",
    default=DEFAULTS.timeout_s,
    show_default=True,
    type=_TIMEOUT,
    help="Read timeout per request (s).",
)


_max_attempts = click.option(
    "--max-attempts",
    default=DEFAULTS.max_attempts,
    show_default=True,
    type=click.IntRange(1, 20),
    help="Tries per request for 429s, 5xx and network errors.",
)


_max_wait = click.option(
    "--max-wait",
    "max_wait_s",
    type=_WAIT,
    help="When the rate-limit window is spent and resets later than this many "
    "seconds, stop cleanly: `run` exits 0 (paused) and resumes on the next run, "
    "`verify` exits 3.",
)


def _monitored(command: Callable[..., int]) -> Callable[..., int]:
    """`run` with its monitor outputs written for every outcome past argument parsing
    (importer.reports._monitoring): the exception still goes on to `main`, which says it."""

    @functools.wraps(command)
    def monitored(**params: Any) -> int:
        from importer.reports._monitoring import RunMonitor

        monitor = RunMonitor(
            summary_json=params["summary_json"],
            metrics_file=params.pop("metrics_file"),
            inputs=params["inputs"],
            mapping_path=params["mapping"],
            ledger=params["ledger"],
            reports=params["reports"],
            dry_run=params["dry_run"],
        )
        try:
            code = command(**params, monitor=monitor)
        except (Exception, KeyboardInterrupt) as exc:
            # A usage error is no run: the ledger is left as it is (nothing is touched).
            usage = isinstance(exc, UsageError | click.ClickException)
            monitor.failed(exc, _exit_code_of(exc), record=not usage)
            raise
        from importer._results import RunStats

        monitor.write(RunStats(), exit_code=code, run_id=None)  # a dry run (else written)
        return code

    return monitored


def _exit_code_of(exc: BaseException) -> int:
    """The exit code `main` gives `exc`."""
    if isinstance(exc, click.exceptions.Abort | KeyboardInterrupt):
        return EXIT_ABORTED
    if isinstance(exc, click.ClickException):
        return EXIT_CONFIG
    if isinstance(exc, ConsentImportError):
        return exc.exit_code
    resource = resource_error(exc, "(path not known)", started=False)
    return resource.exit_code if resource is not None else EXIT_INTERNAL


def _parse_rate_limit(text: str | None) -> tuple[int | None, float]:
    if text is None:
        return None, 60.0
    try:
        count, _, seconds = text.partition("/")
        limit, window = int(count), float(seconds or 60)
    except ValueError:
        raise UsageError(f"--rate-limit {text}: expected N/SECONDS, e.g. 100/2") from None
    if limit < 1 or window <= 0:
        raise UsageError(f"--rate-limit {text}: N and SECONDS must be positive")
    return limit, window
