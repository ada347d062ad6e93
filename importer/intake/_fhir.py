"""Read FHIR R4 exports: one resource or a Bundle (`.json`), or NDJSON (`.ndjson`).

`FhirTable` is the `Table` of a FHIR file: instead of cells it gives `Resource`s, each with
the number a user sees (a Bundle entry's index, an NDJSON line's number) and the path
prefix its errors carry (`entry[3].`). NDJSON is read a line at a time, so memory does not
grow with the file; a Bundle is one JSON document and is read whole.

`FhirOptions` is the mapping file's `[fhir]` table (`rename`, `drop`); the mapping of a
resource to a ClinikAPI body lives in `importer.intake._fhir_body`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from importer._errors import ConfigError, InputError, no_unknown_keys
from importer.intake._layout import ERROR_COLUMNS
from importer.intake._reader import OPENERS, TRUNCATED_FILE, Table

__all__ = [
    "CROSSWALK_PATHS",
    "ERROR_TAG_SYSTEM",
    "FHIR_SUFFIXES",
    "MAPPED_PATHS",
    "RESOURCE_COLUMN",
    "FhirOptions",
    "FhirTable",
    "Resource",
    "check_fhir_mapping",
    "has_error_tag",
    "open_fhir",
    "parse_fhir",
]

log = logging.getLogger("importer.fhir")

FHIR_SUFFIXES: Final = (".json", ".ndjson")
#: The one column a FHIR file's rows have in CSV reports and the ledger: the resource.
RESOURCE_COLUMN: Final = "resource"
#: The `meta.tag` system of the errors `export --failed FILE.ndjson` adds to a resource.
ERROR_TAG_SYSTEM: Final = "urn:consent-import:error"
#: FHIR paths a `[fhir]` key names: element names joined by dots, no indexes.
_RULE_PATH: Final = re.compile(r"_?[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*")
_FHIR_KEYS: Final = ("crosswalks", "drop", "rename")
#: The reference elements `[fhir] crosswalks` may send through a named crosswalk: those
#: feeding a ClinikAPI id field (their id part is looked up).
CROSSWALK_PATHS: Final = (
    "performer",
    "organization",
    "sourceReference",
    "verification.verifiedWith",
)
#: Every FHIR path the built-in mapping reads (importer.intake._fhir_body), nested provisions
#: named as their parent (`provision.provision.code` is `provision.code`).
MAPPED_PATHS: Final = frozenset(
    {
        "status",
        "scope",
        "category",
        "patient",
        "dateTime",
        "performer",
        "organization",
        "sourceAttachment",
        "sourceAttachment.contentType",
        "sourceAttachment.data",
        "sourceAttachment.url",
        "sourceAttachment.title",
        "sourceReference",
        "policy",
        "policy.authority",
        "policy.uri",
        "policyRule",
        "verification",
        "verification.verified",
        "verification.verifiedWith",
        "verification.verificationDate",
        "provision",
        "provision.type",
        "provision.period",
        "provision.period.start",
        "provision.period.end",
        "provision.actor",
        "provision.actor.role",
        "provision.actor.reference",
        "provision.action",
        "provision.securityLabel",
        "provision.purpose",
        "provision.class",
        "provision.dataPeriod",
        "provision.dataPeriod.start",
        "provision.dataPeriod.end",
        "provision.data",
        "provision.data.meaning",
        "provision.data.reference",
        "provision.provision",
    }
)


@dataclass(frozen=True)
class FhirOptions:
    """The mapping file's `[fhir]` table.

    Args:
        rename: FHIR path -> the sibling FHIR path whose ClinikAPI field takes its value
            (`provision.code` -> `provision.class`).
        drop: FHIR paths left out on purpose.
        crosswalks: FHIR reference path (one of `CROSSWALK_PATHS`) -> the name of the
            `[crosswalks.NAME]` table (or `patients`, the `[patients]` one) its id goes
            through.
    """

    rename: dict[str, str] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()
    crosswalks: dict[str, str] = field(default_factory=dict)


def parse_fhir(table: Any, where: str, mapped: frozenset[str]) -> FhirOptions:
    """Check and read `[fhir]`; `mapped` are the FHIR paths the built-in mapping reads
    (a rename must move an element to one of them)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [fhir] must be a table")
    no_unknown_keys(table, _FHIR_KEYS, f"{where} [fhir]")
    drop = table.get("drop", [])
    if not isinstance(drop, list) or not all(isinstance(p, str) for p in drop):
        raise ConfigError(f'{where}: fhir.drop: must be a list of FHIR paths, e.g. ["extension"]')
    for path in drop:
        _check_path(path, where, "fhir.drop")
    rename = table.get("rename", {})
    if not isinstance(rename, dict):
        raise ConfigError(
            f"{where}: fhir.rename: must be a table, e.g. "
            '{ "provision.code" = "provision.class" }'
        )
    for source, target in rename.items():
        key = f'fhir.rename."{source}"'
        _check_path(source, where, key)
        if not isinstance(target, str):
            raise ConfigError(f"{where}: {key}: must be a FHIR path such as provision.class")
        _check_path(target, where, key)
        if target not in mapped:
            raise ConfigError(
                f"{where}: {key}: '{target}' is not an element the FHIR mapping reads "
                f"(for example: {', '.join(sorted(p for p in mapped if '.' in p)[:6])})"
            )
        if source.rpartition(".")[0] != target.rpartition(".")[0]:
            raise ConfigError(
                f"{where}: {key}: a rename moves an element to a sibling of it (same parent "
                f"path); '{source}' and '{target}' are not siblings"
            )
        if source in drop:
            raise ConfigError(f"{where}: {key}: '{source}' is also in fhir.drop; keep one")
    crosswalks = table.get("crosswalks", {})
    if not isinstance(crosswalks, dict):
        raise ConfigError(
            f'{where}: fhir.crosswalks: must be a table, e.g. {{ performer = "practitioners" }}'
        )
    for source, name in crosswalks.items():
        key = f'fhir.crosswalks."{source}"'
        if source not in CROSSWALK_PATHS:
            raise ConfigError(
                f"{where}: {key}: '{source}' is not a reference the FHIR mapping sends as an "
                f"id (one of: {', '.join(CROSSWALK_PATHS)})"
            )
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(
                f"{where}: {key}: must name a crosswalk, [crosswalks.NAME] (or patients)"
            )
        if source in drop:
            raise ConfigError(f"{where}: {key}: '{source}' is also in fhir.drop; keep one")
    return FhirOptions(dict(rename), frozenset(drop), {k: v.strip() for k, v in crosswalks.items()})


def has_error_tag(resource: dict[str, Any]) -> bool:
    """Whether a resource carries an error tag of our own export (a correction file's)."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return isinstance(tags, list) and any(
        isinstance(t, dict) and t.get("system") == ERROR_TAG_SYSTEM for t in tags
    )


def _check_path(path: str, where: str, key: str) -> None:
    if not _RULE_PATH.fullmatch(path):
        raise ConfigError(
            f"{where}: {key}: '{path}' is not a FHIR path (element names joined by dots, "
            "no indexes, e.g. provision.code)"
        )


class _MappingParts(Protocol):
    """What `check_fhir_mapping` reads of an `importer.intake._mapping.Mapping` (which imports
    this module)."""

    @property
    def path(self) -> Path | None: ...
    @property
    def columns(self) -> dict[str, str]: ...
    @property
    def fields(self) -> dict[str, Any]: ...
    @property
    def consents(self) -> tuple[Any, ...]: ...
    @property
    def filters(self) -> tuple[Any, ...]: ...
    @property
    def defaults(self) -> dict[str, str | bool]: ...
    @property
    def values(self) -> dict[str, dict[str, str | bool]]: ...
    @property
    def key(self) -> tuple[str, ...]: ...


def check_fhir_mapping(mapping: _MappingParts, name: str) -> None:
    """Refuse the mapping sections that name columns: a FHIR file has none."""
    used = [
        section
        for section, present in (
            ("[columns]", mapping.columns),
            ("[fields]", mapping.fields),
            ("[[consents]]", mapping.consents),
            ("[[filter]]", mapping.filters),
            ("[defaults]", mapping.defaults),
            ("[values]", mapping.values),
            ("[source] key", mapping.key),
        )
        if present
    ]
    if used:
        where = str(mapping.path) if mapping.path else "mapping"
        raise ConfigError(
            f"{where}: {', '.join(used)} name columns, and FHIR input {name} has none: the "
            "built-in FHIR mapping reads it ([source] system and timezone, [patients] and "
            "[fhir] apply); use a separate mapping file for it"
        )


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource of a FHIR file, or why a line could not be read as one.

    Attributes:
        row: the Bundle entry's index, the NDJSON line's number, or 1 for a lone resource.
        prefix: what the resource's paths start with in messages (`entry[3].`, or "").
        data: the resource; None when `problem` says why there is none.
        text: the resource as compact JSON (or the line as read): what reports keep.
    """

    row: int
    prefix: str
    data: dict[str, Any] | None
    text: str
    problem: str = ""
    #: the row error code of `problem` ("": the reader's usual one for the file)
    code: str = ""

    @property
    def resource_type(self) -> str:
        kind = self.data.get("resourceType") if self.data is not None else None
        return kind if isinstance(kind, str) else ""


class FhirTable(Table):
    """A FHIR file: `resources` streams its resources (see the module docstring)."""

    def __init__(
        self, path: Path, name: str, *, ndjson: bool, count: int | None, correction: bool = False
    ) -> None:
        # A correction file (`export --failed`'s, its resources tagged with their errors)
        # shows the error columns failed.csv has: `--revoke-missing` then never revokes.
        columns = [RESOURCE_COLUMN, *(ERROR_COLUMNS if correction else ())]
        super().__init__(path, name, columns, header_row=0, chunk_rows=1, encoding="utf-8")
        self.ndjson = ndjson
        self._count = count

    def count_rows(self) -> int:
        """Resources (Bundle entries, or non-blank NDJSON lines), of any type."""
        if self._count is None:
            with self.path.open("rb") as handle:
                self._count = sum(1 for raw in handle if raw.strip())
        return self._count

    def chunks(self) -> Iterator[Any]:
        # Nothing reads a FHIR file as cells: the normalizer asks `resources`.
        raise InputError(
            f"{self.name}: is FHIR input, which needs no starting mapping: the built-in "
            "FHIR mapping reads it (a mapping file may add [source] system, [patients] and "
            "[fhir]; see the README's FHIR Consent input)"
        )

    def _require_rows(self) -> None:
        pass  # open_fhir has checked that there is a resource

    def resources(self) -> Iterator[Resource]:
        """Every resource, in file order (each call reads the file again)."""
        if self.ndjson:
            yield from self._lines()
            return
        document = _load_json(self.path, self.name)
        if document.get("resourceType") != "Bundle":
            yield _resource(1, "", document)
            return
        for index, entry in enumerate(document.get("entry") or []):
            prefix = f"entry[{index}]."
            if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                text = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
                yield Resource(index, prefix, None, text, f"entry[{index}]: holds no resource")
                continue
            yield _resource(index, prefix, entry["resource"])

    def _lines(self) -> Iterator[Resource]:
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    value = json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    text = raw.decode("utf-8", "replace").strip()
                    if not raw.endswith(b"\n"):  # the last line, cut off mid-resource
                        yield self._cut_off(number, text)
                        continue
                    yield Resource(number, "", None, text, "line: not a JSON object")
                    continue
                if not isinstance(value, dict):
                    text = raw.decode("utf-8", "replace").strip()
                    yield Resource(number, "", None, text, "line: not a JSON object")
                    continue
                yield _resource(number, "", value)

    def _cut_off(self, number: int, text: str) -> Resource:
        """The last line, not JSON and without a line break: the export was cut off
        (as a CSV file ending inside a row): `--revoke-missing` revokes nothing."""
        self.truncated = (
            f"{self.name}: ends inside line {number} without a line break: the export looks "
            f"cut off; line {number} is reported invalid, never sent ({TRUNCATED_FILE})"
        )
        log.warning("%s", self.truncated)
        problem = (
            "line: the file ends inside this resource: the export was cut off, export it again"
        )
        return Resource(number, "", None, text, problem, TRUNCATED_FILE)


def _resource(row: int, prefix: str, data: dict[str, Any]) -> Resource:
    return Resource(row, prefix, data, json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def _load_json(path: Path, name: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = json.loads(handle.read())
    except UnicodeDecodeError:
        raise InputError(f"{name}: is not UTF-8 text; FHIR JSON is UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{name}: is not valid JSON (line {exc.lineno}, column {exc.colno}); export it again"
        ) from None
    except OSError as exc:
        raise InputError(
            f"{name}: cannot be read ({exc.strerror}); check its permissions"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        raise InputError(
            f"{name}: is not a FHIR resource (no resourceType); give a Consent, a Bundle of "
            "Consents, or NDJSON (.ndjson)"
        )
    return document


def open_fhir(path: Path, name: str) -> FhirTable:
    """Check a FHIR file up front: JSON a Consent or a Bundle; NDJSON's first line a
    resource. Bad lines further into NDJSON are row errors, found as it streams."""
    if path.suffix.lower() == ".ndjson":
        first = _check_ndjson(path, name)
        return FhirTable(path, name, ndjson=True, count=None, correction=has_error_tag(first))
    document = _load_json(path, name)
    kind = document["resourceType"]
    if kind == "Bundle":
        entries = document.get("entry") or []
        if not isinstance(entries, list):
            raise InputError(f"{name}: the Bundle's entry is not a list; export it again")
        if not any(
            isinstance(e, dict)
            and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == "Consent"
            for e in entries
        ):
            raise InputError(f"{name}: the Bundle holds no Consent resources")
        return FhirTable(path, name, ndjson=False, count=len(entries))
    if kind != "Consent":
        raise InputError(
            f"{name}: is a FHIR {kind[:40]} resource; give a Consent or a Bundle holding Consents"
        )
    return FhirTable(path, name, ndjson=False, count=1)


def _check_ndjson(path: Path, name: str) -> dict[str, Any]:
    """The first resource: the first non-blank line must be one (read alone: the file is
    streamed)."""
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            try:
                first = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                first = None
            if not isinstance(first, dict) or "resourceType" not in first:
                raise InputError(
                    f"{name}: the first line is not a FHIR resource; NDJSON holds one "
                    "JSON resource a line (a single resource or a Bundle: save it as .json)"
                )
            return first
    raise InputError(f"{name}: holds no resources; export it again")


for _suffix in FHIR_SUFFIXES:
    OPENERS[_suffix] = open_fhir
