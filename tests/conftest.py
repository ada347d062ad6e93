"""Shared fixtures: anyio runs every async test on asyncio; one sandbox for the sandbox
tests, reset to its defaults before each test that asks for it; `instant_backoff` for
tests whose retries would only wait (shared helpers that are not fixtures: tests/helpers.py,
tests/cli_helpers.py, tests/engine_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from importer.api import _retry as retry
from importer.intake import _normalize as normalize
from importer.sandbox import RunningSandbox, SandboxConfig, running_sandbox
from tests.helpers import warnings_heard

#: The key the shared `client` sends (any well-formed key is accepted by the sandbox).
SANDBOX_KEY = "clk_test_sandbox"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def instant_backoff() -> Iterator[None]:
    """Retries without their backoff sleeps (tested in test_retry; elsewhere they would
    only slow the suite). Use: `pytestmark = pytest.mark.usefixtures("instant_backoff")`."""
    with retry.no_waits():
        yield


@pytest.fixture(scope="session")
def _shared_sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox() as sb:
        yield sb


@pytest.fixture
def server(_shared_sandbox: RunningSandbox) -> RunningSandbox:
    """The session's sandbox, back to the default config with nothing stored."""
    _shared_sandbox.configure(**SandboxConfig().to_json())
    _shared_sandbox.reset()
    return _shared_sandbox


@pytest.fixture
def client(server: RunningSandbox) -> Iterator[httpx.Client]:
    """An httpx client for `server`, sending a valid key."""
    with httpx.Client(base_url=server.base_url, headers={"x-api-key": SANDBOX_KEY}) as http:
        yield http


@pytest.fixture
def bodies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many request bodies were assembled from cells (one slot, counted in place)."""
    built = [0]
    assemble = normalize._v1_body

    def counted(*args: Any) -> Any:
        built[0] += 1
        return assemble(*args)

    monkeypatch.setattr(normalize, "_v1_body", counted)
    return built


@pytest.fixture
def ledger_warnings() -> Iterator[list[str]]:
    """The messages of the ledger's warnings (its migrations say they ran), heard on the
    ledger's own logger at its level: a CLI test may have left the package's logger quiet
    and not propagating."""
    with warnings_heard("importer.ledger") as said:
        yield said
