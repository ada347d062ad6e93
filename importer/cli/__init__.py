"""TODO."""

from importer.cli._main import main

__all__ = ["main"]
