"""Exports and status from the ledger: created.csv, failed.csv, and `status`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from importer._errors import ConfigError, no_such_file
from importer._keys import split_key
from importer._results import ExportCounts
from importer.ledger._ledger import Ledger

CREATED_COLUMNS = (
    "source_file",
    "source_row",
    "source_key",
    "consent_id",
    "patient_id",
    "action",
    "request_id",
)
FAILED_EXTRA = ("error_stage", "error_code", "error_message", "http_status", "request_id")


def open_existing(path: Path) -> Ledger:
    if not path.is_file():
        raise ConfigError(no_such_file("ledger", path, "give the --ledger of a run"))
    return Ledger(path)


def export_csvs(ledger_path: Path, created: Path | None, failed: Path | None) -> ExportCounts:
    """Write created.csv and failed.csv (either may be None) from the ledger."""
    # Here, not at the top: `status` imports this module and needs neither (nor pandas,
    # which they bring).
    from importer.reports._outputs import check_export
    from importer.reports._report import SafeCsvWriter

    if not ledger_path.is_file():
        open_existing(ledger_path)  # says it is not there
    check_export(ledger_path, created=created, failed=failed)
    ledger = open_existing(ledger_path)
    counts = ExportCounts()
    try:
        if created is not None:
            with SafeCsvWriter(created, CREATED_COLUMNS) as writer:
                for row in ledger.created_rows():
                    cells = {c: row[c] for c in CREATED_COLUMNS}
                    cells["source_key"] = split_key(row["source_key"])[1]  # as the file has it
                    writer.write(cells)
                    counts.created += 1
        if failed is not None and failed.suffix.lower() == ".ndjson":
            from importer.reports._fhir_export import export_failed_ndjson  # FHIR resources back

            counts.failed = export_failed_ndjson(_failed_source_rows(ledger), failed)
        elif failed is not None:
            counts.failed = _export_failed(ledger, failed)
    finally:
        ledger.close()
    return counts


def _export_failed(ledger: Ledger, path: Path) -> int:
    from importer.reports._report import SafeCsvWriter, error_columns

    rows = _failed_source_rows(ledger)
    columns = error_columns((cells for cells, _ in rows), FAILED_EXTRA)
    with SafeCsvWriter(path, columns) as writer:
        for cells, consents in rows:
            writer.write({**cells, **_error_cells(consents)})
    return len(rows)


#: A `[[consents]]` key ending a ledger key (mapping.py allows these characters), and
#: the suffix an invalid `duplicate_row` repeat carries after it.
_CONSENT_SUFFIX = re.compile(r"#([A-Za-z0-9_.-]{1,40})(?:#duplicate@.*)?\Z", re.S)


def _failed_source_rows(ledger: Ledger) -> list[tuple[dict[str, Any], list[tuple[str, Any]]]]:
    """The source rows needing a person, each once with its failed consents: a
    `[[consents]]` row makes one ledger row per consent, all with the row's cells, and
    failed.csv must give the row back once or its fix reads as a `duplicate_row`."""
    grouped: dict[tuple[str, int, str], list[tuple[str, Any]]] = {}
    for row in ledger.rows_needing_a_person():
        if row["state"] == "settling":
            continue  # an ambiguous answer waiting for its lookup: not failed (yet)
        match = _CONSENT_SUFFIX.search(split_key(row["source_key"])[1])
        label = f"#{match[1]}" if match else ""
        where = (row["source_file"], row["source_row"], row["cells"] or "{}")
        grouped.setdefault(where, []).append((label, row))
    return [
        (json.loads(cells), sorted(consents, key=lambda c: c[0]))
        for (_, _, cells), consents in grouped.items()
    ]


def _error_cells(consents: list[tuple[str, Any]]) -> dict[str, Any]:
    """failed.csv's error columns; with consents, each value names its consent
    (`#hipaa: invalid_date; #research: unknown_patient`)."""
    if len(consents) == 1 and not consents[0][0]:
        return {name: consents[0][1][name] for name in FAILED_EXTRA}
    return {
        name: "; ".join(
            f"{label}: {row[name]}" if label else str(row[name])
            for label, row in consents
            if row[name] not in (None, "")
        )
        for name in FAILED_EXTRA
    }
