"""Is the server there, and is this really a first import? Checked before a row is sent.

- `check_server`: one authenticated `GET /v1/consents?count=1` before the first row. A
  wrong host, a refused port, a TLS mismatch, an answer that is not ClinikAPI's (404 on
  the base path, an HTML page) or a refused key becomes one line naming the URL and the
  cause (never the key), exit 2, before the ledger exists or is bound to that URL.
- `look_up_sample` (with `sample_refusal`): before a run creates anything, look up the
  first rows it would create (at most `SAMPLE_REQUESTS` requests); when any already
  exists on the server, the ledger does not know what the server holds (a new ledger, a
  ledger restored from a backup, another ledger's import, another tool), and creating
  them would duplicate them: exit 2. The engine holds its jobs while it samples
  (importer.engine._gate).
- `CircuitBreaker`: during a run, fed by the client with every request's outcome; when
  no request has had an answer for `WINDOW_S` or `MAX_IN_A_ROW` times in a row, every
  further request raises `ServerUnreachable` before it is sent, and the run stops
  (exit 3, resumable) instead of failing every row slowly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from importer._errors import (
    ConfigError,
    NoResponseError,
)
from importer.api._breaker import MAX_IN_A_ROW, WINDOW_S, CircuitBreaker
from importer.api._build import open_client
from importer.api._client import ClinikClient, parse_rate
from importer.api._lookup import matches_consent, search_window
from importer.api._retry import retrying

__all__ = [
    "MAX_IN_A_ROW",
    "SAMPLE_REQUESTS",
    "WINDOW_S",
    "CircuitBreaker",
    "check_server",
    "look_up_sample",
    "refused_key",
    "sample_refusal",
]

log = logging.getLogger("importer.preflight")

#: The most requests the check before creating spends.
SAMPLE_REQUESTS = 20


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


# -- the check before creating ---------------------------------------------------------


async def look_up_sample(
    client: ClinikClient, bodies: Sequence[dict[str, Any]], *, most: int = SAMPLE_REQUESTS
) -> tuple[int, int]:
    """Look each body up (at most `most` requests, never more than `SAMPLE_REQUESTS`,
    retries included): (rows checked, rows found on the server).

    Raises what the client raises once its retries are spent (the caller stops the run).
    """
    most = min(most, SAMPLE_REQUESTS)
    start = client.stats.requests
    checked = found = 0
    for body in bodies:
        if client.stats.requests - start >= most:
            break
        date_from, date_to = search_window(body)
        async for attempt in retrying(attempts=3):
            with attempt:
                consents = await client.search_consents(
                    patient_id=body["patientId"], date_from=date_from, date_to=date_to
                )
        checked += 1
        found += any(matches_consent(c, body) for c in consents)
    return checked, found


def sample_refusal(found: int, checked: int, base_url: str, ledger: Path, *, fresh: bool) -> str:
    """Why a run whose sample exists on the server creates nothing, and the ways on."""
    host = urlsplit(base_url).netloc
    cause = (
        "it has created nothing: this looks like a rerun with a new ledger"
        if fresh
        else "this looks like a ledger restored from a backup (it lacks what later runs "
        "created), the ledger of another import of these rows, or consents another tool made"
    )
    return (
        f"{found} of the first {checked} valid rows already exist in ClinikAPI at {host}, "
        f"yet the ledger {ledger} would create them: {cause}; nothing was created. Rerun "
        "with the ledger that imported them (--ledger PATH), or pass --skip-existing to adopt "
        "what the server holds (one lookup per new row), or --no-preflight to skip this check"
    )


def run_checks(base_url: str, api_key: str, *, timeout_s: float) -> tuple[None, int, int | None]:
    """Run the server check on its own event loop. Returns None, the requests spent and
    the server's rate-limit window size when it said (the check before creating spends
    at most a tenth of it: a tiny plan's budget is for consents)."""

    async def checks() -> tuple[None, int, int | None]:
        async with open_client(base_url, api_key, concurrency=1, timeout_s=timeout_s) as client:
            response = await check_server(client)
            window = parse_rate(_lower(response.headers), {})
            return None, client.stats.requests, window.limit if window else None

    return anyio.run(checks)


def _lower(headers: httpx.Headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
