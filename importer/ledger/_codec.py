"""The ledger's byte packing: keys, ids and hashes stored in as few bytes as they need, and
back; timestamps as Unix milliseconds.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

#: Top-level API fields in the order `field_hashes` packs them (append only: a packed
#: value names its fields by position here).
FIELD_ORDER = (
    "patientId",
    "scope",
    "category",
    "status",
    "dateTime",
    "performerId",
    "organizationId",
    "policyUri",
    "policies",
    "policyRule",
    "sourceAttachment",
    "sourceReferenceId",
    "verification",
    "provision",
)


_FIELD_INDEX = {name: i for i, name in enumerate(FIELD_ORDER)}


#: Bytes kept of each field's hash (the 8 hex digits `Row.field_hashes` gives; issue 24).
#: The hash tells which fields changed: a field's change goes unseen only if its 32-bit
#: hashes collide (2**-32 an edited field). Ledgers before kept 6 bytes (12 digits),
#: read back as their first 4, so both compare with a row's.
_FIELD_HASH_BYTES = 4


#: Bytes of each field's hash in a ledger before issue 24.
_OLD_FIELD_HASH_BYTES = 6


#: Bytes of the presence bitmap that opens a packed `field_hashes` (bit i: FIELD_ORDER[i]).
_BITMAP_BYTES = 2


#: Bytes kept of a body's SHA-256 (`payload_hash`): 128 bits, as many as a UUID; a body
#: that changes and keeps them would need a collision no edit of a row can aim at.
_PAYLOAD_HASH_BYTES = 16


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _now() -> int:
    """`updated_at` as stored: Unix milliseconds (an ISO text takes 29 bytes a row)."""
    return time.time_ns() // 1_000_000


def _iso(stored: int | str | None) -> str | None:
    """A stored `updated_at` as `now_iso` writes times (a legacy text as it is)."""
    if not isinstance(stored, int):
        return stored
    return datetime.fromtimestamp(stored / 1000, UTC).isoformat(timespec="milliseconds")


def _hex_bytes(text: str, size: int) -> bytes | None:
    """`text` as `size` bytes, when it is exactly their lowercase hex (so it comes back
    the same), else None."""
    if len(text) != 2 * size:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if raw.hex() == text else None


def _packer(prefix: str, size: int) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """(pack, unpack) for ids made of `prefix` and `size` bytes in hex: stored as those
    bytes (a BLOB), any other text as it is (TEXT). Lossless: a BLOB is never text."""
    cut = len(prefix)

    def pack(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(prefix):
            raw = _hex_bytes(value[cut:], size)
            if raw is not None:
                return raw
        return value

    def unpack(stored: Any) -> Any:
        return prefix + stored.hex() if isinstance(stored, bytes) else stored

    return pack, unpack


#: Natural keys (importer._keys.NATURAL_PREFIX and 32 hex digits) as their 16 bytes;
#: keys from a key column, namespaced keys and content keys stay the text they are.
_pack_natural, _unpack_natural = _packer("nk:", 16)


#: Source-cell keys (importer._keys.SOURCE_PREFIX, "sk:") as a tag byte and their 16
#: bytes: 17 bytes, never mistaken for a natural key's 16.
_pack_source, _ = _packer("sk:", 16)


_SOURCE_TAG = b"\x01"


def pack_key(value: Any) -> Any:
    """A source key as stored: natural and source-cell keys as bytes, others as text."""
    if isinstance(value, str) and value.startswith("sk:"):
        raw = _pack_source(value)
        return _SOURCE_TAG + raw if isinstance(raw, bytes) else raw
    return _pack_natural(value)


def unpack_key(stored: Any) -> Any:
    """A stored source key as the normalizer makes it."""
    if isinstance(stored, bytes) and len(stored) == 17 and stored[:1] == _SOURCE_TAG:
        return "sk:" + stored[1:].hex()
    return _unpack_natural(stored)


#: Consent ids as ClinikAPI makes them ("consent_" and 24 hex digits) as 12 bytes.
pack_id, _unpack_consent = _packer("consent_", 12)


#: Request ids ("req_" and 16 hex digits) as 8 bytes.
pack_request_id, _unpack_request = _packer("req_", 8)


def unpack_id(stored: Any) -> Any:
    """A stored consent or request id as the server gave it."""
    if isinstance(stored, bytes):
        return (_unpack_consent if len(stored) == 12 else _unpack_request)(stored)
    return stored


def pack_hash(hex_digest: str | None) -> bytes | str | None:
    """A body's SHA-256 as stored: its first 16 bytes (any other text kept as it is)."""
    if hex_digest is not None and len(hex_digest) == 64:
        raw = _hex_bytes(hex_digest, 32)
        if raw is not None:
            return raw[:_PAYLOAD_HASH_BYTES]
    return hex_digest


def unpack_hash(stored: bytes | str | None) -> str | None:
    """A stored payload hash as hex: 32 digits (64 read from a ledger before schema 3)."""
    return stored.hex() if isinstance(stored, bytes) else stored


def same_payload(stored: str | None, body_hash: str) -> bool:
    """Whether a body of SHA-256 `body_hash` is the one whose hash the ledger holds."""
    if stored is None:
        return False
    if len(stored) == 2 * _PAYLOAD_HASH_BYTES and len(body_hash) == 64:
        return body_hash.startswith(stored)
    return stored == body_hash


def pack_field_hashes(hashes: dict[str, str]) -> bytes | str:
    """{field: hex digest} as stored: a bitmap of the fields present (bit i:
    FIELD_ORDER[i]), then the first 4 bytes of each one's hash in FIELD_ORDER (a longer
    digest, as a ledger before kept it, is cut to them). A field or hash this form cannot
    hold keeps the JSON form."""
    # Issue 24: a run's rows name the same fields in the same order, so where each goes
    # and the bitmap are worked out once per order of names (`_packing`).
    names = tuple(hashes)
    try:
        plan = _PACKINGS[names]
    except KeyError:
        if len(_PACKINGS) >= _PACKINGS_MAX:
            _PACKINGS.clear()
        plan = _PACKINGS[names] = _packing(names)
    if plan is not None:
        ordered, bitmap = plan
        width = 2 * _FIELD_HASH_BYTES
        text = "".join([hashes[name][:width] for name in ordered])
        # each piece is at most `width` long: all are exactly that when the total is
        raw = _hex_bytes(text, _FIELD_HASH_BYTES * len(ordered))
        if raw is not None:
            return bitmap + raw
    return json.dumps(hashes, separators=(",", ":"))


def _packing(names: tuple[str, ...]) -> tuple[tuple[str, ...], bytes] | None:
    """For fields `names`: them in FIELD_ORDER and their bitmap, or None when one is not
    in FIELD_ORDER or past the bitmap (their hashes keep the JSON form)."""
    if any(name not in _FIELD_INDEX or _FIELD_INDEX[name] >= 8 * _BITMAP_BYTES for name in names):
        return None
    ordered = tuple(sorted(names, key=_FIELD_INDEX.__getitem__))
    bits = sum(1 << _FIELD_INDEX[name] for name in ordered)
    return ordered, bits.to_bytes(_BITMAP_BYTES, "little")


#: `_packing` by the order of names it was asked for (a bound on memory: cleared when full).
_PACKINGS: dict[tuple[str, ...], tuple[tuple[str, ...], bytes] | None] = {}
_PACKINGS_MAX = 1024


def _pack_field_hash(digest: str) -> bytes | str:
    """One field's short hash as `field_values` keys it: its bytes (4; 6 in a ledger
    before issue 24), else the text."""
    return _hex_bytes(digest, len(digest) // 2) or digest


def unpack_field_hashes(stored: bytes | str | None) -> dict[str, str]:
    """{field: 8 hex digits}, packed with 4 bytes a field or (before issue 24) 6, of
    which the first 4 are read: a row's hashes compare with either."""
    if not stored:
        return {}
    width = 2 * _FIELD_HASH_BYTES
    if isinstance(stored, str):
        found: dict[str, str] = json.loads(stored)
        return {name: digest[:width] for name, digest in found.items()}
    bits = int.from_bytes(stored[:_BITMAP_BYTES], "little")
    fields = [name for i, name in enumerate(FIELD_ORDER) if bits >> i & 1]
    if not fields:
        return {}
    step = (len(stored) - _BITMAP_BYTES) // len(fields)
    return {
        name: stored[at : at + _FIELD_HASH_BYTES].hex()
        for name, at in zip(fields, range(_BITMAP_BYTES, len(stored), step), strict=True)
    }


def _unpack_field_hashes_v2(stored: bytes | str | None) -> dict[str, str]:
    """Schema 2's packing: per field, its index in FIELD_ORDER (1 byte) and 6 bytes."""
    if not isinstance(stored, bytes):
        return unpack_field_hashes(stored)
    step = 1 + _OLD_FIELD_HASH_BYTES
    return {
        FIELD_ORDER[stored[i]]: stored[i + 1 : i + step].hex() for i in range(0, len(stored), step)
    }


#: Raw deflate's preset dictionary for `field_values` (issue 24): the JSON the patchable
#: fields' values are made of (the API's names, not any file's). Never change it: the
#: values already stored are read with it.
_VALUE_DICT = (
    b'"https://" "active" "inactive" "rejected" {"type":"permit","period":{"start":"'
    b'","end":"T23:59:59.999000Z"},"actor":[{"role":"PRCP","reference":"Organization/"}],'
    b'"data":[{"meaning":"instance","reference":"'
    b'"provision":[{"type":"deny","purpose":[{"system":"http://","code":"'
    b'T00:00:00Z"},{"verified":false,"verifiedWith":"","verificationDate":"20'
    b'{"verified":true,"verifiedWith":"'
)


def pack_field_value(text: str) -> bytes:
    """A patchable value's JSON as `field_values` keeps it: raw deflate with the preset
    dictionary (about a third of the text's size). Deterministic: a value sent again
    packs to the same bytes."""
    raw = text.encode()
    # zlib's memory level 9 (its hash table and symbol buffer) costs ~20 µs a value to set
    # up (its 256 KB are mapped and unmapped each time), level 8 ~5 (issue 24). Both give
    # the same bytes for an input this short: every 3-byte string stays in its hash chain
    # (a smaller table only adds colliding entries, never accepted as a match, and the
    # chain limit, 1024 at least, is above the dictionary's and input's positions), and
    # all of it fits in one block (16,383 symbols at level 8). Longer: level 9, as before.
    level = 8 if len(raw) + len(_VALUE_DICT) < _SAME_AT_LEVEL_8 else 9
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, level, zlib.Z_DEFAULT_STRATEGY, _VALUE_DICT)
    return packer.compress(raw) + packer.flush()


#: Input and dictionary bytes below which `pack_field_value` packs at memory level 8: the
#: positions hashed stay under the shortest chain limit zlib walks at level 9 (1024).
_SAME_AT_LEVEL_8 = 1024


def unpack_field_value(stored: bytes | str | None) -> str | None:
    """The JSON `pack_field_value` packed (a ledger from before kept the text)."""
    if stored is None or isinstance(stored, str):
        return stored
    unpacker = zlib.decompressobj(-15, _VALUE_DICT)
    return (unpacker.decompress(stored) + unpacker.flush()).decode()
