"""`undo` (issue 21): a run taken back over the sandbox on a real port."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from importer.commands._undo import UndoConfig, UndoResult, summary_lines, undo
from importer.ledger._ledger import Ledger
from importer.reports._status import status
from importer.sandbox import RunningSandbox, SandboxConfig, running_sandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, ledger_ids, run, write_csv

WRITES = ("POST", "PATCH", "DELETE")


def do_undo(sandbox: RunningSandbox, ledger: Path, run_id: int, **options: Any) -> UndoResult:
    return undo(
        UndoConfig(ledger=ledger, run_id=run_id, base_url=sandbox.base_url, api_key=KEY, **options)
    )


def by_id(sandbox: RunningSandbox) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in sandbox.consents()}


def methods(sandbox: RunningSandbox) -> dict[str, int]:
    return dict(sandbox.stats()["by_method"])


def ledger_dump(path: Path) -> list[tuple[Any, ...]]:
    """Every table of the ledger, as rows (to tell that nothing was written)."""
    db = sqlite3.connect(path)
    try:
        tables = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, *r) for t in sorted(tables) for r in db.execute(f"SELECT * FROM {t}")]  # noqa: S608
    finally:
        db.close()


def first_run(tmp_path: Path, sandbox: RunningSandbox, n: int = 100) -> tuple[Path, Path, list]:
    rows = list(consent_rows(n))
    source = write_csv(tmp_path / "in.csv", rows)
    ledger = tmp_path / "l.db"
    assert run(source, sandbox.base_url, ledger).exit_code == 0
    return source, ledger, rows


def nightly(
    source: Path, ledger: Path, rows: list[dict[str, str]], sandbox: RunningSandbox
) -> None:
    """The nightly run: every row of the first run patched, 50 new rows created."""
    for i, row in enumerate(rows):
        row["policyUri"] = f"https://clinic.example/policy/v{2 + i % 3}"
        if i % 4 == 0:
            row["status"] = "inactive"
    rows.extend(consent_rows(50, start=1000))
    write_csv(source, rows)
    second = run(source, sandbox.base_url, ledger)
    assert (second.stats.created, second.stats.updated) == (50, 100)


def test_undo_of_a_nightly_run_restores_the_bodies_before_it_and_a_rerun_redoes_it(
    tmp_path: Path,
) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        source, ledger, rows = first_run(tmp_path, sandbox)
        before_run = by_id(sandbox)
        ids_before = ledger_ids(ledger)
        states_before = status(ledger)["rows_by_state"]
        nightly(source, ledger, rows, sandbox)
        after_run = by_id(sandbox)
        assert len(after_run) == 150
        writes = methods(sandbox)
        result = do_undo(sandbox, ledger, 2)
        assert result.exit_code == 0, result.rows[:3]
        assert result.counts() == {"undone": 150}
        # The server's consents are those before the run, field by field.
        assert by_id(sandbox) == before_run
        spent = {m: methods(sandbox).get(m, 0) - writes.get(m, 0) for m in WRITES}
        assert spent == {"POST": 0, "PATCH": 100, "DELETE": 50}
        assert ledger_ids(ledger) == ids_before
        assert status(ledger)["rows_by_state"] == states_before  # the tally kept too
        # A rerun of the same file redoes exactly the undone work: no lookups.
        undone = methods(sandbox)
        again = run(source, sandbox.base_url, ledger)
        spent = {m: methods(sandbox).get(m, 0) - undone.get(m, 0) for m in (*WRITES, "GET")}
        assert spent == {"POST": 50, "PATCH": 100, "DELETE": 0, "GET": 0}
        assert (again.stats.created, again.stats.updated, again.stats.lookups) == (50, 100, 0)
        assert again.stats.requests == 150
        assert sandbox.stats()["duplicates"] == 0
        assert {k: v for k, v in by_id(sandbox).items() if k in before_run} == {
            k: v for k, v in after_run.items() if k in before_run
        }


def test_a_dry_run_sends_no_write_writes_nothing_and_lists_rows_without_phi(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        source, ledger, rows = first_run(tmp_path, sandbox)
        nightly(source, ledger, rows, sandbox)
        stored, writes, kept = by_id(sandbox), methods(sandbox), ledger_dump(ledger)
        report = tmp_path / "undo.json"
        args = ["undo", "--ledger", str(ledger), "--run", "2", "--dry-run"]
        args += ["--report", str(report), "--base-url", sandbox.base_url, "--api-key", KEY]
        code, out, _ = run_cli(args, capsys)
        assert code == 0
        after = methods(sandbox)
        assert {m: after.get(m, 0) - writes.get(m, 0) for m in WRITES} == dict.fromkeys(WRITES, 0)
        assert after["GET"] - writes.get("GET", 0) == 150  # reads each consent back
        assert by_id(sandbox) == stored
        assert ledger_dump(ledger) == kept
        assert "in.csv row 2: would give its consent back the fields it had" in out
        assert "in.csv row 102: would delete the consent it created" in out
        assert "would_undo 150" in out
        # No source key, patient id or consent id on the terminal; the report has them.
        for phi in ("K000", "pt_", "consent_"):
            assert phi not in out
        document = json.loads(report.read_text(encoding="utf-8"))
        assert document["summary"]["by_outcome"] == {"would_undo": 150}
        assert report.stat().st_mode & 0o077 == 0


def test_a_consent_edited_since_the_run_is_kept_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        source, ledger, rows = first_run(tmp_path, sandbox)
        nightly(source, ledger, rows, sandbox)
        ids = ledger_ids(ledger)
        patched, created = ids["K000003"], ids["K001003"]
        sandbox.edit_consent(patched, {"policyUri": "https://someone.else/edited"})
        sandbox.edit_consent(created, {"status": "rejected"})
        edited = {i: by_id(sandbox)[i] for i in (patched, created)}
        args = ["undo", "--ledger", str(ledger), "--run", "2", "--base-url", sandbox.base_url]
        code, out, _ = run_cli([*args, "--api-key", KEY], capsys)
        assert code == 1
        assert "in.csv row 5: left (changed_since)" in out  # K000003: spreadsheet row 5
        assert "in.csv row 105: left (changed_since)" in out
        assert "changed_since 2, undone 148" in out
        now = by_id(sandbox)
        assert {i: now[i] for i in (patched, created)} == edited
        assert len(now) == 101  # the other 49 created are gone
        # The rows left keep their ledger record; status shows the run as partly undone.
        assert {"K000003", "K001003"} <= set(ledger_ids(ledger))
        code, out, _ = run_cli(["status", "--ledger", str(ledger), "--json"], capsys)
        assert [(r["id"], r["undo"]) for r in json.loads(out)["runs"]] == [
            (2, "partly undone"),
            (1, None),
        ]


def test_a_second_undo_is_a_no_op_and_status_says_undone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        source, ledger, rows = first_run(tmp_path, sandbox, 20)
        rows[0]["policyUri"] = "https://clinic.example/policy/v9"
        write_csv(source, rows)
        run(source, sandbox.base_url, ledger)
        assert do_undo(sandbox, ledger, 2).counts() == {"undone": 1}
        requests = sandbox.stats()["requests"]
        again = do_undo(sandbox, ledger, 2)
        assert (again.exit_code, again.counts()) == (0, {"undone": 1})
        assert sandbox.stats()["requests"] == requests
        code, out, _ = run_cli(["status", "--ledger", str(ledger)], capsys)
        assert code == 0
        lines = [line for line in out.splitlines() if line.startswith("  run ")]
        assert lines[0].endswith("(undone)")
        assert not lines[1].endswith(")")


def test_undo_of_a_run_with_revocations_gives_their_status_back(tmp_path: Path) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        source, ledger, rows = first_run(tmp_path, sandbox, 10)
        before = by_id(sandbox)
        write_csv(source, rows[:7])
        revoking = run(
            source, sandbox.base_url, ledger, revoke_missing=True, revoke_max="5", revoke_after=1
        )
        assert revoking.stats.revoked == 3
        assert sum(c["status"] == "inactive" for c in by_id(sandbox).values()) == 3
        result = do_undo(sandbox, ledger, 2)
        assert (result.exit_code, result.counts()) == (0, {"undone": 3})
        assert {r.action for r in result.rows} == {"restore_status"}
        assert by_id(sandbox) == before
        assert len(ledger_ids(ledger)) == 10  # done again, not revoked
        # Rerun: the same revocations again, nothing else.
        again = run(
            source, sandbox.base_url, ledger, revoke_missing=True, revoke_max="5", revoke_after=1
        )
        assert (again.stats.revoked, again.stats.requests) == (3, 3)


def test_undo_of_a_recreate_deletes_the_new_consent_and_gives_the_old_its_status(
    tmp_path: Path,
) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        source, ledger, rows = first_run(tmp_path, sandbox, 5)
        before = by_id(sandbox)
        rows[2]["scope"] = "research"
        write_csv(source, rows)
        run(source, sandbox.base_url, ledger, on_immutable_change="recreate")
        assert len(sandbox.consents()) == 6
        result = do_undo(sandbox, ledger, 2)
        assert (result.exit_code, [r.action for r in result.rows]) == (0, ["delete_and_restore"])
        assert by_id(sandbox) == before


def test_a_row_a_later_run_touched_is_left_until_that_run_is_undone(tmp_path: Path) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        source, ledger, rows = first_run(tmp_path, sandbox, 10)
        rows[4]["policyUri"] = "https://clinic.example/policy/v7"
        write_csv(source, rows)
        run(source, sandbox.base_url, ledger)
        result = do_undo(sandbox, ledger, 1)
        assert result.exit_code == 1
        assert result.counts() == {"later_run": 1, "undone": 9}
        assert [r.row for r in result.rows if r.outcome == "later_run"] == [6]
        assert len(sandbox.consents()) == 1
        # Undo the later run first, then the first run finishes.
        assert do_undo(sandbox, ledger, 2).exit_code == 0
        last = do_undo(sandbox, ledger, 1)
        assert (last.exit_code, last.counts()) == (0, {"undone": 10})
        assert sandbox.consents() == []
        assert ledger_ids(ledger) == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run", "9"], "has no run 9"),
        (["--run", "1", "--report", "undo.html"], "undo writes a .json report"),
    ],
)
def test_refusals_exit_2_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        _, ledger, _ = first_run(tmp_path, sandbox, 3)
        requests = sandbox.stats()["requests"]
        base = ["undo", "--ledger", str(ledger), "--base-url", sandbox.base_url, "--api-key", KEY]
        code, out, err = run_cli([*base, *args], capsys)
        assert (code, out) == (2, "")
        assert message in err
        assert sandbox.stats()["requests"] == requests


def test_a_run_made_before_undo_existed_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        _, ledger, _ = first_run(tmp_path, sandbox, 3)
        db = sqlite3.connect(ledger)
        db.execute("DELETE FROM run_undo")  # as a ledger of an earlier version has it
        db.commit()
        db.close()
        base = ["undo", "--ledger", str(ledger), "--base-url", sandbox.base_url, "--api-key", KEY]
        code, _, err = run_cli([*base, "--run", "1", "--dry-run"], capsys)
        assert code == 2
        assert "before `undo` existed" in err
        assert len(sandbox.consents()) == 3


@pytest.mark.parametrize("ledger_file", sorted(Path("tests/data").glob("*.db")))
def test_status_reads_a_ledger_from_before_undo(ledger_file: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / ledger_file.name
    shutil.copy(ledger_file, copy)
    assert all(r["undo"] is None for r in status(copy)["runs"])
    assert Ledger.open_readonly(copy).undo_states() == {}


def test_a_lost_answer_is_read_back_before_the_request_is_sent_again(tmp_path: Path) -> None:
    with running_sandbox(SandboxConfig(seed=5)) as sandbox:
        source, ledger, rows = first_run(tmp_path, sandbox)
        before = by_id(sandbox)
        nightly(source, ledger, rows, sandbox)
        patches = sandbox.stats()["patches"]
        # Half the undo's PATCHes are stored and then answered 500 or dropped.
        sandbox.configure(fault_error_after_store=0.25, fault_drop_after_store=0.25)
        result = do_undo(sandbox, ledger, 2)
        sandbox.configure(fault_error_after_store=0.0, fault_drop_after_store=0.0)
        stats = sandbox.stats()
        assert stats["faults"]["error_after_store"] + stats["faults"]["drop_after_store"] > 10
        assert (result.exit_code, result.counts()) == (0, {"undone": 150})
        assert stats["patches"] - patches == 100  # each consent patched back once
        assert by_id(sandbox) == before


@pytest.mark.slow
def test_sigkill_mid_undo_then_undo_again_touches_each_consent_once(tmp_path: Path) -> None:
    from tests.test_crash_and_schedule import start_cli, wait_for

    with running_sandbox(SandboxConfig(seed=3)) as sandbox:
        source, ledger, rows = first_run(tmp_path, sandbox)
        before = by_id(sandbox)
        nightly(source, ledger, rows, sandbox)
        start = sandbox.stats()
        # Latency keeps requests on the wire, so the kill lands with some done unanswered.
        sandbox.configure(latency_ms=20, jitter_ms=20)

        def writes() -> int:
            now = sandbox.stats()
            return now["deletes"] + now["patches"] - start["deletes"] - start["patches"]

        args = ["undo", "--ledger", str(ledger), "--run", "2", "--concurrency", "8", "--quiet"]
        proc = start_cli(args, sandbox.base_url)
        wait_for(lambda: writes() >= 60 or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert 0 < writes() < 150
        sandbox.configure(latency_ms=0, jitter_ms=0)
        result = do_undo(sandbox, ledger, 2)
        assert (result.exit_code, result.counts()) == (0, {"undone": 150})
        end = sandbox.stats()
        assert end["deletes"] - start["deletes"] == 50
        assert end["patches"] - start["patches"] == 100
        assert by_id(sandbox) == before
        again = run(source, sandbox.base_url, ledger)
        assert (again.stats.created, again.stats.updated, again.stats.lookups) == (50, 100, 0)


def test_a_spent_budget_stops_the_undo_with_exit_3_and_the_next_undo_finishes(
    tmp_path: Path,
) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        source, ledger, rows = first_run(tmp_path, sandbox)
        before = by_id(sandbox)
        nightly(source, ledger, rows, sandbox)
        start = sandbox.stats()
        sandbox.configure(rate_limit=120, rate_window_s=3600)  # room for 60 rows' two requests
        stopped = do_undo(sandbox, ledger, 2, max_wait_s=1.0)
        assert stopped.exit_code == 3
        assert "budget" in (stopped.aborted or "")
        assert sandbox.stats()["rate_limited"] == start["rate_limited"]  # waited for no 429
        assert 0 < stopped.counts().get("undone", 0) < 150
        sandbox.configure(rate_limit=None)
        finished = do_undo(sandbox, ledger, 2)
        assert (finished.exit_code, finished.counts()) == (0, {"undone": 150})
        end = sandbox.stats()
        assert (end["deletes"] - start["deletes"], end["patches"] - start["patches"]) == (50, 100)
        assert by_id(sandbox) == before


def test_undo_honours_the_ledger_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from importer.ledger._lock import LedgerLock

    with running_sandbox(SandboxConfig()) as sandbox:
        _, ledger, _ = first_run(tmp_path, sandbox, 3)
        base = ["undo", "--ledger", str(ledger), "--base-url", sandbox.base_url, "--api-key", KEY]
        with LedgerLock(ledger):
            code, _, err = run_cli([*base, "--run", "1"], capsys)
        assert code == 2
        assert "is in use by process" in err
        assert len(sandbox.consents()) == 3


def test_an_adopted_consent_is_left_on_the_server_and_forgotten(tmp_path: Path) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        rows = list(consent_rows(5))
        source = write_csv(tmp_path / "in.csv", rows)
        run(source, sandbox.base_url, tmp_path / "other.db")  # made by another ledger
        rows[1]["status"] = "inactive"  # adopted, then patched
        write_csv(source, rows)
        ledger = tmp_path / "l.db"
        adopting = run(source, sandbox.base_url, ledger, skip_existing=True)
        assert adopting.stats.adopted == 5
        stored = by_id(sandbox)
        result = do_undo(sandbox, ledger, 1)
        assert (result.exit_code, [(r.row, r.action) for r in result.rows]) == (0, [(3, "forget")])
        assert by_id(sandbox) == stored  # nothing deleted, nothing patched back
        assert len(ledger_ids(ledger)) == 4  # the patched one is forgotten


def test_a_consent_adopted_after_the_runs_own_lost_post_is_left_for_a_person(
    tmp_path: Path,
) -> None:
    with running_sandbox(SandboxConfig(seed=11, fault_error_after_store=0.3)) as sandbox:
        source = write_csv(tmp_path / "in.csv", consent_rows(30))
        ledger = tmp_path / "l.db"
        created = run(source, sandbox.base_url, ledger)
        assert created.exit_code == 0
        assert created.stats.adopted > 0  # stored, answered 500, found by the lookup
        sandbox.configure(fault_error_after_store=0.0)
        result = do_undo(sandbox, ledger, 1)
        assert result.exit_code == 1
        assert result.counts() == {
            "uncertain": created.stats.adopted,
            "undone": 30 - created.stats.adopted,
        }
        assert len(sandbox.consents()) == created.stats.adopted
        assert len(ledger_ids(ledger)) == created.stats.adopted


@pytest.mark.parametrize(
    ("state", "status_sent", "expected"),
    [
        ("done", "rejected", "rejected"),
        ("done", None, "active"),  # sent without one: the server's default
        ("revoked", "active", "inactive"),  # revoked before the run: inactive then
        ("done", "not-a-status", None),  # a hash of no status: unknown, never guessed
    ],
)
def test_the_status_before_a_run_is_found_from_its_hash(
    state: str, status_sent: str | None, expected: str | None
) -> None:
    from importer._rows import body_field_hashes
    from importer.commands._undo import _status_before

    hashes = body_field_hashes({"status": status_sent}) if status_sent else {}
    assert _status_before({"state": state}, hashes) == expected


def test_the_sandbox_answers_404_for_a_deleted_consent_and_edits_uncounted() -> None:
    import httpx

    with running_sandbox(SandboxConfig()) as sandbox:
        headers = {"x-api-key": KEY}
        with httpx.Client(base_url=sandbox.base_url, headers=headers) as http:
            body = {"patientId": "pt_1", "scope": "treatment", "category": "treatment-consent"}
            consent_id = http.post("/v1/consents", json=body).json()["data"]["id"]
            requests = sandbox.stats()["requests"]
            edited = http.patch(f"/__sandbox/consents/{consent_id}", json={"scope": "research"})
            assert (edited.status_code, edited.json()["scope"]) == (200, "research")
            assert sandbox.stats()["requests"] == requests  # an admin edit is no API request
            assert http.delete(f"/v1/consents/{consent_id}").status_code == 200
            gone = http.get(f"/v1/consents/{consent_id}")
            assert (gone.status_code, gone.json()["code"]) == (404, "NOT_FOUND")
            assert http.patch(f"/__sandbox/consents/{consent_id}", json={}).status_code == 404


def _record(now: dict[str, Any] | None, *, posted: bool = False, existed: bool = False) -> Any:
    from importer.ledger._schema import UNDO_COLUMNS, RunChange

    blank = dict.fromkeys(UNDO_COLUMNS)
    current = None if now is None else {**blank, "consent_id": "consent_" + "ab" * 12, **now}
    return RunChange(b"k", "K1", "in.csv", 2, existed, posted, None, False, current, blank)


@pytest.mark.parametrize(
    ("now", "posted", "outcome", "action"),
    [
        ({"state": "done", "action": "created"}, True, "would_undo", "delete"),
        ({"state": "done", "action": "adopted"}, False, "would_undo", "forget"),
        # found after the run's own POST was lost: maybe the run's, maybe not
        ({"state": "done", "action": "adopted"}, True, "uncertain", "forget"),
        ({"state": "in_flight", "pending_op": "create"}, True, "in_flight", "forget"),
        ({"state": "settling", "pending_op": "create"}, True, "in_flight", "forget"),
        # gave up settling: the POST may have landed, a rerun looks it up
        (
            {"state": "failed", "pending_op": "create", "error_code": "outcome_unknown"},
            True,
            "in_flight",
            "forget",
        ),
        # refused by the server: nothing was stored
        ({"state": "failed", "error_code": "api_validation"}, True, "would_undo", "forget"),
        (
            {"state": "done", "action": "updated", "error_code": "patch_outcome_unknown"},
            False,
            "failed",
            "forget",
        ),
        # a PATCH of a row the ledger did not hold before the run (cannot happen by a run)
        ({"state": "done", "action": "updated"}, False, "no_before", "restore_fields"),
        (None, False, "would_undo", "forget"),
    ],
)
def test_what_undo_plans_for_a_row_by_how_the_run_left_it(
    now: dict[str, Any] | None, posted: bool, outcome: str, action: str
) -> None:
    from importer.commands._undo import _Change, _plan

    change = _Change.of(_record(now, posted=posted))
    _plan(change, lambda name, digest: None)
    assert (change.row.outcome, change.row.action) == (outcome, action)


def test_a_server_failing_every_read_leaves_every_row_and_touches_nothing(tmp_path: Path) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        source, ledger, rows = first_run(tmp_path, sandbox, 10)
        rows[0]["status"] = "inactive"
        write_csv(source, rows)
        run(source, sandbox.base_url, ledger)
        stored, kept = by_id(sandbox), ledger_ids(ledger)
        sandbox.configure(fault_unavailable=1.0)
        result = do_undo(sandbox, ledger, 2, max_attempts=2)
        sandbox.configure(fault_unavailable=0.0)
        assert (result.exit_code, result.counts()) == (1, {"failed": 1})
        assert result.rows[0].detail == "the API answered 503 INTERNAL_ERROR"
        assert (by_id(sandbox), ledger_ids(ledger)) == (stored, kept)
        assert do_undo(sandbox, ledger, 2).counts() == {"undone": 1}  # the next one does it


def test_a_run_keeps_each_row_as_before_its_first_request_once(tmp_path: Path) -> None:
    from importer.ledger._schema import Op, Source

    ledger = Ledger(tmp_path / "l.db")
    src = Source("K1", "in.csv", 2)

    def step(fn: Any) -> None:
        with ledger.transaction():
            fn()

    first, second = ledger.begin_run(["in.csv"]), ledger.begin_run(["in.csv"])
    sent = {"body": "{}", "body_hash": "0" * 64, "patient_id": "pt_1"}
    step(lambda: ledger.intent(first, src, Op.CREATE, **sent))
    step(lambda: ledger.intent(first, src, Op.CREATE, **sent))  # a retry: kept once
    done = {"payload_hash": "1" * 64, "field_hashes": {}, "patient_id": "pt_1"}
    step(lambda: ledger.done(first, src, Op.CREATE, action="created", request_id=None, **done))
    step(lambda: ledger.revoking(second, "K1"))
    [created] = ledger.run_changes(first)
    [revoking] = ledger.run_changes(second)
    assert (created.existed, created.posted, created.later) == (False, True, True)
    assert (revoking.existed, revoking.posted, revoking.before["state"]) == (True, False, "done")
    assert revoking.now is not None
    assert revoking.now["state"] == "in_flight"
    assert ledger.undo_recorded(first)
    assert ledger.undo_recorded(3) is None
    ledger.close()


def test_a_backup_from_before_an_undo_restored_after_it_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review finding 3: the undo advances the lineage, so the copy is caught; and as
    the undo deleted a consent it holds as done, even its run that creates nothing stops."""
    import shutil

    from importer.ledger._lineage import sidecar

    with running_sandbox(SandboxConfig()) as sandbox:
        rows = list(consent_rows(3))
        source, ledger = write_csv(tmp_path / "in.csv", rows[:2]), tmp_path / "l.db"
        base = ["--ledger", str(ledger), "--base-url", sandbox.base_url, "--api-key", KEY, "-q"]
        assert run_cli(["run", str(source), *base], capsys)[0] == 0
        write_csv(source, rows)
        assert run_cli(["run", str(source), *base], capsys)[0] == 0
        shutil.copyfile(ledger, tmp_path / "backup.db")
        generation = json.loads(sidecar(ledger).read_text())["generation"]
        code, _, err = run_cli(["undo", "--run", "2", *base[:-1]], capsys)
        assert code == 0, err
        side = json.loads(sidecar(ledger).read_text())
        assert side["generation"] == generation + 1
        assert (side["run_id"], side["undo"], side["undo_generation"]) == (2, True, generation + 1)
        assert len(sandbox.consents()) == 2
        for suffix in ("-wal", "-shm"):
            Path(f"{ledger}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(tmp_path / "backup.db", ledger)  # the backup restored
        writes = {m: n for m, n in methods(sandbox).items() if m in WRITES}
        code, _, err = run_cli(["run", str(source), *base], capsys)
        assert code == 2
        assert "is an older copy of the live one" in err
        assert "the undo of run 2" in err
        assert "an undo since took back consents it holds as done" in err
        assert "nothing was sent" in err
        assert {m: n for m, n in methods(sandbox).items() if m in WRITES} == writes
        assert len(sandbox.consents()) == 2  # nothing created
        code, _, err = run_cli(["run", str(source), *base], capsys)
        assert code == 2  # still refused: a refused copy does not become the live one
        assert len(sandbox.consents()) == 2


def _evidence(ledger: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    db = sqlite3.connect(ledger)
    try:
        misses = sorted(db.execute("SELECT source_key, misses, last_run FROM revoke_misses"))
        reads = sorted(db.execute("SELECT scope, rows, run_id FROM scope_reads"))
        return misses, reads
    finally:
        db.close()


@pytest.mark.parametrize("before", [0, 1], ids=["first_miss", "second_run_of_misses"])
def test_undo_takes_back_the_runs_revocation_evidence(tmp_path: Path, before: int) -> None:
    """Review finding 2: after `undo --run N`, the misses N counted (or reset) and the
    full read it recorded are as before N, so the next cut run does not revoke on N's
    evidence."""
    with running_sandbox(SandboxConfig()) as sandbox:
        rows = list(consent_rows(10))
        source, ledger = write_csv(tmp_path / "in.csv", rows), tmp_path / "l.db"
        cut = {"revoke_missing": True, "revoke_max": "5", "revoke_after": before + 2}
        assert run(source, sandbox.base_url, ledger).exit_code == 0
        write_csv(source, rows[:8])
        for _ in range(before):  # nights that already missed the two rows
            assert run(source, sandbox.base_url, ledger, **cut).stats.revoke_pending == 2
        kept = _evidence(ledger)
        night = run(source, sandbox.base_url, ledger, **cut)
        assert (night.stats.revoked, night.stats.revoke_pending) == (0, 2)
        assert _evidence(ledger) != kept
        result = do_undo(sandbox, ledger, night.run_id)
        assert (result.exit_code, result.rows, result.evidence) == (0, [], 3)
        assert _evidence(ledger) == kept  # as before the undone run
        assert "put back 3 entries" in "\n".join(summary_lines(result))
        again = run(source, sandbox.base_url, ledger, **cut)
        assert (again.stats.revoked, again.stats.revoke_pending) == (0, 2)
        assert {c["status"] for c in sandbox.consents()} == {"active"}
        assert do_undo(sandbox, ledger, night.run_id).evidence == 0  # taken back once


def test_evidence_a_later_run_changed_since_stays_until_that_run_is_undone(
    tmp_path: Path,
) -> None:
    with running_sandbox(SandboxConfig()) as sandbox:
        rows = list(consent_rows(10))
        source, ledger = write_csv(tmp_path / "in.csv", rows), tmp_path / "l.db"
        cut = {"revoke_missing": True, "revoke_max": "5", "revoke_after": 3}
        assert run(source, sandbox.base_url, ledger).exit_code == 0
        first = _evidence(ledger)
        write_csv(source, rows[:8])
        second = run(source, sandbox.base_url, ledger, **cut)
        after_second = _evidence(ledger)
        third = run(source, sandbox.base_url, ledger, **cut)
        after_third = _evidence(ledger)
        assert [m for _, m, _ in after_third[0]] == [2, 2]
        # Run 3 changed every entry run 2 did: undoing run 2 leaves them as run 3 left them.
        assert do_undo(sandbox, ledger, second.run_id).evidence == 0
        assert _evidence(ledger) == after_third
        # Undo run 3, then run 2: each put back as before it.
        assert do_undo(sandbox, ledger, third.run_id).evidence == 3
        assert _evidence(ledger) == after_second
        assert do_undo(sandbox, ledger, second.run_id).evidence == 3
        assert _evidence(ledger) == first
