"""Mapping version 2's rows: bodies assembled from body paths and source specs, column-wise."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from importer._rows import Row
from importer.intake._cells import (
    Consents,
    UnchangedCheck,
    _whole,
    cells_digests,
)
from importer.intake._fastcheck import proven_by_specs, proven_valid
from importer.intake._mapping import Mapping
from importer.intake._v1rows import _consent_plans, _ConsentPlan

if TYPE_CHECKING:
    from importer.intake._normalize import _FileNormalizer


class _V2Rows:
    """A file's rows through a version-2 mapping: its consent plans, each row's consents
    checked (`check`, for validate) or built (`normalize`, for a run)."""

    def __init__(self, owner: _FileNormalizer, mapping: Mapping) -> None:
        self.owner = owner
        self.consents = _consent_plans(owner, mapping)
        self.plan_of: list[str] = []  # the consent key of each of `check`'s consents
        #: the [fields] specs by row field, for error labels
        self.labels = {spec.path.plain: spec for plan in self.consents for spec in plan.specs}

    def check(self, chunk: pd.DataFrame) -> tuple[list[str], list[tuple[int, int]], dict[int, Row]]:
        """Every consent of a chunk through a version-2 mapping: source keys, (row number,
        position in the chunk) of each, and the invalid ones by index.

        Consents come plan by plan (all `#research`, then all `#hipaa`): keys of different
        plans never collide, and within a plan rows keep their order, which is all the
        duplicate check needs. Proven consents cost a key each; the rest are built.
        """
        headers, raw, prepared, keys = self.owner._prepare(chunk)
        size = len(chunk)
        self._evaluate(raw, size, chunk.index)
        numbers = chunk.index.tolist()
        value_rows: list[tuple[Any, ...]] | None = None
        names = list(prepared)
        out_keys: list[str] = []
        places: list[tuple[int, int]] = []
        invalid: dict[int, Row] = {}
        self.plan_of = []
        made = np.zeros(size, dtype=bool)
        has_key = np.array([k is not None for k in keys], dtype=bool)
        for plan in self.consents:
            holds = (
                np.array(plan.holds, dtype=bool)
                if plan.holds is not None
                else np.ones(size, dtype=bool)
            )
            made |= holds
            proven = self._proof(plan, prepared, keys, size) & holds & has_key
            suffix = f"#{plan.key}" if plan.key else ""
            for pos in np.flatnonzero(holds).tolist():
                index = len(out_keys)
                places.append((int(numbers[pos]), pos))
                self.plan_of.append(plan.key)
                if proven[pos]:
                    out_keys.append(f"{keys[pos]}{suffix}")
                    continue
                if value_rows is None:
                    value_rows = list(zip(*raw.values(), strict=True))
                cells = {n: prepared[n][pos] for n in names if n not in plan.dropped}
                row = self.owner._row(
                    int(numbers[pos]), headers, value_rows[pos], cells, keys[pos], (plan, pos)
                )
                out_keys.append(row.source_key)
                if not row.valid:
                    invalid[index] = row
        self.owner._skipped += int(size - made.sum())
        return out_keys, places, invalid

    def consent_at(self, index: int) -> str:
        """The [[consents]] key of the consent at `index` of the last `check`."""
        return self.plan_of[index]

    def _proof(
        self, plan: _ConsentPlan, prepared: dict[str, list[str]], keys: list[str | None], size: int
    ) -> npt.NDArray[np.bool_]:
        """Which rows' consent of this plan is certain to validate (keyed files only)."""
        if not self.owner.keyed or (
            plan.patient_from_v2 and self.owner.mapping.crosswalk is not None
        ):
            return np.zeros(size, dtype=bool)
        v1 = {n: cells for n, cells in prepared.items() if n not in plan.dropped}
        proven = proven_valid(
            v1,
            keys,
            parse_date=self.owner.parse_date,
            crosswalk=self.owner.mapping.crosswalk,
            supplied=plan.supplied,
            read_dates=self.owner._chunk_dates,
        )
        proven &= _whole(self.owner.defects, self.owner.numbers)
        return self.owner.mapped(proven) & proven_by_specs(plan.specs, plan.values, size)

    def _evaluate(
        self, raw: dict[str, list[Any]], size: int, index: pd.Index | None = None
    ) -> dict[str, list[str]]:
        """Every plan evaluated over the chunk; the trimmed cells by mapped column
        (`rows`: a position in the chunk -> its row number, for messages)."""
        cells = {
            name: self.owner._cells(raw[header]) for name, header in self.owner.headers.items()
        }
        numbers = None if index is None else index.tolist()
        rows = None if numbers is None else (lambda pos: int(numbers[pos]))
        for plan in self.consents:
            plan.evaluate(cells, size, rows)
        return cells

    def consents_of(self, chunk: pd.DataFrame, unchanged: UnchangedCheck | None) -> Consents:
        """A chunk's consents through a version-2 mapping, in row order, those `unchanged`
        confirms marked (keyed files: a natural key needs the body's patient)."""
        owner = self.owner
        headers, raw, prepared, keys = owner._prepare(chunk)
        size = len(chunk)
        cells = self._evaluate(raw, size, chunk.index)
        # A row's digest covers its version-1 fields and every mapped column's cells
        # (what the specs read); date cells enter as text, their reading in the key.
        digests = cells_digests(
            {**prepared, **{"\x00" + name: column for name, column in cells.items()}},
            owner.digest_key(),
            size,
        )
        holds = np.array(
            [np.ones(size, dtype=bool) if p.holds is None else p.holds for p in self.consents],
            dtype=bool,
        ).reshape(len(self.consents), size)
        owner._skipped += int(size - holds.any(axis=0).sum())
        pos, plan_of = np.nonzero(holds.T)  # row by row, a row's consents in order
        suffixes = [f"#{p.key}" if p.key else "" for p in self.consents]
        fast_keys: list[str | None] = [
            None if keys[at] is None else f"{keys[at]}{suffixes[p]}"
            for at, p in zip(pos.tolist(), plan_of.tolist(), strict=True)
        ]
        skip = np.zeros(len(pos), dtype=bool)
        if unchanged is not None and owner.keyed and len(pos):
            has_key = np.array([k is not None for k in keys], dtype=bool)
            proven = np.array(
                [self._proof(p, prepared, keys, size) & has_key for p in self.consents],
                dtype=bool,
            ).reshape(len(self.consents), size)
            candidates = np.flatnonzero(proven[plan_of, pos]).tolist()
            if candidates:
                asked = [fast_keys[i] or "" for i in candidates]
                skip[candidates] = unchanged(asked, digests[pos[candidates]])
        numbers = chunk.index.to_numpy(dtype=np.int64)
        names = list(prepared)

        def build(index: int) -> Row:
            at, plan = int(pos[index]), self.consents[int(plan_of[index])]
            values = tuple(column[at] for column in raw.values())
            row_cells = {n: prepared[n][at] for n in names if n not in plan.dropped}
            row = owner._row(int(numbers[at]), headers, values, row_cells, keys[at], (plan, at))
            row.cells_digest = int(digests[at])
            return row

        return Consents(size, numbers, pos.astype(np.int64), fast_keys, skip, build)

    def normalize(self, chunk: pd.DataFrame) -> list[Row]:
        """Rows through a version-2 mapping: per row, one Row per consent made."""
        headers, raw, prepared, keys = self.owner._prepare(chunk)
        size = len(chunk)
        self._evaluate(raw, size, chunk.index)
        names = list(prepared)
        numbers = chunk.index.tolist()
        value_rows = list(zip(*raw.values(), strict=True))
        rows: list[Row] = []
        for pos in range(size):
            made = False
            for plan in self.consents:
                if plan.holds is not None and not plan.holds[pos]:
                    continue
                made = True
                row_cells = {n: prepared[n][pos] for n in names if n not in plan.dropped}
                rows.append(
                    self.owner._row(
                        int(numbers[pos]),
                        headers,
                        value_rows[pos],
                        row_cells,
                        keys[pos],
                        (plan, pos),
                    )
                )
            if not made:
                self.owner._skipped += 1
        return rows
