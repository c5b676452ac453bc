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
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import FinetuneConfig

# Preprocessing and post-processing defaults of Hugging Face's run_qa.
MAX_LENGTH = 384
STRIDE = 128
N_BEST = 20
MAX_ANSWER_LENGTH = 30
# Fine-tuning defaults: our choice (common for BERT-size encoders on SQuAD), not taken from a paper.
LEARNING_RATE = 3e-5
BATCH_SIZE = 32
EPOCHS = 2.0
EVAL_BATCH_SIZE = 64
HUB_NAME = "rajpurkar/squad_v2"

# Examples tokenised per call: large enough for the fast tokenizer's batching, small enough for a steady progress bar.
_CHUNK = 1000


# ============================================================================================ data


@dataclass(frozen=True)
class SquadExample:
    """One question about one context.

    Attributes:
        id: Question id (unique in a data set).
        title: Article title ("" when unknown).
        context: The paragraph.
        question: The question.
        answers: Gold answer texts (empty for an unanswerable question).
        answer_starts: Character offset of each answer in ``context``.
        is_impossible: True when the question has no answer in the context.
        plausible_answers: For unanswerable questions, the distractor texts SQuAD-v2 records (not used for training).
    """

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()
    is_impossible: bool = False
    plausible_answers: tuple[str, ...] = ()


def read_squad(path_or_name: str | os.PathLike, *, split: str | None = None) -> list[SquadExample]:
    """Read SQuAD(-v2) questions from a file or a Hugging Face hub name.

    Args:
        path_or_name: The official JSON layout (``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``),
            a ``.jsonl`` file with one Hugging Face record per line (``id``, ``title``, ``context``, ``question``,
            ``answers: {"text": [...], "answer_start": [...]}``), or a hub name such as ``rajpurkar/squad_v2``
            (needs ``datasets`` and either the network or its cache); ``NAME:SPLIT`` picks the split.
        split: The hub split when ``path_or_name`` names none (default ``"validation"``); ignored for files.

    Returns:
        The questions in file order.

    Raises:
        FileNotFoundError: A path that does not exist.
        ValueError: A malformed file (the message names the file and the location, e.g.
            ``data[0].paragraphs[1].qas[2]: missing "id"``; the line for JSON syntax errors), or a hub name that
            cannot be loaded.
    """
    text = str(path_or_name)
    path = Path(text).expanduser()
    if path.is_file():
        return _read_jsonl(path) if path.suffix == ".jsonl" else _read_json(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a SQuAD JSON file inside it (e.g. {path / 'dev-v2.0.json'}).")
    if not _is_hub_name(text):
        raise FileNotFoundError(f"No SQuAD file at {text}: give an existing JSON file or a hub name such as "
                                f"{HUB_NAME}.")
    name, _, named_split = text.partition(":")
    return _read_hub(name, named_split or split or "validation")


def _is_hub_name(data: str | os.PathLike) -> bool:
    """Hub ids are "name" or "owner/name" (optionally ":split"); anything else names a local file."""
    text = str(data)
    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or "\\" in text:
        return False
    return text.count("/") <= 1 and Path(text.partition(":")[0]).suffix not in (".json", ".jsonl")


def _read_hub(name: str, split: str) -> list[SquadExample]:
    try:
        import datasets
    except ImportError as err:
        raise ValueError(f"Reading {name!r} from the Hugging Face hub needs the `datasets` package "
                         "(pip install datasets); or give a local SQuAD JSON file.") from err
    try:
        records = datasets.load_dataset(name, split=split)
    except Exception as err:  # offline, unknown name, unknown split: the fix is the same for all of them
        raise ValueError(
            f"Could not load {name!r} (split {split!r}) from the Hugging Face hub or its local cache "
            f"({type(err).__name__}: {err}). Give a local SQuAD JSON file instead (the official train-v2.0.json or "
            "dev-v2.0.json), or go online once so that `datasets` caches the data set."
        ) from err
    examples = [_hf_record(rec, f"{name}[{split}]", f"record {i}") for i, rec in enumerate(records)]
    return _finish(examples, f"{name}[{split}]")


def _load_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err}); save the file as UTF-8.") from err
    if not text.strip():
        raise ValueError(f'{path} is empty: give a SQuAD JSON file ({{"version": "v2.0", "data": [...]}}).')
    return text


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}.") from err


def _read_json(path: Path) -> list[SquadExample]:
    obj = _parse(_load_text(path), str(path))
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise ValueError(f'{path}: the top level must be an object with a "data" list (the official SQuAD layout: '
                         '{"version": "v2.0", "data": [{"title": ..., "paragraphs": [...]}]}).')
    examples = []
    for a, article in enumerate(obj["data"]):
        loc = f"data[{a}]"
        article = _need(article, dict, path, loc, "an object")
        title = article.get("title", "")
        paragraphs = _need(article.get("paragraphs"), list, path, f"{loc}.paragraphs", "a list", missing="paragraphs")
        for p, para in enumerate(paragraphs):
            ploc = f"{loc}.paragraphs[{p}]"
            para = _need(para, dict, path, ploc, "an object")
            context = _need(para.get("context"), str, path, f"{ploc}.context", "a string", missing="context")
            qas = _need(para.get("qas"), list, path, f"{ploc}.qas", "a list", missing="qas")
            for q, qa in enumerate(qas):
                qloc = f"{ploc}.qas[{q}]"
                qa = _need(qa, dict, path, qloc, "an object")
                examples.append(_example(qa, str(title or ""), context, path, qloc))
    return _finish(examples, str(path))


def _read_jsonl(path: Path) -> list[SquadExample]:
    examples = []
    for n, line in enumerate(_load_text(path).splitlines(), start=1):
        if line.strip():
            examples.append(_hf_record(_parse(line, f"{path}: line {n}"), str(path), f"line {n}"))
    return _finish(examples, str(path))


def _hf_record(rec: Any, source: str, loc: str) -> SquadExample:
    """A Hugging Face ``squad_v2`` record (answers as parallel ``text`` / ``answer_start`` lists)."""
    rec = _need(rec, dict, source, loc, "an object")
    answers = _need(rec.get("answers", {"text": [], "answer_start": []}), dict, source, f"{loc}.answers",
                    'an object {"text": [...], "answer_start": [...]}')
    texts, starts = answers.get("text", []), answers.get("answer_start", [])
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise ValueError(f'{source}: {loc}.answers: "text" and "answer_start" must be lists of the same length.')
    context = _need(rec.get("context"), str, source, f"{loc}.context", "a string", missing="context")
    qa = {"id": rec.get("id"), "question": rec.get("question"),
          "answers": [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]}
    if "id" not in rec:
        del qa["id"]
    if "question" not in rec:
        del qa["question"]
    return _example(qa, str(rec.get("title") or ""), context, source, loc)


def _need(value: Any, kind: type, source: str | Path, loc: str, what: str, *, missing: str | None = None) -> Any:
    if value is None and missing is not None:
        raise ValueError(f'{source}: {loc.rsplit(".", 1)[0]}: missing "{missing}".')
    if not isinstance(value, kind):
        raise ValueError(f"{source}: {loc}: expected {what}, found {type(value).__name__}.")
    return value


def _example(qa: dict[str, Any], title: str, context: str, source: str | Path, loc: str) -> SquadExample:
    if "id" not in qa or qa["id"] is None:
        raise ValueError(f'{source}: {loc}: missing "id"; every question needs a unique id (predictions and the '
                         "metric are keyed by it).")
    qid = qa["id"]
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
        raise ValueError(f'{source}: {loc}: "id" must be a non-empty string, found {qid!r}.')
    question = qa.get("question")
    if not isinstance(question, str):
        raise ValueError(f'{source}: {loc}: missing "question" (a string).' if question is None else
                         f'{source}: {loc}: "question" must be a string, found {type(question).__name__}.')
    if not context.strip():
        raise ValueError(f"{source}: {loc}: the context is empty; every question needs a paragraph to answer from.")
    impossible = qa.get("is_impossible")
    if impossible is not None and not isinstance(impossible, bool):
        raise ValueError(f'{source}: {loc}: "is_impossible" must be true or false, found {impossible!r}.')
    raw_answers = qa.get("answers", [] if impossible else None)
    if raw_answers is None:
        raise ValueError(f'{source}: {loc}: missing "answers"; give a list of {{"text", "answer_start"}} objects, '
                         'or "is_impossible": true with "answers": [] for an unanswerable question.')
    raw_answers = _need(raw_answers, list, source, f"{loc}.answers", "a list")
    texts, starts = [], []
    for j, ans in enumerate(raw_answers):
        aloc = f"{loc}.answers[{j}]"
        ans = _need(ans, dict, source, aloc, 'an object {"text", "answer_start"}')
        text = _need(ans.get("text"), str, source, f"{aloc}.text", "a string", missing="text")
        start = ans.get("answer_start")
        if start is None:
            raise ValueError(f'{source}: {aloc}: missing "answer_start" (the character offset of the answer in the '
                             "context).")
        if isinstance(start, bool) or not isinstance(start, int):
            raise ValueError(f'{source}: {aloc}: "answer_start" must be an integer, found {start!r}.')
        if start < 0 or context[start:start + len(text)] != text:
            found = context.find(text)
            hint = f"; the text occurs at offset {found}" if found >= 0 else "; the text does not occur in the context"
            raise ValueError(
                f"{source}: {aloc}: answer_start {start} does not match the context: context[{start}:"
                f"{start + len(text)}] is {context[max(start, 0):start + len(text)]!r}, the answer is {text!r}"
                f"{hint}. Fix answer_start (a character offset into the context, counted in Unicode characters)."
            )
        texts.append(text)
        starts.append(start)
    if impossible and texts:
        raise ValueError(f'{source}: {loc}: "is_impossible" is true but the question has {len(texts)} answer(s); '
                         'SQuAD-v2 keeps those in "plausible_answers" and leaves "answers" empty.')
    if impossible is False and not texts:
        raise ValueError(f'{source}: {loc}: the question has no answers but "is_impossible" is false; give its '
                         'answers, or set "is_impossible": true.')
    plausible = qa.get("plausible_answers") or []
    plausible = _need(plausible, list, source, f"{loc}.plausible_answers", "a list")
    plausible_texts = []
    for j, ans in enumerate(plausible):
        ans = _need(ans, dict, source, f"{loc}.plausible_answers[{j}]", 'an object {"text", "answer_start"}')
        plausible_texts.append(_need(ans.get("text"), str, source, f"{loc}.plausible_answers[{j}].text", "a string",
                                     missing="text"))
    return SquadExample(id=str(qid), title=title, context=context, question=question, answers=tuple(texts),
                        answer_starts=tuple(starts), is_impossible=not texts, plausible_answers=tuple(plausible_texts))


def _finish(examples: list[SquadExample], source: str) -> list[SquadExample]:
    if not examples:
        raise ValueError(f"{source} holds no questions; give a SQuAD file with at least one question.")
    seen: dict[str, int] = {}
    for i, ex in enumerate(examples):
        if ex.id in seen:
            raise ValueError(f"{source}: question id {ex.id!r} is used twice (questions {seen[ex.id]} and {i}); "
                             "ids must be unique because predictions are keyed by them.")
        seen[ex.id] = i
    return examples


# ============================================================================================ features


def _require_fast(tokenizer: Any) -> None:
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

    _require_fast(tokenizer)
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


# ============================================================================================ post-processing


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


# ============================================================================================ metric

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


# ============================================================================================ runs


def _is_main_process() -> bool:
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).is_main_process


def _check_length(model: Any, max_length: int) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the model's {limit} positions; use --max-length "
                         f"{limit} or less.")


def _load(model_path: str | os.PathLike) -> tuple[Any, Any]:
    from .common import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_path)
    _require_fast(tokenizer)  # fail before the (slower) model load
    return load_model(model_path, "question-answering"), tokenizer


def _run_eval(model: Any, tokenizer: Any, examples: Sequence[SquadExample], *, batch_size: int, max_length: int,
              stride: int, n_best: int, max_answer_length: int, precision: str) -> dict[str, Any]:
    from .common import model_inputs, predict

    features = prepare_eval_features(examples, tokenizer, max_length=max_length, stride=stride)

    def forward(m: Any, batch: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = m(**model_inputs(m, batch))
        starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        lengths = batch["attention_mask"].sum(dim=1).tolist()  # right padding: a row's first tokens are real
        return [(starts[i, :n], ends[i, :n]) for i, n in enumerate(lengths)]

    rows = predict(model, model_features(features), forward, batch_size=batch_size,
                   pad_token_id=_pad_id(tokenizer), desc="squad predict", precision=precision)
    predictions, na_probs = postprocess(examples, features, [r[0] for r in rows], [r[1] for r in rows],
                                        n_best=n_best, max_answer_length=max_answer_length)
    return {"examples": len(examples), "features": len(features),
            "metrics": squad_v2_metric(examples, predictions, na_probs), "predictions": predictions,
            "na_probs": na_probs}


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def evaluate_squad(
    model_path: str | os.PathLike,
    *,
    data: str | os.PathLike,
    batch_size: int = EVAL_BATCH_SIZE,
    max_length: int = MAX_LENGTH,
    stride: int = STRIDE,
    n_best: int = N_BEST,
    max_answer_length: int = MAX_ANSWER_LENGTH,
    precision: str = "auto",
) -> dict[str, Any]:
    """Evaluate a fine-tuned QA model (ModernAlbert or any Hugging Face encoder) on SQuAD-v2 data.

    Args:
        model_path: A folder (model + fast tokenizer) or a hub name.
        data: A SQuAD file or hub name (see :func:`read_squad`; hub names default to the validation split).
        batch_size: Windows per prediction batch (length-bucketed).
        max_length: Tokens per window.
        stride: Tokens shared by consecutive windows.
        n_best: Start / end candidates per window.
        max_answer_length: Longest answer in tokens.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see
            :class:`~modernalbert.evaluation.common.FinetuneConfig`).

    Returns:
        ``suite``, ``model``, ``data``, the settings, ``examples``, ``features``, ``metrics`` (see
        :func:`squad_v2_metric`), ``predictions`` and ``na_probs`` (question id keyed).

    Raises:
        ValueError: Bad data, a slow tokenizer, or ``max_length`` beyond the model's positions.
        FileNotFoundError: A missing model folder or data file.
    """
    examples = read_squad(data, split="validation")
    model, tokenizer = _load(model_path)
    _check_length(model, max_length)
    result = _run_eval(model, tokenizer, examples, batch_size=batch_size, max_length=max_length, stride=stride,
                       n_best=n_best, max_answer_length=max_answer_length, precision=precision)
    return {"suite": "squad_v2", "model": str(model_path), "data": str(data), "max_length": max_length,
            "stride": stride, "n_best": n_best, "max_answer_length": max_answer_length, **result}


def finetune_squad(
    model_path: str | os.PathLike,
    cfg: FinetuneConfig,
    *,
    data: str | os.PathLike,
    eval_data: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    stride: int | None = None,
    n_best: int = N_BEST,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> dict[str, Any]:
    """Fine-tune a model for SQuAD-v2 (a fresh QA head on any encoder) and evaluate it.

    Args:
        model_path: A ModernAlbert folder or any Hugging Face encoder (folder or hub name) with a fast tokenizer.
        cfg: Hyper-parameters; ``cfg.max_length`` is the window length (SQuAD default :data:`MAX_LENGTH`; the
            SQuAD CLI defaults are :data:`LEARNING_RATE`, :data:`BATCH_SIZE`, :data:`EPOCHS`, our choice).
        data: Training data (file or hub name; hub names default to the train split).
        eval_data: Evaluation data; by default the validation split of a hub-name ``data``, none for a file.
        output_dir: Where the fine-tuned model (with its tokenizer) is saved, in ``output_dir/model``.
        stride: Tokens shared by consecutive windows (default ``cfg.max_length // 3``: 128 for 384, as run_qa).
        n_best: Start / end candidates per window in evaluation.
        max_answer_length: Longest answer in tokens in evaluation.

    Returns:
        ``suite``, ``model``, ``data``, ``eval_data``, ``config``, ``stride``, ``train_examples``,
        ``train_features``, ``steps``, ``history`` (loss records), ``model_dir`` and, with evaluation data,
        ``examples``, ``features``, ``metrics``, ``predictions`` and ``na_probs`` (else ``metrics`` is None).

    Raises:
        ValueError: Bad data, a slow tokenizer, or ``max_length`` beyond the model's positions.
        FileNotFoundError: A missing model folder or data file.
    """
    from .common import finetune, save_model

    stride = cfg.max_length // 3 if stride is None else stride
    if eval_data is None and _is_hub_name(data):
        eval_data = f"{str(data).partition(':')[0]}:validation"
    train_examples = read_squad(data, split="train")
    eval_examples = read_squad(eval_data, split="validation") if eval_data is not None else None
    model, tokenizer = _load(model_path)
    _check_length(model, cfg.max_length)
    features = prepare_train_features(train_examples, tokenizer, max_length=cfg.max_length, stride=stride)
    train = [{k: v for k, v in f.items() if k != "example_index"} for f in features]
    history = finetune(model, train, cfg, pad_token_id=_pad_id(tokenizer), desc="squad finetune")
    model_dir = None
    if output_dir is not None:
        model_dir = Path(output_dir) / "model"
        if _is_main_process():
            save_model(model, tokenizer, model_dir)
    result: dict[str, Any] = {
        "suite": "squad_v2", "model": str(model_path), "data": str(data),
        "eval_data": None if eval_data is None else str(eval_data), "config": cfg.to_dict(), "stride": stride,
        "n_best": n_best, "max_answer_length": max_answer_length, "train_examples": len(train_examples),
        "train_features": len(features), "steps": history.steps, "history": history.records,
        "model_dir": None if model_dir is None else str(model_dir), "metrics": None,
    }
    if eval_examples is not None:
        result.update(_run_eval(model, tokenizer, eval_examples, batch_size=cfg.eval_batch_size,
                                max_length=cfg.max_length, stride=stride, n_best=n_best,
                                max_answer_length=max_answer_length, precision=cfg.precision))
    return result


__all__ = [
    "BATCH_SIZE",
    "EPOCHS",
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
