"""`validate` speed and memory on canonical CSVs of 100,000 and 1,000,000 rows.

Target on the 2-core machine: at least 50,000 rows/s, peak RSS under 500 MB, and about
the same peak at both sizes (rows stream in chunks).

    python benchmarks/bench_validate.py [--rows 100000 1000000]
"""

from __future__ import annotations

import argparse

from common import canonical_csv, cli


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    print("validate: rows, seconds, rows/s, peak RSS MB")
    for rows in args.rows:
        path = canonical_csv(rows)
        seconds, peak = cli("validate", str(path), "--quiet")
        rate = rows / seconds
        print(f"validate {rows:>9,} rows {seconds:7.1f} s {rate:>9,.0f} rows/s  peak RSS {peak} MB")


if __name__ == "__main__":
    main()
