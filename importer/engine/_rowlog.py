"""What a log line about a row says: where (file, the sheet of an Excel file, row),
which field and rule, the request's status and id; never a cell value (PHI). For text
logs and JSON lines alike.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from importer._errors import ApiError

if TYPE_CHECKING:
    from importer._rows import Row

#: Statuses whose diagnostics name fields of the body sent (400 malformed, 409 conflict,
#: 422 invalid); 401/403 name the key and 429/5xx the service.
_ROW_REFUSALS = frozenset({400, 409, 422})


def log_invalid_row(log: logging.Logger, row: Row) -> None:
    """One log line per invalid row: where and which rules, never the values."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields = "; ".join(e.field for e in row.errors)
    codes = "; ".join(e.code for e in row.errors)
    log.info(
        "row invalid: file=%s%s row=%d field=%s code=%s",
        row.file,
        f" sheet={row.sheet}" if row.sheet else "",
        row.row,
        fields,
        codes,
        extra={
            "fields": {
                "event": "row_invalid",
                **_place(row),
                "field": fields,
                "code": codes,
                **({"consent": row.consent} if row.consent else {}),  # [[consents]] key
            }
        },
    )


def _place(row: Row) -> dict[str, Any]:
    """file, sheet (an Excel file's only: a display field, `file` is the ledger's name)
    and row."""
    return {"file": row.file, **({"sheet": row.sheet} if row.sheet else {}), "row": row.row}


def row_fields(
    event: str, row: Row | None, op: str | None, exc: BaseException, **more: Any
) -> dict[str, Any]:
    """A row's fields for a JSON log line: file, sheet, row, operation, the error's type, status
    and request id, and for a refusal of the row (a 4xx other than the key's or the
    budget's) the fields its diagnostics name (the text before each ":"); never values.
    A 5xx's or 429's diagnostics are about the service, not a field of the row."""
    fields: dict[str, Any] = {"event": event, "error": type(exc).__name__, **more}
    if row is not None:
        fields.update(_place(row), op=op)
    if isinstance(exc, ApiError):
        named = [i.split(":", 1)[0].strip() for i in exc.issues if ":" in i]
        fields.update(status=exc.status, request_id=exc.request_id or None)
        if named and exc.status in _ROW_REFUSALS:
            fields["field"] = "; ".join(named)
    return fields
