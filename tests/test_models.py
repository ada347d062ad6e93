"""The consent models: what a body may hold, the JSON it becomes, and the errors it yields."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from importer.intake._models import (
    CODES,
    Coding,
    ConsentIn,
    ConsentPatch,
    FieldError,
    Period,
    Provision,
    ProvisionType,
    Scope,
    Status,
    Verification,
    field_errors,
    to_api_json,
)

BASE: dict[str, Any] = {"patientId": "pt_1", "scope": "treatment", "category": "hipaa-notice"}

#: A body using every field, in the exact form the API gets back from `to_api_json`.
FULL: dict[str, Any] = {
    "patientId": "pt_8f3a",
    "scope": "research",
    "category": ["research-participation", "hipaa-notice"],
    "status": "active",
    "dateTime": "2024-05-01T09:30:00+02:00",
    "performerId": "pr_77",
    "organizationId": "org_1",
    "policyUri": "https://example.org/policies/research-v2",
    "policies": [{"authority": "https://hhs.gov", "uri": "https://example.org/p/1"}, {"uri": "u"}],
    "policyRule": "hipaa-auth",
    "sourceAttachment": {
        "contentType": "application/pdf",
        "data": "JVBERi0xLjQK",
        "url": "https://files.example.org/c/1.pdf",
        "title": "Signed consent",
    },
    "sourceReferenceId": "doc_12",
    "verification": [
        {"verified": True, "verifiedWith": "pt_8f3a", "verificationDate": "2024-05-01T10:00:00Z"},
        {"verified": False},
    ],
    "provision": {
        "type": "permit",
        "period": {"start": "2024-05-01T00:00:00Z", "end": "2029-05-01T00:00:00.250000Z"},
        "actor": [{"role": "PRCP", "reference": "Practitioner/pr_77"}],
        "action": [
            {"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "use"}
        ],
        "securityLabel": [{"code": "R", "display": "Restricted"}],
        "purpose": [{"code": "HRESCH"}],
        "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}],
        "dataPeriod": {"start": "2020-01-01T00:00:00-05:00", "end": "2024-01-01T00:00:00-05:00"},
        "data": [{"reference": "obs_1"}],
        "provision": [
            {
                "type": "deny",
                "purpose": [{"code": "MARKT"}],
                "provision": [{"type": "permit", "class": [{"code": "Patient"}]}],
            }
        ],
    },
}


def body(**changes: Any) -> dict[str, Any]:
    """BASE with top-level fields changed; a value of ... removes the field."""
    result = dict(BASE)
    for key, value in changes.items():
        if value is ...:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def errors_of(
    data: Any, model: type[ConsentIn] | type[ConsentPatch] = ConsentIn
) -> list[FieldError]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    found = field_errors(info.value)
    for error in found:
        assert error.code in CODES
        assert error.message.startswith(f"{error.field}: ")
        assert error.message.endswith(f" ({error.code})")
    return found


def pairs(
    data: Any, model: type[ConsentIn] | type[ConsentPatch] = ConsentIn
) -> list[tuple[str, str]]:
    return [(e.field, e.code) for e in errors_of(data, model)]


# --- required fields -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (body(patientId=...), [("patientId", "missing_required")]),
        (body(scope=...), [("scope", "missing_required")]),
        (body(category=...), [("category", "missing_required")]),
        (
            {},
            [
                ("patientId", "missing_required"),
                ("scope", "missing_required"),
                ("category", "missing_required"),
            ],
        ),
        # null is as good as absent where a value is needed
        (body(patientId=None), [("patientId", "missing_required")]),
        (body(category=None), [("category", "missing_required")]),
        (body(verification={}), [("verification.verified", "missing_required")]),
        (
            body(provision={"actor": [{"role": "r"}]}),
            [("provision.actor.reference", "missing_required")],
        ),
        (
            body(provision={"purpose": [{"system": "s"}]}),
            [("provision.purpose.code", "missing_required")],
        ),
        (body(provision={"data": [{}]}), [("provision.data.reference", "missing_required")]),
    ],
)
def test_required_fields(data: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert pairs(data) == expected


def test_only_three_fields_are_required() -> None:
    assert to_api_json(ConsentIn.model_validate(BASE)) == {**BASE, "category": ["hipaa-notice"]}


# --- enums -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "enum"),
    [("scope", Scope), ("status", Status)],
)
def test_every_enum_value_is_accepted(field: str, enum: type[Scope] | type[Status]) -> None:
    for member in enum:
        assert (
            to_api_json(ConsentIn.model_validate(body(**{field: member.value})))[field]
            == member.value
        )


@pytest.mark.parametrize("value", ["permit", "deny"])
def test_provision_types_are_accepted(value: str) -> None:
    model = ConsentIn.model_validate(body(provision={"type": value}))
    assert model.provision is not None
    assert model.provision.type is ProvisionType(value)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (body(scope="Treatment"), "scope"),  # case matters: the API's codes are lower case
        (body(scope="consent"), "scope"),
        (body(scope=""), "scope"),
        (body(scope="advance-directive"), "scope"),  # the code is `adr`
        (body(status="revoked"), "status"),  # revoking is status `inactive`
        (body(status="ACTIVE"), "status"),
        (body(provision={"type": "allow"}), "provision.type"),
        (
            body(provision={"provision": [{"type": "permit"}, {"type": "no"}]}),
            "provision.provision.type",
        ),
    ],
)
def test_enum_values_outside_the_list_are_invalid_enum(data: dict[str, Any], field: str) -> None:
    assert pairs(data) == [(field, "invalid_enum")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            body(scope="x"),
            "scope: must be one of patient-privacy, treatment, research, adr (invalid_enum)",
        ),
        (
            body(status="x"),
            "status: must be one of draft, proposed, active, rejected, inactive (invalid_enum)",
        ),
        (
            body(provision={"type": "x"}),
            "provision.type: must be one of permit, deny (invalid_enum)",
        ),
    ],
)
def test_enum_messages_list_the_allowed_values(data: dict[str, Any], message: str) -> None:
    assert [e.message for e in errors_of(data)] == [message]


# --- date-times ------------------------------------------------------------------------------

DATE_FIELDS: list[tuple[str, Any]] = [
    ("dateTime", lambda v: body(dateTime=v)),
    (
        "verification.verificationDate",
        lambda v: body(verification={"verified": True, "verificationDate": v}),
    ),
    (
        "verification.verificationDate",
        lambda v: body(
            verification=[{"verified": True}, {"verified": True, "verificationDate": v}]
        ),
    ),
    ("provision.period.start", lambda v: body(provision={"period": {"start": v}})),
    ("provision.period.end", lambda v: body(provision={"period": {"end": v}})),
    ("provision.dataPeriod.start", lambda v: body(provision={"dataPeriod": {"start": v}})),
    (
        "provision.provision.period.end",
        lambda v: body(provision={"provision": [{"period": {"end": v}}]}),
    ),
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T09:30:00Z", "2024-05-01T09:30:00Z"),
        ("2024-05-01T09:30:00+00:00", "2024-05-01T09:30:00Z"),  # UTC is always written Z
        ("2024-05-01T09:30:00-00:00", "2024-05-01T09:30:00Z"),
        ("2024-05-01T09:30:00+02:00", "2024-05-01T09:30:00+02:00"),  # the offset is kept
        ("2024-05-01T09:30:00-05:30", "2024-05-01T09:30:00-05:30"),
        ("2024-05-01T09:30Z", "2024-05-01T09:30:00Z"),  # seconds may be left out
        ("2024-05-01 09:30:00Z", "2024-05-01T09:30:00Z"),  # RFC 3339 space separator
        ("2024-05-01T09:30:00.5Z", "2024-05-01T09:30:00.500000Z"),
        (datetime(2024, 5, 1, 9, 30, tzinfo=UTC), "2024-05-01T09:30:00Z"),
        (
            datetime(2024, 5, 1, 9, 30, tzinfo=timezone(timedelta(hours=9))),
            "2024-05-01T09:30:00+09:00",
        ),
        (
            datetime(2024, 7, 1, 9, 30, tzinfo=ZoneInfo("Europe/Berlin")),
            "2024-07-01T09:30:00+02:00",
        ),
    ],
)
@pytest.mark.parametrize(("field", "make"), DATE_FIELDS)
def test_date_times_with_an_offset_are_accepted(
    field: str, make: Any, value: Any, expected: str
) -> None:
    dumped: Any = to_api_json(ConsentIn.model_validate(make(value)))
    for part in field.split("."):
        if isinstance(dumped, list):
            dumped = dumped[-1]
        dumped = dumped[part]
    assert dumped == expected


@pytest.mark.parametrize(
    "value",
    [
        "2024-05-01T09:30:00",  # naive: whose 09:30?
        "2024-05-01",  # a date is not an instant
        datetime(2024, 5, 1, 9, 30),  # naive datetime object
        "01/05/2024 09:30",
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-05-01T25:00:00Z",
        "2024-05-01T09:30:00+25:00",
        "garbage",
        "",
        1714555800,  # a Unix time is a wrong column, not an instant
        "1714555800",
        45413,  # an Excel serial
        45413.5,
        True,
        ["2024-05-01T09:30:00Z"],
    ],
)
@pytest.mark.parametrize(("field", "make"), DATE_FIELDS)
def test_other_date_times_are_invalid_date(field: str, make: Any, value: Any) -> None:
    assert pairs(make(value)) == [(field, "invalid_date")]


@pytest.mark.parametrize("text", ['"1714555800"', "1714555800", '"2024-05-01T09:30:00"'])
def test_json_input_follows_the_same_date_rules(text: str) -> None:
    raw = json.dumps(BASE)[:-1] + f', "dateTime": {text}}}'
    with pytest.raises(ValidationError) as info:
        ConsentIn.model_validate_json(raw)
    assert [(e.field, e.code) for e in field_errors(info.value)] == [("dateTime", "invalid_date")]


# --- period order ----------------------------------------------------------------------------

T1, T2 = "2024-05-01T00:00:00Z", "2024-06-01T00:00:00Z"


@pytest.mark.parametrize(
    ("period", "ok"),
    [
        ({"start": T1, "end": T2}, True),
        ({"start": T1, "end": T1}, True),  # start == end: an instant
        ({"start": T1}, True),  # open-ended
        ({"end": T2}, True),
        ({}, True),
        ({"start": T2, "end": T1}, False),
        # the same instant in two offsets is equal, not out of order
        ({"start": "2024-05-01T02:00:00+02:00", "end": "2024-05-01T00:00:00Z"}, True),
        ({"start": "2024-05-01T02:00:01+02:00", "end": "2024-05-01T00:00:00Z"}, False),
    ],
)
@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("provision.period", lambda p: {"period": p}),
        ("provision.dataPeriod", lambda p: {"dataPeriod": p}),
        ("provision.provision.period", lambda p: {"provision": [{"type": "deny", "period": p}]}),
    ],
)
def test_period_start_not_after_end(
    field: str, make: Any, period: dict[str, str], ok: bool
) -> None:
    data = body(provision=make(period))
    if ok:
        ConsentIn.model_validate(data)
    else:
        assert [(e.field, e.code, e.message) for e in errors_of(data)] == [
            (field, "period_order", f"{field}: start must not be after end (period_order)")
        ]


def test_period_order_is_not_checked_when_a_date_is_bad() -> None:
    data = body(provision={"period": {"start": "bad", "end": T1}})
    assert pairs(data) == [("provision.period.start", "invalid_date")]


# --- ids and references ---------------------------------------------------------------------

ID_FIELDS: list[tuple[str, Any]] = [
    ("performerId", lambda v: body(performerId=v)),
    ("organizationId", lambda v: body(organizationId=v)),
    ("sourceReferenceId", lambda v: body(sourceReferenceId=v)),
    (
        "verification.verifiedWith",
        lambda v: body(verification={"verified": True, "verifiedWith": v}),
    ),
]
GOOD_IDS = ["pt_1", "a", "a" * 128, "A-b_c.9", "consent_01HX"]
BAD_IDS = [
    "",  # length 0
    "a" * 129,  # one too long
    "pt 1",
    " pt_1",
    "pt_1\n",
    "pt/1",  # a reference is not an id
    "pt_ü",  # ASCII only
    "pt:1",
    "pt_1;DROP",
]


@pytest.mark.parametrize("value", GOOD_IDS)
@pytest.mark.parametrize(("field", "make"), ID_FIELDS)
def test_good_ids(field: str, make: Any, value: str) -> None:
    ConsentIn.model_validate(make(value))


@pytest.mark.parametrize("value", BAD_IDS)
@pytest.mark.parametrize(("field", "make"), ID_FIELDS)
def test_bad_ids_are_invalid_id(field: str, make: Any, value: str) -> None:
    assert [(e.field, e.code, e.message) for e in errors_of(make(value))] == [
        (
            field,
            "invalid_id",
            f"{field}: must be 1-128 letters, digits, '-', '_' or '.' (invalid_id)",
        )
    ]


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("pt_1", True),
        ("pt_legacy_0001", True),
        ("pt_" + "a" * 125, True),  # 128 in all
        ("pt_" + "a" * 126, False),
        ("0000001", False),  # an MRN: an id, but not a patient's
        ("RDR-0001", False),
        ("PT_1", False),
        ("pt_", False),
        ("pt_1 x", False),
        ("", False),
    ],
)
def test_patient_ids_must_look_like_clinikapi_patient_ids(value: str, valid: bool) -> None:
    expected = [
        (
            "patientId",
            "invalid_id",
            "patientId: must be a ClinikAPI patient id (pt_...); legacy ids need a [patients] "
            "crosswalk (invalid_id)",
        )
    ]
    if valid:
        ConsentIn.model_validate(body(patientId=value))
    else:
        assert [(e.field, e.code, e.message) for e in errors_of(body(patientId=value))] == expected


@pytest.mark.parametrize(
    ("field", "make"), [("patientId", lambda v: body(patientId=v)), *ID_FIELDS]
)
def test_an_id_of_the_wrong_type_is_invalid_type(field: str, make: Any) -> None:
    assert pairs(make(12345)) == [(field, "invalid_type")]


REFERENCE_FIELDS: list[tuple[str, Any]] = [
    (
        "provision.actor.reference",
        lambda v: body(provision={"actor": [{"role": "r", "reference": v}]}),
    ),
    ("provision.data.reference", lambda v: body(provision={"data": [{"reference": v}]})),
]


@pytest.mark.parametrize("value", ["pr_1", "Practitioner/pr_1", "Patient/pt.1-x", "a" * 128])
@pytest.mark.parametrize(("field", "make"), REFERENCE_FIELDS)
def test_references_are_ids_optionally_typed(field: str, make: Any, value: str) -> None:
    ConsentIn.model_validate(make(value))


@pytest.mark.parametrize(
    "value", ["", "Practitioner/", "/pr_1", "a/b/c", "1Type/pr_1", "Practitioner/pr 1", "a" * 129]
)
@pytest.mark.parametrize(("field", "make"), REFERENCE_FIELDS)
def test_bad_references_are_invalid_id(field: str, make: Any, value: str) -> None:
    [error] = errors_of(make(value))
    assert (error.field, error.code) == (field, "invalid_id")
    assert "Type/id" in error.message


# --- category --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("hipaa-notice", ["hipaa-notice"]),  # one code becomes a list of one
        (["a", "b"], ["a", "b"]),
        (["b", "a"], ["b", "a"]),  # order is kept
        (["a", "b", "a", "b", "c"], ["a", "b", "c"]),  # exact repeats are dropped
        (["a", "A"], ["a", "A"]),  # only exact repeats
        (("a", "b"), ["a", "b"]),
    ],
)
def test_category_is_stored_as_a_list(value: Any, stored: list[str]) -> None:
    model = ConsentIn.model_validate(body(category=value))
    assert model.category == stored
    assert to_api_json(model)["category"] == stored


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ([], "missing_required"),  # no category at all: the required field is missing
        ("", "empty_value"),
        ([""], "empty_value"),
        (["a", ""], "empty_value"),
        (["", ""], "empty_value"),  # reported once, not per item
        (5, "invalid_type"),
        ({"code": "a"}, "invalid_type"),
        (["a", 5], "invalid_type"),
        ([["a"]], "invalid_type"),  # unhashable items must not break the de-duplication
    ],
)
def test_bad_categories(value: Any, code: str) -> None:
    assert pairs(body(category=value)) == [("category", code)]


def test_category_messages_say_what_is_wanted() -> None:
    assert [e.message for e in errors_of(body(category=[]))] == [
        "category: needs at least one category (missing_required)"
    ]
    assert [e.message for e in errors_of(body(category=["a", ""]))] == [
        "category: must not hold an empty code (empty_value)"
    ]
    assert [e.message for e in errors_of(body(category=5))] == [
        "category: must be a code or a list of codes (invalid_type)"
    ]


# --- verification ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"verified": True},
        {"verified": False, "verifiedWith": "pt_1", "verificationDate": "2024-05-01T10:00:00Z"},
        [{"verified": True}],
        [{"verified": True, "verifiedWith": "pt_1"}, {"verified": False}],
    ],
)
def test_verification_keeps_its_shape(value: Any) -> None:
    assert to_api_json(ConsentIn.model_validate(body(verification=value)))["verification"] == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yes", [("verification", "invalid_type")]),
        (True, [("verification", "invalid_type")]),
        ([], [("verification", "empty_value")]),
        (["yes"], [("verification", "invalid_type")]),
        ({"verified": "maybe"}, [("verification.verified", "invalid_type")]),
        ([{"verified": True}, {"verified": "maybe"}], [("verification.verified", "invalid_type")]),
        ({"verifiedWith": "pt_1"}, [("verification.verified", "missing_required")]),
        ({"verified": True, "verifiedBy": "pt_1"}, [("verification.verifiedBy", "unknown_field")]),
        (
            [
                {"verified": True, "verifiedWith": "a b"},
                {"verified": True, "verificationDate": "x"},
            ],
            [
                ("verification.verifiedWith", "invalid_id"),
                ("verification.verificationDate", "invalid_date"),
            ],
        ),
    ],
)
def test_verification_errors_are_one_clean_error_each(
    value: Any, expected: list[tuple[str, str]]
) -> None:
    assert pairs(body(verification=value)) == expected


def test_verification_type_message_names_both_shapes() -> None:
    assert [e.message for e in errors_of(body(verification="yes"))] == [
        "verification: must be an object or a list of objects (invalid_type)"
    ]


@pytest.mark.parametrize(
    ("value", "flag"), [("true", True), ("false", False), (1, True), (0, False)]
)
def test_verified_reads_json_like_booleans(value: Any, flag: bool) -> None:
    model = ConsentIn.model_validate(body(verification={"verified": value}))
    assert isinstance(model.verification, Verification)
    assert model.verification.verified is flag


# --- nested provisions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provision", "expected"),
    [
        ("permit", [("provision", "invalid_type")]),
        ({"type": "permit", "period": "2024"}, [("provision.period", "invalid_type")]),
        ({"actor": {"role": "r", "reference": "x"}}, [("provision.actor", "invalid_type")]),
        ({"actor": [{"reference": "x"}]}, [("provision.actor.role", "missing_required")]),
        ({"actor": [{"role": "", "reference": "x"}]}, [("provision.actor.role", "empty_value")]),
        ({"action": [{"code": ""}]}, [("provision.action.code", "empty_value")]),
        ({"securityLabel": [{"code": 7}]}, [("provision.securityLabel.code", "invalid_type")]),
        ({"purpose": ["TREAT"]}, [("provision.purpose", "invalid_type")]),
        (
            {"class": [{"code": "x", "version": "1"}]},
            [("provision.class.version", "unknown_field")],
        ),
        ({"data": [{"reference": "a b"}]}, [("provision.data.reference", "invalid_id")]),
        ({"provision": {"type": "deny"}}, [("provision.provision", "invalid_type")]),
        (
            {"provision": [{"type": "deny", "actor": [{"role": "r"}]}]},
            [("provision.provision.actor.reference", "missing_required")],
        ),
        (
            {"provision": [{"provision": [{"provision": [{"class": [{"system": "s"}]}]}]}]},
            [("provision.provision.provision.provision.class.code", "missing_required")],
        ),
        (
            {"provision": [{"dataPeriod": {"start": T2, "end": T1}}]},
            [("provision.provision.dataPeriod", "period_order")],
        ),
        # several errors in one provision: all reported, in order
        (
            {"type": "maybe", "period": {"start": "x"}, "purpose": [{"code": ""}]},
            [
                ("provision.type", "invalid_enum"),
                ("provision.period.start", "invalid_date"),
                ("provision.purpose.code", "empty_value"),
            ],
        ),
    ],
)
def test_provision_errors_name_their_dotted_path(
    provision: Any, expected: list[tuple[str, str]]
) -> None:
    assert pairs(body(provision=provision)) == expected


# --- other fields -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"policyUri": ""}, [("policyUri", "empty_value")]),
        ({"policyUri": 5}, [("policyUri", "invalid_type")]),
        ({"policyRule": ""}, [("policyRule", "empty_value")]),
        ({"policies": [{}]}, [("policies", "empty_value")]),  # neither authority nor uri
        ({"policies": [{"uri": ""}]}, [("policies.uri", "empty_value")]),
        ({"policies": {"uri": "u"}}, [("policies", "invalid_type")]),
        ({"sourceAttachment": {"title": ""}}, [("sourceAttachment.title", "empty_value")]),
        ({"sourceAttachment": {"mime": "x"}}, [("sourceAttachment.mime", "unknown_field")]),
        ({"sourceAttachment": "doc.pdf"}, [("sourceAttachment", "invalid_type")]),
    ],
)
def test_other_field_rules(changes: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert pairs(body(**changes)) == expected


def test_policies_message() -> None:
    assert [e.message for e in errors_of(body(policies=[{}]))] == [
        "policies: each policy needs an authority or a uri (empty_value)"
    ]


# --- unknown fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (body(fooBar=1), [("fooBar", "unknown_field")]),
        (body(fooBar=None), [("fooBar", "unknown_field")]),  # unknown even when null
        (body(id="consent_1"), [("id", "unknown_field")]),  # the server assigns ids
        (body(provision={"kind": "permit"}), [("provision.kind", "unknown_field")]),
        (
            body(provision={"provision": [{"Type": "deny"}]}),
            [("provision.provision.Type", "unknown_field")],
        ),
        # a key that does not look like a field name is not echoed: it may be a value
        (body(**{"pt 8f3a@x": 1}), [("body", "unknown_field")]),
        (body(provision={"a b": 1}), [("provision", "unknown_field")]),
    ],
)
def test_unknown_fields(data: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert pairs(data) == expected


def test_unknown_field_message() -> None:
    assert [e.message for e in errors_of(body(fooBar=1))] == [
        "fooBar: is not a field of this body (unknown_field)"
    ]


@pytest.mark.parametrize("data", ["a string", ["a", "list"], 5, None])
def test_a_body_that_is_not_an_object(data: Any) -> None:
    code = "missing_required" if data is None else "invalid_type"
    assert pairs(data) == [("body", code)]


# --- the JSON the API gets --------------------------------------------------------------------


def test_full_body_round_trips_exactly() -> None:
    model = ConsentIn.model_validate(copy.deepcopy(FULL))
    assert to_api_json(model) == FULL
    assert json.loads(model.model_dump_json(by_alias=True, exclude_none=True)) == FULL
    assert ConsentIn.model_validate_json(json.dumps(FULL)) == model
    assert ConsentIn.model_validate(to_api_json(model)) == model  # idempotent


def test_full_body_reads_into_python_names() -> None:
    model = ConsentIn.model_validate(FULL)
    assert model.patient_id == "pt_8f3a"
    assert model.scope is Scope.RESEARCH
    assert model.date_time == datetime(2024, 5, 1, 7, 30, tzinfo=UTC)
    assert model.provision is not None
    assert model.provision.class_ == [
        Coding(system="http://hl7.org/fhir/resource-types", code="Observation")
    ]
    assert model.provision.provision is not None
    assert model.provision.provision[0].type is ProvisionType.DENY


def test_models_built_in_python_dump_camel_case_without_nulls() -> None:
    model = ConsentIn(
        patient_id="pt_1",
        scope=Scope.ADR,
        category=["advance-directive"],
        status=Status.PROPOSED,
        date_time=datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
        verification=Verification(verified=False, verified_with="pt_1"),
        provision=Provision(
            type=ProvisionType.DENY,
            period=Period(start=datetime(2024, 5, 1, tzinfo=UTC)),
            class_=[Coding(code="Observation")],
            security_label=[Coding(code="R")],
        ),
    )
    expected = {
        "patientId": "pt_1",
        "scope": "adr",
        "category": ["advance-directive"],
        "status": "proposed",
        "dateTime": "2024-05-01T09:30:00Z",
        "verification": {"verified": False, "verifiedWith": "pt_1"},  # False is kept, None is not
        "provision": {
            "type": "deny",
            "period": {"start": "2024-05-01T00:00:00Z"},
            "securityLabel": [{"code": "R"}],
            "class": [{"code": "Observation"}],
        },
    }
    assert to_api_json(model) == expected
    assert model.model_dump_json(by_alias=True, exclude_none=True) == json.dumps(
        expected, separators=(",", ":")
    )


def test_python_names_are_accepted_as_input_too() -> None:
    data = {"patient_id": "pt_1", "scope": "treatment", "category": "c", "date_time": T1}
    assert to_api_json(ConsentIn.model_validate(data))["dateTime"] == T1


def test_json_schema_builds() -> None:
    schema = ConsentIn.model_json_schema(by_alias=True)
    assert schema["properties"]["dateTime"]["anyOf"][0] == {"type": "string", "format": "date-time"}
    assert schema["additionalProperties"] is False


# --- PATCH body -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "dumped"),
    [
        ({}, {}),
        ({"status": "inactive"}, {"status": "inactive"}),  # revoking a consent
        ({"status": "active", "policyUri": "u"}, {"status": "active", "policyUri": "u"}),
        ({"verification": {"verified": True}}, {"verification": {"verified": True}}),
        (
            {"provision": {"type": "deny", "class": [{"code": "x"}]}},
            {"provision": {"type": "deny", "class": [{"code": "x"}]}},
        ),
        ({"status": None}, {}),
    ],
)
def test_patch_bodies(data: dict[str, Any], dumped: dict[str, Any]) -> None:
    assert to_api_json(ConsentPatch.model_validate(data)) == dumped


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"patientId": "pt_1"}, [("patientId", "unknown_field")]),  # only four fields may change
        ({"category": "x"}, [("category", "unknown_field")]),
        ({"status": "revoked"}, [("status", "invalid_enum")]),
        (
            {"provision": {"period": {"start": T2, "end": T1}}},
            [("provision.period", "period_order")],
        ),
        ({"verification": []}, [("verification", "empty_value")]),
    ],
)
def test_patch_errors(data: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert pairs(data, ConsentPatch) == expected


# --- no values in messages --------------------------------------------------------------------

SECRET = "SECRET-PHI-123"

#: One body per kind of error, each carrying the secret as the offending value (or key).
SECRET_BODIES: list[tuple[dict[str, Any], str]] = [
    (body(scope=SECRET), "invalid_enum"),
    (body(status=SECRET), "invalid_enum"),
    (body(provision={"type": SECRET}), "invalid_enum"),
    (body(patientId=SECRET + " x"), "invalid_id"),
    (body(performerId=SECRET * 10), "invalid_id"),
    (body(verification={"verified": True, "verifiedWith": SECRET + "/"}), "invalid_id"),
    (body(provision={"actor": [{"role": "r", "reference": SECRET + "/a/b"}]}), "invalid_id"),
    (body(dateTime=SECRET), "invalid_date"),
    (body(dateTime="2024-05-01T09:30:00 " + SECRET), "invalid_date"),
    (body(provision={"period": {"start": SECRET}}), "invalid_date"),
    (body(verification={"verified": SECRET}), "invalid_type"),
    (body(verification=SECRET), "invalid_type"),
    (body(category={SECRET: SECRET}), "invalid_type"),
    (body(policyUri=[SECRET]), "invalid_type"),
    (body(fooBar=SECRET), "unknown_field"),
    (body(**{SECRET: "x"}), "unknown_field"),  # the secret as a key
    (body(provision={SECRET: SECRET}), "unknown_field"),
    (body(category=[SECRET, ""]), "empty_value"),
    (body(policies=[{"authority": None, "other": SECRET}]), "unknown_field"),
    (
        body(
            provision={"period": {"start": "2024-05-01T09:30:00Z", "end": "2024-04-01T09:30:00Z"}},
            performerId=SECRET,
        ),
        "period_order",
    ),
    (SECRET, "invalid_type"),  # the whole body
]


@pytest.mark.parametrize(("data", "code"), SECRET_BODIES)
@pytest.mark.parametrize("model", [ConsentIn, ConsentPatch])
def test_messages_never_hold_the_value(data: Any, code: str, model: type[ConsentIn]) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    found = field_errors(info.value)
    assert found
    if model is ConsentIn:
        assert code in {e.code for e in found}
    for error in found:
        assert SECRET not in error.field
        assert SECRET not in error.message
    if not any(SECRET in key for key in _keys(data)):
        # pydantic's own text is kept value-free too, for anyone who logs the exception
        # (it does name keys, so a secret used as a key is only kept out of our messages)
        assert SECRET not in str(info.value)


def _keys(data: Any) -> list[str]:
    if isinstance(data, dict):
        return [str(k) for k in data] + [k for v in data.values() for k in _keys(v)]
    if isinstance(data, list):
        return [k for v in data for k in _keys(v)]
    return []


def test_every_code_has_a_rule() -> None:
    assert set(CODES) == {
        "missing_required",
        "invalid_enum",
        "invalid_date",
        "period_order",
        "invalid_id",
        "invalid_type",
        "invalid_value",
        "too_long",
        "unknown_field",
        "empty_value",
    }
