"""Finding the consent an earlier POST of a row may have created.

A search by patient and a day either side of the row's instant, matched on the fields
that identify a consent (patient, scope, categories, instant, policy), less the consents
other rows of the ledger already claim.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from importer.api._client import ClinikClient


async def find_consent(
    client: ClinikClient,
    body: dict[str, Any],
    claimed: Callable[[list[str]], Awaitable[set[str]]],
    *,
    own: str | None,
    replaced: Collection[str] = (),
) -> dict[str, Any] | None:
    """The server's consent that `body` would create, unless another row claims it.

    Args:
        claimed: which of these consent ids some row of the ledger holds.
        own: the consent id the ledger holds for this very row, if any (not a claim).
        replaced: consents a recreate of this row replaces: never the row's new one,
            though they may match it (the edit can be in a field the match leaves out).
    """
    date_from, date_to = search_window(body)
    found = await client.search_consents(
        patient_id=body["patientId"], date_from=date_from, date_to=date_to
    )
    matches = [c for c in found if matches_consent(c, body)]
    if not matches:
        return None
    taken = (await claimed([str(c["id"]) for c in matches]) - {own}) | set(replaced)
    for consent in matches:
        if str(consent["id"]) not in taken:
            return consent
    return None


def search_window(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """The search's dates: a day either side of the consent's date (the server's idea of
    "the date" may be another zone's); none without a date."""
    if "dateTime" not in body:
        return None, None
    day = datetime.fromisoformat(body["dateTime"]).astimezone(UTC).date()
    return (day - timedelta(days=1)).isoformat(), (day + timedelta(days=1)).isoformat()


def matches_consent(consent: dict[str, Any], body: dict[str, Any]) -> bool:
    """Is `consent` (from a search) the one `body` would create? Matched on the fields
    that identify a consent: patient, scope, categories, instant, policy."""
    if consent.get("patientId") != body.get("patientId") or consent.get("scope") != body.get(
        "scope"
    ):
        return False
    if _categories(consent.get("category")) != _categories(body.get("category")):
        return False
    if consent.get("policyUri") != body.get("policyUri"):
        return False
    mine, theirs = body.get("dateTime"), consent.get("dateTime")
    if mine is None or theirs is None:
        return mine is None and theirs is None
    try:
        return datetime.fromisoformat(str(theirs)) == datetime.fromisoformat(str(mine))
    except ValueError:
        return False


def _categories(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset([value])
    return frozenset(str(v) for v in value)
