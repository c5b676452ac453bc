"""GLUE's official metrics, computed by scikit-learn and scipy (the reference implementations the GLUE baselines
and Hugging Face's ``evaluate`` use), plus the main score and the majority-class baseline.

Degenerate inputs give the libraries' values: the Matthews correlation of a constant prediction is 0
(``sklearn.metrics.matthews_corrcoef``), F1 with no positive anywhere is 0 (``zero_division=0``), and Pearson /
Spearman correlations of a constant prediction (or constant labels) are NaN (``scipy.stats.pearsonr`` /
``spearmanr``, whose "constant input" warnings are silenced here: the NaN is the documented answer). Fewer than two
examples give NaN correlations too (scipy refuses them). NaN is written as ``null`` in JSON and ranked last by a grid.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from .tasks import GlueTask, get_task


def _arrays(predictions: Sequence[Any], labels: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be 1-D of the same length.")
    if len(p) == 0:
        raise ValueError("No predictions to score: the evaluation split is empty.")
    return p, y


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of exact matches (``sklearn.metrics.accuracy_score``)."""
    from sklearn.metrics import accuracy_score

    p, y = _arrays(predictions, labels)
    return float(accuracy_score(y, p))


def f1(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the ``positive`` class (``sklearn.metrics.f1_score``; 0 when there is no positive at all)."""
    from sklearn.metrics import f1_score

    p, y = _arrays(predictions, labels)
    return float(f1_score(y, p, pos_label=positive, zero_division=0.0))


def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation, multi-class form (``sklearn.metrics.matthews_corrcoef``; 0 when undefined, e.g. a
    constant prediction)."""
    from sklearn.metrics import matthews_corrcoef as mcc

    p, y = _arrays(predictions, labels)
    with warnings.catch_warnings():
        # A constant side (0/0, or a single label in both): sklearn warns and returns 0, the defined value.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        return float(mcc(y, p))


def _correlation(fn: Any, predictions: Sequence[float], labels: Sequence[float]) -> float:
    from scipy.stats import ConstantInputWarning

    p, y = _arrays(predictions, labels)
    if len(p) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)  # NaN is the answer for a constant side
        return float(fn(p.astype(np.float64), y.astype(np.float64)).statistic)


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson correlation (``scipy.stats.pearsonr``); NaN when either side is constant (undefined)."""
    from scipy.stats import pearsonr

    return _correlation(pearsonr, predictions, labels)


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``; ties averaged); NaN when either side is constant."""
    from scipy.stats import spearmanr

    return _correlation(spearmanr, predictions, labels)


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": matthews_corrcoef, "pearson": pearson, "spearman": spearman}


def compute_metrics(task: str | GlueTask, predictions: Sequence[Any], labels: Sequence[Any]) -> dict[str, float]:
    """The task's official metrics of ``predictions`` (class ids, or scores for STS-B) against ``labels``."""
    spec = task if isinstance(task, GlueTask) else get_task(task)
    return {name: METRICS[name](predictions, labels) for name in spec.metrics}


def main_score(metrics: dict[str, dict[str, float]]) -> float:
    """Mean over splits of the mean of each split's metrics (NaN if any is NaN; see the module notes)."""
    per_split = [float(np.mean(list(m.values()))) for m in metrics.values()]
    return float(np.mean(per_split)) if per_split else float("nan")


def majority_baseline(task: GlueTask, labels: Sequence[int]) -> dict[str, Any]:
    """The most frequent label of ``labels`` and the accuracy of always predicting it (classification tasks)."""
    label, count = Counter(int(v) for v in labels).most_common(1)[0]
    return {"majority_label": task.labels[label] if task.labels else label, "majority_accuracy": count / len(labels)}


__all__ = ["METRICS", "accuracy", "compute_metrics", "f1", "main_score", "majority_baseline", "matthews_corrcoef",
           "pearson", "spearman"]
