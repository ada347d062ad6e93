"""The keys a run has seen, across its files: a repeated key is a row error, not a second
consent.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class KeyIndex:
    """The source keys seen so far, as sorted 64-bit digests with where each was first
    seen: 16 bytes a row, checked a batch at a time with numpy.

    Sorted runs, each at least `_FACTOR` times the size of the next: a batch's new keys
    are a run of their own, merged into the one before while that one is not that much
    bigger. A run adds a slice at a time; merging the whole index on every slice was
    quadratic in the file's size, and merging into one run of recent keys still cost a
    sort of an eighth of the index a slice. Here a key is merged about log4(n) times,
    and a lookup searches a handful of runs.
    """

    _FACTOR = 4

    def __init__(self) -> None:
        self._runs: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]] = []

    def contains(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        return self._first(keys) >= 0

    def _first(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """For each key, where it was first seen, or -1."""
        first = np.full(len(keys), -1, dtype=np.int64)
        if not len(keys):
            return first
        for known, where in self._runs:
            pos = np.minimum(np.searchsorted(known, keys), len(known) - 1)
            seen = known[pos] == keys
            first[seen] = where[pos[seen]]
        return first

    def add(
        self, keys: npt.NDArray[np.uint64], here: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """Add a batch of key digests and where each row is; for each key, -1 if it is
        new, else where it was first seen."""
        unique, first_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
        # Looked up sorted and once each: numpy's search of ascending keys walks each
        # run once instead of jumping about it (3x faster on a 1M-key index).
        first = self._first(unique)[inverse]
        earliest = first_index[inverse]
        repeat = (earliest != np.arange(len(keys))) & (first < 0)
        first[repeat] = here[earliest[repeat]]
        new = first[first_index] < 0
        if new.any():
            runs = self._runs
            runs.append((unique[new], here[first_index[new]]))
            while len(runs) > 1 and len(runs[-2][0]) < self._FACTOR * len(runs[-1][0]):
                last = runs.pop()
                runs[-1] = _merged(*runs[-1], *last)
        return first


def _merged(
    keys: npt.NDArray[np.uint64],
    where: npt.NDArray[np.int64],
    more_keys: npt.NDArray[np.uint64],
    more_where: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """Two sorted runs of distinct keys as one (each put in place, not sorted again)."""
    at = np.searchsorted(keys, more_keys)
    return np.insert(keys, at, more_keys), np.insert(where, at, more_where)
