"""`validate`'s values profile: what each mapped column held, and what each value became.

For every column feeding an enum, a code or an id field (or any field through a `map` or
a crosswalk), the profile keeps its distinct values (the first `LIMIT` met, by their
cell as read) with counts, and at the end translates each one as the mapping does: the
API value it became, or the row error it makes (`unmapped_value`, `unknown_patient`).
A migration can be signed off by reading it. It holds cell values: it goes only into the
user's own report files, never to the terminal; the warnings drawn from it name fields
and columns only.

Counting costs one `Counter` per profiled column per chunk (in C, over the cells the
normalizer has already listed); once a column shows more than `LIMIT` distinct values
(patient ids, say), its later rows are only counted, as `other_rows`: the counts of the
values listed then cover the rows read until that chunk.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from importer._results import ValidationSummary
from importer.intake._cells import UNMAPPED_CELL
from importer.intake._mapping_v2 import CODES, LIST, REFS, UNMAPPED, Spec, evaluate
from importer.intake._normalize import _FileNormalizer

#: Distinct values kept per column.
LIMIT = 50
#: A ClinikAPI id: a lowercase prefix, `_`, then the id (`pt_…`, `org_…`, `prac_…`).
CLINIK_ID = re.compile(r"[a-z][a-z0-9]*_[A-Za-z0-9._-]+")

#: Turns a column's cells (as read, untrimmed) into (what each became, its row error).
Translate = Callable[[list[str]], list[tuple[Any, str | None]]]


@dataclass
class ColumnCounts:
    """One profiled column: its counts so far and how to translate its values."""

    field: str  # the row field or body path it feeds
    column: str  # the file's header
    translate: Translate
    #: whether the field holds a ClinikAPI id (values are checked for the `prefix_` shape)
    holds_id: bool = False
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    #: rows not counted by value: the column has more than `LIMIT` distinct values
    other_rows: int = 0
    full: bool = False

    def add(self, cells: list[str]) -> None:
        """Count one chunk's cells of this column (until it shows more than `LIMIT`
        distinct values: from then on only its rows are counted, as `other_rows`)."""
        if self.full:
            self.other_rows += len(cells)
            return
        counts = self.counts
        for value, n in Counter(cells).items():
            if value in counts:
                counts[value] += n
            elif len(counts) < LIMIT:
                counts[value] = n
            else:
                self.other_rows += n
                self.full = True

    def values(self) -> list[dict[str, Any]]:
        """The values (trimmed; spellings differing only in spaces merged), most
        frequent first, each with what it became or the error it makes."""
        cells = list(self.counts)
        results = self.translate(cells) if cells else []
        merged: dict[str, dict[str, Any]] = {}
        for cell, (became, error) in zip(cells, results, strict=True):
            entry = merged.setdefault(cell.strip(), {"value": cell.strip(), "count": 0})
            entry["count"] += self.counts[cell]
            entry["became"] = became
            if error:
                entry["error"] = error
        return sorted(merged.values(), key=lambda e: (-e["count"], e["value"]))


class ValuesProfile:
    """The profile of every file of a validation, by (field, column)."""

    def __init__(self) -> None:
        self.columns: dict[tuple[str, str], ColumnCounts] = {}

    def column(self, name: str, header: str, translate: Translate, *, holds_id: bool) -> None:
        """Profile `header` as feeding `name` (a column met again in a later file keeps its
        counts; the later file's translation serves)."""
        found = self.columns.get((name, header))
        if found is None:
            self.columns[(name, header)] = ColumnCounts(name, header, translate, holds_id)
        else:
            found.translate = translate

    def chunk_counter(self, wanted: list[tuple[str, str]]) -> ChunkProfile:
        """What a file's normalizer calls with each chunk: counts `wanted` (field, header)."""
        return ChunkProfile([self.columns[w] for w in wanted])

    def to_json(self) -> list[dict[str, Any]]:
        out = []
        for column in self.columns.values():
            values = column.values()
            out.append(
                {
                    "field": column.field,
                    "column": column.column,
                    "distinct": len(values),
                    "other_rows": column.other_rows,
                    "values": [{**v, "became": _shown(v.get("became"))} for v in values],
                }
            )
        return out

    def warnings(self) -> list[str]:
        """One line per id field whose values do not look like ClinikAPI ids. Fields and
        columns only: the values are PHI."""
        out = []
        for column in self.columns.values():
            if not column.holds_id:
                continue
            values = column.values()
            odd = [
                v
                for v in values
                if isinstance(v.get("became"), str) and not CLINIK_ID.fullmatch(v["became"])
            ]
            if not odd:
                continue
            rows = sum(v["count"] for v in odd)
            out.append(
                f"{column.field} (column '{column.column}'): {len(odd)} of its "
                f"{len(values)} distinct values profiled ({rows:,} rows) do not look "
                "like ClinikAPI ids (prefix_…, such as pt_… or org_…); legacy ids need a "
                'crosswalk: [crosswalks.NAME], then { column = "…", crosswalk = "NAME" }'
            )
        return out


def _shown(value: Any) -> Any:
    """A value as the report shows it: text as it is, lists and objects as JSON."""
    if value is None or isinstance(value, str | bool):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


@dataclass
class ChunkProfile:
    """The columns one file's normalizer counts, chunk by chunk."""

    columns: list[ColumnCounts]

    def add(self, raw: dict[str, list[Any]]) -> None:
        """Count a chunk's cells, by header (as the reader gives them)."""
        for column in self.columns:
            column.add(raw[column.column])


#: Version-1 row fields profiled (enums, codes, ids), and those holding other ids.
_V1_PROFILED = frozenset(
    {
        "patientId",
        "scope",
        "category",
        "status",
        "provisionType",
        "purpose",
        "performerId",
        "organizationId",
        "sourceReferenceId",
        "verifiedWith",
    }
)
_V1_IDS = frozenset({"performerId", "organizationId", "sourceReferenceId", "verifiedWith"})
_V2_IDS = frozenset(
    {"performerId", "organizationId", "sourceReferenceId", "verification.verifiedWith"}
)
_V2_ENUMS = frozenset({"scope", "status", "patientId"})


def profile_file(profile: ValuesProfile, owner: _FileNormalizer) -> ChunkProfile:
    """Register one file's profiled columns (version-1 fields, version-2 column specs)
    and give the counter its normalizer feeds with each chunk."""
    mapping = owner.mapping
    wanted: dict[tuple[str, str], None] = {}
    for name, header in owner.columns.items():
        if name in _V1_PROFILED or name in mapping.values:
            profile.column(name, header, _v1_translate(owner, name), holds_id=name in _V1_IDS)
            wanted[(name, header)] = None
    for plan in owner.v2_rows.consents:
        for spec in plan.specs:
            if spec.source != "column" or not _profiled(spec):
                continue
            header = owner.headers.get(spec.columns[0], spec.columns[0])
            name = spec.path.plain
            holds_id = name in _V2_IDS and spec.crosswalk is None
            profile.column(name, header, _v2_translate(owner, spec), holds_id=holds_id)
            wanted[(name, header)] = None
    return profile.chunk_counter(list(wanted))


def _profiled(spec: Spec) -> bool:
    leaf = spec.path.steps[-1][0]
    return (
        spec.map is not None
        or spec.crosswalk is not None
        or spec.path.kind in (CODES, LIST, REFS)
        or spec.path.plain in _V2_IDS
        or spec.path.plain in _V2_ENUMS
        or leaf in ("type", "role", "reference")
    )


def _v1_translate(owner: _FileNormalizer, name: str) -> Translate:
    crosswalk = owner.mapping.crosswalk if name == "patientId" else None

    def translate(cells: list[str]) -> list[tuple[Any, str | None]]:
        # As the normalizer prepares the column (trimmed, translated, defaulted), without
        # touching the unmapped rows it keeps for the chunk being read.
        saved, owner._unmapped_rows = owner._unmapped_rows, None
        try:
            prepared = owner._column({owner.columns[name]: cells}, name, len(cells))
        finally:
            owner._unmapped_rows = saved
        out: list[tuple[Any, str | None]] = []
        for text in prepared:
            if text == UNMAPPED_CELL:
                out.append((None, UNMAPPED))
            elif not text:
                out.append((None, None))
            elif crosswalk is not None:
                found = crosswalk.get(text)
                out.append((found, None if found else "unknown_patient"))
            else:
                out.append((text, None))
        return out

    return translate


def _v2_translate(owner: _FileNormalizer, spec: Spec) -> Translate:
    # A patient id from [fields] goes through [patients] unless it names its own crosswalk.
    implicit = owner.mapping.crosswalk if spec.path.plain == "patientId" else None
    if spec.crosswalk is not None:
        implicit = None

    def translate(cells: list[str]) -> list[tuple[Any, str | None]]:
        texts = owner._cells(cells)
        values = evaluate(spec, {spec.columns[0]: texts}, len(texts), None, owner._constant_date)
        out: list[tuple[Any, str | None]] = []
        for value, _, code in values:
            if implicit is not None and isinstance(value, str):
                found = implicit.get(value)
                out.append((found, None if found else "unknown_patient"))
            else:
                out.append((value, code))
        return out

    return translate


#: The API field each FHIR reference path feeding an id field sends.
_FHIR_ID_FIELDS = {
    "performer": "performerId",
    "organization": "organizationId",
    "sourceReference": "sourceReferenceId",
    "verification.verifiedWith": "verification.verifiedWith",
}


def fhir_id_warnings(ids: dict[str, Counter[str]]) -> list[str]:
    """FHIR input's id fields whose ids (as sent, after any crosswalk) do not look like
    ClinikAPI ids, as `ValuesProfile.warnings` says of a CSV column. Paths only: ids are PHI."""
    out = []
    for path, seen in ids.items():
        odd = [value for value in seen if not CLINIK_ID.fullmatch(value)]
        if not odd:
            continue
        rows = sum(seen[value] for value in odd)
        field = _FHIR_ID_FIELDS.get(path, path)
        key = path if "." not in path else f'"{path}"'
        out.append(
            f"{field} (FHIR {path}): {len(odd)} of its {len(seen)} distinct ids profiled "
            f"({rows:,} resources) do not look like ClinikAPI ids (prefix_…, such as pt_… or "
            "org_…); legacy ids need a crosswalk: [crosswalks.NAME], then [fhir] crosswalks "
            f'= {{ {key} = "NAME" }}'
        )
    return out


def fhir_elements(summary: ValidationSummary) -> list[dict[str, Any]]:
    """FHIR input's elements without a ClinikAPI field (`unsupported_element`), one entry
    a path, in the profile's shape: what `[fhir] rename` or `drop` would have to say."""
    return [
        {
            "field": path,
            "column": "FHIR element",
            "distinct": 1,
            "other_rows": 0,
            "values": [
                {"value": path, "count": count, "became": None, "error": "unsupported_element"}
            ],
        }
        for path, count in summary.fhir_unsupported.most_common()
    ]
