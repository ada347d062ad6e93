"""The check before creating: a run's jobs wait until a sample of its creates is looked up.

A ledger that does not know what the server holds (a new ledger over an old import, a
copy restored from a backup, another file's ledger, consents another tool made) plans
every such row as new, and a run would create each one again. So, before the first
POST of a run, the engine holds its jobs until it has `size` rows it would create
(new rows, not already looked up), or the input ends; then it looks them up
(importer.engine._preflight.look_up_sample) and, when any exists, creates nothing (exit 2).

The sample is taken as the run plans, from the rows it would really POST, wherever they
are in the file: the input is read once. So that a run whose creates come late in a large
file holds little, at most `HOLD_MAX` jobs that create nothing are held; past that they
go on (a PATCH, a retire and a lookup are safe to send again), and only the creates wait.
A run that creates nothing looks nothing up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

#: Jobs that create nothing held at most while the sample fills.
HOLD_MAX = 2000


@dataclass(frozen=True)
class CreateCheck:
    """What the check before creating knows before the run.

    Args:
        ledger: the ledger's path, for the message.
        most: lookups at most (`SAMPLE_REQUESTS`, or a tenth of the server's window).
        fresh: the ledger has created nothing (the message names a new ledger).
        stale: why the ledger is not the live one (importer.ledger._lineage); "" when it is.
            A stale ledger creates nothing without --skip-existing, whatever the sample.
        refuse: why this run may create nothing at all (the columns feeding an identity
            field changed: importer.engine._identity); "" when it may. Refused at the
            first create, with no lookup.
    """

    ledger: Path
    most: int
    fresh: bool = False
    stale: str = ""
    refuse: str = ""

    @property
    def size(self) -> int:
        """Creates to sample (a stale ledger, or a refusal, stops at the first one)."""
        return 1 if self.stale or self.refuse else self.most


class SampleGate(Generic[T]):
    """Holds jobs until the sample of creates is complete, then lets them all go."""

    def __init__(self, size: int, *, hold_max: int = HOLD_MAX) -> None:
        self.size, self.hold_max = size, hold_max
        self.creates: list[T] = []
        self.others: list[T] = []
        self.open = False
        self._spilled = False  # too many others were held: they go on at once

    @property
    def full(self) -> bool:
        return len(self.creates) >= self.size

    def hold(self, job: T, *, creates: bool) -> list[T]:
        """Hold `job` (one of the sample when it `creates`); returns the jobs that may
        go now."""
        if creates:
            self.creates.append(job)
            return []
        if self._spilled:
            return [job]
        self.others.append(job)
        if len(self.others) < self.hold_max:
            return []
        self._spilled = True
        go, self.others = self.others, []
        return go

    def release(self) -> list[T]:
        """The sample passed: every job held, and from now on none is."""
        self.open = True
        go, self.others, self.creates = self.others + self.creates, [], []
        return go
