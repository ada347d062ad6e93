"""Make tests/data/legacy-ledger-15ffa94.db with the code of commit 15ffa94 (run once, kept).

The ledger holds one row in each state that code writes: done (created), done (updated),
invalid, in_flight (a POST answered 503, outcome unknown), failed (a PATCH answered 503),
revoked (its row left the source and --revoke-missing patched it). Its consents lived on
a sandbox that is gone; the test of this fixture opens it and reruns its last input.

    git checkout 15ffa94 && python tests/data/make_legacy_ledger.py
"""

from __future__ import annotations

import csv
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from importer.sandbox import SandboxConfig, running_sandbox
from tests.engine_helpers import consent_rows, run

OUT = Path(__file__).with_name("legacy-ledger-15ffa94.db")


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    ledger = tmp / "legacy.db"
    rows = list(consent_rows(5))  # K000000..K000004
    rows[4]["scope"] = "no-such-scope"  # invalid
    with running_sandbox(SandboxConfig()) as sb:
        # run 1: K0..K3 created, K4 invalid
        run(write(tmp / "a.csv", rows), sb.base_url, ledger, max_attempts=1)
        # run 2: K1 edited (patched), K3 left the source (revoked), K5 added (created)
        second = [dict(r) for r in rows[:3]] + [rows[4], *consent_rows(1, start=5)]
        second[1]["status"] = "inactive"
        run(
            write(tmp / "b.csv", second),
            sb.base_url,
            ledger,
            max_attempts=1,
            revoke_missing=True,
            revoke_after=1,
        )
        # run 3, every request 503: K2 edited (its PATCH fails), K6 new (its POST in flight)
        sb.configure(fault_unavailable=1.0)
        third = [dict(r) for r in second] + list(consent_rows(1, start=6))
        third[2]["status"] = "inactive"
        run(write(tmp / "c.csv", third), sb.base_url, ledger, max_attempts=1)
    shutil.copy(ledger, OUT)
    write(OUT.with_suffix(".csv"), third)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
