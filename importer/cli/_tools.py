"""The commands beside the import: `demo`, `sandbox`, `preview` and `init`."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

import click

from importer._errors import UsageError
from importer.cli._params import (
    _MILLIS,
    _PORT,
    _SHARE,
    EXIT_OK,
    EXIT_ROWS,
    _inputs,
    _mapping,
    _parse_rate_limit,
)
from importer.reports._console import plain_console


@click.command()
@click.option(
    "--samples",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("sample_data"),
    show_default=True,
    help="The sample exports and their mapping files.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("out"),
    show_default=True,
    help="Where the ledgers and CSV exports go.",
)
def demo(samples: Path, out: Path) -> int:
    """Import sample_data/ into a built-in sandbox (rate limit, faults), end to end.

    Exit 0 when every valid row was created exactly once (the samples' invalid rows
    are there on purpose, to show row errors).

    \b
    Example:
      consent-import demo --out out
    """
    from importer.commands._demo import run_demo

    return run_demo(samples, out, click.echo)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=8800, show_default=True, type=_PORT, help="Port to listen on (0: any free)."
)
@click.option(
    "--rate-limit",
    metavar="N[/SECONDS]",
    help="Fixed-window rate limit, e.g. 500/3600 (ClinikAPI's documented example); "
    "N alone is per 60 s.",
)
@click.option("--latency-ms", default=0.0, type=_MILLIS, help="Latency added to every request.")
@click.option("--jitter-ms", default=0.0, type=_MILLIS, help="Random extra latency, up to this.")
@click.option(
    "--fault-rate",
    default=0.0,
    type=_SHARE,
    help="Probability of a fault, spread evenly over the four fault modes.",
)
@click.option(
    "--late-rate",
    default=0.0,
    type=_SHARE,
    help="Probability that a write answers 502/504 at once and is stored --late-ms later.",
)
@click.option(
    "--late-ms",
    default=4000.0,
    show_default=True,
    type=_MILLIS,
    help="How long after its 502/504 a --late-rate write is stored.",
)
@click.option(
    "--search-lag-rate",
    default=1.0,
    show_default=True,
    type=_SHARE,
    help="Share of new consents that search sees only --search-lag-ms later.",
)
@click.option(
    "--search-lag-ms",
    default=0.0,
    type=_MILLIS,
    help="How far search lags behind the store (GET by id sees a consent at once).",
)
@click.option("--seed", type=int, help="Seed for latency jitter and fault draws.")
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="The server's log level.",
)
def sandbox(
    host: str,
    port: int,
    rate_limit: str | None,
    latency_ms: float,
    jitter_ms: float,
    fault_rate: float,
    late_rate: float,
    late_ms: float,
    search_lag_rate: float,
    search_lag_ms: float,
    seed: int | None,
    access_log: bool,
    log_level: str,
) -> int:
    """Serve a local ClinikAPI-compatible API for demos and tests (Ctrl-C stops it).

    Faults: 503 before storing; store then 500; store then drop the connection;
    store then answer after a delay longer than a client's timeout; answer 502/504 at
    once and store later (--late-rate); search lagging behind the store (--search-lag-ms).
    `python -m importer.sandbox` is this same command.

    \b
    Example:
      consent-import sandbox --port 8800 --rate-limit 100/2 --fault-rate 0.05 --seed 1
    """
    from importer.sandbox import SandboxConfig, serve

    limit, window = _parse_rate_limit(rate_limit)
    try:
        config = SandboxConfig.with_fault_rate(
            fault_rate,
            rate_limit=limit,
            rate_window_s=window,
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            fault_late=late_rate,
            late_ms=late_ms,
            fault_search_lag=search_lag_rate,
            search_lag_ms=search_lag_ms,
            seed=seed,
        )
    except ValueError as exc:  # e.g. --fault-rate and --late-rate adding up past 1
        raise UsageError(f"sandbox: {exc}") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: the sandbox listens on {host}, beyond this machine", err=True)
    try:
        serve(config, host, port, access_log=access_log, log_level=log_level)
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return EXIT_OK


@click.command()
@_inputs
@_mapping
@click.option(
    "--rows",
    "count",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many rows to show, from the top.",
)
@click.option(
    "--row",
    "number",
    type=click.IntRange(min=0),  # 0: a FHIR Bundle's first entry
    help="Show this spreadsheet row (a FHIR Bundle's entry index, an NDJSON line).",
)
def preview(inputs: Sequence[Path], mapping: Path | None, count: int, number: int | None) -> int:
    """Print the exact JSON body (or bodies) `run` would send for a few rows, or their
    errors. Reads only; never calls the API. Exit as `validate`.

    \b
    Example:
      consent-import preview export.csv --mapping mapping.toml --row 12
    """
    from importer.commands._preview import preview_rows, render
    from importer.intake._mapping import load_mapping

    shown = preview_rows(inputs, load_mapping(mapping), rows=count, row=number)
    out = plain_console()
    for line in render(shown):
        out.print(line, markup=False)
    return EXIT_ROWS if shown.invalid or shown.missing else EXIT_OK


@click.command()
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("mapping.toml"),
    show_default=True,
    help="Where to write the mapping (never overwritten).",
)
def init(source: Path, output: Path) -> int:
    """Write a starting mapping for an export: how to read it, its recognised columns,
    the values to translate. Edit it, then `preview` and `validate` with it.

    \b
    Example:
      consent-import init export.csv --output mapping.toml
    """
    from importer.commands._init import init_mapping

    draft = init_mapping(source, output)
    click.echo(
        f"Wrote {output}: {len(draft.columns)} columns placed, {len(draft.others)} left as "
        f"comments, {draft.todos} lines marked TODO. Next: edit it, "
        f"then consent-import preview {source} --mapping {output}"
    )
    if draft.notes:
        click.echo("Guessed (each marked in the file; check them):")
    for note in draft.notes:
        click.echo(f"  {note}")
    return EXIT_OK
