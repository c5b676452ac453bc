"""The optimiser's parameter groups and the pretraining learning-rate schedule.

The schedule is warmup-stable-decay, computed by ``transformers.get_wsd_schedule`` (linear warm-up, constant, linear
decay to ``min_lr_ratio`` over the last ``decay_steps`` steps). One decision is ours: optimisation step ``s``
(0-based) runs at the library's factor for ``s + 1`` over ``steps + 1`` scheduler steps. The library's step 0 has
factor ``min_lr_ratio`` (0 by default): a step that would only update AdamW's moment estimates and move no weight.
Shifted by one, the first step already runs at ``lr / warmup_steps``, warm-up reaches the peak at step
``warmup_steps - 1``, and the last step runs at ``floor + (1 - floor) / decay_steps`` (not at the floor itself):
the learning rates of the schedule this replaced, exactly, whenever ``min_lr_ratio`` is 0 and warm-up and decay do
not overlap (every shipped recipe). Otherwise the library's rules apply: warm-up rises from the floor rather than
from 0, and the decay window ends at the last step even when it reaches back into the warm-up.
"""

from __future__ import annotations

from typing import Any

import torch


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on norms, biases and embeddings (1-D tensors and the token embedding / projection)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embeddings." in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def wsd_schedule(optimizer: torch.optim.Optimizer, optim: Any, total_steps: int,
                 start_step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The warmup-stable-decay schedule of a pretraining run (see the module docstring for the one-step shift).

    Args:
        optimizer: The optimiser (its groups' ``lr`` is the peak).
        optim: The recipe's ``optim`` section (``warmup_steps``, ``decay_steps``, ``min_lr_ratio``).
        total_steps: Optimisation steps of the whole run.
        start_step: Steps already taken (a resumed run: the optimiser's state is loaded, so its groups hold
            ``initial_lr``).

    Returns:
        A ``LambdaLR`` whose current learning rate is the one of step ``start_step``; ``scheduler.step()`` after
        every optimisation step.
    """
    from transformers import get_wsd_schedule

    decay = min(optim.decay_steps, total_steps)
    for group in optimizer.param_groups:  # the scheduler starts "resumed" at step 1 of its own count
        group.setdefault("initial_lr", group["lr"])
    return get_wsd_schedule(optimizer, num_warmup_steps=optim.warmup_steps, num_decay_steps=decay,
                            num_training_steps=total_steps + 1, warmup_type="linear", decay_type="linear",
                            min_lr_ratio=optim.min_lr_ratio, last_epoch=start_step)


__all__ = ["param_groups", "wsd_schedule"]
