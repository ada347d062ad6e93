"""What a column's header and cells suggest it holds, for `init`'s guesses.

A header with no recognised spelling is scored against words that suggest a field
(`record_id`, `USUBJID` for the patient; `Signed`, `DSSTDTC` for the consent time), and a
column that only looks like one is turned down with a reason: a birth or withdrawal date is
not the consent time, a column of US state codes or of vital statuses is not a consent
status, a name is not a patient id. A withdrawal column is a status signal; a REDCap
consent checkbox (`consent___1`) is the status itself. Only headers are ever named in
the reasons, never a cell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from importer.intake._mapping import canonical_header

#: Words in a folded header that suggest a field, strongest first (a header matching an
#: earlier word wins the field over one matching a later word).
HINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "patientId",
        (
            "usubjid",
            "subjid",
            "subjectid",
            "participantid",
            "patientid",
            "mrn",
            "medicalrecord",
            "participant",
            "patient",
            "subject",
            "recordid",  # REDCap's record_id: one record a participant
        ),
    ),
    ("status", ("consentstatus", "status", "state")),
    ("scope", ("consenttype", "formtype", "type", "scope")),
    (
        "dateTime",
        ("signed", "consentdate", "consenttimestamp", "stdtc", "timestamp", "dtc", "date"),
    ),
    ("sourceKey", ("consentid", "legacyid", "recordid")),
)
#: Whole folded headers that are patient ids (too short to look for inside a header).
_PATIENT_HEADERS = frozenset({"pid", "ptid", "subj", "subjno", "ptno"})
#: Words that rule a header out of a field, with the reason said on the terminal.
_NOT_FOR: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "patientId": (
        (("name", "initials"), "looks like a name, not an id"),
        (("birth", "dob"), "looks like a birth date, not an id"),
        (("email", "phone", "address", "zip", "postal"), "looks like contact details, not an id"),
    ),
    "dateTime": (
        (("birth", "dob"), "looks like a birth date, not the consent time"),
        (("death", "died", "deceased"), "looks like a date of death, not the consent time"),
        (("withdr", "revok", "revoc"), "looks like a withdrawal date: a status signal"),
        (("expir", "enddate", "endtime", "until"), "looks like an end date, not the consent time"),
        (("updat", "modif", "export"), "looks like a record's edit time, not the consent time"),
        (("visit", "admi", "discharge"), "looks like a visit date, not the consent time"),
    ),
    "status": (
        (("marital", "vital", "smok", "employ", "insur"), "is another kind of status"),
        (("statement",), "is not a status"),
        (("withdr", "revok", "revoc"), "is a withdrawal signal"),
    ),
}
#: Cells of a consent status column (case-folded): the API's values and the words exports use.
STATUS_WORDS = frozenset(
    {
        "active",
        "inactive",
        "draft",
        "proposed",
        "rejected",
        "signed",
        "unsigned",
        "consented",
        "not consented",
        "agreed",
        "accepted",
        "declined",
        "refused",
        "withdrawn",
        "revoked",
        "pending",
        "on hold",
        "expired",
        "complete",
        "completed",
        "incomplete",
        "yes",
        "no",
        "y",
        "n",
        "true",
        "false",
        "1",
        "0",
        "2",
    }
)
#: US state and territory codes (USPS).
_STATE_CODES = (
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH "
    "NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR GU VI AS MP"
)
US_STATES = frozenset(_STATE_CODES.split(" "))
_TRUE = ("y", "yes", "true", "t", "1", "x", "checked", "withdrawn")
_FALSE = ("n", "no", "false", "f", "0", "unchecked")
#: A REDCap checkbox column: the field name, three underscores, the choice's code.
_CHECKBOX = re.compile(r"(?i)\w*consent\w*?___\w+")


@dataclass(frozen=True)
class Refusal:
    """A header that looked like a field and was turned down, and why."""

    header: str
    field: str
    reason: str


@dataclass(frozen=True)
class Withdrawal:
    """A column saying the consent was withdrawn: by any value (a date), or by a yes."""

    header: str
    yes: tuple[str, ...] = ()  # the cells meaning withdrawn; empty: any non-empty cell


def hint_rank(name: str, header: str) -> int | None:
    """How strongly `header` suggests field `name` (0 strongest), or None."""
    folded = canonical_header(header)
    if name == "patientId" and folded in _PATIENT_HEADERS:
        return 0
    words = dict(HINTS)[name]
    for rank, word in enumerate(words):
        if word in folded:
            if word == "state" and not re.search(r"(?i)(?:^|[^a-z])state(?:$|[^a-z])", header):
                return None  # "statement", "estate"
            return rank
    return None


def refusal(name: str, header: str, cells: list[str]) -> str | None:
    """Why `header` (which suggests `name`) is not that field, or None."""
    folded = canonical_header(header)
    for words, reason in _NOT_FOR.get(name, ()):
        if any(w in folded for w in words):
            return reason
    if name == "status" and "consent" not in folded:
        values = {c.casefold() for c in cells if c}
        if not values:
            return None
        if sum(c.upper() in US_STATES for c in values) * 2 >= len(values):
            return "holds US state codes, not a consent status"
        if sum(c in STATUS_WORDS for c in values) * 2 < len(values):
            return "its values do not look like consent statuses"
    return None


def withdrawal(headers: Iterable[str], sample: dict[str, list[str]]) -> Withdrawal | None:
    """The first column telling that the consent was withdrawn (a withdrawal date, or a
    yes/no withdrawn flag)."""
    for header in headers:
        folded = canonical_header(header)
        if not any(w in folded for w in ("withdr", "revok", "revoc")) or "status" in folded:
            continue
        values = {c.casefold(): c for c in sample.get(header, []) if c}
        if values and set(values) <= {*_TRUE, *_FALSE}:
            yes = tuple(v for k, v in values.items() if k in _TRUE) or ("Y", "Yes", "1")
            return Withdrawal(header, yes)
        return Withdrawal(header)
    return None


def checkbox(headers: Iterable[str]) -> str | None:
    """A REDCap consent checkbox column (`consent___1`), the status itself."""
    return next((h for h in headers if _CHECKBOX.fullmatch(h.strip())), None)


def ticked(value: str) -> bool:
    """Whether a checkbox cell is ticked (REDCap: 1, or Checked in a label export)."""
    return value.casefold() in ("1", "checked")
