"""A ledger written by an earlier consent-import (commit 15ffa94) opens and resumes.

tests/data/legacy-ledger-15ffa94.db was made by tests/data/make_legacy_ledger.py with
that commit's code; it holds a row in every state that code wrote. Its server is gone,
so the test points it at a new sandbox and reruns the last input it saw.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from importer.ledger._ledger import Ledger
from importer.reports._export import export_csvs
from importer.reports._status import status
from importer.sandbox import SandboxConfig, running_sandbox
from tests.engine_helpers import run
from tests.helpers import copy_ledger

DATA = Path(__file__).parent / "data"
LEGACY = DATA / "legacy-ledger-15ffa94.db"
SOURCE = DATA / "legacy-ledger-15ffa94.csv"
DONE_CONSENTS = {
    "consent_df2fe5e76b5de57b0c60a007",  # K000000 created
    "consent_3ef993f757ccd8d4423c1dde",  # K000001 updated
    "consent_d6b7311e3bc95efc49b8bdcb",  # K000005 created
}


def copy_for(tmp_path: Path, base_url: str) -> Path:
    return copy_ledger(LEGACY, tmp_path / "legacy.db", base_url)


def test_the_legacy_ledger_reads_as_it_was(tmp_path: Path) -> None:
    ledger = copy_for(tmp_path, "http://127.0.0.1:1")
    info = status(ledger)
    assert info["rows_by_state"] == {
        "done": 3,
        "failed": 1,
        "in_flight": 1,
        "invalid": 1,
        "revoked": 1,
    }
    counts = export_csvs(ledger, tmp_path / "created.csv", tmp_path / "failed.csv")
    assert (counts.created, counts.failed) == (3, 3)  # failed: invalid, failed, in flight


def test_a_rerun_on_the_legacy_ledger_sends_nothing_for_done_rows(tmp_path: Path) -> None:
    with running_sandbox(SandboxConfig()) as sb:
        ledger = copy_for(tmp_path, sb.base_url)
        result = run(SOURCE, sb.base_url, ledger)
        sent = [(r["method"], r["path"]) for r in sb.requests() if r["path"].startswith("/v1")]
    stats = result.stats
    assert (stats.rows, stats.unchanged, stats.invalid) == (6, 3, 1)
    # K000006 was in flight: looked up (not found on this server), then posted once.
    assert (stats.lookups, stats.created) == (1, 1)
    assert sorted(method for method, _ in sent) == ["GET", "PATCH", "POST"]
    # K000002's failed PATCH is sent again; no request touches a done row's consent.
    assert not any(consent in path for _, path in sent for consent in DONE_CONSENTS)
    assert stats.by_error == {"not_found": 1}  # that consent lived on the gone server


def test_the_legacy_ledger_is_migrated_once_and_says_so(
    tmp_path: Path, ledger_warnings: list[str]
) -> None:
    said = ledger_warnings
    ledger = copy_for(tmp_path, "http://127.0.0.1:1")
    before = status(ledger)  # opens it: the migration runs here
    assert len(said) == 1
    assert said[0].startswith(f"ledger {ledger}: upgraded from schema 1 to 3 in place, once (")
    assert status(ledger)["rows_by_state"] == before["rows_by_state"]
    assert len(said) == 1  # not again
    with sqlite3.connect(ledger) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "3",
        )
        assert db.execute("SELECT count(*) FROM attempts WHERE outcome = 'ok'").fetchone() == (0,)


def test_a_second_rerun_of_a_legacy_ledger_skips_its_done_rows_in_bulk(
    tmp_path: Path, bodies: list[int]
) -> None:
    """The first rerun compares bodies (a legacy ledger has no cells digests) and keeps
    the digests of the rows it finds unchanged; the second builds no body for them."""
    built = bodies
    with running_sandbox(SandboxConfig()) as sb:
        ledger = copy_for(tmp_path, sb.base_url)
        run(SOURCE, sb.base_url, ledger)
        built[0] = 0
        result = run(SOURCE, sb.base_url, ledger)
    # K000000, K000001, K000005 and K000006 (created by the first rerun) are done: no
    # body; K000002 (its PATCH failed) and K000004 (invalid) are built again.
    assert result.stats.unchanged == 4
    assert built[0] == 2


def test_verify_reads_the_same_consents_before_and_after_the_migration(tmp_path: Path) -> None:
    ledger = copy_for(tmp_path, "http://127.0.0.1:1")

    def read() -> list[tuple[str, str | None, dict[str, str]]]:
        readonly = Ledger.open_readonly(ledger)  # never migrates
        try:
            return [
                (d.consent_id, d.payload_hash, d.field_hashes) for d in readonly.done_consents()
            ]
        finally:
            readonly.close()

    before = read()
    Ledger(ledger).close()  # migrates
    after = read()
    assert {consent for consent, _, _ in after} == DONE_CONSENTS
    # The same consents and field hashes; of each body's SHA-256, its first 16 bytes.
    assert [(c, f) for c, _, f in after] == [(c, f) for c, _, f in before]
    assert all(len(digest or "") == 64 for _, digest, _ in before)
    assert all(
        len(new or "") == 32 and (old or "").startswith(new or "-")
        for (_, old, _), (_, new, _) in zip(before, after, strict=True)
    )
    assert all(len(fields) >= 5 for _, _, fields in after)
