"""Resource errors: the machine, not the program, refused a file.

A full disk, a read-only file system, a ledger file that vanished, a permission denied:
none of them is a bug, and each is said in one line naming the path and the cause
(`ResourceError`), with exit 2 before a run started and 3 once it had (resumable: the
ledger's transactions roll back whole, and rows whose outcome was not recorded stay in
flight, which the next run looks up before sending anything again).

They come as `OSError` (errno), as SQLite's `OperationalError` (its error name, or
its message when the error was made by hand), or inside an `ExceptionGroup` (a task
group of the engine: the ledger's writer failed, and every worker waiting on it too).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType

from importer._errors import ResourceError

__all__ = ["ResourceGuard", "find_resource_error", "resource_error"]

#: errno -> the cause, as the one line says it.
_ERRNO_CAUSES = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "the file or its folder is gone",
    errno.EIO: "an input/output error of the disk",
}
_CANT_OPEN = "it cannot be opened (its folder is gone, or no permission)"
#: SQLite's error names (prefixes) -> the cause.
_SQLITE_CAUSES = (
    ("SQLITE_FULL", _ERRNO_CAUSES[errno.ENOSPC]),
    ("SQLITE_READONLY_DBMOVED", "the ledger file was moved or deleted while in use"),
    ("SQLITE_READONLY", "the file or its file system is read-only"),
    ("SQLITE_CANTOPEN", _CANT_OPEN),
    ("SQLITE_PERM", "permission denied"),
    ("SQLITE_IOERR", "an input/output error of the disk"),
)
#: SQLite's messages -> the cause, for errors without an error name (made by hand).
_SQLITE_MESSAGES = (
    ("database or disk is full", _ERRNO_CAUSES[errno.ENOSPC]),
    ("attempt to write a readonly database", "the file or its file system is read-only"),
    ("unable to open database file", _CANT_OPEN),
    ("disk i/o error", "an input/output error of the disk"),
)


def _is_sqlite_error(exc: BaseException) -> bool:
    """SQLite's OperationalError, told by its class (only the ledger imports sqlite3)."""
    kind = type(exc)
    return kind.__module__ == "sqlite3" and kind.__name__ == "OperationalError"


def _cause(exc: BaseException) -> tuple[str, str | None] | None:
    """(cause, the path the error names, if any) when `exc` is a resource error."""
    if _is_sqlite_error(exc):
        name = getattr(exc, "sqlite_errorname", None) or ""
        for prefix, cause in _SQLITE_CAUSES:
            if name.startswith(prefix):
                return cause, None
        text = str(exc).lower()
        for message, cause in _SQLITE_MESSAGES:
            if message in text:
                return cause, None
        return None
    if isinstance(exc, OSError) and exc.errno in _ERRNO_CAUSES:
        filename = exc.filename if isinstance(exc.filename, str | Path) else None
        return _ERRNO_CAUSES[exc.errno], None if filename is None else str(filename)
    return None


def _why_not_open(path: Path) -> str:
    """SQLite's "unable to open" made precise: its folder gone, or not writable (SQLite
    writes its -wal and -shm files beside the ledger, even to read it)."""
    folder = path.parent
    if not folder.is_dir():
        return f"its folder {folder} is gone"
    if not os.access(folder, os.W_OK):
        return f"its folder {folder} is read-only or not writable (SQLite writes beside it)"
    return _CANT_OPEN


def find_resource_error(exc: BaseException) -> tuple[BaseException, str, str | None] | None:
    """The first resource error in `exc` or, for a group, in its leaves: (the error, its
    cause, the path it names)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_resource_error(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, ResourceError):
        return exc, exc.cause, str(exc.path)
    cause = _cause(exc)
    return None if cause is None else (exc, *cause)


def resource_error(
    exc: BaseException,
    path: str | Path,
    *,
    started: bool,
    what: str = "ledger",
    then: str | None = None,
) -> ResourceError | None:
    """`exc` as a one-line `ResourceError` about `path` (or the file it names), or None
    when it is not a resource error."""
    found = find_resource_error(exc)
    if found is None:
        return None
    inner, cause, named = found
    if isinstance(inner, ResourceError):
        if inner.started == started:
            return inner
        return ResourceError(str(inner), path=inner.path, cause=inner.cause, started=started)
    where = named or str(path)
    if cause == _CANT_OPEN:
        cause = _why_not_open(Path(where))
    label = what if named is None or Path(named) == Path(path) else "file"
    then = then or (
        "the run stopped, the ledger consistent: fix that and rerun with the same ledger to resume"
        if started
        else "nothing was sent: fix that and run again"
    )
    return ResourceError(
        f"{label} {where}: {cause}; {then}", path=where, cause=cause, started=started
    )


class ResourceGuard:
    """The `with` block of a run's ledger: the resource errors raised in it become
    `ResourceError`s about `path`, exit 2 until the run has begun (`begun`), 3 after; and
    whether the ledger file is still where the run began (`vanished`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.started = False
        self._opened: os.stat_result | None = None

    def __enter__(self) -> ResourceGuard:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or not isinstance(exc, Exception):
            return
        if isinstance(exc, ResourceError):
            if exc.started or not self.started:
                return
            raise ResourceError(str(exc), path=exc.path, cause=exc.cause, started=True) from exc
        resource = resource_error(exc, self.path, started=self.started)
        if resource is not None:
            raise resource from exc

    def begun(self, run_id: int) -> int:
        """The run `run_id` has begun (its ledger file is the one there now)."""
        self.started = True
        self._opened = os.stat(self.path)
        return run_id

    def vanished(self) -> str:
        """'' while the ledger's path names the file the run began with; else what
        happened to it, in words (SQLite writes on into a deleted file without a word)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        opened = self._opened
        same = opened is not None and (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)
        return "" if same else "replaced"
