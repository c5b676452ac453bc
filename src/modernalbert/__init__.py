"""modernalbert: ModernALBERT, a recursive encoder with a Mixture of LoRAs, native to Hugging Face transformers.

Importing the package registers ``model_type="modernalbert"`` with ``AutoConfig`` and every ModernAlbert class
with the matching ``AutoModel*`` factory, so ``AutoModelForMaskedLM.from_pretrained(path)`` works on saved models.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .distill import InitReport, init_from_teacher
from .export import measure_routing, merge_experts
from .model import (
    PRESETS,
    ConversionReport,
    ModernAlbertConfig,
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
    load_modernbert_weights,
)

__version__ = "0.1.0"

AutoConfig.register(ModernAlbertConfig.model_type, ModernAlbertConfig, exist_ok=True)
for _auto, _cls in (
    (AutoModel, ModernAlbertModel),
    (AutoModelForMaskedLM, ModernAlbertForMaskedLM),
    (AutoModelForSequenceClassification, ModernAlbertForSequenceClassification),
    (AutoModelForTokenClassification, ModernAlbertForTokenClassification),
    (AutoModelForQuestionAnswering, ModernAlbertForQuestionAnswering),
    (AutoModelForMultipleChoice, ModernAlbertForMultipleChoice),
):
    _auto.register(ModernAlbertConfig, _cls, exist_ok=True)

__all__ = [
    "PRESETS",
    "ConversionReport",
    "InitReport",
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
    "__version__",
    "count_parameters",
    "init_from_teacher",
    "load_modernbert_weights",
    "measure_routing",
    "merge_experts",
]
