"""How many consent POSTs per second the sandbox takes over loopback.

The server runs in its own process (`python -m importer.sandbox`), so client and server
do not share one GIL. Every consent is for a different patient, so the server's
duplicate count must stay 0, and every answer must be a 201.

Two clients, each keeping `--concurrency` requests in flight on keep-alive connections:

- `raw`: a minimal HTTP/1.1 client on asyncio streams (one write per request). It costs
  ~0.15 ms of CPU per request, so the figure is the server's capacity.
- `httpx`: the importer's own stack (`make_http_client`: httpx over
  `importer.api._http11.Http11Transport`). On a 2-core machine it is client-bound, so its
  figure says more about the client than about the sandbox.

Example: python benchmarks/bench_sandbox.py --count 20000 --concurrency 64 --client both
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from importer.api._client import make_http_client

try:  # a dev dependency; without it the server's CPU time is not reported
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

ROOT = Path(__file__).resolve().parent.parent
KEY = "clk_test_benchmark"
TARGET_PER_S = 2000


def start_server() -> tuple[subprocess.Popen[str], str]:
    """Start `python -m importer.sandbox --port 0` and read the URL it prints."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "importer.sandbox", "--port", "0", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        proc.wait()
        raise SystemExit(f"the sandbox did not start; it printed {line!r}")
    return proc, line.split("listening on ", 1)[1].split()[0]


def consent(i: int) -> bytes:
    """A realistic consent body, patient `i`."""
    body = {
        "patientId": f"pt_{i:07d}",
        "scope": "treatment",
        "category": ["treatment-consent"],
        "status": "active",
        "dateTime": "2024-03-01T09:30:00Z",
        "verification": {"verified": True, "verificationDate": "2024-03-01"},
        "provision": {"type": "permit", "period": {"start": "2024-03-01", "end": "2025-03-01"}},
    }
    return json.dumps(body).encode()


async def run_workers(count: int, workers: list[Callable[[int], Awaitable[None]]]) -> float:
    """Hand indexes 0..count-1 to the workers; returns the seconds taken."""
    next_index = 0

    async def loop(post: Callable[[int], Awaitable[None]]) -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            await post(i)

    start = time.perf_counter()
    await asyncio.gather(*(loop(worker) for worker in workers))
    return time.perf_counter() - start


async def raw_client(url: str, count: int, concurrency: int) -> float:
    """POST over plain keep-alive sockets; returns the seconds taken."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    streams = [await asyncio.open_connection(host, int(port)) for _ in range(concurrency)]
    head = f"POST /v1/consents HTTP/1.1\r\nhost: {host}\r\nx-api-key: {KEY}\r\n"

    def poster(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Callable[[int], Awaitable[None]]:
        async def post(i: int) -> None:
            body = consent(i)
            request = f"{head}content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            writer.write(request.encode() + body)
            status_and_headers = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in status_and_headers.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if not status_and_headers.startswith(b"HTTP/1.1 201 "):
                status_line = status_and_headers.partition(b"\r\n")[0]
                raise SystemExit(f"POST {i} answered {status_line!r}")

        return post

    try:
        return await run_workers(count, [poster(r, w) for r, w in streams])
    finally:
        for _, writer in streams:
            writer.close()


async def httpx_client(url: str, count: int, concurrency: int) -> float:
    """POST with the importer's own HTTP client; returns the seconds taken."""
    client = make_http_client(base_url=url, concurrency=concurrency, timeout_s=30)
    headers = {"x-api-key": KEY, "content-type": "application/json"}
    # Connect first, as the raw client does.
    await asyncio.gather(*(client.get(f"{url}/health") for _ in range(concurrency)))

    async def post(i: int) -> None:
        response = await client.post(f"{url}/v1/consents", content=consent(i), headers=headers)
        if response.status_code != 201:
            raise SystemExit(f"POST {i} answered {response.status_code}")

    try:
        return await run_workers(count, [post] * concurrency)
    finally:
        await client.aclose()


def _cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="POSTs per client")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--client", choices=["raw", "httpx", "both"], default="both")
    args = parser.parse_args()
    clients = {"raw": raw_client, "httpx": httpx_client}
    chosen = list(clients) if args.client == "both" else [args.client]
    proc, url = start_server()
    server = psutil.Process(proc.pid) if psutil else None
    try:
        for name in chosen:
            httpx.post(f"{url}/__sandbox/reset")
            cpu_before = _cpu_seconds(server)
            seconds = asyncio.run(clients[name](url, args.count, args.concurrency))
            cpu_per_post = (_cpu_seconds(server) - cpu_before) / args.count
            stats = httpx.get(f"{url}/__sandbox/stats").json()
            rate = args.count / seconds
            print(
                f"{name:>5}: {args.count} POSTs in {seconds:.2f} s, {args.concurrency} in flight:"
                f" {rate:,.0f} POSTs/s (stored {stats['consents']},"
                f" duplicates {stats['duplicates']}, statuses {stats['by_status']})"
            )
            if server is not None:
                # CPU per POST does not depend on what else the machine is running.
                print(
                    f"       server CPU {cpu_per_post * 1e6:,.0f} µs per POST:"
                    f" one core could serve {1 / cpu_per_post:,.0f} POSTs/s"
                )
            if name == "raw":
                verdict = "meets" if rate >= TARGET_PER_S else "MISSES"
                print(f"       the server {verdict} the target of {TARGET_PER_S:,} POSTs/s")
    finally:
        proc.terminate()
        proc.wait(timeout=15)


if __name__ == "__main__":
    main()
