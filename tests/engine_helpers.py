"""Helpers for the import tests: make exports, run imports against a sandbox."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from importer._options import RunOptions
from importer.engine._runner import RunConfig, RunResult, run_import
from importer.intake._mapping import load_mapping

KEY = "clk_test_0000testing1234"
HEADERS = ["sourceKey", "patientId", "scope", "category", "status", "dateTime", "policyUri"]


def consent_rows(n: int, *, start: int = 0, **overrides: str) -> Iterator[dict[str, str]]:
    for i in range(start, start + n):
        row = {
            "sourceKey": f"K{i:06d}",
            "patientId": f"pt_{i % 97:04d}",
            "scope": "treatment",
            "category": "treatment-consent",
            "status": "active",
            "dateTime": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
            "policyUri": "https://clinic.example/policy/v1",
        }
        row.update(overrides)
        yield row


def write_csv(path: Path, rows: list[dict[str, str]] | Iterator[dict[str, str]]) -> Path:
    rows = list(rows)
    headers = list(rows[0]) if rows else HEADERS
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, headers)
        writer.writeheader()
        writer.writerows(rows)
    return path


def run(
    source: Path | list[Path],
    base_url: str,
    ledger: Path,
    *,
    mapping: Path | None = None,
    api_key: str = KEY,
    handle_signals: bool = False,
    **options: Any,
) -> RunResult:
    # Today's tests of faults look up at once; the tests of --settle give it.
    options.setdefault("settle_s", 0.0)
    # The engine's tests count requests and spend budgets; the preflight's are in
    # tests/test_preflight.py.
    options.setdefault("preflight", False)
    config = RunConfig(
        inputs=source if isinstance(source, list) else [source],
        options=RunOptions(ledger=ledger, base_url=base_url, **options),
        api_key=api_key,
        handle_signals=handle_signals,
    )
    return run_import(config, load_mapping(mapping))


def ledger_ids(ledger: Path) -> dict[str, str]:
    from importer.ledger._ledger import Ledger

    db = Ledger.open_readonly(ledger)
    try:
        return {row["source_key"]: row["consent_id"] for row in db.created_rows()}
    finally:
        db.close()
