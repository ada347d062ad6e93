"""`run --metrics-file`: the run's figures in Prometheus text format, for node_exporter's
textfile collector (name the file `*.prom` in the collector's folder).

The file is written with prometheus-client's `write_to_textfile` from a registry of its
own (a temporary file beside it, renamed into place: a scrape never reads half a file).
`consent_import_last_success_timestamp_seconds` is carried over from the file this run
replaces when this run did not succeed, so a failing night does not reset it; 0 until a
run has succeeded. Success: exit 0, not paused, no rows left, and not a dry run: a dry
run (`run --dry-run --metrics-file`) writes `consent_import_last_run_dry_run 1` and its
plan as `consent_import_last_run_planned_rows{action=...}`, its rows by outcome all 0
(nothing was done), and carries the last success over as a failing night does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["LAST_SUCCESS", "previous_success", "succeeded", "write_metrics"]

log = logging.getLogger("importer.metrics")

LAST_SUCCESS = "consent_import_last_success_timestamp_seconds"
#: `consent_import_rows{outcome=...}`: the summary's key for each outcome.
_OUTCOMES = {
    "created": "created",
    "adopted": "adopted",
    "updated": "updated",
    "recreated": "recreated",
    "unchanged": "unchanged",
    "invalid": "invalid",
    "failed": "failed",
    "skipped": "skipped",
    "revoked": "revoked",
    "revoke_pending": "revoke_pending",
    "missing_from_source": "missing_from_source",
    "settling": "settling",
    "left": "rows_left",
}
#: Single figures: metric name (after `consent_import_`), summary key, help.
_FIGURES = (
    (
        "last_exit_code",
        "exit_code",
        "Exit code of the last run (0 all good, 1 rows, 2 refused, 3 stopped, 4 bug).",
    ),
    ("last_run_requests", "requests", "Requests the last run sent."),
    ("last_run_retries", "retries", "Retries of the last run."),
    ("last_run_rate_limited", "rate_limited", "429 answers the last run got."),
    ("last_run_duration_seconds", "duration_s", "How long the last run's import took."),
)


def succeeded(summary: dict[str, Any]) -> bool:
    """A run that did everything: exit 0, not paused by the budget, no rows left."""
    return (
        summary.get("exit_code") == 0
        and not summary.get("paused")
        and not summary.get("rows_left")
        and not summary.get("dry_run")
    )


def previous_success(path: Path) -> float:
    """The last success time the metrics file at `path` holds (0: none, or no such file,
    or a file that is not Prometheus text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return 0.0
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    return float(sample.value)
    except (ValueError, TypeError, IndexError):
        log.warning(
            "--metrics-file %s: not Prometheus text; the last success time starts over", path
        )
    return 0.0


def write_metrics(path: Path, summary: dict[str, Any], *, finished: float) -> None:
    """Write `summary` (the `--summary-json` document) as Prometheus text at `path`.

    Args:
        finished: when the run ended, as a Unix time.
    """
    registry = CollectorRegistry()

    def gauge(name: str, documentation: str, value: float) -> None:
        Gauge(f"consent_import_{name}", documentation, registry=registry).set(value)

    last_success = finished if succeeded(summary) else previous_success(path)
    gauge(
        LAST_SUCCESS.removeprefix("consent_import_"),
        "When a run last did everything (exit 0, nothing left); 0: never.",
        last_success,
    )
    gauge("last_run_timestamp_seconds", "When the last run ended.", finished)
    if summary.get("run_id") is not None:
        gauge("last_run_id", "The ledger's id of the last run.", float(summary["run_id"]))
    gauge(
        "last_run_dry_run",
        "1 when the last run was a dry run (--dry-run): nothing was sent.",
        float(bool(summary.get("dry_run"))),
    )
    gauge(
        "last_run_paused",
        "1 when the last run paused for the rate-limit budget.",
        float(bool(summary.get("paused"))),
    )
    for name, key, documentation in _FIGURES:
        gauge(name, documentation, float(summary.get(key) or 0))
    rows = Gauge(
        "consent_import_last_run_rows",
        "Rows of the last run by outcome.",
        ["outcome"],
        registry=registry,
    )
    for outcome, key in _OUTCOMES.items():
        rows.labels(outcome).set(float(summary.get(key) or 0))
    planned = summary.get("planned")
    if isinstance(planned, dict):
        plan = Gauge(
            "consent_import_last_run_planned_rows",
            "What the last run, a dry run, would do, by action.",
            ["action"],
            registry=registry,
        )
        for action, count in planned.items():
            plan.labels(action).set(float(count))
    failed = Gauge(
        "consent_import_last_run_failed_rows",
        "Failed rows of the last run by error code.",
        ["code"],
        registry=registry,
    )
    for code, count in (summary.get("failed_by_code") or {}).items():
        failed.labels(code).set(float(count))
    write_to_textfile(str(path), registry)
