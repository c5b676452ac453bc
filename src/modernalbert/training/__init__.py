"""Pretraining: recipes, the accelerate-based MLM + distillation loop, atomic checkpoints with exact resume; the
router losses of loops that compute their loss from embeddings (sentence-transformers)."""

from .recipe import Recipe
from .router_loss import RouterLoss, collect_router_losses
from .trainer import TrainResult, pretrain

__all__ = ["Recipe", "RouterLoss", "TrainResult", "collect_router_losses", "pretrain"]
