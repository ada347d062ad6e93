"""The recorder: what the engine learns of a row, written to the ledger through its async
writer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from importer._rows import Row, sheet_note
from importer.engine._decide import PATCHABLE, immutable_changes
from importer.engine._work import (
    Work,
)
from importer.ledger._ledger import Ledger
from importer.ledger._schema import ErrorNote, LedgerRow, Op, Source
from importer.ledger._writer import AsyncLedger

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger("importer.engine")


class Recorder:
    """A run's writes to the ledger, each one of its named transitions, grouped into
    shared commits by `AsyncLedger`."""

    def __init__(self, ledger: Ledger, run_id: int, *, max_unsettled: int = 1024) -> None:
        self.writer = AsyncLedger(ledger, max_unsettled=max_unsettled)
        self.run_id = run_id

    async def read(self, fn: Callable[[Ledger], T]) -> T:
        """Read through the writer, so a read sees every write queued before it."""
        return await self.writer.write(fn)

    async def planned(
        self, unchanged: list[Row], invalid: list[Row], refused: list[tuple[Row, LedgerRow]]
    ) -> None:
        """A batch's rows that need no request: seen unchanged, invalid, or refused."""
        run_id = self.run_id
        seen = [(row.source_key, row.cells_digest) for row in unchanged]
        notes = [_invalid_note(row) for row in invalid]
        notes += [_refused_note(row, before) for row, before in refused]

        def record(ledger: Ledger) -> None:
            ledger.seen(seen, run_id)
            for src, transition, error in notes:
                transition(ledger, run_id, src, error)

        await self.writer.write(record)

    async def intent(
        self,
        work: Work,
        op: Op,
        *,
        consent_id: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Commit that this row's request is about to be sent (before it is)."""
        row, run_id, src = work.row, self.run_id, work.src
        pending = row.body_json if body is None else json.dumps(body, separators=(",", ":"))
        previous = None
        if op is Op.RECREATE and work.prior is not None:
            previous = work.prior.consent_id
        patient_id = work.patient_id
        new = work.prior is None  # planned from no record: nothing to keep for undo
        await self.writer.write(
            lambda ledger: ledger.intent(
                run_id,
                src,
                op,
                body=pending,
                body_hash=row.body_hash,
                patient_id=patient_id,
                consent_id=consent_id,
                previous_consent_id=previous,
                new=new,
            )
        )

    async def done(
        self, work: Work, action: str, request_id: str, *, consent_id: str | None = None
    ) -> None:
        """Queue the row's outcome without waiting for its commit (only for room under
        the writer's bound): until it commits the row is in flight, which a rerun
        settles by a lookup."""
        row, run_id, src, op = work.row, self.run_id, work.src, work.op
        hashes, patient_id, digest = row.field_hashes(), work.patient_id, row.cells_digest
        # The patchable values the server now holds: what an undo of a later PATCH puts back.
        patchable = {name: work.body[name] for name in PATCHABLE if name in work.body}

        def record(ledger: Ledger) -> None:
            ledger.done(
                run_id,
                src,
                op,
                action=action,
                payload_hash=row.body_hash,
                field_hashes=hashes,
                cells_hash=digest,
                patient_id=patient_id,
                request_id=request_id or None,
                consent_id=consent_id,
            )
            ledger.keep_field_values(patchable, hashes)

        await self.writer.write_soon(record)

    async def unsent(self, work: Work) -> None:
        """The row's request was never sent after its intent: put its state back."""
        if work.maybe_sent:
            return  # an earlier attempt may have landed: stay in flight for a lookup
        src = work.src
        before = work.prior.state if work.prior is not None else None
        await self.writer.write(lambda ledger: ledger.unsent(src, before))

    async def transition(
        self,
        transition: Callable[Concatenate[Ledger, int, P], None],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None:
        """Write one of the ledger's transitions for this run: `transition` is the
        `Ledger` method (each transition is defined there once), called with the run id
        and `args` in the writer's next commit."""
        run_id = self.run_id
        await self.writer.write(lambda ledger: transition(ledger, run_id, *args, **kwargs))


_Note = tuple[Source, Callable[[Ledger, int, Source, ErrorNote], None], ErrorNote]


def _invalid_note(row: Row) -> _Note:
    key = row.source_key
    if any(e.code == "duplicate_row" for e in row.errors):
        # Its key is the first row's: record it apart, so that row's record stays whole.
        key = f"{key}#duplicate@{row.file}:{row.row}"
    error = ErrorNote(
        "validate",
        "; ".join(e.code for e in row.errors),
        sheet_note(row.sheet, "; ".join(e.message for e in row.errors)),
        json.dumps(row.cells),
    )
    return Source(key, row.file, row.row), Ledger.invalid, error


def _refused_note(row: Row, before: LedgerRow) -> _Note:
    message = (
        f"{', '.join(immutable_changes(row, before))}: changed since the consent was "
        "created, and the API cannot patch them; rerun with --on-immutable-change "
        "recreate to replace it (immutable_change)"
    )
    log.info(
        "row failed: file=%s row=%d code=immutable_change",
        row.file,
        row.row,
        extra={
            "fields": {
                "event": "row_failed",
                "file": row.file,
                **({"sheet": row.sheet} if row.sheet else {}),
                "row": row.row,
                "field": "; ".join(immutable_changes(row, before)),
                "code": "immutable_change",
            }
        },
    )
    error = ErrorNote(
        "sync", "immutable_change", sheet_note(row.sheet, message), json.dumps(row.cells)
    )
    return Source(row.source_key, row.file, row.row), Ledger.refused, error
