"""How schema 3 stores keys, ids and hashes: packed when the form is known, and always
read back as they were given."""

from __future__ import annotations

import json
from typing import Any

import pytest

from importer.ledger._codec import (
    pack_field_hashes,
    pack_hash,
    pack_id,
    pack_key,
    pack_request_id,
    same_payload,
    unpack_field_hashes,
    unpack_hash,
    unpack_id,
    unpack_key,
)
from importer.ledger._ledger import Ledger
from importer.ledger._schema import Op, Source

HEX32 = "0123456789abcdef" * 2
SHA = "ab" * 32


@pytest.mark.parametrize(
    ("pack", "unpack", "value", "stored_size"),
    [
        (pack_key, unpack_key, "nk:" + HEX32, 16),  # a natural key: its 16 bytes
        (pack_key, unpack_key, "nk:" + HEX32.upper(), None),  # not as we write them: text
        (pack_key, unpack_key, "nk:" + HEX32[:-1], None),
        (pack_key, unpack_key, "sk:" + HEX32, 17),  # an identity-cells key: a tag and 16
        (pack_key, unpack_key, "sk:" + HEX32.upper(), None),
        (pack_key, unpack_key, "crm\x1fsk:" + HEX32, None),
        (pack_key, unpack_key, "crm\x1fnk:" + HEX32, None),  # namespaced: exact text
        (pack_key, unpack_key, "K000001", None),  # a key column's: exact text
        (pack_key, unpack_key, "sha256:" + HEX32, None),
        (pack_id, unpack_id, "consent_" + HEX32[:24], 12),
        (pack_id, unpack_id, "consent_" + HEX32[:22], None),  # another shape: as it is
        (pack_id, unpack_id, "c1", None),
        (pack_id, unpack_id, None, None),
        (pack_request_id, unpack_id, "req_" + HEX32[:16], 8),
        (pack_request_id, unpack_id, "req_" + HEX32[:16] + "x", None),
        (pack_request_id, unpack_id, None, None),
    ],
)
def test_packed_values_read_back_as_given(
    pack: Any, unpack: Any, value: str | None, stored_size: int | None
) -> None:
    stored = pack(value)
    if stored_size is None:
        assert stored == value
    else:
        assert isinstance(stored, bytes)
        assert len(stored) == stored_size
    assert unpack(stored) == value


@pytest.mark.parametrize(
    ("hashes", "read"),
    [
        ({}, {}),
        ({"patientId": "01234567"}, {"patientId": "01234567"}),
        (
            {"provision": "01234567", "patientId": "ba987654", "status": "00" * 4},
            {"provision": "01234567", "patientId": "ba987654", "status": "00" * 4},
        ),
        # 12 digits, as hashes were before issue 24: kept and read as their first 8
        ({"patientId": "0123456789ab"}, {"patientId": "01234567"}),
        ({"noSuchField": "01234567"}, {"noSuchField": "01234567"}),  # kept as JSON
        ({"status": "not hex at all"}, {"status": "not hex "}),  # JSON, read as 8 characters
    ],
)
def test_field_hashes_read_back_as_their_first_8_digits(
    hashes: dict[str, str], read: dict[str, str]
) -> None:
    stored = pack_field_hashes(hashes)
    assert unpack_field_hashes(stored) == read
    if isinstance(stored, bytes):
        assert len(stored) == 2 + 4 * len(hashes)  # a bitmap, then 4 bytes a field


@pytest.mark.parametrize(
    ("hashes", "stored"),
    [
        # a ledger before issue 24: 6 bytes a field, read as their first 4
        ({"patientId": "0123456789ab"}, bytes([1, 0]) + bytes.fromhex("0123456789ab")),
        (
            {"patientId": "0123456789ab", "status": "ba9876543210"},
            bytes([9, 0]) + bytes.fromhex("0123456789ab" + "ba9876543210"),
        ),
    ],
)
def test_field_hashes_of_6_bytes_read_as_a_rows_8_digits(
    hashes: dict[str, str], stored: bytes
) -> None:
    assert unpack_field_hashes(stored) == {name: digest[:8] for name, digest in hashes.items()}


@pytest.mark.parametrize(
    ("stored", "body_hash", "same"),
    [
        (unpack_hash(pack_hash(SHA)), SHA, True),  # 16 bytes kept: its first 32 digits
        (unpack_hash(pack_hash(SHA)), "ab" * 16 + "cd" * 16, True),
        (unpack_hash(pack_hash(SHA)), "cd" * 32, False),
        (SHA, SHA, True),  # read from a ledger of schema 1 or 2
        (SHA, "ab" * 31 + "cd", False),
        (None, SHA, False),
        ("h", "h", True),  # a text that is not a SHA-256 is compared whole
        ("h", "h2", False),
    ],
)
def test_a_body_is_the_same_when_its_hash_starts_with_the_stored_one(
    stored: str | None, body_hash: str, same: bool
) -> None:
    assert same_payload(stored, body_hash) is same


def test_a_row_reads_back_what_its_transitions_were_given() -> None:
    db = Ledger(":memory:")
    key, consent, request = "nk:" + HEX32, "consent_" + HEX32[:24], "req_" + HEX32[:16]
    src = Source(key, "in.csv", 2)
    db.intent(1, src, Op.CREATE, body="{}", body_hash=SHA, patient_id="pt_1")
    db.done(
        1,
        src,
        Op.CREATE,
        action="created",
        payload_hash=SHA,
        field_hashes={"status": "01234567"},
        patient_id="pt_1",
        request_id=request,
        consent_id=consent,
    )
    row = db.get([key])[key]
    assert (row.source_key, row.consent_id, row.field_hashes) == (
        key,
        consent,
        {"status": "01234567"},
    )
    assert same_payload(row.payload_hash, SHA)
    (created,) = db.created_rows()
    assert (created["source_key"], created["consent_id"], created["request_id"]) == (
        key,
        consent,
        request,
    )
    assert db.claimed_consents([consent, "consent_" + "0" * 24]) == {consent}
    assert list(db.missing_rows(seen=set())) == [(key, "in.csv", 2, consent)]


VERIFICATION = {
    "verified": True,
    "verifiedWith": "pt_0001923",
    "verificationDate": "2023-04-20T00:00:00Z",
}


@pytest.mark.parametrize(
    ("held", "sent", "read"),
    [
        # packed: stored in under half the text's bytes, read back as the text
        (None, VERIFICATION, VERIFICATION),
        # the same value sent again stays known, as packed or as a ledger before kept it
        ("packed", VERIFICATION, VERIFICATION),
        ("text", VERIFICATION, VERIFICATION),
        # another value under the same short hash: unknown, never a guess
        ("packed", {"verified": False}, None),
        ("text", {"verified": False}, None),
    ],
)
def test_field_values_are_packed_and_read_back(
    held: str | None, sent: dict[str, Any], read: dict[str, Any] | None
) -> None:
    db = Ledger(":memory:")
    digest = "0123456789ab"
    text = json.dumps(VERIFICATION, separators=(",", ":"))
    if held == "packed":
        db.keep_field_values({"verification": VERIFICATION}, {"verification": digest})
    elif held == "text":  # as a ledger before issue 24 kept it
        db._db.execute("INSERT INTO field_values VALUES (12, ?, ?)", (bytes.fromhex(digest), text))
    db.keep_field_values({"verification": sent}, {"verification": digest})
    value = db.field_value("verification", digest)
    assert (None if value is None else json.loads(value)) == read
    if held is None:
        [(size,)] = db._db.execute("SELECT length(value) FROM field_values")
        assert size < len(text) / 2
