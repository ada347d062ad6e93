"""Running the sandbox: in a thread from sync and async code, and as a process via serve()."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from importer.sandbox import SandboxConfig, create_app, running_sandbox

ROOT = Path(__file__).resolve().parent.parent
KEY = {"x-api-key": "clk_test_server"}
BODY = {"patientId": "pt_1", "scope": "treatment", "category": "treatment-consent"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_base_url_names_a_free_port() -> None:
    with running_sandbox() as sb:
        assert sb.base_url == f"http://127.0.0.1:{sb.port}"
        assert sb.port > 0
        assert httpx.get(f"{sb.base_url}/health").status_code == 200
    with pytest.raises(httpx.ConnectError):  # stopped means closed
        httpx.get(f"{sb.base_url}/health")


def test_a_fixed_port() -> None:
    port = free_port()
    with running_sandbox(SandboxConfig(), "127.0.0.1", port) as sb:
        assert sb.base_url == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{sb.base_url}/health").status_code == 200


def test_a_busy_port_fails_fast() -> None:
    with (
        running_sandbox() as sb,
        pytest.raises(OSError, match="in use"),
        running_sandbox(port=sb.port),
    ):
        pass


def test_two_sandboxes_keep_separate_state() -> None:
    with running_sandbox() as one, running_sandbox() as two:
        httpx.post(f"{one.base_url}/v1/consents", json=BODY, headers=KEY)
        assert len(one.consents()) == 1
        assert two.consents() == []


def test_stopping_closes_idle_keep_alive_connections() -> None:
    start = time.monotonic()
    with running_sandbox() as sb:
        client = httpx.Client(base_url=sb.base_url, headers=KEY)
        client.get("/v1/consents")  # leaves a pooled connection open
    assert time.monotonic() - start < 20
    client.close()


@pytest.mark.anyio
async def test_usable_from_async_code() -> None:
    with running_sandbox(SandboxConfig(latency_ms=50)) as sb:
        async with httpx.AsyncClient(base_url=sb.base_url, headers=KEY, timeout=30) as client:

            async def post(i: int) -> None:
                response = await client.post("/v1/consents", json={**BODY, "patientId": f"pt_{i}"})
                assert response.status_code == 201

            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(post, i)
        stats = sb.stats()
        assert stats["creates"] == 20
        assert stats["duplicates"] == 0


@pytest.mark.anyio
async def test_create_app_runs_in_process() -> None:
    # The app alone, without a socket: handy for quick checks (faults need a real server).
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        response = await client.post("/v1/consents", json=BODY, headers=KEY)
        assert response.status_code == 201
        assert response.headers["x-request-id"].startswith("req_")


def start_process(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "importer.sandbox", "--port", "0", "--log-level", "warning", *args],
        cwd=ROOT,  # `-m` puts the working directory on sys.path
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ClinikAPI sandbox listening on http://127.0.0.1:"), line
    return proc, line.split()[4]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_in_a_process_stops_cleanly(sig: signal.Signals) -> None:
    proc, url = start_process("--rate-limit", "5")
    try:
        response = httpx.post(f"{url}/v1/consents", json=BODY, headers=KEY)
        assert response.status_code == 201
        assert response.headers["x-ratelimit-limit"] == "5"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_serve_stops_while_a_slow_answer_sleeps() -> None:
    proc, url = start_process("--fault-rate", "1", "--seed", "1")
    try:
        # With all four modes at 25%, a few POSTs meet the slow one (35 s by default).
        with httpx.Client(headers=KEY, timeout=0.5) as client:
            for _ in range(12):
                with contextlib.suppress(httpx.TransportError):
                    client.post(f"{url}/v1/consents", json=BODY)
        stats = httpx.get(f"{url}/__sandbox/stats").json()
        assert stats["faults"]["slow_after_store"] >= 1
        assert stats["in_flight"] >= 1  # a sleeper is still holding its answer
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert time.monotonic() - started < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0


def test_bad_options_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "importer.sandbox", "--fault-rate", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    # `python -m importer.sandbox` is `consent-import sandbox`: the CLI's range check
    assert "--fault-rate': 2.0 is not in the range 0<=x<=1" in result.stderr


@pytest.mark.parametrize(
    "entry",
    [["-m", "importer.sandbox"], ["-m", "importer", "sandbox"]],
    ids=["python -m importer.sandbox", "consent-import sandbox"],
)
def test_both_sandbox_commands_are_one(entry: list[str]) -> None:
    """`python -m importer.sandbox` is `consent-import sandbox`: same flags, same errors."""
    run = [sys.executable, *entry]
    shown = subprocess.run([*run, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    for flag in ("--rate-limit N[/SECONDS]", "--port", "--log-level", "--access-log", "--seed"):
        assert flag in shown.stdout
    bad = subprocess.run(
        [*run, "--rate-limit", "5/x"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert "--rate-limit 5/x: expected N/SECONDS, e.g. 100/2" in bad.stderr
