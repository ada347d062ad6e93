"""What a run shows people and log collectors: the progress bar and the log format.

Logs carry row numbers, fields, rule codes and request ids, never cell values (PHI).
"""

from __future__ import annotations

import json
import logging
import sys
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from importer.pool import RunStats


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def setup_logging(log_format: str, *, quiet: bool, verbose: bool = False) -> None:
    """Text logs (warnings; errors only when quiet) on stderr by default; JSON lines
    (info and up, quiet or not: a collector wants them all) with `log_format="json"`."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        level = logging.INFO
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        level = logging.INFO if verbose else logging.WARNING
        if quiet:
            level = logging.ERROR
    root = logging.getLogger("importer")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class RunProgress:
    """A progress bar on a terminal (rows done/total, rows/s, ETA, retries, 429s); silent
    when stderr is not a terminal or when quiet."""

    def __init__(self, *, enabled: bool) -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._started = 0.0

    def __enter__(self) -> RunProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]importing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} rows/s"),
                TimeRemainingColumn(),
                TextColumn("retries {task.fields[retries]} · 429s {task.fields[limited]}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("rows", total=None, rate="-", retries=0, limited=0)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def total(self, rows: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=rows)

    def update(self, _event: str, stats: RunStats, *, rate_limited: int = 0) -> None:
        if self._progress is None or self._task is None:
            return
        done = stats.invalid + stats.created + stats.updated + stats.unchanged + stats.failed
        elapsed = self._progress.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed:,.0f}" if elapsed > 0.5 else "-"
        self._progress.update(
            self._task, completed=done, rate=rate, retries=stats.retries, limited=rate_limited
        )

    def wait(self, seconds: float, reason: str) -> None:
        """Say why sending paused: a spent rate-limit window, with when it resets."""
        message: Any = f"waiting {seconds:,.0f} s: {reason}"
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            logging.getLogger("importer.run").warning(message)
