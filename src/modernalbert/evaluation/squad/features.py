"""SQuAD features and answers: question + context windows from a fast tokenizer's offsets, training labels, and the
n-best post-processing against the null score (Hugging Face ``run_qa``'s preprocessing and post-processing)."""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .data import SquadExample

# Preprocessing and post-processing defaults of Hugging Face's run_qa.
MAX_LENGTH = 384
STRIDE = 128
N_BEST = 20
MAX_ANSWER_LENGTH = 30


# Examples tokenised per call: large enough for the fast tokenizer's batching, small enough for a steady progress bar.
_CHUNK = 1000


def require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"SQuAD preprocessing needs a fast tokenizer (it maps answers to tokens through character offsets); "
            f"{type(tokenizer).__name__} is a slow (Python) tokenizer. Use a tokenizer backed by `tokenizers` "
            "(a folder with tokenizer.json, loaded with AutoTokenizer.from_pretrained), or convert this one with "
            "transformers.convert_slow_tokenizer."
        )


def _context_offsets(context: str, offsets: Sequence[tuple[int, int]], seq_ids: Sequence[int | None],
                     ) -> list[tuple[int, int] | None]:
    """Offsets of context tokens with surrounding whitespace trimmed (byte-level BPE tokens carry their leading
    space); None for question, special and whitespace-only tokens, which can never start or end an answer."""
    out: list[tuple[int, int] | None] = []
    for (s, e), sid in zip(offsets, seq_ids):
        if sid != 1:
            out.append(None)
            continue
        while s < e and context[s].isspace():
            s += 1
        while e > s and context[e - 1].isspace():
            e -= 1
        out.append((s, e) if e > s else None)
    return out


def _windows(examples: Sequence[SquadExample], tokenizer: Any, max_length: int, stride: int, desc: str,
             ) -> Iterable[tuple[int, dict[str, list[int]], list[tuple[int, int] | None], int]]:
    """Yield ``(example index, model inputs, context offsets, cls index)`` for every window of every example."""
    from tqdm.auto import tqdm

    require_fast(tokenizer)
    if stride < 0:
        raise ValueError(f"stride={stride} must be >= 0.")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    # The tokenizer needs more room for context than the overlap; questions longer than what is left are cut
    # (Hugging Face's run_qa would fail on them instead).
    max_question = max_length - specials - stride - 1
    if max_question < 1:
        raise ValueError(f"max_length={max_length} with stride={stride} leaves no room for the question: the window "
                         f"must hold {specials} special tokens, the question and more than stride context tokens. "
                         f"Use a smaller stride or a larger max_length (SQuAD default: {MAX_LENGTH} / {STRIDE}).")
    cls_id = tokenizer.cls_token_id
    bar = tqdm(total=len(examples), desc=desc, unit="ex", dynamic_ncols=True)
    for lo in range(0, len(examples), _CHUNK):
        chunk = examples[lo:lo + _CHUNK]
        questions = [ex.question.lstrip() for ex in chunk]  # run_qa strips: some SQuAD questions start with spaces
        q_enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        for i, offs in enumerate(q_enc["offset_mapping"]):
            if len(offs) > max_question:
                questions[i] = questions[i][:offs[max_question - 1][1]]
        enc = tokenizer(questions, [ex.context for ex in chunk], truncation="only_second", max_length=max_length,
                        stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
        for f, ids in enumerate(enc["input_ids"]):
            j = lo + enc["overflow_to_sample_mapping"][f]
            if cls_id is None or cls_id not in ids:
                raise ValueError(
                    f"The tokenizer ({type(tokenizer).__name__}) puts no [CLS] token into question/context pairs; "
                    "SQuAD-v2 scores 'no answer' at that token. Give the tokenizer a pair template with a CLS token "
                    "(e.g. tokenizers.processors.TemplateProcessing(pair='[CLS] $A [SEP] $B:1 [SEP]:1', ...)).")
            inputs = {"input_ids": list(ids), "attention_mask": list(enc["attention_mask"][f])}
            if "token_type_ids" in enc:
                inputs["token_type_ids"] = list(enc["token_type_ids"][f])
            offsets = _context_offsets(examples[j].context, enc["offset_mapping"][f], enc.sequence_ids(f))
            yield j, inputs, offsets, ids.index(cls_id)
        bar.update(len(chunk))
    bar.close()


def _answer_span(example: SquadExample) -> tuple[int, int] | None:
    """Character span of the first gold answer without surrounding whitespace (None when there is none)."""
    if not example.answers:
        return None
    a = example.answer_starts[0]
    b = a + len(example.answers[0])
    while a < b and example.context[a].isspace():
        a += 1
    while b > a and example.context[b - 1].isspace():
        b -= 1
    return (a, b) if b > a else None


def _label(offsets: Sequence[tuple[int, int] | None], span: tuple[int, int] | None, cls: int) -> tuple[int, int]:
    """Start and end token of ``span`` when the window holds all of it, else ``(cls, cls)`` (as run_qa)."""
    context = [k for k, o in enumerate(offsets) if o is not None]
    if span is None or not context:
        return cls, cls
    a, b = span
    if offsets[context[0]][0] > a or offsets[context[-1]][1] < b:
        return cls, cls
    # First token ending after the answer's first character, last token starting before its end: the smallest
    # token run covering the answer (also for tokens that share offsets, e.g. bytes of one character).
    start = next(k for k in context if offsets[k][1] > a)
    end = next(k for k in reversed(context) if offsets[k][0] < b)
    return (start, end) if start <= end else (cls, cls)


def prepare_train_features(examples: Sequence[SquadExample], tokenizer: Any, max_length: int = MAX_LENGTH,
                           stride: int = STRIDE) -> list[dict[str, Any]]:
    """Training windows with ``start_positions`` / ``end_positions`` labels.

    Every example gives one window or more (question first, context truncated ``only_second``, consecutive windows
    overlapping by ``stride`` tokens). The labels are the tokens covering the first gold answer when the window
    holds all of it, and the ``[CLS]`` token otherwise and for unanswerable questions.

    Args:
        examples: Questions from :func:`read_squad`.
        tokenizer: A fast tokenizer (offsets) whose pair encoding holds a ``[CLS]`` token.
        max_length: Tokens per window.
        stride: Tokens shared by consecutive windows (``doc_stride`` of run_qa).

    Returns:
        Dicts with ``input_ids``, ``attention_mask`` (``token_type_ids`` when the tokenizer gives them),
        ``start_positions``, ``end_positions`` and ``example_index``.

    Raises:
        ValueError: A slow tokenizer, no ``[CLS]`` in pairs, or ``max_length`` / ``stride`` leaving no room.
    """
    features = []
    for j, inputs, offsets, cls in _windows(examples, tokenizer, max_length, stride, "squad train features"):
        start, end = _label(offsets, _answer_span(examples[j]), cls)
        features.append({**inputs, "start_positions": start, "end_positions": end, "example_index": j})
    return features


def prepare_eval_features(examples: Sequence[SquadExample], tokenizer: Any, max_length: int = MAX_LENGTH,
                          stride: int = STRIDE) -> list[dict[str, Any]]:
    """Evaluation windows that keep what post-processing needs.

    Args:
        examples: Questions from :func:`read_squad`.
        tokenizer: A fast tokenizer (offsets) whose pair encoding holds a ``[CLS]`` token.
        max_length: Tokens per window.
        stride: Tokens shared by consecutive windows.

    Returns:
        Dicts with the model inputs plus ``example_id``, ``example_index``, ``cls_index`` and ``offset_mapping``
        (character offsets into the context for context tokens, surrounding whitespace trimmed; None for every
        other token). Pass only the model inputs to a model (see :func:`model_features`).

    Raises:
        ValueError: As :func:`prepare_train_features`.
    """
    return [{**inputs, "example_id": examples[j].id, "example_index": j, "cls_index": cls, "offset_mapping": offsets}
            for j, inputs, offsets, cls in _windows(examples, tokenizer, max_length, stride, "squad eval features")]


def model_features(features: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The model-input part of each feature (the part :func:`~modernalbert.evaluation.common.collate` can batch)."""
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return [{k: f[k] for k in keys if k in f} for f in features]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def postprocess(
    examples: Sequence[SquadExample],
    features: Sequence[dict[str, Any]],
    start_logits: Sequence[Any],
    end_logits: Sequence[Any],
    n_best: int = N_BEST,
    max_answer_length: int = MAX_ANSWER_LENGTH,
    *,
    null_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, float]]:
    """Turn per-window start / end logits into one answer per question (Hugging Face's SQuAD-v2 procedure).

    For each example, every window proposes the spans made of its ``n_best`` highest start and end logits (context
    tokens only, end not before start, at most ``max_answer_length`` tokens), scored start + end; the best span over
    all windows is compared with the null score, the smallest ``[CLS]`` start + end over the windows.

    Args:
        examples: The questions.
        features: Their windows from :func:`prepare_eval_features`.
        start_logits: One row per feature (its real tokens; longer padded rows are cut to the offsets).
        end_logits: Likewise.
        n_best: Start and end candidates per window.
        max_answer_length: Longest answer in tokens.
        null_threshold: Predict no answer when null score - best span score exceeds this (0 as run_qa).

    Returns:
        ``(predictions, na_probs)``: the answer text per question id ("" for no answer), and the no-answer
        probability, the logistic of null score - best span score (so "" exactly when it is above
        ``sigmoid(null_threshold)``; 1.0 when no span is valid), as the official metric's ``na_prob`` file.

    Raises:
        ValueError: Row counts that do not match the features, or an example without windows.
    """
    if not (len(features) == len(start_logits) == len(end_logits)):
        raise ValueError(f"postprocess got {len(features)} features but {len(start_logits)} start and "
                         f"{len(end_logits)} end logit rows; give one row per feature.")
    by_example: dict[str, list[int]] = collections.defaultdict(list)
    for i, feat in enumerate(features):
        by_example[feat["example_id"]].append(i)
    predictions: dict[str, str] = {}
    na_probs: dict[str, float] = {}
    for ex in examples:
        if ex.id not in by_example:
            raise ValueError(f"No features for question {ex.id!r}: build the features from the same examples.")
        null_score = math.inf
        best_score, best_text = -math.inf, None
        for i in by_example[ex.id]:
            offsets = features[i]["offset_mapping"]
            n = len(offsets)
            starts = np.asarray(start_logits[i], dtype=np.float64)[:n]
            ends = np.asarray(end_logits[i], dtype=np.float64)[:n]
            cls = features[i].get("cls_index", 0)
            null_score = min(null_score, float(starts[cls] + ends[cls]))
            # Candidate order as run_qa (descending argsort), so ties resolve the same way.
            top_starts = np.argsort(starts)[-1:-n_best - 1:-1].tolist()
            top_ends = np.argsort(ends)[-1:-n_best - 1:-1].tolist()
            for s in top_starts:
                if offsets[s] is None:
                    continue
                for e in top_ends:
                    if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(starts[s] + ends[e])
                    if score > best_score:
                        best_score, best_text = score, ex.context[offsets[s][0]:offsets[e][1]]
        if best_text is None:
            predictions[ex.id], na_probs[ex.id] = "", 1.0
            continue
        diff = null_score - best_score
        predictions[ex.id] = "" if diff > null_threshold else best_text
        na_probs[ex.id] = _sigmoid(diff)
    return predictions, na_probs


__all__ = ["MAX_ANSWER_LENGTH", "MAX_LENGTH", "N_BEST", "STRIDE", "model_features", "postprocess",
           "prepare_eval_features", "prepare_train_features", "require_fast"]
