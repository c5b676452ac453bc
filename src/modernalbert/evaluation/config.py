"""Typed, strict settings of the evaluation suites (import-light: the command line derives its flags from them).

Defaults are common fine-tuning values, our choice rather than the paper's; each suite documents its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from ..data.tables import TableFormat
from ..utils.config import typed_config

# Values of FinetuneConfig.precision / RetrievalConfig.precision ("bf16" / "fp16": autocast in that dtype).
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@typed_config
@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters (defaults are common values, our choice).

    Attributes:
        learning_rate: Peak AdamW learning rate.
        batch_size: Examples per optimiser step (per process).
        eval_batch_size: Examples per prediction batch.
        epochs: Passes over the training data (fractions allowed).
        max_steps: Stop after this many steps (overrides ``epochs`` when set).
        warmup_ratio: Share of steps with linear warm-up; linear decay to 0 after.
        weight_decay: AdamW weight decay (not on biases and norms).
        max_grad_norm: Gradient clipping (0 disables).
        max_length: Token limit per example (truncation).
        seed: Seed of initialisation of new heads, shuffling and dropout.
        precision: ``"auto"`` (bf16 autocast on a GPU that supports it, fp32 otherwise), ``"fp32"``, ``"bf16"``
            (autocast; also on CPU, where it is correct but slow) or ``"fp16"`` (autocast; prediction anywhere,
            fine-tuning on a GPU only, where accelerate adds the loss scaling fp16 gradients need).
        log_every: Steps between loss records.
    """

    learning_rate: float = 5e-5
    batch_size: int = 32
    eval_batch_size: int = 128
    epochs: float = 3.0
    max_steps: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    seed: int = 0
    precision: Precision = "auto"
    log_every: int = 10

    def validate_ranges(self) -> None:
        checks = {
            "learning_rate": self.learning_rate > 0,
            "batch_size": self.batch_size >= 1,
            "eval_batch_size": self.eval_batch_size >= 1,
            "epochs": self.epochs > 0,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "weight_decay": self.weight_decay >= 0,
            "max_grad_norm": self.max_grad_norm >= 0,
            "max_length": self.max_length >= 8,
            "log_every": self.log_every >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"FinetuneConfig.{name}={getattr(self, name)!r} is out of range.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The tasks of `modernalbert finetune classification|regression|token-classification` (FileDataConfig).
FileTask = Literal["classification", "regression", "token-classification"]
FILE_TASKS: tuple[str, ...] = get_args(FileTask)


@typed_config
@dataclass
class FileDataConfig:
    """Where the examples of a user's labelled files are (see :mod:`modernalbert.data.tables` for the formats).

    Attributes:
        text_column: Column of the text; default ``"text"`` (token classification: ``"tokens"``, a list of words or
            a string split on whitespace).
        text_pair_column: Column of the second text of a pair (classification and regression; default: none).
        label_column: Column of the label; default ``"label"`` (token classification: ``"tags"``, one tag per word).
        labels: Class names (classification) or tags (token classification) in id order, comma-separated on the
            command line; default: a dataset's ``ClassLabel`` names, else the training labels sorted (numerically
            when they are all integers), as Hugging Face's ``run_glue`` / ``run_ner`` order them.
        format: The files' format; default: from each file's suffix.
        train_split: Split read from a dataset folder or Hub name given as the training data.
        validation_split: Split read from a dataset given as the validation data.
        test_split: Split read from a dataset given as the test data.
        dataset_config: Configuration of a Hub dataset (``datasets.load_dataset(name, config)``).
        max_train_examples: Train on a fixed subsample of this many examples (default: all).
        max_eval_examples: Score a fixed subsample of this many examples of each evaluation file (default: all).
    """

    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    labels: tuple[str, ...] | None = None
    format: TableFormat | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"
    dataset_config: str | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None

    def validate_ranges(self) -> None:
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"FileDataConfig.{name}={getattr(self, name)!r} is invalid: expected >= 1.")
        if self.labels is not None and (len(set(self.labels)) != len(self.labels) or not all(self.labels)):
            raise ValueError(f"FileDataConfig.labels={self.labels!r} is invalid: give distinct, non-empty names.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@typed_config
@dataclass
class RetrievalConfig:
    """How an encoder retrieves and is scored on a BEIR(-format) split: one object for every retrieval function.

    Attributes:
        pooling: ``"mean"`` over real tokens or ``"cls"``; None: a sentence-transformers folder's own, else mean.
        normalize: L2-normalise embeddings; None: as a sentence-transformers folder says, else no.
        score: Similarity: ``"cos"`` (cosine) or ``"dot"`` (inner product).
        batch_size: Texts per forward pass.
        max_length: Token limit of queries and documents (256: sentence-transformers' usual limit, our choice).
        top_k: Hits kept per query (100 covers Recall@100).
        chunk_size: Documents embedded and scored at once (bounded memory).
        use_faiss: Search with a faiss ``IndexFlatIP`` (same hits; pip install 'modernalbert[faiss]').
        ignore_identical_ids: Drop hits whose document id equals the query id (BEIR's default).
        metric_semantics: How a judged query without hits counts: ``"beir"`` (left out of the means, as BEIR
            reports) or ``"trec_eval"`` (counts as 0, ``trec_eval -c``).
        k_values: Metric cut-offs.
        max_queries: Evaluate a seeded sample of this many queries (the whole corpus is still searched).
        seed: Seed of the query sample.
        per_query: Include per-query metrics in the result.
        precision: ``"auto"`` (bf16 autocast only on a capable GPU), ``"fp32"``, ``"bf16"`` or ``"fp16"``
            (autocast in that dtype).
    """

    pooling: Literal["mean", "cls"] | None = None
    normalize: bool | None = None
    score: Literal["cos", "dot"] = "cos"
    batch_size: int = 128
    max_length: int = 256
    top_k: int = 100
    chunk_size: int = 50000
    use_faiss: bool = field(default=False, metadata={"flag": "faiss"})
    ignore_identical_ids: bool = True
    metric_semantics: Literal["beir", "trec_eval"] = "beir"
    k_values: tuple[int, ...] = (10, 100)
    max_queries: int | None = None
    seed: int = 0
    per_query: bool = False
    precision: Precision = "auto"

    def validate_ranges(self) -> None:
        for name in ("batch_size", "max_length", "top_k", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"RetrievalConfig.{name}={getattr(self, name)!r} is invalid: expected >= 1.")
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"RetrievalConfig.max_queries={self.max_queries!r} is invalid: expected >= 1.")
        if not self.k_values or any(k < 1 for k in self.k_values):
            raise ValueError(f"RetrievalConfig.k_values={self.k_values!r} is invalid: expected positive cut-offs.")


@typed_config
@dataclass
class ContrastiveConfig:
    """Contrastive fine-tuning of a retriever (InfoNCE over in-batch and hard negatives; defaults are ours,
    sentence-transformers' usual ones).

    Attributes:
        hard_negatives: Hard negatives per pair (0: in-batch negatives only).
        hard_negatives_file: TSV ``query-id<TAB>corpus-id`` of given hard negatives (instead of mining them).
        mine_top_k: Mined negatives are drawn from each query's top-k non-relevant hits.
        scale: Inverse temperature of the loss (20 = temperature 0.05).
        symmetric: Add the document-to-query direction to the loss.
    """

    hard_negatives: int = 0
    hard_negatives_file: str | None = None
    mine_top_k: int = 30
    scale: float = 20.0
    symmetric: bool = False

    def validate_ranges(self) -> None:
        if self.hard_negatives < 0:
            raise ValueError(f"hard_negatives must be >= 0, got {self.hard_negatives}.")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}.")
        if self.mine_top_k < 1:
            raise ValueError(f"mine_top_k must be >= 1, got {self.mine_top_k}.")


__all__ = ["FILE_TASKS", "PRECISIONS", "ContrastiveConfig", "FileDataConfig", "FileTask", "FinetuneConfig", "Precision",
           "RetrievalConfig"]
