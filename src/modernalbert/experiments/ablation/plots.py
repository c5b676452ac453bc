"""The study's plots: loss curves per variant and init, and expert usage of the routed variants (matplotlib's
object-oriented API with an Agg canvas: no pyplot, no display)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...utils.io import atomic_path
from .recipe import AblationRecipe
from .statistics import run_groups


def figure(width: float, height: float) -> Any:
    """A matplotlib Figure of ``width`` x ``height`` inches on an Agg canvas (no pyplot state, no display)."""
    # The object-oriented API with an Agg canvas: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _mean_curve(curves: Sequence[list[list[float]]]) -> tuple[list[float], list[float]]:
    by_step: dict[float, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


def plot_loss_curves(results: dict[str, Any], recipe: AblationRecipe, path: Path) -> None:
    """Training (lines) and held-out (markers) MLM loss per variant, mean over seeds, one panel per init."""
    groups = run_groups(results, recipe)
    fig = figure(5.5 * len(recipe.inits), 4.2)
    axes = fig.subplots(1, len(recipe.inits), squeeze=False)[0]
    colors = [f"C{i}" for i in range(10)]
    for ax, init in zip(axes, recipe.inits):
        for i, v in enumerate(recipe.variants):
            recs = groups.get((v.name, init))
            if not recs:
                continue
            c = colors[i % len(colors)]
            steps, values = _mean_curve([r["curves"]["train"] for r in recs])
            ax.plot(steps, values, color=c, lw=1.0, alpha=0.8, label=f"{v.label} (n={len(recs)})")
            steps, values = _mean_curve([r["curves"]["eval"] for r in recs])
            ax.plot(steps, values, color=c, lw=0, marker="o", ms=4)
        ax.set_title(f"init: {init}")
        ax.set_xlabel("step")
        ax.set_ylabel("MLM loss")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_expert_usage(results: dict[str, Any], recipe: AblationRecipe, path: Path) -> bool:
    """Heatmaps of expert usage (routed layers x experts) for every routed variant and init; False if none."""
    groups = run_groups(results, recipe)
    budget = {r["name"]: r for r in results.get("budget", [])}
    panels = []
    for v in recipe.variants:
        b = budget.get(v.name)
        routed = [] if b is None else [i for i in range(len(b["ffn_variants"]) * b["group_depth"])
                                       if b["ffn_variants"][i // b["group_depth"]] in ("mol", "moa")]
        for init in recipe.inits:
            recs = [r for r in groups.get((v.name, init), []) if r.get("expert_usage")]
            if recs:
                usage = torch.tensor([r["expert_usage"] for r in recs], dtype=torch.float64).mean(0)  # (P, E)
                labels = [f"layer {i}" for i in routed] if len(routed) == usage.shape[0] else \
                    [str(i) for i in range(usage.shape[0])]
                panels.append((f"{v.label}\ninit {init} (n={len(recs)})", usage, labels))
    if not panels:
        if path.exists():
            path.unlink()
        return False
    cols = len(recipe.inits)
    rows = math.ceil(len(panels) / cols)
    fig = figure(3.6 * cols, 2.4 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, usage, labels) in zip(axes.flat, panels):
        P, E = usage.shape
        peak = max(float(usage.max()), 1 / E)
        img = ax.imshow(usage.numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=peak)
        ax.set_xticks(range(E))
        ax.set_yticks(range(P), labels)
        ax.set_xlabel(f"expert (uniform = {1 / E:.2f})")
        ax.set_title(title, fontsize=8)
        for i in range(P):
            for e in range(E):
                u = float(usage[i, e])
                ax.text(e, i, f"{u:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if u > 0.6 * peak else "white")
        fig.colorbar(img, ax=ax, fraction=0.05)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


__all__ = ["figure", "plot_expert_usage", "plot_loss_curves"]
