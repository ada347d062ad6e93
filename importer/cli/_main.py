"""The command line: parse options, call the library, turn its errors into exit codes.

Exit codes (the contract schedulers rely on): 0 all good, 1 some rows invalid or failed,
2 usage or configuration error, 3 aborted (auth error, interrupted; rerun to resume),
4 internal error (a bug: please report it).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from importer._errors import AbortError, ConsentImportError, ResourceError, UsageError
from importer._options import (
    DEFAULTS,
    IDENTITY_CHANGED_CHOICES,
    IMMUTABLE_CHANGE_CHOICES,
    RunOptions,
)
from importer._resources import resource_error
from importer._results import PlanSummary, RevokePlan
from importer._version import __version__
from importer.reports._console import plain_console, plural

if TYPE_CHECKING:
    from importer._results import RunStats
    from importer.commands._verify import ReadPlan
    from importer.intake._mapping import Mapping
    from importer.reports._monitoring import RunMonitor
from importer.cli._params import (
    _RATE,
    _WAIT,
    EXIT_ABORTED,
    EXIT_CONFIG,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_ROWS,
    _api_key,
    _base_url,
    _concurrency,
    _earlier_ledger,
    _inputs,
    _mapping,
    _max_attempts,
    _max_wait,
    _monitored,
    _timeout,
)
from importer.cli._tools import demo, init, preview, sandbox

log = logging.getLogger("importer.cli")


# -- value types, checked when the command line is parsed (exit 2, one line) ------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="consent-import")
def cli() -> None:
    """Move patient consents from legacy exports into ClinikAPI, without duplicates.

    \b
    Example:
      consent-import validate exports/*.csv --mapping legacy.toml --report errors.csv
    """


@cli.command()
@_inputs
@_mapping
@click.option(
    "--report",
    "reports",
    multiple=True,
    metavar="PATH",
    help="Write a report: .json (summary and errors), .csv (invalid rows with their "
    "errors, to fix and feed back), .html. Repeatable.",
)
@click.option(
    "--redact",
    is_flag=True,
    help="Leave every cell value out of the reports, for sharing outside the team (JSON "
    "never holds any; refused with a .csv report, which is the rows' own cells).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def validate(
    inputs: Sequence[Path], mapping: Path | None, reports: Sequence[str], redact: bool, quiet: bool
) -> int:
    """Read, map and validate every row; send nothing.

    Exit 0 when every row is valid, 1 when some are invalid, 2 for a usage or
    configuration error.

    \b
    Example:
      consent-import validate legacy.csv --mapping legacy.toml --report errors.json
    """
    from importer.commands._validate import validate_files
    from importer.intake._mapping import load_mapping

    summary = validate_files(inputs, load_mapping(mapping), reports, redact=redact)
    if not quiet:
        from importer.reports._report import print_validation

        print_validation(summary, plain_console())
    return EXIT_ROWS if summary.invalid else EXIT_OK


@cli.command()
@_inputs
@_mapping
@click.option(
    "--ledger",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULTS.ledger,
    show_default=True,
    help="SQLite ledger of created ids and failures (holds PHI: kept owner-only). "
    "Rerun with the same ledger to resume or sync.",
)
@_base_url
@_api_key
@_concurrency
@click.option(
    "--max-rps",
    type=_RATE,
    help="Cap on requests started per second (at least 0.01), on top of the server's "
    "window budget.",
)
@_timeout
@_max_attempts
@_max_wait
@click.option(
    "--on-immutable-change",
    type=click.Choice(IMMUTABLE_CHANGE_CHOICES),
    default=DEFAULTS.on_immutable_change,
    show_default=True,
    help="A changed patientId, scope, category or dateTime "
    "cannot be patched: fail the row, or create the new consent and patch the old "
    "one to inactive.",
)
@click.option(
    "--revoke-missing",
    is_flag=True,
    help="Patch consents whose rows left the "
    "source to inactive (the input is taken as the whole source).",
)
@click.option(
    "--revoke-max",
    metavar="N|P%",
    help="Revoke at most N consents, or P% of the done rows in scope (this run's source "
    "system, or its files' names), in one run; over it, revoke none and exit 2. "
    "[default: 10%]",
)
@click.option(
    "--revoke-after",
    type=click.IntRange(min=1),
    default=DEFAULTS.revoke_after,
    show_default=True,
    metavar="N",
    help="With --revoke-missing, revoke a row only once N consecutive runs that read its "
    "scope missed it (a row seen again starts over); until then it is pending. 1: at the "
    "first miss.",
)
@click.option(
    "--skip-existing",
    is_flag=True,
    help="Look each new row up before posting and "
    "adopt an existing match, for a first import into a tenant that already holds "
    "consents, or a ledger restored from a backup. Costs one search request per row.",
)
@click.option(
    "--identity-changed",
    type=click.Choice(IDENTITY_CHANGED_CHOICES),
    default=DEFAULTS.identity_changed,
    show_default=True,
    help="When the columns feeding patientId, scope, category or dateTime changed since "
    "the last run on this ledger, its rows have new keys: stop before creating any "
    "(exit 2), or accept and create them as new consents.",
)
@click.option(
    "--settle",
    "settle_s",
    default=DEFAULTS.settle_s,
    show_default=True,
    type=_WAIT,
    help="After an ambiguous answer to a POST (timeout, dropped connection, 5xx), wait "
    "this many seconds before looking the consent up, so a consent the server stores or "
    "indexes late is not posted twice; the run goes on meanwhile. 0: look up at once.",
)
@click.option(
    "--grace",
    "grace_s",
    default=DEFAULTS.grace_s,
    show_default=True,
    type=_WAIT,
    help="On Ctrl-C / SIGTERM, seconds to let in-flight requests settle.",
)
@click.option(
    "--no-preflight",
    is_flag=True,
    help="Skip the checks before the first row: one request to see that the base URL is "
    "ClinikAPI and takes the key and, before the run creates anything, up to 20 "
    "lookups of the first rows it would create (a consent already there means a ledger "
    "restored from a backup, another ledger or another tool: exit 2), and the check that "
    "the ledger is not an older copy of the one that last ran beside it.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate and compare with the ledger; print "
    "what would be created, patched or skipped; send nothing.",
)
@click.option(
    "--summary-json",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the run's counts as JSON (for schedulers), whatever the outcome: with "
    "exit_code, run_id, started_at, finished_at.",
)
@click.option(
    "--metrics-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the same figures in Prometheus text format, whatever the outcome (for "
    "node_exporter's textfile collector: name it *.prom), with "
    "consent_import_last_success_timestamp_seconds.",
)
@click.option(
    "--report",
    "reports",
    multiple=True,
    metavar="PATH",
    help="Write a report of the run: .json (summary, row errors) or .html. "
    "With --dry-run, a validation report (.json, .csv, .html). Repeatable.",
)
@click.option(
    "--redact",
    is_flag=True,
    help="Leave every cell value out of the reports (JSON never holds any; refused "
    "with a .csv report, which is the rows' own cells).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line, for log collectors.",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress bar, no summary, text logs errors only (JSON logs keep every line).",
)
@_monitored
def run(
    inputs: Sequence[Path],
    mapping: Path | None,
    api_key: str | None,
    no_preflight: bool,
    dry_run: bool,
    summary_json: Path | None,
    reports: Sequence[str],
    redact: bool,
    log_format: str,
    quiet: bool,
    monitor: RunMonitor,
    **option_values: Any,
) -> int:
    """Post every valid row to ClinikAPI; never the same consent twice.

    Rows already created are skipped, changed rows are patched, and rows whose outcome
    was lost (crash, timeout) are looked up before anything is sent again. Exit 0 every
    row created/updated/unchanged (or paused by --max-wait), 1 some rows invalid or
    failed, 2 usage or configuration error, 3 aborted (auth error, interrupted):
    rerun with the same ledger to resume.

    \b
    Example:
      export CLINIKAPI_API_KEY=clk_live_...
      consent-import run legacy.csv --mapping legacy.toml --ledger legacy.db \\
          --concurrency 8 --summary-json summary.json
    """
    from importer.engine._runner import RunConfig, run_import
    from importer.intake._mapping import load_mapping
    from importer.reports._console import RunProgress, setup_logging
    from importer.reports._outputs import check_run
    from importer.reports._report import check_run_report_paths, write_run_reports

    setup_logging(log_format, quiet=quiet)
    monitor.check()  # before anything else: its outputs are then written whatever happens
    shown = not (quiet or log_format == "json")
    # The other flags are RunOptions' fields by name (their defaults come from it too).
    options = RunOptions(**option_values, preflight=not no_preflight)
    ledger = options.ledger
    _log_start(inputs, options, dry_run=dry_run)
    run_reports = [] if dry_run else check_run_report_paths(reports, redact=redact)
    the_mapping = monitor.mapping = load_mapping(mapping)
    check_run(inputs, the_mapping, ledger, reports, summary_json, metrics_file=monitor.metrics_file)
    if dry_run:
        plan = _dry_run(inputs, the_mapping, options, reports, redact=redact, quiet=not shown)
        monitor.plan = plan.summary()  # its summary carries the plan's counts
        return _dry_run_exit(plan)
    with RunProgress(enabled=shown) as progress:
        result = run_import(
            RunConfig(inputs=inputs, options=options, api_key=api_key),
            the_mapping,
            on_progress=lambda event, stats: progress.update(event, stats),
            on_wait=progress.wait,
            on_total=progress.total,
            count_first=progress.enabled,  # a bar shows it; a wait's ETA counts then
        )
    monitor.finished(result.stats, exit_code=result.exit_code, run_id=result.run_id)
    write_run_reports(run_reports, result.validation, result.stats, redact=redact)
    # The summary JSON's document: its keys (exit code, run id, times) in the log line too.
    summary = monitor.document(result.stats, exit_code=result.exit_code, run_id=result.run_id)
    log.info(
        "summary: %s",
        ", ".join(f"{k} {v}" for k, v in summary.items() if isinstance(v, int | float)),
        extra={"fields": {"event": "summary", **summary, "exit_code": result.exit_code}},
    )
    if shown:
        _print_run(result.stats, ledger, result.total, inputs)
    return result.exit_code  # a refused revocation was logged as an error: exit 2


_KEY_NOTES = {
    "source cells": "Source key: no key column (or FHIR resources without an id), so each row "
    "is keyed by the cells (a resource: the elements) feeding patientId, scope, category and "
    "dateTime, as read before mapping; other edits are PATCHed",
    "natural": "Source key: no key column (or FHIR resources without an id), and this ledger "
    "was made with natural keys (or before them): rows are keyed by their mapped patientId, "
    "scope, categories and dateTime, so a mapping fix changing them makes new consents (see "
    "README: source keys)",
    "content hash": "Source key: no key column, and this ledger was made before natural keys: "
    "rows are keyed by a hash of their whole body (an edited row is a new consent; see README)",
}


def _print_revocations(plan: RevokePlan) -> None:
    """A dry run's revocations: how many, and where their rows were (file and row only:
    keys may hold patient ids)."""
    click.echo(
        f"  would revoke {plan.due:,} (rows missing from the source); "
        f"{plan.out_of_scope:,} ledger rows of other files or systems out of scope"
    )
    if plan.pending:
        click.echo(f"  pending: {plan.pending_note()}")
    shown = plan.rows[:50]
    for _, file, number, _ in shown:
        click.echo(f"    {file} row {number}")
    if plan.in_scope > len(shown):
        click.echo(f"    … and {plan.in_scope - len(shown):,} more")
    if plan.refusal or plan.note:
        click.echo(f"  {plan.refusal or plan.note}")


def _log_start(inputs: Sequence[Path], options: RunOptions, *, dry_run: bool) -> None:
    host = urlsplit(options.base_url).netloc
    names = ["concurrency", "max_rps", "timeout_s", "max_attempts", "max_wait_s"]
    names += ["on_immutable_change", "revoke_missing", "skip_existing", "identity_changed"]
    names += ["grace_s", "settle_s"]
    log.info(
        "start: consent-import %s, %s, ledger %s, base URL host %s",
        __version__,
        plural(len(inputs), "input"),
        options.ledger,
        host,
        extra={
            "fields": {
                "event": "start",
                "version": __version__,
                "inputs": [str(p) for p in inputs],
                "ledger": str(options.ledger),
                "base_url_host": host,
                "options": {
                    **{name: getattr(options, name) for name in names},
                    "preflight": options.preflight,
                    "dry_run": dry_run,
                },
            }
        },
    )


def _dry_run(
    inputs: Sequence[Path],
    mapping: Mapping,
    options: RunOptions,
    reports: Sequence[str],
    *,
    redact: bool,
    quiet: bool,
) -> PlanSummary:
    from importer.commands._validate import validate_files
    from importer.engine._dry_run import dry_run_import

    if reports:
        validation = validate_files(inputs, mapping, reports, redact=redact)
        if not quiet:
            from importer.reports._report import print_validation

            print_validation(validation, plain_console())
    plan = dry_run_import(inputs, mapping, options.ledger, options)
    log.info(
        "dry run: %d rows",
        plan.rows,
        extra={"fields": {"event": "summary", "dry_run": True, "rows": plan.rows, **plan.counts}},
    )
    if not quiet:
        click.echo(f"Dry run: {plural(plan.rows, 'row')}; nothing was sent.")
        if plan.source_key != "column":
            click.echo(_KEY_NOTES[plan.source_key])
        for action, count in sorted(plan.counts.items()):
            click.echo(f"  {action:<28} {count:>10,}")
        if plan.revoke is not None:
            _print_revocations(plan.revoke)
    if plan.refused:
        log.error(
            "the real run would be refused before creating (exit 2): %s; pass --skip-existing "
            "to adopt what the server holds",
            plan.refused,
            extra={"fields": {"event": "create_check", "dry_run": True, "stale": True}},
        )
    return plan


def _dry_run_exit(plan: PlanSummary) -> int:
    """A dry run exits as the run would: 2 where it would be refused (over --revoke-max,
    a restored or replaced ledger), else 1 for rows it would not import, else 0."""
    if plan.refused or (plan.revoke is not None and plan.revoke.refusal):
        return EXIT_CONFIG  # as the run would
    return EXIT_ROWS if plan.invalid or plan.counts.get("immutable_change") else EXIT_OK


def _print_run(stats: RunStats, ledger: Path, total: int, inputs: Sequence[Path] = ()) -> None:
    from importer.reports._report import skipped_note

    out = plain_console()
    skipped = skipped_note(inputs)
    read = f"{stats.rows:,} of {plural(total, 'row')}" if total > stats.rows else ""
    out.print(
        f"Run: {read or plural(stats.rows, 'row')} · {stats.created:,} created "
        f"({stats.adopted:,} adopted after a lookup) · {stats.updated:,} updated"
        + (f" ({stats.recreated:,} recreated as new consents)" if stats.recreated else "")
        + f" · {stats.unchanged:,} unchanged · {stats.invalid:,} invalid · {stats.failed:,} failed"
        + (f" · {stats.skipped:,} skipped ({skipped})" if stats.skipped else "")
    )
    out.print(
        f"     {plural(stats.requests, 'request')} · {plural(stats.retries, 'retry', 'retries')} · "
        f"{stats.rate_limited:,} rate-limited · {stats.duration_s:,.1f} s"
    )
    if stats.source_key != "column":
        out.print(f"     {_KEY_NOTES[stats.source_key]}", soft_wrap=True)
    if stats.mapping_changed:
        refused = stats.by_error.get("immutable_change", 0)
        out.print(
            f"     The {stats.mapping_changed} changed since the last run: this run changed "
            f"{plural(stats.updated + refused, 'row')} ({stats.updated:,} updated, "
            f"{refused:,} refused as immutable changes) and created {stats.created:,}",
            soft_wrap=True,
        )
        if stats.created and stats.source_key in ("natural", "content hash"):
            # These keys come from mapped values: the fix may have re-created rows.
            out.print(
                f"     This ledger's {stats.source_key} keys change with the mapping: some of "
                f"the {stats.created:,} created may be second consents of earlier rows; "
                "`consent-import verify` lists them as suspect_duplicate",
                soft_wrap=True,
            )
    if stats.settled_adopted or stats.settled_reposted:
        out.print(
            f"     after --settle: {stats.settled_adopted:,} found and adopted, "
            f"{stats.settled_reposted:,} posted again"
        )
    if stats.missing_from_source:
        verb = (
            f"{stats.revoked:,} revoked"
            if stats.revoked
            else f"none revoked: {RevokePlan.named(stats.revoke_reason)}"
            if stats.revoke_note
            else "none revoked"
            if stats.revoke_refused
            else f"{stats.revoke_pending:,} pending, see below"
            if stats.revoke_pending
            else "left alone; --revoke-missing patches them inactive"
        )
        missing = plural(stats.missing_from_source, "row")
        out.print(f"     {missing} missing from the source ({verb})")
    if stats.revoke_pending:
        out.print(f"     pending revocation: {stats.revoke_pending_note}", soft_wrap=True)
    if stats.revoke_out_of_scope:
        out.print(
            f"     {stats.revoke_out_of_scope:,} ledger rows of other files or source systems "
            "were out of scope for --revoke-missing"
        )
    if stats.revoke_note and not stats.missing_from_source:
        # The run's warning gave the whole reason; the summary only names it.
        out.print(f"     none revoked: {RevokePlan.named(stats.revoke_reason)}")
    if stats.paused:
        out.print(
            f"[yellow]Paused[/]: {plural(stats.rows_left, 'row')} left; the rate-limit budget "
            f"resets in {stats.resets_in_s or 0:,.0f} s. Rerun to resume."
        )
    elif stats.aborted:
        # Rows read but not finished count too: a stop after the whole file was read
        # must not read as rows lost.
        out.print(
            f"[red]Aborted[/]: {stats.aborted}; {plural(stats.rows_left, 'row')} left. "
            "Rerun with the same ledger to resume."
        )
    if total > stats.rows and (stats.paused or stats.aborted):
        # Rows the run never read are left too, not only those read and not finished.
        out.print(f"     {plural(total - stats.rows, 'row')} of the input not reached")
    for code, count in sorted(stats.by_error.items(), key=lambda kv: -kv[1]):
        out.print(f"     failed {code}: {count:,}")
    fhir = skipped != "filtered out"  # some input is FHIR: its failed ones export as NDJSON
    exports = "CSVs, or --failed FILE.ndjson for NDJSON" if fhir else "CSVs"
    out.print(f"Ledger: {ledger} (consent-import export --ledger {ledger} ... for {exports})")


@cli.command()
@_earlier_ledger
@click.option(
    "--created",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write created/updated consents here (CSV).",
)
@click.option(
    "--failed",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write invalid and failed rows here: their original columns plus the "
    "error; fix it and feed it back as input. A .ndjson name writes the failed FHIR "
    "resources, their errors as meta.tag.",
)
def export(ledger: Path, created: Path | None, failed: Path | None) -> int:
    """Write created.csv and failed.csv from a ledger.

    \b
    Example:
      consent-import export --ledger legacy.db --created created.csv --failed failed.csv
    """
    from importer.reports._export import export_csvs

    if created is None and failed is None:
        raise UsageError("export: give --created FILE.csv, --failed FILE.csv, or both")
    counts = export_csvs(ledger, created, failed)
    if created is not None:
        click.echo(f"{plural(counts.created, 'consent')} -> {created}")
    if failed is not None:
        click.echo(f"{plural(counts.failed, 'invalid or failed row')} -> {failed}")
    return EXIT_OK


@cli.command()
@_earlier_ledger
@click.option(
    "--runs",
    default=10,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="How many recent runs to list.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(ledger: Path, runs: int, as_json: bool) -> int:
    """Recent runs with their counts, rows pending or in flight, the most common errors.

    \b
    Example:
      consent-import status --ledger legacy.db
    """
    import json

    from importer.reports._status import status as ledger_status

    info = ledger_status(ledger, runs=runs)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return EXIT_OK
    states = ", ".join(f"{k} {v:,}" for k, v in sorted(info["rows_by_state"].items())) or "none"
    click.echo(
        f"Ledger {ledger}: rows {states}; in flight (outcome unknown): {info['in_flight']:,}; "
        f"settling (waiting for a lookup): {info['settling']:,}"
    )
    for run_info in info["runs"]:
        summary = run_info["summary"] or {}
        counts = " ".join(
            f"{k}={summary[k]}"
            for k in ("rows", "created", "updated", "unchanged", "invalid", "failed")
            if k in summary
        )
        undone = f" ({run_info['undo']})" if run_info.get("undo") else ""
        counts += "".join(
            f" {k}={run_info[k]}"
            for k in ("adopted", "revoked", "paused")
            if run_info[k] is not None
        )
        code = run_info["exit_code"]
        if "error" in summary:  # stopped before it began: why, in its one line
            counts = summary["error"]
        click.echo(
            f"  run {run_info['id']:>4} {run_info['started_at']} {run_info['status']:<8} "
            f"exit {'-' if code is None else code}  {counts}".rstrip()
            + undone
        )
    for title, counts in (
        ("Source systems", info["systems"]),
        ("Source files", info["source_files"]),
    ):
        if counts and set(counts) != {"(none)"}:
            click.echo(f"{title}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if info["top_errors"]:
        click.echo("Most common errors:")
        for code, count in info["top_errors"].items():
            click.echo(f"  {code:<24} {count:>8,}")
    return EXIT_OK


@cli.command()
@_earlier_ledger
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    metavar="N",
    help="Read back N consents picked at random instead of all of them.",
)
@click.option(
    "--report",
    "reports",
    multiple=True,
    metavar="PATH",
    help="Write the findings: .json, .csv or .html (they may hold patient ids: kept "
    "owner-only). Repeatable.",
)
@_base_url
@_api_key
@_concurrency
@_timeout
@_max_attempts
@_max_wait
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def verify(
    ledger: Path,
    sample: int | None,
    reports: Sequence[str],
    base_url: str,
    api_key: str | None,
    concurrency: int,
    timeout_s: float,
    max_attempts: int,
    max_wait_s: float | None,
    quiet: bool,
) -> int:
    """Read back what the ledger says was created or updated; report what disagrees.

    Reports `missing` (the server lacks it), `differs` (fields differ from what was
    sent), `duplicate` (another matching consent no ledger row claims) and rows whose
    outcome is unknown. Reads only: it never writes to the server or the ledger. Exit 0
    all agree, 1 something reported, 2 usage or configuration error, 3 stopped early.

    \b
    Example:
      consent-import verify --ledger legacy.db --report verify.html
    """
    from importer.commands._verify import (
        VerifyConfig,
        check_verify_report_paths,
        summary_lines,
        write_reports,
    )
    from importer.commands._verify import verify as do_verify

    paths = check_verify_report_paths(reports, ledger)
    config = VerifyConfig(
        ledger=ledger,
        base_url=base_url,
        api_key=api_key,
        sample=sample,
        concurrency=concurrency,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        max_wait_s=max_wait_s,
    )
    result = do_verify(
        config,
        on_wait=None if quiet else _echo_wait,
        on_plan=None if quiet else _echo_plan,
    )
    write_reports(paths, result)
    if not quiet:
        for line in summary_lines(result, ledger):
            click.echo(line)
    return result.exit_code


@cli.command()
@_earlier_ledger
@click.option(
    "--run",
    "run_id",
    required=True,
    type=click.IntRange(min=1),
    metavar="N",
    help="The run to take back (its id as `status` lists it).",
)
@click.option(
    "--dry-run", is_flag=True, help="Read only: list what undo would do, by file and row."
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="PATH.json",
    help="Write every row with what undo did (source keys, consent ids: kept owner-only).",
)
@_base_url
@_api_key
@_concurrency
@_timeout
@_max_attempts
@_max_wait
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def undo(
    ledger: Path,
    run_id: int,
    dry_run: bool,
    report: Path | None,
    base_url: str,
    api_key: str | None,
    concurrency: int,
    timeout_s: float,
    max_attempts: int,
    max_wait_s: float | None,
    quiet: bool,
) -> int:
    """Take a run back: delete the consents it created, put back what it patched or
    revoked, and the ledger's rows as they were before it.

    A consent changed on the server since the run, or a row a later run touched, is left
    as it is and listed. Exit 0 all undone, 1 some rows left, 2 usage or configuration
    error (no such run, a run made before undo existed), 3 stopped early (run it again
    to finish).

    \b
    Example:
      consent-import undo --ledger legacy.db --run 7 --dry-run
    """
    from importer.commands._undo import (
        UndoConfig,
        check_report_path,
        row_lines,
        summary_lines,
        write_report,
    )
    from importer.commands._undo import undo as do_undo

    check_report_path(report)
    config = UndoConfig(
        ledger=ledger,
        run_id=run_id,
        base_url=base_url,
        api_key=api_key,
        dry_run=dry_run,
        concurrency=concurrency,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        max_wait_s=max_wait_s,
    )
    result = do_undo(config, on_wait=None if quiet else _echo_wait)
    if report is not None:
        write_report(report, result)
    if not quiet:
        for line in [*row_lines(result), *summary_lines(result)]:
            click.echo(line)
    return result.exit_code


def _echo_wait(seconds: float, reason: str) -> None:
    click.echo(f"waiting: {reason}", err=True)


def _echo_plan(plan: ReadPlan) -> None:
    consents = sum(len(rows) for rows in plan.searches.values()) + len(plan.gets)
    click.echo(
        f"Reading back {consents:,} consents: {len(plan.searches):,} patient searches, "
        f"{len(plan.gets):,} reads by id",
        err=True,
    )


# --- version-2 mapping helpers (issue 14): preview and init -------------------------------


# The commands beside the import live in their own module; here they join the group.
for _command in (demo, sandbox, preview, init):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run a command, map every failure to one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    json_logs = _wants_json_logs(args)
    try:
        code = cli.main(args=args, prog_name="consent-import", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # Ctrl-C outside a run's own signal handling (reading, the preflight): nothing sent.
        code = _fail("interrupted", "aborted", EXIT_ABORTED, json_logs)
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            message += f" (see {exc.ctx.command_path} --help)"
        code = _fail(message, "usage", EXIT_CONFIG, json_logs)
    except ConsentImportError as exc:
        _debug_traceback()
        kind = "aborted" if isinstance(exc, AbortError) else "config"
        if isinstance(exc, ResourceError):
            kind = "resource"
        elif exc.exit_code not in (EXIT_CONFIG, EXIT_ABORTED):
            kind = "error"
        code = _fail(str(exc), kind, exc.exit_code, json_logs)
    except Exception as exc:
        _debug_traceback()  # CONSENT_IMPORT_DEBUG changes what is said, never the exit code
        resource = resource_error(
            exc, "(path not known)", started=False, what="file", then="fix that and run again"
        )
        if resource is not None:  # a full disk or the like outside a run: not a bug
            code = _fail(str(resource), "resource", resource.exit_code, json_logs)
        else:
            # The message of an unexpected error may quote a cell, so only its type is shown.
            message = (
                f"internal error ({type(exc).__name__}); rerun with CONSENT_IMPORT_DEBUG=1 "
                "for details and please report it"
            )
            code = _fail(message, "internal", EXIT_INTERNAL, json_logs)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _debug_traceback() -> None:
    """With CONSENT_IMPORT_DEBUG set, the traceback of the error being handled (it may
    quote a cell: for the user's own terminal only)."""
    if os.environ.get("CONSENT_IMPORT_DEBUG"):
        import traceback

        traceback.print_exc(file=sys.stderr)


def _wants_json_logs(args: list[str]) -> bool:
    """Whether the command line asks for JSON logs, read before click parses it, so that
    even a usage error is a JSON line."""
    for i, arg in enumerate(args):
        given = arg.removeprefix("--log-format=") if arg.startswith("--log-format=") else None
        if given == "json" or (arg == "--log-format" and args[i + 1 : i + 2] == ["json"]):
            return True
    return False


def _fail(message: str, kind: str, code: int, json_logs: bool) -> int:
    """Say why the command failed, in one line on stderr (a JSON object with JSON logs)."""
    if json_logs:
        from importer.reports._console import JsonFormatter

        record = logging.LogRecord("importer.cli", logging.ERROR, "", 0, message, None, None)
        record.fields = {"event": "error", "kind": kind, "exit_code": code}
        click.echo(JsonFormatter().format(record), err=True)
    else:
        click.echo(f"consent-import: error: {message}", err=True)
    return code
