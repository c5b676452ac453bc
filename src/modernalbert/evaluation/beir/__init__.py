"""BEIR-style dense retrieval: loading, sentence embeddings, exact search, trec_eval metrics, contrastive fine-tuning.

* **Data**: a local BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) or Hugging Face names
  (``BeIR/scifact`` with its qrels in ``BeIR/scifact-qrels``) through ``datasets`` when online or cached. As in
  BEIR, a split's queries are those its qrels judge; every judged query must exist in ``queries.jsonl``.
* **Embeddings**: mean pooling over real tokens by default, or ``cls``. A sentence-transformers folder's own
  pooling (``1_Pooling/config.json``) and normalisation (a ``Normalize`` entry in ``modules.json``) are read when
  present. Documents are ``title + " " + text`` (BEIR's convention for sentence embedders). Encoding runs through
  :func:`~modernalbert.evaluation.common.predict`: length-bucketed batches, sharded over ``accelerate`` processes.
* **Search**: exact inner-product (``dot``) or cosine (``cos``) search. The corpus is embedded and scored in chunks
  and only a running top-k per query is kept (merged with ``torch.topk``), so no full queries × documents matrix
  ever exists; ``use_faiss=True`` uses a ``faiss.IndexFlatIP`` instead (same results, faster on large corpora).
  ``ignore_identical_ids`` drops a hit whose document id equals the query id (BEIR's default).
* **Metrics**: ``pytrec_eval`` (trec_eval's definitions: gain = relevance grade, discount ``log2(rank + 1)``, ties
  in score broken by document id, descending). A judged query with no hit is left out of the means by default, as
  BEIR reports (``metric_semantics="beir"``), or counts as 0 (``"trec_eval"``, ``trec_eval -c``); every result
  records the semantics, ``ignore_identical_ids`` and how many judged queries had no hit.
* **Fine-tuning**: InfoNCE with in-batch negatives, as sentence-transformers' ``MultipleNegativesRankingLoss``:
  cosine similarity times ``scale`` (20, i.e. temperature 0.05: its default, our choice), cross-entropy from each
  query to its positive among all documents of the batch; ``symmetric=True`` adds the document→query direction
  (``MultipleNegativesSymmetricRankingLoss``). In-batch documents that are *relevant* to a query (two queries of one
  batch sharing a positive) are masked out of its negatives. Hard negatives are mined from the model's own top-k
  (positives excluded) or read from a file.
* **Settings**: every retrieval function takes one :class:`~modernalbert.evaluation.config.RetrievalConfig`
  (pooling, normalisation, score, batch size, token limit, top-k, chunk size, faiss, cut-offs, query sample,
  precision); fine-tuning adds :class:`~modernalbert.evaluation.config.ContrastiveConfig`.
* **Saving**: :func:`save_sentence_transformer` writes the HF model and tokenizer plus ``modules.json``,
  ``sentence_bert_config.json``, ``1_Pooling/config.json`` (and ``2_Normalize``), so
  ``sentence_transformers.SentenceTransformer(path)`` loads it and returns the same embeddings. For a ModernAlbert
  folder, ``import modernalbert`` first (it registers the model type with the ``Auto`` classes);
  ``trust_remote_code`` is not needed (and does not help: the folder holds no code).

Modules: :mod:`~.data`, :mod:`~.embedding`, :mod:`~.index` (search and metrics), :mod:`~.evaluate`, :mod:`~.train`.
"""

from ..config import ContrastiveConfig, RetrievalConfig
from .data import BeirData, as_data, available_splits, load_beir, read_hard_negatives
from .embedding import (
    POOLINGS,
    embed_batch,
    encode,
    resolve_model,
    save_sentence_transformer,
    sentence_transformer_layout,
)
from .evaluate import evaluate_loaded, evaluate_retrieval, retrieve
from .index import METRIC_SEMANTICS, SCORES, TopK, import_faiss, retrieval_metrics, search
from .train import contrastive_loss, finetune_retrieval, mine_hard_negatives

__all__ = [
    "METRIC_SEMANTICS",
    "POOLINGS",
    "SCORES",
    "BeirData",
    "ContrastiveConfig",
    "RetrievalConfig",
    "TopK",
    "as_data",
    "available_splits",
    "contrastive_loss",
    "embed_batch",
    "encode",
    "evaluate_loaded",
    "evaluate_retrieval",
    "finetune_retrieval",
    "import_faiss",
    "load_beir",
    "mine_hard_negatives",
    "read_hard_negatives",
    "resolve_model",
    "retrieval_metrics",
    "retrieve",
    "save_sentence_transformer",
    "search",
    "sentence_transformer_layout",
]
