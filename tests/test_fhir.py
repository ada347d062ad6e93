"""FHIR R4 Consent input: reading, the built-in mapping, unsupported elements, [fhir]
rename/drop, and the same guarantees as CSV (validate, preview, run, rerun, export, verify)."""

from __future__ import annotations

import copy
import json
import shutil
import stat
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from importer._errors import ConfigError, InputError
from importer.commands._validate import validate_files
from importer.engine._revocation import is_correction_file
from importer.intake._fhir import MAPPED_PATHS, FhirOptions, FhirTable
from importer.intake._fhir_body import FhirMapper
from importer.intake._mapping import load_mapping
from importer.intake._models import ConsentIn, to_api_json
from importer.intake._normalize import Normalizer
from importer.intake._reader import open_table
from importer.sandbox import RunningSandbox
from tests.cli_helpers import run_cli
from tests.engine_helpers import KEY
from tests.helpers import warnings_heard

SAMPLES = Path(__file__).parent.parent / "sample_data" / "fhir"
SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT = "http://terminology.hl7.org/CodeSystem/consentaction"
REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
RTYPE = "http://hl7.org/fhir/resource-types"

BASE: dict[str, Any] = {
    "resourceType": "Consent",
    "id": "c-1",
    "status": "active",
    "scope": {"coding": [{"system": SCOPE, "code": "patient-privacy"}]},
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "patient": {"reference": "Patient/pt_1"},
}


def consent(**more: Any) -> dict[str, Any]:
    resource = copy.deepcopy(BASE)
    resource.update(more)
    return resource


def mapper(
    rename: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
    crosswalk: dict[str, str] | None = None,
    zone: str = "UTC",
) -> FhirMapper:
    return FhirMapper(FhirOptions(rename or {}, frozenset(drop)), crosswalk, ZoneInfo(zone))


def body_of(resource: dict[str, Any], m: FhirMapper | None = None) -> dict[str, Any]:
    """The body as it is sent (the model's JSON), once the mapping found no problem."""
    m = m or mapper()
    body = m.body(resource)
    assert m.problems == [], m.problems
    return to_api_json(ConsentIn.model_validate(body))


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def concept(*codings: dict[str, str]) -> dict[str, Any]:
    return {"coding": list(codings)}


# --- point 2: FHIR fragment -> body fragment ---------------------------------------------------

DEEP = {
    "type": "permit",
    "provision": [
        {
            "type": "deny",
            "provision": [
                {"type": "permit", "provision": [{"type": "deny", "class": [coding(RTYPE, "Obs")]}]}
            ],
        }
    ],
}


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        # scope: the coding's code (system and display say which code it is)
        (
            {"scope": concept(coding(SCOPE, "research", "Research"))},
            {"scope": "research"},
        ),
        # category: every concept's codes, in order, repeats once
        (
            {
                "category": [
                    concept(coding("http://loinc.org", "59284-0"), coding("x", "hipaa-notice")),
                    concept(coding("y", "hipaa-notice")),
                ]
            },
            {"category": ["59284-0", "hipaa-notice"]},
        ),
        ({"status": "proposed"}, {"status": "proposed"}),
        ({"dateTime": "2024-05-01T09:30:00+02:00"}, {"dateTime": "2024-05-01T09:30:00+02:00"}),
        # a day: its midnight in [source] timezone (UTC here)
        ({"dateTime": "2024-05-01"}, {"dateTime": "2024-05-01T00:00:00Z"}),
        # performer / organization: references to ids give the id part
        ({"performer": [{"reference": "Practitioner/pr_7"}]}, {"performerId": "pr_7"}),
        (
            {"organization": [{"reference": "https://fhir.example/Organization/org_1/_history/3"}]},
            {"organizationId": "org_1"},
        ),
        # a display beside a reference describes it
        ({"performer": [{"reference": "Patient/pt_1", "display": "Ann"}]}, {"performerId": "pt_1"}),
        (
            {"sourceReference": {"reference": "QuestionnaireResponse/abc"}},
            {"sourceReferenceId": "abc"},
        ),
        (
            {
                "sourceAttachment": {
                    "contentType": "application/pdf",
                    "url": "https://d.example/1.pdf",
                    "title": "Signed form",
                    "data": "JVBERi0=",
                }
            },
            {
                "sourceAttachment": {
                    "contentType": "application/pdf",
                    "url": "https://d.example/1.pdf",
                    "title": "Signed form",
                    "data": "JVBERi0=",
                }
            },
        ),
        (
            {"policy": [{"authority": "https://a.example", "uri": "https://a.example/p1"}]},
            {"policies": [{"authority": "https://a.example", "uri": "https://a.example/p1"}]},
        ),
        (
            {"policy": [{"uri": "https://a.example/p2"}]},
            {"policies": [{"uri": "https://a.example/p2"}]},
        ),
        (
            {
                "policyRule": concept(
                    coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "OPTIN")
                )
            },
            {"policyRule": "OPTIN"},
        ),
        (
            {
                "verification": [
                    {
                        "verified": True,
                        "verifiedWith": {"reference": "RelatedPerson/rp_2"},
                        "verificationDate": "2024-05-02",
                    }
                ]
            },
            {
                "verification": [
                    {
                        "verified": True,
                        "verifiedWith": "rp_2",
                        "verificationDate": "2024-05-02T00:00:00Z",
                    }
                ]
            },
        ),
        ({"provision": {"type": "deny"}}, {"provision": {"type": "deny"}}),
        (
            {"provision": {"period": {"start": "2024-01-01T00:00:00Z", "end": "2025-01-01"}}},
            {
                "provision": {
                    "period": {
                        "start": "2024-01-01T00:00:00Z",
                        "end": "2025-01-01T23:59:59.999000Z",
                    }
                }
            },
        ),
        # actor: role's code, reference kept as Type/id (the API takes references)
        (
            {
                "provision": {
                    "actor": [
                        {
                            "role": concept(coding("v3-ParticipationType", "PRCP")),
                            "reference": {"reference": "Organization/org_2"},
                        }
                    ]
                }
            },
            {"provision": {"actor": [{"role": "PRCP", "reference": "Organization/org_2"}]}},
        ),
        # action: CodeableConcepts -> codings, system kept
        (
            {
                "provision": {
                    "action": [concept(coding(ACT, "access")), concept(coding(ACT, "use"))]
                }
            },
            {"provision": {"action": [coding(ACT, "access"), coding(ACT, "use")]}},
        ),
        (
            {"provision": {"securityLabel": [coding("v3-Confidentiality", "R", "restricted")]}},
            {"provision": {"securityLabel": [coding("v3-Confidentiality", "R", "restricted")]}},
        ),
        (
            {"provision": {"purpose": [coding(REASON, "HMARKT", "healthcare marketing")]}},
            {"provision": {"purpose": [coding(REASON, "HMARKT", "healthcare marketing")]}},
        ),
        # class: systems and displays kept
        (
            {"provision": {"class": [coding(RTYPE, "Observation", "Observation"), {"code": "x"}]}},
            {"provision": {"class": [coding(RTYPE, "Observation", "Observation"), {"code": "x"}]}},
        ),
        (
            {"provision": {"dataPeriod": {"start": "2020-01-01T00:00:00Z"}}},
            {"provision": {"dataPeriod": {"start": "2020-01-01T00:00:00Z"}}},
        ),
        # data: meaning "instance" is what a data reference means
        (
            {
                "provision": {
                    "data": [{"meaning": "instance", "reference": {"reference": "Observation/o1"}}]
                }
            },
            {"provision": {"data": [{"reference": "Observation/o1"}]}},
        ),
        # a date-only period end is the end of its day, as CSV reads it; a start its midnight
        (
            {"provision": {"period": {"start": "2024-10-01", "end": "2024-10-02"}}},
            {
                "provision": {
                    "period": {
                        "start": "2024-10-01T00:00:00Z",
                        "end": "2024-10-02T23:59:59.999000Z",
                    }
                }
            },
        ),
        (
            {"provision": {"dataPeriod": {"end": "2024-10-02"}}},
            {"provision": {"dataPeriod": {"end": "2024-10-02T23:59:59.999000Z"}}},
        ),
        (  # nested provisions' ends too
            {"provision": {"provision": [{"period": {"end": "2024-10-02"}}]}},
            {"provision": {"provision": [{"period": {"end": "2024-10-02T23:59:59.999000Z"}}]}},
        ),
        (  # a time of day is as written
            {"provision": {"period": {"end": "2024-10-02T10:00:00Z"}}},
            {"provision": {"period": {"end": "2024-10-02T10:00:00Z"}}},
        ),
        # nested provisions, to any depth
        ({"provision": DEEP}, {"provision": DEEP}),
        # element ids and the resource's meta and text are bookkeeping
        (
            {
                "meta": {"versionId": "3"},
                "text": {"status": "generated", "div": "<div/>"},
                "provision": {"id": "p1", "type": "permit"},
            },
            {"provision": {"type": "permit"}},
        ),
    ],
)
def test_fhir_fragment_becomes_body_fragment(
    fragment: dict[str, Any], expected: dict[str, Any]
) -> None:
    body = body_of(consent(**fragment))
    for name, value in expected.items():
        assert body[name] == value
    # the base's own fields are always there
    assert body["patientId"] == "pt_1"


def test_patient_references_go_through_the_crosswalk() -> None:
    m = mapper(crosswalk={"p-7": "pt_seven", "p-8": "pt_eight"})
    body = body_of(
        consent(
            patient={"reference": "Patient/p-7"},
            performer=[{"reference": "Patient/p-8"}],
            provision={
                "actor": [
                    {
                        "role": concept(coding("r", "PRCP")),
                        "reference": {"reference": "Patient/p-8"},
                    }
                ]
            },
        ),
        m,
    )
    assert body["patientId"] == "pt_seven"
    assert body["performerId"] == "pt_eight"
    assert body["provision"]["actor"][0]["reference"] == "Patient/pt_eight"


def test_a_day_is_midnight_in_the_source_timezone() -> None:
    body = body_of(consent(dateTime="2024-07-01"), mapper(zone="America/Chicago"))
    assert body["dateTime"] == "2024-07-01T00:00:00-05:00"


def test_a_day_ending_a_period_is_its_last_moment_in_the_source_timezone() -> None:
    provision = {"period": {"end": "2024-10-02"}, "dataPeriod": {"end": "2024-10-02"}}
    body = body_of(consent(provision=provision), mapper(zone="America/Chicago"))
    assert body["provision"]["period"]["end"] == "2024-10-02T23:59:59.999000-05:00"
    assert body["provision"]["dataPeriod"]["end"] == "2024-10-02T23:59:59.999000-05:00"


CONTAINERS: dict[str, Any] = {
    "": lambda v: {"zzz": v},
    "sourceAttachment": lambda v: {"sourceAttachment": {"zzz": v}},
    "policy": lambda v: {"policy": [{"zzz": v}]},
    "verification": lambda v: {"verification": [{"zzz": v}]},
    "provision": lambda v: {"provision": {"zzz": v}},
    "provision.period": lambda v: {"provision": {"period": {"zzz": v}}},
    "provision.dataPeriod": lambda v: {"provision": {"dataPeriod": {"zzz": v}}},
    "provision.actor": lambda v: {"provision": {"actor": [{"zzz": v}]}},
    "provision.data": lambda v: {"provision": {"data": [{"zzz": v}]}},
}


@pytest.mark.parametrize("path", sorted(MAPPED_PATHS))
def test_every_rename_target_feeds_a_field(path: str) -> None:
    """A rename may only target MAPPED_PATHS: each is read by the mapper, so an element
    renamed there is never `unsupported_element`."""
    parent = path.rpartition(".")[0]
    source = f"{parent}.zzz" if parent else "zzz"
    value = "instance" if path == "provision.data.meaning" else "x"
    m = mapper(rename={source: path})
    m.body(consent(**CONTAINERS[parent](value)))
    assert [p for p in m.problems if p.code == "unsupported_element"] == []


# --- point 3: nothing dropped silently -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fragment", "shown", "path", "code"),
    [
        (
            {"provision": {"provision": [{"type": "deny", "code": [concept(coding("s", "c"))]}]}},
            "provision.provision[0].code",
            "provision.code",
            "unsupported_element",
        ),
        (
            {"extension": [{"url": "u", "valueString": "v"}]},
            "extension",
            "extension",
            "unsupported_element",
        ),
        (
            {"modifierExtension": [{"url": "u"}]},
            "modifierExtension",
            "modifierExtension",
            "unsupported_element",
        ),
        ({"identifier": [{"value": "1"}]}, "identifier", "identifier", "unsupported_element"),
        ({"_status": {"extension": []}}, "_status", "_status", "unsupported_element"),
        # a reference holding only a display names no record
        (
            {"performer": [{"display": "Dr X"}]},
            "performer[0].display",
            "performer.display",
            "unsupported_element",
        ),
        (
            {"patient": {"identifier": {"value": "1"}, "reference": "Patient/pt_1"}},
            "patient.identifier",
            "patient.identifier",
            "unsupported_element",
        ),
        # ClinikAPI takes one performer
        (
            {"performer": [{"reference": "Practitioner/a"}, {"reference": "Practitioner/b"}]},
            "performer[1]",
            "performer",
            "unsupported_element",
        ),
        # a concept's text, a coding's version: no field
        (
            {"category": [{"text": "Consent"}]},
            "category[0].text",
            "category.text",
            "unsupported_element",
        ),
        (
            {"provision": {"class": [{"code": "x", "version": "2"}]}},
            "provision.class[0].version",
            "provision.class.version",
            "unsupported_element",
        ),
        (
            {
                "provision": {
                    "data": [{"meaning": "related", "reference": {"reference": "Encounter/e"}}]
                }
            },
            "provision.data[0].meaning",
            "provision.data.meaning",
            "unsupported_element",
        ),
        (
            {"sourceAttachment": {"size": 10}},
            "sourceAttachment.size",
            "sourceAttachment.size",
            "unsupported_element",
        ),
        (
            {"scope": concept(coding(SCOPE, "research"), coding(SCOPE, "treatment"))},
            "scope",
            "scope",
            "ambiguous_code",
        ),
        ({"dateTime": "2024-05"}, "dateTime", "dateTime", "invalid_date"),
        (
            {"sourceReference": {"reference": "urn:uuid:1234-5678"}},
            "sourceReference.reference",
            "sourceReference.reference",
            "invalid_reference",
        ),
        ({"patient": {"reference": "Group/g1"}}, "patient", "patient", "invalid_reference"),
        ({"provision": {"actor": "x"}}, "provision.actor", "provision.actor", "invalid_element"),
    ],
)
def test_elements_without_a_field_are_row_errors(
    fragment: dict[str, Any], shown: str, path: str, code: str
) -> None:
    m = mapper()
    m.body(consent(**fragment), "entry[3].")
    found = {(p.shown, p.path, p.code) for p in m.problems}
    assert (f"entry[3].{shown}", path, code) in found


def test_a_key_that_is_no_fhir_name_is_never_echoed() -> None:
    """A key may be a value pasted in the wrong place (PHI): the message does not show it."""
    m = mapper()
    m.body(consent(provision={"John Smith 1970": "x"}), "entry[1].")
    [problem] = m.problems
    assert (problem.shown, problem.path, problem.code) == (
        "entry[1].provision",
        "provision",
        "unsupported_element",
    )
    assert "John" not in problem.rule


def test_an_unknown_patient_is_a_row_error() -> None:
    m = mapper(crosswalk={"p-1": "pt_1"})
    m.body(consent(patient={"reference": "Patient/p-2"}))
    assert [(p.path, p.code) for p in m.problems] == [("patient", "unknown_patient")]


def test_rename_moves_an_element_to_a_field_at_any_depth() -> None:
    m = mapper(rename={"provision.code": "provision.class"})
    body = body_of(
        consent(
            provision={
                "code": [concept(coding("sct", "119297000", "Blood specimen"))],
                "class": [coding(RTYPE, "Specimen")],
                "provision": [{"type": "deny", "code": [concept(coding("sct", "1"))]}],
            }
        ),
        m,
    )
    assert body["provision"]["class"] == [
        coding("sct", "119297000", "Blood specimen"),
        coding(RTYPE, "Specimen"),
    ]
    assert body["provision"]["provision"][0]["class"] == [coding("sct", "1")]


def test_drop_leaves_an_element_out_on_purpose_and_counts_it() -> None:
    m = mapper(drop=("extension", "organization", "provision.code"))
    body = body_of(
        consent(
            extension=[{"url": "u"}],
            organization=[{"reference": "Organization/o"}],
            provision={"provision": [{"type": "deny", "code": [concept(coding("s", "c"))]}]},
        ),
        m,
    )
    assert "organizationId" not in body
    assert body["provision"] == {"provision": [{"type": "deny"}]}
    assert m.dropped == {"extension": 1, "organization": 1, "provision.code": 1}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[fhir]\nkeep = []\n", "[fhir]: unknown key 'keep' (allowed: crosswalks, drop, rename)"),
        ('[fhir]\ndrop = "extension"\n', "fhir.drop: must be a list of FHIR paths"),
        ('[fhir]\ndrop = ["provision[0].code"]\n', "is not a FHIR path"),
        (
            '[fhir]\nrename = { "provision.code" = "provision.klass" }\n',
            "'provision.klass' is not an element the FHIR mapping reads",
        ),
        (
            '[fhir]\nrename = { "provision.code" = "category" }\n',
            "a rename moves an element to a sibling of it",
        ),
        (
            '[fhir]\nrename = { "provision.code" = "provision.class" }\n'
            'drop = ["provision.code"]\n',
            "also in fhir.drop",
        ),
    ],
)
def test_fhir_section_errors(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert message in str(caught.value)


# --- point 1: reading ----------------------------------------------------------------------------


def write_bundle(path: Path, resources: list[dict[str, Any]]) -> Path:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }
    path.write_text(json.dumps(bundle), encoding="utf-8")
    return path


def write_ndjson(path: Path, lines: list[Any]) -> Path:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def fhir_warnings() -> Iterator[list[str]]:
    """The FHIR reader's warnings, heard on its own logger (a CLI test may have left the
    package's logger quiet and not propagating)."""
    with warnings_heard("importer.fhir") as said:
        yield said


def test_bundle_errors_name_the_entry_and_other_types_are_skipped(
    tmp_path: Path, fhir_warnings: list[str]
) -> None:
    path = write_bundle(
        tmp_path / "b.json",
        [
            {"resourceType": "Patient", "id": "p"},
            consent(id="a"),
            {"resourceType": "Organization", "id": "o"},
            consent(
                id="b",
                provision={"provision": [{"type": "deny", "code": [concept(coding("s", "c"))]}]},
            ),
        ],
    )
    summary = validate_files([path], load_mapping(None))
    assert (summary.rows, summary.valid, summary.invalid, summary.skipped) == (2, 1, 1, 2)
    [error] = summary.errors
    assert (error.row, error.field, error.code) == (3, "provision.code", "unsupported_element")
    assert error.message.startswith("entry[3].provision.provision[0].code: has no ClinikAPI field")
    assert fhir_warnings == [
        f"{path}: skipped 2 resource(s) that are not Consents (Organization 1, Patient 1)"
    ]
    assert summary.to_json()["fhir_unsupported"] == {"provision.code": 1}
    # the values profile lists them too (issue 22 point 3), for a migration's sign-off
    assert [v for v in summary.values or [] if v["column"] == "FHIR element"] == [
        {
            "field": "provision.code",
            "column": "FHIR element",
            "distinct": 1,
            "other_rows": 0,
            "values": [
                {
                    "value": "provision.code",
                    "count": 1,
                    "became": None,
                    "error": "unsupported_element",
                }
            ],
        }
    ]


def test_a_single_resource_is_row_1(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(consent(status="bogus")), encoding="utf-8")
    summary = validate_files([path], load_mapping(None))
    assert [(e.row, e.field, e.code) for e in summary.errors] == [(1, "status", "invalid_enum")]


def test_ndjson_rows_are_line_numbers_and_a_bad_line_is_a_row_error(tmp_path: Path) -> None:
    path = write_ndjson(
        tmp_path / "x.ndjson",
        [consent(id="a"), "", consent(id="b", dateTime="2024"), "{not json", [1, 2]],
    )
    summary = validate_files([path], load_mapping(None))
    assert [(e.row, e.field, e.code) for e in summary.errors] == [
        (3, "dateTime", "invalid_date"),
        (4, "resource", "invalid_json"),
        (5, "resource", "invalid_json"),
    ]
    assert (summary.rows, summary.valid) == (4, 1)


def test_a_repeated_resource_id_is_a_duplicate_row(tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "x.ndjson", [consent(id="a"), consent(id="a")])
    summary = validate_files([path], load_mapping(None))
    assert [(e.row, e.code) for e in summary.errors] == [(2, "duplicate_row")]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.json", "{oops", "is not valid JSON (line 1, column 2); export it again"),
        ("a.json", "[1]", "is not a FHIR resource (no resourceType)"),
        ("a.json", '{"resourceType": "Patient"}', "is a FHIR Patient resource; give a Consent"),
        (
            "a.json",
            '{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient"}}]}',
            "the Bundle holds no Consent resources",
        ),
        ("a.ndjson", "\n\nnope\n", "the first line is not a FHIR resource"),
        ("a.ndjson", "\n\n", "holds no resources"),
    ],
)
def test_files_that_are_not_fhir_consents_are_refused(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        open_table(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_ndjson_is_streamed_a_line_at_a_time(tmp_path: Path) -> None:
    """A line appended after the first resource was read is still read: the file is never
    read whole."""
    path = write_ndjson(tmp_path / "s.ndjson", [consent(id="first")])
    table = open_table(path)
    assert isinstance(table, FhirTable)
    resources = table.resources()
    assert next(resources).row == 1
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(consent(id="later")) + "\n")
    later = next(resources)
    assert (later.row, later.data and later.data["id"]) == (2, "later")


def test_ndjson_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    padding = "x" * 2000
    path = write_ndjson(
        tmp_path / "big.ndjson",
        [consent(id=f"c{i}", sourceAttachment={"title": padding}) for i in range(2000)],
    )
    assert path.stat().st_size > 4_000_000
    table = open_table(path)
    assert isinstance(table, FhirTable)
    tracemalloc.start()
    try:
        count = sum(1 for _ in table.resources())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 2000
    assert peak < 500_000  # a few lines, not the 4 MB file


def test_a_mapping_naming_columns_is_refused_for_fhir_input(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text('[columns]\npatientId = "MRN"\n', encoding="utf-8")
    path = write_ndjson(tmp_path / "x.ndjson", [consent()])
    with pytest.raises(ConfigError) as caught:
        validate_files([path], load_mapping(tmp_path / "m.toml"))
    assert "[columns] name columns, and FHIR input" in str(caught.value)


@pytest.mark.parametrize(
    ("scheme", "prefix", "kind"),
    [
        ("source", "sk:", "source cells"),  # a ledger made since source keys
        ("natural", "nk:", "natural"),  # a ledger made with natural keys keeps them
    ],
)
def test_a_resource_without_id_is_keyed_by_its_elements_as_written(
    tmp_path: Path, scheme: str, prefix: str, kind: str
) -> None:
    one = consent(dateTime="2024-01-01T00:00:00Z")
    del one["id"]
    path = write_ndjson(tmp_path / "x.ndjson", [one, one])
    normalizer = Normalizer(load_mapping(None))
    normalizer.natural_keys = scheme == "natural"
    rows = list(normalizer.rows(open_table(path)))
    assert rows[0].source_key.startswith(prefix)
    assert [e.code for e in rows[1].errors] == ["duplicate_row"]
    assert normalizer.key_kind == kind


def test_an_id_less_key_does_not_move_with_the_zone_or_the_crosswalk(tmp_path: Path) -> None:
    one = consent(dateTime="2024-01-01")
    del one["id"]
    path = write_ndjson(tmp_path / "x.ndjson", [one])
    (tmp_path / "a.csv").write_text("from,to\npt_1,pt_100\n", encoding="utf-8")
    (tmp_path / "b.csv").write_text("from,to\npt_1,pt_200\n", encoding="utf-8")
    keys = set()
    for zone, walk in [("UTC", "a.csv"), ("America/Chicago", "b.csv")]:
        toml = f'[source]\ntimezone = "{zone}"\n[patients]\ncrosswalk = "{walk}"\n'
        (tmp_path / "m.toml").write_text(toml, encoding="utf-8")
        [row] = Normalizer(load_mapping(tmp_path / "m.toml")).rows(open_table(path))
        assert row.valid
        keys.add(row.source_key)
    assert len(keys) == 1


def test_the_source_system_namespaces_the_resource_id(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text('[source]\nsystem = "gics"\n', encoding="utf-8")
    path = write_ndjson(tmp_path / "x.ndjson", [consent(id="c-9")])
    [row] = Normalizer(load_mapping(tmp_path / "m.toml")).rows(open_table(path))
    assert row.source_key == "gics\x1fc-9"
    assert row.valid


# --- point 4: the same guarantees as CSV ------------------------------------------------------


@pytest.fixture
def fhir_samples(tmp_path: Path, server: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> Path:
    for source in SAMPLES.iterdir():
        shutil.copy(source, tmp_path / source.name)
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    monkeypatch.setenv("CLINIKAPI_BASE_URL", server.base_url)
    monkeypatch.chdir(tmp_path)
    return tmp_path


INPUTS = ["consent_manager_bundle.json", "bulk_export.ndjson", "--mapping", "mapping.toml"]


def summary_of(path: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return document


def test_run_then_rerun_sends_nothing_then_verify_and_export(
    fhir_samples: Path, server: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["run", *INPUTS, "--summary-json", "s1.json"], capsys)
    assert code == 1, out  # the samples' 5 invalid resources
    first = summary_of("s1.json")
    assert (first["created"], first["invalid"], first["skipped"], first["failed"]) == (11, 5, 2, 0)
    assert server.stats()["consents"] == 11
    sent = server.stats()["by_method"]
    code, out, _ = run_cli(["run", *INPUTS, "--no-preflight", "--summary-json", "s2.json"], capsys)
    assert code == 1
    again = summary_of("s2.json")
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 11)
    assert server.stats()["by_method"] == sent  # not one request
    code, out, _ = run_cli(["verify", "--ledger", "consent-import.db"], capsys)
    assert code == 0, out
    code, out, _ = run_cli(
        ["export", "--ledger", "consent-import.db", "--created", "created.csv"], capsys
    )
    assert code == 0
    assert "11 consents -> created.csv" in out


def test_the_body_sent_is_the_mapped_consent(
    fhir_samples: Path, server: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(["run", *INPUTS], capsys)
    [broad] = [c for c in server.consents() if c.get("policyRule") == "OPTIN"]
    assert broad["patientId"] == "pt_fhir_1001"
    deny_observations = broad["provision"]["provision"][1]
    assert deny_observations["class"] == [
        {"system": RTYPE, "code": "Observation", "display": "Observation"}
    ]
    assert deny_observations["provision"][0]["data"] == [{"reference": "Observation/obs-77"}]
    assert broad["policyRule"] == "OPTIN"


def test_failed_resources_export_as_ndjson_fixed_and_fed_back(
    fhir_samples: Path, server: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["run", *INPUTS], capsys)[0] == 1
    code, out, _ = run_cli(
        ["export", "--ledger", "consent-import.db", "--failed", "failed.ndjson"], capsys
    )
    assert code == 0
    assert "5 invalid or failed rows -> failed.ndjson" in out
    assert stat.S_IMODE(Path("failed.ndjson").stat().st_mode) == 0o600
    failed = [
        json.loads(line) for line in Path("failed.ndjson").read_text(encoding="utf-8").splitlines()
    ]
    by_id = {r["id"]: r for r in failed}
    assert sorted(by_id) == ["bulk-104", "gics-006", "gics-007", "gics-008", "gics-009"]
    tags = by_id["gics-006"]["meta"]["tag"]
    assert [(t["system"], t["code"]) for t in tags] == [
        ("urn:consent-import:error", "unknown_patient")
    ]
    # fix each one
    by_id["gics-006"]["patient"] = {"reference": "Patient/p-1010"}
    by_id["gics-007"]["performer"] = [{"reference": "RelatedPerson/rp-3", "display": "daughter"}]
    by_id["gics-008"]["status"] = "inactive"
    by_id["gics-009"]["provision"]["provision"][0]["data"][0]["meaning"] = "instance"
    by_id["bulk-104"]["dateTime"] = "2023-11-15T10:00:00Z"
    Path("fixed.ndjson").write_text("".join(json.dumps(r) + "\n" for r in failed), encoding="utf-8")
    code, out, _ = run_cli(
        [
            "run",
            "fixed.ndjson",
            "--mapping",
            "mapping.toml",
            "--revoke-missing",
            "--summary-json",
            "s.json",
        ],
        capsys,
    )
    assert code == 0, out
    fed = summary_of("s.json")
    assert (fed["created"], fed["invalid"], fed["revoked"]) == (5, 0, 0)
    assert server.stats()["duplicates"] == 0
    assert server.stats()["consents"] == 16
    run_cli(["export", "--ledger", "consent-import.db", "--failed", "again.ndjson"], capsys)
    assert Path("again.ndjson").read_text(encoding="utf-8") == ""


def test_preview_shows_a_bundle_entry(
    fhir_samples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["preview", *INPUTS, "--row", "2"], capsys)
    assert code == 0, out
    assert "consent_manager_bundle.json:2  valid; run would send:" in out
    # the mapping renames provision.code to provision.class
    assert '"code": "119297000"' in out
    assert "bulk_export.ndjson: no such row" not in out  # line 2 exists there too


def test_validate_json_lists_unsupported_elements(
    fhir_samples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run_cli(["validate", *INPUTS, "--report", "v.json", "-q"], capsys)
    assert code == 1
    report = summary_of("v.json")
    assert report["fhir_unsupported"] == {"performer.display": 1, "provision.data.meaning": 1}
    assert report["summary"]["skipped"] == 2


def test_a_changed_resource_is_patched_on_the_rerun(
    fhir_samples: Path, server: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["run", *INPUTS], capsys)[0] == 1
    lines = Path("bulk_export.ndjson").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["status"] = "inactive"  # a withdrawal in the consent manager
    lines[0] = json.dumps(first)
    Path("bulk_export.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, _ = run_cli(["run", *INPUTS, "--summary-json", "s.json"], capsys)
    assert code == 1, out
    again = summary_of("s.json")
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 1, 10), out
    assert server.stats()["patches"] == 1
    [stored] = [c for c in server.consents() if c["patientId"] == "pt_fhir_1010"]
    assert stored["status"] == "inactive"


def test_preview_shows_entry_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_bundle(tmp_path / "b.json", [consent(id="zero"), consent(id="one")])
    code, out, _ = run_cli(["preview", str(path), "--row", "0"], capsys)
    assert code == 0
    assert out.startswith(f"{path}:0  valid; run would send:")


def test_init_says_fhir_input_needs_no_starting_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_ndjson(tmp_path / "x.ndjson", [consent()])
    code, _, err = run_cli(["init", str(path), "--output", str(tmp_path / "m.toml")], capsys)
    assert code == 2
    assert "is FHIR input, which needs no starting mapping" in err
    assert "Traceback" not in err
    assert not (tmp_path / "m.toml").exists()


def test_the_failed_ndjson_is_a_correction_file(
    fhir_samples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(["run", *INPUTS], capsys)
    run_cli(["export", "--ledger", "consent-import.db", "--failed", "failed.ndjson"], capsys)
    table = open_table("failed.ndjson")
    assert isinstance(table, FhirTable)
    assert is_correction_file(table.columns)
    assert not is_correction_file(open_table("bulk_export.ndjson").columns)
    code, out, err = run_cli(
        ["run", "failed.ndjson", "--mapping", "mapping.toml", "--revoke-missing"], capsys
    )
    assert code == 1  # still invalid: nothing was fixed
    assert "correction file" in out + err


def test_export_ndjson_leaves_csv_rows_for_the_csv_export(
    tmp_path: Path,
    server: RunningSandbox,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    monkeypatch.setenv("CLINIKAPI_BASE_URL", server.base_url)
    monkeypatch.chdir(tmp_path)
    Path("c.csv").write_text("patientId,scope,category\npt_1,nonsense,x\n", encoding="utf-8")
    write_ndjson(Path("f.ndjson"), [consent(id="a", status="bogus")])
    assert run_cli(["run", "c.csv", "--ledger", "l.db"], capsys)[0] == 1
    assert run_cli(["run", "f.ndjson", "--ledger", "l.db"], capsys)[0] == 1
    code, out, err = run_cli(["export", "--ledger", "l.db", "--failed", "out.ndjson"], capsys)
    assert code == 0
    assert "1 invalid or failed row -> out.ndjson" in out
    [line] = Path("out.ndjson").read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["id"] == "a"
    assert "1 invalid or failed row(s) came from CSV or Excel files" in err


def _without_ids(path: Path) -> None:
    resources = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for resource in resources:
        del resource["id"]
    path.write_text("".join(json.dumps(r) + "\n" for r in resources), encoding="utf-8")


@pytest.mark.parametrize("fix", ["zone", "crosswalk"])
def test_a_mapping_fix_makes_no_second_consent_of_an_id_less_resource(
    fhir_samples: Path, server: RunningSandbox, capsys: pytest.CaptureFixture[str], fix: str
) -> None:
    """Review finding 4: resources without an id keep their key across a zone or a
    crosswalk fix (0 POST, one live consent per patient), and the terminal says how."""
    _without_ids(fhir_samples / "bulk_export.ndjson")
    args = ["run", "bulk_export.ndjson", "--mapping", "mapping.toml", "--summary-json", "s.json"]
    code, out, _ = run_cli(args, capsys)
    assert code == 1, out  # bulk-104's dateTime is a month
    assert summary_of("s.json")["created"] == 5
    assert "made with natural keys" not in out
    assert "Source key: no key column (or FHIR resources without an id), so" in out
    if fix == "zone":
        text = Path("mapping.toml").read_text(encoding="utf-8")
        text = text.replace("[source]\n", '[source]\ntimezone = "America/Chicago"\n')
        Path("mapping.toml").write_text(text, encoding="utf-8")
    else:
        text = Path("patients.csv").read_text(encoding="utf-8")
        Path("patients.csv").write_text(text.replace("pt_fhir_1002", "pt_fhir_2002"))
    posts = server.stats()["creates"]
    code, out, _ = run_cli(args, capsys)
    again = summary_of("s.json")
    assert (again["created"], code) == (0, 1)
    assert again["mapping_changed"]
    assert server.stats()["creates"] == posts  # 0 POST
    live = Counter(c["patientId"] for c in server.consents() if c["status"] != "inactive")
    assert set(live.values()) == {1}
    assert "made with natural keys" not in out


# --- review finding 7: performer and organization ids through named crosswalks -------------

REFERENCED = {
    "performer": [{"reference": "Practitioner/1"}],
    "organization": [{"reference": "Organization/42"}],
}
NAMED = """[source]
timezone = "UTC"
[crosswalks.practitioners]
file = "practitioners.csv"
from = "legacy"
to = "clinik"
[crosswalks.organizations]
file = "organizations.csv"
[fhir]
crosswalks = { performer = "practitioners", organization = "organizations" }
"""


@pytest.fixture
def referenced(
    tmp_path: Path, server: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> RunningSandbox:
    monkeypatch.setenv("CLINIKAPI_API_KEY", KEY)
    monkeypatch.setenv("CLINIKAPI_BASE_URL", server.base_url)
    monkeypatch.chdir(tmp_path)
    write_ndjson(
        tmp_path / "x.ndjson",
        [
            consent(id="r-1", dateTime="2024-01-01T00:00:00Z", **REFERENCED),
            consent(id="r-2", dateTime="2024-01-02T00:00:00Z", performer=REFERENCED["performer"]),
        ],
    )
    (tmp_path / "practitioners.csv").write_text(
        "note,clinik,legacy\nx,prac_one,1\n", encoding="utf-8"
    )
    (tmp_path / "organizations.csv").write_text("from,to\n42,org_42\n", encoding="utf-8")
    return server


@pytest.mark.parametrize(
    ("toml", "code", "warned", "sent"),
    [
        # no crosswalk: the ids slip through as they are, and validate says so
        (
            '[source]\ntimezone = "UTC"\n',
            0,
            ["performerId (FHIR performer)", "organizationId"],
            None,
        ),
        # [fhir] crosswalks sends each reference through its [crosswalks.NAME]
        (NAMED, 0, [], ("prac_one", "org_42")),
    ],
)
def test_fhir_id_references_go_through_named_crosswalks_or_are_warned_of(
    referenced: RunningSandbox,
    capsys: pytest.CaptureFixture[str],
    toml: str,
    code: int,
    warned: list[str],
    sent: tuple[str, str] | None,
) -> None:
    Path("m.toml").write_text(toml, encoding="utf-8")
    result, out, err = run_cli(["validate", "x.ndjson", "--mapping", "m.toml"], capsys)
    assert result == code, out + err
    for text in warned:
        assert text in out + err
    assert ("do not look like ClinikAPI ids" in out + err) == bool(warned)
    assert "Practitioner/1" not in out + err  # ids are PHI: paths only
    if sent is not None:
        assert run_cli(["run", "x.ndjson", "--mapping", "m.toml"], capsys)[0] == 0
        [first] = [c for c in referenced.consents() if c.get("organizationId")]
        assert (first["performerId"], first["organizationId"]) == sent


def test_an_id_missing_from_its_named_crosswalk_is_unknown_id(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("from,to\n2,prac_two\n", encoding="utf-8")
    toml = '[crosswalks.p]\nfile = "p.csv"\n[fhir]\ncrosswalks = { performer = "p" }\n'
    (tmp_path / "m.toml").write_text(toml, encoding="utf-8")
    path = write_ndjson(tmp_path / "x.ndjson", [consent(performer=REFERENCED["performer"])])
    [row] = Normalizer(load_mapping(tmp_path / "m.toml")).rows(open_table(path))
    assert [(e.field, e.code) for e in row.errors] == [("performer", "unknown_id")]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[fhir]\ncrosswalks = { performer = "nope" }\n', "no table [crosswalks.nope]"),
        ('[fhir]\ncrosswalks = { patient = "x" }\n', "is not a reference the FHIR mapping"),
        ('[fhir]\ncrosswalks = { performer = "patients" }\n', "there is none"),
    ],
)
def test_fhir_crosswalks_errors(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "m.toml").write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_mapping(tmp_path / "m.toml")
    assert message in str(caught.value)


def test_an_ndjson_file_cut_mid_resource_is_truncated_and_revokes_nothing(
    referenced: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review (low): a last line cut off mid-resource is the reader's `truncated_file`
    (as for CSV), and `--revoke-missing` revokes nothing on such a read."""
    three = [consent(id=f"t-{i}", dateTime=f"2024-01-0{i}T00:00:00Z") for i in (1, 2, 3)]
    write_ndjson(Path("t.ndjson"), three)
    args = ["run", "t.ndjson", "--summary-json", "s.json", "--revoke-missing"]
    args += ["--revoke-after", "1", "--revoke-max", "5"]
    assert run_cli(args, capsys)[0] == 0
    whole = json.dumps(three[0]) + "\n"
    Path("t.ndjson").write_text(whole + json.dumps(three[1])[:40], encoding="utf-8")
    code, out, err = run_cli(args, capsys)
    summary = summary_of("s.json")
    assert (code, summary["invalid"], summary["revoked"]) == (1, 1, 0), out
    errors = validate_files([Path("t.ndjson")], load_mapping(None)).errors
    assert [(e.row, e.code) for e in errors] == [(2, "truncated_file")]
    assert "cut off" in out + err
    assert "truncated_file" in out + err
    live = [c for c in referenced.consents() if c["status"] == "active"]
    assert len(live) == 3


@pytest.mark.parametrize("command", ["run", "validate"])
def test_the_terminal_names_fhir_skips_and_exports_as_they_are(
    fhir_samples: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Review (low): other resource types are "not Consents", not "filtered out"; a FHIR
    run's last line names the NDJSON export of its failed resources."""
    _, out, _ = run_cli([command, *INPUTS], capsys)
    assert "2 skipped (not Consents)" in out
    assert "filtered out" not in out
    if command == "run":
        assert "for CSVs, or --failed FILE.ndjson for NDJSON)" in out
