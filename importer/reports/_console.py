"""What a run shows people and log collectors: the progress bar and the log format.

Logs carry row numbers, fields, rule codes and request ids, never cell values (PHI).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from importer._results import RunStats


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 row`, `2 rows`, `1,000 rows` (`words` when the plural is not word + "s")."""
    return f"{count:,} {word if count == 1 else (words or word + 's')}"


def plain_console() -> Console:
    """The console for stdout: colour and layout on a terminal; redirected (cron, systemd,
    a file), no colour and no wrapping, so each line stays whole for grep and parsers."""
    return Console(highlight=False, soft_wrap=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors.

    A record logged with `extra={"fields": {...}}` carries those keys too (`event`,
    `file`, `row`, `code`, ...): never cell values. Every line has an `event` (`log`
    when its record named none).
    """

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            document.update({k: v for k, v in fields.items() if k not in document})
        # Collectors route on `event`: a line logged without one still has it.
        document.setdefault("event", "log")
        if record.exc_info:
            # Only the type: an exception's message may quote a cell.
            kind = record.exc_info[0]
            document["exception"] = kind.__name__ if kind else None
        return json.dumps(document, default=str)


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
        self._started = time.monotonic()
        self._total: int | None = None
        self._done = 0

    def __enter__(self) -> RunProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]importing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} rows/s"),
                TimeRemainingColumn(),
                TextColumn(
                    "retries {task.fields[retries]} · 429s {task.fields[limited]} · "
                    "settling {task.fields[settling]}"
                ),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "rows", total=None, rate="-", retries=0, limited=0, settling=0
            )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def total(self, rows: int) -> None:
        self._total = rows
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=rows)

    def update(self, _event: str, stats: RunStats) -> None:
        self._done = done = stats.finished
        if self._progress is None or self._task is None:
            return
        elapsed = self._progress.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed:,.0f}" if elapsed > 0.5 else "-"
        self._progress.update(
            self._task,
            completed=done,
            rate=rate,
            retries=stats.retries,
            limited=stats.rate_limited,
            settling=stats.settling,
        )

    def wait(self, seconds: float, reason: str) -> None:
        """Say why sending paused (a spent rate-limit window, when it resets) and, from
        the pace so far, when the run should end."""
        message: Any = f"waiting {seconds:,.0f} s: {reason}"
        if self._total is not None and self._done:
            left = max(self._total - self._done, 0)
            pace = self._done / max(time.monotonic() - self._started, 1e-3)
            eta = _duration(left / pace + seconds) if left else "-"
            message += f"; {left:,} rows left, ETA about {eta} at the pace so far"
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            fields = {"event": "budget_wait", "seconds": round(seconds, 1), "reason": reason}
            logging.getLogger("importer.run").warning(message, extra={"fields": fields})


def _duration(seconds: float) -> str:
    """1 h 05 min, 4 min 10 s, 12 s."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"
