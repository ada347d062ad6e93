"""`init`: a starting mapping for a new export, written from what the file shows.

It detects how to read the file (encoding, delimiter, the header row under title lines,
the sheet holding the data, date formats), puts every recognised column under
`[columns]` and every other one in a comment, and lists the distinct values of the
columns feeding `scope`, `status`, `category` and `provisionType` under `[values.FIELD]`
to translate. A required field it cannot place gets an empty default, which makes every
row invalid (exit 1) with a message naming it, rather than a guess sent to the API; a value
it cannot translate is listed as a comment, so it stays as it is (and invalid) until a
person says what it means. A patient column holding legacy ids (not `pt_…`) is resolved
through a crosswalk: one found next to the file, or a TODO file name that stops `validate`
(exit 2) until it is filled in.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from importer._errors import ConfigError, InputError, UsageError
from importer._mapping import (
    _RECOGNISED,
    DATE_FIELDS,
    REQUIRED_FIELDS,
    canonical_header,
    load_crosswalk,
)
from importer._models import PATIENT_ID_PATTERN, ProvisionType, Scope, Status
from importer._normalize import MULTI_VALUE_FIELDS, date_families, split_codes
from importer._reader import EXCEL_SUFFIXES, SourceOptions, Table, open_table

#: Fields whose values are translated, with the values the API takes.
_ENUM_FIELDS = {
    "scope": [m.value for m in Scope],
    "status": [m.value for m in Status],
    "category": [],
    "provisionType": [m.value for m in ProvisionType],
}
_MAX_VALUES = 50
_CODE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_SAMPLE_ROWS = 5000
#: Words in a header that suggest a field, tried when no synonym matches.
_HINTS = (
    ("patientId", ("mrn", "patient", "medicalrecord", "participant")),
    ("status", ("status", "state")),
    ("scope", ("consenttype", "formtype", "type", "scope")),
    ("dateTime", ("signed", "consentdate", "date")),
    ("sourceKey", ("recordid", "consentid", "legacyid")),
)
#: Date formats tried on date columns, in families (month-first before day-first).
_DATE_FORMATS = (
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y",
    "%m/%d/%y",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%d/%m/%Y",
    "%d.%m.%Y %H:%M",
    "%d.%m.%Y",
    "%m-%d-%Y",
    "%d-%m-%Y",
    "%Y/%m/%d %H:%M",
    "%Y/%m/%d",
    "%Y%m%d",
    "%d %b %Y",
    "%b %d, %Y",
)
_DELIMITERS = (",", ";", "\t", "|")
#: Cell texts exports use for "no value", proposed as `[source] null_values` when seen.
_NULL_WORDS = ("NA", "N/A", "NULL", "-", "#N/A", "None", "nil")
_PATIENT_ID = re.compile(PATIENT_ID_PATTERN)
#: A crosswalk candidate next to the file is read whole: skip files bigger than this.
_CROSSWALK_MAX_BYTES = 20 * 1024 * 1024


@dataclass
class Draft:
    """What init found, ready to be written as TOML."""

    table: Table
    header_row: int | None = None
    columns: dict[str, str] = field(default_factory=dict)  # field -> header
    guessed: set[str] = field(default_factory=set)  # fields placed by a hint, not a synonym
    others: list[str] = field(default_factory=list)
    date_formats: list[str] = field(default_factory=list)
    ambiguous_dates: bool = False
    values: dict[str, list[str]] = field(default_factory=dict)
    too_many: dict[str, int] = field(default_factory=dict)
    null_values: list[str] = field(default_factory=list)
    #: The patient column holds legacy ids (not `pt_…`): they need a crosswalk.
    legacy_patients: bool = False
    crosswalk: Path | None = None  # one found next to the file that maps most of them
    todos: int = 0  # lines marked TODO in the written mapping


def draft_mapping(path: Path) -> Draft:
    """Read the file and work out a starting mapping."""
    if path.suffix.lower() in EXCEL_SUFFIXES:
        table = _open_excel_data_sheet(path)
        header_row = None
    else:
        delimiter, header_row = _csv_shape(path)
        table = open_table(path, SourceOptions(delimiter=delimiter, header_row=header_row))
    draft = Draft(table, header_row)
    _place_columns(draft)
    sample = _sample(table)
    draft.null_values = _find_nulls(sample)
    nulls = {v.casefold() for v in draft.null_values}
    sample = {h: [v for v in cells if v.casefold() not in nulls] for h, cells in sample.items()}
    _find_dates(draft, sample)
    _find_patients(draft, sample, path)
    _find_values(draft, table, nulls)
    return draft


def write_draft(draft: Draft, output: Path) -> str:
    """The mapping as TOML text (written to `output` by the caller)."""
    table = draft.table
    out = [
        f"# Starting mapping for {table.name}, written by `consent-import init`.",
        "# Check every line marked TODO, then: consent-import preview FILE --mapping "
        f"{output.name}",
        "",
        "[source]",
    ]
    if table.sheet is not None:
        out.append(f"sheet = {_q(table.sheet)}")
    if table.encoding is not None:
        out.append(f"encoding = {_q(table.encoding)}")
    if table.delimiter is not None:
        out.append(f"delimiter = {_q(table.delimiter)}")
    if draft.header_row is not None:
        note = "   # the lines above are titles" if draft.header_row > 1 else ""
        out.append(f"header_row = {draft.header_row}{note}")
    if draft.date_formats:
        note = (
            "   # TODO: day-first or month-first? every date read either way"
            if draft.ambiguous_dates
            else ""
        )
        out.append(f"date_formats = [{', '.join(_q(f) for f in draft.date_formats)}]{note}")
    out.append('# timezone = "UTC"   # the zone of date-times written without an offset')
    if draft.null_values:
        words = ", ".join(_q(v) for v in draft.null_values)
        out.append(f"null_values = [{words}]   # TODO: seen in the file; cells read as empty")
    else:
        out.append('# null_values = ["NA", "NULL"]   # cells read as empty')
    out += ["", "[columns]   # API field = column header"]
    for name, header in draft.columns.items():
        note = "   # TODO: guessed from the header; check" if name in draft.guessed else ""
        out.append(f"{name} = {_q(header)}{note}")
    for header in draft.others:
        out.append(f"# ? = {_q(header)}   # not recognised; name a field, or use [fields]")
    missing = [n for n in REQUIRED_FIELDS if n not in draft.columns]
    if missing:
        out += [
            "",
            "[defaults]   # TODO: required fields without a column: every row is invalid until",
            "             # each is named under [columns] or given a value here",
        ]
        out += [f'{name} = ""' for name in missing]
    out += _patients_section(draft, output)
    for name, values in draft.values.items():
        out += ["", *_values_table(name, values)]
    for name, count in draft.too_many.items():
        out += ["", f"# {name}: more than {count} distinct values; translate with [values.{name}]"]
    draft.todos = sum("TODO" in line for line in out[2:])  # not the "how to use" lines
    return "\n".join(out) + "\n"


def _patients_section(draft: Draft, output: Path) -> list[str]:
    """`[patients]` when the patient column holds legacy ids: never sent as they are."""
    if not draft.legacy_patients:
        return []
    header = draft.columns["patientId"]
    out = [
        "",
        f"[patients]   # TODO: {_q(header)} holds legacy ids, not ClinikAPI patient ids (pt_...):",
        "             # a crosswalk CSV (header row; legacy id, patientId) gives each its patient",
    ]
    if draft.crosswalk is not None:
        name = _relative(draft.crosswalk, output.parent)
        out.append(f"crosswalk = {_q(name)}   # TODO: found next to the file; check it")
    else:
        name = f"TODO-{canonical_header(header) or 'legacy'}_to_patient.csv"
        out.append(f"crosswalk = {_q(name)}   # validate stops (exit 2) until this file exists")
    return out


def _relative(path: Path, folder: Path) -> str:
    """`path` as the mapping names it: relative to the mapping's folder, or absolute."""
    try:
        relative = os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:  # another drive
        return str(path.resolve())
    return str(path.resolve()) if relative.startswith("..") else relative


def _values_table(name: str, values: list[str]) -> list[str]:
    """`[values.NAME]`: values the API takes map to themselves; every other one is listed
    as a comment to fill in (`= TODO`, which is not TOML, so it cannot be uncommented
    unfilled). Left commented, a value stays as it is and the row invalid: an empty
    placeholder would make a present cell look missing, or drop an optional field."""
    allowed = _ENUM_FIELDS[name]
    hint = f"one of: {', '.join(allowed)}" if allowed else "codes such as hipaa-notice"
    out = [f"[values.{name}]   # the API value ({hint}) for each value found"]
    todo = []
    for value in values:
        same = next((a for a in allowed if a == value.casefold()), "")
        if not allowed and _CODE.fullmatch(value):
            same = value  # already a code (category codes are free)
        if same:
            out.append(f"{_q(value)} = {_q(same)}")
        else:
            todo.append(f"# {_q(value)} = TODO")
    if todo:
        out.append("# put the API value in place of TODO, then uncomment:")
    return out + todo


def _q(text: str) -> str:
    """A TOML basic string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
    return f'"{escaped}"'


def _open_excel_data_sheet(path: Path) -> Table:
    """The default sheet when it holds rows under a header, else the first sheet that
    does (a cover sheet first is common)."""
    from python_calamine import CalamineError, CalamineWorkbook

    try:
        table = open_table(path)
    except InputError as exc:
        last: InputError | None = exc
    else:
        if len(table.columns) >= 2:
            return table
        last = None
    try:
        names = CalamineWorkbook.from_path(str(path)).sheet_names
    except CalamineError:  # open_table says what is wrong with the file
        return open_table(path)
    for name in names:
        try:
            table = open_table(path, SourceOptions(sheet=name))
        except InputError as exc:
            last = exc
            continue
        if len(table.columns) >= 2:
            return table
    raise last or InputError(f"{path}: no sheet holds a header row and rows")


def _csv_shape(path: Path) -> tuple[str, int]:
    """(delimiter, 1-based header line): the delimiter splitting the lines most evenly,
    and the first line as wide as most lines (title lines above it are narrower)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(256 * 1024)
    except OSError:
        raw = b""  # open_table below says what is wrong
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")("strict").decode(raw, False)
    except UnicodeDecodeError:
        text = raw.decode("cp1252", "replace")
    lines = text.splitlines()[:200]
    best: tuple[float, int, str, int] | None = None
    for delimiter in _DELIMITERS:
        widths = [len(r) for r in csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)]
        filled = [w for w in widths if w > 1]
        if not filled:
            continue
        width, count = Counter(filled).most_common(1)[0]
        header = next(i for i, w in enumerate(widths) if w == width) + 1
        score = (count / len(widths), width, delimiter, header)
        if best is None or score[:2] > best[:2]:
            best = score
    if best is None:
        table = open_table(path)
        return table.delimiter or ",", table.header_row
    return best[2], best[3]


def _place_columns(draft: Draft) -> None:
    for header in draft.table.columns:
        name = _RECOGNISED.get(canonical_header(header))
        if name is not None and name not in draft.columns:
            draft.columns[name] = header
    for header in draft.table.columns:
        if header in draft.columns.values():
            continue
        folded = canonical_header(header)
        for name, words in _HINTS:
            if name not in draft.columns and any(w in folded for w in words):
                draft.columns[name] = header
                draft.guessed.add(name)
                break
        else:
            draft.others.append(header)
    if "scope" in draft.columns and "category" not in draft.columns:
        # A consent-type column usually says both what the consent is about and its kind.
        draft.columns["category"] = draft.columns["scope"]
        if "scope" in draft.guessed:
            draft.guessed.add("category")


def _sample(table: Table) -> dict[str, list[str]]:
    cells: dict[str, list[str]] = {h: [] for h in table.columns}
    taken = 0
    for chunk in table.chunks():
        for header in table.columns:
            cells[header] += [str(v).strip() for v in chunk[header].tolist()]
        taken += len(chunk)
        if taken >= _SAMPLE_ROWS:
            break
    return cells


def _find_dates(draft: Draft, sample: dict[str, list[str]]) -> None:
    """Formats reading the date columns' cells that are not ISO 8601."""
    texts: list[str] = []
    for name in DATE_FIELDS:
        header = draft.columns.get(name)
        if header is not None:
            texts += [t for t in sample[header] if t and not _is_iso(t)]
    if not texts:
        return
    reads = {fmt: sum(_reads(fmt, t) for t in texts) for fmt in _DATE_FORMATS}
    # One family (day/month/year order) per column: see normalize.DateColumn.
    scored = sorted(date_families(_DATE_FORMATS), key=lambda f: -sum(reads[x] for x in f))
    formats = scored[0]
    total = sum(reads[f] for f in formats)
    if total == 0:
        return
    draft.date_formats = [f for f in formats if reads[f]]
    draft.ambiguous_dates = any(sum(reads[f] for f in other) == total for other in scored[1:])


def _reads(fmt: str, text: str) -> bool:
    try:
        datetime.strptime(text, fmt)
    except ValueError:
        return False
    return True


def _is_iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _find_nulls(sample: dict[str, list[str]]) -> list[str]:
    """The usual "no value" words the cells use, as first written (matched case-folded)."""
    words = {w.casefold() for w in _NULL_WORDS}
    seen: dict[str, str] = {}
    for cells in sample.values():
        for text in cells:
            if text.casefold() in words:
                seen.setdefault(text.casefold(), text)
    return list(seen.values())


def _find_patients(draft: Draft, sample: dict[str, list[str]], path: Path) -> None:
    """Whether the patient column holds legacy ids (most are not `pt_…`), and a crosswalk
    next to the file that maps most of them."""
    header = draft.columns.get("patientId")
    if header is None:
        return
    ids = {v for v in sample[header] if v}
    if not ids or sum(_PATIENT_ID.fullmatch(v) is not None for v in ids) * 2 > len(ids):
        return
    draft.legacy_patients = True
    best = 0
    for candidate in sorted(path.parent.glob("*.csv")):
        if candidate.resolve() == path.resolve():
            continue
        try:
            if candidate.stat().st_size > _CROSSWALK_MAX_BYTES:
                continue
            crosswalk = load_crosswalk(candidate)
        except (ConfigError, OSError):
            continue  # not a crosswalk
        known = sum(v in crosswalk for v in ids)
        if known * 2 > len(ids) and known > best:
            best, draft.crosswalk = known, candidate


def _find_values(draft: Draft, table: Table, nulls: set[str]) -> None:
    """Distinct values (first seen order, at most 50) of the columns feeding enums; a
    multi-value cell (`a;b`) gives each of its codes, as the normalizer splits it."""
    wanted = {n: h for n, h in draft.columns.items() if n in _ENUM_FIELDS}
    found: dict[str, dict[str, None]] = {n: {} for n in wanted}
    for chunk in table.chunks():
        for name, header in wanted.items():
            if name in draft.too_many:
                continue
            seen = found[name]
            for value in chunk[header].tolist():
                text = str(value).strip()
                if not text or text.casefold() in nulls:
                    continue
                for code in split_codes(text) if name in MULTI_VALUE_FIELDS else [text]:
                    seen.setdefault(code, None)
            if len(seen) > _MAX_VALUES:
                draft.too_many[name] = _MAX_VALUES
        if len(draft.too_many) == len(wanted):
            break
    for name, seen in found.items():
        if name in draft.too_many:
            continue
        folded: dict[str, str] = {}
        for value in seen:
            folded.setdefault(value.casefold(), value)  # [values] keys match case-folded
        draft.values[name] = list(folded.values())


def init_mapping(source: Path, output: Path) -> Draft:
    """Write a starting mapping for `source` to `output`; refuses to overwrite."""
    exists = f"{output}: already exists; init never overwrites a file; choose another --output name"
    if output.exists():
        raise UsageError(exists)
    draft = draft_mapping(source)
    text = write_draft(draft, output)
    try:
        with output.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise UsageError(exists) from None
    except OSError as exc:
        raise UsageError(f"{output}: cannot be written ({exc.strerror})") from None
    return draft
