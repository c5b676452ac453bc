"""SQuAD-v2: data, sliding-window features, n-best post-processing and the official metric.

* **Data** (:func:`read_squad`): the official JSON (``train-v2.0.json`` / ``dev-v2.0.json``, SQuAD 1.1 too), JSON
  Lines in the Hugging Face layout, or a hub name read with ``datasets`` (``rajpurkar/squad_v2``; ``NAME:SPLIT``
  picks a split). Every question is checked; a malformed file fails with its name and the location of the problem.
* **Features** (:func:`prepare_train_features`, :func:`prepare_eval_features`): question + context windows of
  ``max_length`` tokens overlapping by ``stride`` tokens (``doc_stride`` of Hugging Face's ``run_qa``), built from a
  fast tokenizer's offsets. Training labels are the tokens covering the first gold answer, or the ``[CLS]`` token
  for unanswerable questions and for windows that do not hold the whole answer.
* **Post-processing** (:func:`postprocess`): per example, the best span over all windows among the ``n_best`` start
  and end candidates (at most ``max_answer_length`` tokens), against the null score (the smallest ``[CLS]`` start +
  end score over the windows). The prediction is empty when the null score wins.
* **Metric** (:func:`squad_v2_metric`): the semantics of the official ``evaluate-v2.0.py`` (answer normalisation,
  exact match and token F1 maximised over the gold answers, the no-answer threshold, HasAns / NoAns breakdowns and
  the best thresholds).

Fine-tuning defaults (:data:`LEARNING_RATE`, :data:`BATCH_SIZE`, :data:`EPOCHS`) are our choice, common values for
BERT-size encoders on SQuAD; the preprocessing and post-processing defaults are Hugging Face's ``run_qa`` ones.

Modules: :mod:`~.data`, :mod:`~.features`, :mod:`~.metric`, :mod:`~.run`.
"""

from .data import HUB_NAME, SquadExample, read_squad
from .features import (
    MAX_ANSWER_LENGTH,
    MAX_LENGTH,
    N_BEST,
    STRIDE,
    model_features,
    postprocess,
    prepare_eval_features,
    prepare_train_features,
)
from .metric import exact_match, f1_score, normalize_answer, squad_v2_metric
from .run import BATCH_SIZE, EPOCHS, EVAL_BATCH_SIZE, LEARNING_RATE, evaluate_squad, finetune_squad

__all__ = [
    "BATCH_SIZE",
    "EPOCHS",
    "EVAL_BATCH_SIZE",
    "HUB_NAME",
    "LEARNING_RATE",
    "MAX_ANSWER_LENGTH",
    "MAX_LENGTH",
    "N_BEST",
    "STRIDE",
    "SquadExample",
    "evaluate_squad",
    "exact_match",
    "f1_score",
    "finetune_squad",
    "model_features",
    "normalize_answer",
    "postprocess",
    "prepare_eval_features",
    "prepare_train_features",
    "read_squad",
    "squad_v2_metric",
]
