"""What every benchmark script shares: the package's interleaved-timing harness and paired-ratio statistics
(:mod:`modernalbert.utils.timing`), and the clock the scripts time with.

The machines are shared and noisy, so a benchmark's result is a ratio against a baseline timed in the same process,
round by round: the median over rounds of the per-round (paired) ratio, with a bootstrap 95 % confidence interval of
that median and the smallest and largest per-round ratio (the noise).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from modernalbert.utils.timing import median_ci, paired_ratios, sync, time_interleaved

# What the timings read: wall-clock seconds (the default), or the CPU seconds of all the process's threads (a
# cross-check on an oversubscribed machine: time spent descheduled does not count). Scripts swap the entry.
CLOCK: list[Callable[[], float]] = [time.perf_counter]

__all__ = ["CLOCK", "median_ci", "paired_ratios", "sync", "time_interleaved"]
