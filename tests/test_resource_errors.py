"""Resource errors are operational, not bugs (issue 19, point 4).

A full disk (a real tiny tmpfs where mounting is allowed, else skipped; and an injected
SQLITE_FULL after N commits through the real ledger writer), a read-only file system:
one line naming the path and the cause, exit 3 once the run had started (the ledger
consistent, and the rerun once there is room creates every row exactly once on the
sandbox) or 2 before; never "internal error"; `CONSENT_IMPORT_DEBUG=1` adds a traceback
and keeps the exit code; the summary is still written.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from importer._errors import ConsentImportError, ResourceError
from importer.ledger import _ledger
from importer.sandbox import RunningSandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, run, write_csv


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")


def _remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 450 KiB tmpfs: a ledger on it fills it within a few hundred rows, after the
    first consents are stored (at 300 KiB the merged schema filled it before any)."""
    where = tmp_path / "tiny"
    _mount_tmpfs(where, "450k")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(path: Path) -> None:
    """Write `path` until its disk is full."""
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as handle:
        try:
            while handle.write(chunk):
                pass
        except OSError as exc:
            assert "No space left" in str(exc)  # noqa: PT017 - the disk is full now


def _each_row_once(server: RunningSandbox, rows: int) -> None:
    consents = server.consents()
    identities = {(c["patientId"], c["dateTime"]) for c in consents}
    assert len(consents) == rows == len(identities)
    assert server.stats()["duplicates"] == 0


def _ledger_states(ledger: Path) -> dict[str, int]:
    with sqlite3.connect(ledger) as db:
        return dict(db.execute("SELECT state, count(*) FROM rows GROUP BY state").fetchall())


# -- a real full disk ------------------------------------------------------------------


def test_a_full_disk_stops_the_run_with_exit_3_and_the_rerun_creates_each_row_once(
    server: RunningSandbox,
    tiny_disk: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    write_csv(tmp_path / "in.csv", consent_rows(600))
    ledger = tiny_disk / "l.db"
    args = ["run", "in.csv", "--ledger", str(ledger), "--base-url", server.base_url]
    args += ["--summary-json", "s.json", "--settle", "0", "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 3, err
    # One line naming the ledger and the cause; no "internal error", no traceback.
    said = [line for line in err.splitlines() if "disk is full" in line]
    assert said, err
    assert all(str(ledger) in line for line in said), err
    assert "internal error" not in err
    assert "Traceback" not in err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["exit_code"], summary["run_id"]) == (3, 1)
    assert summary["rows_left"] > 0
    assert "disk is full" in summary["aborted"]
    # The ledger is consistent: each row done, or in flight (looked up next run).
    assert set(_ledger_states(ledger)) <= {"done", "in_flight"}
    stored_before = len(server.consents())
    assert 0 < stored_before < 600

    _remount(tiny_disk, "size=20m")  # room again
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    _each_row_once(server, 600)
    assert _ledger_states(ledger) == {"done": 600}
    assert json.loads((tmp_path / "s.json").read_text())["exit_code"] == 0


def test_the_summary_on_a_full_disk_is_said_on_stderr_and_the_exit_code_stays(
    server: RunningSandbox,
    tiny_disk: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    write_csv(tmp_path / "in.csv", consent_rows(5))
    _fill(tiny_disk / "filler")
    args = ["run", "in.csv", "--ledger", "l.db", "--base-url", server.base_url, "--quiet"]
    args += ["--summary-json", str(tiny_disk / "s.json")]
    args += ["--metrics-file", str(tiny_disk / "m.prom")]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err  # the run itself went well
    assert f"could not write --summary-json {tiny_disk / 's.json'}: No space left" in err
    assert f"could not write --metrics-file {tiny_disk / 'm.prom'}: No space left" in err
    assert "Traceback" not in err
    assert "internal error" not in err
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"]  # no half files left
    assert len(server.consents()) == 5


def test_a_read_only_ledger_folder_is_exit_2_before_anything_is_sent(
    server: RunningSandbox, tiny_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(5))
    run(source, server.base_url, tiny_disk / "l.db")  # an existing ledger ...
    _remount(tiny_disk, "ro")  # ... on a file system gone read-only
    try:
        for ledger in (tiny_disk / "l.db", tiny_disk / "new.db"):
            # The lock beside the ledger is the first file touched: its error says so.
            with pytest.raises(ConsentImportError, match=r"(?i)read-only") as raised:
                run(source, server.base_url, ledger)
            assert raised.value.exit_code == 2
            assert str(ledger) in str(raised.value)
        # `status` opens it too: SQLite cannot write its -shm beside it.
        code, _, err = run_cli(["status", "--ledger", str(tiny_disk / "l.db")], capsys)
        assert code == 2
        assert f"ledger {tiny_disk / 'l.db'}: " in err
        assert "read-only" in err
        assert "internal error" not in err
    finally:
        _remount(tiny_disk, "rw")
    assert len(server.consents()) == 5  # the refused runs sent nothing


# -- an injected full disk (no mount needed) ---------------------------------------------


def _disk_fills_after(monkeypatch: pytest.MonkeyPatch, commits: int) -> list[int]:
    """The ledger's transactions commit `commits` times, then every commit fails as
    SQLite's does on a full disk (rolled back whole). Returns the count, to watch."""
    done = [0]
    original = _ledger._Transaction.__exit__

    def exit_(self: Any, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None and done[0] >= commits:
            self.db.execute("ROLLBACK")
            self.files.clear()
            raise sqlite3.OperationalError("database or disk is full")
        original(self, kind, *rest)
        if kind is None:
            done[0] += 1

    monkeypatch.setattr(_ledger._Transaction, "__exit__", exit_)
    return done


# before, around and after the first rows (the run's first three commits are its setup:
# begin_run, then the mapping and the identity columns it read with)
@pytest.mark.parametrize("commits", [4, 12, 40])
def test_an_injected_full_disk_mid_run_is_exit_3_and_resumes_without_duplicates(
    server: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commits: int
) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(300))
    ledger = tmp_path / "l.db"
    with monkeypatch.context() as patch:
        _disk_fills_after(patch, commits)
        result = run(source, server.base_url, ledger, concurrency=4)
    assert result.exit_code == 3
    assert result.stats.aborted.startswith(f"ledger {ledger}: no space left")
    assert result.stats.failed == 0
    assert set(_ledger_states(ledger)) <= {"done", "in_flight"}
    again = run(source, server.base_url, ledger, concurrency=4)
    assert again.exit_code == 0, again.stats.aborted
    _each_row_once(server, 300)


def test_a_full_disk_in_the_runs_setup_is_exit_3_and_resumes(
    server: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills after the run began (its row in `runs` is committed) but before
    the engine starts: a resumable stop (exit 3), nothing sent, the rerun imports all."""
    source = write_csv(tmp_path / "in.csv", consent_rows(20))
    ledger = tmp_path / "l.db"
    with monkeypatch.context() as patch:
        _disk_fills_after(patch, 2)
        with pytest.raises(ResourceError, match=r"no space left .*rerun") as raised:
            run(source, server.base_url, ledger)
    assert raised.value.exit_code == 3
    assert server.consents() == []
    assert run(source, server.base_url, ledger).exit_code == 0
    _each_row_once(server, 20)


def test_a_full_disk_before_the_run_begins_is_exit_2(
    server: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(5))
    _disk_fills_after(monkeypatch, 0)  # not even the ledger's first transaction
    with pytest.raises(ResourceError, match=r"no space left .*nothing was sent") as raised:
        run(source, server.base_url, tmp_path / "l.db")
    assert raised.value.exit_code == 2
    assert server.consents() == []


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize(("commits", "exit_code"), [(0, 2), (12, 3)])
def test_debug_changes_the_output_never_the_exit_code(
    server: RunningSandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    debug: bool,
    commits: int,
    exit_code: int,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    if debug:
        monkeypatch.setenv("CONSENT_IMPORT_DEBUG", "1")
    else:
        monkeypatch.delenv("CONSENT_IMPORT_DEBUG", raising=False)
    write_csv(tmp_path / "in.csv", consent_rows(100))
    _disk_fills_after(monkeypatch, commits)
    args = ["run", "in.csv", "--ledger", "l.db", "--base-url", server.base_url, "-q"]
    code, _, err = run_cli([*args, "--no-preflight", "--summary-json", "s.json"], capsys)
    assert code == exit_code, err
    assert "internal error" not in err
    assert "l.db: no space left on the device (the disk is full)" in err
    assert ("Traceback" in err) is debug
    assert json.loads((tmp_path / "s.json").read_text())["exit_code"] == exit_code


# -- a ledger file that vanished mid-run -------------------------------------------------


def test_a_ledger_deleted_mid_run_is_put_back_and_the_rerun_duplicates_nothing(
    server: RunningSandbox, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "in.csv", consent_rows(200))
    ledger = tmp_path / "l.db"
    server.configure(latency_ms=5)

    def delete_it() -> None:  # `rm l.db` while the run writes to it
        deadline = time.monotonic() + 60
        while server.stats()["creates"] < 30 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.unlink(ledger)

    remover = threading.Thread(target=delete_it)
    remover.start()
    result = run(source, server.base_url, ledger, concurrency=4)
    remover.join()
    assert result.exit_code == 3
    assert result.stats.aborted.startswith(f"ledger {ledger}: the file was deleted during the run")
    assert ledger.stat().st_mode & 0o777 == 0o600  # put back, owner-only
    assert not (tmp_path / "l.db.run-1").exists()
    states = _ledger_states(ledger)
    assert states == {"done": len(server.consents())}  # every row the server holds
    again = run(source, server.base_url, ledger, concurrency=4)
    assert again.exit_code == 0, again.stats.aborted
    assert again.stats.unchanged == states["done"]
    _each_row_once(server, 200)
