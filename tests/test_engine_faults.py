"""The engine under one injected fault each, against the sandbox on a real port: a PATCH
or POST that fails, times out or is cut short by a crash. No consent is created twice,
none is lost, none is left active that should be inactive, and the run ends with exit 1
(never an internal error) with every row resumable by a rerun."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from importer._errors import ClientRequestError, ConsentImportError, NoResponseError, ServerError
from importer.api._client import ClinikClient
from importer.cli._main import main
from importer.ledger._ledger import Ledger
from importer.sandbox import SandboxConfig, running_sandbox
from tests.engine_helpers import KEY, consent_rows, ledger_ids, run, write_csv

_real_patch = ClinikClient.patch_consent
_real_create = ClinikClient.create_consent
INACTIVE = {"status": "inactive"}


class Crash(BaseException):
    """The process dies here (nothing after it runs, not even error handling)."""


def _crash() -> BaseException:
    return Crash()


def _server_error() -> ConsentImportError:
    return ServerError("server error 500", status=500)


def _conflict() -> ConsentImportError:
    return ClientRequestError("conflict 409", status=409)


def _invalid() -> ConsentImportError:
    return ClientRequestError("validation 422", status=422)


def _no_answer() -> ConsentImportError:
    return NoResponseError("PATCH: no answer (ReadTimeout)", sent=True)


def fail_patch(
    monkeypatch: pytest.MonkeyPatch,
    when: Callable[[dict[str, Any]], bool],
    fault: Callable[[], BaseException],
    *,
    after_sending: bool = False,
) -> None:
    """PATCHes whose body `when` selects raise `fault()` (after reaching the server if
    `after_sending`); the others go through."""

    async def patched(self: ClinikClient, consent_id: str, body: dict[str, Any]) -> Any:
        if not when(body):
            return await _real_patch(self, consent_id, body)
        if after_sending:
            await _real_patch(self, consent_id, body)
        raise fault()

    monkeypatch.setattr(ClinikClient, "patch_consent", patched)


def heal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ClinikClient, "patch_consent", _real_patch)
    monkeypatch.setattr(ClinikClient, "create_consent", _real_create)


def record(ledger: Path, key: str) -> tuple[Any, ...]:
    db = Ledger.open_readonly(ledger)
    try:
        found = db.get([key])[key]
    finally:
        db.close()
    return (found.state, found.pending_op, found.consent_id, found.error_code)


def consents_of(sandbox: Any, patient_id: str) -> list[dict[str, Any]]:
    return [c for c in sandbox.consents() if c["patientId"] == patient_id]


def runs_left_running(ledger: Path) -> int:
    with sqlite3.connect(ledger) as db:
        (count,) = db.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()
    return int(count)


# -- recreate: the lookup and the retire (findings 1, 2, 10) -------------------------------


@pytest.mark.parametrize("when", ["before_post", "after_post"])
def test_a_recreate_lookup_never_takes_the_consent_it_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """organizationId is neither patchable nor matched by the lookup: the old consent
    matches the edited row, and must not be adopted (then retired) as the new one."""
    rows = list(consent_rows(6, organizationId="org_a"))
    source, ledger = write_csv(tmp_path / "in.csv", rows), tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, ledger)
        old = ledger_ids(ledger)["K000001"]
        rows[1]["organizationId"] = "org_b"
        write_csv(source, rows)

        async def crashing(self: ClinikClient, body: bytes) -> Any:
            if when == "after_post":
                await _real_create(self, body)
            raise Crash

        monkeypatch.setattr(ClinikClient, "create_consent", crashing)
        with pytest.raises((Crash, BaseExceptionGroup)):
            run(source, sandbox.base_url, ledger, on_immutable_change="recreate")
        heal(monkeypatch)
        result = run(source, sandbox.base_url, ledger, on_immutable_change="recreate")
        stored = {c["id"]: c for c in consents_of(sandbox, rows[1]["patientId"])}
    new = [c for c in stored.values() if c.get("organizationId") == "org_b"]
    assert result.exit_code == 0
    assert [c["status"] for c in new] == ["active"]
    assert stored[old]["status"] == "inactive"
    assert record(ledger, "K000001") == ("done", None, new[0]["id"], None)


@pytest.mark.parametrize("fault", [_server_error, _conflict], ids=["500", "409"])
def test_a_retire_that_fails_posts_nothing_again_and_a_rerun_completes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Callable[[], BaseException]
) -> None:
    rows = list(consent_rows(5))
    source, ledger = write_csv(tmp_path / "in.csv", rows), tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, ledger)
        old = ledger_ids(ledger)["K000002"]
        rows[2]["scope"] = "research"
        write_csv(source, rows)
        fail_patch(monkeypatch, lambda body: body == INACTIVE, fault)
        failing = run(
            source, sandbox.base_url, ledger, on_immutable_change="recreate", max_attempts=2
        )
        assert len(sandbox.consents()) == 6  # one new consent, not one per retry
        state, op, new, code = record(ledger, "K000002")
        assert (state, op) == ("in_flight", "retire")
        assert code in ("server_error", "conflict")
        assert new != old
        assert (failing.exit_code, runs_left_running(ledger)) == (1, 0)
        heal(monkeypatch)
        rerun = run(source, sandbox.base_url, ledger, on_immutable_change="recreate")
        stored = {c["id"]: c["status"] for c in sandbox.consents()}
    assert rerun.exit_code == 0
    assert (len(stored), stored[old], stored[new]) == (6, "inactive", "active")
    assert record(ledger, "K000002") == ("done", None, new, None)


def test_a_rerun_retire_that_fails_again_stays_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = list(consent_rows(5))
    source, ledger = write_csv(tmp_path / "in.csv", rows), tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, ledger)
        rows[2]["scope"] = "research"
        write_csv(source, rows)
        fail_patch(monkeypatch, lambda body: body == INACTIVE, _conflict)
        run(source, sandbox.base_url, ledger, on_immutable_change="recreate")
        left = record(ledger, "K000002")
        fail_patch(monkeypatch, lambda body: body == INACTIVE, _server_error)
        again = run(
            source, sandbox.base_url, ledger, on_immutable_change="recreate", max_attempts=2
        )
        assert (again.exit_code, runs_left_running(ledger)) == (1, 0)
        assert record(ledger, "K000002")[:3] == left[:3]
        heal(monkeypatch)
        assert run(source, sandbox.base_url, ledger, on_immutable_change="recreate").exit_code == 0
        assert len(sandbox.consents()) == 6
    assert record(ledger, "K000002") == ("done", None, left[2], None)


def test_a_recreate_that_adopts_its_new_consent_and_cannot_patch_it_still_retires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after a recreate's POST, the row edited again (status), its PATCH failing:
    the new consent stays the row's, the old one is retired, nothing is posted again."""
    rows = list(consent_rows(4, organizationId="org_a"))
    source, ledger = write_csv(tmp_path / "in.csv", rows), tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, ledger)
        old = ledger_ids(ledger)["K000001"]
        rows[1]["organizationId"] = "org_b"
        write_csv(source, rows)

        async def crashing(self: ClinikClient, body: bytes) -> Any:
            await _real_create(self, body)
            raise Crash

        monkeypatch.setattr(ClinikClient, "create_consent", crashing)
        with pytest.raises((Crash, BaseExceptionGroup)):
            run(source, sandbox.base_url, ledger, on_immutable_change="recreate")
        heal(monkeypatch)
        rows[1]["status"] = "draft"
        write_csv(source, rows)
        fail_patch(monkeypatch, lambda body: body.get("status") == "draft", _server_error)
        failing = run(
            source, sandbox.base_url, ledger, on_immutable_change="recreate", max_attempts=2
        )
        stored = {c["id"]: c for c in consents_of(sandbox, rows[1]["patientId"])}
        (new,) = (c["id"] for c in stored.values() if c.get("organizationId") == "org_b")
        assert (failing.exit_code, len(stored), stored[old]["status"]) == (1, 2, "inactive")
        assert record(ledger, "K000001") == ("done", None, new, "server_error")
        heal(monkeypatch)
        rerun = run(source, sandbox.base_url, ledger, on_immutable_change="recreate")
        stored = {c["id"]: c for c in consents_of(sandbox, rows[1]["patientId"])}
    assert (rerun.exit_code, len(stored), stored[new]["status"]) == (0, 2, "draft")
    assert record(ledger, "K000001") == ("done", None, new, None)


# -- adoption (findings 3, 8) ----------------------------------------------------------------


def test_a_patch_that_fails_after_adopting_never_posts_the_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = list(consent_rows(3))
    with running_sandbox(SandboxConfig()) as sandbox:
        run(write_csv(tmp_path / "first.csv", rows), sandbox.base_url, tmp_path / "other.db")
        rows[1]["status"] = "draft"
        source, ledger = write_csv(tmp_path / "all.csv", rows), tmp_path / "l.db"
        fail_patch(monkeypatch, lambda body: body.get("status") == "draft", _server_error)
        result = run(source, sandbox.base_url, ledger, skip_existing=True, max_attempts=2)
        (found,) = consents_of(sandbox, rows[1]["patientId"])
        assert (result.exit_code, result.stats.created, result.stats.failed) == (1, 2, 1)
        assert record(ledger, "K000001") == ("done", None, found["id"], "server_error")
        heal(monkeypatch)
        rerun = run(source, sandbox.base_url, ledger, skip_existing=True)
        stored = consents_of(sandbox, rows[1]["patientId"])
    assert (rerun.exit_code, rerun.stats.updated) == (0, 1)
    assert [(c["id"], c["status"]) for c in stored] == [(found["id"], "draft")]
    assert record(ledger, "K000001") == ("done", None, found["id"], None)


@pytest.mark.parametrize("mode", ["fail", "recreate"])
def test_a_crash_between_an_adoption_patch_intent_and_its_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    rows = list(consent_rows(3))
    with running_sandbox(SandboxConfig()) as sandbox:
        run(write_csv(tmp_path / "first.csv", rows), sandbox.base_url, tmp_path / "other.db")
        rows[1]["status"] = "draft"
        source, ledger = write_csv(tmp_path / "all.csv", rows), tmp_path / "l.db"
        fail_patch(monkeypatch, lambda body: body.get("status") == "draft", _crash)
        with pytest.raises((Crash, BaseExceptionGroup)):
            run(source, sandbox.base_url, ledger, skip_existing=True)
        heal(monkeypatch)
        result = run(source, sandbox.base_url, ledger, skip_existing=True, on_immutable_change=mode)
        stored = consents_of(sandbox, rows[1]["patientId"])
    assert result.exit_code == 0
    assert [c["status"] for c in stored] == ["draft"]
    assert record(ledger, "K000001") == ("done", None, stored[0]["id"], None)


# -- PATCH of a done row (findings 4, 9) -----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("policyUri", "https://clinic.example/policy/v2"), ("status", "inactive")],
)
def test_a_timed_out_patch_is_patched_again_never_posted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    rows = list(consent_rows(6))
    source, ledger = write_csv(tmp_path / "in.csv", rows), tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, ledger)
        held = ledger_ids(ledger)["K000001"]
        rows[1][field] = value
        write_csv(source, rows)
        fail_patch(monkeypatch, lambda body: True, _no_answer)
        failing = run(source, sandbox.base_url, ledger, max_attempts=2)
        assert failing.exit_code == 1
        assert record(ledger, "K000001") == ("done", None, held, "patch_outcome_unknown")
        assert held in ledger_ids(ledger).values()  # created.csv, verify, revocation keep it
        heal(monkeypatch)
        rerun = run(source, sandbox.base_url, ledger)
        stored = consents_of(sandbox, rows[1]["patientId"])
    assert (rerun.exit_code, rerun.stats.created, rerun.stats.updated) == (0, 0, 1)
    assert [(c["id"], c[field]) for c in stored] == [(held, value)]
    assert record(ledger, "K000001") == ("done", None, held, None)


def test_a_refused_patch_keeps_the_row_on_its_consent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 422 to a PATCH: the row keeps its consent (created.csv, verify, revocation);
    gone from the source, it is revoked."""
    rows = list(consent_rows(12))
    source, ledger = write_csv(tmp_path / "in.csv", rows), tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, ledger)
        held = ledger_ids(ledger)["K000001"]
        rows[1]["status"] = "inactive"
        write_csv(source, rows)
        fail_patch(monkeypatch, lambda body: True, _invalid)
        failing = run(source, sandbox.base_url, ledger)
        assert failing.exit_code == 1
        assert record(ledger, "K000001") == ("done", None, held, "api_validation")
        with closing(Ledger(ledger)) as db:
            assert held in {c.consent_id for c in db.done_consents()}
            assert "K000001" in {r["source_key"] for r in db.rows_needing_a_person()}
        heal(monkeypatch)
        write_csv(source, rows[:1] + rows[2:])
        gone = run(
            source, sandbox.base_url, ledger, revoke_missing=True, revoke_after=1, revoke_max="1"
        )
        stored = {c["id"]: c["status"] for c in sandbox.consents()}
    assert (gone.stats.missing_from_source, gone.stats.revoked) == (1, 1)
    assert stored[held] == "inactive"


# -- revocation (findings 7, 10) ---------------------------------------------------------------


@pytest.mark.parametrize("back", [False, True], ids=["still_gone", "back_in_the_source"])
def test_a_revoke_that_fails_fails_the_row_and_the_next_run_revokes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, back: bool
) -> None:
    """The PATCH answers 500 after it applied (a 5xx says nothing of that): the next run
    revokes the row, or, if the row is back in the source, makes its consent active."""
    rows = list(consent_rows(6))
    source, ledger = write_csv(tmp_path / "in.csv", rows), tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, ledger)
        gone = ledger_ids(ledger)["K000001"]
        write_csv(source, rows[:1] + rows[2:])
        fail_patch(monkeypatch, lambda body: body == INACTIVE, _server_error, after_sending=True)
        failing = run(
            source,
            sandbox.base_url,
            ledger,
            revoke_missing=True,
            revoke_after=1,
            revoke_max="1",
            max_attempts=2,
        )
        assert (failing.exit_code, failing.stats.revoked) == (1, 0)
        assert failing.stats.by_error == {"server_error": 1}
        assert record(ledger, "K000001") == ("done", None, gone, "server_error")
        assert not runs_left_running(ledger)
        with closing(Ledger(ledger)) as db:
            assert "K000001" in {r["source_key"] for r in db.rows_needing_a_person()}
        heal(monkeypatch)
        if back:  # the row returns instead: its consent is made active, whatever it is
            write_csv(source, rows)
            returned = run(source, sandbox.base_url, ledger)
            stored = {c["id"]: c["status"] for c in sandbox.consents()}
            assert (returned.exit_code, returned.stats.updated, stored[gone]) == (0, 1, "active")
            assert record(ledger, "K000001") == ("done", None, gone, None)
            return
        again = run(
            source, sandbox.base_url, ledger, revoke_missing=True, revoke_after=1, revoke_max="1"
        )
        stored = {c["id"]: c["status"] for c in sandbox.consents()}
    assert (again.exit_code, again.stats.revoked) == (0, 1)
    assert stored[gone] == "inactive"
    assert record(ledger, "K000001")[:2] == ("revoked", None)


@pytest.mark.parametrize("crash", [False, True], ids=["revoked", "crash_after_revoke_patch"])
def test_a_revoked_row_back_in_the_source_is_active_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: bool
) -> None:
    rows = list(consent_rows(6))
    for r in rows:
        del r["status"]  # the server's default: active
    source, ledger = write_csv(tmp_path / "in.csv", rows), tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, ledger)
        gone = ledger_ids(ledger)["K000001"]
        write_csv(source, rows[:1] + rows[2:])
        if crash:  # the PATCH lands, the process dies before its outcome is recorded
            fail_patch(monkeypatch, lambda body: body == INACTIVE, _crash, after_sending=True)
            with pytest.raises((Crash, BaseExceptionGroup)):
                run(
                    source,
                    sandbox.base_url,
                    ledger,
                    revoke_missing=True,
                    revoke_after=1,
                    revoke_max="1",
                )
            heal(monkeypatch)
            assert record(ledger, "K000001")[:2] == ("in_flight", "revoke")
        else:
            run(
                source,
                sandbox.base_url,
                ledger,
                revoke_missing=True,
                revoke_after=1,
                revoke_max="1",
            )
        assert {c["id"]: c["status"] for c in sandbox.consents()}[gone] == "inactive"
        write_csv(source, rows)  # the row comes back
        result = run(source, sandbox.base_url, ledger)
        status = {c["id"]: c["status"] for c in sandbox.consents()}[gone]
    assert (result.exit_code, result.stats.updated, result.stats.created) == (0, 1, 0)
    assert status == "active"
    assert record(ledger, "K000001") == ("done", None, gone, None)


def test_a_revoke_cut_short_by_a_crash_is_revoked_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = list(consent_rows(6))
    source, ledger = write_csv(tmp_path / "in.csv", rows), tmp_path / "l.db"
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, ledger)
        write_csv(source, rows[:1] + rows[2:])
        fail_patch(monkeypatch, lambda body: body == INACTIVE, _crash)
        with pytest.raises((Crash, BaseExceptionGroup)):
            run(
                source,
                sandbox.base_url,
                ledger,
                revoke_missing=True,
                revoke_after=1,
                revoke_max="1",
            )
        heal(monkeypatch)
        result = run(
            source, sandbox.base_url, ledger, revoke_missing=True, revoke_after=1, revoke_max="1"
        )
    assert (result.exit_code, result.stats.revoked) == (0, 1)
    assert record(ledger, "K000001")[:2] == ("revoked", None)


def test_a_failing_revoke_through_the_cli_exits_1_not_as_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reviewer's exit-4 repro: `run --revoke-missing` while every PATCH answers 500."""
    rows = list(consent_rows(6))
    source, ledger = write_csv(tmp_path / "in.csv", rows), tmp_path / "l.db"
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, ledger)
        write_csv(source, rows[:1] + rows[2:])
        fail_patch(monkeypatch, lambda body: True, _server_error)
        args = ["run", str(source), "--ledger", str(ledger), "--base-url", sandbox.base_url]
        args += [
            "--revoke-missing",
            "--revoke-after",
            "1",
            "--revoke-max",
            "1",
            "--no-preflight",
            "--settle",
            "0",
        ]
        with pytest.raises(SystemExit) as exited:
            main([*args, "--max-attempts", "2"])
    assert exited.value.code == 1
    assert "internal error" not in capsys.readouterr().err
    assert runs_left_running(ledger) == 0
    assert record(ledger, "K000001")[3] == "server_error"
