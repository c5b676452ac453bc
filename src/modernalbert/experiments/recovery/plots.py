"""The recovery report's plots: the reference's training curve, the gap fractions per variant and metric, and the
hidden distance to the reference per layer (matplotlib's object-oriented API on an Agg canvas)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...utils.io import atomic_path
from ..ablation import Metric, figure


def _save(fig: Any, path: Path) -> bool:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


def plot_reference_curve(reference: dict[str, Any], path: Path) -> bool:
    """Training (lines) and held-out (markers) MLM and hidden losses of the reference; False without a curve."""
    curve = reference.get("curve") or {}
    if not curve:
        return False
    fig = figure(9.0, 3.6)
    axes = fig.subplots(1, 2)
    for ax, name, title in ((axes[0], "mlm", "MLM loss"), (axes[1], "hidden", "hidden loss (1 − cos to MiniLM)")):
        if name in curve:
            steps, values = zip(*curve[name])
            ax.plot(steps, values, lw=1.0, color="C0", label="training")
        if f"eval_{name}" in curve:
            steps, values = zip(*curve[f"eval_{name}"])
            ax.plot(steps, values, lw=1.0, color="C3", marker="o", ms=3, label="held-out")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def plot_gap_fractions(summary: dict[str, Any], metrics: Sequence[Metric], path: Path) -> bool:
    """Gap fraction (mean ± std over seeds) per variant, one group of bars per metric; False when none."""
    entries = {**summary.get("variants", {}), **summary.get("merged", {})}
    keys = [m for m in metrics if any(e["gap_fraction"].get(m.key, {}).get("mean") is not None
                                      for e in entries.values())]
    if not keys:
        return False
    fig = figure(max(6.0, 1.6 * len(keys) + 2.0), 4.2)
    ax = fig.subplots()
    width = 0.8 / max(1, len(entries))
    for i, e in enumerate(entries.values()):
        xs, ys, errs = [], [], []
        for j, m in enumerate(keys):
            fr = e["gap_fraction"].get(m.key)
            if fr and fr.get("mean") is not None:
                xs.append(j + (i - (len(entries) - 1) / 2) * width)
                ys.append(fr["mean"])
                errs.append(fr["std"] or 0.0)
        ax.bar(xs, ys, width=width, yerr=errs, capsize=2, label=e["label"], color=f"C{i % 10}")
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(1, color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(keys)), [m.label.rstrip(" ↓↑") for m in keys], fontsize=8)
    ax.set_ylabel("fraction of the ALBERT-style → reference gap closed")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=6)
    return _save(fig, path)


def plot_layer_distance(summary: dict[str, Any], path: Path) -> bool:
    """Hidden distance to the reference per effective layer, one line per variant; False when none."""
    rows = [(e["label"], e["distance_layers"]) for e in summary.get("variants", {}).values()
            if e.get("distance_layers")]
    if not rows:
        return False
    fig = figure(6.0, 3.8)
    ax = fig.subplots()
    for i, (label, layers) in enumerate(rows):
        ax.plot(range(1, len(layers) + 1), layers, marker="o", ms=3, color=f"C{i % 10}", label=label)
    ax.set_xlabel("effective layer")
    ax.set_ylabel("1 − cos to the reference (held-out)")
    if min(min(layers) for _, layers in rows) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


__all__ = ["plot_gap_fractions", "plot_layer_distance", "plot_reference_curve"]
