"""The ledger's cheaper writes of issue 24 (a row's outcome as one UPDATE by key, the
patchable values kept with one encoder): the same records as the general statements."""

from __future__ import annotations

import json
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from importer.ledger._codec import (
    _BITMAP_BYTES,
    _FIELD_HASH_BYTES,
    _FIELD_INDEX,
    _VALUE_DICT,
    FIELD_ORDER,
    _hex_bytes,
    pack_field_hashes,
    pack_field_value,
    pack_hash,
    pack_id,
    pack_request_id,
    unpack_field_value,
)
from importer.ledger._ledger import Ledger
from importer.ledger._schema import UNDO_COLUMNS, ErrorNote, Op, RowState, Source
from importer.ledger._transitions import _CLEARED

RUN = 1
K = Source("K1", "in.csv", 2)
ERROR = ErrorNote("api", "server_error", "503", '{"a": 1}', 503, "req_" + "ab" * 8)
T = "2026-01-01T10:00:30.000+00:00"
HASHES = {"patientId": "0a0b0c0d", "status": "01020304"}
DIGEST = "cd" * 32


def _intent(db: Ledger, src: Source = K) -> None:
    db.intent(RUN, src, Op.CREATE, body='{"b":1}', body_hash=DIGEST, patient_id="pt_1")


#: How the row stands before its outcome (each through transitions only).
BEFORE: dict[str, list[Any]] = {
    "no record": [],
    "in flight": [_intent],
    "in flight, error noted": [
        _intent,
        lambda db: db.outcome_unknown(RUN, K, Op.CREATE, ERROR),
    ],
    "settling": [
        _intent,
        lambda db: db.settling(RUN, K, Op.CREATE, ERROR, settle_after=T),
    ],
    "failed": [_intent, lambda db: db.failed(RUN, K, Op.CREATE, ERROR)],
    "in flight from another file": [lambda db: _intent(db, Source("K1", "old.csv", 9))],
    "a patch in flight": [
        lambda db: db.intent(
            RUN,
            K,
            Op.PATCH,
            body='{"status":"inactive"}',
            body_hash=DIGEST,
            patient_id="pt_1",
            consent_id="consent_" + "34" * 12,
        )
    ],
}


def _record(db: Ledger) -> tuple[dict[str, Any] | None, Any]:
    columns = ", ".join(c for c in UNDO_COLUMNS if c != "updated_at")
    found = db._db.execute(f"SELECT {columns} FROM rows").fetchall()  # noqa: S608
    bodies = db._db.execute("SELECT * FROM bodies").fetchall()
    tally = db._db.execute("SELECT * FROM tally WHERE n != 0 ORDER BY 1, 2, 3").fetchall()
    names = [c for c in UNDO_COLUMNS if c != "updated_at"]
    rows = [dict(zip(names, r, strict=True)) for r in found]
    return (rows[0] if rows else None), (bodies, tally)


@pytest.mark.parametrize("before", list(BEFORE))
@pytest.mark.parametrize("consent_id", ["consent_" + "12" * 12, None])
@pytest.mark.parametrize("cells_hash", [None, -5])
def test_done_leaves_the_record_the_upsert_left(
    before: str, consent_id: str | None, cells_hash: int | None
) -> None:
    """`done` by UPDATE (or an insert for a row of no record) against the general upsert
    it replaced, column by column, with the body and the tally."""
    made, reference = Ledger(":memory:"), Ledger(":memory:")
    for db in (made, reference):
        for step in BEFORE[before]:
            step(db)
    with made.transaction():
        made.done(
            RUN + 1,
            K,
            Op.CREATE,
            action="created",
            payload_hash=DIGEST,
            field_hashes=HASHES,
            patient_id="pt_2",
            request_id="req_" + "01" * 8,
            consent_id=consent_id,
            cells_hash=cells_hash,
        )
    values: dict[str, Any] = {
        **_CLEARED,
        "state": RowState.DONE,
        "action": "created",
        "payload_hash": pack_hash(DIGEST),
        "field_hashes": pack_field_hashes(HASHES),
        "cells_hash": cells_hash,
        "request_id": pack_request_id("req_" + "01" * 8),
        "patient_id": "pt_2",
    }
    if consent_id is not None:
        values["consent_id"] = pack_id(consent_id)
    with reference.transaction():
        reference._upsert(RUN + 1, K, values)
    assert _record(made) == _record(reference)
    row = made.get(["K1"])["K1"]
    assert row.state is RowState.DONE
    assert row.pending_body is None
    assert made.counts() == {"done": 1}


def _reference_pack(text: str) -> bytes:
    """`pack_field_value` as it was before issue 24: zlib's memory level 9 for any text."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _VALUE_DICT)
    return packer.compress(text.encode()) + packer.flush()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        _JSON.map(lambda v: json.dumps(v, separators=(",", ":"))),
        # made of the dictionary's own pieces: long matches, long chains
        st.lists(st.sampled_from(_VALUE_DICT.decode().split('"')), max_size=120).map("".join),
        st.text(alphabet="ab", max_size=1200),
    )
)
def test_a_value_packs_to_the_bytes_it_packed_to_before(text: str) -> None:
    """Values already kept are compared by their packed bytes: a value sent again must
    pack as it did, or the ledger would call its hash shared (NULL) and lose it."""
    assert pack_field_value(text) == _reference_pack(text)
    assert unpack_field_value(pack_field_value(text)) == text


def test_a_value_packs_as_before_either_side_of_the_cheaper_level() -> None:
    for size in range(1024 - len(_VALUE_DICT) - 4, 1024 - len(_VALUE_DICT) + 4):
        for text in ("a" * size, ('{"verified":true,"verifiedWith":"' * 40)[:size]):
            assert pack_field_value(text) == _reference_pack(text)


#: (field, short hash, value) of the patchable fields: few slots, so values meet.
_KEEP_STEP = st.tuples(
    st.sampled_from(["status", "verification"]),
    st.sampled_from(["0a0b0c0d", "0A0B0C0D", "ffffffff"]),
    st.sampled_from(["active", {"verified": True}, {"verified": False}, None]),
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.lists(_KEEP_STEP, max_size=5), st.booleans(), st.booleans()), max_size=8)
)
def test_field_values_hold_each_hashs_value_or_null_once_shared(
    batches: list[tuple[list[tuple[str, str, Any]], bool, bool]],
) -> None:
    """After any keeps in transactions (some rolled back, some after the ledger was opened
    again, its cache gone): each (field, hash) holds the one value committed under it, or
    NULL once two were."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "l.db"
        db = Ledger(path)
        committed: dict[tuple[str, str], set[str]] = {}
        for keeps, rolled_back, reopen in batches:
            if reopen:
                db.close()
                db = Ledger(path)
            try:
                with db.transaction():
                    for name, digest, value in keeps:
                        db.keep_field_values({name: value}, {name: digest})
                    if rolled_back:
                        raise ZeroDivisionError
            except ZeroDivisionError:
                continue
            for name, digest, value in keeps:
                text = json.dumps(value, separators=(",", ":"))
                committed.setdefault((name, digest), set()).add(text)
        found = {
            (FIELD_ORDER[field], short.hex() if isinstance(short, bytes) else short): (
                unpack_field_value(value)
            )
            for field, short, value in db._db.execute("SELECT * FROM field_values")
        }
        db.close()
    assert found == {
        slot: (next(iter(texts)) if len(texts) == 1 else None) for slot, texts in committed.items()
    }


def _reference_field_hashes(hashes: dict[str, str]) -> bytes | str:
    """`pack_field_hashes` as it was before issue 24's plans by order of names."""
    width = 2 * _FIELD_HASH_BYTES
    try:
        order = sorted((_FIELD_INDEX[name], digest[:width]) for name, digest in hashes.items())
    except KeyError:
        order = []
    text = "".join(digest for _, digest in order)
    raw = _hex_bytes(text, _FIELD_HASH_BYTES * len(order)) if order else b""
    if (
        len(order) != len(hashes)
        or raw is None
        or any(len(digest) != width for _, digest in order)
        or (order and order[-1][0] >= 8 * _BITMAP_BYTES)
    ):
        return json.dumps(hashes, separators=(",", ":"))
    bits = sum(1 << at for at, _ in order)
    return bits.to_bytes(_BITMAP_BYTES, "little") + raw


_DIGEST = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=8, max_size=12),
    st.text(alphabet="0123456789abcdefABCDEF g", max_size=12),
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([*FIELD_ORDER, "extra", "status "]), _DIGEST),
        max_size=len(FIELD_ORDER) + 2,
    ),
    st.booleans(),
)
def test_field_hashes_pack_as_before(pairs: list[tuple[str, str]], shuffle: bool) -> None:
    """Any fields in any order, hashes of any length and case: the same stored form (a
    row's hashes are compared with what an earlier version stored)."""
    hashes = dict(pairs)
    if shuffle:
        hashes = dict(reversed(hashes.items()))
    for _ in range(2):  # planned once, then from the plan
        assert pack_field_hashes(hashes) == _reference_field_hashes(hashes)
    assert pack_field_hashes({}) == _reference_field_hashes({}) == b"\x00\x00"
