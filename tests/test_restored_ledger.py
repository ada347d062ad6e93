"""A stale or foreign ledger is caught before it creates (issue 19, point 1): the check
before creating on every run that creates, and the ledger's lineage beside it. Against
the sandbox on a real port."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from importer._errors import ConfigError
from importer.engine._gate import SampleGate
from importer.engine._preflight import SAMPLE_REQUESTS
from importer.ledger._ledger import Ledger
from importer.ledger._lineage import check, sidecar
from importer.sandbox import RunningSandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, run, write_csv
from tests.helpers import warnings_heard

pytestmark = pytest.mark.usefixtures("instant_backoff")


@pytest.fixture
def run_warnings() -> Iterator[list[str]]:
    """The runner's warnings, heard on its own logger (a CLI test may have left the
    package's logger quiet and not propagating)."""
    with warnings_heard("importer.run") as said:
        yield said


def _method(server: RunningSandbox, method: str) -> int:
    return int(server.stats()["by_method"].get(method, 0))


def _copy_ledger(source: Path, target: Path) -> None:
    """A file copy of a closed ledger, as a backup tool makes it (no -wal, no -shm)."""
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)


def _each_consent_once(server: RunningSandbox) -> bool:
    seen = [(c["patientId"], c["dateTime"]) for c in server.consents()]
    return len(seen) == len(set(seen))


def _two_nights(tmp_path: Path, server: RunningSandbox) -> tuple[Path, Path, Path]:
    """Night 1 imports 300 rows and the ledger is backed up; night 2 the file holds 600."""
    rows = list(consent_rows(600))
    source, ledger, backup = tmp_path / "nightly.csv", tmp_path / "l.db", tmp_path / "backup"
    backup.mkdir()
    write_csv(source, rows[:300])
    assert run(source, server.base_url, ledger, preflight=True).stats.created == 300
    _copy_ledger(ledger, backup / "l.db")
    shutil.copyfile(sidecar(ledger), backup / "l.db.lineage")
    write_csv(source, rows)
    assert run(source, server.base_url, ledger, preflight=True).stats.created == 300
    return source, ledger, backup


def test_a_restored_ledger_creates_nothing_then_adopts_with_skip_existing(
    tmp_path: Path, server: RunningSandbox
) -> None:
    source, ledger, backup = _two_nights(tmp_path, server)
    _copy_ledger(backup / "l.db", ledger)  # the ledger is restored; the file beside it stays
    posts, gets = _method(server, "POST"), _method(server, "GET")
    with pytest.raises(ConfigError) as info:
        run(source, server.base_url, ledger, preflight=True)
    assert info.value.exit_code == 2
    assert _method(server, "POST") == posts  # nothing created
    assert _method(server, "GET") == gets + 1  # the server check; the lineage needs no lookup
    message = str(info.value)
    assert "is an older copy of the live one" in message
    assert "restored from a backup" in message
    assert "--skip-existing" in message
    assert "--no-preflight" in message
    # Refused again the next night: a refused run does not make the copy the live one.
    with pytest.raises(ConfigError, match="older copy"):
        run(source, server.base_url, ledger, preflight=True)
    adopted = run(source, server.base_url, ledger, preflight=True, skip_existing=True)
    assert adopted.exit_code == 0
    assert (adopted.stats.created, adopted.stats.adopted) == (300, 300)
    assert _method(server, "POST") == posts  # adopted, not posted: 0 duplicates
    assert len(server.consents()) == 600
    assert _each_consent_once(server)
    # The adopting run made this ledger the live one: the next night is a plain rerun.
    again = run(source, server.base_url, ledger, preflight=True)
    assert (again.exit_code, again.stats.unchanged, again.stats.created) == (0, 600, 0)


def test_a_ledger_restored_with_the_file_beside_it_is_caught_by_the_sample(
    tmp_path: Path, server: RunningSandbox
) -> None:
    source, ledger, backup = _two_nights(tmp_path, server)
    _copy_ledger(backup / "l.db", ledger)
    shutil.copyfile(backup / "l.db.lineage", sidecar(ledger))  # a backup of the whole folder
    posts, gets = _method(server, "POST"), _method(server, "GET")
    with pytest.raises(ConfigError) as info:
        run(source, server.base_url, ledger, preflight=True)
    assert _method(server, "POST") == posts
    lookups = _method(server, "GET") - gets - 1
    assert 1 <= lookups <= SAMPLE_REQUESTS
    message = str(info.value)
    # The sample is of the rows the run would create (rows 301-600), all on the server.
    assert f"{lookups} of the first {lookups} valid rows already exist" in message
    assert "a ledger restored from a backup" in message
    assert "another import" in message
    assert "another tool" in message
    assert "--skip-existing" in message
    assert "--no-preflight" in message
    assert len(server.consents()) == 600
    assert _each_consent_once(server)


def test_a_first_run_over_a_ledger_of_another_file_stops_before_creating(
    tmp_path: Path, server: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_csv(tmp_path / "a.csv", consent_rows(50))
    b = write_csv(tmp_path / "b.csv", consent_rows(80, start=1000))
    run(a, server.base_url, tmp_path / "a.db", preflight=True)
    run(b, server.base_url, tmp_path / "b.db", preflight=True)  # b.csv's own ledger
    posts = _method(server, "POST")
    # b.csv run with a.csv's ledger: every row is new to it, and on the server already.
    code, _, err = run_cli(
        ["run", str(b), "--ledger", str(tmp_path / "a.db"), "--base-url", server.base_url,
         "--api-key", KEY, "-q"],
        capsys,
    )  # fmt: skip
    assert code == 2
    assert _method(server, "POST") == posts
    assert len(server.consents()) == 130
    assert f"{SAMPLE_REQUESTS} of the first {SAMPLE_REQUESTS} valid rows already exist" in err
    assert "the ledger of another import of these rows" in err
    assert err.count("\n") <= 2  # the stop, then one line saying why


# (new rows tonight, the rate-limit window; then the lookups the check spends): the
# nightly cost is min(new rows, 20, a tenth of the window), none when nothing is new.
@pytest.mark.parametrize(
    ("new", "window", "lookups"),
    [
        (0, None, 0),  # the no-op rerun: one preflight read, nothing looked up
        (3, None, 3),
        (45, None, SAMPLE_REQUESTS),
        (45, 60, 6),  # a tenth of a window of 60
    ],
)
def test_what_the_check_costs_a_night(
    tmp_path: Path, server: RunningSandbox, new: int, window: int | None, lookups: int
) -> None:
    rows = list(consent_rows(100 + new))
    source, ledger = tmp_path / "nightly.csv", tmp_path / "l.db"
    write_csv(source, rows[:100])
    run(source, server.base_url, ledger)
    if window is not None:
        server.configure(rate_limit=window, rate_window_s=60.0)
    write_csv(source, rows)
    gets = _method(server, "GET")
    result = run(source, server.base_url, ledger, preflight=True)
    assert (result.exit_code, result.stats.created, result.stats.unchanged) == (0, new, 100)
    assert _method(server, "GET") - gets == 1 + lookups


def test_a_stale_ledger_that_creates_nothing_runs_and_says_so(
    tmp_path: Path, server: RunningSandbox, run_warnings: list[str]
) -> None:
    source, ledger, backup = _two_nights(tmp_path, server)
    write_csv(source, list(consent_rows(300)))  # tonight's file: only what the copy knows
    _copy_ledger(backup / "l.db", ledger)
    result = run(source, server.base_url, ledger, preflight=True)
    assert (result.exit_code, result.stats.unchanged) == (0, 300)
    assert any(
        "older copy" in w and "creates nothing unless --skip-existing" in w for w in run_warnings
    )
    db = Ledger(ledger)
    try:
        assert check(db).stale  # still not the live one: the next run that creates stops
    finally:
        db.close()


# -- the parts, as tables ------------------------------------------------------------------


# (jobs: c = a create to sample, o = another job; the sample's size; how many others
# are held at most; then what went before the sample was full, what the release gives)
@pytest.mark.parametrize(
    ("jobs", "size", "hold_max", "early", "released"),
    [
        ("ooc", 1, 10, "", "ooc"),  # everything waits for the sample
        ("ooooc", 1, 3, "oooo", "c"),  # past hold_max, the others go on; creates wait
        ("cc", 2, 10, "", "cc"),
        ("ccc", 1, 10, "", "ccc"),  # held until released, even past the size
    ],
)
def test_the_gate_holds_jobs_until_the_sample_is_looked_up(
    jobs: str, size: int, hold_max: int, early: str, released: str
) -> None:
    gate = SampleGate[str](size, hold_max=hold_max)
    went = ""
    for job in jobs:
        went += "".join(gate.hold(job, creates=job == "c"))
    assert went == early
    assert gate.full
    assert "".join(gate.release()) == released
    assert gate.open


def _lineage_of(tmp_path: Path, beside: object) -> str:
    ledger = tmp_path / "l.db"
    db = Ledger(ledger)
    try:
        first = check(db)
        if beside == "same, newer":
            beside = {"ledger_id": first.ledger_id, "generation": first.generation + 3}
        if beside == "same, equal":
            beside = {"ledger_id": first.ledger_id, "generation": first.generation}
        if beside is not None:
            text = beside if isinstance(beside, str) else json.dumps(beside)
            sidecar(ledger).write_text(text, encoding="utf-8")
        return check(db).stale
    finally:
        db.close()


# (what the file beside the ledger says; then how the ledger is judged)
@pytest.mark.parametrize(
    ("beside", "stale"),
    [
        (None, ""),  # no file beside it (moved, or its first run): live
        ("same, equal", ""),
        ("same, newer", "is an older copy of the live one"),
        ({"ledger_id": "0" * 32, "generation": 1}, "is not the ledger that last ran here"),
        ("not json", ""),  # unreadable: taken as absent (with a warning)
        ({"ledger_id": "x", "generation": "many"}, ""),
    ],
)
def test_the_lineage_tells_a_restored_copy_from_the_live_ledger(
    tmp_path: Path, beside: object, stale: str
) -> None:
    judged = _lineage_of(tmp_path, beside)
    assert (stale in judged) if stale else judged == ""
