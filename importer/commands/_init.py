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

Every guess is marked in the written file and said on the terminal (`Draft.notes`, one
line each, naming headers, never cells): a column placed from a word in its header, a
column turned down (a birth date is not the consent time, US state codes are not a
status), a withdrawal column making the status `inactive` (a `cases` spec), the null
values seen, the encoding (written commented out: each night's file is detected again),
and `timezone = "TODO"` when date-times have no offset.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from importer._errors import ConfigError, InputError, UsageError
from importer.commands._column_guess import (
    HINTS,
    Refusal,
    Withdrawal,
    checkbox,
    hint_rank,
    refusal,
    ticked,
    withdrawal,
)
from importer.intake._cells import split_codes
from importer.intake._dates import date_families
from importer.intake._mapping import (
    _RECOGNISED,
    DATE_FIELDS,
    REQUIRED_FIELDS,
    canonical_header,
    load_crosswalk,
)
from importer.intake._models import PATIENT_ID_PATTERN, ProvisionType, Scope, Status
from importer.intake._normalize import MULTI_VALUE_FIELDS
from importer.intake._reader import EXCEL_SUFFIXES, SourceOptions, Table, open_table

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
#: REDCap writes "[not completed]" for an unfinished survey's cells; SAS and Stata ".".
_NULL_WORDS = ("NA", "N/A", "NULL", "-", "#N/A", "None", "nil", "[not completed]", "UNK", ".")
#: Encodings the reader cannot tell without being told: UTF-16 without a byte-order mark
#: is recognised only while the text is mostly ASCII.
_PINNED_ENCODINGS = frozenset({"utf-16-le", "utf-16-be"})
#: Read when a file is neither UTF-8 nor Windows-1252 (every byte is a Latin-1 letter).
_FALLBACK = "latin-1"
_FALLBACK_CODEC = codecs.lookup(_FALLBACK).name  # as the reader names it
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
    crosswalk_headers: tuple[str, str] | None = None  # its (legacy id, patientId) headers
    todos: int = 0  # lines marked TODO in the written mapping
    #: Headers that looked like a field and were turned down.
    refused: list[Refusal] = field(default_factory=list)
    #: A column saying the consent was withdrawn: status "inactive" where it holds.
    withdrawal: Withdrawal | None = None
    #: The status column is a REDCap consent checkbox (ticked: active).
    checkbox: str | None = None
    #: Date columns with cells written without a UTC offset.
    naive_dates: list[str] = field(default_factory=list)
    #: Every guess, one line each, to say on the terminal (headers only, never cells).
    notes: list[str] = field(default_factory=list)


def draft_mapping(path: Path) -> Draft:
    """Read the file and work out a starting mapping."""
    if path.suffix.lower() in EXCEL_SUFFIXES:
        table = _open_excel_data_sheet(path)
        header_row = None
    else:
        delimiter, header_row = _csv_shape(path)
        options = SourceOptions(delimiter=delimiter, header_row=header_row)
        try:
            table = open_table(path, options)
        except InputError as exc:
            # Neither UTF-8 nor Windows-1252: Latin-1 reads any byte, so it is a guess to
            # pin (detection would refuse the file); any other fault stays as it was.
            try:
                table = open_table(path, dataclasses.replace(options, encoding=_FALLBACK))
            except InputError:
                raise exc from None
    draft = Draft(table, header_row)
    sample = _sample(table)
    draft.null_values = _find_nulls(sample)
    nulls = {v.casefold() for v in draft.null_values}
    sample = {h: [v for v in cells if v.casefold() not in nulls] for h, cells in sample.items()}
    _place_columns(draft, sample)
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
        out.append(f"sheet = {_q(table.sheet)}   # guessed: the sheet holding the rows")
    if table.encoding is not None:
        out.append(_encoding_line(table.encoding))
    if table.delimiter is not None:
        out.append(f"delimiter = {_q(table.delimiter)}   # detected")
    if draft.header_row is not None:
        note = "   # detected: the lines above are titles" if draft.header_row > 1 else ""
        out.append(f"header_row = {draft.header_row}{note}")
    if draft.date_formats:
        note = (
            "   # TODO: day-first or month-first? every date read either way"
            if draft.ambiguous_dates
            else "   # detected from the date cells"
        )
        out.append(f"date_formats = [{', '.join(_q(f) for f in draft.date_formats)}]{note}")
    if draft.naive_dates:
        out += [
            'timezone = "TODO"   # TODO: date-times without an offset were seen: the IANA zone',
            '                    # they were written in, e.g. "Europe/Berlin", or "UTC"; the',
            "                    # mapping is refused until it is set",
        ]
    else:
        out.append('# timezone = "UTC"   # the zone of date-times written without an offset')
    if draft.null_values:
        words = ", ".join(_q(v) for v in draft.null_values)
        out.append(f"null_values = [{words}]   # TODO: seen in the file; cells read as empty")
    else:
        out.append('# null_values = ["NA", "NULL"]   # cells read as empty')
    out += ["", "[columns]   # API field = column header"]
    for name, header in draft.columns.items():
        if name == "status" and draft.withdrawal is not None:
            continue  # in [fields], below
        note = "   # TODO: guessed from the header; check" if name in draft.guessed else ""
        out.append(f"{name} = {_q(header)}{note}")
    reasons = {r.header: f"{r.field}? no: it {r.reason}" for r in draft.refused}
    for header in draft.others:
        why = reasons.get(header, "not recognised; name a field, or use [fields]")
        out.append(f"# ? = {_q(header)}   # {why}")
    out += _status_cases(draft)
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
        ticks = name == "status" and draft.checkbox is not None
        out += ["", *_values_table(name, values, checkbox=ticks)]
    for name, count in draft.too_many.items():
        out += ["", f"# {name}: more than {count} distinct values; translate with [values.{name}]"]
    draft.todos = sum("TODO" in line for line in out[2:])  # not the "how to use" lines
    draft.notes = _notes(draft, output)
    return "\n".join(out) + "\n"


def _notes(draft: Draft, output: Path) -> list[str]:
    """Every guess in the written mapping, one line each: headers only, never a cell."""
    table = draft.table
    notes: list[str] = []
    if table.encoding is not None:
        if codecs.lookup(table.encoding).name == _FALLBACK_CODEC:
            how = "guessed: the file is neither UTF-8 nor Windows-1252; pinned"
        elif table.encoding in _PINNED_ENCODINGS:
            how = "detected; pinned (UTF-16 without a byte-order mark is not reliably detected)"
        else:
            how = "detected; written commented out, so each file is detected again"
        notes.append(f"encoding {table.encoding}: {how}")
    if table.delimiter is not None:
        notes.append(f"delimiter {_q(table.delimiter)}: detected")
    if draft.header_row is not None and draft.header_row > 1:
        notes.append(f"header on line {draft.header_row}: the lines above look like titles")
    if table.sheet is not None:
        notes.append(f"sheet {_q(table.sheet)}: the first sheet holding rows under a header")
    if draft.date_formats:
        ways = "; TODO: day-first or month-first? every date reads both ways"
        notes.append(
            f"date_formats {', '.join(draft.date_formats)}: read the date cells"
            + (ways if draft.ambiguous_dates else "")
        )
    if draft.naive_dates:
        naive = list(dict.fromkeys(draft.naive_dates))
        names = ", ".join(f"'{h}'" for h in naive)
        which = f"column {names} has" if len(naive) == 1 else f"columns {names} have"
        notes.append(
            f'timezone = "TODO": {which} date-times without an offset; set [source] '
            'timezone to the IANA zone they were written in (e.g. "Europe/Berlin", or "UTC")'
        )
    if draft.null_values:
        count = len(draft.null_values)
        notes.append(
            f"null_values: {count} word{'s' if count > 1 else ''} for no value seen in the "
            "cells; proposed as read as empty"
        )
    for name, header in draft.columns.items():
        if name not in draft.guessed and not (
            name == "category" and header == draft.columns.get("scope")
        ):
            continue
        if name == "status" and header == draft.checkbox:
            why = "a consent checkbox; a ticked box proposed as active (commented out)"
        elif name == "category" and header == draft.columns.get("scope"):
            why = "the same column as scope (a consent type says both)"
        else:
            why = "guessed from the header"
        notes.append(f"{name} = column '{header}': {why}")
    for refused in draft.refused:
        notes.append(f"not {refused.field}: column '{refused.header}' {refused.reason}")
    if draft.withdrawal is not None:
        how = "a yes there" if draft.withdrawal.yes else "a value there"
        notes.append(
            f"status: column '{draft.withdrawal.header}' tells a withdrawal: {how} makes the "
            'consent "inactive" ([fields] status cases)'
        )
    if draft.legacy_patients:
        header = draft.columns["patientId"]
        where = (
            f"through {_relative(draft.crosswalk, output.parent)} found next to the file; check it"
            if draft.crosswalk is not None
            else "through [patients] crosswalk; name yours (validate stops until then)"
        )
        notes.append(f"patientId: column '{header}' holds legacy ids, not pt_...: resolved {where}")
    return notes


def _encoding_line(encoding: str) -> str:
    """The encoding commented out when the reader finds it again on its own (a night's
    file in cp1252 after a UTF-8 one is read, not refused); pinned when it cannot."""
    if codecs.lookup(encoding).name == _FALLBACK_CODEC:
        return (
            f"encoding = {_q(encoding)}   # TODO: guessed: the file is neither UTF-8 nor "
            "Windows-1252; check accented letters with preview"
        )
    if encoding in _PINNED_ENCODINGS:
        return (
            f"encoding = {_q(encoding)}   # detected; pinned: UTF-16 without a byte-order "
            "mark is not reliably detected"
        )
    return (
        f"# encoding = {_q(encoding)}   # detected; each file is detected again (uncomment to pin)"
    )


def _status_cases(draft: Draft) -> list[str]:
    """`[fields] status` choosing by condition when a withdrawal column was found: a
    withdrawal there makes the consent inactive; otherwise the status column, if any."""
    found = draft.withdrawal
    if found is None:
        return []
    if found.yes:
        words = ", ".join(_q(w) for w in found.yes)
        when = f"{{ column = {_q(found.header)}, in = [{words}] }}"
    else:
        when = f"{{ column = {_q(found.header)}, not_empty = true }}"
    cases = [f'  {{ when = {when}, value = "inactive" }},']
    header = draft.columns.get("status")
    if header is not None:
        mapped = ', map = "status"' if "status" in draft.values else ""
        cases.append(f"  {{ column = {_q(header)}{mapped} }},")
    return [
        "",
        "[fields]",
        f"# TODO: guessed: {_q(found.header)} tells that the consent was withdrawn (inactive);",
        "# the first case whose `when` holds gives the status"
        + (f", else {_q(header)}" if header else "; other rows send none (the server's default)"),
        "status = { cases = [",
        *cases,
        "] }",
    ]


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
    legacy, patient = draft.crosswalk_headers or ("TODO", "TODO")
    if draft.crosswalk is not None:
        name = _relative(draft.crosswalk, output.parent)
        out.append(f"crosswalk = {_q(name)}   # TODO: found next to the file; check it")
    else:
        name = f"TODO-{canonical_header(header) or 'legacy'}_to_patient.csv"
        out.append(f"crosswalk = {_q(name)}   # validate stops (exit 2) until this file exists")
    out += [
        f"# from = {_q(legacy)}   # the crosswalk's column of legacy ids (as in {_q(header)})",
        f"# to = {_q(patient)}   # the crosswalk's column of ClinikAPI patient ids (pt_...)",
    ]
    return out


def _relative(path: Path, folder: Path) -> str:
    """`path` as the mapping names it: relative to the mapping's folder, or absolute."""
    try:
        relative = os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:  # another drive
        return str(path.resolve())
    return str(path.resolve()) if relative.startswith("..") else relative


def _values_table(name: str, values: list[str], *, checkbox: bool = False) -> list[str]:
    """`[values.NAME]`: values the API takes map to themselves; every other one is listed
    as a comment to fill in (`= TODO`, which is not TOML, so it cannot be uncommented
    unfilled). Left commented, a value stays as it is and the row invalid: an empty
    placeholder would make a present cell look missing, or drop an optional field. A
    ticked consent checkbox is proposed as active, commented out all the same."""
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
        elif checkbox and ticked(value):
            todo.append(f'# {_q(value)} = "active"   # TODO: guessed: a ticked consent checkbox')
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


def _place_columns(draft: Draft, sample: dict[str, list[str]]) -> None:
    """Recognised spellings first; then, field by field, the header whose words suggest it
    most strongly and that its cells do not contradict (see importer.commands._column_guess)."""
    headers = draft.table.columns
    for header in headers:
        name = _RECOGNISED.get(canonical_header(header))
        if name is not None and name not in draft.columns:
            draft.columns[name] = header
    placed = set(draft.columns.values())
    for name, _ in HINTS:
        if name in draft.columns:
            continue
        best: tuple[int, str] | None = None
        for header in headers:
            rank = None if header in placed else hint_rank(name, header)
            if rank is None:
                continue
            reason = refusal(name, header, sample[header])
            if reason is not None:
                draft.refused.append(Refusal(header, name, reason))
            elif best is None or rank < best[0]:
                best = (rank, header)
        if best is not None:
            draft.columns[name] = best[1]
            draft.guessed.add(name)
            placed.add(best[1])
    if "status" not in draft.columns:
        box = checkbox(h for h in headers if h not in placed)
        if box is not None:
            draft.columns["status"] = draft.checkbox = box
            draft.guessed.add("status")
            placed.add(box)
    draft.withdrawal = withdrawal((h for h in headers if h not in placed), sample)
    if draft.withdrawal is not None:
        placed.add(draft.withdrawal.header)
    draft.others = [h for h in headers if h not in placed]
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
            if any(t and not _has_offset(t) for t in sample[header]):
                draft.naive_dates.append(header)
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


def _has_offset(text: str) -> bool:
    """Whether a date cell states its UTC offset (only ISO 8601 text can)."""
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


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
    if draft.crosswalk is not None:
        with draft.crosswalk.open(newline="", encoding="utf-8-sig") as handle:
            first = next(csv.reader(handle), [])
        if len(first) >= 2:
            draft.crosswalk_headers = (first[0].strip(), first[1].strip())


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
