"""The import engine against the sandbox over real sockets: faults, limits, aborts.

Every test asserts the two things that matter: each valid row created exactly once
(sandbox `duplicates` == 0), and the ledger's consent ids equal the sandbox's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from importer.sandbox import SandboxConfig, running_sandbox
from tests.engine_helpers import KEY, consent_rows, ledger_ids, run, write_csv

pytestmark = pytest.mark.usefixtures("instant_backoff")


def assert_exactly_once(
    sandbox_consents: list[dict[str, object]], ledger: Path, valid: int
) -> None:
    ids = ledger_ids(ledger)
    assert len(ids) == valid
    assert sorted(ids.values()) == sorted(str(c["id"]) for c in sandbox_consents)


@pytest.mark.parametrize(
    "fault",
    [
        {"fault_unavailable": 0.1},
        {"fault_error_after_store": 0.1},
        {"fault_drop_after_store": 0.1},
        {"fault_slow_after_store": 0.05, "slow_delay_s": 1.5},
        {
            "fault_unavailable": 0.03,
            "fault_error_after_store": 0.03,
            "fault_drop_after_store": 0.03,
            "fault_slow_after_store": 0.03,
            "slow_delay_s": 1.5,
        },
    ],
    ids=["503", "500-after-store", "drop-after-store", "slow-after-store", "all"],
)
def test_every_fault_mode_creates_each_row_exactly_once(
    tmp_path: Path, fault: dict[str, float]
) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(150))
    with running_sandbox(SandboxConfig(seed=11, **fault)) as sandbox:
        result = run(
            source,
            sandbox.base_url,
            tmp_path / "l.db",
            concurrency=8,
            timeout_s=0.6,
            max_attempts=8,
        )
        stats = sandbox.stats()
        assert sum(stats["faults"].values()) > 0, "the fault mode never fired"
        assert stats["duplicates"] == 0
        assert result.stats.created == 150
        assert result.stats.failed == 0
        assert result.exit_code == 0
        assert_exactly_once(sandbox.consents(), tmp_path / "l.db", 150)
        # after a stored-then-lost answer, the row was found by a lookup, not re-posted
        if stats["faults"].get("error_after_store") or stats["faults"].get("drop_after_store"):
            assert result.stats.adopted > 0
        assert stats["creates"] == 150


def test_the_ledger_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(2))
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, tmp_path / "l.db")
    assert (tmp_path / "l.db").stat().st_mode & 0o777 == 0o600


def test_rerun_of_a_done_file_sends_nothing(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(40))
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, tmp_path / "l.db")
        before = sandbox.stats()["requests"]
        again = run(source, sandbox.base_url, tmp_path / "l.db")
        assert sandbox.stats()["requests"] == before
        assert (again.stats.unchanged, again.stats.created, again.stats.requests) == (40, 0, 0)
        assert again.exit_code == 0


def test_auth_failure_aborts_with_exit_3_and_a_consistent_ledger(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(30))
    with running_sandbox(SandboxConfig(revoked_keys=frozenset({KEY}))) as sandbox:
        result = run(source, sandbox.base_url, tmp_path / "l.db", concurrency=4)
        assert result.exit_code == 3
        assert "authentication failed (401" in result.stats.aborted
        assert sandbox.stats()["consents"] == 0
        # far fewer requests than rows: the run stopped taking rows
        assert sandbox.stats()["requests"] <= 8
    with running_sandbox(SandboxConfig()) as fresh:
        # nothing was stored, and the ledger does not claim otherwise: a rerun with a good
        # key (ledger for the same base URL would be refused, so a new one) creates all
        assert ledger_ids(tmp_path / "l.db") == {}
        result = run(source, fresh.base_url, tmp_path / "l2.db")
        assert result.stats.created == 30


def test_a_422_fails_its_row_only(tmp_path: Path) -> None:
    rows = list(consent_rows(10))
    rows[4]["patientId"] = "pt_unknown"
    source = write_csv(tmp_path / "in.csv", rows)
    known = frozenset(r["patientId"] for r in rows if r["patientId"] != "pt_unknown")
    with running_sandbox(SandboxConfig(known_patients=known)) as sandbox:
        result = run(source, sandbox.base_url, tmp_path / "l.db")
        assert (result.stats.created, result.stats.failed) == (9, 1)
        assert result.stats.by_error == {"api_validation": 1}
        assert result.exit_code == 1
        # a 422 is not retried
        assert sandbox.stats()["by_status"].get("422") == 1


def test_never_more_than_concurrency_in_flight(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(120))
    with running_sandbox(SandboxConfig(latency_ms=40)) as sandbox:
        run(source, sandbox.base_url, tmp_path / "l.db", concurrency=5)
        stats = sandbox.stats()
        assert stats["max_in_flight"] == 5
        assert stats["creates"] == 120


def test_a_429_pauses_every_worker(tmp_path: Path) -> None:
    """The first burst overshoots a tiny window; after a 429, no request is sent until
    Retry-After has passed."""
    source = write_csv(tmp_path / "in.csv", consent_rows(24))
    with running_sandbox(SandboxConfig(rate_limit=6, rate_window_s=1.0, latency_ms=20)) as sandbox:
        # 13 in flight, over twice the window's 6: one of the first two windows overflows
        # even when the first burst straddles a window boundary.
        result = run(source, sandbox.base_url, tmp_path / "l.db", concurrency=13)
        assert result.stats.created == 24
        log = sandbox.requests()
        limited = [r for r in log if r["status"] == 429]
        assert limited, "the burst should have met a 429"
        first = limited[0]["t"]
        # Retry-After is whole seconds (here 1 s): nothing may arrive well inside the
        # pause. The first 0.3 s are left out for requests already on the wire when the
        # 429 was sent, which a loaded machine may deliver late.
        after = [r for r in log if first + 0.3 < r["t"] < first + 0.8]
        assert after == [], after
        assert sandbox.stats()["duplicates"] == 0


def test_edited_file_sends_exactly_its_creates_and_patches(tmp_path: Path) -> None:
    rows = list(consent_rows(20))
    source = write_csv(tmp_path / "in.csv", rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, tmp_path / "l.db")
        rows[3]["status"] = "inactive"  # patchable: PATCH
        rows[7]["policyUri"] = "https://clinic.example/policy/v2"  # patchable: PATCH
        rows.extend(consent_rows(2, start=100))  # new: POST
        write_csv(source, rows)
        before = sandbox.stats()
        result = run(source, sandbox.base_url, tmp_path / "l.db")
        after = sandbox.stats()
        assert (result.stats.created, result.stats.updated, result.stats.unchanged) == (2, 2, 18)
        assert after["creates"] - before["creates"] == 2
        assert after["patches"] - before["patches"] == 2
        assert after["requests"] - before["requests"] == 4
        stored = {c["id"]: c for c in sandbox.consents()}
        assert stored[ledger_ids(tmp_path / "l.db")["K000003"]]["status"] == "inactive"


@pytest.mark.parametrize("mode", ["fail", "recreate"])
def test_immutable_changes(tmp_path: Path, mode: str) -> None:
    rows = list(consent_rows(5))
    source = write_csv(tmp_path / "in.csv", rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, tmp_path / "l.db")
        old_id = ledger_ids(tmp_path / "l.db")["K000002"]
        rows[2]["scope"] = "research"
        rows[2]["dateTime"] = "2020-01-01T00:00:00Z"
        write_csv(source, rows)
        result = run(source, sandbox.base_url, tmp_path / "l.db", on_immutable_change=mode)
        stored = {c["id"]: c for c in sandbox.consents()}
        if mode == "fail":
            assert result.stats.by_error == {"immutable_change": 1}
            assert result.exit_code == 1
            assert len(stored) == 5
            assert ledger_ids(tmp_path / "l.db")["K000002"] == old_id
        else:
            assert result.exit_code == 0
            new_id = ledger_ids(tmp_path / "l.db")["K000002"]
            assert new_id != old_id
            assert stored[old_id]["status"] == "inactive"
            assert stored[new_id]["scope"] == "research"
            assert len(stored) == 6


def test_missing_rows_are_reported_and_revoked_only_when_asked(tmp_path: Path) -> None:
    rows = list(consent_rows(6))
    source = write_csv(tmp_path / "in.csv", rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, tmp_path / "l.db")
        gone = ledger_ids(tmp_path / "l.db")["K000001"]
        write_csv(source, rows[:1] + rows[2:])
        result = run(source, sandbox.base_url, tmp_path / "l.db")
        assert result.stats.missing_from_source == 1
        assert {c["id"]: c["status"] for c in sandbox.consents()}[gone] == "active"
        # (1 of 6 is over the default cap of 10%: the cap has its own tests)
        result = run(
            source,
            sandbox.base_url,
            tmp_path / "l.db",
            revoke_missing=True,
            revoke_after=1,
            revoke_max="1",
        )
        assert (result.stats.missing_from_source, result.stats.revoked) == (1, 1)
        assert {c["id"]: c["status"] for c in sandbox.consents()}[gone] == "inactive"
        assert sandbox.stats()["deletes"] == 0  # never deleted


def test_skip_existing_adopts_consents_already_in_the_tenant(tmp_path: Path) -> None:
    rows = list(consent_rows(8))
    with running_sandbox(SandboxConfig()) as sandbox:
        run(write_csv(tmp_path / "first.csv", rows[:5]), sandbox.base_url, tmp_path / "other.db")
        result = run(
            write_csv(tmp_path / "all.csv", rows),
            sandbox.base_url,
            tmp_path / "l.db",
            skip_existing=True,
        )
        assert (result.stats.created, result.stats.adopted) == (8, 5)
        assert sandbox.stats()["consents"] == 8
        assert sandbox.stats()["duplicates"] == 0


def test_dry_run_plans_against_the_ledger_and_sends_nothing(tmp_path: Path) -> None:
    from importer._options import RunOptions
    from importer.engine._dry_run import dry_run_import
    from importer.intake._mapping import load_mapping

    rows = list(consent_rows(6))
    source = write_csv(tmp_path / "in.csv", rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        run(source, sandbox.base_url, tmp_path / "l.db")
        rows[0]["status"] = "inactive"
        rows[1]["scope"] = "research"
        rows.append(next(consent_rows(1, start=50)))
        rows.append(dict(rows[2], scope="nope", sourceKey="K999"))
        write_csv(source, rows)
        before = sandbox.stats()["requests"]
        plan = dry_run_import([source], load_mapping(None), tmp_path / "l.db", RunOptions())
        assert sandbox.stats()["requests"] == before
    assert plan.counts == {
        "create": 1,
        "patch": 1,
        "immutable_change": 1,
        "unchanged": 4,
        "invalid": 1,
    }


def test_a_stop_starts_no_request_even_from_workers_waiting_for_a_slot(
    tmp_path: Path,
) -> None:
    """Workers outnumber request slots (two a slot); after a stop, the ones waiting for a
    slot with their intent committed send nothing and put their row back."""
    import sqlite3

    import anyio

    from importer._options import RunOptions
    from importer.api._client import ClinikClient, make_http_client
    from importer.api._limiter import Limiter
    from importer.engine._engine import Engine
    from importer.engine._revocation import RevokeScope
    from importer.intake._mapping import load_mapping
    from importer.intake._normalize import Normalizer
    from importer.intake._reader import open_table
    from importer.ledger._ledger import Ledger
    from importer.sandbox._server import RunningSandbox

    source = write_csv(tmp_path / "in.csv", consent_rows(40))
    rows = list(Normalizer(load_mapping(None)).rows(open_table(source)))
    ledger_path = tmp_path / "l.db"

    async def run_then_stop(sandbox: RunningSandbox) -> int:
        ledger = Ledger(ledger_path, base_url=sandbox.base_url)
        run_id = ledger.begin_run([str(source)])
        async with make_http_client(base_url=sandbox.base_url, concurrency=3, timeout_s=30) as http:
            client = ClinikClient(
                http, base_url=sandbox.base_url, api_key=KEY, limiter=Limiter(concurrency=3)
            )
            importer = Engine(
                client,
                ledger,
                run_id=run_id,
                options=RunOptions(concurrency=3),
                revoke_scope=RevokeScope(),
            )
            async with anyio.create_task_group() as group:
                group.start_soon(importer.run, iter(rows))
                with anyio.fail_after(20):
                    while sandbox.stats()["in_flight"] < 3:
                        await anyio.sleep(0.01)
                    # The three standby workers commit their rows' intents meanwhile.
                    while ledger.counts().get("in_flight", 0) < 6:
                        await anyio.sleep(0.01)
                importer.stop("test stop")
        ledger.close()
        return importer.stats.created

    # Requests take 2 s: time for the standby workers to commit their intents first.
    with running_sandbox(SandboxConfig(latency_ms=2000)) as sandbox:
        created = anyio.run(run_then_stop, sandbox)
        assert sandbox.stats()["requests"] == 3  # only the three already in flight
        assert created == 3
        with sqlite3.connect(ledger_path) as db:
            states = dict(db.execute("SELECT state, count(*) FROM rows GROUP BY state"))
        assert states == {"done": 3}  # the standby rows' intents were taken back
        result = run(source, sandbox.base_url, ledger_path)
        assert result.stats.created == 37
        assert sandbox.stats()["duplicates"] == 0
        assert_exactly_once(sandbox.consents(), ledger_path, 40)


def test_revokes_past_max_wait_pause_the_run_like_any_other_request(tmp_path: Path) -> None:
    rows = list(consent_rows(8))
    source = write_csv(tmp_path / "in.csv", rows)
    ledger = tmp_path / "l.db"
    # An hour's window of 11 requests: 8 creates, then room for 3 of the 6 revokes.
    with running_sandbox(SandboxConfig(rate_limit=11, rate_window_s=3600)) as sandbox:
        run(source, sandbox.base_url, ledger)
        write_csv(source, rows[:2])  # six rows left the source
        result = run(
            source,
            sandbox.base_url,
            ledger,
            revoke_missing=True,
            revoke_after=1,
            revoke_max="6",
            max_wait_s=2,
        )
        assert result.stats.paused
        assert result.exit_code == 0
        assert result.stats.missing_from_source == 6
        assert 1 <= result.stats.revoked <= 3
        sandbox.configure(rate_limit=None)
        result = run(
            source, sandbox.base_url, ledger, revoke_missing=True, revoke_after=1, revoke_max="6"
        )
        revoked = [c for c in sandbox.consents() if c["status"] == "inactive"]
        assert len(revoked) == 6
