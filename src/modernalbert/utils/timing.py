"""Interleaved timing and the statistics of paired ratios: the one harness behind every speed figure (the
benchmarks under ``benchmarks/``, the ablation's speed table, the quickstart's speed stage); and
:class:`Stages`, the progress lines of a command that runs in named stages.

Machines are shared and noisy, so a result is a ratio against a baseline timed in the same process, round by round:
every function runs once per round, in an order that rotates from round to round (load drifts and cache states hit
all alike), and the per-round (paired) ratios are summarised by their median, a bootstrap 95 % confidence interval
of that median and their smallest and largest value (the noise).
"""

from __future__ import annotations

import contextlib
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); a no-op elsewhere."""
    if getattr(device, "type", device) == "cuda":
        import torch

        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int, rounds: int, device: Any = "cpu", *,
                     clock: Callable[[], float] = time.perf_counter) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per call of every function, in interleaved rounds with a rotating order.

    Args:
        fns: Name -> function to time (called without arguments).
        warmup: Untimed calls of each function first (compilation, allocator and cache warm-up).
        rounds: Timed rounds; every function runs once per round.
        device: Synchronised around every call (``torch.device`` or ``"cuda"``/``"cpu"``).
        clock: Seconds now: ``time.perf_counter`` (wall clock, default) or ``time.process_time`` (CPU seconds of
            all the process's threads: a cross-check on an oversubscribed machine).

    Returns:
        ``(times, first)``: each function's seconds per round, and the duration of its first warm-up call (where
        compilation shows).
    """
    first: dict[str, float] = {}
    for name, fn in fns.items():
        for i in range(warmup):
            sync(device)
            t0 = clock()
            fn()
            sync(device)
            if i == 0:
                first[name] = clock() - t0
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            t0 = clock()
            fns[name]()
            sync(device)
            times[name].append(clock() - t0)
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
        times: The other function's seconds per round.
        speedup: True for throughput ratios (base / time: above 1 is faster), False for time ratios (time / base).

    Returns:
        ``ratio`` (median), ``ci`` (bootstrap 95 % interval of the median), ``range`` (smallest, largest) and
        ``paired`` (every per-round ratio).
    """
    paired = [b / t if speedup else t / b for b, t in zip(base, times, strict=True)]
    return {"ratio": statistics.median(paired), "ci": median_ci(paired), "range": (min(paired), max(paired)),
            "paired": paired}


class Stages:
    """Progress of a command that runs in a known number of named stages: a line when each starts and one with its
    duration when it ends (``[export 2/5] ONNX export ...`` / ``[export 2/5] ONNX export: 31.2 s``), written to
    ``stream`` (standard error by default, so that a command's standard output stays its result).

    Args:
        label: The command, shown in brackets.
        total: How many stages will run.
        stream: Where the lines go.

    Attributes:
        seconds: Stage name -> seconds, for the command's report.
    """

    def __init__(self, label: str, total: int, stream: IO[str] | None = None):
        self.label, self.total, self.stream = label, total, stream
        self.done = 0
        self.seconds: dict[str, float] = {}

    def _say(self, text: str) -> None:
        print(f"[{self.label} {self.done + 1}/{self.total}] {text}", file=self.stream or sys.stderr, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage (its duration is recorded only when it ends without error)."""
        self._say(f"{name} ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        self._say(f"{name}: {self.seconds[name]:.1f} s")
        self.done += 1


__all__ = ["Stages", "median_ci", "paired_ratios", "sync", "time_interleaved"]
