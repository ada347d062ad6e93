"""The garbage collector while a run sends (importer.engine._collector, issue 24)."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from importer.engine import _collector as collector


def test_sending_freezes_start_up_and_raises_the_young_threshold_then_puts_both_back() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with collector.sending():
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_sending_puts_both_back_when_the_run_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError, match="boom"), collector.sending():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("moments", "passes"),
    [
        ([0.0, 5.0, 9.9], 0),  # within the first interval: none
        ([10.0], 1),
        ([10.0, 15.0], 1),  # the next is due 10 s after the last pass, not after start
        ([10.0, 19.9, 20.0], 2),
        ([35.0, 36.0], 1),  # a long wait makes one pass, not one per missed interval
    ],
)
def test_a_full_pass_every_interval(moments: list[float], passes: int) -> None:
    clock = _Clock()
    pacing = collector.Pacing(10.0, clock=clock)
    full: list[int] = []

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    gc.callbacks.append(seen)
    try:
        for moment in moments:
            clock.now = 100.0 + moment
            pacing.tick()
    finally:
        gc.callbacks.remove(seen)
    assert pacing.passes == passes
    assert len(full) == passes


def test_cyclic_garbage_is_collected_by_the_pass_under_the_raised_threshold() -> None:
    # The threshold leaves young passes to garbage that piles up; the pass still finds it.
    class Node:
        def __init__(self) -> None:
            self.me = self

    clock = _Clock()
    with collector.sending():
        pacing = collector.Pacing(10.0, clock=clock)
        for _ in range(100):
            Node()
        assert any(type(o) is Node for o in gc.get_objects(generation=0))
        clock.now += 10.0
        pacing.tick()
        assert not any(type(o) is Node for o in gc.get_objects())
