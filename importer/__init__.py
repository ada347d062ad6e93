"""consent-import: move legacy consent exports into ClinikAPI without duplicates or losses.

The library's public API is `__all__`; every other name, in this package and in its
modules, may change without notice. Names load on first use, so `import importer` stays
cheap (the CLI imports only what a command needs).

    from pathlib import Path
    from importer import RunConfig, RunOptions, load_mapping, run_import

    options = RunOptions(ledger=Path("legacy.db"), base_url="https://api.clinikapi.com")
    result = run_import(RunConfig(["legacy.csv"], options, api_key="clk_live_..."),
                        load_mapping(Path("legacy.toml")))
    print(result.stats.created, result.exit_code)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from importer.version import __version__

if TYPE_CHECKING:
    from importer.errors import ConsentImportError
    from importer.export import export_csvs, status
    from importer.mapping import Mapping, load_mapping
    from importer.options import RunOptions
    from importer.plan import plan_import
    from importer.results import (
        ExportCounts,
        PlanSummary,
        RunStats,
        ValidationSummary,
        VerifyResult,
    )
    from importer.runner import RunConfig, RunResult, run_import
    from importer.sandbox import SandboxConfig, running_sandbox
    from importer.validate import validate_files
    from importer.verify import VerifyConfig
    from importer.verify import verify as verify_ledger

#: Each public name and the module that holds it (and its name there, if another:
#: `importer.verify` is a module, so its function is `verify_ledger` here).
_HOMES: dict[str, str | tuple[str, str]] = {
    "verify_ledger": ("importer.verify", "verify"),
    "VerifyConfig": "importer.verify",
    "VerifyResult": "importer.results",
    "validate_files": "importer.validate",
    "plan_import": "importer.plan",
    "run_import": "importer.runner",
    "export_csvs": "importer.export",
    "status": "importer.export",
    "load_mapping": "importer.mapping",
    "Mapping": "importer.mapping",
    "RunOptions": "importer.options",
    "RunConfig": "importer.runner",
    "RunResult": "importer.runner",
    "RunStats": "importer.results",
    "ValidationSummary": "importer.results",
    "PlanSummary": "importer.results",
    "ExportCounts": "importer.results",
    "ConsentImportError": "importer.errors",
    "running_sandbox": "importer.sandbox",
    "SandboxConfig": "importer.sandbox",
}

__all__ = [
    "ConsentImportError",
    "ExportCounts",
    "Mapping",
    "PlanSummary",
    "RunConfig",
    "RunOptions",
    "RunResult",
    "RunStats",
    "SandboxConfig",
    "ValidationSummary",
    "VerifyConfig",
    "VerifyResult",
    "__version__",
    "export_csvs",
    "load_mapping",
    "plan_import",
    "run_import",
    "running_sandbox",
    "status",
    "validate_files",
    "verify_ledger",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'importer' has no attribute {name!r}")
    module, attribute = home if isinstance(home, tuple) else (home, name)
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once loaded, a plain attribute
    return value
