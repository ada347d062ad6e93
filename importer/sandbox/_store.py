"""The sandbox's consents, in creation order, with search and a duplicate count."""

from __future__ import annotations

import base64
import binascii
import math
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from importer.sandbox._validation import SearchQuery, parse_instant

Consent = dict[str, Any]
# patientId, scope, sorted categories, dateTime as a UTC instant (None when absent).
Fingerprint = tuple[object, object, tuple[str, ...], str | None]


class CursorError(ValueError):
    """A search cursor this store did not hand out."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a search; `next_cursor` is None on the last page."""

    consents: list[Consent]
    next_cursor: str | None


@dataclass(slots=True)
class _Entry:
    consent: Consent
    seq: int
    fingerprint: Fingerprint
    day: date | None  # the UTC date of dateTime, for dateFrom/dateTo
    searchable_at: float  # monotonic time from which search sees it (a lagging index)


class ConsentStore:
    """Consents by id; not thread-safe (the sandbox touches it only from its event loop)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget every consent."""
        self._entries: dict[str, _Entry] = {}
        # Patient id -> its consent ids in creation order (a dict as an ordered set).
        self._by_patient: dict[str, dict[str, None]] = {}
        self._fingerprints: Counter[Fingerprint] = Counter()
        self._seq = 0
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._entries)

    def create(self, body: dict[str, Any], searchable_at: float = 0.0) -> Consent:
        """Store a validated body under a new id; status defaults to `active`.

        GET by id sees it at once; search only from `searchable_at` (monotonic seconds).
        """
        consent_id = f"consent_{secrets.token_hex(12)}"
        consent: Consent = {"id": consent_id, **body}
        consent.setdefault("status", "active")
        self._seq += 1
        when = consent.get("dateTime")
        instant = parse_instant(when) if isinstance(when, str) else None
        fingerprint = _fingerprint(consent, instant)
        day = None if instant is None else instant.date()
        self._entries[consent_id] = _Entry(consent, self._seq, fingerprint, day, searchable_at)
        self._by_patient.setdefault(str(consent["patientId"]), {})[consent_id] = None
        if self._fingerprints[fingerprint]:
            self.duplicates += 1
        self._fingerprints[fingerprint] += 1
        return consent

    def get(self, consent_id: str) -> Consent | None:
        """The consent, or None when there is no such id."""
        entry = self._entries.get(consent_id)
        return None if entry is None else entry.consent

    def patch(self, consent_id: str, changes: dict[str, Any]) -> Consent | None:
        """Replace the given fields (a None value removes one); None when there is no such id.

        Only patchable fields reach here, none of them part of the duplicate fingerprint.
        """
        entry = self._entries.get(consent_id)
        if entry is None:
            return None
        # A new dict rather than an in-place edit: a snapshot handed out earlier stays valid.
        consent = dict(entry.consent)
        for key, value in changes.items():
            if value is None:
                consent.pop(key, None)
            else:
                consent[key] = value
        entry.consent = consent
        return consent

    def delete(self, consent_id: str) -> bool:
        """Remove the consent; False when there is no such id."""
        entry = self._entries.pop(consent_id, None)
        if entry is None:
            return False
        patient = str(entry.consent["patientId"])
        ids = self._by_patient[patient]
        del ids[consent_id]
        if not ids:
            del self._by_patient[patient]
        self._fingerprints[entry.fingerprint] -= 1
        if self._fingerprints[entry.fingerprint]:
            self.duplicates -= 1
        else:
            del self._fingerprints[entry.fingerprint]
        return True

    def all(self) -> list[Consent]:
        """Every consent in creation order."""
        return [entry.consent for entry in self._entries.values()]

    def search(self, query: SearchQuery, now: float = math.inf) -> Page:
        """The consents matching `query` and searchable at `now`, oldest first, a page at a time.

        Raises:
            CursorError: the cursor is not one this store handed out.
        """
        after = 0 if query.cursor is None else _decode_cursor(query.cursor)
        ids: Iterable[str] = (
            self._entries
            if query.patient_id is None
            else self._by_patient.get(query.patient_id, {})
        )
        found: list[Consent] = []
        last_seq = 0
        for consent_id in ids:
            entry = self._entries[consent_id]
            if entry.seq <= after or entry.searchable_at > now or not _matches(entry, query):
                continue
            if len(found) == query.count:
                # One more match exists, so the page gets a cursor.
                return Page(found, _encode_cursor(last_seq))
            found.append(entry.consent)
            last_seq = entry.seq
        return Page(found, None)


def _matches(entry: _Entry, query: SearchQuery) -> bool:
    if query.status is not None and entry.consent.get("status") != query.status:
        return False
    if query.date_from is None and query.date_to is None:
        return True
    # A consent without a dateTime has no date to be inside a range.
    if entry.day is None:
        return False
    if query.date_from is not None and entry.day < query.date_from:
        return False
    return query.date_to is None or entry.day <= query.date_to


def _fingerprint(consent: Consent, instant: datetime | None) -> Fingerprint:
    category = consent.get("category")
    categories = (category,) if isinstance(category, str) else tuple(sorted(category or ()))
    # Same instant, same consent, however the offset was written.
    stamp = instant.isoformat() if instant is not None else None
    return (consent.get("patientId"), consent.get("scope"), categories, stamp)


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise CursorError(cursor) from exc
    prefix, _, number = text.partition(":")
    if prefix != "after" or not number.isdigit():
        raise CursorError(cursor)
    return int(number)
