"""`--log-format json`: every stderr line is one JSON object with an `event`, and a line
names a `field` only when it is a field of the row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from importer.api import _retry as retry
from importer.sandbox import RunningSandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY, consent_rows, write_csv


def json_lines(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[dict[str, object]]]:
    code, _, err = run_cli([*args, "--log-format", "json"], capsys)
    return code, [json.loads(line) for line in err.splitlines()]


@pytest.mark.parametrize(
    ("config", "args", "events"),
    [
        # a first run: the check before creating says what it found
        ({}, [], {"create_check", "summary"}),
        # requests answer 503 once in a while: retries (enough that no row runs out)
        (
            {"fault_unavailable": 0.4, "seed": 7},
            ["--no-preflight", "--max-attempts", "20"],
            {"retry", "summary"},
        ),
    ],
)
def test_every_json_log_line_has_an_event(
    tmp_path: Path,
    server: RunningSandbox,
    capsys: pytest.CaptureFixture[str],
    config: dict[str, object],
    args: list[str],
    events: set[str],
) -> None:
    server.configure(**config)
    source = write_csv(tmp_path / "in.csv", consent_rows(12))
    with retry.no_waits():
        code, lines = json_lines(
            ["run", str(source), "--ledger", str(tmp_path / "l.db"), "--settle", "0",
             "--base-url", server.base_url, "--api-key", KEY, *args],
            capsys,
        )  # fmt: skip
    assert code == 0, [line["message"] for line in lines]
    assert [line for line in lines if not line.get("event")] == []
    assert events <= {line["event"] for line in lines}
    # a 503 is the service's, not a row field's
    assert [line for line in lines if line.get("field") == "service"] == []


def test_a_preflight_warning_has_an_event(
    tmp_path: Path, server: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    server.configure(fault_unavailable=1.0)  # the probe answers 503: it starts anyway
    source = write_csv(tmp_path / "in.csv", consent_rows(1))
    with retry.no_waits():
        _, lines = json_lines(
            ["run", str(source), "--ledger", str(tmp_path / "l.db"), "--max-attempts", "1",
             "--base-url", server.base_url, "--api-key", KEY],
            capsys,
        )  # fmt: skip
    [warning] = [line for line in lines if "starting anyway" in str(line["message"])]
    assert warning["event"] == "preflight"
    assert [line for line in lines if not line.get("event")] == []
