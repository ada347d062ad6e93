"""Preflight and circuit breaker, over real sockets: a wrong server touches nothing, a
first run on a new ledger does not re-create what exists, a server lost mid-run stops it."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from importer._errors import ConfigError, ServerUnreachable
from importer.engine._preflight import MAX_IN_A_ROW, SAMPLE_REQUESTS, WINDOW_S, CircuitBreaker
from importer.sandbox import SandboxConfig, running_sandbox
from tests.engine_helpers import KEY, consent_rows, run, write_csv

pytestmark = pytest.mark.usefixtures("instant_backoff")


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Html(BaseHTTPRequestHandler):
    """A web server that is not ClinikAPI: every GET is a 200 HTML page."""

    def do_GET(self) -> None:
        body = b"<html><body>Welcome to nginx!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def html_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Html)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (
            "refused",
            r"cannot reach ClinikAPI at http://127\.0\.0\.1:\d+/v1/consents: connection refused",
        ),
        # https to the sandbox's plain-http port
        (
            "tls",
            r"reach ClinikAPI at https://127\.0\.0\.1:\d+/v1/consents: the TLS handshake failed",
        ),
        # a base URL with an extra path: the sandbox answers 404
        ("extra_path", r"/api/v1/consents answered 404: no ClinikAPI consents endpoint there"),
        ("html", r"answered 200 with text/html, not ClinikAPI's JSON"),
        ("revoked_key", r"refused the API key clk_test_…1234 \(401 KEY_REVOKED\)"),
    ],
)
def test_a_wrong_server_or_key_is_one_line_and_touches_nothing(
    tmp_path: Path, html_server: str, where: str, message: str
) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(5))
    ledger = tmp_path / "l.db"
    config = SandboxConfig(revoked_keys=frozenset({KEY} if where == "revoked_key" else ()))
    with running_sandbox(config) as sandbox:
        base_url = {
            "refused": f"http://127.0.0.1:{_free_port()}",
            "tls": sandbox.base_url.replace("http://", "https://"),
            "extra_path": sandbox.base_url + "/api",
            "html": html_server,
            "revoked_key": sandbox.base_url,
        }[where]
        with pytest.raises(ConfigError, match=message) as info:
            run(source, base_url, ledger, preflight=True)
        assert sandbox.stats()["consents"] == 0
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)
    assert KEY not in str(info.value)
    assert not ledger.exists()  # nothing bound to the wrong URL
    assert not Path(f"{ledger}.lock").exists()


def test_a_ledger_that_created_nothing_may_move_to_another_base_url(tmp_path: Path) -> None:
    rows = list(consent_rows(3, scope="nope"))  # all invalid: the first run creates nothing
    bad = write_csv(tmp_path / "bad.csv", rows)
    good = write_csv(tmp_path / "good.csv", consent_rows(3))
    ledger = tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as first:
        assert run(bad, first.base_url, ledger).stats.invalid == 3
    with running_sandbox(SandboxConfig()) as second:
        assert run(good, second.base_url, ledger).stats.created == 3
    with running_sandbox(SandboxConfig()) as third, pytest.raises(ConfigError, match="records"):
        run(good, third.base_url, ledger)  # it created consents on the second: bound there


def test_a_rerun_with_a_new_ledger_stops_before_creating_anything(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(40))
    with running_sandbox(SandboxConfig()) as sandbox:
        first = run(source, sandbox.base_url, tmp_path / "a.db", preflight=True)
        assert first.stats.created == 40
        before = sandbox.stats()["requests"]
        with pytest.raises(ConfigError) as info:
            run(source, sandbox.base_url, tmp_path / "b.db", preflight=True)
        spent = sandbox.stats()["requests"] - before
        assert sandbox.stats()["consents"] == 40
        assert sandbox.stats()["by_method"].get("POST", 0) == 40
    message = str(info.value)
    assert f"{SAMPLE_REQUESTS} of the first {SAMPLE_REQUESTS} valid rows already exist" in message
    assert "looks like a rerun with a new ledger" in message
    assert "--ledger" in message
    assert "--skip-existing" in message
    assert spent <= 1 + SAMPLE_REQUESTS  # the server check, then at most 20 lookups


@pytest.mark.parametrize(
    ("options", "created", "adopted"),
    [
        ({"skip_existing": True}, 40, 40),  # adopts: nothing posted again
        ({"preflight": False}, 40, 0),  # the check is skipped (and duplicates follow)
    ],
)
def test_the_two_ways_past_the_first_run_check(
    tmp_path: Path, options: dict[str, bool], created: int, adopted: int
) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(40))
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, tmp_path / "a.db")
        options.setdefault("preflight", True)
        result = run(source, sandbox.base_url, tmp_path / "b.db", **options)
    assert result.exit_code == 0
    assert (result.stats.created, result.stats.adopted) == (created, adopted)


def test_a_first_run_on_an_empty_server_spends_at_most_21_requests_on_checks(
    tmp_path: Path,
) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(50))
    with running_sandbox(SandboxConfig()) as sandbox:
        result = run(source, sandbox.base_url, tmp_path / "l.db", preflight=True)
        gets = sandbox.stats()["by_method"].get("GET", 0)
        again = run(source, sandbox.base_url, tmp_path / "l.db", preflight=True)
        gets_again = sandbox.stats()["by_method"].get("GET", 0) - gets
    assert result.stats.created == 50
    assert gets == 1 + SAMPLE_REQUESTS
    assert result.stats.requests == 50 + gets  # the checks count in the summary
    assert gets_again == 1  # the ledger has created consents: only the server check
    assert again.stats.unchanged == 50


# -- the circuit breaker ------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("events", "tripped"),
    [
        (["x"] * (MAX_IN_A_ROW - 1), False),
        (["x"] * MAX_IN_A_ROW, False),  # 20 refusals in a blip: not 30 s (was: tripped "over 0 s")
        (["x"] * (MAX_IN_A_ROW - 1) + [f"wait {WINDOW_S}", "x"], True),  # 20, over 30 s
        (["x"] * (MAX_IN_A_ROW - 1) + [f"wait {WINDOW_S - 1}", "x"], False),  # 20, over 29 s
        (["x"] * MAX_IN_A_ROW + [f"wait {WINDOW_S}", "x"], True),
        (["x"] * 10 + ["ok"] + ["x"] * 9 + [f"wait {WINDOW_S}", "x"], False),  # count restarted
        (["x", f"wait {WINDOW_S}", "x"], False),  # 30 s, but only 2 requests
        (["x"] * 19 + [f"wait {WINDOW_S}", "ok", "x"], False),  # it answered in between
        ([f"wait {WINDOW_S * 2}", "ok"], False),  # quiet time alone trips nothing
    ],
)
def test_the_breaker_trips_after_20_in_a_row_and_30_s_without_an_answer(
    events: list[str], tripped: bool
) -> None:
    clock = _Clock()
    breaker = CircuitBreaker("api.example", clock=clock)
    for event in events:
        if event == "x":
            breaker.no_answer("ConnectError: refused")
        elif event == "ok":
            breaker.answered()
        else:
            clock.now += float(event.split()[1])
    assert bool(breaker.reason) is tripped
    if tripped:
        with pytest.raises(ServerUnreachable, match=r"ClinikAPI at api\.example is unreachable"):
            breaker.check()
    else:
        breaker.check()


@pytest.mark.slow
def test_a_server_lost_mid_run_stops_it_resumably_without_failing_rows(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(300))
    ledger = tmp_path / "l.db"
    with running_sandbox(SandboxConfig(latency_ms=5)) as sandbox:

        def stop_after_some_rows() -> None:
            deadline = time.monotonic() + 60
            while sandbox.stats()["consents"] < 30 and time.monotonic() < deadline:
                time.sleep(0.01)
            sandbox.stop()

        stopper = threading.Thread(target=stop_after_some_rows)
        stopper.start()
        started = time.monotonic()
        result = run(source, sandbox.base_url, ledger, concurrency=4)
        took = time.monotonic() - started
        stopper.join()
        created = len(sandbox.consents())
    stats = result.stats
    assert result.exit_code == 3
    assert "is unreachable" in stats.aborted
    assert stats.failed == 0
    assert took < 60
    with sqlite3.connect(ledger) as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM rows GROUP BY state").fetchall())
        run_status = db.execute("SELECT status, summary FROM runs").fetchone()
    assert set(states) <= {"done", "in_flight"}
    # every consent the server stored is in the ledger, done or (answer lost) in flight
    assert states.get("done", 0) <= created <= states.get("done", 0) + states.get("in_flight", 0)
    assert run_status[0] == "aborted"
    assert json.loads(run_status[1])["rows_left"] == 300 - states.get("done", 0)


@pytest.mark.parametrize("concurrency", [8, 1])
def test_without_preflight_a_refused_port_stops_after_20_tries_failing_no_row(
    tmp_path: Path, concurrency: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: 200 rows x 5 attempts = 1,000 requests, every row failed, exit 1.
    # One row at a time never makes 20 in a row (the row waits for the verdict): the
    # window decides, shortened here from 30 s.
    monkeypatch.setattr("importer.api._breaker.WINDOW_S", 2.0)
    source = write_csv(tmp_path / "in.csv", consent_rows(200))
    ledger = tmp_path / "l.db"
    result = run(source, f"http://127.0.0.1:{_free_port()}", ledger, concurrency=concurrency)
    assert result.exit_code == 3
    assert "connection refused" in result.stats.aborted.lower()
    # Each worker (two a request slot) tries its row at most --max-attempts times, then
    # waits for the verdict: the breaker needs 30 s (here 2 s) without an answer too.
    assert result.stats.requests <= max(MAX_IN_A_ROW, 2 * concurrency * 5)
    with sqlite3.connect(ledger) as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM rows GROUP BY state").fetchall())
    # Even one row at a time, a row whose 5 tries all went unanswered waits for the
    # breaker's verdict instead of failing.
    assert states == {}  # nothing failed, nothing in flight: nothing was sent
    assert result.stats.failed == 0
    assert result.stats.rows_left == 200
