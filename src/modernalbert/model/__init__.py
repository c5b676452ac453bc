"""The ModernAlbert model: configuration, presets, the encoder with MoL and its heads, weight conversion,
length-bucketed inference batching."""

from .batching import encode_sequences, iter_bucketed_batches, length_bucketed_batches, pad_batch, restore_order
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
    "encode_sequences",
    "iter_bucketed_batches",
    "length_bucketed_batches",
    "load_modernbert_weights",
    "pad_batch",
    "restore_order",
]
