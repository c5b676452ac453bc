"""End to end on CPU with real data and a real model: RT review→plot (a stand-in in BEIR layout, not BEIR) with the
packaged all-MiniLM-L6-v2 and a small ModernAlbert; contrastive fine-tuning; sentence-transformers round trips."""

import json
import random

import pytest
import torch

from modernalbert import ModernAlbertModel
from modernalbert.evaluation import beir
from modernalbert.evaluation.beir import BeirData, encode, load_beir
from modernalbert.evaluation.config import ContrastiveConfig, FinetuneConfig, RetrievalConfig
from modernalbert.model.loading import load_model, load_tokenizer
from tests.conftest import make_tokenizer, randomize_adapters, small_config
from tests.evaluation.test_beir import write_beir


@pytest.fixture(scope="module")
def minilm():
    from modernalbert.data.sources import fetch

    try:
        return fetch("all-MiniLM-L6-v2")
    except RuntimeError as err:  # no package index reachable and nothing cached
        pytest.skip(f"all-MiniLM-L6-v2 unavailable: {err}")


@pytest.fixture(scope="module")
def rt_folder(tmp_path_factory):
    from modernalbert.data.rotten_tomatoes import write_review_plot_beir

    try:
        return write_review_plot_beir(tmp_path_factory.mktemp("rt") / "rt-review-plot", seed=0)
    except RuntimeError as err:
        pytest.skip(f"Rotten Tomatoes data unavailable: {err}")


def rt_sample(folder, split: str, queries: int, distractors: int, seed: int = 0) -> BeirData:
    """A seeded sample of RT review→plot: ``queries`` queries, their plots and ``distractors`` other plots (the full
    1,083-plot corpus takes ~1 min to embed with MiniLM on 2 CPU cores; the CLI run in the docs uses all of it)."""
    data = load_beir(folder, split).subsample(queries, seed)
    positives = {d for judged in data.qrels.values() for d in judged}
    others = sorted(set(data.corpus) - positives)
    keep = positives | set(random.Random(seed).sample(others, distractors))
    corpus = {d: data.corpus[d] for d in data.corpus if d in keep}
    return BeirData(corpus, data.queries, data.qrels, f"{data.name} (sample)", split)


def test_rt_review_plot_minilm_reports_real_ndcg(minilm, rt_folder):
    data = rt_sample(rt_folder, "test", queries=32, distractors=100)
    out = beir.evaluate_retrieval(minilm, data, RetrievalConfig(max_length=96))
    assert (out["pooling"], out["normalize"]) == ("mean", True)  # read from the sentence-transformers folder
    m = out["metrics"]
    print(f"\nRT review→plot sample ({out['num_queries']} queries, {out['num_docs']} plots), all-MiniLM-L6-v2: "
          f"nDCG@10 {m['ndcg_cut_10']:.4f}  Recall@100 {m['recall_100']:.4f}  MAP {m['map']:.4f}")
    # A real signal: random ranking of ~130 plots with one relevant each gives nDCG@10 of about 0.02.
    assert 0.08 < m["ndcg_cut_10"] <= 1.0 and m["recall_100"] > 0.5


def _small_rt_model(folder, minilm):
    """A small random ModernAlbert with MiniLM's real WordPiece tokenizer (vocabulary 30522)."""
    tokenizer = load_tokenizer(minilm)
    model = ModernAlbertModel(small_config(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id))
    randomize_adapters(model)
    return beir.save_sentence_transformer(model.eval(), tokenizer, folder, "mean", False, 128)


def test_rt_review_plot_small_modernalbert_and_cli(tmp_path, minilm, rt_folder, capsys):
    import argparse

    from modernalbert.cli.suites import beir as beir_cli

    model = _small_rt_model(tmp_path / "ma", minilm)
    parser = argparse.ArgumentParser()
    beir_cli.add_evaluate_arguments(parser, "rt-review-plot")
    args = parser.parse_args([str(model), "--data", str(rt_folder), "--max-queries", "32", "--max-length", "128",
                              "--output-dir", str(tmp_path / "out")])
    args.suite = "rt-review-plot"
    assert beir_cli.run_evaluate(args) == 0
    result = json.loads((tmp_path / "out" / "evaluate-test.json").read_text())
    assert result["suite"] == "rt-review-plot" and result["num_docs"] == 1083 and result["num_queries"] == 32
    assert 0.0 <= result["metrics"]["ndcg_cut_10"] <= 1.0
    assert "rt-review-plot" in capsys.readouterr().out


def _st_embeddings(path, texts):
    from sentence_transformers import SentenceTransformer

    import modernalbert  # noqa: F401  (registers model_type "modernalbert" with the Auto classes)

    return SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_tensor=True, batch_size=4)


def _suite_embeddings(path, texts):
    hf_path, pooling, normalize = beir.resolve_model(path)
    max_length = beir.sentence_transformer_layout(path)["max_seq_length"]  # the limit sentence-transformers applies
    return encode(load_model(hf_path, "encoder"), load_tokenizer(hf_path), texts, pooling=pooling,
                  normalize=normalize, max_length=max_length, batch_size=3)


def test_minilm_contrastive_finetune_changes_model_and_loads_in_sentence_transformers(tmp_path, minilm, rt_folder):
    train = rt_sample(rt_folder, "train", queries=16, distractors=8, seed=1)
    before = {k: v.clone() for k, v in load_model(minilm, "encoder").state_dict().items()}
    cfg = FinetuneConfig(learning_rate=1e-4, batch_size=8, max_steps=2, warmup_ratio=0.0, max_length=48)
    out = beir.finetune_retrieval(minilm, train, cfg, RetrievalConfig(max_length=64),
                                  ContrastiveConfig(hard_negatives=1, mine_top_k=5), output_dir=tmp_path / "ft",
                                  eval_split=None)
    assert out["train"]["steps"] == 2 and out["train"]["negatives_from"] == "mined" and out["eval"] is None
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in out["train"]["history"])
    after = load_model(tmp_path / "ft", "encoder").state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > 50  # every layer moved
    texts = [train.queries[q] for q in list(train.queries)[:5]] + [train.doc_text(d) for d in list(train.corpus)[:3]]
    ours = _suite_embeddings(tmp_path / "ft", texts)
    theirs = _st_embeddings(tmp_path / "ft", texts)
    assert torch.allclose(ours, theirs.cpu(), atol=1e-5), (ours - theirs.cpu()).abs().max()
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)  # Normalize kept


@pytest.mark.parametrize(("pooling", "normalize"), [("mean", True), ("cls", False)])
def test_modernalbert_finetune_saves_a_sentence_transformers_model(tmp_path, pooling, normalize):
    folder = write_beir(tmp_path / "ds")
    model = ModernAlbertModel(small_config())
    randomize_adapters(model)
    base = beir.save_sentence_transformer(model, make_tokenizer(), tmp_path / "base", pooling, normalize, 64)
    negs = tmp_path / "negs.tsv"
    negs.write_text("q1\td3\nq2\td1\n")
    cfg = FinetuneConfig(learning_rate=1e-3, batch_size=2, max_steps=2, warmup_ratio=0.0, precision="fp32")
    out = beir.finetune_retrieval(base, folder, cfg, RetrievalConfig(max_length=64),
                                  ContrastiveConfig(hard_negatives_file=str(negs), symmetric=True),
                                  output_dir=tmp_path / "ft", eval_split="test")
    assert out["train"]["negatives_from"] == "file" and out["eval"]["num_queries"] == 2
    assert out["train"]["pooling"] == pooling and out["train"]["normalize"] == normalize
    texts = ["the cat sat on the mat", "a small bird", "the quick red bird flew over the old house", "fish"]
    ours = _suite_embeddings(tmp_path / "ft", texts)
    assert not torch.allclose(ours, _suite_embeddings(base, texts))  # training moved the model
    assert torch.allclose(ours, _st_embeddings(tmp_path / "ft", texts).cpu(), atol=1e-5)
