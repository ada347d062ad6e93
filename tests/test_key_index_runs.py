"""The key index's runs (issue 24 point 2): merges stop at `_MERGED_MAX` keys or a quarter
of the index, so that `validate` never holds the index twice; the answers stay a dict's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from importer.intake._key_index import KeyIndex, _merge_runs
from tests.helpers import key_index_answers


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.integers(0, 300), min_size=1, max_size=12), min_size=1, max_size=40
    )
)
def test_capped_runs_answer_as_a_dict(batches: list[list[int]]) -> None:
    index = KeyIndex()
    index._MERGED_MAX = 8  # many runs: merges stop early
    got = []
    at = 0
    for batch in batches:
        here = np.arange(at, at + len(batch), dtype=np.int64)
        got.append(index.add(np.array(batch, dtype=np.uint64) << 40, here).tolist())
        at += len(batch)
        sizes = [len(keys) for keys, _ in index._runs]
        assert sum(sizes) == index._size == len({k for b in batches[: len(got)] for k in b})
        # a merged run holds at most the cap (a batch's own run may hold more)
        longest = max(len(b) for b in batches[: len(got)])
        assert all(size <= max(8, index._size // 4, longest) for size in sizes)
    assert got == key_index_answers(batches)


@pytest.mark.parametrize(("keys", "runs"), [(1_000_000, 5), (2_000_000, 8)])
def test_a_million_keys_make_a_handful_of_runs(keys: int, runs: int) -> None:
    index = KeyIndex()
    batch = 50_000
    for start in range(0, keys, batch):
        new = np.arange(start, start + batch, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        assert (index.add(new, np.arange(start, start + batch, dtype=np.int64)) < 0).all()
    assert len(index._runs) == runs
    assert max(len(k) for k, _ in index._runs) <= max(KeyIndex._MERGED_MAX, keys // 4)


def test_a_merge_lets_go_of_the_runs_it_was_given() -> None:
    pair = [
        (np.array([1, 5, 9], dtype=np.uint64), np.array([10, 50, 90], dtype=np.int64)),
        (np.array([2, 6], dtype=np.uint64), np.array([20, 60], dtype=np.int64)),
    ]
    keys, where = _merge_runs(pair)
    assert pair == []  # the caller's list no longer holds the old runs
    assert keys.tolist() == [1, 2, 5, 6, 9]
    assert where.tolist() == [10, 20, 50, 60, 90]
