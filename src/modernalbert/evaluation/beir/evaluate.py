"""Retrieval evaluation: embed a split's queries, then its corpus chunk by chunk into a running top-k (bounded
memory), and score the hits with trec_eval's metrics. Every setting is a field of
:class:`~modernalbert.evaluation.config.RetrievalConfig`."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import torch

from ..config import RetrievalConfig
from .data import BeirData, as_data
from .embedding import encode, resolve_model
from .index import TopK, retrieval_metrics, to_run


def _resolved(cfg: RetrievalConfig) -> RetrievalConfig:
    # An in-memory model has no sentence-transformers folder to read: mean pooling, no normalisation by default.
    return dataclasses.replace(cfg, pooling=cfg.pooling or "mean", normalize=bool(cfg.normalize))


def retrieve(model: torch.nn.Module, tokenizer: Any, data: BeirData,
             cfg: RetrievalConfig | None = None) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Embed ``data``'s queries, then its corpus chunk by chunk into a running top-k (bounded memory).

    Args:
        model: An encoder (``AutoModel``): ModernAlbert or any HF encoder.
        tokenizer: Its tokenizer.
        data: The split.
        cfg: Pooling, normalisation, score, batch size, token limit, ``top_k``, chunk size, faiss, identical ids,
            precision (``max_queries``, ``k_values`` and ``per_query`` are not used here).

    Returns:
        ``(run, seconds)``: ``{query_id: {doc_id: score}}`` and ``{"queries", "corpus", "search"}``.
    """
    cfg = _resolved(cfg or RetrievalConfig())
    if not data.corpus:
        raise ValueError(f"{data.name}: the corpus is empty; nothing to retrieve.")
    embed = {"pooling": cfg.pooling, "normalize": cfg.normalize, "batch_size": cfg.batch_size,
             "max_length": cfg.max_length, "precision": cfg.precision}
    t0 = time.perf_counter()
    query_ids = list(data.queries)
    q_emb = encode(model, tokenizer, [data.queries[q] for q in query_ids], desc="encode queries", **embed)
    seconds = {"queries": time.perf_counter() - t0, "corpus": 0.0, "search": 0.0}
    acc = TopK(q_emb, cfg.top_k + int(cfg.ignore_identical_ids), score=cfg.score, use_faiss=cfg.use_faiss)
    doc_ids = list(data.corpus)
    chunks = range(0, len(doc_ids), cfg.chunk_size)
    for n, start in enumerate(chunks, start=1):
        t1 = time.perf_counter()
        texts = [data.doc_text(d) for d in doc_ids[start:start + cfg.chunk_size]]
        d_emb = encode(model, tokenizer, texts, desc=f"encode corpus {n}/{len(chunks)}", **embed)
        t2 = time.perf_counter()
        acc.update(d_emb)
        seconds["corpus"] += t2 - t1
        seconds["search"] += time.perf_counter() - t2
    t3 = time.perf_counter()
    run = to_run(*acc.result(), doc_ids, query_ids, cfg.top_k, cfg.ignore_identical_ids)
    seconds["search"] += time.perf_counter() - t3
    return run, seconds


def evaluate_loaded(model: torch.nn.Module, tokenizer: Any, data: BeirData,
                    cfg: RetrievalConfig | None = None) -> dict[str, Any]:
    """:func:`evaluate_retrieval` for a model already in memory (``data`` is scored whole: ``cfg.max_queries`` is
    the caller's business)."""
    cfg = _resolved(cfg or RetrievalConfig())
    t0 = time.perf_counter()
    run, seconds = retrieve(model, tokenizer, data, cfg)
    metrics = retrieval_metrics(data.qrels, run, cfg.k_values, semantics=cfg.metric_semantics,
                                ignore_identical_ids=cfg.ignore_identical_ids, per_query=cfg.per_query)
    seconds["total"] = time.perf_counter() - t0
    return {
        "data": data.name, "split": data.split, "num_queries": len(data.queries), "num_docs": len(data.corpus),
        "pooling": cfg.pooling, "normalize": cfg.normalize, "score": cfg.score, "top_k": cfg.top_k,
        "max_length": cfg.max_length, "ignore_identical_ids": cfg.ignore_identical_ids,
        "metric_semantics": cfg.metric_semantics, "search": "faiss" if cfg.use_faiss else "exact",
        "metrics": {k: v for k, v in metrics.items() if k not in ("per_query", "semantics", "ignore_identical_ids")},
        **({"per_query": metrics["per_query"]} if cfg.per_query else {}),
        "seconds": seconds,
    }


def evaluate_retrieval(model_path: str | os.PathLike, data: str | os.PathLike | BeirData,
                       cfg: RetrievalConfig | None = None, *, split: str = "test") -> dict[str, Any]:
    """Evaluate an encoder on one split of a BEIR(-format) dataset.

    Args:
        model_path: ModernAlbert or any HF encoder folder / Hub id; a sentence-transformers folder's pooling and
            normalisation are used unless ``cfg`` sets them.
        data: A :class:`BeirData`, a BEIR folder or a Hub name (see :func:`load_beir`).
        cfg: The retrieval settings (default :class:`RetrievalConfig`).
        split: Qrels split (when ``data`` is not loaded yet).

    Returns:
        ``{"model", "data", "split", "num_queries", "num_docs", "pooling", …, "metrics": {"ndcg_cut_10",
        "recall_100", "map", …}, "seconds": {…}}``.

    Raises:
        ValueError: An empty corpus, bad data, unknown pooling.
        FileNotFoundError: A missing model folder or BEIR folder.
    """
    from ...model.loading import load_model, load_tokenizer

    cfg = cfg or RetrievalConfig()
    hf_path, pooling, normalize = resolve_model(model_path, cfg.pooling, cfg.normalize)
    data = as_data(data, split).subsample(cfg.max_queries, cfg.seed)
    if not data.corpus:
        raise ValueError(f"{data.name}: the corpus is empty; nothing to retrieve.")
    model = load_model(hf_path, "encoder").eval()
    tokenizer = load_tokenizer(hf_path)
    result = evaluate_loaded(model, tokenizer, data, dataclasses.replace(cfg, pooling=pooling, normalize=normalize))
    return {"model": str(model_path), **result}


__all__ = ["evaluate_loaded", "evaluate_retrieval", "retrieve"]
