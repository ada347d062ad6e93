"""Suspect duplicates: two live consents of one patient, scope and categories whose
date-times look like one signature read two ways.

Times a whole number of hours apart (1 to 14: any zone's offset from another) are what a
naive time read in two zones gives; times on the same day are what a date read with two
formats, or a date alone and a date-time, give. An exact match is a `duplicate`, not a
suspect. `verify` reports them (`suspect_duplicate`); it never decides which is right.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from importer.ledger._schema import DoneConsent

#: The largest gap between two zones' readings of one naive time, in hours.
MAX_HOURS = 14
#: A retired consent (a revoke, a recreate's old one) is no longer live.
_RETIRED = "inactive"


def suspicion(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Why two consents look like one signature read two ways (None: they do not)."""
    if a.get("patientId") != b.get("patientId") or a.get("scope") != b.get("scope"):
        return None
    if _categories(a) != _categories(b) or not _live(a) or not _live(b):
        return None
    first, second = _when(a), _when(b)
    if first is None or second is None or first == second:
        return None
    gap = abs(first - second)
    hours, rest = divmod(gap, timedelta(hours=1))
    if not rest and 1 <= hours <= MAX_HOURS:
        return f"same patient, scope and categories, {hours} h apart (a time zone read twice?)"
    if first.date() == second.astimezone(first.tzinfo).date():
        return "same patient, scope and categories, on the same day (a date read twice?)"
    return None


def suspects(
    rows: Sequence[DoneConsent],
    seen: Mapping[str, dict[str, Any]],
    others: Sequence[dict[str, Any]],
) -> Iterator[tuple[DoneConsent, str, str]]:
    """(our row, the other consent's id, why) for each suspect pair of a patient's
    consents in which ours is one (each pair once)."""
    ours = [(row, seen[row.consent_id]) for row in rows if row.consent_id in seen]
    for at, (row, consent) in enumerate(ours):
        candidates = [c for _, c in ours[at + 1 :]] + list(others)
        for other in candidates:
            why = suspicion(consent, other)
            if why is not None:
                yield row, str(other.get("id")), why


def _categories(consent: dict[str, Any]) -> frozenset[str]:
    value = consent.get("category")
    items = value if isinstance(value, list) else [value]
    return frozenset(str(item) for item in items if item)


def _live(consent: dict[str, Any]) -> bool:
    return bool(consent.get("status", "active") != _RETIRED)


def _when(consent: dict[str, Any]) -> datetime | None:
    text = consent.get("dateTime")
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None
