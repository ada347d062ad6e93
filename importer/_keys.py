"""Source keys: what makes a row the same row across runs.

A row's key is, in order: the mapping's `[source] key` columns, else its `sourceKey`
column, else its consent's natural identity (patientId, scope, the set of categories,
dateTime: the fields a lookup matches on), so an edit of a patchable field (status,
policy, verification, provision) is a PATCH of the same consent, not a second one.
A `[source] system` namespaces keys in the ledger, so two systems' keys never meet.

A ledger made since source keys (its `key_scheme` is "source") keys a row without a key
column by the *source cells* that feed those identity fields instead, before any mapping
(`source_key`): the raw patient cell, scope cell, category cells and date-time cell text.
A fix of the mapping (the time zone, a date format, a value map, a crosswalk entry) then
leaves every row's key as it was: the rerun compares bodies, PATCHes what it can, and
treats a changed patientId, scope, category or dateTime as an immutable change. Ledgers
made with natural keys keep them ("natural"), so their rows are never created again.

A row with none of these usable (an empty key cell; a patientId, scope, category or
dateTime too broken to name its consent) gets a key made from its cells: unique within
the run, but not stable across runs, so its ledger row cannot be found.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

#: Separates a source system's name from the key in the ledger's `source_key`: a control
#: character, which no trimmed cell of an export holds, so namespaced keys never collide
#: with plain ones.
SYSTEM_SEPARATOR = "\x1f"
#: The prefix of natural keys; content-hash keys (ledgers made before) are "sha256:".
NATURAL_PREFIX = "nk:"
#: The prefix of source-cell keys (`source_key`).
SOURCE_PREFIX = "sk:"
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


def source_key(patient: str, scope: str, category: str, when: str) -> str:
    """A row's identity from the source cells feeding patientId, scope, category and
    dateTime, as read (trimmed, nulls blank; several columns joined by U+001F): the scope
    and category case-folded, as value maps read them, the category's codes as a set."""
    codes = {code.strip().casefold() for code in _CODES.split(category)} - {""}
    text = "\x1e".join((patient, scope.casefold(), "\x1f".join(sorted(codes)), _instant(when)))
    return SOURCE_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:32]


_CODES = re.compile(r"[;|\x1f]")


@lru_cache(maxsize=65536)
def _instant(text: str) -> str:
    """A date-time cell as identity: one stating its offset (ISO 8601) as its instant,
    which no mapping changes (the same moment in any zone is one key); any other cell as
    written, before the zone and formats that a mapping fix may change read it."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return text
    return text if value.tzinfo is None else value.astimezone(UTC).isoformat()


#: The API fields a natural key pins: a row whose key matches holds the same values,
#: however written (categories in another order, the instant in another zone).
NATURAL_FIELDS = frozenset({"patientId", "scope", "category", "dateTime"})


def pinned_fields(ledger_key: str) -> frozenset[str]:
    """The fields whose equality the key itself guarantees."""
    return NATURAL_FIELDS if split_key(ledger_key)[1].startswith(NATURAL_PREFIX) else frozenset()
