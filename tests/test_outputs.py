"""Outputs never destroy inputs, fail before the run, and hold PHI owner-only (issue 10)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from importer.ledger._ledger import Ledger
from importer.ledger._schema import ErrorNote, Op, Source
from importer.sandbox import SandboxConfig, running_sandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, run, write_csv

CLEAN = "patientId,scope,category,dateTime\npt_1,treatment,treatment-consent,2024-01-01T10:00:00Z\n"
FIVE_ROWS = CLEAN + "".join(
    f"pt_{i},treatment,treatment-consent,2024-01-0{i}T10:00:00Z\n" for i in range(2, 7)
)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _files(tmp: Path) -> None:
    (tmp / "victim.csv").write_text(FIVE_ROWS, encoding="utf-8")
    (tmp / "m.toml").write_text("[source]\ntimezone = 'UTC'\n", encoding="utf-8")
    os.link(tmp / "victim.csv", tmp / "hard.csv")
    (tmp / "soft.csv").symlink_to(tmp / "victim.csv")
    (tmp / "l2.db.lock").symlink_to(tmp / "victim.csv")
    ledger = Ledger(tmp / "l.db")
    run_id = ledger.begin_run(["victim.csv"])
    with ledger.transaction():  # a failed row, through the ledger's transitions
        src = Source("K1", "victim.csv", 2)
        ledger.intent(run_id, src, Op.CREATE, body="{}", body_hash="h", patient_id=None)
        ledger.failed(run_id, src, Op.CREATE, ErrorNote("api", "api_validation", "422", "{}"))
    ledger.close()


def _contents(folder: Path) -> dict[str, bytes]:
    # SQLite's own -wal/-shm files come and go with reading the ledger.
    return {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


# (arguments, the two names the one-line error must give, the file that must survive)
COLLISIONS = [
    (["validate", "victim.csv", "--report", "victim.csv"], ("victim.csv", "victim.csv")),
    (["validate", "victim.csv", "--report", "soft.csv"], ("soft.csv", "victim.csv")),  # symlink
    (["validate", "victim.csv", "--report", "hard.csv"], ("hard.csv", "victim.csv")),  # hard link
    (["validate", "victim.csv", "--report", "./sub/../victim.csv"], ("victim.csv", "victim.csv")),
    (["validate", "victim.csv", "--report", "r.json", "--report", "r.json"], ("r.json", "r.json")),
    (["run", "victim.csv", "--dry-run", "--report", "victim.csv"], ("victim.csv", "victim.csv")),
    (["run", "victim.csv", "--ledger", "l.db", "--summary-json", "l.db"], ("l.db", "l.db")),
    (["run", "victim.csv", "--ledger", "new.db", "--summary-json", "new.db"], ("new.db", "new.db")),
    (["run", "victim.csv", "--ledger", "victim.csv"], ("victim.csv", "victim.csv")),
    # the lock beside the ledger is rewritten by every run
    (["run", "victim.csv", "--ledger", "l2.db"], ("l2.db.lock", "victim.csv")),
    (
        ["run", "victim.csv", "--mapping", "m.toml", "--summary-json", "m.toml"],
        ("m.toml", "m.toml"),
    ),
    (["run", "victim.csv", "--report", "r.json", "--summary-json", "r.json"], ("r.json", "r.json")),
    (["export", "--ledger", "l.db", "--created", "l.db"], ("l.db", "l.db")),
    (["export", "--ledger", "l.db", "--failed", "victim.csv"], ("victim.csv", "victim.csv")),
    (["export", "--ledger", "l.db", "--created", "x.csv", "--failed", "x.csv"], ("x.csv", "x.csv")),
]


@pytest.mark.parametrize(("args", "names"), COLLISIONS)
def test_an_output_that_is_an_input_is_refused_before_anything_is_read(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    names: tuple[str, str],
) -> None:
    _files(tmp_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    monkeypatch.setenv("CLINIKAPI_BASE_URL", "http://127.0.0.1:9")  # nothing listens
    before = _contents(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    [line] = err.strip().splitlines()
    first, second = names
    assert first in line, line
    assert second in line, line
    assert "same file" in line, line
    assert _contents(tmp_path) == before  # nothing written, nothing truncated


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "in.csv", "--report", "missing/r.json"],
        ["validate", "in.csv", "--report", "missing/r.csv"],
        ["run", "in.csv", "--ledger", "l.db", "--summary-json", "missing/s.json"],
        ["run", "in.csv", "--ledger", "l.db", "--report", "missing/r.html"],
        ["run", "in.csv", "--ledger", "missing/l.db"],
        ["export", "--ledger", "l.db", "--created", "missing/c.csv"],
        ["export", "--ledger", "l.db", "--created", "f.csv", "--failed", "missing/f.csv"],
    ],
)
def test_an_output_folder_that_cannot_be_written_fails_before_the_run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
) -> None:
    write_csv(tmp_path / "in.csv", consent_rows(3))
    (tmp_path / "folder").mkdir()
    Ledger(tmp_path / "l.db").close()
    monkeypatch.chdir(tmp_path)
    with running_sandbox(SandboxConfig()) as sandbox:
        monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
        monkeypatch.setenv("CLINIKAPI_BASE_URL", sandbox.base_url)
        code, _, err = run_cli(args, capsys)
        assert sandbox.stats()["requests"] == 0
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert "missing" in line or "folder" in line, line
    assert not (tmp_path / "f.csv").exists()


def test_an_interrupted_write_leaves_the_old_file_and_no_scrap(tmp_path: Path) -> None:
    from importer.reports import _outputs as outputs

    target = tmp_path / "report.json"
    target.write_text("old\n", encoding="utf-8")

    def interrupted() -> None:
        with outputs.atomic_writer(target) as handle:
            handle.write("half a rep")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert target.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_every_file_holding_phi_is_owner_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = list(consent_rows(4))
    rows[1]["scope"] = "nope"
    source = write_csv(tmp_path / "in.csv", rows)
    monkeypatch.chdir(tmp_path)
    reports = ["v.csv", "v.json", "v.html"]
    code, _, err = run_cli(
        ["validate", "in.csv", *(a for r in reports for a in ("--report", r))], capsys
    )
    assert code == 1, err
    with running_sandbox(SandboxConfig()) as sandbox:
        monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
        monkeypatch.setenv("CLINIKAPI_BASE_URL", sandbox.base_url)
        (tmp_path / "adopted.db").touch(mode=0o644)  # an empty file given as the ledger
        run_args = ["run", str(source), "--ledger", "adopted.db", "-q"]
        code, _, err = run_cli([*run_args, "--report", "r.json", "--report", "r.html"], capsys)
        assert code == 1, err
    code, _, err = run_cli(
        ["export", "--ledger", "adopted.db", "--created", "c.csv", "--failed", "f.csv"], capsys
    )
    assert code == 0, err
    phi = [*reports, "r.json", "r.html", "c.csv", "f.csv", "adopted.db"]
    assert {name: _mode(tmp_path / name) for name in phi} == dict.fromkeys(phi, 0o600)


@pytest.mark.parametrize(
    ("content", "refused"),
    [
        (b"", False),  # empty: becomes the ledger
        (b"patientId,scope\npt_1,treatment\n", True),  # someone's data: never touched
        (None, True),  # another program's SQLite database
    ],
    ids=["empty", "text", "foreign-sqlite"],
)
def test_an_existing_file_is_adopted_as_a_ledger_only_when_safe(
    tmp_path: Path, content: bytes | None, refused: bool
) -> None:
    path = tmp_path / "given.db"
    if content is None:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE invoices (id INTEGER)")
    else:
        path.write_bytes(content)
    path.chmod(0o644)
    before = path.read_bytes()
    if refused:
        with pytest.raises(Exception, match="not a consent-import ledger") as info:
            Ledger(path)
        assert getattr(info.value, "exit_code", None) == 2
        assert path.read_bytes() == before
        assert _mode(path) == 0o644
    else:
        Ledger(path).close()
        assert _mode(path) == 0o600


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["validate", "in.csv", "--redact", "--report", "r.csv"], ".csv"),
        (["validate", "in.csv", "--redact", "--report", "r.html", "--report", "r.csv"], ".csv"),
        (["run", "in.csv", "--dry-run", "--redact", "--report", "r.csv"], ".csv"),
        (["validate", "in.csv", "--redact", "--report", "r.json", "--report", "r.html"], None),
    ],
)
def test_redact_applies_to_every_report_or_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    refused: str | None,
) -> None:
    secret = "SECRET-PATIENT-77"
    (tmp_path / "in.csv").write_text(
        f"patientId,scope,category,dateTime\n{secret},bogus-{secret},c,not-a-date-{secret}\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(args, capsys)
    if refused:
        assert code == 2
        [line] = err.strip().splitlines()
        assert "--redact" in line
        assert refused in line
        assert not list(tmp_path.glob("r.*"))
        return
    assert code == 1, err
    for name in ("r.json", "r.html"):
        assert secret not in (tmp_path / name).read_text(encoding="utf-8")
    json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))


def test_export_refuses_a_source_file_the_ledger_recorded(tmp_path: Path) -> None:
    """The fix-and-feed-back loop: failed.csv, fixed and run, then exported over again."""
    from importer.reports import _outputs as outputs

    rows = list(consent_rows(3))
    rows[0]["scope"] = "nope"
    failed = write_csv(tmp_path / "failed.csv", rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        run(failed, sandbox.base_url, tmp_path / "l.db")
    before = failed.read_bytes()
    with pytest.raises(Exception, match="same file") as info:
        outputs.check_export(tmp_path / "l.db", created=None, failed=failed)
    assert getattr(info.value, "exit_code", None) == 2
    assert failed.read_bytes() == before


def test_export_finds_a_relative_source_name_beside_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run recorded `victim.csv` in its own folder; the export runs from elsewhere."""
    _files(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    before = _contents(tmp_path)
    ledger, victim = str(tmp_path / "l.db"), str(tmp_path / "victim.csv")
    code, _, err = run_cli(["export", "--ledger", ledger, "--failed", victim], capsys)
    assert code == 2, err
    assert "same file" in err
    assert _contents(tmp_path) == before
