"""Write the sample exports in this folder (run from the repo root; needs openpyxl).

    python sample_data/make_samples.py

The files are committed; this script documents exactly how they were made. The names
are invented. Each file holds a few deliberately invalid rows, listed in README.md.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

from openpyxl import Workbook

from importer.intake._mapping import CANONICAL_COLUMNS

HERE = Path(__file__).parent

CANONICAL = CANONICAL_COLUMNS


def clean_csv() -> None:
    rows = []
    for i in range(1, 21):
        rows.append(
            {
                "sourceKey": f"C-{i:04d}",
                "patientId": f"pt_{1000 + i}",
                "scope": ["patient-privacy", "treatment", "research", "adr"][i % 4],
                "category": [
                    "hipaa-notice",
                    "treatment-consent",
                    "research-participation",
                    "surgical-consent;treatment-consent",
                ][i % 4],
                "status": "active",
                "dateTime": f"2024-0{1 + i % 9}-{10 + i:02d}T09:{i:02d}:00-05:00",
                "performerId": f"pt_{1000 + i}",
                "organizationId": "org_main",
                "policyUri": "https://clinic.example/policies/privacy-v3",
                "verified": "Y" if i % 2 else "N",
                "verifiedWith": f"pt_{1000 + i}" if i % 2 else "",
                "verificationDate": f"2024-0{1 + i % 9}-{10 + i:02d}" if i % 2 else "",
                "provisionType": "permit",
                "provisionStart": f"2024-0{1 + i % 9}-{10 + i:02d}",
                "provisionEnd": "2029-12-31",
                "purpose": "TREAT|HPAYMT" if i % 3 == 0 else "TREAT",
            }
        )
    # The deliberately invalid rows (README.md lists the error each must give).
    rows[3]["scope"] = "marketing"  # row 5: invalid_enum (scope)
    rows[6]["dateTime"] = "2024-13-45T10:00:00Z"  # row 8: invalid_date (dateTime)
    rows[9]["patientId"] = ""  # row 11: missing_required (patientId)
    rows[12]["provisionStart"] = "2030-01-01"  # row 14: period_order (provisionEnd)
    rows[15]["performerId"] = "dr smith!"  # row 17: invalid_id (performerId)
    rows.append(dict(rows[1]))  # row 22: duplicate_row (sourceKey)
    with (HERE / "consents.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, CANONICAL)
        writer.writeheader()
        writer.writerows(rows)


def legacy_ehr() -> None:
    folder = HERE / "legacy_ehr"
    folder.mkdir(exist_ok=True)
    names = [
        "Zoë Müller",
        "José Peña",
        "Ana Lívia",
        "Björn Ørsted",
        "Chloé Dubois",
        "Renée Faßbender",
        "Tomás Núñez",
        "Siân Evans",
        "Åsa Öberg",
        "Noël Brontë",
        "Inès Caron",
        "Jürgen Weiß",
    ]
    types = ["HIPAA Notice", "General Treatment", "Research Study", "Surgery"]
    statuses = ["Signed", "signed ", "Revoked", "Pending"]
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(
        [
            "LegacyID",
            "MRN",
            "Patient Name",
            "Consent Type",
            "Consent Status",
            "Signed At",
            "Witness",
            "Notes",
        ]
    )
    for i, name in enumerate(names, start=1):
        hour = 1 + i % 12
        writer.writerow(
            [
                f"L{700 + i}",
                f"{i:07d}",
                name,
                types[i % 4],
                statuses[i % 4],
                f"{1 + i % 12:02d}/{1 + i:02d}/2023 {hour:02d}:15 {'AM' if i % 2 else 'PM'}",
                "Nurse Smith" if i % 3 else "",
                "Discussed risks; patient agreed.\nCopy given." if i % 5 == 0 else "",
            ]
        )
    # The deliberately invalid rows.
    writer.writerow(
        [
            "L801",
            "0099999",
            "Not In Crosswalk",
            "HIPAA Notice",
            "Signed",
            "02/03/2023 10:00 AM",
            "",
            "",
        ]
    )  # unknown_patient
    writer.writerow(
        ["L802", "0000002", "José Peña", "Photo Release", "Signed", "02/03/2023 10:00 AM", "", ""]
    )  # invalid_enum scope
    writer.writerow(
        ["L803", "0000003", "Ana Lívia", "HIPAA Notice", "Signed", "31/02/2023 10:00 AM", "", ""]
    )  # invalid_date
    writer.writerow(
        [
            "L804",
            "0000004",
            "Björn Ørsted",
            "General Treatment",
            "Maybe",
            "03/03/2023 11:30 PM",
            "",
            "",
        ]
    )  # invalid_enum status
    (folder / "consents_export.csv").write_bytes(out.getvalue().encode("cp1252"))
    with (folder / "mrn_to_patient.csv").open("w", newline="", encoding="utf-8") as handle:
        crosswalk = csv.writer(handle)
        crosswalk.writerow(["MRN", "patientId"])
        for i in range(1, len(names) + 1):
            crosswalk.writerow([f"{i:07d}", f"pt_legacy_{i:04d}"])


def workbook() -> None:
    book = Workbook()
    about = book.active
    assert about is not None
    about.title = "About"
    about["A1"] = "Consents exported from the scheduling system. Data is on the Consents sheet."
    sheet = book.create_sheet("Consents")
    sheet.append(
        ["Consent ID", "Patient ID", "Scope", "Category", "Status", "Signed On", "Verified"]
    )
    for i in range(1, 11):
        sheet.append(
            [
                5000 + i,  # ids stored as numbers: must come back as "5001", not "5001.0"
                f"pt_{2000 + i}",
                "treatment" if i % 2 else "patient-privacy",
                "treatment-consent" if i % 2 else "hipaa-notice",
                "active",
                dt.datetime(2022, 1 + i % 12, 1 + i, 8 + i % 8, 30),  # real date cells
                "yes" if i % 2 else "no",
            ]
        )
    sheet.append(
        [
            5011,
            "pt_2011",
            "treatment",
            "treatment-consent",
            "active",
            dt.datetime(2022, 5, 5, 9, 0),
            "maybe",
        ]
    )  # invalid_boolean
    sheet.append(
        [5012, "pt_2012", "treatment", "", "active", dt.datetime(2022, 5, 6, 9, 0), "yes"]
    )  # missing_required
    sheet.append(
        [5013, "pt_2013", "treatment", "treatment-consent", "active", "sometime in May", "yes"]
    )  # invalid_date
    for row in sheet.iter_rows(min_row=2, min_col=6, max_col=6):
        row[0].number_format = "yyyy-mm-dd hh:mm"
    book.save(HERE / "clinic_consents.xlsx")


def registry() -> None:
    """A rare-disease registry's export that needs a version-2 mapping: title lines above
    the header, visit rows among the consents (a filter), NA cells, the signing date and
    time in two columns, opt-outs as nested deny provisions, a recipient organisation as
    an actor, and a HIPAA acknowledgement on some rows (a second consent)."""
    folder = HERE / "registry"
    folder.mkdir(exist_ok=True)
    header = [
        "Record ID",
        "Participant ID",
        "Record Type",
        "Form Code",
        "Form Version",
        "Signed Date",
        "Signed Time",
        "Consent Status",
        "Opt-out Purposes",
        "Share With Org",
        "Scan URL",
        "Witness ID",
        "HIPAA Signed Date",
    ]
    rows = []
    for i in range(1, 15):
        kind = "VISIT" if i in (3, 9) else "CONSENT"
        rows.append(
            [
                f"REC-{1000 + i}",
                f"RDR-{i:04d}",
                kind,
                "RDR-MAIN" if i % 3 else "RDR-GEN",
                str(1 + i % 2),
                f"{1 + i % 12:02d}/{1 + i % 27:02d}/2024",
                f"{8 + i % 9:02d}:{(i * 7) % 60:02d}" if i % 4 else "NA",
                "Withdrawn" if i == 6 else "Signed",
                {1: "HMARKT;HRESCH", 4: "HMARKT", 7: "NA", 10: "HRESCH"}.get(i, ""),
                "org_biobank" if i % 2 else "N/A",
                f"https://registry.example/scans/{1000 + i}.pdf" if i % 5 else "-",
                f"pr_{200 + i}" if i % 3 == 1 else "",
                f"{1 + i % 12:02d}/{2 + i % 27:02d}/2024" if i % 2 else "NA",
            ]
        )
    # The deliberately invalid rows (sample_data/README.md lists them).
    rows[10][1] = "RDR-0999"  # row 14: not in the crosswalk
    rows[11][5] = "02/30/2024"  # row 15: no such day
    rows[12][7] = "On hold"  # row 16: a status the mapping does not translate
    rows[4][12] = "2024-13-01"  # row 8: the HIPAA date has month 13 (second consent only)
    out = io.StringIO()
    out.write("Rare Disease Registry RDR-7: consent export\n")
    out.write("Exported 2024-06-30; participant data, handle as PHI\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    (folder / "registry_export.csv").write_text(out.getvalue(), encoding="utf-8")
    with (folder / "participants.csv").open("w", newline="", encoding="utf-8") as handle:
        crosswalk = csv.writer(handle, lineterminator="\n")
        crosswalk.writerow(["participant_id", "patientId"])
        for i in range(1, 15):
            crosswalk.writerow([f"RDR-{i:04d}", f"pt_reg_{i:04d}"])


if __name__ == "__main__":
    clean_csv()
    legacy_ehr()
    workbook()
    registry()
