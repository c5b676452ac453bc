"""Contrastive fine-tuning of a retriever on a BEIR split's (query, relevant document) pairs.

InfoNCE with in-batch negatives, as sentence-transformers' ``MultipleNegativesRankingLoss``: cosine similarity times
``scale`` (20, i.e. temperature 0.05: its default, our choice), cross-entropy from each query to its positive among
all documents of the batch; ``symmetric`` adds the document-to-query direction
(``MultipleNegativesSymmetricRankingLoss``). In-batch documents that are *relevant* to a query (two queries of one
batch sharing a positive) are masked out of its negatives. Hard negatives are mined from the model's own top-k
(positives excluded) or read from a file. The settings are :class:`~modernalbert.evaluation.config.FinetuneConfig`
(optimisation), :class:`~modernalbert.evaluation.config.ContrastiveConfig` (the loss and its negatives) and
:class:`~modernalbert.evaluation.config.RetrievalConfig` (mining, evaluation, the saved model's pooling).
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ...model.autocast import autocast_disabled
from ..config import ContrastiveConfig, FinetuneConfig, RetrievalConfig
from .data import BeirData, as_data, read_hard_negatives
from .embedding import last_hidden, resolve_model, save_sentence_transformer, tokenize_for_embedding
from .evaluate import evaluate_loaded, retrieve


def _training_pairs(data: BeirData) -> list[tuple[str, str]]:
    pairs = [(qid, did) for qid in sorted(data.qrels) for did, rel in sorted(data.qrels[qid].items())
             if rel > 0 and did in data.corpus]
    if not pairs:
        raise ValueError(f"{data.name} split {data.split!r}: no (query, relevant document) pair with score > 0 and "
                         "the document in the corpus; contrastive fine-tuning needs positives.")
    return pairs


def mine_hard_negatives(model: torch.nn.Module, tokenizer: Any, data: BeirData, cfg: RetrievalConfig | None = None,
                        *, top_k: int = 30) -> dict[str, list[str]]:
    """Each query's top-``top_k`` documents under ``model`` (retrieved with ``cfg``), relevant (score > 0)
    documents removed, best first."""
    cfg = dataclasses.replace(cfg or RetrievalConfig(), top_k=top_k + max(len(v) for v in data.qrels.values()))
    run, _ = retrieve(model, tokenizer, data, cfg)
    out = {}
    for qid, hits in run.items():
        relevant = {d for d, r in data.qrels.get(qid, {}).items() if r > 0}
        ranked = sorted(hits, key=lambda d: -hits[d])
        out[qid] = [d for d in ranked if d not in relevant][:top_k]
    return out


def _pick_negatives(pairs: list[tuple[str, str]], data: BeirData, candidates: Mapping[str, list[str]], n: int,
                    seed: int) -> list[list[str]]:
    # Our choice: n negatives drawn at random from each query's candidates (not always the very top ones, which
    # are the likeliest unjudged positives); with too few candidates, random non-relevant corpus documents fill in.
    rng = random.Random(seed)
    doc_ids = list(data.corpus)
    chosen = []
    for qid, _ in pairs:
        relevant = {d for d, r in data.qrels.get(qid, {}).items() if r > 0}
        pool_ = [d for d in candidates.get(qid, []) if d not in relevant and d in data.corpus]
        negs = rng.sample(pool_, n) if len(pool_) >= n else list(pool_)
        tries = 0
        while len(negs) < n and tries < 100 * n:
            d = rng.choice(doc_ids)
            tries += 1
            if d not in relevant:
                negs.append(d)
        if len(negs) < n:
            raise ValueError(f"Query {qid!r}: the corpus has no document that is not relevant to it; hard "
                             "negatives need non-relevant documents.")
        chosen.append(negs)
    return chosen


def contrastive_loss(q: torch.Tensor, d: torch.Tensor, mask: torch.Tensor, *, scale: float = 20.0,
                     symmetric: bool = False) -> torch.Tensor:
    """InfoNCE over in-batch (and hard) negatives.

    Args:
        q: (B, h) query embeddings.
        d: (B·(1+n), h) document embeddings: the B positives first (row i belongs to query i), then negatives.
        mask: (B, B·(1+n)) True where a document must not serve as a negative of the query (it is relevant).
        scale: Multiplies cosine similarities (inverse temperature).
        symmetric: Average with the document→query direction over the positives.
    """
    B = q.shape[0]
    F = torch.nn.functional
    with autocast_disabled(q.device.type):  # autocast would run the similarity GEMM in 16 bits
        sim = scale * (F.normalize(q.float(), dim=-1) @ F.normalize(d.float(), dim=-1).T)  # (B, B·(1+n)) fp32
    sim = sim.masked_fill(mask, float("-inf"))
    target = torch.arange(B, device=q.device)
    loss = torch.nn.functional.cross_entropy(sim, target)
    if symmetric:
        loss = (loss + torch.nn.functional.cross_entropy(sim[:, :B].T, target)) / 2
    return loss


class PairCollator:
    """Batches of (query, positive, negatives) features: padded query and document sub-batches (positives of every
    query first, then the negatives: row i of the positives block is query i's target) and the mask of in-batch
    documents relevant to each query."""

    def __init__(self, tokenizer: Any, relevant: Mapping[int, set[int]]):
        from ..common import padding_collator

        self.pad = padding_collator(tokenizer)
        self.relevant = relevant

    def __call__(self, feats: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        qb = self.pad([f["query"] for f in feats])
        width = len(feats[0]["docs"])
        docs = [f["docs"][j] for j in range(width) for f in feats]
        doc_index = [f["doc_index"][j] for j in range(width) for f in feats]
        db = self.pad(docs)
        mask = torch.zeros(len(feats), len(docs), dtype=torch.bool)
        for i, f in enumerate(feats):
            rel = self.relevant[f["query_index"]]
            for j, di in enumerate(doc_index):
                if j != i and di in rel:
                    mask[i, j] = True
        return {**{f"q_{k}": v for k, v in qb.items()}, **{f"d_{k}": v for k, v in db.items()}, "mask": mask}


class PairLoss:
    """The contrastive loss of a batch from :class:`PairCollator`, plus ModernAlbert's router losses (weighted by
    the model config's coefficients, as its heads add them)."""

    def __init__(self, model_config: Any, pooling: str, contrastive: ContrastiveConfig):
        self.coefs = (getattr(model_config, "router_aux_loss_coef", 0.0),
                      getattr(model_config, "router_z_loss_coef", 0.0))
        self.pooling, self.contrastive = pooling, contrastive

    def __call__(self, m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from ...model.modeling import pool
        from ..common import model_inputs

        extra = 0.0
        embs = []
        for side in ("q", "d"):
            inputs = {k[2:]: v for k, v in batch.items() if k.startswith(f"{side}_")}
            inputs["output_router_logits"] = True  # the router losses (MoE convention: outputs on request)
            # the forward's signature is read on the bare model: a DDP wrapper's forward is (*inputs, **kwargs)
            out = m(**model_inputs(getattr(m, "module", m), inputs))
            embs.append(pool(last_hidden(out), inputs["attention_mask"], self.pooling))
            if getattr(out, "router_aux_loss", None) is not None:  # ModernAlbert's MoL load balance, as its heads do
                extra = extra + (self.coefs[0] * out.router_aux_loss + self.coefs[1] * out.router_z_loss) / 2
        return contrastive_loss(embs[0], embs[1], batch["mask"], scale=self.contrastive.scale,
                                symmetric=self.contrastive.symmetric) + extra


def _pair_features(train: BeirData, pairs: list[tuple[str, str]], negatives: list[list[str]], tokenizer: Any,
                   max_length: int) -> tuple[list[dict[str, Any]], dict[int, set[int]]]:
    """Tokenised (query, positive + negatives) features, and each query's relevant documents among them."""
    qids = sorted({q for q, _ in pairs})
    dids = sorted({d for _, d in pairs} | {d for negs in negatives for d in negs})
    q_index, d_index = {q: i for i, q in enumerate(qids)}, {d: i for i, d in enumerate(dids)}
    q_tok = dict(zip(qids, tokenize_for_embedding(tokenizer, [train.queries[q] for q in qids], max_length)))
    d_tok = dict(zip(dids, tokenize_for_embedding(tokenizer, [train.doc_text(d) for d in dids], max_length)))
    relevant = {q_index[q]: {d_index[d] for d, r in train.qrels[q].items() if r > 0 and d in d_index} for q in qids}
    features = [{"input_ids": q_tok[q]["input_ids"], "query": q_tok[q], "docs": [d_tok[d] for d in [d, *negs]],
                 "query_index": q_index[q], "doc_index": [d_index[x] for x in [d, *negs]]}
                for (q, d), negs in zip(pairs, negatives)]
    return features, relevant


def _negatives(model: torch.nn.Module, tokenizer: Any, train: BeirData, pairs: list[tuple[str, str]],
               retrieval: RetrievalConfig, contrastive: ContrastiveConfig, n: int, seed: int) -> list[list[str]]:
    if not n:
        return [[] for _ in pairs]
    if contrastive.hard_negatives_file is not None:
        candidates = read_hard_negatives(contrastive.hard_negatives_file, train)
    else:
        candidates = mine_hard_negatives(model.eval(), tokenizer, train, retrieval, top_k=contrastive.mine_top_k)
    return _pick_negatives(pairs, train, candidates, n, seed)


def finetune_retrieval(model_path: str | os.PathLike, data: str | os.PathLike | BeirData, cfg: FinetuneConfig,
                       retrieval: RetrievalConfig | None = None, contrastive: ContrastiveConfig | None = None, *,
                       split: str = "train", output_dir: str | os.PathLike | None = None,
                       eval_data: str | os.PathLike | BeirData | None = None,
                       eval_split: str | None = "test") -> dict[str, Any]:
    """Contrastive fine-tuning of an encoder on a BEIR split's (query, relevant document) pairs, then evaluation.

    Under several processes each process draws negatives from its own batch (no cross-process gather). The model is
    saved with :func:`save_sentence_transformer` (loads in ``sentence_transformers``).

    Args:
        model_path: Encoder folder or Hub id (sentence-transformers folders keep their pooling).
        data: Training data: a :class:`BeirData`, a BEIR folder or a Hub name.
        cfg: Optimisation settings (``cfg.max_length`` truncates training texts; ``cfg.batch_size`` pairs per step,
            i.e. ``batch_size - 1`` in-batch negatives per query; ``cfg.seed`` draws the hard negatives).
        retrieval: Mining and evaluation settings; its pooling / normalisation are the saved model's and its
            ``max_length`` the saved ``max_seq_length``; ``max_queries`` and ``seed`` sample the evaluation queries.
        contrastive: The loss and its negatives (a ``hard_negatives_file`` implies one negative per pair at least).
        split: Training qrels split (when ``data`` is not loaded yet).
        output_dir: Where to save the fine-tuned model (not saved when None).
        eval_data: Evaluation data (default: ``data``'s ``eval_split`` when ``data`` is a folder or name).
        eval_split: Evaluation split (None: no evaluation).

    Returns:
        ``{"train": {"pairs", "steps", "history", "seconds", …}, "eval": {…} | None, "output_dir": str | None}``.

    Raises:
        ValueError: No positives, unknown pooling, malformed negative file.
    """
    from ...model.loading import load_model, load_tokenizer
    from ..common import finetune, is_main_process

    retrieval, contrastive = retrieval or RetrievalConfig(), contrastive or ContrastiveConfig()
    n_neg = max(contrastive.hard_negatives, int(contrastive.hard_negatives_file is not None))
    hf_path, pooling, normalize = resolve_model(model_path, retrieval.pooling, retrieval.normalize)
    retrieval = dataclasses.replace(retrieval, pooling=pooling, normalize=normalize)
    train = as_data(data, split)
    pairs = _training_pairs(train)
    model, tokenizer = load_model(hf_path, "encoder"), load_tokenizer(hf_path)
    t0 = time.perf_counter()
    negatives = _negatives(model, tokenizer, train, pairs, retrieval, contrastive, n_neg, cfg.seed)
    mined_s = time.perf_counter() - t0
    features, relevant = _pair_features(train, pairs, negatives, tokenizer, cfg.max_length)
    history = finetune(model, features, cfg, tokenizer=tokenizer, loss_fn=PairLoss(model.config, pooling, contrastive),
                       collate_fn=PairCollator(tokenizer, relevant), desc="contrastive")
    train_info = {"data": train.name, "split": train.split, "pairs": len(pairs), "queries": len(relevant),
                  "hard_negatives": n_neg, "negatives_from": ("file" if contrastive.hard_negatives_file else "mined")
                  if n_neg else None, "loss": "symmetric InfoNCE" if contrastive.symmetric else "InfoNCE",
                  "scale": contrastive.scale, "pooling": pooling, "normalize": normalize, "steps": history.steps,
                  "history": history.records, "config": cfg.to_dict(),
                  "seconds": {"negatives": mined_s, "total": time.perf_counter() - t0}}
    saved = None
    if output_dir is not None:
        if is_main_process():
            save_sentence_transformer(model, tokenizer, output_dir, pooling, normalize, retrieval.max_length,
                                      score=retrieval.score)
        _wait_for_everyone()
        saved = str(output_dir)
    evaluation = None
    if eval_split is not None and (eval_data is not None or not isinstance(data, BeirData)):
        test = as_data(eval_data if eval_data is not None else data, eval_split)
        evaluation = evaluate_loaded(model.eval(), tokenizer, test.subsample(retrieval.max_queries, retrieval.seed),
                                     retrieval)
    return {"model": str(model_path), "train": train_info, "eval": evaluation, "output_dir": saved}


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


__all__ = ["PairCollator", "PairLoss", "contrastive_loss", "finetune_retrieval", "mine_hard_negatives"]
