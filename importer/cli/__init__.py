"""The command line: parse options, call the library, turn its errors into exit codes.

Holds the click group and the import commands (`_main`), the shared options, value types
and exit codes (`_params`), and the commands beside the import (`_tools`: demo, sandbox,
preview, init). It sits on top: it may import everything below it, and nothing imports
it but `importer.__main__` and the `consent-import` console script.
"""

from importer.cli._main import main

__all__ = ["main"]
