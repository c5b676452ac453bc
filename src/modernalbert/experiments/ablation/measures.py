"""What the study measures on each model: loss curves and expert usage from the training log, held-out and
out-of-domain MLM losses on fixed masked batches, the adapters' effect on the hidden states, routing statistics."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .recipe import OODSpec


def read_metrics(path: Path) -> tuple[dict[str, list[list[float]]], list[list[float]] | None, int]:
    """Loss curves, mean expert usage over the second half of training, and tokens seen, from ``metrics.jsonl``.

    Returns:
        ``({"train": [[step, mlm], ...], "eval": [[step, eval_mlm], ...]}, usage (P x E) or None, tokens_seen)``.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        by_step.setdefault(int(rec["step"]), {}).update(rec)  # a resumed run logs steps again: the last wins
    train, evals, usages = [], [], []
    tokens = 0
    for step, rec in sorted(by_step.items()):
        if "mlm" in rec:
            train.append([step, rec["mlm"]])
            tokens = max(tokens, int(rec.get("tokens_seen", 0)))
            if rec.get("expert_usage"):
                usages.append((step, rec["expert_usage"]))
        if "eval_mlm" in rec:
            evals.append([step, rec["eval_mlm"]])
    usage = None
    if usages:
        last = usages[-1][0]
        late = [u for s, u in usages if s > last / 2] or [usages[-1][1]]
        usage = torch.tensor(late, dtype=torch.float64).mean(0).tolist()  # (P, E)
    return {"train": train, "eval": evals}, usage, tokens


def held_out_batches(recipe: Any, tokenizer: Any, *, blocks: int | None = None,
                     mask_seed: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Masked batches of a pretraining recipe's held-out blocks, of ``recipe.train.batch_size`` blocks each.

    By default the trainer's held-out evaluation batches, rebuilt exactly (same blocks, same masks:
    :class:`~modernalbert.training.trainer.MaskedBatches` of the run's seed at step -1), so merged models are scored
    on what the unmerged one was scored on.

    Args:
        recipe: A pretraining recipe.
        tokenizer: Its tokenizer.
        blocks: How many held-out blocks (0: all of them); None: the trainer's ``eval_batches * batch_size``.
        mask_seed: The seed of the masks; None: the recipe's (the run's) seed.
    """
    from ...training.data import MaskedBatches, prepare_blocks

    tr = recipe.train
    n = tr.eval_batches * tr.batch_size if blocks is None else (blocks or None)  # None: every held-out block
    _, held_blocks = prepare_blocks(recipe, tokenizer, rank=0, world_size=1, eval_blocks=n)
    seed = recipe.seed if mask_seed is None else mask_seed
    return MaskedBatches(tokenizer, seed).fixed(held_blocks, tr.batch_size)


def ood_batches(spec: OODSpec, tokenizer: Any, block_size: int) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Masked batches of ``spec.blocks`` evenly spaced packed blocks of each out-of-domain source (fixed masks)."""
    from ...data.mlm import pack_documents
    from ...data.text import load_documents
    from ...training.data import MaskedBatches

    out = {}
    masker = MaskedBatches(tokenizer, 0)
    for name in spec.sources:
        blocks = pack_documents(load_documents(name), tokenizer, block_size)  # (n, block)
        n = min(spec.blocks, len(blocks))
        idx = torch.linspace(0, len(blocks) - 1, n).round().long()  # spread over the whole text
        blocks = blocks[idx]
        out[name] = masker.fixed(blocks, spec.batch_size)
    return out


def mlm_loss(model: Any, batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """Mean over batches of the MLM cross-entropy at masked positions: the trainer's held-out evaluation
    (:func:`~modernalbert.distill.losses.held_out_losses` of a teacher-free ``Distiller``)."""
    from ...distill.config import DistillConfig
    from ...distill.losses import Distiller, held_out_losses

    scorer = Distiller(model, None, DistillConfig(hidden_weight=0.0)).train(model.training)
    device = next(model.parameters()).device
    return held_out_losses(scorer, batches, device=device)["mlm"] if batches else 0.0


ADAPTER_UP = ("lora_B1", "lora_B2", "adapter_up")


@torch.inference_mode()
def adapter_effect(model: Any, batches: Sequence[dict[str, torch.Tensor]]) -> float | None:
    """How much a model's adapters (MoL experts, RRT LoRAs, MoA adapters) change its output: ``||h - h0|| / ||h||``
    over the final hidden states of the real tokens of ``batches``, where ``h0`` comes from a copy with every
    adapter's up-projection (LoRA ``B``, MoA ``up``) zeroed, i.e. the adapters' state at initialisation.

    Returns:
        The relative change, or None for a model without adapters.
    """
    names = [n for n, _ in model.named_parameters() if n.split(".")[-1] in ADAPTER_UP]
    if not names:
        return None
    plain = copy.deepcopy(model).eval()
    params = dict(plain.named_parameters())
    for n in names:
        params[n].zero_()
    device = next(model.parameters()).device
    num = den = 0.0
    for b in batches:
        inputs = {"input_ids": b["input_ids"].to(device), "attention_mask": b["attention_mask"].to(device)}
        mask = inputs["attention_mask"].bool()
        h = model.base_model(**inputs).last_hidden_state[mask].double()
        h0 = plain.base_model(**inputs).last_hidden_state[mask].double()
        num += float((h - h0).square().sum())
        den += float(h.square().sum())
    return math.sqrt(num / max(den, 1e-30))


def routing_ema(model: Any) -> dict[str, list[float]] | None:
    """The routing moving average (routed probability mass per expert) of every MoL group, or None."""
    from ...model.modeling import MoLGeGLU

    groups = {g: blk.mlp for g, blk in enumerate(model.base_model.groups) if isinstance(blk.mlp, MoLGeGLU)}
    if not groups:
        return None
    return {str(g): [round(float(x), 6) for x in m.routing_ema] for g, m in groups.items()}


__all__ = ["ADAPTER_UP", "adapter_effect", "held_out_batches", "mlm_loss", "ood_batches", "read_metrics",
           "routing_ema"]
