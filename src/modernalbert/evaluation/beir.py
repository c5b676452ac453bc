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
* **Metrics**: ``pytrec_eval`` (trec_eval semantics: gain = relevance grade, discount ``log2(rank + 1)``, ties in
  score broken by document id, descending). Means are over the queries in the qrels; a judged query with no hit
  counts as 0 (trec_eval ``-c``).
* **Fine-tuning**: InfoNCE with in-batch negatives, as sentence-transformers' ``MultipleNegativesRankingLoss``:
  cosine similarity times ``scale`` (20, i.e. temperature 0.05: its default, our choice), cross-entropy from each
  query to its positive among all documents of the batch; ``symmetric=True`` adds the document→query direction
  (``MultipleNegativesSymmetricRankingLoss``). In-batch documents that are *relevant* to a query (two queries of one
  batch sharing a positive) are masked out of its negatives. Hard negatives are mined from the model's own top-k
  (positives excluded) or read from a file.
* **Saving**: :func:`save_sentence_transformer` writes the HF model and tokenizer plus ``modules.json``,
  ``sentence_bert_config.json``, ``1_Pooling/config.json`` (and ``2_Normalize``), so
  ``sentence_transformers.SentenceTransformer(path)`` loads it and returns the same embeddings. For a ModernAlbert
  folder, ``import modernalbert`` first (it registers the model type with the ``Auto`` classes);
  ``trust_remote_code`` is not needed (and does not help: the folder holds no code).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..utils import autocast_disabled
from .common import FinetuneConfig

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")
SCORES = ("cos", "dot")
QUERY_BLOCK = 1024  # queries scored against one corpus chunk at a time: a block x chunk score matrix at most
TREC_MEASURES = ("ndcg_cut", "recall", "P", "map_cut")


# ============================================================================================ data


@dataclass
class BeirData:
    """One split of a BEIR dataset.

    Attributes:
        corpus: ``{doc_id: {"title": str, "text": str}}``.
        queries: ``{query_id: text}``: the queries judged in this split's qrels.
        qrels: ``{query_id: {doc_id: relevance}}``.
        name: Where it came from (folder or hub name).
        split: The qrels split.
    """

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = ""
    split: str = "test"
    meta: dict[str, Any] = field(default_factory=dict)

    def doc_text(self, doc_id: str) -> str:
        """``title + " " + text`` (BEIR's document string for sentence embedders), or the text alone."""
        doc = self.corpus[doc_id]
        title = doc.get("title") or ""
        return f"{title} {doc['text']}".strip() if title else doc["text"]

    def subsample(self, max_queries: int | None, seed: int = 0) -> BeirData:
        """At most ``max_queries`` queries (a seeded sample; the corpus is kept whole)."""
        if max_queries is None or max_queries >= len(self.queries):
            return self
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {max_queries}.")
        keep = sorted(random.Random(seed).sample(sorted(self.queries), max_queries))
        return BeirData(self.corpus, {q: self.queries[q] for q in keep}, {q: self.qrels[q] for q in keep},
                        self.name, self.split, {**self.meta, "subsampled_from": len(self.queries)})


def _read_jsonl(path: Path, kind: str) -> Iterable[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {line_no}: not valid JSON ({err.msg}); each line of a BEIR "
                                 f"{kind} file is one JSON object.") from err
            if not isinstance(rec, dict):
                raise ValueError(f"{path}, line {line_no}: expected a JSON object, got {type(rec).__name__}.")
            yield line_no, rec


def _field(rec: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = rec.get(key)
    if value is None:
        if required:
            raise ValueError(f"{where}: missing field {key!r} (BEIR records have '_id' and 'text'; corpus "
                             "records may add 'title').")
        return ""
    if not isinstance(value, (str, int)):
        raise ValueError(f"{where}: field {key!r} must be a string, got {type(value).__name__}.")
    return str(value)


def _corpus_from(records: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, dict[str, str]]:
    corpus: dict[str, dict[str, str]] = {}
    first_seen: dict[str, str] = {}
    for where, rec in records:
        doc_id = _field(rec, "_id", where)
        if doc_id in corpus:
            raise ValueError(f"{where}: duplicate document id {doc_id!r} (first at {first_seen[doc_id]}).")
        corpus[doc_id] = {"title": _field(rec, "title", where, required=False), "text": _field(rec, "text", where)}
        first_seen[doc_id] = where
    return corpus


def _queries_from(records: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    queries: dict[str, str] = {}
    for where, rec in records:
        queries[_field(rec, "_id", where)] = _field(rec, "text", where)
    return queries


def _parse_qrels_tsv(path: Path) -> list[tuple[str, str, str, int]]:
    """Rows ``(where, query_id, doc_id, score)``; a header line is allowed; TREC's 4-column form too."""
    rows = []
    first = True
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            if len(cols) == 4:  # TREC qrels: query-id iteration corpus-id score
                cols = [cols[0], cols[2], cols[3]]
            if len(cols) != 3:
                raise ValueError(f"{path}, line {line_no}: expected 3 tab-separated columns (query-id, corpus-id, "
                                 f"score), got {len(cols)}: {line[:80]!r}.")
            try:
                score = int(float(cols[2]))
            except ValueError:
                if first:  # the BEIR header "query-id corpus-id score"
                    first = False
                    continue
                raise ValueError(f"{path}, line {line_no}: score {cols[2]!r} is not an integer relevance grade."
                                 ) from None
            first = False
            rows.append((f"{path}, line {line_no}", cols[0].strip(), cols[1].strip(), score))
    return rows


def _assemble(corpus: dict[str, dict[str, str]], queries: dict[str, str], rows: list[tuple[str, str, str, int]],
              *, name: str, split: str, corpus_where: str, queries_where: str, qrels_where: str) -> BeirData:
    if not corpus:
        raise ValueError(f"{corpus_where}: the corpus is empty; a retrieval corpus needs at least one document.")
    if not rows:
        raise ValueError(f"{qrels_where}: no relevance judgements for split {split!r}; give qrels rows "
                         "'query-id<TAB>corpus-id<TAB>score'.")
    qrels: dict[str, dict[str, int]] = {}
    for where, qid, did, score in rows:
        old = qrels.setdefault(qid, {}).get(did)
        if old is not None and old != score:
            raise ValueError(f"{where}: ({qid!r}, {did!r}) judged twice with different scores ({old}, {score}).")
        qrels[qid][did] = score
    missing = [qid for qid in qrels if qid not in queries]
    if len(missing) == len(qrels):
        raise ValueError(f"{qrels_where}: none of its {len(qrels)} query ids is in {queries_where} (e.g. "
                         f"{missing[0]!r}); the qrels and the queries do not belong to the same dataset.")
    if missing:
        first = next(where for where, qid, _, _ in rows if qid == missing[0])
        raise ValueError(f"{first}: query id {missing[0]!r} is not in {queries_where} ({len(missing)} judged "
                         f"queries missing in all); add the queries or drop their qrels rows.")
    unknown_docs = {did for judged in qrels.values() for did in judged if did not in corpus}
    if unknown_docs:  # real BEIR sets have a few: they stay judged (unretrievable), as trec_eval would see them
        warnings.warn(f"{qrels_where}: {len(unknown_docs)} judged document id(s) are not in {corpus_where} "
                      f"(e.g. {sorted(unknown_docs)[0]!r}); they count as relevant but cannot be retrieved.",
                      stacklevel=3)
    return BeirData(corpus, {qid: queries[qid] for qid in qrels}, qrels, name, split,
                    {"num_queries_in_file": len(queries)})


def available_splits(folder: str | os.PathLike) -> list[str]:
    """The qrels splits of a local BEIR folder (``qrels/*.tsv`` stems)."""
    return sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))


def _load_local(folder: Path, split: str) -> BeirData:
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for path in (corpus_path, queries_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: a BEIR folder holds corpus.jsonl, queries.jsonl and "
                                    "qrels/<split>.tsv.")
    if not qrels_path.is_file():
        splits = available_splits(folder)
        raise FileNotFoundError(f"{qrels_path} does not exist: no split {split!r} in {folder} (available: "
                                f"{', '.join(splits) or 'none'}).")
    corpus = _corpus_from((f"{corpus_path}, line {n}", rec) for n, rec in _read_jsonl(corpus_path, "corpus"))
    queries = _queries_from((f"{queries_path}, line {n}", rec) for n, rec in _read_jsonl(queries_path, "queries"))
    return _assemble(corpus, queries, _parse_qrels_tsv(qrels_path), name=str(folder), split=split,
                     corpus_where=str(corpus_path), queries_where=str(queries_path), qrels_where=str(qrels_path))


def _load_hub(name: str, split: str, qrels_name: str | None) -> BeirData:
    qrels_name = qrels_name or f"{name}-qrels"
    try:
        from datasets import load_dataset

        corpus_ds = load_dataset(name, "corpus", split="corpus")
        queries_ds = load_dataset(name, "queries", split="queries")
        qrels_ds = load_dataset(qrels_name, split=split)
    except ImportError as err:
        raise ValueError(f"Loading {name!r} from the Hugging Face hub needs `datasets` (pip install "
                         "'modernalbert[data]'); or give a local BEIR folder.") from err
    except Exception as err:  # offline, unknown name or split: datasets raises many types
        raise ValueError(f"Could not load BEIR dataset {name!r} (qrels {qrels_name!r}, split {split!r}) from the "
                         f"Hugging Face hub (and no local folder has that name): {type(err).__name__}: {err}. "
                         "Offline? Give a local BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).") from err
    corpus = _corpus_from((f"{name} corpus, row {i}", rec) for i, rec in enumerate(corpus_ds))
    queries = _queries_from((f"{name} queries, row {i}", rec) for i, rec in enumerate(queries_ds))
    rows = []
    for i, rec in enumerate(qrels_ds):
        where = f"{qrels_name} {split}, row {i}"
        try:
            rows.append((where, str(rec["query-id"]), str(rec["corpus-id"]), int(rec["score"])))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: expected fields query-id, corpus-id and an integer score ({err}).") from err
    return _assemble(corpus, queries, rows, name=name, split=split, corpus_where=f"{name} corpus",
                     queries_where=f"{name} queries", qrels_where=f"{qrels_name} split {split!r}")


def load_beir(path_or_name: str | os.PathLike, split: str = "test", *, qrels_name: str | None = None) -> BeirData:
    """Load one split of a BEIR dataset.

    Args:
        path_or_name: A local folder with ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
            (``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``; header optional),
            or a Hugging Face dataset name such as ``"BeIR/scifact"`` (configs ``corpus`` and ``queries``).
        split: The qrels split (``"train"``, ``"dev"``, ``"test"`` …).
        qrels_name: Hub dataset holding the qrels (default ``path_or_name + "-qrels"``, BEIR's naming).

    Returns:
        A :class:`BeirData` whose queries are the split's judged queries.

    Raises:
        FileNotFoundError: A local folder or one of its files is missing (the message lists available splits).
        ValueError: A malformed line (file and line named), an empty corpus, empty qrels, or judged queries
            missing from the queries file; or the hub could not be reached.
    """
    text = str(path_or_name)
    folder = Path(text).expanduser()
    if folder.is_dir():
        return _load_local(folder, split)
    # A hub name is "owner/name"; anything else that is not an existing folder is a missing local path.
    if text.startswith((".", "/", "~")) or text.count("/") != 1 or "\\" in text:
        raise FileNotFoundError(f"No BEIR folder at {text}: give a folder with corpus.jsonl, queries.jsonl and "
                                "qrels/<split>.tsv, or a hub name such as BeIR/scifact.")
    return _load_hub(text, split, qrels_name)


def read_hard_negatives(path: str | os.PathLike, data: BeirData) -> dict[str, list[str]]:
    """Hard negatives from a TSV file: ``query-id<TAB>corpus-id`` per line (header and extra columns allowed).

    Raises:
        FileNotFoundError: No such file.
        ValueError: A malformed line, or an id unknown to the corpus (file and line named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Hard-negative file {path} does not exist.")
    negatives: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            cols = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            if len(cols) < 2:
                raise ValueError(f"{path}, line {line_no}: expected 'query-id<TAB>corpus-id', got {line[:80]!r}.")
            qid, did = cols[0].strip(), cols[1].strip()
            if line_no == 1 and did not in data.corpus and qid.lower() in ("query-id", "qid", "query_id"):
                continue  # header
            if did not in data.corpus:
                raise ValueError(f"{path}, line {line_no}: corpus id {did!r} is not in the corpus.")
            negatives.setdefault(qid, []).append(did)
    return negatives


# ============================================================================================ pooling and models


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}.")


def _pooling_from_config(path: Path) -> str:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable sentence-transformers pooling config ({err}).") from err
    if "pooling_mode" in cfg:  # sentence-transformers >= 6: "pooling_mode": "mean" (or a list of modes)
        modes = cfg["pooling_mode"] if isinstance(cfg["pooling_mode"], list) else [cfg["pooling_mode"]]
    else:  # the classic keys pooling_mode_<mode>_token(s): true/false
        modes = [k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
                 for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    names = {"mean": "mean", "cls": "cls"}
    if len(modes) != 1 or modes[0] not in names:
        raise ValueError(f"{path}: pooling {modes} is not supported here; supported: exactly one of "
                         f"{', '.join(POOLINGS)}.")
    return names[modes[0]]


def sentence_transformer_layout(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """Read a local sentence-transformers folder: ``{"model_path", "pooling", "normalize", "max_seq_length"}``.

    ``model_path`` is where the HF model lives (the folder itself, or an older layout's ``0_Transformer/``).

    Returns:
        None when the folder has no ``modules.json`` (a plain HF model).

    Raises:
        ValueError: Unreadable ``modules.json`` or an unsupported pooling (file named).
    """
    folder = Path(model_path).expanduser()
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return None
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        types = [(str(m.get("type", "")), str(m.get("path", ""))) for m in modules]
    except (OSError, json.JSONDecodeError, AttributeError, TypeError) as err:
        raise ValueError(f"{modules_path}: unreadable modules.json ({err}).") from err
    layout: dict[str, Any] = {"model_path": folder, "pooling": "mean", "normalize": False, "max_seq_length": None}
    for kind, sub in types:
        name = kind.rsplit(".", 1)[-1]
        if name == "Transformer" and sub:
            layout["model_path"] = folder / sub
        elif name == "Pooling":
            layout["pooling"] = _pooling_from_config(folder / sub / "config.json")
        elif name == "Normalize":
            layout["normalize"] = True
    st_cfg = layout["model_path"] / "sentence_bert_config.json"
    if st_cfg.is_file():
        try:
            layout["max_seq_length"] = json.loads(st_cfg.read_text(encoding="utf-8")).get("max_seq_length")
        except json.JSONDecodeError as err:
            raise ValueError(f"{st_cfg}: not valid JSON ({err}).") from err
    return layout


def _hub_layout(name: str) -> dict[str, Any] | None:
    """A hub model's sentence-transformers settings (its small JSON files only), or None when it has none or the
    hub cannot be reached (then the defaults apply)."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        return None  # a local path that does not exist: loading the model reports it
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(name, allow_patterns=["modules.json", "sentence_bert_config.json",
                                                         "*/config.json"])
    except Exception as err:  # offline, unknown name, gated: the model itself reports that when it is loaded
        logger.info("No sentence-transformers settings read for %s (%s); using the defaults.", name, err)
        return None
    return sentence_transformer_layout(folder)


def resolve_model(model_path: str | os.PathLike, pooling: str | None = None,
                  normalize: bool | None = None) -> tuple[str, str, bool]:
    """``(hf_model_path, pooling, normalize)``: explicit arguments win, then a sentence-transformers folder's own
    settings, then mean pooling without normalisation (our default).

    Raises:
        ValueError: Unknown pooling.
    """
    if pooling is not None:
        _check_pooling(pooling)
    if Path(model_path).expanduser().is_dir():
        layout = sentence_transformer_layout(model_path)
        path = str(layout["model_path"]) if layout else str(model_path)
    else:
        layout, path = _hub_layout(str(model_path)), str(model_path)
    chosen = pooling or (layout["pooling"] if layout else "mean")
    norm = normalize if normalize is not None else (layout["normalize"] if layout else False)
    return path, chosen, bool(norm)


def _hidden(outputs: Any) -> torch.Tensor:
    return outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]


def embed_batch(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], pooling: str,
                normalize: bool = False) -> torch.Tensor:
    """Sentence embeddings (B, d) of one padded batch: the model's last hidden states pooled over real tokens."""
    from ..model.modeling import pool
    from .common import model_inputs

    hidden = _hidden(model(**model_inputs(model, dict(batch))))
    emb = pool(hidden, batch["attention_mask"], pooling)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


def _tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[dict[str, list[int]]]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    fallback = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else _pad_id(tokenizer)
    feats = []
    for i in range(len(texts)):
        feat = {k: list(enc[k][i]) for k in keys}
        if not feat["input_ids"]:  # a tokenizer without special tokens turns "" into nothing: keep one token
            feat = {k: ([fallback] if k == "input_ids" else [1] if k == "attention_mask" else [0]) for k in keys}
        feats.append(feat)
    return feats


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def encode(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *, pooling: str = "mean",
           normalize: bool = False, batch_size: int = 128, max_length: int = 256, desc: str = "encode",
           precision: str = "auto") -> torch.Tensor:
    """Sentence embeddings of ``texts`` (N, d) in input order, as float32 on the CPU.

    Batches are length-bucketed and sharded over ``accelerate`` processes by
    :func:`~modernalbert.evaluation.common.predict` (every process gets all rows).

    Args:
        model: An encoder (``AutoModel``): ModernAlbert or any HF encoder.
        tokenizer: Its tokenizer.
        texts: The texts.
        pooling: ``"mean"`` over real tokens (default) or ``"cls"`` (first token).
        normalize: L2-normalise the embeddings.
        batch_size: Texts per forward pass.
        max_length: Token limit (truncation).
        desc: Progress-bar label.
        precision: ``"auto"`` (bf16 autocast only on a capable GPU), ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Raises:
        ValueError: Unknown pooling.
    """
    from .common import predict

    _check_pooling(pooling)
    if len(texts) == 0:
        return torch.empty(0, model.config.hidden_size)
    feats = _tokenize(tokenizer, texts, max_length)

    def forward(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return list(embed_batch(m, batch, pooling, normalize).float().cpu())

    rows = predict(model, feats, forward, batch_size=batch_size, pad_token_id=_pad_id(tokenizer), desc=desc,
                   precision=precision)
    return torch.stack(rows).clone()  # clone: a normal tensor (predict ran under inference_mode)


# ============================================================================================ search


def _faiss() -> Any:
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
            faiss = _faiss()
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


def _to_run(scores: torch.Tensor, idx: torch.Tensor, doc_ids: Sequence[str], query_ids: Sequence[str], top_k: int,
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
    return _to_run(*acc.result(), doc_ids, query_ids, top_k, ignore_identical_ids)


# ============================================================================================ metrics


def retrieval_metrics(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                      k_values: Sequence[int] = (10, 100), *, per_query: bool = False) -> dict[str, Any]:
    """trec_eval metrics through ``pytrec_eval``: nDCG@k, Recall@k, P@k, MAP@k for each k, plus MAP and MRR.

    Keys are trec_eval's: ``ndcg_cut_10``, ``recall_100``, ``P_10``, ``map_cut_10``, ``map`` (over the whole
    returned ranking), ``recip_rank``. Means are over the queries in ``qrels``: a judged query absent from the run
    (or with no hits) counts as 0; run queries without judgements are ignored.

    Args:
        qrels: ``{query_id: {doc_id: grade}}`` (grade > 0 is relevant; higher is better for nDCG).
        run: ``{query_id: {doc_id: score}}``.
        k_values: Cut-offs.
        per_query: Also return ``"per_query": {query_id: {metric: value}}``.

    Raises:
        ValueError: No judged query, or a bad cut-off.
    """
    import pytrec_eval

    if not qrels:
        raise ValueError("No judged queries: the qrels are empty.")
    if not k_values or any(int(k) < 1 for k in k_values):
        raise ValueError(f"k_values must be positive cut-offs, got {k_values}.")
    ks = ",".join(str(int(k)) for k in sorted(set(k_values)))
    measures = {f"{m}.{ks}" for m in TREC_MEASURES} | {"map", "recip_rank"}
    qrels_s = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    run_s = {str(q): {str(d): float(s) for d, s in hits.items()} for q, hits in run.items() if str(q) in qrels_s}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels_s, measures)
    scores = evaluator.evaluate({q: hits for q, hits in run_s.items() if hits})
    names = [f"{m}_{int(k)}" for m in TREC_MEASURES for k in sorted(set(k_values))] + ["map", "recip_rank"]
    per = {q: {n: float(scores.get(q, {}).get(n, 0.0)) for n in names} for q in qrels_s}
    out: dict[str, Any] = {n: sum(p[n] for p in per.values()) / len(per) for n in names}
    out["num_queries"] = len(per)
    if per_query:
        out["per_query"] = per
    return out


# ============================================================================================ evaluation


def _as_data(data: str | os.PathLike | BeirData, split: str) -> BeirData:
    return data if isinstance(data, BeirData) else load_beir(data, split)


def retrieve(model: torch.nn.Module, tokenizer: Any, data: BeirData, *, pooling: str = "mean",
             normalize: bool = False, score: str = "cos", top_k: int = 100, batch_size: int = 128,
             max_length: int = 256, chunk_size: int = 50000, use_faiss: bool = False,
             ignore_identical_ids: bool = True, precision: str = "auto") -> tuple[dict[str, dict[str, float]],
                                                                                   dict[str, float]]:
    """Embed ``data``'s queries, then its corpus chunk by chunk into a running top-k (bounded memory).

    Returns:
        ``(run, seconds)`` with ``seconds = {"queries", "corpus", "search"}``.
    """
    if not data.corpus:
        raise ValueError(f"{data.name}: the corpus is empty; nothing to retrieve.")
    if chunk_size < 1 or top_k < 1:
        raise ValueError(f"chunk_size and top_k must be >= 1, got {chunk_size} and {top_k}.")
    t0 = time.perf_counter()
    query_ids = list(data.queries)
    q_emb = encode(model, tokenizer, [data.queries[q] for q in query_ids], pooling=pooling, normalize=normalize,
                   batch_size=batch_size, max_length=max_length, desc="encode queries", precision=precision)
    seconds = {"queries": time.perf_counter() - t0, "corpus": 0.0, "search": 0.0}
    acc = TopK(q_emb, top_k + int(ignore_identical_ids), score=score, use_faiss=use_faiss)
    doc_ids = list(data.corpus)
    chunks = range(0, len(doc_ids), chunk_size)
    for n, start in enumerate(chunks, start=1):
        t1 = time.perf_counter()
        texts = [data.doc_text(d) for d in doc_ids[start:start + chunk_size]]
        d_emb = encode(model, tokenizer, texts, pooling=pooling, normalize=normalize, batch_size=batch_size,
                       max_length=max_length, desc=f"encode corpus {n}/{len(chunks)}", precision=precision)
        t2 = time.perf_counter()
        acc.update(d_emb)
        seconds["corpus"] += t2 - t1
        seconds["search"] += time.perf_counter() - t2
    t3 = time.perf_counter()
    run = _to_run(*acc.result(), doc_ids, query_ids, top_k, ignore_identical_ids)
    seconds["search"] += time.perf_counter() - t3
    return run, seconds


def evaluate_loaded(model: torch.nn.Module, tokenizer: Any, data: BeirData, *, pooling: str = "mean",
                    normalize: bool = False, score: str = "cos", top_k: int = 100, batch_size: int = 128,
                    max_length: int = 256, chunk_size: int = 50000, use_faiss: bool = False,
                    ignore_identical_ids: bool = True, k_values: Sequence[int] = (10, 100),
                    per_query: bool = False, precision: str = "auto") -> dict[str, Any]:
    """:func:`evaluate_retrieval` for a model already in memory."""
    t0 = time.perf_counter()
    run, seconds = retrieve(model, tokenizer, data, pooling=pooling, normalize=normalize, score=score, top_k=top_k,
                            batch_size=batch_size, max_length=max_length, chunk_size=chunk_size,
                            use_faiss=use_faiss, ignore_identical_ids=ignore_identical_ids, precision=precision)
    metrics = retrieval_metrics(data.qrels, run, k_values, per_query=per_query)
    seconds["total"] = time.perf_counter() - t0
    return {
        "data": data.name, "split": data.split, "num_queries": len(data.queries), "num_docs": len(data.corpus),
        "pooling": pooling, "normalize": normalize, "score": score, "top_k": top_k, "max_length": max_length,
        "ignore_identical_ids": ignore_identical_ids, "search": "faiss" if use_faiss else "exact",
        "metrics": {k: v for k, v in metrics.items() if k != "per_query"},
        **({"per_query": metrics["per_query"]} if per_query else {}),
        "seconds": seconds,
    }


def evaluate_retrieval(model_path: str | os.PathLike, data: str | os.PathLike | BeirData, *, split: str = "test",
                       pooling: str | None = None, normalize: bool | None = None, score: str = "cos",
                       batch_size: int = 128, max_length: int = 256, max_queries: int | None = None,
                       top_k: int = 100, chunk_size: int = 50000, use_faiss: bool = False,
                       ignore_identical_ids: bool = True, k_values: Sequence[int] = (10, 100), seed: int = 0,
                       per_query: bool = False, precision: str = "auto") -> dict[str, Any]:
    """Evaluate an encoder on one split of a BEIR(-format) dataset.

    Args:
        model_path: ModernAlbert or any HF encoder folder / hub name; a sentence-transformers folder's pooling and
            normalisation are used unless ``pooling`` / ``normalize`` are given.
        data: A :class:`BeirData`, a BEIR folder or a hub name (see :func:`load_beir`).
        split: Qrels split (when ``data`` is not loaded yet).
        pooling: ``"mean"`` or ``"cls"`` (None: from the folder, else mean).
        normalize: L2-normalise embeddings (None: from the folder, else no; irrelevant for ``score="cos"``).
        score: ``"cos"`` or ``"dot"``.
        batch_size: Texts per forward pass.
        max_length: Token limit of queries and documents (256: sentence-transformers' usual limit, our choice).
        max_queries: Evaluate a seeded sample of this many queries (the whole corpus is still searched).
        top_k: Hits kept per query (100 covers Recall@100).
        chunk_size: Documents embedded and scored at once.
        use_faiss: Search with faiss ``IndexFlatIP``.
        ignore_identical_ids: Drop hits whose id equals the query id.
        k_values: Metric cut-offs.
        seed: Seed of the query sample.
        per_query: Include per-query metrics.
        precision: As :attr:`~modernalbert.evaluation.common.FinetuneConfig.precision`.

    Returns:
        ``{"model", "data", "split", "num_queries", "num_docs", "pooling", …, "metrics": {"ndcg_cut_10",
        "recall_100", "map", …}, "seconds": {…}}``.
    """
    from .common import load_model, load_tokenizer

    hf_path, pooling, normalize = resolve_model(model_path, pooling, normalize)
    data = _as_data(data, split).subsample(max_queries, seed)
    if not data.corpus:
        raise ValueError(f"{data.name}: the corpus is empty; nothing to retrieve.")
    model = load_model(hf_path, "encoder").eval()
    tokenizer = load_tokenizer(hf_path)
    result = evaluate_loaded(model, tokenizer, data, pooling=pooling, normalize=normalize, score=score,
                             top_k=top_k, batch_size=batch_size, max_length=max_length, chunk_size=chunk_size,
                             use_faiss=use_faiss, ignore_identical_ids=ignore_identical_ids, k_values=k_values,
                             per_query=per_query, precision=precision)
    return {"model": str(model_path), **result}


# ============================================================================================ fine-tuning


def _training_pairs(data: BeirData) -> list[tuple[str, str]]:
    pairs = [(qid, did) for qid in sorted(data.qrels) for did, rel in sorted(data.qrels[qid].items())
             if rel > 0 and did in data.corpus]
    if not pairs:
        raise ValueError(f"{data.name} split {data.split!r}: no (query, relevant document) pair with score > 0 and "
                         "the document in the corpus; contrastive fine-tuning needs positives.")
    return pairs


def mine_hard_negatives(model: torch.nn.Module, tokenizer: Any, data: BeirData, *, top_k: int = 30,
                        pooling: str = "mean", normalize: bool = False, score: str = "cos", batch_size: int = 128,
                        max_length: int = 256, chunk_size: int = 50000,
                        use_faiss: bool = False) -> dict[str, list[str]]:
    """Each query's top-``top_k`` documents under ``model``, relevant (score > 0) documents removed, best first."""
    run, _ = retrieve(model, tokenizer, data, pooling=pooling, normalize=normalize, score=score,
                      top_k=top_k + max(len(v) for v in data.qrels.values()), batch_size=batch_size,
                      max_length=max_length, chunk_size=chunk_size, use_faiss=use_faiss)
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


def finetune_retrieval(model_path: str | os.PathLike, data: str | os.PathLike | BeirData, cfg: FinetuneConfig, *,
                       split: str = "train", output_dir: str | os.PathLike | None = None, hard_negatives: int = 0,
                       hard_negatives_file: str | os.PathLike | None = None, mine_top_k: int = 30,
                       pooling: str | None = None, normalize: bool | None = None, score: str = "cos",
                       scale: float = 20.0, symmetric: bool = False, max_length: int = 256,
                       eval_data: str | os.PathLike | BeirData | None = None, eval_split: str | None = "test",
                       eval_max_queries: int | None = None, top_k: int = 100,
                       use_faiss: bool = False) -> dict[str, Any]:
    """Contrastive fine-tuning of an encoder on a BEIR split's (query, relevant document) pairs.

    Loss: :func:`contrastive_loss` (cosine × ``scale``, in-batch negatives, plus ``hard_negatives`` per pair;
    ModernAlbert's router losses are added with the config's coefficients). Under several processes each process
    draws negatives from its own batch (no cross-process gather). The model is saved with
    :func:`save_sentence_transformer` (loads in ``sentence_transformers``).

    Args:
        model_path: Encoder folder or hub name (sentence-transformers folders keep their pooling).
        data: Training data: a :class:`BeirData`, a BEIR folder or a hub name.
        cfg: Optimisation settings (``cfg.max_length`` truncates training texts; ``cfg.batch_size`` pairs per step,
            i.e. ``batch_size - 1`` in-batch negatives per query).
        split: Training qrels split (when ``data`` is not loaded yet).
        output_dir: Where to save the fine-tuned model (not saved when None).
        hard_negatives: Hard negatives per pair (0: in-batch negatives only).
        hard_negatives_file: TSV ``query-id<TAB>corpus-id`` of given negatives (instead of mining).
        mine_top_k: Mined negatives are drawn from each query's top-``mine_top_k`` non-relevant hits
            (30, our choice).
        pooling: ``"mean"`` / ``"cls"`` (None: from the folder, else mean).
        normalize: Saved model's normalisation (None: from the folder, else no).
        score: Evaluation score (the loss always uses cosine).
        scale: Inverse temperature (20, sentence-transformers' default, our choice).
        symmetric: Also the document→query loss.
        max_length: Token limit for mining, evaluation and the saved model's ``max_seq_length``.
        eval_data: Evaluation data (default: ``data``'s ``eval_split`` when ``data`` is a folder or name).
        eval_split: Evaluation split (None: no evaluation).
        eval_max_queries: Evaluate on a seeded sample of queries.
        top_k: Hits per query in evaluation.
        use_faiss: faiss search (mining and evaluation).

    Returns:
        ``{"train": {"pairs", "steps", "history", "seconds", …}, "eval": {…} | None, "output_dir": str | None}``.

    Raises:
        ValueError: No positives, bad ``hard_negatives``, unknown pooling, malformed negative file.
    """
    from accelerate import PartialState

    from .common import finetune, load_model, load_tokenizer

    if hard_negatives < 0:
        raise ValueError(f"hard_negatives must be >= 0, got {hard_negatives}.")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}.")
    if hard_negatives_file is not None and hard_negatives == 0:
        hard_negatives = 1
    hf_path, pooling, normalize = resolve_model(model_path, pooling, normalize)
    train = _as_data(data, split)
    pairs = _training_pairs(train)
    model = load_model(hf_path, "encoder")
    tokenizer = load_tokenizer(hf_path)
    t0 = time.perf_counter()

    negatives: list[list[str]] = [[] for _ in pairs]
    if hard_negatives:
        if hard_negatives_file is not None:
            candidates = read_hard_negatives(hard_negatives_file, train)
        else:
            candidates = mine_hard_negatives(model.eval(), tokenizer, train, top_k=mine_top_k, pooling=pooling,
                                             normalize=normalize, score=score, batch_size=cfg.eval_batch_size,
                                             max_length=max_length, use_faiss=use_faiss)
        negatives = _pick_negatives(pairs, train, candidates, hard_negatives, cfg.seed)
    mined_s = time.perf_counter() - t0

    qids = sorted({q for q, _ in pairs})
    dids = sorted({d for _, d in pairs} | {d for negs in negatives for d in negs})
    q_index, d_index = {q: i for i, q in enumerate(qids)}, {d: i for i, d in enumerate(dids)}
    q_tok = dict(zip(qids, _tokenize(tokenizer, [train.queries[q] for q in qids], cfg.max_length)))
    d_tok = dict(zip(dids, _tokenize(tokenizer, [train.doc_text(d) for d in dids], cfg.max_length)))
    relevant = {q_index[q]: {d_index[d] for d, r in train.qrels[q].items() if r > 0 and d in d_index} for q in qids}
    features = [{"input_ids": q_tok[q]["input_ids"], "query": q_tok[q], "docs": [d_tok[d] for d in [d, *negs]],
                 "query_index": q_index[q], "doc_index": [d_index[x] for x in [d, *negs]]}
                for (q, d), negs in zip(pairs, negatives)]
    pad_id = _pad_id(tokenizer)

    def collate_fn(feats: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from .common import collate

        qb = collate([f["query"] for f in feats], pad_id)
        # positives of every query first, then the negatives: row i of the positives block is query i's target
        width = len(feats[0]["docs"])
        docs = [f["docs"][j] for j in range(width) for f in feats]
        doc_index = [f["doc_index"][j] for j in range(width) for f in feats]
        db = collate(docs, pad_id)
        mask = torch.zeros(len(feats), len(docs), dtype=torch.bool)
        for i, f in enumerate(feats):
            rel = relevant[f["query_index"]]
            for j, di in enumerate(doc_index):
                if j != i and di in rel:
                    mask[i, j] = True
        return {**{f"q_{k}": v for k, v in qb.items()}, **{f"d_{k}": v for k, v in db.items()}, "mask": mask}

    router_coefs = (getattr(model.config, "router_aux_loss_coef", 0.0), getattr(model.config, "router_z_loss_coef",
                                                                                   0.0))

    def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from ..model.modeling import pool
        from .common import model_inputs

        extra = 0.0
        embs = []
        for side in ("q", "d"):
            inputs = {k[2:]: v for k, v in batch.items() if k.startswith(f"{side}_")}
            # the forward's signature is read on the bare model: a DDP wrapper's forward is (*inputs, **kwargs)
            out = m(**model_inputs(getattr(m, "module", m), inputs))
            embs.append(pool(_hidden(out), inputs["attention_mask"], pooling))
            if getattr(out, "router_aux_loss", None) is not None:  # ModernAlbert's MoL load balance, as its heads do
                extra = extra + (router_coefs[0] * out.router_aux_loss + router_coefs[1] * out.router_z_loss) / 2
        return contrastive_loss(embs[0], embs[1], batch["mask"], scale=scale, symmetric=symmetric) + extra

    history = finetune(model, features, cfg, pad_token_id=pad_id, loss_fn=loss_fn, collate_fn=collate_fn,
                       desc="contrastive")
    train_info = {"data": train.name, "split": train.split, "pairs": len(pairs), "queries": len(qids),
                  "hard_negatives": hard_negatives, "negatives_from": ("file" if hard_negatives_file else "mined")
                  if hard_negatives else None, "loss": "symmetric InfoNCE" if symmetric else "InfoNCE",
                  "scale": scale, "pooling": pooling, "normalize": normalize, "steps": history.steps,
                  "history": history.records, "config": cfg.to_dict(),
                  "seconds": {"negatives": mined_s, "total": time.perf_counter() - t0}}
    saved = None
    state = PartialState(cpu=not torch.cuda.is_available())
    if output_dir is not None:
        if state.is_main_process:
            save_sentence_transformer(model, tokenizer, output_dir, pooling, normalize, max_length, score=score)
        state.wait_for_everyone()
        saved = str(output_dir)
    evaluation = None
    if eval_split is not None and (eval_data is not None or not isinstance(data, BeirData)):
        test = _as_data(eval_data if eval_data is not None else data, eval_split).subsample(eval_max_queries,
                                                                                            cfg.seed)
        evaluation = evaluate_loaded(model.eval(), tokenizer, test, pooling=pooling, normalize=normalize,
                                     score=score, top_k=top_k, batch_size=cfg.eval_batch_size,
                                     max_length=max_length, use_faiss=use_faiss, precision=cfg.precision)
    return {"model": str(model_path), "train": train_info, "eval": evaluation, "output_dir": saved}


# ============================================================================================ saving


def save_sentence_transformer(model: torch.nn.Module, tokenizer: Any, folder: str | os.PathLike, pooling: str,
                              normalize: bool, max_length: int, *, score: str = "cos") -> Path:
    """Save an encoder as a sentence-transformers folder (atomically): the HF model and tokenizer, ``modules.json``
    (Transformer → Pooling [→ Normalize]), ``sentence_bert_config.json``, ``1_Pooling/config.json``,
    ``config_sentence_transformers.json``.

    Module types use the classic ``sentence_transformers.models.*`` names, which every sentence-transformers
    version since 2.x loads. Loading a ModernAlbert folder needs ``import modernalbert`` first (registration with
    the ``Auto`` classes); no ``trust_remote_code``.

    Raises:
        ValueError: Unknown pooling or score.
    """
    import shutil
    import tempfile

    from .common import save_model, write_json

    _check_pooling(pooling)
    if score not in SCORES:
        raise ValueError(f"Unknown score {score!r}: use one of {', '.join(SCORES)}.")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-st-")) / "model"
    try:
        save_model(model, tokenizer, staging)
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
            (staging / "2_Normalize").mkdir()
        write_json(staging / "modules.json", modules)
        write_json(staging / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
        write_json(staging / "1_Pooling" / "config.json", {
            "word_embedding_dimension": model.config.hidden_size,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        })
        write_json(staging / "config_sentence_transformers.json", {
            "prompts": {}, "default_prompt_name": None,
            "similarity_fn_name": "cosine" if score == "cos" else "dot",
        })
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    return folder


__all__ = [
    "POOLINGS",
    "SCORES",
    "BeirData",
    "TopK",
    "available_splits",
    "contrastive_loss",
    "embed_batch",
    "encode",
    "evaluate_loaded",
    "evaluate_retrieval",
    "finetune_retrieval",
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
