"""The evaluation engine in 16 bits on CPU: bf16 fine-tuning learns, 16-bit prediction matches fp32, clear refusals.

Prediction tolerance: logits of the `test` preset (4 effective layers) under 16-bit autocast agree with fp32 within
``2 (L + 2) u`` relative, the bound of tests/model/test_precision.py (u = 2^-8 for bf16, 2^-11 for fp16).
"""

import numpy as np
import pytest
import torch

from modernalbert import ModernAlbertForSequenceClassification
from modernalbert.evaluation.beir import contrastive_loss
from modernalbert.evaluation.common import FinetuneConfig, finetune, model_inputs, predict
from tests.conftest import make_tokenizer, small_config

TOKENIZER = make_tokenizer()  # pads with [PAD] = 0


def _features(n: int, seed: int) -> list[dict]:
    """Label 1 iff token 7 occurs: learnable in a few dozen steps."""
    rng = np.random.default_rng(seed)
    feats = []
    for i in range(n):
        ids = rng.integers(8, 512, int(rng.integers(4, 14))).tolist()
        label = int(rng.random() < 0.5)
        if label:
            ids[int(rng.integers(0, len(ids)))] = 7
        feats.append({"input_ids": [1, *ids, 2], "labels": label, "index": i})
    return feats


def _logits(model, batch):
    return list(model(**model_inputs(model, batch)).logits.float().cpu().numpy())


def test_bf16_finetuning_learns_after_an_fp32_run_in_the_same_process():
    torch.manual_seed(0)
    model = ModernAlbertForSequenceClassification(small_config(num_labels=2))
    train, test = _features(256, 0), _features(48, 1)
    finetune(model, train[:32], FinetuneConfig(max_steps=2, batch_size=16, precision="fp32"), tokenizer=TOKENIZER)
    cfg = FinetuneConfig(learning_rate=3e-3, batch_size=16, max_steps=40, log_every=10, precision="bf16")
    history = finetune(model, train, cfg, tokenizer=TOKENIZER)
    assert history.records[-1]["loss"] < 0.5 * history.records[0]["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: fp32 master weights
    got = np.stack(predict(model, test, _logits, batch_size=16, tokenizer=TOKENIZER, precision="bf16"))
    assert np.mean(np.argmax(got, -1) == np.array([f["labels"] for f in test])) >= 0.8


@pytest.mark.parametrize(("precision", "u"), [("bf16", 2.0**-8), ("fp16", 2.0**-11)])
def test_16bit_prediction_matches_fp32(precision, u):
    torch.manual_seed(0)
    model = ModernAlbertForSequenceClassification(small_config(num_labels=2))
    test = _features(24, 2)
    ref = np.stack(predict(model, test, _logits, batch_size=8, tokenizer=TOKENIZER, precision="fp32"))
    got = np.stack(predict(model, test, _logits, batch_size=8, tokenizer=TOKENIZER, precision=precision))
    assert np.linalg.norm(got - ref) <= 2 * (4 + 2) * u * np.linalg.norm(ref)


def test_fp16_finetuning_on_cpu_is_refused_with_the_fix():
    if torch.cuda.is_available():
        pytest.skip("fp16 fine-tuning runs on a GPU")
    model = ModernAlbertForSequenceClassification(small_config(num_labels=2))
    with pytest.raises(ValueError, match=r"fp16.*GPU only.*'bf16' or 'fp32'"):
        finetune(model, _features(8, 0), FinetuneConfig(max_steps=1, precision="fp16"), tokenizer=TOKENIZER)


def test_contrastive_similarities_are_fp32_under_autocast():
    """The InfoNCE similarity GEMM is fp32 even under bf16 autocast (which would otherwise run it in bf16)."""
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(8, 32, generator=g).bfloat16(), torch.randn(16, 32, generator=g).bfloat16()
    mask = torch.zeros(8, 16, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = contrastive_loss(q, d, mask, symmetric=True)
    assert got.dtype == torch.float32
    assert torch.equal(got, contrastive_loss(q.float(), d.float(), mask, symmetric=True))


SUITE_COMMANDS = [  # (suite module, verb, suite, the arguments a parse needs)
    ("glue", "finetune", "glue", ["m", "--task", "sst2", "--output-dir", "o"]),
    ("squad", "finetune", "squad", ["m", "--data", "d.json", "--output-dir", "o"]),
    ("squad", "evaluate", "squad", ["m", "--data", "d.json"]),
    ("beir", "finetune", "beir", ["m", "--data", "d", "--output-dir", "o"]),
    ("beir", "evaluate", "beir", ["m", "--data", "d"]),
    ("files", "finetune", "classification", ["m", "--train", "t.csv", "--output-dir", "o"]),
    ("files", "finetune", "token-classification", ["m", "--train", "t.conll", "--output-dir", "o"]),
]


@pytest.mark.parametrize(("module", "verb", "suite", "argv"), SUITE_COMMANDS,
                         ids=[f"{v}-{s}" for _, v, s, _ in SUITE_COMMANDS])
def test_suite_commands_take_every_finetune_precision(module, verb, suite, argv, capsys):
    """`--precision` of every suite command takes FinetuneConfig's values (fp16 included) and refuses others."""
    import argparse
    import importlib
    from typing import get_args

    from modernalbert.cli.arguments import config_from_args
    from modernalbert.evaluation.config import FinetuneConfig, Precision

    cli = importlib.import_module(f"modernalbert.cli.suites.{module}")
    parser = argparse.ArgumentParser()
    getattr(cli, f"add_{verb}_arguments")(parser, suite)
    assert "fp16" in get_args(Precision)
    for value in get_args(Precision):
        args = parser.parse_args([*argv, "--precision", value])
        given = getattr(args, "ft.precision", None) or args.precision
        assert given == value
        if hasattr(args, "ft.precision"):
            assert config_from_args(FinetuneConfig, args, key="ft").precision == value
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
