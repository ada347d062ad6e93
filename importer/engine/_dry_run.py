"""The dry run (`run --dry-run`, `importer.plan`): every row's decision counted, nothing sent."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from itertools import chain
from pathlib import Path

from importer._options import RunOptions
from importer._results import PlanSummary
from importer._rows import Row
from importer.engine._decide import Verdict, decide_row
from importer.engine._input import RunInput
from importer.engine._revocation import Shrink, cap_revocations
from importer.intake._mapping import Mapping
from importer.ledger._ledger import Ledger
from importer.ledger._lineage import peek as peek_lineage

#: How many of the rows a dry run would revoke it keeps, to list.
REVOKES_LISTED = 50


def dry_run_import(
    inputs: Sequence[str | Path], mapping: Mapping, ledger_path: Path, options: RunOptions
) -> PlanSummary:
    """A dry run: validate and compare with the ledger; what would be created, patched,
    skipped, revoked. Sends nothing and writes nothing: the ledger is read as a run would
    read it (`Ledger.for_reading`), never migrated or written, and no lock is taken."""
    source = RunInput.open(inputs, mapping, options.revoke_max)
    tables, normalizer, scope = source.tables, source.normalizer, source.scope
    summary = PlanSummary()
    context: AbstractContextManager[Ledger | None] = (
        closing(Ledger.for_reading(ledger_path)) if _made(ledger_path) else nullcontext(None)
    )
    seen: set[str] = set()
    sizes: dict[str, int] = {}
    with context as ledger:
        if ledger is not None:
            source.read_as(ledger)
        batch: list[Row] = []
        for row in chain.from_iterable(normalizer.rows(t) for t in tables):
            batch.append(row)
            if options.revoke_missing:
                seen.add(row.source_key)
                sizes[row.file] = sizes.get(row.file, 0) + 1
            if len(batch) >= 500:
                _count(batch, ledger, options, summary)
                batch = []
        _count(batch, ledger, options, summary)
        if ledger is not None and options.revoke_missing:
            missing = ledger.missing_rows(seen=seen)
            known = ledger  # the next run counts one more miss than the ledger holds
            summary.revoke = cap_revocations(
                missing,
                ledger,
                scope,
                keep=REVOKES_LISTED,
                after=options.revoke_after,
                misses=lambda key: known.misses(key) + 1,
                shrink=Shrink.of(scope.read_sizes(sizes), ledger.full_reads()),
            )
        if ledger is not None and _create_checked(options) and summary.counts.get("create"):
            # As the real run's check before creating (importer.engine._gate) would find it.
            summary.refused = peek_lineage(ledger)
    summary.source_key = normalizer.key_kind
    if normalizer.skipped:
        summary.counts["skipped"] = normalizer.skipped  # filtered out, or making no consent
    return summary


def _count(batch: list[Row], ledger: Ledger | None, options: RunOptions, out: PlanSummary) -> None:
    prior = ledger.get(r.source_key for r in batch) if ledger else {}
    for row in batch:
        out.rows += 1
        plan = decide_row(row, prior.get(row.source_key), options)
        out.invalid += plan.verdict is Verdict.INVALID
        out.add(plan.label)


def _create_checked(options: RunOptions) -> bool:
    """Whether the real run checks before creating (importer.engine._runner)."""
    return options.preflight and not options.skip_existing


def _made(ledger: Path) -> bool:
    """Whether there is a ledger to read: an empty file is one a run has yet to make
    (it would make it there), so a dry run counts every row as new, as with none."""
    return ledger.exists() and not (ledger.is_file() and ledger.stat().st_size == 0)
