"""Small helpers several test modules share (fixtures are in conftest.py)."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def wait_for(probe: Callable[[], Any], timeout: float = 60.0) -> float:
    """Poll `probe()` until it is truthy; returns the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "gave up waiting: condition not reached in time"
        time.sleep(0.02)
    return time.monotonic()


def copy_ledger(fixture: Path, ledger: Path, base_url: str) -> Path:
    """A copy of a committed ledger fixture at `ledger`, bound to `base_url` (the server
    it recorded is gone: this one is its heir)."""
    shutil.copy(fixture, ledger)
    with sqlite3.connect(ledger) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'base_url'", (base_url,))
    return ledger


@contextmanager
def warnings_heard(name: str) -> Iterator[list[str]]:
    """The messages of logger `name`'s warnings, heard on that logger itself at its level:
    a CLI test may have left the package's logger quiet and not propagating."""
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield said
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def key_index_answers(batches: list[list[int]]) -> list[list[int]]:
    """What `KeyIndex.add` must answer, by a dict: for each key, -1 if new, else where it
    was first seen."""
    seen: dict[int, int] = {}
    out = []
    at = 0
    for batch in batches:
        answers = []
        for key in batch:
            answers.append(seen.get(key, -1))
            seen.setdefault(key, at)
            at += 1
        out.append(answers)
    return out
