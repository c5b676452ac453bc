"""``predict`` and ``encode`` as a specification: outputs equal the PyTorch model's own, row by row in input order
(probabilities and embeddings to atol 1e-5 for PyTorch folders, 1e-4 for ONNX folders; labels exactly), whatever the
batching (one row per call, or length-bucketed chunks of a large file), in bounded memory; bad input named."""

import csv
import json
import random
import tracemalloc

import numpy as np
import pytest
import torch

from modernalbert.cli.main import main
from modernalbert.export.merge import merge_experts
from modernalbert.inference import encode, predict
from modernalbert.inference.tasks import entity_spans
from modernalbert.model.loading import save_model
from modernalbert.model.modeling import (
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertModel,
    pool,
)
from tests.conftest import WORDS, make_tokenizer, padded_batch, randomize_adapters, small_config

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TAGS = {0: "O", 1: "B-ANIMAL", 2: "I-ANIMAL", 3: "B-PLACE", 4: "I-PLACE"}


def _texts(n, seed=0, longest=30):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest))) for _ in range(n)]


def _write_csv(path, texts, column="text"):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", column])
        w.writerows([i, t] for i, t in enumerate(texts))
    return path


def _save(tmp_path, cls, name, **config):
    model = cls(small_config(vocab_size=64, **config)).eval()
    randomize_adapters(model)
    model = merge_experts(model, form="fold").eval()
    save_model(model, make_tokenizer(), tmp_path / name)
    return model, tmp_path / name


def _reference(model, texts, fn):
    """The model's own output for each text alone (batch size 1)."""
    tok = make_tokenizer()
    out = []
    for t in texts:
        enc = tok(t, return_tensors="pt")
        with torch.no_grad():
            out.append(fn(model, enc["input_ids"], enc["attention_mask"]))
    return out


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("clf"), ModernAlbertForSequenceClassification, "clf", num_labels=3,
                 id2label=LABELS, label2id={v: k for k, v in LABELS.items()})


def _probs(model, ids, mask):
    return torch.softmax(model(input_ids=ids, attention_mask=mask).logits[0].double(), -1).numpy()


@pytest.mark.parametrize("batching", [dict(batch_size=1), dict(max_tokens=64, chunk_size=7)])
def test_predict_equals_the_model_in_input_order(tmp_path, classifier, batching):
    model, folder = classifier
    texts = _texts(40)
    n = predict(folder, _write_csv(tmp_path / "in.csv", texts), tmp_path / "out.jsonl", progress=False, **batching)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert n == len(records) == len(texts)
    for rec, ref in zip(records, _reference(model, texts, _probs)):
        assert rec["label"] == LABELS[int(ref.argmax())]
        np.testing.assert_allclose([rec["scores"][LABELS[i]] for i in range(3)], ref, atol=1e-5, rtol=0)


def test_onnx_folder_predicts_and_encodes_as_pytorch(tmp_path, classifier):
    """The export command's deployment graph (and the reference graph) behind the same commands."""
    model, folder = classifier
    assert main(["export", "onnx", str(folder), str(tmp_path / "onnx"), "--deploy", "--int8"]) == 0
    texts = _texts(30, seed=1)
    src = _write_csv(tmp_path / "in.csv", texts)
    ref = _reference(model, texts, _probs)
    for graph in ("model.deploy.onnx", "model.onnx"):
        predict(tmp_path / "onnx", src, tmp_path / "p.csv", graph=graph, progress=False)
        with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert [r["label"] for r in rows] == [LABELS[int(p.argmax())] for p in ref]
        got = np.array([[json.loads(r["scores"])[LABELS[i]] for i in range(3)] for r in rows])
        np.testing.assert_allclose(got, np.stack(ref), atol=1e-4, rtol=0)
    encode(tmp_path / "onnx", src, tmp_path / "e.npy", progress=False)  # the deployment graph's mean embedding
    mean = _reference(model, texts, lambda m, i, a: pool(m.model(input_ids=i, attention_mask=a).last_hidden_state,
                                                          a, "mean")[0].numpy())
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), np.stack(mean), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"not 'sentence_embedding'.*--pooling mean"):
        encode(tmp_path / "onnx", src, tmp_path / "e.npy", graph="model.onnx", progress=False)
    # The deployment graph's RoPE caches end at max_position_embeddings: a longer --max-length is refused up front.
    too_long = model.config.max_position_embeddings + 1
    with pytest.raises(ValueError, match=rf"--max-length {too_long} exceeds .*max_position_embeddings"):
        predict(tmp_path / "onnx", src, tmp_path / "p.csv", max_length=too_long, progress=False)
    predict(tmp_path / "onnx", src, tmp_path / "p.csv", graph="model.onnx", max_length=too_long, progress=False)


def test_token_classification_writes_entity_spans(tmp_path):
    model, folder = _save(tmp_path, ModernAlbertForTokenClassification, "tok", num_labels=5, id2label=TAGS,
                          label2id={v: k for k, v in TAGS.items()})
    texts = _texts(12, seed=2)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"sentence": t}) + "\n" for t in texts))
    predict(folder, src, tmp_path / "out.jsonl", text_column="sentence", max_tokens=40, progress=False)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    tok = make_tokenizer()
    names = [TAGS[i] for i in range(5)]
    for rec, text in zip(records, texts, strict=True):
        enc = tok(text, return_offsets_mapping=True)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc["input_ids"]])).logits[0].numpy()
        ref = entity_spans(logits, enc["offset_mapping"], text, names)
        assert [{k: v for k, v in e.items() if k != "score"} for e in rec["entities"]] == \
            [{k: v for k, v in e.items() if k != "score"} for e in ref]
        np.testing.assert_allclose([e["score"] for e in rec["entities"]], [e["score"] for e in ref], atol=1e-5)
        assert all(e["text"] == text[e["start"]:e["end"]] for e in rec["entities"])


def test_entity_spans_group_bio_tags_as_the_simple_strategy():
    text = "the big cat sat near the river bank"
    offsets = [(0, 0), (0, 3), (4, 7), (8, 11), (12, 15), (16, 20), (21, 24), (25, 30), (31, 35), (0, 0)]
    tags = [0, 0, 1, 2, 0, 0, 3, 4, 3, 1]  # CLS, the, big=B-ANIMAL, cat=I-ANIMAL, ..., bank=B-PLACE, SEP
    logits = np.full((len(tags), 5), -5.0)
    logits[np.arange(len(tags)), tags] = 5.0
    spans = entity_spans(logits, offsets, text, [TAGS[i] for i in range(5)])
    assert [(s["entity"], s["text"]) for s in spans] == [("ANIMAL", "big cat"), ("PLACE", "the river"),
                                                         ("PLACE", "bank")]


def _encode_peak(folder, tmp_path, n):
    src = _write_csv(tmp_path / f"in{n}.csv", _texts(n, seed=n))
    tracemalloc.start()
    encode(folder, src, tmp_path / f"e{n}.parquet", chunk_size=128, max_tokens=512, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_encode_streams_large_files_in_bounded_memory(tmp_path):
    """4x the rows, about the same peak of Python/numpy memory (tracemalloc): nothing grows with the file. The
    embeddings equal the model's own at batch size 1, in input order, in both formats."""
    model = ModernAlbertModel(small_config(vocab_size=64, mol_groups=[])).eval()
    save_model(model, make_tokenizer(), tmp_path / "enc")
    _encode_peak(tmp_path / "enc", tmp_path, 50)  # first call: lazy imports and caches, not measured
    small, large = _encode_peak(tmp_path / "enc", tmp_path, 600), _encode_peak(tmp_path / "enc", tmp_path, 2400)
    # measured ~0.7 MB each; reading the whole file as one chunk gives 1.0 MB and 3.8 MB
    assert large < 1.5 * small, (small, large)
    import pyarrow.parquet as pq

    got = np.stack(pq.read_table(tmp_path / "e2400.parquet")["embedding"].to_numpy(zero_copy_only=False))
    assert got.shape == (2400, 64)
    texts = _texts(2400, seed=2400)
    pick = [0, 1, 777, 2399]
    ref = _reference(model, [texts[i] for i in pick],
                     lambda m, i, a: pool(m(input_ids=i, attention_mask=a).last_hidden_state, a, "mean")[0].numpy())
    np.testing.assert_allclose(got[pick], np.stack(ref), atol=1e-5, rtol=0)
    encode(tmp_path / "enc", tmp_path / "in600.csv", tmp_path / "e.npy", pooling="cls", normalize=True,
           batch_size=1, progress=False)
    emb = np.load(tmp_path / "e.npy")
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-6)


def test_bad_input_is_named(tmp_path, classifier, capsys):
    _, folder = classifier
    src = _write_csv(tmp_path / "in.csv", ["the cat", "   ", "a dog"])
    with pytest.raises(ValueError, match=r"in\.csv, line 3.*'text' is empty"):
        predict(folder, src, tmp_path / "out.jsonl", progress=False)
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written
    assert main(["predict", str(folder), str(src), "-o", str(tmp_path / "o.jsonl"), "--text-column", "review",
                 "--no-progress"]) == 2
    assert "no column 'review'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"suffix '\.txt'"):
        predict(folder, src, tmp_path / "out.txt", progress=False)
    with pytest.raises(ValueError, match="no logits"):
        encoder_folder = tmp_path / "enc"
        save_model(ModernAlbertModel(small_config(vocab_size=64, mol_groups=[])), make_tokenizer(), encoder_folder)
        predict(encoder_folder, src, tmp_path / "out.jsonl", progress=False)
    assert main(["encode", str(tmp_path / "missing"), str(src), "-o", str(tmp_path / "e.npy")]) == 2
    assert "No model folder" in capsys.readouterr().err
    same = _write_csv(tmp_path / "same.csv", ["the cat", "a dog"])
    before = same.read_bytes()
    with pytest.raises(ValueError, match=r"is the input file"):
        predict(folder, same, tmp_path / "." / "same.csv", progress=False)
    assert same.read_bytes() == before  # the user's data is untouched


def test_cli_predict_and_encode(tmp_path, classifier, capsys):
    _, folder = classifier
    src = _write_csv(tmp_path / "in.csv", _texts(5))
    assert main(["predict", str(folder), str(src), "-o", str(tmp_path / "p.jsonl"), "--no-progress"]) == 0
    assert main(["encode", str(folder), str(src), "-o", str(tmp_path / "e.npy"), "--no-progress"]) == 0
    assert "5 predictions written" in capsys.readouterr().out
    assert np.load(tmp_path / "e.npy").shape == (5, 64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_runner_with_16_bit_weights_and_under_autocast(classifier, dtype):
    """16-bit weights (as loaded for GPUs) and bf16 autocast give float32 outputs within 16-bit rounding of fp32."""
    from modernalbert.inference import load_runner

    _, folder = classifier
    ids, mask = (t.numpy() for t in padded_batch(vocab=64, lengths=(11, 4, 7)))
    ref = load_runner(folder, "logits")(ids, mask)
    low = load_runner(folder, "logits", dtype=dtype)(ids, mask)
    assert low.dtype == np.float32
    np.testing.assert_allclose(low, ref, atol=5e-2, rtol=0)
    runner = load_runner(folder, "sentence_embedding")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = runner(ids, mask)
    np.testing.assert_allclose(auto, runner(ids, mask), atol=5e-2, rtol=0)
