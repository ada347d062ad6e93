"""Mapping version 2: body paths, source specs, row conditions, and assembling bodies.

A version-2 mapping names any path of the consent body (`provision.provision[0].purpose`)
and says where its value comes from: a column, several columns joined, a template over
columns, or a constant, with modifiers (`map`, `split`, `default`, `formats`, `system`).
This module parses and checks those parts of a mapping file, and turns one row's values
into the nested body.

Values are evaluated a column at a time over a chunk (`evaluate`), so a spec costs one
pass over its cells; the per-row part only puts values into place (`Shape`).

The constants-alone rule: an object below the body's top level (`verification`,
`provision`, `provision.provision[0]`, a policy, an actor…) is sent only when at least one
of its values came from a non-empty cell. A mapping that sets `provision.provision[0].type
= {value = "deny"}` for an opt-out column therefore never sends a blanket deny for a row
whose opt-out cell is empty.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from importer._errors import ConfigError, no_unknown_keys

# --- the body's shape --------------------------------------------------------------------

#: Leaf kinds: what a path holds and how a source value becomes it.
TEXT: Final = "text"  # a string (ids, enums, uris: the models check them)
DATE: Final = "date"  # a date-time, read like a date cell
BOOL: Final = "bool"  # true/false (Y/N, yes/no, 1/0 from cells)
CODES: Final = "codes"  # a list of codings, from codes (`system|code` carries its system)
REFS: Final = "refs"  # a list of {reference}
LIST: Final = "list"  # a list of strings (category)


@dataclass(frozen=True)
class ListOf:
    """A list of objects; `leaf` is the kind a path naming the list itself takes, if any."""

    item: dict[str, Any]
    leaf: str | None = None


_PERIOD: dict[str, Any] = {"start": DATE, "end": DATE}
_CODING: dict[str, Any] = {"system": TEXT, "code": TEXT, "display": TEXT}
_CODINGS = ListOf(_CODING, CODES)
PROVISION: dict[str, Any] = {
    "type": TEXT,
    "period": _PERIOD,
    "actor": ListOf({"role": TEXT, "reference": TEXT}),
    "action": _CODINGS,
    "securityLabel": _CODINGS,
    "purpose": _CODINGS,
    "class": _CODINGS,
    "dataPeriod": _PERIOD,
    "data": ListOf({"reference": TEXT}, REFS),
}
PROVISION["provision"] = ListOf(PROVISION)  # nested exceptions, to any depth
_VERIFICATION: dict[str, Any] = {"verified": BOOL, "verifiedWith": TEXT, "verificationDate": DATE}
#: The body of `POST /v1/consents` (importer.intake._models.ConsentIn), by camelCase name.
BODY: dict[str, Any] = {
    "patientId": TEXT,
    "scope": TEXT,
    "category": LIST,
    "status": TEXT,
    "dateTime": DATE,
    "performerId": TEXT,
    "organizationId": TEXT,
    "policyUri": TEXT,
    "policies": ListOf({"authority": TEXT, "uri": TEXT}),
    "policyRule": TEXT,
    "sourceAttachment": {"contentType": TEXT, "data": TEXT, "url": TEXT, "title": TEXT},
    "sourceReferenceId": TEXT,
    # One object (`verification.verified`) or a list (`verification[0].verified`).
    "verification": _VERIFICATION,
    "provision": PROVISION,
}
#: Paths whose object may also be written as a list item.
_ALSO_LIST = {"verification": ListOf(_VERIFICATION)}

#: Version-1 row fields -> the body path each fills.
V1_PATHS: Final = {
    "patientId": "patientId",
    "scope": "scope",
    "category": "category",
    "status": "status",
    "dateTime": "dateTime",
    "performerId": "performerId",
    "organizationId": "organizationId",
    "policyUri": "policyUri",
    "policyRule": "policyRule",
    "sourceReferenceId": "sourceReferenceId",
    "verified": "verification.verified",
    "verifiedWith": "verification.verifiedWith",
    "verificationDate": "verification.verificationDate",
    "provisionType": "provision.type",
    "provisionStart": "provision.period.start",
    "provisionEnd": "provision.period.end",
    "purpose": "provision.purpose",
}

_SEGMENT = re.compile(r"([A-Za-z]+)(?:\[(\d{1,3})\])?")
#: Cell words for true and false (`verified`, `bool` specs), compared case-folded: the one
#: copy, version 1 reads them from here too.
TRUE_WORDS = frozenset({"y", "yes", "true", "t", "1"})
FALSE_WORDS = frozenset({"n", "no", "false", "f", "0"})

Step = tuple[str, int | None]


@dataclass(frozen=True)
class BodyPath:
    """A checked body path: its steps (name, list index or None) and its leaf kind."""

    text: str
    steps: tuple[Step, ...]
    kind: str

    @property
    def plain(self) -> str:
        """The path without list indexes, as row errors name fields."""
        return ".".join(name for name, _ in self.steps)


def toml_key(*parts: str | int) -> str:
    """A TOML dotted key as a user would write it: `fields."provision.type"`, `filter[2]`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
        out += f".{text}" if out else text
    return out


def parse_path(text: str, where: str) -> BodyPath:
    """Check a body path against the body's shape; ConfigError says what is wrong."""
    node: Any = BODY
    steps: list[Step] = []
    done = ""
    segments = text.split(".")
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        match = _SEGMENT.fullmatch(segment)
        if match is None or not isinstance(node, dict) or match.group(1) not in node:
            name = match.group(1) if match else segment
            choices = [f"{done}.{k}" if done else k for k in node] if isinstance(node, dict) else []
            guess = difflib.get_close_matches(f"{done}.{name}" if done else name, choices, n=1)
            hint = f'; did you mean "{guess[0]}"?' if guess else "; see the README's table of paths"
            raise ConfigError(f"{where}: unknown path{hint}")
        name, index_text = match.group(1), match.group(2)
        done = f"{done}.{name}" if done else name
        child = node[name]
        index = int(index_text) if index_text is not None else None
        if index is not None:
            listed = child if isinstance(child, ListOf) else _ALSO_LIST.get(done)
            if listed is None:
                raise ConfigError(f'{where}: "{done}" is not a list; write it without [{index}]')
            child = listed.item
            done += f"[{index}]"
        steps.append((name, index))
        if last:
            if isinstance(child, ListOf):
                if child.leaf is None:
                    fields = ", ".join(child.item)
                    raise ConfigError(
                        f'{where}: "{done}" is a list of objects; name a field of one item, '
                        f'e.g. "{done}[0].{next(iter(child.item))}" (fields: {fields})'
                    )
                return BodyPath(text, tuple(steps), child.leaf)
            if isinstance(child, dict):
                raise ConfigError(
                    f'{where}: "{done}" is an object; name one of its fields ({", ".join(child)})'
                )
            return BodyPath(text, tuple(steps), str(child))
        if isinstance(child, ListOf):
            raise ConfigError(
                f'{where}: "{done}" is a list; name an item, e.g. "{done}[0].'
                f'{segments[position + 1]}"'
            )
        if not isinstance(child, dict):
            raise ConfigError(f'{where}: "{done}" is a value, not an object; end the path there')
        node = child
    raise ConfigError(f"{where}: empty path")  # pragma: no cover - split gives one segment


def overlaps(a: BodyPath, b: BodyPath) -> bool:
    """Whether two paths name the same place, or one lies inside the other."""
    short, long = sorted((a.steps, b.steps), key=len)
    return all(
        x[0] == y[0] and (x[1] is None or y[1] is None or x[1] == y[1])
        for x, y in zip(short, long, strict=False)
    )


# --- conditions (filters and `when`) -----------------------------------------------------

_TESTS = ("in", "not_in", "not_empty", "matches")


@dataclass(frozen=True)
class Condition:
    """A test on one column's cell (trimmed; `in`/`not_in` compare case-folded)."""

    column: str
    test: str
    values: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None

    def holds(self, cells: list[str]) -> list[bool]:
        """For each (trimmed, null-blanked) cell, whether the condition holds."""
        if self.test == "not_empty":
            return [bool(c) for c in cells]
        if self.test == "matches":
            assert self.pattern is not None
            match = self.pattern.fullmatch
            return [match(c) is not None for c in cells]
        inside = self.values
        if self.test == "in":
            return [c.casefold() in inside for c in cells]
        return [c.casefold() not in inside for c in cells]


def parse_condition(table: Any, where: str) -> Condition:
    if not isinstance(table, dict):
        raise ConfigError(f'{where}: must be a table like {{ column = "Type", in = ["X"] }}')
    no_unknown_keys(table, ("column", *_TESTS), where)
    column = table.get("column")
    if not isinstance(column, str) or not column.strip():
        raise ConfigError(f'{where}: needs column = "HEADER", the column to test')
    tests = [t for t in _TESTS if t in table]
    if len(tests) != 1:
        raise ConfigError(
            f"{where}: needs exactly one of in = [...], not_in = [...], not_empty = true, "
            f'matches = "REGEX" (found {len(tests) or "none"})'
        )
    test = tests[0]
    value = table[test]
    if test in ("in", "not_in"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
            raise ConfigError(f"{where}.{test}: must be a non-empty list of strings")
        return Condition(column, test, frozenset(v.strip().casefold() for v in value))
    if test == "not_empty":
        if value is not True:
            raise ConfigError(f"{where}.not_empty: must be true")
        return Condition(column, test)
    if not isinstance(value, str):
        raise ConfigError(f"{where}.matches: must be a regular expression as a string")
    try:
        pattern = re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{where}.matches: not a valid regular expression ({exc})") from None
    return Condition(column, test, pattern=pattern)


# --- source specs ------------------------------------------------------------------------

_SOURCES = ("column", "columns", "template", "value")
#: Text paths that never hold an id (a crosswalk on one is a mistake).
_NOT_IDS = frozenset({"scope", "status", "policyUri", "policyRule", "provision.type"})
_MODIFIERS = ("join", "map", "split", "default", "formats", "system", "unmapped", "crosswalk")
#: `unmapped` takes one of these: an error (the default) or the cell kept as it is.
UNMAPPED_CHOICES = ("error", "keep")
_TEMPLATE = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True)
class Spec:
    """Where one path's value comes from, with its modifiers (see the module docstring)."""

    path: BodyPath
    key: str  # the TOML key, for messages
    source: str  # column, columns, template or value
    columns: tuple[str, ...] = ()
    join: str = " "
    template: str = ""
    value: Any = None
    map: dict[str, Any] | None = None
    map_name: str | None = None  # a [values.NAME] table, filled in by the mapping
    split: str | None = None
    default: Any = None
    formats: tuple[str, ...] | None = None
    system: str | None = None
    cases: tuple[Case, ...] = ()  # source "cases": the first whose `when` holds gives the value
    #: `unmapped = "keep"`: a cell the map does not list is kept as it is (else a row
    #: error `unmapped_value`)
    unmapped_keep: bool = False
    #: `crosswalk = "NAME"`: the value is looked up there (filled in by the mapping)
    crosswalk_name: str | None = None
    #: the crosswalk's table, legacy id -> ClinikAPI id; its ids are PHI (the mapping's
    #: digest adds the crosswalks itself)
    crosswalk: dict[str, str] | None = field(default=None, repr=False)

    @property
    def strict(self) -> bool:
        """Whether a non-empty cell its map does not list is an error."""
        return self.map is not None and not self.unmapped_keep

    @property
    def headers(self) -> tuple[str, ...]:
        """Every column header the spec reads."""
        return self.columns

    def named_headers(self) -> list[tuple[str, str]]:
        """(TOML key, header) for every header the spec reads, a case's own key for each."""
        if not self.cases:
            return [(self.key, h) for h in self.columns]
        named = []
        for case in self.cases:
            if case.when is not None:
                named.append((f"{case.spec.key}.when.column", case.when.column))
            named += case.spec.named_headers()
        return named

    @property
    def parts(self) -> tuple[Spec, ...]:
        """The spec and the specs of its cases (each may name a [values.NAME] table)."""
        return (self, *(case.spec for case in self.cases))

    def describe(self) -> str:
        if self.source == "value":
            return "a constant"
        if self.source == "cases":
            return "cases on " + " + ".join(f"column '{c}'" for c in self.columns)
        if self.source == "template":
            return f"template '{self.template}'"
        return " + ".join(f"column '{c}'" for c in self.columns)


def _map_spec(path: BodyPath, table: Any, here: str) -> dict[str, Any]:
    """A spec's `map`: the name of a [values.NAME] table, or an inline table."""
    if isinstance(table, str):
        return {"map_name": table}
    if isinstance(table, dict):
        out: dict[str, Any] = {}
        if "unmapped" in table:  # the option, spelled exactly; "Unmapped" is a value
            out["unmapped_keep"] = unmapped_option(table["unmapped"], f"{here}.map.unmapped")
        out["map"] = {
            str(k).strip().casefold(): _typed(path, v, f"{here}.map.{k}", list_ok=False)
            for k, v in table.items()
            if k != "unmapped"
        }
        return out
    raise ConfigError(
        f'{here}.map: must be an inline table {{ "source" = "api" }} or the name '
        "of a [values.NAME] table"
    )


@dataclass(frozen=True)
class Case:
    """One choice of a `cases` spec: its spec gives the value where `when` holds (no
    `when`: the default, always last)."""

    when: Condition | None
    spec: Spec


def unmapped_option(value: Any, where: str) -> bool:
    """`unmapped = "keep"` (True) or `"error"` (False, the default)."""
    if value not in UNMAPPED_CHOICES:
        raise ConfigError(
            f'{where}: must be "keep" (a value the map does not list is sent as it is) or '
            '"error" (the default: such a cell is a row error unmapped_value)'
        )
    return bool(value == "keep")


def parse_spec(path: BodyPath, raw: Any, key: str, where: str) -> Spec:
    """One `[fields]` entry: a header string, or a table with one source and modifiers."""
    here = f"{where}: {key}"
    if isinstance(raw, dict) and "cases" in raw:
        return _parse_cases(path, raw, key, where)
    if isinstance(raw, str):
        if not raw.strip():
            raise ConfigError(f"{here}: an empty header; name the column")
        return Spec(path, key, "column", columns=(raw,))
    if not isinstance(raw, dict):
        raise ConfigError(
            f'{here}: must be a column header ("Signed Date") or a table such as '
            '{ column = "Signed Date" } or { value = "permit" }'
        )
    no_unknown_keys(raw, (*_SOURCES, *_MODIFIERS), here)
    sources = [s for s in _SOURCES if s in raw]
    if len(sources) != 1:
        raise ConfigError(
            f"{here}: needs exactly one of column, columns, template, value "
            f"(found {', '.join(sources) or 'none'})"
        )
    source = sources[0]
    spec: dict[str, Any] = {"source": source}
    if source == "column":
        spec["columns"] = (_text(raw["column"], f"{here}.column"),)
    elif source == "columns":
        names = raw["columns"]
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n.strip() for n in names)
        ):
            raise ConfigError(f"{here}.columns: must be a non-empty list of column headers")
        spec["columns"] = tuple(names)
    elif source == "template":
        template = _text(raw["template"], f"{here}.template")
        names = tuple(dict.fromkeys(_TEMPLATE.findall(template)))
        if not names:
            raise ConfigError(
                f"{here}.template: names no column; write headers in braces, like "
                '"Organization/{Org ID}" (or use value = for a constant)'
            )
        spec["template"], spec["columns"] = template, names
    else:
        spec["value"] = _typed(path, raw["value"], f"{here}.value", list_ok=True)
    if "join" in raw:
        if source != "columns":
            raise ConfigError(f"{here}.join: only goes with columns = [...]")
        if not isinstance(raw["join"], str):
            raise ConfigError(f"{here}.join: must be a string")
        spec["join"] = raw["join"]
    if "split" in raw:
        if path.kind not in (CODES, REFS, LIST):
            raise ConfigError(f"{here}.split: {path.text} holds one value, not a list")
        spec["split"] = _text(raw["split"], f"{here}.split", strip=False)
    if "map" in raw:
        spec.update(_map_spec(path, raw["map"], here))
    spec.update(_lookups(path, raw, source, here))
    if "default" in raw:
        spec["default"] = _typed(path, raw["default"], f"{here}.default", list_ok=True)
    if "formats" in raw:
        if path.kind != DATE:
            raise ConfigError(f"{here}.formats: {path.text} is not a date-time")
        formats = raw["formats"]
        if not isinstance(formats, list) or not all(isinstance(f, str) and f for f in formats):
            raise ConfigError(f"{here}.formats: must be a list of strptime formats")
        spec["formats"] = tuple(formats)
    if "system" in raw:
        if path.kind != CODES:
            raise ConfigError(
                f"{here}.system: {path.text} is not a coding (action, securityLabel, "
                "purpose, class)"
            )
        spec["system"] = _text(raw["system"], f"{here}.system")
    return Spec(path, key, **spec)


def _parse_cases(path: BodyPath, raw: dict[str, Any], key: str, where: str) -> Spec:
    """`{ cases = [ { when = {...}, <spec> }, ..., { <spec> } ] }`: the first case whose
    `when` holds gives the value; a case without `when` is the default and comes last."""
    here = f"{where}: {key}"
    no_unknown_keys(raw, ("cases", "formats"), here)
    cases = raw["cases"]
    if not isinstance(cases, list) or not cases:
        raise ConfigError(
            f"{here}.cases: must be a non-empty list of tables such as "
            '{ when = { column = "Withdrawn", not_empty = true }, value = "inactive" }'
        )
    formats = None
    if "formats" in raw:
        # Parsed like a spec's own `formats`; the cases share one date reading.
        formats = parse_spec(path, {"value": "", "formats": raw["formats"]}, key, where).formats
    parsed: list[Case] = []
    # The columns giving values first: a row error's report cell is the first column's.
    headers: dict[str, None] = {}
    tested: dict[str, None] = {}
    for number, table in enumerate(cases, start=1):
        at = f"{key}.cases[{number}]"
        if not isinstance(table, dict):
            raise ConfigError(f'{where}: {at}: must be a table such as {{ column = "H" }}')
        if parsed and parsed[-1].when is None:
            raise ConfigError(
                f"{where}: {at}: comes after a case without `when` (the default), so it is "
                "never used; put the default last"
            )
        for name in ("cases", "formats"):
            if name in table:
                where_to = "beside cases = [...]" if name == "formats" else "in one list"
                raise ConfigError(f"{where}: {at}.{name}: not inside a case; put it {where_to}")
        own = {k: v for k, v in table.items() if k != "when"}
        when = None
        if "when" in table:
            when = parse_condition(table["when"], f"{where}: {at}.when")
            tested[when.column] = None
        spec = parse_spec(path, own, at, where)
        headers.update(dict.fromkeys(spec.columns))
        parsed.append(Case(when, spec))
    columns = tuple({**headers, **tested})
    return Spec(path, key, "cases", columns=columns, formats=formats, cases=tuple(parsed))


def _lookups(path: BodyPath, raw: dict[str, Any], source: str, here: str) -> dict[str, Any]:
    """A spec's `unmapped` and `crosswalk` modifiers."""
    out: dict[str, Any] = {}
    if "unmapped" in raw:
        if "map" not in raw:
            raise ConfigError(f"{here}.unmapped: only goes with map = ...")
        out["unmapped_keep"] = unmapped_option(raw["unmapped"], f"{here}.unmapped")
    if "crosswalk" in raw:
        if source == "value":
            raise ConfigError(f"{here}.crosswalk: a constant is not looked up; name a column")
        if path.kind not in (TEXT, REFS, LIST) or (path.kind == TEXT and path.plain in _NOT_IDS):
            raise ConfigError(f"{here}.crosswalk: {path.text} does not hold an id")
        out["crosswalk_name"] = _text(raw["crosswalk"], f"{here}.crosswalk")
    return out


def _typed(path: BodyPath, value: Any, where: str, *, list_ok: bool) -> Any:
    """A constant checked against the path's kind."""
    if path.kind == BOOL:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {path.text} takes true or false")
        return value
    if path.kind in (CODES, REFS, LIST) and list_ok and isinstance(value, list):
        if not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"{where}: must be a non-empty string or list of strings")
        return [v.strip() for v in value]
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {path.text} takes a string")
    return value.strip()


def _text(value: Any, where: str, *, strip: bool = True) -> str:
    if not isinstance(value, str) or not (value.strip() if strip else value):
        raise ConfigError(f"{where}: must be a non-empty string")
    return value


@dataclass(frozen=True)
class ConsentSpec:
    """One `[[consents]]` table: a consent made from a row where `when` holds."""

    key: str
    when: Condition | None
    fields: dict[str, Spec] = field(default_factory=dict)


# --- evaluation ------------------------------------------------------------------------

#: What a spec gives for one row: (value or None when empty, whether it came from a cell,
#: an error code when the cell could not be read).
Value = tuple[Any, bool, str | None]
_EMPTY: Value = (None, False, None)


def evaluate(
    spec: Spec,
    cells: dict[str, list[str]],
    size: int,
    parse_date: Callable[[list[str]], list[datetime | None]] | None,
    parse_constant: Callable[[str], datetime | None],
) -> list[Value]:
    """The spec's value for every row of a chunk; `cells` are trimmed, null-blanked cells
    by the spec's own header names. `parse_date` reads a date column as a whole;
    `parse_constant` reads a date written in the mapping (a value, a default, a map)."""
    if spec.source == "cases":
        return _choose(spec, cells, size, parse_date, parse_constant)
    if spec.source == "value":
        texts: list[str] = [""] * size
    elif spec.source == "column":
        texts = cells[spec.columns[0]]
    elif spec.source == "columns":
        parts = [cells[c] for c in spec.columns]
        texts = [spec.join.join(p for p in row if p) for row in zip(*parts, strict=True)]
    else:
        parts = [cells[c] for c in spec.columns]
        names = spec.columns
        template = spec.template
        texts = []
        for row in zip(*parts, strict=True):
            if all(row):
                filled = template
                for name, cell in zip(names, row, strict=True):
                    filled = filled.replace("{" + name + "}", cell)
                texts.append(filled)
            else:
                texts.append("")
    kind = spec.path.kind
    mapped = spec.map or {}
    # What an empty result gives: the same value for every such row, made once.
    fill: Any = spec.value if spec.source == "value" else mapped.get("")
    if fill is None:
        fill = spec.default
    empty = _EMPTY if fill is None else _convert_constant(spec, fill, parse_constant)
    if spec.source == "value":
        return [empty] * size
    if kind == DATE:
        dates = parse_date(texts) if parse_date is not None else [None] * size
        out: list[Value] = []
        for text, moment in zip(texts, dates, strict=True):
            if not text:
                out.append(empty)
            elif mapped and text.casefold() in mapped:
                got = mapped[text.casefold()]
                out.append(_convert_constant(spec, got, parse_constant, from_cell=True))
            elif spec.strict:
                out.append((None, True, UNMAPPED))
            else:
                out.append(
                    (moment, True, None) if moment is not None else (None, True, "invalid_date")
                )
        return out
    # One conversion per distinct text; rows share the result (fastcheck relies on it).
    cache: dict[str, Value] = {"": empty}
    for text in set(texts):
        if text not in cache:
            cache[text] = _convert_cell(spec, text, mapped)
    return [cache[text] for text in texts]


def _choose(
    spec: Spec,
    cells: dict[str, list[str]],
    size: int,
    parse_date: Callable[[list[str]], list[datetime | None]] | None,
    parse_constant: Callable[[str], datetime | None],
) -> list[Value]:
    """A `cases` spec over a chunk: each case evaluated column-wise, then per row the
    value of the first case whose `when` holds; none holds and no default: empty."""
    out: list[Value] = [_EMPTY] * size
    open_rows = list(range(size))
    for case in spec.cases:
        if not open_rows:
            break
        values = evaluate(case.spec, cells, size, parse_date, parse_constant)
        if case.when is None:
            for pos in open_rows:
                out[pos] = values[pos]
            break
        holds = case.when.holds(cells[case.when.column])
        left = []
        for pos in open_rows:
            if holds[pos]:
                out[pos] = values[pos]
            else:
                left.append(pos)
        open_rows = left
    return out


#: The row error of a non-empty cell its map does not list.
UNMAPPED: Final = "unmapped_value"


def _convert_cell(spec: Spec, text: str, mapped: dict[str, Any]) -> Value:
    kind = spec.path.kind
    strict = spec.strict
    crosswalk = spec.crosswalk
    if kind in (CODES, REFS, LIST):
        items = split_codes(text, spec.split) if spec.split else [text]
        values: list[str] = []
        for item in items:
            if not item:
                continue
            folded = item.casefold()
            if strict and folded not in mapped:
                return None, True, UNMAPPED
            got = mapped.get(folded, item)
            values.extend(got if isinstance(got, list) else [str(got)])
        if crosswalk is not None:
            found = [crosswalk.get(v) for v in values]
            if None in found:
                return None, True, unknown_code(spec)
            values = [v for v in found if v is not None]
        if not values:
            return _EMPTY
        return _as_kind(spec, values), True, None
    folded = text.casefold()
    if strict and folded not in mapped:
        return None, True, UNMAPPED
    got = mapped.get(folded, text)
    if crosswalk is not None and got != "":
        resolved = crosswalk.get(str(got))
        if resolved is None:
            return None, True, unknown_code(spec)
        got = resolved
    if kind == BOOL:
        if isinstance(got, bool):
            return got, True, None
        word = str(got).casefold()
        if word in TRUE_WORDS:
            return True, True, None
        if word in FALSE_WORDS:
            return False, True, None
        return None, True, "invalid_boolean"
    return (got if got != "" else None), True, None


def _convert_constant(
    spec: Spec,
    value: Any,
    parse_constant: Callable[[str], datetime | None],
    *,
    from_cell: bool = False,
) -> Value:
    kind = spec.path.kind
    if kind == DATE:
        moment = parse_constant(str(value))
        return (moment, from_cell, None) if moment is not None else (None, True, "invalid_date")
    if kind in (CODES, REFS, LIST):
        items = value if isinstance(value, list) else [value]
        return _as_kind(spec, items), from_cell, None
    return value, from_cell, None


def _as_kind(spec: Spec, items: list[str]) -> Any:
    kind = spec.path.kind
    if kind == LIST:
        return items
    if kind == REFS:
        return [{"reference": item} for item in items]
    return [coding(item, spec.system) for item in items]


def coding(item: str, system: str | None = None) -> dict[str, str]:
    """A coding from a code; `system|code` carries its own system (else `system`)."""
    own, bar, code = item.rpartition("|")
    if bar and own.strip():
        return {"system": own.strip(), "code": code.strip()}
    if system:
        return {"system": system, "code": item}
    return {"code": item}


def unknown_code(spec: Spec) -> str:
    """The row error of a value its crosswalk lacks (or has a blank target for)."""
    return "unknown_patient" if spec.path.plain == "patientId" else "unknown_id"


#: A coding system written before `|`: a URL or a URN (`http://…`, `urn:oid:…`); a code
#: such as `hipaa:notice` is not one.
_SYSTEM_URI = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://|[Uu][Rr][Nn]:)\S+")


def split_codes(text: str, separator: str | None = None) -> list[str]:
    """The codes of a multi-value cell, stripped, empty ones dropped: split on
    `separator`, or on `;` and `|` when None. A `system|code` pair stays one code: a
    `|` right after a URI (`http://…|HRESCH`) joins, it does not split."""
    if "|" not in text or ":" not in text:
        seps = separator if separator is not None else None
        parts = text.split(seps) if seps is not None else _SPLIT_BOTH.split(text)
        return [p.strip() for p in parts if p.strip()]
    pattern = re.escape(separator) if separator is not None else "[;|]"
    parts = re.split(f"({pattern})", text)
    items: list[str] = []
    glue = False
    for i in range(0, len(parts), 2):
        token = parts[i].strip()
        if glue and token:
            items[-1] += "|" + token
            glue = False
            continue
        glue = False
        if token:
            items.append(token)
            after = parts[i + 1] if i + 1 < len(parts) else ""
            glue = after == "|" and _SYSTEM_URI.fullmatch(token) is not None
    return items


_SPLIT_BOTH = re.compile(r"[;|]")


# --- assembling a body ------------------------------------------------------------------

_OBJECT: Final = 0
_LIST: Final = 1
#: A compiled body tree: a leaf is the index of a spec's value; an object is
#: (_OBJECT, ((name, child), ...)); a list is (_LIST, (item object, ...)) in index order.
Node = Any


class Shape:
    """A set of specs compiled into the body's tree, to build each row's body in one pass.

    `build` applies the constants-alone rule: an object below the top level is kept only
    when it holds at least one value from a non-empty cell (its own or a nested one);
    lists keep their non-empty items in index order (`policies[2]` alone becomes the
    first policy).
    """

    def __init__(self, specs: list[Spec]) -> None:
        root: dict[str, Any] = {}
        for number, spec in enumerate(specs):
            node = root
            *parents, (leaf, _) = spec.path.steps
            for name, index in parents:
                if index is None:
                    node = node.setdefault(name, {})
                else:
                    items = node.setdefault(name, {_LIST_MARK: True})
                    node = items.setdefault(index, {})
            node[leaf] = number
        self.root: tuple[tuple[str, Node], ...] = _compile(root)[1]

    def build(self, values: tuple[Value, ...]) -> dict[str, Any]:
        """The body part the specs make from one row's values (top level always kept)."""
        body, _ = _build(self.root, values, top=True)
        return body or {}


_LIST_MARK: Final = "\x00list"


def _compile(tree: dict[Any, Any]) -> Node:
    if _LIST_MARK in tree:
        items = sorted((k, v) for k, v in tree.items() if k != _LIST_MARK)
        return (_LIST, tuple(_compile(v) for _, v in items))
    return (
        _OBJECT,
        tuple(
            (name, child if isinstance(child, int) else _compile(child))
            for name, child in tree.items()
        ),
    )


def _build(
    items: tuple[tuple[str, Node], ...], values: tuple[Value, ...], *, top: bool = False
) -> tuple[dict[str, Any] | None, bool]:
    out: dict[str, Any] = {}
    live = False
    for name, child in items:
        if type(child) is int:
            value, from_cell, _ = values[child]
            if value is not None:
                out[name] = value
                live = live or from_cell
        elif child[0] == _OBJECT:
            sub, sub_live = _build(child[1], values)
            if sub is not None:
                out[name] = sub
                live = live or sub_live
        else:
            kept = []
            for item in child[1]:
                sub, sub_live = _build(item[1], values)
                if sub is not None:
                    kept.append(sub)
                    live = live or sub_live
            if kept:
                out[name] = kept
    if not top and (not out or not live):
        return None, False
    return out, live


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra`'s fields added to `base` (a version-1 body), objects merged field by field."""
    for name, value in extra.items():
        mine = base.get(name)
        if isinstance(mine, dict) and isinstance(value, dict):
            merge(mine, value)
        else:
            base[name] = value
    return base


def match_header(headers: Iterable[str], name: str) -> str | None:
    """The file's header for a mapping's name: exact, else after trimming and case-folding."""
    headers = list(headers)
    if name in headers:
        return name
    folded = name.strip().casefold()
    return next((h for h in headers if h.strip().casefold() == folded), None)


def header_hint(headers: Iterable[str], name: str) -> str:
    """ "; did you mean 'X'?" for a close header, else "". Only close matches are echoed:
    in a file without a header row the "headers" are a patient's values."""
    folded = {h.casefold(): h for h in headers}
    guess = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.75)
    return f"; did you mean '{folded[guess[0]]}'?" if guess else ""
