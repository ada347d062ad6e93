"""What a run reads its rows with, and what the ledger says about it: the key scheme and
the rule for naive date-times an older ledger keeps, and the mapping's fingerprint.

A run notes digests of its mapping and of its crosswalk's contents in the ledger
(`run_mappings`); one whose digests differ from the last run's says so, with how many
rows it changed. Digests only: the crosswalk holds patient ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

from importer._results import RunStats
from importer.intake._mapping import Mapping
from importer.intake._normalize import Normalizer
from importer.ledger._ledger import Ledger, last_mapping, record_mapping

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


def read_with(stats: RunStats, normalizer: Normalizer, changed: str) -> None:
    """Note in a run's stats how its rows were keyed and whether the mapping changed;
    say (once a run) that naive times were read as UTC, as this older ledger's runs did."""
    stats.source_key, stats.mapping_changed = normalizer.key_kind, changed
    if normalizer.read_naive_as_utc():
        log.warning(
            "date-times without a UTC offset were read as UTC, as this ledger's earlier runs "
            'did (the mapping states no [source] timezone); state it: timezone = "UTC" keeps '
            "these instants, another zone moves them (--on-immutable-change recreate)"
        )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]
