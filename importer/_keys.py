"""Source keys: what makes a row the same row across runs.

A row's key is, in order: the mapping's `[source] key` columns, else its `sourceKey`
column, else its consent's natural identity (patientId, scope, the set of categories,
dateTime: the fields a lookup matches on), so an edit of a patchable field (status,
policy, verification, provision) is a PATCH of the same consent, not a second one.
A `[source] system` namespaces keys in the ledger, so two systems' keys never meet.

A row with none of these usable (an empty key cell; a patientId, scope, category or
dateTime too broken to name its consent) gets a key made from its cells: unique within
the run, but not stable across runs, so its ledger row cannot be found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

#: Separates a source system's name from the key in the ledger's `source_key`: a control
#: character, which no trimmed cell of an export holds, so namespaced keys never collide
#: with plain ones.
SYSTEM_SEPARATOR = "\x1f"
#: The prefix of natural keys; content-hash keys (ledgers made before) are "sha256:".
NATURAL_PREFIX = "nk:"
#: The prefix of keys made from an invalid row's cells: not stable across runs, so such
#: a row may stand for any row of the ledger (one `--revoke-missing` thinks gone).
CELLS_PREFIX = "cells:"


def namespaced(system: str | None, key: str) -> str:
    """The ledger key of a source key of `system` (the key itself without a system)."""
    return key if system is None else f"{system}{SYSTEM_SEPARATOR}{key}"


def split_key(ledger_key: str) -> tuple[str | None, str]:
    """(system or None, the source key as the file gives it)."""
    system, sep, key = ledger_key.partition(SYSTEM_SEPARATOR)
    return (system, key) if sep else (None, ledger_key)


@dataclass
class KeyTally:
    """Invalid rows read so far without a stable key: the normalizer counts them as it
    reads, and `--revoke-missing` reads the count once every row is read."""

    unstable: int = 0


def natural_key(patient: str, scope: str, categories: Iterable[str], when: datetime | None) -> str:
    """The natural identity of a consent: categories as a set (order and repeats do not
    matter), the date-time as an instant (the same moment in any zone is one key)."""
    instant = "" if when is None else when.astimezone(UTC).isoformat()
    text = "\x1e".join((patient, scope, "\x1f".join(sorted(set(categories))), instant))
    return NATURAL_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:32]


#: The API fields a natural key pins: a row whose key matches holds the same values,
#: however written (categories in another order, the instant in another zone).
NATURAL_FIELDS = frozenset({"patientId", "scope", "category", "dateTime"})


def pinned_fields(ledger_key: str) -> frozenset[str]:
    """The fields whose equality the key itself guarantees."""
    return NATURAL_FIELDS if split_key(ledger_key)[1].startswith(NATURAL_PREFIX) else frozenset()
