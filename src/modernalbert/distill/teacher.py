"""The teacher: opening a pretrained encoder checkpoint, and refusing models that are not encoders.

One rule for every caller (``init_from_teacher`` and the pretraining recipe's ``teacher.name``): the name is resolved
by :func:`modernalbert.utils.hub.resolve` (a local folder, a packaged model such as ``all-MiniLM-L6-v2``, or a Hub
id), the config is checked *before* any weight is read, and the checkpoint is opened with its MLM head when it has
one (``AutoModelForMaskedLM``: the head initialises the student's and feeds the logit loss), else as ``AutoModel``.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn


def not_encoder_reason(tcfg: Any) -> str | None:
    """Why a model with config ``tcfg`` cannot serve as an encoder teacher, or None when it can."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(tcfg, "model_type", None)
    if getattr(tcfg, "is_encoder_decoder", False):
        return "is an encoder-decoder model"
    if getattr(tcfg, "is_decoder", False):
        return "is configured as a decoder (is_decoder=True)"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "is a causal (decoder-only) language model"
    return None


def _refuse(name: str, tcfg: Any, reason: str) -> None:
    raise ValueError(
        f"Distillation needs an encoder teacher (bidirectional, like BERT or ModernBERT); {name} "
        f"(model_type={getattr(tcfg, 'model_type', None)!r}) {reason}."
    )


def check_encoder(teacher: nn.Module) -> None:
    """Refuse a teacher model that is not a Hugging Face encoder.

    Raises:
        TypeError: ``teacher`` has no ``config``.
        ValueError: A decoder, encoder-decoder or generative model.
    """
    from transformers.generation import GenerationMixin

    tcfg = getattr(teacher, "config", None)
    if tcfg is None:
        raise TypeError(
            f"The teacher must be a Hugging Face model (with a .config) or a checkpoint path, got "
            f"{type(teacher).__name__}."
        )
    reason = not_encoder_reason(tcfg)
    if reason is None and isinstance(teacher, GenerationMixin):
        reason = "is a generative (causal LM) model"
    if reason:
        _refuse(type(teacher).__name__, tcfg, reason)


def load_teacher(source: str | os.PathLike, *, attn_implementation: str | None = None) -> nn.Module:
    """Open a teacher checkpoint in eval mode (see the module docstring).

    Args:
        source: A local folder, a packaged model name or a Hub id.
        attn_implementation: Passed to ``from_pretrained`` when given (``"eager"`` for attention distillation).

    Raises:
        FileNotFoundError: A path with nothing there (the message names it).
        ValueError: Not an encoder (refused before any weight is read).
    """
    from transformers import AutoModel, AutoModelForMaskedLM

    from ..model.loading import load_config
    from ..utils.hub import resolve

    where = resolve(source, what="teacher checkpoint folder", packaged=True)
    tcfg = load_config(where)
    reason = not_encoder_reason(tcfg)
    if reason:  # refuse before reading any weights
        _refuse(str(source), tcfg, reason)
    archs = getattr(tcfg, "architectures", None) or []
    has_head = any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return (AutoModelForMaskedLM if has_head else AutoModel).from_pretrained(where, **kwargs).eval()


__all__ = ["check_encoder", "load_teacher", "not_encoder_reason"]
