"""Files a command writes: checked against what it reads before any work, written whole.

Every output (report, summary, export, a new ledger) is compared with every input, the
mapping, the crosswalk, the ledger and the other outputs before anything is read: the same
file, by path or by inode (so through symlinks and hard links too), is refused. So is an
output whose folder is missing or not writable, which would otherwise fail only after the
import. Writes go to a private temporary file in the same folder, renamed into place when
complete: an interrupted write leaves the old file, never half a report. Files are written
owner-only (0600) whatever the umask, since reports and exports hold PHI.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from importer._errors import UsageError
from importer.intake._mapping import Mapping
from importer.ledger._ledger import recorded_sources

#: (what the user called it, the path) e.g. ("--report", Path("errors.csv"))
Named = tuple[str, Path]


def check(outputs: Sequence[Named], inputs: Iterable[Named]) -> None:
    """Refuse (exit 2) an output that is an input or another output, or cannot be written."""
    reads = list(inputs)
    for label, path in outputs:
        _check_folder(label, path)
    earlier: list[Named] = []
    for label, path in outputs:
        for other_label, other in (*reads, *earlier):
            if same_file(path, other):
                raise UsageError(
                    f"{label} {path} is the same file as {other_label} {other}; nothing was "
                    "written: give the output another name"
                )
        earlier.append((label, path))


def mapping_inputs(mapping: Mapping) -> list[Named]:
    """The mapping file and its crosswalk, as inputs no output may overwrite."""
    named: list[Named] = []
    if mapping.path is not None:
        named.append(("--mapping", mapping.path))
    if mapping.crosswalk_path is not None:
        named.append(("crosswalk", mapping.crosswalk_path))
    named += [("crosswalk", path) for path in mapping.crosswalk_files]
    return named


def check_run(
    inputs: Sequence[str | Path],
    mapping: Mapping,
    ledger: Path,
    reports: Sequence[str | Path],
    summary_json: Path | None,
    *,
    metrics_file: Path | None = None,
) -> None:
    """`run`'s outputs (the ledger, reports, the summary, the metrics) against its inputs."""
    # The lock file beside the ledger is rewritten by every run: an output too.
    outputs: list[Named] = [("--ledger", ledger), ("the ledger's lock", Path(f"{ledger}.lock"))]
    outputs += [("--report", Path(p)) for p in reports]
    if summary_json is not None:
        outputs.append(("--summary-json", summary_json))
    if metrics_file is not None:
        outputs.append(("--metrics-file", metrics_file))
    check(outputs, [*(("input", Path(p)) for p in inputs), *mapping_inputs(mapping)])


def check_export(ledger: Path, *, created: Path | None, failed: Path | None) -> None:
    """`export`'s files against the ledger, each other, and every source file the ledger
    recorded: the fixed failed.csv of the last run must not be exported over. Names are
    recorded as given to `run`, relative to the folder it ran in, which is not known: a
    relative name is taken both from here and from the ledger's folder."""
    outputs: list[Named] = []
    if created is not None:
        outputs.append(("--created", created))
    if failed is not None:
        outputs.append(("--failed", failed))
    sources: list[Named] = []
    for name in recorded_sources(ledger):
        sources.append(("source file", Path(name)))
        if not Path(name).is_absolute():
            sources.append(("source file", ledger.parent / name))
    check(outputs, [("--ledger", ledger), *sources])


def same_file(a: Path, b: Path) -> bool:
    """The same file by inode (symlinks, hard links) or, for files not yet made, by path."""
    with suppress(OSError):
        if os.path.samefile(a, b):
            return True
    return a.resolve() == b.resolve()


def _check_folder(label: str, path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"{label} {path} is a folder; give a file path")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{label} {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{label} {path}: folder {folder} is not writable")


class AtomicFile:
    """A text file written to a private temporary beside `path`; `commit` renames it into
    place, `discard` removes it. Owner-only unless `private=False` (then the umask's mode)."""

    def __init__(
        self,
        path: Path,
        *,
        encoding: str = "utf-8",
        newline: str | None = None,
        private: bool = True,
    ) -> None:
        self.path = path
        self.private = private
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        self._tmp = Path(tmp)  # mkstemp makes it 0600
        self.handle: IO[str] = os.fdopen(fd, "w", encoding=encoding, newline=newline)

    def commit(self) -> None:
        if self.handle.closed:
            return
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        if not self.private:
            self._tmp.chmod(0o666 & ~_umask())
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        with suppress(OSError):  # closing flushes: on a full disk that fails too
            self.handle.close()
        with suppress(FileNotFoundError):
            self._tmp.unlink()


@contextmanager
def atomic_writer(
    path: Path, *, encoding: str = "utf-8", newline: str | None = None, private: bool = True
) -> Iterator[IO[str]]:
    """Write `path` whole or not at all (see `AtomicFile`)."""
    file = AtomicFile(path, encoding=encoding, newline=newline, private=private)
    try:
        yield file.handle
        file.commit()  # may fail too (a full disk): then no temporary is left behind
    except BaseException:
        file.discard()
        raise


def write_text(path: Path, text: str, *, private: bool = True) -> None:
    with atomic_writer(path, private=private) as handle:
        handle.write(text)


def _umask() -> int:
    # The only way to read the umask is to set it; set it straight back.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
