"""Body validation of `POST /v1/consents`: what is refused, and what the 422 says.

String values in the bad bodies carry the marker PHI, and no response may echo it:
diagnostics name fields and rules, never values.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from importer.sandbox import RunningSandbox
from importer.sandbox._validation import parse_instant, validate_consent

KEY = "clk_test_validation"
BASE = {"patientId": "pt_PHI", "scope": "treatment", "category": "treatment-consent"}
STATUSES = "draft, proposed, active, rejected, inactive"
INSTANT_RULE = "must be an ISO 8601 date-time with an offset (…Z or …+01:00)"
DATE_RULE = "must be an ISO 8601 date or a date-time with an offset"


def without(*keys: str) -> dict[str, Any]:
    return {k: v for k, v in BASE.items() if k not in keys}


def provision(**fields: Any) -> dict[str, Any]:
    return {**BASE, "provision": fields}


INVALID: list[tuple[str, Any, list[str]]] = [
    # (case, body, diagnostics in order)
    ("not an object", ["PHI"], ["body: must be a JSON object"]),
    ("empty object", {}, ["patientId: required", "scope: required", "category: required"]),
    ("no patientId", without("patientId"), ["patientId: required"]),
    ("no scope", without("scope"), ["scope: required"]),
    ("no category", without("category"), ["category: required"]),
    ("patientId a number", {**BASE, "patientId": 42}, ["patientId: must be a string"]),
    ("patientId blank", {**BASE, "patientId": "  "}, ["patientId: must not be empty"]),
    ("patientId null", {**BASE, "patientId": None}, ["patientId: must be a string"]),
    (
        "scope unknown",
        {**BASE, "scope": "PHI"},
        ["scope: must be one of patient-privacy, treatment, research, adr"],
    ),
    ("category empty list", {**BASE, "category": []}, ["category: must not be empty"]),
    ("category item blank", {**BASE, "category": ["a", ""]}, ["category[1]: must not be empty"]),
    ("category item number", {**BASE, "category": [1]}, ["category[0]: must be a string"]),
    (
        "category object",
        {**BASE, "category": {"code": "PHI"}},
        ["category: must be a string or a list of strings"],
    ),
    ("status unknown", {**BASE, "status": "PHI"}, [f"status: must be one of {STATUSES}"]),
    (
        "dateTime without offset",
        {**BASE, "dateTime": "2024-01-01T10:00:00"},
        [f"dateTime: {INSTANT_RULE}"],
    ),
    ("dateTime date only", {**BASE, "dateTime": "2024-01-01"}, [f"dateTime: {INSTANT_RULE}"]),
    (
        "dateTime no such day",
        {**BASE, "dateTime": "2024-02-30T10:00:00Z"},
        [f"dateTime: {INSTANT_RULE}"],
    ),
    (
        "dateTime basic format",
        {**BASE, "dateTime": "20240101T100000Z"},
        [f"dateTime: {INSTANT_RULE}"],
    ),
    ("dateTime words", {**BASE, "dateTime": "PHI"}, [f"dateTime: {INSTANT_RULE}"]),
    ("performerId number", {**BASE, "performerId": 7}, ["performerId: must be a string"]),
    (
        "organizationId list",
        {**BASE, "organizationId": ["PHI"]},
        ["organizationId: must be a string"],
    ),
    ("unknown field", {**BASE, "mrn": "PHI"}, ["mrn: unknown field"]),
    # A key that looks like a pasted value is not repeated either.
    ("odd unknown field", {**BASE, "Jane PHI Doe": 1}, ["(unnamed field): unknown field"]),
    ("id is not writable", {**BASE, "id": "consent_1"}, ["id: unknown field"]),
    ("policies not a list", {**BASE, "policies": {"uri": "PHI"}}, ["policies: must be a list"]),
    (
        "policies extra key",
        {**BASE, "policies": [{"url": "PHI"}]},
        ["policies[0].url: unknown field"],
    ),
    (
        "sourceAttachment field",
        {**BASE, "sourceAttachment": {"title": 5}},
        ["sourceAttachment.title: must be a string"],
    ),
    (
        "verification not bool",
        {**BASE, "verification": {"verified": "PHI"}},
        ["verification.verified: must be true or false"],
    ),
    (
        "verification missing verified",
        {**BASE, "verification": [{}]},
        ["verification[0].verified: required"],
    ),
    (
        "verification date",
        {**BASE, "verification": {"verified": True, "verificationDate": "PHI"}},
        [f"verification.verificationDate: {DATE_RULE}"],
    ),
    ("verification string", {**BASE, "verification": "PHI"}, ["verification: must be an object"]),
    ("provision not object", {**BASE, "provision": "PHI"}, ["provision: must be an object"]),
    ("provision type", provision(type="PHI"), ["provision.type: must be one of permit, deny"]),
    (
        "provision period reversed",
        provision(period={"start": "2025-01-01", "end": "2024-01-01"}),
        ["provision.period: start must not be after end"],
    ),
    (
        "dataPeriod reversed instants",
        provision(dataPeriod={"start": "2024-01-02T00:00:00Z", "end": "2024-01-01T23:00:00+02:00"}),
        ["provision.dataPeriod: start must not be after end"],
    ),
    (
        "period bad bound",
        provision(period={"start": "PHI"}),
        [f"provision.period.start: {DATE_RULE}"],
    ),
    (
        "period extra key",
        provision(period={"from": "2024-01-01"}),
        ["provision.period.from: unknown field"],
    ),
    (
        "actor without role",
        provision(actor=[{"reference": "PHI"}]),
        ["provision.actor[0].role: required"],
    ),
    (
        "actor without reference",
        provision(actor=[{"role": "PHI"}]),
        ["provision.actor[0].reference: required"],
    ),
    (
        "coding without code",
        provision(action=[{"system": "PHI"}]),
        ["provision.action[0].code: required"],
    ),
    (
        "codings not a list",
        provision(purpose={"code": "PHI"}),
        ["provision.purpose: must be a list"],
    ),
    (
        "class coding code",
        provision(**{"class": [{"code": 1}]}),
        ["provision.class[0].code: must be a string"],
    ),
    (
        "securityLabel item",
        provision(securityLabel=["PHI"]),
        ["provision.securityLabel[0]: must be an object"],
    ),
    ("data without reference", provision(data=[{}]), ["provision.data[0].reference: required"]),
    (
        "nested provision checked too",
        provision(provision=[{"type": "PHI"}]),
        ["provision.provision[0].type: must be one of permit, deny"],
    ),
    ("provision unknown key", provision(who="PHI"), ["provision.who: unknown field"]),
    (
        "several problems at once",
        {"patientId": 1, "scope": "PHI", "category": "x", "extra": True},
        [
            "extra: unknown field",
            "patientId: must be a string",
            "scope: must be one of patient-privacy, treatment, research, adr",
        ],
    ),
]


@pytest.mark.parametrize(
    ("body", "diagnostics"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_bodies_are_422(
    server: RunningSandbox, client: httpx.Client, body: Any, diagnostics: list[str]
) -> None:
    stored = len(server.consents())
    response = client.post("/v1/consents", json=body)
    assert response.status_code == 422
    assert len(server.consents()) == stored  # an invalid body stores nothing
    error = response.json()
    assert error["error"] == "Validation Error"
    assert error["code"] == "VALIDATION_ERROR"
    assert error["requestId"] == response.headers["x-request-id"]
    assert error["issues"] == [
        {"severity": "error", "code": "invalid", "diagnostics": d} for d in diagnostics
    ]
    assert "PHI" not in response.text


VALID: list[tuple[str, dict[str, Any]]] = [
    ("minimal", BASE),
    ("category list", {**BASE, "category": ["hipaa-notice", "treatment-consent"]}),
    ("every scope", {**BASE, "scope": "adr"}),
    ("offset instant", {**BASE, "dateTime": "2024-01-01T10:00:00.123+05:30"}),
    ("nanoseconds", {**BASE, "dateTime": "2024-01-01T10:00:00.123456789Z"}),
    ("minutes only", {**BASE, "dateTime": "2024-01-01T10:00Z"}),
    ("verification list", {**BASE, "verification": [{"verified": False}, {"verified": True}]}),
    (
        "verification date",
        {**BASE, "verification": {"verified": True, "verificationDate": "2024-01-01"}},
    ),
    ("open period", provision(type="deny", period={"start": "2024-01-01"})),
    # A date-only end covers its whole day, so a same-day instant start fits.
    ("same day bounds", provision(period={"start": "2024-01-01T15:00:00Z", "end": "2024-01-01"})),
    (
        "deep but allowed",
        provision(provision=[{"provision": [{"provision": [{"type": "permit"}]}]}]),
    ),
]


@pytest.mark.parametrize("body", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_bodies_are_201(client: httpx.Client, body: dict[str, Any]) -> None:
    response = client.post("/v1/consents", json=body)
    assert response.status_code == 201, response.text


def test_provisions_nested_too_deep_are_refused() -> None:
    nested: dict[str, Any] = {"type": "permit"}
    for _ in range(12):
        nested = {"provision": [nested]}
    issues = validate_consent({**BASE, "provision": nested})
    assert len(issues) == 1
    assert issues[0].endswith("nested more than 8 levels deep")


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2024-01-01T10:00:00Z", "2024-01-01T10:00:00+00:00"),
        ("2024-01-01T10:00:00+02:00", "2024-01-01T08:00:00+00:00"),
        ("2024-01-01T23:30:00-05:00", "2024-01-02T04:30:00+00:00"),
        ("2024-01-01T10:00:00.5Z", "2024-01-01T10:00:00.500000+00:00"),
        ("2024-01-01T10:00:00+0200", None),  # ISO basic offset: refused
        ("2024-01-01 10:00:00Z", None),  # a space is not a T
        ("2024-01-01T24:00:00Z", None),
    ],
)
def test_parse_instant(text: str, utc: str | None) -> None:
    parsed = parse_instant(text)
    assert (parsed.isoformat() if parsed else None) == utc
