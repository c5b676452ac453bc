"""The interleaved timing harness: every function once per round, rotating order, paired statistics."""

import pytest

from modernalbert.utils.timing import median_ci, paired_ratios, time_interleaved


def test_rounds_rotate_and_count():
    calls: list[str] = []
    ticks = iter(range(1000))
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    times, first = time_interleaved(fns, warmup=2, rounds=3, clock=lambda: float(next(ticks)))
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, per function
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # the order rotates every round
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3} and set(first) == {"a", "b", "c"}


def test_paired_ratios():
    st = paired_ratios([1.0, 2.0, 4.0], [2.0, 4.0, 8.0], speedup=False)
    assert st["ratio"] == 2.0 and st["range"] == (2.0, 2.0) and st["paired"] == [2.0, 2.0, 2.0]
    assert paired_ratios([1.0, 2.0], [2.0, 4.0], speedup=True)["ratio"] == 0.5
    lo, hi = median_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 <= lo <= 3.0 <= hi <= 5.0
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0], speedup=False)
