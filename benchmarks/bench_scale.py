"""Millions of rows: memory, no-op rerun, ledger size, crash recovery (issue 13).

Against the sandbox in its own process (no latency, --concurrency 64), with the
canonical file of N rows, every figure of the issue's table in one run:

- first run: wall, created rows/s, peak RSS of the CLI process;
- ledger bytes a row, and `status --ledger` wall on that ledger;
- no-op rerun (nothing changed): wall, requests, peak RSS, against `validate` of the file;
- rerun with 1% of rows changed (a patchable field) and 0.5% new: wall, requests;
- recovery after SIGKILL at 50% of a fresh run (64 in flight): the rerun's lookups, and
  duplicates on the server (`--crash-rows`, 20,000 by default: the bound depends on the
  concurrency, not on the file's size).

With several sizes (`--rows 100000,1000000`) it also prints the first run's peak RSS
ratio between the smallest and the largest. Targets: first-run and no-op peak RSS
<= 300 MB and within 1.3x between sizes; no-op rerun <= 2x validate; <= 200 bytes a row;
lookups <= 2x concurrency, 0 duplicates; status under 2 s.

With `--v2 N`, a version-2 leg too: the registry file of N rows (two consents a row)
through its mapping: validate, first run, no-op rerun.

    python benchmarks/bench_scale.py [--rows 1000000] [--crash-rows 20000] [--v2 20000]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import DATA, KEY, ROOT, canonical_csv, cli, registry_csv, sandbox_process

from importer.reports._status import status

CONCURRENCY = "64"


def run_cli(
    url: str, source: Path, ledger: Path, tmp: Path, *extra: str
) -> tuple[float, int, dict[str, float]]:
    """One `run` to the end: (wall seconds, peak RSS MB, its summary)."""
    summary = tmp / "summary.json"
    seconds, peak = cli(
        "run",
        str(source),
        *extra,
        "--ledger",
        str(ledger),
        "--concurrency",
        CONCURRENCY,
        "--quiet",
        "--summary-json",
        str(summary),
        env={"CLINIKAPI_API_KEY": KEY, "CLINIKAPI_BASE_URL": url},
    )
    return seconds, peak, json.loads(summary.read_text())


def edited_csv(rows: int) -> Path:
    """The canonical file with every 100th row's policyUri changed and 0.5% new rows."""
    path = DATA / f"canonical_{rows}_edited.csv"
    if path.exists():
        return path
    extra = rows // 200
    bigger = canonical_csv(rows + extra, f"canonical_{rows}_plus.csv")
    tmp = path.with_suffix(".tmp")
    with bigger.open(newline="", encoding="utf-8") as src, tmp.open("w", newline="") as out:
        reader, writer = csv.reader(src), csv.writer(out)
        header = next(reader)
        writer.writerow(header)
        uri = header.index("policyUri")
        for i, record in enumerate(reader):
            if i < rows and i % 100 == 0:
                record[uri] += "-edited"
            writer.writerow(record)
    tmp.rename(path)
    bigger.unlink()
    return path


def ledger_bytes(ledger: Path) -> int:
    return sum(
        p.stat().st_size
        for p in (ledger, Path(f"{ledger}-wal"), Path(f"{ledger}-shm"))
        if p.exists()
    )


def crash_recovery(rows: int, tmp: Path) -> tuple[int, int, int]:
    """SIGKILL a fresh run at 50% of `rows`, rerun: (lookups, duplicates, consents)."""
    source = canonical_csv(rows)
    ledger = tmp / "crash.db"
    with sandbox_process() as url:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "importer", "run", str(source)),
                *("--ledger", str(ledger), "--concurrency", CONCURRENCY, "--quiet"),
            ],
            env={**os.environ, "CLINIKAPI_API_KEY": KEY, "CLINIKAPI_BASE_URL": url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        while proc.poll() is None:
            if httpx.get(f"{url}/__sandbox/stats").json()["creates"] >= rows // 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait()
        _, _, summary = run_cli(url, source, ledger, tmp)
        stats = httpx.get(f"{url}/__sandbox/stats").json()
    return int(summary["lookups"]), int(stats["duplicates"]), int(stats["consents"])


def measure(rows: int, tmp: Path) -> dict[str, float]:
    source = canonical_csv(rows)
    edited = edited_csv(rows)
    ledger = tmp / f"scale_{rows}.db"
    out: dict[str, float] = {}
    out["validate_s"], out["validate_mb"] = cli("validate", str(source), "--quiet")
    with sandbox_process() as url:
        wall, peak, s = run_cli(url, source, ledger, tmp)
        out.update(first_s=wall, first_mb=peak, created=s["created"])
        out["rows_per_s"] = s["created"] / s["duration_s"]
        out["ledger_bytes_row"] = ledger_bytes(ledger) / rows
        out["status_s"], _ = cli("status", "--ledger", str(ledger))
        started = time.perf_counter()
        status(ledger)  # the query alone, without Python and pandas starting
        out["status_query_s"] = time.perf_counter() - started
        wall, peak, s = run_cli(url, source, ledger, tmp)
        out.update(noop_s=wall, noop_mb=peak, noop_requests=s["requests"])
        out["noop_unchanged"] = s["unchanged"]
        wall, peak, s = run_cli(url, edited, ledger, tmp)
        out.update(edited_s=wall, edited_mb=peak, edited_requests=s["requests"])
        out.update(edited_updated=s["updated"], edited_created=s["created"])
    return out


def v2_leg(rows: int, tmp: Path) -> None:
    """The registry file through its version-2 mapping (two consents a row, nested
    provisions): validate, first run and no-op rerun."""
    source, mapping = registry_csv(rows)
    ledger, extra = tmp / "v2.db", ("--mapping", str(mapping))
    v, v_mb = cli("validate", str(source), *extra, "--quiet")
    with sandbox_process() as url:
        first, first_mb, s = run_cli(url, source, ledger, tmp, *extra)
        noop, noop_mb, again = run_cli(url, source, ledger, tmp, *extra)
    print(f"--- version 2, {rows:,} rows ({s['created']:,.0f} consents)")
    print(f"validate                  {v:7.1f} s   peak RSS {v_mb:4.0f} MB")
    print(f"first run                 {first:7.1f} s   peak RSS {first_mb:4.0f} MB")
    print(
        f"no-op rerun               {noop:7.1f} s   peak RSS {noop_mb:4.0f} MB  "
        f"{noop / v:.2f}x validate, {again['requests']:.0f} requests, "
        f"{again['unchanged']:,.0f} unchanged"
    )


def report(rows: int, m: dict[str, float]) -> None:
    v = m["validate_s"]
    print(f"--- {rows:,} rows (sandbox, no latency, --concurrency {CONCURRENCY})")
    print(f"validate                  {v:7.1f} s   peak RSS {m['validate_mb']:4.0f} MB")
    print(
        f"first run                 {m['first_s']:7.1f} s   peak RSS {m['first_mb']:4.0f} MB  "
        f"created {m['created']:,.0f} at {m['rows_per_s']:,.0f} rows/s"
    )
    print(f"ledger                    {m['ledger_bytes_row']:7.0f} bytes a row")
    print(
        f"status --ledger           {m['status_s']:7.2f} s   (its reads of the ledger: "
        f"{m['status_query_s']:.2f} s)"
    )
    print(
        f"no-op rerun               {m['noop_s']:7.1f} s   peak RSS {m['noop_mb']:4.0f} MB  "
        f"{m['noop_s'] / v:.2f}x validate, {m['noop_requests']:.0f} requests, "
        f"{m['noop_unchanged']:,.0f} unchanged"
    )
    print(
        f"1% changed + 0.5% new     {m['edited_s']:7.1f} s   peak RSS {m['edited_mb']:4.0f} MB  "
        f"{m['edited_s'] / v:.2f}x validate, {m['edited_requests']:.0f} requests "
        f"({m['edited_updated']:,.0f} updated, {m['edited_created']:,.0f} created)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="1000000", help="comma-separated sizes")
    parser.add_argument("--crash-rows", type=int, default=20_000)
    parser.add_argument("--no-crash", action="store_true", help="skip the SIGKILL leg")
    parser.add_argument("--v2", type=int, default=0, help="rows of a version-2 leg (0: none)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.rows.split(",")]
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for rows in sizes:
            results[rows] = measure(rows, tmp)
            report(rows, results[rows])
            for leftover in tmp.glob("scale_*"):
                leftover.unlink()
        if len(sizes) > 1:
            low, high = results[min(sizes)], results[max(sizes)]
            print(
                f"first run peak RSS {max(sizes):,} vs {min(sizes):,} rows: "
                f"{high['first_mb'] / low['first_mb']:.2f}x; no-op rerun "
                f"{high['noop_mb'] / low['noop_mb']:.2f}x"
            )
        if args.v2:
            v2_leg(args.v2, tmp)
        if not args.no_crash:
            lookups, duplicates, consents = crash_recovery(args.crash_rows, tmp)
            print(
                f"SIGKILL at 50% of {args.crash_rows:,} rows, --concurrency {CONCURRENCY}: "
                f"rerun made {lookups} lookups (bound {2 * int(CONCURRENCY)}), "
                f"{duplicates} duplicates, {consents:,} consents"
            )


if __name__ == "__main__":
    main()
