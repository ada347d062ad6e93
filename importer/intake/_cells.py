"""What rows are made of, below the builders: the shared field lists and code tables, cell
translation, digests of keys and cells, and the batches the builders hand back.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import ValidationError

from importer._keys import (
    NATURAL_FIELDS,
    SOURCE_PREFIX,
    split_key,
)
from importer._rows import Row, RowError
from importer.intake._mapping import Mapping
from importer.intake._mapping_v2 import (
    UNMAPPED,
)
from importer.intake._mapping_v2 import split_codes as split_cell
from importer.intake._models import ConsentIdentity
from importer.intake._reader import RowDefects

#: Where an error's field name ends its first part ("category.0" -> "category").
_KEY_ROOT = re.compile(r"[.\[]")


#: Row fields copied into the body as they are.
_PLAIN_FIELDS = (
    "patientId",
    "scope",
    "status",
    "dateTime",
    "performerId",
    "organizationId",
    "policyUri",
    "policyRule",
    "sourceReferenceId",
)


_SPLIT = re.compile(r"[;|]")


#: Bump when a change of this module changes the body made from the same cells: every
#: stored cells digest then misses once, and the rerun compares bodies instead (and
#: when the digest itself is made differently: 2 = column-wise; 3 = a date-only period
#: end is the end of its day; 4 = `system|code` stays one coding in version 1's purpose
#: and category).
_BODY_RULES = "4"


#: The rows of a chunk the ledger holds as done with the same cells digest: asked with
#: their source keys and cells digests, answers True for each such row.
UnchangedCheck = Callable[[list[str], npt.NDArray[np.int64]], npt.NDArray[np.bool_]]


@dataclass(slots=True)
class Consents:
    """The consents a chunk makes, in row order (a row's in [[consents]] order): the
    position of each one's row in the chunk (ascending), its key when known without a
    body (None: only the body tells), whether the ledger holds it unchanged, and how to
    build its `Row`."""

    size: int  # rows in the chunk
    numbers: npt.NDArray[np.int64]  # the rows' numbers in the file
    pos: npt.NDArray[np.int64]
    keys: list[str | None]
    skip: npt.NDArray[np.bool_]
    build: Callable[[int], Row]


def _whole(defects: RowDefects, numbers: Any) -> npt.NDArray[np.bool_]:
    """Per row number: not cut short by the reader, so a column-wise proof may pass it."""
    return defects.whole(numbers)


def _unmapped_rule(table: str) -> str:
    return (
        f"its column holds a value {table} does not list; add it there, or set "
        'unmapped = "keep" to send such values as they are'
    )


_V2_RULES = {
    UNMAPPED: _unmapped_rule("the map"),
    "unknown_patient": "not in the crosswalk, or its target is blank there; add it",
    "unknown_id": "not in the crosswalk, or its target is blank there; add it",
    "invalid_date": "not a date-time in ISO 8601 or one of the formats given",
    "invalid_boolean": "must be Y/N, yes/no, true/false or 1/0, or be listed in the map",
}


def key_digests(keys: list[str]) -> npt.NDArray[np.uint64]:
    """64-bit digests of source keys (pandas' SipHash, the same in every process), for
    the duplicate check: a collision among a million keys has odds of about 1e-8."""
    digests: npt.NDArray[np.uint64] = pd.util.hash_array(
        np.array(keys, dtype=object), categorize=False
    )
    return digests


def cells_digests(fields: dict[str, list[str]], key: str, size: int) -> npt.NDArray[np.int64]:
    """Per row, a 64-bit digest of its prepared cells, keyed by `key`, a digest of all
    else that makes its body (`_FileNormalizer.digest_key`: the mapping, and how each
    date column is read): equal digests, equal bodies.

    A column at a time: each cell is hashed (keyed SipHash) and a row's column hashes are
    combined in field order as CPython combines a tuple's (what pandas does for a frame's
    rows), so no text is joined per row.
    """
    out = np.full(size, 0x345678, dtype=np.uint64)
    mult = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        for i, cells in enumerate(fields.values()):
            if cells and cells.count(cells[0]) == size:
                # One value in the whole column (a default, a constant): hashed once.
                first = np.array(cells[:1], dtype=object)
                out ^= pd.util.hash_array(first, categorize=False, hash_key=key)[0]
            else:
                column = np.array(cells, dtype=object)
                out ^= pd.util.hash_array(column, categorize=False, hash_key=key)
            out *= mult
            mult += np.uint64(82_520 + 2 * (len(fields) - i))
    out += np.uint64(97_531)
    digests: npt.NDArray[np.int64] = out.view(np.int64)
    return digests


def _cells_digest_key(mapping: Mapping, fields: list[str], *, excel: bool) -> str:
    """The SipHash key of a file's cells digests (16 characters): a digest of the body
    rules, the mapping (with its crosswalk) and the file kind."""
    crosswalk = sorted((mapping.crosswalk or {}).items())
    # Named crosswalks are left out of the mapping's repr (PHI): their tables count here.
    crosswalk += sorted(
        (f"{name}\x00{k}", v) for name, t in mapping.crosswalks.items() for k, v in t.items()
    )
    text = repr((_BODY_RULES, dataclasses.replace(mapping, path=None), crosswalk, fields, excel))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """A chunk makes hundreds of thousands of acyclic objects; cyclic GC passes over them
    would cost more than the work itself. Cycles are collected after it."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _identity(
    body: dict[str, Any], errors: list[RowError]
) -> tuple[str, str, list[str], datetime | None] | None:
    """An invalid row's natural identity, when every field it is made of holds (None:
    one does not, and the row has no stable key)."""
    if any(_KEY_ROOT.split(e.field, maxsplit=1)[0] in NATURAL_FIELDS for e in errors):
        return None  # e.g. a dateTime that does not parse is missing from the body
    try:
        found = ConsentIdentity.model_validate(body)
    except ValidationError:
        return None
    return found.patient_id, found.scope.value, found.category, found.date_time


def _identity_failed(key: str, errors: list[RowError]) -> bool:
    """Whether a row keyed by its identity cells failed in one of its identity fields."""
    return split_key(key)[1].startswith(SOURCE_PREFIX) and any(
        _KEY_ROOT.split(e.field, maxsplit=1)[0] in NATURAL_FIELDS for e in errors
    )


def split_codes(text: str) -> list[str]:
    """The codes of a multi-value cell (`a;b|c`), stripped, empty ones dropped; a
    `system|code` pair stays one code (`importer.intake._mapping_v2.split_codes`)."""
    return split_cell(text)


def _translate_codes(cell: str, table: dict[str, str]) -> str:
    """A multi-value cell translated: by its own entry when it has one, else code by code
    (a code not in the table stays as it is), so `init`'s one-entry-per-code tables apply."""
    whole = table.get(cell.casefold())
    if whole is not None or not _SPLIT.search(cell):
        return cell if whole is None else whole
    return ";".join(table.get(code.casefold(), code) for code in split_codes(cell))


#: What a cell its `[values.NAME]` table does not list becomes (see `_FileNormalizer
#: ._column`): no model accepts it, and `_v1_body` reports it as `unmapped_value`.
UNMAPPED_CELL = "\x00\x01"


def _mark_unmapped(
    cells: list[str], table: dict[str, str], *, multi: bool
) -> npt.NDArray[np.bool_] | None:
    """Cells the table does not list are entered in it as UNMAPPED_CELL (a row error);
    the rows holding one (None: none). Found once per distinct cell: most chunks have
    none and pay one set()."""
    missing = {c for c in set(cells) if c and not _listed(c, table, multi=multi)}
    if not missing:
        return None
    table.update(dict.fromkeys((c.casefold() for c in missing), UNMAPPED_CELL))
    return np.array([c in missing for c in cells], dtype=bool)


def _listed(cell: str, table: dict[str, str], *, multi: bool) -> bool:
    """Whether a values table translates the cell: as a whole, or (a multi-value
    field) code by code."""
    if cell.casefold() in table:
        return True
    if not multi or not _SPLIT.search(cell):
        return False
    return all(code.casefold() in table for code in split_codes(cell))


def _as_text(value: str | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else value


def _rule_text(message: str) -> str:
    """The rule part of a model message ("field: rule (code)" -> "rule (code)")."""
    return message.split(": ", 1)[1] if ": " in message else message
