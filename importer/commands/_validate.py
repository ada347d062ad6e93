"""`validate`: read, map and validate files, and write the reports asked for (no ledger,
no server; `run --dry-run` is `importer.engine._dry_run`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from importer._results import ValidationSummary
from importer.intake._mapping import Mapping, open_tables
from importer.intake._normalize import Normalizer
from importer.reports import _outputs as outputs
from importer.reports._report import (
    SafeCsvWriter,
    check_report_paths,
    error_columns,
    row_error_cells,
    source_rows,
    write_json,
)
from importer.reports._values import (
    ValuesProfile,
    fhir_elements,
    fhir_id_warnings,
    profile_file,
)


def validate_files(
    inputs: Sequence[str | Path],
    mapping: Mapping,
    reports: Sequence[str] = (),
    *,
    redact: bool = False,
) -> ValidationSummary:
    """Validate every row of `inputs` and write `reports` (.json, .csv, .html)."""
    paths = check_report_paths(reports, redact=redact)
    outputs.check(
        [("--report", p) for p in paths],
        [*(("input", Path(p)) for p in inputs), *outputs.mapping_inputs(mapping)],
    )
    tables = open_tables(inputs, mapping)
    summary = ValidationSummary()
    csv_paths = [p for p in paths if p.suffix.lower() == ".csv"]
    writers = [SafeCsvWriter(p, error_columns(t.columns for t in tables)) for p in csv_paths]
    try:
        normalizer = Normalizer(mapping)
        profile = ValuesProfile()
        normalizer.on_file = lambda file_rows: profile_file(profile, file_rows).add
        for table in tables:
            for batch in normalizer.check(table):
                summary.add_batch(batch)
                for rows in source_rows(batch.invalid):
                    for writer in writers:
                        writer.write(row_error_cells(rows))
    except BaseException:
        for writer in writers:
            writer.discard()
        raise
    for writer in writers:
        writer.close()
    summary.values = profile.to_json() + fhir_elements(summary)
    summary.warnings += profile.warnings() + fhir_id_warnings(normalizer.fhir_ids)
    for path in paths:
        suffix = path.suffix.lower()
        if suffix == ".json":
            document = summary.to_json()
            if redact:
                document.pop("values", None)  # cell values: --redact leaves them out
            write_json(path, document)
        elif suffix == ".html":
            from importer.reports._html_report import write_validation_html

            write_validation_html(path, summary, redact=redact)
    return summary
