"""A local ClinikAPI-compatible server for the demo, the tests and the benchmarks.

It behaves like ClinikAPI wherever the importer depends on it, bad days included:
keys, validation, a fixed-window rate limit, latency, and faults that store a consent
but lose the answer. `/__sandbox/*` exposes what happened (stats, stored consents,
request log) and lets a test reset or reconfigure it.

    with running_sandbox(SandboxConfig(rate_limit=50, rate_window_s=1)) as sb:
        httpx.post(f"{sb.base_url}/v1/consents", json=..., headers={"x-api-key": ...})
        assert sb.stats()["duplicates"] == 0
"""

from importer.sandbox._app import create_app, sandbox_state
from importer.sandbox._config import SandboxConfig
from importer.sandbox._faults import Fault
from importer.sandbox._server import RunningSandbox, running_sandbox, serve

__all__ = [
    "Fault",
    "RunningSandbox",
    "SandboxConfig",
    "create_app",
    "running_sandbox",
    "sandbox_state",
    "serve",
]
