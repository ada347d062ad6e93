"""The ledger's size and `status` on it: bytes a row by table (dbstat), `status` wall.

Two ledgers:

- a real one (`--real-rows`, 20,000 by default; 0 skips it): a `run` of the canonical
  file against the sandbox in its own process, as bench_scale makes it;
- a synthetic one of `--rows` rows (1,000,000 by default), written through the ledger's
  own transitions as a run writes them (intent, then done, a batch per transaction),
  each row shaped like a canonical row's record: its key, file, patient id, consent and
  request ids as the sandbox makes them, ten field hashes, the payload hash and the
  cells digest.

With `--cpu-rows N`, also the CPU a row of the writes a run makes for a created row
(its intent; its outcome and the patchable values kept for undo), in commits of 64 as
the async writer groups them under 64 requests in flight (issue 24); with
`--by-statement`, that CPU's share spent in each SQL statement (the rest is Python).

For each: bytes a row, per table and index (`SELECT name, sum(pgsize) FROM dbstat`),
and `status --ledger` wall (the CLI in a new process, best of 3) and its reads alone
(in process). It runs the `importer` its Python imports, so the figures before a change
come from another checkout's venv:

    python benchmarks/bench_ledger.py [--rows 1000000] [--real-rows 20000]
    /work/main/.venv/bin/python benchmarks/bench_ledger.py   # main's code
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import KEY, canonical_csv, sandbox_process

from importer.ledger._codec import FIELD_ORDER
from importer.ledger._ledger import Ledger
from importer.ledger._schema import Op, Source
from importer.reports._status import status

BATCH = 2_000
#: the fields the ledger keeps values of for undo (importer.engine._decide.PATCHABLE)
PATCHABLE = ("status", "policyUri", "verification", "provision")
FIELDS = FIELD_ORDER[:10]


def by_table(path: Path, rows: int) -> dict[str, float]:
    """Bytes a row of each table and index, and of the whole file."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes = dict(db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
    out = {name: size / rows for name, size in sizes.items() if size >= 0.5 * rows}
    out["(file)"] = path.stat().st_size / rows
    return out


def status_wall(path: Path) -> tuple[float, float]:
    """(`status --ledger` wall in a new process, best of 3; its reads alone, in process)."""
    walls = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "importer", "status", "--ledger", str(path)],
            check=True,
            cwd=path.parent,  # not the checkout: `-m` would import the importer found there
            stdout=subprocess.DEVNULL,
        )
        walls.append(time.perf_counter() - started)
    started = time.perf_counter()
    status(path)
    return min(walls), time.perf_counter() - started


def real_ledger(rows: int, tmp: Path) -> Path:
    ledger = tmp / "real.db"
    source = canonical_csv(rows)
    with sandbox_process() as url:
        subprocess.run(
            [
                *(sys.executable, "-m", "importer", "run", str(source)),
                *("--ledger", str(ledger), "--concurrency", "64", "--quiet"),
            ],
            check=True,
            cwd=tmp,
            env={**os.environ, "CLINIKAPI_API_KEY": KEY, "CLINIKAPI_BASE_URL": url},
        )
    return ledger


def synthetic_ledger(rows: int, tmp: Path) -> Path:
    """`rows` rows created through the transitions (intent, then done), as a run of the
    canonical file of that many rows writes them."""
    path = tmp / "synthetic.db"
    ledger = Ledger(path, base_url="http://127.0.0.1:1")
    run_id = ledger.begin_run([str(canonical_csv(rows))])
    name = str(canonical_csv(rows))
    body = '{"resourceType":"Consent"}'
    for start in range(0, rows, BATCH):
        batch = []
        for i in range(start, min(rows, start + BATCH)):
            digest = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
            batch.append((Source(f"K{i:09d}", name, i + 2), digest, f"pt_{i % 250_000:07d}"))
        with ledger.transaction():
            for src, digest, patient in batch:
                ledger.intent(
                    run_id, src, Op.CREATE, body=body, body_hash=digest, patient_id=patient
                )
        with ledger.transaction():
            for src, digest, patient in batch:
                ledger.done(
                    run_id,
                    src,
                    Op.CREATE,
                    action="created",
                    payload_hash=digest,
                    field_hashes={f: digest[2 * n : 2 * n + 12] for n, f in enumerate(FIELDS)},
                    patient_id=patient,
                    request_id=f"req_{digest[:16]}",
                    consent_id=f"consent_{digest[16:40]}",
                    cells_hash=int(digest[40:56], 16) - 2**63,
                )
    ledger.finish_run(run_id, "finished", {"rows": rows, "created": rows})
    ledger.close()
    return path


class _Timed:
    """A ledger's connection that sums the CPU (this thread's) spent in each statement."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.spent: dict[str, list[int]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        started = time.thread_time_ns()
        try:
            return self._db.execute(sql, params)
        finally:
            self._note(sql, started)

    def executemany(self, sql: str, params: Any) -> sqlite3.Cursor:
        started = time.thread_time_ns()
        try:
            return self._db.executemany(sql, params)
        finally:
            self._note(sql, started)

    def _note(self, sql: str, started: int) -> None:
        entry = self.spent.setdefault(" ".join(sql.split())[:72], [0, 0])
        entry[0] += 1
        entry[1] += time.thread_time_ns() - started


def write_cpu(rows: int, tmp: Path, *, by_statement: bool = False) -> float:
    """CPU µs a row of the ledger's writes for `rows` created rows, in commits of 64
    (with `by_statement`, each statement's share printed)."""
    from importer._rows import body_field_hashes

    ledger = Ledger(tmp / "cpu.db", base_url="http://127.0.0.1:1")
    run_id = ledger.begin_run(["in.csv"])
    timed = _Timed(ledger._db)
    if by_statement:
        ledger._db = timed  # type: ignore[assignment]
    made = []
    for i in range(rows):
        day = f"{1 + i % 28:02d}"
        body = {
            "patientId": f"pt_{i:07d}",
            "scope": "treatment",
            "category": ["treatment-consent"],
            "status": "active",
            "dateTime": f"2024-01-{day}T00:00:00Z",
            "policyUri": "https://clinic.example/policy/v1",
            "verification": {
                "verified": True,
                "verifiedWith": f"pt_{i:07d}",
                "verificationDate": f"2023-{1 + i % 12:02d}-{day}T00:00:00Z",
            },
            "provision": {"type": "permit", "period": {"start": f"2024-01-{day}"}},
        }
        text = json.dumps(body, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).hexdigest()
        made.append((Source(f"K{i:09d}", "in.csv", i + 2), body, text, digest))
    started = time.process_time()
    for start in range(0, rows, 64):
        part = made[start : start + 64]
        with ledger.transaction():
            for src, _body, text, digest in part:
                ledger.intent(
                    run_id,
                    src,
                    Op.CREATE,
                    body=text,
                    body_hash=digest,
                    patient_id=src.key,
                    new=True,  # as the engine says of a row planned from no record
                )
        with ledger.transaction():
            for src, body, _, digest in part:
                hashes = body_field_hashes(body)
                ledger.done(
                    run_id,
                    src,
                    Op.CREATE,
                    action="created",
                    payload_hash=digest,
                    field_hashes=hashes,
                    patient_id=src.key,
                    request_id=f"req_{digest[:16]}",
                    consent_id=f"consent_{digest[16:40]}",
                    cells_hash=int(digest[40:56], 16) - 2**63,
                )
                ledger.keep_field_values({k: body[k] for k in PATCHABLE}, hashes)
    spent = time.process_time() - started
    for sql, (count, ns) in sorted(timed.spent.items(), key=lambda item: -item[1][1]):
        print(f"  {ns / rows / 1000:6.1f} µs a row  {count:>7,}x  {sql}")
    ledger._db = timed._db
    ledger.close()
    return spent / rows * 1e6


def report(title: str, path: Path, rows: int) -> None:
    sizes = by_table(path, rows)
    wall, reads = status_wall(path)
    print(f"--- {title}: {rows:,} rows, {sizes['(file)']:.0f} bytes a row (file)")
    for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
        if name != "(file)":
            print(f"  {name:<28} {size:7.1f} bytes a row")
    print(f"  status --ledger {wall:.2f} s wall (best of 3); its reads {reads:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic ledger rows")
    parser.add_argument("--real-rows", type=int, default=20_000, help="0: no real run")
    parser.add_argument("--cpu-rows", type=int, default=0, help="writes' CPU a row; 0: not")
    parser.add_argument(
        "--by-statement", action="store_true", help="with --cpu-rows: each statement's share"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if args.cpu_rows:
            spent = write_cpu(args.cpu_rows, tmp, by_statement=args.by_statement)
            print(f"--- writes: {spent:.0f} µs of CPU a row")
        if args.real_rows:
            report("real run", real_ledger(args.real_rows, tmp), args.real_rows)
        if args.rows:
            started = time.perf_counter()
            path = synthetic_ledger(args.rows, tmp)
            print(f"(synthetic ledger written in {time.perf_counter() - started:.0f} s)")
            report("synthetic", path, args.rows)


if __name__ == "__main__":
    main()
