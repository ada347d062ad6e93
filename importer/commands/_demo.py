"""The README's main job: import sample_data/ into an in-process sandbox, end to end.

The sandbox has a modest rate limit and a few faults of every kind, so the demo shows
retries, lookups after lost answers, and a ledger that still holds each consent once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from importer._options import RunOptions
from importer.engine._runner import RunConfig, RunResult, run_import
from importer.intake._mapping import load_mapping
from importer.reports._console import plural
from importer.reports._export import export_csvs

DEMO_KEY = "clk_test_demo0000sandbox"


@dataclass(frozen=True)
class SampleSet:
    name: str
    inputs: tuple[str, ...]
    mapping: str | None
    failed: str = "failed.csv"  # what `export --failed` writes: FHIR resources go as NDJSON


SAMPLES = (
    SampleSet("clean", ("consents.csv",), None),
    SampleSet("legacy_ehr", ("legacy_ehr/consents_export.csv",), "legacy_ehr/mapping.toml"),
    SampleSet("workbook", ("clinic_consents.xlsx",), "clinic_consents.toml"),
    SampleSet("registry", ("registry/registry_export.csv",), "registry/mapping.toml"),
    SampleSet(
        "fhir",
        ("fhir/consent_manager_bundle.json", "fhir/bulk_export.ndjson"),
        "fhir/mapping.toml",
        "failed.ndjson",
    ),
)


def run_demo(samples: Path, out: Path, echo: Callable[[str], None]) -> int:
    """Run every sample set twice; 0 when every valid row was created exactly once.

    The samples' invalid rows are expected (they show the row errors), so they do not
    make the demo fail; a failed row, an aborted run or a duplicate does.
    """
    from importer.sandbox import SandboxConfig, running_sandbox

    out.mkdir(parents=True, exist_ok=True)
    config = SandboxConfig.with_fault_rate(
        0.08,
        rate_limit=40,
        rate_window_s=2.0,
        latency_ms=10,
        jitter_ms=10,
        seed=7,
        slow_delay_s=3.0,
    )
    worst = 0
    with running_sandbox(config) as sandbox:
        echo(
            f"Sandbox at {sandbox.base_url}: 40 requests / 2 s, 8% faults (503, 500 after "
            "storing, dropped connections, answers slower than the 1.5 s timeout)"
        )
        for sample in SAMPLES:
            ledger = out / f"{sample.name}.db"
            # A new sandbox starts empty: the demo's ledgers start empty with it.
            for stale in out.glob(f"{sample.name}.db*"):
                stale.unlink()
            result = _import(sample, samples, ledger, sandbox.base_url)
            stats = result.stats
            echo(
                f"{sample.name:<11} {stats.rows:>3} rows: {stats.created} created "
                f"({stats.adopted} adopted after a lookup), {stats.unchanged} unchanged, "
                f"{stats.invalid} invalid, {stats.failed} failed"
                f"{f', {stats.skipped} skipped' if stats.skipped else ''}; "
                f"{stats.requests} requests, "
                f"{stats.retries} retries, {stats.rate_limited} rate-limited"
            )
            failed = f"{sample.name}-{sample.failed}"
            counts = export_csvs(ledger, out / f"{sample.name}-created.csv", out / failed)
            echo(
                f"{'':<11} ledger {ledger}; {counts.created} -> {sample.name}-created.csv, "
                f"{counts.failed} -> {failed}"
            )
            if stats.failed or stats.aborted:
                worst = 1
            again = _import(sample, samples, ledger, sandbox.base_url).stats
            echo(
                f"{'':<11} rerun: {again.unchanged} unchanged, {again.created} created, "
                f"{plural(again.requests, 'request')}"
            )
        server = sandbox.stats()
        echo(
            f"Sandbox holds {server['consents']} consents; duplicates: {server['duplicates']}; "
            f"faults injected: {sum(server['faults'].values())}"
        )
        if server["duplicates"]:
            worst = 1
    return worst


def _import(sample: SampleSet, samples: Path, ledger: Path, base_url: str) -> RunResult:
    mapping = load_mapping(samples / sample.mapping if sample.mapping else None)
    options = RunOptions(
        ledger=ledger, base_url=base_url, concurrency=8, timeout_s=1.5, settle_s=1.0
    )
    config = RunConfig([samples / name for name in sample.inputs], options, api_key=DEMO_KEY)
    return run_import(config, mapping)
