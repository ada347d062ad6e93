"""How a run's exit code combines its outcomes, as the README's exit-code table says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from importer._results import RunStats, ValidationSummary
from importer.engine._runner import RunResult

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        ({}, 0),
        ({"paused": True, "aborted": "budget"}, 0),  # a budget pause alone is no failure
        ({"invalid": 2}, 1),
        ({"failed": 1}, 1),
        ({"paused": True, "aborted": "budget", "invalid": 2}, 1),  # rows to fix beat a pause
        ({"revoke_refused": True, "invalid": 2}, 2),  # over --revoke-max beats row errors
        ({"aborted": "interrupted by SIGINT", "invalid": 2}, 3),  # a stop beats everything
        ({"aborted": "interrupted by SIGTERM", "revoke_refused": True}, 3),
    ],
)
def test_a_runs_exit_code_combines_its_outcomes(outcome: dict[str, object], code: int) -> None:
    stats = RunStats(**outcome)  # type: ignore[arg-type]
    assert RunResult(stats, 1, Path("l.db"), ValidationSummary()).exit_code == code


def test_the_readme_says_how_exit_codes_combine() -> None:
    text = README.read_text(encoding="utf-8").split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"3 over 2 over 1 over 0", text)
    assert "a paused run with invalid or failed rows exits 1" in text
