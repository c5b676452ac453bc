"""The study's statistics: our tie rule for per-seed results, the reported metrics and their formatting.

Spread and ties (our rule): a result is the mean ± sample standard deviation over seeds. Two results whose means
differ by no more than the larger of their two standard deviations are a **tie**; only a larger difference is called
better or worse. With one seed there is no spread and no verdict (``n/a``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...evaluation.common import mean_std
from .recipe import AblationRecipe


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: mean difference, the spread it is judged against, and the verdict for ``a``
    (``better``, ``worse``, ``tie``, or ``n/a`` when either side has fewer than two values)."""

    delta: float
    spread: float
    verdict: str


def compare(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> Comparison:
    """Compare two sets of per-seed results with our tie rule.

    A difference of means no larger than the larger of the two sample standard deviations is a tie; with fewer
    than two values on a side there is no spread to judge against and no verdict (``n/a``).

    Args:
        a: Per-seed values of the first result.
        b: Per-seed values of the second.
        higher_is_better: Direction of the metric (accuracy: True; loss: False).

    Returns:
        A :class:`Comparison` (``delta`` = mean(a) - mean(b)).
    """
    ma, sa = mean_std(a)
    mb, sb = mean_std(b)
    delta, spread = ma - mb, max(sa, sb)
    if len(a) < 2 or len(b) < 2:
        return Comparison(delta, spread, "n/a")
    if abs(delta) <= spread:
        return Comparison(delta, spread, "tie")
    good = delta > 0 if higher_is_better else delta < 0
    return Comparison(delta, spread, "better" if good else "worse")


def format_mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± std`` of ``values`` times ``scale`` (``n = 1``: the value alone; empty: ``—``)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return "—"
    m, s = mean_std(vals)
    if len(vals) == 1:
        return f"{scale * m:.{digits}f}"
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


@dataclass(frozen=True)
class Metric:
    """A reported number: where it sits in a run record, how it is shown and which way is better."""

    key: str
    label: str
    higher_is_better: bool
    scale: float = 1.0
    digits: int = 3

    def get(self, record: dict[str, Any]) -> float | None:
        node: Any = record
        for part in self.key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return None if node is None else float(node)


def study_metrics(recipe: AblationRecipe) -> list[Metric]:
    """The metrics of a study, in table order."""
    out = [Metric("held_out_mlm", "held-out MLM ↓", False)]
    out += [Metric(f"ood.{s}", f"{s} MLM ↓", False) for s in recipe.ood.sources]
    out.append(Metric("rt.validation", "RT val acc % ↑", True, 100.0, 1))
    if recipe.finetune.test_split:
        out.append(Metric(f"rt.{recipe.finetune.test_split}", f"RT {recipe.finetune.test_split} acc % ↑", True,
                          100.0, 1))
    return out


def run_key(variant: str, init: str, seed: int) -> str:
    """The JSON key (and folder name) of one run."""
    return f"{variant}--{init}--seed{seed}"


def run_groups(results: dict[str, Any], recipe: AblationRecipe) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The recorded runs of each (variant, init), in seed order."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for v in recipe.variants:
        for init in recipe.inits:
            recs = [results["runs"][k] for s in recipe.seeds
                    if (k := run_key(v.name, init, s)) in results.get("runs", {})]
            if recs:
                out[(v.name, init)] = recs
    return out


def metric_values(records: Sequence[dict[str, Any]], metric: Metric) -> list[float]:
    """A metric's per-seed values (runs that lack it left out)."""
    return [x for r in records if (x := metric.get(r)) is not None]


__all__ = ["Comparison", "Metric", "compare", "format_mean_std", "metric_values", "run_groups", "run_key",
           "study_metrics"]
