"""What a monitor reads of a `run`, written for every outcome past argument parsing.

`--summary-json` and `--metrics-file` are written whether the run finished (exit 0/1),
was refused before it started (exit 2: a refused key, a ledger in use, a bad mapping),
stopped mid-way (exit 3: the key revoked, a full disk) or met a bug (exit 4), with the
exit code, the run's id (null when it never began), and when it started and ended. A run
refused before it began is also recorded in its ledger's runs (status `refused`) when
that ledger already exists, so `status` shows it; no ledger file is created for it. A
usage error (a mistake on the command line, an output onto an input) is no run: it is
not recorded, and no file but the monitor outputs is touched.

An output is written only once it has passed the checks of importer.reports._outputs (never onto
an input, the mapping, the ledger, a report or the other output). When the mapping could
not be read (so its crosswalk is not known), an existing file is replaced only if it is
one of ours (a JSON object; Prometheus text naming consent_import_ metrics). A file that
cannot be written (the disk full) is said on stderr; the exit code stays the run's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from importer._errors import UsageError
from importer._results import RunStats
from importer.reports._outputs import Named, check, mapping_inputs, same_file, write_text

if TYPE_CHECKING:
    from importer.intake._mapping import Mapping

__all__ = ["RunMonitor", "record_refusal"]

log = logging.getLogger("importer.monitor")

#: A run's status in the ledger by the exit code of a run refused before it began.
_REFUSED_STATUS = {2: "refused", 3: "stopped"}


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


@dataclass
class RunMonitor:
    """The monitor outputs of one `run` command: check them first, write them last."""

    summary_json: Path | None
    metrics_file: Path | None
    inputs: Sequence[Path]
    mapping_path: Path | None
    ledger: Path
    reports: Sequence[str | Path] = ()
    dry_run: bool = False
    started: float = field(default_factory=time.time)
    #: the loaded mapping, once it is: its crosswalk is then a known input
    mapping: Mapping | None = None
    #: a dry run's figures (PlanSummary.summary): they replace the run's counts
    plan: dict[str, Any] | None = None
    #: set once the document is written (the run's own path or a failure's)
    written: bool = False
    _safe: list[Named] = field(default_factory=list)

    def _named(self) -> list[Named]:
        named: list[Named] = []
        if self.summary_json is not None:
            named.append(("--summary-json", self.summary_json))
        if self.metrics_file is not None:
            named.append(("--metrics-file", self.metrics_file))
        return named

    def check(self) -> None:
        """Before anything else: each monitor output against the inputs, the mapping
        file, the ledger, its lock, the reports and the other output. One that passes is
        written whatever happens next; the first refusal is raised (exit 2)."""
        reads: list[Named] = [("input", Path(p)) for p in self.inputs]
        if self.mapping_path is not None:
            reads.append(("--mapping", self.mapping_path))
        reads += [("--ledger", self.ledger), ("the ledger's lock", Path(f"{self.ledger}.lock"))]
        reads += [("--report", Path(p)) for p in self.reports]
        named = self._named()
        refusal: UsageError | None = None
        for label, path in named:
            others = [(other_label, other) for other_label, other in named if other is not path]
            try:
                check([(label, path)], [*reads, *others])
            except UsageError as exc:
                refusal = refusal or exc
                continue
            self._safe.append((label, path))
        if refusal is not None:
            raise refusal

    def finished(self, stats: RunStats, *, exit_code: int, run_id: int | None) -> None:
        """The run returned: write its figures."""
        self.write(stats, exit_code=exit_code, run_id=run_id)

    def failed(self, exc: BaseException, exit_code: int, *, record: bool = True) -> None:
        """The command failed with `exc` (exit `exit_code`): record a refusal in an
        existing ledger (unless `record` is false: a mistake on the command line is no
        run, and leaves every file as it was), then write what is known."""
        stats = getattr(exc, "stats", None)
        run_id = getattr(exc, "run_id", None)
        if run_id is None and record and not self.dry_run:
            run_id = record_refusal(
                self.ledger,
                self.inputs,
                exit_code=exit_code,
                message=str(exc),
                started=self.started,
            )
        self.write(
            stats if isinstance(stats, RunStats) else RunStats(), exit_code=exit_code, run_id=run_id
        )

    def document(self, stats: RunStats, *, exit_code: int, run_id: int | None) -> dict[str, Any]:
        """The summary JSON: the run's counts (the contract's keys first), then who and when."""
        return {
            **stats.summary(),
            **(self.plan or {}),
            "exit_code": exit_code,
            "run_id": run_id,
            "started_at": _iso(self.started),
            "finished_at": _iso(time.time()),
            **({"dry_run": True} if self.dry_run else {}),
        }

    def write(self, stats: RunStats, *, exit_code: int, run_id: int | None) -> None:
        """Write the summary and the metrics that passed the checks; never raises for a
        file that cannot be written (said on stderr instead)."""
        if self.written:
            return
        self.written = True
        finished = time.time()
        document = self.document(stats, exit_code=exit_code, run_id=run_id)
        document["finished_at"] = _iso(finished)
        for label, path in self._safe:
            if not self._may_write(label, path):
                continue
            try:
                if label == "--summary-json":
                    write_text(path, json.dumps(document, indent=2) + "\n", private=False)
                else:
                    from importer.reports._metrics import write_metrics

                    write_metrics(path, document, finished=finished)
            except OSError as exc:
                log.error(
                    "could not write %s %s: %s; the run's outcome is exit %d",
                    label,
                    path,
                    exc.strerror or type(exc).__name__,
                    exit_code,
                    extra={"fields": {"event": "monitor_output_failed", "output": label}},
                )

    def _may_write(self, label: str, path: Path) -> bool:
        """After the mapping loaded: not its crosswalk. Before: only a file of ours."""
        if self.mapping is not None:
            for other_label, other in mapping_inputs(self.mapping):
                if same_file(path, other):
                    log.error("%s %s is the same file as %s; not written", label, path, other_label)
                    return False
            return True
        if not path.exists():
            return True
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return False
        if label == "--metrics-file":
            ours = "consent_import_" in text or not text.strip()
        else:
            try:
                ours = isinstance(json.loads(text), dict)
            except ValueError:
                ours = not text.strip()
        if not ours:
            log.error(
                "%s %s holds something else and the mapping did not load; not written", label, path
            )
        return ours


def record_refusal(
    ledger: Path, inputs: Sequence[Path], *, exit_code: int, message: str, started: float
) -> int | None:
    """Record a run that stopped before it began in an existing ledger of this schema
    (status `refused` for exit 2): its id, or None when there is no such ledger or it
    cannot be written. Never creates, migrates or binds a ledger."""
    from importer.ledger._ledger import record_refused_run

    return record_refused_run(
        ledger,
        inputs=[str(p) for p in inputs],
        started_at=_iso(started),
        finished_at=_iso(time.time()),
        status=_REFUSED_STATUS.get(exit_code, "error"),
        summary={"exit_code": exit_code, "error": message},
    )
