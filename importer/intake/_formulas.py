"""Formula escapes: a cell that a spreadsheet would run as a formula, kept as text."""

from __future__ import annotations

import re
from typing import Final

import pandas as pd

#: What escape_formula protects: a formula or DDE trigger as the first character.
_NEEDS_ESCAPE: Final = re.compile(r"'*[=+\-@\t\r]")


_ESCAPED: Final = re.compile(r"'+[=+\-@\t\r]")


_ESCAPED_BYTES: Final = re.compile(rb"'[=+\-@\t\r]")


def escape_formula(text: str) -> str:
    """Prefix `'` to a cell Excel would run as a formula (`=`, `+`, `-`, `@`, tab, CR).

    A cell that already starts with quotes before a trigger gets one more, so
    `unescape_formula(escape_formula(x)) == x` for every text.
    """
    return "'" + text if _NEEDS_ESCAPE.match(text) else text


def unescape_formula(text: str) -> str:
    """Undo `escape_formula`: `'=SUM(A1)` -> `=SUM(A1)`, while `'hello` stays as it is."""
    return text[1:] if _ESCAPED.match(text) else text


def _unescape_column(column: pd.Series) -> pd.Series:
    values = column.to_numpy(dtype=object)
    # One C-level join and find tells whether any cell starts with a quote at all, which
    # is far cheaper than a per-cell test on columns that have none (nearly all).
    joined = "\x00".join(values)
    if not joined.startswith("'") and "\x00'" not in joined:
        return column
    hits = column.str.match(_ESCAPED.pattern)
    if not hits.any():
        return column
    column = column.copy()
    column[hits] = column[hits].str.slice(1)
    return column


def _unescape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    for position in range(frame.shape[1]):
        column = frame.iloc[:, position]
        fixed = _unescape_column(column)
        if fixed is not column:
            frame.isetitem(position, fixed.array)
    return frame
