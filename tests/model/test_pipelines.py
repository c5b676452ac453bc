"""transformers pipelines on saved ModernAlbert folders: batched runs give the one-at-a-time results."""

import pytest
import torch
from transformers import pipeline

from modernalbert import (
    ModernAlbertConfig,
    ModernAlbertForMaskedLM,
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertModel,
)
from tests.conftest import make_tokenizer, randomize_adapters

TEXTS = ["the cat sat on the mat", "a dog ran", "the quick red bird flew over the old house and then the river",
         "fish swam"]


def _folder(cls, tmp_path):
    tokenizer = make_tokenizer()
    config = ModernAlbertConfig.from_preset(
        "test", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        mask_token_id=tokenizer.mask_token_id, id2label={0: "O", 1: "NOUN", 2: "VERB"})
    model = cls(config).eval()
    randomize_adapters(model)  # the experts take part in every output compared below
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return str(tmp_path)


def _close(a, b):
    """Pipeline results (nested lists / dicts of floats, strings and ints) equal, floats to 1e-5."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _close(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
    else:
        assert a == b


@pytest.mark.parametrize(("task", "cls", "texts"), [
    ("fill-mask", ModernAlbertForMaskedLM, [t.replace(" ", " [MASK] ", 1) for t in TEXTS]),
    ("text-classification", ModernAlbertForSequenceClassification, TEXTS),
    ("token-classification", ModernAlbertForTokenClassification, TEXTS),
])
def test_batched_pipelines_match_one_at_a_time(task, cls, texts, tmp_path):
    pipe = pipeline(task, model=_folder(cls, tmp_path), device="cpu")
    kwargs = {"top_k": 3} if task == "fill-mask" else {}
    alone = [pipe(text, **kwargs) for text in texts]
    if task == "text-classification":
        alone = [result[0] for result in alone]  # one text in: a one-item list out
    _close(pipe(texts, batch_size=2, **kwargs), alone)
    _close(pipe(texts, batch_size=4, **kwargs), alone)


def test_batched_feature_extraction_matches_one_at_a_time(tmp_path):
    """A batched feature-extraction result keeps the batch's padded length (transformers pads and slices per input):
    its first rows are the one-at-a-time features, and the padded rows are zero."""
    pipe = pipeline("feature-extraction", model=_folder(ModernAlbertModel, tmp_path), device="cpu")
    batched = pipe(TEXTS, batch_size=2)
    for text, features in zip(TEXTS, batched, strict=True):
        alone = torch.tensor(pipe(text))[0]  # (L_i, d)
        padded = torch.tensor(features)[0]  # (L_batch, d)
        torch.testing.assert_close(padded[: len(alone)], alone, rtol=1e-5, atol=1e-5)
        assert (padded[len(alone):] == 0).all()
