"""Where the send loop's CPU goes: `consent-import run` profiled on the no-latency run.

Starts a sandbox in its own process (no latency, a rate limit far above the run's), runs
the product on the canonical file (fresh ledger, --concurrency 64) under py-spy (every
thread, on-CPU samples only) or cProfile (main thread only, with call counts), and prints:

- py-spy: own samples by function, inclusive samples by function, and the share of each
  group (reading, pydantic, JSON, transport, client, limiter, ledger, engine, event loop,
  startup) by the innermost frame of the importer (so a library call is charged to the
  importer module that made it) and by the leaf frame's library;
- cProfile: the top entries by own time and by cumulative time (pstats).

    python benchmarks/profile_sendloop.py [--rows 20000] [--tool py-spy|cprofile]
        [--rate 250] [--top 25] [--keep DIR]

py-spy needs root or --nonblocking (used here: sampling without pausing the process);
--native samples C frames too (the garbage collector, the event loop's C), pausing it.
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_sendloop import sandbox
from common import KEY, canonical_csv

# (group, patterns on a frame's file path); the first match wins.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("startup/imports", ("<frozen importlib", "importlib/", "site-packages/click/")),
    (
        "reading/normalizing",
        (
            "_reader.py",
            "_normalize.py",
            "_mapping.py",
            "_values.py",
            "_fields.py",
            "_keys.py",
            "_fastcheck.py",
            "_validate.py",
            "pandas/",
            "/csv.py",
            "_column_guess.py",
            # the parts' modules (issue 23 layout)
            "_mapping_v2.py",
            "_v1rows.py",
            "_v2rows.py",
            "_cells.py",
            "_dates.py",
            "_key_index.py",
            "_excel.py",
            "_layout.py",
            "_encoding.py",
            "_cutcheck.py",
        ),
    ),
    ("HTTP transport", ("_http11.py", "httpx/", "httpcore/", "h11/", "httptools", "ssl.py")),
    (
        "pydantic models",
        ("pydantic", "_models.py", "_fhir_body.py", "importer/_fhir.py", "intake/_fhir.py"),
    ),
    ("JSON", ("json/", "orjson")),
    ("client envelope", ("_client.py",)),
    ("limiter/breaker/retry", ("_limiter.py", "_breaker.py", "_retry.py", "tenacity/")),
    (
        "ledger",
        (
            *("_ledger.py", "sqlite3", "_lineage.py", "_identity.py", "_undo.py"),
            *("_transitions.py", "_writer.py", "_codec.py", "_schema.py", "_reads.py"),
        ),
    ),
    (
        "engine bookkeeping",
        (
            "_engine.py",
            "_plan.py",
            *("_executor.py", "_recorder.py", "_work.py", "_decide.py", "_gate.py"),
            "_results.py",
            "_observer.py",
            "_rowlog.py",
            "_metrics.py",
            "_console.py",
            "_runner.py",
            "_settle.py",
            "_lookup.py",
            "_starter.py",
            "_revocation.py",
            "_suspects.py",
            "_gate.py",
            "_preflight.py",
            "_outputs.py",
            "rich/",
            "prometheus_client/",
        ),
    ),
    ("event loop", ("asyncio/", "uvloop", "anyio/", "sniffio/", "threading.py", "selectors")),
]
_AS_THEMSELVES = ("HTTP transport", "pydantic models", "JSON")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def group_of(path: str) -> str:
    for name, patterns in GROUPS:
        if any(p in path for p in patterns):
            return name
    return "other"


def is_importer(path: str) -> bool:
    return path.startswith("importer/") or "/importer/" in path


def frames(stack: str) -> list[tuple[str, str]]:
    """(function label, file) from a raw py-spy stack, outermost first."""
    out = []
    for part in stack.split(";"):
        match = FRAME.match(part)
        if match is None:  # "thread (0x...)" or "process ..." markers
            continue
        path = match["file"]
        short = path.split("site-packages/")[-1]
        out.append((f"{match['func']} ({short}:{match['line'] or ''})", path))
    return out


def report_raw(path: Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    by_importer: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[str] = collections.Counter()
    other: collections.Counter[str] = collections.Counter()
    samples = 0
    for raw in path.read_text().splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        chain = frames(stack)
        if not chain:
            continue
        samples += n
        own[chain[-1][0]] += n
        for label in {label for label, _ in chain}:
            total[label] += n
        if any(label.startswith("gc_collect") for label, _ in chain):
            # --native only: CPython's cyclic collector, whichever allocation set it off
            by_leaf["garbage collector"] += n
            by_importer["garbage collector"] += n
            continue
        if any("<frozen importlib" in p for _, p in chain):
            by_leaf["startup/imports"] += n
            by_importer["startup/imports"] += n
            continue
        leaf = group_of(chain[-1][1])
        by_leaf[leaf] += n
        if leaf == "other":
            other[chain[-1][1]] += n
        inner = next((p for _, p in reversed(chain) if is_importer(p)), chain[-1][1])
        # httpx, pydantic and json are charged as themselves, not to the module calling them.
        by_importer[leaf if leaf in _AS_THEMSELVES else group_of(inner)] += n
    print(f"py-spy: {samples} on-CPU samples (all threads)")
    print(f"--- top {top} by own samples")
    for label, n in own.most_common(top):
        print(f"  {n / samples:6.1%}  {label}")
    print(f"--- top {top} by inclusive samples")
    for label, n in total.most_common(top):
        print(f"  {n / samples:6.1%}  {label}")
    print("--- groups: by the innermost importer frame (other libraries charged to their caller)")
    for name, n in by_importer.most_common():
        print(f"  {n / samples:6.1%}  {name}")
    print("--- groups: by the leaf frame")
    for name, n in by_leaf.most_common():
        print(f"  {n / samples:6.1%}  {name}")
    print("--- leaf files in 'other'")
    for name, n in other.most_common(8):
        print(f"  {n / samples:6.1%}  {name}")


def run_argv(source: Path, ledger: Path, summary: Path) -> list[str]:
    return [
        *("-m", "importer", "run", str(source), "--ledger", str(ledger), "--quiet"),
        *("--concurrency", "64", "--summary-json", str(summary)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--tool", choices=["py-spy", "cprofile"], default="py-spy")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples a second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", type=Path, help="keep the profile in this directory")
    parser.add_argument("--raw", type=Path, help="only report on this py-spy raw profile")
    parser.add_argument(
        "--native",
        action="store_true",
        help="py-spy with C frames (pauses the process to sample: needs ptrace): shows the "
        "garbage collector and the event loop's C, which Python frames alone charge to "
        "their caller",
    )
    args = parser.parse_args()
    if args.raw:
        report_raw(args.raw, args.top)
        return
    source = canonical_csv(args.rows, f"import_{args.rows}.csv")
    with tempfile.TemporaryDirectory() as name, sandbox(0, "100000000/60") as (url, _):
        tmp = args.keep or Path(name)
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CLINIKAPI_API_KEY": KEY, "CLINIKAPI_BASE_URL": url}
        argv = run_argv(source, Path(name) / "ledger.db", Path(name) / "summary.json")
        if args.tool == "py-spy":
            out = tmp / "profile.txt"
            spy = Path(sys.executable).with_name("py-spy")
            subprocess.run(
                [
                    *(str(spy), "record", "--threads", "--function"),
                    "--native" if args.native else "--nonblocking",
                    *("--rate", str(args.rate), "--format", "raw", "-o", str(out)),
                    *("--", sys.executable, *argv),
                ],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            report_raw(out, args.top)
        else:
            out = tmp / "profile.prof"
            subprocess.run(
                [sys.executable, "-m", "cProfile", "-o", str(out), *argv], env=env, check=True
            )
            stats = pstats.Stats(str(out))
            stats.sort_stats("tottime").print_stats(args.top)
            stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
