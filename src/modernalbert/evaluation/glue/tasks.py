"""The GLUE task table (nine tasks and the Rotten Tomatoes stand-in), task names and splits."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_HF_NAME = "nyu-mll/glue"


# Tasks that start from an MNLI fine-tuned encoder in the ModernBERT protocol (``init_from``).
MNLI_START_TASKS = ("rte", "mrpc", "stsb")


# Subsamples (max_train_examples / max_eval_examples) are drawn with this seed, fixed so that every training seed
# and grid point sees the same examples (our choice).
SUBSAMPLE_SEED = 0


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


TSV_FILES = {"train": "train.tsv", "validation": "dev.tsv", "validation_matched": "dev_matched.tsv",
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


__all__ = ["DEFAULT_HF_NAME", "GLUE_TASKS", "MNLI_START_TASKS", "QUORA_PARAPHRASE_LAYOUT", "SUBSAMPLE_SEED", "TASKS",
           "TSV_FILES", "GlueTask", "TsvLayout", "get_task", "resolve_split"]
