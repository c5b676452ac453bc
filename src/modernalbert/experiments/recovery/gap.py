"""The cost of sharing and how much of it a variant recovers: the gap between the ALBERT-style recursive model
(``lower``) and the full-parameter reference trained the same way (``upper``), the fraction of it each variant
closes, and whether the regime discriminates at all.

* **Gap fraction** of a value v: ``(v - lower) / (upper - lower)``: 0 at the ALBERT-style model, 1 at the
  reference, whatever the metric's direction (a ratio of differences); below 0 is worse than ALBERT-style, above 1
  better than the reference. Per seed it is taken against the same seed's ``lower`` and ``upper`` runs (every run of
  one seed sees the same data order and MLM masks), then summarised as mean ± sample std over seeds.
* **Discrimination** (our criterion): ``|mean(upper) - mean(lower)| / max(std(upper), std(lower))``, the gap in
  units of the larger seed spread. A regime whose discrimination on the primary metric is below the recipe's
  ``min_discrimination`` (3) cannot tell a variant that recovers the gap from one that does not. A gap no larger than
  the larger spread is a tie by the study's tie rule (:func:`~modernalbert.experiments.ablation.compare`): its
  fractions are reported as unresolved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...evaluation.common import mean_std


@dataclass(frozen=True)
class Gap:
    """The lower -> upper gap on one metric: means and sample stds over seeds, the gap ``upper - lower``, the larger
    spread, the discrimination ratio (``inf`` when both spreads are 0 and the gap is not), and whether the gap is
    resolved (larger than the larger spread)."""

    lower: float
    upper: float
    lower_std: float
    upper_std: float
    gap: float
    spread: float
    discrimination: float
    resolved: bool


def measure_gap(lower: Sequence[float], upper: Sequence[float]) -> Gap:
    """The gap between per-seed values of the lower (ALBERT-style) and upper (reference) models.

    Raises:
        ValueError: Fewer than two values on a side (no spread to judge the gap against).
    """
    if len(lower) < 2 or len(upper) < 2:
        raise ValueError(f"A gap needs at least two seeds per side (got {len(lower)} and {len(upper)}): "
                         "its spread is what it is judged against.")
    lo, lo_s = mean_std(lower)
    up, up_s = mean_std(upper)
    gap, spread = up - lo, max(lo_s, up_s)
    ratio = abs(gap) / spread if spread > 0 else (math.inf if gap != 0 else 0.0)
    return Gap(lo, up, lo_s, up_s, gap, spread, ratio, abs(gap) > spread)


def gap_fraction(value: float, lower: float, upper: float) -> float:
    """The fraction of the lower -> upper gap that ``value`` closes: 0 at ``lower``, 1 at ``upper``.

    Raises:
        ValueError: ``lower == upper`` (no gap to close).
    """
    if upper == lower:
        raise ValueError("gap_fraction: lower and upper are equal: there is no gap to close.")
    return (value - lower) / (upper - lower)


def seed_fractions(values: Mapping[int, float], lower: Mapping[int, float],
                   upper: Mapping[int, float]) -> list[float]:
    """Per-seed gap fractions, each against the same seed's lower and upper runs (seeds missing on any side, or
    whose own gap is 0, are left out), in seed order."""
    return [gap_fraction(values[s], lower[s], upper[s]) for s in sorted(values)
            if s in lower and s in upper and upper[s] != lower[s]]


__all__ = ["Gap", "gap_fraction", "measure_gap", "seed_fractions"]
