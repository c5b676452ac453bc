"""Exact nearest-neighbour search in bounded memory, and trec_eval metrics.

The corpus is scored in chunks and only a running top-k per query is kept (merged with ``torch.topk``), so no full
queries x documents matrix ever exists; ``use_faiss=True`` uses a ``faiss.IndexFlatIP`` instead (same results, faster
on large corpora). ``ignore_identical_ids`` drops a hit whose document id equals the query id (BEIR's default).
Metrics are ``pytrec_eval``'s (trec_eval's definitions: gain = relevance grade, discount ``log2(rank + 1)``, ties in
score broken by document id, descending). How the means treat a judged query that the run does not rank is a choice
with two established answers, :data:`METRIC_SEMANTICS`, and every result says which was used:

* ``"beir"`` (the default, what BEIR's ``EvaluateRetrieval.evaluate`` reports): such a query is left out of the
  means, which are over the judged queries that have hits;
* ``"trec_eval"`` (``trec_eval -c``): it counts as 0 and the means are over every judged query.

``ignore_identical_ids`` (BEIR's default, on) removes from the run every hit whose document id is its query id before
scoring (for datasets whose corpus holds the queries themselves, e.g. ArguAna and Quora).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

SCORES = ("cos", "dot")
QUERY_BLOCK = 1024  # queries scored against one corpus chunk at a time: a block x chunk score matrix at most
TREC_MEASURES = ("ndcg_cut", "recall", "P", "map_cut")
METRIC_SEMANTICS = ("beir", "trec_eval")


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise ImportError("use_faiss=True needs faiss: pip install 'modernalbert[faiss]' (faiss-cpu; or faiss-gpu "
                          "from conda), or leave faiss off: the exact torch search returns the same hits.") from err
    return faiss


class TopK:
    """A running top-k per query over a corpus seen in chunks (bounded memory).

    ``update`` scores the queries against one chunk of document embeddings, a block of :data:`QUERY_BLOCK` queries
    at a time, and merges the chunk's best scores into the kept ones with ``torch.topk``; with ``use_faiss`` the
    chunks go into a ``faiss.IndexFlatIP`` searched once at the end.
    """

    def __init__(self, query_emb: torch.Tensor, k: int, *, score: str = "cos", use_faiss: bool = False):
        if score not in SCORES:
            raise ValueError(f"Unknown score {score!r}: use one of {', '.join(SCORES)}.")
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}.")
        self.score, self.k, self.seen = score, k, 0
        q = query_emb.float()
        self.queries = torch.nn.functional.normalize(q, dim=-1) if score == "cos" else q
        n = q.shape[0]
        self.index = None
        if use_faiss:
            faiss = import_faiss()
            self.index = faiss.IndexFlatIP(q.shape[1])
        self.best = torch.full((n, k), float("-inf"), device=q.device)
        self.best_idx = torch.full((n, k), -1, dtype=torch.long, device=q.device)

    def update(self, doc_emb: torch.Tensor) -> None:
        """Score one chunk of documents (the next ``len(doc_emb)`` corpus positions)."""
        if doc_emb.shape[0] == 0:
            return
        if doc_emb.shape[1] != self.queries.shape[1]:
            raise ValueError(f"Document embeddings have width {doc_emb.shape[1]}, queries "
                             f"{self.queries.shape[1]}: embed both with the same model.")
        d = doc_emb.float().to(self.queries.device)
        if self.score == "cos":
            d = torch.nn.functional.normalize(d, dim=-1)
        if self.index is not None:
            self.index.add(d.cpu().contiguous().numpy())
        else:
            k = min(self.k, d.shape[0])
            for start in range(0, self.queries.shape[0], QUERY_BLOCK):
                block = self.queries[start:start + QUERY_BLOCK] @ d.T  # (block, chunk)
                s, i = torch.topk(block, k, dim=1)
                merged = torch.cat([self.best[start:start + QUERY_BLOCK], s], dim=1)
                merged_idx = torch.cat([self.best_idx[start:start + QUERY_BLOCK], i + self.seen], dim=1)
                top, pos = torch.topk(merged, self.k, dim=1)
                self.best[start:start + QUERY_BLOCK] = top
                self.best_idx[start:start + QUERY_BLOCK] = torch.gather(merged_idx, 1, pos)
        self.seen += d.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, corpus positions)``, each (Q, k), best first; position -1 marks an empty slot."""
        if self.index is not None and self.seen:
            scores, idx = self.index.search(self.queries.cpu().contiguous().numpy(), min(self.k, self.seen))
            pad = self.k - idx.shape[1]
            scores, idx = torch.from_numpy(scores), torch.from_numpy(idx).long()
            if pad:
                scores = torch.cat([scores, torch.full((scores.shape[0], pad), float("-inf"))], dim=1)
                idx = torch.cat([idx, torch.full((idx.shape[0], pad), -1, dtype=torch.long)], dim=1)
            return scores, idx
        return self.best.cpu(), self.best_idx.cpu()


def to_run(scores: torch.Tensor, idx: torch.Tensor, doc_ids: Sequence[str], query_ids: Sequence[str], top_k: int,
            ignore_identical_ids: bool) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for qi, qid in enumerate(query_ids):
        hits: dict[str, float] = {}
        for s, j in zip(scores[qi].tolist(), idx[qi].tolist()):
            if j < 0 or len(hits) == top_k:
                continue
            did = doc_ids[j]
            if ignore_identical_ids and did == qid:
                continue
            hits[did] = float(s)
        run[qid] = hits
    return run


def search(query_emb: torch.Tensor, doc_emb: torch.Tensor, doc_ids: Sequence[str], query_ids: Sequence[str], *,
           top_k: int = 100, score: str = "cos", chunk_size: int = 50000, use_faiss: bool = False,
           ignore_identical_ids: bool = True) -> dict[str, dict[str, float]]:
    """Exact nearest-neighbour search: the ``top_k`` documents of each query with their scores.

    The corpus is scored ``chunk_size`` documents at a time (and queries in blocks), keeping a running top-k:
    memory stays ``O(Q·k + block·chunk)``, never a full Q×D matrix.

    Args:
        query_emb: (Q, d) query embeddings.
        doc_emb: (D, d) document embeddings.
        doc_ids: D document ids (row order of ``doc_emb``).
        query_ids: Q query ids.
        top_k: Hits kept per query.
        score: ``"cos"`` (cosine) or ``"dot"`` (inner product).
        chunk_size: Documents scored at once.
        use_faiss: Search a ``faiss.IndexFlatIP`` instead (same results; needs ``faiss``).
        ignore_identical_ids: Drop a hit whose id equals the query id (BEIR's default; one extra hit is fetched
            so ``top_k`` remain).

    Returns:
        ``{query_id: {doc_id: score}}``.

    Raises:
        ValueError: Mismatched sizes, an empty corpus, unknown score, bad ``top_k`` / ``chunk_size``.
        ImportError: ``use_faiss`` without faiss installed.
    """
    if len(doc_ids) != doc_emb.shape[0] or len(query_ids) != query_emb.shape[0]:
        raise ValueError(f"{len(doc_ids)} doc ids for {doc_emb.shape[0]} document embeddings and {len(query_ids)} "
                         f"query ids for {query_emb.shape[0]} query embeddings: counts must match.")
    if doc_emb.shape[0] == 0:
        raise ValueError("The corpus is empty: nothing to search.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    acc = TopK(query_emb, top_k + int(ignore_identical_ids), score=score, use_faiss=use_faiss)
    for start in range(0, doc_emb.shape[0], chunk_size):
        acc.update(doc_emb[start:start + chunk_size])
    return to_run(*acc.result(), doc_ids, query_ids, top_k, ignore_identical_ids)


def retrieval_metrics(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                      k_values: Sequence[int] = (10, 100), *, semantics: str = "beir",
                      ignore_identical_ids: bool = True, per_query: bool = False) -> dict[str, Any]:
    """trec_eval metrics through ``pytrec_eval``: nDCG@k, Recall@k, P@k, MAP@k for each k, plus MAP and MRR.

    Keys are trec_eval's: ``ndcg_cut_10``, ``recall_100``, ``P_10``, ``map_cut_10``, ``map`` (over the whole
    returned ranking), ``recip_rank``; run queries without judgements are ignored. A judged query with no hit in the
    run is left out of the means (``semantics="beir"``, BEIR's ``EvaluateRetrieval.evaluate``) or counts as 0
    (``"trec_eval"``, ``trec_eval -c``); see the module notes.

    Args:
        qrels: ``{query_id: {doc_id: grade}}`` (grade > 0 is relevant; higher is better for nDCG).
        run: ``{query_id: {doc_id: score}}``.
        k_values: Cut-offs.
        semantics: ``"beir"`` or ``"trec_eval"`` (:data:`METRIC_SEMANTICS`).
        ignore_identical_ids: Drop every hit whose document id equals its query id first (BEIR's default).
        per_query: Also return ``"per_query": {query_id: {metric: value}}`` (the queries averaged over).

    Returns:
        The mean of every metric, plus ``num_queries`` (queries averaged over), ``num_judged_queries``,
        ``judged_queries_without_hits``, ``semantics`` and ``ignore_identical_ids``.

    Raises:
        ValueError: No judged query, a bad cut-off or semantics, or (``"beir"``) no judged query with a hit.
    """
    import pytrec_eval

    if not qrels:
        raise ValueError("No judged queries: the qrels are empty.")
    if not k_values or any(int(k) < 1 for k in k_values):
        raise ValueError(f"k_values must be positive cut-offs, got {k_values}.")
    if semantics not in METRIC_SEMANTICS:
        raise ValueError(f"semantics={semantics!r} is invalid: use one of {list(METRIC_SEMANTICS)}.")
    ks = ",".join(str(int(k)) for k in sorted(set(k_values)))
    measures = {f"{m}.{ks}" for m in TREC_MEASURES} | {"map", "recip_rank"}
    qrels_s = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    run_s = {str(q): {str(d): float(s) for d, s in hits.items() if not (ignore_identical_ids and str(d) == str(q))}
             for q, hits in run.items() if str(q) in qrels_s}
    ranked = {q: hits for q, hits in run_s.items() if hits}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels_s, measures)
    scores = evaluator.evaluate(ranked)
    names = [f"{m}_{int(k)}" for m in TREC_MEASURES for k in sorted(set(k_values))] + ["map", "recip_rank"]
    averaged = list(qrels_s) if semantics == "trec_eval" else [q for q in qrels_s if q in ranked]
    if not averaged:
        raise ValueError(f"None of the {len(qrels_s)} judged queries has a hit in the run: with BEIR's semantics "
                         "there is nothing to average (trec_eval -c, semantics='trec_eval', would give 0).")
    per = {q: {n: float(scores.get(q, {}).get(n, 0.0)) for n in names} for q in averaged}
    out: dict[str, Any] = {n: sum(p[n] for p in per.values()) / len(per) for n in names}
    out.update(num_queries=len(per), num_judged_queries=len(qrels_s),
               judged_queries_without_hits=len(qrels_s) - len(ranked), semantics=semantics,
               ignore_identical_ids=ignore_identical_ids)
    if per_query:
        out["per_query"] = per
    return out


__all__ = ["METRIC_SEMANTICS", "QUERY_BLOCK", "SCORES", "TREC_MEASURES", "TopK", "import_faiss", "retrieval_metrics",
           "search", "to_run"]
