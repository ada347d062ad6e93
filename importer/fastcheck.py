"""Column-wise proof that rows are valid, without building their bodies.

`validate` only needs to know which rows are invalid and why. Most rows of a real export
are valid, and proving that a column at a time costs a few microseconds a row, where
assembling a body and validating it with pydantic costs tens. So every check here is
deliberately *narrower* than the models: a row passes only when the models are certain
to accept it. A row that does not pass goes through the full path, which finds its
errors (or finds it valid after all). A check that is too strict costs speed, never a
wrong verdict; tests/test_fastcheck.py compares both paths row by row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt

from importer.mapping import DATE_FIELDS, FALSE_WORDS, TRUE_WORDS
from importer.models import ID_PATTERN, ProvisionType, Scope, Status

#: The models' id rule (ASCII letters, digits, `-`, `_`, `.`; 1-128).
_ID = re.compile(ID_PATTERN)
#: An ASCII letter or digit: a category cell holding one has a code left after splitting
#: on `;`/`|` and stripping (whitespace rules differ between `re` and `str.strip`, so a
#: wider "not a separator nor a space" test could pass a cell the full path empties).
_CODE_CHAR = re.compile(r"[A-Za-z0-9]")
_BOOLEANS = TRUE_WORDS | FALSE_WORDS

#: Row fields whose non-empty cells are copied into the body as text (Text: min_length 1).
_ANY_TEXT = frozenset({"policyUri", "policyRule", "purpose", "sourceKey"})
_OPTIONAL_IDS = ("performerId", "organizationId", "sourceReferenceId", "verifiedWith")
_ENUMS = {
    "scope": frozenset(m.value for m in Scope),
    "status": frozenset(m.value for m in Status) | {""},
    "provisionType": frozenset(m.value for m in ProvisionType) | {""},
}
#: Every row field this module has a proof for; a field outside it disables the proof.
KNOWN_FIELDS = frozenset(
    {"patientId", "category", "verified", *_ANY_TEXT, *_OPTIONAL_IDS, *_ENUMS, *DATE_FIELDS}
)

Bools = npt.NDArray[np.bool_]


def proven_valid(
    fields: dict[str, list[str]],
    keys: Sequence[str | None],
    *,
    parse_date: Callable[[str, str], datetime | None],
    crosswalk: dict[str, str] | None,
) -> Bools:
    """For each row, True when its body is certain to validate.

    `fields` are the prepared cells (trimmed, translated, defaulted) by row field, as the
    full path sees them; `keys` the source keys (None: empty, which the full path
    reports); `parse_date(field, cell)` reads a date cell as the full path does (one
    reading per column). For keyed files only: an unkeyed row's key is its body's hash.
    """
    size = len(keys)
    if not fields.keys() <= KNOWN_FIELDS:
        return np.zeros(size, dtype=bool)
    empty = [""] * size

    def column(name: str) -> list[str]:
        return fields.get(name, empty)

    checks: list[Bools] = []

    def add(flags: list[bool]) -> None:
        checks.append(np.array(flags, dtype=bool))

    patients = column("patientId")
    if crosswalk is not None:
        # An unknown patient is an error; a known one is sent as its new id.
        patients = [crosswalk.get(v, "") for v in patients]
    add([_ID.fullmatch(v) is not None for v in patients])
    for name in _OPTIONAL_IDS:
        if name in fields:
            add([not v or _ID.fullmatch(v) is not None for v in fields[name]])
    for name, allowed in _ENUMS.items():
        add([v in allowed for v in column(name)])
    add([_CODE_CHAR.search(v) is not None for v in column("category")])

    dates: dict[str, list[datetime | None]] = {}
    for name in DATE_FIELDS:
        if name in fields:
            parsed = [parse_date(name, v) if v else None for v in fields[name]]
            add([p is not None or not v for p, v in zip(parsed, fields[name], strict=True)])
            dates[name] = parsed
    if "provisionStart" in dates and "provisionEnd" in dates:
        add(
            [
                s is None or e is None or s <= e
                for s, e in zip(dates["provisionStart"], dates["provisionEnd"], strict=True)
            ]
        )
    if {"verified", "verifiedWith", "verificationDate"} & fields.keys():
        # A verification object is sent when any of its cells is filled, and then needs
        # a yes/no flag.
        add(
            [
                flag.casefold() in _BOOLEANS if flag else not (other or date)
                for flag, other, date in zip(
                    column("verified"),
                    column("verifiedWith"),
                    column("verificationDate"),
                    strict=True,
                )
            ]
        )
    add([key is not None for key in keys])
    return np.logical_and.reduce(checks) if checks else np.ones(size, dtype=bool)
