"""Make tests/data/schema2-ledger.db with the code of main at 2e2c374 (ledger schema 2;
run once, kept), with what that code exported and read from it.

Two inputs: keyed.csv (a sourceKey column) and natural.csv (no key column: natural
keys). The ledger holds a row in every state that code writes after a run: done
(created, updated, recreated), invalid, revoked, in_flight (a POST answered 503, outcome
unknown), and done with an error noted (a PATCH answered 503). Its consents lived on a
sandbox that is gone; the test of this fixture points it at a new one and reruns the
last inputs.

Also written: schema2-created.csv and schema2-failed.csv (`export` of that code) and
schema2-done.json (`Ledger.open_readonly(...).done_consents()` of that code).
schema2-status.txt is that code's `consent-import status --ledger` of a copy, its path
written LEDGER.

    git checkout 2e2c374 && python tests/data/make_schema2_ledger.py
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from importer.ledger._ledger import Ledger
from importer.reports._export import export_csvs
from importer.sandbox import SandboxConfig, running_sandbox
from tests.engine_helpers import consent_rows, run, write_csv

HERE = Path(__file__).parent
OUT = HERE / "schema2-ledger.db"


def natural(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "sourceKey"} for row in rows]


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    os.chdir(tmp)  # the ledger records the inputs' names as given
    ledger = tmp / "schema2.db"
    keyed = Path("keyed.csv")
    bare = Path("natural.csv")
    rows = list(consent_rows(6))  # K000000..K000005
    rows[4]["scope"] = "no-such-scope"  # invalid
    nat = natural(list(consent_rows(4, start=100)))
    nat[3]["status"] = "maybe"  # invalid (its natural key still holds)
    with running_sandbox(SandboxConfig()) as sb:
        # run 1: K0..K3, K5 created, K4 invalid; three natural rows created, one invalid
        run([write_csv(keyed, rows), write_csv(bare, nat)], sb.base_url, ledger, max_attempts=1)
        # run 2: K1 edited (patched), K0's date edited (recreated), K3 left (revoked),
        # K6 added; a natural row's status edited (patched)
        second = [dict(r) for r in rows[:3]] + [rows[4], rows[5], *consent_rows(1, start=6)]
        second[1]["status"] = "inactive"
        second[0]["dateTime"] = "2023-12-31T00:00:00Z"
        nat[0]["status"] = "inactive"
        run(
            [write_csv(keyed, second), write_csv(bare, nat)],
            sb.base_url,
            ledger,
            max_attempts=1,
            revoke_missing=True,
            revoke_after=1,
            revoke_max="100%",
            on_immutable_change="recreate",
        )
        # run 3, every request 503: K2 edited (its PATCH fails), K7 new (its POST in
        # flight)
        sb.configure(fault_unavailable=1.0)
        third = [dict(r) for r in second] + list(consent_rows(1, start=7))
        third[2]["status"] = "inactive"
        run([write_csv(keyed, third), write_csv(bare, nat)], sb.base_url, ledger, max_attempts=1)
    with sqlite3.connect(ledger) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode=DELETE")
        print(dict(db.execute("SELECT state, count(*) FROM rows GROUP BY state")))
    readonly = Ledger.open_readonly(ledger)
    done = [
        (d.source_key, d.source_file, d.source_row, d.consent_id, d.patient_id, d.payload_hash)
        for d in readonly.done_consents()
    ]
    fields = [d.field_hashes for d in readonly.done_consents()]
    readonly.close()
    shutil.copy(ledger, OUT)
    (HERE / "schema2-done.json").write_text(
        json.dumps([[*d, f] for d, f in zip(done, fields, strict=True)], indent=1) + "\n"
    )
    export_csvs(ledger, HERE / "schema2-created.csv", HERE / "schema2-failed.csv")
    write_csv(HERE / "schema2-keyed.csv", third)
    write_csv(HERE / "schema2-natural.csv", nat)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
