"""What every benchmark script shares: interleaved timing and the statistics of paired ratios.

The machines are shared and noisy, so a benchmark's result is a ratio against a baseline timed in the same process,
round by round: the median over rounds of the per-round (paired) ratio, with a bootstrap 95 % confidence interval of
that median and the smallest and largest per-round ratio (the noise).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

# What the timings read: wall-clock seconds (the default), or the CPU seconds of all the process's threads (a
# cross-check on an oversubscribed machine: time spent descheduled does not count). Scripts swap the entry.
CLOCK: list[Callable[[], float]] = [time.perf_counter]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int, rounds: int,
                     device: torch.device) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per call of every function, interleaved with a rotating order (load drifts hit all alike).

    Returns the timed rounds and the duration of each function's first warm-up call (compilation shows there).
    """
    first: dict[str, float] = {}
    for name, fn in fns.items():
        for i in range(warmup):
            sync(device)
            t0 = CLOCK[0]()
            fn()
            sync(device)
            if i == 0:
                first[name] = CLOCK[0]() - t0
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            t0 = CLOCK[0]()
            fns[name]()
            sync(device)
            times[name].append(CLOCK[0]() - t0)
    return times, first


def median_ci(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95 % confidence interval of the median (percentile method; seeded, so reruns print the same)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def paired_ratios(base: list[float], times: list[float], *, speedup: bool) -> dict[str, Any]:
    """Statistics of the per-round ratios of ``times`` against ``base`` (same rounds, so load drifts cancel).

    Args:
        base: The baseline's seconds per round.
        times: The model's seconds per round.
        speedup: True for throughput ratios (base / time: above 1 is faster), False for time ratios (time / base).

    Returns:
        ``ratio`` (median), ``ci`` (bootstrap 95 % interval of the median) and ``range`` (smallest, largest).
    """
    paired = [b / t if speedup else t / b for b, t in zip(base, times, strict=True)]
    return {"ratio": statistics.median(paired), "ci": median_ci(paired), "range": (min(paired), max(paired))}
