"""The ModernAlbert model: configuration, presets, the encoder with MoL and its heads, weight conversion."""

from .configuration import PRESETS, ModernAlbertConfig
from .conversion import ConversionReport, load_modernbert_weights
from .modeling import (
    ModernAlbertForMaskedLM,
    ModernAlbertForMultipleChoice,
    ModernAlbertForQuestionAnswering,
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertModel,
    ModernAlbertModelOutput,
    ModernAlbertPreTrainedModel,
    ParameterCount,
    count_parameters,
)

__all__ = [
    "PRESETS",
    "ConversionReport",
    "ModernAlbertConfig",
    "ModernAlbertForMaskedLM",
    "ModernAlbertForMultipleChoice",
    "ModernAlbertForQuestionAnswering",
    "ModernAlbertForSequenceClassification",
    "ModernAlbertForTokenClassification",
    "ModernAlbertModel",
    "ModernAlbertModelOutput",
    "ModernAlbertPreTrainedModel",
    "ParameterCount",
    "count_parameters",
    "load_modernbert_weights",
]
