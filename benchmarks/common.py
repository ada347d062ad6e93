"""Shared pieces of the benchmarks: canonical CSVs and a sandbox in its own process."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from importer.mapping import CANONICAL_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"
KEY = "clk_test_benchmark00001234"
HEADERS = CANONICAL_COLUMNS
SCOPES = ["patient-privacy", "treatment", "research", "adr"]


def canonical_csv(rows: int, name: str | None = None) -> Path:
    """A canonical-header CSV of `rows` valid rows (made once, then reused)."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / (name or f"canonical_{rows}.csv")
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADERS)
        for i in range(rows):
            day = f"2023-{1 + i % 12:02d}-{1 + i % 28:02d}"
            writer.writerow(
                [
                    f"K{i:09d}",
                    f"pt_{i % 250_000:07d}",
                    SCOPES[i % 4],
                    "hipaa-notice" if i % 3 else "treatment-consent;surgical-consent",
                    "active",
                    f"{day}T{i % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d}Z",
                    f"pt_{i % 250_000:07d}",
                    "org_main",
                    "https://clinic.example/policies/privacy-v3",
                    "Y" if i % 2 else "N",
                    f"pt_{i % 250_000:07d}" if i % 2 else "",
                    day if i % 2 else "",
                    "permit",
                    day,
                    "2030-12-31",
                    "TREAT|HPAYMT" if i % 5 == 0 else "TREAT",
                ]
            )
    tmp.rename(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def sandbox_process(*args: str) -> Iterator[str]:
    """`consent-import sandbox` in its own process (its own core), yielding its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "importer", "sandbox", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the sandbox did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run `consent-import ARGS` and return (seconds, peak RSS in MB of that process)."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peak_rss.py"), "-m", "importer", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"consent-import {' '.join(args)} failed: {proc.stderr}")
    peak = int(proc.stderr.strip().splitlines()[-1].split("=")[1])
    return seconds, peak
