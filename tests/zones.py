"""Test mappings state their time zone (issue 20: naive date-times stop without one)."""

from __future__ import annotations


def with_zone(mapping: str | None, zone: str = "UTC") -> str:
    """`mapping` (TOML text) with `[source] timezone = zone` added unless it names one."""
    text = mapping or ""
    if "timezone" in text:
        return text
    line = f'timezone = "{zone}"'
    if "[source]" in text:
        return text.replace("[source]", f"[source]\n{line}", 1)
    return f"[source]\n{line}\n{text}"
