"""consent-import: move legacy consent exports into ClinikAPI without duplicates or losses.

The library's public API is `__all__`; the modules that hold it are private (`_name.py`,
as in httpx and anyio), and every other name may change without notice. Names load on
first use, so `import importer` stays cheap (the CLI imports only what a command needs).
Every exception a caller may catch is public too, as in httpx: `ConsentImportError` and
its tree (see `importer._errors` for the hierarchy), e.g. `except importer.AuthError`.

    from pathlib import Path
    import importer

    options = importer.RunOptions(ledger=Path("legacy.db"), base_url="https://api.clinikapi.com")
    config = importer.RunConfig(["legacy.csv"], options, api_key="clk_live_...")
    result = importer.run(config, importer.load_mapping(Path("legacy.toml")))
    print(result.stats.created, result.exit_code)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from importer._version import __version__

if TYPE_CHECKING:
    from importer._errors import (
        AbortError,
        ApiError,
        ApiKeyError,
        AuthError,
        BudgetWaitTooLong,
        ClientRequestError,
        ConfigError,
        ConsentImportError,
        InputError,
        LimiterClosed,
        NoResponseError,
        RateLimitedError,
        ResourceError,
        ServerError,
        ServerUnreachable,
        UsageError,
    )
    from importer._options import RunOptions
    from importer._results import (
        ExportCounts,
        PlanSummary,
        RunStats,
        ValidationSummary,
        VerifyResult,
    )
    from importer.commands._undo import UndoConfig, UndoResult, undo
    from importer.commands._validate import validate_files as validate
    from importer.commands._verify import VerifyConfig, verify
    from importer.engine._dry_run import dry_run_import as plan
    from importer.engine._runner import RunConfig, RunResult
    from importer.engine._runner import run_import as run
    from importer.intake._mapping import Mapping, load_mapping
    from importer.reports._export import export_csvs as export
    from importer.reports._status import status
    from importer.sandbox import SandboxConfig, running_sandbox

#: Each public name and the private module that holds it (and its name there, if another).
_HOMES: dict[str, str | tuple[str, str]] = {
    "validate": ("importer.commands._validate", "validate_files"),
    "plan": ("importer.engine._dry_run", "dry_run_import"),
    "run": ("importer.engine._runner", "run_import"),
    "export": ("importer.reports._export", "export_csvs"),
    "verify": "importer.commands._verify",
    "undo": "importer.commands._undo",
    "UndoConfig": "importer.commands._undo",
    "UndoResult": "importer.commands._undo",
    "status": "importer.reports._status",
    "load_mapping": "importer.intake._mapping",
    "Mapping": "importer.intake._mapping",
    "RunOptions": "importer._options",
    "RunConfig": "importer.engine._runner",
    "RunResult": "importer.engine._runner",
    "VerifyConfig": "importer.commands._verify",
    "RunStats": "importer._results",
    "ValidationSummary": "importer._results",
    "PlanSummary": "importer._results",
    "ExportCounts": "importer._results",
    "VerifyResult": "importer._results",
    "ConsentImportError": "importer._errors",
    "UsageError": "importer._errors",
    "ApiKeyError": "importer._errors",
    "ConfigError": "importer._errors",
    "InputError": "importer._errors",
    "ResourceError": "importer._errors",
    "AbortError": "importer._errors",
    "LimiterClosed": "importer._errors",
    "BudgetWaitTooLong": "importer._errors",
    "ServerUnreachable": "importer._errors",
    "ApiError": "importer._errors",
    "AuthError": "importer._errors",
    "RateLimitedError": "importer._errors",
    "ServerError": "importer._errors",
    "ClientRequestError": "importer._errors",
    "NoResponseError": "importer._errors",
    "running_sandbox": "importer.sandbox",
    "SandboxConfig": "importer.sandbox",
}

__all__ = [
    "AbortError",
    "ApiError",
    "ApiKeyError",
    "AuthError",
    "BudgetWaitTooLong",
    "ClientRequestError",
    "ConfigError",
    "ConsentImportError",
    "ExportCounts",
    "InputError",
    "LimiterClosed",
    "Mapping",
    "NoResponseError",
    "PlanSummary",
    "RateLimitedError",
    "ResourceError",
    "RunConfig",
    "RunOptions",
    "RunResult",
    "RunStats",
    "SandboxConfig",
    "ServerError",
    "ServerUnreachable",
    "UndoConfig",
    "UndoResult",
    "UsageError",
    "ValidationSummary",
    "VerifyConfig",
    "VerifyResult",
    "__version__",
    "export",
    "load_mapping",
    "plan",
    "run",
    "running_sandbox",
    "status",
    "undo",
    "validate",
    "verify",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'importer' has no attribute {name!r}")
    module, attribute = home if isinstance(home, tuple) else (home, name)
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once loaded, a plain attribute
    return value
