"""consent-import: move legacy consent exports into ClinikAPI without duplicates or losses."""

__version__ = "0.1.0"
