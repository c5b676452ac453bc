"""Fine-tune on your own labelled files: sequence classification, regression and token classification.

    from modernalbert.evaluation.config import FileDataConfig, FinetuneConfig
    from modernalbert.evaluation.files import finetune_on_files

    result = finetune_on_files("my-model", "classification", "train.csv", validation="dev.csv",
                               data=FileDataConfig(text_column="review", label_column="stars"),
                               cfg=FinetuneConfig(epochs=3), output_dir="runs/reviews")

The files are read by :class:`modernalbert.data.tables.Table` (CSV, TSV, JSON Lines, Parquet, CoNLL, datasets), the
training runs on the suites' engine (:func:`modernalbert.evaluation.common.finetune`: seeds, length-bucketed batches,
``accelerate``, precision), and the GLUE suite's tokenisation (:func:`modernalbert.evaluation.glue.encode`), so that
``classification`` on a file holding the RT-sentiment split reproduces ``finetune rt-sentiment`` (the same features,
head initialisation and batches: identical for the same seed when the label order is the same, see
:attr:`FileDataConfig.labels`).

* **classification**: labels are names or integer ids (``"positive"``, ``3``), mapped to ids by
  :attr:`FileDataConfig.labels`, a dataset's ``ClassLabel`` names, or the sorted training labels (the order of
  Hugging Face's ``run_glue``); saved in the model config as ``id2label`` / ``label2id`` with ``problem_type =
  "single_label_classification"``. Metrics: accuracy and macro-averaged F1 (scikit-learn), with the majority-class
  accuracy as a baseline.
* **regression**: one number per example (``problem_type = "regression"``, MSE loss). Metrics: Pearson and Spearman
  correlation (scipy) and mean squared error (scikit-learn), as GLUE's STS-B.
* **token-classification**: a list of words and one tag per word per row (JSON Lines / Parquet / datasets lists,
  CoNLL columns, or whitespace-separated strings in CSV / TSV). Each word's tag goes to its first sub-token, the
  other sub-tokens and the special tokens get -100 (ignored by the loss), as Hugging Face's ``run_ner`` does.
  Metrics on the words that survive truncation: entity precision, recall and F1 from ``seqeval`` (the CoNLL-2000
  ``conlleval`` definition: micro-averaged over entity types, an entity counts when its type and span match) when
  every tag is ``O`` or carries a ``B-`` / ``I-`` / ``E-`` / ``S-`` prefix, and word-level accuracy always.

Bad input stops with a :class:`~modernalbert.data.tables.TableError` naming the file, the line (or row) and the
fix: an empty text, a missing label, a label of the wrong type, a label of a validation or test file that the
training file lacks, words and tags of different lengths.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.tables import Table, TableError, cell_text, cell_value
from .config import FILE_TASKS, FileDataConfig, FileTask, FinetuneConfig

# Default columns per task (FileDataConfig.text_column / label_column); "tokens"/"tags" as in CoNLL datasets.
DEFAULT_COLUMNS = {"classification": ("text", "label"), "regression": ("text", "label"),
                   "token-classification": ("tokens", "tags")}
# The evaluation splits, in the order they are scored.
EVAL_SPLITS = ("validation", "test")
# Tags seqeval reads as entity chunks (IOB1/IOB2/IOE/IOBES prefixes, and the outside tag).
_CHUNK_TAG = re.compile(r"^(O|[BIESLU]-.+)$")


# ============================================================================================ reading


def _columns(task: str, data: FileDataConfig) -> tuple[str, str | None, str]:
    text, label = DEFAULT_COLUMNS[task]
    if data.text_pair_column is not None and task == "token-classification":
        raise ValueError("text_pair_column (--text-pair-column) applies to classification and regression, not to "
                         "token classification.")
    return data.text_column or text, data.text_pair_column, data.label_column or label


def open_table(source: str, role: str, data: FileDataConfig) -> Table:
    """The :class:`Table` of one file given as the ``role`` (``train``, ``validation`` or ``test``) data."""
    split = {"train": data.train_split, "validation": data.validation_split, "test": data.test_split}[role]
    return Table(source, format=data.format, split=split, config=data.dataset_config)


def _label_key(value: Any, where: str, column: str) -> str:
    """A classification label as a name: strings stripped, integers (also 3.0) written as digits."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TableError(f"{where}: the label in column {column!r} is a {type(value).__name__} ({str(value)[:60]!r}); a "
                     "class label is a name or an integer id (for a number to predict, fine-tune for regression).")


def _class_name(value: Any, names: list[str] | None, where: str, column: str) -> str:
    """A label as a class name: a ``ClassLabel`` id through the dataset's names, anything else by :func:`_label_key`."""
    if names is None or not isinstance(value, int) or isinstance(value, bool):
        return _label_key(value, where, column)
    if not 0 <= value < len(names):  # datasets write -1 for "no label" (e.g. GLUE test splits)
        raise TableError(f"{where}: label id {value} in column {column!r} is not one of the dataset's classes "
                         f"{names} (-1 means unlabelled); give labelled data or drop the row.")
    return names[value]


def _score(value: Any, where: str, column: str) -> float:
    try:
        score = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise TableError(f"{where}: the label in column {column!r} is {str(value)[:60]!r}, not a number; regression "
                         "needs one number per row (for class names, fine-tune for classification).") from None
    if not math.isfinite(score) or isinstance(value, bool):
        raise TableError(f"{where}: the label in column {column!r} is {value!r}, not a finite number; fix the row.")
    return score


def _words(value: Any, where: str, column: str, what: str) -> list[Any]:
    """A list of words or tags: a list as it is, a string split on whitespace (CSV / TSV)."""
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, (list, tuple)) or not value:
        kind = "empty" if isinstance(value, (list, tuple)) else f"a {type(value).__name__}, not a list"
        raise TableError(f"{where}: the {what} in column {column!r} are {kind}; give a list (JSON Lines, Parquet) or "
                         "a whitespace-separated string (CSV, TSV), or drop the row.")
    return list(value)


def _same_label_kind(first: tuple[str, Any], where: str, value: Any, column: str) -> None:
    """Typed files (JSON Lines, Parquet) give labels as numbers or strings: ``1`` and ``"good"`` in one column would
    silently become two unrelated classes ``"1"`` and ``"good"``."""
    def kind(v: Any) -> str:
        return "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else "string"

    if kind(value) != kind(first[1]):
        raise TableError(f"{where}: the label in column {column!r} is the {kind(value)} {value!r}, but {first[0]} "
                         f"has the {kind(first[1])} {first[1]!r}; give every label the same type (all class names or "
                         "all integer ids).")


def read_examples(table: Table, task: str, data: FileDataConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, example)`` for every row of ``table``, checked: ``{"texts": (a,) or (a, b), "label": raw}`` for
    classification (the label as a name) and regression (a float), ``{"words", "tags"}`` for token classification.

    Raises:
        TableError: A missing column, an empty text, a missing or malformed label (file, line or row named).
    """
    text, pair, label = _columns(task, data)
    names = table.label_names(label)
    first: tuple[str, Any] | None = None  # (where, value) of the first class label: typed files must not mix kinds
    for where, row in table.located_rows([c for c in (text, pair, label) if c is not None]):
        value = cell_value(row, label, where)
        if task == "classification":
            first = first or (where, value)
            _same_label_kind(first, where, value, label)
        if task == "token-classification":
            words = [str(w) for w in _words(row.get(text), where, text, "words")]
            tags = _words(value, where, label, "tags")
            if len(words) != len(tags):
                raise TableError(f"{where}: {len(words)} words but {len(tags)} tags; give one tag per word.")
            tags = [_class_name(t, names, where, label) for t in tags]
            yield where, {"words": words, "tags": tags}
            continue
        texts = (cell_text(row, text, where),) + (() if pair is None else (cell_text(row, pair, where),))
        if task == "regression":
            yield where, {"texts": texts, "label": _score(value, where, label)}
        else:
            yield where, {"texts": texts, "label": _class_name(value, names, where, label)}


def label_list(train: Sequence[dict[str, Any]], task: str, data: FileDataConfig, names: list[str] | None) -> list[str]:
    """The class names (or tags) in id order: ``data.labels``, else a dataset's ``ClassLabel`` names, else the
    training labels sorted (numerically when all are integers).

    Raises:
        TableError: A training label missing from ``data.labels``; fewer than two classes.
    """
    seen = Counter(t for ex in train for t in ex["tags"]) if task == "token-classification" else \
        Counter(ex["label"] for ex in train)
    if data.labels is not None:
        unknown = sorted(set(seen) - set(data.labels))
        if unknown:
            raise TableError(f"The training data has label(s) {unknown[:10]} that labels={list(data.labels)} "
                             "(--labels) lacks; add them.")
        labels = list(data.labels)
    elif names is not None:
        labels = list(names)
    elif all(re.fullmatch(r"-?\d+", k) for k in seen):
        labels = sorted(seen, key=int)
    else:
        labels = sorted(seen)
    if len(labels) < 2:
        raise TableError(f"The training data has a single label {labels}; classification needs at least two.")
    return labels


def _to_ids(examples: list[tuple[str, dict[str, Any]]], task: str, label2id: dict[str, int]) -> list[dict[str, Any]]:
    """Replace label names by ids (token classification: ``tags`` by ``tag_ids``); an unknown label is named."""
    out = []
    for where, ex in examples:
        names = ex["tags"] if task == "token-classification" else [ex["label"]]
        for name in names:
            if name not in label2id:
                raise TableError(f"{where}: label {name!r} is not among the training labels {list(label2id)[:20]}; "
                                 "fix the row, or name every label in labels= (--labels).")
        ids = [label2id[n] for n in names]
        out.append({**ex, "tag_ids": ids} if task == "token-classification" else {**ex, "label": ids[0]})
    return out


# ============================================================================================ tokenisation


def encode_words(examples: Sequence[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Tokenise word lists; ``labels`` holds each word's tag id on its first sub-token and -100 elsewhere (other
    sub-tokens, special tokens), as Hugging Face's ``run_ner`` (``label_all_tokens=False``) aligns them.

    Returns:
        Features ``{"input_ids", ["token_type_ids"], "labels", "index", "words_kept"}``; ``words_kept`` counts the
        words that kept a first sub-token after truncation (the others are not scored).

    Raises:
        ValueError: A tokenizer without word alignment (a "slow" Python tokenizer).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"Token classification needs a fast tokenizer (word_ids), but {type(tokenizer).__name__} is "
                         "a slow one; save the model with a tokenizers-backed (fast) tokenizer.")
    features = []
    for start in range(0, len(examples), 1000):
        part = examples[start:start + 1000]
        enc = tokenizer([e["words"] for e in part], is_split_into_words=True, truncation=True, max_length=max_length)
        for j, ex in enumerate(part):
            labels, previous = [], None
            for word in enc.word_ids(j):
                labels.append(ex["tag_ids"][word] if word is not None and word != previous else -100)
                previous = word
            feat: dict[str, Any] = {"input_ids": enc["input_ids"][j], "labels": labels, "index": start + j}
            if "token_type_ids" in enc:
                feat["token_type_ids"] = enc["token_type_ids"][j]
            feat["words_kept"] = sum(v != -100 for v in labels)
            features.append(feat)
    return features


def word_collator(tokenizer: Any) -> Any:
    """``transformers.DataCollatorForTokenClassification`` (labels padded with -100), dropping ``words_kept``."""
    from transformers import DataCollatorForTokenClassification

    from .common import padding_collator

    padding_collator(tokenizer)  # the same checks: a pad token, right padding
    collate = DataCollatorForTokenClassification(tokenizer, return_tensors="pt")

    def collate_fn(features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate([{k: v for k, v in f.items() if k != "words_kept"} for f in features])

    return collate_fn


# ============================================================================================ metrics


def classification_metrics(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro-averaged F1 over the classes present in either side (scikit-learn)."""
    from sklearn.metrics import f1_score

    from .glue import accuracy

    macro = f1_score(np.asarray(labels), np.asarray(predictions), average="macro", zero_division=0.0)
    return {"accuracy": accuracy(predictions, labels), "macro_f1": float(macro)}


def regression_metrics(predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation (scipy; NaN when a side is constant) and mean squared error (scikit-learn)."""
    from sklearn.metrics import mean_squared_error

    from .glue import pearson, spearman

    return {"pearson": pearson(predictions, labels), "spearman": spearman(predictions, labels),
            "mse": float(mean_squared_error(np.asarray(labels, dtype=np.float64),
                                            np.asarray(predictions, dtype=np.float64)))}


def token_metrics(predictions: Sequence[Sequence[str]], labels: Sequence[Sequence[str]]) -> dict[str, float]:
    """Word accuracy, and seqeval's entity precision / recall / F1 (CoNLL ``conlleval`` definition, micro-averaged)
    when every tag is a chunk tag (``O``, ``B-X``, ``I-X`` ...; other tag sets, e.g. part-of-speech, have no
    entities to match)."""
    try:
        from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
    except ImportError as err:
        raise ValueError("Token-classification metrics need seqeval: pip install 'modernalbert[eval]' (or seqeval)."
                         ) from err

    metrics = {"accuracy": float(accuracy_score(labels, predictions))}
    if all(_CHUNK_TAG.match(t) for seq in (*labels, *predictions) for t in seq):
        metrics.update(entity_precision=float(precision_score(labels, predictions, zero_division=0)),
                       entity_recall=float(recall_score(labels, predictions, zero_division=0)),
                       entity_f1=float(f1_score(labels, predictions, zero_division=0)))
    return metrics


def _majority(labels: Sequence[str]) -> dict[str, Any]:
    label, count = Counter(labels).most_common(1)[0]
    return {"majority_label": label, "majority_accuracy": count / len(labels)}


# ============================================================================================ running

HEADS = {"classification": "sequence-classification", "regression": "sequence-classification",
         "token-classification": "token-classification"}


def _head_kwargs(task: str, labels: list[str] | None) -> dict[str, Any]:
    if labels is None:
        return {"num_labels": 1, "problem_type": "regression"}
    kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
              "label2id": {n: i for i, n in enumerate(labels)}}
    return kwargs if task == "token-classification" else {**kwargs, "problem_type": "single_label_classification"}


def _logits_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    from .common import model_inputs

    inputs = {k: v for k, v in model_inputs(model, batch).items() if k != "labels"}
    logits = model(**inputs).logits.float()
    if logits.dim() == 3:  # token classification (B, L, C): the predicted id of every position
        return list(logits.argmax(-1).cpu().numpy())
    return list(logits.cpu().numpy())


def score_features(model: torch.nn.Module, task: str, features: list[dict[str, Any]], *, tokenizer: Any,
                   batch_size: int, precision: str, labels: list[str] | None, desc: str) -> dict[str, float]:
    """Predict ``features`` (length-bucketed, in input order) and compute the task's metrics against their labels."""
    from .common import predict

    token = task == "token-classification"
    outputs = predict(model, features, _logits_fn, batch_size=batch_size, tokenizer=tokenizer, precision=precision,
                      collate_fn=word_collator(tokenizer) if token else None, desc=desc)
    if task == "regression":
        return regression_metrics([float(o[0]) for o in outputs], [f["labels"] for f in features])
    if not token:
        return classification_metrics([int(np.argmax(o)) for o in outputs], [f["labels"] for f in features])
    assert labels is not None
    gold, pred = [], []
    for out, feat in zip(outputs, features):
        kept = [i for i, v in enumerate(feat["labels"]) if v != -100]  # first sub-tokens of the words kept
        gold.append([labels[feat["labels"][i]] for i in kept])
        pred.append([labels[int(out[i])] for i in kept])
    return token_metrics(pred, gold)


def _read_split(source: str, role: str, task: str, data: FileDataConfig, limit: int | None) -> tuple[Table, list]:
    from .glue import subsample

    table = open_table(source, role, data)
    examples = subsample(list(read_examples(table, task, data)), limit)
    if not examples:
        raise TableError(f"{table.name} holds no example; give a file with at least one row.")
    return table, examples


def _encode(task: str, examples: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    from .glue import encode

    if task == "token-classification":
        return encode_words(examples, tokenizer, max_length)
    return encode(examples, tokenizer, max_length)


def finetune_on_files(model: str, task: FileTask, train: str, *, validation: str | None = None,
                      test: str | None = None, data: FileDataConfig | None = None, cfg: FinetuneConfig | None = None,
                      output_dir: str | None = None, save: bool = True) -> dict[str, Any]:
    """Fine-tune ``model`` on a labelled file and score it on the validation and test files (see the module notes).

    Args:
        model: A pre-trained model folder, packaged model name or Hub id (ModernAlbert or any HF encoder).
        task: ``"classification"``, ``"regression"`` or ``"token-classification"``.
        train: The training data: a CSV / TSV / JSON Lines / Parquet / CoNLL file, a ``save_to_disk`` folder or a
            cached Hub dataset name (its ``data.train_split``).
        validation: Data scored after training (its ``data.validation_split`` for a dataset).
        test: Data scored after training (its ``data.test_split`` for a dataset).
        data: Columns, label order, format, splits, subsamples (default :class:`FileDataConfig`).
        cfg: Hyper-parameters (default :class:`FinetuneConfig`; ``cfg.seed`` seeds the head, shuffling, dropout).
        output_dir: When given: the model, its tokenizer and its label map go to ``output_dir/model``
            (``save_pretrained``, written atomically) and the results to ``output_dir/results.json``.
        save: Save the model (``False``: results only).

    Returns:
        ``{"task", "model", "files", "labels", "seed", "config", "data", "metrics": {split: {metric: value}},
        "baselines", "history", "steps", "model_dir", "train_examples", "eval_examples", "seconds"}``.

    Raises:
        TableError: Bad data (the file, line or row, column and fix named); ValueError: an unknown task, a tokenizer
            that cannot pad, an ``output_dir`` that is a file; FileNotFoundError: a missing model or file.
    """
    from accelerate.utils import set_seed

    from ..model.loading import load_model, load_tokenizer, pad_token_id, save_model
    from .common import finetune
    from .glue import write_results

    if task not in FILE_TASKS:
        raise ValueError(f"Unknown task {task!r}: choose one of {list(FILE_TASKS)}.")
    if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
        # Checked before training, not found at the save after it.
        raise ValueError(f"--output-dir {output_dir} is a file, not a folder: name a folder (new or existing).")
    data, cfg, start = data or FileDataConfig(), cfg or FinetuneConfig(), time.perf_counter()
    if task == "regression" and data.labels is not None:
        raise ValueError(f"labels={list(data.labels)} (--labels) names classes, but regression predicts a number; "
                         "drop it, or fine-tune for classification.")
    tokenizer = load_tokenizer(model)
    pad_token_id(tokenizer)  # a tokenizer that cannot pad fails before the data is read
    table, train_rows = _read_split(train, "train", task, data, data.max_train_examples)
    sources = {role: src for role, src in (("validation", validation), ("test", test)) if src is not None}
    evals = {role: _read_split(src, role, task, data, data.max_eval_examples)[1] for role, src in sources.items()}
    labels = None
    if task != "regression":
        labels = label_list([ex for _, ex in train_rows], task, data, table.label_names(_columns(task, data)[2]))
        label2id = {n: i for i, n in enumerate(labels)}
        train_rows = list(zip((w for w, _ in train_rows), _to_ids(train_rows, task, label2id)))
        evals = {role: list(zip((w for w, _ in rows), _to_ids(rows, task, label2id))) for role, rows in evals.items()}
    train_features = _encode(task, [ex for _, ex in train_rows], tokenizer, cfg.max_length)
    eval_features = {role: _encode(task, [ex for _, ex in rows], tokenizer, cfg.max_length)
                     for role, rows in evals.items()}
    set_seed(cfg.seed)  # the new head's initialisation
    net = load_model(model, HEADS[task], **_head_kwargs(task, labels))
    net.config.finetuning_task = task  # saved with the model: what its head was trained for
    token = task == "token-classification"
    history = finetune(net, train_features, cfg, tokenizer=tokenizer, collate_fn=word_collator(tokenizer) if token
                       else None, desc=f"{task} seed {cfg.seed}")
    metrics = {role: score_features(net, task, feats, tokenizer=tokenizer, batch_size=cfg.eval_batch_size,
                                    precision=cfg.precision, labels=labels, desc=f"{task} {role}")
               for role, feats in eval_features.items()}
    model_dir = str(save_model(net, tokenizer, Path(output_dir) / "model")) if output_dir and save else None
    result = {
        "task": task, "model": str(model), "files": {"train": str(train), "validation": validation, "test": test},
        "labels": labels, "seed": cfg.seed, "config": cfg.to_dict(), "data": data.to_dict(), "metrics": metrics,
        "baselines": {} if labels is None or token else
        {role: _majority([labels[ex["label"]] for _, ex in rows]) for role, rows in evals.items()},
        "history": history.records, "steps": history.steps, "model_dir": model_dir,
        "train_examples": len(train_rows), "eval_examples": {role: len(rows) for role, rows in evals.items()},
        "words_scored": {role: sum(f["words_kept"] for f in feats) for role, feats in eval_features.items()}
        if token else {}, "seconds": time.perf_counter() - start,
    }
    if output_dir is not None:
        write_results(Path(output_dir) / "results.json", result)
    return result


__all__ = ["DEFAULT_COLUMNS", "EVAL_SPLITS", "FILE_TASKS", "HEADS", "FileTask", "classification_metrics",
           "encode_words", "finetune_on_files", "label_list", "open_table", "read_examples", "regression_metrics",
           "score_features", "token_metrics", "word_collator"]
