"""Is this ledger the live one, or an older copy of it (restored from a backup)?

The ledger keeps, in `meta`, an id of its own (`ledger_id`, made once) and a generation
(`generation`), one more for every run accepted as the live ledger's and for every
`undo` that changed it. A small file beside it, `LEDGER.lineage`, repeats both after
each (with the run's id and time). A backup copies the ledger, not the file beside it
once the ledger is put back:

- the same id and a smaller generation than the file beside it: a copy restored from an
  older backup; the runs since created consents it knows nothing of;
- another id: not the ledger that last ran here (replaced, or a backup from before ids).

Either is "stale": its run creates nothing without --skip-existing (which looks each
new row up and adopts what the server holds) or --no-preflight, whatever the sample
finds (importer.engine._gate). A stale ledger's run that creates nothing goes on (and says so);
it does not become the live one, so the next run that creates is still checked. A run
accepted with --skip-existing or --no-preflight becomes the live one.

An older copy made before an `undo` of the live ledger (the file beside it records the
generation of its last undo) holds as done rows whose consents the undo deleted: its run
sends nothing unless --no-preflight, since even a run that creates nothing would call
those rows unchanged (importer.engine._runner).

The sidecar is written after the ledger's generation is committed, so a crash between
leaves the ledger ahead of it, never behind; a ledger with no sidecar (moved, or its
first run) is taken as live, and the sample check still guards it.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from importer.ledger._codec import now_iso
from importer.ledger._ledger import Ledger

log = logging.getLogger("importer.run")

SUFFIX = ".lineage"


def sidecar(ledger: Path) -> Path:
    """The file beside a ledger that records its live generation."""
    return Path(f"{ledger}{SUFFIX}")


@dataclass(frozen=True)
class Lineage:
    """A ledger's id and generation, and what the file beside it says."""

    ledger_id: str
    generation: int
    marked: int  # the generation the sidecar records for this ledger (0: none)
    stale: str = ""  # why this ledger is not the live one ("" when it is)
    #: the generation the last `undo` of the live ledger made (0: none)
    undone: int = 0

    @property
    def undone_since(self) -> bool:
        """An older copy, and the live ledger was undone since it: rows it holds as done
        may be gone from the server (an undo deletes what a run created), so even a run
        of it that creates nothing would call them unchanged."""
        return bool(self.stale) and self.undone > self.generation


def check(ledger: Ledger) -> Lineage:
    """Read the ledger's lineage (giving it an id if it has none) and compare it with
    the file beside it."""
    ledger_id = ledger.meta_value("ledger_id")
    if ledger_id is None:
        ledger_id = uuid.uuid4().hex
        ledger.set_meta("ledger_id", ledger_id)
    return _compare(ledger, ledger_id)


def peek(ledger: Ledger) -> str:
    """Why the ledger is not the live one ("" when it is), as `check` would find it,
    writing nothing (a dry run's ledger is read-only): a ledger with no id yet is taken
    as another one when the file beside it names one."""
    ledger_id = ledger.meta_value("ledger_id")
    return _compare(ledger, ledger_id or "").stale


def _compare(ledger: Ledger, ledger_id: str) -> Lineage:
    generation = int(ledger.meta_value("generation") or 0)
    side = sidecar(ledger.path)
    marker = _read(side)
    if marker is None:
        return Lineage(ledger_id, generation, 0)
    undo = "the undo of " if marker.get("undo") else ""
    last = f"{undo}run {marker.get('run_id', '?')} at {marker.get('at', '?')}"
    if marker.get("ledger_id") != ledger_id:
        stale = (
            f"ledger {ledger.path} is not the ledger that last ran here ({side} names another "
            f"one, {last}): it was replaced, or restored from a backup, and may lack consents "
            "the other one created"
        )
        return Lineage(ledger_id, generation, 0, stale)
    marked = int(marker["generation"])
    undone = marker.get("undo_generation")
    undone = undone if isinstance(undone, int) else 0
    if marked > generation:
        stale = (
            f"ledger {ledger.path} is an older copy of the live one (generation {generation}; "
            f"{side} records {marked}, {last}): it was restored from a backup, and "
            + (
                "an undo since took back consents it holds as done"
                if undone > generation
                else "lacks the consents the runs since created"
            )
        )
        return Lineage(ledger_id, generation, marked, stale, undone)
    return Lineage(ledger_id, generation, marked, undone=undone)


def advance(ledger: Ledger, lineage: Lineage, run_id: int, *, undo: bool = False) -> None:
    """This run (or, with `undo`, the undo of run `run_id`) is the live ledger's: one
    generation more, in the ledger, then beside it. A sidecar that cannot be written is
    said, not fatal: the sample check still guards."""
    generation = max(lineage.generation, lineage.marked) + 1
    ledger.set_meta("generation", str(generation))
    document: dict[str, Any] = {
        "ledger_id": lineage.ledger_id,
        "generation": generation,
        "run_id": run_id,
        "at": now_iso(),
    }
    if undo:
        document["undo"] = True
    undone = generation if undo else lineage.undone
    if undone:
        document["undo_generation"] = undone  # kept by the runs after it
    side = sidecar(ledger.path)
    temporary = side.with_name(side.name + ".tmp")
    try:
        temporary.write_text(json.dumps(document) + "\n", encoding="utf-8")
        os.replace(temporary, side)
    except OSError as exc:
        log.warning(
            "cannot write %s (%s): a copy of this ledger restored later will not be told "
            "from the live one by it (the check of the rows to create still runs)",
            side,
            exc.strerror or type(exc).__name__,
        )


def _read(side: Path) -> dict[str, Any] | None:
    try:
        text = side.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s (%s): taken as absent", side, exc.strerror)
        return None
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    generation = found.get("generation") if isinstance(found, dict) else None
    if not isinstance(found, dict) or not isinstance(generation, int):
        log.warning("%s is not a ledger's lineage file: taken as absent", side)
        return None
    return found
