"""The shared engine of the benchmark suites: collation, fine-tuning, ordered prediction, reporting."""

import json

import numpy as np
import pytest
import torch

from modernalbert import ModernAlbertForSequenceClassification
from modernalbert.evaluation.common import (
    FinetuneConfig,
    finetune,
    markdown_table,
    mean_std,
    model_inputs,
    padding_collator,
    predict,
)
from modernalbert.model.loading import load_model
from modernalbert.utils.io import write_json
from tests.conftest import make_tokenizer, small_config


def test_collate_pads_right_and_builds_the_mask():
    collate = padding_collator(make_tokenizer())  # transformers' DataCollatorWithPadding; [PAD] = 0
    feats = [{"input_ids": [5, 6, 7], "labels": 1, "index": 0}, {"input_ids": [8], "labels": 0, "index": 1},
             {"input_ids": [9, 9], "labels": 0.5, "index": 2}][:2]
    batch = collate(feats)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["index"].tolist() == [0, 1]
    reg = collate([{"input_ids": [1], "labels": 0.25}, {"input_ids": [2, 3], "labels": 1.5}])
    assert reg["labels"].dtype == torch.float32 and reg["input_ids"].tolist() == [[1, 0], [2, 3]]


def test_collator_refuses_left_padding_and_a_missing_pad_token():
    tok = make_tokenizer()
    tok.padding_side = "left"
    with pytest.raises(ValueError, match="padding_side"):
        padding_collator(tok)
    tok = make_tokenizer()
    tok.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        padding_collator(tok)


def test_model_inputs_keep_only_forward_arguments():
    model = ModernAlbertForSequenceClassification(small_config(num_labels=2))
    batch = {"input_ids": torch.ones(1, 2), "attention_mask": torch.ones(1, 2), "labels": torch.zeros(1),
             "index": torch.zeros(1), "token_type_ids": torch.zeros(1, 2)}
    assert set(model_inputs(model, batch)) == {"input_ids", "attention_mask", "labels"}


@pytest.mark.parametrize(("field", "value"), [("learning_rate", 0.0), ("batch_size", 0), ("warmup_ratio", 1.0),
                                              ("max_length", 4), ("precision", "fp8")])
def test_finetune_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        FinetuneConfig(**{field: value})


def _toy_features(n: int, seed: int):
    """Label 1 iff token 7 occurs: learnable from a few dozen steps."""
    rng = np.random.default_rng(seed)
    feats = []
    for i in range(n):
        ids = rng.integers(10, 60, size=int(rng.integers(3, 12))).tolist()
        label = int(rng.random() < 0.5)
        if label:
            ids[int(rng.integers(0, len(ids)))] = 7
        feats.append({"input_ids": [1, *ids, 2], "labels": label, "index": i})
    return feats


def test_finetune_learns_and_predict_returns_input_order():
    torch.manual_seed(0)
    model = ModernAlbertForSequenceClassification(small_config(num_labels=2))
    train, test = _toy_features(256, 0), _toy_features(64, 1)
    cfg = FinetuneConfig(learning_rate=3e-3, batch_size=16, max_steps=80, warmup_ratio=0.1, log_every=10)
    history = finetune(model, train, cfg, tokenizer=make_tokenizer())
    assert history.steps == 80 and len(history.records) == 8
    assert history.records[-1]["loss"] < 0.5 * history.records[0]["loss"]
    assert not model.training

    def logits(m, batch):
        return list(m(**model_inputs(m, batch)).logits.float().cpu().numpy())

    got = predict(model, test, logits, batch_size=8, tokenizer=make_tokenizer())
    with torch.no_grad():  # one example at a time: the reference order, no padding at all
        ref = [model(torch.tensor([f["input_ids"]])).logits[0].numpy() for f in test]
    np.testing.assert_allclose(np.stack(got), np.stack(ref), atol=1e-5)
    acc = np.mean(np.argmax(np.stack(got), -1) == np.array([f["labels"] for f in test]))
    assert acc >= 0.9


def test_finetune_rejects_an_empty_split():
    model = ModernAlbertForSequenceClassification(small_config(num_labels=2))
    with pytest.raises(ValueError, match="empty"):
        finetune(model, [], FinetuneConfig(max_steps=1), tokenizer=make_tokenizer())


def test_load_model_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="Unknown head"):
        load_model(tmp_path, "seq2seq")
    with pytest.raises(FileNotFoundError, match="No model folder"):
        load_model(tmp_path / "missing", "encoder")


def test_reporting_helpers(tmp_path):
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([0.5]) == (0.5, 0.0)
    path = write_json(tmp_path / "r" / "x.json", {"a": np.float32(0.5), "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # nothing temporary left behind
    table = markdown_table(["model", "acc"], [["a", 0.123456], ["b", 1]])
    assert table.splitlines() == ["| model | acc |", "|---|---|", "| a | 0.1235 |", "| b | 1 |"]
