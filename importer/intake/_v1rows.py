"""Mapping version 1's rows: the consent plans of a mapping, and a row's body built from its
cells.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from importer._rows import Row
from importer.intake._cells import (
    _PLAIN_FIELDS,
    _V2_RULES,
    UNMAPPED_CELL,
    Consents,
    UnchangedCheck,
    _unmapped_rule,
    _whole,
    cells_digests,
    split_codes,
)
from importer.intake._dates import DateColumn
from importer.intake._fastcheck import proven_valid
from importer.intake._mapping import DATE_FIELDS, Mapping
from importer.intake._mapping_v2 import (
    BOOL,
    DATE,
    FALSE_WORDS,
    TRUE_WORDS,
    UNMAPPED,
    V1_PATHS,
    Condition,
    Shape,
    Spec,
    Value,
    coding,
    evaluate,
    merge,
    overlaps,
    parse_path,
)

if TYPE_CHECKING:
    from importer.intake._normalize import _FileNormalizer


def _v1_consents(
    owner: _FileNormalizer, chunk: pd.DataFrame, unchanged: UnchangedCheck | None
) -> Consents:
    """A version-1 chunk's rows (one consent each), those `unchanged` confirms marked."""
    headers, raw, fields, keys = owner._prepare(chunk)
    size = len(chunk)
    digests = cells_digests(fields, owner.digest_key(), size)
    skip = np.zeros(size, dtype=bool)
    # Keys of the rows that may be skipped: the key column's, or natural keys made a
    # column at a time (not content hashes: those need the body).
    fast_keys = keys
    if unchanged is not None and (owner.keyed or not owner.content_keys):
        if not owner.keyed and not owner.source_keyed:
            fast_keys = owner._natural_keys(fields, size)
        proven = proven_valid(
            fields,
            fast_keys,
            parse_date=owner.parse_date,
            crosswalk=owner.mapping.crosswalk,
            read_dates=owner._chunk_dates,
        )
        proven &= _whole(owner.defects, chunk.index)
        candidates = np.flatnonzero(owner.mapped(proven)).tolist()
        if candidates:
            asked = [fast_keys[pos] or "" for pos in candidates]
            skip[candidates] = unchanged(asked, digests[candidates])
    numbers = chunk.index.to_numpy(dtype=np.int64)

    def build(pos: int) -> Row:
        values = tuple(column[pos] for column in raw.values())
        cells = {name: column[pos] for name, column in fields.items()}
        row = owner._row(int(numbers[pos]), headers, values, cells, keys[pos])
        row.cells_digest = int(digests[pos])
        return row

    return Consents(size, numbers, np.arange(size, dtype=np.int64), fast_keys, skip, build)


def _consent_plans(owner: _FileNormalizer, mapping: Mapping) -> list[_ConsentPlan]:
    """What each consent of a row is made of: one plan without [[consents]]."""
    top = list(mapping.fields.values())
    if not mapping.consents:
        return [_ConsentPlan(owner, "", None, top, frozenset())]
    plans = []
    for consent in mapping.consents:
        own = list(consent.fields.values())
        # The consent's own fields override top-level ones naming the same place,
        # and version-1 [columns]/[defaults] fields too.
        kept = [t for t in top if not any(overlaps(t.path, o.path) for o in own)]
        dropped = frozenset(
            name
            for name, path in V1_PATHS.items()
            if any(overlaps(parse_path(path, "v1"), o.path) for o in own)
        )
        plans.append(_ConsentPlan(owner, consent.key, consent.when, [*kept, *own], dropped))
    return plans


def _v1_body(
    c: dict[str, str],
    fail: Callable[[str, str, str], None],
    parse_date: Callable[[str, str], datetime | None],
    crosswalk: dict[str, str] | None,
) -> dict[str, Any]:
    """Assemble the API body from one row's prepared cells; faults go to `fail`."""
    if UNMAPPED_CELL in c.values():
        for name, cell in c.items():
            if cell == UNMAPPED_CELL:
                fail(name, UNMAPPED, _unmapped_rule(f"[values.{name}]"))
        c = {name: "" if cell == UNMAPPED_CELL else cell for name, cell in c.items()}
    body: dict[str, Any] = {name: c[name] for name in _PLAIN_FIELDS if c.get(name)}
    dates: dict[str, datetime] = {}
    for name in DATE_FIELDS:
        text = c.get(name)
        if text:
            parsed = parse_date(name, text)
            if parsed is None:
                fail(name, "invalid_date", "not a date-time in ISO 8601 or a date_formats format")
                body.pop(name, None)
            else:
                dates[name] = parsed
    if "dateTime" in dates:
        body["dateTime"] = dates["dateTime"]
    patient = body.get("patientId")
    if patient is not None and crosswalk is not None:
        resolved = crosswalk.get(patient)
        if resolved is None:
            fail("patientId", "unknown_patient", "not in the crosswalk; add it there")
            del body["patientId"]
        else:
            body["patientId"] = resolved
    category = c.get("category")
    if category:
        body["category"] = split_codes(category)
    if c.get("verified") or c.get("verifiedWith") or "verificationDate" in dates:
        verification = _verification(c, dates, fail)
        if verification is not None:
            body["verification"] = verification
    provision = _provision(c, dates)
    if provision:
        body["provision"] = provision
    return body


def _verification(
    c: dict[str, str], dates: dict[str, datetime], fail: Callable[[str, str, str], None]
) -> dict[str, Any] | None:
    verification: dict[str, Any] = {}
    flag = c.get("verified", "").casefold()
    if flag in TRUE_WORDS:
        verification["verified"] = True
    elif flag in FALSE_WORDS:
        verification["verified"] = False
    elif flag:
        fail("verified", "invalid_boolean", "must be Y/N, yes/no, true/false or 1/0")
        return None
    if c.get("verifiedWith"):
        verification["verifiedWith"] = c["verifiedWith"]
    if "verificationDate" in dates:
        verification["verificationDate"] = dates["verificationDate"]
    return verification


def _provision(c: dict[str, str], dates: dict[str, datetime]) -> dict[str, Any]:
    provision: dict[str, Any] = {}
    if c.get("provisionType"):
        provision["type"] = c["provisionType"]
    period = {
        end: dates[name]
        for end, name in (("start", "provisionStart"), ("end", "provisionEnd"))
        if name in dates
    }
    if period:
        provision["period"] = period
    if c.get("purpose"):
        provision["purpose"] = [coding(code) for code in split_codes(c["purpose"])]
    return provision


class _ConsentPlan:
    """One consent a row can make: its key, its `when`, and the specs filling its body."""

    def __init__(
        self,
        owner: _FileNormalizer,
        key: str,
        when: Condition | None,
        specs: list[Spec],
        dropped: frozenset[str],
    ) -> None:
        self.owner = owner
        self.key = key
        self.when = when
        self.specs = specs
        self.dropped = dropped
        self.holds: list[bool] | None = None
        self.shape = Shape(specs)
        self.values: list[list[Value]] = []
        top = {spec.path.steps[0][0] for spec in specs if len(spec.path.steps) == 1}
        #: Required fields this consent gets from its specs, not from version-1 columns.
        self.supplied = frozenset(top & {"patientId", "scope", "category"})
        # A patient id from [fields] goes through [patients], unless its spec names its
        # own crosswalk (then `evaluate` has resolved it already).
        self.patient_from_v2 = "patientId" in top and not any(
            spec.crosswalk is not None for spec in specs if spec.path.plain == "patientId"
        )
        self._rows: list[tuple[Value, ...]] = []
        self._errors: dict[int, list[tuple[Spec, str]]] = {}
        #: The spec behind each field path (without indexes), to name it in row errors.
        self.labels = {spec.path.plain: spec for spec in specs}

    def evaluate(
        self, cells: dict[str, list[str]], size: int, rows: Callable[[int], int] | None = None
    ) -> None:
        """Evaluate `when` and every spec over a chunk's cells, a column at a time
        (`rows`: a position in the chunk -> its row number, for messages)."""
        owner = self.owner
        self.holds = self.when.holds(cells[self.when.column]) if self.when else None
        values = []
        for spec in self.specs:
            reader = None
            # A period's end given as a date alone means the end of that day.
            end = spec.path.kind == DATE and spec.path.steps[-1][0] == "end"
            if spec.path.kind == DATE and spec.source != "value":
                column = owner._date_column(
                    f"{self.key}:{spec.key}",
                    f"{spec.path.plain} ({spec.describe()})",
                    spec.formats if spec.formats is not None else owner.mapping.date_formats,
                    end=end,
                )

                def reader(texts: list[str], column: DateColumn = column) -> list[datetime | None]:
                    read = column.read(texts, rows)
                    return [read.get(t) if t else None for t in texts]

            constant = partial(owner._constant_date, end=end)
            values.append(evaluate(spec, cells, size, reader, constant))
        self.values = values
        self._rows = list(zip(*values, strict=True)) if values else [()] * size
        self._errors = {}
        for spec, results in zip(self.specs, values, strict=True):
            can_fail = spec.map is not None or spec.crosswalk is not None or spec.cases
            if spec.path.kind not in (DATE, BOOL) and not can_fail:
                continue  # only dates, booleans, maps, crosswalks and cases can fail
            for pos, (_, _, code) in enumerate(results):
                if code is not None:
                    self._errors.setdefault(pos, []).append((spec, code))

    def body(
        self, base: dict[str, Any], pos: int, fail: Callable[[str, str, str], None]
    ) -> dict[str, Any]:
        """The row's body: the version-1 part, then every spec's value put in place."""
        for spec, code in self._errors.get(pos, ()):
            fail(spec.path.plain, code, _V2_RULES[code])
        built = self.shape.build(self._rows[pos])
        body = merge(base, built) if base else built
        crosswalk = self.owner.mapping.crosswalk
        if self.patient_from_v2 and crosswalk is not None and "patientId" in built:
            # A patient id from [fields] is a legacy id too: resolved, never sent as is.
            resolved = crosswalk.get(str(body["patientId"]))
            if resolved is None:
                fail("patientId", "unknown_patient", "not in the crosswalk; add it there")
                del body["patientId"]
            else:
                body["patientId"] = resolved
        return body
