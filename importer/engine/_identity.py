"""What a run reads its rows with, and what the ledger says about it: the key scheme and
the rule for naive date-times an older ledger keeps, and the mapping's fingerprint.

A run notes digests of its mapping and of its crosswalk's contents in the ledger
(`run_mappings`); one whose digests differ from the last run's says so, with how many
rows it changed. Digests only: the crosswalk holds patient ids.

It notes too which headers fed each identity field (`run_identity`): rows keyed by their
identity cells get new keys when those columns change (a dateTime read from a date
column, then from the date and a time column), so a run that would create rows then
stops before the first create unless told `--identity-changed accept`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

from importer.intake._fhir import FhirTable
from importer.intake._mapping import Mapping
from importer.intake._normalize import Normalizer
from importer.intake._reader import Table
from importer.ledger._ledger import (
    Ledger,
    last_identity,
    last_mapping,
    record_identity,
    record_mapping,
)

log = logging.getLogger("importer.run")


def read_as_the_ledger_did(normalizer: Normalizer, ledger: Ledger) -> None:
    """Key rows and read naive date-times as the ledger's earlier runs did."""
    normalizer.content_keys = ledger.key_scheme == "content"
    normalizer.natural_keys = ledger.key_scheme == "natural"
    normalizer.naive_utc = ledger.naive_times == "utc"


def fingerprints(mapping: Mapping) -> tuple[str, str]:
    """(mapping digest, crosswalk digest): what reads the rows, without the file's path
    (moving it changes nothing) and without comments or layout (the parsed mapping)."""
    bare = dataclasses.replace(mapping, path=None, crosswalk=None, crosswalk_path=None)
    crosswalk = sorted((mapping.crosswalk or {}).items())
    return _digest(repr(bare)), _digest(repr(crosswalk))


def note_mapping(ledger: Ledger, run_id: int, mapping: Mapping) -> str:
    """Record run `run_id`'s fingerprints; what changed since the last run that noted
    its own ("mapping", "crosswalk", "mapping and crosswalk"; "" for nothing, or for a
    first run)."""
    now = fingerprints(mapping)
    last = last_mapping(ledger, before=run_id)
    record_mapping(ledger, run_id, *now)
    if last is None:
        return ""
    changed = [n for n, a, b in zip(("mapping", "crosswalk"), last[1:], now, strict=True) if a != b]
    return " and ".join(changed)


#: The identity fields, whose source cells key a row without a key column.
IDENTITY_FIELDS = ("patientId", "scope", "category", "dateTime")


def identity_headers(mapping: Mapping, tables: list[Table]) -> dict[str, list[str]]:
    """{identity field: the headers feeding it} over the run's files: a version 2 spec's
    columns (a `[[consents]]` table's too), else the column the mapping resolves for the
    field; none for a constant or a default. FHIR input has no columns."""
    fed: dict[str, set[str]] = {name: set() for name in IDENTITY_FIELDS}
    specs = [*mapping.fields.values(), *(s for c in mapping.consents for s in c.fields.values())]
    by_spec = {spec.path.plain for spec in specs} & set(IDENTITY_FIELDS)
    for spec in specs:
        if spec.path.plain in fed:
            fed[spec.path.plain] |= {header for _, header in spec.named_headers()}
    for table in tables:
        if isinstance(table, FhirTable):
            continue
        columns = mapping.resolve(table.columns, table.label)
        for name in IDENTITY_FIELDS:
            if name not in by_spec and name in columns:
                fed[name].add(columns[name])
    return {name: sorted(headers) for name, headers in fed.items()}


def note_identity(ledger: Ledger, run_id: int, now: dict[str, list[str]]) -> str:
    """Record run `run_id`'s identity headers; "" if they are those of the last run
    that was neither refused nor undone (or there is none), else why a run that would
    create rows stops: the fields whose columns changed, and the ways on."""
    last = last_identity(ledger, before=run_id)
    record_identity(ledger, run_id, now)
    if last is None:
        return ""
    before, then = last
    changed = [n for n in IDENTITY_FIELDS if sorted(then.get(n, [])) != now.get(n, [])]
    if not changed:
        return ""
    fields = " and ".join(changed)
    which = "; ".join(
        f"{n}: {_columns(then.get(n, []))} then, {_columns(now.get(n, []))} now" for n in changed
    )
    return (
        f"the columns feeding {fields} changed since run {before} ({which}): rows without a "
        "key column are known by those cells, so this run's rows have new keys and would "
        "be created as second consents beside the ones already made; nothing was created. "
        "Revert the mapping's " + fields + " to the columns it had, or rerun with "
        "--identity-changed accept to create them as new consents (the old ones then go "
        "missing from the source: --revoke-missing revokes them)"
    )


def _columns(headers: list[str]) -> str:
    if not headers:
        return "no column"
    return " + ".join(f"'{h}'" for h in headers)


def read_with(normalizer: Normalizer) -> None:
    """Say (once a run) that naive times were read as UTC, as this older ledger's runs
    did."""
    if normalizer.read_naive_as_utc():
        log.warning(
            "date-times without a UTC offset were read as UTC, as this ledger's earlier runs "
            'did (the mapping states no [source] timezone); state it: timezone = "UTC" keeps '
            "these instants, another zone moves them (--on-immutable-change recreate)"
        )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]
