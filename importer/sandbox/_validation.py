"""The consent schema, written from clinikapi.md alone.

Kept apart from the importer's own models on purpose: if both read the documentation
the same wrong way, a shared module would hide the bug from every test.

Every check returns diagnostics shaped `field.path: rule`. They name fields and rules,
never the value that broke them, because values can be protected health information.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

SCOPES = ("patient-privacy", "treatment", "research", "adr")
STATUSES = ("draft", "proposed", "active", "rejected", "inactive")
PROVISION_TYPES = ("permit", "deny")
REQUIRED = ("patientId", "scope", "category")
PATCHABLE = ("status", "policyUri", "verification", "provision")
MAX_COUNT = 100
DEFAULT_COUNT = 20
# Nested `provision` exceptions deeper than this are refused rather than recursed into.
MAX_PROVISION_DEPTH = 8

_INSTANT = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})", re.ASCII
)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}", re.ASCII)

Check = Callable[[object, str, list[str]], None]


# --- dates -------------------------------------------------------------------------


def parse_instant(text: str) -> datetime | None:
    """An ISO 8601 date-time with an offset (`…Z` or `…+02:00`) as UTC, else None."""
    if not _INSTANT.fullmatch(text):
        return None
    # fromisoformat stops at microseconds; nanosecond digits carry no meaning here.
    main, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{main}.{rest[: min(digits, 6)].ljust(6, '0')}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:  # e.g. month 13, hour 24
        return None


def parse_date(text: str) -> date | None:
    """A calendar date `YYYY-MM-DD`, else None."""
    if not _DATE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _date_or_instant(text: str) -> date | datetime | None:
    return parse_date(text) or parse_instant(text)


# --- building blocks -----------------------------------------------------------------


def _name(key: object) -> str:
    """A client-supplied key fit for a diagnostic (odd keys could be values pasted in)."""
    return key if isinstance(key, str) and _FIELD_NAME.fullmatch(key) else "(unnamed field)"


def _string(value: object, path: str, issues: list[str]) -> None:
    if not isinstance(value, str):
        issues.append(f"{path}: must be a string")
    elif not value.strip():
        issues.append(f"{path}: must not be empty")


def _boolean(value: object, path: str, issues: list[str]) -> None:
    if not isinstance(value, bool):
        issues.append(f"{path}: must be true or false")


def _enum(allowed: tuple[str, ...]) -> Check:
    def check(value: object, path: str, issues: list[str]) -> None:
        if not isinstance(value, str) or value not in allowed:
            issues.append(f"{path}: must be one of {', '.join(allowed)}")

    return check


def _instant(value: object, path: str, issues: list[str]) -> None:
    if not isinstance(value, str) or parse_instant(value) is None:
        issues.append(f"{path}: must be an ISO 8601 date-time with an offset (…Z or …+01:00)")


def _date_or_instant_check(value: object, path: str, issues: list[str]) -> None:
    if not isinstance(value, str) or _date_or_instant(value) is None:
        issues.append(f"{path}: must be an ISO 8601 date or a date-time with an offset")


def _list_of(item: Check, *, non_empty: bool = False) -> Check:
    def check(value: object, path: str, issues: list[str]) -> None:
        if not isinstance(value, list):
            issues.append(f"{path}: must be a list")
        elif non_empty and not value:
            issues.append(f"{path}: must not be empty")
        else:
            for i, element in enumerate(value):
                item(element, f"{path}[{i}]", issues)

    return check


def _object(fields: Mapping[str, Check], required: tuple[str, ...] = ()) -> Check:
    def check(value: object, path: str, issues: list[str]) -> None:
        if not isinstance(value, dict):
            issues.append(f"{path}: must be an object")
            return
        _check_fields(value, fields, required, path, issues)

    return check


def _check_fields(
    value: dict[object, object],
    fields: Mapping[str, Check],
    required: tuple[str, ...],
    path: str,
    issues: list[str],
) -> None:
    prefix = f"{path}." if path else ""
    for key in value:
        if key not in fields:
            issues.append(f"{prefix}{_name(key)}: unknown field")
    for key in required:
        if key not in value:
            issues.append(f"{prefix}{key}: required")
    for key, check in fields.items():
        if key in value:
            check(value[key], f"{prefix}{key}", issues)


# --- the consent's parts -------------------------------------------------------------


def _category(value: object, path: str, issues: list[str]) -> None:
    if isinstance(value, str):
        _string(value, path, issues)
    elif isinstance(value, list):
        _list_of(_string, non_empty=True)(value, path, issues)
    else:
        issues.append(f"{path}: must be a string or a list of strings")


def _period(value: object, path: str, issues: list[str]) -> None:
    before = len(issues)
    _object({"start": _date_or_instant_check, "end": _date_or_instant_check})(value, path, issues)
    if len(issues) > before or not isinstance(value, dict):
        return
    start, end = value.get("start"), value.get("end")
    if isinstance(start, str) and isinstance(end, str):
        first, last = _date_or_instant(start), _date_or_instant(end)
        if first is None or last is None:
            return
        # A date-only bound covers its whole day, so compare days when either is a date.
        if not isinstance(first, datetime) or not isinstance(last, datetime):
            first = first.date() if isinstance(first, datetime) else first
            last = last.date() if isinstance(last, datetime) else last
        if first > last:
            issues.append(f"{path}: start must not be after end")


_coding = _object({"system": _string, "code": _string, "display": _string}, required=("code",))
_codings = _list_of(_coding)

_verification_item = _object(
    {"verified": _boolean, "verifiedWith": _string, "verificationDate": _date_or_instant_check},
    required=("verified",),
)


def _verification(value: object, path: str, issues: list[str]) -> None:
    if isinstance(value, list):
        _list_of(_verification_item)(value, path, issues)
    else:
        _verification_item(value, path, issues)


def _provision_fields(nested: Check) -> dict[str, Check]:
    return {
        "type": _enum(PROVISION_TYPES),
        "period": _period,
        "actor": _list_of(
            _object({"role": _string, "reference": _string}, required=("role", "reference"))
        ),
        "action": _codings,
        "securityLabel": _codings,
        "purpose": _codings,
        "class": _codings,
        "dataPeriod": _period,
        "data": _list_of(_object({"reference": _string}, required=("reference",))),
        "provision": _list_of(nested),
    }


def _too_deep(value: object, path: str, issues: list[str]) -> None:
    issues.append(f"{path}: nested more than {MAX_PROVISION_DEPTH} levels deep")


def _provision_checks() -> Check:
    """The provision check; each level's `provision` list checks the level below."""
    check: Check = _too_deep
    for _ in range(MAX_PROVISION_DEPTH):
        check = _object(_provision_fields(check))
    return check


_provision = _provision_checks()

CONSENT_FIELDS: dict[str, Check] = {
    "patientId": _string,
    "scope": _enum(SCOPES),
    "category": _category,
    "status": _enum(STATUSES),
    "dateTime": _instant,
    "performerId": _string,
    "organizationId": _string,
    "policyUri": _string,
    "policies": _list_of(_object({"authority": _string, "uri": _string})),
    "policyRule": _string,
    "sourceAttachment": _object(
        {"contentType": _string, "data": _string, "url": _string, "title": _string}
    ),
    "sourceReferenceId": _string,
    "verification": _verification,
    "provision": _provision,
}


# --- public checks -------------------------------------------------------------------


def validate_consent(body: object, known_patients: frozenset[str] | None = None) -> list[str]:
    """Diagnostics for a `POST /v1/consents` body; empty when it is valid.

    Args:
        known_patients: when given, a patientId outside it is an "unknown patient".
    """
    if not isinstance(body, dict):
        return ["body: must be a JSON object"]
    issues: list[str] = []
    _check_fields(body, CONSENT_FIELDS, REQUIRED, "", issues)
    patient = body.get("patientId")
    if (
        known_patients is not None
        and isinstance(patient, str)
        and patient.strip()
        and patient not in known_patients
    ):
        issues.append("patientId: unknown patient")
    return issues


def validate_patch(body: object) -> list[str]:
    """Diagnostics for a `PATCH /v1/consents/{id}` body; empty when it is valid.

    A null `policyUri`, `verification` or `provision` removes the stored value
    (JSON merge-patch); `status` cannot be removed.
    """
    if not isinstance(body, dict):
        return ["body: must be a JSON object"]
    issues: list[str] = []
    for key in body:
        if key not in PATCHABLE:
            issues.append(f"{_name(key)}: cannot be changed with PATCH")
    for key in PATCHABLE:
        if key in body and not (body[key] is None and key != "status"):
            CONSENT_FIELDS[key](body[key], key, issues)
    return issues


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A parsed `GET /v1/consents` query."""

    patient_id: str | None = None
    status: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    count: int = DEFAULT_COUNT
    cursor: str | None = None


SEARCH_PARAMS = ("patientId", "status", "dateFrom", "dateTo", "count", "cursor")


def parse_search(params: list[tuple[str, str]]) -> SearchQuery | list[str]:
    """A SearchQuery, or the diagnostics of a 400.

    An empty value counts as absent (httpx sends `None` as `name=`); an unknown or
    repeated parameter is refused, because silently ignoring a misspelt filter would
    return other patients' consents.
    """
    issues: list[str] = []
    seen: dict[str, str] = {}
    for name, value in params:
        if name not in SEARCH_PARAMS:
            issues.append(f"{_name(name)}: unknown parameter")
        elif name in seen:
            issues.append(f"{name}: given more than once")
        elif value != "":
            seen[name] = value
    status = seen.get("status")
    if status is not None and status not in STATUSES:
        issues.append(f"status: must be one of {', '.join(STATUSES)}")
    days: dict[str, date | None] = {}
    for name in ("dateFrom", "dateTo"):
        text = seen.get(name)
        days[name] = None if text is None else parse_date(text)
        if text is not None and days[name] is None:
            issues.append(f"{name}: must be a date YYYY-MM-DD")
    date_from, date_to = days["dateFrom"], days["dateTo"]
    if date_from and date_to and date_from > date_to:
        issues.append("dateFrom: must not be after dateTo")
    count = DEFAULT_COUNT
    if "count" in seen:
        text = seen["count"]
        if not text.isascii() or not text.isdigit():
            issues.append("count: must be a whole number")
        elif not 1 <= int(text) <= MAX_COUNT:
            issues.append(f"count: must be between 1 and {MAX_COUNT}")
        else:
            count = int(text)
    if issues:
        return issues
    return SearchQuery(
        patient_id=seen.get("patientId"),
        status=status,
        date_from=date_from,
        date_to=date_to,
        count=count,
        cursor=seen.get("cursor"),
    )
