"""The official SQuAD-v2 metric (the semantics of ``evaluate-v2.0.py``): answer normalisation, exact match and token
F1 maximised over the gold answers, the no-answer threshold, HasAns / NoAns breakdowns and the best thresholds."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from .data import SquadExample

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official normalisation: lower case, drop ASCII punctuation, drop the articles a / an / the, and
    collapse whitespace (in that order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(gold: str, prediction: str) -> int:
    """1 when the normalised texts are equal, else 0."""
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1_score(gold: str, prediction: str) -> float:
    """Token F1 of the normalised texts (bags of tokens); when either side is empty, 1 only if both are."""
    gold_tokens = normalize_answer(gold).split()
    pred_tokens = normalize_answer(prediction).split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    same = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _gold_answers(examples_or_gold: Any) -> dict[str, list[str]]:
    if isinstance(examples_or_gold, Mapping) and "data" in examples_or_gold:  # an official data set object
        return {str(qa["id"]): [a["text"] for a in qa.get("answers", [])]
                for article in examples_or_gold["data"] for para in article["paragraphs"] for qa in para["qas"]}
    if isinstance(examples_or_gold, Mapping):  # id -> gold texts
        return {str(k): list(v) for k, v in examples_or_gold.items()}
    return {ex.id: list(ex.answers) for ex in examples_or_gold}


def _best_threshold(predictions: Mapping[str, str], scores: Mapping[str, float], na_probs: Mapping[str, float],
                    has_answer: Mapping[str, bool]) -> tuple[float, float]:
    """The official search: start from "no answer everywhere", then answer the questions in increasing ``na_prob``
    order, keeping the best running total and the ``na_prob`` where it was reached."""
    current = best = float(sum(not v for v in has_answer.values()))
    threshold = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):  # stable: ties keep the order of na_probs
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, threshold = current, na_probs[qid]
    return 100.0 * best / len(scores), threshold


def squad_v2_metric(
    examples_or_gold: Sequence[SquadExample] | Mapping[str, Any],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_threshold: float = 1.0,
) -> dict[str, float | int]:
    """The official SQuAD-v2 metric (the semantics of ``evaluate-v2.0.py``).

    Per question, exact match and F1 are the maxima over the gold answers that do not normalise to ""; a question
    without such answers has the single gold answer "" (so only an empty prediction is right). Questions whose
    ``na_prob`` exceeds ``na_threshold`` count as predicted unanswerable (1 if they are, else 0). ``best_*`` is the
    best score over all no-answer thresholds, computed on the raw scores, and ``best_*_thresh`` the ``na_prob``
    reaching it.

    Args:
        examples_or_gold: :class:`SquadExample` list, an official data set object (``{"data": [...]}``), or a
            mapping ``question id -> gold answer texts`` (empty for unanswerable).
        predictions: ``question id -> answer text`` ("" for no answer); ids not in the gold set are ignored.
        na_probs: ``question id -> probability of no answer`` (default 0.0 for every question).
        na_threshold: The official ``--na-prob-thresh`` (default 1.0).

    Returns:
        ``exact``, ``f1``, ``total``, ``HasAns_exact`` / ``_f1`` / ``_total`` and ``NoAns_*`` (when such questions
        exist), ``best_exact``, ``best_exact_thresh``, ``best_f1``, ``best_f1_thresh``; scores in percent.

    Raises:
        ValueError: No gold questions, or a question without a prediction or an ``na_prob``.
    """
    gold = _gold_answers(examples_or_gold)
    if not gold:
        raise ValueError("squad_v2_metric: the gold set holds no questions.")
    missing = [qid for qid in gold if qid not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} of {len(gold)} questions have no prediction (e.g. {missing[:3]}); give a "
                         'prediction for every question ("" for no answer).')
    if na_probs is None:
        na_probs = {qid: 0.0 for qid in predictions}
    missing = [qid for qid in gold if qid not in na_probs]
    if missing:
        raise ValueError(f"{len(missing)} questions have no na_prob (e.g. {missing[:3]}); give one per question.")
    has_answer = {qid: bool(texts) for qid, texts in gold.items()}
    exact_raw, f1_raw = {}, {}
    for qid, texts in gold.items():
        golds = [t for t in texts if normalize_answer(t)] or [""]
        exact_raw[qid] = float(max(exact_match(g, predictions[qid]) for g in golds))
        f1_raw[qid] = max(f1_score(g, predictions[qid]) for g in golds)

    def thresholded(raw: dict[str, float]) -> dict[str, float]:
        return {qid: float(not has_answer[qid]) if na_probs[qid] > na_threshold else s for qid, s in raw.items()}

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)

    def summary(qids: list[str]) -> tuple[float, float, int]:
        return 100.0 * sum(exact[q] for q in qids) / len(qids), 100.0 * sum(f1[q] for q in qids) / len(qids), len(qids)

    out: dict[str, float | int] = dict(zip(("exact", "f1", "total"), summary(list(gold))))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q in gold if has_answer[q] == wanted]
        if qids:
            out.update(zip((f"{prefix}_exact", f"{prefix}_f1", f"{prefix}_total"), summary(qids)))
    out["best_exact"], out["best_exact_thresh"] = _best_threshold(predictions, exact_raw, na_probs, has_answer)
    out["best_f1"], out["best_f1_thresh"] = _best_threshold(predictions, f1_raw, na_probs, has_answer)
    return out


__all__ = ["exact_match", "f1_score", "normalize_answer", "squad_v2_metric"]
