"""Hidden-state fidelity to the reference: how far a student's hidden states are from the full-parameter
reference's, layer by layer, on held-out text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def clean_inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The original text of a masked MLM batch: ``(input_ids, attention_mask)`` with every masked (or replaced)
    position given back its label token."""
    ids = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])  # (B, L)
    return ids, batch["attention_mask"]


@torch.no_grad()
def hidden_distance(model: Any, reference: Any, batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Mean cosine distance ``1 - cos(h_student, h_reference)`` over the real tokens of ``batches`` (their original,
    unmasked text), for every effective layer: the distillation's hidden-state loss, measured on held-out text
    against the frozen reference.

    Args:
        model: A ModernAlbert model (any head) of effective depth L.
        reference: The full-parameter reference, also of depth L (layer i is compared with layer i).
        batches: Masked MLM batches (``input_ids``, ``attention_mask``, ``labels``), e.g. the held-out ones.

    Returns:
        ``{"layers": [d_1, ..., d_L], "final": d_L}``: d_i for the output of effective layer i (d_L after the final
        norm, the model's ``last_hidden_state``).

    Raises:
        ValueError: The two models differ in depth or width.
    """
    L, R = model.config.num_hidden_layers, reference.config.num_hidden_layers
    if L != R or model.config.hidden_size != reference.config.hidden_size:
        raise ValueError(f"hidden_distance compares layer by layer: the model has {L} layers of width "
                         f"{model.config.hidden_size}, the reference {R} of width {reference.config.hidden_size}.")
    device = next(model.parameters()).device
    was = (model.training, reference.training)
    model.eval()
    reference.eval()
    sums = torch.zeros(L, dtype=torch.float64)
    count = 0
    for batch in batches:
        ids, mask = (t.to(device) for t in clean_inputs(batch))
        real = mask.bool()  # (B, L)
        h_s = model.base_model(ids, attention_mask=mask, output_hidden_states=True).hidden_states  # L + 1 x (B, L, d)
        h_r = reference.base_model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for i in range(1, L + 1):
            cos = F.cosine_similarity(h_s[i][real].double(), h_r[i][real].double(), dim=-1)  # (N,)
            sums[i - 1] += float((1 - cos).sum())
        count += int(real.sum())
    model.train(was[0])
    reference.train(was[1])
    layers = (sums / max(count, 1)).tolist()
    return {"layers": layers, "final": layers[-1]}


__all__ = ["clean_inputs", "hidden_distance"]
