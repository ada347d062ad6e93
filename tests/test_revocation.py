"""--revoke-missing has a scope and a brake; source systems never touch each other
(issue 10, items 4 and 5). Against the sandbox on a real port."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from importer._errors import UsageError
from importer.engine._revocation import RevokeCap, is_correction_file
from importer.sandbox import SandboxConfig, running_sandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, run, write_csv

pytestmark = pytest.mark.usefixtures("instant_backoff")


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
    flags = ["--ledger", "l.db", "--revoke-missing", "--revoke-after", "1", "-q"]
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
    flags = ["--ledger", "l.db", "--revoke-missing", "--revoke-after", "1", "-q"]
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
    args = [
        "run",
        "a.csv",
        "--ledger",
        "l.db",
        "--revoke-missing",
        "--revoke-after",
        "1",
        "--summary-json",
        "s.json",
    ]
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
        [
            "run",
            "a.csv",
            "--ledger",
            "l.db",
            "--revoke-missing",
            "--revoke-after",
            "1",
            "--revoke-max",
            "5",
            "--dry-run",
        ],
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
        [
            "run",
            "a.csv",
            "--ledger",
            "l.db",
            "--revoke-missing",
            "--revoke-after",
            "1",
            "--revoke-max",
            "1",
            "--dry-run",
        ],
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
    flags = ["--ledger", "l.db", "--revoke-missing", "--revoke-after", "1", "-q"]
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


def _unkeyed(n: int) -> list[dict[str, str]]:
    rows = list(consent_rows(n))
    for row in rows:
        del row["sourceKey"]
    return rows


# (the edit to row 2 of 12 unkeyed rows; then invalid, missing, revoked, whether the
# brake's note is given): a typo outside the natural key keeps the row's key (its
# consent is not "missing"); a typo inside it leaves the row without a stable key,
# so the run revokes nothing at all.
@pytest.mark.parametrize(
    ("edit", "counts", "braked"),
    [
        ({"status": "actve"}, (1, 0, 0), False),  # the reviewer's repro (A5)
        ({"status": "actve", "policyUri": ""}, (1, 0, 0), False),
        ({"scope": "treatmnt"}, (1, 1, 0), True),
        ({"dateTime": "2024-13-45"}, (1, 1, 0), True),
        ({"patientId": ""}, (1, 1, 0), True),
        # a blank identity cell or a row cut short before its identity cells
        # (short_row): no stable key either (review finding 1); a blank dateTime is
        # even valid (the API does not require it), but not the key the row had
        ({"dateTime": ""}, (0, 1, 0), True),
        ({"scope": ""}, (1, 1, 0), True),
        ({"category": ""}, (1, 1, 0), True),
        ({"dateTime": "", "status": "actve"}, (1, 1, 0), True),
        ("short", (1, 1, 0), True),
        (None, (0, 1, 1), False),  # the row really left: revoked (the test can fail)
    ],
)
def test_an_invalid_row_under_natural_keys_never_revokes_its_consent(
    tmp_path: Path,
    edit: dict[str, str] | str | None,
    counts: tuple[int, int, int],
    braked: bool,
) -> None:
    rows = _unkeyed(12)
    source = write_csv(tmp_path / "in.csv", rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        assert run(source, sandbox.base_url, tmp_path / "l.db").exit_code == 0
        if edit is None:
            del rows[1]
        elif isinstance(edit, dict):
            rows[1].update(edit)
        write_csv(source, rows)
        if edit == "short":  # row 2 ends after its status: dateTime and policyUri gone
            lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
            lines[2] = ",".join(rows[1][h] for h in ("patientId", "scope", "category", "status"))
            source.write_text("".join(lines[:2]) + lines[2] + "\r\n" + "".join(lines[3:]))
        result = run(
            source,
            sandbox.base_url,
            tmp_path / "l.db",
            revoke_missing=True,
            revoke_after=1,
            revoke_max="1",
        )
        stats = result.stats
        assert (stats.invalid, stats.missing_from_source, stats.revoked) == counts
        # (the row with a blank dateTime is valid, so sent: one more active consent)
        active = (11 if counts[2] else 12) + stats.created
        assert stats.created == (edit == {"dateTime": ""})
        assert _statuses(sandbox) == (
            {"active": active, "inactive": 1} if counts[2] else {"active": active}
        )
    if braked:
        assert stats.revoke_note == (
            "1 row has no stable key (patientId, scope, category or dateTime blank, cut off or "
            "unusable, or an empty key column): any missing row could be it, so this run "
            "revokes nothing; fix it and rerun"
        )
    else:
        assert stats.revoke_note == ""


@pytest.mark.parametrize(("emptied", "revoked"), [(True, 0), (False, 1)])
def test_an_empty_key_cell_brakes_revocation_too(
    tmp_path: Path, emptied: bool, revoked: int
) -> None:
    rows = list(consent_rows(12))
    source = write_csv(tmp_path / "in.csv", rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        assert run(source, sandbox.base_url, tmp_path / "l.db").exit_code == 0
        if emptied:  # its key gone, the row could be the one K000001 was
            rows[1]["sourceKey"] = ""
        else:
            del rows[1]
        write_csv(source, rows)
        result = run(
            source,
            sandbox.base_url,
            tmp_path / "l.db",
            revoke_missing=True,
            revoke_after=1,
            revoke_max="1",
        )
        assert (result.stats.missing_from_source, result.stats.revoked) == (1, revoked)
        assert ("no stable key" in result.stats.revoke_note) is emptied


@pytest.mark.parametrize("log_format", ["text", "json", "dry-run"])
def test_the_brake_is_said_on_the_terminal_and_in_the_json_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sandbox_env: object, log_format: str
) -> None:
    rows = _unkeyed(12)
    write_csv(tmp_path / "in.csv", rows)
    flags = ["--ledger", "l.db", "--revoke-missing", "--revoke-after", "1", "--revoke-max", "5"]
    assert run_cli(["run", "in.csv", *flags, "-q"], capsys)[0] == 0
    rows[1]["scope"] = "treatmnt"
    del rows[2]
    write_csv(tmp_path / "in.csv", rows)
    extra = ["--dry-run"] if log_format == "dry-run" else ["--log-format", log_format]
    code, out, err = run_cli(["run", "in.csv", *flags, *extra], capsys)
    assert code == 1, err
    assert _statuses(sandbox_env) == {"active": 12}
    if log_format == "dry-run":  # says what the run would: nothing revoked
        assert "  1 row has no stable key" in out
        return
    if log_format == "text":
        assert "2 rows missing from the source (none revoked: rows without a stable key)" in out
        assert "WARNING: 1 row has no stable key" in err
        return
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    braked = [line for line in lines if line.get("event") == "revoke_skipped"]
    assert [(b["level"], b["reason"], b["missing"]) for b in braked] == [
        ("warning", "unstable_keys", 2)
    ]
    assert "no stable key" in braked[0]["message"]


# (the cap; then the exit code and how many of b.csv's 5 missing rows are revoked): the
# share is of the 6 done rows in scope (b.csv's), not of the ledger's 66 (A6).
@pytest.mark.parametrize(
    ("cap", "code", "revoked"),
    [
        (None, 2, 0),  # the default 10% of 6 = 0 (was 10% of 66 = 6: 5 revoked)
        ("83%", 2, 0),  # 4.98 rows
        ("84%", 0, 5),  # 5.04 rows
        ("5", 0, 5),  # a count is a count
    ],
)
def test_the_revoke_share_is_of_the_rows_in_scope(
    tmp_path: Path, cap: str | None, code: int, revoked: int
) -> None:
    a = write_csv(tmp_path / "a.csv", consent_rows(60))
    b_rows = list(consent_rows(6, start=1000))
    b = write_csv(tmp_path / "b.csv", b_rows)
    with running_sandbox(SandboxConfig()) as sandbox:
        assert run([a, b], sandbox.base_url, tmp_path / "l.db").exit_code == 0
        write_csv(b, b_rows[:1])  # a wrong, partial extract of b
        options = {"revoke_max": cap} if cap else {}
        result = run(
            b, sandbox.base_url, tmp_path / "l.db", revoke_missing=True, revoke_after=1, **options
        )
        assert (result.exit_code, result.stats.revoked) == (code, revoked)
        assert result.stats.revoke_out_of_scope == 60
        assert _statuses(sandbox) == ({"active": 61, "inactive": 5} if revoked else {"active": 66})
    if code == 2:
        assert f"of 6 done rows in scope = {0 if cap is None else 4}" in result.stats.revoke_refused
