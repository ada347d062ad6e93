"""The package version (a module of its own, so that modules can read it without
importing the package and its public API)."""

__version__ = "0.1.0"
