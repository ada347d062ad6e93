"""`status`: what the ledger says of its last runs, their figures, and whether one is running."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from importer.reports._export import open_existing


def status(ledger_path: Path, *, runs: int = 10) -> dict[str, Any]:
    """Recent runs, rows by state, and the most common errors."""
    ledger = open_existing(ledger_path)
    try:
        errors = Counter(ledger.error_counts())
        counts = ledger.counts()
        systems, files = ledger.sources()
        undone = ledger.undo_states()
        return {
            "ledger": str(ledger_path),
            "rows_by_state": counts,
            "in_flight": counts.get("in_flight", 0),
            "settling": counts.get("settling", 0),
            "top_errors": dict(errors.most_common(10)),
            "systems": systems,
            "source_files": files,
            "runs": [
                _with_undo(_with_figures(_with_live_status(run)), undone)
                for run in ledger.runs(runs)
            ],
        }
    finally:
        ledger.close()


def _with_undo(run: dict[str, Any], undone: dict[int, str]) -> dict[str, Any]:
    """The run with `undo`: its undo state, or None if it was never taken back."""
    return {**run, "undo": undone.get(run["id"])}


def _with_live_status(run: dict[str, Any]) -> dict[str, Any]:
    """A run still marked running whose process is gone (killed, host rebooted) shows as
    interrupted: its next run resumes it (the ledger marks it crashed then)."""
    if run["status"] == "running" and not _alive(run.get("pid")):
        return {**run, "status": "interrupted"}
    return run


def _with_figures(run: dict[str, Any]) -> dict[str, Any]:
    """A run with its exit code (None for runs recorded before exit codes were, or
    still going) and the figures `status` shows of it: adopted, revoked, and the rows a
    budget pause left (paused)."""
    summary = run["summary"] or {}
    left = summary.get("rows_left", 0) if summary.get("paused") else 0
    return {
        **run,
        "exit_code": summary.get("exit_code"),
        "adopted": summary.get("adopted"),
        "revoked": summary.get("revoked"),
        "paused": left if "paused" in summary else None,
    }


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True
