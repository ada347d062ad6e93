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

from importer.intake._mapping import CANONICAL_COLUMNS

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


REGISTRY_MAPPING = """
[source]
timezone = "UTC"
header_row = 3
null_values = ["NA"]
key = ["Record ID"]

[[filter]]
column = "Record Type"
in = ["CONSENT"]

[columns]
patientId = "Participant"
status = "Status"

[values.status]
"Signed" = "active"

[fields]
"sourceAttachment.url" = "Scan URL"
"sourceAttachment.contentType" = { value = "application/pdf" }
"verification.verified" = { value = true }
"verification.verifiedWith" = "Witness"

[[consents]]
key = "research"
[consents.fields]
"scope" = { value = "research" }
"category" = { value = "research-participation" }
"dateTime" = { columns = ["Signed Date", "Signed Time"], formats = ["%m/%d/%Y %H:%M"] }
"policies[0].uri" = { template = "https://registry.example/forms/{Form}/v{Version}" }
"provision.type" = { value = "permit" }
"provision.actor[0].role" = { value = "PRCP" }
"provision.actor[0].reference" = { template = "Organization/{Org}" }
"provision.provision[0].type" = { value = "deny" }
"provision.provision[0].purpose" = { column = "Opt-outs", split = ";", system = "http://s" }

[[consents]]
key = "hipaa"
when = { column = "HIPAA Date", not_empty = true }
[consents.fields]
"scope" = { value = "patient-privacy" }
"category" = { value = "hipaa-notice" }
"dateTime" = { column = "HIPAA Date", formats = ["%m/%d/%Y"] }
"""


def registry_csv(rows: int) -> tuple[Path, Path]:
    """A registry-style export of `rows` consent rows, every one making two consents with
    nested provisions, and its version-2 mapping (made once, then reused)."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"registry_{rows}.csv"
    mapping = DATA / "registry.toml"
    mapping.write_text(REGISTRY_MAPPING, encoding="utf-8")
    if path.exists():
        return path, mapping
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        handle.write("Registry export\nGenerated for the benchmark\n")
        writer = csv.writer(handle)
        writer.writerow(
            [
                "Record ID",
                "Participant",
                "Record Type",
                "Form",
                "Version",
                "Signed Date",
                "Signed Time",
                "Status",
                "Opt-outs",
                "Org",
                "Scan URL",
                "Witness",
                "HIPAA Date",
            ]
        )
        for i in range(rows):
            date = f"{1 + i % 12:02d}/{1 + i % 28:02d}/2023"
            writer.writerow(
                [
                    f"R{i:09d}",
                    f"pt_{i % 250_000:07d}",
                    "CONSENT",
                    "RD" if i % 2 else "GEN",
                    str(1 + i % 3),
                    date,
                    f"{i % 24:02d}:{i % 60:02d}",
                    "Signed",
                    "HMARKT;HRESCH" if i % 3 else "HMARKT",
                    f"org_{i % 50}",
                    f"https://registry.example/scans/{i}.pdf",
                    f"pr_{i % 1000}" if i % 2 else "NA",
                    date,
                ]
            )
    tmp.rename(path)
    return path, mapping


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def sandbox_process(*args: str) -> Iterator[str]:
    """`consent-import sandbox` in its own process (its own core), yielding its URL."""
    with sandbox_server(*args) as (url, _):
        yield url


@contextmanager
def sandbox_server(*args: str) -> Iterator[tuple[str, int]]:
    """`consent-import sandbox` in its own process, yielding its URL and process id
    (for a benchmark that measures the server's CPU too)."""
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
        yield url, proc.pid
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
