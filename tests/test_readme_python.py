"""The README's "Using it from Python" snippet runs as written and prints what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using it from Python", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert found is not None, "the section has no python block"
    return found.group(1)


def test_the_readme_python_snippet_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", snippet()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "valid 15 invalid 6",  # sample_data/README.md lists the six invalid rows
        "created 15 exit 1",  # exit 1: some rows are invalid
        "rerun {'unchanged': 15, 'invalid': 6}",
        "undo {'undone': 15} consents left 0",  # the run taken back
    ]
