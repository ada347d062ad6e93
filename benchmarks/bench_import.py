"""Import throughput against the sandbox (each in its own process).

(a) sandbox limited to 100 requests per 2 s window, 20 ms latency, 1,000 rows:
    throughput at least 95% of the limit's 50 rows/s, 429s under 1% of requests.
(b) no limit, 50 ms latency, 5,000 rows, --concurrency 64: at least 500 rows/s and at
    least 30 times the one-request-at-a-time baseline (baseline_sequential.py).

    python benchmarks/bench_import.py [--only a|b]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from baseline_sequential import post_sequentially
from common import KEY, canonical_csv, cli, sandbox_process


def import_run(url: str, source: Path, *extra: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        cli(
            "run",
            str(source),
            "--ledger",
            str(Path(tmp) / "l.db"),
            "--quiet",
            "--summary-json",
            str(summary),
            *extra,
            env={"CLINIKAPI_API_KEY": KEY, "CLINIKAPI_BASE_URL": url},
        )
        result: dict[str, float] = json.loads(summary.read_text())
        return result


def bench_a() -> None:
    source = canonical_csv(1_000, "import_1000.csv")
    with sandbox_process("--rate-limit", "100/2", "--latency-ms", "20") as url:
        s = import_run(url, source, "--concurrency", "8")
    rate = s["created"] / s["duration_s"]
    limited = s["rate_limited"] / max(s["requests"], 1)
    print(
        f"(a) 1,000 rows, limit 100/2 s, 20 ms: {rate:.1f} rows/s = {rate / 50:.1%} of the "
        f"limit; 429s {s['rate_limited']} of {s['requests']} requests ({limited:.2%}); "
        f"created {s['created']}"
    )


def bench_b() -> None:
    source = canonical_csv(5_000, "import_5000.csv")
    with sandbox_process("--latency-ms", "50") as url:
        s = import_run(url, source, "--concurrency", "64")
        baseline = post_sequentially(url, source, 100)
    rate = s["created"] / s["duration_s"]
    print(
        f"(b) 5,000 rows, 50 ms, concurrency 64: {rate:.0f} rows/s; one-at-a-time baseline "
        f"{baseline:.1f} rows/s; speed-up {rate / baseline:.0f}x; created {s['created']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["a", "b"])
    args = parser.parse_args()
    if args.only in (None, "a"):
        bench_a()
    if args.only in (None, "b"):
        bench_b()


if __name__ == "__main__":
    main()
