"""The sandbox's routes: ClinikAPI's consent endpoints plus `/__sandbox/*` inspection.

Every `/v1` request passes one gateway, in this order: arrival is counted, the key is
checked (401s do not spend the budget), the rate window is hit (429), latency is slept,
a fault is drawn (503 happens here, before anything is stored), then the route runs.
After-store faults are applied by the write routes once the write has happened; a late
write is validated, answered 502/504 at once and done `late_ms` later. A new consent may
stay out of search for `search_lag_ms` (GET by id sees it at once).

Search pages: `data` is the list of consents, oldest first; `meta.nextCursor` is the
cursor of the next page, or null on the last one. `count` defaults to 20, at most 100.
`DELETE` answers 200 with `data = {"id", "deleted": true}`. Where clinikapi.md names no
code, errors use BAD_REQUEST (400), METHOD_NOT_ALLOWED (405), PAYLOAD_TOO_LARGE (413).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from importer.sandbox._config import SandboxConfig
from importer.sandbox._faults import Fault
from importer.sandbox._ratelimit import Quota
from importer.sandbox._state import DROPPED, SandboxState
from importer.sandbox._store import CursorError
from importer.sandbox._validation import parse_search, validate_consent, validate_patch

#: ClinikAPI refuses request bodies above 1 MiB; so does the sandbox, with a 413.
MAX_BODY_BYTES = 1024 * 1024

_KEY_SHAPE = re.compile(r"clk_(?:live|test)_[A-Za-z0-9_\-]+", re.ASCII)
_REQUEST_ID = "sandbox.request_id"
_CALL = "sandbox.call"
# Fixed names, since Python renames some phrases between versions (413, 422).
_ERROR_NAMES = {413: "Payload Too Large", 422: "Validation Error", 429: "Too Many Requests"}
_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    502: "INTERNAL_ERROR",
    503: "INTERNAL_ERROR",
    504: "INTERNAL_ERROR",
}
# uvicorn logs this when a response is left unfinished, which the drop fault does on purpose.
_DROP_LOG_MESSAGE = "ASGI callable returned without completing response."


@dataclass(slots=True)
class _Call:
    """What the gateway learned about one /v1 request, for the route to answer with."""

    request_id: str
    quota: Quota | None = None
    fault: Fault | None = None
    dropped: bool = False


class _Reject(Exception):
    """Raised inside a route to answer with an error body."""

    def __init__(self, status: int, issues: list[str] | None = None, code: str = "") -> None:
        super().__init__(status)
        self.status = status
        self.issues = issues or []
        self.code = code or _CODES.get(status, "ERROR")


# --- bodies --------------------------------------------------------------------------


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(payload), status, headers, media_type="application/json")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_body(status: int, request_id: str, code: str, issues: list[str]) -> dict[str, Any]:
    return {
        "error": _ERROR_NAMES.get(status) or HTTPStatus(status).phrase,
        "code": code,
        "requestId": request_id,
        "issues": [{"severity": "error", "code": "invalid", "diagnostics": d} for d in issues],
    }


def _error(call: _Call, status: int, issues: list[str] | None = None, code: str = "") -> Response:
    code = code or _CODES.get(status, "ERROR")
    return _json(status, _error_body(status, call.request_id, code, issues or []))


def _ok(call: _Call, status: int, data: object, **meta: object) -> Response:
    quota = call.quota
    assert quota is not None  # the gateway sets it before any route runs
    return _json(
        status,
        {
            "data": data,
            "meta": {
                "requestId": call.request_id,
                "timestamp": _now(),
                "status": status,
                "rateLimitTotal": quota.limit,
                "rateLimitRemaining": quota.remaining,
                "rateLimitReset": quota.reset_s,
                **meta,
            },
        },
    )


class _DroppedResponse(Response):
    """Sends the status line and headers, then leaves the body unfinished.

    uvicorn closes a connection whose response the app left incomplete, so the client
    sees the connection die mid-response (httpx: RemoteProtocolError) and cannot tell
    whether the write happened. ASGI offers no way to close before the headers.
    """

    def __init__(self, full: Response) -> None:
        self.status_code = full.status_code
        self.raw_headers = full.raw_headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _DROP_LOG_MESSAGE


def _quiet_deliberate_drops() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


# --- middleware and gateway ----------------------------------------------------------


class _RequestId:
    """Gives every request an id (`req_<hex>`) and every response its `x-request-id`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{secrets.token_hex(8)}"
        scope[_REQUEST_ID] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class _Gateway:
    """Auth, rate limit, latency, 503 faults and bookkeeping for every /v1 request."""

    def __init__(self, state: SandboxState, router: ASGIApp) -> None:
        self.state = state
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        state = self.state
        method: str = scope["method"]
        call = _Call(scope[_REQUEST_ID])
        scope[_CALL] = call
        arrived = state.begin(method)
        status: int | str | None = None

        async def send_v1(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = DROPPED if call.dropped else message["status"]
                assert call.quota is not None
                message["headers"] = [*message.get("headers", ()), *call.quota.headers()]
            await send(message)

        try:
            refusal = self._admit(call, scope, arrived)
            await state.pause(state.faults.latency_s(state.config))
            if refusal is None:
                call.fault = state.faults.draw(state.config, method)
                if call.fault is Fault.UNAVAILABLE:
                    state.count_fault(call.fault)
                    refusal = _error(call, 503, ["service: unavailable, retry later"])
            if refusal is not None:
                await refusal(scope, receive, send_v1)
                return
            try:
                await self.router(scope, receive, send_v1)
            except HTTPException as exc:  # no route for this path or method
                await _error(call, exc.status_code)(scope, receive, send_v1)
        finally:
            state.end(arrived, method, scope["path"], status)

    def _admit(self, call: _Call, scope: Scope, now: float) -> Response | None:
        """The 401 or 429 this request gets, or None when it may proceed."""
        state = self.state
        key = ""
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                key = value.decode("latin-1")
                break
        if not key:
            issue, code = "x-api-key: required", "UNAUTHORIZED"
        elif not _KEY_SHAPE.fullmatch(key):
            issue, code = "x-api-key: must look like clk_live_… or clk_test_…", "INVALID_KEY_FORMAT"
        elif key in state.config.revoked_keys:
            issue, code = "x-api-key: revoked", "KEY_REVOKED"
        else:
            call.quota = state.limiter.hit(now)
            if call.quota.allowed:
                return None
            return _error(call, 429, ["rate limit: window spent, retry after Retry-After seconds"])
        # A refused key has no budget to spend; it only sees the window as it stands.
        call.quota = state.limiter.peek(now)
        return _error(call, 401, [issue], code)


# --- /v1 routes ----------------------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]
_Handler = Callable[[Request, _Call], Awaitable[Response]]


def _endpoint(handler: _Handler) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        call: _Call = request.scope[_CALL]
        try:
            return await handler(request, call)
        except _Reject as reject:
            return _error(call, reject.status, reject.issues, reject.code)

    return endpoint


async def _read_json(request: Request) -> object:
    """The request body as JSON, refusing bodies over 1 MiB and malformed JSON."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise _Reject(413, ["body: larger than 1 MiB"])
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Reject(413, ["body: larger than 1 MiB"])
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise _Reject(400, ["body: malformed JSON"]) from None


def _no_constant(name: str) -> object:
    # NaN and Infinity are not JSON, whatever Python's json module accepts.
    raise ValueError(name)


class _ConsentRoutes:
    """The `/v1/consents` endpoints over one sandbox's state."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        return [
            Route("/consents", _endpoint(self.create), methods=["POST"]),
            Route("/consents", _endpoint(self.search), methods=["GET"]),
            Route("/consents/{consent_id}", _endpoint(self.read), methods=["GET"]),
            Route("/consents/{consent_id}", _endpoint(self.patch), methods=["PATCH"]),
            Route("/consents/{consent_id}", _endpoint(self.delete), methods=["DELETE"]),
        ]

    async def create(self, request: Request, call: _Call) -> Response:
        body = await _read_json(request)
        issues = validate_consent(body, self.state.config.known_patients)
        if issues:
            raise _Reject(422, issues)
        assert isinstance(body, dict)
        if call.fault is Fault.LATE:
            return self._late(call, lambda: self.state.create(body))
        consent = self.state.create(body)
        return await self._after_write(call, 201, consent)

    async def read(self, request: Request, call: _Call) -> Response:
        return _ok(call, 200, self._find(request))

    async def patch(self, request: Request, call: _Call) -> Response:
        body = await _read_json(request)
        issues = validate_patch(body)
        if issues:
            raise _Reject(422, issues)
        assert isinstance(body, dict)
        consent_id = request.path_params["consent_id"]
        if call.fault is Fault.LATE:
            if self.state.store.get(consent_id) is None:
                raise _Reject(404, ["id: no such consent"])
            return self._late(call, lambda: self._patch_now(consent_id, body))
        consent = self._patch_now(consent_id, body)
        if consent is None:
            raise _Reject(404, ["id: no such consent"])
        return await self._after_write(call, 200, consent)

    def _patch_now(self, consent_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        consent = self.state.store.patch(consent_id, changes)
        if consent is not None:
            self.state.patches += 1
        return consent

    async def delete(self, request: Request, call: _Call) -> Response:
        consent_id = request.path_params["consent_id"]
        if not self.state.store.delete(consent_id):
            raise _Reject(404, ["id: no such consent"])
        self.state.deletes += 1
        return _ok(call, 200, {"id": consent_id, "deleted": True})

    async def search(self, request: Request, call: _Call) -> Response:
        query = parse_search(request.query_params.multi_items())
        if isinstance(query, list):
            raise _Reject(400, query)
        try:
            page = self.state.store.search(query, time.monotonic())
        except CursorError:
            raise _Reject(400, ["cursor: not a cursor this server handed out"]) from None
        return _ok(call, 200, page.consents, nextCursor=page.next_cursor)

    def _find(self, request: Request) -> dict[str, Any]:
        consent = self.state.store.get(request.path_params["consent_id"])
        if consent is None:
            raise _Reject(404, ["id: no such consent"])
        return consent

    def _late(self, call: _Call, write: Callable[[], object]) -> Response:
        """Answer 502/504 now and do the write `late_ms` later: a gateway gave up waiting."""
        state = self.state
        state.count_fault(Fault.LATE)
        state.later(state.config.late_ms / 1000.0, write)
        return _error(call, state.faults.late_status(), ["gateway: the backend did not answer"])

    async def _after_write(self, call: _Call, status: int, consent: dict[str, Any]) -> Response:
        """Answer a write that has happened, unless an after-store fault says otherwise."""
        fault = call.fault
        if fault is None or not fault.after_store:
            return _ok(call, status, consent)
        self.state.count_fault(fault)
        if fault is Fault.ERROR_AFTER_STORE:
            return _error(call, 500, ["service: internal error"])
        if fault is Fault.DROP_AFTER_STORE:
            call.dropped = True
            return _DroppedResponse(_ok(call, status, consent))
        await self.state.pause(self.state.config.slow_delay_s)
        return _ok(call, status, consent)


# --- /health and /__sandbox ----------------------------------------------------------


class _SandboxRoutes:
    """Inspection and control of the sandbox; no key needed."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/__sandbox/stats", self.stats, methods=["GET"]),
            Route("/__sandbox/consents", self.consents, methods=["GET"]),
            Route("/__sandbox/consents/{consent_id}", self.edit, methods=["PATCH"]),
            Route("/__sandbox/requests", self.requests, methods=["GET"]),
            Route("/__sandbox/reset", self.reset, methods=["POST"]),
            Route("/__sandbox/config", self.config, methods=["GET", "POST"]),
        ]

    async def health(self, request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def stats(self, request: Request) -> Response:
        return _json(200, self.state.stats())

    async def consents(self, request: Request) -> Response:
        return _json(200, self.state.store.all())

    async def edit(self, request: Request) -> Response:
        """Change a consent behind the API's back (someone else's edit, for tests of what
        happens to a consent after a run): any fields, a null removes one; not counted."""
        try:
            changes = json.loads(await request.body())
        except ValueError:
            return _plain_error(request, 400, ["body: malformed JSON"])
        if not isinstance(changes, dict) or "id" in changes:
            return _plain_error(request, 422, ["body: a JSON object of fields other than id"])
        consent = self.state.store.patch(request.path_params["consent_id"], changes)
        if consent is None:
            return _plain_error(request, 404, ["id: no such consent"])
        return _json(200, consent)

    async def requests(self, request: Request) -> Response:
        return _json(200, list(self.state.log))

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return _json(200, self.state.stats())

    async def config(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = json.loads(await request.body())
            except ValueError:
                return _plain_error(request, 400, ["body: malformed JSON"])
            if not isinstance(changes, dict):
                return _plain_error(request, 422, ["body: must be a JSON object"])
            try:
                self.state.configure(**changes)
            except (TypeError, ValueError) as exc:
                return _plain_error(request, 422, [f"config: {exc}"])
        return _json(200, self.state.config.to_json())


def _plain_error(request: Request, status: int, issues: list[str] | None = None) -> Response:
    """An error body outside /v1 (no rate-limit meta)."""
    request_id = request.scope.get(_REQUEST_ID, "")
    return _json(status, _error_body(status, request_id, _CODES.get(status, "ERROR"), issues or []))


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _plain_error(request, exc.status_code)


# --- the app -------------------------------------------------------------------------


def create_app(config: SandboxConfig | None = None) -> Starlette:
    """A ClinikAPI-compatible ASGI app; its state is `sandbox_state(app)`."""
    _quiet_deliberate_drops()
    state = SandboxState(config or SandboxConfig())
    v1 = Router(routes=_ConsentRoutes(state).routes())
    app = Starlette(
        # /v1 first: it is where the traffic is.
        routes=[Mount("/v1", app=_Gateway(state, v1)), *_SandboxRoutes(state).routes()],
        middleware=[Middleware(_RequestId)],
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.sandbox = state
    return app


def sandbox_state(app: Starlette) -> SandboxState:
    """The state behind an app made by `create_app`."""
    state = app.state.sandbox
    assert isinstance(state, SandboxState)
    return state
