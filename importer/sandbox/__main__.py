"""`python -m importer.sandbox`: serve a sandbox without the full CLI (benchmarks, debugging).

Example: python -m importer.sandbox --port 8800 --rate-limit 500 --rate-window 3600
"""

from __future__ import annotations

import argparse

from importer.sandbox.config import SandboxConfig
from importer.sandbox.server import serve


def main(argv: list[str] | None = None) -> None:
    """Parse the options and serve until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m importer.sandbox",
        description="Serve a local ClinikAPI-compatible sandbox.",
        epilog="Example: python -m importer.sandbox --port 0 --fault-rate 0.1 --seed 7",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8800, help="0 picks a free port")
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per window")
    parser.add_argument("--rate-window", type=float, default=60.0, help="window in seconds")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0, help="spread over 4 modes")
    parser.add_argument(
        "--late-rate", type=float, default=0.0, help="P(502/504 at once, stored --late-ms later)"
    )
    parser.add_argument("--late-ms", type=float, default=4000.0)
    parser.add_argument(
        "--search-lag-rate", type=float, default=1.0, help="share of new consents that lag"
    )
    parser.add_argument(
        "--search-lag-ms", type=float, default=0.0, help="search sees a new consent this late"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(argv)
    try:
        config = SandboxConfig.with_fault_rate(
            args.fault_rate,
            rate_limit=args.rate_limit,
            rate_window_s=args.rate_window,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            fault_late=args.late_rate,
            late_ms=args.late_ms,
            fault_search_lag=args.search_lag_rate,
            search_lag_ms=args.search_lag_ms,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    serve(config, args.host, args.port, access_log=args.access_log, log_level=args.log_level)


if __name__ == "__main__":
    main()
