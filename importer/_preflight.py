"""Is the server there, and is this really a first import? Checked before a row is sent.

- `check_server`: one authenticated `GET /v1/consents?count=1` before the first row. A
  wrong host, a refused port, a TLS mismatch, an answer that is not ClinikAPI's (404 on
  the base path, an HTML page) or a refused key becomes one line naming the URL and the
  cause (never the key), exit 2, before the ledger exists or is bound to that URL.
- `check_first_run`: on a ledger that has created nothing, look up the first valid rows
  (at most `SAMPLE_REQUESTS` requests); when any already exists on the server, this is a
  rerun with a new ledger, and creating everything again would duplicate it: exit 2.
- `CircuitBreaker`: during a run, fed by the client with every request's outcome; when
  no request has had an answer for `WINDOW_S` or `MAX_IN_A_ROW` times in a row, every
  further request raises `ServerUnreachable` before it is sent, and the run stops
  (exit 3, resumable) instead of failing every row slowly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx

from importer._breaker import MAX_IN_A_ROW, WINDOW_S, CircuitBreaker
from importer._client import ClinikClient, make_http_client, parse_rate
from importer._errors import (
    AbortError,
    AuthError,
    ConfigError,
    ConsentImportError,
    NoResponseError,
)
from importer._limiter import Limiter, RateLimitInfo
from importer._lookup import matches_consent, search_window
from importer._normalize import Row
from importer._retry import retrying

__all__ = [
    "MAX_IN_A_ROW",
    "SAMPLE_REQUESTS",
    "WINDOW_S",
    "CircuitBreaker",
    "check_first_run",
    "check_server",
    "refused_key",
]

log = logging.getLogger("importer.preflight")

#: The most requests the first-run check spends.
SAMPLE_REQUESTS = 20
#: Rows read at most while looking for the sample's valid rows (all kept in memory).
_SAMPLE_READ_MAX = 2000


async def check_server(client: ClinikClient) -> httpx.Response:
    """One authenticated request; raise ConfigError (exit 2) unless ClinikAPI answered."""
    where = client.base_url + "/v1/consents"
    try:
        response = await client.probe()
    except NoResponseError as exc:
        raise ConfigError(
            f"cannot reach ClinikAPI at {where}: {_cause(exc)}; check --base-url "
            "(nothing was sent, the ledger was not touched)"
        ) from None
    status = response.status_code
    kind = (response.headers.get("content-type") or "no content type").split(";")[0].strip()
    try:
        body = json.loads(response.content) if response.content.strip() else None
    except ValueError:
        body = None
    envelope = isinstance(body, dict) and bool({"data", "error", "code"} & set(body))
    code = body.get("code") if isinstance(body, dict) else None
    if status in (401, 403):
        raise refused_key(where, client.masked_key, status, code or response.reason_phrase)
    if status == 404:
        raise ConfigError(
            f"{where} answered 404: no ClinikAPI consents endpoint there; check --base-url "
            "and its path (the client appends /v1/consents)"
        )
    if not envelope and status < 500:
        raise ConfigError(
            f"{where} answered {status} with {kind[:60]}, not ClinikAPI's JSON: check "
            "--base-url (a proxy's or another service's page?)"
        )
    if status >= 500 or status == 429:
        # The server is there; the run's retries and budget handle a passing fault.
        log.warning(
            "preflight: %s answered %d; starting anyway",
            where,
            status,
            extra={"fields": {"event": "preflight", "status": status}},
        )
    return response


def refused_key(where: str, masked_key: str, status: int, code: str) -> ConfigError:
    """A 401/403 before anything was done: no request with this key can succeed, so it is
    a setting to fix (exit 2), not a run to resume."""
    return ConfigError(
        f"ClinikAPI at {where} refused the API key {masked_key} ({status} {code}): check "
        "the key and its scope (nothing was sent)"
    )


def _cause(exc: NoResponseError) -> str:
    """Why a request got no answer, in words an operator acts on."""
    inner = exc.__cause__
    text = str(inner or exc)
    if isinstance(inner, httpx.ConnectTimeout):
        return "connecting timed out (a firewall, or a host that is down)"
    if isinstance(inner, httpx.ConnectError):
        if "gaierror" in text or "Name or service" in text or "nodename" in text:
            return "the host name does not resolve (DNS)"
        if "refused" in text.lower():
            return "connection refused (nothing listens on that port)"
        if "SSL" in text or "TLS" in text or "certificate" in text.lower():
            return (
                "the TLS handshake failed (https:// to a plain-http port, or a certificate "
                f"this machine does not trust: {text[:120]})"
            )
        return f"cannot connect ({text[:160]})"
    if isinstance(inner, httpx.ReadTimeout):
        return "no answer within --timeout"
    if isinstance(inner, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "the server closed the connection without an HTTP answer (http:// to an https port?)"
    return f"{type(inner or exc).__name__}: {text[:160]}"


# -- the first-run check ---------------------------------------------------------------


async def check_first_run(
    rows: Iterator[Row], client: ClinikClient, *, ledger: Path, most: int = SAMPLE_REQUESTS
) -> Iterator[Row]:
    """Look the first valid rows up (at most `most` requests, never more than
    `SAMPLE_REQUESTS`); raise ConfigError (exit 2) if any already exists.

    Returns `rows` as it was (the rows read for the sample come first again).
    """
    most = min(most, SAMPLE_REQUESTS)
    if most < 1:
        log.warning(
            "first-run check skipped: the server's rate-limit window is too small to spare "
            "requests for it",
            extra={"fields": {"event": "first_run_check", "skipped": True}},
        )
        return rows
    read: list[Row] = []
    sample: list[Row] = []
    for row in rows:
        read.append(row)
        if row.valid:
            sample.append(row)
        if len(sample) >= most or len(read) >= _SAMPLE_READ_MAX:
            break
    again = chain(read, rows)
    start = client.stats.requests
    checked = found = 0
    for row in sample:
        if client.stats.requests - start >= most:
            break
        body = row.body()
        try:
            async for attempt in retrying(attempts=3):
                with attempt:
                    date_from, date_to = search_window(body)
                    consents = await client.search_consents(
                        patient_id=body["patientId"], date_from=date_from, date_to=date_to
                    )
        except AuthError:
            raise
        except ConsentImportError as exc:
            raise AbortError(
                f"the first-run check could not finish ({exc}); nothing was created; rerun, "
                "or pass --no-preflight to skip the check"
            ) from None
        checked += 1
        found += any(matches_consent(c, body) for c in consents)
    if found:
        host = urlsplit(client.base_url).netloc
        raise ConfigError(
            f"{found} of the first {checked} valid rows already exist in ClinikAPI at {host}, "
            f"yet the ledger {ledger} has created nothing: this looks like a rerun with a new "
            "ledger; nothing was sent. Rerun with the ledger that imported them (--ledger "
            "PATH), or pass --skip-existing to adopt the existing consents (one lookup per row)"
        )
    log.info(
        "first-run check: none of %d sampled rows exists on the server",
        checked,
        extra={"fields": {"event": "first_run_check", "checked": checked, "found": 0}},
    )
    return again


class _WindowLimiter(Limiter):
    """A limiter that also keeps the last rate-limit window the server reported."""

    window: RateLimitInfo | None = None

    def observe(self, rate: RateLimitInfo) -> None:
        self.window = rate
        super().observe(rate)


def run_checks(
    base_url: str,
    api_key: str,
    *,
    timeout_s: float,
    max_wait_s: float | None = None,
    on_wait: Callable[[float, str], None] | None = None,
    rows: Iterator[Row] | None = None,
    ledger: Path | None = None,
    window_limit: int | None = None,
) -> tuple[Iterator[Row] | None, int, int | None]:
    """Run the server check or, given `rows`, the first-run check, on their own event
    loop. Returns the rows (as given, sample first again), the requests spent and the
    server's rate-limit window size when it said.

    The lookups keep to the server's window as the run does (`max_wait_s`), and spend at
    most a tenth of it (`window_limit`, from the server check): a tiny plan's budget is
    for consents.
    """

    async def checks() -> tuple[Iterator[Row] | None, int, int | None]:
        http = make_http_client(base_url=base_url, concurrency=1, timeout_s=timeout_s)
        limiter = _WindowLimiter(concurrency=1, max_wait_s=max_wait_s, on_wait=on_wait)
        async with http:
            client = ClinikClient(http, base_url=base_url, api_key=api_key, limiter=limiter)
            if rows is None:
                response = await check_server(client)
                window = parse_rate(_lower(response.headers), {})
                return None, client.stats.requests, window.limit if window else None
            assert ledger is not None
            most = SAMPLE_REQUESTS if window_limit is None else window_limit // 10
            checked = await check_first_run(rows, client, ledger=ledger, most=most)
            return checked, client.stats.requests, window_limit

    return anyio.run(checks)


def _lower(headers: httpx.Headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
