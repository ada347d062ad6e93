"""Issue 24's lean ledger: field hashes of 4 bytes, created rows noted in `rows.created_run`,
and ledgers written before (6-byte hashes, `run_created` entries, no such column) still
open, rerun, verify and undo, their old hashes compared as a row's."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from importer._rows import body_field_hashes
from importer.commands._undo import UndoConfig, undo
from importer.commands._verify import VerifyConfig, normalised_body, verify
from importer.ledger._codec import FIELD_ORDER, pack_field_value, unpack_field_value, unpack_id
from importer.ledger._ledger import Ledger
from importer.sandbox import RunningSandbox, SandboxConfig, running_sandbox
from importer.sandbox._validation import SCOPES, STATUSES
from tests.engine_helpers import KEY, consent_rows, run, write_csv

WRITES = ("POST", "PATCH", "DELETE")


def _hash12(value: Any) -> str:
    """A field's hash as consent-import wrote it before issue 24 (12 hex digits)."""
    return hashlib.sha256(repr(value).encode()).hexdigest()[:12]


def as_before_issue24(ledger: Path, sandbox: RunningSandbox) -> None:
    """Rewrite a ledger as 36a8383 (before issue 24's lean ledger) wrote it: field hashes
    of 6 bytes in `rows` and `field_values`, the rows a run created in `run_created`, no
    `created_run` column. The 6-byte hashes come from the server's copies (what was sent)
    and begin with the 4 bytes this code kept, which the helper checks."""
    consents = {c["id"]: normalised_body(c) for c in sandbox.consents()}
    db = sqlite3.connect(ledger)
    try:
        with db:
            for key, consent_id, stored in db.execute(
                "SELECT source_key, consent_id, field_hashes FROM rows "
                "WHERE field_hashes IS NOT NULL"
            ).fetchall():
                body = consents[unpack_id(consent_id)]
                bits = int.from_bytes(stored[:2], "little")
                names = [n for i, n in enumerate(FIELD_ORDER) if bits >> i & 1]
                old = stored[:2]
                for at, name in enumerate(names):
                    digest = bytes.fromhex(_hash12(body[name]))
                    assert digest[:4] == stored[2 + 4 * at : 6 + 4 * at]
                    old += digest
                db.execute("UPDATE rows SET field_hashes = ? WHERE source_key = ?", (old, key))
            for field, short, value in db.execute("SELECT * FROM field_values").fetchall():
                text = unpack_field_value(value)
                assert text is not None
                digest = bytes.fromhex(_hash12(json.loads(text)))
                assert digest[:4] == short
                db.execute(
                    "UPDATE field_values SET hash = ? WHERE field = ? AND hash = ?",
                    (digest, field, short),
                )
            db.execute(
                "INSERT INTO run_created (run_id, source_key) "
                "SELECT created_run, source_key FROM rows WHERE created_run IS NOT NULL"
            )
            db.execute("ALTER TABLE rows DROP COLUMN created_run")
            db.execute("ALTER TABLE run_changes DROP COLUMN created_run")
    finally:
        db.close()


def methods(sandbox: RunningSandbox) -> dict[str, int]:
    return dict(sandbox.stats()["by_method"])


def spent_since(sandbox: RunningSandbox, before: dict[str, int]) -> dict[str, int]:
    now = methods(sandbox)
    return {m: now.get(m, 0) - before.get(m, 0) for m in WRITES}


def test_a_ledger_from_before_reruns_verifies_and_undoes_with_its_6_byte_hashes(
    tmp_path: Path,
) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        rows = list(consent_rows(20))
        source = write_csv(tmp_path / "in.csv", rows)
        ledger = tmp_path / "l.db"
        assert run(source, sandbox.base_url, ledger).exit_code == 0
        as_before_issue24(ledger, sandbox)
        first = {c["id"]: c for c in sandbox.consents()}

        # A dry run reads it as it is (not a copy in memory): nothing a run reads is missing.
        readonly = Ledger.open_readonly(ledger)
        try:
            assert readonly.is_current()
        finally:
            readonly.close()
        # Read as it is (verify and a dry undo open it read-only): every consent agrees.
        checked = verify(VerifyConfig(ledger=ledger, base_url=sandbox.base_url, api_key=KEY))
        assert (checked.checked, checked.agree, checked.findings) == (20, 20, [])
        dry = undo(
            UndoConfig(
                ledger=ledger, run_id=1, base_url=sandbox.base_url, api_key=KEY, dry_run=True
            )
        )
        assert dry.counts() == {"would_undo": 20}

        # A rerun with two patchable fields edited: two PATCHes, no row taken as changed
        # in every field (a 12-digit hash against an 8-digit one would be: a refusal).
        rows[1]["status"] = "inactive"
        rows[2]["policyUri"] = "https://clinic.example/policy/v2"
        write_csv(source, rows)
        writes = methods(sandbox)
        second = run(source, sandbox.base_url, ledger)
        assert second.exit_code == 0
        assert (second.stats.created, second.stats.updated) == (0, 2)
        assert spent_since(sandbox, writes) == {"POST": 0, "PATCH": 2, "DELETE": 0}

        # Its undo puts back the values field_values kept under 6-byte hashes.
        writes = methods(sandbox)
        back = undo(UndoConfig(ledger=ledger, run_id=2, base_url=sandbox.base_url, api_key=KEY))
        assert back.counts() == {"undone": 2}
        assert spent_since(sandbox, writes) == {"POST": 0, "PATCH": 2, "DELETE": 0}
        assert {c["id"]: c for c in sandbox.consents()} == first

        # The first run's undo deletes what it created (kept in run_created).
        writes = methods(sandbox)
        gone = undo(UndoConfig(ledger=ledger, run_id=1, base_url=sandbox.base_url, api_key=KEY))
        assert gone.counts() == {"undone": 20}
        assert spent_since(sandbox, writes) == {"POST": 0, "PATCH": 0, "DELETE": 20}

        # A rerun creates them again, noted the new way, and its undo deletes them too.
        write_csv(source, rows)
        third = run(source, sandbox.base_url, ledger)
        assert (third.exit_code, third.stats.created) == (0, 20)
        db = sqlite3.connect(ledger)
        try:
            assert db.execute("SELECT count(*) FROM rows WHERE created_run = 3").fetchone() == (20,)
        finally:
            db.close()
        writes = methods(sandbox)
        again = undo(UndoConfig(ledger=ledger, run_id=3, base_url=sandbox.base_url, api_key=KEY))
        assert again.counts() == {"undone": 20}
        assert spent_since(sandbox, writes) == {"POST": 0, "PATCH": 0, "DELETE": 20}
        assert sandbox.stats()["duplicates"] == 0


@pytest.mark.parametrize(
    ("entries", "read"),
    [
        # one value under the row's 4 bytes, or under a ledger's 6 that begin with them
        ([("01234567", "A")], "A"),
        ([("0123456789ab", "A")], "A"),
        ([("01234567", "A"), ("0123456789ab", "A")], "A"),  # the same value both ways
        # two values behind one row's hash: unknown, never a guess
        ([("0123456789ab", "A"), ("01234567ffff", "B")], None),
        ([("01234567", "A"), ("0123456789ab", "B")], None),
        ([("01234567", None)], None),  # known to be shared
        # 6 bytes that begin otherwise are another hash's
        ([("01234568aaaa", "B")], None),
        ([("01234566ffff", "B")], None),
        ([("ffffffff0000", "A")], None),
    ],
)
def test_a_rows_hash_finds_the_value_kept_under_it_or_its_6_byte_form(
    entries: list[tuple[str, str | None]], read: str | None
) -> None:
    db = Ledger(":memory:")
    for digest, value in entries:
        packed = None if value is None else pack_field_value(json.dumps(value))
        db._db.execute("INSERT INTO field_values VALUES (3, ?, ?)", (bytes.fromhex(digest), packed))
    found = db.field_value("status", "01234567")
    assert (None if found is None else json.loads(found)) == read


@pytest.mark.parametrize(
    ("entries", "digest", "read"),
    [
        ([("ffffffff", "A"), ("ffffffff0001", "A")], "ffffffff", "A"),  # no successor
        ([("ffffffff0001", "A"), ("fffffffe0001", "B")], "ffffffff", "A"),
    ],
)
def test_the_last_hash_finds_its_values_too(
    entries: list[tuple[str, str]], digest: str, read: str
) -> None:
    db = Ledger(":memory:")
    for stored, value in entries:
        db._db.execute(
            "INSERT INTO field_values VALUES (3, ?, ?)",
            (bytes.fromhex(stored), pack_field_value(json.dumps(value))),
        )
    found = db.field_value("status", digest)
    assert found is not None
    assert json.loads(found) == read


@pytest.mark.parametrize(("field", "values"), [("status", STATUSES), ("scope", SCOPES)])
def test_the_closed_sets_hashes_of_4_bytes_never_collide(
    field: str, values: tuple[str, ...]
) -> None:
    # A revocation (active -> inactive) or a change of scope is always seen: their 4-byte
    # hashes are distinct, whatever the odds for open values (2**-32 an edited field).
    hashes = {body_field_hashes({field: value})[field] for value in values}
    assert len(hashes) == len(values)
    assert all(len(digest) == 8 for digest in hashes)


# Two policy URIs whose 4-byte field hashes are equal (a birthday search of 113,902
# strings; review of issue 24); their payload hashes differ.
COLLIDING = ("https://clinic.example/policy/v98689", "https://clinic.example/policy/v113901")


def test_an_edit_whose_field_hashes_collide_is_still_sent(tmp_path: Path) -> None:
    before, after = COLLIDING
    assert body_field_hashes({"policyUri": before}) == body_field_hashes({"policyUri": after})
    with running_sandbox(SandboxConfig()) as sandbox:
        rows = list(consent_rows(3))
        rows[1]["policyUri"] = before
        source = write_csv(tmp_path / "in.csv", rows)
        ledger = tmp_path / "l.db"
        assert run(source, sandbox.base_url, ledger).exit_code == 0
        rows[1]["policyUri"] = after
        write_csv(source, rows)
        again = run(source, sandbox.base_url, ledger)
        assert (again.exit_code, again.stats.updated, again.stats.unchanged) == (0, 1, 2)
        assert after in {c["policyUri"] for c in sandbox.consents()}
        assert before not in {c["policyUri"] for c in sandbox.consents()}
        third = run(source, sandbox.base_url, ledger)  # the PATCH's hash is the row's now
        assert (third.stats.updated, third.stats.unchanged) == (0, 3)


_BEFORE_UNDO = ("meta", "runs", "files", "rows", "tally", "bodies", "attempts")


def test_a_ledger_from_before_undo_opens_and_reruns(tmp_path: Path) -> None:
    """A schema-3 ledger from before undo (no run_changes, field_values ...; no
    rows.created_run): the schema script makes run_changes with the column, and the
    upgrade adds it to `rows` only."""
    with running_sandbox(SandboxConfig()) as sandbox:
        source = write_csv(tmp_path / "in.csv", consent_rows(5))
        ledger = tmp_path / "l.db"
        assert run(source, sandbox.base_url, ledger).exit_code == 0
        db = sqlite3.connect(ledger)
        try:
            with db:
                db.execute("ALTER TABLE rows DROP COLUMN created_run")
                tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                for (name,) in tables.fetchall():
                    if name not in _BEFORE_UNDO:
                        db.execute(f"DROP TABLE {name}")
        finally:
            db.close()
        Ledger(ledger).close()
        Ledger(ledger).close()  # and again, now upgraded
        again = run(source, sandbox.base_url, ledger)
        assert (again.exit_code, again.stats.unchanged, again.stats.created) == (0, 5, 0)
        assert len(sandbox.consents()) == 5
