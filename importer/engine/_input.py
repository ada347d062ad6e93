"""A run's input, opened once: the one setup `run` and the dry run share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from importer.engine._identity import read_as_the_ledger_did
from importer.engine._revocation import RevokeScope
from importer.intake._mapping import Mapping, open_tables
from importer.intake._normalize import Normalizer
from importer.intake._reader import Table
from importer.ledger._ledger import Ledger


@dataclass(frozen=True)
class RunInput:
    """The input files opened as tables, the normalizer that reads their rows, and the
    scope `--revoke-missing` may retire within (what these files cover)."""

    tables: list[Table]
    normalizer: Normalizer
    scope: RevokeScope

    @classmethod
    def open(
        cls, inputs: Sequence[str | Path], mapping: Mapping, revoke_max: str | None
    ) -> RunInput:
        """Open every input (each checked before any row is read) for `mapping`.

        Raises:
            InputError: an input cannot be read as a table.
            ConfigError: the mapping does not fit an input.
        """
        tables = open_tables(inputs, mapping)
        normalizer = Normalizer(mapping)
        scope = RevokeScope.of_tables(revoke_max, mapping, tables, normalizer.tally)
        return cls(tables, normalizer, scope)

    def read_as(self, ledger: Ledger) -> None:
        """Key rows and read naive date-times as the ledger's earlier runs did."""
        read_as_the_ledger_did(self.normalizer, ledger)
