"""Async ClinikAPI client over an injected `httpx.AsyncClient`.

Each method makes exactly one request and either returns the parsed envelope or raises one
of the typed errors of `importer._errors`. Nothing here retries: whether a failed POST may be
sent again (after a lookup) is the pool's decision, with `importer.api._retry`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import time
import urllib.request
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from pydantic_core import from_json

from importer._errors import (
    ApiError,
    ApiKeyError,
    AuthError,
    ClientRequestError,
    ConfigError,
    NoResponseError,
    RateLimitedError,
    ServerError,
)
from importer._version import __version__
from importer.api._http11 import Http11Transport, header_lines, request_bytes
from importer.api._limiter import Limiter, RateLimitInfo

if TYPE_CHECKING:
    from importer.api._breaker import CircuitBreaker

__all__ = [
    "ApiResponse",
    "ClientStats",
    "ClinikClient",
    "RateLimitInfo",
    "check_api_key",
    "check_base_url",
    "make_http_client",
    "mask_key",
    "parse_rate",
    "proxy_for",
]

USER_AGENT = f"consent-import/{__version__}"
#: Pause after a 429 that says neither Retry-After nor X-RateLimit-Reset.
DEFAULT_RETRY_AFTER_S = 1.0
#: The API's largest page.
MAX_PAGE_SIZE = 100

_KEY_PREFIX = re.compile(r"clk_(?:live|test)_")
# The API facts: the prefix, then only letters and digits (any other shape is refused by
# the server as INVALID_KEY_FORMAT, so it is refused here before a run starts).
_KEY_SHAPE = re.compile(r"clk_(?:live|test)_[A-Za-z0-9]+", re.ASCII)
# Failures where the request certainly never left this machine; anything else may have
# reached the server, so a POST must be looked up before it is sent again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)
_MAX_ISSUES_SHOWN = 5
_CONSENTS = "/v1/consents"
_MAX_ISSUE_CHARS = 300
# The response headers `_send` reads, lower-cased (see `_wanted_headers`).
_WANTED = frozenset(
    {
        b"x-ratelimit-limit",
        b"x-ratelimit-remaining",
        b"x-ratelimit-reset",
        b"x-request-id",
        b"retry-after",
        b"content-type",
    }
)
# Response headers that make `_Direct` hand the response to httpx after all.
_HTTPX_READS = frozenset({b"content-encoding", b"set-cookie"})
# What httpx's `json=` would send, encoded once here so the body is not walked twice.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


@dataclass(frozen=True)
class ApiResponse:
    """One successful response, unwrapped from the `{data, meta}` envelope."""

    status: int
    data: Any
    meta: dict[str, Any]
    request_id: str
    rate: RateLimitInfo | None


@dataclass
class ClientStats:
    """Counters of everything a client sent, for the run summary."""

    requests: int = 0
    rate_limited: int = 0
    transport_errors: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


def mask_key(key: str) -> str:
    """The key as it may be shown: its `clk_live_`/`clk_test_` prefix and last 4 characters.

    The last 4 are left out of keys too short to spare them.
    """
    match = _KEY_PREFIX.match(key)
    prefix = match.group(0) if match else ""
    rest = key[len(prefix) :]
    tail = rest[-4:] if len(rest) >= 8 else ""
    return f"{prefix}…{tail}"


def check_api_key(key: str | None) -> str:
    """Return the key stripped of surrounding blanks, or raise ApiKeyError (a
    ConfigError) if missing or misshapen."""
    if key is None or not key.strip():
        raise ApiKeyError("no ClinikAPI key given: pass a key like clk_live_… or clk_test_…")
    key = key.strip()
    if not _KEY_SHAPE.fullmatch(key):
        raise ApiKeyError(
            f"the API key {mask_key(key)} is not a ClinikAPI key: keys are clk_live_… "
            "(production) or clk_test_… (sandbox) followed by letters and digits only; "
            "check the key you passed"
        )
    return key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str) -> str:
    """Return the base URL without a trailing "/" (or "/v1"), or raise ConfigError.

    https anywhere; plain http only to this machine, because the payload is health data.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"a {scheme}://" if scheme else "no"
        raise ConfigError(f"the base URL has {shown} scheme: use https://host")
    try:
        host = parts.hostname
        _ = parts.port  # parsing the port is what raises on a bad one
    except ValueError:
        raise ConfigError("the base URL has a bad port: use https://host[:port]") from None
    if not host:
        raise ConfigError("the base URL has no host: use https://host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("the base URL must not hold credentials: pass the API key on its own")
    if parts.query or parts.fragment:
        raise ConfigError(f"the base URL for {host} must not have a query or fragment")
    if scheme == "http" and not _is_loopback(host):
        raise ConfigError(
            f"plain http:// to {host} would send health data unencrypted: use https://, "
            "or http:// only to localhost, 127.0.0.1 or ::1"
        )
    path = parts.path.rstrip("/")
    # Every path we send starts with /v1/, so a base URL copied with it would double it.
    path = path.removesuffix("/v1")
    return urlunsplit((scheme, parts.netloc, path, "", "")).rstrip("/")


def make_http_client(
    *,
    base_url: str,
    concurrency: int,
    timeout_s: float,
    connect_timeout_s: float = 10.0,
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` for `base_url` with up to `concurrency` kept-alive connections.

    Over `importer.api._http11.Http11Transport` (httpx's own transport cost the run about twice
    the CPU per request; see that module), unless the environment routes `base_url`
    through a proxy (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, less `NO_PROXY`): then
    httpx's own transport, which speaks to proxies, slower but there.

    Args:
        timeout_s: read, write and pool timeout.
        connect_timeout_s: connect timeout, shorter: a dead host should fail fast.
    """
    timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
    if proxy_for(base_url) is not None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        return _HttpClient(timeout=timeout, limits=limits, follow_redirects=False, trust_env=True)
    return _HttpClient(timeout=timeout, raw=Http11Transport(concurrency), follow_redirects=False)


def proxy_for(base_url: str) -> str | None:
    """The proxy the environment sets for `base_url`, if any (as curl and httpx read it).

    Never for a loopback host: a proxy's loopback is another machine's (the sandbox).
    """
    url = httpx.URL(base_url)
    if _is_loopback(url.host):
        return None
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(url.host):
        return None
    return proxy


class _LazyCookies(httpx.Cookies):
    """Cookies that look at a response only when it has a Set-Cookie header.

    httpx hands every response to the cookie jar through urllib request and response
    adapters, a real cost per request, even when the response sets no cookie.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class _HttpClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` whose cookies are `_LazyCookies`.

    Args:
        raw: the transport, when it is an `Http11Transport` the `ClinikClient` may also
            hand requests to directly (`_Direct`).
    """

    def __init__(self, *, raw: Http11Transport | None = None, **options: Any) -> None:
        if raw is not None:
            options["transport"] = raw
        super().__init__(**options)
        self.raw = raw
        self._lazy_cookies = _LazyCookies(super().cookies)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._lazy_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._lazy_cookies = _LazyCookies(cookies)


class _Direct:
    """The client's requests handed to its `Http11Transport` as bytes, past httpx's
    Request, Response and Headers (issue 24: they were a fifth of the send loop's CPU).

    The header lines are httpx's own, built once by `build_request` (Host, the client's
    defaults, the API's headers), checked as the transport checks them; a request adds
    its line and its Content-Length. Used while the cookie jar is empty, for requests
    without a query (a search goes through httpx). A response with a Content-Encoding
    or a cookie is handed to httpx after all, to be decoded and kept as it would be.
    """

    __slots__ = ("_head", "_http", "_origin", "_prefix", "_timeouts", "_transport")

    def __init__(
        self,
        http: _HttpClient,
        transport: Http11Transport,
        url: httpx.URL,
        headers: dict[str, str],
    ) -> None:
        self._http = http
        self._transport = transport
        self._origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        self._prefix = url.raw_path.removesuffix(_CONSENTS.encode())
        self._head = header_lines(http.build_request("GET", url, headers=headers).headers.raw)
        self._timeouts = http.timeout.as_dict()

    @classmethod
    def of(cls, http: httpx.AsyncClient, url: httpx.URL, headers: dict[str, str]) -> _Direct | None:
        """A `_Direct` for `http` if it is `make_http_client`'s over an `Http11Transport`
        with nothing httpx would add per request (auth, hooks, params), else None."""
        if not isinstance(http, _HttpClient) or http.raw is None:
            return None
        if http.auth is not None or http.params or any(http.event_hooks.values()):
            return None
        if url.query or url.scheme not in ("http", "https"):
            return None
        return cls(http, http.raw, url, headers)

    @property
    def usable(self) -> bool:
        """Whether httpx would send nothing more (no cookie) and the client is open."""
        http = self._http
        # The jar's own dict, not `not http.cookies` (a walk of the jar's generators a
        # request): empty until a cookie is set; a cookie gone leaves it non-empty, which
        # only sends requests through httpx.
        return not http.is_closed and not getattr(http.cookies.jar, "_cookies", True)

    async def send(
        self, method: str, path: str, content: bytes | None
    ) -> tuple[int, dict[str, str], bytes, str | None]:
        """One request: its status, `_wanted_headers`, body, and reason (None: by status)."""
        target = self._prefix + path.encode("ascii")
        data = request_bytes(method.encode("ascii"), target, self._head, content or b"")
        raw = await self._transport.exchange(self._origin, data, self._timeouts)
        headers = _wanted_raw(raw.headers)
        if headers is not None:
            return raw.status, headers, raw.content, None
        # As httpx reads a response: the body decoded, the cookies kept.
        http = self._http
        request = http.build_request(
            method, self._transport_url(target), content=content, headers=None
        )
        response = httpx.Response(
            raw.status,
            headers=raw.headers,
            stream=httpx.ByteStream(raw.content),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )
        await response.aread()
        http.cookies.extract_cookies(response)
        return (
            response.status_code,
            _wanted_headers(response.headers),
            response.content,
            response.reason_phrase,
        )

    def _transport_url(self, target: bytes) -> httpx.URL:
        scheme, host, port = self._origin
        return httpx.URL(scheme=scheme, host=host, port=port, raw_path=target)


# -- parsing --------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if type(value) is str and len(value) < 16 and value.isascii() and value.isdigit():
        return float(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _seconds_until(value: Any) -> float | None:
    """A reset given as seconds, as an epoch timestamp, or as an ISO 8601 instant."""
    number = _number(value)
    if number is not None:
        # Some servers send the reset instant in epoch seconds rather than a delay.
        if number > 1e9:
            return max(0.0, number - time.time())
        return max(0.0, number)
    if isinstance(value, str) and value.strip():
        try:
            instant = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        return max(0.0, (instant - datetime.now(UTC)).total_seconds())
    return None


def _retry_after(value: str | None) -> float | None:
    """Retry-After as delay seconds or as an HTTP date."""
    if value is None:
        return None
    number = _number(value)
    if number is not None:
        return max(0.0, number)
    try:
        instant = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return max(0.0, (instant - datetime.now(UTC)).total_seconds())


def parse_rate(headers: Mapping[str, str], meta: dict[str, Any]) -> RateLimitInfo | None:
    """The window from X-RateLimit-* headers, each falling back to its `meta` twin.

    `headers` is an `httpx.Headers`, or a dict keyed by lower-case names.
    """
    limit = _number(headers.get("x-ratelimit-limit"))
    if limit is None:
        limit = _number(meta.get("rateLimitTotal", meta.get("rateLimitLimit")))
    remaining = _number(headers.get("x-ratelimit-remaining"))
    if remaining is None:
        remaining = _number(meta.get("rateLimitRemaining"))
    reset = _seconds_until(headers.get("x-ratelimit-reset"))
    if reset is None:
        reset = _seconds_until(meta.get("rateLimitReset"))
    if limit is None or remaining is None or reset is None:
        return None
    return RateLimitInfo(limit=int(limit), remaining=int(remaining), reset_s=reset)


def _json(content: bytes) -> Any:
    """The body as JSON; None when empty; raises ValueError when it is not JSON.

    Read by pydantic_core's parser (a dependency through pydantic), about a third of
    `json.loads`'s time a response on this machine (issue 24); what it refuses (a BOM,
    UTF-16, lone surrogates, not JSON) goes to `json.loads`, so the answer is always
    `json.loads`'s.
    """
    try:
        return from_json(content)
    except ValueError:
        if not content.strip():
            return None
        return json.loads(content)


def _wanted_headers(headers: httpx.Headers) -> dict[str, str]:
    """The response headers `_send` reads, by lower-case name, read in one pass.

    Each `httpx.Headers.get` scans and decodes every header; repeated names are joined
    with ", " as `get` joins them.
    """
    found: dict[str, str] = {}
    encoding = headers.encoding
    for raw_key, raw_value in headers.raw:
        key = raw_key.lower()
        if key in _WANTED:
            name = key.decode(encoding)
            value = raw_value.decode(encoding)
            found[name] = f"{found[name]}, {value}" if name in found else value
    return found


def _wanted_raw(raw: list[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """`_wanted_headers` of a response as the transport read it; None when httpx must
    read it instead (a Content-Encoding to undo, a cookie for the jar)."""
    found: dict[str, str] = {}
    try:
        for raw_key, raw_value in raw:
            key = raw_key.lower()
            if key in _WANTED:
                name = key.decode("ascii")
                value = raw_value.decode("ascii")
                found[name] = f"{found[name]}, {value}" if name in found else value
            elif key in _HTTPX_READS:
                return None
    except UnicodeDecodeError:
        return None  # httpx's choice of the headers' encoding
    return found


def _issues(raw: Any) -> list[str]:
    if not isinstance(raw, list):
        return []
    issues: list[str] = []
    for item in raw:
        text: Any = item
        if isinstance(item, dict):
            text = item.get("diagnostics") or item.get("message") or item.get("code")
        if isinstance(text, str) and text.strip():
            issues.append(text.strip()[:_MAX_ISSUE_CHARS])
    return issues


def _page(response: ApiResponse, label: str) -> tuple[list[dict[str, Any]], str | None]:
    """The consents of one search page and the cursor of the next, if any."""
    data = response.data
    items: Any = None
    cursor: Any = response.meta.get("nextCursor") or response.meta.get("next_cursor")
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        for key in ("data", "items", "consents", "results", "entry"):
            if isinstance(data.get(key), list):
                items = data[key]
                break
        has_more = data.get("hasMore", data.get("has_more"))
        inner = data.get("cursor") or data.get("nextCursor")
        if has_more is True and not inner and not cursor:
            raise ServerError(
                f"{label}: {response.status} page says hasMore but has no cursor; "
                "the search cannot be completed",
                status=response.status,
                request_id=response.request_id,
            )
        if inner and has_more is not False:
            cursor = inner
    if items is None:
        # A lookup that cannot be read must not pass for "not found": that re-posts.
        raise ServerError(
            f"{label}: {response.status} search page has no list of consents",
            status=response.status,
            request_id=response.request_id,
        )
    consents: list[dict[str, Any]] = []
    for item in items:
        # FHIR bundles wrap each resource in an entry.
        if isinstance(item, dict) and isinstance(item.get("resource"), dict):
            item = item["resource"]
        if isinstance(item, dict):
            consents.append(item)
    return consents, str(cursor) if cursor else None


# -- the client -----------------------------------------------------------------------------


class ClinikClient:
    """ClinikAPI consent endpoints; one request per call, typed errors.

    Args:
        http: the transport, e.g. from `make_http_client`; tests pass a MockTransport.
        base_url: checked with `check_base_url`.
        api_key: checked with `check_api_key`.
        limiter: shared by every worker; each request is made inside `limiter.slot()`.
        breaker: told whether each request got an HTTP answer; once tripped, no request
            is sent (`ServerUnreachable`).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        limiter: Limiter | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._http = http
        self.breaker = breaker
        # httpx logs every request's URL at INFO, and a search's URL holds a patient id:
        # an application that turns INFO on for everything must not get PHI from us.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.base_url = check_base_url(base_url)
        key = check_api_key(api_key)
        self.masked_key = mask_key(key)
        self._headers = {
            "x-api-key": key,
            "Content-Type": "application/json",
            "Accept": "application/fhir+json",
            "User-Agent": USER_AGENT,
        }
        self.limiter = limiter
        self.stats = ClientStats()
        # The collection's URL parsed once: httpx parses a string URL on every request,
        # and on this machine that is half the cost of building one. Per-consent paths
        # are parsed as they come.
        self._consents_url = httpx.URL(self.base_url + _CONSENTS)
        self._direct = _Direct.of(http, self._consents_url, self._headers)

    def __repr__(self) -> str:
        return f"ClinikClient(base_url={self.base_url!r}, api_key={self.masked_key!r})"

    async def create_consent(self, body: dict[str, Any] | bytes) -> ApiResponse:
        """POST /v1/consents; `data` is the new consent with its `id`.

        `body` may be given already encoded, as UTF-8 JSON bytes.
        """
        return await self._request("POST", _CONSENTS, json_body=body)

    async def get_consent(self, consent_id: str) -> ApiResponse:
        """GET /v1/consents/{id}."""
        return await self._request("GET", _consent_path(consent_id))

    async def patch_consent(self, consent_id: str, body: dict[str, Any] | bytes) -> ApiResponse:
        """PATCH /v1/consents/{id}; each field given replaces the stored one.

        `body` may be given already encoded, as UTF-8 JSON bytes.
        """
        return await self._request("PATCH", _consent_path(consent_id), json_body=body)

    async def delete_consent(self, consent_id: str) -> ApiResponse:
        """DELETE /v1/consents/{id} (`undo` of a consent a run created)."""
        return await self._request("DELETE", _consent_path(consent_id))

    async def search_consents(
        self,
        *,
        patient_id: str,
        date_from: str | None = None,
        date_to: str | None = None,
        status: str | None = None,
        count: int = 100,
    ) -> list[dict[str, Any]]:
        """Every consent of a patient matching the filters, following the page cursors.

        Args:
            date_from: YYYY-MM-DD, inclusive.
            date_to: YYYY-MM-DD, inclusive.
            count: page size, at most 100.
        """
        pages = self.search_pages(
            patient_id=patient_id, date_from=date_from, date_to=date_to, status=status, count=count
        )
        return [consent async for page, _ in pages for consent in page]

    async def search_pages(
        self,
        *,
        patient_id: str,
        date_from: str | None = None,
        date_to: str | None = None,
        status: str | None = None,
        count: int = 100,
    ) -> AsyncGenerator[tuple[list[dict[str, Any]], bool], None]:
        """The pages of `search_consents`, one request each, for a caller that may stop
        early: each page's consents, and whether another page follows."""
        params: dict[str, str] = {
            "patientId": patient_id,
            "count": str(max(1, min(count, MAX_PAGE_SIZE))),
        }
        if date_from:
            params["dateFrom"] = date_from
        if date_to:
            params["dateTo"] = date_to
        if status:
            params["status"] = status
        label = "GET /v1/consents"
        seen: set[str] = set()
        while True:
            response = await self._request("GET", _CONSENTS, params=params)
            page, cursor = _page(response, label)
            yield page, cursor is not None
            if cursor is None:
                return
            if cursor in seen:
                # A loop would never end; a partial answer could pass for "not found".
                raise ServerError(
                    f"{label}: {response.status} the page cursor repeated; "
                    "the search cannot be completed",
                    status=response.status,
                    request_id=response.request_id,
                )
            seen.add(cursor)
            params["cursor"] = cursor

    async def probe(self) -> httpx.Response:
        """GET /v1/consents?count=1, the cheapest authenticated request, answered raw (the
        preflight judges whether ClinikAPI answered); raises NoResponseError without one."""
        self.stats.requests += 1
        try:
            return await self._http.request(
                "GET", self._consents_url, params={"count": "1"}, headers=self._headers
            )
        except httpx.RequestError as exc:
            raise _transport_error(f"GET {_CONSENTS}", exc) from exc

    # -- one request ------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> ApiResponse:
        if self.limiter is None:
            return await self._send(method, path, json_body, params)
        async with self.limiter.slot():
            return await self._send(method, path, json_body, params)

    def _url(self, path: str) -> httpx.URL | str:
        return self._consents_url if path == _CONSENTS else self.base_url + path

    async def _send(
        self,
        method: str,
        path: str,
        json_body: dict[str, Any] | bytes | None,
        params: dict[str, str] | None,
    ) -> ApiResponse:
        # The label never holds the query: a patient id is nobody's business in a log line.
        label = f"{method} {path}"
        if self.breaker is not None:
            self.breaker.check()
        self.stats.requests += 1
        content: bytes | None = None
        if json_body is not None:
            # As httpx's json= would encode it; a ValueError (NaN) or TypeError surfaces
            # here as it did from httpx, before anything is sent.
            content = json_body if isinstance(json_body, bytes) else _encode(json_body).encode()
        try:
            direct = self._direct
            if direct is not None and params is None and direct.usable:
                reply = await direct.send(method, path, content)
            else:
                reply = None
            if reply is None:
                response = await self._http.request(
                    method,
                    self._url(path),
                    content=content,
                    params=params,
                    headers=self._headers,
                )
                reply = (
                    response.status_code,
                    _wanted_headers(response.headers),
                    response.content,
                    response.reason_phrase,
                )
        except httpx.RequestError as exc:
            self.stats.transport_errors += 1
            error = _transport_error(label, exc)
            if self.breaker is not None:
                self.breaker.no_answer(f"{type(exc).__name__}: {str(exc).strip()[:100]}")
                if not error.sent:
                    # The request that trips it never left: stop now rather than fail its row.
                    self.breaker.check()
            raise error from exc

        if self.breaker is not None:
            self.breaker.answered()
        status, headers, content, reason = reply
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        try:
            body = _json(content)
        except ValueError:
            body = _NOT_JSON

        meta: dict[str, Any] = {}
        if isinstance(body, dict) and isinstance(body.get("meta"), dict):
            meta = body["meta"]
        rate = parse_rate(headers, meta)
        if rate is not None and self.limiter is not None:
            self.limiter.observe(rate)

        request_id = headers.get("x-request-id") or ""
        if not request_id and isinstance(body, dict):
            raw_id = meta.get("requestId") or body.get("requestId")
            request_id = raw_id if isinstance(raw_id, str) else ""

        if 200 <= status < 300:
            if body is _NOT_JSON:
                # The server may have acted (a POST stored) but we cannot read what it did.
                raise ServerError(
                    f"{label}: {status} answered with a body that is not JSON "
                    f"({_content_type(headers)}); the request may have been applied",
                    status=status,
                    request_id=request_id,
                )
            if isinstance(body, dict) and "data" in body:
                return ApiResponse(status, body["data"], meta, request_id, rate)
            return ApiResponse(status, body, meta, request_id, rate)

        raise self._error(label, status, reason, headers, body, request_id, rate)

    def _error(
        self,
        label: str,
        status: int,
        reason: str | None,
        headers: dict[str, str],
        body: Any,
        request_id: str,
        rate: RateLimitInfo | None,
    ) -> ApiError:
        """The typed error of a non-2xx response; a 429 also pauses the limiter."""
        code = ""
        if reason is None:
            reason = httpx.codes.get_reason_phrase(status)
        title = reason or "error"
        issues: list[str] = []
        if isinstance(body, dict):
            raw_code = body.get("code")
            code = raw_code if isinstance(raw_code, str) else ""
            raw_title = body.get("error")
            if isinstance(raw_title, str) and raw_title.strip():
                title = raw_title.strip()[:100]
            issues = _issues(body.get("issues"))

        head = f"{label}: {status} {code or title}"
        if request_id:
            head += f" ({request_id})"
        if body is _NOT_JSON:
            # A proxy's HTML page: say what it was, never echo it.
            head += f", a non-JSON body ({_content_type(headers)})"
        if issues:
            shown = "; ".join(issues[:_MAX_ISSUES_SHOWN])
            if len(issues) > _MAX_ISSUES_SHOWN:
                shown += f"; (+{len(issues) - _MAX_ISSUES_SHOWN} more)"
            head += f": {shown}"
        fields: dict[str, Any] = {
            "status": status,
            "code": code,
            "request_id": request_id,
            "issues": issues,
        }

        if status in (401, 403):
            return AuthError(
                f"{head} — the API key {self.masked_key} was refused or lacks the scope; "
                "check the key and its permissions",
                **fields,
            )
        if status == 429:
            self.stats.rate_limited += 1
            retry_after = _retry_after(headers.get("retry-after"))
            if retry_after is None and rate is not None:
                retry_after = rate.reset_s
            if retry_after is None:
                retry_after = DEFAULT_RETRY_AFTER_S
            if self.limiter is not None:
                self.limiter.pause(retry_after)
            return RateLimitedError(
                f"{head} — rate limit reached; wait {retry_after:,.0f} s",
                retry_after=retry_after,
                **fields,
            )
        if status >= 500:
            return ServerError(
                f"{head} — ClinikAPI failed; the request may or may not have been applied",
                **fields,
            )
        return ClientRequestError(head, **fields)


class _NotJson:
    """Marks a body that is present but not JSON."""

    def __repr__(self) -> str:
        return "<not JSON>"


_NOT_JSON: Any = _NotJson()


def _consent_path(consent_id: str) -> str:
    # Quoted whole, so an odd id cannot reach another path.
    return "/v1/consents/" + quote(consent_id, safe="")


def _content_type(headers: dict[str, str]) -> str:
    value = headers.get("content-type") or "no content type"
    return value.split(";")[0].strip()[:60]


def _transport_error(label: str, exc: httpx.RequestError) -> NoResponseError:
    detail = str(exc).strip()[:200] or "no detail"
    kind = type(exc).__name__
    if isinstance(exc, _NOT_SENT):
        return NoResponseError(
            f"{label}: could not reach ClinikAPI ({kind}: {detail}); the request was not "
            "sent; check the network and the base URL",
            sent=False,
        )
    return NoResponseError(
        f"{label}: no answer ({kind}: {detail}); the request may have reached ClinikAPI",
        sent=True,
    )
