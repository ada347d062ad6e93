"""The built-in mapping of a FHIR R4 Consent to a ClinikAPI consent body, and its rows.

Every element of a Consent is accounted for: it feeds a body field (README, "FHIR Consent
input", has the table), it is bookkeeping (`id` at any level, the resource's `meta`,
`text` and `resourceType`), the mapping's `[fhir] drop` leaves it out on purpose, or
`[fhir] rename` moves it to a sibling that feeds a field. Anything else is a row error
`unsupported_element` naming its path (`entry[3].provision.provision[0].code`), never
dropped without a word.

A resource's source key is its `id` (namespaced by `[source] system`). A resource without
one is keyed as a CSV row without a key column is (importer._keys.source_key): by its
elements as written, before any mapping: the patient reference (before the `[patients]`
crosswalk), the scope and category codes, and the `dateTime` text. A fix of the time zone
or the crosswalk then leaves its key as it was. Ledgers made before source keys ("natural",
"content") keep natural keys for such resources, as they had.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from importer._keys import CELLS_PREFIX, NATURAL_FIELDS, KeyTally, natural_key, source_key
from importer.intake._fhir import RESOURCE_COLUMN, FhirOptions, FhirTable, Resource
from importer.intake._models import ConsentIdentity, ConsentIn, field_errors

if TYPE_CHECKING:
    from importer.intake._mapping import Mapping

__all__ = ["FhirConsents", "FhirMapper", "MappedConsent", "Problem"]

log = logging.getLogger("importer.fhir")

#: The resource's own bookkeeping: no consent field, nothing lost.
_BOOKKEEPING: Final = frozenset({"resourceType", "id", "meta", "text"})
_DATE_TIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}T.+")
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_PARTIAL_DATE: Final = re.compile(r"\d{4}(?:-\d{2})?")
#: `Type/id` at the end of a relative or absolute reference, before any `_history`.
_REFERENCE: Final = re.compile(
    r"(?:.*/)?(?P<type>[A-Z][A-Za-z]{0,63})/(?P<id>[A-Za-z0-9.\-_]{1,128})(?:/_history/[^/]+)?"
)
_BARE_ID: Final = re.compile(r"[A-Za-z0-9.\-_]{1,128}")
#: A FHIR element's name (`_status` holds a primitive's extensions).
_ELEMENT: Final = re.compile(r"_?[A-Za-z][A-Za-z0-9]{0,63}")
#: The one `provision.data.meaning` a ClinikAPI data reference expresses: the resource itself.
_DATA_MEANING: Final = "instance"
_ATTACHMENT: Final = ("contentType", "data", "url", "title")
#: Distinct ids counted per reference path (for `validate`'s id-shape warning).
_ID_VALUES: Final = 50


def _skip(value: Any, shown: str) -> None:
    """An element read and not sent: it describes another one."""


def _as_is(value: Any, shown: str) -> Any:
    """An element passed as it is: the model checks its type."""
    return value


@dataclass(frozen=True, slots=True)
class Problem:
    """An element that cannot become part of the body: where (as shown), which FHIR path
    it is (no indexes, as `[fhir]` names it), the rule code, and what is wrong."""

    shown: str
    path: str
    code: str
    rule: str
    value: str = field(default="", repr=False)  # PHI: the user's own report only


Handler = Callable[[Any, str], None]


def _join(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


class _Walker:
    """Walks FHIR JSON element by element: each one to its handler, dropped by `[fhir]
    drop`, moved by `[fhir] rename`, or a `Problem` (see the module docstring)."""

    def __init__(self, options: FhirOptions) -> None:
        self.options = options
        self.problems: list[Problem] = []
        #: elements left out by `[fhir] drop`, by path
        self.dropped: Counter[str] = Counter()

    def _object(
        self, value: Any, rule: str, shown: str, handlers: dict[str, Handler], *, top: bool = False
    ) -> bool:
        """Feed each element of an object to its handler; False if it is not an object."""
        if not isinstance(value, dict):
            self._problem(shown, rule, "invalid_element", "must be a JSON object", value)
            return False
        for name, item in value.items():
            if name == "id" or (top and name in _BOOKKEEPING):
                continue  # element ids and the resource's bookkeeping
            if not _ELEMENT.fullmatch(name):
                # A key that is no FHIR name may be a value (PHI): never echoed.
                text = "holds an element whose name is not a FHIR element name (not shown)"
                where, path = shown or "resource", rule or "resource"
                self._problem(where, path, "unsupported_element", text, item)
                continue
            path, where = _join(rule, name), _join(shown, name)
            if path in self.options.drop:
                self.dropped[path] += 1
                continue
            target = self.options.rename.get(path)
            handler = handlers.get(target.rpartition(".")[2] if target else name)
            if handler is None:
                self._unsupported(where, path, item)
                continue
            handler(item, where)
        return True

    def _unsupported(self, shown: str, path: str, value: Any) -> None:
        self._problem(
            shown,
            path,
            "unsupported_element",
            f"has no ClinikAPI field; map it with [fhir] rename, or leave it out with "
            f'[fhir] drop = ["{path}"]',
            value,
        )

    def _problem(self, shown: str, path: str, code: str, rule: str, value: Any = "") -> None:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        self.problems.append(Problem(shown, path, code, rule, text[:500]))

    def _items(self, value: Any, shown: str, rule: str) -> list[tuple[Any, str]]:
        """A FHIR array's items with where each is; a non-array is a problem."""
        if not isinstance(value, list):
            self._problem(shown, rule, "invalid_element", "must be a JSON array", value)
            return []
        return [(item, f"{shown}[{i}]") for i, item in enumerate(value)]

    @staticmethod
    def _rule(shown: str) -> str:
        """The `[fhir]` path of a shown path: no entry, no indexes, nested provisions as
        their parent."""
        path = re.sub(r"\[\d+\]", "", shown)
        path = re.sub(r"^entry\.", "", path)
        return re.sub(r"(?:provision\.)+", "provision.", path)

    def _string(self, value: Any, shown: str) -> str | None:
        if isinstance(value, str):
            return value
        self._problem(shown, self._rule(shown), "invalid_element", "must be a string", value)
        return None

    def _collect(
        self, value: Any, shown: str, converters: dict[str, Callable[[Any, str], Any]]
    ) -> dict[str, Any] | None:
        """An object made of the elements `converters` know, each converted (None: left
        out); None when `value` is not an object."""
        kept: dict[str, Any] = {}

        def keep(name: str, convert: Callable[[Any, str], Any]) -> Handler:
            def handler(item: Any, where: str) -> None:
                made = convert(item, where)
                if made is not None:
                    kept[name] = made

            return handler

        handlers = {name: keep(name, convert) for name, convert in converters.items()}
        if not self._object(value, self._rule(shown), shown, handlers):
            return None
        return kept

    def _each(
        self, value: Any, shown: str, converters: dict[str, Callable[[Any, str], Any]]
    ) -> list[dict[str, Any]]:
        """`_collect` for each item of an array."""
        items = self._items(value, shown, self._rule(shown))
        made = (self._collect(item, at, converters) for item, at in items)
        return [item for item in made if item is not None]


class FhirMapper(_Walker):
    """Maps Consent resources to bodies with one mapping's `[fhir]`, crosswalk and zone."""

    def __init__(
        self,
        options: FhirOptions,
        crosswalk: dict[str, str] | None,
        timezone: ZoneInfo,
        named: dict[str, dict[str, str]] | None = None,
    ) -> None:
        super().__init__(options)
        self.crosswalk = crosswalk
        self.timezone = timezone
        #: the mapping's `[crosswalks.NAME]` tables, for `[fhir] crosswalks`
        self.named = named or {}
        #: the ids sent per id-field reference path, counted (up to `_ID_VALUES` distinct
        #: a path): `validate` warns of those not shaped as ClinikAPI ids. PHI: never shown.
        self.ids: dict[str, Counter[str]] = {}

    # --- the walk ---------------------------------------------------------------------------

    def body(self, resource: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """The body of one Consent; `problems` holds what could not be mapped."""
        self.problems = []
        body: dict[str, Any] = {}
        self._object(resource, "", prefix.rstrip("."), self._consent_handlers(body), top=True)
        return body

    # --- the Consent ------------------------------------------------------------------------

    def _consent_handlers(self, body: dict[str, Any]) -> dict[str, Handler]:
        def put(name: str, value: Any, shown: str) -> None:
            if value is None:
                return
            if name in body:
                rule = "gives a field another element already gave (check [fhir] rename)"
                self._problem(shown, self._rule(shown), "invalid_element", rule)
                return
            body[name] = value

        def extend(name: str, values: list[Any]) -> None:
            if values:
                body.setdefault(name, []).extend(values)

        return {
            "status": lambda v, s: put("status", self._string(v, s), s),
            "scope": lambda v, s: put("scope", self._code(v, s), s),
            "category": lambda v, s: extend("category", self._codes(v, s)),
            "patient": lambda v, s: put("patientId", self._patient(v, s), s),
            "dateTime": lambda v, s: put("dateTime", self._date_time(v, s), s),
            "performer": lambda v, s: put("performerId", self._one_id(v, s), s),
            "organization": lambda v, s: put("organizationId", self._one_id(v, s), s),
            "sourceAttachment": lambda v, s: put("sourceAttachment", self._attachment(v, s), s),
            "sourceReference": lambda v, s: put("sourceReferenceId", self._id(v, s), s),
            "policy": lambda v, s: extend("policies", self._policies(v, s)),
            "policyRule": lambda v, s: put("policyRule", self._code(v, s), s),
            "verification": lambda v, s: extend("verification", self._verifications(v, s)),
            "provision": lambda v, s: put("provision", self._provision(v, s), s),
        }

    def _end_date_time(self, value: Any, shown: str) -> str | None:
        """A period's end: a day alone means the end of that day in `[source] timezone`
        (as a CSV period end does), so the period keeps its last day."""
        return self._date_time(value, shown, end=True)

    def _date_time(self, value: Any, shown: str, *, end: bool = False) -> str | None:
        """A FHIR dateTime as ClinikAPI takes it: a day is its midnight in `[source]
        timezone` (its last millisecond for a period's `end`); a year or a month alone
        names no instant."""
        text = self._string(value, shown)
        if text is None or _DATE_TIME.fullmatch(text):
            return text  # the model checks it (an offset is required)
        if _DATE.fullmatch(text):
            try:
                day = date.fromisoformat(text)
            except ValueError:
                return text  # the model reports the invalid date
            at = datetime(day.year, day.month, day.day, tzinfo=self.timezone)
            if end:
                at = at.replace(hour=23, minute=59, second=59, microsecond=999_000)
            return at.isoformat()
        if _PARTIAL_DATE.fullmatch(text):
            rule = "is a year or a month, not a day or an instant (invalid_date)"
            self._problem(shown, self._rule(shown), "invalid_date", rule, text)
            return None
        return text

    # --- codes ------------------------------------------------------------------------------

    def _concept_codes(self, value: Any, shown: str) -> list[str]:
        """The codes of a CodeableConcept whose field takes codes alone: each coding's
        system and display say which code it is; the code is what is sent."""
        codes: list[str] = []

        def codings(items: Any, where: str) -> None:
            for coding, at in self._items(items, where, self._rule(where)):
                # system and display say which code it is: read, not sent
                found = self._collect(
                    coding, at, {"code": _as_is, "system": _skip, "display": _skip}
                )
                if found is None:
                    continue
                code = found.get("code")
                if isinstance(code, str):
                    codes.append(code)
                else:
                    where_code = _join(at, "code")
                    rule = "a coding needs a code (a string)"
                    self._problem(where_code, self._rule(where_code), "missing_required", rule)

        self._object(value, self._rule(shown), shown, {"coding": codings})
        return list(dict.fromkeys(codes))

    def _code(self, value: Any, shown: str) -> str | None:
        """One code: the concept's codings must agree on it."""
        codes = self._concept_codes(value, shown)
        if len(codes) > 1:
            rule = f"holds {len(codes)} different codes; ClinikAPI takes one here"
            self._problem(shown, self._rule(shown), "ambiguous_code", rule, value)
            return None
        return codes[0] if codes else None

    def _codes(self, value: Any, shown: str) -> list[str]:
        codes: list[str] = []
        for item, at in self._items(value, shown, self._rule(shown)):
            codes += self._concept_codes(item, at)
        return list(dict.fromkeys(codes))  # one code in two concepts is one category

    def _codings(self, value: Any, shown: str) -> list[dict[str, Any]]:
        """Codings kept whole (system, code, display); a CodeableConcept among them (moved
        here by a rename, or `provision.action`) gives its codings."""
        out: list[dict[str, Any]] = []

        def coding(item: Any, where: str) -> None:
            kept = self._collect(item, where, dict.fromkeys(("system", "code", "display"), _as_is))
            if kept is not None:
                out.append(kept)

        def concept(items: Any, where: str) -> None:
            for item, at in self._items(items, where, self._rule(where)):
                coding(item, at)

        for item, at in self._items(value, shown, self._rule(shown)):
            if isinstance(item, dict) and ("coding" in item or "text" in item):
                self._object(item, self._rule(at), at, {"coding": concept})
            else:
                coding(item, at)
        return out

    # --- references -------------------------------------------------------------------------

    def _reference(self, value: Any, shown: str) -> tuple[str | None, str] | None:
        """(type, id) of a Reference; `display` and `type` beside a `reference` describe it."""
        found: dict[str, Any] = {}
        handlers: dict[str, Handler] = {
            "reference": lambda v, s: found.__setitem__("reference", (v, s)),
            "display": lambda v, s: found.__setitem__("display", (v, s)),
            "type": lambda v, s: None,
        }
        if not self._object(value, self._rule(shown), shown, handlers):
            return None
        if "reference" not in found:
            if "display" in found:
                where = found["display"][1]
                rule = "a reference holding only a display names no record ClinikAPI can take"
                self._problem(where, self._rule(where), "unsupported_element", rule, value)
            else:
                self._problem(
                    shown,
                    self._rule(shown),
                    "missing_required",
                    "a reference needs a reference (Type/id)",
                )
            return None
        text, where = found["reference"]
        if not isinstance(text, str):
            self._problem(where, self._rule(where), "invalid_element", "must be a string", text)
            return None
        match = _REFERENCE.fullmatch(text)
        if match:
            return match["type"], match["id"]
        if _BARE_ID.fullmatch(text):
            return None, text
        rule = (
            "must be a Type/id reference (a contained #id or a urn: cannot be resolved) "
            "(invalid_reference)"
        )
        self._problem(where, self._rule(where), "invalid_reference", rule, text)
        return None

    def _patient_id(self, legacy: str, shown: str) -> str | None:
        """A patient's ClinikAPI id: through the `[patients]` crosswalk when there is one
        (the one place it is looked up)."""
        if self.crosswalk is None:
            return legacy
        found = self.crosswalk.get(legacy)
        if found is None:
            rule = "is not in the [patients] crosswalk (unknown_patient)"
            self._problem(shown, self._rule(shown), "unknown_patient", rule, legacy)
        return found

    def _patient(self, value: Any, shown: str) -> str | None:
        ref = self._reference(value, shown)
        if ref is None:
            return None
        kind, ident = ref
        if kind not in (None, "Patient"):
            rule = "must be a Patient reference (invalid_reference)"
            self._problem(shown, self._rule(shown), "invalid_reference", rule, value)
            return None
        return self._patient_id(ident, shown)

    def _id(self, value: Any, shown: str) -> str | None:
        """A reference to an id field: its id part, through the crosswalk `[fhir]
        crosswalks` names for its path, else a patient's through `[patients]`."""
        ref = self._reference(value, shown)
        if ref is None:
            return None
        kind, ident = ref
        path = self._rule(shown)
        name = self.options.crosswalks.get(path)
        if name is not None and (name != "patients" or name in self.named):
            found = self.named.get(name, {}).get(ident)
            if not found:
                rule = f"is not in the [crosswalks.{name}] crosswalk (unknown_id)"
                self._problem(shown, path, "unknown_id", rule, ident)
        elif kind == "Patient" or name is not None:
            found = self._patient_id(ident, shown)
        else:
            found = ident
        if found:
            seen = self.ids.setdefault(path, Counter())
            if found in seen or len(seen) < _ID_VALUES:
                seen[found] += 1
        return found

    def _one_id(self, value: Any, shown: str) -> str | None:
        """performer, organization: FHIR arrays, one id in ClinikAPI."""
        items = self._items(value, shown, self._rule(shown))
        for item, at in items[1:]:
            rule = "ClinikAPI takes one; a second has no field (unsupported_element)"
            self._problem(at, self._rule(at), "unsupported_element", rule, item)
        return self._id(items[0][0], items[0][1]) if items else None

    def _type_id(self, value: Any, shown: str) -> str | None:
        """A reference ClinikAPI takes as a reference: `Type/id`."""
        ref = self._reference(value, shown)
        if ref is None:
            return None
        kind, ident = ref
        if kind == "Patient":
            patient = self._patient_id(ident, shown)
            return None if patient is None else f"Patient/{patient}"
        return ident if kind is None else f"{kind}/{ident}"

    # --- the other parts --------------------------------------------------------------------

    def _attachment(self, value: Any, shown: str) -> dict[str, Any] | None:
        return self._collect(value, shown, dict.fromkeys(_ATTACHMENT, _as_is))

    def _policies(self, value: Any, shown: str) -> list[dict[str, Any]]:
        return self._each(value, shown, {"authority": _as_is, "uri": _as_is})

    def _verifications(self, value: Any, shown: str) -> list[dict[str, Any]]:
        converters: dict[str, Callable[[Any, str], Any]] = {
            "verified": _as_is,
            "verifiedWith": self._id,
            "verificationDate": self._date_time,
        }
        return self._each(value, shown, converters)

    def _period(self, value: Any, shown: str) -> dict[str, Any] | None:
        period = self._collect(value, shown, {"start": self._date_time, "end": self._end_date_time})
        return period or None

    def _actors(self, value: Any, shown: str) -> list[dict[str, Any]]:
        return self._each(value, shown, {"role": self._code, "reference": self._type_id})

    def _meaning(self, value: Any, shown: str) -> None:
        """`provision.data.meaning`: `instance` is what a ClinikAPI data reference means;
        related, dependents and authoredby reach further, and have no field."""
        if value != _DATA_MEANING:
            self._unsupported(shown, self._rule(shown), value)

    def _data(self, value: Any, shown: str) -> list[dict[str, Any]]:
        return self._each(value, shown, {"meaning": self._meaning, "reference": self._type_id})

    def _provision(self, value: Any, shown: str) -> dict[str, Any] | None:
        body: dict[str, Any] = {}

        def put(name: str, made: Any) -> None:
            if made is None or made == []:
                return
            if isinstance(made, list):
                body.setdefault(name, []).extend(made)
            else:
                body[name] = made

        def nested(v: Any, s: str) -> None:
            for item, at in self._items(v, s, "provision.provision"):
                put("provision", [self._provision(item, at)])

        handlers: dict[str, Handler] = {
            "type": lambda v, s: put("type", self._string(v, s)),
            "period": lambda v, s: put("period", self._period(v, s)),
            "actor": lambda v, s: put("actor", self._actors(v, s)),
            "action": lambda v, s: put("action", self._codings(v, s)),
            "securityLabel": lambda v, s: put("securityLabel", self._codings(v, s)),
            "purpose": lambda v, s: put("purpose", self._codings(v, s)),
            "class": lambda v, s: put("class", self._codings(v, s)),
            "dataPeriod": lambda v, s: put("dataPeriod", self._period(v, s)),
            "data": lambda v, s: put("data", self._data(v, s)),
            "provision": nested,
        }
        if not self._object(value, "provision", shown, handlers):
            return None
        if "provision" in body:
            body["provision"] = [p for p in body["provision"] if p is not None]
        return body


# --- consents ---------------------------------------------------------------------------------

#: API fields whose FHIR element has another name (for messages, and to tell a model
#: error caused by an element already reported).
_FHIR_OF_API: Final = {
    "patientId": "patient",
    "performerId": "performer",
    "organizationId": "organization",
    "sourceReferenceId": "sourceReference",
    "policies": "policy",
}
#: Where an error's field name ends its first part.
_ROOT: Final = re.compile(r"[.\[]")


@dataclass(slots=True)
class MappedConsent:
    """One Consent of a FHIR file, mapped: its model when valid, else its errors as
    (field, code, message, value); its source key before any `[source] system`."""

    row: int
    text: str
    key: str
    model: ConsentIn | None
    errors: list[tuple[str, str, str, str]]


class FhirConsents:
    """A FHIR file's Consents, mapped a slice at a time (what importer.intake._normalize reads).

    Resources of other types are skipped, counted (`skipped`) and named in one warning.
    """

    def __init__(
        self, mapping: Mapping, table: FhirTable, tally: KeyTally, *, natural: bool = False
    ) -> None:
        self.table = table
        self.tally = tally
        #: key resources without an id by their mapped identity (ledgers made before
        #: source keys), not by their elements as written
        self.natural = natural
        self.mapper = FhirMapper(
            mapping.fhir, mapping.crosswalk, mapping.timezone, mapping.crosswalks
        )
        self.read = self.skipped = 0  # since last taken (see `slices`)
        #: whether a Consent had no id (its key is then made from its identity elements)
        self.unkeyed = False
        self._other: Counter[str] = Counter()

    def slices(self, size: int) -> Iterator[list[MappedConsent]]:
        """The Consents, at most `size` at a time (the last slice may be empty); `read`
        and `skipped` count the resources behind each slice."""
        done: list[MappedConsent] = []
        for resource in self.table.resources():
            self.read += 1
            if resource.data is not None and resource.resource_type != "Consent":
                self._other[resource.resource_type[:40] or "(no resourceType)"] += 1
                self.skipped += 1
            else:
                done.append(self.consent(resource))
            if len(done) == size:
                yield done
                done = []
        self._say_skipped()
        yield done

    def _say_skipped(self) -> None:
        if self._other:
            kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self._other.items()))
            log.warning(
                "%s: skipped %d resource(s) that are not Consents (%s)",
                self.table.name,
                self._other.total(),
                kinds,
            )

    def consent(self, resource: Resource) -> MappedConsent:
        """One resource's body checked by the model, its problems as row errors."""
        if resource.data is None:
            code = resource.code or ("invalid_json" if self.table.ndjson else "invalid_element")
            error = (RESOURCE_COLUMN, code, f"{resource.problem} ({code})", resource.text[:500])
            return MappedConsent(
                resource.row, resource.text, self._unstable(resource), None, [error]
            )
        body = self.mapper.body(resource.data, resource.prefix)
        errors = [
            (
                p.path,
                p.code,
                f"{p.shown}: {p.rule if f'({p.code})' in p.rule else f'{p.rule} ({p.code})'}",
                p.value,
            )
            for p in self.mapper.problems
        ]
        reported = {_ROOT.split(p.path, maxsplit=1)[0] for p in self.mapper.problems}
        model = None
        try:
            model = ConsentIn.model_validate(body)
        except ValidationError as exc:
            for err in field_errors(exc):
                root, _, rest = err.field.partition(".")
                fhir = _FHIR_OF_API.get(root, root)
                if fhir in reported:
                    continue  # e.g. an unknown patient: not also a missing patientId
                path = f"{fhir}.{rest}" if rest else fhir
                rule = err.message.split(": ", 1)[1] if ": " in err.message else err.message
                errors.append((path, err.code, f"{resource.prefix}{path}: {rule}", ""))
        model = model if not errors else None
        key = self._key(resource, model, body, errors)
        return MappedConsent(resource.row, resource.text, key, model, errors)

    def _key(
        self,
        resource: Resource,
        model: ConsentIn | None,
        body: dict[str, Any],
        errors: list[tuple[str, str, str, str]],
    ) -> str:
        """The resource's id; without one, its identity elements as written (as a CSV row
        without a key column; its natural identity in a ledger made before), or a key of
        its text when nothing stable is left."""
        assert resource.data is not None
        ident = resource.data.get("id")
        if isinstance(ident, str) and ident.strip():
            return ident.strip()
        self.unkeyed = True
        if not self.natural:
            found_key = _source_identity(resource.data)
            if found_key is None:
                return self._unstable(resource)
            roots = {_ROOT.split(e[0], maxsplit=1)[0] for e in errors}
            if {_API_OF_FHIR.get(r, r) for r in roots} & NATURAL_FIELDS:
                # An identity element holds a typo: the resource may be one the ledger misses.
                self.tally.unstable += 1
            return found_key
        if model is not None:
            return natural_key(model.patient_id, model.scope.value, model.category, model.date_time)
        fields = {_ROOT.split(_API_OF_FHIR.get(e[0], e[0]), maxsplit=1)[0] for e in errors}
        if not fields & NATURAL_FIELDS:
            try:
                found = ConsentIdentity.model_validate(body)
            except ValidationError:
                pass
            else:
                # Invalid elsewhere: still the same consent, so the ledger keeps its row.
                return natural_key(
                    found.patient_id, found.scope.value, found.category, found.date_time
                )
        return self._unstable(resource)

    def _unstable(self, resource: Resource) -> str:
        self.tally.unstable += 1
        return CELLS_PREFIX + hashlib.sha256(resource.text.encode()).hexdigest()[:32]


_API_OF_FHIR: Final = {fhir: api for api, fhir in _FHIR_OF_API.items()}


def _source_identity(data: dict[str, Any]) -> str | None:
    """The source-cell key of a resource without an id: its patient reference, scope and
    category codes and `dateTime`, as written (None without a patient reference)."""
    patient = data.get("patient")
    reference = patient.get("reference") if isinstance(patient, dict) else None
    if not isinstance(reference, str) or not reference.strip():
        return None
    scope = "\x1f".join(_written_codes(data.get("scope")))
    categories = data.get("category")
    codes = [
        code
        for concept in (categories if isinstance(categories, list) else [categories])
        for code in _written_codes(concept)
    ]
    when = data.get("dateTime")
    when = when.strip() if isinstance(when, str) else ""
    return source_key(reference.strip(), scope, "\x1f".join(codes), when)


def _written_codes(concept: Any) -> list[str]:
    """A CodeableConcept's codes as written (strings only, stripped)."""
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        return []
    return [
        c["code"].strip() for c in codings if isinstance(c, dict) and isinstance(c.get("code"), str)
    ]
