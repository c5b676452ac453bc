"""Inference speed of every variant's encoder (and its merged forms), in interleaved rounds on one fixed batch."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch

from .recipe import AblationRecipe


def measure_speed(model_dirs: dict[str, str], recipe: AblationRecipe, mergeable: Sequence[str]) -> dict[str, Any]:
    """Inference tokens/s of each variant's encoder (and, for mergeable ones, its folded and low-rank merges)
    on one fixed batch of RT test sentences, in interleaved rounds (machine noise hits every model alike).

    Returns:
        ``{"tokens", "batch", "threads", "models": {name: {"tokens_per_s", "ratio": [per-round time ratios
        against the baseline], ...}}}``.
    """
    from ...evaluation.glue import load_split, subsample
    from ...export.merge import merge_experts
    from ...model.loading import load_pretrained, load_tokenizer
    from ...utils.timing import paired_ratios, time_interleaved

    sp = recipe.speed
    if sp.threads:
        torch.set_num_threads(sp.threads)
    tokenizer = load_tokenizer(next(iter(model_dirs.values())))
    examples = subsample(load_split(recipe.finetune.task, recipe.finetune.test_split or "validation",
                                   recipe.finetune.data), sp.examples)
    batch = tokenizer([e["texts"][0] for e in examples], padding=True, truncation=True, max_length=sp.max_length,
                      return_tensors="pt")
    if sp.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("speed.device=cuda but no GPU is visible: use speed.device=cpu.")
    device = torch.device(sp.device)
    inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
    real = int(batch["attention_mask"].sum())
    encoders: dict[str, Any] = {}
    for name, folder in model_dirs.items():
        model = load_pretrained(folder).eval()
        encoders[name] = model.base_model.to(device)
        if name in mergeable:
            for form in ("lowrank", "fold"):
                merged = merge_experts(model, weights="router", space="deltas", form=form).eval()
                encoders[f"{name}+router-deltas-{form}"] = merged.base_model.to(device)

    with torch.inference_mode():  # one warm-up call each, then interleaved rounds: load drifts hit all alike
        times, _ = time_interleaved({name: (lambda enc=enc: enc(**inputs)) for name, enc in encoders.items()}, 1,
                                    sp.repeats, device)
    base = times[sp.baseline]
    models = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        models[name] = {"tokens_per_s": real / med, "median_s": med,
                        "ratio": paired_ratios(base, ts, speedup=False)["paired"]}  # > 1: slower than the baseline
    return {"tokens": real, "batch": list(batch["input_ids"].shape), "threads": torch.get_num_threads(),
            "device": str(device), "repeats": sp.repeats, "baseline": sp.baseline, "models": models}


__all__ = ["measure_speed"]
