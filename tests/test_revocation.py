"""--revoke-missing has a scope and a brake; source systems never touch each other
(issue 10, items 4 and 5). Against the sandbox on a real port."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from importer import retry
from importer.cli import main
from importer.errors import UsageError
from importer.revocation import RevokeCap, is_correction_file
from importer.sandbox import SandboxConfig, running_sandbox
from tests.engine_helpers import KEY, consent_rows, write_csv


@pytest.fixture(autouse=True)
def _instant_backoff() -> Iterator[None]:
    with retry.no_waits():
        yield


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0), out, err


@pytest.fixture
def sandbox_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[object]:
    monkeypatch.chdir(tmp_path)
    with running_sandbox(SandboxConfig()) as sandbox:
        monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
        monkeypatch.setenv("CLINIKAPI_BASE_URL", sandbox.base_url)
        yield sandbox


def _statuses(sandbox: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for consent in sandbox.consents():  # type: ignore[attr-defined]
        counts[consent["status"]] = counts.get(consent["status"], 0) + 1
    return counts


def _summary(path: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return document


def test_the_readme_fix_and_feed_back_recipe_revokes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sandbox_env: object
) -> None:
    rows = list(consent_rows(15))
    for row in rows[4:7]:
        row["scope"] = "nope"
    write_csv(tmp_path / "consents.csv", rows)
    flags = ["--ledger", "l.db", "--revoke-missing", "-q"]
    code, _, err = run_cli(["run", "consents.csv", *flags, "--summary-json", "1.json"], capsys)
    assert code == 1, err
    assert _summary(tmp_path / "1.json")["created"] == 12
    code, _, err = run_cli(["export", "--ledger", "l.db", "--failed", "failed.csv"], capsys)
    assert code == 0, err
    fixed = tmp_path / "failed.csv"
    fixed.write_text(
        fixed.read_text(encoding="utf-8-sig").replace(",nope,", ",treatment,"), encoding="utf-8"
    )
    code, out, err = run_cli(["run", "failed.csv", *flags[:-1], "--summary-json", "2.json"], capsys)
    assert code == 0, err
    summary = _summary(tmp_path / "2.json")
    assert (summary["created"], summary["revoked"]) == (3, 0)
    assert "failed.csv is a correction file" in err  # the warning; the summary names it
    assert "none revoked: a correction file" in out
    assert _statuses(sandbox_env) == {"active": 15}


def test_a_fixed_file_of_another_name_leaves_the_first_files_rows_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sandbox_env: object
) -> None:
    write_csv(tmp_path / "clinic.csv", consent_rows(12))
    write_csv(tmp_path / "extra.csv", consent_rows(2, start=100))
    flags = ["--ledger", "l.db", "--revoke-missing", "-q"]
    assert run_cli(["run", "clinic.csv", *flags], capsys)[0] == 0
    code, _, err = run_cli(["run", "extra.csv", *flags, "--summary-json", "s.json"], capsys)
    assert code == 0, err
    summary = _summary(tmp_path / "s.json")
    assert (summary["revoked"], summary["revoke_out_of_scope"]) == (0, 12)
    assert _statuses(sandbox_env) == {"active": 14}


@pytest.mark.parametrize(
    ("cap", "code", "revoked"),
    [
        (None, 2, 0),  # default: 10% of 30 done rows = 3, and 10 are missing
        ("10", 0, 10),
        ("9", 2, 0),
        ("34%", 0, 10),  # 10.2 rows
        ("33%", 2, 0),  # 9.9 rows
    ],
)
def test_revocations_beyond_the_cap_are_refused_whole(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sandbox_env: object,
    cap: str | None,
    code: int,
    revoked: int,
) -> None:
    rows = list(consent_rows(30))
    write_csv(tmp_path / "a.csv", rows)
    assert run_cli(["run", "a.csv", "--ledger", "l.db", "-q"], capsys)[0] == 0
    write_csv(tmp_path / "a.csv", rows[:20])
    args = ["run", "a.csv", "--ledger", "l.db", "--revoke-missing", "--summary-json", "s.json"]
    got, _, err = run_cli([*args, *(["--revoke-max", cap] if cap else [])], capsys)
    assert got == code, err
    assert _summary(tmp_path / "s.json")["revoked"] == revoked
    assert _statuses(sandbox_env) == ({"active": 20, "inactive": 10} if revoked else {"active": 30})
    if code == 2:
        assert "would revoke 10" in err  # logged as an error
        assert "nothing was revoked" in err


def test_a_dry_run_lists_what_it_would_revoke_without_phi(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sandbox_env: object
) -> None:
    rows = list(consent_rows(10))
    write_csv(tmp_path / "a.csv", rows)
    assert run_cli(["run", "a.csv", "--ledger", "l.db", "-q"], capsys)[0] == 0
    write_csv(tmp_path / "a.csv", rows[:8])
    code, out, err = run_cli(
        ["run", "a.csv", "--ledger", "l.db", "--revoke-missing", "--revoke-max", "5", "--dry-run"],
        capsys,
    )
    assert code == 0, err
    assert "would revoke 2" in out
    assert "a.csv row 10" in out
    assert "a.csv row 11" in out
    for row in rows:
        assert row["sourceKey"] not in out
        assert row["patientId"] not in out
    # Over the cap, the dry run says the run would refuse, and exits as it would.
    code, out, _ = run_cli(
        ["run", "a.csv", "--ledger", "l.db", "--revoke-missing", "--revoke-max", "1", "--dry-run"],
        capsys,
    )
    assert code == 2
    assert "a.csv row 11" in out
    assert "nothing was revoked" in out
    assert _statuses(sandbox_env) == {"active": 10}


def test_two_source_systems_never_patch_or_revoke_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sandbox_env: object
) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.toml").write_text(
            f'[source]\nsystem = "clinic_{name}"\n', encoding="utf-8"
        )
    write_csv(tmp_path / "a.csv", consent_rows(5))
    # The same keys, other patients: clinic B's K000001 is not clinic A's.
    write_csv(tmp_path / "b.csv", consent_rows(5, patientId="pt_b"))
    flags = ["--ledger", "l.db", "--revoke-missing", "-q"]
    assert run_cli(["run", "a.csv", "--mapping", "a.toml", *flags], capsys)[0] == 0
    code, _, err = run_cli(
        ["run", "b.csv", "--mapping", "b.toml", *flags, "--summary-json", "s.json"], capsys
    )
    assert code == 0, err
    summary = _summary(tmp_path / "s.json")
    assert (summary["created"], summary["updated"], summary["revoked"]) == (5, 0, 0)
    assert _statuses(sandbox_env) == {"active": 10}
    code, out, err = run_cli(["status", "--ledger", "l.db", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["systems"] == {"clinic_a": 5, "clinic_b": 5}
    assert info["source_files"] == {"a.csv": 5, "b.csv": 5}
    code, out, _ = run_cli(["status", "--ledger", "l.db"], capsys)
    assert "clinic_a 5" in out
    assert "b.csv 5" in out


@pytest.mark.parametrize(
    ("text", "done", "limit"),
    [
        (None, 30, 3),  # default 10%
        (None, 5, 0),  # 10% of 5 rows: not one
        ("0", 30, 0),
        ("12", 30, 12),
        ("50%", 7, 3),
        ("100%", 7, 7),
    ],
)
def test_the_revoke_cap(text: str | None, done: int, limit: int) -> None:
    assert RevokeCap.parse(text).limit(done) == limit


@pytest.mark.parametrize("text", ["-1", "ten", "150%", "%", "1.5"])
def test_a_bad_revoke_cap_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--revoke-max"):
        RevokeCap.parse(text)


@pytest.mark.parametrize(
    ("columns", "correction"),
    [
        (["sourceKey", "patientId", "error_stage", "error_code", "error_message"], True),
        (["a", "error_stage", "error_code", "error_message", "http_status", "request_id"], True),
        (["sourceKey", "patientId", "scope"], False),
        (["sourceKey", "error_code"], False),  # one column of that name is not our file
    ],
)
def test_a_correction_file_is_known_by_its_error_columns(
    columns: list[str], correction: bool
) -> None:
    assert is_correction_file(columns) is correction
