"""`python -m importer.sandbox`: the `consent-import sandbox` command, the same flags.

Example: python -m importer.sandbox --port 8800 --rate-limit 500/3600
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Run `consent-import sandbox` with these arguments (exit codes included)."""
    from importer.cli._main import main as cli_main

    cli_main(["sandbox", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
