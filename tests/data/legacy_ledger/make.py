"""How legacy.db was made: consent-import at commit 15ffa94 (content-hash keys, before
natural keys), importing legacy.csv (no key column) into a sandbox. Kept for the record;
rerunning it with today's code would make a natural-key ledger instead.

    git worktree add /tmp/oldmain 15ffa94
    PYTHONPATH=/tmp/oldmain python tests/data/legacy_ledger/make.py
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from importer.mapping import load_mapping
from importer.runner import RunConfig, run_import

from importer.sandbox import SandboxConfig, running_sandbox

HERE = Path(__file__).parent


def main() -> None:
    os.chdir(HERE)  # the ledger records the input's name as given: legacy.csv
    ledger = Path("legacy.db")
    ledger.unlink(missing_ok=True)
    with running_sandbox(SandboxConfig()) as sandbox:
        config = RunConfig(
            inputs=["legacy.csv"],
            ledger=ledger,
            base_url=sandbox.base_url,
            api_key="clk_test_0000testing1234",
            handle_signals=False,
        )
        result = run_import(config, load_mapping(None))
        assert result.stats.created == 6, result.stats
    with sqlite3.connect(ledger) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode=DELETE")
    Path("legacy.db.lock").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
