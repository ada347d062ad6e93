"""Running the CLI in-process, as a test sees it: exit code, stdout, stderr."""

from __future__ import annotations

import pytest

from importer.cli._main import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`consent-import ARGS` through `main`; click ends every command with SystemExit."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0), out, err
