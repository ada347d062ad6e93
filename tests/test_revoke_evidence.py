"""Revocation waits for evidence (issue 19, point 2): a row is revoked only once
--revoke-after consecutive runs that read its scope missed it; a row seen again starts
over; an input shrunk by more than the cap revokes nothing. Against the sandbox on a
real port."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from importer.engine._revocation import RevokeCap, RevokeScope, Shrink, cap_revocations
from importer.sandbox import RunningSandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, run, write_csv

pytestmark = pytest.mark.usefixtures("instant_backoff")


def _statuses(server: RunningSandbox) -> dict[str, int]:
    counts: dict[str, int] = {}
    for consent in server.consents():
        counts[consent["status"]] = counts.get(consent["status"], 0) + 1
    return counts


def test_a_truncated_nightly_file_revokes_nothing_on_its_first_night(
    tmp_path: Path,
    server: RunningSandbox,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    monkeypatch.setenv("CLINIKAPI_BASE_URL", server.base_url)
    rows = list(consent_rows(600))
    write_csv(tmp_path / "nightly.csv", rows)
    flags = ["--ledger", "l.db", "--revoke-missing", "--summary-json", "s.json"]
    assert run_cli(["run", "nightly.csv", *flags], capsys)[0] == 0
    write_csv(tmp_path / "nightly.csv", rows[:558])  # the export died at 93%
    dry, shown, _ = run_cli(["run", "nightly.csv", *flags, "--dry-run"], capsys)
    assert dry == 0
    assert "would revoke 0 (rows missing from the source)" in shown
    assert "42 consents missing from the source for 1 of 2 runs" in shown
    code, out, err = run_cli(["run", "nightly.csv", *flags], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert (summary["revoked"], summary["revoke_pending"]) == (0, 42)
    assert summary["missing_from_source"] == 42
    assert _statuses(server) == {"active": 600}  # no patient lost an active consent
    said = (
        "42 consents missing from the source for 1 of 2 runs: revoked at the next run "
        "that misses them"
    )
    assert said in out  # the terminal summary
    assert said in err  # and the run's warning
    assert "42 rows missing from the source (42 pending, see below)" in out
    # The next night's file is cut the same way: the second miss revokes them.
    dry, shown, _ = run_cli(["run", "nightly.csv", *flags, "--dry-run"], capsys)
    assert "would revoke 42" in shown
    code, out, err = run_cli(["run", "nightly.csv", *flags], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert (summary["revoked"], summary["revoke_pending"]) == (42, 0)
    assert _statuses(server) == {"active": 558, "inactive": 42}
    assert "42 rows missing from the source (42 revoked)" in out


def test_a_row_seen_again_starts_its_count_over(tmp_path: Path, server: RunningSandbox) -> None:
    rows = list(consent_rows(600))
    source, ledger = tmp_path / "nightly.csv", tmp_path / "l.db"
    options = {"revoke_missing": True}
    write_csv(source, rows)
    run(source, server.base_url, ledger, **options)
    write_csv(source, rows[:558])  # night 2: 42 missing once
    night = run(source, server.base_url, ledger, **options)
    assert (night.stats.revoked, night.stats.revoke_pending) == (0, 42)
    write_csv(source, rows[:580])  # night 3: 22 of them are back, 20 still missing
    night = run(source, server.base_url, ledger, **options)
    assert (night.exit_code, night.stats.revoked, night.stats.revoke_pending) == (0, 20, 0)
    assert _statuses(server) == {"active": 580, "inactive": 20}
    write_csv(source, rows[:558])  # night 4: the 22 are missing again, counted from 1
    night = run(source, server.base_url, ledger, **options)
    assert (night.stats.missing_from_source, night.stats.revoked) == (22, 0)
    assert night.stats.revoke_pending == 22
    night = run(source, server.base_url, ledger, **options)  # night 5: their second miss
    assert (night.stats.revoked, night.stats.revoke_pending) == (22, 0)
    assert _statuses(server) == {"active": 558, "inactive": 42}


def test_a_full_night_between_two_cut_ones_revokes_nothing(
    tmp_path: Path, server: RunningSandbox
) -> None:
    rows = list(consent_rows(300))
    source, ledger = tmp_path / "nightly.csv", tmp_path / "l.db"
    for night, rows_of_the_night in enumerate([300, 282, 300, 282, 300], start=1):
        write_csv(source, rows[:rows_of_the_night])
        result = run(source, server.base_url, ledger, revoke_missing=True)
        assert (result.exit_code, result.stats.revoked) == (0, 0), night
    assert _statuses(server) == {"active": 300}


# (--revoke-after; then, night by night while the same 2 rows stay missing, what is
# revoked and what the run says of the ones held back)
@pytest.mark.parametrize(
    ("after", "nights"),
    [
        (1, [(2, "")]),  # at the first miss, as before --revoke-after
        (2, [(0, "2 consents missing from the source for 1 of 2 runs: revoked at the next "
                 "run that misses them"), (2, "")]),
        (3, [(0, "for 1 of 3 runs: revoked once 2 more runs miss them"),
             (0, "2 consents missing from the source for 2 of 3 runs: revoked at the next"),
             (2, "")]),
    ],
)  # fmt: skip
def test_revoke_after_counts_consecutive_misses(
    tmp_path: Path, server: RunningSandbox, after: int, nights: list[tuple[int, str]]
) -> None:
    rows = list(consent_rows(30))
    source, ledger = tmp_path / "a.csv", tmp_path / "l.db"
    write_csv(source, rows)
    run(source, server.base_url, ledger)
    write_csv(source, rows[:28])
    for revoked, note in nights:
        result = run(source, server.base_url, ledger, revoke_missing=True, revoke_after=after)
        assert result.stats.revoked == revoked
        assert result.stats.revoke_pending == (2 if note else 0)
        assert note in result.stats.revoke_pending_note
    assert _statuses(server) == {"active": 28, "inactive": 2}


def test_an_input_shrunk_by_more_than_the_cap_revokes_nothing(
    tmp_path: Path, server: RunningSandbox
) -> None:
    valid, broken = list(consent_rows(60)), list(consent_rows(20, start=100, scope="nope"))
    source, ledger = tmp_path / "a.csv", tmp_path / "l.db"
    write_csv(source, valid + broken)
    first = run(source, server.base_url, ledger)  # 80 rows read: 60 created, 20 invalid
    assert (first.stats.created, first.stats.invalid) == (60, 20)
    # Tonight's file lost the 20 invalid rows and 3 good ones: 3 missing (under the cap
    # of 10% of 60 done rows = 6), but 23 rows fewer than the 80 read (over 10% = 8).
    write_csv(source, valid[:57])
    shrunk = run(source, server.base_url, ledger, revoke_missing=True, revoke_after=1)
    assert shrunk.exit_code == 2
    assert (shrunk.stats.revoked, shrunk.stats.revoke_pending) == (0, 0)
    assert shrunk.stats.revoke_reason == "shrunk"
    assert shrunk.stats.revoke_refused == (
        f"the input holds 57 rows of this scope, 23 fewer than the 80 of its last full read "
        f"(run {first.run_id}), more than --revoke-max 10% of 80 = 8: it may be cut short; "
        "nothing was revoked and no miss was counted. Check that the export is whole; if the "
        "source really shrank, rerun once with a higher --revoke-max"
    )
    assert _statuses(server) == {"active": 60}
    # A higher cap lets it through; the refused run counted no miss, so this is the first.
    allowed = run(source, server.base_url, ledger, revoke_missing=True, revoke_max="25")
    assert (allowed.exit_code, allowed.stats.revoked, allowed.stats.revoke_pending) == (0, 0, 3)
    assert "for 1 of 2 runs" in allowed.stats.revoke_pending_note
    # ... and it is the scope's last full read now: the default cap passes the next night.
    again = run(source, server.base_url, ledger, revoke_missing=True)
    assert (again.exit_code, again.stats.revoked) == (0, 3)


def test_revoke_after_must_be_at_least_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(tmp_path / "a.csv", consent_rows(3))
    code, _, err = run_cli(["run", str(source), "--revoke-missing", "--revoke-after", "0"], capsys)
    assert code == 2
    assert "--revoke-after" in err


# (runs that missed each missing row, this one included; --revoke-after; then the rows
# due now and the pending ones by count of misses)
@pytest.mark.parametrize(
    ("misses", "after", "due", "pending"),
    [
        ([1, 1, 1], 1, 3, {}),
        ([1, 1, 2], 2, 1, {1: 2}),
        ([1, 2, 3, 5], 3, 2, {1: 1, 2: 1}),
        ([], 2, 0, {}),
    ],
)
def test_the_plan_splits_missing_rows_into_due_and_pending(
    misses: list[int], after: int, due: int, pending: dict[int, int]
) -> None:
    missing = [(f"K{i}", "a.csv", i, f"consent_{i}") for i in range(len(misses))]
    counts = {f"K{i}": n for i, n in enumerate(misses)}
    scope = RevokeScope.of_run(None, [("a.csv", ["x"])], RevokeCap.parse("100"))
    result = cap_revocations(missing, 100, scope, after=after, misses=counts.__getitem__)
    assert (result.due, result.pending, len(result.rows)) == (due, pending, due)
    assert result.in_scope == len(misses)


# (rows per scope unit now; the last full reads; then the shrink, or None)
@pytest.mark.parametrize(
    ("sizes", "reads", "shrink"),
    [
        ({"file:a.csv": 90}, {"file:a.csv": (100, 4)}, Shrink(100, 90, 4)),
        ({"file:a.csv": 100}, {"file:a.csv": (100, 4)}, None),
        ({"file:a.csv": 120}, {"file:a.csv": (100, 4)}, None),  # grown
        ({"file:b.csv": 5}, {"file:a.csv": (100, 4)}, None),  # never read in full before
        # two files: only those read before count
        ({"file:a.csv": 90, "file:c.csv": 7}, {"file:a.csv": (100, 4)}, Shrink(100, 90, 4)),
    ],
)
def test_the_shrink_is_against_the_last_full_read(
    sizes: dict[str, int], reads: dict[str, tuple[int, int]], shrink: Shrink | None
) -> None:
    assert Shrink.of(sizes, reads) == shrink


def test_a_row_read_by_a_run_that_stops_starts_over_too(
    tmp_path: Path, server: RunningSandbox
) -> None:
    rows = list(consent_rows(30))
    source, ledger = tmp_path / "a.csv", tmp_path / "l.db"
    write_csv(source, rows)
    run(source, server.base_url, ledger)
    write_csv(source, rows[:28])
    assert run(source, server.base_url, ledger, revoke_missing=True).stats.revoke_pending == 2
    # The whole file again, every row edited, and a budget that pauses the run early:
    # it never reaches the revocations, but it read the 2 rows, which are in the source.
    write_csv(source, [{**row, "status": "inactive"} for row in rows])
    server.configure(rate_limit=5, rate_window_s=60.0)
    stopped = run(source, server.base_url, ledger, revoke_missing=True, max_wait_s=0.5)
    assert stopped.stats.paused
    server.configure(rate_limit=None)
    write_csv(source, rows[:28])
    again = run(source, server.base_url, ledger, revoke_missing=True)
    assert (again.stats.revoked, again.stats.revoke_pending) == (0, 2)  # counted from 1


def test_an_export_cut_inside_a_row_revokes_nothing_night_after_night(
    tmp_path: Path,
    server: RunningSandbox,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file the reader finds cut off (`truncated_file`) is no whole read: however
    often it comes, it revokes nothing and counts no miss (under the cap, too)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    monkeypatch.setenv("CLINIKAPI_BASE_URL", server.base_url)
    rows = list(consent_rows(600))
    write_csv(tmp_path / "nightly.csv", rows)
    flags = ["--ledger", "l.db", "--revoke-missing", "--summary-json", "s.json"]
    flags += ["--revoke-after", "1"]
    assert run_cli(["run", "nightly.csv", *flags], capsys)[0] == 0
    whole = (tmp_path / "nightly.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    cut = "".join(whole[:571]) + whole[571][:12]  # died inside row 572, no line break
    (tmp_path / "nightly.csv").write_text(cut, encoding="utf-8")
    for _ in range(2):
        code, _, err = run_cli(["run", "nightly.csv", *flags], capsys)
        assert code == 1, err  # the cut row is invalid, never sent
        summary = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
        assert (summary["revoked"], summary["revoke_pending"]) == (0, 0)
        assert summary["missing_from_source"] == 29
        assert "nightly.csv ends cut off (truncated_file)" in err
        assert _statuses(server) == {"active": 600}
