"""Unique-parameter budgets: every variant's knob solved so that its count meets the reference's (our rules).

Counts are measured with :func:`~modernalbert.model.modeling.count_parameters` on meta-device models (shapes only)
and are linear in the knob, so the closest integer value is found exactly. When the knob is ``lora_rank``,
``lora_alpha`` follows it so that the LoRA scale alpha / r stays the reference's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...evaluation.common import markdown_table
from .recipe import AblationRecipe, VariantSpec


@dataclass
class BudgetRow:
    """A variant's parameter accounting after budget matching."""

    name: str
    label: str
    overrides: dict[str, Any]
    knob: str | None
    knob_value: int | None
    unique: int
    non_embedding: int
    effective: int
    embedding: int
    relative: float | None  # (basis count - reference) / reference; None for exempt variants
    exempt: bool
    group_depth: int
    ffn_variants: list[str]


def vocab_size(recipe: AblationRecipe) -> int:
    """The students' vocabulary: the teacher's (``build_models`` does the same), else the tokenizer's."""
    from ...model.loading import load_config, load_tokenizer

    name = recipe.teacher.get("name")
    if name:
        return int(load_config(name).vocab_size)
    return len(load_tokenizer(recipe.teacher["tokenizer"]))


def _counts(preset: str, overrides: dict[str, Any], vocab: int) -> tuple[Any, Any]:
    from ...model.configuration import ModernAlbertConfig
    from ...model.modeling import ModernAlbertForMaskedLM, count_parameters

    config = ModernAlbertConfig.from_preset(preset, **{**overrides, "vocab_size": vocab})
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = ModernAlbertForMaskedLM(config)
    return count_parameters(model), config


def _basis(count: Any, basis: str) -> int:
    return count.unique - count.embedding if basis == "non_embedding" else count.unique


def plan_budget(recipe: AblationRecipe, vocab: int | None = None) -> list[BudgetRow]:
    """Resolve every variant's knob and check the unique-parameter budget.

    Args:
        recipe: The study.
        vocab: Vocabulary size (default: the teacher's / tokenizer's, see :func:`vocab_size`).

    Returns:
        One :class:`BudgetRow` per variant, in recipe order.

    Raises:
        ValueError: A variant outside the budget that has no knob, or whose knob cannot reach it.
    """
    vocab = vocab_size(recipe) if vocab is None else vocab
    preset = recipe.model["preset"]
    b = recipe.budget
    ref_overrides = recipe.variant_overrides(recipe.variant(b.reference))
    ref_count, ref_cfg = _counts(preset, ref_overrides, vocab)
    target = _basis(ref_count, b.basis)
    ref_scale = ref_cfg.lora_alpha / ref_cfg.lora_rank
    rows = []
    for v in recipe.variants:
        overrides = recipe.variant_overrides(v)
        knob_value = None
        if v.match is not None:
            knob_value, overrides = _solve_knob(v, preset, overrides, vocab, target, b.basis, ref_scale)
        count, cfg = _counts(preset, overrides, vocab)
        value = _basis(count, b.basis)
        relative = None if v.exempt else (value - target) / target
        if relative is not None and abs(relative) > b.tolerance + 1e-12:
            how = (f"even the closest {v.match}={knob_value} misses it" if v.match else
                   "and it names no knob to match (match: lora_rank or intermediate_size)")
            raise ValueError(f"Budget: variant {v.name!r} has {value:,} unique {b.basis.replace('_', '-')} parameters, "
                             f"{100 * relative:+.1f}% from the reference {b.reference!r} ({target:,}), outside ±"
                             f"{100 * b.tolerance:.0f}%, {how}. Change its overrides, its knob, or budget.tolerance.")
        rows.append(BudgetRow(v.name, v.label, overrides, v.match, knob_value, count.unique,
                              count.unique - count.embedding, count.effective, count.embedding, relative, v.exempt,
                              cfg.group_depth, list(cfg.ffn_variants)))
    return rows


def _solve_knob(v: VariantSpec, preset: str, overrides: dict[str, Any], vocab: int, target: int, basis: str,
                ref_scale: float) -> tuple[int, dict[str, Any]]:
    """The integer knob value whose count is closest to ``target`` (counts are linear in the knob)."""
    keep_alpha = v.match == "lora_rank" and "lora_alpha" not in v.overrides

    def with_knob(value: int) -> dict[str, Any]:
        out = {**overrides, v.match: value}
        if keep_alpha:  # keep the reference's LoRA scale alpha / r, so the adapters' step size is comparable
            out["lora_alpha"] = float(ref_scale * value)
        return out

    def size(value: int) -> int:
        return _basis(_counts(preset, with_knob(value), vocab)[0], basis)

    start = int(getattr(_counts(preset, overrides, vocab)[1], v.match))  # the preset's or the override's value
    c0, c1 = size(start), size(start + 1)
    slope = c1 - c0
    if slope <= 0:
        raise ValueError(f"Budget: variant {v.name!r} cannot be matched with {v.match}: changing it does not change "
                         f"the parameter count (is the variant's FFN of a kind that uses {v.match}?).")
    x = start + (target - c0) / slope
    candidates = sorted({max(1, math.floor(x)), max(1, math.ceil(x))})
    best = min(candidates, key=lambda value: (abs(size(value) - target), value))
    return best, with_knob(best)


def format_count(n: int) -> str:
    """``8,561,082`` as ``8.561M``."""
    return f"{n / 1e6:.3f}M"


def budget_table(rows: Sequence[BudgetRow], recipe: AblationRecipe) -> str:
    """The budget table (markdown): per variant, its knob, unique (total and without the token embedding),
    effective parameters, the distance to the reference and the tokens every run sees."""
    tokens = recipe.tokens_per_run
    header = ["variant", "G", "FFN per group", "knob", "unique", "unique w/o emb.", "vs reference", "effective",
              "tokens seen / run"]
    body = []
    for r in rows:
        knob = f"{r.knob}={r.knob_value}" if r.knob else "—"
        rel = "exempt" if r.exempt else ("reference" if r.name == recipe.budget.reference
                                         else f"{100 * r.relative:+.2f}%")
        body.append([r.label, r.group_depth, ",".join(r.ffn_variants), knob, f"{r.unique:,}",
                     f"{r.non_embedding:,}", rel, f"{r.effective:,}", f"{tokens:,}"])
    return markdown_table(header, body)


__all__ = ["BudgetRow", "budget_table", "format_count", "plan_budget", "vocab_size"]
