"""Rotten Tomatoes stand-ins: the movie-level split and the review→plot BEIR layout, on the real file and fixtures."""

import bz2
import csv
import json

import pytest

from modernalbert.data.rotten_tomatoes import read_rows, sentiment_splits, split_movies, write_review_plot_beir


def _write(path, rows):
    with bz2.open(path, "wt", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
        w.writerows(rows)
    return path


@pytest.fixture
def fixture_csv(tmp_path):
    rows = [["plot", f"plot of movie {m}", f"m{m}", "True"] for m in range(6)]
    rows += [["fresh" if (m + k) % 2 else "rotten", f"review {k} of movie {m}", f"m{m}", "True"]
             for m in range(6) for k in range(3)]
    rows += [["fresh", "review 0 of movie 0", "m0", "True"], ["plot", "", "m9", "False"]]  # a duplicate; empty text
    return _write(tmp_path / "rt.csv.bz2", rows)


def test_movie_split_is_seeded_disjoint_and_complete():
    movies = [f"m{i}" for i in range(100)]
    a = split_movies(movies, seed=1)
    assert [len(g) for g in a] == [80, 10, 10]
    assert set().union(*a) == set(movies) and sum(len(g) for g in a) == 100
    assert a == split_movies(list(reversed(movies)), seed=1)  # input order does not matter
    assert a != split_movies(movies, seed=2)
    with pytest.raises(ValueError, match="sum to 1"):
        split_movies(movies, 0, (0.5, 0.4))


def test_sentiment_splits_keep_movies_apart(fixture_csv):
    splits = sentiment_splits(seed=0, path=fixture_csv, fractions=(0.5, 0.25, 0.25))
    assert sum(len(v) for v in splits.values()) == 18  # duplicate kept once, plots and empty rows out
    movies = {name: {r["sentence"].split()[-1] for r in rows} for name, rows in splits.items()}
    assert not (movies["train"] & movies["validation"]) and not (movies["train"] & movies["test"])
    assert all(r["label"] in (0, 1) for rows in splits.values() for r in rows)


def test_review_plot_beir_layout(fixture_csv, tmp_path):
    folder = write_review_plot_beir(tmp_path / "rt", seed=0, path=fixture_csv)
    corpus = [json.loads(x) for x in (folder / "corpus.jsonl").read_text().splitlines()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())}
    assert len(corpus) == 6 and all(d["title"] == "" for d in corpus)
    plots = {d["_id"]: d["text"] for d in corpus}
    seen = set()
    for split in ("train", "test"):
        lines = (folder / "qrels" / f"{split}.tsv").read_text().splitlines()
        assert lines[0] == "query-id\tcorpus-id\tscore"
        for line in lines[1:]:
            qid, did, _ = line.split("\t")
            assert queries[qid].split()[-1] == plots[did].split()[-1]  # relevant = the same movie's plot
            seen.add(qid)
    assert seen == set(queries)


def test_malformed_rows_name_file_and_line(tmp_path):
    bad = _write(tmp_path / "bad.csv.bz2", [["fresh", "fine", "m1", "True"], ["great", "x", "m2", "True"]])
    with pytest.raises(ValueError, match=r"bad.csv.bz2, line 3: category 'great'"):
        read_rows(bad)
    with pytest.raises(FileNotFoundError, match="data fetch"):
        read_rows(tmp_path / "missing.csv.bz2")


def test_real_file_split_sizes():
    splits = sentiment_splits(seed=0)  # the packaged file (fetched once into the cache)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 12752  # 12,808 reviews less exact duplicates
    assert 0.75 < sizes["train"] / sum(sizes.values()) < 0.85
