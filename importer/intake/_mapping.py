"""The mapping from a legacy export's columns to ClinikAPI consent fields.

Without a mapping file, well-known header spellings are recognised (case, spaces, `_` and
`-` ignored). A TOML mapping file can name columns, translate values, fill defaults, set
how the file is read, and resolve legacy patient ids through a crosswalk.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from importer._errors import ConfigError, no_such_file, no_unknown_keys
from importer.intake._fhir import (
    MAPPED_PATHS,
    FhirOptions,
    FhirTable,
    check_fhir_mapping,
    parse_fhir,
)
from importer.intake._mapping_v2 import (
    V1_PATHS,
    Condition,
    ConsentSpec,
    Spec,
    header_hint,
    match_header,
    overlaps,
    parse_condition,
    parse_path,
    parse_spec,
    toml_key,
    unmapped_option,
)
from importer.intake._models import PATIENT_ID_PATTERN
from importer.intake._reader import SourceOptions, Table, open_table

#: Row fields a column can feed, with the header spellings recognised without a mapping.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "patientId": ("patient_id", "patient"),
    "scope": ("consent_scope",),
    "category": ("categories", "consent_category"),
    "status": (),
    "dateTime": ("date_time", "signed_at", "consent_date"),
    "performerId": ("performer_id",),
    "organizationId": ("organization_id",),
    "policyUri": ("policy_uri", "policy"),
    "policyRule": ("policy_rule",),
    "sourceReferenceId": ("source_reference_id",),
    "verified": (),
    "verifiedWith": ("verified_with",),
    "verificationDate": ("verification_date",),
    "provisionType": ("provision_type",),
    "provisionStart": ("provision_start",),
    "provisionEnd": ("provision_end",),
    "purpose": (),
    "sourceKey": ("source_key", "legacy_id", "consent_id"),
}
FIELDS = tuple(SYNONYMS)
#: The columns of a canonical export, in order (what sample_data/ and the benchmarks write).
CANONICAL_COLUMNS = (
    "sourceKey",
    *(f for f in FIELDS if f not in ("sourceKey", "policyRule", "sourceReferenceId")),
)
#: Fields the API requires; a file must feed each from a column or a default.
REQUIRED_FIELDS = ("patientId", "scope", "category")
#: Fields holding date-times, parsed with the source's timezone and date formats.
DATE_FIELDS = ("dateTime", "verificationDate", "provisionStart", "provisionEnd")

_SECTIONS = {
    *("source", "columns", "values", "defaults", "patients", "filter", "fields", "consents"),
    "fhir",
    "crosswalks",
}
_SOURCE_KEYS = {
    "sheet",
    "encoding",
    "delimiter",
    "key",
    "timezone",
    "date_formats",
    "system",
    "header_row",
    "null_values",
}
#: A source system's name namespaces its keys in the ledger: letters, digits, `_.-`.
_SYSTEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CONSENT_KEYS = {"key", "when", "fields"}
_PATIENTS_KEYS = {"crosswalk", "from", "to"}
_CROSSWALK_KEYS = {"file", "from", "to"}
#: `crosswalk = "patients"` on a spec: the [patients] crosswalk (the performer is the patient).
PATIENTS_CROSSWALK = "patients"
#: A crosswalk's targets: ClinikAPI patient ids, or any ClinikAPI id (`prefix_…`).
_TARGETS = {
    "patient": (re.compile(PATIENT_ID_PATTERN[1:-1]), "a ClinikAPI patient id (pt_…)"),
    "id": (re.compile(r"[a-z][a-z0-9]*_[A-Za-z0-9._-]{1,120}"), "a ClinikAPI id (prefix_…)"),
}


def canonical_header(header: str) -> str:
    """Fold a header for matching: case, spaces, `_` and `-` ignored."""
    return re.sub(r"[\s_\-]+", "", header).casefold()


_RECOGNISED = {
    canonical_header(spelling): name
    for name, spellings in SYNONYMS.items()
    for spelling in (name, *spellings)
}


@dataclass(frozen=True)
class Mapping:
    """Everything a mapping file says; the empty mapping is the default."""

    source: SourceOptions = field(default_factory=SourceOptions)
    key: tuple[str, ...] = ()
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    date_formats: tuple[str, ...] = ()
    columns: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, str | bool]] = field(default_factory=dict)
    defaults: dict[str, str | bool] = field(default_factory=dict)
    crosswalk: dict[str, str] | None = field(default=None, repr=False)  # patient ids: PHI
    path: Path | None = None
    crosswalk_path: Path | None = None
    #: `[source] system`: its rows' keys are namespaced in the ledger by it
    system: str | None = None
    # Version 2 (see importer.intake._mapping_v2).
    null_values: frozenset[str] = frozenset()
    filters: tuple[Condition, ...] = ()
    fields: dict[str, Spec] = field(default_factory=dict)
    consents: tuple[ConsentSpec, ...] = ()
    #: `[fhir]`: how FHIR input's elements without a ClinikAPI field are handled
    fhir: FhirOptions = field(default_factory=FhirOptions)
    #: whether `[source] timezone` names a zone: without one, naive date-times stop
    #: (`timezone` is UTC then, for dates alone); `timezone_todo` is "TODO" when it says so
    timezone_stated: bool = False
    timezone_todo: str = ""
    #: `[values.NAME]` tables with `unmapped = "keep"`: unlisted cells pass as they are
    unmapped_keep: frozenset[str] = frozenset()
    #: `[crosswalks.NAME]` tables as read (legacy id -> ClinikAPI id: PHI)
    crosswalks: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    crosswalk_files: tuple[Path, ...] = ()

    @property
    def builds_v2(self) -> bool:
        """Whether bodies are built by path ([fields] or [[consents]]), not by version 1."""
        return bool(self.fields or self.consents)

    def _v2_paths(self) -> set[str]:
        """Top-level body fields every consent gets from [fields] or its own table."""
        top = {spec.path.steps[0][0] for spec in self.fields.values()}
        if self.consents:
            top |= set.intersection(
                *({s.path.steps[0][0] for s in c.fields.values()} for c in self.consents)
            )
        return top

    def headers_used(self) -> list[tuple[str, str]]:
        """(TOML key, header) for every header the version-2 parts name."""
        used = [(toml_key("filter", i + 1, "column"), f.column) for i, f in enumerate(self.filters)]
        for spec in self.fields.values():
            used += spec.named_headers()
        for number, consent in enumerate(self.consents, start=1):
            if consent.when is not None:
                used.append((toml_key("consents", number, "when", "column"), consent.when.column))
            for spec in consent.fields.values():
                used += spec.named_headers()
        return used

    def header_map(self, headers: list[str], file_name: str) -> dict[str, str]:
        """{name in the mapping: the file's header} for every header the mapping names,
        matched after trimming and case-folding; ConfigError names a missing one."""
        found: dict[str, str] = {}
        where = str(self.path) if self.path else "mapping"
        for key, name in self.headers_used():
            header = match_header(headers, name)
            if header is None:
                raise ConfigError(
                    f"{where}: {key}: column '{name}' is not in {file_name}"
                    f"{header_hint(headers, name)} (check the spelling, and [source] "
                    "header_row if the header is not the first line)"
                )
            found[name] = header
        for column in (*self.columns.values(), *self.key):
            header = match_header(headers, column)
            if header is not None:
                found[column] = header
        return found

    def resolve(self, headers: list[str], file_name: str) -> dict[str, str]:
        """Return {field: header} for one input file.

        Headers match after trimming and case-folding. Raises ConfigError when the mapping
        names a column the file lacks, or when a required field has neither a column nor
        a default.
        """
        for column in (*self.columns.values(), *self.key):
            if match_header(headers, column) is None:
                # The file's own header cells are not echoed (only a close match is): in
                # an export without a header row they are the first patient's values.
                raise ConfigError(
                    f"{file_name}: the mapping names column '{column}', which the file "
                    f"does not have (its header row has {len(headers)} columns; check the "
                    f"name's spelling, and that the file has a header row)"
                    f"{header_hint(headers, column)}"
                )
        self.header_map(headers, file_name)
        resolved = {
            name: match_header(headers, column) or column for name, column in self.columns.items()
        }
        v2_paths = self._v2_paths()
        v2_specs = [*self.fields.values(), *(s for c in self.consents for s in c.fields.values())]
        guessed: dict[str, str] = {}
        for header in headers:
            name = _RECOGNISED.get(canonical_header(header))
            if name is None or name in self.columns:
                continue
            if name in V1_PATHS and any(
                overlaps(parse_path(V1_PATHS[name], file_name), spec.path) for spec in v2_specs
            ):
                continue  # [fields] or [[consents]] fill it
            if name in guessed:
                raise ConfigError(
                    f"{file_name}: columns '{guessed[name]}' and '{header}' both look like "
                    f"'{name}'; name the right one under [columns] in a mapping file"
                )
            guessed[name] = resolved[name] = header
        for name in REQUIRED_FIELDS:
            if name not in resolved and name not in self.defaults and name not in v2_paths:
                spellings = ", ".join((name, *SYNONYMS[name]))
                raise ConfigError(
                    f"{file_name}: no column for required field '{name}' (looked for: "
                    f"{spellings}); name it under [columns] or give it a value under [defaults]"
                )
        return resolved


def open_tables(inputs: Sequence[str | Path], mapping: Mapping) -> list[Table]:
    """Open every input up front, so a bad file or mapping fails before any work."""
    tables = [open_table(path, mapping.source) for path in inputs]
    for table in tables:
        if isinstance(table, FhirTable):  # no columns: the built-in FHIR mapping reads it
            check_fhir_mapping(mapping, table.name)
            continue
        mapping.resolve(table.columns, table.label)
    return tables


def load_mapping(path: str | Path | None) -> Mapping:
    """Read and check a TOML mapping file; None gives the default mapping."""
    if path is None:
        return Mapping()
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(no_such_file("mapping file", path, "check --mapping")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"mapping file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"mapping file {path} is not valid TOML: {exc}") from None
    where = f"mapping file {path}"
    no_unknown_keys(doc, _SECTIONS, where)
    source = _table(doc, "source", where)
    no_unknown_keys(source, _SOURCE_KEYS, f"{where} [source]")
    columns = _string_table(doc, "columns", where, fields=True)
    v2 = _load_v2(doc, source, str(path))
    values, keep = _values(doc, where, extra=v2.map_names)
    defaults = _defaults(doc, where)
    fields, consents = v2.resolve_maps(values, str(path), keep)
    _no_twice(columns, defaults, fields, str(path))
    patients = _table(doc, "patients", where)
    no_unknown_keys(patients, _PATIENTS_KEYS, f"{where} [patients]")
    crosswalk = crosswalk_path = None
    if "crosswalk" in patients:
        crosswalk_path = path.parent / _string(patients["crosswalk"], where, "crosswalk")
        crosswalk = load_crosswalk(
            crosswalk_path,
            source=_optional_string(patients.get("from"), where, "patients.from"),
            target=_optional_string(patients.get("to"), where, "patients.to"),
        )
    elif patients:
        raise ConfigError(f'{where} [patients]: needs crosswalk = "FILE.csv"')
    fhir = parse_fhir(doc.get("fhir", {}), str(path), MAPPED_PATHS)
    named = _named_crosswalks(doc, path, v2, crosswalk, fhir.crosswalks)
    fields, consents = v2.resolve_crosswalks(fields, consents, named, crosswalk, str(path))
    return Mapping(
        source=SourceOptions(
            sheet=_sheet(source.get("sheet"), where),
            encoding=_encoding(source.get("encoding"), where),
            delimiter=_optional_string(source.get("delimiter"), where, "delimiter"),
            header_row=_header_row(source.get("header_row"), str(path)),
        ),
        key=_key(source.get("key"), where),
        timezone=_timezone(_zone_name(source.get("timezone")), where),
        timezone_stated=source.get("timezone") is not None
        and _zone_name(source.get("timezone")) != "TODO",
        timezone_todo="TODO" if _zone_name(source.get("timezone")) == "TODO" else "",
        date_formats=_string_list(source.get("date_formats", []), where, "date_formats"),
        columns=columns,
        values=values,
        defaults=defaults,
        crosswalk=crosswalk,
        path=path,
        null_values=v2.null_values,
        filters=v2.filters,
        fields=fields,
        consents=consents,
        crosswalk_path=crosswalk_path,
        system=_system(source.get("system"), where),
        fhir=fhir,
        unmapped_keep=frozenset(keep),
        crosswalks={name: table for name, (table, _) in named.items()},
        crosswalk_files=tuple(file for _, file in named.values()),
    )


def _named_crosswalks(
    doc: dict[str, Any],
    path: Path,
    v2: _V2,
    patients: dict[str, str] | None,
    fhir: dict[str, str] | None = None,
) -> dict[str, tuple[dict[str, str], Path]]:
    """`[crosswalks.NAME]` tables, each read once, with targets checked as the fields
    using them need (a crosswalk feeding patientId holds `pt_…` ids). `fhir` are the
    `[fhir] crosswalks` (FHIR reference path -> name): they use tables too."""
    where = f"mapping file {path}"
    tables = _table(doc, "crosswalks", where)
    used: dict[str, str] = {}  # name -> "patient" or "id"
    for element, name in (fhir or {}).items():
        key = f'fhir.crosswalks."{element}"'
        if name == PATIENTS_CROSSWALK and name not in tables:
            if patients is None:
                raise ConfigError(
                    f"{path}: {key}: 'patients' is the [patients] crosswalk, and there is "
                    'none; add [patients] crosswalk = "FILE.csv"'
                )
            continue
        if name not in tables:
            known = ", ".join(sorted(tables)) or "none"
            raise ConfigError(
                f"{path}: {key}: no table [crosswalks.{name}] (defined: {known}); add one "
                'with file = "FILE.csv", from = "HEADER", to = "HEADER"'
            )
        used.setdefault(name, "id")
    for spec in v2.specs:
        if spec.crosswalk_name is None:
            continue
        name = spec.crosswalk_name
        if name == PATIENTS_CROSSWALK and name not in tables:
            if patients is None:
                raise ConfigError(
                    f"{path}: {spec.key}.crosswalk: 'patients' is the [patients] crosswalk, "
                    'and there is none; add [patients] crosswalk = "FILE.csv"'
                )
            continue
        if name not in tables:
            known = ", ".join(sorted(tables)) or "none"
            raise ConfigError(
                f"{path}: {spec.key}.crosswalk: no table [crosswalks.{name}] (defined: "
                f'{known}); add one with file = "FILE.csv", from = "HEADER", to = "HEADER"'
            )
        kind = "patient" if spec.path.plain == "patientId" else "id"
        if used.get(name) != "patient":
            used[name] = kind
    named: dict[str, tuple[dict[str, str], Path]] = {}
    for name, table in tables.items():
        here = f"{where} [crosswalks.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{here}: must be a table with file, from and to")
        no_unknown_keys(table, _CROSSWALK_KEYS, here)
        if name not in used:
            raise ConfigError(
                f'{here}: no spec uses it; name it on a field, e.g. performerId = {{ column = "…", '
                f'crosswalk = "{name}" }} (for FHIR input: [fhir] crosswalks = {{ performer = '
                f'"{name}" }}), or remove it'
            )
        if "file" not in table:
            raise ConfigError(f'{here}: needs file = "FILE.csv"')
        file = path.parent / _string(table["file"], here, "file")
        named[name] = (
            load_crosswalk(
                file,
                source=_optional_string(table.get("from"), here, "from"),
                target=_optional_string(table.get("to"), here, "to"),
                kind=used[name],
                section=f"[crosswalks.{name}] file",
            ),
            file,
        )
    return named


@dataclass
class _V2:
    """The version-2 parts of a mapping file, before `[values]` tables are attached."""

    null_values: frozenset[str] = frozenset()
    filters: tuple[Condition, ...] = ()
    fields: dict[str, Spec] = field(default_factory=dict)
    consents: tuple[ConsentSpec, ...] = ()

    @property
    def specs(self) -> list[Spec]:
        return [*self.fields.values(), *(s for c in self.consents for s in c.fields.values())]

    @property
    def map_names(self) -> set[str]:
        return {p.map_name for s in self.specs for p in s.parts if p.map_name}

    def resolve_crosswalks(
        self,
        fields: dict[str, Spec],
        consents: tuple[ConsentSpec, ...],
        named: dict[str, tuple[dict[str, str], Path]],
        patients: dict[str, str] | None,
        where: str,
    ) -> tuple[dict[str, Spec], tuple[ConsentSpec, ...]]:
        """Specs with `crosswalk = "NAME"` given their table."""

        def attach(spec: Spec) -> Spec:
            if spec.cases:  # each case's own crosswalk
                cases = tuple(dataclasses.replace(c, spec=attach(c.spec)) for c in spec.cases)
                return dataclasses.replace(spec, cases=cases)
            name = spec.crosswalk_name
            if name is None:
                return spec
            table = named[name][0] if name in named else patients
            return dataclasses.replace(spec, crosswalk=table)

        return {k: attach(s) for k, s in fields.items()}, tuple(
            dataclasses.replace(c, fields={k: attach(s) for k, s in c.fields.items()})
            for c in consents
        )

    def resolve_maps(
        self, values: dict[str, dict[str, str | bool]], where: str, keep: set[str]
    ) -> tuple[dict[str, Spec], tuple[ConsentSpec, ...]]:
        def attach(spec: Spec) -> Spec:
            if spec.cases:  # each case's own map
                cases = tuple(dataclasses.replace(c, spec=attach(c.spec)) for c in spec.cases)
                return dataclasses.replace(spec, cases=cases)
            if spec.map_name is None:
                return spec
            table = values.get(spec.map_name)
            if table is None:
                raise ConfigError(
                    f"{where}: {spec.key}.map: no table [values.{spec.map_name}]; add it, or "
                    "write the map inline"
                )
            return dataclasses.replace(
                spec,
                map=dict(table),
                unmapped_keep=spec.unmapped_keep or spec.map_name in keep,
            )

        fields = {k: attach(s) for k, s in self.fields.items()}
        consents = tuple(
            dataclasses.replace(c, fields={k: attach(s) for k, s in c.fields.items()})
            for c in self.consents
        )
        return fields, consents


def _load_v2(doc: dict[str, Any], source: dict[str, Any], where: str) -> _V2:
    """`[source] null_values`, `[[filter]]`, `[fields]` and `[[consents]]`."""
    v2 = _V2()
    if "null_values" in source:
        nulls = source["null_values"]
        if not isinstance(nulls, list) or not all(isinstance(v, str) for v in nulls):
            raise ConfigError(f"{where}: source.null_values: must be a list of strings")
        v2.null_values = frozenset(v.strip().casefold() for v in nulls)
    filters = doc.get("filter", [])
    if not isinstance(filters, list):
        raise ConfigError(f"{where}: filter: write each filter as a [[filter]] table")
    v2.filters = tuple(
        parse_condition(f, f"{where}: {toml_key('filter', i + 1)}") for i, f in enumerate(filters)
    )
    fields = doc.get("fields", {})
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}: fields: must be a table of path = source")
    v2.fields = _field_specs(fields, where, ("fields",))
    consents = doc.get("consents", [])
    if not isinstance(consents, list):
        raise ConfigError(f"{where}: consents: write each consent as a [[consents]] table")
    seen: set[str] = set()
    parsed = []
    for number, table in enumerate(consents, start=1):
        here = toml_key("consents", number)
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {here}: must be a table")
        no_unknown_keys(table, _CONSENT_KEYS, f"{where}: {here}")
        key = table.get("key")
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", key):
            raise ConfigError(
                f"{where}: {here}.key: needs a short name (letters, digits, '-', '_', '.'), "
                'e.g. key = "hipaa"; it is appended to the row\'s source key'
            )
        if key in seen:
            raise ConfigError(f"{where}: {here}.key: '{key}' is used twice; keys must differ")
        seen.add(key)
        when = table.get("when")
        condition = None if when is None else parse_condition(when, f"{where}: {here}.when")
        own = table.get("fields", {})
        if not isinstance(own, dict):
            raise ConfigError(f"{where}: {here}.fields: must be a table of path = source")
        parsed.append(
            ConsentSpec(key, condition, _field_specs(own, where, ("consents", number, "fields")))
        )
    v2.consents = tuple(parsed)
    return v2


def _field_specs(
    table: dict[str, Any], where: str, prefix: tuple[str | int, ...]
) -> dict[str, Spec]:
    specs: dict[str, Spec] = {}
    for text, raw in table.items():
        key = toml_key(*prefix, text)
        path = parse_path(text, f"{where}: {key}")
        spec = parse_spec(path, raw, key, where)
        for other in specs.values():
            if overlaps(other.path, path):
                raise ConfigError(f"{where}: {key}: overlaps {other.key}; a path is filled once")
        specs[text] = spec
    return specs


def _no_twice(
    columns: dict[str, str], defaults: dict[str, str | bool], fields: dict[str, Spec], where: str
) -> None:
    """[columns]/[defaults] fields and [fields] paths must not name one path twice."""
    for name in (*columns, *defaults):
        if name not in V1_PATHS:
            continue  # sourceKey: not a body path
        v1 = parse_path(V1_PATHS[name], where)
        for spec in fields.values():
            if overlaps(v1, spec.path):
                section = "columns" if name in columns else "defaults"
                raise ConfigError(
                    f"{where}: {spec.key}: {section}.{name} fills the same path; keep one"
                )


def load_crosswalk(
    path: Path,
    *,
    source: str | None = None,
    target: str | None = None,
    kind: str = "patient",
    section: str = "[patients] crosswalk",
) -> dict[str, str]:
    """Read a crosswalk CSV (a header row, then legacy id -> ClinikAPI id): {legacy: id}.

    `source`/`target` name the legacy id and the ClinikAPI id columns by header (trimmed,
    case-folded); without them the file must have two columns, legacy id first (naming
    one names the other). Each target must be a ClinikAPI id of `kind` ("patient": `pt_…`;
    "id": `prefix_…`); a blank target leaves its legacy id out, so rows holding that id
    are row errors (unknown_patient / unknown_id), not the whole file. ConfigError names
    the file and line; it never echoes a cell (ids are PHI).
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise ConfigError(
            no_such_file(
                "crosswalk file", path, f"{section} is read relative to the mapping file's folder"
            )
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"crosswalk file {path} cannot be read as UTF-8 CSV: {exc}") from None
    header = rows[0][1] if rows else []
    pick, take = _crosswalk_columns(path, header, source, target, section)
    pattern, what = _TARGETS[kind]
    table: dict[str, str] = {}
    blank: set[str] = set()
    for number, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        here = f"crosswalk file {path}, line {number}"
        if len(row) < len(header):
            raise ConfigError(
                f"{here}: {len(row)} cell{'s' if len(row) != 1 else ''}, the header has "
                f"{len(header)}; a short row is not read as a blank target (write the commas)"
            )
        legacy, found = row[pick].strip(), row[take].strip()
        if not legacy:
            raise ConfigError(f"{here}: the legacy id (column {pick + 1}) is blank")
        if not found:
            blank.add(legacy)
        elif not pattern.fullmatch(found):
            swap = "" if source or target else "; if the columns are the other way round, "
            swap += "name them with from = and to =" if swap else ""
            raise ConfigError(f"{here}: the target (column {take + 1}) is not {what}{swap}")
        if (legacy in blank and found) or table.setdefault(legacy, found) != found:
            raise ConfigError(
                f"{here}: a legacy id maps to two different targets; fix the crosswalk"
            )
    for legacy in blank:
        table.pop(legacy, None)
    if not table and not blank:
        raise ConfigError(f"crosswalk file {path} has no rows")
    return table


def _crosswalk_columns(
    path: Path, header: list[str], source: str | None, target: str | None, section: str
) -> tuple[int, int]:
    """The positions of the legacy id and the target columns in a crosswalk's header."""
    named = {}
    for key, name in (("from", source), ("to", target)):
        if name is None:
            continue
        header_name = match_header(header, name)
        if header_name is None:
            raise ConfigError(
                f"crosswalk file {path}: {section.split()[0]} {key} = '{name}': no such column "
                f"in its header ({len(header)} columns){header_hint(header, name)}"
            )
        named[key] = header.index(header_name)
    if len(named) == 2:
        if named["from"] == named["to"]:
            raise ConfigError(f"crosswalk file {path}: from and to name the same column")
        return named["from"], named["to"]
    if len(header) != 2:
        raise ConfigError(
            f"crosswalk file {path}: {len(header)} columns; name the legacy id and the "
            f"ClinikAPI id columns by header with from = and to = ({section.split()[0]})"
        )
    if "from" in named:
        return named["from"], 1 - named["from"]
    if "to" in named:
        return 1 - named["to"], named["to"]
    return 0, 1


def _table(doc: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return value


def _string(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: '{key}' must be a non-empty string")
    return value


def _optional_string(value: Any, where: str, key: str) -> str | None:
    return None if value is None else _string(value, where, key)


def _string_list(value: Any, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: '{key}' must be a list of non-empty strings")
    return tuple(value)


def _string_table(doc: dict[str, Any], name: str, where: str, *, fields: bool) -> dict[str, str]:
    table = _table(doc, name, where)
    if fields:
        no_unknown_keys(table, FIELDS, f"{where} [{name}]")
    return {key: _string(value, where, f"{name}.{key}") for key, value in table.items()}


def _values(
    doc: dict[str, Any],
    where: str,
    *,
    extra: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[dict[str, dict[str, str | bool]], set[str]]:
    """`[values.NAME]` tables (source folded -> API value), and the names of those with
    `unmapped = "keep"`."""
    table = _table(doc, "values", where)
    for name in table:
        if name not in FIELDS and name not in extra:
            # A custom name is fine; one that nothing uses is a mistake worth naming.
            guess = difflib.get_close_matches(name, [*FIELDS, *sorted(extra)], n=1)
            hint = f"; did you mean [values.{guess[0]}]?" if guess else ""
            raise ConfigError(
                f"{where}: [values.{name}] is not used: no [fields] spec names it "
                f'(map = "{name}"), and it is not a field name ([values.scope] translates '
                f"the scope column){hint or '; use it or remove it'}"
            )
    values: dict[str, dict[str, str | bool]] = {}
    keep: set[str] = set()
    for name, translations in table.items():
        if not isinstance(translations, dict):
            raise ConfigError(f"{where}: [values.{name}] must be a table")
        # The option, spelled exactly; "Unmapped" (any other case) is a value.
        option = translations.get("unmapped")
        if option is not None and unmapped_option(option, f"{where}: values.{name}.unmapped"):
            keep.add(name)
        values[name] = {
            source.strip().casefold(): _value(name, value, where, f"values.{name}")
            for source, value in translations.items()
            if source != "unmapped"
        }
    return values, keep


def _defaults(doc: dict[str, Any], where: str) -> dict[str, str | bool]:
    table = _table(doc, "defaults", where)
    no_unknown_keys(table, FIELDS, f"{where} [defaults]")
    return {name: _value(name, value, where, "defaults") for name, value in table.items()}


def _value(name: str, value: Any, where: str, section: str) -> str | bool:
    if (name == "verified" or name not in FIELDS) and isinstance(value, bool):
        return value
    if not isinstance(value, str):
        kind = "a string or a boolean" if name == "verified" else "a string"
        raise ConfigError(f"{where}: [{section}] '{name}' values must be {kind}")
    return value


def _sheet(value: Any, where: str) -> str | int | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"{where}: 'sheet' must be a sheet name or a 0-based index")


def _header_row(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{where}: source.header_row: must be the 1-based line number of the header, e.g. 3"
        )
    return value


def _encoding(value: Any, where: str) -> str | None:
    if value is None:
        return None
    name = _string(value, where, "encoding")
    try:
        "".encode(name)
    except LookupError:
        raise ConfigError(f"{where}: unknown encoding '{name}'") from None
    return name


def _key(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    return _string_list(value, where, "key")


def _system(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SYSTEM.fullmatch(value):
        raise ConfigError(
            f"{where} [source]: 'system' must be a name of letters, digits, '_', '.' or '-' "
            '(at most 64), e.g. "clinic_a"'
        )
    return value


def _zone_name(value: Any) -> Any:
    """`[source] timezone` as `_timezone` reads it: absent or "TODO" (init's placeholder,
    which stops until set) is UTC for dates alone, and no statement."""
    if value is None:
        return "UTC"
    return "TODO" if isinstance(value, str) and value.strip().upper() == "TODO" else value


def _timezone(value: Any, where: str) -> ZoneInfo:
    name = _string(value, where, "timezone")
    if name == "TODO":
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{where}: unknown timezone '{name}' (use an IANA name like 'America/Chicago')"
        ) from None
