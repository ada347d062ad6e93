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
from collections.abc import Callable, Hashable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from importer.intake._mapping import DATE_FIELDS
from importer.intake._mapping_v2 import (
    BOOL,
    CODES,
    DATE,
    FALSE_WORDS,
    LIST,
    REFS,
    TRUE_WORDS,
    Spec,
    Step,
    Value,
)
from importer.intake._models import (
    ID_PATTERN,
    PATIENT_ID_PATTERN,
    REFERENCE_PATTERN,
    ProvisionType,
    Scope,
    Status,
)

#: The models' id rule (ASCII letters, digits, `-`, `_`, `.`; 1-128).
_ID = re.compile(ID_PATTERN)
#: The models' patient id rule: an id starting `pt_`.
_PATIENT_ID = re.compile(PATIENT_ID_PATTERN)
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
_T = TypeVar("_T", bound=Hashable)

#: Cells never hold NUL (the reader refuses such files), so a column joined with it is
#: one string whose cells C-speed string methods can judge all at once.
_JOIN = "\x00"
#: The characters of the models' id rules (ID_PATTERN, PATIENT_ID_PATTERN), as bytes.
_ID_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
# `_ids` restates these rules: a change of them must change it too.
if (ID_PATTERN, PATIENT_ID_PATTERN) != (r"^[A-Za-z0-9._-]{1,128}$", r"^pt_[A-Za-z0-9._-]{1,125}$"):
    raise ImportError("the models' id rules changed: update _fastcheck._ids")


def _ids(values: list[str], *, prefix: str = "", shortest: int, longest: int) -> bool:
    """True when every cell is `prefix` then id characters only, `shortest` to `longest`
    characters in all (the id rules, for a whole column at once)."""
    if not values:
        return True
    joined = _JOIN.join(values)
    size = len(values)
    if not joined.isascii() or joined.count(_JOIN) != size - 1:
        return False
    if prefix and not (joined.startswith(prefix) and joined.count(_JOIN + prefix) == size - 1):
        return False
    # Deleting every id character leaves the separators alone when nothing else is there.
    if len(joined.encode("ascii").translate(None, _ID_BYTES)) != size - 1:
        return False
    lengths = list(map(len, values))
    return min(lengths) >= shortest and max(lengths) <= longest


def _each(values: list[str], proved: bool, one: Callable[[str], bool]) -> Bools | None:
    """None when every cell passes (`proved` for the whole column), else each cell's verdict."""
    return None if proved else np.array([one(v) for v in values], dtype=bool)


def _by_distinct(values: Sequence[_T], one: Callable[[_T], bool]) -> Bools | None:
    """None when every cell passes, else each cell's verdict: each distinct cell is
    judged once (a column of a few codes costs a set, not a call a cell)."""
    verdicts = {v: one(v) for v in set(values)}
    if all(verdicts.values()):
        return None
    return np.array([verdicts[v] for v in values], dtype=bool)


def proven_valid(
    fields: dict[str, list[str]],
    keys: Sequence[str | None],
    *,
    parse_date: Callable[[str, str], datetime | None],
    crosswalk: dict[str, str] | None,
    supplied: frozenset[str] = frozenset(),
    read_dates: dict[str, dict[str, datetime | None]] | None = None,
) -> Bools:
    """For each row, True when its body is certain to validate.

    `fields` are the prepared cells (trimmed, translated, defaulted) by row field, as the
    full path sees them; `keys` the source keys (None: empty, which the full path
    reports); `parse_date(field, cell)` reads a date cell as the full path does (one
    reading per column). For keyed files only: an unkeyed row's key is its body's hash.
    `supplied`: required fields a version-2 mapping fills (`proven_by_specs` checks them).
    `read_dates`, when given, holds what `parse_date` gives, by field and cell (faster).
    """
    size = len(keys)
    if not fields.keys() <= KNOWN_FIELDS:
        return np.zeros(size, dtype=bool)
    empty = [""] * size

    def column(name: str) -> list[str]:
        return fields.get(name, empty)

    # Each check proves a whole column at once where it can (a joined regex, each
    # distinct cell once) and gives each row's verdict only when some row fails it.
    checks: list[Bools] = []

    def add(flags: Bools | list[bool] | None) -> None:
        if flags is not None:
            checks.append(np.asarray(flags, dtype=bool))

    if "patientId" not in supplied:
        patients = column("patientId")
        if crosswalk is not None:
            # An unknown patient is an error; a known one is sent as its new id.
            patients = [crosswalk.get(v, "") for v in patients]
        proved = _ids(patients, prefix="pt_", shortest=4, longest=128)
        add(_each(patients, proved, lambda v: _PATIENT_ID.fullmatch(v) is not None))
    for name in _OPTIONAL_IDS:
        if name in fields:
            proved = _ids(fields[name], shortest=0, longest=128)
            add(_each(fields[name], proved, lambda v: not v or _ID.fullmatch(v) is not None))
    for name, allowed in _ENUMS.items():
        if name not in supplied:
            add(_by_distinct(column(name), allowed.__contains__))
    if "category" not in supplied:
        add(_by_distinct(column("category"), lambda v: _CODE_CHAR.search(v) is not None))

    readings: dict[str, Callable[[str], datetime | None]] = {}
    for name in DATE_FIELDS:
        if name in fields:
            known = read_dates.get(name) if read_dates is not None else None
            read = known.get if known is not None else _reader_of(parse_date, name)
            readings[name] = read
            if known is not None and None not in known.values():
                if getattr(known, "texts", None) is fields[name]:
                    continue  # read from these very cells (`Readings`): each is a date
                filled = set(fields[name])
                filled.discard("")
                if known.keys() >= filled:
                    continue  # every filled cell is one `known` reads as a date
            add(_by_distinct(fields[name], _readable(read)))
    if "provisionStart" in readings and "provisionEnd" in readings:
        start, end = readings["provisionStart"], readings["provisionEnd"]

        def in_order(pair: tuple[str, str]) -> bool:
            s, e = (start(pair[0]) if pair[0] else None), (end(pair[1]) if pair[1] else None)
            return s is None or e is None or s <= e

        if not _ordered(read_dates, "provisionStart", "provisionEnd"):
            pairs = list(zip(fields["provisionStart"], fields["provisionEnd"], strict=True))
            add(_by_distinct(pairs, in_order))
    if {"verified", "verifiedWith", "verificationDate"} & fields.keys():
        # A verification object is sent when any of its cells is filled, and then needs
        # a yes/no flag.
        flags = column("verified")
        known_flags = _by_distinct(flags, lambda v: not v or v.casefold() in _BOOLEANS)
        if known_flags is not None or "" in flags:
            add(
                [
                    flag.casefold() in _BOOLEANS if flag else not (other or date)
                    for flag, other, date in zip(
                        flags,
                        column("verifiedWith"),
                        column("verificationDate"),
                        strict=True,
                    )
                ]
            )
    if None in keys:
        add([key is not None for key in keys])
    return np.logical_and.reduce(checks) if checks else np.ones(size, dtype=bool)


def _ordered(
    read_dates: dict[str, dict[str, datetime | None]] | None, first: str, then: str
) -> bool:
    """True when every date `read_dates` holds for `first` is at most every one for
    `then`: then every row's pair is in order (without a pair a row)."""
    if read_dates is None or first not in read_dates or then not in read_dates:
        return False
    starts = [d for d in read_dates[first].values() if d is not None]
    ends = [d for d in read_dates[then].values() if d is not None]
    if not starts or not ends:
        return True
    try:
        return max(starts) <= min(ends)
    except TypeError:  # a naive date among aware ones (never read so): row by row
        return False


def _readable(read: Callable[[str], datetime | None]) -> Callable[[str], bool]:
    return lambda text: not text or read(text) is not None


def _reader_of(
    parse_date: Callable[[str, str], datetime | None], name: str
) -> Callable[[str], datetime | None]:
    return lambda text: parse_date(name, text)


# --- version 2: values by body path ------------------------------------------------------

_REFERENCE = re.compile(REFERENCE_PATTERN)
_ID_PATHS = frozenset(
    {"patientId", "performerId", "organizationId", "sourceReferenceId", "verification.verifiedWith"}
)
_ENUM_PATHS = {
    "scope": frozenset(m.value for m in Scope),
    "status": frozenset(m.value for m in Status),
}
_PROVISION_TYPES = frozenset(m.value for m in ProvisionType)
#: Objects with required fields, by the name of the path step holding them.
_REQUIRED_IN = {
    "verification": ("verified",),
    "actor": ("role", "reference"),
    "action": ("code",),
    "securityLabel": ("code",),
    "purpose": ("code",),
    "class": ("code",),
    "data": ("reference",),
}
_TOP_REQUIRED = ("patientId", "scope", "category")


def proven_by_specs(specs: Sequence[Spec], values: Sequence[Sequence[Value]], size: int) -> Bools:
    """For each row, True when the version-2 part of its body is certain to validate.

    `values` are each spec's values for the chunk (`fields.evaluate`). Narrower than the
    models, like `proven_valid`: an object with required fields passes only when all of
    them are filled wherever any of its fields is; a period only with start <= end.
    """
    ok = np.ones(size, dtype=bool)
    present: dict[tuple[Step, ...], dict[str, list[bool]]] = {}
    periods: dict[tuple[Step, ...], dict[str, list[Any]]] = {}
    for spec, column in zip(specs, values, strict=True):
        rule = _value_rule(spec)
        # Rows with the same cell share one entry object (fields.evaluate): each distinct
        # entry is judged once. A constant's column is one entry throughout.
        distinct = (
            {id(column[0]): column[0]}
            if spec.source == "value" and column
            else {id(entry): entry for entry in column}
        )
        verdicts = {
            key: code is None and (value is None or rule(value))
            for key, (value, _, code) in distinct.items()
        }
        filled = {key: entry[0] is not None for key, entry in distinct.items()}
        ids = list(map(id, column)) if len(distinct) > 1 else []
        if not all(verdicts.values()):
            ok &= np.array([verdicts[i] for i in ids], dtype=bool) if ids else np.zeros(size, bool)
        steps = spec.path.steps
        parent, leaf = steps[:-1], steps[-1][0]
        same = set(filled.values())
        is_filled = [filled[i] for i in ids] if len(same) > 1 else [any(same)] * size
        if len(steps) == 1 and leaf in _TOP_REQUIRED:
            ok &= np.array(is_filled, dtype=bool)
        if parent:
            present.setdefault(parent, {})[leaf] = is_filled
            if parent[-1][0] in ("period", "dataPeriod"):
                periods.setdefault(parent, {})[leaf] = [entry[0] for entry in column]
    for parent, leaves in present.items():
        name, index = parent[-1]
        required = _REQUIRED_IN.get(name)
        if not required or (name != "verification" and name != "actor" and index is None):
            continue  # a list of codes or references is built complete
        missing = [r for r in required if r not in leaves]
        filled = np.logical_or.reduce([np.array(v, dtype=bool) for v in leaves.values()])
        if missing:
            ok &= ~filled
            continue
        complete = np.logical_and.reduce([np.array(leaves[r], dtype=bool) for r in required])
        ok &= ~filled | complete
    for ends in periods.values():
        if "start" in ends and "end" in ends:
            ok &= np.array(
                [
                    s is None or e is None or s <= e
                    for s, e in zip(ends["start"], ends["end"], strict=True)
                ],
                dtype=bool,
            )
    return ok


def _value_rule(spec: Spec) -> Callable[[Any], bool]:
    """What a non-empty value of this spec must satisfy to be certain to validate."""
    plain = spec.path.plain
    leaf = spec.path.steps[-1][0]
    kind = spec.path.kind
    if plain == "patientId":
        return lambda v: isinstance(v, str) and _PATIENT_ID.fullmatch(v) is not None
    if plain in _ID_PATHS:
        return lambda v: isinstance(v, str) and _ID.fullmatch(v) is not None
    if plain in _ENUM_PATHS:
        allowed = _ENUM_PATHS[plain]
        return lambda v: v in allowed
    if plain.startswith("provision") and leaf == "type":
        return lambda v: v in _PROVISION_TYPES
    if leaf == "reference" or kind == REFS:
        if kind == REFS:
            return lambda v: all(_REFERENCE.fullmatch(i["reference"]) for i in v)
        return lambda v: isinstance(v, str) and _REFERENCE.fullmatch(v) is not None
    if kind == CODES:
        return lambda v: all(i.get("code") and (i.get("system") is None or i["system"]) for i in v)
    if kind == LIST:
        return lambda v: all(isinstance(i, str) and i for i in v)
    if kind == BOOL:
        return lambda v: isinstance(v, bool)
    if kind == DATE:
        return lambda v: isinstance(v, datetime) and v.tzinfo is not None
    return lambda v: isinstance(v, str) and bool(v)
