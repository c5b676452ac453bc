"""From logits to what a user reads: labels and scores of sequence classification or regression, entity spans of token
classification, decided by the model's config (``problem_type``, ``num_labels``, ``id2label``) as transformers'
pipelines decide them.

* ``regression`` (``problem_type == "regression"``, or one label without a problem type, transformers' rule):
  ``{"score": s}`` (the raw output; ``{"scores": [...]}`` for several outputs).
* ``multi_label_classification``: sigmoid per label, ``{"labels": [names with p >= 0.5], "scores": {name: p}}``.
* single-label classification (the default): softmax, ``{"label": argmax name, "score": its p, "scores": {name: p}}``.
* token classification: ``{"entities": [{"entity", "start", "end", "text", "score"}]}``, tokens grouped as
  transformers' ``aggregation_strategy="simple"`` groups them: a ``B-X`` tag or a change of type starts a span,
  ``I-X`` of the same type continues it, ``O`` (or a tag without type) is outside; ``start`` / ``end`` are character
  offsets into the input text (the tokenizer's offsets), ``score`` the mean probability of the span's tags. Special
  tokens (empty offsets) never join a span.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TASKS = ("regression", "multi_label_classification", "single_label_classification", "token_classification")


def task_of(config: Any, architecture: str) -> str:
    """The prediction task of a model, one of :data:`TASKS`.

    Raises:
        ValueError: The model has no sequence or token classification head.
    """
    if architecture.endswith("ForTokenClassification"):
        return "token_classification"
    if not architecture.endswith("ForSequenceClassification"):
        raise ValueError(f"`predict` needs a sequence or token classification model; this one is {architecture} "
                         "(use `encode` for sentence embeddings).")
    problem = getattr(config, "problem_type", None)
    if problem in TASKS[:3]:
        return problem
    return "regression" if config.num_labels == 1 else "single_label_classification"


def label_names(config: Any) -> list[str]:
    """``config.id2label`` as a list in id order (``LABEL_i`` where a name is missing, as transformers writes)."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels)]


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def sequence_record(logits: np.ndarray, task: str, names: list[str]) -> dict[str, Any]:
    """One sequence's (C,) logits to its record (see the module notes)."""
    logits = logits.astype(np.float64)
    if task == "regression":
        return {"score": float(logits[0])} if logits.size == 1 else {"scores": [float(v) for v in logits]}
    if task == "multi_label_classification":
        p = 1.0 / (1.0 + np.exp(-logits))
        return {"labels": [n for n, q in zip(names, p) if q >= 0.5], "scores": dict(zip(names, map(float, p)))}
    p = _softmax(logits)
    best = int(p.argmax())
    return {"label": names[best], "score": float(p[best]), "scores": dict(zip(names, map(float, p)))}


def _entity_type(tag: str) -> tuple[str, str | None]:
    """``(prefix, type)`` of a tag: ``B-PER`` -> (B, PER), ``I-PER`` -> (I, PER), ``PER`` -> (I, PER), ``O`` -> (O,
    None)."""
    if tag == "O":
        return "O", None
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIES":
        return ("B" if tag[0] in "BS" else "I"), tag[2:]
    return "I", tag


def entity_spans(logits: np.ndarray, offsets: list[tuple[int, int]], text: str, names: list[str]
                 ) -> list[dict[str, Any]]:
    """Entity spans of one sequence from its (n, C) token logits and the tokens' character offsets.

    Returns:
        ``[{"entity": type, "start": int, "end": int, "text": text[start:end], "score": mean p}]`` in text order.
    """
    p = _softmax(logits.astype(np.float64))  # (n, C)
    best = p.argmax(-1)
    spans: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for t, (start, end) in enumerate(offsets):
        if end <= start:  # a special token: no characters
            current = None
            continue
        prefix, kind = _entity_type(names[int(best[t])])
        if kind is None or prefix == "B" or current is None or current["entity"] != kind:
            current = None if kind is None else {"entity": kind, "start": start, "end": end, "scores": []}
            if current is not None:
                spans.append(current)
        if current is not None:
            current["end"] = end
            current["scores"].append(float(p[t, best[t]]))
    return [{"entity": s["entity"], "start": s["start"], "end": s["end"], "text": text[s["start"]:s["end"]],
             "score": float(np.mean(s["scores"]))} for s in spans]


__all__ = ["TASKS", "entity_spans", "label_names", "sequence_record", "task_of"]
