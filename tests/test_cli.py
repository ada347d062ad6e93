"""The command line: help everywhere, exit codes, one-line errors, never a traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from importer.cli._main import cli
from importer.intake._reader import open_table
from tests.cli_helpers import run_cli

ROOT = Path(__file__).parent.parent
COMMANDS = sorted(cli.commands)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0
    assert "Example:" in out
    assert f"consent-import {command}" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_appears_in_the_readme(command: str) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"consent-import {command}" in readme


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for command in COMMANDS:
        assert command in out


CLEAN = "patientId,scope,category,dateTime\npt_1,treatment,treatment-consent,2024-01-01T10:00:00Z\n"
ONE_BAD = CLEAN + "pt_2,marketing,treatment-consent,2024-01-01T10:00:00Z\n"


def test_validate_all_valid_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.csv").write_text(CLEAN, encoding="utf-8")
    code, out, err = run_cli(["validate", str(tmp_path / "a.csv")], capsys)
    assert (code, err) == (0, "")
    assert "1 row, 1 valid, 0 invalid" in out  # singular since issue 15


def test_validate_some_invalid_exits_1_and_writes_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "a.csv"
    source.write_text(ONE_BAD, encoding="utf-8")
    report_json, report_csv = tmp_path / "r.json", tmp_path / "r.csv"
    code, out, _ = run_cli(
        ["validate", str(source), "--report", str(report_json), "--report", str(report_csv)],
        capsys,
    )
    assert code == 1
    assert "2 rows, 1 valid, 1 invalid" in out
    document = json.loads(report_json.read_text(encoding="utf-8"))
    assert document["summary"] == {
        "rows": 2,
        "valid": 1,
        "invalid": 1,
        "skipped": 0,  # rows a version-2 filter left out (issue 14)
        "by_rule": {"invalid_enum": 1},
        "by_field": {"scope": 1},
        "by_file": {str(source): {"rows": 2, "valid": 1, "invalid": 1}},
    }
    [error] = document["errors"]
    assert (error["file"], error["row"], error["field"], error["code"]) == (
        str(source),
        3,
        "scope",
        "invalid_enum",
    )
    assert "marketing" not in error["message"]  # values never reach messages
    lines = report_csv.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0] == "patientId,scope,category,dateTime,error_stage,error_code,error_message"
    assert lines[1].startswith(
        "pt_2,marketing,treatment-consent,2024-01-01T10:00:00Z,validate,invalid_enum,"
    )


def test_csv_report_feeds_back_unchanged_after_a_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Formula-looking cells are escaped in the report and unescaped on reading."""
    source = tmp_path / "a.csv"
    source.write_text(
        'patientId,scope,category,policyUri\npt_1,bogus,=HYPERLINK("x"),-5\n', encoding="utf-8"
    )
    report = tmp_path / "errors.csv"
    code, _, _ = run_cli(["validate", str(source), "--report", str(report)], capsys)
    assert code == 1
    text = report.read_text(encoding="utf-8-sig")
    assert "'=HYPERLINK" in text
    assert ",'-5," in text
    fixed = tmp_path / "fixed.csv"
    fixed.write_text(text.replace("bogus", "treatment"), encoding="utf-8")
    again = tmp_path / "again.json"
    code, _, _ = run_cli(["validate", str(fixed), "--report", str(again)], capsys)
    assert code == 0
    errors = json.loads(again.read_text(encoding="utf-8"))["errors"]
    assert [e["field"] for e in errors] == []
    # The escape is undone on reading: the cells are the user's own again.
    [chunk] = list(open_table(fixed).chunks())
    assert chunk["category"].tolist() == ['=HYPERLINK("x")']
    assert chunk["policyUri"].tolist() == ["-5"]


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["validate", "{tmp}/missing.csv"], r"missing\.csv"),
        ("a.pdf", ["validate", "{tmp}/a.pdf"], r"a\.pdf"),
        ("empty.csv", ["validate", "{tmp}/empty.csv"], r"empty\.csv"),
        ("header.csv", ["validate", "{tmp}/header.csv"], r"no rows to import"),
        (
            "a.csv",
            ["validate", "{tmp}/a.csv", "--mapping", "{tmp}/none.toml"],
            r"mapping file .* no such file",
        ),
        (
            "a.csv",
            ["validate", "{tmp}/a.csv", "--report", "{tmp}/r.txt"],
            r"unknown report type '\.txt'",
        ),
        (
            "a.csv",
            ["run", "{tmp}/a.csv", "--api-key", "sk_nope_123456"],
            r"the API key …3456 is not a ClinikAPI key",
        ),
        (
            "a.csv",
            [
                "run",
                "{tmp}/a.csv",
                "--api-key",
                "clk_test_abcd1234",
                "--base-url",
                "http://example.com",
            ],
            r"plain http:// to example\.com would send health data unencrypted",
        ),
        (
            "a.csv",
            ["export", "--ledger", "{tmp}/none.db", "--created", "{tmp}/c.csv"],
            r"ledger .*none\.db: no such file",
        ),
        ("a.csv", ["status", "--ledger", "{tmp}/none.db"], r"ledger .*none\.db: no such file"),
        ("a.csv", ["run", "{tmp}/a.csv", "--concurrency", "0"], r"concurrency"),
        ("garbage.csv", ["validate", "{tmp}/garbage.csv"], r"garbage\.csv: "),
        ("quote.csv", ["validate", "{tmp}/quote.csv"], r"quote\.csv: .*quote"),
        ("fake.xlsx", ["validate", "{tmp}/fake.xlsx"], r"fake\.xlsx: .*CSV"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    setup: str | None,
    args: list[str],
    message: str,
) -> None:
    contents: dict[str, str | bytes] = {
        "a.pdf": "x",
        "empty.csv": "",
        "header.csv": "patientId,scope,category\n",
        "a.csv": CLEAN,
        "garbage.csv": bytes(range(256)) * 40,
        "quote.csv": 'patientId,scope,category\npt_1,"treatment,c\npt_2,treatment,c\n',
        "fake.xlsx": CLEAN,
    }
    if setup:
        content = contents[setup]
        if isinstance(content, bytes):
            (tmp_path / setup).write_bytes(content)
        else:
            (tmp_path / setup).write_text(content, encoding="utf-8")
    code, _, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in args], capsys)
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert re.search(message, err), err
    assert len(lines) <= 3, err  # click's usage errors add a usage line and a hint


def test_api_key_is_never_printed_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.csv").write_text(CLEAN, encoding="utf-8")
    key = "clk_live_SUPERSECRET0000wxyz"
    code, out, err = run_cli(
        ["run", str(tmp_path / "a.csv"), "--api-key", key, "--base-url", "http://example.com"],
        capsys,
    )
    assert code == 2
    assert key not in out + err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "nan"], r"--timeout.*'nan' is not a finite number"),
        (["--timeout", "inf"], r"--timeout.*'inf' is not a finite number"),
        (["--timeout", "0"], r"--timeout.*0<x<=86400"),
        (["--max-rps", "1e-300"], r"--max-rps.*0\.01<=x<=1000000"),  # hung forever before
        (["--max-rps", "nan"], r"--max-rps.*not a finite number"),
        (["--max-wait", "nan"], r"--max-wait.*not a finite number"),
        (["--max-wait", "-1"], r"--max-wait.*0<=x<=86400"),
        (["--grace", "-5"], r"--grace.*0<=x<=86400"),
        (["--grace", "soon"], r"--grace.*'soon' is not a valid float"),
        # only letters and digits after the prefix (the server refuses any other shape)
        (["--api-key", "clk_test_abc!@#"], r"the API key clk_test_… is not a ClinikAPI key"),
        (["--api-key", "clk_live_abc-1234_xyz9"], r"followed by letters and digits only"),
    ],
)
def test_run_values_are_checked_when_parsed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "a.csv").write_text(CLEAN, encoding="utf-8")
    base = ["run", str(tmp_path / "a.csv"), "--ledger", str(tmp_path / "l.db")]
    code, out, err = run_cli([*base, "--api-key", "clk_test_abcd1234", *args], capsys)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "l.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], r"--port.*99999 is not in the range 0<=x<=65535"),
        (["--port", "-1"], r"--port.*0<=x<=65535"),
        (["--port", "{busy}"], r"cannot listen on 127\.0\.0\.1:\d+: Address already in use"),
        (["--latency-ms", "nan"], r"--latency-ms.*not a finite number"),
    ],
)
def test_sandbox_values_and_a_busy_port_are_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        code, _, err = run_cli(["sandbox", *(a.replace("{busy}", port) for a in args)], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        (["run", "{tmp}/a.csv", "--log-format", "json", "--timeout", "nan"], "usage"),
        (["run", "{tmp}/a.csv", "--log-format=json", "--no-such-flag"], "usage"),
        (["run", "{tmp}/none.csv", "--log-format", "json"], "config"),
        (["run", "{tmp}/a.csv", "--log-format", "json", "--api-key", "nope"], "config"),
    ],
)
def test_with_json_logs_every_error_is_one_json_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], kind: str
) -> None:
    (tmp_path / "a.csv").write_text(CLEAN, encoding="utf-8")
    code, out, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in args], capsys)
    assert code == 2
    assert out == ""
    records = [json.loads(line) for line in err.splitlines()]  # each line is JSON
    assert [r["event"] for r in records if r["level"] == "error"] == ["error"]
    record = records[-1]
    assert record["level"] == "error"
    assert record["event"] == "error"
    assert record["kind"] == kind
    assert record["exit_code"] == 2


def test_an_internal_error_is_a_json_line_without_its_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_path: object) -> None:
        raise RuntimeError("pt_SECRET in a cell")  # an unexpected error quoting a value

    monkeypatch.setattr("importer.intake._mapping.load_mapping", broken)
    monkeypatch.delenv("CONSENT_IMPORT_DEBUG", raising=False)
    (tmp_path / "a.csv").write_text(CLEAN, encoding="utf-8")
    code, out, err = run_cli(["run", str(tmp_path / "a.csv"), "--log-format", "json"], capsys)
    assert (code, out) == (4, "")
    record = json.loads(err.splitlines()[-1])
    assert (record["kind"], record["exit_code"]) == ("internal", 4)
    assert "RuntimeError" in record["message"]
    assert "SECRET" not in err


def _readme_command_rows() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Commands", 1)[1].split("Every command has", 1)[0]
    rows = re.findall(r"^\| `consent-import (\w+)(.*)$", table, flags=re.M)
    return dict(rows)


def _long_flags(command: str) -> set[str]:
    params = cli.commands[command].params
    return {o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


@pytest.mark.parametrize("command", COMMANDS)
def test_the_readme_command_table_names_exactly_the_flags_of_help(command: str) -> None:
    row = _readme_command_rows()[command]
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", row))
    flags = _long_flags(command) - {"--help"}
    assert sorted(named - flags) == [], "named in the README but not in --help"
    assert sorted(flags - named) == [], "in --help but not in the README's row"


@pytest.mark.parametrize(
    ("command", "option"), [(c, p.name) for c in COMMANDS for p in cli.commands[c].params]
)
def test_every_option_has_help_text(command: str, option: str) -> None:
    [param] = [p for p in cli.commands[command].params if p.name == option]
    if param.param_type_name == "option":
        assert getattr(param, "help", None), f"{command} {param.opts[0]} has no help text"


@pytest.mark.parametrize(
    ("args", "mapping", "expected"),
    [
        (["validate", "{tmp}/none.csv"], None, "{tmp}/none.csv: no such file; check the path"),
        (
            ["validate", "{tmp}/a.csv", "--mapping", "{tmp}/none.toml"],
            None,
            "mapping file {tmp}/none.toml: no such file; check --mapping",
        ),
        # the path tried, and where it is read from
        (
            ["validate", "{tmp}/a.csv", "--mapping", "{tmp}/m.toml"],
            '[patients]\ncrosswalk = "nope.csv"\n',
            "crosswalk file {tmp}/nope.csv: no such file; [patients] crosswalk is read "
            "relative to the mapping file's folder",
        ),
        (
            ["export", "--ledger", "{tmp}/none.db", "--created", "{tmp}/c.csv"],
            None,
            "ledger {tmp}/none.db: no such file; give the --ledger of a run",
        ),
        (
            ["status", "--ledger", "{tmp}/none.db"],
            None,
            "ledger {tmp}/none.db: no such file; give the --ledger of a run",
        ),
        (
            ["verify", "--ledger", "{tmp}/none.db", "--api-key", "clk_test_abcd1234"],
            None,
            "ledger {tmp}/none.db: no such file; give the --ledger of a run",
        ),
    ],
)
def test_a_missing_file_is_said_one_way(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    mapping: str | None,
    expected: str,
) -> None:
    (tmp_path / "a.csv").write_text(CLEAN, encoding="utf-8")
    if mapping is not None:
        (tmp_path / "m.toml").write_text(mapping, encoding="utf-8")
    code, _, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in args], capsys)
    assert code == 2
    assert err == f"consent-import: error: {expected.replace('{tmp}', str(tmp_path))}\n"
