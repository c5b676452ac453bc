"""The distillation objective's settings (typed, strict; import-light)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..utils.config import from_mapping, typed_config

HIDDEN_LOSSES = ("cosine", "mse")


@typed_config(prefix="distill")
@dataclass
class DistillConfig:
    """Weights and options of the distillation objective (defaults are ours, following the authors' earlier
    MiniALBERT recipe: MLM 1, hidden / attention 3, logits 5, temperature 1; see :mod:`modernalbert.distill.losses`).

    Attributes:
        mlm_weight: Weight of the MLM cross-entropy.
        hidden_weight: Weight of the hidden-state loss (0 disables it and the teacher's hidden states).
        attention_weight: Weight of the attention KL (0 disables; > 0 needs eager attention in both models).
        logit_weight: Weight of the logit KL (used only when the teacher has an MLM head).
        temperature: Softmax temperature of the logit KL.
        hidden_loss: ``"cosine"`` (1 - cosine similarity) or ``"mse"``.
        layer_map: Student effective layer (1-based) -> teacher layer (1-based); ``None`` maps every student layer
            to teacher layer ``round(i * T / L)`` (uniform, the last layers aligned).
    """

    mlm_weight: float = 1.0
    hidden_weight: float = 3.0
    attention_weight: float = 0.0
    logit_weight: float = 5.0
    temperature: float = 1.0
    hidden_loss: Literal["cosine", "mse"] = "cosine"
    layer_map: dict[int, int] | None = field(default=None)

    def validate_values(self) -> None:
        for f in ("mlm_weight", "hidden_weight", "attention_weight", "logit_weight"):
            if getattr(self, f) < 0:
                raise ValueError(f"distill.{f}={getattr(self, f)!r} is invalid: expected a number >= 0.")
        if self.temperature <= 0:
            raise ValueError(f"distill.temperature={self.temperature!r} is invalid: expected a number > 0.")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> DistillConfig:
        """Build from a recipe section; unknown keys are an error naming them (YAML keys of ``layer_map`` may be
        strings: they are read as integers)."""
        values = dict(values or {})
        if isinstance(values.get("layer_map"), dict):
            try:
                values["layer_map"] = {int(k): int(v) for k, v in values["layer_map"].items()}
            except (TypeError, ValueError):
                raise ValueError(f"distill.layer_map={values['layer_map']!r} is invalid: expected a mapping of "
                                 "student layer -> teacher layer (integers).") from None
        return from_mapping(cls, values, unknown="Unknown distill option(s) {keys}", prefix="distill")


__all__ = ["HIDDEN_LOSSES", "DistillConfig"]
