"""A dry run is no night's import to a monitor (review of issues 19-22, finding 9): it
never sets the last success, its summary carries its plan, and it applies the lineage
check the real run would. And a recreate is counted apart (a low item of the same
review). Against the sandbox on a real port."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from importer.ledger._lineage import sidecar
from importer.sandbox import RunningSandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, write_csv

pytestmark = pytest.mark.usefixtures("instant_backoff")

Cli = Callable[..., tuple[int, str, str]]
LAST_SUCCESS = "consent_import_last_success_timestamp_seconds"


def _metrics(path: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{label}}}" if label else sample.name] = sample.value
    return found


@pytest.fixture
def cli(
    server: RunningSandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    """`cli(*args)`: `run in.csv --ledger l.db` against the sandbox; (exit, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)

    def cli(*extra: str) -> tuple[int, str, str]:
        args = ["run", "in.csv", "--ledger", "l.db", "--base-url", server.base_url, *extra]
        return run_cli(args, capsys)

    return cli


@pytest.mark.parametrize("night_first", [False, True])
def test_a_dry_run_never_sets_the_last_success(cli: Cli, tmp_path: Path, night_first: bool) -> None:
    rows = list(consent_rows(5))
    write_csv(tmp_path / "in.csv", rows[:3])
    monitor = ["--summary-json", "s.json", "--metrics-file", "m.prom"]
    before = 0.0
    if night_first:
        assert cli("-q", *monitor)[0] == 0
        before = _metrics(tmp_path / "m.prom")[LAST_SUCCESS]
        assert before > 0
    write_csv(tmp_path / "in.csv", rows)
    code, out, err = cli("--dry-run", *monitor)
    assert code == 0, err
    created = 5 - 3 * night_first
    assert re.search(rf"^  create +{created}$", out, re.M), out  # as the terminal says
    metrics = _metrics(tmp_path / "m.prom")
    assert metrics[LAST_SUCCESS] == before  # carried over (0: never), not now
    assert metrics["consent_import_last_run_dry_run"] == 1
    assert metrics["consent_import_last_run_planned_rows{action=create}"] == created
    assert metrics["consent_import_last_run_rows{outcome=created}"] == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["dry_run"] is True
    assert summary["exit_code"] == 0
    assert (summary["rows"], summary["valid"], summary["invalid"]) == (5, 5, 0)
    assert summary["planned"]["create"] == created
    assert summary["planned"].get("unchanged", 0) == 3 * night_first
    assert summary["created"] == 0  # nothing was done
    # The next real night succeeds and says it was no dry run.
    assert cli("-q", *monitor)[0] == 0
    metrics = _metrics(tmp_path / "m.prom")
    assert metrics[LAST_SUCCESS] > before
    assert metrics["consent_import_last_run_dry_run"] == 0


def test_a_dry_runs_summary_carries_the_pending_revocations(cli: Cli, tmp_path: Path) -> None:
    rows = list(consent_rows(4))
    write_csv(tmp_path / "in.csv", rows)
    assert cli("-q")[0] == 0
    write_csv(tmp_path / "in.csv", rows[:3])
    code, out, err = cli(
        "--dry-run", "--revoke-missing", "--revoke-max", "5", "--summary-json", "s.json"
    )
    assert code == 0, err
    assert "pending: 1 consent missing from the source for 1 of 2 runs" in out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["missing_from_source"], summary["revoke_pending"]) == (1, 1)
    assert summary["planned"] == {"unchanged": 3, "revoke": 0}


@pytest.mark.parametrize(
    ("extra", "code", "refused"),
    [
        ((), 2, True),  # the real run is refused: so is the dry run
        (("--skip-existing",), 0, False),  # the real run adopts
        (("--no-preflight",), 0, False),  # the real run creates unchecked
    ],
)
def test_a_dry_run_over_a_restored_ledger_says_the_run_would_be_refused(
    cli: Cli,
    tmp_path: Path,
    extra: tuple[str, ...],
    code: int,
    refused: bool,
) -> None:
    rows = list(consent_rows(4))
    write_csv(tmp_path / "in.csv", rows[:2])
    assert cli("-q")[0] == 0
    shutil.copyfile(tmp_path / "l.db", tmp_path / "backup.db")
    write_csv(tmp_path / "in.csv", rows[:3])
    assert cli("-q")[0] == 0
    shutil.copyfile(tmp_path / "backup.db", tmp_path / "l.db")  # restored; the sidecar stays
    write_csv(tmp_path / "in.csv", rows)
    lineage = sidecar(tmp_path / "l.db").read_text()
    got, _, err = cli("--dry-run", "--summary-json", "s.json", *extra)
    assert got == code, err
    assert ("the real run would be refused" in err) is refused
    assert ("is an older copy of the live one" in err) is refused
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["exit_code"] == code
    assert bool(summary["would_be_refused"]) is refused
    planned = summary["planned"]
    assert planned.get("create", 0) + planned.get("create (after a lookup)", 0) == 2
    assert sidecar(tmp_path / "l.db").read_text() == lineage  # the dry run wrote nothing
    if refused:  # as the real run
        assert cli("-q")[0] == 2


def test_a_recreate_is_counted_as_recreated_as_well_as_updated(
    cli: Cli, tmp_path: Path, server: RunningSandbox
) -> None:
    rows = list(consent_rows(4))
    write_csv(tmp_path / "in.csv", rows)
    assert cli("-q")[0] == 0
    for row in rows[:3]:
        row["scope"] = "research"  # immutable: only a new consent can carry it
    write_csv(tmp_path / "in.csv", rows)
    posts = server.stats()["creates"]
    monitor = ["--summary-json", "s.json", "--metrics-file", "m.prom"]
    code, out, err = cli("--on-immutable-change", "recreate", *monitor)
    assert code == 0, err
    assert server.stats()["creates"] - posts == 3
    assert "0 created (0 adopted after a lookup) · 3 updated (3 recreated as new consents)" in out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["created"], summary["updated"], summary["recreated"]) == (0, 3, 3)
    assert _metrics(tmp_path / "m.prom")["consent_import_last_run_rows{outcome=recreated}"] == 3
    # A plain PATCH is no recreate.
    rows[3]["status"] = "inactive"
    write_csv(tmp_path / "in.csv", rows)
    code, out, err = cli(*monitor)
    assert code == 0, err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["updated"], summary["recreated"]) == (1, 0)
    assert "recreated" not in out


def test_a_dry_runs_summary_counts_invalid_rows_as_read(cli: Cli, tmp_path: Path) -> None:
    rows = list(consent_rows(3))
    rows[1]["patientId"] = ""
    write_csv(tmp_path / "in.csv", rows)
    code, _, err = cli("--dry-run", "--summary-json", "s.json")
    assert code == 1, err  # as the run: a row it would not import
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["rows"], summary["valid"], summary["invalid"]) == (3, 2, 1)
    assert summary["planned"] == {"create": 2, "invalid": 1}
    assert (summary["exit_code"], summary["dry_run"]) == (1, True)
