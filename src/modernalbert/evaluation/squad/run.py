"""Fine-tuning and evaluating a question-answering model on SQuAD-v2 (any encoder: a fresh QA head is added).

Fine-tuning defaults (:data:`LEARNING_RATE`, :data:`BATCH_SIZE`, :data:`EPOCHS`, :data:`EVAL_BATCH_SIZE`) are our
choice, common values for BERT-size encoders on SQuAD; the window defaults are Hugging Face's ``run_qa`` ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...model.loading import load_model, load_tokenizer, save_model
from ..common import finetune, is_main_process, model_inputs, predict
from ..config import FinetuneConfig
from .data import SquadExample, is_hub_name, read_squad
from .features import (
    MAX_ANSWER_LENGTH,
    MAX_LENGTH,
    N_BEST,
    STRIDE,
    model_features,
    postprocess,
    prepare_eval_features,
    prepare_train_features,
    require_fast,
)
from .metric import squad_v2_metric

# Fine-tuning defaults: our choice (common for BERT-size encoders on SQuAD), not taken from a paper.
LEARNING_RATE = 3e-5
BATCH_SIZE = 32
EPOCHS = 2.0
EVAL_BATCH_SIZE = 64


def _check_length(model: Any, max_length: int) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the model's {limit} positions; use --max-length "
                         f"{limit} or less.")


def _load(model_path: str | os.PathLike) -> tuple[Any, Any]:
    tokenizer = load_tokenizer(model_path)
    require_fast(tokenizer)  # fail before the (slower) model load
    return load_model(model_path, "question-answering"), tokenizer


def _run_eval(model: Any, tokenizer: Any, examples: Sequence[SquadExample], *, batch_size: int, max_length: int,
              stride: int, n_best: int, max_answer_length: int, precision: str) -> dict[str, Any]:
    features = prepare_eval_features(examples, tokenizer, max_length=max_length, stride=stride)

    def forward(m: Any, batch: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = m(**model_inputs(m, batch))
        starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        lengths = batch["attention_mask"].sum(dim=1).tolist()  # right padding: a row's first tokens are real
        return [(starts[i, :n], ends[i, :n]) for i, n in enumerate(lengths)]

    rows = predict(model, model_features(features), forward, batch_size=batch_size,
                   tokenizer=tokenizer, desc="squad predict", precision=precision)
    predictions, na_probs = postprocess(examples, features, [r[0] for r in rows], [r[1] for r in rows],
                                        n_best=n_best, max_answer_length=max_answer_length)
    return {"examples": len(examples), "features": len(features),
            "metrics": squad_v2_metric(examples, predictions, na_probs), "predictions": predictions,
            "na_probs": na_probs}


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
            :class:`~modernalbert.evaluation.config.FinetuneConfig`).

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
    stride = cfg.max_length // 3 if stride is None else stride
    if eval_data is None and is_hub_name(data):
        eval_data = f"{str(data).partition(':')[0]}:validation"
    train_examples = read_squad(data, split="train")
    eval_examples = read_squad(eval_data, split="validation") if eval_data is not None else None
    model, tokenizer = _load(model_path)
    _check_length(model, cfg.max_length)
    features = prepare_train_features(train_examples, tokenizer, max_length=cfg.max_length, stride=stride)
    train = [{k: v for k, v in f.items() if k != "example_index"} for f in features]
    history = finetune(model, train, cfg, tokenizer=tokenizer, desc="squad finetune")
    model_dir = None
    if output_dir is not None:
        model_dir = Path(output_dir) / "model"
        if is_main_process():
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


__all__ = ["BATCH_SIZE", "EPOCHS", "EVAL_BATCH_SIZE", "LEARNING_RATE", "evaluate_squad", "finetune_squad"]
