"""Which consents `--revoke-missing` may retire, and how many at most, in one run.

A row done in an earlier run and absent from this run's input is "missing from the
source"; revoking it patches its consent to inactive. Read the wrong input and every good
consent looks missing, so three guards stand before a revocation:

- a run that reads a correction file (one carrying `failed.csv`'s error columns: only the
  rows that needed fixing) revokes nothing;
- the scope: only rows of this run's `[source] system`, or without one, rows last seen in
  a file of the same name as one of this run's inputs (and of no system);
- a run that read an invalid row without a stable key (importer._keys.CELLS_PREFIX: its
  patientId, scope, category or dateTime, or its key column, unusable) revokes nothing:
  that row's ledger row looks missing, and any missing row could be it;
- the cap, `--revoke-max` (a count, or a share of the done rows in the scope; 10% by
  default): a run that would revoke more revokes nothing and exits 2;
- the input's size: a run whose input holds fewer rows than the last full read of its
  scope, by more than the cap (a share: of that read's rows), revokes nothing and exits 2;
- the evidence, `--revoke-after N` (2 by default): a row is revoked only once N
  consecutive runs that read its scope missed it; a run that sees it again starts its
  count over. The count lives in the ledger (`revoke_misses`); a run any guard above
  stops counts nothing (its input is suspect), and only a run every guard passed is the
  scope's last full read (`scope_reads`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Protocol

from importer._errors import UsageError
from importer._keys import KeyTally, split_key
from importer._results import Missing, RevokePlan
from importer.intake._layout import ERROR_COLUMNS

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from importer.intake._mapping import Mapping
    from importer.intake._reader import Table
    from importer.ledger._ledger import Ledger

DEFAULT_CAP = "10%"


class DoneRows(Protocol):
    """What the cap reads of the ledger: its done rows (importer.ledger._ledger.Ledger)."""

    def created_rows(self) -> Iterator[Any]: ...  # rows with source_key, source_file


def is_correction_file(columns: Iterable[str]) -> bool:
    """Does a file carry the error columns our reports and `failed.csv` add?"""
    return set(ERROR_COLUMNS) <= set(columns)


@dataclass(frozen=True)
class RevokeCap:
    """`--revoke-max`: N rows, or P% of the done rows in the run's scope (rounded down):
    of the rows the run may revoke, so a wrong input of a small file cannot revoke
    most of it because the ledger also holds large ones."""

    text: str = DEFAULT_CAP
    count: int | None = None
    percent: Decimal | None = Decimal(10)

    @classmethod
    def parse(cls, text: str | None) -> RevokeCap:
        if text is None:
            return cls()
        number = text.strip().removesuffix("%")
        try:
            value = Decimal(number) if text.strip().endswith("%") else Decimal(int(number))
        except (InvalidOperation, ValueError):
            value = Decimal(-1)
        if text.strip().endswith("%"):
            if not Decimal(0) <= value <= Decimal(100):
                raise UsageError(f"--revoke-max {text}: a share must be 0% to 100%, e.g. 5%")
            return cls(text, None, value)
        if value < 0:
            raise UsageError(f"--revoke-max {text}: give a row count (e.g. 25) or a share (5%)")
        return cls(text, int(value), None)

    def limit(self, done_rows: int) -> int:
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return int(done_rows * self.percent // 100)

    def describe(self, done_rows: int) -> str:
        if self.count is not None:
            return f"--revoke-max {self.count}"
        limit = self.limit(done_rows)
        return f"--revoke-max {self.text} of {done_rows:,} done rows in scope = {limit:,}"


@dataclass(frozen=True)
class RevokeScope:
    """What this run may revoke: its system, its inputs' names, whether it reads a
    correction file, the cap, and (counted while the run reads) its rows without a
    stable key."""

    system: str | None = None
    names: frozenset[str] = frozenset()
    correction_files: tuple[str, ...] = ()
    cap: RevokeCap = field(default_factory=RevokeCap)
    tally: KeyTally = field(default_factory=KeyTally, compare=False)
    #: the run's tables, read to their end by the time revocation is weighed
    tables: tuple[Table, ...] = field(default=(), compare=False)

    @property
    def truncated_files(self) -> list[str]:
        """Inputs the reader found cut off (`truncated_file`): not a whole read."""
        return [t.name for t in self.tables if t.truncated]

    @classmethod
    def of_run(
        cls,
        system: str | None,
        inputs: Sequence[tuple[str, Collection[str]]],
        cap: RevokeCap,
        tally: KeyTally | None = None,
    ) -> RevokeScope:
        """From the run's mapping system and its inputs as (name, columns)."""
        return cls(
            system,
            frozenset(PurePath(name).name for name, _ in inputs),
            tuple(name for name, columns in inputs if is_correction_file(columns)),
            cap,
            tally or KeyTally(),
        )

    @classmethod
    def of_tables(
        cls,
        revoke_max: str | None,
        mapping: Mapping,
        tables: Sequence[Table],
        tally: KeyTally | None = None,
    ) -> RevokeScope:
        """A run's scope: its mapping's system, its inputs' names, `--revoke-max`, and
        the tally of the normalizer reading its rows."""
        inputs = [(t.name, t.columns) for t in tables]
        scope = cls.of_run(mapping.system, inputs, RevokeCap.parse(revoke_max), tally)
        return replace(scope, tables=tuple(tables))

    def read_sizes(self, by_file: dict[str, int]) -> dict[str, int]:
        """This run's rows per unit of its scope (`scope_reads.scope`): its system's, or
        each input's by base name."""
        if self.system is not None:
            return {f"system:{self.system}": sum(by_file.values())}
        sizes: dict[str, int] = {}
        for file, rows in by_file.items():
            unit = f"file:{PurePath(file).name}"
            sizes[unit] = sizes.get(unit, 0) + rows
        return sizes

    def holds(self, ledger_key: str, source_file: str) -> bool:
        system, _ = split_key(ledger_key)
        if self.system is not None:
            return system == self.system
        return system is None and PurePath(source_file).name in self.names


def done_in_scope(done: DoneRows | int, scope: RevokeScope) -> int:
    """The done rows the scope holds (an int is taken as that count)."""
    if isinstance(done, int):
        return done
    return sum(
        1 for row in done.created_rows() if scope.holds(row["source_key"], row["source_file"])
    )


@dataclass(frozen=True)
class Shrink:
    """The run's input holds fewer rows than the last full read of its scope."""

    before: int  # rows of the last full read (of the scope's units this run read)
    now: int
    run_id: int  # the run that read them

    @property
    def lost(self) -> int:
        return self.before - self.now

    @classmethod
    def of(cls, sizes: dict[str, int], reads: dict[str, tuple[int, int]]) -> Shrink | None:
        """From this run's sizes and the ledger's last full reads (None: not smaller)."""
        known = [unit for unit in sizes if unit in reads]
        before = sum(reads[unit][0] for unit in known)
        now = sum(sizes[unit] for unit in known)
        if now >= before:
            return None
        return cls(before, now, max(reads[unit][1] for unit in known))


def cap_revocations(
    missing: Iterable[Missing],
    done: DoneRows | int,
    scope: RevokeScope,
    *,
    keep: int = 0,
    after: int = 1,
    misses: Callable[[str], int] | None = None,
    shrink: Shrink | None = None,
) -> RevokePlan:
    """Sort the missing rows by scope and apply the cap. Keeps at most cap + 1 rows, or
    `keep` (a dry run's list), since a wrong input can make the whole ledger "missing".

    `done`: the ledger (or the count of done rows in scope). A share's base is counted
    only once a row in scope is missing: most runs miss none, and it reads every done row.
    `misses(key)`: how many consecutive runs, this one included, missed the row (without
    it, 1); rows missed by fewer than `after` are pending, not revoked. `shrink`: the
    input is smaller than the scope's last full read.
    """
    result = RevokePlan(after=after)
    done_rows = limit = kept = -1
    for row in missing:
        if not scope.holds(row[0], row[1]):
            result.out_of_scope += 1
            continue
        if limit < 0:
            done_rows = done_in_scope(done, scope) if scope.cap.percent is not None else 0
            limit = scope.cap.limit(done_rows)
            kept = max(limit + 1, keep)
        result.in_scope += 1
        count = 1 if misses is None else misses(row[0])
        if count < after:
            result.pending[count] = result.pending.get(count, 0) + 1
            continue
        result.due += 1
        if len(result.rows) < kept:
            result.rows.append(row)
    unstable = scope.tally.unstable
    if scope.correction_files:
        result.rows, result.reason = [], "correction_file"
        result.note = (
            f"{', '.join(scope.correction_files)} is a correction file (it has failed.csv's "
            "error columns): a run reading one revokes nothing"
        )
    elif scope.truncated_files and result.in_scope:
        result.rows, result.reason = [], "truncated_file"
        result.note = (
            f"{', '.join(scope.truncated_files)} ends cut off (truncated_file): a run "
            "reading a cut export revokes nothing and counts no miss"
        )
    elif unstable and result.in_scope:
        result.rows, result.reason = [], "unstable_keys"
        rows, which, fix = (
            ("1 row has", "it", "it")
            if unstable == 1
            else (f"{unstable:,} rows have", "one of them", "them")
        )
        result.note = (
            f"{rows} no stable key (patientId, scope, category or dateTime blank, cut off or "
            f"unusable, or an empty key column): any missing row could be {which}, so this "
            f"run revokes nothing; fix {fix} and rerun"
        )
    elif result.in_scope and result.in_scope > limit:
        result.reason = "over_cap"
        result.refusal = (
            f"--revoke-missing would revoke {result.in_scope:,} consents, more than "
            f"{scope.cap.describe(done_rows)}; nothing was revoked. Check that the input is "
            "the whole source, or raise --revoke-max"
        )
    elif result.in_scope and shrink is not None and shrink.lost > scope.cap.limit(shrink.before):
        result.rows, result.reason = [], "shrunk"
        cap = scope.cap
        allowed = (
            f"--revoke-max {cap.count}"
            if cap.count is not None
            else f"--revoke-max {cap.text} of {shrink.before:,} = {cap.limit(shrink.before):,}"
        )
        result.refusal = (
            f"the input holds {shrink.now:,} rows of this scope, {shrink.lost:,} fewer than "
            f"the {shrink.before:,} of its last full read (run {shrink.run_id}), more than "
            f"{allowed}: it may be cut short; nothing was revoked and no miss was counted. "
            "Check that the export is whole; if the source really shrank, rerun once with a "
            "higher --revoke-max"
        )
    return result


def weigh(
    ledger: Ledger,
    run_id: int,
    scope: RevokeScope,
    *,
    after: int,
    sizes: dict[str, int],
    in_input: Callable[[list[str]], npt.NDArray[np.bool_]] | None = None,
) -> RevokePlan:
    """A run that read its whole input: count its misses as evidence and plan what it
    may revoke. Call inside a ledger transaction.

    Rows its input held start their count over; each row in scope it misses counts one
    more miss, kept only if the plan passes every guard (a refused or braked run counts
    nothing); such a run is also its scope's new last full read (`sizes`, by
    `RevokeScope.read_sizes`).
    """
    ledger.reset_misses(run_id, in_input)
    shrink = Shrink.of(sizes, ledger.full_reads())
    ledger.tentative()
    result = cap_revocations(
        ledger.missing_rows(run_id, in_input=in_input),
        ledger,
        scope,
        after=after,
        misses=lambda key: ledger.count_miss(key, run_id),
        shrink=shrink,
    )
    kept = not (result.refusal or result.note)
    ledger.tentative(kept)
    if kept:
        ledger.record_full_reads(sizes, run_id)
    return result
