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
    bigger, and the two hold at most `_MERGED_MAX` keys or a quarter of the index. A run
    adds a slice at a time; merging the whole index on every slice was quadratic in the
    file's size, and merging into one run of recent keys still cost a sort of an eighth
    of the index a slice. Here a key is merged about log4(n) times, and a lookup
    searches a handful of runs (5 at 1M keys, 16 at 10M).

    A bitmap of the keys' top `_BITS` bits (2 MB) is looked at first: a key whose bit is
    clear was never added, so only the few whose bit is set (a repeat, or another key
    sharing the bit: 6% of keys after a million) are searched for in the runs.
    """

    _FACTOR = 4
    _BITS = 24
    #: Runs are merged into one of at most this many keys, or a quarter of the index if
    #: more: the biggest merges held the index about twice at once (at 1M rows, 5 runs
    #: of at most 200,000 keys: `validate`'s peak RSS 10 MB lower, its merges faster).
    _MERGED_MAX = 1 << 18

    def __init__(self) -> None:
        self._runs: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]] = []
        self._size = 0  # keys in the runs
        self._seen = np.zeros(1 << (self._BITS - 3), dtype=np.uint8)

    def contains(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        return self._first(keys) >= 0

    def _slots(
        self, keys: npt.NDArray[np.uint64]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint8]]:
        """Each key's byte of the bitmap and its bit there."""
        top = (keys >> np.uint64(64 - self._BITS)).astype(np.intp)
        return top >> 3, np.left_shift(1, top & 7).astype(np.uint8)

    def _first(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """For each key, where it was first seen, or -1."""
        first = np.full(len(keys), -1, dtype=np.int64)
        if not len(keys) or not self._runs:
            return first
        byte, bit = self._slots(keys)
        maybe = np.flatnonzero(self._seen[byte] & bit)
        if not maybe.size:
            return first
        first[maybe] = self._search(keys[maybe])
        return first

    def _search(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """For each key, where it was first seen, or -1, from the runs."""
        first = np.full(len(keys), -1, dtype=np.int64)
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
            added = unique[new]
            byte, bit = self._slots(added)
            np.bitwise_or.at(self._seen, byte, bit)
            runs.append((added, here[first_index[new]]))
            self._size += len(added)
            most = max(self._MERGED_MAX, self._size // 4)
            while (
                len(runs) > 1
                and len(runs[-2][0]) < self._FACTOR * len(runs[-1][0])
                and len(runs[-2][0]) + len(runs[-1][0]) <= most
            ):
                runs.append(_merge_runs([runs.pop(-2), runs.pop()]))
        return first


_Run = tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]


def _merged(
    keys: npt.NDArray[np.uint64],
    where: npt.NDArray[np.int64],
    more_keys: npt.NDArray[np.uint64],
    more_where: npt.NDArray[np.int64],
) -> _Run:
    """Two sorted runs of distinct keys as one (each put in place, not sorted again):
    `np.insert`'s result, without its sort of the places."""
    return _merge_runs([(keys, where), (more_keys, more_where)])


def _merge_runs(pair: list[_Run]) -> _Run:
    """`_merged` of the two runs in `pair`, which it empties: the keys are merged and
    the old ones let go before the places are, so that (when nothing else holds the
    runs) the index is held about 1.5 times during a merge, not twice (the last merges
    of a 1M-row file put 16 MB on `validate`'s peak)."""
    (keys, where), (more_keys, more_where) = pair
    pair.clear()
    size = len(keys) + len(more_keys)
    at = np.searchsorted(keys, more_keys) + np.arange(len(more_keys))
    old = np.ones(size, dtype=bool)
    old[at] = False
    merged_keys = np.empty(size, dtype=keys.dtype)
    merged_keys[at], merged_keys[old] = more_keys, keys
    del keys, more_keys
    merged_where = np.empty(size, dtype=where.dtype)
    merged_where[at], merged_where[old] = more_where, where
    return merged_keys, merged_where
