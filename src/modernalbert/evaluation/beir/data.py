"""BEIR data: a local folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) or Hugging Face names
(``BeIR/scifact`` with its qrels in ``BeIR/scifact-qrels``) through ``datasets`` when online or cached. As in BEIR, a
split's queries are those its qrels judge; every judged query must exist in ``queries.jsonl``. Malformed input fails
with the file and line: a record that is not JSON, a missing field, a byte that is not UTF-8, a document or query id
used twice (BEIR's own loader would keep the last text without a word), and a (query, document) pair judged twice
with different grades."""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...utils.hub import is_hub_id
from ...utils.io import read_lines


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
    for line_no, line in enumerate(read_lines(path), start=1):
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
            raise ValueError(f"{where}: duplicate document id {doc_id!r} (first at {first_seen[doc_id]}); ids must "
                             "be unique, or the qrels would judge the wrong text: drop or rename one.")
        corpus[doc_id] = {"title": _field(rec, "title", where, required=False), "text": _field(rec, "text", where)}
        first_seen[doc_id] = where
    return corpus


def _queries_from(records: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    queries: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for where, rec in records:
        query_id = _field(rec, "_id", where)
        if query_id in queries:
            raise ValueError(f"{where}: duplicate query id {query_id!r} (first at {first_seen[query_id]}); ids must "
                             "be unique, or the qrels would judge the wrong text: drop or rename one.")
        queries[query_id] = _field(rec, "text", where)
        first_seen[query_id] = where
    return queries


def _parse_qrels_tsv(path: Path) -> list[tuple[str, str, str, int]]:
    """Rows ``(where, query_id, doc_id, score)``; a header line is allowed; TREC's 4-column form too."""
    rows = []
    first = True
    for line_no, line in enumerate(read_lines(path), start=1):
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
    # BEIR's hub datasets are "owner/name" (BeIR/scifact); anything else that is not a folder is a missing path.
    if text.count("/") != 1 or not is_hub_id(path_or_name):
        raise FileNotFoundError(f"No BEIR folder at {text}: give a folder with corpus.jsonl, queries.jsonl and "
                                "qrels/<split>.tsv, or a hub name such as BeIR/scifact.")
    return _load_hub(text, split, qrels_name)


def as_data(data: str | os.PathLike | BeirData, split: str) -> BeirData:
    """``data`` itself, or the ``split`` of the BEIR folder or Hub name it names (:func:`load_beir`)."""
    return data if isinstance(data, BeirData) else load_beir(data, split)


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
    for line_no, line in enumerate(read_lines(path), start=1):
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


__all__ = ["BeirData", "as_data", "available_splits", "load_beir", "read_hard_negatives"]
