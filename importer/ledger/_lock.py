"""One run per ledger: an advisory lock file beside the ledger.

The lock is an `flock` on `<ledger>.lock`, so the kernel releases it when its process
dies, even by SIGKILL; the file also names its holder (pid, host, since when) so a second
run can say who holds it, and a run that finds a dead holder's name says it took over.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from importer._errors import ConfigError
from importer.ledger._codec import now_iso

log = logging.getLogger("importer.lock")


class LedgerLock:
    """Hold the lock of one ledger for the length of a `with` block."""

    def __init__(self, ledger_path: str | Path) -> None:
        self.path = Path(f"{ledger_path}.lock")
        self._handle: IO[str] | None = None

    def __enter__(self) -> LedgerLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the ledger lock {self.path}: {exc.strerror}"
            ) from None
        handle = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(handle)
            handle.close()
            raise ConfigError(
                f"ledger {self.path.with_suffix('')} is in use by process "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')} since "
                f"{holder.get('since', '?')}; wait for it to finish (one run per ledger)"
            ) from None
        previous = _read_holder(handle)
        if previous.get("pid"):
            # The lock was free, yet a holder is named: that process ended without
            # releasing it (killed or crashed).
            log.warning(
                "took over the ledger lock left by process %s (since %s), which is no longer "
                "running",
                previous.get("pid"),
                previous.get("since"),
                extra={"fields": {"event": "lock_taken_over", "pid": previous.get("pid")}},
            )
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()})
        )
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        # Clear the holder first: a named holder in a free lock means "died holding it".
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.flush()
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


def _read_holder(handle: IO[str]) -> dict[str, Any]:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}
