"""The send loop against the unsafe script, side by side (issue 24 points 1 and 4).

Each round runs, one after the other and each against a fresh sandbox in its own process
(no latency unless --latency-ms, a rate limit far above what either can spend):

(a) benchmarks/unsafe_aiohttp.py: csv module, a JSON body per row, aiohttp, no ledger,
    no validation, no lookups, no retries;
(b) the product: `consent-import run FILE --ledger <fresh> --concurrency N --quiet`.

Both are whole processes (interpreter start, imports, reading, the run, exit): wall and
CPU (user + system, from wait4) of the client process, and the sandbox's CPU for the
same span. It prints rows/s and CPU µs a row for each, the product's share of the
script's rows/s and the CPU ratio, and the load average at start and end.

    python benchmarks/bench_sendloop.py [--rows 20000] [--rounds 3] [--concurrency 64]
        [--latency-ms 0] [--only unsafe|product]

The product's modules are compiled to bytecode once before the rounds, as `pip install`
compiles an installed copy (and had compiled aiohttp's): from a source tree with
PYTHONDONTWRITEBYTECODE set, every start would compile ~100 modules again, about 0.2 s of
CPU a process that no user's run pays. `--no-precompile` measures without it (the
product's `__pycache__` folders removed first).

At 50 ms latency the ceiling is concurrency / 0.05 s rows/s (1,280 at 64 in flight).
Traffic goes to 127.0.0.1 only; each process is killed after --timeout seconds.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
from common import KEY, ROOT, canonical_csv, sandbox_server


@dataclass
class Leg:
    name: str
    rows: int
    wall: float
    cpu: float
    server_cpu: float
    #: the loop alone: the product's summary duration_s, the script's own clock
    inner: float

    @property
    def rate(self) -> float:
        return self.rows / self.wall

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.rows * 1e6


@contextmanager
def sandbox(latency_ms: float, rate_limit: str) -> Iterator[tuple[str, psutil.Process]]:
    """A fresh sandbox in its own process on 127.0.0.1: its URL and its process."""
    args = ["--rate-limit", rate_limit, "--log-level", "warning"]
    if latency_ms:
        args += ["--latency-ms", str(latency_ms)]
    with sandbox_server(*args) as (url, pid):
        yield url, psutil.Process(pid)


def timed(argv: list[str], env: dict[str, str], timeout: float) -> tuple[float, float, str]:
    """Run argv to its end: (wall s, CPU s of that process, its stdout)."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{argv[1]} ran over {timeout} s")
            time.sleep(0.005)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{argv} exited {proc.returncode}: {text[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, text


def server_cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def unsafe(source: Path, args: argparse.Namespace) -> Leg:
    with sandbox(args.latency_ms, args.rate_limit) as (url, server):
        before = server_cpu(server)
        wall, cpu, out = timed(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "unsafe_aiohttp.py"),
                *(url, str(source), "--concurrency", str(args.concurrency)),
            ],
            {**os.environ, "CLINIKAPI_API_KEY": KEY},
            args.timeout,
        )
        spent = server_cpu(server) - before
    result = json.loads(out.strip().splitlines()[-1])
    created = int(result["created"])
    if created != args.rows:
        raise RuntimeError(f"the unsafe script created {created} of {args.rows}")
    return Leg("unsafe aiohttp", created, wall, cpu, spent, float(result["seconds"]))


def product(source: Path, args: argparse.Namespace) -> Leg:
    with (
        sandbox(args.latency_ms, args.rate_limit) as (url, server),
        tempfile.TemporaryDirectory() as tmp,
    ):
        summary = Path(tmp) / "summary.json"
        before = server_cpu(server)
        wall, cpu, _ = timed(
            [
                *(sys.executable, "-m", "importer", "run", str(source)),
                *("--ledger", str(Path(tmp) / "ledger.db"), "--quiet"),
                *("--concurrency", str(args.concurrency), "--summary-json", str(summary)),
            ],
            {**os.environ, "CLINIKAPI_API_KEY": KEY, "CLINIKAPI_BASE_URL": url},
            args.timeout,
        )
        spent = server_cpu(server) - before
        result = json.loads(summary.read_text())
    created = int(result["created"])
    if created != args.rows:
        raise RuntimeError(f"the product created {created} of {args.rows}")
    return Leg("consent-import run", created, wall, cpu, spent, float(result["duration_s"]))


def line(leg: Leg) -> str:
    return (
        f"  {leg.name:<20} {leg.rate:>7,.0f} rows/s  wall {leg.wall:6.2f} s  "
        f"CPU {leg.cpu_us:5.0f} µs/row  (loop alone {leg.rows / leg.inner:>6,.0f} rows/s; "
        f"sandbox {leg.server_cpu / leg.rows * 1e6:4.0f} µs/row)"
    )


def span(values: list[float], fmt: str) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{format(mid, fmt)} (range {format(low, fmt)}–{format(high, fmt)})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rate-limit", default="100000000/60", help="the sandbox's window")
    parser.add_argument("--only", choices=["unsafe", "product"])
    parser.add_argument("--timeout", type=float, default=600.0, help="per process, seconds")
    parser.add_argument(
        "--no-precompile",
        action="store_true",
        help="remove the product's bytecode instead of compiling it first (each start "
        "compiles its modules if PYTHONDONTWRITEBYTECODE is set)",
    )
    args = parser.parse_args()
    if args.no_precompile:
        for cache in (ROOT / "importer").rglob("__pycache__"):
            shutil.rmtree(cache)
    else:
        compileall.compile_dir(ROOT / "importer", quiet=1)
    source = canonical_csv(args.rows, f"import_{args.rows}.csv")
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"send loop: {args.rows:,} rows, {args.concurrency} in flight, latency "
        f"{args.latency_ms:g} ms, {args.rounds} rounds; {started}; {os.cpu_count()} cores; "
        f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"product {'not ' if args.no_precompile else ''}precompiled"
    )
    if args.latency_ms:
        ceiling = args.concurrency / (args.latency_ms / 1000)
        print(f"  ceiling at {args.latency_ms:g} ms: {ceiling:,.0f} rows/s")
    legs: dict[str, list[Leg]] = {"unsafe": [], "product": []}
    for n in range(args.rounds):
        print(f"round {n + 1} (load {os.getloadavg()[0]:.2f})")
        # Alternate which goes first, so neither always meets the warmer machine.
        order = ["unsafe", "product"] if n % 2 == 0 else ["product", "unsafe"]
        for name in order:
            if args.only in (None, name):
                leg = unsafe(source, args) if name == "unsafe" else product(source, args)
                legs[name].append(leg)
                print(line(leg), flush=True)
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, runs in legs.items():
        if runs:
            print(
                f"{name:<8} rows/s {span([r.rate for r in runs], ',.0f')}; "
                f"CPU µs/row {span([r.cpu_us for r in runs], '.0f')}"
            )
    if legs["unsafe"] and legs["product"]:
        pairs = list(zip(legs["unsafe"], legs["product"], strict=True))
        print(
            f"product / unsafe rows/s {span([p.rate / u.rate for u, p in pairs], '.2f')}; "
            f"CPU a row product / unsafe {span([p.cpu_us / u.cpu_us for u, p in pairs], '.2f')}"
        )


if __name__ == "__main__":
    main()
