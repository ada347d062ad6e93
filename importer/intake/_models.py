"""Pydantic models of ClinikAPI's consent bodies and envelopes, and row-error translation.

`ConsentIn` and `ConsentPatch` are what we send: strict (`extra="forbid"`), camelCase on the
wire, snake_case in Python. What the server sends back is read by `importer.api._client` (the one
reader of the envelope), leniently, so a new server field never breaks a run.

`field_errors` turns a `ValidationError` into `FieldError`s: an API field path, a rule code and
a message that names both and never the value (values are PHI).

Field paths are the API's camelCase names joined by dots, with list indexes dropped
(`provision.provision.period`, `verification.verifiedWith`, `category`), so errors of many rows
group by field. Rule codes are listed in `CODES`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

__all__ = [
    "CODES",
    "Attachment",
    "Coding",
    "ConsentIn",
    "ConsentPatch",
    "DataRef",
    "FieldError",
    "Period",
    "Policy",
    "Provision",
    "ProvisionActor",
    "ProvisionType",
    "Scope",
    "Status",
    "Verification",
    "field_errors",
    "to_api_json",
]


class Scope(StrEnum):
    """What a consent is about."""

    PATIENT_PRIVACY = "patient-privacy"
    TREATMENT = "treatment"
    RESEARCH = "research"
    ADR = "adr"  # advance directive


class Status(StrEnum):
    """A consent's state; the server defaults to `active`."""

    DRAFT = "draft"
    PROPOSED = "proposed"
    ACTIVE = "active"
    REJECTED = "rejected"
    INACTIVE = "inactive"


class ProvisionType(StrEnum):
    """Whether a provision grants or refuses."""

    PERMIT = "permit"
    DENY = "deny"


# --- constrained types: checked in pydantic-core (Rust), not in Python, for speed -------------

#: An id: 1-128 ASCII letters, digits, `-`, `_`, `.` (one regex: length and charset in one rule).
ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
#: A reference: an id, optionally `Type/id` (FHIR style, e.g. `Practitioner/pr_1`), because
#: the documentation does not say which form `actor.reference` and `data.reference` take.
REFERENCE_PATTERN = r"^(?:[A-Za-z][A-Za-z0-9]{0,63}/)?[A-Za-z0-9._-]{1,128}$"

#: A ClinikAPI patient id (`pt_…`, docs/clinikapi.md). A legacy id (an MRN such as `0000001`)
#: is a valid id but not a patient's: sent, it files the consent under no patient or the wrong one.
PATIENT_ID_PATTERN = r"^pt_[A-Za-z0-9._-]{1,125}$"

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
PatientId = Annotated[str, StringConstraints(pattern=PATIENT_ID_PATTERN)]
Reference = Annotated[str, StringConstraints(pattern=REFERENCE_PATTERN)]
Text = Annotated[str, StringConstraints(min_length=1)]


class _AwareDateTime:
    """Core schema of `DateTime`: a datetime, or an ISO 8601 string, with a UTC offset.

    Built in pydantic-core so no Python runs per value. Strings must start `YYYY-MM-DD`:
    pydantic alone would read `1700000000` (or an Excel serial such as `45000`) as a Unix
    time, and in an export that is a wrong column, not an instant. Any failure is one
    `invalid_date` error rather than a dump of the union's branches.
    """

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        iso_string = core_schema.chain_schema(
            [
                core_schema.str_schema(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"),
                core_schema.datetime_schema(tz_constraint="aware"),
            ]
        )
        python = core_schema.union_schema(
            [core_schema.datetime_schema(strict=True, tz_constraint="aware"), iso_string],
            mode="left_to_right",
        )
        # JSON input gets the string rule alone: a strict datetime would take "1700000000".
        return core_schema.json_or_python_schema(
            json_schema=cls._one_error(iso_string), python_schema=cls._one_error(python)
        )

    @staticmethod
    def _one_error(schema: core_schema.CoreSchema) -> core_schema.CoreSchema:
        return core_schema.custom_error_schema(
            schema, custom_error_type="invalid_date", custom_error_message="invalid date"
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "date-time"}


#: An ISO 8601 date-time with a UTC offset; naive ones are refused (whose 09:00?).
DateTime = Annotated[datetime, _AwareDateTime]


def _category_list(value: Any) -> Any:
    """One code -> [code]; exact repeats dropped, first-seen order kept.

    Repeats add nothing and would change the body hash between equivalent exports. Done
    before validation, in the one Python call the field needs anyway.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and len(value) > 1:
        try:
            return list(dict.fromkeys(value))
        except TypeError:  # unhashable items: validation reports them
            return value
    return value


#: One code or a list of codes, kept as a non-empty list.
Categories = Annotated[list[Text], BeforeValidator(_category_list), Field(min_length=1)]


class _ApiModel(BaseModel):
    """Base of the bodies we send: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        # Keeps values out of str(ValidationError), should anyone log one.
        hide_input_in_errors=True,
    )


class Coding(_ApiModel):
    """A code from a code system (provision action, securityLabel, purpose, class)."""

    system: Text | None = None
    code: Text
    display: Text | None = None


class Period(_ApiModel):
    """A time range; either end may be open. `start == end` is a valid instant."""

    start: DateTime | None = None
    end: DateTime | None = None

    @model_validator(mode="after")
    def _start_not_after_end(self) -> Period:
        if self.start is not None and self.end is not None and self.start > self.end:
            raise PydanticCustomError("period_order", "start must not be after end")
        return self


class ProvisionActor(_ApiModel):
    """Who a provision applies to, in which role."""

    role: Text
    reference: Reference


class DataRef(_ApiModel):
    """A resource a provision covers."""

    reference: Reference


class Provision(_ApiModel):
    """The rules of a consent; nested `provision` entries are exceptions to their parent."""

    type: ProvisionType | None = None
    period: Period | None = None
    actor: list[ProvisionActor] | None = None
    action: list[Coding] | None = None
    security_label: list[Coding] | None = None
    purpose: list[Coding] | None = None
    class_: list[Coding] | None = Field(default=None, alias="class")
    data_period: Period | None = None
    data: list[DataRef] | None = None
    provision: list[Provision] | None = None


class Policy(_ApiModel):
    """One policy consented to; needs an authority or a uri to mean anything."""

    authority: Text | None = None
    uri: Text | None = None

    @model_validator(mode="after")
    def _authority_or_uri(self) -> Policy:
        if self.authority is None and self.uri is None:
            raise PydanticCustomError("empty_value", "needs an authority or a uri")
        return self


class Attachment(_ApiModel):
    """The signed consent document, inline (`data`, base64) or by `url`."""

    content_type: Text | None = None
    data: Text | None = None
    url: Text | None = None
    title: Text | None = None


class Verification(_ApiModel):
    """Whether (and with whom, when) the consent was verified."""

    verified: bool
    verified_with: Id | None = None
    verification_date: DateTime | None = None


def _verification_tag(value: Any) -> str:
    return _TAG_MANY if isinstance(value, list) else _TAG_ONE


# Tags hold a `-`, so they can never be mistaken for a field name in an error's location.
_TAG_ONE = "verification-object"
_TAG_MANY = "verification-list"

#: One verification or several; the shape given is the shape sent. A callable discriminator
#: (not a plain union) so a bad object yields one error, not one per union branch.
Verifications = Annotated[
    Annotated[Verification, Tag(_TAG_ONE)]
    | Annotated[list[Verification], Tag(_TAG_MANY), Field(min_length=1)],
    Discriminator(_verification_tag),
]


class ConsentIn(_ApiModel):
    """The body of `POST /v1/consents`. Only `patient_id`, `scope` and `category` are required."""

    patient_id: PatientId
    scope: Scope
    category: Categories
    status: Status | None = None
    date_time: DateTime | None = None
    performer_id: Id | None = None
    organization_id: Id | None = None
    policy_uri: Text | None = None
    policies: list[Policy] | None = None
    policy_rule: Text | None = None
    source_attachment: Attachment | None = None
    source_reference_id: Id | None = None
    verification: Verifications | None = None
    provision: Provision | None = None


class ConsentIdentity(_ApiModel):
    """The fields a natural key pins (importer._keys), checked alone: an invalid row whose
    identity holds keeps its natural key, so its ledger row is still found."""

    model_config = ConfigDict(extra="ignore")

    patient_id: PatientId
    scope: Scope
    category: Categories
    date_time: DateTime | None = None


class ConsentPatch(_ApiModel):
    """The body of `PATCH /v1/consents/{id}`; each field given replaces the stored one."""

    status: Status | None = None
    policy_uri: Text | None = None
    verification: Verifications | None = None
    provision: Provision | None = None


def to_api_json(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready dict the API expects: camelCase, no nulls, ISO 8601 strings, enum values."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- row-error translation -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldError:
    """One rule a body broke: the API field path, the rule code, a message without the value."""

    field: str
    code: str
    message: str


#: Every code `field_errors` produces, with the rule it stands for.
CODES: dict[str, str] = {
    "missing_required": "is required",
    "invalid_enum": "must be one of the allowed values",
    "invalid_date": "must be an ISO 8601 date-time with a UTC offset, e.g. 2024-05-01T09:30:00Z",
    "period_order": "start must not be after end",
    "invalid_id": "must be 1-128 letters, digits, '-', '_' or '.'",
    "invalid_type": "has the wrong type",
    "invalid_value": "has an invalid value",
    "too_long": "is too long",
    "unknown_field": "is not a field of this body",
    "empty_value": "must not be empty",
}

_PATIENT_ID_RULE = "must be a ClinikAPI patient id (pt_...); legacy ids need a [patients] crosswalk"
_REFERENCE_RULE = "must be an id (1-128 letters, digits, '-', '_' or '.'), optionally as Type/id"

# pydantic error type -> our code. Anything not here is `invalid_value`.
_CODE_OF_TYPE = {
    "missing": "missing_required",
    "extra_forbidden": "unknown_field",
    "enum": "invalid_enum",
    "literal_error": "invalid_enum",
    "string_too_short": "empty_value",
    "too_short": "empty_value",
    "string_too_long": "too_long",
    "too_long": "too_long",
    "string_pattern_mismatch": "invalid_id",
    "invalid_date": "invalid_date",
    "period_order": "period_order",
    "empty_value": "empty_value",
}
_DATE_TYPES = frozenset(
    {
        "datetime_type",
        "datetime_parsing",
        "datetime_from_date_parsing",
        "datetime_object_invalid",
        "timezone_aware",
        "timezone_naive",
        "date_type",
        "date_parsing",
        "date_from_datetime_parsing",
    }
)
# Wrong-type errors -> what the field must be instead.
_TYPE_RULES = {
    "string_type": "must be text",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "list_type": "must be a list",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "is_instance_of": "has the wrong type",
}
# Field-specific wording where the generic one would mislead.
_FIELD_TYPE_RULES = {
    "verification": "must be an object or a list of objects",
    "category": "must be a code or a list of codes",
    "body": "must be a JSON object",
}
_EMPTY_RULES = {
    "category": "must not hold an empty code",
    "policies": "each policy needs an authority or a uri",
    "verification": "must not be an empty list",
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_TAGS = frozenset({_TAG_ONE, _TAG_MANY})


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Translate a `ValidationError` into one `FieldError` per (field, rule), in order.

    Messages are built here from fixed texts and the error's location; pydantic's own
    message and `input` are never used, so no cell value can leak into a report. A null
    where a value is needed counts as missing.
    """
    found: dict[tuple[str, str], FieldError] = {}
    for error in exc.errors(include_url=False, include_input=True, include_context=True):
        # `input` is read for one test only (None), never copied into the result.
        kind = error["type"]
        if kind != "extra_forbidden" and error.get("input", ...) is None:
            kind = "missing"
        loc = error["loc"]
        if kind == "extra_forbidden" and loc:
            # The unknown key is a name from the input, not a value; still, only echo it
            # when it looks like a field name, so a stray value used as a key stays hidden.
            key = loc[-1]
            path = _path(loc[:-1])
            if isinstance(key, str) and _IDENTIFIER.fullmatch(key):
                path = f"{path}.{key}" if path != "body" else key
                rule = "is not a field of this body"
            else:
                rule = "has a key that is not a field of this body"
            code = "unknown_field"
        else:
            path = _path(loc)
            code, rule = _rule(kind, path, error.get("ctx") or {})
        if (path, code) not in found:
            found[path, code] = FieldError(path, code, f"{path}: {rule} ({code})")
    return list(found.values())


def _path(loc: tuple[int | str, ...]) -> str:
    parts = [p for p in loc if isinstance(p, str) and p not in _TAGS]
    return ".".join(parts) if parts else "body"


def _rule(kind: str, path: str, ctx: dict[str, Any]) -> tuple[str, str]:
    """(code, rule text) for one pydantic error type at one field path."""
    if kind in _DATE_TYPES:
        return "invalid_date", CODES["invalid_date"]
    if kind in _TYPE_RULES:
        return "invalid_type", _FIELD_TYPE_RULES.get(path, _TYPE_RULES[kind])
    code = _CODE_OF_TYPE.get(kind, "invalid_value")
    if code == "invalid_enum" and "expected" in ctx:
        # ctx["expected"] is built from the enum's members ("'a', 'b' or 'c'"), not the input.
        allowed = str(ctx["expected"]).replace("'", "").replace(" or ", ", ")
        return code, f"must be one of {allowed}"
    if code == "invalid_id":
        if ctx.get("pattern") == REFERENCE_PATTERN:
            return code, _REFERENCE_RULE
        if ctx.get("pattern") == PATIENT_ID_PATTERN:
            return code, _PATIENT_ID_RULE
        if ctx.get("pattern") != ID_PATTERN:
            return "invalid_value", CODES["invalid_value"]
    if code == "empty_value":
        if kind == "too_short" and path == "category":
            # No category at all is the required field missing, not a bad value.
            return "missing_required", "needs at least one category"
        return code, _EMPTY_RULES.get(path, CODES["empty_value"])
    if code == "too_long" and "max_length" in ctx:
        unit = "characters" if kind == "string_too_long" else "items"
        return code, f"must be at most {int(ctx['max_length'])} {unit}"
    return code, CODES[code]
