"""The mapping from a legacy export's columns to ClinikAPI consent fields.

Without a mapping file, well-known header spellings are recognised (case, spaces, `_` and
`-` ignored). A TOML mapping file can name columns, translate values, fill defaults, set
how the file is read, and resolve legacy patient ids through a crosswalk.
"""

from __future__ import annotations

import csv
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from importer.errors import ConfigError
from importer.reader import SourceOptions

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
#: Cell words for `verified`, compared case-folded.
TRUE_WORDS = frozenset({"y", "yes", "true", "t", "1"})
FALSE_WORDS = frozenset({"n", "no", "false", "f", "0"})

_SECTIONS = {"source", "columns", "values", "defaults", "patients"}
_SOURCE_KEYS = {"sheet", "encoding", "delimiter", "key", "timezone", "date_formats", "system"}
#: A source system's name namespaces its keys in the ledger: letters, digits, `_.-`.
_SYSTEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PATIENTS_KEYS = {"crosswalk"}


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

    def resolve(self, headers: list[str], file_name: str) -> dict[str, str]:
        """Return {field: header} for one input file.

        Raises ConfigError when the mapping names a column the file lacks, or when a
        required field has neither a column nor a default.
        """
        present = set(headers)
        for column in (*self.columns.values(), *self.key):
            if column not in present:
                # The file's own header cells are not echoed: in an export without a
                # header row they are the first patient's values.
                raise ConfigError(
                    f"{file_name}: the mapping names column '{column}', which the file "
                    f"does not have (its header row has {len(headers)} columns; check the "
                    "name's spelling, and that the file has a header row)"
                )
        resolved = dict(self.columns)
        guessed: dict[str, str] = {}
        for header in headers:
            name = _RECOGNISED.get(canonical_header(header))
            if name is None or name in self.columns:
                continue
            if name in guessed:
                raise ConfigError(
                    f"{file_name}: columns '{guessed[name]}' and '{header}' both look like "
                    f"'{name}'; name the right one under [columns] in a mapping file"
                )
            guessed[name] = resolved[name] = header
        for name in REQUIRED_FIELDS:
            if name not in resolved and name not in self.defaults:
                spellings = ", ".join((name, *SYNONYMS[name]))
                raise ConfigError(
                    f"{file_name}: no column for required field '{name}' (looked for: "
                    f"{spellings}); name it under [columns] or give it a value under [defaults]"
                )
        return resolved


def load_mapping(path: str | Path | None) -> Mapping:
    """Read and check a TOML mapping file; None gives the default mapping."""
    if path is None:
        return Mapping()
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"mapping file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"mapping file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"mapping file {path} is not valid TOML: {exc}") from None
    where = f"mapping file {path}"
    _no_unknown(doc, _SECTIONS, where)
    source = _table(doc, "source", where)
    _no_unknown(source, _SOURCE_KEYS, f"{where} [source]")
    columns = _string_table(doc, "columns", where, fields=True)
    values = _values(doc, where)
    defaults = _defaults(doc, where)
    patients = _table(doc, "patients", where)
    _no_unknown(patients, _PATIENTS_KEYS, f"{where} [patients]")
    crosswalk = crosswalk_path = None
    if "crosswalk" in patients:
        crosswalk_path = path.parent / _string(patients["crosswalk"], where, "crosswalk")
        crosswalk = load_crosswalk(crosswalk_path)
    return Mapping(
        source=SourceOptions(
            sheet=_sheet(source.get("sheet"), where),
            encoding=_encoding(source.get("encoding"), where),
            delimiter=_optional_string(source.get("delimiter"), where, "delimiter"),
        ),
        key=_key(source.get("key"), where),
        timezone=_timezone(source.get("timezone", "UTC"), where),
        date_formats=_string_list(source.get("date_formats", []), where, "date_formats"),
        columns=columns,
        values=values,
        defaults=defaults,
        crosswalk=crosswalk,
        path=path,
        crosswalk_path=crosswalk_path,
        system=_system(source.get("system"), where),
    )


def load_crosswalk(path: Path) -> dict[str, str]:
    """Read a two-column crosswalk CSV (header row; legacy id, patientId)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise ConfigError(f"crosswalk file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"crosswalk file {path} cannot be read as UTF-8 CSV: {exc}") from None
    table: dict[str, str] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ConfigError(
                f"crosswalk file {path}, row {number}: expected two non-empty cells "
                "(legacy id, patientId)"
            )
        legacy, patient = row[0].strip(), row[1].strip()
        if table.setdefault(legacy, patient) != patient:
            raise ConfigError(
                f"crosswalk file {path}, row {number}: a legacy id maps to two different "
                "patient ids; fix the crosswalk"
            )
    if not table:
        raise ConfigError(f"crosswalk file {path} has no rows")
    return table


def _no_unknown(table: dict[str, Any], allowed: set[str] | tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key '{key}' (allowed: {', '.join(sorted(allowed))})"
            )


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
        _no_unknown(table, FIELDS, f"{where} [{name}]")
    return {key: _string(value, where, f"{name}.{key}") for key, value in table.items()}


def _values(doc: dict[str, Any], where: str) -> dict[str, dict[str, str | bool]]:
    table = _table(doc, "values", where)
    _no_unknown(table, FIELDS, f"{where} [values]")
    values: dict[str, dict[str, str | bool]] = {}
    for name, translations in table.items():
        if not isinstance(translations, dict):
            raise ConfigError(f"{where}: [values.{name}] must be a table")
        values[name] = {
            source.strip().casefold(): _value(name, value, where, f"values.{name}")
            for source, value in translations.items()
        }
    return values


def _defaults(doc: dict[str, Any], where: str) -> dict[str, str | bool]:
    table = _table(doc, "defaults", where)
    _no_unknown(table, FIELDS, f"{where} [defaults]")
    return {name: _value(name, value, where, "defaults") for name, value in table.items()}


def _value(name: str, value: Any, where: str, section: str) -> str | bool:
    if name == "verified" and isinstance(value, bool):
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


def _timezone(value: Any, where: str) -> ZoneInfo:
    name = _string(value, where, "timezone")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{where}: unknown timezone '{name}' (use an IANA name like 'America/Chicago')"
        ) from None
