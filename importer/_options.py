"""How a run behaves: one frozen object, the one home of every `run` option's default.

The CLI reads its defaults from `RunOptions()`; the library takes a `RunOptions`; the
layers below (engine, client, limiter, retries) take the values they need as required
arguments, so no default is written twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

#: What to do with a row whose edit touches a field the API cannot patch.
OnImmutableChange = Literal["fail", "recreate"]
IMMUTABLE_CHANGE_CHOICES: tuple[str, ...] = get_args(OnImmutableChange)
IdentityChanged = Literal["stop", "accept"]
IDENTITY_CHANGED_CHOICES: tuple[str, ...] = get_args(IdentityChanged)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """The flags of `consent-import run`, as a library takes them.

    Args:
        ledger: the SQLite ledger (holds PHI, created owner-only).
        base_url: the ClinikAPI base URL.
        concurrency: requests in flight at once.
        max_rps: a cap on requests started per second (None: the server's budget only).
        timeout_s: read timeout per request.
        max_attempts: tries per request for 429s, 5xx and network errors.
        max_wait_s: a rate-limit wait longer than this pauses the run (None: wait).
        grace_s: after Ctrl-C / SIGTERM, how long in-flight requests may settle.
        on_immutable_change: fail the row, or recreate its consent and retire the old one.
        revoke_missing: patch consents whose rows left the source to inactive.
        revoke_max: at most this many revocations in one run, "N" or "P%" of the
            done rows in scope (None: 10%); over it, none (see importer.engine._revocation).
        revoke_after: with revoke_missing, a row is revoked only once this many
            consecutive runs that read its scope missed it (1: at the first miss).
        skip_existing: look each new row up before posting it, and adopt a match.
        identity_changed: when the columns feeding patientId, scope, category or dateTime
            changed since the last run, "stop" before creating any row (exit 2: its rows
            are new keys, their old consents would stay), or "accept" and create them.
        settle_s: after an ambiguous answer to a POST (a timeout after sending, a dropped
            connection, a 5xx), wait this long before looking the consent up, so a server
            that stores it late or shows it in search late is not posted to twice; 0
            looks it up at once.
        preflight: check the server first, and before a run creates anything, look a
            sample of the rows it would create up (importer.engine._preflight,
            importer.engine._gate).
    """

    ledger: Path = Path("consent-import.db")
    base_url: str = "https://api.clinikapi.com"
    concurrency: int = 8
    max_rps: float | None = None
    timeout_s: float = 30.0
    max_attempts: int = 5
    max_wait_s: float | None = None
    grace_s: float = 30.0
    on_immutable_change: OnImmutableChange = "fail"
    revoke_missing: bool = False
    revoke_max: str | None = None
    revoke_after: int = 2
    skip_existing: bool = False
    identity_changed: IdentityChanged = "stop"
    settle_s: float = 30.0
    preflight: bool = True

    def __post_init__(self) -> None:
        if self.on_immutable_change not in IMMUTABLE_CHANGE_CHOICES:
            raise ValueError(
                f"on_immutable_change must be one of {', '.join(IMMUTABLE_CHANGE_CHOICES)}"
            )
        if self.identity_changed not in IDENTITY_CHANGED_CHOICES:
            raise ValueError(
                f"identity_changed must be one of {', '.join(IDENTITY_CHANGED_CHOICES)}"
            )
        if self.concurrency < 1 or self.max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be at least 1")
        if self.revoke_after < 1:
            raise ValueError("revoke_after must be at least 1")
        if self.settle_s < 0:
            raise ValueError("settle_s must be at least 0")


#: The defaults, for the CLI's help and for callers that change only a few.
DEFAULTS = RunOptions()
