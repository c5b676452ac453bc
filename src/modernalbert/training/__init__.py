"""Pretraining: recipes, the accelerate-based MLM + distillation loop, atomic checkpoints with exact resume."""

from .recipe import Recipe
from .trainer import TrainResult, pretrain

__all__ = ["Recipe", "TrainResult", "pretrain"]
