"""`validate` speed and memory on canonical CSVs of 100,000 and 1,000,000 rows.

Target on the 2-core machine: at least 50,000 rows/s, peak RSS under 500 MB, and about
the same peak at both sizes (rows stream in chunks).

With `--v2`, the file is a registry-style export read through a version-2 mapping:
title lines, a filter, NA cells, date and time joined, nested deny provisions, an actor
and two consents per row (target: at least 20,000 rows/s at 1,000,000 rows).

    python benchmarks/bench_validate.py [--rows 100000 1000000] [--v2]
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime

from common import canonical_csv, cli, registry_csv


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--v2", action="store_true", help="a version-2 mapping, 2 consents a row")
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"validate: rows, seconds, rows/s, peak RSS MB ({now}, load average {load})")
    for rows in args.rows:
        if args.v2:
            path, mapping = registry_csv(rows)
            seconds, peak = cli("validate", str(path), "--mapping", str(mapping), "--quiet")
        else:
            path = canonical_csv(rows)
            seconds, peak = cli("validate", str(path), "--quiet")
        rate = rows / seconds
        kind = "v2 " if args.v2 else ""
        print(
            f"validate {kind}{rows:>9,} rows {seconds:7.1f} s {rate:>9,.0f} rows/s  "
            f"peak RSS {peak} MB"
        )


if __name__ == "__main__":
    main()
