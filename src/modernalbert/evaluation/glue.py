"""GLUE (all nine tasks, official metrics) and the Rotten Tomatoes sentence-sentiment stand-in.

Tasks (:data:`TASKS`): CoLA (Matthews correlation), SST-2, QNLI, RTE, WNLI (accuracy), MRPC and QQP (accuracy and
F1 of the positive class), STS-B (Pearson and Spearman correlation; regression), MNLI (accuracy on the matched and
the mismatched dev sets), and ``rt-sentiment``: Rotten Tomatoes review snippets, ``fresh`` vs ``rotten``, split by
movie (:func:`modernalbert.data.rotten_tomatoes.sentiment_splits` with the split seed fixed at 0, independent of
the training seed). ``rt-sentiment`` is a real stand-in for SST-2-like sentence sentiment; it is *not* SST-2.

Data (``data=``):

* ``None`` or a Hugging Face dataset name (default ``nyu-mll/glue``): read with ``datasets.load_dataset(name,
  config)`` (needs the hub or the local ``datasets`` cache).
* A local folder in the original GLUE TSV format: the distribution's per-task folders (``CoLA/``, ``SST-2/``,
  ``MRPC/``, ``STS-B/``, ``QQP/``, ``MNLI/``, ``QNLI/``, ``RTE/``, ``WNLI/``; folder names matched case-insensitively)
  or one task's folder itself, with ``train.tsv`` and ``dev.tsv`` (MNLI: ``dev_matched.tsv`` and
  ``dev_mismatched.tsv``). Files are read as the reference GLUE loaders read them: tab-separated, quoting off
  (``csv.QUOTE_NONE``: quotes are text), a UTF-8 byte-order mark ignored (MRPC's files start with one); CoLA has no
  header and four columns (source, label, original judgement, sentence); the other files have a header and columns
  are found by name; STS-B's score is the last field (as in the reference processors). Labels may be written as
  names (``entailment``) or ids (``1``); ids follow the ``nyu-mll/glue`` label order (:attr:`GlueTask.labels`).
* A folder saved with ``datasets`` (``DatasetDict.save_to_disk``; that task's folder, or one sub-folder per task
  named by its ``nyu-mll/glue`` config).
* ``rt-sentiment``: ``None`` (the packaged CSV, fetched into the cache) or the path of the CSV (``.csv.bz2``).

Malformed rows stop the reading with a :class:`ValueError` naming file and line, with one documented exception:
QQP rows with fewer fields than the header (the original ``train.tsv`` has a few, broken by newlines inside
questions) are skipped, as the reference loaders skip them, and a warning gives their number and first lines.

The main score of a run (the one seeds are averaged on and a grid selects by) is the mean of the task's metrics
(GLUE's convention for MRPC, QQP and STS-B), averaged over the dev splits (MNLI: matched and mismatched): our
choice of a single number; every metric is reported.

Pearson and Spearman correlations are undefined when predictions (or labels) are constant: they are then NaN,
exactly like ``scipy.stats.pearsonr`` / ``spearmanr``, written as ``null`` in JSON and ranked last by a grid. The
Matthews correlation of a constant prediction is 0, like ``sklearn.metrics.matthews_corrcoef``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import random
import re
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import (
    FinetuneConfig,
    _check_path,
    finetune,
    load_model,
    load_tokenizer,
    mean_std,
    model_inputs,
    predict,
    save_model,
    set_seed,
    write_json,
)

DEFAULT_HF_NAME = "nyu-mll/glue"
# Tasks that start from an MNLI fine-tuned encoder in the ModernBERT protocol (``init_from``).
MNLI_START_TASKS = ("rte", "mrpc", "stsb")
# Subsamples (max_train_examples / max_eval_examples) are drawn with this seed, fixed so that every training seed
# and grid point sees the same examples (our choice).
SUBSAMPLE_SEED = 0

# ============================================================================================ task table


@dataclass(frozen=True)
class TsvLayout:
    """Where a task's fields sit in its TSV files.

    Attributes:
        text: The text columns: header names (files with a header) or 0-based field positions (headerless).
        label: The label column: a header name or a position (-1: the last field).
        header: Whether the first line is a header.
        fields: Required fields per row (headerless files; files with a header need the header's count).
        at_least: Rows may have more fields than required (STS-B, as in the reference processors).
        skip_short_rows: Skip rows with too few fields instead of failing (QQP; see the module notes).
    """

    text: tuple[str | int, ...]
    label: str | int
    header: bool = True
    fields: int | None = None
    at_least: bool = False
    skip_short_rows: bool = False


@dataclass(frozen=True)
class GlueTask:
    """One task of the table.

    Attributes:
        name: Canonical name (``"cola"`` … ``"wnli"``, ``"rt-sentiment"``).
        display: Name in reports.
        labels: Label names in id order (the ``nyu-mll/glue`` order), or ``None`` for regression (STS-B).
        metrics: Metric names (keys of :data:`METRICS`).
        dev_splits: The split(s) scores are reported on (MNLI has two).
        folder: The GLUE distribution's folder name (``None``: not a GLUE TSV task).
        hf_config: The ``nyu-mll/glue`` config name.
        hf_columns: The text columns of the Hugging Face dataset.
        tsv: The layout of ``train.tsv`` / ``dev*.tsv``.
        stand_in: A real stand-in, not the GLUE task (never reported as GLUE).
        description: One line for reports.
    """

    name: str
    display: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    dev_splits: tuple[str, ...] = ("validation",)
    folder: str | None = None
    hf_config: str | None = None
    hf_columns: tuple[str, ...] = ("sentence",)
    tsv: TsvLayout | None = None
    stand_in: bool = False
    description: str = ""

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def labelled_splits(self) -> tuple[str, ...]:
        """Splits with public labels (GLUE test labels are not public)."""
        return ("train", *self.dev_splits) + (("test",) if self.stand_in else ())


_PAIR = ("sentence1", "sentence2")
_NLI2 = ("entailment", "not_entailment")
TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask("cola", "CoLA", ("unacceptable", "acceptable"), ("mcc",), folder="CoLA", hf_config="cola",
                 tsv=TsvLayout(text=(3,), label=1, header=False, fields=4),
                 description="Corpus of Linguistic Acceptability (Matthews correlation)"),
        GlueTask("sst2", "SST-2", ("negative", "positive"), ("accuracy",), folder="SST-2", hf_config="sst2",
                 tsv=TsvLayout(text=("sentence",), label="label"),
                 description="Stanford Sentiment Treebank, binary (accuracy)"),
        GlueTask("mrpc", "MRPC", ("not_equivalent", "equivalent"), ("accuracy", "f1"), folder="MRPC",
                 hf_config="mrpc", hf_columns=_PAIR,
                 tsv=TsvLayout(text=("#1 String", "#2 String"), label="Quality"),
                 description="Microsoft Research Paraphrase Corpus (accuracy, F1)"),
        GlueTask("stsb", "STS-B", None, ("pearson", "spearman"), folder="STS-B", hf_config="stsb", hf_columns=_PAIR,
                 tsv=TsvLayout(text=("sentence1", "sentence2"), label=-1, at_least=True),
                 description="Semantic Textual Similarity Benchmark, 0-5 regression (Pearson, Spearman)"),
        GlueTask("qqp", "QQP", ("not_duplicate", "duplicate"), ("accuracy", "f1"), folder="QQP", hf_config="qqp",
                 hf_columns=("question1", "question2"),
                 tsv=TsvLayout(text=("question1", "question2"), label="is_duplicate", skip_short_rows=True),
                 description="Quora Question Pairs (accuracy, F1)"),
        GlueTask("mnli", "MNLI", ("entailment", "neutral", "contradiction"), ("accuracy",),
                 dev_splits=("validation_matched", "validation_mismatched"), folder="MNLI", hf_config="mnli",
                 hf_columns=("premise", "hypothesis"), tsv=TsvLayout(text=_PAIR, label="gold_label"),
                 description="Multi-Genre NLI (accuracy, matched and mismatched)"),
        GlueTask("qnli", "QNLI", _NLI2, ("accuracy",), folder="QNLI", hf_config="qnli",
                 hf_columns=("question", "sentence"), tsv=TsvLayout(text=("question", "sentence"), label="label"),
                 description="Question NLI (accuracy)"),
        GlueTask("rte", "RTE", _NLI2, ("accuracy",), folder="RTE", hf_config="rte", hf_columns=_PAIR,
                 tsv=TsvLayout(text=_PAIR, label="label"), description="Recognizing Textual Entailment (accuracy)"),
        GlueTask("wnli", "WNLI", ("not_entailment", "entailment"), ("accuracy",), folder="WNLI", hf_config="wnli",
                 hf_columns=_PAIR, tsv=TsvLayout(text=_PAIR, label="label"),
                 description="Winograd NLI (accuracy)"),
        GlueTask("rt-sentiment", "RT sentiment", ("rotten", "fresh"), ("accuracy",), stand_in=True,
                 description="Rotten Tomatoes sentence sentiment, split by movie (a real stand-in for SST-2, "
                             "not SST-2; accuracy)"),
    )
}
GLUE_TASKS = tuple(name for name, t in TASKS.items() if not t.stand_in)
_ALIASES = {"sst": "sst2", "sts": "stsb", "mnlim": "mnli", "rtsentiment": "rt-sentiment", "rt": "rt-sentiment"}
_SPLIT_ALIASES = {"dev": "validation", "val": "validation", "dev_matched": "validation_matched",
                  "dev_mismatched": "validation_mismatched", "matched": "validation_matched",
                  "mismatched": "validation_mismatched"}
_TSV_FILES = {"train": "train.tsv", "validation": "dev.tsv", "validation_matched": "dev_matched.tsv",
              "validation_mismatched": "dev_mismatched.tsv", "test": "test.tsv"}

# The layout of Quora Question Pairs as distributed with the paraphrase-identification split of Wang et al.
# (BiMPM; e.g. allennlp's ``quora_paraphrase.tsv``): no header, ``label \t question1 \t question2 \t id``.
QUORA_PARAPHRASE_LAYOUT = TsvLayout(text=(1, 2), label=0, header=False, fields=4)


def get_task(name: str) -> GlueTask:
    """The task named ``name`` (case and ``-``/``_`` insensitive: ``SST-2``, ``sts_b``, ``RT-sentiment``).

    Raises:
        ValueError: Unknown task (the message lists the known ones).
    """
    key = re.sub(r"[-_ ]", "", str(name).lower())
    key = _ALIASES.get(key, key)
    if key in TASKS:
        return TASKS[key]
    raise ValueError(f"Unknown task {name!r}: use one of {', '.join(TASKS)}.")


def resolve_split(task: GlueTask, split: str) -> str:
    """Canonical split name (``dev`` → ``validation``; MNLI ``matched`` → ``validation_matched``).

    Raises:
        ValueError: The task has no such split, or its labels are not public (GLUE test sets).
    """
    s = _SPLIT_ALIASES.get(split.lower(), split.lower())
    if s == "validation" and task.dev_splits != ("validation",):
        raise ValueError(f"{task.display} has two dev splits, {' and '.join(task.dev_splits)}: name one.")
    if s == "test" and not task.stand_in:
        raise ValueError(f"GLUE {task.display} test labels are not public: evaluate on the dev split(s) "
                         f"({', '.join(task.dev_splits)}), or submit test predictions to gluebenchmark.com.")
    if s not in task.labelled_splits:
        raise ValueError(f"{task.display} has no split {split!r}: use one of {', '.join(task.labelled_splits)}.")
    return s


# ============================================================================================ metrics


def _arrays(predictions: Sequence[Any], labels: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be 1-D of the same length.")
    if len(p) == 0:
        raise ValueError("No predictions to score: the evaluation split is empty.")
    return p, y


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of exact matches (``sklearn.metrics.accuracy_score``)."""
    p, y = _arrays(predictions, labels)
    return float(np.mean(p == y))


def f1(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the ``positive`` class (``sklearn.metrics.f1_score``; 0 when there is no positive at all)."""
    p, y = _arrays(predictions, labels)
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation, multi-class form (``sklearn.metrics.matthews_corrcoef``; 0 when undefined, e.g. a
    constant prediction)."""
    p, y = _arrays(predictions, labels)
    classes, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
    yt, yp = codes[: len(y)], codes[len(y):]
    cm = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(cm, (yt, yp), 1.0)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n, correct = cm.sum(), np.trace(cm)
    cov_yp = correct * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_yy = n * n - t_sum @ t_sum
    if cov_pp * cov_yy == 0:
        return 0.0
    return float(cov_yp / math.sqrt(cov_yy * cov_pp))


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson correlation (``scipy.stats.pearsonr``); NaN when either side is constant (undefined)."""
    p, y = _arrays(predictions, labels)
    p, y = p.astype(np.float64), y.astype(np.float64)
    if len(p) < 2 or np.all(p == p[0]) or np.all(y == y[0]):
        return float("nan")
    dp, dy = p - p.mean(), y - y.mean()
    # Scale by the largest deviation before normalising (as scipy does): huge values cannot overflow the products.
    dp, dy = dp / np.abs(dp).max(), dy / np.abs(dy).max()
    dp, dy = dp / np.linalg.norm(dp), dy / np.linalg.norm(dy)
    return float(np.clip(dp @ dy, -1.0, 1.0))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank (``scipy.stats.rankdata(method="average")``)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(x)])
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = first[group] + (counts[group] + 1) / 2.0
    return ranks


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``; ties averaged); NaN when either side is constant."""
    p, y = _arrays(predictions, labels)
    return pearson(_ranks(p.astype(np.float64)), _ranks(y.astype(np.float64)))


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": matthews_corrcoef, "pearson": pearson, "spearman": spearman}


def compute_metrics(task: str | GlueTask, predictions: Sequence[Any], labels: Sequence[Any]) -> dict[str, float]:
    """The task's official metrics of ``predictions`` (class ids, or scores for STS-B) against ``labels``."""
    spec = task if isinstance(task, GlueTask) else get_task(task)
    return {name: METRICS[name](predictions, labels) for name in spec.metrics}


def main_score(metrics: dict[str, dict[str, float]]) -> float:
    """Mean over splits of the mean of each split's metrics (NaN if any is NaN; see the module notes)."""
    per_split = [float(np.mean(list(m.values()))) for m in metrics.values()]
    return float(np.mean(per_split)) if per_split else float("nan")


def majority_baseline(task: GlueTask, labels: Sequence[int]) -> dict[str, Any]:
    """The most frequent label of ``labels`` and the accuracy of always predicting it (classification tasks)."""
    label, count = Counter(int(v) for v in labels).most_common(1)[0]
    return {"majority_label": task.labels[label] if task.labels else label, "majority_accuracy": count / len(labels)}


# ============================================================================================ loading


def _parse_label(task: GlueTask, raw: str, where: str) -> int | float:
    value = raw.strip()
    if task.labels is None:
        try:
            score = float(value)
        except ValueError:
            raise ValueError(f"{where}: score {raw!r} is not a number ({task.display} is a regression task; "
                             "fix or drop the row).") from None
        if not math.isfinite(score):
            raise ValueError(f"{where}: score {raw!r} is not finite; fix or drop the row.")
        return score
    if value in task.labels:
        return task.labels.index(value)
    if value.isdigit() and int(value) < len(task.labels):
        return int(value)
    raise ValueError(f"{where}: label {raw!r} is not in the {task.display} label set "
                     f"{list(task.labels)} (or ids 0-{len(task.labels) - 1}); fix the row or choose the right task.")


def read_tsv(path: str | os.PathLike, task: str | GlueTask, layout: TsvLayout | None = None) -> list[dict[str, Any]]:
    """Read one labelled file in a GLUE TSV layout into examples ``{"texts": (a,) or (a, b), "label"}``.

    Args:
        path: The ``.tsv`` file.
        task: The task (gives the label set; and the layout unless ``layout`` is given).
        layout: Another layout, e.g. :data:`QUORA_PARAPHRASE_LAYOUT` read as ``"qqp"``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: A missing header column, a row with the wrong number of fields or an unknown label (the
            message names file and line).
    """
    spec = task if isinstance(task, GlueTask) else get_task(task)
    layout = layout or spec.tsv
    if layout is None:
        raise ValueError(f"{spec.display} has no TSV layout: it is not read from GLUE TSV files.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give a folder in the GLUE TSV layout "
                                f"({spec.folder or spec.name}/train.tsv, dev*.tsv).")
    stat = path.stat()
    examples, skipped = _read_tsv_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, spec, layout)
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} malformed row(s) with too few fields (lines "
                      f"{', '.join(map(str, skipped[:5]))}{' …' if len(skipped) > 5 else ''}), as the reference "
                      f"{spec.display} loaders do.", stacklevel=2)
    return list(examples)


@functools.lru_cache(maxsize=8)
def _read_tsv_cached(path: str, mtime_ns: int, size: int, spec: GlueTask,
                     layout: TsvLayout) -> tuple[tuple[dict[str, Any], ...], tuple[int, ...]]:
    # Cached by (path, mtime, size): seeds and grid points re-read the same files.
    examples: list[dict[str, Any]] = []
    skipped: list[int] = []
    # utf-8-sig: MRPC's files begin with a byte-order mark; QUOTE_NONE: quotes are part of the text (GLUE's files
    # have unbalanced quotes that a quoting reader would merge across lines).
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns: list[int] = []
        label_col: int = 0
        width = layout.fields or 0
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line (e.g. at the end of a file)
            if layout.header and not columns:
                header = [h.strip() for h in row]
                wanted = [c for c in (*layout.text, layout.label) if isinstance(c, str)]
                missing = [c for c in wanted if c not in header]
                if missing:
                    raise ValueError(f"{path}, line {line}: header {header} lacks column(s) {missing} of the "
                                     f"{spec.display} TSV layout; is this the {spec.display} file?")
                columns = [header.index(c) if isinstance(c, str) else c for c in layout.text]
                label_col = header.index(layout.label) if isinstance(layout.label, str) else layout.label
                width = len(header)
                continue
            if not columns:
                columns = [int(c) for c in layout.text]
                label_col = int(layout.label)
            bad = len(row) < width or (len(row) > width and not layout.at_least)
            if bad:
                if layout.skip_short_rows and len(row) < width:
                    skipped.append(line)
                    continue
                raise ValueError(f"{path}, line {line}: {len(row)} tab-separated fields, the {spec.display} layout "
                                 f"has {'at least ' if layout.at_least else ''}{width}; fix the row (quoting is "
                                 "off: a tab or newline inside a text breaks it).")
            label = _parse_label(spec, row[label_col], f"{path}, line {line}")
            examples.append({"texts": tuple(row[c] for c in columns), "label": label})
    return tuple(examples), tuple(skipped)


def _task_folder(root: Path, spec: GlueTask) -> Path:
    names = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for candidate in (spec.folder, spec.hf_config, spec.name):
        if candidate and candidate.lower() in names:
            return names[candidate.lower()]
    if any((root / f).is_file() for f in ("train.tsv", "dev.tsv", "dev_matched.tsv", "dataset_dict.json")):
        return root  # the task's folder itself
    raise FileNotFoundError(f"{root} has no {spec.folder}/ folder and no train.tsv / dev*.tsv: give the GLUE "
                            f"distribution's folder (with {spec.folder}/train.tsv) or the {spec.folder} folder.")


def _load_hf(spec: GlueTask, split: str, data: str) -> list[dict[str, Any]]:
    import datasets

    path = Path(data).expanduser()
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(_task_folder(path, spec)))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"{path}: the saved dataset has splits {list(ds)}, not {split!r}.")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(data, spec.hf_config, split=split)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # hub / cache errors come in many types: one clear message
        raise ValueError(f"Could not load {spec.display} split {split!r} from {data!r} ({type(err).__name__}: "
                         f"{str(err)[:300]}). Offline, give --data a local folder in the GLUE TSV format.") from err
    missing = [c for c in (*spec.hf_columns, "label") if c not in ds.column_names]
    if missing:
        raise ValueError(f"{data!r} split {split!r} lacks column(s) {missing}; {spec.display} needs "
                         f"{[*spec.hf_columns, 'label']} (the nyu-mll/glue columns).")
    feature = ds.features.get("label")
    names = getattr(feature, "names", None)
    if spec.labels is not None and names is not None and tuple(names) != spec.labels:
        raise ValueError(f"{data!r}: label names {names} differ from the {spec.display} label order "
                         f"{list(spec.labels)}; relabel the dataset or choose the right task.")
    examples = []
    for i, rec in enumerate(ds):
        label = rec["label"]
        where = f"{data} [{spec.hf_config or spec.name}/{split}] row {i}"
        if spec.labels is None:
            label = _parse_label(spec, str(label), where)
        elif isinstance(label, str):
            label = _parse_label(spec, label, where)
        elif not 0 <= int(label) < spec.num_labels:
            if int(label) == -1:
                raise ValueError(f"{where}: label -1 (no public label); this split cannot be scored.")
            raise ValueError(f"{where}: label {label} is outside the {spec.display} label ids "
                             f"0-{spec.num_labels - 1}; fix the data or choose the right task.")
        examples.append({"texts": tuple(str(rec[c]) for c in spec.hf_columns), "label": label})
    return examples


@functools.lru_cache(maxsize=2)
def _rt_splits(path: str | None) -> dict[str, tuple[dict[str, Any], ...]]:
    from ..data.rotten_tomatoes import sentiment_splits

    # The split seed is fixed (0): every training seed is scored on the same movies.
    splits = sentiment_splits(seed=0, path=path)
    return {k: tuple({"texts": (r["sentence"],), "label": int(r["label"])} for r in v) for k, v in splits.items()}


def load_split(task: str | GlueTask, split: str, data: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Examples ``{"texts", "label"}`` of one labelled split.

    Args:
        task: A task name or :class:`GlueTask`.
        split: ``train``, ``validation`` (``dev``), MNLI's ``validation_matched`` / ``validation_mismatched``, or
            ``test`` (``rt-sentiment`` only: GLUE test labels are not public).
        data: See the module notes (``None``: ``nyu-mll/glue``, or the packaged RT file).

    Raises:
        ValueError: Unknown task or split, unreadable or malformed data, an empty split.
        FileNotFoundError: A local folder or file that does not exist.
    """
    spec = task if isinstance(task, GlueTask) else get_task(task)
    split = resolve_split(spec, split)
    if spec.stand_in:
        if data is not None and not Path(data).expanduser().is_file():
            raise FileNotFoundError(f"{data} is not a file: give the Rotten Tomatoes CSV "
                                    "(rotten_tomatoes_corpus_full.csv.bz2), or nothing for the packaged one.")
        examples = list(_rt_splits(None if data is None else str(Path(data).expanduser().resolve()))[split])
        where = f"{spec.display} {split}"
    else:
        source = str(data) if data is not None else DEFAULT_HF_NAME
        local = Path(source).expanduser()
        looks_local = local.exists() or source.startswith((".", "/", "~"))
        if looks_local and not local.is_dir():
            raise FileNotFoundError(f"GLUE data folder {source} does not exist: give the GLUE distribution's "
                                    f"folder (with {spec.folder}/train.tsv) or a Hugging Face dataset name.")
        if local.is_dir() and not (local / "dataset_dict.json").is_file() and not any(
                (p / "dataset_dict.json").is_file() for p in local.iterdir() if p.is_dir()):
            folder = _task_folder(local, spec)
            file = folder / _TSV_FILES[split]
            examples = read_tsv(file, spec)
            where = str(file)
        else:
            examples = _load_hf(spec, split, source)
            where = f"{source} [{spec.hf_config}/{split}]"
    if not examples:
        raise ValueError(f"{where}: the {split} split of {spec.display} is empty; give a file with examples.")
    return examples


def subsample(examples: Sequence[dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
    """At most ``n`` examples, drawn with the fixed :data:`SUBSAMPLE_SEED` and kept in their order."""
    if n is None or n >= len(examples):
        return list(examples)
    if n < 1:
        raise ValueError(f"A subsample needs at least one example, got {n}.")
    keep = sorted(random.Random(SUBSAMPLE_SEED).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def encode(examples: Sequence[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Tokenise examples into features ``{"input_ids", ["token_type_ids"], "labels", "index"}`` (truncated to
    ``max_length`` tokens, longest text first for pairs; padding happens per batch)."""
    features: list[dict[str, Any]] = []
    chunk = 1000
    for start in range(0, len(examples), chunk):
        part = examples[start:start + chunk]
        first = [e["texts"][0] for e in part]
        second = [e["texts"][1] for e in part] if len(part[0]["texts"]) > 1 else None
        enc = tokenizer(first, second, truncation=True, max_length=max_length)
        for j, ex in enumerate(part):
            feat: dict[str, Any] = {"input_ids": enc["input_ids"][j]}
            if "token_type_ids" in enc:
                feat["token_type_ids"] = enc["token_type_ids"][j]
            feat["labels"] = ex["label"]
            feat["index"] = start + j
            features.append(feat)
    return features


# ============================================================================================ models


def _label_names(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels)]


def check_model_labels(path: str | os.PathLike, task: str | GlueTask, *, fine_tuned: bool) -> Any:
    """Check that a model folder fits the task's labels; returns its config.

    Args:
        path: Model folder or hub name.
        task: The task.
        fine_tuned: ``True`` to evaluate (the folder must be a sequence classifier for this task's labels);
            ``False`` to fine-tune (a pre-trained encoder, or a classifier of the same labels to train further).

    Raises:
        ValueError: A label-count or label-name mismatch, or (``fine_tuned``) a folder without a classifier.
    """
    from transformers import AutoConfig

    import modernalbert  # noqa: F401  (registers model_type="modernalbert")

    spec = task if isinstance(task, GlueTask) else get_task(task)
    _check_path(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as err:
        raise ValueError(f"Could not open the model config of {path} ({err}); give a saved model folder (a hub "
                         "name needs the hub or its local cache).") from err
    archs = config.architectures or []
    is_classifier = any(a.endswith("ForSequenceClassification") for a in archs)
    if fine_tuned and not is_classifier:
        raise ValueError(f"{path} is not a fine-tuned sequence classifier (architectures {archs}); fine-tune it "
                         f"first: `modernalbert finetune ... {path}`.")
    if not is_classifier:
        return config
    names = _label_names(config)
    generic = all(re.fullmatch(r"LABEL_\d+", n) for n in names)
    if config.num_labels != spec.num_labels:
        kind = "regression (1 output)" if spec.is_regression else f"{spec.num_labels} labels {list(spec.labels)}"
        fix = ("evaluate it on the task it was fine-tuned for" if fine_tuned
               else f"start from its encoder with a new head: init_from={str(path)!r} (--init-from)")
        raise ValueError(f"{path} was saved with num_labels={config.num_labels} {names} but {spec.display} is "
                         f"{kind}; {fix}.")
    if not spec.is_regression and not generic and names != list(spec.labels):
        fix = ("evaluate it on the task it was fine-tuned for" if fine_tuned
               else f"start from its encoder with a new head: init_from={str(path)!r} (--init-from)")
        raise ValueError(f"{path} was fine-tuned for labels {names}, not the {spec.display} labels "
                         f"{list(spec.labels)}; {fix}.")
    return config


def _head_kwargs(spec: GlueTask) -> dict[str, Any]:
    if spec.is_regression:
        return {"num_labels": 1, "problem_type": "regression"}
    return {"num_labels": spec.num_labels, "problem_type": "single_label_classification",
            "id2label": dict(enumerate(spec.labels)), "label2id": {n: i for i, n in enumerate(spec.labels)}}


def _new_classifier(model: torch.nn.Module, seed: int) -> None:
    # "New head" for init_from: the final projection is drawn afresh even when its shape matches (from_pretrained
    # only re-initialises mismatched sizes). N(0, initializer_range) as in BERT; our choice for other families.
    layer = getattr(model, "classifier", None)
    if isinstance(getattr(layer, "out_proj", None), torch.nn.Linear):  # RoBERTa-style heads
        layer = layer.out_proj
    if isinstance(layer, torch.nn.Sequential):
        layer = next((m for m in reversed(layer) if isinstance(m, torch.nn.Linear)), None)
    if not isinstance(layer, torch.nn.Linear):
        return
    gen = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config, "initializer_range", 0.02))
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
        if layer.bias is not None:
            layer.bias.zero_()


def _logits_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    inputs = {k: v for k, v in model_inputs(model, batch).items() if k != "labels"}
    return list(model(**inputs).logits.float().cpu().numpy())


def _score(model: torch.nn.Module, spec: GlueTask, features: list[dict[str, Any]], *, batch_size: int,
           pad_token_id: int, precision: str, desc: str) -> dict[str, float]:
    logits = np.stack(predict(model, features, _logits_fn, batch_size=batch_size, pad_token_id=pad_token_id,
                              desc=desc, precision=precision))
    preds = logits[:, 0] if spec.is_regression else logits.argmax(axis=-1)
    return compute_metrics(spec, preds, [f["labels"] for f in features])


def _pad_id(tokenizer: Any, path: Any) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError(f"The tokenizer of {path} has no pad token; set one (tokenizer.pad_token = ...) and save it.")
    return int(tokenizer.pad_token_id)


def _json_safe(obj: Any) -> Any:
    # NaN (an undefined correlation) becomes null: strict JSON has no NaN.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_results(path: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write results as JSON (atomic; NaN as ``null``)."""
    return write_json(path, _json_safe(results))


# ============================================================================================ Python API


def finetune_task(model_path: str, task: str, cfg: FinetuneConfig, *, data: str | None = None,
                  output_dir: str | None = None, init_from: str | None = None,
                  max_train_examples: int | None = None, max_eval_examples: int | None = None,
                  save: bool = True) -> dict:
    """Fine-tune ``model_path`` (or ``init_from``'s encoder) on ``task`` and score it on the dev split(s).

    Args:
        model_path: A pre-trained model folder or hub name (ModernAlbert or any Hugging Face encoder; a
            classifier folder for the same labels continues training).
        task: A task name (:data:`TASKS`).
        cfg: Hyper-parameters (``cfg.seed`` seeds the new head, shuffling and dropout).
        data: See the module notes.
        output_dir: When given: the fine-tuned model and tokenizer go to ``output_dir/model`` and the results to
            ``output_dir/results.json``.
        init_from: Start from this fine-tuned folder's encoder with a new head (sizes of the old classifier are
            ignored), e.g. the MNLI model for RTE, MRPC and STS-B (the ModernBERT protocol). Its tokenizer is used.
        max_train_examples: Train on a fixed subsample of this many examples (``None``: all).
        max_eval_examples: Score a fixed subsample of each dev split (``None``: all).
        save: Save the model into ``output_dir/model`` (``False``: results only).

    Returns:
        ``{"task", "model", "init_from", "seed", "config", "metrics": {split: {metric: value}}, "main_score",
        "baselines", "history", "model_dir", "train_examples", "eval_examples", "steps", "seconds", "stand_in",
        "description"}``.

    Raises:
        ValueError: Unknown task, label mismatch with the model folder, bad or empty data.
        FileNotFoundError: Missing model or data.
    """
    spec = get_task(task)
    start = time.perf_counter()
    source = init_from or model_path
    if not init_from:
        check_model_labels(source, spec, fine_tuned=False)
    try:
        tokenizer = load_tokenizer(source)
    except ValueError:
        if not init_from:
            raise
        tokenizer = load_tokenizer(model_path)  # an init_from folder saved without its tokenizer
    pad = _pad_id(tokenizer, source)
    train = subsample(load_split(spec, "train", data), max_train_examples)
    devs = {s: subsample(load_split(spec, s, data), max_eval_examples) for s in spec.dev_splits}
    train_features = encode(train, tokenizer, cfg.max_length)
    dev_features = {s: encode(ex, tokenizer, cfg.max_length) for s, ex in devs.items()}
    set_seed(cfg.seed)  # the new head's initialisation
    extra = {"ignore_mismatched_sizes": True} if init_from else {}
    model = load_model(source, "sequence-classification", **_head_kwargs(spec), **extra)
    if init_from:
        _new_classifier(model, cfg.seed)
    model.config.finetuning_task = spec.name  # saved with the model: what its head was trained for
    history = finetune(model, train_features, cfg, pad_token_id=pad, desc=f"{spec.name} seed {cfg.seed}")
    metrics = {s: _score(model, spec, feats, batch_size=cfg.eval_batch_size, pad_token_id=pad,
                         precision=cfg.precision, desc=f"{spec.name} {s}") for s, feats in dev_features.items()}
    model_dir = None
    if output_dir is not None and save:
        model_dir = str(save_model(model, tokenizer, Path(output_dir) / "model"))
    result = {
        "task": spec.name,
        "description": spec.description,
        "stand_in": spec.stand_in,
        "model": str(model_path),
        "init_from": None if init_from is None else str(init_from),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "metrics": metrics,
        "main_score": main_score(metrics),
        "baselines": {} if spec.is_regression else
        {s: majority_baseline(spec, [e["label"] for e in ex]) for s, ex in devs.items()},
        "history": history.records,
        "steps": history.steps,
        "model_dir": model_dir,
        "train_examples": len(train),
        "eval_examples": {s: len(ex) for s, ex in devs.items()},
        "seconds": time.perf_counter() - start,
    }
    if output_dir is not None:
        write_results(Path(output_dir) / "results.json", result)
    return result


def evaluate_task(model_path: str, task: str, *, data: str | None = None, split: str | None = None,
                  batch_size: int = 128, max_length: int = 128, max_examples: int | None = None) -> dict:
    """Score a fine-tuned classifier folder on ``task``.

    Args:
        model_path: A folder saved by :func:`finetune_task` (or any sequence classifier for the task's labels).
        task: A task name.
        data: See the module notes.
        split: One split (``validation``, MNLI ``validation_matched`` …, ``test`` for ``rt-sentiment``);
            ``None``: the dev split(s).
        batch_size: Examples per prediction batch.
        max_length: Token limit per example.
        max_examples: Score a fixed subsample of this many examples per split (``None``: all).

    Returns:
        ``{"task", "model", "metrics": {split: {metric: value}}, "main_score", "baselines", "examples",
        "seconds", "stand_in", "description"}``.

    Raises:
        ValueError: Unknown task or split, a folder that is not a classifier for the task's labels, bad data.
    """
    spec = get_task(task)
    start = time.perf_counter()
    splits = spec.dev_splits if split is None else (resolve_split(spec, split),)
    check_model_labels(model_path, spec, fine_tuned=True)
    tokenizer = load_tokenizer(model_path)
    pad = _pad_id(tokenizer, model_path)
    examples = {s: subsample(load_split(spec, s, data), max_examples) for s in splits}
    model = load_model(model_path, "sequence-classification").eval()
    metrics = {s: _score(model, spec, encode(ex, tokenizer, max_length), batch_size=batch_size, pad_token_id=pad,
                         precision="auto", desc=f"{spec.name} {s}") for s, ex in examples.items()}
    return {
        "task": spec.name,
        "description": spec.description,
        "stand_in": spec.stand_in,
        "model": str(model_path),
        "metrics": metrics,
        "main_score": main_score(metrics),
        "baselines": {} if spec.is_regression else
        {s: majority_baseline(spec, [e["label"] for e in ex]) for s, ex in examples.items()},
        "examples": {s: len(ex) for s, ex in examples.items()},
        "seconds": time.perf_counter() - start,
    }


def _aggregate(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    metrics: dict[str, dict[str, Any]] = {}
    for split, values in runs[0]["metrics"].items():
        metrics[split] = {}
        for name in values:
            vals = [r["metrics"][split][name] for r in runs]
            mean, std = mean_std(vals)
            metrics[split][name] = {"mean": mean, "std": std, "values": vals}
    vals = [r["main_score"] for r in runs]
    mean, std = mean_std(vals)
    return metrics, {"mean": mean, "std": std, "values": vals}


def run_seeds(model_path: str, task: str, cfg: FinetuneConfig, seeds: list[int], **kw: Any) -> dict:
    """Fine-tune once per seed and aggregate (mean and sample standard deviation of every metric).

    Args:
        model_path: As :func:`finetune_task`.
        task: A task name.
        cfg: Hyper-parameters (its ``seed`` is replaced by each of ``seeds``).
        seeds: Training seeds (the data split never depends on them).
        **kw: Passed to :func:`finetune_task` (``data``, ``init_from``, ``max_train_examples`` …); with
            ``output_dir``, seed ``s`` writes into ``output_dir/seed-s`` and the summary into
            ``output_dir/results.json``.

    Returns:
        ``{"task", "model", "config", "seeds", "metrics": {split: {metric: {"mean", "std", "values"}}},
        "main_score": {"mean", "std", "values"}, "runs": [finetune_task results]}``.
    """
    if not seeds:
        raise ValueError("run_seeds needs at least one seed (e.g. seeds=[0, 1, 2]).")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Seeds repeat in {seeds}: give distinct seeds.")
    output_dir = kw.pop("output_dir", None)
    runs = []
    for seed in seeds:
        out = None if output_dir is None else str(Path(output_dir) / f"seed-{seed}")
        runs.append(finetune_task(model_path, task, dataclasses.replace(cfg, seed=seed), output_dir=out, **kw))
    metrics, score = _aggregate(runs)
    config = cfg.to_dict()
    config.pop("seed")
    result = {"task": runs[0]["task"], "description": runs[0]["description"], "stand_in": runs[0]["stand_in"],
              "model": str(model_path), "init_from": runs[0]["init_from"], "config": config, "seeds": list(seeds),
              "metrics": metrics, "main_score": score, "baselines": runs[0]["baselines"], "runs": runs}
    if output_dir is not None:
        write_results(Path(output_dir) / "results.json", result)
    return result


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """Parse ``["learning_rate=1e-5,3e-5", "batch_size=16,32"]`` into ``{name: [values]}`` (FinetuneConfig fields).

    Raises:
        ValueError: Malformed item, unknown field, ``seed`` (use seeds), a value of the wrong type.
    """
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    defaults = FinetuneConfig()
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ValueError(f"Grid item {item!r} is not NAME=V1,V2 (e.g. learning_rate=1e-5,3e-5).")
        if name == "seed":
            raise ValueError("Seeds are not a grid axis: give them with --seeds (every grid point runs every seed).")
        if name not in fields:
            raise ValueError(f"Unknown grid field {name!r}: use FinetuneConfig fields "
                             f"{sorted(n for n in fields if n != 'seed')}.")
        kind = int if name == "max_steps" else type(getattr(defaults, name))
        parsed = []
        for raw in values.split(","):
            raw = raw.strip()
            try:
                if kind is int:
                    number = float(raw)
                    if not number.is_integer():
                        raise ValueError(raw)
                    value: Any = int(number)
                else:
                    value = kind(raw)
                FinetuneConfig(**{name: value})  # range checks now, not after hours of training
            except ValueError:
                raise ValueError(f"Grid item {item!r}: {raw!r} is not a valid {kind.__name__} value for "
                                 f"{name}.") from None
            parsed.append(value)
        if name in grid:
            raise ValueError(f"Grid field {name!r} is given twice.")
        grid[name] = parsed
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values (the empty grid gives one point: no change)."""
    import itertools

    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def run_grid(model_path: str, task: str, cfg: FinetuneConfig, grid: dict[str, list[Any]], seeds: list[int],
             **kw: Any) -> dict:
    """:func:`run_seeds` for every grid point; the best is the one with the highest mean main score (NaN last).

    With ``output_dir`` in ``kw``, grid point ``i`` writes into ``output_dir/config-i``.

    Returns:
        ``{"task", "model", "grid", "seeds", "configs": [{"params", **run_seeds result}], "best": index,
        "best_params"}``.
    """
    output_dir = kw.pop("output_dir", None)
    configs = []
    points = grid_points(grid)
    for i, params in enumerate(points):
        out = None if output_dir is None else str(Path(output_dir) / (f"config-{i}" if len(points) > 1 else ""))
        point_cfg = dataclasses.replace(cfg, **params)
        configs.append({"params": params, **run_seeds(model_path, task, point_cfg, seeds, output_dir=out, **kw)})

    def key(i: int) -> float:
        v = configs[i]["main_score"]["mean"]
        return -math.inf if math.isnan(v) else v

    best = max(range(len(configs)), key=key)
    return {"task": configs[0]["task"], "model": str(model_path), "grid": grid, "seeds": list(seeds),
            "configs": configs, "best": best, "best_params": configs[best]["params"]}


__all__ = [
    "DEFAULT_HF_NAME",
    "GLUE_TASKS",
    "METRICS",
    "MNLI_START_TASKS",
    "QUORA_PARAPHRASE_LAYOUT",
    "TASKS",
    "GlueTask",
    "TsvLayout",
    "accuracy",
    "check_model_labels",
    "compute_metrics",
    "encode",
    "evaluate_task",
    "f1",
    "finetune_task",
    "get_task",
    "grid_points",
    "load_split",
    "main_score",
    "majority_baseline",
    "matthews_corrcoef",
    "parse_grid",
    "pearson",
    "read_tsv",
    "resolve_split",
    "run_grid",
    "run_seeds",
    "spearman",
    "subsample",
    "write_results",
]
