"""BEIR suite: loader, pooling, encoding, chunked search, trec_eval metrics, loss, CLI (small and fast)."""

import json
import math
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval
import torch

from modernalbert import ModernAlbertModel
from modernalbert.evaluation import beir
from modernalbert.evaluation.beir import (
    BeirData,
    contrastive_loss,
    encode,
    load_beir,
    resolve_model,
    retrieval_metrics,
    search,
    sentence_transformer_layout,
)
from modernalbert.evaluation.beir import index as beir_index
from modernalbert.evaluation.config import RetrievalConfig
from tests.conftest import make_tokenizer, randomize_adapters, small_config

# ============================================================================================ fixtures




def write_beir(folder: Path, corpus=None, queries=None, qrels=None) -> Path:
    """A BEIR folder; ``qrels`` maps split -> list of lines (a header is added)."""
    corpus = corpus if corpus is not None else [
        {"_id": "d1", "title": "Cats", "text": "the cat sat on the mat"},
        {"_id": "d2", "title": "", "text": "the dog ran under the tree"},
        {"_id": "d3", "title": "Birds", "text": "a small bird flew over the river"},
        {"_id": "d4", "text": "the fish swam near the old house"},
    ]
    queries = queries if queries is not None else [
        {"_id": "q1", "text": "cat on a mat"}, {"_id": "q2", "text": "dog and tree"},
        {"_id": "q3", "text": "bird over river"}, {"_id": "q4", "text": "fish near house"},
    ]
    qrels = qrels if qrels is not None else {
        "train": ["q1\td1\t1", "q2\td2\t1", "q2\td4\t0"], "dev": ["q3\td3\t2"], "test": ["q3\td3\t1", "q4\td4\t2"],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    for split, lines in qrels.items():
        header = "query-id\tcorpus-id\tscore\n"
        (folder / "qrels" / f"{split}.tsv").write_text(header + "".join(f"{x}\n" for x in lines))
    return folder


def small_model(**overrides) -> ModernAlbertModel:
    model = ModernAlbertModel(small_config(**overrides)).eval()
    randomize_adapters(model)
    return model


def save_small(folder: Path, pooling="mean", normalize=False) -> Path:
    return beir.save_sentence_transformer(small_model(), make_tokenizer(), folder, pooling, normalize, 64)


# ============================================================================================ metrics


def test_ndcg_by_hand_graded_ties_and_a_missed_query():
    qrels = {
        "q1": {"d1": 2, "d2": 1, "d3": 0, "d9": 1},  # graded; d9 is never retrieved
        "q2": {"d5": 1},  # its relevant document is not retrieved at all
        "q3": {"d1": 1},  # tie at 0.5: trec_eval breaks score ties by doc id, descending -> d2 before d1
        "q4": {"d8": 1},  # judged, absent from the run: counts as 0 (trec_eval -c)
    }
    run = {
        "q1": {"d2": 0.9, "d1": 0.8, "d3": 0.7, "d4": 0.6},
        "q2": {"d6": 1.0, "d7": 0.5},
        "q3": {"d2": 0.5, "d1": 0.5, "d3": 0.9},
        "q5": {"d1": 1.0},  # not judged: ignored
    }
    # trec_eval nDCG: gain = grade, discount log2(rank + 1); the ideal ranking sorts all judged grades.
    dcg_q1 = 1 / math.log2(2) + 2 / math.log2(3)  # d2 (1) at rank 1, d1 (2) at rank 2, d3 (0), d4 (unjudged)
    idcg_q1 = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)  # grades 2, 1, 1 (d9 counts)
    ndcg = {"q1": dcg_q1 / idcg_q1, "q2": 0.0, "q3": (1 / math.log2(4)) / 1.0, "q4": 0.0}  # q3: d3, d2, d1
    assert ndcg["q1"] == pytest.approx(0.722424, abs=1e-6)

    out = retrieval_metrics(qrels, run, per_query=True, semantics="trec_eval")
    for q, value in ndcg.items():
        assert out["per_query"][q]["ndcg_cut_10"] == pytest.approx(value, abs=1e-9)
    assert out["ndcg_cut_10"] == pytest.approx(sum(ndcg.values()) / 4, abs=1e-9)
    assert out["num_queries"] == 4 and "q5" not in out["per_query"]
    # Recall@100 and MAP by hand: q1 finds 2 of its 3 relevant at ranks 1, 2; q3 finds its one at rank 3.
    assert out["recall_100"] == pytest.approx((2 / 3 + 0 + 1 + 0) / 4)
    assert out["map"] == pytest.approx(((1 / 1 + 2 / 2) / 3 + 0 + 1 / 3 + 0) / 4)
    # BEIR's semantics (the default): q4, judged but absent from the run, is left out of the means.
    beir_out = retrieval_metrics(qrels, run, per_query=True)
    assert beir_out["semantics"] == "beir" and beir_out["num_queries"] == 3 and "q4" not in beir_out["per_query"]
    assert beir_out["num_judged_queries"] == 4 and beir_out["judged_queries_without_hits"] == 1
    assert beir_out["ndcg_cut_10"] == pytest.approx((ndcg["q1"] + ndcg["q2"] + ndcg["q3"]) / 3, abs=1e-9)

    # the same per-query values as pytrec_eval itself (which leaves out queries missing from the run)
    direct = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map"}).evaluate(run)
    for q, values in direct.items():
        for name, value in values.items():
            assert out["per_query"][q][name] == pytest.approx(value, abs=1e-12)


def test_metrics_equal_pytrec_eval_on_random_runs():
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(60)]
    qrels = {f"q{i}": {d: int(rng.integers(0, 3)) for d in rng.choice(docs, 5, replace=False)} for i in range(20)}
    run = {q: {d: float(rng.normal()) for d in rng.choice(docs, 30, replace=False)} for q in qrels}
    out = retrieval_metrics(qrels, run, k_values=(5, 10, 100), per_query=True)
    measures = {"ndcg_cut.5,10,100", "recall.5,10,100", "P.5,10,100", "map_cut.5,10,100", "map", "recip_rank"}
    direct = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    for q in qrels:
        for name, value in direct[q].items():
            assert out["per_query"][q][name] == pytest.approx(value, abs=1e-12), (q, name)
    for name in ("ndcg_cut_10", "recall_100", "map", "P_5"):
        assert out[name] == pytest.approx(np.mean([direct[q][name] for q in qrels]), abs=1e-12)


def test_metrics_reject_empty_qrels():
    with pytest.raises(ValueError, match="qrels are empty"):
        retrieval_metrics({}, {"q": {"d": 1.0}})
    with pytest.raises(ValueError, match="semantics='trec' is invalid"):
        retrieval_metrics({"q": {"d": 1}}, {"q": {"d": 1.0}}, semantics="trec")
    with pytest.raises(ValueError, match="nothing to average"):  # BEIR semantics, no judged query ranked
        retrieval_metrics({"q": {"d": 1}}, {"other": {"d": 1.0}})
    assert retrieval_metrics({"q": {"d": 1}}, {}, semantics="trec_eval")["ndcg_cut_10"] == 0.0


def _beir_reference(qrels, run, k_values, ignore_identical_ids):
    """What BEIR's EvaluateRetrieval.evaluate computes, step by step on pytrec_eval: drop identical ids, evaluate
    the run as it is (pytrec_eval leaves out queries without a ranking), average over the evaluated queries."""
    if ignore_identical_ids:
        run = {q: {d: s for d, s in hits.items() if d != q} for q, hits in run.items()}
    ks = ",".join(map(str, k_values))
    scores = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{ks}", f"recall.{ks}", "map"}).evaluate(run)
    names = [f"ndcg_cut_{k}" for k in k_values] + [f"recall_{k}" for k in k_values] + ["map"]
    return {n: np.mean([scores[q][n] for q in scores]) for n in names}, len(scores)


@pytest.mark.parametrize("ignore_identical_ids", [True, False])
def test_beir_semantics_equal_pytrec_eval_with_missing_queries_and_self_hits(ignore_identical_ids):
    rng = np.random.default_rng(1)
    ids = [f"x{i}" for i in range(40)]  # one id space for queries and documents (e.g. Quora, ArguAna)
    qrels = {q: {d: int(rng.integers(1, 3)) for d in rng.choice(ids, 3, replace=False)} for q in ids[:15]}
    run = {q: {d: float(rng.normal()) for d in rng.choice(ids, 12, replace=False)} | {q: 9.0} for q in ids[:11]}
    out = retrieval_metrics(qrels, run, k_values=(3, 10), ignore_identical_ids=ignore_identical_ids)
    reference, evaluated = _beir_reference(qrels, run, (3, 10), ignore_identical_ids)
    assert out["num_queries"] == evaluated == 11 and out["judged_queries_without_hits"] == 4
    for name, value in reference.items():
        assert out[name] == pytest.approx(value, abs=1e-12), name
    # trec_eval -c: the four unranked judged queries count as 0 in means over all fifteen.
    c = retrieval_metrics(qrels, run, k_values=(3, 10), semantics="trec_eval",
                          ignore_identical_ids=ignore_identical_ids)
    assert c["num_queries"] == 15
    assert c["ndcg_cut_10"] == pytest.approx(reference["ndcg_cut_10"] * 11 / 15, abs=1e-12)


# ============================================================================================ search


def _brute(q, d, k, score):
    if score == "cos":
        q, d = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(d, dim=-1)
    s = q @ d.T
    return torch.topk(s, min(k, d.shape[0]), dim=1)


@pytest.mark.parametrize("score", ["cos", "dot"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_search_equals_brute_force(score, chunk_size):
    g = torch.Generator().manual_seed(1)
    q, d = torch.randn(13, 8, generator=g), torch.randn(150, 8, generator=g)
    doc_ids, query_ids = [f"d{i}" for i in range(150)], [f"q{i}" for i in range(13)]
    run = search(q, d, doc_ids, query_ids, top_k=10, score=score, chunk_size=chunk_size)
    vals, idx = _brute(q, d, 10, score)
    for i, qid in enumerate(query_ids):
        assert list(run[qid]) == [doc_ids[j] for j in idx[i].tolist()]
        assert list(run[qid].values()) == pytest.approx(vals[i].tolist(), abs=1e-5)


def test_search_query_blocks_and_small_corpus(monkeypatch):
    monkeypatch.setattr(beir_index, "QUERY_BLOCK", 4)  # several query blocks per chunk
    g = torch.Generator().manual_seed(2)
    q, d = torch.randn(11, 6, generator=g), torch.randn(5, 6, generator=g)
    run = search(q, d, list("abcde"), [f"q{i}" for i in range(11)], top_k=100, chunk_size=2, score="dot")
    _, idx = _brute(q, d, 100, "dot")
    for i in range(11):
        assert list(run[f"q{i}"]) == [list("abcde")[j] for j in idx[i].tolist()]  # top_k > D: all 5, in order


def test_ignore_identical_ids_drops_self_hits_and_keeps_top_k():
    emb = torch.eye(4) + 0.1
    ids = ["a", "b", "c", "d"]
    kept = search(emb, emb, ids, ids, top_k=2, ignore_identical_ids=False)
    assert all(next(iter(kept[i])) == i for i in ids)  # each query's best hit is itself
    dropped = search(emb, emb, ids, ids, top_k=2)
    assert all(i not in dropped[i] and len(dropped[i]) == 2 for i in ids)


def test_search_errors():
    q, d = torch.randn(2, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="corpus is empty"):
        search(q, torch.empty(0, 4), [], ["a", "b"])
    with pytest.raises(ValueError, match="counts must match"):
        search(q, d, ["x"], ["a", "b"])
    with pytest.raises(ValueError, match="Unknown score"):
        search(q, d, ["x", "y", "z"], ["a", "b"], score="l2")
    with pytest.raises(ValueError, match="width"):
        search(q, torch.randn(3, 5), ["x", "y", "z"], ["a", "b"])


def test_faiss_missing_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(ImportError, match=r"modernalbert\[faiss\]"):
        search(torch.randn(2, 4), torch.randn(3, 4), ["x", "y", "z"], ["a", "b"], use_faiss=True)


def test_faiss_path_equals_exact_search(monkeypatch):
    """The faiss code path (chunks added to an IndexFlatIP, one search at the end) against exact search; a NumPy
    stand-in plays faiss when it is not installed."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        class IndexFlatIP:
            def __init__(self, dim):
                self.x = np.zeros((0, dim), dtype=np.float32)

            def add(self, x):
                self.x = np.concatenate([self.x, x])

            def search(self, q, k):
                s = q @ self.x.T
                idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
                return np.take_along_axis(s, idx, 1), idx

        monkeypatch.setitem(sys.modules, "faiss", types.SimpleNamespace(IndexFlatIP=IndexFlatIP))
    g = torch.Generator().manual_seed(3)
    q, d = torch.randn(9, 16, generator=g), torch.randn(40, 16, generator=g)
    ids = [f"d{i}" for i in range(40)]
    exact = search(q, d, ids, [f"q{i}" for i in range(9)], top_k=7, chunk_size=6)
    approx = search(q, d, ids, [f"q{i}" for i in range(9)], top_k=7, chunk_size=6, use_faiss=True)
    for qid in exact:
        assert list(exact[qid]) == list(approx[qid])
        assert list(exact[qid].values()) == pytest.approx(list(approx[qid].values()), abs=1e-5)


# ============================================================================================ loader


def test_loader_reads_splits_titles_and_headers(tmp_path):
    folder = write_beir(tmp_path / "ds")
    assert beir.available_splits(folder) == ["dev", "test", "train"]
    train = load_beir(folder, "train")
    assert train.queries == {"q1": "cat on a mat", "q2": "dog and tree"}  # the split's judged queries only
    assert train.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1, "d4": 0}}
    assert len(train.corpus) == 4 and train.corpus["d4"] == {"title": "", "text": "the fish swam near the old house"}
    assert train.doc_text("d1") == "Cats the cat sat on the mat"  # title + " " + text
    assert train.doc_text("d2") == "the dog ran under the tree"
    assert load_beir(str(folder), "dev").qrels == {"q3": {"d3": 2}}
    test = load_beir(folder)
    assert test.split == "test" and set(test.queries) == {"q3", "q4"}
    assert test.subsample(1, seed=0).queries.keys() <= {"q3", "q4"} and len(test.subsample(1).qrels) == 1


def test_loader_reads_trec_qrels_and_warns_on_unknown_docs(tmp_path):
    folder = write_beir(tmp_path / "ds", qrels={"test": ["q1 0 d1 1", "q2 0 d99 1"]})
    with pytest.warns(UserWarning, match="not in .*corpus.jsonl"):
        data = load_beir(folder)
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d99": 1}}


@pytest.mark.parametrize(("target", "content", "message"), [
    ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n{"_id": "d3", "text": \n',
     r"corpus\.jsonl, line 3: not valid JSON"),
    ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"title": "t", "text": "b"}\n', r"corpus\.jsonl, line 2: .*'_id'"),
    ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n', r"line 2: duplicate .*'d1'.*line 1"),
    ("queries.jsonl", '{"_id": "q1"}\n', r"queries\.jsonl, line 1: missing field 'text'"),
    ("queries.jsonl", '["q1", "x"]\n', r"queries\.jsonl, line 1: expected a JSON object"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n", r"test\.tsv, line 3: expected 3"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\thigh\n", r"test\.tsv, line 3: score 'high'"),
])
def test_malformed_files_name_file_and_line(tmp_path, target, content, message):
    folder = write_beir(tmp_path / "ds")
    (folder / target).write_text(content)
    with pytest.raises(ValueError, match=message):
        load_beir(folder, "test")


def test_bad_input_errors(tmp_path):
    folder = write_beir(tmp_path / "a", qrels={"test": ["q1\td1\t1", "q7\td2\t1"]})
    with pytest.raises(ValueError, match=r"test\.tsv, line 3: query id 'q7' is not in .*queries\.jsonl"):
        load_beir(folder)
    folder = write_beir(tmp_path / "b", qrels={"test": ["x1\td1\t1", "x2\td2\t1"]})
    with pytest.raises(ValueError, match="none of its 2 query ids is in"):
        load_beir(folder)
    folder = write_beir(tmp_path / "c", corpus=[])
    with pytest.raises(ValueError, match="corpus is empty"):
        load_beir(folder)
    folder = write_beir(tmp_path / "d", qrels={"test": []})
    with pytest.raises(ValueError, match="no relevance judgements"):
        load_beir(folder)
    with pytest.raises(FileNotFoundError, match=r"no split 'validation' .*available: dev, test, train"):
        load_beir(write_beir(tmp_path / "e"), "validation")
    with pytest.raises(FileNotFoundError, match="No BEIR folder"):
        load_beir(tmp_path / "missing")
    (tmp_path / "f").mkdir()
    with pytest.raises(FileNotFoundError, match=r"corpus\.jsonl does not exist"):
        load_beir(tmp_path / "f")


def test_hub_names_go_through_datasets(monkeypatch):
    datasets = pytest.importorskip("datasets")
    tables = {
        ("BeIR/toy", "corpus"): [{"_id": 1, "title": "T", "text": "one"}, {"_id": 2, "title": "", "text": "two"}],
        ("BeIR/toy", "queries"): [{"_id": 7, "text": "q seven"}, {"_id": 8, "text": "q eight"}],
        ("BeIR/toy-qrels", "test"): [{"query-id": 7, "corpus-id": 2, "score": 1}],
    }
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return tables[(name, config if config else split)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_beir("BeIR/toy", "test")
    assert data.queries == {"7": "q seven"} and data.qrels == {"7": {"2": 1}}
    assert data.corpus["1"] == {"title": "T", "text": "one"}
    assert ("BeIR/toy-qrels", None, "test") in calls

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="Offline\\? Give a local BEIR folder"):
        load_beir("BeIR/toy", "test")


def test_hard_negative_file(tmp_path):
    data = load_beir(write_beir(tmp_path / "ds"), "train")
    path = tmp_path / "negs.tsv"
    path.write_text("query-id\tcorpus-id\nq1\td3\nq1\td4\nq2\td1\n")
    assert beir.read_hard_negatives(path, data) == {"q1": ["d3", "d4"], "q2": ["d1"]}
    path.write_text("q1\td3\nq1\tnope\n")
    with pytest.raises(ValueError, match=r"negs\.tsv, line 2: corpus id 'nope'"):
        beir.read_hard_negatives(path, data)


# ============================================================================================ pooling and encoding


def test_pooling_from_sentence_transformers_folders(tmp_path):
    from modernalbert.data.sources import cache_dir

    minilm = cache_dir() / "all-MiniLM-L6-v2"
    if (minilm / "modules.json").is_file():  # the packaged real folder: mean pooling + Normalize
        layout = sentence_transformer_layout(minilm)
        assert (layout["pooling"], layout["normalize"], layout["max_seq_length"]) == ("mean", True, 256)
    folder = save_small(tmp_path / "cls", pooling="cls", normalize=False)
    assert resolve_model(folder)[1:] == ("cls", False)
    assert resolve_model(folder, "mean", True)[1:] == ("mean", True)  # explicit arguments win
    # sentence-transformers >= 6 writes "pooling_mode": "<mode>"
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 64, "pooling_mode": "mean"}))
    assert resolve_model(folder)[1] == "mean"
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match=r"1_Pooling/config\.json: pooling \['max'\] is not supported"):
        resolve_model(folder)
    assert resolve_model(tmp_path / "plain-name-not-a-folder") == (str(tmp_path / "plain-name-not-a-folder"), "mean",
                                                                    False)


def test_pooling_of_a_hub_model_is_read_from_its_small_files(tmp_path, monkeypatch):
    import huggingface_hub

    folder = save_small(tmp_path / "snap", pooling="cls", normalize=True)
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda name, **kw: asked.append(kw) or str(folder))
    assert resolve_model("org/model") == ("org/model", "cls", True)
    assert "modules.json" in asked[0]["allow_patterns"]

    def offline(name, **kw):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert resolve_model("org/model") == ("org/model", "mean", False)  # defaults when nothing can be read


def test_unknown_pooling_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Unknown pooling 'max'"):
        encode(small_model(), make_tokenizer(), ["a cat"], pooling="max")
    with pytest.raises(ValueError, match="Unknown pooling 'max'"):
        resolve_model(tmp_path, "max")
    with pytest.raises(ValueError, match="Unknown pooling"):
        beir.save_sentence_transformer(small_model(), make_tokenizer(), tmp_path / "x", "max", False, 64)


def test_encode_matches_unbatched_forward_in_input_order():
    model, tok = small_model(), make_tokenizer()
    texts = ["the cat sat on the mat", "a dog", "the quick red bird flew over the old house and then the river",
             "green fish", "the"]
    emb = encode(model, tok, texts, pooling="mean", batch_size=2)
    cls = encode(model, tok, texts, pooling="cls", normalize=True, batch_size=3)
    with torch.no_grad():
        for i, text in enumerate(texts):
            ids = torch.tensor([tok(text)["input_ids"]])
            hidden = model(ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            assert torch.allclose(emb[i], hidden.mean(0), atol=1e-5)
            assert torch.allclose(cls[i], torch.nn.functional.normalize(hidden[0], dim=-1), atol=1e-5)
    assert encode(model, tok, [], pooling="mean").shape == (0, 64)


# ============================================================================================ loss


def test_contrastive_loss_by_hand_and_masking():
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(3, 5, generator=g), torch.randn(6, 5, generator=g)  # 3 positives + 3 hard negatives
    mask = torch.zeros(3, 6, dtype=torch.bool)
    sim = 20 * torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T
    by_hand = -torch.stack([sim[i].log_softmax(0)[i] for i in range(3)]).mean()
    assert contrastive_loss(q, d, mask) == pytest.approx(float(by_hand), abs=1e-5)
    mask[0, 1] = True  # doc 1 is also relevant to query 0: not a negative of it
    masked = -(sim[0, 0] - torch.logsumexp(sim[0, [0, 2, 3, 4, 5]], 0))
    rows = [masked] + [-sim[i].log_softmax(0)[i] for i in (1, 2)]
    assert contrastive_loss(q, d, mask) == pytest.approx(float(torch.stack(rows).mean()), abs=1e-5)
    back = -torch.stack([sim[:, :3].T[i].log_softmax(0)[i] for i in range(3)]).mean()
    sym = contrastive_loss(q, d, torch.zeros(3, 6, dtype=torch.bool), symmetric=True)
    assert sym == pytest.approx(float((by_hand + back) / 2), abs=1e-5)


# ============================================================================================ evaluation and CLI


def test_evaluate_retrieval_runs_and_reports(tmp_path):
    folder = write_beir(tmp_path / "ds")
    model = save_small(tmp_path / "model")
    out = beir.evaluate_retrieval(model, folder, RetrievalConfig(batch_size=2, chunk_size=3), split="test")
    assert out["num_queries"] == 2 and out["num_docs"] == 4 and out["pooling"] == "mean"
    assert 0.0 <= out["metrics"]["ndcg_cut_10"] <= 1.0 and out["metrics"]["recall_100"] == 1.0  # 4 docs, top 100
    data = load_beir(folder)
    empty = BeirData({}, data.queries, data.qrels, "empty")
    with pytest.raises(ValueError, match="corpus is empty"):
        beir.evaluate_retrieval(model, empty)


def _parse(verb: str, suite: str, argv: list[str]):
    import argparse

    from modernalbert.cli.suites import beir as beir_cli

    parser = argparse.ArgumentParser()
    getattr(beir_cli, f"add_{verb}_arguments")(parser, suite)
    args = parser.parse_args(argv)
    args.suite = suite
    return args


def test_cli_evaluate_and_finetune_write_json(tmp_path, capsys):
    from modernalbert.cli.suites import beir as beir_cli

    folder = write_beir(tmp_path / "ds")
    model = save_small(tmp_path / "model")
    args = _parse("evaluate", "beir", [str(model), "--data", str(folder), "--output-dir", str(tmp_path / "out"),
                                       "--pooling", "cls", "--batch-size", "2"])
    assert beir_cli.run_evaluate(args) == 0
    result = json.loads((tmp_path / "out" / "evaluate-test.json").read_text())
    assert result["suite"] == "beir" and result["pooling"] == "cls" and "ndcg_cut_10" in result["metrics"]
    assert "| nDCG@10 | Recall@100 | MAP |" in capsys.readouterr().out
    args = _parse("finetune", "beir", [str(model), "--data", str(folder), "--output-dir", str(tmp_path / "ft"),
                                       "--max-steps", "2", "--batch-size", "2", "--learning-rate", "1e-3",
                                       "--hard-negatives", "1", "--eval-split", "dev"])
    assert beir_cli.run_finetune(args) == 0
    result = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert result["train"]["steps"] == 2 and result["eval"]["split"] == "dev"
    assert (tmp_path / "ft" / "model" / "modules.json").is_file()
    with pytest.raises(SystemExit):  # argparse rejects an unknown pooling
        _parse("evaluate", "beir", [str(model), "--data", str(folder), "--pooling", "max"])
    args = _parse("evaluate", "beir", [str(model), "--data", str(folder), "--faiss"])
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "faiss", None)
        with pytest.raises(ValueError, match="faiss"):
            beir_cli.run_evaluate(args)
