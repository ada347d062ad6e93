"""`export --failed FILE.ndjson`: the failed FHIR resources back as NDJSON, to fix and feed.

Each line is the resource as it was read, with its errors as `meta.tag` codings of the
system `importer.intake._fhir.ERROR_TAG_SYSTEM` (code: the rule; display: stage and
message). `meta` is bookkeeping to the FHIR reader, so a fixed file feeds back unchanged;
and a file whose first resource carries such a tag reads as a correction file, which never
revokes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from importer.intake._fhir import ERROR_TAG_SYSTEM, RESOURCE_COLUMN
from importer.reports._outputs import atomic_writer

__all__ = ["export_failed_ndjson"]

log = logging.getLogger("importer.export")


def export_failed_ndjson(
    rows: Iterable[tuple[dict[str, Any], list[tuple[str, Any]]]], path: Path
) -> int:
    """Write every invalid or failed FHIR resource to `path` (0600), given the ledger's
    failed source rows (cells, consents); rows read from CSV or Excel files are left for
    `--failed FILE.csv`, and said so."""
    written = other = 0
    with atomic_writer(path) as handle:
        for cells, consents in rows:
            if set(cells) != {RESOURCE_COLUMN}:
                other += 1
                continue
            try:
                resource = json.loads(cells[RESOURCE_COLUMN])
            except json.JSONDecodeError:
                resource = None
            if not isinstance(resource, dict):
                # A line that was not JSON: given back as it was, to fix by hand.
                handle.write(str(cells[RESOURCE_COLUMN]).replace("\n", " ") + "\n")
                written += 1
                continue
            _tag(resource, [row for _, row in consents])
            handle.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n")
            written += 1
    if other:
        log.warning(
            "%d invalid or failed row(s) came from CSV or Excel files and are not in %s; "
            "export them with --failed FILE.csv",
            other,
            path,
        )
    return written


def _tag(resource: dict[str, Any], rows: list[Any]) -> None:
    """Replace the resource's error tags with this ledger's errors of it."""
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        meta = resource["meta"] = {}
    tags = meta.get("tag")
    kept = [
        t
        for t in (tags if isinstance(tags, list) else [])
        if not (isinstance(t, dict) and t.get("system") == ERROR_TAG_SYSTEM)
    ]
    for row in rows:
        kept.append(
            {
                "system": ERROR_TAG_SYSTEM,
                "code": str(row["error_code"] or "failed"),
                "display": f"{row['error_stage'] or ''}: {row['error_message'] or ''}".strip(": "),
            }
        )
    meta["tag"] = kept
